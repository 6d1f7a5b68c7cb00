//! genlab-data: datasets and loaders.
//!
//! A dataset is anything with a length and items (a u8 image `C x H x W` and an optional
//! label): the built-in real sets ([`builtin`]), IDX files ([`idx`]), CIFAR-10 batches
//! ([`cifar`]), HDF5 files ([`h5`]) and image folders ([`folder`]). [`open`] turns the
//! CLI's DATASET argument into one; [`loader::Loader`] turns it into deterministic,
//! sharded, prefetched batches; [`tools`] holds what `genlab data` runs.
pub mod builtin;
pub mod captions;
pub mod cifar;
pub mod dataset;
pub mod error;
pub mod flags;
pub mod folder;
pub mod h5;
pub mod idx;
pub mod loader;
pub mod openmoji;
pub mod tools;

pub use dataset::{batch_of, Concat, Dataset, InMemory, Item, Subset};
pub use error::{DataError, Result};
pub use flags::DataOptions;
pub use folder::{Crop, FolderDataset};
pub use h5::{write_h5, write_matrix_h5, H5Dataset, H5Writer};
pub use loader::{Loader, LoaderConfig};
pub use openmoji::{openmoji_pairs, OpenMoji, OpenMojiOptions};
pub use tools::{convert, info, preview};

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where `cargo xtask download` puts datasets: `$GENLAB_DATA_DIR`, else `~/.cache/genlab`.
pub fn data_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("GENLAB_DATA_DIR") {
        return Some(PathBuf::from(d));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("genlab"))
}

/// The built-in dataset names `open` accepts.
pub const BUILTIN_NAMES: &[&str] = &[
    "mnist5k",
    "digits",
    "fashion-mnist",
    "fashion-mnist:test",
    "mnist",
    "mnist:test",
    "cifar10",
    "cifar10:test",
    "openmoji-color",
    "openmoji-black",
];

/// Choices for [`open_with`]. `size`, `channels`, `crop` and `skip_bad` shape image folders;
/// for other sources a `size` or `channels` that differs from the data is an error.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// `[height, width]` of every item (image folders default to the first image's).
    pub size: Option<[usize; 2]>,
    /// 1 (grey) or 3 (RGB) (image folders default to the first image's colour).
    pub channels: Option<usize>,
    pub crop: Crop,
    /// Leave unreadable images out of an image folder instead of failing.
    pub skip_bad: bool,
    /// HDF5 labels dataset (default: `labels` beside the images, when there is one).
    pub h5_labels: Option<String>,
}

/// Open a dataset as the CLI names it, with default [`OpenOptions`]:
/// - a built-in name (`mnist5k`, `digits`, `fashion-mnist`, `fashion-mnist:test`), including
///   `openmoji-color[@SIZE]` and `openmoji-black[@SIZE]` (see [`openmoji`]; `size`, `channels`
///   and `skip_bad` apply to these too);
/// - `cifar10:DIR` or `cifar10-test:DIR` (CIFAR-10's binary batches);
/// - `file.h5` or `file.hdf5`, optionally `:path/to/dataset` (default `images`);
/// - an IDX images file `*idx3-ubyte[.gz]`, with the labels file beside it when it is named
///   the standard way (`train-images-idx3-ubyte` -> `train-labels-idx1-ubyte`);
/// - a folder of PNG/JPEG images.
pub fn open(spec: &str) -> Result<Arc<dyn Dataset>> {
    open_with(spec, &OpenOptions::default())
}

