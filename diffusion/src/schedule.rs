//! Noise schedules: betas, cumulative alphas, what the network predicts, and min-SNR loss weights.
//!
//! - `linear`: Ho, Jain and Abbeel, "Denoising Diffusion Probabilistic Models", arXiv 2006.11239
//!   (betas 1e-4..0.02 over 1000 steps, this crate's default).
//! - `scaled_linear`: Stable Diffusion's schedule, the square of a linspace of `sqrt(beta)`.
//! - `squaredcos_cap_v2`: Nichol and Dhariwal, "Improved Denoising Diffusion Probabilistic Models",
//!   arXiv 2102.09672, eq. 17, with `s = 0.008` and betas capped at 0.999.
//! - `sigmoid`: GeoDiff (Xu et al., arXiv 2203.02923), `sigmoid(linspace(-6, 6))` rescaled to the range.
//! - rescaling to zero terminal SNR: Lin et al., "Common Diffusion Noise Schedules and Sample Steps
//!   are Flawed", arXiv 2305.08891, Algorithm 1.
//! - v-prediction: Salimans and Ho, "Progressive Distillation for Fast Sampling of Diffusion Models",
//!   arXiv 2202.00512, section 4.
//! - min-SNR-gamma loss weighting: Hang et al., "Efficient Diffusion Training via Min-SNR Weighting
//!   Strategy", arXiv 2303.09556.
//!
//! Follows diffusers' `schedulers/scheduling_ddpm.py` (`betas_for_alpha_bar`,
//! `rescale_zero_terminal_snr`, the beta schedules of `DDPMScheduler.__init__`). Everything is computed
//! in f64; diffusers keeps f32 betas, so values agree to about 1e-6 relative.
use std::fmt;
use std::ops::{Div, Mul};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{DiffusionError, Result};

/// How the betas grow over the training timesteps (diffusers' `beta_schedule` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BetaSchedule {
    #[serde(rename = "linear")]
    Linear,
    #[serde(rename = "scaled_linear")]
    ScaledLinear,
    /// The cosine schedule; `beta_start` and `beta_end` are ignored.
    #[serde(rename = "squaredcos_cap_v2", alias = "cosine")]
    SquaredcosCapV2,
    #[serde(rename = "sigmoid")]
    Sigmoid,
}

/// What the network is trained to output for a noisy sample `x_t = sqrt(a) x0 + sqrt(1 - a) eps`
/// (`a` the cumulative alpha at `t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PredictionType {
    /// The noise `eps`.
    #[serde(rename = "epsilon")]
    Epsilon,
    /// The clean sample `x0`.
    #[serde(rename = "sample")]
    Sample,
    /// The velocity `v = sqrt(a) eps - sqrt(1 - a) x0`.
    #[serde(rename = "v_prediction")]
    VPrediction,
}

/// How inference timesteps are spread over the training range
/// (Lin et al. 2023, arXiv 2305.08891, Table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimestepSpacing {
    #[serde(rename = "leading")]
    Leading,
    #[serde(rename = "trailing")]
    Trailing,
    #[serde(rename = "linspace")]
    Linspace,
}

macro_rules! names {
    ($ty:ident, $what:literal, $($variant:ident = $name:literal $(| $alias:literal)*),+ $(,)?) => {
        impl $ty {
            /// The name used in configs and on the command line (diffusers' spelling).
            pub fn name(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
        impl FromStr for $ty {
            type Err = DiffusionError;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($name $(| $alias)* => Ok($ty::$variant),)+
                    _ => Err(DiffusionError::UnknownName {
                        what: $what,
                        found: s.to_string(),
                        expected: [$($name),+].join(", "),
                    }),
                }
            }
        }
    };
}

names!(
    BetaSchedule,
    "beta schedule",
    Linear = "linear",
    ScaledLinear = "scaled_linear",
    SquaredcosCapV2 = "squaredcos_cap_v2" | "cosine",
    Sigmoid = "sigmoid"
);
names!(
    PredictionType,
    "prediction type",
    Epsilon = "epsilon" | "eps",
    Sample = "sample" | "x0",
    VPrediction = "v_prediction" | "v"
);
names!(TimestepSpacing, "timestep spacing", Leading = "leading", Trailing = "trailing", Linspace = "linspace");

