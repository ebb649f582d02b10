//! One spill file: an append-only segment of records, or a file holding one
//! large record. This module holds the crate's only `unsafe` code: mapping a
//! spill file into memory.

use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};

use crate::sync::Mutex;
use bytes::Bytes;

use super::record::{self, HEADER_LEN};
use super::DirShared;
use crate::error::Error;

/// A spill file the store created, shared by the records in it.
///
/// The file is deleted when the last [`Record`] in it is dropped and the
/// writer no longer appends to it. Reads go through one shared mapping of the
/// whole file, made on the first read.
pub(crate) struct Segment {
    path: PathBuf,
    /// The number in the file's name; part of every record's place.
    number: u64,
    /// Holds exactly one record, at offset 0, as long as the file.
    dedicated: bool,
    /// Kept open for the segment's whole life: reads and length checks use
    /// this descriptor, so replacing the path does not redirect them.
    file: File,
    /// Inode number, so deletion can check the path still names our file.
    ino: u64,
    /// Length the file was created with; all records lie below it.
    size: u64,
    /// Records, written or reserved, that still need this file.
    live: AtomicU64,
    /// Bytes of those records (headers included).
    live_bytes: AtomicU64,
    /// Set once the writer has moved on: no more records will be added.
    sealed: AtomicBool,
    /// The whole file mapped read-only, once some record was read. (Under
    /// Miri, which cannot map files, records are read instead.)
    #[cfg_attr(miri, allow(dead_code))]
    map: OnceLock<Bytes>,
    #[cfg_attr(miri, allow(dead_code))]
    map_init: Mutex<()>,
    dir: Weak<DirShared>,
}

