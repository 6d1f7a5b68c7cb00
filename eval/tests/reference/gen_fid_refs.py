#!/usr/bin/env python3
"""Reference numbers for genlab-eval's FID parity test (`tests/fid_parity.rs`).

Run from the workspace root with pytorch-fid 0.3.0 on torch 2.13 (CPU):

    .venv/bin/python eval/tests/reference/gen_fid_refs.py

Builds pytorch-fid's own `InceptionV3` (`pytorch_fid/inception.py`: `fid_inception_v3()` with the
`FIDInceptionA/C/E_1/E_2` blocks, output block 3, `resize_input=True`, `normalize_input=True`) without
downloading the published weights, and fills every tensor of its state dict by a formula that the Rust
test computes too, so no weights are checked in. `u(i, j)` is splitmix64 of `i * 2^32 + j` (wrapping
uint64 arithmetic), its top 53 bits scaled to [0, 1): exact in both languages.

    tensors sorted by name (`num_batches_tracked` left out), tensor i, element j (row-major), u = u(i, j)
    *conv.weight       (2 u - 1) sqrt(6 / fan_in)     (fan_in = in_channels * kh * kw; variance 2 / fan_in)
    *bn.weight         0.8 + 0.4 u
    *bn.bias           0.2 (2 u - 1)
    *bn.running_mean   0.2 (2 u - 1)
    *bn.running_var    0.5 + u
    fc.weight          (2 u - 1) sqrt(3 / 2048)
    fc.bias            0.1 (2 u - 1)

computed in float64 and rounded to float32. The input is two 3 x 40 x 40 images in [0, 1]: element j of
the flattened [2, 3, 40, 40] tensor is u(100000, j).

Also records pytorch-fid's `calculate_frechet_distance` (`pytorch_fid/fid_score.py`, moments as
`calculate_activation_statistics` takes them: `np.mean(axis=0)`, `np.cov(rowvar=False)`) between two
deterministic feature sets of 300 x 12:
    A[i, k] = sin(0.37 (k + 1) i + k) + 0.05 k
    B[i, k] = 1.3 sin(0.23 (k + 2) i + 0.5 k)^3 + 0.2 + 0.1 cos(0.11 (k + 1) i)

Writes `fid_refs.json` next to this file, with the state dict's names and shapes.
"""
import json
import math
import os

import numpy as np
import pytorch_fid
import torch
from pytorch_fid import inception as fid_inception
from pytorch_fid.fid_score import calculate_frechet_distance

assert pytorch_fid.__version__ == "0.3.0", pytorch_fid.__version__
assert torch.__version__.startswith("2.13"), torch.__version__

HERE = os.path.dirname(os.path.abspath(__file__))


MASK = (1 << 64) - 1


def u(i, n):
    """splitmix64 of i * 2^32 + j for j in 0..n, as uniform float64 in [0, 1)."""
    with np.errstate(over="ignore"):
        z = np.uint64(i) * np.uint64(1 << 32) + np.arange(n, dtype=np.uint64)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def fill(name, shape, i):
    n = int(np.prod(shape)) if len(shape) else 1
    r = u(i, n)
    if name.endswith("conv.weight"):
        fan_in = int(np.prod(shape[1:]))
        v = (2 * r - 1) * math.sqrt(6.0 / fan_in)
    elif name.endswith("bn.weight"):
        v = 0.8 + 0.4 * r
    elif name.endswith("bn.bias") or name.endswith("bn.running_mean"):
        v = 0.2 * (2 * r - 1)
    elif name.endswith("bn.running_var"):
        v = 0.5 + r
    elif name == "fc.weight":
        v = (2 * r - 1) * math.sqrt(3.0 / 2048.0)
    elif name == "fc.bias":
        v = 0.1 * (2 * r - 1)
    else:
        raise ValueError(f"no formula for {name}")
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


# pytorch-fid downloads the published weights inside fid_inception_v3(); give it the formula's instead.
def formula_state_dict(url, progress=True):
    net = fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = fid_inception.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid_inception.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid_inception.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid_inception.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid_inception.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid_inception.FIDInceptionE_1(1280)
    net.Mixed_7c = fid_inception.FIDInceptionE_2(2048)
    sd = net.state_dict()
    names = sorted(n for n in sd if not n.endswith("num_batches_tracked"))
    out = {n: fill(n, tuple(sd[n].shape), i) for i, n in enumerate(names)}
    for n in sd:
        if n.endswith("num_batches_tracked"):
            out[n] = sd[n]
    return out


fid_inception.load_state_dict_from_url = formula_state_dict
model = fid_inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()
fc_weight = formula_state_dict(None)["fc.weight"]

x = torch.from_numpy(u(100000, 2 * 3 * 40 * 40).astype(np.float32).reshape(2, 3, 40, 40))
with torch.no_grad():
    pool = model(x)[0].squeeze(3).squeeze(2)
    logits = pool @ fc_weight.T
pool64, logits64 = pool.double(), logits.double()


def sets():
    i = np.arange(300, dtype=np.float64)[:, None]
    k = np.arange(12, dtype=np.float64)[None, :]
    a = np.sin(0.37 * (k + 1) * i + k) + 0.05 * k
    bb = 1.3 * np.sin(0.23 * (k + 2) * i + 0.5 * k) ** 3 + 0.2 + 0.1 * np.cos(0.11 * (k + 1) * i)
    return a, bb


fa, fb = sets()
fd = calculate_frechet_distance(fa.mean(axis=0), np.cov(fa, rowvar=False), fb.mean(axis=0), np.cov(fb, rowvar=False))

sd_shapes = formula_state_dict(None)
refs = {
    "state_dict": [[n, list(sd_shapes[n].shape)] for n in sorted(sd_shapes) if not n.endswith("num_batches_tracked")],
    "features": {
        "shape": list(pool.shape),
        "sum": [float(v) for v in pool64.sum(1)],
        "sum_sq": [float(v) for v in (pool64 ** 2).sum(1)],
        "u_check": [float(v) for v in u(7, 3)],
        "first8": [[float(v) for v in row[:8]] for row in pool],
        "every256": [[float(v) for v in row[::256]] for row in pool],
    },
    "logits": {
        "shape": list(logits.shape),
        "sum": [float(v) for v in logits64.sum(1)],
        "first8": [[float(v) for v in row[:8]] for row in logits],
    },
    "frechet_distance": float(fd),
}
with open(os.path.join(HERE, "fid_refs.json"), "w") as f:
    json.dump(refs, f, indent=1)
    f.write("\n")
print(json.dumps(refs)[:600])
