//! The eval crate's error type.
use std::path::PathBuf;

/// Everything that can go wrong in genlab-eval. Each variant names what and where.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("shape: {0}")]
    Shape(String),
    /// Too few samples for a statistic to be defined (or to be anything but noise).
    #[error("too few samples: {0}")]
    TooFewSamples(String),
    /// NaN or infinite values where numbers are needed, or pixels outside the expected range.
    #[error("values: {0}")]
    Values(String),
    #[error("{0}")]
    Config(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error(transparent)]
    Core(#[from] genlab_core::CoreError),
    #[error(transparent)]
    Data(#[from] genlab_data::DataError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

genlab_core::into_core_error!(EvalError);

pub type Result<T, E = EvalError> = std::result::Result<T, E>;

impl EvalError {
    pub(crate) fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        EvalError::File { path: path.into(), message: message.into() }
    }
}
