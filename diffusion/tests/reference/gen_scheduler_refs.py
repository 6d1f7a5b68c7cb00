#!/usr/bin/env python3
"""Reference numbers for genlab-diffusion's schedule and scheduler tests.

Produces `schedulers.json` (next to this file) from Hugging Face diffusers 0.42.1 on torch 2.13 (CPU):

    .venv/bin/pip install diffusers==0.42.1   (torch 2.13.0 already in the project venv)
    .venv/bin/python diffusion/tests/reference/gen_scheduler_refs.py

The sample, fake model and loop follow diffusers' tests/schedulers/test_schedulers.py (SchedulerCommonTest):
- `dummy_sample_deter`: arange(4*3*8*8) reshaped (C, H, W, B) / numel, permuted to (B, C, H, W);
- `dummy_noise_deter`: the same with the arange flipped;
- `dummy_model`: `sample * t / (t + 1)`.
The loop is the pipeline's (scale the input, call the model, step from the *unscaled* sample), starting
from `dummy_sample_deter * init_noise_sigma`. Stochastic schedulers draw their noise from torch's global CPU
generator after `torch.manual_seed(0)` (no `generator` argument, so `randn_tensor` calls `torch.randn(shape)`),
which libtorch reproduces in Rust after `tch::manual_seed(0)` with the same shapes in the same order.
"""
import json
import os

import diffusers
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)

assert diffusers.__version__ == "0.42.1", diffusers.__version__

B, C, H, W = 4, 3, 8, 8
NUMEL = B * C * H * W

# genlab's ScheduleConfig::default(): the DDPM paper's (Ho et al. 2020) linear 1e-4..0.02 over 1000 steps.
BASE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
# Stable Diffusion v1 (runwayml/stable-diffusion-v1-5, scheduler/scheduler_config.json).
SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

CLASSES = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpmpp-2m": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
}

# genlab's defaults for the options diffusers' schedulers disagree on: DDPM and DDIM clip x0 to [-1, 1]
# (diffusers' default for both), Heun does not; DPM-Solver++(2M) is diffusers' default DPMSolverMultistep.
EXTRA = {
    "dpmpp-2m": dict(algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True),
    "heun": dict(clip_sample=False),
}


def dummy_sample_deter():
    s = torch.arange(NUMEL).reshape(C, H, W, B) / NUMEL
    return s.permute(3, 0, 1, 2)


def dummy_noise_deter():
    s = torch.arange(NUMEL).flip(-1).reshape(C, H, W, B) / NUMEL
    return s.permute(3, 0, 1, 2)


def model(sample, t):
    if isinstance(t, torch.Tensor):
        t = t.reshape(-1, 1, 1, 1).to(sample.dtype)
    return sample * t / (t + 1)


def make(kind, cfg):
    cfg = dict(cfg)
    # DDIM's step arguments, which genlab keeps in its schedule configuration.
    step_kw = dict(eta=cfg.pop("eta", 0.0), use_clipped_model_output=cfg.pop("use_clipped_model_output", False))
    kw = dict(EXTRA.get(kind, {}))
    kw.update(cfg)
    return CLASSES[kind](**kw), step_kw


