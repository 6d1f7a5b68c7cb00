//! `genlab report` and `genlab runs`: thin wrappers over `genlab_core::report`.
use anyhow::Result;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Write the HTML report of the run in `run` to `out` (default: `RUN/report.html`).
pub fn report(run: &Path, out: Option<PathBuf>) -> Result<()> {
    let out = out.unwrap_or_else(|| run.join("report.html"));
    println!("{}", genlab_core::report::write_report(run, &out)?);
    Ok(())
}

/// Print a table of the runs under `dir`.
pub fn runs(dir: &Path) -> Result<()> {
    let runs = genlab_core::report::list_runs(dir)?;
    let text = if runs.is_empty() {
        format!("no runs under {}\n", dir.display())
    } else {
        genlab_core::report::format_runs(&runs, dir)
    };
    // A reader that stops early (`genlab runs | head`) is not an error.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
