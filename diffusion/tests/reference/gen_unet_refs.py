#!/usr/bin/env python3
"""Reference weights and output for genlab-diffusion's U-Net parity test (`tests/unet_parity.rs`).

Produces `unet_tiny.safetensors` (next to this file) from Hugging Face diffusers 0.42.1 on torch 2.13 (CPU):

    .venv/bin/python diffusion/tests/reference/gen_unet_refs.py

The model is diffusers' `UNet2DModel` (`models/unets/unet_2d.py`) with a tiny class-conditional config that
exercises every part genlab's `UNet2DModel` has: a plain down block, attention down blocks, the mid block,
`layers_per_block + 1` resnets per up block with skip concatenation, up/downsamplers, and the class embedding.
Every parameter is perturbed from its initial value so that norm weights and biases are not the identity and
a swapped name would change the output. The file holds the state dict under diffusers' names plus the
fixed inputs (`input.sample`, `input.timesteps`, `input.class_labels`) and `output.sample`.
"""
import os

import diffusers
import torch
from diffusers import UNet2DModel
from safetensors.torch import save_file

assert diffusers.__version__ == "0.42.1", diffusers.__version__

HERE = os.path.dirname(os.path.abspath(__file__))

torch.manual_seed(0)
model = UNet2DModel(
    sample_size=8,
    in_channels=3,
    out_channels=3,
    block_out_channels=(8, 16, 16),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=8,
    norm_num_groups=4,
    norm_eps=1e-5,
    flip_sin_to_cos=True,
    freq_shift=0,
    num_class_embeds=5,
    dropout=0.0,
).eval()

with torch.no_grad():
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.05)

sample = torch.randn(2, 3, 8, 8)
timesteps = torch.tensor([10.0, 500.0])
class_labels = torch.tensor([1, 4])
with torch.no_grad():
    out = model(sample, timesteps, class_labels=class_labels).sample

tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
tensors["input.sample"] = sample
tensors["input.timesteps"] = timesteps
tensors["input.class_labels"] = class_labels
tensors["output.sample"] = out.contiguous()
path = os.path.join(HERE, "unet_tiny.safetensors")
save_file(tensors, path)
print(f"wrote {path}: {len(tensors)} tensors, {os.path.getsize(path)} bytes, output sum {out.sum().item():.6f}")
