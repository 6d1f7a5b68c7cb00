//! HDF5 image datasets, read and written through the HDF5 C library (`hdf5-metno`).
//!
//! Reading ([`H5Dataset`]): a dataset of images (default path `images`) of rank 4,
//! `N x C x H x W` or `N x H x W x C`, or rank 3, `N x H x W` (one channel).
//! - Layout: the dataset's string attribute `layout` (`"NCHW"` or `"NHWC"`) when present;
//!   otherwise the channel dimension is the one of size 1, 3 or 4 (when both dimension 1
//!   and dimension 3 could be, the pair of equal sizes is taken as height x width; when that
//!   does not decide either, the file needs a `layout` attribute).
//! - Values: uint8 as is. Float (32 or 64 bit) datasets are scanned once at open and mapped
//!   to 0-255 by their range: all values in [0, 1] are taken as [0, 1]; otherwise all in
//!   [-1, 1] as [-1, 1]; otherwise all in [0, 255] as [0, 255]; anything else (or a NaN) is
//!   an error. Other types (int64, strings, ...) are errors.
//! - Labels: an integer dataset of `N` entries, by default `labels` beside the images.
//! - Rows are read through a small cache of row blocks, so a file larger than memory
//!   streams; random access reads single rows. Uncompressed contiguous uint8 data (what
//!   [`H5Writer`] and h5py write by default) is read with positioned reads of the file,
//!   which run in parallel; everything else goes through HDF5 hyperslab reads, which the
//!   library serialises behind its global lock.
//!
//! Writing ([`H5Writer`], [`write_h5`]): `images` uint8 `N x C x H x W` with the attributes
//! `layout = "NCHW"` and `max_value = 255`, and optional int64 `labels`, the layout
//! `genlab_core::images::save_h5` writes for samples.
use crate::dataset::{Dataset, Item};
use crate::error::{DataError, Result};
use hdf5::types::{FixedAscii, TypeDescriptor, VarLenAscii, VarLenUnicode};
use hdf5::{Hyperslab, SliceOrIndex};
use ndarray::IxDyn;
use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tch::{Kind, Tensor};

/// Default images dataset inside a file.
pub const DEFAULT_IMAGES: &str = "images";
/// Default labels dataset, looked up in the images dataset's group.
pub const DEFAULT_LABELS: &str = "labels";

/// A cached block holds at most this many rows ...
const BLOCK_ROWS: usize = 256;
/// ... and at most about this many bytes as read from the file.
const BLOCK_BYTES: usize = 4 << 20;
/// Blocks kept (least recently used goes first).
const CACHED_BLOCKS: usize = 4;

/// How the image dimensions are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Nchw,
    Nhwc,
    /// Rank 3: one channel.
    Nhw,
}

/// Element type on disk and how it maps to bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Values {
    U8,
    /// Float data covering `[lo, hi]`, mapped linearly to 0-255.
    Float {
        lo: f64,
        hi: f64,
    },
}

/// Rows `rows` of a rank-`rank` dataset, all of every other dimension.
fn rows_of(rows: Range<usize>, rank: usize) -> Hyperslab {
    let mut sel = vec![SliceOrIndex::from(rows)];
    sel.resize(rank, SliceOrIndex::from(..));
    Hyperslab::from(sel)
}

/// Split `file.h5[:dataset]` (also `.hdf5`) into the file and the dataset path; `None`
/// when the spec does not name an HDF5 file.
pub fn parse_spec(spec: &str) -> Option<(PathBuf, String)> {
    let lower = spec.to_ascii_lowercase();
    for ext in [".h5", ".hdf5"] {
        if lower.ends_with(ext) {
            return Some((PathBuf::from(spec), DEFAULT_IMAGES.to_string()));
        }
        if let Some(at) = lower.rfind(&format!("{ext}:")) {
            let (file, ds) = spec.split_at(at + ext.len());
            let ds = ds[1..].trim_matches('/');
            return Some((PathBuf::from(file), if ds.is_empty() { DEFAULT_IMAGES } else { ds }.to_string()));
        }
    }
    None
}

struct Block {
    start: usize,
    /// Rows `start..start + n` as `C x H x W` bytes each.
    pixels: Arc<Vec<u8>>,
}

/// Rows asked for recently, to tell streaming from shuffled access.
const RECENT: usize = 8;

struct Cache {
    blocks: VecDeque<Block>,
    /// A miss right after a recently read row reads a whole block (streaming); any other
    /// miss reads one row, since shuffled access would waste the rest of a block.
    recent: [usize; RECENT],
    next: usize,
}

impl Cache {
    fn new() -> Self {
        Cache { blocks: VecDeque::new(), recent: [usize::MAX; RECENT], next: 0 }
    }

