//! DDIM: Song, Meng and Ermon, "Denoising Diffusion Implicit Models", arXiv 2010.02502, eq. 12,
//! with `sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)` (eq. 16).
//! Follows diffusers' `schedulers/scheduling_ddim.py` (`DDIMScheduler.step` without thresholding;
//! `use_clipped_model_output` comes from [`ScheduleConfig::use_clipped_model_output`]).
use tch::Tensor;

use super::{integer_timesteps, Scheduler};
use crate::error::{DiffusionError, Result};
use crate::schedule::{train_index, NoiseSchedule, ScheduleConfig};

const NAME: &str = "ddim";

/// The DDIM sampler; deterministic for `eta = 0`.
#[derive(Debug)]
pub struct Ddim {
    schedule: NoiseSchedule,
    /// `abar` past the last step: 1, or `abar_0` when `set_alpha_to_one` is false.
    final_alpha_cumprod: f64,
    timesteps: Vec<f64>,
}

impl Ddim {
    pub fn new(config: &ScheduleConfig) -> Result<Self> {
        let schedule = NoiseSchedule::new(config)?;
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { schedule.alphas_cumprod()[0] };
        Ok(Self { schedule, final_alpha_cumprod, timesteps: Vec::new() })
    }
}

impl Scheduler for Ddim {
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
        let ac = self.schedule.alphas_cumprod();
        let t = train_index(timestep, ac.len())?;
        // As diffusers: the previous timestep is `t - T / n` whatever the spacing, so linspace and
        // trailing spacings with n not dividing T step to a timestep slightly off the list.
        let prev_t = t as i64 - (ac.len() / self.timesteps.len()) as i64;
        let abar_t = ac[t];
        let abar_prev = if prev_t >= 0 { ac[prev_t as usize] } else { self.final_alpha_cumprod };
        let cfg = self.schedule.config();
        let (mut x0, mut eps) = cfg.prediction_type.split(model_output, sample, abar_t);
        if cfg.clip_sample {
            x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range);
            if cfg.use_clipped_model_output {
                eps = (sample - &x0 * abar_t.sqrt()) / (1.0 - abar_t).sqrt();
            }
        }
        let variance = (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev);
        let std_dev = cfg.eta * variance.sqrt();
        // Floored at 0: at zero terminal SNR with eta = 1 the difference is 0 up to rounding.
        let direction = eps * (1.0 - abar_prev - std_dev * std_dev).max(0.0).sqrt();
        let mut prev = x0 * abar_prev.sqrt() + direction;
        if cfg.eta > 0.0 {
            let noise = Tensor::randn(model_output.size(), (model_output.kind(), model_output.device()));
            prev += noise * std_dev;
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
