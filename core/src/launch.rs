//! Start N ranks of a program on this machine with the environment torchrun gives them
//! (`MASTER_ADDR`, `MASTER_PORT`, `RANK`, `LOCAL_RANK`, `WORLD_SIZE`, ...), as
//! `torchrun --standalone --nproc-per-node N --no-python PROGRAM ...` does, without Python:
//! the library side of `genlab launch`.
use crate::error::{CoreError, Result};
use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How [`launch`] starts the ranks (with the `clap` feature, `genlab launch`'s flags).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct LaunchOptions {
    /// Number of processes (ranks); one per GPU on a GPU machine.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 2))]
    pub nproc: usize,
    /// The rendezvous port on 127.0.0.1 (default: a free port).
    #[cfg_attr(feature = "clap", arg(long))]
    pub master_port: Option<u16>,
    /// Seconds a rank waits for its peers in any collective before failing
    /// (sets GENLAB_DIST_TIMEOUT for the ranks; default 300).
    #[cfg_attr(feature = "clap", arg(long))]
    pub dist_timeout: Option<f64>,
}

fn free_port() -> Result<u16> {
    let io = |error| CoreError::Io { path: "127.0.0.1 (a free port)".into(), error };
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
    Ok(l.local_addr().map_err(io)?.port())
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

/// Run `args` of the program `exe` as `opts.nproc` ranks on this machine and wait for them all.
/// A failed rank stops the others and is the error; SIGTERM or Ctrl-C to this process is passed
/// on to the ranks, which checkpoint and stop at the same step.
pub fn launch(exe: &Path, args: &[OsString], opts: &LaunchOptions) -> Result<()> {
    let bad = |m: String| Err(CoreError::Config(m));
    if opts.nproc == 0 {
        return bad("--nproc must be at least 1".into());
    }
    if let Some(t) = opts.dist_timeout.filter(|t| !(t.is_finite() && *t > 0.0)) {
        return bad(format!("--dist-timeout must be a positive number of seconds, not {t}"));
    }
    let port = match opts.master_port {
        Some(p) => p,
        None => free_port()?,
    };
    crate::train::install_stop_handler();
    let stop = crate::train::StopToken::default();
    let nproc = opts.nproc;
    let mut children = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut c = Command::new(exe);
        c.args(args)
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("GROUP_RANK", "0");
        if let Some(t) = opts.dist_timeout {
            c.env("GENLAB_DIST_TIMEOUT", t.to_string());
        }
        match c.spawn() {
            Ok(child) => children.push((rank, child)),
            Err(e) => {
                stop_all(&mut children, Duration::from_secs(5));
                return Err(CoreError::File { path: exe.to_path_buf(), message: format!("starting rank {rank}: {e}") });
            }
        }
    }
    let mut forwarded = false;
    let mut done: Vec<(usize, ExitStatus)> = Vec::new();
    while done.len() < nproc {
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
            let status = c.try_wait().map_err(|error| CoreError::Io { path: exe.to_path_buf(), error })?;
            if let Some(status) = status {
                done.push((*rank, status));
                if !status.success() && failed.is_none() {
                    failed = Some((*rank, status));
                }
            }
        }
        if let Some((rank, status)) = failed {
            let running = children.iter().filter(|(r, _)| !done.iter().any(|(d, _)| d == r)).count();
            stop_all(&mut children, Duration::from_secs(5));
            let others =
                if running > 0 { format!("; stopped the {running} other running rank(s)") } else { String::new() };
            return Err(CoreError::Dist {
                rank,
                world: nproc,
                what: "the process".into(),
                message: format!("exited with {status}{others}"),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
