//! The CLIP text transformer of Stable-Diffusion-compatible models (Radford et al. 2021, "Learning
//! Transferable Visual Models From Natural Language Supervision", arXiv 2103.00020), as Stable Diffusion
//! 1.x (OpenAI's ViT-L/14 text tower) and 2.x (OpenCLIP ViT-H/14's, less its last layer) condition on it.
//!
//! Follows Hugging Face transformers' `CLIPTextModel` (`src/transformers/models/clip/modeling_clip.py`:
//! `CLIPTextEmbeddings`, `CLIPAttention`, `CLIPMLP`, `CLIPEncoderLayer`, `CLIPTextTransformer`): token plus
//! learned position embeddings, pre-LayerNorm transformer layers with causal self-attention, a final
//! LayerNorm. Parameter names are transformers' (`text_model.encoder.layers.0.self_attn.q_proj.weight`), so a
//! `text_encoder/model.safetensors` loads without renaming. Only the hidden states are computed: Stable
//! Diffusion uses neither the pooled output nor an attention mask (diffusers' pipelines pass none).
//!
//! Original single-file checkpoints name the same weights differently; [`from_original_checkpoint`] renames
//! them after diffusers' `convert_ldm_clip_checkpoint` (SD 1.x: `cond_stage_model.transformer.*`) and
//! `convert_open_clip_checkpoint` (SD 2.x: `cond_stage_model.model.*`, fused q/k/v, one layer dropped)
//! in `src/diffusers/loaders/single_file_utils.py`.
use std::path::Path;

use genlab_core::checkpoint::load_named_into;
use genlab_core::lora;
use genlab_core::CoreError;
use serde::{Deserialize, Serialize};
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

use crate::error::{DiffusionError, Result};

/// The prefix transformers' `CLIPTextModel` puts before every parameter name.
pub const PREFIX: &str = "text_model.";
/// The weights file of a `text_encoder/` folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of a sharded weights file (`weight_map`: parameter name -> shard file).
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
/// The configuration file of a `text_encoder/` folder.
pub const CONFIG_FILE: &str = "config.json";

/// The activation of the MLPs: CLIP's sigmoid approximation or the exact (erf) GELU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP, SD 1.x).
    QuickGelu,
    /// `x * Phi(x)`, exact (OpenCLIP, SD 2.x).
    Gelu,
}

impl ClipActivation {
    /// Parse transformers' `hidden_act`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            other => Err(DiffusionError::Unsupported(format!(
                "CLIP text model hidden_act `{other}`: expected `quick_gelu` or `gelu`"
            ))),
        }
    }

    fn apply(self, xs: &Tensor) -> Tensor {
        match self {
            Self::QuickGelu => xs * (xs * 1.702).sigmoid(),
            Self::Gelu => xs.gelu("none"),
        }
    }
}

/// transformers' `CLIPTextConfig`, as a `text_encoder/config.json` holds it. Keys genlab does not use
/// (`projection_dim`, token ids, dropout, ...) are ignored; missing keys take transformers' defaults
/// ([`Default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    /// The longest input: the number of learned position embeddings (77).
    pub max_position_embeddings: i64,
    /// `quick_gelu` or `gelu` (see [`ClipActivation`]).
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    /// `["CLIPTextModelWithProjection"]` adds the `text_projection` of the pooled output (SDXL's second
    /// text encoder); anything else is the plain `CLIPTextModel`.
    pub architectures: Vec<String>,
    /// The width of `text_projection`'s output.
    pub projection_dim: i64,
    /// Where the pooled output is taken: the first position of this id, or (the legacy value 2) the
    /// position of the largest id, as transformers does.
    pub eos_token_id: i64,
}

impl Default for ClipTextConfig {
    /// transformers' `CLIPTextConfig()` defaults: the text tower of CLIP ViT-B/32 in the paper.
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            architectures: Vec::new(),
            projection_dim: 512,
            eos_token_id: 2,
        }
    }
}

