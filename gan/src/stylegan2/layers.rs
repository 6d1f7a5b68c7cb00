//! StyleGAN2's building blocks: equalised-learning-rate dense and convolution layers, the
//! FIR resampling filter, and the modulated convolution with weight demodulation
//! (Karras et al., "Analyzing and Improving the Image Quality of StyleGAN", arXiv 1912.04958,
//! section 2.2).
//!
//! Follows NVlabs' stylegan2-ada-pytorch `training/networks.py` (`modulated_conv2d`,
//! `FullyConnectedLayer`, `Conv2dLayer`) and `torch_utils/ops/{upfirdn2d,conv2d_resample}.py`
//! (their pure-PyTorch reference paths; the CUDA kernels compute the same thing).
//!
//! Equalised learning rate (Karras et al. 2018, arXiv 1710.10196): weights are stored as
//! N(0, 1) (times `1 / lr_multiplier` for dense layers) and scaled by `weight_gain` at every
//! forward pass, so Adam's per-parameter step sizes are the same for every layer.
use crate::error::{GanError, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Init, Kind, Tensor};

/// Slope of the leaky ReLU on negative inputs.
pub const LRELU_ALPHA: f64 = 0.2;

/// The activations of `bias_act`, with their default output gains (`def_gain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    Linear,
    /// Leaky ReLU (slope 0.2) times sqrt(2), which keeps the activations' second moment.
    Lrelu,
}

impl Activation {
    pub fn def_gain(self) -> f64 {
        match self {
            Activation::Linear => 1.0,
            Activation::Lrelu => std::f64::consts::SQRT_2,
        }
    }
}

/// `bias_act`: add the bias (broadcast over dimension 1), apply `act`, multiply by `gain`.
///
/// # Shapes
/// - `x`: [n, c] or [n, c, h, w]; `b`: [c] -> same as `x`
pub fn bias_act(x: &Tensor, b: Option<&Tensor>, act: Activation, gain: f64) -> Tensor {
    let mut x = match b {
        Some(b) => {
            let mut shape = vec![1i64; x.dim()];
            shape[1] = -1;
            x + b.reshape(shape.as_slice())
        }
        None => x.shallow_clone(),
    };
    if act == Activation::Lrelu {
        x = x.where_self(&x.ge(0.0), &(&x * LRELU_ALPHA));
    }
    if gain != 1.0 {
        x *= gain;
    }
    x
}

/// `normalize_2nd_moment`: scale each row to unit mean square.
///
/// # Shapes
/// - `x`: [n, d] -> [n, d]
pub fn normalize_2nd_moment(x: &Tensor) -> Tensor {
    x * (x.square().mean_dim(1, true, Kind::Float) + 1e-8).rsqrt()
}

/// `upfirdn2d.setup_filter`: the separable filter `f` as its 2-D outer product, normalised to sum 1.
///
/// # Shapes
/// - returns [len(f), len(f)]
pub fn setup_filter(f: &[f64], device: tch::Device) -> Result<Tensor> {
    let sum: f64 = f.iter().sum();
    if f.is_empty() || sum <= 0.0 || f.iter().any(|v| !v.is_finite()) {
        return Err(GanError::Config(format!(
            "resample_filter {f:?} must be a non-empty list of finite taps with a positive sum"
        )));
    }
    let taps: Vec<f32> = f.iter().map(|&v| v as f32).collect();
    let t = Tensor::from_slice(&taps).to_device(device);
    Ok(t.outer(&t) / (sum * sum))
}

/// `upfirdn2d` (the reference path): upsample by inserting `up - 1` zeros after every pixel,
/// pad by `padding = [x0, x1, y0, y1]` (negative values crop), convolve every channel with
/// `f * gain`, keep every `down`-th pixel.
///
/// # Shapes
/// - `x`: [n, c, h, w]; `f`: [fh, fw] ->
///   [n, c, (h * up + y0 + y1 - fh) / down + 1, (w * up + x0 + x1 - fw) / down + 1]
pub fn upfirdn2d(x: &Tensor, f: &Tensor, up: i64, down: i64, padding: [i64; 4], gain: f64) -> Tensor {
    let (n, c, h, w) = x.size4().unwrap_or((0, 0, 0, 0));
    let [px0, px1, py0, py1] = padding;
    let mut x = x.shallow_clone();
    if up > 1 {
        x = x.reshape([n, c, h, 1, w, 1]).constant_pad_nd([0, up - 1, 0, 0, 0, up - 1]).reshape([n, c, h * up, w * up]);
    }
    x = x.constant_pad_nd([px0.max(0), px1.max(0), py0.max(0), py1.max(0)]);
    let (hh, ww) = (x.size()[2], x.size()[3]);
    x = x.slice(2, (-py0).max(0), hh - (-py1).max(0), 1).slice(3, (-px0).max(0), ww - (-px1).max(0), 1);
    // Convolution, not correlation: flip the filter (a no-op for symmetric filters).
    let (fh, fw) = (f.size()[0], f.size()[1]);
    let k = (f * gain).to_kind(x.kind()).flip([0, 1]).reshape([1, 1, fh, fw]).repeat([c, 1, 1, 1]);
    x = x.conv2d::<Tensor>(&k, None, [1, 1], [0, 0], [1, 1], c);
    if down > 1 {
        x = x.slice(2, 0, None, down).slice(3, 0, None, down);
    }
    x
}

