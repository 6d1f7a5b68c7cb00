//! Loading Stable-Diffusion-compatible models: a diffusers folder (`model_index.json` with `unet/`, `vae/`,
//! `text_encoder/`, `tokenizer/`, `scheduler/`), or one original single-file checkpoint (`.safetensors`)
//! with the structure taken from a diffusers folder's config files or from a preset.
//!
//! Every component's structure comes from its own `config.json`, so fine-tuned and small models load as well
//! as the presets. Weights are read from `<stem>.safetensors`, a sharded `<stem>.safetensors.index.json`, or
//! the `<stem>.fp16.safetensors` variant; every missing, unexpected and mis-shaped key of all components is
//! reported in one error.
use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Deserialize;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use genlab_core::checkpoint::{copy_named_into, read_safetensors};
use genlab_vae::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};

use crate::clip::text_model::{self, ClipTextConfig, ClipTextModel};
use crate::clip::ClipTokenizer;
use crate::error::{model_err, DiffusionError, Result};
use crate::schedule::ScheduleConfig;
use crate::scheduler::SchedulerKind;
use crate::sd::embedding::EmbeddingReport;
use crate::sd::lora::LoraReport;
use crate::sd::single_file;
use crate::sd::unet::{UNet2DConditionConfig, UNet2DConditionModel};
pub use crate::weights::read_weights;

