//! Schedulers: the reverse-process steps that turn a model output into the previous sample.
//!
//! One trait, [`Scheduler`], in the shape of candle's stable-diffusion `schedulers.rs`
//! (`timesteps`, `scale_model_input`, `step`, `add_noise`, `init_noise_sigma`), with six
//! implementations that follow diffusers' `schedulers/` files:
//! - [`Ddpm`]: Ho et al. 2020, arXiv 2006.11239 (`scheduling_ddpm.py`);
//! - [`Ddim`]: Song, Meng and Ermon, "Denoising Diffusion Implicit Models", arXiv 2010.02502
//!   (`scheduling_ddim.py`);
//! - [`DpmSolverMultistep`]: DPM-Solver++(2M), Lu et al., arXiv 2211.01095
//!   (`scheduling_dpmsolver_multistep.py`);
//! - [`Euler`], [`EulerAncestral`], [`Heun`]: Karras et al., "Elucidating the Design Space of
//!   Diffusion-Based Generative Models", arXiv 2206.00364, Algorithms 1 and 2
//!   (`scheduling_euler_discrete.py`, `scheduling_euler_ancestral_discrete.py`,
//!   `scheduling_heun_discrete.py`).
//!
//! Two more sample flow-matching (rectified-flow) models, whose network predicts a velocity:
//! [`FlowMatchEuler`] and [`FlowMatchHeun`] (`scheduling_flow_match_euler_discrete.py`,
//! `scheduling_flow_match_heun_discrete.py`), configured by a [`FlowMatchConfig`].
//!
//! Timesteps are `f64` for every scheduler. DDPM, DDIM and DPM-Solver++ use integer training
//! timesteps, which f64 holds exactly; the Euler family's linspace timesteps are fractional
//! (999 / 6 * k for 7 steps) and the model must see them unrounded to match the sigma it is stepped
//! with. An integer type would force rounding there; a float type costs the integer schedulers one
//! check (`t` must be an integer in range), which they make.
//!
//! Every method that takes a timestep returns a `Result`: a timestep that is not in the schedule,
//! a wrong batch size or calling `step` past the end are errors, never panics.
//! Stochastic steps (DDPM, DDIM with eta > 0, Euler ancestral) draw from libtorch's global generator,
//! in diffusers' order, so `tch::manual_seed` reproduces `torch.manual_seed` runs of diffusers.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{DiffusionError, Result};
use crate::schedule::{
    per_sample, same_shape, tensor_values, NoiseSchedule, PredictionType, ScheduleConfig, TimestepSpacing,
};

mod ddim;
mod ddpm;
mod dpm_solver;
mod euler;
mod flow_match;
mod heun;

pub use crate::schedule::{calculate_shift, FlowMatchConfig, TimeShift};
pub use ddim::Ddim;
pub use ddpm::Ddpm;
pub use dpm_solver::DpmSolverMultistep;
pub use euler::{Euler, EulerAncestral};
pub use flow_match::{FlowMatchEuler, FlowMatchHeun};
pub use heun::Heun;

/// A sampler's view of a noise schedule. A denoising loop is:
///
/// ```no_run
/// # use genlab_diffusion::{build, Result, ScheduleConfig, SchedulerKind};
/// # use tch::{Device, Kind, Tensor};
/// # fn model(x: &Tensor, t: f64) -> Tensor { x * 0.0 }
/// # fn main() -> Result<()> {
/// let mut scheduler = build(SchedulerKind::Ddim, &ScheduleConfig::default(), 50)?;
/// let mut x = Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu)) * scheduler.init_noise_sigma();
/// for t in scheduler.timesteps().to_vec() {
///     let eps = model(&scheduler.scale_model_input(&x, t)?, t);
///     x = scheduler.step(&eps, t, &x)?;
/// }
/// # Ok(()) }
/// ```
pub trait Scheduler: Send {
    /// The timesteps to visit, in order (training-time units, decreasing; Heun repeats all but the first).
    fn timesteps(&self) -> &[f64];

    /// Choose `num_inference_steps` timesteps and reset any multistep state.
    /// 0 or more than `num_train_timesteps` steps is [`DiffusionError::InferenceSteps`].
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()>;

