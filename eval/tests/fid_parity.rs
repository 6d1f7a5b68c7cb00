//! Parity with pytorch-fid 0.3.0: the FID Inception-v3 with formula weights on a formula input, and
//! the Fréchet distance, against numbers from `reference/gen_fid_refs.py` (`reference/fid_refs.json`).
use genlab_eval::inception::FidInceptionV3;
use genlab_eval::FeatureNet;
use tch::{nn, Device, Kind, Tensor};

fn refs() -> serde_json::Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/fid_refs.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn numbers(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// The generator's `u(i, j)`: splitmix64 of `i * 2^32 + j`, top 53 bits in [0, 1).
fn u(i: u64, n: usize) -> Vec<f64> {
    (0..n as u64)
        .map(|j| {
            let mut z = (i << 32).wrapping_add(j).wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 * (-53f64).exp2()
        })
        .collect()
}

fn formula(name: &str, shape: &[i64], i: u64) -> Tensor {
    let n = shape.iter().product::<i64>() as usize;
    let v: Vec<f32> = u(i, n)
        .into_iter()
        .map(|r| {
            let v = if name.ends_with("conv.weight") {
                let fan_in = shape[1..].iter().product::<i64>() as f64;
                (2.0 * r - 1.0) * (6.0 / fan_in).sqrt()
            } else if name.ends_with("bn.weight") {
                0.8 + 0.4 * r
            } else if name.ends_with("bn.bias") || name.ends_with("bn.running_mean") {
                0.2 * (2.0 * r - 1.0)
            } else if name.ends_with("bn.running_var") {
                0.5 + r
            } else if name == "fc.weight" {
                (2.0 * r - 1.0) * (3.0f64 / 2048.0).sqrt()
            } else if name == "fc.bias" {
                0.1 * (2.0 * r - 1.0)
            } else {
                panic!("no formula for {name}")
            };
            v as f32
        })
        .collect();
    Tensor::from_slice(&v).view(shape)
}

fn close(got: f64, want: f64, what: &str) {
    let tol = 1e-4 * want.abs().max(1.0);
    assert!((got - want).abs() <= tol, "{what}: {got} vs pytorch-fid {want}");
}

#[test]
fn splitmix_matches_the_generator() {
    let r = refs();
    for (got, want) in u(7, 3).into_iter().zip(numbers(&r["features"]["u_check"])) {
        assert_eq!(got, want);
    }
}

/// Every feature statistic and slice within 1e-4 (relative to values above 1) of pytorch-fid's.
#[test]
fn inception_features_match_pytorch_fid() {
    tch::set_num_threads(1);
    let r = refs();
    let vs = nn::VarStore::new(Device::Cpu);
    let net = FidInceptionV3::new(vs.root());
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<(String, Vec<i64>)> = vars.iter().map(|(n, t)| (n.clone(), t.size())).collect();
    let want: Vec<(String, Vec<i64>)> = r["state_dict"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (e[0].as_str().unwrap().to_string(), e[1].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect())
        })
        .collect();
    assert_eq!(names, want, "parameter names and shapes must be pytorch-fid's state dict's");
    tch::no_grad(|| {
        for (i, (name, t)) in vars.iter().enumerate() {
            t.shallow_clone().copy_(&formula(name, &t.size(), i as u64));
        }
    });
    let x: Vec<f32> = u(100_000, 2 * 3 * 40 * 40).into_iter().map(|v| v as f32).collect();
    let x = Tensor::from_slice(&x).view([2, 3, 40, 40]);
    // The feature-net entry point takes [-1, 1] images; the generator's input is in [0, 1].
    let out = net.embed(&(&x * 2.0 - 1.0)).unwrap();
    let (pool, logits) = (out.features.to_kind(Kind::Double), out.logits.unwrap().to_kind(Kind::Double));
    assert_eq!(pool.size(), [2, 2048]);
    assert_eq!(logits.size(), [2, 1008]);
    let f = &r["features"];
    let l = &r["logits"];
    for b in 0..2i64 {
        let row = pool.get(b);
        close(row.sum(Kind::Double).double_value(&[]), numbers(&f["sum"])[b as usize], "feature sum");
        close(
            row.square().sum(Kind::Double).double_value(&[]),
            numbers(&f["sum_sq"])[b as usize],
            "feature sum of squares",
        );
        for (k, want) in numbers(&f["first8"][b as usize]).into_iter().enumerate() {
            close(row.double_value(&[k as i64]), want, &format!("feature [{b}, {k}]"));
        }
        for (k, want) in numbers(&f["every256"][b as usize]).into_iter().enumerate() {
            close(row.double_value(&[256 * k as i64]), want, &format!("feature [{b}, {}]", 256 * k));
        }
        let lrow = logits.get(b);
        close(lrow.sum(Kind::Double).double_value(&[]), numbers(&l["sum"])[b as usize], "logit sum");
        for (k, want) in numbers(&l["first8"][b as usize]).into_iter().enumerate() {
            close(lrow.double_value(&[k as i64]), want, &format!("logit [{b}, {k}]"));
        }
    }
}

/// The Fréchet distance of the generator's two deterministic sets, against pytorch-fid's
/// `calculate_frechet_distance` (scipy's general `sqrtm`).
#[test]
fn frechet_distance_matches_pytorch_fid() {
    let (n, d) = (300i64, 12i64);
    let i = Tensor::arange(n, (Kind::Double, Device::Cpu)).unsqueeze(1);
    let k = Tensor::arange(d, (Kind::Double, Device::Cpu)).unsqueeze(0);
    let a = (&i * (&k + 1.0) * 0.37 + &k).sin() + &k * 0.05;
    let b = ((&i * (&k + 2.0) * 0.23 + &k * 0.5).sin().pow_tensor_scalar(3)) * 1.3
        + 0.2
        + (&i * (&k + 1.0) * 0.11).cos() * 0.1;
    let got = genlab_eval::frechet_distance(&a, &b).unwrap();
    let want = refs()["frechet_distance"].as_f64().unwrap();
    assert!((got - want).abs() <= 1e-4 * want.max(1.0), "{got} vs pytorch-fid {want}");
    assert!(want > 0.5, "the two sets must differ for the check to mean something: {want}");
}

/// Missing weights point to the download command; a file with a missing or mis-shaped tensor is
/// reported in full, with the file's name.
#[test]
fn inception_weights_errors_say_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("none.safetensors");
    let e = FidInceptionV3::load(&missing, Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("none.safetensors") && e.contains("cargo xtask download fid-inception"), "{e}");
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = FidInceptionV3::new(vs.root());
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(n, _)| n != "Mixed_7c.branch_pool.bn.running_var" && n != "fc.weight")
        .collect();
    named.push(("fc.weight".into(), Tensor::zeros([1000, 2048], (Kind::Float, Device::Cpu))));
    let path = tmp.path().join("bad.safetensors");
    Tensor::write_safetensors(&named, &path).unwrap();
    let e = FidInceptionV3::load(&path, Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("bad.safetensors") && e.contains("Mixed_7c.branch_pool.bn.running_var"), "{e}");
    assert!(e.contains("fc.weight: model expects [1008, 2048], file has [1000, 2048]"), "{e}");
}
