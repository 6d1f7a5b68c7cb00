//! The training harness every family uses.
//!
//! A family implements [`TrainTask`] (one optimisation step, samples for monitoring,
//! its tensors for checkpoints); a data loader implements [`BatchSource`]. [`run`]
//! does the rest: progress bar (loss, it/s, ETA), metrics as JSON lines and as TensorBoard
//! scalars (`tb/`, with the sample grids as images), periodic checkpoints and sample grids,
//! optional evaluation metrics, exact `--resume`, a clean stop on Ctrl-C (or SIGTERM)
//! that saves first, and a stop with a clear message on a non-finite loss that keeps
//! the last good checkpoint.
//!
//! Exact resume: before step `s` the harness seeds libtorch with
//! [`crate::seed::step_seed`]`(seed, s)` and the data source is positioned at `s`, so a
//! resumed run replays the randomness of an uninterrupted one. On the CPU the final
//! weights are bit-identical.
//!
//! Data-parallel runs (several processes, see [`crate::dist`]) go through the same
//! [`run`]; its docs say what changes.
use crate::checkpoint::{self, CheckpointData, CheckpointReader};
use crate::error::{CoreError, Result};
use crate::images;
use crate::seed;
use crate::tensorboard::EventWriter;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tch::Tensor;

/// A batch of images in [-1, 1] and optional integer labels.
#[derive(Debug)]
pub struct Batch {
    /// [batch, channels, height, width], float
    pub images: Tensor,
    /// [batch], int64
    pub labels: Option<Tensor>,
}

/// A deterministic stream of batches: the batch for step `s` depends only on the
/// source's seed and `s`.
pub trait BatchSource {
    /// Position the source so that the next batch is the one for training step `step`.
    fn seek(&mut self, step: u64) -> Result<()>;
    fn next_batch(&mut self) -> Result<Batch>;
}

/// What one training step reports. `loss` is checked for finiteness.
#[derive(Debug, Clone, Default)]
pub struct StepOutput {
    pub loss: f64,
    pub metrics: Vec<(String, f64)>,
}

/// One family's model(s), optimizer(s) and objective.
pub trait TrainTask {
    /// One optimisation step on `batch` (libtorch has been seeded for this step).
    fn train_step(&mut self, batch: &Batch, step: u64) -> Result<StepOutput>;
    /// `n` samples in [-1, 1] for the monitoring grid, [n, c, h, w].
    fn samples(&mut self, n: i64) -> Result<Tensor>;
    /// Named tensor groups to checkpoint (`model`, `ema`, `optim`, ...).
    fn checkpoint_groups(&self) -> BTreeMap<String, Vec<(String, Tensor)>>;
    /// Restore from a checkpoint written from [`TrainTask::checkpoint_groups`].
    fn restore(&mut self, ckpt: &CheckpointReader) -> Result<()>;
    /// The run configuration (model and training), written as `config.json`.
    fn config(&self) -> serde_json::Value;
    /// Small extra state to persist (loss scaler, counters).
    fn extra_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    fn restore_extra_state(&mut self, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }
    /// Evaluation metrics (name, value), computed whenever a sample grid is written; they
    /// are logged as `eval/<name>` in the metrics and in TensorBoard. None by default.
    fn evaluate(&mut self, _step: u64) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
}

/// Harness settings (the CLI's `--steps`, `--out`, `--seed`, `--resume`, ...; with the `clap`
/// feature, those flags).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct HarnessConfig {
    /// Training steps (total, including steps done before a --resume).
    #[cfg_attr(feature = "clap", arg(long))]
    pub steps: u64,
    /// Run directory: config, checkpoints, samples and metrics go here.
    #[cfg_attr(feature = "clap", arg(long))]
    pub out: PathBuf,
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0))]
    pub seed: u64,
    /// Continue the run in --out from its newest checkpoint.
    #[cfg_attr(feature = "clap", arg(long))]
    pub resume: bool,
    /// Checkpoint every N steps (and always at the end, and on Ctrl-C).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 500))]
    pub checkpoint_every: u64,
    /// Write a sample grid every N steps (0: only at the end).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 500))]
    pub sample_every: u64,
    /// Log metrics every N steps.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 10))]
    pub log_every: u64,
    /// How many of the newest checkpoints to keep.
    #[cfg_attr(feature = "clap", arg(skip = 3usize))]
    pub keep_checkpoints: usize,
    /// Images in each sample grid.
    #[cfg_attr(feature = "clap", arg(skip = 64i64))]
    pub n_samples: i64,
    /// Show a progress bar.
    #[cfg_attr(feature = "clap", arg(long = "no-progress", action = clap::ArgAction::SetFalse, help = "Hide the progress bar"))]
    pub progress: bool,
    /// Set to ask the run to save and stop; by default the process-wide token that
    /// Ctrl-C and SIGTERM set.
    #[serde(skip)]
    #[cfg_attr(feature = "clap", arg(skip))]
    pub stop: StopToken,
}

