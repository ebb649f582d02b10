//! One shard: a hash index, the LRU list of resident values and a byte budget.
//!
//! The shard decides what to spill and when; the spill module only stores
//! bytes. File I/O never happens under the shard's lock: victims are chosen
//! and marked *spilling* under the lock, written with the lock released (they
//! stay readable from memory meanwhile), and moved to disk when the lock is
//! taken again, unless they were removed or replaced in between.
//!
//! This file holds the shard's operations (insert, get, remove, making room,
//! what compaction needs); [`state`] holds the entry state machine they
//! drive: the states, the one method per transition, the accounting and the
//! write guard that frees everything taken out after the lock is released.

mod admission;
mod clean;
#[cfg(feature = "tokio")]
mod inline;
mod spares;
mod state;

use std::borrow::Borrow;
use std::hash::Hash;

use bytes::Bytes;

use crossbeam::utils::CachePadded;

use crate::access::AccessLog;
use crate::background::Waker;
use crate::error::Error;
use crate::lru::SlotId;
use crate::spill::{Record, RecordReader, SpillDir};
use crate::stats::{bump, Counters, Stats};
use crate::sync::atomic::{AtomicBool, AtomicU64};
use crate::sync::{lock_tracking, yield_now, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use crate::Location;

use admission::Admission;
pub(crate) use clean::Frontier;
#[cfg(feature = "tokio")]
pub(crate) use inline::Probe;
use spares::Spares;
use state::{Counts, Payload, Place, State, WriteGuard};
pub(crate) use state::{Relocation, SparseRecords};

/// The dump dir as a shard's operations see it: where to spill, the other
/// shards, whose disk copies a spill that meets the disk budget may give
/// up, and the spiller to wake when a shard nears its budget (`None` under
/// shuttle, whose tests run its work by hand through `quiesce`).
pub(crate) struct Disk<'a, K> {
    pub(crate) dir: &'a SpillDir,
    pub(crate) shards: &'a [CachePadded<Shard<K>>],
    pub(crate) spiller: Option<&'a Waker>,
    /// The spiller's walks, one per shard (each locked while that shard is
    /// cleaned), and the disk budget it leaves alone: for an insert that
    /// found the spiller behind to do some of its work (see
    /// [`Disk::help_clean`]).
    pub(crate) cleaning: Option<(&'a [Mutex<Frontier>], u64)>,
}

impl<K> Clone for Disk<'_, K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for Disk<'_, K> {}

impl<K: Hash + Eq> Disk<'_, K> {
    /// Drops every disk copy kept only for cheap re-eviction, shard by
    /// shard (so with no shard lock held by the caller); says whether any
    /// went.
    fn reclaim(&self) -> bool {
        let dropped: usize = self.shards.iter().map(|s| s.drop_copies(|_| true)).sum();
        dropped > 0
    }

    /// After an insert or a promotion into `shard` that had to write its
    /// victims itself (the spiller is behind, waiting for a core): cleans
    /// one batch of the shard's window on the calling thread, unless the
    /// spiller or another thread is cleaning it (holding its walk). The
    /// calls that come next in this shard then find their victims written,
    /// so one call in many writes, not each: the p99 is set by how many
    /// write, the p99.9 by how much. An error only leaves values without a
    /// copy, as in the spiller.
    fn help_clean(&self, shard: &Shard<K>) {
        let Some((frontiers, headroom)) = self.cleaning else {
            return;
        };
        let Some(i) = self.shards.iter().position(|s| std::ptr::eq(&**s, shard)) else {
            return;
        };
        if let Some(mut frontier) = frontiers.get(i).and_then(Mutex::try_lock) {
            let _ = shard.clean_batch(&mut frontier, self.dir, headroom);
        }
    }
}

