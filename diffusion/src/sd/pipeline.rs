//! Text-to-image, image-to-image and inpainting with a [`StableDiffusion`] model, step for step as diffusers'
//! `StableDiffusionPipeline`, `StableDiffusionImg2ImgPipeline` and `StableDiffusionInpaintPipeline`
//! (diffusers 0.42.1, `pipelines/stable_diffusion/`), with classifier-free guidance (Ho and Salimans,
//! arXiv 2207.12598) and image-to-image as SDEdit (Meng et al., arXiv 2108.01073).
//!
//! Randomness: every draw comes from libtorch's CPU generator seeded with `seed` and is then moved to the
//! model's device, in diffusers' order (initial latents; for image-to-image the posterior sample, then the
//! noise), so a seed gives the same latents on CPU and GPU and the same as diffusers with
//! `generator=torch.Generator().manual_seed(seed)`. A call holds genlab-core's seed lock
//! ([`genlab_core::seed::with_seed`]) throughout, so concurrent calls in one process run one at a time and
//! each stays reproducible.
use tch::{Device, Kind, Tensor};

use genlab_core::seed::with_seed;

use crate::denoise::{denoise, keep, Denoiser, Move};
use crate::error::{DiffusionError, Result};
use crate::scheduler::{self, strength_timesteps, Scheduler, SchedulerKind};
use crate::sd::controlnet::{ControlNet, ControlScale};
use crate::sd::loader::StableDiffusion;
use crate::sd::unet::ControlResiduals;

/// The options shared by every generation mode.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub prompt: String,
    /// The prompt guided away from (diffusers' `negative_prompt`). Empty means none: the embedding of ""
    /// for SD 1.x and 2.x, zero embeddings for SDXL models whose model_index.json sets
    /// `force_zeros_for_empty_prompt`.
    pub negative_prompt: String,
    /// Images per call.
    pub batch: i64,
    pub steps: usize,
    /// Classifier-free guidance scale; at most 1 disables guidance (one UNet pass per step).
    pub guidance_scale: f64,
    /// `None`: the scheduler the model was published with where genlab has it, else DPM-Solver++(2M).
    pub scheduler: Option<SchedulerKind>,
    pub seed: u64,
    /// Output size in pixels (`None`: the UNet's `sample_size` times the autoencoder's factor).
    pub height: Option<i64>,
    pub width: Option<i64>,
    /// Use the text encoder's output this many layers before the last (diffusers' `clip_skip`).
    pub clip_skip: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            prompt: String::new(),
            negative_prompt: String::new(),
            batch: 1,
            steps: 50,
            guidance_scale: 7.5,
            scheduler: None,
            seed: 0,
            height: None,
            width: None,
            clip_skip: 0,
        }
    }
}

/// A ControlNet and its control image for one text-to-image generation (diffusers'
/// `StableDiffusionControlNetPipeline` arguments; several at once add up, as its `MultiControlNetModel`).
#[derive(Debug, Clone, Copy)]
pub struct Control<'a> {
    pub net: &'a ControlNet,
    /// The control image in [0, 1] (not normalised to [-1, 1], as diffusers' control image processor),
    /// [1 or batch, channels, height, width] at the output size; it sets the output size when the options
    /// leave it open.
    pub image: &'a Tensor,
    /// diffusers' `controlnet_conditioning_scale`.
    pub scale: f64,
    /// diffusers' `guess_mode`: the ControlNet sees only the prompt's half of a guided batch, its residuals
    /// weighted from 0.1 to 1 from the first skip to the mid block.
    pub guess_mode: bool,
    /// The fraction of the steps it acts on, from `start` to `end` (diffusers' `control_guidance_start`,
    /// `control_guidance_end`).
    pub start: f64,
    pub end: f64,
}

impl<'a> Control<'a> {
    /// `net` with `image` at scale 1 over every step, without guess mode.
    pub fn new(net: &'a ControlNet, image: &'a Tensor) -> Self {
        Control { net, image, scale: 1.0, guess_mode: false, start: 0.0, end: 1.0 }
    }
}

