//! The diffusion transformer: diffusers' `DiTTransformer2DModel`, with its structure and parameter
//! names, so a diffusers state dict of the same configuration loads without renaming
//! (`tests/dit_parity.rs`).
//!
//! Peebles and Xie, "Scalable Diffusion Models with Transformers", arXiv 2212.09748: the image is cut
//! into `patch_size` x `patch_size` patches, each a token with a fixed 2-D sine-cosine position
//! embedding; every block is self-attention and an MLP, each behind a LayerNorm whose shift and scale,
//! and a gate on the residual branch, come from the timestep and class embedding (adaLN-Zero); a last
//! adaptive LayerNorm and a linear layer give each patch's prediction back.
//!
//! Follows diffusers 0.42.1 `models/transformers/dit_transformer_2d.py` (`PatchEmbed`,
//! `BasicTransformerBlock` with `norm_type="ada_norm_zero"`, `AdaLayerNormZero`,
//! `CombinedTimestepLabelEmbeddings`, `FeedForward` with tanh-approximate GELU): each block embeds the
//! timestep and class itself, and the output layer reuses the first block's embedding. Beyond diffusers:
//! any height and width divisible by the patch size (the position embedding is computed for the
//! input's grid, as diffusers does for a size other than `sample_size`), and an unconditional model
//! (`class_conditional: false`), which feeds every sample the table's null row.
//!
//! A new model is initialised as the paper's code does (`models.py`, `initialize_weights`): Xavier-uniform
//! linear layers and patch projection, N(0, 0.02) class and timestep embeddings, and zero for every
//! adaLN modulation and the output layer, so each block starts as the identity.
use serde::{Deserialize, Serialize};
use tch::nn::{self, Init, Module};
use tch::{Device, Kind, Tensor};

use crate::attention::Attention;
use crate::error::{DiffusionError, Result};
use genlab_core::layers::{timestep_embedding, TimestepEmbedding};

/// The configuration of a [`DiTModel`], with diffusers' field names where diffusers has the field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiTConfig {
    pub num_attention_heads: i64,
    pub attention_head_dim: i64,
    pub in_channels: i64,
    /// `in_channels`, or twice it for a model that also predicts its variance (learned sigma, as the
    /// paper's ImageNet models): the first `in_channels` are the prediction, the rest are not used.
    pub out_channels: i64,
    pub num_layers: usize,
    pub dropout: f64,
    pub attention_bias: bool,
    /// The training image size (height, width); diffusers has one number for square images.
    pub sample_size: [i64; 2],
    pub patch_size: i64,
    /// The number of classes (diffusers' `num_embeds_ada_norm`); the class table has one more row,
    /// the null class of classifier-free guidance.
    pub num_embeds_ada_norm: i64,
    /// Whether the model takes class labels. An unconditional model has a table of
    /// `num_embeds_ada_norm + 1` rows as diffusers' and always uses the null row.
    pub class_conditional: bool,
    /// The epsilon of the LayerNorm before each MLP (the other LayerNorms use 1e-6, as diffusers).
    pub norm_eps: f64,
}

impl DiTConfig {
    /// The preset names [`DiTConfig::preset`] knows.
    pub const PRESETS: [&'static str; 13] = [
        "dit-s", "DiT-S/2", "DiT-S/4", "DiT-S/8", "DiT-B/2", "DiT-B/4", "DiT-B/8", "DiT-L/2", "DiT-L/4", "DiT-L/8",
        "DiT-XL/2", "DiT-XL/4", "DiT-XL/8",
    ];

