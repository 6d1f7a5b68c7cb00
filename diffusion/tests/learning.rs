//! The diffusion model learns real data: 400 steps of `unet-tiny` on sklearn's 8x8 digits
//! must take the denoising loss at fixed, never-trained-on noise draws well below its start, and DDIM
//! samples from the EMA weights must be much closer to the digits than noise is, on the Fréchet
//! distance between Gaussians fitted to the 64-dimensional pixel vectors (FID's formula on pixels).
#[path = "common/pixels.rs"]
mod pixels;

use genlab_core::train::{run, HarnessConfig};
use genlab_data::{Loader, LoaderConfig};
use genlab_diffusion::loss::denoising_loss;
use genlab_diffusion::sample::sample;
use genlab_diffusion::train::{load, DiffusionRunConfig, DiffusionTask};
use genlab_diffusion::{Backbone, NoiseSchedule, ScheduleConfig, SchedulerKind};
use pixels::{all_images, frechet_distance};
use tch::{Device, Kind, Tensor};

/// `steps` steps into `dir` with no progress bar, sample grids or intermediate checkpoints.
fn quiet_harness(dir: &std::path::Path, steps: u64) -> HarnessConfig {
    HarnessConfig {
        progress: false,
        sample_every: 0,
        checkpoint_every: 0,
        n_samples: 16,
        ..HarnessConfig::new(dir, steps)
    }
}

/// The mean denoising loss over 128 images at timesteps 50, 150, ..., 950, with noise drawn from
/// a seed the training never uses.
fn held_out_loss(model: &Backbone, schedule: &NoiseSchedule, x: &Tensor) -> f64 {
    tch::manual_seed(12345);
    let x0 = x.narrow(0, 0, 128);
    let noise = x0.randn_like();
    let levels: Vec<i64> = (0..128).map(|i| 50 + 100 * (i % 10)).collect();
    let t = Tensor::from_slice(&levels);
    tch::no_grad(|| {
        denoising_loss(model, schedule, &x0, &noise, &t, None, false).unwrap().mean(Kind::Float).double_value(&[])
    })
}

