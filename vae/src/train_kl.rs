//! The KL autoencoder's training step (Rombach et al. 2022, arXiv 2112.10752, appendix G), plugged into
//! genlab-core's harness: pixel reconstruction loss plus a small KL weight (1e-6, as LDM's kl-f* configs).
//! LDM's LPIPS and patch-discriminator terms are not part of this objective.
//!
//! A run is a `vae`-family run with `"kind": "autoencoder-kl"` in its `config.json`; [`load`] reads it back.
use crate::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use crate::error::{Result, VaeError};
use crate::loss::{kl_autoencoder_loss, ReconLoss};
use crate::FAMILY;
use genlab_core::checkpoint::CheckpointReader;
use genlab_core::optim::{Adam, AdamConfig};
use genlab_core::precision::GradScaler;
use genlab_core::train::{Batch, StepOutput, TrainTask};
use genlab_core::Precision;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// `config.json`'s `kind` for a KL autoencoder run.
pub use crate::KL_KIND as KIND;

/// The `--model` presets of a KL autoencoder run.
pub const PRESETS: &[&str] = &["kl-f2", "kl-f4", "sd15"];

/// Everything `config.json` records about a KL autoencoder run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KlRunConfig {
    pub family: String,
    /// Always [`KIND`]: tells this run from a plain VAE run of the same family.
    pub kind: String,
    /// The preset name given to `--model`.
    pub model: String,
    pub autoencoder: AutoencoderKLConfig,
    pub recon_loss: ReconLoss,
    pub kl_weight: f64,
    pub lr: f64,
    pub batch_size: usize,
    pub precision: Precision,
    pub data: String,
}

genlab_core::run_kind!(KlRunConfig, FAMILY, KIND, hint: |found| {
    (found.family == FAMILY && found.kind.is_none())
        .then(|| "a plain VAE run; train a KL autoencoder with --model kl-f2, kl-f4 or sd15".to_string())
});

/// Whether `--model name` is a KL autoencoder preset.
pub fn is_preset(name: &str) -> bool {
    PRESETS.contains(&name)
}

impl KlRunConfig {
    /// A run of preset `model` on images of `image_shape` ([c, h, w]):
    /// - `kl-f2`: block_out_channels [32, 64] (one halving; 8x8 digits -> 4x4x4 latents);
    /// - `kl-f4`: [32, 64, 64] (two halvings; 28x28 -> 7x7x4, 32x32 -> 8x8x4);
    /// - `sd15`: Stable Diffusion 1.x's structure ([`AutoencoderKLConfig::sd15`], f = 8), for a GPU,
    ///   with the data's channels and size.
    pub fn from_preset(model: &str, image_shape: [i64; 3], data: &str) -> Result<Self> {
        let [c, h, w] = image_shape;
        let (autoencoder, lr, batch_size) = match model {
            "kl-f2" => (AutoencoderKLConfig::small(image_shape, vec![32, 64]), 1e-3, 64),
            "kl-f4" => (AutoencoderKLConfig::small(image_shape, vec![32, 64, 64]), 1e-3, 64),
            "sd15" => {
                let sd = AutoencoderKLConfig::sd15();
                let sample_size = crate::autoencoder_kl::SampleSize::Rect([h, w]);
                (AutoencoderKLConfig { in_channels: c, out_channels: c, sample_size, ..sd }, 1e-4, 8)
            }
            _ => {
                return Err(VaeError::Config(format!(
                    "unknown KL autoencoder preset `{model}`: expected one of {}",
                    PRESETS.join(", ")
                )))
            }
        };
        autoencoder.validate()?;
        let f = autoencoder.downsampling_factor();
        if h % f != 0 || w % f != 0 {
            return Err(VaeError::Config(format!(
                "preset `{model}` downsamples by {f}: the images' height and width must be divisible by {f}; got {h}x{w}"
            )));
        }
        Ok(KlRunConfig {
            family: FAMILY.into(),
            kind: KIND.into(),
            model: model.into(),
            autoencoder,
            recon_loss: ReconLoss::L1,
            kl_weight: 1e-6,
            lr,
            batch_size,
            precision: Precision::Fp32,
            data: data.into(),
        })
    }
}