/// A noise schedule and the options of the schedulers that sample from it. Written next to every
/// diffusion checkpoint. `Default` is the DDPM paper's (Ho et al. 2020, arXiv 2006.11239):
/// 1000 steps, linear betas from 1e-4 to 0.02, epsilon prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScheduleConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub prediction_type: PredictionType,
    /// Rescale the betas so the last timestep is pure noise (Lin et al. 2023, Algorithm 1).
    /// Pair it with `v_prediction` and trailing spacing: epsilon cannot be inverted at zero SNR.
    pub rescale_betas_zero_snr: bool,
    /// `None` uses each scheduler's reference default, as diffusers does: leading for DDPM and DDIM,
    /// linspace for DPM-Solver++, Euler, Euler ancestral and Heun.
    pub timestep_spacing: Option<TimestepSpacing>,
    /// Added to leading-spaced timesteps (Stable Diffusion uses 1).
    pub steps_offset: usize,
    /// DDPM and DDIM: clamp the predicted `x0` to `[-clip_sample_range, clip_sample_range]`.
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    /// DDIM: after clipping `x0`, re-derive the noise from the clipped `x0` (diffusers' `step` argument
    /// `use_clipped_model_output`; what the DDIM paper's code and denoising-diffusion-pytorch do). Without
    /// it the step mixes a clipped `x0` with the unclipped noise, which an undertrained model pays for.
    pub use_clipped_model_output: bool,
    /// DDIM: the cumulative alpha used past the last step, 1 (true) or that of timestep 0.
    pub set_alpha_to_one: bool,
    /// DDIM: noise weight in 0..=1, 0 is deterministic DDIM and 1 is DDPM-like.
    pub eta: f64,
    /// Set for a flow-matching model: its forward process is `(1 - sigma) x0 + sigma noise` with
    /// these sigmas, the network predicts the velocity `noise - x0`, and only the flow-matching
    /// schedulers sample it (the beta schedule and prediction type above do not apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowMatchConfig>,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            prediction_type: PredictionType::Epsilon,
            rescale_betas_zero_snr: false,
            timestep_spacing: None,
            steps_offset: 0,
            clip_sample: true,
            clip_sample_range: 1.0,
            use_clipped_model_output: false,
            set_alpha_to_one: true,
            eta: 0.0,
            flow: None,
        }
    }
}

impl ScheduleConfig {
    /// The DDPM paper's schedule (Ho et al. 2020, arXiv 2006.11239, section 4); the same as `Default`.
    pub fn ddpm() -> Self {
        Self::default()
    }

    /// The cosine schedule of Nichol and Dhariwal 2021 (arXiv 2102.09672, section 3.2), over 1000 steps.
    pub fn improved_ddpm_cosine() -> Self {
        Self { beta_schedule: BetaSchedule::SquaredcosCapV2, ..Self::default() }
    }

    /// What `genlab diffusion train` uses for a new pixel-space run: the cosine schedule (Nichol and
    /// Dhariwal 2021, section 3.2), v-prediction (Salimans and Ho 2022, arXiv 2202.00512, section 4:
    /// its target stays bounded at both ends of the cosine schedule, where epsilon's x0 estimate blows
    /// up at t = T and x0's noise estimate at t = 0), trailing timesteps (Lin et al. 2023, arXiv 2305.08891,
    /// section 3.3: every sampler starts at t = T - 1, where DDIM's leading spacing starts at T - T/n and
    /// ignores the signal the model expects there), and no clipping of the predicted `x0`.
    /// Measured on `unet-small` after 1,200 steps on Fashion-MNIST (Fréchet distance in the Fashion-MNIST
    /// classifier's features, 1,000 samples): DDIM 50 gives 5.11 with leading spacing and clipping, 4.48
    /// with trailing spacing, 3.93 with trailing spacing and no clipping, beside 3.88 for DPM-Solver++ 20.
    /// `cargo xtask bench quality` measures the default run built on it (bench/quality.md).
    pub fn v_cosine() -> Self {
        Self {
            beta_schedule: BetaSchedule::SquaredcosCapV2,
            prediction_type: PredictionType::VPrediction,
            timestep_spacing: Some(TimestepSpacing::Trailing),
            clip_sample: false,
            use_clipped_model_output: true,
            ..Self::default()
        }
    }

