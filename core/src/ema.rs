//! Exponential moving average of model weights, for sampling (used by DDPM, GANs, StyleGAN2).
use crate::checkpoint::load_named_into;
use crate::error::{CoreError, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tch::{nn::VarStore, Tensor};

/// How the decay of an [`Ema`] grows over its first updates, so that a young average is not held back
/// by the initial weights. `n` is the number of updates taken, and the decay never exceeds the
/// configured one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum EmaWarmup {
    /// The configured decay from the first update.
    Off,
    /// `(1 + n) / (10 + n)` (TensorFlow's `ExponentialMovingAverage` with `num_updates`): about 0.99
    /// after 1,000 updates, so a 0.999 decay is reached only after 9,000.
    Ratio,
    /// `1 - (1 + n / inv_gamma)^-power`, diffusers' `EMAModel` (`use_ema_warmup`) and
    /// ema-pytorch. With `inv_gamma` 1 and `power` 2/3 the average spans about the last third of the
    /// updates so far (0.99 at 1,000 updates, 0.999 at 31,600); 3/4 suits runs of a million steps.
    Power { inv_gamma: f64, power: f64 },
}

impl EmaWarmup {
    /// diffusers' and ema-pytorch's default warm-up, `Power { inv_gamma: 1, power: 2/3 }`.
    pub const POWER_2_3: EmaWarmup = EmaWarmup::Power { inv_gamma: 1.0, power: 2.0 / 3.0 };

    /// The decay after `updates` updates, at most `decay`.
    pub fn decay(self, decay: f64, updates: u64) -> f64 {
        let n = updates as f64;
        match self {
            EmaWarmup::Off => decay,
            EmaWarmup::Ratio => decay.min((1.0 + n) / (10.0 + n)),
            EmaWarmup::Power { inv_gamma, power } => decay.min(1.0 - (1.0 + n / inv_gamma).powf(-power)).max(0.0),
        }
    }

    /// `power` (diffusers' warm-up, [`EmaWarmup::POWER_2_3`]), `power:P` (another power),
    /// `ratio` or `off`, as `--ema-warmup` takes it.
    pub fn parse(s: &str) -> Result<Self> {
        let w = match s.split_once(':') {
            None if s == "power" => EmaWarmup::POWER_2_3,
            None if s == "ratio" => EmaWarmup::Ratio,
            None if s == "off" => EmaWarmup::Off,
            Some(("power", p)) => match p.parse::<f64>() {
                Ok(power) => EmaWarmup::Power { inv_gamma: 1.0, power },
                Err(_) => return Err(CoreError::Config(format!("EMA warm-up power:P needs a number P, got `{p}`"))),
            },
            _ => return Err(CoreError::Config(format!("EMA warm-up must be power, power:P, ratio or off, got `{s}`"))),
        };
        w.validate()?;
        Ok(w)
    }

    /// Check the parameters of a `Power` warm-up.
    pub fn validate(self) -> Result<()> {
        if let EmaWarmup::Power { inv_gamma, power } = self {
            if !(inv_gamma > 0.0 && inv_gamma.is_finite() && power > 0.0 && power.is_finite()) {
                return Err(CoreError::Config(format!(
                    "EMA warm-up needs a positive inv_gamma and power, got inv_gamma {inv_gamma}, power {power}"
                )));
            }
        }
        Ok(())
    }
}

/// Shadow copies of every variable of a VarStore: `shadow <- decay * shadow + (1 - decay) * param`.
pub struct Ema {
    decay: f64,
    /// (name, live variable, shadow), sorted by name.
    entries: Vec<(String, Tensor, Tensor)>,
    updates: u64,
    /// How the decay grows over the first updates (off by default).
    pub warmup: EmaWarmup,
}

impl std::fmt::Debug for Ema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ema").field("decay", &self.decay).field("tensors", &self.entries.len()).finish()
    }
}

