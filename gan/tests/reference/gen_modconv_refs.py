#!/usr/bin/env python3
"""Reference numbers for genlab-gan's StyleGAN2 modulated convolution and FIR resampling.

Produces `modconv_refs.json` (next to this file) with torch 2.13.0 (CPU, float32):

    .venv/bin/python gan/tests/reference/gen_modconv_refs.py

The functions below are stylegan2-ada-pytorch's `modulated_conv2d` (training/networks.py),
`conv2d_resample` (torch_utils/ops/conv2d_resample.py) and the reference path of `upfirdn2d`
(torch_utils/ops/upfirdn2d.py, `_upfirdn2d_ref`), restricted to fp32 and square padding:
per-sample weights `weight * styles`, demodulation `rsqrt(sum w^2 + 1e-8)`, either one grouped
convolution (fused) or scaling before and after a shared convolution, 2x resampling through
the [1, 3, 3, 1] filter.

Inputs are closed-form, rebuilt by the Rust test from the same formulas:
    det(shape, a, b)[flat index i] = sin(a * i + b), computed in float64, stored as float32.
"""
import json
import math
import os

import torch
import torch.nn.functional as F

assert torch.__version__.startswith("2.13.0"), torch.__version__
torch.set_num_threads(1)


def det(shape, a, b):
    n = math.prod(shape)
    i = torch.arange(n, dtype=torch.float64)
    return torch.sin(a * i + b).to(torch.float32).reshape(shape)


def setup_filter(taps):
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = f.ger(f)
    return f / f.sum()


def upfirdn2d(x, f, up=1, down=1, padding=(0, 0, 0, 0), gain=1):
    n, c, h, w = x.shape
    px0, px1, py0, py1 = padding
    x = x.reshape([n, c, h, 1, w, 1])
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
    x = x.reshape([n, c, h * up, w * up])
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    f = f * (gain ** (f.ndim / 2))
    f = f.flip(list(range(f.ndim)))
    f = f[None, None].repeat([c, 1, 1, 1])
    x = F.conv2d(x, f, groups=c)
    return x[:, :, ::down, ::down]


def upsample2d(x, f):
    fw = f.shape[-1]
    p = [(fw + 1) // 2, (fw - 2) // 2] * 2
    return upfirdn2d(x, f, up=2, padding=p, gain=4)


def downsample2d(x, f):
    fw = f.shape[-1]
    p = [(fw - 1) // 2, (fw - 2) // 2] * 2
    return upfirdn2d(x, f, down=2, padding=p)


def conv2d_wrapper(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    kh, kw = w.shape[2:]
    if not flip_weight and (kw > 1 or kh > 1):
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True):
    out_channels, in_per_group, kh, kw = w.shape
    if f is None:
        f = torch.ones([1, 1])
    fw = f.shape[-1]
    px0 = px1 = padding
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
    pad = [px0, px1, px0, px1]
    if kw == 1 and kh == 1 and (down > 1 and up == 1):
        x = upfirdn2d(x, f, down=down, padding=pad)
        return conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and (up > 1 and down == 1):
        x = conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=pad, gain=up ** 2)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=pad)
        return conv2d_wrapper(x, w, stride=down, groups=groups, flip_weight=flip_weight)
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw)
            w = w.transpose(1, 2)
            w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        pxt = max(min(-px0, -px1), 0)
        x = conv2d_wrapper(x, w, stride=up, padding=[pxt, pxt], groups=groups, transpose=True,
                           flip_weight=(not flip_weight))
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, px0 + pxt, px1 + pxt], gain=up ** 2)
        if down > 1:
            x = upfirdn2d(x, f, down=down)
        return x
    return conv2d_wrapper(x, w, padding=[px0, px0], groups=groups, flip_weight=flip_weight)


