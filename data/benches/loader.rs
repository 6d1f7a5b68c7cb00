//! Data-loading throughput through `Loader` (prefetch thread + rayon decoding), from an
//! HDF5 file and from a PNG folder, at 28x28 (Fashion-MNIST as is) and 64x64 (upscaled).
//! `bench/data_loader.py` measures PyTorch's `DataLoader` on the same files.
//!
//! ```text
//! cargo bench -p genlab-data --bench loader -- [--dir DIR] [--n N] [--threads T] [--batch B]
//! ```
//! Files are written to DIR (kept, and reused when present) or to a temporary folder.
//! Each case times shuffled batches after the first (which starts the workers) for at
//! least an epoch and two seconds, and prints `CASE images_per_s=...`.
use genlab_core::train::BatchSource;
use genlab_data::{Dataset, FolderDataset, H5Dataset, H5Writer, Loader, LoaderConfig, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

struct Args {
    dir: Option<PathBuf>,
    n: usize,
    threads: usize,
    batch: usize,
}

fn args() -> BenchResult<Args> {
    let mut a = Args { dir: None, n: 10_000, threads: 2, batch: 128 };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{k} needs a value"));
        match k.as_str() {
            "--dir" => a.dir = Some(PathBuf::from(val()?)),
            "--n" => a.n = val()?.parse()?,
            "--threads" => a.threads = val()?.parse()?,
            "--batch" => a.batch = val()?.parse()?,
            _ => {} // cargo bench passes `--bench`
        }
    }
    Ok(a)
}

/// Fashion-MNIST image `i` at `side x side` (bilinear upscaling when larger than 28).
fn image_at(src: &dyn Dataset, i: usize, side: u32) -> BenchResult<(image::GrayImage, i64)> {
    let it = src.get(i)?;
    let img = image::GrayImage::from_raw(28, 28, it.image).ok_or("not 28x28")?;
    let img =
        if side == 28 { img } else { image::imageops::resize(&img, side, side, image::imageops::FilterType::Triangle) };
    Ok((img, it.label.unwrap_or(0)))
}

fn write_files(src: &dyn Dataset, dir: &Path, n: usize, side: u32) -> BenchResult<(PathBuf, PathBuf)> {
    let h5 = dir.join(format!("fmnist{side}.h5"));
    let png = dir.join(format!("fmnist{side}-png"));
    if !h5.exists() {
        let s = side as usize;
        let mut w = H5Writer::create(&h5, n, [1, s, s], true, &[])?;
        for i in 0..n {
            let (img, label) = image_at(src, i, side)?;
            w.append(img.as_raw(), Some(&[label]))?;
        }
        w.finish()?;
    }
    if !png.exists() {
        for i in 0..n {
            let (img, label) = image_at(src, i, side)?;
            let class = png.join(format!("{label}"));
            std::fs::create_dir_all(&class)?;
            img.save(class.join(format!("{i:06}.png")))?;
        }
    }
    Ok((h5, png))
}

fn measure(name: &str, ds: Arc<dyn Dataset>, batch: usize) -> BenchResult<()> {
    let cfg = LoaderConfig::new(batch, 0, tch::Device::Cpu);
    let steps = genlab_data::loader::batches_per_epoch(ds.len(), &cfg);
    let mut loader = Loader::new(ds, cfg)?;
    loader.next_batch()?;
    let t = Instant::now();
    let mut done = 0;
    // Whole epochs, at least two seconds' worth, to average out a busy machine.
    while done < steps - 1 || t.elapsed().as_secs_f64() < 2.0 {
        loader.next_batch()?;
        done += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    println!("{name} images_per_s={:.0} ({done} batches of {batch} in {secs:.2} s)", (done * batch) as f64 / secs);
    Ok(())
}

fn main() -> BenchResult<()> {
    let a = args()?;
    // As many decoding threads as PyTorch workers in bench/data_loader.py.
    rayon::ThreadPoolBuilder::new().num_threads(a.threads).build_global()?;
    let src = match genlab_data::open("fashion-mnist") {
        Ok(d) => d,
        Err(e) => {
            println!("skipped: {e}");
            return Ok(());
        }
    };
    let n = a.n.min(src.len());
    let tmp = tempfile::tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    // The loader's own ceiling: the same images already in memory.
    let first: Vec<usize> = (0..n).collect();
    let mem = genlab_data::InMemory::new(
        "memory",
        [1, 28, 28],
        first.iter().map(|&i| src.get(i).map(|it| it.image)).collect::<Result<Vec<_>, _>>()?.concat(),
        None,
    )?;
    measure("memory-28", Arc::new(mem), a.batch)?;
    for side in [28, 64] {
        let (h5, png) = write_files(src.as_ref(), &dir, n, side)?;
        println!("files: {} {}", h5.display(), png.display());
        measure(&format!("hdf5-{side}"), Arc::new(H5Dataset::open(&h5, "images", None)?), a.batch)?;
        measure(&format!("png-{side}"), Arc::new(FolderDataset::open(&png, &OpenOptions::default())?), a.batch)?;
    }
    Ok(())
}
