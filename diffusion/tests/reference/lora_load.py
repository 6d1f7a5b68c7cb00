#!/usr/bin/env python3
"""diffusers' image for a LoRA file that genlab wrote, for `tests/sd_finetune.rs`:

    .venv/bin/python diffusion/tests/reference/lora_load.py --pipeline DIR --lora FILE --out OUT.safetensors

Loads the diffusers folder DIR (sd_tiny.py's `pipeline/`), `load_lora_weights(FILE)` (the metadata's
LoraConfig and all), and writes the image of sd_tiny.py's text-to-image settings (DDIM from the folder, 5 steps,
guidance 7.5, the seed-42 initial latents) as `image` in OUT.
"""
import argparse

import diffusers
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

assert diffusers.__version__ == "0.42.1", diffusers.__version__

ap = argparse.ArgumentParser()
ap.add_argument("--pipeline", required=True)
ap.add_argument("--lora", required=True)
ap.add_argument("--prompt", default="a photo of a cat")
ap.add_argument("--out", required=True)
args = ap.parse_args()
pipe = StableDiffusionPipeline.from_pretrained(args.pipeline, safety_checker=None, requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
pipe.load_lora_weights(args.lora)
latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(42))
with torch.no_grad():
    image = pipe(prompt=args.prompt, negative_prompt="blurry", height=32, width=32, num_inference_steps=5,
                 guidance_scale=7.5, latents=latents, output_type="pt").images
save_file({"image": image.contiguous()}, args.out)
