//! One LoRA training step (forward, backward, AdamW with gradient clipping) of a small Stable-Diffusion-shaped
//! UNet on the CPU in f32: the Rust side of `cargo xtask bench finetune` (`bench/lora_step.py` is the Python side,
//! the step of diffusers' `examples/text_to_image/train_text_to_image_lora.py`).
//!
//! Usage: lora_step_bench [--steps N (5)] [--threads T (all cores)] [--batch B (2)] [--latent S (32)]
//!
//! The UNet is SD 1.5's layout at 128/256/512/512 channels (random weights, frozen), rank-4 adapters on every
//! `to_q`, `to_k`, `to_v` and `to_out.0` (alpha 4); latents [B, 4, S, S], encoder_hidden_states [B, 77, 768], MSE
//! to fixed noise. Two warm-up steps, then the median of N. Prints `params`, `lora_params`, `threads`,
//! `s_per_step` and `peak_rss_mib` (the process's VmHWM), one per line.
use anyhow::{bail, Context, Result};
use genlab_core::optim::{Adam, AdamConfig};
use genlab_diffusion::sd::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use tch::{nn, Device, Kind, Tensor};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok());
    kb.unwrap_or(0.0) / 1024.0
}

fn main() -> Result<()> {
    let (mut steps, mut batch, mut latent) = (5usize, 2i64, 32i64);
    let mut threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = it.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--steps" => steps = value.parse().context("--steps")?,
            "--threads" => threads = value.parse().context("--threads")?,
            "--batch" => batch = value.parse().context("--batch")?,
            "--latent" => latent = value.parse().context("--latent")?,
            other => bail!("unknown flag {other}; flags: --steps N --threads T --batch B --latent S"),
        }
    }
    if steps == 0 || batch < 1 {
        bail!("--steps and --batch must be at least 1");
    }
    tch::set_num_threads(threads as i32);
    tch::manual_seed(0);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let cfg = UNet2DConditionConfig { block_out_channels: vec![128, 256, 512, 512], ..UNet2DConditionConfig::sd15() };
    let unet = UNet2DConditionModel::new(vs.root(), &cfg)?;
    let params: usize = vs.trainable_variables().iter().map(Tensor::numel).sum();
    vs.freeze();
    let lora = nn::VarStore::new(Device::Cpu);
    let rank = 4;
    for (name, target) in unet.lora_targets().iter() {
        if !["to_q", "to_k", "to_v", "to_out.0"].iter().any(|s| name.ends_with(&format!(".{s}"))) {
            continue;
        }
        let (down, up) = target.expected_shapes(rank);
        let p = name.split('.').fold(lora.root(), |p, part| p / part);
        let a = (&p / "lora_A").var("weight", &down, nn::Init::Uniform { lo: -0.01, up: 0.01 });
        let b = (&p / "lora_B").var("weight", &up, nn::Init::Const(0.0));
        target.attach_trainable("bench", &a, &b, 1.0)?;
    }
    let lora_params: usize = lora.trainable_variables().iter().map(Tensor::numel).sum();
    let mut opt = Adam::new(&lora, AdamConfig { max_grad_norm: Some(1.0), ..AdamConfig::adamw(1e-4, 1e-2) })?;
    let sample = Tensor::randn([batch, 4, latent, latent], (Kind::Float, Device::Cpu));
    let noise = Tensor::randn([batch, 4, latent, latent], (Kind::Float, Device::Cpu));
    let context = Tensor::randn([batch, 77, 768], (Kind::Float, Device::Cpu));
    let t = Tensor::randint(1000, [batch], (Kind::Int64, Device::Cpu));
    let mut times = Vec::with_capacity(steps);
    for i in 0..steps + 2 {
        let t0 = std::time::Instant::now();
        let pred = unet.forward(&sample, &t, &context)?;
        let loss = (pred - &noise).square().mean(Kind::Float);
        opt.backward_step(&loss);
        // Read one value so the step's work is certainly done.
        let _ = opt.flat_params().double_value(&[0]);
        if i >= 2 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    println!("params {params}");
    println!("lora_params {lora_params}");
    println!("threads {threads}");
    println!("s_per_step {:.4}", times[times.len() / 2]);
    println!("peak_rss_mib {:.0}", peak_rss_mib());
    Ok(())
}
