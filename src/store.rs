//! [`SpillStore`]: hash once, route to a shard, and nothing more.

use std::borrow::Borrow;
use std::hash::Hash;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam::utils::CachePadded;

use crate::background::Worker;
use crate::compaction;
use crate::config::{Builder, Config};
use crate::error::{Error, LimitKind};
#[cfg(feature = "tokio")]
use crate::shard::Probe;
use crate::shard::{Disk, Frontier, Shard};
use crate::spill::{RecordReader, SpillDir};
use crate::stats::Stats;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::Mutex;

/// Where a stored value is held.
///
/// # Examples
///
/// ```
/// use spillstore::{Location, SpillStore};
///
/// let store = SpillStore::new();
/// store.insert("k".to_string(), "v")?;
/// assert_eq!(store.location("k"), Some(Location::Memory));
/// assert_eq!(store.location("absent"), None);
/// # Ok::<(), spillstore::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// In memory: a `get` returns it without reading a file.
    Memory,
    /// Only in a spill file: a `get` reads it back.
    File,
}

/// A concurrent, sharded blob store that keeps a bounded number of bytes in
/// memory and spills the least recently used values to files.
///
/// All methods take `&self` (except [`cleanup`](Self::cleanup)), so one store
/// is shared between threads behind an `Arc`. See the [crate docs](crate) for
/// the design and the guarantees.
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
///     .build()?;
/// for i in 0..20 {
///     store.insert(i.to_string(), vec![i as u8; 10])?;
/// }
/// // 100 bytes fit in memory; the ten least recently used went to disk.
/// assert_eq!(store.location("0"), Some(Location::File));
/// assert_eq!(store.location("19"), Some(Location::Memory));
/// // Reading a spilled value brings it back (and spills another).
/// assert_eq!(store.get("0")?.as_deref(), Some(&[0u8; 10][..]));
/// assert_eq!(store.location("0"), Some(Location::Memory));
/// # Ok::<(), spillstore::Error>(())
/// ```
pub struct SpillStore<K: Send + Sync = String> {
    shared: Arc<Shared<K>>,
    /// Runs compaction passes off the callers' path; `None` without a dump
    /// dir, and under shuttle (whose model checks run passes inline).
    compactor: Option<Worker>,
    /// Writes copies ahead of need and punches holes off the callers' path
    /// (see [`Shared::run_spiller`]); `None` when the compactor is.
    spiller: Option<Worker>,
    hasher: ahash::RandomState,
    max_size: Option<u64>,
    max_object_size: Option<u64>,
}

/// What the store and its compaction thread share.
struct Shared<K> {
    shards: Box<[CachePadded<Shard<K>>]>,
    /// Declared after `shards`: on drop the records go before the directory.
    spill: Option<SpillDir>,
    /// Held through each compaction pass, so passes never overlap; holds
    /// the number of the last wake-up request served (by a background pass,
    /// or by `quiesce`, which serves every request made before it).
    passes: Mutex<u64>,
    /// Wake-up requests so far, made by inserts and removes that found a
    /// pass due.
    requested: AtomicU64,
    /// Held through each run of the spiller, so runs never overlap.
    spiller_run: Mutex<()>,
    /// Where the spiller stands in each shard; held while it cleans that
    /// shard, by it or by an insert helping it (see `Disk::help_clean`).
    frontiers: Vec<Mutex<Frontier>>,
    /// `clean_ahead`: also the disk budget the spiller leaves untouched.
    clean_ahead: u64,
}

impl<K: Hash + Eq + Send + Sync> Shared<K> {
    /// A pass now, after one in progress: `force`d, or if one is due; and,
    /// with `serve_requests`, counting every request made so far as served,
    /// so the background thread does not start another for them.
    fn compact(&self, force: bool, mode: compaction::Mode, serve_requests: bool) {
        let Some(spill) = &self.spill else { return };
        let mut served = self.passes.lock();
        if serve_requests {
            *served = self.requested.load(Ordering::Acquire);
        }
        compaction::run_pass(&self.shards, spill, force, mode);
    }

