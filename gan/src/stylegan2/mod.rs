//! StyleGAN2 (Karras et al., "Analyzing and Improving the Image Quality of StyleGAN",
//! arXiv 1912.04958), following NVlabs' stylegan2-ada-pytorch (`training/networks.py`,
//! `training/loss.py`, `training/training_loop.py`, `style_mixing.py`) without adaptive
//! augmentation, mixed precision or class conditioning.
//!
//! - [`layers`]: equalised-learning-rate dense and convolution layers, the FIR [1, 3, 3, 1]
//!   up/downsampling (`upfirdn2d`, `conv2d_resample`) and the modulated convolution with
//!   demodulation, in its grouped (fused) and per-sample forms.
//! - [`config`]: the network configuration (paper defaults) and the padding of data to the
//!   networks' power-of-two resolution.
//! - [`generator`]: mapping network with lr multiplier and tracked `w_avg`; skip synthesis
//!   network with learned constant and per-layer noise.
//! - [`discriminator`]: residual discriminator with minibatch standard deviation.
//! - [`loss`]: non-saturating logistic loss, R1, path-length regulariser, style mixing.
//! - [`train`]: presets, the training step for genlab-core's harness (lazy regularisation,
//!   weight average with a half-life in images) and loading trained runs.
//! - [`tools`]: seeds to latents, truncation, style-mixing grids, interpolation in W.
//!
//! Resampling is the reference's: the separable [1, 3, 3, 1] filter applied as a depthwise
//! convolution (the pure-PyTorch path of `upfirdn2d`), so numbers match the reference
//! wherever its CUDA kernels and its reference path agree. Activations are not clamped
//! (`conv_clamp = None`, as the reference in fp32).
pub mod config;
pub mod discriminator;
pub mod generator;
pub mod layers;
pub mod loss;
pub mod tools;
pub mod train;

pub use config::{MappingConfig, StyleGan2Config};
pub use discriminator::Discriminator;
pub use generator::{Generator, NoiseMode};
pub use train::{StyleGan2RunConfig, StyleGan2Task};
