//! The dataset settings every genlab command takes (`--image-size`, `--channels`, `--limit`,
//! `--add`, ...), in one struct that turns into [`OpenOptions`], a [`Selection`] and a
//! [`DataSpec`]. With the `clap` feature it is a `clap::Args` group a command line flattens.
use crate::error::{DataError, Result};
use crate::{Crop, DataSpec, Dataset, OpenOptions, Selection};
use std::sync::Arc;

/// How to read a dataset (mostly for image folders) and which of its items to keep.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct DataOptions {
    /// Resize image-folder images to HxW (e.g. 64x64); other sources must already have this size.
    #[cfg_attr(feature = "clap", arg(long, value_parser = parse_size))]
    pub image_size: Option<[usize; 2]>,
    /// 1 (grey) or 3 (RGB).
    #[cfg_attr(feature = "clap", arg(long))]
    pub channels: Option<usize>,
    /// Random instead of centre crops for image folders.
    #[cfg_attr(feature = "clap", arg(long))]
    pub random_crop: bool,
    /// Skip unreadable images in a folder (and report how many) instead of failing.
    #[cfg_attr(feature = "clap", arg(long))]
    pub skip_bad: bool,
    /// HDF5 labels dataset (default: `labels` beside the images, when present).
    #[cfg_attr(feature = "clap", arg(long))]
    pub h5_labels: Option<String>,
    /// Leave out every image of this class (e.g. to train an anomaly detector on the rest).
    #[cfg_attr(feature = "clap", arg(long))]
    pub exclude_class: Option<i64>,
    /// Keep only the first N images of every class (a small labelled training set).
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub per_class: Option<usize>,
    /// Keep only the first N images (after --exclude-class and --per-class).
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub limit: Option<usize>,
    /// Append another dataset of the same image shape (e.g. synthetic images from
    /// `genlab gan augment`); repeatable. The cuts above apply to --data only.
    #[cfg_attr(feature = "clap", arg(long = "add", value_name = "DATASET"))]
    pub add: Vec<String>,
}

/// `HxW` or one number for a square, each at least 1.
pub fn parse_size(s: &str) -> std::result::Result<[usize; 2], String> {
    let parts: Vec<&str> = s.split(['x', 'X']).collect();
    let num = |p: &str| p.trim().parse::<usize>().ok().filter(|&n| n > 0);
    match parts.as_slice() {
        [one] => num(one).map(|n| [n, n]),
        [h, w] => num(h).zip(num(w)).map(|(h, w)| [h, w]),
        _ => None,
    }
    .ok_or_else(|| format!("`{s}` is not a size: use HxW (64x64) or one number"))
}

impl DataOptions {
    /// How to read a source (`seed` seeds random crops).
    pub fn read(&self, seed: u64) -> Result<OpenOptions> {
        if let Some(c) = self.channels.filter(|c| *c != 1 && *c != 3) {
            return Err(DataError::Invalid(format!("--channels must be 1 or 3, not {c}")));
        }
        Ok(OpenOptions {
            size: self.image_size,
            channels: self.channels,
            crop: if self.random_crop { Crop::Random { seed } } else { Crop::Center },
            skip_bad: self.skip_bad,
            h5_labels: self.h5_labels.clone(),
        })
    }

    /// How to read a source used whole (a test or reference set): the read options without
    /// random crops or skipped files, and no selection.
    pub fn read_whole(&self) -> OpenOptions {
        OpenOptions {
            size: self.image_size,
            channels: self.channels,
            h5_labels: self.h5_labels.clone(),
            ..Default::default()
        }
    }

    /// Which items to keep.
    pub fn selection(&self) -> Result<Selection> {
        if self.limit == Some(0) {
            return Err(DataError::Invalid("--limit must be at least 1".into()));
        }
        Ok(Selection {
            exclude_class: self.exclude_class,
            per_class: self.per_class,
            limit: self.limit,
            add: self.add.clone(),
        })
    }

    /// The dataset `spec` read and cut with these options (`seed` seeds random crops).
    pub fn spec(&self, spec: &str, seed: u64) -> Result<DataSpec> {
        Ok(DataSpec { spec: spec.to_string(), read: self.read(seed)?, select: self.selection()? })
    }

    /// Open `spec` read and cut with these options.
    pub fn open(&self, spec: &str, seed: u64) -> Result<Arc<dyn Dataset>> {
        self.spec(spec, seed)?.open()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_bad_settings() {
        assert_eq!(parse_size("64"), Ok([64, 64]));
        assert_eq!(parse_size("32x48"), Ok([32, 48]));
        assert!(parse_size("0x4").is_err() && parse_size("4x4x4").is_err());
        let bad = DataOptions { channels: Some(2), ..Default::default() };
        assert!(bad.read(0).unwrap_err().to_string().contains("--channels must be 1 or 3"));
        let bad = DataOptions { limit: Some(0), ..Default::default() };
        assert!(bad.selection().unwrap_err().to_string().contains("--limit"));
        let d = DataOptions { per_class: Some(3), ..Default::default() }.open("digits", 0).unwrap();
        assert_eq!(d.len(), 30);
    }
}
