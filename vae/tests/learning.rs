//! The VAE learns real data: a few hundred steps on sklearn's digits must take the
//! negative ELBO well below where it starts, and the trained run reloads exactly.
use genlab_core::train::{run, HarnessConfig};
use genlab_data::{Dataset, Loader, LoaderConfig};
use genlab_vae::train::{elbo_terms, load, VaeRunConfig, VaeTask};
use tch::{Device, Kind, Tensor};

fn all_images(ds: &dyn Dataset) -> Tensor {
    let [c, h, w] = ds.shape();
    let px: Vec<u8> = (0..ds.len()).flat_map(|i| ds.get(i).unwrap().image).collect();
    Tensor::from_slice(&px).view([ds.len() as i64, c as i64, h as i64, w as i64]).to_kind(Kind::Float) / 127.5 - 1.0
}

fn mean_neg_elbo(task_model: &genlab_vae::Vae, x: &Tensor) -> f64 {
    tch::manual_seed(0);
    tch::no_grad(|| elbo_terms(task_model, x, None).unwrap().0.neg_elbo().mean(Kind::Float).double_value(&[]))
}

#[test]
fn mlp_vae_learns_digits() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = genlab_data::open("digits").unwrap();
    let x = all_images(ds.as_ref());
    let mut run_cfg = VaeRunConfig::from_preset("mlp", [1, 8, 8], ds.num_classes(), "digits").unwrap();
    run_cfg.batch_size = 64;
    run_cfg.lr = 2e-3;
    tch::manual_seed(0);
    let mut task = VaeTask::new(run_cfg, Device::Cpu).unwrap();
    let before = mean_neg_elbo(&task.model, &x);
    let mut loader = Loader::new(ds, LoaderConfig::new(64, 0, Device::Cpu)).unwrap();
    let cfg =
        HarnessConfig { progress: false, sample_every: 0, checkpoint_every: 0, ..HarnessConfig::new(tmp.path(), 400) };
    run(&mut task, &mut loader, &cfg).unwrap();
    let after = mean_neg_elbo(&task.model, &x);
    eprintln!("digits negative ELBO: {before:.2} -> {after:.2} nats per image");
    // An untrained model sits near 96 nats per 8x8 image (measured), the trained one far below.
    assert!(before > 60.0, "{before}");
    assert!(after < 30.0, "negative ELBO after 400 steps is {after:.2} nats, bound 30");

    // The run reloads with identical weights: the same reconstructions through the posterior
    // mean (deterministic, so tests sharing libtorch's generator in other threads cannot move it).
    let (_vs, model, cfg_back) = load(tmp.path(), Device::Cpu).unwrap();
    assert_eq!(cfg_back.model, "mlp");
    let a = genlab_vae::sample::reconstruct(&task.model, &x, None).unwrap();
    let b = genlab_vae::sample::reconstruct(&model, &x, None).unwrap();
    assert!(a.equal(&b), "the reloaded model reconstructs differently");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let ds = genlab_data::open("digits").unwrap();
    let run_cfg = VaeRunConfig::from_preset("conv", [1, 8, 8], ds.num_classes(), "digits").unwrap();
    let task = VaeTask::new(run_cfg, Device::Cpu).unwrap();
    let wrong = Tensor::zeros([2, 1, 28, 28], (Kind::Float, Device::Cpu));
    let e = task.model.encode(&wrong, None).unwrap_err().to_string();
    assert!(e.contains("[1, 8, 8]") && e.contains("[2, 1, 28, 28]"), "{e}");
    let e = VaeRunConfig::from_preset("conv", [1, 10, 10], None, "x").unwrap_err().to_string();
    assert!(e.contains("divisible by 4"), "{e}");
    let e = VaeRunConfig::from_preset("cvae", [1, 8, 8], None, "unlabelled").unwrap_err().to_string();
    assert!(e.contains("no labels"), "{e}");
    // A checkpoint of another family.
    let tmp = tempfile::tempdir().unwrap();
    let data = genlab_core::checkpoint::CheckpointData {
        config: serde_json::json!({"family": "gan"}),
        state: serde_json::json!({"step": 1}),
        ..Default::default()
    };
    genlab_core::checkpoint::save_checkpoint(&tmp.path().join("checkpoints"), 1, &data, 1).unwrap();
    let e = load(tmp.path(), Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("`gan` family"), "{e}");
}

