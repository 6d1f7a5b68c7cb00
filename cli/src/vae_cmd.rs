//! `genlab vae ...`
use crate::{SampleArgs, TrainArgs};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use genlab_core::run::apply_overrides;
use genlab_vae::train::{VaeRunConfig, VaeTask};
use std::io::Write;
use std::path::PathBuf;
use tch::{Kind, Tensor};

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
        pairs: String,
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
        score: genlab_vae::anomaly::Score,
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
        VaeCommand::Interpolate { eval, pairs, steps, linear, out } => interpolate(eval, &pairs, steps, linear, out),
        VaeCommand::Anomaly { eval, score, anomalous_class, out } => anomaly(eval, score, anomalous_class, out),
        VaeCommand::Embed { eval, out, probe_test } => embed(eval, out, probe_test),
        VaeCommand::Impute { eval, mask, iters, out } => impute(eval, &mask, iters, out),
        VaeCommand::Likelihood { eval, k } => likelihood(eval, k),
    }
}

fn train(a: TrainArgs) -> Result<()> {
    let config_path = a.out.join("config.json");
    let kl = if a.resume && config_path.is_file() {
        let text = std::fs::read_to_string(&config_path)?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", config_path.display()))?;
        genlab_vae::train_kl::is_kl_config(&value)
    } else {
        genlab_vae::train_kl::is_preset(&a.model)
    };
    if kl {
        return train_kl(a);
    }
    let device = a.device.resolve()?;
    a.fit(
        device,
        |ds| {
            let [c, h, w] = ds.shape();
            let run = VaeRunConfig::from_preset(&a.model, [c as i64, h as i64, w as i64], ds.num_classes(), &a.data)?;
            let run = apply_overrides(run, &a.overrides())?;
            Ok(run)
        },
        |run, _, device| Ok(VaeTask::new(run, device)?),
    )
}

/// `genlab vae train` for the KL autoencoder presets (`genlab_vae::train_kl`).
fn train_kl(a: TrainArgs) -> Result<()> {
    use genlab_vae::train_kl::{KlAutoencoderTask, KlRunConfig};
    let device = a.device.resolve()?;
    a.fit(
        device,
        |ds| {
            let [c, h, w] = ds.shape();
            let run = KlRunConfig::from_preset(&a.model, [c as i64, h as i64, w as i64], &a.data)?;
            let run = apply_overrides(run, &a.overrides())?;
            Ok(run)
        },
        |run, _, device| Ok(KlAutoencoderTask::new(run, device)?),
    )
}

fn sample(a: SampleArgs, class: Option<i64>) -> Result<()> {
    if a.n <= 0 {
        anyhow::bail!("--n must be at least 1");
    }
    let device = a.device.resolve()?;
    if genlab_vae::train_kl::is_kl_run(&a.run)? {
        if class.is_some() {
            bail!("--class needs a class-conditional VAE; this is a KL autoencoder");
        }
        let (_vs, model, _) = genlab_vae::train_kl::load(&a.run, device)?;
        tch::manual_seed(a.seed as i64);
        let imgs = genlab_vae::sample::decode_random_latents(&model, a.n)?;
        genlab_core::images::save_samples(&imgs, &a.out, None)?;
        eprintln!("wrote {} decodes of random latents to {}", a.n, a.out.display());
        return Ok(());
    }
    let (_vs, model, _) = genlab_vae::train::load(&a.run, device)?;
    tch::manual_seed(a.seed as i64);
    let labels = match (class, model.cfg.num_classes) {
        (None, _) => None,
        (Some(_), None) => bail!("--class needs a class-conditional VAE (preset cvae); this one is unconditional"),
        (Some(c), Some(k)) if c < 0 || c >= k => bail!("--class {c} is out of range: the model has classes 0..{k}"),
        (Some(c), Some(_)) => Some(Tensor::full([a.n], c, (Kind::Int64, device))),
    };
    let imgs = genlab_vae::sample::sample_prior(&model, a.n, labels.as_ref())?;
    genlab_core::images::save_samples(&imgs, &a.out, None)?;
    eprintln!("wrote {} samples to {}", a.n, a.out.display());
    Ok(())
}

/// What the VAE tools read: a trained run and a dataset.
#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// Run directory (its newest checkpoint) or a checkpoint folder.
    #[arg(long)]
    pub run: PathBuf,
    #[arg(long, help = crate::data_cmd::DATASET_HELP)]
    pub data: String,
    #[command(flatten)]
    pub data_options: crate::data_cmd::DataOptions,
    /// Use at most this many images (the first N).
    #[arg(long)]
    pub n: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "auto")]
    pub device: genlab_core::DeviceSpec,
    /// Images per forward pass.
    #[arg(long, default_value_t = 500)]
    pub chunk: usize,
}

