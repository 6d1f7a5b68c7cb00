//! Latent diffusion: Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models",
//! arXiv 2112.10752. The U-Net learns the latents of a frozen KL autoencoder (genlab-vae's
//! [`AutoencoderKL`], trained as an `autoencoder-kl` run) instead of pixels.
//!
//! - Latents are `(z - shift) * scale` with `z` a posterior sample, encoded without gradients, as in
//!   LDM's `get_first_stage_encoding` (`ldm/models/diffusion/ddpm.py`) and diffusers'
//!   `examples/text_to_image/train_text_to_image.py` (`latent_dist.sample() * scaling_factor`);
//!   [`LatentOptions::sample_posterior`] switches to the posterior mode.
//! - The scale is `1 / std` of the latents of a few training batches, computed once when a run starts
//!   (the paper's rescaling of KL-regularised latents, section 4.3.2 and appendix G; LDM's
//!   `scale_by_std`), or given. Stable Diffusion's 0.18215 is this number for its kl-f8 autoencoder.
//! - Sampling draws latents with any scheduler and decodes `latents / scale + shift` (diffusers'
//!   `pipeline_stable_diffusion.py`, `vae.decode(latents / scaling_factor)`), clamped to [-1, 1].
//!   A latent run's schedule does not clip the predicted sample: latents are not bounded (Stable
//!   Diffusion's scheduler configs set `clip_sample` false).
//! - Image-to-image encodes the input (posterior mode), noises it to the strength and denoises in latent
//!   space (diffusers' `pipeline_stable_diffusion_img2img.py`).
//! - Inpainting runs RePaint in latent space with the mask brought to the latent resolution: a latent
//!   pixel is known only when every image pixel of its `f x f` patch is known (a min-pool), so the
//!   generated latents cover all the unknown pixels. After decoding, the known pixels are replaced by
//!   the input's, so they are exact, as in pixel-space inpainting.
//!
//! A latent run is self-contained: [`crate::train::install_autoencoder`] copies the autoencoder's configuration and
//! weights into `RUN/autoencoder/` (itself a run directory that `genlab_vae::train_kl::load` reads) when the
//! run starts, and training, resuming and sampling read that copy. `config.json` records where the
//! autoencoder came from ([`LatentConfig::autoencoder_source`]) for reference only.
use std::path::{Path, PathBuf};

use genlab_core::checkpoint;
use genlab_core::train::BatchSource;
use genlab_vae::train_kl::{self, KlRunConfig};
use genlab_vae::{AutoencoderKL, AutoencoderKLConfig};
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::backbone::Backbone;
use crate::error::{DiffusionError, Result};
use crate::sample::{check_mask, RePaint};
use crate::schedule::ScheduleConfig;
use crate::scheduler::SchedulerKind;

/// The folder of a latent run that holds its copy of the autoencoder.
pub const AUTOENCODER_DIR: &str = "autoencoder";

/// What `config.json` records about a latent run's autoencoder and latents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatentConfig {
    /// The autoencoder run given when the run started (absolute). For the record: the run reads its
    /// own copy in `autoencoder/`, so this path may since have moved or gone.
    pub autoencoder_source: PathBuf,
    /// The autoencoder run's preset (`kl-f2`, `kl-f4`, `sd15`).
    pub autoencoder_model: String,
    /// [channels, height, width] of the images.
    pub image_shape: [i64; 3],
    /// [latent_channels, height / f, width / f]: what the U-Net denoises.
    pub latent_shape: [i64; 3],
    /// Latents are `(z - shift) * scale` (LDM's `scale_factor`).
    pub scale: f64,
    /// Whether `scale` was estimated as `1 / std` of encoded training data rather than given.
    pub scale_estimated: bool,
    /// Training encodes a posterior sample (true) or the posterior mode.
    pub sample_posterior: bool,
}

