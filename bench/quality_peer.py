"""The textbook PyTorch peers of `cargo xtask bench quality`, trained on the same images as genlab.

- diffusion: denoising-diffusion-pytorch 2.3.4 (lucidrains), `Unet(dim=32, dim_mults=(1, 2, 2))`
  (1.41 M parameters; the package's default `dim_mults` (1, 2, 4, 8) needs sizes divisible by 8 and
  Fashion-MNIST is 28x28) and `GaussianDiffusion` with the package's defaults (v-prediction, its
  sigmoid schedule, 1000 steps), trained with the steps of its `Trainer` at the Trainer's defaults
  (Adam lr 1e-4, betas (0.9, 0.99), gradient norm clipped at 1,
  `ema_pytorch.EMA(beta=0.995, update_every=10)`), sampled with its DDIM (50 steps) from the EMA
  model. The Trainer's random horizontal flip is left out: genlab does not flip.
- vae: pytorch/examples' `vae/main.py` (784-400-20 MLP, BCE + KL, Adam lr 1e-3), prior samples.
- gan: the PyTorch DCGAN tutorial's networks (nz 100, ngf = ndf = 64, Adam 2e-4, betas (0.5, 0.999),
  BCE) with one layer fewer, for 28x28 (the 64x64 tutorial's 4-layer stacks, first generator layer
  7x7 instead of 4x4 so 7 -> 14 -> 28), prior samples.

Images come from the IDX files genlab reads for `fashion-mnist` (or an HDF5 file written by
`genlab data convert`), batches drawn by an epoch-wise shuffle. Samples are written to an HDF5 file with a
uint8 `images` dataset (N x 1 x 28 x 28), which `genlab eval --samples` reads, and the timings to a JSON file.

With `--state FILE` (diffusion), the run can be stopped and started again: training saves the model,
optimiser, EMA, random state and step to FILE every `--save-every` steps and continues from there, and
sampling keeps each finished chunk beside it (FILE.samples-K.pt), so a restart gives the same numbers
as an uninterrupted run. `train_s` and `sample_s` then add up the time of every part.

    python bench/quality_peer.py --family diffusion --data train-images-idx3-ubyte.gz --steps 1200 \
        --batch-size 64 --n 2000 --threads 2 --seed 0 --out peer.h5 --json peer.json
"""
import argparse
import gzip
import json
import os
import time

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def read_images(path):
    if path.endswith(".h5"):
        with h5py.File(path, "r") as f:
            x = np.asarray(f["images"])
        if x.ndim == 3:
            x = x[:, None]
        return x
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    n, h, w = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, h, w)


def batches(images, batch_size, seed, start=0):
    """Endless batches in [0, 1], each epoch a fresh permutation; `start` skips that many batches
    (the same stream an uninterrupted run draws)."""
    g = np.random.default_rng(seed)
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    per_epoch = len(x) // batch_size
    epochs, skip = divmod(start, per_epoch)
    for _ in range(epochs):
        g.permutation(len(x))
    while True:
        perm = g.permutation(len(x))
        for i in range(skip * batch_size, len(perm) - batch_size + 1, batch_size):
            yield x[perm[i:i + batch_size]]
        skip = 0