/// One independently locked part of the store.
pub(crate) struct Shard<K> {
    state: RwLock<State<K>>,
    /// Counts memory hits; with `exact_lru`, also records them under the
    /// read lock for the next writer to apply to the LRU list (lossy only
    /// when full and the lock is contended).
    accesses: AccessLog,
    /// Exact LRU order (hits move entries) instead of CLOCK (hits mark them);
    /// see `Builder::exact_lru`.
    exact_lru: bool,
    /// This shard's share of `max_size`; `u64::MAX` when unbounded.
    budget: u64,
    /// This shard's share of `clean_ahead`: the bytes at the LRU tail that
    /// the spiller keeps written (see [`clean`]); 0 when off.
    window: u64,
    /// Set when the shard asks the spiller for a run, cleared when it
    /// starts one.
    clean_requested: AtomicBool,
    /// The shard's total of evicted bytes ([`state::Evictions::bytes`]) by
    /// which half of the window the spiller's last complete run left clean
    /// will have been evicted: no run is asked for before (see
    /// [`request_cleaning`](Self::request_cleaning)).
    clean_horizon: AtomicU64,
    /// The slot of the spiller's frontier entry (see [`clean`]), or
    /// `u64::MAX`; written by the spiller under the read lock, read by the
    /// eviction hand under the write lock.
    frontier_slot: AtomicU64,
    hasher: ahash::RandomState,
    counters: Counters,
    /// Buffers of large values that left memory, for the next reloads.
    spares: Spares,
    /// The large reads not brought back into memory, for the next ones
    /// (see [`admission`]); taken only by reloads of large values.
    admission: Mutex<Admission>,
}

