//! Class coverage: a mode-collapse signal from a classifier's predictions on generated samples.
//!
//! Predict a class for every sample (argmax of the classifier's logits); a class counts as
//! covered when it receives at least a quarter of its fair share, `n / (4 K)` of the `n` samples
//! for `K` classes. Coverage is the covered share of the classes: 1 when every class is generated
//! in reasonable numbers (real data of a balanced set scores 1), `1 / K` when the generator
//! produces a single class. The per-class counts are reported beside it so a skewed but complete
//! generator is visible too.
use crate::error::{EvalError, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The fraction of a fair share (`n / K`) a class needs to count as covered.
pub const SHARE_OF_FAIR: f64 = 0.25;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassCoverage {
    /// Covered classes over all classes.
    pub coverage: f64,
    /// Samples predicted as each class.
    pub counts: Vec<i64>,
    /// Samples a class needs to count as covered.
    pub threshold: f64,
}

/// Class coverage of samples whose classifier logits are `logits`.
///
/// # Shapes
/// - `logits`: [n, classes] -> a number in [1/classes, 1]
pub fn class_coverage(logits: &Tensor) -> Result<ClassCoverage> {
    let size = logits.size();
    if size.len() != 2 || size[1] < 1 {
        return Err(EvalError::Shape(format!("class coverage takes logits [n, classes], got {size:?}")));
    }
    if size[0] < 1 {
        return Err(EvalError::TooFewSamples("class coverage of no samples".into()));
    }
    let (n, k) = (size[0], size[1]);
    let pred = logits.detach().argmax(1, false).to_kind(Kind::Int64);
    let counts = Tensor::zeros([k], (Kind::Int64, pred.device())).index_add(0, &pred, &pred.ones_like());
    let counts: Vec<i64> = Vec::<i64>::try_from(counts.to_device(tch::Device::Cpu))?;
    let threshold = SHARE_OF_FAIR * n as f64 / k as f64;
    let covered = counts.iter().filter(|&&c| c as f64 >= threshold).count();
    Ok(ClassCoverage { coverage: covered as f64 / k as f64, counts, threshold })
}