    /// Stable Diffusion v1: `scaled_linear` 0.00085..0.012, leading spacing with offset 1, no clipping,
    /// `set_alpha_to_one = false`, from
    /// <https://huggingface.co/runwayml/stable-diffusion-v1-5/blob/main/scheduler/scheduler_config.json>.
    pub fn stable_diffusion_v1() -> Self {
        Self {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            timestep_spacing: Some(TimestepSpacing::Leading),
            steps_offset: 1,
            clip_sample: false,
            set_alpha_to_one: false,
            ..Self::default()
        }
    }

    /// Stable Diffusion 2.x at 768px: v1's schedule with v-prediction, from
    /// <https://huggingface.co/stabilityai/stable-diffusion-2-1/blob/main/scheduler/scheduler_config.json>.
    pub fn stable_diffusion_v2() -> Self {
        Self { prediction_type: PredictionType::VPrediction, ..Self::stable_diffusion_v1() }
    }

    /// Check every field, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(DiffusionError::Config(msg));
        if self.num_train_timesteps < 2 {
            return bad(format!("num_train_timesteps must be at least 2, got {}", self.num_train_timesteps));
        }
        if self.beta_schedule != BetaSchedule::SquaredcosCapV2
            && !(self.beta_start > 0.0 && self.beta_start <= self.beta_end && self.beta_end < 1.0)
        {
            return bad(format!(
                "{} betas need 0 < beta_start <= beta_end < 1, got beta_start {} and beta_end {}",
                self.beta_schedule, self.beta_start, self.beta_end
            ));
        }
        if !(self.clip_sample_range > 0.0 && self.clip_sample_range.is_finite()) {
            return bad(format!("clip_sample_range must be positive, got {}", self.clip_sample_range));
        }
        if !(0.0..=1.0).contains(&self.eta) {
            return bad(format!("eta must be in 0..=1, got {}", self.eta));
        }
        if let Some(f) = &self.flow {
            f.validate()?;
        }
        Ok(())
    }
}

/// How `use_dynamic_shifting` turns `mu` into a shift (diffusers' `time_shift_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeShift {
    /// `e^mu / (e^mu + (1 / t - 1))`.
    #[default]
    Exponential,
    /// `mu / (mu + (1 / t - 1))`.
    Linear,
}

/// A flow-matching scheduler's configuration: every key diffusers 0.42.1 writes for
/// `FlowMatchEulerDiscreteScheduler` (the Heun scheduler uses `num_train_timesteps` and `shift`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowMatchConfig {
    pub num_train_timesteps: usize,
    /// The static shift `shift * s / (1 + (shift - 1) s)` of every sigma (SD3: 3.0).
    pub shift: f64,
    /// Shift by `mu` (from the image size, [`calculate_shift`]) instead of `shift` (Flux).
    pub use_dynamic_shifting: bool,
    pub base_shift: Option<f64>,
    pub max_shift: Option<f64>,
    pub base_image_seq_len: usize,
    pub max_image_seq_len: usize,
    /// Sample with `1 - sigma` (Mochi).
    pub invert_sigmas: bool,
    /// Stretch the schedule so that its last sigma is this.
    pub shift_terminal: Option<f64>,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    /// Beta-distribution sigmas (Lee et al., arXiv 2407.12173); refused: genlab does not have them yet.
    pub use_beta_sigmas: bool,
    pub time_shift_type: TimeShift,
    /// Each step re-noises the predicted x0 to the next sigma instead of an Euler step.
    pub stochastic_sampling: bool,
}

