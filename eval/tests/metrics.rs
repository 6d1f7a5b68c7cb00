//! Known answers for every metric, and clear errors for inputs they cannot take.
use genlab_eval::coverage::class_coverage;
use genlab_eval::inception_score::inception_score;
use genlab_eval::precision_recall::precision_recall;
use genlab_eval::{frechet_distance, kernel_inception_distance, EvalError, KidConfig};
use tch::{Device, Kind, Tensor};

fn randn(shape: &[i64], seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn(shape, (Kind::Double, Device::Cpu))
}

/// N(mu_a, diag(s_a^2)) vs N(mu_b, diag(s_b^2)): FD = |mu_a - mu_b|^2 + sum (s_a - s_b)^2. With
/// whitened samples (exact zero mean and identity covariance) the estimate is the closed form to
/// round-off; with plain samples it is within the sampling error.
#[test]
fn frechet_distance_of_gaussians_has_the_closed_form() {
    let d = 4i64;
    let white = |seed| {
        let x = randn(&[500, d], seed);
        let x = &x - x.mean_dim(0, true, Kind::Double);
        let cov = x.tr().matmul(&x) / 499.0;
        let (l, v) = cov.linalg_eigh("L");
        let inv_root = (&v * l.rsqrt().unsqueeze(0)).matmul(&v.tr());
        x.matmul(&inv_root)
    };
    let (sa, sb) = ([1.0, 2.0, 0.5, 1.0], [2.0, 1.0, 0.5, 3.0]);
    let (ma, mb) = ([0.0, 1.0, -1.0, 0.0], [1.0, 1.0, 1.0, 0.5]);
    let scale = |x: &Tensor, s: &[f64; 4], m: &[f64; 4]| x * Tensor::from_slice(s) + Tensor::from_slice(m);
    let a = scale(&white(1), &sa, &ma);
    let b = scale(&white(2), &sb, &mb);
    let want: f64 = (0..4).map(|i| (ma[i] - mb[i]).powi(2) + (sa[i] - sb[i]).powi(2)).sum();
    let got = frechet_distance(&a, &b).unwrap();
    assert!((got - want).abs() < 1e-9 * want, "{got} vs closed form {want}");
    // A full covariance: b = a R for a rotation R leaves the covariance's spectrum, so with
    // S_a = I, FD = |mu|^2 + tr(I + I - 2 I) = |mu|^2.
    let r = Tensor::from_slice(&[0.6, -0.8, 0.8, 0.6]).view([2, 2]);
    let a2 = white(3).narrow(1, 0, 2);
    let b2 = a2.matmul(&r) + Tensor::from_slice(&[3.0, 4.0]);
    let got = frechet_distance(&a2, &b2).unwrap();
    assert!((got - 25.0).abs() < 1e-8, "{got} vs 25");
    // Unwhitened samples of the same Gaussians: within sampling error.
    let a3 = scale(&randn(&[20000, d], 4), &sa, &ma);
    let b3 = scale(&randn(&[20000, d], 5), &sb, &mb);
    let got = frechet_distance(&a3, &b3).unwrap();
    assert!((got - want).abs() < 0.05 * want, "{got} vs {want}");
}

#[test]
fn frechet_distance_of_a_set_with_itself_is_zero() {
    let a = randn(&[300, 16], 7);
    let fd = frechet_distance(&a, &a).unwrap();
    assert!(fd.abs() < 1e-9, "{fd}");
    assert!(frechet_distance(&a, &(&a + 0.5)).unwrap() > 16.0 * 0.25 - 1e-6);
}

#[test]
fn kid_is_zero_for_one_distribution_and_positive_for_a_shift() {
    let a = randn(&[600, 8], 1);
    let b = randn(&[600, 8], 2);
    let cfg = KidConfig { subsets: 20, subset_size: 300, seed: 0 };
    let same = kernel_inception_distance(&a, &b, &cfg).unwrap();
    let shifted = kernel_inception_distance(&a, &(&b + 1.0), &cfg).unwrap();
    assert_eq!(same.subset_size, 300);
    assert!(same.mean.abs() < 3.0 * same.std.max(1e-3), "same distribution: {same:?}");
    assert!(shifted.mean > 0.5 && shifted.mean > 20.0 * same.mean.abs(), "shifted {shifted:?} vs same {same:?}");
    // The subset size is capped at the smaller set; the draws are a function of the seed.
    let small = kernel_inception_distance(&a.narrow(0, 0, 50), &b, &cfg).unwrap();
    assert_eq!(small.subset_size, 50);
    assert_eq!(kernel_inception_distance(&a, &b, &cfg).unwrap(), same);
}

