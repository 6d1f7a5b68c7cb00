//! The diffusion crate's error type.

/// Everything that can go wrong building a schedule, running a scheduler, or building, training
/// and sampling a U-Net.
/// Each variant says what was expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    #[error("invalid schedule configuration: {0}")]
    Config(String),
    #[error("unknown {what} `{found}`: expected one of {expected}")]
    UnknownName { what: &'static str, found: String, expected: String },
    #[error("invalid number of inference steps {steps}: expected 1..={num_train_timesteps} (num_train_timesteps)")]
    InferenceSteps { steps: usize, num_train_timesteps: usize },
    #[error(
        "{scheduler}: {steps} inference steps give timesteps that are not strictly decreasing inside \
         0..{num_train_timesteps} ({problem}){hint}"
    )]
    DegenerateTimesteps {
        scheduler: &'static str,
        steps: usize,
        /// Where the timesteps break down, e.g. "500 follows 500 at position 501".
        problem: String,
        num_train_timesteps: usize,
        hint: &'static str,
    },
    #[error("{scheduler}: call set_timesteps before step")]
    NotInitialized { scheduler: &'static str },
    #[error("{scheduler}: timestep {timestep} is not one of this schedule's timesteps {timesteps:?}")]
    UnknownTimestep { scheduler: &'static str, timestep: f64, timesteps: Vec<f64> },
    #[error(
        "{scheduler}: step called {calls} times, but the schedule has only {len} timesteps; \
         call set_timesteps again to start a new loop"
    )]
    PastLastStep { scheduler: &'static str, calls: usize, len: usize },
    #[error("timestep {timestep} is out of range: expected {expected}")]
    TrainTimestep { timestep: f64, expected: String },
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("class labels: {0}")]
    Labels(String),
    #[error(
        "guidance scale {guidance_scale} needs a class-conditional model; this one is unconditional \
         (train with --cond, or sample with guidance 1)"
    )]
    UnconditionalGuidance { guidance_scale: f64 },
    #[error("{path}: {message}")]
    Image { path: std::path::PathBuf, message: String },
    #[error("latent diffusion: {0}")]
    Latent(String),
    #[error("{path}: {message}")]
    Autoencoder { path: std::path::PathBuf, message: String },
    #[error(
        "the autoencoder {path} was trained on images of shape {autoencoder:?} ([channels, height, width]), \
         but the data `{data}` has shape {data_shape:?}: train an autoencoder on this data (or of its shape)"
    )]
    AutoencoderShape { path: std::path::PathBuf, autoencoder: [i64; 3], data: String, data_shape: [i64; 3] },
    #[error("{path}: {message}")]
    Tokenizer { path: std::path::PathBuf, message: String },
    /// A pretrained model's file or folder: missing, unreadable, or with a bad config.json.
    #[error("{path}: {message}")]
    Model { path: std::path::PathBuf, message: String },
    /// A LoRA file: unreadable, of an unsupported kind, or not fitting the model (names the keys and shapes).
    #[error("{path}: {message}")]
    Lora { path: std::path::PathBuf, message: String },
    /// A textual-inversion embedding file: unreadable, of another layout, or not fitting the model.
    #[error("{path}: {message}")]
    Embedding { path: std::path::PathBuf, message: String },
    /// A configuration value genlab does not implement (named, with the supported values).
    #[error("unsupported model configuration: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Core(#[from] genlab_core::CoreError),
    #[error(transparent)]
    Data(#[from] genlab_data::DataError),
    #[error("autoencoder: {0}")]
    Vae(#[from] genlab_vae::VaeError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = DiffusionError> = std::result::Result<T, E>;

/// [`DiffusionError::Model`] for `path`.
pub(crate) fn model_err(path: &std::path::Path, message: impl Into<String>) -> DiffusionError {
    DiffusionError::Model { path: path.to_path_buf(), message: message.into() }
}

genlab_core::into_core_error!(DiffusionError);
