//! The diffusion training step, plugged into genlab-core's harness.
//!
//! Ho et al., "Denoising Diffusion Probabilistic Models", arXiv 2006.11239, Algorithm 1 (uniform
//! timesteps, Gaussian noise, regress the target) with an EMA of the weights for sampling (section 4,
//! decay 0.9999 there), classifier-free guidance training by label dropout (Ho and Salimans,
//! arXiv 2207.12598, Algorithm 1) and optional min-SNR-gamma weighting (Hang et al., arXiv 2303.09556).
//! Follows diffusers' `examples/unconditional_image_generation/train_unconditional.py` (AdamW,
//! `EMAModel` with warmup, one optimizer step per batch).
//!
//! A latent run (Rombach et al., arXiv 2112.10752; see [`crate::latent`]) trains the same way on the
//! latents of a frozen autoencoder: [`DiffusionRunConfig::latent`] says which, and [`DiffusionTask`]
//! encodes each batch before the step and decodes its monitoring samples.
use std::collections::BTreeMap;
use std::path::Path;

use genlab_core::checkpoint::{self, CheckpointData, CheckpointReader};
use genlab_core::ema::{Ema, EmaWarmup};
use genlab_core::optim::{Adam, AdamConfig};
use genlab_core::precision::GradScaler;
use genlab_core::train::{Batch, StepOutput, TrainTask};
use genlab_core::Precision;
use genlab_data::{Dataset, Loader, LoaderConfig};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::backbone::{Backbone, BackboneConfig};
use crate::error::{DiffusionError, Result};
use crate::latent::{LatentAutoencoder, LatentConfig};
use crate::loss::{denoising_loss, weighted_mean};
use crate::schedule::{NoiseSchedule, ScheduleConfig};
use crate::scheduler::SchedulerKind;

pub const FAMILY: &str = "diffusion";

fn ratio_warmup() -> EmaWarmup {
    EmaWarmup::Ratio
}

/// The learning rate a new run of preset `model` starts with (after its warm-up).
///
/// The small CPU presets learn much faster at a high rate, which the warm-up, gradient clipping and EMA
/// keep stable: `unet-small`, 1,200 steps of batch 64 on Fashion-MNIST, DPM-Solver++ 20 from the EMA,
/// Fréchet distance in the Fashion-MNIST classifier's features: 12.9 at 2e-4, 5.2 at 1e-3, 3.9 at 2e-3.
/// `dit-s` takes 1e-3. The wider U-Nets keep DDPM's 2e-4 (Ho et al., arXiv 2006.11239, appendix B),
/// the paper's DiTs its 1e-4 (Peebles and Xie, arXiv 2212.09748, section 5).
pub fn default_lr(model: &str) -> f64 {
    match model {
        "unet-tiny" | "unet-small" => 2e-3,
        "dit-s" => 1e-3,
        m if m.starts_with("DiT-") => 1e-4,
        _ => 2e-4,
    }
}

/// Which weights of a run to sample from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Weights {
    /// The exponential moving average (the checkpoint group `ema`).
    #[default]
    Ema,
    /// The trained weights themselves (the checkpoint group `model`).
    Raw,
}

impl std::fmt::Display for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Weights::Ema => "ema",
            Weights::Raw => "raw",
        })
    }
}

impl Weights {
    /// The checkpoint group holding these weights.
    pub fn group(self) -> &'static str {
        match self {
            Weights::Ema => "ema",
            Weights::Raw => "model",
        }
    }
}

impl std::str::FromStr for Weights {
    type Err = DiffusionError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ema" => Ok(Weights::Ema),
            "raw" => Ok(Weights::Raw),
            _ => Err(DiffusionError::UnknownName { what: "weights", found: s.into(), expected: "ema, raw".into() }),
        }
    }
}

/// Everything `config.json` records about a diffusion run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiffusionRunConfig {
    pub family: String,
    /// The preset name given to `--model`.
    pub model: String,
    /// The network: `"unet": {...}` or `"dit": {...}` in `config.json`.
    #[serde(flatten)]
    pub backbone: BackboneConfig,
    pub schedule: ScheduleConfig,
    /// Probability of replacing a label by the null class during training (class-conditional runs).
    pub p_uncond: f64,
    /// Min-SNR-gamma loss weighting (the paper's gamma is 5); `None` is the plain MSE.
    pub min_snr_gamma: Option<f64>,
    /// The EMA's decay, reached after its warm-up.
    pub ema_decay: f64,
    /// How the EMA's decay grows over the first steps. Runs written before this field existed used
    /// [`EmaWarmup::Ratio`]; new runs use diffusers' `EMAModel` warm-up, [`EmaWarmup::POWER_2_3`].
    #[serde(default = "ratio_warmup")]
    pub ema_warmup: EmaWarmup,
    pub lr: f64,
    /// Linear learning-rate warm-up from 0 over this many steps (0: none).
    #[serde(default)]
    pub lr_warmup_steps: u64,
    /// Clip the global gradient norm to this (`None`: no clipping, as in runs written before it existed).
    #[serde(default)]
    pub max_grad_norm: Option<f64>,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub precision: Precision,
    pub data: String,
    /// Scheduler and steps of the monitoring sample grids.
    pub sample_scheduler: SchedulerKind,
    pub sample_steps: usize,
    /// Set for a latent diffusion run: the U-Net learns this autoencoder's latents, not pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latent: Option<LatentConfig>,
    /// Set for a flow-matching run (with `schedule.flow`): how training draws its noise levels and
    /// weights its loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowObjective>,
}

/// How a flow-matching run draws the noise level `sigma` of each training sample: `u` in (0, 1)
/// from this density picks the training sigma at index `floor(u N)` (diffusers'
/// `compute_density_for_timestep_sampling`, SD3's `weighting_scheme`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TimestepDensity {
    /// `sigmoid(N(mean, std))`: SD3's default (mean 0, std 1), most samples at middling noise.
    LogitNormal {
        mean: f64,
        std: f64,
    },
    /// `1 - u - scale (cos^2(pi u / 2) - 1 + u)` for uniform `u`: SD3's mode sampling (scale 1.29).
    Mode {
        scale: f64,
    },
    Uniform,
}

