//! CycleGAN: the image pool, the losses on hand-computed values, network shapes and parameter
//! names, the learning-rate schedule, and bad inputs.
use genlab_core::seed::Rng;
use genlab_data::{Dataset, InMemory};
use genlab_gan::cyclegan::loss;
use genlab_gan::cyclegan::model::{CycleGanConfig, NLayerDiscriminator, ResnetGenerator};
use genlab_gan::cyclegan::pool::ImagePool;
use genlab_gan::cyclegan::train::{check_domains, split_batch, CycleGanRunConfig};
use genlab_gan::cyclegan::translate::Direction;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-6, "{a} vs {b}");
}

#[test]
fn pool_fills_then_mixes_stored_and_new_images() {
    let mut pool = ImagePool::new(50);
    let mut rng = Rng::new(7);
    // Image i is the constant i.
    let batch = |from: i64, n: i64| Tensor::arange_start(from, from + n, (Kind::Float, Device::Cpu)).view([n, 1, 1, 1]);
    for k in 0..10 {
        let x = batch(5 * k, 5);
        let out = pool.query(&x, &mut rng);
        assert!(out.equal(&x), "while filling, the pool returns its inputs");
    }
    assert_eq!(pool.len(), 50);
    let x = batch(1000, 200);
    let out = Vec::<f32>::try_from(pool.query(&x, &mut rng).flatten(0, -1)).unwrap();
    let new = out.iter().enumerate().filter(|(i, v)| **v == 1000.0 + *i as f32).count();
    let old = out.iter().filter(|v| **v < 1000.0).count();
    assert_eq!(pool.len(), 50);
    // About half of 200 come from the pool (some of those are images stored in this call).
    assert!((70..=130).contains(&new), "{new} new images returned");
    assert!(old > 20, "{old} images from before this call returned");
    // Every returned image was either this call's input or a stored one.
    assert!(out.iter().all(|v| *v < 50.0 || (1000.0..1200.0).contains(v)));
    // Seeded: the same draws give the same answer.
    let run = |seed| {
        let mut p = ImagePool::new(50);
        let mut r = Rng::new(seed);
        let _ = p.query(&batch(0, 50), &mut r);
        p.query(&batch(100, 50), &mut r)
    };
    assert!(run(3).equal(&run(3)));
    assert!(!run(3).equal(&run(4)));
    let mut empty = ImagePool::new(0);
    assert!(empty.query(&batch(0, 3), &mut rng).equal(&batch(0, 3)));
}

#[test]
fn losses_match_hand_computed_values() {
    let pred = Tensor::from_slice(&[0.5f32, 1.0, -1.0, 2.0]);
    // real: ((-0.5)^2 + 0 + 4 + 1) / 4 = 1.3125; fake: (0.25 + 1 + 1 + 4) / 4 = 1.5625
    close(loss::lsgan(&pred, true).double_value(&[]), 1.3125);
    close(loss::lsgan(&pred, false).double_value(&[]), 1.5625);
    close(loss::discriminator_loss(&pred, &pred).double_value(&[]), 0.5 * (1.3125 + 1.5625));
    let a = Tensor::from_slice(&[0.0f32, 1.0, -1.0, 0.5]);
    let b = Tensor::from_slice(&[0.5f32, 1.0, 1.0, 0.0]);
    // |a - b| = 0.5, 0, 2, 0.5 -> mean 0.75
    close(loss::cycle_loss(&a, &b, 10.0).double_value(&[]), 7.5);
    close(loss::identity_loss(&a, &b, 10.0, 0.5).double_value(&[]), 3.75);
}

