//! `genlab diffusion txt2img`, and `img2img` / `inpaint` with `--model`, on the tiny diffusers models of
//! `diffusion/tests/reference/sd_tiny.py`: the written image is diffusers' to within one grey level, a
//! single-file checkpoint writes the same image as its diffusers folder, LoRA files (`--lora`) and
//! textual-inversion embeddings (`--embedding`) give diffusers' images, a ControlNet steers txt2img with a
//! `genlab data canny` edge map as the library does, and bad flags are clear errors.
#[path = "../../diffusion/tests/common/sd_reference.rs"]
mod sd_reference;

mod common;
use common::{fail, genlab, ok};
use std::path::Path;

use sd_reference as r;

/// The settings of sd_tiny.py's text-to-image runs.
const RUN: &[&str] = &[
    "--prompt",
    "a photo of a cat",
    "--negative-prompt",
    "blurry",
    "--steps",
    "5",
    "--guidance",
    "7.5",
    "--seed",
    "42",
    "--device",
    "cpu",
];

fn rgb(path: &Path) -> image::RgbImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).into_rgb8()
}

#[test]
fn txt2img_writes_diffusers_image_and_single_files_give_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let model = r::dir().join("pipeline");
    let png = tmp.path().join("cat.png");
    let text = ok(genlab()
        .args(["diffusion", "txt2img", "--model"])
        .arg(&model)
        .args(RUN)
        .args(["--sampler", "ddim", "--height", "32", "--width", "32", "--out"])
        .arg(&png)
        .output()
        .unwrap());
    assert!(text.contains("5 steps"), "{text}");
    let img = rgb(&png);
    assert_eq!(img.dimensions(), (32, 32));
    // diffusers' image in [0, 1], [1, 3, 32, 32] -> HWC bytes as PIL would round them.
    let want = (r::io("pipeline.ddim.image").get(0).permute([1, 2, 0]) * 255.0).round().to_kind(tch::Kind::Uint8);
    let want = Vec::<u8>::try_from(want.flatten(0, -1)).unwrap();
    let worst = img.as_raw().iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    assert!(worst <= 1, "pixels differ from diffusers' by up to {worst} levels");

    // The same weights as an original single-file checkpoint, structure from the folder: the same bytes.
    let single = tmp.path().join("single.png");
    ok(genlab()
        .args(["diffusion", "txt2img", "--model"])
        .arg(r::dir().join("single_file.safetensors"))
        .arg("--model-config")
        .arg(&model)
        .args(RUN)
        .args(["--sampler", "ddim", "--height", "32", "--width", "32", "--out"])
        .arg(&single)
        .output()
        .unwrap());
    assert_eq!(rgb(&single).as_raw(), img.as_raw());

    // Several images into a folder, the model's own scheduler and size (16 latents x factor 2).
    let folder = tmp.path().join("many");
    ok(genlab()
        .args(["diffusion", "txt2img", "--n", "2", "--model"])
        .arg(&model)
        .args(RUN)
        .arg("--out")
        .arg(&folder)
        .output()
        .unwrap());
    let pngs: Vec<_> = std::fs::read_dir(&folder).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(pngs.len(), 2, "{pngs:?}");
    assert_eq!(rgb(&pngs[0]).dimensions(), (32, 32));
}

/// The largest difference, in grey levels, between a written PNG and a reference image of `io.safetensors`.
fn levels_from(png: &Path, key: &str) -> i32 {
    let want = (r::io(key).get(0).permute([1, 2, 0]) * 255.0).round().to_kind(tch::Kind::Uint8);
    let want = Vec::<u8>::try_from(want.flatten(0, -1)).unwrap();
    rgb(png).as_raw().iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap()
}

