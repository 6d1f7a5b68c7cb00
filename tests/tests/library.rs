//! Every family trained, sampled and evaluated through library calls alone, as a program that
//! depends on the crates (not on the CLI) does it: `genlab_core::run::fit` trains (and resumes),
//! the family's `load` module gives an `ImageSampler`, `genlab_eval::evaluate` scores it.
use genlab_core::run::{apply_overrides, fit, read_config, FitOptions, ImageSampler, Overrides, RunKind, Start};
use genlab_core::train::{HarnessConfig, Status, TrainTask};
use genlab_core::CoreError;
use genlab_eval::evaluate::{evaluate, evaluate_sampler, sample_images, EvalOptions};
use std::path::Path;
use tch::Device;

const DATA: &str = "digits";

/// Train `fresh` for `steps` steps (or resume it to `steps`) with the library's one entry point.
fn train<R, T, E>(out: &Path, steps: u64, resume: bool, fresh: R, build: fn(R, Device) -> Result<T, E>) -> Start
where
    R: RunKind,
    T: TrainTask,
    CoreError: From<E>,
{
    let harness = HarnessConfig { progress: false, sample_every: 0, resume, ..HarnessConfig::new(out, steps) };
    let opts = FitOptions { harness, device: Device::Cpu };
    let mut started = None;
    let outcome = fit(
        &opts,
        || Ok(fresh),
        |run: &R| genlab_data::run_batches(run, 0, Device::Cpu),
        |run, start, device| {
            started = Some(start);
            Ok(build(run, device)?)
        },
    )
    .unwrap();
    assert_eq!((outcome.status, outcome.step), (Status::Finished, steps));
    started.unwrap()
}

/// Sample `n` images from `sampler` and score them against digits in the features of `clf`.
fn score(sampler: &mut dyn ImageSampler, clf: &Path) -> genlab_eval::evaluate::Evaluation {
    tch::manual_seed(0);
    let images = sample_images(sampler, 200, 100).unwrap();
    assert_eq!(images.size(), [200, 1, 8, 8], "{}", sampler.describe());
    let opts = EvalOptions { features: format!("classifier:{}", clf.display()), ..EvalOptions::new(DATA) };
    let e = evaluate(&images, &opts).unwrap();
    assert_eq!(e.n, 200);
    e
}

