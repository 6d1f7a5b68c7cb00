//! Super-resolution: network shapes and parameter names, pixel shuffle on a hand-made tensor,
//! PSNR and SSIM on hand-checkable cases and against scikit-image, resampling against PyTorch,
//! file round trips, checkpoints and exact resume, and clear errors on bad input.
use genlab_core::train::{run, HarnessConfig, StopToken, TrainTask};
use genlab_data::{Loader, LoaderConfig};
use genlab_gan::sr::metrics::{psnr, ssim};
use genlab_gan::sr::model::{pixel_shuffle, SrConfig, SrDiscriminator, SrGenerator};
use genlab_gan::sr::resample::{downscale, resize_bicubic, upscale_bicubic};
use genlab_gan::sr::train::{load, SrRunConfig, SrTask};
use genlab_gan::sr::upscale::{evaluate, read_image, upscale, upscale_file};
use std::path::Path;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn cpu() -> (Kind, Device) {
    (Kind::Float, Device::Cpu)
}

/// libtorch's random generator is global: tests that seed it or draw from it take turns.
fn rng() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn tiny(channels: i64, scale: i64) -> SrConfig {
    SrConfig { channels, scale, features: 8, num_blocks: 2, d_channels: 4, d_pool: 2, d_hidden: 16 }
}

#[test]
fn shapes_at_x2_and_x4_for_any_input_size() {
    let _rng = rng();
    tch::manual_seed(0);
    for scale in [2, 4] {
        for c in [1, 3] {
            let vs = VarStore::new(Device::Cpu);
            let g = SrGenerator::new(vs.root() / "g", tiny(c, scale)).unwrap();
            let d = SrDiscriminator::new(vs.root() / "d", tiny(c, scale)).unwrap();
            for [h, w] in [[7, 7], [14, 14], [5, 9], [16, 16]] {
                let lr = Tensor::rand([2, c, h, w], cpu()) * 2.0 - 1.0;
                let sr = g.forward(&lr, true).unwrap();
                assert_eq!(sr.size(), [2, c, h * scale, w * scale], "x{scale} {c}x{h}x{w}");
                assert_eq!(d.forward(&sr, true).unwrap().size(), [2], "x{scale} {c}x{h}x{w}");
                let out = upscale(&g, &lr).unwrap();
                assert_eq!(out.size(), sr.size());
                assert!(out.abs().max().double_value(&[]) <= 1.0);
            }
        }
    }
}

#[test]
fn parameter_names_and_shapes_follow_the_reference() {
    let _rng = rng();
    // Lornatang/SRGAN-PyTorch model.py: SRResNet(3, 3, 64, 16, 4) and Discriminator() on 96x96.
    let vs = VarStore::new(Device::Cpu);
    let _g = SrGenerator::new(vs.root() / "g", SrConfig::default()).unwrap();
    let _d = SrDiscriminator::new(vs.root() / "d", SrConfig::default()).unwrap();
    let v = vs.variables();
    for (name, shape) in [
        ("g.conv1.0.weight", vec![64, 3, 9, 9]),
        ("g.conv1.0.bias", vec![64]),
        ("g.conv1.1.weight", vec![1]),
        ("g.trunk.0.rcb.0.weight", vec![64, 64, 3, 3]),
        ("g.trunk.0.rcb.1.running_var", vec![64]),
        ("g.trunk.15.rcb.2.weight", vec![1]),
        ("g.trunk.15.rcb.4.bias", vec![64]),
        ("g.conv2.0.weight", vec![64, 64, 3, 3]),
        ("g.conv2.1.weight", vec![64]),
        ("g.upsampling.1.upsample_block.0.weight", vec![256, 64, 3, 3]),
        ("g.upsampling.1.upsample_block.0.bias", vec![256]),
        ("g.upsampling.1.upsample_block.2.weight", vec![1]),
        ("g.conv3.weight", vec![3, 64, 9, 9]),
        ("g.conv3.bias", vec![3]),
        ("d.features.0.weight", vec![64, 3, 3, 3]),
        ("d.features.0.bias", vec![64]),
        ("d.features.2.weight", vec![64, 64, 3, 3]),
        ("d.features.3.running_mean", vec![64]),
        ("d.features.5.weight", vec![128, 64, 3, 3]),
        ("d.features.20.weight", vec![512, 512, 3, 3]),
        ("d.features.21.weight", vec![512]),
        ("d.classifier.0.weight", vec![1024, 512 * 6 * 6]),
        ("d.classifier.2.weight", vec![1, 1024]),
    ] {
        assert_eq!(v.get(name).map(|t| t.size()), Some(shape), "{name}");
    }
    // Convolutions followed by BatchNorm have no bias, as in the reference.
    for name in ["g.trunk.0.rcb.0.bias", "g.conv2.0.bias", "d.features.2.bias"] {
        assert!(!v.contains_key(name), "{name}");
    }
    // G: conv1 (3) + 16 blocks x (2 convs + 2 BN x 4 + PReLU) + conv2 (1 + 4) + 2 x (conv 2 + PReLU 1) + conv3 (2).
    let g = v.keys().filter(|k| k.starts_with("g.")).count();
    assert_eq!(g, 3 + 16 * 11 + 5 + 2 * 3 + 2);
    // D: conv 0 (2) + 7 x (conv + BN x 4) + two dense layers (4).
    assert_eq!(v.keys().filter(|k| k.starts_with("d.")).count(), 2 + 7 * 5 + 4);
}

