//! What the harness leaves in a run directory, read back: TensorBoard event files through
//! TensorBoard's own reader (the `tensorboard` package in the project venv, which
//! `cargo xtask setup` installs), the `genlab runs` table, and the HTML report (its checks
//! in a browser are in tests/tests/report_browser.rs).
use genlab_core::checkpoint::CheckpointReader;
use genlab_core::optim::{Adam, AdamConfig};
use genlab_core::report::{self, RunInfo};
use genlab_core::seed::Rng;
use genlab_core::tensorboard::EventWriter;
use genlab_core::train::{self, Batch, BatchSource, HarnessConfig, Status, StepOutput, TrainTask};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use tch::nn::{self, Module, VarStore};
use tch::{Device, Kind, Tensor};

/// Batches of random "images" whose target is a fixed function of the pixels.
struct Source {
    step: u64,
}

impl BatchSource for Source {
    fn seek(&mut self, step: u64) -> genlab_core::Result<()> {
        self.step = step;
        Ok(())
    }
    fn next_batch(&mut self) -> genlab_core::Result<Batch> {
        let mut r = Rng::derive(11, &[self.step]);
        self.step += 1;
        let v: Vec<f32> = (0..8 * 4).map(|_| r.next_f64() as f32 * 2.0 - 1.0).collect();
        Ok(Batch { images: Tensor::from_slice(&v).view([8, 1, 2, 2]), labels: None })
    }
}

/// Called at the start of a training step (to stop the run, look at it while it runs, ...).
type Hook = Box<dyn FnMut(u64)>;

struct Task {
    vs: VarStore,
    net: nn::Sequential,
    opt: Adam,
    /// The loss is NaN at this step.
    nan_at: Option<u64>,
    hook: Option<Hook>,
}

impl Task {
    fn new() -> Self {
        let vs = VarStore::new(Device::Cpu);
        let net = nn::seq()
            .add(nn::linear(vs.root() / "fc1", 4, 16, Default::default()))
            .add_fn(|x| x.relu())
            .add(nn::linear(vs.root() / "fc2", 16, 1, Default::default()));
        let opt = Adam::new(&vs, AdamConfig::adam(1e-2)).expect("Adam over a fresh VarStore");
        Task { vs, net, opt, nan_at: None, hook: None }
    }
}

impl TrainTask for Task {
    fn train_step(&mut self, batch: &Batch, step: u64) -> genlab_core::Result<StepOutput> {
        if let Some(h) = self.hook.as_mut() {
            h(step);
        }
        let x = batch.images.flatten(1, -1);
        let target = x.sum_dim_intlist(-1, true, Kind::Float).sin();
        let loss = (self.net.forward(&x) - target).square().mean(Kind::Float);
        self.opt.backward_step(&loss);
        let l = if Some(step) == self.nan_at { f64::NAN } else { loss.double_value(&[]) };
        Ok(StepOutput { loss: l, metrics: vec![("lr".into(), self.opt.lr())] })
    }
    fn samples(&mut self, n: i64) -> genlab_core::Result<Tensor> {
        Ok(Tensor::rand([n, 1, 4, 4], (Kind::Float, Device::Cpu)) * 2.0 - 1.0)
    }
    fn checkpoint_groups(&self) -> BTreeMap<String, Vec<(String, Tensor)>> {
        let mut g = BTreeMap::new();
        g.insert("model".into(), self.vs.variables().into_iter().collect());
        g.insert("optim".into(), self.opt.state_tensors());
        g
    }
    fn restore(&mut self, ck: &CheckpointReader) -> genlab_core::Result<()> {
        ck.load_group_into("model", &self.vs)?;
        self.opt.load_state_tensors(&ck.read_group("optim")?)
    }
    fn config(&self) -> serde_json::Value {
        serde_json::json!({ "family": "toy", "model": "mlp", "data": "random" })
    }
    /// A known function of the step, so that a test can check what was logged.
    fn evaluate(&mut self, step: u64) -> genlab_core::Result<Vec<(String, f64)>> {
        Ok(vec![("score".into(), step as f64 * 0.5)])
    }
}

