//! End to end through the `genlab` binary: the CLI contract, config files, Ctrl-C, resume.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn genlab() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_genlab"));
    // Binaries must run without LD_LIBRARY_PATH (rpath).
    c.env_remove("LD_LIBRARY_PATH");
    c
}

fn bin_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_genlab"))
}

fn ok(out: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "genlab failed: {text}");
    text
}

fn fail(out: Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "genlab should have failed");
    assert!(!text.contains("panicked"), "panic instead of an error: {text}");
    text
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
    // Diffusion
    ok(genlab()
        .args(["diffusion", "train", "--model", "unet-tiny"])
        .args(common)
        .arg("--out")
        .arg(p("ddpm"))
        .output()
        .unwrap());
    let sample = |extra: &[&str]| {
        let mut c = genlab();
        c.args(["diffusion", "sample", "--n", "4", "--run"]).arg(p("ddpm")).args(extra);
        c
    };
    ok(sample(&["--sampler", "dpmpp-2m", "--steps", "5", "--out"]).arg(p("d.png")).output().unwrap());
    assert!(std::fs::metadata(p("d.png")).unwrap().len() > 50);
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
}