/// [`open`] with options.
pub fn open_with(spec: &str, opts: &OpenOptions) -> Result<Arc<dyn Dataset>> {
    if let Some(parsed) = openmoji::parse_spec(spec) {
        let (style, suffix) = parsed?;
        return Ok(Arc::new(OpenMoji::open(style, &openmoji::options_for(spec, suffix, opts)?)?));
    }
    let ds: Arc<dyn Dataset> = if let Some(ds) = builtin::open_builtin(spec) {
        Arc::new(ds?)
    } else if let Some(dir) = spec.strip_prefix("cifar10:") {
        Arc::new(cifar::read_cifar10(Path::new(dir), false)?)
    } else if let Some(dir) = spec.strip_prefix("cifar10-test:") {
        Arc::new(cifar::read_cifar10(Path::new(dir), true)?)
    } else if let Some((file, dataset)) = h5::parse_spec(spec) {
        Arc::new(H5Dataset::open(&file, &dataset, opts.h5_labels.as_deref())?)
    } else if spec.contains("idx3-ubyte") {
        Arc::new(open_idx(Path::new(spec))?)
    } else if Path::new(spec).is_dir() {
        return Ok(Arc::new(FolderDataset::open(Path::new(spec), opts)?));
    } else {
        return Err(DataError::Unknown(spec.to_string()));
    };
    let [c, h, w] = ds.shape();
    let size_differs = opts.size.is_some_and(|s| s != [h, w]);
    if size_differs || opts.channels.is_some_and(|k| k != c) {
        return Err(DataError::Invalid(format!(
            "{}: items are {c}x{h}x{w}; resizing and colour conversion apply to image folders only",
            ds.describe()
        )));
    }
    Ok(ds)
}

/// The labels file that goes with an IDX images file named the standard way.
fn idx_labels_for(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gz").unwrap_or(name);
    let labels = stem.replace("images", "labels").replace("idx3", "idx1");
    [format!("{labels}.gz"), labels].into_iter().map(|n| images.with_file_name(n)).find(|p| p.is_file())
}

/// An IDX images file (`N x H x W`), labelled when its labels file is beside it.
fn open_idx(path: &Path) -> Result<InMemory> {
    let name = path.display().to_string();
    if let Some(labels) = idx_labels_for(path) {
        return builtin::idx_pair(&name, path, &labels);
    }
    let (dims, px) = idx::read_idx(path)?;
    if dims.len() != 3 {
        return Err(DataError::format(path, format!("expected 3 dimensions (N x H x W), found {dims:?}")));
    }
    InMemory::new(name, [1, dims[1], dims[2]], px, None)
}

/// Which items of a dataset to keep, after [`open_with`] has read it: the CLI's `--exclude-class`,
/// `--per-class`, `--limit` and `--add`.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Leave out every item of this class.
    pub exclude_class: Option<i64>,
    /// Keep the first N items of every class.
    pub per_class: Option<usize>,
    /// Keep the first N items (after the two cuts above).
    pub limit: Option<usize>,
    /// Datasets of the same item shape appended whole (read with the same [`OpenOptions`]).
    pub add: Vec<String>,
}

/// [`open_with`], then the cuts and additions of `select`, in the order [`Selection`] lists them.
pub fn open_selected(spec: &str, opts: &OpenOptions, select: &Selection) -> Result<Arc<dyn Dataset>> {
    let mut ds = open_with(spec, opts)?;
    if let Some(k) = select.exclude_class {
        ds = Arc::new(Subset::without_class(ds, k)?);
    }
    if let Some(n) = select.per_class {
        ds = Arc::new(Subset::per_class(ds, n)?);
    }
    if let Some(n) = select.limit {
        if n == 0 {
            return Err(DataError::Invalid(format!("{spec}: a limit of 0 images leaves nothing to train on")));
        }
        ds = Arc::new(Subset::first(ds, n)?);
    }
    if select.add.is_empty() {
        return Ok(ds);
    }
    let mut parts = vec![ds];
    for extra in &select.add {
        parts.push(open_with(extra, opts)?);
    }
    Ok(Arc::new(Concat::new(parts)?))
}

/// A training dataset: the spec [`open_with`] reads and the options it is read and cut with (the
/// CLI's `--data` and dataset flags).
#[derive(Debug, Clone, Default)]
pub struct DataSpec {
    pub spec: String,
    pub read: OpenOptions,
    pub select: Selection,
}

impl DataSpec {
    /// `spec` with default options.
    pub fn new(spec: &str) -> Self {
        DataSpec { spec: spec.to_string(), ..Default::default() }
    }

    /// [`open_selected`].
    pub fn open(&self) -> Result<Arc<dyn Dataset>> {
        open_selected(&self.spec, &self.read, &self.select)
    }

    /// Another dataset read and cut the same way.
    pub fn with_spec(&self, spec: &str) -> Self {
        DataSpec { spec: spec.to_string(), ..self.clone() }
    }
}

