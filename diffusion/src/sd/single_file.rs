//! Single-file Stable Diffusion checkpoints: the original CompVis / Stability layout
//! (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`) renamed to diffusers' names.
//!
//! The renaming is the inverse of diffusers' `scripts/convert_diffusers_to_original_stable_diffusion.py`
//! (and matches `loaders/single_file_utils.py`), with the block counts taken from the model's config
//! instead of SD 1.5's, so checkpoints of other shapes load too. Each expected diffusers name is mapped
//! to its original name and looked up, so whatever the file lacks is reported under the diffusers
//! name and whatever it has left over under its own.
use std::collections::{HashMap, HashSet};

use tch::Tensor;

/// Keys of real checkpoints that no inference component uses: the training schedule's buffers, the EMA
/// copy's bookkeeping and the text tower's projection and temperature.
pub fn is_ignored(key: &str) -> bool {
    const BUFFERS: &[&str] = &[
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "logvar",
        "model_ema.decay",
        "model_ema.num_updates",
    ];
    BUFFERS.contains(&key)
        || key.starts_with("model_ema.")
        || key.starts_with("first_stage_model.loss.")
        || key == "cond_stage_model.model.text_projection"
        || key == "cond_stage_model.model.logit_scale"
        || key.ends_with(".position_ids")
}

/// The prefix of the UNet's keys in an original checkpoint.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
/// The prefix of the autoencoder's keys in an original checkpoint.
pub const VAE_PREFIX: &str = "first_stage_model.";

fn index_after<'a>(rest: &'a str, head: &str) -> Option<(usize, &'a str)> {
    let r = rest.strip_prefix(head)?;
    let (n, tail) = r.split_once('.')?;
    Some((n.parse().ok()?, tail))
}

fn resnet_to_original(tail: &str) -> String {
    const MAP: &[(&str, &str)] = &[
        ("norm1.", "in_layers.0."),
        ("conv1.", "in_layers.2."),
        ("time_emb_proj.", "emb_layers.1."),
        ("norm2.", "out_layers.0."),
        ("conv2.", "out_layers.3."),
        ("conv_shortcut.", "skip_connection."),
    ];
    for (d, o) in MAP {
        if let Some(r) = tail.strip_prefix(d) {
            return format!("{o}{r}");
        }
    }
    tail.to_string()
}

/// The original name of one UNet parameter (without [`UNET_PREFIX`]).
/// `layers_per_block` is the down blocks' ResNet count (up blocks have one more); `up_has_attention[i]`
/// says whether up block `i` has attentions (its upsampler then sits third in the original block).
pub fn unet_key_to_original(key: &str, layers_per_block: usize, up_has_attention: &[bool]) -> String {
    let l = layers_per_block;
    for (d, o) in [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
    ] {
        if let Some(r) = key.strip_prefix(d) {
            return format!("{o}{r}");
        }
    }
    if let Some((i, rest)) = index_after(key, "down_blocks.") {
        if let Some((j, tail)) = index_after(rest, "resnets.") {
            return format!("input_blocks.{}.0.{}", i * (l + 1) + j + 1, resnet_to_original(tail));
        }
        if let Some((j, tail)) = index_after(rest, "attentions.") {
            return format!("input_blocks.{}.1.{tail}", i * (l + 1) + j + 1);
        }
        if let Some(tail) = rest.strip_prefix("downsamplers.0.conv.") {
            return format!("input_blocks.{}.0.op.{tail}", (i + 1) * (l + 1));
        }
    }
    if let Some((i, rest)) = index_after(key, "up_blocks.") {
        if let Some((j, tail)) = index_after(rest, "resnets.") {
            return format!("output_blocks.{}.0.{}", i * (l + 1) + j, resnet_to_original(tail));
        }
        if let Some((j, tail)) = index_after(rest, "attentions.") {
            return format!("output_blocks.{}.1.{tail}", i * (l + 1) + j);
        }
        if let Some(tail) = rest.strip_prefix("upsamplers.0.") {
            let slot = if up_has_attention.get(i).copied().unwrap_or(false) { 2 } else { 1 };
            return format!("output_blocks.{}.{slot}.{tail}", i * (l + 1) + l);
        }
    }
    if let Some(rest) = key.strip_prefix("mid_block.") {
        if let Some(tail) = rest.strip_prefix("attentions.0.") {
            return format!("middle_block.1.{tail}");
        }
        if let Some((j, tail)) = index_after(rest, "resnets.") {
            return format!("middle_block.{}.{}", 2 * j, resnet_to_original(tail));
        }
    }
    key.to_string()
}