    /// Note an access to `index`; true when it follows one of the recent ones.
    fn streaming(&mut self, index: usize) -> bool {
        let follows = index > 0 && self.recent.contains(&(index - 1));
        self.recent[self.next] = index;
        self.next = (self.next + 1) % RECENT;
        follows
    }
}

/// An HDF5 images dataset read on demand (see the module docs for the accepted layouts).
pub struct H5Dataset {
    path: PathBuf,
    name: String,
    // Kept open for the dataset handle's lifetime.
    _file: hdf5::File,
    ds: hdf5::Dataset,
    layout: Layout,
    rank: usize,
    len: usize,
    shape: [usize; 3],
    values: Values,
    labels: Option<Vec<i64>>,
    num_classes: Option<usize>,
    class_names: Option<Vec<String>>,
    block_rows: usize,
    cache: Mutex<Cache>,
    /// The raw file and the data's byte offset, when positioned reads are possible.
    direct: Option<(std::fs::File, u64)>,
}

impl std::fmt::Debug for H5Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn h5err(path: &Path, what: &str) -> impl Fn(hdf5::Error) -> DataError {
    let (path, what) = (path.to_path_buf(), what.to_string());
    move |e| DataError::format(&path, format!("HDF5 {what}: {e}"))
}

/// A string attribute, whichever of HDF5's string types it was written with.
fn string_attr(loc: &hdf5::Location, name: &str) -> Option<String> {
    let a = loc.attr(name).ok()?;
    a.read_scalar::<VarLenUnicode>()
        .map(|s| s.as_str().to_string())
        .or_else(|_| a.read_scalar::<VarLenAscii>().map(|s| s.as_str().to_string()))
        .or_else(|_| a.read_scalar::<FixedAscii<64>>().map(|s| s.as_str().to_string()))
        .ok()
}

fn detect_layout(path: &Path, name: &str, ds: &hdf5::Dataset, dims: &[usize]) -> Result<Layout> {
    let fmt = |m: String| DataError::format(path, format!("dataset `{name}` {dims:?}: {m}"));
    match dims.len() {
        3 => return Ok(Layout::Nhw),
        4 => {}
        r => return Err(fmt(format!("rank {r}; expected N x C x H x W, N x H x W x C or N x H x W"))),
    }
    if ds.attr("layout").is_ok() {
        return match string_attr(ds, "layout").map(|s| s.trim().to_ascii_uppercase()).as_deref() {
            Some("NCHW") => Ok(Layout::Nchw),
            Some("NHWC") => Ok(Layout::Nhwc),
            other => Err(fmt(format!("attribute `layout` is {other:?}; expected \"NCHW\" or \"NHWC\""))),
        };
    }
    let ch = |d: usize| matches!(d, 1 | 3 | 4);
    match (ch(dims[1]), ch(dims[3])) {
        (true, false) => Ok(Layout::Nchw),
        (false, true) => Ok(Layout::Nhwc),
        (true, true) if dims[2] == dims[3] && dims[1] != dims[2] => Ok(Layout::Nchw),
        (true, true) if dims[1] == dims[2] && dims[2] != dims[3] => Ok(Layout::Nhwc),
        (true, true) => Err(fmt("ambiguous layout; add a string attribute `layout` = \"NCHW\" or \"NHWC\"".into())),
        (false, false) => {
            Err(fmt("no channel dimension of size 1, 3 or 4 (at 1 or 3); set a `layout` attribute".into()))
        }
    }
}

