//! genlab's CLIP text model against transformers' `CLIPTextModel` on the tiny pipelines of
//! `reference/sd_tiny.py` (quick_gelu SD 1.x style, gelu SD 2.x style): loaded from the diffusers folders and
//! from the original single-file keys, `last_hidden_state` and diffusers' `clip_skip=1` agree to 1e-4; and the
//! errors a user meets (missing file, wrong tensors, unsupported activation, too many tokens) say what is wrong.
#[path = "common/sd_reference.rs"]
mod sd_reference;

use std::path::Path;

use genlab_core::checkpoint::read_safetensors;
use genlab_diffusion::clip::text_model::{from_original_checkpoint, is_open_clip};
use genlab_diffusion::clip::{ClipTextConfig, ClipTextModel};
use genlab_diffusion::DiffusionError;
use sd_reference as r;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn check_outputs(model: &ClipTextModel, prefix: &str, what: &str) {
    let ids = r::io(&format!("{prefix}.text.input_ids"));
    assert_eq!(ids.size(), [2, 77]);
    let out = model.forward(&ids).unwrap();
    r::assert_within(
        &format!("{what}: last_hidden_state"),
        &out,
        &r::io(&format!("{prefix}.text.last_hidden_state")),
        1e-6,
    );
    let skip = model.forward_clip_skip(&ids, 1).unwrap();
    r::assert_within(&format!("{what}: clip_skip 1"), &skip, &r::io(&format!("{prefix}.text.clip_skip_1")), 1e-6);
    // clip_skip 0 is the plain forward; the penultimate layer differs from the last.
    assert!(model.forward_clip_skip(&ids, 0).unwrap().equal(&out));
    assert!(r::rel_l2(&skip, &out) > 1e-2, "{what}: clip_skip 1 gives the last layer's output");
}

#[test]
fn diffusers_folders_match_transformers() {
    for (prefix, act) in [("pipeline", "quick_gelu"), ("pipeline_v2", "gelu")] {
        let dir = r::dir().join(prefix).join("text_encoder");
        let (model, _vs) = ClipTextModel::load(&dir, Device::Cpu).unwrap();
        assert_eq!(model.config().hidden_act, act);
        assert_eq!(model.config().num_hidden_layers, 3);
        check_outputs(&model, prefix, &format!("{prefix}/text_encoder"));
    }
}

#[test]
fn single_file_checkpoints_match_transformers() {
    for (file, prefix, open_clip) in
        [("single_file.safetensors", "pipeline", false), ("single_file_v2.safetensors", "pipeline_v2", true)]
    {
        let path = r::dir().join(file);
        let all = read_safetensors(&path).unwrap();
        assert_eq!(is_open_clip(&all), open_clip, "{file}");
        let cfg = ClipTextConfig::from_json_file(&r::dir().join(prefix).join("text_encoder/config.json")).unwrap();
        let text = from_original_checkpoint(&cfg, &all);
        // Only text-encoder tensors come out, all renamed; v2's fourth (unused) resblock is dropped.
        assert!(text.iter().all(|(n, _)| n.starts_with("text_model.")), "{file}");
        assert!(!text.iter().any(|(n, _)| n.contains("layers.3.")), "{file}: resblock 3 kept");
        assert_eq!(text.len(), 4 + 16 * 3, "{file}");
        let (model, _vs) = ClipTextModel::load_named(&cfg, text, &path, Device::Cpu).unwrap();
        check_outputs(&model, prefix, file);
    }
}

