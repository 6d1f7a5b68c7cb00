//! LoRA fine-tuning of Stable-Diffusion-compatible models on captioned images, as diffusers'
//! `examples/text_to_image/train_text_to_image_lora.py` trains them (and DreamBooth with one caption): the base
//! model frozen, peft-style adapters (`lora_A` Kaiming-uniform, `lora_B` zero, scale alpha / r) on the UNet's
//! attention projections and optionally the text encoder's, the model's own noise schedule and prediction
//! type, MSE to the noise (or velocity) with optional min-SNR weighting (Hang et al., arXiv 2303.09556) and
//! noise offset, AdamW with warm-up and a constant or cosine schedule, through genlab-core's harness
//! (exact resume, Ctrl-C checkpoints, TensorBoard, report).
//!
//! The run writes `pytorch_lora_weights.safetensors` in the layout diffusers' `save_lora_weights` writes
//! (`unet.<module>.lora_A.weight`, with the `LoraConfig` in the file's metadata), which diffusers'
//! `load_lora_weights` and genlab's `--lora` read.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

use genlab_core::checkpoint::CheckpointReader;
use genlab_core::lora::Targets;
use genlab_core::optim::{Adam, AdamConfig};
use genlab_core::run::{FitOptions, Start};
use genlab_core::train::{Batch, Outcome, StepOutput, TrainTask};
use genlab_data::captions::{folder_captions, template_captions, Indexed};
use genlab_data::{DataSpec, Dataset, FolderDataset};

use crate::error::{DiffusionError, Result};
use crate::schedule::NoiseSchedule;
use crate::sd::adapt::LoadOptions;
use crate::sd::loader::StableDiffusion;
use crate::sd::pipeline::GenerateOptions;

/// The text encoder's layers `--train-text-encoder` adapts (diffusers' training scripts' choice).
const TEXT_TARGETS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "out_proj"];

/// The LoRA file a fine-tuning run writes in its directory.
pub const LORA_FILE: &str = "pytorch_lora_weights.safetensors";

/// How a LoRA fine-tuning run trains (with the `clap` feature, the flags of `genlab diffusion finetune`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct FinetuneOptions {
    /// The base model: a diffusers folder or a single-file .safetensors checkpoint (the CLI's --model).
    #[cfg_attr(feature = "clap", arg(skip))]
    pub model: PathBuf,
    /// For a single-file --model: its structure (a diffusers folder or a preset: sd15, sd21).
    #[cfg_attr(feature = "clap", arg(long))]
    pub model_config: Option<String>,
    /// One caption for every image (DreamBooth's "a photo of sks dog"); `{class}` stands for each image's class.
    /// Without it, an image folder's metadata.jsonl (file_name, text) or side-car .txt files give the captions.
    #[cfg_attr(feature = "clap", arg(long))]
    pub caption: Option<String>,
    /// LoRA rank.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 4))]
    pub lora_rank: i64,
    /// LoRA alpha (the scale is alpha / rank; default: the rank, diffusers' training scripts' choice).
    #[cfg_attr(feature = "clap", arg(long))]
    pub lora_alpha: Option<f64>,
    /// The UNet layers to adapt, by the end of their names (comma-separated).
    #[cfg_attr(feature = "clap", arg(long, value_delimiter = ',', default_value = "to_q,to_k,to_v,to_out.0"))]
    pub lora_targets: Vec<String>,
    /// Also adapt the text encoder's attention projections (q_proj, k_proj, v_proj, out_proj).
    #[cfg_attr(feature = "clap", arg(long))]
    pub train_text_encoder: bool,
    /// The learning rate (the CLI's --lr, 1e-4 by default).
    #[cfg_attr(feature = "clap", arg(skip = 1e-4))]
    pub lr: f64,
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 1e-2))]
    pub weight_decay: f64,
    /// Images per step (the CLI's --batch-size, 1 by default).
    #[cfg_attr(feature = "clap", arg(skip = 1usize))]
    pub batch_size: usize,
    /// Training image size in pixels (square; default: the UNet's sample size times the autoencoder's factor).
    #[cfg_attr(feature = "clap", arg(long))]
    pub resolution: Option<i64>,
    /// Split each step's batch into this many micro-batches whose gradients add up before the update
    /// (the batch's memory for a fraction of it; the batch size must divide evenly).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 1))]
    #[serde(default = "one")]
    pub gradient_accumulation_steps: usize,
    /// Also write the adapters in kohya-ss / A1111 keys (`RUN/lora_kohya.safetensors`).
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(default)]
    pub kohya: bool,
    /// Linear learning-rate warm-up steps.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0))]
    pub warmup_steps: u64,
    /// constant or cosine (to zero at the last step), after the warm-up.
    #[cfg_attr(feature = "clap", arg(long, default_value = "constant"))]
    pub lr_schedule: String,
    /// Noise offset (Guttenberg's): add this times per-channel Gaussian noise to the noise.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0.0))]
    pub noise_offset: f64,
    /// Min-SNR loss weighting with this gamma (5 in the paper); none by default.
    #[cfg_attr(feature = "clap", arg(long))]
    pub snr_gamma: Option<f64>,
    /// Gradient-norm clipping.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 1.0))]
    pub max_grad_norm: f64,
    /// Sampler steps of the monitoring grid.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 20))]
    pub sample_steps: usize,
}