impl<K> Shard<K>
where
    K: Hash + Eq,
{
    pub(crate) fn new(
        budget: u64,
        window: u64,
        hasher: ahash::RandomState,
        exact_lru: bool,
    ) -> Self {
        Shard {
            state: RwLock::new(State::new()),
            accesses: AccessLog::new(),
            exact_lru,
            budget,
            window,
            clean_requested: AtomicBool::new(false),
            clean_horizon: AtomicU64::new(0),
            frontier_slot: AtomicU64::new(u64::MAX),
            hasher,
            counters: Counters::default(),
            spares: Spares::new(budget),
            admission: Mutex::new(Admission::default()),
        }
    }

    pub(crate) fn budget(&self) -> u64 {
        self.budget
    }

    /// Stores `value` under `key`, replacing any previous value. Says
    /// whether the dump dir changed: a value written, or a spill record
    /// given up. Only then can its files have become due for compaction.
    /// Inlined into its one caller: left to the compiler, it became a call
    /// (and the hashing too) once `SpillStore::get` was inlined elsewhere.
    #[inline]
    pub(crate) fn insert(
        &self,
        key: K,
        hash: u64,
        value: Bytes,
        disk: Option<Disk<'_, K>>,
    ) -> Result<bool, Error> {
        let len = value.len() as u64;
        if len > self.budget {
            return self.insert_large(key, hash, value, disk);
        }
        let mut state = self.state.write();
        let found = state.find(hash, &key);
        if self.exact_lru {
            return self.insert_general(state, found, key, hash, value, disk);
        }
        lock_tracking::taken();
        match self.replace_resident(&mut state, found, value, disk.and_then(|d| d.spiller)) {
            Ok(old) => {
                drop(state);
                lock_tracking::released();
                // Freed after the lock, as the guard's garbage would be.
                drop(key);
                Ok(old.free(&self.spares))
            }
            Err(value) => {
                lock_tracking::released(); // the guard tracks it from here
                self.insert_general(state, found, key, hash, value, disk)
            }
        }
    }

    /// The most common insert, taken before `make_room` and `store_found`:
    /// with CLOCK, `value` replaces the resident value in `found` (as
    /// `State::find` returned it under this hold of the lock) where it
    /// stands, if the shard's budget holds it without evicting anything.
    /// Returns the payload replaced, for the caller to free after the lock.
    /// Hands `value` back, with nothing changed, when the key is absent or
    /// not resident, or when the value does not fit.
    ///
    /// Under the bare lock, without a [`WriteGuard`]: nothing goes to
    /// garbage, and there is no exact-LRU log to replay. It is the one
    /// transition outside the guard (see `state`, "Frees after the lock").
    /// A replace in the compare tool's `mixed` runs 824-829 instructions
    /// so, against 949 through the guard (`benches/instructions.sh mixed
    /// spillstore`).
    #[inline]
    fn replace_resident(
        &self,
        state: &mut State<K>,
        found: Option<SlotId>,
        value: Bytes,
        spiller: Option<&Waker>,
    ) -> Result<Payload, Bytes> {
        let Some(slot) = found else {
            return Err(value);
        };
        // Asked as `make_room` asks once there is room, with the value
        // replaced still counted.
        let memory = state.counts.memory_bytes.saturating_add(value.len() as u64);
        let dirty = state.counts.dirty_entries + 1;
        let evicted = state.evictions.bytes;
        let old = state.replace_linked(slot, value, self.budget)?;
        self.ask_spiller_counts(memory, dirty, evicted, spiller);
        Ok(old)
    }

    /// [`insert`](Self::insert) of a value larger than this shard's share
    /// of memory: it goes straight to disk and is served from its mapping
    /// without promotion.
    #[inline(never)]
    fn insert_large(
        &self,
        key: K,
        hash: u64,
        value: Bytes,
        disk: Option<Disk<'_, K>>,
    ) -> Result<bool, Error> {
        let disk = disk.expect("a bounded shard always has a dump dir");
        let value = std::slice::from_ref(&value);
        let records = match disk.dir.write(value) {
            Err(Error::DiskLimit { .. }) if disk.reclaim() => disk.dir.write(value),
            written => written,
        };
        let record = records?.pop().expect("one record per value");
        let spare_key = self.write().store(key, hash, Payload::Disk(record));
        drop(spare_key); // after the guard, a temporary of the line above
        Ok(true)
    }

    /// The rest of [`insert`](Self::insert), under the lock it took, when
    /// the value cannot simply replace a resident one: makes room, then
    /// stores it. Out of line, so that the replace stays a short function;
    /// given the bare lock, not a [`WriteGuard`], which a call would copy.
    #[inline(never)]
    fn insert_general<'a>(
        &'a self,
        state: RwLockWriteGuard<'a, State<K>>,
        found: Option<SlotId>,
        key: K,
        hash: u64,
        value: Bytes,
        disk: Option<Disk<'_, K>>,
    ) -> Result<bool, Error> {
        let len = value.len() as u64;
        // The guard ends with its block, dropped where it lies: moving it
        // into `drop` copied its hundred bytes first.
        let (wrote, dropped, spare_key) = {
            let mut guard = WriteGuard::new(self, state);
            let replacing = Some((&key, hash));
            let (found, wrote) = self.make_room(&mut guard, len, replacing, Some(found), disk)?;
            let value = Payload::Resident { value, copy: None };
            let (dropped, spare_key) = guard.store_found(found, key, hash, value);
            (wrote, dropped, spare_key)
        };
        drop(spare_key);
        if let (true, Some(disk)) = (wrote, disk) {
            disk.help_clean(self);
        }
        Ok(wrote || dropped)
    }

    /// The value of `key` and where it was served from.
    pub(crate) fn get<Q>(
        &self,
        key: &Q,
        hash: u64,
        disk: Option<Disk<'_, K>>,
    ) -> Result<Option<(Bytes, Location)>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lookup(
            key,
            hash,
            |value| Ok(Some((value, Location::Memory))),
            || Ok(None),
            |reader| self.reload(key, hash, reader, disk),
        )
    }

    /// The first half of [`get`](Self::get), under the read lock: a memory
    /// hit (counted, and marked for recency), a miss (counted), or the
    /// reader of a value on disk for [`reload`](Self::reload). Hands what
    /// it found to one of three functions, with the lock released, so that
    /// the caller builds its own result from the cloned value where it
    /// lies: through an enum of the three outcomes, the compiler copied the
    /// value once more for every enum between the clone and the caller's
    /// result.
    #[inline]
    pub(crate) fn lookup<Q, R>(
        &self,
        key: &Q,
        hash: u64,
        memory: impl FnOnce(Bytes) -> R,
        absent: impl FnOnce() -> R,
        disk: impl FnOnce(RecordReader) -> R,
    ) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lookup_locked(self.state.read(), key, hash, memory, absent, disk)
    }

    /// [`lookup`](Self::lookup) under `state`, a read lock the caller took.
    #[inline]
    fn lookup_locked<Q, R>(
        &self,
        state: RwLockReadGuard<'_, State<K>>,
        key: &Q,
        hash: u64,
        memory: impl FnOnce(Bytes) -> R,
        absent: impl FnOnce() -> R,
        disk: impl FnOnce(RecordReader) -> R,
    ) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some((slot, found)) = state.find_for_read(hash, key) else {
            drop(state);
            bump(&self.counters.misses, 1);
            return absent();
        };
        match &found.item().payload {
            Payload::Resident { value, .. } if !self.exact_lru => {
                // CLOCK's reference mark, set here rather than in
                // `find_for_read`: one test of the mode and of the payload
                // instead of two (a hit ran 7 instructions more).
                found.mark();
                // Counted first (on this thread's own counter, so under the
                // lock is no cost to others) and cloned last: with nothing
                // between the clone and `memory`, the compiler copies the
                // value less on its way out (a hit ran 6 instructions more
                // with the count after the lock).
                self.accesses.count_hit();
                let value = value.clone();
                drop(state);
                memory(value)
            }
            // Exact LRU records the hit for the next writer, after the lock
            // is released (the record may replay the log under the write
            // lock).
            Payload::Resident { value, .. } => {
                let value = value.clone();
                drop(state);
                self.record_access(slot);
                memory(value)
            }
            Payload::Disk(record) => {
                let reader = record.reader();
                drop(state);
                disk(reader)
            }
        }
    }

    /// The rest of [`get`](Self::get) for a value on disk: reads it with
    /// `reader`, and brings it back into memory if it fits. Kept out of
    /// line, so that the memory hit stays a short function.
    #[inline(never)]
    pub(crate) fn reload<Q>(
        &self,
        key: &Q,
        hash: u64,
        reader: RecordReader,
        disk: Option<Disk<'_, K>>,
    ) -> Result<Option<(Bytes, Location)>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let len = reader.value_len();
        let fits = len <= self.budget;
        let promote = fits && self.brings_back(hash, len);
        if fits && !promote && !reader.reads_cold() {
            // Served from the file without a copy, and not brought back.
            let bytes = self.counted(reader.read_unpromoted(), len)?;
            bump(&self.counters.unpromoted_reloads, 1);
            return Ok(Some((bytes, Location::File)));
        }
        // A value that will be resident again is copied out of the mapping,
        // so later hits never depend on the file; so is one read from the
        // disk (with `pread`, into a kept buffer), promoted or not. One too
        // large to be resident is handed out as a slice of the mapping.
        let read = if fits {
            // A kept buffer only while reads go to the disk: from the page
            // cache, copies into one ran slower than into the allocator's.
            let spare = match usize::try_from(len) {
                Ok(len) if reader.reads_cold() => self.spares.take(len),
                _ => {
                    self.spares.not_wanted();
                    Vec::new()
                }
            };
            reader.read_copy_into(spare)
        } else {
            reader.read_mapped()
        };
        let bytes = self.counted(read, len)?;
        if !promote {
            bump(&self.counters.unpromoted_reloads, 1);
            return Ok(Some((bytes, Location::File)));
        }
        // Failing to make room is not an error: the bytes read are
        // served anyway, just not brought back into memory.
        let mut guard = self.write();
        if let Ok((_, wrote)) = self.make_room::<Q>(&mut guard, len, None, None, disk) {
            guard.promote(key, hash, &reader, &bytes);
            drop(guard);
            if let (true, Some(disk)) = (wrote, disk) {
                disk.help_clean(self);
            }
        }
        Ok(Some((bytes, Location::File)))
    }

    /// Whether a reload of `len` bytes of the key hashed `hash`, which fits
    /// this shard's share, brings the value back into memory: always with
    /// `exact_lru` (the seed's order) and for values under
    /// [`admission::MIN_LEN`]; else on its second read within the share
    /// (see [`admission`]).
    fn brings_back(&self, hash: u64, len: u64) -> bool {
        self.exact_lru
            || len < admission::MIN_LEN
            || self.admission.lock().admits(hash, len, self.budget)
    }

    /// Counts a read of `len` bytes from disk: a reload, or a corruption.
    fn counted(&self, read: Result<Bytes, Error>, len: u64) -> Result<Bytes, Error> {
        let bytes = read.inspect_err(|e| {
            if matches!(e, Error::Corrupted { .. }) {
                bump(&self.counters.corruptions, 1);
            }
        })?;
        bump(&self.counters.reloads, 1);
        bump(&self.counters.reloaded_bytes, len);
        Ok(bytes)
    }

    /// Removes `key`; says whether it was there. Never reads from disk.
    pub(crate) fn remove<Q>(&self, key: &Q, hash: u64) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.write().remove(key, hash)
    }

    /// Where the value of `key` is, without touching the LRU order.
    pub(crate) fn location<Q>(&self, key: &Q, hash: u64) -> Option<Location>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let state = self.state.read();
        let slot = state.find(hash, key)?;
        Some(match state.entry(slot).payload {
            Payload::Resident { .. } => Location::Memory,
            Payload::Disk(_) => Location::File,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.state.read().slab.len()
    }

    /// Appends clones of all keys to `out`.
    pub(crate) fn collect_keys(&self, out: &mut Vec<K>)
    where
        K: Clone,
    {
        let state = self.state.read();
        out.extend(state.slab.iter().map(|(_, e)| e.key.clone()));
    }

    /// Adds this shard's sizes and counters into `stats`.
    pub(crate) fn add_stats(&self, stats: &mut Stats) {
        {
            let state = self.state.read();
            stats.entries += state.slab.len();
            let counts = state.counts;
            stats.memory_entries += counts.memory_entries;
            stats.disk_entries += state.slab.len() - counts.memory_entries;
            stats.memory_bytes += counts.memory_bytes;
            stats.disk_bytes += counts.disk_bytes;
        }
        self.counters.add_to(stats);
        stats.hits += self.accesses.hits();
    }

    /// Records a memory hit on `slot` for the LRU order without a write lock.
    ///
    /// When the buffer is full, the caller applies it if the lock is free;
    /// otherwise the access is dropped: under contention recency is
    /// approximate, single-threaded it is exact.
    ///
    /// The log holds slot ids, not entries: by the time it is replayed the
    /// slot may have been freed and reused (freed slots are reused last in,
    /// first out), and the replay then touches the new occupant. That only
    /// nudges one entry's recency and never breaks an invariant.
    ///
    /// Out of line (and only exact LRU's), so that the default policy's
    /// hit, inlined into `SpillStore::get`, keeps a small stack frame.
    #[inline(never)]
    fn record_access(&self, slot: SlotId) {
        if !self.accesses.record(slot) {
            if let Some(state) = self.state.try_write() {
                WriteGuard::new(self, state).state().slab.touch(slot);
            }
        }
    }

    /// Makes room under `guard`, this shard's write lock, until `len` more
    /// bytes fit in the budget, spilling least recently used values as
    /// needed (with the lock released while they are written). `replacing`
    /// names a key whose resident value the caller will replace under the
    /// guard: it is not spilled, and its bytes count as free. The guard is
    /// the caller's, not returned: moving it (a hundred bytes with its
    /// garbage bin) through the result cost a replace about 30 instructions.
    ///
    /// On a write error the victims stay in memory and the error is returned;
    /// but the first time an insert's write meets the disk budget, the disk
    /// copies that resident values keep for cheap re-eviction are given up
    /// first, in every shard (with this shard's lock released), and the write
    /// retried. A promotion (`replacing` is `None`) does not: it walks every
    /// entry, and a value that cannot be promoted is served anyway.
    ///
    /// `found` is the caller's lookup of the replaced key under this hold of
    /// the guard, if it made one: used until the lock is first released,
    /// instead of a lookup of its own.
    ///
    /// Returns the slot of the key replaced, as looked up under the guard
    /// since it last released the lock (`None` if absent, or if not
    /// replacing), so that the caller's store need not look it up again;
    /// and whether victims had to be written.
    fn make_room<'a, Q>(
        &'a self,
        guard: &mut WriteGuard<'a, K>,
        len: u64,
        replacing: Option<(&Q, u64)>,
        mut found: Option<Option<SlotId>>,
        disk: Option<Disk<'_, K>>,
    ) -> Result<(Option<SlotId>, bool), Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut reclaimed = false;
        let mut wrote = false;
        loop {
            // The caller's lookup holds until the lock is first released.
            let (over, keep) = match found.take() {
                Some(keep) => (guard.overflow_found(len, keep), keep),
                None => guard.overflow(len, replacing),
            };
            if over == 0 {
                // An insert adds a value without a copy; a promotion, one
                // with its record as copy.
                let added = usize::from(replacing.is_some());
                self.ask_spiller(guard.state(), len, added, disk.and_then(|d| d.spiller));
                return Ok((keep, wrote));
            }
            let disk = disk.expect("a bounded shard always has a dump dir");
            let spill = disk.dir;
            let victims = guard.evict(over, keep);
            if victims.is_empty() {
                if guard.overflow(len, replacing).0 > 0 {
                    // All else is being written out by other threads: wait.
                    debug_assert!(guard.state().counts.spilling_bytes > 0, "accounting is off");
                    guard.unlocked(yield_now);
                }
                continue;
            }
            let values: Vec<Bytes> = victims.iter().map(|v| v.value.clone()).collect();
            match guard.unlocked(move || spill.write(&values)) {
                Ok(records) => {
                    wrote = true;
                    for (victim, record) in victims.into_iter().zip(records) {
                        guard.finish_spill(victim, record);
                    }
                }
                Err(err) => {
                    for victim in victims {
                        guard.abort_spill(victim);
                    }
                    let insert = replacing.is_some();
                    if insert && matches!(err, Error::DiskLimit { .. }) && !reclaimed {
                        reclaimed = true;
                        if guard.unlocked(|| disk.reclaim()) {
                            continue;
                        }
                    }
                    return Err(err);
                }
            }
        }
    }

    /// What compaction should move or drop in this shard (see
    /// [`crate::compaction`]); taken under the read lock.
    pub(crate) fn sparse_records(&self) -> SparseRecords {
        let state = self.state.read();
        let mut found = SparseRecords {
            to_move: Vec::new(),
            copies: false,
        };
        for (slot, entry) in state.slab.iter() {
            match &entry.payload {
                Payload::Resident {
                    copy: Some(copy), ..
                } => found.copies |= copy.in_sparse_segment(),
                Payload::Disk(record) if record.in_sparse_segment() => {
                    let reader = record.reader();
                    found.to_move.push(Relocation { slot, reader });
                }
                _ => {}
            }
        }
        found
    }

    /// Drops the disk copies, selected by `doomed`, that resident values
    /// keep for cheap re-eviction (evicting those values later writes them
    /// anew). Returns how many went. Compaction drops those in sparse
    /// segments (cheaper than moving them); a spill that meets the disk
    /// budget drops them all.
    pub(crate) fn drop_copies(&self, doomed: impl Fn(&Record) -> bool) -> usize {
        let mut guard = self.write();
        let slots: Vec<SlotId> = guard.state().slab.iter().map(|(slot, _)| slot).collect();
        slots
            .into_iter()
            .filter(|&slot| guard.drop_copy(slot, &doomed))
            .count()
    }

    /// Installs records written by compaction for the entries that still
    /// hold the records they were read from; the others' new records are
    /// dropped. Returns the value bytes moved.
    pub(crate) fn install_moved(
        &self,
        moved: impl IntoIterator<Item = (Relocation, Record)>,
    ) -> u64 {
        let mut guard = self.write();
        moved
            .into_iter()
            .map(|(relocation, record)| guard.move_record(relocation, record))
            .sum()
    }

    /// Checks every invariant of the shard; returns the first violation.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let state = self.state.read();
        state.slab.validate()?;
        if state.index.len() != state.slab.len() {
            return Err(format!(
                "index has {} keys, slab {} entries",
                state.index.len(),
                state.slab.len()
            ));
        }
        let mut sums = Counts::default();
        for (slot, entry) in state.slab.iter() {
            let hash = self.hasher.hash_one(&entry.key);
            if state.find(hash, &entry.key) != Some(slot) {
                return Err(format!("slot {slot}: key not indexed to it"));
            }
            let len = entry.payload.len();
            if let Payload::Resident {
                copy: Some(copy), ..
            } = &entry.payload
            {
                if state.place(slot) == Place::Spilling {
                    return Err(format!("slot {slot}: spilling but has a disk copy"));
                }
                if copy.value_len() != len {
                    return Err(format!("slot {slot}: disk copy of another length"));
                }
            }
            sums.recount(len, Place::Absent, state.place(slot));
        }
        if sums != state.counts {
            return Err(format!(
                "entries sum to {sums:?}, counted {:?}",
                state.counts
            ));
        }
        if state.counts.memory_bytes > self.budget {
            return Err(format!(
                "{} bytes in memory over the budget of {}",
                state.counts.memory_bytes, self.budget
            ));
        }
        Ok(())
    }
}

