//! Inference with a trained super-resolution generator: upscaling tensors, image files and
//! HDF5 files, and evaluating a run on held-out data against bicubic upscaling.
use crate::error::{GanError, Result};
use crate::sr::metrics::{psnr, ssim};
use crate::sr::model::SrGenerator;
use crate::sr::resample::{downscale, quantize, upscale_bicubic};
use genlab_data::Dataset;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Kind, Tensor};

/// The generator's high-resolution estimate, BatchNorm using its running averages, clamped to
/// [-1, 1].
///
/// # Shapes
/// - `lr`: [n, channels, h, w] in [-1, 1] -> [n, channels, h * scale, w * scale]
pub fn upscale(model: &SrGenerator, lr: &Tensor) -> Result<Tensor> {
    let x = lr.to_kind(Kind::Float).to_device(model.device());
    Ok(tch::no_grad(|| model.forward(&x, false))?.clamp(-1.0, 1.0))
}

/// [`upscale`] in chunks of `chunk` images, results on the CPU.
///
/// # Shapes
/// - `lr`: [n, channels, h, w] in [-1, 1] -> [n, channels, h * scale, w * scale]
pub fn upscale_chunked(model: &SrGenerator, lr: &Tensor, chunk: i64) -> Result<Tensor> {
    let n = lr.size().first().copied().unwrap_or(0);
    let chunk = chunk.max(1);
    let mut outs = Vec::new();
    for start in (0..n).step_by(chunk as usize) {
        let len = chunk.min(n - start);
        outs.push(upscale(model, &lr.narrow(0, start, len))?.to_device(tch::Device::Cpu));
    }
    if outs.is_empty() {
        return Err(GanError::Config("no images to upscale".into()));
    }
    Ok(Tensor::cat(&outs, 0))
}

/// Read a PNG (or JPEG) as one image in [-1, 1] for a model of `channels` channels: a greyscale
/// image for 1, a colour one for 3 (an alpha channel is dropped). A colour image for a grey
/// model or the reverse is an error that names the file and both channel counts.
///
/// # Shapes
/// - returns [1, channels, h, w]
pub fn read_image(path: &Path, channels: i64) -> Result<Tensor> {
    let img = image::open(path).map_err(|e| GanError::Image { path: path.to_path_buf(), message: e.to_string() })?;
    let found = if img.color().has_color() { 3 } else { 1 };
    if found != channels {
        return Err(GanError::Image {
            path: path.to_path_buf(),
            message: format!(
                "a {} image ({found} channel{}, {:?}) for a model of {channels} channel{}; convert it to {} first",
                if found == 3 { "colour" } else { "greyscale" },
                if found == 1 { "" } else { "s" },
                img.color(),
                if channels == 1 { "" } else { "s" },
                if channels == 1 { "greyscale" } else { "RGB" },
            ),
        });
    }
    let (w, h) = (img.width() as i64, img.height() as i64);
    let bytes = if channels == 1 { img.into_luma8().into_raw() } else { img.into_rgb8().into_raw() };
    let hwc = Tensor::from_slice(&bytes).view([h, w, channels]);
    Ok((hwc.permute([2, 0, 1]).unsqueeze(0).to_kind(Kind::Float) / 127.5 - 1.0).contiguous())
}

fn is_h5(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref(), Some("h5" | "hdf5"))
}

/// What [`upscale_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpscaleSummary {
    pub images: usize,
    /// [channels, height, width] of the inputs.
    pub input_shape: [i64; 3],
    /// [channels, height, width] of the outputs.
    pub output_shape: [i64; 3],
}

impl std::fmt::Display for UpscaleSummary {
    /// "3 images x2 (1x28x28 -> 1x56x56)".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shape = |v: [i64; 3]| format!("{}x{}x{}", v[0], v[1], v[2]);
        let plural = if self.images == 1 { "" } else { "s" };
        let scale = self.output_shape[1] / self.input_shape[1].max(1);
        write!(
            f,
            "{} image{plural} x{scale} ({} -> {})",
            self.images,
            shape(self.input_shape),
            shape(self.output_shape)
        )
    }
}