/// A flag that asks a running harness to save a checkpoint and stop after the current step.
#[derive(Debug, Clone)]
pub struct StopToken(Arc<AtomicBool>);

impl Default for StopToken {
    /// The process-wide token set by Ctrl-C / SIGTERM (see [`install_stop_handler`]).
    fn default() -> Self {
        StopToken(Arc::clone(GLOBAL_STOP.get_or_init(|| Arc::new(AtomicBool::new(false)))))
    }
}

impl StopToken {
    /// A token of its own, not connected to signals.
    pub fn new() -> Self {
        StopToken(Arc::new(AtomicBool::new(false)))
    }
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether a stop was asked for (without consuming the request).
    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

impl HarnessConfig {
    pub fn new(out: impl Into<PathBuf>, steps: u64) -> Self {
        HarnessConfig {
            steps,
            out: out.into(),
            seed: 0,
            resume: false,
            checkpoint_every: 1000,
            sample_every: 1000,
            log_every: 10,
            keep_checkpoints: 3,
            n_samples: 64,
            progress: true,
            stop: StopToken::default(),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Finished,
    /// Stopped by Ctrl-C / SIGTERM after saving a checkpoint.
    Stopped,
    Failed,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    /// Steps completed.
    pub step: u64,
    pub last_checkpoint: Option<PathBuf>,
    pub last_loss: Option<f64>,
}

/// The files of a run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn samples(&self) -> PathBuf {
        self.root.join("samples")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn status_file(&self) -> PathBuf {
        self.root.join("status.json")
    }
    pub fn config_file(&self) -> PathBuf {
        self.root.join(checkpoint::CONFIG_FILE)
    }
    /// The TensorBoard log directory (`tensorboard --logdir` this, or a folder of runs).
    pub fn tensorboard(&self) -> PathBuf {
        self.root.join("tb")
    }

    /// The newest complete checkpoint of this run.
    pub fn latest(&self) -> Result<CheckpointReader> {
        let p = checkpoint::latest_checkpoint(&self.checkpoints())
            .ok_or_else(|| CoreError::NoCheckpoint(self.checkpoints()))?;
        CheckpointReader::open(&p)
    }

    fn write_status(&self, status: Status, step: u64, total_steps: u64, message: Option<&str>) -> Result<()> {
        let v = serde_json::json!({ "status": status, "step": step, "total_steps": total_steps, "message": message });
        checkpoint::write_atomic(&self.status_file(), serde_json::to_string_pretty(&v).unwrap_or_default().as_bytes())
    }
}

/// Open a run directory (its newest checkpoint) or a checkpoint folder directly.
pub fn open_checkpoint(path: &Path) -> Result<CheckpointReader> {
    if path.join(checkpoint::STATE_FILE).is_file() {
        return CheckpointReader::open(path);
    }
    if !path.exists() {
        return Err(CoreError::file(path, "no such run directory or checkpoint"));
    }
    RunDir::new(path).latest()
}

/// What `genlab info` prints of a run directory (its newest checkpoint) or a checkpoint folder:
/// the step, the configuration, every tensor of every group with its shape and kind, and the
/// devices this machine has.
pub fn describe_checkpoint(path: &Path) -> Result<String> {
    use std::fmt::Write;
    let ck = open_checkpoint(path)?;
    let config = serde_json::to_string_pretty(&ck.config).map_err(|e| CoreError::Other(e.to_string()))?;
    let mut out = format!("checkpoint: {}\nstep: {}\nconfig:\n{config}\n", ck.dir.display(), ck.step());
    let entries = std::fs::read_dir(&ck.dir).map_err(|error| CoreError::Io { path: ck.dir.clone(), error })?;
    let mut groups: Vec<PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "safetensors")).collect();
    groups.sort();
    for g in groups {
        let mut tensors = checkpoint::read_safetensors(&g)?;
        let total: i64 = tensors.iter().map(|(_, t)| t.numel() as i64).sum();
        let name = g.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let _ = writeln!(out, "\n{name}: {} tensors, {total} values", tensors.len());
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        for (n, t) in tensors {
            let _ = writeln!(out, "  {n:<50} {:?} {:?}", t.size(), t.kind());
        }
    }
    let _ = writeln!(out, "\ndevices: {}", crate::device::describe());
    Ok(out)
}

