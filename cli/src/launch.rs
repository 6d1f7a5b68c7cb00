//! `genlab launch`: start N ranks of a training command on this machine (`genlab_core::launch`).
use anyhow::{bail, Context, Result};
use clap::Args;
use std::ffi::OsString;

#[derive(Args, Debug, Clone)]
pub struct LaunchArgs {
    /// Number of processes (ranks); one per GPU on a GPU machine.
    #[arg(long, default_value_t = 2)]
    pub nproc: usize,
    /// The rendezvous port on 127.0.0.1 (default: a free port).
    #[arg(long)]
    pub master_port: Option<u16>,
    /// Seconds a rank waits for its peers in any collective before failing
    /// (sets GENLAB_DIST_TIMEOUT for the ranks; default 300).
    #[arg(long)]
    pub dist_timeout: Option<f64>,
    /// The genlab command each rank runs, after `--`: `<family> train ...`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<OsString>,
}

pub fn run(a: LaunchArgs) -> Result<()> {
    let train = a.command.get(1).is_some_and(|s| s == "train" || s == "train-classifier");
    if !train {
        bail!("genlab launch runs training commands (`<family> train ...`); got `{}`", a.command[0].to_string_lossy());
    }
    let exe = std::env::current_exe().context("locating the genlab executable")?;
    let opts =
        genlab_core::launch::LaunchOptions { nproc: a.nproc, master_port: a.master_port, dist_timeout: a.dist_timeout };
    Ok(genlab_core::launch::launch(&exe, &a.command, &opts)?)
}
