//! Stable-Diffusion-compatible text-to-image (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
//! Diffusion Models", arXiv 2112.10752).
//!
//! - [`unet`]: diffusers' `UNet2DConditionModel` with cross-attention.
//! - [`loader`]: [`StableDiffusion`], loaded from a diffusers folder or a single-file checkpoint.
//! - [`single_file`]: the original checkpoints' key names.
//! - [`lora`]: LoRA files (kohya, peft, diffusers layouts) matched to a model's layers.
//! - [`embedding`]: textual-inversion embeddings.
//! - [`controlnet`]: ControlNets, whose residuals steer the UNet with a control image.
//! - [`finetune`]: LoRA fine-tuning on captioned images.
//! - [`adapt`]: [`StableDiffusion::open`] with [`LoadOptions`], and the LoRA and embedding methods.
//! - [`pipeline`]: text-to-image, image-to-image and inpainting.
pub mod adapt;
pub mod controlnet;
pub mod embedding;
pub mod finetune;
pub mod loader;
pub mod lora;
pub mod pipeline;
pub mod single_file;
pub mod unet;

pub use adapt::LoadOptions;
pub use controlnet::{ControlNet, ControlNetConfig, ControlScale};
pub use embedding::{EmbeddingFile, EmbeddingReport, EmbeddingSpec};
pub use loader::{SdConfig, StableDiffusion};
pub use lora::{LoraFile, LoraReport, LoraSpec};
pub use pipeline::{Control, ControlOptions, GenerateOptions, Generated};
