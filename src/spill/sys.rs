//! What std does not offer: punching a hole in a file, reading the
//! descriptor limit, and a positioned read into a buffer that was not zeroed
//! first. All go through `libc`, which the mapping (memmap2) already depends
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

/// Bytes read per `pread` call: small enough for each piece to be still in
/// the core's cache when the caller checksums it, large enough that the
/// calls cost little (four for a 1 MiB value).
const READ_PIECE: usize = 256 << 10;

/// Reads exactly `len` bytes at `offset` of `file` into a new buffer,
/// without zeroing the buffer first (zeroing cost 12% of spillbench's mixed
/// phase, as much as the read itself), and hands each piece read to
/// `piece` while it is still in cache (to checksum it: one pass over
/// memory instead of two). A file that ends first gives `UnexpectedEof`.
#[cfg(not(miri))]
pub(super) fn read_exact_at(
    file: &File,
    len: usize,
    offset: u64,
    mut piece: impl FnMut(&[u8]),
) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;

    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let done = buf.len();
        let Ok(at) = libc::off_t::try_from(offset + done as u64) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offset too large",
            ));
        };
        let spare = buf.spare_capacity_mut();
        let want = spare.len().min(READ_PIECE);
        // SAFETY: `pread` writes at most `want <= spare.len()` bytes through
        // the pointer, which points to the spare capacity of `buf` (past its
        // length): valid for writes of `spare.len()` bytes, not aliased
        // (`buf` is ours alone) and not read by the call. The descriptor
        // belongs to `file`, borrowed for the whole call.
        let n = unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), want, at) };
        match n {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n if n > 0 => {
                // SAFETY: `pread` initialized the first `n` bytes of the
                // spare capacity, and `n <= want <= spare.len()`, so the
                // first `done + n` bytes of `buf` are initialized and within
                // its capacity.
                unsafe { buf.set_len(done + n as usize) };
                piece(&buf[done..]);
            }
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(buf)
}

/// Miri: a zeroed buffer and std's positioned read.
#[cfg(miri)]
pub(super) fn read_exact_at(
    file: &File,
    len: usize,
    offset: u64,
    mut piece: impl FnMut(&[u8]),
) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)?;
    piece(&buf);
    Ok(buf)
}