def save_atomic(obj, path):
    """torch.save through a temporary file, so a stop mid-write leaves the previous file whole."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_diffusion(images, a):
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    from ema_pytorch import EMA

    h, w = images.shape[2:]
    model = Unet(dim=32, dim_mults=(1, 2, 2), channels=images.shape[1])
    diffusion = GaussianDiffusion(model, image_size=(h, w), timesteps=1000, sampling_timesteps=50)
    # Trainer defaults: train_lr 1e-4, adam_betas (0.9, 0.99), max_grad_norm 1, ema_decay 0.995,
    # ema_update_every 10.
    opt = torch.optim.Adam(diffusion.parameters(), lr=1e-4, betas=(0.9, 0.99))
    ema = EMA(diffusion, beta=0.995, update_every=10)
    params = sum(p.numel() for p in model.parameters())
    first, before_s = 0, 0.0
    if a.state and os.path.exists(a.state):
        st = torch.load(a.state, weights_only=False)
        diffusion.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        ema.load_state_dict(st["ema"])
        torch.set_rng_state(st["rng"])
        first, before_s = st["step"], st["train_s"]
        print(f"resuming at step {first} of {a.steps}", flush=True)

    def state(step, train_s):
        return {"model": diffusion.state_dict(), "opt": opt.state_dict(), "ema": ema.state_dict(),
                "rng": torch.get_rng_state(), "step": step, "train_s": train_s}

    data = batches(images, a.batch_size, a.seed, start=first)
    t0 = time.perf_counter()
    for step in range(first, a.steps):
        loss = diffusion(next(data))
        loss.backward()
        nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        ema.update()
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
        if a.state and (step + 1) % a.save_every == 0 and step + 1 < a.steps:
            save_atomic(state(step + 1, before_s + time.perf_counter() - t0), a.state)
    train_s = before_s + time.perf_counter() - t0
    if a.state and first < a.steps:
        save_atomic(state(a.steps, train_s), a.state)
    ema.ema_model.eval()

    def sample(n):
        with torch.inference_mode():
            return ema.ema_model.sample(batch_size=n)  # in [0, 1]

    return sample, train_s, params, "denoising-diffusion-pytorch DDIM 50 (EMA)"


class PtVAE(nn.Module):
    """pytorch/examples vae/main.py."""

    def __init__(self, d):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(d, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, d)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x):
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


def train_vae(images, a):
    shape = images.shape[1:]
    d = int(np.prod(shape))
    model = PtVAE(d)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = batches(images, a.batch_size, a.seed)
    t0 = time.perf_counter()
    for step in range(a.steps):
        x = next(data).view(-1, d)
        recon, mu, logvar = model(x)
        bce = F.binary_cross_entropy(recon, x, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = bce + kld
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 200 == 0:
            print(f"step {step} loss {loss.item() / len(x):.2f}", flush=True)
    train_s = time.perf_counter() - t0
    model.eval()

    def sample(n):
        with torch.inference_mode():
            return model.decode(torch.randn(n, 20)).view(n, *shape)

    params = sum(p.numel() for p in model.parameters())
    return sample, train_s, params, "pytorch/examples VAE, prior samples"


def train_gan(images, a):
    nc, nz, ngf, ndf = images.shape[1], 100, 64, 64
    netG = nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 4, 7, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, nc, 4, 2, 1, bias=False), nn.Tanh())
    netD = nn.Sequential(
        nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, 1, 7, 1, 0, bias=False), nn.Sigmoid())

    def weights_init(m):
        name = m.__class__.__name__
        if name.find("Conv") != -1:
            nn.init.normal_(m.weight.data, 0.0, 0.02)
        elif name.find("BatchNorm") != -1:
            nn.init.normal_(m.weight.data, 1.0, 0.02)
            nn.init.constant_(m.bias.data, 0)

    netG.apply(weights_init)
    netD.apply(weights_init)
    crit = nn.BCELoss()
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    data = batches(images, a.batch_size, a.seed)
    t0 = time.perf_counter()
    for step in range(a.steps):
        real = next(data) * 2 - 1
        b = real.size(0)
        netD.zero_grad()
        errD_real = crit(netD(real).view(-1), torch.ones(b))
        errD_real.backward()
        fake = netG(torch.randn(b, nz, 1, 1))
        errD_fake = crit(netD(fake.detach()).view(-1), torch.zeros(b))
        errD_fake.backward()
        optD.step()
        netG.zero_grad()
        errG = crit(netD(fake).view(-1), torch.ones(b))
        errG.backward()
        optG.step()
        if step % 200 == 0:
            print(f"step {step} D {(errD_real + errD_fake).item():.3f} G {errG.item():.3f}", flush=True)
    train_s = time.perf_counter() - t0
    netG.eval()

    def sample(n):
        with torch.inference_mode():
            return (netG(torch.randn(n, nz, 1, 1)) + 1) / 2

    params = sum(p.numel() for p in netG.parameters())
    return sample, train_s, params, "PyTorch DCGAN tutorial at 28x28"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--family", choices=["diffusion", "vae", "gan"], required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--sample-batch", type=int, default=250)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--state", help="resume file (diffusion): training state and finished sample chunks")
    p.add_argument("--save-every", type=int, default=200)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    images = read_images(a.data)
    train = {"diffusion": train_diffusion, "vae": train_vae, "gan": train_gan}[a.family]
    sample, train_s, params, what = train(images, a)
    out, sample_s = [], 0.0
    for k, i in enumerate(range(0, a.n, a.sample_batch)):
        chunk = f"{a.state}.samples-{k}.pt" if a.state and a.family == "diffusion" else None
        if chunk and os.path.exists(chunk):
            done = torch.load(chunk, weights_only=False)
            torch.set_rng_state(done["rng"])
            out.append(done["images"].numpy())
            sample_s += done["s"]
            continue
        t0 = time.perf_counter()
        x = (sample(min(a.sample_batch, a.n - i)).clamp(0, 1) * 255).round().to(torch.uint8)
        s = time.perf_counter() - t0
        sample_s += s
        out.append(x.numpy())
        if chunk:
            save_atomic({"images": x, "rng": torch.get_rng_state(), "s": s}, chunk)
    with h5py.File(a.out, "w") as f:
        f.create_dataset("images", data=np.concatenate(out))
    report = {
        "what": what,
        "parameters": params,
        "train_s": train_s,
        "sample_s": sample_s,
        "n": a.n,
        "family": a.family,
        "steps": a.steps,
        "batch_size": a.batch_size,
        "seed": a.seed,
        "torch": torch.__version__,
        "threads": a.threads,
    }
    with open(a.json, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
