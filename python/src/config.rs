//! Turning the Python constructors' arguments into a [`Builder`].
//!
//! [`apply_max_disk_size`] adds the disk budget; [`endpoint_storage_order`]
//! gives `EndpointStorage` the exact LRU order it promises.

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use spillstore::Builder;

/// The arguments shared by every Python constructor, as Python passed them.
pub(crate) struct Settings {
    pub(crate) max_size: Option<u64>,
    pub(crate) max_object_size: Option<u64>,
    pub(crate) dump_dir: Option<PathBuf>,
    pub(crate) shards: Option<usize>,
    pub(crate) max_disk_size: Option<u64>,
    /// `Builder::clean_ahead`, if given.
    pub(crate) clean_ahead: Option<u64>,
}

/// A size argument: `None`, or a non-negative int. Negative sizes are a
/// `ValueError` (not PyO3's `OverflowError`), like every other bad setting.
pub(crate) fn size_arg(name: &str, value: Option<i128>) -> PyResult<Option<u64>> {
    match value {
        None => Ok(None),
        Some(v) => u64::try_from(v).map(Some).map_err(|_| {
            PyValueError::new_err(format!(
                "{name} must be a non-negative number of bytes, got {v}"
            ))
        }),
    }
}

/// The shard count argument: `None` or a positive int (zero is refused by
/// the builder, with the library's own message).
pub(crate) fn shards_arg(value: Option<i128>) -> PyResult<Option<usize>> {
    match value {
        None => Ok(None),
        Some(v) => usize::try_from(v)
            .map(Some)
            .map_err(|_| PyValueError::new_err(format!("shards must be at least 1, got {v}"))),
    }
}

impl Settings {
    /// The builder for these settings; its `build()` does the validation
    /// (both-or-neither, zero sizes, zero shards).
    pub(crate) fn builder(&self) -> PyResult<Builder<String>> {
        let mut builder = Builder::<String>::new();
        if let Some(bytes) = self.max_size {
            builder = builder.max_size(bytes);
        }
        if let Some(bytes) = self.max_object_size {
            builder = builder.max_object_size(bytes);
        }
        if let Some(dir) = &self.dump_dir {
            builder = builder.dump_dir(dir);
        }
        if let Some(n) = self.shards {
            builder = builder.shards(n);
        }
        if let Some(bytes) = self.clean_ahead {
            builder = builder.clean_ahead(bytes);
        }
        apply_max_disk_size(builder, self.max_disk_size)
    }
}

/// Adds the disk budget (`Builder::max_disk_size`) when one was given.
pub(crate) fn apply_max_disk_size(
    builder: Builder<String>,
    bytes: Option<u64>,
) -> PyResult<Builder<String>> {
    Ok(match bytes {
        Some(bytes) => builder.max_disk_size(bytes),
        None => builder,
    })
}

/// The order ProxyStore 0.4.x's `EndpointStorage` kept, which its users and
/// tests rely on: one shard, one global, exact LRU list.
pub(crate) fn endpoint_storage_order(builder: Builder<String>) -> Builder<String> {
    builder.shards(1).exact_lru(true)
}
