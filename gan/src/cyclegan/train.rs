//! The CycleGAN training step, plugged into genlab-core's harness (after
//! `models/cycle_gan_model.py` of junyanz/pytorch-CycleGAN-and-pix2pix).
//!
//! Each step: generators G_A (A -> B) and G_B (B -> A) are updated together on
//! `lsgan(D_A(G_A(a)), 1) + lsgan(D_B(G_B(b)), 1) + lambda (|G_B(G_A(a)) - a| + |G_A(G_B(b)) - b|)
//! + 0.5 lambda (|G_A(b) - b| + |G_B(a) - a|)`, then D_A on real B against pooled fakes G_A(a)
//! and D_B on real A against pooled fakes G_B(b) (`0.5 * LSGAN`). Adam(2e-4, 0.5, 0.999) for all
//! four networks; the learning rate is constant for `n_steps` steps and then falls linearly over
//! `n_steps_decay` (the reference's `linear` policy with epochs read as steps).
//!
//! Data: the two domains are never paired. [`CycleSource`] draws A and B batches from two
//! loaders with different seeds and concatenates them along the batch dimension (a
//! [`Batch`] holds one image tensor): the first half of `images` is domain A, the second B.
//!
//! Checkpoints hold the four networks, the four optimizers and both image pools, so a resumed
//! run continues with the pools it had. The pools' random choices come from libtorch's
//! generator, which the harness seeds per step.
//!
//! A run is a `gan`-family run with `"kind": "cyclegan"` in its `config.json`; [`load`] reads it.
use crate::cyclegan::loss::{self, LAMBDA_CYCLE, LAMBDA_IDENTITY};
use crate::cyclegan::model::{CycleGanConfig, NLayerDiscriminator, ResnetGenerator};
use crate::cyclegan::pool::{ImagePool, POOL_SIZE};
use crate::error::{GanError, Result};
use crate::train::FAMILY;
use genlab_core::checkpoint::CheckpointReader;
use genlab_core::optim::{Adam, AdamConfig};
use genlab_core::seed::Rng;
use genlab_core::train::{Batch, BatchSource, StepOutput, TrainTask};
use genlab_data::{Dataset, Loader, LoaderConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// `config.json`'s `kind` for a CycleGAN run.
pub const KIND: &str = "cyclegan";

/// The `--model` presets.
pub const PRESETS: &[&str] = &["cyclegan"];

pub fn is_preset(name: &str) -> bool {
    PRESETS.contains(&name)
}

/// Everything `config.json` records about a CycleGAN run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CycleGanRunConfig {
    pub family: String,
    /// Always [`KIND`].
    pub kind: String,
    pub model: String,
    pub nets: CycleGanConfig,
    /// [channels, height, width] of both domains.
    pub image_shape: [i64; 3],
    pub lambda_cycle: f64,
    /// Identity weight relative to `lambda_cycle` (0 turns the identity loss off).
    pub lambda_identity: f64,
    pub pool_size: usize,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Steps at the initial learning rate (`--n_epochs`, in steps).
    pub n_steps: u64,
    /// Steps of linear decay after that (`--n_epochs_decay`, in steps).
    pub n_steps_decay: u64,
    /// Images per domain per step (the paper: 1).
    pub batch_size: usize,
    /// Domain A.
    pub data: String,
    /// Domain B.
    pub data_b: String,
}

genlab_core::run_kind!(CycleGanRunConfig, crate::train::FAMILY, KIND, hint: |found| {
    (found.family == crate::train::FAMILY)
        .then(|| "train one with --model cyclegan --data A --data-b B".to_string())
});