    /// The spiller's run: punches the batches of dead blocks gathered, then
    /// cleans the shards that asked for it, or with `full` every shard,
    /// walking its whole window from the tail. A write error ends the run:
    /// the values stay without copies, and the inserts that evict them write
    /// them, meeting the error themselves if it lasts. Says whether one
    /// ended it.
    fn run_spiller(&self, full: bool) -> bool {
        let Some(spill) = &self.spill else {
            return false;
        };
        let _run = self.spiller_run.lock();
        spill.punch_due();
        for (shard, frontier) in self.shards.iter().zip(&self.frontiers) {
            let mut frontier = frontier.lock();
            let requested = shard.take_clean_request() || shard.cleaning_due_soon();
            if full {
                frontier.restart();
            }
            if (requested || full) && shard.clean(&mut frontier, spill, self.clean_ahead).is_err() {
                return true;
            }
        }
        false
    }

    /// The spiller thread's run: after a write error, it waits a little
    /// before it takes the next wake-up, so that a full disk does not turn
    /// every insert's wake-up into a failing write. Says when to run again
    /// without a wake-up: while holes are being punched, every
    /// [`PUNCH_TICK`](crate::spill::PUNCH_TICK) (see
    /// [`SpillDir::next_punch_tick`]).
    fn run_spiller_pausing(&self) -> Option<Duration> {
        if self.run_spiller(false) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.spill.as_ref().and_then(SpillDir::next_punch_tick)
    }

    /// The background thread's pass: serves the requests made so far,
    /// unless a pass or `quiesce` served them already.
    fn compact_requested(&self) {
        let Some(spill) = &self.spill else { return };
        let wanted = self.requested.load(Ordering::Acquire);
        let mut served = self.passes.lock();
        if *served >= wanted {
            return;
        }
        *served = wanted;
        compaction::run_pass(&self.shards, spill, false, compaction::Mode::Background);
    }
}

impl<K: Send + Sync> Shared<K> {
    /// Runs `f` on every shard: on rayon's pool, or one after another under
    /// shuttle, which cannot schedule rayon's threads.
    fn for_each_shard(&self, f: impl Fn(&Shard<K>) + Send + Sync) {
        #[cfg(not(shuttle))]
        {
            use rayon::prelude::*;
            self.shards.par_iter().for_each(|shard| f(shard));
        }
        #[cfg(shuttle)]
        self.shards.iter().for_each(|shard| f(shard));
    }
}

impl SpillStore<String> {
    /// An unbounded in-memory store with `String` keys, like
    /// `EndpointStorage()` with no arguments.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::SpillStore;
    ///
    /// let store = SpillStore::new();
    /// store.insert("key".to_string(), b"value".to_vec())?;
    /// assert_eq!(store.get("key")?.as_deref(), Some(&b"value"[..]));
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn new() -> Self {
        Builder::new()
            .build()
            .expect("an unbounded store needs no I/O and cannot fail")
    }
}

impl Default for SpillStore<String> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Send + Sync> std::fmt::Debug for SpillStore<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpillStore")
            .field("shards", &self.shared.shards.len())
            .field("max_size", &self.max_size)
            .field("max_object_size", &self.max_object_size)
            .field("dump_dir", &self.shared.spill.as_ref().map(|s| s.path()))
            .finish_non_exhaustive()
    }
}

