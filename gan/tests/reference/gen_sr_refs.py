#!/usr/bin/env python3
"""Reference numbers for genlab-gan's super-resolution metrics and resampling tests.

Produces `sr_refs.json` (next to this file) with scikit-image 0.26.0 and torch 2.13.0 (CPU):

    .venv/bin/pip install scikit-image==0.26.0   (torch 2.13.0 already in the project venv)
    .venv/bin/python gan/tests/reference/gen_sr_refs.py

- SSIM: `skimage.metrics.structural_similarity` with the settings of Wang et al. 2004 as genlab
  uses them: Gaussian weights (sigma 1.5, so an 11x11 window), population covariances
  (`use_sample_covariance=False`), K1 0.01, K2 0.03, `data_range=1`, mean over the image
  (and over the channels for colour). The images are closed-form patterns that the Rust test
  rebuilds from the same formulas in f64.
- PSNR: `skimage.metrics.peak_signal_noise_ratio` with `data_range=1` on the same pairs.
- Resampling: `torch.nn.functional.interpolate(..., mode="bicubic", antialias=True,
  align_corners=False)` to a given size, down by 2 and 4 and up by 2, on a closed-form 1x1x8x8 input.
"""
import json
import math
import os

import numpy as np
import skimage
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

assert skimage.__version__ == "0.26.0", skimage.__version__
assert torch.__version__.startswith("2.13.0"), torch.__version__


def pattern(c, h, w, phase):
    """x[k, i, j] = 0.5 + 0.4 * sin(0.7 i + 0.3 j + 1.1 k + phase)"""
    x = np.zeros((c, h, w), dtype=np.float64)
    for k in range(c):
        for i in range(h):
            for j in range(w):
                x[k, i, j] = 0.5 + 0.4 * math.sin(0.7 * i + 0.3 * j + 1.1 * k + phase)
    return x


def distort(x):
    """clip(x + 0.15 cos(1.3 i - 0.5 j + k), 0, 1)"""
    c, h, w = x.shape
    y = x.copy()
    for k in range(c):
        for i in range(h):
            for j in range(w):
                y[k, i, j] = min(1.0, max(0.0, x[k, i, j] + 0.15 * math.cos(1.3 * i - 0.5 * j + k)))
    return y


def ssim(a, b):
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, K1=0.01, K2=0.03)
    if a.shape[0] == 1:
        return float(structural_similarity(a[0], b[0], **kw))
    return float(structural_similarity(a, b, channel_axis=0, **kw))


cases = []
for name, (c, h, w) in [("grey_16x20", (1, 16, 20)), ("rgb_13x17", (3, 13, 17)), ("grey_28x28", (1, 28, 28))]:
    a = pattern(c, h, w, 0.0)
    b = distort(a)
    shifted = pattern(c, h, w, 0.8)
    cases.append(
        dict(
            name=name,
            shape=[c, h, w],
            ssim_distorted=ssim(a, b),
            ssim_shifted=ssim(a, shifted),
            psnr_distorted=float(peak_signal_noise_ratio(a, b, data_range=1.0)),
        )
    )

x = torch.tensor([[[[math.sin(0.9 * i + 0.4 * j) + 0.1 * i for j in range(8)] for i in range(8)]]], dtype=torch.float32)
resample = dict(
    input="sin(0.9 i + 0.4 j) + 0.1 i, 1x1x8x8, f32",
    down2=F.interpolate(x, size=(4, 4), mode="bicubic", antialias=True, align_corners=False).flatten().tolist(),
    down4=F.interpolate(x, size=(2, 2), mode="bicubic", antialias=True, align_corners=False).flatten().tolist(),
    up2=F.interpolate(x, size=(16, 16), mode="bicubic", antialias=True, align_corners=False).flatten().tolist(),
)

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sr_refs.json")
with open(out, "w") as f:
    json.dump(dict(ssim_psnr=cases, resample=resample), f, indent=1)
    f.write("\n")
print("wrote", out)