impl<K> Shard<K> {
    /// The write lock, with buffered accesses applied first so that eviction
    /// decisions see the recency order of all earlier calls.
    fn write(&self) -> WriteGuard<'_, K> {
        WriteGuard::new(self, self.state.write())
    }

    /// Removes every entry; their files go as their last records are dropped.
    pub(crate) fn clear(&self) {
        self.write().clear();
        self.spares.release();
    }
}

#[cfg(test)]
mod tests {
    use super::state::Entry;
    use super::*;

    /// The per-entry bookkeeping the crate docs promise: a slab slot of an
    /// entry with a `String` key is 80 bytes, 24 of them the key's own.
    #[test]
    fn entry_sizes() {
        assert_eq!(std::mem::size_of::<Record>(), 16);
        assert_eq!(std::mem::size_of::<Payload>(), 48);
        assert_eq!(std::mem::size_of::<Entry<String>>(), 72);
        assert_eq!(std::mem::size_of::<Option<Entry<String>>>(), 72);
        assert_eq!(crate::lru::slot_size::<Entry<String>>(), 80);
    }

    fn spill_dir(dir: &tempfile::TempDir) -> SpillDir {
        let config = crate::config::Builder::<String>::new()
            .max_size(1)
            .dump_dir("unused")
            .segment_size(4096)
            .validate()
            .unwrap();
        SpillDir::open(dir.path().join("d"), &config).unwrap()
    }

