//! The CycleGAN objective (`models/cycle_gan_model.py` and `GANLoss('lsgan')` in
//! `models/networks.py` of junyanz/pytorch-CycleGAN-and-pix2pix): least-squares adversarial
//! terms, the L1 cycle loss weighted by lambda (10) and the L1 identity loss weighted by
//! `0.5 * lambda`.
use tch::{Kind, Tensor};

/// The paper's cycle weight lambda (`--lambda_A`, `--lambda_B`).
pub const LAMBDA_CYCLE: f64 = 10.0;
/// The identity weight relative to lambda (`--lambda_identity`).
pub const LAMBDA_IDENTITY: f64 = 0.5;

/// Least-squares GAN loss: mean of `(pred - target)^2`, target 1 for "real", 0 for "fake".
///
/// # Shapes
/// - `pred`: any (the patch map) -> scalar
pub fn lsgan(pred: &Tensor, target_real: bool) -> Tensor {
    let t = if target_real { 1.0 } else { 0.0 };
    (pred - t).square().mean(Kind::Float)
}

/// A discriminator's loss, `0.5 * (lsgan(real, 1) + lsgan(fake, 0))` (the reference halves it so
/// that D learns more slowly than G).
pub fn discriminator_loss(pred_real: &Tensor, pred_fake: &Tensor) -> Tensor {
    (lsgan(pred_real, true) + lsgan(pred_fake, false)) * 0.5
}

/// Mean absolute difference.
///
/// # Shapes
/// - `a`, `b`: the same shape -> scalar
pub fn l1(a: &Tensor, b: &Tensor) -> Tensor {
    (a - b).abs().mean(Kind::Float)
}

/// `lambda * |G_B(G_A(a)) - a|_1` (mean over elements).
pub fn cycle_loss(reconstructed: &Tensor, real: &Tensor, lambda: f64) -> Tensor {
    l1(reconstructed, real) * lambda
}

/// `lambda * lambda_identity * |G_A(b) - b|_1`: a generator fed an image of its target domain
/// should leave it alone.
pub fn identity_loss(same: &Tensor, real: &Tensor, lambda: f64, lambda_identity: f64) -> Tensor {
    l1(same, real) * (lambda * lambda_identity)
}
