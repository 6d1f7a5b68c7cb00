//! Feature networks: what turns images into the vectors the metrics compare.
use crate::error::{EvalError, Result};
use tch::{Kind, Tensor};

/// A batch of features and, where the network classifies, its logits.
#[derive(Debug)]
pub struct Features {
    /// [n, d]
    pub features: Tensor,
    /// [n, classes]
    pub logits: Option<Tensor>,
}

/// A network that embeds images for the metrics.
pub trait FeatureNet {
    /// A short name for reports (`inception-v3-fid`, `classifier:runs/clf`).
    fn name(&self) -> String;
    /// Width of the features.
    fn dim(&self) -> i64;
    /// Features (and logits) of images in [-1, 1], evaluated without gradients.
    ///
    /// # Shapes
    /// - `images`: [n, c, h, w] in [-1, 1] -> features [n, dim], logits [n, classes]
    fn embed(&self, images: &Tensor) -> Result<Features>;
}

/// [`FeatureNet::embed`] over `images` in batches of `batch`, results on the CPU.
///
/// # Shapes
/// - `images`: [n, c, h, w] in [-1, 1] -> features [n, dim], logits [n, classes]
pub fn embed_all(net: &dyn FeatureNet, images: &Tensor, batch: i64) -> Result<Features> {
    let size = images.size();
    if size.len() != 4 || size[0] == 0 {
        return Err(EvalError::Shape(format!("images must be [n, c, h, w] with n >= 1, got {size:?}")));
    }
    let n = size[0];
    let (mut feats, mut logits) = (Vec::new(), Vec::new());
    for lo in (0..n).step_by(batch.max(1) as usize) {
        let f = net.embed(&images.narrow(0, lo, batch.max(1).min(n - lo)))?;
        feats.push(f.features.to_device(tch::Device::Cpu).to_kind(Kind::Float));
        if let Some(l) = f.logits {
            logits.push(l.to_device(tch::Device::Cpu).to_kind(Kind::Float));
        }
    }
    let logits = (logits.len() == feats.len()).then(|| Tensor::cat(&logits, 0));
    Ok(Features { features: Tensor::cat(&feats, 0), logits })
}
