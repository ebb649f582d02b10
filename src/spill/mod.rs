//! The dump directory: where spilled values live while they are out of memory.
//!
//! - **Naming**: files are named `spill-NNNNNNNN.seg` by a counter, never by
//!   a key, so no key can reach outside the directory. A name that already
//!   exists (a leftover, or a planted file or symlink) is skipped, never
//!   opened. Files are created 0600, and a dump dir the store creates 0700:
//!   spilled values were in the process's memory and stay private.
//! - **Layout**: every file starts with a 64-byte header ([`record`]: magic,
//!   number, length, checksum). Small values are appended after it as
//!   records to shared segment files of `segment_size` bytes; a value whose
//!   record is larger than a quarter of that gets a file of its own, so it
//!   can be handed out as a slice of its mapping, without a copy.
//! - **Reading back** ([`cold`]): through the file's mapping while the files
//!   are in the page cache; copies with one `pread` into their own buffer
//!   while recent reads found them out of it, and from a shared segment
//!   whose mapping punching dropped until it has served enough reads to be
//!   worth mapping again.
//! - **Space comes back promptly** ([`blocks`]): records and readers in
//!   flight hold the file-system blocks of a shared segment they cover;
//!   when the last hold on a block goes (a value removed, replaced, brought
//!   back without its copy, moved by compaction), it is dead, and holes are
//!   punched over dead blocks (`fallocate(PUNCH_HOLE)`) in batches of a
//!   sixteenth of a segment (by the spiller thread, within a [`PUNCH_TICK`]
//!   of a batch coming due), and over all of them as soon as a write would
//!   go past the disk budget or meets a full disk: the space returns to the
//!   file system without waiting for the whole file to empty. A file is
//!   deleted as soon as no record needs it. Blocks that dead and live
//!   records share stay until compaction moves the live ones. Where the
//!   file system cannot punch holes (`EOPNOTSUPP`: some network and older
//!   file systems), the store stops trying and compaction alone reclaims
//!   space, as before.
//! - **A disk budget**: the store counts the blocks its files occupy, as
//!   `du` does, plus an allowance for the file system's extent maps, and
//!   prices every write before making it; a write that would go past
//!   `max_disk_size` is refused whole with [`Error::DiskLimit`].
//! - **Bounded descriptors** ([`cache`]): at most `max_open_files` files are
//!   open (descriptor and mapping) at a time; others are reopened, and
//!   checked to be ours, when needed.
//! - **No orphans**: when a store opens a dump dir (its lock free, so no
//!   live store uses it), spill files left by an earlier store that died are
//!   recognised by their header, not by their name, and deleted.
//! - **Exclusivity**: a lock file, `.spillstore.lock` (0600), holds an
//!   exclusive lock for the store's lifetime, so a second store on the same
//!   directory is refused.
//!
//! The only `unsafe` code of the crate lives here: the mapping in
//! [`segment`]; `fallocate`, `preadv2`, `getrusage` and `getrlimit` in
//! [`sys`].

mod blocks;
mod cache;
mod cold;
mod record;
mod segment;
mod sys;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use crate::sync::Mutex;
use bytes::Bytes;

use cache::FileCache;
use record::{FILE_HEADER_LEN, HEADER_LEN};
use segment::Segment;
pub(crate) use segment::{Record, RecordReader};

use crate::background::Waker;
use crate::config::Config;
use crate::error::Error;

/// Name of the lock file inside the dump directory.
pub(crate) const LOCK_FILE_NAME: &str = ".spillstore.lock";

/// Records written by one vectored write, at most (up to three buffers
/// each: zeros before a page-aligned value, a header, the value; within
/// the kernel's `IOV_MAX` of 1024).
const MAX_RECORDS_PER_WRITE: usize = 256;

/// How often the punching thread runs by itself while batches of dead
/// blocks keep coming due (see [`SpillDir::next_punch_tick`]): the most a
/// batch waits, beyond its size, before its space returns.
pub(crate) const PUNCH_TICK: Duration = Duration::from_millis(5);

/// How long the punching thread goes on ticking after the last batch came
/// due, before it sleeps until woken.
const PUNCH_IDLE: Duration = Duration::from_millis(50);

/// An open, locked dump directory.
pub(crate) struct SpillDir {
    shared: Arc<DirShared>,
    lock_file: File,
    /// Whether we created the lock file (and so may delete it).
    lock_file_created: bool,
}

/// What segments need to reach back to: the writer, the cache and the
/// counters.
pub(crate) struct DirShared {
    path: PathBuf,
    /// Device and inode of the directory when it was locked.
    identity: (u64, u64),
    segment_size: u64,
    /// File-system block size: the unit of allocation and of holes.
    block: u64,
    /// `max_disk_size`.
    limit: Option<u64>,
    writer: Mutex<Writer>,
    cache: FileCache,
    next_file_number: AtomicU64,
    files: AtomicUsize,
    file_bytes: AtomicU64,
    /// Bytes the spill files occupy on disk (see [`blocks`]), plus space
    /// priced for writes in flight. Never above `limit`.
    allocated: AtomicU64,
    /// Bytes of live records in all files: what compaction could shrink to.
    live_bytes: AtomicU64,
    /// Cleared when the file system refuses to punch a hole. Shared with
    /// the segments, which ask it for every record compaction looks at.
    can_punch: Arc<AtomicBool>,
    /// Live [`BulkRelease`] guards: releases do not punch meanwhile.
    bulk_releases: AtomicUsize,
    /// Segments with dead blocks not punched yet.
    dead: Mutex<Vec<Weak<Segment>>>,
    /// Segments with a whole batch of dead blocks gathered, waiting for the
    /// store's background thread to punch them (see `dead_blocks`).
    due: Mutex<Vec<Weak<Segment>>>,
    /// Wakes the thread that punches `due` segments; unset, the thread that
    /// drops the last hold on a batch punches it.
    puncher: OnceLock<Waker>,
    /// Records let go of on an async executor's thread, for the punching
    /// thread to drop (see [`SpillDir::drop_in_background`]).
    doomed: Mutex<Vec<Record>>,
    /// Set while that thread runs every [`PUNCH_TICK`] by itself: batches
    /// that come due meanwhile need not wake it.
    punch_ticking: AtomicBool,
    /// Set when a batch comes due, cleared when the thread takes them: what
    /// it checks before it stops ticking (see [`SpillDir::next_punch_tick`]).
    punch_pending: AtomicBool,
    /// When the thread last found a batch pending; `None` while it does
    /// not tick.
    punch_seen: Mutex<Option<Instant>>,
    /// Dead bytes a segment gathers before they are punched in one batch.
    punch_batch: u64,
    punched_bytes: AtomicU64,
    compacting: AtomicBool,
    /// `allocated` when a pass last ended on a failed write (disk full, or
    /// the disk budget), `u64::MAX` otherwise: no pass is due again until
    /// space was freed below it, so a stalled pass is not retried on every
    /// insert and remove.
    stalled_at: AtomicU64,
    compactions: AtomicU64,
    compacted_bytes: AtomicU64,
    orphans: Orphans,
    /// Whether records are read through mappings or with `pread` now.
    reads: Arc<cold::ReadPolicy>,
}

/// The segment small records are currently appended to.
#[derive(Default)]
struct Writer {
    active: Option<Arc<Segment>>,
    /// Bytes of `active` handed out so far, its file header included.
    used: u64,
}

/// Spill files of an earlier store deleted when this one opened the dir.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Orphans {
    pub(crate) files: u64,
    /// Bytes they occupied on disk.
    pub(crate) bytes: u64,
}

/// How much the dump directory holds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DiskUsage {
    pub(crate) files: usize,
    /// Lengths of the files, added up.
    pub(crate) bytes: u64,
    /// Bytes they occupy on disk.
    pub(crate) allocated: u64,
    /// Bytes of the records still needed, headers included.
    pub(crate) live: u64,
    pub(crate) limit: Option<u64>,
    pub(crate) punched_bytes: u64,
    pub(crate) open_files: usize,
    pub(crate) max_open_files: usize,
    pub(crate) compactions: u64,
    pub(crate) compacted_bytes: u64,
    pub(crate) orphans: Orphans,
}

