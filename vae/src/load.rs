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
    /// Importance samples of the IWAE bound in [`ImageSampler::reference_metrics`].
    pub iwae_k: usize,
}

impl VaeSampler {
    pub fn open(path: &Path, device: Device) -> Result<Self> {
        let (vs, model, run) = crate::train::load(path, device)?;
        Ok(VaeSampler { vs, model, run, path: path.to_path_buf(), class: None, iwae_k: 100 })
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
    /// The negative ELBO and the IWAE bound on up to 1,000 of the reference images (an
    /// unconditional VAE's; a conditional one has none without labels).
    fn reference_metrics(&mut self, reference: &Tensor) -> genlab_core::Result<Option<(serde_json::Value, String)>> {
        if self.model.cfg.num_classes.is_some() {
            return Ok(None);
        }
        let r = crate::tools::LikelihoodReport::of_images(&self.model, reference, self.iwae_k, 1000)?;
        let summary = format!(
            "VAE on {} reference images: negative ELBO {:.3} nats, IWAE-{} bound on NLL {:.3} nats",
            r.images, r.negative_elbo_nats, r.iwae_k, r.iwae_nll_bound_nats
        );
        Ok(Some((serde_json::to_value(&r).map_err(|e| crate::VaeError::Config(e.to_string()))?, summary)))
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

/// `n` samples of the VAE-family run at `path`, seeded by `seed`: prior samples of a VAE (all of
/// class `class` for a conditional one, else the classes in turn), decodes of unit-variance latents
/// of a KL autoencoder.
pub fn sample_run(path: &Path, n: i64, class: Option<i64>, seed: u64, device: Device) -> Result<Tensor> {
    let bad = |m: String| Err(crate::VaeError::Config(m));
    if n <= 0 {
        return bad("--n must be at least 1".into());
    }
    let (_, config) = genlab_core::run::config_json(path)?;
    if crate::train_kl::is_kl_config(&config) {
        if class.is_some() {
            return bad("--class needs a class-conditional VAE; this is a KL autoencoder".into());
        }
        let s = KlSampler::open(path, device)?;
        tch::manual_seed(seed as i64);
        return crate::sample::decode_random_latents(&s.model, n);
    }
    let s = VaeSampler::open(path, device)?;
    let labels = match (class, s.model.cfg.num_classes) {
        (None, _) => None,
        (Some(_), None) => {
            return bad("--class needs a class-conditional VAE (preset cvae); this one is unconditional".into())
        }
        (Some(c), Some(k)) if c < 0 || c >= k => {
            return bad(format!("--class {c} is out of range: the model has classes 0..{k}"))
        }
        (Some(c), Some(_)) => Some(Tensor::full([n], c, (tch::Kind::Int64, device))),
    };
    tch::manual_seed(seed as i64);
    crate::sample::sample_prior(&s.model, n, labels.as_ref())
}

/// The sampler for the VAE-family run at `path`, plain or KL autoencoder, whichever it is.
pub fn open_sampler(path: &Path, device: Device) -> Result<Box<dyn ImageSampler>> {
    open_sampler_with_iwae(path, device, 100)
}

/// [`open_sampler`], with `iwae_k` importance samples for a VAE's likelihood bound.
pub fn open_sampler_with_iwae(path: &Path, device: Device, iwae_k: usize) -> Result<Box<dyn ImageSampler>> {
    let (_, config) = genlab_core::run::config_json(path)?;
    if crate::train_kl::is_kl_config(&config) {
        Ok(Box::new(KlSampler::open(path, device)?))
    } else {
        Ok(Box::new(VaeSampler { iwae_k, ..VaeSampler::open(path, device)? }))
    }
}
