//! Stable-Diffusion-compatible pipelines against diffusers 0.42.1 on the tiny models of
//! `reference/sd_tiny.py` (built and run by diffusers and transformers at test time): the tokenizer's ids,
//! the autoencoder, whole 5-step DDIM and DPM-Solver++ text-to-image runs (SD 1.x and 2.x styles) and
//! image-to-image, from the diffusers folders and from original single-file checkpoints, all in f32 within
//! 1e-4 relative L2. Bad folders and checkpoints give errors that name every problem.
#[path = "common/sd_reference.rs"]
mod sd_reference;

use std::path::Path;

use anyhow::Result;
use genlab_core::seed::with_seed;
use genlab_diffusion::sd::{GenerateOptions, SdConfig, StableDiffusion};
use genlab_diffusion::{clip::ClipTokenizer, SchedulerKind, TimestepSpacing};
use sd_reference as r;
use tch::{Device, Kind, Tensor};

fn options(scheduler: SchedulerKind) -> GenerateOptions {
    // The settings of sd_tiny.py.
    GenerateOptions {
        prompt: "a photo of a cat".into(),
        negative_prompt: "blurry".into(),
        steps: 5,
        guidance_scale: 7.5,
        scheduler: Some(scheduler),
        seed: 42,
        height: Some(32),
        width: Some(32),
        ..GenerateOptions::default()
    }
}

fn folder(name: &str) -> StableDiffusion {
    StableDiffusion::from_dir(&r::dir().join(name), Device::Cpu).expect("loading the diffusers folder")
}

fn check_txt2img(sd: &StableDiffusion, name: &str, sampler: &str, kind: SchedulerKind, what: &str) {
    let out = sd.txt2img(&options(kind)).unwrap();
    let p = format!("{name}.{sampler}.");
    let want_t: Vec<f64> =
        Vec::<i64>::try_from(r::io(&(p.clone() + "timesteps"))).unwrap().into_iter().map(|t| t as f64).collect();
    assert_eq!(out.timesteps, want_t, "{what}: timesteps");
    r::assert_close(&format!("{what}: final latents"), &out.latents, &r::io(&(p.clone() + "latents")));
    r::assert_close(&format!("{what}: images"), &out.images, &r::io(&(p + "image")));
}

#[test]
fn the_seed_gives_diffusers_initial_latents() {
    let ours = with_seed(42, || Tensor::randn([1, 4, 16, 16], (Kind::Float, Device::Cpu)));
    assert!(ours.equal(&r::io("latents_init")), "libtorch's CPU generator differs from torch's");
}

#[test]
fn tokenizers_read_from_the_model_folders_give_the_reference_ids() {
    for name in ["pipeline", "pipeline_v2"] {
        let tok = ClipTokenizer::from_dir(&r::dir().join(name).join("tokenizer")).unwrap();
        let ids = tok.encode_batch(&["a photo of a cat", "blurry"]);
        assert!(ids.equal(&r::io(&format!("{name}.text.input_ids"))), "{name}");
    }
}

#[test]
fn autoencoder_encode_and_decode_match() {
    for name in ["pipeline", "pipeline_v2"] {
        let sd = folder(name);
        let p = format!("{name}.vae.");
        let post = tch::no_grad(|| sd.vae.encode(&r::io(&(p.clone() + "image")))).unwrap();
        r::assert_close(&format!("{name} vae mean"), &post.mean, &r::io(&(p.clone() + "mean")));
        r::assert_close(&format!("{name} vae logvar"), &post.logvar, &r::io(&(p.clone() + "logvar")));
        let dec = tch::no_grad(|| sd.vae.decode(&r::io(&(p.clone() + "mean")))).unwrap();
        r::assert_close(&format!("{name} vae decode"), &dec, &r::io(&(p + "decode")));
    }
}

#[test]
fn text_to_image_matches_diffusers_with_ddim_and_dpm_solver() {
    let sd = folder("pipeline");
    // The folder's scheduler_config.json says DDIMScheduler.
    assert_eq!(sd.config.scheduler, Some(SchedulerKind::Ddim));
    check_txt2img(&sd, "pipeline", "ddim", SchedulerKind::Ddim, "SD1 DDIM");
    check_txt2img(&sd, "pipeline", "dpmpp", SchedulerKind::DpmPp2m, "SD1 DPM-Solver++");
}

