"""All-reduce timing with torch.distributed, the Python side of `cargo xtask bench dist`.

Started once per rank with torchrun's variables (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE).
Prints `allreduce_ms <median>` on rank 0.
"""
import argparse
import time

import torch
import torch.distributed as dist

p = argparse.ArgumentParser()
p.add_argument("--mb", type=float, default=40.0)
p.add_argument("--iters", type=int, default=20)
p.add_argument("--device", default="cpu")
a = p.parse_args()
dist.init_process_group("nccl" if a.device == "cuda" else "gloo")
rank = dist.get_rank()
device = torch.device(f"cuda:{rank}") if a.device == "cuda" else torch.device("cpu")
t = torch.ones(int(a.mb * 1e6 / 4), device=device)
times = []
for i in range(a.iters + 2):
    dist.barrier()
    t0 = time.perf_counter()
    dist.all_reduce(t)
    if a.device == "cuda":
        torch.cuda.synchronize()
    if i >= 2:
        times.append((time.perf_counter() - t0) * 1e3)
times.sort()
if rank == 0:
    print(f"allreduce_ms {times[len(times) // 2]:.3f}")
dist.destroy_process_group()
