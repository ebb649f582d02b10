//! The cold spill-reload workload: a working set far larger than the memory
//! budget, read back with the page cache emptied first, each key at most
//! once, so every reload reads the disk; and a plain `pread` of a file as
//! the reference a reload should match.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;

use crate::store::{Store, StoreConfig};
use crate::workload::{check_value, Cell, Counters};

/// Empties the machine's page cache: `sync`, then `drop_caches` (root
/// only). Pages a process has mapped stay cached.
pub fn drop_caches() -> Result<()> {
    let status = std::process::Command::new("sync")
        .status()
        .context("running sync")?;
    if !status.success() {
        bail!("sync failed: {status}");
    }
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .context("cold-reload needs root: writing /proc/sys/vm/drop_caches")
}

/// What one repetition took from the disk: bytes this process had read
/// from storage (`read_bytes` of /proc/self/io, which counts reads the
/// kernel submitted for it, page faults and readahead included) and read
/// requests the dump dir's block device completed (the whole machine's).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct DiskReads {
    pub bytes: u64,
    pub requests: u64,
    /// Nanoseconds the worker threads ran on a CPU (their schedstat).
    pub cpu_ns: u64,
    /// Minor page faults the worker threads took (fresh buffers).
    pub minor_faults: u64,
}

impl DiskReads {
    /// The counters now, for the device holding `dir`; zeros for what
    /// cannot be read.
    pub fn now(dir: &Path) -> Self {
        let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
        let bytes = io
            .lines()
            .find_map(|l| l.strip_prefix("read_bytes:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let dev = std::fs::metadata(dir).map(|m| m.dev()).unwrap_or(0);
        // Linux's encoding of a dev_t: major in bits 8..20 and 32.., minor in
        // bits 0..8 and 20..32.
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat"))
            .unwrap_or_default();
        let requests = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        DiskReads {
            bytes,
            requests,
            cpu_ns: 0,
            minor_faults: 0,
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: DiskReads) -> DiskReads {
        DiskReads {
            bytes: self.bytes.saturating_sub(earlier.bytes),
            requests: self.requests.saturating_sub(earlier.requests),
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            minor_faults: self.minor_faults.saturating_sub(earlier.minor_faults),
        }
    }
}

/// Nanoseconds the calling thread has run on a CPU, and its minor page
/// faults (zeros if unknown).
fn thread_usage() -> (u64, u64) {
    let cpu = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    // minflt is the 8th field after the command name's closing parenthesis.
    let faults = std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(7)?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    (cpu, faults)
}

/// One timed repetition: `threads` threads get the keys `perm[from..to]`,
/// each once (a shared cursor hands them out), checking every value.
pub fn run_rep(
    store: &dyn Store,
    cell: &Cell<'_>,
    perm: &[u32],
    range: std::ops::Range<usize>,
    threads: usize,
) -> Result<(Counters, Duration, (u64, u64))> {
    let cpu_ns = AtomicU64::new(0);
    let faults = AtomicU64::new(0);
    let cursor = AtomicUsize::new(range.start);
    let t0 = Instant::now();
    let results: Vec<Result<Counters>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut c = Counters::default();
                    let before = thread_usage();
                    loop {
                        let i = cursor.fetch_add(1, Ordering::Relaxed);
                        if i >= range.end {
                            let after = thread_usage();
                            cpu_ns.fetch_add(after.0.saturating_sub(before.0), Ordering::Relaxed);
                            faults.fetch_add(after.1.saturating_sub(before.1), Ordering::Relaxed);
                            return Ok(c);
                        }
                        let idx = perm[i] as usize;
                        c.gets += 1;
                        if let Some(v) = store.get(&cell.keys[idx])? {
                            c.hits += 1;
                            c.bytes_read += v.len() as u64;
                            if !check_value(idx as u64, cell.value_size, &v) {
                                c.corrupt += 1;
                            }
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("worker panicked"))))
            .collect()
    });
    let elapsed = t0.elapsed();
    let mut total = Counters::default();
    for r in results {
        total.add(&r?);
    }
    Ok((total, elapsed, (cpu_ns.into_inner(), faults.into_inner())))
}

/// The reference: every value at `index * value_size` of one plain file,
/// read back with one `pread` into a new buffer. No memory budget, no
/// checksum: what the disk and the kernel give.
pub struct PreadFile {
    file: File,
    value_size: u64,
    index: RwLock<HashMap<String, u64>>,
    reads: AtomicU64,
}

impl PreadFile {
    pub fn new(cfg: &StoreConfig) -> Result<Self> {
        let path = cfg.dir.join("values.bin");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            file,
            value_size: cfg.value_size as u64,
            index: RwLock::new(HashMap::with_capacity(cfg.n_keys)),
            reads: AtomicU64::new(0),
        })
    }
}

impl Store for PreadFile {
    fn insert(&self, key: &str, value: Bytes) -> Result<()> {
        if value.len() as u64 != self.value_size {
            bail!("pread: values must all be {} bytes", self.value_size);
        }
        let mut index = self.index.write().map_err(|_| anyhow!("pread: poisoned"))?;
        let next = index.len() as u64;
        let slot = *index.entry(key.to_owned()).or_insert(next);
        self.file
            .write_all_at(&value, slot * self.value_size)
            .context("pread: writing")
    }

    fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let slot = {
            let index = self.index.read().map_err(|_| anyhow!("pread: poisoned"))?;
            match index.get(key) {
                Some(&slot) => slot,
                None => return Ok(None),
            }
        };
        let mut buf = vec![0u8; self.value_size as usize];
        self.file
            .read_exact_at(&mut buf, slot * self.value_size)
            .context("pread: reading")?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(Some(Bytes::from(buf)))
    }

    fn settle(&self) -> Result<()> {
        self.file.sync_data().context("pread: syncing")
    }

    fn reloads(&self) -> Option<u64> {
        Some(self.reads.load(Ordering::Relaxed))
    }

    fn notes(&self) -> String {
        "reference: one pread per get into a new buffer, no cache, no checksum".to_owned()
    }
}
