//! The two system calls std does not offer: punching a hole in a file and
//! reading the descriptor limit. Both go through `libc`, which the mapping
//! (memmap2) already depends on, so it adds nothing to the build.

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