struct Loaded {
    model: genlab_vae::Vae,
    _vs: tch::nn::VarStore,
    ds: std::sync::Arc<dyn genlab_data::Dataset>,
    count: usize,
    device: tch::Device,
    conditional: bool,
}

impl EvalArgs {
    fn load(&self) -> Result<Loaded> {
        let device = self.device.resolve()?;
        let (vs, model, _) = genlab_vae::train::load(&self.run, device)?;
        let ds = self.data_options.open(&self.data, self.seed)?;
        let [c, h, w] = ds.shape();
        if [c as i64, h as i64, w as i64] != model.cfg.image_shape {
            bail!("{}: images are {c}x{h}x{w}, the model was trained on {:?}", self.data, model.cfg.image_shape);
        }
        let count = self.n.unwrap_or(ds.len()).min(ds.len());
        if count == 0 {
            bail!("{}: no images to use", self.data);
        }
        tch::manual_seed(self.seed as i64);
        let conditional = model.cfg.num_classes.is_some();
        Ok(Loaded { model, _vs: vs, ds, count, device, conditional })
    }
}

impl Loaded {
    /// `f` over the first `count` images in chunks; results concatenated.
    fn map_chunks(
        &self,
        chunk: usize,
        mut f: impl FnMut(&Tensor, Option<&Tensor>) -> Result<Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let mut outs = Vec::new();
        let mut labels = Vec::new();
        for start in (0..self.count).step_by(chunk.max(1)) {
            let idx: Vec<usize> = (start..(start + chunk.max(1)).min(self.count)).collect();
            let (x, y) = genlab_data::batch_of(self.ds.as_ref(), &idx)?;
            let (x, y) = (x.to_device(self.device), y.map(|y| y.to_device(self.device)));
            let cond = if self.conditional { y.as_ref() } else { None };
            outs.push(f(&x, cond)?.to_device(tch::Device::Cpu));
            if let Some(y) = y {
                labels.push(y.to_device(tch::Device::Cpu));
            }
        }
        let labels = (labels.len() == outs.len()).then(|| Tensor::cat(&labels, 0));
        Ok((Tensor::cat(&outs, 0), labels))
    }
}

fn reconstruct(e: EvalArgs, out: PathBuf) -> Result<()> {
    if genlab_vae::train_kl::is_kl_run(&e.run)? {
        return reconstruct_kl(e, out);
    }
    let l = EvalArgs { n: Some(e.n.unwrap_or(16)), ..e }.load()?;
    let idx: Vec<usize> = (0..l.count).collect();
    let (x, y) = genlab_data::batch_of(l.ds.as_ref(), &idx)?;
    let x = x.to_device(l.device);
    let y = y.filter(|_| l.conditional).map(|y| y.to_device(l.device));
    let r = genlab_vae::sample::reconstruct(&l.model, &x, y.as_ref())?;
    let u8s = genlab_core::images::to_u8(&Tensor::cat(&[x, r], 0));
    genlab_core::images::save_png(&genlab_core::images::make_grid(&u8s, l.count as i64, 2)?, &out)?;
    eprintln!("wrote {} originals and reconstructions to {}", l.count, out.display());
    Ok(())
}

fn reconstruct_kl(e: EvalArgs, out: PathBuf) -> Result<()> {
    let device = e.device.resolve()?;
    let (_vs, model, _) = genlab_vae::train_kl::load(&e.run, device)?;
    let ds = e.data_options.open(&e.data, e.seed)?;
    let n = e.n.unwrap_or(16).min(ds.len());
    if n == 0 {
        bail!("{}: no images to use", e.data);
    }
    let idx: Vec<usize> = (0..n).collect();
    let (x, _) = genlab_data::batch_of(ds.as_ref(), &idx)?;
    let x = x.to_device(device);
    let r = genlab_vae::sample::reconstruct_kl(&model, &x)?;
    if r.size() != x.size() {
        bail!(
            "{}: images {:?} reconstruct as {:?}: height and width must be multiples of {}",
            e.data,
            x.size(),
            r.size(),
            model.cfg.downsampling_factor()
        );
    }
    let u8s = genlab_core::images::to_u8(&Tensor::cat(&[x, r], 0));
    genlab_core::images::save_png(&genlab_core::images::make_grid(&u8s, n as i64, 2)?, &out)?;
    eprintln!("wrote {n} originals and reconstructions to {}", out.display());
    Ok(())
}

