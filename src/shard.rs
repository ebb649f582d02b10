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
//! | state    | payload                       | in LRU list | counted in     |
//! |----------|-------------------------------|-------------|----------------|
//! | memory   | `Resident`, copy or not       | yes         | `memory_bytes` |
//! | spilling | `Resident`, no copy           | no          | `memory_bytes` |
//! | file     | `Disk`                        | no          | `disk_bytes`   |
//!
//! A resident value may keep its disk copy after a reload: values are
//! immutable, so evicting it again needs no write ("respill").
//!
//! A spill or reload in flight knows its entry again by identity, not by an
//! id stored per entry: a victim by the address of its bytes (the writer
//! holds a clone, so the allocation cannot be reused meanwhile), a disk value
//! by its record. Two values with the same address have the same bytes, so a
//! mix-up between them is harmless.

use std::borrow::Borrow;
use std::hash::Hash;

use bytes::Bytes;
use hashbrown::HashTable;

use crate::access::AccessLog;
use crate::error::Error;
use crate::lru::{LinkedSlab, SlotId};
use crate::spill::{Record, RecordReader, SpillDir};
use crate::stats::{bump, Counters, Stats};
use crate::sync::{yield_now, RwLock, RwLockWriteGuard};
use crate::Location;

/// A stored key and its value's state.
pub(crate) struct Entry<K> {
    key: K,
    payload: Payload,
}

/// Where a value's bytes are.
enum Payload {
    /// In memory; `copy` is an intact record of the same bytes, kept from an
    /// earlier spill so that evicting the value again needs no write.
    Resident { value: Bytes, copy: Option<Record> },
    /// Only on disk.
    Disk(Record),
}

/// A payload to put in place while the real one is moved out.
const PLACEHOLDER: Payload = Payload::Resident {
    value: Bytes::new(),
    copy: None,
};

impl Payload {
    fn len(&self) -> u64 {
        match self {
            Payload::Resident { value, .. } => value.len() as u64,
            Payload::Disk(record) => record.value_len(),
        }
    }

    fn is_resident(&self) -> bool {
        matches!(self, Payload::Resident { .. })
    }
}

/// Values and records taken out of the shard, dropped after its lock is
/// released: dropping them may unmap memory or delete a file.
#[derive(Default)]
pub(crate) struct Deferred {
    values: Vec<Bytes>,
    records: Vec<Record>,
}

impl Deferred {
    fn take(&mut self, payload: Payload) {
        match payload {
            Payload::Resident { value, copy } => {
                self.values.push(value);
                self.records.extend(copy);
            }
            Payload::Disk(record) => self.records.push(record),
        }
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
        if len > self.budget {
            // Larger than this shard's share of memory: it goes straight to
            // disk and is served from its mapping without promotion.
            let Some(spill) = spill else {
                unreachable!("a bounded shard always has a dump dir")
            };
            let record = spill.write(std::slice::from_ref(&value))?.pop();
            let record = record.expect("one record per value");
            bump(&self.counters.spills, 1);
            bump(&self.counters.spilled_bytes, len);
            let mut state = self.lock();
            state.put(
                key,
                hash,
                Payload::Disk(record),
                &self.hasher,
                &mut deferred,
            );
            return Ok(());
        }
        let mut state = self.lock_with_room(len, Some((&key, hash)), spill, &mut deferred)?;
        let payload = Payload::Resident { value, copy: None };
        state.put(key, hash, payload, &self.hasher, &mut deferred);
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
        let reader = {
            let state = self.state.read();
            let Some(slot) = state.find(hash, key) else {
                bump(&self.counters.misses, 1);
                return Ok(None);
            };
            match &state
                .slab
                .get(slot)
                .expect("indexed slot is occupied")
                .payload
            {
                Payload::Resident { value, .. } => {
                    let value = value.clone();
                    drop(state);
                    self.record_access(slot);
                    return Ok(Some((value, Location::Memory)));
                }
                Payload::Disk(record) => record.reader(),
            }
        };
        let len = reader.value_len();
        // A value that will be resident again is copied out of the mapping,
        // so later hits never depend on the file; one that stays on disk is
        // handed out as a slice of the mapping.
        let promotable = len <= self.budget;
        let read = if promotable {
            reader.read_copy()
        } else {
            reader.read_mapped()
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
            self.promote(key, hash, &reader, &bytes, spill);
        }
        Ok(Some((bytes, Location::File)))
    }