impl Ema {
    pub fn new(vs: &VarStore, decay: f64) -> Self {
        let mut entries: Vec<(String, Tensor, Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| {
                let shadow = t.detach().copy();
                (n, t, shadow)
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ema { decay, entries, updates: 0, warmup: EmaWarmup::Off }
    }

    pub fn decay(&self) -> f64 {
        self.decay
    }

    /// Updates taken so far (the warm-up depends on it; checkpoint it with the weights).
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Restore the update count from a checkpoint.
    pub fn set_updates(&mut self, updates: u64) {
        self.updates = updates;
    }

    /// The decay the next update uses.
    pub fn current_decay(&self) -> f64 {
        self.warmup.decay(self.decay, self.updates)
    }

    pub fn update(&mut self) {
        let w = 1.0 - self.current_decay();
        tch::no_grad(|| {
            for (_, live, shadow) in self.entries.iter_mut() {
                if shadow.is_floating_point() {
                    let _ = shadow.lerp_(live, w);
                } else {
                    shadow.copy_(live);
                }
            }
        });
        self.updates += 1;
    }

    /// The averaged weights, named like the model's variables.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.entries.iter().map(|(n, _, s)| (n.clone(), s.shallow_clone())).collect()
    }

    pub fn load_state_tensors(&mut self, named: &[(String, Tensor)], origin: &std::path::Path) -> Result<()> {
        let expected: HashMap<String, Tensor> =
            self.entries.iter().map(|(n, _, s)| (n.clone(), s.shallow_clone())).collect();
        load_named_into(&expected, named, origin)
    }

    /// Copy the averaged weights into `target` (a VarStore with the same variable names).
    pub fn copy_to(&self, target: &VarStore) -> Result<()> {
        let vars = target.variables();
        let report = crate::checkpoint::compare_keys(&vars, &self.state_tensors());
        if !report.is_empty() {
            return Err(CoreError::Config(format!("EMA weights do not match the target model:\n{report}")));
        }
        tch::no_grad(|| {
            for (n, _, s) in &self.entries {
                vars[n].shallow_clone().copy_(s);
            }
        });
        Ok(())
    }
}

impl std::str::FromStr for EmaWarmup {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        EmaWarmup::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn tracks_the_closed_form_average() {
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().zeros("w", &[2]);
        let mut ema = Ema::new(&vs, 0.9);
        // The parameter jumps to 1 and stays: shadow_n = 1 - 0.9^n.
        tch::no_grad(|| {
            let _ = w.shallow_clone().fill_(1.0);
        });
        for _ in 0..5 {
            ema.update();
        }
        let got = ema.state_tensors()[0].1.double_value(&[0]);
        assert!((got - (1.0 - 0.9f64.powi(5))).abs() < 1e-6, "{got}");
        let target = VarStore::new(Device::Cpu);
        let t = target.root().ones("w", &[2]);
        ema.copy_to(&target).unwrap();
        assert!((t.double_value(&[1]) - got).abs() < 1e-7);
        let bad = VarStore::new(Device::Cpu);
        let _ = bad.root().zeros("v", &[2]);
        assert!(ema.copy_to(&bad).unwrap_err().to_string().contains("missing (1): v"));
    }

    #[test]
    fn warmups_follow_their_formulas() {
        // diffusers' EMAModel.get_decay: 1 - (1 + step / inv_gamma) ** -power, capped at the decay.
        let w = EmaWarmup::POWER_2_3;
        assert_eq!(w.decay(0.999, 0), 0.0);
        assert!((w.decay(0.999, 999) - (1.0 - 1000f64.powf(-2.0 / 3.0))).abs() < 1e-12);
        assert!((w.decay(0.999, 999) - 0.99).abs() < 1e-12, "{}", w.decay(0.999, 999));
        assert_eq!(w.decay(0.999, 1_000_000), 0.999);
        assert!((EmaWarmup::Ratio.decay(0.999, 90) - 0.91).abs() < 1e-12);
        assert_eq!(EmaWarmup::Off.decay(0.9, 0), 0.9);
        assert!(EmaWarmup::Power { inv_gamma: 0.0, power: 1.0 }.validate().is_err());
        assert_eq!("power".parse::<EmaWarmup>().unwrap(), EmaWarmup::POWER_2_3);
        assert_eq!("power:0.75".parse::<EmaWarmup>().unwrap(), EmaWarmup::Power { inv_gamma: 1.0, power: 0.75 });
        assert_eq!(("ratio".parse::<EmaWarmup>().unwrap(), "off".parse().unwrap()), (EmaWarmup::Ratio, EmaWarmup::Off));
        for bad in ["power:x", "power:-1", "linear"] {
            assert!(bad.parse::<EmaWarmup>().unwrap_err().to_string().contains(bad.rsplit(':').next().unwrap_or(bad)));
        }
        // The average after a jump from 0 to 1 at the first update follows the warm-up's decays.
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().zeros("w", &[1]);
        let mut ema = Ema::new(&vs, 0.999);
        ema.warmup = EmaWarmup::POWER_2_3;
        tch::no_grad(|| {
            let _ = w.shallow_clone().fill_(1.0);
        });
        ema.update();
        assert_eq!(ema.state_tensors()[0].1.double_value(&[0]), 1.0, "decay 0 at the first update");
        let json = serde_json::to_string(&EmaWarmup::POWER_2_3).unwrap();
        assert_eq!(serde_json::from_str::<EmaWarmup>(&json).unwrap(), EmaWarmup::POWER_2_3, "{json}");
    }
}
