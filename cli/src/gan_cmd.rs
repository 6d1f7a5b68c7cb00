//! `genlab gan ...`
use crate::{SampleArgs, TrainArgs};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use genlab_gan::cyclegan::translate::{CycleEvaluation, Direction};
use genlab_gan::fit::GanTrainOptions;
use genlab_gan::load::SampleRequest;
use genlab_gan::stylegan2::generator::NoiseMode;
use genlab_gan::stylegan2::tools as style_tools;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum GanCommand {
    /// Train a GAN (presets: dcgan, wgan, wgan-gp, cgan; stylegan2, stylegan2-paper256, stylegan2-f) or a
    /// super-resolution model (srgan, srresnet).
    #[command(
        after_help = "Examples:\n  genlab gan train --model dcgan --data mnist5k --steps 5000 --out runs/dcgan\n  genlab gan train --model wgan-gp --data fashion-mnist --steps 20000 --out runs/wgan-gp\n  genlab gan train --model cgan --data digits --steps 600 --out runs/cgan --batch-size 64 --lr 1e-3 --lr-d 1e-3\n  genlab gan train --model srgan --scale 2 --data fashion-mnist --steps 3000 --out runs/sr-x2\n  genlab gan train --model srgan --scale 4 --data openmoji-color@64 --steps 3000 --out runs/sr-emoji --pretrain-steps 1000\n  genlab gan train --model stylegan2 --data fashion-mnist --steps 20000 --out runs/sg2\n  genlab gan train --config gan.toml --resume"
    )]
    Train(GanTrainArgs),
    /// Sample from a trained generator (its averaged weights).
    #[command(
        after_help = "Examples:\n  genlab gan sample --run runs/dcgan --n 64 --out grid.png\n  genlab gan sample --run runs/cgan --n 16 --class 3 --out threes.png\n  genlab gan sample --run runs/sg2 --n 64 --truncation 0.7 --out truncated.png\n  genlab gan sample --run runs/sg2 --seeds 1,2,3 --out seeds.png"
    )]
    Sample(GanSampleArgs),
    /// StyleGAN2 style mixing: rows keep their styles except a coarse, middle or fine range taken from the columns.
    #[command(
        name = "style-mix",
        after_help = "Examples:\n  genlab gan style-mix --run runs/sg2 --rows 1,2,3 --cols 4,5,6 --styles coarse --out mix.png\n  genlab gan style-mix --run runs/sg2 --rows 1,2 --cols 7,8 --styles 4..8 --truncation 0.7 --out mix.png"
    )]
    StyleMix(StyleMixArgs),
    /// StyleGAN2: images along straight lines in W between the latents of the given seeds.
    #[command(
        after_help = "Examples:\n  genlab gan interpolate --run runs/sg2 --seeds 1,2 --steps 8 --out interp.png\n  genlab gan interpolate --run runs/sg2 --seeds 1,2,3 --steps 6 --truncation 0.7 --out path.png"
    )]
    Interpolate(InterpolateArgs),
    /// Upscale an image (PNG/JPEG -> PNG) or an HDF5 file of images (-> HDF5) with a super-resolution run.
    #[command(
        after_help = "Examples:\n  genlab gan upscale --run runs/sr-x2 small.png big.png\n  genlab gan upscale --run runs/sr-x4 thumbnails.h5 upscaled.h5"
    )]
    Upscale(UpscaleArgs),
    /// PSNR and SSIM of a super-resolution run and of bicubic upscaling on held-out images.
    #[command(
        name = "sr-eval",
        after_help = "Examples:\n  genlab gan sr-eval --run runs/sr-x2 --data fashion-mnist:test --n 1000\n  genlab gan sr-eval --run runs/sr-x4 --data fashion-mnist:test --json sr.json --grid compare.png"
    )]
    SrEval(SrEvalArgs),
    /// Write N samples per class with their labels (HDF5) from a class-conditional run.
    #[command(
        after_help = "Examples:\n  genlab gan augment --run runs/cgan --per-class 500 --out aug.h5\n  genlab gan augment --run runs/cgan --per-class 100 --classes 3,8 --out extra.h5 --seed 1"
    )]
    Augment(AugmentArgs),
    /// CycleGAN: translate an image (PNG -> PNG) or an HDF5 file of images (-> HDF5) a2b or b2a; with
    /// --eval, measure the run on two aligned datasets against the do-nothing baseline.
    #[command(
        after_help = "Examples:\n  genlab gan translate --run runs/cyclegan --direction a2b emoji.png line-art.png\n  genlab gan translate --run runs/cyclegan --direction b2a drawings.h5 coloured.h5\n  genlab gan translate --run runs/cyclegan --eval --data-a openmoji-color@32 --data-b openmoji-black@32 --n 500"
    )]
    Translate(TranslateArgs),
}

