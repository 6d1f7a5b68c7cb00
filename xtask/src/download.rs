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
        .arg(&part)
        .arg(url)
        .output()
        .context("running curl (install curl, or fetch the file by hand)")?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&part);
        bail!(
            "could not download {url}: {}\nFetch it some other way and put it at\n  {}\n(sha256 {want}); then rerun this command, which will verify it.",
            String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("curl failed"),
            dest.display()
        );
    }
    let got = sha256(&part)?;
    if got != want {
        let _ = std::fs::remove_file(&part);
        bail!("{url}: sha256 is {got}, expected {want}; the download is corrupt or the file changed upstream");
    }
    std::fs::rename(&part, dest).with_context(|| format!("moving the download to {}", dest.display()))
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