/// Upscale the image file `input` into `output`: a PNG/JPEG image to a PNG, or an HDF5 file of
/// images (genlab's layout: `images` N x C x H x W, optional `labels`, which are copied) to an
/// HDF5 file. `chunk` images go through the generator at a time.
pub fn upscale_file(model: &SrGenerator, input: &Path, output: &Path, chunk: usize) -> Result<UpscaleSummary> {
    let c = model.cfg.channels;
    let s = model.cfg.scale;
    if is_h5(input) != is_h5(output) {
        return Err(GanError::Config(format!(
            "{} -> {}: an HDF5 input needs an HDF5 output and an image an image (.png)",
            input.display(),
            output.display()
        )));
    }
    if !is_h5(input) {
        let x = read_image(input, c)?;
        let y = upscale(model, &x)?;
        genlab_core::images::save_png(&genlab_core::images::to_u8(&y).get(0), output)?;
        let (h, w) = (x.size()[2], x.size()[3]);
        return Ok(UpscaleSummary { images: 1, input_shape: [c, h, w], output_shape: [c, h * s, w * s] });
    }
    if !input.is_file() {
        return Err(GanError::Image { path: input.to_path_buf(), message: "no such file".into() });
    }
    let ds = genlab_data::open(&input.display().to_string())?;
    let [dc, h, w] = ds.shape().map(|v| v as i64);
    if dc != c {
        return Err(GanError::Image {
            path: input.to_path_buf(),
            message: format!("its images have {dc} channels; the model takes {c}"),
        });
    }
    let n = ds.len();
    let labelled = ds.num_classes().is_some();
    let mut writer =
        genlab_data::H5Writer::create(output, n, [c as usize, (h * s) as usize, (w * s) as usize], labelled, &[])?;
    for start in (0..n).step_by(chunk.max(1)) {
        let idx: Vec<usize> = (start..(start + chunk.max(1)).min(n)).collect();
        let (x, y) = genlab_data::batch_of(ds.as_ref(), &idx)?;
        let u8s = genlab_core::images::to_u8(&upscale(model, &x)?).contiguous();
        let mut buf = vec![0u8; u8s.numel()];
        let len = buf.len();
        u8s.copy_data_u8(&mut buf, len);
        let labels = y.map(Vec::<i64>::try_from).transpose()?;
        writer.append(&buf, labels.as_deref().filter(|_| labelled))?;
    }
    writer.finish()?;
    Ok(UpscaleSummary { images: n, input_shape: [c, h, w], output_shape: [c, h * s, w * s] })
}

/// PSNR (dB) and SSIM of the generator and of bicubic upscaling against the originals, means
/// over the images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SrEvaluation {
    pub data: String,
    pub images: usize,
    pub scale: i64,
    /// [channels, height, width] of the originals.
    pub image_shape: [i64; 3],
    pub psnr_model: f64,
    pub ssim_model: f64,
    pub psnr_bicubic: f64,
    pub ssim_bicubic: f64,
    /// The run and the step of its checkpoint, when evaluated from a run directory.
    #[serde(default)]
    pub run: Option<String>,
    #[serde(default)]
    pub step: Option<u64>,
}

impl std::fmt::Display for SrEvaluation {
    /// The model's PSNR and SSIM beside bicubic upscaling's.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [c, h, w] = self.image_shape;
        let s = self.scale;
        writeln!(f, "{}: {} images of {c}x{h}x{w}, x{s} from {}x{}", self.data, self.images, h / s, w / s)?;
        let model = self.step.map(|s| format!("model (step {s})")).unwrap_or_else(|| "model".into());
        writeln!(f, "  {model:<16} PSNR {:6.2} dB  SSIM {:.4}", self.psnr_model, self.ssim_model)?;
        writeln!(f, "  {:<16} PSNR {:6.2} dB  SSIM {:.4}", "bicubic", self.psnr_bicubic, self.ssim_bicubic)
    }
}

