//! The timestep and class-label arguments of the denoising networks (U-Net and DiT).
use tch::{Kind, Tensor};

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

/// Check class labels for a network whose class table has `rows` rows, the last being the null
/// class: int64 of shape [batch], each in `0..rows`.
pub(crate) fn check_labels(labels: &Tensor, batch: i64, rows: i64) -> Result<()> {
    if labels.size() != [batch] || labels.kind() != Kind::Int64 {
        return Err(DiffusionError::Labels(format!(
            "expected int64 labels of shape [{batch}], got {:?} of shape {:?}",
            labels.kind(),
            labels.size()
        )));
    }
    if batch > 0 {
        let (lo, hi) = (labels.min().int64_value(&[]), labels.max().int64_value(&[]));
        if lo < 0 || hi >= rows {
            return Err(DiffusionError::Labels(format!(
                "labels span {lo}..={hi}, expected 0..{rows} (0..={}, the last being the null class)",
                rows - 1
            )));
        }
    }
    Ok(())
}