/// While it lives, dropping records punches no holes: for dropping most
/// records at once (`clear`, dropping the store), when their files are about
/// to be deleted whole and punching their blocks first would be wasted
/// system calls. A file that survives is listed, and punched with the next
/// batch that is needed.
pub(crate) struct BulkRelease<'a>(&'a DirShared);

impl Drop for BulkRelease<'_> {
    fn drop(&mut self) {
        self.0.bulk_releases.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Clears the compaction flag when a compaction pass ends.
pub(crate) struct CompactionGuard<'a>(&'a DirShared);

impl CompactionGuard<'_> {
    /// Counts `bytes` of records moved by this pass.
    pub(crate) fn moved(&self, bytes: u64) {
        self.0.compacted_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Records how the pass ended: `stalled` if a write failed, so that
    /// no pass is due again until space is freed.
    pub(crate) fn ended(&self, stalled: bool) {
        let at = if stalled {
            self.0.allocated.load(Ordering::Relaxed)
        } else {
            u64::MAX
        };
        self.0.stalled_at.store(at, Ordering::Relaxed);
    }
}

impl Drop for CompactionGuard<'_> {
    fn drop(&mut self) {
        self.0.compactions.fetch_add(1, Ordering::Relaxed);
        self.0.compacting.store(false, Ordering::Release);
    }
}

#[cfg(test)]
impl SpillDir {
    /// Makes the next reads behave as if the files were out of the page
    /// cache (see [`cold`]), for tests of what only cold reads do.
    pub(crate) fn pretend_reads_are_cold(&self) {
        self.shared.reads.saw(cold::MIN_TIMED, false);
    }
}

