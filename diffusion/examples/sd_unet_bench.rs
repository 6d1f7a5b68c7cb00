//! One denoising step of Stable Diffusion 1.5's UNet (the `sd15` preset, random weights) on the CPU in f32:
//! the Rust side of `cargo xtask bench sd-unet` (`bench/sd_unet.py` is the Python side).
//!
//! Usage: sd_unet_bench [--steps N (5)] [--threads T (all cores)] [--latent S (32)]
//!
//! Latents [2, 4, S, S] (one image with classifier-free guidance; S = 32 is 256x256 pixels) and
//! encoder_hidden_states [2, 77, 768], inside no_grad; one warm-up step, then the median of N.
//! Prints `params`, `threads`, `s_per_step` and `peak_rss_mib` (the process's VmHWM), one per line.
use anyhow::{bail, Context, Result};
use genlab_diffusion::sd::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use tch::{nn, Device, Kind, Tensor};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok());
    kb.unwrap_or(0.0) / 1024.0
}

fn main() -> Result<()> {
    let mut steps = 5usize;
    let mut threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut latent = 32i64;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = it.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--steps" => steps = value.parse().context("--steps")?,
            "--threads" => threads = value.parse().context("--threads")?,
            "--latent" => latent = value.parse().context("--latent")?,
            other => bail!("unknown flag {other}; flags: --steps N --threads T --latent S"),
        }
    }
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    tch::set_num_threads(threads as i32);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let unet = UNet2DConditionModel::new(vs.root(), &UNet2DConditionConfig::sd15())?;
    let params: usize = vs.trainable_variables().iter().map(Tensor::numel).sum();
    let sample = Tensor::randn([2, 4, latent, latent], (Kind::Float, Device::Cpu));
    let context = Tensor::randn([2, 77, 768], (Kind::Float, Device::Cpu));
    let t = Tensor::from(500i64);
    let mut times = Vec::with_capacity(steps);
    tch::no_grad(|| -> Result<()> {
        for i in 0..=steps {
            let t0 = std::time::Instant::now();
            let out = unet.forward(&sample, &t, &context)?;
            // Read one value so the step's work is certainly done.
            let _ = out.double_value(&[0, 0, 0, 0]);
            if i > 0 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        Ok(())
    })?;
    times.sort_by(f64::total_cmp);
    println!("params {params}");
    println!("threads {threads}");
    println!("s_per_step {:.4}", times[times.len() / 2]);
    println!("peak_rss_mib {:.0}", peak_rss_mib());
    Ok(())
}