/// How a new latent run sets up its latents.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentOptions {
    /// The latent scale; `None` estimates it as `1 / std` of encoded training batches.
    pub scale: Option<f64>,
    /// Encode a posterior sample (LDM, diffusers' `train_text_to_image.py`) or the mode.
    pub sample_posterior: bool,
    /// Batches of training data for the estimate.
    pub scale_batches: usize,
    /// Images per batch of the estimate (at most the dataset's size).
    pub scale_batch_size: usize,
    /// Seeds the estimate's batch order.
    pub seed: u64,
}

impl Default for LatentOptions {
    /// A posterior sample, and the scale estimated from 4 batches of 64 images.
    fn default() -> Self {
        LatentOptions { scale: None, sample_posterior: true, scale_batches: 4, scale_batch_size: 64, seed: 0 }
    }
}

/// `path` made absolute (symbolic links resolved where it exists), for recording and comparing.
pub fn absolute_path(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
}

pub(crate) fn check_scale(scale: f64) -> Result<f64> {
    if scale.is_finite() && scale > 0.0 {
        Ok(scale)
    } else {
        Err(DiffusionError::Latent(format!("the latent scale must be positive and finite, got {scale}")))
    }
}

/// Open the KL autoencoder run (or checkpoint folder) at `path`. A missing path, or a run that is not an
/// `autoencoder-kl` run (a plain VAE, a diffusion run), is [`DiffusionError::Autoencoder`] naming `path`.
pub fn open_autoencoder(path: &Path, device: Device) -> Result<(VarStore, AutoencoderKL, KlRunConfig)> {
    let err = |message: String| DiffusionError::Autoencoder { path: path.to_path_buf(), message };
    let how = "train one with `genlab vae train --model kl-f2|kl-f4|sd15 ...`";
    if !path.exists() {
        return Err(err(format!("no such autoencoder run directory or checkpoint; {how}")));
    }
    let ck =
        genlab_core::train::open_checkpoint(path).map_err(|e| err(format!("not a KL autoencoder run ({e}); {how}")))?;
    let family = ck.config.get("family").and_then(|f| f.as_str()).unwrap_or("unknown");
    if family != genlab_vae::train::FAMILY || !train_kl::is_kl_config(&ck.config) {
        let what = if family == genlab_vae::train::FAMILY {
            "a plain VAE run".to_string()
        } else {
            format!("a `{family}` run")
        };
        return Err(err(format!("this is {what}, not a KL autoencoder run (`kind` `{}`); {how}", train_kl::KIND)));
    }
    train_kl::load(path, device).map_err(|e| err(e.to_string()))
}

/// The [channels, height, width] of the images `cfg` was built for (its `sample_size`).
pub fn autoencoder_image_shape(cfg: &AutoencoderKLConfig) -> [i64; 3] {
    let (h, w) = cfg.sample_size.hw();
    [cfg.in_channels, h, w]
}

/// The latent shape of `image_shape` ([c, h, w]) under the autoencoder `cfg`:
/// [latent_channels, h / f, w / f] with f its downsampling factor. The image channels must be the
/// autoencoder's and h, w multiples of f.
pub fn latent_shape(cfg: &AutoencoderKLConfig, image_shape: [i64; 3]) -> Result<[i64; 3]> {
    let [c, h, w] = image_shape;
    let f = cfg.downsampling_factor();
    if c != cfg.in_channels {
        return Err(DiffusionError::Shape(format!(
            "the autoencoder takes {}-channel images, the images have {c} channels",
            cfg.in_channels
        )));
    }
    if h < f || w < f || h % f != 0 || w % f != 0 {
        return Err(DiffusionError::Shape(format!(
            "the autoencoder downsamples by {f}: image height and width must be positive multiples of {f}, got {h}x{w}"
        )));
    }
    Ok([cfg.latent_channels, h / f, w / f])
}

/// Unscaled latents `z - shift` of `x`: a posterior sample or the mode, without gradients.
///
/// # Shapes
/// - `x`: [batch, in_channels, h, w] in [-1, 1] -> [batch, latent_channels, h / f, w / f]
pub fn encode_unscaled(ae: &AutoencoderKL, x: &Tensor, sample_posterior: bool) -> Result<Tensor> {
    tch::no_grad(|| {
        let post = ae.encode(&x.f_to_kind(Kind::Float)?.f_to_device(ae.device())?)?;
        let z = if sample_posterior { post.sample() } else { post.mode() };
        Ok(z - ae.cfg.shift_factor.unwrap_or(0.0))
    })
}