impl TimestepDensity {
    /// `n` draws, [n] f32 in [0, 1).
    pub fn sample(self, n: i64, device: Device) -> Tensor {
        match self {
            // torch.normal(mean, std): libtorch's normal_ fill, which rounds as diffusers' draw does.
            TimestepDensity::LogitNormal { mean, std } => {
                let mut z = Tensor::empty([n], (Kind::Float, device));
                let _ = z.normal_(mean, std);
                z.sigmoid()
            }
            TimestepDensity::Mode { scale } => {
                let u = Tensor::rand([n], (Kind::Float, device));
                let c = ((&u * std::f64::consts::PI) / 2.0).cos().square();
                (1.0 - &u) - (c - 1.0 + &u) * scale
            }
            TimestepDensity::Uniform => Tensor::rand([n], (Kind::Float, device)),
        }
    }
}

/// The weight of each flow-matching sample's loss (diffusers' `compute_loss_weighting_for_sd3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FlowLossWeighting {
    /// The plain velocity MSE.
    #[default]
    None,
    /// `sigma^-2`.
    SigmaSqrt,
    /// `2 / (pi (1 - 2 sigma + 2 sigma^2))` (Esser et al.'s CosMap).
    Cosmap,
}

impl FlowLossWeighting {
    /// Per-sample weights for `sigmas` ([n] f32), none for the plain MSE.
    pub fn weights(self, sigmas: &Tensor) -> Option<Tensor> {
        match self {
            FlowLossWeighting::None => None,
            FlowLossWeighting::SigmaSqrt => Some(sigmas.pow_tensor_scalar(-2.0)),
            FlowLossWeighting::Cosmap => {
                let bot: Tensor = (sigmas.square() * 2.0) - sigmas * 2.0 + 1.0;
                Some(bot.reciprocal() * (2.0 / std::f64::consts::PI))
            }
        }
    }
}

/// What a diffusion-family run learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Objective {
    /// Denoising diffusion on a beta schedule (the schedule's prediction type).
    #[default]
    Diffusion,
    /// Flow matching (rectified flow): the velocity along straight paths from data to noise.
    Flow,
}

impl std::str::FromStr for Objective {
    type Err = DiffusionError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "diffusion" => Ok(Objective::Diffusion),
            "flow" => Ok(Objective::Flow),
            _ => Err(DiffusionError::UnknownName {
                what: "objective",
                found: s.into(),
                expected: "diffusion, flow".into(),
            }),
        }
    }
}

impl std::str::FromStr for TimestepDensity {
    type Err = DiffusionError;
    /// `logit-normal[:MEAN,STD]`, `mode[:SCALE]` or `uniform`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || DiffusionError::UnknownName {
            what: "timestep density",
            found: s.into(),
            expected: "logit-normal[:MEAN,STD], mode[:SCALE], uniform".into(),
        };
        let (name, args) = s.split_once(':').map(|(n, a)| (n, Some(a))).unwrap_or((s, None));
        let nums: Vec<f64> = match args {
            Some(a) => a.split(',').map(|x| x.trim().parse::<f64>().map_err(|_| bad())).collect::<Result<_>>()?,
            None => vec![],
        };
        let d = match (name, nums.as_slice()) {
            ("logit-normal", []) => TimestepDensity::LogitNormal { mean: 0.0, std: 1.0 },
            ("logit-normal", [mean, std]) if *std > 0.0 => TimestepDensity::LogitNormal { mean: *mean, std: *std },
            ("mode", []) => TimestepDensity::Mode { scale: 1.29 },
            ("mode", [scale]) => TimestepDensity::Mode { scale: *scale },
            ("uniform", []) => TimestepDensity::Uniform,
            _ => return Err(bad()),
        };
        Ok(d)
    }
}

impl std::str::FromStr for FlowLossWeighting {
    type Err = DiffusionError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(FlowLossWeighting::None),
            "sigma-sqrt" => Ok(FlowLossWeighting::SigmaSqrt),
            "cosmap" => Ok(FlowLossWeighting::Cosmap),
            _ => Err(DiffusionError::UnknownName {
                what: "flow loss weighting",
                found: s.into(),
                expected: "none, sigma-sqrt, cosmap".into(),
            }),
        }
    }
}

/// The flow-matching objective of a run: the velocity `noise - x0` at `(1 - sigma) x0 + sigma noise`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FlowObjective {
    pub density: TimestepDensity,
    pub weighting: FlowLossWeighting,
}

impl Default for FlowObjective {
    /// SD3's: logit-normal(0, 1) noise levels, no loss weighting.
    fn default() -> Self {
        FlowObjective {
            density: TimestepDensity::LogitNormal { mean: 0.0, std: 1.0 },
            weighting: FlowLossWeighting::None,
        }
    }
}

genlab_core::run_kind!(DiffusionRunConfig, FAMILY);

impl DiffusionRunConfig {
    /// A run of preset `model` (a U-Net or a DiT) on data of `image_shape`. `num_classes` makes the
    /// model class-conditional (one extra class embedding is the null class).
    pub fn from_preset(
        model: &str,
        image_shape: [i64; 3],
        num_classes: Option<usize>,
        schedule: ScheduleConfig,
        data: &str,
    ) -> Result<Self> {
        let backbone = BackboneConfig::preset(model, image_shape, num_classes.map(|k| k as i64))?;
        schedule.validate()?;
        Ok(DiffusionRunConfig {
            family: FAMILY.into(),
            model: model.into(),
            backbone,
            schedule,
            p_uncond: if num_classes.is_some() { 0.1 } else { 0.0 },
            min_snr_gamma: None,
            ema_decay: 0.999,
            ema_warmup: EmaWarmup::POWER_2_3,
            lr: default_lr(model),
            lr_warmup_steps: 100,
            max_grad_norm: Some(1.0),
            weight_decay: 0.0,
            batch_size: 64,
            precision: Precision::Fp32,
            data: data.into(),
            sample_scheduler: SchedulerKind::DpmPp2m,
            sample_steps: 20,
            latent: None,
            flow: None,
        })
    }

