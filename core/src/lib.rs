//! genlab-core: what every genlab family shares.
//!
//! - [`device`]: `--device auto|cpu|cuda|cuda:N|mps`, with errors that say why CUDA is absent.
//! - [`precision`]: fp32, bf16 and fp16 autocast, and the fp16 loss scaler.
//! - [`seed`]: reproducible randomness derived from `(seed, step)`.
//! - [`checkpoint`]: safetensors checkpoints written atomically, key-mismatch reports.
//! - [`layers`]: conv blocks, ResNet blocks, attention, timestep embeddings, resampling.
//! - [`lora`]: low-rank adapters (LoRA) on linear and convolution layers, unfused or fused.
//! - [`ema`]: exponential moving averages of weights.
//! - [`optim`]: Adam/AdamW over one flat parameter buffer.
//! - [`images`]: sample batches to PNG grids, PNG folders or HDF5.
//! - [`dist`]: multi-process data-parallel training on PyTorch's c10d (Gloo, NCCL).
//! - [`launch`]: start N ranks of a program on this machine, as `torchrun --standalone` does.
//! - [`run`]: run configurations as types ([`run::RunKind`], [`run::read_config`]) and [`run::fit`].
//! - [`train`]: the training harness (progress, metrics, checkpoints, resume, Ctrl-C, NaN stops).
//! - [`tensorboard`]: TensorBoard event files (scalars and images) the harness writes.
//! - [`report`]: a run directory as one self-contained HTML page, and a table of runs.
pub mod checkpoint;
pub mod device;
pub mod dist;
pub mod ema;
pub mod error;
pub mod images;
pub mod launch;
pub mod layers;
pub mod lora;
pub mod optim;
pub mod precision;
pub mod report;
pub mod run;
pub mod seed;
pub mod tensorboard;
pub mod train;

pub use device::DeviceSpec;
pub use error::{CoreError, Result};
pub use precision::Precision;
pub use tch;