/// The unbiased MMD^2 of one subset, by hand: x = {0, 1}, y = {2, 4} in one dimension,
/// k(u, v) = (u v + 1)^3.
#[test]
fn kid_of_one_subset_by_hand() {
    let x = Tensor::from_slice(&[0.0, 1.0]).view([2, 1]);
    let y = Tensor::from_slice(&[2.0, 4.0]).view([2, 1]);
    let k = |u: f64, v: f64| (u * v + 1.0f64).powi(3);
    let want = k(0.0, 1.0) + k(2.0, 4.0) - 2.0 * (k(0.0, 2.0) + k(0.0, 4.0) + k(1.0, 2.0) + k(1.0, 4.0)) / 4.0;
    let got = kernel_inception_distance(&x, &y, &KidConfig { subsets: 3, subset_size: 1000, seed: 0 }).unwrap();
    assert!((got.mean - want).abs() < 1e-9 && got.std < 1e-12, "{got:?} vs {want}");
}

#[test]
fn inception_score_of_uniform_and_one_hot_logits() {
    let uniform = Tensor::zeros([100, 10], (Kind::Float, Device::Cpu));
    let s = inception_score(&uniform, 10).unwrap();
    assert!((s.mean - 1.0).abs() < 1e-9 && s.std < 1e-9, "{s:?}");
    // Confident predictions spread evenly over K = 10 classes in every split: IS = K.
    let labels = Tensor::arange(100, (Kind::Int64, Device::Cpu)).remainder(10);
    let one_hot = labels.one_hot(10).to_kind(Kind::Float) * 100.0;
    let s = inception_score(&one_hot, 10).unwrap();
    assert!((s.mean - 10.0).abs() < 1e-6, "{s:?}");
    // All samples confidently one class: 1.
    let collapsed = Tensor::zeros([100], (Kind::Int64, Device::Cpu)).one_hot(10).to_kind(Kind::Float) * 100.0;
    assert!((inception_score(&collapsed, 10).unwrap().mean - 1.0).abs() < 1e-6);
}

/// Eight clusters far apart (centres 100 apart, spread 1).
fn clusters(ids: &[i64], per: i64, seed: i64) -> Tensor {
    let parts: Vec<Tensor> = ids
        .iter()
        .map(|&c| {
            let centre = Tensor::zeros([1, 4], (Kind::Double, Device::Cpu)).fill_(0.0) + 100.0 * c as f64;
            randn(&[per, 4], seed * 100 + c) + centre
        })
        .collect();
    Tensor::cat(&parts, 0)
}

#[test]
fn precision_and_recall_on_toy_manifolds() {
    let real = clusters(&[0, 1, 2, 3, 4, 5, 6, 7], 50, 1);
    let same = precision_recall(&real, &real, 3, 64).unwrap();
    assert_eq!((same.precision, same.recall), (1.0, 1.0));
    let far = clusters(&[20, 21, 22, 23], 50, 2);
    let disjoint = precision_recall(&real, &far, 3, 64).unwrap();
    assert_eq!((disjoint.precision, disjoint.recall), (0.0, 0.0));
    // Half the clusters, as jittered copies of the real points: precision 1, recall exactly 1/2.
    let even = Tensor::cat(&[0i64, 2, 4, 6].map(|c| real.narrow(0, 50 * c, 50)), 0);
    let half = &even + randn(&[200, 4], 3) * 1e-3;
    let pr = precision_recall(&real, &half, 3, 64).unwrap();
    assert_eq!((pr.precision, pr.recall), (1.0, 0.5));
    // Fresh samples of those clusters: most fall inside the real k-NN balls (50 points in 4-d leave
    // the tails out), and half the real manifold is covered.
    let fresh = clusters(&[0, 2, 4, 6], 100, 4);
    let pr = precision_recall(&real, &fresh, 3, 64).unwrap();
    assert!(pr.precision > 0.8, "{pr:?}");
    assert!((pr.recall - 0.5).abs() < 0.06, "{pr:?}");
    // The batch size changes nothing.
    assert_eq!(precision_recall(&real, &fresh, 3, 7).unwrap(), pr);
}

