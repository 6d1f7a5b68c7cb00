//! genlab's `DiTModel` against diffusers' `DiTTransformer2DModel` on the same weights: every parameter
//! name and shape of a diffusers state dict (from `reference/gen_dit_refs.py`) matches, and the output
//! agrees within 1e-4 relative L2, at the training size and at a larger one.
use std::path::Path;

use genlab_core::checkpoint::{load_named_into, read_safetensors};
use genlab_diffusion::{Backbone, BackboneConfig, DiTConfig, DiTModel};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// The configuration of gen_dit_refs.py.
fn tiny() -> DiTConfig {
    DiTConfig {
        num_attention_heads: 2,
        attention_head_dim: 8,
        in_channels: 3,
        out_channels: 3,
        num_layers: 2,
        dropout: 0.0,
        attention_bias: true,
        sample_size: [8, 8],
        patch_size: 2,
        num_embeds_ada_norm: 5,
        class_conditional: true,
        norm_eps: 1e-5,
    }
}

fn relative_l2(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).norm().double_value(&[]) / b.norm().double_value(&[])
}

#[test]
fn loads_a_diffusers_state_dict_and_matches_its_output() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/dit_tiny.safetensors");
    let mut all = read_safetensors(&path).unwrap();
    let mut take = |name: &str| {
        let i = all.iter().position(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} not in the fixture"));
        all.remove(i).1
    };
    let sample = take("input.sample");
    let timesteps = take("input.timesteps");
    let labels = take("input.class_labels");
    let expected = take("output.sample");
    let sample_12 = take("input.sample_12");
    let expected_12 = take("output.sample_12");

    let vs = VarStore::new(Device::Cpu);
    let net = DiTModel::new(vs.root(), tiny()).unwrap();
    // Reports every missing, unexpected and mis-shaped name at once.
    load_named_into(&vs.variables(), &all, &path).unwrap();
    assert_eq!(vs.variables().len(), all.len());

    for (x, want) in [(&sample, &expected), (&sample_12, &expected_12)] {
        let out = tch::no_grad(|| net.forward_t(x, &timesteps, Some(&labels), false)).unwrap();
        let rel = relative_l2(&out, want);
        eprintln!("{:?}: relative L2 |genlab - diffusers| = {rel:.2e}", x.size());
        assert!(rel < 1e-4, "relative L2 {rel} at input {:?}", x.size());
    }
}

#[test]
fn a_new_dit_starts_as_the_paper_initialises_it() {
    // adaLN-Zero: every modulation and the output layer start at zero, so the untrained network
    // predicts exactly zero, and the blocks are the identity.
    let vs = VarStore::new(Device::Cpu);
    let net = DiTModel::new(vs.root(), tiny()).unwrap();
    let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let out =
        net.forward_t(&x, &Tensor::from_slice(&[3.0f32, 700.0]), Some(&Tensor::from_slice(&[0i64, 5])), true).unwrap();
    assert_eq!(out.abs().max().double_value(&[]), 0.0);
    let vars = vs.variables();
    let std = |name: &str| vars[name].std(true).double_value(&[]);
    assert!((std("transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight") - 0.02).abs() < 0.01);
    assert_eq!(vars["transformer_blocks.1.norm1.linear.weight"].abs().max().double_value(&[]), 0.0);
    // Xavier-uniform bound sqrt(6 / (16 + 16)) for the attention projections.
    let q = vars["transformer_blocks.0.attn1.to_q.weight"].abs().max().double_value(&[]);
    assert!(q <= (6.0f64 / 32.0).sqrt() && q > 0.2, "to_q max {q}");
}

#[test]
fn bad_inputs_and_configs_are_refused_by_name() {
    let vs = VarStore::new(Device::Cpu);
    let net = DiTModel::new(vs.root(), tiny()).unwrap();
    let t = Tensor::from_slice(&[1.0f32, 2.0]);
    let labels = Tensor::from_slice(&[0i64, 1]);
    let x_odd = Tensor::zeros([2, 3, 9, 8], (Kind::Float, Device::Cpu));
    let e = net.forward_t(&x_odd, &t, Some(&labels), false).unwrap_err().to_string();
    assert!(e.contains("multiples of the patch size 2"), "{e}");
    let x = Tensor::zeros([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let e = net.forward_t(&x, &t, None, false).unwrap_err().to_string();
    assert!(e.contains("class labels are required"), "{e}");
    let e = net.forward_t(&x, &t, Some(&Tensor::from_slice(&[0i64, 6])), false).unwrap_err().to_string();
    assert!(e.contains("0..=5"), "{e}");
    let e = DiTModel::new(vs.root() / "b", DiTConfig { patch_size: 3, ..tiny() }).unwrap_err().to_string();
    assert!(e.contains("patch_size 3"), "{e}");
    let e = DiTModel::new(vs.root() / "c", DiTConfig { out_channels: 4, ..tiny() }).unwrap_err().to_string();
    assert!(e.contains("out_channels"), "{e}");
    let e = DiTConfig::preset("DiT-M/2", [1, 28, 28]).unwrap_err().to_string();
    assert!(e.contains("DiT-XL/2"), "{e}");
    let e = BackboneConfig::preset("dit-xs", [1, 28, 28], None).unwrap_err().to_string();
    assert!(e.contains("unet-small") && e.contains("dit-s"), "{e}");
}

#[test]
fn presets_have_the_papers_sizes_and_learned_sigma_drops_its_channels() {
    let count = |cfg: DiTConfig| {
        let vs = VarStore::new(Device::Cpu);
        DiTModel::new(vs.root(), cfg).unwrap();
        vs.variables().values().map(|v| v.numel()).sum::<usize>()
    };
    // DiT-S/2 on 4x32x32 latents with 1000 classes and learned sigma, as the paper's ImageNet 256 model:
    // 33.0 M parameters in its table 4 (diffusers builds every block its own embeddings: more here).
    let s2 = DiTConfig::preset("DiT-S/2", [4, 32, 32]).unwrap().with_classes(Some(1000));
    assert_eq!((s2.inner_dim(), s2.num_layers, s2.num_attention_heads, s2.patch_size), (384, 12, 6, 2));
    let xl = DiTConfig::preset("DiT-XL/2", [4, 32, 32]).unwrap();
    assert_eq!((xl.inner_dim(), xl.num_layers, xl.num_attention_heads), (1152, 28, 16));
    let small = DiTConfig::preset("dit-s", [1, 28, 28]).unwrap();
    let n = count(small.clone());
    assert!((2_000_000..8_000_000).contains(&n), "dit-s has {n} parameters");

    let sigma = DiTConfig { out_channels: 6, ..tiny() };
    let vs = VarStore::new(Device::Cpu);
    let net = Backbone::new(vs.root(), &BackboneConfig::DiT(sigma)).unwrap();
    let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let out = net.forward_t(&x, &Tensor::from_slice(&[1.0f32]), Some(&Tensor::from_slice(&[0i64, 1])), false).unwrap();
    assert_eq!(out.size(), [2, 3, 8, 8]);
}