    /// The model's input at `timestep` (sigma-space schedulers divide by `sqrt(sigma^2 + 1)`).
    ///
    /// # Shapes
    /// - `sample`: [batch, ...] -> [batch, ...]
    fn scale_model_input(&self, sample: &Tensor, timestep: f64) -> Result<Tensor>;

    /// One reverse step: the sample at the next timestep. `&mut self` because multistep solvers
    /// keep a history and the k-diffusion schedulers count their steps.
    ///
    /// # Shapes
    /// - `model_output`, `sample`: [batch, ...] -> [batch, ...]
    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor) -> Result<Tensor>;

    /// The forward process at per-element training timesteps, in this scheduler's parameterisation
    /// (`sqrt(abar) x0 + sqrt(1 - abar) noise`, or `x0 + sigma noise` for the Euler family).
    ///
    /// # Shapes
    /// - `original`, `noise`: [batch, ...] -> [batch, ...]
    /// - `timesteps`: [batch] (or one timestep for all)
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Result<Tensor>;

    /// The standard deviation of the initial noise (1 for variance-preserving schedulers).
    fn init_noise_sigma(&self) -> f64;
}

/// The schedulers [`build`] knows, by their command-line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchedulerKind {
    #[serde(rename = "ddpm")]
    Ddpm,
    #[serde(rename = "ddim")]
    Ddim,
    #[serde(rename = "dpmpp-2m")]
    DpmPp2m,
    #[serde(rename = "euler")]
    Euler,
    #[serde(rename = "euler-a")]
    EulerAncestral,
    #[serde(rename = "heun")]
    Heun,
    /// Flow-matching models only.
    #[serde(rename = "flow-euler")]
    FlowEuler,
    #[serde(rename = "flow-heun")]
    FlowHeun,
}

impl SchedulerKind {
    /// The denoising-diffusion samplers.
    pub const ALL: [SchedulerKind; 6] = [
        SchedulerKind::Ddpm,
        SchedulerKind::Ddim,
        SchedulerKind::DpmPp2m,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::Heun,
    ];
    /// The flow-matching samplers.
    pub const FLOW: [SchedulerKind; 2] = [SchedulerKind::FlowEuler, SchedulerKind::FlowHeun];

    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Ddpm => "ddpm",
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::DpmPp2m => "dpmpp-2m",
            SchedulerKind::Euler => "euler",
            SchedulerKind::EulerAncestral => "euler-a",
            SchedulerKind::Heun => "heun",
            SchedulerKind::FlowEuler => "flow-euler",
            SchedulerKind::FlowHeun => "flow-heun",
        }
    }

    /// The flow-matching samplers, for models whose schedule has `flow` set.
    pub fn is_flow(self) -> bool {
        matches!(self, SchedulerKind::FlowEuler | SchedulerKind::FlowHeun)
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SchedulerKind {
    type Err = DiffusionError;
    fn from_str(s: &str) -> Result<Self> {
        let all = || Self::ALL.into_iter().chain(Self::FLOW);
        all().find(|k| k.name() == s).ok_or_else(|| DiffusionError::UnknownName {
            what: "scheduler",
            found: s.to_string(),
            expected: all().map(Self::name).collect::<Vec<_>>().join(", "),
        })
    }
}

/// The timesteps image-to-image and inpainting visit at `strength` in (0, 1] (SDEdit; diffusers'
/// `get_timesteps`): the last `floor(n * strength)` of the scheduler's `n` distinct timesteps, starting where
/// a second-order scheduler, which lists its timesteps twice, expects a loop begun mid-schedule
/// (diffusers' `timesteps[t_start * order:]`). Its first element is the timestep to noise the input to.
pub fn strength_timesteps(scheduler: &dyn Scheduler, strength: f64) -> Result<Vec<f64>> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(DiffusionError::Config(format!("strength must be in (0, 1], got {strength}")));
    }
    let all = scheduler.timesteps();
    let mut distinct = all.to_vec();
    distinct.dedup();
    let run = ((distinct.len() as f64 * strength).floor() as usize).min(distinct.len());
    if run == 0 {
        return Err(DiffusionError::Config(format!(
            "strength {strength} of {} steps leaves no step to take (no denoising step would run): raise the strength or the steps",
            distinct.len()
        )));
    }
    let start = distinct[distinct.len() - run];
    let from = all.iter().rposition(|&t| t == start).unwrap_or(0);
    Ok(all[from..].to_vec())
}

