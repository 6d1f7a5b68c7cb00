//! Sampling, guidance, inpainting and image-to-image on small untrained U-Nets: shapes, the RePaint
//! guarantee on known pixels, and typed errors for bad inputs.
use genlab_core::train::{Batch, TrainTask};
use genlab_diffusion::sample::{img2img, inpaint, read_image, read_mask, sample, RePaint};
use genlab_diffusion::train::{load, DiffusionRunConfig, DiffusionTask};
use genlab_diffusion::{Backbone, DiffusionError, PredictionType, ScheduleConfig, SchedulerKind};
use tch::{Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

/// libtorch's generator is global and the tests run in parallel: each test holds this while it
/// seeds and draws, so a seeded run is repeatable.
fn rng() -> std::sync::MutexGuard<'static, ()> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn task(num_classes: Option<usize>, schedule: ScheduleConfig) -> DiffusionTask {
    // The tests already run in parallel; more intra-op threads only contend for two cores.
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let run = DiffusionRunConfig::from_preset("unet-tiny", [1, 8, 8], num_classes, schedule, "test").unwrap();
    DiffusionTask::new(run, Device::Cpu).unwrap()
}

fn model(t: &DiffusionTask) -> &Backbone {
    &t.net.model
}

#[test]
fn class_conditional_guided_sampling_with_every_scheduler() {
    let _rng = rng();
    let t = task(Some(3), ScheduleConfig::default());
    let m = model(&t);
    assert_eq!((m.num_classes(), m.null_class()), (Some(3), Some(3)));
    // Class 3 is the null class: unconditional samples from the same model.
    let labels = Tensor::from_slice(&[0i64, 1, 2, 3]);
    for kind in SchedulerKind::ALL {
        tch::manual_seed(1);
        let x = sample(m, &t.run.schedule, kind, 3, 4, Some(&labels), 3.0).unwrap();
        assert_eq!(x.size(), [4, 1, 8, 8], "{kind}");
        assert!(x.abs().max().double_value(&[]) <= 1.0, "{kind}");
    }
    // Without labels the classes cycle; guidance 1 is one model call per step.
    let x = sample(m, &t.run.schedule, SchedulerKind::Ddim, 2, 5, None, 1.0).unwrap();
    assert_eq!(x.size(), [5, 1, 8, 8]);
    // Guidance changes the result, the same seed reproduces it.
    let run = |g: f64| {
        tch::manual_seed(7);
        sample(m, &t.run.schedule, SchedulerKind::Ddim, 3, 2, Some(&labels.narrow(0, 0, 2)), g).unwrap()
    };
    assert!(run(4.0).equal(&run(4.0)));
    assert!(!run(4.0).equal(&run(1.0)));
}

#[test]
fn inpainting_keeps_known_pixels_exactly() {
    let _rng = rng();
    let t = task(None, ScheduleConfig::default());
    tch::manual_seed(2);
    let image = Tensor::rand([2, 1, 8, 8], CPU) * 2.0 - 1.0;
    let mask = Tensor::ones([1, 1, 8, 8], CPU);
    let _ = mask.narrow(2, 2, 4).narrow(3, 2, 4).fill_(0.0);
    for repaint in [RePaint { jump_length: 1, resamplings: 1 }, RePaint { jump_length: 2, resamplings: 3 }] {
        let out = inpaint(model(&t), &t.run.schedule, &image, &mask, 8, repaint, None, 1.0).unwrap();
        assert_eq!(out.size(), [2, 1, 8, 8]);
        let known_diff = ((&out - &image) * &mask).abs().max().double_value(&[]);
        assert_eq!(known_diff, 0.0, "{repaint:?}: known pixels must be kept exactly");
        let unknown_diff = ((&out - &image) * (mask.ones_like() - &mask)).abs().max().double_value(&[]);
        assert!(unknown_diff > 0.0, "{repaint:?}: the hole is generated, not copied");
    }
}

