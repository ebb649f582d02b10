//! The entry state machine of a shard, behind its write lock.
//!
//! # States and transitions
//!
//! | state    | payload                  | in LRU list | counted in                        |
//! |----------|--------------------------|-------------|-----------------------------------|
//! | memory   | `Resident`, copy or not  | yes         | `memory_bytes`, `memory_entries`; `dirty_entries` without a copy |
//! | spilling | `Resident`, no copy      | no          | the same, and `spilling_bytes`    |
//! | disk     | `Disk`                   | no          | `disk_bytes`                      |
//!
//! Each transition is one method of [`WriteGuard`] (but for the replace in
//! place below, a method of [`State`] itself), and the per-state
//! counters change in exactly one function, [`Counts::recount`], which every
//! transition calls with the entry's state before and after; `validate()`
//! sums the entries through the same function and compares.
//!
//! | transition     | method          | from -> to                 | activity counted |
//! |----------------|-----------------|----------------------------|------------------|
//! | store          | `store`         | absent, any -> memory/disk | `spills` if disk |
//! | remove         | `remove`        | any -> absent              |                  |
//! | begin spill    | `begin_spill`   | memory -> spilling         |                  |
//! | finish spill   | `finish_spill`  | spilling -> disk           | `spills`         |
//! | abort spill    | `abort_spill`   | spilling -> memory (tail)  |                  |
//! | respill        | `respill`       | memory (copy) -> disk      | `respills`       |
//! | promote        | `promote`       | disk -> memory (copy kept) |                  |
//! | clean          | `clean`         | memory -> memory (copy)    | `cleaned`        |
//! | drop copy      | `drop_copy`     | memory (copy) -> memory    | (compaction)     |
//! | move record    | `move_record`   | disk -> disk (new record)  | (compaction)     |
//! | clear          | `clear`         | all -> absent              |                  |
//! | replace (CLOCK)| `State::replace_linked` | memory -> memory (no copy), in place | |
//!
//! A resident value may keep its disk copy after a reload: values are
//! immutable, so evicting it again needs no write ("respill"). The spiller
//! gives values near the LRU tail such a copy ahead of need ("clean"), so
//! that the insert that evicts them writes nothing either.
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
//!
//! One transition runs without the guard: the most common insert, a value
//! in memory replaced by one that fits (CLOCK only). The guard's setup and
//! release were a fifth of that replace, so `Shard::insert` calls
//! [`State::replace_linked`] under the bare lock; it takes nothing out
//! but the payload it returns, which the caller frees after dropping the
//! lock (tracked for the debug check as the guard's is).

use std::borrow::Borrow;
use std::hash::Hash;

use bytes::Bytes;
use hashbrown::HashTable;

use super::spares::Spares;
use super::Shard;
use crate::lru::{LinkedSlab, Markable, SlotId};
use crate::spill::{Record, RecordReader};
use crate::stats::{bump, Counters};
use crate::sync::{lock_tracking, RwLockWriteGuard};

/// A stored key and its value's state. In declaration order, key first:
/// a hit reads the slot's mark, the key and the value (at the payload's
/// start), which with a `String` key then lie in the first 64 of the slot's
/// 80 bytes (see `Slot`).
#[repr(C)]
pub(crate) struct Entry<K> {
    pub(super) key: K,
    pub(super) payload: Payload,
}

/// Where a value's bytes are.
pub(super) enum Payload {
    /// In memory; `copy` is an intact record of the same bytes, kept from an
    /// earlier spill so that evicting the value again needs no write.
    Resident { value: Bytes, copy: Option<Record> },
    /// Only on disk.
    Disk(Record),
}

/// A payload to put in place while the real one is moved out.
pub(super) const PLACEHOLDER: Payload = Payload::Resident {
    value: Bytes::new(),
    copy: None,
};

impl Payload {
    /// Drops a payload taken out of the shard, with the lock released,
    /// handing a large value's buffer to `spares` for the next reloads.
    /// Says whether it gave up a spill record (a copy, or the value's
    /// only one).
    ///
    /// Always inlined: left to the compiler it stayed a call, which copied
    /// the payload through the stack and cost a replace 13 instructions.
    #[inline(always)]
    pub(super) fn free(self, spares: &Spares) -> bool {
        match self {
            Payload::Resident { value, copy } => {
                spares.keep(value);
                copy.is_some()
            }
            Payload::Disk(_) => true,
        }
    }