static GLOBAL_STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();
static HANDLER: OnceLock<bool> = OnceLock::new();

/// Install the Ctrl-C / SIGTERM handler (once per process) that sets the process-wide
/// [`StopToken`]. Returns whether a handler is in place.
pub fn install_stop_handler() -> bool {
    *HANDLER.get_or_init(|| {
        let token = StopToken::default();
        ctrlc::set_handler(move || token.request()).is_ok()
    })
}

fn sample_seed(seed: u64) -> i64 {
    (seed::Rng::derive(seed, &[u64::MAX]).next_u64() >> 1) as i64
}

/// Drop metric lines beyond `step` (written after the checkpoint a resume starts from).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .map(|s| s <= step)
                .unwrap_or(false)
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    checkpoint::write_atomic(path, out.as_bytes())
}

/// Remove the event files of an earlier attempt at a run that is starting afresh.
fn remove_event_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with("events.out.tfevents.") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What rank 0 found in the run directory before the first step.
struct Prepared {
    start: u64,
    last_ckpt: Option<PathBuf>,
}

/// Create the run directory, or check and restore the checkpoint a resume starts from.
fn prepare(task: &mut dyn TrainTask, run: &RunDir, cfg: &HarnessConfig) -> Result<Prepared> {
    std::fs::create_dir_all(&run.root).map_err(|e| CoreError::io(&run.root, e))?;
    let existing = checkpoint::latest_checkpoint(&run.checkpoints());
    if cfg.resume {
        let Some(dir) = existing else {
            return Err(CoreError::NoCheckpoint(run.checkpoints()));
        };
        let ck = CheckpointReader::open(&dir)?;
        task.restore(&ck)?;
        task.restore_extra_state(ck.state.get("extra").unwrap_or(&serde_json::Value::Null))?;
        let saved_seed = ck.state.get("seed").and_then(|s| s.as_u64());
        if saved_seed.is_some_and(|s| s != cfg.seed) {
            return Err(CoreError::Config(format!(
                "{}: the run was started with --seed {}, not {}; resume with the same seed",
                dir.display(),
                saved_seed.unwrap_or_default(),
                cfg.seed
            )));
        }
        let start = ck.step();
        truncate_metrics(&run.metrics(), start)?;
        Ok(Prepared { start, last_ckpt: Some(dir) })
    } else if let Some(dir) = existing {
        Err(CoreError::Config(format!(
            "{} already holds a checkpoint ({}); pass --resume to continue it or choose another --out",
            run.root.display(),
            dir.display()
        )))
    } else {
        let _ = std::fs::remove_file(run.metrics());
        remove_event_files(&run.tensorboard());
        Ok(Prepared { start: 0, last_ckpt: None })
    }
}

