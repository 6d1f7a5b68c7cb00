//! `genlab diffusion ...`
use crate::{SampleArgs, TrainArgs};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use genlab_core::DeviceSpec;
use genlab_diffusion::load::{DiffusionRun, SampleOptions, SampleSettings};
use genlab_diffusion::sample::{read_image, read_mask, RePaint};
use genlab_diffusion::sd::pipeline::read_rgb;
use genlab_diffusion::sd::{ControlOptions, GenerateOptions, LoadOptions, StableDiffusion};
use genlab_diffusion::train::{DiffusionTrainOptions, Weights};
use genlab_diffusion::SchedulerKind;
use std::path::PathBuf;
use tch::Tensor;

#[derive(Subcommand, Debug)]
pub enum DiffusionCommand {
    /// Train a denoising diffusion or (--objective flow) flow-matching model, a U-Net (presets: unet-tiny,
    /// unet-small, unet-28, unet-32, unet-64, unet-ddpm) or a diffusion transformer (dit-s; the paper's DiT-S/2
    /// ... DiT-XL/8), on pixels or, with --latent-autoencoder, on a KL autoencoder's latents.
    #[command(
        after_help = "Examples:\n  genlab diffusion train --model unet-tiny --data digits --steps 2000 --out runs/ddpm-digits\n  genlab diffusion train --model unet-28 --data mnist5k --steps 20000 --out runs/ddpm-mnist --cond --prediction v --schedule cosine\n  genlab diffusion train --model unet-28 --out runs/ddpm-mnist --steps 40000 --resume\n  genlab vae train --model kl-f4 --data fashion-mnist --steps 5000 --out runs/kl-f4-fashion\n  genlab diffusion train --model unet-tiny --data fashion-mnist --latent-autoencoder runs/kl-f4-fashion --steps 20000 --out runs/ldm-fashion\n  genlab diffusion train --model dit-s --objective flow --data fashion-mnist --steps 1200 --out runs/dit-flow-fashion"
    )]
    Train(Box<TrainFlags>),
    /// Sample from a trained model (its EMA weights, or --weights raw).
    #[command(
        after_help = "Examples:\n  genlab diffusion sample --run runs/ddpm-digits --n 64 --out grid.png\n  genlab diffusion sample --run runs/ddpm-digits --sampler ddim --steps 50 --weights raw --n 2000 --out samples.h5\n  genlab diffusion sample --run runs/ddpm-mnist --sampler dpmpp-2m --steps 20 --guidance 3 --class 7 --n 16 --out sevens.png"
    )]
    Sample(SampleFlags),
    /// Fill the black region of a mask with RePaint (white pixels are kept exactly). On a latent run
    /// RePaint works on the latents, where a latent pixel is kept only if its whole patch is white.
    #[command(
        after_help = "Examples:\n  genlab diffusion inpaint --run runs/ddpm-mnist --input digit.png --mask mask.png --out filled.png\n  genlab diffusion inpaint --run runs/ddpm-mnist --input digit.png --mask mask.png --out filled.png --steps 250 --jump-length 10 --resamplings 10"
    )]
    Inpaint(InpaintFlags),
    /// Image-to-image (SDEdit): noise the input to --strength and denoise it.
    #[command(
        after_help = "Examples:\n  genlab diffusion img2img --run runs/ddpm-mnist --input sketch.png --strength 0.6 --out out.png\n  genlab diffusion img2img --run runs/ddpm-mnist --input sketch.png --strength 0.4 --sampler euler --steps 30 --out out.png"
    )]
    Img2img(Img2imgFlags),
    /// Text-to-image with a Stable-Diffusion-compatible model: a diffusers folder (model_index.json, unet/,
    /// vae/, text_encoder/, tokenizer/, scheduler/) or an original single-file .safetensors checkpoint.
    #[command(
        after_help = "Examples:\n  cargo xtask download sd15\n  genlab data canny photo.png edges.png && genlab diffusion txt2img --model ~/.cache/genlab/sd15 --controlnet sd-controlnet-canny --control-image edges.png --prompt \"a house\" --out house.png\n  genlab diffusion txt2img --model ~/.cache/genlab/sd15 --prompt \"a photo of a cat\" --steps 25 --out cat.png\n  genlab diffusion txt2img --model ~/.cache/genlab/sd15 --prompt \"a lighthouse at dusk, oil painting\" --negative-prompt blurry --guidance 7.5 --sampler dpmpp-2m --seed 7 --n 4 --out lighthouses.png --device cuda --dtype fp16\n  genlab diffusion txt2img --model v1-5-pruned-emaonly.safetensors --model-config sd15 --prompt \"a red bicycle\" --out bike.png"
    )]
    Txt2img(Txt2imgFlags),
    /// Train LoRA adapters of a Stable Diffusion model on captioned images (RUN/pytorch_lora_weights.safetensors).
    #[command(
        after_help = "Examples:\n  genlab diffusion finetune --model ~/.cache/genlab/sd15 --data photos/ --steps 2000 --lr 1e-4 --batch-size 4 --out runs/lora-photos\n  genlab diffusion finetune --model ~/.cache/genlab/sd15 --data dog/ --caption \"a photo of sks dog\" --lora-rank 8 --train-text-encoder --steps 800 --out runs/sks\n  genlab diffusion txt2img --model ~/.cache/genlab/sd15 --lora runs/sks/pytorch_lora_weights.safetensors --prompt \"a photo of sks dog on the moon\" --out moon.png"
    )]
    Finetune(Box<FinetuneFlags>),
}

