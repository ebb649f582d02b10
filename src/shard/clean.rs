//! Cleaning ahead: the spiller's work in one shard.
//!
//! The spiller gives the resident values nearest the LRU tail a disk copy
//! before an insert needs their room (the `clean` transition), so that the
//! insert evicts them without a write. It keeps the shard's *clean window*,
//! the last `window` bytes of the LRU list, written: the values there that
//! have no copy yet are cloned under the read lock, written with no lock
//! held, and given their copies under the write lock, if they are still
//! resident without one. Nothing moves in the list and nothing changes
//! state, so what is in memory and in what order is the same as without it.
//!
//! With CLOCK, values marked by a hit are skipped (and not counted in the
//! window): the hand will give them a second chance rather than evict them.
//!
//! **Walking without rewalking.** A walk from the tail over the whole window
//! each time would cost the spiller O(window entries) per eviction. It keeps
//! instead a [`Frontier`] per shard: the last entry it reached, and how many
//! window bytes lay behind it. The shard's running total of evicted bytes
//! says how far the tail has moved towards the frontier since; the walk
//! resumes there and covers only the difference. Removes and replaces in
//! the window, and hits that move entries, make the count a guess; the
//! first eviction that has to write (a sign the guess was wrong), and a
//! frontier entry that was replaced, removed, evicted or moved to the head
//! (the eviction hand counts the moves of the one slot the shard publishes
//! as the frontier), send the next walk back to the tail. Each read-lock hold visits at most [`STEPS_PER_LOCK`]
//! entries, so writers never wait long behind the walk.

use std::hash::Hash;

use bytes::Bytes;

use super::state::{Evictions, Payload, State, Victim};
use super::Shard;
use crate::background::Waker;
use crate::error::Error;
use crate::lru::SlotId;
use crate::spill::SpillDir;
use crate::sync::atomic::Ordering;

/// Entries visited per hold of the read lock.
const STEPS_PER_LOCK: usize = 64;

/// Value bytes written per batch (one write call, then one write-lock
/// hold to hand out the copies).
const BATCH_BYTES: u64 = 1 << 20;

/// Where the spiller's walk of one shard stands between runs.
#[derive(Debug, Default)]
pub(crate) struct Frontier {
    /// The last entry visited, by slot and value identity (the address and
    /// length of its bytes; no clone is kept, so a new value in the same
    /// slot at the same address passes for it, which only misplaces the
    /// walk); `None` to start at the tail.
    at: Option<(SlotId, usize, usize)>,
    /// Window bytes from the tail up to and including `at`, as counted when
    /// it was visited, less what has been evicted since.
    behind: u64,
    /// The shard's eviction totals when `behind` was last brought up to date.
    seen: Evictions,
}

impl Frontier {
    /// Forgets the walk: the next one starts at the tail.
    pub(crate) fn restart(&mut self) {
        self.at = None;
        self.behind = 0;
    }

    /// After a walk that found the window clean up to the frontier: the
    /// shard's total of evicted bytes at which half of `window` will have
    /// been evicted, when the next run is due.
    fn horizon(&self, window: u64) -> u64 {
        self.seen.bytes + self.behind.saturating_sub(window / 2)
    }

    /// Brings the count up to date with the evictions since the last walk.
    fn catch_up(&mut self, now: Evictions) {
        if now.writes != self.seen.writes || now.frontier_moves != self.seen.frontier_moves {
            // An eviction had to write (the window was not as clean as
            // counted), or the frontier entry went to the head (the walk
            // would go on from there): recount from the tail.
            self.restart();
        } else {
            self.behind = self.behind.saturating_sub(now.bytes - self.seen.bytes);
        }
        self.seen = now;
    }

    /// Where the walk goes on: `Some(next)` (`None` inside meaning past the
    /// head), or `None` if the frontier entry moved or went.
    fn resume<K>(&self, state: &State<K>) -> Option<Option<SlotId>> {
        let Some((slot, addr, len)) = self.at else {
            return Some(state.slab.back());
        };
        let entry = state.slab.get(slot)?;
        let Payload::Resident { value, .. } = &entry.payload else {
            return None;
        };
        let same = value.as_ptr() as usize == addr && value.len() == len;
        (same && state.slab.is_linked(slot)).then(|| state.slab.prev_of(slot))
    }
}