#[test]
fn every_family_trains_samples_and_evaluates_through_the_libraries() {
    let tmp = tempfile::tempdir().unwrap();
    let shape = [1, 8, 8];
    let ds = genlab_data::open(DATA).unwrap();

    // The feature network: the dataset classifier, itself a run that fit trains.
    let clf = tmp.path().join("classifier");
    let clf_cfg =
        genlab_eval::classifier::ClassifierRunConfig::from_preset("small", shape, ds.num_classes(), DATA, 300).unwrap();
    train(&clf, 300, false, clf_cfg, genlab_eval::classifier::ClassifierTask::new);

    // One run of each family and kind that draws images.
    let vae = tmp.path().join("vae");
    // A preset with the settings a user changes, from TOML as `genlab --config` files hold them.
    let cfg = genlab_vae::train::VaeRunConfig::from_preset("mlp", shape, None, DATA).unwrap();
    let overrides = Overrides::from_toml("batch-size = 64\nlr = 2e-3", Path::new("vae.toml")).unwrap();
    let cfg = apply_overrides(cfg, &overrides).unwrap();
    assert_eq!((cfg.batch_size, cfg.lr), (64, 2e-3));
    train(&vae, 200, false, cfg, genlab_vae::train::VaeTask::new);
    let kl = tmp.path().join("kl");
    let cfg = genlab_vae::train_kl::KlRunConfig::from_preset("kl-f2", shape, DATA).unwrap();
    train(&kl, 20, false, cfg, genlab_vae::train_kl::KlAutoencoderTask::new);
    let gan = tmp.path().join("gan");
    let cfg = genlab_gan::train::GanRunConfig::from_preset("dcgan", shape, None, DATA).unwrap();
    train(&gan, 100, false, cfg, genlab_gan::train::GanTask::new);
    let sg2 = tmp.path().join("stylegan2");
    let cfg = genlab_gan::stylegan2::train::StyleGan2RunConfig::from_preset("stylegan2", shape, DATA).unwrap();
    train(&sg2, 4, false, cfg, genlab_gan::stylegan2::train::StyleGan2Task::new);
    let ddpm = tmp.path().join("ddpm");
    let schedule = genlab_diffusion::ScheduleConfig::v_cosine();
    let cfg =
        genlab_diffusion::train::DiffusionRunConfig::from_preset("unet-tiny", shape, None, schedule, DATA).unwrap();
    // Half the steps, then a resume to the end: the second call reads the run's own config.json.
    let ddpm_steps = 150;
    assert_eq!(
        train(&ddpm, ddpm_steps / 2, false, cfg.clone(), genlab_diffusion::train::DiffusionTask::new),
        Start::Fresh
    );
    assert_eq!(train(&ddpm, ddpm_steps, true, cfg, genlab_diffusion::train::DiffusionTask::new), Start::Resume);

    // Every run samples through the same interface, and evaluation works on each.
    let mut samplers: Vec<(&str, Box<dyn ImageSampler>)> = vec![
        ("vae", genlab_vae::load::open_sampler(&vae, Device::Cpu).unwrap()),
        ("kl", genlab_vae::load::open_sampler(&kl, Device::Cpu).unwrap()),
        ("gan", genlab_gan::load::open_sampler(&gan, Device::Cpu).unwrap()),
        ("stylegan2", genlab_gan::load::open_sampler(&sg2, Device::Cpu).unwrap()),
    ];
    let mut ddpm_run =
        genlab_diffusion::load::DiffusionRun::open(&ddpm, genlab_diffusion::train::Weights::Ema, Device::Cpu).unwrap();
    ddpm_run.options.steps = 10;
    samplers.push(("diffusion", Box::new(ddpm_run)));
    let mut fd = std::collections::BTreeMap::new();
    for (name, s) in samplers.iter_mut() {
        let e = score(s.as_mut(), &clf);
        let (gen, base) = (e.generated.frechet_distance.unwrap(), e.baseline.frechet_distance.unwrap());
        assert!(gen.is_finite() && base.is_finite() && base >= 0.0, "{name}: FD {gen} vs real {base}");
        // Short runs are far from the data, real digits are not: the metric tells them apart.
        assert!(gen > base, "{name}: FD {gen} of samples is not above the real-vs-real {base}");
        fd.insert(*name, gen);
    }
    eprintln!("classifier-feature FD of 200 samples per run: {fd:?}");
    // The families that learned a generative model in these steps beat the KL autoencoder's decodes of
    // unit-variance noise (not a generative model on its own) by a wide margin.
    for name in ["vae", "diffusion"] {
        assert!(fd[name] < fd["kl"], "FD per run: {fd:?}");
    }

    // The whole report of `genlab eval --run`: a VAE adds its likelihood bounds on the reference
    // images, a GAN has none.
    let opts = EvalOptions { features: format!("classifier:{}", clf.display()), ..EvalOptions::new(DATA) };
    let mut vae_sampler = genlab_vae::load::open_sampler_with_iwae(&vae, Device::Cpu, 5).unwrap();
    tch::manual_seed(0);
    let r = evaluate_sampler(vae_sampler.as_mut(), 200, Default::default(), Default::default(), &opts).unwrap();
    let m = r.run_metrics.clone().expect("a VAE run reports its likelihood");
    let (elbo, iwae) = (m["negative_elbo_nats"].as_f64().unwrap(), m["iwae_nll_bound_nats"].as_f64().unwrap());
    assert!(iwae > 0.0 && iwae < elbo, "IWAE-5 bound {iwae} is not below the negative ELBO {elbo}");
    assert_eq!((m["iwae_k"].as_u64(), m["images"].as_u64()), (Some(5), Some(200)));
    assert!(r.to_string().contains("IWAE-5 bound") && r.sampling.is_some(), "{r}");
    let r = evaluate_sampler(samplers[2].1.as_mut(), 200, Default::default(), Default::default(), &opts).unwrap();
    assert!(r.run_metrics.is_none() && r.generated_vs_reference.frechet_distance.is_some());
}

