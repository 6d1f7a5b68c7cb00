//! Sample quality of a run of any family, or of a set of images, in one call: the library side of
//! `genlab eval`.
//!
//! ```no_run
//! use genlab_eval::evaluate::{evaluate, sample_images, EvalOptions};
//! // `run`: any family's loaded run, e.g. `genlab_gan::load::GanSampler::open(path, device)?`.
//! fn score(run: &mut dyn genlab_core::run::ImageSampler) -> genlab_eval::Result<()> {
//!     let images = sample_images(run, 1000, 250)?;
//!     let opts = EvalOptions { features: "classifier:runs/clf-fm".into(), ..EvalOptions::new("fashion-mnist") };
//!     let e = evaluate(&images, &opts)?;
//!     println!("FD {:?} (real-vs-real {:?})", e.generated.frechet_distance, e.baseline.frechet_distance);
//!     Ok(())
//! }
//! ```
use crate::error::{EvalError, Result};
use crate::features::embed_all;
use crate::report::{compare, CompareConfig, Comparison};
use crate::{FeatureNet, FeatureStats, Features, KidConfig};
use genlab_core::run::ImageSampler;
use genlab_core::seed::Rng;
use genlab_data::{Dataset, OpenOptions, Selection};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// What [`evaluate`] compares the generated images with, and how.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// The real dataset the images imitate (a spec `genlab_data::open` reads).
    pub data: String,
    /// How to read `data` and the reference set.
    pub read: OpenOptions,
    /// Which items of `data` to draw the real baseline from.
    pub select: Selection,
    /// The reference set, used whole (default: `DATA:test` when that exists, else a random half of `data`).
    pub reference: Option<String>,
    /// `inception` (pytorch-fid's FID Inception-v3) or `classifier:RUN` (a trained classifier run).
    pub features: String,
    /// KID subsets to average over.
    pub kid_subsets: usize,
    /// Images per feature batch.
    pub batch_size: usize,
    pub seed: u64,
    pub device: Device,
}

impl EvalOptions {
    /// Defaults: Inception features, 100 KID subsets, batches of 250, seed 0, on the CPU.
    pub fn new(data: &str) -> Self {
        EvalOptions {
            data: data.to_string(),
            read: OpenOptions::default(),
            select: Selection::default(),
            reference: None,
            features: "inception".into(),
            kid_subsets: 100,
            batch_size: 250,
            seed: 0,
            device: Device::Cpu,
        }
    }
}

/// What [`evaluate`] measured: the generated images and, as the baseline, real images, each
/// against the reference set.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Evaluation {
    /// Images per set.
    pub n: usize,
    /// The feature network's name and dimension.
    pub features: String,
    pub feature_dim: i64,
    /// How the reference and the real sets were chosen.
    pub reference: String,
    pub real: String,
    pub generated: Comparison,
    pub baseline: Comparison,
}

/// `n` images from `sampler`, in batches of `batch`, on the CPU and rounded to 8 bits as saved
/// samples are, so a run and a file of its samples evaluate alike.
pub fn sample_images(sampler: &mut dyn ImageSampler, n: usize, batch: usize) -> Result<Tensor> {
    if n == 0 {
        return Err(EvalError::Config("the number of samples must be at least 1".into()));
    }
    let batch = batch.max(1);
    let mut out = Vec::new();
    for lo in (0..n).step_by(batch) {
        out.push(sampler.sample(batch.min(n - lo) as i64)?.to_device(Device::Cpu));
    }
    Ok(quantize(&Tensor::cat(&out, 0)))
}

/// Round to 8 bits and back.
pub fn quantize(images: &Tensor) -> Tensor {
    genlab_core::images::to_u8(images).to_kind(Kind::Float) / 127.5 - 1.0
}

/// Compare `generated` ([n, c, h, w] in [-1, 1]) with the reference set of `opts.data`, beside a
/// real-vs-reference baseline of as many images: Fréchet distance, KID, precision/recall,
/// Inception Score and (with classifier features) class coverage.
pub fn evaluate(generated: &Tensor, opts: &EvalOptions) -> Result<Evaluation> {
    let n = generated.size().first().copied().unwrap_or(0) as usize;
    evaluate_against(generated, &real_sets(opts, n)?, opts)
}

