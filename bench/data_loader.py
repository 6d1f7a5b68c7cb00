"""PyTorch DataLoader throughput on the files `cargo bench -p genlab-data --bench loader`
writes, for comparison with genlab's Loader.

    cargo bench -p genlab-data --bench loader -- --dir /tmp/genlab-bench
    .venv/bin/python bench/data_loader.py /tmp/genlab-bench/fmnist28.h5 /tmp/genlab-bench/fmnist28-png \
        /tmp/genlab-bench/fmnist64.h5 /tmp/genlab-bench/fmnist64-png

Same work per item as genlab: read one uint8 image (h5py row / PIL decode), stack a
shuffled batch, and map it to float in [-1, 1]. Same batch size and as many workers as
genlab's rayon threads (2). Each case times batches after the first (which starts the
workers) for at least an epoch and two seconds, and prints `torch-CASE images_per_s=...`.
"""

import argparse
import os
import time

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset


class H5Images(Dataset):
    """`images` (uint8, N x C x H x W) and `labels`; the file opens lazily in each worker."""

    def __init__(self, path):
        self.path = path
        with h5py.File(path, "r") as f:
            self.len = f["images"].shape[0]
        self.file = None

    def __len__(self):
        return self.len

    def __getitem__(self, i):
        if self.file is None:
            self.file = h5py.File(self.path, "r")
        return torch.from_numpy(self.file["images"][i]), int(self.file["labels"][i])


class PngFolder(Dataset):
    """PNG files under class sub-folders, as torchvision's ImageFolder with a PIL loader."""

    def __init__(self, root):
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        self.items = [
            (os.path.join(root, c, f), k)
            for k, c in enumerate(classes)
            for f in sorted(os.listdir(os.path.join(root, c)))
            if f.lower().endswith(".png")
        ]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        with Image.open(path) as img:
            a = np.asarray(img.convert("L"))
        return torch.from_numpy(a.copy()).unsqueeze(0), label


def measure(name, ds, batch, workers):
    loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers, persistent_workers=True)
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    n = 0
    # At least the rest of an epoch and two seconds, as the Rust bench does.
    while n < len(ds) - 2 * batch or time.perf_counter() - t < 2.0:
        try:
            images, labels = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        images = images.float() / 127.5 - 1.0
        n += images.shape[0]
    secs = time.perf_counter() - t
    print(f"torch-{name} images_per_s={n / secs:.0f} ({n // batch} batches of {batch} in {secs:.2f} s)", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("h5_28")
    p.add_argument("png_28")
    p.add_argument("h5_64")
    p.add_argument("png_64")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    torch.manual_seed(0)
    for side, h5, png in [(28, a.h5_28, a.png_28), (64, a.h5_64, a.png_64)]:
        measure(f"hdf5-{side}", H5Images(h5), a.batch_size, a.workers)
        measure(f"png-{side}", PngFolder(png), a.batch_size, a.workers)


if __name__ == "__main__":
    main()
