//! The dump directory: where spilled values live while they are out of memory.
//!
//! - **Naming**: files are named `spill-NNNNNNNN.seg` by a counter, never by
//!   a key, so no key can reach outside the directory. A name that already
//!   exists (a leftover, or a planted file or symlink) is skipped, never
//!   opened.
//! - **Layout**: small values are appended as records ([`record`]) to shared
//!   segment files of `segment_size` bytes; a value whose record is larger
//!   than a quarter of that gets a file of its own. Either way a reload is a
//!   slice of one shared read-only mapping per file, so there is no mapping
//!   per value and no system call per reload beyond a length check.
//! - **Reclaiming space**: a file is deleted as soon as no stored value needs
//!   it any more and the writer has moved on from it.
//! - **Exclusivity**: a lock file, `.spillstore.lock`, holds an exclusive
//!   lock for the store's lifetime, so a second store on the same directory is
//!   refused.
//!
//! The only `unsafe` code of the crate, the mapping, lives in [`segment`].

mod record;
mod segment;

use crate::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use crate::sync::Mutex;
use bytes::Bytes;

use segment::Segment;
pub(crate) use segment::{Record, RecordReader};

use crate::error::Error;

/// Name of the lock file inside the dump directory.
pub(crate) const LOCK_FILE_NAME: &str = ".spillstore.lock";

/// Records above this many batched bytes are written by separate calls.
const MAX_COALESCED_WRITE: usize = 4 << 20;

/// An open, locked dump directory.
pub(crate) struct SpillDir {
    shared: Arc<DirShared>,
    lock_file: File,
    /// Whether we created the lock file (and so may delete it).
    lock_file_created: bool,
}

/// What segments need to reach back to: the writer and the counters.
pub(crate) struct DirShared {
    path: PathBuf,
    /// Device and inode of the directory when it was locked.
    identity: (u64, u64),
    segment_size: u64,
    writer: Mutex<Writer>,
    next_file_number: AtomicU64,
    files: AtomicUsize,
    file_bytes: AtomicU64,
    /// Bytes of live records in all files: what compaction could shrink to.
    live_bytes: AtomicU64,
    compacting: AtomicBool,
    compactions: AtomicU64,
    compacted_bytes: AtomicU64,
}

/// The segment small records are currently appended to.
#[derive(Default)]
struct Writer {
    active: Option<Arc<Segment>>,
    /// Bytes of `active` handed out so far.
    used: u64,
}

/// How much the dump directory holds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DiskUsage {
    pub(crate) files: usize,
    pub(crate) bytes: u64,
    pub(crate) compactions: u64,
    pub(crate) compacted_bytes: u64,
}

/// Clears the compaction flag when a compaction pass ends.
pub(crate) struct CompactionGuard<'a>(&'a DirShared);

impl CompactionGuard<'_> {
    /// Counts `bytes` of records moved by this pass.
    pub(crate) fn moved(&self, bytes: u64) {
        self.0.compacted_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Drop for CompactionGuard<'_> {
    fn drop(&mut self) {
        self.0.compactions.fetch_add(1, Ordering::Relaxed);
        self.0.compacting.store(false, Ordering::Release);
    }
}

