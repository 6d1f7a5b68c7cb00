//! The GAN training step, plugged into genlab-core's harness, with collapse detection.
//!
//! One harness step is one generator update preceded by `n_critic` discriminator
//! updates. The loader's batch of `batch_size` real images is cut into `n_critic` equal
//! successive slices, one per discriminator update, so every critic update sees fresh
//! real data as in Algorithm 1 of WGAN (arXiv 1701.07875) and WGAN-GP (arXiv 1704.00028);
//! the presets therefore set `batch_size = 64 * n_critic` for the critic models. Each
//! update draws fresh latents of the slice's size; a conditional model gives its fakes the
//! slice's real labels. The generator update uses the first slice's labels.
//!
//! Two optimizers with their own learning rates (the two time-scale update rule of Heusel
//! et al., arXiv 1706.08500), and an exponential moving average of the generator's
//! weights (Yazıcı et al., arXiv 1806.04498) that is what sampling uses.
//!
//! Presets (`--model`):
//! - `dcgan`: non-saturating loss, BatchNorm discriminator, Adam(2e-4, 0.5, 0.999), batch 128 (DCGAN paper).
//! - `wgan`: Wasserstein loss, critic without normalisation clipped to 0.01, n_critic 5, lr 5e-5.
//!   The paper uses RMSProp; here Adam with beta1 = 0, which is RMSProp with bias correction.
//! - `wgan-gp`: Wasserstein loss + gradient penalty (lambda 10), LayerNorm critic, n_critic 5,
//!   Adam(1e-4, 0, 0.9) (WGAN-GP, Algorithm 1).
//! - `cgan`: class-conditional; hinge loss, spectral-normalised projection discriminator,
//!   n_critic 1, Adam(0, 0.9) with lr_g 1e-4 and lr_d 4e-4 (two time scales, as SAGAN, arXiv 1805.08318).
use crate::diffaug::DiffAugment;
use crate::error::{GanError, Result};
use crate::loss;
use crate::metrics::diversity_ratio;
use crate::model::{DNorm, Discriminator, GanConfig, Generator};
use genlab_core::checkpoint::CheckpointReader;
use genlab_core::ema::Ema;
use genlab_core::optim::{Adam, AdamConfig};
use genlab_core::train::{Batch, StepOutput, TrainTask};
use genlab_core::Precision;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::{nn::VarStore, Device, Kind, Tensor};

pub const FAMILY: &str = "gan";

/// The presets `--model` accepts.
pub const PRESETS: [&str; 4] = ["dcgan", "wgan", "wgan-gp", "cgan"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GanLoss {
    NonSaturating,
    Hinge,
    Wasserstein,
}

/// When to stop a run whose generator or discriminator has failed (see [`CollapseDetector`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CollapseConfig {
    /// Consecutive failing steps before the run stops (0: never check).
    pub patience: u64,
    /// Mode collapse: the fakes' mean pairwise distance over the reals' is below this.
    pub min_diversity: f64,
    /// Discriminator won: it classifies every real and fake of the step correctly and the
    /// generator loss is above this (non-saturating and hinge losses only).
    pub max_g_loss: f64,
}

impl Default for CollapseConfig {
    fn default() -> Self {
        CollapseConfig { patience: 200, min_diversity: 0.05, max_g_loss: 15.0 }
    }
}

/// The objective and optimisation settings of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveConfig {
    pub loss: GanLoss,
    /// Discriminator updates per generator update.
    pub n_critic: usize,
    /// Gradient-penalty weight lambda (WGAN-GP), if any.
    pub gradient_penalty: Option<f64>,
    /// Clip every critic weight to `[-c, c]` after each update (WGAN), if any.
    pub weight_clip: Option<f64>,
    pub beta1: f64,
    pub beta2: f64,
    /// Decay of the generator's weight average used for sampling.
    pub ema_decay: f64,
    pub collapse: CollapseConfig,
}

