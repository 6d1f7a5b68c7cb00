//! Adapting a loaded Stable-Diffusion-compatible model: [`StableDiffusion::open`] with its options
//! ([`LoadOptions`]: precision, attention slicing, LoRA files, textual-inversion embeddings), and the methods
//! that attach, weigh, fuse and remove LoRA adapters ([`crate::sd::lora`]) and add embeddings
//! ([`crate::sd::embedding`]).
use std::path::Path;

use tch::{Device, Kind, Tensor};

use genlab_core::Precision;

use crate::clip::text_model::ClipTextModel;
use crate::error::{model_err, DiffusionError, Result};
use crate::sd::embedding::{EmbeddingFile, EmbeddingReport, EmbeddingSpec};
use crate::sd::loader::StableDiffusion;
use crate::sd::lora::{LoraFile, LoraReport, LoraSpec, ModelTargets};
use crate::sd::single_file;

/// How [`StableDiffusion::open`] loads a model (with the `clap` feature, the flags for it).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct LoadOptions {
    /// For a single-file --model: its structure, from a diffusers folder's configs or a preset (sd15, sd21;
    /// default sd15).
    #[cfg_attr(feature = "clap", arg(long))]
    pub model_config: Option<String>,
    /// Weights in fp32, fp16 (GPU) or bf16; the autoencoder stays fp32 in fp16 where its config says so.
    #[cfg_attr(feature = "clap", arg(long, default_value = "fp32"))]
    pub dtype: Precision,
    /// Compute attention this many heads at a time (lower peak memory; 0 or absent: all at once).
    #[cfg_attr(feature = "clap", arg(long))]
    pub attention_slice: Option<i64>,
    /// A LoRA file (kohya/A1111, peft or diffusers .safetensors) and its weight, FILE or FILE:WEIGHT
    /// (default 1); repeat for several.
    #[cfg_attr(feature = "clap", arg(long = "lora", value_name = "FILE[:WEIGHT]"))]
    pub lora: Vec<LoraSpec>,
    /// LoRA keys that match no layer of the model are listed and left out instead of an error.
    #[cfg_attr(feature = "clap", arg(long))]
    pub lora_allow_unmatched: bool,
    /// Add the LoRA adapters into the weights once (faster sampling) instead of running them beside each layer.
    #[cfg_attr(feature = "clap", arg(long))]
    pub lora_fuse: bool,
    /// A textual-inversion embedding (.safetensors: diffusers', A1111's or SDXL's layout) and the token to use
    /// it under in prompts, FILE or FILE:TOKEN (default: the file's own token, else its name); repeat for several.
    #[cfg_attr(feature = "clap", arg(long = "embedding", value_name = "FILE[:TOKEN]"))]
    pub embedding: Vec<EmbeddingSpec>,
}

impl StableDiffusion {
    /// [`StableDiffusion::load`] with the weights in `opts.dtype` (fp16 only on a GPU) and attention
    /// computed `opts.attention_slice` heads at a time.
    pub fn open(model: &Path, opts: &LoadOptions, device: Device) -> Result<Self> {
        let kind = match opts.dtype {
            Precision::Fp32 => Kind::Float,
            Precision::Fp16 => Kind::Half,
            Precision::Bf16 => Kind::BFloat16,
        };
        if kind == Kind::Half && device == Device::Cpu {
            return Err(model_err(model, "--dtype fp16 needs a GPU (--device cuda); on the CPU use fp32 or bf16"));
        }
        let mut sd = Self::load(model, opts.model_config.as_deref(), device)?;
        sd.set_kind(kind);
        sd.unet.set_attention_slice(opts.attention_slice.filter(|&s| s > 0))?;
        for spec in &opts.embedding {
            sd.load_embedding(&spec.path, spec.token.as_deref())?;
        }
        for spec in &opts.lora {
            sd.load_lora(&spec.path, spec.weight, opts.lora_allow_unmatched)?;
        }
        if opts.lora_fuse {
            sd.fuse_lora();
        }
        Ok(sd)
    }

    /// "1.2M text encoder, 3.4M UNet, 0.5M autoencoder parameters", and the embeddings and LoRA files added.
    pub fn describe_size(&self) -> String {
        let (te, un, va) = self.parameter_counts();
        let m = |n: i64| n as f64 / 1e6;
        let mut s = format!("{:.1}M text encoder, {:.1}M UNet, {:.1}M autoencoder parameters", m(te), m(un), m(va));
        for e in &self.embeddings {
            s.push_str(&format!("; {e}"));
        }
        for r in &self.loras {
            s.push_str(&format!("; {r}"));
        }
        s
    }

