//! `cargo xtask setup`: make a fresh machine ready, quickly when it already is.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const TORCH_VERSION: &str = "2.13.0";

/// Debian packages and how to tell they are there.
const APT: &[(&str, &str)] = &[
    ("pkg-config", "/usr/bin/pkg-config"),
    ("libhdf5-dev", "/usr/include/hdf5/serial/hdf5.h"),
    // Gloo's headers for the c10d shim (torch's wheel ships Gloo's code, not its headers).
    ("libgloo-dev", "/usr/include/gloo/algorithm.h"),
    ("dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
    ("python3-venv", "/usr/lib/python3/dist-packages/venv"),
    // Headless browser for the `genlab report` page tests.
    ("chromium", "/usr/bin/chromium"),
];

/// PyPI packages the tests use, in the project venv: `tensorboard` reads the event files
/// the training harness writes; diffusers and transformers build the reference models the Stable
/// Diffusion parity tests compare against (`diffusion/tests/reference/sd_tiny.py`), and peft the LoRA adapters
/// they load.
const PYPI: &[&str] = &["tensorboard", "diffusers==0.42.1", "transformers==5.24.0", "peft==0.22.0"];

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn system_packages() -> Result<()> {
    let missing: Vec<&str> = APT.iter().filter(|(_, probe)| !Path::new(probe).exists()).map(|(p, _)| *p).collect();
    // python3-venv only matters when the interpreter cannot make a venv by itself.
    let missing: Vec<&str> = missing.into_iter().filter(|p| *p != "python3-venv" || !python_can_venv()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing system packages: {0}\ninstall them with:\n  sudo apt-get update && sudo apt-get install -y {0}\nthen rerun `cargo xtask setup`", missing.join(" "));
    }
    eprintln!("setup: installing {}", missing.join(" "));
    crate::run(Command::new("apt-get").args(["update", "-q"]))?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

fn python_can_venv() -> bool {
    Command::new(python()).args(["-c", "import venv, ensurepip"]).output().map(|o| o.status.success()).unwrap_or(false)
}

/// The version in a torch package folder (`torch/version.py`), or a libtorch zip's `build-version`.
fn torch_version(dir: &Path) -> Option<String> {
    if let Ok(v) = std::fs::read_to_string(dir.join("build-version")) {
        return Some(v.trim().split('+').next()?.to_string());
    }
    let text = std::fs::read_to_string(dir.join("version.py")).ok()?;
    let line = text.lines().find(|l| l.starts_with("__version__"))?;
    Some(line.split(['\'', '"']).nth(1)?.split('+').next()?.to_string())
}

fn valid_libtorch(dir: &Path) -> bool {
    dir.join("lib").join("libtorch_cpu.so").exists() && dir.join("include").exists()
}

/// A torch install of the right version that some python already has.
fn existing_torch() -> Option<PathBuf> {
    let out = Command::new(python())
        .args(["-c", "import torch, os; print(torch.__version__); print(os.path.dirname(torch.__file__))"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let version = lines.next()?.split('+').next()?.to_string();
    let dir = PathBuf::from(lines.next()?);
    (version == TORCH_VERSION && valid_libtorch(&dir)).then_some(dir)
}

fn venv_torch(root: &Path) -> Option<PathBuf> {
    let lib = root.join(".venv/lib");
    std::fs::read_dir(&lib).ok()?.flatten().map(|e| e.path().join("site-packages/torch")).find(|p| valid_libtorch(p))
}

fn link(root: &Path, target: &Path) -> Result<()> {
    let l = root.join(".libtorch");
    if std::fs::symlink_metadata(&l).is_ok() {
        std::fs::remove_file(&l).with_context(|| format!("removing {}", l.display()))?;
    }
    std::os::unix::fs::symlink(target, &l).with_context(|| format!("linking {} -> {}", l.display(), target.display()))
}

/// Make libtorch available; returns the LIBTORCH directory to build against.
fn libtorch(root: &Path) -> Result<PathBuf> {
    let ours = root.join(".libtorch");
    // A LIBTORCH the user set (cargo's [env] only fills it in when unset).
    if let Some(user) = std::env::var_os("LIBTORCH").map(PathBuf::from) {
        if user != ours {
            if !valid_libtorch(&user) {
                bail!("LIBTORCH={} has no lib/libtorch_cpu.so and include/: point it at a libtorch {TORCH_VERSION} folder, or unset it", user.display());
            }
            if let Some(v) = torch_version(&user).filter(|v| v != TORCH_VERSION) {
                bail!("LIBTORCH={} is libtorch {v}; tch 0.26 needs {TORCH_VERSION}", user.display());
            }
            return Ok(user);
        }
    }
    if valid_libtorch(&ours) && torch_version(&ours).as_deref() == Some(TORCH_VERSION) {
        return Ok(ours);
    }
    if let Some(dir) = venv_torch(root).filter(|d| torch_version(d).as_deref() == Some(TORCH_VERSION)) {
        link(root, &dir)?;
        return Ok(ours);
    }
    if let Some(dir) = existing_torch() {
        eprintln!("setup: using the torch {TORCH_VERSION} already installed at {}", dir.display());
        link(root, &dir)?;
        return Ok(ours);
    }
    let venv = root.join(".venv");
    eprintln!("setup: creating {} with torch=={TORCH_VERSION} (a few GB, about a minute)", venv.display());
    if !venv.join("bin/python").exists() {
        crate::run(Command::new(python()).args(["-m", "venv"]).arg(&venv))?;
    }
    crate::run(
        Command::new(venv.join("bin/python"))
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .arg(format!("torch=={TORCH_VERSION}"))
            .arg("numpy"),
    )
    .context("installing torch from the Python package index")?;
    let dir = venv_torch(root).context("torch installed but not found in .venv/lib/*/site-packages")?;
    link(root, &dir)?;
    Ok(ours)
}

/// Python packages the reference and benchmark scripts use, into the project venv.
pub fn python_packages(root: &Path, pkgs: &[&str]) -> Result<PathBuf> {
    let py = root.join(".venv/bin/python");
    if !py.exists() {
        crate::run(Command::new(python()).args(["-m", "venv"]).arg(root.join(".venv")))?;
    }
    let missing: Vec<&&str> = pkgs
        .iter()
        .filter(|p| {
            let module = p.split(['=', '<', '>']).next().unwrap_or(p).replace('-', "_");
            !Command::new(&py)
                .args(["-c", &format!("import {module}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .collect();
    if !missing.is_empty() {
        crate::run(
            Command::new(&py)
                .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                .args(missing.iter().map(|s| **s))
                // A package that depends on torch must not move it off the version tch links against.
                .arg(format!("torch=={TORCH_VERSION}")),
        )?;
    }
    Ok(py)
}

/// The npm package `openmoji` (SVGs, CC BY-SA 4.0) that genlab-data's `openmoji-color` and
/// `openmoji-black` datasets rasterise, installed under the data folder. Without npm this only
/// says what to install: the rest of genlab works without OpenMoji.
fn openmoji() -> Result<()> {
    const VERSION: &str = "17.0.0"; // genlab_data::openmoji::VERSION
    if std::env::var_os("GENLAB_OPENMOJI_DIR").is_some() {
        return Ok(());
    }
    let prefix = crate::download::data_dir()?.join("openmoji-npm");
    let pkg = prefix.join("node_modules/openmoji");
    let manifest = std::fs::read_to_string(pkg.join("package.json")).unwrap_or_default();
    if manifest.contains(&format!("\"version\": \"{VERSION}\""))
        && pkg.join("color/svg").is_dir()
        && pkg.join("black/svg").is_dir()
    {
        return Ok(());
    }
    let package = format!("openmoji@{VERSION}");
    let install = format!("npm install --prefix {} {package} --no-audit --no-fund", prefix.display());
    if Command::new("npm").arg("--version").output().is_err() {
        eprintln!("setup: npm not found, so the openmoji-* datasets are not installed; install Node.js with npm (e.g. `apt-get install nodejs npm`), then run `cargo xtask setup` or `{install}`");
        return Ok(());
    }
    eprintln!("setup: installing {package} (4 MB download, 43 MB of SVGs) into {}", prefix.display());
    crate::run(
        Command::new("npm").args(["install", "--prefix"]).arg(&prefix).arg(&package).args(["--no-audit", "--no-fund"]),
    )
    .with_context(|| format!("installing OpenMoji from the npm registry (by hand: {install})"))
}

pub fn setup() -> Result<PathBuf> {
    let root = crate::root();
    system_packages()?;
    openmoji()?;
    let lt = libtorch(&root)?;
    eprintln!("setup: libtorch {TORCH_VERSION} at {}", std::fs::canonicalize(&lt).unwrap_or(lt.clone()).display());
    python_packages(&root, PYPI)?;
    crate::download::clip_vocab(&root, &crate::download::data_dir()?, None)?;
    Ok(lt)
}
