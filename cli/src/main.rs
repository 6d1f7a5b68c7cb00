//! `genlab`: train, sample and inspect generative models.
//!
//! Argument parsing and wiring only; every command calls a library function of a
//! family crate.
mod config_file;
mod data_cmd;
mod diffusion_cmd;
mod eval_cmd;
mod gan_cmd;
mod launch;
mod report_cmd;
mod vae_cmd;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use genlab_core::run::FitOptions;
use genlab_core::DeviceSpec;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "genlab",
    version,
    about = "Train, sample and evaluate generative models on libtorch",
    args_override_self = true,
    after_help = "Examples:\n  genlab vae train --model conv --data mnist5k --steps 2000 --out runs/vae\n  genlab vae sample --run runs/vae --n 64 --out samples.png\n  genlab info runs/vae\n  genlab data info fashion-mnist\n  genlab data convert photos/ photos.h5 --image-size 64x64"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Variational autoencoders.
    #[command(subcommand)]
    Vae(vae_cmd::VaeCommand),
    /// Generative adversarial networks.
    #[command(subcommand)]
    Gan(gan_cmd::GanCommand),
    /// Denoising diffusion models: train, sample, inpaint, image-to-image.
    #[command(subcommand)]
    Diffusion(diffusion_cmd::DiffusionCommand),
    /// Datasets: describe, convert to HDF5, preview, Canny edges.
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// Sample quality of any family's run or of a samples file (FD, KID, precision/recall, IS, class
    /// coverage, each beside its real-vs-real figure); `eval train-classifier` trains the dataset classifier.
    #[command(
        after_help = "Examples:\n  genlab eval train-classifier --data fashion-mnist --steps 3000 --out runs/clf-fm --test fashion-mnist:test\n  genlab eval --run runs/gan --data fashion-mnist --n 1000 --features classifier:runs/clf-fm --json gan-eval.json\n  genlab eval --run runs/ddpm --data mnist5k --sampler ddim --steps 50 --features inception\n  genlab eval --samples samples.h5 --data fashion-mnist --features classifier:runs/clf-fm"
    )]
    Eval(Box<eval_cmd::EvalCommand>),
    /// Show a run's or checkpoint's configuration, parameter count and tensors.
    #[command(after_help = "Examples:\n  genlab info runs/vae\n  genlab info runs/vae/checkpoints/step-00002000")]
    Info {
        /// A run directory or a checkpoint folder.
        path: PathBuf,
    },
    /// Write a run's report: one self-contained HTML page (config, curves, samples, checkpoints).
    #[command(after_help = "Examples:\n  genlab report runs/vae\n  genlab report runs/vae --out vae.html")]
    Report {
        /// A run directory.
        run: PathBuf,
        /// The HTML file to write (default: RUN/report.html).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List the runs under a folder: family, model, steps, status and latest metrics.
    #[command(after_help = "Examples:\n  genlab runs\n  genlab runs runs/demo")]
    Runs {
        /// The folder that holds the runs.
        #[arg(default_value = "runs")]
        dir: PathBuf,
    },
    /// Train data-parallel on this machine: start N ranks of a training command.
    #[command(after_help = "Each rank trains on its shard of every global batch (so N ranks of --batch-size B train \
on N x B images per step); gradients are averaged over the ranks on PyTorch's c10d engine (Gloo for CPU \
tensors, NCCL for CUDA tensors, one GPU per rank). Rank 0 alone writes the run directory, and --resume \
continues a distributed run.

Examples:
  genlab launch --nproc 2 -- vae train --model conv --data fashion-mnist --steps 2000 --out runs/vae-dp
  genlab launch --nproc 4 --dist-timeout 120 -- gan train --model dcgan --data mnist5k --steps 5000 --out runs/dcgan-dp --device cuda

The same ranks under torchrun (one node, or several with its usual flags):
  torchrun --standalone --nproc-per-node 2 --no-python genlab vae train --model conv --data fashion-mnist --steps 2000 --out runs/vae-dp
  torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --master-addr HOST --master-port 29500 --no-python genlab gan train ...
Under torchrun, set GENLAB_DIST_TIMEOUT (seconds) for the collective timeout.")]
    Launch(launch::LaunchArgs),
}

/// Flags shared by every family's `train` (the CLI contract).
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Model preset.
    #[arg(long)]
    pub model: String,
    // `--data-a` names domain A of a CycleGAN.
    #[arg(long, visible_alias = "data-a", default_value = "mnist5k", help = data_cmd::DATASET_HELP)]
    pub data: String,
    #[command(flatten)]
    pub data_options: genlab_data::DataOptions,
    #[command(flatten)]
    pub harness: genlab_core::train::HarnessConfig,
    #[command(flatten)]
    pub overrides: genlab_core::run::Overrides,
    /// auto, cpu, cuda, cuda:N or mps.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// A TOML file of flags (`steps = 500`, `batch-size = 64`); flags given here override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl TrainArgs {
    /// `--data` and the dataset flags.
    pub fn data_spec(&self) -> Result<genlab_data::DataSpec> {
        Ok(self.data_options.spec(&self.data, self.harness.seed)?)
    }

    /// The harness settings and `--device`.
    pub fn fit_options(&self) -> Result<FitOptions> {
        Ok(FitOptions { harness: self.harness.clone(), device: self.device.resolve()? })
    }
}

