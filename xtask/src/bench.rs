//! `cargo xtask bench ...`: genlab beside PyTorch from Python on the same work and machine.
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
        Some("dist") => dist(libtorch, &args[1..]),
        Some("sd-unet") => sd_unet(libtorch, &args[1..]),
        Some("finetune") => finetune(libtorch, &args[1..]),
        Some("quality") => quality(libtorch, &args[1..]),
        Some("all") => {
            optim(libtorch)?;
            data(libtorch)?;
            families(libtorch)
        }
        _ => bail!("usage: cargo xtask bench optim|data|families|dist|sd-unet|finetune|quality|all"),
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
    FamilyBench {
        family: "dit",
        model: "dit-s",
        batch: 64,
        sampling: "DDIM 50 steps, 4 images",
        args: &["--warmup", "1", "--steps", "3", "--sample-n", "4", "--sample-reps", "1", "--sample-warmup", "0"],
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
         (diffusers 0.42.1's UNet2DModel, DiTTransformer2DModel and DDIMScheduler for diffusion), trained on the same fixed \
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

/// `bench dist [--nproc N] [--device cpu|cuda] [--steps S] [--batch-size B]`: data-parallel
/// training throughput at 1 and N processes (a conv VAE on fashion-mnist, fixed per-rank batch,
/// through `genlab launch`), and the time of one 40 MB all-reduce on c10d from genlab and
/// from torch.distributed. Writes bench/dist.md (bench/dist-cuda.md for --device cuda).
fn dist(libtorch: &Path, args: &[String]) -> Result<()> {
    let mut nproc = 2usize;
    let mut device = "cpu".to_string();
    let mut steps = 60u64;
    let mut batch = 64usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--nproc" => nproc = value()?.parse().context("--nproc")?,
            "--device" => device = value()?.clone(),
            "--steps" => steps = value()?.parse().context("--steps")?,
            "--batch-size" => batch = value()?.parse().context("--batch-size")?,
            other => {
                bail!("bench dist: unknown flag {other}; flags: --nproc N --device cpu|cuda --steps S --batch-size B")
            }
        }
    }
    if nproc < 2 {
        bail!("bench dist: --nproc must be at least 2");
    }
    let root = crate::root();
    let py = crate::setup::python_packages(&root, &[&format!("torch=={}", crate::setup::TORCH_VERSION)])?;
    crate::run(crate::cargo(libtorch).args(["build", "-q", "-p", "genlab"]))?;
    crate::run(crate::cargo(libtorch).args(["build", "-q", "-p", "genlab-core", "--example", "dist_allreduce"]))?;
    let genlab = root.join("target/debug/genlab");
    let allreduce = root.join("target/debug/examples/dist_allreduce");
    let threads = if device == "cpu" { "1" } else { "4" };
    let with_env = |mut c: Command| {
        c.current_dir(&root)
            .env_remove("LD_LIBRARY_PATH")
            .env("OMP_NUM_THREADS", threads)
            .env("MKL_NUM_THREADS", threads)
            .env("OMP_WAIT_POLICY", "PASSIVE");
        c
    };
    let load_before = loadavg();
    let tmp = std::env::temp_dir().join(format!("genlab-bench-dist-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    // Training: images/s from the harness's own rate over the whole run (it_s x global batch).
    let mut train = Vec::new();
    for n in [1, nproc] {
        let out = tmp.join(format!("vae-{n}"));
        let mut c = with_env(Command::new(&genlab));
        if n > 1 {
            c.args(["launch", "--nproc", &n.to_string(), "--"]);
        }
        c.args(["vae", "train", "--model", "conv", "--data", "fashion-mnist", "--no-progress", "--sample-every", "0"])
            .args(["--steps", &steps.to_string(), "--checkpoint-every", &steps.to_string(), "--log-every", "10"])
            .args(["--batch-size", &batch.to_string(), "--device", &device, "--out"])
            .arg(&out);
        output(&mut c)?;
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).context("reading the run's metrics")?;
        let it_s: f64 = metrics
            .lines()
            .rev()
            .find_map(|l| l.split("\"it_s\":").nth(1)?.split([',', '}']).next()?.trim().parse().ok())
            .context("no it_s in the run's metrics")?;
        train.push((n, it_s, it_s * (batch * n) as f64));
    }
    // All-reduce of 40 MB: genlab's c10d shim, then torch.distributed, the same way.
    let ranks = |mut make: Box<dyn FnMut(usize, u16) -> Command>| -> Result<f64> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let children: Vec<_> = (0..nproc)
            .map(|r| {
                let mut c = make(r, port);
                c.env("MASTER_ADDR", "127.0.0.1")
                    .env("MASTER_PORT", port.to_string())
                    .env("RANK", r.to_string())
                    .env("LOCAL_RANK", r.to_string())
                    .env("WORLD_SIZE", nproc.to_string())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                c.spawn().context("starting a rank")
            })
            .collect::<Result<_>>()?;
        let mut ms = None;
        for c in children {
            let out = c.wait_with_output()?;
            if !out.status.success() {
                bail!("an all-reduce rank failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            ms = ms.or(parse(&String::from_utf8_lossy(&out.stdout)).get("allreduce_ms").copied());
        }
        ms.context("rank 0 printed no allreduce_ms")
    };
    let dev = device.clone();
    let genlab_ms = ranks(Box::new(move |_, _| {
        let mut c = with_env(Command::new(&allreduce));
        c.args(["40", "20", dev.as_str()]);
        c
    }))?;
    let dev = device.clone();
    let root2 = root.clone();
    let py2 = py.clone();
    let torch_ms = ranks(Box::new(move |_, _| {
        let mut c = with_env(Command::new(&py2));
        c.arg(root2.join("bench/dist_allreduce.py")).args(["--mb", "40", "--iters", "20", "--device", dev.as_str()]);
        c
    }))?;
    let _ = std::fs::remove_dir_all(&tmp);

    let mut md = String::new();
    md.push_str("# Data-parallel training: scaling and all-reduce\n\n");
    md.push_str(&format!(
        "`cargo xtask bench dist --nproc {nproc} --device {device} --steps {steps} --batch-size {batch}`. \
         Training: the `conv` VAE on fashion-mnist, {steps} steps, batch {batch} per rank, one process \
         (`genlab vae train`) and {nproc} processes (`genlab launch --nproc {nproc}`, Gloo{}), {threads} \
         thread(s) per process; images/s = the harness's steps/s over the run x the global batch. \
         All-reduce: one 40 MB float32 tensor summed over {nproc} ranks on 127.0.0.1, median of 20, from genlab's \
         c10d shim and from torch.distributed {} (Python). Binaries of the dev profile. CPU: {}, {} cores; \
         load average {load_before} before, {} after (the machine is shared, so other load may \
         be in these figures).\n\n",
        if device == "cuda" { " for CPU tensors, NCCL for the gradients" } else { "" },
        crate::setup::TORCH_VERSION,
        cpu_model(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        loadavg(),
    ));
    md.push_str("| processes | steps/s | images/s | speed-up |\n|---:|---:|---:|---:|\n");
    let base = train.first().map(|t| t.2).unwrap_or(1.0);
    for (n, it_s, img_s) in &train {
        md.push_str(&format!("| {n} | {} | {} | {:.2}x |\n", rate(*it_s), rate(*img_s), img_s / base));
    }
    md.push_str(&format!(
        "\n| all-reduce, 40 MB, {nproc} ranks | ms |\n|---|---:|\n| genlab (c10d {}) | {genlab_ms:.1} |\n| torch.distributed | {torch_ms:.1} |\n",
        if device == "cuda" { "NCCL" } else { "Gloo" }
    ));
    let name = if device == "cuda" { "bench/dist-cuda.md" } else { "bench/dist.md" };
    std::fs::write(root.join(name), &md).with_context(|| format!("writing {name}"))?;
    print!("{md}");
    Ok(())
}

/// The example binary `cargo build --example` built (dev profile), from cargo's JSON messages.
fn example_executable(libtorch: &Path, package: &str, example: &str) -> Result<std::path::PathBuf> {
    let text = output(crate::cargo(libtorch).args([
        "build",
        "-q",
        "-p",
        package,
        "--example",
        example,
        "--message-format=json-render-diagnostics",
    ]))?;
    text.lines()
        .filter(|l| l.contains(&format!("\"name\":\"{example}\"")) && l.contains("\"kind\":[\"example\"]"))
        .find_map(|l| Some(l.split("\"executable\":\"").nth(1)?.split('"').next()?.to_string()))
        .map(std::path::PathBuf::from)
        .with_context(|| format!("cargo built no executable for example `{example}` of {package}"))
}

/// What one side of `bench sd-unet` reported.
struct UNetStep {
    params: f64,
    s_per_step: f64,
    peak_rss_mib: f64,
}

impl UNetStep {
    fn parse(text: &str, who: &str) -> Result<Self> {
        let m = parse(text);
        let get = |k: &str| m.get(k).copied().with_context(|| format!("{who} printed no `{k}`:\n{text}"));
        Ok(UNetStep { params: get("params")?, s_per_step: get("s_per_step")?, peak_rss_mib: get("peak_rss_mib")? })
    }
}

/// Run a step benchmark's two sides with the same flags and thread settings (OMP_NUM_THREADS and
/// MKL_NUM_THREADS as `--threads`, OMP_WAIT_POLICY=PASSIVE), each in its own process: genlab-diffusion's
/// example `example`, then the Python `script` (with diffusers 0.42.1 and `packages`, told genlab's parameter
/// count to check). Returns both reports, the load average before, and when they started.
fn step_pair(
    libtorch: &Path,
    example: &str,
    script: &str,
    packages: &[&str],
    flags: &[(&str, usize)],
) -> Result<(UNetStep, UNetStep, String, Instant)> {
    let root = crate::root();
    let torch = format!("torch=={}", crate::setup::TORCH_VERSION);
    let mut pkgs = vec![torch.as_str(), "diffusers==0.42.1"];
    pkgs.extend_from_slice(packages);
    let py = crate::setup::python_packages(&root, &pkgs)?;
    let exe = example_executable(libtorch, "genlab-diffusion", example)?;
    let args: Vec<String> = flags.iter().flat_map(|(f, v)| [f.to_string(), v.to_string()]).collect();
    let threads = flags.iter().find(|(f, _)| *f == "--threads").map(|(_, t)| t.to_string()).unwrap_or_default();
    let with_env = |mut c: Command| {
        c.current_dir(&root)
            .env_remove("LD_LIBRARY_PATH")
            .env("OMP_NUM_THREADS", &threads)
            .env("MKL_NUM_THREADS", &threads)
            .env("OMP_WAIT_POLICY", "PASSIVE");
        c
    };
    let load_before = loadavg();
    let t0 = Instant::now();
    let mut rust = with_env(Command::new(&exe));
    let g = UNetStep::parse(&output(rust.args(&args))?, example)?;
    let mut python = with_env(Command::new(&py));
    python.arg(root.join(script)).args(&args).args(["--expect-params", &format!("{}", g.params)]);
    let p = UNetStep::parse(&output(&mut python)?, script)?;
    Ok((g, p, load_before, t0))
}

/// `bench sd-unet [--steps N] [--threads T]`: seconds per denoising step of Stable Diffusion 1.5's UNet
/// (the `sd15` preset, random weights) at 256x256 (latents [2, 4, 32, 32]: one image with classifier-free
/// guidance; encoder_hidden_states [2, 77, 768]), f32 on the CPU inside no_grad, warm-up 1 then the median
/// of N steps, from genlab (`diffusion/examples/sd_unet_bench.rs`) and from diffusers 0.42.1's
/// UNet2DConditionModel (`bench/sd_unet.py`), each in its own process, with the peak memory of each.
/// Writes bench/sd-unet.md.
fn sd_unet(libtorch: &Path, args: &[String]) -> Result<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut steps = 5usize;
    let mut threads = cores;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--steps" => steps = value()?.parse().context("--steps")?,
            "--threads" => threads = value()?.parse().context("--threads")?,
            other => bail!("bench sd-unet: unknown flag {other}; flags: --steps N --threads T"),
        }
    }
    if steps == 0 || threads == 0 {
        bail!("bench sd-unet: --steps and --threads must be at least 1");
    }
    let flags = [("--steps", steps), ("--threads", threads)];
    let (g, p, load_before, t0) = step_pair(libtorch, "sd_unet_bench", "bench/sd_unet.py", &[], &flags)?;
    let root = crate::root();

    let mut md = String::new();
    md.push_str("# Stable Diffusion 1.5 UNet: one denoising step on the CPU\n\n");
    md.push_str(&format!(
        "`cargo xtask bench sd-unet --steps {steps} --threads {threads}`. Stable Diffusion 1.5's UNet \
         ({} parameters, random weights: genlab's `UNet2DConditionConfig::sd15()`, diffusers 0.42.1's \
         `UNet2DConditionModel` with the same config) at 256x256: latents [2, 4, 32, 32] (one image with \
         classifier-free guidance), encoder_hidden_states [2, 77, 768], f32, inside no_grad; one warm-up step, then \
         the median of {steps}. Both on libtorch {} with {threads} thread(s) (OMP_WAIT_POLICY=PASSIVE), each in \
         its own process (genlab: the dev-profile example `sd_unet_bench`; diffusers: `bench/sd_unet.py`). \
         Peak memory: the process's VmHWM (a Python process with torch imported starts higher). CPU: {}, {cores} \
         cores (nproc); load average {load_before} before, {} after; {:.0} s in all (the machine may be shared, \
         so other load may be in these figures).\n\n",
        g.params,
        crate::setup::TORCH_VERSION,
        cpu_model(),
        loadavg(),
        t0.elapsed().as_secs_f64(),
    ));
    md.push_str("| side | s / step | peak RSS MiB |\n|---|---:|---:|\n");
    md.push_str(&format!("| genlab | {:.2} | {:.0} |\n", g.s_per_step, g.peak_rss_mib));
    md.push_str(&format!("| diffusers (PyTorch eager) | {:.2} | {:.0} |\n", p.s_per_step, p.peak_rss_mib));
    md.push_str(&format!(
        "\nRatio (diffusers / genlab): time {:.2}x, memory {:.2}x; above 1 means genlab is faster (smaller).\n",
        p.s_per_step / g.s_per_step,
        p.peak_rss_mib / g.peak_rss_mib
    ));
    let path = root.join("bench/sd-unet.md");
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    print!("{md}");
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// `bench finetune [--steps N] [--threads T] [--batch B] [--rounds R]`: seconds per LoRA training step (forward, backward,
/// AdamW with gradient clipping) of a small Stable-Diffusion-shaped UNet (SD 1.5's layout at 128/256/512/512
/// channels, rank-4 adapters on the attention projections) at latents [B, 4, 32, 32], f32 on the CPU, from genlab
/// (`diffusion/examples/lora_step_bench.rs`) and from diffusers 0.42.1 + peft 0.22 as
/// `train_text_to_image_lora.py` steps (`bench/lora_step.py`), each in its own process, with the peak memory of
/// each. Writes bench/finetune.md.
fn finetune(libtorch: &Path, args: &[String]) -> Result<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (mut steps, mut threads, mut batch, mut rounds) = (5usize, cores, 2usize, 3usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--steps" => steps = value()?.parse().context("--steps")?,
            "--threads" => threads = value()?.parse().context("--threads")?,
            "--batch" => batch = value()?.parse().context("--batch")?,
            "--rounds" => rounds = value()?.parse().context("--rounds")?,
            other => bail!("bench finetune: unknown flag {other}; flags: --steps N --threads T --batch B --rounds R"),
        }
    }
    if steps == 0 || threads == 0 || batch == 0 || rounds == 0 {
        bail!("bench finetune: --steps, --threads, --batch and --rounds must be at least 1");
    }
    let flags = [("--steps", steps), ("--threads", threads), ("--batch", batch)];
    // Alternating rounds, the fastest of each side kept: the least disturbed by other load on a shared machine.
    let (mut g, mut p, load_before, t0) =
        step_pair(libtorch, "lora_step_bench", "bench/lora_step.py", &["peft==0.22.0"], &flags)?;
    for _ in 1..rounds {
        let (g2, p2, _, _) = step_pair(libtorch, "lora_step_bench", "bench/lora_step.py", &["peft==0.22.0"], &flags)?;
        g.s_per_step = g.s_per_step.min(g2.s_per_step);
        p.s_per_step = p.s_per_step.min(p2.s_per_step);
    }
    let root = crate::root();

    let mut md = String::new();
    md.push_str("# LoRA fine-tuning: one training step on the CPU\n\n");
    md.push_str(&format!(
        "`cargo xtask bench finetune --steps {steps} --threads {threads} --batch {batch} --rounds {rounds}`. A small \
         Stable-Diffusion-shaped UNet (SD 1.5's layout at 128/256/512/512 channels, {} parameters, random weights, \
         frozen) with rank-4 adapters on every to_q, to_k, to_v and to_out.0; latents [{batch}, 4, 32, 32] \
         (256x256 images), encoder_hidden_states [{batch}, 77, 768], f32: forward, MSE to the noise, backward, \
         gradient clipping at 1 and AdamW over the adapters, as diffusers' `train_text_to_image_lora.py` steps \
         (genlab: `diffusion/examples/lora_step_bench.rs`; diffusers 0.42.1 + peft 0.22: `bench/lora_step.py`); two \
         warm-up steps, then the median of {steps}; the fastest of {rounds} alternating rounds. Both on libtorch {} \
         with {threads} thread(s) (OMP_WAIT_POLICY=PASSIVE), each in its own process; peak memory is the process's \
         VmHWM (of the first round). CPU: {}, {cores} \
         cores (nproc); load average {load_before} before, {} after; {:.0} s in all.\n\n",
        g.params,
        crate::setup::TORCH_VERSION,
        cpu_model(),
        loadavg(),
        t0.elapsed().as_secs_f64(),
    ));
    md.push_str("| side | s / step | peak RSS MiB |\n|---|---:|---:|\n");
    md.push_str(&format!("| genlab | {:.3} | {:.0} |\n", g.s_per_step, g.peak_rss_mib));
    md.push_str(&format!("| diffusers + peft (PyTorch eager) | {:.3} | {:.0} |\n", p.s_per_step, p.peak_rss_mib));
    md.push_str(&format!(
        "\nRatio (diffusers / genlab): time {:.2}x, memory {:.2}x; above 1 means genlab is faster (smaller).\n",
        p.s_per_step / g.s_per_step,
        p.peak_rss_mib / g.peak_rss_mib
    ));
    let path = root.join("bench/finetune.md");
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    print!("{md}");
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Settings of one `bench quality` run.
struct QualityArgs {
    family: String,
    steps: u64,
    batch_size: u64,
    n: u64,
    threads: usize,
    seed: u64,
    /// Start again instead of reusing the stages an earlier invocation finished.
    fresh: bool,
}