    /// A latent run of U-Net preset `model`: the U-Net is built for `latent.latent_shape`, and the
    /// schedule does not clip the predicted sample (latents are not bounded to [-1, 1]; Stable
    /// Diffusion's schedulers set `clip_sample` false too). See [`latent_run_config`],
    /// which estimates the scale and checks the autoencoder against the data.
    pub fn from_preset_latent(
        model: &str,
        latent: LatentConfig,
        num_classes: Option<usize>,
        schedule: ScheduleConfig,
        data: &str,
    ) -> Result<Self> {
        let schedule = ScheduleConfig { clip_sample: false, ..schedule };
        let mut run = Self::from_preset(model, latent.latent_shape, num_classes, schedule, data)?;
        run.latent = Some(latent);
        Ok(run)
    }

    /// A resumed latent run keeps its autoencoder and scale: `autoencoder` (the path given again, if any)
    /// must be the one the run started from, and `scale` (if given) its scale. A pixel-space run takes neither.
    pub fn check_resume(&self, autoencoder: Option<&Path>, scale: Option<f64>) -> Result<()> {
        let bad = |msg: String| Err(DiffusionError::Latent(msg));
        match (&self.latent, autoencoder, scale) {
            (None, None, None) => Ok(()),
            (None, _, _) => bad("this run trains in pixel space; train on latents in a new run directory".into()),
            (Some(l), a, s) => {
                if let Some(a) = a.filter(|a| crate::latent::absolute_path(a) != l.autoencoder_source) {
                    return bad(format!(
                        "this latent run was started with the autoencoder {}, not {}; it trains on its own copy \
                         (autoencoder/ in the run directory): resume without --latent-autoencoder, or start a new run",
                        l.autoencoder_source.display(),
                        a.display()
                    ));
                }
                if let Some(s) = s.filter(|&s| (s - l.scale).abs() > 1e-12 * l.scale.abs()) {
                    return bad(format!(
                        "this latent run uses the latent scale {}, not {s}: resume without --latent-scale",
                        l.scale
                    ));
                }
                Ok(())
            }
        }
    }

    /// Check the training options (the U-Net and schedule check themselves).
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(DiffusionError::Config(msg));
        if !(0.0..1.0).contains(&self.p_uncond) {
            return bad(format!("p_uncond must be in [0, 1), got {}", self.p_uncond));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad(format!("ema_decay must be in [0, 1), got {}", self.ema_decay));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("lr must be positive, got {}", self.lr));
        }
        if let Some(m) = self.max_grad_norm.filter(|m| !(*m > 0.0 && m.is_finite())) {
            return bad(format!("max_grad_norm must be positive, got {m}"));
        }
        self.ema_warmup.validate().map_err(DiffusionError::Core)?;
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        match (&self.flow, &self.schedule.flow) {
            (Some(_), None) | (None, Some(_)) => {
                return bad("a flow-matching run sets both `flow` and `schedule.flow`".into());
            }
            (Some(_), Some(_)) if self.min_snr_gamma.is_some() => {
                return bad(
                    "min_snr_gamma weights denoising-diffusion losses; a flow-matching run weights with flow.weighting"
                        .into(),
                );
            }
            _ => {}
        }
        if self.sample_scheduler.is_flow() != self.flow.is_some() {
            return bad(format!(
                "sample_scheduler {} does not sample this run's kind of model ({})",
                self.sample_scheduler,
                if self.flow.is_some() { "flow matching: flow-euler or flow-heun" } else { "denoising diffusion" }
            ));
        }
        if let Some(l) = &self.latent {
            let [c, _, _] = l.latent_shape;
            let net = self.backbone.sample_shape();
            if net != l.latent_shape || self.backbone.prediction_channels() != c {
                return Err(DiffusionError::Latent(format!(
                    "the {} is built for {net:?} ([channels, height, width]) but the latents are {:?}",
                    self.backbone.kind_name(),
                    l.latent_shape
                )));
            }
            if !(l.scale.is_finite() && l.scale > 0.0) {
                return Err(DiffusionError::Latent(format!(
                    "the latent scale must be positive and finite, got {}",
                    l.scale
                )));
            }
        }
        if self.backbone.dit().is_some_and(|d| d.learned_sigma()) {
            return Err(DiffusionError::Unsupported(
                "a learned-sigma DiT (out_channels = 2 * in_channels) samples, but training it needs the \
                 variational-bound loss, which genlab does not have: train with out_channels = in_channels"
                    .into(),
            ));
        }
        self.backbone.validate()?;
        self.schedule.validate()
    }
}

/// A run's network (U-Net or DiT) in its own VarStore.
#[derive(Debug)]
pub struct Network {
    pub vs: VarStore,
    pub model: Backbone,
}

impl Network {
    pub fn new(cfg: &BackboneConfig, device: Device) -> Result<Self> {
        let vs = VarStore::new(device);
        let model = Backbone::new(vs.root(), cfg)?;
        Ok(Network { vs, model })
    }
}

/// The model being trained, its optimizer, and an EMA copy used for sampling.
pub struct DiffusionTask {
    pub net: Network,
    /// The averaged weights are copied here before sampling.
    pub ema_net: Network,
    pub ema: Ema,
    pub opt: Adam,
    pub run: DiffusionRunConfig,
    pub schedule: NoiseSchedule,
    /// Dynamic loss scaling, for fp16.
    pub scaler: Option<GradScaler>,
    /// The frozen autoencoder of a latent run.
    pub autoencoder: Option<LatentAutoencoder>,
    device: Device,
    /// A flow-matching run's training sigmas (float32, [num_train_timesteps], from 1 down).
    flow_sigmas: Option<Tensor>,
}

impl DiffusionTask {
    /// A pixel-space run (a latent run needs its autoencoder: [`DiffusionTask::with_autoencoder`] or
    /// [`DiffusionTask::for_run`]).
    pub fn new(run: DiffusionRunConfig, device: Device) -> Result<Self> {
        Self::with_autoencoder(run, None, device)
    }

