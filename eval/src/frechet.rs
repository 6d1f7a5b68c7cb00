//! The Fréchet distance between Gaussians fitted to two feature sets: FID when the features are
//! Inception-v3's pool features (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule
//! Converge to a Local Nash Equilibrium", arXiv 1706.08500), or "FD_classifier" on a dataset
//! classifier's penultimate features.
//!
//! `d^2 = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`, as pytorch-fid's
//! `calculate_frechet_distance` (`pytorch_fid/fid_score.py`), but in f64 and without a general
//! matrix square root: `S_a S_b` is similar to the symmetric PSD `S_a^(1/2) S_b S_a^(1/2)`, so
//! `tr (S_a S_b)^(1/2)` is the sum of the square roots of that matrix's eigenvalues, which a
//! symmetric eigendecomposition gives stably (round-off negatives are clamped to 0).
//!
//! Sample size: with `n <= d` samples the covariance of `d`-dimensional features is singular
//! (rank at most `n - 1`) and the estimate is dominated by its bias, so [`FeatureStats::fit`]
//! refuses it with an error that says how many samples are needed.
use crate::check;
use crate::error::{EvalError, Result};
use tch::{Kind, Tensor};

/// Mean and covariance (divisor `n - 1`, as `np.cov`) of a feature set, in f64.
#[derive(Debug)]
pub struct FeatureStats {
    /// [d]
    pub mean: Tensor,
    /// [d, d]
    pub cov: Tensor,
    /// Samples the moments were estimated from.
    pub n: i64,
}

impl Clone for FeatureStats {
    fn clone(&self) -> Self {
        FeatureStats { mean: self.mean.copy(), cov: self.cov.copy(), n: self.n }
    }
}

impl FeatureStats {
    /// Fit the moments of the rows of `features`; needs more samples than dimensions.
    ///
    /// # Shapes
    /// - `features`: [n, d] with n > d (any float kind; computed in f64)
    pub fn fit(features: &Tensor) -> Result<Self> {
        let x = check::matrix(features, "the feature set", 2, "a covariance")?;
        let [n, d] = [x.size()[0], x.size()[1]];
        if n <= d {
            return Err(EvalError::TooFewSamples(format!(
                "{n} samples of {d}-dimensional features: the covariance is singular (rank at most {}), so the \
                 Fréchet distance would be mostly estimation bias; use more than {d} samples (FID on Inception's \
                 2048-d features conventionally uses 10000 or more) or lower-dimensional features",
                n - 1
            )));
        }
        let mean = x.mean_dim(0, false, Kind::Double);
        let c = &x - &mean;
        let cov = c.tr().matmul(&c) / (n - 1) as f64;
        Ok(FeatureStats { mean, cov, n })
    }

    pub fn dim(&self) -> i64 {
        self.mean.size()[0]
    }
}

/// Fréchet distance between two fitted Gaussians.
pub fn frechet_distance_stats(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    if a.dim() != b.dim() {
        return Err(EvalError::Shape(format!(
            "the Fréchet distance compares features of one width; got {} and {}",
            a.dim(),
            b.dim()
        )));
    }
    let root_a = sqrtm_psd(&a.cov)?;
    let m = root_a.matmul(&b.cov).matmul(&root_a);
    let m = (&m + m.tr()) * 0.5;
    let tr_root = m.f_linalg_eigvalsh("L")?.clamp_min(0.0).sqrt().sum(Kind::Double);
    let d = (&a.mean - &b.mean).square().sum(Kind::Double) + a.cov.trace() + b.cov.trace() - tr_root * 2.0;
    let d = d.double_value(&[]);
    if !d.is_finite() {
        return Err(EvalError::Values(format!("the Fréchet distance came out {d}")));
    }
    // Round-off can leave a distance of identical sets a hair below zero.
    Ok(d.max(0.0))
}

/// Fréchet distance between Gaussians fitted to the rows of `a` and of `b`.
///
/// # Shapes
/// - `a`: [n, d], `b`: [m, d] with n, m > d -> a number
pub fn frechet_distance(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = check::pair(a, b, 2, "the Fréchet distance")?;
    frechet_distance_stats(&FeatureStats::fit(&a)?, &FeatureStats::fit(&b)?)
}

/// Symmetric PSD square root by eigendecomposition (negative round-off eigenvalues -> 0).
fn sqrtm_psd(s: &Tensor) -> Result<Tensor> {
    let (l, v) = s.f_linalg_eigh("L")?;
    Ok((&v * l.clamp_min(0.0).sqrt().unsqueeze(0)).matmul(&v.tr()))
}