impl CycleGanRunConfig {
    /// The paper's settings for `total_steps` (half constant, half decaying), with networks sized
    /// for small images: generator width 32 and 6 blocks, discriminator width 32, and a PatchGAN
    /// of 3 layers where the images allow it (2 below 32x32).
    pub fn from_preset(
        model: &str,
        image_shape: [i64; 3],
        total_steps: u64,
        data_a: &str,
        data_b: &str,
    ) -> Result<Self> {
        if !is_preset(model) {
            return Err(GanError::Config(format!(
                "unknown CycleGAN preset `{model}`: expected {}",
                PRESETS.join(", ")
            )));
        }
        let side = image_shape[1].min(image_shape[2]);
        let nets = CycleGanConfig {
            channels: image_shape[0],
            ngf: 32,
            n_blocks: 6,
            ndf: 32,
            n_layers_d: if side >= 32 { 3 } else { 2 },
        };
        let run = CycleGanRunConfig {
            family: FAMILY.into(),
            kind: KIND.into(),
            model: model.into(),
            nets,
            image_shape,
            lambda_cycle: LAMBDA_CYCLE,
            lambda_identity: LAMBDA_IDENTITY,
            pool_size: POOL_SIZE,
            lr: 2e-4,
            beta1: 0.5,
            beta2: 0.999,
            n_steps: total_steps / 2,
            n_steps_decay: total_steps - total_steps / 2,
            batch_size: 1,
            data: data_a.into(),
            data_b: data_b.into(),
        };
        run.validate()?;
        Ok(run)
    }

    pub fn validate(&self) -> Result<()> {
        self.nets.validate()?;
        self.nets.check_image_shape(self.image_shape)?;
        if self.batch_size < 1 || self.lr <= 0.0 || self.lambda_cycle < 0.0 || self.lambda_identity < 0.0 {
            return Err(GanError::Config(format!(
                "need batch_size >= 1, lr > 0 and non-negative lambdas; got batch_size {}, lr {}, lambda_cycle {}, lambda_identity {}",
                self.batch_size, self.lr, self.lambda_cycle, self.lambda_identity
            )));
        }
        Ok(())
    }

    /// The learning-rate factor before step `step` (0-based): 1 for the first `n_steps` steps,
    /// then `1 - (step + 1 - n_steps) / (n_steps_decay + 1)`, the reference's
    /// `1 - max(0, epoch + 1 - n_epochs) / (n_epochs_decay + 1)`; the last step of the decay
    /// runs at `1 / (n_steps_decay + 1)` and the factor is 0 from there on.
    pub fn lr_factor(&self, step: u64) -> f64 {
        let past = (step + 1).saturating_sub(self.n_steps) as f64;
        (1.0 - past / (self.n_steps_decay as f64 + 1.0)).max(0.0)
    }
}

/// Check that two domains can be translated into each other: the same channel count and size.
pub fn check_domains(a: &dyn Dataset, name_a: &str, b: &dyn Dataset, name_b: &str) -> Result<[i64; 3]> {
    let (sa, sb) = (a.shape(), b.shape());
    if sa[0] != sb[0] {
        return Err(GanError::Config(format!(
            "domain A `{name_a}` has {} channel(s) but domain B `{name_b}` has {}; open both with the same \
             channel count (e.g. --channels 3)",
            sa[0], sb[0]
        )));
    }
    if sa != sb {
        return Err(GanError::Config(format!(
            "domain A `{name_a}` has images of {}x{}x{} but domain B `{name_b}` has {}x{}x{}; resize both to one size \
             (e.g. --image-size)",
            sa[0], sa[1], sa[2], sb[0], sb[1], sb[2]
        )));
    }
    Ok(sa.map(|v| v as i64))
}

/// Unpaired batches of two domains: A and B come from loaders with different seeds, so their
/// index orders are independent. `images` is `cat([a, b])`, [2 * batch, c, h, w].
#[derive(Debug)]
pub struct CycleSource {
    a: Loader,
    b: Loader,
}

impl CycleSource {
    pub fn new(a: Arc<dyn Dataset>, b: Arc<dyn Dataset>, batch_size: usize, seed: u64, device: Device) -> Result<Self> {
        let seed_b = Rng::derive(seed, &[0xb]).next_u64();
        Ok(CycleSource {
            a: Loader::new(a, LoaderConfig::new(batch_size, seed, device))?,
            b: Loader::new(b, LoaderConfig::new(batch_size, seed_b, device))?,
        })
    }
}

