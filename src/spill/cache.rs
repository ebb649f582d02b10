//! The file cache: at most a fixed number of spill files open (descriptor
//! and mapping) at a time, whatever the number of files.
//!
//! Without it every spill file would keep its descriptor and mapping for the
//! store's whole life, and the process's descriptor limit (often 1024) or
//! the kernel's mapping limit (about 65,530) would cap how much a store
//! could spill. Files are opened on demand; when more than `capacity` are
//! open, a CLOCK sweep closes one not used since the hand last passed.
//! A closed file is reopened by its path and checked (not a symlink, the
//! same inode, our header) before any byte is read; a value a caller holds
//! keeps its own mapping (not a descriptor) alive meanwhile.

use std::collections::VecDeque;
use std::sync::Weak;

use crate::sync::atomic::{AtomicUsize, Ordering};
use crate::sync::Mutex;

use super::segment::Segment;

/// Open files a store keeps at most when the builder does not say: an
/// eighth of the descriptor limit, between 8 and 128.
pub(crate) fn default_capacity() -> usize {
    let limit = super::sys::open_file_limit().unwrap_or(u64::MAX);
    (limit / 8).clamp(8, 128) as usize
}

/// Spill files open now, and the order to close them in.
pub(super) struct FileCache {
    capacity: usize,
    /// Segments with an open handle.
    open: AtomicUsize,
    /// Those segments (and some already dropped), in CLOCK order.
    ring: Mutex<VecDeque<Weak<Segment>>>,
}

impl FileCache {
    pub(super) fn new(capacity: usize) -> Self {
        FileCache {
            capacity: capacity.max(1),
            open: AtomicUsize::new(0),
            ring: Mutex::new(VecDeque::new()),
        }
    }

    /// Spill files open now.
    pub(super) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Counts a segment that just got an open handle, and closes others
    /// while more than `capacity` are open.
    pub(super) fn admit(&self, segment: Weak<Segment>) {
        self.open.fetch_add(1, Ordering::AcqRel);
        // Dropped after the ring's lock: closing files and dropping the
        // last reference to a segment (which deletes its file) are I/O.
        let mut spared = Vec::new();
        let mut closing = Vec::new();
        {
            let mut ring = self.ring.lock();
            ring.push_back(segment);
            // Two turns of the hand at most: the first clears every bit.
            let mut steps = 2 * ring.len() + 1;
            while self.open.load(Ordering::Acquire) > self.capacity && steps > 0 {
                steps -= 1;
                let Some(weak) = ring.pop_front() else { break };
                // A dropped segment counted itself out when it went.
                let Some(segment) = weak.upgrade() else {
                    continue;
                };
                if segment.take_referenced() {
                    ring.push_back(weak);
                } else if let Some(closed) = segment.close() {
                    self.open.fetch_sub(1, Ordering::AcqRel);
                    closing.push(closed);
                }
                spared.push(segment);
            }
            if ring.len() > 2 * self.capacity + 64 {
                ring.retain(|w| w.strong_count() > 0);
            }
        }
        drop(closing);
        drop(spared);
    }

    /// Counts out a dropped segment that had an open handle.
    pub(super) fn closed(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}