impl SpillDir {
    /// Opens (creating it if needed) and locks the dump directory at `path`.
    pub(crate) fn open(path: PathBuf, segment_size: u64) -> Result<Self, Error> {
        match fs::metadata(&path) {
            Ok(m) if !m.is_dir() => {
                return Err(Error::InvalidConfig(format!(
                    "dump_dir {} exists and is not a directory",
                    path.display()
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&path).map_err(|e| Error::io("creating dump dir", &path, e))?;
            }
            Err(e) => return Err(Error::io("opening dump dir", &path, e)),
        }
        let identity = dir_identity(&path).map_err(|e| Error::io("opening dump dir", &path, e))?;

        let lock_path = path.join(LOCK_FILE_NAME);
        let (lock_file, lock_file_created) = open_lock_file(&lock_path)
            .map_err(|e| Error::io("opening lock file", &lock_path, e))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(Error::DirLocked { path }),
            Err(fs::TryLockError::Error(e)) => {
                return Err(Error::io("locking dump dir", &lock_path, e))
            }
        }
        Ok(SpillDir {
            shared: Arc::new(DirShared {
                path,
                identity,
                segment_size,
                writer: Mutex::new(Writer::default()),
                next_file_number: AtomicU64::new(0),
                files: AtomicUsize::new(0),
                file_bytes: AtomicU64::new(0),
                live_bytes: AtomicU64::new(0),
                compacting: AtomicBool::new(false),
                compactions: AtomicU64::new(0),
                compacted_bytes: AtomicU64::new(0),
            }),
            lock_file,
            lock_file_created,
        })
    }

    /// The dump directory.
    pub(crate) fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Files and bytes the store's spill files occupy now.
    pub(crate) fn usage(&self) -> DiskUsage {
        let shared = &self.shared;
        DiskUsage {
            files: shared.files.load(Ordering::Relaxed),
            bytes: shared.file_bytes.load(Ordering::Relaxed),
            compactions: shared.compactions.load(Ordering::Relaxed),
            compacted_bytes: shared.compacted_bytes.load(Ordering::Relaxed),
        }
    }

    /// Starts a compaction pass if the files hold more than twice the live
    /// records' bytes (plus four segments of slack, so small stores do not
    /// churn) and no other pass is running.
    ///
    /// Each pass moves the live records out of sparse segments (sealed and
    /// at most half live), so it costs at most the live bytes and frees at
    /// least as much as it moves: amortized, a constant factor on spills.
    pub(crate) fn start_compaction(&self, force: bool) -> Option<CompactionGuard<'_>> {
        let shared = &self.shared;
        if !(force || self.compaction_due()) || shared.compacting.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(CompactionGuard(shared))
    }

    /// Whether the files hold more than twice the live records' bytes, plus
    /// four segments of slack: two relaxed loads, cheap enough for every
    /// insert and remove to ask.
    pub(crate) fn compaction_due(&self) -> bool {
        let shared = &self.shared;
        let files = shared.file_bytes.load(Ordering::Relaxed);
        let live = shared.live_bytes.load(Ordering::Relaxed);
        let slack = shared.segment_size.saturating_mul(4);
        files > live.saturating_mul(2).saturating_add(slack)
    }

    /// Writes each value as a checksummed record and returns the records in
    /// the same order.
    ///
    /// On error nothing is returned: space reserved for the batch is released
    /// and a file created for it alone is deleted.
    pub(crate) fn write(&self, values: &[Bytes]) -> Result<Vec<Record>, Error> {
        let records = self.reserve(values)?;
        let mut batch: Vec<u8> = Vec::new();
        let mut batch_start: Option<(&Arc<Segment>, u64)> = None;
        let flush = |batch: &mut Vec<u8>, start: Option<(&Arc<Segment>, u64)>| {
            if let Some((segment, offset)) = start {
                segment.write_at(batch, offset)?;
            }
            batch.clear();
            Ok::<(), Error>(())
        };
        for (record, value) in records.iter().zip(values) {
            let header = record::header(record.place(), value);
            let record_len = header.len() + value.len();
            let contiguous = batch_start.is_some_and(|(seg, start)| {
                Arc::ptr_eq(seg, record.segment()) && start + batch.len() as u64 == record.offset()
            });
            if !contiguous || batch.len() + record_len > MAX_COALESCED_WRITE {
                flush(&mut batch, batch_start.take())?;
            }
            if record_len > MAX_COALESCED_WRITE {
                record.segment().write_at(&header, record.offset())?;
                record
                    .segment()
                    .write_at(value, record.offset() + header.len() as u64)?;
                continue;
            }
            if batch_start.is_none() {
                batch_start = Some((record.segment(), record.offset()));
            }
            batch.extend_from_slice(&header);
            batch.extend_from_slice(value);
        }
        flush(&mut batch, batch_start)?;
        Ok(records)
    }

