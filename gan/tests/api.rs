//! Shapes at the usual image sizes, clear errors on bad inputs, checkpoints, exact resume
//! and collapse detection.
use genlab_core::train::{run, HarnessConfig, StopToken};
use genlab_data::{Loader, LoaderConfig};
use genlab_gan::model::{Discriminator, GanConfig, Generator};
use genlab_gan::sample::sample;
use genlab_gan::train::{load, CollapseConfig, CollapseDetector, GanRunConfig, GanTask, PRESETS};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn cpu() -> (Kind, Device) {
    (Kind::Float, Device::Cpu)
}

/// A preset shrunk for tests (narrow networks, small latent).
fn small(model: &str, shape: [i64; 3]) -> GanRunConfig {
    let mut cfg = GanRunConfig::from_preset(model, shape, Some(10), "test").unwrap();
    cfg.gan.g_width = 8;
    cfg.gan.d_width = 8;
    cfg.gan.latent_dim = 16;
    cfg
}

#[test]
fn every_preset_has_the_right_shapes_at_28_32_and_64() {
    for model in PRESETS {
        for shape in [[1, 28, 28], [3, 32, 32], [3, 64, 64], [2, 8, 8]] {
            let cfg = small(model, shape);
            let task = GanTask::new(cfg.clone(), Device::Cpu).unwrap();
            let z = Tensor::randn([3, 16], cpu());
            let y = cfg.gan.num_classes.map(|_| Tensor::from_slice(&[0i64, 4, 9]));
            let x = task.generator.forward(&z, y.as_ref(), true).unwrap();
            assert_eq!(x.size(), [3, shape[0], shape[1], shape[2]], "{model} {shape:?}");
            let d = task.discriminator.forward(&x, y.as_ref(), true).unwrap();
            assert_eq!(d.size(), [3], "{model} {shape:?}");
            let s = sample(&task.generator, 4, None).unwrap();
            assert_eq!(s.size(), [4, shape[0], shape[1], shape[2]]);
            assert!(s.abs().max().double_value(&[]) <= 1.0);
        }
    }
}

#[test]
fn wrong_image_size_names_expected_and_found() {
    let vs = VarStore::new(Device::Cpu);
    let d = Discriminator::new(vs.root(), GanConfig { d_width: 8, ..GanConfig::for_images([1, 28, 28]) }).unwrap();
    let e = d.forward(&Tensor::zeros([2, 1, 32, 32], cpu()), None, false).unwrap_err();
    assert!(matches!(e, genlab_gan::GanError::ImageShape { .. }));
    let e = e.to_string();
    assert!(e.contains("[1, 28, 28]") && e.contains("[2, 1, 32, 32]"), "{e}");
    // Through the training step too.
    let mut task = GanTask::new(small("dcgan", [1, 28, 28]), Device::Cpu).unwrap();
    let batch = genlab_core::train::Batch { images: Tensor::zeros([8, 3, 28, 28], cpu()), labels: None };
    let e = genlab_core::train::TrainTask::train_step(&mut task, &batch, 0).unwrap_err().to_string();
    assert!(e.contains("[1, 28, 28]") && e.contains("[8, 3, 28, 28]"), "{e}");
}

#[test]
fn configuration_errors_are_clear() {
    let e = GanRunConfig::from_preset("bigGAN", [1, 28, 28], None, "x").unwrap_err().to_string();
    assert!(e.contains("dcgan, wgan, wgan-gp, cgan"), "{e}");
    let e = GanRunConfig::from_preset("cgan", [1, 28, 28], None, "unlabelled").unwrap_err().to_string();
    assert!(e.contains("no labels"), "{e}");
    let e = GanRunConfig::from_preset("dcgan", [1, 28, 30], None, "x").unwrap_err().to_string();
    assert!(e.contains("square"), "{e}");
    let mut cfg = small("dcgan", [1, 28, 28]);
    cfg.gan.stages = 3;
    assert!(cfg.validate().unwrap_err().to_string().contains("divisible by 8"));
    let mut cfg = small("wgan-gp", [1, 28, 28]);
    cfg.gan.d_norm = genlab_gan::model::DNorm::Batch;
    assert!(cfg.validate().unwrap_err().to_string().contains("BatchNorm"));
    let mut cfg = small("wgan", [1, 28, 28]);
    cfg.batch_size = 8;
    assert!(cfg.validate().unwrap_err().to_string().contains("n_critic = 5"));
}