/// A scheduler of `kind` over `config`'s schedule, with `steps` inference timesteps set. The
/// flow-matching kinds need a flow-matching schedule (`config.flow`), which only they sample.
pub fn build(kind: SchedulerKind, config: &ScheduleConfig, steps: usize) -> Result<Box<dyn Scheduler>> {
    let mut s: Box<dyn Scheduler> = match (kind, &config.flow) {
        (SchedulerKind::FlowEuler, Some(flow)) => Box::new(FlowMatchEuler::new(flow)?),
        (SchedulerKind::FlowHeun, Some(flow)) => Box::new(FlowMatchHeun::new(flow)?),
        (_, Some(_)) => {
            return Err(DiffusionError::Config(format!(
                "{kind} samples denoising-diffusion models; this is a flow-matching model: use flow-euler or flow-heun"
            )))
        }
        (SchedulerKind::FlowEuler | SchedulerKind::FlowHeun, None) => {
            return Err(DiffusionError::Config(format!(
                "{kind} samples flow-matching models; this is a denoising-diffusion model: use ddpm, ddim, dpmpp-2m, \
                 euler, euler-a or heun"
            )))
        }
        (SchedulerKind::Ddpm, None) => Box::new(Ddpm::new(config)?),
        (SchedulerKind::Ddim, None) => Box::new(Ddim::new(config)?),
        (SchedulerKind::DpmPp2m, None) => Box::new(DpmSolverMultistep::new(config)?),
        (SchedulerKind::Euler, None) => Box::new(Euler::new(config)?),
        (SchedulerKind::EulerAncestral, None) => Box::new(EulerAncestral::new(config)?),
        (SchedulerKind::Heun, None) => Box::new(Heun::new(config)?),
    };
    s.set_timesteps(steps)?;
    Ok(s)
}

/// DDPM's and DDIM's timesteps: integer training timesteps, leading spacing unless the
/// configuration says otherwise, checked for repeats and range.
fn integer_timesteps(name: &'static str, schedule: &NoiseSchedule, steps: usize) -> Result<Vec<f64>> {
    let cfg = schedule.config();
    let t = schedule.num_train_timesteps();
    check_steps(steps, t)?;
    let spacing = cfg.timestep_spacing.unwrap_or(TimestepSpacing::Leading);
    let timesteps = spaced_timesteps(spacing, t, steps, cfg.steps_offset, true);
    check_timesteps(name, &timesteps, steps, t, " (steps_offset pushes leading timesteps past the end)")?;
    Ok(timesteps)
}

fn check_steps(steps: usize, num_train_timesteps: usize) -> Result<()> {
    if steps == 0 || steps > num_train_timesteps {
        return Err(DiffusionError::InferenceSteps { steps, num_train_timesteps });
    }
    Ok(())
}

/// numpy's `linspace(start, stop, n)` (the last value is `stop` exactly).
fn np_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    (0..n).map(|i| if i == n - 1 { stop } else { i as f64 * step + start }).collect()
}

/// The inference timesteps shared by DDPM, DDIM and the Euler family (diffusers' `set_timesteps`),
/// decreasing. numpy rounds half to even, hence `round_ties_even`.
///
/// Trailing spacing is `round(T - i T / n) - 1` for `i < n`. diffusers computes it with
/// `np.arange(T, 0, -T / n)`, which for some n (61 of 1000, for one) yields n + 1 values ending in -1;
/// that is not reproduced.
fn spaced_timesteps(spacing: TimestepSpacing, t: usize, n: usize, offset: usize, integer: bool) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (t - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|x| if integer { x.round_ties_even() } else { x as f32 as f64 })
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = t / n;
            (0..n).rev().map(|i| (i * ratio + offset) as f64).collect()
        }
        TimestepSpacing::Trailing => trailing(t, n),
    }
}

fn trailing(t: usize, n: usize) -> Vec<f64> {
    let ratio = t as f64 / n as f64;
    (0..n).map(|i| (t as f64 - i as f64 * ratio).round_ties_even() - 1.0).collect()
}

