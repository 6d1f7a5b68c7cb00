//! `UNet2DConditionModel` against diffusers 0.42.1 on the tiny SD 1.x- and 2.x-shaped models of
//! `tests/reference/sd_tiny.py`, and its errors on bad input.
#[path = "common/sd_reference.rs"]
mod sd_reference;

use genlab_diffusion::sd::unet::{UNet2DConditionConfig, UNet2DConditionModel, WEIGHTS_FILE, WEIGHTS_FILE_FP16};
use genlab_diffusion::DiffusionError;
use tch::{nn, Device, Kind, Tensor};

fn load(name: &str) -> (UNet2DConditionModel, nn::VarStore) {
    UNet2DConditionModel::load(&sd_reference::dir().join(name).join("unet"), Device::Cpu, Kind::Float).unwrap()
}

fn reference_output(model: &UNet2DConditionModel, prefix: &str) -> (Tensor, Tensor) {
    let io = |n: &str| sd_reference::io(&format!("{prefix}.unet.{n}"));
    let out = tch::no_grad(|| model.forward(&io("sample"), &io("timestep"), &io("encoder_hidden_states"))).unwrap();
    (out, io("out"))
}

#[test]
fn sd1_and_sd2_unets_match_diffusers() {
    for name in ["pipeline", "pipeline_v2"] {
        let (model, _vs) = load(name);
        let (out, want) = reference_output(&model, name);
        sd_reference::assert_within(&format!("{name} UNet2DConditionModel"), &out, &want, 1e-6);
    }
    let (model, _) = load("pipeline_v2");
    assert!(model.cfg.use_linear_projection && model.cfg.upcast_attention);
}

#[test]
fn sliced_attention_equals_fused_attention() {
    let (mut model, _vs) = load("pipeline");
    let (fused, _) = reference_output(&model, "pipeline");
    // 2 samples x 4 heads = 8 rows: slices of 3 leave a short last one.
    for slice in [1, 3, 8, 100] {
        model.set_attention_slice(Some(slice)).unwrap();
        let (sliced, _) = reference_output(&model, "pipeline");
        let diff = (&sliced - &fused).abs().max().double_value(&[]);
        eprintln!("slice {slice}: max |sliced - fused| = {diff:e}");
        assert!(sliced.allclose(&fused, 1e-5, 1e-5, false), "slice {slice}: max difference {diff}");
    }
    assert!(model.set_attention_slice(Some(0)).is_err());
    model.set_attention_slice(None).unwrap();
    assert_eq!(model.attention_slice(), None);
}

#[test]
fn odd_latent_sizes_run() {
    let (model, _vs) = load("pipeline_v2");
    let context = sd_reference::io("pipeline_v2.unet.encoder_hidden_states");
    for (h, w) in [(15, 15), (9, 20), (1, 1)] {
        let x = Tensor::randn([2, 4, h, w], (Kind::Float, Device::Cpu));
        let y = tch::no_grad(|| model.forward(&x, &Tensor::from(500i64), &context)).unwrap();
        assert_eq!(y.size(), [2, 4, h, w]);
    }
    // Any numeric timestep kind, one per sample.
    let x = Tensor::randn([2, 4, 16, 16], (Kind::Float, Device::Cpu));
    let a = tch::no_grad(|| model.forward(&x, &Tensor::from_slice(&[10i64, 731]), &context)).unwrap();
    let b = tch::no_grad(|| model.forward(&x, &Tensor::from_slice(&[10.0f32, 731.0]), &context)).unwrap();
    assert!(a.allclose(&b, 1e-6, 1e-6, false));
}

fn count(cfg: &UNet2DConditionConfig) -> i64 {
    let vs = nn::VarStore::new(Device::Cpu);
    UNet2DConditionModel::new(vs.root(), cfg).unwrap();
    vs.trainable_variables().iter().map(Tensor::numel).sum::<usize>() as i64
}

#[test]
fn presets_have_the_real_models_parameter_counts() {
    // diffusers' UNet2DConditionModel.from_pretrained(...).num_parameters() for the two repositories.
    assert_eq!(count(&UNet2DConditionConfig::sd15()), 859_520_964);
    assert_eq!(count(&UNet2DConditionConfig::sd21()), 865_910_724);
}