impl Default for FlowMatchConfig {
    fn default() -> Self {
        FlowMatchConfig {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: Some(0.5),
            max_shift: Some(1.15),
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            invert_sigmas: false,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            time_shift_type: TimeShift::Exponential,
            stochastic_sampling: false,
        }
    }
}

impl FlowMatchConfig {
    /// SD3's scheduler: shift 3.
    pub fn sd3() -> Self {
        FlowMatchConfig { shift: 3.0, ..Self::default() }
    }

    /// A diffusers `scheduler_config.json` (`source` names it in errors): every key must be one of
    /// this struct's, or metadata starting with `_` (`_class_name`, `_diffusers_version`).
    pub fn from_json(value: &serde_json::Value, source: &str) -> Result<Self> {
        let bad = |m: String| DiffusionError::Config(format!("{source}: {m}"));
        let serde_json::Value::Object(map) = value else {
            return Err(bad("expected a JSON object".into()));
        };
        let kept: serde_json::Map<String, serde_json::Value> =
            map.iter().filter(|(k, _)| !k.starts_with('_')).map(|(k, v)| (k.clone(), v.clone())).collect();
        let cfg: Self = serde_json::from_value(serde_json::Value::Object(kept)).map_err(|e| {
            bad(format!(
                "{e} (genlab's flow-matching schedulers take the keys of diffusers' FlowMatchEulerDiscreteScheduler)"
            ))
        })?;
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DiffusionError::Config(m));
        if self.num_train_timesteps == 0 {
            return bad("num_train_timesteps must be at least 1".into());
        }
        if !(self.shift > 0.0 && self.shift.is_finite()) {
            return bad(format!("shift must be a positive number, got {}", self.shift));
        }
        let n =
            [self.use_karras_sigmas, self.use_exponential_sigmas, self.use_beta_sigmas].iter().filter(|b| **b).count();
        if n > 1 {
            return bad("only one of use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas can be set".into());
        }
        if self.use_beta_sigmas {
            return bad(
                "use_beta_sigmas: true is not supported (genlab has Karras and exponential sigmas for flow matching)"
                    .into(),
            );
        }
        if let Some(t) = self.shift_terminal.filter(|t| !(*t > 0.0 && *t < 1.0)) {
            return bad(format!("shift_terminal must be in (0, 1), got {t}"));
        }
        if self.use_dynamic_shifting && (self.base_shift.is_none() || self.max_shift.is_none()) {
            return bad("use_dynamic_shifting needs base_shift and max_shift".into());
        }
        Ok(())
    }

    /// The shift `mu` for an image of `image_seq_len` latent tokens, interpolated linearly between
    /// (`base_image_seq_len`, `base_shift`) and (`max_image_seq_len`, `max_shift`).
    pub fn mu_for(&self, image_seq_len: usize) -> f64 {
        calculate_shift(
            image_seq_len,
            self.base_image_seq_len,
            self.max_image_seq_len,
            self.base_shift.unwrap_or(0.5),
            self.max_shift.unwrap_or(1.15),
        )
    }

    /// The training sigmas (float32, as diffusers' `__init__`): `linspace(1, N, N) / N`, reversed,
    /// shifted unless the shift is dynamic.
    pub(crate) fn train_sigmas(&self, shift_always: bool) -> Vec<f32> {
        let n = self.num_train_timesteps;
        let (shift, a) = (self.shift as f32, (self.shift - 1.0) as f32);
        linspace(1.0, n as f64, n)
            .into_iter()
            .rev()
            .map(|t| {
                let s = t as f32 / n as f32;
                if shift_always || !self.use_dynamic_shifting {
                    shift * s / (1.0 + a * s)
                } else {
                    s
                }
            })
            .collect()
    }
}

/// The Flux and SD3 pipelines' `calculate_shift`: `mu` for `image_seq_len` tokens.
pub fn calculate_shift(
    image_seq_len: usize,
    base_seq_len: usize,
    max_seq_len: usize,
    base_shift: f64,
    max_shift: f64,
) -> f64 {
    let m = (max_shift - base_shift) / (max_seq_len as f64 - base_seq_len as f64);
    let b = base_shift - m * base_seq_len as f64;
    image_seq_len as f64 * m + b
}

