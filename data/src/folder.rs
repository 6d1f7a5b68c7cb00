//! Folders of PNG and JPEG images, searched recursively and decoded on demand with the
//! `image` crate, labelled as torchvision's `ImageFolder` does.
//!
//! - Labels: when every image sits in a first-level sub-folder, the sub-folders (sorted by
//!   name, hidden ones ignored) are the classes and an image's label is its class's position.
//!   An image directly in the root makes the whole folder unlabelled.
//! - Size: every item is resized so its shorter side covers the target (bilinear), then
//!   cropped to it, centred or at a random offset. The target defaults to the first image's
//!   height and width; colour defaults to the first image's (grey stays grey, anything else
//!   becomes RGB, alpha dropped).
//! - Bad files: opening reads every file's header in parallel and fails on the first
//!   (in path order) unreadable one, naming it. With `skip_bad`, every file is decoded in
//!   full at open instead, and unreadable ones are left out and listed ([`FolderDataset::skipped`]).
//!   A file that breaks after its header (truncated data) fails at [`Dataset::get`], naming the file.
use crate::dataset::{Dataset, Item};
use crate::error::{DataError, Result};
use crate::OpenOptions;
use genlab_core::seed::Rng;
use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use rayon::prelude::*;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where to cut the target size out of a resized image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Crop {
    #[default]
    Center,
    /// A fresh offset each time an item is read: the `k`-th read of item `i` uses the
    /// stream `(seed, i, k)`, so a fresh run repeats exactly.
    Random { seed: u64 },
}

/// How every item is produced from a decoded image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transform {
    /// `[height, width]` of the output.
    pub size: [usize; 2],
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
}

impl Transform {
    /// Decode PNG or JPEG `bytes` (from `path`, for errors) into `C x H x W` bytes; `rng`
    /// picks the crop offset (`None`: centred).
    pub fn apply(&self, bytes: &[u8], path: &Path, rng: Option<&mut Rng>) -> Result<Vec<u8>> {
        let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| DataError::io(path, e))?;
        if reader.format() == Some(ImageFormat::Jpeg) && jpeg_truncated(bytes) {
            return Err(DataError::format(path, "truncated JPEG: no end-of-image marker after the last scan"));
        }
        let img = reader.decode().map_err(|e| DataError::format(path, format!("cannot decode image: {e}")))?;
        let [th, tw] = self.size;
        let img = match self.channels {
            1 => DynamicImage::ImageLuma8(img.to_luma8()),
            _ => DynamicImage::ImageRgb8(img.to_rgb8()),
        };
        let (w, h) = (img.width() as usize, img.height() as usize);
        let img = if (h, w) == (th, tw) {
            img
        } else {
            let scale = (th as f64 / h as f64).max(tw as f64 / w as f64);
            let nw = ((w as f64 * scale).round() as usize).max(tw);
            let nh = ((h as f64 * scale).round() as usize).max(th);
            let resized = img.resize_exact(nw as u32, nh as u32, FilterType::Triangle);
            let (x, y) = match rng {
                Some(r) => (r.below((nw - tw + 1) as u64), r.below((nh - th + 1) as u64)),
                None => (((nw - tw) / 2) as u64, ((nh - th) / 2) as u64),
            };
            resized.crop_imm(x as u32, y as u32, tw as u32, th as u32)
        };
        let hwc = img.as_bytes();
        if self.channels == 1 {
            return Ok(hwc.to_vec());
        }
        let mut chw = vec![0u8; hwc.len()];
        let plane = th * tw;
        for (p, px) in hwc.chunks_exact(3).enumerate() {
            chw[p] = px[0];
            chw[plane + p] = px[1];
            chw[2 * plane + p] = px[2];
        }
        Ok(chw)
    }
}