#[test]
fn unet_tiny_learns_digits() {
    // One intra-op thread: on two cores shared with other jobs, libtorch's spinning OpenMP workers
    // made this test about ten times slower (measured 125 s against 10 s for 200 steps).
    tch::set_num_threads(1);
    let t0 = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let ds = genlab_data::open("digits").unwrap();
    let x = all_images(ds.as_ref());
    let mut run_cfg =
        DiffusionRunConfig::from_preset("unet-tiny", [1, 8, 8], None, ScheduleConfig::default(), "digits").unwrap();
    run_cfg.batch_size = 32;
    run_cfg.lr = 2e-3;
    run_cfg.sample_steps = 20;
    tch::manual_seed(0);
    let mut task = DiffusionTask::new(run_cfg, Device::Cpu).unwrap();
    let schedule = task.schedule.clone();
    let before = held_out_loss(&task.net.model, &schedule, &x);
    let mut loader = Loader::new(ds, LoaderConfig::new(32, 0, Device::Cpu)).unwrap();
    let steps = 400;
    let cfg = quiet_harness(tmp.path(), steps);
    run(&mut task, &mut loader, &cfg).unwrap();
    let train_s = t0.elapsed().as_secs_f64();
    let after = held_out_loss(&task.net.model, &schedule, &x);
    let after_ema = held_out_loss(task.ema_model().unwrap(), &schedule, &x);

    // Samples from the reloaded run (its EMA weights) with 25 DDIM steps.
    let (net, run_back) = load(tmp.path(), Device::Cpu).unwrap();
    assert_eq!(run_back.model, "unet-tiny");
    assert!((held_out_loss(&net.model, &schedule, &x) - after_ema).abs() < 1e-6, "the run reloads its EMA weights");
    tch::manual_seed(1);
    let n = 500;
    let samples = sample(&net.model, &run_back.schedule, SchedulerKind::Ddim, 25, n, None, 1.0).unwrap();
    assert_eq!(samples.size(), [n, 1, 8, 8]);
    let noise = Tensor::randn([n, 1, 8, 8], (Kind::Float, Device::Cpu));
    let perm = Tensor::randperm(x.size()[0], (Kind::Int64, Device::Cpu));
    let half = x.size()[0] / 2;
    let (real_a, real_b) =
        (x.index_select(0, &perm.narrow(0, 0, half)), x.index_select(0, &perm.narrow(0, half, half)));
    let fd_samples = frechet_distance(&samples, &x);
    let fd_noise = frechet_distance(&noise, &x);
    let fd_real = frechet_distance(&real_a, &real_b);
    eprintln!(
        "digits, {steps} steps of unet-tiny ({train_s:.1} s): held-out denoising loss {before:.4} -> {after:.4} \
         (EMA {after_ema:.4}); pixel FD to the digits: samples {fd_samples:.2}, noise {fd_noise:.2}, \
         real half vs half {fd_real:.2}; total {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(before > 0.5, "an untrained network's epsilon loss is near 1 or above, got {before}");
    assert!(after < 0.25 * before, "held-out loss {after:.4} is not below 0.25 x the initial {before:.4}");
    assert!(after_ema < 0.25 * before, "EMA held-out loss {after_ema:.4} vs initial {before:.4}");
    // Measured: samples 4.3, noise 62, real half against half 0.26.
    assert!(fd_samples < 0.2 * fd_noise, "sample FD {fd_samples:.2} is not below 0.2 x the noise FD {fd_noise:.2}");
}

/// `n` Fashion-MNIST images of `split` (`fashion-mnist` or `fashion-mnist:test`), 2x2-average-pooled
/// to 14x14 and rounded back to 8 bits.
fn fashion_14(split: &str, n: usize) -> Vec<u8> {
    let ds = genlab_data::open(split).unwrap();
    let px: Vec<u8> = (0..n).flat_map(|i| ds.get(i).unwrap().image).collect();
    let x = Tensor::from_slice(&px).view([n as i64, 1, 28, 28]).to_kind(Kind::Float);
    let small = x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>).round().to_kind(Kind::Uint8);
    Vec::<u8>::try_from(small.flatten(0, -1)).unwrap()
}

/// What a recipe reached on 14x14 Fashion-MNIST: pixel Fréchet distances to 1,000 test images.
struct RecipeScore {
    fd_dpm20: f64,
    fd_ddim50: f64,
    fd_noise: f64,
    fd_real: f64,
}

/// Train `unet-tiny` on 10,000 14x14 Fashion-MNIST training images for `steps` steps of batch 64 with
/// `run_cfg`, then draw 1,000 samples from its EMA weights with DPM-Solver++ (20 steps) and DDIM (50).
fn recipe_on_fashion_14(mut run_cfg: DiffusionRunConfig, steps: u64) -> RecipeScore {
    tch::set_num_threads(1);
    let t0 = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let train =
        genlab_data::InMemory::new("fashion-mnist-14", [1, 14, 14], fashion_14("fashion-mnist", 10_000), None).unwrap();
    let n = 1000;
    let test = Tensor::from_slice(&fashion_14("fashion-mnist:test", 2 * n))
        .view([2 * n as i64, 1, 14, 14])
        .to_kind(Kind::Float)
        / 127.5
        - 1.0;
    let (reference, real) = (test.narrow(0, 0, n as i64), test.narrow(0, n as i64, n as i64));
    run_cfg.batch_size = 64;
    tch::manual_seed(0);
    let mut task = DiffusionTask::new(run_cfg, Device::Cpu).unwrap();
    let mut loader = Loader::new(std::sync::Arc::new(train), LoaderConfig::new(64, 0, Device::Cpu)).unwrap();
    let cfg = quiet_harness(tmp.path(), steps);
    run(&mut task, &mut loader, &cfg).unwrap();
    let train_s = t0.elapsed().as_secs_f64();
    let schedule = task.run.schedule.clone();
    let ema = task.ema_model().unwrap();
    let fd_of = |kind, k| {
        tch::manual_seed(1);
        let s = sample(ema, &schedule, kind, k, n as i64, None, 1.0).unwrap();
        // As saved: rounded to 8 bits.
        let s = ((s + 1.0) * 127.5).round() / 127.5 - 1.0;
        frechet_distance(&s, &reference)
    };
    let score = RecipeScore {
        fd_dpm20: fd_of(SchedulerKind::DpmPp2m, 20),
        fd_ddim50: fd_of(SchedulerKind::Ddim, 50),
        fd_noise: frechet_distance(&Tensor::randn([n as i64, 1, 14, 14], (Kind::Float, Device::Cpu)), &reference),
        fd_real: frechet_distance(&real, &reference),
    };
    eprintln!(
        "fashion-mnist 14x14, {steps} steps of unet-tiny ({train_s:.0} s): pixel FD to 1000 test images: \
         DPM-Solver++ 20 {:.2}, DDIM 50 {:.2}, noise {:.1}, real test vs test {:.2}; total {:.0} s",
        score.fd_dpm20,
        score.fd_ddim50,
        score.fd_noise,
        score.fd_real,
        t0.elapsed().as_secs_f64()
    );
    score
}

