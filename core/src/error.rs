//! The core crate's error type.
use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong in genlab-core. Each variant names what and where.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("invalid device `{spec}`: {reason}")]
    Device { spec: String, reason: String },
    #[error("invalid precision `{0}`: expected fp32, bf16 or fp16")]
    Precision(String),
    // The io::Error is part of the message, not a `source`, so that printing the error
    // chain does not repeat it.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: checkpoint does not match the model:\n{report}")]
    KeyMismatch { path: PathBuf, report: String },
    /// A run directory of another family or kind than the one asked for.
    #[error("{0}")]
    WrongRunKind(Box<WrongKind>),
    #[error("no checkpoint found in {0}")]
    NoCheckpoint(PathBuf),
    #[error("shape error: {0}")]
    Shape(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("training diverged at step {step}: {what} is {value}; the last good checkpoint is {last_good}")]
    NonFinite { step: u64, what: String, value: f64, last_good: String },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("hdf5 {path}: {message}")]
    Hdf5 { path: PathBuf, message: String },
    #[error("distributed run, rank {rank} of {world}: {what} failed: {message}")]
    Dist { rank: usize, world: usize, what: String, message: String },
    /// An error of another genlab crate (a family's training step or sampler, a data loader) that
    /// reached core's harness, kept whole: [`CoreError::downcast_ref`] gives back the original error
    /// with its variant, and the message is the original's.
    #[error(transparent)]
    Task(Box<dyn std::error::Error + Send + Sync + 'static>),
    #[error("{0}")]
    Other(String),
}

/// A family and, for a family's other kinds of run, the kind: `gan`, `gan/sr`, `vae/autoencoder-kl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunId {
    pub family: String,
    /// `None` for the family's plain run (its config.json has no `kind`).
    pub kind: Option<String>,
}

impl RunId {
    /// The family and kind a run's `config.json` records (`unknown` when it names no family).
    pub fn of_config(config: &serde_json::Value) -> Self {
        let text = |k: &str| config.get(k).and_then(|v| v.as_str()).map(str::to_string);
        RunId { family: text("family").unwrap_or_else(|| "unknown".into()), kind: text("kind") }
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Some(k) => write!(f, "{}/{k}", self.family),
            None => f.write_str(&self.family),
        }
    }
}

/// What [`CoreError::WrongRunKind`] holds: the run, the kind expected and the kind found, and a
/// hint (empty, or " (...)") that says what reads the run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrongKind {
    pub run: PathBuf,
    pub expected: RunId,
    pub found: RunId,
    pub hint: String,
}

impl fmt::Display for WrongKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (run, expected, found, hint) = (self.run.display(), &self.expected, &self.found, &self.hint);
        if found.family != expected.family {
            write!(
                f,
                "{run}: this checkpoint belongs to the `{}` family, not `{}`{hint}",
                found.family, expected.family
            )
        } else {
            write!(f, "{run}: this is a `{found}` run, not a `{expected}` run{hint}")
        }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

impl CoreError {
    /// Wrap another crate's error, keeping its type and variant (see [`CoreError::Task`]).
    pub fn task(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        CoreError::Task(Box::new(e))
    }

    /// The wrapped error of a [`CoreError::Task`] as `E`, if it is one.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            CoreError::Task(e) => e.downcast_ref::<E>(),
            _ => None,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io { path: path.into(), error: source }
    }
    pub(crate) fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        CoreError::File { path: path.into(), message: message.into() }
    }
}

/// `impl From<E> for CoreError` for another genlab crate's error enum `E` that has a
/// `Core(CoreError)` variant: a wrapped core error comes back out as itself, any other variant
/// is kept whole in [`CoreError::Task`].
#[macro_export]
macro_rules! into_core_error {
    ($ty:ident) => {
        impl From<$ty> for $crate::CoreError {
            fn from(e: $ty) -> Self {
                match e {
                    $ty::Core(c) => c,
                    e => $crate::CoreError::task(e),
                }
            }
        }
    };
}
