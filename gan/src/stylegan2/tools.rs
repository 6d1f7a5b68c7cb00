//! Inference tools for a trained StyleGAN2: latents from integer seeds, the truncation trick,
//! style-mixing grids and interpolation in W.
//!
//! Follows stylegan2-ada-pytorch `style_mixing.py` (grid layout, `w_avg + (w - w_avg) * psi`)
//! and StyleGAN (arXiv 1812.04948, section 3.1 and figure 3: coarse styles 4x4-8x8, middle
//! 16x16-32x32, fine 64x64 and above).
//!
//! Latents come from each seed's own generator (SplitMix64 and Box-Muller), not from
//! libtorch's global one, so seed 7 gives the same image on every device and run.
use crate::error::{GanError, Result};
use crate::stylegan2::generator::{Generator, NoiseMode};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use tch::{Device, Kind, Tensor};

pub use crate::stylegan2::generator::truncate;

/// The standard-normal latent of `seed` (SplitMix64 stream, Box-Muller pairs).
///
/// # Shapes
/// - returns [z_dim]
pub fn z_from_seed(seed: u64, z_dim: i64) -> Tensor {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // A uniform in (0, 1]: never 0, so the logarithm is finite.
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    };
    let mut v = Vec::with_capacity(z_dim.max(0) as usize);
    while (v.len() as i64) < z_dim {
        let (u1, u2) = (next(), next());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        v.push((r * t.cos()) as f32);
        v.push((r * t.sin()) as f32);
    }
    v.truncate(z_dim.max(0) as usize);
    Tensor::from_slice(&v)
}

/// The latents of `seeds`, stacked.
///
/// # Shapes
/// - returns [seeds.len(), z_dim]
pub fn z_from_seeds(seeds: &[u64], z_dim: i64, device: Device) -> Tensor {
    let zs: Vec<Tensor> = seeds.iter().map(|&s| z_from_seed(s, z_dim)).collect();
    Tensor::stack(&zs, 0).to_device(device)
}

/// The W+ latents of `seeds`, truncated by `psi`, without updating `w_avg`.
///
/// # Shapes
/// - returns [seeds.len(), num_ws, w_dim]
pub fn ws_from_seeds(g: &Generator, seeds: &[u64], psi: f64) -> Result<Tensor> {
    if seeds.is_empty() {
        return Err(GanError::Config("no seeds given".into()));
    }
    let z = z_from_seeds(seeds, g.cfg.z_dim, g.mapping.w_avg.device());
    let ws = tch::no_grad(|| g.mapping.forward(&z, false))?;
    truncate(&ws, &g.mapping.w_avg, psi)
}

/// Which layers' styles a style mix copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StyleLevel {
    /// Pose, shape: 4x4 and 8x8.
    Coarse,
    /// Features, layout: 16x16 and 32x32.
    Middle,
    /// Colour, texture: 64x64 and above.
    Fine,
}

impl std::str::FromStr for StyleLevel {
    type Err = GanError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "coarse" => Ok(StyleLevel::Coarse),
            "middle" => Ok(StyleLevel::Middle),
            "fine" => Ok(StyleLevel::Fine),
            _ => Err(GanError::Config(format!("unknown style level `{s}`: expected coarse, middle or fine"))),
        }
    }
}

/// The w indices `spec` names for a generator with `num_ws` w inputs: `coarse`, `middle`, `fine`
/// ([`style_range`]) or a range `A..B`.
pub fn parse_style_range(spec: &str, num_ws: i64) -> Result<Range<usize>> {
    let bad = |m: String| GanError::Config(format!("--styles {spec}: {m}"));
    if let Some((a, b)) = spec.split_once("..") {
        let parse = |x: &str| x.trim().parse::<usize>().map_err(|_| bad(format!("`{x}` is not a number")));
        let (a, b) = (parse(a)?, parse(b)?);
        if a >= b || b > num_ws as usize {
            return Err(bad(format!("need A < B <= {num_ws} (the generator has {num_ws} w inputs)")));
        }
        return Ok(a..b);
    }
    let range = style_range(num_ws, spec.parse()?);
    if range.is_empty() {
        return Err(bad(format!("a generator with {num_ws} w inputs has no {spec} styles; give a range A..B")));
    }
    Ok(range)
}