/// The ControlNets of a text-to-image run and their images (with the `clap` feature, the flags for them).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct ControlOptions {
    /// A ControlNet: a diffusers folder or an original single-file .safetensors; repeat for several, each
    /// with its --control-image in the same order.
    #[cfg_attr(feature = "clap", arg(long = "controlnet"))]
    pub controlnet: Vec<std::path::PathBuf>,
    /// The structure of single-file ControlNets: a diffusers ControlNet folder or its config.json.
    #[cfg_attr(feature = "clap", arg(long))]
    pub controlnet_config: Option<std::path::PathBuf>,
    /// The control image of each --controlnet (an edge map from `genlab data canny`, a depth or pose map, ...);
    /// it sets the output size unless --height and --width do.
    #[cfg_attr(feature = "clap", arg(long = "control-image"))]
    pub control_image: Vec<std::path::PathBuf>,
    /// The conditioning scale: one for every ControlNet, or one each (default 1).
    #[cfg_attr(feature = "clap", arg(long = "control-scale"))]
    pub control_scale: Vec<f64>,
    /// The fraction of the steps after which the ControlNets start acting.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0.0))]
    pub control_start: f64,
    /// The fraction of the steps after which they stop.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 1.0))]
    pub control_end: f64,
    /// ControlNets see only the prompt's half of a guided batch, their residuals weighted 0.1 .. 1.
    #[cfg_attr(feature = "clap", arg(long))]
    pub guess_mode: bool,
}

/// An image as RGB in [0, 1] (greyscale converted, alpha dropped), as diffusers' image processors give input
/// and control images to its pipelines.
///
/// # Shapes
/// - returns [1, 3, h, w]
pub fn read_rgb(path: &std::path::Path) -> Result<Tensor> {
    let img =
        image::open(path).map_err(|e| DiffusionError::Image { path: path.to_path_buf(), message: e.to_string() })?;
    let (w, h) = (img.width() as i64, img.height() as i64);
    let hwc = Tensor::from_slice(&img.into_rgb8().into_raw()).view([h, w, 3]);
    Ok((hwc.permute([2, 0, 1]).unsqueeze(0).to_kind(Kind::Float) / 255.0).contiguous())
}

impl ControlOptions {
    /// Load every ControlNet (in `kind`, on `device`) with its image.
    pub fn load(&self, device: Device, kind: Kind) -> Result<Vec<(ControlNet, Tensor)>> {
        let (n, images, scales) = (self.controlnet.len(), self.control_image.len(), self.control_scale.len());
        if images != n || (scales > 1 && scales != n) {
            return Err(DiffusionError::Config(format!(
                "{n} --controlnet, {images} --control-image and {scales} --control-scale: give one image per                  ControlNet, and one scale for all or one each"
            )));
        }
        let config = self.controlnet_config.as_deref();
        self.controlnet
            .iter()
            .zip(&self.control_image)
            .map(|(net, image)| Ok((ControlNet::open(net, config, device, kind)?, read_rgb(image)?)))
            .collect()
    }

    /// The [`Control`]s of `loaded` (from [`ControlOptions::load`]) with these options' scales and step range.
    pub fn controls<'a>(&self, loaded: &'a [(ControlNet, Tensor)]) -> Vec<Control<'a>> {
        let scale = |i: usize| self.control_scale.get(i).or(self.control_scale.first()).copied().unwrap_or(1.0);
        loaded
            .iter()
            .enumerate()
            .map(|(i, (net, image))| Control {
                scale: scale(i),
                guess_mode: self.guess_mode,
                start: self.control_start,
                end: self.control_end,
                ..Control::new(net, image)
            })
            .collect()
    }
}

/// What a generation call returns.
#[derive(Debug)]
pub struct Generated {
    /// The final latents, before decoding, [batch, latent_channels, h / f, w / f].
    pub latents: Tensor,
    /// The decoded images in [0, 1], [batch, 3, h, w], f32 on the CPU.
    pub images: Tensor,
    /// The timesteps visited.
    pub timesteps: Vec<f64>,
}

fn randn(shape: &[i64], device: Device, kind: Kind) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu)).to_device(device).to_kind(kind)
}

