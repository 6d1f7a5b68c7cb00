//! Every metric of this crate on one feature set against a reference set, as one serialisable
//! record: what `genlab eval` prints and writes, once for the generated samples and once for real
//! images (the real-vs-real baseline that says how small a figure can get at this sample size).
use crate::coverage::{class_coverage, ClassCoverage};
use crate::error::{EvalError, Result};
use crate::features::Features;
use crate::frechet::{frechet_distance_stats, FeatureStats};
use crate::inception_score::{inception_score, InceptionScore, DEFAULT_SPLITS};
use crate::kid::{kernel_inception_distance, Kid, KidConfig};
use crate::precision_recall::{precision_recall, PrecisionRecall, DEFAULT_BATCH, DEFAULT_K};
use serde::{Deserialize, Serialize};

/// What to compute.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareConfig {
    pub kid: KidConfig,
    /// Neighbourhood size for precision and recall.
    pub k: i64,
    pub inception_score_splits: usize,
    /// Class coverage needs logits of a classifier of the dataset's own classes (not ImageNet's).
    pub class_coverage: bool,
}

impl Default for CompareConfig {
    fn default() -> Self {
        CompareConfig {
            kid: KidConfig::default(),
            k: DEFAULT_K,
            inception_score_splits: DEFAULT_SPLITS,
            class_coverage: false,
        }
    }
}

/// The metrics of one set against the reference. A metric that cannot be computed at this sample
/// size (the Fréchet distance with no more samples than feature dimensions) is `None`, with the
/// reason in `notes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub n: i64,
    pub frechet_distance: Option<f64>,
    pub kid: Kid,
    pub precision_recall: PrecisionRecall,
    pub inception_score: Option<InceptionScore>,
    pub class_coverage: Option<ClassCoverage>,
    pub notes: Vec<String>,
}

/// Compare `set` with `reference`; `reference_stats` are the reference's fitted moments (`Err` when
/// they could not be fitted), shared between comparisons.
pub fn compare(
    reference: &Features,
    reference_stats: &std::result::Result<FeatureStats, String>,
    set: &Features,
    cfg: &CompareConfig,
) -> Result<Comparison> {
    let mut notes = Vec::new();
    let frechet_distance = match (reference_stats, FeatureStats::fit(&set.features)) {
        (Ok(r), Ok(s)) => Some(frechet_distance_stats(&s, r)?),
        (Err(e), _) => {
            notes.push(format!("Fréchet distance: {e}"));
            None
        }
        (_, Err(e @ EvalError::TooFewSamples(_))) => {
            notes.push(format!("Fréchet distance: {e}"));
            None
        }
        (_, Err(e)) => return Err(e),
    };
    let kid = kernel_inception_distance(&set.features, &reference.features, &cfg.kid)?;
    let precision_recall = precision_recall(&reference.features, &set.features, cfg.k, DEFAULT_BATCH)?;
    let (inception_score, class_coverage) = match &set.logits {
        Some(l) => {
            let is = if l.size()[0] >= cfg.inception_score_splits as i64 {
                Some(inception_score(l, cfg.inception_score_splits)?)
            } else {
                notes.push(format!(
                    "Inception Score: {} samples for {} splits",
                    l.size()[0],
                    cfg.inception_score_splits
                ));
                None
            };
            (is, if cfg.class_coverage { Some(class_coverage(l)?) } else { None })
        }
        None => (None, None),
    };
    Ok(Comparison {
        n: set.features.size()[0],
        frechet_distance,
        kid,
        precision_recall,
        inception_score,
        class_coverage,
        notes,
    })
}
