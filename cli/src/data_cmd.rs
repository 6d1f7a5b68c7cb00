//! `genlab data ...` and the dataset flags every `train` shares.
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use genlab_data::{Crop, OpenOptions, Selection};
use std::path::PathBuf;
use std::sync::Arc;

pub const DATASET_HELP: &str = "Dataset: a built-in name (mnist5k, digits, fashion-mnist, fashion-mnist:test, \
mnist, cifar10 after `cargo xtask download`, openmoji-color[@SIZE], openmoji-black[@SIZE]), \
an HDF5 file (file.h5 or file.h5:dataset), an IDX file, cifar10:DIR, or an image folder (sub-folders are classes)";

/// How to read a dataset (mostly for image folders).
#[derive(Args, Debug, Clone, Default)]
pub struct DataOptions {
    /// Resize image-folder images to HxW (e.g. 64x64); other sources must already have this size.
    #[arg(long, value_parser = parse_size)]
    pub image_size: Option<[usize; 2]>,
    /// 1 (grey) or 3 (RGB).
    #[arg(long)]
    pub channels: Option<usize>,
    /// Random instead of centre crops for image folders.
    #[arg(long)]
    pub random_crop: bool,
    /// Skip unreadable images in a folder (and report how many) instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    /// HDF5 labels dataset (default: `labels` beside the images, when present).
    #[arg(long)]
    pub h5_labels: Option<String>,
    /// Leave out every image of this class (e.g. to train an anomaly detector on the rest).
    #[arg(long)]
    pub exclude_class: Option<i64>,
    /// Keep only the first N images of every class (a small labelled training set).
    #[arg(long, value_name = "N")]
    pub per_class: Option<usize>,
    /// Keep only the first N images (after --exclude-class and --per-class).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Append another dataset of the same image shape (e.g. synthetic images from
    /// `genlab gan augment`); repeatable. The cuts above apply to --data only.
    #[arg(long = "add", value_name = "DATASET")]
    pub add: Vec<String>,
}

fn parse_size(s: &str) -> Result<[usize; 2], String> {
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
            bail!("--channels must be 1 or 3, not {c}");
        }
        Ok(OpenOptions {
            size: self.image_size,
            channels: self.channels,
            crop: if self.random_crop { Crop::Random { seed } } else { Crop::Center },
            skip_bad: self.skip_bad,
            h5_labels: self.h5_labels.clone(),
        })
    }

    /// Which items to keep.
    pub fn selection(&self) -> Result<Selection> {
        if self.limit == Some(0) {
            bail!("--limit must be at least 1");
        }
        Ok(Selection {
            exclude_class: self.exclude_class,
            per_class: self.per_class,
            limit: self.limit,
            add: self.add.clone(),
        })
    }

    /// Open `spec`; `seed` seeds random crops.
    pub fn open(&self, spec: &str, seed: u64) -> Result<Arc<dyn genlab_data::Dataset>> {
        Ok(genlab_data::open_selected(spec, &self.read(seed)?, &self.selection()?)?)
    }
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Count, image shape, classes, per-class counts and pixel statistics of a dataset.
    #[command(
        after_help = "Examples:\n  genlab data info mnist5k\n  genlab data info fashion-mnist:test\n  genlab data info photos/ --image-size 64x64 --skip-bad"
    )]
    Info {
        #[arg(help = DATASET_HELP)]
        dataset: String,
        #[command(flatten)]
        opts: DataOptions,
    },
    /// Write a dataset as HDF5 (`images` uint8 N x C x H x W, `labels`), streaming.
    #[command(
        after_help = "Examples:\n  genlab data convert fashion-mnist fmnist.h5\n  genlab data convert photos/ photos.h5 --image-size 64x64 --channels 3"
    )]
    Convert {
        #[arg(help = DATASET_HELP)]
        dataset: String,
        out: PathBuf,
        #[command(flatten)]
        opts: DataOptions,
    },
    /// A PNG grid of the first N images.
    #[command(
        after_help = "Examples:\n  genlab data preview mnist5k --out mnist.png\n  genlab data preview data.h5:train/images --n 100 --out grid.png"
    )]
    Preview {
        #[arg(help = DATASET_HELP)]
        dataset: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 64)]
        n: usize,
        #[command(flatten)]
        opts: DataOptions,
    },
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Info { dataset, opts } => {
            let ds = opts.open(&dataset, 0)?;
            println!("{}", genlab_data::tools::info_of(ds.as_ref())?);
        }
        DataCommand::Convert { dataset, out, opts } => {
            let ds = opts.open(&dataset, 0)?;
            genlab_data::tools::convert_dataset(ds.as_ref(), &out)?;
            eprintln!("wrote {} images to {}", ds.len(), out.display());
        }
        DataCommand::Preview { dataset, out, n, opts } => {
            if n == 0 {
                bail!("--n must be at least 1");
            }
            let ds = opts.open(&dataset, 0)?;
            genlab_data::tools::preview_dataset(ds.as_ref(), &out, n)?;
            eprintln!("wrote {}", out.display());
        }
    }
    Ok(())
}
