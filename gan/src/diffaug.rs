//! Differentiable augmentation for data-efficient GAN training (DiffAugment: Zhao, Liu, Lin, Zhu and
//! Han, arXiv 2006.10738). The same random transformations are applied to real and generated images
//! before every discriminator call, in both the discriminator's and the generator's update, and
//! gradients flow through them to the generator; the discriminator sees more varied images and
//! overfits a small dataset later.
//!
//! The operations are those of the paper's reference code (`DiffAugment_pytorch.py`), each drawn per
//! image:
//! - `color`: brightness `x + (u - 0.5)`, then saturation `(x - mean_c) * 2u + mean_c` (mean over
//!   channels), then contrast `(x - mean) * (u + 0.5) + mean` (mean over the image), `u ~ U[0, 1)`;
//! - `translation`: a shift by up to 1/8 of the height and width (rounded), in whole pixels, with 0
//!   (mid-grey for images in [-1, 1]) shifted in;
//! - `cutout`: a square of half the height and width (rounded) set to 0, centred anywhere in the
//!   image (clipped at its edges).
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{GanError, Result};

/// One DiffAugment policy entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffAugOp {
    Color,
    Translation,
    Cutout,
}

impl DiffAugOp {
    pub fn name(self) -> &'static str {
        match self {
            DiffAugOp::Color => "color",
            DiffAugOp::Translation => "translation",
            DiffAugOp::Cutout => "cutout",
        }
    }
}

/// A DiffAugment policy: the operations applied in order, e.g. `color,translation,cutout` (the
/// paper's choice for small datasets). The empty policy changes nothing. Written into a run's
/// `config.json` as that string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffAugment {
    pub ops: Vec<DiffAugOp>,
}

impl DiffAugment {
    /// Whether the policy changes nothing.
    pub fn is_none(&self) -> bool {
        self.ops.is_empty()
    }

    /// `x` through every operation of the policy, each drawing its parameters per image from
    /// libtorch's generator. Differentiable with respect to `x`.
    ///
    /// # Shapes
    /// - `x`: [n, c, h, w] -> [n, c, h, w]
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let mut x = x.shallow_clone();
        let (n, dev) = (x.size()[0], x.device());
        for op in &self.ops {
            x = match op {
                DiffAugOp::Color => {
                    let u = || Tensor::rand([n], (x.kind(), dev));
                    let x = brightness(&x, &u());
                    let x = saturation(&x, &u());
                    contrast(&x, &u())
                }
                DiffAugOp::Translation => {
                    let (sh, sw) = translation_range(&x);
                    let dy = Tensor::randint_low(-sh, sh + 1, [n], (Kind::Int64, dev));
                    let dx = Tensor::randint_low(-sw, sw + 1, [n], (Kind::Int64, dev));
                    translate(&x, &dy, &dx)
                }
                DiffAugOp::Cutout => {
                    let s = x.size();
                    let (ch, cw) = cutout_size(s[2], s[3]);
                    // Centres in [0, h + 1 - ch % 2), as the reference draws them.
                    let cy = Tensor::randint(s[2] + 1 - ch % 2, [n], (Kind::Int64, dev));
                    let cx = Tensor::randint(s[3] + 1 - cw % 2, [n], (Kind::Int64, dev));
                    cutout(&x, &cy, &cx)
                }
            };
        }
        x
    }
}

impl fmt::Display for DiffAugment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.ops.iter().map(|o| o.name()).collect();
        write!(f, "{}", names.join(","))
    }
}

impl FromStr for DiffAugment {
    type Err = GanError;

    /// A comma-separated list of `color`, `translation`, `cutout` (each at most once); `` or
    /// `none` for no augmentation.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() || s == "none" {
            return Ok(DiffAugment::default());
        }
        let mut ops = Vec::new();
        for part in s.split(',').map(str::trim) {
            let op = match part {
                "color" => DiffAugOp::Color,
                "translation" => DiffAugOp::Translation,
                "cutout" => DiffAugOp::Cutout,
                other => {
                    return Err(GanError::Config(format!(
                        "DiffAugment policy `{s}`: unknown operation `{other}` (expected a comma-separated list of \
                         color, translation, cutout, or none)"
                    )))
                }
            };
            if ops.contains(&op) {
                return Err(GanError::Config(format!("DiffAugment policy `{s}` names `{part}` twice")));
            }
            ops.push(op);
        }
        Ok(DiffAugment { ops })
    }
}