#[test]
fn network_shapes_and_reference_parameter_names() {
    let cfg = CycleGanConfig { channels: 3, ngf: 4, n_blocks: 6, ndf: 4, n_layers_d: 3 };
    let vs = VarStore::new(Device::Cpu);
    let g = ResnetGenerator::new(vs.root(), cfg.clone()).unwrap();
    let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let y = g.forward(&x).unwrap();
    assert_eq!(y.size(), [2, 3, 32, 32]);
    assert!(y.abs().max().double_value(&[]) <= 1.0);
    let names: Vec<String> = vs.variables().into_keys().collect();
    for n in [
        "model.1.weight",
        "model.4.weight",
        "model.7.bias",
        "model.10.conv_block.1.weight",
        "model.15.conv_block.5.bias",
        "model.16.weight",
        "model.19.weight",
        "model.23.bias",
    ] {
        assert!(names.contains(&n.to_string()), "{n} missing from {names:?}");
    }
    assert_eq!(names.len(), 2 * (3 + 2 * 6 + 2 + 1) as usize);
    // The reference's 70x70 PatchGAN: 256 -> 30x30, 32 -> 2x2.
    assert_eq!(cfg.patch_side(256), 30);
    let vs_d = VarStore::new(Device::Cpu);
    let d = NLayerDiscriminator::new(vs_d.root(), cfg.clone()).unwrap();
    assert_eq!(d.forward(&x).unwrap().size(), [2, 1, 2, 2]);
    let big = Tensor::zeros([1, 3, 256, 256], (Kind::Float, Device::Cpu));
    assert_eq!(d.forward(&big).unwrap().size(), [1, 1, 30, 30]);
    let mut dn: Vec<String> = vs_d.variables().into_keys().collect();
    dn.sort();
    assert_eq!(
        dn,
        [
            "model.0.bias",
            "model.0.weight",
            "model.11.bias",
            "model.11.weight",
            "model.2.bias",
            "model.2.weight",
            "model.5.bias",
            "model.5.weight",
            "model.8.bias",
            "model.8.weight"
        ]
    );
    assert_eq!(vs_d.variables()["model.8.weight"].size(), [32, 16, 4, 4]);
    // Too small for 3 layers; wrong channel count.
    assert!(d.forward(&Tensor::zeros([1, 3, 16, 16], (Kind::Float, Device::Cpu))).is_err());
    assert!(g.forward(&Tensor::zeros([1, 1, 32, 32], (Kind::Float, Device::Cpu))).is_err());
    assert!(g.forward(&Tensor::zeros([1, 3, 30, 30], (Kind::Float, Device::Cpu))).is_err());
}

#[test]
fn lr_is_constant_then_decays_linearly() {
    let run = CycleGanRunConfig::from_preset("cyclegan", [3, 16, 16], 200, "a", "b").unwrap();
    assert_eq!((run.n_steps, run.n_steps_decay), (100, 100));
    close(run.lr_factor(0), 1.0);
    close(run.lr_factor(98), 1.0);
    close(run.lr_factor(99), 1.0 - 0.0 / 101.0);
    close(run.lr_factor(100), 1.0 - 1.0 / 101.0);
    close(run.lr_factor(149), 1.0 - 50.0 / 101.0);
    close(run.lr_factor(199), 1.0 / 101.0);
    close(run.lr_factor(200), 0.0);
    close(run.lr_factor(10_000), 0.0);
}

fn mem(name: &str, shape: [usize; 3]) -> InMemory {
    let n = 4;
    InMemory::new(name, shape, vec![0u8; n * shape.iter().product::<usize>()], None).unwrap()
}

#[test]
fn bad_inputs_are_refused_with_clear_messages() {
    let rgb = mem("rgb", [3, 16, 16]);
    let grey = mem("grey", [1, 16, 16]);
    let big = mem("big", [3, 32, 32]);
    let e = check_domains(&rgb, "rgb", &grey, "grey").unwrap_err().to_string();
    assert!(e.contains("`rgb` has 3 channel") && e.contains("`grey` has 1"), "{e}");
    let e = check_domains(&rgb, "rgb", &big, "big").unwrap_err().to_string();
    assert!(e.contains("3x16x16") && e.contains("3x32x32"), "{e}");
    assert_eq!(check_domains(&rgb, "rgb", &rgb, "rgb").unwrap(), [3, 16, 16]);
    assert_eq!(rgb.shape(), [3, 16, 16]);
    let e = "sideways".parse::<Direction>().unwrap_err().to_string();
    assert!(e.contains("a2b or b2a"), "{e}");
    assert_eq!("b2a".parse::<Direction>().unwrap(), Direction::BToA);
    assert!(CycleGanRunConfig::from_preset("cyclegan", [3, 18, 18], 10, "a", "b").is_err());
    assert!(CycleGanRunConfig::from_preset("pix2pix", [3, 16, 16], 10, "a", "b").is_err());
    assert!(split_batch(&Tensor::zeros([3, 3, 16, 16], (Kind::Float, Device::Cpu))).is_err());
}
