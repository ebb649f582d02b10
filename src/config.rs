//! The [`Builder`] and the validation of its settings.

use std::marker::PhantomData;
use std::path::PathBuf;

use crate::error::Error;
use crate::store::SpillStore;

/// The most shards a store may have.
pub const MAX_SHARDS: usize = 1 << 16;

/// Default size of the segment files small values are packed into.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

/// Smallest accepted segment size.
const MIN_SEGMENT_SIZE: u64 = 4096;

/// Largest accepted segment size: records address segments with 32 bits.
const MAX_SEGMENT_SIZE: u64 = 1 << 30;

/// Configures and builds a [`SpillStore`].
///
/// `max_size` and `dump_dir` go together: give both for a store that spills,
/// or neither for an unbounded in-memory store.
///
/// # Examples
///
/// ```
/// use spillstore::SpillStore;
///
/// let dir = tempfile::tempdir().unwrap();
/// let store: SpillStore = SpillStore::builder()
///     .max_size(64 << 20)          // 64 MiB in memory, the rest spills
///     .max_object_size(16 << 20)   // refuse single values over 16 MiB
///     .dump_dir(dir.path().join("spill"))
///     .shards(8)
///     .build()?;
/// # Ok::<(), spillstore::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder<K = String> {
    max_size: Option<u64>,
    max_object_size: Option<u64>,
    dump_dir: Option<PathBuf>,
    shards: Option<usize>,
    segment_size: u64,
    exact_lru: bool,
    _key: PhantomData<fn() -> K>,
}

impl<K> Default for Builder<K> {
    fn default() -> Self {
        Builder {
            max_size: None,
            max_object_size: None,
            dump_dir: None,
            shards: None,
            segment_size: DEFAULT_SEGMENT_SIZE,
            exact_lru: false,
            _key: PhantomData,
        }
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) max_size: Option<u64>,
    pub(crate) max_object_size: Option<u64>,
    pub(crate) dump_dir: Option<PathBuf>,
    /// A power of two.
    pub(crate) shards: usize,
    pub(crate) segment_size: u64,
    pub(crate) exact_lru: bool,
}

