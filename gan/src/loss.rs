//! The adversarial objectives as free functions of discriminator outputs, each returning
//! the scalar batch mean that is minimised.
//!
//! - Non-saturating GAN loss: Goodfellow et al., "Generative Adversarial Networks"
//!   (arXiv 1406.2661), section 3: G maximises log D(G(z)) instead of minimising
//!   log(1 - D(G(z))). On logits: `softplus(-x) = -log sigmoid(x)`.
//! - Hinge loss: Lim & Ye, "Geometric GAN" (arXiv 1705.02894), as used by Miyato et al.
//!   (arXiv 1802.05957) and the projection discriminator (arXiv 1802.05637).
//! - Wasserstein loss and weight clipping: Arjovsky, Chintala & Bottou, "Wasserstein GAN"
//!   (arXiv 1701.07875), Algorithm 1 (clip c = 0.01, n_critic = 5).
//! - Gradient penalty: Gulrajani et al., "Improved Training of Wasserstein GANs"
//!   (arXiv 1704.00028), Algorithm 1 (lambda = 10), following the reference
//!   `igul222/improved_wgan_training` `gan_mnist.py`.
//! - Super-resolution: Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a
//!   Generative Adversarial Network" (arXiv 1609.04802), equation 3 with the pixel-wise MSE
//!   content loss (equation 4) and the adversarial term weighted 1e-3.
use tch::{nn::VarStore, Kind, Tensor};

/// The paper's gradient-penalty weight.
pub const GP_LAMBDA: f64 = 10.0;
/// The paper's WGAN clipping bound.
pub const WGAN_CLIP: f64 = 0.01;

/// SRGAN's weight of the adversarial term in the generator's perceptual loss.
pub const SRGAN_ADVERSARIAL_WEIGHT: f64 = 1e-3;

/// SRGAN's generator loss with the pixel-wise content loss: `MSE(sr, hr) + w * -log D(G(lr))`
/// given the discriminator's logits on the super-resolved images, or the MSE alone (SRResNet)
/// without them. Returns (loss, MSE).
///
/// # Shapes
/// - `sr`, `hr`: [batch, c, h, w]; `fake`: [batch] logits -> (scalar, scalar)
pub fn sr_generator_loss(sr: &Tensor, hr: &Tensor, fake: Option<&Tensor>, adversarial_weight: f64) -> (Tensor, Tensor) {
    let mse = (sr.to_kind(Kind::Float) - hr.to_kind(Kind::Float)).square().mean(Kind::Float);
    match fake {
        Some(f) => (&mse + g_loss_non_saturating(f) * adversarial_weight, mse),
        None => (mse.shallow_clone(), mse),
    }
}

/// Non-saturating discriminator loss: `-log D(x) - log(1 - D(G(z)))`, D = sigmoid(logit).
///
/// # Shapes
/// - `real`, `fake`: [batch] logits -> scalar
pub fn d_loss_non_saturating(real: &Tensor, fake: &Tensor) -> Tensor {
    (-real).softplus().mean(Kind::Float) + fake.softplus().mean(Kind::Float)
}

/// Non-saturating generator loss: `-log D(G(z))`.
///
/// # Shapes
/// - `fake`: [batch] logits -> scalar
pub fn g_loss_non_saturating(fake: &Tensor) -> Tensor {
    (-fake).softplus().mean(Kind::Float)
}

/// Hinge discriminator loss: `max(0, 1 - D(x)) + max(0, 1 + D(G(z)))`.
///
/// # Shapes
/// - `real`, `fake`: [batch] -> scalar
pub fn d_loss_hinge(real: &Tensor, fake: &Tensor) -> Tensor {
    (-real + 1.0).relu().mean(Kind::Float) + (fake + 1.0).relu().mean(Kind::Float)
}

/// Hinge generator loss: `-D(G(z))`.
///
/// # Shapes
/// - `fake`: [batch] -> scalar
pub fn g_loss_hinge(fake: &Tensor) -> Tensor {
    -fake.mean(Kind::Float)
}

/// Wasserstein critic loss: `D(G(z)) - D(x)` (the negated estimate of W(P_r, P_g)).
///
/// # Shapes
/// - `real`, `fake`: [batch] -> scalar
pub fn d_loss_wasserstein(real: &Tensor, fake: &Tensor) -> Tensor {
    fake.mean(Kind::Float) - real.mean(Kind::Float)
}

/// Wasserstein generator loss: `-D(G(z))`.
///
/// # Shapes
/// - `fake`: [batch] -> scalar
pub fn g_loss_wasserstein(fake: &Tensor) -> Tensor {
    -fake.mean(Kind::Float)
}

/// Random points on the lines between real and fake samples, `eps x + (1 - eps) x~` with
/// eps ~ U[0, 1] per sample, detached and requiring gradients (the input of
/// [`gradient_penalty`]).
///
/// # Shapes
/// - `real`, `fake`: [batch, ...] -> [batch, ...]
pub fn interpolate(real: &Tensor, fake: &Tensor) -> Tensor {
    let n = real.size()[0];
    let mut eps_shape = vec![n];
    eps_shape.resize(real.dim(), 1);
    let eps = Tensor::rand(eps_shape.as_slice(), (real.kind(), real.device()));
    (&eps * real.detach() + (-&eps + 1.0) * fake.detach()).set_requires_grad(true)
}

