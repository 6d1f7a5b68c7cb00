//! A run directory as one self-contained HTML page ([`write_report`]), and a table of the
//! runs under a folder ([`list_runs`], [`format_runs`]).
//!
//! The page needs nothing but a browser: curves are inline SVG drawn here, sample grids are
//! PNG data URIs, there is no script and nothing is fetched. A run that is incomplete or was
//! written by an older genlab still gets a page of what is there, with what is missing said
//! plainly at the top.
use crate::checkpoint;
use crate::error::{CoreError, Result};
use crate::tensorboard::png_info;
use crate::train::RunDir;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// At most this many sample grids go into a page; a longer run shows evenly spaced ones.
pub const MAX_SAMPLE_GRIDS: usize = 24;
/// At most this many points per curve; longer series keep each bucket's extremes.
const MAX_POINTS: usize = 1000;
/// Positive values spanning at least this ratio are plotted on a log scale.
const LOG_SCALE_RATIO: f64 = 100.0;

/// What [`write_report`] put in the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSummary {
    /// The HTML file written.
    pub out: PathBuf,
    /// One curve per metric, by name.
    pub plots: Vec<String>,
    /// Steps of the sample grids shown (`None` for a grid whose file name has no step).
    pub samples: Vec<Option<u64>>,
    /// Complete checkpoints listed.
    pub checkpoints: usize,
    /// What the run lacks or could not be read, one plain sentence each.
    pub missing: Vec<String>,
}

impl std::fmt::Display for ReportSummary {
    /// "wrote OUT (3 curves, 4 sample grids, 2 checkpoints)" and a note per thing missing.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (p, s, c) = (self.plots.len(), self.samples.len(), self.checkpoints);
        write!(f, "wrote {} ({p} curves, {s} sample grids, {c} checkpoints)", self.out.display())?;
        self.missing.iter().try_for_each(|m| write!(f, "\n  note: {m}"))
    }
}

/// A file that may be absent or unreadable.
#[derive(Debug, Clone)]
enum Loaded<T> {
    Missing,
    Bad(String),
    Ok(T),
}

impl<T> Loaded<T> {
    fn ok(&self) -> Option<&T> {
        match self {
            Loaded::Ok(v) => Some(v),
            _ => None,
        }
    }
}

/// One line of `metrics.jsonl`: its step and numeric values.
#[derive(Debug, Clone)]
struct MetricsLine {
    step: u64,
    values: BTreeMap<String, f64>,
}

#[derive(Debug, Clone)]
struct Metrics {
    lines: Vec<MetricsLine>,
    /// (line number, reason) of lines that could not be read.
    bad: Vec<(usize, String)>,
}

/// Everything read from a run directory.
#[derive(Debug)]
struct Run {
    dir: RunDir,
    config: Loaded<(serde_json::Value, String)>,
    /// The raw text of a config.json that is not valid JSON.
    config_raw: Option<String>,
    status: Loaded<serde_json::Value>,
    metrics: Loaded<Metrics>,
    eval: Loaded<serde_json::Value>,
    samples: Vec<(Option<u64>, PathBuf)>,
    checkpoints: Vec<(u64, PathBuf, u64)>,
    latest_checkpoint: Option<PathBuf>,
    has_events: bool,
}

/// Names in a run directory that say it is one (a checkpoint folder has `config.json` too,
/// but also `state.json`).
const RUN_MARKERS: &[&str] = &["status.json", "metrics.jsonl", "checkpoints", "samples", "tb"];

/// Whether `dir` looks like a run directory the harness wrote (complete or not).
pub fn is_run_dir(dir: &Path) -> bool {
    dir.is_dir()
        && (RUN_MARKERS.iter().any(|m| dir.join(m).exists())
            || (dir.join(checkpoint::CONFIG_FILE).is_file() && !dir.join(checkpoint::STATE_FILE).exists()))
}

