//! `cargo xtask <task>`: project tasks that are not plain cargo commands.
//!
//! - `setup`: install what a fresh machine lacks (system packages with apt, a project-local
//!   virtualenv with torch==2.13.0 for libtorch) and point `.libtorch` at it. Idempotent.
//! - `test`: setup, then `cargo fmt --check`, `cargo clippy -D warnings`, `cargo test`.
//! - `demo`: setup, then train each family's small default model on mnist5k and write grids
//!   and an HTML report per run under `runs/demo`.
//! - `bench optim|data|families|dist|sd-unet|finetune|all`: genlab beside PyTorch from Python on the same work.
//! - `download NAME`: a dataset's original files, verified, where genlab-data finds them;
//!   `download fid-inception`: the FID Inception-v3 weights, converted to safetensors;
//!   `download clip-vocab`: the CLIP BPE vocabulary; `download sd15`: Stable Diffusion 1.5 (diffusers layout).
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

mod bench;
mod download;
mod setup;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// Run a command, streaming its output; fail with the command line if it fails.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("+ {shown}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// A cargo command with the environment binaries must run in: no LD_LIBRARY_PATH (the
/// rpath must be enough) and LIBTORCH as setup resolved it.
pub(crate) fn cargo(libtorch: &Path) -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root()).env_remove("LD_LIBRARY_PATH").env("LIBTORCH", libtorch);
    c
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo xtask <task>
  setup           install system packages and libtorch (torch==2.13.0 in .venv); idempotent
  test            setup, then fmt --check, clippy -D warnings and the whole test suite
  demo [--scale X] setup, then train each family's default model on mnist5k (runs/demo)
  bench optim     optimizer step time, genlab beside PyTorch from Python
  bench data      data-loader throughput, genlab beside PyTorch's DataLoader
  bench families  each family's default model: train steps/s, samples/s, peak memory beside PyTorch eager
  bench dist [--nproc N] [--device cpu|cuda]  data-parallel scaling (1 vs N processes) and a 40 MB all-reduce
  bench sd-unet [--steps N] [--threads T]  seconds per step of SD 1.5's UNet at 256x256 beside diffusers
  bench finetune [--steps N] [--threads T] [--batch B] [--rounds R]  a LoRA training step beside diffusers + peft
  bench all       optim, data and families
  download NAME   fetch and verify a dataset (mnist, fashion-mnist, cifar10) into $GENLAB_DATA_DIR or ~/.cache/genlab
  download clip-vocab [--from FILE]
                  the CLIP BPE vocabulary (from the open-clip-torch wheel, or a copy fetched elsewhere) for text-to-image
  download sd15 [--fp16] [--from DIR]
                  Stable Diffusion 1.5 in diffusers layout (about 4 GB; 2 GB with --fp16) into $GENLAB_DATA_DIR/sd15
  download fid-inception [--from FILE]
                  pytorch-fid's Inception-v3 weights (or a copy fetched elsewhere), converted for `genlab eval`"
    );
    std::process::exit(2)
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(task) = args.first() else { usage() };
    match task.as_str() {
        "setup" => {
            setup::setup()?;
        }
        "test" => test()?,
        "demo" => demo(&args[1..])?,
        "bench" => {
            let lt = setup::setup()?;
            bench::run(&lt, &args[1..])?;
        }
        "download" if args.get(1).is_some_and(|a| a == "clip-vocab" || a == "fid-inception") => {
            let from = match &args[2..] {
                [] => None,
                [flag, file] if flag == "--from" => Some(PathBuf::from(file)),
                _ => usage(),
            };
            let (root, data) = (root(), download::data_dir()?);
            let (what, path) = if args[1] == "clip-vocab" {
                ("the CLIP BPE vocabulary", download::clip_vocab(&root, &data, from.as_deref())?)
            } else {
                ("the FID Inception-v3 weights", download::fid_inception(&root, &data, from.as_deref())?)
            };
            eprintln!("download: {what} is ready at {}", path.display());
        }
        "download" if args.get(1).is_some_and(|a| a == "sd15") => {
            let (mut fp16, mut from) = (false, None);
            let mut rest = args[2..].iter();
            while let Some(a) = rest.next() {
                match a.as_str() {
                    "--fp16" => fp16 = true,
                    "--from" => from = Some(PathBuf::from(rest.next().unwrap_or_else(|| usage()))),
                    _ => usage(),
                }
            }
            let dir = download::sd15(&download::data_dir()?, fp16, from.as_deref(), download::SD15_URL)?;
            eprintln!("download: Stable Diffusion 1.5 is ready in {}\n  genlab diffusion txt2img --model {} --prompt \"a photo of a cat\" --out cat.png", dir.display(), dir.display());
        }
        "download" => {
            let [_, name] = args.as_slice() else { usage() };
            let dir = download::download(name, &download::data_dir()?)?;
            eprintln!("download: {name} is ready in {}", dir.display());
        }
        _ => usage(),
    }
    Ok(())
}

