//! genlab-diffusion: denoising diffusion models.
//!
//! - [`schedule`]: beta schedules, cumulative alphas, prediction types, the forward process,
//!   min-SNR loss weights, and the serialisable [`ScheduleConfig`].
//! - [`scheduler`]: the [`Scheduler`] trait and DDPM, DDIM, DPM-Solver++(2M), Euler, Euler ancestral
//!   and Heun, built by name with [`build`].
//! - [`unet`]: diffusers' `UNet2DModel` ([`UNet2DModel`], [`UNet2DConfig`] and its presets).
//! - [`dit`]: diffusers' `DiTTransformer2DModel`, the diffusion transformer ([`DiTModel`], [`DiTConfig`]
//!   and its presets).
//! - [`backbone`]: a run's network, either of the two ([`Backbone`], [`BackboneConfig`]).
//! - [`loss`]: the denoising objective as free functions.
//! - [`train`]: the training step for genlab-core's harness ([`train::DiffusionTask`]), and loading runs.
//! - [`sample`]: sampling with classifier-free guidance, RePaint inpainting and SDEdit image-to-image.
//! - [`clip`]: the CLIP BPE tokenizer of Stable-Diffusion-compatible text encoders.
//! - [`sd`]: Stable-Diffusion-compatible text-to-image: `UNet2DConditionModel`, diffusers-folder and
//!   single-file loading, text-to-image, image-to-image and inpainting pipelines.
//! - [`latent`]: latent diffusion (Rombach et al., arXiv 2112.10752) on a genlab-vae KL autoencoder:
//!   run setup (scale estimate, a self-contained copy of the autoencoder) and decoded sampling,
//!   image-to-image and inpainting.
mod attention;
pub mod backbone;
pub mod clip;
pub mod denoise;
pub mod dit;
pub mod error;
mod inputs;
pub mod latent;
pub mod load;
pub mod loss;
pub mod sample;
pub mod schedule;
pub mod scheduler;
pub mod sd;
pub mod train;
pub mod unet;
mod unet_2d_blocks;
pub mod weights;

pub use backbone::{Backbone, BackboneConfig};
pub use dit::{DiTConfig, DiTModel};
pub use error::{DiffusionError, Result};
pub use schedule::{BetaSchedule, NoiseSchedule, PredictionType, ScheduleConfig, TimestepSpacing};
pub use scheduler::{build, FlowMatchConfig, FlowMatchEuler, FlowMatchHeun, Scheduler, SchedulerKind};
pub use unet::{UNet2DConfig, UNet2DModel};