fn interpolate(e: EvalArgs, pairs: &str, steps: i64, linear: bool, out: PathBuf) -> Result<()> {
    let l = e.load()?;
    let mut rows = Vec::new();
    for p in pairs.split(',') {
        let (a, b) = p.split_once(':').context("--pairs takes A:B index pairs, e.g. 0:17,3:40")?;
        let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
        if a >= l.count || b >= l.count {
            bail!("pair {a}:{b}: indices must be below {}", l.count);
        }
        let (x, _) = genlab_data::batch_of(l.ds.as_ref(), &[a, b])?;
        let x = x.to_device(l.device);
        rows.push(genlab_vae::interpolate::interpolate(
            &l.model,
            &x.narrow(0, 0, 1),
            &x.narrow(0, 1, 1),
            steps,
            !linear,
        )?);
    }
    let u8s = genlab_core::images::to_u8(&Tensor::cat(&rows, 0));
    genlab_core::images::save_png(&genlab_core::images::make_grid(&u8s, steps, 2)?, &out)?;
    eprintln!("wrote {} interpolation rows to {}", rows.len(), out.display());
    Ok(())
}

fn anomaly(e: EvalArgs, score: genlab_vae::anomaly::Score, anomalous: Option<i64>, out: PathBuf) -> Result<()> {
    let chunk = e.chunk;
    let l = e.load()?;
    let (scores, labels) = l.map_chunks(chunk, |x, y| Ok(genlab_vae::anomaly::scores(&l.model, x, y, score)?))?;
    let scores = Vec::<f64>::try_from(scores.to_kind(Kind::Double))?;
    let labels: Option<Vec<i64>> = labels.map(Vec::<i64>::try_from).transpose()?;
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?);
    writeln!(f, "index,label,score")?;
    for (i, s) in scores.iter().enumerate() {
        let lab = labels.as_ref().map(|l| l[i].to_string()).unwrap_or_default();
        writeln!(f, "{i},{lab},{s}")?;
    }
    f.flush()?;
    eprintln!("wrote {} scores to {}", scores.len(), out.display());
    if let Some(k) = anomalous {
        let labels = labels.context("--anomalous-class needs a labelled dataset")?;
        let positive: Vec<bool> = labels.iter().map(|&l| l == k).collect();
        match genlab_vae::anomaly::roc_auc(&scores, &positive) {
            Some(auc) => println!("ROC-AUC (class {k} as the anomaly, {:?} score): {auc:.4}", score),
            None => bail!("class {k} is absent from (or is all of) the scored images: no AUC"),
        }
    }
    Ok(())
}

fn embed(e: EvalArgs, out: PathBuf, probe_test: Option<String>) -> Result<()> {
    let chunk = e.chunk;
    let l = e.load()?;
    let (z, labels) = l.map_chunks(chunk, |x, y| Ok(genlab_vae::embed::embed(&l.model, x, y)?))?;
    let lv: Option<Vec<i64>> = labels.as_ref().map(Vec::<i64>::try_from).transpose()?;
    genlab_data::write_matrix_h5(&out, "latents", &z, lv.as_deref())?;
    eprintln!("wrote {} latents of dimension {} to {}", z.size()[0], z.size()[1], out.display());
    if let Some(test) = probe_test {
        let train_y = labels.context("the probe needs labels in --data")?;
        let tl = EvalArgs { data: test.clone(), n: None, ..e.clone() }.load()?;
        let (tz, ty) = tl.map_chunks(chunk, |x, y| Ok(genlab_vae::embed::embed(&tl.model, x, y)?))?;
        let ty = ty.context("the probe needs labels in --probe-test")?;
        let k = l.ds.num_classes().unwrap_or(2) as i64;
        let flat = |ld: &Loaded| -> Result<Tensor> { Ok(ld.map_chunks(chunk, |x, _| Ok(x.flatten(1, -1)))?.0) };
        let acc_z = genlab_vae::embed::linear_probe(&z, &train_y, &tz, &ty, k, 300)?;
        let acc_px = genlab_vae::embed::linear_probe(&flat(&l)?, &train_y, &flat(&tl)?, &ty, k, 300)?;
        println!("linear probe accuracy on {test}: latents {acc_z:.4}, pixels {acc_px:.4}");
    }
    Ok(())
}

