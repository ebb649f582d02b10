//! Compaction: moving the live records out of spill files that are mostly
//! dead space (the records of replaced and removed values), so that those
//! files can be deleted.
//!
//! A pass runs when the spill files occupy more than twice the live
//! records' bytes on disk, or their lengths add up to more than twice (four
//! times where holes are punched) ([`SpillDir::compaction_due`]), or when
//! the caller asks for one
//! (`SpillStore::compact`). It never runs on a caller's insert: inserts and
//! removes that find it due only wake the store's compactor, a background
//! [`Worker`](crate::background::Worker) thread (moka's housekeeper and
//! foyer's reclaimer do the same), so no caller's latency depends on whose
//! insert crossed the threshold.
//! Passes never overlap: each holds the store's pass lock from start to end.
//!
//! In each shard a pass drops the disk copies that resident values keep in
//! sparse segments (evicting those values later writes them anew), then
//! reads the records of on-disk values in sparse segments in batches of
//! 1 MiB (the compactor thread sleeps a little between two), writes them
//! to the active segment and installs the new records for the entries that
//! still hold the old ones. No shard lock is held during I/O; an entry
//! replaced or removed meanwhile keeps its new state, and the record
//! written for it is dropped. A record that fails to read stays where it
//! is (its entry stays corrupted); a write that fails (disk full, or the
//! disk budget) ends the pass, losing nothing, and no pass is due again
//! until space has been freed (a remove, a replace, a hole).

use crossbeam::utils::CachePadded;
use std::hash::Hash;
use std::time::Duration;

use crate::shard::Shard;
use crate::spill::{Record, SpillDir};

/// Value bytes read and written per batch: bounds the memory a pass holds,
/// and (with [`PAUSE`]) how long the compactor holds a core at a stretch.
const BATCH_BYTES: u64 = 1 << 20;

/// How long the compactor thread sleeps between two batches. A batch's
/// writes run in the kernel, which this kernel configuration
/// (`PREEMPT_NONE`) does not preempt, and the scheduler moved no waiting
/// thread onto the compactor's core while it ran: passes held a core for
/// up to 20 ms at a time, while the callers' threads queued on the other
/// one. Sleeping between batches lets the core's other work in (the idle
/// core pulls a waiting thread) and cuts a pass into slices of a batch.
/// Not for a pass a caller runs itself (`compact`, `quiesce`, or a store
/// without background threads): that caller waits for the whole pass.
const PAUSE: Duration = Duration::from_micros(300);

/// How a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// On the compactor thread: shard after shard, with a [`PAUSE`]
    /// between batches.
    Background,
    /// On the calling thread, shard after shard, without pauses.
    Inline,
    /// The shards on rayon's pool, for an explicit `compact()`.
    Parallel,
}

/// Runs one pass over `shards` if one is due, or always when `force`d. The
/// caller holds the store's pass lock.
pub(crate) fn run_pass<K>(
    shards: &[CachePadded<Shard<K>>],
    spill: &SpillDir,
    force: bool,
    mode: Mode,
) where
    K: Hash + Eq + Send + Sync,
{
    let Some(pass) = spill.start_compaction(force) else {
        return;
    };
    // Shuttle cannot schedule rayon's threads: model checks run sequentially.
    let parallel = mode == Mode::Parallel && !cfg!(shuttle);
    let pause = mode == Mode::Background;
    let results: Vec<(u64, bool)> = if parallel {
        use rayon::prelude::*;
        shards
            .par_iter()
            .map(|s| compact_shard(s, spill, false))
            .collect()
    } else {
        shards
            .iter()
            .map(|s| compact_shard(s, spill, pause))
            .collect()
    };
    pass.moved(results.iter().map(|&(moved, _)| moved).sum());
    pass.ended(results.iter().any(|&(_, stalled)| stalled));
}

/// Compacts one shard, with a [`PAUSE`] before each batch if `pause`;
/// returns the value bytes moved, and whether a write failed (the pass then
/// stalls for lack of space).
fn compact_shard<K: Hash + Eq>(shard: &Shard<K>, spill: &SpillDir, pause: bool) -> (u64, bool) {
    let found = shard.sparse_records();
    if found.copies {
        shard.drop_copies(Record::in_sparse_segment);
    }
    let mut to_move = found.to_move;
    let mut moved = 0;
    while !to_move.is_empty() {
        if pause {
            std::thread::sleep(PAUSE);
        }
        let mut batch_bytes = 0;
        let mut read = Vec::new();
        let mut values = Vec::new();
        while batch_bytes < BATCH_BYTES {
            let Some(relocation) = to_move.pop() else {
                break;
            };
            batch_bytes += relocation.reader.value_len();
            if let Ok(bytes) = relocation.reader.read_mapped() {
                values.push(bytes);
                read.push(relocation);
            }
        }
        let Ok(records) = spill.write(&values) else {
            return (moved, true);
        };
        drop(values);
        moved += shard.install_moved(read.into_iter().zip(records));
    }
    (moved, false)
}