impl StableDiffusion {
    /// Text embeddings of `prompts`, each padded to the tokenizer's length.
    ///
    /// # Shapes
    /// - returns [prompts.len(), 77, hidden]
    pub fn encode_prompts(&self, prompts: &[&str], clip_skip: usize) -> Result<Tensor> {
        let ids = self.tokenizer.encode_batch(prompts).to_device(self.device());
        tch::no_grad(|| self.text_encoder.forward_clip_skip(&ids, clip_skip))
    }

    /// The autoencoder's downsampling factor.
    pub fn vae_factor(&self) -> i64 {
        self.config.vae.downsampling_factor()
    }

    /// The output size: the options', else `image`'s (a control image), else the model's.
    fn size(&self, opts: &GenerateOptions, image: Option<&Tensor>) -> Result<(i64, i64)> {
        let f = self.vae_factor();
        let (sh, sw) = match image.map(|i| i.size()) {
            Some(s) if s.len() == 4 => (s[2] / f, s[3] / f),
            _ => self.config.unet.sample_hw(),
        };
        let (h, w) = (opts.height.unwrap_or(sh * f), opts.width.unwrap_or(sw * f));
        if h <= 0 || w <= 0 || h % f != 0 || w % f != 0 {
            return Err(DiffusionError::Shape(format!(
                "height and width must be positive multiples of the autoencoder's factor {f}, got {h}x{w}"
            )));
        }
        Ok((h, w))
    }

    fn check_options(&self, opts: &GenerateOptions) -> Result<()> {
        if opts.batch < 1 {
            return Err(DiffusionError::Shape(format!("batch must be at least 1, got {}", opts.batch)));
        }
        if !opts.guidance_scale.is_finite() || opts.guidance_scale < 0.0 {
            return Err(DiffusionError::Config(format!("guidance scale must be >= 0, got {}", opts.guidance_scale)));
        }
        Ok(())
    }

    /// The scheduler to use and its timesteps.
    fn scheduler(&self, opts: &GenerateOptions) -> Result<(SchedulerKind, Box<dyn Scheduler>)> {
        let kind = opts.scheduler.or(self.config.scheduler).unwrap_or(SchedulerKind::DpmPp2m);
        Ok((kind, scheduler::build(kind, &self.config.schedule, opts.steps)?))
    }

    /// The conditioning: [negative x batch, prompt x batch] with guidance, [prompt x batch] without.
    fn conditioning(&self, opts: &GenerateOptions, h: i64, w: i64) -> Result<Conditioning> {
        let guided = opts.guidance_scale > 1.0;
        let b = opts.batch;
        // Each tensor repeated `b` times along its first dimension.
        let rep = |t: &Tensor| {
            let mut times = vec![1i64; t.dim()];
            times[0] = b;
            t.repeat(times)
        };
        let pair = |neg: &Tensor, pos: &Tensor| if guided { Tensor::cat(&[rep(neg), rep(pos)], 0) } else { rep(pos) };
        if self.text_encoder_2.is_none() {
            let text = if guided {
                let e = self.encode_prompts(&[opts.negative_prompt.as_str(), opts.prompt.as_str()], opts.clip_skip)?;
                pair(&e.narrow(0, 0, 1), &e.narrow(0, 1, 1))
            } else {
                let e = self.encode_prompts(&[opts.prompt.as_str()], opts.clip_skip)?;
                pair(&e, &e)
            };
            return Ok(Conditioning { text: text.to_kind(self.kind()), added: None, guided });
        }
        // SDXL: both encoders' penultimate layers side by side, the second's pooled projection, and the size ids
        // (original size = target size = the output size, no crop).
        let (pos, pos_pooled) = self.sdxl_embed(&opts.prompt, opts.clip_skip)?;
        let (neg, neg_pooled) = if opts.negative_prompt.is_empty() && self.config.force_zeros_for_empty_prompt {
            (pos.zeros_like(), pos_pooled.zeros_like())
        } else {
            self.sdxl_embed(&opts.negative_prompt, opts.clip_skip)?
        };
        let ids = Tensor::from_slice(&[h as f32, w as f32, 0.0, 0.0, h as f32, w as f32])
            .view([1, 6])
            .to_device(self.device());
        let text = pair(&neg, &pos).to_kind(self.kind());
        let pooled = pair(&neg_pooled, &pos_pooled).to_kind(self.kind());
        let ids = pair(&ids, &ids).to_kind(self.kind());
        Ok(Conditioning { text, added: Some((pooled, ids)), guided })
    }

