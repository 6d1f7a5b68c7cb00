//! Anomaly scores (a VAE trained on normal data gives anomalies a low ELBO; An & Cho 2015,
//! "Variational Autoencoder based Anomaly Detection using Reconstruction Probability") and
//! the ROC-AUC of a score against known anomaly labels.
use crate::error::{Result, VaeError};
use crate::likelihood::recon_nll;
use crate::model::Vae;
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Score {
    /// Negative ELBO (nats), averaged over a few posterior samples.
    Elbo,
    /// Reconstruction error (nats) through the posterior mean.
    Recon,
}

impl FromStr for Score {
    type Err = VaeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "elbo" => Ok(Score::Elbo),
            "recon" => Ok(Score::Recon),
            _ => Err(VaeError::Config(format!("unknown score `{s}`: expected elbo or recon"))),
        }
    }
}

/// One anomaly score per image (higher = more anomalous).
///
/// # Shapes
/// - `x`: [n, c, h, w] -> [n]
pub fn scores(model: &Vae, x: &Tensor, labels: Option<&Tensor>, score: Score) -> Result<Tensor> {
    tch::no_grad(|| match score {
        Score::Recon => {
            let (mu, _) = model.encode(x, labels)?;
            Ok(recon_nll(model, &model.decode(&mu, labels)?, x))
        }
        Score::Elbo => {
            const DRAWS: usize = 4;
            let mut acc = Tensor::zeros([x.size()[0]], (Kind::Float, x.device()));
            for _ in 0..DRAWS {
                acc += crate::train::elbo_terms(model, x, labels)?.0.neg_elbo();
            }
            Ok(acc / DRAWS as f64)
        }
    })
}

/// Area under the ROC curve of `scores` for telling `positive` items from the rest:
/// the probability that a random positive scores above a random negative (ties count half).
/// `None` when either class is empty.
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..scores.len().min(positive.len())).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let n_pos = idx.iter().filter(|&&i| positive[i]).count() as f64;
    let n_neg = idx.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return None;
    }
    // Mann-Whitney U from average ranks.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += idx[i..=j].iter().filter(|&&k| positive[k]).count() as f64 * avg_rank;
        i = j + 1;
    }
    Some((rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_by_hand() {
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), Some(1.0));
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), Some(0.0));
        // One inversion out of four pairs.
        assert_eq!(roc_auc(&[0.1, 0.5, 0.4, 0.9], &[false, false, true, true]), Some(0.75));
        // All tied: chance.
        assert_eq!(roc_auc(&[1.0; 4], &[false, true, false, true]), Some(0.5));
        assert_eq!(roc_auc(&[1.0, 2.0], &[true, true]), None);
    }
}