    /// A run in the directory `run_dir`: a latent run loads its copy of the autoencoder from there
    /// (written by [`install_autoencoder`]).
    pub fn for_run(run: DiffusionRunConfig, run_dir: &Path, device: Device) -> Result<Self> {
        let ae = run.latent.as_ref().map(|l| LatentAutoencoder::load(run_dir, l, device)).transpose()?;
        Self::with_autoencoder(run, ae, device)
    }

    /// A run with its autoencoder, which a latent run must have and a pixel-space run must not.
    pub fn with_autoencoder(
        run: DiffusionRunConfig,
        autoencoder: Option<LatentAutoencoder>,
        device: Device,
    ) -> Result<Self> {
        match (&run.latent, &autoencoder) {
            (Some(_), None) => {
                return Err(DiffusionError::Latent(
                    "a latent diffusion run needs its autoencoder: use DiffusionTask::for_run or with_autoencoder"
                        .into(),
                ))
            }
            (None, Some(_)) => {
                return Err(DiffusionError::Latent(
                    "an autoencoder was given for a pixel-space run configuration (its `latent` is not set)".into(),
                ))
            }
            (Some(l), Some(ae)) if *l != ae.latent => {
                return Err(DiffusionError::Latent(format!(
                    "the autoencoder's latent configuration {:?} is not the run's {l:?}",
                    ae.latent
                )))
            }
            _ => {}
        }
        run.validate()?;
        run.precision.validate(device)?;
        let net = Network::new(&run.backbone, device)?;
        let ema_net = Network::new(&run.backbone, device)?;
        let opt = Adam::new(
            &net.vs,
            AdamConfig { max_grad_norm: run.max_grad_norm, ..AdamConfig::adamw(run.lr, run.weight_decay) },
        )?;
        // After the optimizer: it moves the variables into its flat buffer.
        let mut ema = Ema::new(&net.vs, run.ema_decay);
        ema.warmup = run.ema_warmup;
        let schedule = NoiseSchedule::new(&run.schedule)?;
        let scaler = run.precision.needs_scaler().then(GradScaler::default);
        let flow_sigmas =
            run.schedule.flow.as_ref().map(|f| Tensor::from_slice(&f.train_sigmas(false)).to_device(device));
        Ok(DiffusionTask { net, ema_net, ema, opt, run, schedule, scaler, autoencoder, device, flow_sigmas })
    }

    /// The EMA weights, copied into [`DiffusionTask::ema_net`], which is returned.
    pub fn ema_model(&self) -> Result<&Backbone> {
        self.ema.copy_to(&self.ema_net.vs)?;
        Ok(&self.ema_net.model)
    }

    /// The training labels: the batch's labels with each replaced by the null class with
    /// probability `p_uncond` (class-conditional runs), or none.
    ///
    /// # Shapes
    /// - returns [batch] int64
    fn training_labels(&self, batch: &Batch) -> Result<Option<Tensor>> {
        let Some(null) = self.net.model.null_class() else { return Ok(None) };
        let labels = batch.labels.as_ref().ok_or_else(|| {
            DiffusionError::Labels(format!(
                "the model is class-conditional but the data `{}` has no labels",
                self.run.data
            ))
        })?;
        if self.run.p_uncond == 0.0 {
            return Ok(Some(labels.shallow_clone()));
        }
        let drop = Tensor::rand(labels.size(), (Kind::Float, labels.device())).lt(self.run.p_uncond);
        Ok(Some(labels.where_self(&drop.logical_not(), &labels.full_like(null))))
    }

    /// The learning rate of optimizer step `step` (from 0): linear warm-up to `lr`, then constant.
    pub fn lr_at(&self, step: u64) -> f64 {
        match self.run.lr_warmup_steps {
            0 => self.run.lr,
            w => self.run.lr * ((step + 1) as f64 / w as f64).min(1.0),
        }
    }

    fn step(&mut self, batch: &Batch) -> Result<StepOutput> {
        let latents = match &self.autoencoder {
            Some(ae) => Some(ae.encode(&batch.images, ae.latent.sample_posterior)?),
            None => None,
        };
        let x0 = latents.as_ref().unwrap_or(&batch.images);
        let (per_sample, weights) = match (self.run.flow, &self.flow_sigmas) {
            (Some(obj), Some(sigmas)) => self.flow_loss(x0, batch, obj, sigmas)?,
            _ => self.denoising_loss(x0, batch)?,
        };
        let loss = weighted_mean(&per_sample, weights.as_ref());
        let mse = per_sample.detach().mean(Kind::Float).double_value(&[]);
        self.opt.set_lr(self.lr_at(self.opt.steps_taken() as u64));
        self.opt.backward_step_with(&loss, self.scaler.as_mut());
        self.ema.update();
        Ok(StepOutput { loss: loss.double_value(&[]), metrics: vec![("mse".into(), mse)] })
    }

    /// Per-sample denoising losses at uniform training timesteps, and their min-SNR weights if set.
    fn denoising_loss(&self, x0: &Tensor, batch: &Batch) -> Result<(Tensor, Option<Tensor>)> {
        let n = x0.size()[0];
        let t = Tensor::randint(self.schedule.num_train_timesteps() as i64, [n], (Kind::Int64, self.device));
        let noise = x0.randn_like();
        let labels = self.training_labels(batch)?;
        let per_sample = self.run.precision.autocast(self.device, || {
            denoising_loss(&self.net.model, &self.schedule, x0, &noise, &t, labels.as_ref(), true)
        })?;
        let weights = self.run.min_snr_gamma.map(|g| self.schedule.min_snr_weights(&t, g)).transpose()?;
        Ok((per_sample, weights))
    }

