//! A small convolutional classifier trained on the dataset itself. Its penultimate features give
//! a Fréchet distance for small images where Inception-v3 (trained on 299 x 299 ImageNet photos)
//! says little, and its predictions give the Inception Score and class coverage of samples; its
//! test accuracy measures how much synthetic training data helps (train on a small real subset
//! with and without generated images, compare accuracy on the real test set).
//!
//! The network: three 3 x 3 conv - BatchNorm - ReLU stages (32, 64, 128 channels; 2 x 2 max pools
//! after the first two), global average pooling, a 128-d fully connected ReLU layer (the
//! features), dropout, and a linear layer to the class logits. Trained with cross-entropy and
//! Adam under a cosine learning-rate decay, through genlab-core's harness.
use crate::error::{EvalError, Result};
use crate::features::{FeatureNet, Features};
use genlab_core::checkpoint::CheckpointReader;
use genlab_core::optim::{Adam, AdamConfig};
use genlab_core::precision::GradScaler;
use genlab_core::train::{Batch, StepOutput, TrainTask};
use genlab_core::Precision;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

pub const FAMILY: &str = "classifier";

/// The network's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    /// [channels, height, width] of the images.
    pub image_shape: [i64; 3],
    pub num_classes: i64,
    /// Channels of the three conv stages.
    pub channels: [i64; 3],
    /// Width of the penultimate (feature) layer.
    pub feature_dim: i64,
    /// Dropout probability before the last layer, in training.
    pub dropout: f64,
}

impl ClassifierConfig {
    /// The `small` preset: 32-64-128 convs, 128-d features, dropout 0.3.
    pub fn small(image_shape: [i64; 3], num_classes: i64) -> Self {
        ClassifierConfig { image_shape, num_classes, channels: [32, 64, 128], feature_dim: 128, dropout: 0.3 }
    }