#[derive(Args, Debug)]
pub struct FinetuneFlags {
    #[command(flatten)]
    common: TrainArgs,
    #[command(flatten)]
    lora: genlab_diffusion::sd::finetune::FinetuneOptions,
}

#[derive(Args, Debug)]
pub struct TrainFlags {
    #[command(flatten)]
    common: TrainArgs,
    #[command(flatten)]
    extra: DiffusionTrainOptions,
}

/// The class to condition on and the guidance scale.
#[derive(Args, Debug, Clone)]
pub struct Guidance {
    /// Class for every sample of a class-conditional model (default: cycle through the classes).
    #[arg(long)]
    class: Option<i64>,
    /// Classifier-free guidance scale (1: none; needs a --cond model otherwise). Default 1 for a
    /// --run, 7.5 for a Stable Diffusion --model.
    #[arg(long)]
    guidance: Option<f64>,
}

impl Guidance {
    /// `base` with the class and guidance scale of these flags (guidance 1, none, by default).
    fn options(&self, base: SampleOptions) -> SampleOptions {
        SampleOptions { class: self.class, guidance_scale: self.guidance.unwrap_or(1.0), ..base }
    }
}

#[derive(Args, Debug)]
pub struct SampleFlags {
    #[command(flatten)]
    common: SampleArgs,
    #[command(flatten)]
    settings: SampleSettings,
    #[command(flatten)]
    guidance: Guidance,
}

/// The run and the single-image input and output of `inpaint` and `img2img`.
#[derive(Args, Debug, Clone)]
pub struct EditArgs {
    /// Run directory (its newest checkpoint) or a checkpoint folder.
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    run: Option<PathBuf>,
    #[command(flatten)]
    sd: SdArgs,
    /// PNG or JPEG, greyscale for 1-channel models, RGB for 3-channel ones.
    #[arg(long)]
    input: PathBuf,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    #[command(flatten)]
    guidance: Guidance,
}

#[derive(Args, Debug)]
pub struct InpaintFlags {
    #[command(flatten)]
    edit: EditArgs,
    /// Mask of the input's size: white = keep, black = generate.
    #[arg(long)]
    mask: PathBuf,
    /// DDPM steps for a --run (default 100); scheduler steps for a --model (default 50).
    #[arg(long)]
    steps: Option<usize>,
    /// --model: how far to noise the input where it is regenerated, in (0, 1] (1: from pure noise).
    #[arg(long, default_value_t = 1.0)]
    strength: f64,
    /// --model: the scheduler (default: the model's own where genlab has it, else dpmpp-2m).
    #[arg(long)]
    sampler: Option<String>,
    /// The mask is white where to generate (diffusers' convention) instead of white where to keep.
    #[arg(long)]
    invert_mask: bool,
    /// RePaint jump length (levels gone back per resampling).
    #[arg(long, default_value_t = 10)]
    jump_length: usize,
    /// RePaint resamplings per jump point (1: none).
    #[arg(long, default_value_t = 10)]
    resamplings: usize,
}