/// Fill several components at once; the error lists every component's problems.
fn fill_all(path: &Path, parts: &[(&str, &VarStore, Vec<(String, Tensor)>)]) -> Result<()> {
    let mut problems = String::new();
    for (name, vs, found) in parts {
        if let Err(r) = copy_named_into(&vs.variables(), found) {
            problems.push_str(&format!("\n {name}:\n{r}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(model_err(path, format!("the weights do not match the model:{problems}")))
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| model_err(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| model_err(path, format!("not a valid config: {e}")))
}

/// The structure of a Stable-Diffusion-compatible model: each component's config.
#[derive(Debug, Clone)]
pub struct SdConfig {
    pub text_encoder: ClipTextConfig,
    /// SDXL's second text encoder (`text_encoder_2/`, with a projection); `None` for SD 1.x and 2.x.
    pub text_encoder_2: Option<ClipTextConfig>,
    /// SDXL: with no negative prompt, guide away from zero embeddings instead of those of "" (diffusers'
    /// `force_zeros_for_empty_prompt`, from model_index.json).
    pub force_zeros_for_empty_prompt: bool,
    /// A preset's padding id for the standard CLIP vocabulary (SD 2.x pads with "!", id 0); `None` pads with
    /// the end token, or, for a diffusers folder, as its own `tokenizer/` says.
    pub pad_token_id: Option<i64>,
    pub unet: UNet2DConditionConfig,
    pub vae: AutoencoderKLConfig,
    pub schedule: ScheduleConfig,
    /// The scheduler the model was published with, when genlab has it.
    pub scheduler: Option<SchedulerKind>,
}

/// A preset's structure: `sd15` or `sd21`, with the published configs of each component.
impl SdConfig {
    pub fn sd15() -> Self {
        SdConfig {
            text_encoder: ClipTextConfig::sd15(),
            text_encoder_2: None,
            force_zeros_for_empty_prompt: false,
            pad_token_id: None,
            unet: UNet2DConditionConfig::sd15(),
            vae: AutoencoderKLConfig::sd15(),
            schedule: ScheduleConfig::stable_diffusion_v1(),
            scheduler: None,
        }
    }

    /// Stable Diffusion 2.1 (768 px, v-prediction); its autoencoder is SD 1.5's.
    pub fn sd21() -> Self {
        SdConfig {
            text_encoder: ClipTextConfig::sd21(),
            text_encoder_2: None,
            force_zeros_for_empty_prompt: false,
            // stabilityai/stable-diffusion-2-1 tokenizer/special_tokens_map.json: "pad_token": "!".
            pad_token_id: Some(0),
            unet: UNet2DConditionConfig::sd21(),
            vae: AutoencoderKLConfig::sd15(),
            schedule: ScheduleConfig::stable_diffusion_v2(),
            scheduler: None,
        }
    }

    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "sd15" | "sd1.5" | "v1-5" => Ok(Self::sd15()),
            "sd21" | "sd2.1" | "v2-1" => Ok(Self::sd21()),
            _ => Err(DiffusionError::UnknownName {
                what: "Stable Diffusion preset",
                found: name.to_string(),
                expected: "sd15, sd21".into(),
            }),
        }
    }

    /// Read every component's config from a diffusers folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model_index.json");
        if !index.is_file() {
            return Err(model_err(
                &index,
                "file not found: a diffusers model folder has model_index.json, unet/, vae/, text_encoder/, tokenizer/ and scheduler/",
            ));
        }
        let model_index: serde_json::Value = read_json(&index)?;
        let text_encoder = ClipTextConfig::from_json_file(&dir.join("text_encoder/config.json"))?;
        let te2 = dir.join("text_encoder_2/config.json");
        let text_encoder_2 = if te2.is_file() { Some(ClipTextConfig::from_json_file(&te2)?) } else { None };
        let force_zeros_for_empty_prompt = model_index["force_zeros_for_empty_prompt"].as_bool().unwrap_or(false);
        let unet = UNet2DConditionConfig::from_json_file(&dir.join("unet/config.json"))?;
        let vae = AutoencoderKLConfig::from_json_file(&dir.join("vae/config.json"))?;
        let sched_path = dir.join("scheduler/scheduler_config.json");
        let schedule: ScheduleConfig = read_json(&sched_path)?;
        schedule.validate().map_err(|e| model_err(&sched_path, e.to_string()))?;
        #[derive(Deserialize)]
        struct Class {
            #[serde(rename = "_class_name", default)]
            class: String,
        }
        let class: Class = read_json(&sched_path)?;
        Ok(SdConfig {
            text_encoder,
            text_encoder_2,
            force_zeros_for_empty_prompt,
            pad_token_id: None,
            unet,
            vae,
            schedule,
            scheduler: scheduler_for_class(&class.class),
        })
    }
}

/// genlab's scheduler for a diffusers scheduler class name, where genlab has it.
pub fn scheduler_for_class(class: &str) -> Option<SchedulerKind> {
    Some(match class {
        "DDIMScheduler" => SchedulerKind::Ddim,
        "DDPMScheduler" => SchedulerKind::Ddpm,
        "DPMSolverMultistepScheduler" => SchedulerKind::DpmPp2m,
        "EulerDiscreteScheduler" => SchedulerKind::Euler,
        "EulerAncestralDiscreteScheduler" => SchedulerKind::EulerAncestral,
        "HeunDiscreteScheduler" => SchedulerKind::Heun,
        _ => return None,
    })
}

/// A loaded Stable-Diffusion-compatible model: tokenizer, text encoder, UNet, autoencoder and schedule.
pub struct StableDiffusion {
    pub config: SdConfig,
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    /// SDXL's second tokenizer and text encoder.
    pub tokenizer_2: Option<ClipTokenizer>,
    pub text_encoder_2: Option<ClipTextModel>,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    text_vs: VarStore,
    text2_vs: VarStore,
    unet_vs: VarStore,
    vae_vs: VarStore,
    /// The kinds of the UNet's (and text encoders') and of the autoencoder's weights, set by `set_kind`.
    kind: Kind,
    vae_kind: Kind,
    /// The LoRA files attached, in order.
    pub(crate) loras: Vec<LoraReport>,
    /// The textual-inversion embeddings loaded, in order.
    pub(crate) embeddings: Vec<EmbeddingReport>,
}

impl std::fmt::Debug for StableDiffusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableDiffusion").field("config", &self.config).finish_non_exhaustive()
    }
}