/// `lambda * mean((|grad_x D(x)|_2 - 1)^2)` with `critic_out = D(inputs)`. The gradient is
/// taken with `create_graph`, so the penalty itself can be differentiated with respect to
/// the critic's weights (double backward).
///
/// # Shapes
/// - `critic_out`: [batch]; `inputs`: [batch, ...] (requiring gradients) -> scalar
pub fn gradient_penalty(critic_out: &Tensor, inputs: &Tensor, lambda: f64) -> Tensor {
    let total = critic_out.sum(Kind::Float);
    let grads = Tensor::run_backward(&[&total], &[inputs], true, true);
    let norm = grads[0].flatten(1, -1).norm_scalaropt_dim(2.0, [1], false);
    (norm - 1.0).square().mean(Kind::Float) * lambda
}

/// Clamp every trainable weight of `vs` to `[-clip, clip]` (WGAN's Lipschitz constraint),
/// in place.
pub fn clip_weights(vs: &VarStore, clip: f64) {
    tch::no_grad(|| {
        for mut t in vs.trainable_variables() {
            let _ = t.clamp_(-clip, clip);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device};

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    fn close(a: &Tensor, b: f64) -> bool {
        (a.double_value(&[]) - b).abs() < 1e-5
    }

    #[test]
    fn losses_by_hand() {
        let ln2 = std::f64::consts::LN_2;
        // Logits 0 are D = 1/2: ln 2 for each term.
        assert!(close(&d_loss_non_saturating(&t(&[0.0, 0.0]), &t(&[0.0])), 2.0 * ln2));
        // -log sigmoid(2) = ln(1 + e^-2); -log(1 - sigmoid(-1)) = ln(1 + e^-1).
        let want = (1.0 + (-2f64).exp()).ln() + (1.0 + (-1f64).exp()).ln();
        assert!(close(&d_loss_non_saturating(&t(&[2.0]), &t(&[-1.0])), want));
        // G: -log sigmoid(x) averaged over x = 1, -3.
        let want = ((1.0 + (-1f64).exp()).ln() + (1.0 + 3f64.exp()).ln()) / 2.0;
        assert!(close(&g_loss_non_saturating(&t(&[1.0, -3.0])), want));
        // Hinge: real [2, 0.5] -> mean(0, 0.5) = 0.25; fake [-2, 0] -> mean(0, 1) = 0.5.
        assert!(close(&d_loss_hinge(&t(&[2.0, 0.5]), &t(&[-2.0, 0.0])), 0.75));
        assert!(close(&g_loss_hinge(&t(&[1.0, 3.0])), -2.0));
        // Wasserstein: mean fake 1 - mean real 2.5.
        assert!(close(&d_loss_wasserstein(&t(&[2.0, 3.0]), &t(&[0.0, 2.0])), -1.5));
        assert!(close(&g_loss_wasserstein(&t(&[0.0, 2.0])), -1.0));
    }

    #[test]
    fn gradient_penalty_of_a_linear_critic_is_closed_form() {
        // D(x) = w . x has input gradient w everywhere: GP = lambda (|w| - 1)^2.
        let w = Tensor::from_slice(&[3.0f32, 4.0, 0.0, 0.0]).view([1, 1, 2, 2]); // |w| = 5
        let real = Tensor::randn([6, 1, 2, 2], (Kind::Float, Device::Cpu));
        let fake = Tensor::randn([6, 1, 2, 2], (Kind::Float, Device::Cpu));
        let x = interpolate(&real, &fake);
        assert!(x.requires_grad());
        let out = (&x * &w).sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float);
        let gp = gradient_penalty(&out, &x, GP_LAMBDA);
        assert!(close(&gp, 10.0 * 16.0), "{}", gp.double_value(&[]));
        // The interpolates lie between the endpoints.
        let lo = real.minimum(&fake);
        let hi = real.maximum(&fake);
        assert!(bool::try_from(x.ge_tensor(&(lo - 1e-6)).all()).unwrap());
        assert!(bool::try_from(x.le_tensor(&(hi + 1e-6)).all()).unwrap());

        // Double backward: a trainable linear critic w receives d GP / d w = 2 lambda (|w| - 1) w / |w|.
        let vs = VarStore::new(Device::Cpu);
        let wv = vs.root().var_copy("w", &Tensor::from_slice(&[3.0f32, 4.0]));
        let x = interpolate(
            &Tensor::ones([3, 2], (Kind::Float, Device::Cpu)),
            &Tensor::zeros([3, 2], (Kind::Float, Device::Cpu)),
        );
        let out = x.mv(&wv);
        gradient_penalty(&out, &x, 1.0).backward();
        let g = wv.grad();
        assert!((g.double_value(&[0]) - 2.0 * 4.0 * 3.0 / 5.0).abs() < 1e-4);
        assert!((g.double_value(&[1]) - 2.0 * 4.0 * 4.0 / 5.0).abs() < 1e-4);
    }

    #[test]
    fn clipping_keeps_every_weight_inside_the_bound() {
        let vs = VarStore::new(Device::Cpu);
        let lin = nn::linear(vs.root() / "l", 8, 8, Default::default());
        tch::no_grad(|| {
            lin.ws.shallow_clone().copy_(&(Tensor::randn([8, 8], (Kind::Float, Device::Cpu)) * 3.0));
        });
        let untouched = vs.root().zeros_no_train("buffer", &[2]);
        tch::no_grad(|| {
            let _ = untouched.shallow_clone().fill_(5.0);
        });
        clip_weights(&vs, WGAN_CLIP);
        for t in vs.trainable_variables() {
            assert!(t.abs().max().double_value(&[]) <= WGAN_CLIP + 1e-9);
        }
        // Weights already inside the bound keep their values; buffers are not weights.
        assert!(untouched.double_value(&[0]) == 5.0);
        let saturated = lin.ws.abs().eq(WGAN_CLIP as f32 as f64).to_kind(Kind::Float).mean(Kind::Float);
        assert!(saturated.double_value(&[]) > 0.9);
    }
}