#[derive(Args, Debug)]
pub struct Img2imgFlags {
    #[command(flatten)]
    edit: EditArgs,
    /// How far to noise the input, in (0, 1]: 1 ignores it.
    #[arg(long, default_value_t = 0.6)]
    strength: f64,
    /// Default ddim for a --run (flow-euler for a flow-matching run); for a --model, the model's own scheduler
    /// where genlab has it, else dpmpp-2m.
    #[arg(long)]
    sampler: Option<String>,
    #[arg(long, default_value_t = 50)]
    steps: usize,
}

/// The Stable-Diffusion-compatible model and prompt of `txt2img`, and of `img2img` and `inpaint` with --model.
#[derive(Args, Debug, Clone)]
pub struct SdArgs {
    /// A diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) or an original
    /// single-file .safetensors checkpoint.
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    load: LoadOptions,
    #[arg(long, default_value = "")]
    prompt: String,
    /// What to guide away from (empty: the unconditional text).
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Use the text encoder's output this many layers before the last.
    #[arg(long, default_value_t = 0)]
    clip_skip: usize,
}

#[derive(Args, Debug)]
pub struct Txt2imgFlags {
    #[command(flatten)]
    sd: SdArgs,
    /// Output: a PNG (a grid when --n > 1), an .h5 file, or a folder of PNGs.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Classifier-free guidance scale (1: none).
    #[arg(long, default_value_t = 7.5)]
    guidance: f64,
    /// ddpm, ddim, dpmpp-2m, euler, euler-a or heun (default: the model's own where genlab has it, else dpmpp-2m).
    #[arg(long)]
    sampler: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images to generate.
    #[arg(long, default_value_t = 1)]
    n: i64,
    /// Image height and width in pixels (default: the model's sample size).
    #[arg(long)]
    height: Option<i64>,
    #[arg(long)]
    width: Option<i64>,
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    #[command(flatten)]
    control: ControlOptions,
}

impl SdArgs {
    fn load(&self, device: tch::Device) -> Result<StableDiffusion> {
        let Some(model) = &self.model else { bail!("--model is required") };
        let t = std::time::Instant::now();
        let sd = StableDiffusion::open(model, &self.load, device)?;
        eprintln!("loaded {} ({}) in {:.1} s", model.display(), sd.describe_size(), t.elapsed().as_secs_f64());
        Ok(sd)
    }

    fn options(&self, steps: usize, guidance: f64, sampler: Option<&str>, seed: u64) -> Result<GenerateOptions> {
        Ok(GenerateOptions {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            steps,
            guidance_scale: guidance,
            scheduler: sampler.map(str::parse::<SchedulerKind>).transpose()?,
            seed,
            clip_skip: self.clip_skip,
            ..GenerateOptions::default()
        })
    }
}

