//! Known-number tests against Hugging Face diffusers 0.42.1, in the style of diffusers'
//! `tests/schedulers`: a deterministic sample, a deterministic fake model `sample * t / (t + 1)`,
//! the full sampling loop, asserted timesteps and per-step sums of |sample|.
//! The numbers come from `reference/gen_scheduler_refs.py`, checked in beside `reference/schedulers.json`.
use std::sync::Mutex;

use genlab_diffusion::{build, DiffusionError, NoiseSchedule, ScheduleConfig, Scheduler, SchedulerKind};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

#[derive(Deserialize)]
struct Refs {
    diffusers: String,
    schedules: Vec<ScheduleRef>,
    schedulers: Vec<SchedulerRef>,
}

#[derive(Deserialize)]
struct ScheduleRef {
    name: String,
    config: ScheduleConfig,
    indices: Vec<usize>,
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    betas_sum: f64,
    alphas_cumprod_sum: f64,
}

#[derive(Deserialize)]
struct SchedulerRef {
    name: String,
    kind: SchedulerKind,
    config: ScheduleConfig,
    steps: usize,
    timesteps: Vec<f64>,
    init_noise_sigma: f64,
    trace_sum_abs: Vec<f64>,
    result_sum_abs: f64,
    result_mean_abs: f64,
    add_noise_timesteps: Vec<f64>,
    add_noise_sum_abs: f64,
    add_noise_sum: f64,
}

fn refs() -> Refs {
    let refs: Refs = serde_json::from_str(include_str!("reference/schedulers.json")).expect("schedulers.json parses");
    assert_eq!(refs.diffusers, "0.42.1");
    refs
}

/// The stochastic schedulers draw from libtorch's global generator: one seeded loop at a time.
static RNG: Mutex<()> = Mutex::new(());

const B: i64 = 4;
const C: i64 = 3;
const H: i64 = 8;
const W: i64 = 8;
const NUMEL: i64 = B * C * H * W;

/// diffusers' `dummy_sample_deter`: arange reshaped (C, H, W, B), divided by numel, permuted to (B, C, H, W).
fn dummy_sample_deter() -> Tensor {
    (Tensor::arange(NUMEL, (Kind::Float, Device::Cpu)).reshape([C, H, W, B]) / NUMEL as f64).permute([3, 0, 1, 2])
}

/// diffusers' `dummy_noise_deter`: the same with the arange flipped.
fn dummy_noise_deter() -> Tensor {
    (Tensor::arange(NUMEL, (Kind::Float, Device::Cpu)).flip([-1]).reshape([C, H, W, B]) / NUMEL as f64)
        .permute([3, 0, 1, 2])
}

/// diffusers' `dummy_model`.
fn dummy_model(sample: &Tensor, t: f64) -> Tensor {
    sample * t / (t + 1.0)
}

fn sum_abs(x: &Tensor) -> f64 {
    f64::try_from(x.abs().sum(Kind::Double)).unwrap()
}

/// Relative 1e-3 (f32 sums of 768 values), with a small absolute floor for values near 0.
fn close(found: f64, expected: f64) -> bool {
    (found - expected).abs() <= 1e-3 * expected.abs() + 1e-4
}