impl ClipTextConfig {
    /// Stable Diffusion 1.x's text encoder, OpenAI's `openai/clip-vit-large-patch14` text tower:
    /// <https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/blob/main/text_encoder/config.json>
    /// (the text config of <https://huggingface.co/openai/clip-vit-large-patch14/blob/main/config.json>).
    pub fn sd15() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            architectures: vec!["CLIPTextModel".into()],
            projection_dim: 768,
            eos_token_id: 2,
        }
    }

    /// Stable Diffusion 2.x's text encoder, OpenCLIP ViT-H/14's text tower without its last of 24 layers:
    /// <https://huggingface.co/stabilityai/stable-diffusion-2-1/blob/main/text_encoder/config.json>.
    pub fn sd21() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 23,
            num_attention_heads: 16,
            max_position_embeddings: 77,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-5,
            architectures: vec!["CLIPTextModel".into()],
            projection_dim: 512,
            eos_token_id: 2,
        }
    }

    /// Read and [`validate`](Self::validate) a transformers `config.json`. A missing or unparsable file is
    /// [`DiffusionError::Model`] naming it; an unsupported `hidden_act` is [`DiffusionError::Unsupported`].
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let model_err = |message: String| DiffusionError::Model { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| model_err(format!("cannot read the config: {e}")))?;
        let cfg: Self =
            serde_json::from_str(&text).map_err(|e| model_err(format!("not a CLIP text model config: {e}")))?;
        cfg.validate().map_err(|e| match e {
            DiffusionError::Unsupported(m) => DiffusionError::Unsupported(format!("{m} (in {})", path.display())),
            other => model_err(other.to_string()),
        })?;
        Ok(cfg)
    }

    /// The MLP activation named by `hidden_act`.
    pub fn activation(&self) -> Result<ClipActivation> {
        ClipActivation::from_name(&self.hidden_act)
    }

    /// Every size positive, `hidden_size` divisible by `num_attention_heads`, a supported `hidden_act`.
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(DiffusionError::Core(CoreError::Config(format!("CLIP text model: {m}"))));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v <= 0 {
                return invalid(format!("{name} is {v}, expected a positive number"));
            }
        }
        if self.num_hidden_layers == 0 {
            return invalid("num_hidden_layers is 0, expected at least 1".into());
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return invalid(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return invalid(format!("layer_norm_eps is {}, expected a positive number", self.layer_norm_eps));
        }
        self.activation().map(|_| ())
    }
}

/// transformers' `CLIPAttention` with the causal mask `CLIPTextTransformer` gives it.
struct ClipAttention {
    q_proj: lora::Linear,
    k_proj: lora::Linear,
    v_proj: lora::Linear,
    out_proj: lora::Linear,
    heads: i64,
    head_dim: i64,
}

impl ClipAttention {
    fn new(vs: nn::Path<'_>, cfg: &ClipTextConfig) -> Self {
        let h = cfg.hidden_size;
        let lin = |name: &str| lora::linear(&vs / name, h, h, Default::default());
        Self {
            q_proj: lin("q_proj"),
            k_proj: lin("k_proj"),
            v_proj: lin("v_proj"),
            out_proj: lin("out_proj"),
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
        }
    }

    /// # Shapes
    /// - `xs`: [batch, seq, hidden] -> [batch, seq, hidden]
    fn forward(&self, xs: &Tensor) -> Tensor {
        let (b, s) = (xs.size()[0], xs.size()[1]);
        let split = |t: Tensor| t.view([b, s, self.heads, self.head_dim]).transpose(1, 2);
        let q = split(xs.apply(&self.q_proj));
        let k = split(xs.apply(&self.k_proj));
        let v = split(xs.apply(&self.v_proj));
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let o = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, true, scale, false);
        o.transpose(1, 2).reshape([b, s, self.heads * self.head_dim]).apply(&self.out_proj)
    }
}

/// transformers' `CLIPEncoderLayer`: pre-LayerNorm attention and MLP, each with a residual.
struct ClipEncoderLayer {
    self_attn: ClipAttention,
    layer_norm1: nn::LayerNorm,
    fc1: lora::Linear,
    fc2: lora::Linear,
    layer_norm2: nn::LayerNorm,
    activation: ClipActivation,
}