fn check_run_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Err(CoreError::file(dir, "no such run directory"));
    }
    if !dir.is_dir() {
        return Err(CoreError::file(dir, "is a file, not a run directory"));
    }
    if dir.join(checkpoint::STATE_FILE).is_file() {
        let run = dir.parent().and_then(Path::parent).map(|p| p.display().to_string()).unwrap_or_default();
        return Err(CoreError::file(
            dir,
            format!("is a checkpoint folder, not a run directory; report on its run instead ({run})"),
        ));
    }
    if is_run_dir(dir) {
        return Ok(());
    }
    let inside: Vec<String> =
        find_runs(dir, 3).iter().take(5).map(|p| p.strip_prefix(dir).unwrap_or(p).display().to_string()).collect();
    let hint = if inside.is_empty() {
        String::new()
    } else {
        format!("; it holds runs ({}): pass one of them, or list them with `genlab runs`", inside.join(", "))
    };
    Err(CoreError::file(
        dir,
        format!(
            "not a run directory: it has none of config.json, status.json, metrics.jsonl, checkpoints/, samples/, tb/{hint}"
        ),
    ))
}

fn read_json(path: &Path) -> Loaded<serde_json::Value> {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Loaded::Missing,
        Err(e) => Loaded::Bad(format!("cannot be read: {e}")),
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(v) => Loaded::Ok(v),
            Err(e) => Loaded::Bad(format!("is not valid JSON ({e})")),
        },
    }
}

fn parse_metrics(text: &str) -> Metrics {
    let mut lines = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                bad.push((i + 1, format!("not JSON ({e})")));
                continue;
            }
        };
        let Some(obj) = v.as_object() else {
            bad.push((i + 1, "not a JSON object".into()));
            continue;
        };
        let Some(step) = obj.get("step").and_then(|s| s.as_u64()) else {
            bad.push((i + 1, "no integer `step`".into()));
            continue;
        };
        let values = obj
            .iter()
            .filter(|(k, _)| k.as_str() != "step")
            .filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x)))
            .collect();
        lines.push(MetricsLine { step, values });
    }
    Metrics { lines, bad }
}