    /// A named preset for images of `image_shape` = `[channels, height, width]`:
    /// - `dit-s`: `DiT-S/4` at half its width and depth: width 192 (3 heads of 64), 6 blocks, patch 4
    ///   (49 tokens at 28x28), for training in minutes on two CPU cores (about 2.3 steps/s at batch 64);
    /// - the paper's models (table 1), `DiT-S`, `-B`, `-L`, `-XL` with patch 2, 4 or 8 (`DiT-XL/2` is
    ///   width 1152, 28 blocks, 16 heads), for GPUs.
    ///
    /// Every preset is unconditional with one output per input channel (no learned sigma); make it
    /// class-conditional with [`DiTConfig::with_classes`].
    pub fn preset(name: &str, image_shape: [i64; 3]) -> Result<Self> {
        let [c, h, w] = image_shape;
        let paper = |rest: &str| -> Option<(i64, usize, i64)> {
            match rest {
                "S" => Some((384, 12, 6)),
                "B" => Some((768, 12, 12)),
                "L" => Some((1024, 24, 16)),
                "XL" => Some((1152, 28, 16)),
                _ => None,
            }
        };
        let (width, depth, heads, patch) = match name {
            "dit-s" => (192, 6, 3, 4),
            _ => {
                let parsed = name.strip_prefix("DiT-").and_then(|rest| rest.split_once('/')).and_then(|(size, p)| {
                    let patch = match p {
                        "2" => 2,
                        "4" => 4,
                        "8" => 8,
                        _ => return None,
                    };
                    paper(size).map(|(w, d, nh)| (w, d, nh, patch))
                });
                parsed.ok_or_else(|| DiffusionError::UnknownName {
                    what: "DiT preset",
                    found: name.to_string(),
                    expected: Self::PRESETS.join(", "),
                })?
            }
        };
        let cfg = DiTConfig {
            num_attention_heads: heads,
            attention_head_dim: width / heads,
            in_channels: c,
            out_channels: c,
            num_layers: depth,
            dropout: 0.0,
            attention_bias: true,
            sample_size: [h, w],
            patch_size: patch,
            num_embeds_ada_norm: 1,
            class_conditional: false,
            norm_eps: 1e-5,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The same model, conditioned on `num_classes` classes (`None`: unconditional).
    pub fn with_classes(self, num_classes: Option<i64>) -> Self {
        match num_classes {
            Some(k) => DiTConfig { num_embeds_ada_norm: k, class_conditional: true, ..self },
            None => DiTConfig { num_embeds_ada_norm: 1, class_conditional: false, ..self },
        }
    }

    /// The transformer's width (`num_attention_heads * attention_head_dim`).
    pub fn inner_dim(&self) -> i64 {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Check every field, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(DiffusionError::Config(format!("DiT: {msg}")));
        if self.in_channels < 1 {
            return bad(format!("in_channels must be positive, got {}", self.in_channels));
        }
        if self.out_channels != self.in_channels && self.out_channels != 2 * self.in_channels {
            return bad(format!(
                "out_channels must be in_channels ({}) or twice it (learned sigma), got {}",
                self.in_channels, self.out_channels
            ));
        }
        if self.num_attention_heads < 1 || self.attention_head_dim < 1 {
            return bad(format!(
                "num_attention_heads and attention_head_dim must be positive, got {} and {}",
                self.num_attention_heads, self.attention_head_dim
            ));
        }
        if self.inner_dim() % 4 != 0 {
            return bad(format!(
                "the width num_attention_heads * attention_head_dim = {} must be divisible by 4 \
                 (the 2-D sine-cosine position embedding)",
                self.inner_dim()
            ));
        }
        if self.num_layers < 1 {
            return bad("num_layers must be at least 1".into());
        }
        if self.patch_size < 1 {
            return bad(format!("patch_size must be positive, got {}", self.patch_size));
        }
        if let Some(&s) = self.sample_size.iter().find(|&&s| s < 1 || s % self.patch_size != 0) {
            return bad(format!(
                "sample_size {:?}: {s} is not a positive multiple of patch_size {}",
                self.sample_size, self.patch_size
            ));
        }
        if self.num_embeds_ada_norm < 1 {
            return bad(format!("num_embeds_ada_norm must be positive, got {}", self.num_embeds_ada_norm));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return bad(format!("norm_eps must be positive, got {}", self.norm_eps));
        }
        Ok(())
    }

    /// Whether the model also predicts a variance (`out_channels == 2 * in_channels`).
    pub fn learned_sigma(&self) -> bool {
        self.out_channels == 2 * self.in_channels
    }
}

/// diffusers' `get_2d_sincos_pos_embed` for a `gh` x `gw` grid with `base_size` (the training grid's
/// height) and interpolation scale 1, computed in f64 from f32 grid positions as diffusers does on the
/// CPU: for the token at row i, column j, the first half of the channels encodes the column position,
/// the second the row, each as [sin, cos] over `dim / 4` frequencies.
///
/// # Shapes
/// - returns [1, gh * gw, dim] (f32)
fn sincos_pos_embed(dim: i64, gh: i64, gw: i64, base_size: i64, device: Device) -> Tensor {
    let quarter = (dim / 4) as usize;
    let omega: Vec<f64> = (0..quarter).map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64)).collect();
    let position = |k: i64, n: i64| (k as f32 / (n as f32 / base_size as f32)) as f64;
    let mut out = Vec::with_capacity((gh * gw * dim) as usize);
    for i in 0..gh {
        for j in 0..gw {
            for pos in [position(j, gw), position(i, gh)] {
                out.extend(omega.iter().map(|o| (pos * o).sin() as f32));
                out.extend(omega.iter().map(|o| (pos * o).cos() as f32));
            }
        }
    }
    Tensor::from_slice(&out).view([1, gh * gw, dim]).to_device(device)
}

