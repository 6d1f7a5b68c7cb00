"""PyTorch-eager side of `cargo xtask bench families`: each family's default genlab model rebuilt
layer for layer in PyTorch (diffusers' UNet2DModel, DiTTransformer2DModel and DDIMScheduler for
diffusion), trained and
sampled the way genlab's training step and sampler do it. Prints the `name value` lines that
`tests/benches/families.rs` prints.

    .venv/bin/python bench/families.py --family vae|gan|diffusion|dit [--threads T] [--warmup W]
        [--steps N] [--sample-n N] [--sample-reps R] [--expect-params P]

- vae (`conv`): Conv(1->32->64, k4 s2 p1, SiLU) encoder, fc_mu/fc_logvar to 16, decoder_fc + SiLU,
  ConvTranspose(64->32->1); Bernoulli likelihood, loss mean(BCE-with-logits summed over pixels + KL);
  Adam(1e-3); batch 128. Samples: decode N(0, I) latents, sigmoid * 2 - 1.
- gan (`dcgan` at 28x28: two stages, base 7): pytorch/examples' DCGAN generator (ConvTranspose
  100->128 k7, 128->64, 64->1, BatchNorm, ReLU, Tanh, no biases) and discriminator (Conv 1->64,
  64->128 + BatchNorm, LeakyReLU(0.2), Conv 128->1 k7, no biases), N(0, 0.02) init. One step = one
  discriminator update (fakes from the generator in train mode without grad, real and fake through D
  separately, softplus non-saturating loss) and one generator update, Adam(2e-4, 0.5, 0.999) each,
  both gradient norms, an EMA (0.999, warm-up) of the generator's parameters and buffers, and the
  diversity ratio (mean pairwise distance of fakes over reals, in float64) that genlab logs. Batch
  128. Samples: generator forward in eval mode.
- diffusion (`unet-small`): UNet2DModel(block_out_channels (32, 64, 64), layers_per_block 1, attention
  at the lowest level with head dim 32, 8 norm groups, no dropout); epsilon MSE on
  DDPMScheduler.add_noise with uniform timesteps over 1000; gradient norm clipped to 1;
  AdamW(2e-4, weight decay 0); diffusers' EMAModel(0.999, foreach); batch 64. Samples: DDIMScheduler,
  50 steps, eta 0, clipped, as genlab's default schedule (linear betas 1e-4..0.02, leading spacing,
  set_alpha_to_one).
- dit (`dit-s`): DiTTransformer2DModel(3 heads of 64, 6 layers, patch 4, unconditional: the null
  class row for every sample), trained and sampled as the diffusion entry.

Every model trains on the first batch of mnist5k (genlab-data's bundled CSV, pixels / 127.5 - 1),
the same batch every step.
"""

import argparse
import csv
import gzip
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST5K = os.path.join(ROOT, "data", "assets", "mnist_5k.csv.gz")


def real_batch(n):
    """The first `n` images of mnist5k in [-1, 1], as genlab_data::batch_of makes them."""
    rows = []
    with gzip.open(MNIST5K, "rt") as f:
        for row in csv.reader(f):
            if not row:
                continue
            rows.append([float(v) for v in row[:784]])
            if len(rows) == n:
                break
    px = np.clip(np.array(rows), 0, 255).round().astype(np.uint8)
    return torch.from_numpy(px).view(n, 1, 28, 28).float() / 127.5 - 1.0


def given(value, default):
    return default if value is None else value


def trainable(*modules):
    return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)


def time_train(step, warmup, steps):
    """Steps per second: the fastest of `steps` timed steps after `warmup` steps."""
    for _ in range(warmup):
        step()
    best = float("inf")
    for _ in range(steps):
        t = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t)
    return 1.0 / best


def time_samples(n, reps, sample, warmup=True):
    """Samples per second of `sample` (n images a call): the fastest of `reps` calls."""

    def check(x):
        assert tuple(x.shape) == (n, 1, 28, 28), x.shape

    if warmup:
        check(sample())
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        x = sample()
        best = min(best, time.perf_counter() - t)
        check(x)
    return n / best


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")


def grad_norm(params):
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])


class Ema:
    """genlab_core::ema::Ema: shadow <- lerp(shadow, live, 1 - min(decay, (1 + n) / (10 + n)))
    over every floating-point parameter and buffer."""

    def __init__(self, module, decay):
        self.live = [t for t in module.state_dict().values() if t.is_floating_point()]
        self.shadow = [t.detach().clone() for t in self.live]
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self):
        n = self.updates
        torch._foreach_lerp_(self.shadow, self.live, 1.0 - min(self.decay, (1 + n) / (10 + n)))
        self.updates += 1


