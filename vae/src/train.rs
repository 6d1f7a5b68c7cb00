//! The VAE training step, plugged into genlab-core's harness.
use crate::error::{Result, VaeError};
use crate::loss::{bernoulli_nll, bits_per_dim, gaussian_nll, kl_standard_normal, kl_weight, ElboTerms};
use crate::model::{reparameterize, Likelihood, Vae, VaeConfig};
use genlab_core::checkpoint::CheckpointReader;
use genlab_core::optim::{Adam, AdamConfig};
use genlab_core::precision::GradScaler;
use genlab_core::train::{Batch, StepOutput, TrainTask};
use genlab_core::Precision;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::{nn::VarStore, Device, Tensor};

pub use crate::FAMILY;

/// Everything `config.json` records about a VAE run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaeRunConfig {
    pub family: String,
    /// The preset name given to `--model`.
    pub model: String,
    pub vae: VaeConfig,
    pub lr: f64,
    pub batch_size: usize,
    pub precision: Precision,
    pub data: String,
}

genlab_core::run_kind!(VaeRunConfig, FAMILY, hint: |found| {
    (found.kind.as_deref() == Some(crate::KL_KIND)).then(|| {
        "a KL autoencoder run has no prior to sample from; genlab_vae::train_kl::load reads it".to_string()
    })
});

impl VaeRunConfig {
    /// A run of preset `model` on data of `image_shape` (and `num_classes`, for conditional presets).
    pub fn from_preset(model: &str, image_shape: [i64; 3], num_classes: Option<usize>, data: &str) -> Result<Self> {
        let mut vae = VaeConfig::preset(model, image_shape)?;
        vae.validate()?;
        if vae.num_classes.is_some() {
            let k = num_classes.ok_or_else(|| {
                VaeError::Config(format!("preset `{model}` is class-conditional but dataset `{data}` has no labels"))
            })?;
            vae.num_classes = Some(k as i64);
        }
        Ok(VaeRunConfig {
            family: FAMILY.into(),
            model: model.into(),
            vae,
            lr: 1e-3,
            batch_size: 128,
            precision: Precision::Fp32,
            data: data.into(),
        })
    }
}

/// The negative ELBO terms of a batch (one posterior sample).
pub fn elbo_terms(model: &Vae, x: &Tensor, labels: Option<&Tensor>) -> Result<(ElboTerms, Tensor)> {
    let (mu, logvar) = model.encode(x, labels)?;
    let z = reparameterize(&mu, &logvar);
    let out = model.decode(&z, labels)?;
    let recon = match model.cfg.likelihood {
        Likelihood::Bernoulli => bernoulli_nll(&out, &((x + 1.0) * 0.5)),
        Likelihood::Gaussian { .. } => {
            gaussian_nll(&out, x, &model.decoder_log_var().unwrap_or_else(|| Tensor::from(0.0)))
        }
    };
    Ok((ElboTerms { recon, kl: kl_standard_normal(&mu, &logvar) }, out))
}

pub struct VaeTask {
    pub vs: VarStore,
    pub model: Vae,
    pub opt: Adam,
    pub run: VaeRunConfig,
    /// Dynamic loss scaling, for fp16.
    pub scaler: Option<GradScaler>,
    device: Device,
}

impl VaeTask {
    pub fn new(run: VaeRunConfig, device: Device) -> Result<Self> {
        run.precision.validate(device)?;
        let vs = VarStore::new(device);
        let model = Vae::new(vs.root(), run.vae.clone())?;
        let opt = Adam::new(&vs, AdamConfig::adam(run.lr))?;
        let scaler = run.precision.needs_scaler().then(GradScaler::default);
        Ok(VaeTask { vs, model, opt, run, scaler, device })
    }
}

impl TrainTask for VaeTask {
    fn train_step(&mut self, batch: &Batch, step: u64) -> genlab_core::Result<StepOutput> {
        let (terms, _) = self
            .run
            .precision
            .autocast(self.device, || elbo_terms(&self.model, &batch.images, batch.labels.as_ref()))?;
        let w = kl_weight(self.model.cfg.beta, step, self.model.cfg.kl_warmup_steps);
        let loss = terms.loss(w);
        self.opt.backward_step_with(&loss, self.scaler.as_mut());
        let recon = terms.recon.mean(tch::Kind::Float).double_value(&[]);
        let kl = terms.kl.mean(tch::Kind::Float).double_value(&[]);
        let dims = self.model.cfg.data_dim();
        Ok(StepOutput {
            loss: loss.double_value(&[]),
            metrics: vec![
                ("recon".into(), recon),
                ("kl".into(), kl),
                ("neg_elbo_nats".into(), recon + kl),
                ("bits_per_dim".into(), bits_per_dim(recon + kl, dims)),
                ("kl_weight".into(), w),
            ],
        })
    }

    fn samples(&mut self, n: i64) -> genlab_core::Result<Tensor> {
        Ok(crate::sample::sample_prior(&self.model, n, None)?)
    }

    fn checkpoint_groups(&self) -> BTreeMap<String, Vec<(String, Tensor)>> {
        let mut g = BTreeMap::new();
        g.insert("model".into(), self.vs.variables().into_iter().collect());
        g.insert("optim".into(), self.opt.state_tensors());
        g
    }

    fn restore(&mut self, ckpt: &CheckpointReader) -> genlab_core::Result<()> {
        ckpt.load_group_into("model", &self.vs)?;
        let st = ckpt.read_group("optim")?;
        self.opt.load_state_tensors(&st)
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.run).unwrap_or_default()
    }

    fn extra_state(&self) -> serde_json::Value {
        serde_json::json!({ "grad_scaler": self.scaler })
    }

    fn restore_extra_state(&mut self, state: &serde_json::Value) -> genlab_core::Result<()> {
        if let Some(scaler) = GradScaler::from_state(state)? {
            self.scaler = Some(scaler);
        }
        Ok(())
    }
}

/// Load a trained VAE from a run directory or checkpoint folder.
pub fn load(path: &std::path::Path, device: Device) -> Result<(VarStore, Vae, VaeRunConfig)> {
    let (ck, run) = genlab_core::run::open_checkpoint::<VaeRunConfig>(path)?;
    let vs = VarStore::new(device);
    let model = Vae::new(vs.root(), run.vae.clone())?;
    ck.load_group_into("model", &vs)?;
    Ok((vs, model, run))
}