/// Everything `config.json` records about a GAN run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GanRunConfig {
    pub family: String,
    /// The preset name given to `--model`.
    pub model: String,
    pub gan: GanConfig,
    pub objective: ObjectiveConfig,
    pub lr_g: f64,
    pub lr_d: f64,
    /// Real images per harness step, split over the `n_critic` discriminator updates.
    pub batch_size: usize,
    pub precision: Precision,
    pub data: String,
    /// DiffAugment policy applied to every image the discriminator sees, real and generated, in both
    /// updates (none in runs written before it existed).
    #[serde(default, skip_serializing_if = "DiffAugment::is_none")]
    pub diffaug: DiffAugment,
}

genlab_core::run_kind!(GanRunConfig, FAMILY, hint: |found| {
    match found.kind.as_deref()? {
        "super-resolution" => Some(
            "a super-resolution run upscales images rather than drawing new ones; use `genlab gan upscale` or \
             `genlab gan sr-eval` with it",
        ),
        "stylegan2" => Some("a StyleGAN2 run; genlab_gan::stylegan2::train::load reads it"),
        "cyclegan" => Some(
            "a CycleGAN run translates images between two domains rather than drawing new ones; use \
             `genlab gan translate` with it",
        ),
        _ => None,
    }
    .map(str::to_string)
});

impl GanRunConfig {
    /// A run of preset `model` (see the module docs) on data of `image_shape` (and
    /// `num_classes`, which the conditional preset needs).
    pub fn from_preset(model: &str, image_shape: [i64; 3], num_classes: Option<usize>, data: &str) -> Result<Self> {
        let base = GanConfig::for_images(image_shape);
        let objective = ObjectiveConfig {
            loss: GanLoss::NonSaturating,
            n_critic: 1,
            gradient_penalty: None,
            weight_clip: None,
            beta1: 0.5,
            beta2: 0.999,
            ema_decay: 0.999,
            collapse: CollapseConfig::default(),
        };
        let (gan, objective, lr_g, lr_d, batch_size) = match model {
            "dcgan" => (base, objective, 2e-4, 2e-4, 128),
            "wgan" => (
                GanConfig { d_norm: DNorm::None, ..base },
                ObjectiveConfig {
                    loss: GanLoss::Wasserstein,
                    n_critic: 5,
                    weight_clip: Some(loss::WGAN_CLIP),
                    beta1: 0.0,
                    ..objective
                },
                5e-5,
                5e-5,
                64 * 5,
            ),
            "wgan-gp" => (
                GanConfig { d_norm: DNorm::Layer, ..base },
                ObjectiveConfig {
                    loss: GanLoss::Wasserstein,
                    n_critic: 5,
                    gradient_penalty: Some(loss::GP_LAMBDA),
                    beta1: 0.0,
                    beta2: 0.9,
                    ..objective
                },
                1e-4,
                1e-4,
                64 * 5,
            ),
            "cgan" => {
                let k = num_classes.ok_or_else(|| {
                    GanError::Config(format!("preset `cgan` is class-conditional but dataset `{data}` has no labels"))
                })?;
                (
                    GanConfig { d_norm: DNorm::None, spectral_norm: true, num_classes: Some(k as i64), ..base },
                    ObjectiveConfig { loss: GanLoss::Hinge, beta1: 0.0, beta2: 0.9, ..objective },
                    1e-4,
                    4e-4,
                    64,
                )
            }
            _ => {
                return Err(GanError::Config(format!(
                    "unknown GAN preset `{model}`: expected one of {}",
                    PRESETS.join(", ")
                )))
            }
        };
        let run = GanRunConfig {
            family: FAMILY.into(),
            model: model.into(),
            gan,
            objective,
            lr_g,
            lr_d,
            batch_size,
            precision: Precision::Fp32,
            data: data.into(),
            diffaug: DiffAugment::default(),
        };
        run.validate()?;
        Ok(run)
    }

