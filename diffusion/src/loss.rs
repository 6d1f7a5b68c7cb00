//! The denoising objective: Ho et al., "Denoising Diffusion Probabilistic Models", arXiv 2006.11239,
//! eq. 14 (`L_simple`, the unweighted MSE to the noise), generalised to the schedule's prediction type
//! (noise, clean sample or velocity; Salimans and Ho, arXiv 2202.00512) and optionally weighted per
//! timestep by min-SNR-gamma (Hang et al., arXiv 2303.09556). Follows diffusers'
//! `examples/unconditional_image_generation/train_unconditional.py` and the `snr_gamma` branch of
//! `examples/text_to_image/train_text_to_image.py`.
use tch::{Kind, Tensor};

use crate::backbone::Backbone;
use crate::error::Result;
use crate::schedule::NoiseSchedule;

/// The mean squared error of each sample, over every dimension but the first.
///
/// # Shapes
/// - `output`, `target`: [batch, ...] -> [batch] (f32)
pub fn per_sample_mse(output: &Tensor, target: &Tensor) -> Tensor {
    let dims: Vec<i64> = (1..output.dim() as i64).collect();
    (output.to_kind(Kind::Float) - target.to_kind(Kind::Float)).square().mean_dim(dims.as_slice(), false, Kind::Float)
}

/// The batch mean of per-sample losses, each multiplied by its weight when weights are given.
///
/// # Shapes
/// - `per_sample`: [batch], `weights`: [batch] -> [] (scalar)
pub fn weighted_mean(per_sample: &Tensor, weights: Option<&Tensor>) -> Tensor {
    match weights {
        Some(w) => (per_sample * w.to_kind(Kind::Float)).mean(Kind::Float),
        None => per_sample.mean(Kind::Float),
    }
}

/// The per-sample denoising loss: noise `x0` to `timesteps` with `noise`, ask the model for the
/// schedule's prediction type, and take the MSE to the true target.
///
/// # Shapes
/// - `x0`, `noise`: [batch, c, h, w]
/// - `timesteps`: [batch] integer training timesteps
/// - `labels`: [batch] int64, for a class-conditional model
/// - returns [batch] (f32)
pub fn denoising_loss(
    model: &Backbone,
    schedule: &NoiseSchedule,
    x0: &Tensor,
    noise: &Tensor,
    timesteps: &Tensor,
    labels: Option<&Tensor>,
    train: bool,
) -> Result<Tensor> {
    let noisy = schedule.add_noise(x0, noise, timesteps)?;
    let target = schedule.training_target(x0, noise, timesteps)?;
    let output = model.forward_t(&noisy, timesteps, labels, train)?;
    Ok(per_sample_mse(&output, &target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_sample_and_weighted_means() {
        let out = Tensor::from_slice(&[1f32, 1.0, 0.0, 0.0]).view([2, 2]);
        let per = per_sample_mse(&out, &out.zeros_like());
        assert_eq!(Vec::<f32>::try_from(&per).unwrap(), vec![1.0, 0.0]);
        let w = Tensor::from_slice(&[0.5f32, 3.0]);
        assert_eq!(weighted_mean(&per, Some(&w)).double_value(&[]), 0.25);
        assert_eq!(weighted_mean(&per, None).double_value(&[]), 0.5);
    }
}
