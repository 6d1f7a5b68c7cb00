//! `genlab diffusion ...`
use crate::{SampleArgs, TrainArgs};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use genlab_core::DeviceSpec;
use genlab_diffusion::latent::{self, install_autoencoder, latent_run_config, load_run, LatentOptions};
use genlab_diffusion::sample::{img2img, inpaint, read_image, read_mask, sample, RePaint};
use genlab_diffusion::train::{DiffusionRunConfig, DiffusionTask};
use genlab_diffusion::{BetaSchedule, PredictionType, ScheduleConfig, SchedulerKind};
use std::path::PathBuf;
use tch::Tensor;

#[derive(Subcommand, Debug)]
pub enum DiffusionCommand {
    /// Train a denoising diffusion model (presets: unet-tiny, unet-28, unet-32, unet-64, unet-ddpm),
    /// on pixels or, with --latent-autoencoder, on a KL autoencoder's latents.
    #[command(
        after_help = "Examples:\n  genlab diffusion train --model unet-tiny --data digits --steps 2000 --out runs/ddpm-digits\n  genlab diffusion train --model unet-28 --data mnist5k --steps 20000 --out runs/ddpm-mnist --cond --prediction v --schedule cosine\n  genlab diffusion train --model unet-28 --out runs/ddpm-mnist --steps 40000 --resume\n  genlab vae train --model kl-f4 --data fashion-mnist --steps 5000 --out runs/kl-f4-fashion\n  genlab diffusion train --model unet-tiny --data fashion-mnist --latent-autoencoder runs/kl-f4-fashion --steps 20000 --out runs/ldm-fashion"
    )]
    Train(Box<TrainFlags>),
    /// Sample from a trained model (its EMA weights).
    #[command(
        after_help = "Examples:\n  genlab diffusion sample --run runs/ddpm-digits --sampler ddim --steps 50 --n 64 --out grid.png\n  genlab diffusion sample --run runs/ddpm-mnist --sampler dpmpp-2m --steps 20 --guidance 3 --class 7 --n 16 --out sevens.png"
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
}

#[derive(Args, Debug)]
pub struct TrainFlags {
    #[command(flatten)]
    common: TrainArgs,
    /// What the network predicts: eps, x0 or v [default: eps; v for a latent run].
    #[arg(long)]
    prediction: Option<String>,
    /// Beta schedule: linear, cosine, scaled_linear or sigmoid [default: linear 1e-4..0.02 (DDPM);
    /// scaled_linear 0.00085..0.012 (Stable Diffusion 2) for a latent run].
    #[arg(long)]
    schedule: Option<String>,
    /// Training timesteps.
    #[arg(long, default_value_t = 1000)]
    timesteps: usize,
    /// Class-conditional, for classifier-free guidance (the dataset needs labels).
    #[arg(long)]
    cond: bool,
    /// Label dropout probability of a --cond run.
    #[arg(long, default_value_t = 0.1)]
    p_uncond: f64,
    /// Min-SNR-gamma loss weighting (5 in the paper); off by default.
    #[arg(long)]
    min_snr_gamma: Option<f64>,
    #[arg(long, default_value_t = 0.999)]
    ema_decay: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Latent diffusion: train on the latents of this KL autoencoder run (`genlab vae train --model
    /// kl-f2|kl-f4|sd15`), which is copied into OUT/autoencoder. On --resume it may be given again
    /// only as the same path.
    #[arg(long, value_name = "RUN_DIR")]
    latent_autoencoder: Option<PathBuf>,
    /// Latents are multiplied by this (default: 1 / std of encoded training batches, estimated once
    /// when the run starts).
    #[arg(long, value_name = "SCALE", requires = "latent_autoencoder")]
    latent_scale: Option<f64>,
}

/// The class to condition on and the guidance scale.
#[derive(Args, Debug, Clone)]
pub struct Guidance {
    /// Class for every sample of a class-conditional model (default: cycle through the classes).
    #[arg(long)]
    class: Option<i64>,
    /// Classifier-free guidance scale (1: none; needs a --cond model otherwise).
    #[arg(long, default_value_t = 1.0)]
    guidance: f64,
}

