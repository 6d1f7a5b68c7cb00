//! Inference: sampling from a trained generator.
use crate::error::{GanError, Result};
use crate::model::Generator;
use tch::{Kind, Tensor};

/// `n` images from z ~ N(0, I), BatchNorm using its running averages (so a sample does not
/// depend on the rest of the batch). A conditional generator takes one label per image, or
/// cycles 0..K when `labels` is None; an unconditional one takes none.
///
/// # Shapes
/// - returns [n, c, h, w] in [-1, 1]
pub fn sample(model: &Generator, n: i64, labels: Option<&[i64]>) -> Result<Tensor> {
    if n <= 0 {
        return Err(GanError::Config(format!("the number of samples must be at least 1, got {n}")));
    }
    let device = model.device();
    let labels = match (model.cfg.num_classes, labels) {
        (None, Some(_)) => {
            return Err(GanError::Labels("this generator is unconditional; it takes no class labels".into()))
        }
        (None, None) => None,
        (Some(k), None) => Some(Tensor::arange(n, (Kind::Int64, device)).remainder(k)),
        (Some(k), Some(l)) => {
            if l.len() as i64 != n {
                return Err(GanError::Labels(format!("{} labels given for {n} samples", l.len())));
            }
            if let Some(bad) = l.iter().find(|&&c| c < 0 || c >= k) {
                return Err(GanError::Labels(format!(
                    "class {bad} does not exist: this generator has {k} classes, 0..={}",
                    k - 1
                )));
            }
            Some(Tensor::from_slice(l).to_device(device))
        }
    };
    let z = Tensor::randn([n, model.cfg.latent_dim], (Kind::Float, device));
    tch::no_grad(|| model.forward(&z, labels.as_ref(), false))
}