#[test]
fn flow_inpainting_keeps_known_pixels_exactly_on_a_unet_and_a_dit() {
    let _rng = rng();
    let schedule = ScheduleConfig {
        clip_sample: false,
        flow: Some(genlab_diffusion::FlowMatchConfig { shift: 3.0, ..Default::default() }),
        ..Default::default()
    };
    tch::set_num_threads(1);
    tch::manual_seed(2);
    let image = Tensor::rand([2, 1, 8, 8], CPU) * 2.0 - 1.0;
    let mask = Tensor::ones([1, 1, 8, 8], CPU);
    let _ = mask.narrow(2, 2, 4).narrow(3, 2, 4).fill_(0.0);
    for preset in ["unet-tiny", "dit-s"] {
        let mut run = DiffusionRunConfig::from_preset(preset, [1, 8, 8], None, schedule.clone(), "test").unwrap();
        run.flow = Some(Default::default());
        run.sample_scheduler = SchedulerKind::FlowEuler;
        let t = DiffusionTask::new(run, Device::Cpu).unwrap();
        for repaint in [RePaint { jump_length: 1, resamplings: 1 }, RePaint { jump_length: 2, resamplings: 3 }] {
            let out = inpaint(model(&t), &t.run.schedule, &image, &mask, 6, repaint, None, 1.0).unwrap();
            assert_eq!(out.size(), [2, 1, 8, 8]);
            let known_diff = ((&out - &image) * &mask).abs().max().double_value(&[]);
            assert_eq!(known_diff, 0.0, "{preset} {repaint:?}: known pixels must be kept exactly");
            let unknown_diff = ((&out - &image) * (mask.ones_like() - &mask)).abs().max().double_value(&[]);
            assert!(unknown_diff > 0.0, "{preset} {repaint:?}: the hole is generated, not copied");
        }
    }
}

