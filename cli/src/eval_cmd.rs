//! `genlab eval ...`: sample-quality metrics for any family's run or for a file of samples, and
//! `genlab eval train-classifier`, the dataset classifier whose features and predictions the
//! metrics can use.
use crate::data_cmd::{DataOptions, DATASET_HELP};
use crate::TrainArgs;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use genlab_core::run::apply_overrides;
use genlab_core::run::{ImageSampler, RunId, RunKind};
use genlab_core::DeviceSpec;
use genlab_data::Dataset;
use genlab_diffusion::load::DiffusionRun;
use genlab_eval::classifier::{ClassifierRunConfig, ClassifierTask};
use genlab_eval::evaluate::{evaluate_against, real_sets, sample_images, EvalOptions};
use genlab_eval::report::Comparison;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// `genlab eval --run RUN ...` or `genlab eval train-classifier ...`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EvalCommand {
    #[command(subcommand)]
    tool: Option<EvalTool>,
    #[command(flatten)]
    eval: EvalArgs,
}

#[derive(Subcommand, Debug)]
enum EvalTool {
    /// Train the dataset classifier (a small conv net) whose penultimate features give `--features
    /// classifier:RUN`; with --test, write its test accuracy to RUN/eval.json.
    #[command(
        mut_arg("model", |a| a.required(false).default_value("small").help("Classifier preset (small)")),
        mut_arg("sample_every", |a| a.default_value("0")),
        after_help = "Examples:\n  genlab eval train-classifier --data fashion-mnist --steps 3000 --out runs/clf-fm --test fashion-mnist:test\n  genlab eval train-classifier --data digits --steps 300 --out runs/clf-digits"
    )]
    TrainClassifier(ClassifierArgs),
}

#[derive(Args, Debug)]
struct ClassifierArgs {
    #[command(flatten)]
    common: TrainArgs,
    /// Labelled test set: its accuracy is printed and written to RUN/eval.json.
    #[arg(long)]
    test: Option<String>,
}

/// Where the generated images come from and what they are compared with.
#[derive(Args, Debug)]
struct EvalArgs {
    /// A run directory of any family (vae, gan, diffusion): N samples are drawn from it.
    #[arg(long, conflicts_with = "samples")]
    run: Option<PathBuf>,
    /// An HDF5 file of samples (`images`: uint8 0-255, or float in [0, 1] or [-1, 1]; NCHW or NHWC).
    #[arg(long)]
    samples: Option<PathBuf>,
    /// The real dataset the samples imitate.
    #[arg(long, required = true, help = DATASET_HELP)]
    data: Option<String>,
    #[command(flatten)]
    data_options: DataOptions,
    /// Reference images to compare with, used whole (default: DATA:test when that exists, else a random half of DATA).
    #[arg(long)]
    reference: Option<String>,
    /// Images per set (default: 1000 for --run, the file's count for --samples).
    #[arg(long)]
    n: Option<usize>,
    /// inception (pytorch-fid's FID Inception-v3) or classifier:RUN (a `genlab eval train-classifier` run).
    #[arg(long, default_value = "inception")]
    features: String,
    /// Write every figure as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Diffusion runs: ddpm, ddim, dpmpp-2m, euler, euler-a or heun (default: the run's own).
    #[arg(long)]
    sampler: Option<String>,
    /// Diffusion runs: sampling steps (default: the run's own).
    #[arg(long)]
    steps: Option<usize>,
    /// Diffusion runs: sample from the EMA weights (`ema`) or the trained ones (`raw`).
    #[arg(long, default_value = "ema")]
    weights: String,
    /// VAE runs: importance samples for the IWAE bound (reported on up to 1000 reference images).
    #[arg(long, default_value_t = 100)]
    iwae_k: usize,
    /// KID: subsets of min(1000, N) images to average over.
    #[arg(long, default_value_t = 100)]
    kid_subsets: usize,
    /// Images per sampling and feature batch.
    #[arg(long, default_value_t = 250)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd.tool {
        Some(EvalTool::TrainClassifier(a)) => train_classifier(a),
        None => evaluate(cmd.eval),
    }
}

