//! genlab-vae: the variational autoencoder family.
//!
//! - [`model`]: MLP and convolutional VAEs, Bernoulli/Gaussian decoders, conditional VAEs.
//! - [`autoencoder_kl`]: latent diffusion's KL autoencoder, loading diffusers' `AutoencoderKL` weights.
//! - [`loss`]: the ELBO's terms as free functions.
//! - [`train`]: the training step for genlab-core's harness, and loading trained runs.
//! - [`train_kl`]: the same for the KL autoencoder (`--model kl-f2|kl-f4|sd15`).
//! - [`fit`]: train either kind of run from a preset and a dataset in one call.
//! - [`sample`]: sampling and reconstruction.
//! - [`interpolate`], [`anomaly`], [`embed`], [`impute`], [`likelihood`]: latent tools —
//!   interpolation grids, anomaly scores and ROC-AUC, latent embeddings and a linear probe,
//!   imputation of missing pixels, and the IWAE bound on log-likelihood.
//! - [`tools`]: those tools applied to a trained run and a dataset, as `genlab vae` runs them.
/// The `family` every VAE-family run records in its `config.json`.
pub const FAMILY: &str = "vae";
/// The `kind` a KL autoencoder run records (a plain VAE run records none).
pub const KL_KIND: &str = "autoencoder-kl";

pub mod anomaly;
pub mod autoencoder_kl;
pub mod embed;
pub mod error;
pub mod fit;
pub mod impute;
pub mod interpolate;
pub mod likelihood;
pub mod load;
pub mod loss;
pub mod model;
pub mod sample;
pub mod tools;
pub mod train;
pub mod train_kl;

pub use autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig, DiagonalGaussian};
pub use error::{Result, VaeError};
pub use model::{Vae, VaeConfig};