impl ClipEncoderLayer {
    fn new(vs: nn::Path<'_>, cfg: &ClipTextConfig, activation: ClipActivation) -> Self {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let ln = |name: &str| {
            nn::layer_norm(&vs / name, vec![h], nn::LayerNormConfig { eps: cfg.layer_norm_eps, ..Default::default() })
        };
        let mlp = &vs / "mlp";
        Self {
            self_attn: ClipAttention::new(&vs / "self_attn", cfg),
            layer_norm1: ln("layer_norm1"),
            fc1: lora::linear(&mlp / "fc1", h, i, Default::default()),
            fc2: lora::linear(&mlp / "fc2", i, h, Default::default()),
            layer_norm2: ln("layer_norm2"),
            activation,
        }
    }

    /// # Shapes
    /// - `xs`: [batch, seq, hidden] -> [batch, seq, hidden]
    fn forward(&self, xs: &Tensor) -> Tensor {
        let xs = xs + self.self_attn.forward(&xs.apply(&self.layer_norm1));
        let mlp = self.activation.apply(&xs.apply(&self.layer_norm2).apply(&self.fc1)).apply(&self.fc2);
        xs + mlp
    }
}

/// transformers' `CLIPTextModel` (its `text_model`, a `CLIPTextTransformer`), hidden states only, or
/// `CLIPTextModelWithProjection` (with `text_projection` of the pooled output) when the config says so.
pub struct ClipTextModel {
    token_embedding: nn::Embedding,
    position_embedding: nn::Embedding,
    layers: Vec<ClipEncoderLayer>,
    final_layer_norm: nn::LayerNorm,
    text_projection: Option<lora::Linear>,
    cfg: ClipTextConfig,
    device: Device,
    /// Every linear layer, by name, for low-rank adapters.
    lora: lora::Targets,
}

impl ClipTextModel {
    /// Declare the model's variables under `vs / "text_model"`, named as transformers names them.
    pub fn new(vs: nn::Path<'_>, cfg: &ClipTextConfig) -> Result<Self> {
        let (model, targets) = lora::collect(|| Self::build(vs, cfg));
        Ok(ClipTextModel { lora: targets, ..model? })
    }

    /// The layers low-rank adapters can attach to, by transformers' module names
    /// (`text_model.encoder.layers.0.self_attn.q_proj`, `text_projection`).
    pub fn lora_targets(&self) -> &lora::Targets {
        &self.lora
    }

