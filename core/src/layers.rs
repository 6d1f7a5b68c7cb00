//! Layers shared by the families, with diffusers' structure and parameter names so that
//! PyTorch state dicts load without renaming (diffusers `models/resnet.py`,
//! `models/attention_processor.py`, `models/embeddings.py`).
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::lora;

/// LeakyReLU with slope `slope` for negative inputs, as `x * (x > 0 ? 1 : slope)`: tch's
/// `leaky_relu` fixes the slope at 0.01, and `max(x, slope x)` costs several times more in
/// its backward pass (a masked fill and comparisons per element); here the backward is one
/// multiplication by the same factor.
///
/// # Shapes
/// - `x`: any -> the same
pub fn leaky_relu(x: &Tensor, slope: f64) -> Tensor {
    let factor = (x.gt(0.0).to_kind(x.kind()) * (1.0 - slope) + slope).detach();
    x * factor
}

/// A 2-D convolution with `padding = kernel / 2` ("same" for odd kernels at stride 1).
pub fn conv2d(vs: nn::Path<'_>, c_in: i64, c_out: i64, kernel: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig { stride, padding: kernel / 2, ..Default::default() };
    nn::conv2d(vs, c_in, c_out, kernel, cfg)
}

/// [`conv2d`] that can carry low-rank adapters ([`lora::conv2d`]).
fn adaptable_conv2d(vs: nn::Path<'_>, c_in: i64, c_out: i64, kernel: i64, stride: i64) -> lora::Conv2D {
    lora::conv2d(vs, c_in, c_out, kernel, nn::ConvConfig { stride, padding: kernel / 2, ..Default::default() })
}

/// Conv + optional GroupNorm + SiLU.
#[derive(Debug)]
pub struct ConvBlock {
    conv: nn::Conv2D,
    norm: Option<nn::GroupNorm>,
}

impl ConvBlock {
    pub fn new(vs: nn::Path<'_>, c_in: i64, c_out: i64, kernel: i64, stride: i64, groups: Option<i64>) -> Self {
        let conv = conv2d(&vs / "conv", c_in, c_out, kernel, stride);
        let norm = groups.map(|g| nn::group_norm(&vs / "norm", g, c_out, Default::default()));
        ConvBlock { conv, norm }
    }
}

