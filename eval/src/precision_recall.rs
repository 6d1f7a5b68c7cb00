//! Improved precision and recall (Kynkäänniemi et al., "Improved Precision and Recall Metric for
//! Assessing Generative Models", arXiv 1904.06991): each set's manifold is the union of balls
//! around its points with radius the distance to the point's k-th nearest neighbour in the same
//! set (k = 3 in the paper). Precision is the share of generated samples inside the real manifold
//! (quality); recall the share of real samples inside the generated manifold (coverage of the
//! data). Distances are computed in row batches so memory stays `batch x n`.
use crate::check;
use crate::error::{EvalError, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The paper's neighbourhood size.
pub const DEFAULT_K: i64 = 3;
/// Rows per distance batch.
pub const DEFAULT_BATCH: i64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrecisionRecall {
    pub precision: f64,
    pub recall: f64,
    pub k: i64,
}

/// Distance from each row of `x` to its k-th nearest other row.
///
/// # Shapes
/// - `x`: [n, d] with n > k -> [n]
fn knn_radii(x: &Tensor, k: i64, batch: i64) -> Tensor {
    let n = x.size()[0];
    let parts: Vec<Tensor> = (0..n)
        .step_by(batch as usize)
        .map(|lo| {
            let rows = x.narrow(0, lo, batch.min(n - lo));
            // The (k+1)-th smallest distance: the smallest is the row to itself.
            Tensor::cdist(&rows, x, 2.0, None).kthvalue(k + 1, 1, false).0
        })
        .collect();
    Tensor::cat(&parts, 0)
}

/// Share of the rows of `query` within the radius of some row of `manifold`.
fn inside(query: &Tensor, manifold: &Tensor, radii: &Tensor, batch: i64) -> f64 {
    let n = query.size()[0];
    let mut hits = 0i64;
    for lo in (0..n).step_by(batch as usize) {
        let rows = query.narrow(0, lo, batch.min(n - lo));
        let d = Tensor::cdist(&rows, manifold, 2.0, None);
        hits += d.le_tensor(&radii.unsqueeze(0)).any_dim(1, false).sum(Kind::Int64).int64_value(&[]);
    }
    hits as f64 / n as f64
}

/// Precision of `generated` against `real` and recall of `real` by `generated`.
///
/// # Shapes
/// - `real`: [n, d], `generated`: [m, d] with n, m > k -> two numbers in [0, 1]
pub fn precision_recall(real: &Tensor, generated: &Tensor, k: i64, batch: i64) -> Result<PrecisionRecall> {
    if k < 1 || batch < 1 {
        return Err(EvalError::Config(format!(
            "precision/recall needs k >= 1 and a batch >= 1, got k {k}, batch {batch}"
        )));
    }
    let (real, generated) = check::pair(real, generated, k + 1, &format!("precision/recall with k = {k}"))?;
    let real_radii = knn_radii(&real, k, batch);
    let gen_radii = knn_radii(&generated, k, batch);
    Ok(PrecisionRecall {
        precision: inside(&generated, &real, &real_radii, batch),
        recall: inside(&real, &generated, &gen_radii, batch),
        k,
    })
}
