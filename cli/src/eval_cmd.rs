//! `genlab eval ...`: sample-quality metrics for any family's run or for a file of samples, and
//! `genlab eval train-classifier`, the dataset classifier whose features and predictions the
//! metrics can use.
use crate::data_cmd::DATASET_HELP;
use crate::TrainArgs;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use genlab_core::run::{ImageSampler, RunId};
use genlab_core::DeviceSpec;
use genlab_data::DataOptions;
use genlab_diffusion::load::{DiffusionRun, SampleSettings};
use genlab_eval::evaluate::{evaluate_file, evaluate_sampler, EvalOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

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
    /// Diffusion runs: the weights, scheduler and steps to sample with.
    #[command(flatten)]
    diffusion: SampleSettings,
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
    let (c, t0) = (&a.common, Instant::now());
    let opts = c.fit_options()?;
    crate::finished(genlab_eval::classifier::fit(&c.model, &c.data_spec()?, &c.overrides, &opts)?)?;
    let Some(test) = &a.test else { return Ok(()) };
    let (read, (out, steps)) = (c.data_options.read_whole(), (&opts.harness.out, opts.harness.steps));
    let secs = t0.elapsed().as_secs_f64();
    let r = genlab_eval::classifier::write_test_report(out, test, &read, steps, secs, opts.device)?;
    println!("test accuracy {:.4} ({}/{}) on {test}", r.test_accuracy, r.correct, r.total);
    eprintln!("wrote {}", out.join("eval.json").display());
    Ok(())
}

/// The run at `path` as a sampler, whichever family and kind it is, and the sampler settings given.
fn open_sampler(e: &EvalArgs, run: &Path, device: Device) -> Result<(Box<dyn ImageSampler>, RunId)> {
    let (_, config) = genlab_core::run::config_json(run)?;
    let id = RunId::of_config(&config);
    if id.family != genlab_diffusion::train::FAMILY && (e.diffusion.sampler.is_some() || e.diffusion.steps.is_some()) {
        bail!("--sampler and --steps apply to diffusion runs; {} is a `{id}` run", run.display());
    }
    let sampler: Box<dyn ImageSampler> = match id.family.as_str() {
        genlab_vae::train::FAMILY => genlab_vae::load::open_sampler_with_iwae(run, device, e.iwae_k)?,
        genlab_gan::train::FAMILY => genlab_gan::load::open_sampler(run, device)?,
        genlab_diffusion::train::FAMILY => Box::new(DiffusionRun::open_with(run, &e.diffusion, device)?),
        _ => bail!("{}: a `{id}` run has no sampler; expected a vae, gan or diffusion run", run.display()),
    };
    Ok((sampler, id))
}

fn evaluate(e: EvalArgs) -> Result<()> {
    let Some(data) = e.data.clone() else { bail!("--data DATASET is required") };
    let device = e.device.resolve()?;
    let opts = EvalOptions {
        data,
        read: e.data_options.read(e.seed)?,
        select: e.data_options.selection()?,
        reference: e.reference.clone(),
        features: e.features.clone(),
        kid_subsets: e.kid_subsets,
        batch_size: e.batch_size,
        seed: e.seed,
        device,
    };
    let report = match (&e.run, &e.samples) {
        (Some(run), None) => {
            let n = e.n.unwrap_or(1000);
            if n == 0 {
                bail!("--n must be at least 1");
            }
            tch::manual_seed(e.seed as i64);
            let (mut sampler, id) = open_sampler(&e, run, device)?;
            eprintln!("sampling {}", sampler.describe());
            let mut source = serde_json::Map::new();
            source.insert("run".into(), run.display().to_string().into());
            source.insert("family".into(), id.family.clone().into());
            let mut settings = serde_json::Map::new();
            if id.family == genlab_diffusion::train::FAMILY {
                settings.insert("sampler".into(), e.diffusion.sampler.map(|k| k.to_string()).into());
                settings.insert("steps".into(), e.diffusion.steps.into());
            }
            evaluate_sampler(sampler.as_mut(), n, source, settings, &opts)?
        }
        (None, Some(file)) => {
            evaluate_file(file, e.n, &opts).with_context(|| format!("--samples {}", file.display()))?
        }
        _ => bail!("give --run RUN_DIR (samples drawn from a trained run) or --samples FILE.h5"),
    };
    let n = report.n;
    if let Some(s) = &report.sampling {
        eprintln!("sampled {n} images in {:.1} s ({:.4} s per sample)", s.seconds, s.seconds_per_sample);
    }
    let (features, dim, secs) = (&report.features, report.feature_dim, report.feature_seconds);
    eprintln!("features ({features}, {dim}-d) of {} images in {secs:.1} s", 3 * n);
    print!("{report}");
    for note in report.generated_vs_reference.notes.iter().chain(&report.real_vs_reference.notes) {
        eprintln!("note: {note}");
    }
    if let Some(path) = &e.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
