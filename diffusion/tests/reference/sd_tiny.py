#!/usr/bin/env python3
"""Tiny Stable-Diffusion-shaped models and their outputs, for genlab-diffusion's parity tests
(`tests/sd_parity.rs`, `tests/common/sd_reference.rs`).

    .venv/bin/python diffusion/tests/reference/sd_tiny.py --vocab BPE_GZ --out DIR

Needs torch 2.13.0, diffusers 0.42.1, transformers 5.24.0 and peft 0.22.0 (`cargo xtask setup` installs them
into .venv).
The tests run this script once per change of its text, into target/, and compare genlab against what it wrote.

Builds, with random weights (every norm weight and bias perturbed so none is the identity):
- `pipeline/`: a whole StableDiffusionPipeline in diffusers layout (`save_pretrained`): CLIPTextModel
  (quick_gelu, SD 1.x style) and CLIPTokenizer (vocab.json + merges.txt built from OpenAI's BPE file, as
  Hugging Face's SD tokenizers are), UNet2DConditionModel (conv proj_in/proj_out, one head count for every
  block), AutoencoderKL and DDIMScheduler with Stable Diffusion 1.x's schedule;
- `pipeline_inpaint/`: `pipeline/`'s components with a 9-channel inpainting UNet (StableDiffusionInpaintPipeline);
- `pipeline_xl/`: an SDXL-shaped StableDiffusionXLPipeline (two text encoders, added size and pooled-text
  conditioning, Euler);
- `pipeline_v2/`: the SD 2.x variant: CLIPTextModel with gelu and "!" padding, UNet2DConditionModel with linear
  projections, per-block head dims and upcast attention, the same VAE, DDIM with v-prediction;
- `single_file.safetensors` and `single_file_v2.safetensors`: the same weights under the original
  (CompVis / Stability) checkpoint keys, as `scripts/convert_diffusers_to_original_stable_diffusion.py` in the
  diffusers repository writes them (v2: OpenCLIP text keys with fused in_proj and one extra, unused layer),
  plus buffers that real checkpoints carry and a loader ignores; each is checked by loading it back with
  diffusers' `from_single_file` into identical weights;
- `lora_a/` and `lora_b/`: two peft LoRA adapters of `pipeline/`, saved by diffusers' `save_lora_weights` with
  their LoraConfig as metadata: `a` (rank 4, alpha 4) on the UNet's attention projections and the text
  encoder's; `b` (rank 2, alpha 1, one layer at rank 3 and alpha 6 through `rank_pattern`/`alpha_pattern`) on 3x3,
  stride-2 and 1x1 convolutions, time projections, feed-forward outputs and the text encoder's MLP. Their up
  projections are random (peft starts them at zero, which would make every comparison trivially pass).
  `lora_a_kohya.safetensors` is `a` in kohya-ss / A1111 keys (`lora_unet_*`, `lora_te_*`, `.alpha`) and
  `lora_a_diffusers.safetensors` in diffusers' own pre-peft keys (`.lora.down`, `.lora_linear_layer.up`); both
  are checked to give diffusers the same image as `a`;
- `lora_xl/` and `lora_xl_kohya.safetensors`: a LoRA of `pipeline_xl/` on the UNet's attention, convolutions
  and time projections and on both text encoders, saved by diffusers and in kohya's SDXL layout (the UNet under
  its original SGM names, `lora_unet_input_blocks_4_1_...`, text encoders as `lora_te1_` and `lora_te2_`),
  checked to give diffusers the same image;
- `ti_cat.safetensors` (diffusers' `learned_embeds` layout: one vector under its token `<cat-toy>`),
  `ti_style.safetensors` (A1111's layout: three vectors as `emb_params`, used as `<style>`) and
  `ti_xl.safetensors` (SDXL's: `clip_l` and `clip_g`, two vectors each): textual-inversion embeddings, with the
  ids, text embeddings and images diffusers' `load_textual_inversion` gives for prompts that use them;
- `controlnet/` and `controlnet_2/`: ControlNets made from `pipeline/`'s UNet by diffusers'
  `ControlNetModel.from_unet` (conditioning embedding widths (8, 16): the autoencoder's factor 2), with random
  zero convolutions so that their residuals are not zero; `controlnet_sd/` and `controlnet_sd.safetensors`: one
  with SD's (16, 32, 96, 256) embedding in diffusers' layout and as an original single file (`control_model.`
  keys), checked by loading it back with diffusers' `from_single_file`; `controlnet_xl/`: one made from
  `pipeline_xl/`'s UNet (added size and pooled-text conditioning);
- `io.safetensors`: fixed inputs and the reference outputs (names below).
"""
import argparse
import gzip
import json
import os
import shutil

