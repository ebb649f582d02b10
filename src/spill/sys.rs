//! The system calls std does not offer: punching a hole in a file, writing
//! several buffers at an offset in one call (`pwritev`; std's
//! `write_vectored_at` is not stable), reading only what the page cache
//! holds, counting a thread's major faults, and reading the descriptor
//! limit. All go through `libc`, which the mapping (memmap2) already depends
//! on, so it adds nothing to the build.

use std::fs::File;
use std::io;
use std::ops::Range;

/// Frees the blocks of `range` (block aligned) in `file` and leaves zeros in
/// their place, keeping the file's length: `fallocate(FALLOC_FL_PUNCH_HOLE |
/// FALLOC_FL_KEEP_SIZE)`.
///
/// Fails with `ErrorKind::Unsupported` where the file system (or the
/// platform) cannot punch holes.
#[cfg(all(target_os = "linux", not(miri)))]
pub(super) fn punch_hole(file: &File, range: Range<u64>) -> io::Result<()> {
    use std::os::fd::AsRawFd;

    let (Ok(offset), Ok(len)) = (
        libc::off_t::try_from(range.start),
        libc::off_t::try_from(range.end - range.start),
    ) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range too large",
        ));
    };
    // SAFETY: `fallocate` takes a descriptor and three integers and touches
    // no memory of ours. The descriptor is valid: it belongs to `file`, which
    // is borrowed for the whole call. PUNCH_HOLE only deallocates blocks of
    // that file within `range` (reads there then return zeros); KEEP_SIZE
    // (required with it) keeps the length, so a mapping of the file never
    // finds its end moved. The caller guarantees no byte of `range` can be
    // read any more: no record, reader or handed-out value holds it.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the file system cannot punch holes",
        )),
        _ => Err(err),
    }
}

/// Miri cannot call `fallocate`: write the zeros a hole reads as, so the
/// rest of the logic runs unchanged (no space is freed).
#[cfg(miri)]
pub(super) fn punch_hole(file: &File, range: Range<u64>) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(&vec![0u8; (range.end - range.start) as usize], range.start)
}

/// Elsewhere than Linux, holes are not punched; compaction reclaims space.
#[cfg(all(not(target_os = "linux"), not(miri)))]
pub(super) fn punch_hole(_file: &File, _range: Range<u64>) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "punching holes is implemented for Linux only",
    ))
}

/// Tells the kernel that `file` is read at random
/// (`posix_fadvise(POSIX_FADV_RANDOM)`): a `pread` then reads the pages
/// asked for and no more. Records are read whole, one call each, in no
/// order; without this, a read that continues one the page cache partly
/// served (neighbouring records share a page) looks sequential, and the
/// kernel reads ahead of it, past the record: 40% more bytes than asked
/// for 1 MiB values, measured. Advice only: errors are ignored.
#[cfg(all(target_os = "linux", not(miri)))]
pub(super) fn advise_random(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: `posix_fadvise` takes a descriptor and integers and touches
    // no memory of ours; the descriptor belongs to `file`, borrowed for the
    // whole call. The advice changes only how the kernel reads ahead.
    let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
}

/// Elsewhere (and under Miri), nothing to advise.
#[cfg(any(miri, not(target_os = "linux")))]
pub(super) fn advise_random(_file: &File) {}

/// The soft limit on open descriptors of this process (`RLIMIT_NOFILE`),
/// if it can be read and is finite.
#[cfg(not(miri))]
pub(super) fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` through the pointer, which
    // points to a live, properly aligned `rlimit` on our stack that nothing
    // else references during the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // `rlim_t` is u64 on Linux, not everywhere
    Some(limit.rlim_cur as u64)
}

/// Miri has no `getrlimit`: assume the usual default.
#[cfg(miri)]
pub(super) fn open_file_limit() -> Option<u64> {
    Some(1024)
}

/// Writes the buffers of `data`, one after another, at `offset` of `file`
/// (`pwritev`, repeated after a short write or an interruption): a batch of
/// records goes out in one call, straight from the values' own memory.
#[cfg(all(target_os = "linux", not(miri)))]
pub(super) fn write_all_vectored_at(file: &File, data: &[&[u8]], offset: u64) -> io::Result<()> {
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;

    let mut slices: Vec<IoSlice<'_>> = data.iter().map(|d| IoSlice::new(d)).collect();
    let mut rest = &mut slices[..];
    let mut offset = offset;
    IoSlice::advance_slices(&mut rest, 0); // skip leading empty buffers
    while !rest.is_empty() {
        let count = rest.len().min(1024) as libc::c_int; // IOV_MAX on Linux
        let at = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` (std
        // guarantees it on Unix), and `rest` holds `count` or more of them,
        // each pointing at memory of `data` that stays borrowed, readable and
        // unchanged for the whole call; `pwritev` only reads those buffers.
        // The descriptor belongs to `file`, borrowed for the whole call.
        let written = unsafe { libc::pwritev(file.as_raw_fd(), rest.as_ptr().cast(), count, at) };
        if written < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let written = written as usize;
        offset += written as u64;
        IoSlice::advance_slices(&mut rest, written);
    }
    Ok(())
}