    /// SDXL's prompt embedding: [1, 77, hidden_1 + hidden_2] and the pooled projection [1, projection_dim].
    fn sdxl_embed(&self, prompt: &str, clip_skip: usize) -> Result<(Tensor, Tensor)> {
        let (Some(tok2), Some(te2)) = (&self.tokenizer_2, &self.text_encoder_2) else {
            return Err(DiffusionError::Config("SDXL needs tokenizer_2 and text_encoder_2".into()));
        };
        tch::no_grad(|| {
            let ids1 = self.tokenizer.encode_batch(&[prompt]).to_device(self.device());
            let ids2 = tok2.encode_batch(&[prompt]).to_device(self.device());
            let (h1, _) = self.text_encoder.penultimate_and_pooled(&ids1, clip_skip)?;
            let (h2, pooled) = te2.penultimate_and_pooled(&ids2, clip_skip)?;
            let pooled = pooled.ok_or_else(|| {
                DiffusionError::Config("SDXL's second text encoder must be a CLIPTextModelWithProjection".into())
            })?;
            Ok((Tensor::cat(&[h1, h2], -1), pooled))
        })
    }

    /// Decode latents to images in [0, 1] on the CPU (f32).
    ///
    /// # Shapes
    /// - `latents`: [batch, latent_channels, h, w] -> [batch, 3, h * f, w * f]
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let x = tch::no_grad(|| self.vae.decode_latents(&latents.to_kind(self.vae_kind())))?;
        Ok((x.to_kind(Kind::Float) / 2.0 + 0.5).clamp(0.0, 1.0).to_device(Device::Cpu))
    }

    /// Latents of images in [0, 1], drawn from the posterior with the CPU generator (as diffusers'
    /// `retrieve_latents(..., sample_mode="sample")`), times the scaling factor.
    fn encode_images(&self, images: &Tensor) -> Result<Tensor> {
        let x = (images.to_device(self.device()).to_kind(self.vae_kind()) * 2.0 - 1.0).contiguous();
        let post = tch::no_grad(|| self.vae.encode(&x))?;
        let eps = randn(&post.mean.size(), self.device(), post.mean.kind());
        let z = &post.mean + post.std() * eps;
        Ok(((z - self.config.vae.shift_factor.unwrap_or(0.0)) * self.config.vae.scaling_factor).to_kind(self.kind()))
    }

    fn check_images(&self, images: &Tensor, what: &str, channels: i64) -> Result<(i64, i64, i64)> {
        let s = images.size();
        let f = self.vae_factor();
        match s.as_slice() {
            &[b, c, h, w] if c == channels && h % f == 0 && w % f == 0 && h > 0 && w > 0 => Ok((b, h, w)),
            _ => Err(DiffusionError::Shape(format!(
                "{what}: expected [batch, {channels}, h, w] with h and w multiples of {f}, got {s:?}"
            ))),
        }
    }

    /// Text-to-image.
    ///
    /// # Shapes
    /// - returns latents [batch, latent_channels, h / f, w / f] and images [batch, 3, h, w]
    pub fn txt2img(&self, opts: &GenerateOptions) -> Result<Generated> {
        self.txt2img_controlled(opts, &[])
    }

    /// Text-to-image steered by ControlNets (diffusers' `StableDiffusionControlNetPipeline` and its SDXL
    /// counterpart): each control image must have the output size and the batch (or 1), and the ControlNets
    /// the UNet's structure.
    ///
    /// # Shapes
    /// - `controls[i].image`: [batch or 1, channels, h, w] -> latents and images as [`Self::txt2img`]
    pub fn txt2img_controlled(&self, opts: &GenerateOptions, controls: &[Control<'_>]) -> Result<Generated> {
        self.check_options(opts)?;
        if self.config.unet.in_channels != self.config.vae.latent_channels {
            return Err(DiffusionError::Config(format!(
                "this UNet takes {} input channels (an inpainting model): use inpaint",
                self.config.unet.in_channels
            )));
        }
        let (h, w) = self.size(opts, controls.first().map(|c| c.image))?;
        for (i, c) in controls.iter().enumerate() {
            c.net.check_fits(&self.config.unet)?;
            let s = c.image.size();
            let ok = s.len() == 4 && (s[0] == 1 || s[0] == opts.batch) && s[1] == c.net.cfg.conditioning_channels;
            if !ok || s[2] != h || s[3] != w {
                return Err(DiffusionError::Shape(format!(
                    "control image {i}: expected [1 or {}, {}, {h}, {w}] (the output size), got {s:?}",
                    opts.batch, c.net.cfg.conditioning_channels
                )));
            }
            if !(0.0..=1.0).contains(&c.start) || !(0.0..=1.0).contains(&c.end) || c.start >= c.end {
                return Err(DiffusionError::Config(format!(
                    "control {i}: guidance start {} and end {} must satisfy 0 <= start < end <= 1",
                    c.start, c.end
                )));
            }
        }
        let f = self.vae_factor();
        let (_, mut sched) = self.scheduler(opts)?;
        with_seed(opts.seed as i64, || {
            let shape = [opts.batch, self.config.vae.latent_channels, h / f, w / f];
            let latents = randn(&shape, self.device(), Kind::Float) * sched.init_noise_sigma();
            let timesteps = sched.timesteps().to_vec();
            self.denoise_controlled(opts, sched.as_mut(), latents, &timesteps, None, controls)
        })
    }

    fn denoise(
        &self,
        opts: &GenerateOptions,
        sched: &mut dyn Scheduler,
        latents: Tensor,
        timesteps: &[f64],
        inpaint: Option<&Inpaint>,
    ) -> Result<Generated> {
        self.denoise_controlled(opts, sched, latents, timesteps, inpaint, &[])
    }

    fn denoise_controlled(
        &self,
        opts: &GenerateOptions,
        sched: &mut dyn Scheduler,
        latents: Tensor,
        timesteps: &[f64],
        inpaint: Option<&Inpaint>,
        controls: &[Control<'_>],
    ) -> Result<Generated> {
        let f = self.vae_factor();
        let (_, _, lh, lw) = latents.size4()?;
        let cond = self.conditioning(opts, lh * f, lw * f)?;
        let extra = inpaint.and_then(|p| p.extra.as_ref());
        let denoiser = TextGuided {
            sd: self,
            cond: &cond,
            guidance_scale: opts.guidance_scale,
            extra,
            controls,
            steps: timesteps.len(),
            step: std::cell::Cell::new(0),
        };
        let moves = Move::steps(timesteps);
        let latents = match inpaint.filter(|p| p.extra.is_none()) {
            // A plain model repaints the masked region only: after every step the known region is the image's
            // latents noised to the next timestep (diffusers' StableDiffusionInpaintPipeline, 4-channel UNets).
            Some(p) => {
                let mut replace_known = |i: usize, x: Tensor, sched: &dyn Scheduler| -> Result<Tensor> {
                    let known = match timesteps.get(i + 1) {
                        Some(&next) => sched.add_noise(&p.image_latents, &p.noise, &Tensor::from(next))?,
                        None => p.image_latents.shallow_clone(),
                    };
                    Ok(&known * (1.0 - &p.mask) + &x * &p.mask)
                };
                denoise(&denoiser, sched, latents, &moves, &mut replace_known)?
            }
            None => denoise(&denoiser, sched, latents, &moves, &mut keep)?,
        };
        let images = self.decode(&latents)?;
        Ok(Generated { latents, images, timesteps: timesteps.to_vec() })
    }

    /// Image-to-image (SDEdit): noise the image's latents to `strength` of the schedule, then denoise with the
    /// prompt.
    ///
    /// # Shapes
    /// - `images`: [batch, 3, h, w] in [0, 1] -> images [batch, 3, h, w]
    pub fn img2img(&self, opts: &GenerateOptions, images: &Tensor, strength: f64) -> Result<Generated> {
        self.check_options(opts)?;
        let (b, _, _) = self.check_images(images, "img2img image", 3)?;
        let opts = GenerateOptions { batch: b, ..opts.clone() };
        let (_, mut sched) = self.scheduler(&opts)?;
        let timesteps = strength_timesteps(sched.as_ref(), strength)?;
        with_seed(opts.seed as i64, || {
            let init = self.encode_images(images)?.to_kind(Kind::Float);
            let noise = randn(&init.size(), self.device(), Kind::Float);
            let latents = sched.add_noise(&init, &noise, &Tensor::from(timesteps[0]))?;
            self.denoise(&opts, sched.as_mut(), latents, &timesteps, None)
        })
    }

    /// Inpainting: regenerate where `mask` is 1 (white, as in diffusers), keep the rest. Inpainting UNets (9
    /// input channels: latents, mask, masked-image latents) see the mask and the masked image; other UNets
    /// repaint by replacing the known region with the image's noised latents after every step.
    ///
    /// # Shapes
    /// - `images`: [batch, 3, h, w] in [0, 1]; `mask`: [batch or 1, 1, h, w] in [0, 1] -> images [batch, 3, h, w]
    pub fn inpaint(&self, opts: &GenerateOptions, images: &Tensor, mask: &Tensor, strength: f64) -> Result<Generated> {
        self.check_options(opts)?;
        let (b, h, w) = self.check_images(images, "inpaint image", 3)?;
        let ms = mask.size();
        if !(ms.len() == 4 && (ms[0] == b || ms[0] == 1) && ms[1] == 1 && ms[2] == h && ms[3] == w) {
            return Err(DiffusionError::Shape(format!("inpaint mask: expected [{b} or 1, 1, {h}, {w}], got {ms:?}")));
        }
        let lc = self.config.vae.latent_channels;
        let unet_in = self.config.unet.in_channels;
        let model_sees_mask = unet_in == 2 * lc + 1;
        if !model_sees_mask && unet_in != lc {
            return Err(DiffusionError::Config(format!(
                "a UNet with {unet_in} input channels is neither a text-to-image ({lc}) nor an inpainting ({}) model",
                2 * lc + 1
            )));
        }
        let opts = GenerateOptions { batch: b, ..opts.clone() };
        let (_, mut sched) = self.scheduler(&opts)?;
        let timesteps = strength_timesteps(sched.as_ref(), strength)?;
        let f = self.vae_factor();
        let mask = mask.to_kind(Kind::Float).ge(0.5).to_kind(Kind::Float).expand([b, 1, h, w], false);
        // Zero in [-1, 1] (mid grey) where the mask is set, as diffusers masks the normalised image.
        let masked = ((images.to_kind(Kind::Float) * 2.0 - 1.0) * mask.less(0.5).to_kind(Kind::Float) + 1.0) / 2.0;
        let latent_mask = mask.upsample_nearest2d([h / f, w / f], None, None).to_device(self.device());

        // diffusers' draw order: the image's posterior sample (only when it is needed: a plain UNet, or strength
        // below 1), the noise, then the masked image's posterior sample (inpainting UNets).
        with_seed(opts.seed as i64, || {
            let full = strength >= 1.0;
            let image_latents = if !model_sees_mask || !full {
                self.encode_images(images)?.to_kind(Kind::Float)
            } else {
                Tensor::zeros([b, lc, h / f, w / f], (Kind::Float, self.device()))
            };
            let noise = randn(&[b, lc, h / f, w / f], self.device(), Kind::Float);
            let latents = if full {
                &noise * sched.init_noise_sigma()
            } else {
                sched.add_noise(&image_latents, &noise, &Tensor::from(timesteps[0]))?
            };
            let extra = if model_sees_mask {
                let masked_latents = self.encode_images(&masked)?;
                Some(Tensor::cat(&[latent_mask.to_kind(self.kind()), masked_latents], 1))
            } else {
                None
            };
            let p = Inpaint { image_latents, noise, mask: latent_mask, extra };
            self.denoise(&opts, sched.as_mut(), latents, &timesteps, Some(&p))
        })
    }
}

/// A Stable Diffusion U-Net with the text conditioning of one generation: the [`Denoiser`] of the
/// pipelines. `extra` (inpainting models' mask and masked-image latents) is concatenated to the
/// U-Net's input channels after the scheduler's scaling.
struct TextGuided<'a> {
    sd: &'a StableDiffusion,
    cond: &'a Conditioning,
    guidance_scale: f64,
    extra: Option<&'a Tensor>,
    controls: &'a [Control<'a>],
    /// The loop's length and the step being taken (for the controls' start and end).
    steps: usize,
    step: std::cell::Cell<usize>,
}