/// The step in a `step-00001500.png` file name.
fn step_of(path: &Path) -> Option<u64> {
    path.file_stem()?.to_str()?.strip_prefix("step-")?.parse().ok()
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

impl Run {
    fn load(root: &Path) -> Result<Run> {
        check_run_dir(root)?;
        let dir = RunDir::new(root);
        let (config, config_raw) = match read_json(&dir.config_file()) {
            Loaded::Ok(v) => {
                let pretty = serde_json::to_string_pretty(&v).unwrap_or_default();
                (Loaded::Ok((v, pretty)), None)
            }
            Loaded::Bad(why) => (Loaded::Bad(why), std::fs::read(dir.config_file()).ok()),
            Loaded::Missing => (Loaded::Missing, None),
        };
        let config_raw = config_raw.map(|b| {
            let mut s = String::from_utf8_lossy(&b).into_owned();
            if s.len() > 64 * 1024 {
                let mut cut = 64 * 1024;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
                s.push_str("\n[... cut]");
            }
            s
        });
        let metrics = match std::fs::read(dir.metrics()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Loaded::Missing,
            Err(e) => Loaded::Bad(format!("cannot be read: {e}")),
            Ok(bytes) => Loaded::Ok(parse_metrics(&String::from_utf8_lossy(&bytes))),
        };
        let mut samples: Vec<(Option<u64>, PathBuf)> = std::fs::read_dir(dir.samples())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_file() && p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")))
                    .map(|p| (step_of(&p), p))
                    .collect()
            })
            .unwrap_or_default();
        // Grids with a step in step order, then any others by name.
        samples.sort_by(|a, b| (a.0.is_none(), a.0, &a.1).cmp(&(b.0.is_none(), b.0, &b.1)));
        let checkpoints = checkpoint::list_checkpoints(&dir.checkpoints())
            .into_iter()
            .map(|(step, p)| {
                let size = dir_size(&p);
                (step, p, size)
            })
            .collect();
        let has_events = std::fs::read_dir(dir.tensorboard())
            .map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().contains("tfevents")))
            .unwrap_or(false);
        Ok(Run {
            status: read_json(&dir.status_file()),
            eval: read_json(&dir.root.join("eval.json")),
            latest_checkpoint: checkpoint::latest_checkpoint(&dir.checkpoints()),
            config,
            config_raw,
            metrics,
            samples,
            checkpoints,
            has_events,
            dir,
        })
    }

    fn config_str(&self, key: &str) -> Option<String> {
        let v = self.config.ok()?.0.get(key)?;
        Some(v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
    }

    fn status_str(&self, key: &str) -> Option<String> {
        self.status.ok()?.get(key)?.as_str().map(str::to_string)
    }

    fn status_u64(&self, key: &str) -> Option<u64> {
        self.status.ok()?.get(key)?.as_u64()
    }

    fn metric_lines(&self) -> &[MetricsLine] {
        self.metrics.ok().map(|m| m.lines.as_slice()).unwrap_or(&[])
    }

    /// Steps done: the furthest of status.json and the metrics (a running run's status
    /// holds the step it started from).
    fn steps_done(&self) -> Option<u64> {
        let last_logged = self.metric_lines().iter().map(|l| l.step).max();
        let last_ckpt = self.checkpoints.last().map(|c| c.0);
        [self.status_u64("step"), last_logged, last_ckpt].into_iter().flatten().max()
    }

    /// The newest value of every metric (`time_s` left out).
    fn latest(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for line in self.metric_lines() {
            for (k, v) in &line.values {
                if k != "time_s" {
                    out.insert(k.clone(), *v);
                }
            }
        }
        out
    }

    /// Every metric as a (step, value) series, `loss` first, then by name.
    fn series(&self) -> Vec<(String, Vec<(f64, f64)>)> {
        let mut by_name: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        for line in self.metric_lines() {
            for (k, v) in &line.values {
                if k != "time_s" && v.is_finite() {
                    by_name.entry(k.as_str()).or_default().push((line.step as f64, *v));
                }
            }
        }
        let mut out: Vec<(String, Vec<(f64, f64)>)> = by_name.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        out.sort_by_key(|(k, _)| (k != "loss", k.starts_with("eval/"), k.clone()));
        out
    }

    /// What the run lacks, one sentence each.
    fn missing(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.config {
            Loaded::Missing => out.push("config.json is missing: the run's configuration is unknown.".into()),
            Loaded::Bad(why) => out.push(format!("config.json {why}; its text is shown below as it is.")),
            Loaded::Ok(_) => {}
        }
        match &self.status {
            Loaded::Missing => out.push(
                "status.json is missing: whether the run finished, stopped or failed is unknown (older genlab versions did not write it)."
                    .into(),
            ),
            Loaded::Bad(why) => out.push(format!("status.json {why}.")),
            Loaded::Ok(v) if v.get("total_steps").is_none() => out.push(
                "status.json has no total_steps (written by an older genlab): the planned number of steps is unknown."
                    .into(),
            ),
            Loaded::Ok(_) => {}
        }
        match &self.metrics {
            Loaded::Missing => out.push("metrics.jsonl is missing: there are no curves to draw.".into()),
            Loaded::Bad(why) => out.push(format!("metrics.jsonl {why}.")),
            Loaded::Ok(m) => {
                if m.lines.is_empty() && m.bad.is_empty() {
                    out.push("metrics.jsonl is empty: no step was logged.".into());
                }
                if let Some((line, why)) = m.bad.first() {
                    out.push(format!(
                        "metrics.jsonl: {} line(s) could not be read and are left out (line {line}: {why}).",
                        m.bad.len()
                    ));
                }
            }
        }
        if self.samples.is_empty() {
            out.push("No sample grids (samples/*.png).".into());
        }
        if self.checkpoints.is_empty() {
            out.push("No complete checkpoints (checkpoints/step-*).".into());
        }
        if !self.has_events {
            out.push("No TensorBoard event files (tb/; older genlab versions did not write them).".into());
        }
        if let Loaded::Bad(why) = &self.eval {
            out.push(format!("eval.json {why}."));
        }
        out
    }
}

/// HTML-escape text for element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Standard base64 (RFC 4648) with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A value with about four significant digits.
pub fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e6).contains(&a) {
        return format!("{v:.3e}");
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    format!("{v:.decimals$}")
}

fn fmt_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// About `n` round tick positions covering [lo, hi], and the decimals their labels need.
fn nice_ticks(lo: f64, hi: f64, n: usize) -> (Vec<f64>, usize) {
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let first = (lo / step).ceil() as i64;
    let ticks = (first..).map(|k| k as f64 * step).take_while(|t| *t <= hi + step * 1e-9).take(50).collect();
    (ticks, decimals)
}

