//! What `genlab data info|convert|preview` runs: statistics, conversion to genlab's HDF5
//! layout, and a PNG grid of examples. Each streams through the dataset a chunk at a time
//! (items decoded in parallel), so it works on sources larger than memory.
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::h5::H5Writer;
use crate::Item;
use rayon::prelude::*;
use std::fmt::Write;
use std::path::Path;
use tch::Tensor;

/// Items read per chunk.
const CHUNK: usize = 256;

/// Items `range` of `ds`, decoded in parallel.
fn items(ds: &dyn Dataset, range: std::ops::Range<usize>) -> Result<Vec<Item>> {
    range.into_par_iter().map(|i| ds.get(i)).collect()
}

/// Count, shape, classes with per-class counts, and pixel mean/std (0-255) of `spec`.
pub fn info(spec: &str) -> Result<String> {
    info_of(crate::open(spec)?.as_ref())
}

/// [`info`] of an open dataset.
pub fn info_of(ds: &dyn Dataset) -> Result<String> {
    let [c, h, w] = ds.shape();
    let plane = h * w;
    let (mut sum, mut sq) = (vec![0u64; c], vec![0u64; c]);
    let mut per_class = vec![0usize; ds.num_classes().unwrap_or(0)];
    let mut unlabelled = 0usize;
    for start in (0..ds.len()).step_by(CHUNK) {
        for it in items(ds, start..(start + CHUNK).min(ds.len()))? {
            for (k, p) in it.image.chunks_exact(plane).enumerate() {
                sum[k] += p.iter().map(|&x| x as u64).sum::<u64>();
                sq[k] += p.iter().map(|&x| (x as u64) * (x as u64)).sum::<u64>();
            }
            match it.label {
                Some(l) if (l as usize) < per_class.len() => per_class[l as usize] += 1,
                Some(l) => {
                    return Err(DataError::Invalid(format!(
                        "{}: label {l} beyond {} classes",
                        ds.describe(),
                        per_class.len()
                    )))
                }
                None => unlabelled += 1,
            }
        }
    }
    let n = (ds.len() * plane).max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|&s| s as f64 / n).collect();
    let std: Vec<f64> = sq.iter().zip(&mean).map(|(&q, m)| (q as f64 / n - m * m).max(0.0).sqrt()).collect();
    let total = |v: &[u64]| v.iter().sum::<u64>() as f64 / (n * c as f64);
    let all_mean = total(&sum);
    let all_std = (total(&sq) - all_mean * all_mean).max(0.0).sqrt();
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");

    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(s, "{}", ds.describe());
    let _ = writeln!(s, "count: {}", ds.len());
    let _ = writeln!(s, "shape: {c} x {h} x {w} (channels x height x width)");
    if per_class.is_empty() {
        let _ = writeln!(s, "classes: none (unlabelled)");
    } else {
        let names = ds.class_names().unwrap_or_default();
        let _ = writeln!(s, "classes: {}", per_class.len());
        for (k, count) in per_class.iter().enumerate() {
            let _ = writeln!(s, "  {k:>3} {:<16} {count}", names.get(k).map(String::as_str).unwrap_or(""));
        }
        if unlabelled > 0 {
            let _ = writeln!(s, "  unlabelled: {unlabelled}");
        }
    }
    let _ = write!(s, "pixel mean: {all_mean:.2}, std: {all_std:.2} (0-255)");
    if c > 1 {
        let _ = write!(s, "\nper channel mean: [{}], std: [{}]", list(&mean), list(&std));
    }
    Ok(s)
}

/// Write `spec` to `out_h5` in genlab's HDF5 layout, a chunk at a time.
pub fn convert(spec: &str, out_h5: &Path) -> Result<()> {
    convert_dataset(crate::open(spec)?.as_ref(), out_h5)
}

/// [`convert`] of an open dataset.
pub fn convert_dataset(ds: &dyn Dataset, out_h5: &Path) -> Result<()> {
    if ds.is_empty() {
        return Err(DataError::Invalid(format!("{}: nothing to convert", ds.describe())));
    }
    let labelled = ds.get(0)?.label.is_some();
    let source = ds.describe();
    let mut w = H5Writer::create(out_h5, ds.len(), ds.shape(), labelled, &[("source", &source)])?;
    if let Some(names) = ds.class_names() {
        w.set_class_names(&names)?;
    }
    for start in (0..ds.len()).step_by(CHUNK) {
        let chunk = items(ds, start..(start + CHUNK).min(ds.len()))?;
        let pixels: Vec<u8> = chunk.iter().flat_map(|it| it.image.iter().copied()).collect();
        let labels: Option<Vec<i64>> = labelled.then(|| chunk.iter().map(|it| it.label.unwrap_or(-1)).collect());
        if labels.as_ref().is_some_and(|l| l.contains(&-1)) {
            return Err(DataError::Invalid(format!("{source}: some items have labels and some do not")));
        }
        w.append(&pixels, labels.as_deref())?;
    }
    w.finish()
}

/// Save a grid of `n` examples of `spec`, evenly spaced through it, as a PNG.
pub fn preview(spec: &str, out_png: &Path, n: usize) -> Result<()> {
    preview_dataset(crate::open(spec)?.as_ref(), out_png, n)
}

