//! Flow-matching (rectified-flow) samplers: `x_t = (1 - sigma) x0 + sigma noise`, the model predicts
//! the velocity `v = noise - x0`, and sampling integrates `dx/dsigma = v` from sigma 1 to 0.
//! Lipman et al., "Flow Matching for Generative Modeling", arXiv 2210.02747; Liu et al., "Flow
//! Straight and Fast", arXiv 2209.03003; Esser et al. (SD3), arXiv 2403.03206, for the shifted
//! schedules.
//!
//! [`FlowMatchEuler`] follows diffusers 0.42.1's `FlowMatchEulerDiscreteScheduler` and
//! [`FlowMatchHeun`] its `FlowMatchHeunDiscreteScheduler`, number for number: the same float32 and
//! float64 steps in the same order (the training sigmas in float32, the inference schedule in
//! float64 then rounded to float32), checked against numbers diffusers wrote
//! (`diffusion/tests/reference/flow_match.py`).
use tch::Tensor;

use super::{check_steps, index_for_timestep, np_linspace, step_position, upcast, Scheduler};
use crate::error::{DiffusionError, Result};
use crate::schedule::{FlowMatchConfig, TimeShift};

/// `steps` inference sigmas from sigma_max to sigma_min of `train` (float64, diffusers' `set_timesteps`).
fn inference_sigmas(train: &[f32], n: usize, steps: usize) -> Vec<f64> {
    let (max, min) = (train[0] as f64, train[train.len() - 1] as f64);
    np_linspace(max * n as f64, min * n as f64, steps).into_iter().map(|t| t / n as f64).collect()
}

/// Karras et al.'s rho = 7 spacing between the first and last of `sigmas`.
fn karras(sigmas: &[f64]) -> Vec<f64> {
    let (min, max) = (sigmas[sigmas.len() - 1], sigmas[0]);
    let rho = 7.0;
    let (lo, hi) = (min.powf(1.0 / rho), max.powf(1.0 / rho));
    np_linspace(0.0, 1.0, sigmas.len()).into_iter().map(|r| (hi + r * (lo - hi)).powf(rho)).collect()
}

/// Log-linear spacing between the first and last of `sigmas`.
fn exponential(sigmas: &[f64]) -> Vec<f64> {
    let (min, max) = (sigmas[sigmas.len() - 1], sigmas[0]);
    np_linspace(max.ln(), min.ln(), sigmas.len()).into_iter().map(f64::exp).collect()
}

/// The flow-matching Euler sampler (diffusers' `FlowMatchEulerDiscreteScheduler`).
#[derive(Debug)]
pub struct FlowMatchEuler {
    config: FlowMatchConfig,
    train: Vec<f32>,
    mu: Option<f64>,
    timesteps: Vec<f64>,
    /// float32 values, one more than the timesteps (the terminal 0, or 1 when inverted).
    sigmas: Vec<f64>,
    step_index: Option<usize>,
}

impl FlowMatchEuler {
    pub fn new(config: &FlowMatchConfig) -> Result<Self> {
        config.validate()?;
        let train = config.train_sigmas(false);
        Ok(FlowMatchEuler {
            config: config.clone(),
            train,
            mu: None,
            timesteps: vec![],
            sigmas: vec![],
            step_index: None,
        })
    }

    /// The shift `mu` of a dynamically shifted schedule; set before [`Scheduler::set_timesteps`].
    pub fn set_mu(&mut self, mu: f64) {
        self.mu = Some(mu);
    }

    /// The sigmas of the schedule set, ending with the terminal value.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Start the next loop at position `i` of the timesteps (image-to-image), as diffusers'
    /// `set_begin_index`.
    pub fn set_begin_index(&mut self, i: usize) {
        self.step_index = Some(i);
    }
}

impl Scheduler for FlowMatchEuler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        let c = &self.config;
        let n = c.num_train_timesteps;
        check_steps(steps, n)?;
        let mut sigmas = inference_sigmas(&self.train, n, steps);
        if c.use_dynamic_shifting {
            let Some(mu) = self.mu else {
                return Err(DiffusionError::Config(
                    "use_dynamic_shifting: the shift mu must be set (from the image size) before set_timesteps".into(),
                ));
            };
            let m = match c.time_shift_type {
                TimeShift::Exponential => mu.exp(),
                TimeShift::Linear => mu,
            };
            sigmas = sigmas.into_iter().map(|t| m / (m + (1.0 / t - 1.0))).collect();
        } else {
            let shift = c.shift;
            sigmas = sigmas.into_iter().map(|s| shift * s / (1.0 + (shift - 1.0) * s)).collect();
        }
        if let Some(terminal) = c.shift_terminal {
            let last = 1.0 - sigmas[sigmas.len() - 1];
            let scale = last / (1.0 - terminal);
            sigmas = sigmas.into_iter().map(|t| 1.0 - (1.0 - t) / scale).collect();
        }
        if c.use_karras_sigmas {
            sigmas = karras(&sigmas);
        } else if c.use_exponential_sigmas {
            sigmas = exponential(&sigmas);
        }
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        if c.invert_sigmas {
            sigmas = sigmas.into_iter().map(|s| 1.0 - s).collect();
        }
        self.timesteps = sigmas.iter().map(|&s| (s * n as f32) as f64).collect();
        sigmas.push(if c.invert_sigmas { 1.0 } else { 0.0 });
        self.sigmas = sigmas.into_iter().map(f64::from).collect();
        self.step_index = None;
        Ok(())
    }

    /// Flow-matching models take the sample as it is.
    fn scale_model_input(&self, sample: &Tensor, _timestep: f64) -> Result<Tensor> {
        Ok(sample.shallow_clone())
    }

    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor) -> Result<Tensor> {
        let i = step_position("flow-euler", &self.timesteps, self.step_index, timestep)?;
        let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
        let sample = upcast(sample).to_kind(tch::Kind::Float);
        let prev = if self.config.stochastic_sampling {
            let x0 = &sample - model_output * sigma;
            let noise = Tensor::randn(sample.size(), (sample.kind(), sample.device()));
            x0 * (1.0 - next) + noise * next
        } else {
            let dt = (next as f32 - sigma as f32) as f64;
            &sample + model_output * dt
        };
        self.step_index = Some(i + 1);
        Ok(prev.to_kind(model_output.kind()))
    }

    /// `(1 - sigma) x0 + sigma noise` at timesteps of the schedule set (image-to-image, inpainting).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        flow_add_noise("flow-euler", &self.timesteps, &self.sigmas, original, noise, timesteps)
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
}

