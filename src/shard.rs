//! One shard: a hash index, the LRU list of resident values and a byte budget.
//!
//! The shard decides what to spill and when; the spill module only stores
//! bytes. File I/O never happens under the shard's lock: victims are chosen
//! and marked *spilling* under the lock, written with the lock released (they
//! stay readable from memory meanwhile), and moved to disk when the lock is
//! taken again, unless they were removed or replaced in between.
//!
//! # States and transitions
//!
//! | state    | payload                  | in LRU list | counted in                        |
//! |----------|--------------------------|-------------|-----------------------------------|
//! | memory   | `Resident`, copy or not  | yes         | `memory_bytes`, `memory_entries`  |
//! | spilling | `Resident`, no copy      | no          | the same, and `spilling_bytes`    |
//! | disk     | `Disk`                   | no          | `disk_bytes`                      |
//!
//! Each transition is one method of [`WriteGuard`], and the per-state
//! counters change in exactly one function, [`Counts::recount`], which every
//! transition calls with the entry's state before and after; `validate()`
//! sums the entries through the same function and compares.
//!
//! | transition     | method          | from -> to                 | activity counted |
//! |----------------|-----------------|----------------------------|------------------|
//! | store          | `store`         | absent, any -> memory/disk | (by the caller)  |
//! | remove         | `remove`        | any -> absent              |                  |
//! | begin spill    | `begin_spill`   | memory -> spilling         |                  |
//! | finish spill   | `finish_spill`  | spilling -> disk           | `spills`         |
//! | abort spill    | `abort_spill`   | spilling -> memory (tail)  |                  |
//! | respill        | `respill`       | memory (copy) -> disk      | `respills`       |
//! | promote        | `promote`       | disk -> memory (copy kept) |                  |
//! | drop copy      | `drop_copy`     | memory (copy) -> memory    |                  |
//! | move record    | `move_record`   | disk -> disk (new record)  |                  |
//! | clear          | `clear`         | all -> absent              |                  |
//!
//! A resident value may keep its disk copy after a reload: values are
//! immutable, so evicting it again needs no write ("respill").
//!
//! A spill or reload in flight knows its entry again by identity, not by an
//! id stored per entry: a victim by the address of its bytes (the writer
//! holds a clone, so the allocation cannot be reused meanwhile), a disk value
//! by its record. Two values with the same address have the same bytes, so a
//! mix-up between them is harmless.
//!
//! # Frees after the lock, by construction
//!
//! Dropping a value may unmap memory and dropping a record may delete a
//! file. Every payload taken out under the write lock goes into the
//! [`WriteGuard`]'s garbage, which the guard drops only after it has
//! released the lock, whatever order the caller's variables are declared
//! in. Debug builds check it: dropping a record while this thread holds a
//! shard's write lock panics.

use std::borrow::Borrow;
use std::hash::Hash;

use bytes::Bytes;
use hashbrown::HashTable;

use crate::access::AccessLog;
use crate::error::Error;
use crate::lru::{LinkedSlab, SlotId};
use crate::spill::{Record, RecordReader, SpillDir};
use crate::stats::{bump, Counters, Stats};
use crate::sync::{lock_tracking, yield_now, RwLock, RwLockWriteGuard};
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
}

/// The state of an entry, for accounting (see the table above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Absent,
    Memory,
    Spilling,
    Disk,
}

/// Values and records taken out of the shard under its lock.
#[derive(Default)]
struct Garbage {
    values: Vec<Bytes>,
    records: Vec<Record>,
}

impl Garbage {
    fn take(&mut self, payload: Payload) {
        match payload {
            Payload::Resident { value, copy } => {
                self.values.push(value);
                self.records.extend(copy);
            }
            Payload::Disk(record) => self.records.push(record),
        }
    }

    /// Drops everything taken; the guard calls this with the lock released.
    fn free(&mut self) {
        self.values.clear();
        self.records.clear();
    }
}

struct State<K> {
    index: HashTable<SlotId>,
    slab: LinkedSlab<Entry<K>>,
    counts: Counts,
}

/// The per-state counters of a shard (see the table at the top).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    /// Bytes of values in memory (memory and spilling states).
    memory_bytes: u64,
    /// Bytes of values in memory that are being written out.
    spilling_bytes: u64,
    /// Bytes of values only on disk.
    disk_bytes: u64,
    /// Values in memory (memory and spilling states).
    memory_entries: usize,
}