#[test]
fn lora_files_give_diffusers_images_unfused_and_fused() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (
        r::dir().join("lora_a/pytorch_lora_weights.safetensors"),
        r::dir().join("lora_b/pytorch_lora_weights.safetensors"),
    );
    let txt2img = |loras: &[String], extra: &[&str], out: &Path| {
        let mut c = genlab();
        c.args(["diffusion", "txt2img", "--model"]).arg(r::dir().join("pipeline")).args(RUN);
        c.args(["--sampler", "ddim", "--height", "32", "--width", "32"]).args(extra);
        for l in loras {
            c.args(["--lora", l]);
        }
        c.arg("--out").arg(out).output().unwrap()
    };
    let spec = |p: &Path, w: &str| format!("{}:{w}", p.display());
    let png = tmp.path().join("unfused.png");
    let text = ok(txt2img(&[spec(&a, "0.5"), spec(&b, "0.8")], &[], &png));
    assert!(text.contains("LoRA pytorch_lora_weights.safetensors (peft format) x0.5 on 100 layers"), "{text}");
    let worst = levels_from(&png, "lora.unfused.image");
    assert!(worst <= 1, "unfused LoRA pixels differ from diffusers' by up to {worst} levels");
    let png = tmp.path().join("fused.png");
    ok(txt2img(&[a.display().to_string(), spec(&b, "1")], &["--lora-fuse"], &png));
    let worst = levels_from(&png, "lora.fused.image");
    assert!(worst <= 1, "fused LoRA pixels differ from diffusers' by up to {worst} levels");
    let png = tmp.path().join("kohya.png");
    ok(txt2img(&[r::dir().join("lora_a_kohya.safetensors").display().to_string()], &[], &png));
    let worst = levels_from(&png, "lora.a.image");
    assert!(worst <= 1, "kohya LoRA pixels differ from diffusers' by up to {worst} levels");

    // An SD 1.x LoRA on SDXL: refused, listing keys; nothing written.
    let out = tmp.path().join("xl.png");
    let mut c = genlab();
    c.args(["diffusion", "txt2img", "--model"]).arg(r::dir().join("pipeline_xl")).args(RUN).arg("--lora").arg(&a);
    let e = fail(c.arg("--out").arg(&out).output().unwrap());
    assert!(e.contains("match no layer") && e.contains("unet.down_blocks.0.attentions.0"), "{e}");
    assert!(!out.exists());
    let e = fail(txt2img(&["/nonexistent/style.safetensors:0.5".into()], &[], &out));
    assert!(e.contains("/nonexistent/style.safetensors: file not found"), "{e}");
}

#[test]
fn embeddings_give_diffusers_image() {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("ti.png");
    let mut c = genlab();
    c.args(["diffusion", "txt2img", "--model"]).arg(r::dir().join("pipeline")).args(RUN);
    c.args(["--prompt", "a photo of <cat-toy> in <style> style", "--sampler", "ddim", "--embedding"]);
    c.arg(r::dir().join("ti_cat.safetensors")).arg("--embedding");
    let text = ok(c
        .arg(format!("{}:<style>", r::dir().join("ti_style.safetensors").display()))
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap());
    assert!(text.contains("embedding <cat-toy> (1 vector); embedding <style> (3 vectors)"), "{text}");
    let worst = levels_from(&png, "ti.image");
    assert!(worst <= 1, "pixels differ from diffusers' by up to {worst} levels");
}

