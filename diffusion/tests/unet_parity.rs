//! genlab's `UNet2DModel` against diffusers' on the same weights: every parameter name and shape of a
//! diffusers state dict (from `reference/gen_unet_refs.py`) matches, and the output agrees to 1e-4.
use std::path::Path;

use genlab_core::checkpoint::{load_named_into, read_safetensors};
use genlab_diffusion::{UNet2DConfig, UNet2DModel};
use tch::{nn::VarStore, Device};

#[test]
fn loads_a_diffusers_state_dict_and_matches_its_output() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/unet_tiny.safetensors");
    let mut all = read_safetensors(&path).unwrap();
    let take = |all: &mut Vec<(String, tch::Tensor)>, name: &str| {
        let i = all.iter().position(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} not in the fixture"));
        all.remove(i).1
    };
    let sample = take(&mut all, "input.sample");
    let timesteps = take(&mut all, "input.timesteps");
    let labels = take(&mut all, "input.class_labels");
    let expected = take(&mut all, "output.sample");

    // The configuration of gen_unet_refs.py.
    let cfg = UNet2DConfig {
        sample_size: [8, 8],
        in_channels: 3,
        out_channels: 3,
        block_out_channels: vec![8, 16, 16],
        layers_per_block: 2,
        attention: vec![false, true, true],
        attention_head_dim: Some(8),
        norm_num_groups: 4,
        norm_eps: 1e-5,
        dropout: 0.0,
        num_class_embeds: Some(5),
        flip_sin_to_cos: true,
        freq_shift: 0.0,
    };
    let vs = VarStore::new(Device::Cpu);
    let net = UNet2DModel::new(vs.root(), cfg).unwrap();
    // Reports every missing, unexpected and mis-shaped name at once.
    load_named_into(&vs.variables(), &all, &path).unwrap();
    assert_eq!(vs.variables().len(), all.len());

    let out = tch::no_grad(|| net.forward_t(&sample, &timesteps, Some(&labels), false)).unwrap();
    let diff = (&out - &expected).abs().max().double_value(&[]);
    eprintln!("max |genlab - diffusers| = {diff:.2e}");
    assert!(out.allclose(&expected, 1e-4, 1e-4, false), "max abs difference {diff}");
}
