//! ControlNet (Zhang, Rao and Agrawala, "Adding Conditional Control to Text-to-Image Diffusion Models",
//! arXiv 2302.05543), as diffusers 0.42.1's `ControlNetModel` (`models/controlnets/controlnet.py`): a copy of a
//! UNet's encoder half (`conv_in`, time and added embeddings, down blocks, mid block) that also sees a control
//! image through `controlnet_cond_embedding`, and hands the UNet one zero-initialised 1x1 convolution of every
//! skip connection (`controlnet_down_blocks`) and of the mid block's output (`controlnet_mid_block`), which the
//! UNet adds to its own ([`UNet2DConditionModel::forward_controlled`]).
//!
//! Loads from a diffusers folder (`config.json`, `diffusion_pytorch_model.safetensors`) or an original
//! single-file checkpoint (`input_hint_block`, `zero_convs`, `middle_block_out`, with or without the
//! `control_model.` prefix, as diffusers' `convert_controlnet_checkpoint` reads them).
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::nn::{self, Module, VarStore};
use tch::{Device, Kind, Tensor};

use genlab_core::checkpoint::{load_named_into, read_safetensors};

use crate::error::{model_err, DiffusionError, Result};
use crate::sd::single_file;
use crate::sd::unet::{ControlResiduals, Encoder, UNet2DConditionConfig};
use crate::unet_2d_blocks::{down_pass, BlockContext};

/// A ControlNet's `config.json`: the encoder it copies, in the UNet's keys, and its own.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlNetConfig {
    /// The copied encoder's structure (`up_block_types` mirrors the down blocks; a ControlNet has none).
    pub unet: UNet2DConditionConfig,
    /// Channels of the control image (3).
    pub conditioning_channels: i64,
    /// `controlnet_cond_embedding`'s widths, (16, 32, 96, 256) for SD: each after the first halves the size.
    pub conditioning_embedding_out_channels: Vec<i64>,
    /// Average the residuals over space (diffusers' `global_pool_conditions`, shuffle ControlNets).
    pub global_pool_conditions: bool,
    /// The control image's channels are BGR (`controlnet_conditioning_channel_order = "bgr"`).
    pub bgr: bool,
}

impl ControlNetConfig {
    /// Parse a ControlNetModel `config.json` object; unsupported values are named.
    pub fn from_json_value(value: Value) -> Result<Self> {
        let Value::Object(mut map) = value else {
            return Err(DiffusionError::Config("ControlNetModel config: expected a JSON object".into()));
        };
        let int_list = |v: &Value| v.as_array().map(|a| a.iter().filter_map(Value::as_i64).collect::<Vec<_>>());
        let conditioning_channels = map.remove("conditioning_channels").map_or(Some(3), |v| v.as_i64());
        let widths = map.remove("conditioning_embedding_out_channels").map_or(Some(vec![16, 32, 96, 256]), |v| {
            if v.is_null() {
                Some(vec![16, 32, 96, 256])
            } else {
                int_list(&v)
            }
        });
        let global_pool_conditions = map.remove("global_pool_conditions").map_or(Some(false), |v| v.as_bool());
        let order = map
            .remove("controlnet_conditioning_channel_order")
            .map_or(Some("rgb".to_string()), |v| v.as_str().map(str::to_string));
        map.remove("addition_embed_type_num_heads");
        let (Some(conditioning_channels), Some(widths), Some(global_pool_conditions), Some(order)) =
            (conditioning_channels, widths, global_pool_conditions, order)
        else {
            return Err(DiffusionError::Config(
                "ControlNetModel config: conditioning_channels, conditioning_embedding_out_channels, \
                 global_pool_conditions or controlnet_conditioning_channel_order has the wrong type"
                    .into(),
            ));
        };
        if conditioning_channels < 1 || widths.is_empty() || widths.iter().any(|&w| w < 1) {
            return Err(DiffusionError::Config(format!(
                "ControlNetModel config: conditioning_channels {conditioning_channels} and \
                 conditioning_embedding_out_channels {widths:?} must be positive"
            )));
        }
        let bgr = match order.as_str() {
            "rgb" => false,
            "bgr" => true,
            o => {
                return Err(DiffusionError::Unsupported(format!(
                    "ControlNetModel controlnet_conditioning_channel_order = {o:?} (expected \"rgb\" or \"bgr\")"
                )))
            }
        };
        // The encoder's config in the UNet's terms, with up blocks mirroring the down blocks (validation wants them).
        let downs: Vec<String> = match map.get("down_block_types") {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| DiffusionError::Config(format!("ControlNetModel down_block_types: {e}")))?,
            None => UNet2DConditionConfig::default().down_block_types,
        };
        let ups: Vec<String> = downs.iter().rev().map(|t| t.replace("Down", "Up")).collect();
        map.insert("up_block_types".into(), serde_json::json!(ups));
        let unet = UNet2DConditionConfig::from_json_value(Value::Object(map))?;
        Ok(ControlNetConfig {
            unet,
            conditioning_channels,
            conditioning_embedding_out_channels: widths,
            global_pool_conditions,
            bgr,
        })
    }

    /// Read `config.json`; errors name the file.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| model_err(path, format!("cannot read: {e}")))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| model_err(path, format!("not valid JSON: {e}")))?;
        Self::from_json_value(value).map_err(|e| match e {
            DiffusionError::Unsupported(m) => DiffusionError::Unsupported(format!("{}: {m}", path.display())),
            DiffusionError::Config(m) => model_err(path, m),
            e => e,
        })
    }

    /// How much `controlnet_cond_embedding` shrinks the control image (8 for SD's four widths).
    pub fn image_factor(&self) -> i64 {
        1 << (self.conditioning_embedding_out_channels.len() - 1)
    }
}

