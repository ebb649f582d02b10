//! A background thread that runs a job each time it is woken: the store's
//! compactor and its spiller are two of them.
//!
//! Waking never blocks and costs one `try_send` on a one-slot channel: a
//! wake-up that comes while one is pending folds into it, and one that comes
//! while the job runs makes it run once more. Dropping the [`Worker`] stops
//! and joins the thread after the job it may be running, even while
//! [`Waker`]s handed out earlier are still alive (the spill directory keeps
//! one).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam::channel::{self, Sender};

/// A handle that wakes a [`Worker`]; cheap to clone.
#[derive(Clone)]
pub(crate) struct Waker(Sender<()>);

impl Waker {
    /// Asks for one more run of the job; never blocks.
    pub(crate) fn wake(&self) {
        // Full means a wake-up is pending already: nothing to add. A closed
        // channel means the worker stopped: nothing to do either.
        let _ = self.0.try_send(());
    }
}

/// The thread, and what stops it.
pub(crate) struct Worker {
    waker: Waker,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts a thread named `name` that runs `job` once per wake-up.
    pub(crate) fn spawn(
        name: &str,
        mut job: impl FnMut() + Send + 'static,
    ) -> std::io::Result<Self> {
        let (wake, woken) = channel::bounded::<()>(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while woken.recv().is_ok() && !stopped.load(Ordering::Acquire) {
                    job();
                }
            })?;
        Ok(Worker {
            waker: Waker(wake),
            stop,
            thread: Some(thread),
        })
    }

    /// Asks for one more run of the job; never blocks.
    pub(crate) fn wake(&self) {
        self.waker.wake();
    }

    /// A handle that wakes this worker from elsewhere.
    pub(crate) fn waker(&self) -> &Waker {
        &self.waker
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // If the slot is full, the pending wake-up ends the loop just as well.
        self.waker.wake();
        if let Some(thread) = self.thread.take() {
            // A panic in the job was printed by the panic hook already.
            let _ = thread.join();
        }
    }
}
