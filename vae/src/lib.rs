//! genlab-vae: the variational autoencoder family.
//!
//! - [`model`]: MLP and convolutional VAEs, Bernoulli/Gaussian decoders, conditional VAEs.
//! - [`loss`]: the ELBO's terms as free functions.
//! - [`train`]: the training step for genlab-core's harness, and loading trained runs.
//! - [`sample`]: sampling and reconstruction.
pub mod error;
pub mod loss;
pub mod model;
pub mod sample;
pub mod train;

pub use error::{Result, VaeError};
pub use model::{Vae, VaeConfig};