    pub fn validate(&self) -> Result<()> {
        self.gan.validate()?;
        let o = &self.objective;
        if o.n_critic == 0 || self.batch_size < 2 * o.n_critic {
            return Err(GanError::Config(format!(
                "batch_size {} must give each of the n_critic = {} discriminator updates at least 2 images",
                self.batch_size, o.n_critic
            )));
        }
        if o.gradient_penalty.is_some() && self.gan.d_norm == DNorm::Batch {
            return Err(GanError::Config(
                "the gradient penalty needs a per-sample critic: use d_norm `layer` or `none`, not BatchNorm".into(),
            ));
        }
        if o.weight_clip.is_some_and(|c| c <= 0.0) || o.gradient_penalty.is_some_and(|l| l < 0.0) {
            return Err(GanError::Config(format!(
                "weight_clip must be > 0 and gradient_penalty >= 0; got {:?} and {:?}",
                o.weight_clip, o.gradient_penalty
            )));
        }
        if !(0.0..1.0).contains(&o.ema_decay) || self.lr_g <= 0.0 || self.lr_d <= 0.0 {
            return Err(GanError::Config(format!(
                "need 0 <= ema_decay < 1 and positive learning rates; got ema_decay {}, lr_g {}, lr_d {}",
                o.ema_decay, self.lr_g, self.lr_d
            )));
        }
        if self.precision == Precision::Fp16 {
            return Err(GanError::Config(
                "fp16 needs a loss scaler per network, which the GAN step does not have; use bf16 or fp32".into(),
            ));
        }
        Ok(())
    }

    /// The discriminator's loss on real and fake outputs.
    fn d_loss(&self, real: &Tensor, fake: &Tensor) -> Tensor {
        match self.objective.loss {
            GanLoss::NonSaturating => loss::d_loss_non_saturating(real, fake),
            GanLoss::Hinge => loss::d_loss_hinge(real, fake),
            GanLoss::Wasserstein => loss::d_loss_wasserstein(real, fake),
        }
    }

    fn g_loss(&self, fake: &Tensor) -> Tensor {
        match self.objective.loss {
            GanLoss::NonSaturating => loss::g_loss_non_saturating(fake),
            GanLoss::Hinge => loss::g_loss_hinge(fake),
            GanLoss::Wasserstein => loss::g_loss_wasserstein(fake),
        }
    }
}

/// Stops a run that has failed in a way the non-finite check cannot see: mode collapse
/// (diversity ratio below `min_diversity`) or a discriminator that has won (every real
/// and fake of the step classified correctly while the generator loss exceeds
/// `max_g_loss`), each for `patience` consecutive steps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CollapseDetector {
    pub cfg: CollapseConfig,
    /// Consecutive steps with low diversity.
    pub low_diversity: u64,
    /// Consecutive steps with a perfect discriminator and an exploding generator loss.
    pub d_won: u64,
}

impl CollapseDetector {
    pub fn new(cfg: CollapseConfig) -> Self {
        CollapseDetector { cfg, low_diversity: 0, d_won: 0 }
    }

    /// Record one step; an error once a failure has lasted `patience` steps.
    /// `d_accuracy` is None for the Wasserstein loss, whose critic has no decision threshold.
    pub fn observe(&mut self, step: u64, diversity: f64, d_accuracy: Option<f64>, g_loss: f64) -> Result<()> {
        let c = self.cfg;
        if c.patience == 0 {
            return Ok(());
        }
        self.low_diversity = if diversity < c.min_diversity { self.low_diversity + 1 } else { 0 };
        self.d_won = if d_accuracy == Some(1.0) && g_loss > c.max_g_loss { self.d_won + 1 } else { 0 };
        let advice = format!(
            "it began at step {}, so checkpoints from then on may hold the failed model; resume from an \
             earlier one with lower learning rates, or train another --model",
            (step + 1).saturating_sub(c.patience)
        );
        if self.low_diversity >= c.patience {
            return Err(GanError::Collapse(format!(
                "mode collapse at step {step}: the generated samples' mean pairwise distance has been below \
                 {} of the real batch's for {} consecutive steps (now {diversity:.4}); {advice}",
                c.min_diversity, c.patience
            )));
        }
        if self.d_won >= c.patience {
            return Err(GanError::Collapse(format!(
                "the discriminator has won at step {step}: it has told every real from every fake image with \
                 the generator loss above {} for {} consecutive steps (now {g_loss:.3}), so the generator gets \
                 no useful gradient; {advice}",
                c.max_g_loss, c.patience
            )));
        }
        Ok(())
    }
}

