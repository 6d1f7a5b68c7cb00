/// Errors of the VAE family.
#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    #[error("{0}")]
    Config(String),
    #[error("shape: {0}")]
    Shape(String),
    #[error(transparent)]
    Core(#[from] genlab_core::CoreError),
    #[error(transparent)]
    Data(#[from] genlab_data::DataError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

pub type Result<T, E = VaeError> = std::result::Result<T, E>;

genlab_core::into_core_error!(VaeError);
