//! What every end-to-end test of the `genlab` binary needs.
#![allow(dead_code)]
use std::process::{Command, Output};

pub fn genlab() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_genlab"));
    // Binaries must run without LD_LIBRARY_PATH (rpath).
    c.env_remove("LD_LIBRARY_PATH");
    c
}

/// The command's stdout and stderr; panics with them unless it succeeded.
pub fn ok(out: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "genlab failed: {text}");
    text
}

/// The command's stderr; panics unless it failed with an error rather than a panic.
pub fn fail(out: Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "genlab should have failed");
    assert!(!text.contains("panicked"), "panic instead of an error: {text}");
    text
}
