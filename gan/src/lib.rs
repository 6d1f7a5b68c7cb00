//! genlab-gan: the generative adversarial network family.
//!
//! - [`model`]: DCGAN generator and discriminator, WGAN critics, the class-conditional
//!   generator and projection discriminator, and the spectral-norm wrapper.
//! - [`loss`]: the adversarial objectives, the gradient penalty and weight clipping as free functions.
//! - [`metrics`]: sample diversity and the Fréchet distance between feature sets.
//! - [`train`]: the training step for genlab-core's harness, collapse detection, and loading trained runs.
//! - [`sample`]: sampling from a trained generator.
//! - [`augment`]: labelled synthetic data from a class-conditional generator.
//! - [`diffaug`]: DiffAugment, differentiable augmentation of the discriminator's inputs for small datasets.
//! - [`sr`]: single-image super-resolution (SRResNet, SRGAN), PSNR and SSIM.
//! - [`cyclegan`]: unpaired image-to-image translation (CycleGAN).
//! - [`fit`]: train any of these kinds of run from a preset and a dataset in one call.
pub mod augment;
pub mod cyclegan;
pub mod diffaug;
pub mod error;
pub mod fit;
pub mod load;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod sample;
pub mod sr;
pub mod stylegan2;
pub mod train;

pub use error::{GanError, Result};
pub use model::{Discriminator, GanConfig, Generator};