#[test]
fn bad_inputs_name_expected_and_found() {
    let (model, _vs) = load("pipeline");
    let x = Tensor::zeros([2, 4, 8, 8], (Kind::Float, Device::Cpu));
    let context = Tensor::zeros([2, 77, 32], (Kind::Float, Device::Cpu));
    let t = Tensor::from(1i64);

    let e = model.forward(&Tensor::zeros([2, 3, 8, 8], (Kind::Float, Device::Cpu)), &t, &context).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, DiffusionError::Shape(_)) && msg.contains("[2, 3, 8, 8]") && msg.contains("4 channels"),
        "{msg}"
    );

    let e = model.forward(&x, &t, &Tensor::zeros([2, 77, 768], (Kind::Float, Device::Cpu))).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("[2, 77, 768]") && msg.contains("cross_attention_dim 32"), "{msg}");

    let e = model.forward(&x, &Tensor::from_slice(&[1i64, 2, 3]), &context).unwrap_err().to_string();
    assert!(e.contains("3 timesteps") && e.contains("batch of 2"), "{e}");

    let e = model.forward(&x.to_kind(Kind::Double), &t, &context).unwrap_err().to_string();
    assert!(e.contains("Double") && e.contains("Float"), "{e}");
}

fn copy_unet(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let src = sd_reference::dir().join(name).join("unet");
    for f in ["config.json", WEIGHTS_FILE] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    tmp
}

