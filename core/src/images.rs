//! Writing sample batches: a PNG grid, one PNG per sample, or an HDF5 dataset `images`
//! (uint8, N x C x H x W), chosen by the output path as the CLI contract says.
use crate::error::{CoreError, Result};
use std::path::Path;
use tch::{Kind, Tensor};

/// Map images in [-1, 1] (any float kind, any device) to uint8 [0, 255] on the CPU.
///
/// # Shapes
/// - `images`: [n, c, h, w] -> [n, c, h, w] (uint8)
pub fn to_u8(images: &Tensor) -> Tensor {
    ((images.detach().to_kind(Kind::Float).to_device(tch::Device::Cpu) + 1.0) * 127.5)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
}

fn check_images(images: &Tensor) -> Result<(i64, i64, i64, i64)> {
    let s = images.size();
    match s.as_slice() {
        &[n, c, h, w] if matches!(c, 1 | 3 | 4) && n > 0 => Ok((n, c, h, w)),
        _ => Err(CoreError::Shape(format!("expected a non-empty image batch [n, 1|3|4, h, w], got {s:?}"))),
    }
}

/// Tile a uint8 batch into one image, `ncol` images per row, `pad` pixels between tiles.
/// Tile `(row, col)` holds image `row * ncol + col`; unused tiles are black.
///
/// # Shapes
/// - `images`: [n, c, h, w] (uint8) -> [c, rows * (h + pad) + pad, ncol * (w + pad) + pad]
pub fn make_grid(images: &Tensor, ncol: i64, pad: i64) -> Result<Tensor> {
    let (n, c, h, w) = check_images(images)?;
    let ncol = ncol.clamp(1, n);
    let rows = (n + ncol - 1) / ncol;
    let grid = Tensor::zeros([c, rows * (h + pad) + pad, ncol * (w + pad) + pad], (images.kind(), images.device()));
    for i in 0..n {
        let (r, col) = (i / ncol, i % ncol);
        grid.narrow(1, pad + r * (h + pad), h).narrow(2, pad + col * (w + pad), w).copy_(&images.get(i));
    }
    Ok(grid)
}

/// Save one uint8 image [c, h, w] (c = 1, 3 or 4) as PNG.
pub fn save_png(image: &Tensor, path: &Path) -> Result<()> {
    let s = image.size();
    let (c, h, w) = match s.as_slice() {
        &[c, h, w] if matches!(c, 1 | 3 | 4) => (c, h, w),
        _ => return Err(CoreError::Shape(format!("PNG needs [1|3|4, h, w], got {s:?}"))),
    };
    let hwc = image.to_kind(Kind::Uint8).permute([1, 2, 0]).contiguous();
    let mut buf = vec![0u8; (c * h * w) as usize];
    let len = buf.len();
    hwc.copy_data_u8(&mut buf, len);
    let color = match c {
        1 => image::ExtendedColorType::L8,
        3 => image::ExtendedColorType::Rgb8,
        _ => image::ExtendedColorType::Rgba8,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
    }
    image::save_buffer(path, &buf, w as u32, h as u32, color).map_err(|e| CoreError::file(path, e.to_string()))
}

/// Images in [-1, 1] as a PNG grid of `ncol` columns with `pad` pixels between tiles.
pub fn save_grid(images: &Tensor, ncol: i64, pad: i64, path: &Path) -> Result<()> {
    save_png(&make_grid(&to_u8(images), ncol, pad)?, path)
}

/// Write a uint8 batch [n, c, h, w] as HDF5 dataset `images`, with layout attributes.
pub fn save_h5(images_u8: &Tensor, path: &Path, labels: Option<&[i64]>) -> Result<()> {
    let (n, c, h, w) = check_images(images_u8)?;
    let mut buf = vec![0u8; (n * c * h * w) as usize];
    let len = buf.len();
    images_u8.contiguous().copy_data_u8(&mut buf, len);
    let arr = ndarray::Array4::from_shape_vec((n as usize, c as usize, h as usize, w as usize), buf)
        .map_err(|e| CoreError::Shape(e.to_string()))?;
    let h5err = |e: hdf5::Error| CoreError::Hdf5 { path: path.to_path_buf(), message: e.to_string() };
    let file = hdf5::File::create(path).map_err(h5err)?;
    let ds = file.new_dataset_builder().with_data(&arr).create("images").map_err(h5err)?;
    let layout: hdf5::types::VarLenUnicode = "NCHW".parse().map_err(|_| CoreError::Other("attribute".into()))?;
    ds.new_attr::<hdf5::types::VarLenUnicode>()
        .create("layout")
        .and_then(|a| a.write_scalar(&layout))
        .map_err(h5err)?;
    ds.new_attr::<u8>().create("max_value").and_then(|a| a.write_scalar(&255u8)).map_err(h5err)?;
    if let Some(l) = labels {
        if l.len() != n as usize {
            return Err(CoreError::Shape(format!("{} labels for {n} images", l.len())));
        }
        file.new_dataset_builder().with_data(l).create("labels").map_err(h5err)?;
    }
    Ok(())
}