/// diffusers' `CombinedTimestepLabelEmbeddings` (`timestep_embedder`, `class_embedder.embedding_table`).
#[derive(Debug)]
struct TimestepLabelEmbedding {
    timestep_embedder: TimestepEmbedding,
    embedding_table: nn::Embedding,
}

impl TimestepLabelEmbedding {
    fn new(vs: nn::Path<'_>, classes: i64, dim: i64) -> Self {
        let std = Init::Randn { mean: 0.0, stdev: 0.02 };
        let linear = nn::LinearConfig { ws_init: std, bs_init: Some(Init::Const(0.0)), bias: true };
        TimestepLabelEmbedding {
            timestep_embedder: TimestepEmbedding::with_config(&vs / "timestep_embedder", TIME_PROJ_DIM, dim, linear),
            embedding_table: nn::embedding(
                &vs / "class_embedder" / "embedding_table",
                classes + 1,
                dim,
                nn::EmbeddingConfig { ws_init: std, ..Default::default() },
            ),
        }
    }

    /// # Shapes
    /// - `t_proj`: [batch, 256]; `labels`: [batch] int64 -> [batch, dim]
    fn forward(&self, t_proj: &Tensor, labels: &Tensor) -> Tensor {
        self.timestep_embedder.forward(t_proj) + self.embedding_table.forward(labels)
    }
}

/// The channels of the sinusoidal timestep projection (diffusers' `Timesteps(num_channels=256)`).
const TIME_PROJ_DIM: i64 = 256;

/// diffusers' `BasicTransformerBlock` with `norm_type="ada_norm_zero"` and no cross-attention:
/// `norm1` (`AdaLayerNormZero`: `emb`, `linear`), `attn1`, `norm3` (a LayerNorm without parameters), `ff`.
#[derive(Debug)]
struct DiTBlock {
    emb: TimestepLabelEmbedding,
    ada_linear: nn::Linear,
    attn: Attention,
    ff_proj: nn::Linear,
    ff_out: nn::Linear,
    dim: i64,
    norm_eps: f64,
    dropout: f64,
}

fn xavier(vs: nn::Path<'_>, i: i64, o: i64) -> nn::Linear {
    // Xavier-uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
    let a = (6.0 / (i + o) as f64).sqrt();
    nn::linear(
        vs,
        i,
        o,
        nn::LinearConfig { ws_init: Init::Uniform { lo: -a, up: a }, bs_init: Some(Init::Const(0.0)), bias: true },
    )
}

