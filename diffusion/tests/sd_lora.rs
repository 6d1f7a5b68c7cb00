//! LoRA adapters on Stable-Diffusion-compatible models against diffusers 0.42.1 and peft 0.22 on the tiny
//! pipeline of `reference/sd_tiny.py`: two peft adapters (attention projections; 3x3, stride-2 and 1x1
//! convolutions, time projections, feed-forward and text MLP layers, with rank and alpha patterns) unfused at
//! weights 0.5 and 0.8 and fused at 1, and one adapter from its peft, kohya and diffusers layouts, each giving
//! diffusers' image within 1e-4 relative L2. Fusing and unfusing restores the weights; bad files are refused
//! by name and leave the model as it was.
#[path = "common/sd_reference.rs"]
mod sd_reference;

use std::path::{Path, PathBuf};

use genlab_diffusion::sd::{GenerateOptions, StableDiffusion};
use genlab_diffusion::{DiffusionError, SchedulerKind};
use sd_reference as r;
use tch::{Device, Kind, Tensor};

fn options() -> GenerateOptions {
    GenerateOptions {
        prompt: "a photo of a cat".into(),
        negative_prompt: "blurry".into(),
        steps: 5,
        guidance_scale: 7.5,
        scheduler: Some(SchedulerKind::Ddim),
        seed: 42,
        height: Some(32),
        width: Some(32),
        ..GenerateOptions::default()
    }
}

fn pipeline(name: &str) -> StableDiffusion {
    StableDiffusion::from_dir(&r::dir().join(name), Device::Cpu).expect("loading the diffusers folder")
}

fn lora(name: &str) -> PathBuf {
    match name {
        "a" | "b" | "xl" => r::dir().join(format!("lora_{name}")).join("pytorch_lora_weights.safetensors"),
        other => r::dir().join(format!("lora_{other}.safetensors")),
    }
}

fn image(sd: &StableDiffusion) -> Tensor {
    sd.txt2img(&options()).expect("txt2img").images
}

/// Every adaptable weight of the model, copied.
fn weights(sd: &StableDiffusion) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for t in [sd.unet.lora_targets(), sd.text_encoder.lora_targets()] {
        out.extend(t.iter().map(|(n, t)| (n.clone(), t.weight().copy())));
    }
    out
}

#[test]
fn unfused_adapters_at_their_weights_match_diffusers() {
    let mut sd = pipeline("pipeline");
    let a = sd.load_lora(&lora("a"), 0.5, false).unwrap().clone();
    let b = sd.load_lora(&lora("b"), 0.8, false).unwrap().clone();
    assert_eq!((a.adapter.as_str(), b.adapter.as_str()), ("pytorch_lora_weights", "pytorch_lora_weights_2"));
    // a: 4 projections x 2 attentions x 11 transformers (UNet: 4 down, 1 mid, 6 up) + 4 x 3 layers (text encoder).
    assert_eq!(a.layers, 4 * 2 * 11 + 4 * 3, "{a}");
    assert!(a.unmatched.is_empty() && b.unmatched.is_empty());
    let got = image(&sd);
    r::assert_close("LoRA a x0.5 + b x0.8 unfused", &got, &r::io("lora.unfused.image"));
    // The adapters matter: without them the image is far from this one.
    assert!(r::rel_l2(&r::io("pipeline.ddim.image"), &got) > 1e-2);
}

#[test]
fn fused_adapters_match_diffusers_and_unfusing_restores_the_weights() {
    let mut sd = pipeline("pipeline");
    let before = weights(&sd);
    sd.load_lora(&lora("a"), 1.0, false).unwrap();
    sd.load_lora(&lora("b"), 1.0, false).unwrap();
    let unfused = image(&sd);
    sd.fuse_lora();
    let changed = weights(&sd).iter().zip(&before).filter(|((_, w), (_, w0))| !w.equal(w0)).count();
    assert!(changed > 50, "fusing changed only {changed} weights");
    r::assert_close("LoRA a + b fused", &image(&sd), &r::io("lora.fused.image"));
    r::assert_close("fused vs unfused", &image(&sd), &unfused);
    let e = sd.set_lora_weight("pytorch_lora_weights", 0.3).unwrap_err().to_string();
    assert!(e.contains("unfuse"), "{e}");
    sd.unfuse_lora();
    for ((name, w), (_, w0)) in weights(&sd).iter().zip(&before) {
        let err = r::rel_l2(w, w0);
        assert!(err <= 1e-6, "{name}: relative L2 {err:e} after fusing and unfusing");
    }
    r::assert_close("unfused again", &image(&sd), &unfused);
    assert!(sd.unload_lora("pytorch_lora_weights") && sd.unload_lora("pytorch_lora_weights_2"));
    r::assert_close("adapters unloaded", &image(&sd), &r::io("pipeline.ddim.image"));
}

#[test]
fn kohya_and_diffusers_layouts_give_the_peft_image() {
    for layout in ["a", "a_kohya", "a_diffusers"] {
        let mut sd = pipeline("pipeline");
        let rep = sd.load_lora(&lora(layout), 1.0, false).unwrap().clone();
        assert_eq!(rep.layers, 100, "{layout}: {rep}");
        r::assert_close(&format!("LoRA a from the {layout} layout"), &image(&sd), &r::io("lora.a.image"));
    }
}

