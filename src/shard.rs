//! One shard: a hash index, the LRU list of resident values and a byte budget.
//!
//! The shard decides what to spill and when; the spill module only stores
//! bytes. File I/O never happens under the shard's lock: victims are chosen
//! and marked *spilling* under the lock, written with the lock released (they
//! stay readable from memory meanwhile), and moved to disk when the lock is
//! taken again, unless they were removed or replaced in between.
//!
//! Entry states, and what holds in each:
//!
//! | state    | `value` | `disk`     | in LRU list | counted in      |
//! |----------|---------|------------|-------------|-----------------|
//! | memory   | `Some`  | any        | yes         | `memory_bytes`  |
//! | spilling | `Some`  | `None`     | no          | `memory_bytes`  |
//! | file     | `None`  | `Some`     | no          | `disk_bytes`    |
//!
//! A resident value may keep its disk copy after a reload: values are
//! immutable, so evicting it again needs no write ("respill").

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hashbrown::HashTable;

use crate::access::AccessLog;
use crate::error::Error;
use crate::lru::{LinkedSlab, SlotId};
use crate::spill::{Record, SpillDir};
use crate::stats::{bump, Counters, Stats};
use crate::sync::{yield_now, RwLock, RwLockWriteGuard};
use crate::Location;

/// A stored key and the state of its value.
pub(crate) struct Entry<K> {
    key: K,
    /// Unique within the shard for each stored value; tells a stale reference
    /// (a spill in flight, a record on disk) from the current value.
    id: u64,
    len: u64,
    /// The bytes in memory, for the memory and spilling states.
    value: Option<Bytes>,
    /// The checksummed copy on disk, if one was written.
    disk: Option<Record>,
    spilling: bool,
}

/// Values and records taken out of the shard, dropped after its lock is
/// released: dropping them may unmap memory or delete a file.
#[derive(Default)]
pub(crate) struct Deferred {
    values: Vec<Bytes>,
    records: Vec<Record>,
}

impl Deferred {
    fn take_entry<K>(&mut self, entry: &mut Entry<K>) {
        self.values.extend(entry.value.take());
        self.records.extend(entry.disk.take());
    }
}

struct State<K> {
    index: HashTable<SlotId>,
    slab: LinkedSlab<Entry<K>>,
    /// Bytes of values in memory (memory and spilling states).
    memory_bytes: u64,
    /// Bytes of values in memory that are being written out.
    spilling_bytes: u64,
    /// Bytes of values only on disk.
    disk_bytes: u64,
    memory_entries: usize,
}

/// One independently locked part of the store.
pub(crate) struct Shard<K> {
    state: RwLock<State<K>>,
    /// Memory hits recorded under the read lock, applied to the LRU list by
    /// the next writer; lossy only when full and the lock is contended.
    accesses: AccessLog,
    /// This shard's share of `max_size`; `u64::MAX` when unbounded.
    budget: u64,
    next_id: AtomicU64,
    hasher: ahash::RandomState,
    counters: Counters,
}

