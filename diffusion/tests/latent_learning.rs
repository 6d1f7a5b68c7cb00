//! Latent diffusion learns real data (Rombach et al. 2022, arXiv 2112.10752): a `kl-f2` autoencoder
//! trained for 200 steps on sklearn's 8x8 digits, then 300 steps of `unet-tiny` on its 4x4x4 latents.
//! The estimated scale must give held-out latents unit standard deviation, the denoising loss at fixed,
//! never-trained-on noise draws must fall well below its start and below a stated value, and decoded
//! DDIM samples must be much closer to the digits than decoded noise latents, on the Fréchet distance
//! between Gaussians fitted to the 64-dimensional pixel vectors (FID's formula on pixels).
#[path = "common/pixels.rs"]
mod pixels;

use genlab_core::train::{run, HarnessConfig};
use genlab_data::{Loader, LoaderConfig};
use genlab_diffusion::latent::{self, LatentOptions};
use genlab_diffusion::load::load_run;
use genlab_diffusion::loss::denoising_loss;
use genlab_diffusion::train::DiffusionTask;
use genlab_diffusion::train::{install_autoencoder, latent_run_config};
use genlab_diffusion::{Backbone, NoiseSchedule, ScheduleConfig, SchedulerKind};
use genlab_vae::train_kl::{KlAutoencoderTask, KlRunConfig};
use pixels::{all_images, frechet_distance};
use tch::{Device, Kind, Tensor};

/// The mean denoising loss over 128 latents at timesteps 50, 150, ..., 950, with noise drawn from a
/// seed the training never uses.
fn held_out_loss(model: &Backbone, schedule: &NoiseSchedule, z: &Tensor) -> f64 {
    tch::manual_seed(12345);
    let z0 = z.narrow(0, 0, 128);
    let noise = z0.randn_like();
    let levels: Vec<i64> = (0..128).map(|i| 50 + 100 * (i % 10)).collect();
    let t = Tensor::from_slice(&levels);
    tch::no_grad(|| {
        denoising_loss(model, schedule, &z0, &noise, &t, None, false).unwrap().mean(Kind::Float).double_value(&[])
    })
}

const AE_STEPS: u64 = 200;
const LDM_STEPS: u64 = 300;