    pub(super) fn len(&self) -> u64 {
        match self {
            Payload::Resident { value, .. } => value.len() as u64,
            Payload::Disk(record) => record.value_len(),
        }
    }
}

/// The state of an entry, for accounting (see the table above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    Absent,
    /// In memory and in the LRU list; `copy`: with an intact disk copy.
    Memory {
        copy: bool,
    },
    Spilling,
    Disk,
}

/// Values and records taken out of the shard under its lock. The first is
/// kept inline: most write sections take out at most one payload (the one a
/// replace or remove drops), and they should not allocate for it.
#[derive(Default)]
pub(super) struct Garbage {
    first: Option<Payload>,
    rest: Vec<Payload>,
}

impl Garbage {
    #[inline]
    pub(super) fn take(&mut self, payload: Payload) {
        if self.first.is_none() {
            self.first = Some(payload);
        } else {
            self.rest.push(payload);
        }
    }

    fn take_value(&mut self, value: Bytes) {
        self.take(Payload::Resident { value, copy: None });
    }

    fn take_record(&mut self, record: Record) {
        self.take(Payload::Disk(record));
    }

    /// Takes the spill records out of what was taken; the values stay.
    #[cfg(feature = "tokio")]
    fn take_records(&mut self) -> Vec<Record> {
        let mut records = Vec::new();
        let taken = self
            .first
            .take()
            .into_iter()
            .chain(std::mem::take(&mut self.rest));
        for payload in taken {
            match payload {
                Payload::Disk(record) => records.push(record),
                Payload::Resident { value, copy } => {
                    records.extend(copy);
                    self.take_value(value);
                }
            }
        }
        records
    }

    /// Drops everything taken, handing large values' buffers to `spares`
    /// for the next reloads; the guard calls this with the lock released.
    ///
    /// No iterator adaptors over the payloads: chaining `first` with a
    /// drain of `rest` moved each payload through them and cost a replace
    /// about 100 instructions (callgrind, the compare tool's `mixed`).
    /// Inlined into the guard's release, which then knows `first` is empty
    /// and drops the garbage without calling its drop glue (a replace ran
    /// about 10 instructions more without).
    #[inline]
    pub(super) fn free(&mut self, spares: &Spares) {
        if let Some(payload) = self.first.take() {
            payload.free(spares);
        }
        if !self.rest.is_empty() {
            for payload in self.rest.drain(..) {
                payload.free(spares);
            }
        }
    }
}

pub(super) struct State<K> {
    pub(super) index: HashTable<SlotId>,
    pub(super) slab: LinkedSlab<Entry<K>>,
    pub(super) counts: Counts,
    /// What eviction took from the LRU tail so far, for the spiller to know
    /// how far its clean window moved (see `shard::clean`).
    pub(super) evictions: Evictions,
}

/// Running totals of evictions in one shard.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Evictions {
    /// Value bytes the eviction hand took off the LRU tail: evicted, with or
    /// without a write, or given a second chance at the head.
    pub(super) bytes: u64,
    /// Evictions that had to write (the value had no disk copy).
    pub(super) writes: u64,
    /// Times the entry where the spiller's walk stopped went to the head
    /// (a second chance, or a hit replayed in exact-LRU mode): the walk
    /// cannot go on from there.
    pub(super) frontier_moves: u64,
}

/// The per-state counters of a shard (see the table at the top).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counts {
    /// Bytes of values in memory (memory and spilling states).
    pub(super) memory_bytes: u64,
    /// Bytes of values in memory that are being written out.
    pub(super) spilling_bytes: u64,
    /// Bytes of values only on disk.
    pub(super) disk_bytes: u64,
    /// Values in the memory state without a disk copy: what the spiller
    /// may have to clean (nothing to wake it for when zero). Counted in
    /// entries, not bytes, so that empty values count too.
    pub(super) dirty_entries: usize,
    /// Values in memory (memory and spilling states).
    pub(super) memory_entries: usize,
}

/// A value chosen for eviction and being written out (or chosen by the
/// spiller to get a copy ahead of need): its slot, and a clone of its bytes
/// that both feeds the write and identifies it afterwards.
pub(super) struct Victim {
    pub(super) slot: SlotId,
    pub(super) value: Bytes,
}

