//! `genlab gan ...`
use crate::{SampleArgs, TrainArgs};
use anyhow::Result;
use clap::{Args, Subcommand};
use genlab_gan::train::{GanRunConfig, GanTask};

#[derive(Subcommand, Debug)]
pub enum GanCommand {
    /// Train a GAN (presets: dcgan, wgan, wgan-gp, cgan).
    #[command(
        after_help = "Examples:\n  genlab gan train --model dcgan --data mnist5k --steps 5000 --out runs/dcgan\n  genlab gan train --model wgan-gp --data fashion-mnist --steps 20000 --out runs/wgan-gp\n  genlab gan train --model cgan --data digits --steps 600 --out runs/cgan --batch-size 64 --lr 1e-3 --lr-d 1e-3\n  genlab gan train --config gan.toml --resume"
    )]
    Train(GanTrainArgs),
    /// Sample from a trained generator (its averaged weights).
    #[command(
        after_help = "Examples:\n  genlab gan sample --run runs/dcgan --n 64 --out grid.png\n  genlab gan sample --run runs/cgan --n 16 --class 3 --out threes.png"
    )]
    Sample(GanSampleArgs),
}

#[derive(Args, Debug, Clone)]
pub struct GanTrainArgs {
    #[command(flatten)]
    pub common: TrainArgs,
    /// Discriminator learning rate (two time scales); defaults to the preset's, or to --lr when given.
    #[arg(long)]
    pub lr_d: Option<f64>,
}

#[derive(Args, Debug, Clone)]
pub struct GanSampleArgs {
    #[command(flatten)]
    pub common: SampleArgs,
    /// Draw every sample from this class (conditional models; default: cycle through the classes).
    #[arg(long)]
    pub class: Option<i64>,
}

pub fn run(cmd: GanCommand) -> Result<()> {
    match cmd {
        GanCommand::Train(a) => train(a),
        GanCommand::Sample(a) => sample(a),
    }
}

fn train(args: GanTrainArgs) -> Result<()> {
    let a = &args.common;
    let device = a.device.resolve()?;
    let run = a.run_config(|ds| {
        let [c, h, w] = ds.shape();
        let mut run = GanRunConfig::from_preset(&a.model, [c as i64, h as i64, w as i64], ds.num_classes(), &a.data)?;
        if let Some(lr) = a.lr {
            run.lr_g = lr;
            run.lr_d = lr;
        }
        run.lr_d = args.lr_d.unwrap_or(run.lr_d);
        run.batch_size = a.batch_size.unwrap_or(run.batch_size);
        run.precision = a.precision;
        run.validate()?;
        Ok(run)
    })?;
    a.train(run, device, |run, device| Ok(GanTask::new(run, device)?))
}

impl crate::RunConfig for GanRunConfig {
    const WHAT: &'static str = "a GAN run configuration";
    fn data(&self) -> &str {
        &self.data
    }
    fn batch_size(&self) -> usize {
        self.batch_size
    }
}

fn sample(args: GanSampleArgs) -> Result<()> {
    let a = &args.common;
    if a.n <= 0 {
        anyhow::bail!("--n must be at least 1");
    }
    let device = a.device.resolve()?;
    let (_vs, generator, _) = genlab_gan::train::load(&a.run, device)?;
    // --class C for every sample; a conditional model otherwise cycles through its classes.
    let labels: Option<Vec<i64>> = match (args.class, generator.cfg.num_classes) {
        (Some(c), _) => Some(vec![c; a.n as usize]),
        (None, Some(k)) => Some((0..a.n).map(|i| i % k).collect()),
        (None, None) => None,
    };
    tch::manual_seed(a.seed as i64);
    let imgs = genlab_gan::sample::sample(&generator, a.n, labels.as_deref())?;
    genlab_core::images::save_samples(&imgs, &a.out, labels.as_deref())?;
    eprintln!("wrote {} samples to {}", a.n, a.out.display());
    Ok(())
}