/// The reference set and the real set of the baseline, `n` images each ([n, c, h, w] in [-1, 1]),
/// and how each was chosen.
#[derive(Debug)]
pub struct RealSets {
    pub reference: Tensor,
    pub real: Tensor,
    pub reference_what: String,
    pub real_what: String,
}

/// [`evaluate`] with the real sets given ([`real_sets`]).
pub fn evaluate_against(generated: &Tensor, sets: &RealSets, opts: &EvalOptions) -> Result<Evaluation> {
    let (reference, real) = (&sets.reference, &sets.real);
    let (ref_what, real_what) = (sets.reference_what.clone(), sets.real_what.clone());
    let n = generated.size().first().copied().unwrap_or(0) as usize;
    if generated.size()[1..] != reference.size()[1..] {
        return Err(EvalError::Shape(format!(
            "the samples are {:?} images but {} has {:?}; compare images of one size and colour",
            &generated.size()[1..],
            opts.data,
            &reference.size()[1..]
        )));
    }
    let net = feature_net(&opts.features, opts.device)?;
    let batch = opts.batch_size.max(1) as i64;
    let embed = |x: &Tensor| embed_all(net.as_ref(), x, batch);
    let (f_ref, f_real, f_gen) = (embed(reference)?, embed(real)?, embed(generated)?);
    let cfg = CompareConfig {
        kid: KidConfig { subsets: opts.kid_subsets, seed: opts.seed, ..KidConfig::default() },
        class_coverage: opts.features.starts_with("classifier:"),
        ..CompareConfig::default()
    };
    let ref_stats = FeatureStats::fit(&f_ref.features).map_err(|e| e.to_string());
    Ok(Evaluation {
        n,
        features: net.name(),
        feature_dim: net.dim(),
        reference: ref_what,
        real: real_what,
        generated: compare(&f_ref, &ref_stats, &f_gen, &cfg)?,
        baseline: compare(&f_ref, &ref_stats, &f_real, &cfg)?,
    })
}

/// How long drawing a report's samples took, and with what settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SamplingTime {
    pub seconds: f64,
    pub seconds_per_sample: f64,
    pub device: String,
    /// The sampler's settings that were given (a diffusion run's `sampler` and `steps`).
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

/// Everything `genlab eval` reports: where the images came from, the comparison with the reference
/// set beside its real-vs-reference baseline, the sampling time and the run's own figures. It
/// serialises to the `--json` file; `Display` gives the table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    /// `run` and `family` for a run, `samples` for a file.
    pub source: serde_json::Map<String, serde_json::Value>,
    pub data: String,
    pub n: usize,
    pub features: String,
    pub feature_dim: i64,
    pub reference: String,
    pub real: String,
    pub generated_vs_reference: Comparison,
    pub real_vs_reference: Comparison,
    pub sampling: Option<SamplingTime>,
    /// [`ImageSampler::reference_metrics`] (a VAE run's likelihood bounds).
    #[serde(rename = "vae_likelihood")]
    pub run_metrics: Option<serde_json::Value>,
    #[serde(skip)]
    pub run_summary: Option<String>,
    /// Wall time of the whole evaluation, sampling included.
    pub seconds: f64,
    /// Wall time of the feature extraction and the comparisons.
    #[serde(skip)]
    pub feature_seconds: f64,
}

