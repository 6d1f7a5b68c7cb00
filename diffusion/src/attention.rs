//! The attention layers of the text-conditioned U-Net (diffusers 0.42.1 `models/attention_processor.py`
//! `Attention` with `AttnProcessor2_0` and `SlicedAttnProcessor`, `models/attention.py`
//! `BasicTransformerBlock` and `FeedForward` with GEGLU, `models/transformers/transformer_2d.py`
//! `Transformer2DModel` on continuous input), with diffusers' parameter names.
use genlab_core::lora;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// `proj_in` / `proj_out` of a transformer: 1x1 conv (SD 1.x) or linear (SD 2.x).
#[derive(Debug)]
enum Projection {
    Conv(lora::Conv2D),
    Linear(lora::Linear),
}

impl Projection {
    fn new(vs: nn::Path<'_>, c_in: i64, c_out: i64, linear: bool) -> Self {
        if linear {
            Projection::Linear(lora::linear(vs, c_in, c_out, Default::default()))
        } else {
            Projection::Conv(lora::conv2d(vs, c_in, c_out, 1, Default::default()))
        }
    }
}

/// diffusers' `Attention` (`to_q`, `to_k`, `to_v`, with bias as `attention_bias` says, `to_out.0`):
/// multi-head attention of `xs` over itself or over a context.
#[derive(Debug)]
pub(crate) struct Attention {
    to_q: lora::Linear,
    to_k: lora::Linear,
    to_v: lora::Linear,
    to_out: lora::Linear,
    heads: i64,
    head_dim: i64,
    upcast: bool,
}

impl Attention {
    fn new(vs: nn::Path<'_>, query_dim: i64, context_dim: i64, heads: i64, head_dim: i64, upcast: bool) -> Self {
        Self::with_bias(vs, query_dim, context_dim, heads, head_dim, upcast, false)
    }

    /// `bias`: diffusers' `attention_bias` (bias on `to_q`, `to_k`, `to_v`; `to_out.0` always has one).
    pub(crate) fn with_bias(
        vs: nn::Path<'_>,
        query_dim: i64,
        context_dim: i64,
        heads: i64,
        head_dim: i64,
        upcast: bool,
        bias: bool,
    ) -> Self {
        let inner = heads * head_dim;
        let qkv = nn::LinearConfig { bias, ..Default::default() };
        Attention {
            to_q: lora::linear(&vs / "to_q", query_dim, inner, qkv),
            to_k: lora::linear(&vs / "to_k", context_dim, inner, qkv),
            to_v: lora::linear(&vs / "to_v", context_dim, inner, qkv),
            to_out: lora::linear(&vs / "to_out" / 0, inner, query_dim, Default::default()),
            heads,
            head_dim,
            upcast,
        }
    }

    /// Xavier-uniform weights and zero biases for the four projections (the DiT paper's init).
    pub(crate) fn xavier_init(&mut self) {
        tch::no_grad(|| {
            for l in [&mut self.to_q, &mut self.to_k, &mut self.to_v, &mut self.to_out] {
                let s = l.ws.size();
                let a = (6.0 / (s[0] + s[1]) as f64).sqrt();
                let _ = l.ws.uniform_(-a, a);
                if let Some(b) = &mut l.bs {
                    let _ = b.zero_();
                }
            }
        });
    }

    /// # Shapes
    /// - `xs`: [batch, tokens, query_dim]
    /// - `context`: [batch, context_tokens, context_dim]; `None` for self-attention
    /// - returns [batch, tokens, query_dim]
    pub(crate) fn forward(&self, xs: &Tensor, context: Option<&Tensor>, slice: Option<i64>) -> Tensor {
        let context = context.unwrap_or(xs);
        let (b, n) = (xs.size()[0], xs.size()[1]);
        let split = |t: Tensor| t.view([b, -1, self.heads, self.head_dim]).transpose(1, 2);
        let q = split(self.to_q.forward(xs));
        let k = split(self.to_k.forward(context));
        let v = split(self.to_v.forward(context));
        let out = match slice {
            None => sdpa(&q, &k, &v),
            Some(s) => self.sliced(&q, &k, &v, s),
        };
        let out = out.transpose(1, 2).reshape([b, n, self.heads * self.head_dim]);
        self.to_out.forward(&out)
    }