impl Default for FinetuneOptions {
    fn default() -> Self {
        FinetuneOptions {
            model: PathBuf::new(),
            model_config: None,
            caption: None,
            lora_rank: 4,
            lora_alpha: None,
            lora_targets: ["to_q", "to_k", "to_v", "to_out.0"].map(String::from).to_vec(),
            train_text_encoder: false,
            lr: 1e-4,
            weight_decay: 1e-2,
            batch_size: 1,
            gradient_accumulation_steps: 1,
            kohya: false,
            resolution: None,
            warmup_steps: 0,
            lr_schedule: "constant".into(),
            noise_offset: 0.0,
            snr_gamma: None,
            max_grad_norm: 1.0,
            sample_steps: 20,
        }
    }
}

fn one() -> usize {
    1
}

/// A LoRA fine-tuning run's `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinetuneRunConfig {
    pub family: String,
    pub kind: String,
    pub data: String,
    pub steps: u64,
    pub captions: Vec<String>,
    #[serde(flatten)]
    pub options: FinetuneOptions,
}

impl genlab_core::run::RunKind for FinetuneRunConfig {
    const FAMILY: &'static str = "diffusion";
    const KIND: Option<&'static str> = Some("lora");
    fn data(&self) -> &str {
        &self.data
    }
    fn batch_size(&self) -> usize {
        self.options.batch_size
    }
}

fn cfg_err(message: String) -> DiffusionError {
    DiffusionError::Config(message)
}

impl FinetuneOptions {
    /// These options with the training overrides (`--lr`, `--batch-size`) applied; fine-tuning trains in
    /// fp32, so another `--precision` is refused.
    pub fn overridden(self, o: &genlab_core::run::Overrides) -> Result<Self> {
        if let Some(p) = o.precision.filter(|p| *p != genlab_core::Precision::Fp32) {
            return Err(DiffusionError::Unsupported(format!("fine-tuning in {p:?}: only fp32 is supported yet")));
        }
        Ok(FinetuneOptions { lr: o.lr.unwrap_or(self.lr), batch_size: o.batch_size.unwrap_or(self.batch_size), ..self })
    }

    fn check(&self) -> Result<()> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if self.lora_rank < 1 || self.batch_size < 1 || !positive(self.lr) || self.lora_targets.is_empty() {
            return Err(cfg_err(format!(
                "fine-tuning needs a rank >= 1 (got {}), a batch size >= 1 (got {}), a learning rate > 0 (got {}) and \
                 at least one LoRA target",
                self.lora_rank, self.batch_size, self.lr
            )));
        }
        let a = self.gradient_accumulation_steps;
        if a < 1 || self.batch_size % a != 0 {
            return Err(cfg_err(format!(
                "--gradient-accumulation-steps {a} must be at least 1 and divide the batch size {}",
                self.batch_size
            )));
        }
        if !matches!(self.lr_schedule.as_str(), "constant" | "cosine") {
            return Err(DiffusionError::UnknownName {
                what: "learning-rate schedule",
                found: self.lr_schedule.clone(),
                expected: "constant, cosine".into(),
            });
        }
        if self.lora_alpha.is_some_and(|a| !positive(a)) || self.snr_gamma.is_some_and(|g| !positive(g)) {
            return Err(cfg_err("--lora-alpha and --snr-gamma must be positive".into()));
        }
        Ok(())
    }

    fn alpha(&self) -> f64 {
        self.lora_alpha.unwrap_or(self.lora_rank as f64)
    }

    /// The learning rate at `step` of `total`.
    fn lr_at(&self, step: u64, total: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.lr_schedule.as_str() {
            "cosine" => {
                let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
                let p = ((step - self.warmup_steps) as f64 / span).min(1.0);
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
            _ => self.lr,
        }
    }
}

