//! Buffers of values that left a shard's memory, kept for its next reloads
//! from the disk.
//!
//! A reload reads a value into a new heap buffer, and in a spilling store
//! it also pushes another value of about the same size out of memory. With
//! a fresh buffer per reload, the allocator often hands out pages it has
//! just given back to the system (glibc trims the top of its heap, and a
//! thread's arena rarely gets back what other threads freed), and each
//! page of the buffer costs a minor fault and a page of zeroing: 16 faults
//! per 64 KiB value and about 100 per 1 MiB value, measured while reloads
//! read the disk. Handing the buffer of the value that just left to the
//! next reload of the same size touches memory that is already mapped.
//! Reloads from the page cache do not take kept buffers: copies into them
//! ran slower than into the allocator's (BENCHMARKS.md, "Buffers that stay
//! mapped"), so the first such reload frees the kept ones and nothing is
//! kept until a reload from the disk asks again.
//!
//! A shard keeps at most [`MOST_SPARES`] buffers of [`MIN_SPARE`] bytes or
//! more, together at most an eighth of its budget and at most
//! [`MOST_SPARE_BYTES`]: memory the process holds beyond `max_size`.

use bytes::Bytes;

use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::Mutex;

/// Values shorter than this are not kept: the allocator serves them from
/// its free lists without touching new pages.
pub(super) const MIN_SPARE: usize = 16 * 1024;

/// The most buffers one shard keeps.
pub(super) const MOST_SPARES: usize = 4;

/// The most bytes of buffers one shard keeps, whatever its budget.
pub(super) const MOST_SPARE_BYTES: usize = 8 << 20;

/// A shard's spare buffers: empty `Vec`s whose capacity is memory already
/// mapped.
pub(super) struct Spares {
    buffers: Mutex<Vec<Vec<u8>>>,
    /// The most bytes of capacity kept at once.
    limit: usize,
    /// Whether reloads take buffers now: set by the first that asks for
    /// one, cleared (and the buffers freed) by the first that does not.
    /// While clear, values leaving memory are not kept (one racing with the
    /// change may still be), so the shard holds next to nothing here.
    wanted: AtomicBool,
}

impl Spares {
    /// Spares for a shard of `budget` bytes.
    pub(super) fn new(budget: u64) -> Self {
        let eighth = usize::try_from(budget / 8).unwrap_or(usize::MAX);
        Spares {
            buffers: Mutex::new(Vec::new()),
            limit: eighth.min(MOST_SPARE_BYTES),
            wanted: AtomicBool::new(false),
        }
    }

    /// An empty buffer to read a value of `len` bytes into: a kept one with
    /// room for it and at most an eighth more (so a value never holds much
    /// more memory than it is counted for), else one with no capacity.
    /// From now on, buffers of values leaving memory are kept.
    pub(super) fn take(&self, len: usize) -> Vec<u8> {
        if len < MIN_SPARE || self.limit < len {
            return Vec::new();
        }
        // Only a change is written: the flag stays a read-mostly line.
        if !self.wanted.load(Ordering::Relaxed) {
            self.wanted.store(true, Ordering::Relaxed);
        }
        let fits = |b: &Vec<u8>| (len..=len + len / 8).contains(&b.capacity());
        let mut buffers = self.buffers.lock();
        // The most recently kept first: its lines are the likeliest cached.
        match buffers.iter().rposition(fits) {
            Some(i) => buffers.swap_remove(i),
            None => Vec::new(),
        }
    }

    /// Keeps the buffer of `value`, which is leaving memory, if nothing
    /// else refers to it and there is room; otherwise drops it. Call with
    /// no shard lock held: it may free memory. The checks that let most
    /// values go are inlined into the caller; the keeping is not.
    #[inline]
    pub(super) fn keep(&self, value: Bytes) {
        let size = value.len();
        if size >= MIN_SPARE && size <= self.limit && self.wanted.load(Ordering::Relaxed) {
            self.keep_unique(value);
        }
    }

    /// The rest of [`keep`](Self::keep), for a value reloads may want.
    #[inline(never)]
    fn keep_unique(&self, value: Bytes) {
        // Unique: no clone handed out lives on, and the bytes are a heap
        // buffer the value owns (not static, not a mapping).
        let Ok(mut unique) = value.try_into_mut() else {
            return;
        };
        // Emptied first, the conversion moves no bytes.
        unique.clear();
        let buffer = Vec::from(unique);
        let mut buffers = self.buffers.lock();
        let held: usize = buffers.iter().map(Vec::capacity).sum();
        if buffers.len() < MOST_SPARES && held + buffer.capacity() <= self.limit {
            buffers.push(buffer);
        }
        // Otherwise `buffer` is freed on return, with the lock released.
        drop(buffers);
    }

