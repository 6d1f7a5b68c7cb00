#!/usr/bin/env python3
"""Reference numbers for genlab-diffusion's flow-matching schedulers.

Produces `flow_match.json` (next to this file) from Hugging Face diffusers 0.42.1 on torch 2.13 (CPU):

    .venv/bin/python diffusion/tests/reference/gen_flow_match_refs.py

For each configuration: the sigmas and timesteps `set_timesteps` gives, and the full sampling loop of a
deterministic fake velocity model `v = 0.5 * x - t / 1000` (t the scheduler's float32 timestep) from
`x = linspace(-1, 1, 2*3*4*4)` reshaped to (2, 3, 4, 4): the sum of |x| after every step and the final
sample's first 8 values. Stochastic sampling draws from torch's global CPU generator after
`torch.manual_seed(0)`, which libtorch reproduces in Rust after `tch::manual_seed(0)`.

For training: `compute_density_for_timestep_sampling` (8 draws after `torch.manual_seed(0)`) for each
weighting scheme, and `compute_loss_weighting_for_sd3` at 7 sigmas.
"""
import json
import os

import diffusers
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

assert diffusers.__version__ == "0.42.1", diffusers.__version__

CASES = [
    ("euler-default", "euler", {}, 28, None),
    ("euler-sd3-shift3", "euler", {"shift": 3.0}, 28, None),
    ("euler-sd3-4-steps", "euler", {"shift": 3.0}, 4, None),
    ("euler-dynamic-exponential", "euler", {"use_dynamic_shifting": True}, 20, 0.9),
    ("euler-dynamic-linear", "euler", {"use_dynamic_shifting": True, "time_shift_type": "linear"}, 20, 1.3),
    ("euler-shift-terminal", "euler", {"shift": 3.0, "shift_terminal": 0.1}, 12, None),
    ("euler-karras", "euler", {"shift": 3.0, "use_karras_sigmas": True}, 10, None),
    ("euler-exponential", "euler", {"shift": 3.0, "use_exponential_sigmas": True}, 10, None),
    ("euler-inverted", "euler", {"invert_sigmas": True}, 8, None),
    ("euler-stochastic", "euler", {"shift": 3.0, "stochastic_sampling": True}, 8, None),
    ("heun-default", "heun", {}, 10, None),
    ("heun-shift3", "heun", {"shift": 3.0}, 6, None),
]


def main():
    out = {"diffusers": diffusers.__version__, "torch": torch.__version__, "cases": []}
    for name, kind, config, steps, mu in CASES:
        cls = FlowMatchEulerDiscreteScheduler if kind == "euler" else FlowMatchHeunDiscreteScheduler
        s = cls(**config)
        if mu is None:
            s.set_timesteps(steps)
        else:
            s.set_timesteps(steps, mu=mu)
        case = {
            "name": name,
            "kind": kind,
            "config": config,
            "steps": steps,
            "mu": mu,
            "timesteps": [float(t) for t in s.timesteps],
            "sigmas": [float(x) for x in s.sigmas],
        }
        torch.manual_seed(0)
        x = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
        sums = []
        for t in s.timesteps:
            v = 0.5 * x - t / 1000.0
            x = s.step(v, t, x).prev_sample
            sums.append(float(x.abs().sum()))
        case["step_abs_sums"] = sums
        case["final_head"] = [float(v) for v in x.flatten()[:8]]
        out["cases"].append(case)
    out["densities"] = []
    for scheme, mean, std, scale in [
        ("logit_normal", 0.0, 1.0, None),
        ("logit_normal", 0.5, 1.5, None),
        ("mode", None, None, 1.29),
        ("uniform", None, None, None),
    ]:
        torch.manual_seed(0)
        u = compute_density_for_timestep_sampling(scheme, 8, logit_mean=mean, logit_std=std, mode_scale=scale)
        out["densities"].append({"scheme": scheme, "mean": mean, "std": std, "scale": scale, "u": [float(v) for v in u]})
    sigmas = torch.linspace(0.05, 0.95, 7)
    out["weighting_sigmas"] = [float(v) for v in sigmas]
    out["weightings"] = {
        scheme: [float(v) for v in compute_loss_weighting_for_sd3(scheme, sigmas)] for scheme in ["sigma_sqrt", "cosmap"]
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flow_match.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