/// The ws indices of a style level, for a generator with `num_ws` latents (resolution
/// `2^(num_ws / 2 + 1)`). Index 0 drives 4x4; indices `2k - 1` and `2k` drive the block at
/// `4 * 2^k` (the first of them also the previous block's toRGB); the last index is the final
/// toRGB. At 64x64 and above the levels are the paper's (coarse 4-8, middle 16-32, fine 64+);
/// smaller networks split their resolutions into three consecutive parts, as equal as possible
/// with the extra ones going to the coarse, then the middle level (32x32: coarse 4-8, middle
/// 16, fine 32; 8x8: coarse 4, middle empty, fine 8).
pub fn style_range(num_ws: i64, level: StyleLevel) -> Range<usize> {
    let levels = (num_ws / 2).max(1); // resolutions 4 .. 2^(levels + 1)
    let (coarse, middle) = if levels >= 5 {
        (2, 2)
    } else {
        let base = levels / 3;
        let extra = levels % 3;
        (base + i64::from(extra >= 1), if levels == 2 { 0 } else { base + i64::from(extra >= 2) })
    };
    // First ws index of resolution level k (k = 0 is 4x4).
    let start = |k: i64| if k == 0 { 0 } else { (2 * k - 1).min(num_ws) } as usize;
    let (a, b) = match level {
        StyleLevel::Coarse => (0, coarse),
        StyleLevel::Middle => (coarse, coarse + middle),
        StyleLevel::Fine => (coarse + middle, levels),
    };
    let end = if b >= levels { num_ws as usize } else { start(b) };
    start(a).min(end)..end
}

/// A style-mixing grid: `(rows + 1) x (cols + 1)` tiles in row-major order. Tile (0, 0) is
/// blank (-1), the rest of row 0 shows the column seeds' images, the rest of column 0 the row
/// seeds' images, and tile (i, j) the row seed's latents with `col_styles` taken from the
/// column seed.
#[derive(Debug)]
pub struct MixingGrid {
    /// [(rows + 1) * (cols + 1), c, h, w], in [-1, 1], cropped to the data's shape.
    pub images: Tensor,
    /// Tiles per row (`cols + 1`), for [`genlab_core::images::make_grid`].
    pub ncol: i64,
}

/// The style-mixing figure (StyleGAN figure 3): rows keep their own styles except at
/// `col_styles`, which come from the column seeds (copy the fine range to transfer colour
/// and texture, the coarse one to transfer pose and shape).
pub fn style_mixing_grid(
    g: &Generator,
    row_seeds: &[u64],
    col_seeds: &[u64],
    col_styles: Range<usize>,
    psi: f64,
    noise_mode: NoiseMode,
) -> Result<MixingGrid> {
    let num_ws = g.num_ws() as usize;
    if row_seeds.is_empty() || col_seeds.is_empty() {
        return Err(GanError::Config("a style-mixing grid needs at least one row seed and one column seed".into()));
    }
    if col_styles.start >= col_styles.end || col_styles.end > num_ws {
        return Err(GanError::Config(format!(
            "style range {col_styles:?} is empty or outside this generator's {num_ws} styles (0..{num_ws})"
        )));
    }
    let rows = ws_from_seeds(g, row_seeds, psi)?;
    let cols = ws_from_seeds(g, col_seeds, psi)?;
    let (r, c) = (row_seeds.len() as i64, col_seeds.len() as i64);
    let (s0, len) = (col_styles.start as i64, (col_styles.end - col_styles.start) as i64);
    let mut ws = Vec::new();
    for i in 0..r {
        for j in 0..c {
            let w = rows.get(i).copy();
            w.narrow(0, s0, len).copy_(&cols.get(j).narrow(0, s0, len));
            ws.push(w);
        }
    }
    let mixed = Tensor::stack(&ws, 0);
    let all = Tensor::cat(&[&rows, &cols, &mixed], 0);
    let img = tch::no_grad(|| g.synthesis.forward(&all, noise_mode, true))?;
    let img = g.cfg.crop_to_data(&img);
    let (row_img, col_img, mix_img) = (img.narrow(0, 0, r), img.narrow(0, r, c), img.narrow(0, r + c, r * c));
    let blank = Tensor::full_like(&img.narrow(0, 0, 1), -1.0);
    let mut tiles = vec![blank, col_img];
    for i in 0..r {
        tiles.push(row_img.narrow(0, i, 1));
        tiles.push(mix_img.narrow(0, i * c, c));
    }
    Ok(MixingGrid { images: Tensor::cat(&tiles, 0), ncol: c + 1 })
}