#[test]
fn read_config_refuses_a_run_of_another_kind_with_the_typed_error() {
    let tmp = tempfile::tempdir().unwrap();
    let gan = tmp.path().join("gan");
    let cfg = genlab_gan::train::GanRunConfig::from_preset("dcgan", [1, 8, 8], None, DATA).unwrap();
    train(&gan, 1, false, cfg, genlab_gan::train::GanTask::new);
    let back: genlab_gan::train::GanRunConfig = read_config(&gan).unwrap();
    assert_eq!(back.model, "dcgan");

    // Another kind of the same family, and another family: both name the run and the two kinds.
    let e = read_config::<genlab_gan::sr::train::SrRunConfig>(&gan).unwrap_err();
    let CoreError::WrongRunKind(w) = &e else { panic!("expected WrongRunKind, got {e:?}") };
    assert_eq!(
        (w.run.as_path(), w.expected.to_string(), w.found.to_string()),
        (gan.as_path(), "gan/super-resolution".into(), "gan".into())
    );
    assert!(e.to_string().contains("--model srgan"), "{e}");
    let e = read_config::<genlab_diffusion::train::DiffusionRunConfig>(&gan).unwrap_err();
    assert!(matches!(&e, CoreError::WrongRunKind(w) if w.found.family == "gan" && w.expected.family == "diffusion"));
    // The family loaders refuse it the same way, the variant kept inside the family's error.
    let e = genlab_vae::train::load(&gan, Device::Cpu).unwrap_err();
    assert!(matches!(e, genlab_vae::error::VaeError::Core(CoreError::WrongRunKind(_))), "{e:?}");

    // fit --resume on a run of another kind stops before training anything.
    let harness = HarnessConfig { progress: false, resume: true, ..HarnessConfig::new(&gan, 2) };
    let cfg = genlab_vae::train::VaeRunConfig::from_preset("mlp", [1, 8, 8], None, DATA).unwrap();
    let e = fit(
        &FitOptions { harness, device: Device::Cpu },
        || Ok(cfg),
        |run: &genlab_vae::train::VaeRunConfig| genlab_data::run_batches(run, 0, Device::Cpu),
        |run, _, device| Ok(genlab_vae::train::VaeTask::new(run, device)?),
    )
    .err()
    .unwrap();
    assert!(matches!(&e, CoreError::WrongRunKind(w) if w.expected.family == "vae"), "{e:?}");
}

#[test]
fn each_family_trains_from_a_preset_and_a_dataset_in_one_call() {
    let tmp = tempfile::tempdir().unwrap();
    let data = genlab_data::DataOptions { per_class: Some(20), ..Default::default() }.spec(DATA, 0).unwrap();
    let opts = |dir: &str, steps: u64, resume: bool| FitOptions {
        harness: HarnessConfig {
            progress: false,
            sample_every: 0,
            resume,
            ..HarnessConfig::new(tmp.path().join(dir), steps)
        },
        device: Device::Cpu,
    };
    let small = Overrides { batch_size: Some(16), ..Default::default() };

    // A KL autoencoder preset trains that kind of run; a resume keeps it (the preset named then does not matter).
    let out = genlab_vae::fit::fit("kl-f2", &data, &small, &opts("kl", 2, false)).unwrap();
    assert_eq!((out.status, out.step), (Status::Finished, 2));
    let out = genlab_vae::fit::fit("mlp", &data, &small, &opts("kl", 4, true)).unwrap();
    assert_eq!(out.step, 4);
    assert!(read_config::<genlab_vae::train_kl::KlRunConfig>(&tmp.path().join("kl")).is_ok());

    // GAN-family settings are refused by the kinds they do not apply to, before anything is written.
    let sr_only = genlab_gan::fit::GanTrainOptions { scale: Some(2), ..Default::default() };
    let e = genlab_gan::fit::fit("dcgan", &data, &small, &sr_only, &opts("gan", 2, false)).unwrap_err();
    assert!(e.to_string().contains("--scale") && !tmp.path().join("gan").exists(), "{e}");
    let extra = genlab_gan::fit::GanTrainOptions { lr_d: Some(1e-3), ..Default::default() };
    genlab_gan::fit::fit("dcgan", &data, &small, &extra, &opts("gan", 2, false)).unwrap();
    assert_eq!(read_config::<genlab_gan::train::GanRunConfig>(&tmp.path().join("gan")).unwrap().lr_d, 1e-3);

    // Diffusion with its options; a labelled dataset makes --cond possible.
    let cond = genlab_diffusion::train::DiffusionTrainOptions { cond: true, timesteps: 100, ..Default::default() };
    genlab_diffusion::train::fit("unet-tiny", &data, &small, &cond, &opts("ddpm", 2, false)).unwrap();
    let run = read_config::<genlab_diffusion::train::DiffusionRunConfig>(&tmp.path().join("ddpm")).unwrap();
    assert_eq!(
        (run.backbone.num_class_embeds(), run.schedule.num_train_timesteps, run.batch_size),
        (Some(11), 100, 16)
    );
}
