//! Textual-inversion embeddings against diffusers 0.42.1's `load_textual_inversion` on the tiny pipelines of
//! `reference/sd_tiny.py`: a single-vector token from diffusers' layout and a three-vector one from A1111's,
//! used in one prompt, give diffusers' token ids exactly, its text embeddings within 1e-6 and its image within
//! 1e-4 relative L2; SDXL's two-encoder file likewise. Bad files and taken tokens are refused by name and
//! change nothing.
#[path = "common/sd_reference.rs"]
mod sd_reference;

use std::path::{Path, PathBuf};

use genlab_diffusion::sd::{GenerateOptions, StableDiffusion};
use genlab_diffusion::{DiffusionError, SchedulerKind};
use sd_reference as r;
use tch::{Device, Kind, Tensor};

const PROMPT: &str = "a photo of <cat-toy> in <style> style";

fn options(prompt: &str) -> GenerateOptions {
    GenerateOptions {
        prompt: prompt.into(),
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

fn file(name: &str) -> PathBuf {
    r::dir().join(format!("ti_{name}.safetensors"))
}

#[test]
fn single_and_multi_vector_tokens_match_diffusers() {
    let mut sd = pipeline("pipeline");
    let cat = sd.load_embedding(&file("cat"), None).unwrap().clone();
    assert_eq!((cat.token.as_str(), cat.vectors), ("<cat-toy>", 1));
    let style = sd.load_embedding(&file("style"), Some("<style>")).unwrap().clone();
    assert_eq!((style.token.as_str(), style.vectors), ("<style>", 3));
    let ids = sd.tokenizer.encode_batch(&[PROMPT]);
    assert!(ids.equal(&r::io("ti.input_ids")), "{ids:?}");
    let text = tch::no_grad(|| sd.text_encoder.forward(&ids)).unwrap();
    r::assert_within("text embeddings with the new tokens", &text, &r::io("ti.text"), 1e-6);
    let image = sd.txt2img(&options(PROMPT)).unwrap().images;
    r::assert_close("image with both embeddings", &image, &r::io("ti.image"));
    assert!(sd.describe_size().contains("embedding <style> (3 vectors)"), "{}", sd.describe_size());
}

#[test]
fn an_sdxl_embedding_goes_to_both_text_encoders() {
    let mut sd = pipeline("pipeline_xl");
    sd.load_embedding(&file("xl"), Some("<xl-style>")).unwrap();
    let opts = GenerateOptions { guidance_scale: 5.0, scheduler: None, ..options("a photo of a cat, <xl-style>") };
    r::assert_close("SDXL image with the embedding", &sd.txt2img(&opts).unwrap().images, &r::io("ti.xl.image"));
}

fn refused(sd: &mut StableDiffusion, path: &Path, token: Option<&str>) -> String {
    match sd.load_embedding(path, token) {
        Err(e @ DiffusionError::Embedding { .. }) => e.to_string(),
        other => panic!("{}: expected an embedding error, got {other:?}", path.display()),
    }
}

#[test]
fn bad_files_and_taken_tokens_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut sd = pipeline("pipeline");
    let before = sd.tokenizer.encode("a <cat-toy>");
    let write = |name: &str, named: &[(&str, Tensor)]| {
        let p = dir.path().join(name);
        Tensor::write_safetensors(named, &p).unwrap();
        p
    };
    let e = refused(&mut sd, &file("cat"), Some("cat"));
    assert!(e.contains("`cat` is in the tokenizer's vocabulary"), "{e}");
    let narrow = write("narrow.safetensors", &[("<narrow>", Tensor::zeros([2, 16], (Kind::Float, Device::Cpu)))]);
    let e = refused(&mut sd, &narrow, None);
    assert!(e.contains("narrow.safetensors") && e.contains("[2, 16]") && e.contains("32 wide"), "{e}");
    let e = refused(&mut sd, &file("xl"), None);
    assert!(e.contains("needs an SDXL model"), "{e}");
    let two = write(
        "two.safetensors",
        &[
            ("a", Tensor::zeros([32], (Kind::Float, Device::Cpu))),
            ("b", Tensor::zeros([32], (Kind::Float, Device::Cpu))),
        ],
    );
    let e = refused(&mut sd, &two, None);
    assert!(e.contains("not an embedding file") && e.contains("[\"a\", \"b\"]"), "{e}");
    let pickle = dir.path().join("style.pt");
    std::fs::write(&pickle, b"x").unwrap();
    assert!(refused(&mut sd, &pickle, None).contains("pickles"));
    // Nothing was added.
    assert_eq!(sd.tokenizer.encode("a <cat-toy>"), before);
    assert_eq!((sd.tokenizer.vocab_size(), sd.text_encoder.config().vocab_size), (49408, 49408));
    assert!(sd.embeddings().is_empty());
    // A token loaded twice is taken the second time.
    sd.load_embedding(&file("cat"), None).unwrap();
    assert!(refused(&mut sd, &file("cat"), None).contains("`<cat-toy>` is in the tokenizer's vocabulary"));
    assert_eq!(sd.text_encoder.config().vocab_size, 49409);
}