impl Victim {
    /// Whether `value` is the very value this victim was taken from.
    pub(super) fn is(&self, value: &Bytes) -> bool {
        value.as_ptr() == self.value.as_ptr() && value.len() == self.value.len()
    }
}

/// A value on disk that compaction may move: read it with `reader`, write it
/// elsewhere, and hand the new record to [`Shard::install_moved`].
pub(crate) struct Relocation {
    pub(super) slot: SlotId,
    pub(crate) reader: RecordReader,
}

/// What compaction finds in one shard.
pub(crate) struct SparseRecords {
    /// Values only on disk whose records sit in sparse segments.
    pub(crate) to_move: Vec<Relocation>,
    /// Whether some resident value keeps its disk copy in a sparse segment.
    pub(crate) copies: bool,
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

impl<'a, K> WriteGuard<'a, K> {
    /// Wraps the freshly taken write lock and applies the buffered accesses.
    #[inline]
    pub(super) fn new(shard: &'a Shard<K>, mut state: RwLockWriteGuard<'a, State<K>>) -> Self {
        Self::taken(shard, &mut state);
        // Built whole after the replay, which then never sees the guard: a
        // guard lent to it had to be built in memory and then moved, a copy
        // of its hundred bytes on every insert.
        WriteGuard {
            shard,
            state: Some(state),
            garbage: Garbage::default(),
        }
    }

    /// Takes back the lock [`release`](Self::release) gave up.
    #[inline]
    fn adopt(&mut self, mut state: RwLockWriteGuard<'a, State<K>>) {
        debug_assert!(self.state.is_none());
        Self::taken(self.shard, &mut state);
        self.state = Some(state);
    }

    /// What follows taking the lock: tracking it, and with exact LRU
    /// applying the buffered hits. Inlined, with the replay out of line:
    /// as a call, this cost every insert about 20 instructions (callgrind,
    /// `mixed`).
    #[inline]
    fn taken(shard: &Shard<K>, state: &mut State<K>) {
        lock_tracking::taken();
        if shard.exact_lru {
            Self::replay_accesses(shard, state);
        }
    }

    /// Applies the hits buffered for exact LRU to the list.
    #[inline(never)]
    fn replay_accesses(shard: &Shard<K>, state: &mut State<K>) {
        let frontier = shard.frontier_slot();
        shard.accesses.replay(|slot| {
            if slot == frontier {
                state.evictions.frontier_moves += 1;
            }
            state.slab.touch(slot);
        });
    }

    pub(super) fn state(&mut self) -> &mut State<K> {
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
        self.garbage.free(&self.shard.spares);
    }

    /// The spill records this guard took out of the shard so far, for the
    /// caller to drop elsewhere (see `SpillDir::drop_in_background`); the
    /// values it took are freed as usual.
    #[cfg(feature = "tokio")]
    pub(super) fn take_records(&mut self) -> Vec<Record> {
        self.garbage.take_records()
    }

    /// Runs `io` with the lock released (and the garbage freed), then locks
    /// again. Anything may have changed meanwhile.
    pub(super) fn unlocked<R>(&mut self, io: impl FnOnce() -> R) -> R {
        self.release();
        let result = io();
        self.adopt(self.shard.state.write());
        result
    }

    /// all -> absent.
    pub(super) fn clear(&mut self) {
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
    ///
    /// Inlined into `make_room`: as a call, with its own frame and its
    /// result returned through memory, it cost a replace 44 instructions
    /// more (callgrind, the compare tool's `mixed`). `store_found`
    /// inlined as well cost 35 more, not less, and stays a call.
    #[inline]
    pub(super) fn overflow<Q>(
        &mut self,
        len: u64,
        replacing: Option<(&Q, u64)>,
    ) -> (u64, Option<SlotId>)
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let keep = replacing.and_then(|(key, hash)| self.state().find(hash, key));
        (self.overflow_found(len, keep), keep)
    }

    /// [`overflow`](Self::overflow), given the slot of the key being
    /// replaced as `State::find` returned it under this guard since it last
    /// released the lock.
    #[inline]
    pub(super) fn overflow_found(&mut self, len: u64, keep: Option<SlotId>) -> u64 {
        let budget = self.shard.budget;
        let state = self.state();
        let credit = match keep {
            Some(slot) if matches!(state.place(slot), Place::Memory { .. }) => {
                state.entry(slot).payload.len()
            }
            _ => 0,
        };
        state.counts.overflow_crediting(budget, credit, len)
    }