#[test]
fn a_missing_weights_file_is_named() {
    let tmp = copy_unet("pipeline");
    std::fs::remove_file(tmp.path().join(WEIGHTS_FILE)).unwrap();
    let e = UNet2DConditionModel::load(tmp.path(), Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(e.contains(&tmp.path().join(WEIGHTS_FILE).display().to_string()) && e.contains("not found"), "{e}");
    let tmp = copy_unet("pipeline");
    std::fs::remove_file(tmp.path().join("config.json")).unwrap();
    let e = UNet2DConditionModel::load(tmp.path(), Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn a_removed_and_a_misshaped_key_are_reported_together() {
    let tmp = copy_unet("pipeline");
    let path = tmp.path().join(WEIGHTS_FILE);
    let mut named = Tensor::read_safetensors(&path).unwrap();
    let removed = "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight";
    let misshaped = "mid_block.attentions.0.proj_in.weight";
    named.retain(|(n, _)| n != removed);
    for (n, t) in named.iter_mut() {
        if n == misshaped {
            *t = Tensor::zeros([64, 63, 1, 1], (Kind::Float, Device::Cpu));
        }
    }
    Tensor::write_safetensors(&named, &path).unwrap();
    let e = UNet2DConditionModel::load(tmp.path(), Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(e.contains(removed) && e.contains(misshaped) && e.contains("[64, 63, 1, 1]"), "{e}");
    assert!(e.contains(&path.display().to_string()), "{e}");
}

#[test]
fn fp16_and_sharded_weights_load() {
    let (reference, _vs) = load("pipeline");
    let (want, _) = reference_output(&reference, "pipeline");
    let tmp = copy_unet("pipeline");
    let path = tmp.path().join(WEIGHTS_FILE);
    let named = Tensor::read_safetensors(&path).unwrap();
    std::fs::remove_file(&path).unwrap();

    // The fp16 variant, converted back to f32 on load.
    let half: Vec<_> = named.iter().map(|(n, t)| (n.clone(), t.to_kind(Kind::Half))).collect();
    Tensor::write_safetensors(&half, tmp.path().join(WEIGHTS_FILE_FP16)).unwrap();
    let (model, vs) = UNet2DConditionModel::load(tmp.path(), Device::Cpu, Kind::Float).unwrap();
    assert!(vs.variables().values().all(|t| t.kind() == Kind::Float));
    let (out, _) = reference_output(&model, "pipeline");
    let rel = sd_reference::rel_l2(&out, &want);
    eprintln!("fp16 weights: relative L2 error {rel:e}");
    assert!(rel < 1e-2, "{rel}");
    std::fs::remove_file(tmp.path().join(WEIGHTS_FILE_FP16)).unwrap();

    // Two shards and an index, as `save_pretrained(max_shard_size=...)` writes them.
    let (a, b) = named.split_at(named.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("diffusion_pytorch_model-00001-of-00002.safetensors", a),
        ("diffusion_pytorch_model-00002-of-00002.safetensors", b),
    ] {
        Tensor::write_safetensors(part, tmp.path().join(file)).unwrap();
        for (n, _) in part {
            map.insert(n.clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(tmp.path().join(format!("{WEIGHTS_FILE}.index.json")), index.to_string()).unwrap();
    let (model, _vs) = UNet2DConditionModel::load(tmp.path(), Device::Cpu, Kind::Float).unwrap();
    let (out, _) = reference_output(&model, "pipeline");
    sd_reference::assert_close("sharded UNet", &out, &want);
}

#[test]
fn unsupported_config_values_are_named() {
    let tmp = copy_unet("pipeline");
    let path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (key, value, want) in [
        ("class_embed_type", serde_json::json!("timestep"), "class_embed_type = \"timestep\""),
        ("resnet_time_scale_shift", serde_json::json!("scale_shift"), "resnet_time_scale_shift = \"scale_shift\""),
        ("addition_embed_type", serde_json::json!("text_image"), "addition_embed_type = \"text_image\""),
        ("time_cond_proj_dim", serde_json::json!(256), "time_cond_proj_dim = 256"),
        (
            "down_block_types",
            serde_json::json!(["SimpleCrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"]),
            "SimpleCrossAttnDownBlock2D",
        ),
    ] {
        let mut bad = cfg.clone();
        bad[key] = value;
        std::fs::write(&path, bad.to_string()).unwrap();
        let e = UNet2DConditionModel::load(tmp.path(), Device::Cpu, Kind::Float).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, DiffusionError::Unsupported(_)) && msg.contains(want) && msg.contains("config.json"),
            "{msg}"
        );
    }
    // null mid block: no mid_block.* parameters, so the reference file has 'unexpected' keys.
    cfg["mid_block_type"] = serde_json::Value::Null;
    std::fs::write(&path, cfg.to_string()).unwrap();
    let e = UNet2DConditionModel::load(tmp.path(), Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(e.contains("unexpected") && e.contains("mid_block.resnets.0.conv1.weight"), "{e}");
}

#[test]
fn presets_match_the_config_files_they_cite() {
    // The published configs' architecture keys (copied from the cited config.json files).
    let sd15 = serde_json::json!({
        "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false, "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
        "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    });
    assert_eq!(UNet2DConditionConfig::from_json_value(sd15.clone()).unwrap(), UNet2DConditionConfig::sd15());
    let mut sd21 = sd15;
    for (k, v) in [
        ("attention_head_dim", serde_json::json!([5, 10, 20, 20])),
        ("cross_attention_dim", serde_json::json!(1024)),
        ("dual_cross_attention", serde_json::json!(false)),
        ("num_class_embeds", serde_json::Value::Null),
        ("only_cross_attention", serde_json::json!(false)),
        ("resnet_time_scale_shift", serde_json::json!("default")),
        ("sample_size", serde_json::json!(96)),
        ("upcast_attention", serde_json::json!(true)),
        ("use_linear_projection", serde_json::json!(true)),
    ] {
        sd21[k] = v;
    }
    assert_eq!(UNet2DConditionConfig::from_json_value(sd21).unwrap(), UNet2DConditionConfig::sd21());
}

#[test]
fn half_precision_weights_run_in_their_kind() {
    // bf16 on the CPU stands in for f16 on a GPU: weights converted on load, the timestep embedding cast,
    // and upcast attention in the sliced path (SD 2.x).
    let dir = sd_reference::dir().join("pipeline_v2").join("unet");
    let (mut model, vs) = UNet2DConditionModel::load(&dir, Device::Cpu, Kind::BFloat16).unwrap();
    assert!(vs.variables().values().all(|t| t.kind() == Kind::BFloat16));
    let io = |n: &str| sd_reference::io(&format!("pipeline_v2.unet.{n}"));
    let (x, t, context) = (io("sample").to_kind(Kind::BFloat16), io("timestep"), io("encoder_hidden_states"));
    let context = context.to_kind(Kind::BFloat16);
    for slice in [None, Some(3)] {
        model.set_attention_slice(slice).unwrap();
        let out = tch::no_grad(|| model.forward(&x, &t, &context)).unwrap();
        assert_eq!(out.kind(), Kind::BFloat16);
        let rel = sd_reference::rel_l2(&out, &io("out"));
        eprintln!("bf16, slice {slice:?}: relative L2 error {rel:e}");
        assert!(rel < 5e-2, "slice {slice:?}: {rel}");
    }
}