impl QualityArgs {
    fn parse(args: &[String]) -> Result<Self> {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let mut q = QualityArgs {
            family: "diffusion".into(),
            steps: 1200,
            batch_size: 64,
            n: 2000,
            threads: cores,
            seed: 0,
            fresh: false,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().with_context(|| format!("bench quality: {a} needs a value"));
            match a.as_str() {
                "--family" => q.family = value()?.clone(),
                "--steps" => q.steps = value()?.parse().context("--steps takes a whole number")?,
                "--batch-size" => q.batch_size = value()?.parse().context("--batch-size takes a whole number")?,
                "--n" => q.n = value()?.parse().context("--n takes a whole number")?,
                "--threads" => q.threads = value()?.parse().context("--threads takes a whole number")?,
                "--seed" => q.seed = value()?.parse().context("--seed takes a whole number")?,
                "--fresh" => q.fresh = true,
                f @ ("diffusion" | "gan" | "vae") => q.family = f.to_string(),
                other => bail!(
                    "bench quality: unknown argument {other}; usage: cargo xtask bench quality \
                     [diffusion|gan|vae] [--family F] [--steps N] [--batch-size B] [--n N] [--threads T] [--seed S] \
                     [--fresh]"
                ),
            }
        }
        if !matches!(q.family.as_str(), "diffusion" | "gan" | "vae") {
            bail!("bench quality: --family {} is not one of diffusion, gan, vae", q.family);
        }
        if q.steps == 0 || q.batch_size == 0 || q.n < 2 || q.threads == 0 {
            bail!("bench quality: --steps, --batch-size and --threads must be at least 1 and --n at least 2");
        }
        Ok(q)
    }

