//! The StyleGAN2 training step, plugged into genlab-core's harness.
//!
//! Follows stylegan2-ada-pytorch `training/training_loop.py` and `training/loss.py`
//! (`StyleGAN2Loss`) without augmentation. One harness step of batch `n` runs the phases
//! in the reference's order, each with its own optimizer step:
//! - `Gmain`: `softplus(-D(G(z)))` on `n` fresh latents;
//! - `Greg` (every `g_reg_interval` steps, if `pl_weight > 0`): the path-length penalty on
//!   `n / pl_batch_shrink` latents, times `pl_weight * g_reg_interval`;
//! - `Dmain`: `softplus(D(G(z))) + softplus(-D(x))` on the batch and `n` fresh fakes;
//! - `Dreg` (every `d_reg_interval` steps, if `r1_gamma > 0`): R1 on the batch, times
//!   `r1_gamma / 2 * d_reg_interval`.
//!
//! Lazy regularisation changes the optimizers as the reference does: with interval `k`, the
//! learning rate is multiplied by `k / (k + 1)` and each beta raised to that power. Every
//! generator forward pass in training mixes styles with probability `style_mixing_prob` and
//! updates `w_avg`.
//!
//! The sampling generator is an exponential moving average of the generator's weights with
//! a half-life of `ema_kimg` thousand images (`beta = 0.5^(batch / (1000 ema_kimg))`, optionally
//! ramped up as `min(ema_kimg, images_seen * ema_rampup)`), as `training_loop.py` does; its
//! buffers (`w_avg`, the noise constants) are copied, not averaged. The images seen are
//! `step * batch_size`, so the average resumes exactly.
//!
//! Presets (`--model`):
//! - `stylegan2`: sized for a CPU at 8x8 to 32x32 (1 to 3 channels): z and w 128, 4 mapping
//!   layers, `channel_base` 1024 and `channel_max` 128 (4-8: 128, 16: 64, 32: 32 feature maps),
//!   batch 32, Adam(0.0025, 0, 0.99); R1 gamma, EMA and ramp-up from `train.py`'s `auto`
//!   config (`gamma = 0.0002 res^2 / batch`, `ema_kimg = batch / 32 * 10`, ramp-up 0.05).
//! - `stylegan2-paper256`: `train.py`'s `paper256` config for 256x256 on a GPU: z and w 512,
//!   8 mapping layers, `channel_base` 16384, `channel_max` 512, batch 64, minibatch-stddev
//!   groups of 8, Adam(0.0025, 0, 0.99), gamma 1, `ema_kimg` 20, no ramp-up.
//! - `stylegan2-f`: the paper's config F (`train.py`'s `stylegan2`): `channel_base` 32768,
//!   batch 32, groups of 4, Adam(0.002, 0, 0.99), gamma 10, `ema_kimg` 10.
//!
//! All presets: style mixing 0.9, path length weight 2 (decay 0.01, batch shrink 2), lazy
//! intervals 16 (R1) and 4 (path length), noise inputs, the [1, 3, 3, 1] filter.
//!
//! A run is a `gan`-family run with `"kind": "stylegan2"` in its `config.json`; [`load`] reads it.
use crate::error::{GanError, Result};
use crate::stylegan2::config::{MappingConfig, StyleGan2Config};
use crate::stylegan2::discriminator::Discriminator;
use crate::stylegan2::generator::{Generator, NoiseMode};
use crate::stylegan2::loss::{d_loss_logistic, g_loss_logistic, mix_styles, mixing_cutoff, r1_penalty, PathLength};
use crate::train::FAMILY;
use genlab_core::checkpoint::CheckpointReader;
use genlab_core::optim::{Adam, AdamConfig};
use genlab_core::train::{Batch, StepOutput, TrainTask};
use genlab_core::Precision;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// `config.json`'s `kind` for a StyleGAN2 run.
pub const KIND: &str = "stylegan2";

/// The `--model` presets of a StyleGAN2 run.
pub const PRESETS: &[&str] = &["stylegan2", "stylegan2-paper256", "stylegan2-f"];

/// Whether `--model name` is a StyleGAN2 preset.
pub fn is_preset(name: &str) -> bool {
    PRESETS.contains(&name)
}

