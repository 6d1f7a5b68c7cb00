//! The super-resolution training step (SRResNet, then SRGAN), plugged into genlab-core's harness.
//!
//! The dataset's images are the high-resolution targets; each step makes their low-resolution
//! inputs on the fly with [`crate::sr::resample::downscale`] (antialiased bicubic, 8-bit levels).
//! For the first `pretrain_steps` steps, and throughout when `adversarial_weight` is 0, only the
//! generator is trained, on the pixel MSE (the paper's SRResNet, which also initialises its
//! SRGAN). After that every step is one discriminator update on the batch's real images against
//! the generator's outputs (non-saturating loss), then one generator update on
//! `MSE + adversarial_weight * -log D(G(lr))` (paper: 1e-3).
//!
//! The paper's VGG content loss (`l^SR_VGG/5.4`, on ImageNet-trained VGG19 features) needs
//! weights that genlab does not have, so the content loss here is the pixel MSE (the paper's
//! `SRGAN-MSE` variant).
//!
//! Presets (`--model`), sized for a CPU at 28x28 to 64x64 ([`SrConfig::default`] is the paper's
//! size: 64 features, 16 blocks, for 96x96 crops):
//! - `srgan`: 32 generator features, 4 residual blocks, discriminator widths 16..128 with a
//!   256-unit dense layer; Adam(lr 1e-3, betas 0.9, 0.999) for both networks (the paper: 1e-4
//!   for 10^6 SRResNet updates, then 10^5 SRGAN updates at 1e-4 and 10^5 at 1e-5; a CPU run has
//!   thousands); batch 16 (the
//!   paper's); 1000 pixel-only steps before the adversarial term starts.
//! - `srresnet`: the same generator trained on the pixel MSE alone.
//!
//! A run is a `gan`-family run with `"kind": "super-resolution"` in its `config.json`; [`load`]
//! reads it back.
use crate::error::{GanError, Result};
use crate::loss;
use crate::sr::model::{SrConfig, SrDiscriminator, SrGenerator};
use crate::sr::resample::{downscale, upscale_bicubic};
use crate::train::FAMILY;
use genlab_core::checkpoint::CheckpointReader;
use genlab_core::optim::{Adam, AdamConfig};
use genlab_core::train::{Batch, StepOutput, TrainTask};
use genlab_core::Precision;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// `config.json`'s `kind` for a super-resolution run.
pub const KIND: &str = "super-resolution";

/// The `--model` presets of a super-resolution run.
pub const PRESETS: &[&str] = &["srgan", "srresnet"];

/// The scale a preset uses when none is given (the paper's x4).
pub const DEFAULT_SCALE: i64 = 4;

/// Whether `--model name` is a super-resolution preset.
pub fn is_preset(name: &str) -> bool {
    PRESETS.contains(&name)
}

/// Everything `config.json` records about a super-resolution run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SrRunConfig {
    pub family: String,
    /// Always [`KIND`]: tells this run from the other GAN runs.
    pub kind: String,
    /// The preset name given to `--model`.
    pub model: String,
    /// The networks; `sr.scale` is the upscaling factor.
    pub sr: SrConfig,
    /// [channels, height, width] of the training (high-resolution) images.
    pub image_shape: [i64; 3],
    /// Weight of the adversarial term in the generator loss (0: SRResNet, pixel MSE only).
    pub adversarial_weight: f64,
    /// Steps of pixel-only training before the adversarial term starts.
    pub pretrain_steps: u64,
    pub lr_g: f64,
    pub lr_d: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub batch_size: usize,
    pub precision: Precision,
    pub data: String,
}

genlab_core::run_kind!(SrRunConfig, crate::train::FAMILY, KIND, hint: |found| {
    (found.family == crate::train::FAMILY).then(|| "train one with --model srgan".to_string())
});

impl SrRunConfig {
    /// A run of preset `model` (see the module docs) at `scale` (default x4) on high-resolution
    /// images of `image_shape`.
    pub fn from_preset(model: &str, image_shape: [i64; 3], scale: Option<i64>, data: &str) -> Result<Self> {
        let [c, h, w] = image_shape;
        let side = h.min(w);
        let sr = SrConfig {
            channels: c,
            scale: scale.unwrap_or(DEFAULT_SCALE),
            features: 32,
            num_blocks: 4,
            d_channels: 16,
            // The paper pools nothing: its 96x96 crops are 6x6 after four halvings; keep about that ratio.
            d_pool: ((side + 15) / 16).clamp(1, 6),
            d_hidden: 256,
        };
        let adversarial_weight = match model {
            "srgan" => loss::SRGAN_ADVERSARIAL_WEIGHT,
            "srresnet" => 0.0,
            _ => {
                return Err(GanError::Config(format!(
                    "unknown super-resolution preset `{model}`: expected one of {}",
                    PRESETS.join(", ")
                )))
            }
        };
        let run = SrRunConfig {
            family: FAMILY.into(),
            kind: KIND.into(),
            model: model.into(),
            sr,
            image_shape,
            adversarial_weight,
            pretrain_steps: 1000,
            lr_g: 1e-3,
            lr_d: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            batch_size: 16,
            precision: Precision::Fp32,
            data: data.into(),
        };
        run.validate()?;
        Ok(run)
    }

