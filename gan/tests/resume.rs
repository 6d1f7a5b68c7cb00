//! Exact resume of a GAN run. In a binary of its own: libtorch's random generator is
//! global, and tests running beside it in other threads would draw from it.
use genlab_core::train::{run, HarnessConfig, StopToken, TrainTask};
use genlab_data::{Loader, LoaderConfig};
use genlab_gan::sample::sample;
use genlab_gan::train::{load, GanRunConfig, GanTask};
use tch::{Device, Tensor};

fn harness(out: &std::path::Path, steps: u64) -> HarnessConfig {
    HarnessConfig {
        progress: false,
        sample_every: 0,
        checkpoint_every: 2,
        stop: StopToken::new(),
        ..HarnessConfig::new(out, steps)
    }
}

fn train(cfg: &GanRunConfig, h: &HarnessConfig) -> GanTask {
    // One intra-op thread: on busy cores OpenMP's waiting threads make this tiny run 50x slower.
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let mut task = GanTask::new(cfg.clone(), Device::Cpu).unwrap();
    let ds = genlab_data::open("digits").unwrap();
    let mut loader = Loader::new(ds, LoaderConfig::new(cfg.batch_size, 0, Device::Cpu)).unwrap();
    run(&mut task, &mut loader, h).unwrap();
    task
}

#[test]
fn resume_is_exact_and_checkpoints_hold_every_group() {
    // wgan-gp: n_critic slices, the double-backward penalty, LayerNorm critic, EMA warm-up.
    let mut cfg = GanRunConfig::from_preset("wgan-gp", [1, 8, 8], None, "digits").unwrap();
    cfg.gan.g_width = 8;
    cfg.gan.d_width = 8;
    cfg.gan.latent_dim = 16;
    cfg.batch_size = 5 * 8;
    let a = tempfile::tempdir().unwrap();
    let straight = train(&cfg, &harness(a.path(), 4));
    let b = tempfile::tempdir().unwrap();
    let _ = train(&cfg, &harness(b.path(), 2));
    let resumed = train(&cfg, &HarnessConfig { resume: true, ..harness(b.path(), 4) });
    let groups = TrainTask::checkpoint_groups(&straight);
    let groups_b = TrainTask::checkpoint_groups(&resumed);
    assert_eq!(groups.keys().collect::<Vec<_>>(), ["discriminator", "ema", "generator", "optim_d", "optim_g"]);
    for (g, tensors) in &groups {
        let other: std::collections::HashMap<&str, &Tensor> =
            groups_b[g].iter().map(|(n, t)| (n.as_str(), t)).collect();
        for (n, t) in tensors {
            assert!(t.equal(other[n.as_str()]), "{g}/{n} differs after resume");
        }
    }
    let ck = genlab_core::train::open_checkpoint(b.path()).unwrap();
    assert_eq!(ck.config["family"], "gan");
    for g in ["generator", "discriminator", "ema", "optim_g", "optim_d"] {
        assert!(ck.has_group(g), "{g}");
    }
    // Loading gives the EMA generator.
    let (_vs, g, run_cfg) = load(b.path(), Device::Cpu).unwrap();
    assert_eq!(run_cfg.model, "wgan-gp");
    assert_eq!(sample(&g, 3, None).unwrap().size(), [3, 1, 8, 8]);
}