    /// `-STEPSxBATCH` for budgets other than the 1,200 x 64 (names of folders and files).
    fn tag(&self) -> String {
        if (self.steps, self.batch_size) == (1200, 64) {
            String::new()
        } else {
            format!("-{}x{}", self.steps, self.batch_size)
        }
    }

    /// What must match for an earlier invocation's stages to be reused.
    fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "family": self.family, "steps": self.steps, "batch_size": self.batch_size, "n": self.n,
            "seed": self.seed, "threads": self.threads, "torch": crate::setup::TORCH_VERSION,
        })
    }
}

/// The finished stages of a `bench quality` folder and their wall times (seconds, summed over the
/// invocations that worked on them), kept in `stages.json` so that a stopped run continues.
struct Stages {
    path: PathBuf,
    times: serde_json::Map<String, serde_json::Value>,
}

impl Stages {
    fn open(path: PathBuf) -> Result<Self> {
        let times = match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).with_context(|| format!("parsing {}", path.display()))?,
            Err(_) => serde_json::Map::new(),
        };
        Ok(Stages { path, times })
    }

    fn get(&self, key: &str) -> Option<f64> {
        self.times.get(key).and_then(|v| v.as_f64())
    }

    fn add(&mut self, key: &str, seconds: f64) -> Result<()> {
        let total = self.get(key).unwrap_or(0.0) + seconds;
        self.times.insert(key.to_string(), total.into());
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&self.times)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path).with_context(|| format!("writing {}", self.path.display()))
    }
}