#[test]
fn one_step_euler_with_trailing_timesteps_matches_diffusers() {
    // SD-Turbo's recipe (its scheduler_config.json says EulerDiscreteScheduler, timestep_spacing "trailing").
    let mut sd = folder("pipeline");
    sd.config.schedule.timestep_spacing = Some(TimestepSpacing::Trailing);
    let opts = GenerateOptions {
        steps: 1,
        guidance_scale: 0.0,
        negative_prompt: String::new(),
        ..options(SchedulerKind::Euler)
    };
    let out = sd.txt2img(&opts).unwrap();
    let want: Vec<i64> =
        Vec::<f32>::try_from(r::io("pipeline.turbo.timesteps")).unwrap().iter().map(|t| *t as i64).collect();
    assert_eq!(out.timesteps.iter().map(|t| *t as i64).collect::<Vec<_>>(), want);
    r::assert_close("Euler trailing, 1 step, no guidance: latents", &out.latents, &r::io("pipeline.turbo.latents"));
    r::assert_close("Euler trailing, 1 step, no guidance: images", &out.images, &r::io("pipeline.turbo.image"));
}

#[test]
fn sdxl_style_text_to_image_matches_diffusers() {
    let sd = folder("pipeline_xl");
    assert!(sd.text_encoder_2.is_some() && sd.unet.takes_added_conditioning());
    assert_eq!(sd.config.scheduler, Some(SchedulerKind::Euler));
    // The second encoder alone: its penultimate layer and pooled projection.
    let ids = sd.tokenizer_2.as_ref().unwrap().encode_batch(&["a photo of a cat"]);
    let (hidden, pooled) = sd.text_encoder_2.as_ref().unwrap().penultimate_and_pooled(&ids, 0).unwrap();
    r::assert_within("SDXL text_encoder_2 penultimate", &hidden, &r::io("xl.text2.penultimate"), 1e-6);
    r::assert_within("SDXL text_encoder_2 text_embeds", &pooled.unwrap(), &r::io("xl.text2.text_embeds"), 1e-6);
    // Whole runs: with a negative prompt, and with none (zero negative conditioning).
    for (key, negative) in [("negative", "blurry"), ("zeros", "")] {
        let opts = GenerateOptions {
            guidance_scale: 5.0,
            negative_prompt: negative.into(),
            scheduler: None,
            ..options(SchedulerKind::Euler)
        };
        let out = sd.txt2img(&opts).unwrap();
        r::assert_close(&format!("SDXL Euler, {key}: latents"), &out.latents, &r::io(&format!("xl.{key}.latents")));
        r::assert_close(&format!("SDXL Euler, {key}: images"), &out.images, &r::io(&format!("xl.{key}.image")));
    }
}

#[test]
fn sd2_style_text_to_image_matches_diffusers() {
    // gelu text encoder padded with "!", linear projections, per-block head dims, upcast attention, v-prediction.
    let sd = folder("pipeline_v2");
    check_txt2img(&sd, "pipeline_v2", "ddim", SchedulerKind::Ddim, "SD2 DDIM v-prediction");
}

#[test]
fn image_to_image_matches_diffusers() {
    let sd = folder("pipeline");
    let out = sd.img2img(&options(SchedulerKind::Ddim), &r::io("img2img.init_image"), 0.6).unwrap();
    assert_eq!(out.timesteps.len(), 3, "strength 0.6 of 5 steps");
    r::assert_close("img2img images", &out.images, &r::io("img2img.image"));
}

#[test]
fn single_file_checkpoints_load_with_the_same_outputs() -> Result<()> {
    for (file, name) in [("single_file.safetensors", "pipeline"), ("single_file_v2.safetensors", "pipeline_v2")] {
        let dir = r::dir().join(name);
        let sd = StableDiffusion::load(&r::dir().join(file), Some(dir.to_str().unwrap()), Device::Cpu)?;
        check_txt2img(&sd, name, "ddim", SchedulerKind::Ddim, &format!("{file} DDIM"));
    }
    Ok(())
}

#[test]
fn inpainting_matches_diffusers_with_plain_and_inpainting_unets() {
    let image = r::io("img2img.init_image");
    let mask = r::io("inpaint.mask");
    let plain = folder("pipeline");
    for (key, strength) in [("plain_s100", 1.0), ("plain_s60", 0.6)] {
        let out = plain.inpaint(&options(SchedulerKind::Ddim), &image, &mask, strength).unwrap();
        r::assert_close(&format!("inpaint {key}"), &out.images, &r::io(&format!("inpaint.{key}")));
    }
    let model = folder("pipeline_inpaint");
    assert_eq!(model.config.unet.in_channels, 9);
    let out = model.inpaint(&options(SchedulerKind::Ddim), &image, &mask, 1.0).unwrap();
    r::assert_close("inpaint with a 9-channel UNet", &out.images, &r::io("inpaint.model_s100"));
    // An inpainting UNet cannot do plain text-to-image.
    assert!(model.txt2img(&options(SchedulerKind::Ddim)).unwrap_err().to_string().contains("use inpaint"));
}

