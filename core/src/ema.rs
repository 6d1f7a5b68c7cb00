//! Exponential moving average of model weights, for sampling (used by DDPM, GANs, StyleGAN2).
use crate::checkpoint::load_named_into;
use crate::error::{CoreError, Result};
use std::collections::HashMap;
use tch::{nn::VarStore, Tensor};

/// Shadow copies of every variable of a VarStore: `shadow <- decay * shadow + (1 - decay) * param`.
pub struct Ema {
    decay: f64,
    /// (name, live variable, shadow), sorted by name.
    entries: Vec<(String, Tensor, Tensor)>,
    updates: u64,
    /// Use `min(decay, (1 + n) / (10 + n))` so early averages are not dominated by the initialisation.
    pub warmup: bool,
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
        Ema { decay, entries, updates: 0, warmup: false }
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

    fn current_decay(&self) -> f64 {
        if self.warmup {
            let n = self.updates as f64;
            self.decay.min((1.0 + n) / (10.0 + n))
        } else {
            self.decay
        }
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
}