/// The original name of one AutoencoderKL parameter (without [`VAE_PREFIX`]), for `blocks` entries of
/// `block_out_channels`. Returns whether the original stores it as a 1x1 convolution (the mid-block
/// attention's q, k, v and proj_out weights), which diffusers stores as a linear layer.
pub fn vae_key_to_original(key: &str, blocks: usize) -> (String, bool) {
    let (side, rest) = match key.split_once('.') {
        Some((s @ ("encoder" | "decoder"), r)) => (s, r),
        _ => return (key.to_string(), false),
    };
    let resnet = |tail: &str| match tail.strip_prefix("conv_shortcut.") {
        Some(r) => format!("nin_shortcut.{r}"),
        None => tail.to_string(),
    };
    let mapped = if let Some(r) = rest.strip_prefix("conv_norm_out.") {
        format!("norm_out.{r}")
    } else if let Some(r) = rest.strip_prefix("mid_block.attentions.0.") {
        const ATTN: &[(&str, &str)] =
            &[("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")];
        let conv = !r.starts_with("group_norm.") && r.ends_with("weight");
        let r = ATTN.iter().find_map(|(d, o)| r.strip_prefix(d).map(|t| format!("{o}{t}"))).unwrap_or(r.to_string());
        return (format!("{side}.mid.attn_1.{r}"), conv);
    } else if let Some((j, tail)) = rest.strip_prefix("mid_block.").and_then(|r| index_after(r, "resnets.")) {
        format!("mid.block_{}.{}", j + 1, resnet(tail))
    } else if let Some((i, r)) = index_after(rest, "down_blocks.") {
        if let Some((j, tail)) = index_after(r, "resnets.") {
            format!("down.{i}.block.{j}.{}", resnet(tail))
        } else if let Some(tail) = r.strip_prefix("downsamplers.0.") {
            format!("down.{i}.downsample.{tail}")
        } else {
            rest.to_string()
        }
    } else if let Some((i, r)) = index_after(rest, "up_blocks.") {
        let o = blocks.saturating_sub(1).saturating_sub(i);
        if let Some((j, tail)) = index_after(r, "resnets.") {
            format!("up.{o}.block.{j}.{}", resnet(tail))
        } else if let Some(tail) = r.strip_prefix("upsamplers.0.") {
            format!("up.{o}.upsample.{tail}")
        } else {
            rest.to_string()
        }
    } else {
        rest.to_string()
    };
    (format!("{side}.{mapped}"), false)
}

/// Take the tensors of one component out of a checkpoint under their diffusers names.
///
/// `expected` are the component's diffusers names and shapes (its VarStore's variables); `to_original`
/// maps a diffusers name to the original one (with prefix) and says whether a 1x1 convolution must be
/// flattened to a linear weight. Returns the renamed tensors plus, under their original names, the
/// checkpoint's keys with `prefix` that nothing asked for (a loader reports them as unexpected).
pub fn take_component(
    file: &HashMap<String, Tensor>,
    used: &mut HashSet<String>,
    expected: &HashMap<String, Tensor>,
    prefix: &str,
    to_original: impl Fn(&str) -> (String, bool),
) -> Vec<(String, Tensor)> {
    let mut out = Vec::with_capacity(expected.len());
    for (name, want) in expected {
        let (orig, conv) = to_original(name);
        if let Some(t) = file.get(&orig) {
            used.insert(orig);
            let t = if conv && t.dim() == 4 && want.dim() == 2 { t.flatten(1, -1) } else { t.shallow_clone() };
            out.push((name.clone(), t));
        }
    }
    for (k, t) in file {
        if k.starts_with(prefix) && !used.contains(k) && !is_ignored(k) {
            out.push((k.clone(), t.shallow_clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unet_names_follow_the_original_layout() {
        // SD 1.5: two ResNets per down block; up blocks 1..3 have attentions.
        let attn = [false, true, true, true];
        let m = |k| unet_key_to_original(k, 2, &attn);
        assert_eq!(m("conv_in.weight"), "input_blocks.0.0.weight");
        assert_eq!(m("down_blocks.0.resnets.1.norm1.bias"), "input_blocks.2.0.in_layers.0.bias");
        assert_eq!(m("down_blocks.1.attentions.0.proj_in.weight"), "input_blocks.4.1.proj_in.weight");
        assert_eq!(m("down_blocks.2.downsamplers.0.conv.weight"), "input_blocks.9.0.op.weight");
        assert_eq!(m("up_blocks.0.resnets.2.conv_shortcut.weight"), "output_blocks.2.0.skip_connection.weight");
        assert_eq!(m("up_blocks.0.upsamplers.0.conv.bias"), "output_blocks.2.1.conv.bias");
        assert_eq!(m("up_blocks.1.upsamplers.0.conv.bias"), "output_blocks.5.2.conv.bias");
        assert_eq!(
            m("up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k.weight"),
            "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight"
        );
        assert_eq!(m("mid_block.resnets.1.time_emb_proj.weight"), "middle_block.2.emb_layers.1.weight");
        assert_eq!(m("mid_block.attentions.0.norm.weight"), "middle_block.1.norm.weight");
        assert_eq!(m("time_embedding.linear_2.bias"), "time_embed.2.bias");
        assert_eq!(m("conv_norm_out.weight"), "out.0.weight");
    }

    #[test]
    fn vae_names_follow_the_original_layout() {
        let m = |k| vae_key_to_original(k, 4);
        assert_eq!(
            m("encoder.down_blocks.1.resnets.0.conv_shortcut.weight"),
            ("encoder.down.1.block.0.nin_shortcut.weight".into(), false)
        );
        assert_eq!(
            m("decoder.up_blocks.0.resnets.2.conv1.weight"),
            ("decoder.up.3.block.2.conv1.weight".into(), false)
        );
        assert_eq!(m("decoder.up_blocks.2.upsamplers.0.conv.bias"), ("decoder.up.1.upsample.conv.bias".into(), false));
        assert_eq!(m("encoder.mid_block.attentions.0.to_q.weight"), ("encoder.mid.attn_1.q.weight".into(), true));
        assert_eq!(
            m("encoder.mid_block.attentions.0.to_out.0.bias"),
            ("encoder.mid.attn_1.proj_out.bias".into(), false)
        );
        assert_eq!(
            m("decoder.mid_block.attentions.0.group_norm.weight"),
            ("decoder.mid.attn_1.norm.weight".into(), false)
        );
        assert_eq!(m("decoder.mid_block.resnets.1.norm2.bias"), ("decoder.mid.block_2.norm2.bias".into(), false));
        assert_eq!(m("encoder.conv_norm_out.weight"), ("encoder.norm_out.weight".into(), false));
        assert_eq!(m("quant_conv.weight"), ("quant_conv.weight".into(), false));
    }
}