impl BatchSource for CycleSource {
    fn seek(&mut self, step: u64) -> genlab_core::Result<()> {
        self.a.seek(step)?;
        self.b.seek(step)
    }

    fn next_batch(&mut self) -> genlab_core::Result<Batch> {
        let a = self.a.next_batch()?;
        let b = self.b.next_batch()?;
        Ok(Batch { images: Tensor::cat(&[a.images, b.images], 0), labels: None })
    }
}

/// Split a [`CycleSource`] batch into its A and B halves.
pub fn split_batch(images: &Tensor) -> Result<(Tensor, Tensor)> {
    let n = images.size().first().copied().unwrap_or(0);
    if n < 2 || n % 2 != 0 {
        return Err(GanError::Config(format!(
            "a CycleGAN batch is domain A then domain B along dimension 0, so an even size >= 2; got {:?}",
            images.size()
        )));
    }
    Ok((images.narrow(0, 0, n / 2), images.narrow(0, n / 2, n / 2)))
}

pub struct CycleGanTask {
    pub run: CycleGanRunConfig,
    pub vs_g_a: VarStore,
    pub g_a: ResnetGenerator,
    pub vs_g_b: VarStore,
    pub g_b: ResnetGenerator,
    pub vs_d_a: VarStore,
    pub d_a: NLayerDiscriminator,
    pub vs_d_b: VarStore,
    pub d_b: NLayerDiscriminator,
    opt: [Adam; 4],
    pub pool_a: ImagePool,
    pub pool_b: ImagePool,
    last: Option<(Tensor, Tensor)>,
    device: Device,
}

impl std::fmt::Debug for CycleGanTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CycleGanTask").field("run", &self.run).finish()
    }
}

const GROUPS: [&str; 4] = ["g_a", "g_b", "d_a", "d_b"];

impl CycleGanTask {
    pub fn new(run: CycleGanRunConfig, device: Device) -> Result<Self> {
        run.validate()?;
        let vs_g_a = VarStore::new(device);
        let g_a = ResnetGenerator::new(vs_g_a.root(), run.nets.clone())?;
        let vs_g_b = VarStore::new(device);
        let g_b = ResnetGenerator::new(vs_g_b.root(), run.nets.clone())?;
        let vs_d_a = VarStore::new(device);
        let d_a = NLayerDiscriminator::new(vs_d_a.root(), run.nets.clone())?;
        let vs_d_b = VarStore::new(device);
        let d_b = NLayerDiscriminator::new(vs_d_b.root(), run.nets.clone())?;
        let cfg = AdamConfig::adam(run.lr).betas(run.beta1, run.beta2);
        let opt =
            [Adam::new(&vs_g_a, cfg)?, Adam::new(&vs_g_b, cfg)?, Adam::new(&vs_d_a, cfg)?, Adam::new(&vs_d_b, cfg)?];
        let (pool_a, pool_b) = (ImagePool::new(run.pool_size), ImagePool::new(run.pool_size));
        Ok(CycleGanTask {
            run,
            vs_g_a,
            g_a,
            vs_g_b,
            g_b,
            vs_d_a,
            d_a,
            vs_d_b,
            d_b,
            opt,
            pool_a,
            pool_b,
            last: None,
            device,
        })
    }

    fn stores(&self) -> [&VarStore; 4] {
        [&self.vs_g_a, &self.vs_g_b, &self.vs_d_a, &self.vs_d_b]
    }

    fn check(&self, x: &Tensor, domain: &str) -> Result<()> {
        let s = x.size();
        if s.len() != 4 || s[1..] != self.run.image_shape[..] {
            return Err(GanError::ImageShape {
                network: if domain == "A" { "CycleGAN (domain A)" } else { "CycleGAN (domain B)" },
                expected: self.run.image_shape,
                found: s,
            });
        }
        Ok(())
    }