pub struct GanTask {
    pub run: GanRunConfig,
    pub vs_g: VarStore,
    pub generator: Generator,
    pub vs_d: VarStore,
    pub discriminator: Discriminator,
    pub opt_g: Adam,
    pub opt_d: Adam,
    pub ema: Ema,
    /// A generator holding the EMA weights, for samples.
    vs_ema: VarStore,
    ema_generator: Generator,
    pub collapse: CollapseDetector,
    device: Device,
}

impl std::fmt::Debug for GanTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GanTask").field("run", &self.run).finish()
    }
}

/// What one discriminator update reports.
struct CriticStats {
    loss: f64,
    real: f64,
    fake: f64,
    accuracy: f64,
    gp: f64,
    grad_norm: f64,
}

impl GanTask {
    /// The networks (initialised from libtorch's current seed), optimizers and weight average.
    pub fn new(run: GanRunConfig, device: Device) -> Result<Self> {
        run.validate()?;
        run.precision.validate(device)?;
        let vs_g = VarStore::new(device);
        let generator = Generator::new(vs_g.root(), run.gan.clone())?;
        let vs_d = VarStore::new(device);
        let discriminator = Discriminator::new(vs_d.root(), run.gan.clone())?;
        let o = &run.objective;
        let opt_g = Adam::new(&vs_g, AdamConfig::adam(run.lr_g).betas(o.beta1, o.beta2))?;
        let opt_d = Adam::new(&vs_d, AdamConfig::adam(run.lr_d).betas(o.beta1, o.beta2))?;
        let mut ema = Ema::new(&vs_g, o.ema_decay);
        ema.warmup = genlab_core::ema::EmaWarmup::Ratio;
        let vs_ema = VarStore::new(device);
        let ema_generator = Generator::new(vs_ema.root(), run.gan.clone())?;
        let collapse = CollapseDetector::new(o.collapse);
        Ok(GanTask {
            run,
            vs_g,
            generator,
            vs_d,
            discriminator,
            opt_g,
            opt_d,
            ema,
            vs_ema,
            ema_generator,
            collapse,
            device,
        })
    }

    /// The generator with the averaged weights (copied from the EMA now).
    pub fn ema_generator(&self) -> Result<&Generator> {
        self.ema.copy_to(&self.vs_ema)?;
        Ok(&self.ema_generator)
    }

    fn latents(&self, n: i64) -> Tensor {
        Tensor::randn([n, self.run.gan.latent_dim], (Kind::Float, self.device))
    }

    /// One discriminator update on real images `x` (labels `y`) against fresh fakes.
    fn critic_update(&mut self, x: &Tensor, y: Option<&Tensor>) -> Result<CriticStats> {
        let n = x.size()[0];
        let z = self.latents(n);
        let run = &self.run;
        let (g, d) = (&self.generator, &self.discriminator);
        let (d_loss, gp, real, fake) = run.precision.autocast(self.device, || -> Result<_> {
            let fake_x = run.diffaug.apply(&tch::no_grad(|| g.forward(&z, y, true))?);
            let x = &run.diffaug.apply(x);
            let real = d.forward(x, y, true)?;
            let fake = d.forward(&fake_x, y, true)?;
            let mut d_loss = run.d_loss(&real, &fake);
            let mut gp = None;
            if let Some(lambda) = run.objective.gradient_penalty {
                let inter = loss::interpolate(x, &fake_x);
                let p = loss::gradient_penalty(&d.forward(&inter, y, true)?, &inter, lambda);
                d_loss += &p;
                gp = Some(p);
            }
            Ok((d_loss, gp, real, fake))
        })?;
        self.opt_d.zero_grad();
        d_loss.backward();
        self.opt_d.step();
        // Read after `step`, which gathers gradients that double backward left outside the buffer.
        let grad_norm = self.opt_d.grad_norm().double_value(&[]);
        if let Some(c) = self.run.objective.weight_clip {
            loss::clip_weights(&self.vs_d, c);
        }
        let (real, fake) = (real.detach().to_kind(Kind::Float), fake.detach().to_kind(Kind::Float));
        let accuracy = (real.gt(0.0).to_kind(Kind::Float).mean(Kind::Float)
            + fake.lt(0.0).to_kind(Kind::Float).mean(Kind::Float))
        .double_value(&[])
            / 2.0;
        Ok(CriticStats {
            loss: d_loss.double_value(&[]),
            real: real.mean(Kind::Float).double_value(&[]),
            fake: fake.mean(Kind::Float).double_value(&[]),
            accuracy,
            gp: gp.map(|p| p.double_value(&[])).unwrap_or(0.0),
            grad_norm,
        })
    }