/// Elsewhere (and under Miri): one positioned write per buffer.
#[cfg(any(miri, not(target_os = "linux")))]
pub(super) fn write_all_vectored_at(file: &File, data: &[&[u8]], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;

    let mut offset = offset;
    for buffer in data {
        file.write_all_at(buffer, offset)?;
        offset += buffer.len() as u64;
    }
    Ok(())
}

/// Reads from `file` at `offset` into the spare capacity of `buf`, up to a
/// length of `want` bytes in all, appending what was read; returns the
/// number of bytes appended (0 at the file's end, or with `buf` already
/// `want` long or full).
///
/// With `nowait`, reads only what the page cache holds, without waiting for
/// the disk (`preadv2(RWF_NOWAIT)`): a short count, or 0, then means the rest
/// is not cached. Kernels without the flag (before 4.14) answer as if nothing
/// were cached.
#[cfg(all(target_os = "linux", not(miri)))]
pub(super) fn pread_append(
    file: &File,
    buf: &mut Vec<u8>,
    want: usize,
    offset: u64,
    nowait: bool,
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;

    let missing = want.saturating_sub(buf.len());
    let spare = buf.spare_capacity_mut();
    let room = missing.min(spare.len());
    let spare = &mut spare[..room];
    if spare.is_empty() {
        return Ok(0);
    }
    let Ok(offset) = libc::off_t::try_from(offset) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "offset too large",
        ));
    };
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: spare.len(),
    };
    let flags = if nowait { libc::RWF_NOWAIT } else { 0 };
    // SAFETY: `preadv2` writes at most `iov_len` bytes at `iov_base`, which
    // is the start of the spare capacity of `buf`: memory `buf` owns,
    // exclusively borrowed for the call, valid for `spare.len()` bytes.
    // The descriptor belongs to `file`, borrowed for the whole call; `iov`
    // lives on our stack until the call returns.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, flags) };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EAGAIN) if nowait => Ok(0),
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS) if nowait => Ok(0),
            _ => Err(err),
        };
    }
    let n = n as usize;
    // SAFETY: the kernel initialised the first `n` bytes of the spare
    // capacity (`n <= spare.len()`, as `preadv2` never reads more than
    // asked), so the first `len + n` bytes of `buf` are initialised.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Miri has no `preadv2`: nothing counts as cached, and a blocking read goes
/// through zeroed memory and `pread`, so the callers' logic runs unchanged.
#[cfg(any(miri, not(target_os = "linux")))]
pub(super) fn pread_append(
    file: &File,
    buf: &mut Vec<u8>,
    want: usize,
    offset: u64,
    nowait: bool,
) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    if nowait {
        return Ok(0);
    }
    let start = buf.len();
    buf.resize(buf.capacity().min(want.max(start)), 0);
    let n = file.read_at(&mut buf[start..], offset);
    buf.truncate(start + *n.as_ref().unwrap_or(&0));
    n
}

/// Major page faults (faults that waited for the disk) of the calling
/// thread so far, if the system says.
#[cfg(all(target_os = "linux", not(miri)))]
pub(super) fn thread_major_faults() -> Option<u64> {
    // SAFETY: an all-zero `rusage` is a valid value (plain integers).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `getrusage` writes one `rusage` through the pointer, which
    // points to a live, properly aligned `rusage` on our stack that nothing
    // else references during the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    #[allow(clippy::unnecessary_cast)] // `c_long` is i64 on 64-bit Linux only
    (rc == 0).then_some(usage.ru_majflt as u64)
}

/// Elsewhere (and under Miri), unknown.
#[cfg(any(miri, not(target_os = "linux")))]
pub(super) fn thread_major_faults() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Empty buffers anywhere, more buffers than fit one call's `IOV_MAX`
    /// when counted with the empties, and an offset past the end: the bytes
    /// land back to back where asked.
    #[test]
    fn vectored_writes_land_back_to_back() {
        use std::os::unix::fs::FileExt;

        let file = tempfile::tempfile().unwrap();
        let pieces: Vec<Vec<u8>> = (0..1500u32)
            .map(|i| vec![i as u8; (i % 7) as usize])
            .collect();
        let buffers: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        write_all_vectored_at(&file, &buffers, 100).unwrap();
        let want = pieces.concat();
        let mut got = vec![0u8; want.len()];
        file.read_exact_at(&mut got, 100).unwrap();
        assert_eq!(got, want);
    }
}