/// A value chosen for eviction and being written out: its slot, and a clone
/// of its bytes that both feeds the write and identifies it afterwards.
struct Victim {
    slot: SlotId,
    value: Bytes,
}

/// A value on disk that compaction may move: read it with `reader`, write it
/// elsewhere, and hand the new record to [`Shard::install_moved`].
pub(crate) struct Relocation {
    slot: SlotId,
    pub(crate) reader: RecordReader,
}

/// What compaction finds in one shard.
pub(crate) struct SparseRecords {
    /// Values only on disk whose records sit in sparse segments.
    pub(crate) to_move: Vec<Relocation>,
    /// Whether some resident value keeps its disk copy in a sparse segment.
    pub(crate) copies: bool,
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

/// The shard's write lock, with the payloads taken out while it is held.
///
/// Dropping the guard releases the lock first and frees the garbage after;
/// [`unlocked`](Self::unlocked) does the same before running I/O, then
/// locks again. So no caller can free a value or a record under the lock.
pub(crate) struct WriteGuard<'a, K> {
    shard: &'a Shard<K>,
    /// `None` only while released, inside `unlocked` and `drop`.
    state: Option<RwLockWriteGuard<'a, State<K>>>,
    garbage: Garbage,
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
                counts: Counts::default(),
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
        let len = value.len() as u64;
        if len > self.budget {
            // Larger than this shard's share of memory: it goes straight to
            // disk and is served from its mapping without promotion.
            let spill = spill.expect("a bounded shard always has a dump dir");
            let record = spill.write(std::slice::from_ref(&value))?.pop();
            let record = record.expect("one record per value");
            bump(&self.counters.spills, 1);
            bump(&self.counters.spilled_bytes, len);
            self.write().store(key, hash, Payload::Disk(record));
            return Ok(());
        }
        let mut guard = self.lock_with_room(len, Some((&key, hash)), spill)?;
        guard.store(key, hash, Payload::Resident { value, copy: None });
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
            match &state.entry(slot).payload {
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
        let bytes = read.inspect_err(|e| {
            if matches!(e, Error::Corrupted { .. }) {
                bump(&self.counters.corruptions, 1);
            }
        })?;
        bump(&self.counters.reloads, 1);
        bump(&self.counters.reloaded_bytes, len);
        if promotable {
            // Failing to make room is not an error: the bytes read are
            // served anyway, just not brought back into memory.
            if let Ok(mut guard) = self.lock_with_room::<Q>(len, None, spill) {
                guard.promote(key, hash, &reader, &bytes);
            }
        }
        Ok(Some((bytes, Location::File)))
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
    fn record_access(&self, slot: SlotId) {
        if !self.accesses.record(slot) {
            if let Some(state) = self.state.try_write() {
                WriteGuard::new(self, state).state().slab.touch(slot);
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
    ) -> Result<WriteGuard<'_, K>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut guard = self.write();
        loop {
            let (over, keep) = guard.overflow(len, replacing);
            if over == 0 {
                return Ok(guard);
            }
            let spill = spill.expect("a bounded shard always has a dump dir");
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
                    for (victim, record) in victims.into_iter().zip(records) {
                        guard.finish_spill(victim, record);
                    }
                }
                Err(err) => {
                    for victim in victims {
                        guard.abort_spill(victim);
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

    /// Drops the disk copies that resident values keep in sparse segments:
    /// cheaper than moving them, and evicting those values later writes anew.
    pub(crate) fn drop_sparse_copies(&self) {
        let mut guard = self.write();
        let slots: Vec<SlotId> = guard.state().slab.iter().map(|(slot, _)| slot).collect();
        for slot in slots {
            guard.drop_copy(slot, Record::in_sparse_segment);
        }
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
    }
}

impl<'a, K> WriteGuard<'a, K> {
    /// Wraps the freshly taken write lock and applies the buffered accesses.
    fn new(shard: &'a Shard<K>, state: RwLockWriteGuard<'a, State<K>>) -> Self {
        let mut guard = WriteGuard {
            shard,
            state: None,
            garbage: Garbage::default(),
        };
        guard.adopt(state);
        guard
    }

    fn adopt(&mut self, state: RwLockWriteGuard<'a, State<K>>) {
        debug_assert!(self.state.is_none());
        lock_tracking::taken();
        let state = self.state.insert(state);
        self.shard.accesses.replay(|slot| state.slab.touch(slot));
    }

    fn state(&mut self) -> &mut State<K> {
        self.state.as_mut().expect("the guard holds the lock")
    }

    /// The locked state, the garbage bin and the shard's counters at once.
    fn parts(&mut self) -> (&mut State<K>, &mut Garbage, &Counters) {
        let state = self.state.as_mut().expect("the guard holds the lock");
        (state, &mut self.garbage, &self.shard.counters)
    }

    /// Releases the lock, then frees the garbage.
    fn release(&mut self) {
        if let Some(state) = self.state.take() {
            drop(state);
            lock_tracking::released();
        }
        self.garbage.free();
    }

    /// Runs `io` with the lock released (and the garbage freed), then locks
    /// again. Anything may have changed meanwhile.
    fn unlocked<R>(&mut self, io: impl FnOnce() -> R) -> R {
        self.release();
        let result = io();
        self.adopt(self.shard.state.write());
        result
    }

    /// all -> absent.
    fn clear(&mut self) {
        // Buffered accesses name slots about to be freed.
        self.shard.accesses.discard();
        let (state, garbage, _) = self.parts();
        state.index.clear();
        state.counts = Counts::default();
        for entry in state.slab.drain() {
            garbage.take(entry.payload);
        }
    }

    /// How many bytes over the budget the shard would be with `len` more,
    /// counting the resident value of the key being replaced as free; and
    /// that key's slot, which must not be spilled to make room.
    fn overflow<Q>(&mut self, len: u64, replacing: Option<(&Q, u64)>) -> (u64, Option<SlotId>)
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let budget = self.shard.budget;
        let state = self.state();
        let keep = replacing.and_then(|(key, hash)| state.find(hash, key));
        let credit = match keep {
            Some(slot) if state.place(slot) == Place::Memory => state.entry(slot).payload.len(),
            _ => 0,
        };
        let needed = (state.counts.memory_bytes - credit).saturating_add(len);
        (needed.saturating_sub(budget), keep)
    }

    /// Frees at least `to_free` bytes of memory from the LRU tail (never
    /// `keep`): values with an intact disk copy leave at once (respill),
    /// the others begin spilling and are returned, to be written out.
    fn evict(&mut self, mut to_free: u64, keep: Option<SlotId>) -> Vec<Victim> {
        let mut victims = Vec::new();
        let mut cursor = self.state().slab.back();
        while to_free > 0 {
            let Some(slot) = cursor else { break };
            cursor = self.state().slab.prev_of(slot);
            if Some(slot) == keep {
                continue;
            }
            let payload = &self.state().entry(slot).payload;
            to_free = to_free.saturating_sub(payload.len());
            if matches!(payload, Payload::Resident { copy: Some(_), .. }) {
                self.respill(slot);
            } else {
                victims.push(self.begin_spill(slot));
            }
        }
        victims
    }

    /// memory (with an intact copy) -> disk, without a write.
    fn respill(&mut self, slot: SlotId) {
        let (state, garbage, counters) = self.parts();
        let len = state.entry(slot).payload.len();
        state.counts.recount(len, Place::Memory, Place::Disk);
        state.slab.unlink(slot);
        let entry = state.entry_mut(slot);
        let Payload::Resident {
            value,
            copy: Some(record),
        } = std::mem::replace(&mut entry.payload, PLACEHOLDER)
        else {
            unreachable!("respill of a value without a disk copy")
        };
        entry.payload = Payload::Disk(record);
        garbage.values.push(value);
        bump(&counters.respills, 1);
    }

    /// memory (no copy) -> spilling: the value stays readable, out of the
    /// LRU list, until its write ends.
    fn begin_spill(&mut self, slot: SlotId) -> Victim {
        let state = self.state();
        let Payload::Resident { value, copy: None } = &state.entry(slot).payload else {
            unreachable!("only resident values without a copy are written out")
        };
        let value = value.clone();
        state
            .counts
            .recount(value.len() as u64, Place::Memory, Place::Spilling);
        state.slab.unlink(slot);
        Victim { slot, value }
    }

    /// spilling -> disk, if the victim was not removed or replaced while it
    /// was written; otherwise its new record is simply dropped.
    fn finish_spill(&mut self, victim: Victim, record: Record) {
        let (state, garbage, counters) = self.parts();
        if !state.is_spilling(&victim) {
            garbage.records.push(record);
            return;
        }
        let len = victim.value.len() as u64;
        state.counts.recount(len, Place::Spilling, Place::Disk);
        let entry = state.entry_mut(victim.slot);
        garbage.take(std::mem::replace(&mut entry.payload, Payload::Disk(record)));
        bump(&counters.spills, 1);
        bump(&counters.spilled_bytes, len);
    }

    /// spilling -> memory, back at the LRU tail, after a failed write.
    fn abort_spill(&mut self, victim: Victim) {
        let state = self.state();
        if state.is_spilling(&victim) {
            state
                .counts
                .recount(victim.value.len() as u64, Place::Spilling, Place::Memory);
            state.slab.push_back(victim.slot);
        }
    }

    /// disk -> memory, keeping the record as the value's disk copy, if `key`
    /// still holds the record that `reader` read `bytes` from.
    fn promote<Q>(&mut self, key: &Q, hash: u64, reader: &RecordReader, bytes: &Bytes)
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let state = self.state();
        let Some(slot) = state.find(hash, key) else {
            return;
        };
        let entry = state.entry_mut(slot);
        let Payload::Disk(record) = &entry.payload else {
            return; // another reader promoted it
        };
        if !record.same_as(reader) {
            return; // replaced meanwhile
        }
        let Payload::Disk(record) = std::mem::replace(&mut entry.payload, PLACEHOLDER) else {
            unreachable!("checked above")
        };
        entry.payload = Payload::Resident {
            value: bytes.clone(),
            copy: Some(record),
        };
        state
            .counts
            .recount(bytes.len() as u64, Place::Disk, Place::Memory);
        state.slab.push_front(slot);
    }

    /// memory (copy) -> memory (no copy), for copies `doomed` selects.
    fn drop_copy(&mut self, slot: SlotId, doomed: impl Fn(&Record) -> bool) {
        let (state, garbage, _) = self.parts();
        if let Some(Entry {
            payload: Payload::Resident { copy, .. },
            ..
        }) = state.slab.get_mut(slot)
        {
            if copy.as_ref().is_some_and(doomed) {
                garbage.records.extend(copy.take());
            }
        }
    }

    /// disk -> disk: swaps in the record compaction wrote, if the entry still
    /// holds the one it read. Returns the value bytes moved.
    fn move_record(&mut self, relocation: Relocation, record: Record) -> u64 {
        let (state, garbage, _) = self.parts();
        match state.slab.get_mut(relocation.slot).map(|e| &mut e.payload) {
            Some(Payload::Disk(old)) if old.same_as(&relocation.reader) => {
                garbage.records.push(std::mem::replace(old, record));
                relocation.reader.value_len()
            }
            _ => {
                garbage.records.push(record);
                0
            }
        }
    }
}

impl<K: Hash + Eq> WriteGuard<'_, K> {
    /// absent or any -> memory (a resident payload, at the LRU head; the
    /// caller made room) or disk. A replaced payload goes to the garbage.
    fn store(&mut self, key: K, hash: u64, payload: Payload) {
        let hasher = &self.shard.hasher;
        let (state, garbage, _) = self.parts();
        let to = match payload {
            Payload::Resident { .. } => Place::Memory,
            Payload::Disk(_) => Place::Disk,
        };
        let len = payload.len();
        let slot = match state.find(hash, &key) {
            Some(slot) => {
                let from = state.place(slot);
                let old = std::mem::replace(&mut state.entry_mut(slot).payload, payload);
                state.counts.recount(old.len(), from, Place::Absent);
                garbage.take(old);
                state.slab.unlink(slot);
                slot
            }
            None => {
                let slot = state
                    .slab
                    .insert(Entry { key, payload })
                    .expect("fewer than 2^32 - 2 entries in one shard");
                let slab = &state.slab;
                state.index.insert_unique(hash, slot, |&s| {
                    hasher.hash_one(&slab.get(s).expect("indexed slot is occupied").key)
                });
                slot
            }
        };
        state.counts.recount(len, Place::Absent, to);
        if to == Place::Memory {
            state.slab.push_front(slot);
        }
    }

    /// any -> absent. Says whether `key` was there.
    fn remove<Q>(&mut self, key: &Q, hash: u64) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let (state, garbage, _) = self.parts();
        let slab = &state.slab;
        let Ok(found) = state.index.find_entry(hash, |&slot| {
            slab.get(slot).is_some_and(|e| e.key.borrow() == key)
        }) else {
            return false;
        };
        let (slot, _) = found.remove();
        let from = state.place(slot);
        let entry = state.slab.remove(slot).expect("indexed slot is occupied");
        state
            .counts
            .recount(entry.payload.len(), from, Place::Absent);
        garbage.take(entry.payload);
        true
    }
}

impl<K> Drop for WriteGuard<'_, K> {
    fn drop(&mut self) {
        self.release();
    }
}

