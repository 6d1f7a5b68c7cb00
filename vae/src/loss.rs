//! The VAE objective as free functions (Kingma & Welling 2013, arXiv 1312.6114, appendix B),
//! each returning one value per sample so callers can average, sum or score; and the KL autoencoder's
//! (Rombach et al. 2022, arXiv 2112.10752).
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// KL(N(mu, exp(logvar)) || N(0, I)) in closed form.
///
/// # Shapes
/// - `mu`, `logvar`: [batch, latent] -> [batch]
pub fn kl_standard_normal(mu: &Tensor, logvar: &Tensor) -> Tensor {
    ((logvar.exp() + mu.square() - 1.0 - logvar) * 0.5).sum_dim_intlist(-1, false, Kind::Float)
}

/// KL(N(mu1, exp(logvar1)) || N(mu2, exp(logvar2))) for diagonal Gaussians.
///
/// # Shapes
/// - all: [batch, latent] -> [batch]
pub fn kl_gaussians(mu1: &Tensor, logvar1: &Tensor, mu2: &Tensor, logvar2: &Tensor) -> Tensor {
    ((logvar2 - logvar1 + (logvar1.exp() + (mu1 - mu2).square()) / logvar2.exp() - 1.0) * 0.5).sum_dim_intlist(
        -1,
        false,
        Kind::Float,
    )
}

/// -log p(x | z) for Bernoulli pixels given logits; `x01` in [0, 1].
///
/// # Shapes
/// - `logits`, `x01`: [batch, ...] -> [batch]
pub fn bernoulli_nll(logits: &Tensor, x01: &Tensor) -> Tensor {
    logits
        .binary_cross_entropy_with_logits::<Tensor>(x01, None, None, tch::Reduction::None)
        .flatten(1, -1)
        .sum_dim_intlist(-1, false, Kind::Float)
}

/// -log N(x; mean, exp(log_var)) summed over pixels; `log_var` broadcasts.
///
/// # Shapes
/// - `mean`, `x`: [batch, ...]; `log_var`: broadcastable -> [batch]
pub fn gaussian_nll(mean: &Tensor, x: &Tensor, log_var: &Tensor) -> Tensor {
    (((x - mean).square() / log_var.exp() + log_var + LN_2PI) * 0.5).flatten(1, -1).sum_dim_intlist(
        -1,
        false,
        Kind::Float,
    )
}

/// The ELBO's parts for a batch, per sample, in nats.
#[derive(Debug)]
pub struct ElboTerms {
    /// -E_q[log p(x | z)] (one-sample estimate), [batch]
    pub recon: Tensor,
    /// KL(q(z | x) || p(z)), [batch]
    pub kl: Tensor,
}

impl ElboTerms {
    /// Negative ELBO per sample (nats): recon + KL.
    pub fn neg_elbo(&self) -> Tensor {
        &self.recon + &self.kl
    }
    /// The training loss: mean of recon + `kl_weight` * KL.
    pub fn loss(&self, kl_weight: f64) -> Tensor {
        (&self.recon + &self.kl * kl_weight).mean(Kind::Float)
    }
}

/// The pixel loss of a KL autoencoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReconLoss {
    /// |x - x̂|, the LDM autoencoders' pixel term (`ldm/modules/losses/contperceptual.py`).
    L1,
    /// (x - x̂)².
    Mse,
}

/// Reconstruction loss summed over pixels, one value per image.
///
/// # Shapes
/// - `recon`, `x`: [batch, ...] -> [batch]
pub fn reconstruction_loss(kind: ReconLoss, recon: &Tensor, x: &Tensor) -> Tensor {
    let d = recon - x;
    let per_pixel = match kind {
        ReconLoss::L1 => d.abs(),
        ReconLoss::Mse => d.square(),
    };
    per_pixel.flatten(1, -1).sum_dim_intlist(-1, false, Kind::Float)
}

/// The KL autoencoder's objective (Rombach et al. 2022, arXiv 2112.10752, appendix G; LDM's
/// `LPIPSWithDiscriminator` without its perceptual, adversarial and learned-variance parts):
/// per-image summed reconstruction loss plus `kl_weight` times the KL of the latent posterior to N(0, I),
/// both averaged over the batch. LDM's kl-f* configs use `kl_weight` 1e-6.
///
/// # Shapes
/// - `recon`, `x`: [batch, c, h, w]; `mean`, `logvar`: [batch, latent_channels, h', w']
/// - returns (loss [], recon per image [batch], KL per image [batch])
pub fn kl_autoencoder_loss(
    kind: ReconLoss,
    recon: &Tensor,
    x: &Tensor,
    mean: &Tensor,
    logvar: &Tensor,
    kl_weight: f64,
) -> (Tensor, Tensor, Tensor) {
    let rec = reconstruction_loss(kind, recon, x);
    let kl = kl_standard_normal(&mean.flatten(1, -1), &logvar.flatten(1, -1));
    let loss = rec.mean(Kind::Float) + kl.mean(Kind::Float) * kl_weight;
    (loss, rec, kl)
}

