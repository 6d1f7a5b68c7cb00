//! Runs as types: which family and kind a run directory holds, its configuration read back as
//! its own type, and [`fit`], the one training entry point every family's `train` goes through.
//!
//! A run's `config.json` records its family (`"family": "gan"`) and, for the kinds beside a
//! family's plain run, its kind (`"kind": "sr"`). A run configuration type implements
//! [`RunKind`] to name both; [`read_config`] then reads a run directory or checkpoint folder as
//! that type, and refuses a run of another family or kind with [`CoreError::WrongRunKind`],
//! which names the run, the kind expected and the kind found.
use crate::error::{CoreError, Result};
pub use crate::error::{RunId, WrongKind};
use crate::train::{BatchSource, HarnessConfig, Outcome, TrainTask};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A run configuration type: what one kind of run writes as `config.json`.
pub trait RunKind: Serialize + DeserializeOwned {
    /// The `family` the configuration records.
    const FAMILY: &'static str;
    /// The `kind` it records; `None` for the family's plain run, which records none.
    const KIND: Option<&'static str>;
    /// The dataset the run trains on (a spec `genlab_data::open` reads).
    fn data(&self) -> &str;
    /// Images per step (per rank, in a data-parallel run).
    fn batch_size(&self) -> usize;

    /// What to do instead when a run of kind `found` was given where this kind was expected
    /// ("a super-resolution run upscales images: use `genlab gan upscale`"), for the message of
    /// [`CoreError::WrongRunKind`].
    fn hint(_found: &RunId) -> Option<String> {
        None
    }

    /// This kind as a [`RunId`].
    fn id() -> RunId {
        RunId { family: Self::FAMILY.into(), kind: Self::KIND.map(str::to_string) }
    }
}

/// `impl RunKind` for a run configuration struct whose `data: String` and `batch_size: usize`
/// fields are the dataset and batch size: `run_kind!(GanRunConfig, "gan")` for a family's plain
/// run, `run_kind!(SrRunConfig, "gan", "super-resolution")` for another kind.
#[macro_export]
macro_rules! run_kind {
    ($ty:ty, $family:expr) => {
        $crate::run_kind!(@impl $ty, $family, None, |_| None);
    };
    ($ty:ty, $family:expr, hint: $hint:expr) => {
        $crate::run_kind!(@impl $ty, $family, None, $hint);
    };
    ($ty:ty, $family:expr, $kind:expr) => {
        $crate::run_kind!(@impl $ty, $family, Some($kind), |_| None);
    };
    ($ty:ty, $family:expr, $kind:expr, hint: $hint:expr) => {
        $crate::run_kind!(@impl $ty, $family, Some($kind), $hint);
    };
    (@impl $ty:ty, $family:expr, $kind:expr, $hint:expr) => {
        impl $crate::run::RunKind for $ty {
            const FAMILY: &'static str = $family;
            const KIND: Option<&'static str> = $kind;
            fn data(&self) -> &str {
                &self.data
            }
            fn batch_size(&self) -> usize {
                self.batch_size
            }
            fn hint(found: &$crate::run::RunId) -> Option<String> {
                let hint: fn(&$crate::run::RunId) -> Option<String> = $hint;
                hint(found)
            }
        }
    };
}

/// The configuration at `path`: a run directory's `config.json`, or, for a checkpoint folder (or a
/// run directory that has lost its `config.json`), the configuration its newest checkpoint stored.
/// Returns the file it came from and the JSON.
pub fn config_json(path: &Path) -> Result<(PathBuf, serde_json::Value)> {
    let file = path.join(crate::checkpoint::CONFIG_FILE);
    let from_run = file.is_file() && !path.join(crate::checkpoint::STATE_FILE).is_file();
    let (file, text) = if from_run {
        let text = std::fs::read_to_string(&file).map_err(|e| CoreError::io(&file, e))?;
        (file, text)
    } else {
        let ck = crate::train::open_checkpoint(path)?;
        return Ok((ck.dir.join(crate::checkpoint::CONFIG_FILE), ck.config));
    };
    let value = serde_json::from_str(&text).map_err(|e| CoreError::file(&file, format!("not JSON: {e}")))?;
    Ok((file, value))
}