/// `1 / std` of the latents (all elements pooled) of `batches` batches from `data`: the scale that gives
/// the U-Net latents of about unit variance.
pub fn estimate_scale(
    ae: &AutoencoderKL,
    data: &mut dyn BatchSource,
    batches: usize,
    sample_posterior: bool,
) -> Result<f64> {
    if batches == 0 {
        return Err(DiffusionError::Latent("estimating the latent scale needs at least one batch".into()));
    }
    let mut latents = Vec::with_capacity(batches);
    for _ in 0..batches {
        let batch = data.next_batch()?;
        latents.push(encode_unscaled(ae, &batch.images, sample_posterior)?.flatten(0, -1));
    }
    let std = Tensor::cat(&latents, 0).to_kind(Kind::Double).std(true).double_value(&[]);
    if !(std.is_finite() && std > 0.0) {
        return Err(DiffusionError::Latent(format!(
            "the autoencoder's latents have standard deviation {std}: cannot scale by 1 / std; give the scale"
        )));
    }
    Ok(1.0 / std)
}

/// The run directory of `path`, a run directory or one of its checkpoint folders (`RUN/checkpoints/step-*`).
pub(crate) fn run_root(path: &Path) -> PathBuf {
    if path.join(checkpoint::STATE_FILE).is_file() {
        if let Some(root) = path.parent().and_then(Path::parent) {
            return root.to_path_buf();
        }
    }
    path.to_path_buf()
}

/// A latent run's frozen autoencoder and its latent configuration.
#[derive(Debug)]
pub struct LatentAutoencoder {
    pub vs: VarStore,
    pub model: AutoencoderKL,
    pub latent: LatentConfig,
}

impl LatentAutoencoder {
    /// Wrap a loaded autoencoder (its variables are frozen). The autoencoder must give `latent.latent_shape`
    /// for `latent.image_shape`.
    pub fn new(mut vs: VarStore, model: AutoencoderKL, latent: LatentConfig) -> Result<Self> {
        let shape = latent_shape(&model.cfg, latent.image_shape)?;
        if shape != latent.latent_shape {
            return Err(DiffusionError::Shape(format!(
                "the autoencoder gives latents of shape {shape:?} for images of shape {:?}; the run expects {:?}",
                latent.image_shape, latent.latent_shape
            )));
        }
        check_scale(latent.scale)?;
        vs.freeze();
        Ok(LatentAutoencoder { vs, model, latent })
    }

    /// The copy of the autoencoder in a latent run, `run_dir/autoencoder/` (`run_dir` may also be one of
    /// the run's checkpoint folders).
    pub fn load(run_dir: &Path, latent: &LatentConfig, device: Device) -> Result<Self> {
        let dir = run_root(run_dir).join(AUTOENCODER_DIR);
        if !dir.is_dir() {
            return Err(DiffusionError::Autoencoder {
                path: dir,
                message: format!(
                    "missing: a latent diffusion run keeps its copy of the autoencoder here (copied from {} \
                     when the run started); copy the whole run directory",
                    latent.autoencoder_source.display()
                ),
            });
        }
        let (vs, model, _) = open_autoencoder(&dir, device)?;
        Self::new(vs, model, latent.clone())
    }

    /// The downsampling factor f.
    pub fn factor(&self) -> i64 {
        self.model.cfg.downsampling_factor()
    }

    /// Scaled latents of `images`: a posterior sample (`sample_posterior`) or the mode, without gradients.
    ///
    /// # Shapes
    /// - `images`: [batch, c, h, w] in [-1, 1] -> [batch, latent_channels, h / f, w / f]
    pub fn encode(&self, images: &Tensor, sample_posterior: bool) -> Result<Tensor> {
        Ok(encode_unscaled(&self.model, images, sample_posterior)? * self.latent.scale)
    }

