//! Inference tools: sampling from the prior and reconstruction, for the VAEs and the KL autoencoder.
use crate::autoencoder_kl::AutoencoderKL;
use crate::error::Result;
use crate::model::Vae;
use tch::{Kind, Tensor};

/// `n` images decoded from z ~ N(0, I) (per class, cycling 0..K, for a conditional VAE
/// when `labels` is None).
///
/// # Shapes
/// - returns [n, c, h, w] in [-1, 1]
pub fn sample_prior(model: &Vae, n: i64, labels: Option<&Tensor>) -> Result<Tensor> {
    let device = model.device();
    let z = Tensor::randn([n, model.cfg.latent_dim], (Kind::Float, device));
    let cycled;
    let labels = match (labels, model.cfg.num_classes) {
        (Some(l), _) => Some(l),
        (None, Some(k)) => {
            cycled = Tensor::arange(n, (Kind::Int64, device)).remainder(k);
            Some(&cycled)
        }
        (None, None) => None,
    };
    tch::no_grad(|| Ok(model.output_to_image(&model.decode(&z, labels)?)))
}

/// Reconstruct images through the posterior mean.
///
/// # Shapes
/// - `x`: [n, c, h, w] in [-1, 1] -> [n, c, h, w]
pub fn reconstruct(model: &Vae, x: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
    tch::no_grad(|| {
        let (mu, _) = model.encode(x, labels)?;
        Ok(model.output_to_image(&model.decode(&mu, labels)?))
    })
}

/// Reconstruct images through a KL autoencoder's posterior mode, clamped to [-1, 1].
///
/// # Shapes
/// - `x`: [n, c, h, w] in [-1, 1] -> [n, c, h, w]
pub fn reconstruct_kl(model: &AutoencoderKL, x: &Tensor) -> Result<Tensor> {
    tch::no_grad(|| Ok(model.forward(x, false)?.clamp(-1.0, 1.0)))
}

/// `n` decodes of scaled latents drawn from N(0, I) at the configured `sample_size`, clamped to [-1, 1].
/// A KL autoencoder is not a generative model on its own (its KL weight is tiny): these images show what
/// its decoder makes of unit-variance latents, the range a latent diffusion model samples in.
///
/// # Shapes
/// - returns [n, out_channels, h, w], (h, w) the config's `sample_size` rounded down to a multiple of f
pub fn decode_random_latents(model: &AutoencoderKL, n: i64) -> Result<Tensor> {
    let (h, w) = model.cfg.sample_size.hw();
    let (lh, lw) = model.latent_hw(h, w);
    let z = Tensor::randn([n, model.cfg.latent_channels, lh.max(1), lw.max(1)], (Kind::Float, model.device()));
    tch::no_grad(|| Ok(model.decode_latents(&z)?.clamp(-1.0, 1.0)))
}