/// Where samples go, decided by the path: `*.png` a grid, `*.h5`/`*.hdf5` HDF5, else a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Grid,
    Hdf5,
    Folder,
}

impl OutputKind {
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
            Some("png") => OutputKind::Grid,
            Some("h5") | Some("hdf5") => OutputKind::Hdf5,
            _ => OutputKind::Folder,
        }
    }
}

/// [`save_samples`] without labels, except that one image saved as a PNG is the image itself
/// rather than a grid of one.
pub fn save_images(images: &Tensor, path: &Path) -> Result<()> {
    if images.size().first() == Some(&1) && OutputKind::of(path) == OutputKind::Grid {
        check_images(images)?;
        return save_png(&to_u8(images).get(0), path);
    }
    save_samples(images, path, None)
}

/// Save a batch of images in [-1, 1] to `path` per [`OutputKind::of`].
///
/// # Shapes
/// - `images`: [n, c, h, w]
pub fn save_samples(images: &Tensor, path: &Path, labels: Option<&[i64]>) -> Result<()> {
    check_images(images)?;
    let u8s = to_u8(images);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
    }
    match OutputKind::of(path) {
        OutputKind::Grid => {
            let n = u8s.size()[0];
            let ncol = (n as f64).sqrt().ceil() as i64;
            save_png(&make_grid(&u8s, ncol, 2)?, path)
        }
        OutputKind::Hdf5 => save_h5(&u8s, path, labels),
        OutputKind::Folder => {
            std::fs::create_dir_all(path).map_err(|e| CoreError::io(path, e))?;
            for i in 0..u8s.size()[0] {
                save_png(&u8s.get(i), &path.join(format!("{i:06}.png")))?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn grid_places_image_i_at_row_i_div_ncol() {
        // 10 images, each filled with its own index, on a 4-wide grid.
        let imgs = Tensor::arange(10, (Kind::Uint8, Device::Cpu))
            .view([10, 1, 1, 1])
            .expand([10, 1, 3, 3], false)
            .contiguous();
        let g = make_grid(&imgs, 4, 1).unwrap();
        assert_eq!(g.size(), [1, 3 * 4 + 1, 4 * 4 + 1]);
        for i in 0..12i64 {
            let (r, c) = (i / 4, i % 4);
            let v = g.int64_value(&[0, 1 + r * 4 + 1, 1 + c * 4 + 1]);
            assert_eq!(v, if i < 10 { i } else { 0 }, "tile ({r},{c})");
        }
    }

    #[test]
    fn writes_every_output_kind() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = Tensor::rand([5, 3, 8, 8], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        save_samples(&imgs, &dir.path().join("grid.png"), None).unwrap();
        let g = image::open(dir.path().join("grid.png")).unwrap();
        assert_eq!((g.width(), g.height()), (3 * 10 + 2, 2 * 10 + 2));
        save_samples(&imgs, &dir.path().join("each"), None).unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join("each")).unwrap().count(), 5);
        let p = dir.path().join("s.h5");
        save_samples(&imgs, &p, Some(&[0, 1, 2, 3, 4])).unwrap();
        let f = hdf5::File::open(&p).unwrap();
        let ds = f.dataset("images").unwrap();
        assert_eq!(ds.shape(), vec![5, 3, 8, 8]);
        let back: ndarray::Array4<u8> = ds.read().unwrap();
        let want = to_u8(&imgs);
        assert_eq!(back[[2, 1, 3, 4]] as i64, want.int64_value(&[2, 1, 3, 4]));
        assert!(save_samples(&Tensor::zeros([2, 2, 4, 4], (Kind::Float, Device::Cpu)), &p, None).is_err());
    }

    #[test]
    fn to_u8_maps_the_range() {
        let x = Tensor::from_slice(&[-1.5f32, -1.0, 0.0, 1.0, 2.0]).view([1, 1, 1, 5]);
        assert_eq!(Vec::<u8>::try_from(to_u8(&x).view(-1)).unwrap(), vec![0, 0, 128, 255, 255]);
    }
}