/// `torch.linspace` in f64: `n` evenly spaced values from `start` to `end` inclusive.
fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    (0..n).map(|i| if i == n - 1 { end } else { start + i as f64 * step }).collect()
}

/// The cosine schedule's betas (Nichol and Dhariwal 2021, eq. 17), `1 - abar(t2) / abar(t1)` capped at
/// `max_beta`. The times are float divisions: dividing the integers `i / n` makes every beta but the last 0.
fn cosine_betas(n: usize, max_beta: f64) -> Vec<f64> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta)
        })
        .collect()
}

/// Rescale betas so that the last cumulative alpha is exactly 0 and the first is unchanged
/// (Lin et al. 2023, arXiv 2305.08891, Algorithm 1; diffusers' `rescale_zero_terminal_snr`).
fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let mut sqrt_abar: Vec<f64> = cumprod(betas).iter().map(|a| a.sqrt()).collect();
    let (first, last) = (sqrt_abar[0], sqrt_abar[sqrt_abar.len() - 1]);
    for s in sqrt_abar.iter_mut() {
        *s = (*s - last) * first / (first - last);
    }
    let abar: Vec<f64> = sqrt_abar.iter().map(|s| s * s).collect();
    let mut out = Vec::with_capacity(abar.len());
    out.push(1.0 - abar[0]);
    out.extend(abar.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}

/// Cumulative product of `1 - beta`.
fn cumprod(betas: &[f64]) -> Vec<f64> {
    betas
        .iter()
        .scan(1.0, |acc, b| {
            *acc *= 1.0 - b;
            Some(*acc)
        })
        .collect()
}

/// The betas and cumulative alphas of a [`ScheduleConfig`], and the conversions that need them.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    config: ScheduleConfig,
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
}

impl NoiseSchedule {
    pub fn new(config: &ScheduleConfig) -> Result<Self> {
        config.validate()?;
        let n = config.num_train_timesteps;
        let (start, end) = (config.beta_start, config.beta_end);
        let mut betas = match config.beta_schedule {
            BetaSchedule::Linear => linspace(start, end, n),
            BetaSchedule::ScaledLinear => linspace(start.sqrt(), end.sqrt(), n).into_iter().map(|b| b * b).collect(),
            BetaSchedule::SquaredcosCapV2 => cosine_betas(n, 0.999),
            BetaSchedule::Sigmoid => {
                linspace(-6.0, 6.0, n).into_iter().map(|x| (end - start) / (1.0 + (-x).exp()) + start).collect()
            }
        };
        if config.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas_cumprod = cumprod(&betas);
        Ok(Self { config: config.clone(), betas, alphas_cumprod })
    }

    pub fn config(&self) -> &ScheduleConfig {
        &self.config
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// `beta_t` for t in `0..num_train_timesteps`.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// `abar_t = prod_{s <= t} (1 - beta_s)`.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// Signal-to-noise ratio `abar_t / (1 - abar_t)` per training timestep.
    pub fn snr(&self) -> Vec<f64> {
        self.alphas_cumprod.iter().map(|a| a / (1.0 - a)).collect()
    }

    /// The cumulative alphas at integer training timesteps, one per batch element.
    fn abar_at(&self, timesteps: &Tensor) -> Result<Vec<f64>> {
        tensor_values(timesteps)?
            .into_iter()
            .map(|t| Ok(self.alphas_cumprod[train_index(t, self.num_train_timesteps())?]))
            .collect()
    }

    /// Per-element `(sqrt(abar), sqrt(1 - abar))`, shaped to broadcast against `like`.
    fn sqrt_coefs(&self, timesteps: &Tensor, like: &Tensor) -> Result<(Tensor, Tensor)> {
        let abar = self.abar_at(timesteps)?;
        let sa: Vec<f64> = abar.iter().map(|a| a.sqrt()).collect();
        let sb: Vec<f64> = abar.iter().map(|a| (1.0 - a).sqrt()).collect();
        Ok((per_sample(&sa, like)?, per_sample(&sb, like)?))
    }

    /// The forward process `q(x_t | x_0)`: `sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`.
    ///
    /// # Shapes
    /// - `original`, `noise`: [batch, ...] -> [batch, ...]
    /// - `timesteps`: [batch] (or one timestep for all), integer training timesteps
    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        same_shape(original, noise, "noise")?;
        let (sa, sb) = self.sqrt_coefs(timesteps, original)?;
        Ok(original * &sa + noise * &sb)
    }