#[test]
fn latent_unet_tiny_learns_digits() {
    // One intra-op thread: small convolutions on two shared cores are much slower with more.
    tch::set_num_threads(1);
    let t0 = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let ds = genlab_data::open("digits").unwrap();
    let x = all_images(ds.as_ref());
    let quiet = |out: &std::path::Path, steps| HarnessConfig {
        progress: false,
        sample_every: 0,
        checkpoint_every: 0,
        n_samples: 16,
        ..HarnessConfig::new(out, steps)
    };

    // The autoencoder.
    let ae_dir = tmp.path().join("kl-f2");
    let mut ae_cfg = KlRunConfig::from_preset("kl-f2", [1, 8, 8], "digits").unwrap();
    ae_cfg.batch_size = 32;
    tch::manual_seed(0);
    let mut ae_task = KlAutoencoderTask::new(ae_cfg, Device::Cpu).unwrap();
    let mut loader = Loader::new(ds.clone(), LoaderConfig::new(32, 0, Device::Cpu)).unwrap();
    run(&mut ae_task, &mut loader, &quiet(&ae_dir, AE_STEPS)).unwrap();
    drop(ae_task);
    let ae_s = t0.elapsed().as_secs_f64();

    // The latent run.
    let ldm_dir = tmp.path().join("ldm");
    let opts = LatentOptions { seed: 0, ..LatentOptions::default() };
    // The CLI's default for latent runs: Stable Diffusion 2's scaled-linear betas and v-prediction.
    let schedule_cfg = ScheduleConfig::stable_diffusion_v2();
    let mut run_cfg =
        latent_run_config("unet-tiny", &ae_dir, &ds, None, schedule_cfg.clone(), "digits", &opts, Device::Cpu).unwrap();
    run_cfg.batch_size = 32;
    run_cfg.lr = 2e-3;
    run_cfg.sample_steps = 20;
    let latent_cfg = run_cfg.latent.clone().unwrap();
    assert_eq!(latent_cfg.latent_shape, [4, 4, 4]);
    assert_eq!(run_cfg.backbone.sample_shape()[0], 4);
    assert_eq!(run_cfg.backbone.sample_shape()[1..], [4, 4]);
    assert!(!run_cfg.schedule.clip_sample, "latents are not clipped to [-1, 1]");
    install_autoencoder(&run_cfg, &ldm_dir).unwrap();
    tch::manual_seed(0);
    let mut task = DiffusionTask::for_run(run_cfg, &ldm_dir, Device::Cpu).unwrap();
    let schedule = task.schedule.clone();
    let ae = task.autoencoder.as_ref().unwrap();

    // The scale: latents of all 1797 digits (posterior samples, as training draws them) have unit
    // standard deviation, though the estimate saw only 4 batches of 64; unscaled, they do not.
    tch::manual_seed(7);
    let z = ae.encode(&x, true).unwrap();
    let z_std = z.std(true).double_value(&[]);
    let raw_std = z_std / latent_cfg.scale;
    assert!((z_std - 1.0).abs() < 0.1, "scaled latents have std {z_std:.3}, want 1 +- 0.1");
    assert!(!(0.67..1.5).contains(&raw_std), "unscaled std {raw_std:.3} is already close to 1: the check is empty");

    let before = held_out_loss(&task.net.model, &schedule, &z);
    let steps = LDM_STEPS;
    let mut loader = Loader::new(ds, LoaderConfig::new(32, 0, Device::Cpu)).unwrap();
    run(&mut task, &mut loader, &HarnessConfig { log_every: 1, ..quiet(&ldm_dir, steps) }).unwrap();
    let train_s = t0.elapsed().as_secs_f64() - ae_s;
    let after_ema = held_out_loss(task.ema_model().unwrap(), &schedule, &z);
    // The training loss (eps MSE per batch), averaged over the last 50 steps.
    let text = std::fs::read_to_string(ldm_dir.join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> =
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap()).collect();
    assert_eq!(losses.len(), steps as usize);
    let first_loss = losses[..10].iter().sum::<f64>() / 10.0;
    let last_loss = losses[losses.len() - 50..].iter().sum::<f64>() / 50.0;

    // Decoded samples of the reloaded run (EMA weights, its own autoencoder copy), 25 DDIM steps.
    let (net, run_back, ae) = load_run(&ldm_dir, Device::Cpu).unwrap();
    let ae = ae.unwrap();
    assert_eq!(run_back.latent.as_ref(), Some(&latent_cfg));
    tch::manual_seed(1);
    let n = 500;
    let samples = latent::sample(&net.model, &ae, &run_back.schedule, SchedulerKind::Ddim, 25, n, None, 1.0).unwrap();
    assert_eq!(samples.size(), [n, 1, 8, 8]);
    assert!(samples.min().double_value(&[]) >= -1.0 && samples.max().double_value(&[]) <= 1.0);
    let noise_decoded = ae.decode(&Tensor::randn([n, 4, 4, 4], (Kind::Float, Device::Cpu))).unwrap();
    let recon = ae.decode(&ae.encode(&x, false).unwrap()).unwrap();
    let fd_samples = frechet_distance(&samples, &x);
    let fd_noise = frechet_distance(&noise_decoded, &x);
    let fd_recon = frechet_distance(&recon, &x);
    eprintln!(
        "digits: kl-f2 {AE_STEPS} steps ({ae_s:.1} s), latent scale {:.4} (unscaled std {raw_std:.3}, scaled {z_std:.3}); \
         unet-tiny {steps} steps ({train_s:.1} s): training loss {first_loss:.4} (first 10) -> {last_loss:.4} \
         (last 50), held-out loss {before:.4} -> {after_ema:.4} (EMA); pixel FD to the digits: decoded samples \
         {fd_samples:.2}, decoded noise latents {fd_noise:.2}, reconstructions {fd_recon:.2}; total {:.1} s",
        latent_cfg.scale,
        t0.elapsed().as_secs_f64()
    );
    // Measured (one thread): training loss 0.90 -> 0.42, held-out 1.59 -> 0.41, FD samples 2.6, decoded
    // noise 24.8, reconstructions 0.75.
    assert!(before > 0.5, "an untrained network's v-prediction loss is near 1 or above, got {before}");
    assert!(last_loss < 0.55, "training loss over the last 50 steps is {last_loss:.4}, bound 0.55");
    assert!(after_ema < 0.4 * before, "EMA held-out loss {after_ema:.4} is not below 0.4 x the initial {before:.4}");
    assert!(
        fd_samples < 0.25 * fd_noise,
        "decoded-sample FD {fd_samples:.2} is not below 0.25 x the decoded-noise FD {fd_noise:.2}"
    );
}
