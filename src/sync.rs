//! The locks and atomics the store uses, swappable for a model checker.
//!
//! Normally these are parking_lot's locks and std's atomics. Built with
//! `RUSTFLAGS="--cfg shuttle"`, they are shuttle's, so `tests/shuttle.rs` can
//! explore the interleavings of inserts, reloads, removals, spills and
//! compaction (see that file), including every atomic counter the shards and
//! spill files share. Code that must not run on threads shuttle does not
//! schedule (rayon's pool) checks `cfg(shuttle)` where it is called.

#[cfg(not(shuttle))]
pub(crate) use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

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
pub(crate) use self::model::{yield_now, Mutex, RwLock, RwLockWriteGuard};

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
    }
}