/// One pass of the objective: (loss, reconstruction per image, KL per image, per-pixel MSE, reconstruction).
///
/// # Shapes
/// - `x`: [batch, c, h, w] in [-1, 1]; the reconstruction is [batch, c, h, w]
pub fn kl_step_terms(model: &AutoencoderKL, run: &KlRunConfig, x: &Tensor) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let post = model.encode(x)?;
    let recon = model.decode(&post.sample())?;
    let (loss, rec, kl) = kl_autoencoder_loss(run.recon_loss, &recon, x, &post.mean, &post.logvar, run.kl_weight);
    Ok((loss, rec, kl, recon))
}

/// Per-pixel mean squared error of reconstructions through the posterior mode.
///
/// # Shapes
/// - `x`: [batch, c, h, w] in [-1, 1] -> scalar
pub fn reconstruction_mse(model: &AutoencoderKL, x: &Tensor) -> Result<f64> {
    tch::no_grad(|| Ok((model.forward(x, false)? - x).square().mean(Kind::Float).double_value(&[])))
}

pub struct KlAutoencoderTask {
    pub vs: VarStore,
    pub model: AutoencoderKL,
    pub opt: Adam,
    pub run: KlRunConfig,
    /// Dynamic loss scaling, for fp16.
    pub scaler: Option<GradScaler>,
    /// The latest training batch, for the monitoring grid's reconstructions.
    last_batch: Option<Tensor>,
    device: Device,
}

impl KlAutoencoderTask {
    pub fn new(run: KlRunConfig, device: Device) -> Result<Self> {
        run.precision.validate(device)?;
        let vs = VarStore::new(device);
        let model = AutoencoderKL::new(vs.root(), run.autoencoder.clone())?;
        // LDM trains its autoencoders with Adam betas (0.5, 0.9).
        let opt = Adam::new(&vs, AdamConfig::adam(run.lr).betas(0.5, 0.9))?;
        let scaler = run.precision.needs_scaler().then(GradScaler::default);
        Ok(KlAutoencoderTask { vs, model, opt, run, scaler, last_batch: None, device })
    }
}

impl TrainTask for KlAutoencoderTask {
    fn train_step(&mut self, batch: &Batch, _step: u64) -> genlab_core::Result<StepOutput> {
        let x = &batch.images;
        let (loss, rec, kl, recon) =
            self.run.precision.autocast(self.device, || kl_step_terms(&self.model, &self.run, x))?;
        self.opt.backward_step_with(&loss, self.scaler.as_mut());
        let mse = tch::no_grad(|| (recon.to_kind(Kind::Float) - x).square().mean(Kind::Float).double_value(&[]));
        self.last_batch = Some(x.shallow_clone());
        Ok(StepOutput {
            loss: loss.double_value(&[]),
            metrics: vec![
                ("recon".into(), rec.mean(Kind::Float).double_value(&[])),
                ("kl".into(), kl.mean(Kind::Float).double_value(&[])),
                ("mse".into(), mse),
            ],
        })
    }

    /// The first n/2 images of the latest batch above their reconstructions (posterior mode); before any
    /// step, decodes of random latents.
    fn samples(&mut self, n: i64) -> genlab_core::Result<Tensor> {
        match &self.last_batch {
            Some(x) if n >= 2 => {
                let k = (n / 2).min(x.size()[0]);
                let x = x.narrow(0, 0, k);
                let r = crate::sample::reconstruct_kl(&self.model, &x)?;
                Ok(Tensor::cat(&[x, r], 0))
            }
            _ => Ok(crate::sample::decode_random_latents(&self.model, n)?),
        }
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

/// Whether a `config.json` value describes a KL autoencoder run.
pub fn is_kl_config(config: &serde_json::Value) -> bool {
    config.get("kind").and_then(|k| k.as_str()) == Some(KIND)
}

/// Whether the run directory or checkpoint folder at `path` holds a KL autoencoder run.
pub fn is_kl_run(path: &std::path::Path) -> Result<bool> {
    Ok(is_kl_config(&genlab_core::train::open_checkpoint(path)?.config))
}

/// Load a trained KL autoencoder from a run directory or checkpoint folder.
pub fn load(path: &std::path::Path, device: Device) -> Result<(VarStore, AutoencoderKL, KlRunConfig)> {
    let (ck, run) = genlab_core::run::open_checkpoint::<KlRunConfig>(path)?;
    let vs = VarStore::new(device);
    let model = AutoencoderKL::new(vs.root(), run.autoencoder.clone())?;
    ck.load_group_into("model", &vs)?;
    Ok((vs, model, run))
}