    fn build(vs: nn::Path<'_>, cfg: &ClipTextConfig) -> Result<Self> {
        cfg.validate()?;
        let activation = cfg.activation()?;
        let tm = &vs / "text_model";
        let emb = &tm / "embeddings";
        let token_embedding =
            nn::embedding(&emb / "token_embedding", cfg.vocab_size, cfg.hidden_size, Default::default());
        let position_embedding = nn::embedding(
            &emb / "position_embedding",
            cfg.max_position_embeddings,
            cfg.hidden_size,
            Default::default(),
        );
        let enc = &tm / "encoder" / "layers";
        let layers = (0..cfg.num_hidden_layers).map(|i| ClipEncoderLayer::new(&enc / i, cfg, activation)).collect();
        let final_layer_norm = nn::layer_norm(
            &tm / "final_layer_norm",
            vec![cfg.hidden_size],
            nn::LayerNormConfig { eps: cfg.layer_norm_eps, ..Default::default() },
        );
        let with_projection = cfg.architectures.iter().any(|a| a == "CLIPTextModelWithProjection");
        let text_projection = with_projection.then(|| {
            let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
            lora::linear(&vs / "text_projection", cfg.hidden_size, cfg.projection_dim, no_bias)
        });
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            text_projection,
            cfg: cfg.clone(),
            device: vs.device(),
            lora: lora::Targets::default(),
        })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &ClipTextConfig {
        &self.cfg
    }

    /// Give token ids `first_id..` the embeddings `rows` (transformers' `resize_token_embeddings` then the
    /// rows written, as diffusers' `load_textual_inversion` does): the embedding table keeps its first
    /// `first_id` rows and grows by `rows`, in the table's kind and on its device.
    ///
    /// # Shapes
    /// - `rows`: [n, hidden_size]
    pub fn add_token_embeddings(&mut self, first_id: i64, rows: &Tensor) -> Result<()> {
        let ws = &mut self.token_embedding.ws;
        let (have, hidden) = (ws.size()[0], self.cfg.hidden_size);
        if rows.dim() != 2 || rows.size()[1] != hidden || rows.size()[0] < 1 {
            return Err(DiffusionError::Shape(format!(
                "token embeddings: expected [n, {hidden}] rows for this text encoder, got {:?}",
                rows.size()
            )));
        }
        if !(0..=have).contains(&first_id) {
            return Err(DiffusionError::Shape(format!(
                "token embeddings: the first new id {first_id} is outside 0..={have} (the table's rows)"
            )));
        }
        let grown = Tensor::cat(&[ws.narrow(0, 0, first_id), rows.to_device(ws.device()).to_kind(ws.kind())], 0);
        // `set_data` keeps the variable (the VarStore's and this layer's handle) and replaces its rows.
        tch::no_grad(|| ws.set_data(&grown));
        self.cfg.vocab_size = grown.size()[0];
        Ok(())
    }

    /// transformers' `last_hidden_state`: the last layer's output through the final LayerNorm, what Stable
    /// Diffusion's U-Net cross-attends to. `input_ids` may live on any device; they are moved to the model's.
    ///
    /// # Shapes
    /// - `input_ids`: [batch, seq] (int64 or int32), `1 <= seq <= max_position_embeddings`
    /// - returns: [batch, seq, hidden_size]
    ///
    /// A wrong rank, a too-long sequence or an id outside the vocabulary is [`DiffusionError::Shape`].
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.forward_clip_skip(input_ids, 0)
    }

    /// diffusers' `clip_skip`: the output of layer `num_hidden_layers - clip_skip` (0: the embeddings)
    /// through the final LayerNorm; `clip_skip` 0 is [`forward`](Self::forward). More than
    /// `num_hidden_layers` is [`DiffusionError::Unsupported`].
    ///
    /// # Shapes
    /// - `input_ids`: [batch, seq] (int64 or int32), `1 <= seq <= max_position_embeddings`
    /// - returns: [batch, seq, hidden_size]
    pub fn forward_clip_skip(&self, input_ids: &Tensor, clip_skip: usize) -> Result<Tensor> {
        let n = self.layers.len();
        if clip_skip > n {
            return Err(DiffusionError::Unsupported(format!(
                "clip_skip {clip_skip}: the text model has only {n} layers (expected 0..={n})"
            )));
        }
        let ids = self.check_ids(input_ids)?;
        let seq = ids.size()[1];
        let mut xs = ids.apply(&self.token_embedding) + self.position_embedding.ws.narrow(0, 0, seq);
        for layer in &self.layers[..n - clip_skip] {
            xs = layer.forward(&xs);
        }
        Ok(xs.apply(&self.final_layer_norm))
    }

    /// What SDXL's pipeline takes from each text encoder: the hidden state `clip_skip + 2` from the end of
    /// transformers' `hidden_states` (the output of the first `num_hidden_layers - 1 - clip_skip` layers, no
    /// final LayerNorm), and, for a model with `text_projection`, the projected pooled output (the final
    /// LayerNorm's output at the end token, see [`ClipTextConfig::eos_token_id`]).
    ///
    /// # Shapes
    /// - `input_ids`: [batch, seq] -> hidden [batch, seq, hidden_size], pooled [batch, projection_dim]
    pub fn penultimate_and_pooled(&self, input_ids: &Tensor, clip_skip: usize) -> Result<(Tensor, Option<Tensor>)> {
        let n = self.layers.len();
        if clip_skip + 1 > n {
            return Err(DiffusionError::Unsupported(format!(
                "clip_skip {clip_skip}: the text model has only {n} layers (expected 0..={})",
                n.saturating_sub(1)
            )));
        }
        let ids = self.check_ids(input_ids)?;
        let seq = ids.size()[1];
        let mut xs = ids.apply(&self.token_embedding) + self.position_embedding.ws.narrow(0, 0, seq);
        let mut hidden = xs.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.forward(&xs);
            if i + 2 + clip_skip == n {
                hidden = xs.shallow_clone();
            }
        }
        if n == 1 + clip_skip {
            // hidden_states[-(clip_skip + 2)] is then the embeddings.
            hidden = ids.apply(&self.token_embedding) + self.position_embedding.ws.narrow(0, 0, seq);
        }
        let pooled = match &self.text_projection {
            None => None,
            Some(proj) => {
                let last = xs.apply(&self.final_layer_norm);
                let ids64 = ids.to_kind(Kind::Int64);
                let pos = if self.cfg.eos_token_id == 2 {
                    ids64.argmax(-1, false)
                } else {
                    ids64.eq(self.cfg.eos_token_id).to_kind(Kind::Int).argmax(-1, false)
                };
                let rows = Tensor::arange(last.size()[0], (Kind::Int64, last.device()));
                let pooled = last.index(&[Some(rows), Some(pos)]);
                Some(pooled.apply(proj))
            }
        };
        Ok((hidden, pooled))
    }

    /// The ids on the model's device, or an error saying why they cannot be embedded.
    fn check_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let shape = ids.size();
        let max = self.cfg.max_position_embeddings;
        let &[_, seq] = shape.as_slice() else {
            return Err(DiffusionError::Shape(format!(
                "CLIP text model input ids: expected [batch, seq], got {shape:?}"
            )));
        };
        if !(1..=max).contains(&seq) {
            return Err(DiffusionError::Shape(format!(
                "CLIP text model input ids: {seq} tokens, expected 1..={max} (max_position_embeddings)"
            )));
        }
        if !matches!(ids.kind(), Kind::Int64 | Kind::Int) {
            return Err(DiffusionError::Shape(format!(
                "CLIP text model input ids: expected int64 or int32 token ids, got {:?}",
                ids.kind()
            )));
        }
        if ids.numel() > 0 {
            let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
            if lo < 0 || hi >= self.cfg.vocab_size {
                let bad = if lo < 0 { lo } else { hi };
                return Err(DiffusionError::Shape(format!(
                    "CLIP text model input ids: token id {bad} is outside the vocabulary 0..{}",
                    self.cfg.vocab_size
                )));
            }
        }
        Ok(ids.to_device(self.device))
    }

    /// Load a transformers `text_encoder/` folder: `config.json` and `model.safetensors` (or a sharded
    /// `model.safetensors.index.json`), onto `device` in f32. Names with or without the `text_model.` prefix
    /// (transformers 4 wrote it, 5 does not) are accepted. Every missing, unexpected and mis-shaped tensor is
    /// reported at once, naming the file. The returned VarStore holds the weights (for `half()`, `freeze()`).
    pub fn load(dir: &Path, device: Device) -> Result<(Self, VarStore)> {
        let cfg = ClipTextConfig::from_json_file(&dir.join(CONFIG_FILE))?;
        let (named, source) = crate::weights::read_weights(dir, "model")?;
        Self::load_named(&cfg, named, &source, device)
    }

    /// Build the model for `cfg` and copy `named` into it, as [`load`](Self::load) does for a folder; `source`
    /// is the file the tensors came from, named in errors. Names are normalised first: the `text_model.`
    /// prefix is added where absent and the non-persistent buffer `embeddings.position_ids` is dropped.
    pub fn load_named(
        cfg: &ClipTextConfig,
        named: Vec<(String, Tensor)>,
        source: &Path,
        device: Device,
    ) -> Result<(Self, VarStore)> {
        let vs = VarStore::new(device);
        let model = Self::new(vs.root(), cfg)?;
        let named = normalize_names(named);
        load_named_into(&vs.variables(), &named, source)?;
        Ok((model, vs))
    }
}

