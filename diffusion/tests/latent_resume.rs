//! Exact resume of a latent diffusion run: the posterior samples drawn while encoding each batch come
//! from the harness's per-step seed, so an interrupted and resumed run ends with the same weights as an
//! uninterrupted one. In a binary of its own: libtorch's random generator is global.
use std::path::Path;

use genlab_core::train::{run, HarnessConfig, StopToken, TrainTask};
use genlab_data::{Loader, LoaderConfig};
use genlab_diffusion::latent::LatentOptions;
use genlab_diffusion::train::{install_autoencoder, latent_run_config, DiffusionRunConfig, DiffusionTask};
use genlab_diffusion::ScheduleConfig;
use genlab_vae::train_kl::{KlAutoencoderTask, KlRunConfig};
use tch::{Device, Tensor};

fn harness(out: &Path, steps: u64) -> HarnessConfig {
    HarnessConfig {
        progress: false,
        sample_every: 0,
        checkpoint_every: 3,
        stop: StopToken::new(),
        ..HarnessConfig::new(out, steps)
    }
}

fn train(cfg: &DiffusionRunConfig, h: &HarnessConfig) -> DiffusionTask {
    tch::manual_seed(0);
    let mut task = DiffusionTask::for_run(cfg.clone(), &h.out, Device::Cpu).unwrap();
    let ds = genlab_data::open("digits").unwrap();
    let mut loader = Loader::new(ds, LoaderConfig::new(cfg.batch_size, 0, Device::Cpu)).unwrap();
    run(&mut task, &mut loader, h).unwrap();
    task
}

#[test]
fn latent_resume_is_exact() {
    tch::set_num_threads(1);
    let tmp = tempfile::tempdir().unwrap();
    let ae = tmp.path().join("ae");
    let mut ae_cfg = KlRunConfig::from_preset("kl-f2", [1, 8, 8], "digits").unwrap();
    ae_cfg.batch_size = 16;
    tch::manual_seed(0);
    let mut ae_task = KlAutoencoderTask::new(ae_cfg, Device::Cpu).unwrap();
    let ds = genlab_data::open("digits").unwrap();
    let mut loader = Loader::new(ds.clone(), LoaderConfig::new(16, 0, Device::Cpu)).unwrap();
    run(&mut ae_task, &mut loader, &harness(&ae, 2)).unwrap();

    let schedule = ScheduleConfig::stable_diffusion_v2();
    let opts = LatentOptions::default();
    let mut cfg = latent_run_config("unet-tiny", &ae, &ds, None, schedule, "digits", &opts, Device::Cpu).unwrap();
    cfg.batch_size = 16;
    assert!(cfg.latent.as_ref().unwrap().sample_posterior, "the check covers the posterior's randomness");
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("resumed"));
    install_autoencoder(&cfg, &a).unwrap();
    install_autoencoder(&cfg, &b).unwrap();
    let straight = train(&cfg, &harness(&a, 6));
    let _ = train(&cfg, &harness(&b, 3));
    let resumed = train(&cfg, &HarnessConfig { resume: true, ..harness(&b, 6) });
    let (ga, gb) = (TrainTask::checkpoint_groups(&straight), TrainTask::checkpoint_groups(&resumed));
    assert_eq!(ga.keys().collect::<Vec<_>>(), ["ema", "model", "optim"], "the frozen autoencoder is not checkpointed");
    for (g, tensors) in &ga {
        let other: std::collections::HashMap<&str, &Tensor> = gb[g].iter().map(|(n, t)| (n.as_str(), t)).collect();
        for (n, t) in tensors {
            assert!(t.equal(other[n.as_str()]), "{g}/{n} differs after resume");
        }
    }
}