    /// What a network of this schedule's prediction type should output for `add_noise(x0, noise, t)`.
    ///
    /// # Shapes
    /// - `original`, `noise`: [batch, ...] -> [batch, ...]
    /// - `timesteps`: [batch] (or one timestep for all)
    pub fn training_target(&self, original: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        same_shape(original, noise, "noise")?;
        Ok(match self.config.prediction_type {
            PredictionType::Epsilon => noise.shallow_clone(),
            PredictionType::Sample => original.shallow_clone(),
            PredictionType::VPrediction => {
                let (sa, sb) = self.sqrt_coefs(timesteps, original)?;
                noise * &sa - original * &sb
            }
        })
    }

    /// The predicted clean sample `x0` and noise `eps` from a model output at `sample = x_t`.
    ///
    /// # Shapes
    /// - `model_output`, `sample`: [batch, ...] -> ([batch, ...], [batch, ...])
    /// - `timesteps`: [batch] (or one timestep for all)
    pub fn split_prediction(
        &self,
        model_output: &Tensor,
        sample: &Tensor,
        timesteps: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        same_shape(sample, model_output, "model_output")?;
        let (sa, sb) = self.sqrt_coefs(timesteps, sample)?;
        Ok(split(self.config.prediction_type, model_output, sample, &sa, &sb))
    }

    /// Min-SNR-gamma loss weights (Hang et al. 2023, arXiv 2303.09556, section 3.4) for the plain MSE
    /// of this schedule's prediction type: `min(snr, gamma)` for x0, `min(snr, gamma) / snr` for
    /// epsilon (1 at zero SNR, its limit) and `min(snr, gamma) / (snr + 1)` for v. The paper uses gamma 5.
    ///
    /// # Shapes
    /// - `timesteps`: [batch] -> [batch] (f32, on the timesteps' device)
    pub fn min_snr_weights(&self, timesteps: &Tensor, gamma: f64) -> Result<Tensor> {
        if !(gamma > 0.0 && gamma.is_finite()) {
            return Err(DiffusionError::Config(format!("min-SNR gamma must be positive, got {gamma}")));
        }
        let weights: Vec<f32> = self
            .abar_at(timesteps)?
            .into_iter()
            .map(|a| {
                let snr = a / (1.0 - a);
                let w = match self.config.prediction_type {
                    PredictionType::Sample => snr.min(gamma),
                    PredictionType::Epsilon => (gamma / snr).min(1.0),
                    PredictionType::VPrediction => snr.min(gamma) / (snr + 1.0),
                };
                w as f32
            })
            .collect();
        Ok(Tensor::from_slice(&weights).f_to_device(timesteps.device())?)
    }
}

impl PredictionType {
    /// The predicted `(x0, eps)` at a noise level with cumulative alpha `alpha_bar`
    /// (diffusers' DDIM `step`, section 1). For epsilon, `eps` is the model output itself.
    ///
    /// # Shapes
    /// - `model_output`, `sample`: [batch, ...] -> ([batch, ...], [batch, ...])
    pub fn split(self, model_output: &Tensor, sample: &Tensor, alpha_bar: f64) -> (Tensor, Tensor) {
        split(self, model_output, sample, alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt())
    }
}

