/// Errors of the GAN family.
#[derive(Debug, thiserror::Error)]
pub enum GanError {
    #[error("{0}")]
    Config(String),
    #[error(
        "the {network} was built for images {expected:?} (channels, height, width), got a batch of shape {found:?}"
    )]
    ImageShape { network: &'static str, expected: [i64; 3], found: Vec<i64> },
    #[error("{path}: {message}")]
    Image { path: std::path::PathBuf, message: String },
    #[error("labels: {0}")]
    Labels(String),
    #[error("training collapsed: {0}")]
    Collapse(String),
    #[error("{path}: this checkpoint belongs to the `{found}` family, not `gan`")]
    WrongFamily { path: std::path::PathBuf, found: String },
    #[error(transparent)]
    Core(#[from] genlab_core::CoreError),
    #[error(transparent)]
    Data(#[from] genlab_data::DataError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = GanError> = std::result::Result<T, E>;

/// Into core's error for core's harness and loaders: a wrapped core error comes back as itself, any
/// other keeps its variant inside [`genlab_core::CoreError::Task`].
impl From<GanError> for genlab_core::CoreError {
    fn from(e: GanError) -> Self {
        match e {
            GanError::Core(c) => c,
            e => genlab_core::CoreError::task(e),
        }
    }
}
