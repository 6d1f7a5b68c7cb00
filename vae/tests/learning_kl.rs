//! The KL autoencoder learns real data: a few hundred steps of `kl-f2` on sklearn's 8x8 digits must take the
//! reconstruction MSE far below the mean-image baseline, and the trained run reloads exactly.
use genlab_core::train::{run, HarnessConfig};
use genlab_data::{Dataset, Loader, LoaderConfig};
use genlab_vae::train_kl::{is_kl_run, load, reconstruction_mse, KlAutoencoderTask, KlRunConfig};
use tch::{Device, Kind, Tensor};

fn all_images(ds: &dyn Dataset) -> Tensor {
    let [c, h, w] = ds.shape();
    let px: Vec<u8> = (0..ds.len()).flat_map(|i| ds.get(i).unwrap().image).collect();
    Tensor::from_slice(&px).view([ds.len() as i64, c as i64, h as i64, w as i64]).to_kind(Kind::Float) / 127.5 - 1.0
}

#[test]
fn kl_f2_learns_digits() {
    // Small convolutions run faster on one thread than on two cores shared with other jobs.
    tch::set_num_threads(1);
    let t0 = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let ds = genlab_data::open("digits").unwrap();
    let x = all_images(ds.as_ref());
    let mut run_cfg = KlRunConfig::from_preset("kl-f2", [1, 8, 8], "digits").unwrap();
    run_cfg.batch_size = 32;
    tch::manual_seed(0);
    let mut task = KlAutoencoderTask::new(run_cfg, Device::Cpu).unwrap();
    let before = reconstruction_mse(&task.model, &x).unwrap();
    // Predicting every image as the mean image.
    let baseline = (&x - x.mean_dim(0, true, Kind::Float)).square().mean(Kind::Float).double_value(&[]);
    let mut loader = Loader::new(ds, LoaderConfig::new(32, 0, Device::Cpu)).unwrap();
    let steps = 300;
    let cfg = HarnessConfig {
        progress: false,
        sample_every: 0,
        checkpoint_every: 0,
        ..HarnessConfig::new(tmp.path(), steps)
    };
    run(&mut task, &mut loader, &cfg).unwrap();
    let after = reconstruction_mse(&task.model, &x).unwrap();
    eprintln!(
        "digits reconstruction MSE ([-1, 1] pixels): {before:.4} -> {after:.4} after {steps} steps \
         (mean-image baseline {baseline:.4}), {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(before > baseline, "{before} vs {baseline}");
    assert!(after < 0.05, "reconstruction MSE after {steps} steps is {after:.4}, bound 0.05");

    // The run reloads as a KL autoencoder with identical weights.
    assert!(is_kl_run(tmp.path()).unwrap());
    let (_vs, model, cfg_back) = load(tmp.path(), Device::Cpu).unwrap();
    assert_eq!(cfg_back.model, "kl-f2");
    assert!((reconstruction_mse(&model, &x).unwrap() - after).abs() < 1e-6);
    // The plain VAE loader refuses it clearly, and the monitoring grid shows originals over reconstructions.
    let e = genlab_vae::train::load(tmp.path(), Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("KL autoencoder run"), "{e}");
    let grid = genlab_core::train::TrainTask::samples(&mut task, 16).unwrap();
    assert_eq!(grid.size(), [16, 1, 8, 8]);
    let random = genlab_vae::sample::decode_random_latents(&model, 3).unwrap();
    assert_eq!(random.size(), [3, 1, 8, 8]);
}

#[test]
fn presets_check_sizes() {
    let r = KlRunConfig::from_preset("kl-f4", [1, 28, 28], "mnist").unwrap();
    assert_eq!(r.autoencoder.downsampling_factor(), 4);
    assert_eq!(r.kl_weight, 1e-6);
    let e = KlRunConfig::from_preset("kl-f4", [1, 30, 30], "x").unwrap_err().to_string();
    assert!(e.contains("divisible by 4") && e.contains("30x30"), "{e}");
    let e = KlRunConfig::from_preset("kl-f3", [1, 8, 8], "x").unwrap_err().to_string();
    assert!(e.contains("kl-f2, kl-f4, sd15"), "{e}");
    let sd = KlRunConfig::from_preset("sd15", [3, 64, 64], "x").unwrap();
    assert_eq!(sd.autoencoder.block_out_channels, [128, 256, 512, 512]);
    assert_eq!(sd.autoencoder.scaling_factor, 0.18215);
}
