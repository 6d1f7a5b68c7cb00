"""PyTorch-from-Python side of `cargo xtask bench optim`: the same 784-256-10 MLP,
batch 128, torch.optim.Adam (its default multi-tensor implementation), 200 steps.
Prints `name seconds` lines like core/benches/optim.rs."""
import os
import time

import torch

STEPS, WARMUP = 200, 20
torch.manual_seed(0)
torch.set_num_threads(int(os.environ.get("GENLAB_BENCH_THREADS", "2")))
x = torch.randn(128, 784)
y = torch.randint(0, 10, (128,))
net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
opt = torch.optim.Adam(net.parameters(), lr=1e-3)


def step():
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()


for _ in range(WARMUP):
    step()
t = time.perf_counter()
for _ in range(STEPS):
    step()
print(f"pytorch_train_steps {time.perf_counter() - t:.6f}")
t = time.perf_counter()
for _ in range(STEPS):
    opt.step()
print(f"pytorch_optimizer_only {time.perf_counter() - t:.6f}")
