//! LoRA fine-tuning of the tiny Stable-Diffusion-shaped pipeline of `reference/sd_tiny.py` on real images
//! (scikit-learn's digits, captioned "a digit {class}"): the adapted model denoises the training images better
//! than the base model and its generations move toward them, by stated bounds; a resumed run ends with the same
//! adapters as an uninterrupted one; and diffusers' `load_lora_weights` reads the files the run writes (peft
//! layout with its LoraConfig, and kohya's) into the same image genlab draws with them.
#[path = "common/sd_reference.rs"]
mod sd_reference;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use genlab_core::run::FitOptions;
use genlab_core::train::HarnessConfig;
use genlab_data::DataSpec;
use genlab_diffusion::schedule::NoiseSchedule;
use genlab_diffusion::sd::finetune::{finetune, FinetuneOptions, KOHYA_FILE, LORA_FILE};
use genlab_diffusion::sd::{GenerateOptions, StableDiffusion};
use sd_reference as r;
use tch::{Device, Kind, Tensor};

const CAPTION: &str = "a digit {class}";
const TARGETS: &[&str] = &[
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "time_emb_proj",
    "conv",
    "conv_in",
    "conv_out",
    "linear_1",
    "linear_2",
];

fn options() -> FinetuneOptions {
    FinetuneOptions {
        model: r::dir().join("pipeline"),
        caption: Some(CAPTION.into()),
        lora_rank: 8,
        lora_alpha: Some(4.0),
        // Every layer (LoCon's choice): the tiny model's weights are random, so the adapters have a denoiser to
        // make, not only a style to add.
        lora_targets: TARGETS.iter().map(|s| s.to_string()).collect(),
        train_text_encoder: true,
        lr: 3e-3,
        batch_size: 16,
        warmup_steps: 20,
        lr_schedule: "cosine".into(),
        sample_steps: 5,
        kohya: true,
        ..FinetuneOptions::default()
    }
}

fn data() -> DataSpec {
    let mut d = DataSpec::new("digits");
    d.select.limit = Some(256);
    d
}

fn fit(out: &Path, steps: u64, resume: bool) -> FitOptions {
    let harness = HarnessConfig {
        checkpoint_every: 50,
        sample_every: 0,
        progress: false,
        resume,
        ..HarnessConfig::new(out, steps)
    };
    FitOptions { harness, device: Device::Cpu }
}

const STEPS: u64 = 100;

/// libtorch's generator is global and the harness seeds it per step: runs in parallel threads would draw from
/// each other's streams, so the tests take turns.
fn turn() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// One run of STEPS steps, shared by the tests.
fn trained() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep().join("lora");
        finetune(&options(), &data(), &fit(&dir, STEPS, false)).expect("fine-tuning");
        dir
    })
}

/// Training images as the model sees them: RGB, 32x32, in [-1, 1], with their labels.
fn digits(n: i64) -> (Tensor, Vec<i64>) {
    let ds = data().open().unwrap();
    let items: Vec<_> = (0..n as usize).map(|i| ds.get(i).unwrap()).collect();
    let px: Vec<u8> = items.iter().flat_map(|it| it.image.clone()).collect();
    let x = Tensor::from_slice(&px).view([n, 1, 8, 8]).to_kind(Kind::Float) / 127.5 - 1.0;
    let x = x.repeat([1, 3, 1, 1]).upsample_bilinear2d([32, 32], false, None, None);
    (x, items.iter().map(|it| it.label.unwrap()).collect())
}

/// Mean denoising error on fixed images, noise and timesteps, with their captions.
fn denoising_error(sd: &StableDiffusion) -> f64 {
    let (x, labels) = digits(64);
    let sched = NoiseSchedule::new(&sd.config.schedule).unwrap();
    tch::no_grad(|| {
        let post = sd.vae.encode(&x).unwrap();
        let z = &post.mean * sd.config.vae.scaling_factor;
        tch::manual_seed(5);
        let noise = z.randn_like();
        let t = Tensor::randint(1000, [64], (Kind::Int64, Device::Cpu));
        let captions: Vec<String> = labels.iter().map(|l| format!("a digit {l}")).collect();
        let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
        let text = sd.text_encoder.forward(&sd.tokenizer.encode_batch(&refs)).unwrap();
        let pred = sd.unet.forward(&sched.add_noise(&z, &noise, &t).unwrap(), &t, &text).unwrap();
        (pred - noise).square().mean(Kind::Float).double_value(&[])
    })
}

