//! Training any GAN-family run in one call: the library side of `genlab gan train`.
use crate::cyclegan::train::{self as cyclegan, CycleGanRunConfig, CycleGanTask, CycleSource};
use crate::error::{GanError, Result};
use crate::sr::train::{self as sr, SrRunConfig, SrTask};
use crate::stylegan2::train::{self as stylegan2, StyleGan2RunConfig, StyleGan2Task};
use crate::train::{GanRunConfig, GanTask};
use genlab_core::run::{apply_overrides, FitOptions, Overrides};
use genlab_core::train::Outcome;
use genlab_data::{DataSpec, Dataset};
use std::sync::Arc;

/// Settings of some kinds of GAN run beyond the preset and the [`Overrides`]; each is refused by
/// the kinds it does not apply to. With the `clap` feature, their flags.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct GanTrainOptions {
    /// Discriminator learning rate (two time scales); defaults to the preset's, or to --lr when given.
    /// Not for CycleGAN, whose one learning rate drives all four networks.
    #[cfg_attr(feature = "clap", arg(long))]
    pub lr_d: Option<f64>,
    /// Super-resolution factor: 2, 4 or 8 (srgan and srresnet; default 4). Fixed once a run starts.
    #[cfg_attr(feature = "clap", arg(long))]
    pub scale: Option<i64>,
    /// Pixel-only (SRResNet) steps before the adversarial term starts (srgan; default 1000).
    #[cfg_attr(feature = "clap", arg(long))]
    pub pretrain_steps: Option<u64>,
    /// CycleGAN: domain B (domain A is --data); never paired with A in training. Fixed once a
    /// run starts.
    #[cfg_attr(feature = "clap", arg(long))]
    pub data_b: Option<String>,
    /// DiffAugment for small datasets (dcgan, wgan, wgan-gp, cgan): a comma-separated policy of color,
    /// translation, cutout (the paper's choice: all three), applied to real and generated images before
    /// the discriminator. Fixed once a run starts.
    #[cfg_attr(feature = "clap", arg(long))]
    pub diffaug: Option<crate::diffaug::DiffAugment>,
}

/// The kinds of run of the GAN family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GanKind {
    /// DCGAN, WGAN, WGAN-GP, conditional GAN.
    Gan,
    SuperResolution,
    StyleGan2,
    CycleGan,
}

impl GanKind {
    /// The kind of a run's `config.json`, or of a new run of `preset`.
    pub fn of(preset: &str, config: Option<&serde_json::Value>) -> Self {
        let (c, s, g) = match config {
            Some(v) => (cyclegan::is_cyclegan_config(v), sr::is_sr_config(v), stylegan2::is_stylegan2_config(v)),
            None => (cyclegan::is_preset(preset), sr::is_preset(preset), stylegan2::is_preset(preset)),
        };
        match (c, s, g) {
            (true, _, _) => GanKind::CycleGan,
            (_, true, _) => GanKind::SuperResolution,
            (_, _, true) => GanKind::StyleGan2,
            _ => GanKind::Gan,
        }
    }
}

impl GanTrainOptions {
    /// Refuse the settings that do not apply to `kind` (`preset` names it in the message).
    pub fn check(&self, kind: GanKind, preset: &str) -> Result<()> {
        let bad = |m: String| Err(GanError::Config(m));
        if kind != GanKind::CycleGan && self.data_b.is_some() {
            return bad(format!("--data-b applies to --model cyclegan, not --model {preset}"));
        }
        if kind != GanKind::Gan && self.diffaug.is_some() {
            return bad(format!("--diffaug applies to dcgan, wgan, wgan-gp and cgan, not --model {preset}"));
        }
        match kind {
            GanKind::CycleGan if self.scale.is_some() || self.pretrain_steps.is_some() || self.lr_d.is_some() => {
                bad("--scale, --pretrain-steps and --lr-d do not apply to CycleGAN (one --lr for all four networks)"
                    .into())
            }
            GanKind::StyleGan2 if self.scale.is_some() || self.pretrain_steps.is_some() => {
                bad("--scale and --pretrain-steps apply to the super-resolution presets, not to StyleGAN2".into())
            }
            GanKind::Gan if self.scale.is_some() || self.pretrain_steps.is_some() => bad(format!(
                "--scale and --pretrain-steps apply to the super-resolution presets ({}), not --model {preset}",
                sr::PRESETS.join(", ")
            )),
            _ => Ok(()),
        }
    }
}

fn shape(ds: &Arc<dyn Dataset>) -> [i64; 3] {
    let [c, h, w] = ds.shape();
    [c as i64, h as i64, w as i64]
}