/// `lora_a` with `edit` applied to its tensors, written to a temporary file (metadata dropped).
fn edited(dir: &Path, name: &str, edit: impl Fn(&mut Vec<(String, Tensor)>)) -> PathBuf {
    let mut named = Tensor::read_safetensors(lora("a_kohya")).unwrap();
    edit(&mut named);
    let path = dir.join(name);
    Tensor::write_safetensors(&named, &path).unwrap();
    path
}

fn lora_error(sd: &mut StableDiffusion, path: &Path) -> String {
    match sd.load_lora(path, 1.0, false) {
        Err(e @ DiffusionError::Lora { .. }) => e.to_string(),
        other => panic!("{}: expected a LoRA error, got {other:?}", path.display()),
    }
}

#[test]
fn bad_files_are_refused_by_name_and_leave_the_model_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let mut sd = pipeline("pipeline");
    const Q: &str = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let zeros = |s: &[i64]| Tensor::zeros(s, (Kind::Float, Device::Cpu));

    let rank = edited(dir.path(), "rank.safetensors", |n| {
        n.iter_mut().find(|(k, _)| k == &format!("{Q}.lora_up.weight")).unwrap().1 = zeros(&[32, 3]);
    });
    let e = lora_error(&mut sd, &rank);
    assert!(e.contains(Q) && e.contains("[32, 3]") && e.contains("[32, 4]"), "{e}");

    let width = edited(dir.path(), "width.safetensors", |n| {
        n.iter_mut().find(|(k, _)| k == &format!("{Q}.lora_down.weight")).unwrap().1 = zeros(&[4, 33]);
    });
    let e = lora_error(&mut sd, &width);
    assert!(e.contains(Q) && e.contains("[4, 33]") && e.contains("[4, 32]"), "{e}");

    let no_up = edited(dir.path(), "no_up.safetensors", |n| n.retain(|(k, _)| k != &format!("{Q}.lora_up.weight")));
    let e = lora_error(&mut sd, &no_up);
    assert!(e.contains(Q) && e.contains("no up projection"), "{e}");

    let loha = edited(dir.path(), "loha.safetensors", |n| n.push((format!("{Q}.hada_w1_a"), zeros(&[4, 32]))));
    let e = lora_error(&mut sd, &loha);
    assert!(e.contains("LoHa") && e.contains("hada_w1_a"), "{e}");

    let stray = edited(dir.path(), "stray.safetensors", |n| {
        n.push(("lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight".into(), zeros(&[4, 32])));
        n.push(("lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight".into(), zeros(&[32, 4])));
    });
    let e = lora_error(&mut sd, &stray);
    assert!(
        e.contains("2 keys match no layer") && e.contains("down_blocks_9") && e.contains("--lora-allow-unmatched"),
        "{e}"
    );

    let pickle = dir.path().join("style.bin");
    std::fs::write(&pickle, b"not read").unwrap();
    assert!(lora_error(&mut sd, &pickle).contains("pickled"));
    let corrupt = dir.path().join("corrupt.safetensors");
    std::fs::write(&corrupt, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
    assert!(lora_error(&mut sd, &corrupt).contains("corrupt.safetensors"));

    // None of it attached anything.
    assert!(sd.loras().is_empty());
    r::assert_close("after refused files", &image(&sd), &r::io("pipeline.ddim.image"));

    // Allowed, the unmatched keys are left out and listed.
    let rep = sd.load_lora(&stray, 1.0, true).unwrap().clone();
    assert_eq!((rep.layers, rep.unmatched.len()), (100, 2));
    assert!(sd.describe_size().contains("2 unmatched keys ignored"), "{}", sd.describe_size());
}

#[test]
fn an_sdxl_lora_from_diffusers_and_kohya_sgm_layouts_matches_diffusers() {
    let base = pipeline("pipeline_xl");
    let (unet, text) = (base.unet.lora_targets(), base.text_encoder.lora_targets());
    // Targets: every to_q/k/v/out.0, conv1, conv2, time_emb_proj and sampler conv of the UNet; six projections
    // per layer of both text encoders.
    let count = |t: &genlab_core::lora::Targets, ends: &[&str]| {
        t.iter().filter(|(n, _)| ends.iter().any(|e| n.ends_with(e))).count()
    };
    let want =
        count(unet, &[".to_q", ".to_k", ".to_v", ".to_out.0", ".conv1", ".conv2", ".time_emb_proj", "samplers.0.conv"])
            + 2 * count(text, &["_proj", ".fc1", ".fc2"]);
    for layout in ["xl", "xl_kohya"] {
        let mut sd = pipeline("pipeline_xl");
        let rep = sd.load_lora(&lora(layout), 0.7, false).unwrap().clone();
        assert_eq!((rep.layers, rep.unmatched.len()), (want, 0), "{layout}: {rep}");
        let opts = GenerateOptions { guidance_scale: 5.0, scheduler: None, ..options() };
        let got = sd.txt2img(&opts).unwrap().images;
        r::assert_close(&format!("SDXL LoRA x0.7 from the {layout} layout"), &got, &r::io("lora.xl.image"));
        assert!(r::rel_l2(&got, &r::io("xl.negative.image")) > 1e-2);
    }
}

#[test]
fn an_sd1_lora_on_an_sdxl_model_is_refused_with_the_keys_that_do_not_match() {
    let mut sd = pipeline("pipeline_xl");
    let e = lora_error(&mut sd, &lora("a"));
    assert!(e.contains("match no layer") && e.contains("unet.down_blocks.0.attentions"), "{e}");
    assert!(sd.loras().is_empty());
}