#[test]
fn inpainting_keeps_the_known_region_and_regenerates_the_rest() {
    let sd = folder("pipeline");
    let image = r::io("img2img.init_image");
    let opts = options(SchedulerKind::Ddim);
    // Nothing to regenerate: the result is the autoencoder's reconstruction of the image's latents.
    let none = Tensor::zeros([1, 1, 32, 32], (Kind::Float, Device::Cpu));
    let out = sd.inpaint(&opts, &image, &none, 1.0).unwrap();
    let x = &image * 2.0 - 1.0;
    let post = tch::no_grad(|| sd.vae.encode(&x)).unwrap();
    let z = &post.mean + post.std() * with_seed(42, || Tensor::randn(post.mean.size(), (Kind::Float, Device::Cpu)));
    r::assert_close("inpaint with an empty mask", &out.latents, &(&z * sd.config.vae.scaling_factor));
    // The left half regenerated: the right half's latents are the image's, the left half's are not.
    let mask = Tensor::zeros([1, 1, 32, 32], (Kind::Float, Device::Cpu));
    let _ = mask.narrow(3, 0, 16).fill_(1.0);
    let half = sd.inpaint(&opts, &image, &mask, 1.0).unwrap();
    let right = |t: &Tensor| t.narrow(3, 8, 8);
    r::assert_close("inpaint known half", &right(&half.latents), &right(&out.latents));
    let left = |t: &Tensor| t.narrow(3, 0, 8);
    assert!(r::rel_l2(&left(&half.latents), &left(&out.latents)) > 0.1, "the masked half was not regenerated");
    // Shapes are checked.
    let e = sd.inpaint(&opts, &image, &Tensor::zeros([1, 1, 16, 32], (Kind::Float, Device::Cpu)), 1.0).unwrap_err();
    assert!(e.to_string().contains("inpaint mask: expected [1 or 1, 1, 32, 32], got [1, 1, 16, 32]"), "{e}");
}

#[test]
fn options_are_checked() {
    let sd = folder("pipeline");
    let mut o = options(SchedulerKind::Ddim);
    o.height = Some(31);
    assert!(sd.txt2img(&o).unwrap_err().to_string().contains("multiples of the autoencoder's factor 2, got 31x32"));
    let e = sd.img2img(&options(SchedulerKind::Ddim), &r::io("img2img.init_image"), 0.1).unwrap_err();
    assert!(e.to_string().contains("leaves no step"), "{e}");
    let e = sd.img2img(&options(SchedulerKind::Ddim), &Tensor::zeros([1, 1, 32, 32], (Kind::Float, Device::Cpu)), 0.5);
    assert!(e.unwrap_err().to_string().contains("expected [batch, 3, h, w]"));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn broken_folders_and_checkpoints_name_every_problem() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("model");
    copy_dir(&r::dir().join("pipeline"), &dir);

    // A missing weight file names itself.
    std::fs::remove_file(dir.join("unet/diffusion_pytorch_model.safetensors"))?;
    let e = StableDiffusion::from_dir(&dir, Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("unet/diffusion_pytorch_model.safetensors: file not found"), "{e}");

    // A missing config names itself; so does a folder that is no diffusers model.
    let e = StableDiffusion::from_dir(tmp.path(), Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("model_index.json: file not found"), "{e}");
    std::fs::remove_file(dir.join("vae/config.json"))?;
    let e = StableDiffusion::from_dir(&dir, Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("vae/config.json"), "{e}");

    // A single file with a key missing, one mis-shaped and one unexpected, in two components: all reported at once.
    let mut named = Tensor::read_safetensors(r::dir().join("single_file.safetensors"))?;
    named.retain(|(k, _)| k != "model.diffusion_model.out.2.bias");
    for (k, t) in named.iter_mut() {
        if k == "first_stage_model.decoder.conv_in.weight" {
            *t = Tensor::zeros([1, 2, 3, 3], (Kind::Float, Device::Cpu));
        }
    }
    named.push((
        "cond_stage_model.transformer.text_model.extra.weight".into(),
        Tensor::zeros([2], (Kind::Float, Device::Cpu)),
    ));
    let bad = tmp.path().join("bad.safetensors");
    Tensor::write_safetensors(&named, &bad)?;
    let cfg = SdConfig::from_dir(&r::dir().join("pipeline"))?;
    let tok = ClipTokenizer::from_dir(&r::dir().join("pipeline/tokenizer"))?;
    let e = StableDiffusion::from_single_file(&bad, cfg, tok, Device::Cpu).unwrap_err().to_string();
    for want in [
        "bad.safetensors",
        "unet:",
        "missing (1): conv_out.bias",
        "vae:",
        "decoder.conv_in.weight: model expects [32, 4, 3, 3], file has [1, 2, 3, 3]",
        "text_encoder:",
        "unexpected (1): text_model.extra.weight",
    ] {
        assert!(e.contains(want), "`{want}` not in: {e}");
    }
    // Pickled checkpoints are refused with the reason.
    let ckpt = tmp.path().join("model.ckpt");
    std::fs::write(&ckpt, b"x")?;
    let e = StableDiffusion::load(&ckpt, Some("sd15"), Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("only .safetensors"), "{e}");
    Ok(())
}