# --- VAE -------------------------------------------------------------------------------------


class ConvVae(nn.Module):
    """genlab_vae::Vae with the `conv` preset (widths 32, 64; latent 16) for 1x28x28."""

    def __init__(self, latent=16, widths=(32, 64), c=1, side=28):
        super().__init__()
        layers, ch = [], c
        for w in widths:
            layers += [nn.Conv2d(ch, w, 4, 2, 1), nn.SiLU()]
            ch = w
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        s = side >> len(widths)
        self.feat = (ch, s, s)
        feat_dim = ch * s * s
        self.fc_mu = nn.Linear(feat_dim, latent)
        self.fc_logvar = nn.Linear(feat_dim, latent)
        self.decoder_fc = nn.Linear(latent, feat_dim)
        rev = list(reversed(widths))
        dec = []
        for i, w in enumerate(rev):
            out = rev[i + 1] if i + 1 < len(rev) else c
            dec.append(nn.ConvTranspose2d(w, out, 4, 2, 1))
            if i + 1 < len(rev):
                dec.append(nn.SiLU())
        self.decoder = nn.Sequential(*dec)
        self.latent = latent

    def encode(self, x):
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z):
        return self.decoder(F.silu(self.decoder_fc(z)).view(z.shape[0], *self.feat))


def vae(a):
    x = real_batch(128)
    model = ConvVae()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    print(f"params {trainable(model)}")
    check_params(a, trainable(model))

    def step():
        mu, logvar = model.encode(x)
        z = mu + (logvar * 0.5).exp() * torch.randn_like(mu)
        out = model.decode(z)
        recon = F.binary_cross_entropy_with_logits(out, (x + 1) * 0.5, reduction="none").flatten(1).sum(-1)
        kl = ((logvar.exp() + mu.square() - 1.0 - logvar) * 0.5).sum(-1)
        loss = (recon + kl).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        # The metrics genlab's step reports.
        recon.mean().item(), kl.mean().item(), loss.item()

    print(f"train_steps_per_s {time_train(step, a.warmup, given(a.steps, 30)):.4f}")
    n = given(a.sample_n, 128)

    @torch.no_grad()
    def sample():
        return model.decode(torch.randn(n, model.latent)).sigmoid() * 2 - 1

    print(f"samples_per_s {time_samples(n, given(a.sample_reps, 100), sample):.2f}")


# --- GAN -------------------------------------------------------------------------------------


