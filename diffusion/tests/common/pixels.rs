//! Pixel-space helpers of the learning tests: a dataset as one tensor, and the Fréchet distance
//! between Gaussians fitted to pixel vectors.
#![allow(dead_code)]
use genlab_data::Dataset;
use tch::{Kind, Tensor};

/// Every image of `ds`, [n, c, h, w] in [-1, 1].
pub fn all_images(ds: &dyn Dataset) -> Tensor {
    let [c, h, w] = ds.shape();
    let px: Vec<u8> = (0..ds.len()).flat_map(|i| ds.get(i).unwrap().image).collect();
    Tensor::from_slice(&px).view([ds.len() as i64, c as i64, h as i64, w as i64]).to_kind(Kind::Float) / 127.5 - 1.0
}

/// Fréchet distance between Gaussians fitted to the rows of `a` and `b` ([n, d]), in f64:
/// `|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))`, the trace of the root computed as the sum of
/// the square roots of the eigenvalues of the symmetric `C_a^(1/2) C_b C_a^(1/2)`.
pub fn frechet_distance(a: &Tensor, b: &Tensor) -> f64 {
    let stats = |x: &Tensor| {
        let x = x.flatten(1, -1).to_kind(Kind::Double);
        let mu = x.mean_dim(0, false, Kind::Double);
        let centred = &x - &mu;
        let cov = centred.transpose(0, 1).matmul(&centred) / (x.size()[0] - 1) as f64;
        (mu, cov)
    };
    let ((mu_a, c_a), (mu_b, c_b)) = (stats(a), stats(b));
    let (evals, evecs) = c_a.linalg_eigh("L");
    let root_a = evecs.matmul(&evals.clamp_min(0.0).sqrt().diag_embed(0, -2, -1)).matmul(&evecs.transpose(0, 1));
    let m = root_a.matmul(&c_b).matmul(&root_a);
    let m = (&m + m.transpose(0, 1)) / 2.0;
    let tr_root = m.linalg_eigvalsh("L").clamp_min(0.0).sqrt().sum(Kind::Double).double_value(&[]);
    let diff = (mu_a - mu_b).square().sum(Kind::Double).double_value(&[]);
    diff + c_a.trace().double_value(&[]) + c_b.trace().double_value(&[]) - 2.0 * tr_root
}
