//! A background thread that runs a job each time it is woken, and, for as
//! long as the job asks, also after a timeout: the store's compactor and its
//! spiller are two of them.
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
use std::time::Duration;

use crossbeam::channel::{self, RecvTimeoutError, Sender};

/// A handle that wakes a [`Worker`]; cheap to clone.
#[derive(Clone)]
pub(crate) struct Waker(Sender<()>);

impl Waker {
    /// A waker with no thread: the receiver shows its wake-ups.
    #[cfg(test)]
    pub(crate) fn detached() -> (Self, channel::Receiver<()>) {
        let (wake, woken) = channel::bounded(1);
        (Waker(wake), woken)
    }

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
    /// Starts a thread named `name` that runs `job` once per wake-up. The
    /// job says when to run again without one: `Some(timeout)` after at
    /// most `timeout`, `None` only when woken.
    pub(crate) fn spawn(
        name: &str,
        mut job: impl FnMut() -> Option<Duration> + Send + 'static,
    ) -> std::io::Result<Self> {
        let (wake, woken) = channel::bounded::<()>(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut timeout = None;
                loop {
                    let go = match timeout {
                        None => woken.recv().is_ok(),
                        Some(timeout) => !matches!(
                            woken.recv_timeout(timeout),
                            Err(RecvTimeoutError::Disconnected)
                        ),
                    };
                    if !go || stopped.load(Ordering::Acquire) {
                        break;
                    }
                    timeout = job();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    /// Waits up to a minute for `runs` to reach `n` (a generous bound for a
    /// loaded machine: this checks what happens, not how fast).
    fn wait_for(runs: &AtomicUsize, n: usize) {
        let start = Instant::now();
        while runs.load(Ordering::SeqCst) < n {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "stuck at {runs:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_job_runs_again_without_a_wake_up_only_while_it_asks() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        let worker = Worker::spawn("test-ticker", move || {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            (n < 3).then_some(Duration::from_millis(1))
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(runs.load(Ordering::SeqCst), 0, "never woken yet");
        worker.wake();
        wait_for(&runs, 3);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(runs.load(Ordering::SeqCst), 3, "stopped asking");
        worker.wake();
        wait_for(&runs, 4);
        drop(worker); // joins
    }

    #[test]
    fn dropping_stops_a_ticking_job() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        let worker = Worker::spawn("test-ticker", move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Some(Duration::from_millis(1))
        })
        .unwrap();
        worker.wake();
        wait_for(&runs, 5);
        drop(worker);
        let after = runs.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(runs.load(Ordering::SeqCst), after, "joined: no more runs");
    }
}
