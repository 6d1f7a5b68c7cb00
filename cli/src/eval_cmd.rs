//! `genlab eval ...`: sample-quality metrics for any family's run or for a file of samples, and
//! `genlab eval train-classifier`, the dataset classifier whose features and predictions the
//! metrics can use.
use crate::data_cmd::{DataOptions, DATASET_HELP};
use crate::TrainArgs;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use genlab_core::seed::Rng;
use genlab_core::DeviceSpec;
use genlab_data::Dataset;
use genlab_eval::classifier::{ClassifierRunConfig, ClassifierTask};
use genlab_eval::features::embed_all;
use genlab_eval::report::{compare, CompareConfig, Comparison};
use genlab_eval::{FeatureNet, FeatureStats, Features, KidConfig};
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

run_config!(ClassifierRunConfig, "a classifier run configuration");

fn train_classifier(a: ClassifierArgs) -> Result<()> {
    let c = &a.common;
    let device = c.device.resolve()?;
    let run = c.run_config(|ds| {
        let [ch, h, w] = ds.shape();
        let shape = [ch as i64, h as i64, w as i64];
        let mut run = ClassifierRunConfig::from_preset(&c.model, shape, ds.num_classes(), &c.data, c.steps)?;
        run.lr = c.lr.unwrap_or(run.lr);
        run.batch_size = c.batch_size.unwrap_or(run.batch_size);
        run.precision = c.precision;
        Ok(run)
    })?;
    let t0 = Instant::now();
    c.train(run, device, |run, device| Ok(ClassifierTask::new(run, device)?))?;
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

/// `n` random distinct indices below `len`, in a seed-determined order.
fn pick(len: usize, n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut p = rng.permutation(len);
    p.truncate(n);
    p
}

fn images_of(ds: &dyn Dataset, idx: &[usize]) -> Result<Tensor> {
    Ok(genlab_data::batch_of(ds, idx)?.0)
}

/// The reference set and the real set for the baseline, `n` images each, and how they were chosen.
fn real_sets(e: &EvalArgs, data: &str, n: usize) -> Result<(Tensor, Tensor, String, String)> {
    let ds = e.data_options.open(data, e.seed)?;
    let mut rng = Rng::derive(e.seed, &[0x7265_6673]);
    let explicit = e.reference.clone();
    let test_split = format!("{data}:test");
    let reference = match explicit {
        Some(r) => Some(r),
        None => genlab_data::builtin::open_builtin(&test_split).filter(|r| r.is_ok()).map(|_| test_split),
    };
    let need = |have: usize, what: &str| -> Result<()> {
        if have < n {
            bail!("{what} has {have} images; --n {n} needs {n} (lower --n)");
        }
        Ok(())
    };
    match reference {
        Some(spec) => {
            let rs = genlab_data::open_with(&spec, &read_options(&e.data_options))?;
            need(rs.len(), &spec)?;
            need(ds.len(), data)?;
            let r = images_of(rs.as_ref(), &pick(rs.len(), n, &mut rng))?;
            let x = images_of(ds.as_ref(), &pick(ds.len(), n, &mut rng))?;
            Ok((r, x, format!("{n} random images of {spec}"), format!("{n} random images of {data}")))
        }
        None => {
            if ds.len() < 2 * n {
                bail!(
                    "{data} has {} images and no test split: the reference and the real baseline are two disjoint \
                     halves of {n}, so --n can be at most {} (or name a --reference)",
                    ds.len(),
                    ds.len() / 2
                );
            }
            let idx = pick(ds.len(), 2 * n, &mut rng);
            let (a, b) = idx.split_at(n);
            let what = |part: &str| format!("{n} random images of {data} ({part} of a disjoint split)");
            Ok((images_of(ds.as_ref(), a)?, images_of(ds.as_ref(), b)?, what("one half"), what("the other half")))
        }
    }
}

/// The feature network `--features` names.
fn feature_net(spec: &str, device: Device) -> Result<Box<dyn FeatureNet>> {
    if spec == "inception" {
        let path = genlab_eval::inception::default_weights_path()
            .context("neither GENLAB_DATA_DIR nor HOME is set: no place to find the FID Inception weights")?;
        if !path.is_file() {
            bail!(
                "--features inception needs the FID Inception-v3 weights at {}; run `cargo xtask download fid-inception` \
                 (or `cargo xtask download fid-inception --from pt_inception-2015-12-05-6726825d.pth` with a copy \
                 fetched elsewhere), or use --features classifier:RUN",
                path.display()
            );
        }
        let (vs, net) = genlab_eval::inception::FidInceptionV3::load(&path, device)?;
        return Ok(Box::new(InceptionWithWeights { _vs: vs, net }));
    }
    if let Some(run) = spec.strip_prefix("classifier:") {
        return Ok(Box::new(genlab_eval::classifier::load(Path::new(run), device)?));
    }
    bail!("--features `{spec}`: expected inception or classifier:RUN (a `genlab eval train-classifier` run)")
}

/// The Inception network and the variables it reads.
struct InceptionWithWeights {
    _vs: tch::nn::VarStore,
    net: genlab_eval::inception::FidInceptionV3,
}

impl FeatureNet for InceptionWithWeights {
    fn name(&self) -> String {
        self.net.name()
    }
    fn dim(&self) -> i64 {
        self.net.dim()
    }
    fn embed(&self, images: &Tensor) -> genlab_eval::Result<Features> {
        self.net.embed(images)
    }
}

/// Sampler settings for the families that take them.
struct SamplerOptions<'a> {
    sampler: Option<&'a str>,
    steps: Option<usize>,
    weights: &'a str,
}