    /// Load a textual-inversion embedding and add its token (`token`, else the file's own, else the file's
    /// name) to the tokenizer and its vectors to the text encoder, as diffusers' `load_textual_inversion`
    /// does; SDXL files (`clip_l`, `clip_g`) go to both encoders, others to the first. A token already in the
    /// vocabulary and vectors of the wrong width are errors naming the file; nothing changes when one fails.
    pub fn load_embedding(&mut self, path: &Path, token: Option<&str>) -> Result<&EmbeddingReport> {
        let file = EmbeddingFile::read(path, token)?;
        let err = |message: String| DiffusionError::Embedding { path: path.to_path_buf(), message };
        let second = match (&file.vectors_2, &self.text_encoder_2, &self.tokenizer_2) {
            (Some(v), Some(te), Some(tok)) => Some((v, te, tok)),
            (Some(_), _, _) => {
                return Err(err(
                    "an SDXL embedding (clip_l and clip_g) needs an SDXL model with two text encoders".into()
                ))
            }
            (None, _, _) => None,
        };
        let check = |(key, t): &(String, Tensor), te: &ClipTextModel| {
            let hidden = te.config().hidden_size;
            if t.size()[1] != hidden {
                return Err(err(format!(
                    "{key}: vectors of shape {:?}, but the text encoder's embeddings are {hidden} wide",
                    t.size()
                )));
            }
            Ok(())
        };
        check(&file.vectors, &self.text_encoder)?;
        let n = file.vectors.1.size()[0] as usize;
        // Both tokenizers first, on copies: a taken token changes nothing.
        let mut tok = self.tokenizer.clone();
        let ids = tok.add_token(&file.token, n).map_err(err)?;
        let mut tok2 = None;
        if let Some((v, te, t2)) = second {
            check(v, te)?;
            let mut t2 = t2.clone();
            let ids2 = t2.add_token(&file.token, n).map_err(err)?;
            tok2 = Some((t2, ids2[0]));
        }
        self.text_encoder.add_token_embeddings(ids[0], &file.vectors.1)?;
        if let (Some((t2, first)), Some(v), Some(te)) = (tok2, &file.vectors_2, self.text_encoder_2.as_mut()) {
            te.add_token_embeddings(first, &v.1)?;
            self.tokenizer_2 = Some(t2);
        }
        self.tokenizer = tok;
        self.embeddings.push(EmbeddingReport {
            path: path.to_path_buf(),
            token: file.token.to_lowercase(),
            vectors: n,
        });
        Ok(self.embeddings.last().expect("just pushed"))
    }

    /// The embeddings loaded, in order.
    pub fn embeddings(&self) -> &[EmbeddingReport] {
        &self.embeddings
    }

    /// Attach the LoRA file `path` unfused with `weight`, as an adapter named after the file (see
    /// [`LoraFile::attach`] for what is checked; nothing is attached when it fails).
    pub fn load_lora(&mut self, path: &Path, weight: f64, allow_unmatched: bool) -> Result<&LoraReport> {
        let file = LoraFile::read(path)?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "lora".into());
        let mut name = stem.clone();
        let mut n = 1;
        while self.loras.iter().any(|r| r.adapter == name) {
            n += 1;
            name = format!("{stem}_{n}");
        }
        let cfg = &self.config.unet;
        let lpb = cfg.layers_per_block_uniform().ok();
        let up_attn: Vec<bool> = cfg.up_block_types.iter().map(|t| t.starts_with("CrossAttn")).collect();
        let original = move |name: &str| match name {
            "add_embedding.linear_1" => "label_emb.0.0".to_string(),
            "add_embedding.linear_2" => "label_emb.0.2".to_string(),
            _ => {
                let key = single_file::unet_key_to_original(&format!("{name}.weight"), lpb.unwrap_or(0), &up_attn);
                key.strip_suffix(".weight").unwrap_or(&key).to_string()
            }
        };
        let targets = ModelTargets {
            unet: self.unet.lora_targets(),
            text_encoder: self.text_encoder.lora_targets(),
            text_encoder_2: self.text_encoder_2.as_ref().map(|t| t.lora_targets()),
            unet_original_name: lpb.is_some().then_some(&original as &dyn Fn(&str) -> String),
        };
        let report = file.attach(&targets, &name, weight, allow_unmatched)?;
        self.loras.push(report);
        Ok(self.loras.last().expect("just pushed"))
    }

    /// The LoRA files attached, in order.
    pub fn loras(&self) -> &[LoraReport] {
        &self.loras
    }

    fn lora_targets(&self) -> impl Iterator<Item = &genlab_core::lora::Targets> {
        [Some(self.unet.lora_targets()), Some(self.text_encoder.lora_targets())]
            .into_iter()
            .chain(std::iter::once(self.text_encoder_2.as_ref().map(|t| t.lora_targets())))
            .flatten()
    }

    /// Change the weight of an attached, unfused adapter (named as in [`LoraReport::adapter`]).
    pub fn set_lora_weight(&mut self, adapter: &str, weight: f64) -> Result<()> {
        let Some(i) = self.loras.iter().position(|r| r.adapter == adapter) else {
            return Err(DiffusionError::Config(format!("no LoRA adapter `{adapter}` is attached")));
        };
        for t in self.lora_targets() {
            t.set_weight(adapter, weight)
                .map_err(|e| DiffusionError::Lora { path: self.loras[i].path.clone(), message: e.to_string() })?;
        }
        self.loras[i].weight = weight;
        Ok(())
    }

    /// Add every attached adapter into the weights at its weight (diffusers' `fuse_lora`): sampling then costs
    /// what it costs without adapters.
    pub fn fuse_lora(&self) {
        self.lora_targets().for_each(|t| t.fuse(None));
    }

    /// Take fused adapters out of the weights again (diffusers' `unfuse_lora`); they stay attached, unfused.
    pub fn unfuse_lora(&self) {
        self.lora_targets().for_each(|t| t.unfuse());
    }

    /// Detach an adapter (unfusing it first); `false` if none has that name.
    pub fn unload_lora(&mut self, adapter: &str) -> bool {
        let Some(i) = self.loras.iter().position(|r| r.adapter == adapter) else { return false };
        self.lora_targets().for_each(|t| {
            t.remove(adapter);
        });
        self.loras.remove(i);
        true
    }
}
