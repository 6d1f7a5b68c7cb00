//! Numeric precision: fp32, or bf16/fp16 mixed precision through libtorch's autocast,
//! with a dynamic loss scaler for fp16 (the algorithm of `torch.amp.GradScaler`).
use crate::error::{CoreError, Result};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use tch::{Device, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    /// bfloat16 autocast (CPU and CUDA); no loss scaling needed.
    Bf16,
    /// float16 autocast (CUDA) with dynamic loss scaling.
    Fp16,
}

impl FromStr for Precision {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" | "32" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "fp16" | "f16" | "float16" | "16" | "half" => Ok(Precision::Fp16),
            _ => Err(CoreError::Precision(s.to_string())),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        })
    }
}

impl Precision {
    /// Check that this precision makes sense on `device`.
    pub fn validate(self, device: Device) -> Result<()> {
        match (self, device) {
            (Precision::Fp16, Device::Cpu) => Err(CoreError::Config(
                "fp16 mixed precision needs a CUDA device; on CPU use --precision bf16 or fp32".into(),
            )),
            (Precision::Bf16 | Precision::Fp16, Device::Mps) => {
                Err(CoreError::Config("mixed precision is not supported on MPS here; use --precision fp32".into()))
            }
            _ => Ok(()),
        }
    }

    /// Whether gradients need loss scaling.
    pub fn needs_scaler(self) -> bool {
        self == Precision::Fp16
    }

    /// Run `f` (a forward pass) under autocast for this precision on `device`.
    pub fn autocast<T>(self, device: Device, f: impl FnOnce() -> T) -> T {
        let dtype = match self {
            Precision::Fp32 => return f(),
            Precision::Bf16 => 1,
            Precision::Fp16 => 0,
        };
        let dev = match device {
            Device::Cpu => 0,
            Device::Cuda(_) => 1,
            _ => return f(),
        };
        let guard = shim::AutocastGuard::enter(dev, dtype);
        let out = f();
        drop(guard);
        out
    }
}

#[allow(unsafe_code)]
mod shim {
    extern "C" {
        fn genlab_autocast_enter(device: i32, dtype: i32) -> i32;
        fn genlab_autocast_exit(device: i32, prev: i32) -> i32;
    }

    /// Restores the previous autocast state on drop (also when the forward pass panics).
    pub(super) struct AutocastGuard {
        device: i32,
        prev: i32,
    }

    impl AutocastGuard {
        pub(super) fn enter(device: i32, dtype: i32) -> Self {
            // SAFETY: plain C functions over libtorch's thread-local autocast state;
            // they catch every C++ exception and take only integers.
            let prev = unsafe { genlab_autocast_enter(device, dtype) };
            AutocastGuard { device, prev }
        }
    }

    impl Drop for AutocastGuard {
        fn drop(&mut self) {
            // SAFETY: as above.
            unsafe {
                genlab_autocast_exit(self.device, self.prev);
            }
        }
    }
}

/// Dynamic loss scaling for fp16, as `torch.amp.GradScaler` does it: multiply the loss
/// by `scale`, unscale the gradients before the optimizer step, skip the step and halve
/// the scale when a gradient is not finite, double it after `growth_interval` good steps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GradScaler {
    pub scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: u64,
    /// Consecutive steps without an overflow.
    pub good_steps: u64,
}

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler { scale: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000, good_steps: 0 }
    }
}

impl GradScaler {
    /// The scaler saved under `grad_scaler` in a checkpoint's extra state (None when the run
    /// had none, e.g. an fp32 run).
    pub fn from_state(state: &serde_json::Value) -> Result<Option<Self>> {
        match state.get("grad_scaler").filter(|s| !s.is_null()) {
            None => Ok(None),
            Some(s) => serde_json::from_value(s.clone())
                .map(Some)
                .map_err(|e| CoreError::Config(format!("checkpoint state: bad grad_scaler: {e}"))),
        }
    }

    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        loss * self.scale
    }

    /// Divide every gradient by the scale in place; returns whether all are finite.
    pub fn unscale(&self, grads: &mut [Tensor]) -> bool {
        let inv = 1.0 / self.scale;
        let mut finite = true;
        for g in grads.iter_mut() {
            if !g.defined() {
                continue;
            }
            let _ = g.g_mul_scalar_(inv);
            let ok = g.isfinite().all().int64_value(&[]) == 1;
            finite &= ok;
        }
        finite
    }

    /// Update the scale after a step; `finite` is what [`GradScaler::unscale`] returned.
    /// Returns whether the optimizer step should be taken.
    pub fn update(&mut self, finite: bool) -> bool {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale *= self.growth_factor;
                self.good_steps = 0;
            }
            true
        } else {
            self.scale *= self.backoff_factor;
            self.good_steps = 0;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn parse_and_validate() {
        assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!("fp16".parse::<Precision>().unwrap(), Precision::Fp16);
        assert_eq!("fp32".parse::<Precision>().unwrap(), Precision::Fp32);
        assert!("fp8".parse::<Precision>().unwrap_err().to_string().contains("fp8"));
        assert!(Precision::Fp16.validate(Device::Cpu).is_err());
        assert!(Precision::Bf16.validate(Device::Cpu).is_ok());
    }

    #[test]
    fn bf16_autocast_on_cpu_runs_matmul_in_bf16_and_restores_state() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        let y = Precision::Bf16.autocast(Device::Cpu, || a.matmul(&b));
        assert_eq!(y.kind(), Kind::BFloat16);
        let y32 = a.matmul(&b);
        assert_eq!(y32.kind(), Kind::Float);
        let err = (y.to_kind(Kind::Float) - &y32).abs().max().double_value(&[]);
        assert!(err < 0.1, "bf16 matmul far from fp32: {err}");
        assert_eq!(Precision::Fp32.autocast(Device::Cpu, || a.matmul(&b)).kind(), Kind::Float);
    }

    #[test]
    fn scaler_backs_off_on_overflow_and_grows_after_interval() {
        let mut s = GradScaler { growth_interval: 2, ..Default::default() };
        let mut grads = vec![Tensor::from_slice(&[65536.0f32, 131072.0])];
        assert!(s.unscale(&mut grads));
        assert_eq!(Vec::<f32>::try_from(&grads[0]).unwrap(), vec![1.0, 2.0]);
        assert!(s.update(true));
        assert!(s.update(true));
        assert_eq!(s.scale, 131072.0);
        let mut bad = vec![Tensor::from_slice(&[f32::INFINITY, 1.0])];
        assert!(!s.unscale(&mut bad));
        assert!(!s.update(false));
        assert_eq!(s.scale, 65536.0);
        assert_eq!(s.good_steps, 0);
        // Checkpoint round trip through a task's extra state.
        let state = serde_json::json!({ "grad_scaler": s });
        assert_eq!(GradScaler::from_state(&state).unwrap(), Some(s));
        assert_eq!(GradScaler::from_state(&serde_json::json!({ "grad_scaler": null })).unwrap(), None);
        assert!(GradScaler::from_state(&serde_json::json!({ "grad_scaler": 3 })).is_err());
    }
}