#[test]
fn conditional_vae_samples_per_class_and_needs_labels() {
    let run_cfg = VaeRunConfig::from_preset("cvae", [1, 8, 8], Some(10), "digits").unwrap();
    let task = VaeTask::new(run_cfg, Device::Cpu).unwrap();
    let x = Tensor::zeros([3, 1, 8, 8], (Kind::Float, Device::Cpu));
    assert!(task.model.encode(&x, None).unwrap_err().to_string().contains("labels are required"));
    let bad = Tensor::from_slice(&[0i64, 3, 12]);
    assert!(task.model.encode(&x, Some(&bad)).unwrap_err().to_string().contains("0..10"));
    let s = genlab_vae::sample::sample_prior(&task.model, 20, None).unwrap();
    assert_eq!(s.size(), [20, 1, 8, 8]);
}

/// Trained without the digit 0, the VAE scores held-out zeros as anomalies.
#[test]
fn anomaly_auc_on_a_held_out_class() {
    use genlab_data::{batch_of, Subset};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let all = genlab_data::open("digits").unwrap();
    let label = |i: usize| all.get(i).unwrap().label.unwrap();
    // Train on the first 1,200 images minus the zeros; score the other 597, zeros included.
    let train_idx: Vec<usize> = (0..1200).filter(|&i| label(i) != 0).collect();
    let test_idx: Vec<usize> = (1200..all.len()).collect();
    let train: Arc<dyn Dataset> = Arc::new(Subset::new(all.clone(), train_idx, "train").unwrap());
    let mut run_cfg = VaeRunConfig::from_preset("mlp", [1, 8, 8], Some(10), "digits").unwrap();
    run_cfg.lr = 2e-3;
    tch::manual_seed(1);
    let mut task = VaeTask::new(run_cfg, Device::Cpu).unwrap();
    let mut loader = Loader::new(train, LoaderConfig::new(64, 1, Device::Cpu)).unwrap();
    let cfg =
        HarnessConfig { progress: false, sample_every: 0, checkpoint_every: 0, ..HarnessConfig::new(tmp.path(), 400) };
    run(&mut task, &mut loader, &cfg).unwrap();
    let (x, y) = batch_of(all.as_ref(), &test_idx).unwrap();
    let positive: Vec<bool> = Vec::<i64>::try_from(y.unwrap()).unwrap().iter().map(|&l| l == 0).collect();
    for score in [genlab_vae::anomaly::Score::Elbo, genlab_vae::anomaly::Score::Recon] {
        let s = genlab_vae::anomaly::scores(&task.model, &x, None, score).unwrap();
        let auc =
            genlab_vae::anomaly::roc_auc(&Vec::<f64>::try_from(s.to_kind(Kind::Double)).unwrap(), &positive).unwrap();
        eprintln!("held-out zeros, {score:?} score: ROC-AUC {auc:.4}");
        assert!(auc > 0.85, "{score:?} AUC {auc:.4} is not above 0.85");
    }
}

/// The Gaussian decoder with a learned variance: the objective falls, and the learned
/// log-variance moves off its starting value (it is trained, not fixed).
#[test]
fn gaussian_decoder_learns_its_variance() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = genlab_data::open("digits").unwrap();
    let mut run_cfg = VaeRunConfig::from_preset("conv-gaussian", [1, 8, 8], ds.num_classes(), "digits").unwrap();
    run_cfg.batch_size = 64;
    let mut task = VaeTask::new(run_cfg, Device::Cpu).unwrap();
    let start = task.model.decoder_log_var().unwrap().copy();
    let mut loader = Loader::new(ds, LoaderConfig::new(64, 0, Device::Cpu)).unwrap();
    let cfg = HarnessConfig {
        progress: false,
        sample_every: 0,
        checkpoint_every: 0,
        log_every: 1,
        ..HarnessConfig::new(tmp.path(), 150)
    };
    run(&mut task, &mut loader, &cfg).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(tmp.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (first, last) = (lines[0]["loss"].as_f64().unwrap(), lines.last().unwrap()["loss"].as_f64().unwrap());
    let moved = (task.model.decoder_log_var().unwrap() - &start).abs().max().double_value(&[]);
    eprintln!("Gaussian decoder: loss {first:.1} -> {last:.1}, largest log-variance change {moved:.3}");
    assert!(last < first - 50.0, "loss {first} -> {last}");
    assert!(moved > 0.05, "the learned log-variance did not move ({moved})");
}
