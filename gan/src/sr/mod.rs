//! Single-image super-resolution: SRResNet and SRGAN (Ledig et al., "Photo-Realistic Single
//! Image Super-Resolution Using a Generative Adversarial Network", arXiv 1609.04802).
//!
//! - [`model`]: the residual generator with pixel-shuffle upsampling and the discriminator.
//! - [`resample`]: the antialiased bicubic degradation that makes low-resolution inputs, and
//!   the bicubic baseline.
//! - [`metrics`]: PSNR and SSIM (Wang et al. 2004).
//! - [`train`]: the training step for genlab-core's harness (pixel MSE, then MSE + 1e-3
//!   adversarial), presets, and loading trained runs.
//! - [`upscale`]: upscaling tensors, images and HDF5 files; evaluation against bicubic.
//!
//! The paper's perceptual (VGG19 feature) content loss is not implemented: it needs
//! ImageNet-trained VGG weights, which genlab does not ship or download. The content loss is
//! the pixel MSE throughout, which is the paper's SRResNet-MSE / SRGAN-MSE setting.
pub mod metrics;
pub mod model;
pub mod resample;
pub mod train;
pub mod upscale;

pub use model::{SrConfig, SrDiscriminator, SrGenerator};
pub use train::{SrRunConfig, SrTask};
