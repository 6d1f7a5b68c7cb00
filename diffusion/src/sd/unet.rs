//! diffusers' `UNet2DConditionModel`: the text-conditioned denoising U-Net of Stable Diffusion.
//!
//! - Rombach, Blattmann, Lorenz, Esser and Ommer, "High-Resolution Image Synthesis with Latent Diffusion
//!   Models", arXiv 2112.10752: the U-Net with cross-attention to the text encoder's hidden states (section 3.3).
//! - The transformer blocks: Vaswani et al., "Attention Is All You Need", arXiv 1706.03762; the GEGLU
//!   feed-forward: Shazeer, "GLU Variants Improve Transformer", arXiv 2002.05202.
//!
//! Follows diffusers 0.42.1: `models/unets/unet_2d_condition.py` (`UNet2DConditionModel`),
//! `models/unets/unet_2d_blocks.py` (`CrossAttnDownBlock2D`, `DownBlock2D`, `UNetMidBlock2DCrossAttn`,
//! `CrossAttnUpBlock2D`, `UpBlock2D`), `models/transformers/transformer_2d.py` (`Transformer2DModel`, continuous
//! input), `models/attention.py` (`BasicTransformerBlock`, `FeedForward`) and `models/attention_processor.py`
//! (`Attention` with `AttnProcessor2_0`, and `SlicedAttnProcessor` for [`UNet2DConditionModel::set_attention_slice`]).
//! Parameter names are diffusers', so `unet/diffusion_pytorch_model.safetensors` loads without renaming
//! (`tests/unet_condition_parity.rs` compares against diffusers on tiny SD 1.x- and 2.x-shaped models).
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::attention::{dims4, Transformer2D};
use crate::error::{DiffusionError, Result};
use crate::unet_2d_blocks::{down_pass, up_pass, BlockContext};
use genlab_core::checkpoint::load_named_into;
use genlab_core::layers::{
    timestep_embedding, Downsample2D, ResnetBlock2D, ResnetBlock2DConfig, TimestepEmbedding, Upsample2D,
};
use genlab_core::lora;

/// The weights file of a diffusers `unet/` folder.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
/// Its half-precision variant (`variant="fp16"`), used when [`WEIGHTS_FILE`] is absent.
pub const WEIGHTS_FILE_FP16: &str = "diffusion_pytorch_model.fp16.safetensors";

/// One value for every block, or one per block (diffusers accepts an int or a tuple for
/// `layers_per_block`, `attention_head_dim`, `transformer_layers_per_block`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    All(T),
    Each(Vec<T>),
}

impl<T: Clone + std::fmt::Debug> PerBlock<T> {
    /// One value per block for `n` blocks; a list of another length is an error naming `key`.
    pub fn resolve(&self, key: &str, n: usize) -> Result<Vec<T>> {
        match self {
            PerBlock::All(v) => Ok(vec![v.clone(); n]),
            PerBlock::Each(v) if v.len() == n => Ok(v.clone()),
            PerBlock::Each(v) => Err(DiffusionError::Config(format!(
                "UNet2DConditionModel: {key} = {v:?} has {} entries for {n} down blocks",
                v.len()
            ))),
        }
    }
}

/// diffusers' `sample_size`: an int (square) or `[height, width]`, in latent pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Square(i64),
    Rect([i64; 2]),
}

/// The configuration of a [`UNet2DConditionModel`]: diffusers' `unet/config.json`, with its field names.
/// Keys genlab does not read are ignored; missing keys take diffusers' `__init__` defaults
/// ([`UNet2DConditionConfig::default`]). Keys that change the architecture in ways genlab does not implement
/// (`class_embed_type`, `addition_embed_type`, `time_cond_proj_dim`, `encoder_hid_dim`, `dual_cross_attention`,
/// `attention_type`, ...) are refused with [`DiffusionError::Unsupported`] when set to anything but their default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UNet2DConditionConfig {
    pub sample_size: Option<SampleSize>,
    pub in_channels: i64,
    pub out_channels: i64,
    /// Map the input from [0, 1] to [-1, 1] first (`2 x - 1`).
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    /// `CrossAttnDownBlock2D` or `DownBlock2D`, one per level.
    pub down_block_types: Vec<String>,
    /// `UNetMidBlock2DCrossAttn`, or `None` for no mid block.
    pub mid_block_type: Option<String>,
    /// `CrossAttnUpBlock2D` or `UpBlock2D`, one per level, from the lowest resolution up.
    pub up_block_types: Vec<String>,
    /// Only `false` is supported.
    pub only_cross_attention: PerBlock<bool>,
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: PerBlock<i64>,
    pub downsample_padding: i64,
    pub mid_block_scale_factor: f64,
    /// Used by training only: [`UNet2DConditionModel::forward`] is inference (no dropout).
    pub dropout: f64,
    /// `silu` (or its alias `swish`).
    pub act_fn: String,
    /// `None` (no output norm) is not supported.
    pub norm_num_groups: Option<i64>,
    pub norm_eps: f64,
    /// The hidden size of the text encoder (one value for every block).
    pub cross_attention_dim: PerBlock<i64>,
    pub transformer_layers_per_block: PerBlock<i64>,
    /// diffusers' misnomer: while `num_attention_heads` is `None` this is the NUMBER OF HEADS of each
    /// block's transformer (`num_attention_heads = num_attention_heads or attention_head_dim` in
    /// `UNet2DConditionModel.__init__`), and the head size is `channels / heads`.
    pub attention_head_dim: PerBlock<i64>,
    /// The number of heads per block, if set (diffusers 0.42.1 itself still refuses it).
    pub num_attention_heads: Option<PerBlock<i64>>,
    /// Linear `proj_in` / `proj_out` in the transformers (SD 2.x) instead of 1x1 convolutions (SD 1.x).
    pub use_linear_projection: bool,
    /// Attention scores and softmax in f32 when the model runs in half precision (SD 2.1 needs it in f16).
    pub upcast_attention: bool,
    /// Only `default` is supported.
    pub resnet_time_scale_shift: String,
    /// Only `positional` is supported.
    pub time_embedding_type: String,
    pub conv_in_kernel: i64,
    pub conv_out_kernel: i64,
    /// `text_time` (SDXL: a pooled text embedding and six size/crop ids added to the timestep embedding)
    /// or `None`.
    pub addition_embed_type: Option<String>,
    /// SDXL: the sinusoidal embedding width of each added time id.
    pub addition_time_embed_dim: Option<i64>,
    /// SDXL: the input width of `add_embedding` (pooled text width + 6 x `addition_time_embed_dim`).
    pub projection_class_embeddings_input_dim: Option<i64>,
}