impl H5Dataset {
    /// Open `dataset` in `path`; labels from `labels` (which must exist) or, when `None`,
    /// from `labels` beside the images if there is one.
    pub fn open(path: &Path, dataset: &str, labels: Option<&str>) -> Result<Self> {
        if !path.is_file() {
            return Err(DataError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such HDF5 file")));
        }
        let file = hdf5::File::open(path).map_err(h5err(path, "open"))?;
        let ds = file.dataset(dataset).map_err(|e| {
            let members = file.member_names().unwrap_or_default().join(", ");
            DataError::format(path, format!("no dataset `{dataset}` ({e}); top-level members: [{members}]"))
        })?;
        let dims = ds.shape();
        let layout = detect_layout(path, dataset, &ds, &dims)?;
        let (n, c, h, w) = match layout {
            Layout::Nchw => (dims[0], dims[1], dims[2], dims[3]),
            Layout::Nhwc => (dims[0], dims[3], dims[1], dims[2]),
            Layout::Nhw => (dims[0], 1, dims[1], dims[2]),
        };
        if n == 0 || h == 0 || w == 0 || !matches!(c, 1 | 3 | 4) {
            return Err(DataError::format(path, format!("dataset `{dataset}` {dims:?} is {n} images of {c}x{h}x{w}; expected 1, 3 or 4 channels and at least one pixel")));
        }
        let dtype = ds.dtype().and_then(|t| t.to_descriptor()).map_err(h5err(path, "dtype"))?;
        let elem = match &dtype {
            TypeDescriptor::Unsigned(hdf5::types::IntSize::U1) => 1,
            TypeDescriptor::Float(_) => 8,
            other => {
                return Err(DataError::format(
                    path,
                    format!("dataset `{dataset}` has type {other}; expected uint8 or float32/float64"),
                ));
            }
        };
        let row_elems = c * h * w;
        let block_rows = (BLOCK_BYTES / (row_elems * elem)).clamp(1, BLOCK_ROWS);
        let mut me = H5Dataset {
            path: path.to_path_buf(),
            name: dataset.to_string(),
            _file: file,
            ds,
            layout,
            rank: dims.len(),
            len: n,
            shape: [c, h, w],
            values: Values::U8,
            labels: None,
            num_classes: None,
            class_names: None,
            block_rows,
            cache: Mutex::new(Cache::new()),
            direct: None,
        };
        if elem == 8 {
            me.values = me.scan_float_range()?;
        } else {
            me.direct = me.raw_offset().and_then(|off| Some((std::fs::File::open(path).ok()?, off)));
        }
        me.load_labels(labels)?;
        Ok(me)
    }

    /// Where the bytes of uncompressed, contiguous data start in the file, when they are all
    /// there (no user block, so HDF5 addresses are file offsets).
    fn raw_offset(&self) -> Option<u64> {
        let size = (self.len * self.shape.iter().product::<usize>()) as u64;
        let off = self.ds.offset()?;
        let file_len = std::fs::metadata(&self.path).ok()?.len();
        (self._file.userblock() == 0 && self.ds.storage_size() == size && off.checked_add(size)? <= file_len)
            .then_some(off)
    }

    /// The whole-dataset range rule of the module docs, one block at a time.
    fn scan_float_range(&self) -> Result<Values> {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for start in (0..self.len).step_by(self.block_rows) {
            let rows = start..(start + self.block_rows).min(self.len);
            let v = self
                .ds
                .read_slice::<f64, _, IxDyn>(rows_of(rows.clone(), self.rank))
                .map_err(h5err(&self.path, "read"))?;
            for &x in v.iter() {
                if x.is_nan() {
                    return Err(DataError::format(
                        &self.path,
                        format!("dataset `{}`: NaN in rows {rows:?}", self.name),
                    ));
                }
                lo = lo.min(x);
                hi = hi.max(x);
            }
        }
        let (lo, hi) = if lo >= 0.0 && hi <= 1.0 {
            (0.0, 1.0)
        } else if lo >= -1.0 && hi <= 1.0 {
            (-1.0, 1.0)
        } else if lo >= 0.0 && hi <= 255.0 {
            (0.0, 255.0)
        } else {
            return Err(DataError::format(
                &self.path,
                format!(
                    "float dataset `{}` spans [{lo}, {hi}]; expected values in [0, 1], [-1, 1] or [0, 255]",
                    self.name
                ),
            ));
        };
        Ok(Values::Float { lo, hi })
    }

    fn load_labels(&mut self, explicit: Option<&str>) -> Result<()> {
        let group = match self.name.rfind('/') {
            Some(i) => format!("{}/", &self.name[..i]),
            None => String::new(),
        };
        let name = match explicit {
            Some(l) => l.trim_matches('/').to_string(),
            None => format!("{group}{DEFAULT_LABELS}"),
        };
        let ds = match self._file.dataset(&name) {
            Ok(ds) => ds,
            Err(_) if explicit.is_none() => return Ok(()),
            Err(e) => return Err(DataError::format(&self.path, format!("labels dataset `{name}`: {e}"))),
        };
        let dims = ds.shape();
        let dtype = ds.dtype().and_then(|t| t.to_descriptor()).map_err(h5err(&self.path, "labels dtype"))?;
        if !matches!(dtype, TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_)) {
            return Err(DataError::format(
                &self.path,
                format!("labels dataset `{name}` has type {dtype}; expected integers"),
            ));
        }
        let count: usize = dims.iter().product();
        if !(dims.len() == 1 || dims.len() == 2 && dims[1] == 1) || count != self.len {
            return Err(DataError::format(
                &self.path,
                format!(
                    "labels dataset `{name}` has shape {dims:?} but images dataset `{}` has {} images",
                    self.name, self.len
                ),
            ));
        }
        let labels = ds.read_raw::<i64>().map_err(h5err(&self.path, "labels read"))?;
        if let Some((i, bad)) = labels.iter().enumerate().find(|(_, &l)| l < 0) {
            return Err(DataError::format(
                &self.path,
                format!("labels dataset `{name}`: negative label {bad} at index {i}"),
            ));
        }
        let max = labels.iter().copied().max().unwrap_or(0) as usize;
        self.class_names = self
            .ds
            .attr("class_names")
            .and_then(|a| a.read_raw::<VarLenUnicode>())
            .ok()
            .map(|v| v.iter().map(|s| s.as_str().to_string()).collect());
        self.class_names = self.class_names.take().filter(|names: &Vec<String>| names.len() > max);
        self.num_classes = Some(self.class_names.as_ref().map_or(max + 1, Vec::len));
        self.labels = Some(labels);
        Ok(())
    }