import diffusers
import torch
import transformers
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetPipeline,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

assert diffusers.__version__ == "0.42.1", diffusers.__version__
assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__

PROMPT = "a photo of a cat"
NEGATIVE = "blurry"
HEIGHT = WIDTH = 32
STEPS = 5
GUIDANCE = 7.5
SEED = 42


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer(vocab_gz, out, pad_token):
    """vocab.json + merges.txt as Hugging Face's openai/clip-vit-large-patch14 has them, from OpenAI's file."""
    merges = gzip.open(vocab_gz).read().decode("utf-8").split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]
    vocab = bytes_to_unicode()
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(
        os.path.join(out, "vocab.json"), os.path.join(out, "merges.txt"), pad_token=pad_token, model_max_length=77
    )
    tok.save_pretrained(out)
    return tok


def perturb(model, scale=0.1):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * scale)
    return model.eval()


def text_encoder(act, projection=False):
    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
        projection_dim=32,
    )
    return perturb((CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg))


def unet(v2, in_channels=4):
    kw = dict(
        sample_size=HEIGHT // 2,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        cross_attention_dim=32,
        norm_num_groups=8,
    )
    if v2:
        kw.update(attention_head_dim=(4, 8, 8), use_linear_projection=True, upcast_attention=True)
    else:
        kw.update(attention_head_dim=4)
    return perturb(UNet2DConditionModel(**kw))


def vae():
    return perturb(
        AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=HEIGHT,
            scaling_factor=0.18215,
        ),
        0.05,
    )


def scheduler(v2):
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if v2 else "epsilon",
    )


# ---- diffusers -> original (CompVis / Stability) keys, after diffusers' convert_diffusers_to_original_stable_diffusion.py,
# with the block counts taken from the config instead of SD 1.5's.
RESNET = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"), ("out_layers.3", "conv2"),
          ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]