/// transformers 5 saves `CLIPTextModel` without the `text_model.` prefix: add it where absent, and drop the
/// buffer `embeddings.position_ids` that older files carry (it is `arange(max_position_embeddings)`).
pub fn normalize_names(named: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    named
        .into_iter()
        .map(|(n, t)| {
            if n.starts_with(PREFIX) || n.starts_with("text_projection.") {
                (n, t)
            } else {
                (format!("{PREFIX}{n}"), t)
            }
        })
        .filter(|(n, _)| n != "text_model.embeddings.position_ids")
        .collect()
}

/// Whether an original single-file checkpoint holds an OpenCLIP text encoder (SD 2.x,
/// `cond_stage_model.model.*`) rather than OpenAI CLIP's in transformers layout (SD 1.x,
/// `cond_stage_model.transformer.*`).
pub fn is_open_clip(named: &[(String, Tensor)]) -> bool {
    named.iter().any(|(n, _)| n.starts_with(OPEN_CLIP))
}

const SD1_CLIP: &str = "cond_stage_model.transformer.";
const OPEN_CLIP: &str = "cond_stage_model.model.";

/// The text encoder's tensors of an original (CompVis / Stability) single-file checkpoint, renamed to
/// transformers' `text_model.*`; every other tensor (U-Net, VAE, schedule buffers, EMA) is left out.
///
/// - SD 1.x: `cond_stage_model.transformer.text_model.*` (or `cond_stage_model.transformer.*`) ->
///   `text_model.*`.
/// - SD 2.x (OpenCLIP, see [`is_open_clip`]): `token_embedding`, `positional_embedding`, `ln_final`,
///   `transformer.resblocks.{i}.{ln_1, ln_2, attn.out_proj, mlp.c_fc, mlp.c_proj}` renamed, the fused
///   `attn.in_proj_{weight,bias}` split along dim 0 into q, k, v; `text_projection`, `logit_scale` and
///   resblocks `i >= cfg.num_hidden_layers` dropped (SD 2.x conditions on the penultimate of 24 layers).
///   A fused projection whose first dimension is not `3 * hidden_size` keeps its name (under
///   `text_model.encoder.layers.{i}.self_attn.`), so that loading reports it instead of mis-splitting it;
///   an unknown name is kept likewise.
///
/// # Shapes
/// Unchanged except for the split: `in_proj_weight` [3 hidden, hidden] -> 3 x [hidden, hidden],
/// `in_proj_bias` [3 hidden] -> 3 x [hidden].
pub fn from_original_checkpoint(cfg: &ClipTextConfig, named: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    if is_open_clip(named) {
        let mut out = Vec::new();
        for (name, t) in named {
            if let Some(rest) = name.strip_prefix(OPEN_CLIP) {
                open_clip_key(cfg, rest, t, &mut out);
            }
        }
        out
    } else {
        named
            .iter()
            .filter_map(|(name, t)| {
                let rest = name.strip_prefix(SD1_CLIP)?;
                let rest = rest.strip_prefix(PREFIX).unwrap_or(rest);
                (rest != "embeddings.position_ids").then(|| (format!("{PREFIX}{rest}"), t.shallow_clone()))
            })
            .collect()
    }
}

