//! How a record is read back: through the file's mapping while the spill
//! files are in the page cache, with `pread` while they are not.
//!
//! Both have a case where they lose badly (measured in BENCHMARKS.md, "Cold
//! reloads"). From the page cache, a copy out of a mapping runs at about
//! twice the speed of `pread` (no kernel copy, no page-cache lookup per
//! page). From the disk, a mapping is faulted in page by page once the
//! kernel's read-around gives up under random access, one I/O per 4 KiB,
//! at a third of `pread`'s rate. Asking the kernel whether pages are cached
//! (`mincore`) before every read costs 1.5-3 µs, a fifth of a warm 64 KiB
//! reload, so the choice is made from what recent reads saw instead:
//!
//! - A mapped read times itself, chunk by chunk; a chunk that took far
//!   longer than a copy from memory could, during which the thread took a
//!   major fault (`getrusage`, asked only then), waited for the disk. The
//!   rest of the value is then requested at once (`MADV_WILLNEED`) and the
//!   store switches to `pread` for copied values.
//! - In that mode every read first asks for what the page cache holds
//!   without waiting (`preadv2(RWF_NOWAIT)`): when that is the whole record
//!   it was warm, and after [`WARM_STREAK`] warm reads in a row the store goes
//!   back to the mapping. A record that was not all cached is read with
//!   `pread`, in one I/O as large as the record.
//! - Values handed out zero-copy can only be read through the mapping; in
//!   `pread` mode their range is requested whole (`MADV_WILLNEED`) before the
//!   checksum touches it, so they do not fault page by page either.
//! - Records below [`MIN_TIMED`] are always read through the mapping: a cold
//!   one costs a fault or two, as many I/Os as `pread`, and timing them
//!   would cost more than it could save.
//! - Apart from both modes, a shared segment is read with `pread` for a
//!   while after punching holes dropped its mapping: a mapping pays for
//!   itself only over many reads (see [`super::segment::MAP_AFTER_READS`]).
//!   Those reads tell the mode what they found like any `pread`.

use std::cell::Cell;
use std::time::{Duration, Instant};

// std's atomic even under shuttle: the mode is a hint for speed, never for
// correctness, so there is no interleaving of it worth exploring.
use std::sync::atomic::{AtomicU32, Ordering};

use super::sys;

/// Records shorter than this are read through the mapping in both modes.
pub(super) const MIN_TIMED: u64 = 16 * 1024;

/// Warm reads in a row after which `pread` mode ends.
pub(super) const WARM_STREAK: u32 = 32;

/// Bytes copied or checksummed between two looks at the clock: the copy's
/// chunk, small enough to stay in the L2 cache for the fused checksum.
pub(super) const CHUNK: usize = 64 * 1024;

/// The read mode of one dump directory, shared by its segments.
#[derive(Default)]
pub(super) struct ReadPolicy {
    /// Warm reads still needed before going back to the mapping; 0 while
    /// reading through the mapping.
    cold_credit: AtomicU32,
}

impl ReadPolicy {
    /// Whether recent reads found the files out of the page cache.
    pub(super) fn cold(&self) -> bool {
        self.cold_credit.load(Ordering::Relaxed) > 0
    }

    /// Records what a read of `len` bytes found: cached (`warm`) or not.
    /// Reads too short to tell are ignored.
    pub(super) fn saw(&self, len: u64, warm: bool) {
        if len < MIN_TIMED {
            return;
        }
        if !warm {
            // Only a change is written: the flag stays a shared, read-mostly line.
            if self.cold_credit.load(Ordering::Relaxed) != WARM_STREAK {
                self.cold_credit.store(WARM_STREAK, Ordering::Relaxed);
            }
        } else if self.cold() {
            let _ = self
                .cold_credit
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(1));
        }
    }
}

thread_local! {
    /// This thread's major faults when it last asked.
    static MAJOR_FAULTS: Cell<u64> = const { Cell::new(0) };
}

/// Whether touching `len` mapped bytes, which took `elapsed`, waited for
/// the disk: far slower than memory (1 GB/s, plus 50 µs for a preemption or
/// a few minor faults), and the thread took a major fault since it last
/// asked. The fault count is read only for slow chunks, so warm reads pay
/// two clock reads per chunk and no system call.
pub(super) fn waited_for_disk(len: usize, elapsed: Duration) -> bool {
    if elapsed < Duration::from_nanos(50_000 + len as u64) {
        return false;
    }
    match sys::thread_major_faults() {
        Some(now) => MAJOR_FAULTS.with(|before| now > before.replace(now)),
        None => true,
    }
}

/// Copies (into `out`, empty, when given) or only checksums the mapped
/// `value`, chunk by chunk, timing each chunk: returns the copy, its
/// checksum and whether a chunk waited for the disk. After the first such
/// chunk, `advise` is called once with the offset of the rest of the value,
/// to request it whole.
pub(super) fn read_chunks(
    value: &[u8],
    mut out: Option<Vec<u8>>,
    timed: bool,
    mut advise: impl FnMut(usize),
) -> (Option<Vec<u8>>, u64, bool) {
    let mut hasher = crc32fast::Hasher::new();
    let mut waited = false;
    for (i, chunk) in value.chunks(CHUNK).enumerate() {
        let started = (timed && !waited).then(Instant::now);
        match &mut out {
            Some(out) => {
                let start = out.len();
                out.extend_from_slice(chunk);
                hasher.update(&out[start..]);
            }
            None => hasher.update(chunk),
        }
        if started.is_some_and(|t| waited_for_disk(chunk.len(), t.elapsed())) {
            waited = true;
            let rest = (i + 1) * CHUNK;
            if rest < value.len() {
                advise(rest);
            }
        }
    }
    (out, u64::from(hasher.finalize()), waited)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cold_reads_switch_modes_and_warm_streaks_switch_back() {
        let p = ReadPolicy::default();
        assert!(!p.cold());
        p.saw(MIN_TIMED - 1, false);
        assert!(!p.cold(), "short reads tell nothing");
        p.saw(MIN_TIMED, false);
        assert!(p.cold());
        for _ in 1..WARM_STREAK {
            p.saw(MIN_TIMED, true);
        }
        assert!(p.cold());
        p.saw(MIN_TIMED, false);
        for _ in 0..WARM_STREAK {
            assert!(p.cold());
            p.saw(MIN_TIMED, true);
        }
        assert!(!p.cold());
        p.saw(MIN_TIMED, true);
        assert!(!p.cold());
    }

    #[test]
    fn chunked_reads_copy_and_checksum_like_the_plain_ones() {
        for len in [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK + 5] {
            let value: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
            for timed in [false, true] {
                let (copy, sum, _) = read_chunks(&value, Some(Vec::new()), timed, |_| {});
                assert_eq!(copy.as_deref(), Some(&value[..]));
                assert_eq!(sum, super::super::record::checksum(&value));
                let (none, sum2, _) = read_chunks(&value, None, timed, |_| {});
                assert!(none.is_none());
                assert_eq!(sum2, sum);
            }
        }
    }

    #[test]
    fn fast_chunks_never_count_as_waiting() {
        assert!(!waited_for_disk(CHUNK, Duration::from_micros(10)));
    }
}
