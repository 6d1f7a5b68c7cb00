//! Sample-quality statistics: the diversity ratio logged during training (a cheap mode
//! collapse signal) and the Fréchet distance between two feature sets (Heusel et al.,
//! "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
//! arXiv 1706.08500: FID on Inception features; here on whatever features the caller
//! gives, computed in f64).
use crate::error::{GanError, Result};
use tch::{Kind, Tensor};

/// Mean L2 distance over all pairs of distinct samples.
///
/// # Shapes
/// - `x`: [n, ...] with n >= 2 -> a number
pub fn mean_pairwise_distance(x: &Tensor) -> f64 {
    let n = x.size()[0];
    if n < 2 {
        return 0.0;
    }
    let flat = x.detach().flatten(1, -1).to_kind(Kind::Double);
    let d = Tensor::cdist(&flat, &flat, 2.0, None);
    d.sum(Kind::Double).double_value(&[]) / (n * (n - 1)) as f64
}

/// Diversity of generated samples relative to real ones: mean pairwise distance of
/// `fake` over that of `real`. About 1 when G covers the data's spread, near 0 when every
/// sample is the same image (mode collapse).
///
/// # Shapes
/// - `fake`: [n, ...], `real`: [m, ...] -> a number
pub fn diversity_ratio(fake: &Tensor, real: &Tensor) -> f64 {
    mean_pairwise_distance(fake) / mean_pairwise_distance(real).max(1e-12)
}

/// Mean and covariance (divisor n - 1) of the rows of `x`, in f64.
fn moments(x: &Tensor) -> (Tensor, Tensor) {
    let x = x.to_kind(Kind::Double);
    let n = x.size()[0];
    let mu = x.mean_dim(0, false, Kind::Double);
    let c = &x - &mu;
    (mu, c.tr().matmul(&c) / (n - 1) as f64)
}

/// Symmetric PSD square root by eigendecomposition (negative round-off eigenvalues -> 0).
fn sqrtm_psd(s: &Tensor) -> Tensor {
    let (l, v) = s.linalg_eigh("L");
    (&v * l.clamp_min(0.0).sqrt().unsqueeze(0)).matmul(&v.tr())
}

/// Fréchet distance between Gaussians fitted to two feature sets:
/// `|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`, with the trace of the root taken
/// as `tr((S_a^(1/2) S_b S_a^(1/2))^(1/2))` (symmetric, so an eigendecomposition suffices).
///
/// # Shapes
/// - `a`: [n, d], `b`: [m, d], n, m >= 2 -> a number
pub fn frechet_distance(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (sa, sb) = (a.size(), b.size());
    if sa.len() != 2 || sb.len() != 2 || sa[1] != sb[1] || sa[0] < 2 || sb[0] < 2 {
        return Err(GanError::Config(format!(
            "the Fréchet distance needs two feature sets [n, d] and [m, d] with n, m >= 2; got {sa:?} and {sb:?}"
        )));
    }
    let (mu_a, cov_a) = moments(a);
    let (mu_b, cov_b) = moments(b);
    let root_a = sqrtm_psd(&cov_a);
    let m = root_a.matmul(&cov_b).matmul(&root_a);
    let m = (&m + m.tr()) * 0.5;
    let tr_root = m.linalg_eigvalsh("L").clamp_min(0.0).sqrt().sum(Kind::Double);
    let d = (mu_a - mu_b).square().sum(Kind::Double) + cov_a.trace() + cov_b.trace() - tr_root * 2.0;
    Ok(d.double_value(&[]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn pairwise_distance_by_hand() {
        // Points 0, 3 and 4 on a line: distances 3, 4, 1 -> mean 8/3.
        let x = Tensor::from_slice(&[0.0f32, 3.0, 4.0]).view([3, 1]);
        assert!((mean_pairwise_distance(&x) - 8.0 / 3.0).abs() < 1e-9);
        let same = Tensor::ones([5, 2, 2], (Kind::Float, Device::Cpu));
        assert_eq!(diversity_ratio(&same, &x), 0.0);
        assert!((diversity_ratio(&x, &x) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn frechet_distance_matches_closed_forms() {
        tch::manual_seed(0);
        let a = Tensor::randn([4000, 3], (Kind::Double, Device::Cpu));
        assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-8);
        // b = 2a + 1: S_b = 4 S_a exactly, so tr((S_a S_b)^(1/2)) = 2 tr(S_a) and the distance
        // is |mu_a - mu_b|^2 + tr(S_a) + 4 tr(S_a) - 4 tr(S_a).
        let b = &a * 2.0 + 1.0;
        let var_a = a.var_dim(0, true, false).sum(Kind::Double);
        let mu_gap =
            (a.mean_dim(0, false, Kind::Double) - b.mean_dim(0, false, Kind::Double)).square().sum(Kind::Double);
        let want = (mu_gap + var_a).double_value(&[]);
        let got = frechet_distance(&a, &b).unwrap();
        assert!((got - want).abs() < 1e-6 * want.max(1.0), "{got} vs {want}");
        let e = frechet_distance(&a, &Tensor::zeros([5, 4], (Kind::Double, Device::Cpu))).unwrap_err();
        assert!(e.to_string().contains("[4000, 3] and [5, 4]"), "{e}");
    }
}
