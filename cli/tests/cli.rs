//! End to end through the `genlab` binary: the CLI contract, config files, Ctrl-C, resume.
mod common;
use common::{fail, genlab, ok};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn bin_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_genlab"))
}

fn train(out: &Path, extra: &[&str]) -> Command {
    let mut c = genlab();
    c.args([
        "vae",
        "train",
        "--model",
        "mlp",
        "--data",
        "digits",
        "--device",
        "cpu",
        "--no-progress",
        "--batch-size",
        "32",
    ])
    .arg("--out")
    .arg(out)
    .args(extra);
    c
}

#[test]
fn train_sample_info_in_every_output_format() {
    assert!(bin_path().exists());
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    ok(train(&run, &["--steps", "20", "--checkpoint-every", "10"]).output().unwrap());
    for (name, check) in [("grid.png", 0), ("s.h5", 1), ("folder", 2)] {
        let p = tmp.path().join(name);
        ok(genlab().args(["vae", "sample", "--n", "6", "--run"]).arg(&run).arg("--out").arg(&p).output().unwrap());
        match check {
            0 => assert!(std::fs::metadata(&p).unwrap().len() > 100),
            1 => assert!(std::fs::read(&p).unwrap().starts_with(b"\x89HDF")),
            _ => assert_eq!(std::fs::read_dir(&p).unwrap().count(), 6),
        }
    }
    let info = ok(genlab().arg("info").arg(&run).output().unwrap());
    assert!(
        info.contains("step: 20") && info.contains("fc_mu.weight") && info.contains("\"family\": \"vae\""),
        "{info}"
    );
    let status = std::fs::read_to_string(run.join("status.json")).unwrap();
    assert!(status.contains("finished"));
}

#[test]
fn config_file_sets_flags_and_flags_override_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("run.toml");
    std::fs::write(&cfg, "steps = 4\nbatch_size = 16\nlr = 0.005\nno-progress = true\n").unwrap();
    let run = tmp.path().join("r");
    ok(genlab()
        .args(["vae", "train", "--model", "mlp", "--data", "digits", "--device", "cpu", "--config"])
        .arg(&cfg)
        .args(["--batch-size", "8", "--out"])
        .arg(&run)
        .output()
        .unwrap());
    let conf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(conf["batch_size"], 8, "the flag overrides the file");
    assert_eq!(conf["lr"], 0.005, "the file sets what flags do not");
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("status.json")).unwrap()).unwrap();
    assert_eq!(status["step"], 4);
    std::fs::write(&cfg, "steps = [1, 2]\n").unwrap();
    let e = fail(genlab().args(["vae", "train", "--config"]).arg(&cfg).output().unwrap());
    assert!(e.contains("run.toml") && e.contains("steps"), "{e}");
}

#[test]
fn bad_input_gives_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let e = fail(train(&tmp.path().join("x"), &["--steps", "2", "--device", "cuda:7"]).output().unwrap());
    assert!(e.contains("cuda:7"), "{e}");
    let e = fail(
        genlab()
            .args(["vae", "train", "--model", "mlp", "--data", "nope", "--steps", "2", "--out"])
            .arg(tmp.path().join("y"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("unknown dataset `nope`"), "{e}");
    let e = fail(
        genlab()
            .args(["vae", "sample", "--n", "4", "--out", "a.png", "--run"])
            .arg(tmp.path().join("missing"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("missing"), "{e}");
    let e = fail(train(&tmp.path().join("z"), &["--steps", "2", "--precision", "fp8"]).output().unwrap());
    assert!(e.contains("fp8"), "{e}");
    let e = fail(train(&tmp.path().join("w"), &["--steps", "2", "--precision", "fp16"]).output().unwrap());
    assert!(e.contains("fp16") && e.contains("CUDA"), "{e}");
}

#[test]
fn ctrl_c_saves_a_loadable_checkpoint_and_resume_finishes_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut child =
        train(&run, &["--steps", "1000000", "--checkpoint-every", "1000000", "--log-every", "1"]).spawn().unwrap();
    // Wait until training is under way.
    let t0 = Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl")).map(|s| s.lines().count()).unwrap_or(0) < 5 {
        assert!(t0.elapsed() < Duration::from_secs(60), "training did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t1.elapsed() < Duration::from_secs(30), "genlab did not stop after Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "Ctrl-C should exit cleanly, got {status}");
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("status.json")).unwrap()).unwrap();
    assert_eq!(st["status"], "stopped");
    let stopped_at = st["step"].as_u64().unwrap();
    assert!(stopped_at >= 5);
    let info = ok(genlab().arg("info").arg(&run).output().unwrap());
    assert!(info.contains(&format!("step: {stopped_at}")), "{info}");
    // Resume to a few steps past the interruption.
    let target = (stopped_at + 3).to_string();
    ok(train(&run, &["--steps", &target, "--resume"]).output().unwrap());
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("status.json")).unwrap()).unwrap();
    assert_eq!(st["status"], "finished");
    assert_eq!(st["step"].as_u64().unwrap(), stopped_at + 3);
}