/// [`preview`] of an open dataset.
pub fn preview_dataset(ds: &dyn Dataset, out_png: &Path, n: usize) -> Result<()> {
    let n = n.min(ds.len());
    if n == 0 {
        return Err(DataError::Invalid(format!("{}: nothing to preview", ds.describe())));
    }
    let picked: Vec<Item> = (0..n).into_par_iter().map(|i| ds.get(i * ds.len() / n)).collect::<Result<_>>()?;
    let pixels: Vec<u8> = picked.iter().flat_map(|it| it.image.iter().copied()).collect();
    let [c, h, w] = ds.shape();
    let batch = Tensor::from_slice(&pixels).view([n as i64, c as i64, h as i64, w as i64]);
    let ncol = (n as f64).sqrt().ceil() as i64;
    let grid = genlab_core::images::make_grid(&batch, ncol, 2)?;
    genlab_core::images::save_png(&grid, out_png)?;
    Ok(())
}

/// The Canny edge map of an image file (Canny 1986, via imageproc's `canny`: a Gaussian blur with sigma 1.4,
/// Sobel gradients, non-maximum suppression and hysteresis between the gradient magnitudes `low` and
/// `high`), written as a white-on-black greyscale PNG: the control image Canny ControlNets were trained on
/// (diffusers' examples use OpenCV's `Canny(image, 100, 200)`). Returns the image's width and height.
pub fn canny_file(input: &Path, output: &Path, low: f32, high: f32) -> Result<(u32, u32)> {
    if !(low.is_finite() && high.is_finite() && 0.0 <= low && low <= high) {
        return Err(DataError::Invalid(format!(
            "Canny thresholds need 0 <= low <= high, got low {low} and high {high}"
        )));
    }
    let img =
        image::open(input).map_err(|e| DataError::Format { path: input.to_path_buf(), message: e.to_string() })?;
    let edges = imageproc::edges::canny(&img.into_luma8(), low, high);
    edges.save(output).map_err(|e| DataError::Format { path: output.to_path_buf(), message: e.to_string() })?;
    Ok(edges.dimensions())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::InMemory;

    fn toy() -> InMemory {
        // 4 RGB 1x2 images: channel k of image i holds (10 * i + k, 10 * i + k + 1).
        let px: Vec<u8> = (0..4u8).flat_map(|i| (0..3u8).flat_map(move |k| [10 * i + k, 10 * i + k + 1])).collect();
        InMemory::new("toy", [3, 1, 2], px, Some(vec![0, 2, 2, 1]))
            .unwrap()
            .with_class_names(vec!["a".into(), "b".into(), "c".into()])
            .unwrap()
    }

    #[test]
    fn info_counts_and_moments() {
        let s = info_of(&toy()).unwrap();
        assert!(s.contains("count: 4") && s.contains("shape: 3 x 1 x 2"), "{s}");
        assert!(s.contains("classes: 3"), "{s}");
        assert!(s.contains("  0 a                1") && s.contains("  2 c                2"), "{s}");
        // Red: 0,1,10,11,20,21,30,31 -> mean 15.5; all channels: mean 16.5.
        assert!(s.contains("per channel mean: [15.50, 16.50, 17.50]") && s.contains("pixel mean: 16.50"), "{s}");
        let digits = info("digits").unwrap();
        assert!(digits.contains("count: 1797") && digits.contains("classes: 10"), "{digits}");
    }

    #[test]
    fn convert_then_read_back_and_preview() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("toy.h5");
        let src = toy();
        convert_dataset(&src, &out).unwrap();
        let back = crate::open(&out.display().to_string()).unwrap();
        assert_eq!((back.len(), back.shape(), back.class_names()), (4, [3, 1, 2], src.class_names()));
        for i in 0..4 {
            assert_eq!(back.get(i).unwrap(), src.get(i).unwrap());
        }
        // 1,797 digits: several chunks.
        convert("digits", &dir.path().join("d.h5")).unwrap();
        let d = crate::open(&format!("{}:images", dir.path().join("d.h5").display())).unwrap();
        let orig = crate::open("digits").unwrap();
        assert_eq!((d.len(), d.get(1796).unwrap()), (1797, orig.get(1796).unwrap()));

        let png = dir.path().join("p/grid.png");
        preview("digits", &png, 10).unwrap();
        let img = image::open(&png).unwrap();
        // 10 tiles of 8x8 in 4 columns, 3 rows, 2 pixels of padding.
        assert_eq!((img.width(), img.height()), (4 * 10 + 2, 3 * 10 + 2));
        assert!(preview_dataset(&src, &png, 0).is_err());
    }

    #[test]
    fn canny_outlines_a_square_and_refuses_bad_thresholds() {
        let dir = tempfile::tempdir().unwrap();
        let (input, out) = (dir.path().join("square.png"), dir.path().join("edges.png"));
        let img = image::GrayImage::from_fn(32, 32, |x, y| {
            image::Luma([if (8..24).contains(&x) && (8..24).contains(&y) { 255 } else { 0 }])
        });
        img.save(&input).unwrap();
        assert_eq!(canny_file(&input, &out, 100.0, 200.0).unwrap(), (32, 32));
        let edges = image::open(&out).unwrap().into_luma8();
        let on = |x: u32, y: u32| edges.get_pixel(x, y)[0] == 255;
        // Edges along the square's sides, none inside it or far outside.
        assert!((8..24).filter(|&y| (7..=8).any(|x| on(x, y))).count() >= 12);
        assert!((10..22).all(|y| (10..22).all(|x| !on(x, y))) && !on(2, 2) && !on(29, 29));
        assert!(matches!(canny_file(&input, &out, 200.0, 100.0), Err(DataError::Invalid(_))));
        let e = canny_file(&dir.path().join("missing.png"), &out, 100.0, 200.0).unwrap_err().to_string();
        assert!(e.contains("missing.png"), "{e}");
    }
}