impl<K> SpillStore<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// A [`Builder`] for a store with keys of type `K`.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::SpillStore;
    ///
    /// let store = SpillStore::<u64>::builder().build()?;
    /// store.insert(7, vec![1, 2, 3])?;
    /// assert_eq!(store.get(&7)?.unwrap().as_ref(), &[1, 2, 3]);
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn builder() -> Builder<K> {
        Builder::new()
    }

    /// Builds the store from validated settings.
    ///
    /// Sharding math: the shard count `n` is a power of two; shard `i` owns
    /// `max_size / n` bytes plus one more byte if `i < max_size % n`, so the
    /// shares add up to exactly `max_size`. A key's shard is picked by bits
    /// 32 and up of its 64-bit hash; the shard's hash table uses the low bits
    /// for its bucket and the top seven as tags, so the two never overlap
    /// (for up to 2^25 shards).
    pub(crate) fn with_config(config: Config) -> Result<Self, Error> {
        let spill = match &config.dump_dir {
            Some(dir) => Some(SpillDir::open(dir.clone(), &config)?),
            None => None,
        };
        // Under shuttle the hasher is seeded, so that keys land in the same
        // shards in every execution and a failing schedule replays exactly.
        let hasher = if cfg!(shuttle) {
            ahash::RandomState::with_seeds(1, 2, 3, 4)
        } else {
            ahash::RandomState::new()
        };
        let n = config.shards as u64;
        let shards = (0..n)
            .map(|i| {
                let budget = config
                    .max_size
                    .map_or(u64::MAX, |max| max / n + u64::from(i < max % n));
                let window = config.clean_ahead / n + u64::from(i < config.clean_ahead % n);
                CachePadded::new(Shard::new(budget, window, hasher.clone(), config.exact_lru))
            })
            .collect();
        let shared = Arc::new(Shared {
            shards,
            spill,
            passes: Mutex::new(0),
            requested: AtomicU64::new(0),
            spiller_run: Mutex::new(()),
            frontiers: (0..n).map(|_| Mutex::new(Frontier::default())).collect(),
            clean_ahead: config.clean_ahead,
        });
        let (compactor, spiller) = match &shared.spill {
            Some(spill) if !cfg!(shuttle) => {
                let path = spill.path();
                let spawn = |name: &str, job: fn(&Shared<K>) -> Option<Duration>| {
                    let shared = Arc::clone(&shared);
                    Worker::spawn(name, move || job(&shared))
                        .map_err(|e| Error::io("starting a background thread for", path, e))
                };
                let compactor = spawn("spillstore-compactor", |shared| {
                    shared.compact_requested();
                    None
                })?;
                let spiller = spawn("spillstore-spiller", Shared::run_spiller_pausing)?;
                spill.punch_in_background(spiller.waker().clone());
                (Some(compactor), Some(spiller))
            }
            _ => (None, None),
        };
        Ok(SpillStore {
            shared,
            compactor,
            spiller,
            hasher,
            max_size: config.max_size,
            max_object_size: config.max_object_size,
        })
    }

    fn route<Q: Hash + ?Sized>(&self, key: &Q) -> (&Shard<K>, u64) {
        let hash = self.hasher.hash_one(key);
        let shards = &self.shared.shards;
        let index = (hash >> 32) as usize & (shards.len() - 1);
        (&shards[index], hash)
    }

    fn spill(&self) -> Option<&SpillDir> {
        self.shared.spill.as_ref()
    }

    fn disk(&self) -> Option<Disk<'_, K>> {
        let shards = &self.shared.shards;
        let spiller = self.spiller.as_ref().map(Worker::waker);
        let ahead = self.shared.clean_ahead;
        let cleaning = (ahead > 0).then_some((&self.shared.frontiers[..], ahead));
        self.spill().map(|dir| Disk {
            dir,
            shards,
            spiller,
            cleaning,
        })
    }

    /// Stores `value` under `key`, replacing any previous value (whose memory
    /// and spill file space are freed). Makes room by spilling least recently
    /// used values to the dump directory.
    ///
    /// A value larger than its shard's share of `max_size` (possible with
    /// several shards) is written straight to disk and later served from
    /// its file without being brought into memory.
    ///
    /// # Errors
    ///
    /// `ObjectTooLarge` when the value exceeds `max_object_size` ("object
    /// limit") or `max_size` ("memory limit"); `Io` when a spill needed to
    /// make room cannot be written (the disk is full, say). On error the key
    /// is not stored, a previous value under it stays, and every other value
    /// stays readable.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::SpillStore;
    ///
    /// let store = SpillStore::new();
    /// store.insert("k".to_string(), "first")?;
    /// store.insert("k".to_string(), "second")?;
    /// assert_eq!(store.get("k")?.as_deref(), Some(&b"second"[..]));
    /// assert_eq!(store.stats().memory_bytes, 6);
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn insert(&self, key: K, value: impl Into<Bytes>) -> Result<(), Error> {
        let value = value.into();
        self.check_size(value.len() as u64)?;
        let (shard, hash) = self.route(&key);
        // A replace in memory leaves the files as they were: no need to ask
        // (the check's relaxed loads and arithmetic were 3% of a replace).
        if shard.insert(key, hash, value, self.disk())? {
            self.compact_when_due();
        }
        Ok(())
    }

    /// Wakes the compaction thread when the spill files are wasteful (see
    /// [`SpillDir::compaction_due`]). Under shuttle the pass runs inline
    /// instead, so that model checks explore it too.
    #[inline(never)]
    fn compact_when_due(&self) {
        if !self.spill().is_some_and(SpillDir::compaction_due) {
            return;
        }
        match &self.compactor {
            Some(compactor) => {
                self.shared.requested.fetch_add(1, Ordering::Release);
                compactor.wake();
            }
            None => self.shared.compact(false, compaction::Mode::Inline, false),
        }
    }

    /// Reclaims disk space now: moves the values still needed out of spill
    /// files that are mostly dead space (replaced or removed values), so
    /// those files can be deleted. The store also does this by itself, on a
    /// background thread, whenever its files grow past twice the live data
    /// (their lengths past four times, where holes are punched);
    /// call this to shrink the dump directory at a moment of your choosing.
    /// Runs over the shards in parallel, after waiting for a background
    /// pass in progress to end.
    ///
    /// Values that fail their integrity check stay where they are. A spill
    /// that fails (disk full) ends the pass early, losing nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::SpillStore;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = SpillStore::builder()
    ///     .max_size(1000)
    ///     .dump_dir(dir.path())
    ///     .segment_size(4096)
    ///     .shards(1)
    ///     .build()?;
    /// for i in 0..200 {
    ///     store.insert(i.to_string(), vec![0u8; 100])?;
    /// }
    /// for i in (0..200).filter(|i| i % 4 != 0) {
    ///     store.remove(&i.to_string())?; // leaves every segment a quarter full
    /// }
    /// let before = store.stats().spill_file_bytes;
    /// store.compact();
    /// assert!(store.stats().spill_file_bytes < before);
    /// assert_eq!(store.get("4")?.unwrap().len(), 100);
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn compact(&self) {
        self.shared.compact(true, compaction::Mode::Parallel, false);
    }

    /// Waits until no background work is in progress, and does what is
    /// pending on the calling thread: a run of the spiller (copies written
    /// ahead, holes punched) and a compaction pass in progress end first,
    /// then the spiller's pending work (every shard's clean window walked
    /// in full) and a compaction pass that is due run here, serving every wake-up the background threads were sent so
    /// far. Afterwards [`stats`](Self::stats) and the dump directory reflect
    /// every call that returned before, until the next insert or remove
    /// wakes a background thread again.
    ///
    /// Meant for tests and measurements that compare the dump directory
    /// with the stored data; the store never needs it.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = spillstore::SpillStore::builder()
    ///     .max_size(100)
    ///     .dump_dir(dir.path())
    ///     .build()?;
    /// for i in 0..50 {
    ///     store.insert(i.to_string(), vec![0u8; 40])?;
    /// }
    /// for i in 0..50 {
    ///     store.remove(&i.to_string())?;
    /// }
    /// store.quiesce();
    /// assert_eq!(store.stats().spill_files, 0);
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn quiesce(&self) {
        self.shared.run_spiller(true);
        self.shared.compact(false, compaction::Mode::Inline, true);
        // What the pass freed is punched now, not by the spiller later.
        if let Some(spill) = self.spill() {
            let _run = self.shared.spiller_run.lock();
            spill.punch_due();
        }
    }

    /// The value of `key`, or `None` if absent.
    ///
    /// A value in memory is returned as a cheap clone and counts as used:
    /// its entry is marked for a second chance (the default CLOCK policy) or
    /// moved to the head of the LRU list (with
    /// [`Builder::exact_lru`](crate::Builder::exact_lru)). A spilled value
    /// is read back from its file (through a shared memory mapping, or
    /// with `pread` while the files are out of the page cache), verified
    /// against its checksum, and brought back into memory as a copy that no
    /// longer depends on the file (spilling others to make room). If no
    /// room can be made, it is still returned, just not brought back. A
    /// value larger than a shard's share of `max_size` stays on disk and is
    /// returned without a copy, as a slice of the file's mapping; so is, with
    /// the default recency policy, a value of 256 KiB or more on its first
    /// read in a while (see [`Builder::exact_lru`](crate::Builder::exact_lru)).
    /// A value returned from a mapping keeps its disk blocks until dropped.
    ///
    /// # Errors
    ///
    /// `Corrupted` when the spilled value's file was altered or truncated
    /// (the entry stays until removed or replaced); `Io` when the file cannot
    /// be read or mapped.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::SpillStore;
    ///
    /// let store = SpillStore::new();
    /// store.insert("k".to_string(), "v")?;
    /// assert_eq!(store.get("k")?.as_deref(), Some(&b"v"[..]));
    /// assert_eq!(store.get("nope")?, None);
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    // Inlined into the caller: as a call, it returned its 56-byte `Result`
    // through memory, and a caller's `?` into its own error type copied it
    // once more (a hit ran 262 instructions instead of 244 here;
    // `benches/instructions.sh hot-get spillstore`).
    #[inline]
    pub fn get<Q>(&self, key: &Q) -> Result<Option<Bytes>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (shard, hash) = self.route(key);
        shard.lookup(
            key,
            hash,
            |value| Ok(Some(value)),
            || Ok(None),
            |reader| self.reload_value(shard, key, hash, reader),
        )
    }

    /// The rest of [`get`](Self::get) for a value on disk, out of line so
    /// that the memory hit keeps a small stack frame.
    #[inline(never)]
    fn reload_value<Q>(
        &self,
        shard: &Shard<K>,
        key: &Q,
        hash: u64,
        reader: RecordReader,
    ) -> Result<Option<Bytes>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let read = shard.reload(key, hash, reader, self.disk())?;
        Ok(read.map(|(value, _)| value))
    }

    /// Like [`get`](Self::get), and also says where this call found the
    /// value: [`Location::File`] means it was read back from disk.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get): `Corrupted` when the spilled value's file was
    /// altered or truncated, `Io` when it cannot be read or mapped.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::{Location, SpillStore};
    ///
    /// let store = SpillStore::new();
    /// store.insert("k".to_string(), "v")?;
    /// let (value, from) = store.get_with_location("k")?.unwrap();
    /// assert_eq!((value.as_ref(), from), (&b"v"[..], Location::Memory));
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn get_with_location<Q>(&self, key: &Q) -> Result<Option<(Bytes, Location)>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (shard, hash) = self.route(key);
        shard.get(key, hash, self.disk())
    }

    /// Removes `key` and frees its memory and disk space; returns whether it
    /// was there. Never reads the value back from disk.
    ///
    /// # Errors
    ///
    /// Currently never fails; the `Result` leaves room for I/O reporting.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::SpillStore;
    ///
    /// let store = SpillStore::new();
    /// store.insert("k".to_string(), "v")?;
    /// assert!(store.remove("k")?);
    /// assert!(!store.remove("k")?);
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn remove<Q>(&self, key: &Q) -> Result<bool, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (shard, hash) = self.route(key);
        let removed = shard.remove(key, hash);
        self.compact_when_due();
        Ok(removed)
    }

    /// Whether `key` is stored, in memory or on disk. Does not change the
    /// LRU order.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::SpillStore;
    ///
    /// let store = SpillStore::new();
    /// store.insert("k".to_string(), "v")?;
    /// assert!(store.contains_key("k"));
    /// assert!(!store.contains_key("x"));
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.location(key).is_some()
    }

    /// Where the value of `key` is now, or `None` if absent. Does not change
    /// the LRU order.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::{Location, SpillStore};
    ///
    /// let store = SpillStore::new();
    /// store.insert("k".to_string(), "v")?;
    /// assert_eq!(store.location("k"), Some(Location::Memory));
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn location<Q>(&self, key: &Q) -> Option<Location>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (shard, hash) = self.route(key);
        shard.location(key, hash)
    }

    /// Number of stored keys.
    ///
    /// # Examples
    ///
    /// ```
    /// let store = spillstore::SpillStore::new();
    /// store.insert("a".to_string(), "1")?;
    /// assert_eq!(store.len(), 1);
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.shared.shards.iter().map(|s| s.len()).sum()
    }

    /// Whether no key is stored.
    ///
    /// # Examples
    ///
    /// ```
    /// let store = spillstore::SpillStore::new();
    /// assert!(store.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.shared.shards.iter().all(|s| s.len() == 0)
    }

    /// A snapshot of the stored keys, in no particular order.
    ///
    /// # Examples
    ///
    /// ```
    /// let store = spillstore::SpillStore::new();
    /// store.insert("a".to_string(), "1")?;
    /// store.insert("b".to_string(), "2")?;
    /// let mut keys = store.keys();
    /// keys.sort();
    /// assert_eq!(keys, ["a", "b"]);
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn keys(&self) -> Vec<K> {
        let mut keys = Vec::with_capacity(self.len());
        for shard in self.shared.shards.iter() {
            shard.collect_keys(&mut keys);
        }
        keys
    }

    /// Removes every key and deletes every spilled file; the shards are
    /// cleared in parallel. The dump directory and its lock stay.
    ///
    /// # Errors
    ///
    /// Currently never fails; the `Result` leaves room for I/O reporting.
    ///
    /// # Examples
    ///
    /// ```
    /// let store = spillstore::SpillStore::new();
    /// store.insert("a".to_string(), "1")?;
    /// store.clear()?;
    /// assert!(store.is_empty());
    /// assert_eq!(store.stats().memory_bytes, 0);
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn clear(&self) -> Result<(), Error> {
        // No compaction pass, and no run of the spiller, may hold records
        // written for entries cleared under it: every file goes before this
        // returns.
        let _pass = self.shared.passes.lock();
        let _spiller_run = self.shared.spiller_run.lock();
        let _cleaning: Vec<_> = self.shared.frontiers.iter().map(|f| f.lock()).collect();
        // Files emptied here are deleted whole: no holes punched first.
        let _bulk = self.spill().map(SpillDir::bulk_release);
        self.shared.for_each_shard(Shard::clear);
        if let Some(spill) = self.spill() {
            spill.drop_handed_over();
        }
        Ok(())
    }

    /// Clears the store, then removes the dump directory if nothing but the
    /// store's own files was in it.
    ///
    /// # Errors
    ///
    /// `Io` when the emptied directory cannot be removed.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::SpillStore;
    ///
    /// let parent = tempfile::tempdir().unwrap();
    /// let dir = parent.path().join("dump");
    /// let store = SpillStore::builder().max_size(10).dump_dir(&dir).build()?;
    /// store.insert("a".to_string(), vec![0u8; 8])?;
    /// store.insert("b".to_string(), vec![0u8; 8])?;
    /// store.cleanup()?;
    /// assert!(!dir.exists());
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn cleanup(mut self) -> Result<(), Error> {
        // The compaction thread ends first: it holds the other reference.
        drop(self.compactor.take());
        drop(self.spiller.take());
        self.clear()?;
        let spill = Arc::get_mut(&mut self.shared).and_then(|shared| shared.spill.take());
        let Some(spill) = spill else {
            return Ok(());
        };
        let path = spill.path().to_path_buf();
        drop(spill);
        match std::fs::remove_dir(&path) {
            Ok(()) => Ok(()),
            // Someone else's files are in it: leave them and the directory.
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing dump dir", path, e)),
        }
    }

    /// Sizes and activity counters; see [`Stats`].
    ///
    /// # Examples
    ///
    /// ```
    /// let store = spillstore::SpillStore::new();
    /// store.insert("a".to_string(), vec![0u8; 5])?;
    /// assert_eq!(store.stats().memory_bytes, 5);
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn stats(&self) -> Stats {
        let mut stats = Stats {
            max_size: self.max_size,
            ..Stats::default()
        };
        for shard in self.shared.shards.iter() {
            shard.add_stats(&mut stats);
        }
        if let Some(spill) = self.spill() {
            let usage = spill.usage();
            stats.spill_files = usage.files;
            stats.spill_file_bytes = usage.bytes;
            stats.spill_file_allocated_bytes = usage.allocated;
            stats.spill_live_bytes = usage.live;
            stats.max_disk_size = usage.limit;
            stats.punched_bytes = usage.punched_bytes;
            stats.open_spill_files = usage.open_files;
            stats.max_open_spill_files = usage.max_open_files;
            stats.orphans_removed = usage.orphans.files;
            stats.orphan_bytes_removed = usage.orphans.bytes;
            stats.compactions = usage.compactions;
            stats.compacted_bytes = usage.compacted_bytes;
        }
        stats
    }

    /// The dump directory, if the store spills.
    ///
    /// # Examples
    ///
    /// ```
    /// let store = spillstore::SpillStore::new();
    /// assert!(store.dump_dir().is_none());
    /// ```
    pub fn dump_dir(&self) -> Option<&Path> {
        self.spill().map(|s| s.path())
    }

    /// Number of shards (a power of two).
    ///
    /// # Examples
    ///
    /// ```
    /// let store = spillstore::SpillStore::<String>::builder().shards(5).build()?;
    /// assert_eq!(store.shard_count(), 8);
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn shard_count(&self) -> usize {
        self.shared.shards.len()
    }

    /// Walks every shard and checks every internal invariant (index and LRU
    /// list agree, byte counts add up, no shard over its budget). It takes
    /// each shard's lock in turn and costs O(entries): it is meant for tests
    /// and fuzzing, not for production paths.
    ///
    /// # Errors
    ///
    /// A description of the first violated invariant.
    ///
    /// # Examples
    ///
    /// ```
    /// let store = spillstore::SpillStore::new();
    /// store.insert("a".to_string(), "1")?;
    /// assert_eq!(store.validate(), Ok(()));
    /// # Ok::<(), spillstore::Error>(())
    /// ```
    pub fn validate(&self) -> Result<(), String> {
        for (i, shard) in self.shared.shards.iter().enumerate() {
            shard.validate().map_err(|e| format!("shard {i}: {e}"))?;
        }
        if let Some(max) = self.max_size {
            let shares: u64 = self.shared.shards.iter().map(|s| s.budget()).sum();
            if shares != max {
                return Err(format!("shard budgets add up to {shares}, not {max}"));
            }
        }
        Ok(())
    }

    /// The facade's inline `get`: a value in memory, or [`Probe::OnDisk`]
    /// when only [`get`](Self::get) can serve it (by reading its file).
    /// Counts hits and misses exactly as `get` does.
    #[cfg(feature = "tokio")]
    pub(crate) fn get_resident<Q>(&self, key: &Q) -> Probe
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (shard, hash) = self.route(key);
        shard.get_resident(key, hash)
    }

    /// The facade's inline reload, after [`get_resident`](Self::get_resident)
    /// found the value on disk: the value, read from the page cache and
    /// brought back into memory without a write, or `None` for
    /// [`get`](Self::get) (see `Shard::reload_without_io`).
    #[cfg(feature = "tokio")]
    pub(crate) fn reload_without_io<Q>(&self, key: &Q) -> Option<Result<Bytes, Error>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (shard, hash) = self.route(key);
        let spiller = self.spiller.as_ref().map(Worker::waker);
        shard.reload_without_io(key, hash, spiller)
    }

    /// The facade's inline `insert`: [`insert`](Self::insert) if it needs
    /// no I/O, else `Ok(Some((key, value)))` given back for `insert` (with
    /// only evictions done that `insert` would have done first). The size
    /// limits are checked here, so that a refused value fails at once.
    #[cfg(feature = "tokio")]
    pub(crate) fn insert_without_io(
        &self,
        key: K,
        value: Bytes,
    ) -> Result<Option<(K, Bytes)>, Error> {
        self.check_size(value.len() as u64)?;
        let (shard, hash) = self.route(&key);
        let spiller = self.spiller.as_ref().map(Worker::waker);
        match shard.insert_without_io(key, hash, value, spiller, self.spill()) {
            Ok(()) => {
                self.compact_when_due();
                Ok(None)
            }
            Err(given_back) => Ok(Some(given_back)),
        }
    }

    /// The facade's inline `remove`: [`remove`](Self::remove) if it drops
    /// no spill record, else `None` with nothing changed.
    #[cfg(feature = "tokio")]
    pub(crate) fn remove_without_io<Q>(&self, key: &Q) -> Option<bool>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (shard, hash) = self.route(key);
        let removed = shard.remove_without_io(key, hash, self.spill())?;
        self.compact_when_due();
        Some(removed)
    }

    /// The size limits of [`insert`](Self::insert): `ObjectTooLarge` for a
    /// value over `max_object_size` or `max_size`.
    fn check_size(&self, size: u64) -> Result<(), Error> {
        if let Some(limit) = self.max_object_size.filter(|&l| size > l) {
            return Err(Error::ObjectTooLarge {
                size,
                limit,
                kind: LimitKind::Object,
            });
        }
        if let Some(limit) = self.max_size.filter(|&l| size > l) {
            return Err(Error::ObjectTooLarge {
                size,
                limit,
                kind: LimitKind::Memory,
            });
        }
        Ok(())
    }
}