/// Timesteps must strictly decrease inside the training range, or steps would repeat or index
/// past the schedule.
fn check_timesteps(name: &'static str, timesteps: &[f64], steps: usize, t: usize, hint: &'static str) -> Result<()> {
    // Name the first fault only: a list of a thousand timesteps would bury it.
    let out_of_range = timesteps.iter().position(|&x| !(x >= 0.0 && x <= (t - 1) as f64));
    let not_decreasing = timesteps.windows(2).position(|w| w[1] >= w[0]);
    let problem = match (out_of_range, not_decreasing) {
        (Some(i), _) => format!("{} at position {i} is outside the range", timesteps[i]),
        (None, Some(i)) => format!("{} follows {} at position {}", timesteps[i + 1], timesteps[i], i + 1),
        (None, None) => return Ok(()),
    };
    Err(DiffusionError::DegenerateTimesteps { scheduler: name, steps, problem, num_train_timesteps: t, hint })
}

/// Where a sigma-indexed scheduler is in its schedule at timestep `t`: its own count of steps once
/// stepping has begun, else `t`'s place in `timesteps` (diffusers' `_init_step_index`); an error
/// before `set_timesteps` or past the last step.
fn step_position(name: &'static str, timesteps: &[f64], step_index: Option<usize>, t: f64) -> Result<usize> {
    if timesteps.is_empty() {
        return Err(DiffusionError::NotInitialized { scheduler: name });
    }
    let i = match step_index {
        Some(i) => i,
        None => index_for_timestep(name, timesteps, t)?,
    };
    if i >= timesteps.len() {
        return Err(DiffusionError::PastLastStep { scheduler: name, calls: i + 1, len: timesteps.len() });
    }
    Ok(i)
}

/// diffusers' `index_for_timestep`: the position of `t` in `timesteps`, the second one if `t`
/// appears twice (Heun's repeated timesteps, so that a loop started mid-schedule does not skip a step).
fn index_for_timestep(name: &'static str, timesteps: &[f64], t: f64) -> Result<usize> {
    let mut hits = timesteps.iter().enumerate().filter(|(_, &x)| x == t).map(|(i, _)| i);
    match (hits.next(), hits.next()) {
        (Some(_), Some(second)) => Ok(second),
        (Some(first), None) => Ok(first),
        _ => Err(DiffusionError::UnknownTimestep { scheduler: name, timestep: t, timesteps: timesteps.to_vec() }),
    }
}

/// Compute in at least f32, as diffusers' sigma-space schedulers do for half-precision samples.
fn upcast(x: &Tensor) -> Tensor {
    match x.kind() {
        Kind::Half | Kind::BFloat16 => x.to_kind(Kind::Float),
        _ => x.shallow_clone(),
    }
}

/// The k-diffusion noise levels `sigma_t = sqrt((1 - abar_t) / abar_t)` per training timestep.
/// A zero-terminal-SNR schedule's last `abar` is replaced by 2^-24, as diffusers does, to keep sigma finite.
fn train_sigmas(schedule: &NoiseSchedule) -> Vec<f64> {
    schedule
        .alphas_cumprod()
        .iter()
        .map(|&a| {
            let a = if a == 0.0 { 2f64.powi(-24) } else { a };
            ((1.0 - a) / a).sqrt()
        })
        .collect()
}

/// `np.interp(t, arange(len), values)`, clamped at both ends.
fn interp(values: &[f64], t: f64) -> f64 {
    let last = values.len() - 1;
    if t <= 0.0 {
        return values[0];
    }
    if t >= last as f64 {
        return values[last];
    }
    let lo = t.floor() as usize;
    let w = t - lo as f64;
    values[lo] + w * (values[lo + 1] - values[lo])
}

/// The predicted clean sample in sigma space (`x = x0 + sigma eps`, model input scaled by
/// `1 / sqrt(sigma^2 + 1)`), as in diffusers' Euler and Heun `step`.
fn sigma_space_x0(pred: PredictionType, model_output: &Tensor, sample: &Tensor, sigma: f64) -> Tensor {
    match pred {
        PredictionType::Epsilon => sample - model_output * sigma,
        PredictionType::Sample => model_output.shallow_clone(),
        PredictionType::VPrediction => {
            model_output * (-sigma / (sigma * sigma + 1.0).sqrt()) + sample / (sigma * sigma + 1.0)
        }
    }
}