def unet_to_original(sd, cfg):
    lpb = cfg["layers_per_block"]
    n = len(cfg["block_out_channels"])
    pairs = [("time_embed.0", "time_embedding.linear_1"), ("time_embed.2", "time_embedding.linear_2"),
             ("input_blocks.0.0", "conv_in"), ("out.0", "conv_norm_out"), ("out.2", "conv_out")]
    for i in range(n):
        for j in range(lpb):
            pairs.append((f"input_blocks.{i * (lpb + 1) + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            pairs.append((f"input_blocks.{i * (lpb + 1) + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(lpb + 1):
            pairs.append((f"output_blocks.{i * (lpb + 1) + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            pairs.append((f"output_blocks.{i * (lpb + 1) + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < n - 1:
            pairs.append((f"input_blocks.{(i + 1) * (lpb + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            has_attn = "CrossAttn" in cfg["up_block_types"][i]
            pairs.append((f"output_blocks.{i * (lpb + 1) + lpb}.{2 if has_attn else 1}.", f"up_blocks.{i}.upsamplers.0."))
    pairs.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        pairs.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))
    out = {}
    for k, v in sd.items():
        new = k
        if "resnets" in k:
            for orig, diff in RESNET:
                new = new.replace("." + diff + ".", "." + orig + ".")
        for orig, diff in pairs:
            if new.startswith(diff):
                new = orig + new[len(diff):]
                break
        out["model.diffusion_model." + new] = v
    return out


def vae_to_original(sd, cfg):
    n = len(cfg["block_out_channels"])
    pairs = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out"), ("mid.attn_1.", "mid_block.attentions.0.")]
    for i in range(n):
        for j in range(cfg["layers_per_block"]):
            pairs.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        for j in range(cfg["layers_per_block"] + 1):
            pairs.append((f"decoder.up.{n - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
        if i < n - 1:
            pairs.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            pairs.append((f"up.{n - 1 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
    for j in range(2):
        pairs.append((f"mid.block_{j + 1}.", f"mid_block.resnets.{j}."))
    attn = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]
    out = {}
    for k, v in sd.items():
        new = k
        for orig, diff in pairs:
            new = new.replace(diff, orig)
        if "attn_1" in new:
            for orig, diff in attn:
                new = new.replace("attn_1." + diff, "attn_1." + orig)
            if new.endswith("weight") and "norm" not in new:
                v = v.reshape(*v.shape, 1, 1)
        out["first_stage_model." + new] = v
    return out


def text_keys(sd):
    """transformers 5 saves CLIPTextModel without the `text_model.` prefix that 4.x wrote and checkpoints carry."""
    return {k if k.startswith("text_model.") else "text_model." + k: v for k, v in sd.items()}


def clip_to_openclip(sd, cfg):
    """transformers CLIPTextModel -> open_clip text tower keys (SD 2.x checkpoints), fused q/k/v."""
    sd = text_keys(sd)
    out = {}
    p = "cond_stage_model.model."
    out[p + "token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out[p + "positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    out[p + "ln_final.weight"] = sd["text_model.final_layer_norm.weight"]
    out[p + "ln_final.bias"] = sd["text_model.final_layer_norm.bias"]
    h = cfg.hidden_size
    out[p + "text_projection"] = torch.randn(h, h)
    for i in range(cfg.num_hidden_layers + 1):
        # SD 2.x uses the penultimate layer: its checkpoints have one layer more than diffusers' text encoder.
        src = min(i, cfg.num_hidden_layers - 1)
        s = f"text_model.encoder.layers.{src}."
        d = f"{p}transformer.resblocks.{i}."
        scale = 1.0 if i < cfg.num_hidden_layers else 0.5
        for w in ("weight", "bias"):
            out[d + f"attn.in_proj_{w}"] = torch.cat([sd[s + f"self_attn.{x}_proj.{w}"] for x in "qkv"]) * scale
            out[d + f"attn.out_proj.{w}"] = sd[s + f"self_attn.out_proj.{w}"] * scale
            out[d + f"ln_1.{w}"] = sd[s + f"layer_norm1.{w}"] * scale
            out[d + f"ln_2.{w}"] = sd[s + f"layer_norm2.{w}"] * scale
            out[d + f"mlp.c_fc.{w}"] = sd[s + f"mlp.fc1.{w}"] * scale
            out[d + f"mlp.c_proj.{w}"] = sd[s + f"mlp.fc2.{w}"] * scale
    return out


def single_file(pipe, path, v2):
    sd = {}
    sd.update(unet_to_original(pipe.unet.state_dict(), pipe.unet.config))
    sd.update(vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
    te = pipe.text_encoder.state_dict()
    if v2:
        sd.update(clip_to_openclip(te, pipe.text_encoder.config))
    else:
        for k, v in text_keys(te).items():
            sd["cond_stage_model.transformer." + k] = v
    # Buffers real checkpoints carry that no diffusers component has.
    sd["betas"] = pipe.scheduler.betas.clone()
    sd["alphas_cumprod"] = pipe.scheduler.alphas_cumprod.clone()
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    save_file({k: v.contiguous() for k, v in sd.items()}, path)


def check_single_file(pipe, path, folder):
    """diffusers' own single-file loader must read the file back into the same weights, so the key layout
    genlab is tested on is the one real checkpoints have, not only genlab's reading of it."""
    back = StableDiffusionPipeline.from_single_file(path, config=folder, local_files_only=True, safety_checker=None,
                                                    requires_safety_checker=False)
    for comp in ("unet", "vae", "text_encoder"):
        want, got = getattr(pipe, comp).state_dict(), getattr(back, comp).state_dict()
        assert set(want) == set(got), (path, comp, set(want) ^ set(got))
        for k, v in want.items():
            assert torch.equal(v, got[k].reshape(v.shape)), (path, comp, k)


LORA_SPECS = {
    # name: (UNet config, text encoder config)
    "a": (LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]),
          LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])),
    "b": (LoraConfig(r=2, lora_alpha=1, init_lora_weights="gaussian",
                     target_modules=["conv1", "conv2", "conv", "proj_in", "time_emb_proj", "ff.net.2", "conv_shortcut"],
                     rank_pattern={"down_blocks.1.resnets.0.conv1": 3}, alpha_pattern={"down_blocks.1.resnets.0.conv1": 6}),
          # diffusers cannot infer the format of a text encoder LoRA on the MLP alone: q_proj goes with it.
          LoraConfig(r=2, lora_alpha=1, init_lora_weights="gaussian", target_modules=["q_proj", "fc1", "fc2"])),
}


def load_pipeline(folder):
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lora_files(tmp):
    """The adapters of LORA_SPECS on `pipeline/`, saved as diffusers saves them, `a` also in two other layouts."""
    pipe = load_pipeline(os.path.join(tmp, "pipeline"))
    torch.manual_seed(7)
    files = {}
    for name, (unet_cfg, text_cfg) in LORA_SPECS.items():
        pipe.unet.add_adapter(unet_cfg, adapter_name=name)
        pipe.text_encoder.add_adapter(text_cfg, adapter_name=name)
        with torch.no_grad():
            for model in (pipe.unet, pipe.text_encoder):
                for n, p in model.named_parameters():
                    if f"lora_B.{name}." in n:
                        p.normal_(0, 0.1)
        folder = os.path.join(tmp, "lora_" + name)
        StableDiffusionPipeline.save_lora_weights(
            folder,
            unet_lora_layers=get_peft_model_state_dict(pipe.unet, adapter_name=name),
            text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder, adapter_name=name),
            unet_lora_adapter_metadata=unet_cfg.to_dict(),
            text_encoder_lora_adapter_metadata=text_cfg.to_dict(),
        )
        files[name] = os.path.join(folder, "pytorch_lora_weights.safetensors")
    # kohya's text keys carry transformers 4's `text_model.` (transformers 5 saves without it) and SD 1.x's
    # `lora_te_` (diffusers writes SDXL's `lora_te1_`).
    peft_a = load_file(files["a"])
    with_text_model = {k.replace("text_encoder.", "text_encoder.text_model."): v for k, v in peft_a.items()}
    kohya = {k.replace("lora_te1_", "lora_te_"): v for k, v in convert_state_dict_to_kohya(with_text_model).items()}
    files["a_kohya"] = os.path.join(tmp, "lora_a_kohya.safetensors")
    save_file(kohya, files["a_kohya"])
    files["a_diffusers"] = os.path.join(tmp, "lora_a_diffusers.safetensors")
    save_file(convert_state_dict_to_diffusers(peft_a), files["a_diffusers"])
    return files


def lora_xl_files(tmp):
    """A LoRA of `pipeline_xl/`, in diffusers' layout and in kohya's SDXL layout (SGM UNet names)."""
    pipe = StableDiffusionXLPipeline.from_pretrained(os.path.join(tmp, "pipeline_xl"))
    torch.manual_seed(8)
    unet_cfg = LoraConfig(r=4, lora_alpha=2, init_lora_weights="gaussian",
                          target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv", "time_emb_proj"])
    text_cfg = LoraConfig(r=4, lora_alpha=2, init_lora_weights="gaussian",
                          target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
    pipe.unet.add_adapter(unet_cfg)
    pipe.text_encoder.add_adapter(text_cfg)
    pipe.text_encoder_2.add_adapter(text_cfg)
    layers = {}
    with torch.no_grad():
        for comp in ("unet", "text_encoder", "text_encoder_2"):
            model = getattr(pipe, comp)
            for n, p in model.named_parameters():
                if "lora_B." in n:
                    p.normal_(0, 0.1)
            layers[comp] = get_peft_model_state_dict(model)
    folder = os.path.join(tmp, "lora_xl")
    StableDiffusionXLPipeline.save_lora_weights(
        folder, unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers["text_encoder"],
        text_encoder_2_lora_layers=layers["text_encoder_2"], unet_lora_adapter_metadata=unet_cfg.to_dict(),
        text_encoder_lora_adapter_metadata=text_cfg.to_dict(), text_encoder_2_lora_adapter_metadata=text_cfg.to_dict())
    kohya = {}
    for comp, prefix in (("unet", "lora_unet_"), ("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_")):
        for key, v in layers[comp].items():
            module, part = key.rsplit(".lora_", 1)
            if comp == "unet":
                # The original name of the module, through the same renaming as a single-file checkpoint.
                (orig,) = unet_to_original({module + ".weight": v}, pipe.unet.config)
                module = orig.removeprefix("model.diffusion_model.").removesuffix(".weight")
            elif not module.startswith("text_model."):
                # transformers 5's CLIPTextModel has no `text_model.` (CLIPTextModelWithProjection keeps it).
                module = "text_model." + module
            name = prefix + module.replace(".", "_")
            kohya[name + (".lora_down.weight" if part.startswith("A") else ".lora_up.weight")] = v
            kohya[name + ".alpha"] = torch.tensor(float(text_cfg.lora_alpha))
    kohya_path = os.path.join(tmp, "lora_xl_kohya.safetensors")
    save_file(kohya, kohya_path)
    return os.path.join(folder, "pytorch_lora_weights.safetensors"), kohya_path


def controlnet(unet, widths):
    """diffusers' ControlNet of `unet`, zero convolutions randomised (a new one adds nothing)."""
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=widths)
    with torch.no_grad():
        zero = list(net.controlnet_down_blocks) + [net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
        for m in zero:
            m.weight.normal_(0, 0.2)
            m.bias.normal_(0, 0.05)
    return perturb(net)


def controlnet_to_original(net):
    """diffusers ControlNetModel -> the original ControlNet checkpoint keys (`control_model.` prefix), the
    inverse of diffusers' convert_controlnet_checkpoint."""
    sd = net.state_dict()
    blocks = len(net.controlnet_cond_embedding.blocks)
    out = {}
    rest = {}
    for k, v in sd.items():
        if k.startswith("controlnet_down_blocks."):
            i, tail = k[len("controlnet_down_blocks."):].split(".", 1)
            out[f"zero_convs.{i}.0.{tail}"] = v
        elif k.startswith("controlnet_mid_block."):
            out["middle_block_out.0." + k[len("controlnet_mid_block."):]] = v
        elif k.startswith("controlnet_cond_embedding.conv_in."):
            out["input_hint_block.0." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("controlnet_cond_embedding.conv_out."):
            out[f"input_hint_block.{2 * (blocks + 1)}." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("controlnet_cond_embedding.blocks."):
            i, tail = k[len("controlnet_cond_embedding.blocks."):].split(".", 1)
            out[f"input_hint_block.{2 * (int(i) + 1)}.{tail}"] = v
        else:
            rest[k] = v
    cfg = dict(net.config)
    cfg["up_block_types"] = [t.replace("Down", "Up") for t in reversed(cfg["down_block_types"])]
    for k, v in unet_to_original(rest, cfg).items():
        out[k.replace("model.diffusion_model.", "")] = v
    return {"control_model." + k: v.contiguous() for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", required=True, help="OpenAI's bpe_simple_vocab_16e6.txt.gz")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = args.out
    tmp = out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    io = {}

    torch.manual_seed(0)
    pipes = {}
    for v2 in (False, True):
        name = "pipeline_v2" if v2 else "pipeline"
        tok = write_tokenizer(args.vocab, os.path.join(tmp, "tokenizer_" + name), "!" if v2 else "<|endoftext|>")
        pipe = StableDiffusionPipeline(
            vae=vae(),
            text_encoder=text_encoder("gelu" if v2 else "quick_gelu"),
            tokenizer=tok,
            unet=unet(v2),
            scheduler=scheduler(v2),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        pipe.save_pretrained(os.path.join(tmp, name), safe_serialization=True)
        shutil.rmtree(os.path.join(tmp, "tokenizer_" + name))
        sf = os.path.join(tmp, "single_file_v2.safetensors" if v2 else "single_file.safetensors")
        single_file(pipe, sf, v2)
        check_single_file(pipe, sf, os.path.join(tmp, name))
        pipes[name] = pipe

    # An inpainting model: its UNet also sees the mask and the masked image's latents (9 input channels).
    base = pipes["pipeline"]
    inpainter = StableDiffusionInpaintPipeline(
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=unet(False, in_channels=9),
        scheduler=scheduler(False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    inpainter.set_progress_bar_config(disable=True)
    inpainter.save_pretrained(os.path.join(tmp, "pipeline_inpaint"), safe_serialization=True)

    # SDXL-shaped: two text encoders (the second with a projection, padding with "!"), their penultimate layers
    # concatenated (32 + 32 = 64 wide), the pooled projection and six size/crop ids as added conditioning
    # (32 + 6 x 8 = 80), transformer depth per block, Euler (SDXL's published scheduler).
    xl_unet = perturb(UNet2DConditionModel(
        sample_size=HEIGHT // 2, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64), layers_per_block=2, attention_head_dim=(2, 4, 8),
        transformer_layers_per_block=(1, 1, 2), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=80, cross_attention_dim=64,
        norm_num_groups=8))
    tok2 = write_tokenizer(args.vocab, os.path.join(tmp, "tokenizer_xl"), "!")
    xl = StableDiffusionXLPipeline(
        vae=base.vae,
        text_encoder=text_encoder("quick_gelu"),
        text_encoder_2=text_encoder("gelu", projection=True),
        tokenizer=base.tokenizer,
        tokenizer_2=tok2,
        unet=xl_unet,
        scheduler=EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                         beta_schedule="scaled_linear", steps_offset=1,
                                         timestep_spacing="leading"),
        add_watermarker=False,
    )
    xl.set_progress_bar_config(disable=True)
    xl.save_pretrained(os.path.join(tmp, "pipeline_xl"), safe_serialization=True)
    shutil.rmtree(os.path.join(tmp, "tokenizer_xl"))

    with torch.no_grad():
        for name, pipe in pipes.items():
            p = name + "."
            # Text encoder: the prompt and the negative prompt, padded to 77 by the pipeline's own tokenizer.
            ids = pipe.tokenizer([PROMPT, NEGATIVE], padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt").input_ids
            io[p + "text.input_ids"] = ids
            enc = pipe.text_encoder(ids, output_hidden_states=True)
            io[p + "text.last_hidden_state"] = enc.last_hidden_state
            # clip_skip=1 in diffusers' pipelines: the penultimate layer's output through the final layer norm.
            io[p + "text.clip_skip_1"] = getattr(pipe.text_encoder, "text_model", pipe.text_encoder).final_layer_norm(enc.hidden_states[-2])

            # UNet: noise prediction with cross-attention, two timesteps in one batch.
            torch.manual_seed(1)
            sample = torch.randn(2, 4, HEIGHT // 2, WIDTH // 2)
            t = torch.tensor([10, 731])
            io[p + "unet.sample"] = sample
            io[p + "unet.timestep"] = t
            io[p + "unet.encoder_hidden_states"] = enc.last_hidden_state
            io[p + "unet.out"] = pipe.unet(sample, t, encoder_hidden_states=enc.last_hidden_state).sample

            # VAE: encode (posterior mean and logvar) and decode.
            image = torch.rand(2, 3, HEIGHT, WIDTH) * 2 - 1
            post = pipe.vae.encode(image).latent_dist
            io[p + "vae.image"] = image
            io[p + "vae.mean"] = post.mean
            io[p + "vae.logvar"] = post.logvar
            io[p + "vae.decode"] = pipe.vae.decode(post.mean).sample

        # Whole pipelines: the same initial latents, drawn from libtorch's CPU generator seeded SEED.
        latents = torch.randn(1, 4, HEIGHT // 2, WIDTH // 2, generator=torch.Generator().manual_seed(SEED))
        io["latents_init"] = latents
        runs = [
            ("pipeline", "ddim", pipes["pipeline"].scheduler),
            # As from the saved scheduler_config.json: every key applies, timestep_spacing "leading" included
            # (from_config on the live config would let DPM-Solver fall back to its own defaults for keys the
            # DDIM scheduler took by default).
            ("pipeline", "dpmpp", DPMSolverMultistepScheduler.from_config(
                {k: v for k, v in pipes["pipeline"].scheduler.config.items() if k != "_use_default_values"})),
            ("pipeline_v2", "ddim", pipes["pipeline_v2"].scheduler),
        ]
        for name, sampler, sched in runs:
            pipe = pipes[name]
            pipe.scheduler = sched
            kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
                      guidance_scale=GUIDANCE)
            p = f"{name}.{sampler}."
            io[p + "latents"] = pipe(latents=latents.clone(), output_type="latent", **kw).images
            io[p + "image"] = pipe(latents=latents.clone(), output_type="pt", **kw).images
            io[p + "timesteps"] = sched.timesteps.clone()

        # SD-Turbo's recipe: Euler with trailing timesteps, one step, no guidance.
        pipe = pipes["pipeline"]
        cfg = {k: v for k, v in pipe.scheduler.config.items() if k != "_use_default_values"}
        pipe.scheduler = EulerDiscreteScheduler.from_config(cfg, timestep_spacing="trailing")
        kw = dict(prompt=PROMPT, height=HEIGHT, width=WIDTH, num_inference_steps=1, guidance_scale=0.0)
        io["pipeline.turbo.latents"] = pipe(latents=latents.clone(), output_type="latent", **kw).images
        io["pipeline.turbo.image"] = pipe(latents=latents.clone(), output_type="pt", **kw).images
        io["pipeline.turbo.timesteps"] = pipe.scheduler.timesteps.clone()

        # Image-to-image, DDIM, strength 0.6: the posterior sample and the noise both come from the generator.
        pipe = pipes["pipeline"]
        pipe.scheduler = scheduler(False)
        i2i = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
        i2i.set_progress_bar_config(disable=True)
        torch.manual_seed(3)
        init = torch.rand(1, 3, HEIGHT, WIDTH)
        io["img2img.init_image"] = init
        io["img2img.image"] = i2i(prompt=PROMPT, negative_prompt=NEGATIVE, image=init, strength=0.6,
                                  num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type="pt",
                                  generator=torch.Generator().manual_seed(SEED)).images

        # Inpainting, DDIM, the left half regenerated (white = repaint in diffusers): a plain UNet at strength 1
        # and 0.6 (the known half re-noised after every step), and the 9-channel inpainting UNet at strength 1.
        mask = torch.zeros(1, 1, HEIGHT, WIDTH)
        mask[..., : WIDTH // 2] = 1.0
        io["inpaint.mask"] = mask
        plain = StableDiffusionInpaintPipeline(**pipe.components, requires_safety_checker=False)
        plain.set_progress_bar_config(disable=True)
        kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, image=init, mask_image=mask, height=HEIGHT, width=WIDTH,
                  num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type="pt")
        for key, p, strength in [("plain_s100", plain, 1.0), ("plain_s60", plain, 0.6), ("model_s100", inpainter, 1.0)]:
            io[f"inpaint.{key}"] = p(strength=strength, generator=torch.Generator().manual_seed(SEED), **kw).images

        # SDXL: with a negative prompt, and with none (zero negative conditioning, force_zeros_for_empty_prompt).
        for key, negative in [("negative", NEGATIVE), ("zeros", None)]:
            kw = dict(prompt=PROMPT, negative_prompt=negative, height=HEIGHT, width=WIDTH,
                      num_inference_steps=STEPS, guidance_scale=5.0)
            io[f"xl.{key}.latents"] = xl(latents=latents.clone(), output_type="latent", **kw).images
            io[f"xl.{key}.image"] = xl(latents=latents.clone(), output_type="pt", **kw).images
        ids = xl.tokenizer_2([PROMPT], padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
        enc2 = xl.text_encoder_2(ids, output_hidden_states=True)
        io["xl.text2.penultimate"] = enc2.hidden_states[-2]
        io["xl.text2.text_embeds"] = enc2.text_embeds

        # LoRA, with DDIM (the folder's scheduler): a at 0.5 and b at 0.8 unfused; both at 1 fused into the
        # weights; a alone at 1 from each of its three layouts, which must agree.
        files = lora_files(tmp)
        kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
                  guidance_scale=GUIDANCE, output_type="pt")
        pipe = load_pipeline(os.path.join(tmp, "pipeline"))
        pipe.load_lora_weights(files["a"], adapter_name="a")
        pipe.load_lora_weights(files["b"], adapter_name="b")
        pipe.set_adapters(["a", "b"], adapter_weights=[0.5, 0.8])
        io["lora.unfused.image"] = pipe(latents=latents.clone(), **kw).images
        pipe.set_adapters(["a", "b"], adapter_weights=[1.0, 1.0])
        pipe.fuse_lora(lora_scale=1.0, adapter_names=["a", "b"])
        io["lora.fused.image"] = pipe(latents=latents.clone(), **kw).images
        alone = {}
        for layout in ("a", "a_kohya", "a_diffusers"):
            pipe = load_pipeline(os.path.join(tmp, "pipeline"))
            pipe.load_lora_weights(files[layout], adapter_name="a")
            alone[layout] = pipe(latents=latents.clone(), **kw).images
            assert torch.allclose(alone[layout], alone["a"], atol=1e-6), layout
        io["lora.a.image"] = alone["a"]

        # SDXL: the LoRA from diffusers' layout and from kohya's SGM layout, at weight 0.7.
        xl_files = lora_xl_files(tmp)
        images = []
        for path in xl_files:
            pipe = StableDiffusionXLPipeline.from_pretrained(os.path.join(tmp, "pipeline_xl"))
            pipe.set_progress_bar_config(disable=True)
            pipe.load_lora_weights(path, adapter_name="xl")
            pipe.set_adapters(["xl"], adapter_weights=[0.7])
            images.append(pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
                               guidance_scale=5.0, latents=latents.clone(), output_type="pt").images)
        assert torch.allclose(images[0], images[1], atol=1e-6), (images[0] - images[1]).abs().max()
        io["lora.xl.image"] = images[0]

        # Textual inversion: a single-vector token from diffusers' layout, a three-vector one from A1111's, used
        # together (the multi-vector token expands to `<style> <style>_1 <style>_2`); SDXL's two-encoder file.
        torch.manual_seed(9)
        save_file({"<cat-toy>": torch.randn(32) * 0.5}, os.path.join(tmp, "ti_cat.safetensors"))
        save_file({"emb_params": torch.randn(3, 32) * 0.5}, os.path.join(tmp, "ti_style.safetensors"))
        save_file({"clip_l": torch.randn(2, 32) * 0.5, "clip_g": torch.randn(2, 32) * 0.5},
                  os.path.join(tmp, "ti_xl.safetensors"))
        pipe = load_pipeline(os.path.join(tmp, "pipeline"))
        pipe.load_textual_inversion(os.path.join(tmp, "ti_cat.safetensors"))
        pipe.load_textual_inversion(os.path.join(tmp, "ti_style.safetensors"), token="<style>")
        ti_prompt = "a photo of <cat-toy> in <style> style"
        converted = pipe.maybe_convert_prompt(ti_prompt, pipe.tokenizer)
        ids = pipe.tokenizer([converted], padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
        io["ti.input_ids"] = ids
        io["ti.text"] = pipe.text_encoder(ids).last_hidden_state
        io["ti.image"] = pipe(prompt=ti_prompt, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH,
                              num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=latents.clone(),
                              output_type="pt").images
        pipe = StableDiffusionXLPipeline.from_pretrained(os.path.join(tmp, "pipeline_xl"))
        pipe.set_progress_bar_config(disable=True)
        xl_ti = load_file(os.path.join(tmp, "ti_xl.safetensors"))
        pipe.load_textual_inversion(xl_ti["clip_l"], token="<xl-style>", text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(xl_ti["clip_g"], token="<xl-style>", text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)
        io["ti.xl.image"] = pipe(prompt="a photo of a cat, <xl-style>", negative_prompt=NEGATIVE, height=HEIGHT,
                                 width=WIDTH, num_inference_steps=STEPS, guidance_scale=5.0,
                                 latents=latents.clone(), output_type="pt").images

        # ControlNet: one at scale 0.8; two at once (scales 0.6 and 1.0, the first over the first 80% of the
        # steps, the second from 20%); guess mode. The control images are random, in [0, 1].
        torch.manual_seed(10)
        base = load_pipeline(os.path.join(tmp, "pipeline"))
        nets = [controlnet(base.unet, (8, 16)), controlnet(base.unet, (8, 16))]
        nets[0].save_pretrained(os.path.join(tmp, "controlnet"))
        nets[1].save_pretrained(os.path.join(tmp, "controlnet_2"))
        hints = [torch.rand(1, 3, HEIGHT, WIDTH), torch.rand(1, 3, HEIGHT, WIDTH)]
        io["cn.hint"], io["cn.hint_2"] = hints
        kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                  output_type="pt")
        for key, net, hint, extra in [
            ("one", nets[0], hints[0], dict(controlnet_conditioning_scale=0.8)),
            ("two", nets, hints, dict(controlnet_conditioning_scale=[0.6, 1.0], control_guidance_start=[0.0, 0.2],
                                      control_guidance_end=[0.8, 1.0])),
            ("guess", nets[0], hints[0], dict(guess_mode=True)),
        ]:
            cn_pipe = StableDiffusionControlNetPipeline(**base.components, controlnet=net,
                                                        requires_safety_checker=False)
            cn_pipe.set_progress_bar_config(disable=True)
            io[f"cn.{key}.image"] = cn_pipe(image=hint, latents=latents.clone(), **kw, **extra).images
        # SDXL, guess mode (the ControlNet sees the prompt's half of the added conditioning too).
        xl_base = StableDiffusionXLPipeline.from_pretrained(os.path.join(tmp, "pipeline_xl"))
        xl_net = controlnet(xl_base.unet, (8, 16))
        xl_net.save_pretrained(os.path.join(tmp, "controlnet_xl"))
        xl_pipe = StableDiffusionXLControlNetPipeline(**xl_base.components, controlnet=xl_net)
        xl_pipe.set_progress_bar_config(disable=True)
        for key, guess in [("xl", False), ("xl_guess", True)]:
            io[f"cn.{key}.image"] = xl_pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=hints[0], num_inference_steps=STEPS,
                                           guidance_scale=5.0, latents=latents.clone(), controlnet_conditioning_scale=0.7,
                                           guess_mode=guess, output_type="pt").images
        # SD's conditioning embedding (factor 8) alone, in diffusers' layout and as a single file.
        sd_net = controlnet(base.unet, (16, 32, 96, 256))
        sd_net.save_pretrained(os.path.join(tmp, "controlnet_sd"))
        single = os.path.join(tmp, "controlnet_sd.safetensors")
        save_file(controlnet_to_original(sd_net), single)
        back = ControlNetModel.from_single_file(single, config=os.path.join(tmp, "controlnet_sd"),
                                                local_files_only=True)
        for k, v in sd_net.state_dict().items():
            assert torch.equal(v, back.state_dict()[k]), k
        torch.manual_seed(11)
        sample, hint = torch.randn(2, 4, 4, 4), torch.rand(2, 3, 32, 32)
        t, text = torch.tensor([10, 731]), io["pipeline.text.last_hidden_state"]
        down, mid = sd_net(sample, t, encoder_hidden_states=text, controlnet_cond=hint, conditioning_scale=0.7,
                           return_dict=False)
        io["cn.sd.sample"], io["cn.sd.hint"] = sample, hint
        for i, d in enumerate(down):
            io[f"cn.sd.down.{i}"] = d
        io["cn.sd.mid"] = mid

    save_file({k: v.contiguous().clone() for k, v in io.items()}, os.path.join(tmp, "io.safetensors"))
    with open(os.path.join(tmp, "versions.json"), "w") as f:
        json.dump({"torch": torch.__version__, "diffusers": diffusers.__version__,
                   "transformers": transformers.__version__, "prompt": PROMPT, "negative_prompt": NEGATIVE,
                   "height": HEIGHT, "width": WIDTH, "steps": STEPS, "guidance": GUIDANCE, "seed": SEED}, f, indent=1)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    print(f"wrote {out}: {len(io)} reference tensors")


if __name__ == "__main__":
    main()
