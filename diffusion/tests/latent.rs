//! Latent diffusion runs (Rombach et al. 2022, arXiv 2112.10752) on briefly trained KL autoencoders:
//! the scale estimate, a run directory that does not need the original autoencoder, decoded sampling,
//! image-to-image and inpainting, and clear errors for bad autoencoders and bad resumes.
use std::path::Path;
use std::sync::Arc;

use genlab_core::train::{run, HarnessConfig, StopToken, TrainTask};
use genlab_data::{Dataset, Loader, LoaderConfig};
use genlab_diffusion::latent::{self, estimate_scale, LatentAutoencoder, LatentOptions};
use genlab_diffusion::load::load_run;
use genlab_diffusion::sample::RePaint;
use genlab_diffusion::train::{install_autoencoder, latent_run_config};
use genlab_diffusion::train::{DiffusionRunConfig, DiffusionTask};
use genlab_diffusion::{DiffusionError, ScheduleConfig, SchedulerKind};
use genlab_vae::train_kl::{KlAutoencoderTask, KlRunConfig};
use tch::{Device, Kind, Tensor};

fn harness(out: &Path, steps: u64) -> HarnessConfig {
    HarnessConfig {
        progress: false,
        sample_every: 0,
        checkpoint_every: 0,
        n_samples: 4,
        stop: StopToken::new(),
        ..HarnessConfig::new(out, steps)
    }
}

fn digits() -> Arc<dyn Dataset> {
    genlab_data::open("digits").unwrap()
}

/// A `kl-f2` autoencoder run on the digits, trained for `steps` steps.
fn train_autoencoder(dir: &Path, steps: u64) {
    tch::set_num_threads(1);
    let mut cfg = KlRunConfig::from_preset("kl-f2", [1, 8, 8], "digits").unwrap();
    cfg.batch_size = 16;
    tch::manual_seed(0);
    let mut task = KlAutoencoderTask::new(cfg, Device::Cpu).unwrap();
    let mut loader = Loader::new(digits(), LoaderConfig::new(16, 0, Device::Cpu)).unwrap();
    run(&mut task, &mut loader, &harness(dir, steps)).unwrap();
}

fn latent_cfg(autoencoder: &Path, opts: &LatentOptions) -> DiffusionRunConfig {
    let ds = digits();
    let schedule = ScheduleConfig::stable_diffusion_v2();
    let mut cfg =
        latent_run_config("unet-tiny", autoencoder, &ds, None, schedule, "digits", opts, Device::Cpu).unwrap();
    cfg.batch_size = 16;
    cfg.sample_steps = 4;
    cfg
}

fn train_latent(cfg: &DiffusionRunConfig, dir: &Path, steps: u64, resume: bool) -> DiffusionTask {
    tch::manual_seed(0);
    let mut task = DiffusionTask::for_run(cfg.clone(), dir, Device::Cpu).unwrap();
    let mut loader = Loader::new(digits(), LoaderConfig::new(cfg.batch_size, 0, Device::Cpu)).unwrap();
    run(&mut task, &mut loader, &HarnessConfig { resume, ..harness(dir, steps) }).unwrap();
    task
}

#[test]
fn the_estimated_scale_gives_latents_unit_std() {
    tch::set_num_threads(1);
    let ds = digits();
    let [c, h, w] = ds.shape();
    let cfg = genlab_vae::AutoencoderKLConfig::small([c as i64, h as i64, w as i64], vec![32, 64]);
    tch::manual_seed(3);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let ae = genlab_vae::AutoencoderKL::new(vs.root(), cfg).unwrap();
    // Widen the latents so that their spread is far from 1 before scaling.
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.starts_with("quant_conv") {
                let _ = t.f_mul_(&Tensor::from(6.0)).unwrap();
            }
        }
    });
    let mut loader = Loader::new(ds.clone(), LoaderConfig::new(64, 0, Device::Cpu)).unwrap();
    // The mode: deterministic, so the check is about the scale alone.
    let scale = estimate_scale(&ae, &mut loader, 4, false).unwrap();
    // All 1797 digits, of which the estimate saw 256.
    let px: Vec<u8> = (0..ds.len()).flat_map(|i| ds.get(i).unwrap().image).collect();
    let x = Tensor::from_slice(&px).view([ds.len() as i64, 1, 8, 8]).to_kind(Kind::Float) / 127.5 - 1.0;
    let z = latent::encode_unscaled(&ae, &x, false).unwrap();
    let raw = z.std(true).double_value(&[]);
    let scaled = (&z * scale).std(true).double_value(&[]);
    eprintln!("scale {scale:.4}: latent std {raw:.4} -> {scaled:.4}");
    assert!(!(0.5..2.0).contains(&raw), "the unscaled std {raw} is already near 1: the check would be empty");
    assert!((scaled - 1.0).abs() < 0.05, "scale * latents has std {scaled:.4}, want 1 +- 0.05");
    assert!((scale * raw - 1.0).abs() < 0.05);
    let e = estimate_scale(&ae, &mut loader, 0, false).unwrap_err().to_string();
    assert!(e.contains("at least one batch"), "{e}");
}

