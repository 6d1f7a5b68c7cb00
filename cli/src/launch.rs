//! `genlab launch`: start N ranks of a training command on this machine (`genlab_core::launch`).
use anyhow::{bail, Context, Result};
use clap::Args;
use std::ffi::OsString;

#[derive(Args, Debug, Clone)]
pub struct LaunchArgs {
    #[command(flatten)]
    pub options: genlab_core::launch::LaunchOptions,
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
    Ok(genlab_core::launch::launch(&exe, &a.command, &a.options)?)
}
