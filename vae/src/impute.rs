//! Imputation of missing pixels by iterated conditional sampling (pseudo-Gibbs; Rezende,
//! Mohamed, Wierstra 2014, arXiv 1401.4082, section 5.3): fill the missing pixels, encode,
//! sample z, decode, replace only the missing pixels, repeat; the known pixels stay fixed.
//! The last iterations use the posterior mean so the result is the model's best guess.
use crate::error::{Result, VaeError};
use crate::model::Vae;
use genlab_core::seed::Rng;
use tch::{Kind, Tensor};

/// A mask with 1 where pixels are known.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaskKind {
    /// A centred square hiding `fraction` of the side.
    Box { fraction: f64 },
    /// Each pixel hidden independently with probability `p`.
    Random { p: f64 },
}

/// A mask for images of shape `[n, c, h, w]` (1 = known, 0 = missing), the same across channels.
///
/// # Shapes
/// - returns [n, c, h, w] f32
pub fn make_mask(kind: MaskKind, shape: [i64; 4], seed: u64) -> Result<Tensor> {
    let [n, c, h, w] = shape;
    let m = match kind {
        MaskKind::Box { fraction } => {
            if !(0.0..1.0).contains(&fraction) {
                return Err(VaeError::Config(format!("box fraction must be in [0, 1), got {fraction}")));
            }
            let (bh, bw) = (((h as f64) * fraction).round() as i64, ((w as f64) * fraction).round() as i64);
            let m = Tensor::ones([n, 1, h, w], (Kind::Float, tch::Device::Cpu));
            let _ = m.narrow(2, (h - bh) / 2, bh).narrow(3, (w - bw) / 2, bw).fill_(0.0);
            m
        }
        MaskKind::Random { p } => {
            if !(0.0..1.0).contains(&p) {
                return Err(VaeError::Config(format!("random mask probability must be in [0, 1), got {p}")));
            }
            let mut rng = Rng::new(seed);
            let v: Vec<f32> = (0..n * h * w).map(|_| if rng.next_f64() < p { 0.0 } else { 1.0 }).collect();
            Tensor::from_slice(&v).view([n, 1, h, w])
        }
    };
    Ok(m.expand([n, c, h, w], false).contiguous())
}

/// Fill the pixels where `mask` is 0, keeping the others exactly.
///
/// # Shapes
/// - `x`, `mask`: [n, c, h, w] -> [n, c, h, w]
pub fn impute(model: &Vae, x: &Tensor, mask: &Tensor, labels: Option<&Tensor>, iters: usize) -> Result<Tensor> {
    if mask.size() != x.size() {
        return Err(VaeError::Shape(format!("mask {:?} does not match the images {:?}", mask.size(), x.size())));
    }
    let mask = mask.to_device(x.device()).to_kind(Kind::Float);
    let hole: Tensor = 1.0 - &mask;
    let keep = |fill: &Tensor| x * &mask + fill * &hole;
    tch::no_grad(|| {
        // Start from mid-grey in the gaps.
        let mut cur = keep(&x.zeros_like());
        let iters = iters.max(1);
        for i in 0..iters {
            let (mu, logvar) = model.encode(&cur, labels)?;
            let z = if i + 2 >= iters { mu } else { &mu + (logvar * 0.5).exp() * mu.randn_like() };
            cur = keep(&model.output_to_image(&model.decode(&z, labels)?));
        }
        Ok(cur)
    })
}

/// Mean squared error over the missing pixels only.
pub fn masked_mse(pred: &Tensor, truth: &Tensor, mask: &Tensor) -> f64 {
    let missing: Tensor = 1.0 - mask;
    let n = missing.sum(Kind::Float).double_value(&[]).max(1.0);
    ((pred - truth).square() * missing).sum(Kind::Float).double_value(&[]) / n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VaeConfig;
    use tch::{nn::VarStore, Device};

    #[test]
    fn known_pixels_stay_and_shapes_are_checked() {
        let vs = VarStore::new(Device::Cpu);
        let cfg = VaeConfig { image_shape: [1, 8, 8], latent_dim: 4, widths: vec![16], ..Default::default() };
        let model = Vae::new(vs.root(), cfg).unwrap();
        let x = Tensor::rand([3, 1, 8, 8], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let m = make_mask(MaskKind::Box { fraction: 0.5 }, [3, 1, 8, 8], 0).unwrap();
        assert_eq!(m.sum(Kind::Float).double_value(&[]), 3.0 * 48.0);
        let out = impute(&model, &x, &m, None, 5).unwrap();
        assert!((&out * &m).equal(&(&x * &m)));
        assert!(impute(&model, &x, &m.narrow(0, 0, 2), None, 5).unwrap_err().to_string().contains("does not match"));
        let r = make_mask(MaskKind::Random { p: 0.5 }, [3, 1, 8, 8], 1).unwrap();
        let frac = r.mean(Kind::Float).double_value(&[]);
        assert!((0.3..0.7).contains(&frac), "{frac}");
        assert!(make_mask(MaskKind::Box { fraction: 1.5 }, [1, 1, 8, 8], 0).is_err());
        assert!((masked_mse(&x, &x, &m)).abs() < 1e-12);
    }
}