    /// One generator update on `n` fresh latents; returns (loss, gradient norm, the fakes).
    fn generator_update(&mut self, n: i64, y: Option<&Tensor>) -> Result<(f64, f64, Tensor)> {
        let z = self.latents(n);
        let run = &self.run;
        let (g, d) = (&self.generator, &self.discriminator);
        let (g_loss, fake_x) = run.precision.autocast(self.device, || -> Result<_> {
            let fake_x = g.forward(&z, y, true)?;
            let out = d.forward(&run.diffaug.apply(&fake_x), y, true)?;
            Ok((run.g_loss(&out), fake_x))
        })?;
        self.opt_g.zero_grad();
        g_loss.backward();
        self.opt_g.step();
        let grad_norm = self.opt_g.grad_norm().double_value(&[]);
        self.ema.update();
        Ok((g_loss.double_value(&[]), grad_norm, fake_x.detach()))
    }

    fn step(&mut self, batch: &Batch, step: u64) -> Result<StepOutput> {
        self.discriminator.check_images(&batch.images)?;
        let labels = match (self.run.gan.num_classes, &batch.labels) {
            (None, _) => None,
            (Some(_), Some(l)) => Some(l),
            (Some(k), None) => {
                return Err(GanError::Labels(format!(
                    "this is a class-conditional GAN ({k} classes) but the batch carries no labels"
                )))
            }
        };
        let n_critic = self.run.objective.n_critic as i64;
        let n = batch.images.size()[0];
        let m = n / n_critic;
        if m < 2 {
            return Err(GanError::Config(format!(
                "a batch of {n} images cannot be split into {n_critic} critic slices of at least 2"
            )));
        }
        let mut critic = None;
        for i in 0..n_critic {
            let x = batch.images.narrow(0, i * m, m);
            let y = labels.map(|l| l.narrow(0, i * m, m));
            critic = Some(self.critic_update(&x, y.as_ref())?);
        }
        let Some(c) = critic else {
            return Err(GanError::Config("n_critic must be at least 1".into()));
        };
        let y = labels.map(|l| l.narrow(0, 0, m));
        let (g_loss, g_grad_norm, fake) = self.generator_update(m, y.as_ref())?;
        let diversity = diversity_ratio(&fake, &batch.images);
        let wasserstein = self.run.objective.loss == GanLoss::Wasserstein;
        self.collapse.observe(step, diversity, (!wasserstein).then_some(c.accuracy), g_loss)?;
        let mut metrics = vec![
            ("d_loss".to_string(), c.loss),
            ("g_loss".to_string(), g_loss),
            ("d_grad_norm".to_string(), c.grad_norm),
            ("g_grad_norm".to_string(), g_grad_norm),
            ("diversity".to_string(), diversity),
            ("d_real".to_string(), c.real),
            ("d_fake".to_string(), c.fake),
        ];
        if wasserstein {
            // The critic's estimate of W(P_r, P_g) (up to the Lipschitz constant).
            metrics.push(("wasserstein".to_string(), c.real - c.fake));
        } else {
            metrics.push(("d_accuracy".to_string(), c.accuracy));
        }
        if self.run.objective.gradient_penalty.is_some() {
            metrics.push(("gradient_penalty".to_string(), c.gp));
        }
        // The harness's headline loss is the discriminator's (the generator's is in the metrics).
        Ok(StepOutput { loss: c.loss, metrics })
    }
}