impl SpillDir {
    /// Opens (creating it, mode 0700, if needed) and locks the dump
    /// directory at `path`, then deletes the spill files an earlier store
    /// left in it. Takes `segment_size`, `max_disk_size` and
    /// `max_open_files` from `config`.
    pub(crate) fn open(path: PathBuf, config: &Config) -> Result<Self, Error> {
        match fs::metadata(&path) {
            Ok(m) if !m.is_dir() => {
                return Err(Error::InvalidConfig(format!(
                    "dump_dir {} exists and is not a directory",
                    path.display()
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&path)
                    .map_err(|e| Error::io("creating dump dir", &path, e))?;
            }
            Err(e) => return Err(Error::io("opening dump dir", &path, e)),
        }
        let dir_meta = fs::metadata(&path).map_err(|e| Error::io("opening dump dir", &path, e))?;
        let identity = (dir_meta.dev(), dir_meta.ino());

        let lock_path = path.join(LOCK_FILE_NAME);
        let (lock_file, lock_file_created) = lock(&lock_path, &path)?;
        let orphans = remove_orphans(&path);
        let block = block_size(dir_meta.blksize());
        let open_files = config
            .max_open_files
            .unwrap_or_else(cache::default_capacity);
        Ok(SpillDir {
            shared: Arc::new(DirShared {
                path,
                identity,
                segment_size: config.segment_size,
                block,
                limit: config.max_disk_size,
                writer: Mutex::new(Writer::default()),
                cache: FileCache::new(open_files),
                next_file_number: AtomicU64::new(0),
                files: AtomicUsize::new(0),
                file_bytes: AtomicU64::new(0),
                allocated: AtomicU64::new(0),
                live_bytes: AtomicU64::new(0),
                can_punch: Arc::new(AtomicBool::new(true)),
                bulk_releases: AtomicUsize::new(0),
                dead: Mutex::new(Vec::new()),
                due: Mutex::new(Vec::new()),
                puncher: OnceLock::new(),
                doomed: Mutex::new(Vec::new()),
                punch_ticking: AtomicBool::new(false),
                punch_pending: AtomicBool::new(false),
                punch_seen: Mutex::new(None),
                punch_batch: (config.segment_size / 16).max(block),
                punched_bytes: AtomicU64::new(0),
                compacting: AtomicBool::new(false),
                stalled_at: AtomicU64::new(u64::MAX),
                compactions: AtomicU64::new(0),
                compacted_bytes: AtomicU64::new(0),
                orphans,
                reads: Arc::default(),
            }),
            lock_file,
            lock_file_created,
        })
    }

    /// The dump directory.
    pub(crate) fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Files and bytes the store's spill files occupy now, and the counters.
    pub(crate) fn usage(&self) -> DiskUsage {
        let shared = &self.shared;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DiskUsage {
            files: shared.files.load(Ordering::Relaxed),
            bytes: get(&shared.file_bytes),
            allocated: get(&shared.allocated),
            live: get(&shared.live_bytes),
            limit: shared.limit,
            punched_bytes: get(&shared.punched_bytes),
            open_files: shared.cache.open(),
            max_open_files: shared.cache.capacity(),
            compactions: get(&shared.compactions),
            compacted_bytes: get(&shared.compacted_bytes),
            orphans: shared.orphans,
        }
    }

    /// Starts a compaction pass if no other pass is running and the files
    /// are wasteful: their lengths add up to more than twice the live
    /// records' bytes (four times where holes are punched; plus four
    /// segments of slack, so small stores do not churn: many sparse files
    /// cost descriptors and mappings), or the space they occupy on disk
    /// exceeds twice the live bytes (plus the same slack, or an eighth of
    /// `max_disk_size` if that is less). Holes return most dead space at
    /// once; what they cannot (blocks that live and dead records share) is
    /// what the second test catches.
    ///
    /// Each pass moves the live records out of sparse segments (sealed, and
    /// at most half live by space on disk, or by length at most half, a
    /// quarter where holes are punched), so it costs at most the live bytes
    /// and frees at least as much as it moves: amortized, a constant factor
    /// on spills.
    pub(crate) fn start_compaction(&self, force: bool) -> Option<CompactionGuard<'_>> {
        let shared = &self.shared;
        if !(force || self.compaction_due()) || shared.compacting.swap(true, Ordering::AcqRel) {
            return None;
        }
        shared.punch_all_dead_blocks();
        Some(CompactionGuard(shared))
    }

    /// Whether the files' lengths exceed twice the live records' bytes (four
    /// times where holes are punched: see [`length_factor`]) plus four
    /// segments of slack, or their allocated blocks exceed twice the live
    /// bytes plus that slack (an eighth of the disk budget at most):
    /// a few relaxed loads, cheap enough for every insert and remove to ask.
    /// After a pass that stalled on a failed write, not before some space
    /// was freed.
    pub(crate) fn compaction_due(&self) -> bool {
        let shared = &self.shared;
        let files = shared.file_bytes.load(Ordering::Relaxed);
        let allocated = shared.allocated.load(Ordering::Relaxed);
        if allocated >= shared.stalled_at.load(Ordering::Relaxed) {
            return false;
        }
        let live = shared.live_bytes.load(Ordering::Relaxed);
        let slack = shared.segment_size.saturating_mul(4);
        let disk_slack = shared.limit.map_or(slack, |l| slack.min(l / 8));
        let length_bound = live
            .saturating_mul(length_factor(shared.can_punch.load(Ordering::Relaxed)))
            .saturating_add(slack);
        files > length_bound || allocated > live.saturating_mul(2).saturating_add(disk_slack)
    }

    /// Bytes that dropping `records` would return to the file system: the
    /// whole file where no other record or reader needs it (deleted at
    /// once), else the blocks only these records hold, if holes can be
    /// punched (they are, with the segment's next batch, and at the latest
    /// before a write is refused for the budget). For a caller deciding
    /// which disk copies to give up when a write meets [`Error::DiskLimit`]:
    /// drop them, then write again.
    // For the shard's side of the disk budget; only tests call it yet.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn freed_by_dropping(&self, records: &[&Record]) -> u64 {
        let can_punch = self.shared.can_punch.load(Ordering::Relaxed);
        // Each segment, with the (offset, length) of its records in the set.
        type Ranges<'a> = (&'a Arc<Segment>, Vec<(u64, u64)>);
        let mut by_segment: Vec<Ranges<'_>> = Vec::new();
        for record in records {
            let range = (record.offset(), record.record_len());
            match by_segment
                .iter_mut()
                .find(|(s, _)| Arc::ptr_eq(s, record.segment()))
            {
                Some((_, ranges)) => ranges.push(range),
                None => by_segment.push((record.segment(), vec![range])),
            }
        }
        by_segment
            .iter()
            .map(|(segment, ranges)| segment.freed_by_releasing(ranges, can_punch))
            .sum()
    }

    /// From now on, a batch of dead blocks gathered by dropping records is
    /// not punched by the thread that dropped them: `puncher` is woken to
    /// call [`punch_due`](Self::punch_due) instead. Set once, before the
    /// store is shared.
    pub(crate) fn punch_in_background(&self, puncher: Waker) {
        let _ = self.shared.puncher.set(puncher);
    }

    /// Drops the records handed over since the last call, then punches
    /// the batches of dead blocks gathered: the background thread's half of
    /// [`punch_in_background`](Self::punch_in_background) and of
    /// [`drop_in_background`](Self::drop_in_background).
    pub(crate) fn punch_due(&self) {
        self.shared.drop_doomed();
        self.shared.punch_due();
    }

    /// Whether [`drop_in_background`](Self::drop_in_background) hands
    /// records to a background thread (the store has one).
    #[cfg(feature = "tokio")]
    pub(crate) fn drops_in_background(&self) -> bool {
        self.shared.puncher.get().is_some()
    }

    /// Hands `records` to the background thread to drop, for a caller that
    /// must not wait for what dropping one may do: delete its file (the
    /// last record of it) or, with no background thread to do it, punch a
    /// hole. The thread drops them on its next run, within a
    /// [`PUNCH_TICK`] while records keep coming; until then their space
    /// stays taken, and the next write drops them before it prices its
    /// records. Without a background thread, drops them here.
    #[cfg(any(test, feature = "tokio"))]
    pub(crate) fn drop_in_background(&self, records: Vec<Record>) {
        let Some(puncher) = self.shared.puncher.get() else {
            return; // `records` is dropped here
        };
        if records.is_empty() {
            return;
        }
        self.shared.doomed.lock().extend(records);
        self.shared.punch_work_came(puncher);
    }

    /// Drops the records handed to [`drop_in_background`](Self::drop_in_background)
    /// now, on the calling thread.
    pub(crate) fn drop_handed_over(&self) {
        self.shared.drop_doomed();
    }

    /// For the punching thread, after each of its runs: `Some(PUNCH_TICK)`
    /// to run again that soon by itself, while batches keep coming due (one
    /// came within the last [`PUNCH_IDLE`]); `None` to sleep until woken.
    ///
    /// Waking the thread costs the caller whose release completed a batch
    /// a futex call and, worse, often its core: the woken thread preempts
    /// it there when the other cores are busy. 2-3% of spillbench's inserts
    /// woke it when they freed the replaced value's record, and those
    /// inserts made its p99. While batches keep coming, the thread ticks
    /// instead and nobody wakes it for them.
    pub(crate) fn next_punch_tick(&self) -> Option<Duration> {
        let shared = &self.shared;
        let mut seen = shared.punch_seen.lock();
        let now = Instant::now();
        if shared.punch_pending.swap(false, Ordering::SeqCst) {
            *seen = Some(now);
        }
        if seen.is_some_and(|t| now.duration_since(t) < PUNCH_IDLE) {
            shared.punch_ticking.store(true, Ordering::SeqCst);
            return Some(PUNCH_TICK);
        }
        shared.punch_ticking.store(false, Ordering::SeqCst);
        // A batch that came due before the flag went down was not woken
        // for (its releaser saw the flag up): tick on for it. One that comes
        // after finds the flag down and wakes the thread.
        if shared.punch_pending.swap(false, Ordering::SeqCst) {
            *seen = Some(now);
            shared.punch_ticking.store(true, Ordering::SeqCst);
            return Some(PUNCH_TICK);
        }
        *seen = None;
        None
    }

    /// Suspends hole punching while the returned guard lives; see
    /// [`BulkRelease`]. The store's `clear` and drop hold it: the files they
    /// empty are deleted whole, so punching them first would be wasted work.
    pub(crate) fn bulk_release(&self) -> BulkRelease<'_> {
        self.shared.bulk_releases.fetch_add(1, Ordering::AcqRel);
        BulkRelease(&self.shared)
    }

    /// Writes each value as a checksummed record and returns the records in
    /// the same order.
    ///
    /// # Errors
    ///
    /// `DiskLimit` when the records would take the spill files past
    /// `max_disk_size`: nothing is reserved or written. `Io` when a file
    /// cannot be created or written. On error nothing is returned: space
    /// reserved for the batch is released and a file created for it alone is
    /// deleted.
    pub(crate) fn write(&self, values: &[Bytes]) -> Result<Vec<Record>, Error> {
        self.write_leaving(values, 0)
    }

    /// Like [`write`](Self::write), for copies written ahead of need: it
    /// refuses with `DiskLimit` rather than take the last `headroom` bytes
    /// of `max_disk_size`, which stay for the writes that cannot wait.
    pub(crate) fn write_ahead(
        &self,
        values: &[Bytes],
        headroom: u64,
    ) -> Result<Vec<Record>, Error> {
        self.write_leaving(values, headroom)
    }

    fn write_leaving(&self, values: &[Bytes], headroom: u64) -> Result<Vec<Record>, Error> {
        static ZEROS: [u8; record::PAGE as usize] = [0; record::PAGE as usize];
        let records = self.reserve(values, headroom)?;
        // Each record's header (none for a headerless one, whose checksum
        // its segment keeps) and where its bytes on disk start.
        let headers: Vec<_> = records
            .iter()
            .zip(values)
            .map(|(record, value)| {
                let checksum = record::checksum(value);
                if record.is_headerless() {
                    record.segment().keep_checksum(record.offset(), checksum);
                    (None, record.offset() + HEADER_LEN)
                } else {
                    let len = value.len() as u64;
                    let header = record::header_with_checksum(record.place(), len, checksum);
                    (Some(header), record.offset())
                }
            })
            .collect();
        // Runs of records placed one after another in one segment (back to
        // back, or with the zeros that align a large value between them) go
        // out in one vectored write each: headers and values straight from
        // where they are, with no copy into a staging buffer.
        let mut start = 0;
        while start < records.len() {
            let first = &records[start];
            let at = headers[start].1;
            let mut buffers: Vec<&[u8]> = Vec::new();
            let mut written_to = at;
            let mut end = start;
            while end < records.len()
                && end - start < MAX_RECORDS_PER_WRITE
                && Arc::ptr_eq(records[end].segment(), first.segment())
                && (written_to..written_to + record::PAGE).contains(&headers[end].1)
            {
                let (header, from) = &headers[end];
                let gap = (from - written_to) as usize;
                if gap > 0 {
                    buffers.push(&ZEROS[..gap]);
                }
                if let Some(header) = header {
                    buffers.push(&header[..]);
                }
                buffers.push(&values[end][..]);
                written_to = records[end].offset() + HEADER_LEN + values[end].len() as u64;
                end += 1;
            }
            self.write_at(first.segment(), &buffers, at)?;
            start = end;
        }
        Ok(records)
    }

    /// Writes `data` at `offset` of `segment`. A full disk is met by
    /// punching every dead block not punched yet, then trying once more:
    /// after a disk-full error, removing values is all it takes for the next
    /// spill to succeed.
    fn write_at(&self, segment: &Arc<Segment>, data: &[&[u8]], offset: u64) -> Result<(), Error> {
        match segment.write_at(data, offset) {
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::StorageFull => {
                self.shared.punch_all_dead_blocks();
                segment.write_at(data, offset)
            }
            other => other,
        }
    }

    /// The bytes on disk that records of `lens` bytes (headers included)
    /// would newly occupy, placed where the writer is now: blocks of the
    /// active segment they would start, a new segment's header block when
    /// it fills, whole files for large records. What `reserve` takes from
    /// the disk budget before it places anything.
    fn price(&self, writer: &Writer, lens: &[u64]) -> u64 {
        let shared = &self.shared;
        let mut price = 0;
        let mut end = writer.active.as_ref().map(|_| writer.used);
        for &len in lens {
            if len > shared.segment_size / 4 {
                price += blocks::sequential_file_cost(FILE_HEADER_LEN + len, shared.block);
                continue;
            }
            let e = match end {
                Some(e) if self.record_offset(e, len) + len <= shared.segment_size => e,
                _ => {
                    price += blocks::append_cost(0, FILE_HEADER_LEN, shared.block);
                    FILE_HEADER_LEN
                }
            };
            let record_end = self.record_offset(e, len) + len;
            price += blocks::append_cost(e, record_end - e, shared.block);
            end = Some(record_end);
        }
        price
    }

    /// Where a record of `len` bytes (header included) goes in a shared
    /// segment written up to `end`: [`record::record_offset`], its value
    /// page aligned where the file system's blocks are at least a page.
    fn record_offset(&self, end: u64, len: u64) -> u64 {
        let align = self.shared.block >= record::PAGE;
        record::record_offset(end, len - HEADER_LEN, align)
    }

    /// Places each value: small records in the active segment (rolling over
    /// to a new one when it is full), large ones in files of their own.
    ///
    /// The batch is priced first, with the writer's lock held so the price
    /// stays exact, and the space is taken from the budget in one step; then
    /// the records are placed, and what they added to the files' footprints
    /// adds up to the price.
    fn reserve(&self, values: &[Bytes], headroom: u64) -> Result<Vec<Record>, Error> {
        let shared = &self.shared;
        // Records handed over to be dropped still hold their space: free it
        // before pricing (never under the writer's lock, which dropping the
        // last record of the active segment takes).
        shared.drop_doomed();
        let lens: Vec<u64> = values.iter().map(|v| HEADER_LEN + v.len() as u64).collect();
        let is_large = |len: u64| len > shared.segment_size / 4;
        let mut records: Vec<Option<Record>> = values.iter().map(|_| None).collect();
        let mut writer = shared.writer.lock();
        let price = self.price(&writer, &lens);
        if shared.take_space(price, headroom).is_err() {
            // Dead blocks not punched yet count as occupied: punch them all
            // before refusing.
            shared.punch_all_dead_blocks();
            shared.take_space(price, headroom)?;
        }
        let mut placed = 0;
        let mut place_small = || -> Result<(), Error> {
            for (i, &len) in lens.iter().enumerate() {
                if is_large(len) {
                    continue;
                }
                let fits = writer.active.is_some()
                    && self.record_offset(writer.used, len) + len <= shared.segment_size;
                if !fits {
                    let segment = shared.create_segment(shared.segment_size, false)?;
                    placed += segment.accounted();
                    // Dropping the old active segment deletes it if nothing needs it.
                    if let Some(old) = writer.active.replace(segment) {
                        old.seal();
                    }
                    writer.used = FILE_HEADER_LEN;
                }
                let segment = writer.active.clone().expect("an active segment");
                let offset = self.record_offset(writer.used, len);
                let (record, cost) = segment.place(offset, len);
                placed += cost;
                writer.used = offset + len;
                records[i] = Some(record);
            }
            Ok(())
        };
        let small = place_small();
        drop(writer);
        let result = small.and_then(|()| {
            for (i, &len) in lens.iter().enumerate().filter(|&(_, &len)| is_large(len)) {
                let segment = shared.create_segment(FILE_HEADER_LEN + len, true)?;
                placed += segment.accounted();
                segment.seal();
                records[i] = Some(segment.place(FILE_HEADER_LEN, len).0);
            }
            Ok(())
        });
        debug_assert!(
            result.is_err() || placed == price,
            "priced {price}, placed {placed}"
        );
        shared.settle(price, placed);
        result?;
        Ok(records.into_iter().map(|r| r.expect("placed")).collect())
    }
}