    /// Frees under the lock are caught: dropping a spill record while the
    /// guard holds the lock panics in debug builds (the guard itself only
    /// ever frees after releasing it, which every other test exercises).
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "a spill record was dropped while holding a shard lock")]
    fn dropping_a_record_under_the_lock_panics() {
        let dir = tempfile::tempdir().unwrap();
        let spill = spill_dir(&dir);
        let record = spill.write(&[Bytes::from_static(b"v")]).unwrap().pop();
        let shard: Shard<u32> = Shard::new(100, 0, ahash::RandomState::new(), false);
        let _guard = shard.write();
        drop(record);
    }

    /// What a transition takes out waits in the guard's garbage and is freed
    /// when the guard goes: the spill file is deleted then, not before.
    #[test]
    fn the_guard_frees_after_unlocking() {
        let dir = tempfile::tempdir().unwrap();
        let spill = spill_dir(&dir);
        let shard: Shard<u32> = Shard::new(100, 0, ahash::RandomState::new(), false);
        let record = spill.write(&[Bytes::from_static(b"v")]).unwrap().pop();
        let mut guard = shard.write();
        let spare_key = guard.store(1, 1, Payload::Disk(record.unwrap()));
        assert_eq!(spare_key, None, "a new entry keeps the key it was given");
        assert!(guard.remove(&1, 1));
        assert_eq!(spill.usage().files, 1, "the record waits in the garbage");
        drop(guard);
        assert_eq!(spill.usage().files, 0, "freed with the guard");
        shard.validate().unwrap();
    }

    /// A replace in memory (the default policy's own path in `store_found`)
    /// says whether it left a spill record behind: only when the value it
    /// replaced kept its disk copy. The entry keeps its key and hands back
    /// the one it was given, and the copy is freed with the guard.
    #[test]
    fn a_replace_in_memory_reports_the_copy_it_drops() {
        let dir = tempfile::tempdir().unwrap();
        let spill = spill_dir(&dir);
        let shard: Shard<u32> = Shard::new(100, 0, ahash::RandomState::new(), false);
        let value = Bytes::from_static(b"v");
        let record = spill.write(std::slice::from_ref(&value)).unwrap().pop();
        let hash = shard.hasher.hash_one(1);
        let mut guard = shard.write();
        let copy = Payload::Resident {
            value,
            copy: record,
        };
        assert_eq!(guard.store(1, hash, copy), None);
        let found = guard.state().find(hash, &1);
        let fresh = Payload::Resident {
            value: Bytes::from_static(b"second"),
            copy: None,
        };
        assert_eq!(guard.store_found(found, 1, hash, fresh), (true, Some(1)));
        let found = guard.state().find(hash, &1);
        let fresh = Payload::Resident {
            value: Bytes::from_static(b"third"),
            copy: None,
        };
        assert_eq!(guard.store_found(found, 1, hash, fresh), (false, Some(1)));
        assert_eq!(spill.usage().files, 1, "the copy waits in the garbage");
        drop(guard);
        assert_eq!(spill.usage().files, 0, "freed with the guard");
        shard.validate().unwrap();
        let mut stats = Stats::default();
        shard.add_stats(&mut stats);
        assert_eq!((stats.entries, stats.memory_bytes), (1, 5));
    }

    /// The insert's shortcut for a replace in memory: it takes a value that
    /// fits beside the others where the old one stood (marked), and returns
    /// the old payload to free after the lock (its disk copy going with it);
    /// it hands back, with nothing changed, a value that would need an
    /// eviction and a key that is absent or on disk. Exact LRU never takes
    /// it: a replace moves the entry to the head, unmarked.
    #[test]
    fn replace_resident_takes_what_fits_and_hands_back_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let spill = spill_dir(&dir);
        let shard: Shard<u32> = Shard::new(10, 0, ahash::RandomState::new(), false);
        let hash = |key: u32| shard.hasher.hash_one(key);
        let on_disk = spill.write(&[Bytes::from_static(b"d")]).unwrap().pop();
        let live_without_copy = spill.usage().live;
        let value = Bytes::from_static(b"abcd");
        let record = spill.write(std::slice::from_ref(&value)).unwrap().pop();
        let live = spill.usage().live;
        {
            let mut guard = shard.write();
            let copy = Payload::Resident {
                value,
                copy: record,
            };
            assert_eq!(guard.store(1, hash(1), copy), None);
            let other = Payload::Resident {
                value: Bytes::from_static(b"xyz"),
                copy: None,
            };
            assert_eq!(guard.store(2, hash(2), other), None);
            let disk = Payload::Disk(on_disk.unwrap());
            assert_eq!(guard.store(3, hash(3), disk), None);
        }

        let mut state = shard.state.write();
        let slot = state.find(hash(1), &1);
        let exact = Bytes::from_static(b"1234567"); // 3 + 7 bytes: the budget
        let Ok(old) = shard.replace_resident(&mut state, slot, exact, None) else {
            panic!("a value that fits is taken");
        };
        assert!(state.slab.is_marked(slot.unwrap()));
        let over = Bytes::from_static(b"12345678");
        let refused = shard.replace_resident(&mut state, slot, over.clone(), None);
        assert_eq!(refused.err(), Some(over));
        let small = Bytes::from_static(b"s");
        for key in [4, 3] {
            // 4 is absent; 3 is on disk.
            let found = state.find(hash(key), &key);
            let refused = shard.replace_resident(&mut state, found, small.clone(), None);
            assert_eq!(refused.err(), Some(small.clone()), "key {key}");
        }
        drop(state);
        assert_eq!(
            spill.usage().live,
            live,
            "the copy goes with the old payload"
        );
        assert!(old.free(&shard.spares), "it had a copy");
        assert_eq!(spill.usage().live, live_without_copy);
        shard.validate().unwrap();
        let mut stats = Stats::default();
        shard.add_stats(&mut stats);
        assert_eq!((stats.entries, stats.memory_bytes), (3, 10));

        let exact_lru: Shard<u32> = Shard::new(10, 0, ahash::RandomState::new(), true);
        let hash = |key: u32| exact_lru.hasher.hash_one(key);
        for (key, value) in [(1, "a"), (2, "b"), (1, "c")] {
            let value = Bytes::from_static(value.as_bytes());
            exact_lru.insert(key, hash(key), value, None).unwrap();
        }
        let state = exact_lru.state.read();
        let slot = state.find(hash(1), &1).unwrap();
        assert_eq!(state.slab.iter_recency().next(), Some(slot), "at the head");
        assert!(!state.slab.is_marked(slot));
        drop(state);
        exact_lru.validate().unwrap();
    }

    /// Keys whose hashes share the 7-bit tag the table probes with, and the
    /// bucket the probe starts from: a read compares the first slot with the
    /// tag after the probe, and the others only then, so each key still
    /// finds its own value, in both recency modes, and a third key with the
    /// same tag finds none.
    #[test]
    fn keys_sharing_a_hash_tag_find_their_own_values() {
        for exact_lru in [false, true] {
            let shard: Shard<u32> = Shard::new(1000, 0, ahash::RandomState::new(), exact_lru);
            let hash = |key: u32| shard.hasher.hash_one(key);
            // The tag, and the home bucket in any table of up to 16 buckets.
            let tag = |key: u32| (hash(key) >> 57, hash(key) & 15);
            let same_tag: Vec<u32> = (1..).filter(|&k| tag(k) == tag(0)).take(2).collect();
            let (stored, absent) = ([0, same_tag[0]], same_tag[1]);
            for key in stored {
                let value = Bytes::from(key.to_string());
                shard.insert(key, hash(key), value, None).unwrap();
            }
            for key in stored {
                let (value, from) = shard.get(&key, hash(key), None).unwrap().unwrap();
                assert_eq!(value, key.to_string());
                assert_eq!(from, Location::Memory);
            }
            assert_eq!(shard.get(&absent, hash(absent), None).unwrap(), None);
            shard.validate().unwrap();
        }
    }
}
