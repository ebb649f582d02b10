//! The shard's attempts that never do I/O, for the async facade
//! ([`crate::asynchronous`]): each either completes under the lock, with
//! nothing but memory touched, or reports that the operation needs the disk
//! and changes nothing the normal operation would not have changed first.
//! The facade runs them on the executor thread and falls back to the normal
//! operation on tokio's blocking pool.
//!
//! They never wait for the shard's lock either: they try it, and report a
//! lock taken like a need for the disk. The store holds its locks only for
//! in-memory sections, but on a machine with more runnable threads than
//! cores a holder (say, a blocking-pool thread in the middle of an
//! eviction) can be preempted while holding it, and a worker waiting for
//! it then stalls for a scheduler time slice, milliseconds: measured with
//! asyncbench, 0.3% of the facade's memory hits found the lock taken and
//! waited 0.55 ms on average when they waited for it.
//!
//! What counts as I/O: writing a spill, reading a record, and dropping a
//! record (which may punch holes into its segment or delete its file).
//! Dropping a value's bytes only frees memory.

use std::borrow::Borrow;
use std::hash::Hash;

use bytes::Bytes;

use super::state::{Payload, State, WriteGuard};
use super::Shard;
use crate::background::Waker;
use crate::error::Error;
use crate::lru::SlotId;
use crate::spill::SpillDir;
use crate::stats::bump;

/// What a look at a shard's memory found for a key.
pub(crate) enum Probe {
    /// The value, in memory: served, and counted as a hit.
    Resident(Bytes),
    /// Only on disk: the normal `get` must read it back (nothing counted).
    OnDisk,
    /// Not stored: counted as a miss.
    Absent,
    /// The lock is taken (by a writer): the normal `get` must wait for it
    /// (nothing counted).
    Busy,
}

impl<K: Hash + Eq> Shard<K> {
    /// [`Shard::get`] as far as it goes without reading a file: a memory
    /// hit counts and marks recency exactly as `get` does, a miss counts
    /// as `get`'s does, and a value on disk (or a lock taken) is left to
    /// `get`, which counts it then.
    pub(crate) fn get_resident<Q>(&self, key: &Q, hash: u64) -> Probe
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(state) = briefly(|| self.state.try_read()) else {
            return Probe::Busy;
        };
        // `get`'s own first half, bookkeeping included.
        self.lookup_locked(
            state,
            key,
            hash,
            Probe::Resident,
            || Probe::Absent,
            |_| Probe::OnDisk,
        )
    }

    /// [`Shard::get`] of a value on disk, if it needs no I/O: the record is
    /// in the page cache (and its file open), and bringing the value back
    /// into memory needs no write (room is made by respills only). `None`
    /// otherwise, for the normal `get`; the victims respilled before giving
    /// up are the ones it evicts first. Counts the reload (and a corruption)
    /// exactly as `get` does, and only when it serves the value.
    pub(crate) fn reload_without_io<Q>(
        &self,
        key: &Q,
        hash: u64,
        spiller: Option<&Waker>,
    ) -> Option<Result<Bytes, Error>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let reader = {
            let state = briefly(|| self.state.try_read())?;
            match &state.entry(state.find(hash, key)?).payload {
                Payload::Disk(record) => record.reader(),
                Payload::Resident { .. } => return None, // promoted meanwhile
            }
        };
        let len = reader.value_len();
        if len > self.budget {
            return None; // served from its mapping, which may fault
        }
        let bytes = match reader.read_copy_if_cached()? {
            Ok(bytes) => bytes,
            Err(err) => {
                if matches!(err, Error::Corrupted { .. }) {
                    bump(&self.counters.corruptions, 1);
                }
                return Some(Err(err));
            }
        };
        // Admitted here, a value that then cannot be brought back without
        // a write goes to the normal `get`, which serves it without bringing
        // it back this time: its admission is spent.
        if !self.brings_back(hash, len) {
            bump(&self.counters.reloads, 1);
            bump(&self.counters.reloaded_bytes, len);
            bump(&self.counters.unpromoted_reloads, 1);
            return Some(Ok(bytes));
        }
        let mut guard = WriteGuard::new(self, briefly(|| self.state.try_write())?);
        let (over, _) = guard.overflow::<Q>(len, None);
        if over > 0 && !guard.evict_without_writes(over, None) {
            return None;
        }
        // A promoted value keeps its record as its copy.
        self.ask_spiller(guard.state(), len, 0, spiller);
        guard.promote(key, hash, &reader, &bytes);
        drop(guard);
        bump(&self.counters.reloads, 1);
        bump(&self.counters.reloaded_bytes, len);
        Some(Ok(bytes))
    }

    /// [`Shard::insert`] if it needs no I/O: room is made only by evicting
    /// values that keep an intact disk copy (respill). Gives `key` and
    /// `value` back, for the normal insert, when it would need a write (the
    /// LRU walk reached a value without a copy, or the value is larger than
    /// the shard's share and goes straight to disk), would drop a record
    /// (the value replaced has one) that `dir` cannot hand to its
    /// background thread to drop, or would wait for the lock. The values
    /// respilled before giving up are the ones the normal insert evicts
    /// first, so the eviction order is the same either way.
    ///
    /// Like `insert`, it asks the spiller (`spiller`) to clean ahead when the
    /// shard nears its budget.
    pub(crate) fn insert_without_io(
        &self,
        key: K,
        hash: u64,
        value: Bytes,
        spiller: Option<&Waker>,
        dir: Option<&SpillDir>,
    ) -> Result<(), (K, Bytes)> {
        let len = value.len() as u64;
        if len > self.budget {
            return Err((key, value));
        }
        let Some(state) = briefly(|| self.state.try_write()) else {
            return Err((key, value));
        };
        let mut guard = WriteGuard::new(self, state);
        let (over, keep) = guard.overflow(len, Some((&key, hash)));
        let drops_records = dir.is_some_and(SpillDir::drops_in_background);
        if !drops_records && keep.is_some_and(|slot| holds_record(guard.state(), slot)) {
            return Err((key, value));
        }
        // An unbounded shard never overflows, so it never needs a dump dir.
        if over > 0 && !guard.evict_without_writes(over, keep) {
            return Err((key, value));
        }
        self.ask_spiller(guard.state(), len, 1, spiller);
        let spare_key = guard.store(key, hash, Payload::Resident { value, copy: None });
        hand_over_records(guard, dir);
        drop(spare_key);
        Ok(())
    }

    /// [`Shard::remove`] if it needs no I/O: `None`, with nothing changed,
    /// when the lock is taken, or when `key` holds a record (on disk, or a
    /// resident value's copy) that `dir` cannot hand to its background
    /// thread to drop.
    pub(crate) fn remove_without_io<Q>(
        &self,
        key: &Q,
        hash: u64,
        dir: Option<&SpillDir>,
    ) -> Option<bool>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut guard = WriteGuard::new(self, briefly(|| self.state.try_write())?);
        let drops_records = dir.is_some_and(SpillDir::drops_in_background);
        match guard.state().find(hash, key) {
            None => Some(false),
            Some(slot) if !drops_records && holds_record(guard.state(), slot) => None,
            Some(_) => {
                let removed = guard.remove(key, hash);
                hand_over_records(guard, dir);
                Some(removed)
            }
        }
    }
}