    /// Per-sample flow-matching losses and their weights: sigmas drawn by the run's density from
    /// the training sigmas, the model asked for the velocity `noise - x0` at
    /// `(1 - sigma) x0 + sigma noise` and timestep `sigma N` (diffusers' `train_dreambooth_sd3.py`).
    fn flow_loss(
        &self,
        x0: &Tensor,
        batch: &Batch,
        obj: FlowObjective,
        train_sigmas: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let n = x0.size()[0];
        let n_train = train_sigmas.size()[0];
        let u = obj.density.sample(n, self.device);
        let idx = (u * n_train as f64).to_kind(Kind::Int64).clamp(0, n_train - 1);
        let sigmas = train_sigmas.index_select(0, &idx);
        let timesteps = &sigmas * n_train as f64;
        let s = sigmas.view([n, 1, 1, 1]).to_kind(x0.kind());
        let noise = x0.randn_like();
        let noisy = (1.0 - &s) * x0 + &s * &noise;
        let target = &noise - x0;
        let labels = self.training_labels(batch)?;
        let per_sample = self.run.precision.autocast(self.device, || -> Result<Tensor> {
            let out = self.net.model.forward_t(&noisy, &timesteps, labels.as_ref(), true)?;
            Ok(crate::loss::per_sample_mse(&out, &target))
        })?;
        Ok((per_sample, obj.weighting.weights(&sigmas)))
    }
}

impl std::fmt::Debug for DiffusionTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiffusionTask").field("run", &self.run).field("opt", &self.opt).finish()
    }
}

impl TrainTask for DiffusionTask {
    fn train_step(&mut self, batch: &Batch, _step: u64) -> genlab_core::Result<StepOutput> {
        Ok(self.step(batch)?)
    }

    /// EMA samples with the run's monitoring scheduler, cycling through the classes of a
    /// class-conditional model (no guidance); a latent run's are decoded to images.
    fn samples(&mut self, n: i64) -> genlab_core::Result<Tensor> {
        self.ema.copy_to(&self.ema_net.vs)?;
        let (model, run) = (&self.ema_net.model, &self.run);
        Ok(match &self.autoencoder {
            Some(ae) => {
                crate::latent::sample(model, ae, &run.schedule, run.sample_scheduler, run.sample_steps, n, None, 1.0)?
            }
            None => crate::sample::sample(model, &run.schedule, run.sample_scheduler, run.sample_steps, n, None, 1.0)?,
        })
    }

    fn checkpoint_groups(&self) -> BTreeMap<String, Vec<(String, Tensor)>> {
        let mut g = BTreeMap::new();
        g.insert("model".into(), self.net.vs.variables().into_iter().collect());
        g.insert("ema".into(), self.ema.state_tensors());
        g.insert("optim".into(), self.opt.state_tensors());
        g
    }

    fn restore(&mut self, ckpt: &CheckpointReader) -> genlab_core::Result<()> {
        ckpt.load_group_into("model", &self.net.vs)?;
        self.ema.load_state_tensors(&ckpt.read_group("ema")?, &ckpt.group_path("ema"))?;
        self.opt.load_state_tensors(&ckpt.read_group("optim")?)
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.run).unwrap_or_default()
    }

    fn extra_state(&self) -> serde_json::Value {
        serde_json::json!({ "grad_scaler": self.scaler, "ema_updates": self.ema.updates() })
    }

    fn restore_extra_state(&mut self, state: &serde_json::Value) -> genlab_core::Result<()> {
        if let Some(scaler) = GradScaler::from_state(state)? {
            self.scaler = Some(scaler);
        }
        // The EMA warm-up depends on how many updates the average has taken (one per step).
        let updates = state.get("ema_updates").and_then(|u| u.as_u64()).unwrap_or(self.opt.steps_taken() as u64);
        self.ema.set_updates(updates);
        Ok(())
    }
}

/// Load a trained diffusion model's EMA weights from a run directory or checkpoint folder.
pub fn load(path: &Path, device: Device) -> Result<(Network, DiffusionRunConfig)> {
    load_weights(path, Weights::Ema, device)
}

/// Load a trained diffusion model's EMA or raw weights from a run directory or checkpoint folder.
pub fn load_weights(path: &Path, weights: Weights, device: Device) -> Result<(Network, DiffusionRunConfig)> {
    let (ck, run) = genlab_core::run::open_checkpoint::<DiffusionRunConfig>(path)?;
    let net = Network::new(&run.backbone, device)?;
    ck.load_group_into(weights.group(), &net.vs)?;
    Ok((net, run))
}

/// The configuration of a new latent run: the U-Net preset `model` built for the latents of the
/// autoencoder at `autoencoder` on `dataset` (which must have the autoencoder's image shape), the
/// scale given or estimated from `dataset` (see [`LatentOptions`]), and `schedule` without clipping.
/// Copy the autoencoder into the run with [`install_autoencoder`] before training.
pub fn latent_run_config(
    model: &str,
    autoencoder: &Path,
    dataset: &Arc<dyn Dataset>,
    num_classes: Option<usize>,
    schedule: ScheduleConfig,
    data: &str,
    opts: &crate::latent::LatentOptions,
    device: Device,
) -> Result<DiffusionRunConfig> {
    let (_vs, ae, ae_run) = crate::latent::open_autoencoder(autoencoder, device)?;
    let [c, h, w] = dataset.shape();
    let data_shape = [c as i64, h as i64, w as i64];
    let trained_on = crate::latent::autoencoder_image_shape(&ae.cfg);
    if trained_on != data_shape {
        return Err(DiffusionError::AutoencoderShape {
            path: autoencoder.to_path_buf(),
            autoencoder: trained_on,
            data: data.to_string(),
            data_shape,
        });
    }
    let latent_shape = crate::latent::latent_shape(&ae.cfg, data_shape)?;
    let scale = match opts.scale {
        Some(s) => crate::latent::check_scale(s)?,
        None => {
            let batch_size = opts.scale_batch_size.clamp(1, dataset.len().max(1));
            let mut loader = Loader::new(Arc::clone(dataset), LoaderConfig::new(batch_size, opts.seed, device))?;
            crate::latent::estimate_scale(&ae, &mut loader, opts.scale_batches, opts.sample_posterior)?
        }
    };
    let latent = LatentConfig {
        autoencoder_source: crate::latent::absolute_path(autoencoder),
        autoencoder_model: ae_run.model,
        image_shape: data_shape,
        latent_shape,
        scale,
        scale_estimated: opts.scale.is_none(),
        sample_posterior: opts.sample_posterior,
    };
    DiffusionRunConfig::from_preset_latent(model, latent, num_classes, schedule, data)
}

