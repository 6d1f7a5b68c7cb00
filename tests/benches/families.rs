//! Each family's default model through its public training and sampling API, on the CPU.
//! `cargo xtask bench families` runs it beside `bench/families.py` (the same architectures in
//! PyTorch eager from Python), one process per family and side, so that peak memory is per model.
//!
//! ```text
//! cargo bench -p genlab-tests --bench families -- --family vae|gan|diffusion|dit
//!     [--threads T] [--warmup W] [--steps N] [--sample-n N] [--sample-reps R] [--sample-warmup 0|1]
//! ```
//! - vae: preset `conv`, batch 128; samples are decodes of prior draws (`sample_prior`).
//! - gan: preset `dcgan`, batch 128 (one discriminator and one generator update per step);
//!   samples are forwards of the EMA generator (`sample::sample`, BatchNorm in eval mode).
//! - diffusion: preset `unet-small`, batch 64; samples are 50-step DDIM from the EMA U-Net (`sample::sample`).
//! - dit: the same with the diffusion transformer preset `dit-s`.
//!
//! Every model is built for 1x28x28 and trains on the first batch of mnist5k (pixels / 127.5 - 1),
//! the same batch every step. Prints `name value` lines: parameter counts, `train_steps_per_s`
//! (the fastest of `N` steps after `W` warm-up steps), `samples_per_s` (the fastest of `R` calls
//! after one warm-up call, unless `--sample-warmup 0`) and `peak_rss_mib` (the process's VmHWM).
use genlab_core::train::{Batch, TrainTask};
use std::time::Instant;
use tch::{Device, Tensor};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

const SHAPE: [i64; 3] = [1, 28, 28];
const DATA: &str = "mnist5k";

struct Args {
    family: String,
    threads: i32,
    warmup: usize,
    steps: Option<usize>,
    sample_n: Option<i64>,
    sample_reps: Option<usize>,
    sample_warmup: bool,
}

fn args() -> BenchResult<Args> {
    let mut a = Args {
        family: String::new(),
        threads: 2,
        warmup: 3,
        steps: None,
        sample_n: None,
        sample_reps: None,
        sample_warmup: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{k} needs a value"));
        match k.as_str() {
            "--family" => a.family = val()?,
            "--threads" => a.threads = val()?.parse()?,
            "--warmup" => a.warmup = val()?.parse()?,
            "--steps" => a.steps = Some(val()?.parse()?),
            "--sample-n" => a.sample_n = Some(val()?.parse()?),
            "--sample-reps" => a.sample_reps = Some(val()?.parse()?),
            "--sample-warmup" => a.sample_warmup = val()? != "0",
            _ => {} // cargo bench passes `--bench`
        }
    }
    Ok(a)
}

/// The first `n` images of mnist5k in [-1, 1].
fn real_batch(n: usize) -> BenchResult<Batch> {
    let ds = genlab_data::open(DATA)?;
    if ds.shape() != [1, 28, 28] {
        return Err(format!("{DATA} is {:?}, expected [1, 28, 28]", ds.shape()).into());
    }
    let idx: Vec<usize> = (0..n).collect();
    let (images, labels) = genlab_data::batch_of(ds.as_ref(), &idx)?;
    Ok(Batch { images, labels })
}

fn trainable(vs: &tch::nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(Tensor::numel).map(|n| n as i64).sum()
}

/// Steps per second of `task.train_step` on `batch`: the fastest of `steps` timed steps after
/// `warmup` steps (the step least disturbed by other load on the machine).
fn time_train(task: &mut dyn TrainTask, batch: &Batch, warmup: usize, steps: usize) -> BenchResult<f64> {
    for s in 0..warmup {
        task.train_step(batch, s as u64)?;
    }
    let mut best = f64::INFINITY;
    for s in 0..steps {
        let t = Instant::now();
        task.train_step(batch, (warmup + s) as u64)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(1.0 / best)
}

/// Samples per second of `sample` (which makes `n` images): the fastest of `reps` calls, after one
/// warm-up call unless `warmup` is false.
fn time_samples(
    n: i64,
    reps: usize,
    warmup: bool,
    mut sample: impl FnMut() -> BenchResult<Tensor>,
) -> BenchResult<f64> {
    let check = |x: Tensor| -> BenchResult<()> {
        if x.size() != [n, SHAPE[0], SHAPE[1], SHAPE[2]] {
            return Err(format!("samples of shape {:?}, expected [{n}, 1, 28, 28]", x.size()).into());
        }
        Ok(())
    };
    if warmup {
        check(sample()?)?;
    }
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        let x = sample()?;
        best = best.min(t.elapsed().as_secs_f64());
        check(x)?;
    }
    Ok(n as f64 / best)
}

