//! `cargo xtask download NAME`: fetch a dataset's original files with curl, verify their
//! sha256, and lay them out where genlab-data's built-in names find them
//! (`$GENLAB_DATA_DIR/NAME`, else `~/.cache/genlab/NAME`).
//!
//! Where the network refuses, the message says which file (and checksum) to put where;
//! a file already there with the right checksum is not fetched again.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Resource {
    pub url: &'static str,
    pub file: &'static str,
    pub sha256: &'static str,
}

pub struct DatasetFiles {
    pub name: &'static str,
    pub about: &'static str,
    pub files: &'static [Resource],
    /// Unpack `.tar.gz` archives after verification.
    pub untar: bool,
}

const fn r(url: &'static str, file: &'static str, sha256: &'static str) -> Resource {
    Resource { url, file, sha256 }
}

/// Original distribution files and their published sha256 sums.
pub const DATASETS: &[DatasetFiles] = &[
    DatasetFiles {
        name: "mnist",
        about: "MNIST, 60,000 + 10,000 28x28 digits (LeCun, Cortes, Burges; CC BY-SA 3.0), the mirror torchvision uses",
        files: &[
            r("https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            r("https://ossci-datasets.s3.amazonaws.com/mnist/train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            r("https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            r("https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        ],
        untar: false,
    },
    DatasetFiles {
        name: "fashion-mnist",
        about: "Fashion-MNIST, 60,000 + 10,000 28x28 article images (Zalando Research; MIT); the Debian package dataset-fashion-mnist has the same images",
        files: &[
            r("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz", "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
            r("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz", "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
            r("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            r("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        ],
        untar: false,
    },
    DatasetFiles {
        name: "cifar10",
        about: "CIFAR-10 binary version, 50,000 + 10,000 32x32 colour images (Krizhevsky 2009)",
        files: &[r("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "cifar-10-binary.tar.gz", "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd")],
        untar: true,
    },
];

pub fn data_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("GENLAB_DATA_DIR") {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME").context("neither GENLAB_DATA_DIR nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/genlab"))
}

pub fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum").arg(path).output().context("running sha256sum")?;
    if !out.status.success() {
        bail!("sha256sum {}: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string())
}

/// Fetch `url` to `dest` unless a file with `want` sha256 is already there; verify it.
pub fn fetch(url: &str, dest: &Path, want: &str) -> Result<()> {
    if dest.is_file() && sha256(dest)? == want {
        eprintln!("download: {} already present and verified", dest.display());
        return Ok(());
    }
    let dir = dest.parent().context("destination has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let part = dest.with_extension("part");
    curl(url, &part).map_err(|e| {
        anyhow::anyhow!(
            "{e}\nFetch it some other way and put it at\n  {}\n(sha256 {want}); then rerun this command, which will verify it.",
            dest.display()
        )
    })?;
    let got = sha256(&part)?;
    if got != want {
        let _ = std::fs::remove_file(&part);
        bail!("{url}: sha256 is {got}, expected {want}; the download is corrupt or the file changed upstream");
    }
    std::fs::rename(&part, dest).with_context(|| format!("moving the download to {}", dest.display()))
}

/// Fetch `url` to `part` with curl; a refusal says which URL and why.
fn curl(url: &str, part: &Path) -> Result<()> {
    eprintln!("download: {url}");
    let out = Command::new("curl")
        .args([
            "--fail",
            "--location",
            "--silent",
            "--show-error",
            "--connect-timeout",
            "20",
            "--retry",
            "2",
            "--output",
        ])
        .arg(part)
        .arg(url)
        .output()
        .context("running curl (install curl, or fetch the file by hand)")?;
    if !out.status.success() {
        let _ = std::fs::remove_file(part);
        bail!(
            "could not download {url}: {}",
            String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("curl failed")
        );
    }
    Ok(())
}

pub fn download(name: &str, root: &Path) -> Result<PathBuf> {
    let Some(ds) = DATASETS.iter().find(|d| d.name == name) else {
        let names: Vec<&str> = DATASETS.iter().map(|d| d.name).collect();
        bail!("unknown download `{name}`: expected one of {}", names.join(", "));
    };
    let dir = root.join(ds.name);
    eprintln!("download: {} into {}", ds.about, dir.display());
    for f in ds.files {
        let dest = dir.join(f.file);
        fetch(f.url, &dest, f.sha256)?;
        if ds.untar {
            crate::run(Command::new("tar").arg("-xzf").arg(&dest).arg("-C").arg(&dir))?;
        }
    }
    Ok(dir)
}

/// pytorch-fid's FID Inception-v3 weights (TensorFlow's 2015-12-05 Inception graph ported to PyTorch).
pub const FID_INCEPTION_URL: &str =
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";
pub const FID_INCEPTION_PTH: &str = "pt_inception-2015-12-05-6726825d.pth";
/// torch.hub's check: the hash in the file name is the start of the file's sha256.
pub const FID_INCEPTION_SHA256_PREFIX: &str = "6726825d";
/// Where genlab-eval looks for the converted weights (`genlab_eval::inception::WEIGHTS_SAFETENSORS`).
pub const FID_INCEPTION_SAFETENSORS: &str = "fid-inception/pt_inception-2015-12-05-6726825d.safetensors";
/// Tensors of the state dict: 94 conv + BatchNorm layers (conv weight; bn weight, bias, running
/// mean and variance) and `fc`'s weight and bias, `num_batches_tracked` counters left out.
pub const FID_INCEPTION_TENSORS: usize = 94 * 5 + 2;

/// Reads a `torch.save`d state dict (zip or the legacy format, dict or OrderedDict: libtorch's
/// C++ loader reads neither the legacy format nor an OrderedDict, so torch itself reads it) and
/// writes it as safetensors, float32, names sorted, `num_batches_tracked` left out.
/// argv: source, destination, expected tensor count (0: any).
const CONVERT_PY: &str = r#"
import json, struct, sys
import torch
src, dst, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
sd = torch.load(src, map_location="cpu", weights_only=True)
if not isinstance(sd, dict):
    sys.exit(f"{src}: holds a {type(sd).__name__}, not a state dict")
names = sorted(n for n in sd if not n.endswith("num_batches_tracked"))
if expected and len(names) != expected:
    sys.exit(f"{src}: {len(names)} tensors, expected {expected}; not the FID Inception-v3 state dict")
header, blobs, off = {}, [], 0
for n in names:
    b = sd[n].detach().to(torch.float32).contiguous().numpy().tobytes()
    header[n] = {"dtype": "F32", "shape": list(sd[n].shape), "data_offsets": [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
h = json.dumps(header, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
with open(dst, "wb") as f:
    f.write(struct.pack("<Q", len(h)))
    f.write(h)
    for b in blobs:
        f.write(b)
print(len(names))
"#;

/// Convert a `torch.save`d state dict to safetensors with the project's Python (`.venv`, which
/// `cargo xtask setup` creates with torch); `expected` tensors when given.
pub fn convert_state_dict(python: &Path, src: &Path, dst: &Path, expected: Option<usize>) -> Result<usize> {
    if !python.exists() {
        bail!(
            "{} is missing: run `cargo xtask setup` first (the conversion reads the file with torch)",
            python.display()
        );
    }
    let dir = dst.parent().context("destination has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let part = dst.with_extension("part");
    let expected = expected.unwrap_or(0).to_string();
    let args = [std::ffi::OsStr::new("-c"), CONVERT_PY.as_ref(), src.as_os_str(), part.as_os_str(), expected.as_ref()];
    let out = run_python(python, &args, &format!("converting {}", src.display())).inspect_err(|_| {
        let _ = std::fs::remove_file(&part);
    })?;
    let count = String::from_utf8_lossy(&out.stdout).trim().parse::<usize>().context("reading the tensor count")?;
    std::fs::rename(&part, dst).with_context(|| format!("moving the conversion to {}", dst.display()))?;
    Ok(count)
}

/// `cargo xtask download fid-inception [--from FILE]`: fetch (or take `from`) the published
/// weights, check the sha256 prefix in their name, convert them to safetensors where genlab-eval
/// finds them, and return that path.
pub fn fid_inception(project: &Path, root: &Path, from: Option<&Path>) -> Result<PathBuf> {
    let dir = root.join("fid-inception");
    let pth = match from {
        Some(f) => {
            if !f.is_file() {
                bail!("--from {}: no such file", f.display());
            }
            f.to_path_buf()
        }
        None => {
            let dest = dir.join(FID_INCEPTION_PTH);
            if !dest.is_file() {
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                let part = dest.with_extension("part");
                eprintln!("download: {FID_INCEPTION_URL}");
                let out = Command::new("curl")
                    .args(["--fail", "--location", "--silent", "--show-error", "--connect-timeout", "20", "--output"])
                    .arg(&part)
                    .arg(FID_INCEPTION_URL)
                    .output()
                    .context("running curl (install curl, or fetch the file by hand and pass --from FILE)")?;
                if !out.status.success() {
                    let _ = std::fs::remove_file(&part);
                    bail!(
                        "could not download {FID_INCEPTION_URL}: {}\nFetch {FID_INCEPTION_PTH} (about 92 MB) on a machine that can reach \
                         github.com, copy it here and run\n  cargo xtask download fid-inception --from /path/to/{FID_INCEPTION_PTH}",
                        String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("curl failed")
                    );
                }
                std::fs::rename(&part, &dest).with_context(|| format!("moving the download to {}", dest.display()))?;
            }
            dest
        }
    };
    let sum = sha256(&pth)?;
    if !sum.starts_with(FID_INCEPTION_SHA256_PREFIX) {
        bail!(
            "{}: sha256 is {sum}, which does not start with {FID_INCEPTION_SHA256_PREFIX} as the published {FID_INCEPTION_PTH} does",
            pth.display()
        );
    }
    let dst = root.join(FID_INCEPTION_SAFETENSORS);
    let n = convert_state_dict(&project.join(".venv/bin/python"), &pth, &dst, Some(FID_INCEPTION_TENSORS))?;
    eprintln!("download: converted {n} tensors of {} to {}", pth.display(), dst.display());
    Ok(dst)
}

/// The Python package that ships OpenAI's CLIP BPE merges file, and the file inside it.
pub const CLIP_VOCAB_PACKAGE: &str = "open-clip-torch==3.3.0";
pub const CLIP_VOCAB_MEMBER: &str = "open_clip/bpe_simple_vocab_16e6.txt.gz";
/// Where genlab-diffusion looks for it (`genlab_diffusion::clip::default_vocab_path`).
pub const CLIP_VOCAB_FILE: &str = "clip/bpe_simple_vocab_16e6.txt.gz";
/// sha256 of `bpe_simple_vocab_16e6.txt.gz` (the same file in OpenAI's CLIP repository).
pub const CLIP_VOCAB_SHA256: &str = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a";

/// A folder removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run the project's Python with `args`; on failure, an error that starts with `what` and
/// ends with Python's last line of stderr.
fn run_python<S: AsRef<std::ffi::OsStr>>(python: &Path, args: &[S], what: &str) -> Result<std::process::Output> {
    let out = Command::new(python).args(args).output().with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("python failed"));
    }
    Ok(out)
}

/// Copy `member` out of the zip archive (a wheel) `wheel` to `dest`, with the project's Python.
fn extract_from_wheel(python: &Path, wheel: &Path, member: &str, dest: &Path) -> Result<()> {
    let code = "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[3], 'wb') as f:\n    f.write(z.read(sys.argv[2]))";
    let args = [std::ffi::OsStr::new("-c"), code.as_ref(), wheel.as_os_str(), member.as_ref(), dest.as_os_str()];
    run_python(python, &args, &format!("{}: cannot extract {member}", wheel.display()))?;
    Ok(())
}

/// `cargo xtask download clip-vocab [--from FILE]`: the CLIP BPE merges file, taken from the
/// open-clip-torch wheel on the Python package index (or from `from`: that wheel, or the
/// `.txt.gz` itself), verified and put where genlab-diffusion finds it.
pub fn clip_vocab(project: &Path, root: &Path, from: Option<&Path>) -> Result<PathBuf> {
    let dest = root.join(CLIP_VOCAB_FILE);
    if from.is_none() && dest.is_file() && sha256(&dest)? == CLIP_VOCAB_SHA256 {
        eprintln!("download: {} already present and verified", dest.display());
        return Ok(dest);
    }
    let dir = dest.parent().context("destination has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let python = project.join(".venv/bin/python");
    let part = dest.with_extension("part");
    match from {
        Some(f) if !f.is_file() => bail!("--from {}: no such file", f.display()),
        Some(f) if f.extension().is_some_and(|e| e == "whl") => {
            extract_from_wheel(&python, f, CLIP_VOCAB_MEMBER, &part)?
        }
        Some(f) => {
            std::fs::copy(f, &part).with_context(|| format!("copying {}", f.display()))?;
        }
        None => {
            if !python.exists() {
                bail!(
                    "{} is missing: run `cargo xtask setup` first (pip fetches the vocabulary's package)",
                    python.display()
                );
            }
            let tmp = TempDir(dir.join(".pip-download"));
            std::fs::create_dir_all(&tmp.0).with_context(|| format!("creating {}", tmp.0.display()))?;
            eprintln!("download: {CLIP_VOCAB_PACKAGE} (1.5 MB) from the Python package index, for {CLIP_VOCAB_MEMBER}");
            let pip =
                ["-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps", "--only-binary=:all:"];
            let mut args: Vec<&std::ffi::OsStr> = pip.iter().map(std::ffi::OsStr::new).collect();
            args.extend([std::ffi::OsStr::new("-d"), tmp.0.as_os_str(), CLIP_VOCAB_PACKAGE.as_ref()]);
            run_python(&python, &args, &format!("could not download {CLIP_VOCAB_PACKAGE}")).map_err(|e| {
                anyhow::anyhow!(
                    "{e}\nFetch its wheel (or {CLIP_VOCAB_MEMBER} from it, or bpe_simple_vocab_16e6.txt.gz from OpenAI's CLIP repository) on a machine that can, then run\n  cargo xtask download clip-vocab --from FILE"
                )
            })?;
            let wheel = std::fs::read_dir(&tmp.0)?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "whl"))
                .context("pip downloaded no wheel")?;
            extract_from_wheel(&python, &wheel, CLIP_VOCAB_MEMBER, &part)?;
        }
    }
    let got = sha256(&part)?;
    if got != CLIP_VOCAB_SHA256 {
        let _ = std::fs::remove_file(&part);
        bail!("the CLIP vocabulary's sha256 is {got}, expected {CLIP_VOCAB_SHA256}: not bpe_simple_vocab_16e6.txt.gz");
    }
    std::fs::rename(&part, &dest).with_context(|| format!("moving the vocabulary to {}", dest.display()))?;
    Ok(dest)
}

/// Stable Diffusion 1.5 in diffusers layout, as published at
/// <https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5> (the former runwayml/stable-diffusion-v1-5;
/// CreativeML Open RAIL-M licence). The safety checker and feature extractor are not fetched: genlab does not
/// run them.
pub const SD15_URL: &str = "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main";
pub const SD15_FILES: &[&str] = &[
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model{variant}.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model{variant}.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model{variant}.safetensors",
];

/// Check a fetched file by its kind: JSON parses, a safetensors file's header parses and its tensors
/// end exactly at the end of the file (a truncated download fails here).
pub fn check_model_file(path: &Path) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().trim_end_matches(".part");
    let bytes_len = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    if name.ends_with(".json") {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str::<serde_json::Value>(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    } else if name.ends_with(".safetensors") {
        use std::io::Read;
        let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len).with_context(|| format!("{}: shorter than a safetensors header", path.display()))?;
        let n = u64::from_le_bytes(len);
        if n > 100 << 20 || 8 + n > bytes_len {
            bail!("{}: not a safetensors file (header length {n}, file {bytes_len} bytes)", path.display());
        }
        let mut header = vec![0u8; n as usize];
        f.read_exact(&mut header)?;
        let v: serde_json::Value = serde_json::from_slice(&header)
            .with_context(|| format!("{}: the safetensors header is not JSON", path.display()))?;
        let end =
            v.as_object().into_iter().flatten().filter_map(|(_, t)| t["data_offsets"][1].as_u64()).max().unwrap_or(0);
        if 8 + n + end != bytes_len {
            bail!(
                "{}: {bytes_len} bytes, but its header describes {} (truncated or corrupt download)",
                path.display(),
                8 + n + end
            );
        }
    } else if bytes_len == 0 {
        bail!("{}: empty file", path.display());
    }
    Ok(())
}

/// `cargo xtask download sd15 [--fp16] [--from DIR]`: Stable Diffusion 1.5's diffusers folder from `base`
/// ([`SD15_URL`]) into `root/sd15` (fp32 weights, or the fp16 variant: half the size), every file checked
/// ([`check_model_file`]); from `from` (a local copy, e.g. a Hugging Face cache snapshot) instead of the
/// network when given. Files already present and valid are kept.
pub fn sd15(root: &Path, fp16: bool, from: Option<&Path>, base: &str) -> Result<PathBuf> {
    let dest = root.join("sd15");
    let variant = if fp16 { ".fp16" } else { "" };
    let mut failed = Vec::new();
    for file in SD15_FILES {
        let file = file.replace("{variant}", variant);
        let target = dest.join(&file);
        if target.is_file() && check_model_file(&target).is_ok() {
            eprintln!("download: {} already present", target.display());
            continue;
        }
        let dir = target.parent().context("no folder")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let part =
            target.with_extension(format!("{}.part", target.extension().and_then(|e| e.to_str()).unwrap_or_default()));
        let got = match from {
            Some(src) => {
                let s = src.join(&file);
                std::fs::copy(&s, &part).map(|_| ()).with_context(|| format!("copying {}", s.display()))
            }
            None => curl(&format!("{base}/{file}"), &part),
        };
        match got.and_then(|_| check_model_file(&part)) {
            Ok(()) => std::fs::rename(&part, &target).with_context(|| format!("moving to {}", target.display()))?,
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                failed.push(format!("{file}: {e:#}"));
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} files could not be fetched:\n  {}\nFetch them on a machine that can (they are the files of {SD15_URL}, \
             e.g. in a Hugging Face cache snapshot folder) and run\n  cargo xtask download sd15{} --from DIR",
            failed.len(),
            SD15_FILES.len(),
            failed.join("\n  "),
            if fp16 { " --fp16" } else { "" }
        );
    }
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetches_verifies_and_explains_failures() {
        let tmp = std::env::temp_dir().join(format!("genlab-xtask-dl-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let src = tmp.join("src.bin");
        std::fs::write(&src, b"genlab").unwrap();
        let sum = sha256(&src).unwrap();
        assert_eq!(sum.len(), 64);
        let url = format!("file://{}", src.display());
        let dest = tmp.join("out/file.bin");
        fetch(&url, &dest, &sum).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"genlab");
        // Present and verified: no fetch needed even from a dead URL.
        fetch("file:///nonexistent/file", &dest, &sum).unwrap();
        // A wrong checksum is refused and leaves nothing behind.
        let other = tmp.join("out/other.bin");
        let e = fetch(&url, &other, &"0".repeat(64)).unwrap_err().to_string();
        assert!(e.contains("sha256 is") && !other.exists(), "{e}");
        // An unreachable source says where to put the file.
        let e = fetch("file:///nonexistent/file", &other, &sum).unwrap_err().to_string();
        assert!(e.contains("put it at") && e.contains("other.bin") && e.contains(&sum), "{e}");
        assert!(download("imagenet", &tmp).unwrap_err().to_string().contains("mnist, fashion-mnist, cifar10"));
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

#[cfg(test)]
mod sd15_tests {
    use super::*;

    fn safetensors(path: &Path, payload: usize, truncate: usize) {
        let header = format!(r#"{{"w":{{"dtype":"U8","shape":[{payload}],"data_offsets":[0,{payload}]}}}}"#);
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(vec![7u8; payload - truncate]);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// The file list arrives from a local copy (and from a file:// "server"), every file checked; a truncated
    /// weight file and a source that refuses are errors that name the files and say what to do.
    #[test]
    fn fetches_the_file_list_and_checks_every_file() {
        let tmp = std::env::temp_dir().join(format!("genlab-xtask-sd15-{}", std::process::id()));
        let src = tmp.join("src");
        for f in SD15_FILES {
            let f = f.replace("{variant}", ".fp16");
            let p = src.join(&f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            if f.ends_with(".safetensors") {
                safetensors(&p, 64, 0);
            } else if f.ends_with(".json") {
                std::fs::write(&p, "{}").unwrap();
            } else {
                std::fs::write(&p, "x").unwrap();
            }
        }
        let dest = sd15(&tmp.join("a"), true, Some(&src), SD15_URL).unwrap();
        assert!(dest.join("unet/diffusion_pytorch_model.fp16.safetensors").is_file());
        assert!(dest.join("tokenizer/vocab.json").is_file());
        // The fp32 variant is not in the copy: each missing weight file is named, nothing half-written stays.
        let e = format!("{:#}", sd15(&tmp.join("b"), false, Some(&src), SD15_URL).unwrap_err());
        assert!(e.contains("3 of 12 files") && e.contains("unet/diffusion_pytorch_model.safetensors"), "{e}");
        assert!(e.contains("--from DIR"), "{e}");
        // A truncated download is refused.
        safetensors(&src.join("vae/diffusion_pytorch_model.fp16.safetensors"), 64, 10);
        let e = format!("{:#}", sd15(&tmp.join("c"), true, Some(&src), SD15_URL).unwrap_err());
        assert!(e.contains("1 of 12") && e.contains("truncated"), "{e}");
        assert!(!tmp.join("c/sd15/vae/diffusion_pytorch_model.fp16.safetensors").exists());
        // Over the network (here file://): what is already there and valid is kept, a refusal is explained.
        let e = format!("{:#}", sd15(&tmp.join("a"), false, None, &format!("file://{}", src.display())).unwrap_err());
        assert!(e.contains("could not download file://") && e.contains("3 of 12"), "{e}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

#[cfg(test)]
mod fid_inception_tests {
    use super::*;

    fn project() -> PathBuf {
        crate::root()
    }

    /// A small legacy-format OrderedDict state dict (what the published file is) converts to
    /// safetensors that hold its float32 values, names sorted, without `num_batches_tracked`.
    #[test]
    fn converts_a_torch_state_dict_to_safetensors() {
        let py = project().join(".venv/bin/python");
        let tmp = std::env::temp_dir().join(format!("genlab-xtask-fid-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let src = tmp.join("small.pth");
        let make = "import sys, torch, collections\n\
                    sd = collections.OrderedDict([('b.weight', torch.tensor([1.5, -2.0], dtype=torch.float64)),\n\
                    ('a.bn.num_batches_tracked', torch.tensor(3)), ('a.conv.weight', torch.arange(6.).view(2, 3))])\n\
                    torch.save(sd, sys.argv[1], _use_new_zipfile_serialization=False)";
        let ok = Command::new(&py).args(["-c", make]).arg(&src).status().unwrap().success();
        assert!(ok, "making the test file with {}", py.display());
        let dst = tmp.join("out/small.safetensors");
        assert_eq!(convert_state_dict(&py, &src, &dst, None).unwrap(), 2);
        let bytes = std::fs::read(&dst).unwrap();
        let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&bytes[8..8 + hlen]).unwrap();
        assert!(
            header.starts_with(r#"{"a.conv.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}"#),
            "{header}"
        );
        assert!(header.contains(r#""b.weight":{"dtype":"F32","shape":[2],"data_offsets":[24,32]}"#), "{header}");
        assert!(!header.contains("num_batches_tracked"));
        let data: Vec<f32> = bytes[8 + hlen..].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(data, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 1.5, -2.0]);
        // A wrong tensor count, a file that is no state dict, and a file with another hash are refused.
        let e = convert_state_dict(&py, &src, &dst, Some(FID_INCEPTION_TENSORS)).unwrap_err().to_string();
        assert!(e.contains("2 tensors, expected 472"), "{e}");
        let junk = tmp.join("junk.pth");
        std::fs::write(&junk, b"not a pickle").unwrap();
        assert!(convert_state_dict(&py, &junk, &dst, None).unwrap_err().to_string().contains("junk.pth"));
        let e = fid_inception(&project(), &tmp, Some(&src)).unwrap_err().to_string();
        assert!(e.contains("does not start with 6726825d"), "{e}");
        let e = fid_inception(&project(), &tmp, Some(&tmp.join("missing.pth"))).unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