    /// Frees at least `to_free` bytes of memory from the LRU tail (never
    /// `keep`): values with an intact disk copy leave at once (respill),
    /// the others begin spilling and are returned, to be written out.
    ///
    /// Without `exact_lru`, this is the CLOCK hand: an entry marked by a hit
    /// since it last passed here loses its mark and moves to the head
    /// instead (a second chance; a reorder, not a change of state). When
    /// the hand passes the head it wraps around to the tail once: by then
    /// every entry has lost its mark (no hit can come in under the write
    /// lock), so each entry is passed at most twice and the walk ends.
    pub(super) fn evict(&mut self, to_free: u64, keep: Option<SlotId>) -> Vec<Victim> {
        let mut victims = Vec::new();
        self.clock_walk(to_free, keep, |guard, slot| {
            victims.push(guard.begin_spill(slot));
            true
        });
        victims
    }

    /// [`evict`](Self::evict) without writes: only values with an intact
    /// disk copy leave (respill). The walk stops at the first victim that
    /// would need a write and leaves it in place, so the victims that did
    /// leave are exactly the ones `evict` would have taken first, and an
    /// `evict` after it goes on from where this one stopped. Says whether
    /// `to_free` bytes were freed.
    #[cfg(feature = "tokio")]
    pub(super) fn evict_without_writes(&mut self, to_free: u64, keep: Option<SlotId>) -> bool {
        self.clock_walk(to_free, keep, |_, _| false) == 0
    }

    /// The victim walk of [`evict`](Self::evict): respills values with a
    /// copy and hands the others to `write`, which begins their spill and
    /// says true, or says false to end the walk with the victim untouched.
    /// Returns the bytes still to free.
    fn clock_walk(
        &mut self,
        mut to_free: u64,
        keep: Option<SlotId>,
        mut write: impl FnMut(&mut Self, SlotId) -> bool,
    ) -> u64 {
        let shard = self.shard;
        let exact = shard.exact_lru;
        let mut cursor = self.state().slab.back();
        let mut wrapped = false;
        while to_free > 0 {
            let Some(slot) = cursor else { break };
            let state = self.state();
            let slab = &mut state.slab;
            cursor = slab.prev_of(slot);
            if Some(slot) == keep {
                continue;
            }
            if !exact && slab.take_mark(slot) {
                slab.unlink(slot);
                slab.push_front(slot);
                // It left the tail as surely as an evicted value.
                let len = slab.get(slot).map_or(0, |e| e.payload.len());
                state.evictions.bytes += len;
                if slot == shard.frontier_slot() {
                    state.evictions.frontier_moves += 1;
                }
                let slab = &state.slab;
                if cursor.is_none() && !wrapped {
                    wrapped = true;
                    cursor = slab.back();
                }
                continue;
            }
            let state = self.state();
            let payload = &state.entry(slot).payload;
            let len = payload.len();
            if matches!(payload, Payload::Resident { copy: Some(_), .. }) {
                state.evictions.bytes += len;
                self.respill(slot);
            } else if write(self, slot) {
                let evictions = &mut self.state().evictions;
                evictions.bytes += len;
                evictions.writes += 1;
            } else {
                break;
            }
            to_free = to_free.saturating_sub(len);
        }
        to_free
    }

    /// memory (with an intact copy) -> disk, without a write.
    fn respill(&mut self, slot: SlotId) {
        let (state, garbage, counters) = self.parts();
        let len = state.entry(slot).payload.len();
        let with_copy = Place::Memory { copy: true };
        state.counts.recount(len, with_copy, Place::Disk);
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
        garbage.take_value(value);
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
        state.counts.recount(
            value.len() as u64,
            Place::Memory { copy: false },
            Place::Spilling,
        );
        state.slab.unlink(slot);
        Victim { slot, value }
    }