/// `n` samples in [-1, 1] from a run of `family`, in batches, through the family crate's
/// library sampling function.
fn sample_run(
    run: &Path,
    family: &str,
    n: i64,
    batch: i64,
    opts: &SamplerOptions<'_>,
    device: Device,
) -> Result<Tensor> {
    let mut out = Vec::new();
    let mut batches = |f: &mut dyn FnMut(i64) -> Result<Tensor>| -> Result<()> {
        for lo in (0..n).step_by(batch.max(1) as usize) {
            out.push(f(batch.max(1).min(n - lo))?.to_device(Device::Cpu));
        }
        Ok(())
    };
    match family {
        "vae" if genlab_vae::train_kl::is_kl_run(run)? => {
            let (_vs, model, _) = genlab_vae::train_kl::load(run, device)?;
            batches(&mut |m| Ok(genlab_vae::sample::decode_random_latents(&model, m)?))?;
        }
        "vae" => {
            let (_vs, model, _) = genlab_vae::train::load(run, device)?;
            batches(&mut |m| Ok(tch::no_grad(|| genlab_vae::sample::sample_prior(&model, m, None))?))?;
        }
        "gan" if genlab_gan::stylegan2::train::is_stylegan2_run(run)? => {
            let (_vs, g, _) = genlab_gan::stylegan2::train::load(run, device)?;
            let noise = genlab_gan::stylegan2::generator::NoiseMode::Const;
            batches(&mut |m| Ok(genlab_gan::stylegan2::tools::sample(&g, m, 1.0, noise)?))?;
        }
        "gan" => {
            let (_vs, generator, _) = genlab_gan::train::load(run, device)?;
            // A conditional generator draws every class in turn.
            let k = generator.cfg.num_classes;
            batches(&mut |m| {
                let labels: Option<Vec<i64>> = k.map(|k| (0..m).map(|i| i % k).collect());
                Ok(genlab_gan::sample::sample(&generator, m, labels.as_deref())?)
            })?;
        }
        "diffusion" => {
            use genlab_diffusion::latent;
            let kind = opts.sampler.map(str::parse::<genlab_diffusion::SchedulerKind>).transpose()?;
            let weights = opts.weights.parse::<genlab_diffusion::train::Weights>()?;
            let (net, cfg, ae) = latent::load_run_weights(run, weights, device)?;
            let (kind, steps) = (kind.unwrap_or(cfg.sample_scheduler), opts.steps.unwrap_or(cfg.sample_steps));
            eprintln!("sampling {} with {kind}, {steps} steps, {} weights", run.display(), opts.weights);
            batches(&mut |m| {
                Ok(match &ae {
                    Some(ae) => latent::sample(&net.unet, ae, &cfg.schedule, kind, steps, m, None, 1.0)?,
                    None => genlab_diffusion::sample::sample(&net.unet, &cfg.schedule, kind, steps, m, None, 1.0)?,
                })
            })?;
        }
        other => bail!("{}: family `{other}` has no sampler; expected vae, gan or diffusion", run.display()),
    }
    Ok(Tensor::cat(&out, 0))
}

