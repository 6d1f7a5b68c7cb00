//! `genlab vae ...`
use crate::{SampleArgs, TrainArgs};
use anyhow::Result;
use clap::Subcommand;
use genlab_vae::anomaly::Score;
use genlab_vae::tools::{AnomalyScores, IndexPairs, LikelihoodReport, RunOnData};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum VaeCommand {
    /// Train a VAE (presets: mlp, conv, conv-large, beta-vae, cvae, conv-gaussian) or a latent-diffusion KL autoencoder
    /// (kl-f2, kl-f4, sd15).
    #[command(
        after_help = "Examples:\n  genlab vae train --model conv --data mnist5k --steps 2000 --out runs/vae\n  genlab vae train --model kl-f4 --data mnist5k --steps 2000 --out runs/kl-f4\n  genlab vae train --model mlp --data digits --steps 500 --out runs/vae-digits --batch-size 64 --lr 2e-3\n  genlab vae train --config vae.toml --resume"
    )]
    Train(TrainArgs),
    /// Sample from a trained VAE's prior (a KL autoencoder: decodes of random unit-variance latents).
    #[command(
        after_help = "Examples:\n  genlab vae sample --run runs/vae --n 64 --out grid.png\n  genlab vae sample --run runs/vae --n 1000 --out samples.h5 --seed 1\n  genlab vae sample --run runs/cvae --n 16 --class 7 --out sevens.png"
    )]
    Sample {
        #[command(flatten)]
        common: SampleArgs,
        /// Draw every sample from this class (conditional VAEs; default: cycle through the classes).
        #[arg(long)]
        class: Option<i64>,
    },
    /// Reconstruct images through the posterior mean (originals above, reconstructions below); VAEs and
    /// KL autoencoders.
    #[command(after_help = "Examples:\n  genlab vae reconstruct --run runs/vae --data mnist5k --n 16 --out recon.png")]
    Reconstruct {
        #[command(flatten)]
        eval: EvalArgs,
        #[arg(long)]
        out: PathBuf,
    },
    /// A grid of decoded images along the latent path between pairs of inputs.
    #[command(
        after_help = "Examples:\n  genlab vae interpolate --run runs/vae --data mnist5k --pairs 0:4000,1:2500 --steps 10 --out interp.png\n  genlab vae interpolate --run runs/vae --data mnist5k --pairs 7:99 --linear --out lerp.png"
    )]
    Interpolate {
        #[command(flatten)]
        eval: EvalArgs,
        /// Index pairs A:B, comma-separated (one grid row each).
        #[arg(long, default_value = "0:1")]
        pairs: IndexPairs,
        #[arg(long, default_value_t = 10)]
        steps: i64,
        /// Linear instead of spherical interpolation.
        #[arg(long)]
        linear: bool,
        #[arg(long)]
        out: PathBuf,
    },
    /// Anomaly scores per image as CSV; with --anomalous-class, the ROC-AUC too.
    #[command(
        after_help = "Examples:\n  genlab vae train --model conv --data fashion-mnist --exclude-class 0 --steps 3000 --out runs/no-tshirt\n  genlab vae anomaly --run runs/no-tshirt --data fashion-mnist:test --anomalous-class 0 --out scores.csv"
    )]
    Anomaly {
        #[command(flatten)]
        eval: EvalArgs,
        /// elbo (negative ELBO) or recon (reconstruction error).
        #[arg(long, default_value = "elbo")]
        score: Score,
        /// Images of this class are the anomalies: report the ROC-AUC of the score.
        #[arg(long)]
        anomalous_class: Option<i64>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Latent means of a dataset to HDF5 (`latents`, `labels`); --probe-test scores a linear probe.
    #[command(
        after_help = "Examples:\n  genlab vae embed --run runs/vae --data fashion-mnist --n 10000 --out latents.h5 --probe-test fashion-mnist:test"
    )]
    Embed {
        #[command(flatten)]
        eval: EvalArgs,
        #[arg(long)]
        out: PathBuf,
        /// Train a logistic-regression probe on --data's latents and on its pixels, and report
        /// both accuracies on this dataset.
        #[arg(long)]
        probe_test: Option<String>,
    },
    /// Fill a masked region, keeping the known pixels; MSE on the missing pixels vs a mean fill.
    #[command(
        after_help = "Examples:\n  genlab vae impute --run runs/vae --data fashion-mnist:test --mask box --n 1000 --out impute.png\n  genlab vae impute --run runs/vae --data mnist5k --mask random:0.5 --out impute.png\n  genlab vae impute --run runs/vae --data mnist5k --mask mask.png --out impute.png"
    )]
    Impute {
        #[command(flatten)]
        eval: EvalArgs,
        /// box[:FRACTION] (centred square, default 0.5), random[:P] (default 0.5), or a PNG
        /// (white = known) of the images' size.
        #[arg(long, default_value = "box")]
        mask: String,
        #[arg(long, default_value_t = 20)]
        iters: usize,
        /// A grid of originals, masked inputs and imputations (first 16).
        #[arg(long)]
        out: PathBuf,
    },
    /// The importance-weighted (IWAE) bound on test log-likelihood, beside the ELBO.
    #[command(
        after_help = "Examples:\n  genlab vae likelihood --run runs/vae --data fashion-mnist:test --k 100 --n 1000"
    )]
    Likelihood {
        #[command(flatten)]
        eval: EvalArgs,
        #[arg(long, default_value_t = 100)]
        k: usize,
    },
}