#[derive(Args, Debug, Clone)]
pub struct GanTrainArgs {
    #[command(flatten)]
    pub common: TrainArgs,
    #[command(flatten)]
    pub extra: GanTrainOptions,
}

#[derive(Args, Debug, Clone)]
pub struct TranslateArgs {
    #[command(flatten)]
    pub from: crate::RunArgs,
    /// a2b (G_A) or b2a (G_B).
    #[arg(long, default_value = "a2b")]
    pub direction: String,
    /// A PNG or JPEG image, or an HDF5 file of images (not with --eval).
    pub input: Option<PathBuf>,
    /// A .png for an image input, a .h5 for an HDF5 input.
    pub output: Option<PathBuf>,
    /// Measure instead: translate aligned --data-a / --data-b in both directions and compare
    /// with the true counterparts (mean L1, PSNR, cycle error; and for output = input).
    #[arg(long)]
    pub eval: bool,
    /// --eval: domain A (item i must show the same content as item i of --data-b).
    #[arg(long)]
    pub data_a: Option<String>,
    /// --eval: domain B.
    #[arg(long)]
    pub data_b: Option<String>,
    #[command(flatten)]
    pub data_options: genlab_data::DataOptions,
    /// --eval: the first N pairs (default: all).
    #[arg(long)]
    pub n: Option<usize>,
    /// --eval: also write the numbers as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub chunk: usize,
}

#[derive(Args, Debug, Clone)]
pub struct GanSampleArgs {
    #[command(flatten)]
    pub common: SampleArgs,
    #[command(flatten)]
    pub request: SampleRequest,
}

#[derive(Args, Debug, Clone)]
pub struct StyleMixArgs {
    #[command(flatten)]
    pub from: crate::RunArgs,
    /// Seeds of the rows (whose styles are kept outside --styles).
    #[arg(long, value_delimiter = ',', required = true)]
    pub rows: Vec<u64>,
    /// Seeds of the columns (whose --styles replace the rows').
    #[arg(long, value_delimiter = ',', required = true)]
    pub cols: Vec<u64>,
    /// coarse, middle, fine, or a range of w indices A..B.
    #[arg(long, default_value = "coarse")]
    pub styles: String,
    /// Truncation psi in [0, 1] (1: none).
    #[arg(long, default_value_t = 1.0)]
    pub truncation: f64,
    /// PNG grid.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct InterpolateArgs {
    #[command(flatten)]
    pub from: crate::RunArgs,
    /// Two or more seeds: the path goes through their latents in order.
    #[arg(long, value_delimiter = ',', required = true)]
    pub seeds: Vec<u64>,
    /// Images per segment, both ends included.
    #[arg(long, default_value_t = 8)]
    pub steps: i64,
    /// Truncation psi in [0, 1] (1: none).
    #[arg(long, default_value_t = 1.0)]
    pub truncation: f64,
    /// PNG grid (one row per segment) or .h5.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct UpscaleArgs {
    #[command(flatten)]
    pub from: crate::RunArgs,
    /// A PNG or JPEG image (greyscale for a 1-channel model, colour for 3), or an HDF5 file of images.
    pub input: PathBuf,
    /// A .png for an image input, a .h5 for an HDF5 input.
    pub output: PathBuf,
    /// Images per forward pass (HDF5 input).
    #[arg(long, default_value_t = 256)]
    pub chunk: usize,
}