/// A training run's `status.json`: finished at `steps` or beyond?
fn run_finished(run: &Path, steps: u64) -> bool {
    let status = std::fs::read_to_string(run.join("status.json")).ok();
    let v: Option<serde_json::Value> = status.and_then(|t| serde_json::from_str(&t).ok());
    v.is_some_and(|v| v["status"] == "finished" && v["step"].as_u64().is_some_and(|s| s >= steps))
}

/// One row of bench/quality.md.
struct QualityRow {
    side: String,
    train_s: Option<f64>,
    sample_s_per_image: f64,
    fd: f64,
    kid: (f64, f64),
    real_fd: f64,
    real_kid: (f64, f64),
}

/// FD and KID of one sample file, from `genlab eval --json`.
fn quality_eval(bin: &Path, samples: &Path, clf: &Path, json: &Path) -> Result<(f64, (f64, f64), f64, (f64, f64))> {
    output(
        Command::new(bin)
            .env_remove("LD_LIBRARY_PATH")
            .args(["eval", "--data", "fashion-mnist", "--samples"])
            .arg(samples)
            .arg("--features")
            .arg(format!("classifier:{}", clf.display()))
            .arg("--json")
            .arg(json),
    )?;
    let text = std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
    let get = |side: &str, path: &[&str]| -> Result<f64> {
        let mut x = &v[side];
        for p in path {
            x = &x[*p];
        }
        x.as_f64().with_context(|| format!("{} has no {side}.{}", json.display(), path.join(".")))
    };
    Ok((
        get("generated_vs_reference", &["frechet_distance"])?,
        (get("generated_vs_reference", &["kid", "mean"])?, get("generated_vs_reference", &["kid", "std"])?),
        get("real_vs_reference", &["frechet_distance"])?,
        (get("real_vs_reference", &["kid", "mean"])?, get("real_vs_reference", &["kid", "std"])?),
    ))
}