/// Distributed start: rank 0 has prepared (and maybe restored); tell the others the
/// outcome and the start step, let them restore the same checkpoint, then broadcast
/// every tensor of the task from rank 0 so that all ranks start identical.
fn join_start(
    task: &mut dyn TrainTask,
    run: &RunDir,
    g: &crate::dist::ProcessGroup,
    prepared: Result<Prepared>,
) -> Result<Prepared> {
    let mut head = Tensor::from_slice(&[
        i64::from(prepared.is_ok()),
        prepared.as_ref().map(|p| p.start as i64).unwrap_or_default(),
    ]);
    g.broadcast(&mut head, 0)?;
    let prepared = prepared?;
    if head.int64_value(&[0]) != 1 {
        return Err(CoreError::Dist {
            rank: g.rank(),
            world: g.world_size(),
            what: "starting the run".into(),
            message: "rank 0 could not prepare the run directory (its error says why)".into(),
        });
    }
    let start = head.int64_value(&[1]).max(0) as u64;
    if g.rank() != 0 && start > 0 {
        let dir = run.checkpoints().join(checkpoint::step_dir_name(start));
        let restored = CheckpointReader::open(&dir).and_then(|ck| {
            task.restore(&ck)?;
            task.restore_extra_state(ck.state.get("extra").unwrap_or(&serde_json::Value::Null))
        });
        restored.map_err(|e| CoreError::Dist {
            rank: g.rank(),
            world: g.world_size(),
            what: format!("restoring {}, the checkpoint rank 0 resumes from", dir.display()),
            message: format!(
                "{e} (resuming a distributed run needs the run directory on a filesystem every rank sees)"
            ),
        })?;
    }
    for (_, tensors) in sorted_groups(task) {
        for (_, mut t) in tensors {
            g.broadcast(&mut t, 0)?;
        }
    }
    Ok(Prepared { start, last_ckpt: prepared.last_ckpt })
}

/// The task's tensors in the same order on every rank (groups often come from a
/// `VarStore`'s hash map, whose order differs between processes).
fn sorted_groups(task: &dyn TrainTask) -> BTreeMap<String, Vec<(String, Tensor)>> {
    let mut groups = task.checkpoint_groups();
    for tensors in groups.values_mut() {
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
    }
    groups
}

/// Fail unless every rank holds the same trainable parameters, bit for bit (gradients
/// are averaged identically everywhere, so any difference is a bug or a rank that
/// trained differently). Compares per-tensor checksums with rank 0's.
fn check_in_sync(task: &dyn TrainTask, g: &crate::dist::ProcessGroup, step: u64) -> Result<()> {
    let mut names = Vec::new();
    let mut sums = Vec::new();
    for (group, tensors) in sorted_groups(task) {
        for (name, t) in tensors.iter().filter(|(_, t)| t.requires_grad()) {
            let t = t.detach().to_kind(tch::Kind::Double).to_device(tch::Device::Cpu);
            let w = Tensor::arange(t.numel() as i64, (tch::Kind::Double, tch::Device::Cpu)).remainder(7.0) + 1.0;
            sums.push(t.sum(tch::Kind::Double).double_value(&[]));
            sums.push((t.view([-1]) * w).sum(tch::Kind::Double).double_value(&[]));
            names.push(format!("{group}/{name}"));
        }
    }
    let mine = Tensor::from_slice(&sums);
    let mut theirs = mine.copy();
    g.broadcast(&mut theirs, 0)?;
    let local: Vec<f64> = Vec::<f64>::try_from(&theirs).map_err(CoreError::Torch)?;
    let differ: Vec<&str> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            local[2 * i].to_bits() != sums[2 * i].to_bits() || local[2 * i + 1].to_bits() != sums[2 * i + 1].to_bits()
        })
        .map(|(_, n)| n.as_str())
        .collect();
    let mut flag = Tensor::from_slice(&[differ.len() as i64]);
    g.all_reduce(&mut flag, crate::dist::ReduceOp::Max)?;
    if flag.int64_value(&[0]) > 0 {
        let detail = if differ.is_empty() {
            "another rank's parameters differ from rank 0's".to_string()
        } else {
            format!("{} tensor(s) differ from rank 0's, first `{}`", differ.len(), differ[0])
        };
        return Err(CoreError::Dist {
            rank: g.rank(),
            world: g.world_size(),
            what: format!("checking that the ranks hold the same parameters at step {step}"),
            message: detail,
        });
    }
    Ok(())
}