    /// diffusers' `SlicedAttnProcessor`: attention over `slice` rows of the batch x heads dimension at a time,
    /// so that only `slice` score matrices exist at once; scores and softmax in f32 for `upcast_attention`
    /// at half precision, as its `get_attention_scores`.
    ///
    /// # Shapes
    /// - `q`: [batch, heads, tokens, head_dim]; `k`, `v`: [batch, heads, context_tokens, head_dim]
    /// - returns [batch, heads, tokens, head_dim]
    fn sliced(&self, q: &Tensor, k: &Tensor, v: &Tensor, slice: i64) -> Tensor {
        let size = q.size();
        let rows = size[0] * size[1];
        let flat = |t: &Tensor| t.reshape([rows, t.size()[2], self.head_dim]);
        let (q, k, v) = (flat(q), flat(k), flat(v));
        let kind = q.kind();
        let upcast = self.upcast && matches!(kind, Kind::Half | Kind::BFloat16);
        let chunks: Vec<Tensor> = (0..rows)
            .step_by(slice as usize)
            .map(|start| {
                let len = slice.min(rows - start);
                let part = |t: &Tensor| {
                    let t = t.narrow(0, start, len);
                    if upcast {
                        t.to_kind(Kind::Float)
                    } else {
                        t
                    }
                };
                sdpa(&part(&q), &part(&k), &part(&v)).to_kind(kind)
            })
            .collect();
        Tensor::cat(&chunks, 0).view(size.as_slice())
    }
}

/// `F.scaled_dot_product_attention` (flash or memory-efficient kernels on CUDA), scale `1/sqrt(head_dim)`.
/// As diffusers' `AttnProcessor2_0`, `upcast_attention` does not apply here: the fused kernels
/// accumulate in f32 already.
fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    Tensor::scaled_dot_product_attention(q, k, v, None::<&Tensor>, 0.0, false, None, false)
}

/// diffusers' `FeedForward` with GEGLU: `net.0.proj` to twice the inner width, `x * gelu(gate)`, `net.2`.
#[derive(Debug)]
struct FeedForward {
    proj: lora::Linear,
    out: lora::Linear,
}

impl FeedForward {
    fn new(vs: nn::Path<'_>, dim: i64) -> Self {
        let inner = 4 * dim;
        FeedForward {
            proj: lora::linear(&vs / "net" / 0 / "proj", dim, 2 * inner, Default::default()),
            out: lora::linear(&vs / "net" / 2, inner, dim, Default::default()),
        }
    }
}

impl Module for FeedForward {
    /// # Shapes
    /// - `xs`: [batch, tokens, dim] -> [batch, tokens, dim]
    fn forward(&self, xs: &Tensor) -> Tensor {
        let h = self.proj.forward(xs).chunk(2, -1);
        self.out.forward(&(&h[0] * h[1].gelu("none")))
    }
}

/// diffusers' `BasicTransformerBlock` (`norm_type="layer_norm"`): self-attention, cross-attention to the
/// text, GEGLU feed-forward, each pre-normed and residual.
#[derive(Debug)]
struct BasicTransformerBlock {
    norm1: nn::LayerNorm,
    attn1: Attention,
    norm2: nn::LayerNorm,
    attn2: Attention,
    norm3: nn::LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    fn new(vs: nn::Path<'_>, dim: i64, heads: i64, head_dim: i64, cross_dim: i64, upcast: bool) -> Self {
        let ln = || nn::LayerNormConfig { eps: 1e-5, ..Default::default() };
        BasicTransformerBlock {
            norm1: nn::layer_norm(&vs / "norm1", vec![dim], ln()),
            attn1: Attention::new(&vs / "attn1", dim, dim, heads, head_dim, upcast),
            norm2: nn::layer_norm(&vs / "norm2", vec![dim], ln()),
            attn2: Attention::new(&vs / "attn2", dim, cross_dim, heads, head_dim, upcast),
            norm3: nn::layer_norm(&vs / "norm3", vec![dim], ln()),
            ff: FeedForward::new(&vs / "ff", dim),
        }
    }

