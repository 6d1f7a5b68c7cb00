//! `cargo xtask bench ...`: genlab beside PyTorch from Python on the same work and machine.
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    eprintln!("+ {shown}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run(libtorch: &Path, args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("optim") => optim(libtorch),
        Some("data") => data(libtorch),
        Some("families") => families(libtorch),
        Some("all") => {
            optim(libtorch)?;
            data(libtorch)?;
            families(libtorch)
        }
        _ => bail!("usage: cargo xtask bench optim|data|families|all"),
    }
}

/// Keep the smallest time per key over several runs (the least disturbed by other load).
fn keep_min(acc: &mut BTreeMap<String, f64>, run: BTreeMap<String, f64>) {
    for (k, v) in run {
        let e = acc.entry(k).or_insert(f64::INFINITY);
        *e = e.min(v);
    }
}

fn optim(libtorch: &Path) -> Result<()> {
    let root = crate::root();
    let py = crate::setup::python_packages(&root, &[&format!("torch=={}", crate::setup::TORCH_VERSION)])?;
    // Build first, then alternate the two sides so that background load hits both alike.
    crate::run(crate::cargo(libtorch).args(["bench", "-q", "-p", "genlab-core", "--bench", "optim", "--no-run"]))?;
    let (mut rust, mut python) = (BTreeMap::new(), BTreeMap::new());
    const ROUNDS: usize = 3;
    for _ in 0..ROUNDS {
        keep_min(
            &mut rust,
            parse(&output(crate::cargo(libtorch).args(["bench", "-q", "-p", "genlab-core", "--bench", "optim"]))?),
        );
        keep_min(&mut python, parse(&output(Command::new(&py).arg(root.join("bench/optim.py")))?));
    }
    let get =
        |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().with_context(|| format!("benchmark printed no `{k}`"));
    println!("784-256-10 MLP, batch 128, Adam, 200 steps, 2 threads, best of {ROUNDS} alternating runs");
    println!("(seconds; ratio = PyTorch / genlab, above 1 means genlab is faster)");
    println!("| what | PyTorch (Python) | genlab flat Adam | ratio | tch nn::Adam | ratio |");
    println!("|---|---|---|---|---|---|");
    for (what, key) in [("training step", "train_steps"), ("optimizer step only", "optimizer_only")] {
        let p = get(&python, &format!("pytorch_{key}"))?;
        let g = get(&rust, &format!("genlab_{key}"))?;
        let t = get(&rust, &format!("tch_{key}"))?;
        println!("| {what} | {p:.4} | {g:.4} | {:.2}x | {t:.4} | {:.2}x |", p / g, p / t);
    }
    Ok(())
}

/// `CASE images_per_s=N ...` lines.
fn images_per_s(text: &str, prefix: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let case = it.next()?.strip_prefix(prefix)?.to_string();
            let v = it.next()?.strip_prefix("images_per_s=")?.parse().ok()?;
            Some((case, v))
        })
        .collect()
}

fn data(libtorch: &Path) -> Result<()> {
    let root = crate::root();
    let py = crate::setup::python_packages(&root, &["torch==2.13.0", "h5py", "pillow"])?;
    let dir = root.join("target/bench-data");
    std::fs::create_dir_all(&dir)?;
    let rust = output(
        crate::cargo(libtorch).args(["bench", "-q", "-p", "genlab-data", "--bench", "loader", "--", "--dir"]).arg(&dir),
    )?;
    let files = ["fmnist28.h5", "fmnist28-png", "fmnist64.h5", "fmnist64-png"].map(|f| dir.join(f));
    let python = output(Command::new(py).arg(root.join("bench/data_loader.py")).args(&files))?;
    let (r, p) = (images_per_s(&rust, ""), images_per_s(&python, "torch-"));
    println!(
        "Loader throughput, 10,000 Fashion-MNIST images, batch 128, 2 workers (images/s; ratio = genlab / PyTorch)"
    );
    println!("| case | genlab | PyTorch DataLoader | ratio |");
    println!("|---|---|---|---|");
    for (case, g) in &r {
        let t = p.get(case).copied().with_context(|| format!("the Python side printed no `torch-{case}`"))?;
        println!("| {case} | {g:.0} | {t:.0} | {:.2}x |", g / t);
    }
    Ok(())
}