impl TextGuided<'_> {
    /// The summed residuals of the controls acting at this step, for the scaled sample `x` (one per
    /// generated image; doubled here for guidance), or `None`.
    fn control_residuals(&self, x: &Tensor, timestep: &Tensor) -> Result<Option<ControlResiduals>> {
        let i = self.step.get();
        self.step.set(i + 1);
        let (n, guided, kind) = (self.steps as f64, self.cond.guided, self.sd.kind());
        let b = x.size()[0];
        let mut sum: Option<ControlResiduals> = None;
        for c in self.controls {
            // diffusers' controlnet_keep: off before `start` and after `end` (zero residuals change nothing).
            let keep = !((i as f64) / n < c.start || ((i + 1) as f64) / n > c.end);
            if !keep || c.scale == 0.0 {
                continue;
            }
            let image = c.image.expand([b, -1, -1, -1], false);
            let weigh = ControlScale { scale: c.scale, guess_mode: c.guess_mode };
            let x = x.to_kind(kind);
            let r = if c.guess_mode && guided {
                // The prompt's half only; the unconditional half gets no residuals.
                let half = |t: &Tensor| t.narrow(0, b, b);
                let added = self.cond.added.as_ref().map(|(p, ids)| (half(p), half(ids)));
                let added = added.as_ref().map(|(p, ids)| (p, ids));
                let r = c.net.forward(&x, timestep, &half(&self.cond.text), added, &image, weigh)?;
                let pad = |t: &Tensor| Tensor::cat(&[t.zeros_like(), t.shallow_clone()], 0);
                ControlResiduals { down: r.down.iter().map(pad).collect(), mid: pad(&r.mid) }
            } else {
                let two = |t: &Tensor| if guided { Tensor::cat(&[t, t], 0) } else { t.shallow_clone() };
                let added = self.cond.added.as_ref().map(|(p, ids)| (p, ids));
                c.net.forward(&two(&x), timestep, &self.cond.text, added, &two(&image), weigh)?
            };
            sum = Some(match sum {
                None => r,
                Some(s) => ControlResiduals {
                    down: s.down.iter().zip(&r.down).map(|(a, b)| a + b).collect(),
                    mid: s.mid + r.mid,
                },
            });
        }
        Ok(sum)
    }
}

