//! Shared by the learning tests: the digits as tensors, a logistic-regression classifier
//! trained on them, the Fréchet distance of pixel-space Gaussians, and a training run.
use genlab_core::optim::{Adam, AdamConfig};
use genlab_core::train::{run, HarnessConfig};
use genlab_data::{Dataset, Loader, LoaderConfig};
use genlab_eval::frechet_distance;
use genlab_gan::train::{GanRunConfig, GanTask};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// One intra-op thread: these networks are too small to share, and on busy cores OpenMP
/// threads waiting for each other cost ten times what they save (measured: 600 steps took
/// 13 s on one thread, 140 s for 400 steps on two, with the machine's two cores loaded).
pub fn single_thread() {
    tch::set_num_threads(1);
}

pub fn all_images(ds: &dyn Dataset) -> (Tensor, Tensor) {
    let [c, h, w] = ds.shape();
    let items: Vec<_> = (0..ds.len()).map(|i| ds.get(i).unwrap()).collect();
    let px: Vec<u8> = items.iter().flat_map(|it| it.image.clone()).collect();
    let labels: Vec<i64> = items.iter().map(|it| it.label.unwrap()).collect();
    let x = Tensor::from_slice(&px).view([ds.len() as i64, c as i64, h as i64, w as i64]).to_kind(Kind::Float) / 127.5
        - 1.0;
    (x, Tensor::from_slice(&labels))
}

/// Logistic regression on pixels, trained to convergence on the real digits.
pub fn classifier(x: &Tensor, y: &Tensor) -> (nn::VarStore, nn::Linear) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let lin = nn::linear(vs.root(), 64, 10, Default::default());
    let mut opt = Adam::new(&vs, AdamConfig::adam(0.05)).unwrap();
    let flat = x.flatten(1, -1);
    for _ in 0..300 {
        opt.backward_step(&lin.forward(&flat).cross_entropy_for_logits(y));
    }
    (vs, lin)
}

pub fn predict(lin: &nn::Linear, x: &Tensor) -> Tensor {
    tch::no_grad(|| lin.forward(&x.flatten(1, -1)).argmax(-1, false))
}

/// Share of the 10 classes that the classifier gives to at least 1% of `x` (mode collapse
/// shows as missing classes).
// Each test crate that includes this module uses some of its helpers.
#[allow(dead_code)]
pub fn coverage(lin: &nn::Linear, x: &Tensor) -> f64 {
    let counts = predict(lin, x).bincount::<Tensor>(None, 10);
    let min = (x.size()[0] as f64 * 0.01).ceil() as i64;
    (0..10).filter(|&c| counts.int64_value(&[c]) >= min).count() as f64 / 10.0
}

pub fn fd(a: &Tensor, b: &Tensor) -> f64 {
    frechet_distance(&a.flatten(1, -1), &b.flatten(1, -1)).unwrap()
}

#[allow(dead_code)]
pub fn train(model: &str, steps: u64, out: &std::path::Path) -> GanRunConfig {
    let ds = genlab_data::open("digits").unwrap();
    let mut cfg = GanRunConfig::from_preset(model, [1, 8, 8], ds.num_classes(), "digits").unwrap();
    // A small DCGAN for 8x8: 2 -> 4 -> 8.
    cfg.gan.stages = 2;
    cfg.gan.latent_dim = 32;
    cfg.gan.g_width = 32;
    cfg.gan.d_width = 32;
    cfg.batch_size = 64;
    cfg.lr_g = 1e-3;
    cfg.lr_d = 1e-3;
    cfg.objective.ema_decay = 0.99;
    tch::manual_seed(0);
    let mut task = GanTask::new(cfg.clone(), Device::Cpu).unwrap();
    let mut loader = Loader::new(ds, LoaderConfig::new(cfg.batch_size, 0, Device::Cpu)).unwrap();
    let h = HarnessConfig {
        progress: false,
        sample_every: 0,
        checkpoint_every: 0,
        log_every: 50,
        ..HarnessConfig::new(out, steps)
    };
    let t0 = std::time::Instant::now();
    run(&mut task, &mut loader, &h).unwrap();
    eprintln!("{model}: {steps} steps in {:.1} s", t0.elapsed().as_secs_f64());
    cfg
}
