//! Device selection: `auto`, `cpu`, `cuda`, `cuda:N`, `mps`.
//!
//! Asking for CUDA where there is none is an error that says why: libtorch built
//! without CUDA, or a CUDA libtorch on a machine where no GPU is visible.
use crate::error::{CoreError, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use tch::Device;

/// A device as a user writes it on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(into = "String", try_from = "String")]
pub enum DeviceSpec {
    /// The first CUDA GPU when there is one, else Apple's MPS when there is one, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// `cuda` (the first GPU) or `cuda:N`.
    Cuda(usize),
    Mps,
}

impl FromStr for DeviceSpec {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let bad = |reason: &str| CoreError::Device { spec: s.to_string(), reason: reason.to_string() };
        match t.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            "mps" => Ok(DeviceSpec::Mps),
            _ => match t.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map(DeviceSpec::Cuda)
                    .map_err(|_| bad("the GPU index after `cuda:` must be a non-negative integer")),
                None => Err(bad("expected auto, cpu, cuda, cuda:N or mps")),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceSpec::Mps => write!(f, "mps"),
        }
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = CoreError;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

/// What this process can see: used to turn a [`DeviceSpec`] into a [`Device`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Availability {
    /// libtorch's CUDA library is loaded into this process.
    pub libtorch_has_cuda: bool,
    /// Number of CUDA devices visible (0 without a GPU or driver).
    pub cuda_devices: usize,
    pub mps: bool,
}

impl Availability {
    /// Probe the running process.
    pub fn probe() -> Self {
        Availability {
            libtorch_has_cuda: libtorch_cuda_loaded(),
            cuda_devices: if tch::Cuda::is_available() { tch::Cuda::device_count().max(0) as usize } else { 0 },
            mps: tch::utils::has_mps(),
        }
    }
}

/// Whether libtorch_cuda is mapped into this process. The build links it with
/// `--no-as-needed` whenever the libtorch build ships it, so its absence means
/// a CPU-only libtorch.
fn libtorch_cuda_loaded() -> bool {
    match std::fs::read_to_string("/proc/self/maps") {
        Ok(maps) => maps.contains("libtorch_cuda"),
        // Not Linux: fall back to what libtorch says.
        Err(_) => tch::utils::has_cuda(),
    }
}

impl DeviceSpec {
    /// Resolve against this process. In a distributed run (see [`crate::dist`]) `auto`
    /// and `cuda` mean this rank's GPU, `cuda:LOCAL_RANK`.
    pub fn resolve(self) -> Result<Device> {
        let avail = Availability::probe();
        match crate::dist::group() {
            Some(g) => self.resolve_for_local_rank(g.local_rank(), &avail),
            None => self.resolve_with(&avail),
        }
    }

    /// [`DeviceSpec::resolve_with`] for the process of local rank `local_rank` of a
    /// distributed run: one GPU per process, as torchrun expects. An explicit `cuda:N`
    /// with N > 0 is kept.
    pub fn resolve_for_local_rank(self, local_rank: usize, avail: &Availability) -> Result<Device> {
        match self {
            DeviceSpec::Auto | DeviceSpec::Cuda(0) if avail.cuda_devices > 0 => {
                DeviceSpec::Cuda(local_rank).resolve_with(avail)
            }
            _ => self.resolve_with(avail),
        }
    }

    /// Resolve against a given availability (testable without a GPU).
    pub fn resolve_with(self, avail: &Availability) -> Result<Device> {
        let err = |reason: String| CoreError::Device { spec: self.to_string(), reason };
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Auto => Ok(if avail.cuda_devices > 0 {
                Device::Cuda(0)
            } else if avail.mps {
                Device::Mps
            } else {
                Device::Cpu
            }),
            DeviceSpec::Mps => {
                if avail.mps {
                    Ok(Device::Mps)
                } else {
                    Err(err(
                        "MPS is not available: it needs macOS on Apple silicon and a libtorch built with MPS".into()
                    ))
                }
            }
            DeviceSpec::Cuda(i) => {
                if !avail.libtorch_has_cuda {
                    Err(err(format!(
                        "this libtorch was built without CUDA ({}); install a CUDA build of torch==2.13.0 and rerun `cargo xtask setup`",
                        libtorch_location()
                    )))
                } else if avail.cuda_devices == 0 {
                    Err(err(
                        "libtorch has CUDA, but this machine shows no GPU (no NVIDIA driver or device, or CUDA_VISIBLE_DEVICES hides them)".into(),
                    ))
                } else if i >= avail.cuda_devices {
                    Err(err(format!(
                        "GPU index {i} is out of range: {} GPU(s) visible (cuda:0..cuda:{})",
                        avail.cuda_devices,
                        avail.cuda_devices - 1
                    )))
                } else {
                    Ok(Device::Cuda(i))
                }
            }
        }
    }
}