/// How many times the live records' bytes the spill files' lengths may
/// reach before compaction is due, and the inverse of how live (by length)
/// a segment may be to be compacted: 2, or 4 where holes are punched.
///
/// Where holes are punched, a sparse segment occupies on disk about its
/// live records' blocks, whatever its length: compacting it gains a file and
/// the blocks dead and live records share, at the price of rewriting every
/// live record. Compacting at a quarter live rather than half moves less
/// than half the bytes per file freed; in spillbench's mixed phase, 226
/// MiB compacted instead of 726 (BENCHMARKS.md, "Compaction where holes are
/// punched"). What the files occupy is bounded by the second test of
/// [`SpillDir::compaction_due`] either way.
pub(super) fn length_factor(can_punch: bool) -> u64 {
    if can_punch {
        4
    } else {
        2
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        self.shared.drop_doomed();
        let active = self.shared.writer.lock().active.take();
        drop(active);
        if self.lock_file_created && self.shared.dir_is_ours() {
            let _ = fs::remove_file(self.shared.path.join(LOCK_FILE_NAME));
        }
        let _ = self.lock_file.unlock();
    }
}

impl DirShared {
    /// Settles what `reserve` took from the budget with what it placed:
    /// what was priced but not placed (all of it is placed, unless a file
    /// could not be created) goes back. Placed records dropped on error
    /// give their blocks back themselves.
    fn settle(&self, price: u64, placed: u64) {
        self.allocated
            .fetch_sub(price.saturating_sub(placed), Ordering::AcqRel);
        if placed > price {
            self.allocated.fetch_add(placed - price, Ordering::AcqRel);
        }
    }

    /// Takes `bytes` from the disk budget, leaving at least `headroom` of
    /// it, or refuses with `DiskLimit` taking nothing.
    fn take_space(&self, bytes: u64, headroom: u64) -> Result<(), Error> {
        let Some(limit) = self.limit else {
            self.allocated.fetch_add(bytes, Ordering::AcqRel);
            return Ok(());
        };
        let mut current = self.allocated.load(Ordering::Acquire);
        loop {
            let total = current.saturating_add(bytes);
            if total.saturating_add(headroom) > limit {
                return Err(Error::DiskLimit {
                    needed: bytes,
                    available: limit.saturating_sub(current),
                    limit,
                });
            }
            match self.allocated.compare_exchange_weak(
                current,
                total,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => current = now,
            }
        }
    }

    /// Notes that `segment` has `pending` bytes of dead blocks to punch.
    ///
    /// Holes are punched in batches of `punch_batch` bytes per segment
    /// (a sixteenth of a segment: 1 MiB by default), because each batch
    /// drops the segment's mapping (see [`Segment::punch_dead_blocks`]); the
    /// segments with a smaller batch gathered are listed, and punched all at
    /// once when a write would go past the disk budget or meets a full disk,
    /// and when a compaction pass starts. So dead space waits at most one
    /// batch per segment before it returns, and never when it is needed.
    ///
    /// A store with a background thread ([`SpillDir::punch_in_background`])
    /// has that thread punch the batch, since punching (and dropping the
    /// segment's mapping) takes tens to hundreds of microseconds that the
    /// caller whose remove or replace freed the last block should not wait.
    fn dead_blocks(&self, segment: &Arc<Segment>, pending: u64) {
        // Listed even when punched now: a punch already under way may miss
        // blocks that died meanwhile.
        self.list(segment);
        if pending >= self.punch_batch && self.bulk_releases.load(Ordering::Acquire) == 0 {
            match self.puncher.get() {
                Some(puncher) => {
                    let mut due = self.due.lock();
                    // Each release past the batch size lands here until the
                    // spiller runs: list a segment once in a row.
                    if due
                        .last()
                        .is_none_or(|s| s.as_ptr() != Arc::as_ptr(segment))
                    {
                        due.push(Arc::downgrade(segment));
                    }
                    drop(due);
                    self.punch_work_came(puncher);
                }
                None => segment.punch_dead_blocks(self),
            }
        }
    }