impl<K> Shard<K> {
    /// The slot where the spiller's walk last stopped, or `SlotId::MAX`
    /// when there is none: the eviction hand counts its moves to the head
    /// (see [`Evictions::frontier_moves`]).
    pub(super) fn frontier_slot(&self) -> SlotId {
        SlotId::try_from(self.frontier_slot.load(Ordering::Relaxed)).unwrap_or(SlotId::MAX)
    }
}

impl<K: Hash + Eq> Shard<K> {
    /// Whether the spiller was asked to clean this shard since it last
    /// looked; clears the request.
    pub(crate) fn take_clean_request(&self) -> bool {
        self.clean_requested.swap(false, Ordering::AcqRel)
    }

    /// Asks the spiller to clean this shard, if cleaning is on,
    /// `memory_bytes` (what the shard will hold) is within its window of the
    /// budget, it will hold `dirty_entries` values without a disk copy, not
    /// none, and the shard's evictions (`evicted_bytes`, its running total)
    /// have taken half of the window the spiller's last run left clean.
    /// Says whether the spiller needs waking (it was not asked already).
    ///
    /// Each condition spares a wake-up that would find nothing to do, and a
    /// wake-up costs the caller a futex call and an interrupt to the
    /// spiller's core: 12% of a worker's time in spillbench when the
    /// spiller was asked after every run (it then cleaned a value or none
    /// and slept again). When every resident value has a copy, as after
    /// reloads only, there is nothing to clean; while the window is more
    /// than half clean, the spiller is better left to do more at once.
    pub(super) fn request_cleaning(
        &self,
        memory_bytes: u64,
        dirty_entries: usize,
        evicted_bytes: u64,
    ) -> bool {
        self.cleaning_due(memory_bytes, dirty_entries, evicted_bytes)
            && !self.clean_requested.load(Ordering::Relaxed)
            && !self.clean_requested.swap(true, Ordering::AcqRel)
    }

    /// [`request_cleaning`](Self::request_cleaning) for a transition about
    /// to add a value of `len` bytes to `state` (`added_dirty`: 1 if it has
    /// no disk copy, else 0), waking `spiller` if asked.
    pub(super) fn ask_spiller(
        &self,
        state: &State<K>,
        len: u64,
        added_dirty: usize,
        spiller: Option<&Waker>,
    ) {
        let memory = state.counts.memory_bytes.saturating_add(len);
        let dirty = state.counts.dirty_entries + added_dirty;
        self.ask_spiller_counts(memory, dirty, state.evictions.bytes, spiller);
    }

    /// [`ask_spiller`](Self::ask_spiller) given the shard's counts with the
    /// value added: its resident bytes, its entries without a copy, and
    /// its evicted bytes.
    #[inline]
    pub(super) fn ask_spiller_counts(
        &self,
        memory_bytes: u64,
        dirty_entries: usize,
        evicted_bytes: u64,
        spiller: Option<&Waker>,
    ) {
        if self.request_cleaning(memory_bytes, dirty_entries, evicted_bytes) {
            if let Some(spiller) = spiller {
                spiller.wake();
            }
        }
    }

    /// The conditions of [`request_cleaning`](Self::request_cleaning),
    /// short of the request itself.
    fn cleaning_due(&self, memory_bytes: u64, dirty_entries: usize, evicted_bytes: u64) -> bool {
        self.window > 0
            && dirty_entries > 0
            && memory_bytes.saturating_add(self.window) > self.budget
            && evicted_bytes >= self.clean_horizon.load(Ordering::Relaxed)
    }

    /// Whether a run of the spiller, woken for another shard, should clean
    /// this one too: it would ask within the next quarter of its window's
    /// evictions. Serving those along spares them a wake-up of their own.
    pub(crate) fn cleaning_due_soon(&self) -> bool {
        let state = self.state.read();
        let soon = state.evictions.bytes.saturating_add(self.window / 4);
        self.cleaning_due(state.counts.memory_bytes, state.counts.dirty_entries, soon)
    }

