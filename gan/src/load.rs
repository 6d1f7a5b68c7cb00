//! Trained image-generation GAN runs, loaded for sampling: the plain GANs (DCGAN, WGAN, WGAN-GP,
//! conditional) and StyleGAN2 implement [`genlab_core::run::ImageSampler`]. Super-resolution and
//! CycleGAN runs transform images rather than draw new ones, so they do not.
use crate::error::{GanError, Result};
use crate::model::Generator;
use crate::stylegan2::generator::{Generator as StyleGan2Generator, NoiseMode};
use crate::stylegan2::train::StyleGan2RunConfig;
use crate::train::GanRunConfig;
use genlab_core::run::ImageSampler;
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Device, Tensor};

/// A GAN run's generator with its averaged (EMA) weights.
pub struct GanSampler {
    pub vs: VarStore,
    pub generator: Generator,
    pub run: GanRunConfig,
    pub path: PathBuf,
    /// Class of every sample, for a conditional generator (default: the classes in turn).
    pub class: Option<i64>,
}

impl GanSampler {
    pub fn open(path: &Path, device: Device) -> Result<Self> {
        let (vs, generator, run) = crate::train::load(path, device)?;
        Ok(GanSampler { vs, generator, run, path: path.to_path_buf(), class: None })
    }
}

impl ImageSampler for GanSampler {
    fn sample(&mut self, n: i64) -> genlab_core::Result<Tensor> {
        let labels: Option<Vec<i64>> =
            self.generator.cfg.num_classes.map(|k| (0..n).map(|i| self.class.unwrap_or(i % k)).collect());
        Ok(crate::sample::sample(&self.generator, n, labels.as_deref())?)
    }
    fn describe(&self) -> String {
        format!("gan run {} ({}), EMA generator", self.path.display(), self.run.model)
    }
}

/// A StyleGAN2 run's EMA generator.
pub struct StyleGan2Sampler {
    pub vs: VarStore,
    pub generator: StyleGan2Generator,
    pub run: StyleGan2RunConfig,
    pub path: PathBuf,
    /// Truncation psi (1: none).
    pub psi: f64,
    pub noise: NoiseMode,
}

impl StyleGan2Sampler {
    pub fn open(path: &Path, device: Device) -> Result<Self> {
        let (vs, generator, run) = crate::stylegan2::train::load(path, device)?;
        Ok(StyleGan2Sampler { vs, generator, run, path: path.to_path_buf(), psi: 1.0, noise: NoiseMode::Const })
    }
}

impl ImageSampler for StyleGan2Sampler {
    fn sample(&mut self, n: i64) -> genlab_core::Result<Tensor> {
        Ok(crate::stylegan2::tools::sample(&self.generator, n, self.psi, self.noise)?)
    }
    fn describe(&self) -> String {
        format!("gan/stylegan2 run {} ({}), truncation {}", self.path.display(), self.run.model, self.psi)
    }
}

/// What `genlab gan sample` draws: `n` images (or one per seed of a StyleGAN2 in `seeds`). With
/// the `clap` feature, the flags of its settings (`n` and `seed` are the command's own).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct SampleRequest {
    #[cfg_attr(feature = "clap", arg(skip))]
    pub n: i64,
    #[cfg_attr(feature = "clap", arg(skip))]
    pub seed: u64,
    /// Draw every sample from this class (conditional models; default: cycle through the classes).
    #[cfg_attr(feature = "clap", arg(long))]
    pub class: Option<i64>,
    /// StyleGAN2: the truncation trick, w_avg + psi (w - w_avg), psi in [0, 1] (1: none).
    #[cfg_attr(feature = "clap", arg(long))]
    pub truncation: Option<f64>,
    /// StyleGAN2: one image per seed, comma-separated, instead of --n random ones.
    #[cfg_attr(feature = "clap", arg(long, value_delimiter = ','))]
    pub seeds: Option<Vec<u64>>,
}

/// Samples of the GAN or StyleGAN2 run at `path`, [n, c, h, w] in [-1, 1], with their labels for a
/// conditional generator. Settings that do not apply to the run are refused.
pub fn sample_run(path: &Path, req: &SampleRequest, device: Device) -> Result<(Tensor, Option<Vec<i64>>)> {
    let bad = |m: String| Err(GanError::Config(m));
    if req.n <= 0 {
        return bad("--n must be at least 1".into());
    }
    let (_, config) = genlab_core::run::config_json(path)?;
    if crate::stylegan2::train::is_stylegan2_config(&config) {
        if req.class.is_some() {
            return bad(format!("--class: {} is an unconditional StyleGAN2 run", path.display()));
        }
        let s = StyleGan2Sampler::open(path, device)?;
        let psi = req.truncation.unwrap_or(1.0);
        if let Some(seeds) = &req.seeds {
            return Ok((crate::stylegan2::tools::sample_seeds(&s.generator, seeds, psi, s.noise)?, None));
        }
        tch::manual_seed(req.seed as i64);
        return Ok((crate::stylegan2::tools::sample(&s.generator, req.n, psi, s.noise)?, None));
    }
    if req.truncation.is_some() || req.seeds.is_some() {
        return bad(format!("--truncation and --seeds apply to StyleGAN2 runs; {} is not one", path.display()));
    }
    let s = GanSampler::open(path, device)?;
    let labels: Option<Vec<i64>> = match (req.class, s.generator.cfg.num_classes) {
        (Some(_), None) => {
            return bad(format!(
                "--class needs a class-conditional model (trained with --model cgan); {} is unconditional",
                path.display()
            ))
        }
        (Some(c), Some(k)) if c < 0 || c >= k => {
            return bad(format!("--class {c} is out of range: {} has {k} classes, 0..={}", path.display(), k - 1))
        }
        (Some(c), _) => Some(vec![c; req.n as usize]),
        (None, Some(k)) => Some((0..req.n).map(|i| i % k).collect()),
        (None, None) => None,
    };
    tch::manual_seed(req.seed as i64);
    Ok((crate::sample::sample(&s.generator, req.n, labels.as_deref())?, labels))
}

/// [`crate::sr::upscale::evaluate`] of the super-resolution run at `path`, recording the run and its step.
pub fn sr_evaluation(
    path: &Path,
    ds: &dyn genlab_data::Dataset,
    n: Option<usize>,
    chunk: usize,
    device: Device,
) -> Result<crate::sr::upscale::SrEvaluation> {
    let (_vs, model, _) = crate::sr::train::load(path, device)?;
    let step = genlab_core::train::open_checkpoint(path)?.step();
    let e = crate::sr::upscale::evaluate(&model, ds, n, chunk)?;
    Ok(crate::sr::upscale::SrEvaluation { run: Some(path.display().to_string()), step: Some(step), ..e })
}

/// The sampler for the GAN run at `path`: StyleGAN2 or a plain GAN, whichever it is (a
/// super-resolution or CycleGAN run is a typed wrong-kind error).
pub fn open_sampler(path: &Path, device: Device) -> Result<Box<dyn ImageSampler>> {
    let (_, config) = genlab_core::run::config_json(path)?;
    if crate::stylegan2::train::is_stylegan2_config(&config) {
        Ok(Box::new(StyleGan2Sampler::open(path, device)?))
    } else {
        Ok(Box::new(GanSampler::open(path, device)?))
    }
}
