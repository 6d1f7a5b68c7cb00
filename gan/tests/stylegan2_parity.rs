//! StyleGAN2's modulated convolution and FIR resampling against PyTorch: the numbers in
//! `reference/modconv_refs.json` come from `reference/gen_modconv_refs.py` (torch 2.13.0),
//! which implements stylegan2-ada-pytorch's `modulated_conv2d`, `conv2d_resample` and
//! `upfirdn2d`; inputs are `sin(a * i + b)` over the flat index, built here the same way.
use genlab_gan::stylegan2::layers::{
    conv2d_resample, downsample2d, modulated_conv2d, setup_filter, upsample2d, Resample,
};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn refs() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/modconv_refs.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn det(shape: &[i64], a: f64, b: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    (Tensor::arange(n, (Kind::Double, Device::Cpu)) * a + b).sin().to_kind(Kind::Float).reshape(shape)
}

fn expected(case: &Value) -> Tensor {
    let shape: Vec<i64> = case["shape"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let values: Vec<f32> = case["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    Tensor::from_slice(&values).reshape(shape.as_slice())
}

fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let diff = (got - want).abs().max().double_value(&[]);
    let tol = 1e-5 * (1.0 + want.abs().max().double_value(&[]));
    assert!(diff <= tol, "{what}: max |diff| {diff:e} > {tol:e}");
}

#[test]
fn modulated_conv2d_matches_pytorch_in_both_forms() {
    let r = refs();
    let f = setup_filter(&[1.0, 3.0, 3.0, 1.0], Device::Cpu).unwrap();
    let cases = r["modconv"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let g = |k: &str| case[k].as_i64().unwrap();
        let (n, i, o, k, h, up) = (g("n"), g("in_channels"), g("out_channels"), g("kernel"), g("size"), g("up"));
        let x = det(&[n, i, h, h], 0.37, 0.1);
        let weight = det(&[o, i, k, k], 0.91, 0.5);
        let styles = det(&[n, i], 0.23, 0.7) * 0.5 + 1.0;
        let oh = h * up;
        let noise = case["noise"].as_bool().unwrap().then(|| det(&[n, 1, oh, oh], 0.17, 0.3) * 0.1);
        let resample = if up > 1 { Resample::Up } else { Resample::None };
        let want = expected(case);
        for fused in [true, false] {
            let got = modulated_conv2d(
                &x,
                &weight,
                &styles,
                noise.as_ref(),
                resample,
                g("padding"),
                (up > 1).then_some(&f),
                case["demodulate"].as_bool().unwrap(),
                case["flip_weight"].as_bool().unwrap(),
                fused,
            )
            .unwrap();
            assert_close(&got, &want, &format!("{} (fused {fused})", case["name"]));
        }
    }
}

#[test]
fn fir_resampling_matches_pytorch() {
    let r = refs();
    let f = setup_filter(&[1.0, 3.0, 3.0, 1.0], Device::Cpu).unwrap();
    let x = det(&[1, 2, 8, 8], 0.29, 0.2);
    let w3 = det(&[3, 2, 3, 3], 0.53, 0.4);
    let w1 = det(&[3, 2, 1, 1], 0.53, 0.4);
    let cases = r["resample"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let got = match name {
            "upsample2d" => upsample2d(&x, &f),
            "downsample2d" => downsample2d(&x, &f),
            "conv3x3_down" => conv2d_resample(&x, &w3, Some(&f), 1, 2, 1, 1, true),
            "conv1x1_down" => conv2d_resample(&x, &w1, Some(&f), 1, 2, 0, 1, true),
            "conv3x3_up" => conv2d_resample(&x, &w3, Some(&f), 2, 1, 1, 1, false),
            other => panic!("unknown reference case {other}"),
        };
        assert_close(&got, &expected(case), name);
    }
}

#[test]
fn modulated_conv2d_rejects_mismatched_shapes() {
    let x = Tensor::zeros([2, 3, 4, 4], (Kind::Float, Device::Cpu));
    let w = Tensor::zeros([4, 5, 3, 3], (Kind::Float, Device::Cpu));
    let s = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
    let err = modulated_conv2d(&x, &w, &s, None, Resample::None, 1, None, true, true, true).unwrap_err();
    assert!(err.to_string().contains("weight [4, 5, 3, 3]"), "{err}");
}