#[test]
fn controlnet_with_a_canny_edge_map_writes_the_librarys_image() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, edges, out) = (tmp.path().join("src.png"), tmp.path().join("edges.png"), tmp.path().join("cn.png"));
    image::RgbImage::from_fn(32, 32, |x, y| {
        let inside = (8..24).contains(&x) && (8..24).contains(&y);
        image::Rgb(if inside { [230, 200, 40] } else { [20, 30, 90] })
    })
    .save(&source)
    .unwrap();
    let text = ok(genlab().args(["data", "canny"]).arg(&source).arg(&edges).output().unwrap());
    assert!(text.contains("wrote 32x32 edges"), "{text}");
    let cn = r::dir().join("controlnet");
    let run = |extra: &[&str], out: &Path| {
        let mut c = genlab();
        c.args(["diffusion", "txt2img", "--model"]).arg(r::dir().join("pipeline")).args(RUN).args(extra);
        c.arg("--controlnet").arg(&cn).arg("--control-image").arg(&edges).arg("--out").arg(out).output().unwrap()
    };
    ok(run(&["--control-scale", "0.8"], &out));
    // The library with the same edge map.
    let sd = genlab_diffusion::sd::StableDiffusion::from_dir(&r::dir().join("pipeline"), tch::Device::Cpu).unwrap();
    let net = genlab_diffusion::sd::ControlNet::open(&cn, None, tch::Device::Cpu, tch::Kind::Float).unwrap();
    let hint = genlab_diffusion::sd::pipeline::read_rgb(&edges).unwrap();
    let opts = genlab_diffusion::sd::GenerateOptions {
        prompt: "a photo of a cat".into(),
        negative_prompt: "blurry".into(),
        steps: 5,
        seed: 42,
        ..Default::default()
    };
    let control = genlab_diffusion::sd::Control { scale: 0.8, ..genlab_diffusion::sd::Control::new(&net, &hint) };
    let want = sd.txt2img_controlled(&opts, &[control]).unwrap().images;
    let want =
        Vec::<u8>::try_from((want.get(0).permute([1, 2, 0]) * 255.0).round().to_kind(tch::Kind::Uint8).flatten(0, -1))
            .unwrap();
    let worst = rgb(&out).as_raw().iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    assert!(worst <= 1, "the CLI's ControlNet image differs from the library's by up to {worst} levels");

    let e = fail(run(&["--control-scale", "0.5", "--control-scale", "0.7"], &out));
    assert!(e.contains("1 --controlnet, 1 --control-image and 2 --control-scale"), "{e}");
    let e = fail(run(&["--height", "64", "--width", "64"], &out));
    assert!(e.contains("control image 0") && e.contains("[1, 3, 32, 32]"), "{e}");
}

#[test]
fn finetune_writes_a_lora_that_txt2img_loads_and_names_bad_captions() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("lora");
    let model = r::dir().join("pipeline");
    let finetune = |extra: &[&str], out: &Path| {
        let mut c = genlab();
        c.args(["diffusion", "finetune", "--model"]).arg(&model).args(["--steps", "6", "--checkpoint-every", "3"]);
        c.args(["--sample-every", "0", "--no-progress", "--batch-size", "4", "--device", "cpu"]).args(extra);
        c.arg("--out").arg(out).output().unwrap()
    };
    let args = ["--data", "digits", "--limit", "32", "--caption", "a digit {class}", "--lora-rank", "2"];
    let text = ok(finetune(&[&args[..], &["--gradient-accumulation-steps", "2"]].concat(), &run));
    assert!(text.contains("Finished at step 6"), "{text}");
    let lora = run.join("pytorch_lora_weights.safetensors");
    let png = tmp.path().join("x.png");
    let mut c = genlab();
    c.args(["diffusion", "txt2img", "--model"]).arg(&model).args(RUN).arg("--lora").arg(&lora);
    let text = ok(c.arg("--out").arg(&png).output().unwrap());
    assert!(text.contains("(peft format) x1 on 88 layers"), "{text}");
    // An image folder needs a caption for every image; built-in sets need --caption.
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    for n in ["a.png", "b.png"] {
        image::RgbImage::new(32, 32).save(photos.join(n)).unwrap();
    }
    std::fs::write(photos.join("a.txt"), "a black square").unwrap();
    let e = fail(finetune(&["--data", photos.to_str().unwrap()], &tmp.path().join("r2")));
    assert!(e.contains("b.png") && e.contains("no caption"), "{e}");
    let e = fail(finetune(&["--data", "digits"], &tmp.path().join("r3")));
    assert!(e.contains("give --caption"), "{e}");
    let e = fail(finetune(&["--data", "digits", "--caption", "x", "--precision", "fp16"], &tmp.path().join("r4")));
    assert!(e.contains("only fp32"), "{e}");
    let e = fail(finetune(&[&args[..], &["--gradient-accumulation-steps", "3"]].concat(), &tmp.path().join("r5")));
    assert!(e.contains("divide the batch size 4"), "{e}");
}

