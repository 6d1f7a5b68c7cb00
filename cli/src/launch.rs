//! `genlab launch`: start N ranks of a training command on this machine, as
//! `torchrun --standalone --nproc-per-node N --no-python genlab ...` does, without Python.
use anyhow::{bail, Context, Result};
use clap::Args;
use std::ffi::OsString;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

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

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

#[allow(unsafe_code)]
fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// Stop the ranks still running: SIGTERM (they save nothing useful once a peer is gone,
/// but exit cleanly), then SIGKILL after a grace period.
fn stop_all(children: &mut [(usize, Child)], grace: Duration) {
    for (_, c) in children.iter_mut() {
        if c.try_wait().ok().flatten().is_none() {
            signal(c, libc::SIGTERM);
        }
    }
    let until = Instant::now() + grace;
    while Instant::now() < until && children.iter_mut().any(|(_, c)| c.try_wait().ok().flatten().is_none()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (_, c) in children.iter_mut() {
        if c.try_wait().ok().flatten().is_none() {
            let _ = c.kill();
        }
        let _ = c.wait();
    }
}

pub fn run(a: LaunchArgs) -> Result<()> {
    if a.nproc == 0 {
        bail!("--nproc must be at least 1");
    }
    if let Some(t) = a.dist_timeout {
        if !(t.is_finite() && t > 0.0) {
            bail!("--dist-timeout must be a positive number of seconds, not {t}");
        }
    }
    let train = a.command.get(1).is_some_and(|s| s == "train" || s == "train-classifier");
    if !train {
        bail!("genlab launch runs training commands (`<family> train ...`); got `{}`", a.command[0].to_string_lossy());
    }
    let port = match a.master_port {
        Some(p) => p,
        None => free_port()?,
    };
    let exe = std::env::current_exe().context("locating the genlab executable")?;
    genlab_core::train::install_stop_handler();
    let stop = genlab_core::train::StopToken::default();
    let mut children = Vec::with_capacity(a.nproc);
    for rank in 0..a.nproc {
        let mut c = Command::new(&exe);
        c.args(&a.command)
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", a.nproc.to_string())
            .env("LOCAL_WORLD_SIZE", a.nproc.to_string())
            .env("GROUP_RANK", "0");
        if let Some(t) = a.dist_timeout {
            c.env("GENLAB_DIST_TIMEOUT", t.to_string());
        }
        match c.spawn() {
            Ok(child) => children.push((rank, child)),
            Err(e) => {
                stop_all(&mut children, Duration::from_secs(5));
                return Err(e).with_context(|| format!("starting rank {rank} ({})", exe.display()));
            }
        }
    }
    let mut forwarded = false;
    let mut done: Vec<(usize, ExitStatus)> = Vec::new();
    while done.len() < a.nproc {
        if stop.is_requested() && !forwarded {
            // Ctrl-C reaches the ranks through the terminal too; SIGTERM to the launcher
            // does not, so pass it on. Each rank saves a checkpoint and stops at the same step.
            forwarded = true;
            for (_, c) in &children {
                signal(c, libc::SIGTERM);
            }
        }
        let mut failed = None;
        for (rank, c) in children.iter_mut() {
            if done.iter().any(|(r, _)| r == rank) {
                continue;
            }
            if let Some(status) = c.try_wait().context("waiting for the ranks")? {
                done.push((*rank, status));
                if !status.success() && failed.is_none() {
                    failed = Some((*rank, status));
                }
            }
        }
        if let Some((rank, status)) = failed {
            let running = children.iter().filter(|(r, _)| !done.iter().any(|(d, _)| d == r)).count();
            stop_all(&mut children, Duration::from_secs(5));
            bail!(
                "rank {rank} of {} failed ({status}){}",
                a.nproc,
                if running > 0 { format!("; stopped the {running} other running rank(s)") } else { String::new() }
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