impl Guidance {
    fn labels(&self, n: i64) -> Option<Tensor> {
        self.class.map(|c| Tensor::full([n], c, (tch::Kind::Int64, tch::Device::Cpu)))
    }
}

#[derive(Args, Debug)]
pub struct SampleFlags {
    #[command(flatten)]
    common: SampleArgs,
    /// ddpm, ddim, dpmpp-2m, euler, euler-a or heun.
    #[arg(long, default_value = "ddim")]
    sampler: String,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    #[command(flatten)]
    guidance: Guidance,
}

/// The run and the single-image input and output of `inpaint` and `img2img`.
#[derive(Args, Debug, Clone)]
pub struct EditArgs {
    /// Run directory (its newest checkpoint) or a checkpoint folder.
    #[arg(long)]
    run: PathBuf,
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
    /// DDPM steps.
    #[arg(long, default_value_t = 100)]
    steps: usize,
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
    #[arg(long, default_value = "ddim")]
    sampler: String,
    #[arg(long, default_value_t = 50)]
    steps: usize,
}

pub fn run(cmd: DiffusionCommand) -> Result<()> {
    match cmd {
        DiffusionCommand::Train(a) => train(*a),
        DiffusionCommand::Sample(a) => sample_cmd(a),
        DiffusionCommand::Inpaint(a) => inpaint_cmd(a),
        DiffusionCommand::Img2img(a) => img2img_cmd(a),
    }
}

fn train(f: TrainFlags) -> Result<()> {
    let a = &f.common;
    let device = a.device.resolve()?;
    let mut fresh = false;
    let mut run = a.run_config(|ds| {
        let [c, h, w] = ds.shape();
        let num_classes = match (f.cond, ds.num_classes()) {
            (false, _) => None,
            (true, Some(k)) => Some(k),
            (true, None) => bail!("--cond needs a labelled dataset; `{}` has no labels", a.data),
        };
        // Latent runs start from Stable Diffusion 2's schedule: without x0 clipping, an epsilon
        // model's deterministic samplers (DDIM, DPM-Solver) amplify its errors at the noisiest steps.
        let base = if f.latent_autoencoder.is_some() {
            ScheduleConfig::stable_diffusion_v2()
        } else {
            ScheduleConfig::default()
        };
        let schedule = ScheduleConfig {
            num_train_timesteps: f.timesteps,
            beta_schedule: f
                .schedule
                .as_deref()
                .map(str::parse::<BetaSchedule>)
                .transpose()?
                .unwrap_or(base.beta_schedule),
            prediction_type: f
                .prediction
                .as_deref()
                .map(str::parse::<PredictionType>)
                .transpose()?
                .unwrap_or(base.prediction_type),
            ..base
        };
        let mut run = match &f.latent_autoencoder {
            None => DiffusionRunConfig::from_preset(
                &a.model,
                [c as i64, h as i64, w as i64],
                num_classes,
                schedule,
                &a.data,
            )?,
            Some(ae) => {
                let opts = LatentOptions { scale: f.latent_scale, seed: a.seed, ..LatentOptions::default() };
                latent_run_config(&a.model, ae, ds, num_classes, schedule, &a.data, &opts, device)?
            }
        };
        fresh = true;
        run.lr = a.lr.unwrap_or(run.lr);
        run.batch_size = a.batch_size.unwrap_or(run.batch_size);
        run.precision = a.precision;
        if f.cond {
            run.p_uncond = f.p_uncond;
        }
        run.min_snr_gamma = f.min_snr_gamma;
        run.ema_decay = f.ema_decay;
        run.weight_decay = f.weight_decay;
        Ok(run)
    })?;
    let group = genlab_core::dist::group();
    if let Some(g) = &group {
        // Every rank trains rank 0's configuration: a latent run's scale is estimated from
        // encoded batches, which the loader shards by rank.
        let mut bytes = serde_json::to_vec(&run)?;
        g.broadcast_bytes(&mut bytes, 0)?;
        run = serde_json::from_slice(&bytes)?;
    }
    match (&run.latent, fresh) {
        (Some(_), true) if !genlab_core::dist::is_leader() => {}
        (Some(l), true) => {
            let dir = install_autoencoder(&run, &a.out)?;
            let how = if l.scale_estimated { "1 / std of encoded training batches" } else { "given" };
            eprintln!(
                "latent diffusion on {:?} latents of {} (copied to {}), scale {:.6} ({how})",
                l.latent_shape,
                l.autoencoder_source.display(),
                dir.display(),
                l.scale
            );
        }
        (_, false) => {
            run.check_resume(f.latent_autoencoder.as_deref(), f.latent_scale)?;
            if f.latent_autoencoder.is_some() {
                eprintln!(
                    "resuming with the run's own copy of the autoencoder ({})",
                    a.out.join(latent::AUTOENCODER_DIR).display()
                );
            }
        }
        (None, true) => {}
    }
    if let (Some(g), Some(_)) = (&group, &run.latent) {
        // The other ranks load rank 0's copy of the autoencoder.
        g.barrier()?;
    }
    let out = a.out.clone();
    a.train(run, device, |run, device| Ok(DiffusionTask::for_run(run, &out, device)?))
}

