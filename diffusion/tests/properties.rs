//! Invariants of every schedule and scheduler, for any valid configuration.
use genlab_diffusion::{
    build, BetaSchedule, DiffusionError, NoiseSchedule, ScheduleConfig, SchedulerKind, TimestepSpacing,
};
use proptest::prelude::*;
use tch::Tensor;

const SCHEDULES: [BetaSchedule; 4] =
    [BetaSchedule::Linear, BetaSchedule::ScaledLinear, BetaSchedule::SquaredcosCapV2, BetaSchedule::Sigmoid];
const SPACINGS: [TimestepSpacing; 3] = [TimestepSpacing::Leading, TimestepSpacing::Trailing, TimestepSpacing::Linspace];

fn strictly_decreasing_in_unit_interval(ac: &[f64]) -> bool {
    ac.windows(2).all(|w| w[1] < w[0]) && ac.iter().all(|&a| a > 0.0 && a < 1.0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// abar_t strictly decreases inside (0, 1) for every schedule, 2 to 2000 steps and any betas in
    /// the ranges people use; rescaled to zero terminal SNR it does so up to an exact 0 at the end.
    #[test]
    fn alphas_cumprod_strictly_decrease_inside_the_unit_interval(
        schedule in 0usize..4,
        t in 2usize..=2000,
        beta_start in 1e-5f64..1e-2,
        spread in 1.0f64..5.0,
    ) {
        let cfg = ScheduleConfig {
            num_train_timesteps: t,
            beta_start,
            beta_end: (beta_start * spread).min(0.05),
            beta_schedule: SCHEDULES[schedule],
            ..Default::default()
        };
        let s = NoiseSchedule::new(&cfg).unwrap();
        prop_assert!(strictly_decreasing_in_unit_interval(s.alphas_cumprod()), "{cfg:?}");
        prop_assert!(s.betas().iter().all(|&b| b > 0.0 && b < 1.0));

        let zero = NoiseSchedule::new(&ScheduleConfig { rescale_betas_zero_snr: true, ..cfg }).unwrap();
        let ac = zero.alphas_cumprod();
        prop_assert_eq!(ac[t - 1], 0.0);
        prop_assert!(t == 2 || strictly_decreasing_in_unit_interval(&ac[..t - 1]));
    }

    /// Noise added at training timestep 0 of the default (DDPM) schedule barely moves the sample:
    /// by at most sqrt(1 - abar_0) + 1 - sqrt(abar_0) ~ 0.01 for inputs in [-1, 1], in every scheduler's
    /// parameterisation.
    #[test]
    fn add_noise_at_the_first_timestep_is_nearly_the_identity(
        x in proptest::collection::vec(-1f32..1.0, 24),
        noise in proptest::collection::vec(-1f32..1.0, 24),
    ) {
        let x = Tensor::from_slice(&x).reshape([2, 3, 2, 2]);
        let noise = Tensor::from_slice(&noise).reshape([2, 3, 2, 2]);
        for kind in SchedulerKind::ALL {
            let s = build(kind, &ScheduleConfig::default(), 10).unwrap();
            let noisy = s.add_noise(&x, &noise, &Tensor::from_slice(&[0i64, 0])).unwrap();
            let max = f64::try_from((noisy - &x).abs().max()).unwrap();
            prop_assert!(max <= 1.01e-2, "{kind}: moved by {max}");
        }
    }

    /// DDIM timesteps strictly decrease inside 0..T for any valid step count and spacing (without an
    /// offset); with steps_offset 1 they are either valid or a DegenerateTimesteps error.
    #[test]
    fn ddim_timesteps_are_strictly_decreasing_and_in_range(
        t in 2usize..=2000,
        steps_frac in 0.0f64..1.0,
        spacing in 0usize..3,
        offset in 0usize..2,
    ) {
        let steps = 1 + ((t - 1) as f64 * steps_frac) as usize;
        let cfg = ScheduleConfig {
            num_train_timesteps: t,
            timestep_spacing: Some(SPACINGS[spacing]),
            steps_offset: offset,
            ..Default::default()
        };
        match build(SchedulerKind::Ddim, &cfg, steps) {
            Ok(s) => {
                let ts = s.timesteps();
                prop_assert_eq!(ts.len(), steps);
                prop_assert!(ts.windows(2).all(|w| w[1] < w[0]), "{:?}", ts);
                prop_assert!(ts.iter().all(|&x| x >= 0.0 && x < t as f64 && x.fract() == 0.0), "{:?}", ts);
            }
            Err(DiffusionError::DegenerateTimesteps { .. }) if offset > 0 => {}
            Err(e) => prop_assert!(false, "{} steps over {}: {}", steps, t, e),
        }
    }

    /// Every scheduler either sets valid timesteps or says why not, for any step count 1..=T.
    #[test]
    fn every_scheduler_sets_valid_timesteps_or_a_typed_error(
        kind in 0usize..6,
        t in 2usize..=1200,
        steps_frac in 0.0f64..1.0,
        spacing in 0usize..3,
    ) {
        let steps = 1 + ((t - 1) as f64 * steps_frac) as usize;
        let cfg = ScheduleConfig {
            num_train_timesteps: t,
            timestep_spacing: Some(SPACINGS[spacing]),
            ..Default::default()
        };
        let kind = SchedulerKind::ALL[kind];
        match build(kind, &cfg, steps) {
            Ok(s) => {
                let ts = s.timesteps();
                prop_assert!(ts.iter().all(|&x| (0.0..t as f64).contains(&x)), "{:?}", ts);
                prop_assert!(ts.windows(2).all(|w| w[1] <= w[0]));
                prop_assert!(s.init_noise_sigma().is_finite() && s.init_noise_sigma() > 0.0);
            }
            // Only DPM-Solver++ spaces n + 1 points, which can collide when n is close to T.
            Err(DiffusionError::DegenerateTimesteps { .. }) if kind == SchedulerKind::DpmPp2m => {}
            Err(e) => prop_assert!(false, "{kind}, {steps} steps over {t}: {e}"),
        }
    }
}