impl StableDiffusion {
    fn build(
        config: SdConfig,
        tokenizer: ClipTokenizer,
        tokenizer_2: Option<ClipTokenizer>,
        device: Device,
    ) -> Result<Self> {
        let text_vs = VarStore::new(device);
        let text2_vs = VarStore::new(device);
        let unet_vs = VarStore::new(device);
        let vae_vs = VarStore::new(device);
        // The initial weights come from libtorch's generator: keep them from taking a seeded run's draws.
        let (text_encoder, text_encoder_2, unet, vae) = genlab_core::seed::with_generator_lock(|| -> Result<_> {
            Ok((
                ClipTextModel::new(text_vs.root(), &config.text_encoder)?,
                config.text_encoder_2.as_ref().map(|c| ClipTextModel::new(text2_vs.root(), c)).transpose()?,
                UNet2DConditionModel::new(unet_vs.root(), &config.unet)?,
                AutoencoderKL::new(vae_vs.root(), config.vae.clone())?,
            ))
        })?;
        if text_encoder_2.is_some() != tokenizer_2.is_some() {
            return Err(DiffusionError::Config(
                "a second text encoder needs a second tokenizer (SDXL's tokenizer_2/)".into(),
            ));
        }
        if unet.takes_added_conditioning() && text_encoder_2.is_none() {
            return Err(DiffusionError::Unsupported(
                "this UNet takes SDXL's added conditioning, which comes from a second text encoder (text_encoder_2/)"
                    .into(),
            ));
        }
        Ok(StableDiffusion {
            config,
            tokenizer,
            text_encoder,
            tokenizer_2,
            text_encoder_2,
            unet,
            vae,
            text_vs,
            text2_vs,
            unet_vs,
            vae_vs,
            kind: Kind::Float,
            vae_kind: Kind::Float,
            loras: Vec::new(),
            embeddings: Vec::new(),
        })
    }

    /// Load a diffusers folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`).
    pub fn from_dir(dir: &Path, device: Device) -> Result<Self> {
        let config = SdConfig::from_dir(dir)?;
        let tokenizer = ClipTokenizer::from_dir(&dir.join("tokenizer"))?;
        let tokenizer_2 = match config.text_encoder_2 {
            Some(_) => Some(ClipTokenizer::from_dir(&dir.join("tokenizer_2"))?),
            None => None,
        };
        let sd = Self::build(config, tokenizer, tokenizer_2, device)?;
        let (text, _) = read_weights(&dir.join("text_encoder"), "model")?;
        let (unet, _) = read_weights(&dir.join("unet"), "diffusion_pytorch_model")?;
        let (vae, _) = read_weights(&dir.join("vae"), "diffusion_pytorch_model")?;
        let mut parts = vec![
            ("text_encoder", &sd.text_vs, text_model::normalize_names(text)),
            ("unet", &sd.unet_vs, unet),
            ("vae", &sd.vae_vs, vae),
        ];
        if sd.text_encoder_2.is_some() {
            let (text2, _) = read_weights(&dir.join("text_encoder_2"), "model")?;
            parts.push(("text_encoder_2", &sd.text2_vs, text_model::normalize_names(text2)));
        }
        fill_all(dir, &parts)?;
        Ok(sd)
    }

    /// Load an original single-file checkpoint (`.safetensors`) with the structure `config` and `tokenizer`
    /// (from a diffusers folder with [`SdConfig::from_dir`] and [`ClipTokenizer::from_dir`], or a preset with
    /// the standard CLIP vocabulary). SD 1.x text encoders (`cond_stage_model.transformer.*`) and SD 2.x
    /// OpenCLIP ones (`cond_stage_model.model.*`) are both read.
    pub fn from_single_file(path: &Path, config: SdConfig, tokenizer: ClipTokenizer, device: Device) -> Result<Self> {
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            return Err(model_err(
                path,
                "only .safetensors single-file checkpoints are read (a pickled .ckpt can run code when opened: convert it first)",
            ));
        }
        if config.text_encoder_2.is_some() {
            return Err(model_err(
                path,
                "single-file SDXL checkpoints are not read yet: load SDXL from its diffusers folder",
            ));
        }
        let named = read_safetensors(path)?;
        let sd = Self::build(config, tokenizer, None, device)?;
        let file: HashMap<String, Tensor> = named.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
        let mut used = HashSet::new();