impl Counts {
    /// The one place the per-state counters change: an entry of `len` value
    /// bytes moves from state `from` to state `to`.
    fn recount(&mut self, len: u64, from: Place, to: Place) {
        match from {
            Place::Absent => {}
            Place::Memory | Place::Spilling => {
                self.memory_bytes -= len;
                self.memory_entries -= 1;
            }
            Place::Disk => self.disk_bytes -= len,
        }
        if from == Place::Spilling {
            self.spilling_bytes -= len;
        }
        match to {
            Place::Absent => {}
            Place::Memory | Place::Spilling => {
                self.memory_bytes += len;
                self.memory_entries += 1;
            }
            Place::Disk => self.disk_bytes += len,
        }
        if to == Place::Spilling {
            self.spilling_bytes += len;
        }
    }
}

impl<K> State<K> {
    /// The state of the entry in `slot` (see the table at the top).
    fn place(&self, slot: SlotId) -> Place {
        match self.slab.get(slot).map(|e| &e.payload) {
            None => Place::Absent,
            Some(Payload::Disk(_)) => Place::Disk,
            Some(Payload::Resident { .. }) if self.slab.is_linked(slot) => Place::Memory,
            Some(Payload::Resident { .. }) => Place::Spilling,
        }
    }

    fn entry(&self, slot: SlotId) -> &Entry<K> {
        self.slab.get(slot).expect("slot is occupied")
    }