/// Keep at most `MAX_POINTS` points: each bucket's smallest and largest value, in order.
fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points.to_vec();
    }
    let per = points.len().div_ceil(MAX_POINTS / 2);
    let mut out = Vec::with_capacity(MAX_POINTS + 2);
    for bucket in points.chunks(per) {
        let lo = bucket.iter().enumerate().min_by(|a, b| a.1 .1.total_cmp(&b.1 .1)).map(|x| x.0).unwrap_or(0);
        let hi = bucket.iter().enumerate().max_by(|a, b| a.1 .1.total_cmp(&b.1 .1)).map(|x| x.0).unwrap_or(0);
        let (a, b) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        out.push(bucket[a]);
        if b != a {
            out.push(bucket[b]);
        }
    }
    if let (Some(last), Some(kept)) = (points.last(), out.last()) {
        if last != kept {
            out.push(*last);
        }
    }
    out
}

/// The colour of every curve (also what the screenshot test looks for).
pub const CURVE_COLOR: &str = "#1f77b4";

/// One metric's curve as an inline SVG: axes, ticks, labels, and a log scale when positive
/// values span two decades or more.
fn svg_plot(name: &str, points: &[(f64, f64)]) -> String {
    const W: f64 = 560.0;
    const H: f64 = 280.0;
    const L: f64 = 70.0;
    const R: f64 = 16.0;
    const T: f64 = 34.0;
    const B: f64 = 44.0;
    let (pw, ph) = (W - L - R, H - T - B);
    let (mut x0, mut x1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let log = y0 > 0.0 && y1 / y0 >= LOG_SCALE_RATIO;
    if x1 <= x0 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    let fy = |v: f64| if log { v.log10() } else { v };
    let (mut ly0, mut ly1) = (fy(y0), fy(y1));
    if ly1 <= ly0 {
        let pad = if ly0 == 0.0 { 1.0 } else { ly0.abs() * 0.1 };
        ly0 -= pad;
        ly1 += pad;
    } else {
        let pad = (ly1 - ly0) * 0.05;
        ly0 -= pad;
        ly1 += pad;
    }
    let sx = |x: f64| L + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| T + ph - (fy(y) - ly0) / (ly1 - ly0) * ph;
    let sy_lin = |ly: f64| T + ph - (ly - ly0) / (ly1 - ly0) * ph;
    let last = points.last().copied().unwrap_or((0.0, 0.0));
    let scale = if log { " (log scale)" } else { "" };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="plot" data-metric="{n}" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{n} over training steps">"#,
        n = esc(name)
    );
    let _ = write!(s, r##"<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>"##);
    let _ = write!(
        s,
        r#"<text x="{L}" y="20" class="title">{}{scale} <tspan class="last">last {} at step {}</tspan></text>"#,
        esc(name),
        fmt_value(last.1),
        last.0 as u64
    );
    // Y ticks and grid lines.
    let y_ticks: Vec<(f64, String)> = if log {
        let (a, b) = (ly0.ceil() as i32, ly1.floor() as i32);
        // At most about eight decades labelled.
        let every = ((b - a + 1).max(1) as usize).div_ceil(8);
        let mut t: Vec<(f64, String)> =
            (a..=b).step_by(every.max(1)).map(|e| (e as f64, fmt_value(10f64.powi(e)))).collect();
        if t.len() < 3 {
            for e in (ly0.floor() as i32)..=(ly1.ceil() as i32) {
                for m in [2.0f64, 5.0] {
                    let v = m * 10f64.powi(e);
                    if (ly0..=ly1).contains(&v.log10()) {
                        t.push((v.log10(), fmt_value(v)));
                    }
                }
            }
        }
        t
    } else {
        let (ticks, decimals) = nice_ticks(ly0, ly1, 5);
        ticks
            .into_iter()
            .map(|v| {
                let label = if v.abs() >= 1e6 || (v != 0.0 && v.abs() < 1e-3) {
                    format!("{v:.1e}")
                } else {
                    format!("{v:.decimals$}")
                };
                (v, label)
            })
            .collect()
    };
    for (ly, label) in &y_ticks {
        let y = sy_lin(*ly);
        let _ = write!(
            s,
            r##"<line x1="{L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{}</text>"##,
            L + pw,
            L - 6.0,
            y + 4.0,
            esc(label)
        );
    }
    let (x_ticks, _) = nice_ticks(x0, x1, 6);
    for x in x_ticks {
        let px = sx(x);
        let _ = write!(
            s,
            r##"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="#333333"/><text x="{px:.1}" y="{:.1}" text-anchor="middle" class="tick">{}</text>"##,
            T + ph,
            T + ph + 5.0,
            T + ph + 18.0,
            x.round() as i64
        );
    }
    // Axes.
    let _ = write!(s, r##"<path d="M{L} {T} V{:.1} H{:.1}" fill="none" stroke="#333333"/>"##, T + ph, L + pw);
    let _ =
        write!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="axis">step</text>"#, L + pw / 2.0, H - 6.0);
    let _ = write!(
        s,
        r#"<text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle" class="axis">{}</text>"#,
        T + ph / 2.0,
        esc(name)
    );
    let pts = thin(points);
    if pts.len() == 1 {
        let _ = write!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{CURVE_COLOR}"/>"#, sx(pts[0].0), sy(pts[0].1));
    } else {
        let coords: Vec<String> = pts.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
        let _ = write!(
            s,
            r#"<polyline class="curve" points="{}" fill="none" stroke="{CURVE_COLOR}" stroke-width="2" stroke-linejoin="round"/>"#,
            coords.join(" ")
        );
    }
    s.push_str("</svg>");
    s
}

const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px; color: #1b1b1b; background: #fafafa; max-width: 1180px; }
h1 { font-size: 22px; margin: 0 0 4px; } h1 code { font-size: inherit; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; } h3 { font-size: 15px; margin: 16px 0 6px; }
code, pre { font-family: ui-monospace, 'DejaVu Sans Mono', monospace; font-size: 12.5px; }
pre { background: #fff; border: 1px solid #ddd; padding: 10px; overflow-x: auto; max-height: 480px; }
.meta { color: #555; margin: 2px 0; }
.missing { background: #fff4e5; border: 1px solid #f0b46a; padding: 8px 16px; margin-top: 16px; }
.missing h2 { border: none; margin: 4px 0; font-size: 16px; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
svg.plot { border: 1px solid #ddd; }
svg.plot .title { font-size: 14px; font-weight: 600; fill: #1b1b1b; }
svg.plot .last { font-weight: 400; fill: #666; font-size: 12px; }
svg.plot .tick { font-size: 11px; fill: #444; }
svg.plot .axis { font-size: 12px; fill: #333; }
table { border-collapse: collapse; background: #fff; }
td, th { border: 1px solid #ddd; padding: 3px 10px; text-align: left; font-size: 13.5px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.grids { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 13px; color: #444; text-align: center; }
img.grid { image-rendering: pixelated; border: 1px solid #ddd; background: #000; }
.note { color: #666; font-style: italic; }
";

fn table(rows: &[(String, String)]) -> String {
    let mut s = String::from("<table>");
    for (k, v) in rows {
        let _ = write!(s, r#"<tr><th>{}</th><td class="num">{}</td></tr>"#, esc(k), esc(v));
    }
    s.push_str("</table>");
    s
}

fn json_block(v: &serde_json::Value) -> String {
    format!("<pre>{}</pre>", esc(&serde_json::to_string_pretty(v).unwrap_or_default()))
}

/// Render the report page for the run in `run_dir`, with what it holds.
fn render(run: &Run) -> (String, Vec<String>, Vec<Option<u64>>) {
    let root = &run.dir.root;
    let name = root
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| root.display().to_string());
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>genlab run {}</title><link rel="icon" href="data:,"><style>{STYLE}</style></head><body>
"#,
        esc(&name)
    );
    // Header.
    let unknown = || "unknown".to_string();
    let steps = match (run.steps_done(), run.status_u64("total_steps")) {
        (Some(d), Some(t)) => format!("{d} / {t} steps"),
        (Some(d), None) => format!("{d} steps"),
        (None, _) => "no steps recorded".into(),
    };
    let _ = write!(
        h,
        r#"<header><h1>genlab run <code>{}</code></h1><p class="meta">{} · model {} · data {} · <b id="status">{}</b> · {}</p><p class="meta">{}</p>"#,
        esc(&name),
        esc(&run.config_str("family").unwrap_or_else(unknown)),
        esc(&run.config_str("model").unwrap_or_else(unknown)),
        esc(&run.config_str("data").unwrap_or_else(unknown)),
        esc(&run.status_str("status").unwrap_or_else(|| "status unknown".into())),
        esc(&steps),
        esc(&root.display().to_string())
    );
    if let Some(msg) = run.status_str("message") {
        let _ = write!(h, r#"<p class="meta">message: {}</p>"#, esc(&msg));
    }
    h.push_str("</header>\n");
    let missing = run.missing();
    if !missing.is_empty() {
        h.push_str(r#"<section class="missing" id="missing"><h2>Missing or unreadable</h2><ul>"#);
        for m in &missing {
            let _ = write!(h, "<li>{}</li>", esc(m));
        }
        h.push_str("</ul></section>\n");
    }

    // Curves.
    h.push_str(r#"<section id="curves"><h2>Curves</h2>"#);
    let series = run.series();
    let mut plots = Vec::new();
    if series.is_empty() {
        h.push_str(r#"<p class="note">No metrics were logged, so there are no curves.</p>"#);
    } else {
        h.push_str(r#"<div class="plots">"#);
        for (metric, points) in &series {
            h.push_str(&svg_plot(metric, points));
            plots.push(metric.clone());
        }
        h.push_str("</div>");
    }
    h.push_str("</section>\n");

    // Final metrics.
    h.push_str(r#"<section id="final"><h2>Final metrics</h2>"#);
    match &run.status {
        Loaded::Ok(v) => {
            h.push_str("<h3>status.json</h3>");
            h.push_str(&json_block(v));
        }
        _ => h.push_str(r#"<p class="note">No readable status.json.</p>"#),
    }
    match run.metric_lines().last() {
        Some(line) => {
            let _ = write!(h, "<h3>Last metrics line (step {})</h3>", line.step);
            let rows: Vec<(String, String)> = line.values.iter().map(|(k, v)| (k.clone(), fmt_value(*v))).collect();
            h.push_str(&table(&rows));
        }
        None => h.push_str(r#"<p class="note">No metrics line.</p>"#),
    }
    match &run.eval {
        Loaded::Ok(v) => {
            h.push_str("<h3>eval.json</h3>");
            h.push_str(&json_block(v));
        }
        Loaded::Bad(why) => {
            let _ = write!(h, r#"<p class="note">eval.json {}.</p>"#, esc(why));
        }
        Loaded::Missing => h.push_str(r#"<p class="note">No eval.json (no evaluation was saved for this run).</p>"#),
    }
    h.push_str("</section>\n");

    // Sample grids.
    h.push_str(r#"<section id="samples"><h2>Samples over time</h2>"#);
    let mut shown_steps = Vec::new();
    if run.samples.is_empty() {
        h.push_str(r#"<p class="note">No sample grids in samples/.</p>"#);
    } else {
        let n = run.samples.len();
        let picks: Vec<usize> = if n <= MAX_SAMPLE_GRIDS {
            (0..n).collect()
        } else {
            let mut p: Vec<usize> = (0..MAX_SAMPLE_GRIDS)
                .map(|i| (i as f64 * (n - 1) as f64 / (MAX_SAMPLE_GRIDS - 1) as f64).round() as usize)
                .collect();
            p.dedup();
            let _ = write!(h, r#"<p class="note">Showing {} of {n} grids, evenly spaced.</p>"#, p.len());
            p
        };
        h.push_str(r#"<div class="grids">"#);
        for i in picks {
            let (step, path) = &run.samples[i];
            let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            let caption = step.map(|s| format!("step {s}")).unwrap_or_else(|| file.clone());
            match std::fs::read(path).ok().and_then(|b| png_info(&b).map(|i| (b, i))) {
                Some((bytes, info)) => {
                    // Small grids are scaled up by a whole factor, crisp.
                    let k = (256 / info.width.max(1)).max(1);
                    let _ = write!(
                        h,
                        r#"<figure><img class="grid" src="data:image/png;base64,{}" width="{}" height="{}" alt="samples at {}"><figcaption>{}</figcaption></figure>"#,
                        base64(&bytes),
                        info.width * k,
                        info.height * k,
                        esc(&caption),
                        esc(&caption)
                    );
                    shown_steps.push(*step);
                }
                None => {
                    let _ = write!(h, r#"<p class="note">{}: not a readable PNG.</p>"#, esc(&file));
                }
            }
        }
        h.push_str("</div>");
    }
    h.push_str("</section>\n");

    // Checkpoints.
    h.push_str(r#"<section id="checkpoints"><h2>Checkpoints</h2>"#);
    if run.checkpoints.is_empty() {
        h.push_str(r#"<p class="note">No complete checkpoints.</p>"#);
    } else {
        h.push_str("<table><tr><th>step</th><th>folder</th><th>size</th><th></th></tr>");
        for (step, path, size) in &run.checkpoints {
            let latest = if run.latest_checkpoint.as_ref() == Some(path) { "latest" } else { "" };
            let _ = write!(
                h,
                r#"<tr><td class="num">{step}</td><td><code>{}</code></td><td class="num">{}</td><td>{latest}</td></tr>"#,
                esc(&path.strip_prefix(root).unwrap_or(path).display().to_string()),
                fmt_size(*size)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</section>\n");

    // Configuration.
    h.push_str(r#"<section id="config"><h2>Configuration</h2>"#);
    match (&run.config, &run.config_raw) {
        (Loaded::Ok((_, pretty)), _) => {
            let _ = write!(h, "<pre>{}</pre>", esc(pretty));
        }
        (Loaded::Bad(why), raw) => {
            let _ = write!(h, r#"<p class="note">config.json {}; its text as it is:</p>"#, esc(why));
            if let Some(raw) = raw {
                let _ = write!(h, "<pre>{}</pre>", esc(raw));
            }
        }
        (Loaded::Missing, _) => h.push_str(r#"<p class="note">No config.json.</p>"#),
    }
    h.push_str("</section>\n");
    if run.has_events {
        let _ = write!(
            h,
            r#"<p class="meta">TensorBoard: <code>tensorboard --logdir {}</code></p>"#,
            esc(&run.dir.tensorboard().display().to_string())
        );
    }
    h.push_str("</body></html>\n");
    (h, plots, shown_steps)
}

/// Write the report page for the run in `run_dir` to `out`. An incomplete run gives a page
/// of what is there; a path that is not a run directory is an error.
pub fn write_report(run_dir: &Path, out: &Path) -> Result<ReportSummary> {
    let run = Run::load(run_dir)?;
    let (html, plots, samples) = render(&run);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
    }
    checkpoint::write_atomic(out, html.as_bytes())?;
    Ok(ReportSummary {
        out: out.to_path_buf(),
        plots,
        samples,
        checkpoints: run.checkpoints.len(),
        missing: run.missing(),
    })
}

/// One row of `genlab runs`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    pub dir: PathBuf,
    pub family: Option<String>,
    pub model: Option<String>,
    /// Steps done (the furthest of status.json, the metrics and the checkpoints).
    pub steps: Option<u64>,
    pub total_steps: Option<u64>,
    /// `finished`, `stopped`, `failed` or `running`, from status.json.
    pub status: Option<String>,
    pub message: Option<String>,
    /// The newest value of every logged metric.
    pub latest: BTreeMap<String, f64>,
    /// When metrics.jsonl or status.json last changed.
    pub updated: Option<SystemTime>,
}

/// Run directories under `dir` (itself, if it is one), at most `depth` folders down,
/// sorted by path; the inside of a run is not searched.
fn find_runs(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if is_run_dir(dir) {
        out.push(dir.to_path_buf());
        return out;
    }
    if depth == 0 {
        return out;
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    subdirs.sort();
    for d in subdirs {
        out.extend(find_runs(&d, depth - 1));
    }
    out
}

/// The runs under `dir` (searched four folders deep), sorted by path.
pub fn list_runs(dir: &Path) -> Result<Vec<RunInfo>> {
    if !dir.is_dir() {
        let why = if dir.exists() { "is not a folder" } else { "no such folder" };
        return Err(CoreError::file(dir, format!("{why}; pass the folder that holds your runs (`genlab runs DIR`)")));
    }
    let mut out = Vec::new();
    for path in find_runs(dir, 4) {
        let run = Run::load(&path)?;
        let mtime = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let updated = [mtime(run.dir.metrics()), mtime(run.dir.status_file())].into_iter().flatten().max();
        out.push(RunInfo {
            family: run.config_str("family"),
            model: run.config_str("model"),
            steps: run.steps_done(),
            total_steps: run.status_u64("total_steps"),
            status: run.status_str("status"),
            message: run.status_str("message"),
            latest: run.latest(),
            updated,
            dir: path,
        });
    }
    Ok(out)
}

fn fmt_age(t: Option<SystemTime>, now: SystemTime) -> String {
    let Some(secs) = t.and_then(|t| now.duration_since(t).ok()).map(|d| d.as_secs()) else {
        return "-".into();
    };
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=172_799 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// The runs as an aligned text table; paths are shown relative to `base`.
pub fn format_runs(runs: &[RunInfo], base: &Path) -> String {
    let now = SystemTime::now();
    let header = ["RUN", "FAMILY", "MODEL", "STEPS", "STATUS", "UPDATED", "LOSS", "METRICS"];
    let mut rows: Vec<[String; 8]> = vec![header.map(str::to_string)];
    for r in runs {
        let name = r.dir.strip_prefix(base).unwrap_or(&r.dir).display().to_string();
        let name = if name.is_empty() { ".".into() } else { name };
        let steps = match (r.steps, r.total_steps) {
            (Some(s), Some(t)) => format!("{s}/{t}"),
            (Some(s), None) => format!("{s}/?"),
            (None, Some(t)) => format!("0/{t}"),
            (None, None) => "-".into(),
        };
        let others: Vec<String> = r
            .latest
            .iter()
            .filter(|(k, _)| k.as_str() != "loss")
            .map(|(k, v)| format!("{k}={}", fmt_value(*v)))
            .collect();
        rows.push([
            name,
            r.family.clone().unwrap_or_else(|| "?".into()),
            r.model.clone().unwrap_or_else(|| "?".into()),
            steps,
            r.status.clone().unwrap_or_else(|| "unknown".into()),
            fmt_age(r.updated, now),
            r.latest.get("loss").map(|v| fmt_value(*v)).unwrap_or_else(|| "-".into()),
            others.join(" "),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in cases {
            assert_eq!(base64(plain.as_bytes()), enc, "{plain}");
        }
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let (t, d) = nice_ticks(0.0, 1500.0, 6);
        assert_eq!(t, vec![0.0, 500.0, 1000.0, 1500.0]);
        assert_eq!(d, 0);
        let (t, d) = nice_ticks(0.013, 0.071, 5);
        assert_eq!(d, 2);
        assert_eq!(t, vec![0.02, 0.04, 0.06]);
        let (t, _) = nice_ticks(-3.2, 2.9, 6);
        assert_eq!(t, vec![-2.0, 0.0, 2.0]);
    }

    #[test]
    fn thinning_keeps_extremes_and_ends() {
        let pts: Vec<(f64, f64)> =
            (0..10_000).map(|i| (i as f64, if i == 4321 { 99.0 } else { (i % 7) as f64 })).collect();
        let t = thin(&pts);
        assert!(t.len() <= MAX_POINTS + 2, "{}", t.len());
        assert!(t.contains(&(4321.0, 99.0)));
        assert_eq!(t.first(), Some(&(0.0, 0.0)));
        assert_eq!(t.last(), pts.last());
        assert!(t.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn values_and_sizes_read_well() {
        assert_eq!(fmt_value(0.031234), "0.03123");
        assert_eq!(fmt_value(421.92663), "421.9");
        assert_eq!(fmt_value(1500.0), "1500");
        assert_eq!(fmt_value(2.5e-5), "2.500e-5");
        assert_eq!(fmt_size(2_648_364), "2.5 MiB");
        assert_eq!(esc(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn a_loss_spanning_decades_is_on_a_log_scale() {
        let decades: Vec<(f64, f64)> = (1..=100).map(|i| (i as f64, 1000.0 / (i * i) as f64)).collect();
        assert!(svg_plot("loss", &decades).contains("(log scale)"));
        let flat: Vec<(f64, f64)> = (1..=100).map(|i| (i as f64, 1.0 + i as f64 / 100.0)).collect();
        assert!(!svg_plot("loss", &flat).contains("(log scale)"));
        let wide: Vec<(f64, f64)> = (0..60).map(|i| (i as f64, 10f64.powi(-i))).collect();
        assert!(svg_plot("loss", &wide).matches("class=\"tick\"").count() < 20);
        let one = svg_plot("eval/fid", &[(10.0, 3.0)]);
        assert!(one.contains("<circle") && !one.contains("NaN"), "{one}");
    }
}