impl Serialize for DiffAugment {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DiffAugment {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `x + (u - 0.5)` per image.
///
/// # Shapes
/// - `x`: [n, c, h, w]; `u`: [n] in [0, 1)
pub fn brightness(x: &Tensor, u: &Tensor) -> Tensor {
    x + (u.view([-1, 1, 1, 1]) - 0.5)
}

/// `(x - mean_c) * 2u + mean_c` per image, the mean over channels at each pixel.
pub fn saturation(x: &Tensor, u: &Tensor) -> Tensor {
    let mean = x.mean_dim([1i64].as_slice(), true, x.kind());
    (x - &mean) * (u.view([-1, 1, 1, 1]) * 2.0) + mean
}

/// `(x - mean) * (u + 0.5) + mean` per image, the mean over the whole image.
pub fn contrast(x: &Tensor, u: &Tensor) -> Tensor {
    let mean = x.mean_dim([1i64, 2, 3].as_slice(), true, x.kind());
    (x - &mean) * (u.view([-1, 1, 1, 1]) + 0.5) + mean
}

/// The largest shift in rows and columns: 1/8 of the height and width, rounded.
fn translation_range(x: &Tensor) -> (i64, i64) {
    let s = x.size();
    let r = |d: i64| (d as f64 * 0.125 + 0.5) as i64;
    (r(s[2]), r(s[3]))
}

/// The side lengths of the cut square: half the height and width, rounded.
fn cutout_size(h: i64, w: i64) -> (i64, i64) {
    let r = |d: i64| (d as f64 * 0.5 + 0.5) as i64;
    (r(h), r(w))
}

/// Each image shifted so that output pixel (i, j) is input pixel (i + dy, j + dx), 0 where that
/// falls outside.
///
/// # Shapes
/// - `x`: [n, c, h, w]; `dy`, `dx`: [n] int64
pub fn translate(x: &Tensor, dy: &Tensor, dx: &Tensor) -> Tensor {
    let s = x.size();
    let (n, h, w) = (s[0], s[2], s[3]);
    let dev = x.device();
    // Index a copy padded by one zero on each side; positions outside clamp onto the padding.
    let padded = x.constant_pad_nd([1, 1, 1, 1]).permute([0, 2, 3, 1]);
    let rows = (Tensor::arange(h, (Kind::Int64, dev)).view([1, h, 1]) + dy.view([n, 1, 1]) + 1).clamp(0, h + 1);
    let cols = (Tensor::arange(w, (Kind::Int64, dev)).view([1, 1, w]) + dx.view([n, 1, 1]) + 1).clamp(0, w + 1);
    let batch = Tensor::arange(n, (Kind::Int64, dev)).view([n, 1, 1]);
    padded.index(&[Some(batch), Some(rows), Some(cols)]).permute([0, 3, 1, 2])
}

/// Each image with a square of [`cutout_size`] set to 0, its top-left corner at
/// `(cy - ch / 2, cx - cw / 2)`, clipped to the image.
///
/// # Shapes
/// - `x`: [n, c, h, w]; `cy`, `cx`: [n] int64
pub fn cutout(x: &Tensor, cy: &Tensor, cx: &Tensor) -> Tensor {
    let s = x.size();
    let (n, h, w) = (s[0], s[2], s[3]);
    let (ch, cw) = cutout_size(h, w);
    let dev = x.device();
    let rows = (Tensor::arange(ch, (Kind::Int64, dev)).view([1, ch, 1]) + cy.view([n, 1, 1]) - ch / 2).clamp(0, h - 1);
    let cols = (Tensor::arange(cw, (Kind::Int64, dev)).view([1, 1, cw]) + cx.view([n, 1, 1]) - cw / 2).clamp(0, w - 1);
    let batch = Tensor::arange(n, (Kind::Int64, dev)).view([n, 1, 1]);
    let mut mask = Tensor::ones([n, h, w], (x.kind(), dev));
    let _ = mask.index_put_(&[Some(batch), Some(rows), Some(cols)], &Tensor::zeros([], (x.kind(), dev)), false);
    x * mask.unsqueeze(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// The tensor's values as f32, in order.
    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap_or_default()
    }

    fn ramp(n: i64, c: i64, h: i64, w: i64) -> Tensor {
        Tensor::arange(n * c * h * w, (Kind::Float, Device::Cpu)).view([n, c, h, w]) / 10.0
    }

    #[test]
    fn colour_operations_match_their_formulas() {
        let x = Tensor::from_slice(&[0.2f32, -0.4, 0.6, 0.0, 1.0, -1.0]).view([1, 3, 1, 2]);
        let u = Tensor::from_slice(&[0.25f32]);
        // Brightness: + (0.25 - 0.5).
        let b = values(&brightness(&x, &u));
        for (a, want) in b.iter().zip([-0.05f32, -0.65, 0.35, -0.25, 0.75, -1.25]) {
            assert!((a - want).abs() < 1e-6, "{b:?}");
        }
        // Saturation with u = 0.25: (x - channel mean) * 0.5 + channel mean, means (0.6, -0.4/3).
        let s = values(&saturation(&x, &u));
        let m = [0.6f32, -1.4 / 3.0];
        let want = [0.2f32, -0.4, 0.6, 0.0, 1.0, -1.0]
            .iter()
            .enumerate()
            .map(|(i, v)| (v - m[i % 2]) * 0.5 + m[i % 2])
            .collect::<Vec<_>>();
        for (a, b) in s.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{s:?} vs {want:?}");
        }
        // Contrast with u = 0.25: (x - 1/15) * 0.75 + 1/15 (the image mean is 0.4 / 6).
        let c = values(&contrast(&x, &u));
        let mean = 0.4f32 / 6.0;
        for (a, v) in c.iter().zip([0.2f32, -0.4, 0.6, 0.0, 1.0, -1.0]) {
            assert!((a - ((v - mean) * 0.75 + mean)).abs() < 1e-6, "{c:?}");
        }
    }