/// The default run `genlab diffusion train` makes for a pixel-space model.
fn default_run() -> DiffusionRunConfig {
    DiffusionRunConfig::from_preset("unet-tiny", [1, 14, 14], None, ScheduleConfig::v_cosine(), "fashion-mnist-14")
        .unwrap()
}

/// The upper bound on the default recipe's pixel FD (both samplers) after 300 steps. Measured: the default
/// 9.2 (DPM-Solver++ 20) and 9.1 (DDIM 50); the recipe before it 166 and 93; real test images 1.0, noise 214.
const FASHION_14_FD_BOUND: f64 = 12.0;
const FASHION_14_STEPS: u64 = 300;

/// The default recipe learns garments at a CI budget, and DDIM with more steps does not fall behind
/// DPM-Solver++.
#[test]
fn default_recipe_learns_fashion_mnist_14() {
    let s = recipe_on_fashion_14(default_run(), FASHION_14_STEPS);
    assert!(
        s.fd_dpm20 < FASHION_14_FD_BOUND,
        "DPM-Solver++ 20 FD {:.2} is not below {FASHION_14_FD_BOUND}",
        s.fd_dpm20
    );
    assert!(s.fd_ddim50 < FASHION_14_FD_BOUND, "DDIM 50 FD {:.2} is not below {FASHION_14_FD_BOUND}", s.fd_ddim50);
    assert!(s.fd_ddim50 < 1.1 * s.fd_dpm20, "DDIM 50 FD {:.2} vs DPM-Solver++ 20 {:.2}", s.fd_ddim50, s.fd_dpm20);
    assert!(
        s.fd_real < 0.2 * FASHION_14_FD_BOUND && s.fd_noise > 10.0 * FASHION_14_FD_BOUND,
        "the measure does not separate real images (FD {:.2}) from noise (FD {:.1})",
        s.fd_real,
        s.fd_noise
    );
}

/// The recipe `genlab diffusion train` used before (linear schedule, epsilon prediction, DDIM re-using the
/// unclipped noise, the EMA's (1+n)/(10+n) warm-up, AdamW 2e-4 without warm-up or gradient clipping,
/// DDIM 50 as its sampler) misses the bound on the same budget. Ignored by default: it only keeps the
/// bound honest (`cargo test -p genlab-diffusion --test learning -- --ignored`).
#[test]
#[ignore]
fn earlier_default_recipe_misses_the_bound() {
    let mut run_cfg =
        DiffusionRunConfig::from_preset("unet-tiny", [1, 14, 14], None, ScheduleConfig::default(), "fashion-mnist-14")
            .unwrap();
    run_cfg.ema_warmup = genlab_core::ema::EmaWarmup::Ratio;
    run_cfg.lr = 2e-4;
    run_cfg.lr_warmup_steps = 0;
    run_cfg.max_grad_norm = None;
    let s = recipe_on_fashion_14(run_cfg, FASHION_14_STEPS);
    assert!(
        s.fd_ddim50 > FASHION_14_FD_BOUND,
        "the earlier default's DDIM 50 FD {:.2} now meets the bound",
        s.fd_ddim50
    );
}