/// Everything `config.json` records about a StyleGAN2 run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StyleGan2RunConfig {
    pub family: String,
    /// Always [`KIND`]: tells this run from the other GAN runs.
    pub kind: String,
    /// The preset name given to `--model`.
    pub model: String,
    pub net: StyleGan2Config,
    pub batch_size: usize,
    /// Learning rates before the lazy-regularisation correction.
    pub lr_g: f64,
    pub lr_d: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// R1 weight gamma (0: no R1).
    pub r1_gamma: f64,
    /// Steps between R1 updates.
    pub d_reg_interval: u64,
    /// Steps between path-length updates.
    pub g_reg_interval: u64,
    /// Path-length weight (0: no path-length regularisation).
    pub pl_weight: f64,
    pub pl_decay: f64,
    /// The path-length batch is the batch divided by this.
    pub pl_batch_shrink: i64,
    pub style_mixing_prob: f64,
    /// Half-life of the weight average, in thousands of images.
    pub ema_kimg: f64,
    /// Limit the half-life to this fraction of the images seen so far (None: no ramp-up).
    pub ema_rampup: Option<f64>,
    pub precision: Precision,
    pub data: String,
}

genlab_core::run_kind!(StyleGan2RunConfig, crate::train::FAMILY, KIND, hint: |found| {
    (found.family == crate::train::FAMILY).then(|| format!("train one with --model {}", PRESETS[0]))
});

impl StyleGan2RunConfig {
    /// A run of preset `model` (see the module docs) on data of `image_shape`.
    pub fn from_preset(model: &str, image_shape: [i64; 3], data: &str) -> Result<Self> {
        let paper = StyleGan2Config { image_shape, ..Default::default() };
        let base =
            |net: StyleGan2Config, batch_size: usize, lr: f64, r1_gamma: f64, ema_kimg: f64| StyleGan2RunConfig {
                family: FAMILY.into(),
                kind: KIND.into(),
                model: model.into(),
                net,
                batch_size,
                lr_g: lr,
                lr_d: lr,
                beta1: 0.0,
                beta2: 0.99,
                eps: 1e-8,
                r1_gamma,
                d_reg_interval: 16,
                g_reg_interval: 4,
                pl_weight: 2.0,
                pl_decay: 0.01,
                pl_batch_shrink: 2,
                style_mixing_prob: 0.9,
                ema_kimg,
                ema_rampup: None,
                precision: Precision::Fp32,
                data: data.into(),
            };
        let run = match model {
            "stylegan2" => {
                let net = StyleGan2Config {
                    z_dim: 128,
                    w_dim: 128,
                    mapping: MappingConfig { num_layers: 4, ..Default::default() },
                    channel_base: 1024,
                    channel_max: 128,
                    ..paper
                };
                let batch = 32;
                let res = net.resolution() as f64;
                let gamma = 0.0002 * res * res / batch as f64;
                StyleGan2RunConfig {
                    ema_rampup: Some(0.05),
                    ..base(net, batch, 0.0025, gamma, batch as f64 / 32.0 * 10.0)
                }
            }
            "stylegan2-paper256" => {
                let net = StyleGan2Config { channel_base: 16384, mbstd_group_size: 8, ..paper };
                base(net, 64, 0.0025, 1.0, 20.0)
            }
            "stylegan2-f" => base(paper, 32, 0.002, 10.0, 10.0),
            _ => {
                return Err(GanError::Config(format!(
                    "unknown StyleGAN2 preset `{model}`: expected one of {}",
                    PRESETS.join(", ")
                )))
            }
        };
        run.validate()?;
        Ok(run)
    }

