//! Data augmentation from a class-conditional generator: a fixed number of samples per class,
//! written with their labels as HDF5 in genlab's layout (`images` uint8 N x C x H x W, `labels`
//! int64), the layout `genlab_data::open` reads back as a labelled dataset, ready to be mixed
//! into a classifier's training data (as in Antoniou et al., "Data Augmentation Generative
//! Adversarial Networks", arXiv 1711.04340, here with the class-conditional generator of
//! [`crate::model`]).
use crate::error::{GanError, Result};
use crate::model::Generator;
use crate::sample::sample;
use std::path::Path;

/// What [`augment`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AugmentSummary {
    pub images: usize,
    pub per_class: usize,
    /// The classes, in the order written (class-major: all of the first, then the next, ...).
    pub classes: Vec<i64>,
    /// [channels, height, width].
    pub image_shape: [i64; 3],
}

impl std::fmt::Display for AugmentSummary {
    /// "5000 images (500 per class, classes [0, 1, ...]) of 1x28x28".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [c, h, w] = self.image_shape;
        write!(f, "{} images ({} per class, classes {:?}) of {c}x{h}x{w}", self.images, self.per_class, self.classes)
    }
}

/// Write `per_class` samples of each class in `classes` (every class of the model when None)
/// to the HDF5 file `out`, class by class, `chunk` images per generator call. The samples come
/// from libtorch's global generator, so seed it first for a reproducible file.
pub fn augment(
    model: &Generator,
    per_class: usize,
    classes: Option<&[i64]>,
    out: &Path,
    chunk: usize,
) -> Result<AugmentSummary> {
    let Some(k) = model.cfg.num_classes else {
        return Err(GanError::Labels(
            "augmentation needs a class-conditional generator (a run trained with --model cgan); this one is \
             unconditional"
                .into(),
        ));
    };
    if per_class == 0 {
        return Err(GanError::Config("the number of images per class must be at least 1, got 0".into()));
    }
    let classes: Vec<i64> = match classes {
        None => (0..k).collect(),
        Some([]) => return Err(GanError::Labels("the list of classes is empty".into())),
        Some(list) => {
            if let Some(bad) = list.iter().find(|&&c| c < 0 || c >= k) {
                return Err(GanError::Labels(format!(
                    "class {bad} does not exist: this generator has {k} classes, 0..={}",
                    k - 1
                )));
            }
            list.to_vec()
        }
    };
    let shape = model.cfg.image_shape;
    let total = per_class * classes.len();
    let labels: Vec<i64> = classes.iter().flat_map(|&c| std::iter::repeat_n(c, per_class)).collect();
    let mut writer = genlab_data::H5Writer::create(
        out,
        total,
        shape.map(|v| v as usize),
        true,
        &[("source", "genlab gan augment")],
    )?;
    for part in labels.chunks(chunk.max(1)) {
        let x = sample(model, part.len() as i64, Some(part))?;
        let u8s = genlab_core::images::to_u8(&x).contiguous();
        let mut buf = vec![0u8; u8s.numel()];
        let len = buf.len();
        u8s.copy_data_u8(&mut buf, len);
        writer.append(&buf, Some(part))?;
    }
    writer.finish()?;
    Ok(AugmentSummary { images: total, per_class, classes, image_shape: shape })
}