impl Segment {
    /// Creates a new, empty spill file of `size` bytes at `path`.
    ///
    /// Refuses to reuse any existing name, so a file or symlink planted under
    /// the name is never written through.
    pub(super) fn create(
        path: PathBuf,
        number: u64,
        size: u64,
        dedicated: bool,
        dir: Weak<DirShared>,
    ) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let ino = match file.metadata() {
            Ok(m) => m.ino(),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        // A sparse file: blocks are allocated only as records are written, so a
        // full disk surfaces as a failed write, never as a fault in a mapping.
        if let Err(e) = file.set_len(size) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Segment {
            path,
            number,
            dedicated,
            file,
            ino,
            size,
            live: AtomicU64::new(0),
            live_bytes: AtomicU64::new(0),
            sealed: AtomicBool::new(false),
            map: OnceLock::new(),
            map_init: Mutex::new(()),
            dir,
        })
    }

    pub(super) fn size(&self) -> u64 {
        self.size
    }

    pub(super) fn live(&self) -> u64 {
        self.live.load(Ordering::Acquire)
    }

    /// Counts one more record of `len` bytes that needs this file. Called
    /// by the writer while it holds its lock, so retiring the segment cannot
    /// race with it.
    fn acquire(&self, len: u64) {
        self.live.fetch_add(1, Ordering::AcqRel);
        self.live_bytes.fetch_add(len, Ordering::Relaxed);
        if let Some(dir) = self.dir.upgrade() {
            dir.live_bytes.fetch_add(len, Ordering::Relaxed);
        }
    }

    fn release(&self, len: u64) {
        self.live_bytes.fetch_sub(len, Ordering::Relaxed);
        let dir = self.dir.upgrade();
        if let Some(dir) = &dir {
            dir.live_bytes.fetch_sub(len, Ordering::Relaxed);
        }
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(dir) = dir {
                dir.retire_if_unused(self);
            }
        }
    }

    /// Marks that no record will be added any more.
    pub(super) fn seal(&self) {
        self.sealed.store(true, Ordering::Release);
    }

    /// Whether compaction should move this segment's records elsewhere: the
    /// writer is done with it and at most half of it is still needed.
    pub(super) fn is_sparse(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
            && self.live_bytes.load(Ordering::Relaxed) * 2 <= self.size
    }

    /// Writes `data` at `offset`.
    pub(super) fn write_at(&self, data: &[u8], offset: u64) -> Result<(), Error> {
        self.file
            .write_all_at(data, offset)
            .map_err(|e| Error::io("writing spill file", &self.path, e))
    }

    /// Reads back the `len`-byte value of the record at `offset`.
    ///
    /// The file's current length is checked before the mapping is touched, so
    /// a file truncated while the store was idle is reported as corrupted
    /// instead of faulting (SIGBUS); the header and checksum are verified, so
    /// altered bytes are never returned. With `copy`, the value is copied out
    /// of the mapping first and the copy is what gets verified and returned:
    /// it no longer depends on the file at all.
    fn read(&self, offset: u64, len: u64, copy: bool) -> Result<Bytes, Error> {
        let corrupted = |reason: String| Error::Corrupted {
            path: self.path.clone(),
            offset,
            reason,
        };
        let end = offset
            .checked_add(HEADER_LEN)
            .and_then(|x| x.checked_add(len))
            .ok_or_else(|| corrupted(format!("record length {len} overflows")))?;
        let file_len = self
            .file
            .metadata()
            .map_err(|e| Error::io("checking spill file", &self.path, e))?
            .len();
        if file_len < end {
            return Err(corrupted(format!(
                "file is {file_len} bytes, record ends at {end}"
            )));
        }
        let record = self.record_bytes(offset, end)?;
        let header = &record[..HEADER_LEN as usize];
        let place = record::place(self.number, offset);
        record::check_header(header, place, len).map_err(corrupted)?;
        if copy {
            let (value, sum) = record::copy_with_checksum(&record[HEADER_LEN as usize..]);
            record::check_checksum(header, sum).map_err(corrupted)?;
            Ok(Bytes::from(value))
        } else {
            let value = record.slice(HEADER_LEN as usize..);
            record::check_value(header, &value).map_err(corrupted)?;
            Ok(value)
        }
    }

    /// The bytes `offset..end`, which the caller checked lie within the file.
    #[cfg(not(miri))]
    fn record_bytes(&self, offset: u64, end: u64) -> Result<Bytes, Error> {
        let map = self.mapping()?;
        if (map.len() as u64) < end {
            // Mapped while the file was shorter than it is now: it was altered.
            return Err(Error::Corrupted {
                path: self.path.clone(),
                offset,
                reason: format!("mapping is {} bytes, record ends at {end}", map.len()),
            });
        }
        Ok(map.slice(offset as usize..end as usize))
    }

    /// Miri cannot map files: read the record instead.
    #[cfg(miri)]
    fn record_bytes(&self, offset: u64, end: u64) -> Result<Bytes, Error> {
        let mut buf = vec![0u8; (end - offset) as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| Error::io("reading spill file", &self.path, e))?;
        Ok(Bytes::from(buf))
    }

    /// The shared read-only mapping of the whole file, made on first use.
    #[cfg(not(miri))]
    fn mapping(&self) -> Result<Bytes, Error> {
        if let Some(map) = self.map.get() {
            return Ok(map.clone());
        }
        let _init = self.map_init.lock();
        if let Some(map) = self.map.get() {
            return Ok(map.clone());
        }
        // SAFETY: mapping a file is unsafe because the mapped memory changes
        // if the file is modified while mapped, and touching a page past the
        // file's end raises SIGBUS. The file is ours: created with
        // `create_new` in a dump directory this store holds locked, sized
        // once at creation and never truncated, renamed or rewritten by the
        // store: records are appended into space no reader has been handed
        // yet, and a record's bytes are never written again once its value
        // was stored. Deleting the file keeps the mapping valid. The mapping
        // covers the size the file was created with, even if someone shortened
        // it since, so records appended later stay reachable; `read` checks
        // the file's current length right before every access, so no page
        // past the end is touched while the store is idle, and the checksum
        // catches altered bytes. Values kept resident are copied out of the
        // mapping, so only slices handed to callers share the file's pages.
        let mmap = unsafe {
            memmap2::MmapOptions::new()
                .len(self.size as usize)
                .map(&self.file)
        }
        .map_err(|e| Error::io("mapping spill file", &self.path, e))?;
        let map = Bytes::from_owner(mmap);
        let _ = self.map.set(map.clone());
        Ok(map)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino);
        let dir = self.dir.upgrade();
        // Delete only the file we created, through a dump dir that is still the
        // one we locked: never a file someone put in its place.
        if ours && dir.as_ref().is_none_or(|d| d.dir_is_ours()) {
            let _ = std::fs::remove_file(&self.path);
        }
        if let Some(dir) = dir {
            dir.segment_dropped(self.size);
        }
    }
}

