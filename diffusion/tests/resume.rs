//! Exact resume of a diffusion run, EMA included. In a binary of its own: libtorch's random
//! generator is global, and tests running beside it in other threads would draw from it.
use genlab_core::train::{run, HarnessConfig, StopToken, TrainTask};
use genlab_data::{Loader, LoaderConfig};
use genlab_diffusion::train::{DiffusionRunConfig, DiffusionTask};
use tch::{Device, Tensor};

fn harness(out: &std::path::Path, steps: u64) -> HarnessConfig {
    HarnessConfig {
        progress: false,
        sample_every: 0,
        checkpoint_every: 3,
        stop: StopToken::new(),
        ..HarnessConfig::new(out, steps)
    }
}

fn train(cfg: &DiffusionRunConfig, h: &HarnessConfig) -> DiffusionTask {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let mut task = DiffusionTask::new(cfg.clone(), Device::Cpu).unwrap();
    let ds = genlab_data::open("digits").unwrap();
    let mut loader = Loader::new(ds, LoaderConfig::new(cfg.batch_size, 0, Device::Cpu)).unwrap();
    run(&mut task, &mut loader, h).unwrap();
    task
}

#[test]
fn resume_is_exact_including_the_ema_warm_up() {
    let mut cfg = DiffusionRunConfig::from_preset("unet-tiny", [1, 8, 8], None, Default::default(), "digits").unwrap();
    cfg.batch_size = 16;
    let a = tempfile::tempdir().unwrap();
    let straight = train(&cfg, &harness(a.path(), 8));
    let b = tempfile::tempdir().unwrap();
    let _ = train(&cfg, &harness(b.path(), 5));
    let resumed = train(&cfg, &HarnessConfig { resume: true, ..harness(b.path(), 8) });
    let (ga, gb) = (TrainTask::checkpoint_groups(&straight), TrainTask::checkpoint_groups(&resumed));
    for (g, tensors) in &ga {
        let other: std::collections::HashMap<&str, &Tensor> = gb[g].iter().map(|(n, t)| (n.as_str(), t)).collect();
        for (n, t) in tensors {
            assert!(t.equal(other[n.as_str()]), "{g}/{n} differs after resume");
        }
    }
    assert_eq!(straight.ema.updates(), resumed.ema.updates());
}