/// The family a run directory (or checkpoint folder) records in its config.json.
fn family_of(run: &Path) -> Result<String> {
    let ck = genlab_core::train::open_checkpoint(run)?;
    Ok(ck.config.get("family").and_then(|f| f.as_str()).unwrap_or("unknown").to_string())
}

/// Round to 8 bits and back, as samples are when saved: a file and a run are evaluated alike.
fn quantize(images: &Tensor) -> Tensor {
    genlab_core::images::to_u8(images).to_kind(Kind::Float) / 127.5 - 1.0
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
    let batch = e.batch_size.max(1) as i64;
    let t_all = Instant::now();
    let mut source = serde_json::Map::new();
    let mut sampling = serde_json::Value::Null;
    let mut likelihood = serde_json::Value::Null;
    let (generated, n) = match (&e.run, &e.samples) {
        (Some(run), None) => {
            let n = e.n.unwrap_or(1000);
            if n == 0 {
                bail!("--n must be at least 1");
            }
            let family = family_of(run)?;
            tch::manual_seed(e.seed as i64);
            let t = Instant::now();
            let x = sample_run(
                run,
                &family,
                n as i64,
                batch,
                &SamplerOptions { sampler: e.sampler.as_deref(), steps: e.steps, weights: &e.weights },
                device,
            )?;
            let secs = t.elapsed().as_secs_f64();
            eprintln!(
                "sampled {n} images from the {family} run {} in {secs:.1} s ({:.4} s per sample)",
                run.display(),
                secs / n as f64
            );
            sampling = serde_json::json!({ "seconds": secs, "seconds_per_sample": secs / n as f64, "device": format!("{device:?}") });
            if family == "diffusion" {
                sampling["sampler"] = e.sampler.clone().into();
                sampling["steps"] = e.steps.into();
            }
            source.insert("run".into(), run.display().to_string().into());
            source.insert("family".into(), family.into());
            (quantize(&x), n)
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
            (images_of(&ds, &idx)?, n)
        }
        _ => bail!("give --run RUN_DIR (samples drawn from a trained run) or --samples FILE.h5"),
    };
    let (reference, real, ref_what, real_what) = real_sets(&e, &data, n)?;
    if generated.size()[1..] != reference.size()[1..] {
        bail!(
            "the samples are {:?} images but {data} has {:?}; compare images of one size and colour",
            &generated.size()[1..],
            &reference.size()[1..]
        );
    }
    if let (Some(run), Some("vae")) = (&e.run, source.get("family").and_then(|f| f.as_str())) {
        if !genlab_vae::train_kl::is_kl_run(run)? {
            likelihood = vae_likelihood(run, &reference, e.iwae_k, device)?;
        }
    }

    let net = feature_net(&e.features, device)?;
    let t = Instant::now();
    let embed = |x: &Tensor| embed_all(net.as_ref(), x, batch);
    let (f_ref, f_real, f_gen) = (embed(&reference)?, embed(&real)?, embed(&generated)?);
    eprintln!("features ({}, {}-d) of {} images in {:.1} s", net.name(), net.dim(), 3 * n, t.elapsed().as_secs_f64());
    let cfg = CompareConfig {
        kid: KidConfig { subsets: e.kid_subsets, seed: e.seed, ..KidConfig::default() },
        class_coverage: e.features.starts_with("classifier:"),
        ..CompareConfig::default()
    };
    let ref_stats = FeatureStats::fit(&f_ref.features).map_err(|e| e.to_string());
    let gen = compare(&f_ref, &ref_stats, &f_gen, &cfg)?;
    let base = compare(&f_ref, &ref_stats, &f_real, &cfg)?;
    print_table(&gen, &base);
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
            "features": net.name(),
            "feature_dim": net.dim(),
            "reference": ref_what,
            "real": real_what,
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