/// One value's copy on disk: a record in a segment.
///
/// While a `Record` exists its segment file exists; dropping the last record
/// of a segment deletes the file. Sixteen bytes: segments are at most 4 GiB
/// (see `MAX_SEGMENT_SIZE`), and a dedicated file's one record is as long as
/// the file.
pub(crate) struct Record {
    segment: Arc<Segment>,
    offset: u32,
    /// Header and value bytes, for records in shared segments.
    len: u32,
}

impl Record {
    /// A record of `len` bytes at `offset` in `segment`, counted as live.
    pub(super) fn new(segment: Arc<Segment>, offset: u64, len: u64) -> Self {
        debug_assert!(segment.dedicated || offset + len <= segment.size);
        debug_assert!(u32::try_from(segment.size).is_ok() || segment.dedicated);
        segment.acquire(len);
        Record {
            segment,
            offset: offset as u32,
            len: len as u32,
        }
    }

    pub(super) fn segment(&self) -> &Arc<Segment> {
        &self.segment
    }

    pub(super) fn offset(&self) -> u64 {
        u64::from(self.offset)
    }

    /// Header and value bytes.
    fn record_len(&self) -> u64 {
        if self.segment.dedicated {
            self.segment.size
        } else {
            u64::from(self.len)
        }
    }

    /// The value's length in bytes.
    pub(crate) fn value_len(&self) -> u64 {
        self.record_len() - HEADER_LEN
    }

    /// The place that this record's header must name.
    pub(super) fn place(&self) -> u64 {
        record::place(self.segment.number, self.offset())
    }

    /// Whether compaction should move this record to a fuller segment.
    pub(crate) fn in_sparse_segment(&self) -> bool {
        self.segment.is_sparse()
    }

    /// Whether `self` is the record `reader` reads.
    pub(crate) fn same_as(&self, reader: &RecordReader) -> bool {
        Arc::ptr_eq(&self.segment, &reader.segment) && self.offset() == reader.offset
    }

    /// A handle to read this record with no lock held.
    pub(crate) fn reader(&self) -> RecordReader {
        RecordReader {
            segment: Arc::clone(&self.segment),
            offset: self.offset(),
            len: self.value_len(),
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        // Releasing a record may delete its file: never under a shard lock.
        crate::sync::lock_tracking::assert_none_held("a spill record was dropped");
        self.segment.release(self.record_len());
    }
}

/// Reads a record outside the shard's lock. It keeps the file open, not the
/// record stored: if the value is removed meanwhile, the read still sees the
/// bytes it had.
pub(crate) struct RecordReader {
    segment: Arc<Segment>,
    offset: u64,
    len: u64,
}

impl RecordReader {
    /// The value's length in bytes.
    pub(crate) fn value_len(&self) -> u64 {
        self.len
    }

    /// Reads back the value, verified, as a slice of the file's mapping (no
    /// copy). The slice shares the file's pages: it is for handing out, not
    /// for keeping resident. See [`Segment::read`].
    pub(crate) fn read_mapped(&self) -> Result<Bytes, Error> {
        self.segment.read(self.offset, self.len, false)
    }

    /// Reads back the value, verified, as a heap copy that does not depend
    /// on the file: for values brought back into memory.
    pub(crate) fn read_copy(&self) -> Result<Bytes, Error> {
        self.segment.read(self.offset, self.len, true)
    }
}