    /// One CycleGAN update on unpaired batches `real_a`, `real_b` ([n, c, h, w] each).
    pub fn step_on(&mut self, real_a: &Tensor, real_b: &Tensor, step: u64) -> Result<StepOutput> {
        self.check(real_a, "A")?;
        self.check(real_b, "B")?;
        let lr = self.run.lr * self.run.lr_factor(step);
        for o in &mut self.opt {
            o.set_lr(lr);
        }
        let run = &self.run;
        let fake_b = self.g_a.forward(real_a)?;
        let rec_a = self.g_b.forward(&fake_b)?;
        let fake_a = self.g_b.forward(real_b)?;
        let rec_b = self.g_a.forward(&fake_a)?;
        let cycle_a = loss::cycle_loss(&rec_a, real_a, run.lambda_cycle);
        let cycle_b = loss::cycle_loss(&rec_b, real_b, run.lambda_cycle);
        let mut g_loss = loss::lsgan(&self.d_a.forward(&fake_b)?, true)
            + loss::lsgan(&self.d_b.forward(&fake_a)?, true)
            + &cycle_a
            + &cycle_b;
        let mut idt = 0.0;
        if run.lambda_identity > 0.0 {
            let idt_a = loss::identity_loss(&self.g_a.forward(real_b)?, real_b, run.lambda_cycle, run.lambda_identity);
            let idt_b = loss::identity_loss(&self.g_b.forward(real_a)?, real_a, run.lambda_cycle, run.lambda_identity);
            let sum = idt_a + idt_b;
            idt = sum.double_value(&[]);
            g_loss += sum;
        }
        for o in &mut self.opt {
            o.zero_grad();
        }
        g_loss.backward();
        self.opt[0].step();
        self.opt[1].step();

        // The pools' choices use libtorch's generator (seeded by the harness for this step).
        let seed = Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]) as u64;
        let mut rng = Rng::new(seed);
        let pooled_b = self.pool_b.query(&fake_b, &mut rng);
        let pooled_a = self.pool_a.query(&fake_a, &mut rng);
        let d_a_loss = loss::discriminator_loss(&self.d_a.forward(real_b)?, &self.d_a.forward(&pooled_b)?);
        let d_b_loss = loss::discriminator_loss(&self.d_b.forward(real_a)?, &self.d_b.forward(&pooled_a)?);
        self.opt[2].zero_grad();
        self.opt[3].zero_grad();
        (&d_a_loss + &d_b_loss).backward();
        self.opt[2].step();
        self.opt[3].step();

        let lambda = run.lambda_cycle.max(f64::MIN_POSITIVE);
        let metrics = vec![
            ("d_a".to_string(), d_a_loss.double_value(&[])),
            ("d_b".to_string(), d_b_loss.double_value(&[])),
            ("cycle_a_l1".to_string(), cycle_a.double_value(&[]) / lambda),
            ("cycle_b_l1".to_string(), cycle_b.double_value(&[]) / lambda),
            ("identity".to_string(), idt),
            ("lr".to_string(), lr),
        ];
        self.last = Some((real_a.detach().shallow_clone(), real_b.detach().shallow_clone()));
        Ok(StepOutput { loss: g_loss.double_value(&[]), metrics })
    }

    /// Rows of A | G_A(A) | B | G_B(B) for `m` image pairs of the latest batch (random images
    /// before the first step), with `4 m <= n`.
    ///
    /// # Shapes
    /// - returns [4 m, c, h, w]
    pub fn grid(&self, n: i64) -> Result<Tensor> {
        let (a, b) = match &self.last {
            Some((a, b)) => (a.shallow_clone(), b.shallow_clone()),
            None => {
                let [c, h, w] = self.run.image_shape;
                let r = || Tensor::rand([1, c, h, w], (Kind::Float, self.device)) * 2.0 - 1.0;
                (r(), r())
            }
        };
        let m = (n / 4).clamp(1, a.size()[0]);
        let (a, b) = (a.narrow(0, 0, m), b.narrow(0, 0, m));
        let _guard = tch::no_grad_guard();
        let (ab, ba) = (self.g_a.forward(&a)?, self.g_b.forward(&b)?);
        Ok(Tensor::stack(&[a, ab, b, ba], 1).flatten(0, 1))
    }
}