/// The dataset and its captions: an image folder's own captions, or `caption` for every image.
fn captioned(data: &DataSpec, caption: Option<&str>) -> Result<(Arc<dyn Dataset>, Vec<String>)> {
    let folder = Path::new(&data.spec);
    if let Some(c) = caption {
        let ds = data.open()?;
        let caps = template_captions(ds.as_ref(), c)?;
        return Ok((ds, caps));
    }
    if !folder.is_dir() {
        return Err(cfg_err(format!(
            "{}: captions come from an image folder (metadata.jsonl or .txt files beside the images); for another \
             dataset give --caption",
            data.spec
        )));
    }
    let ds = FolderDataset::open(folder, &data.read)?;
    let caps = folder_captions(folder, &ds)?;
    Ok((Arc::new(ds), caps))
}

/// One layer's trainable adapter: its peft names and variables.
fn add_adapters(
    vs: &VarStore,
    component: &str,
    targets: &Targets,
    wanted: &[&str],
    rank: i64,
    scale: f64,
) -> Result<Vec<String>> {
    let mut adapted = Vec::new();
    for (name, target) in targets.iter() {
        if !wanted.iter().any(|w| name == w || name.ends_with(&format!(".{w}"))) {
            continue;
        }
        let (down_shape, up_shape) = target.expected_shapes(rank);
        let mut p = vs.root() / component;
        for part in name.split('.') {
            p = p / part;
        }
        // peft's init: A Kaiming-uniform with a = sqrt(5) (bound 1 / sqrt(fan_in)), B zero.
        let fan_in: i64 = down_shape[1..].iter().product();
        let bound = 1.0 / (fan_in as f64).sqrt();
        let down = (&p / "lora_A").var("weight", &down_shape, nn::Init::Uniform { lo: -bound, up: bound });
        let up = (&p / "lora_B").var("weight", &up_shape, nn::Init::Const(0.0));
        target.attach_trainable("finetune", &down, &up, scale).map_err(|e| cfg_err(format!("adapting {name}: {e}")))?;
        adapted.push(name.clone());
    }
    if adapted.is_empty() {
        return Err(cfg_err(format!("no {component} layer's name ends with one of {wanted:?}")));
    }
    Ok(adapted)
}

/// The training task: the frozen model, its adapters' variables and their optimizer.
pub struct LoraFinetune {
    run: FinetuneRunConfig,
    sd: StableDiffusion,
    schedule: NoiseSchedule,
    lora: VarStore,
    opt: Adam,
    resolution: i64,
}

impl LoraFinetune {
    /// Load the base model, freeze it and give the chosen layers fresh adapters.
    pub fn new(run: FinetuneRunConfig, device: Device) -> Result<Self> {
        let o = &run.options;
        o.check()?;
        let load = LoadOptions { model_config: o.model_config.clone(), ..LoadOptions::default() };
        let mut sd = StableDiffusion::open(&o.model, &load, device)?;
        if sd.text_encoder_2.is_some() {
            return Err(DiffusionError::Unsupported(
                "fine-tuning SDXL models is not supported yet (SD 1.x and 2.x are)".into(),
            ));
        }
        sd.freeze();
        let schedule = NoiseSchedule::new(&sd.config.schedule)?;
        let lora = VarStore::new(device);
        let scale = o.alpha() / o.lora_rank as f64;
        let wanted: Vec<&str> = o.lora_targets.iter().map(String::as_str).collect();
        add_adapters(&lora, "unet", sd.unet.lora_targets(), &wanted, o.lora_rank, scale)?;
        if o.train_text_encoder {
            add_adapters(&lora, "text_encoder", sd.text_encoder.lora_targets(), &TEXT_TARGETS, o.lora_rank, scale)?;
        }
        let cfg = AdamConfig { max_grad_norm: Some(o.max_grad_norm), ..AdamConfig::adamw(o.lr, o.weight_decay) };
        let opt = Adam::new(&lora, cfg)?;
        let f = sd.vae_factor();
        let resolution = o.resolution.unwrap_or(sd.config.unet.sample_hw().0 * f);
        if resolution < f || resolution % f != 0 {
            return Err(cfg_err(format!("--resolution {resolution} must be a positive multiple of {f}")));
        }
        Ok(LoraFinetune { run, sd, schedule, lora, opt, resolution })
    }