    /// spilling -> disk, if the victim was not removed or replaced while it
    /// was written; otherwise its new record is simply dropped.
    pub(super) fn finish_spill(&mut self, victim: Victim, record: Record) {
        let (state, garbage, counters) = self.parts();
        if !state.is_spilling(&victim) {
            garbage.take_record(record);
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
    pub(super) fn abort_spill(&mut self, victim: Victim) {
        let state = self.state();
        if state.is_spilling(&victim) {
            state.counts.recount(
                victim.value.len() as u64,
                Place::Spilling,
                Place::Memory { copy: false },
            );
            state.slab.push_back(victim.slot);
        }
    }

    /// disk -> memory, keeping the record as the value's disk copy, if `key`
    /// still holds the record that `reader` read `bytes` from.
    pub(super) fn promote<Q>(&mut self, key: &Q, hash: u64, reader: &RecordReader, bytes: &Bytes)
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
        state.counts.recount(
            bytes.len() as u64,
            Place::Disk,
            Place::Memory { copy: true },
        );
        state.slab.push_front(slot);
    }

    /// memory (no copy) -> memory (copy): `record` is a copy of the
    /// victim's value written ahead of need, kept if the entry still holds
    /// that value in memory without a copy (not removed, replaced, evicted
    /// or being spilled meanwhile); otherwise it is dropped. Says which.
    pub(super) fn clean(&mut self, victim: Victim, record: Record) -> bool {
        let (state, garbage, counters) = self.parts();
        let dirty = Place::Memory { copy: false };
        if state.place(victim.slot) == dirty {
            if let Payload::Resident { value, copy } = &mut state.entry_mut(victim.slot).payload {
                if victim.is(value) {
                    *copy = Some(record);
                    let len = victim.value.len() as u64;
                    state
                        .counts
                        .recount(len, dirty, Place::Memory { copy: true });
                    bump(&counters.cleaned, 1);
                    bump(&counters.cleaned_bytes, len);
                    return true;
                }
            }
        }
        garbage.take_record(record);
        // Maybe the last reference, if the entry went meanwhile.
        garbage.take_value(victim.value);
        false
    }

    /// memory (copy) -> memory (no copy), for copies `doomed` selects;
    /// says whether one went.
    pub(super) fn drop_copy(&mut self, slot: SlotId, doomed: impl Fn(&Record) -> bool) -> bool {
        let (state, garbage, _) = self.parts();
        if let Some(Entry {
            payload: Payload::Resident { copy, .. },
            ..
        }) = state.slab.get_mut(slot)
        {
            if let Some(record) = copy.take_if(|record| doomed(record)) {
                // A value with a copy is never spilling: it is in memory.
                let (from, to) = (Place::Memory { copy: true }, Place::Memory { copy: false });
                state.counts.recount(record.value_len(), from, to);
                garbage.take_record(record);
                return true;
            }
        }
        false
    }

    /// disk -> disk: swaps in the record compaction wrote, if the entry still
    /// holds the one it read. Returns the value bytes moved.
    pub(super) fn move_record(&mut self, relocation: Relocation, record: Record) -> u64 {
        let (state, garbage, _) = self.parts();
        match state.slab.get_mut(relocation.slot).map(|e| &mut e.payload) {
            Some(Payload::Disk(old)) if old.same_as(&relocation.reader) => {
                garbage.take_record(std::mem::replace(old, record));
                relocation.reader.value_len()
            }
            _ => {
                garbage.take_record(record);
                0
            }
        }
    }
}

impl<K: Hash + Eq> WriteGuard<'_, K> {
    /// absent or any -> memory (a resident payload, at the LRU head; the
    /// caller made room) or disk (a value just written, larger than the
    /// shard's share). A replaced payload goes to the garbage. With CLOCK,
    /// a value in memory replaced by a resident one keeps its place in the
    /// list instead, and gets the reference mark. Returns `key` when the
    /// entry kept its own, for the caller to drop after the lock (see
    /// [`store_found`](Self::store_found)).
    #[must_use = "drop the spare key after the guard, not under the lock"]
    pub(super) fn store(&mut self, key: K, hash: u64, payload: Payload) -> Option<K> {
        let found = self.state().find(hash, &key);
        self.store_found(found, key, hash, payload).1
    }