    /// Writes copies of the values in the clean window that lack one. A
    /// write error ends the run and is returned (the values stay without
    /// copies; the insert that evicts them will write them itself); so is
    /// `DiskLimit` when the write would leave less than `headroom` of the
    /// disk budget.
    pub(crate) fn clean(
        &self,
        frontier: &mut Frontier,
        dir: &SpillDir,
        headroom: u64,
    ) -> Result<(), Error> {
        while self.clean_batch(frontier, dir, headroom)? {}
        Ok(())
    }

    /// One batch of [`clean`](Self::clean): up to [`BATCH_BYTES`] of values
    /// written with one write call. Says whether the window may hold more.
    pub(crate) fn clean_batch(
        &self,
        frontier: &mut Frontier,
        dir: &SpillDir,
        headroom: u64,
    ) -> Result<bool, Error> {
        let batch = self.dirty_in_window(frontier);
        if batch.is_empty() {
            let horizon = frontier.horizon(self.window);
            self.clean_horizon.store(horizon, Ordering::Relaxed);
            return Ok(false);
        }
        let values: Vec<Bytes> = batch.iter().map(|v| v.value.clone()).collect();
        let records = dir.write_ahead(&values, headroom).inspect_err(|_| {
            // Those values were counted as clean: count again next time.
            frontier.restart();
        })?;
        drop(values);
        let mut guard = self.write();
        for (victim, record) in batch.into_iter().zip(records) {
            guard.clean(victim, record);
        }
        Ok(true)
    }

    /// Walks the window on from the frontier, a few entries per read-lock
    /// hold, and returns up to a batch of values without a disk copy.
    fn dirty_in_window(&self, frontier: &mut Frontier) -> Vec<Victim> {
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        loop {
            let state = self.state.read();
            frontier.catch_up(state.evictions);
            if frontier.behind >= self.window {
                return batch;
            }
            let mut cursor = match frontier.resume(&state) {
                Some(cursor) => cursor,
                None => {
                    frontier.restart();
                    state.slab.back()
                }
            };
            for _ in 0..STEPS_PER_LOCK {
                let Some(slot) = cursor else {
                    return batch; // past the head: all of the list is behind
                };
                cursor = state.slab.prev_of(slot);
                let Payload::Resident { value, copy } = &state.entry(slot).payload else {
                    unreachable!("linked entries are resident")
                };
                frontier.at = Some((slot, value.as_ptr() as usize, value.len()));
                self.frontier_slot.store(u64::from(slot), Ordering::Relaxed);
                if !self.exact_lru && state.slab.is_marked(slot) {
                    continue; // a second chance is coming, not an eviction
                }
                frontier.behind += value.len() as u64;
                if copy.is_none() {
                    batch_bytes += value.len() as u64;
                    batch.push(Victim {
                        slot,
                        value: value.clone(),
                    });
                }
                if frontier.behind >= self.window || batch_bytes >= BATCH_BYTES {
                    return batch;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spiller_is_asked_again_when_half_the_clean_window_is_evicted() {
        let shard: Shard<u64> = Shard::new(1000, 400, ahash::RandomState::new(), false);
        assert!(!shard.request_cleaning(500, 3, 0), "far from the budget");
        assert!(!shard.request_cleaning(900, 0, 0), "nothing to clean");
        assert!(shard.request_cleaning(900, 3, 0));
        assert!(!shard.request_cleaning(900, 3, 0), "asked already");
        assert!(shard.take_clean_request());
        // A walk left the whole window clean behind its frontier when the
        // shard had evicted 1000 bytes.
        let frontier = Frontier {
            at: None,
            behind: 400,
            seen: Evictions {
                bytes: 1000,
                ..Evictions::default()
            },
        };
        shard
            .clean_horizon
            .store(frontier.horizon(400), Ordering::Relaxed);
        assert!(
            !shard.request_cleaning(900, 3, 1199),
            "more than half clean"
        );
        assert!(shard.request_cleaning(900, 3, 1200));
        // A walk that reached the head with less than half a window behind
        // it asks for the next run at once.
        let short = Frontier {
            behind: 100,
            ..frontier
        };
        assert_eq!(short.horizon(400), 1000);
    }
}