/// diffusers' `ControlNetConditioningEmbedding`: conv, SiLU, then pairs of convs (the second of each with
/// stride 2), SiLU after each, and a zero-initialised `conv_out` to the UNet's first width.
#[derive(Debug)]
struct CondEmbedding {
    conv_in: nn::Conv2D,
    blocks: Vec<nn::Conv2D>,
    conv_out: nn::Conv2D,
}

impl CondEmbedding {
    fn new(vs: nn::Path<'_>, channels: i64, widths: &[i64], out: i64) -> Self {
        let c = |stride| nn::ConvConfig { padding: 1, stride, ..Default::default() };
        let conv_in = nn::conv2d(&vs / "conv_in", channels, widths[0], 3, c(1));
        let mut blocks = Vec::new();
        for w in widths.windows(2) {
            blocks.push(nn::conv2d(&vs / "blocks" / blocks.len(), w[0], w[0], 3, c(1)));
            blocks.push(nn::conv2d(&vs / "blocks" / blocks.len(), w[0], w[1], 3, c(2)));
        }
        let conv_out = nn::conv2d(&vs / "conv_out", widths[widths.len() - 1], out, 3, c(1));
        CondEmbedding { conv_in, blocks, conv_out }
    }

    /// # Shapes
    /// - `cond`: [batch, channels, h, w] -> [batch, out, h / factor, w / factor]
    fn forward(&self, cond: &Tensor) -> Tensor {
        let mut x = self.conv_in.forward(cond).silu();
        for b in &self.blocks {
            x = b.forward(&x).silu();
        }
        self.conv_out.forward(&x)
    }
}

/// How a ControlNet's residuals are weighed in one forward pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControlScale {
    /// diffusers' `conditioning_scale`.
    pub scale: f64,
    /// diffusers' `guess_mode`: residuals weighted from 0.1 (first skip) up to 1 (mid block), log-spaced.
    pub guess_mode: bool,
}

/// diffusers' `ControlNetModel` with its weights.
#[derive(Debug)]
pub struct ControlNet {
    pub cfg: ControlNetConfig,
    enc: Encoder,
    cond_embedding: CondEmbedding,
    down_zero: Vec<nn::Conv2D>,
    mid_zero: nn::Conv2D,
    vs: VarStore,
}

impl ControlNet {
    /// A ControlNet with random weights (zero convolutions zero, as the paper starts them), on `device`.
    pub fn new(cfg: ControlNetConfig, device: Device) -> Result<Self> {
        let vs = VarStore::new(device);
        let root = vs.root();
        let lv = cfg.unet.per_level()?;
        let (enc, cond_embedding, down_zero, mid_zero) = genlab_core::seed::with_generator_lock(|| -> Result<_> {
            let enc = Encoder::new(&root, &cfg.unet, &lv)?;
            let ch = &cfg.unet.block_out_channels;
            let cond_embedding = CondEmbedding::new(
                &root / "controlnet_cond_embedding",
                cfg.conditioning_channels,
                &cfg.conditioning_embedding_out_channels,
                ch[0],
            );
            let zero =
                nn::ConvConfig { ws_init: nn::Init::Const(0.0), bs_init: nn::Init::Const(0.0), ..Default::default() };
            let mut widths = vec![ch[0]];
            for (i, &c) in ch.iter().enumerate() {
                widths.extend(std::iter::repeat_n(c, lv.layers[i] as usize + usize::from(i + 1 < ch.len())));
            }
            let down_zero = widths
                .iter()
                .enumerate()
                .map(|(i, &c)| nn::conv2d(&root / "controlnet_down_blocks" / i, c, c, 1, zero))
                .collect();
            let last = ch[ch.len() - 1];
            let mid_zero = nn::conv2d(&root / "controlnet_mid_block", last, last, 1, zero);
            Ok((enc, cond_embedding, down_zero, mid_zero))
        })?;
        if enc.mid_block.is_none() {
            return Err(DiffusionError::Unsupported("a ControlNet needs a mid block (mid_block_type null)".into()));
        }
        Ok(ControlNet { cfg, enc, cond_embedding, down_zero, mid_zero, vs })
    }