/// Convert a negative log-likelihood in nats per image to bits per dimension.
pub fn bits_per_dim(nats_per_image: f64, dims: i64) -> f64 {
    nats_per_image / (dims as f64 * std::f64::consts::LN_2)
}

/// The KL weight at `step` for beta `beta` warmed up linearly over `warmup` steps.
pub fn kl_weight(beta: f64, step: u64, warmup: u64) -> f64 {
    if warmup == 0 {
        beta
    } else {
        beta * ((step as f64 + 1.0) / warmup as f64).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v).view([1, v.len() as i64])
    }

    #[test]
    fn kl_closed_forms() {
        // KL of identical Gaussians is 0.
        let mu = t(&[0.3, -1.2]);
        let lv = t(&[0.5, -0.7]);
        assert!(kl_gaussians(&mu, &lv, &mu, &lv).double_value(&[0]).abs() < 1e-7);
        assert!(kl_standard_normal(&t(&[0.0, 0.0]), &t(&[0.0, 0.0])).double_value(&[0]).abs() < 1e-7);
        // KL(N(1, 1) || N(0, 1)) = 1/2 per dimension.
        assert!((kl_standard_normal(&t(&[1.0]), &t(&[0.0])).double_value(&[0]) - 0.5).abs() < 1e-6);
        // KL(N(0, s^2) || N(0, 1)) = (s^2 - 1 - ln s^2) / 2, s^2 = e.
        let want = (std::f64::consts::E - 1.0 - 1.0) / 2.0;
        assert!((kl_standard_normal(&t(&[0.0]), &t(&[1.0])).double_value(&[0]) - want).abs() < 1e-6);
        // The general form agrees with the standard-normal one.
        let z = Tensor::zeros([1, 2], (Kind::Float, Device::Cpu));
        assert!(kl_gaussians(&mu, &lv, &z, &z).allclose(&kl_standard_normal(&mu, &lv), 1e-6, 1e-6, false));
    }

    #[test]
    fn likelihoods_by_hand() {
        // Bernoulli: logits 0 means p = 1/2 whatever x: ln 2 per pixel.
        let nll = bernoulli_nll(
            &Tensor::zeros([2, 1, 2, 2], (Kind::Float, Device::Cpu)),
            &Tensor::ones([2, 1, 2, 2], (Kind::Float, Device::Cpu)),
        );
        assert!((nll.double_value(&[1]) - 4.0 * std::f64::consts::LN_2).abs() < 1e-5);
        // Gaussian with unit variance at the mean: ln(2 pi) / 2 per pixel.
        let x = t(&[0.5, 0.25]);
        let g = gaussian_nll(&x, &x, &Tensor::from(0.0f32));
        assert!((g.double_value(&[0]) - LN_2PI).abs() < 1e-5);
        assert!((bits_per_dim(784.0 * std::f64::consts::LN_2, 784) - 1.0).abs() < 1e-12);
        assert_eq!(kl_weight(2.0, 49, 100), 1.0);
        assert_eq!(kl_weight(2.0, 500, 100), 2.0);
    }

    #[test]
    fn kl_autoencoder_terms_by_hand() {
        let x = Tensor::zeros([2, 1, 2, 2], (Kind::Float, Device::Cpu));
        let r = Tensor::full([2, 1, 2, 2], 0.5, (Kind::Float, Device::Cpu));
        assert!((reconstruction_loss(ReconLoss::L1, &r, &x).double_value(&[0]) - 2.0).abs() < 1e-6);
        assert!((reconstruction_loss(ReconLoss::Mse, &r, &x).double_value(&[1]) - 1.0).abs() < 1e-6);
        // KL(N(1, 1) || N(0, 1)) = 1/2 per latent element: 4 elements per image.
        let mean = Tensor::ones([2, 1, 2, 2], (Kind::Float, Device::Cpu));
        let logvar = Tensor::zeros([2, 1, 2, 2], (Kind::Float, Device::Cpu));
        let (loss, rec, kl) = kl_autoencoder_loss(ReconLoss::Mse, &r, &x, &mean, &logvar, 0.1);
        assert_eq!(rec.size(), [2]);
        assert!((kl.double_value(&[0]) - 2.0).abs() < 1e-6);
        assert!((loss.double_value(&[]) - (1.0 + 0.1 * 2.0)).abs() < 1e-6);
    }
}
