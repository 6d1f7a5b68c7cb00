//! genlab's `AutoencoderKL` against diffusers' on the same weights: a diffusers `save_pretrained` folder
//! (`reference/autoencoder_kl_tiny/`, from `reference/gen_autoencoder_kl_refs.py`) loads with its own
//! `config.json` and with no missing, unexpected or mis-shaped key, and the posterior mean, log-variance and
//! the decode of the mean agree with diffusers' to 1e-4 relative L2.
use std::path::{Path, PathBuf};

use genlab_core::checkpoint::{load_var_store, read_safetensors};
use genlab_vae::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig, SampleSize};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference")
}

fn rel_l2(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size());
    (got - want).norm().double_value(&[]) / want.norm().double_value(&[]).max(1e-12)
}

#[test]
fn loads_a_diffusers_autoencoder_kl_and_matches_its_outputs() {
    let dir = reference().join("autoencoder_kl_tiny");
    let cfg = AutoencoderKLConfig::from_json_file(&dir.join("config.json")).unwrap();
    assert_eq!(cfg.block_out_channels, [8, 16]);
    assert_eq!(cfg.sample_size, SampleSize::Square(16));
    assert_eq!(cfg.scaling_factor, 0.18215);

    let vs = VarStore::new(Device::Cpu);
    let model = AutoencoderKL::new(vs.root(), cfg).unwrap();
    // Reports every missing, unexpected and mis-shaped name at once.
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    load_var_store(&vs, &weights).unwrap();
    assert_eq!(vs.variables().len(), read_safetensors(&weights).unwrap().len());

    let io: std::collections::HashMap<String, Tensor> =
        read_safetensors(&reference().join("autoencoder_kl_tiny_io.safetensors")).unwrap().into_iter().collect();
    let x = &io["input.sample"];
    let (post, dec) = tch::no_grad(|| {
        let post = model.encode(x).unwrap();
        let dec = model.decode(&post.mean).unwrap();
        (post, dec)
    });
    let errors = [
        ("mean", rel_l2(&post.mean, &io["output.mean"])),
        ("logvar", rel_l2(&post.logvar, &io["output.logvar"])),
        ("decode", rel_l2(&dec, &io["output.decode"])),
    ];
    eprintln!("relative L2 error vs diffusers: {errors:?}");
    for (name, e) in errors {
        assert!(e < 1e-4, "{name}: relative L2 error {e:.3e}");
    }
    assert_eq!(post.mean.size(), [2, 4, 8, 8]);
    // forward = decode(mode), and the diffusion latents round-trip through the scaling factor.
    let fwd = tch::no_grad(|| model.forward(x, false)).unwrap();
    assert!(rel_l2(&fwd, &io["output.decode"]) < 1e-4);
    let lat = tch::no_grad(|| model.encode_to_latents(x, false)).unwrap();
    assert!(rel_l2(&lat, &(&io["output.mean"] * 0.18215)) < 1e-4);
    let back = tch::no_grad(|| model.decode_latents(&lat)).unwrap();
    assert!(rel_l2(&back, &io["output.decode"]) < 1e-4);
}

/// A Stable Diffusion 1.x `vae/config.json` (diffusers 0.6-era keys: no `scaling_factor`, which then takes
/// diffusers' default) deserialises to the `sd15` preset, and the model has the checkpoint's parameter count.
#[test]
fn sd15_config_json_parses_to_the_preset() {
    let text = r#"{
      "_class_name": "AutoencoderKL",
      "_diffusers_version": "0.6.0",
      "act_fn": "silu",
      "block_out_channels": [128, 256, 512, 512],
      "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
      "in_channels": 3,
      "latent_channels": 4,
      "layers_per_block": 2,
      "norm_num_groups": 32,
      "out_channels": 3,
      "sample_size": 512,
      "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
    }"#;
    let cfg = AutoencoderKLConfig::from_json_str(text).unwrap();
    assert_eq!(cfg, AutoencoderKLConfig::sd15());
    assert_eq!(cfg.downsampling_factor(), 8);
    let vs = VarStore::new(Device::Cpu);
    let _model = AutoencoderKL::new(vs.root(), cfg).unwrap();
    let params: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    // diffusers: sum(p.numel() for p in AutoencoderKL.from_config(<this config>).parameters()).
    assert_eq!(params, 83_653_863);
}

#[test]
fn bad_configs_and_inputs_are_clear_errors() {
    let e = AutoencoderKLConfig::from_json_str(r#"{"block_out_channels": [8, 12], "norm_num_groups": 8}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiple of norm_num_groups 8") && e.contains("12"), "{e}");
    let e = AutoencoderKLConfig::from_json_str(r#"{"down_block_types": ["AttnDownEncoderBlock2D"]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("AttnDownEncoderBlock2D") && e.contains("not supported"), "{e}");
    let e = AutoencoderKLConfig::from_json_str(r#"{"block_out_channels": "wide"}"#).unwrap_err().to_string();
    assert!(e.contains("not an AutoencoderKL configuration"), "{e}");
    let e = AutoencoderKLConfig::from_json_file(Path::new("/nonexistent/config.json")).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/config.json"), "{e}");

    let cfg = AutoencoderKLConfig::small([1, 8, 8], vec![8, 16]);
    let vs = VarStore::new(Device::Cpu);
    let model = AutoencoderKL::new(vs.root(), cfg).unwrap();
    let e = model.encode(&Tensor::zeros([2, 3, 8, 8], (Kind::Float, Device::Cpu))).unwrap_err().to_string();
    assert!(e.contains("[batch, 1, h, w]") && e.contains("[2, 3, 8, 8]"), "{e}");
    let e = model.encode(&Tensor::zeros([2, 1, 1, 8], (Kind::Float, Device::Cpu))).unwrap_err().to_string();
    assert!(e.contains("h, w >= 2"), "{e}");
    let e = model.decode(&Tensor::zeros([2, 3, 4, 4], (Kind::Float, Device::Cpu))).unwrap_err().to_string();
    assert!(e.contains("[batch, 4, h, w]"), "{e}");
    // Odd sizes round down at each halving, as diffusers' padding does: 7 -> 3.
    let post = tch::no_grad(|| model.encode(&Tensor::zeros([1, 1, 7, 9], (Kind::Float, Device::Cpu)))).unwrap();
    assert_eq!(post.mean.size(), [1, 4, 3, 4]);
}