impl<K> Shard<K>
where
    K: Hash + Eq,
{
    pub(crate) fn new(budget: u64, hasher: ahash::RandomState) -> Self {
        Shard {
            state: RwLock::new(State {
                index: HashTable::new(),
                slab: LinkedSlab::default(),
                memory_bytes: 0,
                spilling_bytes: 0,
                disk_bytes: 0,
                memory_entries: 0,
            }),
            accesses: AccessLog::new(),
            budget,
            next_id: AtomicU64::new(0),
            hasher,
            counters: Counters::default(),
        }
    }

    pub(crate) fn budget(&self) -> u64 {
        self.budget
    }

    /// Stores `value` under `key`, replacing any previous value.
    pub(crate) fn insert(
        &self,
        key: K,
        hash: u64,
        value: Bytes,
        spill: Option<&SpillDir>,
    ) -> Result<(), Error> {
        let mut deferred = Deferred::default();
        let len = value.len() as u64;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if len > self.budget {
            // Larger than this shard's share of memory: it goes straight to
            // disk and is served from its mapping without promotion.
            let Some(spill) = spill else {
                unreachable!("a bounded shard always has a dump dir")
            };
            let record = spill.write(&[(id, value)])?.pop();
            bump(&self.counters.spills, 1);
            bump(&self.counters.spilled_bytes, len);
            let mut state = self.lock();
            state.put(
                key,
                hash,
                id,
                len,
                None,
                record,
                &self.hasher,
                &mut deferred,
            );
            return Ok(());
        }
        let mut state = self.lock_with_room(len, Some((&key, hash)), spill, &mut deferred)?;
        state.put(
            key,
            hash,
            id,
            len,
            Some(value),
            None,
            &self.hasher,
            &mut deferred,
        );
        Ok(())
    }

    /// The value of `key` and where it was served from.
    pub(crate) fn get<Q>(
        &self,
        key: &Q,
        hash: u64,
        spill: Option<&SpillDir>,
    ) -> Result<Option<(Bytes, Location)>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let pending = {
            let state = self.state.read();
            let Some(slot) = state.find(hash, key) else {
                bump(&self.counters.misses, 1);
                return Ok(None);
            };
            let entry = state.slab.get(slot).expect("indexed slot is occupied");
            if let Some(value) = &entry.value {
                let value = value.clone();
                drop(state);
                self.record_access(slot);
                return Ok(Some((value, Location::Memory)));
            }
            let record = entry
                .disk
                .as_ref()
                .expect("a value not in memory is on disk");
            (record.reader(), entry.id, entry.len)
        };
        let (reader, id, len) = pending;
        // A value that will be resident again is copied out of the mapping,
        // so later hits never depend on the file; one that stays on disk is
        // handed out as a slice of the mapping.
        let promotable = len <= self.budget;
        let read = if promotable {
            reader.read_copy(id, len)
        } else {
            reader.read_mapped(id, len)
        };
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(e) => {
                if matches!(e, Error::Corrupted { .. }) {
                    bump(&self.counters.corruptions, 1);
                }
                return Err(e);
            }
        };
        bump(&self.counters.reloads, 1);
        bump(&self.counters.reloaded_bytes, len);
        if promotable {
            self.promote(key, hash, id, &bytes, spill);
        }
        Ok(Some((bytes, Location::File)))
    }

    /// Makes a reloaded value resident again, keeping its disk copy, if it
    /// is still the stored value and room can be made. Failing to make room
    /// is not an error: the caller serves the bytes it read anyway.
    fn promote<Q>(&self, key: &Q, hash: u64, id: u64, bytes: &Bytes, spill: Option<&SpillDir>)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut deferred = Deferred::default();
        let len = bytes.len() as u64;
        let Ok(mut state) = self.lock_with_room::<Q>(len, None, spill, &mut deferred) else {
            return;
        };
        let state = &mut *state;
        let Some(slot) = state.find(hash, key) else {
            return;
        };
        let entry = state.slab.get_mut(slot).expect("indexed slot is occupied");
        if entry.id != id || entry.value.is_some() {
            return; // replaced meanwhile, or another reader promoted it
        }
        entry.value = Some(bytes.clone());
        state.disk_bytes -= len;
        state.memory_bytes += len;
        state.memory_entries += 1;
        state.slab.push_front(slot);
    }

    /// Removes `key`; says whether it was there. Never reads from disk.
    pub(crate) fn remove<Q>(&self, key: &Q, hash: u64) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut deferred = Deferred::default();
        let mut state = self.lock();
        state.remove(key, hash, &mut deferred)
    }

    /// Where the value of `key` is, without touching the LRU order.
    pub(crate) fn location<Q>(&self, key: &Q, hash: u64) -> Option<Location>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let state = self.state.read();
        let slot = state.find(hash, key)?;
        let entry = state.slab.get(slot)?;
        Some(if entry.value.is_some() {
            Location::Memory
        } else {
            Location::File
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
            stats.memory_entries += state.memory_entries;
            stats.disk_entries += state.slab.len() - state.memory_entries;
            stats.memory_bytes += state.memory_bytes;
            stats.disk_bytes += state.disk_bytes;
        }
        self.counters.add_to(stats);
        stats.hits += self.accesses.hits();
    }

    /// Write lock, with buffered accesses applied first so that eviction
    /// decisions see the recency order of all earlier calls.
    fn lock(&self) -> RwLockWriteGuard<'_, State<K>> {
        let mut state = self.state.write();
        self.apply_accesses(&mut state);
        state
    }

    fn apply_accesses(&self, state: &mut State<K>) {
        self.accesses.replay(|slot| state.slab.touch(slot));
    }

    /// Records a memory hit on `slot` for the LRU order without a write lock.
    ///
    /// When the buffer is full, the caller applies it if the lock is free;
    /// otherwise the access is dropped: under contention recency is
    /// approximate, single-threaded it is exact.
    fn record_access(&self, slot: SlotId) {
        if !self.accesses.record(slot) {
            if let Some(mut state) = self.state.try_write() {
                self.apply_accesses(&mut state);
                state.slab.touch(slot);
            }
        }
    }

    /// Takes the write lock once `len` more bytes fit in the budget, spilling
    /// least recently used values as needed. `replacing` names a key whose
    /// resident value the caller will replace under the returned guard: it is
    /// not spilled, and its bytes count as free.
    ///
    /// On a write error the victims stay in memory and the error is returned.
    fn lock_with_room<Q>(
        &self,
        len: u64,
        replacing: Option<(&Q, u64)>,
        spill: Option<&SpillDir>,
        deferred: &mut Deferred,
    ) -> Result<RwLockWriteGuard<'_, State<K>>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut state = self.lock();
        loop {
            let (credit, keep) = match replacing.and_then(|(k, h)| state.find(h, k)) {
                Some(slot) if state.slab.is_linked(slot) => {
                    (state.slab.get(slot).map_or(0, |e| e.len), Some(slot))
                }
                other => (0, other),
            };
            let needed = (state.memory_bytes - credit).saturating_add(len);
            if needed <= self.budget {
                return Ok(state);
            }
            let Some(spill) = spill else {
                unreachable!("a bounded shard always has a dump dir")
            };
            let mut to_free = needed - self.budget;
            let mut victims: Vec<(SlotId, u64, u64)> = Vec::new();
            let mut values: Vec<(u64, Bytes)> = Vec::new();
            let mut cursor = state.slab.back();
            while let Some(slot) = cursor {
                if to_free == 0 {
                    break;
                }
                cursor = state.slab.prev_of(slot);
                if Some(slot) == keep {
                    continue;
                }
                let state = &mut *state;
                state.slab.unlink(slot);
                let entry = state.slab.get_mut(slot).expect("linked slot is occupied");
                to_free = to_free.saturating_sub(entry.len);
                if entry.disk.is_some() {
                    // An intact copy is on disk already: no write needed.
                    deferred.values.extend(entry.value.take());
                    state.memory_bytes -= entry.len;
                    state.memory_entries -= 1;
                    state.disk_bytes += entry.len;
                    bump(&self.counters.respills, 1);
                } else {
                    entry.spilling = true;
                    state.spilling_bytes += entry.len;
                    victims.push((slot, entry.id, entry.len));
                    values.push((entry.id, entry.value.clone().expect("resident")));
                }
            }
            if values.is_empty() {
                if (state.memory_bytes - credit).saturating_add(len) > self.budget {
                    // All else is being written out by other threads: wait.
                    debug_assert!(state.spilling_bytes > 0, "budget accounting is off");
                    drop(state);
                    yield_now();
                    state = self.lock();
                }
                continue;
            }
            drop(state);
            let written = spill.write(&values);
            state = self.state.write();
            drop(values);
            let state = &mut *state;
            match written {
                Ok(records) => {
                    for ((slot, id, len), record) in victims.into_iter().zip(records) {
                        match state.slab.get_mut(slot) {
                            Some(e) if e.id == id && e.spilling => {
                                e.spilling = false;
                                deferred.values.extend(e.value.take());
                                e.disk = Some(record);
                                state.spilling_bytes -= len;
                                state.memory_bytes -= len;
                                state.memory_entries -= 1;
                                state.disk_bytes += len;
                                bump(&self.counters.spills, 1);
                                bump(&self.counters.spilled_bytes, len);
                            }
                            // Removed or replaced while being written.
                            _ => deferred.records.push(record),
                        }
                    }
                }
                Err(err) => {
                    for (slot, id, len) in victims {
                        if let Some(e) = state.slab.get_mut(slot) {
                            if e.id == id && e.spilling {
                                e.spilling = false;
                                state.spilling_bytes -= len;
                                state.slab.push_back(slot);
                            }
                        }
                    }
                    return Err(err);
                }
            }
        }
    }

    /// Moves this shard's records out of sparse segments (see
    /// [`SpillDir::start_compaction`]), in batches of a few MiB, with no lock
    /// held during I/O. A resident value simply drops its disk copy instead.
    /// Returns the record bytes moved. Stops at the first write error; an
    /// entry whose record fails to read keeps it (and stays corrupted).
    pub(crate) fn compact(&self, spill: &SpillDir) -> u64 {
        const BATCH_BYTES: u64 = 4 << 20;
        let mut moved = 0;
        let (copies, mut to_move) = {
            let state = self.state.read();
            let mut copies = Vec::new();
            let mut to_move = Vec::new();
            for (slot, entry) in state.slab.iter() {
                let Some(disk) = entry.disk.as_ref().filter(|d| d.in_sparse_segment()) else {
                    continue;
                };
                if entry.value.is_some() {
                    copies.push((slot, entry.id));
                } else {
                    to_move.push((slot, entry.id, entry.len, disk.reader()));
                }
            }
            (copies, to_move)
        };
        if !copies.is_empty() {
            let mut deferred = Deferred::default();
            let mut state = self.lock();
            for (slot, id) in copies {
                if let Some(e) = state.slab.get_mut(slot).filter(|e| e.id == id) {
                    if e.value.is_some() {
                        deferred.records.extend(e.disk.take());
                    }
                }
            }
        }
        while !to_move.is_empty() {
            let mut batch = Vec::new();
            let mut batch_bytes = 0;
            while let Some(item) = to_move.pop() {
                batch_bytes += item.2;
                batch.push(item);
                if batch_bytes >= BATCH_BYTES {
                    break;
                }
            }
            let mut read = Vec::with_capacity(batch.len());
            let mut values = Vec::with_capacity(batch.len());
            for (slot, id, len, reader) in batch {
                if let Ok(bytes) = reader.read_mapped(id, len) {
                    values.push((id, bytes));
                    read.push((slot, id, len, reader));
                }
            }
            let Ok(records) = spill.write(&values) else {
                return moved;
            };
            drop(values);
            let mut deferred = Deferred::default();
            let mut state = self.lock();
            for ((slot, id, len, reader), record) in read.into_iter().zip(records) {
                match state.slab.get_mut(slot) {
                    Some(e)
                        if e.id == id
                            && e.value.is_none()
                            && e.disk.as_ref().is_some_and(|d| d.same_as(&reader)) =>
                    {
                        deferred.records.extend(e.disk.replace(record));
                        moved += len;
                    }
                    _ => deferred.records.push(record),
                }
            }
        }
        moved
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
        let (mut memory, mut spilling, mut disk, mut resident) = (0u64, 0u64, 0u64, 0usize);
        for (slot, entry) in state.slab.iter() {
            let hash = self.hasher.hash_one(&entry.key);
            if state.find(hash, &entry.key) != Some(slot) {
                return Err(format!("slot {slot}: key not indexed to it"));
            }
            match &entry.value {
                Some(v) => {
                    if v.len() as u64 != entry.len {
                        return Err(format!("slot {slot}: value length differs from entry"));
                    }
                    memory += entry.len;
                    resident += 1;
                    if entry.spilling {
                        spilling += entry.len;
                        if entry.disk.is_some() || state.slab.is_linked(slot) {
                            return Err(format!("slot {slot}: spilling but linked or on disk"));
                        }
                    } else if !state.slab.is_linked(slot) {
                        return Err(format!("slot {slot}: resident but not in the LRU list"));
                    }
                }
                None => {
                    if entry.disk.is_none() || entry.spilling || state.slab.is_linked(slot) {
                        return Err(format!("slot {slot}: neither in memory nor on disk"));
                    }
                    disk += entry.len;
                }
            }
        }
        let sums = (memory, spilling, disk, resident);
        let counted = (
            state.memory_bytes,
            state.spilling_bytes,
            state.disk_bytes,
            state.memory_entries,
        );
        if sums != counted {
            return Err(format!(
                "(memory, spilling, disk, resident entries) sum to {sums:?}, counted {counted:?}"
            ));
        }
        if state.memory_bytes > self.budget {
            return Err(format!(
                "{} bytes in memory over the budget of {}",
                state.memory_bytes, self.budget
            ));
        }
        Ok(())
    }
}