/// Train a run of preset `preset` on `data` with `overrides` and `extra`: a GAN, a
/// super-resolution model, a StyleGAN2 or a CycleGAN, whichever the preset names. A resumed run
/// keeps its own kind and configuration (a CycleGAN's domain B and a super-resolution factor
/// cannot change then).
pub fn fit(
    preset: &str,
    data: &DataSpec,
    overrides: &Overrides,
    extra: &GanTrainOptions,
    opts: &FitOptions,
) -> Result<Outcome> {
    let resumed = genlab_core::run::resumed_config(&opts.harness)?;
    let kind = GanKind::of(preset, resumed.as_ref());
    extra.check(kind, preset)?;
    let out = &opts.harness.out;
    let outcome = match kind {
        GanKind::Gan => genlab_data::fit(
            opts,
            data,
            |ds| {
                let run = GanRunConfig::from_preset(preset, shape(ds), ds.num_classes(), &data.spec)?;
                let mut run = apply_overrides(run, overrides)?;
                run.lr_d = extra.lr_d.unwrap_or(run.lr_d);
                run.diffaug = extra.diffaug.clone().unwrap_or(run.diffaug);
                run.validate()?;
                Ok(run)
            },
            |run, _, device| Ok(GanTask::new(run, device)?),
        )?,
        GanKind::SuperResolution => genlab_data::fit(
            opts,
            data,
            |ds| {
                let run = SrRunConfig::from_preset(preset, shape(ds), extra.scale, &data.spec)?;
                let mut run = apply_overrides(run, overrides)?;
                run.lr_d = extra.lr_d.unwrap_or(run.lr_d);
                run.pretrain_steps = extra.pretrain_steps.unwrap_or(run.pretrain_steps);
                run.validate()?;
                Ok(run)
            },
            |run, _, device| {
                if let Some(s) = extra.scale.filter(|s| *s != run.sr.scale) {
                    return Err(GanError::Config(format!(
                        "{}: the run upscales x{}; --scale {s} cannot change when resuming",
                        out.display(),
                        run.sr.scale
                    ))
                    .into());
                }
                Ok(SrTask::new(run, device)?)
            },
        )?,
        GanKind::StyleGan2 => genlab_data::fit(
            opts,
            data,
            |ds| {
                let run = StyleGan2RunConfig::from_preset(preset, shape(ds), &data.spec)?;
                let mut run = apply_overrides(run, overrides)?;
                run.lr_d = extra.lr_d.unwrap_or(run.lr_d);
                run.validate()?;
                Ok(run)
            },
            |run, _, device| Ok(StyleGan2Task::new(run, device)?),
        )?,
        GanKind::CycleGan => fit_cyclegan(preset, data, overrides, extra.data_b.as_deref(), opts)?,
    };
    Ok(outcome)
}

/// A CycleGAN trains on unpaired batches of two domains, `data` (A) and `data_b`.
fn fit_cyclegan(
    preset: &str,
    data: &DataSpec,
    overrides: &Overrides,
    data_b: Option<&str>,
    opts: &FitOptions,
) -> Result<Outcome> {
    let (out, seed) = (&opts.harness.out, opts.harness.seed);
    Ok(genlab_core::run::fit(
        opts,
        || {
            let Some(data_b) = data_b else {
                return Err(GanError::Config(
                    "--model cyclegan needs domain B: --data-b DATASET (domain A is --data)".into(),
                )
                .into());
            };
            let (ds_a, ds_b) = (data.open()?, data.with_spec(data_b).open()?);
            let shape = cyclegan::check_domains(ds_a.as_ref(), &data.spec, ds_b.as_ref(), data_b)?;
            let run = CycleGanRunConfig::from_preset(preset, shape, opts.harness.steps, &data.spec, data_b)?;
            let run = apply_overrides(run, overrides)?;
            run.validate()?;
            Ok(run)
        },
        |run| {
            if let Some(b) = data_b.filter(|b| *b != run.data_b) {
                return Err(GanError::Config(format!(
                    "{}: the run's domain B is `{}`; --data-b {b} cannot change when resuming",
                    out.display(),
                    run.data_b
                ))
                .into());
            }
            let (ds_a, ds_b) = (data.with_spec(&run.data).open()?, data.with_spec(&run.data_b).open()?);
            cyclegan::check_domains(ds_a.as_ref(), &run.data, ds_b.as_ref(), &run.data_b)?;
            let device = opts.device;
            Ok(Box::new(CycleSource::new(ds_a, ds_b, run.batch_size, seed, device)?)
                as Box<dyn genlab_core::train::BatchSource>)
        },
        |run, _, device| Ok(CycleGanTask::new(run, device)?),
    )?)
}