/// libtorch's generator is process-wide: runs in parallel test threads would interleave it.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cfg(out: &std::path::Path, steps: u64) -> HarnessConfig {
    HarnessConfig {
        checkpoint_every: 5,
        sample_every: 4,
        log_every: 1,
        n_samples: 6,
        progress: false,
        seed: 3,
        stop: genlab_core::train::StopToken::new(),
        ..HarnessConfig::new(out, steps)
    }
}

/// Every line of a run's metrics.jsonl.
fn metrics(run: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON metrics line"))
        .collect()
}

/// The project venv's Python, which must have the `tensorboard` package.
fn python() -> PathBuf {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let ok = Command::new(&py).args(["-c", "import tensorboard"]).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(
        ok,
        "{} cannot import tensorboard, which reads the event files back: `cargo xtask setup` installs it",
        py.display()
    );
    py
}

/// Everything TensorBoard's EventAccumulator (what `tensorboard --logdir` uses) makes of a
/// log directory: scalars as [step, value], images as [step, width, height, PNG hex].
const READ_EVENTS: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "images": 0})
acc.Reload()
tags = acc.Tags()
print(json.dumps({
    "file_version": acc.file_version,
    "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
    "images": {t: [[e.step, e.width, e.height, e.encoded_image_string.hex()] for e in acc.Images(t)]
               for t in tags["images"]},
}))
"#;

fn read_events(logdir: &Path) -> serde_json::Value {
    let out = Command::new(python()).args(["-c", READ_EVENTS]).arg(logdir).output().expect("running python");
    assert!(out.status.success(), "reading {}: {}", logdir.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("the reader prints JSON")
}

fn steps_values(v: &serde_json::Value) -> Vec<(u64, f64)> {
    v.as_array()
        .expect("a list of events")
        .iter()
        .map(|e| (e[0].as_u64().expect("step"), e[1].as_f64().expect("value")))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// TensorBoard keeps scalars as f32.
fn assert_close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{what}: {a} != {b}");
}

#[test]
fn event_files_read_back_in_tensorboard() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tb");
    let mut w = EventWriter::create(&dir).unwrap();
    for step in 1..=3u64 {
        w.scalars(step, &[("loss", 10.0 / step as f64), ("lr", 1e-3 * step as f64)]).unwrap();
    }
    let img = image::RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 50, y as u8 * 80, 7]));
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    w.png("samples", 3, &png).unwrap();
    assert!(w.png("samples", 4, b"not a png").unwrap_err().to_string().contains("not a PNG"));
    // A second writer in the same second gets a file of its own.
    let w2 = EventWriter::create(&dir).unwrap();
    assert_ne!(w.path(), w2.path());
    assert!(w.path().file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."));

    let ev = read_events(&dir);
    assert_eq!(ev["file_version"], 2.0);
    let loss = steps_values(&ev["scalars"]["loss"]);
    assert_eq!(loss.iter().map(|e| e.0).collect::<Vec<_>>(), [1, 2, 3]);
    for (step, v) in &loss {
        assert_close(*v, 10.0 / *step as f64, "loss");
    }
    assert_close(steps_values(&ev["scalars"]["lr"])[2].1, 3e-3, "lr");
    let images = ev["images"]["samples"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0], serde_json::json!([3, 5, 3, hex(&png)]));
}