#[test]
fn txt2img_runs_an_sdxl_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("xl.png");
    // No negative prompt: SDXL guides away from zero embeddings; the folder's own scheduler (Euler).
    ok(genlab()
        .args(["diffusion", "txt2img", "--model"])
        .arg(r::dir().join("pipeline_xl"))
        .args(["--prompt", "a photo of a cat", "--steps", "5", "--guidance", "5", "--seed", "42", "--device", "cpu"])
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap());
    let want = (r::io("xl.zeros.image").get(0).permute([1, 2, 0]) * 255.0).round().to_kind(tch::Kind::Uint8);
    let want = Vec::<u8>::try_from(want.flatten(0, -1)).unwrap();
    let img = rgb(&png);
    let worst = img.as_raw().iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    assert!(worst <= 1, "pixels differ from diffusers' SDXL image by up to {worst} levels");
}

#[test]
fn img2img_and_inpaint_take_a_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = r::dir().join("pipeline");
    let input = tmp.path().join("in.png");
    image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 128])).save(&input).unwrap();
    let mask = tmp.path().join("mask.png");
    image::GrayImage::from_fn(32, 32, |x, _| image::Luma([if x < 16 { 0 } else { 255 }])).save(&mask).unwrap();

    let out = tmp.path().join("i2i.png");
    ok(genlab()
        .args(["diffusion", "img2img", "--strength", "0.6", "--model"])
        .arg(&model)
        .args(RUN)
        .arg("--lora")
        .arg(r::dir().join("lora_a_kohya.safetensors"))
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap());
    assert_eq!(rgb(&out).dimensions(), (32, 32));

    let out = tmp.path().join("inpaint.png");
    let inpaint = |source: &[&str]| {
        let mut c = genlab();
        c.args(["diffusion", "inpaint"]).args(source).arg("--input").arg(&input).arg("--mask").arg(&mask);
        c.arg("--out").arg(&out).output().unwrap()
    };
    let m = model.to_str().unwrap();
    let mut sd_args = vec!["--model", m];
    sd_args.extend_from_slice(RUN);
    ok(inpaint(&sd_args));
    assert_eq!(rgb(&out).dimensions(), (32, 32));

    // --run and --model exclude each other; the scheduler flags of a --model are refused on a --run (RePaint).
    let e = fail(inpaint(&["--run", "runs/x", "--model", m]));
    assert!(e.contains("cannot be used with"), "{e}");
    let e = fail(inpaint(&["--run", "runs/x", "--sampler", "ddim"]));
    assert!(e.contains("apply to a Stable Diffusion --model"), "{e}");
}

#[test]
fn bad_flags_and_models_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let run = |args: &[&str]| {
        fail(genlab().args(["diffusion", "txt2img"]).args(args).arg("--out").arg(&out).output().unwrap())
    };
    assert!(run(&["--prompt", "a"]).contains("--model is required"));
    let e = run(&["--model", "/nonexistent/model", "--device", "cpu"]);
    assert!(e.contains("/nonexistent/model") && e.contains("not found"), "{e}");
    let model = r::dir().join("pipeline");
    let m = model.to_str().unwrap();
    assert!(run(&["--model", m, "--device", "cpu", "--dtype", "fp16"]).contains("fp16 needs a GPU"));
    let e = run(&["--model", m, "--device", "cpu", "--sampler", "plms"]);
    assert!(e.contains("unknown scheduler `plms`"), "{e}");
    let e = run(&["--model", m, "--device", "cpu", "--height", "33"]);
    assert!(e.contains("multiples of the autoencoder's factor 2"), "{e}");
    let e = run(&["--model", m, "--device", "cpu", "--model-config", "sd15"]);
    assert!(e.contains("carries its own configs"), "{e}");
    let single = r::dir().join("single_file.safetensors");
    let e = run(&["--model", single.to_str().unwrap(), "--device", "cpu", "--model-config", "sd99"]);
    assert!(e.contains("unknown Stable Diffusion preset `sd99`: expected one of sd15, sd21"), "{e}");
    assert!(!out.exists());
}