    /// How the file stores the images.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Rows `rows` as consecutive `C x H x W` byte images.
    fn read_rows(&self, rows: Range<usize>) -> Result<Vec<u8>> {
        let err = h5err(&self.path, "read");
        let sel = || rows_of(rows.clone(), self.rank);
        let per = self.shape.iter().product::<usize>();
        let raw = match (self.values, &self.direct) {
            (Values::U8, Some((file, off))) => {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; rows.len() * per];
                file.read_exact_at(&mut buf, off + (rows.start * per) as u64)
                    .map_err(|e| DataError::io(&self.path, e))?;
                buf
            }
            (Values::U8, None) => self.ds.read_slice::<u8, _, IxDyn>(sel()).map_err(err)?.into_raw_vec_and_offset().0,
            (Values::Float { lo, hi }, _) => {
                let v = self.ds.read_slice::<f64, _, IxDyn>(sel()).map_err(err)?;
                let scale = 255.0 / (hi - lo);
                v.iter().map(|&x| ((x - lo) * scale).round().clamp(0.0, 255.0) as u8).collect()
            }
        };
        if self.layout != Layout::Nhwc {
            return Ok(raw);
        }
        let [c, h, w] = self.shape;
        let mut out = vec![0u8; raw.len()];
        for (src, dst) in raw.chunks_exact(per).zip(out.chunks_exact_mut(per)) {
            for (p, px) in src.chunks_exact(c).enumerate() {
                for (k, &v) in px.iter().enumerate() {
                    dst[k * h * w + p] = v;
                }
            }
        }
        Ok(out)
    }

    fn row(&self, index: usize) -> Result<Vec<u8>> {
        let per = self.shape.iter().product::<usize>();
        let lock = || self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let streaming = {
            let mut cache = lock();
            let hit = cache.blocks.iter().position(|b| (b.start..b.start + b.pixels.len() / per).contains(&index));
            if let Some(b) = hit.and_then(|k| cache.blocks.remove(k)) {
                let off = (index - b.start) * per;
                let row = b.pixels[off..off + per].to_vec();
                cache.blocks.push_front(b);
                cache.streaming(index);
                return Ok(row);
            }
            cache.streaming(index)
        };
        // Read outside the lock; two threads missing the same block both read it, harmlessly.
        let rows = if streaming {
            let start = index - index % self.block_rows;
            start..(start + self.block_rows).min(self.len)
        } else {
            index..index + 1
        };
        let pixels = Arc::new(self.read_rows(rows.clone())?);
        let off = (index - rows.start) * per;
        let row = pixels[off..off + per].to_vec();
        let mut cache = lock();
        cache.blocks.push_front(Block { start: rows.start, pixels });
        cache.blocks.truncate(CACHED_BLOCKS);
        Ok(row)
    }
}

impl Dataset for H5Dataset {
    fn len(&self) -> usize {
        self.len
    }
    fn shape(&self) -> [usize; 3] {
        self.shape
    }
    fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }
    fn class_names(&self) -> Option<Vec<String>> {
        self.class_names.clone()
    }
    fn get(&self, index: usize) -> Result<Item> {
        if index >= self.len {
            return Err(DataError::Index { index, len: self.len });
        }
        Ok(Item { image: self.row(index)?, label: self.labels.as_ref().map(|l| l[index]) })
    }
    fn describe(&self) -> String {
        let [c, h, w] = self.shape;
        format!(
            "{}:{} ({:?}, {}): {} images, {c}x{h}x{w}{}",
            self.path.display(),
            self.name,
            self.layout,
            match self.values {
                Values::U8 => "uint8".to_string(),
                Values::Float { lo, hi } => format!("float in [{lo}, {hi}]"),
            },
            self.len,
            self.num_classes.map(|k| format!(", {k} classes")).unwrap_or_default()
        )
    }
}

/// Streams images into a new file in genlab's layout (see the module docs), a chunk at a
/// time; [`H5Writer::finish`] checks that exactly `len` images arrived.
pub struct H5Writer {
    path: PathBuf,
    _file: hdf5::File,
    images: hdf5::Dataset,
    labels: Option<hdf5::Dataset>,
    len: usize,
    per: usize,
    written: usize,
}

impl std::fmt::Debug for H5Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "H5Writer({}, {}/{} images)", self.path.display(), self.written, self.len)
    }
}

