//! Translating images with a trained CycleGAN, and measuring it on aligned domains.
use crate::cyclegan::loss::l1;
use crate::cyclegan::train::{check_domains, CycleGanGenerators};
use crate::error::{GanError, Result};
use crate::sr::upscale::read_image;
use genlab_data::Dataset;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Kind, Tensor};

/// Which generator to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// G_A: domain A to domain B.
    #[serde(rename = "a2b")]
    AToB,
    /// G_B: domain B to domain A.
    #[serde(rename = "b2a")]
    BToA,
}

impl std::str::FromStr for Direction {
    type Err = GanError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "a2b" | "AtoB" => Ok(Direction::AToB),
            "b2a" | "BtoA" => Ok(Direction::BToA),
            other => Err(GanError::Config(format!("direction `{other}`: expected a2b or b2a"))),
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::AToB => "a2b",
            Direction::BToA => "b2a",
        })
    }
}

/// Translate `x` in `direction` without gradients, in chunks of `chunk` images.
///
/// # Shapes
/// - `x`: [n, c, h, w] in [-1, 1] -> [n, c, h, w] in [-1, 1]
pub fn translate(g: &CycleGanGenerators, x: &Tensor, direction: Direction, chunk: i64) -> Result<Tensor> {
    let net = match direction {
        Direction::AToB => &g.g_a,
        Direction::BToA => &g.g_b,
    };
    let _guard = tch::no_grad_guard();
    let n = x.size().first().copied().unwrap_or(0);
    let dev = g.device();
    let mut out = Vec::new();
    let chunk = chunk.max(1);
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        out.push(net.forward(&x.narrow(0, start, len).to_device(dev))?.to_device(x.device()));
        start += len;
    }
    if out.is_empty() {
        return Err(GanError::Config(format!("nothing to translate: a batch of shape {:?}", x.size())));
    }
    Ok(Tensor::cat(&out, 0))
}

/// What [`translate_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateSummary {
    pub images: usize,
    pub image_shape: [i64; 3],
}

fn is_h5(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("h5") || e.eq_ignore_ascii_case("hdf5"))
}

/// Translate a PNG/JPEG into a PNG, or an HDF5 file of images into an HDF5 file (labels kept).
pub fn translate_file(
    g: &CycleGanGenerators,
    input: &Path,
    output: &Path,
    direction: Direction,
    chunk: usize,
) -> Result<TranslateSummary> {
    let c = g.run.nets.channels;
    if is_h5(input) != is_h5(output) {
        return Err(GanError::Config(format!(
            "{} -> {}: an HDF5 input needs an HDF5 output and an image an image (.png)",
            input.display(),
            output.display()
        )));
    }
    if !is_h5(input) {
        let x = read_image(input, c)?;
        let y = translate(g, &x, direction, 1)?;
        genlab_core::images::save_png(&genlab_core::images::to_u8(&y).get(0), output)?;
        let s = x.size();
        return Ok(TranslateSummary { images: 1, image_shape: [c, s[2], s[3]] });
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
    let mut writer = genlab_data::H5Writer::create(output, n, [dc as usize, h as usize, w as usize], labelled, &[])?;
    for start in (0..n).step_by(chunk.max(1)) {
        let idx: Vec<usize> = (start..(start + chunk.max(1)).min(n)).collect();
        let (x, y) = genlab_data::batch_of(ds.as_ref(), &idx)?;
        let u8s = genlab_core::images::to_u8(&translate(g, &x, direction, chunk as i64)?).contiguous();
        let mut buf = vec![0u8; u8s.numel()];
        let len = buf.len();
        u8s.copy_data_u8(&mut buf, len);
        let labels = y.map(Vec::<i64>::try_from).transpose()?;
        writer.append(&buf, labels.as_deref().filter(|_| labelled))?;
    }
    writer.finish()?;
    Ok(TranslateSummary { images: n, image_shape: [c, h, w] })
}

/// Errors of one direction against the true counterparts, on [0, 1] pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectionScores {
    /// Mean |G(x) - y|.
    pub l1: f64,
    /// Mean over images of the PSNR (dB, capped at 100) of G(x) against y.
    pub psnr: f64,
    /// The do-nothing baseline: mean |x - y|.
    pub l1_identity: f64,
    /// Mean PSNR of x against y.
    pub psnr_identity: f64,
    /// Mean |F(G(x)) - x| (the cycle reconstruction error; 0 for the baseline).
    pub cycle_l1: f64,
}