/// Check that `config` (read from `path`) is a run of `R`'s family and kind.
pub fn expect_kind<R: RunKind>(config: &serde_json::Value, path: &Path) -> Result<()> {
    let found = RunId::of_config(config);
    let expected = R::id();
    if found != expected {
        let hint = R::hint(&found).map(|h| format!(" ({h})")).unwrap_or_default();
        return Err(CoreError::WrongRunKind(Box::new(WrongKind { run: path.to_path_buf(), expected, found, hint })));
    }
    Ok(())
}

/// `config` (read from `file`) as `R`, after [`expect_kind`].
pub fn parse_config<R: RunKind>(config: serde_json::Value, file: &Path) -> Result<R> {
    parse(config, file, file)
}

fn parse<R: RunKind>(config: serde_json::Value, run: &Path, file: &Path) -> Result<R> {
    expect_kind::<R>(&config, run)?;
    serde_json::from_value(config)
        .map_err(|e| CoreError::file(file, format!("not a valid {} run configuration: {e}", R::id())))
}

/// The configuration of the run directory or checkpoint folder at `path`, as `R`; a run of
/// another family or kind is [`CoreError::WrongRunKind`].
pub fn read_config<R: RunKind>(path: &Path) -> Result<R> {
    let (file, value) = config_json(path)?;
    parse(value, path, &file)
}

/// The newest checkpoint of the run directory (or the checkpoint folder) at `path`, and its
/// configuration as `R`; a run of another family or kind is [`CoreError::WrongRunKind`].
pub fn open_checkpoint<R: RunKind>(path: &Path) -> Result<(crate::checkpoint::CheckpointReader, R)> {
    let ck = crate::train::open_checkpoint(path)?;
    let run = parse(ck.config.clone(), path, &ck.dir.join(crate::checkpoint::CONFIG_FILE))?;
    Ok((ck, run))
}

/// The training settings every family takes on top of its preset: the CLI's `--lr`,
/// `--batch-size` and `--precision`, or the same keys in a TOML file (`lr = 1e-3`,
/// `batch-size = 64`, `precision = "bf16"`). `None` keeps the preset's value.
/// With the `clap` feature, the flags `--lr`, `--batch-size` and `--precision`.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct Overrides {
    /// The learning rate (both networks' for a GAN; default: the preset's).
    #[cfg_attr(feature = "clap", arg(long))]
    pub lr: Option<f64>,
    /// Images per step (default: the preset's).
    #[cfg_attr(feature = "clap", arg(long))]
    pub batch_size: Option<usize>,
    /// fp32, bf16 or fp16 (mixed precision; default: the preset's, fp32).
    #[cfg_attr(feature = "clap", arg(long))]
    pub precision: Option<crate::Precision>,
}

impl Overrides {
    /// Overrides from TOML text (`file` names it in errors); an unknown key is an error.
    pub fn from_toml(text: &str, file: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| CoreError::file(file, format!("not a training settings file: {e}")))
    }
}

/// `run` with `overrides` applied. Works on any run configuration through its serialised form: `lr`
/// sets the field `lr`, or `lr_g` and `lr_d` of a GAN; a kind that records no precision trains in
/// fp32 only, and another precision is an error, as is a learning rate or batch size of 0.
pub fn apply_overrides<R: RunKind>(run: R, overrides: &Overrides) -> Result<R> {
    let bad = |m: String| CoreError::Config(format!("{} run: {m}", R::id()));
    let mut v = serde_json::to_value(&run).map_err(|e| bad(e.to_string()))?;
    let obj = v.as_object_mut().ok_or_else(|| bad("the configuration is not a JSON object".into()))?;
    if let Some(lr) = overrides.lr {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(bad(format!("the learning rate must be positive, got {lr}")));
        }
        let keys: Vec<&str> = ["lr", "lr_g", "lr_d"].into_iter().filter(|k| obj.contains_key(*k)).collect();
        if keys.is_empty() {
            return Err(bad("it has no learning rate to set".into()));
        }
        for k in keys {
            obj.insert(k.into(), lr.into());
        }
    }
    if let Some(b) = overrides.batch_size {
        if b == 0 {
            return Err(bad("the batch size must be at least 1".into()));
        }
        obj.insert("batch_size".into(), b.into());
    }
    if let Some(p) = overrides.precision {
        if obj.contains_key("precision") {
            obj.insert("precision".into(), serde_json::to_value(p).map_err(|e| bad(e.to_string()))?);
        } else if p != crate::Precision::Fp32 {
            return Err(bad(format!("it trains in fp32 only, not {p:?}")));
        }
    }
    serde_json::from_value(v).map_err(|e| bad(e.to_string()))
}