/// Mean distance of generated latents for "a digit k" to the nearest latents of a training image (the
/// autoencoder's posterior means, scaled): where the model draws, without the random decoder in between.
fn distance_to_training(sd: &StableDiffusion) -> f64 {
    let (x, _) = digits(256);
    let z = tch::no_grad(|| sd.vae.encode(&x).unwrap().mean * sd.config.vae.scaling_factor).flatten(1, -1);
    let mut total = 0.0;
    for k in 0..4 {
        let opts = GenerateOptions {
            prompt: format!("a digit {k}"),
            batch: 4,
            steps: 10,
            seed: k as u64,
            height: Some(32),
            width: Some(32),
            ..GenerateOptions::default()
        };
        let g = sd.txt2img(&opts).unwrap().latents.flatten(1, -1);
        let d = (g.unsqueeze(1) - z.unsqueeze(0)).square().mean_dim([2].as_slice(), false, Kind::Float);
        total += d.min_dim(1, false).0.mean(Kind::Float).double_value(&[]);
    }
    total / 4.0
}

#[test]
fn the_adapted_model_denoises_and_draws_the_training_digits_better() {
    let _turn = turn();
    let run = trained();
    let mut sd = StableDiffusion::from_dir(&r::dir().join("pipeline"), Device::Cpu).unwrap();
    let (base_err, base_dist) = (denoising_error(&sd), distance_to_training(&sd));
    let rep = sd.load_lora(&run.join(LORA_FILE), 1.0, false).unwrap().clone();
    assert!(rep.layers > 4 * 2 * 11 + 4 * 3, "{rep}");
    let (err, dist) = (denoising_error(&sd), distance_to_training(&sd));
    eprintln!("denoising MSE {base_err:.4} -> {err:.4}; distance to the training digits {base_dist:.4} -> {dist:.4}");
    assert!(err < 0.3 * base_err, "denoising MSE {base_err} -> {err}");
    assert!(dist < 0.3 * base_dist, "distance to the training digits {base_dist} -> {dist}");
}

#[test]
fn a_resumed_run_ends_with_the_same_adapters() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let (whole, split) = (dir.path().join("whole"), dir.path().join("split"));
    let opts = FinetuneOptions { batch_size: 4, ..options() };
    let fit = |out: &Path, steps, resume| FitOptions {
        harness: HarnessConfig { checkpoint_every: 10, ..fit(out, steps, resume).harness },
        device: Device::Cpu,
    };
    finetune(&opts, &data(), &fit(&whole, 20, false)).unwrap();
    finetune(&opts, &data(), &fit(&split, 10, false)).unwrap();
    finetune(&opts, &data(), &fit(&split, 20, true)).unwrap();
    let read = |p: PathBuf| {
        let mut v = Tensor::read_safetensors(p).unwrap();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    let (a, b) = (read(whole.join(LORA_FILE)), read(split.join(LORA_FILE)));
    assert_eq!(a.len(), b.len());
    for ((ka, ta), (kb, tb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert!(ta.equal(tb), "{ka} differs after resuming");
    }
}

/// diffusers' image with the LoRA file `lora` (`reference/lora_load.py`).
fn diffusers_image(lora: &Path) -> Tensor {
    let out = tempfile::tempdir().unwrap();
    let image = out.path().join("image.safetensors");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/lora_load.py");
    let py = std::env::var_os("GENLAB_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    let run = Command::new(py)
        .arg(&script)
        .arg("--pipeline")
        .arg(r::dir().join("pipeline"))
        .arg("--lora")
        .arg(lora)
        .arg("--out")
        .arg(&image)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    Tensor::read_safetensors(&image).unwrap().remove(0).1
}

#[test]
fn diffusers_reads_the_written_lora_files_into_the_same_image() {
    let _turn = turn();
    let opts = GenerateOptions {
        prompt: "a photo of a cat".into(),
        negative_prompt: "blurry".into(),
        steps: 5,
        seed: 42,
        height: Some(32),
        width: Some(32),
        ..GenerateOptions::default()
    };
    let mut genlab = Vec::new();
    for file in [LORA_FILE, KOHYA_FILE] {
        let path = trained().join(file);
        let mut sd = StableDiffusion::from_dir(&r::dir().join("pipeline"), Device::Cpu).unwrap();
        sd.load_lora(&path, 1.0, false).unwrap();
        let got = sd.txt2img(&opts).unwrap().images;
        r::assert_close(&format!("genlab's {file} in diffusers"), &got, &diffusers_image(&path));
        assert!(r::rel_l2(&got, &r::io("pipeline.ddim.image")) > 1e-3, "the trained LoRA changes nothing");
        genlab.push(got);
    }
    r::assert_within("kohya and peft files", &genlab[1], &genlab[0], 1e-6);
}