    /// # Shapes
    /// - `xs`: [batch, tokens, dim]; `context`: [batch, context_tokens, cross_attention_dim]
    /// - returns [batch, tokens, dim]
    fn forward(&self, xs: &Tensor, context: &Tensor, slice: Option<i64>) -> Tensor {
        let h = self.attn1.forward(&self.norm1.forward(xs), None, slice) + xs;
        let h = self.attn2.forward(&self.norm2.forward(&h), Some(context), slice) + h;
        self.ff.forward(&self.norm3.forward(&h)) + h
    }
}

/// diffusers' `Transformer2DModel` on continuous input: GroupNorm (eps 1e-6), `proj_in`, transformer blocks
/// over the `height * width` tokens, `proj_out`, residual.
#[derive(Debug)]
pub(crate) struct Transformer2D {
    norm: nn::GroupNorm,
    proj_in: Projection,
    transformer_blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2D {
    /// `groups`: of the GroupNorm; `linear`: linear rather than 1x1-conv projections (SD 2.x);
    /// `upcast`: attention scores in f32.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        vs: nn::Path<'_>,
        channels: i64,
        heads: i64,
        layers: i64,
        groups: i64,
        cross_attention_dim: i64,
        linear: bool,
        upcast: bool,
    ) -> Self {
        // diffusers passes `out_channels // num_attention_heads` as the head size.
        let head_dim = channels / heads;
        let inner = heads * head_dim;
        let gn = nn::GroupNormConfig { eps: 1e-6, ..Default::default() };
        Transformer2D {
            norm: nn::group_norm(&vs / "norm", groups, channels, gn),
            proj_in: Projection::new(&vs / "proj_in", channels, inner, linear),
            transformer_blocks: (0..layers)
                .map(|k| {
                    let p = &vs / "transformer_blocks" / k;
                    BasicTransformerBlock::new(p, inner, heads, head_dim, cross_attention_dim, upcast)
                })
                .collect(),
            proj_out: Projection::new(&vs / "proj_out", inner, channels, linear),
        }
    }

    /// # Shapes
    /// - `xs`: [batch, channels, height, width]; `context`: [batch, context_tokens, cross_attention_dim]
    /// - returns [batch, channels, height, width]
    pub(crate) fn forward(&self, xs: &Tensor, context: &Tensor, slice: Option<i64>) -> Tensor {
        let (b, _, h, w) = dims4(xs);
        let normed = self.norm.forward(xs);
        let tokens = |t: &Tensor| t.permute([0, 2, 3, 1]).reshape([b, h * w, t.size()[1]]);
        let mut x = match &self.proj_in {
            Projection::Conv(c) => tokens(&c.forward(&normed)),
            Projection::Linear(l) => l.forward(&tokens(&normed)),
        };
        for block in &self.transformer_blocks {
            x = block.forward(&x, context, slice);
        }
        let image = |t: &Tensor| t.reshape([b, h, w, t.size()[2]]).permute([0, 3, 1, 2]).contiguous();
        let out = match &self.proj_out {
            Projection::Conv(c) => c.forward(&image(&x)),
            Projection::Linear(l) => image(&l.forward(&x)),
        };
        out + xs
    }
}

/// The four sizes of a 4-D tensor (callers have checked the rank).
pub(crate) fn dims4(xs: &Tensor) -> (i64, i64, i64, i64) {
    let s = xs.size();
    (s[0], s[1], s[2], s[3])
}

impl crate::unet_2d_blocks::BlockAttention for Transformer2D {
    fn attend(&self, h: &Tensor, ctx: &crate::unet_2d_blocks::BlockContext<'_>) -> Tensor {
        // UNet2DConditionModel's forward always passes its encoder_hidden_states.
        let context = ctx.encoder_hidden_states.expect("a cross-attention block needs encoder_hidden_states");
        self.forward(h, context, ctx.slice)
    }
}
