//! Image-quality metrics for super-resolution, on images in [0, 1] (data range 1).
//!
//! - PSNR: `10 log10(1 / MSE)` per image.
//! - SSIM: Wang, Bovik, Sheikh & Simoncelli, "Image Quality Assessment: From Error Visibility to
//!   Structural Similarity", IEEE TIP 2004, with the paper's settings: an 11x11 Gaussian window
//!   of sigma 1.5 (normalised to sum 1), K1 = 0.01, K2 = 0.03, population (not sample)
//!   variances, the map over the window positions that lie wholly inside the image, averaged
//!   (and over the channels). This equals `skimage.metrics.structural_similarity(...,
//!   gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)`, which
//!   crops the same 5-pixel border; `gan/tests/reference/gen_sr_refs.py` checks it.
//!
//! Both are computed in f64.
use crate::error::{GanError, Result};
use tch::{Kind, Tensor};

/// SSIM's Gaussian window: side 11, sigma 1.5.
pub const SSIM_WINDOW: i64 = 11;
pub const SSIM_SIGMA: f64 = 1.5;
pub const SSIM_K1: f64 = 0.01;
pub const SSIM_K2: f64 = 0.03;

fn check_pair(a: &Tensor, b: &Tensor, what: &str) -> Result<(i64, i64, i64, i64)> {
    let (sa, sb) = (a.size(), b.size());
    match sa.as_slice() {
        &[n, c, h, w] if sa == sb && n > 0 => Ok((n, c, h, w)),
        _ => Err(GanError::Config(format!(
            "{what} compares two image batches [n, c, h, w] of the same shape; got {sa:?} and {sb:?}"
        ))),
    }
}

/// Mean squared error per image.
///
/// # Shapes
/// - `a`, `b`: [n, c, h, w] -> [n] (f64)
pub fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_pair(a, b, "the MSE")?;
    let d = a.to_kind(Kind::Double) - b.to_kind(Kind::Double);
    Ok(d.square().flatten(1, -1).mean_dim(1, false, Kind::Double))
}

/// Peak signal-to-noise ratio per image in dB, for images in [0, 1]: `10 log10(1 / MSE)`
/// (+inf for identical images).
///
/// # Shapes
/// - `a`, `b`: [n, c, h, w] -> [n] (f64)
pub fn psnr(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(mse(a, b)?.log10() * -10.0)
}

/// The normalised 1-D Gaussian of SSIM's window.
fn gaussian_1d() -> Tensor {
    let r = SSIM_WINDOW / 2;
    let g: Vec<f64> = (-r..=r).map(|x| (-((x * x) as f64) / (2.0 * SSIM_SIGMA * SSIM_SIGMA)).exp()).collect();
    let sum: f64 = g.iter().sum();
    Tensor::from_slice(&g.iter().map(|v| v / sum).collect::<Vec<_>>())
}

/// Gaussian-weighted local means over the window positions inside the image ("valid").
///
/// # Shapes
/// - `x`: [n * c, 1, h, w] (f64) -> [n * c, 1, h - 10, w - 10]
fn local_mean(x: &Tensor, g: &Tensor) -> Tensor {
    let k = g.size()[0];
    let rows = x.conv2d(&g.view([1, 1, k, 1]), None::<&Tensor>, [1], [0], [1], 1);
    rows.conv2d(&g.view([1, 1, 1, k]), None::<&Tensor>, [1], [0], [1], 1)
}

/// Structural similarity per image (mean of the SSIM map over positions and channels), for
/// images in [0, 1]; see the module docs. Height and width must be at least 11.
///
/// # Shapes
/// - `a`, `b`: [n, c, h, w] -> [n] (f64)
pub fn ssim(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = check_pair(a, b, "SSIM")?;
    if h < SSIM_WINDOW || w < SSIM_WINDOW {
        return Err(GanError::Config(format!(
            "SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} window needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}; got {h}x{w}"
        )));
    }
    let device = a.device();
    let g = gaussian_1d().to_device(device);
    let x = a.to_kind(Kind::Double).reshape([n * c, 1, h, w]);
    let y = b.to_kind(Kind::Double).reshape([n * c, 1, h, w]);
    let (mx, my) = (local_mean(&x, &g), local_mean(&y, &g));
    let vx = local_mean(&(&x * &x), &g) - &mx * &mx;
    let vy = local_mean(&(&y * &y), &g) - &my * &my;
    let cxy = local_mean(&(&x * &y), &g) - &mx * &my;
    let (c1, c2) = (SSIM_K1 * SSIM_K1, SSIM_K2 * SSIM_K2);
    let num = (&mx * &my * 2.0 + c1) * (cxy * 2.0 + c2);
    let den = (mx.square() + my.square() + c1) * (vx + vy + c2);
    Ok((num / den).reshape([n, -1]).mean_dim(1, false, Kind::Double))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn window_is_normalised_and_symmetric() {
        let g = gaussian_1d();
        assert_eq!(g.size(), [11]);
        assert!((g.sum(Kind::Double).double_value(&[]) - 1.0).abs() < 1e-12);
        assert_eq!(g.double_value(&[0]), g.double_value(&[10]));
        assert!(g.double_value(&[5]) > g.double_value(&[4]));
    }

    #[test]
    fn shapes_must_agree() {
        let a = Tensor::zeros([2, 1, 12, 12], (Kind::Float, Device::Cpu));
        let e = ssim(&a, &a.narrow(0, 0, 1)).unwrap_err().to_string();
        assert!(e.contains("[2, 1, 12, 12]") && e.contains("[1, 1, 12, 12]"), "{e}");
        let small = Tensor::zeros([1, 1, 7, 12], (Kind::Float, Device::Cpu));
        assert!(ssim(&small, &small).unwrap_err().to_string().contains("7x12"));
    }
}
