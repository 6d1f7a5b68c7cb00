//! genlab-eval: how good are a model's samples?
//!
//! Metrics on feature tensors, in f64:
//! - [`frechet`]: the Fréchet distance (FID on Inception features);
//! - [`kid`]: Kernel Inception Distance, unbiased, averaged over subsets;
//! - [`inception_score`]: the Inception Score of classifier logits;
//! - [`precision_recall`]: improved precision and recall on k-NN manifolds;
//! - [`coverage`]: the share of classes a generator produces (a mode-collapse signal).
//!
//! Feature networks ([`features::FeatureNet`]):
//! - [`inception`]: pytorch-fid's FID Inception-v3, loading the converted published weights;
//! - [`classifier`]: a small classifier trained on the dataset itself, for small images.
//!
//! [`report`] runs every metric on one set against a reference (`genlab eval` runs it for the
//! samples and for real images, the real-vs-real baseline).
mod check;
pub mod classifier;
pub mod coverage;
pub mod error;
pub mod evaluate;
pub mod features;
pub mod frechet;
pub mod inception;
pub mod inception_score;
pub mod kid;
pub mod precision_recall;
pub mod report;

pub use error::{EvalError, Result};
pub use features::{FeatureNet, Features};
pub use frechet::{frechet_distance, FeatureStats};
pub use kid::{kernel_inception_distance, Kid, KidConfig};
