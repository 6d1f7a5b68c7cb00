"""One denoising step of Stable Diffusion 1.5's UNet with diffusers, the Python side of `cargo xtask bench sd-unet`.

diffusers 0.42.1's UNet2DConditionModel with the architecture of
https://huggingface.co/runwayml/stable-diffusion-v1-5/blob/main/unet/config.json (random weights), f32 on the CPU,
latents [2, 4, S, S] (one image with classifier-free guidance; S = 32 is 256x256 pixels) and encoder_hidden_states
[2, 77, 768], inside no_grad; one warm-up step, then the median of --steps.
Prints `params`, `threads`, `s_per_step` and `peak_rss_mib` (the process's VmHWM), one per line.
"""
import argparse
import os
import time

import diffusers
import torch
from diffusers import UNet2DConditionModel

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=5)
p.add_argument("--threads", type=int, default=os.cpu_count())
p.add_argument("--latent", type=int, default=32)
p.add_argument("--expect-params", type=int, default=None)
a = p.parse_args()
assert diffusers.__version__ == "0.42.1", diffusers.__version__
torch.set_num_threads(a.threads)
torch.manual_seed(0)

unet = UNet2DConditionModel(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
    norm_eps=1e-5,
).eval()
params = sum(p.numel() for p in unet.parameters())
if a.expect_params is not None and params != a.expect_params:
    raise SystemExit(f"diffusers' UNet has {params} parameters, genlab's {a.expect_params}")
sample = torch.randn(2, 4, a.latent, a.latent)
context = torch.randn(2, 77, 768)
t = torch.tensor(500)
times = []
with torch.no_grad():
    for i in range(a.steps + 1):
        t0 = time.perf_counter()
        out = unet(sample, t, encoder_hidden_states=context).sample
        float(out[0, 0, 0, 0])
        if i > 0:
            times.append(time.perf_counter() - t0)
times.sort()


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


print(f"params {params}")
print(f"threads {a.threads}")
print(f"s_per_step {times[len(times) // 2]:.4f}")
print(f"peak_rss_mib {peak_rss_mib():.0f}")