impl Denoiser for TextGuided<'_> {
    fn predict(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        let guided = self.cond.guided;
        let mut input = if guided { Tensor::cat(&[x, x], 0) } else { x.shallow_clone() };
        if let Some(e) = self.extra {
            let e = if guided { Tensor::cat(&[e, e], 0) } else { e.shallow_clone() };
            input = Tensor::cat(&[&input, &e], 1);
        }
        let timestep = Tensor::from(t).to_device(self.sd.device());
        let added = self.cond.added.as_ref().map(|(p, i)| (p, i));
        let residuals = self.control_residuals(x, &timestep)?;
        let input = input.to_kind(self.sd.kind());
        let out = self.sd.unet.forward_controlled(&input, &timestep, &self.cond.text, added, residuals.as_ref())?;
        Ok(if guided {
            let parts = out.chunk(2, 0);
            &parts[0] + (&parts[1] - &parts[0]) * self.guidance_scale
        } else {
            out
        })
    }
}

/// The text conditioning of a generation: cross-attention states and, for SDXL, the added conditioning
/// (pooled text, size ids), each [negative x batch, prompt x batch] with guidance.
struct Conditioning {
    text: Tensor,
    added: Option<(Tensor, Tensor)>,
    guided: bool,
}

struct Inpaint {
    image_latents: Tensor,
    noise: Tensor,
    mask: Tensor,
    extra: Option<Tensor>,
}
