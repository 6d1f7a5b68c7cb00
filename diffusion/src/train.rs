//! The diffusion training step, plugged into genlab-core's harness.
//!
//! Ho et al., "Denoising Diffusion Probabilistic Models", arXiv 2006.11239, Algorithm 1 (uniform
//! timesteps, Gaussian noise, regress the target) with an EMA of the weights for sampling (section 4,
//! decay 0.9999 there), classifier-free guidance training by label dropout (Ho and Salimans,
//! arXiv 2207.12598, Algorithm 1) and optional min-SNR-gamma weighting (Hang et al., arXiv 2303.09556).
//! Follows diffusers' `examples/unconditional_image_generation/train_unconditional.py` (AdamW,
//! `EMAModel` with warmup, one optimizer step per batch).
use std::collections::BTreeMap;
use std::path::Path;

use genlab_core::checkpoint::CheckpointReader;
use genlab_core::ema::Ema;
use genlab_core::optim::{Adam, AdamConfig};
use genlab_core::precision::GradScaler;
use genlab_core::train::{Batch, StepOutput, TrainTask};
use genlab_core::{CoreError, Precision};
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::error::{DiffusionError, Result};
use crate::loss::{denoising_loss, weighted_mean};
use crate::schedule::{NoiseSchedule, ScheduleConfig};
use crate::scheduler::SchedulerKind;
use crate::unet::{UNet2DConfig, UNet2DModel};

pub const FAMILY: &str = "diffusion";

/// Everything `config.json` records about a diffusion run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiffusionRunConfig {
    pub family: String,
    /// The preset name given to `--model`.
    pub model: String,
    pub unet: UNet2DConfig,
    pub schedule: ScheduleConfig,
    /// Probability of replacing a label by the null class during training (class-conditional runs).
    pub p_uncond: f64,
    /// Min-SNR-gamma loss weighting (the paper's gamma is 5); `None` is the plain MSE.
    pub min_snr_gamma: Option<f64>,
    pub ema_decay: f64,
    pub lr: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub precision: Precision,
    pub data: String,
    /// Scheduler and steps of the monitoring sample grids.
    pub sample_scheduler: SchedulerKind,
    pub sample_steps: usize,
}

impl DiffusionRunConfig {
    /// A run of U-Net preset `model` on data of `image_shape`. `num_classes` makes the model
    /// class-conditional (one extra class embedding is the null class).
    pub fn from_preset(
        model: &str,
        image_shape: [i64; 3],
        num_classes: Option<usize>,
        schedule: ScheduleConfig,
        data: &str,
    ) -> Result<Self> {
        let mut unet = UNet2DConfig::preset(model, image_shape)?;
        unet.num_class_embeds = num_classes.map(|k| k as i64 + 1);
        unet.validate()?;
        schedule.validate()?;
        Ok(DiffusionRunConfig {
            family: FAMILY.into(),
            model: model.into(),
            unet,
            schedule,
            p_uncond: if num_classes.is_some() { 0.1 } else { 0.0 },
            min_snr_gamma: None,
            ema_decay: 0.999,
            lr: 2e-4,
            weight_decay: 0.0,
            batch_size: 64,
            precision: Precision::Fp32,
            data: data.into(),
            sample_scheduler: SchedulerKind::Ddim,
            sample_steps: 50,
        })
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
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        self.unet.validate()?;
        self.schedule.validate()
    }
}

/// A U-Net in its own VarStore.
#[derive(Debug)]
pub struct Network {
    pub vs: VarStore,
    pub unet: UNet2DModel,
}