    pub fn preset(name: &str, image_shape: [i64; 3], num_classes: i64) -> Result<Self> {
        match name {
            "small" => Ok(Self::small(image_shape, num_classes)),
            other => Err(EvalError::Config(format!("unknown classifier preset `{other}`: expected small"))),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let [c, h, w] = self.image_shape;
        if c < 1 || h < 4 || w < 4 {
            return Err(EvalError::Config(format!(
                "the classifier needs images of at least 4 x 4 pixels (two 2 x 2 pools), got {:?}",
                self.image_shape
            )));
        }
        if self.num_classes < 2 {
            return Err(EvalError::Config(format!("a classifier needs 2 or more classes, got {}", self.num_classes)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(EvalError::Config(format!("dropout must be in [0, 1), got {}", self.dropout)));
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct Classifier {
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    fc: nn::Linear,
    head: nn::Linear,
    pub cfg: ClassifierConfig,
    device: Device,
}

impl Classifier {
    pub fn new(vs: nn::Path<'_>, cfg: ClassifierConfig) -> Result<Self> {
        cfg.validate()?;
        let mut c_in = cfg.image_shape[0];
        let mut convs = Vec::new();
        for (i, &c) in cfg.channels.iter().enumerate() {
            let conv = nn::conv2d(
                &vs / "convs" / i / "conv",
                c_in,
                c,
                3,
                nn::ConvConfig { padding: 1, bias: false, ..Default::default() },
            );
            let bn = nn::batch_norm2d(&vs / "convs" / i / "bn", c, Default::default());
            convs.push((conv, bn));
            c_in = c;
        }
        let fc = nn::linear(&vs / "fc", c_in, cfg.feature_dim, Default::default());
        let head = nn::linear(&vs / "head", cfg.feature_dim, cfg.num_classes, Default::default());
        Ok(Classifier { convs, fc, head, cfg, device: vs.device() })
    }

    /// Penultimate features and logits.
    ///
    /// # Shapes
    /// - `xs`: [n, c, h, w] in [-1, 1] -> ([n, feature_dim], [n, num_classes])
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> (Tensor, Tensor) {
        let mut x = xs.shallow_clone();
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            x = conv.forward(&x).apply_t(bn, train).relu();
            if i + 1 < self.convs.len() {
                x = x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
            }
        }
        let feats = self.fc.forward(&x.mean_dim(&[2i64, 3][..], false, Kind::Float)).relu();
        let logits = self.head.forward(&feats.dropout(self.cfg.dropout, train));
        (feats, logits)
    }

    pub fn device(&self) -> Device {
        self.device
    }
}

/// A classifier and the run directory it came from, as a [`FeatureNet`].
#[derive(Debug)]
pub struct ClassifierFeatures {
    pub model: Classifier,
    pub vs: nn::VarStore,
    pub source: String,
}

impl FeatureNet for ClassifierFeatures {
    fn name(&self) -> String {
        format!("classifier:{}", self.source)
    }
    fn dim(&self) -> i64 {
        self.model.cfg.feature_dim
    }
    fn embed(&self, images: &Tensor) -> Result<Features> {
        let size = images.size();
        let [c, h, w] = self.model.cfg.image_shape;
        if size.len() != 4 || size[1..] != [c, h, w] {
            return Err(EvalError::Shape(format!(
                "the classifier {} was trained on {c}x{h}x{w} images; got a batch {size:?}",
                self.source
            )));
        }
        let x = images.to_device(self.model.device()).to_kind(Kind::Float);
        let (features, logits) = tch::no_grad(|| self.model.forward_t(&x, false));
        Ok(Features { features, logits: Some(logits) })
    }
}

/// Everything `config.json` records about a classifier run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifierRunConfig {
    pub family: String,
    /// The preset name.
    pub model: String,
    pub classifier: ClassifierConfig,
    pub lr: f64,
    /// The learning rate decays to 0 along a half cosine over this many steps.
    pub lr_decay_steps: u64,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub precision: Precision,
    pub data: String,
}

genlab_core::run_kind!(ClassifierRunConfig, FAMILY);

impl ClassifierRunConfig {
    /// A run of preset `model` on data of `image_shape` with `num_classes` classes, for `steps` steps.
    pub fn from_preset(
        model: &str,
        image_shape: [i64; 3],
        num_classes: Option<usize>,
        data: &str,
        steps: u64,
    ) -> Result<Self> {
        let k = num_classes.ok_or_else(|| {
            EvalError::Config(format!("dataset `{data}` has no labels; a classifier needs a labelled dataset"))
        })?;
        let classifier = ClassifierConfig::preset(model, image_shape, k as i64)?;
        classifier.validate()?;
        Ok(ClassifierRunConfig {
            family: FAMILY.into(),
            model: model.into(),
            classifier,
            lr: 2e-3,
            lr_decay_steps: steps,
            weight_decay: 5e-4,
            batch_size: 128,
            precision: Precision::Fp32,
            data: data.into(),
        })
    }
}

pub struct ClassifierTask {
    pub vs: nn::VarStore,
    pub model: Classifier,
    pub opt: Adam,
    pub run: ClassifierRunConfig,
    pub scaler: Option<GradScaler>,
    last_images: Option<Tensor>,
    device: Device,
}

impl ClassifierTask {
    pub fn new(run: ClassifierRunConfig, device: Device) -> Result<Self> {
        run.precision.validate(device)?;
        let vs = nn::VarStore::new(device);
        let model = Classifier::new(vs.root(), run.classifier.clone())?;
        let opt = Adam::new(&vs, AdamConfig::adamw(run.lr, run.weight_decay))?;
        let scaler = run.precision.needs_scaler().then(GradScaler::default);
        Ok(ClassifierTask { vs, model, opt, run, scaler, last_images: None, device })
    }

    fn lr_at(&self, step: u64) -> f64 {
        let t = (step as f64 / self.run.lr_decay_steps.max(1) as f64).min(1.0);
        self.run.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

impl TrainTask for ClassifierTask {
    fn train_step(&mut self, batch: &Batch, step: u64) -> genlab_core::Result<StepOutput> {
        let labels = batch.labels.as_ref().ok_or_else(|| {
            genlab_core::CoreError::Config(format!("dataset `{}` yields batches without labels", self.run.data))
        })?;
        self.opt.set_lr(self.lr_at(step));
        let (_, logits) = self.run.precision.autocast(self.device, || self.model.forward_t(&batch.images, true));
        let loss = logits.to_kind(Kind::Float).cross_entropy_for_logits(labels);
        self.opt.backward_step_with(&loss, self.scaler.as_mut());
        let acc = logits.argmax(1, false).eq_tensor(labels).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        self.last_images = Some(batch.images.narrow(0, 0, batch.images.size()[0].min(64)).detach());
        Ok(StepOutput {
            loss: loss.double_value(&[]),
            metrics: vec![("batch_accuracy".into(), acc), ("lr".into(), self.opt.lr())],
        })
    }

    /// The classifier generates nothing: the monitoring grid shows the last training batch.
    fn samples(&mut self, n: i64) -> genlab_core::Result<Tensor> {
        let [c, h, w] = self.model.cfg.image_shape;
        Ok(match &self.last_images {
            Some(x) => x.narrow(0, 0, n.min(x.size()[0])),
            None => Tensor::zeros([1, c, h, w], (Kind::Float, self.device)),
        })
    }

    fn checkpoint_groups(&self) -> BTreeMap<String, Vec<(String, Tensor)>> {
        let mut g = BTreeMap::new();
        g.insert("model".into(), self.vs.variables().into_iter().collect());
        g.insert("optim".into(), self.opt.state_tensors());
        g
    }

    fn restore(&mut self, ckpt: &CheckpointReader) -> genlab_core::Result<()> {
        ckpt.load_group_into("model", &self.vs)?;
        self.opt.load_state_tensors(&ckpt.read_group("optim")?)
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.run).unwrap_or_default()
    }

    fn extra_state(&self) -> serde_json::Value {
        serde_json::json!({ "grad_scaler": self.scaler })
    }

    fn restore_extra_state(&mut self, state: &serde_json::Value) -> genlab_core::Result<()> {
        if let Some(scaler) = GradScaler::from_state(state)? {
            self.scaler = Some(scaler);
        }
        Ok(())
    }
}

/// Load a trained classifier from a run directory or checkpoint folder.
pub fn load(path: &std::path::Path, device: Device) -> Result<ClassifierFeatures> {
    let (ck, run) = genlab_core::run::open_checkpoint::<ClassifierRunConfig>(path)?;
    let vs = nn::VarStore::new(device);
    let model = Classifier::new(vs.root(), run.classifier.clone())?;
    ck.load_group_into("model", &vs)?;
    Ok(ClassifierFeatures { model, vs, source: path.display().to_string() })
}

/// Test accuracy of a classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub accuracy: f64,
    pub correct: u64,
    pub total: u64,
    /// Accuracy on each class's examples (NaN-free: a class without examples is left out as None).
    pub per_class: Vec<Option<f64>>,
}

/// Train a classifier run of preset `preset` on the labelled `data` for `opts.harness.steps`
/// steps (its learning rate decays over them), with `overrides`: `genlab eval train-classifier`.
pub fn fit(
    preset: &str,
    data: &genlab_data::DataSpec,
    overrides: &genlab_core::run::Overrides,
    opts: &genlab_core::run::FitOptions,
) -> Result<genlab_core::train::Outcome> {
    Ok(genlab_data::fit(
        opts,
        data,
        |ds| {
            let [c, h, w] = ds.shape();
            let shape = [c as i64, h as i64, w as i64];
            let run =
                ClassifierRunConfig::from_preset(preset, shape, ds.num_classes(), &data.spec, opts.harness.steps)?;
            genlab_core::run::apply_overrides(run, overrides)
        },
        |run, _, device| Ok(ClassifierTask::new(run, device)?),
    )?)
}

/// What `genlab eval train-classifier --test` writes to `RUN/eval.json`: the trained classifier's
/// accuracy on a labelled test set.
#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    pub data: String,
    pub test: String,
    pub steps: u64,
    pub train_seconds: f64,
    pub test_accuracy: f64,
    pub correct: u64,
    pub total: u64,
    pub per_class_accuracy: Vec<Option<f64>>,
}

/// Score the classifier run at `run` on `test` (read with `read`) and write the report to
/// `run/eval.json`; it trained `steps` steps in `train_seconds`.
pub fn write_test_report(
    run: &std::path::Path,
    test: &str,
    read: &genlab_data::OpenOptions,
    steps: u64,
    train_seconds: f64,
    device: Device,
) -> Result<TestReport> {
    let clf = load(run, device)?;
    let (_, cfg) = genlab_core::run::open_checkpoint::<ClassifierRunConfig>(run)?;
    let ds = genlab_data::open_with(test, read)?;
    let acc = accuracy(&clf.model, ds.as_ref(), 500)?;
    let report = TestReport {
        data: cfg.data.clone(),
        test: test.to_string(),
        steps,
        train_seconds,
        test_accuracy: acc.accuracy,
        correct: acc.correct,
        total: acc.total,
        per_class_accuracy: acc.per_class,
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| EvalError::Config(e.to_string()))?;
    genlab_core::checkpoint::write_atomic(&run.join("eval.json"), json.as_bytes())?;
    Ok(report)
}

/// Accuracy of `model` on every labelled item of `ds`, in batches of `batch`.
pub fn accuracy(model: &Classifier, ds: &dyn genlab_data::Dataset, batch: usize) -> Result<Accuracy> {
    let [c, h, w] = ds.shape();
    if [c as i64, h as i64, w as i64] != model.cfg.image_shape {
        return Err(EvalError::Shape(format!(
            "{}: images are {c}x{h}x{w}; the classifier was trained on {:?}",
            ds.describe(),
            model.cfg.image_shape
        )));
    }
    if ds.is_empty() {
        return Err(EvalError::TooFewSamples(format!("{}: no images", ds.describe())));
    }
    let k = model.cfg.num_classes as usize;
    let (mut right, mut seen) = (vec![0u64; k], vec![0u64; k]);
    for lo in (0..ds.len()).step_by(batch.max(1)) {
        let idx: Vec<usize> = (lo..(lo + batch.max(1)).min(ds.len())).collect();
        let (x, y) = genlab_data::batch_of(ds, &idx)?;
        let y = y.ok_or_else(|| EvalError::Config(format!("{}: unlabelled; accuracy needs labels", ds.describe())))?;
        let (_, logits) = tch::no_grad(|| model.forward_t(&x.to_device(model.device()), false));
        let pred = Vec::<i64>::try_from(logits.argmax(1, false).to_device(Device::Cpu))?;
        let truth = Vec::<i64>::try_from(y)?;
        for (p, t) in pred.into_iter().zip(truth) {
            let t = usize::try_from(t).ok().filter(|&t| t < k).ok_or_else(|| {
                EvalError::Config(format!("{}: label {t} is outside the classifier's {k} classes", ds.describe()))
            })?;
            seen[t] += 1;
            right[t] += u64::from(p as usize == t);
        }
    }
    let (correct, total) = (right.iter().sum::<u64>(), seen.iter().sum::<u64>());
    let per_class = right.iter().zip(&seen).map(|(&r, &s)| (s > 0).then(|| r as f64 / s as f64)).collect();
    Ok(Accuracy { accuracy: correct as f64 / total as f64, correct, total, per_class })
}