impl Module for ConvBlock {
    /// # Shapes
    /// - `xs`: [batch, c_in, h, w] -> [batch, c_out, h / stride, w / stride]
    fn forward(&self, xs: &Tensor) -> Tensor {
        let h = self.conv.forward(xs);
        match &self.norm {
            Some(n) => n.forward(&h).silu(),
            None => h.silu(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ResnetBlock2DConfig {
    pub out_channels: Option<i64>,
    /// Channels of the timestep embedding, if the block is conditioned on one.
    pub temb_channels: Option<i64>,
    pub groups: i64,
    pub groups_out: Option<i64>,
    pub eps: f64,
    pub dropout: f64,
    /// diffusers' `output_scale_factor`.
    pub output_scale_factor: f64,
    /// Use a 1x1 conv on the skip path even when channels match.
    pub use_in_shortcut: Option<bool>,
}

impl Default for ResnetBlock2DConfig {
    fn default() -> Self {
        ResnetBlock2DConfig {
            out_channels: None,
            temb_channels: Some(512),
            groups: 32,
            groups_out: None,
            eps: 1e-6,
            dropout: 0.0,
            output_scale_factor: 1.0,
            use_in_shortcut: None,
        }
    }
}

/// GroupNorm + SiLU + conv, twice, with a timestep embedding added in between
/// (diffusers `ResnetBlock2D`, "default" time embedding norm).
#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: nn::GroupNorm,
    conv1: lora::Conv2D,
    time_emb_proj: Option<lora::Linear>,
    norm2: nn::GroupNorm,
    conv2: lora::Conv2D,
    conv_shortcut: Option<lora::Conv2D>,
    dropout: f64,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn new(vs: nn::Path<'_>, in_channels: i64, cfg: ResnetBlock2DConfig) -> Self {
        let out = cfg.out_channels.unwrap_or(in_channels);
        let gn = nn::GroupNormConfig { eps: cfg.eps, ..Default::default() };
        let norm1 = nn::group_norm(&vs / "norm1", cfg.groups, in_channels, gn);
        let conv1 = adaptable_conv2d(&vs / "conv1", in_channels, out, 3, 1);
        let time_emb_proj = cfg.temb_channels.map(|t| lora::linear(&vs / "time_emb_proj", t, out, Default::default()));
        let g2 = cfg.groups_out.unwrap_or(cfg.groups);
        let norm2 = nn::group_norm(&vs / "norm2", g2, out, gn);
        let conv2 = adaptable_conv2d(&vs / "conv2", out, out, 3, 1);
        let use_shortcut = cfg.use_in_shortcut.unwrap_or(in_channels != out);
        let conv_shortcut = use_shortcut.then(|| adaptable_conv2d(&vs / "conv_shortcut", in_channels, out, 1, 1));
        ResnetBlock2D {
            norm1,
            conv1,
            time_emb_proj,
            norm2,
            conv2,
            conv_shortcut,
            dropout: cfg.dropout,
            output_scale_factor: cfg.output_scale_factor,
        }
    }

    /// # Shapes
    /// - `xs`: [batch, in_channels, h, w]
    /// - `temb`: [batch, temb_channels] (ignored when the block has no time projection)
    /// - returns [batch, out_channels, h, w]
    pub fn forward_t(&self, xs: &Tensor, temb: Option<&Tensor>, train: bool) -> Tensor {
        let mut h = self.conv1.forward(&self.norm1.forward(xs).silu());
        if let (Some(p), Some(t)) = (&self.time_emb_proj, temb) {
            h += p.forward(&t.silu()).unsqueeze(-1).unsqueeze(-1);
        }
        let h = self.norm2.forward(&h).silu().dropout(self.dropout, train);
        let h = self.conv2.forward(&h);
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(xs),
            None => xs.shallow_clone(),
        };
        let out = skip + h;
        if self.output_scale_factor != 1.0 {
            out / self.output_scale_factor
        } else {
            out
        }
    }
}

/// Spatial self-attention over an image (diffusers `Attention` as used by
/// `UNetMidBlock2D`: `group_norm`, `to_q`, `to_k`, `to_v`, `to_out.0`, residual).
#[derive(Debug)]
pub struct SpatialSelfAttention {
    group_norm: nn::GroupNorm,
    to_q: lora::Linear,
    to_k: lora::Linear,
    to_v: lora::Linear,
    to_out: lora::Linear,
    heads: i64,
    rescale_output_factor: f64,
}

impl SpatialSelfAttention {
    /// `head_dim` channels per head (`channels` must be divisible by it).
    pub fn new(vs: nn::Path<'_>, channels: i64, head_dim: i64, groups: i64, eps: f64) -> Self {
        let heads = (channels / head_dim.max(1)).max(1);
        let gcfg = nn::GroupNormConfig { eps, ..Default::default() };
        SpatialSelfAttention {
            group_norm: nn::group_norm(&vs / "group_norm", groups, channels, gcfg),
            to_q: lora::linear(&vs / "to_q", channels, channels, Default::default()),
            to_k: lora::linear(&vs / "to_k", channels, channels, Default::default()),
            to_v: lora::linear(&vs / "to_v", channels, channels, Default::default()),
            to_out: lora::linear(&vs / "to_out" / 0, channels, channels, Default::default()),
            heads,
            rescale_output_factor: 1.0,
        }
    }
}

impl Module for SpatialSelfAttention {
    /// # Shapes
    /// - `xs`: [batch, channels, h, w] -> [batch, channels, h, w]
    fn forward(&self, xs: &Tensor) -> Tensor {
        let (b, c, h, w) = xs.size4().expect("SpatialSelfAttention expects [b, c, h, w]");
        let x = self.group_norm.forward(xs).view([b, c, h * w]).transpose(1, 2);
        let split = |t: Tensor| t.view([b, h * w, self.heads, c / self.heads]).transpose(1, 2);
        let q = split(self.to_q.forward(&x));
        let k = split(self.to_k.forward(&x));
        let v = split(self.to_v.forward(&x));
        let a = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<&Tensor>, 0.0, false, None, false);
        let a = a.transpose(1, 2).reshape([b, h * w, c]);
        let out = self.to_out.forward(&a).transpose(1, 2).view([b, c, h, w]);
        (out + xs) / self.rescale_output_factor
    }
}

/// Sinusoidal timestep embedding, as diffusers' `get_timestep_embedding`
/// (Vaswani et al. 2017, arXiv 1706.03762; DDPM's U-Net).
///
/// # Shapes
/// - `timesteps`: [batch] (any numeric kind) -> [batch, dim] (f32)
pub fn timestep_embedding(timesteps: &Tensor, dim: i64, flip_sin_to_cos: bool, downscale_freq_shift: f64) -> Tensor {
    let half = dim / 2;
    let device = timesteps.device();
    let exponent =
        Tensor::arange(half, (Kind::Float, device)) * (-(10000f64.ln())) / (half as f64 - downscale_freq_shift);
    let freqs = exponent.exp();
    let args = timesteps.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    let emb = Tensor::cat(&[args.sin(), args.cos()], -1);
    let emb = if flip_sin_to_cos { Tensor::cat(&[emb.narrow(1, half, half), emb.narrow(1, 0, half)], -1) } else { emb };
    if dim % 2 == 1 {
        emb.constant_pad_nd([0, 1])
    } else {
        emb
    }
}

/// Two linear layers with SiLU between (diffusers `TimestepEmbedding`: `linear_1`, `linear_2`).
#[derive(Debug)]
pub struct TimestepEmbedding {
    linear_1: lora::Linear,
    linear_2: lora::Linear,
}

impl TimestepEmbedding {
    pub fn new(vs: nn::Path<'_>, in_channels: i64, time_embed_dim: i64) -> Self {
        Self::with_config(vs, in_channels, time_embed_dim, Default::default())
    }

