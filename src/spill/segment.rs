//! One spill file: an append-only segment of records, or a file holding one
//! large record.
//!
//! In a shared segment, records and readers in flight hold its blocks (see
//! [`super::blocks`]); blocks nobody holds are punched, in batches, with the
//! segment's mapping dropped first. Records are read through the file's
//! mapping, or with `pread` while the files are out of the page cache (see
//! [`super::cold`]) and while a shared segment has served too few reads
//! since its mapping was last dropped to be worth mapping again (see
//! [`MAP_AFTER_READS`]). A value brought back into memory is copied out; a
//! file of one large record (never punched, only deleted whole) hands its
//! value out as a slice of the mapping, and so does a shared segment for a
//! value not brought back, with a pin on the value's blocks (from the
//! segment's mapping, or from a mapping of that record alone while the
//! segment has none: see [`Segment::map_record`]).
//!
//! This module holds the mapping, the only `unsafe` code of the crate
//! besides the system calls in [`super::sys`].

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Weak};

// std's atomic even under shuttle for `unmapped_reads`: like the read
// mode, it is a hint for speed, never for correctness.
use std::sync::atomic::AtomicU32;

use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::Mutex;
use bytes::{Buf, Bytes};

use super::blocks::{self, BlockMap};
#[cfg_attr(miri, allow(unused_imports))] // Miri reads without the mapping
use super::cold::{self, ReadPolicy};
use super::record::{self, FILE_HEADER_LEN, HEADER_LEN};
use super::{sys, DirShared};
use crate::error::Error;

/// Reads a shared segment serves with `pread` after punching dropped its
/// mapping, before it is mapped again. (A new segment is mapped at its
/// first read, as a segment of one record always is.)
///
/// Punching holes drops a shared segment's mapping (see
/// [`Segment::punch_dead_blocks`]). Mapping it again costs an `mmap`, a page
/// fault per 64 KiB read (fault-around) and, at the next punch, an `munmap`
/// that clears every mapped page with a TLB shootdown on each core running
/// the process. With spillbench's replaces, mappings were dropped 700
/// times a second, after 60 reads each on average: mappings made for so few
/// reads cost more than they saved, mostly in the spiller, which punches
/// (this rule: spillbench's mixed ops/s 1.2-1.25x, insert p99 33 -> 21-28
/// us, a third fewer values written by inserting threads; BENCHMARKS.md,
/// "Mappings that live long enough"). A segment read this often between
/// punches, as under reloads without replaces, is mapped and read as before.
pub(super) const MAP_AFTER_READS: u32 = 1024;

/// A spill file the store created, shared by the records in it.
///
/// The file is deleted when the last [`Record`], reader or handed-out value
/// of it is dropped and the writer no longer appends to it. Its descriptor
/// and its mapping are opened on demand and kept only while the store's
/// file cache has room for them (see [`FileCache`]); a reopened file is
/// checked to be the one created here before any byte is read.
pub(crate) struct Segment {
    path: PathBuf,
    /// The number in the file's name; part of every record's place.
    number: u64,
    /// Holds exactly one record, right after the file header, up to its end.
    dedicated: bool,
    /// Device and inode number: a reopened path must still name this file,
    /// and deletion checks the path still names it.
    dev: u64,
    ino: u64,
    /// Length the file was created with; all records lie below it.
    size: u64,
    /// The open descriptor (and mapping), while the file cache keeps it.
    handle: Mutex<Option<Handle>>,
    /// Used since the file cache last looked (its clock hand).
    referenced: AtomicBool,
    /// Which blocks are held and allocated, and the checksums of the
    /// headerless records; none for dedicated files, which are never punched
    /// (their one record goes with the file) and whose records have headers.
    blocks: Option<Mutex<Book>>,
    /// Bytes the file occupies on disk (see [`BlockMap::accounted`]).
    accounted: AtomicU64,
    /// Records, written or reserved, that still need this file.
    live: AtomicU64,
    /// Bytes of those records (headers included).
    live_bytes: AtomicU64,
    /// Set once the writer has moved on: no more records will be added.
    sealed: AtomicBool,
    /// Punching its dead blocks is under way.
    flushing: AtomicBool,
    /// Copies read since punching last dropped the mapping, up to
    /// [`MAP_AFTER_READS`] (where it starts, and stays until a drop).
    #[cfg_attr(miri, allow(dead_code))] // Miri reads without the mapping
    unmapped_reads: AtomicU32,
    /// Listed in the dump dir's segments with dead blocks to punch.
    pub(super) listed: AtomicBool,
    dir: Weak<DirShared>,
    /// The dump dir's read mode (mapping or `pread`), held here so a read
    /// need not upgrade `dir`, a shared reference count.
    reads: Arc<ReadPolicy>,
    /// The dump dir's `can_punch`, held here for the same reason: compaction
    /// asks [`is_sparse`](Self::is_sparse) of every record it looks at.
    can_punch: Arc<AtomicBool>,
}

/// An open spill file: its descriptor and, once some record was read, its
/// mapping. Values handed out hold the mapping, never the descriptor.
struct Handle {
    file: Arc<File>,
    #[cfg(not(miri))]
    map: Option<Arc<memmap2::Mmap>>,
}

