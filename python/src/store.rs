//! The native classes under `spillstore.SpillStore` and
//! `spillstore.EndpointStorage`: every store operation, with the GIL released.
//!
//! The Python classes of the same names (spillstore/_store.py) subclass these
//! and `collections.abc.MutableMapping`, which adds the mixin methods (`pop`,
//! `update`, views, `==`); `s[k]`, `s[k] = v`, `k in s` and `len(s)` go
//! straight to the methods here.

use std::path::PathBuf;

use parking_lot::RwLock;
use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyIterator, PyList, PyMemoryView, PyString};
use spillstore::{Builder, Bytes, Location, SpillStore};

use crate::config::{endpoint_storage_order, shards_arg, size_arg, Settings};
use crate::errors::to_py_err;

/// Values at least this long are copied out into a new `bytes` with the GIL
/// released, so that other threads run during the copy. Below it, the copy
/// (about 2 us for 64 KiB) costs less than handing the GIL over and back.
const COPY_WITHOUT_GIL: usize = 1 << 20;

// Not in pyo3-ffi for abi3 builds below 3.10: declared here (see `key_str`).
extern "C" {
    fn PyUnicode_AsUTF8AndSize(
        unicode: *mut pyo3::ffi::PyObject,
        size: *mut pyo3::ffi::Py_ssize_t,
    ) -> *const std::os::raw::c_char;
}

/// A key as the store sees it: Python `str` only; `None` for anything else.
///
/// The UTF-8 is borrowed from the string object (CPython caches it there),
/// not copied: PyO3's stable-ABI conversion for 3.9 would encode it into a
/// new `bytes` and copy that, a quarter of the cost of a 1 KiB hit.
/// `PyUnicode_AsUTF8AndSize` is in the stable ABI from 3.10 on and has had
/// the same signature, exported by every CPython 3, since 3.3: the abi3 wheel
/// for 3.9 can call it.
fn key_str<'a>(key: &'a Bound<'_, PyAny>) -> PyResult<Option<&'a str>> {
    let Ok(key) = key.cast::<PyString>() else {
        return Ok(None);
    };
    let mut size: pyo3::ffi::Py_ssize_t = 0;
    // SAFETY: `key` is a live `str` (checked above) and the GIL is held
    // (`key` is bound to it). On success the function returns a pointer to
    // `size` bytes of UTF-8 that CPython keeps inside the string object and
    // never changes; `key` borrows that object for 'a, so the bytes outlive
    // the returned `&'a str`. On failure it returns NULL with an exception set.
    let data = unsafe { PyUnicode_AsUTF8AndSize(key.as_ptr(), &mut size) };
    if data.is_null() {
        return Err(PyErr::fetch(key.py()));
    }
    // SAFETY: non-null, `size` bytes long, valid for 'a (see above); CPython
    // produced it as UTF-8 from a `str`, so it is valid UTF-8.
    let utf8 = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size as usize) };
    // SAFETY: see above: CPython's UTF-8 encoding of a str is valid UTF-8.
    Ok(Some(unsafe { std::str::from_utf8_unchecked(utf8) }))
}

/// `KeyError(key)`, with the caller's own key object as its only argument.
fn key_error(key: &Bound<'_, PyAny>) -> PyErr {
    PyKeyError::new_err((key.clone().unbind(),))
}

/// A new `bytes` holding a copy of `value`.
fn to_py_bytes<'py>(py: Python<'py>, value: &Bytes) -> PyResult<Bound<'py, PyBytes>> {
    if value.len() < COPY_WITHOUT_GIL {
        return Ok(PyBytes::new(py, value));
    }
    // The new object is not shared with anyone until it is returned, so
    // filling it does not need the GIL.
    PyBytes::new_with(py, value.len(), |buf| {
        py.detach(|| buf.copy_from_slice(value));
        Ok(())
    })
}