    /// Places each value: small records in the active segment (rolling over
    /// to a new one when it is full), large ones in files of their own.
    fn reserve(&self, values: &[Bytes]) -> Result<Vec<Record>, Error> {
        let shared = &self.shared;
        let mut records = Vec::with_capacity(values.len());
        let mut large = Vec::new();
        {
            let mut writer = shared.writer.lock();
            for (i, value) in values.iter().enumerate() {
                let len = record::HEADER_LEN + value.len() as u64;
                if len > shared.segment_size / 4 {
                    large.push(i);
                    records.push(None);
                    continue;
                }
                let fits = writer
                    .active
                    .as_ref()
                    .is_some_and(|s| writer.used + len <= s.size());
                if !fits {
                    let segment = shared.create_segment(shared.segment_size, false)?;
                    // Dropping the old active segment deletes it if nothing needs it.
                    if let Some(old) = writer.active.replace(segment) {
                        old.seal();
                    }
                    writer.used = 0;
                }
                let segment = writer.active.clone().expect("an active segment");
                records.push(Some(Record::new(segment, writer.used, len)));
                writer.used += len;
            }
        }
        for i in large {
            let len = record::HEADER_LEN + values[i].len() as u64;
            let segment = shared.create_segment(len, true)?;
            segment.seal();
            records[i] = Some(Record::new(segment, 0, len));
        }
        Ok(records.into_iter().map(|r| r.expect("placed")).collect())
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        let active = self.shared.writer.lock().active.take();
        drop(active);
        if self.lock_file_created && self.shared.dir_is_ours() {
            let _ = fs::remove_file(self.shared.path.join(LOCK_FILE_NAME));
        }
        let _ = self.lock_file.unlock();
    }
}

impl DirShared {
    /// Creates a new spill file of `size` bytes under a fresh name; a
    /// `dedicated` one will hold a single record.
    fn create_segment(self: &Arc<Self>, size: u64, dedicated: bool) -> Result<Arc<Segment>, Error> {
        if !self.dir_is_ours() {
            return Err(Error::io(
                "creating spill file in",
                &self.path,
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "the dump dir was removed or replaced",
                ),
            ));
        }
        let weak: Weak<DirShared> = Arc::downgrade(self);
        let mut attempts = 0;
        loop {
            let n = self.next_file_number.fetch_add(1, Ordering::Relaxed);
            let path = self.path.join(format!("spill-{n:08}.seg"));
            match Segment::create(path.clone(), n, size, dedicated, weak.clone()) {
                Ok(segment) => {
                    self.files.fetch_add(1, Ordering::Relaxed);
                    self.file_bytes.fetch_add(size, Ordering::Relaxed);
                    return Ok(Arc::new(segment));
                }
                // Someone else's file: leave it alone and take the next name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 1000 => {
                    attempts += 1;
                }
                Err(e) => return Err(Error::io("creating spill file", &path, e)),
            }
        }
    }

    /// Stops appending to `segment` if no record needs it, so it is deleted.
    fn retire_if_unused(&self, segment: &Segment) {
        let retired = {
            let mut writer = self.writer.lock();
            let is_active = writer
                .active
                .as_ref()
                .is_some_and(|a| std::ptr::eq(Arc::as_ptr(a), segment));
            if is_active && segment.live() == 0 {
                writer.used = 0;
                writer.active.take()
            } else {
                None
            }
        };
        drop(retired);
    }

    fn segment_dropped(&self, size: u64) {
        self.files.fetch_sub(1, Ordering::Relaxed);
        self.file_bytes.fetch_sub(size, Ordering::Relaxed);
    }

    /// Whether the dump dir path still names the directory we locked.
    fn dir_is_ours(&self) -> bool {
        dir_identity(&self.path).is_ok_and(|id| id == self.identity)
    }
}