    /// [`store`](Self::store), given what `State::find(hash, &key)` returned
    /// under this guard since it last released the lock: `found`. Says
    /// whether the replaced payload leaves a spill record behind to drop
    /// (it had one, or it is being written), so that the caller knows the
    /// dump dir's dead space may have grown. Returns `key` too when the
    /// entry kept its own, for the caller to drop after the lock: freeing
    /// a `String` key was a twelfth of a replace, all of it under the lock.
    pub(super) fn store_found(
        &mut self,
        found: Option<SlotId>,
        key: K,
        hash: u64,
        payload: Payload,
    ) -> (bool, Option<K>) {
        let hasher = &self.shard.hasher;
        let exact = self.shard.exact_lru;
        let (state, garbage, counters) = self.parts();
        debug_assert_eq!(found, state.find(hash, &key), "stale slot");
        let to = match &payload {
            Payload::Resident { copy, .. } => Place::Memory {
                copy: copy.is_some(),
            },
            Payload::Disk(_) => Place::Disk,
        };
        let len = payload.len();
        let (slot, from, spare_key) = match found {
            Some(slot) => {
                let from = state.place(slot);
                if let (Place::Memory { copy }, Place::Memory { .. }, false) = (from, to, exact) {
                    // CLOCK: a resident value replaced by a resident one
                    // stays where it stands. On its own: with `from` and
                    // `to` known, the counting folds into a few
                    // instructions (the general path cost it 35 more;
                    // callgrind, the compare tool's `mixed`). Most such
                    // replaces never get here: `replace_resident` serves
                    // those that need no eviction.
                    state.replace_in_place(garbage, slot, from, payload, to);
                    return (copy, Some(key));
                }
                let old = std::mem::replace(&mut state.entry_mut(slot).payload, payload);
                state.counts.recount(old.len(), from, Place::Absent);
                garbage.take(old);
                (slot, from, Some(key))
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
                (slot, Place::Absent, None)
            }
        };
        state.counts.recount(len, Place::Absent, to);
        match to {
            // Linked or not before (a replaced key may have been on disk).
            Place::Memory { .. } => state.slab.move_to_front(slot),
            _ => {
                state.slab.unlink(slot);
                bump(&counters.spills, 1);
                bump(&counters.spilled_bytes, len);
            }
        }
        let dropped = matches!(
            from,
            Place::Memory { copy: true } | Place::Spilling | Place::Disk
        );
        (dropped, spare_key)
    }

    /// any -> absent. Says whether `key` was there.
    pub(super) fn remove<Q>(&mut self, key: &Q, hash: u64) -> bool
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
    /// Bytes over `budget` with `len` more in memory, `credit` of the
    /// resident bytes counted as free (the value being replaced): the one
    /// budget test of `overflow_found` and `State::replace_linked`.
    #[inline]
    fn overflow_crediting(&self, budget: u64, credit: u64, len: u64) -> u64 {
        let needed = (self.memory_bytes - credit).saturating_add(len);
        needed.saturating_sub(budget)
    }

    /// The one place the per-state counters change: an entry of `len` value
    /// bytes moves from state `from` to state `to`.
    pub(super) fn recount(&mut self, len: u64, from: Place, to: Place) {
        match from {
            Place::Absent => {}
            Place::Memory { .. } | Place::Spilling => {
                self.memory_bytes -= len;
                self.memory_entries -= 1;
            }
            Place::Disk => self.disk_bytes -= len,
        }
        match from {
            Place::Spilling => self.spilling_bytes -= len,
            Place::Memory { copy: false } => self.dirty_entries -= 1,
            _ => {}
        }
        match to {
            Place::Absent => {}
            Place::Memory { .. } | Place::Spilling => {
                self.memory_bytes += len;
                self.memory_entries += 1;
            }
            Place::Disk => self.disk_bytes += len,
        }
        match to {
            Place::Spilling => self.spilling_bytes += len,
            Place::Memory { copy: false } => self.dirty_entries += 1,
            _ => {}
        }
    }
}

impl<K> State<K> {
    pub(super) fn new() -> Self {
        State {
            index: HashTable::new(),
            slab: LinkedSlab::default(),
            counts: Counts::default(),
            evictions: Evictions::default(),
        }
    }

    /// `from` -> `to`, both in memory, for CLOCK: `payload` replaces the
    /// value in `slot` where it stands in the list, and the slot gets the
    /// reference mark, as a hit would give it (a write is a use). Moving
    /// it to the head touched three more slots (the neighbours it left and
    /// the old head), which a replace otherwise never reads. The replaced
    /// payload goes to `garbage`.
    #[inline]
    fn replace_in_place(
        &mut self,
        garbage: &mut Garbage,
        slot: SlotId,
        from: Place,
        payload: Payload,
        to: Place,
    ) {
        let len = payload.len();
        let old = std::mem::replace(&mut self.entry_mut(slot).payload, payload);
        self.counts.recount(old.len(), from, Place::Absent);
        self.counts.recount(len, Place::Absent, to);
        self.slab.mark(slot);
        garbage.take(old);
    }

