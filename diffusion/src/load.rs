//! A trained diffusion run, pixel or latent, loaded for sampling. The latent space travels with
//! the run ([`DiffusionRun::ae`]), so one call samples either kind; it implements
//! [`genlab_core::run::ImageSampler`] for `genlab_eval::evaluate`.
use crate::error::Result;
use crate::latent::LatentAutoencoder;
use crate::sample::RePaint;
use crate::scheduler::SchedulerKind;
use crate::train::{DiffusionRunConfig, Network, Weights};
use genlab_core::run::ImageSampler;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// Which weights, scheduler and steps to sample a run with (default: EMA weights, the run's own
/// scheduler and steps). With the `clap` feature, the flags of `genlab diffusion sample` and of
/// `genlab eval` for diffusion runs.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct SampleSettings {
    /// ddpm, ddim, dpmpp-2m, euler, euler-a or heun; flow-euler or flow-heun for a flow-matching run (default: the
    /// run's own, which it uses for its sample grids).
    #[cfg_attr(feature = "clap", arg(long))]
    pub sampler: Option<SchedulerKind>,
    /// Sampling steps (default: the run's own).
    #[cfg_attr(feature = "clap", arg(long))]
    pub steps: Option<usize>,
    /// Sample from the EMA weights (`ema`) or the trained weights (`raw`).
    #[cfg_attr(feature = "clap", arg(long, default_value = "ema"))]
    pub weights: Weights,
}

/// How to sample a diffusion run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleOptions {
    pub scheduler: SchedulerKind,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale (1: none; only for class-conditional runs).
    pub guidance_scale: f64,
    /// Class of every sample, for a class-conditional run (default: the classes in turn).
    pub class: Option<i64>,
}

/// A diffusion run: its U-Net (EMA or raw weights), its configuration, and for a latent run
/// its frozen autoencoder.
pub struct DiffusionRun {
    pub net: Network,
    pub run: DiffusionRunConfig,
    pub ae: Option<LatentAutoencoder>,
    pub weights: Weights,
    pub path: PathBuf,
    /// What [`ImageSampler::sample`] uses: the run's own sampler and steps unless changed.
    pub options: SampleOptions,
}

impl DiffusionRun {
    /// Load the run directory or checkpoint folder at `path` (its latent autoencoder too).
    pub fn open(path: &Path, weights: Weights, device: Device) -> Result<Self> {
        let (net, run, ae) = load_run_weights(path, weights, device)?;
        let options = SampleOptions {
            scheduler: run.sample_scheduler,
            steps: run.sample_steps,
            guidance_scale: 1.0,
            class: None,
        };
        Ok(DiffusionRun { net, run, ae, weights, path: path.to_path_buf(), options })
    }

    /// [`DiffusionRun::open`] with the weights, and the scheduler and steps where given, of `settings`.
    pub fn open_with(path: &Path, settings: &SampleSettings, device: Device) -> Result<Self> {
        let mut run = Self::open(path, settings.weights, device)?;
        run.options.scheduler = settings.sampler.unwrap_or(run.options.scheduler);
        run.options.steps = settings.steps.unwrap_or(run.options.steps);
        Ok(run)
    }

    /// `n` images in [-1, 1] sampled with `opts`, decoded from latents for a latent run.
    ///
    /// # Shapes
    /// - returns [n, c, h, w], the run's image shape
    pub fn sample_with(&self, n: i64, opts: &SampleOptions) -> Result<Tensor> {
        let labels = self.labels(n, opts);
        let (unet, schedule) = (&self.net.model, &self.run.schedule);
        let (kind, steps, g) = (opts.scheduler, opts.steps, opts.guidance_scale);
        match &self.ae {
            Some(ae) => crate::latent::sample(unet, ae, schedule, kind, steps, n, labels.as_ref(), g),
            None => crate::sample::sample(unet, schedule, kind, steps, n, labels.as_ref(), g),
        }
    }
}

impl DiffusionRun {
    /// `opts.class` for `n` samples.
    fn labels(&self, n: i64, opts: &SampleOptions) -> Option<Tensor> {
        opts.class.map(|c| Tensor::full([n], c, (tch::Kind::Int64, self.net.vs.device())))
    }

    /// Channels of the images the run makes: the autoencoder's for a latent run.
    pub fn image_channels(&self) -> i64 {
        self.ae.as_ref().map(|ae| ae.latent.image_shape[0]).unwrap_or(self.net.model.in_channels())
    }

    /// SDEdit image-to-image: `image` noised to `strength` of the schedule, then denoised with `opts`
    /// (in latent space for a latent run).
    ///
    /// # Shapes
    /// - `image`: [n, c, h, w] in [-1, 1] -> [n, c, h, w] in [-1, 1]
    pub fn img2img(&self, image: &Tensor, strength: f64, opts: &SampleOptions) -> Result<Tensor> {
        let labels = self.labels(image.size()[0], opts);
        let (unet, schedule) = (&self.net.model, &self.run.schedule);
        let (kind, steps, g) = (opts.scheduler, opts.steps, opts.guidance_scale);
        match &self.ae {
            Some(ae) => crate::latent::img2img(unet, ae, schedule, kind, steps, image, strength, labels.as_ref(), g),
            None => crate::sample::img2img(unet, schedule, kind, steps, image, strength, labels.as_ref(), g),
        }
    }

    /// RePaint inpainting of `image` where `mask` is 0 (1 marks known pixels), over `opts.steps` DDPM
    /// steps (RePaint's scheduler; `opts.scheduler` is not used).
    ///
    /// # Shapes
    /// - `image`: [n, c, h, w] in [-1, 1]; `mask`: [n or 1, 1 or c, h, w] -> [n, c, h, w] in [-1, 1]
    pub fn inpaint(&self, image: &Tensor, mask: &Tensor, repaint: RePaint, opts: &SampleOptions) -> Result<Tensor> {
        let labels = self.labels(image.size()[0], opts);
        let (unet, schedule, steps, g) = (&self.net.model, &self.run.schedule, opts.steps, opts.guidance_scale);
        match &self.ae {
            Some(ae) => crate::latent::inpaint(unet, ae, schedule, image, mask, steps, repaint, labels.as_ref(), g),
            None => crate::sample::inpaint(unet, schedule, image, mask, steps, repaint, labels.as_ref(), g),
        }
    }
}

impl ImageSampler for DiffusionRun {
    fn sample(&mut self, n: i64) -> genlab_core::Result<Tensor> {
        Ok(self.sample_with(n, &self.options)?)
    }
    fn describe(&self) -> String {
        format!(
            "diffusion run {}{}: {}, {} steps, {} weights",
            self.path.display(),
            if self.ae.is_some() { " (latent)" } else { "" },
            self.options.scheduler,
            self.options.steps,
            self.weights.group()
        )
    }
}

/// A trained diffusion run (its EMA weights) with, for a latent run, its autoencoder.
pub fn load_run(path: &Path, device: Device) -> Result<(Network, DiffusionRunConfig, Option<LatentAutoencoder>)> {
    load_run_weights(path, Weights::Ema, device)
}

/// [`load_run`] with the EMA or the raw weights.
pub fn load_run_weights(
    path: &Path,
    weights: Weights,
    device: Device,
) -> Result<(Network, DiffusionRunConfig, Option<LatentAutoencoder>)> {
    let (net, run) = crate::train::load_weights(path, weights, device)?;
    let ae = run.latent.as_ref().map(|l| LatentAutoencoder::load(path, l, device)).transpose()?;
    Ok((net, run, ae))
}