fn libtorch_location() -> String {
    match option_env!("GENLAB_LIBTORCH_LIB") {
        Some(p) => format!("libtorch at {p}"),
        None => "libtorch location unknown".into(),
    }
}

/// A short description of the compute devices, for `genlab info` and logs.
pub fn describe() -> String {
    let a = Availability::probe();
    format!(
        "{}; libtorch CUDA: {}; GPUs: {}; MPS: {}; threads: {}",
        libtorch_location(),
        if a.libtorch_has_cuda { "yes" } else { "no" },
        a.cuda_devices,
        if a.mps { "yes" } else { "no" },
        tch::get_num_threads()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("CPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("mps".parse::<DeviceSpec>().unwrap(), DeviceSpec::Mps);
        for bad in ["cuda:", "cuda:-1", "cuda:x", "tpu", "", "cuda:1:2"] {
            let e = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
        for d in [DeviceSpec::Auto, DeviceSpec::Cpu, DeviceSpec::Cuda(2), DeviceSpec::Mps] {
            assert_eq!(d.to_string().parse::<DeviceSpec>().unwrap(), d);
        }
    }

    #[test]
    fn cuda_errors_say_why() {
        let no_lib = Availability { libtorch_has_cuda: false, cuda_devices: 0, mps: false };
        let no_gpu = Availability { libtorch_has_cuda: true, cuda_devices: 0, mps: false };
        let two = Availability { libtorch_has_cuda: true, cuda_devices: 2, mps: false };
        let e = DeviceSpec::Cuda(0).resolve_with(&no_lib).unwrap_err().to_string();
        assert!(e.contains("built without CUDA"), "{e}");
        let e = DeviceSpec::Cuda(0).resolve_with(&no_gpu).unwrap_err().to_string();
        assert!(e.contains("no GPU"), "{e}");
        let e = DeviceSpec::Cuda(2).resolve_with(&two).unwrap_err().to_string();
        assert!(e.contains("out of range") && e.contains("2 GPU"), "{e}");
        assert_eq!(DeviceSpec::Cuda(1).resolve_with(&two).unwrap(), Device::Cuda(1));
        assert_eq!(DeviceSpec::Auto.resolve_with(&two).unwrap(), Device::Cuda(0));
        assert_eq!(DeviceSpec::Auto.resolve_with(&no_gpu).unwrap(), Device::Cpu);
        assert!(DeviceSpec::Mps.resolve_with(&no_gpu).is_err());
        assert_eq!(DeviceSpec::Auto.resolve_for_local_rank(1, &two).unwrap(), Device::Cuda(1));
        assert_eq!(DeviceSpec::Cuda(0).resolve_for_local_rank(1, &two).unwrap(), Device::Cuda(1));
        assert_eq!(DeviceSpec::Cpu.resolve_for_local_rank(1, &two).unwrap(), Device::Cpu);
        assert_eq!(DeviceSpec::Auto.resolve_for_local_rank(1, &no_gpu).unwrap(), Device::Cpu);
        assert!(DeviceSpec::Auto.resolve_for_local_rank(2, &two).is_err());
    }

    #[test]
    fn cpu_always_resolves_and_probe_is_consistent() {
        assert_eq!(DeviceSpec::Cpu.resolve().unwrap(), Device::Cpu);
        let a = Availability::probe();
        if a.cuda_devices > 0 {
            assert!(a.libtorch_has_cuda);
        }
        // The build links libtorch_cuda whenever the libtorch in use ships it.
        if let Some(lib) = option_env!("GENLAB_LIBTORCH_LIB") {
            let ships = std::path::Path::new(lib).join("libtorch_cuda.so").exists();
            if cfg!(target_os = "linux") {
                assert_eq!(a.libtorch_has_cuda, ships, "libtorch_cuda.so in {lib} but not loaded");
            }
        }
    }
}
