//! Trained image-generation GAN runs, loaded for sampling: the plain GANs (DCGAN, WGAN, WGAN-GP,
//! conditional) and StyleGAN2 implement [`genlab_core::run::ImageSampler`]. Super-resolution and
//! CycleGAN runs transform images rather than draw new ones, so they do not.
use crate::error::Result;
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
