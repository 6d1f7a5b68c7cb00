//! `cargo xtask bench ...`: genlab beside PyTorch from Python on the same work and machine.
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

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
        _ => bail!("usage: cargo xtask bench optim|data"),
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