/// A trained run that draws new images. Every family's loaded run implements it (the `load`
/// module of genlab-vae, genlab-gan and genlab-diffusion), and `genlab_eval::evaluate` samples
/// through it, so evaluation works on a run of any family.
pub trait ImageSampler {
    /// `n` new images in [-1, 1], [n, channels, height, width], on the run's device.
    fn sample(&mut self, n: i64) -> Result<tch::Tensor>;
    /// What is sampled and how, for reports ("diffusion run runs/ddpm: dpmpp-2m, 20 steps, ema weights").
    fn describe(&self) -> String;
    /// Figures the run computes on real images besides sampling (a VAE's ELBO and IWAE bound on
    /// `reference`, [n, c, h, w] in [-1, 1]), as JSON and a one-line summary; none by default.
    fn reference_metrics(&mut self, _reference: &tch::Tensor) -> Result<Option<(serde_json::Value, String)>> {
        Ok(None)
    }
}

/// What [`fit`] needs besides the run: the harness settings (steps, run directory, seed,
/// `resume`, checkpoint and sample intervals) and the device.
#[derive(Debug, Clone)]
pub struct FitOptions {
    pub harness: HarnessConfig,
    pub device: tch::Device,
}

/// How a [`fit`] started, for the task builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new run: the configuration came from the `fresh` closure.
    Fresh,
    /// A resumed run: the configuration is the run's own `config.json`.
    Resume,
}

/// The configuration a [`fit`] trains: with `resume` and a `config.json` in the run directory,
/// the run's own (so the model matches its checkpoints; a run of another kind is
/// [`CoreError::WrongRunKind`]); else `fresh()`. In a data-parallel run every rank takes rank 0's,
/// so that a configuration estimated from data (a latent scale) is the same everywhere.
pub fn resolve_config<R: RunKind>(harness: &HarnessConfig, fresh: impl FnOnce() -> Result<R>) -> Result<(R, Start)> {
    let file = harness.out.join(crate::checkpoint::CONFIG_FILE);
    let (mut run, start) = if harness.resume && file.is_file() {
        (read_config::<R>(&harness.out)?, Start::Resume)
    } else {
        (fresh()?, Start::Fresh)
    };
    if let Some(g) = crate::dist::group() {
        let json = |e: serde_json::Error| CoreError::Config(format!("broadcasting the run configuration: {e}"));
        let mut bytes = serde_json::to_vec(&run).map_err(json)?;
        g.broadcast_bytes(&mut bytes, 0)?;
        run = serde_json::from_slice(&bytes).map_err(json)?;
    }
    Ok((run, start))
}

/// The `config.json` of the run a [`fit`] with `harness` continues (with `resume` and a config in
/// the run directory), or `None` when it starts a new run: what a family reads to tell which of
/// its kinds of run to train.
pub fn resumed_config(harness: &HarnessConfig) -> Result<Option<serde_json::Value>> {
    if harness.resume && harness.out.join(crate::checkpoint::CONFIG_FILE).is_file() {
        return Ok(Some(config_json(&harness.out)?.1));
    }
    Ok(None)
}

