//! Training a VAE-family run in one call: the library side of `genlab vae train`.
use crate::error::Result;
use crate::train::{VaeRunConfig, VaeTask};
use crate::train_kl::{KlAutoencoderTask, KlRunConfig};
use genlab_core::run::{apply_overrides, FitOptions, Overrides};
use genlab_core::train::Outcome;
use genlab_data::{DataSpec, Dataset};
use std::sync::Arc;

fn shape(ds: &Arc<dyn Dataset>) -> [i64; 3] {
    let [c, h, w] = ds.shape();
    [c as i64, h as i64, w as i64]
}

/// Train a run of preset `preset` on `data` with `overrides`: a KL autoencoder for the presets of
/// [`crate::train_kl::PRESETS`], else a VAE. A resumed run (`opts.harness.resume` with a config in
/// the run directory) keeps its own kind and configuration.
pub fn fit(preset: &str, data: &DataSpec, overrides: &Overrides, opts: &FitOptions) -> Result<Outcome> {
    let kl = match genlab_core::run::resumed_config(&opts.harness)? {
        Some(config) => crate::train_kl::is_kl_config(&config),
        None => crate::train_kl::is_preset(preset),
    };
    let outcome = if kl {
        genlab_data::fit(
            opts,
            data,
            |ds| apply_overrides(KlRunConfig::from_preset(preset, shape(ds), &data.spec)?, overrides),
            |run, _, device| Ok(KlAutoencoderTask::new(run, device)?),
        )?
    } else {
        genlab_data::fit(
            opts,
            data,
            |ds| {
                let run = VaeRunConfig::from_preset(preset, shape(ds), ds.num_classes(), &data.spec)?;
                apply_overrides(run, overrides)
            },
            |run, _, device| Ok(VaeTask::new(run, device)?),
        )?
    };
    Ok(outcome)
}