    pub fn validate(&self) -> Result<()> {
        self.net.validate()?;
        if self.family != FAMILY || self.kind != KIND {
            return Err(GanError::Config(format!(
                "a StyleGAN2 run has family `{FAMILY}` and kind `{KIND}`, got `{}` and `{}`",
                self.family, self.kind
            )));
        }
        let n = self.batch_size as i64;
        let g = self.net.mbstd_group_size.min(n);
        if n < 2 || (self.net.mbstd_num_channels > 0 && n % g != 0) {
            return Err(GanError::Config(format!(
                "batch_size {n} must be at least 2 and a multiple of the minibatch-stddev group size {}",
                self.net.mbstd_group_size
            )));
        }
        if self.pl_batch_shrink < 1 || n / self.pl_batch_shrink < 1 {
            return Err(GanError::Config(format!(
                "pl_batch_shrink {} must be >= 1 and leave at least one image of the batch of {n}",
                self.pl_batch_shrink
            )));
        }
        if self.d_reg_interval < 1 || self.g_reg_interval < 1 {
            return Err(GanError::Config(format!(
                "d_reg_interval ({}) and g_reg_interval ({}) must be at least 1",
                self.d_reg_interval, self.g_reg_interval
            )));
        }
        let nonneg = [("r1_gamma", self.r1_gamma), ("pl_weight", self.pl_weight), ("ema_kimg", self.ema_kimg)];
        if let Some((name, v)) = nonneg.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            return Err(GanError::Config(format!("{name} must be >= 0, got {v}")));
        }
        let unit = [("pl_decay", self.pl_decay), ("style_mixing_prob", self.style_mixing_prob)];
        if let Some((name, v)) = unit.iter().find(|(_, v)| !(0.0..=1.0).contains(v)) {
            return Err(GanError::Config(format!("{name} must be in [0, 1], got {v}")));
        }
        if !(self.lr_g > 0.0 && self.lr_d > 0.0 && (0.0..1.0).contains(&self.beta1) && (0.0..1.0).contains(&self.beta2))
        {
            return Err(GanError::Config(format!(
                "need positive learning rates and betas in [0, 1); got lr_g {}, lr_d {}, betas ({}, {})",
                self.lr_g, self.lr_d, self.beta1, self.beta2
            )));
        }
        if self.ema_rampup.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return Err(GanError::Config(format!("ema_rampup must be > 0, got {:?}", self.ema_rampup)));
        }
        if self.precision == Precision::Fp16 {
            return Err(GanError::Config(
                "fp16 needs a loss scaler per network, which the StyleGAN2 step does not have; use bf16 or fp32".into(),
            ));
        }
        Ok(())
    }

    /// Adam for a network regularised every `interval` steps (learning rate times
    /// `k / (k + 1)`, betas to that power).
    fn adam(&self, lr: f64, interval: u64) -> AdamConfig {
        let ratio = interval as f64 / (interval as f64 + 1.0);
        let mut cfg = AdamConfig::adam(lr * ratio).betas(self.beta1.powf(ratio), self.beta2.powf(ratio));
        cfg.eps = self.eps;
        cfg
    }

    /// The weight-average decay after `images_seen` images.
    pub fn ema_beta(&self, images_seen: u64) -> f64 {
        let mut ema_nimg = self.ema_kimg * 1000.0;
        if let Some(r) = self.ema_rampup {
            ema_nimg = ema_nimg.min(images_seen as f64 * r);
        }
        0.5f64.powf(self.batch_size as f64 / ema_nimg.max(1e-8))
    }
}

/// A live variable and its average (trainable: averaged; buffers: copied).
struct EmaSlot {
    live: Tensor,
    shadow: Tensor,
    trainable: bool,
}

pub struct StyleGan2Task {
    pub run: StyleGan2RunConfig,
    pub vs_g: VarStore,
    pub generator: Generator,
    pub vs_d: VarStore,
    pub discriminator: Discriminator,
    pub opt_g: Adam,
    pub opt_d: Adam,
    /// The generator with the averaged weights, for samples.
    pub vs_ema: VarStore,
    pub ema_generator: Generator,
    ema: Vec<EmaSlot>,
    pub path_length: PathLength,
    last_r1: f64,
    last_pl: f64,
    device: Device,
}

impl std::fmt::Debug for StyleGan2Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StyleGan2Task").field("run", &self.run).finish()
    }
}

impl StyleGan2Task {
    /// The networks (initialised from libtorch's current seed), optimizers and weight average.
    pub fn new(run: StyleGan2RunConfig, device: Device) -> Result<Self> {
        run.validate()?;
        run.precision.validate(device)?;
        let vs_g = VarStore::new(device);
        let generator = Generator::new(vs_g.root(), run.net.clone())?;
        let vs_d = VarStore::new(device);
        let discriminator = Discriminator::new(vs_d.root(), run.net.clone())?;
        let opt_g = Adam::new(&vs_g, run.adam(run.lr_g, run.g_reg_interval))?;
        let opt_d = Adam::new(&vs_d, run.adam(run.lr_d, run.d_reg_interval))?;
        let vs_ema = VarStore::new(device);
        let ema_generator = Generator::new(vs_ema.root(), run.net.clone())?;
        let shadows = vs_ema.variables();
        let mut ema = Vec::new();
        let mut live: Vec<(String, Tensor)> = vs_g.variables().into_iter().collect();
        live.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in live {
            let shadow = shadows.get(&name).ok_or_else(|| {
                GanError::Config(format!("the averaged generator has no variable `{name}` of the generator"))
            })?;
            tch::no_grad(|| shadow.shallow_clone().copy_(&t));
            ema.push(EmaSlot { trainable: t.requires_grad(), live: t, shadow: shadow.shallow_clone() });
        }
        let path_length = PathLength::new(run.pl_decay);
        Ok(StyleGan2Task {
            run,
            vs_g,
            generator,
            vs_d,
            discriminator,
            opt_g,
            opt_d,
            vs_ema,
            ema_generator,
            ema,
            path_length,
            last_r1: 0.0,
            last_pl: 0.0,
            device,
        })
    }

