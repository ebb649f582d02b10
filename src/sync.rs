//! The locks and atomics the store uses, swappable for a model checker.
//!
//! Normally these are parking_lot's locks and std's atomics. Built with
//! `RUSTFLAGS="--cfg shuttle"`, they are shuttle's, so `tests/shuttle.rs` can
//! explore the interleavings of inserts, reloads, removals, spills and
//! compaction (see that file), including every atomic counter the shards and
//! spill files share. Code that must not run on threads shuttle does not
//! schedule (rayon's pool) checks `cfg(shuttle)` where it is called.

#[cfg(not(shuttle))]
pub(crate) use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Atomics shared between threads: std's, or shuttle's under `cfg(shuttle)`.
pub(crate) mod atomic {
    #[cfg(shuttle)]
    pub(crate) use shuttle::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
    pub(crate) use std::sync::atomic::Ordering;
    #[cfg(not(shuttle))]
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
}

/// Gives the processor (or, under shuttle, the scheduler) to another thread.
#[cfg(not(shuttle))]
pub(crate) fn yield_now() {
    std::thread::yield_now();
}

#[cfg(shuttle)]
pub(crate) use self::model::{yield_now, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[cfg(shuttle)]
mod model {
    //! shuttle's locks behind parking_lot's method names. Poisoning cannot
    //! happen in these tests (a panic fails the whole execution), so the
    //! results are unwrapped.

    pub(crate) use shuttle::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};
    pub(crate) use shuttle::thread::yield_now;

    #[derive(Default)]
    pub(crate) struct RwLock<T>(shuttle::sync::RwLock<T>);

    impl<T> RwLock<T> {
        pub(crate) fn new(value: T) -> Self {
            RwLock(shuttle::sync::RwLock::new(value))
        }
        pub(crate) fn read(&self) -> RwLockReadGuard<'_, T> {
            self.0.read().unwrap()
        }
        pub(crate) fn write(&self) -> RwLockWriteGuard<'_, T> {
            self.0.write().unwrap()
        }
        pub(crate) fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
            self.0.try_write().ok()
        }
        #[cfg(feature = "tokio")]
        pub(crate) fn try_read(&self) -> Option<RwLockReadGuard<'_, T>> {
            self.0.try_read().ok()
        }
    }

    #[derive(Default)]
    pub(crate) struct Mutex<T>(shuttle::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(shuttle::sync::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap()
        }
        pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock().ok()
        }
    }
}

/// Debug-build bookkeeping of the shard write locks this thread holds, so
/// that dropping a spill record (which may delete or punch a file) under a
/// shard lock fails loudly instead of silently stalling every other caller
/// of that shard. Release builds compile it away.
pub(crate) mod lock_tracking {
    #[cfg(debug_assertions)]
    thread_local! {
        static HELD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// This thread took a shard's write lock.
    pub(crate) fn taken() {
        #[cfg(debug_assertions)]
        HELD.with(|h| h.set(h.get() + 1));
    }

    /// This thread released a shard's write lock.
    pub(crate) fn released() {
        #[cfg(debug_assertions)]
        HELD.with(|h| h.set(h.get() - 1));
    }

    /// Panics (in debug builds) if this thread holds a shard's write lock.
    pub(crate) fn assert_none_held(what: &str) {
        #[cfg(debug_assertions)]
        HELD.with(|h| assert_eq!(h.get(), 0, "{what} while holding a shard lock"));
        #[cfg(not(debug_assertions))]
        let _ = what;
    }
}