impl<K> Shard<K> {
    /// Removes every entry; their files go as their last records are dropped.
    pub(crate) fn clear(&self) {
        let entries = {
            let mut state = self.state.write();
            // Buffered accesses name slots about to be freed.
            self.accesses.discard();
            state.index.clear();
            state.memory_bytes = 0;
            state.spilling_bytes = 0;
            state.disk_bytes = 0;
            state.memory_entries = 0;
            state.slab.drain()
        };
        drop(entries);
    }
}

impl<K> State<K> {
    fn find<Q>(&self, hash: u64, key: &Q) -> Option<SlotId>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let slab = &self.slab;
        self.index
            .find(hash, |&slot| {
                slab.get(slot).is_some_and(|e| e.key.borrow() == key)
            })
            .copied()
    }

    /// Stops counting `entry`'s bytes; the caller takes its value and record.
    fn unaccount(&mut self, entry_len: u64, resident: bool, spilling: bool) {
        if resident {
            self.memory_bytes -= entry_len;
            self.memory_entries -= 1;
            if spilling {
                self.spilling_bytes -= entry_len;
            }
        } else {
            self.disk_bytes -= entry_len;
        }
    }

    /// Stores a new value for `key`, replacing the old one. A value in memory
    /// goes to the head of the LRU list; the caller made room for it.
    #[allow(clippy::too_many_arguments)]
    fn put(
        &mut self,
        key: K,
        hash: u64,
        id: u64,
        len: u64,
        value: Option<Bytes>,
        disk: Option<Record>,
        hasher: &ahash::RandomState,
        deferred: &mut Deferred,
    ) where
        K: Hash + Eq,
    {
        let resident = value.is_some();
        let slot = match self.find(hash, &key) {
            Some(slot) => {
                let old = self.slab.get_mut(slot).expect("indexed slot is occupied");
                let (old_len, old_resident, old_spilling) =
                    (old.len, old.value.is_some(), old.spilling);
                deferred.take_entry(old);
                *old = Entry {
                    key,
                    id,
                    len,
                    value,
                    disk,
                    spilling: false,
                };
                self.unaccount(old_len, old_resident, old_spilling);
                self.slab.unlink(slot);
                slot
            }
            None => {
                let slot = self
                    .slab
                    .insert(Entry {
                        key,
                        id,
                        len,
                        value,
                        disk,
                        spilling: false,
                    })
                    .expect("fewer than 2^32 - 2 entries in one shard");
                let slab = &self.slab;
                self.index.insert_unique(hash, slot, |&s| {
                    hasher.hash_one(&slab.get(s).expect("indexed slot is occupied").key)
                });
                slot
            }
        };
        if resident {
            self.memory_bytes += len;
            self.memory_entries += 1;
            self.slab.push_front(slot);
        } else {
            self.disk_bytes += len;
        }
    }

    fn remove<Q>(&mut self, key: &Q, hash: u64, deferred: &mut Deferred) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let slab = &self.slab;
        let Ok(found) = self.index.find_entry(hash, |&slot| {
            slab.get(slot).is_some_and(|e| e.key.borrow() == key)
        }) else {
            return false;
        };
        let (slot, _) = found.remove();
        let mut entry = self.slab.remove(slot).expect("indexed slot is occupied");
        self.unaccount(entry.len, entry.value.is_some(), entry.spilling);
        deferred.take_entry(&mut entry);
        true
    }
}