#[derive(Args, Debug, Clone)]
pub struct SrEvalArgs {
    #[command(flatten)]
    pub from: crate::RunArgs,
    /// High-resolution images: each is downscaled as in training, then upscaled and compared with itself.
    #[arg(long, help = crate::data_cmd::DATASET_HELP)]
    pub data: String,
    #[command(flatten)]
    pub data_options: genlab_data::DataOptions,
    /// Use the first N images (default: all).
    #[arg(long)]
    pub n: Option<usize>,
    /// Also write the numbers as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write a PNG grid of the first 8 images: bicubic | model | original on each row.
    #[arg(long)]
    pub grid: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 250)]
    pub chunk: usize,
}

#[derive(Args, Debug, Clone)]
pub struct AugmentArgs {
    #[command(flatten)]
    pub from: crate::RunArgs,
    /// Images per class.
    #[arg(long)]
    pub per_class: usize,
    /// Only these classes, comma-separated (default: every class of the model).
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<i64>>,
    /// HDF5 output: `images` (uint8, N x C x H x W) and `labels`.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(cmd: GanCommand) -> Result<()> {
    match cmd {
        GanCommand::Train(a) => train(a),
        GanCommand::Sample(a) => sample(a),
        GanCommand::StyleMix(a) => style_mix(a),
        GanCommand::Interpolate(a) => interpolate(a),
        GanCommand::Upscale(a) => upscale(a),
        GanCommand::SrEval(a) => sr_eval(a),
        GanCommand::Augment(a) => augment(a),
        GanCommand::Translate(a) => translate(a),
    }
}

fn train(args: GanTrainArgs) -> Result<()> {
    let a = &args.common;
    crate::finished(genlab_gan::fit::fit(&a.model, &a.data_spec()?, &a.overrides, &args.extra, &a.fit_options()?)?)
}

fn sample(args: GanSampleArgs) -> Result<()> {
    let a = &args.common;
    let req = SampleRequest { n: a.n, seed: a.seed, ..args.request };
    let (imgs, labels) = genlab_gan::load::sample_run(&a.from.run, &req, a.from.device.resolve()?)?;
    genlab_core::images::save_samples(&imgs, &a.out, labels.as_deref())?;
    eprintln!("wrote {} samples to {}", imgs.size()[0], a.out.display());
    Ok(())
}

fn style_mix(a: StyleMixArgs) -> Result<()> {
    let device = a.from.device.resolve()?;
    let (_vs, g, _) = genlab_gan::stylegan2::train::load(&a.from.run, device)?;
    let range = style_tools::parse_style_range(&a.styles, g.num_ws())?;
    let grid = style_tools::style_mixing_grid(&g, &a.rows, &a.cols, range, a.truncation, NoiseMode::Const)?;
    genlab_core::images::save_grid(&grid.images, grid.ncol, 1, &a.out)?;
    eprintln!("wrote a {}x{} style-mixing grid to {}", a.rows.len() + 1, a.cols.len() + 1, a.out.display());
    Ok(())
}

fn interpolate(a: InterpolateArgs) -> Result<()> {
    if a.steps < 2 {
        bail!("--steps must be at least 2 (both ends of each segment)");
    }
    let device = a.from.device.resolve()?;
    let (_vs, g, _) = genlab_gan::stylegan2::train::load(&a.from.run, device)?;
    let imgs = style_tools::interpolate_w(&g, &a.seeds, a.steps, a.truncation, NoiseMode::Const)?;
    if a.out.extension().is_some_and(|e| e == "png") {
        genlab_core::images::save_grid(&imgs, a.steps, 1, &a.out)?;
    } else {
        genlab_core::images::save_samples(&imgs, &a.out, None)?;
    }
    eprintln!("wrote {} images to {}", imgs.size()[0], a.out.display());
    Ok(())
}

