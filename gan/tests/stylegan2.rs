//! StyleGAN2 networks, losses, tools and run configuration: closed-form and shape checks.
use genlab_gan::stylegan2::discriminator::MinibatchStdLayer;
use genlab_gan::stylegan2::loss::{d_loss_logistic, g_loss_logistic, mix_styles, r1_penalty, PathLength};
use genlab_gan::stylegan2::tools::{
    interpolate_w, sample_seeds, style_mixing_grid, style_range, truncate, z_from_seed, StyleLevel,
};
use genlab_gan::stylegan2::train::StyleGan2RunConfig;
use genlab_gan::stylegan2::{Discriminator, Generator, NoiseMode, StyleGan2Config};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

fn small(image_shape: [i64; 3]) -> StyleGan2Config {
    let mut cfg = StyleGan2RunConfig::from_preset("stylegan2", image_shape, "test").unwrap().net;
    cfg.z_dim = 16;
    cfg.w_dim = 16;
    cfg.channel_base = 128;
    cfg.channel_max = 16;
    cfg
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn networks_have_the_reference_shapes_and_names() {
    tch::manual_seed(0);
    let cfg = small([1, 28, 28]);
    assert_eq!(cfg.resolution(), 32);
    assert_eq!(cfg.num_ws(), 8);
    assert_eq!(cfg.block_resolutions(), [4, 8, 16, 32]);
    let vs = VarStore::new(Device::Cpu);
    let g = Generator::new(vs.root(), cfg.clone()).unwrap();
    let z = Tensor::randn([4, 16], CPU);
    let img = tch::no_grad(|| g.forward(&z, 1.0, NoiseMode::Random, true)).unwrap();
    assert_eq!(img.size(), [4, 1, 32, 32]);
    let vars = vs.variables();
    for name in [
        "mapping.fc0.weight",
        "mapping.fc3.bias",
        "mapping.w_avg",
        "synthesis.b4.const",
        "synthesis.b4.conv1.affine.weight",
        "synthesis.b4.conv1.noise_const",
        "synthesis.b4.conv1.noise_strength",
        "synthesis.b8.conv0.weight",
        "synthesis.b32.torgb.weight",
    ] {
        assert!(vars.contains_key(name), "generator variable {name} missing");
    }
    assert!(!vars["mapping.w_avg"].requires_grad() && !vars["synthesis.b8.conv0.noise_const"].requires_grad());
    // The affine maps start at styles of 1 (bias_init 1).
    assert_eq!(vars["synthesis.b16.conv1.affine.bias"].mean(Kind::Float).double_value(&[]), 1.0);
    assert_eq!(vars["synthesis.b16.conv1.weight"].size(), [16 / 2, 16 / 2, 3, 3]);

    let vs_d = VarStore::new(Device::Cpu);
    let d = Discriminator::new(vs_d.root(), cfg.clone()).unwrap();
    let logits = tch::no_grad(|| d.forward(&img)).unwrap();
    assert_eq!(logits.size(), [4, 1]);
    let dv = vs_d.variables();
    for name in
        ["b32.fromrgb.weight", "b32.skip.weight", "b8.conv1.bias", "b4.conv.weight", "b4.fc.weight", "b4.out.bias"]
    {
        assert!(dv.contains_key(name), "discriminator variable {name} missing");
    }
    assert!(!dv.contains_key("b16.fromrgb.weight") && !dv.contains_key("b32.skip.bias"));
    let err = d.forward(&Tensor::zeros([4, 1, 28, 28], CPU)).unwrap_err();
    assert!(err.to_string().contains("[1, 32, 32]"), "{err}");
}

#[test]
fn fused_and_per_sample_synthesis_agree_and_w_avg_tracks_training_passes() {
    tch::manual_seed(1);
    let cfg = small([3, 16, 16]);
    let vs = VarStore::new(Device::Cpu);
    let g = Generator::new(vs.root(), cfg).unwrap();
    let z = Tensor::randn([3, 16], CPU);
    let ws = tch::no_grad(|| g.mapping.forward(&z, false)).unwrap();
    assert_eq!(g.mapping.w_avg.abs().sum(Kind::Float).double_value(&[]), 0.0, "eval passes leave w_avg alone");
    let a = tch::no_grad(|| g.synthesis.forward(&ws, NoiseMode::Const, true)).unwrap();
    let b = tch::no_grad(|| g.synthesis.forward(&ws, NoiseMode::Const, false)).unwrap();
    assert!(max_diff(&a, &b) < 1e-5, "fused vs per-sample: {}", max_diff(&a, &b));
    // A training pass moves w_avg to lerp(mean w, w_avg, 0.995) = 0.005 * mean w.
    let _ = tch::no_grad(|| g.mapping.forward(&z, true)).unwrap();
    let want = ws.select(1, 0).mean_dim(0, false, Kind::Float) * 0.005;
    assert!(max_diff(&g.mapping.w_avg, &want) < 1e-6);
}

#[test]
fn r1_of_a_linear_discriminator_is_the_squared_weight_norm() {
    // D(x) = sum(a * x): grad_x D = a for every sample, R1 = |a|^2 = 9 + 16 = 25.
    let a = Tensor::from_slice(&[3.0f32, 0.0, 0.0, 4.0]).view([1, 1, 2, 2]).set_requires_grad(true);
    let x = Tensor::randn([5, 1, 2, 2], CPU).set_requires_grad(true);
    let logits = (&x * &a).sum_dim_intlist([1i64, 2, 3].as_slice(), true, Kind::Float);
    let r1 = r1_penalty(&logits, &x);
    assert_eq!(r1.size(), [5]);
    assert!(max_diff(&r1, &Tensor::full([5], 25.0, CPU)) < 1e-5);
    // The loss term gamma / 2 * R1 with gamma = 10 is 125; it is differentiable in the
    // discriminator's weights: d(5 |a|^2) / da = 10 a.
    let term = (&r1 * 5.0).mean(Kind::Float);
    assert!((term.double_value(&[]) - 125.0).abs() < 1e-4);
    let grad = Tensor::run_backward(&[&term], &[&a], false, false);
    assert!(max_diff(&grad[0], &(a.detach() * 10.0)) < 1e-4);
}

#[test]
fn logistic_losses_are_softplus() {
    let real = Tensor::from_slice(&[0.0f32, 2.0]).view([2, 1]);
    let fake = Tensor::from_slice(&[0.0f32, -1.0]).view([2, 1]);
    let sp = |v: f64| (1.0 + v.exp()).ln();
    let want_d = (sp(0.0) + sp(-1.0)) / 2.0 + (sp(0.0) + sp(-2.0)) / 2.0;
    assert!((d_loss_logistic(&real, &fake).double_value(&[]) - want_d).abs() < 1e-6);
    let want_g = (sp(0.0) + sp(1.0)) / 2.0;
    assert!((g_loss_logistic(&fake).double_value(&[]) - want_g).abs() < 1e-6);
}

#[test]
fn path_length_tracks_its_running_mean() {
    // img = 3 * ws viewed as an image: J^T y = 3 y, so every path length is positive.
    let ws = Tensor::randn([4, 2, 3], CPU).set_requires_grad(true);
    let img = (&ws * 3.0).reshape([4, 1, 2, 3]);
    let mut pl = PathLength::new(0.01);
    let (penalty, lengths) = pl.penalty(&img, &ws).unwrap();
    let mean_len = lengths.mean(Kind::Float).double_value(&[]);
    assert!(mean_len > 0.0);
    assert!((pl.mean - 0.01 * mean_len).abs() < 1e-6, "a = lerp(0, mean, 0.01)");
    let want = (&lengths - pl.mean).square();
    assert!(max_diff(&penalty.detach(), &want) < 1e-5);
}

#[test]
fn minibatch_stddev_on_a_hand_made_batch() {
    // 4 samples, groups of 2: the group members are samples (0, 2) and (1, 3).
    // Sample k is constant v_k over 2 channels and 1x2 pixels: v = [0, 2, 1, 5].
    let v = [0.0f32, 2.0, 1.0, 5.0];
    let x = Tensor::from_slice(&v).view([4, 1, 1, 1]).expand([4, 2, 1, 2], false).contiguous();
    let y = MinibatchStdLayer { group_size: 2, num_channels: 1 }.forward(&x).unwrap();
    assert_eq!(y.size(), [4, 3, 1, 2]);
    assert!(max_diff(&y.narrow(1, 0, 2), &x) == 0.0);
    // Population std of (0, 1) is 0.5, of (2, 5) is 1.5.
    let want = Tensor::from_slice(&[0.5f32, 1.5, 0.5, 1.5]).view([4, 1, 1, 1]).expand([4, 1, 1, 2], false);
    assert!(max_diff(&y.narrow(1, 2, 1), &want) < 1e-6);
    // Groups larger than the batch shrink to it; a batch that does not split is an error.
    let y = MinibatchStdLayer { group_size: 8, num_channels: 1 }.forward(&x).unwrap();
    assert_eq!(y.size(), [4, 3, 1, 2]);
    let err = MinibatchStdLayer { group_size: 4, num_channels: 1 }.forward(&x.narrow(0, 0, 3).repeat([2, 1, 1, 1]));
    assert!(err.unwrap_err().to_string().contains("groups of 4"));
}

#[test]
fn truncation_mixing_and_interpolation() {
    let w = Tensor::randn([3, 8, 5], CPU);
    let w_avg = Tensor::randn([5], CPU);
    let t0 = truncate(&w, &w_avg, 0.0).unwrap();
    assert!(max_diff(&t0, &w_avg.expand([3, 8, 5], false)) < 1e-6);
    assert!(max_diff(&truncate(&w, &w_avg, 1.0).unwrap(), &w) < 1e-6);
    let half = truncate(&w, &w_avg, 0.5).unwrap();
    assert!(max_diff(&half, &((&w + &w_avg) * 0.5)) < 1e-6);
    for psi in [1.5, -0.1, f64::NAN] {
        let err = truncate(&w, &w_avg, psi).unwrap_err().to_string();
        assert!(err.contains("outside [0, 1]"), "{err}");
    }

    // ws indices of the levels: 32x32 (8 ws), 8x8 (4 ws), 256x256 (14 ws, the paper's split).
    assert_eq!(style_range(8, StyleLevel::Coarse), 0..3);
    assert_eq!(style_range(8, StyleLevel::Middle), 3..5);
    assert_eq!(style_range(8, StyleLevel::Fine), 5..8);
    assert_eq!(style_range(4, StyleLevel::Coarse), 0..1);
    assert!(style_range(4, StyleLevel::Middle).is_empty());
    assert_eq!(style_range(4, StyleLevel::Fine), 1..4);
    assert_eq!(style_range(14, StyleLevel::Middle), 3..7);
    assert_eq!(style_range(14, StyleLevel::Fine), 7..14);

    let a = Tensor::zeros([2, 6, 3], CPU);
    let b = Tensor::ones([2, 6, 3], CPU);
    let m = mix_styles(&a, &b, 4);
    assert_eq!(m.sum(Kind::Float).double_value(&[]), 2.0 * 2.0 * 3.0);
    assert_eq!(m.narrow(1, 0, 4).sum(Kind::Float).double_value(&[]), 0.0);

    // Seeds give fixed latents, independent of libtorch's generator.
    tch::manual_seed(5);
    let z = z_from_seed(7, 1000);
    tch::manual_seed(6);
    assert_eq!(max_diff(&z, &z_from_seed(7, 1000)), 0.0);
    assert!(z.mean(Kind::Float).abs().double_value(&[]) < 0.1 && (z.std(true).double_value(&[]) - 1.0).abs() < 0.1);

    tch::manual_seed(2);
    let cfg = small([1, 28, 28]);
    let vs = VarStore::new(Device::Cpu);
    let g = Generator::new(vs.root(), cfg).unwrap();
    let grid =
        style_mixing_grid(&g, &[1, 2, 3], &[4, 5], style_range(8, StyleLevel::Fine), 1.0, NoiseMode::Const).unwrap();
    assert_eq!(grid.images.size(), [4 * 3, 1, 28, 28]);
    assert_eq!(grid.ncol, 3);
    assert_eq!(grid.images.get(0).mean(Kind::Float).double_value(&[]), -1.0, "blank corner");
    let seeds = sample_seeds(&g, &[4, 5, 1, 2, 3], 1.0, NoiseMode::Const).unwrap();
    // Row 0 shows the column seeds, column 0 the row seeds.
    assert!(max_diff(&grid.images.narrow(0, 1, 2), &seeds.narrow(0, 0, 2)) < 1e-5);
    assert!(max_diff(&grid.images.get(3), &seeds.get(2)) < 1e-5);
    // Copying every style from the column seed reproduces the column seed's image.
    let full = style_mixing_grid(&g, &[1], &[4], 0..8, 1.0, NoiseMode::Const).unwrap();
    assert!(max_diff(&full.images.get(3), &seeds.get(0)) < 1e-5);
    assert!(style_mixing_grid(&g, &[1], &[4], 3..9, 1.0, NoiseMode::Const).is_err());

    let path = interpolate_w(&g, &[1, 2, 3], 5, 1.0, NoiseMode::Const).unwrap();
    assert_eq!(path.size(), [9, 1, 28, 28]);
    assert!(max_diff(&path.get(0), &seeds.get(2)) < 1e-5);
    assert!(max_diff(&path.get(4), &seeds.get(3)) < 1e-5);
    assert!(max_diff(&path.get(8), &seeds.get(4)) < 1e-5);
    assert!(interpolate_w(&g, &[1], 5, 1.0, NoiseMode::Const).is_err());
}

#[test]
fn presets_and_validation() {
    let cpu = StyleGan2RunConfig::from_preset("stylegan2", [1, 28, 28], "mnist5k").unwrap();
    assert_eq!((cpu.family.as_str(), cpu.kind.as_str()), ("gan", "stylegan2"));
    assert_eq!(cpu.net.resolution(), 32);
    assert!((cpu.r1_gamma - 0.0002 * 32.0 * 32.0 / 32.0).abs() < 1e-12);
    let gpu = StyleGan2RunConfig::from_preset("stylegan2-paper256", [3, 256, 256], "ffhq").unwrap();
    assert_eq!((gpu.net.channels(4), gpu.net.channels(256), gpu.net.num_ws()), (512, 64, 14));
    let f = StyleGan2RunConfig::from_preset("stylegan2-f", [3, 1024, 1024], "ffhq").unwrap();
    assert_eq!(f.net, StyleGan2Config::default());
    let err = StyleGan2RunConfig::from_preset("stylegan3", [1, 8, 8], "digits").unwrap_err().to_string();
    assert!(err.contains("stylegan2-paper256"), "{err}");
    let bad = StyleGan2RunConfig { batch_size: 6, ..cpu.clone() };
    assert!(bad.validate().unwrap_err().to_string().contains("minibatch-stddev group size 4"));
    let bad = StyleGan2RunConfig { style_mixing_prob: 1.5, ..cpu.clone() };
    assert!(bad.validate().is_err());
    // EMA half-life in images, with the ramp-up: no averaging at step 0.
    assert_eq!(cpu.ema_beta(0), 0.0);
    let beta = gpu.ema_beta(1_000_000);
    assert!((beta - 0.5f64.powf(64.0 / 20_000.0)).abs() < 1e-12);
    // Padding and cropping round-trip the data.
    let x = Tensor::rand([2, 1, 28, 28], CPU);
    let p = cpu.net.pad_to_resolution(&x).unwrap();
    assert_eq!(p.size(), [2, 1, 32, 32]);
    assert_eq!(max_diff(&cpu.net.crop_to_data(&p), &x), 0.0);
    assert!(cpu.net.pad_to_resolution(&Tensor::rand([2, 1, 32, 32], CPU)).is_err());
}
