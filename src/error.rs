//! The one error type of the crate.

use std::io;
use std::path::PathBuf;

/// Which limit an object exceeded; see [`Error::ObjectTooLarge`].
///
/// # Examples
///
/// ```
/// use spillstore::{Error, LimitKind, SpillStore};
///
/// let store: SpillStore = SpillStore::builder().max_object_size(4).build()?;
/// match store.insert("k".to_string(), vec![0u8; 5]) {
///     Err(Error::ObjectTooLarge { kind, .. }) => assert_eq!(kind, LimitKind::Object),
///     other => panic!("unexpected {other:?}"),
/// }
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// The `max_object_size` limit for a single value.
    Object,
    /// The `max_size` limit for all values held in memory.
    Memory,
}

impl std::fmt::Display for LimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LimitKind::Object => "object",
            LimitKind::Memory => "memory",
        })
    }
}

/// Everything that can go wrong in a [`SpillStore`](crate::SpillStore).
///
/// An operation that returns an error leaves the store as it was before the
/// call, except that a failed `insert` does not store its key (a replaced value
/// stays in place): every value stored before stays readable.
///
/// # Examples
///
/// ```
/// use spillstore::{Error, SpillStore};
///
/// // `max_size` without `dump_dir` is refused, as in ProxyStore.
/// let err = SpillStore::<String>::builder().max_size(1024).build().unwrap_err();
/// assert!(matches!(err, Error::InvalidConfig(_)));
/// println!("{err}");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder's settings do not make a usable store.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// The value is larger than a configured limit and was not stored.
    #[error("value of {size} bytes exceeds the {limit} byte {kind} limit")]
    ObjectTooLarge {
        /// Size of the refused value in bytes.
        size: u64,
        /// The limit it exceeded, in bytes.
        limit: u64,
        /// Which limit: `max_object_size` ("object limit") or `max_size` ("memory limit").
        kind: LimitKind,
    },

    /// Spilling would take the spill files past `max_disk_size`, so the
    /// operation that needed it (an insert) was refused: the key is not
    /// stored, a replaced value stays, and every value stored before stays
    /// readable. Removing values makes room at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::{Error, SpillStore};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// // A value larger than a shard's share of memory goes straight to disk.
    /// let store = SpillStore::builder()
    ///     .max_size(1 << 20)
    ///     .max_disk_size(64 << 10)
    ///     .dump_dir(dir.path())
    ///     .shards(16)
    ///     .build()?;
    /// match store.insert("big".to_string(), vec![0u8; 100 << 10]) {
    ///     Err(Error::DiskLimit { needed, limit, .. }) => assert!(needed > limit),
    ///     other => panic!("unexpected {other:?}"),
    /// }
    /// assert!(!store.contains_key("big"));
    /// # Ok::<(), Error>(())
    /// ```
    #[error(
        "spilling needs {needed} more bytes on disk, {available} of the {limit} byte disk limit are free"
    )]
    DiskLimit {
        /// Bytes the spill would have added on disk (whole blocks).
        needed: u64,
        /// Bytes left under the limit when it was refused.
        available: u64,
        /// `max_disk_size`.
        limit: u64,
    },

    /// An I/O operation on the dump directory failed. The message names the
    /// operation and the path; [`std::io::Error::kind`] is the operating
    /// system's (for example `StorageFull` when the disk is full).
    #[error(transparent)]
    Io(std::io::Error),

    /// Another live store already uses this dump directory.
    #[error("dump directory {} is locked by another store", path.display())]
    DirLocked {
        /// The dump directory.
        path: PathBuf,
    },

    /// A spilled value failed its integrity check: its file was altered,
    /// truncated or replaced. The entry stays in the store (every `get`
    /// reports this error) until it is removed or replaced.
    #[error("spilled value in {} at offset {offset} is corrupted: {reason}", path.display())]
    Corrupted {
        /// The spill file that holds the value.
        path: PathBuf,
        /// Byte offset of the value's record in that file.
        offset: u64,
        /// What the check found.
        reason: String,
    },
}

impl Error {
    /// An [`Error::Io`] whose message says what was done to which path; the
    /// error kind stays the operating system's.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let kind = source.kind();
        Error::Io(io::Error::new(
            kind,
            IoContext {
                op,
                path: path.into(),
                source,
            },
        ))
    }

    /// The underlying operating-system error, if this is an I/O error.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::SpillStore;
    ///
    /// // A dump dir below a regular file cannot be created.
    /// let file = tempfile::NamedTempFile::new().unwrap();
    /// let err = SpillStore::<String>::builder()
    ///     .max_size(1024)
    ///     .dump_dir(file.path().join("dump"))
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err.io_error().unwrap().kind(), std::io::ErrorKind::NotADirectory);
    /// assert!(err.to_string().contains("dump dir"), "{err}");
    /// ```
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Error::Io(source) => Some(source),
            _ => None,
        }
    }
}

/// The operation and path behind an [`Error::Io`].
#[derive(Debug)]
struct IoContext {
    op: &'static str,
    path: PathBuf,
    source: io::Error,
}

impl std::fmt::Display for IoContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.op, self.path.display(), self.source)
    }
}

impl std::error::Error for IoContext {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