    fn latents(&self, n: i64) -> Tensor {
        Tensor::randn([n, self.run.net.z_dim], (Kind::Float, self.device))
    }

    /// The generator in training mode: w (updating `w_avg`), style mixing, synthesis with random
    /// noise. Returns (images [n, c, r, r], ws [n, num_ws, w_dim]).
    fn run_g(&self, z: &Tensor) -> Result<(Tensor, Tensor)> {
        let g = &self.generator;
        let mut ws = g.mapping.forward(z, true)?;
        let num_ws = g.num_ws();
        let cutoff = mixing_cutoff(num_ws, self.run.style_mixing_prob);
        if cutoff < num_ws {
            let ws2 = g.mapping.forward(&Tensor::randn_like(z), false)?;
            ws = mix_styles(&ws, &ws2, cutoff);
        }
        let img = g.synthesis.forward(&ws, NoiseMode::Random, false)?;
        Ok((img, ws))
    }

    fn update_ema(&mut self, step: u64) {
        let beta = self.run.ema_beta(step * self.run.batch_size as u64);
        tch::no_grad(|| {
            for s in self.ema.iter_mut() {
                if s.trainable {
                    let _ = s.shadow.lerp_(&s.live, 1.0 - beta);
                } else {
                    s.shadow.copy_(&s.live);
                }
            }
        });
    }

    fn step(&mut self, batch: &Batch, step: u64) -> Result<StepOutput> {
        let real = self.run.net.pad_to_resolution(&batch.images)?;
        let n = real.size()[0];
        let g_mb = self.run.net.mbstd_group_size.min(n);
        if self.run.net.mbstd_num_channels > 0 && n % g_mb != 0 {
            return Err(GanError::Config(format!(
                "a batch of {n} images cannot be split into minibatch-stddev groups of {g_mb}"
            )));
        }
        let (prec, dev) = (self.run.precision, self.device);
        let mut metrics = Vec::new();

        // Gmain.
        let z = self.latents(n);
        let (g_loss, fake_logits) = prec.autocast(dev, || -> Result<_> {
            let (img, _) = self.run_g(&z)?;
            let logits = self.discriminator.forward(&img)?;
            Ok((g_loss_logistic(&logits), logits))
        })?;
        self.opt_g.zero_grad();
        g_loss.backward();
        self.opt_g.step();
        let g_grad_norm = self.opt_g.grad_norm().double_value(&[]);

        // Greg: path length.
        if self.run.pl_weight > 0.0 && step % self.run.g_reg_interval == 0 {
            let m = (n / self.run.pl_batch_shrink).max(1);
            let z = self.latents(m);
            let (img, ws) = prec.autocast(dev, || self.run_g(&z))?;
            let (penalty, _) = self.path_length.penalty(&img.to_kind(Kind::Float), &ws)?;
            let loss = penalty.mean(Kind::Float) * (self.run.pl_weight * self.run.g_reg_interval as f64);
            self.opt_g.zero_grad();
            loss.backward();
            self.opt_g.step();
            self.last_pl = penalty.mean(Kind::Float).double_value(&[]);
        }

        // Dmain.
        let z = self.latents(n);
        let (d_loss, real_logits, fake_logits_d) = prec.autocast(dev, || -> Result<_> {
            let fake = tch::no_grad(|| self.run_g(&z))?.0;
            let fake_logits = self.discriminator.forward(&fake)?;
            let real_logits = self.discriminator.forward(&real)?;
            Ok((d_loss_logistic(&real_logits, &fake_logits), real_logits, fake_logits))
        })?;
        self.opt_d.zero_grad();
        d_loss.backward();
        self.opt_d.step();
        let d_grad_norm = self.opt_d.grad_norm().double_value(&[]);

        // Dreg: R1.
        if self.run.r1_gamma > 0.0 && step % self.run.d_reg_interval == 0 {
            let x = real.detach().set_requires_grad(true);
            let logits = prec.autocast(dev, || self.discriminator.forward(&x))?;
            let penalty = r1_penalty(&logits.to_kind(Kind::Float), &x);
            let loss = penalty.mean(Kind::Float) * (self.run.r1_gamma / 2.0 * self.run.d_reg_interval as f64);
            self.opt_d.zero_grad();
            loss.backward();
            self.opt_d.step();
            self.last_r1 = penalty.mean(Kind::Float).double_value(&[]);
        }

        self.update_ema(step);

        let (real_l, fake_l) = (real_logits.detach().to_kind(Kind::Float), fake_logits_d.detach().to_kind(Kind::Float));
        let accuracy = (real_l.gt(0.0).to_kind(Kind::Float).mean(Kind::Float)
            + fake_l.lt(0.0).to_kind(Kind::Float).mean(Kind::Float))
        .double_value(&[])
            / 2.0;
        let d_loss = d_loss.double_value(&[]);
        metrics.extend([
            ("d_loss".to_string(), d_loss),
            ("g_loss".to_string(), g_loss.double_value(&[])),
            ("d_real".to_string(), real_l.mean(Kind::Float).double_value(&[])),
            ("d_fake".to_string(), fake_l.mean(Kind::Float).double_value(&[])),
            ("g_fake_logit".to_string(), fake_logits.detach().to_kind(Kind::Float).mean(Kind::Float).double_value(&[])),
            ("d_accuracy".to_string(), accuracy),
            ("r1_penalty".to_string(), self.last_r1),
            ("pl_penalty".to_string(), self.last_pl),
            ("pl_mean".to_string(), self.path_length.mean),
            ("d_grad_norm".to_string(), d_grad_norm),
            ("g_grad_norm".to_string(), g_grad_norm),
        ]);
        // The harness's headline loss is the discriminator's (the generator's is in the metrics).
        Ok(StepOutput { loss: d_loss, metrics })
    }
}

