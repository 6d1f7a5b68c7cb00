//! Stable-Diffusion-compatible text-to-image (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
//! Diffusion Models", arXiv 2112.10752).
//!
//! - [`unet`]: diffusers' `UNet2DConditionModel` with cross-attention.
pub mod unet;