/// `upfirdn2d.upsample2d`: 2x upsampling with the low-pass filter `f`.
///
/// # Shapes
/// - `x`: [n, c, h, w] -> [n, c, 2h, 2w]
pub fn upsample2d(x: &Tensor, f: &Tensor) -> Tensor {
    let fw = f.size()[1];
    let p0 = (fw + 1).div_euclid(2);
    let p1 = (fw - 2).div_euclid(2);
    upfirdn2d(x, f, 2, 1, [p0, p1, p0, p1], 4.0)
}

/// `upfirdn2d.downsample2d`: 2x downsampling with the low-pass filter `f`.
///
/// # Shapes
/// - `x`: [n, c, h, w] -> [n, c, h / 2, w / 2]
pub fn downsample2d(x: &Tensor, f: &Tensor) -> Tensor {
    let fw = f.size()[1];
    let p0 = (fw - 1).div_euclid(2);
    let p1 = (fw - 2).div_euclid(2);
    upfirdn2d(x, f, 1, 2, [p0, p1, p0, p1], 1.0)
}

fn conv2d_wrapper(
    x: &Tensor,
    w: &Tensor,
    stride: i64,
    padding: [i64; 2],
    groups: i64,
    transpose: bool,
    flip: bool,
) -> Tensor {
    let (kh, kw) = (w.size()[2], w.size()[3]);
    let w = if !flip && (kh > 1 || kw > 1) { w.flip([2, 3]) } else { w.shallow_clone() };
    if transpose {
        x.conv_transpose2d::<Tensor>(&w, None, [stride, stride], padding, [0, 0], groups, [1, 1])
    } else {
        x.conv2d::<Tensor>(&w, None, [stride, stride], padding, [1, 1], groups)
    }
}

/// `conv2d_resample`: convolution with optional 2x up- or downsampling through the FIR
/// filter `f`; `padding` is with respect to the upsampled image. `flip_weight`: true is
/// correlation (as `conv2d`), false is convolution.
///
/// # Shapes
/// - `x`: [n, groups * i, h, w]; `w`: [o, i, kh, kw] ->
///   [n, o, h * up / down, w * up / down] (with `padding = kh / 2`)
pub fn conv2d_resample(
    x: &Tensor,
    w: &Tensor,
    f: Option<&Tensor>,
    up: i64,
    down: i64,
    padding: i64,
    groups: i64,
    flip_weight: bool,
) -> Tensor {
    let ws = w.size();
    let (out_channels, in_per_group, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
    let ones;
    let f = match f {
        Some(f) => f,
        None => {
            ones = Tensor::ones([1, 1], (Kind::Float, x.device()));
            &ones
        }
    };
    let fw = f.size()[1];
    let (mut p0, mut p1) = (padding, padding);
    if up > 1 {
        p0 += (fw + up - 1).div_euclid(2);
        p1 += (fw - up).div_euclid(2);
    }
    if down > 1 {
        p0 += (fw - down + 1).div_euclid(2);
        p1 += (fw - down).div_euclid(2);
    }
    if kw == 1 && kh == 1 && down > 1 && up == 1 {
        let x = upfirdn2d(x, f, 1, down, [p0, p1, p0, p1], 1.0);
        return conv2d_wrapper(&x, w, 1, [0, 0], groups, false, flip_weight);
    }
    if kw == 1 && kh == 1 && up > 1 && down == 1 {
        let x = conv2d_wrapper(x, w, 1, [0, 0], groups, false, flip_weight);
        return upfirdn2d(&x, f, up, 1, [p0, p1, p0, p1], (up * up) as f64);
    }
    if down > 1 && up == 1 {
        let x = upfirdn2d(x, f, 1, 1, [p0, p1, p0, p1], 1.0);
        return conv2d_wrapper(&x, w, down, [0, 0], groups, false, flip_weight);
    }
    if up > 1 {
        let w = if groups == 1 {
            w.transpose(0, 1)
        } else {
            w.reshape([groups, out_channels / groups, in_per_group, kh, kw]).transpose(1, 2).reshape([
                groups * in_per_group,
                out_channels / groups,
                kh,
                kw,
            ])
        };
        p0 -= kw - 1;
        p1 -= kw - up;
        let pt = (-p0).min(-p1).max(0);
        let x = conv2d_wrapper(x, &w, up, [pt, pt], groups, true, !flip_weight);
        let x = upfirdn2d(&x, f, 1, 1, [p0 + pt, p1 + pt, p0 + pt, p1 + pt], (up * up) as f64);
        return if down > 1 { upfirdn2d(&x, f, 1, down, [0; 4], 1.0) } else { x };
    }
    // No resampling: a plain convolution (the padding is symmetric here).
    conv2d_wrapper(x, w, 1, [p0, p0], groups, false, flip_weight)
}

/// Resampling of a modulated convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    None,
    /// 2x upsampling (transposed convolution then the FIR filter).
    Up,
    /// 2x downsampling (the FIR filter then a strided convolution).
    Down,
}