/// Images along straight lines in W between consecutive seeds' (truncated) latents:
/// `steps` images per segment including both ends, the shared ends drawn once.
///
/// # Shapes
/// - returns [(seeds.len() - 1) * (steps - 1) + 1, c, h, w], cropped to the data's shape
pub fn interpolate_w(g: &Generator, seeds: &[u64], steps: i64, psi: f64, noise_mode: NoiseMode) -> Result<Tensor> {
    if seeds.len() < 2 || steps < 2 {
        return Err(GanError::Config(format!(
            "interpolation needs at least 2 seeds and 2 steps, got {} seeds and {steps} steps",
            seeds.len()
        )));
    }
    let ws = ws_from_seeds(g, seeds, psi)?;
    let t = Tensor::linspace(0.0, 1.0, steps, (Kind::Float, ws.device())).reshape([-1, 1, 1]);
    let mut path = Vec::new();
    for k in 0..seeds.len() as i64 - 1 {
        let (a, b) = (ws.get(k).unsqueeze(0), ws.get(k + 1).unsqueeze(0));
        let seg = &a + (&b - &a) * &t;
        path.push(if k == 0 { seg } else { seg.narrow(0, 1, steps - 1) });
    }
    let path = Tensor::cat(&path, 0);
    let img = tch::no_grad(|| g.synthesis.forward(&path, noise_mode, true))?;
    Ok(g.cfg.crop_to_data(&img))
}

/// `n` images from libtorch's current generator, truncated by `psi`, cropped to the data's shape.
///
/// # Shapes
/// - returns [n, c, h, w]
pub fn sample(g: &Generator, n: i64, psi: f64, noise_mode: NoiseMode) -> Result<Tensor> {
    let z = Tensor::randn([n, g.cfg.z_dim], (Kind::Float, g.mapping.w_avg.device()));
    let img = tch::no_grad(|| g.forward(&z, psi, noise_mode, false))?;
    Ok(g.cfg.crop_to_data(&img))
}

/// Images of the given seeds (`genlab gan sample --seeds`), truncated by `psi`.
///
/// # Shapes
/// - returns [seeds.len(), c, h, w]
pub fn sample_seeds(g: &Generator, seeds: &[u64], psi: f64, noise_mode: NoiseMode) -> Result<Tensor> {
    let ws = ws_from_seeds(g, seeds, psi)?;
    let img = tch::no_grad(|| g.synthesis.forward(&ws, noise_mode, true))?;
    Ok(g.cfg.crop_to_data(&img))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn style_ranges_parse_by_level_or_as_index_ranges() {
        // 14 w inputs (256 px): coarse 4x4-8x8, middle 16x16-32x32, fine the rest.
        assert_eq!(parse_style_range("coarse", 14).unwrap(), style_range(14, StyleLevel::Coarse));
        assert_eq!(parse_style_range("fine", 14).unwrap(), style_range(14, StyleLevel::Fine));
        assert_eq!(parse_style_range("2..6", 14).unwrap(), 2..6);
        for (spec, says) in [("6..2", "A < B"), ("0..15", "14 w inputs"), ("a..3", "not a number"), ("wide", "wide")] {
            let e = parse_style_range(spec, 14).unwrap_err().to_string();
            assert!(e.contains(says), "{spec}: {e}");
        }
    }
}