fn train_classifier(a: ClassifierArgs) -> Result<()> {
    let c = &a.common;
    let device = c.device.resolve()?;
    let t0 = Instant::now();
    c.fit(
        device,
        |ds| {
            let [ch, h, w] = ds.shape();
            let shape = [ch as i64, h as i64, w as i64];
            let run = ClassifierRunConfig::from_preset(&c.model, shape, ds.num_classes(), &c.data, c.steps)?;
            let run = apply_overrides(run, &c.overrides())?;
            Ok(run)
        },
        |run, _, device| Ok(ClassifierTask::new(run, device)?),
    )?;
    let train_seconds = t0.elapsed().as_secs_f64();
    let Some(test) = &a.test else { return Ok(()) };
    let clf = genlab_eval::classifier::load(&c.out, device)?;
    let ds = genlab_data::open_with(test, &read_options(&c.data_options))?;
    let acc = genlab_eval::classifier::accuracy(&clf.model, ds.as_ref(), 500)?;
    println!("test accuracy {:.4} ({}/{}) on {test}", acc.accuracy, acc.correct, acc.total);
    let report = serde_json::json!({
        "data": c.data,
        "test": test,
        "steps": c.steps,
        "train_seconds": train_seconds,
        "test_accuracy": acc.accuracy,
        "correct": acc.correct,
        "total": acc.total,
        "per_class_accuracy": acc.per_class,
    });
    let path = c.out.join("eval.json");
    genlab_core::checkpoint::write_atomic(&path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Of the dataset flags, those that say how to read a source, not which items to keep: a test or
/// reference set is used whole.
fn read_options(d: &DataOptions) -> genlab_data::OpenOptions {
    genlab_data::OpenOptions {
        size: d.image_size,
        channels: d.channels,
        h5_labels: d.h5_labels.clone(),
        ..Default::default()
    }
}

/// The run at `path` as a sampler, whichever family and kind it is.
fn open_sampler(e: &EvalArgs, run: &Path, device: Device) -> Result<Box<dyn ImageSampler>> {
    let (_, config) = genlab_core::run::config_json(run)?;
    let id = RunId::of_config(&config);
    if id.family != genlab_diffusion::train::FAMILY && (e.sampler.is_some() || e.steps.is_some()) {
        bail!("--sampler and --steps apply to diffusion runs; {} is a `{id}` run", run.display());
    }
    Ok(match id.family.as_str() {
        genlab_vae::train::FAMILY => genlab_vae::load::open_sampler(run, device)?,
        genlab_gan::train::FAMILY => genlab_gan::load::open_sampler(run, device)?,
        genlab_diffusion::train::FAMILY => {
            let mut d = DiffusionRun::open(run, e.weights.parse()?, device)?;
            if let Some(s) = &e.sampler {
                d.options.scheduler = s.parse()?;
            }
            d.options.steps = e.steps.unwrap_or(d.options.steps);
            Box::new(d)
        }
        _ => bail!("{}: a `{id}` run has no sampler; expected a vae, gan or diffusion run", run.display()),
    })
}

/// ELBO and IWAE bounds of a VAE run on reference images.
fn vae_likelihood(run: &Path, images: &Tensor, k: usize, device: Device) -> Result<serde_json::Value> {
    let (_vs, model, _) = genlab_vae::train::load(run, device)?;
    let n = images.size()[0].min(1000);
    let (mut iwae, mut elbo) = (0.0, 0.0);
    for lo in (0..n).step_by(100) {
        let x = images.narrow(0, lo, 100.min(n - lo)).to_device(device);
        let b = |k| -> Result<f64> {
            Ok(tch::no_grad(|| genlab_vae::likelihood::iwae_bound(&model, &x, None, k))?
                .sum(Kind::Double)
                .double_value(&[]))
        };
        iwae += b(k)?;
        elbo += b(1)?;
    }
    let dims = model.cfg.data_dim();
    let (nll_1, nll_k) = (-elbo / n as f64, -iwae / n as f64);
    Ok(serde_json::json!({
        "images": n,
        "negative_elbo_nats": nll_1,
        "negative_elbo_bits_per_dim": genlab_vae::loss::bits_per_dim(nll_1, dims),
        "iwae_k": k,
        "iwae_nll_bound_nats": nll_k,
        "iwae_nll_bound_bits_per_dim": genlab_vae::loss::bits_per_dim(nll_k, dims),
    }))
}

fn evaluate(e: EvalArgs) -> Result<()> {
    let Some(data) = e.data.clone() else { bail!("--data DATASET is required") };
    let device = e.device.resolve()?;
    let t_all = Instant::now();
    let mut source = serde_json::Map::new();
    let mut sampling = serde_json::Value::Null;
    let mut likelihood = serde_json::Value::Null;
    let mut vae_run = None;
    let generated = match (&e.run, &e.samples) {
        (Some(run), None) => {
            let n = e.n.unwrap_or(1000);
            if n == 0 {
                bail!("--n must be at least 1");
            }
            let (_, config) = genlab_core::run::config_json(run)?;
            let id = RunId::of_config(&config);
            tch::manual_seed(e.seed as i64);
            let mut sampler = open_sampler(&e, run, device)?;
            eprintln!("sampling {}", sampler.describe());
            let t = Instant::now();
            let x = sample_images(sampler.as_mut(), n, e.batch_size)?;
            let secs = t.elapsed().as_secs_f64();
            eprintln!(
                "sampled {n} images from the {} run {} in {secs:.1} s ({:.4} s per sample)",
                id.family,
                run.display(),
                secs / n as f64
            );
            sampling = serde_json::json!({ "seconds": secs, "seconds_per_sample": secs / n as f64, "device": format!("{device:?}") });
            if id.family == genlab_diffusion::train::FAMILY {
                sampling["sampler"] = e.sampler.clone().into();
                sampling["steps"] = e.steps.into();
            }
            if id == genlab_vae::train::VaeRunConfig::id() {
                vae_run = Some(run.clone());
            }
            source.insert("run".into(), run.display().to_string().into());
            source.insert("family".into(), id.family.into());
            x
        }
        (None, Some(file)) => {
            let spec = file.display().to_string();
            let ds = genlab_data::H5Dataset::open(file, genlab_data::h5::DEFAULT_IMAGES, None)
                .with_context(|| format!("--samples {spec}"))?;
            let n = e.n.unwrap_or(ds.len());
            if n == 0 || n > ds.len() {
                bail!("--samples {spec} has {} images; --n {n} is not between 1 and that", ds.len());
            }
            source.insert("samples".into(), spec.into());
            let idx: Vec<usize> = (0..n).collect();
            genlab_data::batch_of(&ds, &idx)?.0
        }
        _ => bail!("give --run RUN_DIR (samples drawn from a trained run) or --samples FILE.h5"),
    };
    let n = generated.size()[0] as usize;
    let opts = EvalOptions {
        data: data.clone(),
        read: e.data_options.read(e.seed)?,
        select: e.data_options.selection()?,
        reference: e.reference.clone(),
        features: e.features.clone(),
        kid_subsets: e.kid_subsets,
        batch_size: e.batch_size,
        seed: e.seed,
        device,
    };
    let sets = real_sets(&opts, n)?;
    if let Some(run) = &vae_run {
        likelihood = vae_likelihood(run, &sets.reference, e.iwae_k, device)?;
    }
    let t = Instant::now();
    let ev = evaluate_against(&generated, &sets, &opts)?;
    eprintln!(
        "features ({}, {}-d) of {} images in {:.1} s",
        ev.features,
        ev.feature_dim,
        3 * n,
        t.elapsed().as_secs_f64()
    );
    let (gen, base) = (&ev.generated, &ev.baseline);
    print_table(gen, base);
    if let Some(l) = likelihood.as_object() {
        println!(
            "VAE on {} reference images: negative ELBO {:.3} nats, IWAE-{} bound on NLL {:.3} nats",
            l["images"],
            l["negative_elbo_nats"].as_f64().unwrap_or(f64::NAN),
            e.iwae_k,
            l["iwae_nll_bound_nats"].as_f64().unwrap_or(f64::NAN)
        );
    }
    if let Some(s) = sampling.get("seconds_per_sample").and_then(|s| s.as_f64()) {
        println!("sampling: {s:.5} s per sample");
    }
    for note in gen.notes.iter().chain(&base.notes) {
        eprintln!("note: {note}");
    }
    if let Some(path) = &e.json {
        let report = serde_json::json!({
            "source": source,
            "data": data,
            "n": n,
            "features": ev.features,
            "feature_dim": ev.feature_dim,
            "reference": ev.reference,
            "real": ev.real,
            "generated_vs_reference": gen,
            "real_vs_reference": base,
            "sampling": sampling,
            "vae_likelihood": likelihood,
            "seconds": t_all.elapsed().as_secs_f64(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn print_table(gen: &Comparison, base: &Comparison) {
    let opt = |v: Option<f64>, p: usize| v.map(|v| format!("{v:.p$}")).unwrap_or_else(|| "n/a".into());
    println!("{:<22} {:>14} {:>14}", "metric", "generated", "real-vs-real");
    let row = |name: &str, a: String, b: String| println!("{name:<22} {a:>14} {b:>14}");
    row("Fréchet distance", opt(gen.frechet_distance, 4), opt(base.frechet_distance, 4));
    let kid = |c: &Comparison| format!("{:.3}±{:.3}", c.kid.mean * 1e3, c.kid.std * 1e3);
    row("KID x 1000", kid(gen), kid(base));
    row(
        "precision",
        format!("{:.4}", gen.precision_recall.precision),
        format!("{:.4}", base.precision_recall.precision),
    );
    row("recall", format!("{:.4}", gen.precision_recall.recall), format!("{:.4}", base.precision_recall.recall));
    let is = |c: &Comparison| {
        c.inception_score.map(|s| format!("{:.3}±{:.3}", s.mean, s.std)).unwrap_or_else(|| "n/a".into())
    };
    row("Inception Score", is(gen), is(base));
    if gen.class_coverage.is_some() {
        let cov = |c: &Comparison| opt(c.class_coverage.as_ref().map(|c| c.coverage), 3);
        row("class coverage", cov(gen), cov(base));
    }
}