/// The noise levels and step counter shared by Euler, Euler ancestral and Heun.
#[derive(Debug)]
struct SigmaSteps {
    name: &'static str,
    num_train_timesteps: usize,
    spacing: TimestepSpacing,
    steps_offset: usize,
    train_sigmas: Vec<f64>,
    timesteps: Vec<f64>,
    /// One more than `timesteps`: the last is 0.
    sigmas: Vec<f64>,
    step_index: Option<usize>,
}

impl SigmaSteps {
    fn new(name: &'static str, schedule: &NoiseSchedule) -> Self {
        let config = schedule.config();
        Self {
            name,
            num_train_timesteps: schedule.num_train_timesteps(),
            spacing: config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace),
            steps_offset: config.steps_offset,
            train_sigmas: train_sigmas(schedule),
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            step_index: None,
        }
    }

    fn set(&mut self, steps: usize) -> Result<()> {
        let t = self.num_train_timesteps;
        check_steps(steps, t)?;
        let timesteps = spaced_timesteps(self.spacing, t, steps, self.steps_offset, false);
        check_timesteps(self.name, &timesteps, steps, t, " (steps_offset pushes leading timesteps past the end)")?;
        self.sigmas = timesteps.iter().map(|&x| interp(&self.train_sigmas, x)).chain([0.0]).collect();
        self.timesteps = timesteps;
        self.step_index = None;
        Ok(())
    }

    /// The step about to be taken: the counter, or where `t` is in the schedule before the first step.
    fn index(&self, t: f64) -> Result<usize> {
        step_position(self.name, &self.timesteps, self.step_index, t)
    }

    fn scale_model_input(&self, sample: &Tensor, t: f64) -> Result<Tensor> {
        let sigma = self.sigmas[self.index(t)?];
        Ok(sample / (sigma * sigma + 1.0).sqrt())
    }

    fn init_noise_sigma(&self) -> f64 {
        let max = self.sigmas.iter().copied().fold(0.0, f64::max);
        match self.spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        }
    }

    /// `x0 + sigma(t) noise`, with `sigma(t)` interpolated at any training time in `[0, T - 1]`
    /// (diffusers looks `t` up in the inference schedule; the sigmas there are the same interpolation).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        same_shape(original, noise, "noise")?;
        let last = (self.num_train_timesteps - 1) as f64;
        let sigmas = tensor_values(timesteps)?
            .into_iter()
            .map(|t| {
                if (0.0..=last).contains(&t) {
                    Ok(interp(&self.train_sigmas, t))
                } else {
                    Err(DiffusionError::TrainTimestep { timestep: t, expected: format!("a number in [0, {last}]") })
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(original + noise * per_sample(&sigmas, original)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_display_and_serialize_by_cli_name() {
        for k in SchedulerKind::ALL.into_iter().chain(SchedulerKind::FLOW) {
            assert_eq!(k.to_string().parse::<SchedulerKind>().unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        let err = "lms".parse::<SchedulerKind>().unwrap_err().to_string();
        assert!(err.contains("lms") && err.contains("dpmpp-2m") && err.contains("flow-heun"), "{err}");
    }

    #[test]
    fn spacing_matches_numpy_rounding() {
        // np.linspace(0, 999, 11).round() has 499.5 -> 500 (half to even).
        let t: Vec<f64> = np_linspace(0.0, 999.0, 11).into_iter().map(f64::round_ties_even).collect();
        assert_eq!(t[5], 500.0);
        assert_eq!(trailing(1000, 61).len(), 61);
        assert_eq!(*trailing(1000, 61).last().unwrap(), 15.0);
        assert_eq!(spaced_timesteps(TimestepSpacing::Linspace, 1000, 7, 0, false)[1], 832.5);
    }

    #[test]
    fn interp_matches_np_interp() {
        let v = [1.0, 3.0, 7.0];
        assert_eq!(interp(&v, 0.5), 2.0);
        assert_eq!(interp(&v, 1.25), 4.0);
        assert_eq!(interp(&v, 2.0), 7.0);
        assert_eq!(interp(&v, -1.0), 1.0);
    }
}