pub fn run(cmd: VaeCommand) -> Result<()> {
    match cmd {
        VaeCommand::Train(a) => train(a),
        VaeCommand::Sample { common, class } => sample(common, class),
        VaeCommand::Reconstruct { eval, out } => reconstruct(eval, out),
        VaeCommand::Interpolate { eval, pairs, steps, linear, out } => interpolate(eval, pairs, steps, linear, out),
        VaeCommand::Anomaly { eval, score, anomalous_class, out } => anomaly(eval, score, anomalous_class, out),
        VaeCommand::Embed { eval, out, probe_test } => embed(eval, out, probe_test),
        VaeCommand::Impute { eval, mask, iters, out } => impute(eval, &mask, iters, out),
        VaeCommand::Likelihood { eval, k } => likelihood(eval, k),
    }
}

fn train(a: TrainArgs) -> Result<()> {
    crate::finished(genlab_vae::fit::fit(&a.model, &a.data_spec()?, &a.overrides, &a.fit_options()?)?)
}

fn sample(a: SampleArgs, class: Option<i64>) -> Result<()> {
    let imgs = genlab_vae::load::sample_run(&a.from.run, a.n, class, a.seed, a.from.device.resolve()?)?;
    genlab_core::images::save_samples(&imgs, &a.out, None)?;
    eprintln!("wrote {} samples to {}", a.n, a.out.display());
    Ok(())
}

/// What the VAE tools read: a trained run and a dataset.
#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub from: crate::RunArgs,
    #[arg(long, help = crate::data_cmd::DATASET_HELP)]
    pub data: String,
    #[command(flatten)]
    pub data_options: genlab_data::DataOptions,
    /// Use at most this many images (the first N).
    #[arg(long)]
    pub n: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 500)]
    pub chunk: usize,
}

impl EvalArgs {
    /// The run on `--data` (or on `data`, read with the same options), seeded.
    fn open(&self, data: Option<&str>, n: Option<usize>) -> Result<RunOnData> {
        let name = data.unwrap_or(&self.data);
        let ds = self.data_options.open(name, self.seed)?;
        let r = RunOnData::open(&self.from.run, ds, name, n, self.from.device.resolve()?)?;
        tch::manual_seed(self.seed as i64);
        Ok(r)
    }
}

fn reconstruct(e: EvalArgs, out: PathBuf) -> Result<()> {
    let ds = e.data_options.open(&e.data, e.seed)?;
    let n = e.n.unwrap_or(16);
    tch::manual_seed(e.seed as i64);
    let rows = genlab_vae::tools::reconstructions(&e.from.run, ds, &e.data, n, e.from.device.resolve()?)?;
    let n = rows.size()[0] / 2;
    genlab_core::images::save_grid(&rows, n, 2, &out)?;
    eprintln!("wrote {n} originals and reconstructions to {}", out.display());
    Ok(())
}

fn interpolate(e: EvalArgs, pairs: IndexPairs, steps: i64, linear: bool, out: PathBuf) -> Result<()> {
    let rows = genlab_vae::tools::interpolation_rows(&e.open(None, e.n)?, &pairs.0, steps, !linear)?;
    genlab_core::images::save_grid(&rows, steps, 2, &out)?;
    eprintln!("wrote {} interpolation rows to {}", pairs.0.len(), out.display());
    Ok(())
}

fn anomaly(e: EvalArgs, score: Score, anomalous: Option<i64>, out: PathBuf) -> Result<()> {
    let s = AnomalyScores::of(&e.open(None, e.n)?, score, e.chunk)?;
    s.write_csv(&out)?;
    eprintln!("wrote {} scores to {}", s.scores.len(), out.display());
    if let Some(k) = anomalous {
        println!("ROC-AUC (class {k} as the anomaly, {score:?} score): {:.4}", s.roc_auc(k)?);
    }
    Ok(())
}

fn embed(e: EvalArgs, out: PathBuf, probe_test: Option<String>) -> Result<()> {
    let r = e.open(None, e.n)?;
    let (z, labels) = genlab_vae::tools::embeddings(&r, e.chunk)?;
    let labels: Option<Vec<i64>> = labels.as_ref().map(Vec::<i64>::try_from).transpose()?;
    genlab_data::write_matrix_h5(&out, "latents", &z, labels.as_deref())?;
    eprintln!("wrote {} latents of dimension {} to {}", z.size()[0], z.size()[1], out.display());
    if let Some(test) = probe_test {
        let acc = genlab_vae::tools::linear_probes(&r, &e.open(Some(&test), None)?, e.chunk)?;
        println!("linear probe accuracy on {test}: latents {:.4}, pixels {:.4}", acc.latents, acc.pixels);
    }
    Ok(())
}

fn impute(e: EvalArgs, mask: &str, iters: usize, out: PathBuf) -> Result<()> {
    let spec: genlab_vae::tools::MaskSpec = mask.parse()?;
    let report = genlab_vae::tools::impute_missing(&e.open(None, e.n)?, &spec, iters, e.chunk, e.seed)?;
    genlab_core::images::save_grid(&report.grid_rows, report.grid_rows.size()[0] / 3, 2, &out)?;
    println!("imputation MSE on the missing pixels ([-1, 1] scale), {} images, mask {mask}: {report}", report.images);
    eprintln!("wrote originals, masked inputs and imputations to {}", out.display());
    Ok(())
}

fn likelihood(e: EvalArgs, k: usize) -> Result<()> {
    println!("{}", LikelihoodReport::of(&e.open(None, e.n)?, k, e.chunk)?);
    Ok(())
}
