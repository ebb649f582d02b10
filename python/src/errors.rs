//! spillstore's errors as Python exceptions.
//!
//! | Rust | Python |
//! | --- | --- |
//! | `InvalidConfig` | `ValueError` |
//! | `ObjectTooLarge`, `DiskLimit` ("disk limit"), and any future error whose message says "disk limit" | `spillstore.ObjectSizeExceededError` |
//! | `Corrupted` | `spillstore.CorruptedError` (an `OSError`, errno `EIO`) |
//! | `DirLocked` | `spillstore.DirLockedError` (an `OSError`, errno `EBUSY`) |
//! | `Io` | `OSError` with `errno` set, so Python picks the subclass (`FileNotFoundError`, ...) |
//!
//! The exception classes are defined in Python (`spillstore/_errors.py`),
//! because `ObjectSizeExceededError` subclasses ProxyStore's when ProxyStore
//! is importable; they are imported once and cached here.

use std::io;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use spillstore::{Error, LimitKind};

static OBJECT_SIZE_EXCEEDED: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static CORRUPTED: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static DIR_LOCKED: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// One of the exception classes of `spillstore._errors`.
fn class<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
) -> PyResult<&'py Bound<'py, PyType>> {
    cell.import(py, "spillstore._errors", name)
}

/// Builds an instance of `cls(*args)`, sets `attrs` on it and makes it the
/// error to raise. A failure along the way (a broken install) is raised instead.
fn instance<'py, A>(
    cls: PyResult<&Bound<'py, PyType>>,
    args: A,
    attrs: &[(&str, Bound<'py, PyAny>)],
) -> PyErr
where
    A: pyo3::call::PyCallArgs<'py>,
{
    let build = || -> PyResult<PyErr> {
        let value = cls?.call1(args)?;
        for (name, attr) in attrs {
            value.setattr(*name, attr)?;
        }
        Ok(PyErr::from_value(value))
    };
    build().unwrap_or_else(|e| e)
}

/// The Python exception for a spillstore error.
pub(crate) fn to_py_err(py: Python<'_>, err: Error) -> PyErr {
    let message = err.to_string();
    match err {
        Error::InvalidConfig(_) => PyValueError::new_err(message),
        Error::ObjectTooLarge { size, limit, kind } => {
            let kind = match kind {
                LimitKind::Object => "object",
                LimitKind::Memory => "memory",
            };
            instance(
                class(py, &OBJECT_SIZE_EXCEEDED, "ObjectSizeExceededError"),
                (message,),
                &[
                    ("size", size.into_pyobject(py).unwrap().into_any()),
                    ("limit", limit.into_pyobject(py).unwrap().into_any()),
                    ("kind", kind.into_pyobject(py).unwrap().into_any()),
                ],
            )
        }
        Error::Corrupted {
            path,
            offset,
            reason,
        } => instance(
            class(py, &CORRUPTED, "CorruptedError"),
            (libc::EIO, message, path.to_string_lossy().into_owned()),
            &[
                ("offset", offset.into_pyobject(py).unwrap().into_any()),
                ("reason", reason.into_pyobject(py).unwrap().into_any()),
            ],
        ),
        Error::DirLocked { path } => instance(
            class(py, &DIR_LOCKED, "DirLockedError"),
            (libc::EBUSY, message, path.to_string_lossy().into_owned()),
            &[],
        ),
        Error::Io(source) => os_error(&source, message),
        Error::DiskLimit { needed, limit, .. } => instance(
            class(py, &OBJECT_SIZE_EXCEEDED, "ObjectSizeExceededError"),
            (message,),
            &[
                ("size", needed.into_pyobject(py).unwrap().into_any()),
                ("limit", limit.into_pyobject(py).unwrap().into_any()),
                ("kind", "disk".into_pyobject(py).unwrap().into_any()),
            ],
        ),
        // Variants added to the non-exhaustive enum later.
        other => match other.io_error() {
            Some(source) => os_error(source, message),
            None if message.contains("disk limit") => instance(
                class(py, &OBJECT_SIZE_EXCEEDED, "ObjectSizeExceededError"),
                (message,),
                &[],
            ),
            None => PyRuntimeError::new_err(message),
        },
    }
}

/// `OSError(errno, message)`: given an errno, Python's `OSError` constructor
/// returns the matching subclass (`FileNotFoundError`, `NotADirectoryError`...).
/// PyO3's own `io::Error` conversion leaves `errno` unset for the wrapped
/// errors spillstore returns, because their OS code sits one level down.
fn os_error(source: &io::Error, message: String) -> PyErr {
    match errno(source) {
        Some(code) => PyOSError::new_err((code, message)),
        None => PyOSError::new_err(message),
    }
}

/// The operating system's error code behind `err`: its own, else the first
/// one found down its chain of sources, else the one its kind stands for.
pub(crate) fn errno(err: &io::Error) -> Option<i32> {
    if let Some(code) = err.raw_os_error() {
        return Some(code);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = err
        .get_ref()
        .map(|inner| inner as &(dyn std::error::Error + 'static));
    while let Some(current) = source {
        if let Some(code) = current
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        source = current.source();
    }
    errno_of_kind(err.kind())
}

/// The errno a kind stands for, for errors made without an OS code.
fn errno_of_kind(kind: io::ErrorKind) -> Option<i32> {
    use io::ErrorKind as K;
    Some(match kind {
        K::NotFound => libc::ENOENT,
        K::PermissionDenied => libc::EACCES,
        K::AlreadyExists => libc::EEXIST,
        K::NotADirectory => libc::ENOTDIR,
        K::IsADirectory => libc::EISDIR,
        K::DirectoryNotEmpty => libc::ENOTEMPTY,
        K::StorageFull => libc::ENOSPC,
        K::QuotaExceeded => libc::EDQUOT,
        K::ReadOnlyFilesystem => libc::EROFS,
        K::FileTooLarge => libc::EFBIG,
        K::OutOfMemory => libc::ENOMEM,
        K::Interrupted => libc::EINTR,
        K::WouldBlock => libc::EAGAIN,
        K::InvalidInput => libc::EINVAL,
        K::UnexpectedEof => libc::EIO,
        _ => return None,
    })
}
