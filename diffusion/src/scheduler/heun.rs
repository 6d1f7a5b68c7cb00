//! Heun's second-order sampler: Karras et al., "Elucidating the Design Space of Diffusion-Based
//! Generative Models", arXiv 2206.00364, Algorithm 1 (deterministic).
//! Follows diffusers' `schedulers/scheduling_heun_discrete.py`: every timestep after the first is
//! listed twice, the model is called once per listed timestep, and `step` alternates between an
//! Euler predictor (which stores its derivative, step size and sample) and the trapezoidal corrector.
//! The last step, to sigma 0, is a plain Euler step.
use tch::Tensor;

use super::{sigma_space_x0, upcast, Scheduler, SigmaSteps};
use crate::error::Result;
use crate::schedule::{NoiseSchedule, PredictionType, ScheduleConfig};

/// The predictor's state, kept until the corrector call.
#[derive(Debug)]
struct Predictor {
    derivative: Tensor,
    dt: f64,
    sample: Tensor,
}

/// The Heun sampler: `2n - 1` model evaluations for `n` steps.
#[derive(Debug)]
pub struct Heun {
    prediction_type: PredictionType,
    steps: SigmaSteps,
    predictor: Option<Predictor>,
}

impl Heun {
    pub fn new(config: &ScheduleConfig) -> Result<Self> {
        let schedule = NoiseSchedule::new(config)?;
        Ok(Self { prediction_type: config.prediction_type, steps: SigmaSteps::new("heun", &schedule), predictor: None })
    }
}

/// `[a0, a1, a1, a2, a2, ...]`: the first value once, every other twice.
fn repeat_after_first(values: &[f64]) -> Vec<f64> {
    values.iter().take(1).chain(values.iter().skip(1).flat_map(|v| [v, v])).copied().collect()
}

impl Scheduler for Heun {
    fn timesteps(&self) -> &[f64] {
        &self.steps.timesteps
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        self.steps.set(steps)?;
        // sigmas [s0, s1, .., s_{n-1}, 0] -> [s0, s1, s1, .., s_{n-1}, s_{n-1}, 0].
        let last = self.steps.sigmas.len() - 1;
        let mut sigmas = repeat_after_first(&self.steps.sigmas[..last]);
        sigmas.push(0.0);
        self.steps.sigmas = sigmas;
        self.steps.timesteps = repeat_after_first(&self.steps.timesteps);
        self.predictor = None;
        Ok(())
    }

    fn scale_model_input(&self, sample: &Tensor, timestep: f64) -> Result<Tensor> {
        self.steps.scale_model_input(sample, timestep)
    }

    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor) -> Result<Tensor> {
        let i = self.steps.index(timestep)?;
        let sample = upcast(sample);
        let model_output_f = upcast(model_output);
        let prev = match self.predictor.take() {
            None => {
                let (sigma, sigma_next) = (self.steps.sigmas[i], self.steps.sigmas[i + 1]);
                let x0 = sigma_space_x0(self.prediction_type, &model_output_f, &sample, sigma);
                let derivative = (&sample - x0) / sigma;
                let dt = sigma_next - sigma;
                let prev = &sample + &derivative * dt;
                self.predictor = Some(Predictor { derivative, dt, sample });
                prev
            }
            Some(p) => {
                // Called at the predictor's endpoint, whose sigma is sigmas[i].
                let sigma_next = self.steps.sigmas[i];
                let x0 = sigma_space_x0(self.prediction_type, &model_output_f, &sample, sigma_next);
                let derivative = ((&sample - x0) / sigma_next + p.derivative) / 2.0;
                p.sample + derivative * p.dt
            }
        };
        self.steps.step_index = Some(i + 1);
        Ok(prev.to_kind(model_output.kind()))
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        self.steps.add_noise(original, noise, timesteps)
    }

    fn init_noise_sigma(&self) -> f64 {
        self.steps.init_noise_sigma()
    }
}