/// One family's default model and how much work each measurement does (the same on both sides).
struct FamilyBench {
    family: &'static str,
    model: &'static str,
    batch: usize,
    sampling: &'static str,
    /// Arguments of `tests/benches/families.rs` and `bench/families.py`.
    args: &'static [&'static str],
}

/// Sized so that a round (both sides, every family) takes about a minute on two idle cores.
const FAMILIES: &[FamilyBench] = &[
    FamilyBench {
        family: "vae",
        model: "conv",
        batch: 128,
        sampling: "decode 128 prior draws",
        args: &["--warmup", "2", "--steps", "8", "--sample-n", "128", "--sample-reps", "10"],
    },
    FamilyBench {
        family: "gan",
        model: "dcgan",
        batch: 128,
        sampling: "generator forward, 128",
        args: &["--warmup", "1", "--steps", "4", "--sample-n", "128", "--sample-reps", "5"],
    },
    FamilyBench {
        family: "diffusion",
        model: "unet-small",
        batch: 64,
        sampling: "DDIM 50 steps, 4 images",
        args: &["--warmup", "1", "--steps", "2", "--sample-n", "4", "--sample-reps", "1", "--sample-warmup", "0"],
    },
];

/// Threads on both sides: libtorch's intra-op pool (and OpenMP's) in each process.
const FAMILY_THREADS: &str = "2";

/// What one process of either side reported.
#[derive(Default, Clone)]
struct FamilyResult {
    params: f64,
    params_g: Option<f64>,
    params_d: Option<f64>,
    train_steps_per_s: f64,
    samples_per_s: f64,
    peak_rss_mib: f64,
}

impl FamilyResult {
    fn parse(text: &str, who: &str) -> Result<Self> {
        let m = parse(text);
        let get = |k: &str| m.get(k).copied().with_context(|| format!("{who} printed no `{k}`:\n{text}"));
        Ok(FamilyResult {
            params: get("params")?,
            params_g: m.get("params_g").copied(),
            params_d: m.get("params_d").copied(),
            train_steps_per_s: get("train_steps_per_s")?,
            samples_per_s: get("samples_per_s")?,
            peak_rss_mib: get("peak_rss_mib")?,
        })
    }

    /// Keep the best of two runs: the highest rates, the lowest peak memory.
    fn best(self, other: Self) -> Self {
        FamilyResult {
            train_steps_per_s: self.train_steps_per_s.max(other.train_steps_per_s),
            samples_per_s: self.samples_per_s.max(other.samples_per_s),
            peak_rss_mib: self.peak_rss_mib.min(other.peak_rss_mib),
            ..other
        }
    }

    fn params_text(&self) -> String {
        match (self.params_g, self.params_d) {
            (Some(g), Some(d)) => format!("G {g} + D {d}"),
            _ => format!("{}", self.params),
        }
    }
}

/// The bench binary `cargo bench --no-run` built, from cargo's JSON messages.
fn bench_executable(libtorch: &Path, package: &str, bench: &str) -> Result<std::path::PathBuf> {
    let text = output(crate::cargo(libtorch).args([
        "bench",
        "-q",
        "-p",
        package,
        "--bench",
        bench,
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]))?;
    text.lines()
        .filter(|l| l.contains(&format!("\"name\":\"{bench}\"")) && l.contains("\"kind\":[\"bench\"]"))
        .find_map(|l| Some(l.split("\"executable\":\"").nth(1)?.split('"').next()?.to_string()))
        .map(std::path::PathBuf::from)
        .with_context(|| format!("cargo built no executable for bench `{bench}` of {package}"))
}

