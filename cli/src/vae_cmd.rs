//! `genlab vae ...`
use crate::{SampleArgs, TrainArgs};
use anyhow::{Context, Result};
use clap::Subcommand;
use genlab_data::{Loader, LoaderConfig};
use genlab_vae::train::{VaeRunConfig, VaeTask};

#[derive(Subcommand, Debug)]
pub enum VaeCommand {
    /// Train a VAE (presets: mlp, conv, conv-large, beta-vae, cvae).
    #[command(
        after_help = "Examples:\n  genlab vae train --model conv --data mnist5k --steps 2000 --out runs/vae\n  genlab vae train --model mlp --data digits --steps 500 --out runs/vae-digits --batch-size 64 --lr 2e-3\n  genlab vae train --config vae.toml --resume"
    )]
    Train(TrainArgs),
    /// Sample from a trained VAE's prior.
    #[command(
        after_help = "Examples:\n  genlab vae sample --run runs/vae --n 64 --out grid.png\n  genlab vae sample --run runs/vae --n 1000 --out samples.h5 --seed 1"
    )]
    Sample(SampleArgs),
}

pub fn run(cmd: VaeCommand) -> Result<()> {
    match cmd {
        VaeCommand::Train(a) => train(a),
        VaeCommand::Sample(a) => sample(a),
    }
}

fn train(a: TrainArgs) -> Result<()> {
    let device = a.device.resolve()?;
    let run = if a.resume && a.out.join("config.json").is_file() {
        // The run's own configuration wins: the model must match its checkpoints.
        let text = std::fs::read_to_string(a.out.join("config.json"))?;
        serde_json::from_str::<VaeRunConfig>(&text)
            .with_context(|| format!("{}: not a VAE run configuration", a.out.join("config.json").display()))?
    } else {
        let ds = a.data_options.open(&a.data, a.seed)?;
        let [c, h, w] = ds.shape();
        let mut run = VaeRunConfig::from_preset(&a.model, [c as i64, h as i64, w as i64], ds.num_classes(), &a.data)?;
        run.lr = a.lr.unwrap_or(run.lr);
        run.batch_size = a.batch_size.unwrap_or(run.batch_size);
        run.precision = a.precision;
        run
    };
    let ds = a.data_options.open(&run.data, a.seed)?;
    let mut loader = Loader::new(ds, LoaderConfig::new(run.batch_size, a.seed, device))?;
    // The initial weights are a function of the seed.
    genlab_core::seed::manual_seed(a.seed as i64);
    let mut task = VaeTask::new(run, device)?;
    let out = genlab_core::train::run(&mut task, &mut loader, &a.harness())?;
    eprintln!(
        "{:?} at step {}; checkpoint {}",
        out.status,
        out.step,
        out.last_checkpoint.map(|p| p.display().to_string()).unwrap_or_else(|| "none".into())
    );
    Ok(())
}

fn sample(a: SampleArgs) -> Result<()> {
    if a.n <= 0 {
        anyhow::bail!("--n must be at least 1");
    }
    let device = a.device.resolve()?;
    let (_vs, model, _) = genlab_vae::train::load(&a.run, device)?;
    tch::manual_seed(a.seed as i64);
    let imgs = genlab_vae::sample::sample_prior(&model, a.n, None)?;
    genlab_core::images::save_samples(&imgs, &a.out, None)?;
    eprintln!("wrote {} samples to {}", a.n, a.out.display());
    Ok(())
}