/// `(x0, eps)` from a prediction, with `sa = sqrt(abar)` and `sb = sqrt(1 - abar)` as scalars or
/// broadcastable tensors.
fn split<C: Copy>(pred: PredictionType, out: &Tensor, x: &Tensor, sa: C, sb: C) -> (Tensor, Tensor)
where
    for<'a> &'a Tensor: Mul<C, Output = Tensor> + Div<C, Output = Tensor>,
{
    match pred {
        PredictionType::Epsilon => (&(x - &(out * sb)) / sa, out.shallow_clone()),
        PredictionType::Sample => (out.shallow_clone(), &(x - &(out * sa)) / sb),
        PredictionType::VPrediction => (x * sa - out * sb, out * sa + x * sb),
    }
}

/// The values of a timesteps tensor (any kind, any device), flattened.
pub(crate) fn tensor_values(timesteps: &Tensor) -> Result<Vec<f64>> {
    let flat = timesteps.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?.f_flatten(0, -1)?;
    Ok(Vec::<f64>::try_from(&flat)?)
}

/// An integer training timestep as an index into the schedule.
pub(crate) fn train_index(t: f64, num_train_timesteps: usize) -> Result<usize> {
    if t.fract() == 0.0 && t >= 0.0 && t < num_train_timesteps as f64 {
        Ok(t as usize)
    } else {
        Err(DiffusionError::TrainTimestep { timestep: t, expected: format!("an integer in 0..{num_train_timesteps}") })
    }
}

/// One coefficient per batch element, as a tensor of `like`'s kind and device shaped
/// `[values.len(), 1, ..., 1]` so that it broadcasts against `like`.
pub(crate) fn per_sample(values: &[f64], like: &Tensor) -> Result<Tensor> {
    let size = like.size();
    let batch = size.first().copied().unwrap_or(0);
    if size.is_empty() || (values.len() != 1 && values.len() as i64 != batch) {
        return Err(DiffusionError::Shape(format!(
            "{} timesteps for a sample of shape {size:?}: expected one per batch element or one for all",
            values.len()
        )));
    }
    let mut shape = vec![1i64; size.len()];
    shape[0] = values.len() as i64;
    Ok(Tensor::from_slice(values).f_to_kind(like.kind())?.f_to_device(like.device())?.f_reshape(&shape)?)
}