run_config!(DiffusionRunConfig, "a diffusion run configuration");

fn sample_cmd(f: SampleFlags) -> Result<()> {
    let a = &f.common;
    if a.n <= 0 {
        bail!("--n must be at least 1");
    }
    let kind = f.sampler.parse::<SchedulerKind>()?;
    let device = a.device.resolve()?;
    let (net, run, ae) = load_run(&a.run, device)?;
    tch::manual_seed(a.seed as i64);
    let labels = f.guidance.labels(a.n);
    let (labels, g) = (labels.as_ref(), f.guidance.guidance);
    let imgs = match &ae {
        Some(ae) => latent::sample(&net.unet, ae, &run.schedule, kind, f.steps, a.n, labels, g)?,
        None => sample(&net.unet, &run.schedule, kind, f.steps, a.n, labels, g)?,
    };
    genlab_core::images::save_samples(&imgs, &a.out, None)?;
    eprintln!("wrote {} samples ({kind}, {} steps) to {}", a.n, f.steps, a.out.display());
    Ok(())
}

/// The channels of the images a run works on: the autoencoder's for a latent run.
fn image_channels(net: &genlab_diffusion::train::Network, ae: Option<&latent::LatentAutoencoder>) -> i64 {
    ae.map(|ae| ae.latent.image_shape[0]).unwrap_or(net.unet.cfg.in_channels)
}

fn save_one(image: &Tensor, out: &std::path::Path) -> Result<()> {
    genlab_core::images::save_png(&genlab_core::images::to_u8(image).get(0), out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn inpaint_cmd(f: InpaintFlags) -> Result<()> {
    let e = &f.edit;
    let device = e.device.resolve()?;
    let (net, run, ae) = load_run(&e.run, device)?;
    let image = read_image(&e.input, image_channels(&net, ae.as_ref()))?;
    let mask = read_mask(&f.mask)?;
    tch::manual_seed(e.seed as i64);
    let repaint = RePaint { jump_length: f.jump_length, resamplings: f.resamplings };
    let labels = e.guidance.labels(1);
    let (labels, g) = (labels.as_ref(), e.guidance.guidance);
    let out = match &ae {
        Some(ae) => latent::inpaint(&net.unet, ae, &run.schedule, &image, &mask, f.steps, repaint, labels, g)?,
        None => inpaint(&net.unet, &run.schedule, &image, &mask, f.steps, repaint, labels, g)?,
    };
    save_one(&out, &e.out)
}

fn img2img_cmd(f: Img2imgFlags) -> Result<()> {
    let e = &f.edit;
    let kind = f.sampler.parse::<SchedulerKind>()?;
    let device = e.device.resolve()?;
    let (net, run, ae) = load_run(&e.run, device)?;
    let image = read_image(&e.input, image_channels(&net, ae.as_ref()))?;
    tch::manual_seed(e.seed as i64);
    let labels = e.guidance.labels(1);
    let (labels, g) = (labels.as_ref(), e.guidance.guidance);
    let out = match &ae {
        Some(ae) => latent::img2img(&net.unet, ae, &run.schedule, kind, f.steps, &image, f.strength, labels, g)?,
        None => img2img(&net.unet, &run.schedule, kind, f.steps, &image, f.strength, labels, g)?,
    };
    save_one(&out, &e.out)
}
