//! The flow-matching schedulers against numbers Hugging Face diffusers 0.42.1 wrote
//! (`reference/gen_flow_match_refs.py`, checked in beside `reference/flow_match.json`): the
//! sigmas and timesteps of each configuration, and a full sampling loop of a deterministic fake
//! velocity model `v = 0.5 x - t / 1000`.
use std::sync::Mutex;

use genlab_diffusion::scheduler::{FlowMatchConfig, FlowMatchEuler, FlowMatchHeun, Scheduler};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

#[derive(Deserialize)]
struct Refs {
    diffusers: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    kind: String,
    config: serde_json::Value,
    steps: usize,
    mu: Option<f64>,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    step_abs_sums: Vec<f64>,
    final_head: Vec<f64>,
}

/// Stochastic sampling draws from libtorch's global generator: one seeded loop at a time.
static RNG: Mutex<()> = Mutex::new(());

fn scheduler(case: &Case) -> Box<dyn Scheduler> {
    let cfg = FlowMatchConfig::from_json(&case.config, &case.name).unwrap();
    let mut s: Box<dyn Scheduler> = match case.kind.as_str() {
        "euler" => {
            let mut e = FlowMatchEuler::new(&cfg).unwrap();
            if let Some(mu) = case.mu {
                e.set_mu(mu);
            }
            Box::new(e)
        }
        _ => Box::new(FlowMatchHeun::new(&cfg).unwrap()),
    };
    s.set_timesteps(case.steps).unwrap();
    s
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-6)
}

#[test]
fn schedules_and_sampling_loops_match_diffusers() {
    let refs: Refs = serde_json::from_str(include_str!("reference/flow_match.json")).unwrap();
    assert_eq!(refs.diffusers, "0.42.1");
    assert_eq!(refs.cases.len(), 12);
    for case in &refs.cases {
        let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(0);
        let mut s = scheduler(case);
        // The schedule itself: float32 values, equal to the last bit.
        assert_eq!(s.timesteps(), case.timesteps.as_slice(), "{}: timesteps", case.name);
        let mut x = Tensor::linspace(-1.0, 1.0, 96, (Kind::Float, Device::Cpu)).reshape([2, 3, 4, 4]);
        let mut sums = Vec::new();
        for t in s.timesteps().to_vec() {
            let v = &x * 0.5 - (t as f32 / 1000.0) as f64;
            x = s.step(&v, t, &x).unwrap();
            sums.push(x.abs().sum(Kind::Double).double_value(&[]));
        }
        for (i, (a, b)) in sums.iter().zip(&case.step_abs_sums).enumerate() {
            assert!(close(*a, *b, 1e-6), "{}: step {i}: sum |x| {a} vs diffusers {b}", case.name);
        }
        let head = Vec::<f64>::try_from(x.flatten(0, -1).narrow(0, 0, 8).to_kind(Kind::Double)).unwrap();
        for (a, b) in head.iter().zip(&case.final_head) {
            assert!((a - b).abs() <= 1e-6, "{}: final sample {head:?} vs {:?}", case.name, case.final_head);
        }
    }
}

#[test]
fn euler_sigmas_match_diffusers_exactly() {
    let refs: Refs = serde_json::from_str(include_str!("reference/flow_match.json")).unwrap();
    for case in refs.cases.iter().filter(|c| c.kind == "euler") {
        let cfg = FlowMatchConfig::from_json(&case.config, &case.name).unwrap();
        let mut e = FlowMatchEuler::new(&cfg).unwrap();
        if let Some(mu) = case.mu {
            e.set_mu(mu);
        }
        e.set_timesteps(case.steps).unwrap();
        assert_eq!(e.sigmas(), case.sigmas.as_slice(), "{}: sigmas", case.name);
    }
}