    fn entry_mut(&mut self, slot: SlotId) -> &mut Entry<K> {
        self.slab.get_mut(slot).expect("slot is occupied")
    }

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

    /// Whether the victim's slot still holds it, being spilled.
    fn is_spilling(&self, victim: &Victim) -> bool {
        self.place(victim.slot) == Place::Spilling
            && match &self.entry(victim.slot).payload {
                Payload::Resident { value, .. } => {
                    value.as_ptr() == victim.value.as_ptr() && value.len() == victim.value.len()
                }
                Payload::Disk(_) => false,
            }
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
        assert_eq!(crate::lru::slot_size::<Entry<String>>(), 80);
    }

    /// Frees under the lock are caught: dropping a spill record while the
    /// guard holds the lock panics in debug builds (the guard itself only
    /// ever frees after releasing it, which every other test exercises).
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "a spill record was dropped while holding a shard lock")]
    fn dropping_a_record_under_the_lock_panics() {
        let dir = tempfile::tempdir().unwrap();
        let spill = SpillDir::open(dir.path().join("d"), 4096).unwrap();
        let record = spill.write(&[Bytes::from_static(b"v")]).unwrap().pop();
        let shard: Shard<u32> = Shard::new(100, ahash::RandomState::new());
        let _guard = shard.write();
        drop(record);
    }

    /// What a transition takes out waits in the guard's garbage and is freed
    /// when the guard goes: the spill file is deleted then, not before.
    #[test]
    fn the_guard_frees_after_unlocking() {
        let dir = tempfile::tempdir().unwrap();
        let spill = SpillDir::open(dir.path().join("d"), 4096).unwrap();
        let shard: Shard<u32> = Shard::new(100, ahash::RandomState::new());
        let record = spill.write(&[Bytes::from_static(b"v")]).unwrap().pop();
        let mut guard = shard.write();
        guard.store(1, 1, Payload::Disk(record.unwrap()));
        assert!(guard.remove(&1, 1));
        assert_eq!(spill.usage().files, 1, "the record waits in the garbage");
        drop(guard);
        assert_eq!(spill.usage().files, 0, "freed with the guard");
        shard.validate().unwrap();
    }
}
