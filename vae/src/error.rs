/// Errors of the VAE family.
#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    #[error("{0}")]
    Config(String),
    #[error("shape: {0}")]
    Shape(String),
    #[error("{path}: this checkpoint belongs to the `{found}` family, not `vae`")]
    WrongFamily { path: std::path::PathBuf, found: String },
    #[error(transparent)]
    Core(#[from] genlab_core::CoreError),
    #[error(transparent)]
    Data(#[from] genlab_data::DataError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = VaeError> = std::result::Result<T, E>;

/// Into core's error for core's harness and loaders: a wrapped core error comes back as itself, any
/// other keeps its variant inside [`genlab_core::CoreError::Task`].
impl From<VaeError> for genlab_core::CoreError {
    fn from(e: VaeError) -> Self {
        match e {
            VaeError::Core(c) => c,
            e => genlab_core::CoreError::task(e),
        }
    }
}