def dcgan_init(m):
    """pytorch/examples dcgan/main.py `weights_init`, as genlab's DCGAN_INIT."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    def __init__(self, nz=100, ngf=64, nc=1, base=7, stages=2):
        super().__init__()
        ch = ngf << (stages - 1)
        layers = [nn.ConvTranspose2d(nz, ch, base, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(1, stages):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.nz = nz

    def forward(self, z):
        return self.main(z.view(z.shape[0], self.nz, 1, 1))


class Discriminator(nn.Module):
    def __init__(self, ndf=64, nc=1, base=7, stages=2):
        super().__init__()
        layers = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        ch = ndf
        for _ in range(1, stages):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, inplace=True)]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, base, 1, 0, bias=False)]
        self.main = nn.Sequential(*layers)

    def forward(self, x):
        return self.main(x).view(-1)


def mean_pairwise_distance(x):
    flat = x.detach().flatten(1).double()
    n = flat.shape[0]
    return torch.cdist(flat, flat).sum().item() / (n * (n - 1))


def gan(a):
    x = real_batch(128)
    m = x.shape[0]
    g, d = Generator(), Discriminator()
    g.apply(dcgan_init)
    d.apply(dcgan_init)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    ema = Ema(g, 0.999)
    pg, pd = trainable(g), trainable(d)
    print(f"params {pg + pd}\nparams_g {pg}\nparams_d {pd}")
    check_params(a, pg + pd)

    def step():
        # Discriminator update.
        z = torch.randn(m, g.nz)
        with torch.no_grad():
            fake_x = g(z)
        real, fake = d(x), d(fake_x)
        d_loss = F.softplus(-real).mean() + F.softplus(fake).mean()
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        grad_norm(d.parameters()).item()
        real, fake = real.detach(), fake.detach()
        ((real > 0).float().mean() + (fake < 0).float().mean()).item()
        d_loss.item(), real.mean().item(), fake.mean().item()
        # Generator update.
        z = torch.randn(m, g.nz)
        fake_x = g(z)
        g_loss = F.softplus(-d(fake_x)).mean()
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        grad_norm(g.parameters()).item()
        ema.update()
        g_loss.item()
        mean_pairwise_distance(fake_x) / max(mean_pairwise_distance(x), 1e-12)

    print(f"train_steps_per_s {time_train(step, a.warmup, given(a.steps, 20)):.4f}")
    n = given(a.sample_n, 128)
    g.eval()

    @torch.no_grad()
    def sample():
        return g(torch.randn(n, g.nz))

    print(f"samples_per_s {time_samples(n, given(a.sample_reps, 50), sample):.2f}")


# --- Diffusion -------------------------------------------------------------------------------


def diffusion(a):
    import diffusers
    from diffusers import UNet2DModel

    assert diffusers.__version__ == "0.42.1", diffusers.__version__
    # genlab_diffusion::UNet2DConfig::preset("unet-small", [1, 28, 28]).
    unet = UNet2DModel(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim=32,
        norm_num_groups=8,
        norm_eps=1e-5,
        flip_sin_to_cos=True,
        freq_shift=0,
        dropout=0.0,
    ).train()
    denoiser(a, unet, lambda x, t: unet(x, t).sample)


def dit(a):
    import diffusers
    from diffusers import DiTTransformer2DModel

    assert diffusers.__version__ == "0.42.1", diffusers.__version__
    # genlab_diffusion::DiTConfig::preset("dit-s", [1, 28, 28]): unconditional, so every sample gets
    # the class table's null row (label 1 of num_embeds_ada_norm 1), as genlab's DiT does.
    model = DiTTransformer2DModel(
        num_attention_heads=3,
        attention_head_dim=64,
        in_channels=1,
        out_channels=1,
        num_layers=6,
        dropout=0.0,
        attention_bias=True,
        sample_size=28,
        patch_size=4,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1,
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
        norm_eps=1e-5,
    ).train()
    null = {}

    def forward(x, t):
        # As diffusers' DiTPipeline: one timestep per sample.
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        if x.shape[0] not in null:
            null[x.shape[0]] = torch.ones(x.shape[0], dtype=torch.long)
        return model(x, t, class_labels=null[x.shape[0]]).sample

    denoiser(a, model, forward)


def denoiser(a, model, forward):
    """Train and sample `model` as genlab's DiffusionTask and `sample::sample` do for a new run of
    the preset with `ScheduleConfig::default()`."""
    from diffusers import DDIMScheduler, DDPMScheduler
    from diffusers.training_utils import EMAModel

    x0 = real_batch(64)
    print(f"params {trainable(model)}")
    check_params(a, trainable(model))
    # genlab_diffusion::ScheduleConfig::default().
    schedule = dict(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=True,
        clip_sample_range=1.0,
    )
    noise_scheduler = DDPMScheduler(**schedule)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.0)
    ema = EMAModel(model.parameters(), decay=0.999, foreach=True)

    def step():
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (x0.shape[0],))
        noisy = noise_scheduler.add_noise(x0, noise, t)
        out = forward(noisy, t)
        per_sample = F.mse_loss(out, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = per_sample.mean()
        per_sample.detach().mean().item()
        opt.zero_grad()
        loss.backward()
        # genlab's runs clip the global gradient norm to 1 (max_grad_norm).
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.step(model.parameters())
        loss.item()

    print(f"train_steps_per_s {time_train(step, a.warmup, given(a.steps, 10)):.4f}")
    n = given(a.sample_n, 16)
    ema.copy_to(model.parameters())
    model.eval()
    ddim = DDIMScheduler(**schedule, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")

    @torch.no_grad()
    def sample():
        ddim.set_timesteps(50)
        x = torch.randn(n, 1, 28, 28) * ddim.init_noise_sigma
        for t in ddim.timesteps:
            out = forward(ddim.scale_model_input(x, t), t)
            x = ddim.step(out, t, x, eta=0.0).prev_sample
        return x.clamp(-1, 1)

    rate = time_samples(n, given(a.sample_reps, 1), sample, warmup=a.sample_warmup)
    print(f"samples_per_s {rate:.3f}")


def check_params(a, n):
    assert a.expect_params is None or n == a.expect_params, f"{n} parameters, genlab's model has {a.expect_params}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", required=True, choices=["vae", "gan", "diffusion", "dit"])
    p.add_argument("--threads", type=int, default=int(os.environ.get("GENLAB_BENCH_THREADS", "2")))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int)
    p.add_argument("--sample-n", type=int)
    p.add_argument("--sample-reps", type=int)
    p.add_argument("--sample-warmup", type=int, default=1, help="0: time the first sampling call too")
    p.add_argument("--expect-params", type=int, help="fail unless the model has exactly this many parameters")
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    {"vae": vae, "gan": gan, "diffusion": diffusion, "dit": dit}[a.family](a)
    print(f"peak_rss_mib {peak_rss_mib():.1f}")


if __name__ == "__main__":
    main()