impl std::fmt::Display for EvalReport {
    /// The metrics table, generated beside real-vs-real, then the run's own figures and the sampling time.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (gen, base) = (&self.generated_vs_reference, &self.real_vs_reference);
        let opt = |v: Option<f64>, p: usize| v.map(|v| format!("{v:.p$}")).unwrap_or_else(|| "n/a".into());
        writeln!(f, "{:<22} {:>14} {:>14}", "metric", "generated", "real-vs-real")?;
        let mut row = |name: &str, a: String, b: String| writeln!(f, "{name:<22} {a:>14} {b:>14}");
        row("Fréchet distance", opt(gen.frechet_distance, 4), opt(base.frechet_distance, 4))?;
        let kid = |c: &Comparison| format!("{:.3}±{:.3}", c.kid.mean * 1e3, c.kid.std * 1e3);
        row("KID x 1000", kid(gen), kid(base))?;
        let pr = |v: f64| format!("{v:.4}");
        row("precision", pr(gen.precision_recall.precision), pr(base.precision_recall.precision))?;
        row("recall", pr(gen.precision_recall.recall), pr(base.precision_recall.recall))?;
        let is = |c: &Comparison| {
            c.inception_score.map(|s| format!("{:.3}±{:.3}", s.mean, s.std)).unwrap_or_else(|| "n/a".into())
        };
        row("Inception Score", is(gen), is(base))?;
        if gen.class_coverage.is_some() {
            let cov = |c: &Comparison| opt(c.class_coverage.as_ref().map(|c| c.coverage), 3);
            row("class coverage", cov(gen), cov(base))?;
        }
        if let Some(s) = &self.run_summary {
            writeln!(f, "{s}")?;
        }
        if let Some(s) = &self.sampling {
            writeln!(f, "sampling: {:.5} s per sample", s.seconds_per_sample)?;
        }
        Ok(())
    }
}

/// Draw `n` images from `sampler` (in batches of `opts.batch_size`) and evaluate them as
/// [`evaluate`] does, with the run's own figures on the reference set: what `genlab eval --run`
/// reports. `source` names the run; `settings` are the sampler settings to record.
pub fn evaluate_sampler(
    sampler: &mut dyn ImageSampler,
    n: usize,
    source: serde_json::Map<String, serde_json::Value>,
    settings: serde_json::Map<String, serde_json::Value>,
    opts: &EvalOptions,
) -> Result<EvalReport> {
    let t0 = Instant::now();
    let generated = sample_images(sampler, n, opts.batch_size)?;
    let seconds = t0.elapsed().as_secs_f64();
    let sampling = SamplingTime {
        seconds,
        seconds_per_sample: seconds / n as f64,
        device: format!("{:?}", opts.device),
        settings,
    };
    let sets = real_sets(opts, n)?;
    let metrics = sampler.reference_metrics(&sets.reference)?;
    report(&generated, &sets, source, Some(sampling), metrics, opts, t0)
}

/// Evaluate the first `n` images (all by default) of an HDF5 file of samples (`images`: uint8
/// 0-255, or float in [0, 1] or [-1, 1]): what `genlab eval --samples` reports.
pub fn evaluate_file(path: &Path, n: Option<usize>, opts: &EvalOptions) -> Result<EvalReport> {
    let t0 = Instant::now();
    let ds = genlab_data::H5Dataset::open(path, genlab_data::h5::DEFAULT_IMAGES, None)?;
    let n = n.unwrap_or(ds.len());
    if n == 0 || n > ds.len() {
        return Err(EvalError::file(path, format!("{} images; --n {n} is not between 1 and that", ds.len())));
    }
    let generated = images_of(&ds, &(0..n).collect::<Vec<_>>())?;
    let mut source = serde_json::Map::new();
    source.insert("samples".into(), path.display().to_string().into());
    report(&generated, &real_sets(opts, n)?, source, None, None, opts, t0)
}

fn report(
    generated: &Tensor,
    sets: &RealSets,
    source: serde_json::Map<String, serde_json::Value>,
    sampling: Option<SamplingTime>,
    metrics: Option<(serde_json::Value, String)>,
    opts: &EvalOptions,
    t0: Instant,
) -> Result<EvalReport> {
    let t = Instant::now();
    let ev = evaluate_against(generated, sets, opts)?;
    let (run_metrics, run_summary) = metrics.unzip();
    Ok(EvalReport {
        source,
        data: opts.data.clone(),
        n: ev.n,
        features: ev.features,
        feature_dim: ev.feature_dim,
        reference: ev.reference,
        real: ev.real,
        generated_vs_reference: ev.generated,
        real_vs_reference: ev.baseline,
        sampling,
        run_metrics,
        run_summary,
        seconds: t0.elapsed().as_secs_f64(),
        feature_seconds: t.elapsed().as_secs_f64(),
    })
}