    /// For a reload that takes no buffer (the files are in the page cache):
    /// stops keeping buffers until one does, and frees those kept.
    pub(super) fn not_wanted(&self) {
        if self.wanted.load(Ordering::Relaxed) {
            self.wanted.store(false, Ordering::Relaxed);
            self.release();
        }
    }

    /// Frees every kept buffer (for `clear`).
    pub(super) fn release(&self) {
        let freed = std::mem::take(&mut *self.buffers.lock());
        drop(freed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEN: usize = 64 * 1024;

    /// Spares of a 1 MiB shard that reloads have asked for.
    fn wanted() -> Spares {
        let spares = Spares::new(1 << 20);
        assert_eq!(spares.take(LEN).capacity(), 0, "none kept yet");
        spares
    }

    #[test]
    fn a_unique_buffer_is_kept_and_handed_to_a_reload_of_its_size() {
        let spares = wanted();
        let value = Bytes::from(vec![7u8; LEN]);
        let at = value.as_ptr();
        spares.keep(value);
        assert_eq!(spares.take(LEN * 2).capacity(), 0, "too small");
        let buffer = spares.take(LEN - 1000);
        assert_eq!(buffer.as_ptr(), at, "the same memory, no copy");
        assert!(buffer.is_empty());
        assert_eq!(spares.take(LEN - 1000).capacity(), 0, "handed out once");
    }

    #[test]
    fn nothing_is_kept_until_a_reload_asks_nor_after_one_does_not() {
        let spares = Spares::new(1 << 20);
        spares.keep(Bytes::from(vec![1u8; LEN]));
        assert_eq!(spares.take(LEN).capacity(), 0, "not kept before");
        spares.keep(Bytes::from(vec![1u8; LEN]));
        spares.not_wanted();
        assert_eq!(spares.buffers.lock().len(), 0, "freed");
        spares.keep(Bytes::from(vec![1u8; LEN]));
        assert_eq!(spares.buffers.lock().len(), 0, "not kept after");
    }

    #[test]
    fn shared_small_static_and_oversized_values_are_not_kept() {
        let spares = wanted();
        let value = Bytes::from(vec![1u8; LEN]);
        let clone = value.clone();
        spares.keep(value);
        assert_eq!(spares.take(LEN).capacity(), 0, "a clone lives on");
        drop(clone);
        spares.keep(Bytes::from(vec![1u8; MIN_SPARE - 1]));
        assert_eq!(
            spares.take(MIN_SPARE - 1).capacity(),
            0,
            "too small to keep"
        );
        spares.keep(Bytes::from_static(&[0u8; MIN_SPARE]));
        assert_eq!(spares.take(MIN_SPARE).capacity(), 0, "static bytes");
        spares.keep(Bytes::from(vec![1u8; 256 * 1024]));
        assert_eq!(
            spares.take(256 * 1024).capacity(),
            0,
            "over an eighth of 1 MiB"
        );
    }

    #[test]
    fn at_most_four_buffers_and_an_eighth_of_the_budget_are_kept() {
        let spares = Spares::new(8 << 20);
        spares.take(LEN);
        for _ in 0..6 {
            spares.keep(Bytes::from(vec![0u8; LEN]));
        }
        let mut taken = Vec::new();
        loop {
            let b = spares.take(LEN);
            if b.capacity() == 0 {
                break;
            }
            taken.push(b);
        }
        assert_eq!(taken.len(), MOST_SPARES);
        for _ in 0..4 {
            spares.keep(Bytes::from(vec![0u8; 400 * 1024]));
        }
        let mut bytes = 0;
        while let Some(b) = Some(spares.take(400 * 1024)).filter(|b| b.capacity() > 0) {
            bytes += b.capacity();
        }
        assert_eq!(bytes, 2 * 400 * 1024, "1 MiB of 8 MiB holds two");
        spares.keep(Bytes::from(vec![0u8; LEN]));
        spares.release();
        assert_eq!(spares.take(LEN).capacity(), 0, "released");
    }
}