/// `modulated_conv2d`: convolve every sample with its own weights `weight * styles`
/// (scaled per input channel), demodulated to unit expected output variance
/// (`rsqrt(sum w'^2 + 1e-8)` per output channel) when `demodulate`, then add `noise`.
///
/// `fused_modconv` computes it as one grouped convolution over per-sample weights (the
/// paper's form); otherwise the activations are scaled before and after one shared
/// convolution (the same numbers, cheaper when the batch is large). `flip_weight` as in
/// [`conv2d_resample`].
///
/// # Shapes
/// - `x`: [n, i, h, w]; `weight`: [o, i, kh, kw]; `styles`: [n, i];
///   `noise`: broadcastable to the output -> [n, o, h', w'] (h' = h, 2h or h/2 with `padding = kh / 2`)
pub fn modulated_conv2d(
    x: &Tensor,
    weight: &Tensor,
    styles: &Tensor,
    noise: Option<&Tensor>,
    resample: Resample,
    padding: i64,
    resample_filter: Option<&Tensor>,
    demodulate: bool,
    flip_weight: bool,
    fused_modconv: bool,
) -> Result<Tensor> {
    let (xs, wsz, ss) = (x.size(), weight.size(), styles.size());
    let ok = xs.len() == 4 && wsz.len() == 4 && ss.len() == 2 && xs[0] == ss[0] && xs[1] == wsz[1] && ss[1] == wsz[1];
    if !ok {
        return Err(GanError::Config(format!(
            "modulated_conv2d: need x [n, i, h, w], weight [o, i, kh, kw] and styles [n, i]; got x {xs:?}, \
             weight {wsz:?}, styles {ss:?}"
        )));
    }
    let (batch, in_channels, kh, kw) = (xs[0], wsz[1], wsz[2], wsz[3]);
    let (up, down) = match resample {
        Resample::None => (1, 1),
        Resample::Up => (2, 1),
        Resample::Down => (1, 2),
    };
    let mut w = None;
    let mut dcoefs = None;
    if demodulate || fused_modconv {
        w = Some(weight.unsqueeze(0) * styles.reshape([batch, 1, -1, 1, 1]));
    }
    if let (true, Some(wm)) = (demodulate, &w) {
        dcoefs = Some((wm.square().sum_dim_intlist([2i64, 3, 4].as_slice(), false, Kind::Float) + 1e-8).rsqrt());
    }
    if !fused_modconv {
        let x = x * styles.to_kind(x.kind()).reshape([batch, -1, 1, 1]);
        let mut x = conv2d_resample(&x, &weight.to_kind(x.kind()), resample_filter, up, down, padding, 1, flip_weight);
        if let Some(d) = &dcoefs {
            let k = x.kind();
            x *= d.to_kind(k).reshape([batch, -1, 1, 1]);
        }
        if let Some(nz) = noise {
            let k = x.kind();
            x += nz.to_kind(k);
        }
        return Ok(x);
    }
    let mut w = w.unwrap_or_else(|| weight.unsqueeze(0) * styles.reshape([batch, 1, -1, 1, 1]));
    if let Some(d) = &dcoefs {
        w *= d.reshape([batch, -1, 1, 1, 1]);
    }
    let x = x.reshape([1, -1, xs[2], xs[3]]);
    let w = w.reshape([-1, in_channels, kh, kw]).to_kind(x.kind());
    let x = conv2d_resample(&x, &w, resample_filter, up, down, padding, batch, flip_weight);
    let x = x.reshape([batch, -1, x.size()[2], x.size()[3]]);
    Ok(match noise {
        Some(nz) => {
            let k = x.kind();
            x + nz.to_kind(k)
        }
        None => x,
    })
}