#[test]
fn img2img_runs_from_mid_schedule_with_every_scheduler() {
    let _rng = rng();
    let t = task(None, ScheduleConfig { prediction_type: PredictionType::VPrediction, ..Default::default() });
    let image = Tensor::rand([3, 1, 8, 8], CPU) * 2.0 - 1.0;
    for kind in SchedulerKind::ALL {
        tch::manual_seed(3);
        let out = img2img(model(&t), &t.run.schedule, kind, 4, &image, 0.5, None, 1.0).unwrap();
        assert_eq!(out.size(), [3, 1, 8, 8], "{kind}");
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let _rng = rng();
    let t = task(None, ScheduleConfig::default());
    let (m, s) = (model(&t), &t.run.schedule);
    for steps in [0, 1001] {
        let e = sample(m, s, SchedulerKind::Ddim, steps, 2, None, 1.0).unwrap_err();
        assert!(matches!(e, DiffusionError::InferenceSteps { steps: got, num_train_timesteps: 1000 } if got == steps));
    }
    let e = sample(m, s, SchedulerKind::Ddim, 5, 2, None, 3.0).unwrap_err();
    assert!(matches!(e, DiffusionError::UnconditionalGuidance { .. }), "{e}");
    assert!(e.to_string().contains("unconditional"), "{e}");
    let e = sample(m, s, SchedulerKind::Ddim, 5, 2, Some(&Tensor::from_slice(&[0i64, 1])), 1.0).unwrap_err();
    assert!(matches!(e, DiffusionError::Labels(_)), "{e}");
    assert!(matches!(sample(m, s, SchedulerKind::Ddim, 5, 0, None, 1.0), Err(DiffusionError::Config(_))));

    let image = Tensor::zeros([2, 1, 8, 8], CPU);
    let wrong_mask = Tensor::ones([2, 1, 4, 4], CPU);
    let e = inpaint(m, s, &image, &wrong_mask, 5, RePaint::default(), None, 1.0).unwrap_err();
    assert!(matches!(e, DiffusionError::Shape(_)) && e.to_string().contains("[2, 1, 4, 4]"), "{e}");
    let mask = Tensor::ones([1, 1, 8, 8], CPU);
    let e = inpaint(m, s, &image, &mask, 0, RePaint::default(), None, 1.0).unwrap_err();
    assert!(matches!(e, DiffusionError::InferenceSteps { .. }), "{e}");
    let e = inpaint(m, s, &image, &mask, 5, RePaint { jump_length: 0, resamplings: 1 }, None, 1.0).unwrap_err();
    assert!(matches!(e, DiffusionError::Config(_)), "{e}");

    for strength in [0.0, 1.5, f64::NAN] {
        let e = img2img(m, s, SchedulerKind::Ddim, 10, &image, strength, None, 1.0).unwrap_err();
        assert!(matches!(e, DiffusionError::Config(_)), "{e}");
    }
    let e = img2img(m, s, SchedulerKind::Ddim, 10, &image, 0.05, None, 1.0).unwrap_err();
    assert!(e.to_string().contains("no denoising step"), "{e}");
    let rgb = Tensor::zeros([2, 3, 8, 8], CPU);
    let e = img2img(m, s, SchedulerKind::Ddim, 10, &rgb, 0.5, None, 1.0).unwrap_err();
    assert!(matches!(e, DiffusionError::Shape(_)), "{e}");

    let cond = task(Some(3), ScheduleConfig::default());
    let e = sample(model(&cond), s, SchedulerKind::Ddim, 5, 2, Some(&Tensor::from_slice(&[0i64, 4])), 2.0).unwrap_err();
    assert!(matches!(e, DiffusionError::Labels(_)) && e.to_string().contains("0..3"), "{e}");
}

#[test]
fn conditional_training_steps_need_labels_and_min_snr_works() {
    let _rng = rng();
    let mut t = task(Some(3), ScheduleConfig::default());
    t.run.min_snr_gamma = Some(5.0);
    let images = Tensor::rand([4, 1, 8, 8], CPU) * 2.0 - 1.0;
    let labels = Some(Tensor::from_slice(&[0i64, 1, 2, 0]));
    let out = t.train_step(&Batch { images: images.shallow_clone(), labels }, 0).unwrap();
    assert!(out.loss.is_finite() && out.loss > 0.0, "{out:?}");
    let e = t.train_step(&Batch { images, labels: None }, 1).unwrap_err().to_string();
    assert!(e.contains("no labels"), "{e}");
    let groups = t.checkpoint_groups();
    // bf16 autocast on the CPU.
    let mut bf16 = task(None, ScheduleConfig::default());
    bf16.run.precision = genlab_core::Precision::Bf16;
    let images = Tensor::rand([4, 1, 8, 8], CPU) * 2.0 - 1.0;
    let out = bf16.train_step(&Batch { images, labels: None }, 0).unwrap();
    assert!(out.loss.is_finite(), "{out:?}");
    assert_eq!(groups.keys().cloned().collect::<Vec<_>>(), ["ema", "model", "optim"]);
}

#[test]
fn images_masks_and_checkpoints_of_other_families() {
    let _rng = rng();
    let tmp = tempfile::tempdir().unwrap();
    let grey = tmp.path().join("grey.png");
    let px = Tensor::from_slice(&[0u8, 255, 128, 64, 255, 0]).view([1, 2, 3]);
    genlab_core::images::save_png(&px, &grey).unwrap();
    let img = read_image(&grey, 1).unwrap();
    assert_eq!(img.size(), [1, 1, 2, 3]);
    assert_eq!(img.double_value(&[0, 0, 0, 1]), 1.0);
    assert_eq!(img.double_value(&[0, 0, 0, 0]), -1.0);
    let e = read_image(&grey, 3).unwrap_err();
    assert!(matches!(e, DiffusionError::Image { .. }) && e.to_string().contains("greyscale"), "{e}");
    let mask = read_mask(&grey).unwrap();
    assert_eq!(Vec::<f32>::try_from(mask.view(-1)).unwrap(), vec![0.0, 1.0, 1.0, 0.0, 1.0, 0.0]);
    assert!(matches!(read_image(&tmp.path().join("missing.png"), 1), Err(DiffusionError::Image { .. })));

    let data = genlab_core::checkpoint::CheckpointData {
        config: serde_json::json!({"family": "vae"}),
        state: serde_json::json!({"step": 1}),
        ..Default::default()
    };
    genlab_core::checkpoint::save_checkpoint(&tmp.path().join("checkpoints"), 1, &data, 1).unwrap();
    let e = load(tmp.path(), Device::Cpu).unwrap_err();
    assert!(
        matches!(e, DiffusionError::Core(genlab_core::CoreError::WrongRunKind(_)))
            && e.to_string().contains("`vae` family"),
        "{e}"
    );
}
