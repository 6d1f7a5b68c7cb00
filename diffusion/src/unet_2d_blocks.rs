//! The blocks both U-Nets are made of (diffusers' `models/unets/unet_2d_blocks.py`): down blocks
//! (ResNet blocks, each optionally followed by attention, then a downsampler), the mid block, up
//! blocks (the same with skip concatenation and an upsampler), and the pass through them. The ResNet
//! block and the resamplers are genlab-core's; the attention is a [`BlockAttention`]: self-attention
//! in `UNet2DModel`, a cross-attention transformer in `UNet2DConditionModel`.
use tch::Tensor;

use crate::error::{DiffusionError, Result};
use genlab_core::layers::{Downsample2D, ResnetBlock2D, Upsample2D};

/// What every block layer of one forward pass sees besides its input.
#[derive(Clone, Copy)]
pub(crate) struct BlockContext<'a> {
    /// The timestep (and class, text) embedding, [batch, temb_channels].
    pub temb: &'a Tensor,
    /// Dropout on (training).
    pub train: bool,
    /// The cross-attention states, [batch, tokens, cross_attention_dim] (text-conditioned U-Nets).
    pub encoder_hidden_states: Option<&'a Tensor>,
    /// Sliced attention: this many heads at a time.
    pub slice: Option<i64>,
}

/// The attention layer after a ResNet block.
pub(crate) trait BlockAttention {
    /// # Shapes
    /// - `h`: [batch, channels, height, width] -> the same
    fn attend(&self, h: &Tensor, ctx: &BlockContext<'_>) -> Tensor;
}

impl BlockAttention for genlab_core::layers::SpatialSelfAttention {
    fn attend(&self, h: &Tensor, _: &BlockContext<'_>) -> Tensor {
        tch::nn::Module::forward(self, h)
    }
}

/// ResNet blocks, each followed by its attention when the block has attention.
#[derive(Debug)]
pub(crate) struct Layers<A> {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<A>,
}

impl<A: BlockAttention> Layers<A> {
    /// # Shapes
    /// - `xs`: [batch, c_in, h, w] -> [batch, c_out, h, w] after ResNet `i` (and its attention)
    pub fn layer(&self, i: usize, xs: &Tensor, ctx: &BlockContext<'_>) -> Tensor {
        let h = self.resnets[i].forward_t(xs, Some(ctx.temb), ctx.train);
        match self.attentions.get(i) {
            Some(a) => a.attend(&h, ctx),
            None => h,
        }
    }

    /// Every layer in turn: the mid block (resnets.0, then attentions.0 and resnets.1, as diffusers'
    /// `UNetMidBlock2D` and `UNetMidBlock2DCrossAttn`).
    pub fn forward(&self, xs: &Tensor, ctx: &BlockContext<'_>) -> Tensor {
        let mut h = xs.shallow_clone();
        for i in 0..self.resnets.len() {
            h = self.layer(i, &h, ctx);
        }
        h
    }
}

#[derive(Debug)]
pub(crate) struct DownBlock<A> {
    pub layers: Layers<A>,
    pub downsampler: Option<Downsample2D>,
}

#[derive(Debug)]
pub(crate) struct UpBlock<A> {
    pub layers: Layers<A>,
    pub upsampler: Option<Upsample2D>,
}

/// The U-Net between `conv_in` and `conv_norm_out`: `h` through the down blocks (keeping every
/// output as a skip), the mid block, and the up blocks (each layer concatenating the newest skip).
/// `upsample_to_skip`: upsample to the size of the next skip rather than by 2 (needed when the input
/// size is not a multiple of the total downsampling).
pub(crate) fn unet_blocks<A: BlockAttention>(
    h: Tensor,
    down_blocks: &[DownBlock<A>],
    mid_block: Option<&Layers<A>>,
    up_blocks: &[UpBlock<A>],
    ctx: &BlockContext<'_>,
    upsample_to_skip: bool,
) -> Result<Tensor> {
    let (h, skips) = down_pass(h, down_blocks, ctx);
    let h = match mid_block {
        Some(mid) => mid.forward(&h, ctx),
        None => h,
    };
    up_pass(h, skips, up_blocks, ctx, upsample_to_skip)
}

/// The down blocks: the last output and every skip, `h` itself first (diffusers' `down_block_res_samples`).
pub(crate) fn down_pass<A: BlockAttention>(
    h: Tensor,
    down_blocks: &[DownBlock<A>],
    ctx: &BlockContext<'_>,
) -> (Tensor, Vec<Tensor>) {
    let mut h = h;
    let mut skips = vec![h.shallow_clone()];
    for block in down_blocks {
        for i in 0..block.layers.resnets.len() {
            h = block.layers.layer(i, &h, ctx);
            skips.push(h.shallow_clone());
        }
        if let Some(d) = &block.downsampler {
            h = tch::nn::Module::forward(d, &h);
            skips.push(h.shallow_clone());
        }
    }
    (h, skips)
}

/// The up blocks, popping `skips` (as [`down_pass`] left them) newest first.
pub(crate) fn up_pass<A: BlockAttention>(
    h: Tensor,
    mut skips: Vec<Tensor>,
    up_blocks: &[UpBlock<A>],
    ctx: &BlockContext<'_>,
    upsample_to_skip: bool,
) -> Result<Tensor> {
    let mut h = h;
    for block in up_blocks {
        for i in 0..block.layers.resnets.len() {
            // The constructors push exactly as many skips as the up blocks pop.
            let skip = skips.pop().ok_or_else(|| DiffusionError::Shape("U-Net skip stack underflow".into()))?;
            h = block.layers.layer(i, &Tensor::cat(&[&h, &skip], 1), ctx);
        }
        if let Some(u) = &block.upsampler {
            let size = skips.last().filter(|_| upsample_to_skip).map(|s| {
                let s = s.size();
                (s[2], s[3])
            });
            h = u.forward_to(&h, size);
        }
    }
    Ok(h)
}
