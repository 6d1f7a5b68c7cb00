//! Euler and Euler ancestral samplers in k-diffusion's sigma space (`x = x0 + sigma eps`):
//! Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
//! arXiv 2206.00364, Algorithm 2 without churn; the ancestral variant splits each step into a
//! deterministic step to `sigma_down` and fresh noise of size `sigma_up` (k-diffusion's
//! `get_ancestral_step`, eta 1).
//! Follows diffusers' `schedulers/scheduling_euler_discrete.py` (`s_churn = 0`, linear interpolation)
//! and `schedulers/scheduling_euler_ancestral_discrete.py`.
use tch::Tensor;

use super::{sigma_space_x0, upcast, Scheduler, SigmaSteps};
use crate::error::Result;
use crate::schedule::{NoiseSchedule, PredictionType, ScheduleConfig};

/// The Euler (first-order ODE) sampler.
#[derive(Debug)]
pub struct Euler {
    prediction_type: PredictionType,
    steps: SigmaSteps,
}

impl Euler {
    pub fn new(config: &ScheduleConfig) -> Result<Self> {
        let schedule = NoiseSchedule::new(config)?;
        Ok(Self { prediction_type: config.prediction_type, steps: SigmaSteps::new("euler", &schedule) })
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.steps.timesteps
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        self.steps.set(steps)
    }

    fn scale_model_input(&self, sample: &Tensor, timestep: f64) -> Result<Tensor> {
        self.steps.scale_model_input(sample, timestep)
    }

    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor) -> Result<Tensor> {
        let i = self.steps.index(timestep)?;
        let (sigma, sigma_next) = (self.steps.sigmas[i], self.steps.sigmas[i + 1]);
        let sample = upcast(sample);
        let x0 = sigma_space_x0(self.prediction_type, &upcast(model_output), &sample, sigma);
        let derivative = (&sample - x0) / sigma;
        self.steps.step_index = Some(i + 1);
        Ok((sample + derivative * (sigma_next - sigma)).to_kind(model_output.kind()))
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        self.steps.add_noise(original, noise, timesteps)
    }

    fn init_noise_sigma(&self) -> f64 {
        self.steps.init_noise_sigma()
    }
}

/// The Euler ancestral sampler: an Euler step to `sigma_down`, then noise `sigma_up`, with
/// `sigma_down^2 + sigma_up^2 = sigma_next^2`. Draws noise at every step, the last included.
#[derive(Debug)]
pub struct EulerAncestral {
    prediction_type: PredictionType,
    steps: SigmaSteps,
}

impl EulerAncestral {
    pub fn new(config: &ScheduleConfig) -> Result<Self> {
        let schedule = NoiseSchedule::new(config)?;
        Ok(Self { prediction_type: config.prediction_type, steps: SigmaSteps::new("euler-a", &schedule) })
    }
}

impl Scheduler for EulerAncestral {
    fn timesteps(&self) -> &[f64] {
        &self.steps.timesteps
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        self.steps.set(steps)
    }

    fn scale_model_input(&self, sample: &Tensor, timestep: f64) -> Result<Tensor> {
        self.steps.scale_model_input(sample, timestep)
    }

    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor) -> Result<Tensor> {
        let i = self.steps.index(timestep)?;
        let (sigma, sigma_next) = (self.steps.sigmas[i], self.steps.sigmas[i + 1]);
        let sigma_up = (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma)).sqrt();
        let sigma_down = (sigma_next * sigma_next - sigma_up * sigma_up).max(0.0).sqrt();
        let sample = upcast(sample);
        let x0 = sigma_space_x0(self.prediction_type, &upcast(model_output), &sample, sigma);
        let derivative = (&sample - x0) / sigma;
        let noise = Tensor::randn(model_output.size(), (model_output.kind(), model_output.device()));
        self.steps.step_index = Some(i + 1);
        Ok((sample + derivative * (sigma_down - sigma) + noise * sigma_up).to_kind(model_output.kind()))
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        self.steps.add_noise(original, noise, timesteps)
    }

    fn init_noise_sigma(&self) -> f64 {
        self.steps.init_noise_sigma()
    }
}