impl Network {
    pub fn new(cfg: &UNet2DConfig, device: Device) -> Result<Self> {
        let vs = VarStore::new(device);
        let unet = UNet2DModel::new(vs.root(), cfg.clone())?;
        Ok(Network { vs, unet })
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
    device: Device,
}

impl DiffusionTask {
    pub fn new(run: DiffusionRunConfig, device: Device) -> Result<Self> {
        run.validate()?;
        run.precision.validate(device)?;
        let net = Network::new(&run.unet, device)?;
        let ema_net = Network::new(&run.unet, device)?;
        let opt = Adam::new(&net.vs, AdamConfig::adamw(run.lr, run.weight_decay))?;
        // After the optimizer: it moves the variables into its flat buffer.
        let mut ema = Ema::new(&net.vs, run.ema_decay);
        ema.warmup = true;
        let schedule = NoiseSchedule::new(&run.schedule)?;
        let scaler = run.precision.needs_scaler().then(GradScaler::default);
        Ok(DiffusionTask { net, ema_net, ema, opt, run, schedule, scaler, device })
    }

    /// The EMA weights, copied into [`DiffusionTask::ema_net`], which is returned.
    pub fn ema_model(&self) -> Result<&UNet2DModel> {
        self.ema.copy_to(&self.ema_net.vs)?;
        Ok(&self.ema_net.unet)
    }

    /// The training labels: the batch's labels with each replaced by the null class with
    /// probability `p_uncond` (class-conditional runs), or none.
    ///
    /// # Shapes
    /// - returns [batch] int64
    fn training_labels(&self, batch: &Batch) -> Result<Option<Tensor>> {
        let Some(null) = self.net.unet.null_class() else { return Ok(None) };
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

    fn step(&mut self, batch: &Batch) -> Result<StepOutput> {
        let x0 = &batch.images;
        let n = x0.size()[0];
        let t = Tensor::randint(self.schedule.num_train_timesteps() as i64, [n], (Kind::Int64, self.device));
        let noise = x0.randn_like();
        let labels = self.training_labels(batch)?;
        let per_sample = self.run.precision.autocast(self.device, || {
            denoising_loss(&self.net.unet, &self.schedule, x0, &noise, &t, labels.as_ref(), true)
        })?;
        let weights = self.run.min_snr_gamma.map(|g| self.schedule.min_snr_weights(&t, g)).transpose()?;
        let loss = weighted_mean(&per_sample, weights.as_ref());
        let mse = per_sample.detach().mean(Kind::Float).double_value(&[]);
        self.opt.backward_step_with(&loss, self.scaler.as_mut());
        self.ema.update();
        Ok(StepOutput { loss: loss.double_value(&[]), metrics: vec![("mse".into(), mse)] })
    }
}

impl std::fmt::Debug for DiffusionTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiffusionTask").field("run", &self.run).field("opt", &self.opt).finish()
    }
}

fn to_core(e: DiffusionError) -> CoreError {
    match e {
        DiffusionError::Core(c) => c,
        e => CoreError::Other(e.to_string()),
    }
}

impl TrainTask for DiffusionTask {
    fn train_step(&mut self, batch: &Batch, _step: u64) -> genlab_core::Result<StepOutput> {
        self.step(batch).map_err(to_core)
    }

    /// EMA samples with the run's monitoring scheduler, cycling through the classes of a
    /// class-conditional model (no guidance).
    fn samples(&mut self, n: i64) -> genlab_core::Result<Tensor> {
        let model = self.ema_model().map_err(to_core)?;
        crate::sample::sample(model, &self.run.schedule, self.run.sample_scheduler, self.run.sample_steps, n, None, 1.0)
            .map_err(to_core)
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
    let ck = genlab_core::train::open_checkpoint(path)?;
    let family = ck.config.get("family").and_then(|f| f.as_str()).unwrap_or("unknown").to_string();
    if family != FAMILY {
        return Err(DiffusionError::WrongFamily { path: path.to_path_buf(), found: family });
    }
    let run: DiffusionRunConfig = serde_json::from_value(ck.config.clone()).map_err(|e| {
        DiffusionError::Config(format!("{}: config.json is not a diffusion configuration: {e}", ck.dir.display()))
    })?;
    let net = Network::new(&run.unet, device)?;
    ck.load_group_into("ema", &net.vs)?;
    Ok((net, run))
}