#[test]
fn class_coverage_counts_classes_with_a_quarter_of_their_share() {
    let k = 10;
    let balanced = Tensor::arange(200, (Kind::Int64, Device::Cpu)).remainder(k).one_hot(k).to_kind(Kind::Float);
    let c = class_coverage(&balanced).unwrap();
    assert_eq!((c.coverage, c.counts.iter().sum::<i64>()), (1.0, 200));
    // 200 samples, 10 classes: a class needs 5. Three classes only: 0.3.
    let three = Tensor::arange(200, (Kind::Int64, Device::Cpu)).remainder(3).one_hot(k).to_kind(Kind::Float);
    assert_eq!(class_coverage(&three).unwrap().coverage, 0.3);
    // Class 9 with 4 samples (under the threshold of 5) does not count.
    let mut labels: Vec<i64> = (0..196).map(|i| i % 9).collect();
    labels.extend([9; 4]);
    let skewed = Tensor::from_slice(&labels).one_hot(k).to_kind(Kind::Float);
    let c = class_coverage(&skewed).unwrap();
    assert_eq!((c.coverage, c.counts[9], c.threshold), (0.9, 4, 5.0));
}

#[test]
fn bad_inputs_are_clear_errors() {
    let a = randn(&[100, 8], 1);
    // Wrong shapes.
    let e = frechet_distance(&a, &randn(&[100, 9], 2)).unwrap_err();
    assert!(matches!(e, EvalError::Shape(_)) && e.to_string().contains("[100, 8] and [100, 9]"), "{e}");
    let e = frechet_distance(&a.view([100, 2, 4]), &a).unwrap_err();
    assert!(e.to_string().contains("[n, d]") && e.to_string().contains("[100, 2, 4]"), "{e}");
    assert!(matches!(inception_score(&a.view([-1]), 10), Err(EvalError::Shape(_))));
    assert!(matches!(class_coverage(&a.view([-1])), Err(EvalError::Shape(_))));
    // Too few samples: n < 2, n <= d for a covariance, fewer than k + 1 for precision/recall.
    let e = frechet_distance(&a.narrow(0, 0, 1), &a).unwrap_err();
    assert!(matches!(e, EvalError::TooFewSamples(_)), "{e}");
    let e = frechet_distance(&a.narrow(0, 0, 8), &a).unwrap_err();
    assert!(matches!(e, EvalError::TooFewSamples(_)) && e.to_string().contains("more than 8 samples"), "{e}");
    let e = precision_recall(&a.narrow(0, 0, 3), &a, 3, 10).unwrap_err();
    assert!(matches!(e, EvalError::TooFewSamples(_)) && e.to_string().contains("at least 4"), "{e}");
    let e = kernel_inception_distance(&a.narrow(0, 0, 1), &a, &KidConfig::default()).unwrap_err();
    assert!(matches!(e, EvalError::TooFewSamples(_)), "{e}");
    let e = inception_score(&a.narrow(0, 0, 5), 10).unwrap_err();
    assert!(matches!(e, EvalError::TooFewSamples(_)), "{e}");
    // NaN features are refused, not propagated.
    let nan = a.copy();
    let _ = nan.get(3).get(2).fill_(f64::NAN);
    let e = frechet_distance(&nan, &a).unwrap_err();
    assert!(matches!(e, EvalError::Values(_)) && e.to_string().contains("NaN"), "{e}");
    assert!(matches!(kernel_inception_distance(&a, &nan, &KidConfig::default()), Err(EvalError::Values(_))));
    assert!(matches!(inception_score(&nan, 10), Err(EvalError::Values(_))));
}