/// Copy the autoencoder a new latent run was configured with (its `autoencoder_source`) into
/// `run_dir/autoencoder/`: its `config.json` and the weights of its newest checkpoint. Refuses a
/// `run_dir` that already holds a checkpoint (that run has its autoencoder; resume it instead).
/// Returns the copy's folder.
pub fn install_autoencoder(run: &DiffusionRunConfig, run_dir: &Path) -> Result<PathBuf> {
    let latent = run
        .latent
        .as_ref()
        .ok_or_else(|| DiffusionError::Latent("install_autoencoder: this is a pixel-space run configuration".into()))?;
    let run_dirs = genlab_core::train::RunDir::new(run_dir);
    if let Some(existing) = checkpoint::latest_checkpoint(&run_dirs.checkpoints()) {
        return Err(DiffusionError::Latent(format!(
            "{} already holds a checkpoint ({}) and its own autoencoder; pass --resume to continue it or choose \
             another --out",
            run_dir.display(),
            existing.display()
        )));
    }
    let src = &latent.autoencoder_source;
    let err = |message: String| DiffusionError::Autoencoder { path: src.clone(), message };
    let ck = genlab_core::train::open_checkpoint(src).map_err(|e| err(e.to_string()))?;
    let weights = ck.read_group("model").map_err(|e| err(e.to_string()))?;
    let dst = run_dir.join(crate::latent::AUTOENCODER_DIR);
    if dst.exists() {
        // Left by a start that stopped before its first checkpoint.
        std::fs::remove_dir_all(&dst).map_err(|e| genlab_core::CoreError::Io { path: dst.clone(), error: e })?;
    }
    let copy = genlab_core::train::RunDir::new(&dst);
    std::fs::create_dir_all(&dst).map_err(|e| genlab_core::CoreError::Io { path: dst.clone(), error: e })?;
    let config_text = serde_json::to_string_pretty(&ck.config).unwrap_or_default();
    checkpoint::write_atomic(&copy.config_file(), config_text.as_bytes())?;
    let data = CheckpointData {
        groups: [("model".to_string(), weights)].into_iter().collect(),
        config: ck.config.clone(),
        state: serde_json::json!({ "step": ck.step(), "copied_from": ck.dir }),
    };
    checkpoint::save_checkpoint(&copy.checkpoints(), ck.step(), &data, 1)?;
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_written_before_the_warm_up_fields_keep_their_recipe() {
        let new = DiffusionRunConfig::from_preset("unet-tiny", [1, 8, 8], None, ScheduleConfig::v_cosine(), "digits")
            .unwrap();
        assert_eq!((new.ema_warmup, new.lr_warmup_steps, new.max_grad_norm), (EmaWarmup::POWER_2_3, 100, Some(1.0)));
        let mut old = serde_json::to_value(&new).unwrap();
        for key in ["ema_warmup", "lr_warmup_steps", "max_grad_norm"] {
            old.as_object_mut().unwrap().remove(key);
        }
        let old: DiffusionRunConfig = serde_json::from_value(old).unwrap();
        assert_eq!((old.ema_warmup, old.lr_warmup_steps, old.max_grad_norm), (EmaWarmup::Ratio, 0, None));
        let task = DiffusionTask::new(new.clone(), Device::Cpu).unwrap();
        for (step, lr) in [(0, 2e-5), (49, 1e-3), (99, 2e-3), (5000, 2e-3)] {
            assert!((task.lr_at(step) - lr).abs() < 1e-12, "step {step}: {}", task.lr_at(step));
        }
        let bad = DiffusionRunConfig { max_grad_norm: Some(0.0), ..new };
        assert!(bad.validate().unwrap_err().to_string().contains("max_grad_norm"));
        assert_eq!("raw".parse::<Weights>().unwrap().group(), "model");
        assert!("avg".parse::<Weights>().is_err());
    }

    /// `config.json` of a class-conditional `unet-tiny` run as genlab wrote it before DiT runs existed
    /// (and before the warm-up and flow fields).
    const OLD_RUN: &str = r#"{"family":"diffusion","model":"unet-tiny","unet":{"sample_size":[8,8],
        "in_channels":1,"out_channels":1,"block_out_channels":[16,32],"layers_per_block":1,"attention":[false,true],
        "attention_head_dim":16,"norm_num_groups":8,"norm_eps":0.00001,"dropout":0.1,"num_class_embeds":4,
        "flip_sin_to_cos":true,"freq_shift":0.0},"schedule":{"num_train_timesteps":1000,"beta_start":0.0001,
        "beta_end":0.02,"beta_schedule":"linear","prediction_type":"epsilon","rescale_betas_zero_snr":false,
        "timestep_spacing":"leading","steps_offset":0,"clip_sample":true,"clip_sample_range":1.0,
        "use_clipped_model_output":true,"set_alpha_to_one":true,"eta":0.0},"p_uncond":0.1,"min_snr_gamma":null,
        "ema_decay":0.999,"lr":0.0002,"weight_decay":0.0,"batch_size":64,"precision":"fp32","data":"digits",
        "sample_scheduler":"ddim","sample_steps":50}"#;

    #[test]
    fn unet_runs_keep_their_layout_and_dit_runs_write_theirs() {
        let old: DiffusionRunConfig = serde_json::from_str(OLD_RUN).unwrap();
        let unet = old.backbone.unet().expect("an old run is a U-Net run");
        assert_eq!(
            (unet.dropout, unet.num_class_embeds, unet.block_out_channels.clone()),
            (0.1, Some(4), vec![16, 32])
        );
        let written = serde_json::to_value(&old).unwrap();
        assert_eq!(written["unet"]["num_class_embeds"], 4);
        assert!(written.get("dit").is_none() && written.get("backbone").is_none());
        DiffusionTask::new(old, Device::Cpu).unwrap();

        let dit = DiffusionRunConfig::from_preset(
            "dit-s",
            [1, 28, 28],
            Some(10),
            ScheduleConfig::v_cosine(),
            "fashion-mnist",
        )
        .unwrap();
        let written = serde_json::to_value(&dit).unwrap();
        assert_eq!(
            (written["dit"]["num_embeds_ada_norm"].as_i64(), written["dit"]["patch_size"].as_i64()),
            (Some(10), Some(4))
        );
        assert!(written.get("unet").is_none());
        let back: DiffusionRunConfig = serde_json::from_value(written.clone()).unwrap();
        assert_eq!(back.backbone, dit.backbone);
        assert_eq!(back.backbone.num_class_embeds(), Some(11));

        let mut neither = written;
        neither.as_object_mut().unwrap().remove("dit");
        assert!(serde_json::from_value::<DiffusionRunConfig>(neither).is_err());
        let sigma = DiffusionRunConfig {
            backbone: BackboneConfig::DiT(crate::DiTConfig { out_channels: 2, ..dit.backbone.dit().unwrap().clone() }),
            ..dit
        };
        assert!(sigma.validate().unwrap_err().to_string().contains("learned-sigma"));
    }
}