impl H5Writer {
    /// Create (or truncate) `path` for `len` images of `shape = [C, H, W]`, with an int64
    /// `labels` dataset when `with_labels`, and extra string attributes on `images`.
    pub fn create(
        path: &Path,
        len: usize,
        shape: [usize; 3],
        with_labels: bool,
        attrs: &[(&str, &str)],
    ) -> Result<Self> {
        let [c, h, w] = shape;
        if len == 0 || h == 0 || w == 0 || !matches!(c, 1 | 3 | 4) {
            return Err(DataError::Invalid(format!("{}: cannot write {len} images of {c}x{h}x{w}", path.display())));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        }
        let err = h5err(path, "write");
        let file = hdf5::File::create(path).map_err(&err)?;
        let images = file.new_dataset::<u8>().shape([len, c, h, w]).create(DEFAULT_IMAGES).map_err(&err)?;
        let mut strings = vec![("layout", "NCHW")];
        strings.extend_from_slice(attrs);
        for (k, v) in strings {
            let v: VarLenUnicode =
                v.parse().map_err(|_| DataError::Invalid(format!("attribute `{k}` is not a valid HDF5 string")))?;
            images.new_attr::<VarLenUnicode>().create(k).and_then(|a| a.write_scalar(&v)).map_err(&err)?;
        }
        images.new_attr::<u8>().create("max_value").and_then(|a| a.write_scalar(&255u8)).map_err(&err)?;
        let labels = if with_labels {
            Some(file.new_dataset::<i64>().shape([len]).create(DEFAULT_LABELS).map_err(&err)?)
        } else {
            None
        };
        Ok(H5Writer { path: path.to_path_buf(), _file: file, images, labels, len, per: c * h * w, written: 0 })
    }

    /// Record the class names (label `i` is `names[i]`) as the `class_names` attribute.
    pub fn set_class_names(&self, names: &[String]) -> Result<()> {
        let v = names
            .iter()
            .map(|n| {
                n.parse::<VarLenUnicode>()
                    .map_err(|_| DataError::Invalid(format!("class name `{n}` is not a valid HDF5 string")))
            })
            .collect::<Result<Vec<_>>>()?;
        self.images
            .new_attr::<VarLenUnicode>()
            .shape([v.len()])
            .create("class_names")
            .and_then(|a| a.write_raw(&v))
            .map_err(h5err(&self.path, "write"))
    }

    /// Append whole `C x H x W` images (and their labels, when the file has labels).
    pub fn append(&mut self, pixels: &[u8], labels: Option<&[i64]>) -> Result<()> {
        let n = pixels.len() / self.per;
        if pixels.len() % self.per != 0 || self.written + n > self.len {
            return Err(DataError::Invalid(format!(
                "{}: cannot append {} bytes ({n} images of {} bytes) after {} of {} images",
                self.path.display(),
                pixels.len(),
                self.per,
                self.written,
                self.len
            )));
        }
        let rows = self.written..self.written + n;
        let err = h5err(&self.path, "write");
        match (&self.labels, labels) {
            (Some(ds), Some(l)) if l.len() == n => ds.write_slice(l, rows_of(rows.clone(), 1)).map_err(&err)?,
            (None, None) => {}
            (has, got) => {
                return Err(DataError::Invalid(format!(
                    "{}: file {} labels, {} labels given for {n} images",
                    self.path.display(),
                    if has.is_some() { "has" } else { "has no" },
                    got.map_or(0, <[i64]>::len)
                )))
            }
        }
        let shape = self.images.shape();
        let arr = ndarray::ArrayView::from_shape(IxDyn(&[n, shape[1], shape[2], shape[3]]), pixels)
            .map_err(|e| DataError::Invalid(e.to_string()))?;
        self.images.write_slice(arr, rows_of(rows, 4)).map_err(&err)?;
        self.written += n;
        Ok(())
    }

    /// Check that every image was written and close the file.
    pub fn finish(self) -> Result<()> {
        if self.written != self.len {
            return Err(DataError::Invalid(format!(
                "{}: {} of {} images written",
                self.path.display(),
                self.written,
                self.len
            )));
        }
        self._file.flush().map_err(h5err(&self.path, "flush"))
    }
}

/// Write a uint8 batch as `images` (with `labels` and extra string attributes).
///
/// # Shapes
/// - `images_u8`: [n, c, h, w] (uint8, c = 1, 3 or 4)
pub fn write_h5(path: &Path, images_u8: &Tensor, labels: Option<&[i64]>, attrs: &[(&str, &str)]) -> Result<()> {
    let size = images_u8.size();
    let (n, chw) = match (size.as_slice(), images_u8.kind()) {
        (&[n, c, h, w], Kind::Uint8) => (n as usize, [c as usize, h as usize, w as usize]),
        _ => {
            return Err(DataError::Invalid(format!(
                "{}: expected uint8 [n, c, h, w], got {:?} {size:?}",
                path.display(),
                images_u8.kind()
            )))
        }
    };
    let mut buf = vec![0u8; n * chw.iter().product::<usize>()];
    let len = buf.len();
    images_u8.to_device(tch::Device::Cpu).contiguous().copy_data_u8(&mut buf, len);
    let mut w = H5Writer::create(path, n, chw, labels.is_some(), attrs)?;
    w.append(&buf, labels)?;
    w.finish()
}

