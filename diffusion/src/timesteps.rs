//! The timestep argument of the denoising networks.
use tch::Tensor;

use crate::error::{DiffusionError, Result};

/// One timestep per sample: a single timestep repeated `batch` times, or `batch` of them as they are.
///
/// # Shapes
/// - `timesteps`: any shape of 1 or `batch` elements -> [batch]
pub(crate) fn per_sample_timesteps(timesteps: &Tensor, batch: i64) -> Result<Tensor> {
    match timesteps.numel() as i64 {
        1 => Ok(timesteps.f_reshape([1])?.f_expand([batch], false)?),
        n if n == batch => Ok(timesteps.f_reshape([batch])?),
        n => Err(DiffusionError::Shape(format!(
            "{n} timesteps for a batch of {batch}: expected one per sample or one for all"
        ))),
    }
}
