//! `genlab data ...`.
use anyhow::{bail, Result};
use clap::Subcommand;
use genlab_data::DataOptions;
use std::path::PathBuf;

pub const DATASET_HELP: &str = "Dataset: a built-in name (mnist5k, digits, fashion-mnist, fashion-mnist:test, \
mnist, cifar10 after `cargo xtask download`, openmoji-color[@SIZE], openmoji-black[@SIZE]), \
an HDF5 file (file.h5 or file.h5:dataset), an IDX file, cifar10:DIR, or an image folder (sub-folders are classes)";

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
    /// Canny edges of an image as a white-on-black PNG: the control image of Canny ControlNets.
    #[command(
        after_help = "Examples:\n  genlab data canny photo.png edges.png\n  genlab data canny photo.png edges.png --low 50 --high 150"
    )]
    Canny {
        input: PathBuf,
        out: PathBuf,
        /// Hysteresis thresholds on the Sobel gradient magnitude (OpenCV's usual 100 and 200).
        #[arg(long, default_value_t = 100.0)]
        low: f32,
        #[arg(long, default_value_t = 200.0)]
        high: f32,
    },
}

pub fn run(cmd: DataCommand) -> Result<()> {
    crate::exit_on_broken_pipe();
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
        DataCommand::Canny { input, out, low, high } => {
            let (w, h) = genlab_data::tools::canny_file(&input, &out, low, high)?;
            eprintln!("wrote {w}x{h} edges to {}", out.display());
        }
    }
    Ok(())
}