fn zeros(vs: nn::Path<'_>, i: i64, o: i64) -> nn::Linear {
    nn::linear(vs, i, o, nn::LinearConfig { ws_init: Init::Const(0.0), bs_init: Some(Init::Const(0.0)), bias: true })
}

impl DiTBlock {
    fn new(vs: nn::Path<'_>, cfg: &DiTConfig) -> Self {
        let dim = cfg.inner_dim();
        let norm1 = &vs / "norm1";
        let mut attn = Attention::with_bias(
            &vs / "attn1",
            dim,
            dim,
            cfg.num_attention_heads,
            cfg.attention_head_dim,
            false,
            cfg.attention_bias,
        );
        attn.xavier_init();
        DiTBlock {
            emb: TimestepLabelEmbedding::new(&norm1 / "emb", cfg.num_embeds_ada_norm, dim),
            ada_linear: zeros(&norm1 / "linear", dim, 6 * dim),
            attn,
            ff_proj: xavier(&vs / "ff" / "net" / 0 / "proj", dim, 4 * dim),
            ff_out: xavier(&vs / "ff" / "net" / 2, 4 * dim, dim),
            dim,
            norm_eps: cfg.norm_eps,
            dropout: cfg.dropout,
        }
    }

    /// # Shapes
    /// - `h`: [batch, tokens, dim]; `emb`: [batch, dim] (this block's timestep and class embedding)
    fn forward(&self, h: &Tensor, emb: &Tensor, train: bool) -> Tensor {
        let m = self.ada_linear.forward(&emb.silu()).unsqueeze(1).chunk(6, -1);
        let (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp) =
            (&m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);
        let d = [self.dim];
        let n = h.layer_norm(d, None::<&Tensor>, None::<&Tensor>, 1e-6, false) * (scale_msa + 1.0) + shift_msa;
        let a = self.attn.forward(&n, None, None).dropout(self.dropout, train);
        let h = h + gate_msa * a;
        let n = h.layer_norm(d, None::<&Tensor>, None::<&Tensor>, self.norm_eps, false) * (scale_mlp + 1.0) + shift_mlp;
        let f = self.ff_proj.forward(&n).gelu("tanh").dropout(self.dropout, train);
        let f = self.ff_out.forward(&f);
        h + gate_mlp * f
    }
}

/// diffusers' `DiTTransformer2DModel`: `pos_embed` (`proj`), `transformer_blocks`, `proj_out_1`, `proj_out_2`.
#[derive(Debug)]
pub struct DiTModel {
    pub cfg: DiTConfig,
    patch_proj: nn::Conv2D,
    blocks: Vec<DiTBlock>,
    proj_out_1: nn::Linear,
    proj_out_2: nn::Linear,
    /// The position embedding of the training grid ([1, tokens, dim]).
    pos_embed: Tensor,
    device: Device,
}