    #[test]
    fn translation_shifts_in_whole_pixels_with_zeros() {
        let x = ramp(2, 1, 3, 4) + 1.0;
        // Image 0: one row down in the source (out(i, j) = in(i + 1, j)); image 1: two columns left.
        let out = translate(&x, &Tensor::from_slice(&[1i64, 0]), &Tensor::from_slice(&[0i64, -2]));
        let v = values(&out);
        let x = values(&x);
        // Image 0: rows 0 and 1 are input rows 1 and 2, row 2 is zero.
        assert_eq!(&v[0..8], &x[4..12]);
        assert_eq!(&v[8..12], &[0.0; 4]);
        // Image 1: columns 2 and 3 are input columns 0 and 1, columns 0 and 1 are zero.
        for i in 0..3 {
            let (o, s) = (12 + 4 * i, 12 + 4 * i);
            assert_eq!(&v[o..o + 4], &[0.0, 0.0, x[s], x[s + 1]], "row {i}");
        }
        assert_eq!(translation_range(&Tensor::zeros([1, 1, 28, 32], (Kind::Float, Device::Cpu))), (4, 4));
    }

    #[test]
    fn cutout_zeroes_a_half_size_square_clipped_at_the_edges() {
        let x = Tensor::ones([2, 2, 4, 6], (Kind::Float, Device::Cpu));
        // A 2x3 square: centred at (2, 3) it covers rows 1-2, columns 2-4; at (0, 0), row 0, column 0.
        let out = cutout(&x, &Tensor::from_slice(&[2i64, 0]), &Tensor::from_slice(&[3i64, 0]));
        let zeros = out.eq(0.0);
        let img0 = zeros.get(0).get(0);
        let expect0 = Tensor::zeros([4, 6], (Kind::Bool, Device::Cpu));
        let _ = expect0.narrow(0, 1, 2).narrow(1, 2, 3).fill_(1);
        assert!(img0.equal(&expect0), "{img0:?}");
        // Every channel is cut alike, and the clipped square keeps only its part inside the image.
        assert!(zeros.get(0).get(1).equal(&expect0));
        assert_eq!(zeros.get(1).get(0).sum(Kind::Int64).int64_value(&[]), 2);
        assert_eq!(cutout_size(28, 28), (14, 14));
    }

    #[test]
    fn policies_parse_print_and_keep_gradients() {
        let p: DiffAugment = "color,translation,cutout".parse().unwrap();
        assert_eq!(p.ops, [DiffAugOp::Color, DiffAugOp::Translation, DiffAugOp::Cutout]);
        assert_eq!(p.to_string(), "color,translation,cutout");
        assert!("none".parse::<DiffAugment>().unwrap().is_none());
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"color,translation,cutout\"");
        let e = "color,flip".parse::<DiffAugment>().unwrap_err().to_string();
        assert!(e.contains("`flip`") && e.contains("translation"), "{e}");
        assert!("cutout,cutout".parse::<DiffAugment>().unwrap_err().to_string().contains("twice"));

        tch::manual_seed(0);
        let x = ramp(4, 3, 8, 8).set_requires_grad(true);
        let y = p.apply(&x);
        assert_eq!(y.size(), [4, 3, 8, 8]);
        assert!(!y.equal(&x.detach()), "the policy changed nothing");
        y.sum(Kind::Float).backward();
        assert!(x.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0, "no gradient reaches the input");
        assert!(DiffAugment::default().apply(&x).equal(&x));
    }
}
