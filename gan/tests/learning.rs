//! GANs learn real data: a small DCGAN trained for 600 steps on sklearn's 8x8 digits must
//! produce samples far closer to the data than noise or a fixed image, covering most classes.
//!
//! Measures, against the 1797 real digits:
//! - the Fréchet distance of Gaussians fitted to pixels (64-dimensional, f64) and to the
//!   logits of a logistic-regression classifier trained here on the real digits, for the
//!   generator's samples, uniform noise and a fixed image (the real mean, blurred);
//! - class coverage: the share of the 10 classes the classifier assigns to at least 1% of
//!   500 samples.
//!
//! The conditional GAN has its own test binary (`learning_conditional.rs`): libtorch's
//! random generator is global, so two trainings in parallel threads would not be reproducible.
mod common;

use common::{all_images, classifier, coverage, fd, predict, train};
use genlab_eval::frechet_distance;
use genlab_gan::sample::sample;
use genlab_gan::train::load;
use tch::nn::Module;
use tch::{Device, Kind, Tensor};

/// Classes predicted for at least 1% of `x`, out of 10.
#[test]
fn dcgan_learns_digits() {
    common::single_thread();
    let tmp = tempfile::tempdir().unwrap();
    let ds = genlab_data::open("digits").unwrap();
    let (x, y) = all_images(ds.as_ref());
    let (_cvs, clf) = classifier(&x, &y);
    let acc = predict(&clf, &x).eq_tensor(&y).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    assert!(acc > 0.95, "the classifier reaches {acc:.3} on real digits");

    train("dcgan", 600, tmp.path());
    let (_vs, g, back) = load(tmp.path(), Device::Cpu).unwrap();
    assert_eq!(back.model, "dcgan");
    tch::manual_seed(1);
    let fake = sample(&g, 1000, None).unwrap();
    let noise = Tensor::rand([1000, 1, 8, 8], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let mean = x.mean_dim(0, true, Kind::Float);
    let kernel = Tensor::ones([1, 1, 3, 3], (Kind::Float, Device::Cpu)) / 9.0;
    let blurred = mean.conv2d::<Tensor>(&kernel, None, [1], [1], [1], 1);
    // A constant image has zero covariance; its rows are identical, which the distance allows.
    let fixed = blurred.expand([1000, 1, 8, 8], false).contiguous();
    let (fd_gen, fd_noise, fd_fixed) = (fd(&fake, &x), fd(&noise, &x), fd(&fixed, &x));
    let logits = |t: &Tensor| tch::no_grad(|| clf.forward(&t.flatten(1, -1)));
    let lfd = |t: &Tensor| frechet_distance(&logits(t), &logits(&x)).unwrap();
    let (lfd_gen, lfd_noise, lfd_fixed) = (lfd(&fake), lfd(&noise), lfd(&fixed));
    let (cov_gen, cov_noise) = (coverage(&clf, &fake.narrow(0, 0, 500)), coverage(&clf, &noise.narrow(0, 0, 500)));
    eprintln!(
        "Fréchet distance to the real digits, pixels: generated {fd_gen:.2}, uniform noise {fd_noise:.2}, \
         blurred mean {fd_fixed:.2}; classifier logits: generated {lfd_gen:.2}, noise {lfd_noise:.2}, blurred \
         mean {lfd_fixed:.2}. Class coverage of 500 samples: generated {cov_gen:.1}, noise {cov_noise:.1}"
    );
    // Measured on the CPU: pixels 6.15 vs 39.7 (noise) and 25.1 (blurred mean); logits about 44 vs 113 and 417.
    assert!(fd_gen < 0.25 * fd_noise, "pixel FD: generated {fd_gen:.2}, noise {fd_noise:.2}; bound 0.25x noise");
    assert!(fd_gen < 0.5 * fd_fixed, "pixel FD: generated {fd_gen:.2}, blurred mean {fd_fixed:.2}; bound 0.5x");
    assert!(lfd_gen < 0.6 * lfd_noise, "logit FD: generated {lfd_gen:.2}, noise {lfd_noise:.2}; bound 0.6x noise");
    // Coverage guards against mode collapse (noise, scattered over the classifier's regions, covers every class).
    assert!(cov_gen >= 0.6, "class coverage {cov_gen}, bound 0.6");
}