#[test]
fn pixel_shuffle_moves_channels_to_sub_pixels() {
    // in[c, y, x] = 100 c + 10 y + x, 8 channels of 2x2, r = 2 -> 2 channels of 4x4.
    let v: Vec<f32> =
        (0..8).flat_map(|c| (0..2).flat_map(move |y| (0..2).map(move |x| (100 * c + 10 * y + x) as f32))).collect();
    let x = Tensor::from_slice(&v).view([1, 8, 2, 2]);
    let out = pixel_shuffle(&x, 2);
    assert_eq!(out.size(), [1, 2, 4, 4]);
    let got = Vec::<f32>::try_from(out.flatten(0, -1)).unwrap();
    #[rustfmt::skip]
    let want: [f32; 32] = [
        0.0, 100.0, 1.0, 101.0,
        200.0, 300.0, 201.0, 301.0,
        10.0, 110.0, 11.0, 111.0,
        210.0, 310.0, 211.0, 311.0,
        400.0, 500.0, 401.0, 501.0,
        600.0, 700.0, 601.0, 701.0,
        410.0, 510.0, 411.0, 511.0,
        610.0, 710.0, 611.0, 711.0,
    ];
    assert_eq!(got, want);
}

#[test]
fn psnr_of_known_errors() {
    let a = Tensor::zeros([2, 1, 4, 4], cpu());
    // Image 0 is off by 0.1 everywhere (MSE 0.01: 20 dB); image 1 by 0.2 on half its pixels (MSE 0.02).
    let b = Tensor::cat(
        &[
            Tensor::full([1, 1, 4, 4], 0.1, cpu()),
            Tensor::cat(&[Tensor::full([1, 1, 2, 4], 0.2, cpu()), Tensor::zeros([1, 1, 2, 4], cpu())], 2),
        ],
        0,
    );
    let p = Vec::<f64>::try_from(psnr(&a, &b).unwrap()).unwrap();
    assert!((p[0] - 20.0).abs() < 1e-5, "{p:?}");
    assert!((p[1] - 10.0 * (1.0f64 / 0.02).log10()).abs() < 1e-5, "{p:?}");
    assert_eq!(psnr(&a, &a).unwrap().double_value(&[0]), f64::INFINITY);
}

#[test]
fn ssim_of_identical_and_constant_images_by_hand() {
    let _rng = rng();
    tch::manual_seed(0);
    let x = Tensor::rand([3, 2, 16, 13], cpu());
    for s in Vec::<f64>::try_from(ssim(&x, &x).unwrap()).unwrap() {
        assert!((s - 1.0).abs() < 1e-12, "{s}");
    }
    // Constant images 0.2 and 0.5: no variance, so SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1).
    let (a, b) = (Tensor::full([1, 1, 12, 12], 0.2, cpu()), Tensor::full([1, 1, 12, 12], 0.5, cpu()));
    let c1 = 0.01f64 * 0.01;
    let want = (2.0 * 0.2 * 0.5 + c1) / (0.04 + 0.25 + c1);
    let got = ssim(&a, &b).unwrap().double_value(&[0]);
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
}

fn refs() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/sr_refs.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// x[k, i, j] = 0.5 + 0.4 sin(0.7 i + 0.3 j + 1.1 k + phase), as in gen_sr_refs.py.
fn pattern(c: i64, h: i64, w: i64, phase: f64) -> Vec<f64> {
    let mut v = Vec::new();
    for k in 0..c {
        for i in 0..h {
            for j in 0..w {
                v.push(0.5 + 0.4 * (0.7 * i as f64 + 0.3 * j as f64 + 1.1 * k as f64 + phase).sin());
            }
        }
    }
    v
}