        let lpb = sd.config.unet.layers_per_block_uniform()?;
        let up_attn: Vec<bool> = sd.config.unet.up_block_types.iter().map(|t| t.starts_with("CrossAttn")).collect();
        let unet =
            single_file::take_component(&file, &mut used, &sd.unet_vs.variables(), single_file::UNET_PREFIX, |k| {
                (format!("{}{}", single_file::UNET_PREFIX, single_file::unet_key_to_original(k, lpb, &up_attn)), false)
            });
        let blocks = sd.config.vae.block_out_channels.len();
        let vae = single_file::take_component(&file, &mut used, &sd.vae_vs.variables(), single_file::VAE_PREFIX, |k| {
            let (o, conv) = single_file::vae_key_to_original(k, blocks);
            (format!("{}{o}", single_file::VAE_PREFIX), conv)
        });
        // The text mapping renames every cond_stage_model.transformer.* / cond_stage_model.model.* key (unknown
        // ones keep a name that loading reports); other cond_stage_model keys are reported as they are.
        let mut text = text_model::from_original_checkpoint(&sd.config.text_encoder, &named);
        for (k, t) in &named {
            let mapped = ["cond_stage_model.transformer.", "cond_stage_model.model."].iter().any(|p| k.starts_with(p));
            if k.starts_with("cond_stage_model.") && !mapped && !single_file::is_ignored(k) {
                text.push((k.clone(), t.shallow_clone()));
            }
        }
        let mut parts =
            vec![("text_encoder", &sd.text_vs, text), ("unet", &sd.unet_vs, unet), ("vae", &sd.vae_vs, vae)];
        let stray: Vec<(String, Tensor)> = named
            .iter()
            .filter(|(k, _)| {
                !["cond_stage_model.", single_file::UNET_PREFIX, single_file::VAE_PREFIX]
                    .iter()
                    .any(|p| k.starts_with(p))
                    && !single_file::is_ignored(k)
            })
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect();
        let none = VarStore::new(Device::Cpu);
        if !stray.is_empty() {
            parts.push(("other", &none, stray));
        }
        fill_all(path, &parts)?;
        Ok(sd)
    }

    /// Load `model`: a diffusers folder, or a `.safetensors` single file whose structure comes from
    /// `config` (a diffusers folder or a preset name: sd15, sd21; default sd15).
    pub fn load(model: &Path, config: Option<&str>, device: Device) -> Result<Self> {
        if model.is_dir() {
            if let Some(c) = config {
                return Err(model_err(
                    model,
                    format!(
                        "a diffusers folder carries its own configs; --model-config {c} is for single-file checkpoints"
                    ),
                ));
            }
            return Self::from_dir(model, device);
        }
        if !model.exists() {
            return Err(model_err(model, "not found: expected a diffusers model folder or a .safetensors checkpoint"));
        }
        let (cfg, tok) = match config {
            Some(c) if Path::new(c).is_dir() => {
                let dir = Path::new(c);
                (SdConfig::from_dir(dir)?, ClipTokenizer::from_dir(&dir.join("tokenizer"))?)
            }
            other => {
                let cfg = SdConfig::preset(other.unwrap_or("sd15"))?;
                let vocab = crate::clip::default_vocab_path().ok_or_else(|| {
                    model_err(
                        model,
                        "no tokenizer: set GENLAB_DATA_DIR or HOME, or give --model-config a diffusers folder",
                    )
                })?;
                let mut tok = ClipTokenizer::from_bpe_file(&vocab)?;
                if let Some(id) = cfg.pad_token_id {
                    tok.set_pad_id(id);
                }
                (cfg, tok)
            }
        };
        Self::from_single_file(model, cfg, tok, device)
    }

    /// Convert the weights to `kind` (f32, f16 or bf16). The autoencoder stays in f32 when its config asks
    /// (`force_upcast`, as diffusers does for SD's VAE, which overflows in f16).
    pub fn set_kind(&mut self, kind: Kind) {
        self.text_vs.set_kind(kind);
        self.text2_vs.set_kind(kind);
        self.unet_vs.set_kind(kind);
        self.kind = kind;
        if !(kind == Kind::Half && self.config.vae.force_upcast) {
            self.vae_vs.set_kind(kind);
            self.vae_kind = kind;
        } else {
            self.vae_vs.set_kind(Kind::Float);
            self.vae_kind = Kind::Float;
        }
    }

    /// Stop gradients to every weight of the model (the base model of a fine-tuning run, whose adapters train).
    pub fn freeze(&mut self) {
        for vs in [&mut self.text_vs, &mut self.text2_vs, &mut self.unet_vs, &mut self.vae_vs] {
            vs.freeze();
        }
    }

    /// The kind of the UNet's weights (what latents are cast to).
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The kind of the autoencoder's weights.
    pub fn vae_kind(&self) -> Kind {
        self.vae_kind
    }

    pub fn device(&self) -> Device {
        self.unet_vs.device()
    }

    /// Number of parameters of (text encoders, UNet, autoencoder).
    pub fn parameter_counts(&self) -> (i64, i64, i64) {
        let n = |vs: &VarStore| vs.variables().values().map(|t| t.numel() as i64).sum::<i64>();
        (n(&self.text_vs) + n(&self.text2_vs), n(&self.unet_vs), n(&self.vae_vs))
    }
}