/// Train `task` on `data` as `cfg` says. See the module docs.
///
/// In a distributed run (a default [`crate::dist`] group), every rank calls `run` with its
/// shard of the data: rank 0 alone writes the run directory (config, checkpoints, metrics,
/// TensorBoard, samples, status, the progress bar); all ranks start from rank 0's state,
/// take the same steps, agree on stops (Ctrl-C on any rank, a non-finite loss on any
/// rank), log the loss averaged over ranks, and check at every checkpoint and at the end
/// that they still hold identical parameters.
pub fn run(task: &mut dyn TrainTask, data: &mut dyn BatchSource, cfg: &HarnessConfig) -> Result<Outcome> {
    let dist = crate::dist::group();
    let rank = dist.as_ref().map_or(0, |g| g.rank());
    let world = dist.as_ref().map_or(1, |g| g.world_size());
    let leader = rank == 0;
    let run = RunDir::new(&cfg.out);
    let prepared = if leader { prepare(task, &run, cfg) } else { Ok(Prepared { start: 0, last_ckpt: None }) };
    let Prepared { start, mut last_ckpt } = match &dist {
        Some(g) => join_start(task, &run, g, prepared)?,
        None => prepared?,
    };
    let config = task.config();
    if leader {
        checkpoint::write_atomic(
            &run.config_file(),
            serde_json::to_string_pretty(&config).unwrap_or_default().as_bytes(),
        )?;
        run.write_status(Status::Running, start, cfg.steps, None)?;
    }
    install_stop_handler();
    let _ = cfg.stop.take();

    let mut metrics = if leader {
        Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(run.metrics())
                .map_err(|e| CoreError::io(run.metrics(), e))?,
        )
    } else {
        None
    };
    // A resume writes a new event file; its start marker makes TensorBoard drop what the
    // earlier files hold past the checkpoint, as the metrics file was truncated above.
    let mut tb = if leader {
        let mut tb = EventWriter::create(&run.tensorboard())?;
        tb.session_start(start + 1)?;
        Some(tb)
    } else {
        None
    };
    let bar =
        if cfg.progress && leader { indicatif::ProgressBar::new(cfg.steps) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} {per_sec} ETA {eta} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(start);

    let save = |task: &mut dyn TrainTask, step: u64| -> Result<PathBuf> {
        let data = CheckpointData {
            groups: task.checkpoint_groups(),
            config: config.clone(),
            state: serde_json::json!({ "step": step, "seed": cfg.seed, "extra": task.extra_state() }),
        };
        checkpoint::save_checkpoint(&run.checkpoints(), step, &data, cfg.keep_checkpoints)
    };
    // The sample grid (a PNG file and a TensorBoard image) and any evaluation metrics.
    let sample =
        |task: &mut dyn TrainTask, step: u64, tb: &mut EventWriter, metrics: &mut std::fs::File| -> Result<()> {
            seed::manual_seed(sample_seed(cfg.seed));
            let imgs = tch::no_grad(|| task.samples(cfg.n_samples))?;
            let path = run.samples().join(format!("step-{step:08}.png"));
            images::save_samples(&imgs, &path, None)?;
            let png = std::fs::read(&path).map_err(|e| CoreError::io(&path, e))?;
            tb.png("samples", step, &png)?;
            seed::manual_seed(sample_seed(cfg.seed));
            let evals = tch::no_grad(|| task.evaluate(step))?;
            if !evals.is_empty() {
                let named: Vec<(String, f64)> = evals.into_iter().map(|(k, v)| (format!("eval/{k}"), v)).collect();
                let mut line = serde_json::json!({ "step": step });
                for (k, v) in &named {
                    line[k] = serde_json::json!(v);
                }
                writeln!(metrics, "{line}").map_err(|e| CoreError::io(run.metrics(), e))?;
                let scalars: Vec<(&str, f64)> = named.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                tb.scalars(step, &scalars)?;
            }
            Ok(())
        };

    data.seek(start)?;
    let t0 = Instant::now();
    let mut last_loss = None;
    let mut step = start;
    while step < cfg.steps {
        seed::manual_seed(seed::rank_step_seed(cfg.seed, step, rank));
        let batch = data.next_batch()?;
        let mut out = task.train_step(&batch, step)?;
        let mut stop = cfg.stop.take();
        if let Some(g) = &dist {
            // A collective inside the step (the gradient all-reduce) may have failed.
            g.check()?;
            // One small all-reduce: the stop flag and the loss and metrics, averaged. A
            // non-finite value on any rank is non-finite everywhere, so all ranks stop together.
            let mut v: Vec<f64> = vec![f64::from(u8::from(stop)), out.loss];
            v.extend(out.metrics.iter().map(|(_, x)| *x));
            let mut t = Tensor::from_slice(&v);
            g.all_reduce(&mut t, crate::dist::ReduceOp::Sum)?;
            let v = Vec::<f64>::try_from(&t).map_err(CoreError::Torch)?;
            stop = v[0] > 0.0;
            out.loss = v[1] / world as f64;
            for ((_, m), x) in out.metrics.iter_mut().zip(&v[2..]) {
                *m = x / world as f64;
            }
        }
        let bad = std::iter::once(("loss".to_string(), out.loss))
            .chain(out.metrics.iter().cloned())
            .find(|(_, v)| !v.is_finite());
        if let Some((what, value)) = bad {
            bar.abandon();
            let last_good = last_ckpt
                .as_ref()
                .map(|p: &PathBuf| p.display().to_string())
                .unwrap_or_else(|| "none (no checkpoint was written yet)".into());
            let what = if world > 1 { format!("{what} (mean over {world} ranks)") } else { what };
            let msg = format!("{what} is {value} at step {step}");
            if leader {
                run.write_status(Status::Failed, step, cfg.steps, Some(&msg))?;
            }
            return Err(CoreError::NonFinite { step, what, value, last_good });
        }
        step += 1;
        last_loss = Some(out.loss);
        if let (Some(metrics), Some(tb)) = (metrics.as_mut(), tb.as_mut()) {
            if step % cfg.log_every.max(1) == 0 || step == cfg.steps {
                let elapsed = t0.elapsed().as_secs_f64();
                let it_s = (step - start) as f64 / elapsed.max(1e-9);
                let mut line = serde_json::json!({ "step": step, "loss": out.loss, "time_s": elapsed, "it_s": it_s });
                for (k, v) in &out.metrics {
                    line[k] = serde_json::json!(v);
                }
                writeln!(metrics, "{line}").map_err(|e| CoreError::io(run.metrics(), e))?;
                let mut scalars = vec![("loss", out.loss), ("it_s", it_s)];
                scalars.extend(out.metrics.iter().map(|(k, v)| (k.as_str(), *v)));
                tb.scalars(step, &scalars)?;
                bar.set_message(format!("loss {:.4}", out.loss));
            }
            bar.set_position(step);
            if cfg.sample_every > 0 && step % cfg.sample_every == 0 && step < cfg.steps {
                sample(task, step, tb, metrics)?;
            }
        }
        if stop || (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0) || step == cfg.steps {
            if let Some(g) = &dist {
                check_in_sync(task, g, step)?;
            }
            if let Some(metrics) = metrics.as_mut() {
                metrics.flush().map_err(|e| CoreError::io(run.metrics(), e))?;
                last_ckpt = Some(save(task, step)?);
                if !cfg.progress {
                    eprintln!(
                        "step {step}/{}: loss {:.5}, checkpoint {}",
                        cfg.steps,
                        out.loss,
                        last_ckpt.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
                    );
                }
            }
        }
        if stop {
            bar.abandon_with_message(format!("stopped at step {step}; resume with --resume"));
            if leader {
                run.write_status(Status::Stopped, step, cfg.steps, Some("interrupted; checkpoint saved"))?;
            }
            return Ok(Outcome { status: Status::Stopped, step, last_checkpoint: last_ckpt, last_loss });
        }
    }
    if step == start && start > 0 {
        // Resumed a run that had already finished.
        last_ckpt = last_ckpt.or_else(|| checkpoint::latest_checkpoint(&run.checkpoints()));
        if let Some(g) = &dist {
            check_in_sync(task, g, step)?;
        }
    }
    if let (Some(metrics), Some(tb)) = (metrics.as_mut(), tb.as_mut()) {
        sample(task, step, tb, metrics)?;
    }
    bar.finish_with_message(format!("done: loss {}", last_loss.map(|l| format!("{l:.4}")).unwrap_or_default()));
    if leader {
        run.write_status(Status::Finished, step, cfg.steps, None)?;
    }
    Ok(Outcome { status: Status::Finished, step, last_checkpoint: last_ckpt, last_loss })
}