impl DiTModel {
    pub fn new(vs: nn::Path<'_>, cfg: DiTConfig) -> Result<Self> {
        cfg.validate()?;
        let dim = cfg.inner_dim();
        let p = cfg.patch_size;
        let fan = cfg.in_channels * p * p;
        let a = (6.0 / (fan + dim) as f64).sqrt();
        let patch_proj = nn::conv2d(
            &vs / "pos_embed" / "proj",
            cfg.in_channels,
            dim,
            p,
            nn::ConvConfig {
                stride: p,
                ws_init: Init::Uniform { lo: -a, up: a },
                bs_init: Init::Const(0.0),
                ..Default::default()
            },
        );
        let blocks = (0..cfg.num_layers).map(|i| DiTBlock::new(&vs / "transformer_blocks" / i, &cfg)).collect();
        let proj_out_1 = zeros(&vs / "proj_out_1", dim, 2 * dim);
        let proj_out_2 = zeros(&vs / "proj_out_2", dim, p * p * cfg.out_channels);
        let device = vs.device();
        let [h, w] = cfg.sample_size;
        let pos_embed = sincos_pos_embed(dim, h / p, w / p, h / p, device);
        Ok(DiTModel { cfg, patch_proj, blocks, proj_out_1, proj_out_2, pos_embed, device })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The number of classes of a class-conditional model.
    pub fn num_classes(&self) -> Option<i64> {
        self.cfg.class_conditional.then_some(self.cfg.num_embeds_ada_norm)
    }

    /// The label that means "no class" (the table's last row) of a class-conditional model.
    pub fn null_class(&self) -> Option<i64> {
        self.num_classes()
    }

    /// The network's output: `out_channels` channels (the prediction first, then, for a learned-sigma
    /// model, the variance channels).
    ///
    /// # Shapes
    /// - `xs`: [batch, in_channels, h, w] with h and w multiples of `patch_size`
    /// - `timesteps`: [batch] or one for all (fractional allowed)
    /// - `class_labels`: [batch] int64 in `0..=num_embeds_ada_norm` (the last is the null class);
    ///   required by a class-conditional model, an error for an unconditional one
    /// - returns [batch, out_channels, h, w]
    pub fn forward_t(
        &self,
        xs: &Tensor,
        timesteps: &Tensor,
        class_labels: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let p = cfg.patch_size;
        let size = xs.size();
        let (batch, h, w) = match size.as_slice() {
            &[b, c, h, w] if c == cfg.in_channels && h > 0 && w > 0 && h % p == 0 && w % p == 0 => (b, h, w),
            _ => {
                return Err(DiffusionError::Shape(format!(
                    "DiT input has shape {size:?}: expected [batch, {}, height, width] with height and width \
                     multiples of the patch size {p}",
                    cfg.in_channels
                )))
            }
        };
        let t = crate::inputs::per_sample_timesteps(timesteps, batch)?;
        let labels = match (cfg.class_conditional, class_labels) {
            (true, Some(l)) => {
                crate::inputs::check_labels(l, batch, cfg.num_embeds_ada_norm + 1)?;
                l.to_device(self.device)
            }
            (true, None) => {
                return Err(DiffusionError::Labels("this DiT is class-conditional: class labels are required".into()))
            }
            (false, Some(_)) => {
                return Err(DiffusionError::Labels("this DiT is unconditional: it takes no class labels".into()))
            }
            (false, None) => Tensor::full([batch], cfg.num_embeds_ada_norm, (Kind::Int64, self.device)),
        };
        let (gh, gw) = (h / p, w / p);
        let [sh, sw] = cfg.sample_size;
        let pos = if [gh, gw] == [sh / p, sw / p] {
            self.pos_embed.shallow_clone()
        } else {
            sincos_pos_embed(cfg.inner_dim(), gh, gw, sh / p, self.device)
        };
        let mut hs = self.patch_proj.forward(xs).flatten(2, 3).transpose(1, 2) + pos.to_kind(xs.kind());
        let t_proj = timestep_embedding(&t.to_device(self.device), TIME_PROJ_DIM, true, 1.0).to_kind(xs.kind());
        let mut first_emb = None;
        for block in &self.blocks {
            let emb = block.emb.forward(&t_proj, &labels);
            hs = block.forward(&hs, &emb, train);
            first_emb.get_or_insert(emb);
        }
        let emb = first_emb.ok_or_else(|| DiffusionError::Config("DiT: no transformer blocks".into()))?;
        let ss = self.proj_out_1.forward(&emb.silu()).unsqueeze(1).chunk(2, -1);
        let dim = [cfg.inner_dim()];
        let hs = hs.layer_norm(dim, None::<&Tensor>, None::<&Tensor>, 1e-6, false) * (&ss[1] + 1.0) + &ss[0];
        let c = cfg.out_channels;
        let out = self.proj_out_2.forward(&hs).view([batch, gh, gw, p, p, c]);
        Ok(out.permute([0, 5, 1, 3, 2, 4]).reshape([batch, c, h, w]))
    }
}
