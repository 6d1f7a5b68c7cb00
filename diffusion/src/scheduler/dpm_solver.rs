//! DPM-Solver++(2M): Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
//! Probabilistic Models", arXiv 2211.01095, Algorithm 2 (multistep, data prediction, midpoint form).
//! Follows diffusers' `schedulers/scheduling_dpmsolver_multistep.py` with `algorithm_type="dpmsolver++"`,
//! `solver_order=2`, `solver_type="midpoint"`, `lower_order_final=True`, `final_sigmas_type="zero"`:
//! the first step and the last (to sigma 0) are first order, the others second order.
use tch::Tensor;

use super::{check_steps, check_timesteps, index_for_timestep, np_linspace, trailing, train_sigmas, upcast, Scheduler};
use crate::error::{DiffusionError, Result};
use crate::schedule::{
    per_sample, same_shape, tensor_values, train_index, NoiseSchedule, PredictionType, ScheduleConfig, TimestepSpacing,
};

const NAME: &str = "dpmpp-2m";
const SPACING_HINT: &str =
    " (linspace and leading spacings place steps + 1 points, so they allow at most num_train_timesteps - 1 steps, \
     fewer with steps_offset)";

/// The DPM-Solver++(2M) sampler. Keeps the previous step's `x0` prediction.
#[derive(Debug)]
pub struct DpmSolverMultistep {
    schedule: NoiseSchedule,
    train_sigmas: Vec<f64>,
    timesteps: Vec<f64>,
    /// One more than `timesteps`: the last is 0.
    sigmas: Vec<f64>,
    previous_x0: Option<Tensor>,
    step_index: Option<usize>,
}

/// `(alpha_t, sigma_t, lambda_t)` of the VP process at k-diffusion noise level `sigma`
/// (`lambda = log(alpha / sigma)`, +inf at sigma 0).
fn alpha_sigma_lambda(sigma: f64) -> (f64, f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    let sigma_t = sigma * alpha;
    (alpha, sigma_t, alpha.ln() - sigma_t.ln())
}

impl DpmSolverMultistep {
    pub fn new(config: &ScheduleConfig) -> Result<Self> {
        let schedule = NoiseSchedule::new(config)?;
        let train_sigmas = train_sigmas(&schedule);
        Ok(Self {
            schedule,
            train_sigmas,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            previous_x0: None,
            step_index: None,
        })
    }

    /// The model output as a data prediction `x0` at noise level `sigma` (diffusers' `convert_model_output`).
    fn x0(&self, model_output: &Tensor, sample: &Tensor, sigma: f64) -> Tensor {
        let (alpha_t, sigma_t, _) = alpha_sigma_lambda(sigma);
        match self.schedule.config().prediction_type {
            PredictionType::Epsilon => (sample - model_output * sigma_t) / alpha_t,
            PredictionType::Sample => model_output.shallow_clone(),
            PredictionType::VPrediction => sample * alpha_t - model_output * sigma_t,
        }
    }
}

impl Scheduler for DpmSolverMultistep {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// diffusers' spacings for this scheduler differ from DDIM's: linspace and leading space `n + 1`
    /// points and drop the last (timestep 0).
    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        let cfg = self.schedule.config();
        let t = self.schedule.num_train_timesteps();
        check_steps(steps, t)?;
        let timesteps: Vec<f64> = match cfg.timestep_spacing.unwrap_or(TimestepSpacing::Linspace) {
            TimestepSpacing::Linspace => np_linspace(0.0, (t - 1) as f64, steps + 1)
                .into_iter()
                .rev()
                .take(steps)
                .map(f64::round_ties_even)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = t / (steps + 1);
                (1..=steps).rev().map(|i| (i * ratio + cfg.steps_offset) as f64).collect()
            }
            TimestepSpacing::Trailing => trailing(t, steps),
        };
        check_timesteps(NAME, &timesteps, steps, t, SPACING_HINT)?;
        self.sigmas = timesteps.iter().map(|&x| self.train_sigmas[x as usize]).chain([0.0]).collect();
        self.timesteps = timesteps;
        self.previous_x0 = None;
        self.step_index = None;
        Ok(())
    }

    fn scale_model_input(&self, sample: &Tensor, _timestep: f64) -> Result<Tensor> {
        Ok(sample.shallow_clone())
    }

    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor) -> Result<Tensor> {
        if self.timesteps.is_empty() {
            return Err(DiffusionError::NotInitialized { scheduler: NAME });
        }
        let i = match self.step_index {
            Some(i) => i,
            None => index_for_timestep(NAME, &self.timesteps, timestep)?,
        };
        let n = self.timesteps.len();
        if i >= n {
            return Err(DiffusionError::PastLastStep { scheduler: NAME, calls: i + 1, len: n });
        }
        let sample = upcast(sample);
        let x0 = self.x0(&upcast(model_output), &sample, self.sigmas[i]);
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.sigmas[i + 1]);
        let (_, sigma_s0, lambda_s0) = alpha_sigma_lambda(self.sigmas[i]);
        let h = lambda_t - lambda_s0;
        // alpha_t (e^{-h} - 1); at sigma 0, h = inf and the step lands on x0.
        let coef = alpha_t * ((-h).exp() - 1.0);
        let prev = match (&self.previous_x0, i + 1 == n) {
            (Some(m1), false) => {
                let (_, _, lambda_s1) = alpha_sigma_lambda(self.sigmas[i - 1]);
                let r0 = (lambda_s0 - lambda_s1) / h;
                let d1 = (&x0 - m1) * (1.0 / r0);
                &sample * (sigma_t / sigma_s0) - &x0 * coef - d1 * (0.5 * coef)
            }
            _ => &sample * (sigma_t / sigma_s0) - &x0 * coef,
        };
        self.previous_x0 = Some(x0);
        self.step_index = Some(i + 1);
        Ok(prev.to_kind(model_output.kind()))
    }

    /// `alpha_t x0 + sigma_t noise` at integer training timesteps.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        same_shape(original, noise, "noise")?;
        let (mut alphas, mut sigmas) = (Vec::new(), Vec::new());
        for t in tensor_values(timesteps)? {
            let (a, s, _) = alpha_sigma_lambda(self.train_sigmas[train_index(t, self.train_sigmas.len())?]);
            alphas.push(a);
            sigmas.push(s);
        }
        Ok(original * per_sample(&alphas, original)? + noise * per_sample(&sigmas, original)?)
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
}