#[test]
fn a_latent_run_is_self_contained() {
    let tmp = tempfile::tempdir().unwrap();
    let ae_dir = tmp.path().join("ae");
    train_autoencoder(&ae_dir, 3);
    let ldm = tmp.path().join("ldm");
    let cfg = latent_cfg(&ae_dir, &LatentOptions::default());
    let l = cfg.latent.clone().unwrap();
    assert_eq!(l.autoencoder_source, std::fs::canonicalize(&ae_dir).unwrap());
    assert_eq!((l.autoencoder_model.as_str(), l.image_shape, l.latent_shape), ("kl-f2", [1, 8, 8], [4, 4, 4]));
    assert!(l.scale_estimated && l.sample_posterior);
    let copy = install_autoencoder(&cfg, &ldm).unwrap();
    assert_eq!(copy, ldm.join(latent::AUTOENCODER_DIR));
    let mut task = train_latent(&cfg, &ldm, 3, false);
    // The monitoring grid is decoded images.
    let grid = tch::no_grad(|| task.samples(4)).unwrap();
    assert_eq!(grid.size(), [4, 1, 8, 8]);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ldm.join("config.json")).unwrap()).unwrap();
    assert_eq!(written["latent"]["autoencoder_source"].as_str(), l.autoencoder_source.to_str());
    assert_eq!(written["latent"]["scale"].as_f64(), Some(l.scale));

    // The original autoencoder run goes away.
    let moved = tmp.path().join("ae-moved");
    std::fs::rename(&ae_dir, &moved).unwrap();
    let (net, run_back, ae) = load_run(&ldm, Device::Cpu).unwrap();
    let ae = ae.unwrap();
    assert_eq!(run_back.latent.as_ref(), Some(&l));
    tch::manual_seed(5);
    for kind in [SchedulerKind::Ddim, SchedulerKind::DpmPp2m, SchedulerKind::EulerAncestral] {
        let s = latent::sample(&net.model, &ae, &run_back.schedule, kind, 4, 3, None, 1.0).unwrap();
        assert_eq!(s.size(), [3, 1, 8, 8]);
        assert!(s.min().double_value(&[]) >= -1.0 && s.max().double_value(&[]) <= 1.0);
    }
    // A checkpoint folder of the run loads too.
    let ck = genlab_core::checkpoint::latest_checkpoint(&ldm.join("checkpoints")).unwrap();
    assert!(load_run(&ck, Device::Cpu).unwrap().2.is_some());

    // Image-to-image and inpainting in latent space.
    let img = Tensor::rand([2, 1, 8, 8], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let out =
        latent::img2img(&net.model, &ae, &run_back.schedule, SchedulerKind::Ddim, 10, &img, 0.5, None, 1.0).unwrap();
    assert_eq!(out.size(), [2, 1, 8, 8]);
    let mask = Tensor::ones([1, 1, 8, 8], (Kind::Float, Device::Cpu));
    let _ = mask.narrow(3, 3, 3).fill_(0.0);
    let repaint = RePaint { jump_length: 2, resamplings: 2 };
    let filled = latent::inpaint(&net.model, &ae, &run_back.schedule, &img, &mask, 6, repaint, None, 1.0).unwrap();
    assert_eq!(filled.size(), [2, 1, 8, 8]);
    let known = mask.expand_as(&img).gt(0.5);
    assert!(filled.masked_select(&known).equal(&img.masked_select(&known)), "known pixels must be exact");
    let unknown = known.logical_not();
    let changed = (filled.masked_select(&unknown) - img.masked_select(&unknown)).abs().max().double_value(&[]);
    assert!(changed > 1e-3, "the unknown region was not generated");
    let e = latent::img2img(
        &net.model,
        &ae,
        &run_back.schedule,
        SchedulerKind::Ddim,
        10,
        &img.narrow(3, 0, 7),
        0.5,
        None,
        1.0,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("[2, 1, 8, 7]") && e.contains("multiples of 2"), "{e}");
    let e = latent::inpaint(&net.model, &ae, &run_back.schedule, &img, &mask.narrow(2, 0, 4), 6, repaint, None, 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("mask"), "{e}");

    // Resume works without the original, keeps the scale, and refuses another autoencoder path.
    let cfg_back = run_back.clone();
    assert!(cfg_back.check_resume(None, None).is_ok());
    assert!(cfg_back.check_resume(Some(&ae_dir), Some(l.scale)).is_ok(), "the same (now missing) path is accepted");
    let e = cfg_back.check_resume(Some(&moved), None).unwrap_err().to_string();
    assert!(e.contains("ae-moved") && e.contains(&l.autoencoder_source.display().to_string()), "{e}");
    let e = cfg_back.check_resume(None, Some(l.scale * 2.0)).unwrap_err().to_string();
    assert!(e.contains("latent scale"), "{e}");
    let resumed = train_latent(&cfg_back, &ldm, 5, true);
    assert_eq!(resumed.opt.steps_taken(), 5);
    let e = install_autoencoder(&cfg_back, &ldm).unwrap_err().to_string();
    assert!(e.contains("already holds a checkpoint") && e.contains("--resume"), "{e}");

    // Without its copy, a latent run says what is missing.
    std::fs::remove_dir_all(ldm.join(latent::AUTOENCODER_DIR)).unwrap();
    let e = load_run(&ldm, Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("autoencoder") && e.contains("missing") && e.contains("ae"), "{e}");
}