/// PSNR is capped here, so that an image reproduced exactly does not make the mean infinite.
pub const PSNR_CAP_DB: f64 = 100.0;

/// Evaluate on the first `n` images of `ds` (all when None): each original is downscaled with
/// [`downscale`] (as in training), upscaled by the generator and by [`upscale_bicubic`], both
/// rounded to 8-bit levels as a saved image would be, and compared with the original on [0, 1]
/// (PSNR per image capped at [`PSNR_CAP_DB`], SSIM per image; both averaged).
pub fn evaluate(model: &SrGenerator, ds: &dyn Dataset, n: Option<usize>, chunk: usize) -> Result<SrEvaluation> {
    let [c, h, w] = ds.shape().map(|v| v as i64);
    let scale = model.cfg.scale;
    if c != model.cfg.channels {
        return Err(GanError::Config(format!(
            "{}: images have {c} channels; the model takes {}",
            ds.describe(),
            model.cfg.channels
        )));
    }
    if h % scale != 0 || w % scale != 0 {
        return Err(GanError::Config(format!(
            "{}: {h}x{w} images cannot be downscaled by {scale}: height and width must be multiples of it",
            ds.describe()
        )));
    }
    let count = n.unwrap_or(ds.len()).min(ds.len());
    if count == 0 {
        return Err(GanError::Config(format!("{}: no images to evaluate on", ds.describe())));
    }
    let to01 = |t: &Tensor| (quantize(t) + 1.0) / 2.0;
    let (mut sums, mut done) = ([0.0f64; 4], 0usize);
    for start in (0..count).step_by(chunk.max(1)) {
        let idx: Vec<usize> = (start..(start + chunk.max(1)).min(count)).collect();
        let (hr, _) = genlab_data::batch_of(ds, &idx)?;
        let lr = downscale(&hr, scale)?;
        let sr = upscale(model, &lr)?.to_device(tch::Device::Cpu);
        let bic = upscale_bicubic(&lr, scale)?;
        let target = to01(&hr);
        let (sr, bic) = (to01(&sr), to01(&bic));
        let sum = |t: Tensor| t.sum(Kind::Double).double_value(&[]);
        sums[0] += sum(psnr(&sr, &target)?.clamp_max(PSNR_CAP_DB));
        sums[1] += sum(ssim(&sr, &target)?);
        sums[2] += sum(psnr(&bic, &target)?.clamp_max(PSNR_CAP_DB));
        sums[3] += sum(ssim(&bic, &target)?);
        done += idx.len();
    }
    let mean = |v: f64| v / done as f64;
    Ok(SrEvaluation {
        data: ds.describe(),
        images: done,
        scale,
        image_shape: [c, h, w],
        psnr_model: mean(sums[0]),
        ssim_model: mean(sums[1]),
        psnr_bicubic: mean(sums[2]),
        ssim_bicubic: mean(sums[3]),
        run: None,
        step: None,
    })
}

/// A comparison grid of the first `n` images of `ds`: one row per image with bicubic
/// upscaling, the generator's output and the original.
///
/// # Shapes
/// - returns [3 n, c, h, w] in [-1, 1], row-major triplets (for a 3-wide grid)
pub fn comparison(model: &SrGenerator, ds: &dyn Dataset, n: usize) -> Result<Tensor> {
    let count = n.min(ds.len());
    if count == 0 {
        return Err(GanError::Config(format!("{}: no images to show", ds.describe())));
    }
    let idx: Vec<usize> = (0..count).collect();
    let (hr, _) = genlab_data::batch_of(ds, &idx)?;
    let lr = downscale(&hr, model.cfg.scale)?;
    let sr = upscale(model, &lr)?.to_device(tch::Device::Cpu);
    let bic = upscale_bicubic(&lr, model.cfg.scale)?;
    Ok(Tensor::stack(&[bic, sr, hr], 1).flatten(0, 1))
}