#[test]
fn sharded_weights_load() {
    let src = r::dir().join("pipeline/text_encoder");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let all = read_safetensors(&src.join("model.safetensors")).unwrap();
    let (a, b) = all.split_at(all.len() / 2);
    let mut map = serde_json::Map::new();
    for (part, file) in [(a, "model-00001-of-00002.safetensors"), (b, "model-00002-of-00002.safetensors")] {
        Tensor::write_safetensors(part, tmp.path().join(file)).unwrap();
        for (n, _) in part {
            map.insert(n.clone(), file.into());
        }
    }
    let index = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": map });
    std::fs::write(tmp.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let (model, _vs) = ClipTextModel::load(tmp.path(), Device::Cpu).unwrap();
    check_outputs(&model, "pipeline", "sharded pipeline/text_encoder");
}

// The text_encoder/config.json files of the presets' sources, as published.
const SD15_CONFIG: &str = r#"{
  "_name_or_path": "openai/clip-vit-large-patch14", "architectures": ["CLIPTextModel"], "attention_dropout": 0.0,
  "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768,
  "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 12,
  "num_hidden_layers": 12, "pad_token_id": 1, "projection_dim": 768, "torch_dtype": "float32",
  "transformers_version": "4.22.0.dev0", "vocab_size": 49408
}"#;
const SD21_CONFIG: &str = r#"{
  "_name_or_path": "hf-models/stable-diffusion-v2-768x768/text_encoder", "architectures": ["CLIPTextModel"],
  "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2, "hidden_act": "gelu",
  "hidden_size": 1024, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 4096,
  "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "model_type": "clip_text_model",
  "num_attention_heads": 16, "num_hidden_layers": 23, "pad_token_id": 1, "projection_dim": 512,
  "torch_dtype": "float32", "transformers_version": "4.25.0.dev0", "vocab_size": 49408
}"#;

#[test]
fn presets_match_published_configs_and_roundtrip() {
    let tmp = tempfile::tempdir().unwrap();
    for (preset, published) in [(ClipTextConfig::sd15(), SD15_CONFIG), (ClipTextConfig::sd21(), SD21_CONFIG)] {
        let path = tmp.path().join("config.json");
        std::fs::write(&path, published).unwrap();
        assert_eq!(ClipTextConfig::from_json_file(&path).unwrap(), preset);
        let json = serde_json::to_string(&preset).unwrap();
        assert_eq!(serde_json::from_str::<ClipTextConfig>(&json).unwrap(), preset);
        preset.validate().unwrap();
    }
    // Missing keys take transformers' CLIPTextConfig() defaults.
    let partial: ClipTextConfig = serde_json::from_str(r#"{"hidden_size": 64, "num_attention_heads": 4}"#).unwrap();
    assert_eq!(partial, ClipTextConfig { hidden_size: 64, num_attention_heads: 4, ..Default::default() });
    assert_eq!(
        (partial.intermediate_size, partial.num_hidden_layers, partial.hidden_act.as_str()),
        (2048, 12, "quick_gelu")
    );

    // SD 1.x's structure: openai/clip-vit-large-patch14's text tower has 123,060,480 parameters.
    let start = std::time::Instant::now();
    let vs = VarStore::new(Device::Cpu);
    let _model = ClipTextModel::new(vs.root(), &ClipTextConfig::sd15()).unwrap();
    let count: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    assert_eq!(count, 123_060_480);
    assert_eq!(vs.variables().len(), 4 + 16 * 12);
    eprintln!("built the SD 1.x text model in {:.2?}", start.elapsed());
}

fn write_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let src = r::dir().join("pipeline/text_encoder/config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
}

#[test]
fn missing_weights_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_config(tmp.path(), |_| {});
    let err = ClipTextModel::load(tmp.path(), Device::Cpu).err().expect("loaded without weights");
    assert!(matches!(err, DiffusionError::Model { .. }), "{err:?}");
    assert!(err.to_string().contains(&tmp.path().join("model.safetensors").display().to_string()), "{err}");
    let err = ClipTextModel::load(&tmp.path().join("nowhere"), Device::Cpu).err().expect("loaded from nowhere");
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn wrong_tensors_are_all_reported() {
    let tmp = tempfile::tempdir().unwrap();
    write_config(tmp.path(), |_| {});
    let mut all = read_safetensors(&r::dir().join("pipeline/text_encoder/model.safetensors")).unwrap();
    all.retain(|(n, _)| n != "encoder.layers.1.mlp.fc2.bias");
    for (n, t) in all.iter_mut() {
        if n == "final_layer_norm.weight" {
            *t = Tensor::zeros([33], (Kind::Float, Device::Cpu));
        }
    }
    Tensor::write_safetensors(&all, tmp.path().join("model.safetensors")).unwrap();
    let err = ClipTextModel::load(tmp.path(), Device::Cpu).err().expect("loaded bad weights").to_string();
    eprintln!("{err}");
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(err.contains("text_model.encoder.layers.1.mlp.fc2.bias"), "{err}");
    assert!(err.contains("text_model.final_layer_norm.weight: model expects [32], file has [33]"), "{err}");

    // An OpenCLIP fused projection of the wrong size is reported, not mis-split.
    let path = r::dir().join("single_file_v2.safetensors");
    let cfg = ClipTextConfig::from_json_file(&r::dir().join("pipeline_v2/text_encoder/config.json")).unwrap();
    let mut v2 = read_safetensors(&path).unwrap();
    for (n, t) in v2.iter_mut() {
        if n == "cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight" {
            *t = t.narrow(0, 0, 95);
        }
    }
    let err = ClipTextModel::load_named(&cfg, from_original_checkpoint(&cfg, &v2), &path, Device::Cpu)
        .err()
        .expect("loaded a truncated in_proj_weight")
        .to_string();
    assert!(err.contains("text_model.encoder.layers.2.self_attn.in_proj_weight"), "{err}");
    assert!(err.contains("text_model.encoder.layers.2.self_attn.q_proj.weight"), "{err}");
}

#[test]
fn unsupported_activation_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_config(tmp.path(), |c| c["hidden_act"] = "gelu_new".into());
    let err = ClipTextModel::load(tmp.path(), Device::Cpu).err().expect("accepted gelu_new");
    assert!(matches!(err, DiffusionError::Unsupported(_)), "{err:?}");
    assert!(err.to_string().contains("gelu_new"), "{err}");
    let cfg = ClipTextConfig { hidden_act: "relu".into(), ..ClipTextConfig::default() };
    assert!(matches!(cfg.validate(), Err(DiffusionError::Unsupported(m)) if m.contains("relu")));
    let cfg = ClipTextConfig { hidden_size: 30, num_attention_heads: 4, ..ClipTextConfig::default() };
    assert!(cfg.validate().unwrap_err().to_string().contains("divisible"));
}

