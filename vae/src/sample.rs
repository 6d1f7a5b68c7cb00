//! Inference tools: sampling from the prior and reconstruction.
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