/// The Python name of a location (an interned string: no allocation).
fn location_name(py: Python<'_>, location: Location) -> &Bound<'_, PyString> {
    match location {
        Location::Memory => pyo3::intern!(py, "memory"),
        Location::File => pyo3::intern!(py, "file"),
    }
}

/// The store behind `spillstore.SpillStore`. Not for direct use: it lacks
/// the mapping mixins; use `spillstore.SpillStore`.
///
/// Example:
///     >>> import spillstore
///     >>> isinstance(spillstore.SpillStore(), spillstore._spillstore.StoreCore)
///     True
#[pyclass(module = "spillstore._spillstore", subclass, frozen)]
pub(crate) struct StoreCore {
    /// `None` once `cleanup()` has run. Held for reading (by any number of
    /// threads) for the length of each operation, with the GIL released.
    store: RwLock<Option<SpillStore>>,
    max_size: Option<u64>,
    max_object_size: Option<u64>,
    dump_dir: Option<PathBuf>,
}

impl StoreCore {
    /// Validates the settings and opens the store (with the GIL released:
    /// opening creates and locks the dump dir).
    fn open(
        py: Python<'_>,
        settings: Settings,
        shape: fn(Builder<String>) -> Builder<String>,
    ) -> PyResult<Self> {
        let builder = shape(settings.builder()?);
        let store = py
            .detach(|| builder.build())
            .map_err(|e| to_py_err(py, e))?;
        Ok(StoreCore {
            store: RwLock::new(Some(store)),
            max_size: settings.max_size,
            max_object_size: settings.max_object_size,
            dump_dir: settings.dump_dir,
        })
    }

    /// Runs `op` on the store with the GIL released.
    fn with_store<R: Send>(
        &self,
        py: Python<'_>,
        op: impl FnOnce(&SpillStore) -> R + Send,
    ) -> PyResult<R> {
        py.detach(|| self.store.read().as_ref().map(op))
            .ok_or_else(|| PyValueError::new_err("operation on a store that was cleaned up"))
    }

    /// Like [`with_store`](Self::with_store) for operations that can fail.
    fn try_store<R: Send>(
        &self,
        py: Python<'_>,
        op: impl FnOnce(&SpillStore) -> Result<R, spillstore::Error> + Send,
    ) -> PyResult<R> {
        self.with_store(py, op)?.map_err(|e| to_py_err(py, e))
    }
}

#[pymethods]
impl StoreCore {
    #[new]
    #[pyo3(signature = (
        max_size=None, max_object_size=None, dump_dir=None, *,
        shards=None, max_disk_size=None, clean_ahead=None,
    ))]
    fn new(
        py: Python<'_>,
        max_size: Option<i128>,
        max_object_size: Option<i128>,
        dump_dir: Option<PathBuf>,
        shards: Option<i128>,
        max_disk_size: Option<i128>,
        clean_ahead: Option<i128>,
    ) -> PyResult<Self> {
        let settings = Settings {
            max_size: size_arg("max_size", max_size)?,
            max_object_size: size_arg("max_object_size", max_object_size)?,
            dump_dir,
            shards: shards_arg(shards)?,
            max_disk_size: size_arg("max_disk_size", max_disk_size)?,
            clean_ahead: size_arg("clean_ahead", clean_ahead)?,
        };
        StoreCore::open(py, settings, |builder| builder)
    }

    fn __getitem__<'py>(&self, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let py = key.py();
        let Some(k) = key_str(key)? else {
            return Err(key_error(key));
        };
        match self.try_store(py, |s| s.get(k))? {
            Some(value) => to_py_bytes(py, &value),
            None => Err(key_error(key)),
        }
    }

    fn __setitem__(&self, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = key.py();
        let Some(k) = key_str(key)? else {
            return Err(PyTypeError::new_err(format!(
                "keys must be str, not {}",
                key.get_type().name()?
            )));
        };
        let k = k.to_owned();
        if let Ok(array) = value.cast::<PyByteArray>() {
            // Mutable: copied while the GIL keeps other threads from resizing it.
            let data = array.to_vec();
            return self.try_store(py, |s| s.insert(k, data));
        }
        let bytes = match value.cast::<PyBytes>() {
            Ok(bytes) => bytes.clone(),
            // Any other buffer (memoryview, array, mmap, ...): its contents
            // as one contiguous `bytes` (the buffer may be mutable).
            Err(_) => PyMemoryView::from(value)?
                .call_method0("tobytes")?
                .cast_into::<PyBytes>()?,
        };
        // `bytes` are immutable and `bytes` keeps this one alive: the copy
        // into the store is made without the GIL, along with the insert.
        let data = bytes.as_bytes();
        self.try_store(py, |s| s.insert(k, Bytes::copy_from_slice(data)))
    }

    fn __delitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = key.py();
        let Some(k) = key_str(key)? else {
            return Err(key_error(key));
        };
        if self.try_store(py, |s| s.remove(k))? {
            Ok(())
        } else {
            Err(key_error(key))
        }
    }

    fn __contains__(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Some(k) = key_str(key)? else {
            return Ok(false);
        };
        self.with_store(key.py(), |s| s.contains_key(k))
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.with_store(py, |s| s.len())
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyIterator>> {
        let keys = self.with_store(py, |s| s.keys())?;
        PyList::new(py, keys)?.try_iter()
    }

    /// The value of `key` (a copy, as `bytes`), or `default` if absent.
    ///
    /// Example:
    ///     >>> import spillstore
    ///     >>> s = spillstore.SpillStore()
    ///     >>> s['k'] = b'v'
    ///     >>> s.get('k'), s.get('x'), s.get('x', b'-')
    ///     (b'v', None, b'-')
    #[pyo3(signature = (key, default=None))]
    fn get<'py>(
        &self,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = key.py();
        let default = || default.unwrap_or_else(|| py.None().into_bound(py));
        let Some(k) = key_str(key)? else {
            return Ok(default());
        };
        match self.try_store(py, |s| s.get(k))? {
            Some(value) => Ok(to_py_bytes(py, &value)?.into_any()),
            None => Ok(default()),
        }
    }

    /// The value of `key` without copying it (a `BytesView`) where the build
    /// supports it (the wheel for the 3.11 stable ABI: `ZERO_COPY_VIEWS`),
    /// else as a `bytes` copy: either way a read-only bytes-like object, and a
    /// get (it reloads a spilled value). Raises `KeyError(key)` if absent.
    ///
    /// Example:
    ///     >>> import spillstore
    ///     >>> s = spillstore.SpillStore()
    ///     >>> s['k'] = b'value'
    ///     >>> m = memoryview(s.view('k'))
    ///     >>> m.readonly, m.tobytes()
    ///     (True, b'value')
    fn view<'py>(&self, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = key.py();
        let Some(k) = key_str(key)? else {
            return Err(key_error(key));
        };
        match self.try_store(py, |s| s.get(k))? {
            Some(value) if ZERO_COPY_VIEWS => Ok(Bound::new(py, BytesView { value })?.into_any()),
            Some(value) => Ok(to_py_bytes(py, &value)?.into_any()),
            None => Err(key_error(key)),
        }
    }

    /// `"memory"`, `"file"` or `None`; does not change the LRU order.
    ///
    /// Example:
    ///     >>> import spillstore
    ///     >>> s = spillstore.SpillStore()
    ///     >>> s['k'] = b'v'
    ///     >>> s.location('k'), s.location('absent')
    ///     ('memory', None)
    fn location<'py>(&self, key: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyString>>> {
        let Some(k) = key_str(key)? else {
            return Ok(None);
        };
        let py = key.py();
        Ok(self
            .with_store(py, |s| s.location(k))?
            .map(|l| location_name(py, l).clone()))
    }

    /// For the async storage: the value of `key` if it is in memory (a get,
    /// which marks it recently used), `None` if absent, and `on_disk` without
    /// reading anything if it was spilled (the caller reloads it off the event loop).
    fn _get_if_resident<'py>(
        &self,
        key: &Bound<'py, PyString>,
        on_disk: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = key.py();
        let k = key_str(key.as_any())?.expect("a str");
        let found = self.try_store(py, |s| match s.location(k) {
            Some(Location::Memory) => s.get(k).map(|v| v.map(Ok)),
            Some(Location::File) => Ok(Some(Err(()))),
            None => Ok(None),
        })?;
        match found {
            Some(Ok(value)) => Ok(to_py_bytes(py, &value)?.into_any()),
            Some(Err(())) => Ok(on_disk),
            None => Ok(py.None().into_bound(py)),
        }
    }

    /// Sizes and activity counters, as a dict of the library's `Stats` fields:
    /// `entries`, `memory_entries`, `disk_entries`, `memory_bytes`,
    /// `disk_bytes`, `max_size`, `spill_files`, `spill_file_bytes`,
    /// `spill_file_allocated_bytes`, `spill_live_bytes`, `max_disk_size`,
    /// `punched_bytes`, `open_spill_files`, `max_open_spill_files`,
    /// `orphans_removed`, `orphan_bytes_removed`, `hits`, `misses`,
    /// `reloads`, `reloaded_bytes`, `unpromoted_reloads` (reloads that left
    /// the value on disk), `spills`, `spilled_bytes`, `respills`, `cleaned`,
    /// `cleaned_bytes`, `corruptions`, `compactions`, `compacted_bytes`.
    ///
    /// Example:
    ///     >>> import spillstore
    ///     >>> s = spillstore.SpillStore()
    ///     >>> s['k'] = b'12345'
    ///     >>> st = s.stats()
    ///     >>> st['entries'], st['memory_bytes'], st['disk_bytes']
    ///     (1, 5, 0)
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st = self.with_store(py, |s| s.stats())?;
        let dict = PyDict::new(py);
        dict.set_item("entries", st.entries)?;
        dict.set_item("memory_entries", st.memory_entries)?;
        dict.set_item("disk_entries", st.disk_entries)?;
        dict.set_item("memory_bytes", st.memory_bytes)?;
        dict.set_item("disk_bytes", st.disk_bytes)?;
        dict.set_item("max_size", st.max_size)?;
        dict.set_item("spill_files", st.spill_files)?;
        dict.set_item("spill_file_bytes", st.spill_file_bytes)?;
        dict.set_item("spill_file_allocated_bytes", st.spill_file_allocated_bytes)?;
        dict.set_item("spill_live_bytes", st.spill_live_bytes)?;
        dict.set_item("max_disk_size", st.max_disk_size)?;
        dict.set_item("punched_bytes", st.punched_bytes)?;
        dict.set_item("open_spill_files", st.open_spill_files)?;
        dict.set_item("max_open_spill_files", st.max_open_spill_files)?;
        dict.set_item("orphans_removed", st.orphans_removed)?;
        dict.set_item("orphan_bytes_removed", st.orphan_bytes_removed)?;
        dict.set_item("hits", st.hits)?;
        dict.set_item("misses", st.misses)?;
        dict.set_item("reloads", st.reloads)?;
        dict.set_item("reloaded_bytes", st.reloaded_bytes)?;
        dict.set_item("unpromoted_reloads", st.unpromoted_reloads)?;
        dict.set_item("spills", st.spills)?;
        dict.set_item("spilled_bytes", st.spilled_bytes)?;
        dict.set_item("respills", st.respills)?;
        dict.set_item("cleaned", st.cleaned)?;
        dict.set_item("cleaned_bytes", st.cleaned_bytes)?;
        dict.set_item("corruptions", st.corruptions)?;
        dict.set_item("compactions", st.compactions)?;
        dict.set_item("compacted_bytes", st.compacted_bytes)?;
        Ok(dict)
    }

    /// Removes every key and deletes every spilled file; the dump dir stays.
    ///
    /// Example:
    ///     >>> import spillstore
    ///     >>> s = spillstore.SpillStore()
    ///     >>> s['k'] = b'v'
    ///     >>> s.clear()
    ///     >>> len(s)
    ///     0
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        self.try_store(py, |s| s.clear())
    }

    /// Clears the store and removes its dump dir if only the store's files
    /// were in it. The store cannot be used afterwards (operations raise
    /// `ValueError`); calling `cleanup()` again does nothing.
    ///
    /// Example:
    ///     >>> import os, spillstore, tempfile
    ///     >>> d = os.path.join(tempfile.mkdtemp(), 'dump')
    ///     >>> s = spillstore.SpillStore(10, dump_dir=d)
    ///     >>> s['a'], s['b'] = bytes(8), bytes(8)
    ///     >>> s.cleanup()
    ///     >>> os.path.exists(d), s.closed
    ///     (False, True)
    fn cleanup(&self, py: Python<'_>) -> PyResult<()> {
        let result = py.detach(|| {
            // Waits for the operations in flight, which hold the lock for reading.
            let store = self.store.write().take();
            store.map(SpillStore::cleanup)
        });
        match result {
            None | Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(to_py_err(py, e)),
        }
    }

    /// Whether `cleanup()` has run.
    ///
    /// Example:
    ///     >>> import spillstore
    ///     >>> spillstore.SpillStore().closed
    ///     False
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        py.detach(|| self.store.read().is_none())
    }

    /// The in-memory budget in bytes, or `None` for an unbounded store.
    ///
    /// Example:
    ///     >>> import spillstore
    ///     >>> print(spillstore.SpillStore().max_size)
    ///     None
    #[getter]
    fn max_size(&self) -> Option<u64> {
        self.max_size
    }

    /// The largest value accepted, in bytes, or `None`.
    ///
    /// Example:
    ///     >>> import spillstore
    ///     >>> spillstore.SpillStore(max_object_size=1024).max_object_size
    ///     1024
    #[getter]
    fn max_object_size(&self) -> Option<u64> {
        self.max_object_size
    }

    /// The dump directory as given, or `None`.
    ///
    /// Example:
    ///     >>> import spillstore
    ///     >>> print(spillstore.SpillStore().dump_dir)
    ///     None
    #[getter]
    fn dump_dir(&self) -> Option<String> {
        self.dump_dir
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned())
    }

    /// The number of shards (a power of two).
    ///
    /// Example:
    ///     >>> import spillstore
    ///     >>> spillstore.SpillStore(shards=3).shards
    ///     4
    #[getter]
    fn shards(&self, py: Python<'_>) -> PyResult<usize> {
        self.with_store(py, |s| s.shard_count())
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let name = slf.get_type().qualname()?;
        let this = slf.get();
        let Some(st) = slf
            .py()
            .detach(|| this.store.read().as_ref().map(|s| s.stats()))
        else {
            return Ok(format!("<{name} (cleaned up)>"));
        };
        let max_size = this.max_size.map_or("None".to_string(), |m| m.to_string());
        let dump_dir = match this.dump_dir() {
            Some(dir) => PyString::new(slf.py(), &dir).repr()?.to_string(),
            None => "None".to_string(),
        };
        Ok(format!(
            "<{name} entries={} memory_bytes={} disk_bytes={} max_size={max_size} dump_dir={dump_dir}>",
            st.entries, st.memory_bytes, st.disk_bytes,
        ))
    }
}

