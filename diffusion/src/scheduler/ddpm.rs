//! DDPM ancestral sampling: Ho, Jain and Abbeel, "Denoising Diffusion Probabilistic Models",
//! arXiv 2006.11239, eqs. 6-7, with the "fixed_small" posterior variance `beta~_t`.
//! Follows diffusers' `schedulers/scheduling_ddpm.py` (`DDPMScheduler.step`, `variance_type="fixed_small"`).
use tch::Tensor;

use super::{index_for_timestep, integer_timesteps, Scheduler};
use crate::error::{DiffusionError, Result};
use crate::schedule::{train_index, NoiseSchedule, ScheduleConfig};

const NAME: &str = "ddpm";

/// The DDPM sampler: `x_{t-1} = mu~(x_t, x0) + sqrt(beta~_t) z`, with `x0` optionally clipped.
#[derive(Debug)]
pub struct Ddpm {
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
}

impl Ddpm {
    pub fn new(config: &ScheduleConfig) -> Result<Self> {
        Ok(Self { schedule: NoiseSchedule::new(config)?, timesteps: Vec::new() })
    }

    /// The posterior variance `beta~_t = (1 - abar_prev) / (1 - abar_t) beta_t`, floored at 1e-20.
    fn variance(abar_t: f64, abar_prev: f64) -> f64 {
        let beta_t = 1.0 - abar_t / abar_prev;
        ((1.0 - abar_prev) / (1.0 - abar_t) * beta_t).max(1e-20)
    }
}

impl Scheduler for Ddpm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        self.timesteps = integer_timesteps(NAME, &self.schedule, steps)?;
        Ok(())
    }

    fn scale_model_input(&self, sample: &Tensor, _timestep: f64) -> Result<Tensor> {
        Ok(sample.shallow_clone())
    }

    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor) -> Result<Tensor> {
        if self.timesteps.is_empty() {
            return Err(DiffusionError::NotInitialized { scheduler: NAME });
        }
        let i = index_for_timestep(NAME, &self.timesteps, timestep)?;
        let ac = self.schedule.alphas_cumprod();
        let abar_t = ac[train_index(timestep, ac.len())?];
        let abar_prev = match self.timesteps.get(i + 1) {
            Some(&prev) => ac[train_index(prev, ac.len())?],
            None => 1.0,
        };
        let cfg = self.schedule.config();
        let (mut x0, _) = cfg.prediction_type.split(model_output, sample, abar_t);
        if cfg.clip_sample {
            x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range);
        }
        // Posterior mean, eq. 7.
        let (beta_prod_t, alpha_t) = (1.0 - abar_t, abar_t / abar_prev);
        let x0_coef = abar_prev.sqrt() * (1.0 - alpha_t) / beta_prod_t;
        let xt_coef = alpha_t.sqrt() * (1.0 - abar_prev) / beta_prod_t;
        let mut prev = x0 * x0_coef + sample * xt_coef;
        if timestep > 0.0 {
            let noise = Tensor::randn(model_output.size(), (model_output.kind(), model_output.device()));
            prev += noise * Self::variance(abar_t, abar_prev).sqrt();
        }
        Ok(prev)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        self.schedule.add_noise(original, noise, timesteps)
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
}