/// Run every reference case of `kind`; report every mismatch, not just the first.
fn check_kind(kind: SchedulerKind) {
    let refs = refs();
    let cases: Vec<_> = refs.schedulers.iter().filter(|c| c.kind == kind).collect();
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in cases {
        if let Err(e) = check_case(case) {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the {kind} cases differ from diffusers:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn check_case(case: &SchedulerRef) -> anyhow::Result<()> {
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let mut s: Box<dyn Scheduler> = build(case.kind, &case.config, case.steps)?;
    anyhow::ensure!(
        s.timesteps() == case.timesteps.as_slice(),
        "timesteps {:?} != {:?}",
        s.timesteps(),
        case.timesteps
    );
    let sigma = s.init_noise_sigma();
    anyhow::ensure!(close(sigma, case.init_noise_sigma), "init_noise_sigma {sigma} != {}", case.init_noise_sigma);

    tch::manual_seed(0);
    let mut x = dummy_sample_deter() * sigma;
    for (i, t) in s.timesteps().to_vec().into_iter().enumerate() {
        let out = dummy_model(&s.scale_model_input(&x, t)?, t);
        x = s.step(&out, t, &x)?;
        let found = sum_abs(&x);
        let expected = case.trace_sum_abs[i];
        anyhow::ensure!(close(found, expected), "step {i} (t = {t}): sum |x| = {found}, diffusers {expected}");
    }
    let (sum, mean) = (sum_abs(&x), sum_abs(&x) / NUMEL as f64);
    anyhow::ensure!(close(sum, case.result_sum_abs), "result sum {sum} != {}", case.result_sum_abs);
    anyhow::ensure!(close(mean, case.result_mean_abs), "result mean {mean} != {}", case.result_mean_abs);

    let fresh = build(case.kind, &case.config, case.steps)?;
    let t = Tensor::from_slice(&case.add_noise_timesteps);
    let noisy = fresh.add_noise(&dummy_sample_deter(), &dummy_noise_deter(), &t)?;
    let (abs, plain) = (sum_abs(&noisy), f64::try_from(noisy.sum(Kind::Double))?);
    anyhow::ensure!(close(abs, case.add_noise_sum_abs), "add_noise sum |x| {abs} != {}", case.add_noise_sum_abs);
    anyhow::ensure!(close(plain, case.add_noise_sum), "add_noise sum {plain} != {}", case.add_noise_sum);
    Ok(())
}

#[test]
fn ddpm_matches_diffusers() {
    check_kind(SchedulerKind::Ddpm);
}

#[test]
fn ddim_matches_diffusers() {
    check_kind(SchedulerKind::Ddim);
}

#[test]
fn dpm_solver_pp_2m_matches_diffusers() {
    check_kind(SchedulerKind::DpmPp2m);
}

#[test]
fn euler_matches_diffusers() {
    check_kind(SchedulerKind::Euler);
}

#[test]
fn euler_ancestral_matches_diffusers() {
    check_kind(SchedulerKind::EulerAncestral);
}

#[test]
fn heun_matches_diffusers() {
    check_kind(SchedulerKind::Heun);
}

#[test]
fn reference_file_covers_every_scheduler_and_the_diffusers_test_suite_numbers() {
    let refs = refs();
    for kind in SchedulerKind::ALL {
        assert!(refs.schedulers.iter().any(|c| c.kind == kind), "no reference case for {kind}");
    }
    let case = |name: &str| refs.schedulers.iter().find(|c| c.name == name).unwrap();
    // DDIM, 5 steps, leading spacing with steps_offset 1 over 1000 (diffusers' test_steps_offset).
    assert_eq!(case("ddim_5_offset_1").timesteps, [801.0, 601.0, 401.0, 201.0, 1.0]);
    // diffusers' own tests/schedulers/test_scheduler_ddpm.py::test_full_loop_no_noise asserts
    // sum 258.9606 and mean 0.3372 for the 1000-step loop with torch.manual_seed(0).
    let full = case("ddpm_full_1000");
    assert!((full.result_sum_abs - 258.9606).abs() < 1e-2 && (full.result_mean_abs - 0.3372).abs() < 1e-3);
}

#[test]
fn beta_schedules_match_diffusers() {
    for case in refs().schedules {
        let s = NoiseSchedule::new(&case.config).unwrap();
        let (betas, ac) = (s.betas(), s.alphas_cumprod());
        for (k, &i) in case.indices.iter().enumerate() {
            // diffusers keeps f32 betas and an f32 cumprod; these are f64. Its zero-SNR rescale computes
            // `1 - abar_t / abar_{t-1}` in f32, which is only good to a few f32 ulps of 1 (about 5e-7).
            let (rel, abs) = if case.config.rescale_betas_zero_snr { (1e-5, 5e-7) } else { (1e-6, 1e-9) };
            let (b, a) = (betas[i], ac[i]);
            assert!(
                (b - case.betas[k]).abs() <= rel * case.betas[k].abs() + abs,
                "{}: beta[{i}] = {b}, diffusers {}",
                case.name,
                case.betas[k]
            );
            assert!(
                (a - case.alphas_cumprod[k]).abs() <= 2e-5 * case.alphas_cumprod[k].abs() + 1e-9,
                "{}: alphas_cumprod[{i}] = {a}, diffusers {}",
                case.name,
                case.alphas_cumprod[k]
            );
        }
        let (bs, acs) = (betas.iter().sum::<f64>(), ac.iter().sum::<f64>());
        assert!(
            (bs - case.betas_sum).abs() <= 1e-5 * case.betas_sum,
            "{}: sum of betas {bs}, diffusers {}",
            case.name,
            case.betas_sum
        );
        assert!(
            (acs - case.alphas_cumprod_sum).abs() <= 1e-5 * case.alphas_cumprod_sum,
            "{}: sum of alphas_cumprod {acs}, diffusers {}",
            case.name,
            case.alphas_cumprod_sum
        );
    }
}

/// Both Rust anchors compute the cosine schedule's times as `i / n` on integers, which makes every
/// beta but the last 0. Ten steps, every beta checked: nonzero, increasing, and diffusers' value.
#[test]
fn cosine_betas_use_float_division() {
    let cfg = ScheduleConfig { num_train_timesteps: 10, ..ScheduleConfig::improved_ddpm_cosine() };
    let s = NoiseSchedule::new(&cfg).unwrap();
    let betas = s.betas();
    assert!(betas.iter().all(|&b| b > 1e-3), "{betas:?}");
    assert!(betas.windows(2).all(|w| w[1] > w[0]), "{betas:?}");
    assert_eq!(*betas.last().unwrap(), 0.999, "the last beta is capped");
    assert!(s.alphas_cumprod().windows(2).all(|w| w[1] < w[0]));
    let reference = refs().schedules.into_iter().find(|c| c.name == "squaredcos_cap_v2_10").unwrap();
    for (k, &i) in reference.indices.iter().enumerate() {
        assert!((betas[i] - reference.betas[k]).abs() <= 1e-6 * reference.betas[k], "beta[{i}]");
    }
}

#[test]
fn zero_terminal_snr_rescale_ends_at_pure_noise() {
    for base in [ScheduleConfig::default(), ScheduleConfig::stable_diffusion_v1()] {
        let plain = NoiseSchedule::new(&base).unwrap();
        let cfg = ScheduleConfig { rescale_betas_zero_snr: true, ..base };
        let s = NoiseSchedule::new(&cfg).unwrap();
        let ac = s.alphas_cumprod();
        assert_eq!(*ac.last().unwrap(), 0.0);
        assert_eq!(*s.betas().last().unwrap(), 1.0);
        assert!((ac[0] - plain.alphas_cumprod()[0]).abs() < 1e-12, "the first abar is kept");
        assert!(ac.windows(2).all(|w| w[1] < w[0]));
    }
}

#[test]
fn ddim_timesteps_for_each_spacing() {
    let ts = |spacing: &str, offset: usize, steps: usize| {
        let cfg = ScheduleConfig {
            timestep_spacing: Some(spacing.parse().unwrap()),
            steps_offset: offset,
            ..Default::default()
        };
        build(SchedulerKind::Ddim, &cfg, steps).unwrap().timesteps().to_vec()
    };
    assert_eq!(ts("leading", 1, 5), [801.0, 601.0, 401.0, 201.0, 1.0]);
    assert_eq!(ts("leading", 0, 4), [750.0, 500.0, 250.0, 0.0]);
    assert_eq!(ts("trailing", 0, 4), [999.0, 749.0, 499.0, 249.0]);
    assert_eq!(ts("linspace", 0, 4), [999.0, 666.0, 333.0, 0.0]);
}

#[test]
fn heun_lists_every_timestep_after_the_first_twice() {
    let s = build(SchedulerKind::Heun, &ScheduleConfig::default(), 4).unwrap();
    assert_eq!(s.timesteps(), [999.0, 666.0, 666.0, 333.0, 333.0, 0.0, 0.0]);
}

#[test]
fn bad_step_counts_and_timesteps_are_typed_errors() {
    let cfg = ScheduleConfig::default();
    for kind in SchedulerKind::ALL {
        for steps in [0, 1001] {
            let err = build(kind, &cfg, steps).err();
            let found = match err {
                Some(DiffusionError::InferenceSteps { steps, num_train_timesteps }) => {
                    Some((steps, num_train_timesteps))
                }
                _ => None,
            };
            assert_eq!(found, Some((steps, 1000)), "{kind} with {steps} steps");
        }
        let mut s = build(kind, &cfg, 10).unwrap();
        let x = dummy_sample_deter();
        // 0.5 is in no schedule; DDIM accepts any training timestep but not a fractional one.
        assert!(s.step(&x, 0.5, &x).is_err(), "{kind}: step at t = 0.5");
        assert!(s.add_noise(&x, &x, &Tensor::from_slice(&[5000i64])).is_err(), "{kind}: add_noise at t = 5000");
        assert!(s.add_noise(&x, &x, &Tensor::from_slice(&[1i64, 2])).is_err(), "{kind}: 2 timesteps for a batch of 4");
    }
    // Stepping past the end of a multistep schedule.
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = build(SchedulerKind::Euler, &cfg, 2).unwrap();
    let mut x = dummy_sample_deter();
    for t in s.timesteps().to_vec() {
        x = s.step(&x, t, &x).unwrap();
    }
    assert!(matches!(s.step(&x, 0.0, &x), Err(DiffusionError::PastLastStep { .. })));
    // More DPM-Solver++ linspace steps than distinct rounded timesteps.
    match build(SchedulerKind::DpmPp2m, &cfg, 1000) {
        Err(e @ DiffusionError::DegenerateTimesteps { .. }) => {
            // The message names the first fault instead of listing a thousand timesteps.
            let e = e.to_string();
            assert!(e.contains("500 follows 500 at position 500") && e.len() < 400, "{e}");
        }
        other => panic!("1000 DPM-Solver++ steps: expected DegenerateTimesteps, got {:?}", other.map(|_| ())),
    }
    // Leading spacing with an offset runs past the last training timestep at 1000 steps.
    let offset = ScheduleConfig { steps_offset: 1, ..Default::default() };
    assert!(matches!(build(SchedulerKind::Ddim, &offset, 1000), Err(DiffusionError::DegenerateTimesteps { .. })));
    assert!(matches!(
        genlab_diffusion::scheduler::Ddim::new(&cfg).unwrap().step(&x, 1.0, &x),
        Err(DiffusionError::NotInitialized { .. })
    ));
}