/// Train a run: resolve its configuration ([`resolve_config`]), open its batches with `data`,
/// seed libtorch with the run's seed (the initial weights are a function of it), build the task
/// with `build`, and run the harness (progress, checkpoints, exact resume, Ctrl-C, data-parallel
/// gradient averaging when a process group is up).
pub fn fit<R: RunKind, T: TrainTask>(
    opts: &FitOptions,
    fresh: impl FnOnce() -> Result<R>,
    data: impl FnOnce(&R) -> Result<Box<dyn BatchSource>>,
    build: impl FnOnce(R, Start, tch::Device) -> Result<T>,
) -> Result<Outcome> {
    let (run, start) = resolve_config(&opts.harness, fresh)?;
    let mut batches = data(&run)?;
    crate::seed::manual_seed(opts.harness.seed as i64);
    let mut task = build(run, start, opts.device)?;
    crate::train::run(&mut task, batches.as_mut(), &opts.harness)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize)]
    struct Plain {
        family: String,
        data: String,
    }
    impl RunKind for Plain {
        const FAMILY: &'static str = "toy";
        const KIND: Option<&'static str> = None;
        fn data(&self) -> &str {
            &self.data
        }
        fn batch_size(&self) -> usize {
            1
        }
    }

    #[derive(Serialize, Deserialize)]
    struct Other {
        family: String,
        kind: String,
    }
    impl RunKind for Other {
        const FAMILY: &'static str = "toy";
        const KIND: Option<&'static str> = Some("other");
        fn data(&self) -> &str {
            ""
        }
        fn batch_size(&self) -> usize {
            1
        }
    }

    #[derive(Serialize, Deserialize)]
    struct Gan {
        family: String,
        data: String,
        lr_g: f64,
        lr_d: f64,
        batch_size: usize,
    }
    crate::run_kind!(Gan, "toy-gan");

    #[test]
    fn overrides_set_the_fields_every_kind_has() {
        let gan = Gan { family: "toy-gan".into(), data: "d".into(), lr_g: 1.0, lr_d: 2.0, batch_size: 8 };
        let o = Overrides::from_toml("lr = 0.5\nbatch-size = 4", Path::new("t.toml")).unwrap();
        let g = apply_overrides(gan, &o).unwrap();
        assert_eq!((g.lr_g, g.lr_d, g.batch_size), (0.5, 0.5, 4));
        // No precision field: fp32 only.
        let bf16 = Overrides { precision: Some(crate::Precision::Bf16), ..Default::default() };
        let e = apply_overrides(g, &bf16).err().unwrap().to_string();
        assert!(e.contains("toy-gan run") && e.contains("fp32 only"), "{e}");
        let plain = Plain { family: "toy".into(), data: "d".into() };
        let e = apply_overrides(plain, &Overrides { lr: Some(1e-3), ..Default::default() }).err().unwrap();
        assert!(e.to_string().contains("no learning rate"), "{e}");
        let e = Overrides::from_toml("steps = 5", Path::new("t.toml")).unwrap_err().to_string();
        assert!(e.contains("t.toml") && e.contains("steps"), "{e}");
    }

    #[test]
    fn a_run_of_another_kind_is_a_typed_error_naming_both_kinds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"family": "toy", "kind": "other"}"#).unwrap();
        let other: Other = read_config(dir.path()).unwrap();
        assert_eq!(other.kind, "other");
        let e = read_config::<Plain>(dir.path()).err().unwrap();
        match &e {
            CoreError::WrongRunKind(w) => {
                assert_eq!(w.run, dir.path());
                assert_eq!(w.expected.to_string(), "toy");
                assert_eq!(w.found.to_string(), "toy/other");
            }
            other => panic!("expected WrongRunKind, got {other:?}"),
        }
        assert!(e.to_string().contains("a `toy/other` run, not a `toy` run"), "{e}");
        std::fs::write(dir.path().join("config.json"), r#"{"family": "vae"}"#).unwrap();
        let e = read_config::<Plain>(dir.path()).err().unwrap();
        assert!(e.to_string().contains("belongs to the `vae` family, not `toy`"), "{e}");

        std::fs::write(dir.path().join("config.json"), r#"{"family": "toy"}"#).unwrap();
        let e = read_config::<Plain>(dir.path()).err().unwrap();
        assert!(e.to_string().contains("`data`"), "a missing field is named: {e}");
        std::fs::write(dir.path().join("config.json"), "{").unwrap();
        assert!(read_config::<Plain>(dir.path()).err().unwrap().to_string().contains("not JSON"));
    }
}