impl TrainTask for CycleGanTask {
    fn train_step(&mut self, batch: &Batch, step: u64) -> genlab_core::Result<StepOutput> {
        let (a, b) = split_batch(&batch.images)?;
        Ok(self.step_on(&a, &b, step)?)
    }

    /// A | G_A(A) | B | G_B(B) rows of the latest batch (see [`CycleGanTask::grid`]).
    fn samples(&mut self, n: i64) -> genlab_core::Result<Tensor> {
        Ok(self.grid(n)?)
    }

    fn checkpoint_groups(&self) -> BTreeMap<String, Vec<(String, Tensor)>> {
        let mut g = BTreeMap::new();
        for ((name, vs), opt) in GROUPS.iter().zip(self.stores()).zip(&self.opt) {
            g.insert(name.to_string(), vs.variables().into_iter().collect());
            g.insert(format!("optim_{name}"), opt.state_tensors());
        }
        for (name, pool) in [("pool_a", &self.pool_a), ("pool_b", &self.pool_b)] {
            if let Some(t) = pool.to_tensor() {
                g.insert(name.to_string(), vec![("images".to_string(), t)]);
            }
        }
        g
    }

    fn restore(&mut self, ckpt: &CheckpointReader) -> genlab_core::Result<()> {
        for (name, vs) in GROUPS.iter().zip(self.stores()) {
            ckpt.load_group_into(name, vs)?;
        }
        for (name, opt) in GROUPS.iter().zip(self.opt.iter_mut()) {
            opt.load_state_tensors(&ckpt.read_group(&format!("optim_{name}"))?)?;
        }
        for (name, pool) in [("pool_a", &mut self.pool_a), ("pool_b", &mut self.pool_b)] {
            *pool = ImagePool::new(self.run.pool_size);
            if ckpt.has_group(name) {
                if let Some((_, t)) = ckpt.read_group(name)?.into_iter().find(|(k, _)| k == "images") {
                    pool.load(&t.to_device(self.device));
                }
            }
        }
        Ok(())
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.run).unwrap_or_default()
    }
}

/// Whether a `config.json` value describes a CycleGAN run.
pub fn is_cyclegan_config(config: &serde_json::Value) -> bool {
    config.get("kind").and_then(|k| k.as_str()) == Some(KIND)
}

/// Whether the run directory or checkpoint folder at `path` holds a CycleGAN run.
pub fn is_cyclegan_run(path: &std::path::Path) -> Result<bool> {
    Ok(is_cyclegan_config(&genlab_core::train::open_checkpoint(path)?.config))
}

/// A trained CycleGAN's two generators.
#[derive(Debug)]
pub struct CycleGanGenerators {
    pub run: CycleGanRunConfig,
    /// A -> B.
    pub g_a: ResnetGenerator,
    /// B -> A.
    pub g_b: ResnetGenerator,
    pub step: u64,
    vs: [VarStore; 2],
}

impl CycleGanGenerators {
    /// Where the generators' weights are.
    pub fn device(&self) -> Device {
        self.vs[0].device()
    }
}

/// Load both generators of a CycleGAN run directory or checkpoint folder.
pub fn load(path: &std::path::Path, device: Device) -> Result<CycleGanGenerators> {
    let (ck, run) = genlab_core::run::open_checkpoint::<CycleGanRunConfig>(path)?;
    let (vs_a, vs_b) = (VarStore::new(device), VarStore::new(device));
    let g_a = ResnetGenerator::new(vs_a.root(), run.nets.clone())?;
    let g_b = ResnetGenerator::new(vs_b.root(), run.nets.clone())?;
    ck.load_group_into("g_a", &vs_a)?;
    ck.load_group_into("g_b", &vs_b)?;
    let step = ck.step();
    Ok(CycleGanGenerators { run, g_a, g_b, step, vs: [vs_a, vs_b] })
}