#[test]
fn bad_autoencoders_and_options_are_clear_errors() {
    tch::set_num_threads(1);
    let tmp = tempfile::tempdir().unwrap();
    let ds = digits();
    let open = |p: &Path, ds: &Arc<dyn Dataset>, data: &str, opts: &LatentOptions| {
        latent_run_config("unet-tiny", p, ds, None, ScheduleConfig::default(), data, opts, Device::Cpu)
    };
    let defaults = LatentOptions::default();
    // A missing directory.
    let missing = tmp.path().join("no-such-run");
    let e = open(&missing, &ds, "digits", &defaults).unwrap_err();
    assert!(matches!(e, DiffusionError::Autoencoder { .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("no-such-run") && e.contains("no such autoencoder run"), "{e}");
    // A plain VAE run.
    let vae = tmp.path().join("vae");
    let vae_cfg = genlab_vae::train::VaeRunConfig::from_preset("mlp", [1, 8, 8], None, "digits").unwrap();
    let mut task = genlab_vae::train::VaeTask::new(vae_cfg, Device::Cpu).unwrap();
    let mut loader = Loader::new(ds.clone(), LoaderConfig::new(16, 0, Device::Cpu)).unwrap();
    run(&mut task, &mut loader, &harness(&vae, 1)).unwrap();
    let e = open(&vae, &ds, "digits", &defaults).unwrap_err().to_string();
    assert!(e.contains("vae") && e.contains("plain VAE run") && e.contains("autoencoder-kl"), "{e}");
    // A pixel-space diffusion run.
    let pix = tmp.path().join("pixel-ddpm");
    let pix_cfg =
        DiffusionRunConfig::from_preset("unet-tiny", [1, 8, 8], None, ScheduleConfig::default(), "digits").unwrap();
    let mut task = DiffusionTask::new(pix_cfg.clone(), Device::Cpu).unwrap();
    run(&mut task, &mut loader, &harness(&pix, 1)).unwrap();
    let e = open(&pix, &ds, "digits", &defaults).unwrap_err().to_string();
    assert!(e.contains("pixel-ddpm") && e.contains("`diffusion` run"), "{e}");
    let e = pix_cfg.check_resume(Some(&pix), None).unwrap_err().to_string();
    assert!(e.contains("pixel space"), "{e}");

    // An autoencoder of another image shape than the data's.
    let ae = tmp.path().join("ae");
    train_autoencoder(&ae, 1);
    let mnist = genlab_data::open("mnist5k").unwrap();
    let e = open(&ae, &mnist, "mnist5k", &defaults).unwrap_err();
    assert!(matches!(e, DiffusionError::AutoencoderShape { .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("[1, 8, 8]") && e.contains("[1, 28, 28]") && e.contains("mnist5k"), "{e}");

    // A given scale is used as is; a bad one is an error.
    let given = open(&ae, &ds, "digits", &LatentOptions { scale: Some(0.25), ..defaults.clone() }).unwrap();
    let l = given.latent.as_ref().unwrap();
    assert_eq!((l.scale, l.scale_estimated), (0.25, false));
    assert!(!given.schedule.clip_sample);
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = open(&ae, &ds, "digits", &LatentOptions { scale: Some(bad), ..defaults.clone() }).unwrap_err();
        assert!(e.to_string().contains("latent scale must be positive"), "{bad}: {e}");
    }
    // A latent configuration needs its autoencoder; a pixel one takes none.
    let e = DiffusionTask::new(given.clone(), Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("needs its autoencoder"), "{e}");
    let (vs, model, _) = latent::open_autoencoder(&ae, Device::Cpu).unwrap();
    let lae = LatentAutoencoder::new(vs, model, l.clone()).unwrap();
    let e = DiffusionTask::with_autoencoder(pix_cfg, Some(lae), Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("pixel-space"), "{e}");
    // The run directory must not hold another run.
    let e = install_autoencoder(&given, &pix).unwrap_err().to_string();
    assert!(e.contains("already holds a checkpoint"), "{e}");
}
