//! A short StyleGAN2 run on the digits through the harness: every phase (both regularisers
//! included) runs, an interrupted and resumed run ends with bit-identical weights, and the
//! run loads back (a run of another kind is refused). Its own test binary: libtorch's random
//! generator is global, so tests seeding it in parallel threads would interfere.
use genlab_core::train::{run, HarnessConfig};
use genlab_data::{Loader, LoaderConfig};
use genlab_gan::stylegan2::tools::sample_seeds;
use genlab_gan::stylegan2::train::{load, StyleGan2RunConfig, StyleGan2Task};
use genlab_gan::stylegan2::NoiseMode;
use tch::{Device, Kind, Tensor};

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn digits_run(steps: u64, out: &std::path::Path, resume: bool) -> StyleGan2RunConfig {
    let ds = genlab_data::open("digits").unwrap();
    let mut cfg = StyleGan2RunConfig::from_preset("stylegan2", [1, 8, 8], "digits").unwrap();
    cfg.net.z_dim = 16;
    cfg.net.w_dim = 16;
    cfg.net.channel_base = 128;
    cfg.net.channel_max = 16;
    cfg.batch_size = 8;
    // Every regulariser runs within the few steps.
    cfg.d_reg_interval = 2;
    cfg.g_reg_interval = 2;
    tch::manual_seed(0);
    let mut task = StyleGan2Task::new(cfg.clone(), Device::Cpu).unwrap();
    let mut loader = Loader::new(ds, LoaderConfig::new(cfg.batch_size, 0, Device::Cpu)).unwrap();
    let h = HarnessConfig {
        progress: false,
        sample_every: 3,
        checkpoint_every: 3,
        log_every: 1,
        n_samples: 4,
        resume,
        stop: genlab_core::train::StopToken::new(),
        ..HarnessConfig::new(out, steps)
    };
    run(&mut task, &mut loader, &h).unwrap();
    cfg
}

#[test]
fn trains_resumes_exactly_and_loads() {
    tch::set_num_threads(1);
    let straight = tempfile::tempdir().unwrap();
    let cfg = digits_run(6, straight.path(), false);
    let resumed = tempfile::tempdir().unwrap();
    digits_run(3, resumed.path(), false);
    digits_run(6, resumed.path(), true);
    let (_va, a, back) = load(straight.path(), Device::Cpu).unwrap();
    let (_vb, b, _) = load(resumed.path(), Device::Cpu).unwrap();
    assert_eq!(back, cfg);
    assert!(a.mapping.w_avg.abs().sum(Kind::Float).double_value(&[]) > 0.0, "w_avg was tracked");
    let (va, vb) = (_va.variables(), _vb.variables());
    for (name, t) in &va {
        assert_eq!(max_diff(t, &vb[name]), 0.0, "{name} differs after resume");
    }
    let img = sample_seeds(&b, &[1, 2], 0.7, NoiseMode::Const).unwrap();
    assert_eq!(img.size(), [2, 1, 8, 8]);
    assert!(img.isfinite().all().int64_value(&[]) == 1);

    // A run of another GAN kind is refused with what it is.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("config.json"), r#"{"family": "gan", "model": "dcgan"}"#).unwrap();
    std::fs::write(other.path().join("state.json"), r#"{"step": 1}"#).unwrap();
    let err = load(other.path(), Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("a `gan` run, not a `gan/stylegan2` run") && err.contains("--model stylegan2"), "{err}");
    std::fs::write(other.path().join("config.json"), r#"{"family": "vae"}"#).unwrap();
    let err = load(other.path(), Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("`vae` family"), "{err}");
}