    /// The adapted model (to sample from after training).
    pub fn model(&self) -> &StableDiffusion {
        &self.sd
    }

    /// Batch images in [-1, 1] at the training resolution, RGB, on the model's device.
    fn prepare(&self, images: &Tensor) -> Tensor {
        let x = images.to_device(self.sd.device()).to_kind(Kind::Float);
        let x = if x.size()[1] == 1 { x.repeat([1, 3, 1, 1]) } else { x };
        let (h, w) = (x.size()[2], x.size()[3]);
        let r = self.resolution;
        if (h, w) == (r, r) {
            x
        } else {
            x.upsample_bilinear2d([r, r], false, None, None)
        }
    }

    /// The training loss of images `x` (prepared) with their captions.
    fn loss(&self, x: &Tensor, captions: &[String]) -> Result<Tensor> {
        let o = &self.run.options;
        let b = x.size()[0];
        let vae = &self.sd.config.vae;
        let latents = tch::no_grad(|| -> Result<Tensor> {
            let post = self.sd.vae.encode(x)?;
            let z = &post.mean + post.std() * post.mean.randn_like();
            Ok((z - vae.shift_factor.unwrap_or(0.0)) * vae.scaling_factor)
        })?;
        let mut noise = latents.randn_like();
        if o.noise_offset > 0.0 {
            let c = latents.size()[1];
            noise += Tensor::randn([b, c, 1, 1], (Kind::Float, latents.device())) * o.noise_offset;
        }
        let n = self.schedule.num_train_timesteps() as i64;
        let t = Tensor::randint(n, [b], (Kind::Int64, latents.device()));
        let noisy = self.schedule.add_noise(&latents, &noise, &t)?;
        let target = self.schedule.training_target(&latents, &noise, &t)?;
        let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
        let ids = self.sd.tokenizer.encode_batch(&refs).to_device(self.sd.device());
        let text = if o.train_text_encoder {
            self.sd.text_encoder.forward(&ids)?
        } else {
            tch::no_grad(|| self.sd.text_encoder.forward(&ids))?
        };
        let pred = self.sd.unet.forward(&noisy, &t, &text)?;
        let per_sample = (pred - target).square().mean_dim([1, 2, 3].as_slice(), false, Kind::Float);
        Ok(match o.snr_gamma {
            Some(g) => (per_sample * self.schedule.min_snr_weights(&t, g)?).mean(Kind::Float),
            None => per_sample.mean(Kind::Float),
        })
    }

    fn captions_of(&self, labels: &Tensor) -> Result<Vec<String>> {
        let ids =
            Vec::<i64>::try_from(labels.to_device(Device::Cpu)).map_err(|e| cfg_err(format!("batch labels: {e}")))?;
        ids.iter()
            .map(|&i| {
                self.run.captions.get(i as usize).cloned().ok_or_else(|| cfg_err(format!("no caption for item {i}")))
            })
            .collect()
    }
}

impl TrainTask for LoraFinetune {
    fn train_step(&mut self, batch: &Batch, step: u64) -> genlab_core::Result<StepOutput> {
        let o = &self.run.options;
        let lr = o.lr_at(step, self.run.steps);
        self.opt.set_lr(lr);
        let labels = batch.labels.as_ref().ok_or_else(|| cfg_err("fine-tuning batches carry caption ids".into()))?;
        let captions = self.captions_of(labels)?;
        let x = self.prepare(&batch.images);
        let parts = o.gradient_accumulation_steps as i64;
        let micro = x.size()[0] / parts;
        self.opt.zero_grad();
        let mut total = 0.0;
        for k in 0..parts {
            let x = x.narrow(0, k * micro, micro);
            let caps = &captions[(k * micro) as usize..((k + 1) * micro) as usize];
            let loss = self.loss(&x, caps)? / parts as f64;
            total += loss.double_value(&[]);
            loss.backward();
        }
        self.opt.step();
        Ok(StepOutput { loss: total, metrics: vec![("lr".into(), lr)] })
    }

