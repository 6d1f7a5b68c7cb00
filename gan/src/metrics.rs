//! The diversity ratio logged during training: a cheap mode-collapse signal. Sample-quality
//! measures (Fréchet distance, KID, precision/recall) are in genlab-eval.
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
}
