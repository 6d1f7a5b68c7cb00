"""One LoRA training step of a small Stable-Diffusion-shaped UNet with diffusers and peft, the Python side of
`cargo xtask bench finetune`.

The step of diffusers' examples/text_to_image/train_text_to_image_lora.py: UNet2DConditionModel with SD 1.5's
layout at 128/256/512/512 channels (random weights, `requires_grad_(False)`), `unet.add_adapter(LoraConfig(r=4,
lora_alpha=4, target_modules=["to_k", "to_q", "to_v", "to_out.0"]))`, AdamW (lr 1e-4, weight decay 1e-2) over the
adapters, MSE to the noise, `clip_grad_norm_(..., 1.0)`, step, zero_grad; f32 on the CPU, latents [B, 4, S, S],
encoder_hidden_states [B, 77, 768]. Two warm-up steps, then the median of --steps.
Prints `params`, `lora_params`, `threads`, `s_per_step` and `peak_rss_mib` (the process's VmHWM), one per line.
"""
import argparse
import os
import time

import diffusers
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from peft import LoraConfig

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=5)
p.add_argument("--threads", type=int, default=os.cpu_count())
p.add_argument("--batch", type=int, default=2)
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
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
    norm_eps=1e-5,
)
params = sum(p.numel() for p in unet.parameters())
if a.expect_params is not None and params != a.expect_params:
    raise SystemExit(f"diffusers' UNet has {params} parameters, genlab's {a.expect_params}")
unet.requires_grad_(False)
unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
lora = [p for p in unet.parameters() if p.requires_grad]
opt = torch.optim.AdamW(lora, lr=1e-4, weight_decay=1e-2)
unet.train()
sample = torch.randn(a.batch, 4, a.latent, a.latent)
noise = torch.randn(a.batch, 4, a.latent, a.latent)
context = torch.randn(a.batch, 77, 768)
t = torch.randint(0, 1000, (a.batch,))
times = []
for i in range(a.steps + 2):
    t0 = time.perf_counter()
    pred = unet(sample, t, encoder_hidden_states=context).sample
    loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(lora, 1.0)
    opt.step()
    opt.zero_grad()
    float(lora[0][0, 0])
    if i >= 2:
        times.append(time.perf_counter() - t0)
times.sort()


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


print(f"params {params}")
print(f"lora_params {sum(p.numel() for p in lora)}")
print(f"threads {a.threads}")
print(f"s_per_step {times[len(times) // 2]:.4f}")
print(f"peak_rss_mib {peak_rss_mib():.0f}")