#[test]
fn bad_configs_are_refused_by_name() {
    let refuse = |v: serde_json::Value, says: &str| {
        let e = FlowMatchConfig::from_json(&v, "scheduler/scheduler_config.json").unwrap_err().to_string();
        assert!(e.contains("scheduler_config.json") && e.contains(says), "{e}");
    };
    refuse(serde_json::json!({"shift": 3.0, "use_fancy_sigmas": true}), "use_fancy_sigmas");
    refuse(serde_json::json!({"use_beta_sigmas": true}), "use_beta_sigmas");
    refuse(serde_json::json!({"use_karras_sigmas": true, "use_exponential_sigmas": true}), "only one of");
    refuse(serde_json::json!({"shift_terminal": 1.5}), "shift_terminal");
    refuse(serde_json::json!({"time_shift_type": "cubic"}), "cubic");
    // Metadata keys are accepted; SD3's own file parses.
    let sd3 = serde_json::json!({"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.29.0",
        "num_train_timesteps": 1000, "shift": 3.0});
    assert_eq!(FlowMatchConfig::from_json(&sd3, "sd3").unwrap(), FlowMatchConfig::sd3());
    // Dynamic shifting without mu, Heun with Euler-only keys, and stepping before set_timesteps.
    let dynamic = FlowMatchConfig { use_dynamic_shifting: true, ..Default::default() };
    let e = FlowMatchEuler::new(&dynamic).unwrap().set_timesteps(10).unwrap_err().to_string();
    assert!(e.contains("mu"), "{e}");
    assert!(FlowMatchHeun::new(&dynamic).unwrap_err().to_string().contains("flow-heun"));
    let x = Tensor::zeros([1, 1, 2, 2], (Kind::Float, Device::Cpu));
    let mut fresh = FlowMatchEuler::new(&FlowMatchConfig::default()).unwrap();
    assert!(fresh.step(&x, 1000.0, &x).is_err());
}

#[test]
fn flux_shift_is_interpolated_from_the_image_size() {
    // Flux's defaults: 256 tokens -> 0.5, 4096 tokens -> 1.15; a 1024x1024 image has 4096 2x2-packed latent tokens.
    let cfg = FlowMatchConfig { use_dynamic_shifting: true, ..Default::default() };
    assert!((cfg.mu_for(256) - 0.5).abs() < 1e-12 && (cfg.mu_for(4096) - 1.15).abs() < 1e-12);
    assert!((cfg.mu_for(1024) - (0.5 + 0.65 * 768.0 / 3840.0)).abs() < 1e-12);
}

#[test]
fn training_densities_and_loss_weights_match_diffusers() {
    use genlab_diffusion::train::{FlowLossWeighting, TimestepDensity};
    let refs: serde_json::Value = serde_json::from_str(include_str!("reference/flow_match.json")).unwrap();
    let num = |v: &serde_json::Value| v.as_f64().unwrap();
    let list = |v: &serde_json::Value| v.as_array().unwrap().iter().map(num).collect::<Vec<f64>>();
    let densities = refs["densities"].as_array().unwrap();
    assert_eq!(densities.len(), 4);
    for d in densities {
        let density = match d["scheme"].as_str().unwrap() {
            "logit_normal" => TimestepDensity::LogitNormal { mean: num(&d["mean"]), std: num(&d["std"]) },
            "mode" => TimestepDensity::Mode { scale: num(&d["scale"]) },
            _ => TimestepDensity::Uniform,
        };
        let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(0);
        let u = Vec::<f64>::try_from(density.sample(8, Device::Cpu).to_kind(Kind::Double)).unwrap();
        assert_eq!(u, list(&d["u"]), "{density:?}");
    }
    let sigmas = Tensor::linspace(0.05, 0.95, 7, (Kind::Float, Device::Cpu));
    assert_eq!(Vec::<f64>::try_from(sigmas.to_kind(Kind::Double)).unwrap(), list(&refs["weighting_sigmas"]));
    for (w, name) in [(FlowLossWeighting::SigmaSqrt, "sigma_sqrt"), (FlowLossWeighting::Cosmap, "cosmap")] {
        let got = Vec::<f64>::try_from(w.weights(&sigmas).unwrap().to_kind(Kind::Double)).unwrap();
        for (a, b) in got.iter().zip(list(&refs["weightings"][name])) {
            assert!((a - b).abs() <= 1e-6 * b, "{name}: {got:?}");
        }
    }
    assert!(FlowLossWeighting::None.weights(&sigmas).is_none());
    // The flags' spellings.
    assert_eq!("mode".parse::<TimestepDensity>().unwrap(), TimestepDensity::Mode { scale: 1.29 });
    assert_eq!(
        "logit-normal:0.5,1.5".parse::<TimestepDensity>().unwrap(),
        TimestepDensity::LogitNormal { mean: 0.5, std: 1.5 }
    );
    for bad in ["logit-normal:0,-1", "mode:a", "beta"] {
        assert!(bad.parse::<TimestepDensity>().is_err(), "{bad}");
    }
    assert_eq!("cosmap".parse::<FlowLossWeighting>().unwrap(), FlowLossWeighting::Cosmap);
}
