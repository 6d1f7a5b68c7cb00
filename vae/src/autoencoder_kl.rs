//! The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, "High-Resolution Image
//! Synthesis with Latent Diffusion Models", arXiv 2112.10752, section 3.1 and appendix G), with the
//! structure and parameter names of Hugging Face diffusers' `AutoencoderKL`, so that a diffusers
//! `vae/diffusion_pytorch_model.safetensors` loads without renaming.
//!
//! Followed (diffusers 0.42.1):
//! - `models/autoencoders/autoencoder_kl.py`: `AutoencoderKL` (`quant_conv`, `post_quant_conv`, config);
//! - `models/autoencoders/vae.py`: `Encoder`, `Decoder`, `DiagonalGaussianDistribution`;
//! - `models/unets/unet_2d_blocks.py`: `DownEncoderBlock2D`, `UpDecoderBlock2D`, `UNetMidBlock2D`;
//! - `models/resnet.py`, `models/downsampling.py`, `models/upsampling.py`, `models/attention_processor.py`
//!   through genlab-core's layers.
//!
//! Every ResNet block has no time embedding, GroupNorm eps is 1e-6 throughout, the encoder's downsamplers pad
//! (0, 1, 0, 1) before an unpadded stride-2 conv, and the mid-block attention has one head of all channels.
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Tensor};

use genlab_core::layers::{conv2d, Downsample2D, ResnetBlock2D, ResnetBlock2DConfig, SpatialSelfAttention, Upsample2D};

use crate::error::{Result, VaeError};

/// diffusers' `DiagonalGaussianDistribution` clamps the log-variance to this range.
pub const LOGVAR_RANGE: (f64, f64) = (-30.0, 20.0);

/// The only block types diffusers' `AutoencoderKL` builds with this structure.
pub const DOWN_BLOCK: &str = "DownEncoderBlock2D";
pub const UP_BLOCK: &str = "UpDecoderBlock2D";

/// diffusers' `sample_size`: one side, or [height, width].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Square(i64),
    Rect([i64; 2]),
}

impl SampleSize {
    /// (height, width)
    pub fn hw(&self) -> (i64, i64) {
        match *self {
            SampleSize::Square(s) => (s, s),
            SampleSize::Rect([h, w]) => (h, w),
        }
    }
}

/// `AutoencoderKL`'s configuration, field for field as diffusers' `config.json`, so a diffusers
/// `vae/config.json` deserialises directly (keys genlab does not use, such as `_class_name`,
/// `latents_mean`, are ignored).
///
/// There is no `Default`: a missing key takes the default of diffusers' `AutoencoderKL.__init__`
/// (needed because older files such as Stable Diffusion 1.5's omit `scaling_factor`), and checkpoints'
/// values live in named presets such as [`AutoencoderKLConfig::sd15`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderKLConfig {
    #[serde(default = "defaults::three")]
    pub in_channels: i64,
    #[serde(default = "defaults::three")]
    pub out_channels: i64,
    /// One `DownEncoderBlock2D` per entry of `block_out_channels` (empty: the same, implicitly).
    #[serde(default)]
    pub down_block_types: Vec<String>,
    /// One `UpDecoderBlock2D` per entry of `block_out_channels` (empty: the same, implicitly).
    #[serde(default)]
    pub up_block_types: Vec<String>,
    /// Channels per resolution, highest resolution first; all but the last block halve the resolution.
    #[serde(default = "defaults::block_out_channels")]
    pub block_out_channels: Vec<i64>,
    /// ResNet blocks per encoder block (the decoder's blocks have one more).
    #[serde(default = "defaults::one")]
    pub layers_per_block: i64,
    /// Only `silu` is supported (the value of every released diffusers VAE).
    #[serde(default = "defaults::silu")]
    pub act_fn: String,
    #[serde(default = "defaults::four")]
    pub latent_channels: i64,
    #[serde(default = "defaults::thirty_two")]
    pub norm_num_groups: i64,
    #[serde(default = "defaults::sample_size")]
    pub sample_size: SampleSize,
    /// Latents for diffusion are `(z - shift_factor) * scaling_factor`, giving them about unit variance.
    #[serde(default = "defaults::scaling_factor")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "defaults::yes")]
    pub use_quant_conv: bool,
    #[serde(default = "defaults::yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "defaults::yes")]
    pub mid_block_add_attention: bool,
    /// Run this autoencoder in f32 when the rest of a pipeline runs in f16 (diffusers' flag; Stable
    /// Diffusion's VAE overflows in f16).
    #[serde(default = "defaults::yes")]
    pub force_upcast: bool,
}