/// Images in [-1, 1] to a PNG (one image as it is, several as a grid), .h5 or folder.
fn save(images: &Tensor, out: &std::path::Path) -> Result<()> {
    genlab_core::images::save_images(images, out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn txt2img_cmd(f: Txt2imgFlags) -> Result<()> {
    let device = f.device.resolve()?;
    let sd = f.sd.load(device)?;
    let nets = f.control.load(device, sd.kind())?;
    let (batch, height, width) = (f.n, f.height, f.width);
    let opts =
        GenerateOptions { batch, height, width, ..f.sd.options(f.steps, f.guidance, f.sampler.as_deref(), f.seed)? };
    let t = std::time::Instant::now();
    let out = sd.txt2img_controlled(&opts, &f.control.controls(&nets))?;
    let (secs, steps) = (t.elapsed().as_secs_f64(), out.timesteps.len());
    eprintln!("{} image(s), {steps} steps in {secs:.1} s ({:.2} s/step)", f.n, secs / steps.max(1) as f64);
    save(&(out.images * 2.0 - 1.0), &f.out)
}

pub fn run(cmd: DiffusionCommand) -> Result<()> {
    match cmd {
        DiffusionCommand::Train(a) => train(*a),
        DiffusionCommand::Sample(a) => sample_cmd(a),
        DiffusionCommand::Inpaint(a) => inpaint_cmd(a),
        DiffusionCommand::Img2img(a) => img2img_cmd(a),
        DiffusionCommand::Txt2img(a) => txt2img_cmd(a),
        DiffusionCommand::Finetune(f) => {
            let (a, fit) = (&f.common, genlab_diffusion::sd::finetune::fit);
            crate::finished(fit(&a.model, &a.data_spec()?, &a.overrides, &f.lora, &a.fit_options()?)?)
        }
    }
}

fn train(f: TrainFlags) -> Result<()> {
    let (a, fit) = (&f.common, genlab_diffusion::train::fit);
    crate::finished(fit(&a.model, &a.data_spec()?, &a.overrides, &f.extra, &a.fit_options()?)?)
}

fn sample_cmd(f: SampleFlags) -> Result<()> {
    let a = &f.common;
    if a.n <= 0 {
        bail!("--n must be at least 1");
    }
    let mut run = DiffusionRun::open_with(&a.from.run, &f.settings, a.from.device.resolve()?)?;
    run.options = f.guidance.options(run.options);
    let (kind, steps) = (run.options.scheduler, run.options.steps);
    tch::manual_seed(a.seed as i64);
    let t0 = std::time::Instant::now();
    let imgs = run.sample_with(a.n, &run.options)?;
    let secs = t0.elapsed().as_secs_f64();
    genlab_core::images::save_samples(&imgs, &a.out, None)?;
    let (n, out, w, per) = (a.n, a.out.display(), f.settings.weights, secs / a.n as f64);
    eprintln!("wrote {n} samples ({kind}, {steps} steps, {w} weights) to {out} in {secs:.1} s ({per:.4} s/image)");
    Ok(())
}

fn inpaint_cmd(f: InpaintFlags) -> Result<()> {
    let e = &f.edit;
    let device = e.device.resolve()?;
    let Some(run_dir) = &e.run else {
        let sd = e.sd.load(device)?;
        let image = read_rgb(&e.input)?;
        // read_mask: 1 = keep; the pipeline takes 1 = generate.
        let keep = read_mask(&f.mask)?;
        let mask = if f.invert_mask { keep } else { 1.0 - keep };
        let g = e.guidance.guidance.unwrap_or(7.5);
        let opts = e.sd.options(f.steps.unwrap_or(50), g, f.sampler.as_deref(), e.seed)?;
        let out = sd.inpaint(&opts, &image, &mask, f.strength)?;
        return save(&(out.images * 2.0 - 1.0), &e.out);
    };
    if f.sampler.is_some() || f.invert_mask || f.strength != 1.0 {
        bail!("--sampler, --strength and --invert-mask apply to a Stable Diffusion --model; a --run inpaints with RePaint");
    }
    let run = DiffusionRun::open(run_dir, Weights::Ema, device)?;
    let image = read_image(&e.input, run.image_channels())?;
    let mask = read_mask(&f.mask)?;
    tch::manual_seed(e.seed as i64);
    let repaint = RePaint { jump_length: f.jump_length, resamplings: f.resamplings };
    let opts = SampleOptions { steps: f.steps.unwrap_or(100), ..e.guidance.options(run.options) };
    save(&run.inpaint(&image, &mask, repaint, &opts)?, &e.out)
}

fn img2img_cmd(f: Img2imgFlags) -> Result<()> {
    let e = &f.edit;
    let device = e.device.resolve()?;
    let Some(run_dir) = &e.run else {
        let sd = e.sd.load(device)?;
        let image = read_rgb(&e.input)?;
        let opts = e.sd.options(f.steps, e.guidance.guidance.unwrap_or(7.5), f.sampler.as_deref(), e.seed)?;
        let out = sd.img2img(&opts, &image, f.strength)?;
        return save(&(out.images * 2.0 - 1.0), &e.out);
    };
    let run = DiffusionRun::open(run_dir, Weights::Ema, device)?;
    // DDIM by default; a flow-matching run's own sampler.
    let own = Some(run.options.scheduler).filter(|k| k.is_flow());
    let scheduler = match f.sampler.as_deref() {
        Some(s) => s.parse::<SchedulerKind>()?,
        None => own.unwrap_or(SchedulerKind::Ddim),
    };
    let image = read_image(&e.input, run.image_channels())?;
    tch::manual_seed(e.seed as i64);
    let opts = SampleOptions { scheduler, steps: f.steps, ..e.guidance.options(run.options) };
    save(&run.img2img(&image, f.strength, &opts)?, &e.out)
}