/// `(1 - sigma) x0 + sigma noise`, each timestep's sigma looked up in the schedule.
fn flow_add_noise(
    name: &'static str,
    timesteps: &[f64],
    sigmas: &[f64],
    original: &Tensor,
    noise: &Tensor,
    t: &Tensor,
) -> Result<Tensor> {
    let ts: Vec<f64> = Vec::<f64>::try_from(t.to_kind(tch::Kind::Double).flatten(0, -1))
        .map_err(|e| DiffusionError::Shape(format!("{name}: timesteps: {e}")))?;
    let s: Vec<f32> =
        ts.iter().map(|&t| index_for_timestep(name, timesteps, t).map(|i| sigmas[i] as f32)).collect::<Result<_>>()?;
    let b = original.size()[0];
    let mut shape = vec![if s.len() == 1 { 1 } else { b }];
    shape.extend(std::iter::repeat_n(1, original.dim() - 1));
    let sigma = Tensor::from_slice(&s).to_device(original.device()).view(shape.as_slice()).to_kind(original.kind());
    Ok(&sigma * noise + (1.0 - &sigma) * original)
}

/// The flow-matching Heun sampler (diffusers' `FlowMatchHeunDiscreteScheduler`): every step but
/// the last takes an Euler step, evaluates the model there, and averages the two velocities.
#[derive(Debug)]
pub struct FlowMatchHeun {
    config: FlowMatchConfig,
    train: Vec<f32>,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    step_index: Option<usize>,
    /// The first-order state: derivative, dt and sample.
    pending: Option<(Tensor, f64, Tensor)>,
}

impl FlowMatchHeun {
    /// Takes `num_train_timesteps` and `shift`; the other keys of `config` must be their defaults.
    pub fn new(config: &FlowMatchConfig) -> Result<Self> {
        config.validate()?;
        let base = FlowMatchConfig {
            num_train_timesteps: config.num_train_timesteps,
            shift: config.shift,
            ..Default::default()
        };
        if *config != base {
            return Err(DiffusionError::Config(
                "flow-heun takes num_train_timesteps and shift only (diffusers' FlowMatchHeunDiscreteScheduler); \
                 dynamic shifting, terminal shifts, inverted, Karras or exponential sigmas and stochastic sampling \
                 are flow-euler's"
                    .into(),
            ));
        }
        let train = config.train_sigmas(true);
        Ok(FlowMatchHeun {
            config: config.clone(),
            train,
            timesteps: vec![],
            sigmas: vec![],
            step_index: None,
            pending: None,
        })
    }
}

impl Scheduler for FlowMatchHeun {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        let n = self.config.num_train_timesteps;
        check_steps(steps, n)?;
        let shift = self.config.shift;
        let sigmas: Vec<f32> = inference_sigmas(&self.train, n, steps)
            .into_iter()
            .map(|s| (shift * s / (1.0 + (shift - 1.0) * s)) as f32)
            .collect();
        let t: Vec<f64> = sigmas.iter().map(|&s| (s * n as f32) as f64).collect();
        self.timesteps = std::iter::once(t[0]).chain(t[1..].iter().flat_map(|&x| [x, x])).collect();
        let s: Vec<f64> = sigmas.into_iter().map(f64::from).collect();
        self.sigmas = std::iter::once(s[0]).chain(s[1..].iter().flat_map(|&x| [x, x])).chain([0.0]).collect();
        self.step_index = None;
        self.pending = None;
        Ok(())
    }

    fn scale_model_input(&self, sample: &Tensor, _timestep: f64) -> Result<Tensor> {
        Ok(sample.shallow_clone())
    }

    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor) -> Result<Tensor> {
        let i = step_position("flow-heun", &self.timesteps, self.step_index, timestep)?;
        let sample = upcast(sample).to_kind(tch::Kind::Float);
        let prev = match self.pending.take() {
            None => {
                let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
                let denoised = &sample - model_output * sigma;
                let derivative = (&sample - denoised) / sigma;
                let dt = (next as f32 - sigma as f32) as f64;
                let prev = &sample + &derivative * dt;
                self.pending = Some((derivative, dt, sample));
                prev
            }
            Some((first, dt, saved)) => {
                let next = self.sigmas[i];
                let denoised = &sample - model_output * next;
                let derivative = ((&sample - denoised) / next + first) * 0.5;
                saved + derivative * dt
            }
        };
        self.step_index = Some(i + 1);
        Ok(prev.to_kind(model_output.kind()))
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        flow_add_noise("flow-heun", &self.timesteps, &self.sigmas, original, noise, timesteps)
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
}