/// A handle taken out of its segment; dropping it closes the file.
pub(super) struct Closed(#[allow(dead_code)] Handle);

/// What one operation needs of an open file. Held only for the operation;
/// the file cache may close the file meanwhile, the descriptor then lives
/// until this is dropped.
struct Access {
    file: Arc<File>,
    #[cfg(not(miri))]
    map: Option<Arc<memmap2::Mmap>>,
}

impl Segment {
    /// Creates a new spill file of `size` bytes at `path`, mode 0600, and
    /// writes its file header.
    ///
    /// Refuses to reuse any existing name, so a file or symlink planted under
    /// the name is never written through.
    pub(super) fn create(
        path: PathBuf,
        number: u64,
        size: u64,
        dedicated: bool,
        dir: &Arc<DirShared>,
    ) -> std::io::Result<Arc<Self>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let remove = |e| {
            let _ = std::fs::remove_file(&path);
            e
        };
        let meta = file.metadata().map_err(remove)?;
        sys::advise_random(&file);
        // A sparse file: blocks are allocated only as records are written, so a
        // full disk surfaces as a failed write, never as a fault in a mapping.
        file.set_len(size).map_err(remove)?;
        file.write_all_at(&record::file_header(number, size, dedicated), 0)
            .map_err(remove)?;
        let (blocks, accounted) = if dedicated {
            (None, blocks::sequential_file_cost(size, dir.block))
        } else {
            let map = BlockMap::new(size, FILE_HEADER_LEN, dir.block);
            let accounted = map.accounted();
            let book = Book {
                blocks: map,
                checksums: HashMap::new(),
            };
            (Some(Mutex::new(book)), accounted)
        };
        Ok(Arc::new(Segment {
            path,
            number,
            dedicated,
            dev: meta.dev(),
            ino: meta.ino(),
            size,
            handle: Mutex::new(Some(Handle {
                file: Arc::new(file),
                #[cfg(not(miri))]
                map: None,
            })),
            referenced: AtomicBool::new(true),
            blocks,
            accounted: AtomicU64::new(accounted),
            live: AtomicU64::new(0),
            live_bytes: AtomicU64::new(0),
            sealed: AtomicBool::new(false),
            flushing: AtomicBool::new(false),
            unmapped_reads: AtomicU32::new(MAP_AFTER_READS),
            listed: AtomicBool::new(false),
            dir: Arc::downgrade(dir),
            reads: Arc::clone(&dir.reads),
            can_punch: Arc::clone(&dir.can_punch),
        }))
    }

    pub(super) fn live(&self) -> u64 {
        self.live.load(Ordering::Acquire)
    }

    /// Bytes the file occupies on disk now.
    pub(super) fn accounted(&self) -> u64 {
        self.accounted.load(Ordering::Relaxed)
    }

    /// Places a record of `len` bytes at `offset`, the end of what was
    /// handed out (for a dedicated file: its one record, right after the
    /// header). Returns it and the bytes it adds to the file's footprint,
    /// which [`blocks::append_cost`] priced (zero for a dedicated file, whose
    /// whole footprint counted at creation).
    ///
    /// For shared segments the writer calls this while it holds its lock,
    /// so retiring the segment cannot race with it; a dedicated file's only
    /// record is placed by the thread that created the file, before anyone
    /// else can reach it.
    pub(super) fn place(self: &Arc<Self>, offset: u64, len: u64) -> (Record, u64) {
        debug_assert!(offset + len <= self.size);
        debug_assert!(!self.dedicated || (offset, len) == (FILE_HEADER_LEN, self.size - offset));
        let cost = match &self.blocks {
            Some(blocks) => {
                let mut b = blocks.lock();
                let (held_at, held_len) = held(offset, len);
                let cost = b.place(held_at, held_len);
                self.accounted.store(b.accounted(), Ordering::Relaxed);
                cost
            }
            None => 0,
        };
        self.live.fetch_add(1, Ordering::AcqRel);
        self.live_bytes.fetch_add(len, Ordering::Relaxed);
        if let Some(dir) = self.dir.upgrade() {
            dir.live_bytes.fetch_add(len, Ordering::Relaxed);
        }
        let record = Record {
            segment: Arc::clone(self),
            offset: offset as u32,
            len: if self.dedicated { 0 } else { len as u32 },
        };
        (record, cost)
    }

    /// Keeps the checksum of the headerless record at `offset` (see
    /// [`record::headerless`]). Called before the record is handed out, so
    /// before anyone can read it; dropping the record forgets it.
    pub(super) fn keep_checksum(&self, offset: u64, checksum: u64) {
        if let Some(blocks) = &self.blocks {
            // A CRC-32, zero-extended where a header holds it (see `record`).
            blocks
                .lock()
                .checksums
                .insert(offset as u32, checksum as u32);
        }
    }

    /// The checksum kept for the headerless record at `offset`, if any.
    #[cfg(test)]
    pub(super) fn kept_checksum(&self, offset: u64) -> Option<u64> {
        self.blocks.as_ref()?.lock().checksum(offset)
    }

    /// Drops a hold on `offset..offset + len` (a record's, if `record`, else
    /// a reader's); blocks nobody holds any more are punched, in batches
    /// (see [`DirShared::dead_blocks`]).
    fn release(self: &Arc<Self>, offset: u64, len: u64, record: bool) {
        let dir = self.dir.upgrade();
        if record {
            self.live_bytes.fetch_sub(len, Ordering::Relaxed);
            if let Some(dir) = &dir {
                dir.live_bytes.fetch_sub(len, Ordering::Relaxed);
            }
        }
        if let Some(blocks) = &self.blocks {
            let pending = {
                let mut b = blocks.lock();
                let (held_at, held_len) = held(offset, len);
                // Only a headerless record has a checksum kept here. (A
                // record of an empty value, all header, can sit at the same
                // offset as the headerless record after it: its own header
                // fills the 32 bytes before that record's value.)
                if record && held_at != offset {
                    b.checksums.remove(&(offset as u32));
                }
                b.release(held_at, held_len);
                b.pending_bytes()
            };
            if let (true, Some(dir)) = (pending > 0, &dir) {
                dir.dead_blocks(self, pending);
            }
        }
        if record && self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(dir) = dir {
                dir.retire_if_unused(self);
            }
        }
    }

    /// Punches holes over every block no record or reader holds any more
    /// and none ever will, and returns their space.
    ///
    /// The segment's cached mapping is dropped first: punching a hole under
    /// a mapped page makes the kernel split the page cache's large folios
    /// and unmap their pages one by one, each with a TLB shootdown on every
    /// core running the process (measured at 40% of spillbench's mixed phase
    /// when every dead record was punched at once under the mapping). The
    /// next read maps the file again.
    pub(super) fn punch_dead_blocks(self: &Arc<Self>, dir: &DirShared) {
        let Some(blocks) = &self.blocks else { return };
        if !dir.can_punch.load(Ordering::Relaxed) || self.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        #[cfg(not(miri))]
        {
            let map = self.handle.lock().as_mut().and_then(|h| h.map.take());
            if map.is_some() {
                self.unmapped_reads.store(0, Ordering::Relaxed);
            }
            drop(map);
        }
        let ranges = blocks.lock().dead_ranges();
        if let Ok(access) = self.access(false) {
            for range in ranges {
                match sys::punch_hole(&access.file, range.clone()) {
                    Ok(()) => {
                        let freed = {
                            let mut b = blocks.lock();
                            let freed = b.punched(range);
                            self.accounted.store(b.accounted(), Ordering::Relaxed);
                            freed
                        };
                        dir.allocated.fetch_sub(freed, Ordering::AcqRel);
                        dir.punched_bytes.fetch_add(freed, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                        // Compaction reclaims what holes would have.
                        dir.can_punch.store(false, Ordering::Relaxed);
                        break;
                    }
                    // Left pending: tried again at the next batch.
                    Err(_) => {}
                }
            }
        }
        self.flushing.store(false, Ordering::Release);
        // Blocks that died meanwhile, or whose punch failed, wait for the
        // next batch.
        if blocks.lock().pending_bytes() > 0 {
            dir.list(self);
        }
    }

    /// Marks that no record will be added any more; the last block becomes
    /// dead if nobody holds it.
    pub(super) fn seal(self: &Arc<Self>) {
        self.sealed.store(true, Ordering::Release);
        if let Some(blocks) = &self.blocks {
            let pending = {
                let mut b = blocks.lock();
                b.seal();
                b.pending_bytes()
            };
            if let (true, Some(dir)) = (pending > 0, self.dir.upgrade()) {
                dir.dead_blocks(self, pending);
            }
        }
    }

    /// Whether compaction should move this segment's records elsewhere: the
    /// writer is done with it, and at most half of the space it occupies on
    /// disk is still needed, or of its length at most a half (a quarter
    /// where holes are punched: see [`super::length_factor`]).
    pub(super) fn is_sparse(&self) -> bool {
        let live = self.live_bytes.load(Ordering::Relaxed);
        let can_punch = self.can_punch.load(Ordering::Relaxed);
        self.sealed.load(Ordering::Acquire)
            && (live.saturating_mul(super::length_factor(can_punch)) <= self.size
                || live.saturating_mul(2) <= self.accounted())
    }

    /// Bytes that dropping one hold on each of `ranges` would return to the
    /// file system at once.
    pub(super) fn freed_by_releasing(&self, ranges: &[(u64, u64)], can_punch: bool) -> u64 {
        let held: Vec<_> = ranges.iter().map(|&(o, l)| held(o, l)).collect();
        match &self.blocks {
            Some(blocks) => blocks.lock().freed_by_releasing(&held, can_punch),
            None => self.accounted(),
        }
    }

    /// Writes the buffers of `data`, one after another, at `offset`.
    pub(super) fn write_at(self: &Arc<Self>, data: &[&[u8]], offset: u64) -> Result<(), Error> {
        sys::write_all_vectored_at(&self.access(false)?.file, data, offset)
            .map_err(|e| Error::io("writing spill file", &self.path, e))
    }

    /// The open file (and its mapping, if `map`), reopening it if the file
    /// cache closed it.
    fn access(self: &Arc<Self>, map: bool) -> Result<Access, Error> {
        self.referenced.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.lock().as_mut() {
            return self.access_open(handle, map);
        }
        let file = Arc::new(self.reopen()?);
        let mut admitted = false;
        let access = {
            let mut slot = self.handle.lock();
            let handle = slot.get_or_insert_with(|| {
                admitted = true;
                Handle {
                    file,
                    #[cfg(not(miri))]
                    map: None,
                }
            });
            self.access_open(handle, map)
        };
        if admitted {
            if let Some(dir) = self.dir.upgrade() {
                dir.cache.admit(Arc::downgrade(self));
            }
        }
        access
    }

    #[cfg_attr(miri, allow(unused_variables))]
    fn access_open(&self, handle: &mut Handle, map: bool) -> Result<Access, Error> {
        #[cfg(not(miri))]
        if map && handle.map.is_none() {
            handle.map = Some(Arc::new(self.map(&handle.file)?));
        }
        Ok(Access {
            file: Arc::clone(&handle.file),
            #[cfg(not(miri))]
            map: if map { handle.map.clone() } else { None },
        })
    }

    /// Opens the file again by its path, and checks that it is still the
    /// file created here: not a symlink, the same inode, the same header.
    fn reopen(&self) -> Result<File, Error> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path)
            .map_err(|e| Error::io("reopening spill file", &self.path, e))?;
        let corrupted = |reason: &str| Error::Corrupted {
            path: self.path.clone(),
            offset: 0,
            reason: reason.to_owned(),
        };
        let meta = file
            .metadata()
            .map_err(|e| Error::io("checking spill file", &self.path, e))?;
        if (meta.dev(), meta.ino()) != (self.dev, self.ino) {
            return Err(corrupted("the spill file was replaced"));
        }
        let mut header = [0u8; FILE_HEADER_LEN as usize];
        if file.read_exact_at(&mut header, 0).is_err()
            || header != record::file_header(self.number, self.size, self.dedicated)
        {
            return Err(corrupted("the spill file's header was altered"));
        }
        sys::advise_random(&file);
        Ok(file)
    }

    /// Maps the whole file read-only.
    #[cfg(not(miri))]
    fn map(&self, file: &File) -> Result<memmap2::Mmap, Error> {
        // SAFETY: mapping a file is unsafe because the mapped memory changes
        // if the file is modified while mapped, and touching a page past the
        // file's end raises SIGBUS. The file is ours: created with
        // `create_new` and mode 0600 in a dump directory this store holds
        // locked (a reopened one was checked to be the same inode, with our
        // header), sized once at creation and never truncated, renamed or
        // rewritten by the store: records are appended into space no reader
        // has been handed yet, and a record's bytes are never written again
        // once its value was stored. Holes are punched (with KEEP_SIZE, so
        // the length never moves) only in shared segments and only over
        // blocks that no record or reader in flight holds; a slice of this
        // mapping outlives the read only for a file of one record, which is
        // never punched, or with a pin on the value's blocks (see
        // `map_record` and `WeakPin`), which keeps them from being punched
        // for as long as the slice lives (a segment that is gone is never
        // punched again). So no byte anyone can still read turns to zeros.
        // Deleting the file keeps the mapping valid. The mapping covers the
        // size the file was created with, even if someone shortened it since,
        // so records appended later stay reachable; `read_mapped` checks the
        // file's current length right before every access, so no page past
        // the end is touched while the store is idle, and the checksum
        // catches altered bytes.
        unsafe {
            memmap2::MmapOptions::new()
                .len(self.size as usize)
                .map(file)
        }
        .map_err(|e| Error::io("mapping spill file", &self.path, e))
    }

    /// Reads back the `len`-byte value of the record `pin` holds, verified:
    /// the header must name this place and length, and the value must match
    /// the header's checksum, so altered bytes are never returned.
    ///
    /// With `copy` the value is copied out (and the copy is what gets
    /// verified); without, a value from a file of one record is handed out
    /// as a slice of the mapping, no copy. A value from a shared segment is
    /// always copied out: holes are punched in shared segments (never under
    /// a reader, whose pin holds the record's blocks), so their mapping is
    /// dropped and made again now and then (see
    /// [`punch_dead_blocks`](Self::punch_dead_blocks)) and a slice of it
    /// must not outlive the read.
    ///
    /// A copy is read through the file's mapping while the files are in the
    /// page cache, and with `pread` straight into its buffer while they are
    /// not (see [`cold`]) or while the segment's mapping would not live long
    /// enough to pay for itself (see [`MAP_AFTER_READS`]); a slice is always
    /// mapped.
    ///
    /// `kept` is the checksum of a headerless record (see
    /// [`record::headerless`]), taken while the record was alive: its value
    /// is read alone and checked against it.
    ///
    /// A copy is made in `buf` if it has room for it (an empty buffer kept
    /// for reloads), else in a new one.
    fn read(
        self: &Arc<Self>,
        pin: &Pin,
        len: u64,
        copy: bool,
        kept: Option<u64>,
        buf: Vec<u8>,
    ) -> Result<Bytes, Error> {
        let offset = pin.offset;
        let end = offset
            .checked_add(HEADER_LEN)
            .and_then(|x| x.checked_add(len))
            .ok_or_else(|| self.corrupted(offset, format!("record length {len} overflows")))?;
        let copy = copy || !self.dedicated;
        #[cfg(not(miri))]
        if !copy || ((len < cold::MIN_TIMED || !self.reads.cold()) && self.worth_mapping()) {
            return self.read_mapped(offset, end, copy.then_some(buf), kept);
        }
        // Miri cannot map files: it reads every record this way.
        let _ = copy;
        self.read_file(offset, end, kept, buf)
    }

    /// Whether a copy from this segment should be read through its mapping:
    /// always for a dedicated file (never punched, so its mapping lasts),
    /// and for a shared segment unless punching dropped its mapping fewer
    /// than [`MAP_AFTER_READS`] reads ago. Counts this read.
    #[cfg(not(miri))]
    fn worth_mapping(&self) -> bool {
        if self.dedicated || self.unmapped_reads.load(Ordering::Relaxed) >= MAP_AFTER_READS {
            return true;
        }
        // Racing readers may count past the mark: it only maps a read early.
        self.unmapped_reads.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Whether the segment is mapped now.
    #[cfg(all(test, not(miri)))]
    pub(super) fn is_mapped(&self) -> bool {
        self.handle.lock().as_ref().is_some_and(|h| h.map.is_some())
    }

    fn corrupted(&self, offset: u64, reason: String) -> Error {
        Error::Corrupted {
            path: self.path.clone(),
            offset,
            reason,
        }
    }

    /// Checks the header of the record `offset..end` found in `header`.
    fn check_header(&self, header: &[u8], offset: u64, end: u64) -> Result<(), Error> {
        let place = record::place(self.number, offset);
        record::check_header(header, place, end - offset - HEADER_LEN)
            .map_err(|reason| self.corrupted(offset, reason))
    }

    /// Reads the record `offset..end` with `pread`, into the buffer the
    /// value is handed out in, and verifies it there: first what the page
    /// cache holds, without waiting (which tells the read mode whether the
    /// record was cached), then the rest in one read. A file shortened
    /// behind the store's back gives a short read, reported as corrupted.
    ///
    /// The value of a headerless record (`kept`, its checksum) is read
    /// alone, and checked against its kept checksum.
    fn read_file(
        self: &Arc<Self>,
        offset: u64,
        end: u64,
        kept: Option<u64>,
        buf: Vec<u8>,
    ) -> Result<Bytes, Error> {
        let access = self.access(false)?;
        let start = read_from(offset, kept);
        let len = (end - start) as usize;
        let (mut buf, pad) = buffer_for(buf, len, start);
        let io = |e| Error::io("reading spill file", &self.path, e);
        sys::pread_append(&access.file, &mut buf, pad + len, start, true).map_err(io)?;
        self.reads.saw(len as u64, buf.len() >= pad + len);
        while buf.len() < pad + len {
            let at = start + (buf.len() - pad) as u64;
            match sys::pread_append(&access.file, &mut buf, pad + len, at, false) {
                Ok(0) => {
                    return Err(self.corrupted(
                        offset,
                        format!("file ends before the record's end at {end}"),
                    ))
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
        self.verified(buf, pad, offset, end, kept)
    }

    /// `buf`, read from the record `offset..end` after `pad` bytes of
    /// padding (see [`buffer_for`]), once verified: the value alone against
    /// `kept` for a headerless record, else header and value.
    fn verified(
        &self,
        buf: Vec<u8>,
        pad: usize,
        offset: u64,
        end: u64,
        kept: Option<u64>,
    ) -> Result<Bytes, Error> {
        let header = self.check_record(&buf[pad..], offset, end, kept)?;
        let skip = pad + header;
        Ok(value_after(buf, skip))
    }

    /// Verifies `read`, the bytes of the record `offset..end` as read: the
    /// value alone against `kept` for a headerless record, else header and
    /// value. Returns the bytes of header before the value in `read`.
    fn check_record(
        &self,
        read: &[u8],
        offset: u64,
        end: u64,
        kept: Option<u64>,
    ) -> Result<usize, Error> {
        match kept {
            Some(checksum) => {
                record::check_kept_checksum(record::checksum(read), checksum)
                    .map_err(|reason| self.corrupted(offset, reason))?;
                Ok(0)
            }
            None => {
                let (header, value) = read.split_at(HEADER_LEN as usize);
                self.check_header(header, offset, end)?;
                record::check_value(header, value).map_err(|r| self.corrupted(offset, r))?;
                Ok(HEADER_LEN as usize)
            }
        }
    }

    /// Checks that `file` still reaches `end`, the end of the record at
    /// `offset`, before its mapping is touched: a file truncated behind the
    /// store's back is reported as corrupted instead of faulting (SIGBUS).
    #[cfg(not(miri))]
    fn check_file_reaches(&self, file: &File, offset: u64, end: u64) -> Result<(), Error> {
        let file_len = file
            .metadata()
            .map_err(|e| Error::io("checking spill file", &self.path, e))?
            .len();
        if file_len < end {
            return Err(self.corrupted(
                offset,
                format!("file is {file_len} bytes, record ends at {end}"),
            ));
        }
        Ok(())
    }

    /// Reads the record `offset..end` with `pread`, if the file is open and
    /// the page cache holds all of the record: `None` otherwise, having
    /// waited for no disk and opened no file (`preadv2(RWF_NOWAIT)`; under
    /// Miri, always `None`). What is read is verified like any read. A file
    /// shortened behind the store's back reads short: `None` too, and the
    /// normal read reports it.
    #[cfg(feature = "tokio")]
    fn read_cached(
        &self,
        offset: u64,
        end: u64,
        kept: Option<u64>,
    ) -> Option<Result<Bytes, Error>> {
        let file = Arc::clone(&self.handle.lock().as_ref()?.file);
        self.referenced.store(true, Ordering::Relaxed);
        let start = read_from(offset, kept);
        let len = usize::try_from(end - start).ok()?;
        let (mut buf, pad) = buffer_for(Vec::new(), len, start);
        match sys::pread_append(&file, &mut buf, pad + len, start, true) {
            Ok(read) if read >= len => {}
            _ => return None,
        }
        Some(self.verified(buf, pad, offset, end, kept))
    }

    /// Reads the record `offset..end` through the file's mapping.
    ///
    /// The file's current length is checked before the mapping is touched, so
    /// a file truncated while the store was idle is reported as corrupted
    /// instead of faulting (SIGBUS).
    ///
    /// With `copy`, a buffer to copy the value into (see [`Self::read`]);
    /// without, the value is handed out as a slice of the mapping.
    #[cfg(not(miri))]
    fn read_mapped(
        self: &Arc<Self>,
        offset: u64,
        end: u64,
        copy: Option<Vec<u8>>,
        kept: Option<u64>,
    ) -> Result<Bytes, Error> {
        let access = self.access(true)?;
        self.check_file_reaches(&access.file, offset, end)?;
        let map = access.map.expect("asked for the mapping");
        if (map.len() as u64) < end {
            // Mapped while the file was shorter than it is now: it was altered.
            return Err(self.corrupted(
                offset,
                format!("mapping is {} bytes, record ends at {end}", map.len()),
            ));
        }
        let (start, end_at) = (offset as usize, end as usize);
        let header = &map[start..start + HEADER_LEN as usize];
        if kept.is_none() {
            self.check_header(header, offset, end)?;
        }
        let value_at = start + HEADER_LEN as usize;
        let (copied, sum) = self.read_value_mapped(&map, value_at..end_at, copy);
        match kept {
            Some(checksum) => record::check_kept_checksum(sum, checksum),
            None => record::check_checksum(header, sum),
        }
        .map_err(|r| self.corrupted(offset, r))?;
        Ok(match copied {
            Some(value) => value,
            None => Bytes::from_owner(MappedValue {
                start: value_at,
                end: end_at,
                map,
            }),
        })
    }

    /// The bytes of the record `pin` holds, verified, in a mapping that the
    /// caller keeps with `pin` to hand the value out without a copy (see
    /// [`RecordReader::read_unpromoted`]): the segment's own mapping if it
    /// has one now, else a mapping of the record's bytes alone, so that no
    /// read maps the whole segment again before it has served enough reads
    /// (see [`MAP_AFTER_READS`]). Returns the mapping and where the value
    /// lies in it.
    ///
    /// A value from the segment's mapping keeps that mapping alive after
    /// punching dropped the segment's hold on it, and holes punched over
    /// pages it maps then unmap those pages (a TLB shootdown); never under
    /// the value itself, whose blocks `pin` holds. A mapping of the record
    /// alone maps no page a hole is ever punched over.
    ///
    /// As in [`read_mapped`](Self::read_mapped), the file's current length
    /// is checked first, so a file truncated behind the store's back is
    /// reported as corrupted instead of faulting.
    #[cfg(not(miri))]
    fn map_record(
        self: &Arc<Self>,
        pin: &Pin,
        kept: Option<u64>,
    ) -> Result<(HandedOutMap, std::ops::Range<usize>), Error> {
        let offset = pin.offset;
        let end = offset.checked_add(pin.len).ok_or_else(|| {
            self.corrupted(offset, format!("record length {} overflows", pin.len))
        })?;
        let access = self.access(false)?;
        self.check_file_reaches(&access.file, offset, end)?;
        let start = read_from(offset, kept);
        let too_long = |_| self.corrupted(offset, format!("record ends at {end}"));
        let (start_at, end_at) = (
            usize::try_from(start).map_err(too_long)?,
            usize::try_from(end).map_err(too_long)?,
        );
        let shared = self.handle.lock().as_ref().and_then(|h| h.map.clone());
        let (map, range) = match shared {
            Some(map) if map.len() >= end_at => (HandedOutMap::Segment(map), start_at..end_at),
            _ => {
                // SAFETY: as for `map` (the file is ours, never truncated or
                // rewritten by the store, holes are punched with KEEP_SIZE
                // only over blocks nobody holds, and the length was checked
                // just above), and more narrowly: this mapping covers the
                // bytes of one record, whose blocks `pin` holds; the caller
                // keeps that hold for as long as the mapping lives (a
                // `PinnedValue` owns both, and drops the mapping first), and
                // a segment that is gone is never punched again, so no hole
                // is ever punched under it.
                //
                // Not populated up front: `MAP_POPULATE` walks the pages one
                // by one (1 MiB reloads ran 0.8x as fast with it), where the
                // faults of the checksum's pass map 16 pages each.
                let own = unsafe {
                    memmap2::MmapOptions::new()
                        .offset(start)
                        .len(end_at - start_at)
                        .map(&*access.file)
                }
                .map_err(|e| Error::io("mapping spill file", &self.path, e))?;
                let len = own.len();
                (HandedOutMap::Record(own), 0..len)
            }
        };
        let header = self.check_record(&map.bytes()[range.clone()], offset, end, kept)?;
        let value_at = range.start + header;
        Ok((map, value_at..range.end))
    }

    /// Copies (`copy`) or only checksums the mapped bytes of `range`, in
    /// chunks. A value large enough to tell is timed: if it waited for the
    /// disk, the rest is requested whole and the store reads copies with
    /// `pread` from then on (see [`cold`]). A value handed out zero-copy
    /// while reads are cold is requested whole before it is touched, so it
    /// does not fault in page by page either.
    #[cfg(not(miri))]
    fn read_value_mapped(
        &self,
        map: &memmap2::Mmap,
        range: std::ops::Range<usize>,
        copy: Option<Vec<u8>>,
    ) -> (Option<Bytes>, u64) {
        let len = range.len() as u64;
        let timed = len >= cold::MIN_TIMED;
        let will_need = |from: usize| {
            // Advice only: if refused, the pages fault in as before.
            let _ = map.advise_range(
                memmap2::Advice::WillNeed,
                range.start + from,
                range.len() - from,
            );
        };
        let was_cold = timed && self.reads.cold();
        if was_cold {
            will_need(0);
        }
        let copy = copy.map(|buf| buffer_for(buf, range.len(), range.start as u64));
        let pad = copy.as_ref().map_or(0, |(_, pad)| *pad);
        let (copied, sum, waited) = cold::read_chunks(
            &map[range.clone()],
            copy.map(|(buf, _)| buf),
            timed,
            will_need,
        );
        if timed && (waited || was_cold) {
            self.reads.saw(len, !waited);
        }
        (copied.map(|buf| value_after(buf, pad)), sum)
    }

    /// Takes the descriptor and the mapping out, to be dropped (closing
    /// them) by the caller; values handed out keep their mapping. `None` if
    /// the file was not open. Called by the file cache.
    pub(super) fn close(&self) -> Option<Closed> {
        self.handle.lock().take().map(Closed)
    }

    /// Whether the file cache should spare this file once more (and forget
    /// that it was used).
    pub(super) fn take_referenced(&self) -> bool {
        self.referenced.swap(false, Ordering::Relaxed)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let was_open = self.handle.lock().take().is_some();
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino);
        let dir = self.dir.upgrade();
        // Delete only the file we created, through a dump dir that is still the
        // one we locked: never a file someone put in its place.
        if ours && dir.as_ref().is_none_or(|d| d.dir_is_ours()) {
            let _ = std::fs::remove_file(&self.path);
        }
        if let Some(dir) = dir {
            dir.segment_dropped(self.size, self.accounted(), was_open);
        }
    }
}

/// A value handed out as a slice of a dedicated file's mapping: it keeps
/// the mapping, not the file. Dedicated files are never punched; once their
/// record goes the file is deleted, and the value's pages stay valid (and
/// occupied) until the value is dropped.
#[cfg(not(miri))]
struct MappedValue {
    map: Arc<memmap2::Mmap>,
    start: usize,
    end: usize,
}

#[cfg(not(miri))]
impl AsRef<[u8]> for MappedValue {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }
}

/// The mapping a value of a shared segment is handed out in (see
/// [`Segment::map_record`]).
#[cfg(not(miri))]
enum HandedOutMap {
    /// The segment's mapping.
    Segment(Arc<memmap2::Mmap>),
    /// A mapping of the value's record alone.
    Record(memmap2::Mmap),
}

#[cfg(not(miri))]
impl HandedOutMap {
    fn bytes(&self) -> &[u8] {
        match self {
            HandedOutMap::Segment(map) => map,
            HandedOutMap::Record(map) => map,
        }
    }
}

/// A value of a shared segment handed out without a copy: where it lies in
/// a mapping, and the pin that keeps its blocks from being punched while
/// the mapping lives, without keeping the segment (so `clear`, `cleanup`
/// and dropping the store delete its file as they would without the
/// value). Fields drop in order: the mapping before the pin.
#[cfg(not(miri))]
struct PinnedValue {
    map: HandedOutMap,
    range: std::ops::Range<usize>,
    _pin: WeakPin,
}

#[cfg(not(miri))]
impl AsRef<[u8]> for PinnedValue {
    fn as_ref(&self) -> &[u8] {
        &self.map.bytes()[self.range.clone()]
    }
}

/// What a shared segment keeps behind one lock: its block map, and the
/// checksums of its live headerless records by offset (what their headers
/// would hold; at most one per 16 KiB of the segment), so that a reader
/// takes its hold and its checksum in one critical section.
struct Book {
    blocks: BlockMap,
    checksums: HashMap<u32, u32>,
}

impl Book {
    fn checksum(&self, offset: u64) -> Option<u64> {
        self.checksums.get(&(offset as u32)).map(|&c| u64::from(c))
    }
}

impl std::ops::Deref for Book {
    type Target = BlockMap;
    fn deref(&self) -> &BlockMap {
        &self.blocks
    }
}

impl std::ops::DerefMut for Book {
    fn deref_mut(&mut self) -> &mut BlockMap {
        &mut self.blocks
    }
}

/// The bytes of a shared segment's record `offset..offset + len` that its
/// holds cover: a headerless record's value only (its 32 header bytes lie
/// in the block of the record before, which its holds would otherwise
/// keep from being punched), else the whole record.
fn held(offset: u64, len: u64) -> (u64, u64) {
    if record::headerless(len - HEADER_LEN) {
        (offset + HEADER_LEN, len - HEADER_LEN)
    } else {
        (offset, len)
    }
}

/// Copies of at least this many bytes are placed at the same offset in a
/// cache line as the bytes they copy (see [`buffer_for`]). Not smaller
/// ones: padding every reload of 64 KiB raised spillbench's 2-thread insert
/// p99 from about 5 to 8 µs (buffers 63 bytes larger than the values the
/// workload inserts, in the same glibc bins), while values this large are
/// rarer and their copies are where alignment pays: 1 MiB reloads ran about
/// a tenth faster (BENCHMARKS.md, "Buffers that stay mapped" and "Large
/// copies placed where their source sits in a line").
pub(super) const ALIGNED_COPY_MIN: usize = 256 * 1024;

/// The cache line, for [`buffer_for`].
const LINE: usize = 64;

/// `buf` emptied (or a new buffer if it has no room) to read `len` bytes
/// into from file offset `from`, and `pad`: the buffer starts with `pad`
/// zero bytes, so that the bytes read land at the same offset in a cache
/// line as in the file. The mapping and the page cache are page aligned, so
/// that is where the copy reads them; copies of large values (`rep movsb`)
/// run at half speed or less when source and destination are 16 bytes
/// apart in a line, where a heap buffer of a size glibc maps by itself
/// always starts (BENCHMARKS.md, "Buffers that stay mapped").
fn buffer_for(mut buf: Vec<u8>, len: usize, from: u64) -> (Vec<u8>, usize) {
    let aligned = len >= ALIGNED_COPY_MIN;
    if buf.capacity() < len {
        buf = Vec::with_capacity(if aligned { len + LINE - 1 } else { len });
    }
    buf.clear();
    // Wrapping arithmetic stays exact modulo `LINE`, a power of two.
    let pad = (from as usize).wrapping_sub(buf.as_ptr().addr()) % LINE;
    // A kept buffer of exactly the value's size is used unaligned.
    let pad = if aligned && buf.capacity() >= len + pad {
        pad
    } else {
        0
    };
    buf.resize(pad, 0);
    (buf, pad)
}

/// The bytes of `buf` after its first `skip`, without a copy.
fn value_after(buf: Vec<u8>, skip: usize) -> Bytes {
    let mut value = Bytes::from(buf);
    value.advance(skip);
    value
}

/// Where a read of the record at `offset` starts: at its value for a
/// headerless record (`kept`, its checksum, see [`record::headerless`]),
/// else at its header.
fn read_from(offset: u64, kept: Option<u64>) -> u64 {
    if kept.is_some() {
        offset + HEADER_LEN
    } else {
        offset
    }
}

/// A reader's hold on a record's blocks and its file: while it lives, those
/// blocks are neither punched nor deleted.
struct Pin {
    segment: Arc<Segment>,
    offset: u64,
    /// Header and value bytes.
    len: u64,
    /// Set when the hold went to a [`WeakPin`], which releases it.
    handed_off: bool,
}

impl Pin {
    /// Holds the record `offset..offset + len` of `segment`, which a live
    /// record holds; and returns its checksum if it is headerless (see
    /// [`record::headerless`]), taken under the same lock.
    fn new(segment: &Arc<Segment>, offset: u64, len: u64) -> (Self, Option<u64>) {
        let mut kept = None;
        if let Some(blocks) = &segment.blocks {
            let mut b = blocks.lock();
            let (held_at, held_len) = held(offset, len);
            b.hold(held_at, held_len);
            if held_at != offset {
                let checksum = b.checksum(offset);
                debug_assert!(checksum.is_some(), "a live headerless record's checksum");
                // No CRC-32 equals this: a lost checksum reads as corrupted.
                kept = Some(checksum.unwrap_or(u64::MAX));
            }
        }
        let pin = Pin {
            segment: Arc::clone(segment),
            offset,
            len,
            handed_off: false,
        };
        (pin, kept)
    }

    /// The same hold, without keeping the segment (see [`WeakPin`]).
    #[cfg(not(miri))]
    fn downgrade(mut self) -> WeakPin {
        self.handed_off = true;
        WeakPin {
            segment: Arc::downgrade(&self.segment),
            offset: self.offset,
            len: self.len,
        }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        if self.segment.blocks.is_some() && !self.handed_off {
            self.segment.release(self.offset, self.len, false);
        }
    }
}

/// A hold on a record's blocks that does not keep its segment, for a value
/// handed out as a slice of a mapping: while the segment lives, its blocks
/// are never punched; once the segment goes (its records gone, the store
/// cleared, cleaned up or dropped), its file is deleted as it would be
/// without the value, and the mapping the value keeps stays valid (an
/// unlinked file's pages live as long as they are mapped), and nothing
/// punches a deleted file.
#[cfg(not(miri))]
struct WeakPin {
    segment: Weak<Segment>,
    offset: u64,
    len: u64,
}

#[cfg(not(miri))]
impl Drop for WeakPin {
    fn drop(&mut self) {
        if let Some(segment) = self.segment.upgrade().filter(|s| s.blocks.is_some()) {
            segment.release(self.offset, self.len, false);
        }
    }
}

/// One value's copy on disk: a record in a segment.
///
/// While a `Record` exists its blocks stay allocated and its file exists;
/// dropping it frees the blocks only it held (by punching a hole), and
/// dropping the last record of a file deletes the file. Sixteen bytes:
/// shared segments are at most 1 GiB (`MAX_SEGMENT_SIZE` in `config.rs`),
/// so offsets and lengths fit in 32 bits, and a dedicated file's one record
/// runs from the file header to the end of the file.
pub(crate) struct Record {
    segment: Arc<Segment>,
    offset: u32,
    /// Header and value bytes, for records in shared segments.
    len: u32,
}

impl Record {
    pub(super) fn segment(&self) -> &Arc<Segment> {
        &self.segment
    }

    pub(super) fn offset(&self) -> u64 {
        u64::from(self.offset)
    }

    /// Header and value bytes.
    pub(super) fn record_len(&self) -> u64 {
        if self.segment.dedicated {
            self.segment.size - FILE_HEADER_LEN
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
        Arc::ptr_eq(&self.segment, &reader.pin.segment) && self.offset() == reader.pin.offset
    }

    /// Whether this record has no header on disk (see
    /// [`record::headerless`]): its segment keeps its checksum.
    pub(super) fn is_headerless(&self) -> bool {
        !self.segment.dedicated && record::headerless(self.value_len())
    }

    /// A handle to read this record with no lock held. It holds the record's
    /// blocks, and a headerless record's checksum, so the bytes stay
    /// readable and checkable even if the record is dropped meanwhile.
    pub(crate) fn reader(&self) -> RecordReader {
        let (pin, kept) = Pin::new(&self.segment, self.offset(), self.record_len());
        RecordReader { pin, kept }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        // Releasing a record may delete its file: never under a shard lock.
        crate::sync::lock_tracking::assert_none_held("a spill record was dropped");
        self.segment.release(self.offset(), self.record_len(), true);
    }
}

/// Reads a record outside the shard's lock. It holds the record's blocks and
/// file, not the record stored: if the value is removed meanwhile, the read
/// still sees the bytes it had.
pub(crate) struct RecordReader {
    pin: Pin,
    /// A headerless record's checksum (see [`Record::reader`]).
    kept: Option<u64>,
}

impl RecordReader {
    /// The value's length in bytes.
    pub(crate) fn value_len(&self) -> u64 {
        self.pin.len - HEADER_LEN
    }

    /// Reads back the value, verified, for handing out: from a file of its
    /// own, a slice of the file's mapping (no copy; it keeps the mapping
    /// alive while it lives, so it is not for keeping resident); from a
    /// shared segment, a copy of its own. See [`Segment::read`].
    pub(crate) fn read_mapped(&self) -> Result<Bytes, Error> {
        self.pin
            .segment
            .read(&self.pin, self.value_len(), false, self.kept, Vec::new())
    }

    /// Reads back the value, verified, for handing out without bringing it
    /// back into memory: without a copy, as a slice of a mapping (of a file
    /// of its own; or of a shared segment, holding the record's blocks while
    /// it lives: see [`Segment::map_record`]). A copy if the record cannot be
    /// mapped (the process's limit on mappings, say), and under Miri, which
    /// cannot map files.
    pub(crate) fn read_unpromoted(self) -> Result<Bytes, Error> {
        #[cfg(not(miri))]
        if !self.pin.segment.dedicated {
            let segment = Arc::clone(&self.pin.segment);
            return match segment.map_record(&self.pin, self.kept) {
                Ok((map, range)) => Ok(Bytes::from_owner(PinnedValue {
                    map,
                    range,
                    _pin: self.pin.downgrade(),
                })),
                Err(Error::Io(_)) => self.read_copy_into(Vec::new()),
                Err(err) => Err(err),
            };
        }
        self.read_mapped()
    }

    /// Whether recent reads found the spill files out of the page cache
    /// (see [`cold`]).
    pub(crate) fn reads_cold(&self) -> bool {
        self.pin.segment.reads.cold()
    }

    /// Reads back the value, verified, as a heap copy that does not depend
    /// on the file: for values brought back into memory.
    #[cfg(test)]
    pub(crate) fn read_copy(&self) -> Result<Bytes, Error> {
        self.read_copy_into(Vec::new())
    }

    /// [`read_copy`](Self::read_copy) into `buf` if it has room (an empty
    /// buffer kept for reloads), else into a new buffer.
    pub(crate) fn read_copy_into(&self, buf: Vec<u8>) -> Result<Bytes, Error> {
        self.pin
            .segment
            .read(&self.pin, self.value_len(), true, self.kept, buf)
    }

    /// [`read_copy`](Self::read_copy) if it needs no wait for the disk and
    /// no file opened: `None` when the page cache does not hold the whole
    /// record, or the file is closed. For callers that must not block (the
    /// async facade's inline path).
    #[cfg(feature = "tokio")]
    pub(crate) fn read_copy_if_cached(&self) -> Option<Result<Bytes, Error>> {
        let offset = self.pin.offset;
        let end = offset.checked_add(self.pin.len)?;
        self.pin.segment.read_cached(offset, end, self.kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_copies_start_where_their_source_sits_in_a_line() {
        for from in [0u64, 16, 32, 4096 + 48, 1 << 30] {
            let (buf, pad) = buffer_for(Vec::new(), ALIGNED_COPY_MIN, from);
            assert_eq!(buf.len(), pad);
            assert!(buf.iter().all(|&b| b == 0));
            assert_eq!((buf.as_ptr().addr() + pad) % LINE, from as usize % LINE);
            assert!(buf.capacity() >= pad + ALIGNED_COPY_MIN);
        }
        let (small, pad) = buffer_for(Vec::new(), 100, 17);
        assert_eq!(
            (pad, small.capacity()),
            (0, 100),
            "small copies are not padded"
        );
        // A kept buffer with room only for the value is used as it is.
        let kept = Vec::<u8>::with_capacity(ALIGNED_COPY_MIN);
        let at = kept.as_ptr();
        let from = (at.addr() + 16) as u64;
        let (buf, pad) = buffer_for(kept, ALIGNED_COPY_MIN, from);
        assert_eq!((buf.as_ptr(), pad), (at, 0));
        let value = value_after(vec![1, 2, 3, 4], 3);
        assert_eq!(&value[..], [4]);
    }
}