#[test]
fn the_harness_logs_to_tensorboard_and_a_resume_replaces_what_followed_its_checkpoint() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    tch::manual_seed(1);
    train::run(&mut Task::new(), &mut Source { step: 0 }, &cfg(&run, 12)).unwrap();
    // As if the process died after logging step 12 but before its checkpoint was complete:
    // the resume starts from step 10, and the first event file holds steps 11 and 12 too.
    std::fs::remove_file(run.join("checkpoints/step-00000012/state.json")).unwrap();
    train::run(&mut Task::new(), &mut Source { step: 0 }, &HarnessConfig { resume: true, ..cfg(&run, 15) }).unwrap();
    let files = std::fs::read_dir(run.join("tb")).unwrap().count();
    assert_eq!(files, 2, "a resume writes a new event file");

    let ev = read_events(&run.join("tb"));
    let lines = metrics(&run);
    let train_lines: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("loss").is_some()).collect();
    let loss = steps_values(&ev["scalars"]["loss"]);
    assert_eq!(loss.iter().map(|e| e.0).collect::<Vec<_>>(), (1..=15).collect::<Vec<_>>(), "each step once");
    for ((step, v), line) in loss.iter().zip(&train_lines) {
        assert_eq!(line["step"], *step);
        assert_close(*v, line["loss"].as_f64().unwrap(), &format!("loss at step {step}"));
    }
    for tag in ["lr", "it_s"] {
        assert_eq!(steps_values(&ev["scalars"][tag]).len(), 15, "{tag}");
    }
    assert_close(steps_values(&ev["scalars"]["lr"])[14].1, 1e-2, "lr");
    // Evaluation metrics at every sample grid, as in metrics.jsonl.
    let score = steps_values(&ev["scalars"]["eval/score"]);
    assert_eq!(score, vec![(4, 2.0), (8, 4.0), (12, 6.0), (15, 7.5)]);
    let eval_lines: Vec<u64> =
        lines.iter().filter(|l| l.get("eval/score").is_some()).map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(eval_lines, [4, 8, 12, 15]);
    // The sample grids, byte for byte.
    let images = ev["images"]["samples"].as_array().unwrap();
    let steps: Vec<u64> = images.iter().map(|i| i[0].as_u64().unwrap()).collect();
    assert_eq!(steps, [4, 8, 12, 15]);
    let last = std::fs::read(run.join("samples/step-00000015.png")).unwrap();
    let info = genlab_core::tensorboard::png_info(&last).unwrap();
    assert_eq!(images[3], serde_json::json!([15, info.width, info.height, hex(&last)]));
    // 6 samples of 4x4 in a grid with padding.
    assert!(info.width > 4 && info.height > 4, "{info:?}");
}

/// Four runs made by the harness under `root`: finished, stopped, failed, and one seen
/// (with `list_runs` and `write_report`) while it runs.
struct Runs {
    root: PathBuf,
    while_running: Vec<RunInfo>,
    report_while_running: report::ReportSummary,
}

fn make_runs(root: &Path) -> Runs {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(1);
    let out = train::run(&mut Task::new(), &mut Source { step: 0 }, &cfg(&root.join("finished"), 8)).unwrap();
    assert_eq!(out.status, Status::Finished);

    let c = cfg(&root.join("stopped"), 8);
    let token = c.stop.clone();
    let mut task = Task::new();
    task.hook = Some(Box::new(move |step| {
        if step == 2 {
            token.request();
        }
    }));
    assert_eq!(train::run(&mut task, &mut Source { step: 0 }, &c).unwrap().status, Status::Stopped);

    let mut task = Task::new();
    task.nan_at = Some(4);
    assert!(train::run(&mut task, &mut Source { step: 0 }, &cfg(&root.join("failed"), 8)).is_err());

    let seen = Rc::new(RefCell::new(None));
    let mut task = Task::new();
    let (dir, out_html, seen2) = (root.join("running"), root.join("running.html"), Rc::clone(&seen));
    task.hook = Some(Box::new(move |step| {
        if step == 3 {
            let runs = report::list_runs(&dir).unwrap();
            let summary = report::write_report(&dir, &out_html).unwrap();
            *seen2.borrow_mut() = Some((runs, summary));
        }
    }));
    train::run(&mut task, &mut Source { step: 0 }, &cfg(&root.join("running"), 8)).unwrap();
    let (while_running, report_while_running) = seen.borrow_mut().take().expect("the hook ran");
    Runs { root: root.to_path_buf(), while_running, report_while_running }
}