    /// Work came for the punching thread (a batch due, records to drop):
    /// wakes it through `puncher` unless it ticks.
    fn punch_work_came(&self, puncher: &Waker) {
        // Paired with `next_punch_tick`: the thread either sees this work
        // pending, or stopped ticking before it was listed and is woken here.
        self.punch_pending.store(true, Ordering::SeqCst);
        if !self.punch_ticking.load(Ordering::SeqCst) {
            puncher.wake();
        }
    }

    /// Drops the records handed to the background thread so far.
    fn drop_doomed(&self) {
        let doomed = std::mem::take(&mut *self.doomed.lock());
        drop(doomed);
    }

    /// Lists `segment` among those with dead blocks, once.
    fn list(&self, segment: &Arc<Segment>) {
        if !segment.listed.swap(true, Ordering::AcqRel) {
            let mut dead = self.dead.lock();
            if dead.len() > 2 * self.files.load(Ordering::Relaxed) + 16 {
                dead.retain(|s| s.strong_count() > 0);
            }
            dead.push(Arc::downgrade(segment));
        }
    }

    /// Punches the segments that gathered a batch of dead blocks.
    fn punch_due(&self) {
        let mut due = std::mem::take(&mut *self.due.lock());
        due.sort_by_key(Weak::as_ptr);
        due.dedup_by(|a, b| Weak::ptr_eq(a, b));
        for segment in due.iter().filter_map(Weak::upgrade) {
            segment.punch_dead_blocks(self);
        }
    }

    /// Punches the dead blocks of every listed segment.
    fn punch_all_dead_blocks(&self) {
        let listed = std::mem::take(&mut *self.dead.lock());
        for segment in listed.iter().filter_map(Weak::upgrade) {
            segment.listed.store(false, Ordering::Release);
            segment.punch_dead_blocks(self);
        }
    }