    fn samples(&mut self, n: i64) -> genlab_core::Result<Tensor> {
        let prompt = self.run.captions.first().cloned().unwrap_or_default();
        let r = self.resolution;
        let opts = GenerateOptions {
            prompt,
            batch: n.min(4),
            steps: self.run.options.sample_steps,
            height: Some(r),
            width: Some(r),
            ..GenerateOptions::default()
        };
        Ok(self.sd.txt2img(&opts)?.images * 2.0 - 1.0)
    }

    fn checkpoint_groups(&self) -> BTreeMap<String, Vec<(String, Tensor)>> {
        let mut g = BTreeMap::new();
        g.insert("lora".into(), self.lora.variables().into_iter().collect());
        g.insert("optim".into(), self.opt.state_tensors());
        g
    }

    fn restore(&mut self, ckpt: &CheckpointReader) -> genlab_core::Result<()> {
        ckpt.load_group_into("lora", &self.lora)?;
        self.opt.load_state_tensors(&ckpt.read_group("optim")?)
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.run).unwrap_or_default()
    }
}

/// [`finetune`] as `genlab diffusion finetune` calls it: the base `model`, and `options` with the training
/// `overrides` (`--lr`, `--batch-size`) applied.
pub fn fit(
    model: &str,
    data: &DataSpec,
    overrides: &genlab_core::run::Overrides,
    options: &FinetuneOptions,
    fit: &FitOptions,
) -> Result<Outcome> {
    let options = FinetuneOptions { model: model.into(), ..options.clone().overridden(overrides)? };
    finetune(&options, data, fit)
}

/// Train a LoRA on `data` (captioned by `options.caption` or by the folder) and write it as
/// `RUN/pytorch_lora_weights.safetensors` (see [`export_lora`]) when the run stops.
pub fn finetune(options: &FinetuneOptions, data: &DataSpec, fit: &FitOptions) -> Result<Outcome> {
    options.check()?;
    let steps = fit.harness.steps;
    let fresh_options = options.clone();
    let outcome = genlab_core::run::fit(
        fit,
        || -> genlab_core::Result<FinetuneRunConfig> {
            let (_, captions) =
                captioned(data, fresh_options.caption.as_deref()).map_err(genlab_core::CoreError::task)?;
            Ok(FinetuneRunConfig {
                family: "diffusion".into(),
                kind: "lora".into(),
                data: data.spec.clone(),
                steps,
                captions,
                options: fresh_options,
            })
        },
        |run| {
            let (ds, captions) = captioned(&data.with_spec(&run.data), run.options.caption.as_deref())
                .map_err(genlab_core::CoreError::task)?;
            if captions != run.captions {
                return Err(genlab_core::CoreError::Config(format!(
                    "{}: the captions differ from those the run started with",
                    run.data
                )));
            }
            let loader = genlab_data::Loader::new(
                Arc::new(Indexed(ds)),
                genlab_data::LoaderConfig::new(run.options.batch_size, fit.harness.seed, fit.device),
            )?;
            Ok(Box::new(loader) as Box<dyn genlab_core::train::BatchSource>)
        },
        // `--steps` counts the whole run: a resumed run's schedule spans the steps asked for now.
        |run, _: Start, device| {
            LoraFinetune::new(FinetuneRunConfig { steps, ..run }, device).map_err(genlab_core::CoreError::task)
        },
    )?;
    export_lora(&fit.harness.out)?;
    Ok(outcome)
}