impl<K: Send + Sync> Drop for SpillStore<K> {
    /// Stops the compaction thread, then deletes all spilled data (the shards
    /// are emptied in parallel) and the lock file; the dump directory itself
    /// stays.
    fn drop(&mut self) {
        drop(self.compactor.take());
        drop(self.spiller.take());
        let _bulk = self.shared.spill.as_ref().map(SpillDir::bulk_release);
        self.shared.for_each_shard(Shard::clear);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reload from the disk pushes another value out of memory; the next
    /// one of that size reads into the buffer the leaving value freed, not
    /// into new pages.
    #[test]
    // A whole store drops its files with rayon, whose crossbeam-epoch
    // Stacked Borrows rejects; the buffers' own tests run under Miri.
    #[cfg_attr(miri, ignore)]
    fn a_cold_reload_reads_into_the_buffer_a_leaving_value_freed() {
        const LEN: usize = 64 * 1024;
        let value = |i: u8| Bytes::from(vec![i; LEN]);
        let dir = tempfile::tempdir().unwrap();
        // A shard of 16 values keeps one spare buffer of this size.
        let s = SpillStore::builder()
            .max_size(16 * LEN as u64)
            .dump_dir(dir.path())
            .shards(1)
            .exact_lru(true)
            .clean_ahead(0)
            .build()
            .unwrap();
        // Held here, so that the shard keeps none of their buffers.
        let inserted: Vec<Bytes> = (0..17u8).map(value).collect();
        for (i, v) in inserted.iter().enumerate() {
            s.insert(i.to_string(), v.clone()).unwrap(); // "16" evicts "0"
        }
        // Reads every value in memory but `key`, then one on disk: `key`,
        // least recently used, leaves memory without a write.
        let push_out = |key: &str| {
            let keys = s.keys();
            let (memory, disk): (Vec<_>, Vec<_>) = keys
                .iter()
                .filter(|k| *k != key)
                .partition(|k| s.location(k.as_str()) == Some(Location::Memory));
            for k in memory {
                s.get(k).unwrap();
            }
            s.get(disk[0]).unwrap();
            assert_eq!(s.location(key), Some(Location::File));
        };
        let reload = |key: &str| {
            let value = s.get(key).unwrap().unwrap();
            assert_eq!(s.location(key), Some(Location::Memory));
            value.as_ptr()
        };
        let cold = || s.spill().unwrap().pretend_reads_are_cold();
        cold();
        // A new buffer: none is kept yet.
        let kept = reload("0");
        // Its buffer is kept. Had the buffer gone back to the allocator
        // instead, this would likely get it.
        push_out("0");
        let absorb = std::hint::black_box(Vec::<u8>::with_capacity(LEN));
        cold();
        assert_eq!(reload("0"), kept, "from the disk: the kept buffer");
        drop(absorb);
        assert_eq!(s.get("0").unwrap().unwrap(), value(0));
        // A value a caller still holds is never reused under it.
        let held = s.get("0").unwrap().unwrap();
        cold();
        push_out("0");
        push_out("5"); // a reload from the disk after "0" left
        assert_eq!(held, value(0));
        drop(inserted);
        s.validate().unwrap();
    }
}