    /// Load a diffusers ControlNet folder (`config.json`, `diffusion_pytorch_model.safetensors` or its sharded or
    /// fp16 variants) or an original single-file `.safetensors` checkpoint with the structure of `config` (a
    /// diffusers ControlNet folder or config.json). Every missing, unexpected and mis-shaped tensor is reported
    /// at once. The weights are converted to `kind`.
    pub fn open(path: &Path, config: Option<&Path>, device: Device, kind: Kind) -> Result<Self> {
        let net = if path.is_dir() {
            let cfg = ControlNetConfig::from_json_file(&path.join("config.json"))?;
            let net = Self::new(cfg, device)?;
            let (named, source) = crate::weights::read_weights(path, "diffusion_pytorch_model")?;
            load_named_into(&net.vs.variables(), &named, &source)?;
            net
        } else {
            let mut net = Self::from_single_file(path, config)?;
            net.vs.set_device(device);
            net
        };
        let mut net = net;
        if kind != Kind::Float {
            net.vs.set_kind(kind);
        }
        Ok(net)
    }

    fn from_single_file(path: &Path, config: Option<&Path>) -> Result<Self> {
        if !path.is_file() {
            return Err(model_err(path, "not found: expected a diffusers ControlNet folder or a .safetensors file"));
        }
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            return Err(model_err(path, "only .safetensors ControlNet checkpoints are read (a .pth is a pickle)"));
        }
        let Some(config) = config else {
            return Err(model_err(
                path,
                "a single-file ControlNet needs its structure: give --controlnet-config a diffusers ControlNet folder \
                 or config.json",
            ));
        };
        let config_file: PathBuf = if config.is_dir() { config.join("config.json") } else { config.to_path_buf() };
        let cfg = ControlNetConfig::from_json_file(&config_file)?;
        let net = Self::new(cfg, Device::Cpu)?;
        let named = read_safetensors(path)?;
        let prefix = if named.iter().any(|(k, _)| k.starts_with("control_model.")) { "control_model." } else { "" };
        let file: HashMap<String, Tensor> = named
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(prefix).map(|k| (k.to_string(), t.shallow_clone())))
            .collect();
        let lpb = net.cfg.unet.layers_per_block_uniform()?;
        let hint = net.cond_embedding.blocks.len();
        fn index(rest: &str) -> Option<(usize, &str)> {
            let (i, tail) = rest.split_once('.')?;
            Some((i.parse().ok()?, tail))
        }
        let to_original = |name: &str| -> (String, bool) {
            let mapped = if let Some((i, tail)) = name.strip_prefix("controlnet_down_blocks.").and_then(index) {
                format!("zero_convs.{i}.0.{tail}")
            } else if let Some(tail) = name.strip_prefix("controlnet_mid_block.") {
                format!("middle_block_out.0.{tail}")
            } else if let Some(tail) = name.strip_prefix("controlnet_cond_embedding.conv_in.") {
                format!("input_hint_block.0.{tail}")
            } else if let Some(tail) = name.strip_prefix("controlnet_cond_embedding.conv_out.") {
                format!("input_hint_block.{}.{tail}", 2 * (hint + 1))
            } else if let Some((k, tail)) = name.strip_prefix("controlnet_cond_embedding.blocks.").and_then(index) {
                format!("input_hint_block.{}.{tail}", 2 * (k + 1))
            } else if let Some(tail) = name.strip_prefix("add_embedding.linear_1.") {
                format!("label_emb.0.0.{tail}")
            } else if let Some(tail) = name.strip_prefix("add_embedding.linear_2.") {
                format!("label_emb.0.2.{tail}")
            } else {
                single_file::unet_key_to_original(name, lpb, &[])
            };
            (mapped, false)
        };
        let mut used = HashSet::new();
        let found = single_file::take_component(&file, &mut used, &net.vs.variables(), "", to_original);
        load_named_into(&net.vs.variables(), &found, path)?;
        Ok(net)
    }

    /// Whether this ControlNet's residuals fit a UNet of `unet`'s structure: the same input channels, widths,
    /// layers per block, block kinds, cross-attention width and added conditioning. The error names the first
    /// difference.
    pub fn check_fits(&self, unet: &UNet2DConditionConfig) -> Result<()> {
        let mine = &self.cfg.unet;
        let (lv, ulv) = (mine.per_level()?, unet.per_level()?);
        let d = |x: &dyn std::fmt::Debug| format!("{x:?}");
        let pairs = [
            ("in_channels", d(&mine.in_channels), d(&unet.in_channels)),
            ("block_out_channels", d(&mine.block_out_channels), d(&unet.block_out_channels)),
            ("layers_per_block", d(&lv.layers), d(&ulv.layers)),
            ("down_block_types", d(&mine.down_block_types), d(&unet.down_block_types)),
            ("cross_attention_dim", d(&lv.cross_attention_dim), d(&ulv.cross_attention_dim)),
            ("addition_embed_type", d(&mine.addition_embed_type), d(&unet.addition_embed_type)),
        ];
        match pairs.into_iter().find(|(_, a, b)| a != b) {
            Some((what, a, b)) => Err(DiffusionError::Shape(format!(
                "this ControlNet does not fit the model: its {what} is {a}, the UNet's {b} (a ControlNet for another \
                 base model?)"
            ))),
            None => Ok(()),
        }
    }

    /// The residuals this ControlNet adds to the UNet for `sample` at `timestep` with the text `context`
    /// (and SDXL's `added` conditioning) and the control image `cond` in [0, 1].
    ///
    /// # Shapes
    /// - `sample`: [batch, in_channels, h, w]; `context`: [batch, tokens, cross_attention_dim]
    /// - `cond`: [batch, conditioning_channels, h * f, w * f] with `f` = [`ControlNetConfig::image_factor`]
    /// - returns one residual per UNet skip connection and one for its mid block
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        context: &Tensor,
        added: Option<(&Tensor, &Tensor)>,
        cond: &Tensor,
        weigh: ControlScale,
    ) -> Result<ControlResiduals> {
        let (kind, device) = (self.enc.conv_in.ws.kind(), self.enc.conv_in.ws.device());
        let s = sample.size();
        let f = self.cfg.image_factor();
        let want = [s[0], self.cfg.conditioning_channels, s[2] * f, s[3] * f];
        if s.len() != 4 || s[1] != self.cfg.unet.in_channels || cond.size() != want {
            return Err(DiffusionError::Shape(format!(
                "ControlNet: sample {s:?} ({} channels expected) with a control image {:?}: expected the image as \
                 {want:?} (the latents' size times {f})",
                self.cfg.unet.in_channels,
                cond.size()
            )));
        }
        let cond = if self.cfg.bgr { cond.flip([1]) } else { cond.shallow_clone() };
        let emb = self.enc.embed(&self.cfg.unet, sample, timestep, added)?;
        let h = self.enc.conv_in.forward(sample) + self.cond_embedding.forward(&cond.to_device(device).to_kind(kind));
        let ctx = BlockContext { temb: &emb, train: false, encoder_hidden_states: Some(context), slice: None };
        let (h, skips) = down_pass(h, &self.enc.down_blocks, &ctx);
        let h = match &self.enc.mid_block {
            Some(mid) => mid.forward(&h, &ctx),
            None => h,
        };
        let n = skips.len();
        let (down_scales, mid_scale): (Vec<f64>, f64) = if weigh.guess_mode && !self.cfg.global_pool_conditions {
            // torch.logspace(-1, 0, n + 1): 10^(-1 + k / n).
            let s: Vec<f64> = (0..=n).map(|k| 10f64.powf(-1.0 + k as f64 / n as f64) * weigh.scale).collect();
            (s[..n].to_vec(), s[n])
        } else {
            (vec![weigh.scale; n], weigh.scale)
        };
        let pool =
            |t: Tensor| if self.cfg.global_pool_conditions { t.mean_dim([2, 3].as_slice(), true, None) } else { t };
        let down =
            skips.iter().zip(&self.down_zero).zip(&down_scales).map(|((x, z), &k)| pool(z.forward(x) * k)).collect();
        let mid = pool(self.mid_zero.forward(&h) * mid_scale);
        Ok(ControlResiduals { down, mid })
    }
}