/// `FullyConnectedLayer`: a dense layer with equalised learning rate and a learning-rate
/// multiplier (`weight ~ N(0, 1 / lr_multiplier^2)`, `weight_gain = lr_multiplier / sqrt(in)`,
/// `bias_gain = lr_multiplier`), as used by the mapping network (multiplier 0.01).
#[derive(Debug)]
pub struct FullyConnectedLayer {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    weight_gain: f64,
    bias_gain: f64,
    activation: Activation,
}

/// Options of a [`FullyConnectedLayer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FcConfig {
    pub bias: bool,
    pub activation: Activation,
    pub lr_multiplier: f64,
    /// Initial value of every bias (1 for the affine maps that produce styles).
    pub bias_init: f64,
}

impl Default for FcConfig {
    fn default() -> Self {
        FcConfig { bias: true, activation: Activation::Linear, lr_multiplier: 1.0, bias_init: 0.0 }
    }
}

impl FullyConnectedLayer {
    pub fn new(vs: nn::Path<'_>, in_features: i64, out_features: i64, cfg: FcConfig) -> Self {
        let weight =
            vs.var("weight", &[out_features, in_features], Init::Randn { mean: 0.0, stdev: 1.0 / cfg.lr_multiplier });
        let bias = cfg.bias.then(|| vs.var("bias", &[out_features], Init::Const(cfg.bias_init)));
        FullyConnectedLayer {
            weight,
            bias,
            weight_gain: cfg.lr_multiplier / (in_features as f64).sqrt(),
            bias_gain: cfg.lr_multiplier,
            activation: cfg.activation,
        }
    }

    /// # Shapes
    /// - `x`: [n, in_features] -> [n, out_features]
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let w = (&self.weight * self.weight_gain).to_kind(x.kind());
        let x = x.matmul(&w.tr());
        let b = self.bias.as_ref().map(|b| (b * self.bias_gain).to_kind(x.kind()));
        bias_act(&x, b.as_ref(), self.activation, self.activation.def_gain())
    }
}

/// `Conv2dLayer`: a convolution with equalised learning rate (`weight_gain = 1 / sqrt(i k^2)`),
/// optional 2x resampling through the FIR filter, bias and activation.
#[derive(Debug)]
pub struct Conv2dLayer {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    resample: Resample,
    padding: i64,
    weight_gain: f64,
    activation: Activation,
    resample_filter: Tensor,
}

impl Conv2dLayer {
    pub fn new(
        vs: nn::Path<'_>,
        in_channels: i64,
        out_channels: i64,
        kernel_size: i64,
        bias: bool,
        activation: Activation,
        resample: Resample,
        resample_filter: &Tensor,
    ) -> Self {
        let weight = vs.var(
            "weight",
            &[out_channels, in_channels, kernel_size, kernel_size],
            Init::Randn { mean: 0.0, stdev: 1.0 },
        );
        let bias = bias.then(|| vs.zeros("bias", &[out_channels]));
        Conv2dLayer {
            weight,
            bias,
            resample,
            padding: kernel_size / 2,
            weight_gain: 1.0 / ((in_channels * kernel_size * kernel_size) as f64).sqrt(),
            activation,
            resample_filter: resample_filter.shallow_clone(),
        }
    }

    /// `gain` multiplies the activation's default gain (sqrt(0.5) on the residual branches).
    ///
    /// # Shapes
    /// - `x`: [n, in_channels, h, w] -> [n, out_channels, h', w'] (h' = h, 2h or h/2)
    pub fn forward(&self, x: &Tensor, gain: f64) -> Tensor {
        let w = (&self.weight * self.weight_gain).to_kind(x.kind());
        let (up, down) = match self.resample {
            Resample::None => (1, 1),
            Resample::Up => (2, 1),
            Resample::Down => (1, 2),
        };
        let x = conv2d_resample(x, &w, Some(&self.resample_filter), up, down, self.padding, 1, up == 1);
        let b = self.bias.as_ref().map(|b| b.to_kind(x.kind()));
        bias_act(&x, b.as_ref(), self.activation, self.activation.def_gain() * gain)
    }
}