#[test]
fn runs_lists_each_run_with_its_status_steps_and_latest_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = make_runs(&tmp.path().join("runs"));
    let listed = report::list_runs(&runs.root).unwrap();
    let names: Vec<String> = listed.iter().map(|r| r.dir.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["failed", "finished", "running", "stopped"]);
    let row = |name: &str| listed.iter().find(|r| r.dir.ends_with(name)).unwrap();
    let expect =
        [("finished", "finished", 8), ("stopped", "stopped", 3), ("failed", "failed", 4), ("running", "finished", 8)];
    for (name, status, steps) in expect {
        let r = row(name);
        assert_eq!(r.status.as_deref(), Some(status), "{name}");
        assert_eq!((r.steps, r.total_steps), (Some(steps), Some(8)), "{name}");
        assert_eq!((r.family.as_deref(), r.model.as_deref()), (Some("toy"), Some("mlp")), "{name}");
        let last = metrics(&r.dir).into_iter().rev().find(|l| l.get("loss").is_some()).unwrap();
        assert_eq!(r.latest["loss"], last["loss"].as_f64().unwrap(), "{name}");
        assert!(r.updated.is_some());
    }
    assert_eq!(row("finished").latest["eval/score"], 4.0);
    assert!(row("failed").message.as_deref().unwrap_or_default().contains("loss is NaN at step 4"));

    // Seen while it ran: status running, three steps of eight logged.
    let [r] = runs.while_running.as_slice() else { panic!("{:?}", runs.while_running) };
    assert_eq!((r.status.as_deref(), r.steps, r.total_steps), (Some("running"), Some(3), Some(8)));
    assert_eq!(runs.report_while_running.plots[0], "loss");

    let table = report::format_runs(&listed, &runs.root);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    assert!(lines[0].starts_with("RUN") && lines[0].contains("STATUS") && lines[0].contains("LOSS"), "{table}");
    let cells = |i: usize| lines[i].split_whitespace().take(5).collect::<Vec<_>>();
    assert_eq!(cells(1), ["failed", "toy", "mlp", "4/8", "failed"]);
    assert_eq!(cells(2), ["finished", "toy", "mlp", "8/8", "finished"]);
    assert_eq!(cells(4), ["stopped", "toy", "mlp", "3/8", "stopped"]);
    let loss = report::fmt_value(row("finished").latest["loss"]);
    assert!(lines[2].contains(&loss) && lines[2].contains("eval/score=4.000"), "{table}");
    // The columns line up.
    let status_col = lines[0].find("STATUS").unwrap();
    assert!(lines[1..].iter().all(|l| l[status_col..].starts_with(['f', 's', 'r'])), "{table}");
}

