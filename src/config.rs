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

/// The default [`Builder::clean_ahead`] is `max_size` divided by this...
const DEFAULT_CLEAN_AHEAD_DIVISOR: u64 = 4;
/// ...and at most this.
const MAX_DEFAULT_CLEAN_AHEAD: u64 = 256 << 20;

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
    max_disk_size: Option<u64>,
    max_open_files: Option<usize>,
    clean_ahead: Option<u64>,
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
            max_disk_size: None,
            max_open_files: None,
            clean_ahead: None,
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
    /// Bytes the spill files may occupy on disk, if bounded.
    pub(crate) max_disk_size: Option<u64>,
    /// Spill files open at once; `None` for the default.
    pub(crate) max_open_files: Option<usize>,
    /// Bytes of resident values near the LRU tails that the spiller keeps
    /// disk copies of; 0 turns it off.
    pub(crate) clean_ahead: u64,
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
    /// It bounds the values held (`stats().memory_bytes`). Beyond it, while
    /// reloads read the disk, each shard keeps the emptied buffers of up to
    /// four values of 16 KiB or more that left memory, at most an eighth of
    /// its share and 8 MiB, for its next reloads to read into instead of
    /// faulting in new pages.
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
    ///   New keys and values read back from disk enter at the head of the
    ///   list; a value in memory replaced by an insert keeps its place and
    ///   gets the mark, as a hit would. To make room, the shard walks from
    ///   the tail: an entry marked since it last passed there loses its
    ///   mark and goes back to the head (a second chance); the first
    ///   unmarked entry is the victim. So an entry read since it last
    ///   passed the tail is never evicted while an unmarked resident entry
    ///   is behind it, and a value neither read nor replaced again leaves
    ///   in insertion order, as in exact LRU.
    ///
    ///   A spilled value of 256 KiB or more comes back into memory on its
    ///   second read within its shard's share of `max_size` (counted in
    ///   bytes of such reads), not on its first: the first is served from
    ///   the spill file without a copy, as a slice of the file's mapping,
    ///   and memory stays as it was. A large value read once in a
    ///   while (a scan, the cold end of the popularity curve) then neither
    ///   costs a copy nor pushes out values that are being read. Such a
    ///   value holds its disk blocks while the caller keeps it, as a value
    ///   larger than a shard's share always does.
    /// - `true`: **exact LRU**, the seed's order. Every hit moves its entry
    ///   to the head: hits are recorded in a small per-thread buffer under
    ///   the read lock and applied by the next writer of the shard. A single
    ///   thread sees the exact LRU order (under contention, a full buffer may
    ///   drop accesses); hits cost more and scale less with threads. Every
    ///   value read back from disk that fits a shard's share comes back into
    ///   memory, as in the seed.
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

    /// The most bytes the spill files may occupy on disk: allocated blocks,
    /// as `du` counts them, not the files' lengths (segments are sparse, so
    /// only what was written counts, and holes punched over dead records
    /// count no more). A spill that would go past it is refused with
    /// [`Error::DiskLimit`] ("disk limit"), and so is the insert that needed
    /// it: the key is not stored, a replaced value stays, and everything
    /// stored before stays readable. Any positive size is accepted, even one
    /// smaller than a segment. Needs [`dump_dir`](Self::dump_dir).
    ///
    /// The store counts, besides its files' blocks, an allowance for the
    /// file system's map of each file's extents (at most 0.34% of a full
    /// segment); the lock file and the directory itself are not counted.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::{Error, SpillStore};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = SpillStore::builder()
    ///     .max_size(64 << 10)
    ///     .max_disk_size(256 << 10)
    ///     .dump_dir(dir.path())
    ///     .shards(1)
    ///     .build()?;
    /// let mut refused = None;
    /// for i in 0..100u32 {
    ///     if let Err(e) = store.insert(i.to_string(), vec![0u8; 16 << 10]) {
    ///         refused = Some(e);
    ///         break;
    ///     }
    /// }
    /// let err = refused.expect("320 KiB do not fit in 64 KiB + 256 KiB");
    /// assert!(matches!(err, Error::DiskLimit { .. }));
    /// assert!(err.to_string().contains("disk limit"));
    /// assert!(store.stats().spill_file_allocated_bytes <= 256 << 10);
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn max_disk_size(mut self, bytes: u64) -> Self {
        self.max_disk_size = Some(bytes);
        self
    }

    /// How many spill files the store keeps open at once (a descriptor and a
    /// mapping each), whatever the number of files: others are closed and
    /// reopened when needed, after checking that the path still names the
    /// file the store created. At least 1. The default is an eighth of the
    /// process's descriptor limit (`ulimit -n`) read when the store is
    /// built, between 8 and 128.
    ///
    /// The cost of a small cache: a read from a file that was closed reopens
    /// and maps it (`open`, `fstat`, a 64-byte `pread` of the header,
    /// `mmap`: about 10 to 20 µs), on top of the read itself. A value handed
    /// out as a slice of a mapping keeps that mapping (not a descriptor)
    /// alive while the caller holds it.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::SpillStore;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let store: SpillStore<u32> = SpillStore::builder()
    ///     .max_size(4096)
    ///     .dump_dir(dir.path())
    ///     .segment_size(8192)
    ///     .max_open_files(2)
    ///     .build()?;
    /// for i in 0..100 {
    ///     store.insert(i, vec![i as u8; 1000])?;
    /// }
    /// assert!(store.stats().spill_files > 2);
    /// for i in 0..100 {
    ///     assert_eq!(store.get(&i)?.unwrap(), vec![i as u8; 1000]);
    /// }
    /// assert!(store.stats().open_spill_files <= 2);
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn max_open_files(mut self, files: usize) -> Self {
        self.max_open_files = Some(files);
        self
    }

    /// How many bytes of resident values, nearest the LRU tails, the
    /// background spiller keeps written to disk ahead of need; 0 turns it
    /// off. The default is a quarter of `max_size`, at most 256 MiB; a value
    /// above `max_size` counts as `max_size`. Needs
    /// [`dump_dir`](Self::dump_dir) unless 0.
    ///
    /// Without it, an insert that needs room writes its victims on the
    /// calling thread before it returns. With it, a thread of the store's
    /// own (the spiller) writes disk copies of the values about to be
    /// evicted while they are still in memory, the way an operating system
    /// writes dirty pages back before it must reclaim them; the insert that
    /// evicts them then drops them from memory without a write (a
    /// "respill"), and writes only when the spiller has fallen behind. (An
    /// insert or reload that has to write its victims then also writes a
    /// batch of copies, up to 1 MiB, for the calls after it, unless the
    /// spiller is at work in that shard: so, while the spiller waits for a
    /// core, one call in many writes rather than each.)
    ///
    /// What is in memory and what on disk, and the order of eviction, are
    /// the same either way; `memory_bytes <= max_size` holds at every
    /// instant. What it costs: disk space for the copies of resident values
    /// (within [`max_disk_size`](Self::max_disk_size): the spiller never
    /// takes the last `clean_ahead` bytes of it), and writes for copies of
    /// values that are then replaced or removed before they are evicted
    /// ([`Stats::cleaned`](crate::Stats::cleaned) counts every copy). A
    /// write error in the background is never lost silently: the value
    /// simply has no copy, and the insert that evicts it writes it and
    /// meets the error itself.
    ///
    /// Each shard cleans its own share (`clean_ahead / shards`). With the
    /// CLOCK policy, values marked by a hit are skipped: they get a second
    /// chance instead of being evicted.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::{Location, SpillStore};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = SpillStore::builder()
    ///     .max_size(10_000)
    ///     .dump_dir(dir.path())
    ///     .shards(1)
    ///     .clean_ahead(5_000)
    ///     .build()?;
    /// for i in 0..10 {
    ///     store.insert(i.to_string(), vec![0u8; 1000])?;
    /// }
    /// store.quiesce(); // lets the spiller catch up, for a deterministic example
    /// // The five least recently used values have copies on disk, so these
    /// // inserts evict them without writing.
    /// for i in 10..15 {
    ///     store.insert(i.to_string(), vec![0u8; 1000])?;
    /// }
    /// let stats = store.stats();
    /// assert_eq!((stats.cleaned, stats.spills, stats.respills), (5, 0, 5));
    /// assert_eq!(store.location("0"), Some(Location::File));
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn clean_ahead(mut self, bytes: u64) -> Self {
        self.clean_ahead = Some(bytes);
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
        match self.max_disk_size {
            Some(0) => return invalid("max_disk_size must be positive".into()),
            Some(_) if self.dump_dir.is_none() => {
                return invalid("max_disk_size needs a dump_dir".into())
            }
            _ => {}
        }
        if self.clean_ahead.is_some_and(|b| b > 0) && self.dump_dir.is_none() {
            return invalid("clean_ahead needs a dump_dir (or 0)".into());
        }
        if self.max_open_files == Some(0) {
            return invalid("max_open_files must be at least 1".into());
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
            max_disk_size: self.max_disk_size,
            max_open_files: self.max_open_files,
            clean_ahead: self.resolved_clean_ahead(),
        })
    }

    fn resolved_clean_ahead(&self) -> u64 {
        let Some(max_size) = self.max_size else {
            return 0;
        };
        let default = (max_size / DEFAULT_CLEAN_AHEAD_DIVISOR).min(MAX_DEFAULT_CLEAN_AHEAD);
        self.clean_ahead.unwrap_or(default).min(max_size)
    }
}

impl<K> Builder<K>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
{
    /// Validates the settings, opens and locks the dump directory, and
    /// returns the store.
    ///
    /// A dump directory the store creates gets mode 0700 (one that exists
    /// keeps its mode), and the spill files mode 0600. Spill files left in
    /// it by an earlier store that died (the lock is free, so no live store
    /// uses them) are deleted; they are recognised by their content, never by
    /// name alone, and counted in [`Stats::orphans_removed`](crate::Stats::orphans_removed).
    ///
    /// # Errors
    ///
    /// `InvalidConfig` for settings that do not fit together (`max_size`
    /// without `dump_dir` or the reverse, `max_disk_size` without
    /// `dump_dir`), a zero `max_size`, `max_disk_size`, `max_open_files` or
    /// shard count, or a `dump_dir` that is not a directory;
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