#[test]
fn cli_resume_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    ok(train(&a, &["--steps", "24", "--seed", "3"]).output().unwrap());
    ok(train(&b, &["--steps", "11", "--seed", "3"]).output().unwrap());
    ok(train(&b, &["--steps", "24", "--seed", "3", "--resume"]).output().unwrap());
    let w = |p: &Path| std::fs::read(p.join("checkpoints/step-00000024/model.safetensors")).unwrap();
    assert!(w(&a) == w(&b), "resumed run differs from the uninterrupted one");
}

#[test]
fn data_commands_describe_convert_and_preview() {
    let tmp = tempfile::tempdir().unwrap();
    let info = ok(genlab().args(["data", "info", "digits"]).output().unwrap());
    assert!(info.contains("count: 1797") && info.contains("1 x 8 x 8"), "{info}");
    let h5 = tmp.path().join("d.h5");
    ok(genlab().args(["data", "convert", "digits"]).arg(&h5).output().unwrap());
    let info = ok(genlab().args(["data", "info"]).arg(&h5).output().unwrap());
    assert!(info.contains("count: 1797"), "{info}");
    // A small labelled set plus another set appended (how augmentation is measured).
    let info = ok(genlab().args(["data", "info", "digits", "--per-class", "5", "--add"]).arg(&h5).output().unwrap());
    assert!(info.contains("count: 1847"), "{info}");
    let info = ok(genlab().args(["data", "info", "digits", "--exclude-class", "3", "--limit", "7"]).output().unwrap());
    assert!(info.contains("count: 7"), "{info}");
    let e = fail(genlab().args(["data", "info", "digits", "--add", "mnist5k"]).output().unwrap());
    assert!(e.contains("image shapes differ"), "{e}");
    let png = tmp.path().join("p.png");
    ok(genlab().args(["data", "preview", "digits", "--n", "9", "--out"]).arg(&png).output().unwrap());
    assert!(std::fs::metadata(&png).unwrap().len() > 50);
    // A folder with one good and one corrupt image: an error naming the file, or a skip.
    let dir = tmp.path().join("imgs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&png, dir.join("good.png")).unwrap();
    std::fs::write(dir.join("bad.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let e = fail(genlab().args(["data", "info"]).arg(&dir).output().unwrap());
    assert!(e.contains("bad.png"), "{e}");
    let info = ok(genlab().args(["data", "info", "--skip-bad"]).arg(&dir).output().unwrap());
    assert!(info.contains("count: 1"), "{info}");
    std::fs::create_dir_all(tmp.path().join("empty")).unwrap();
    let e = fail(genlab().args(["data", "info"]).arg(tmp.path().join("empty")).output().unwrap());
    assert!(e.contains("empty") && e.contains("no PNG or JPEG images"), "{e}");
}

#[test]
fn vae_tools_run_and_reject_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    ok(train(&run, &["--steps", "30"]).output().unwrap());
    let vae = |args: &[&str]| {
        let mut c = genlab();
        // The subcommand, then the shared flags, then the rest (which may end in `--out`).
        c.arg("vae").arg(args[0]).arg("--run").arg(&run).args(["--data", "digits", "--device", "cpu"]).args(&args[1..]);
        c
    };
    let p = |name: &str| tmp.path().join(name);
    ok(vae(&["reconstruct", "--n", "8", "--out"]).arg(p("r.png")).output().unwrap());
    ok(vae(&["interpolate", "--pairs", "0:5,10:20", "--out"]).arg(p("i.png")).output().unwrap());
    let out = ok(vae(&["anomaly", "--anomalous-class", "3", "--out"]).arg(p("s.csv")).output().unwrap());
    assert!(out.contains("ROC-AUC"), "{out}");
    let csv = std::fs::read_to_string(p("s.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 1797);
    let out = ok(vae(&["embed", "--n", "600", "--probe-test", "digits", "--out"]).arg(p("z.h5")).output().unwrap());
    assert!(out.contains("latents") && out.contains("pixels"), "{out}");
    let out = ok(vae(&["impute", "--n", "100", "--mask", "random:0.4", "--out"]).arg(p("m.png")).output().unwrap());
    assert!(out.contains("mean fill"), "{out}");
    let out = ok(vae(&["likelihood", "--n", "100", "--k", "5"]).output().unwrap());
    assert!(out.contains("IWAE-5"), "{out}");
    // Bad input.
    let e =
        fail(genlab().args(["vae", "sample", "--class", "3", "--out", "c.png", "--run"]).arg(&run).output().unwrap());
    assert!(e.contains("class-conditional"), "{e}");
    let e = fail(vae(&["interpolate", "--pairs", "0:5000", "--out"]).arg(p("x.png")).output().unwrap());
    assert!(e.contains("below 1797"), "{e}");
    genlab_png(&p("mask.png"), 5, 5);
    let e = fail(vae(&["impute", "--mask"]).arg(p("mask.png")).arg("--out").arg(p("y.png")).output().unwrap());
    assert!(e.contains("5x5") && e.contains("8x8"), "{e}");
    let e = fail(
        genlab()
            .args(["vae", "reconstruct", "--data", "mnist5k", "--out", "z.png", "--run"])
            .arg(&run)
            .output()
            .unwrap(),
    );
    assert!(e.contains("28x28") || e.contains("1x28x28"), "{e}");
}

/// A white h x w grey PNG.
fn genlab_png(path: &Path, h: u32, w: u32) {
    image::save_buffer(path, &vec![255u8; (h * w) as usize], w, h, image::ExtendedColorType::L8).unwrap();
}

#[test]
fn gan_and_diffusion_train_sample_and_edit() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name);
    let common = ["--data", "digits", "--device", "cpu", "--no-progress", "--batch-size", "32", "--steps", "6"];
    // GAN
    ok(genlab().args(["gan", "train", "--model", "dcgan"]).args(common).arg("--out").arg(p("gan")).output().unwrap());
    ok(genlab()
        .args(["gan", "sample", "--n", "4", "--run"])
        .arg(p("gan"))
        .arg("--out")
        .arg(p("g.png"))
        .output()
        .unwrap());
    let e = fail(
        genlab()
            .args(["gan", "sample", "--n", "4", "--class", "2", "--run"])
            .arg(p("gan"))
            .arg("--out")
            .arg(p("x.png"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("class"), "{e}");
    // DiffAugment: recorded in the run; a bad policy and a kind without it are refused by name.
    ok(genlab()
        .args(["gan", "train", "--model", "dcgan", "--diffaug", "color,translation,cutout"])
        .args(common)
        .arg("--out")
        .arg(p("gan-da"))
        .output()
        .unwrap());
    let cfg = std::fs::read_to_string(p("gan-da").join("config.json")).unwrap();
    assert!(cfg.contains(r#""diffaug": "color,translation,cutout""#), "{cfg}");
    let e = fail(
        genlab()
            .args(["gan", "train", "--model", "dcgan", "--diffaug", "color,flip"])
            .args(common)
            .arg("--out")
            .arg(p("x"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("flip") && e.contains("cutout"), "{e}");
    let e = fail(
        genlab()
            .args(["gan", "train", "--model", "stylegan2", "--diffaug", "color"])
            .args(common)
            .arg("--out")
            .arg(p("x"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("--diffaug") && e.contains("stylegan2"), "{e}");
    // Diffusion
    ok(genlab()
        .args(["diffusion", "train", "--model", "unet-tiny"])
        .args(common)
        .arg("--out")
        .arg(p("ddpm"))
        .output()
        .unwrap());
    let e = fail(
        genlab()
            .args(["diffusion", "train", "--model", "unet-tiny", "--ema-warmup", "power:x"])
            .args(common)
            .arg("--out")
            .arg(p("ddpm-bad"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("--ema-warmup"), "{e}");
    let sample = |extra: &[&str]| {
        let mut c = genlab();
        c.args(["diffusion", "sample", "--n", "4", "--run"]).arg(p("ddpm")).args(extra);
        c
    };
    ok(sample(&["--sampler", "dpmpp-2m", "--steps", "5", "--out"]).arg(p("d.png")).output().unwrap());
    assert!(std::fs::metadata(p("d.png")).unwrap().len() > 50);
    // The run's own sampler and steps, from the raw weights; unknown weights are named.
    ok(sample(&["--weights", "raw", "--out"]).arg(p("raw.png")).output().unwrap());
    assert!(std::fs::metadata(p("raw.png")).unwrap().len() > 50);
    let e = fail(sample(&["--weights", "average", "--out"]).arg(p("y.png")).output().unwrap());
    assert!(e.contains("weights") && e.contains("average"), "{e}");
    let e = fail(sample(&["--steps", "0", "--out"]).arg(p("y.png")).output().unwrap());
    assert!(e.contains('0'), "{e}");
    let e = fail(sample(&["--steps", "5", "--guidance", "3", "--out"]).arg(p("y.png")).output().unwrap());
    assert!(e.contains("guidance"), "{e}");
    // Inpaint and img2img from PNGs of the model's size.
    genlab_png(&p("in.png"), 8, 8);
    image::save_buffer(
        p("mask.png"),
        &[255u8, 255, 255, 255, 0, 0, 0, 0].repeat(8),
        8,
        8,
        image::ExtendedColorType::L8,
    )
    .unwrap();
    ok(genlab()
        .args(["diffusion", "inpaint", "--steps", "10", "--run"])
        .arg(p("ddpm"))
        .arg("--input")
        .arg(p("in.png"))
        .arg("--mask")
        .arg(p("mask.png"))
        .arg("--out")
        .arg(p("f.png"))
        .output()
        .unwrap());
    let filled = image::open(p("f.png")).unwrap().to_luma8();
    assert_eq!(filled.get_pixel(0, 0).0[0], 255, "a known pixel changed");
    ok(genlab()
        .args(["diffusion", "img2img", "--steps", "10", "--strength", "0.5", "--run"])
        .arg(p("ddpm"))
        .arg("--input")
        .arg(p("in.png"))
        .arg("--out")
        .arg(p("i.png"))
        .output()
        .unwrap());
    // A colour image for a greyscale model, and a mask of the wrong size.
    image::save_buffer(p("rgb.png"), &[10u8, 200, 30].repeat(64), 8, 8, image::ExtendedColorType::Rgb8).unwrap();
    let e = fail(
        genlab()
            .args(["diffusion", "img2img", "--run"])
            .arg(p("ddpm"))
            .arg("--input")
            .arg(p("rgb.png"))
            .arg("--out")
            .arg(p("j.png"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("rgb.png") && e.contains("1-channel"), "{e}");
    genlab_png(&p("small-mask.png"), 4, 4);
    let e = fail(
        genlab()
            .args(["diffusion", "inpaint", "--run"])
            .arg(p("ddpm"))
            .arg("--input")
            .arg(p("in.png"))
            .arg("--mask")
            .arg(p("small-mask.png"))
            .arg("--out")
            .arg(p("k.png"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("mask"), "{e}");

    // A diffusion transformer trained by flow matching: the same commands work on its run.
    ok(genlab()
        .args(["diffusion", "train", "--model", "dit-s", "--objective", "flow"])
        .args(common)
        .arg("--out")
        .arg(p("dit"))
        .output()
        .unwrap());
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("dit").join("config.json")).unwrap()).unwrap();
    assert_eq!((cfg["dit"]["patch_size"].as_i64(), cfg["flow"].is_object()), (Some(4), true), "{cfg}");
    assert!(cfg.get("unet").is_none());
    let on_dit = |cmd: &str, extra: &[&str], out: &str| {
        let mut c = genlab();
        c.args(["diffusion", cmd, "--steps", "4", "--run"]).arg(p("dit")).args(extra).arg("--out").arg(p(out));
        ok(c.output().unwrap());
        assert!(std::fs::metadata(p(out)).unwrap().len() > 50, "{cmd}");
    };
    on_dit("sample", &["--n", "4", "--sampler", "flow-heun"], "dit.png");
    on_dit(
        "inpaint",
        &["--input", p("in.png").to_str().unwrap(), "--mask", p("mask.png").to_str().unwrap()],
        "dit-f.png",
    );
    let filled = image::open(p("dit-f.png")).unwrap().to_luma8();
    assert_eq!(filled.get_pixel(0, 0).0[0], 255, "a known pixel changed");
    on_dit("img2img", &["--input", p("in.png").to_str().unwrap(), "--strength", "0.5"], "dit-i.png");
    let e = fail(
        genlab()
            .args(["diffusion", "train", "--model", "dit-m"])
            .args(common)
            .arg("--out")
            .arg(p("x"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("dit-m") && e.contains("dit-s") && e.contains("unet-small"), "{e}");
}

#[test]
fn gan_super_resolution_train_upscale_and_evaluate() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name);
    let sr = p("sr");
    ok(genlab()
        .args(["gan", "train", "--model", "srgan", "--scale", "2", "--pretrain-steps", "2", "--data", "mnist5k"])
        .args(["--device", "cpu", "--no-progress", "--batch-size", "8", "--steps", "4", "--out"])
        .arg(&sr)
        .output()
        .unwrap());
    let config = std::fs::read_to_string(sr.join("config.json")).unwrap();
    assert!(config.contains("\"kind\": \"super-resolution\"") && config.contains("\"scale\": 2"), "{config}");
    // A PNG, and an HDF5 file of images.
    genlab_png(&p("small.png"), 7, 9);
    ok(genlab().args(["gan", "upscale", "--run"]).arg(&sr).arg(p("small.png")).arg(p("big.png")).output().unwrap());
    let big = image::open(p("big.png")).unwrap();
    assert_eq!((big.width(), big.height()), (18, 14));
    ok(genlab().args(["data", "convert", "digits"]).arg(p("digits.h5")).output().unwrap());
    ok(genlab().args(["gan", "upscale", "--run"]).arg(&sr).arg(p("digits.h5")).arg(p("up.h5")).output().unwrap());
    let up = genlab_data::open(&p("up.h5").display().to_string()).unwrap();
    assert_eq!((up.len(), up.shape(), up.num_classes()), (1797, [1, 16, 16], Some(10)));
    // PSNR and SSIM of the model and of bicubic upscaling.
    let text = ok(genlab()
        .args(["gan", "sr-eval", "--data", "mnist5k", "--n", "20", "--run"])
        .arg(&sr)
        .arg("--json")
        .arg(p("eval.json"))
        .output()
        .unwrap());
    assert!(text.contains("model (step 4)") && text.contains("bicubic") && text.contains("SSIM"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p("eval.json")).unwrap()).unwrap();
    assert_eq!((v["images"].as_u64(), v["scale"].as_i64(), v["step"].as_u64()), (Some(20), Some(2), Some(4)));
    let bicubic = v["psnr_bicubic"].as_f64().unwrap();
    assert!((10.0..40.0).contains(&bicubic), "{v}");
    // Bad input: a colour image for a grey model, an unreadable file, sampling an SR run, --scale elsewhere.
    image::save_buffer(p("rgb.png"), &[10u8, 200, 30].repeat(16), 4, 4, image::ExtendedColorType::Rgb8).unwrap();
    let e =
        fail(genlab().args(["gan", "upscale", "--run"]).arg(&sr).arg(p("rgb.png")).arg(p("o.png")).output().unwrap());
    assert!(e.contains("rgb.png") && e.contains("3 channels") && e.contains("model of 1 channel"), "{e}");
    std::fs::write(p("junk.png"), b"not an image").unwrap();
    let e =
        fail(genlab().args(["gan", "upscale", "--run"]).arg(&sr).arg(p("junk.png")).arg(p("o.png")).output().unwrap());
    assert!(e.contains("junk.png"), "{e}");
    let e = fail(
        genlab().args(["gan", "sample", "--n", "4", "--run"]).arg(&sr).arg("--out").arg(p("s.png")).output().unwrap(),
    );
    assert!(e.contains("super-resolution run") && e.contains("genlab gan upscale"), "{e}");
    let e = fail(
        genlab()
            .args(["gan", "train", "--model", "dcgan", "--scale", "2", "--data", "digits", "--steps", "2", "--out"])
            .arg(p("d"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("--scale") && e.contains("srgan"), "{e}");
    let e = fail(
        genlab()
            .args(["gan", "train", "--model", "srgan", "--scale", "3", "--data", "digits", "--steps", "2", "--out"])
            .arg(p("x3"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("2, 4 or 8"), "{e}");
}

#[test]
fn gan_augment_writes_labelled_samples_and_checks_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name);
    let common = ["--data", "digits", "--device", "cpu", "--no-progress", "--batch-size", "16", "--steps", "3"];
    ok(genlab().args(["gan", "train", "--model", "cgan"]).args(common).arg("--out").arg(p("cgan")).output().unwrap());
    ok(genlab()
        .args(["gan", "augment", "--per-class", "3", "--seed", "1", "--run"])
        .arg(p("cgan"))
        .arg("--out")
        .arg(p("aug.h5"))
        .output()
        .unwrap());
    let ds = genlab_data::open(&p("aug.h5").display().to_string()).unwrap();
    assert_eq!((ds.len(), ds.shape(), ds.num_classes()), (30, [1, 8, 8], Some(10)));
    let mut per_class = [0usize; 10];
    for i in 0..ds.len() {
        per_class[ds.get(i).unwrap().label.unwrap() as usize] += 1;
    }
    assert_eq!(per_class, [3; 10]);
    let augment = |extra: &[&str]| {
        let mut c = genlab();
        c.args(["gan", "augment", "--run"]).arg(p("cgan")).arg("--out").arg(p("bad.h5")).args(extra);
        fail(c.output().unwrap())
    };
    assert!(augment(&["--per-class", "0"]).contains("--per-class must be at least 1"));
    let e = augment(&["--per-class", "2", "--classes", "3,12"]);
    assert!(e.contains("class 12") && e.contains("10 classes"), "{e}");
    // A class outside the model's range when sampling, and an unconditional model.
    let e = fail(
        genlab()
            .args(["gan", "sample", "--n", "4", "--class", "12", "--run"])
            .arg(p("cgan"))
            .arg("--out")
            .arg(p("x.png"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("--class 12 is out of range") && e.contains("10 classes"), "{e}");
    ok(genlab().args(["gan", "train", "--model", "dcgan"]).args(common).arg("--out").arg(p("dcgan")).output().unwrap());
    let e = fail(
        genlab()
            .args(["gan", "augment", "--per-class", "2", "--run"])
            .arg(p("dcgan"))
            .arg("--out")
            .arg(p("u.h5"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("augment needs a class-conditional model") && e.contains("--model cgan"), "{e}");
}

/// `genlab eval`: train the digits classifier, evaluate a file of real images (its Fréchet distance
/// is about the real-vs-real figure) and a barely trained GAN (far worse), and refuse bad input.
#[test]
fn eval_trains_a_classifier_and_scores_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name);
    ok(genlab()
        .args(["eval", "train-classifier", "--data", "digits", "--steps", "60", "--batch-size", "64"])
        .args(["--device", "cpu", "--no-progress", "--test", "digits", "--out"])
        .arg(p("clf"))
        .output()
        .unwrap());
    let read = |path: PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    };
    let acc = read(p("clf/eval.json"));
    assert_eq!(acc["total"], 1797);
    assert!(acc["test_accuracy"].as_f64().unwrap() > 0.8, "{acc}");
    let features = format!("classifier:{}", p("clf").display());

    ok(genlab().args(["data", "convert", "digits"]).arg(p("digits.h5")).output().unwrap());
    let eval = |source: &[&str], path: &Path, json: &str| {
        let mut c = genlab();
        c.args(["eval", "--data", "digits", "--n", "400", "--device", "cpu", "--features", &features])
            .args(source)
            .arg(path)
            .arg("--json")
            .arg(p(json));
        c
    };
    let text = ok(eval(&["--samples"], &p("digits.h5"), "real.json").output().unwrap());
    assert!(text.contains("real-vs-real") && text.contains("Fréchet distance"), "{text}");
    let r = read(p("real.json"));
    let fd = |v: &serde_json::Value, set: &str| v[set]["frechet_distance"].as_f64().unwrap();
    let (gen, base) = (fd(&r, "generated_vs_reference"), fd(&r, "real_vs_reference"));
    assert!(base > 0.0 && gen < 2.0 * base && base < 2.0 * gen, "real images {gen} vs real-vs-real {base}");
    assert_eq!(r["feature_dim"], 128);
    let cov = r["generated_vs_reference"]["class_coverage"]["coverage"].as_f64().unwrap();
    assert_eq!(cov, 1.0);

    let common = ["--data", "digits", "--device", "cpu", "--no-progress", "--batch-size", "16", "--steps", "3"];
    ok(genlab().args(["gan", "train", "--model", "dcgan"]).args(common).arg("--out").arg(p("gan")).output().unwrap());
    ok(eval(&["--run"], &p("gan"), "gan.json").output().unwrap());
    let g = read(p("gan.json"));
    assert_eq!(g["source"]["family"], "gan");
    assert!(g["sampling"]["seconds_per_sample"].as_f64().unwrap() > 0.0);
    assert!(fd(&g, "generated_vs_reference") > 5.0 * fd(&g, "real_vs_reference"), "{g}");

    // Samples of another size, too many images asked of a set without a test split, both sources,
    // missing Inception weights.
    ok(genlab().args(["data", "convert", "mnist5k"]).arg(p("mnist.h5")).output().unwrap());
    let e = fail(eval(&["--samples"], &p("mnist.h5"), "x.json").output().unwrap());
    assert!(e.contains("[1, 28, 28]") && e.contains("[1, 8, 8]"), "{e}");
    genlab_data::write_matrix_h5(&p("flat.h5"), "images", &tch::Tensor::zeros([10, 64], tch::kind::FLOAT_CPU), None)
        .unwrap();
    let e = fail(eval(&["--samples"], &p("flat.h5"), "x.json").output().unwrap());
    assert!(e.contains("flat.h5") && e.contains("rank 2"), "{e}");
    let e = fail(
        genlab()
            .args(["eval", "--data", "digits", "--n", "1000", "--features", &features, "--samples"])
            .arg(p("digits.h5"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("at most 898"), "{e}");
    let e = fail(
        genlab()
            .args(["eval", "--data", "digits", "--run"])
            .arg(p("gan"))
            .arg("--samples")
            .arg(p("digits.h5"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("cannot be used with"), "{e}");
    let e = fail(
        genlab()
            .env("GENLAB_DATA_DIR", p("empty"))
            .args(["eval", "--data", "digits", "--n", "100", "--features", "inception", "--samples"])
            .arg(p("digits.h5"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("cargo xtask download fid-inception"), "{e}");
}

#[test]
fn latent_diffusion_trains_on_a_kl_autoencoder_and_samples_images() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name);
    let common = ["--data", "digits", "--device", "cpu", "--no-progress", "--batch-size", "16"];
    ok(genlab()
        .args(["vae", "train", "--model", "kl-f2", "--steps", "2"])
        .args(common)
        .arg("--out")
        .arg(p("ae"))
        .output()
        .unwrap());
    let ldm = |extra: &[&str]| {
        let mut c = genlab();
        c.args(["diffusion", "train", "--model", "unet-tiny", "--sample-every", "2"])
            .args(common)
            .arg("--out")
            .arg(p("ldm"))
            .args(extra);
        c
    };
    let text = ok(ldm(&["--steps", "2", "--latent-autoencoder"]).arg(p("ae")).output().unwrap());
    assert!(text.contains("[4, 4, 4]") && text.contains("scale"), "{text}");
    assert!(p("ldm/autoencoder/config.json").is_file());
    assert!(p("ldm/samples/step-00000002.png").is_file());
    // The run keeps working without the original autoencoder run.
    std::fs::rename(p("ae"), p("ae-moved")).unwrap();
    ok(genlab()
        .args(["diffusion", "sample", "--n", "4", "--steps", "3", "--run"])
        .arg(p("ldm"))
        .arg("--out")
        .arg(p("s.png"))
        .output()
        .unwrap());
    // Grids of decoded 8x8 greyscale images (4x4 latents would give 14 and 34 pixels): 2 and 8 tiles
    // a row, 2 pixels apart.
    let grid = image::open(p("s.png")).unwrap();
    assert_eq!((grid.width(), grid.height(), grid.color()), (22, 22, image::ColorType::L8));
    assert_eq!(image::open(p("ldm/samples/step-00000002.png")).unwrap().width(), 82);
    genlab_png(&p("in.png"), 8, 8);
    ok(genlab()
        .args(["diffusion", "img2img", "--steps", "4", "--run"])
        .arg(p("ldm"))
        .arg("--input")
        .arg(p("in.png"))
        .arg("--out")
        .arg(p("i.png"))
        .output()
        .unwrap());
    assert_eq!(image::open(p("i.png")).unwrap().width(), 8);
    // Resume: another autoencoder path is refused; none at all is fine.
    let e = fail(ldm(&["--steps", "3", "--resume", "--latent-autoencoder"]).arg(p("ae-moved")).output().unwrap());
    assert!(e.contains("ae-moved") && e.contains("started with the autoencoder"), "{e}");
    ok(ldm(&["--steps", "3", "--resume"]).output().unwrap());
    // Not a KL autoencoder run.
    let e =
        fail(ldm(&["--steps", "2", "--latent-autoencoder"]).arg(p("ldm")).arg("--out").arg(p("x")).output().unwrap());
    assert!(e.contains("not a KL autoencoder run"), "{e}");
}

#[test]
fn stylegan2_trains_samples_mixes_and_interpolates() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("sg2");
    let mut t = genlab();
    t.args(["gan", "train", "--model", "stylegan2", "--data", "digits", "--steps", "4", "--batch-size", "8"])
        .args(["--sample-every", "0", "--no-progress", "--out"])
        .arg(&run);
    ok(t.output().unwrap());
    let p = |name: &str| tmp.path().join(name);
    ok(genlab()
        .args(["gan", "sample", "--truncation", "0.7", "--n", "6", "--run"])
        .arg(&run)
        .arg("--out")
        .arg(p("s.h5"))
        .output()
        .unwrap());
    let info = ok(genlab().args(["data", "info"]).arg(p("s.h5")).output().unwrap());
    assert!(info.contains("count: 6") && info.contains("1 x 8 x 8"), "{info}");
    ok(genlab()
        .args(["gan", "style-mix", "--rows", "1,2", "--cols", "3,4,5", "--styles", "fine", "--run"])
        .arg(&run)
        .arg("--out")
        .arg(p("m.png"))
        .output()
        .unwrap());
    // 3 x 4 tiles of 8x8 with 1-pixel padding.
    let (w, h) = image::image_dimensions(p("m.png")).unwrap();
    assert_eq!((w, h), (4 * 9 + 1, 3 * 9 + 1));
    ok(genlab()
        .args(["gan", "interpolate", "--seeds", "1,2", "--steps", "5", "--run"])
        .arg(&run)
        .arg("--out")
        .arg(p("i.h5"))
        .output()
        .unwrap());
    let info = ok(genlab().args(["data", "info"]).arg(p("i.h5")).output().unwrap());
    assert!(info.contains("count: 5"), "{info}");
    let e = fail(
        genlab()
            .args(["gan", "sample", "--truncation", "1.5", "--run"])
            .arg(&run)
            .arg("--out")
            .arg(p("x.png"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("outside [0, 1]"), "{e}");
    let e = fail(
        genlab()
            .args(["gan", "style-mix", "--rows", "1", "--cols", "2", "--styles", "9..99", "--run"])
            .arg(&run)
            .arg("--out")
            .arg(p("x.png"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("A < B"), "{e}");
}

#[test]
fn gan_cyclegan_train_and_translate() {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s);
    let e = fail(
        genlab()
            .args(["gan", "train", "--model", "cyclegan", "--data", "digits", "--steps", "1", "--out"])
            .arg(p("no-b"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("--data-b"), "{e}");
    let run = p("cg");
    ok(genlab()
        .args(["gan", "train", "--model", "cyclegan", "--data", "openmoji-color@16", "--data-b", "openmoji-black@16"])
        .args(["--steps", "2", "--batch-size", "2", "--no-progress", "--device", "cpu", "--out"])
        .arg(&run)
        .output()
        .unwrap());
    let e = fail(genlab().args(["gan", "translate", "--direction", "up", "--run"]).arg(&run).output().unwrap());
    assert!(e.contains("a2b or b2a"), "{e}");
    let out = ok(genlab()
        .args(["gan", "translate", "--eval", "--data-a", "openmoji-color@16", "--data-b", "openmoji-color@16"])
        .args(["--n", "8", "--device", "cpu", "--run"])
        .arg(&run)
        .output()
        .unwrap());
    assert!(out.contains("a2b  identity L1 0.0000"), "{out}");
}

/// Run `cmd` to completion, killing it (and failing) after `secs` seconds.
fn output_within(cmd: &mut Command, secs: u64) -> Output {
    let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("still running after {secs} s: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

fn launch(nproc: &str, run: &Path, family_args: &[&str], extra: &[&str]) -> Command {
    let mut c = genlab();
    c.args(["launch", "--nproc", nproc, "--dist-timeout", "60", "--"])
        .args(family_args)
        .args(["--device", "cpu", "--no-progress", "--sample-every", "0", "--out"])
        .arg(run)
        .args(extra)
        .env("OMP_NUM_THREADS", "1");
    c
}

#[test]
fn launch_trains_data_parallel_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("vae");
    let vae = ["vae", "train", "--model", "mlp", "--data", "digits", "--batch-size", "16"];
    let text = ok(output_within(&mut launch("2", &run, &vae, &["--steps", "6", "--checkpoint-every", "3"]), 120));
    // Rank 0 alone reports and writes: one line per checkpoint, one run directory.
    assert_eq!(text.matches("checkpoint ").count(), 2 + 1, "{text}");
    let entries: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("vae")]);
    for step in [3, 6] {
        assert!(run.join(format!("checkpoints/step-{step:08}/state.json")).is_file(), "step {step}");
    }
    // Resume the distributed run to step 9.
    ok(output_within(&mut launch("2", &run, &vae, &["--steps", "9", "--checkpoint-every", "3", "--resume"]), 120));
    let status = std::fs::read_to_string(run.join("status.json")).unwrap();
    assert!(status.contains("\"finished\"") && status.contains("\"step\": 9"), "{status}");
    let info = ok(genlab().arg("info").arg(&run).output().unwrap());
    assert!(info.contains("step: 9"), "{info}");

    // A GAN: generator and discriminator both stay in sync (the harness checks it at every checkpoint).
    let gan = tmp.path().join("gan");
    let cgan = ["gan", "train", "--model", "cgan", "--data", "digits", "--batch-size", "16"];
    ok(output_within(&mut launch("2", &gan, &cgan, &["--steps", "4", "--checkpoint-every", "4"]), 120));
    assert!(gan.join("checkpoints/step-00000004/state.json").is_file());

    // Only training commands run distributed.
    let e = fail(genlab().args(["launch", "--nproc", "2", "--", "info"]).arg(&run).output().unwrap());
    assert!(e.contains("runs training commands"), "{e}");
}