/// The feature network `spec` names: `inception` or `classifier:RUN`.
pub fn feature_net(spec: &str, device: Device) -> Result<Box<dyn FeatureNet>> {
    if spec == "inception" {
        let path = crate::inception::default_weights_path().ok_or_else(|| {
            EvalError::Config(
                "neither GENLAB_DATA_DIR nor HOME is set: no place to find the FID Inception weights".into(),
            )
        })?;
        if !path.is_file() {
            return Err(EvalError::file(
                &path,
                "the FID Inception-v3 weights (features `inception`) are not here; run `cargo xtask download \
                 fid-inception` (or `cargo xtask download fid-inception --from pt_inception-2015-12-05-6726825d.pth` \
                 with a copy fetched elsewhere), or use classifier features (`classifier:RUN`)",
            ));
        }
        let (vs, net) = crate::inception::FidInceptionV3::load(&path, device)?;
        return Ok(Box::new(InceptionWithWeights { _vs: vs, net }));
    }
    if let Some(run) = spec.strip_prefix("classifier:") {
        return Ok(Box::new(crate::classifier::load(Path::new(run), device)?));
    }
    Err(EvalError::Config(format!(
        "features `{spec}`: expected inception or classifier:RUN (a `genlab eval train-classifier` run)"
    )))
}

/// The Inception network and the variables it reads.
struct InceptionWithWeights {
    _vs: tch::nn::VarStore,
    net: crate::inception::FidInceptionV3,
}

impl FeatureNet for InceptionWithWeights {
    fn name(&self) -> String {
        self.net.name()
    }
    fn dim(&self) -> i64 {
        self.net.dim()
    }
    fn embed(&self, images: &Tensor) -> Result<Features> {
        self.net.embed(images)
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

/// The reference set (`opts.reference`, else `DATA:test` when that exists, else a random half of
/// `opts.data`) and the real set of the baseline (random images of `opts.data`, disjoint from the
/// reference when both come from it), `n` images each.
pub fn real_sets(opts: &EvalOptions, n: usize) -> Result<RealSets> {
    let data = &opts.data;
    let ds = genlab_data::open_selected(data, &opts.read, &opts.select)?;
    let mut rng = Rng::derive(opts.seed, &[0x7265_6673]);
    let test_split = format!("{data}:test");
    let reference = match opts.reference.clone() {
        Some(r) => Some(r),
        None => genlab_data::builtin::open_builtin(&test_split).filter(|r| r.is_ok()).map(|_| test_split),
    };
    let need = |have: usize, what: &str| -> Result<()> {
        if have < n {
            return Err(EvalError::TooFewSamples(format!(
                "{what} has {have} images, fewer than the {n} samples to compare (lower --n)"
            )));
        }
        Ok(())
    };
    // A reference set is used whole: only the read options apply to it, not the selection.
    let read = OpenOptions { crop: Default::default(), skip_bad: false, ..opts.read.clone() };
    match reference {
        Some(spec) => {
            let rs = genlab_data::open_with(&spec, &read)?;
            need(rs.len(), &spec)?;
            need(ds.len(), data)?;
            let r = images_of(rs.as_ref(), &pick(rs.len(), n, &mut rng))?;
            let x = images_of(ds.as_ref(), &pick(ds.len(), n, &mut rng))?;
            let (reference_what, real_what) =
                (format!("{n} random images of {spec}"), format!("{n} random images of {data}"));
            Ok(RealSets { reference: r, real: x, reference_what, real_what })
        }
        None => {
            if ds.len() < 2 * n {
                return Err(EvalError::TooFewSamples(format!(
                    "{data} has {} images and no test split: the reference and the real baseline are two disjoint \
                     halves of {n}, so --n can be at most {} (or name a --reference)",
                    ds.len(),
                    ds.len() / 2
                )));
            }
            let idx = pick(ds.len(), 2 * n, &mut rng);
            let (a, b) = idx.split_at(n);
            let what = |part: &str| format!("{n} random images of {data} ({part} of a disjoint split)");
            Ok(RealSets {
                reference: images_of(ds.as_ref(), a)?,
                real: images_of(ds.as_ref(), b)?,
                reference_what: what("one half"),
                real_what: what("the other half"),
            })
        }
    }
}