    /// Images of scaled latents: `decode(latents / scale + shift)`, clamped to [-1, 1], without gradients.
    ///
    /// # Shapes
    /// - `latents`: [batch, latent_channels, h, w] -> [batch, c, h * f, w * f]
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| {
            let z = latents.f_to_kind(Kind::Float)?.f_to_device(self.model.device())? / self.latent.scale
                + self.model.cfg.shift_factor.unwrap_or(0.0);
            Ok(self.model.decode(&z)?.clamp(-1.0, 1.0))
        })
    }

    /// Check `images` against the autoencoder: [n >= 1, c, h, w] with h, w multiples of f.
    fn check_images(&self, images: &Tensor) -> Result<()> {
        let s = images.size();
        let f = self.factor();
        let c = self.model.cfg.in_channels;
        match s.as_slice() {
            &[n, ch, h, w] if n > 0 && ch == c && h >= f && w >= f && h % f == 0 && w % f == 0 => Ok(()),
            _ => Err(DiffusionError::Shape(format!(
                "the image has shape {s:?}: expected [n, {c}, height, width] with height and width multiples of {f} \
                 (the autoencoder's downsampling factor)"
            ))),
        }
    }
}

/// `n` images from a latent model: latents sampled with `steps` steps of the scheduler `kind` (guidance
/// as [`crate::sample::sample`]), then decoded.
///
/// # Shapes
/// - `labels`: [n] int64
/// - returns [n, c, h, w] in [-1, 1], the autoencoder's image shape
pub fn sample(
    model: &Backbone,
    ae: &LatentAutoencoder,
    schedule: &ScheduleConfig,
    kind: SchedulerKind,
    steps: usize,
    n: i64,
    labels: Option<&Tensor>,
    guidance_scale: f64,
) -> Result<Tensor> {
    let latents = crate::sample::sample_unclamped(model, schedule, kind, steps, n, labels, guidance_scale)?;
    ae.decode(&latents)
}

/// SDEdit in latent space: encode `image` (posterior mode), noise it to `strength`, denoise with the
/// scheduler `kind`, decode. Parameters as [`crate::sample::img2img`].
///
/// # Shapes
/// - `image`: [n, c, h, w] in [-1, 1], h and w multiples of the autoencoder's factor
/// - `labels`: [n] int64
/// - returns [n, c, h, w] in [-1, 1]
pub fn img2img(
    model: &Backbone,
    ae: &LatentAutoencoder,
    schedule: &ScheduleConfig,
    kind: SchedulerKind,
    steps: usize,
    image: &Tensor,
    strength: f64,
    labels: Option<&Tensor>,
    guidance_scale: f64,
) -> Result<Tensor> {
    ae.check_images(image)?;
    let latents = ae.encode(image, false)?;
    let out =
        crate::sample::img2img_unclamped(model, schedule, kind, steps, &latents, strength, labels, guidance_scale)?;
    ae.decode(&out)
}

/// The mask of known latent pixels: a latent pixel is known when every pixel (of every channel) of its
/// `f x f` patch is known (mask > 0.5).
///
/// # Shapes
/// - `mask`: [m, k, h, w] -> [m, 1, h / f, w / f] of 0 and 1
pub fn latent_mask(mask: &Tensor, f: i64) -> Result<Tensor> {
    if mask.dim() != 4 {
        return Err(DiffusionError::Shape(format!("the mask has shape {:?}: expected 4 dimensions", mask.size())));
    }
    let known = mask.f_to_kind(Kind::Float)?.f_gt(0.5)?.to_kind(Kind::Float).amin([1i64].as_slice(), true);
    // min-pool as -max-pool(-x).
    Ok(-(-known).max_pool2d([f, f], [f, f], [0, 0], [1, 1], false))
}

