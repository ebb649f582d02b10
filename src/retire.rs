//! Values the store lets go of, dropped by its spiller thread rather than
//! by the caller.
//!
//! A replace, a remove or `clear` takes values out of a shard, and dropping
//! the last reference to a large one frees its memory. With glibc's
//! allocator such a free now and then consolidates and trims the heap
//! (`madvise`, `mprotect`: tens of microseconds, on the caller's thread after
//! the lock is released): in spillbench's mixed phase, about half of the
//! inserts slower than 5 µs were such frees. A store with a spiller thread
//! hands those values over instead: the caller pushes them on a list (one
//! uncontended lock), and the spiller drops them on its next run, running
//! every [`TICK`](crate::background::TICK) by itself while they keep coming
//! (see [`Ticking`]), so nobody waits for a wake-up.
//!
//! What waits is bounded: only values of at least [`MIN_LEN`] bytes that
//! nobody else holds, and at most [`Retired::new`]'s `cap` bytes of them
//! (the store gives an eighth of `max_size`); past that, the caller drops
//! values itself, as before. `Stats::retired_bytes` shows what waits.

use std::time::Duration;

use bytes::Bytes;

use crate::background::{Ticking, Waker};
use crate::sync::Mutex;

/// Values shorter than this are dropped by the caller: a small free is
/// cheap, and pushing it costs about as much.
pub(crate) const MIN_LEN: u64 = 4 << 10;

/// The share of `max_size` that values waiting to be dropped may take:
/// `max_size / CAP_DIVISOR`.
pub(crate) const CAP_DIVISOR: u64 = 8;

/// Values handed over to be dropped by the spiller.
pub(crate) struct Retired {
    waiting: Mutex<Waiting>,
    /// What the spiller drops, outside the lock: kept to reuse its buffer.
    dropping: Mutex<Vec<Bytes>>,
    cap: u64,
    ticking: Ticking,
    spiller: Waker,
}

#[derive(Default)]
struct Waiting {
    values: Vec<Bytes>,
    bytes: u64,
}

impl Retired {
    /// A list that takes up to `cap` bytes of values, for the thread that
    /// `spiller` wakes.
    pub(crate) fn new(cap: u64, spiller: Waker) -> Self {
        Retired {
            waiting: Mutex::new(Waiting::default()),
            dropping: Mutex::new(Vec::new()),
            cap,
            ticking: Ticking::default(),
            spiller,
        }
    }

    /// Takes `value` to be dropped by the spiller if that is worth it: it
    /// is at least [`MIN_LEN`] long, nobody else holds it, and it fits
    /// under the cap. Otherwise gives it back, for the caller to drop.
    pub(crate) fn hand_over(&self, value: Bytes) -> Option<Bytes> {
        let len = value.len() as u64;
        if len < MIN_LEN || !value.is_unique() {
            return Some(value);
        }
        let mut waiting = self.waiting.lock();
        if waiting.bytes + len > self.cap {
            return Some(value);
        }
        waiting.bytes += len;
        waiting.values.push(value);
        drop(waiting);
        self.ticking.came(&self.spiller);
        None
    }

    /// For the spiller: drops every value handed over so far, and says
    /// when to run again by itself (see [`Ticking::next_tick`]).
    pub(crate) fn drop_waiting(&self) -> Option<Duration> {
        let mut dropping = self.dropping.lock();
        {
            let mut waiting = self.waiting.lock();
            std::mem::swap(&mut waiting.values, &mut dropping);
            waiting.bytes = 0;
        }
        dropping.clear();
        drop(dropping);
        self.ticking.next_tick()
    }

    /// Bytes of the values waiting to be dropped.
    pub(crate) fn bytes(&self) -> u64 {
        self.waiting.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::background::TICK;

    fn unique(len: u64) -> Bytes {
        Bytes::from(vec![7u8; len as usize])
    }

    #[test]
    fn large_unique_values_wait_until_the_cap() {
        let (waker, woken) = Waker::detached();
        let retired = Retired::new(3 * MIN_LEN, waker);
        assert!(retired.hand_over(unique(MIN_LEN - 1)).is_some(), "small");
        let shared = unique(MIN_LEN);
        assert!(
            retired.hand_over(shared.clone()).is_some(),
            "held elsewhere"
        );
        assert!(retired.hand_over(Bytes::from_static(&[0; 5000])).is_some());
        assert_eq!(retired.bytes(), 0);
        assert!(woken.try_recv().is_err(), "nothing taken: nobody woken");
        drop(shared);

        assert!(retired.hand_over(unique(MIN_LEN)).is_none());
        assert!(
            woken.try_recv().is_ok(),
            "the first value wakes the spiller"
        );
        assert!(retired.hand_over(unique(2 * MIN_LEN)).is_none());
        assert_eq!(retired.bytes(), 3 * MIN_LEN);
        let over = retired.hand_over(unique(MIN_LEN));
        assert_eq!(over.map(|v| v.len() as u64), Some(MIN_LEN), "over the cap");

        assert_eq!(retired.drop_waiting(), Some(TICK), "values came: tick");
        assert_eq!(retired.bytes(), 0);
        while woken.try_recv().is_ok() {} // the wake-ups the spiller took
        assert!(retired.hand_over(unique(MIN_LEN)).is_none());
        assert!(woken.try_recv().is_err(), "ticking: not woken");
    }

    #[test]
    fn a_spiller_run_empties_the_list() {
        let (waker, _woken) = Waker::detached();
        let retired = Retired::new(1 << 20, waker);
        for _ in 0..3 {
            assert!(retired.hand_over(unique(MIN_LEN)).is_none());
        }
        assert_eq!(retired.waiting.lock().values.len(), 3);
        retired.drop_waiting();
        assert!(retired.waiting.lock().values.is_empty());
        assert!(retired.dropping.lock().is_empty());
        assert_eq!(retired.bytes(), 0);
    }
}