/// The settings of `genlab diffusion train` beyond the preset and the [`Overrides`]
/// (`genlab_core::run::Overrides`: learning rate, batch size, precision). With the `clap` feature,
/// its flags.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct DiffusionTrainOptions {
    /// diffusion (denoising: noise, x0 or velocity prediction on a beta schedule) or flow (flow
    /// matching: the velocity noise - x0 along straight paths, sampled with flow-euler or flow-heun).
    #[cfg_attr(feature = "clap", arg(long, default_value = "diffusion"))]
    pub objective: Objective,
    /// Flow matching: the shift of the noise levels, shift s / (1 + (shift - 1) s) (SD3: 3 at 1024 px).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 1.0))]
    pub flow_shift: f64,
    /// Flow matching: how training draws noise levels: logit-normal[:MEAN,STD] (default 0,1), mode[:SCALE]
    /// (default 1.29) or uniform.
    #[cfg_attr(feature = "clap", arg(long, default_value = "logit-normal"))]
    pub timestep_density: TimestepDensity,
    /// Flow matching: the loss weight per sample: none, sigma-sqrt or cosmap.
    #[cfg_attr(feature = "clap", arg(long, default_value = "none"))]
    pub flow_weighting: FlowLossWeighting,
    /// What the network predicts: eps, x0 or v [default: v].
    #[cfg_attr(feature = "clap", arg(long))]
    pub prediction: Option<crate::PredictionType>,
    /// Beta schedule: linear (1e-4..0.02, DDPM), cosine, scaled_linear or sigmoid [default: cosine;
    /// scaled_linear 0.00085..0.012 (Stable Diffusion 2) for a latent run].
    #[cfg_attr(feature = "clap", arg(long = "schedule"))]
    pub beta_schedule: Option<crate::BetaSchedule>,
    /// Training timesteps.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 1000))]
    pub timesteps: usize,
    /// Class-conditional, for classifier-free guidance (the dataset needs labels).
    #[cfg_attr(feature = "clap", arg(long))]
    pub cond: bool,
    /// Label dropout probability of a --cond run.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0.1))]
    pub p_uncond: f64,
    /// Min-SNR-gamma loss weighting (5 in the paper); off by default.
    #[cfg_attr(feature = "clap", arg(long))]
    pub min_snr_gamma: Option<f64>,
    /// The EMA's decay once warmed up.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0.999))]
    pub ema_decay: f64,
    /// How the EMA's decay grows: `power` (diffusers' EMAModel warm-up, 1 - (1 + step)^(-2/3)),
    /// `power:P` (another power), `ratio` ((1 + step) / (10 + step)) or `off`.
    #[cfg_attr(feature = "clap", arg(long, default_value = "power"))]
    pub ema_warmup: EmaWarmup,
    /// Linear learning-rate warm-up over this many steps (0: none).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 100))]
    pub lr_warmup: u64,
    /// Clip the gradient norm to this (0: no clipping).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 1.0))]
    pub max_grad_norm: f64,
    /// AdamW weight decay.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0.0))]
    pub weight_decay: f64,
    /// Latent diffusion: train on the latents of this KL autoencoder run (`genlab vae train --model
    /// kl-f2|kl-f4|sd15`), which is copied into OUT/autoencoder. On --resume it may be given again
    /// only as the same path.
    #[cfg_attr(feature = "clap", arg(long, value_name = "RUN_DIR"))]
    pub latent_autoencoder: Option<PathBuf>,
    /// Latents are multiplied by this (default: 1 / std of encoded training batches, estimated once
    /// when the run starts).
    #[cfg_attr(feature = "clap", arg(long, value_name = "SCALE", requires = "latent_autoencoder"))]
    pub latent_scale: Option<f64>,
}

impl Default for DiffusionTrainOptions {
    fn default() -> Self {
        DiffusionTrainOptions {
            objective: Objective::Diffusion,
            flow_shift: 1.0,
            timestep_density: FlowObjective::default().density,
            flow_weighting: FlowLossWeighting::None,
            prediction: None,
            beta_schedule: None,
            timesteps: 1000,
            cond: false,
            p_uncond: 0.1,
            min_snr_gamma: None,
            ema_decay: 0.999,
            ema_warmup: EmaWarmup::POWER_2_3,
            lr_warmup: 100,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            latent_autoencoder: None,
            latent_scale: None,
        }
    }
}

