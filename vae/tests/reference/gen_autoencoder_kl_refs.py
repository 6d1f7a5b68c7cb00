#!/usr/bin/env python3
"""Reference weights and outputs for genlab-vae's AutoencoderKL parity test (`tests/autoencoder_kl_parity.rs`).

Run from the workspace root with diffusers 0.42.1 on torch 2.13 (CPU):

    .venv/bin/python vae/tests/reference/gen_autoencoder_kl_refs.py

Builds diffusers' `AutoencoderKL` (`models/autoencoders/autoencoder_kl.py`, Encoder/Decoder of
`models/autoencoders/vae.py`) with a tiny config that still has every part: two blocks (one downsampler with
diffusers' asymmetric padding, one upsampler), channel changes (so `conv_shortcut`s), the mid block's attention,
`quant_conv` and `post_quant_conv`. Every parameter is perturbed from its initial value so that norm weights and
biases are not the identity and a swapped name changes the output.

Writes, next to this file:
- `autoencoder_kl_tiny/` as diffusers' `save_pretrained` does: `config.json`, `diffusion_pytorch_model.safetensors`;
- `autoencoder_kl_tiny_io.safetensors`: `input.sample` [2, 3, 16, 16] (torch.manual_seed(1)) and the outputs
  `output.mean`, `output.logvar` (the posterior's, logvar clamped as diffusers does) and `output.decode`
  (decode of the mean).
"""
import os

import diffusers
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

assert diffusers.__version__ == "0.42.1", diffusers.__version__

HERE = os.path.dirname(os.path.abspath(__file__))

torch.manual_seed(0)
model = AutoencoderKL(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(8, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=16,
).eval()

with torch.no_grad():
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.05)

torch.manual_seed(1)
sample = torch.randn(2, 3, 16, 16)
with torch.no_grad():
    posterior = model.encode(sample).latent_dist
    decoded = model.decode(posterior.mean).sample

out_dir = os.path.join(HERE, "autoencoder_kl_tiny")
model.save_pretrained(out_dir, safe_serialization=True)
io = {
    "input.sample": sample.contiguous(),
    "output.mean": posterior.mean.contiguous(),
    "output.logvar": posterior.logvar.contiguous(),
    "output.decode": decoded.contiguous(),
}
io_path = os.path.join(HERE, "autoencoder_kl_tiny_io.safetensors")
save_file(io, io_path)
size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir)) + os.path.getsize(io_path)
print(
    f"wrote {out_dir} and {io_path}: {len(model.state_dict())} parameters, {size} bytes in all; "
    f"latent {tuple(posterior.mean.shape)}, decode sum {decoded.sum().item():.6f}"
)