/// A 36-image grid of a sample file, written to `png`.
fn quality_grid(bin: &Path, samples: &Path, png: &Path) -> Result<()> {
    let spec = format!("{}", samples.display());
    output(
        Command::new(bin).env_remove("LD_LIBRARY_PATH").args(["data", "preview", &spec, "--n", "36", "--out"]).arg(png),
    )?;
    Ok(())
}

/// Run `cmd` and return its wall time in seconds.
fn timed(cmd: &mut Command) -> Result<f64> {
    let t = Instant::now();
    output(cmd)?;
    Ok(t.elapsed().as_secs_f64())
}

/// `bench quality [diffusion|gan|vae]`: sample quality at a fixed training budget, genlab's default
/// recipe beside the family's textbook PyTorch package, trained one after the other on Fashion-MNIST
/// with the same steps, batch size and threads. Each side writes `--n` samples to HDF5; `genlab eval`
/// scores every file (and a real-vs-real baseline) in the features of the eval crate's Fashion-MNIST
/// classifier, trained first (3,000 steps) and kept under target/bench-quality/classifier. Writes
/// bench/quality.md (diffusion) or bench/quality-<family>.md.
fn quality(libtorch: &Path, args: &[String]) -> Result<()> {
    let q = QualityArgs::parse(args)?;
    let root = crate::root();
    let torch = format!("torch=={}", crate::setup::TORCH_VERSION);
    let mut pkgs = vec![torch.as_str(), "h5py"];
    if q.family == "diffusion" {
        pkgs.push("denoising-diffusion-pytorch==2.3.4");
    }
    let py = crate::setup::python_packages(&root, &pkgs)?;
    output(crate::cargo(libtorch).args(["build", "--release", "-q", "-p", "genlab"]))?;
    let bin = root.join("target/release/genlab");
    let tag = q.tag();
    let out = root.join("target/bench-quality").join(format!("{}{tag}", q.family));
    // Stages of an earlier invocation with the same settings are reused (`--fresh` starts again).
    let settings_path = out.join("settings.json");
    let same = std::fs::read_to_string(&settings_path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v == q.settings());
    if out.exists() && (q.fresh || !same) {
        for entry in std::fs::read_dir(&out).with_context(|| format!("reading {}", out.display()))? {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n == "fashion-mnist.h5") {
                continue;
            }
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            removed.with_context(|| format!("clearing {}", path.display()))?;
        }
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(&settings_path, serde_json::to_string_pretty(&q.settings())?)
        .with_context(|| format!("writing {}", settings_path.display()))?;
    let mut stages = Stages::open(out.join("stages.json"))?;
    let threads = q.threads.to_string();
    let env = |mut c: Command| {
        c.current_dir(&root)
            .env_remove("LD_LIBRARY_PATH")
            .env("OMP_NUM_THREADS", &threads)
            .env("MKL_NUM_THREADS", &threads)
            .env("OMP_WAIT_POLICY", "PASSIVE");
        c
    };
    let load_before = loadavg();
    let t_all = Instant::now();

    // The feature network: trained once, reused by later runs.
    let clf = root.join("target/bench-quality/classifier");
    if !clf.join("eval.json").exists() {
        if clf.exists() {
            std::fs::remove_dir_all(&clf).with_context(|| format!("clearing {}", clf.display()))?;
        }
        let mut c = env(Command::new(&bin));
        c.args(["eval", "train-classifier", "--data", "fashion-mnist", "--steps", "3000", "--no-progress"])
            .args(["--test", "fashion-mnist:test", "--out"])
            .arg(&clf);
        output(&mut c)?;
    }
    let clf_report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(clf.join("eval.json")).context("reading the classifier's eval.json")?,
    )?;
    let clf_acc = clf_report["test_accuracy"].as_f64().context("the classifier's eval.json has no test_accuracy")?;

    // The peer reads the same images from an HDF5 file genlab writes.
    let data_h5 = out.join("fashion-mnist.h5");
    if !data_h5.exists() {
        output(
            Command::new(&bin).env_remove("LD_LIBRARY_PATH").args(["data", "convert", "fashion-mnist"]).arg(&data_h5),
        )?;
    }
    let (steps, batch, n, seed) = (q.steps.to_string(), q.batch_size.to_string(), q.n.to_string(), q.seed.to_string());
    let mut rows = Vec::new();
    let mut grids: Vec<(String, String)> = Vec::new();

    // genlab: the family's default run from the CLI, continued with --resume after a stop.
    let run = out.join("genlab-run");
    let model = match q.family.as_str() {
        "diffusion" => "unet-small",
        "gan" => "dcgan",
        _ => "conv",
    };
    if !run_finished(&run, q.steps) {
        let mut train = env(Command::new(&bin));
        train
            .args([q.family.as_str(), "train", "--model", model, "--data", "fashion-mnist", "--steps", &steps])
            .args(["--batch-size", &batch, "--seed", &seed, "--sample-every", "0", "--checkpoint-every", "200"])
            .args(["--no-progress", "--out"])
            .arg(&run);
        if run.join("config.json").is_file() {
            train.arg("--resume");
        }
        let s = timed(&mut train)?;
        stages.add("genlab train", s)?;
    }
    let genlab_train_s = stages.get("genlab train").context("stages.json has no genlab training time")?;
    let samplers: Vec<(String, Vec<&str>)> = if q.family == "diffusion" {
        vec![
            ("genlab DPM-Solver++ 20 (EMA)".into(), vec!["--sampler", "dpmpp-2m", "--steps", "20"]),
            ("genlab DDIM 50 (EMA)".into(), vec!["--sampler", "ddim", "--steps", "50"]),
        ]
    } else {
        vec![(format!("genlab {} {model}", q.family), vec![])]
    };
    for (i, (side, flags)) in samplers.iter().enumerate() {
        let file = out.join(format!("genlab-{i}.h5"));
        let key = format!("genlab sample {i}");
        if stages.get(&key).is_none() || !file.is_file() {
            let mut s = env(Command::new(&bin));
            s.args([q.family.as_str(), "sample", "--n", &n, "--seed", "1", "--run"])
                .arg(&run)
                .args(flags)
                .arg("--out")
                .arg(&file);
            let t = timed(&mut s)?;
            stages.add(&key, t)?;
        }
        let sample_s = stages.get(&key).context("stages.json has no sampling time")?;
        let (fd, kid, real_fd, real_kid) = quality_eval(&bin, &file, &clf, &out.join(format!("genlab-{i}.json")))?;
        let png = format!("quality-{}{tag}-genlab-{i}.png", q.family);
        quality_grid(&bin, &file, &root.join("bench").join(&png))?;
        grids.push((side.clone(), png));
        rows.push(QualityRow {
            side: side.clone(),
            train_s: (i == 0).then_some(genlab_train_s),
            sample_s_per_image: sample_s / q.n as f64,
            fd,
            kid,
            real_fd,
            real_kid,
        });
    }

    // The peer, in its own process; with --state it continues a stopped run.
    let (peer_h5, peer_json) = (out.join("peer.h5"), out.join("peer.json"));
    if !peer_json.is_file() {
        let mut p = env(Command::new(&py));
        p.arg(root.join("bench/quality_peer.py"))
            .args(["--family", &q.family, "--data"])
            .arg(&data_h5)
            .args(["--steps", &steps, "--batch-size", &batch, "--n", &n, "--threads", &threads, "--seed", &seed])
            .arg("--state")
            .arg(out.join("peer-state.pt"))
            .arg("--out")
            .arg(&peer_h5)
            .arg("--json")
            .arg(&peer_json);
        output(&mut p)?;
    }
    let peer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&peer_json).context("reading peer.json")?)?;
    let num = |k: &str| peer[k].as_f64().with_context(|| format!("peer.json has no `{k}`"));
    let (fd, kid, real_fd, real_kid) = quality_eval(&bin, &peer_h5, &clf, &out.join("peer-eval.json"))?;
    let png = format!("quality-{}{tag}-peer.png", q.family);
    quality_grid(&bin, &peer_h5, &root.join("bench").join(&png))?;
    grids.push(("peer".to_string(), png));
    rows.push(QualityRow {
        side: peer["what"].as_str().unwrap_or("peer").to_string(),
        train_s: Some(num("train_s")?),
        sample_s_per_image: num("sample_s")? / q.n as f64,
        fd,
        kid,
        real_fd,
        real_kid,
    });

    let peer_name = match q.family.as_str() {
        "diffusion" => {
            "denoising-diffusion-pytorch 2.3.4 (`Unet(dim=32, dim_mults=(1, 2, 2))`, its `GaussianDiffusion` \
                        and `Trainer` defaults)"
        }
        "gan" => "the PyTorch DCGAN tutorial's networks at 28x28",
        _ => "pytorch/examples' VAE",
    };
    let mut md = String::new();
    md.push_str(&format!("# Sample quality at a fixed budget: {}\n\n", q.family));
    md.push_str(&format!(
        "`cargo xtask bench quality {} --steps {} --batch-size {} --n {} --threads {} --seed {}`. genlab's default \
         `{} train --model {model}` beside {peer_name} (`bench/quality_peer.py`), one after the other on the \
         Fashion-MNIST training set, {} steps of batch {}, {} thread(s) each, torch {} under both. {} samples per \
         row. FD and KID in the 128-d penultimate features of genlab's Fashion-MNIST classifier \
         (`genlab eval train-classifier`, 3,000 steps, test accuracy {:.4}), against {} random test images; \
         \"real\" is {} random training images against the same reference. KID is x1000 (mean ± std over 100 \
         subsets). CPU: {}, {} cores; load average {load_before} before, {} after; {:.0} s in the last \
         invocation (a stopped run continues where it stopped: training from its checkpoints, each side's \
         times summed over the parts; the machine may be shared, so other load may be in the times).\n\n",
        q.family,
        q.steps,
        q.batch_size,
        q.n,
        q.threads,
        q.seed,
        q.family,
        q.steps,
        q.batch_size,
        q.threads,
        crate::setup::TORCH_VERSION,
        q.n,
        clf_acc,
        q.n,
        q.n,
        cpu_model(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        loadavg(),
        t_all.elapsed().as_secs_f64(),
    ));
    md.push_str("| side | FD | KID x1000 | train s | sample s / image |\n|---|---:|---:|---:|---:|\n");
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.1} | {:.1} ± {:.1} | {} | {:.4} |\n",
            r.side,
            r.fd,
            r.kid.0 * 1e3,
            r.kid.1 * 1e3,
            r.train_s.map(|s| format!("{s:.0}")).unwrap_or_else(|| "(same run)".into()),
            r.sample_s_per_image
        ));
    }
    let r = &rows[0];
    md.push_str(&format!(
        "| real (training images) | {:.1} | {:.1} ± {:.1} | | |\n",
        r.real_fd,
        r.real_kid.0 * 1e3,
        r.real_kid.1 * 1e3
    ));
    let peer_fd = rows.last().map(|r| r.fd).unwrap_or(f64::NAN);
    md.push_str(&format!(
        "\nFD ratio, peer / genlab (first row): {:.2}x; above 1 means genlab's samples are closer to the data.\n",
        peer_fd / rows[0].fd
    ));
    md.push_str("\nThe first 36 samples of each side:\n\n");
    for (side, png) in &grids {
        md.push_str(&format!("- {side}: ![{side}]({png})\n"));
    }
    let name = if q.family == "diffusion" && tag.is_empty() {
        "bench/quality.md".to_string()
    } else {
        format!("bench/quality-{}{tag}.md", q.family)
    };
    std::fs::write(root.join(&name), &md).with_context(|| format!("writing {name}"))?;
    print!("{md}");
    eprintln!("wrote {name}; samples and eval JSON under {}", out.display());
    Ok(())
}