fn test() -> Result<()> {
    let lt = setup::setup()?;
    let t0 = std::time::Instant::now();
    run(cargo(&lt).args(["fmt", "--all", "--", "--check"]))?;
    run(cargo(&lt).args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // cargo runs tests in parallel; libtorch's OpenMP pool in every test on top of that
    // oversubscribes the cores, and spinning workers then slow the suite about tenfold.
    run(cargo(&lt).args(["test", "--workspace"]).env("OMP_NUM_THREADS", "1"))?;
    eprintln!("xtask test: all passed in {:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// One family's part of the demo: train its default model on mnist5k, then sample a grid.
struct DemoRun {
    family: &'static str,
    model: &'static str,
    data: &'static str,
    steps: u64,
    extra: &'static [&'static str],
}

/// Sized for about five minutes on two CPU cores; `--scale` multiplies every step count.
const DEMO: &[DemoRun] = &[
    DemoRun { family: "vae", model: "conv", data: "mnist5k", steps: 1500, extra: &[] },
    DemoRun { family: "gan", model: "dcgan", data: "mnist5k", steps: 400, extra: &[] },
    // A diffusion model needs far more steps than two cores give in a minute at 28x28; on the
    // 8x8 digits the small U-Net learns recognisable samples in about a minute.
    DemoRun {
        family: "diffusion",
        model: "unet-tiny",
        data: "digits",
        steps: 1500,
        extra: &["--batch-size", "32", "--lr", "2e-3"],
    },
];

fn demo(args: &[String]) -> Result<()> {
    let scale: f64 = match args {
        [] => 1.0,
        [flag, x] if flag == "--scale" => x.parse().context("--scale takes a number, e.g. 0.2")?,
        _ => bail!("usage: cargo xtask demo [--scale X]   (X multiplies every family's step count)"),
    };
    let lt = setup::setup()?;
    run(cargo(&lt).args(["build", "--release", "-p", "genlab"]))?;
    let bin = root().join("target/release/genlab");
    let out = root().join("runs/demo");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    let t0 = std::time::Instant::now();
    let mut grids = Vec::new();
    for d in DEMO {
        let steps = ((d.steps as f64 * scale).round() as u64).max(1).to_string();
        let dir = out.join(d.family);
        let t = std::time::Instant::now();
        run(Command::new(&bin)
            .env_remove("LD_LIBRARY_PATH")
            .args([d.family, "train", "--model", d.model, "--data", d.data, "--steps", &steps, "--device", "auto"])
            .args(["--sample-every", "500", "--no-progress"])
            .args(d.extra)
            .arg("--out")
            .arg(&dir))?;
        let grid = out.join(format!("{}-samples.png", d.family));
        run(Command::new(&bin)
            .env_remove("LD_LIBRARY_PATH")
            .args([d.family, "sample", "--n", "64", "--seed", "1", "--run"])
            .arg(&dir)
            .arg("--out")
            .arg(&grid))?;
        eprintln!("demo: {} {} on {} ({steps} steps) in {:.0} s", d.family, d.model, d.data, t.elapsed().as_secs_f64());
        grids.push(grid);
    }
    eprintln!("\ndemo finished in {:.0} s; sample grids:", t0.elapsed().as_secs_f64());
    for g in grids {
        eprintln!("  {}", g.display());
    }
    eprintln!("training grids over time are under {}/<family>/samples/", out.display());
    eprintln!("reports (config, curves, grids over time, checkpoints):");
    for d in DEMO {
        let dir = out.join(d.family);
        let page = dir.join("report.html");
        run(Command::new(&bin).env_remove("LD_LIBRARY_PATH").arg("report").arg(&dir).arg("--out").arg(&page))?;
        eprintln!("  {}", page.display());
    }
    Ok(())
}