/// [`evaluate`]'s result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CycleEvaluation {
    /// The run (when the caller names it) and the step of its checkpoint.
    #[serde(default)]
    pub run: Option<String>,
    #[serde(default)]
    pub step: u64,
    pub data_a: String,
    pub data_b: String,
    pub images: usize,
    pub a2b: DirectionScores,
    pub b2a: DirectionScores,
}

impl std::fmt::Display for CycleEvaluation {
    /// Each direction's model beside the do-nothing baseline (L1 and PSNR on [0, 1] pixels).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (n, a, b) = (self.images, &self.data_a, &self.data_b);
        writeln!(f, "{n} pairs of {a} | {b}, run at step {} (L1 and PSNR on [0, 1] pixels)", self.step)?;
        for (what, s) in [("a2b", &self.a2b), ("b2a", &self.b2a)] {
            writeln!(f, "  {what}  model    L1 {:.4}  PSNR {:6.2} dB  cycle L1 {:.4}", s.l1, s.psnr, s.cycle_l1)?;
            writeln!(f, "  {what}  identity L1 {:.4}  PSNR {:6.2} dB  cycle L1 0", s.l1_identity, s.psnr_identity)?;
        }
        Ok(())
    }
}

/// Per-image PSNR on [0, 1], capped at 100 dB.
fn psnr_sum(x: &Tensor, y: &Tensor) -> f64 {
    let mse = ((x - y) / 2.0).square().mean_dim(&[1i64, 2, 3][..], false, Kind::Float).clamp_min(1e-10);
    (mse.log10() * -10.0).clamp_max(100.0).sum(Kind::Float).double_value(&[])
}

/// Translate the first `n` (all when None) images of two aligned datasets (item `i` of A and of B
/// show the same content) in both directions and compare with the true counterparts; the same for
/// the baseline that returns its input. Only for measurement: training never pairs the domains.
pub fn evaluate(
    g: &CycleGanGenerators,
    a: &dyn Dataset,
    name_a: &str,
    b: &dyn Dataset,
    name_b: &str,
    n: Option<usize>,
    chunk: usize,
) -> Result<CycleEvaluation> {
    let shape = check_domains(a, name_a, b, name_b)?;
    if shape != g.run.image_shape {
        return Err(GanError::Config(format!(
            "the run was trained on images of {:?}; `{name_a}` and `{name_b}` have {shape:?}",
            g.run.image_shape
        )));
    }
    let total = n.unwrap_or(usize::MAX).min(a.len()).min(b.len());
    if total == 0 {
        return Err(GanError::Config(format!("no images to evaluate in `{name_a}` and `{name_b}`")));
    }
    // Sums: [l1, psnr, l1_id, psnr_id, cycle] per direction.
    let mut s = [[0.0f64; 5]; 2];
    for start in (0..total).step_by(chunk.max(1)) {
        let idx: Vec<usize> = (start..(start + chunk.max(1)).min(total)).collect();
        let (xa, _) = genlab_data::batch_of(a, &idx)?;
        let (xb, _) = genlab_data::batch_of(b, &idx)?;
        let k = idx.len() as f64;
        for (d, (x, y, dir, back)) in
            [(&xa, &xb, Direction::AToB, Direction::BToA), (&xb, &xa, Direction::BToA, Direction::AToB)]
                .into_iter()
                .enumerate()
        {
            // Rounded to 8-bit levels, as a saved image would be.
            let q = |t: &Tensor| genlab_core::images::to_u8(t).to_kind(Kind::Float) / 127.5 - 1.0;
            let t = q(&translate(g, x, dir, chunk as i64)?);
            let r = q(&translate(g, &t, back, chunk as i64)?);
            s[d][0] += l1(&t, y).double_value(&[]) / 2.0 * k;
            s[d][1] += psnr_sum(&t, y);
            s[d][2] += l1(x, y).double_value(&[]) / 2.0 * k;
            s[d][3] += psnr_sum(x, y);
            s[d][4] += l1(&r, x).double_value(&[]) / 2.0 * k;
        }
    }
    let m = total as f64;
    let scores = |v: [f64; 5]| DirectionScores {
        l1: v[0] / m,
        psnr: v[1] / m,
        l1_identity: v[2] / m,
        psnr_identity: v[3] / m,
        cycle_l1: v[4] / m,
    };
    Ok(CycleEvaluation {
        run: None,
        step: g.step,
        data_a: name_a.into(),
        data_b: name_b.into(),
        images: total,
        a2b: scores(s[0]),
        b2a: scores(s[1]),
    })
}