    /// Makes a reloaded value resident again, keeping its disk copy, if it
    /// is still the stored value and room can be made. Failing to make room
    /// is not an error: the caller serves the bytes it read anyway.
    fn promote<Q>(
        &self,
        key: &Q,
        hash: u64,
        reader: &RecordReader,
        bytes: &Bytes,
        spill: Option<&SpillDir>,
    ) where
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
        match &entry.payload {
            Payload::Disk(record) if record.same_as(reader) => {}
            // Replaced meanwhile, or another reader promoted it.
            _ => return,
        }
        let Payload::Disk(record) = std::mem::replace(&mut entry.payload, PLACEHOLDER) else {
            unreachable!("checked above")
        };
        entry.payload = Payload::Resident {
            value: bytes.clone(),
            copy: Some(record),
        };
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
        Some(if state.slab.get(slot)?.payload.is_resident() {
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
                Some(slot) if state.slab.is_linked(slot) => (
                    state.slab.get(slot).map_or(0, |e| e.payload.len()),
                    Some(slot),
                ),
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
            // Victims to write: their slots, and clones of their bytes that
            // both feed the write and identify them afterwards.
            let mut victims: Vec<(SlotId, Bytes)> = Vec::new();
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
                let len = entry.payload.len();
                to_free = to_free.saturating_sub(len);
                match std::mem::replace(&mut entry.payload, PLACEHOLDER) {
                    Payload::Resident {
                        value,
                        copy: Some(record),
                    } => {
                        // An intact copy is on disk already: no write needed.
                        entry.payload = Payload::Disk(record);
                        deferred.values.push(value);
                        state.memory_bytes -= len;
                        state.memory_entries -= 1;
                        state.disk_bytes += len;
                        bump(&self.counters.respills, 1);
                    }
                    Payload::Resident { value, copy: None } => {
                        victims.push((slot, value.clone()));
                        entry.payload = Payload::Resident { value, copy: None };
                        state.spilling_bytes += len;
                    }
                    Payload::Disk(_) => unreachable!("linked entries are resident"),
                }
            }
            if victims.is_empty() {
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
            let values: Vec<Bytes> = victims.iter().map(|(_, v)| v.clone()).collect();
            let written = spill.write(&values);
            drop(values);
            state = self.state.write();
            let st = &mut *state;
            match written {
                Ok(records) => {
                    for ((slot, victim), record) in victims.into_iter().zip(records) {
                        if !st.is_spilling(slot, &victim) {
                            // Removed or replaced while being written.
                            deferred.records.push(record);
                            continue;
                        }
                        let entry = st.slab.get_mut(slot).expect("checked");
                        let old = std::mem::replace(&mut entry.payload, Payload::Disk(record));
                        deferred.take(old);
                        let len = victim.len() as u64;
                        st.spilling_bytes -= len;
                        st.memory_bytes -= len;
                        st.memory_entries -= 1;
                        st.disk_bytes += len;
                        bump(&self.counters.spills, 1);
                        bump(&self.counters.spilled_bytes, len);
                    }
                }
                Err(err) => {
                    for (slot, victim) in victims {
                        if st.is_spilling(slot, &victim) {
                            st.spilling_bytes -= victim.len() as u64;
                            st.slab.push_back(slot);
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
    /// Returns the value bytes moved. Stops at the first write error; an
    /// entry whose record fails to read keeps it (and stays corrupted).
    pub(crate) fn compact(&self, spill: &SpillDir) -> u64 {
        const BATCH_BYTES: u64 = 4 << 20;
        let mut moved = 0;
        let (has_sparse_copies, mut to_move) = {
            let state = self.state.read();
            let mut copies = false;
            let mut to_move = Vec::new();
            for (slot, entry) in state.slab.iter() {
                match &entry.payload {
                    Payload::Resident {
                        copy: Some(copy), ..
                    } => copies |= copy.in_sparse_segment(),
                    Payload::Disk(record) if record.in_sparse_segment() => {
                        to_move.push((slot, record.reader()));
                    }
                    _ => {}
                }
            }
            (copies, to_move)
        };
        if has_sparse_copies {
            let mut deferred = Deferred::default();
            let mut state = self.lock();
            let slots: Vec<SlotId> = state.slab.iter().map(|(slot, _)| slot).collect();
            for slot in slots {
                let entry = state.slab.get_mut(slot).expect("occupied");
                if let Payload::Resident { copy, .. } = &mut entry.payload {
                    if copy.as_ref().is_some_and(Record::in_sparse_segment) {
                        deferred.records.extend(copy.take());
                    }
                }
            }
        }
        while !to_move.is_empty() {
            let mut batch = Vec::new();
            let mut batch_bytes = 0;
            while let Some((slot, reader)) = to_move.pop() {
                batch_bytes += reader.value_len();
                batch.push((slot, reader));
                if batch_bytes >= BATCH_BYTES {
                    break;
                }
            }
            let mut read = Vec::with_capacity(batch.len());
            let mut values = Vec::with_capacity(batch.len());
            for (slot, reader) in batch {
                if let Ok(bytes) = reader.read_mapped() {
                    values.push(bytes);
                    read.push((slot, reader));
                }
            }
            let Ok(records) = spill.write(&values) else {
                return moved;
            };
            drop(values);
            let mut deferred = Deferred::default();
            let mut state = self.lock();
            for ((slot, reader), record) in read.into_iter().zip(records) {
                match state.slab.get_mut(slot).map(|e| &mut e.payload) {
                    Some(Payload::Disk(old)) if old.same_as(&reader) => {
                        moved += reader.value_len();
                        deferred.records.push(std::mem::replace(old, record));
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
            let len = entry.payload.len();
            let linked = state.slab.is_linked(slot);
            match &entry.payload {
                Payload::Resident { copy, .. } => {
                    memory += len;
                    resident += 1;
                    if !linked {
                        spilling += len;
                        if copy.is_some() {
                            return Err(format!("slot {slot}: spilling but has a disk copy"));
                        }
                    }
                    if copy.as_ref().is_some_and(|c| c.value_len() != len) {
                        return Err(format!("slot {slot}: disk copy of another length"));
                    }
                }
                Payload::Disk(_) => {
                    if linked {
                        return Err(format!("slot {slot}: on disk but in the LRU list"));
                    }
                    disk += len;
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

    /// Whether `slot` still holds the spill victim whose bytes are `victim`.
    fn is_spilling(&self, slot: SlotId, victim: &Bytes) -> bool {
        !self.slab.is_linked(slot)
            && self.slab.get(slot).is_some_and(|e| match &e.payload {
                Payload::Resident { value, copy: None } => {
                    value.as_ptr() == victim.as_ptr() && value.len() == victim.len()
                }
                _ => false,
            })
    }

    /// Stops counting a payload of `len` bytes in the given state.
    fn unaccount(&mut self, len: u64, resident: bool, linked: bool) {
        if resident {
            self.memory_bytes -= len;
            self.memory_entries -= 1;
            if !linked {
                self.spilling_bytes -= len;
            }
        } else {
            self.disk_bytes -= len;
        }
    }

    /// Stores a new payload for `key`, replacing the old one. A resident
    /// value goes to the head of the LRU list; the caller made room for it.
    fn put(
        &mut self,
        key: K,
        hash: u64,
        payload: Payload,
        hasher: &ahash::RandomState,
        deferred: &mut Deferred,
    ) where
        K: Hash + Eq,
    {
        let (len, resident) = (payload.len(), payload.is_resident());
        let slot = match self.find(hash, &key) {
            Some(slot) => {
                let linked = self.slab.is_linked(slot);
                let entry = self.slab.get_mut(slot).expect("indexed slot is occupied");
                let old = std::mem::replace(&mut entry.payload, payload);
                let (old_len, old_resident) = (old.len(), old.is_resident());
                deferred.take(old);
                self.unaccount(old_len, old_resident, linked);
                self.slab.unlink(slot);
                slot
            }
            None => {
                let slot = self
                    .slab
                    .insert(Entry { key, payload })
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
        let linked = self.slab.is_linked(slot);
        let entry = self.slab.remove(slot).expect("indexed slot is occupied");
        self.unaccount(entry.payload.len(), entry.payload.is_resident(), linked);
        deferred.take(entry.payload);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-entry bookkeeping the crate docs promise: a slab slot of an
    /// entry with a `String` key is 80 bytes, 24 of them the key's own.
    #[test]
    fn entry_sizes() {
        assert_eq!(std::mem::size_of::<Record>(), 16);
        assert_eq!(std::mem::size_of::<Payload>(), 48);
        assert_eq!(std::mem::size_of::<Entry<String>>(), 72);
        assert_eq!(std::mem::size_of::<Option<Entry<String>>>(), 72);
    }
}
