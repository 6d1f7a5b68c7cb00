//! genlab-diffusion: noise schedules and schedulers (samplers) for diffusion models.
//!
//! - [`schedule`]: beta schedules, cumulative alphas, prediction types, the forward process,
//!   min-SNR loss weights, and the serialisable [`ScheduleConfig`].
//! - [`scheduler`]: the [`Scheduler`] trait and DDPM, DDIM, DPM-Solver++(2M), Euler, Euler ancestral
//!   and Heun, built by name with [`build`].
pub mod error;
pub mod schedule;
pub mod scheduler;

pub use error::{DiffusionError, Result};
pub use schedule::{BetaSchedule, NoiseSchedule, PredictionType, ScheduleConfig, TimestepSpacing};
pub use scheduler::{build, Scheduler, SchedulerKind};