#[test]
fn conditional_models_need_labels_in_range() {
    let cfg = small("cgan", [1, 8, 8]);
    let task = GanTask::new(cfg, Device::Cpu).unwrap();
    let z = Tensor::randn([3, 16], cpu());
    let e = task.generator.forward(&z, None, false).unwrap_err().to_string();
    assert!(e.contains("class-conditional (10 classes): labels are required"), "{e}");
    let x = Tensor::zeros([3, 1, 8, 8], cpu());
    assert!(task.discriminator.forward(&x, None, false).unwrap_err().to_string().contains("labels are required"));
    let bad = Tensor::from_slice(&[0i64, 3, 12]);
    assert!(task.discriminator.forward(&x, Some(&bad), false).unwrap_err().to_string().contains("0..10"));
    // Sampling: per class, cycling when not given; a class that does not exist is an error.
    assert_eq!(sample(&task.generator, 20, None).unwrap().size(), [20, 1, 8, 8]);
    assert_eq!(sample(&task.generator, 2, Some(&[9, 9])).unwrap().size(), [2, 1, 8, 8]);
    let e = sample(&task.generator, 2, Some(&[3, 10])).unwrap_err().to_string();
    assert!(e.contains("class 10 does not exist") && e.contains("10 classes"), "{e}");
    assert!(sample(&task.generator, 3, Some(&[1])).unwrap_err().to_string().contains("1 labels given for 3"));
    // A batch without labels cannot train a conditional model.
    let mut task = task;
    let batch = genlab_core::train::Batch { images: Tensor::zeros([4, 1, 8, 8], cpu()), labels: None };
    let e = genlab_core::train::TrainTask::train_step(&mut task, &batch, 0).unwrap_err().to_string();
    assert!(e.contains("carries no labels"), "{e}");
    // An unconditional generator takes no class.
    let vs = VarStore::new(Device::Cpu);
    let g = Generator::new(vs.root(), GanConfig { g_width: 8, ..GanConfig::for_images([1, 8, 8]) }).unwrap();
    assert!(sample(&g, 2, Some(&[1, 1])).unwrap_err().to_string().contains("unconditional"));
    assert!(sample(&g, 0, None).unwrap_err().to_string().contains("at least 1"));
}

fn harness(out: &std::path::Path, steps: u64) -> HarnessConfig {
    HarnessConfig {
        progress: false,
        sample_every: 0,
        checkpoint_every: 2,
        stop: StopToken::new(),
        ..HarnessConfig::new(out, steps)
    }
}

fn digits_loader(batch: usize) -> Loader {
    let ds = genlab_data::open("digits").unwrap();
    Loader::new(ds, LoaderConfig::new(batch, 0, Device::Cpu)).unwrap()
}

fn train(cfg: &GanRunConfig, h: &HarnessConfig) -> GanTask {
    // One intra-op thread: on busy cores OpenMP's waiting threads make these tiny runs far slower.
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let mut task = GanTask::new(cfg.clone(), Device::Cpu).unwrap();
    run(&mut task, &mut digits_loader(cfg.batch_size), h).unwrap();
    task
}

#[test]
fn wgan_clipping_holds_during_training() {
    let mut cfg = small("wgan", [1, 8, 8]);
    cfg.batch_size = 5 * 8;
    let dir = tempfile::tempdir().unwrap();
    let task = train(&cfg, &harness(dir.path(), 3));
    for t in task.vs_d.trainable_variables() {
        assert!(t.abs().max().double_value(&[]) <= 0.01 + 1e-9);
    }
}

#[test]
fn other_families_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = genlab_core::checkpoint::CheckpointData {
        config: serde_json::json!({"family": "vae"}),
        state: serde_json::json!({"step": 1}),
        ..Default::default()
    };
    genlab_core::checkpoint::save_checkpoint(&tmp.path().join("checkpoints"), 1, &data, 1).unwrap();
    let e = load(tmp.path(), Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("`vae` family"), "{e}");
}

#[test]
fn collapse_detector_counts_consecutive_failures() {
    let cfg = CollapseConfig { patience: 3, min_diversity: 0.05, max_g_loss: 15.0 };
    let mut d = CollapseDetector::new(cfg);
    // A healthy step resets the count.
    for (s, div) in [0.01, 0.01, 0.5, 0.01, 0.01].into_iter().enumerate() {
        d.observe(s as u64, div, Some(0.7), 1.0).unwrap();
    }
    let e = d.observe(5, 0.01, Some(0.7), 1.0).unwrap_err().to_string();
    assert!(e.contains("mode collapse at step 5") && e.contains("began at step 3"), "{e}");
    let mut d = CollapseDetector::new(cfg);
    d.observe(0, 1.0, Some(1.0), 30.0).unwrap();
    d.observe(1, 1.0, Some(1.0), 30.0).unwrap();
    assert!(d.observe(2, 1.0, Some(1.0), 30.0).unwrap_err().to_string().contains("discriminator has won"));
    // The Wasserstein critic has no accuracy: only diversity counts.
    let mut d = CollapseDetector::new(cfg);
    for s in 0..5 {
        d.observe(s, 1.0, None, 1e6).unwrap();
    }
}

#[test]
fn a_collapsed_generator_stops_the_run() {
    let mut cfg = small("dcgan", [1, 8, 8]);
    cfg.batch_size = 16;
    cfg.lr_g = 1e-12;
    cfg.objective.collapse.patience = 3;
    tch::manual_seed(0);
    let mut task = GanTask::new(cfg, Device::Cpu).unwrap();
    // Every generator weight 0: every sample is the same (blank) image.
    tch::no_grad(|| {
        for mut t in task.vs_g.trainable_variables() {
            let _ = t.zero_();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let e = run(&mut task, &mut digits_loader(16), &harness(dir.path(), 10)).unwrap_err().to_string();
    assert!(e.contains("mode collapse at step 2"), "{e}");
}