    pub fn validate(&self) -> Result<()> {
        self.sr.validate()?;
        let [c, h, w] = self.image_shape;
        let s = self.sr.scale;
        if c != self.sr.channels {
            return Err(GanError::Config(format!(
                "the training images have {c} channels but the networks are built for {}",
                self.sr.channels
            )));
        }
        if h % s != 0 || w % s != 0 || h < s || w < s {
            return Err(GanError::Config(format!(
                "x{s} super-resolution needs image sides that are multiples of {s}; `{}` has {h}x{w} images",
                self.data
            )));
        }
        if self.batch_size < 2 {
            return Err(GanError::Config(format!("batch_size must be at least 2, got {}", self.batch_size)));
        }
        if self.lr_g <= 0.0 || self.lr_d <= 0.0 || self.adversarial_weight < 0.0 {
            return Err(GanError::Config(format!(
                "need positive learning rates and adversarial_weight >= 0; got lr_g {}, lr_d {}, adversarial_weight {}",
                self.lr_g, self.lr_d, self.adversarial_weight
            )));
        }
        if self.precision == Precision::Fp16 {
            return Err(GanError::Config(
                "fp16 needs a loss scaler per network, which the super-resolution step does not have; use bf16 or fp32"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Whether step `step` (0-based) trains adversarially.
    pub fn adversarial_at(&self, step: u64) -> bool {
        self.adversarial_weight > 0.0 && step >= self.pretrain_steps
    }
}

pub struct SrTask {
    pub run: SrRunConfig,
    pub vs_g: VarStore,
    pub generator: SrGenerator,
    pub vs_d: VarStore,
    pub discriminator: SrDiscriminator,
    pub opt_g: Adam,
    pub opt_d: Adam,
    /// The latest training batch (high resolution), for the monitoring grid.
    last_batch: Option<Tensor>,
    device: Device,
}

impl std::fmt::Debug for SrTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrTask").field("run", &self.run).finish()
    }
}

impl SrTask {
    /// The networks (initialised from libtorch's current seed) and their optimizers.
    pub fn new(run: SrRunConfig, device: Device) -> Result<Self> {
        run.validate()?;
        run.precision.validate(device)?;
        let vs_g = VarStore::new(device);
        let generator = SrGenerator::new(vs_g.root(), run.sr.clone())?;
        let vs_d = VarStore::new(device);
        let discriminator = SrDiscriminator::new(vs_d.root(), run.sr.clone())?;
        let opt_g = Adam::new(&vs_g, AdamConfig::adam(run.lr_g).betas(run.beta1, run.beta2))?;
        let opt_d = Adam::new(&vs_d, AdamConfig::adam(run.lr_d).betas(run.beta1, run.beta2))?;
        Ok(SrTask { run, vs_g, generator, vs_d, discriminator, opt_g, opt_d, last_batch: None, device })
    }

    fn check_batch(&self, hr: &Tensor) -> Result<()> {
        let s = hr.size();
        let [c, ..] = self.run.image_shape;
        if s.len() != 4 || s[1] != c {
            return Err(GanError::ImageShape {
                network: "super-resolution model",
                expected: self.run.image_shape,
                found: s,
            });
        }
        Ok(())
    }

    fn step(&mut self, batch: &Batch, step: u64) -> Result<StepOutput> {
        let hr = &batch.images;
        self.check_batch(hr)?;
        let lr = downscale(hr, self.run.sr.scale)?;
        let run = &self.run;
        let adversarial = run.adversarial_at(step);
        let (g, d) = (&self.generator, &self.discriminator);
        let mut metrics = Vec::new();
        let sr = run.precision.autocast(self.device, || g.forward(&lr, true))?;
        if adversarial {
            let (d_loss, real, fake) = run.precision.autocast(self.device, || -> Result<_> {
                let real = d.forward(hr, true)?;
                let fake = d.forward(&sr.detach(), true)?;
                Ok((loss::d_loss_non_saturating(&real, &fake), real, fake))
            })?;
            self.opt_d.zero_grad();
            d_loss.backward();
            self.opt_d.step();
            let (real, fake) = (real.detach().to_kind(Kind::Float), fake.detach().to_kind(Kind::Float));
            let accuracy = (real.gt(0.0).to_kind(Kind::Float).mean(Kind::Float)
                + fake.lt(0.0).to_kind(Kind::Float).mean(Kind::Float))
            .double_value(&[])
                / 2.0;
            metrics.push(("d_loss".to_string(), d_loss.double_value(&[])));
            metrics.push(("d_accuracy".to_string(), accuracy));
        }
        let (g_loss, mse) = run.precision.autocast(self.device, || -> Result<_> {
            let fake = if adversarial { Some(d.forward(&sr, true)?) } else { None };
            Ok(loss::sr_generator_loss(&sr, hr, fake.as_ref(), run.adversarial_weight))
        })?;
        self.opt_g.zero_grad();
        g_loss.backward();
        self.opt_g.step();
        let mse = mse.double_value(&[]);
        // On [0, 1] images the MSE is a quarter of the [-1, 1] one.
        let psnr = -10.0 * (mse / 4.0).max(1e-20).log10();
        metrics.push(("mse".to_string(), mse));
        metrics.push(("psnr".to_string(), psnr));
        metrics.push(("adversarial".to_string(), if adversarial { 1.0 } else { 0.0 }));
        self.last_batch = Some(hr.detach().shallow_clone());
        Ok(StepOutput { loss: g_loss.double_value(&[]), metrics })
    }

    /// For the monitoring grid: bicubic upscaling, the generator's output and the original of
    /// `k` images, side by side (`k = 3 m^2` with `9 m^2 <= n` and `k` at most the batch, so that
    /// the grid's rows hold whole triplets).
    fn triplets(&self, n: i64) -> Result<Tensor> {
        let available = self.last_batch.as_ref().map_or(i64::MAX, |x| x.size()[0]);
        let side = |count: i64| (count as f64).sqrt().floor() as i64;
        let m = side(n / 9).min(side(available / 3)).max(1);
        let k = 3 * m * m;
        let hr = match &self.last_batch {
            Some(x) => x.narrow(0, 0, k.min(available)),
            None => {
                let [c, h, w] = self.run.image_shape;
                Tensor::rand([k, c, h, w], (Kind::Float, self.device)) * 2.0 - 1.0
            }
        };
        let scale = self.run.sr.scale;
        let lr = downscale(&hr, scale)?;
        let sr = crate::sr::upscale::upscale(&self.generator, &lr)?;
        let bicubic = upscale_bicubic(&lr, scale)?;
        Ok(Tensor::stack(&[bicubic, sr, hr], 1).flatten(0, 1))
    }
}

impl TrainTask for SrTask {
    fn train_step(&mut self, batch: &Batch, step: u64) -> genlab_core::Result<StepOutput> {
        Ok(self.step(batch, step)?)
    }

    /// Bicubic | super-resolved | original triplets of the latest batch (see [`SrTask`]).
    fn samples(&mut self, n: i64) -> genlab_core::Result<Tensor> {
        Ok(self.triplets(n)?)
    }

    fn checkpoint_groups(&self) -> BTreeMap<String, Vec<(String, Tensor)>> {
        let mut g = BTreeMap::new();
        g.insert("generator".into(), self.vs_g.variables().into_iter().collect());
        g.insert("discriminator".into(), self.vs_d.variables().into_iter().collect());
        g.insert("optim_g".into(), self.opt_g.state_tensors());
        g.insert("optim_d".into(), self.opt_d.state_tensors());
        g
    }

    fn restore(&mut self, ckpt: &CheckpointReader) -> genlab_core::Result<()> {
        ckpt.load_group_into("generator", &self.vs_g)?;
        ckpt.load_group_into("discriminator", &self.vs_d)?;
        self.opt_g.load_state_tensors(&ckpt.read_group("optim_g")?)?;
        self.opt_d.load_state_tensors(&ckpt.read_group("optim_d")?)
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.run).unwrap_or_default()
    }
}

/// Whether a `config.json` value describes a super-resolution run.
pub fn is_sr_config(config: &serde_json::Value) -> bool {
    config.get("kind").and_then(|k| k.as_str()) == Some(KIND)
}

/// Whether the run directory or checkpoint folder at `path` holds a super-resolution run.
pub fn is_sr_run(path: &std::path::Path) -> Result<bool> {
    Ok(is_sr_config(&genlab_core::train::open_checkpoint(path)?.config))
}

/// Load a trained super-resolution generator from a run directory or checkpoint folder.
pub fn load(path: &std::path::Path, device: Device) -> Result<(VarStore, SrGenerator, SrRunConfig)> {
    let (ck, run) = genlab_core::run::open_checkpoint::<SrRunConfig>(path)?;
    let vs = VarStore::new(device);
    let generator = SrGenerator::new(vs.root(), run.sr.clone())?;
    ck.load_group_into("generator", &vs)?;
    Ok((vs, generator, run))
}