/// The JPEG decoder fills a cut-off image with grey rather than failing, so check that an
/// end-of-image marker (FF D9) follows the last start-of-scan (FF DA). Byte stuffing keeps
/// both out of entropy-coded data; an EXIF thumbnail's pair comes before the main scan.
fn jpeg_truncated(b: &[u8]) -> bool {
    match b.windows(2).rposition(|w| w == [0xFF, 0xDA]) {
        Some(sos) => !b[sos..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => true,
    }
}

/// An image folder (see the module docs).
#[derive(Debug)]
pub struct FolderDataset {
    root: PathBuf,
    files: Vec<PathBuf>,
    labels: Option<Vec<i64>>,
    classes: Option<Vec<String>>,
    transform: Transform,
    crop: Crop,
    /// Reads so far per item, for random crops.
    reads: Vec<AtomicU64>,
    skipped: Vec<(PathBuf, String)>,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

fn is_hidden(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

/// Sorted non-hidden entries of `dir`: (files, sub-folders).
fn entries(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let p = e.map_err(|e| DataError::io(dir, e))?.path();
        if !is_hidden(&p) {
            all.push(p);
        }
    }
    all.sort();
    Ok(all.into_iter().partition(|p| !p.is_dir()))
}

/// Every image under `dir`, sorted by path.
fn images_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let (files, dirs) = entries(dir)?;
    out.extend(files.into_iter().filter(|p| is_image(p)));
    for d in dirs {
        images_under(&d, out)?;
    }
    Ok(())
}

/// Header facts: (height, width, is grey).
fn probe(path: &Path) -> Result<(usize, usize, bool)> {
    let dec = ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?
        .into_decoder()
        .map_err(|e| DataError::format(path, format!("not a readable PNG or JPEG: {e}")))?;
    let (w, h) = dec.dimensions();
    if w == 0 || h == 0 {
        return Err(DataError::format(path, format!("image of {w}x{h} pixels")));
    }
    let grey = matches!(dec.color_type().channel_count(), 1 | 2);
    Ok((h as usize, w as usize, grey))
}

impl FolderDataset {
    /// Index the images under `root` and check them (see the module docs); `opts.size`,
    /// `opts.channels`, `opts.crop` and `opts.skip_bad` apply.
    pub fn open(root: &Path, opts: &OpenOptions) -> Result<Self> {
        if !root.is_dir() {
            return Err(DataError::io(root, std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder")));
        }
        let (top_files, subdirs) = entries(root)?;
        let mut files = Vec::new();
        let mut labels = Vec::new();
        let labelled = !subdirs.is_empty() && !top_files.iter().any(|p| is_image(p));
        if labelled {
            for (k, d) in subdirs.iter().enumerate() {
                images_under(d, &mut files)?;
                labels.resize(files.len(), k as i64);
            }
        } else {
            images_under(root, &mut files)?;
        }
        if files.is_empty() {
            return Err(DataError::format(root, "no PNG or JPEG images in this folder or its sub-folders"));
        }
        if let Some(c) = opts.channels.filter(|c| !matches!(c, 1 | 3)) {
            return Err(DataError::Invalid(format!(
                "{}: {c} channels requested; image folders give 1 (grey) or 3 (RGB)",
                root.display()
            )));
        }
        if let Some([h, w]) = opts.size.filter(|[h, w]| *h == 0 || *w == 0) {
            return Err(DataError::Invalid(format!("{}: size {h}x{w}", root.display())));
        }

        // Headers of every file, or full decodes when bad files are to be skipped.
        let checked: Vec<Result<(usize, usize, bool)>> = files
            .par_iter()
            .map(|p| {
                let facts = probe(p)?;
                if opts.skip_bad {
                    let bytes = std::fs::read(p).map_err(|e| DataError::io(p, e))?;
                    let t = Transform { size: [facts.0, facts.1], channels: if facts.2 { 1 } else { 3 } };
                    t.apply(&bytes, p, None)?;
                }
                Ok(facts)
            })
            .collect();
        let mut first = None;
        let mut skipped = Vec::new();
        let mut keep = Vec::with_capacity(files.len());
        for (i, r) in checked.into_iter().enumerate() {
            match r {
                Ok(f) => {
                    first.get_or_insert(f);
                    keep.push(i);
                }
                Err(e) if opts.skip_bad => skipped.push((files[i].clone(), e.to_string())),
                Err(e) => return Err(e),
            }
        }
        let Some((h, w, grey)) = first else {
            return Err(DataError::format(root, format!("none of the {} images could be read", files.len())));
        };
        let files: Vec<PathBuf> = keep.iter().map(|&i| files[i].clone()).collect();
        let labels = labelled.then(|| keep.iter().map(|&i| labels[i]).collect::<Vec<_>>());
        let classes = labelled.then(|| {
            subdirs
                .iter()
                .map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
                .collect()
        });
        let transform = Transform {
            size: opts.size.unwrap_or([h, w]),
            channels: opts.channels.unwrap_or(if grey { 1 } else { 3 }),
        };
        let reads = files.iter().map(|_| AtomicU64::new(0)).collect();
        Ok(FolderDataset {
            root: root.to_path_buf(),
            files,
            labels,
            classes,
            transform,
            crop: opts.crop,
            reads,
            skipped,
        })
    }

    /// Files left out by `skip_bad`, with the reason for each.
    pub fn skipped(&self) -> &[(PathBuf, String)] {
        &self.skipped
    }

    /// The image files, in item order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

impl Dataset for FolderDataset {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn shape(&self) -> [usize; 3] {
        let [h, w] = self.transform.size;
        [self.transform.channels, h, w]
    }
    fn num_classes(&self) -> Option<usize> {
        self.classes.as_ref().map(Vec::len)
    }
    fn class_names(&self) -> Option<Vec<String>> {
        self.classes.clone()
    }
    fn get(&self, index: usize) -> Result<Item> {
        let path = self.files.get(index).ok_or(DataError::Index { index, len: self.files.len() })?;
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let mut rng = match self.crop {
            Crop::Center => None,
            Crop::Random { seed } => {
                Some(Rng::derive(seed, &[index as u64, self.reads[index].fetch_add(1, Ordering::Relaxed)]))
            }
        };
        let image = self.transform.apply(&bytes, path, rng.as_mut())?;
        Ok(Item { image, label: self.labels.as_ref().map(|l| l[index]) })
    }
    fn describe(&self) -> String {
        let [c, h, w] = self.shape();
        format!(
            "{}: {} images, {c}x{h}x{w}{}{}",
            self.root.display(),
            self.files.len(),
            self.classes.as_ref().map(|k| format!(", {} classes", k.len())).unwrap_or_default(),
            if self.skipped.is_empty() {
                String::new()
            } else {
                format!(", {} unreadable files skipped", self.skipped.len())
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, proptest, ProptestConfig};

    /// A `w x h` RGB image whose pixel (x, y) is (x, y, 200).
    fn rgb(w: u32, h: u32) -> image::RgbImage {
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 200]))
    }

    /// A `w x h` grey ramp, brightness `5 x` at column x.
    fn ramp(w: u32, h: u32) -> image::RgbImage {
        image::RgbImage::from_fn(w, h, |x, _| image::Rgb([5 * x as u8; 3]))
    }

    fn png_bytes(img: &image::RgbImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn jpeg_bytes(img: &image::RgbImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    fn put(root: &Path, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn classes_from_subfolders_recursively() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(r, "dog/b.png", &png_bytes(&rgb(6, 4)));
        put(r, "cat/x/deep.jpg", &jpeg_bytes(&rgb(8, 8)));
        put(r, "cat/a.PNG", &png_bytes(&rgb(6, 4)));
        put(r, "cat/notes.txt", b"not an image");
        put(r, ".hidden/z.png", &png_bytes(&rgb(6, 4)));
        std::fs::create_dir_all(r.join("empty")).unwrap();
        let d = FolderDataset::open(r, &OpenOptions::default()).unwrap();
        assert_eq!(d.class_names(), Some(vec!["cat".into(), "dog".into(), "empty".into()]));
        let names: Vec<_> =
            d.files().iter().map(|p| p.strip_prefix(r).unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["cat/a.PNG", "cat/x/deep.jpg", "dog/b.png"]);
        // Size and colour from the first image (6 wide, 4 high, RGB).
        assert_eq!((d.len(), d.shape(), d.num_classes()), (3, [3, 4, 6], Some(3)));
        let labels: Vec<_> = (0..3).map(|i| d.get(i).unwrap().label).collect();
        assert_eq!(labels, [Some(0), Some(0), Some(1)]);
        // CHW order: the red plane holds x, the green plane y, the blue plane 200.
        let px = d.get(2).unwrap().image;
        assert_eq!(&px[..6], &[0, 1, 2, 3, 4, 5]);
        assert_eq!(&px[30..36], &[1; 6]);
        assert!(px[48..].iter().all(|&b| b == 200));
        // The 8x8 JPEG is resized (shorter side 8 -> 6) and centre-cropped to 4x6.
        assert_eq!(d.get(1).unwrap().image.len(), 72);
        // An image at the top level makes the folder unlabelled.
        put(r, "top.png", &png_bytes(&rgb(2, 2)));
        let u = FolderDataset::open(r, &OpenOptions::default()).unwrap();
        assert_eq!((u.len(), u.num_classes(), u.get(0).unwrap().label), (4, None, None));
    }

    #[test]
    fn resize_crop_and_grey() {
        let bytes = png_bytes(&ramp(40, 20));
        let t = Transform { size: [10, 10], channels: 1 };
        let centre = t.apply(&bytes, Path::new("x.png"), None).unwrap();
        assert_eq!(centre.len(), 100);
        // 40x20 -> 20x10, then columns 5..15 of that; column j samples source column 2j + 0.5.
        let (first, last) = (centre[0] as i32, centre[9] as i32);
        assert!((first - 53).abs() <= 2 && (last - 143).abs() <= 2 && centre[90] == centre[0], "{centre:?}");
        let t3 = Transform { size: [10, 10], channels: 3 };
        let crops: std::collections::HashSet<u8> =
            (0..20u64).map(|s| t3.apply(&bytes, Path::new("x.png"), Some(&mut Rng::new(s))).unwrap()[0]).collect();
        assert!(crops.len() > 3, "random crops should move: {crops:?}");
        // Random crops through the dataset change between reads of the same item.
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "a.png", &bytes);
        let opts = OpenOptions { size: Some([10, 10]), crop: Crop::Random { seed: 1 }, ..Default::default() };
        let d = FolderDataset::open(dir.path(), &opts).unwrap();
        let reads: std::collections::HashSet<Vec<u8>> = (0..10).map(|_| d.get(0).unwrap().image).collect();
        assert!(reads.len() > 1);
        let grey = OpenOptions { channels: Some(1), ..Default::default() };
        assert_eq!(FolderDataset::open(dir.path(), &grey).unwrap().shape(), [1, 20, 40]);
    }

    #[test]
    fn bad_files_name_themselves_or_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let noise =
            image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * y * 31 % 256) as u8, (x * 7 + y * 13) as u8, 9]));
        let (png, jpg) = (png_bytes(&noise), jpeg_bytes(&noise));
        put(r, "a_good.png", &png);
        put(r, "b_header_only.png", &png[..40]);
        put(r, "c_truncated.jpg", &jpg[..jpg.len() * 3 / 4]);
        put(r, "d_garbage.jpg", b"\xff\xd8\xff\xe0 this is not a jpeg");
        put(r, "e_truncated.png", &png[..png.len() * 3 / 4]);
        // Without skip_bad, the first unreadable file in path order is the error.
        let e = FolderDataset::open(r, &OpenOptions::default()).unwrap_err().to_string();
        assert!(e.contains("b_header_only.png"), "{e}");
        std::fs::remove_file(r.join("b_header_only.png")).unwrap();
        let e = FolderDataset::open(r, &OpenOptions::default()).unwrap_err().to_string();
        assert!(e.contains("d_garbage.jpg"), "{e}");
        std::fs::remove_file(r.join("d_garbage.jpg")).unwrap();
        // Files cut short pass the header check; reading them names the file.
        let d = FolderDataset::open(r, &OpenOptions::default()).unwrap();
        assert_eq!(d.len(), 3);
        assert!(d.get(0).is_ok());
        let e = d.get(1).unwrap_err().to_string();
        assert!(e.contains("c_truncated.jpg") && e.contains("truncated JPEG"), "{e}");
        let e = d.get(2).unwrap_err().to_string();
        assert!(e.contains("e_truncated.png"), "{e}");
        // With skip_bad every file is decoded at open and the bad ones are listed.
        put(r, "b_header_only.png", &png[..40]);
        put(r, "d_garbage.jpg", b"\xff\xd8\xff\xe0 this is not a jpeg");
        let d = FolderDataset::open(r, &OpenOptions { skip_bad: true, ..Default::default() }).unwrap();
        let skipped: Vec<_> =
            d.skipped().iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(skipped, ["b_header_only.png", "c_truncated.jpg", "d_garbage.jpg", "e_truncated.png"]);
        assert!(d.skipped().iter().all(|(p, why)| why.contains(&*p.to_string_lossy())));
        assert_eq!((d.len(), d.shape()), (1, [3, 64, 64]));
        assert!(d.describe().contains("4 unreadable files skipped"));
    }

    #[test]
    fn empty_folders_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub/deeper")).unwrap();
        let e = FolderDataset::open(dir.path(), &OpenOptions::default()).unwrap_err().to_string();
        assert!(e.contains(&dir.path().display().to_string()) && e.contains("no PNG or JPEG"), "{e}");
        put(dir.path(), "sub/bad.png", b"nope");
        let e = FolderDataset::open(dir.path(), &OpenOptions { skip_bad: true, ..Default::default() })
            .unwrap_err()
            .to_string();
        assert!(e.contains("none of the 1 images"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_and_truncated_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), cut in 0usize..2000, at in 0usize..2000) {
            let t = Transform { size: [4, 4], channels: 3 };
            let _ = t.apply(&bytes, Path::new("r"), None);
            let img = rgb(12, 9);
            for mut good in [png_bytes(&img), jpeg_bytes(&img)] {
                good.truncate(cut.min(good.len()));
                let _ = t.apply(&good, Path::new("t"), None);
                let at = at % good.len().max(1);
                for (k, b) in bytes.iter().take(8).enumerate() {
                    if let Some(x) = good.get_mut(at + k) { *x = *b; }
                }
                let _ = t.apply(&good, Path::new("s"), Some(&mut Rng::new(cut as u64)));
            }
        }
    }
}