/// [`genlab_core::run::fit`] on a dataset: a new run's configuration is `fresh(dataset)` for the
/// dataset `data` names; the batches come from the run's own dataset (`run.data()`, read like
/// `data`) in batches of its batch size, shuffled by the harness seed.
pub fn fit<R: genlab_core::run::RunKind, T: genlab_core::train::TrainTask>(
    opts: &genlab_core::run::FitOptions,
    data: &DataSpec,
    fresh: impl FnOnce(&Arc<dyn Dataset>) -> genlab_core::Result<R>,
    build: impl FnOnce(R, genlab_core::run::Start, tch::Device) -> genlab_core::Result<T>,
) -> genlab_core::Result<genlab_core::train::Outcome> {
    let (seed, device) = (opts.harness.seed, opts.device);
    genlab_core::run::fit(
        opts,
        || fresh(&data.open()?),
        |run| {
            let ds = data.with_spec(run.data()).open()?;
            let loader = Loader::new(ds, LoaderConfig::new(run.batch_size(), seed, device))?;
            Ok(Box::new(loader) as Box<dyn genlab_core::train::BatchSource>)
        },
        build,
    )
}

/// The batches a run trains on: its dataset (`run.data()`, read with default [`OpenOptions`]) in
/// batches of `run.batch_size()`, shuffled by `seed`; the `data` argument of
/// [`genlab_core::run::fit`].
pub fn run_batches<R: genlab_core::run::RunKind>(
    run: &R,
    seed: u64,
    device: tch::Device,
) -> genlab_core::Result<Box<dyn genlab_core::train::BatchSource>> {
    let ds = open(run.data())?;
    Ok(Box::new(Loader::new(ds, LoaderConfig::new(run.batch_size(), seed, device))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_reach_the_right_reader() {
        assert!(matches!(open("no-such-thing"), Err(DataError::Unknown(_))));
        assert!(open("digits").unwrap().describe().starts_with("digits"));
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // IDX with and without a labels file beside it.
        let mut img = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1];
        img.extend([5, 6]);
        std::fs::write(d.join("x-images-idx3-ubyte"), &img).unwrap();
        let x = open(&d.join("x-images-idx3-ubyte").display().to_string()).unwrap();
        assert_eq!((x.len(), x.shape(), x.num_classes()), (2, [1, 1, 1], None));
        std::fs::write(d.join("x-labels-idx1-ubyte"), [0, 0, 8, 1, 0, 0, 0, 2, 4, 1]).unwrap();
        let x = open(&d.join("x-images-idx3-ubyte").display().to_string()).unwrap();
        assert_eq!((x.num_classes(), x.get(0).unwrap().label), (Some(5), Some(4)));
        img[1] = 7;
        std::fs::write(d.join("bad-images-idx3-ubyte"), &img).unwrap();
        let e = open(&d.join("bad-images-idx3-ubyte").display().to_string()).unwrap_err().to_string();
        assert!(e.contains("bad-images-idx3-ubyte") && e.contains("magic"), "{e}");
        // HDF5 with a dataset path; options that do not fit are errors.
        let h5 = d.join("s.h5");
        write_h5(&h5, &tch::Tensor::zeros([3, 1, 2, 2], (tch::Kind::Uint8, tch::Device::Cpu)), None, &[]).unwrap();
        assert_eq!(open(&format!("{}:images", h5.display())).unwrap().len(), 3);
        let opts = OpenOptions { size: Some([4, 4]), ..Default::default() };
        assert!(open_with(&h5.display().to_string(), &opts).unwrap_err().to_string().contains("image folders only"));
        let e = open(&format!("{}:nope", h5.display())).unwrap_err().to_string();
        assert!(e.contains("no dataset `nope`"), "{e}");
        // A folder.
        let f = d.join("imgs/a");
        std::fs::create_dir_all(&f).unwrap();
        image::GrayImage::new(3, 2).save(f.join("p.png")).unwrap();
        let g = open(&d.join("imgs").display().to_string()).unwrap();
        assert_eq!((g.shape(), g.class_names()), ([1, 2, 3], Some(vec!["a".to_string()])));
        assert!(matches!(open(&d.join("empty-cifar").display().to_string()), Err(DataError::Unknown(_))));
        assert!(open(&format!("cifar10:{}", d.display())).unwrap_err().to_string().contains("data_batch_1.bin"));
    }
}