/// Three significant digits or so, for rates from 0.1/s to thousands/s.
fn rate(x: f64) -> String {
    match x {
        x if x >= 100.0 => format!("{x:.0}"),
        x if x >= 10.0 => format!("{x:.1}"),
        x if x >= 1.0 => format!("{x:.2}"),
        x => format!("{x:.3}"),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn families(libtorch: &Path) -> Result<()> {
    let root = crate::root();
    let torch = format!("torch=={}", crate::setup::TORCH_VERSION);
    let py = crate::setup::python_packages(&root, &[&torch, "diffusers==0.42.1", "numpy"])?;
    let exe = bench_executable(libtorch, "genlab-tests", "families")?;
    let with_env = |mut c: Command| {
        c.current_dir(&root)
            .env_remove("LD_LIBRARY_PATH")
            .env("OMP_NUM_THREADS", FAMILY_THREADS)
            .env("MKL_NUM_THREADS", FAMILY_THREADS)
            // Spinning OpenMP workers on a shared two-core machine stall whenever the other thread
            // is descheduled, which slowed steps up to sevenfold at random; sleeping ones do not.
            .env("OMP_WAIT_POLICY", "PASSIVE");
        c
    };
    // At least two rounds; a third only while the whole bench stays under about ten minutes.
    const ROUNDS: usize = 3;
    const BUDGET: Duration = Duration::from_secs(540);
    let load_before = loadavg();
    let t0 = Instant::now();
    let mut best: Vec<Option<(FamilyResult, FamilyResult)>> = vec![None; FAMILIES.len()];
    let mut rounds = 0;
    while rounds < ROUNDS {
        let t_round = Instant::now();
        for (i, f) in FAMILIES.iter().enumerate() {
            let mut rust = with_env(Command::new(&exe));
            rust.args(["--family", f.family, "--threads", FAMILY_THREADS]).args(f.args);
            let g = FamilyResult::parse(&output(&mut rust)?, "the genlab bench")?;
            let mut python = with_env(Command::new(&py));
            python
                .arg(root.join("bench/families.py"))
                .args(["--family", f.family, "--threads", FAMILY_THREADS])
                .args(f.args);
            python.args(["--expect-params", &format!("{}", g.params)]);
            let p = FamilyResult::parse(&output(&mut python)?, "bench/families.py")?;
            if (p.params, p.params_g, p.params_d) != (g.params, g.params_g, g.params_d) {
                bail!("{}: PyTorch's model has {} parameters, genlab's {}", f.family, p.params_text(), g.params_text());
            }
            best[i] = Some(match best[i].take() {
                Some((bp, bg)) => (bp.best(p), bg.best(g)),
                None => (p, g),
            });
        }
        rounds += 1;
        let elapsed = t0.elapsed();
        if rounds >= 2 && elapsed + t_round.elapsed() > BUDGET {
            break;
        }
    }
    let mut md = String::new();
    md.push_str("# Families: genlab beside PyTorch eager\n\n");
    md.push_str(&format!(
        "Each family's default model for 1x28x28, the same architecture in PyTorch {} eager from Python \
         (diffusers 0.42.1's UNet2DModel and DDIMScheduler for diffusion), trained on the same fixed \
         mnist5k batch. {FAMILY_THREADS} threads on both sides (OMP_WAIT_POLICY=PASSIVE), one process per model and side; rates \
         from the fastest step (sampling call) of a process, best of {rounds} alternating rounds. CPU: {}, {} cores; load average {load_before} before, {} after; \
         {:.0} s in all.\n\n",
        crate::setup::TORCH_VERSION,
        cpu_model(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        loadavg(),
        t0.elapsed().as_secs_f64(),
    ));
    md.push_str(
        "Training step: forward, loss, backward and optimizer step as the family's `TrainTask::train_step` \
         does them (GAN: one discriminator and one generator update, EMA and logged metrics included; \
         diffusion: EMA included). Peak memory: the process's VmHWM (a Python process with torch \
         imported starts higher). Ratio = PyTorch time / genlab time (for memory, PyTorch MiB / genlab MiB): \
         above 1 means genlab is faster (smaller).\n\n",
    );
    md.push_str("| family (model) | parameters (both) | batch | train steps/s PyTorch | genlab | ratio | sampling | samples/s PyTorch | genlab | ratio | peak RSS MiB PyTorch | genlab | ratio |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (f, r) in FAMILIES.iter().zip(&best) {
        let Some((p, g)) = r else { continue };
        md.push_str(&format!(
            "| {} ({}) | {} | {} | {} | {} | {:.2}x | {} | {} | {} | {:.2}x | {:.0} | {:.0} | {:.2}x |\n",
            f.family,
            f.model,
            g.params_text(),
            f.batch,
            rate(p.train_steps_per_s),
            rate(g.train_steps_per_s),
            g.train_steps_per_s / p.train_steps_per_s,
            f.sampling,
            rate(p.samples_per_s),
            rate(g.samples_per_s),
            g.samples_per_s / p.samples_per_s,
            p.peak_rss_mib,
            g.peak_rss_mib,
            p.peak_rss_mib / g.peak_rss_mib,
        ));
    }
    let path = root.join("bench/families.md");
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    print!("{md}");
    eprintln!("wrote {}", path.display());
    Ok(())
}
