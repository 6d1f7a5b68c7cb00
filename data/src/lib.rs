//! genlab-data: datasets and loaders.
//!
//! A dataset is anything with a length and items (a u8 image `C x H x W` and an optional
//! label): the built-in real sets ([`builtin`]), IDX files ([`idx`]), HDF5 files and
//! image folders. [`open`] turns the CLI's DATASET argument into one; [`loader::Loader`]
//! turns it into deterministic, sharded, prefetched batches.
pub mod builtin;
pub mod dataset;
pub mod error;
pub mod idx;
pub mod loader;

pub use dataset::{Dataset, InMemory, Item};
pub use error::{DataError, Result};
pub use loader::{Loader, LoaderConfig};

use std::sync::Arc;

/// Open a dataset as the CLI names it: a built-in name (`mnist5k`, `digits`,
/// `fashion-mnist`, `fashion-mnist:test`).
pub fn open(spec: &str) -> Result<Arc<dyn Dataset>> {
    if let Some(ds) = builtin::open_builtin(spec) {
        return Ok(Arc::new(ds?));
    }
    Err(DataError::Unknown(spec.to_string()))
}
