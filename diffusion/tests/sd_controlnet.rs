//! ControlNets against diffusers 0.42.1 on the tiny pipeline of `reference/sd_tiny.py`: ControlNets made by
//! `ControlNetModel.from_unet` with random zero convolutions give `StableDiffusionControlNetPipeline`'s images
//! within 1e-4 relative L2 (one ControlNet; two at once with their own scales and step ranges; guess mode; and
//! SDXL's pipeline with and without guess mode); a
//! ControlNet with SD's conditioning embedding gives diffusers' residuals from its folder and from an original
//! single file; a new ControlNet changes nothing; images of the wrong size and ControlNets of another model
//! are refused by name.
#[path = "common/sd_reference.rs"]
mod sd_reference;

use std::path::Path;

use genlab_diffusion::sd::{Control, ControlNet, ControlNetConfig, ControlScale, GenerateOptions, StableDiffusion};
use sd_reference as r;
use tch::{Device, Kind, Tensor};

fn options() -> GenerateOptions {
    // sd_tiny.py's settings; the folder's DDIM, the size from the control image.
    GenerateOptions {
        prompt: "a photo of a cat".into(),
        negative_prompt: "blurry".into(),
        steps: 5,
        guidance_scale: 7.5,
        seed: 42,
        ..GenerateOptions::default()
    }
}

fn pipeline(name: &str) -> StableDiffusion {
    StableDiffusion::from_dir(&r::dir().join(name), Device::Cpu).expect("loading the diffusers folder")
}

fn net(name: &str) -> ControlNet {
    ControlNet::open(&r::dir().join(name), None, Device::Cpu, Kind::Float).expect("loading the ControlNet")
}

#[test]
fn one_controlnet_matches_diffusers() {
    let (sd, cn, hint) = (pipeline("pipeline"), net("controlnet"), r::io("cn.hint"));
    let c = Control { scale: 0.8, ..Control::new(&cn, &hint) };
    let out = sd.txt2img_controlled(&options(), &[c]).unwrap();
    r::assert_close("one ControlNet at 0.8", &out.images, &r::io("cn.one.image"));
    assert!(r::rel_l2(&out.images, &r::io("pipeline.ddim.image")) > 1e-2, "the ControlNet changed nothing");
}

#[test]
fn two_controlnets_with_their_own_scales_and_step_ranges_match_diffusers() {
    let (sd, a, b) = (pipeline("pipeline"), net("controlnet"), net("controlnet_2"));
    let (ha, hb) = (r::io("cn.hint"), r::io("cn.hint_2"));
    let controls = [
        Control { scale: 0.6, end: 0.8, ..Control::new(&a, &ha) },
        Control { scale: 1.0, start: 0.2, ..Control::new(&b, &hb) },
    ];
    let out = sd.txt2img_controlled(&options(), &controls).unwrap();
    r::assert_close("two ControlNets", &out.images, &r::io("cn.two.image"));
}

#[test]
fn guess_mode_matches_diffusers() {
    let (sd, cn, hint) = (pipeline("pipeline"), net("controlnet"), r::io("cn.hint"));
    let c = Control { guess_mode: true, ..Control::new(&cn, &hint) };
    let out = sd.txt2img_controlled(&options(), &[c]).unwrap();
    r::assert_close("guess mode", &out.images, &r::io("cn.guess.image"));
}

#[test]
fn sdxl_controlnet_with_and_without_guess_mode_matches_diffusers() {
    let (sd, cn, hint) = (pipeline("pipeline_xl"), net("controlnet_xl"), r::io("cn.hint"));
    for (key, guess_mode) in [("xl", false), ("xl_guess", true)] {
        let c = Control { scale: 0.7, guess_mode, ..Control::new(&cn, &hint) };
        let out = sd.txt2img_controlled(&GenerateOptions { guidance_scale: 5.0, ..options() }, &[c]).unwrap();
        r::assert_close(&format!("SDXL ControlNet ({key})"), &out.images, &r::io(&format!("cn.{key}.image")));
    }
}

#[test]
fn folder_and_single_file_give_diffusers_residuals() {
    let folder = net("controlnet_sd");
    let single = ControlNet::open(
        &r::dir().join("controlnet_sd.safetensors"),
        Some(&r::dir().join("controlnet_sd")),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    assert_eq!(folder.cfg.image_factor(), 8);
    let text = r::io("pipeline.text.last_hidden_state");
    let t = Tensor::from_slice(&[10i64, 731]);
    let weigh = ControlScale { scale: 0.7, guess_mode: false };
    for (what, cn) in [("folder", &folder), ("single file", &single)] {
        let res =
            tch::no_grad(|| cn.forward(&r::io("cn.sd.sample"), &t, &text, None, &r::io("cn.sd.hint"), weigh)).unwrap();
        assert_eq!(res.down.len(), 9);
        for (i, d) in res.down.iter().enumerate() {
            r::assert_within(&format!("{what}: down residual {i}"), d, &r::io(&format!("cn.sd.down.{i}")), 1e-5);
        }
        r::assert_within(&format!("{what}: mid residual"), &res.mid, &r::io("cn.sd.mid"), 1e-5);
    }
}

#[test]
fn a_new_controlnet_adds_nothing() {
    let sd = pipeline("pipeline");
    let cfg = ControlNetConfig::from_json_file(&r::dir().join("controlnet/config.json")).unwrap();
    let cn = ControlNet::new(cfg, Device::Cpu).unwrap();
    let hint = r::io("cn.hint");
    let out = sd.txt2img_controlled(&options(), &[Control::new(&cn, &hint)]).unwrap();
    r::assert_close("zero-initialised ControlNet", &out.images, &r::io("pipeline.ddim.image"));
}

#[test]
fn wrong_images_and_models_are_refused_by_name() {
    let (sd, cn) = (pipeline("pipeline"), net("controlnet"));
    let small = Tensor::rand([1, 3, 16, 16], (Kind::Float, Device::Cpu));
    let opts = GenerateOptions { height: Some(32), width: Some(32), ..options() };
    let e = sd.txt2img_controlled(&opts, &[Control::new(&cn, &small)]).unwrap_err().to_string();
    assert!(e.contains("control image 0") && e.contains("[1, 3, 16, 16]") && e.contains("32, 32]"), "{e}");
    let hint = r::io("cn.hint");
    let e = sd.txt2img_controlled(&options(), &[Control { start: 0.9, end: 0.1, ..Control::new(&cn, &hint) }]);
    assert!(e.unwrap_err().to_string().contains("0 <= start < end <= 1"));
    let xl = pipeline("pipeline_xl");
    let e = xl.txt2img_controlled(&options(), &[Control::new(&cn, &hint)]).unwrap_err().to_string();
    assert!(e.contains("does not fit the model") && e.contains("another base model"), "{e}");
    let e = ControlNet::open(Path::new("/nonexistent/cn"), None, Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/cn") && e.contains("not found"), "{e}");
    let e = ControlNet::open(&r::dir().join("controlnet_sd.safetensors"), None, Device::Cpu, Kind::Float);
    assert!(e.unwrap_err().to_string().contains("--controlnet-config"));
    // The SD-embedding ControlNet's file with the 2x-embedding structure: every mismatch named.
    let e = ControlNet::open(
        &r::dir().join("controlnet_sd.safetensors"),
        Some(&r::dir().join("controlnet")),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("controlnet_sd.safetensors") && e.contains("controlnet_cond_embedding"), "{e}");
}