/// Attempts to take a shard's lock before the caller gives up on it.
const LOCK_ATTEMPTS: usize = 64;

/// Takes a shard's lock with `attempt`, trying [`LOCK_ATTEMPTS`] times with
/// a spin-loop hint in between (a few microseconds in all): the store's
/// write sections are in-memory steps of about a microsecond, so waiting
/// out one costs the task far less than a trip to the blocking pool (two
/// thread wake-ups, and a thread competing with the executor's for a
/// core). A holder preempted by the operating system is not waited for.
/// Under shuttle, whose scheduler a spin would not yield to, one attempt.
fn briefly<G>(mut attempt: impl FnMut() -> Option<G>) -> Option<G> {
    let attempts = if cfg!(shuttle) { 1 } else { LOCK_ATTEMPTS };
    for _ in 1..attempts {
        if let Some(guard) = attempt() {
            return Some(guard);
        }
        std::hint::spin_loop();
    }
    attempt()
}

/// Releases `guard`, handing the records it took out of the shard to
/// `dir`'s background thread to drop: dropping the last record of a file
/// deletes the file, which an async executor's thread must not wait for.
fn hand_over_records<K>(mut guard: WriteGuard<'_, K>, dir: Option<&SpillDir>) {
    let Some(dir) = dir else { return };
    let records = guard.take_records();
    drop(guard);
    dir.drop_in_background(records);
}

/// Whether the entry in `slot` holds a spill record (dropping it may punch
/// a hole or delete a file). A value being spilled holds none yet: its
/// record, if it ends up unwanted, is dropped by the spilling thread.
fn holds_record<K>(state: &State<K>, slot: SlotId) -> bool {
    matches!(
        state.entry(slot).payload,
        Payload::Disk(_) | Payload::Resident { copy: Some(_), .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the lock taken, every attempt reports it and changes nothing:
    /// no count, no entry, the value handed back.
    #[test]
    fn a_taken_lock_is_reported_not_waited_for() {
        let shard: Shard<u32> = Shard::new(100, 0, ahash::RandomState::new(), false);
        let value = Bytes::from_static(b"v");
        assert!(shard
            .insert_without_io(1, 1, value.clone(), None, None)
            .is_ok());
        let held = shard.state.write();
        assert!(matches!(shard.get_resident(&1, 1), Probe::Busy));
        let given_back = shard.insert_without_io(2, 2, value.clone(), None, None);
        assert!(matches!(given_back, Err((2, v)) if v == value));
        assert_eq!(shard.remove_without_io(&1, 1, None), None);
        drop(held);
        assert!(matches!(shard.get_resident(&1, 1), Probe::Resident(v) if v == value));
        assert!(matches!(shard.get_resident(&2, 2), Probe::Absent));
        assert_eq!(shard.remove_without_io(&1, 1, None), Some(true));
        let mut stats = crate::Stats::default();
        shard.add_stats(&mut stats);
        assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 0));
    }
}