/// The defaults of diffusers 0.42.1 `AutoencoderKL.__init__`, for keys a `config.json` omits.
mod defaults {
    pub fn one() -> i64 {
        1
    }
    pub fn three() -> i64 {
        3
    }
    pub fn four() -> i64 {
        4
    }
    pub fn thirty_two() -> i64 {
        32
    }
    pub fn block_out_channels() -> Vec<i64> {
        vec![64]
    }
    pub fn silu() -> String {
        "silu".into()
    }
    pub fn sample_size() -> super::SampleSize {
        super::SampleSize::Square(32)
    }
    pub fn scaling_factor() -> f64 {
        0.18215
    }
    pub fn yes() -> bool {
        true
    }
}

impl AutoencoderKLConfig {
    /// Stable Diffusion 1.x's VAE: `vae/config.json` of
    /// <https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5> (the kl-f8 autoencoder of
    /// Rombach et al. 2022), with diffusers' scaling factor 0.18215 (LDM's `scale_factor` for it).
    pub fn sd15() -> Self {
        AutoencoderKLConfig {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec![DOWN_BLOCK.into(); 4],
            up_block_types: vec![UP_BLOCK.into(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: SampleSize::Square(512),
            scaling_factor: 0.18215,
            shift_factor: None,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
            force_upcast: true,
        }
    }

    /// A small autoencoder for CPU work on `image_shape` ([c, h, w]) images, with `block_out_channels`
    /// (`len - 1` halvings), one ResNet per encoder block, 4 latent channels and 8 groups.
    /// The scaling factor is 1: estimate one after training with [`estimate_scaling_factor`].
    pub fn small(image_shape: [i64; 3], block_out_channels: Vec<i64>) -> Self {
        let n = block_out_channels.len();
        AutoencoderKLConfig {
            in_channels: image_shape[0],
            out_channels: image_shape[0],
            down_block_types: vec![DOWN_BLOCK.into(); n],
            up_block_types: vec![UP_BLOCK.into(); n],
            block_out_channels,
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 8,
            sample_size: SampleSize::Rect([image_shape[1], image_shape[2]]),
            scaling_factor: 1.0,
            shift_factor: None,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
            force_upcast: true,
        }
    }

    /// Parse a diffusers `config.json` (text).
    pub fn from_json_str(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text)
            .map_err(|e| VaeError::Config(format!("not an AutoencoderKL configuration: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read a diffusers `config.json` (for instance a model's `vae/config.json`).
    pub fn from_json_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| VaeError::Config(format!("{}: cannot read: {e}", path.display())))?;
        Self::from_json_str(&text).map_err(|e| VaeError::Config(format!("{}: {e}", path.display())))
    }

    /// Spatial downsampling factor of the latents (2^(blocks - 1)).
    pub fn downsampling_factor(&self) -> i64 {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(VaeError::Config(format!("AutoencoderKL: {m}")));
        if self.in_channels <= 0 || self.out_channels <= 0 || self.latent_channels <= 0 {
            return bad(format!(
                "channels must be positive: in {}, out {}, latent {}",
                self.in_channels, self.out_channels, self.latent_channels
            ));
        }
        if self.block_out_channels.is_empty() || self.layers_per_block < 1 || self.norm_num_groups < 1 {
            return bad(format!(
                "need at least one block, one layer per block and one group; got block_out_channels {:?}, \
                 layers_per_block {}, norm_num_groups {}",
                self.block_out_channels, self.layers_per_block, self.norm_num_groups
            ));
        }
        if let Some(&c) = self.block_out_channels.iter().find(|&&c| c <= 0 || c % self.norm_num_groups != 0) {
            return bad(format!(
                "every entry of block_out_channels {:?} must be a positive multiple of norm_num_groups {} ({c} is not)",
                self.block_out_channels, self.norm_num_groups
            ));
        }
        let n = self.block_out_channels.len();
        for (field, types, want) in [
            ("down_block_types", &self.down_block_types, DOWN_BLOCK),
            ("up_block_types", &self.up_block_types, UP_BLOCK),
        ] {
            if !types.is_empty() && types.len() != n {
                return bad(format!("{field} has {} entries, block_out_channels {n}", types.len()));
            }
            if let Some(t) = types.iter().find(|t| t.as_str() != want) {
                return bad(format!("{field}: `{t}` is not supported (only {want})"));
            }
        }
        if self.act_fn != "silu" {
            return bad(format!("act_fn `{}` is not supported (only silu)", self.act_fn));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return bad(format!("scaling_factor must be positive, got {}", self.scaling_factor));
        }
        Ok(())
    }
}

/// The posterior q(z | x) = N(mean, exp(logvar)), per latent pixel (diffusers `DiagonalGaussianDistribution`).
#[derive(Debug)]
pub struct DiagonalGaussian {
    /// [batch, latent_channels, h / f, w / f]
    pub mean: Tensor,
    /// [batch, latent_channels, h / f, w / f], clamped to [`LOGVAR_RANGE`]
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// Split encoder moments along channels: first half mean, second half log-variance.
    ///
    /// # Shapes
    /// - `moments`: [batch, 2 * latent_channels, h, w]
    pub fn from_moments(moments: &Tensor) -> Self {
        let parts = moments.chunk(2, 1);
        let (lo, hi) = LOGVAR_RANGE;
        DiagonalGaussian { mean: parts[0].shallow_clone(), logvar: parts[1].clamp(lo, hi) }
    }

    /// # Shapes
    /// - returns [batch, latent_channels, h, w]
    pub fn std(&self) -> Tensor {
        (&self.logvar * 0.5).exp()
    }

    /// A reparameterised draw `mean + std * eps`.
    ///
    /// # Shapes
    /// - returns [batch, latent_channels, h, w]
    pub fn sample(&self) -> Tensor {
        &self.mean + self.std() * self.mean.randn_like()
    }

    /// The mode (= mean).
    ///
    /// # Shapes
    /// - returns [batch, latent_channels, h, w]
    pub fn mode(&self) -> Tensor {
        self.mean.shallow_clone()
    }
}

/// ResNets then an optional downsampler (diffusers `DownEncoderBlock2D`).
#[derive(Debug)]
struct DownEncoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

impl DownEncoderBlock2D {
    fn new(vs: nn::Path<'_>, c_in: i64, c_out: i64, layers: i64, groups: i64, downsample: bool) -> Self {
        let resnets = (0..layers)
            .map(|i| {
                let cin = if i == 0 { c_in } else { c_out };
                ResnetBlock2D::new(&vs / "resnets" / i, cin, resnet_cfg(c_out, groups))
            })
            .collect();
        let downsampler = downsample.then(|| Downsample2D::with_padding(&vs / "downsamplers" / 0, c_out, c_out, 0));
        DownEncoderBlock2D { resnets, downsampler }
    }

    /// # Shapes
    /// - `xs`: [batch, c_in, h, w] -> [batch, c_out, floor(h / 2), floor(w / 2)] (or [.., h, w], last block)
    fn forward(&self, xs: &Tensor) -> Tensor {
        let h = self.resnets.iter().fold(xs.shallow_clone(), |h, r| r.forward_t(&h, None, false));
        match &self.downsampler {
            Some(d) => d.forward(&h),
            None => h,
        }
    }
}

/// ResNets then an optional nearest-x2 upsampler and conv (diffusers `UpDecoderBlock2D`).
#[derive(Debug)]
struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    fn new(vs: nn::Path<'_>, c_in: i64, c_out: i64, layers: i64, groups: i64, upsample: bool) -> Self {
        let resnets = (0..layers)
            .map(|i| {
                let cin = if i == 0 { c_in } else { c_out };
                ResnetBlock2D::new(&vs / "resnets" / i, cin, resnet_cfg(c_out, groups))
            })
            .collect();
        let upsampler = upsample.then(|| Upsample2D::new(&vs / "upsamplers" / 0, c_out, c_out));
        UpDecoderBlock2D { resnets, upsampler }
    }

    /// # Shapes
    /// - `xs`: [batch, c_in, h, w] -> [batch, c_out, 2h, 2w] (or [.., h, w], last block)
    fn forward(&self, xs: &Tensor) -> Tensor {
        let h = self.resnets.iter().fold(xs.shallow_clone(), |h, r| r.forward_t(&h, None, false));
        match &self.upsampler {
            Some(u) => u.forward(&h),
            None => h,
        }
    }
}

/// ResNet, single-head self-attention, ResNet (diffusers `UNetMidBlock2D` with `temb_channels=None`,
/// `attention_head_dim = channels`).
#[derive(Debug)]
struct UNetMidBlock2D {
    resnets: [ResnetBlock2D; 2],
    attention: Option<SpatialSelfAttention>,
}

impl UNetMidBlock2D {
    fn new(vs: nn::Path<'_>, channels: i64, groups: i64, add_attention: bool) -> Self {
        let r = |i: i64| ResnetBlock2D::new(&vs / "resnets" / i, channels, resnet_cfg(channels, groups));
        let attention =
            add_attention.then(|| SpatialSelfAttention::new(&vs / "attentions" / 0, channels, channels, groups, EPS));
        UNetMidBlock2D { resnets: [r(0), r(1)], attention }
    }

    /// # Shapes
    /// - `xs`: [batch, channels, h, w] -> [batch, channels, h, w]
    fn forward(&self, xs: &Tensor) -> Tensor {
        let h = self.resnets[0].forward_t(xs, None, false);
        let h = match &self.attention {
            Some(a) => a.forward(&h),
            None => h,
        };
        self.resnets[1].forward_t(&h, None, false)
    }
}

const EPS: f64 = 1e-6;

fn resnet_cfg(out: i64, groups: i64) -> ResnetBlock2DConfig {
    ResnetBlock2DConfig { out_channels: Some(out), temb_channels: None, groups, eps: EPS, ..Default::default() }
}

fn group_norm(vs: nn::Path<'_>, groups: i64, channels: i64) -> nn::GroupNorm {
    nn::group_norm(vs, groups, channels, nn::GroupNormConfig { eps: EPS, ..Default::default() })
}

/// Image to posterior moments (diffusers `Encoder` with `double_z=True`).
#[derive(Debug)]
struct Encoder {
    conv_in: nn::Conv2D,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: UNetMidBlock2D,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Encoder {
    fn new(vs: nn::Path<'_>, cfg: &AutoencoderKLConfig) -> Self {
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let down_blocks = (0..ch.len())
            .map(|i| {
                let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
                let last = i + 1 == ch.len();
                DownEncoderBlock2D::new(&vs / "down_blocks" / i, c_in, ch[i], cfg.layers_per_block, g, !last)
            })
            .collect();
        let top = ch[ch.len() - 1];
        Encoder {
            conv_in: conv2d(&vs / "conv_in", cfg.in_channels, ch[0], 3, 1),
            down_blocks,
            mid_block: UNetMidBlock2D::new(&vs / "mid_block", top, g, cfg.mid_block_add_attention),
            conv_norm_out: group_norm(&vs / "conv_norm_out", g, top),
            conv_out: conv2d(&vs / "conv_out", top, 2 * cfg.latent_channels, 3, 1),
        }
    }

    /// # Shapes
    /// - `xs`: [batch, in_channels, h, w] -> [batch, 2 * latent_channels, h / f, w / f]
    fn forward(&self, xs: &Tensor) -> Tensor {
        let h = self.down_blocks.iter().fold(self.conv_in.forward(xs), |h, b| b.forward(&h));
        let h = self.mid_block.forward(&h);
        self.conv_out.forward(&self.conv_norm_out.forward(&h).silu())
    }
}

/// Latent to image (diffusers `Decoder`, `norm_type="group"`).
#[derive(Debug)]
struct Decoder {
    conv_in: nn::Conv2D,
    mid_block: UNetMidBlock2D,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Decoder {
    fn new(vs: nn::Path<'_>, cfg: &AutoencoderKLConfig) -> Self {
        let rev: Vec<i64> = cfg.block_out_channels.iter().rev().copied().collect();
        let g = cfg.norm_num_groups;
        let up_blocks = (0..rev.len())
            .map(|i| {
                let c_in = if i == 0 { rev[0] } else { rev[i - 1] };
                let last = i + 1 == rev.len();
                UpDecoderBlock2D::new(&vs / "up_blocks" / i, c_in, rev[i], cfg.layers_per_block + 1, g, !last)
            })
            .collect();
        let bottom = cfg.block_out_channels[0];
        Decoder {
            conv_in: conv2d(&vs / "conv_in", cfg.latent_channels, rev[0], 3, 1),
            mid_block: UNetMidBlock2D::new(&vs / "mid_block", rev[0], g, cfg.mid_block_add_attention),
            up_blocks,
            conv_norm_out: group_norm(&vs / "conv_norm_out", g, bottom),
            conv_out: conv2d(&vs / "conv_out", bottom, cfg.out_channels, 3, 1),
        }
    }

    /// # Shapes
    /// - `z`: [batch, latent_channels, h, w] -> [batch, out_channels, h * f, w * f]
    fn forward(&self, z: &Tensor) -> Tensor {
        let h = self.mid_block.forward(&self.conv_in.forward(z));
        let h = self.up_blocks.iter().fold(h, |h, b| b.forward(&h));
        self.conv_out.forward(&self.conv_norm_out.forward(&h).silu())
    }
}

/// The KL autoencoder. Parameters live under diffusers' names: `encoder.*`, `quant_conv`,
/// `post_quant_conv`, `decoder.*`.
#[derive(Debug)]
pub struct AutoencoderKL {
    pub cfg: AutoencoderKLConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<nn::Conv2D>,
    post_quant_conv: Option<nn::Conv2D>,
    device: Device,
}

impl AutoencoderKL {
    pub fn new(vs: nn::Path<'_>, cfg: AutoencoderKLConfig) -> Result<Self> {
        cfg.validate()?;
        let l = cfg.latent_channels;
        let encoder = Encoder::new(&vs / "encoder", &cfg);
        let decoder = Decoder::new(&vs / "decoder", &cfg);
        let quant_conv = cfg.use_quant_conv.then(|| conv2d(&vs / "quant_conv", 2 * l, 2 * l, 1, 1));
        let post_quant_conv = cfg.use_post_quant_conv.then(|| conv2d(&vs / "post_quant_conv", l, l, 1, 1));
        Ok(AutoencoderKL { cfg, encoder, decoder, quant_conv, post_quant_conv, device: vs.device() })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Latent spatial size for an image of `h` x `w` (each halving rounds down, as diffusers' padding 0 does).
    pub fn latent_hw(&self, h: i64, w: i64) -> (i64, i64) {
        let halvings = self.cfg.block_out_channels.len() - 1;
        (0..halvings).fold((h, w), |(h, w), _| (h / 2, w / 2))
    }

    fn check(&self, x: &Tensor, channels: i64, what: &str, min_side: i64) -> Result<()> {
        let s = x.size();
        if s.len() != 4 || s[1] != channels || s[2] < min_side || s[3] < min_side {
            return Err(VaeError::Shape(format!(
                "AutoencoderKL {what}: expected [batch, {channels}, h, w] with h, w >= {min_side}, got {s:?}"
            )));
        }
        Ok(())
    }

    /// The posterior q(z | x).
    ///
    /// # Shapes
    /// - `x`: [batch, in_channels, h, w], images in [-1, 1]
    /// - returns mean and logvar, each [batch, latent_channels, floor(h / f), floor(w / f)], f = 2^(blocks - 1)
    pub fn encode(&self, x: &Tensor) -> Result<DiagonalGaussian> {
        // Each halving needs two rows (one padded) for the 3x3 kernel.
        self.check(x, self.cfg.in_channels, "encode", self.cfg.downsampling_factor())?;
        let h = self.encoder.forward(x);
        let h = match &self.quant_conv {
            Some(c) => c.forward(&h),
            None => h,
        };
        Ok(DiagonalGaussian::from_moments(&h))
    }

    /// Decode latents (unscaled, as [`AutoencoderKL::encode`] gives them).
    ///
    /// # Shapes
    /// - `z`: [batch, latent_channels, h, w] -> [batch, out_channels, h * f, w * f]
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.check(z, self.cfg.latent_channels, "decode", 1)?;
        let z = match &self.post_quant_conv {
            Some(c) => c.forward(z),
            None => z.shallow_clone(),
        };
        Ok(self.decoder.forward(&z))
    }

    /// Reconstruction through the posterior's mode (diffusers' default) or a posterior sample.
    ///
    /// # Shapes
    /// - `x`: [batch, in_channels, h, w] -> [batch, out_channels, h, w] (h, w divisible by f)
    pub fn forward(&self, x: &Tensor, sample_posterior: bool) -> Result<Tensor> {
        let post = self.encode(x)?;
        self.decode(&if sample_posterior { post.sample() } else { post.mode() })
    }

    /// Latents for a diffusion model: `(z - shift_factor) * scaling_factor`, z drawn from the posterior
    /// (`sample`, as diffusers' training scripts do) or its mode.
    ///
    /// # Shapes
    /// - `x`: [batch, in_channels, h, w] -> [batch, latent_channels, h / f, w / f]
    pub fn encode_to_latents(&self, x: &Tensor, sample: bool) -> Result<Tensor> {
        let post = self.encode(x)?;
        let z = if sample { post.sample() } else { post.mode() };
        Ok((z - self.cfg.shift_factor.unwrap_or(0.0)) * self.cfg.scaling_factor)
    }

    /// Inverse of [`AutoencoderKL::encode_to_latents`]: `decode(latents / scaling_factor + shift_factor)`.
    ///
    /// # Shapes
    /// - `latents`: [batch, latent_channels, h, w] -> [batch, out_channels, h * f, w * f]
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode(&(latents / self.cfg.scaling_factor + self.cfg.shift_factor.unwrap_or(0.0)))
    }
}

/// `1 / std` of the posterior means of `x`: the scaling factor that gives latents about unit variance
/// (Rombach et al. 2022 rescale KL-regularised latents this way; the LDM code's `scale_by_std`,
/// `ldm/models/diffusion/ddpm.py`, estimates it from the first training batch).
///
/// # Shapes
/// - `x`: [batch, in_channels, h, w]
pub fn estimate_scaling_factor(model: &AutoencoderKL, x: &Tensor) -> Result<f64> {
    let z = tch::no_grad(|| model.encode(x))?.mode();
    let std = z.std(true).double_value(&[]);
    if !(std.is_finite() && std > 0.0) {
        return Err(VaeError::Shape(format!("latent standard deviation is {std}: cannot scale by it")));
    }
    Ok(1.0 / std)
}