pub(crate) fn same_shape(sample: &Tensor, other: &Tensor, name: &str) -> Result<()> {
    if sample.size() == other.size() {
        Ok(())
    } else {
        Err(DiffusionError::Shape(format!("{name} has shape {:?}, the sample {:?}", other.size(), sample.size())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_through_json_with_diffusers_names() {
        let cfg = ScheduleConfig::stable_diffusion_v2();
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(json.contains("\"scaled_linear\"") && json.contains("\"v_prediction\""), "{json}");
        let back: ScheduleConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg);
        let partial: ScheduleConfig = serde_json::from_str(r#"{"beta_schedule": "cosine"}"#).unwrap();
        assert_eq!(partial, ScheduleConfig::improved_ddpm_cosine());
    }

    #[test]
    fn names_parse_and_reject_with_the_list() {
        assert_eq!("squaredcos_cap_v2".parse::<BetaSchedule>().unwrap(), BetaSchedule::SquaredcosCapV2);
        assert_eq!("v_prediction".parse::<PredictionType>().unwrap(), PredictionType::VPrediction);
        assert_eq!("trailing".parse::<TimestepSpacing>().unwrap(), TimestepSpacing::Trailing);
        let err = "quadratic".parse::<BetaSchedule>().unwrap_err().to_string();
        assert!(err.contains("quadratic") && err.contains("scaled_linear"), "{err}");
    }

    #[test]
    fn default_is_the_ddpm_paper_not_stable_diffusion() {
        let d = ScheduleConfig::default();
        assert_eq!((d.num_train_timesteps, d.beta_start, d.beta_end), (1000, 1e-4, 0.02));
        assert_eq!(d.beta_schedule, BetaSchedule::Linear);
        assert_eq!(d.prediction_type, PredictionType::Epsilon);
    }

    #[test]
    fn invalid_configs_are_errors() {
        let bad = [
            ScheduleConfig { num_train_timesteps: 1, ..Default::default() },
            ScheduleConfig { beta_start: 0.0, ..Default::default() },
            ScheduleConfig { beta_start: 0.03, ..Default::default() },
            ScheduleConfig { beta_end: 1.0, ..Default::default() },
            ScheduleConfig { eta: 1.5, ..Default::default() },
            ScheduleConfig { clip_sample_range: 0.0, ..Default::default() },
        ];
        for cfg in bad {
            assert!(matches!(NoiseSchedule::new(&cfg), Err(DiffusionError::Config(_))), "{cfg:?}");
        }
    }

    #[test]
    fn split_inverts_every_training_target() {
        let x0 = Tensor::from_slice(&[0.5f32, -0.25, 0.75, 0.1]).reshape([2, 2]);
        let noise = Tensor::from_slice(&[0.3f32, 1.2, -0.7, 0.4]).reshape([2, 2]);
        let t = Tensor::from_slice(&[10i64, 700]);
        for pred in [PredictionType::Epsilon, PredictionType::Sample, PredictionType::VPrediction] {
            let s = NoiseSchedule::new(&ScheduleConfig { prediction_type: pred, ..Default::default() }).unwrap();
            let xt = s.add_noise(&x0, &noise, &t).unwrap();
            let target = s.training_target(&x0, &noise, &t).unwrap();
            let (px0, peps) = s.split_prediction(&target, &xt, &t).unwrap();
            let err = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max()).unwrap();
            assert!(err(&px0, &x0) < 1e-4 && err(&peps, &noise) < 1e-4, "{pred}");
        }
    }

    #[test]
    fn min_snr_weights_follow_hang_et_al() {
        let t = Tensor::from_slice(&[0i64, 500, 999]);
        let cfg = |p| ScheduleConfig { prediction_type: p, ..Default::default() };
        let s = NoiseSchedule::new(&cfg(PredictionType::Epsilon)).unwrap();
        let snr = s.snr();
        let w = |p| {
            let s = NoiseSchedule::new(&cfg(p)).unwrap();
            Vec::<f32>::try_from(s.min_snr_weights(&t, 5.0).unwrap()).unwrap()
        };
        let (eps, x0, v) = (w(PredictionType::Epsilon), w(PredictionType::Sample), w(PredictionType::VPrediction));
        for (i, &ti) in [0usize, 500, 999].iter().enumerate() {
            let r = snr[ti];
            assert!((eps[i] as f64 - r.min(5.0) / r).abs() < 1e-6);
            assert!((x0[i] as f64 - r.min(5.0)).abs() < 1e-5);
            assert!((v[i] as f64 - r.min(5.0) / (r + 1.0)).abs() < 1e-6);
        }
        // t = 0 has SNR ~ 1e4: epsilon weight gamma / snr; t = 999 has SNR < 5: weight 1.
        assert!(eps[0] < 1e-3 && eps[2] == 1.0);
        let zero = NoiseSchedule::new(&ScheduleConfig { rescale_betas_zero_snr: true, ..Default::default() }).unwrap();
        let last = Vec::<f32>::try_from(zero.min_snr_weights(&Tensor::from_slice(&[999i64]), 5.0).unwrap()).unwrap();
        assert_eq!(last, vec![1.0], "epsilon weight at zero SNR is its limit, not NaN");
        assert!(s.min_snr_weights(&t, 0.0).is_err());
    }

    #[test]
    fn bad_training_timesteps_and_shapes_are_errors() {
        let s = NoiseSchedule::new(&ScheduleConfig::default()).unwrap();
        let x = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
        for t in
            [Tensor::from_slice(&[0i64, 1000]), Tensor::from_slice(&[-1i64, 3]), Tensor::from_slice(&[0.5f64, 3.0])]
        {
            assert!(matches!(s.add_noise(&x, &x, &t), Err(DiffusionError::TrainTimestep { .. })));
        }
        let t3 = Tensor::from_slice(&[1i64, 2, 3]);
        assert!(matches!(s.add_noise(&x, &x, &t3), Err(DiffusionError::Shape(_))));
        let y = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
        assert!(matches!(s.add_noise(&x, &y, &t3), Err(DiffusionError::Shape(_))));
    }
}
