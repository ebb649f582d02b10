//! `--cold`: evicting the dump dir's pages from the page cache, and telling
//! which reloads had to read the disk.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// How the page cache was emptied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    /// `sync`, then `echo 3 > /proc/sys/vm/drop_caches` (needs root): every
    /// clean page not mapped by a process goes, the whole machine's.
    DropCaches,
    /// `fdatasync` and `posix_fadvise(POSIX_FADV_DONTNEED)` on every file of
    /// the dump dir: only their pages, and only those no process maps.
    Fadvise,
}

impl Method {
    /// The name printed in the report.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Method::DropCaches => "drop_caches",
            Method::Fadvise => "posix_fadvise(DONTNEED)",
        }
    }
}

/// Evicts the pages of the files in `dir` from the page cache: with drop
/// caches if this process may, else file by file. Pages a process has
/// mapped stay either way (the kernel does not unmap them for this).
pub(crate) fn evict(dir: &Path) -> Result<Method, String> {
    // SAFETY: `sync` takes no arguments and only schedules writeback.
    unsafe { libc::sync() };
    if std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok() {
        return Ok(Method::DropCaches);
    }
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        // Files come and go under the running store: one gone is skipped.
        let Ok(file) = File::open(entry.path()) else {
            continue;
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            continue;
        }
        // DONTNEED drops only clean pages: write the dirty ones first.
        let _ = file.sync_data();
        // SAFETY: `posix_fadvise` takes a descriptor and integers and touches
        // no memory of ours; the descriptor belongs to `file`, borrowed for
        // the whole call. The advice only drops cached copies of the file.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(format!(
                "posix_fadvise on {}: {}",
                entry.path().display(),
                std::io::Error::from_raw_os_error(rc)
            ));
        }
    }
    Ok(Method::Fadvise)
}

/// 512-byte blocks the calling thread has read from storage so far
/// (`getrusage(RUSAGE_THREAD)`'s `ru_inblock`): a get between two reads of
/// this that saw it grow waited for the disk.
pub(crate) fn thread_blocks_read() -> u64 {
    // SAFETY: an all-zero `rusage` is a valid value (plain integers).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `getrusage` writes one `rusage` through the pointer, which
    // points to a live, properly aligned `rusage` on our stack.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(usage.ru_inblock).unwrap_or(0)
}