/// Rename (or split, or drop) one `cond_stage_model.model.{rest}` tensor, after diffusers'
/// `convert_open_clip_checkpoint`.
fn open_clip_key(cfg: &ClipTextConfig, rest: &str, t: &Tensor, out: &mut Vec<(String, Tensor)>) {
    let mut push = |name: String, t: Tensor| out.push((format!("{PREFIX}{name}"), t));
    match rest {
        "token_embedding.weight" => push("embeddings.token_embedding.weight".into(), t.shallow_clone()),
        "positional_embedding" => push("embeddings.position_embedding.weight".into(), t.shallow_clone()),
        "ln_final.weight" => push("final_layer_norm.weight".into(), t.shallow_clone()),
        "ln_final.bias" => push("final_layer_norm.bias".into(), t.shallow_clone()),
        // The image-text projection, the contrastive temperature and the (non-persistent) causal mask.
        "text_projection" | "logit_scale" | "attn_mask" => {}
        _ if rest.starts_with("visual.") => {}
        _ => {
            let Some(block) = rest.strip_prefix("transformer.resblocks.") else {
                return push(rest.to_string(), t.shallow_clone());
            };
            let Some((i, key)) = block.split_once('.').and_then(|(i, k)| Some((i.parse::<usize>().ok()?, k))) else {
                return push(rest.to_string(), t.shallow_clone());
            };
            if i >= cfg.num_hidden_layers {
                return;
            }
            let layer = format!("encoder.layers.{i}.");
            let renamed = match key {
                "ln_1.weight" | "ln_1.bias" => key.replacen("ln_1", "layer_norm1", 1),
                "ln_2.weight" | "ln_2.bias" => key.replacen("ln_2", "layer_norm2", 1),
                "attn.out_proj.weight" | "attn.out_proj.bias" => key.replacen("attn.", "self_attn.", 1),
                "mlp.c_fc.weight" | "mlp.c_fc.bias" => key.replacen("c_fc", "fc1", 1),
                "mlp.c_proj.weight" | "mlp.c_proj.bias" => key.replacen("c_proj", "fc2", 1),
                "attn.in_proj_weight" | "attn.in_proj_bias" => {
                    let suffix = if key.ends_with("weight") { "weight" } else { "bias" };
                    let h = cfg.hidden_size;
                    if t.size().first() == Some(&(3 * h)) {
                        for (j, qkv) in ["q", "k", "v"].into_iter().enumerate() {
                            push(format!("{layer}self_attn.{qkv}_proj.{suffix}"), t.narrow(0, j as i64 * h, h));
                        }
                    } else {
                        push(format!("{layer}self_attn.in_proj_{suffix}"), t.shallow_clone());
                    }
                    return;
                }
                other => other.to_string(),
            };
            push(format!("{layer}{renamed}"), t.shallow_clone());
        }
    }
}
