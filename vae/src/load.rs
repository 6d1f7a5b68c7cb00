//! Trained VAE and KL-autoencoder runs, loaded for sampling: both implement
//! [`genlab_core::run::ImageSampler`].
use crate::autoencoder_kl::AutoencoderKL;
use crate::error::Result;
use crate::model::Vae;
use crate::train::VaeRunConfig;
use crate::train_kl::KlRunConfig;
use genlab_core::run::ImageSampler;
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Device, Tensor};

/// A VAE run: samples decode latents drawn from the prior.
pub struct VaeSampler {
    pub vs: VarStore,
    pub model: Vae,
    pub run: VaeRunConfig,
    pub path: PathBuf,
    /// Class of every sample, for a conditional VAE (default: the classes in turn).
    pub class: Option<i64>,
}

impl VaeSampler {
    pub fn open(path: &Path, device: Device) -> Result<Self> {
        let (vs, model, run) = crate::train::load(path, device)?;
        Ok(VaeSampler { vs, model, run, path: path.to_path_buf(), class: None })
    }
}

impl ImageSampler for VaeSampler {
    fn sample(&mut self, n: i64) -> genlab_core::Result<Tensor> {
        let labels = match (self.model.cfg.num_classes, self.class) {
            (Some(_), Some(c)) => Some(Tensor::full([n], c, (tch::Kind::Int64, self.model.device()))),
            _ => None,
        };
        Ok(tch::no_grad(|| crate::sample::sample_prior(&self.model, n, labels.as_ref()))?)
    }
    fn describe(&self) -> String {
        format!("vae run {} ({}): decoded prior samples", self.path.display(), self.run.model)
    }
}

/// A KL autoencoder run: samples decode standard-normal latents (a rough check of the latent
/// space; latent diffusion models sample it properly).
pub struct KlSampler {
    pub vs: VarStore,
    pub model: AutoencoderKL,
    pub run: KlRunConfig,
    pub path: PathBuf,
}

impl KlSampler {
    pub fn open(path: &Path, device: Device) -> Result<Self> {
        let (vs, model, run) = crate::train_kl::load(path, device)?;
        Ok(KlSampler { vs, model, run, path: path.to_path_buf() })
    }
}

impl ImageSampler for KlSampler {
    fn sample(&mut self, n: i64) -> genlab_core::Result<Tensor> {
        Ok(crate::sample::decode_random_latents(&self.model, n)?)
    }
    fn describe(&self) -> String {
        format!("KL autoencoder run {} ({}): decoded N(0, I) latents", self.path.display(), self.run.model)
    }
}

/// The sampler for the VAE-family run at `path`, plain or KL autoencoder, whichever it is.
pub fn open_sampler(path: &Path, device: Device) -> Result<Box<dyn ImageSampler>> {
    let (_, config) = genlab_core::run::config_json(path)?;
    if crate::train_kl::is_kl_config(&config) {
        Ok(Box::new(KlSampler::open(path, device)?))
    } else {
        Ok(Box::new(VaeSampler::open(path, device)?))
    }
}