/// Write the newest checkpoint's adapters of the fine-tuning run `run_dir` as
/// `run_dir/pytorch_lora_weights.safetensors`, with each component's `LoraConfig` (rank, alpha, the adapted
/// modules) in the `lora_adapter_metadata` entry diffusers writes and reads. Returns the file.
pub fn export_lora(run_dir: &Path) -> Result<PathBuf> {
    let run: FinetuneRunConfig = genlab_core::run::read_config(run_dir)?;
    let ckpt = genlab_core::train::RunDir::new(run_dir).latest()?;
    let named = ckpt.read_group("lora")?;
    let o = &run.options;
    // peft matches target names as dotted suffixes, as genlab chose the layers; transformers 5 names the text
    // encoder's modules without `text_model.`, so full names would not be found there.
    let mut modules: Vec<(&str, Vec<String>)> = vec![("unet", o.lora_targets.clone())];
    if named.iter().any(|(k, _)| k.starts_with("text_encoder.")) {
        modules.push(("text_encoder", TEXT_TARGETS.map(String::from).to_vec()));
    }
    let mut meta = serde_json::Map::new();
    for (component, list) in &modules {
        meta.insert(format!("{component}.r"), serde_json::json!(o.lora_rank));
        meta.insert(format!("{component}.lora_alpha"), serde_json::json!(o.alpha()));
        meta.insert(format!("{component}.target_modules"), serde_json::json!(list));
        meta.insert(format!("{component}.init_lora_weights"), serde_json::json!(true));
    }
    let path = run_dir.join(LORA_FILE);
    write_with_metadata(&named, &path, Some(&serde_json::Value::Object(meta).to_string()))?;
    if o.kohya {
        write_kohya(&named, o.alpha(), &run_dir.join(KOHYA_FILE))?;
    }
    Ok(path)
}

/// The kohya-ss file a run writes with `--kohya`.
pub const KOHYA_FILE: &str = "lora_kohya.safetensors";

/// peft-named adapters in kohya-ss / A1111 keys: `lora_unet_<module with _>.lora_down.weight` (A),
/// `.lora_up.weight` (B) and `.alpha`, the text encoder's as `lora_te_text_model_...`.
fn write_kohya(named: &[(String, Tensor)], alpha: f64, path: &Path) -> Result<()> {
    let mut out = Vec::new();
    for (k, t) in named {
        let (module, role) = match (k.strip_suffix(".lora_A.weight"), k.strip_suffix(".lora_B.weight")) {
            (Some(m), _) => (m, "lora_down.weight"),
            (_, Some(m)) => (m, "lora_up.weight"),
            _ => continue,
        };
        let name = match module.split_once('.') {
            Some(("unet", m)) => format!("lora_unet_{}", m.replace('.', "_")),
            Some(("text_encoder", m)) => format!("lora_te_{}", m.replace('.', "_")),
            _ => return Err(cfg_err(format!("{k}: not a unet or text_encoder adapter"))),
        };
        if role == "lora_down.weight" {
            out.push((format!("{name}.alpha"), Tensor::from(alpha as f32)));
        }
        out.push((format!("{name}.{role}"), t.shallow_clone()));
    }
    write_with_metadata(&out, path, None)
}

/// f32 tensors as safetensors views.
struct F32 {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for &F32 {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Write `named` (as f32) to `path` atomically, with `lora_adapter_metadata` = `metadata` where given.
fn write_with_metadata(named: &[(String, Tensor)], path: &Path, metadata: Option<&str>) -> Result<()> {
    let views: Vec<(String, F32)> = named
        .iter()
        .map(|(k, t)| {
            let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
            let shape = t.size().iter().map(|&d| d as usize).collect();
            let values = Vec::<f32>::try_from(t.flatten(0, -1)).map_err(|e| cfg_err(format!("{k}: {e}")))?;
            Ok((k.clone(), F32 { shape, bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect() }))
        })
        .collect::<Result<_>>()?;
    let mut meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    if let Some(m) = metadata {
        meta.insert("lora_adapter_metadata".into(), m.to_string());
    }
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::tensor::serialize_to_file(views.iter().map(|(k, v)| (k.as_str(), v)), &Some(meta), &tmp)
        .map_err(|e| DiffusionError::Lora { path: tmp.clone(), message: format!("writing: {e:?}") })?;
    std::fs::rename(&tmp, path)
        .map_err(|e| DiffusionError::Lora { path: path.to_path_buf(), message: format!("writing: {e}") })?;
    Ok(())
}