def run_case(name, kind, cfg, steps):
    sched, step_kw = make(kind, cfg)
    sched.set_timesteps(steps)
    timesteps = [float(t) for t in sched.timesteps]
    init_sigma = float(sched.init_noise_sigma)
    torch.manual_seed(0)
    sample = dummy_sample_deter() * sched.init_noise_sigma
    trace = []
    for t in sched.timesteps:
        model_input = sched.scale_model_input(sample, t)
        out = model(model_input, t)
        if kind == "ddim":
            sample = sched.step(out, t, sample, **step_kw).prev_sample
        else:
            sample = sched.step(out, t, sample).prev_sample
        trace.append(float(sample.abs().sum()))
    # add_noise on a fresh scheduler: one timestep of the schedule per batch element.
    fresh, _ = make(kind, cfg)
    fresh.set_timesteps(steps)
    n = len(fresh.timesteps)
    picks = [0, n // 3, (2 * n) // 3, n - 1]
    noisy_t = fresh.timesteps[picks]
    noisy = fresh.add_noise(dummy_sample_deter(), dummy_noise_deter(), noisy_t)
    return dict(
        name=name,
        kind=kind,
        config=cfg,
        steps=steps,
        timesteps=timesteps,
        init_noise_sigma=init_sigma,
        trace_sum_abs=trace,
        result_sum_abs=float(sample.abs().sum()),
        result_mean_abs=float(sample.abs().mean()),
        add_noise_timesteps=[float(t) for t in noisy_t],
        add_noise_sum_abs=float(noisy.abs().sum()),
        add_noise_sum=float(noisy.sum()),
    )


def scheduler_cases():
    cases = []
    add = lambda name, kind, cfg, steps=10: cases.append(run_case(name, kind, cfg, steps))
    for kind in CLASSES:
        add(f"{kind}_epsilon", kind, dict(BASE))
        add(f"{kind}_v_prediction", kind, dict(BASE, prediction_type="v_prediction"))
        add(f"{kind}_cosine", kind, dict(BASE, beta_schedule="squaredcos_cap_v2"))
        add(f"{kind}_sd_v1", kind, dict(SD, steps_offset=1, timestep_spacing="leading"))
        add(f"{kind}_trailing_7", kind, dict(BASE, timestep_spacing="trailing"), 7)
    for kind in ["ddpm", "ddim", "dpmpp-2m", "heun"]:
        add(f"{kind}_sample", kind, dict(BASE, prediction_type="sample"))
    for kind in ["euler", "euler-a", "heun", "dpmpp-2m"]:
        add(f"{kind}_leading", kind, dict(BASE, timestep_spacing="leading"))
    add("ddpm_full_1000", "ddpm", dict(BASE), 1000)
    add("ddpm_no_clip", "ddpm", dict(BASE, clip_sample=False))
    add("ddim_5_offset_1", "ddim", dict(BASE, steps_offset=1), 5)
    add("ddim_linspace", "ddim", dict(BASE, timestep_spacing="linspace"))
    add("ddim_alpha_not_one", "ddim", dict(BASE, set_alpha_to_one=False))
    add("ddim_eta_0_5", "ddim", dict(BASE, eta=0.5))
    add("ddim_eta_1_v", "ddim", dict(BASE, eta=1.0, prediction_type="v_prediction"))
    # A clip range the fake model's x0 exceeds, with the noise taken as given and re-derived.
    add("ddim_clip_0_1", "ddim", dict(BASE, clip_sample_range=0.1))
    add("ddim_clip_0_1_clipped_output", "ddim", dict(BASE, clip_sample_range=0.1, use_clipped_model_output=True))
    add("ddim_zero_snr", "ddim",
        dict(BASE, rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"))
    add("ddpm_sigmoid", "ddpm", dict(BASE, beta_schedule="sigmoid"))
    add("dpmpp-2m_20", "dpmpp-2m", dict(BASE), 20)
    add("dpmpp-2m_zero_snr", "dpmpp-2m",
        dict(BASE, rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"))
    add("euler_zero_snr", "euler",
        dict(BASE, rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"))
    add("euler_linspace_7", "euler", dict(BASE), 7)
    add("heun_linspace_7", "heun", dict(BASE), 7)
    return cases


def schedule_case(name, cfg, indices):
    s = DDPMScheduler(**cfg)
    betas = s.betas.double()
    ac = s.alphas_cumprod.double()
    idx = [i if i >= 0 else len(betas) + i for i in indices]
    return dict(
        name=name,
        config=cfg,
        indices=idx,
        betas=[float(betas[i]) for i in idx],
        alphas_cumprod=[float(ac[i]) for i in idx],
        betas_sum=float(betas.sum()),
        alphas_cumprod_sum=float(ac.sum()),
    )


def schedule_cases():
    idx = [0, 1, 10, 250, 500, 750, 998, 999]
    out = [
        schedule_case("linear", dict(BASE), idx),
        schedule_case("scaled_linear_sd", dict(SD), idx),
        schedule_case("squaredcos_cap_v2", dict(BASE, beta_schedule="squaredcos_cap_v2"), idx),
        schedule_case("sigmoid", dict(BASE, beta_schedule="sigmoid"), idx),
        schedule_case("linear_zero_snr", dict(BASE, rescale_betas_zero_snr=True), idx),
        schedule_case("scaled_linear_sd_zero_snr", dict(SD, rescale_betas_zero_snr=True), idx),
        # A short cosine schedule, every index: integer division would make all but the last beta 0.
        schedule_case("squaredcos_cap_v2_10", dict(BASE, num_train_timesteps=10, beta_schedule="squaredcos_cap_v2"),
                      list(range(10))),
    ]
    return out


def main():
    data = dict(
        generator="diffusion/tests/reference/gen_scheduler_refs.py",
        diffusers=diffusers.__version__,
        torch=torch.__version__.split("+")[0],
        schedules=schedule_cases(),
        schedulers=scheduler_cases(),
    )
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schedulers.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    for c in data["schedulers"]:
        print(f"{c['name']:28s} t={c['timesteps'][:3]}... sum={c['result_sum_abs']:.6f} mean={c['result_mean_abs']:.6f}")


if __name__ == "__main__":
    main()
