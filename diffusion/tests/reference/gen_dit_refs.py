#!/usr/bin/env python3
"""Reference weights and outputs for genlab-diffusion's DiT parity test (`tests/dit_parity.rs`).

Produces `dit_tiny.safetensors` (next to this file) from Hugging Face diffusers 0.42.1 on torch 2.13 (CPU):

    .venv/bin/python diffusion/tests/reference/gen_dit_refs.py

The model is diffusers' `DiTTransformer2DModel` (`models/transformers/dit_transformer_2d.py`) with a tiny
class-conditional config: width 16 (2 heads of 8), 2 blocks, patch 2 on 8x8 inputs with 3 channels, 5 classes.
Every parameter is perturbed from its initial value so that a swapped name would change the output. The file
holds the state dict under diffusers' names, the fixed inputs (`input.sample`, `input.timesteps`,
`input.class_labels`, where label 5 is the null class) and `output.sample`; and the same model on a 12x12
input (`input.sample_12`, `output.sample_12`), where diffusers computes the position embedding for the
6x6 grid with the training grid's base size.
"""
import os

import diffusers
import torch
from diffusers import DiTTransformer2DModel
from safetensors.torch import save_file

assert diffusers.__version__ == "0.42.1", diffusers.__version__

HERE = os.path.dirname(os.path.abspath(__file__))

torch.manual_seed(0)
model = DiTTransformer2DModel(
    num_attention_heads=2,
    attention_head_dim=8,
    in_channels=3,
    out_channels=None,
    num_layers=2,
    dropout=0.0,
    attention_bias=True,
    sample_size=8,
    patch_size=2,
    activation_fn="gelu-approximate",
    num_embeds_ada_norm=5,
    norm_type="ada_norm_zero",
    norm_elementwise_affine=False,
    norm_eps=1e-5,
).eval()

with torch.no_grad():
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.05)

sample = torch.randn(2, 3, 8, 8)
timesteps = torch.tensor([10.0, 500.0])
class_labels = torch.tensor([1, 5])
sample_12 = torch.randn(2, 3, 12, 12)
with torch.no_grad():
    out = model(sample, timesteps, class_labels=class_labels).sample
    out_12 = model(sample_12, timesteps, class_labels=class_labels).sample

tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
tensors["input.sample"] = sample
tensors["input.timesteps"] = timesteps
tensors["input.class_labels"] = class_labels
tensors["output.sample"] = out.contiguous()
tensors["input.sample_12"] = sample_12
tensors["output.sample_12"] = out_12.contiguous()
path = os.path.join(HERE, "dit_tiny.safetensors")
save_file(tensors, path)
print(f"wrote {path}: {len(tensors)} tensors, {os.path.getsize(path)} bytes, output sum {out.sum().item():.6f}")
