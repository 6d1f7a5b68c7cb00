//! StyleGAN2's objectives as free functions: the non-saturating logistic loss, the R1
//! gradient penalty (Mescheder et al. 2018, arXiv 1801.04406), the path-length regulariser
//! (arXiv 1912.04958, section 3.2) and style mixing (StyleGAN, arXiv 1812.04948, section 3.1).
//!
//! Follows stylegan2-ada-pytorch `training/loss.py` (`StyleGAN2Loss`). Lazy regularisation
//! (section 3.1 of the paper: the regularisers run every 16 discriminator / 4 generator steps,
//! multiplied by that interval) is the training step's business, see
//! [`crate::stylegan2::train`].
use crate::error::{GanError, Result};
use tch::{Kind, Tensor};

/// Generator loss: `softplus(-D(G(z)))`, i.e. `-log sigmoid(D(G(z)))`, averaged.
///
/// # Shapes
/// - `fake_logits`: [n, 1] -> []
pub fn g_loss_logistic(fake_logits: &Tensor) -> Tensor {
    (-fake_logits).softplus().mean(Kind::Float)
}

/// Discriminator loss: `softplus(D(G(z))) + softplus(-D(x))`, each averaged.
///
/// # Shapes
/// - `real_logits`, `fake_logits`: [n, 1] -> []
pub fn d_loss_logistic(real_logits: &Tensor, fake_logits: &Tensor) -> Tensor {
    fake_logits.softplus().mean(Kind::Float) + (-real_logits).softplus().mean(Kind::Float)
}

/// The R1 penalty per sample, `|grad_x D(x)|^2`, differentiable (for the discriminator's
/// update). `real` must require gradients and `real_logits` be computed from it.
/// The loss term is `gamma / 2` times its mean.
///
/// # Shapes
/// - `real_logits`: [n, 1]; `real`: [n, c, h, w] -> [n]
pub fn r1_penalty(real_logits: &Tensor, real: &Tensor) -> Tensor {
    let total = real_logits.sum(Kind::Float);
    let grads = Tensor::run_backward(&[&total], &[real], true, true);
    grads[0].square().sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float)
}

/// The path-length regulariser's state: the running mean `a` of the Jacobian norms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathLength {
    /// Running mean of the path lengths.
    pub mean: f64,
    /// Its decay rate (0.01).
    pub decay: f64,
}

impl PathLength {
    pub fn new(decay: f64) -> Self {
        PathLength { mean: 0.0, decay }
    }

    /// The penalty `(|J_w^T y| - a)^2` per sample for images `img` generated from `ws` (which
    /// must require gradients), with `y` Gaussian noise scaled by `1 / sqrt(h w)`; `a` is
    /// updated to `lerp(a, mean |J_w^T y|, decay)`. Returns (penalty [n], the path lengths [n]).
    ///
    /// # Shapes
    /// - `img`: [n, c, h, w]; `ws`: [n, num_ws, w_dim] -> ([n], [n])
    pub fn penalty(&mut self, img: &Tensor, ws: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, _, h, w) = img.size4()?;
        let noise = Tensor::randn_like(img) / ((h * w) as f64).sqrt();
        let total = (img * noise).sum(Kind::Float);
        let grads = Tensor::run_backward(&[&total], &[ws], true, true);
        let lengths =
            grads[0].square().sum_dim_intlist([2i64].as_slice(), false, Kind::Float).mean_dim(1, false, Kind::Float);
        let lengths = lengths.sqrt();
        let mean = Tensor::from(self.mean as f32).to_device(img.device()).lerp(&lengths.mean(Kind::Float), self.decay);
        self.mean = mean.double_value(&[]);
        if !self.mean.is_finite() {
            return Err(GanError::Config(format!("the path-length mean became {}", self.mean)));
        }
        Ok(((&lengths - mean).square(), lengths.detach()))
    }
}

/// Style mixing: `ws[:, cutoff..]` replaced by `ws2[:, cutoff..]` (the layers from `cutoff`
/// on take their styles from the second latent).
///
/// # Shapes
/// - `ws`, `ws2`: [n, num_ws, w_dim] -> [n, num_ws, w_dim]
pub fn mix_styles(ws: &Tensor, ws2: &Tensor, cutoff: i64) -> Tensor {
    let num_ws = ws.size()[1];
    let cutoff = cutoff.clamp(0, num_ws);
    if cutoff == num_ws {
        return ws.shallow_clone();
    }
    Tensor::cat(&[ws.narrow(1, 0, cutoff), ws2.narrow(1, cutoff, num_ws - cutoff)], 1)
}

/// The crossover point of one style-mixing draw, from libtorch's generator: with
/// probability `prob` a uniform cutoff in `1..num_ws`, else `num_ws` (no mixing).
pub fn mixing_cutoff(num_ws: i64, prob: f64) -> i64 {
    if num_ws < 2 || prob <= 0.0 {
        return num_ws;
    }
    let cutoff = Tensor::randint_low(1, num_ws, [1], (Kind::Int64, tch::Device::Cpu)).int64_value(&[0]);
    let u = Tensor::rand([1], (Kind::Float, tch::Device::Cpu)).double_value(&[0]);
    if u < prob {
        cutoff
    } else {
        num_ws
    }
}