    /// Both layers with the initialisation of `cfg`.
    pub fn with_config(vs: nn::Path<'_>, in_channels: i64, time_embed_dim: i64, cfg: nn::LinearConfig) -> Self {
        TimestepEmbedding {
            linear_1: lora::linear(&vs / "linear_1", in_channels, time_embed_dim, cfg),
            linear_2: lora::linear(&vs / "linear_2", time_embed_dim, time_embed_dim, cfg),
        }
    }
}

impl Module for TimestepEmbedding {
    /// # Shapes
    /// - `xs`: [batch, in_channels] -> [batch, time_embed_dim]
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.linear_2.forward(&self.linear_1.forward(xs).silu())
    }
}

/// Stride-2 3x3 conv downsampling (diffusers `Downsample2D` with `use_conv`: `conv`).
#[derive(Debug)]
pub struct Downsample2D {
    conv: lora::Conv2D,
    /// diffusers' `padding = 0`: one zero row and column on the bottom and right, then an unpadded conv.
    pad_bottom_right: bool,
}

impl Downsample2D {
    pub fn new(vs: nn::Path<'_>, channels: i64, out_channels: i64) -> Self {
        Self::with_padding(vs, channels, out_channels, 1)
    }

    /// diffusers' `padding` argument. The VAE encoder (`DownEncoderBlock2D`, `downsample_padding=0`)
    /// uses 0, which diffusers turns into an asymmetric `F.pad(x, (0, 1, 0, 1))` before a conv without padding.
    pub fn with_padding(vs: nn::Path<'_>, channels: i64, out_channels: i64, padding: i64) -> Self {
        let cfg = nn::ConvConfig { stride: 2, padding, ..Default::default() };
        Downsample2D {
            conv: lora::conv2d(&vs / "conv", channels, out_channels, 3, cfg),
            pad_bottom_right: padding == 0,
        }
    }
}

impl Module for Downsample2D {
    /// # Shapes
    /// - `xs`: [batch, c, h, w] -> [batch, out_channels, ceil(h / 2), ceil(w / 2)] (padding 1),
    ///   [batch, out_channels, floor(h / 2), floor(w / 2)] (padding 0)
    fn forward(&self, xs: &Tensor) -> Tensor {
        if self.pad_bottom_right {
            self.conv.forward(&xs.constant_pad_nd([0, 1, 0, 1]))
        } else {
            self.conv.forward(xs)
        }
    }
}

/// Nearest-neighbour 2x upsampling then a 3x3 conv (diffusers `Upsample2D`: `conv`).
#[derive(Debug)]
pub struct Upsample2D {
    conv: lora::Conv2D,
}

impl Upsample2D {
    pub fn new(vs: nn::Path<'_>, channels: i64, out_channels: i64) -> Self {
        Upsample2D { conv: adaptable_conv2d(&vs / "conv", channels, out_channels, 3, 1) }
    }

    /// Upsample to an explicit size (U-Nets on odd sizes such as 28 -> 14 -> 7 need it).
    ///
    /// # Shapes
    /// - `xs`: [batch, c, h, w] -> [batch, out_channels, size.0, size.1]
    pub fn forward_to(&self, xs: &Tensor, size: Option<(i64, i64)>) -> Tensor {
        let (_, _, h, w) = xs.size4().expect("Upsample2D expects [b, c, h, w]");
        let (oh, ow) = size.unwrap_or((2 * h, 2 * w));
        self.conv.forward(&xs.upsample_nearest2d([oh, ow], None, None))
    }
}