impl Default for UNet2DConditionConfig {
    /// diffusers' `UNet2DConditionModel.__init__` defaults (SD 1.x's layout with `cross_attention_dim` 1280).
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        UNet2DConditionConfig {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: s(&[
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: s(&["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
            only_cross_attention: PerBlock::All(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::All(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            dropout: 0.0,
            act_fn: "silu".into(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::All(1280),
            transformer_layers_per_block: PerBlock::All(1),
            attention_head_dim: PerBlock::All(8),
            num_attention_heads: None,
            use_linear_projection: false,
            upcast_attention: false,
            resnet_time_scale_shift: "default".into(),
            time_embedding_type: "positional".into(),
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            projection_class_embeddings_input_dim: None,
        }
    }
}

/// `config.json` keys genlab does not implement, each with the test for its default (which it accepts).
const UNSUPPORTED_KEYS: &[(&str, &str, fn(&Value) -> bool)] = &[
    ("class_embed_type", "null", Value::is_null),
    ("num_class_embeds", "null", Value::is_null),
    ("addition_embed_type", "null or \"text_time\"", |v| v.is_null() || v.as_str() == Some("text_time")),
    ("class_embeddings_concat", "false", is_false),
    ("encoder_hid_dim", "null", Value::is_null),
    ("encoder_hid_dim_type", "null", Value::is_null),
    ("dual_cross_attention", "false", is_false),
    ("resnet_skip_time_act", "false", is_false),
    ("resnet_out_scale_factor", "1.0", |v| v.as_f64() == Some(1.0)),
    ("time_embedding_dim", "null", Value::is_null),
    ("time_embedding_act_fn", "null", Value::is_null),
    ("timestep_post_act", "null", Value::is_null),
    ("time_cond_proj_dim", "null", Value::is_null),
    ("attention_type", "\"default\"", |v| v.as_str() == Some("default")),
    ("mid_block_only_cross_attention", "null or false", |v| v.is_null() || is_false(v)),
    ("cross_attention_norm", "null", Value::is_null),
    ("reverse_transformer_layers_per_block", "null", Value::is_null),
];

fn is_false(v: &Value) -> bool {
    v.as_bool() == Some(false)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The values of a configuration resolved per block (down-block order), after validation.
#[derive(Debug, Clone)]
pub(crate) struct PerLevel {
    pub(crate) layers: Vec<i64>,
    heads: Vec<i64>,
    transformer_layers: Vec<i64>,
    pub(crate) cross_attention_dim: i64,
    groups: i64,
}

impl UNet2DConditionConfig {
    /// Stable Diffusion 1.5's UNet (859,520,964 parameters):
    /// <https://huggingface.co/runwayml/stable-diffusion-v1-5/blob/main/unet/config.json>.
    pub fn sd15() -> Self {
        UNet2DConditionConfig {
            sample_size: Some(SampleSize::Square(64)),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::All(2),
            attention_head_dim: PerBlock::All(8),
            cross_attention_dim: PerBlock::All(768),
            down_block_types: strings(&[
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]),
            up_block_types: strings(&["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
            ..Self::default()
        }
    }

    /// Stable Diffusion 2.1's UNet (865,910,724 parameters): linear projections, 5/10/20/20 heads of 64
    /// channels, OpenCLIP's 1024-wide hidden states, upcast attention:
    /// <https://huggingface.co/stabilityai/stable-diffusion-2-1/blob/main/unet/config.json>.
    pub fn sd21() -> Self {
        UNet2DConditionConfig {
            sample_size: Some(SampleSize::Square(96)),
            attention_head_dim: PerBlock::Each(vec![5, 10, 20, 20]),
            cross_attention_dim: PerBlock::All(1024),
            use_linear_projection: true,
            upcast_attention: true,
            ..Self::sd15()
        }
    }

    /// Read diffusers' `unet/config.json`.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| DiffusionError::Model { path: path.to_path_buf(), message: format!("cannot read: {e}") })?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| DiffusionError::Model { path: path.to_path_buf(), message: format!("not valid JSON: {e}") })?;
        Self::from_json_value(value).map_err(|e| match e {
            DiffusionError::Unsupported(m) => DiffusionError::Unsupported(format!("{}: {m}", path.display())),
            DiffusionError::Config(m) => DiffusionError::Model { path: path.to_path_buf(), message: m },
            e => e,
        })
    }

    /// Parse a `config.json` object (see [`UNet2DConditionConfig::from_json_file`]).
    pub fn from_json_value(value: Value) -> Result<Self> {
        let Value::Object(map) = &value else {
            return Err(DiffusionError::Config(format!(
                "UNet2DConditionModel config: expected a JSON object, got {value}"
            )));
        };
        for (key, default, is_default) in UNSUPPORTED_KEYS {
            if let Some(v) = map.get(*key) {
                if !is_default(v) {
                    return Err(DiffusionError::Unsupported(format!(
                        "UNet2DConditionModel {key} = {v} (genlab supports only {default})"
                    )));
                }
            }
        }
        let cfg: Self = serde_json::from_value(value)
            .map_err(|e| DiffusionError::Config(format!("UNet2DConditionModel config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The channels of the timestep embedding (`4 * block_out_channels[0]`).
    /// `sample_size` as (height, width) in latent pixels (64 when the config has none, SD 1.x's).
    pub fn sample_hw(&self) -> (i64, i64) {
        match self.sample_size {
            Some(SampleSize::Square(s)) => (s, s),
            Some(SampleSize::Rect([h, w])) => (h, w),
            None => (64, 64),
        }
    }

    /// `layers_per_block` when every down block has the same count (what the original checkpoints' block
    /// numbering assumes).
    pub fn layers_per_block_uniform(&self) -> Result<usize> {
        let v = self.layers_per_block.resolve("layers_per_block", self.down_block_types.len())?;
        match v.first() {
            Some(&n) if n >= 1 && v.iter().all(|&x| x == n) => Ok(n as usize),
            _ => Err(DiffusionError::Unsupported(format!(
                "layers_per_block = {v:?}: single-file checkpoints need the same count in every block"
            ))),
        }
    }

    pub fn time_embed_dim(&self) -> i64 {
        4 * self.block_out_channels.first().copied().unwrap_or(0)
    }

    /// The hidden size the cross-attention layers expect of `encoder_hidden_states`.
    pub fn cross_attention_dim(&self) -> Result<i64> {
        Ok(self.per_level()?.cross_attention_dim)
    }

    /// Check every field, naming the first bad one: [`DiffusionError::Unsupported`] for a value genlab
    /// does not implement, [`DiffusionError::Config`] for an inconsistent one.
    pub fn validate(&self) -> Result<()> {
        self.per_level().map(|_| ())
    }

    pub(crate) fn per_level(&self) -> Result<PerLevel> {
        let unsupported = |key: &str, v: &dyn std::fmt::Debug, ok: &str| {
            Err(DiffusionError::Unsupported(format!("UNet2DConditionModel {key} = {v:?} (genlab supports {ok})")))
        };
        let bad = |msg: String| Err(DiffusionError::Config(format!("UNet2DConditionModel: {msg}")));
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return unsupported("act_fn", &self.act_fn, "\"silu\"");
        }
        if self.resnet_time_scale_shift != "default" {
            return unsupported("resnet_time_scale_shift", &self.resnet_time_scale_shift, "\"default\"");
        }
        if self.time_embedding_type != "positional" {
            return unsupported("time_embedding_type", &self.time_embedding_type, "\"positional\"");
        }
        if let Some(t) =
            self.down_block_types.iter().find(|t| !matches!(t.as_str(), "CrossAttnDownBlock2D" | "DownBlock2D"))
        {
            return unsupported("down_block_types", t, "\"CrossAttnDownBlock2D\" and \"DownBlock2D\"");
        }
        if let Some(t) = self.up_block_types.iter().find(|t| !matches!(t.as_str(), "CrossAttnUpBlock2D" | "UpBlock2D"))
        {
            return unsupported("up_block_types", t, "\"CrossAttnUpBlock2D\" and \"UpBlock2D\"");
        }
        if let Some(t) = self.mid_block_type.as_ref().filter(|t| *t != "UNetMidBlock2DCrossAttn") {
            return unsupported("mid_block_type", t, "\"UNetMidBlock2DCrossAttn\" and null");
        }
        let Some(groups) = self.norm_num_groups else {
            return unsupported("norm_num_groups", &self.norm_num_groups, "a number of groups");
        };
        let n = self.down_block_types.len();
        if n == 0 {
            return bad("down_block_types is empty".into());
        }
        if self.block_out_channels.len() != n || self.up_block_types.len() != n {
            return bad(format!(
                "{} down_block_types, {} up_block_types and {} block_out_channels: expected as many of each",
                n,
                self.up_block_types.len(),
                self.block_out_channels.len()
            ));
        }
        if self.only_cross_attention.resolve("only_cross_attention", n)?.iter().any(|&o| o) {
            return unsupported("only_cross_attention", &self.only_cross_attention, "false");
        }
        let cross = self.cross_attention_dim.resolve("cross_attention_dim", n)?;
        if cross.iter().any(|&c| c != cross[0]) {
            return unsupported("cross_attention_dim", &cross, "one dimension for every block");
        }
        let layers = self.layers_per_block.resolve("layers_per_block", n)?;
        let transformer_layers = self.transformer_layers_per_block.resolve("transformer_layers_per_block", n)?;
        let heads = self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim);
        let key = if self.num_attention_heads.is_some() { "num_attention_heads" } else { "attention_head_dim" };
        let heads = heads.resolve(key, n)?;
        if self.in_channels < 1 || self.out_channels < 1 {
            return bad(format!("channels must be positive, got in {} out {}", self.in_channels, self.out_channels));
        }
        if groups < 1 {
            return bad(format!("norm_num_groups must be positive, got {groups}"));
        }
        if let Some(c) = self.block_out_channels.iter().find(|&&c| c < 1 || c % groups != 0) {
            return bad(format!("block_out_channels {c} is not a positive multiple of norm_num_groups {groups}"));
        }
        for (i, ((&c, &h), &l)) in self.block_out_channels.iter().zip(&heads).zip(&transformer_layers).enumerate() {
            if h < 1 || h > c {
                return bad(format!(
                    "block {i} has {c} channels and {h} attention heads ({key}): expected 1..={c} heads"
                ));
            }
            if l < 1 {
                return bad(format!("transformer_layers_per_block must be positive, got {l} for block {i}"));
            }
        }
        if let Some(l) = layers.iter().find(|&&l| l < 1) {
            return bad(format!("layers_per_block must be positive, got {l}"));
        }
        if cross[0] < 1 {
            return bad(format!("cross_attention_dim must be positive, got {}", cross[0]));
        }
        for (key, k) in [("conv_in_kernel", self.conv_in_kernel), ("conv_out_kernel", self.conv_out_kernel)] {
            if k < 1 || k % 2 == 0 {
                return bad(format!("{key} must be odd and positive, got {k}"));
            }
        }
        if !(self.downsample_padding == 0 || self.downsample_padding == 1) {
            return unsupported("downsample_padding", &self.downsample_padding, "0 and 1");
        }
        let smallest = match self.sample_size {
            Some(SampleSize::Square(s)) => s,
            Some(SampleSize::Rect([h, w])) => h.min(w),
            None => 1,
        };
        {
            if smallest < 1 {
                return bad(format!("sample_size must be positive, got {:?}", self.sample_size));
            }
        }
        Ok(PerLevel { layers, heads, transformer_layers, cross_attention_dim: cross[0], groups })
    }

    fn resnet(&self, out_channels: i64, groups: i64, output_scale_factor: f64) -> ResnetBlock2DConfig {
        ResnetBlock2DConfig {
            out_channels: Some(out_channels),
            temb_channels: Some(self.time_embed_dim()),
            groups,
            groups_out: None,
            eps: self.norm_eps,
            dropout: self.dropout,
            output_scale_factor,
            use_in_shortcut: None,
        }
    }
}

/// A cross-attention transformer of level `lv` with `channels` channels.
fn transformer(
    vs: nn::Path<'_>,
    cfg: &UNet2DConditionConfig,
    lv: &PerLevel,
    channels: i64,
    heads: i64,
    layers: i64,
) -> Transformer2D {
    let (groups, cross, linear, upcast) =
        (lv.groups, lv.cross_attention_dim, cfg.use_linear_projection, cfg.upcast_attention);
    Transformer2D::new(vs, channels, heads, layers, groups, cross, linear, upcast)
}

type Layers = crate::unet_2d_blocks::Layers<Transformer2D>;
type DownBlock = crate::unet_2d_blocks::DownBlock<Transformer2D>;
type UpBlock = crate::unet_2d_blocks::UpBlock<Transformer2D>;

/// What a ControlNet adds to a UNet's skip connections and mid block (summed over several ControlNets).
#[derive(Debug)]
pub struct ControlResiduals {
    /// One per skip connection, in the order the down blocks produce them.
    pub down: Vec<Tensor>,
    pub mid: Tensor,
}

/// The half of a `UNet2DConditionModel` up to its mid block: `conv_in`, `time_embedding`, `add_embedding`,
/// `down_blocks`, `mid_block`. A ControlNet is this half again (diffusers' `ControlNetModel.from_unet` copies
/// exactly these), so both build and embed through it.
#[derive(Debug)]
pub(crate) struct Encoder {
    pub conv_in: lora::Conv2D,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<AddEmbedding>,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: Option<Layers>,
}

impl Encoder {
    pub(crate) fn new(vs: &nn::Path<'_>, cfg: &UNet2DConditionConfig, lv: &PerLevel) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let groups = lv.groups;
        let conv = |k: i64| nn::ConvConfig { padding: (k - 1) / 2, ..Default::default() };
        let conv_in =
            lora::conv2d(vs / "conv_in", cfg.in_channels, ch[0], cfg.conv_in_kernel, conv(cfg.conv_in_kernel));
        let time_embedding = TimestepEmbedding::new(vs / "time_embedding", ch[0], cfg.time_embed_dim());
        let add_embedding =
            match (&cfg.addition_embed_type, cfg.addition_time_embed_dim, cfg.projection_class_embeddings_input_dim) {
                (None, _, _) => None,
                (Some(_), Some(time_dim), Some(input_dim)) if time_dim > 0 && input_dim > 6 * time_dim => {
                    Some(AddEmbedding {
                        time_dim,
                        text_dim: input_dim - 6 * time_dim,
                        flip_sin_to_cos: cfg.flip_sin_to_cos,
                        freq_shift: cfg.freq_shift,
                        embedding: TimestepEmbedding::new(vs / "add_embedding", input_dim, cfg.time_embed_dim()),
                    })
                }
                (Some(t), time_dim, input_dim) => {
                    return Err(DiffusionError::Unsupported(format!(
                        "UNet2DConditionModel addition_embed_type = {t:?} needs addition_time_embed_dim and \
                     projection_class_embeddings_input_dim > 6 x it, got {time_dim:?} and {input_dim:?}"
                    )))
                }
            };

        let mut down_blocks = Vec::with_capacity(n);
        let mut output_channel = ch[0];
        for (i, &out) in ch.iter().enumerate() {
            let input_channel = output_channel;
            output_channel = out;
            let p = vs / "down_blocks" / i;
            let layers = lv.layers[i];
            let resnets = (0..layers)
                .map(|j| {
                    let c_in = if j == 0 { input_channel } else { out };
                    ResnetBlock2D::new(&p / "resnets" / j, c_in, cfg.resnet(out, groups, 1.0))
                })
                .collect();
            let attentions = if cfg.down_block_types[i] == "CrossAttnDownBlock2D" {
                (0..layers)
                    .map(|j| transformer(&p / "attentions" / j, cfg, lv, out, lv.heads[i], lv.transformer_layers[i]))
                    .collect()
            } else {
                Vec::new()
            };
            let downsampler = (i + 1 < n)
                .then(|| Downsample2D::with_padding(&p / "downsamplers" / 0, out, out, cfg.downsample_padding));
            down_blocks.push(DownBlock { layers: Layers { resnets, attentions }, downsampler });
        }

        let last = ch[n - 1];
        let mid_block = cfg.mid_block_type.as_ref().map(|_| {
            let p = vs / "mid_block";
            let scale = cfg.mid_block_scale_factor;
            Layers {
                resnets: (0..2)
                    .map(|j| ResnetBlock2D::new(&p / "resnets" / j, last, cfg.resnet(last, groups, scale)))
                    .collect(),
                attentions: vec![transformer(
                    &p / "attentions" / 0,
                    cfg,
                    lv,
                    last,
                    lv.heads[n - 1],
                    lv.transformer_layers[n - 1],
                )],
            }
        });
        Ok(Encoder { conv_in, time_embedding, add_embedding, down_blocks, mid_block })
    }

    /// The timestep embedding, plus SDXL's added conditioning where the model takes it.
    ///
    /// # Shapes
    /// - `timestep`: one element, or [batch]; `added`: ([batch, text_dim], [batch, 6]) -> [batch, time_embed_dim]
    pub(crate) fn embed(
        &self,
        cfg: &UNet2DConditionConfig,
        sample: &Tensor,
        timestep: &Tensor,
        added: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let batch = sample.size()[0];
        let t = match timestep.numel() as i64 {
            1 => timestep.reshape([1]).expand([batch], false),
            n if n == batch => timestep.reshape([batch]),
            n => {
                return Err(DiffusionError::Shape(format!(
                    "{n} timesteps (shape {:?}) for a batch of {batch}: expected one for all or one per sample",
                    timestep.size()
                )))
            }
        };
        let ch0 = cfg.block_out_channels[0];
        let t_emb = timestep_embedding(&t.to_device(sample.device()), ch0, cfg.flip_sin_to_cos, cfg.freq_shift);
        let mut emb = self.time_embedding.forward(&t_emb.to_kind(sample.kind()));
        match (&self.add_embedding, added) {
            (Some(a), Some((text, ids))) => emb += a.forward(text, ids, batch, sample)?,
            (None, None) => {}
            (Some(_), None) => {
                return Err(DiffusionError::Shape(
                    "this UNet (addition_embed_type text_time, SDXL) needs the pooled text embedding and the size ids"
                        .into(),
                ))
            }
            (None, Some(_)) => {
                return Err(DiffusionError::Shape("this UNet takes no added conditioning (not an SDXL UNet)".into()))
            }
        }
        Ok(emb)
    }
}

/// diffusers' `UNet2DConditionModel`: `conv_in`, `time_embedding`, `down_blocks`, `mid_block`, `up_blocks`
/// with skip concatenation, `conv_norm_out`, `conv_out`; cross-attention to `encoder_hidden_states` in every
/// transformer.
#[derive(Debug)]
pub struct UNet2DConditionModel {
    pub cfg: UNet2DConditionConfig,
    enc: Encoder,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: nn::GroupNorm,
    conv_out: lora::Conv2D,
    cross_attention_dim: i64,
    attention_slice: Option<i64>,
    /// Every linear and convolution layer, by name, for low-rank adapters.
    lora: lora::Targets,
}

/// SDXL's added conditioning: `add_time_proj` (sinusoidal, no weights) of each of the six size/crop ids,
/// concatenated after the pooled text embedding, through `add_embedding` (diffusers' `get_aug_embed`,
/// `addition_embed_type = "text_time"`).
#[derive(Debug)]
struct AddEmbedding {
    time_dim: i64,
    text_dim: i64,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    embedding: TimestepEmbedding,
}

impl AddEmbedding {
    /// # Shapes
    /// - `text`: [batch, text_dim], `ids`: [batch, 6] -> [batch, time_embed_dim]
    fn forward(&self, text: &Tensor, ids: &Tensor, batch: i64, sample: &Tensor) -> Result<Tensor> {
        if text.size() != [batch, self.text_dim] || ids.size() != [batch, 6] {
            return Err(DiffusionError::Shape(format!(
                "SDXL added conditioning: expected text_embeds [{batch}, {}] and time_ids [{batch}, 6], got {:?} and {:?}",
                self.text_dim,
                text.size(),
                ids.size()
            )));
        }
        let device = sample.device();
        let t = timestep_embedding(
            &ids.flatten(0, -1).to_device(device),
            self.time_dim,
            self.flip_sin_to_cos,
            self.freq_shift,
        )
        .reshape([batch, 6 * self.time_dim]);
        let x = Tensor::cat(&[text.to_device(device).to_kind(Kind::Float), t], 1).to_kind(sample.kind());
        Ok(self.embedding.forward(&x))
    }
}

impl UNet2DConditionModel {
    /// Build the network under `vs` with diffusers' parameter names (random weights).
    pub fn new(vs: nn::Path<'_>, cfg: &UNet2DConditionConfig) -> Result<Self> {
        let (model, targets) = lora::collect(|| Self::build(vs, cfg));
        Ok(UNet2DConditionModel { lora: targets, ..model? })
    }

    /// The layers low-rank adapters can attach to, by diffusers' module names (`down_blocks.0.attentions.0.proj_in`).
    pub fn lora_targets(&self) -> &lora::Targets {
        &self.lora
    }

    fn build(vs: nn::Path<'_>, cfg: &UNet2DConditionConfig) -> Result<Self> {
        let lv = cfg.per_level()?;
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let groups = lv.groups;
        let conv = |k: i64| nn::ConvConfig { padding: (k - 1) / 2, ..Default::default() };
        let enc = Encoder::new(&vs, cfg, &lv)?;

        let rev: Vec<i64> = ch.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        let mut output_channel = rev[0];
        for i in 0..n {
            let level = n - 1 - i;
            let prev_output_channel = output_channel;
            output_channel = rev[i];
            let input_channel = rev[(i + 1).min(n - 1)];
            let p = &vs / "up_blocks" / i;
            let layers = lv.layers[level] + 1;
            let resnets = (0..layers)
                .map(|j| {
                    let skip = if j == layers - 1 { input_channel } else { output_channel };
                    let c_in = if j == 0 { prev_output_channel } else { output_channel };
                    ResnetBlock2D::new(&p / "resnets" / j, c_in + skip, cfg.resnet(output_channel, groups, 1.0))
                })
                .collect();
            let attentions = if cfg.up_block_types[i] == "CrossAttnUpBlock2D" {
                (0..layers)
                    .map(|j| {
                        let (heads, tl) = (lv.heads[level], lv.transformer_layers[level]);
                        transformer(&p / "attentions" / j, cfg, &lv, output_channel, heads, tl)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let upsampler = (i + 1 < n).then(|| Upsample2D::new(&p / "upsamplers" / 0, output_channel, output_channel));
            up_blocks.push(UpBlock { layers: Layers { resnets, attentions }, upsampler });
        }

        let gn = nn::GroupNormConfig { eps: cfg.norm_eps, ..Default::default() };
        let conv_norm_out = nn::group_norm(&vs / "conv_norm_out", groups, ch[0], gn);
        let conv_out =
            lora::conv2d(&vs / "conv_out", ch[0], cfg.out_channels, cfg.conv_out_kernel, conv(cfg.conv_out_kernel));
        Ok(UNet2DConditionModel {
            cfg: cfg.clone(),
            enc,
            up_blocks,
            conv_norm_out,
            conv_out,
            cross_attention_dim: lv.cross_attention_dim,
            attention_slice: None,
            lora: lora::Targets::default(),
        })
    }

    /// Load a diffusers `unet/` folder: `config.json` and the weights, in this order of preference:
    /// `diffusion_pytorch_model.safetensors`, its sharded form (`.safetensors.index.json`), then the
    /// `fp16` variant (single or sharded). The weights are converted to `kind` on `device`; every
    /// missing, unexpected or mis-shaped tensor is reported at once.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<(Self, nn::VarStore)> {
        let cfg = UNet2DConditionConfig::from_json_file(&dir.join("config.json"))?;
        let (named, source) = crate::weights::read_weights(dir, "diffusion_pytorch_model")?;
        Self::load_named(&cfg, &named, &source, device, kind)
    }

    /// Build the model for `cfg` and copy `named` (diffusers' names) into it; `source` names where the
    /// tensors came from in errors. For loaders that read and rename the tensors themselves (single-file
    /// checkpoints).
    pub fn load_named(
        cfg: &UNet2DConditionConfig,
        named: &[(String, Tensor)],
        source: &Path,
        device: Device,
        kind: Kind,
    ) -> Result<(Self, nn::VarStore)> {
        let mut vs = nn::VarStore::new(device);
        let model = Self::new(vs.root(), cfg)?;
        if kind != Kind::Float {
            vs.set_kind(kind);
        }
        // `copy_` converts each tensor to the variable's kind and device.
        load_named_into(&vs.variables(), named, source)?;
        Ok((model, vs))
    }

    /// Compute attention over `slice` rows of the batch x heads dimension at a time (diffusers'
    /// `enable_attention_slicing(slice)`), or all at once with `None` (the default: fused
    /// scaled-dot-product attention). Slicing bounds the memory of attention where fused kernels are
    /// unavailable, at some cost in speed.
    pub fn set_attention_slice(&mut self, slice: Option<i64>) -> Result<()> {
        if let Some(s) = slice.filter(|&s| s < 1) {
            return Err(DiffusionError::Config(format!("attention slice size must be at least 1, got {s}")));
        }
        self.attention_slice = slice;
        Ok(())
    }

    pub fn attention_slice(&self) -> Option<i64> {
        self.attention_slice
    }

    /// The hidden size this model's cross-attention expects of `encoder_hidden_states`.
    pub fn cross_attention_dim(&self) -> i64 {
        self.cross_attention_dim
    }

    /// The noise (or velocity) prediction for `sample` at `timestep`, conditioned on the text.
    /// Runs in the weights' kind (f16/bf16 on a GPU, f32 on the CPU); the timestep embedding is computed
    /// in f32 and then cast, as diffusers does.
    ///
    /// # Shapes
    /// - `sample`: [batch, in_channels, height, width], any height and width (sizes not divisible by
    ///   2^(levels - 1) upsample to the skip connections' sizes, as diffusers' `forward_upsample_size`)
    /// - `timestep`: a scalar (or one element) for the whole batch, or [batch]; any numeric kind
    /// - `encoder_hidden_states`: [batch, tokens, cross_attention_dim]
    /// - returns [batch, out_channels, height, width]
    pub fn forward(&self, sample: &Tensor, timestep: &Tensor, encoder_hidden_states: &Tensor) -> Result<Tensor> {
        self.forward_added(sample, timestep, encoder_hidden_states, None)
    }

    /// Whether the model takes SDXL's added conditioning ([`forward_added`](Self::forward_added)).
    pub fn takes_added_conditioning(&self) -> bool {
        self.enc.add_embedding.is_some()
    }

    /// The pooled text width SDXL's added conditioning expects, if the model takes it.
    pub fn added_text_dim(&self) -> Option<i64> {
        self.enc.add_embedding.as_ref().map(|a| a.text_dim)
    }

    /// [`forward`](Self::forward) with SDXL's added conditioning (`addition_embed_type = "text_time"`):
    /// `added = (text_embeds, time_ids)`, embedded as diffusers' `get_aug_embed` does and added to the
    /// timestep embedding. A model with added conditioning needs it; one without refuses it.
    ///
    /// # Shapes
    /// - `text_embeds`: [batch, text_dim] (the second text encoder's pooled projection)
    /// - `time_ids`: [batch, 6] (original height, width, crop top, left, target height, width)
    pub fn forward_added(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        added: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        self.forward_controlled(sample, timestep, encoder_hidden_states, added, None)
    }

    /// [`forward_added`](Self::forward_added) with a ControlNet's residuals added to the skip connections and
    /// to the mid block's output (diffusers' `down_block_additional_residuals`, `mid_block_additional_residual`).
    ///
    /// # Shapes
    /// - `residuals.down[i]`: the shape of skip `i` (`conv_in`'s output first, then every ResNet layer and
    ///   downsampler of the down blocks); `residuals.mid`: the mid block's output
    pub fn forward_controlled(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        added: Option<(&Tensor, &Tensor)>,
        residuals: Option<&ControlResiduals>,
    ) -> Result<Tensor> {
        self.check_inputs(sample, encoder_hidden_states)?;
        let emb = self.enc.embed(&self.cfg, sample, timestep, added)?;
        let context = encoder_hidden_states;
        let slice = self.attention_slice;

        let (_, _, height, width) = dims4(sample);
        let factor = 1i64 << self.up_blocks.iter().filter(|b| b.upsampler.is_some()).count();
        let forward_upsample_size = height % factor != 0 || width % factor != 0;

        let sample = if self.cfg.center_input_sample { sample * 2.0 - 1.0 } else { sample.shallow_clone() };
        let h = self.enc.conv_in.forward(&sample);
        let ctx = BlockContext { temb: &emb, train: false, encoder_hidden_states: Some(context), slice };
        let (h, mut skips) = down_pass(h, &self.enc.down_blocks, &ctx);
        if let Some(r) = residuals {
            let shapes = |v: &[Tensor]| v.iter().map(Tensor::size).collect::<Vec<_>>();
            if shapes(&r.down) != shapes(&skips) {
                return Err(DiffusionError::Shape(format!(
                    "ControlNet residuals of shapes {:?} for skip connections of shapes {:?}",
                    shapes(&r.down),
                    shapes(&skips)
                )));
            }
            skips = skips.iter().zip(&r.down).map(|(s, d)| s + d).collect();
        }
        let h = match &self.enc.mid_block {
            Some(mid) => mid.forward(&h, &ctx),
            None => h,
        };
        // Out of place: without a mid block `h` shares its storage with the last skip.
        let h = match residuals {
            Some(r) if r.mid.size() != h.size() => {
                return Err(DiffusionError::Shape(format!(
                    "ControlNet mid residual of shape {:?} for a mid block output of shape {:?}",
                    r.mid.size(),
                    h.size()
                )))
            }
            Some(r) => h + &r.mid,
            None => h,
        };
        let h = up_pass(h, skips, &self.up_blocks, &ctx, forward_upsample_size)?;
        Ok(self.conv_out.forward(&self.conv_norm_out.forward(&h).silu()))
    }

    /// The batch size, after checking ranks, channels, hidden size, kinds and devices.
    fn check_inputs(&self, sample: &Tensor, context: &Tensor) -> Result<i64> {
        let (c_in, cross) = (self.cfg.in_channels, self.cross_attention_dim);
        let batch = match sample.size().as_slice() {
            &[b, c, h, w] if c == c_in && b > 0 && h > 0 && w > 0 => b,
            s => {
                return Err(DiffusionError::Shape(format!(
                    "UNet2DConditionModel sample has shape {s:?}: expected [batch, {c_in}, height, width] \
                     ({c_in} channels)"
                )))
            }
        };
        match context.size().as_slice() {
            &[b, t, d] if b == batch && d == cross && t > 0 => {}
            s => {
                return Err(DiffusionError::Shape(format!(
                    "encoder_hidden_states has shape {s:?}: expected [{batch}, tokens, {cross}] \
                     (the sample's batch, cross_attention_dim {cross})"
                )))
            }
        }
        let (kind, device) = (self.enc.conv_in.ws.kind(), self.enc.conv_in.ws.device());
        for (what, t) in [("sample", sample), ("encoder_hidden_states", context)] {
            if t.kind() != kind || t.device() != device {
                return Err(DiffusionError::Shape(format!(
                    "{what} is {:?} on {:?}, but the UNet's weights are {kind:?} on {device:?}",
                    t.kind(),
                    t.device()
                )));
            }
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_resolve_heads() {
        for cfg in [UNet2DConditionConfig::default(), UNet2DConditionConfig::sd15(), UNet2DConditionConfig::sd21()] {
            cfg.validate().unwrap();
        }
        let lv = UNet2DConditionConfig::sd21().per_level().unwrap();
        assert_eq!(lv.heads, [5, 10, 20, 20]);
        assert_eq!(lv.cross_attention_dim, 1024);
        let json = serde_json::to_value(UNet2DConditionConfig::sd15()).unwrap();
        assert_eq!(UNet2DConditionConfig::from_json_value(json).unwrap(), UNet2DConditionConfig::sd15());
    }

    #[test]
    fn missing_keys_take_diffusers_defaults_and_bad_values_are_named() {
        let cfg =
            UNet2DConditionConfig::from_json_value(serde_json::json!({"cross_attention_dim": 768, "x": 1})).unwrap();
        assert_eq!(cfg, UNet2DConditionConfig { cross_attention_dim: PerBlock::All(768), ..Default::default() });
        for (json, want) in [
            (serde_json::json!({"layers_per_block": [1, 2]}), "layers_per_block"),
            (serde_json::json!({"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}), "UNetMidBlock2DSimpleCrossAttn"),
            (serde_json::json!({"resnet_time_scale_shift": "scale_shift"}), "scale_shift"),
            (serde_json::json!({"only_cross_attention": true}), "only_cross_attention"),
            (serde_json::json!({"attention_head_dim": 0}), "attention_head_dim"),
        ] {
            let e = UNet2DConditionConfig::from_json_value(json).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