/// Write `report` as pretty JSON to `path`, when one is given.
pub fn write_json(path: Option<&std::path::Path>, report: &impl serde::Serialize) -> Result<()> {
    let Some(path) = path else { return Ok(()) };
    std::fs::write(path, serde_json::to_string_pretty(report)? + "\n")
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Say how a training run ended (on rank 0).
pub fn finished(out: genlab_core::train::Outcome) -> Result<()> {
    if genlab_core::dist::is_leader() {
        let checkpoint = out.last_checkpoint.map(|p| p.display().to_string());
        eprintln!("{:?} at step {}; checkpoint {}", out.status, out.step, checkpoint.as_deref().unwrap_or("none"));
    }
    Ok(())
}

/// A trained run and the device to load it on.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Run directory (its newest checkpoint) or a checkpoint folder.
    #[arg(long)]
    pub run: PathBuf,
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
}

/// Flags shared by every family's `sample`.
#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    #[command(flatten)]
    pub from: RunArgs,
    /// Number of samples.
    #[arg(long, default_value_t = 64)]
    pub n: i64,
    /// PATH.png: a grid; PATH.h5: HDF5 dataset `images` (uint8, N x C x H x W); else a folder of PNGs.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Printing commands end quietly when their reader goes away (`genlab info RUN | head`)
/// instead of panicking on the broken pipe, as Unix tools do.
#[allow(unsafe_code)]
pub(crate) fn exit_on_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() {
    let args = match config_file::expand(std::env::args_os().skip(1).collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    let training = is_training(&args);
    let cli = Cli::parse_from(std::iter::once(std::ffi::OsString::from("genlab")).chain(args));
    // Under torchrun or `genlab launch`, join the group before anything picks a device or
    // builds a loader: both follow the rank.
    let group = match join_group(training) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    let result = match cli.command {
        Command::Vae(c) => vae_cmd::run(c),
        Command::Gan(c) => gan_cmd::run(c),
        Command::Diffusion(c) => diffusion_cmd::run(c),
        Command::Eval(c) => eval_cmd::run(*c),
        Command::Data(c) => data_cmd::run(c),
        Command::Info { path } => {
            exit_on_broken_pipe();
            genlab_core::train::describe_checkpoint(&path).map(|s| print!("{s}")).map_err(anyhow::Error::from)
        }
        Command::Report { run, out } => report_cmd::report(&run, out),
        Command::Runs { dir } => report_cmd::runs(&dir),
        Command::Launch(a) => launch::run(a),
    };
    let result = match (result, &group) {
        (Ok(()), Some(_)) => genlab_core::dist::shutdown().map_err(anyhow::Error::from),
        (Err(e), Some(_)) => {
            genlab_core::dist::abandon();
            Err(e)
        }
        (r, None) => r,
    };
    if let Err(e) = result {
        match group {
            Some(g) => eprintln!("error (rank {} of {}): {e:#}", g.rank(), g.world_size()),
            None => eprintln!("error: {e:#}"),
        }
        std::process::exit(1);
    }
}

/// `<family> train ...` or `eval train-classifier ...`: the commands that run data-parallel.
fn is_training(args: &[std::ffi::OsString]) -> bool {
    let word = |i: usize| args.get(i).and_then(|a| a.to_str()).unwrap_or_default();
    matches!((word(0), word(1)), ("vae" | "gan" | "diffusion", "train") | ("eval", "train-classifier"))
}

/// Join the distributed run torchrun's variables describe (`WORLD_SIZE` > 1), if any.
fn join_group(training: bool) -> Result<Option<Arc<genlab_core::dist::ProcessGroup>>> {
    let Some(env) = genlab_core::dist::DistEnv::from_env()? else { return Ok(None) };
    let world = env.world_size;
    anyhow::ensure!(
        training,
        "WORLD_SIZE is {world}: only `<family> train` and `eval train-classifier` run distributed"
    );
    let opts = genlab_core::dist::DistOptions::from_env()?;
    Ok(Some(genlab_core::dist::init(&env, opts)?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_and_flag_is_well_formed() {
        use clap::CommandFactory;
        // Builds every subcommand: duplicate flag names, bad defaults and conflicting groups panic here.
        super::Cli::command().debug_assert();
    }
}