impl DiffusionTrainOptions {
    /// The configuration of a new run of U-Net preset `preset` on `ds` (named `data`), with
    /// `overrides`; a latent run encodes batches of `ds` on `device` to estimate its scale.
    pub fn run_config(
        &self,
        preset: &str,
        ds: &Arc<dyn Dataset>,
        data: &str,
        overrides: &genlab_core::run::Overrides,
        seed: u64,
        device: Device,
    ) -> Result<DiffusionRunConfig> {
        let [c, h, w] = ds.shape();
        let num_classes = match (self.cond, ds.num_classes()) {
            (false, _) => None,
            (true, Some(k)) => Some(k),
            (true, None) => {
                return Err(DiffusionError::Config(format!("--cond needs a labelled dataset; `{data}` has no labels")))
            }
        };
        if self.max_grad_norm < 0.0 || !self.max_grad_norm.is_finite() {
            return Err(DiffusionError::Config(format!(
                "--max-grad-norm must be positive (or 0 for no clipping), got {}",
                self.max_grad_norm
            )));
        }
        self.ema_warmup.validate()?;
        // Latent runs start from Stable Diffusion 2's schedule: without x0 clipping, an epsilon
        // model's deterministic samplers (DDIM, DPM-Solver) amplify its errors at the noisiest steps.
        let base = if self.latent_autoencoder.is_some() {
            ScheduleConfig::stable_diffusion_v2()
        } else {
            ScheduleConfig::v_cosine()
        };
        let flow = self.objective == Objective::Flow;
        if flow && (self.prediction.is_some() || self.beta_schedule.is_some() || self.min_snr_gamma.is_some()) {
            return Err(DiffusionError::Config(
                "--prediction, --schedule and --min-snr-gamma apply to --objective diffusion; a flow-matching run \
                 predicts the velocity on its own schedule (--flow-shift, --timestep-density, --flow-weighting)"
                    .into(),
            ));
        }
        let schedule = ScheduleConfig {
            num_train_timesteps: self.timesteps,
            beta_schedule: self.beta_schedule.unwrap_or(base.beta_schedule),
            prediction_type: self.prediction.unwrap_or(base.prediction_type),
            clip_sample: base.clip_sample && !flow,
            flow: flow.then(|| crate::FlowMatchConfig {
                num_train_timesteps: self.timesteps,
                shift: self.flow_shift,
                ..Default::default()
            }),
            ..base
        };
        let run = match &self.latent_autoencoder {
            None => {
                DiffusionRunConfig::from_preset(preset, [c as i64, h as i64, w as i64], num_classes, schedule, data)?
            }
            Some(ae) => {
                let opts = crate::latent::LatentOptions { scale: self.latent_scale, seed, ..Default::default() };
                latent_run_config(preset, ae, ds, num_classes, schedule, data, &opts, device)?
            }
        };
        let mut run = genlab_core::run::apply_overrides(run, overrides)?;
        if self.cond {
            run.p_uncond = self.p_uncond;
        }
        run.min_snr_gamma = self.min_snr_gamma;
        run.ema_decay = self.ema_decay;
        run.ema_warmup = self.ema_warmup;
        run.lr_warmup_steps = self.lr_warmup;
        run.max_grad_norm = (self.max_grad_norm > 0.0).then_some(self.max_grad_norm);
        run.weight_decay = self.weight_decay;
        if flow {
            run.flow = Some(FlowObjective { density: self.timestep_density, weighting: self.flow_weighting });
            // SD3's pipeline default.
            (run.sample_scheduler, run.sample_steps) = (SchedulerKind::FlowEuler, 28);
        }
        Ok(run)
    }
}

/// Train a diffusion run of U-Net preset `preset` on `data` (pixels, or a KL autoencoder's
/// latents), with `overrides` and `extra`. A new latent run copies its autoencoder into the run
/// directory; a resumed run keeps its configuration, and its autoencoder and scale may be given
/// again only as they were.
pub fn fit(
    preset: &str,
    data: &genlab_data::DataSpec,
    overrides: &genlab_core::run::Overrides,
    extra: &DiffusionTrainOptions,
    opts: &genlab_core::run::FitOptions,
) -> Result<genlab_core::train::Outcome> {
    let (out, seed, device) = (&opts.harness.out, opts.harness.seed, opts.device);
    let leader = genlab_core::dist::is_leader();
    Ok(genlab_data::fit(
        opts,
        data,
        |ds| Ok(extra.run_config(preset, ds, &data.spec, overrides, seed, device)?),
        |run, start, device| {
            match (&run.latent, start) {
                (Some(l), genlab_core::run::Start::Fresh) if leader => {
                    let dir = install_autoencoder(&run, out)?;
                    let how = if l.scale_estimated { "1 / std of encoded training batches" } else { "given" };
                    eprintln!(
                        "latent diffusion on {:?} latents of {} (copied to {}), scale {:.6} ({how})",
                        l.latent_shape,
                        l.autoencoder_source.display(),
                        dir.display(),
                        l.scale
                    );
                }
                (_, genlab_core::run::Start::Resume) => {
                    run.check_resume(extra.latent_autoencoder.as_deref(), extra.latent_scale)?;
                    if extra.latent_autoencoder.is_some() && leader {
                        let copy = out.join(crate::latent::AUTOENCODER_DIR);
                        eprintln!("resuming with the run's own copy of the autoencoder ({})", copy.display());
                    }
                }
                _ => {}
            }
            if let (Some(g), Some(_)) = (genlab_core::dist::group(), &run.latent) {
                // The other ranks load rank 0's copy of the autoencoder.
                g.barrier()?;
            }
            Ok(DiffusionTask::for_run(run, out, device)?)
        },
    )?)
}

#[cfg(all(test, feature = "clap"))]
mod flag_tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        options: super::DiffusionTrainOptions,
    }

    #[test]
    fn the_flags_defaults_are_the_library_defaults() {
        assert_eq!(Flags::parse_from(["train"]).options, super::DiffusionTrainOptions::default());
        let f = Flags::parse_from(["train", "--schedule", "linear", "--ema-warmup", "ratio", "--cond"]).options;
        assert_eq!(
            (f.beta_schedule, f.ema_warmup, f.cond),
            (Some(crate::BetaSchedule::Linear), super::EmaWarmup::Ratio, true)
        );
        let f =
            Flags::parse_from(["train", "--objective", "flow", "--timestep-density", "mode:1.1", "--flow-shift", "3"])
                .options;
        let density = super::TimestepDensity::Mode { scale: 1.1 };
        assert_eq!((f.objective, f.timestep_density, f.flow_shift), (super::Objective::Flow, density, 3.0));
        assert!(Flags::try_parse_from(["train", "--flow-weighting", "sqrt"]).is_err());
    }
}
