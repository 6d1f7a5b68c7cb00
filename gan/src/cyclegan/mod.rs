//! CycleGAN: unpaired image-to-image translation (Zhu et al., "Unpaired Image-to-Image
//! Translation using Cycle-Consistent Adversarial Networks", arXiv 1703.10593).
//!
//! Follows junyanz/pytorch-CycleGAN-and-pix2pix: `models/networks.py` (`ResnetGenerator`,
//! `ResnetBlock`, `NLayerDiscriminator`, `GANLoss` with `lsgan`, the `linear` lr policy),
//! `models/cycle_gan_model.py` (the objective and the update order) and `util/image_pool.py`.
//!
//! - [`model`]: the ResNet generator and the PatchGAN discriminator (reference parameter names).
//! - [`loss`]: least-squares GAN, cycle and identity losses.
//! - [`pool`]: the history of generated images that the discriminators see.
//! - [`train`]: run configuration, the two-domain batch source and the training step.
//! - [`translate`]: translating tensors and files, and evaluation on aligned domains.
pub mod loss;
pub mod model;
pub mod pool;
pub mod train;
pub mod translate;

pub use model::{CycleGanConfig, NLayerDiscriminator, ResnetGenerator};
pub use train::{CycleGanRunConfig, CycleGanTask};
