//! The denoising U-Net: diffusers' `UNet2DModel`, with its structure and parameter names.
//!
//! - Ho, Jain and Abbeel, "Denoising Diffusion Probabilistic Models", arXiv 2006.11239, appendix B
//!   (the PixelCNN++-style U-Net: ResNet blocks, self-attention at low resolution, sinusoidal timestep
//!   embedding added in every block); [`UNet2DConfig::default`] is its CIFAR-10 network.
//! - Class conditioning by a learned embedding added to the timestep embedding, with one extra "null"
//!   class for classifier-free guidance: Ho and Salimans, "Classifier-Free Diffusion Guidance",
//!   arXiv 2207.12598.
//!
//! Follows diffusers' `models/unets/unet_2d.py` (`UNet2DModel` with `class_embed_type=None`,
//! `time_embedding_type="positional"`, `resnet_time_scale_shift="default"`, conv up/downsampling) and
//! `models/unets/unet_2d_blocks.py` (`DownBlock2D`, `AttnDownBlock2D`, `UNetMidBlock2D`, `UpBlock2D`,
//! `AttnUpBlock2D`), so a diffusers state dict of the same configuration loads without renaming
//! (`tests/unet_parity.rs`). One difference: each upsampler resizes to the size of the skip connection
//! it meets, so odd sizes work (28 -> 14 -> 7 -> 14 -> 28, or 7 -> 4 -> 7), where diffusers needs sizes
//! divisible by 2^(levels - 1).
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Tensor};

use crate::error::{DiffusionError, Result};
use crate::unet_2d_blocks::{unet_blocks, BlockContext};
use genlab_core::layers::{
    timestep_embedding, Downsample2D, ResnetBlock2D, ResnetBlock2DConfig, SpatialSelfAttention, TimestepEmbedding,
    Upsample2D,
};

/// The configuration of a [`UNet2DModel`], with diffusers' field names where diffusers has the field.
/// Written into every diffusion run's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UNet2DConfig {
    /// `[height, width]` of the images the model is trained on (diffusers' `sample_size`); the network
    /// itself takes any size.
    pub sample_size: [i64; 2],
    pub in_channels: i64,
    pub out_channels: i64,
    /// Channels per resolution level; every level but the last halves the resolution.
    pub block_out_channels: Vec<i64>,
    /// ResNet blocks per down block (the up blocks have one more).
    pub layers_per_block: usize,
    /// One per level: whether that level's down block and its mirror up block have self-attention
    /// (diffusers' `AttnDownBlock2D` / `AttnUpBlock2D` instead of `DownBlock2D` / `UpBlock2D`).
    /// The mid block always has attention.
    pub attention: Vec<bool>,
    /// Channels per attention head; `None` is one head over all channels.
    pub attention_head_dim: Option<i64>,
    pub norm_num_groups: i64,
    pub norm_eps: f64,
    pub dropout: f64,
    /// Rows of the class embedding; `None` for an unconditional model. genlab's class-conditional
    /// models keep the last row for the null class of classifier-free guidance.
    pub num_class_embeds: Option<i64>,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
}

impl Default for UNet2DConfig {
    /// The DDPM paper's CIFAR-10 U-Net (Ho et al. 2020, appendix B: 128 channels, multipliers
    /// (1, 2, 2, 2), two ResNet blocks per level, attention at 16x16, dropout 0.1) for 3x32x32 images,
    /// with diffusers' `UNet2DModel` defaults for the embedding and norms.
    fn default() -> Self {
        UNet2DConfig {
            sample_size: [32, 32],
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 256, 256],
            layers_per_block: 2,
            attention: vec![false, true, false, false],
            attention_head_dim: None,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            dropout: 0.1,
            num_class_embeds: None,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
        }
    }
}