impl Module for Upsample2D {
    /// # Shapes
    /// - `xs`: [batch, c, h, w] -> [batch, out_channels, 2h, 2w]
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.forward_to(xs, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    #[test]
    fn leaky_relu_values_and_gradient() {
        let x = Tensor::from_slice(&[-2.0f64, -0.5, 0.0, 0.5, 3.0]).set_requires_grad(true);
        let y = leaky_relu(&x, 0.2);
        let got: Vec<f64> = y.shallow_clone().try_into().unwrap();
        assert_eq!(got, vec![-0.4, -0.1, 0.0, 0.5, 3.0]);
        y.sum(Kind::Double).backward();
        let g: Vec<f64> = x.grad().try_into().unwrap();
        assert_eq!(g, vec![0.2, 0.2, 0.2, 1.0, 1.0]);
    }

    #[test]
    fn shapes_and_names_follow_diffusers() {
        let vs = VarStore::new(Device::Cpu);
        let cfg = ResnetBlock2DConfig { out_channels: Some(64), temb_channels: Some(128), ..Default::default() };
        let block = ResnetBlock2D::new(vs.root() / "resnets" / 0, 32, cfg);
        let attn = SpatialSelfAttention::new(vs.root() / "attentions" / 0, 64, 32, 32, 1e-6);
        let x = Tensor::randn([2, 32, 8, 8], (Kind::Float, Device::Cpu));
        let t = timestep_embedding(&Tensor::from_slice(&[1i64, 500]), 128, true, 0.0);
        assert_eq!(t.size(), [2, 128]);
        let y = block.forward_t(&x, Some(&t), true);
        assert_eq!(y.size(), [2, 64, 8, 8]);
        assert_eq!(attn.forward(&y).size(), [2, 64, 8, 8]);
        let names = vs.variables();
        for n in [
            "resnets.0.norm1.weight",
            "resnets.0.conv1.weight",
            "resnets.0.time_emb_proj.weight",
            "resnets.0.conv_shortcut.bias",
            "attentions.0.to_out.0.weight",
            "attentions.0.group_norm.bias",
        ] {
            assert!(names.contains_key(n), "missing {n}");
        }
        let down = Downsample2D::new(vs.root() / "down", 64, 64);
        assert_eq!(down.forward(&y).size(), [2, 64, 4, 4]);
        let vae_down = Downsample2D::with_padding(vs.root() / "vae_down", 64, 64, 0);
        assert_eq!(vae_down.forward(&y).size(), [2, 64, 4, 4]);
        assert_eq!(vae_down.forward(&y.narrow(2, 0, 7).narrow(3, 0, 7)).size(), [2, 64, 3, 3]);
        let up = Upsample2D::new(vs.root() / "up", 64, 32);
        assert_eq!(up.forward_to(&y, Some((15, 15))).size(), [2, 32, 15, 15]);
    }

    #[test]
    fn timestep_embedding_matches_the_formula() {
        // diffusers: emb = exp(-ln(10000) * i / (half - shift)); [sin, cos] then flip.
        let e = timestep_embedding(&Tensor::from_slice(&[3.0f32]), 4, false, 1.0);
        let half = 2.0;
        let f1 = (-(10000f64.ln()) * 1.0 / (half - 1.0)).exp();
        let want = [3f64.sin(), (3.0 * f1).sin(), 3f64.cos(), (3.0 * f1).cos()];
        let got = Vec::<f32>::try_from(e.view(-1)).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        let flipped = timestep_embedding(&Tensor::from_slice(&[3.0f32]), 4, true, 1.0);
        let got = Vec::<f32>::try_from(flipped.view(-1)).unwrap();
        assert!((got[0] as f64 - 3f64.cos()).abs() < 1e-5);
    }

    #[test]
    fn attention_matches_a_manual_softmax() {
        let vs = VarStore::new(Device::Cpu);
        let attn = SpatialSelfAttention::new(vs.root(), 8, 8, 4, 1e-6);
        let x = Tensor::randn([1, 8, 3, 3], (Kind::Float, Device::Cpu));
        let y = attn.forward(&x);
        let h = attn.group_norm.forward(&x).view([1, 8, 9]).transpose(1, 2);
        let (q, k, v) = (attn.to_q.forward(&h), attn.to_k.forward(&h), attn.to_v.forward(&h));
        let w = (q.matmul(&k.transpose(1, 2)) / 8f64.sqrt()).softmax(-1, Kind::Float);
        let manual = attn.to_out.forward(&w.matmul(&v)).transpose(1, 2).view([1, 8, 3, 3]) + &x;
        assert!(y.allclose(&manual, 1e-5, 1e-5, false));
    }
}