    /// Creates a new spill file of `size` bytes under a fresh name; a
    /// `dedicated` one will hold a single record. Its footprint is counted
    /// by the caller, which priced it.
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
        let mut attempts = 0;
        loop {
            let n = self.next_file_number.fetch_add(1, Ordering::Relaxed);
            let path = self.path.join(format!("spill-{n:08}.seg"));
            match Segment::create(path.clone(), n, size, dedicated, self) {
                Ok(segment) => {
                    self.files.fetch_add(1, Ordering::Relaxed);
                    self.file_bytes.fetch_add(size, Ordering::Relaxed);
                    self.cache.admit(Arc::downgrade(&segment));
                    return Ok(segment);
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

    /// Counts out a deleted segment of `size` bytes that occupied
    /// `allocated` bytes on disk.
    fn segment_dropped(&self, size: u64, allocated: u64, was_open: bool) {
        self.files.fetch_sub(1, Ordering::Relaxed);
        self.file_bytes.fetch_sub(size, Ordering::Relaxed);
        self.allocated.fetch_sub(allocated, Ordering::AcqRel);
        if was_open {
            self.cache.closed();
        }
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

/// The allocation unit to count in: the file system's preferred block size
/// if it is a sensible power of two, else 4 KiB.
fn block_size(blksize: u64) -> u64 {
    if blksize.is_power_of_two() && (512..=1 << 20).contains(&blksize) {
        blksize
    } else {
        4096
    }
}

/// Opens and locks the lock file; says whether we created it.
///
/// After locking, the path must still name the file locked: a store that
/// was just dropped deletes its lock file, and a lock taken on the deleted
/// file would lock nothing.
fn lock(lock_path: &Path, dir: &Path) -> Result<(File, bool), Error> {
    for _ in 0..100 {
        let (lock_file, created) =
            open_lock_file(lock_path).map_err(|e| Error::io("opening lock file", lock_path, e))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::DirLocked {
                    path: dir.to_path_buf(),
                })
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(Error::io("locking dump dir", lock_path, e))
            }
        }
        let locked = lock_file.metadata().map(|m| (m.dev(), m.ino()));
        let named = fs::symlink_metadata(lock_path).map(|m| (m.dev(), m.ino()));
        if let (Ok(locked), Ok(named)) = (locked, named) {
            if locked == named {
                return Ok((lock_file, created));
            }
        }
    }
    Err(Error::io(
        "locking dump dir",
        lock_path,
        io::Error::other("the lock file keeps being replaced"),
    ))
}

/// Opens the lock file, creating it (mode 0600) if needed; says whether it
/// was created. A symlink in its place is refused rather than followed.
fn open_lock_file(path: &Path) -> io::Result<(File, bool)> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
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

/// Deletes the spill files an earlier store left in `dir` (it died without
/// cleaning up: the lock we hold was free). A file counts as one only if it
/// is a regular file named `spill-<digits>.seg` whose content starts with a
/// valid spill file header naming the same number: a foreign file under such
/// a name stays. Errors on single files leave those files alone.
fn remove_orphans(dir: &Path) -> Orphans {
    let mut orphans = Orphans::default();
    let Ok(entries) = fs::read_dir(dir) else {
        return orphans;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix("spill-")?.strip_suffix(".seg"))
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u64>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        else {
            continue;
        };
        let Ok(meta) = file.metadata() else { continue };
        let mut header = [0u8; FILE_HEADER_LEN as usize];
        if !meta.is_file()
            || file.read_exact_at(&mut header, 0).is_err()
            || record::check_file_header(&header, number).is_err()
        {
            continue;
        }
        // Delete the file we checked, not one put under its name since.
        let same = fs::symlink_metadata(&path).is_ok_and(|m| m.ino() == meta.ino());
        if same && fs::remove_file(&path).is_ok() {
            orphans.files += 1;
            orphans.bytes += meta.blocks() * 512;
        }
    }
    orphans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Builder;

    fn config(segment_size: u64, max_disk_size: Option<u64>, open_files: Option<usize>) -> Config {
        let mut b = Builder::<String>::new()
            .max_size(1)
            .dump_dir("unused")
            .segment_size(segment_size);
        if let Some(m) = max_disk_size {
            b = b.max_disk_size(m);
        }
        if let Some(n) = open_files {
            b = b.max_open_files(n);
        }
        b.validate().unwrap()
    }

    fn dir() -> (tempfile::TempDir, SpillDir) {
        dir_with(config(4096, None, None))
    }

    fn dir_with(config: Config) -> (tempfile::TempDir, SpillDir) {
        let tmp = tempfile::tempdir().unwrap();
        let spill = SpillDir::open(tmp.path().join("d"), &config).unwrap();
        (tmp, spill)
    }

    fn values(sizes: &[usize]) -> Vec<Bytes> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Bytes::from(vec![i as u8 ^ 0x5a; n]))
            .collect()
    }

    /// What the spill files occupy on disk, as `du` counts it.
    #[cfg(not(miri))]
    fn du(tmp: &tempfile::TempDir) -> u64 {
        fs::read_dir(tmp.path().join("d"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
            .sum()
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
        let usage = spill.usage();
        assert_eq!(usage.files, 0, "the active segment is retired");
        assert_eq!((usage.bytes, usage.allocated, usage.live), (0, 0, 0));
        assert_eq!(listing(), 1);
    }

    #[test]
    fn every_file_starts_with_its_header_and_is_private() {
        let (tmp, spill) = dir();
        let _records = spill.write(&values(&[100, 3000])).unwrap();
        let d = tmp.path().join("d");
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        for n in 0..2u64 {
            let path = d.join(format!("spill-{n:08}.seg"));
            let data = fs::read(&path).unwrap();
            let header = &data[..FILE_HEADER_LEN as usize];
            assert_eq!(record::check_file_header(header, n), Ok(()));
            assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        }
        let lock = fs::metadata(d.join(LOCK_FILE_NAME)).unwrap();
        assert_eq!(lock.mode() & 0o777, 0o600);
    }

    #[test]
    fn a_truncated_file_is_corrupted_not_a_fault() {
        let (tmp, spill) = dir();
        let vals = values(&[100, 100]);
        let records = spill.write(&vals).unwrap();
        assert_eq!(records[0].reader().read_copy().unwrap(), vals[0]);
        let path = tmp.path().join("d").join("spill-00000000.seg");
        // The first record is 64..196, the second 196..328.
        OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(204)
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
            .set_len(FILE_HEADER_LEN + 92)
            .unwrap();
        assert_eq!(first[0].reader().read_copy().unwrap(), values(&[60])[0]);
        let later = spill.write(&values(&[0, 60])).unwrap();
        assert_eq!(later[1].reader().read_copy().unwrap(), values(&[0, 60])[1]);
    }

    #[test]
    fn a_second_open_of_the_same_dir_is_refused() {
        let (tmp, spill) = dir();
        let again = SpillDir::open(tmp.path().join("d"), &config(4096, None, None));
        assert!(matches!(again, Err(Error::DirLocked { .. })));
        drop(spill);
        SpillDir::open(tmp.path().join("d"), &config(4096, None, None)).unwrap();
    }

    /// Five 12 KiB records in a 64 KiB segment: dropping the middle three
    /// returns the blocks only they covered, at once.
    #[test]
    fn dropped_records_give_their_blocks_back() {
        let (tmp, spill) = dir_with(config(64 << 10, None, None));
        let vals = values(&[12 << 10; 5]);
        let mut records: Vec<Option<Record>> =
            spill.write(&vals).unwrap().into_iter().map(Some).collect();
        let before = spill.usage().allocated;
        // Header and records: 64 + 5 * (12 KiB + 32) bytes, in 16 blocks,
        // and one block of allowance for the extent map (see `blocks`).
        assert_eq!(before, 17 * 4096);
        #[cfg(not(miri))]
        assert_eq!(du(&tmp), before - 4096);
        for r in &mut records[1..4] {
            r.take();
        }
        // Records 1..4 span bytes 12384..49344: blocks 4..=11 are theirs alone.
        let usage = spill.usage();
        assert_eq!(usage.allocated, before - 8 * 4096);
        assert_eq!(usage.punched_bytes, 8 * 4096);
        #[cfg(not(miri))]
        assert_eq!(du(&tmp), usage.allocated - 4096);
        for (r, v) in records.iter().zip(&vals) {
            if let Some(r) = r {
                assert_eq!(r.reader().read_copy().unwrap(), v);
            }
        }
        let _ = tmp;
    }

    /// A reader in flight holds its record's blocks: no hole is punched
    /// under it. A value handed out from a shared segment is a copy of its
    /// own, one from a dedicated file a slice of the mapping that outlives
    /// the file.
    #[test]
    fn readers_keep_their_bytes_and_handed_out_values_need_no_file() {
        let (tmp, spill) = dir_with(config(64 << 10, None, None));
        let vals = values(&[12 << 10; 4]);
        let mut records: Vec<Option<Record>> =
            spill.write(&vals).unwrap().into_iter().map(Some).collect();
        let copied = records[1].as_ref().unwrap().reader().read_mapped().unwrap();
        let reader = records[2].as_ref().unwrap().reader();
        let before = spill.usage().allocated;
        records[1].take();
        let freed = before - spill.usage().allocated;
        assert!(freed > 0, "record 1's blocks went, its value is a copy");
        records[2].take();
        assert_eq!(
            spill.usage().allocated,
            before - freed,
            "the reader holds record 2"
        );
        assert_eq!(copied, vals[1]);
        assert_eq!(reader.read_copy().unwrap(), vals[2]);
        drop(reader);
        assert!(spill.usage().allocated < before - freed);
        assert_eq!(
            records[0].as_ref().unwrap().reader().read_copy().unwrap(),
            vals[0]
        );
        // A file of its own: the value outlives the file.
        let big = values(&[20 << 10]);
        let record = spill.write(&big).unwrap().pop().unwrap();
        let held = record.reader().read_mapped().unwrap();
        let files = fs::read_dir(tmp.path().join("d")).unwrap().count();
        drop(record);
        assert_eq!(
            fs::read_dir(tmp.path().join("d")).unwrap().count(),
            files - 1
        );
        assert_eq!(held, big[0]);
    }

    #[test]
    fn a_bulk_release_punches_nothing_survivors_catch_up_later() {
        let (_tmp, spill) = dir_with(config(64 << 10, None, None));
        let mut records = spill.write(&values(&[12 << 10; 5])).unwrap();
        let before = spill.usage().allocated;
        {
            let _bulk = spill.bulk_release();
            records.drain(1..3);
            assert_eq!(spill.usage().allocated, before);
        }
        assert_eq!(spill.usage().punched_bytes, 0);
        records.remove(2); // the last of the five: its blocks, and the others'
        let usage = spill.usage();
        assert!(usage.punched_bytes > 4 * 4096, "{usage:?}");
        assert_eq!(usage.allocated, before - usage.punched_bytes);
    }

    /// Where the file system refuses to punch holes (EOPNOTSUPP), nothing is
    /// counted as freed that was not: dead blocks stay counted until their
    /// file goes whole (compaction's job), and the budget still holds.
    #[test]
    fn without_holes_dead_blocks_stay_counted_until_the_file_goes() {
        let (_tmp, spill) = dir_with(config(64 << 10, Some(80 << 10), None));
        spill.shared.can_punch.store(false, Ordering::Relaxed);
        let mut records = spill.write(&values(&[12 << 10; 5])).unwrap();
        let before = spill.usage().allocated;
        records.drain(1..4);
        assert_eq!(spill.usage().allocated, before);
        assert_eq!(spill.usage().punched_bytes, 0);
        let more = spill.write(&values(&[12 << 10]));
        assert!(
            matches!(more, Err(Error::DiskLimit { .. })),
            "{:?}",
            more.err()
        );
        records.clear();
        // The segment is still the writer's: retired when it empties.
        assert_eq!(spill.usage().allocated, 0);
        spill.write(&values(&[12 << 10])).unwrap();
    }

    #[test]
    fn a_write_past_the_disk_limit_is_refused_whole() {
        let limit = 40 << 10;
        let (_tmp, spill) = dir_with(config(64 << 10, Some(limit), None));
        let mut kept = Vec::new();
        let err = loop {
            match spill.write(&values(&[3000, 5000])) {
                Ok(records) => kept.extend(records),
                Err(e) => break e,
            }
            assert!(spill.usage().allocated <= limit);
        };
        let Error::DiskLimit {
            needed,
            available,
            limit: l,
        } = err
        else {
            panic!("{err:?}")
        };
        assert_eq!(l, limit);
        assert!(needed > available, "{needed} {available}");
        let usage = spill.usage();
        assert_eq!(usage.allocated, limit - available, "nothing reserved");
        // Room comes back as records go.
        kept.truncate(kept.len() - 4);
        spill.write(&values(&[3000, 5000])).unwrap();
        assert!(spill.usage().allocated <= limit);
        // A value that can never fit.
        let huge = spill.write(&values(&[limit as usize]));
        assert!(
            matches!(huge, Err(Error::DiskLimit { .. })),
            "{:?}",
            huge.err()
        );
    }

    #[test]
    fn freed_by_dropping_predicts_what_dropping_frees() {
        let (_tmp, spill) = dir_with(config(64 << 10, None, None));
        let mut records = spill.write(&values(&[12 << 10; 5])).unwrap();
        let big = spill.write(&values(&[40 << 10])).unwrap();
        let predicted = spill.freed_by_dropping(&[&records[1], &records[2], &big[0]]);
        let before = spill.usage().allocated;
        drop(records.drain(1..3));
        drop(big);
        assert_eq!(spill.usage().allocated, before - predicted);
        assert!(predicted > (40 << 10), "{predicted}");
    }

    /// With one open file allowed, every read of another file reopens it;
    /// a file replaced while closed is refused, never read.
    #[test]
    fn closed_files_are_reopened_and_checked() {
        let (tmp, spill) = dir_with(config(4096, None, Some(1)));
        let vals = values(&[2000, 2100, 2200]);
        let records = spill.write(&vals).unwrap();
        assert_eq!(spill.usage().files, 3);
        for _ in 0..2 {
            for (r, v) in records.iter().zip(&vals) {
                assert_eq!(r.reader().read_copy().unwrap(), v);
                assert_eq!(r.reader().read_mapped().unwrap(), v);
                assert_eq!(spill.usage().open_files, 1);
            }
        }
        let d = tmp.path().join("d");
        // File 0 is closed now (file 2 was read last): put a copy of it in
        // its place.
        let copy = d.join("copy");
        fs::write(&copy, fs::read(d.join("spill-00000000.seg")).unwrap()).unwrap();
        fs::rename(&copy, d.join("spill-00000000.seg")).unwrap();
        let err = records[0].reader().read_copy().unwrap_err();
        assert!(err.to_string().contains("replaced"), "{err}");
        assert_eq!(records[1].reader().read_copy().unwrap(), vals[1]);
    }

    /// Records handed to the background thread keep their space until its
    /// run (or a write) drops them; without a background thread they are
    /// dropped at once.
    #[test]
    fn records_handed_over_are_dropped_by_the_next_run_or_write() {
        let (_tmp, spill) = dir_with(config(64 << 10, None, None));
        let mut records = spill.write(&values(&[12 << 10; 3])).unwrap();
        let live = |spill: &SpillDir| spill.usage().live;
        let all = live(&spill);
        spill.drop_in_background(vec![records.remove(0)]);
        assert_eq!(live(&spill), all - all / 3, "no background thread: dropped");

        let (waker, woken) = crate::background::Waker::detached();
        spill.punch_in_background(waker);
        spill.drop_in_background(vec![records.remove(0)]);
        assert!(woken.try_recv().is_ok(), "the thread is woken for them");
        assert_eq!(live(&spill), all - all / 3, "still held");
        spill.punch_due();
        assert_eq!(live(&spill), all / 3, "dropped by the run");

        spill.drop_in_background(vec![records.remove(0)]);
        assert_eq!(live(&spill), all / 3);
        let more = spill.write(&values(&[12 << 10])).unwrap();
        assert_eq!(live(&spill), all / 3, "dropped before the write");
        drop(more);
    }

    /// A batch of dead blocks wakes the punching thread only while it does
    /// not tick; it ticks while batches keep coming, and stops after
    /// `PUNCH_IDLE` without one.
    #[test]
    fn batches_wake_the_puncher_only_when_it_does_not_tick() {
        // 64 KiB segments: batches of a block.
        let (_tmp, spill) = dir_with(config(64 << 10, None, None));
        let (waker, woken) = crate::background::Waker::detached();
        spill.punch_in_background(waker);
        let mut records = spill.write(&values(&[12 << 10; 4])).unwrap();
        assert!(woken.try_recv().is_err());
        drop(records.remove(1));
        assert!(woken.try_recv().is_ok(), "a batch came due: woken");
        spill.punch_due();
        assert_eq!(spill.next_punch_tick(), Some(PUNCH_TICK));
        drop(records.remove(1));
        assert!(woken.try_recv().is_err(), "ticking: not woken");
        spill.punch_due();
        assert_eq!(spill.next_punch_tick(), Some(PUNCH_TICK));
        assert_eq!(
            spill.next_punch_tick(),
            Some(PUNCH_TICK),
            "within PUNCH_IDLE"
        );
        std::thread::sleep(PUNCH_IDLE);
        assert_eq!(spill.next_punch_tick(), None, "idle: sleeps until woken");
        drop(records.remove(1));
        assert!(woken.try_recv().is_ok(), "woken again");
        assert!(spill.usage().punched_bytes > 0);
    }

    /// Punching drops a shared segment's mapping; copies are then read with
    /// `pread` until the segment has served `MAP_AFTER_READS` of them, and
    /// then it is mapped again. A new segment is mapped at its first read.
    #[test]
    #[cfg(not(miri))] // Miri cannot map files
    fn punched_segments_are_mapped_again_only_after_many_reads() {
        let (_tmp, spill) = dir_with(config(1 << 20, None, None));
        let vals = values(&[20 << 10, 20 << 10, 20 << 10]);
        let mut records = spill.write(&vals).unwrap();
        let segment = Arc::clone(records[0].segment());
        assert_eq!(records[0].reader().read_copy().unwrap(), vals[0]);
        assert!(segment.is_mapped(), "a new segment is mapped at once");
        drop(records.remove(1));
        spill.shared.punch_all_dead_blocks();
        assert!(spill.usage().punched_bytes > 0);
        assert!(!segment.is_mapped(), "punching dropped the mapping");
        for i in 0..segment::MAP_AFTER_READS {
            let r = &records[i as usize % 2];
            assert_eq!(r.reader().read_copy().unwrap(), vals[2 * (i as usize % 2)]);
            assert!(!segment.is_mapped(), "mapped again after {i} reads");
        }
        assert_eq!(records[0].reader().read_copy().unwrap(), vals[0]);
        assert!(segment.is_mapped());
    }

    /// A record of an empty value (all header) that ends on a page boundary
    /// sits at the offset of the headerless record after it, whose value
    /// starts on that boundary. Dropping it must not forget that record's
    /// checksum: the value would then read as corrupted. Found by the `ops`
    /// fuzz target.
    #[test]
    fn dropping_an_empty_value_keeps_the_next_records_checksum() {
        let (_tmp, spill) = dir_with(config(1 << 20, None, None));
        // File header 64 bytes, then 32 + 3968: the empty value's record
        // runs from 4064 to the page boundary at 4096.
        let vals = values(&[3968, 0, 20 << 10]);
        let mut records: Vec<Option<Record>> =
            spill.write(&vals).unwrap().into_iter().map(Some).collect();
        let (empty, large) = (records[1].as_ref().unwrap(), records[2].as_ref().unwrap());
        assert_eq!(empty.offset(), 4064);
        assert_eq!(large.offset(), empty.offset(), "the two offsets meet");
        records[1].take();
        let large = records[2].as_ref().unwrap();
        assert_eq!(large.reader().read_copy().unwrap(), vals[2]);
        assert_eq!(
            records[0].as_ref().unwrap().reader().read_copy().unwrap(),
            vals[0]
        );
    }

    /// Values of a shared segment handed out without a copy (the reads that
    /// do not bring a value back into memory) keep their bytes while their
    /// records go and every block around them is punched: one from the
    /// segment's mapping, and, once punching dropped it, two from mappings
    /// of their own records (one with a header on disk, one without). Their
    /// blocks go when they do.
    #[test]
    #[cfg(not(miri))] // Miri cannot map files
    fn values_handed_out_without_a_copy_keep_their_blocks() {
        let (_tmp, spill) = dir_with(config(1 << 20, None, None));
        let vals = values(&[20 << 10, 100, 20 << 10, 20 << 10]);
        let mut records: Vec<Option<Record>> =
            spill.write(&vals).unwrap().into_iter().map(Some).collect();
        let segment = Arc::clone(records[0].as_ref().unwrap().segment());
        let unpromoted = |r: &Option<Record>| r.as_ref().unwrap().reader().read_unpromoted();
        assert_eq!(
            records[0].as_ref().unwrap().reader().read_copy().unwrap(),
            vals[0]
        );
        assert!(segment.is_mapped());
        let from_segment = unpromoted(&records[0]).unwrap();
        records[3].take();
        spill.shared.punch_all_dead_blocks();
        assert!(!segment.is_mapped(), "punching dropped the mapping");
        let headed = unpromoted(&records[1]).unwrap();
        let headerless = unpromoted(&records[2]).unwrap();
        assert!(!segment.is_mapped(), "mapped the records alone");
        let before = spill.usage();
        for r in &mut records {
            r.take();
        }
        spill.shared.punch_all_dead_blocks();
        assert_eq!(spill.usage().allocated, before.allocated, "all held");
        assert_eq!(from_segment, vals[0]);
        assert_eq!(headed, vals[1]);
        assert_eq!(headerless, vals[2]);
        drop((from_segment, headed, headerless));
        spill.shared.punch_all_dead_blocks();
        assert!(spill.usage().allocated < before.allocated);
    }

    /// A dump dir whose reads count as cold, with two records of a shared
    /// segment large enough for the cold read path (`pread` for copies) and
    /// one of a file of its own (mapped, advised first).
    fn cold_dir() -> (tempfile::TempDir, SpillDir, Vec<Bytes>, Vec<Record>) {
        // Records above a quarter of the segment (32 KiB) get their own file.
        let (tmp, spill) = dir_with(config(128 << 10, None, None));
        let vals = values(&[20 << 10, 17 << 10, 40 << 10]);
        let records = spill.write(&vals).unwrap();
        assert_eq!(spill.usage().files, 2);
        spill.shared.reads.saw(cold::MIN_TIMED, false);
        assert!(spill.shared.reads.cold());
        (tmp, spill, vals, records)
    }

    #[test]
    fn cold_reads_return_the_bytes_written() {
        let (_tmp, spill, vals, records) = cold_dir();
        for (r, v) in records.iter().zip(&vals) {
            assert_eq!(r.reader().read_copy().unwrap(), v);
            assert_eq!(r.reader().read_mapped().unwrap(), v);
        }
        assert!(
            spill.shared.reads.cold(),
            "far fewer warm reads than the streak"
        );
    }

    /// A byte altered in a record read by `pread` is caught by the checksum
    /// of the buffer read; a file cut short gives a short read. Either way
    /// `Error::Corrupted`, never wrong bytes, and the other records read.
    #[test]
    fn cold_reads_of_altered_or_shortened_files_are_corrupted() {
        let (tmp, _spill, vals, records) = cold_dir();
        let seg = tmp.path().join("d").join("spill-00000000.seg");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg)
            .unwrap();
        let at = records[1].offset() + HEADER_LEN + 1000;
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at).unwrap();
        file.write_all_at(&[byte[0] ^ 0x20], at).unwrap();
        let corrupted = |e: Error| matches!(e, Error::Corrupted { .. });
        assert!(corrupted(records[1].reader().read_copy().unwrap_err()));
        assert!(corrupted(records[1].reader().read_mapped().unwrap_err()));
        assert_eq!(records[0].reader().read_copy().unwrap(), vals[0]);
        file.set_len(records[0].offset() + 5000).unwrap();
        let err = records[0].reader().read_copy().unwrap_err();
        assert!(corrupted(err), "short read");
        assert!(corrupted(records[1].reader().read_copy().unwrap_err()));
        // The file of one record, cut inside its value: refused before its
        // mapping is touched.
        let own = tmp.path().join("d").join("spill-00000001.seg");
        OpenOptions::new()
            .write(true)
            .open(&own)
            .unwrap()
            .set_len(FILE_HEADER_LEN + 100)
            .unwrap();
        assert!(corrupted(records[2].reader().read_mapped().unwrap_err()));
        assert!(corrupted(records[2].reader().read_copy().unwrap_err()));
    }

    /// Values of 16 KiB or more are written without a header, each starting
    /// on a page boundary (whole-page ones back to back), and read back
    /// against the checksum their segment keeps, through the mapping and
    /// with `pread`; small records keep their headers, in the same write.
    #[test]
    fn large_values_are_headerless_and_page_aligned() {
        let (tmp, spill) = dir_with(config(1 << 20, None, None));
        let vals = values(&[100, 64 << 10, 64 << 10, 300, 20 << 10, 5000]);
        let records = spill.write(&vals).unwrap();
        let aligned = spill.shared.block >= record::PAGE;
        let headerless: Vec<bool> = records.iter().map(Record::is_headerless).collect();
        assert_eq!(headerless, [false, true, true, false, true, false]);
        let value_at = |r: &Record| r.offset() + HEADER_LEN;
        if aligned {
            for r in records.iter().filter(|r| r.is_headerless()) {
                assert_eq!(value_at(r) % record::PAGE, 0);
            }
            assert_eq!(value_at(&records[2]), value_at(&records[1]) + (64 << 10));
        }
        // Between what records wrote, zeros.
        let file = tmp.path().join("d").join("spill-00000000.seg");
        let bytes = fs::read(&file).unwrap();
        for pair in records.windows(2) {
            let from = pair[0].offset() + pair[0].record_len();
            let to = if pair[1].is_headerless() {
                value_at(&pair[1])
            } else {
                pair[1].offset()
            };
            assert!(bytes[from as usize..to as usize].iter().all(|&b| b == 0));
        }
        let check = |records: &[Record]| {
            for (r, v) in records.iter().zip(&vals) {
                assert_eq!(&r.reader().read_copy().unwrap(), v);
                #[cfg(not(miri))]
                assert_eq!(&r.reader().read_mapped().unwrap(), v);
            }
        };
        check(&records);
        spill.shared.reads.saw(cold::MIN_TIMED, false);
        check(&records);
        // Its holds cover the value's pages only, so a headerless record
        // between two live ones would free every one of them.
        if aligned && spill.shared.can_punch.load(Ordering::Relaxed) {
            let block = spill.shared.block;
            assert_eq!(
                spill.freed_by_dropping(&[&records[1]]),
                (64 << 10) / block * block
            );
        }
        // A byte of a headerless value altered: the kept checksum catches it,
        // on either path; its neighbours still read.
        let at = value_at(&records[2]) + 4097;
        let f = OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all_at(&[bytes[at as usize] ^ 1], at).unwrap();
        let corrupted = |e: Error| matches!(e, Error::Corrupted { .. });
        assert!(corrupted(records[2].reader().read_copy().unwrap_err()));
        #[cfg(not(miri))]
        assert!(corrupted(records[2].reader().read_mapped().unwrap_err()));
        assert_eq!(records[1].reader().read_copy().unwrap(), vals[1]);
        assert_eq!(records[3].reader().read_copy().unwrap(), vals[3]);
        // A reader taken before its record goes still checks the value; the
        // segment forgets the checksum with the record.
        let reader = records[1].reader();
        let segment = Arc::clone(records[1].segment());
        let offset = records[1].offset();
        drop(records);
        assert!(segment.kept_checksum(offset).is_none());
        assert_eq!(reader.read_copy().unwrap(), vals[1]);
    }

    /// A copy of a large value starts at the same offset in a cache line as
    /// the value in its file, read through the mapping or with `pread`
    /// (see `segment::buffer_for`); a smaller value of the same write reads
    /// back as usual. Not under Miri, where reading these values back takes
    /// minutes; the padding's arithmetic is tested there in `segment`.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn large_copies_sit_in_their_lines_as_on_disk() {
        let (_tmp, spill) = dir_with(config(1 << 20, None, None));
        let large = segment::ALIGNED_COPY_MIN;
        let vals = values(&[large, large + 4096 + 24, 64 << 10]);
        let records = spill.write(&vals).unwrap();
        let line = |at: u64| at % 64;
        for cold in [false, true] {
            if cold {
                spill.shared.reads.saw(cold::MIN_TIMED, false);
            }
            for (r, v) in records.iter().zip(&vals) {
                let copy = r.reader().read_copy().unwrap();
                assert_eq!(&copy, v);
                if v.len() >= large {
                    let value_at = r.offset() + HEADER_LEN;
                    assert_eq!(line(copy.as_ptr().addr() as u64), line(value_at));
                }
            }
        }
    }

    #[test]
    fn spill_files_of_a_dead_store_are_removed_foreign_ones_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
        let mut orphan = record::file_header(5, 8192, false).to_vec();
        orphan.resize(8192, 7);
        fs::write(d.join("spill-00000005.seg"), &orphan).unwrap();
        // Our header, but under another number's name; and not ours at all.
        fs::write(d.join("spill-00000006.seg"), &orphan).unwrap();
        fs::write(d.join("spill-00000007.seg"), b"foreign").unwrap();
        let spill = SpillDir::open(d.clone(), &config(4096, None, None)).unwrap();
        let orphans = spill.usage().orphans;
        assert_eq!(orphans.files, 1);
        #[cfg(not(miri))]
        assert_eq!(orphans.bytes, 8192);
        assert!(!d.join("spill-00000005.seg").exists());
        assert_eq!(fs::read(d.join("spill-00000007.seg")).unwrap(), b"foreign");
        assert!(d.join("spill-00000006.seg").exists());
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o750, "kept");
    }
}