impl TrainTask for GanTask {
    fn train_step(&mut self, batch: &Batch, step: u64) -> genlab_core::Result<StepOutput> {
        Ok(self.step(batch, step)?)
    }

    fn samples(&mut self, n: i64) -> genlab_core::Result<Tensor> {
        let g = self.ema_generator()?;
        Ok(crate::sample::sample(g, n, None)?)
    }

    fn checkpoint_groups(&self) -> BTreeMap<String, Vec<(String, Tensor)>> {
        let mut g = BTreeMap::new();
        g.insert("generator".into(), self.vs_g.variables().into_iter().collect());
        g.insert("discriminator".into(), self.vs_d.variables().into_iter().collect());
        g.insert("ema".into(), self.ema.state_tensors());
        g.insert("optim_g".into(), self.opt_g.state_tensors());
        g.insert("optim_d".into(), self.opt_d.state_tensors());
        g
    }

    fn restore(&mut self, ckpt: &CheckpointReader) -> genlab_core::Result<()> {
        ckpt.load_group_into("generator", &self.vs_g)?;
        ckpt.load_group_into("discriminator", &self.vs_d)?;
        self.ema.load_state_tensors(&ckpt.read_group("ema")?, &ckpt.group_path("ema"))?;
        self.opt_g.load_state_tensors(&ckpt.read_group("optim_g")?)?;
        self.opt_d.load_state_tensors(&ckpt.read_group("optim_d")?)
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.run).unwrap_or_default()
    }

    fn extra_state(&self) -> serde_json::Value {
        serde_json::json!({ "collapse": self.collapse, "ema_updates": self.ema.updates() })
    }

    fn restore_extra_state(&mut self, state: &serde_json::Value) -> genlab_core::Result<()> {
        if let Some(c) = state.get("collapse") {
            self.collapse = serde_json::from_value(c.clone())
                .map_err(|e| genlab_core::CoreError::Config(format!("checkpoint state `collapse`: {e}")))?;
        }
        // The EMA warm-up depends on the update count; older checkpoints lack it and
        // fall back to the generator's step count (one EMA update per generator step).
        let updates = state.get("ema_updates").and_then(|u| u.as_u64()).unwrap_or(self.opt_g.steps_taken() as u64);
        self.ema.set_updates(updates);
        Ok(())
    }
}

/// Load a trained generator, with its averaged (EMA) weights, from a run directory or
/// checkpoint folder.
pub fn load(path: &std::path::Path, device: Device) -> Result<(VarStore, Generator, GanRunConfig)> {
    let (ck, run) = genlab_core::run::open_checkpoint::<GanRunConfig>(path)?;
    let vs = VarStore::new(device);
    let generator = Generator::new(vs.root(), run.gan.clone())?;
    ck.load_group_into("ema", &vs)?;
    Ok((vs, generator, run))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_written_before_diffaug_load_without_it_and_new_ones_keep_their_policy() {
        let run = GanRunConfig::from_preset("dcgan", [1, 8, 8], None, "digits").unwrap();
        let mut old = serde_json::to_value(&run).unwrap();
        assert!(old.get("diffaug").is_none(), "no policy, no key: {old}");
        old.as_object_mut().unwrap().remove("diffaug");
        let back: GanRunConfig = serde_json::from_value(old).unwrap();
        assert!(back.diffaug.is_none());
        let with = GanRunConfig { diffaug: "translation,cutout".parse().unwrap(), ..run };
        let v = serde_json::to_value(&with).unwrap();
        assert_eq!(v["diffaug"], "translation,cutout");
        let back: GanRunConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back.diffaug, with.diffaug);
        // A training step runs through the augmented discriminator inputs.
        tch::manual_seed(0);
        let mut task = GanTask::new(GanRunConfig { batch_size: 8, ..with }, Device::Cpu).unwrap();
        let batch = Batch { images: Tensor::rand([8, 1, 8, 8], (Kind::Float, Device::Cpu)) * 2.0 - 1.0, labels: None };
        let out = task.step(&batch, 0).unwrap();
        assert!(out.loss.is_finite(), "{out:?}");
    }
}
