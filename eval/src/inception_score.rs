//! Inception Score (Salimans et al., "Improved Techniques for Training GANs", arXiv 1606.03498):
//! `exp E_x KL(p(y|x) || p(y))`, computed on `splits` equal parts of the samples and reported as
//! the mean and standard deviation over the parts, as the original `inception_score.py` does with
//! 10 splits. It ranges from 1 (every sample has the same class distribution) to the number of
//! classes (confident predictions spread evenly over all classes).
use crate::error::{EvalError, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The original's number of splits.
pub const DEFAULT_SPLITS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InceptionScore {
    pub mean: f64,
    pub std: f64,
    pub splits: usize,
}

/// Inception Score of classifier logits (softmax is taken here).
///
/// # Shapes
/// - `logits`: [n, classes] with n >= splits -> a number
pub fn inception_score(logits: &Tensor, splits: usize) -> Result<InceptionScore> {
    let size = logits.size();
    if size.len() != 2 || size[1] < 1 {
        return Err(EvalError::Shape(format!("the Inception Score takes logits [n, classes], got {size:?}")));
    }
    if splits == 0 || (size[0] as usize) < splits {
        return Err(EvalError::TooFewSamples(format!(
            "{} samples in {splits} splits: the Inception Score needs at least one sample per split",
            size[0]
        )));
    }
    let logits = logits.detach().to_kind(Kind::Double);
    if !bool::try_from(logits.isfinite().all())? {
        return Err(EvalError::Values(format!("logits {size:?} contain NaN or infinite values")));
    }
    let n = size[0] as usize;
    let mut scores = Vec::with_capacity(splits);
    for s in 0..splits {
        // The original's split boundaries: part s is [s n / splits, (s + 1) n / splits).
        let (lo, hi) = ((s * n / splits) as i64, ((s + 1) * n / splits) as i64);
        let log_p = logits.narrow(0, lo, hi - lo).log_softmax(1, Kind::Double);
        let p = log_p.exp();
        let log_py = p.mean_dim(0, true, Kind::Double).log();
        let kl = (&p * (&log_p - &log_py)).sum_dim_intlist(1, false, Kind::Double).mean(Kind::Double);
        scores.push(kl.double_value(&[]).exp());
    }
    let mean = scores.iter().sum::<f64>() / splits as f64;
    let std = (scores.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / splits as f64).sqrt();
    Ok(InceptionScore { mean, std, splits })
}
