//! Counters and the [`Stats`] snapshot.

use crate::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a store's contents and activity, from [`SpillStore::stats`](crate::SpillStore::stats).
///
/// The sizes are taken shard by shard, so under concurrent writes they are
/// each exact for their shard but not one atomic picture of the whole store.
/// `memory_bytes` and `disk_bytes` count value bytes (payload) only, so
/// together they are the total size of all stored values.
///
/// # Examples
///
/// ```
/// use spillstore::SpillStore;
///
/// let store = SpillStore::new();
/// store.insert("a".to_string(), vec![0u8; 10])?;
/// store.get("a")?;
/// store.get("b")?;
/// let stats = store.stats();
/// assert_eq!((stats.entries, stats.memory_bytes, stats.disk_bytes), (1, 10, 0));
/// assert_eq!((stats.hits, stats.misses), (1, 1));
/// # Ok::<(), spillstore::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Number of stored keys.
    pub entries: usize,
    /// Keys whose value is in memory.
    pub memory_entries: usize,
    /// Keys whose value is only on disk.
    pub disk_entries: usize,
    /// Bytes of the values in memory; never more than `max_size`.
    pub memory_bytes: u64,
    /// Bytes of the values only on disk.
    pub disk_bytes: u64,
    /// The configured in-memory budget, if any.
    pub max_size: Option<u64>,
    /// Spill files in the dump directory now.
    pub spill_files: usize,
    /// Bytes those files span, as their lengths add up (what `ls` shows):
    /// record headers, copies kept for cheap re-eviction, holes and space not
    /// yet reclaimed included. The files are sparse: see
    /// `spill_file_allocated_bytes` for what they occupy.
    pub spill_file_bytes: u64,
    /// Bytes the spill files occupy on disk: their allocated blocks, as `du`
    /// counts them, plus an allowance for the file system's extent maps, and
    /// space priced for writes in flight. Never more than `max_disk_size`;
    /// `du` of the files is at most this (the store counts conservatively).
    pub spill_file_allocated_bytes: u64,
    /// Bytes of the records the spill files must keep: values only on disk
    /// and copies kept for cheap re-eviction, 32 bytes of record header per
    /// value included (also for values of 16 KiB or more, whose checksum is
    /// kept in memory instead of in a header on disk).
    pub spill_live_bytes: u64,
    /// The configured disk budget (`max_disk_size`), if any.
    pub max_disk_size: Option<u64>,
    /// Bytes returned to the file system by punching holes over blocks that
    /// only dead records covered (zero where the file system cannot).
    pub punched_bytes: u64,
    /// Spill files open now (a descriptor each, and a mapping once read).
    pub open_spill_files: usize,
    /// Spill files a store keeps open at most (`max_open_files`).
    pub max_open_spill_files: usize,
    /// Spill files of an earlier store that died, found in the dump dir and
    /// deleted when this store was built.
    pub orphans_removed: u64,
    /// Bytes those files occupied on disk.
    pub orphan_bytes_removed: u64,
    /// `get` calls served from memory.
    pub hits: u64,
    /// `get` calls for absent keys.
    pub misses: u64,
    /// `get` calls served from a spill file.
    pub reloads: u64,
    /// Value bytes served from spill files.
    pub reloaded_bytes: u64,
    /// Of those `reloads`, the ones that left the value on disk instead of
    /// bringing it back into memory: values larger than a shard's share of
    /// `max_size`, and, with the default recency policy, values of 256 KiB
    /// or more on their first read in a while (see
    /// [`Builder::exact_lru`](crate::Builder::exact_lru)).
    pub unpromoted_reloads: u64,
    /// Values written to spill files by the calling thread: evicted without
    /// a disk copy (the spiller had not cleaned them yet, or cleaning ahead
    /// is off), or larger than a shard's share and so stored on disk.
    pub spills: u64,
    /// Value bytes of those `spills`.
    pub spilled_bytes: u64,
    /// Values moved out of memory without a write, because an intact copy
    /// was on disk: kept from an earlier spill, or written ahead by the
    /// spiller (`cleaned`).
    pub respills: u64,
    /// Disk copies written ahead of need for resident values near the LRU
    /// tail (see [`Builder::clean_ahead`](crate::Builder::clean_ahead)): by
    /// the background spiller, or by a call that found it behind (one that
    /// had to write its victims, and then wrote a batch of copies for the
    /// calls after it). A copy whose value is then replaced or removed
    /// before it is evicted was written for nothing.
    pub cleaned: u64,
    /// Value bytes of those `cleaned` copies.
    pub cleaned_bytes: u64,
    /// Reads that found a spilled value corrupted.
    pub corruptions: u64,
    /// Compaction passes run: each moves the live records out of spill files
    /// that are mostly dead space, so those files can be deleted.
    pub compactions: u64,
    /// Value bytes moved by compaction.
    pub compacted_bytes: u64,
}

/// Activity counters of one shard; relaxed atomics, read only for [`Stats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) misses: AtomicU64,
    pub(crate) reloads: AtomicU64,
    pub(crate) reloaded_bytes: AtomicU64,
    pub(crate) unpromoted_reloads: AtomicU64,
    pub(crate) spills: AtomicU64,
    pub(crate) spilled_bytes: AtomicU64,
    pub(crate) respills: AtomicU64,
    pub(crate) cleaned: AtomicU64,
    pub(crate) cleaned_bytes: AtomicU64,
    pub(crate) corruptions: AtomicU64,
}

/// Adds `n` to a counter.
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    /// Adds this shard's counters into `stats`.
    pub(crate) fn add_to(&self, stats: &mut Stats) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        stats.misses += get(&self.misses);
        stats.reloads += get(&self.reloads);
        stats.reloaded_bytes += get(&self.reloaded_bytes);
        stats.unpromoted_reloads += get(&self.unpromoted_reloads);
        stats.spills += get(&self.spills);
        stats.spilled_bytes += get(&self.spilled_bytes);
        stats.respills += get(&self.respills);
        stats.cleaned += get(&self.cleaned);
        stats.cleaned_bytes += get(&self.cleaned_bytes);
        stats.corruptions += get(&self.corruptions);
    }
}
