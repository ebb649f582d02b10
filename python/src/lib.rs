//! `spillstore._spillstore`: the native half of the `spillstore` Python package.
//!
//! | file | one job |
//! | --- | --- |
//! | `lib.rs` | the module and its contents |
//! | `store.rs` | the store classes: every operation runs with the GIL released |
//! | `config.rs` | constructor arguments to a `Builder`, and the two merge points for builder options still to come |
//! | `errors.rs` | spillstore's errors as Python exceptions |
//!
//! The pure-Python half (`python/spillstore/`) subclasses the classes here
//! into `collections.abc.MutableMapping`s, defines the exceptions and holds
//! the ProxyStore integration.

mod config;
mod errors;
mod store;

use pyo3::prelude::*;

/// The native module. Its classes are not meant to be used directly: import
/// `spillstore` instead.
#[pymodule]
fn _spillstore(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<store::StoreCore>()?;
    m.add_class::<store::EndpointStorageCore>()?;
    m.add_class::<store::BytesView>()?;
    m.add("ZERO_COPY_VIEWS", store::ZERO_COPY_VIEWS)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