/// The process's peak resident set size (VmHWM), MiB.
fn peak_rss_mib() -> BenchResult<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or("no VmHWM in /proc/self/status")?
        .parse()?;
    Ok(kb / 1024.0)
}

fn vae(a: &Args) -> BenchResult<()> {
    use genlab_vae::train::{VaeRunConfig, VaeTask};
    let run = VaeRunConfig::from_preset("conv", SHAPE, None, DATA)?;
    let batch = real_batch(run.batch_size)?;
    let mut task = VaeTask::new(run, Device::Cpu)?;
    println!("params {}", trainable(&task.vs));
    println!("train_steps_per_s {:.4}", time_train(&mut task, &batch, a.warmup, a.steps.unwrap_or(30))?);
    let n = a.sample_n.unwrap_or(128);
    let model = &task.model;
    let rate = time_samples(n, a.sample_reps.unwrap_or(100), a.sample_warmup, || {
        Ok(genlab_vae::sample::sample_prior(model, n, None)?)
    })?;
    println!("samples_per_s {rate:.2}");
    Ok(())
}

fn gan(a: &Args) -> BenchResult<()> {
    use genlab_gan::train::{GanRunConfig, GanTask};
    let run = GanRunConfig::from_preset("dcgan", SHAPE, None, DATA)?;
    let batch = real_batch(run.batch_size)?;
    let mut task = GanTask::new(run, Device::Cpu)?;
    let (g, d) = (trainable(&task.vs_g), trainable(&task.vs_d));
    println!("params {}", g + d);
    println!("params_g {g}");
    println!("params_d {d}");
    println!("train_steps_per_s {:.4}", time_train(&mut task, &batch, a.warmup, a.steps.unwrap_or(20))?);
    let n = a.sample_n.unwrap_or(128);
    let generator = task.ema_generator()?;
    let rate = time_samples(n, a.sample_reps.unwrap_or(50), a.sample_warmup, || {
        Ok(genlab_gan::sample::sample(generator, n, None)?)
    })?;
    println!("samples_per_s {rate:.2}");
    Ok(())
}

fn diffusion(a: &Args, preset: &str) -> BenchResult<()> {
    use genlab_diffusion::train::{DiffusionRunConfig, DiffusionTask};
    use genlab_diffusion::{ScheduleConfig, SchedulerKind};
    let run = DiffusionRunConfig::from_preset(preset, SHAPE, None, ScheduleConfig::default(), DATA)?;
    let batch = real_batch(run.batch_size)?;
    let mut task = DiffusionTask::new(run, Device::Cpu)?;
    println!("params {}", trainable(&task.net.vs));
    println!("train_steps_per_s {:.4}", time_train(&mut task, &batch, a.warmup, a.steps.unwrap_or(10))?);
    let n = a.sample_n.unwrap_or(16);
    // 50 DDIM steps, as bench/families.py (not the run's own monitoring steps).
    let (schedule, steps) = (task.run.schedule.clone(), 50);
    let model = task.ema_model()?;
    let rate = time_samples(n, a.sample_reps.unwrap_or(1), a.sample_warmup, || {
        Ok(genlab_diffusion::sample::sample(model, &schedule, SchedulerKind::Ddim, steps, n, None, 1.0)?)
    })?;
    println!("samples_per_s {rate:.3}");
    Ok(())
}

fn main() -> BenchResult<()> {
    let a = args()?;
    tch::manual_seed(0);
    tch::set_num_threads(a.threads);
    match a.family.as_str() {
        "vae" => vae(&a)?,
        "gan" => gan(&a)?,
        "diffusion" => diffusion(&a, "unet-small")?,
        "dit" => diffusion(&a, "dit-s")?,
        f => return Err(format!("--family must be vae, gan, diffusion or dit, got `{f}`").into()),
    }
    println!("peak_rss_mib {:.1}", peak_rss_mib()?);
    Ok(())
}