fn dir_identity(path: &Path) -> io::Result<(u64, u64)> {
    let m = fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Opens the lock file, creating it if needed; says whether it was created.
/// A symlink in its place is refused rather than followed.
fn open_lock_file(path: &Path) -> io::Result<(File, bool)> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => Ok((f, true)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if fs::symlink_metadata(path)?.file_type().is_symlink() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "lock file is a symlink",
                ));
            }
            Ok((OpenOptions::new().read(true).write(true).open(path)?, false))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempfile::TempDir, SpillDir) {
        let tmp = tempfile::tempdir().unwrap();
        let spill = SpillDir::open(tmp.path().join("d"), 4096).unwrap();
        (tmp, spill)
    }

    fn values(sizes: &[usize]) -> Vec<Bytes> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Bytes::from(vec![i as u8 ^ 0x5a; n]))
            .collect()
    }

    #[test]
    fn records_read_back_mapped_and_copied() {
        let (_tmp, spill) = dir();
        // Two small records share a segment; 3000 bytes is over a quarter of
        // the segment size, so it gets a file of its own.
        let vals = values(&[10, 0, 3000, 100]);
        let records = spill.write(&vals).unwrap();
        assert_eq!(spill.usage().files, 2);
        for (record, value) in records.iter().zip(&vals) {
            assert_eq!(record.value_len(), value.len() as u64);
            assert_eq!(record.reader().read_mapped().unwrap(), value);
            assert_eq!(record.reader().read_copy().unwrap(), value);
        }
    }

    #[test]
    fn files_go_when_their_last_record_goes() {
        let (tmp, spill) = dir();
        let listing = || fs::read_dir(tmp.path().join("d")).unwrap().count();
        assert_eq!(listing(), 1); // the lock file
        let mut records = Vec::new();
        for i in 0..40u64 {
            records.extend(spill.write(&[Bytes::from(vec![i as u8; 200])]).unwrap());
        }
        let files = spill.usage().files;
        assert!(files >= 2, "{files}");
        assert_eq!(listing(), 1 + files);
        records.truncate(20);
        assert!(spill.usage().files < files, "full segments were deleted");
        records.clear();
        assert_eq!(spill.usage().files, 0, "the active segment is retired");
        assert_eq!(spill.usage().bytes, 0);
        assert_eq!(listing(), 1);
    }

    #[test]
    fn a_truncated_file_is_corrupted_not_a_fault() {
        let (tmp, spill) = dir();
        let vals = values(&[100, 100]);
        let records = spill.write(&vals).unwrap();
        assert_eq!(records[0].reader().read_copy().unwrap(), vals[0]);
        let path = tmp.path().join("d").join("spill-00000000.seg");
        OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(140)
            .unwrap();
        assert!(records[0].reader().read_copy().is_ok());
        let second = records[1].reader().read_mapped();
        assert!(matches!(second, Err(Error::Corrupted { .. })), "{second:?}");
    }

    /// Found by the `corrupt` fuzz target: a segment shortened while idle
    /// (here to its used part) was mapped short, and values appended to it
    /// afterwards could never be read.
    #[test]
    fn records_appended_after_a_file_was_shortened_stay_readable() {
        let (tmp, spill) = dir();
        let first = spill.write(&values(&[60])).unwrap();
        let path = tmp.path().join("d").join("spill-00000000.seg");
        OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(92)
            .unwrap();
        assert_eq!(first[0].reader().read_copy().unwrap(), values(&[60])[0]);
        let later = spill.write(&values(&[0, 60])).unwrap();
        assert_eq!(later[1].reader().read_copy().unwrap(), values(&[0, 60])[1]);
    }

    #[test]
    fn a_second_open_of_the_same_dir_is_refused() {
        let (tmp, spill) = dir();
        let again = SpillDir::open(tmp.path().join("d"), 4096);
        assert!(matches!(again, Err(Error::DirLocked { .. })));
        drop(spill);
        SpillDir::open(tmp.path().join("d"), 4096).unwrap();
    }
}