/// Write a float matrix (latents, features) as dataset `name`, with optional `labels`.
///
/// # Shapes
/// - `matrix`: [n, d] (any float kind; stored as f32)
pub fn write_matrix_h5(path: &Path, name: &str, matrix: &Tensor, labels: Option<&[i64]>) -> Result<()> {
    let size = matrix.size();
    let &[n, d] = size.as_slice() else {
        return Err(DataError::Invalid(format!("{}: expected a matrix [n, d], got {size:?}", path.display())));
    };
    let v = Vec::<f32>::try_from(matrix.to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous().view(-1))?;
    let arr = ndarray::Array2::from_shape_vec((n as usize, d as usize), v)
        .map_err(|e| DataError::Invalid(format!("{}: {e}", path.display())))?;
    let file = hdf5::File::create(path).map_err(h5err(path, "create"))?;
    file.new_dataset_builder().with_data(&arr).create(name).map_err(h5err(path, name))?;
    if let Some(l) = labels {
        if l.len() != n as usize {
            return Err(DataError::Invalid(format!("{}: {} labels for {n} rows", path.display(), l.len())));
        }
        file.new_dataset_builder().with_data(l).create("labels").map_err(h5err(path, "labels"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, proptest, ProptestConfig};

    #[test]
    fn matrices_round_trip() {
        let dir = tmp();
        let p = dir.path().join("m.h5");
        let m = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).view([3, 2]);
        write_matrix_h5(&p, "latents", &m, Some(&[0, 1, 2])).unwrap();
        let f = hdf5::File::open(&p).unwrap();
        let back: ndarray::Array2<f32> = f.dataset("latents").unwrap().read().unwrap();
        assert_eq!(back[[2, 1]], 6.0);
        assert!(write_matrix_h5(&p, "x", &m.view([6]), None).is_err());
    }

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    /// A file with one dataset built by `f`.
    fn file_with(f: impl FnOnce(&hdf5::File) -> hdf5::Result<()>) -> (tempfile::TempDir, PathBuf) {
        let dir = tmp();
        let p = dir.path().join("t.h5");
        // Strong close: dropping the file closes every handle the builder left open (the
        // variable-length string dataset keeps one otherwise, and the reopen fails to lock).
        let file = hdf5::File::with_options()
            .with_fapl(|fapl| fapl.fclose_degree(hdf5::file::FileCloseDegree::Strong))
            .create(&p)
            .unwrap();
        f(&file).unwrap();
        (dir, p)
    }

    #[test]
    fn specs() {
        assert_eq!(parse_spec("a/b.h5"), Some(("a/b.h5".into(), "images".into())));
        assert_eq!(parse_spec("b.HDF5:/train/x"), Some(("b.HDF5".into(), "train/x".into())));
        assert_eq!(parse_spec("dir/b.h5:"), Some(("dir/b.h5".into(), "images".into())));
        assert_eq!(parse_spec("b.png"), None);
    }

    #[test]
    fn roundtrip_keeps_pixels_labels_and_class_names() {
        let dir = tmp();
        let p = dir.path().join("sub/r.h5");
        let px: Vec<u8> = (0..5 * 3 * 4 * 2).map(|i| (i * 7 % 256) as u8).collect();
        let t = Tensor::from_slice(&px).view([5, 3, 4, 2]);
        write_h5(&p, &t, Some(&[0, 1, 2, 1, 0]), &[("source", "test")]).unwrap();
        let d = H5Dataset::open(&p, "images", None).unwrap();
        assert_eq!((d.len(), d.shape(), d.layout(), d.num_classes()), (5, [3, 4, 2], Layout::Nchw, Some(3)));
        for i in 0..5 {
            let it = d.get(i).unwrap();
            assert_eq!(it.image, px[i * 24..(i + 1) * 24]);
        }
        assert_eq!(d.get(3).unwrap().label, Some(1));
        assert!(matches!(d.get(5), Err(DataError::Index { index: 5, len: 5 })));
        // genlab-core's sample writer produces the same layout.
        let q = dir.path().join("core.h5");
        genlab_core::images::save_h5(&t, &q, Some(&[4, 4, 4, 4, 4])).unwrap();
        let c = H5Dataset::open(&q, "images", None).unwrap();
        assert_eq!((c.get(2).unwrap().image, c.num_classes()), (px[48..72].to_vec(), Some(5)));
        // Class names travel through the writer.
        let mut w = H5Writer::create(&dir.path().join("n.h5"), 2, [1, 1, 1], true, &[]).unwrap();
        w.set_class_names(&["cat".into(), "dog".into()]).unwrap();
        w.append(&[1, 2], Some(&[1, 0])).unwrap();
        assert!(w.append(&[3], Some(&[0])).is_err(), "more images than declared");
        w.finish().unwrap();
        let n = H5Dataset::open(&dir.path().join("n.h5"), "images", None).unwrap();
        assert_eq!(n.class_names(), Some(vec!["cat".to_string(), "dog".to_string()]));
    }

    #[test]
    fn nhwc_rank3_and_float_ranges() {
        // 2 images of 2x3 pixels, 3 channels, stored NHWC with an explicit attribute
        // (dims [2, 2, 3, 3] would otherwise be ambiguous).
        let hwc: Vec<u8> = (0..36).collect();
        let (_d, p) = file_with(|f| {
            let ds = f
                .new_dataset_builder()
                .with_data(&ndarray::Array4::from_shape_vec((2, 2, 3, 3), hwc.clone()).unwrap())
                .create("images")?;
            let v: VarLenUnicode = "nhwc".parse().unwrap();
            ds.new_attr::<VarLenUnicode>().create("layout")?.write_scalar(&v)
        });
        let d = H5Dataset::open(&p, "images", None).unwrap();
        assert_eq!((d.shape(), d.layout(), d.num_classes()), ([3, 2, 3], Layout::Nhwc, None));
        // Channel 0 of image 1 is every third byte from 18.
        assert_eq!(d.get(1).unwrap().image[..6], [18, 21, 24, 27, 30, 33]);
        assert_eq!(d.get(1).unwrap().image[6..8], [19, 22]);

        // Inferred NHWC without an attribute, and rank 3 as one channel.
        let (_d, p) = file_with(|f| {
            f.new_dataset::<u8>().shape([3, 5, 5, 3]).create("rgb")?;
            f.new_dataset::<u8>().shape([3, 5, 6]).create("grey").map(drop)
        });
        assert_eq!(H5Dataset::open(&p, "rgb", None).unwrap().layout(), Layout::Nhwc);
        assert_eq!(H5Dataset::open(&p, "grey", None).unwrap().shape(), [1, 5, 6]);

        // Floats: [0, 1] scales by 255, [-1, 1] maps -1 -> 0 and 1 -> 255.
        let (_d, p) = file_with(|f| {
            let a = ndarray::Array3::from_shape_vec((1, 1, 3), vec![0.0f32, 0.5, 1.0]).unwrap();
            f.new_dataset_builder().with_data(&a).create("unit")?;
            let b = ndarray::Array3::from_shape_vec((1, 1, 3), vec![-1.0f64, 0.0, 1.0]).unwrap();
            f.new_dataset_builder().with_data(&b).create("signed")?;
            let c = ndarray::Array3::from_shape_vec((1, 1, 2), vec![-3.0f32, 0.0]).unwrap();
            f.new_dataset_builder().with_data(&c).create("wild").map(drop)
        });
        assert_eq!(H5Dataset::open(&p, "unit", None).unwrap().get(0).unwrap().image, [0, 128, 255]);
        assert_eq!(H5Dataset::open(&p, "signed", None).unwrap().get(0).unwrap().image, [0, 128, 255]);
        let e = H5Dataset::open(&p, "wild", None).unwrap_err().to_string();
        assert!(e.contains("spans [-3, 0]") && e.contains("t.h5"), "{e}");
    }

    #[test]
    fn bad_files_are_errors_that_name_the_problem() {
        let (_d, p) = file_with(|f| {
            f.new_dataset::<u8>().shape([4, 8, 8]).create("images")?;
            f.new_dataset::<i64>().shape([4, 8, 8]).create("longs")?;
            f.new_dataset::<u8>().shape([4, 8]).create("flat")?;
            f.new_dataset::<u8>().shape([4, 7, 8, 9]).create("nochannel")?;
            f.new_dataset::<f32>().shape([3]).create("floatlabels")?;
            f.new_dataset::<i64>().shape([3]).create("labels")?;
            let s: VarLenUnicode = "x".parse().unwrap();
            f.new_dataset_builder().with_data(&ndarray::Array3::from_elem((1, 1, 1), s)).create("strings").map(drop)
        });
        let err = |ds: &str, labels: Option<&str>| H5Dataset::open(&p, ds, labels).unwrap_err().to_string();
        let e = err("missing", None);
        assert!(e.contains("no dataset `missing`") && e.contains("images") && e.contains("t.h5"), "{e}");
        assert!(err("longs", None).contains("int64"), "{}", err("longs", None));
        assert!(err("strings", None).contains("expected uint8"), "{}", err("strings", None));
        assert!(err("flat", None).contains("rank 2"), "{}", err("flat", None));
        assert!(err("nochannel", None).contains("no channel dimension"), "{}", err("nochannel", None));
        // `labels` sits beside `images` with 3 entries for 4 images.
        let e = err("images", None);
        assert!(e.contains("`labels`") && e.contains("`images` has 4 images"), "{e}");
        assert!(err("images", Some("floatlabels")).contains("expected integers"));
        assert!(err("images", Some("nolabels")).contains("`nolabels`"));
        let e = H5Dataset::open(Path::new("/nonexistent/x.h5"), "images", None).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/x.h5"), "{e}");
    }

    #[test]
    fn shuffled_and_streaming_reads_agree() {
        let dir = tmp();
        let p = dir.path().join("s.h5");
        let n = 700;
        let px: Vec<u8> = (0..n * 4).map(|i| (i / 4 % 251) as u8).collect();
        write_h5(&p, &Tensor::from_slice(&px).view([n as i64, 1, 2, 2]), None, &[]).unwrap();
        let (_d, q) = file_with(|f| {
            let a = ndarray::Array4::from_shape_vec((n, 1, 2, 2), px.clone()).unwrap();
            f.new_dataset_builder().chunk((50, 1, 2, 2)).with_data(&a).create("images").map(drop)
        });
        let direct = H5Dataset::open(&p, "images", None).unwrap();
        let chunked = H5Dataset::open(&q, "images", None).unwrap();
        assert!(direct.direct.is_some() && chunked.direct.is_none());
        let mut order: Vec<usize> = (0..n).collect();
        genlab_core::seed::Rng::new(5).shuffle(&mut order);
        for d in [direct, chunked] {
            for &i in order.iter().chain(&(0..n).collect::<Vec<_>>()) {
                assert_eq!(d.get(i).unwrap().image, vec![(i % 251) as u8; 4]);
            }
        }
    }

    /// Peak resident memory (VmHWM) in bytes.
    fn peak_rss() -> usize {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
    }

    const RSS_CHILD: &str = "GENLAB_H5_RSS_CHILD";

    /// Runs in a child process (see `a_large_file_streams`), alone, so VmHWM is its own.
    #[test]
    #[ignore = "run by a_large_file_streams in a child process"]
    fn large_file_child() {
        let Some(dir) = std::env::var_os(RSS_CHILD) else { return };
        let p = Path::new(&dir).join("big.h5");
        let (n, shape) = (4096usize, [3usize, 128, 128]); // 201 MB
        let per = shape.iter().product::<usize>();
        let mut w = H5Writer::create(&p, n, shape, false, &[]).unwrap();
        let mut chunk = vec![0u8; 64 * per];
        for start in (0..n).step_by(64) {
            for (k, img) in chunk.chunks_exact_mut(per).enumerate() {
                img.fill(((start + k) % 256) as u8);
            }
            w.append(&chunk, None).unwrap();
        }
        w.finish().unwrap();
        let before = peak_rss();
        let d = H5Dataset::open(&p, "images", None).unwrap();
        let mut sum = 0u64;
        for i in 0..n {
            let img = d.get(i).unwrap().image;
            assert_eq!((img.len(), img[per - 1] as usize), (per, i % 256));
            sum += img[0] as u64;
        }
        assert!(sum > 0);
        let grown = peak_rss().saturating_sub(before);
        let size = std::fs::metadata(&p).unwrap().len() as usize;
        println!("file {size} bytes, peak RSS grew by {grown} bytes");
        assert!(size > 200_000_000);
        assert!(grown < 40 << 20, "peak RSS grew by {grown} bytes reading a {size}-byte file");
    }

    #[test]
    fn a_large_file_streams() {
        let dir = tmp();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "h5::tests::large_file_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env(RSS_CHILD, dir.path())
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("1 passed") && text.contains("peak RSS grew"), "{text}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn random_or_truncated_files_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), cut in 0usize..4096) {
            let dir = tmp();
            let p = dir.path().join("r.h5");
            std::fs::write(&p, &bytes).unwrap();
            let _ = H5Dataset::open(&p, "images", None).map(|d| d.get(0));
            // A real file cut short, with random bytes spliced in.
            let q = dir.path().join("ok.h5");
            write_h5(&q, &Tensor::from_slice(&[7u8; 32]).view([2, 1, 4, 4]), Some(&[0, 1]), &[]).unwrap();
            let mut good = std::fs::read(&q).unwrap();
            good.truncate(cut.min(good.len()));
            let at = cut % (good.len().max(1));
            for (k, b) in bytes.iter().take(16).enumerate() {
                if let Some(x) = good.get_mut(at + k) { *x = *b; }
            }
            std::fs::write(&q, &good).unwrap();
            let _ = H5Dataset::open(&q, "images", None).map(|d| d.get(1));
        }
    }
}