impl TrainTask for StyleGan2Task {
    fn train_step(&mut self, batch: &Batch, step: u64) -> genlab_core::Result<StepOutput> {
        Ok(self.step(batch, step)?)
    }

    /// Samples of the averaged generator (no truncation, constant noise), cropped to the data's shape.
    fn samples(&mut self, n: i64) -> genlab_core::Result<Tensor> {
        Ok(crate::stylegan2::tools::sample(&self.ema_generator, n, 1.0, NoiseMode::Const)?)
    }

    fn checkpoint_groups(&self) -> BTreeMap<String, Vec<(String, Tensor)>> {
        let mut g = BTreeMap::new();
        g.insert("generator".into(), self.vs_g.variables().into_iter().collect());
        g.insert("discriminator".into(), self.vs_d.variables().into_iter().collect());
        g.insert("ema".into(), self.vs_ema.variables().into_iter().collect());
        g.insert("optim_g".into(), self.opt_g.state_tensors());
        g.insert("optim_d".into(), self.opt_d.state_tensors());
        g
    }

    fn restore(&mut self, ckpt: &CheckpointReader) -> genlab_core::Result<()> {
        ckpt.load_group_into("generator", &self.vs_g)?;
        ckpt.load_group_into("discriminator", &self.vs_d)?;
        ckpt.load_group_into("ema", &self.vs_ema)?;
        self.opt_g.load_state_tensors(&ckpt.read_group("optim_g")?)?;
        self.opt_d.load_state_tensors(&ckpt.read_group("optim_d")?)
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.run).unwrap_or_default()
    }

    fn extra_state(&self) -> serde_json::Value {
        serde_json::json!({ "pl_mean": self.path_length.mean, "last_r1": self.last_r1, "last_pl": self.last_pl })
    }

    fn restore_extra_state(&mut self, state: &serde_json::Value) -> genlab_core::Result<()> {
        let get = |k: &str| state.get(k).and_then(|v| v.as_f64());
        self.path_length.mean = get("pl_mean").unwrap_or(0.0);
        self.last_r1 = get("last_r1").unwrap_or(0.0);
        self.last_pl = get("last_pl").unwrap_or(0.0);
        Ok(())
    }
}

/// Whether a run's `config.json` describes a StyleGAN2 run.
pub fn is_stylegan2_config(config: &serde_json::Value) -> bool {
    config.get("kind").and_then(|k| k.as_str()) == Some(KIND)
}

/// Whether the run directory or checkpoint folder at `path` holds a StyleGAN2 run.
pub fn is_stylegan2_run(path: &std::path::Path) -> Result<bool> {
    Ok(is_stylegan2_config(&genlab_core::train::open_checkpoint(path)?.config))
}

/// Load a trained StyleGAN2 generator, with its averaged (EMA) weights and `w_avg`, from a run
/// directory or checkpoint folder.
pub fn load(path: &std::path::Path, device: Device) -> Result<(VarStore, Generator, StyleGan2RunConfig)> {
    let (ck, run) = genlab_core::run::open_checkpoint::<StyleGan2RunConfig>(path)?;
    let vs = VarStore::new(device);
    let generator = Generator::new(vs.root(), run.net.clone())?;
    ck.load_group_into("ema", &vs)?;
    Ok((vs, generator, run))
}
