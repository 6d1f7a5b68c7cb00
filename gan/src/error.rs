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
    #[error(transparent)]
    Core(#[from] genlab_core::CoreError),
    #[error(transparent)]
    Data(#[from] genlab_data::DataError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = GanError> = std::result::Result<T, E>;

genlab_core::into_core_error!(GanError);