impl<K> Builder<K> {
    /// A builder with no limits: an unbounded in-memory store.
    ///
    /// # Examples
    ///
    /// ```
    /// let store = spillstore::Builder::<String>::new().build()?;
    /// assert!(store.is_empty());
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The in-memory budget in bytes for all shards together. Least recently
    /// used values beyond it are spilled to `dump_dir`. Values larger than it
    /// are refused (`ObjectTooLarge`, "memory limit"). Must be positive and
    /// needs [`dump_dir`](Self::dump_dir).
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::{Location, SpillStore};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = SpillStore::builder().max_size(100).dump_dir(dir.path()).shards(1).build()?;
    /// store.insert("a".to_string(), vec![1u8; 60])?;
    /// store.insert("b".to_string(), vec![2u8; 60])?; // "a" spills to make room
    /// assert_eq!(store.location("a"), Some(Location::File));
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = Some(bytes);
        self
    }

    /// The largest single value accepted, in bytes; larger ones are refused
    /// with `ObjectTooLarge` ("object limit").
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::SpillStore;
    ///
    /// let store: SpillStore = SpillStore::builder().max_object_size(3).build()?;
    /// assert!(store.insert("k".to_string(), "abcd").is_err());
    /// assert!(store.insert("k".to_string(), "abc").is_ok());
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn max_object_size(mut self, bytes: u64) -> Self {
        self.max_object_size = Some(bytes);
        self
    }

    /// The directory spilled values are written to; created if missing. It
    /// must not be used by another live store. Needs [`max_size`](Self::max_size).
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::{Error, SpillStore};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let first: SpillStore = SpillStore::builder().max_size(1 << 20).dump_dir(dir.path()).build()?;
    /// let second = SpillStore::<String>::builder().max_size(1 << 20).dump_dir(dir.path()).build();
    /// assert!(matches!(second, Err(Error::DirLocked { .. })));
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn dump_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dump_dir = Some(dir.into());
        self
    }

    /// Number of independently locked shards, rounded up to a power of two
    /// (at most 65536). Each shard owns an equal share of `max_size`. The
    /// default is four per available core, rounded up. Eviction order is kept
    /// per shard: with one shard and [`exact_lru`](Self::exact_lru), the
    /// store keeps one exact, global LRU order.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::SpillStore;
    ///
    /// let store: SpillStore = SpillStore::builder().shards(3).build()?; // becomes 4
    /// assert!(SpillStore::<String>::builder().shards(0).build().is_err());
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = Some(n);
        self
    }

    /// Size in bytes of the append-only segment files that small spilled
    /// values are packed into (default 16 MiB, from 4 KiB to 1 GiB). A value whose
    /// record is larger than a quarter of this gets a file of its own.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::SpillStore;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let store: SpillStore = SpillStore::builder()
    ///     .max_size(1 << 20)
    ///     .dump_dir(dir.path())
    ///     .segment_size(1 << 20)
    ///     .build()?;
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Chooses how a shard orders its resident values for eviction.
    ///
    /// - `false` (the default): **approximate recency** (CLOCK). A memory hit
    ///   only sets a reference mark on its entry (one relaxed store, none if
    ///   the mark is set already), under the shard's read lock: hits from
    ///   many threads never queue, count or serialize behind each other.
    ///   Inserts and values read back from disk enter at the head of the
    ///   list. To make room, the shard walks from the tail: an entry marked
    ///   since it last passed there loses its mark and goes back to the head
    ///   (a second chance); the first unmarked entry is the victim. So an
    ///   entry read since it last passed the tail is never evicted while an
    ///   unmarked resident entry is behind it, and a value that was never
    ///   read again leaves in insertion order, as in exact LRU.
    /// - `true`: **exact LRU**, the seed's order. Every hit moves its entry
    ///   to the head: hits are recorded in a small per-thread buffer under
    ///   the read lock and applied by the next writer of the shard. A single
    ///   thread sees the exact LRU order (under contention, a full buffer may
    ///   drop accesses); hits cost more and scale less with threads.
    ///
    /// Either way no value is ever dropped: the policy only decides which
    /// values are in memory and which are read back from disk.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::{Location, SpillStore};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = SpillStore::builder()
    ///     .max_size(100)
    ///     .dump_dir(dir.path())
    ///     .shards(1)
    ///     .exact_lru(true)
    ///     .build()?;
    /// store.insert("a".to_string(), vec![1u8; 40])?;
    /// store.insert("b".to_string(), vec![2u8; 40])?;
    /// store.get("a")?; // "a" is now the most recently used
    /// store.insert("c".to_string(), vec![3u8; 40])?; // evicts "b"
    /// assert_eq!(store.location("b"), Some(Location::File));
    /// assert_eq!(store.location("a"), Some(Location::Memory));
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn exact_lru(mut self, exact: bool) -> Self {
        self.exact_lru = exact;
        self
    }

    /// Checks the settings without opening anything.
    pub(crate) fn validate(&self) -> Result<Config, Error> {
        let invalid = |msg: String| Err(Error::InvalidConfig(msg));
        if self.max_size.is_some() != self.dump_dir.is_some() {
            return invalid(
                "either both of max_size and dump_dir should be specified or neither".into(),
            );
        }
        if self.max_size == Some(0) {
            return invalid("max_size must be positive".into());
        }
        if self
            .dump_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return invalid("dump_dir must not be empty".into());
        }
        let requested = match self.shards {
            Some(0) => return invalid("shards must be at least 1".into()),
            Some(n) if n > MAX_SHARDS => {
                return invalid(format!("shards must be at most {MAX_SHARDS}, got {n}"))
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()) * 4,
        };
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size) {
            return invalid(format!(
                "segment_size must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE}, got {}",
                self.segment_size
            ));
        }
        Ok(Config {
            max_size: self.max_size,
            max_object_size: self.max_object_size,
            dump_dir: self.dump_dir.clone(),
            shards: requested.next_power_of_two().min(MAX_SHARDS),
            segment_size: self.segment_size,
            exact_lru: self.exact_lru,
        })
    }
}

impl<K> Builder<K>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
{
    /// Validates the settings, opens and locks the dump directory, and
    /// returns the store.
    ///
    /// # Errors
    ///
    /// `InvalidConfig` for settings that do not fit together, a zero
    /// `max_size` or shard count, or a `dump_dir` that is not a directory;
    /// `DirLocked` when another live store uses the directory; `Io` when it
    /// cannot be created or locked.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::{Error, SpillStore};
    ///
    /// let err = SpillStore::<String>::builder().max_size(0).build().unwrap_err();
    /// assert!(matches!(err, Error::InvalidConfig(_)));
    /// ```
    pub fn build(self) -> Result<SpillStore<K>, Error> {
        let config = self.validate()?;
        SpillStore::with_config(config)
    }
}