fn upscale(a: UpscaleArgs) -> Result<()> {
    let (_vs, model, _) = genlab_gan::sr::train::load(&a.from.run, a.from.device.resolve()?)?;
    let s = genlab_gan::sr::upscale::upscale_file(&model, &a.input, &a.output, a.chunk)?;
    eprintln!("upscaled {s} to {}", a.output.display());
    Ok(())
}

fn sr_eval(a: SrEvalArgs) -> Result<()> {
    let device = a.from.device.resolve()?;
    let ds = a.data_options.open(&a.data, 0)?;
    let e = genlab_gan::load::sr_evaluation(&a.from.run, ds.as_ref(), a.n, a.chunk, device)?;
    print!("{e}");
    crate::write_json(a.json.as_deref(), &e)?;
    if let Some(path) = &a.grid {
        let (_vs, model, _) = genlab_gan::sr::train::load(&a.from.run, device)?;
        let rows = genlab_gan::sr::upscale::comparison(&model, ds.as_ref(), 8)?;
        genlab_core::images::save_grid(&rows, 3, 2, path)?;
        eprintln!("wrote bicubic | model | original rows to {}", path.display());
    }
    Ok(())
}

fn augment(a: AugmentArgs) -> Result<()> {
    let device = a.from.device.resolve()?;
    let (_vs, generator, _) = genlab_gan::train::load(&a.from.run, device)?;
    if generator.cfg.num_classes.is_none() {
        bail!("augment needs a class-conditional model (e.g. --model cgan); {} is unconditional", a.from.run.display());
    }
    if a.per_class == 0 {
        bail!("--per-class must be at least 1");
    }
    tch::manual_seed(a.seed as i64);
    let s = genlab_gan::augment::augment(&generator, a.per_class, a.classes.as_deref(), &a.out, 256)?;
    eprintln!("wrote {s} with labels to {}", a.out.display());
    Ok(())
}

fn translate(a: TranslateArgs) -> Result<()> {
    let direction: Direction = a.direction.parse()?;
    let device = a.from.device.resolve()?;
    let g = genlab_gan::cyclegan::train::load(&a.from.run, device)?;
    if a.eval {
        if a.input.is_some() || a.output.is_some() {
            bail!("--eval reads --data-a and --data-b; give no IN/OUT files with it");
        }
        let (Some(name_a), Some(name_b)) = (a.data_a.as_deref(), a.data_b.as_deref()) else {
            bail!("--eval needs --data-a and --data-b: two aligned datasets (item i of each shows the same content)");
        };
        let (ds_a, ds_b) = (a.data_options.open(name_a, 0)?, a.data_options.open(name_b, 0)?);
        let evaluate = genlab_gan::cyclegan::translate::evaluate;
        let e = evaluate(&g, ds_a.as_ref(), name_a, ds_b.as_ref(), name_b, a.n, a.chunk)?;
        let e = CycleEvaluation { run: Some(a.from.run.display().to_string()), ..e };
        print!("{e}");
        return crate::write_json(a.json.as_deref(), &e);
    }
    let (Some(input), Some(output)) = (a.input.as_deref(), a.output.as_deref()) else {
        bail!("translate needs IN and OUT (a PNG or an .h5 each), or --eval");
    };
    let s = genlab_gan::cyclegan::translate::translate_file(&g, input, output, direction, a.chunk)?;
    let [c, h, w] = s.image_shape;
    eprintln!("translated {} image(s) of {c}x{h}x{w} {direction} to {}", s.images, output.display());
    Ok(())
}