/// RePaint in latent space: the known region of `image` (mask 1) is encoded (posterior mode) and kept
/// at the latent resolution ([`latent_mask`]), the rest is generated over `steps` DDPM steps, the
/// latents are decoded, and the known pixels are then replaced by `image`'s, so they are exact.
/// Parameters as [`crate::sample::inpaint`].
///
/// # Shapes
/// - `image`: [n, c, h, w] in [-1, 1], h and w multiples of the autoencoder's factor
/// - `mask`: [n or 1, 1 or c, h, w]
/// - `labels`: [n] int64
/// - returns [n, c, h, w] in [-1, 1]
pub fn inpaint(
    model: &Backbone,
    ae: &LatentAutoencoder,
    schedule: &ScheduleConfig,
    image: &Tensor,
    mask: &Tensor,
    steps: usize,
    repaint: RePaint,
    labels: Option<&Tensor>,
    guidance_scale: f64,
) -> Result<Tensor> {
    ae.check_images(image)?;
    check_mask(image, mask)?;
    let device = ae.model.device();
    let latents = ae.encode(image, false)?;
    let known_latents = latent_mask(&mask.f_to_device(device)?, ae.factor())?;
    let out = crate::sample::inpaint_unclamped(
        model,
        schedule,
        &latents,
        &known_latents,
        steps,
        repaint,
        labels,
        guidance_scale,
    )?;
    let decoded = ae.decode(&out)?;
    tch::no_grad(|| {
        let original = image.f_to_kind(Kind::Float)?.f_to_device(device)?;
        let known = mask.f_to_kind(Kind::Float)?.f_to_device(device)?.f_gt(0.5)?.to_kind(Kind::Float);
        Ok(&known * &original + (known.ones_like() - &known) * decoded)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(shape: [i64; 3]) -> AutoencoderKLConfig {
        AutoencoderKLConfig::small(shape, vec![8, 8])
    }

    #[test]
    fn latent_shapes_divide_by_the_factor() {
        assert_eq!(latent_shape(&small([1, 8, 8]), [1, 8, 8]).unwrap(), [4, 4, 4]);
        assert_eq!(latent_shape(&small([1, 28, 28]), [1, 28, 28]).unwrap(), [4, 14, 14]);
        let f4 = AutoencoderKLConfig::small([3, 32, 32], vec![8, 8, 8]);
        assert_eq!(latent_shape(&f4, [3, 32, 24]).unwrap(), [4, 8, 6]);
        let sd = AutoencoderKLConfig::sd15();
        assert_eq!(latent_shape(&sd, [3, 512, 512]).unwrap(), [4, 64, 64]);
        let e = latent_shape(&f4, [3, 30, 32]).unwrap_err().to_string();
        assert!(e.contains("multiples of 4") && e.contains("30x32"), "{e}");
        let e = latent_shape(&f4, [1, 32, 32]).unwrap_err().to_string();
        assert!(e.contains("3-channel") && e.contains("1 channels"), "{e}");
    }

    #[test]
    fn the_latent_mask_keeps_only_wholly_known_patches() {
        // 4x4 image, f = 2: the top-left patch is wholly known, the top-right has one unknown pixel.
        let m = Tensor::from_slice(&[1.0f32, 1., 1., 0., 1., 1., 1., 1., 0., 0., 1., 1., 0., 0., 1., 1.])
            .view([1, 1, 4, 4]);
        let l = latent_mask(&m, 2).unwrap();
        assert_eq!(l.size(), [1, 1, 2, 2]);
        assert_eq!(Vec::<f32>::try_from(l.flatten(0, -1)).unwrap(), vec![1.0, 0.0, 0.0, 1.0]);
        // A pixel unknown in one channel of three is unknown.
        let mut rgb = Tensor::ones([1, 3, 2, 2], (Kind::Float, Device::Cpu));
        let _ = rgb.get(0).get(1).get(0).get(0).fill_(0.0);
        assert_eq!(latent_mask(&rgb, 2).unwrap().double_value(&[0, 0, 0, 0]), 0.0);
        rgb = rgb.ones_like();
        assert_eq!(latent_mask(&rgb, 2).unwrap().double_value(&[0, 0, 0, 0]), 1.0);
    }
}