impl UNet2DConfig {
    /// The preset names [`UNet2DConfig::preset`] knows.
    pub const PRESETS: [&'static str; 6] = ["unet-tiny", "unet-small", "unet-28", "unet-32", "unet-64", "unet-ddpm"];

    /// A named preset for images of `image_shape` = `[channels, height, width]`:
    /// - `unet-tiny`: channels (16, 32), one ResNet per level, attention at the lowest level
    ///   (fast CPU tests; 8x8 digits);
    /// - `unet-small`: channels (32, 64, 64), one ResNet per level, attention at the lowest
    ///   level, no dropout (earlier runs recorded dropout 0.1 in their config and keep it): for 28x28 or 32x32 on two CPU cores (about a quarter of `unet-28`'s step time);
    /// - `unet-28`, `unet-32`: (64, 128, 128), two ResNets per level, attention at the lowest level
    ///   (7x7 for 28x28, 8x8 for 32x32), dropout 0.1, for CPU;
    /// - `unet-64`: (64, 128, 256, 256), attention at the two lowest levels, for 64x64 on a GPU;
    /// - `unet-ddpm`: the DDPM paper's CIFAR-10 network ([`UNet2DConfig::default`]), for a GPU.
    pub fn preset(name: &str, image_shape: [i64; 3]) -> Result<Self> {
        let [c, h, w] = image_shape;
        let base = UNet2DConfig { sample_size: [h, w], in_channels: c, out_channels: c, ..Self::default() };
        let cfg = match name {
            "unet-tiny" => UNet2DConfig {
                block_out_channels: vec![16, 32],
                layers_per_block: 1,
                attention: vec![false, true],
                attention_head_dim: Some(16),
                norm_num_groups: 8,
                dropout: 0.0,
                ..base
            },
            "unet-small" => UNet2DConfig {
                block_out_channels: vec![32, 64, 64],
                layers_per_block: 1,
                attention: vec![false, false, true],
                attention_head_dim: Some(32),
                norm_num_groups: 8,
                dropout: 0.0,
                ..base
            },
            "unet-28" | "unet-32" => UNet2DConfig {
                block_out_channels: vec![64, 128, 128],
                attention: vec![false, false, true],
                attention_head_dim: Some(32),
                ..base
            },
            "unet-64" => UNet2DConfig {
                block_out_channels: vec![64, 128, 256, 256],
                attention: vec![false, false, true, true],
                attention_head_dim: Some(64),
                ..base
            },
            "unet-ddpm" => base,
            _ => {
                return Err(DiffusionError::UnknownName {
                    what: "U-Net preset",
                    found: name.to_string(),
                    expected: Self::PRESETS.join(", "),
                })
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The channels of the timestep embedding (diffusers: `4 * block_out_channels[0]`).
    pub fn time_embed_dim(&self) -> i64 {
        4 * self.block_out_channels.first().copied().unwrap_or(0)
    }

    /// Check every field, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(DiffusionError::Config(format!("U-Net: {msg}")));
        if self.in_channels < 1 || self.out_channels < 1 {
            return bad(format!("channels must be positive, got in {} out {}", self.in_channels, self.out_channels));
        }
        if self.sample_size.iter().any(|&s| s < 1) {
            return bad(format!("sample_size must be positive, got {:?}", self.sample_size));
        }
        if self.block_out_channels.is_empty() || self.block_out_channels.iter().any(|&c| c < 1) {
            return bad(format!(
                "block_out_channels must be non-empty and positive, got {:?}",
                self.block_out_channels
            ));
        }
        if self.attention.len() != self.block_out_channels.len() {
            return bad(format!(
                "attention has {} entries for {} levels (block_out_channels {:?})",
                self.attention.len(),
                self.block_out_channels.len(),
                self.block_out_channels
            ));
        }
        if self.layers_per_block < 1 {
            return bad("layers_per_block must be at least 1".into());
        }
        if self.norm_num_groups < 1 {
            return bad(format!("norm_num_groups must be positive, got {}", self.norm_num_groups));
        }
        if let Some(&c) = self.block_out_channels.iter().find(|&&c| c % self.norm_num_groups != 0) {
            return bad(format!("{c} channels are not divisible by norm_num_groups {}", self.norm_num_groups));
        }
        if let Some(d) = self.attention_head_dim {
            let last = self.block_out_channels.len() - 1;
            let attended = self.block_out_channels.iter().zip(&self.attention).enumerate();
            let mut channels = attended.filter(|(i, (_, &a))| a || *i == last).map(|(_, (&c, _))| c);
            if d < 1 {
                return bad(format!("attention_head_dim must be positive, got {d}"));
            }
            if let Some(c) = channels.find(|c| c % d != 0) {
                return bad(format!("{c} attention channels are not divisible by attention_head_dim {d}"));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.num_class_embeds.is_some_and(|k| k < 1) {
            return bad(format!("num_class_embeds must be positive, got {:?}", self.num_class_embeds));
        }
        Ok(())
    }

    fn resnet(&self, out_channels: i64, output_scale_factor: f64) -> ResnetBlock2DConfig {
        ResnetBlock2DConfig {
            out_channels: Some(out_channels),
            temb_channels: Some(self.time_embed_dim()),
            groups: self.norm_num_groups,
            groups_out: None,
            eps: self.norm_eps,
            dropout: self.dropout,
            output_scale_factor,
            use_in_shortcut: None,
        }
    }

    fn attention(&self, vs: nn::Path<'_>, channels: i64) -> SpatialSelfAttention {
        let head_dim = self.attention_head_dim.unwrap_or(channels);
        SpatialSelfAttention::new(vs, channels, head_dim, self.norm_num_groups, self.norm_eps)
    }
}

type Layers = crate::unet_2d_blocks::Layers<SpatialSelfAttention>;
type DownBlock = crate::unet_2d_blocks::DownBlock<SpatialSelfAttention>;
type UpBlock = crate::unet_2d_blocks::UpBlock<SpatialSelfAttention>;

/// diffusers' `UNet2DModel`: `conv_in`, `time_proj` + `time_embedding`, an optional `class_embedding`,
/// `down_blocks`, `mid_block`, `up_blocks` with skip concatenation, `conv_norm_out`, `conv_out`.
#[derive(Debug)]
pub struct UNet2DModel {
    pub cfg: UNet2DConfig,
    conv_in: nn::Conv2D,
    time_embedding: TimestepEmbedding,
    class_embedding: Option<nn::Embedding>,
    down_blocks: Vec<DownBlock>,
    mid_block: Layers,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
    device: Device,
}

impl UNet2DModel {
    pub fn new(vs: nn::Path<'_>, cfg: UNet2DConfig) -> Result<Self> {
        cfg.validate()?;
        let ch = &cfg.block_out_channels;
        let levels = ch.len();
        let temb = cfg.time_embed_dim();
        let conv3 = nn::ConvConfig { padding: 1, ..Default::default() };
        let conv_in = nn::conv2d(&vs / "conv_in", cfg.in_channels, ch[0], 3, conv3);
        let time_embedding = TimestepEmbedding::new(&vs / "time_embedding", ch[0], temb);
        let class_embedding =
            cfg.num_class_embeds.map(|k| nn::embedding(&vs / "class_embedding", k, temb, Default::default()));

        let mut down_blocks = Vec::with_capacity(levels);
        let mut output_channel = ch[0];
        for (i, &out) in ch.iter().enumerate() {
            let input_channel = output_channel;
            output_channel = out;
            let p = &vs / "down_blocks" / i;
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    let c_in = if j == 0 { input_channel } else { out };
                    ResnetBlock2D::new(&p / "resnets" / j, c_in, cfg.resnet(out, 1.0))
                })
                .collect();
            let attentions = if cfg.attention[i] {
                (0..cfg.layers_per_block).map(|j| cfg.attention(&p / "attentions" / j, out)).collect()
            } else {
                Vec::new()
            };
            let downsampler = (i + 1 < levels).then(|| Downsample2D::new(&p / "downsamplers" / 0, out, out));
            down_blocks.push(DownBlock { layers: Layers { resnets, attentions }, downsampler });
        }

        let last = ch[levels - 1];
        let mid = &vs / "mid_block";
        let mid_block = Layers {
            resnets: (0..2).map(|j| ResnetBlock2D::new(&mid / "resnets" / j, last, cfg.resnet(last, 1.0))).collect(),
            attentions: vec![cfg.attention(&mid / "attentions" / 0, last)],
        };

        let rev: Vec<i64> = ch.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(levels);
        let mut output_channel = rev[0];
        for i in 0..levels {
            let prev_output_channel = output_channel;
            output_channel = rev[i];
            let input_channel = rev[(i + 1).min(levels - 1)];
            let p = &vs / "up_blocks" / i;
            let n = cfg.layers_per_block + 1;
            let resnets = (0..n)
                .map(|j| {
                    let skip = if j == n - 1 { input_channel } else { output_channel };
                    let c_in = if j == 0 { prev_output_channel } else { output_channel };
                    ResnetBlock2D::new(&p / "resnets" / j, c_in + skip, cfg.resnet(output_channel, 1.0))
                })
                .collect();
            let attentions = if cfg.attention[levels - 1 - i] {
                (0..n).map(|j| cfg.attention(&p / "attentions" / j, output_channel)).collect()
            } else {
                Vec::new()
            };
            let upsampler =
                (i + 1 < levels).then(|| Upsample2D::new(&p / "upsamplers" / 0, output_channel, output_channel));
            up_blocks.push(UpBlock { layers: Layers { resnets, attentions }, upsampler });
        }

        let gn = nn::GroupNormConfig { eps: cfg.norm_eps, ..Default::default() };
        let conv_norm_out = nn::group_norm(&vs / "conv_norm_out", cfg.norm_num_groups, ch[0], gn);
        let conv_out = nn::conv2d(&vs / "conv_out", ch[0], cfg.out_channels, 3, conv3);
        let device = vs.device();
        Ok(UNet2DModel {
            cfg,
            conv_in,
            time_embedding,
            class_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            device,
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The number of real classes of a class-conditional model (the last embedding row is the null class).
    pub fn num_classes(&self) -> Option<i64> {
        self.cfg.num_class_embeds.map(|k| k - 1)
    }

    /// The label that means "no class" for classifier-free guidance: the last embedding row.
    pub fn null_class(&self) -> Option<i64> {
        self.cfg.num_class_embeds.map(|k| k - 1)
    }

    /// The network's prediction (noise, clean sample or velocity: the schedule decides what it learns).
    ///
    /// # Shapes
    /// - `xs`: [batch, in_channels, h, w], any h and w
    /// - `timesteps`: [batch] or one timestep for all (any numeric kind; fractional timesteps allowed)
    /// - `class_labels`: [batch] int64 in `0..num_class_embeds`; required by a class-conditional model,
    ///   an error for an unconditional one
    /// - returns [batch, out_channels, h, w]
    pub fn forward_t(
        &self,
        xs: &Tensor,
        timesteps: &Tensor,
        class_labels: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let size = xs.size();
        let batch = match size.as_slice() {
            &[b, c, h, w] if c == self.cfg.in_channels && h > 0 && w > 0 => b,
            _ => {
                return Err(DiffusionError::Shape(format!(
                    "U-Net input has shape {size:?}: expected [batch, {}, height, width]",
                    self.cfg.in_channels
                )))
            }
        };
        let t = crate::inputs::per_sample_timesteps(timesteps, batch)?;
        let t_emb = timestep_embedding(
            &t.to_device(xs.device()),
            self.cfg.block_out_channels[0],
            self.cfg.flip_sin_to_cos,
            self.cfg.freq_shift,
        );
        let mut emb = self.time_embedding.forward(&t_emb);
        match (&self.class_embedding, class_labels) {
            (Some(embed), Some(labels)) => {
                self.check_labels(labels, batch)?;
                emb += embed.forward(labels);
            }
            (Some(_), None) => {
                return Err(DiffusionError::Labels("this U-Net is class-conditional: class labels are required".into()))
            }
            (None, Some(_)) => {
                return Err(DiffusionError::Labels("this U-Net is unconditional: it takes no class labels".into()))
            }
            (None, None) => {}
        }

        let h = self.conv_in.forward(xs);
        let ctx = BlockContext { temb: &emb, train, encoder_hidden_states: None, slice: None };
        let h = unet_blocks(h, &self.down_blocks, Some(&self.mid_block), &self.up_blocks, &ctx, true)?;
        Ok(self.conv_out.forward(&self.conv_norm_out.forward(&h).silu()))
    }

    fn check_labels(&self, labels: &Tensor, batch: i64) -> Result<()> {
        crate::inputs::check_labels(labels, batch, self.cfg.num_class_embeds.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;
    use tch::Kind;

    #[test]
    fn odd_sizes_and_every_preset_build() {
        let vs = VarStore::new(Device::Cpu);
        let cfg = UNet2DConfig::preset("unet-tiny", [1, 28, 28]).unwrap();
        let net = UNet2DModel::new(
            vs.root(),
            UNet2DConfig {
                block_out_channels: vec![8, 16, 16],
                attention: vec![false, false, true],
                attention_head_dim: Some(8),
                norm_num_groups: 4,
                ..cfg
            },
        )
        .unwrap();
        for s in [28, 7, 9] {
            let x = Tensor::randn([2, 1, s, s], (Kind::Float, Device::Cpu));
            let y = net.forward_t(&x, &Tensor::from(3.0), None, false).unwrap();
            assert_eq!(y.size(), [2, 1, s, s]);
        }
        for p in UNet2DConfig::PRESETS {
            UNet2DConfig::preset(p, [3, 32, 32]).unwrap();
        }
        let e = UNet2DConfig::preset("unet-huge", [3, 32, 32]).unwrap_err().to_string();
        assert!(e.contains("unet-huge") && e.contains("unet-tiny"), "{e}");
    }

    #[test]
    fn bad_configs_and_inputs_are_errors() {
        let base = UNet2DConfig::preset("unet-tiny", [1, 8, 8]).unwrap();
        for bad in [
            UNet2DConfig { attention: vec![true], ..base.clone() },
            UNet2DConfig { norm_num_groups: 5, ..base.clone() },
            UNet2DConfig { attention_head_dim: Some(24), ..base.clone() },
            UNet2DConfig { block_out_channels: vec![], attention: vec![], ..base.clone() },
            UNet2DConfig { dropout: 1.0, ..base.clone() },
        ] {
            assert!(matches!(bad.validate(), Err(DiffusionError::Config(_))), "{bad:?}");
        }
        let vs = VarStore::new(Device::Cpu);
        let net = UNet2DModel::new(vs.root(), UNet2DConfig { num_class_embeds: Some(3), ..base }).unwrap();
        let x = Tensor::zeros([2, 1, 8, 8], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[1i64, 2]);
        let e = net.forward_t(&x, &t, None, false).unwrap_err().to_string();
        assert!(e.contains("required"), "{e}");
        let e = net.forward_t(&x, &t, Some(&Tensor::from_slice(&[0i64, 3])), false).unwrap_err().to_string();
        assert!(e.contains("0..3"), "{e}");
        let rgb = Tensor::zeros([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        assert!(matches!(net.forward_t(&rgb, &t, None, false), Err(DiffusionError::Shape(_))));
        let t3 = Tensor::from_slice(&[1i64, 2, 3]);
        assert!(matches!(net.forward_t(&x, &t3, None, false), Err(DiffusionError::Shape(_))));
    }
}
