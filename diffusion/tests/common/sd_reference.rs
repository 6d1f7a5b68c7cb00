//! The tiny Stable-Diffusion-shaped reference models of `tests/reference/sd_tiny.py`, built once per change
//! of the script into `target/tmp/` by diffusers and transformers from the workspace's `.venv`
//! (`cargo xtask setup` installs them), and helpers to compare against them.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};
use tch::Tensor;

const SCRIPT: &str = include_str!("../reference/sd_tiny.py");

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

/// The workspace root (every crate that includes this file sits one level below it).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    match std::env::var_os("GENLAB_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => workspace().join(".venv/bin/python"),
    }
}

fn build() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sd-reference-{:016x}", fnv1a(SCRIPT.as_bytes())));
    if dir.join("io.safetensors").exists() {
        return Ok(dir);
    }
    let vocab = genlab_diffusion::clip::default_vocab_path().context("neither GENLAB_DATA_DIR nor HOME is set")?;
    if !vocab.exists() {
        bail!("{} is missing: run `cargo xtask download clip-vocab` (or `cargo xtask setup`)", vocab.display());
    }
    let script = workspace().join("diffusion/tests/reference/sd_tiny.py");
    let py = python();
    let out = Command::new(&py)
        .arg(&script)
        .arg("--vocab")
        .arg(&vocab)
        .arg("--out")
        .arg(&dir)
        .output()
        .with_context(|| format!("running {} (run `cargo xtask setup` to create the .venv)", py.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed (diffusers 0.42.1 and transformers come from `cargo xtask setup`):\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(dir)
}

/// The reference folder: `pipeline/`, `pipeline_v2/`, `single_file*.safetensors`, `io.safetensors`.
pub fn dir() -> &'static Path {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DIR.get_or_init(|| build().map_err(|e| format!("{e:#}"))) {
        Ok(p) => p,
        Err(e) => panic!("building the diffusers reference models: {e}"),
    }
}

/// One tensor of `io.safetensors` by name.
pub fn io(name: &str) -> Tensor {
    // A Tensor is Send but not Sync: a static needs the Mutex.
    static IO: OnceLock<Mutex<Vec<(String, Tensor)>>> = OnceLock::new();
    let all = IO
        .get_or_init(|| Mutex::new(Tensor::read_safetensors(dir().join("io.safetensors")).expect("io.safetensors")))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    match all.iter().find(|(n, _)| n == name) {
        Some((_, t)) => t.shallow_clone(),
        None => panic!("io.safetensors has no `{name}`"),
    }
}

/// ||a - b|| / ||b|| in f64.
pub fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let a = a.to_kind(tch::Kind::Double);
    let b = b.to_kind(tch::Kind::Double);
    (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-30)
}

/// Assert `rel_l2(a, b) <= 1e-4` (the acceptance limit for whole pipelines), naming what was compared.
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    assert_within(what, a, b, 1e-4);
}

/// Assert `rel_l2(a, b) <= tol`. Single networks on the same libtorch kernels agree far more tightly than
/// the pipelines' limit, and a tighter bound catches near misses (a tanh-approximated GELU is 3e-5 off).
pub fn assert_within(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
    let r = rel_l2(a, b);
    assert!(r <= tol, "{what}: relative L2 error {r:e} > {tol:e}");
    eprintln!("{what}: relative L2 error {r:.3e}");
}