    /// memory -> memory for CLOCK, if `slot` holds a value in memory and
    /// `budget` holds `value` in its place: swaps it in where it stands,
    /// marks the slot and returns the payload it replaced. Hands `value`
    /// back, with nothing changed, otherwise.
    #[inline]
    pub(super) fn replace_linked(
        &mut self,
        slot: SlotId,
        value: Bytes,
        budget: u64,
    ) -> Result<Payload, Bytes> {
        let len = value.len() as u64;
        let Some(mut linked) = self.slab.get_linked_mut(slot) else {
            return Err(value);
        };
        let Payload::Resident { value: old, copy } = &mut linked.item_mut().payload else {
            return Err(value);
        };
        let credit = old.len() as u64;
        if self.counts.overflow_crediting(budget, credit, len) > 0 {
            return Err(value);
        }
        let had_copy = copy.is_some();
        let old = Payload::Resident {
            value: std::mem::replace(old, value),
            copy: copy.take(),
        };
        linked.mark();
        self.counts
            .recount(credit, Place::Memory { copy: had_copy }, Place::Absent);
        self.counts
            .recount(len, Place::Absent, Place::Memory { copy: false });
        Ok(old)
    }

    /// The state of the entry in `slot` (see the table at the top).
    pub(super) fn place(&self, slot: SlotId) -> Place {
        match self.slab.get(slot).map(|e| &e.payload) {
            None => Place::Absent,
            Some(Payload::Disk(_)) => Place::Disk,
            Some(Payload::Resident { copy, .. }) if self.slab.is_linked(slot) => Place::Memory {
                copy: copy.is_some(),
            },
            Some(Payload::Resident { .. }) => Place::Spilling,
        }
    }

    pub(super) fn entry(&self, slot: SlotId) -> &Entry<K> {
        self.slab.get(slot).expect("slot is occupied")
    }

    fn entry_mut(&mut self, slot: SlotId) -> &mut Entry<K> {
        self.slab.get_mut(slot).expect("slot is occupied")
    }

    pub(super) fn find<Q>(&self, hash: u64, key: &Q) -> Option<SlotId>
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

    /// [`find_for_read`](Self::find_for_read) past a first slot that held
    /// another key: the slot, and its entry with the means to mark it.
    #[cold]
    #[inline(never)]
    fn find_markable<Q>(&self, hash: u64, key: &Q) -> Option<(SlotId, Markable<'_, Entry<K>>)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let slot = self.find(hash, key)?;
        Some((slot, self.slab.get_markable(slot)?))
    }

    /// [`find`](Self::find) for a reader, under the read lock: the slot,
    /// and its entry with the means to mark it (the slot looked up for the
    /// key compare). Inlined: it is most of a memory hit, and a call costs a
    /// fifth more.
    #[inline]
    pub(super) fn find_for_read<Q>(
        &self,
        hash: u64,
        key: &Q,
    ) -> Option<(SlotId, Markable<'_, Entry<K>>)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        // The first slot whose 7-bit hash tag matches holds the key almost
        // always: it is compared after the probe, and only a mismatch probes
        // again comparing keys. With the key's `eq` (a call to `memcmp` for
        // a string) inside the probe loop, the compiler saved the loop's
        // registers around it on every hit: a hit ran 239 instructions
        // instead of 231 (`benches/instructions.sh hot-get spillstore`).
        let first = *self.index.find(hash, |_| true)?;
        match self.slab.get_markable(first) {
            Some(occupied) if occupied.item().key.borrow() == key => Some((first, occupied)),
            _ => self.find_markable(hash, key),
        }
    }

    /// Whether the victim's slot still holds it, being spilled.
    fn is_spilling(&self, victim: &Victim) -> bool {
        self.place(victim.slot) == Place::Spilling
            && match &self.entry(victim.slot).payload {
                Payload::Resident { value, .. } => victim.is(value),
                Payload::Disk(_) => false,
            }
    }
}
