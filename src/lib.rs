//! A concurrent, sharded, in-process blob store (`key -> bytes`) with a
//! bounded memory budget that **spills least-recently-used values to files**
//! instead of dropping them, and reads them back **through memory maps**.
//!
//! It is a store that overflows to disk, not a cache that forgets: every
//! value inserted stays readable until it is removed, replaced or cleared.
//! It is the Rust successor of ProxyStore's `EndpointStorage` and keeps its
//! semantics (`max_size`, `max_object_size`, `dump_dir` given together with
//! `max_size`, LRU demotion to disk, promotion back on access, `clear`,
//! `cleanup`) without its bugs.
//!
//! ```
//! use spillstore::{Location, SpillStore};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = SpillStore::builder()
//!     .max_size(1 << 20)            // 1 MiB of values in memory
//!     .dump_dir(dir.path())         // the rest spills here
//!     .build()?;
//! store.insert("report".to_string(), vec![7u8; 4096])?;
//! assert_eq!(store.get("report")?.unwrap().len(), 4096);
//! assert_eq!(store.location("report"), Some(Location::Memory));
//! # Ok::<(), spillstore::Error>(())
//! ```
//!
//! # Design
//!
//! **Sharding.** A key is hashed once (aHash); bits 32 and up pick one of
//! `n` shards (`n` a power of two, cache-padded, each behind a parking_lot
//! `RwLock`), the low bits serve the shard's hash table. Each shard owns
//! `max_size / n` bytes of the budget (the remainder spread one byte each
//! over the first shards, so the shares add up to exactly `max_size`).
//!
//! **Recency.** Each shard keeps its resident values in an intrusive doubly
//! linked list over a slab, linked by `u32` indices (no `unsafe`); inserts
//! and values read back from disk enter at the head, victims leave from the
//! tail. By default recency is approximate (CLOCK): a memory hit takes only
//! the read lock and sets a reference mark in its slot (one relaxed store,
//! none if already set), a replace of a value in memory marks it in place,
//! and the eviction hand gives marked entries a second chance at the head.
//! So hits cost what an in-memory cache's do and scale with threads.
//! `Builder::exact_lru(true)` keeps the seed's exact LRU order instead:
//! hits are recorded in a small per-thread buffer that the next writer
//! applies before it picks victims.
//!
//! **Spill lifecycle.** An insert that does not fit picks victims from the
//! LRU tail under the lock, marks them *spilling* (still readable from
//! memory), writes them with the lock released, then marks them on disk.
//! Small values are appended as checksummed records to shared 16 MiB segment
//! files; large ones get files of their own. A `get` of a spilled value
//! reads the record through the file's shared read-only mapping (one per
//! file while it is in a small cache of open files, none per value). A
//! value that becomes resident again is copied out of the mapping and the
//! copy is verified against the checksum, so a resident value never depends
//! on a file; it keeps its disk copy, so evicting it a second time needs no
//! write. While recent reloads found the files out of the page cache, such
//! copies are read with one `pread` straight into their buffer instead (a
//! cold mapping faults in page by page, at a third of `pread`'s rate), and
//! verified there; warm reloads that follow switch back to the mapping. A value larger than its shard's share is written straight to disk
//! and served without promotion: as a verified slice of the mapping when it
//! has a file of its own, as a verified copy otherwise. A file is deleted as
//! soon as no value needs it.
//!
//! **Disk space.** Spill files start with a header naming them, so a new
//! store deletes an earlier, crashed store's files (and nothing else), and
//! are private (0600, a created dump dir 0700). The store counts the blocks
//! its files occupy (what `du` counts), returns the blocks of removed and
//! replaced records to the file system by punching holes, in batches, and
//! never lets the total pass `max_disk_size`: a spill that would is refused
//! with [`Error::DiskLimit`] once dead blocks are punched and the disk
//! copies kept for cheap re-eviction are given up. Small records that share
//! blocks with live ones are reclaimed by compaction: when the files
//! occupy more than twice the live data, or their lengths add up to more
//! than twice (four times where holes are punched), the store's background
//! thread runs a pass that moves the live records out of segments that are
//! at most half live (a quarter, by length, where holes are punched). No
//! caller's insert ever runs a pass.
//!
//! **Cleaning ahead.** A second background thread, the spiller, keeps disk
//! copies of the resident values nearest each shard's LRU tail
//! ([`Builder::clean_ahead`]), so the insert that evicts them writes
//! nothing; it also punches the holes, so no caller waits for `fallocate`.
//! It changes neither what is resident nor the eviction order.
//!
//! # Guarantees
//!
//! - `memory_bytes` never exceeds `max_size`, at any instant (while reloads
//!   read the disk, each shard also keeps a few emptied buffers of values
//!   that left memory, for them to read into: see [`Builder::max_size`]).
//! - No value is lost: eviction moves values to disk, never drops them.
//! - No wrong bytes: a spilled value whose file was altered or truncated
//!   while the store was idle is reported as [`Error::Corrupted`] (and stays
//!   so until removed or replaced); it is never returned altered. Reads go
//!   through the descriptor the store opened, so a file replaced on disk
//!   (by another file, a directory or a symlink) still reads back in full.
//! - Errors lose nothing: an insert that cannot spill (disk full, or the
//!   disk budget) returns [`Error::Io`] or [`Error::DiskLimit`], is not
//!   stored, and every earlier value stays readable; accounting stays exact;
//!   no half-written file is left. Removing values after a full disk lets
//!   later inserts succeed.
//! - The spill files never occupy more than `max_disk_size` on disk.
//! - A `get` never fails only because bringing the value back into memory
//!   would need a spill that cannot be written: the value is served anyway.
//! - File names come from a counter, never from keys; an existing name is
//!   never opened, and the store only deletes files it created.
//! - One live store per dump directory (an exclusive file lock).
//! - Not promised: persistence (dropping the store deletes its spilled data),
//!   and safety against spill files being edited while a read is in flight,
//!   or while the caller still holds bytes of a value served from disk
//!   without promotion (those share the file's pages, like any mapped data).
//!
//! # Per-entry overhead
//!
//! Beyond the key (its inline size and its heap bytes) and the value bytes,
//! an entry costs a 56-byte slab slot (two `u32` links and a 48-byte payload:
//! the value's `Bytes` handle and, when on disk, a 16-byte record location)
//! and a 4-byte slot index plus a control byte in the hash table: 61 bytes
//! when the slab and table are full, and 63 bytes per entry as measured with
//! the tables' spare capacity (`cargo bench --bench overhead`, 100k entries);
//! the table's growth by doubling adds up to as much again right after a
//! resize. Entries carry no
//! id or length field: a length comes from the `Bytes` or the record, and a
//! spill in flight recognises its entry by the address of its bytes.
//!
//! # Components
//!
//! | module | one job |
//! |---|---|
//! | `store` | [`SpillStore`]: hashing, routing to a shard, the public API |
//! | `asynchronous` | `AsyncSpillStore` (feature `tokio`): memory hits inline, disk work on tokio's blocking pool |
//! | `config` | [`Builder`] and validation |
//! | `shard` | one shard: index, LRU, budget; decides what to spill |
//! | `shard::inline` | the shard's operations that never do I/O, for the async facade |
//! | `shard::state` | the entry state machine: one method per transition, the accounting, a write guard that frees after unlocking |
//! | `shard::clean` | the spiller's walk of a shard's clean window |
//! | `background` | the worker threads (compactor, spiller) and their wake-ups |
//! | `compaction` | reclaiming dead space in spill files, on a background thread |
//! | `lru` | index-based intrusive list over a slab |
//! | `access` | striped lock-free log of memory hits, replayed by writers |
//! | `spill` | the dump dir: naming, segments, records, checksums, lock, the mapping |
//! | `error`, `stats` | [`Error`], [`Stats`] |
//! | `sync` | the locks and atomics: parking_lot's and std's, or shuttle's for the model check |

#![cfg_attr(docsrs, feature(doc_cfg))]

mod access;
#[cfg(feature = "tokio")]
mod asynchronous;
mod background;
mod compaction;
mod config;
mod error;
mod lru;
mod shard;
mod spill;
mod stats;
mod store;
mod sync;

#[cfg(feature = "tokio")]
pub use asynchronous::AsyncSpillStore;
pub use bytes::Bytes;
pub use config::{Builder, DEFAULT_SEGMENT_SIZE, MAX_SHARDS};
pub use error::{Error, LimitKind};
pub use stats::Stats;
pub use store::{Location, SpillStore};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
