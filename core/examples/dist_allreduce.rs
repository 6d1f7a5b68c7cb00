//! All-reduce timing on c10d: start one process per rank with torchrun's variables
//! (`cargo xtask bench dist` does). Prints `allreduce_ms <median>` on rank 0.
//!
//! Usage: dist_allreduce [MEGABYTES (40)] [ITERS (20)] [cpu|cuda]
use genlab_core::dist::{self, DistOptions, ReduceOp};
use tch::{Device, Kind, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mb: f64 = args.first().map(|s| s.parse()).transpose()?.unwrap_or(40.0);
    let iters: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let g = dist::init_from_env(DistOptions::from_env()?)?.ok_or("WORLD_SIZE must be above 1")?;
    let device = if args.get(2).is_some_and(|d| d == "cuda") { Device::Cuda(g.local_rank()) } else { Device::Cpu };
    let n = (mb * 1e6 / 4.0) as i64;
    let mut t = Tensor::ones([n], (Kind::Float, device));
    let mut times = Vec::with_capacity(iters);
    for i in 0..iters + 2 {
        g.barrier()?;
        let t0 = std::time::Instant::now();
        g.all_reduce(&mut t, ReduceOp::Sum)?;
        if device != Device::Cpu {
            tch::Cuda::synchronize(g.local_rank() as i64);
        }
        if i >= 2 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    if g.rank() == 0 {
        println!("allreduce_ms {:.3}", times[times.len() / 2]);
        println!("allreduce_mb {mb}");
    }
    dist::shutdown()?;
    Ok(())
}
