//! Counting memory hits, and recording them for exact LRU, without taking a
//! shard's write lock.
//!
//! With approximate recency (the default) a hit is only counted here, on the
//! calling thread's own stripe. With `exact_lru`, it is also recorded: a
//! `get` served from memory holds only the shard's read lock, so it cannot
//! move its entry in the LRU list. It appends the entry's slot to a small
//! lock-free queue instead; the next writer of the shard replays the queues
//! into the list before it makes any eviction decision (Caffeine's read
//! buffer, in short).
//!
//! The queues are striped by thread, so threads reading the same hot shard
//! do not contend on one queue's tail; each stripe also counts its hits, so
//! counting does not contend either. A single thread always uses the same
//! stripe, so its accesses replay in order and the LRU order it sees is
//! exact. When a stripe is full and the write lock is busy, the access is
//! dropped: under contention recency is approximate.

// The thread-to-stripe counter is a `static`, which shuttle's atomics cannot
// be; it only spreads threads over stripes, so std's is fine under shuttle.
use std::sync::atomic::AtomicUsize;

use crate::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crossbeam::queue::ArrayQueue;
use crossbeam::utils::CachePadded;

use crate::lru::SlotId;

/// Accesses one stripe holds before a writer must replay them.
const STRIPE_CAPACITY: usize = 64;

/// Most stripes per shard: enough to spread the threads of a big machine.
const MAX_STRIPES: usize = 8;

struct Stripe {
    queue: ArrayQueue<SlotId>,
    hits: AtomicU64,
}

/// Striped, lossy queues of recent memory hits of one shard.
pub(crate) struct AccessLog {
    stripes: Box<[CachePadded<Stripe>]>,
}

impl AccessLog {
    pub(crate) fn new() -> Self {
        let stripes = (0..stripe_count())
            .map(|_| {
                CachePadded::new(Stripe {
                    queue: ArrayQueue::new(STRIPE_CAPACITY),
                    hits: AtomicU64::new(0),
                })
            })
            .collect();
        AccessLog { stripes }
    }

    /// Counts a hit on `slot` and queues it for replay. Returns `false` when
    /// the calling thread's stripe is full: the caller should replay the log
    /// if it can take the write lock without waiting, or else let it go.
    pub(crate) fn record(&self, slot: SlotId) -> bool {
        let stripe = &self.stripes[thread_stripe() & (self.stripes.len() - 1)];
        stripe.hits.fetch_add(1, Ordering::Relaxed);
        stripe.queue.push(slot).is_ok()
    }

    /// Counts a hit without queueing it (approximate recency): a relaxed
    /// add on the calling thread's own stripe, so threads do not contend.
    pub(crate) fn count_hit(&self) {
        let stripe = &self.stripes[thread_stripe() & (self.stripes.len() - 1)];
        stripe.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Hands every queued slot to `apply`, stripe by stripe, each in the
    /// order it was recorded.
    pub(crate) fn replay(&self, mut apply: impl FnMut(SlotId)) {
        for stripe in self.stripes.iter() {
            while let Some(slot) = stripe.queue.pop() {
                apply(slot);
            }
        }
    }

    /// Forgets every queued access (their slots are about to be freed).
    pub(crate) fn discard(&self) {
        self.replay(|_| {});
    }

    /// Hits recorded so far.
    pub(crate) fn hits(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.hits.load(Ordering::Relaxed))
            .sum()
    }
}

/// Stripes per shard: the number of cores, rounded up to a power of two.
fn stripe_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .next_power_of_two()
            .min(MAX_STRIPES)
    })
}

/// A number fixed for the calling thread: threads take turns, so the first
/// few threads get distinct stripes.
fn thread_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    STRIPE.with(|s| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_one_threads_accesses_in_order_and_counts_hits() {
        let log = AccessLog::new();
        for slot in 0..10 {
            assert!(log.record(slot));
        }
        let mut seen = Vec::new();
        log.replay(|s| seen.push(s));
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(log.hits(), 10);
    }

    #[test]
    fn a_full_stripe_refuses_but_still_counts() {
        let log = AccessLog::new();
        for slot in 0..STRIPE_CAPACITY as SlotId {
            assert!(log.record(slot));
        }
        assert!(!log.record(99));
        assert_eq!(log.hits(), STRIPE_CAPACITY as u64 + 1);
        log.discard();
        assert!(log.record(1));
    }
}
