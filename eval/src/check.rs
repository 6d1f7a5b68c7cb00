//! Argument checks shared by the metrics: feature matrices of the right rank, width and size.
use crate::error::{EvalError, Result};
use tch::{Kind, Tensor};

/// `x` as a `[n, d]` f64 matrix with finite entries and `n >= min_rows`.
pub(crate) fn matrix(x: &Tensor, what: &str, min_rows: i64, needed_for: &str) -> Result<Tensor> {
    let size = x.size();
    if size.len() != 2 || size[1] == 0 {
        return Err(EvalError::Shape(format!("{what} must be a feature matrix [n, d] with d >= 1, got {size:?}")));
    }
    if size[0] < min_rows {
        return Err(EvalError::TooFewSamples(format!(
            "{what} has {} rows; {needed_for} needs at least {min_rows}",
            size[0]
        )));
    }
    let x = x.detach().to_kind(Kind::Double);
    if !bool::try_from(x.isfinite().all())? {
        return Err(EvalError::Values(format!("{what} {size:?} contains NaN or infinite values")));
    }
    Ok(x)
}

/// Two feature matrices of the same width.
pub(crate) fn pair(a: &Tensor, b: &Tensor, min_rows: i64, needed_for: &str) -> Result<(Tensor, Tensor)> {
    let a = matrix(a, "the first feature set", min_rows, needed_for)?;
    let b = matrix(b, "the second feature set", min_rows, needed_for)?;
    let (da, db) = (a.size()[1], b.size()[1]);
    if da != db {
        return Err(EvalError::Shape(format!(
            "{needed_for} compares features of one width; got [{}, {da}] and [{}, {db}]",
            a.size()[0],
            b.size()[0]
        )));
    }
    Ok((a, b))
}