#[test]
fn bad_input_ids_are_errors() {
    let cfg = ClipTextConfig {
        hidden_size: 8,
        intermediate_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        vocab_size: 100,
        ..Default::default()
    };
    let vs = VarStore::new(Device::Cpu);
    let model = ClipTextModel::new(vs.root(), &cfg).unwrap();
    let ids = |shape: &[i64], v: i64| Tensor::full(shape, v, (Kind::Int64, Device::Cpu));
    assert_eq!(model.forward(&ids(&[2, 77], 5)).unwrap().size(), [2, 77, 8]);
    assert_eq!(model.forward(&ids(&[1, 3], 5)).unwrap().size(), [1, 3, 8]);
    let too_long = model.forward(&ids(&[1, 78], 5)).unwrap_err().to_string();
    assert!(too_long.contains("78") && too_long.contains("77"), "{too_long}");
    assert!(model.forward(&ids(&[1, 0], 5)).is_err());
    assert!(model.forward(&ids(&[77], 5)).is_err());
    assert!(model.forward(&ids(&[1, 5], 100)).unwrap_err().to_string().contains("100"));
    assert!(model.forward(&ids(&[1, 5], -1)).is_err());
    assert!(model.forward(&Tensor::zeros([1, 5], (Kind::Float, Device::Cpu))).is_err());
    assert!(model.forward_clip_skip(&ids(&[1, 5], 5), 2).is_ok());
    assert!(model.forward_clip_skip(&ids(&[1, 5], 5), 3).unwrap_err().to_string().contains("clip_skip 3"));
}
