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
//! counting does not contend either. A stripe's counter has one writer, the
//! live thread whose number (see [`thread_number`]) is the stripe's index,
//! so a hit costs a plain load and store, not a locked add; threads without
//! a stripe of their own (more threads than stripes, or a thread in its
//! teardown) count on a shared counter with an atomic add. A single thread
//! always uses the same stripe, so its accesses replay in order and the LRU
//! order it sees is exact. When a stripe is full and the write lock is busy,
//! the access is dropped: under contention recency is approximate.

use std::sync::{Mutex, OnceLock};

use crate::sync::atomic::{AtomicU64, Ordering};

use crossbeam::queue::ArrayQueue;
use crossbeam::utils::CachePadded;

use crate::lru::SlotId;

/// Accesses one stripe holds before a writer must replay them.
const STRIPE_CAPACITY: usize = 64;

/// Most stripes per shard: enough to spread the threads of a big machine.
const MAX_STRIPES: usize = 16;

struct Stripe {
    queue: ArrayQueue<SlotId>,
    hits: AtomicU64,
}

/// Striped, lossy queues of recent memory hits of one shard.
pub(crate) struct AccessLog {
    stripes: Box<[CachePadded<Stripe>]>,
    /// Hits of threads that own no stripe (atomic adds).
    shared_hits: CachePadded<AtomicU64>,
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
        AccessLog {
            stripes,
            shared_hits: CachePadded::new(AtomicU64::new(0)),
        }
    }

    /// Counts a hit on `slot` and queues it for replay. Returns `false` when
    /// the calling thread's stripe is full: the caller should replay the log
    /// if it can take the write lock without waiting, or else let it go.
    pub(crate) fn record(&self, slot: SlotId) -> bool {
        let number = thread_number();
        self.count(number.unwrap_or(NO_NUMBER));
        // Queues take any number of producers: threads beyond the stripes
        // share them.
        let stripe = &self.stripes[number.unwrap_or(0) & (self.stripes.len() - 1)];
        stripe.queue.push(slot).is_ok()
    }

    /// Counts a hit without queueing it (approximate recency), on the
    /// calling thread's own stripe, so threads do not contend.
    #[inline]
    pub(crate) fn count_hit(&self) {
        self.count(HELD.get());
    }

    /// Counts a hit of the thread numbered `number`: [`NO_NUMBER`] for one
    /// that holds none. Only a bounds check stands before the count: the
    /// number read as an index (with the number plus one in `HELD`, and a
    /// test for none, a hit ran 2 instructions more; `benches/instructions.sh
    /// hot-get spillstore`).
    #[inline]
    fn count(&self, number: usize) {
        match self.stripes.get(number) {
            // Under shuttle every modelled thread shares one OS thread and
            // so one number: it must add atomically.
            Some(stripe) if !cfg!(shuttle) => {
                // Only the live thread holding this number writes this
                // counter (numbers are unique among live threads, and one
                // passes to the next holder under a mutex, which orders the
                // writes of both): a load and a store lose no hit, and
                // cost no locked instruction.
                let hits = stripe.hits.load(Ordering::Relaxed);
                stripe.hits.store(hits + 1, Ordering::Relaxed);
            }
            _ => self.count_off_stripe(),
        }
    }

    /// A hit of a thread without a stripe of its own. On the thread's first
    /// hit it takes its number and counts on its stripe; beyond the
    /// stripes, during its teardown and under shuttle it adds to the
    /// shared counter.
    #[cold]
    fn count_off_stripe(&self) {
        if HELD.get() == NO_NUMBER && take_thread_number().is_some() {
            return self.count(HELD.get());
        }
        self.shared_hits.fetch_add(1, Ordering::Relaxed);
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
        let striped: u64 = self
            .stripes
            .iter()
            .map(|s| s.hits.load(Ordering::Relaxed))
            .sum();
        striped + self.shared_hits.load(Ordering::Relaxed)
    }
}

/// Stripes per shard: twice the number of cores, rounded up to a power of
/// two, so that a few more threads than cores still count on lines of their
/// own.
fn stripe_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (2 * cores).next_power_of_two().min(MAX_STRIPES)
    })
}

/// A small number fixed for the calling thread while it lives: the lowest
/// number no live thread holds, given back when the thread exits. So threads
/// that run at the same time get distinct stripes (as long as there are
/// fewer of them than stripes), however many threads came and went before;
/// numbering threads in turn for the process's life would let two live
/// threads share a stripe's cache line. `None` during the thread's
/// teardown, once its number is given back.
#[inline]
fn thread_number() -> Option<usize> {
    match HELD.get() {
        NO_NUMBER => take_thread_number(),
        held => Some(held),
    }
}

/// What [`HELD`] holds while the thread holds no number: no stripe's index.
const NO_NUMBER: usize = usize::MAX;

thread_local! {
    /// The calling thread's number while it holds one, else [`NO_NUMBER`]:
    /// what a hit reads. A constant-initialised cell without a destructor,
    /// so reading it costs no check of a lazy initialisation's state, and
    /// it stays readable during the thread's teardown (the number's
    /// destructor clears it).
    static HELD: std::cell::Cell<usize> = const { std::cell::Cell::new(NO_NUMBER) };
}

/// The slow half of [`thread_number`]: takes the thread's number on its
/// first call (and notes it in [`HELD`]); `None` once the number was given
/// back.
#[cold]
fn take_thread_number() -> Option<usize> {
    /// Numbers given back by exited threads. A std lock: this runs once per
    /// thread, and the model checker need not see it.
    static FREE: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    static TAKEN: Mutex<usize> = Mutex::new(0);

    struct Number(usize);
    impl Drop for Number {
        fn drop(&mut self) {
            // Forgotten before it is given back: from here on this thread
            // counts on the shared counter, never on a stripe another
            // thread may take.
            HELD.set(NO_NUMBER);
            FREE.lock().unwrap_or_else(|e| e.into_inner()).push(self.0);
        }
    }
    fn take() -> Number {
        let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
        let lowest = free.iter().enumerate().min_by_key(|&(_, n)| *n);
        if let Some((i, _)) = lowest {
            return Number(free.swap_remove(i));
        }
        let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        *taken += 1;
        Number(*taken - 1)
    }
    thread_local! {
        static NUMBER: Number = take();
    }
    let number = NUMBER.try_with(|n| n.0).ok()?;
    HELD.set(number);
    Some(number)
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

    #[test]
    fn hits_stay_exact_with_more_threads_than_stripes_and_numbers_reused() {
        const HITS: usize = if cfg!(miri) { 10 } else { 200_000 };
        let log = AccessLog::new();
        let threads = 2 * stripe_count() + 1;
        // Two waves: the second wave's threads take the numbers the first
        // wave gave back, and continue those stripes' counters.
        let start = std::sync::Barrier::new(threads);
        for _wave in 0..2 {
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(|| {
                        start.wait(); // all at once, to race if they can
                        for i in 0..HITS {
                            if i % 100 == 0 {
                                let _queued = log.record(0); // counted even if full
                            } else {
                                log.count_hit();
                            }
                        }
                    });
                }
            });
            log.discard();
        }
        assert_eq!(log.hits(), 2 * (threads * HITS) as u64);
    }

    #[test]
    fn threads_alive_together_get_distinct_stripes() {
        let barrier = std::sync::Barrier::new(4);
        let numbers: Vec<usize> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let n = thread_number().unwrap();
                        barrier.wait(); // all four hold their numbers at once
                        n
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut distinct = numbers.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "{numbers:?}");
    }
}