/// clip(x + 0.15 cos(1.3 i - 0.5 j + k), 0, 1), as in gen_sr_refs.py.
fn distort(x: &[f64], c: i64, h: i64, w: i64) -> Vec<f64> {
    let mut out = Vec::new();
    for k in 0..c {
        for i in 0..h {
            for j in 0..w {
                let v = x[((k * h + i) * w + j) as usize] + 0.15 * (1.3 * i as f64 - 0.5 * j as f64 + k as f64).cos();
                out.push(v.clamp(0.0, 1.0));
            }
        }
    }
    out
}

#[test]
fn ssim_and_psnr_match_scikit_image() {
    for case in refs()["ssim_psnr"].as_array().unwrap() {
        let s: Vec<i64> = case["shape"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let (c, h, w) = (s[0], s[1], s[2]);
        let a = pattern(c, h, w, 0.0);
        let b = distort(&a, c, h, w);
        let shifted = pattern(c, h, w, 0.8);
        let t = |v: &[f64]| Tensor::from_slice(v).view([1, c, h, w]);
        let name = case["name"].as_str().unwrap();
        for (got, key) in [
            (ssim(&t(&a), &t(&b)).unwrap(), "ssim_distorted"),
            (ssim(&t(&a), &t(&shifted)).unwrap(), "ssim_shifted"),
            (psnr(&t(&a), &t(&b)).unwrap(), "psnr_distorted"),
        ] {
            let (got, want) = (got.double_value(&[0]), case[key].as_f64().unwrap());
            assert!((got - want).abs() < 1e-9, "{name} {key}: {got} vs scikit-image {want}");
        }
    }
}

#[test]
fn bicubic_resampling_matches_torch_interpolate_with_antialias() {
    let r = refs()["resample"].clone();
    let v: Vec<f32> = (0..8)
        .flat_map(|i| (0..8).map(move |j| ((0.9 * i as f64 + 0.4 * j as f64).sin() + 0.1 * i as f64) as f32))
        .collect();
    let x = Tensor::from_slice(&v).view([1, 1, 8, 8]);
    for (key, side) in [("down2", 4), ("down4", 2), ("up2", 16)] {
        let got = Vec::<f32>::try_from(resize_bicubic(&x, [side, side]).unwrap().flatten(0, -1)).unwrap();
        let want: Vec<f64> = r[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(got.len(), want.len(), "{key}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((*g as f64 - w).abs() < 1e-5, "{key}[{i}]: {g} vs torch {w}");
        }
    }
}

#[test]
fn low_resolution_inputs_are_8_bit_and_sizes_must_divide() {
    let _rng = rng();
    tch::manual_seed(0);
    let hr = Tensor::rand([2, 3, 12, 8], cpu()) * 2.0 - 1.0;
    let lr = downscale(&hr, 4).unwrap();
    assert_eq!(lr.size(), [2, 3, 3, 2]);
    let levels = (&lr + 1.0) * 127.5;
    assert!((&levels - levels.round()).abs().max().double_value(&[]) < 1e-4);
    assert_eq!(upscale_bicubic(&lr, 4).unwrap().size(), [2, 3, 12, 8]);
    let e = downscale(&hr, 3).unwrap_err().to_string();
    assert!(e.contains("multiples of 3") && e.contains("[2, 3, 12, 8]"), "{e}");
}

fn save_png(path: &Path, channels: u32, h: u32, w: u32) {
    let color = if channels == 1 { image::ExtendedColorType::L8 } else { image::ExtendedColorType::Rgb8 };
    let px: Vec<u8> = (0..channels * h * w).map(|i| (i * 37 % 256) as u8).collect();
    image::save_buffer(path, &px, w, h, color).unwrap();
}

#[test]
fn upscale_files_png_and_hdf5() {
    let _rng = rng();
    tch::manual_seed(0);
    let tmp = tempfile::tempdir().unwrap();
    let vs = VarStore::new(Device::Cpu);
    let g = SrGenerator::new(vs.root(), tiny(1, 2)).unwrap();
    save_png(&tmp.path().join("in.png"), 1, 7, 5);
    let s = upscale_file(&g, &tmp.path().join("in.png"), &tmp.path().join("out.png"), 16).unwrap();
    assert_eq!((s.images, s.input_shape, s.output_shape), (1, [1, 7, 5], [1, 14, 10]));
    let out = image::open(tmp.path().join("out.png")).unwrap();
    assert_eq!((out.width(), out.height(), out.color().has_color()), (10, 14, false));
    // HDF5: three labelled 6x6 images -> three 12x12 ones with the same labels.
    let x = (Tensor::rand([3, 1, 6, 6], cpu()) * 255.0).to_kind(Kind::Uint8);
    genlab_data::write_h5(&tmp.path().join("in.h5"), &x, Some(&[4, 0, 9]), &[]).unwrap();
    let s = upscale_file(&g, &tmp.path().join("in.h5"), &tmp.path().join("out.h5"), 2).unwrap();
    assert_eq!((s.images, s.output_shape), (3, [1, 12, 12]));
    let back = genlab_data::open(&tmp.path().join("out.h5").display().to_string()).unwrap();
    assert_eq!((back.len(), back.shape()), (3, [1, 12, 12]));
    let labels: Vec<Option<i64>> = (0..3).map(|i| back.get(i).unwrap().label).collect();
    assert_eq!(labels, [Some(4), Some(0), Some(9)]);
    // The file holds what `upscale` gives for the same inputs.
    let lr = x.to_kind(Kind::Float) / 127.5 - 1.0;
    let want = genlab_core::images::to_u8(&upscale(&g, &lr.narrow(0, 1, 1)).unwrap()).flatten(0, -1);
    assert_eq!(back.get(1).unwrap().image, Vec::<u8>::try_from(want).unwrap());
}

#[test]
fn bad_inputs_name_the_file_and_the_channels() {
    let _rng = rng();
    let tmp = tempfile::tempdir().unwrap();
    let vs = VarStore::new(Device::Cpu);
    let grey = SrGenerator::new(vs.root() / "grey", tiny(1, 2)).unwrap();
    let rgb = SrGenerator::new(vs.root() / "rgb", tiny(3, 2)).unwrap();
    let colour = tmp.path().join("colour.png");
    save_png(&colour, 3, 4, 4);
    let e = upscale_file(&grey, &colour, &tmp.path().join("o.png"), 8).unwrap_err().to_string();
    assert!(
        e.contains("colour.png") && e.contains("colour image (3 channels") && e.contains("model of 1 channel"),
        "{e}"
    );
    let g1 = tmp.path().join("grey.png");
    save_png(&g1, 1, 4, 4);
    let e = read_image(&g1, 3).unwrap_err().to_string();
    assert!(
        e.contains("grey.png") && e.contains("greyscale image (1 channel") && e.contains("model of 3 channels"),
        "{e}"
    );
    // Unreadable and missing files.
    let junk = tmp.path().join("junk.png");
    std::fs::write(&junk, b"not a png").unwrap();
    assert!(read_image(&junk, 1).unwrap_err().to_string().contains("junk.png"));
    let e = upscale_file(&grey, &tmp.path().join("missing.h5"), &tmp.path().join("o.h5"), 8).unwrap_err().to_string();
    assert!(e.contains("missing.h5"), "{e}");
    let e = upscale_file(&grey, &g1, &tmp.path().join("o.h5"), 8).unwrap_err().to_string();
    assert!(e.contains("HDF5"), "{e}");
    // An HDF5 file of colour images for a grey model.
    let x = Tensor::zeros([2, 3, 4, 4], (Kind::Uint8, Device::Cpu));
    genlab_data::write_h5(&tmp.path().join("rgb.h5"), &x, None, &[]).unwrap();
    let e = upscale_file(&grey, &tmp.path().join("rgb.h5"), &tmp.path().join("o.h5"), 8).unwrap_err().to_string();
    assert!(e.contains("rgb.h5") && e.contains("3 channels") && e.contains("takes 1"), "{e}");
    // Tensors of the wrong channel count.
    let e = rgb.forward(&Tensor::zeros([2, 1, 5, 5], cpu()), false).unwrap_err().to_string();
    assert!(e.contains("[batch, 3, h, w]") && e.contains("[2, 1, 5, 5]"), "{e}");
    // Evaluation data of the wrong channel count or size.
    let digits = genlab_data::open("digits").unwrap();
    let e = evaluate(&rgb, digits.as_ref(), Some(10), 8).unwrap_err().to_string();
    assert!(e.contains("1 channels") && e.contains("takes 3"), "{e}");
    let x3 = SrGenerator::new(vs.root() / "x4", tiny(1, 4)).unwrap();
    let odd = genlab_data::InMemory::new("odd", [1, 14, 14], vec![0; 2 * 14 * 14], None).unwrap();
    let e = evaluate(&x3, &odd, None, 8).unwrap_err().to_string();
    assert!(e.contains("14x14") && e.contains("multiples"), "{e}");
}

#[test]
fn configuration_errors_are_clear() {
    let _rng = rng();
    let e = SrRunConfig::from_preset("esrgan", [1, 28, 28], Some(2), "x").unwrap_err().to_string();
    assert!(e.contains("srgan, srresnet"), "{e}");
    let e = SrRunConfig::from_preset("srgan", [1, 28, 28], Some(3), "x").unwrap_err().to_string();
    assert!(e.contains("2, 4 or 8") && e.contains("got 3"), "{e}");
    let e = SrRunConfig::from_preset("srgan", [1, 28, 28], Some(8), "fashion-mnist").unwrap_err().to_string();
    assert!(e.contains("multiples of 8") && e.contains("28x28") && e.contains("fashion-mnist"), "{e}");
    let e = SrRunConfig::from_preset("srgan", [2, 28, 28], Some(2), "x").unwrap_err().to_string();
    assert!(e.contains("1 or 3 channels"), "{e}");
    // A batch of the wrong channel count for the task.
    let mut task =
        SrTask::new(SrRunConfig::from_preset("srgan", [1, 8, 8], Some(2), "x").unwrap(), Device::Cpu).unwrap();
    let batch = genlab_core::train::Batch { images: Tensor::zeros([4, 3, 8, 8], cpu()), labels: None };
    let e = task.train_step(&batch, 0).unwrap_err().to_string();
    assert!(e.contains("[1, 8, 8]") && e.contains("[4, 3, 8, 8]"), "{e}");
}

fn small_run(scale: i64) -> SrRunConfig {
    let mut cfg = SrRunConfig::from_preset("srgan", [1, 8, 8], Some(scale), "digits").unwrap();
    cfg.sr = SrConfig { scale, ..tiny(1, scale) };
    cfg.pretrain_steps = 2;
    cfg.batch_size = 8;
    cfg
}

fn harness(out: &Path, steps: u64) -> HarnessConfig {
    HarnessConfig {
        progress: false,
        sample_every: 0,
        checkpoint_every: 2,
        stop: StopToken::new(),
        ..HarnessConfig::new(out, steps)
    }
}

fn train(cfg: &SrRunConfig, h: &HarnessConfig) -> SrTask {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let ds = genlab_data::open("digits").unwrap();
    let mut loader = Loader::new(ds, LoaderConfig::new(cfg.batch_size, 0, Device::Cpu)).unwrap();
    let mut task = SrTask::new(cfg.clone(), Device::Cpu).unwrap();
    run(&mut task, &mut loader, h).unwrap();
    task
}

#[test]
fn runs_checkpoint_load_and_resume_exactly() {
    let _rng = rng();
    let cfg = small_run(4);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Two pixel-only steps, then two adversarial ones.
    let straight = train(&cfg, &harness(a.path(), 4));
    train(&cfg, &harness(b.path(), 2));
    let resumed = train(&cfg, &HarnessConfig { resume: true, ..harness(b.path(), 4) });
    let vars = |t: &SrTask| {
        let mut v: Vec<(String, Tensor)> = t.vs_g.variables().into_iter().chain(t.vs_d.variables()).collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    for ((name, x), (_, y)) in vars(&straight).iter().zip(vars(&resumed).iter()) {
        assert!(x.equal(y), "{name} differs after resume");
    }
    let metrics = std::fs::read_to_string(a.path().join("metrics.jsonl")).unwrap();
    assert!(metrics.lines().last().unwrap().contains("d_loss"));
    // The samples grid: bicubic, model and original side by side.
    let mut t = straight;
    assert_eq!(t.samples(64).unwrap().size(), [9, 1, 8, 8]);
    // Loading: the SR loader reads it back; the image-generation loader points to upscaling.
    let (_vs, g, run_cfg) = load(a.path(), Device::Cpu).unwrap();
    assert_eq!((g.cfg.scale, run_cfg.kind.as_str()), (4, "super-resolution"));
    let e = genlab_gan::train::load(a.path(), Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("super-resolution run") && e.contains("genlab gan upscale"), "{e}");
}

#[test]
fn an_image_generation_run_is_not_a_super_resolution_run() {
    let _rng = rng();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = genlab_gan::train::GanRunConfig::from_preset("dcgan", [1, 8, 8], None, "digits").unwrap();
    cfg.gan.g_width = 4;
    cfg.gan.d_width = 4;
    cfg.batch_size = 8;
    tch::manual_seed(0);
    let mut task = genlab_gan::train::GanTask::new(cfg, Device::Cpu).unwrap();
    let ds = genlab_data::open("digits").unwrap();
    let mut loader = Loader::new(ds, LoaderConfig::new(8, 0, Device::Cpu)).unwrap();
    run(&mut task, &mut loader, &harness(tmp.path(), 1)).unwrap();
    let e = load(tmp.path(), Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("not a `gan/super-resolution` run") && e.contains("--model srgan"), "{e}");
}