#[test]
fn a_report_shows_curves_samples_checkpoints_metrics_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = make_runs(&tmp.path().join("runs"));
    let run = runs.root.join("finished");
    std::fs::write(run.join("eval.json"), r#"{"fid": 12.5, "samples": 1000}"#).unwrap();
    let out = tmp.path().join("out/report.html");
    let s = report::write_report(&run, &out).unwrap();
    assert_eq!(s.out, out);
    assert_eq!(s.plots, ["loss", "it_s", "lr", "eval/score"]);
    assert_eq!(s.samples, [Some(4), Some(8)]);
    assert_eq!(s.checkpoints, 2);
    assert!(s.missing.is_empty(), "{:?}", s.missing);

    let html = std::fs::read_to_string(&out).unwrap();
    assert_eq!(html.matches("<svg").count(), 4);
    assert_eq!(html.matches("<polyline").count(), 4, "one line per metric");
    assert!(html.contains(r#"data-metric="eval/score""#));
    for step in [4, 8] {
        let png = std::fs::read(run.join(format!("samples/step-{step:08}.png"))).unwrap();
        assert!(html.contains(&format!("data:image/png;base64,{}", report::base64(&png))), "grid at {step}");
        assert!(html.contains(&format!("<figcaption>step {step}</figcaption>")));
    }
    assert!(html.contains(r#"<b id="status">finished</b>"#) && html.contains("8 / 8 steps"));
    assert!(html.contains("&quot;family&quot;: &quot;toy&quot;"), "the config, escaped");
    assert!(html.contains("<h3>eval.json</h3>") && html.contains("&quot;fid&quot;: 12.5"));
    assert!(html.contains("checkpoints/step-00000005") && html.contains("checkpoints/step-00000008"));
    assert!(html.contains("Last metrics line (step 8)"));
    // Self-contained: no script, nothing fetched.
    assert!(!html.contains("<script"));
    for fetch in [r#"src="http"#, r#"href="http"#, "url(", "@import"] {
        assert!(!html.contains(fetch), "{fetch}");
    }
}

#[test]
fn an_incomplete_or_older_run_still_gets_a_report_that_says_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = make_runs(&tmp.path().join("runs"));
    let run = runs.root.join("finished");
    std::fs::remove_file(run.join("metrics.jsonl")).unwrap();
    std::fs::remove_dir_all(run.join("samples")).unwrap();
    std::fs::remove_dir_all(run.join("tb")).unwrap();
    std::fs::remove_file(run.join("status.json")).unwrap();
    std::fs::write(run.join("config.json"), "{ \"family\": \"toy\", <cut").unwrap();
    let s = report::write_report(&run, &tmp.path().join("a.html")).unwrap();
    assert!(s.plots.is_empty() && s.samples.is_empty());
    assert_eq!(s.checkpoints, 2);
    let html = std::fs::read_to_string(tmp.path().join("a.html")).unwrap();
    for says in [
        "config.json is not valid JSON",
        "metrics.jsonl is missing",
        "status.json is missing",
        "No sample grids",
        "No TensorBoard event files",
    ] {
        assert!(s.missing.iter().any(|m| m.contains(says)), "{says}: {:?}", s.missing);
        assert!(html.contains(says), "{says}");
    }
    assert!(html.contains("{ &quot;family&quot;: &quot;toy&quot;, &lt;cut"), "the broken config as it is");
    assert!(html.contains(r#"id="missing""#));

    // As an older genlab wrote it: status.json without total_steps; a torn last metrics line.
    let old = runs.root.join("stopped");
    std::fs::write(old.join("status.json"), r#"{"status": "stopped", "step": 3, "message": null}"#).unwrap();
    let mut text = std::fs::read_to_string(old.join("metrics.jsonl")).unwrap();
    text.push_str("{\"step\": 4, \"lo");
    std::fs::write(old.join("metrics.jsonl"), text).unwrap();
    let s = report::write_report(&old, &tmp.path().join("b.html")).unwrap();
    assert_eq!(s.plots[0], "loss");
    assert!(s.missing.iter().any(|m| m.contains("no total_steps")), "{:?}", s.missing);
    assert!(
        s.missing.iter().any(|m| m.contains("1 line(s) could not be read") && m.contains("line 4")),
        "{:?}",
        s.missing
    );
    let listed = report::list_runs(&old).unwrap();
    assert_eq!(report::format_runs(&listed, &runs.root).lines().nth(1).unwrap().split_whitespace().nth(3), Some("3/?"));
}

#[test]
fn a_path_that_is_not_a_run_directory_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = make_runs(&tmp.path().join("runs"));
    let out = tmp.path().join("r.html");
    let err = |p: &Path| report::write_report(p, &out).unwrap_err().to_string();
    let missing = tmp.path().join("nope");
    assert_eq!(err(&missing), format!("{}: no such run directory", missing.display()));
    let file = tmp.path().join("r.txt");
    std::fs::write(&file, "x").unwrap();
    assert!(err(&file).contains("is a file, not a run directory"));
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = err(&empty);
    assert!(e.contains("not a run directory") && e.contains("metrics.jsonl"), "{e}");
    let e = err(&runs.root);
    assert!(e.contains("it holds runs (failed, finished, running, stopped)"), "{e}");
    let e = err(&runs.root.join("finished/checkpoints/step-00000008"));
    assert!(e.contains("checkpoint folder") && e.contains("finished"), "{e}");
    assert!(!out.exists());

    let e = report::list_runs(&missing).unwrap_err().to_string();
    assert!(e.contains("no such folder"), "{e}");
    assert!(report::list_runs(&empty).unwrap().is_empty());
}