fn impute(e: EvalArgs, mask: &str, iters: usize, out: PathBuf) -> Result<()> {
    use genlab_vae::impute::{make_mask, masked_mse, MaskKind};
    let chunk = e.chunk;
    let l = e.load()?;
    let [c, h, w] = l.model.cfg.image_shape;
    let (kind, arg) = mask.split_once(':').map(|(k, a)| (k, Some(a))).unwrap_or((mask, None));
    let frac = |d: f64| -> Result<f64> {
        Ok(arg.map(str::parse).transpose().context("mask parameter must be a number")?.unwrap_or(d))
    };
    let single: Option<Tensor> = match kind {
        "box" | "random" => None,
        path => {
            let img = image::open(path).with_context(|| format!("reading mask {path}"))?.to_luma8();
            if (img.height() as i64, img.width() as i64) != (h, w) {
                bail!("mask {path} is {}x{}, the images are {h}x{w}", img.height(), img.width());
            }
            let v: Vec<f32> = img.pixels().map(|p| if p.0[0] >= 128 { 1.0 } else { 0.0 }).collect();
            Some(Tensor::from_slice(&v).view([1, 1, h, w]))
        }
    };
    let mut chunk_no = 0u64;
    let mut make = |n: i64| -> Result<Tensor> {
        chunk_no += 1;
        Ok(match (&single, kind) {
            (Some(m), _) => m.expand([n, c, h, w], false).contiguous(),
            (None, "box") => make_mask(MaskKind::Box { fraction: frac(0.5)? }, [n, c, h, w], e.seed)?,
            (None, _) => make_mask(MaskKind::Random { p: frac(0.5)? }, [n, c, h, w], e.seed ^ chunk_no)?,
        })
    };
    // The mean-fill baseline uses the per-pixel mean of the images being imputed.
    let (all, _) = l.map_chunks(chunk, |x, _| Ok(x.shallow_clone()))?;
    let pixel_mean = all.mean_dim(0, true, Kind::Float);
    let (mut se_model, mut se_mean, mut missing) = (0.0, 0.0, 0.0);
    let mut grid = Vec::new();
    let _ = l.map_chunks(chunk, |x, y| {
        let m = make(x.size()[0])?.to_device(x.device());
        let filled = genlab_vae::impute::impute(&l.model, x, &m, y, iters)?;
        let hole = m.ones_like() - &m;
        let k = hole.sum(Kind::Float).double_value(&[]);
        se_model += masked_mse(&filled, x, &m) * k;
        let mean_fill = x * &m + pixel_mean.to_device(x.device()) * &hole;
        se_mean += masked_mse(&mean_fill, x, &m) * k;
        missing += k;
        if grid.is_empty() {
            let n = x.size()[0].min(16);
            // Missing pixels shown mid-grey.
            let shown = x * &m;
            grid = vec![x.narrow(0, 0, n), shown.narrow(0, 0, n), filled.narrow(0, 0, n)];
        }
        Ok(Tensor::zeros([1], (Kind::Float, x.device())))
    })?;
    let ncol = grid.first().map(|g| g.size()[0]).unwrap_or(1);
    let u8s = genlab_core::images::to_u8(&Tensor::cat(&grid, 0));
    genlab_core::images::save_png(&genlab_core::images::make_grid(&u8s, ncol, 2)?, &out)?;
    let (mse, base) = (se_model / missing.max(1.0), se_mean / missing.max(1.0));
    println!(
        "imputation MSE on the missing pixels ([-1, 1] scale), {} images, mask {mask}: VAE {mse:.5}, mean fill {base:.5} ({:.1}% lower)",
        l.count,
        100.0 * (1.0 - mse / base)
    );
    eprintln!("wrote originals, masked inputs and imputations to {}", out.display());
    Ok(())
}

fn likelihood(e: EvalArgs, k: usize) -> Result<()> {
    let chunk = e.chunk.min(200);
    let l = e.load()?;
    let (iwae, _) = l.map_chunks(chunk, |x, y| Ok(genlab_vae::likelihood::iwae_bound(&l.model, x, y, k)?))?;
    let (elbo, _) = l.map_chunks(chunk, |x, y| Ok(genlab_vae::likelihood::iwae_bound(&l.model, x, y, 1)?))?;
    let dims = l.model.cfg.data_dim();
    let (nll_k, nll_1) = (-iwae.mean(Kind::Double).double_value(&[]), -elbo.mean(Kind::Double).double_value(&[]));
    let bpd = |n: f64| genlab_vae::loss::bits_per_dim(n, dims);
    println!("{} images: negative ELBO {nll_1:.3} nats ({:.4} bits/dim); IWAE-{k} bound on NLL {nll_k:.3} nats ({:.4} bits/dim)", l.count, bpd(nll_1), bpd(nll_k));
    Ok(())
}
