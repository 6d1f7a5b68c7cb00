use std::path::PathBuf;

/// Everything that can go wrong reading data. Each variant names the file and, where it
/// applies, the index or byte offset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    // The io::Error is part of the message, not a `source`, so that printing the error
    // chain does not repeat it.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("unknown dataset `{0}`: expected a built-in name ({names}), cifar10:DIR, cifar10-test:DIR, an HDF5 file (file.h5 or file.h5:dataset), an IDX images file (*-idx3-ubyte[.gz]) or an image folder", names = crate::BUILTIN_NAMES.join(", "))]
    Unknown(String),
    #[error("dataset `{name}` is not installed: {hint}")]
    NotInstalled { name: String, hint: String },
    #[error("index {index} out of range for a dataset of {len} items")]
    Index { index: usize, len: usize },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Core(#[from] genlab_core::CoreError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl DataError {
    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Format { path: path.into(), message: message.into() }
    }
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), error: source }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

genlab_core::into_core_error!(DataError);