/// The store behind `spillstore.EndpointStorage`: ProxyStore 0.4.x's
/// arguments and its exact, global LRU order.
///
/// Example:
///     >>> import spillstore
///     >>> spillstore.EndpointStorage().shards
///     1
#[pyclass(module = "spillstore._spillstore", extends = StoreCore, subclass, frozen)]
pub(crate) struct EndpointStorageCore;

#[pymethods]
impl EndpointStorageCore {
    #[new]
    #[pyo3(signature = (max_size=None, max_object_size=None, dump_dir=None))]
    fn new(
        py: Python<'_>,
        max_size: Option<i128>,
        max_object_size: Option<i128>,
        dump_dir: Option<PathBuf>,
    ) -> PyResult<PyClassInitializer<Self>> {
        let settings = Settings {
            max_size: size_arg("max_size", max_size)?,
            max_object_size: size_arg("max_object_size", max_object_size)?,
            dump_dir,
            shards: None,
            max_disk_size: None,
            clean_ahead: None,
        };
        let core = StoreCore::open(py, settings, endpoint_storage_order)?;
        Ok(PyClassInitializer::from(core).add_subclass(EndpointStorageCore))
    }
}

/// Whether this build's `view()` is zero-copy (see [`BytesView`]).
pub(crate) const ZERO_COPY_VIEWS: bool =
    cfg!(all(feature = "abi3-py311", not(feature = "abi3-py39")));