def modulated_conv2d(x, weight, styles, noise=None, up=1, down=1, padding=0, resample_filter=None,
                     demodulate=True, flip_weight=True, fused_modconv=True):
    batch_size = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    w = None
    dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0)
        w = w * styles.reshape(batch_size, 1, -1, 1, 1)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
    if demodulate and fused_modconv:
        w = w * dcoefs.reshape(batch_size, -1, 1, 1, 1)
    if not fused_modconv:
        x = x * styles.reshape(batch_size, -1, 1, 1)
        x = conv2d_resample(x, weight, f=resample_filter, up=up, down=down, padding=padding,
                            flip_weight=flip_weight)
        if demodulate and noise is not None:
            x = torch.addcmul(noise, x, dcoefs.reshape(batch_size, -1, 1, 1))
        elif demodulate:
            x = x * dcoefs.reshape(batch_size, -1, 1, 1)
        elif noise is not None:
            x = x.add_(noise)
        return x
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = conv2d_resample(x, w, f=resample_filter, up=up, down=down, padding=padding, groups=batch_size,
                        flip_weight=flip_weight)
    x = x.reshape(batch_size, -1, *x.shape[2:])
    if noise is not None:
        x = x.add_(noise)
    return x


def flat(t):
    return {"shape": list(t.shape), "values": [float(f"{v:.9g}") for v in t.reshape(-1).tolist()]}


def main():
    f = setup_filter([1, 3, 3, 1])
    cases = []
    # (name, n, i, o, k, h, up, padding, demodulate, flip_weight, with_noise)
    specs = [
        ("conv3x3_demod_noise", 2, 3, 4, 3, 5, 1, 1, True, True, True),
        ("conv3x3_demod", 3, 2, 3, 3, 4, 1, 1, True, True, False),
        ("torgb_1x1_no_demod", 2, 4, 3, 1, 4, 1, 0, False, True, False),
        ("up3x3_demod_noise", 2, 3, 2, 3, 4, 2, 1, True, False, True),
    ]
    for name, n, i, o, k, h, up, padding, demod, flip, with_noise in specs:
        x = det([n, i, h, h], 0.37, 0.1)
        weight = det([o, i, k, k], 0.91, 0.5)
        styles = 1.0 + 0.5 * det([n, i], 0.23, 0.7)
        oh = h * up
        noise = 0.1 * det([n, 1, oh, oh], 0.17, 0.3) if with_noise else None
        outs = [modulated_conv2d(x, weight, styles, noise=noise, up=up, padding=padding,
                                 resample_filter=f if up > 1 else None, demodulate=demod,
                                 flip_weight=flip, fused_modconv=fused) for fused in (True, False)]
        # The two forms agree; the Rust test checks both of its forms against the fused one.
        assert torch.allclose(outs[0], outs[1], atol=1e-5)
        cases.append({"name": name, "n": n, "in_channels": i, "out_channels": o, "kernel": k, "size": h,
                      "up": up, "padding": padding, "demodulate": demod, "flip_weight": flip,
                      "noise": with_noise, **flat(outs[0])})

    resample = []
    x = det([1, 2, 8, 8], 0.29, 0.2)
    resample.append({"name": "upsample2d", **flat(upsample2d(x, f))})
    resample.append({"name": "downsample2d", **flat(downsample2d(x, f))})
    w3 = det([3, 2, 3, 3], 0.53, 0.4)
    resample.append({"name": "conv3x3_down", **flat(conv2d_resample(x, w3, f=f, down=2, padding=1))})
    w1 = det([3, 2, 1, 1], 0.53, 0.4)
    resample.append({"name": "conv1x1_down", **flat(conv2d_resample(x, w1, f=f, down=2, padding=0))})
    resample.append({"name": "conv3x3_up", **flat(conv2d_resample(x, w3, f=f, up=2, padding=1, flip_weight=False))})

    out = {"torch": torch.__version__, "modconv": cases, "resample": resample}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "modconv_refs.json")
    with open(path, "w") as fh:
        json.dump(out, fh, separators=(",", ":"))
        fh.write("\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
