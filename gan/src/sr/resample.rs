//! How low-resolution inputs are made from high-resolution images, and the bicubic baseline.
//!
//! Both use libtorch's antialiased bicubic resampling (`_upsample_bicubic2d_aa`, what
//! `torch.nn.functional.interpolate(x, size=..., mode="bicubic", antialias=True,
//! align_corners=False)` calls): the cubic kernel with a = -0.5, stretched by the scale when
//! shrinking so that it also low-pass filters, the same as PIL's `Image.resize(..., BICUBIC)`
//! and close to MATLAB's `imresize`, the degradation the SRGAN paper's benchmarks use. Training,
//! evaluation and the bicubic baseline all go through these functions, and the low-resolution
//! images are rounded to 8-bit levels, as they are when written to and read from a PNG.
use crate::error::{GanError, Result};
use tch::{Kind, Tensor};

/// Round images in [-1, 1] to the 256 levels of an 8-bit image (and clamp to [-1, 1]).
///
/// # Shapes
/// - `x`: any -> the same
pub fn quantize(x: &Tensor) -> Tensor {
    ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 127.5 - 1.0
}

/// Resize to `[height, width]` with antialiased bicubic resampling (see the module docs).
///
/// # Shapes
/// - `x`: [batch, c, h, w] -> [batch, c, height, width] (float)
pub fn resize_bicubic(x: &Tensor, size: [i64; 2]) -> Result<Tensor> {
    let s = x.size();
    if s.len() != 4 || size[0] < 1 || size[1] < 1 {
        return Err(GanError::Config(format!("cannot resize a batch of shape {s:?} to {}x{}", size[0], size[1])));
    }
    let x = x.to_kind(Kind::Float);
    Ok(x.f_internal_upsample_bicubic2d_aa(size, false, None::<f64>, None::<f64>)?)
}

/// The low-resolution input for high-resolution images: antialiased bicubic downscaling by
/// `scale`, clamped to [-1, 1] and rounded to 8-bit levels. The height and width must be
/// multiples of `scale`.
///
/// # Shapes
/// - `hr`: [batch, c, h, w] in [-1, 1] -> [batch, c, h / scale, w / scale]
pub fn downscale(hr: &Tensor, scale: i64) -> Result<Tensor> {
    let s = hr.size();
    if s.len() != 4 || scale < 1 || s[2] % scale != 0 || s[3] % scale != 0 {
        return Err(GanError::Config(format!(
            "x{scale} super-resolution needs images whose height and width are multiples of {scale}; got a batch of shape {s:?}"
        )));
    }
    Ok(quantize(&resize_bicubic(hr, [s[2] / scale, s[3] / scale])?))
}

/// The bicubic baseline: antialiased bicubic upscaling by `scale`, clamped to [-1, 1].
///
/// # Shapes
/// - `lr`: [batch, c, h, w] -> [batch, c, h * scale, w * scale]
pub fn upscale_bicubic(lr: &Tensor, scale: i64) -> Result<Tensor> {
    let s = lr.size();
    if s.len() != 4 || scale < 1 {
        return Err(GanError::Config(format!("cannot upscale a batch of shape {s:?} by {scale}")));
    }
    Ok(resize_bicubic(lr, [s[2] * scale, s[3] * scale])?.clamp(-1.0, 1.0))
}