/// A read-only, zero-copy view of a stored value: it exposes the store's own
/// bytes through the buffer protocol (`memoryview(view)`, `bytes(view)`,
/// `numpy.frombuffer(view)`, writing it to a socket or file). Made by
/// `view()` in builds for the 3.11 stable ABI; the value it shows stays
/// valid as long as the view (or a memoryview of it) lives, whatever
/// happens to the key meanwhile.
///
/// Example:
///     >>> import spillstore
///     >>> s = spillstore.SpillStore()
///     >>> s['k'] = b'abc'
///     >>> bytes(s.view('k')), len(s.view('k'))
///     (b'abc', 3)
#[pyclass(module = "spillstore._spillstore", frozen)]
pub(crate) struct BytesView {
    #[cfg_attr(
        not(all(feature = "abi3-py311", not(feature = "abi3-py39"))),
        allow(dead_code)
    )]
    value: Bytes,
}

#[pymethods]
impl BytesView {
    fn __len__(&self) -> usize {
        self.value.len()
    }

    fn __bytes__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        to_py_bytes(py, &self.value)
    }

    fn __repr__(&self) -> String {
        format!("<BytesView of {} bytes>", self.value.len())
    }

    /// # Safety
    ///
    /// Called by CPython with a valid `view` to fill, holding the GIL.
    #[cfg(all(feature = "abi3-py311", not(feature = "abi3-py39")))]
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::os::raw::c_int,
    ) -> PyResult<()> {
        let value = &slf.get().value;
        // SAFETY: `view` is valid (CPython's contract for this slot). The
        // memory is `value`'s: immutable, and alive as long as `slf`, which
        // PyBuffer_FillInfo stores (with a new reference) in `view.obj` and
        // which a frozen class never changes. readonly = 1, so a request
        // for a writable buffer fails with BufferError.
        let rc = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                value.as_ptr() as *mut std::os::raw::c_void,
                value.len() as pyo3::ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if rc == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }
}
