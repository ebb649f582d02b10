//! `spillbench`: throughput, latency and correctness of a [`SpillStore`] under
//! a working set larger than its memory budget.
//!
//! ```text
//! cargo run --release --example spillbench                      # defaults, ~12 s
//! cargo run --release --example spillbench -- --secs 2 --working-set 64MiB
//! cargo run --release --example spillbench -- --help
//! ```
//!
//! # What it does
//!
//! With the defaults, a store with a 64 MiB memory budget receives a 256 MiB
//! working set of 64 KiB values, so about three quarters of the data has to
//! live in spill files at any time. Every phase runs on `--threads` worker
//! threads (default: all cores) while the main thread samples
//! [`SpillStore::stats`] every 25 ms for the peak gauges and drives a progress
//! bar on stderr (hidden when stderr is not a terminal).
//!
//! 1. **load**: every key is inserted once (version 0). Everything beyond
//!    the budget is spilled, so this measures insert + spill throughput.
//! 2. **mixed**: for `--secs` seconds, each thread picks keys from a
//!    Zipf(`--zipf`) distribution (rank 1 is the hottest key; ranks are mapped
//!    to keys through a random permutation, so popularity is unrelated to load
//!    order) and either gets the key (`--read-ratio`, 90% by default) or
//!    replaces its value with a new version. With `--scan-ratio`, that
//!    fraction of the gets read the next key of a sequential scan instead
//!    (scan pollution for the eviction policy; `--exact-lru` picks the
//!    policy).
//! 3. **final check** (not timed in the table's phases): every key is read
//!    once more and must hold exactly the last version written, every byte
//!    compared.
//!
//! Keys are 32 hexadecimal characters derived from a key index. Values are
//! self-describing (see `spillbench/payload.rs`): the first 16 bytes hold
//! the key index and version, and the rest is random noise XORed with a hash
//! of the two, so **every get is verified**: length, header and 13 body
//! bytes (the first word, the last byte and 4 random ones), or every byte
//! with `--verify-full` (about 3 µs per 64 KiB). Replacements of one key are
//! serialized by a striped lock in the benchmark, which tracks per key the
//! last version whose insert *returned* (`committed`) and the last version
//! whose insert *started* (`reserved`); a get must return a version in
//! `committed-before-the-get ..= reserved-after-the-get`, which rejects lost
//! keys, values of other keys, torn or corrupted bytes and stale versions
//! (e.g. an old spilled copy reloaded after a replace). Any violation or store
//! error stops the run, prints the first few problems and exits with status 1
//! (bad arguments exit with status 2).
//!
//! # Reading the table
//!
//! * The parameter block repeats the resolved configuration.
//! * **phase** rows: wall-clock seconds, operations (gets + inserts), ops/s,
//!   MB/s of value payload moved through the API (MB = 10^6 bytes; a get from
//!   memory hands out a shared `Bytes` and copies nothing, so this is logical
//!   throughput, not memory bandwidth), the split of gets between memory hits
//!   and reloads from disk as reported by `get_with_location`, and inserts.
//!   Ops/s includes the benchmark's own work (value generation and
//!   verification), latencies do not.
//! * **store** rows: the change of the store's own counters over each phase:
//!   blobs spilled by the inserting threads (and MB/s written), copies
//!   written ahead of need (`cleaned`, and MB/s; see `--clean-ahead`; by
//!   the background spiller, or by a thread that had to spill and then
//!   cleaned a batch for the calls after it), respills (evictions that
//!   reused a copy already on disk and wrote nothing), reloads (and MB/s
//!   read back), memory hits and misses. Misses must be 0; hits and
//!   reloads should match the phase row's get split.
//! * **latency** rows: p50/p99/p99.9/max of the store call alone, from
//!   per-thread HDR histograms (3 significant digits) merged after the phase:
//!   inserts during load, gets served from memory, gets that reloaded from a
//!   spill file, and inserts (replacements) during the mixed phase.
//! * **peak**: the largest `memory_bytes`, `disk_bytes`, spill-file lengths
//!   (`spill_file_bytes` / `spill_files`: apparent, holes and dead space
//!   included) and what the files occupy on disk by the store's count
//!   (`spill_file_allocated_bytes`) seen by the sampler over the whole run;
//!   memory above the budget is flagged.
//! * **end**: the gauges after the final check, with the bytes of the live
//!   records the files must hold and the open spill files.
//! * **disk**: the disk budget and the bytes returned by punching holes.
//! * **du**: at every sample the sampler also adds up `st_blocks` of the
//!   dump dir's files (what `du` counts) and compares it with the live
//!   records' bytes (`spill_live_bytes`: values only on disk and copies kept
//!   for cheap re-eviction, headers included): the peak, the worst ratio,
//!   and how many samples were above 1.25 x live + 16 MiB, over the run and
//!   over the mixed phase alone.
//! * **write amp**: bytes written to spill files (spills, copies cleaned
//!   ahead and compaction) per byte inserted, per phase.
//!
//! With `--cold`, the dump dir's pages are evicted from the page cache after
//! the load phase and every `--cold-every` seconds of the mixed phase (as
//! root with `sync` and `drop_caches`, which empties the whole machine's
//! page cache; otherwise with `posix_fadvise(DONTNEED)` on the spill files),
//! so reloads read the disk the way they do where the dump dir does not fit
//! in memory. A **cold reload** latency row then counts the reloads during
//! which the thread read from storage (its `ru_inblock` grew), and the
//! parameter block says how the pages were evicted and how often.
//!
//! `--json` prints the same data as one JSON object instead (sizes in bytes,
//! latencies in nanoseconds). `--dump-dir` puts the spill files in a given
//! directory instead of a temporary one (useful when the temporary directory
//! is a tmpfs, which would hide the cost of real I/O); the store's
//! `cleanup()` is called at the end either way, and in the temporary
//! directory it must leave no file behind.

#[path = "spillbench/cold.rs"]
mod cold;
#[path = "spillbench/payload.rs"]
mod payload;
#[path = "spillbench/report.rs"]
mod report;
#[path = "spillbench/size.rs"]
mod size;

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use spillstore::{Location, SpillStore, Stats};

use payload::{key_for, mix64, Payload, HEADER_LEN};
use report::{ColdRun, Counters, Gauges, Latency, Params, Peaks, Phase, Report};
use size::{format_size, parse_size};

/// Command-line arguments.
#[derive(Parser, Debug)]
#[command(
    name = "spillbench",
    version,
    about = "Benchmark and verify a SpillStore whose working set exceeds its memory budget",
    after_help = "Sizes accept B, KB, MB, GB, TB (powers of 1000), KiB, MiB, GiB, TiB or \
                  K, M, G, T (powers of 1024), e.g. 64MiB, 1.5GB, 4096."
)]
struct Args {
    /// Memory budget of the store (Builder::max_size).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    max_size: u64,

    /// Total payload of all values; the number of keys is this divided by
    /// --value-size.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_size)]
    working_set: u64,

    /// Size of every value (at least 16 bytes: the verification header).
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_size)]
    value_size: u64,

    /// Worker threads [default: available parallelism].
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    threads: Option<usize>,

    /// Duration of the mixed read/replace phase, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = parse_secs)]
    secs: f64,

    /// Fraction of mixed-phase operations that are gets (the rest replace a
    /// value), between 0 and 1.
    #[arg(long, value_name = "RATIO", default_value_t = 0.9, value_parser = parse_ratio)]
    read_ratio: f64,

    /// Zipf exponent of key popularity (0 = uniform; larger = more skewed).
    #[arg(long, value_name = "S", default_value_t = 0.99, value_parser = parse_zipf)]
    zipf: f64,

    /// Fraction of gets that read keys in sequence instead (each thread
    /// scans the key space from its own starting point), between 0 and 1:
    /// scan pollution for the eviction policy.
    #[arg(long, value_name = "RATIO", default_value_t = 0.0, value_parser = parse_ratio)]
    scan_ratio: f64,

    /// Exact LRU order (Builder::exact_lru) instead of the default
    /// approximate recency (CLOCK).
    #[arg(long)]
    exact_lru: bool,

    /// Put spill files in this directory (created if missing) instead of a
    /// temporary directory.
    #[arg(long, value_name = "DIR")]
    dump_dir: Option<PathBuf>,

    /// Print the results as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,

    /// Compare every byte of every value read (default: length, header and
    /// 13 sampled body bytes).
    #[arg(long)]
    verify_full: bool,

    /// Number of shards (Builder::shards) [default: the library's].
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    shards: Option<usize>,

    /// Largest accepted value (Builder::max_object_size) [default: the
    /// library's].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_object_size: Option<u64>,

    /// Spill files kept open at once (Builder::max_open_files) [default:
    /// the library's].
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    max_open_files: Option<usize>,

    /// Bytes of resident values near the LRU tails that the background
    /// spiller keeps written ahead of need (Builder::clean_ahead) [default:
    /// the library's, a quarter of --max-size up to 256 MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size, conflicts_with = "no_clean_ahead")]
    clean_ahead: Option<u64>,

    /// No copies written ahead (Builder::clean_ahead(0)): inserts that need
    /// room write their victims themselves.
    #[arg(long)]
    no_clean_ahead: bool,

    /// Seed for key popularity and the worker threads' random choices.
    #[arg(long, value_name = "N", default_value_t = 0x5eed)]
    seed: u64,

    /// Evict the dump dir's pages from the page cache after the load phase
    /// and every --cold-every seconds of the mixed phase (drop_caches as
    /// root, else posix_fadvise(DONTNEED)), and report cold reloads apart.
    #[arg(long)]
    cold: bool,

    /// Seconds between two evictions during the mixed phase, with --cold.
    #[arg(long, value_name = "SECS", default_value_t = 2.0, value_parser = parse_secs)]
    cold_every: f64,
}

/// Parses a positive integer (thread and shard counts).
fn parse_threads(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a positive integer")),
    }
}

/// Parses a plain, finite, non-negative decimal number.
fn parse_number(s: &str) -> Result<f64, String> {
    let t = s.trim();
    // Rust's float parser also takes "inf", "NaN" and exponents; only plain
    // decimals are meant here.
    let plain = !t.is_empty()
        && t.chars().all(|c| c.is_ascii_digit() || c == '.')
        && t.chars().any(|c| c.is_ascii_digit());
    match t.parse::<f64>() {
        Ok(v) if plain && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a non-negative decimal number")),
    }
}

/// Parses the mixed-phase duration: a positive number of seconds.
fn parse_secs(s: &str) -> Result<f64, String> {
    let v = parse_number(s.trim().trim_end_matches('s'))?;
    if v <= 0.0 || v > 1e7 {
        return Err(format!(
            "{s:?} is not a duration between 0 and 10^7 seconds"
        ));
    }
    Ok(v)
}

/// Parses a ratio in `0..=1` (also accepts a percentage such as `90%`).
fn parse_ratio(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(pct) => parse_number(pct)? / 100.0,
        None => parse_number(t)?,
    };
    if v > 1.0 {
        return Err(format!("{s:?} is not between 0 and 1 (or 0% and 100%)"));
    }
    Ok(v)
}

/// Parses a Zipf exponent: a non-negative number.
fn parse_zipf(s: &str) -> Result<f64, String> {
    let v = parse_number(s)?;
    if v > 1e3 {
        return Err(format!("{s:?} is not a sensible Zipf exponent (0..=1000)"));
    }
    Ok(v)
}

/// Why a run failed, which decides the exit status.
enum Failure {
    /// The arguments make no sense together (exit status 2).
    Usage(String),
    /// The store returned an error or setting up the run failed (status 1).
    Store(String),
    /// A get returned wrong data or a key went missing (status 1).
    Verify {
        /// Total number of problems found before the workers stopped.
        count: u64,
        /// The first few problem descriptions.
        first: Vec<String>,
    },
}

/// How many problem descriptions are kept for the final error report.
const MAX_REPORTED: usize = 10;

/// Problems found by the workers; the first one makes every worker stop.
#[derive(Default)]
struct Failures {
    /// Set as soon as anything went wrong.
    stop: AtomicBool,
    /// Number of problems reported.
    count: AtomicU64,
    /// Number of those that were store errors rather than wrong data.
    store_errors: AtomicU64,
    /// The first [`MAX_REPORTED`] descriptions.
    first: Mutex<Vec<String>>,
}

impl Failures {
    /// Records a problem and tells everyone to stop.
    fn report(&self, store_error: bool, message: String) {
        self.stop.store(true, Ordering::SeqCst);
        self.count.fetch_add(1, Ordering::SeqCst);
        if store_error {
            self.store_errors.fetch_add(1, Ordering::SeqCst);
        }
        let mut first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
        if first.len() < MAX_REPORTED {
            first.push(message);
        }
    }

    /// Whether workers should stop.
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Turns recorded problems into a [`Failure`], if there were any.
    fn check(&self) -> Result<(), Failure> {
        let count = self.count.load(Ordering::SeqCst);
        if count == 0 {
            return Ok(());
        }
        let first = std::mem::take(&mut *self.first.lock().unwrap_or_else(PoisonError::into_inner));
        if self.store_errors.load(Ordering::SeqCst) == count {
            Err(Failure::Store(first.join("\n")))
        } else {
            Err(Failure::Verify { count, first })
        }
    }
}

/// Number of stripes of the replacement locks.
const WRITE_STRIPES: usize = 1024;

/// Interval between two `stats()` samples (and progress-bar updates).
const SAMPLE_EVERY: Duration = Duration::from_millis(25);

/// Everything the worker threads share.
struct Bench {
    /// The store under test.
    store: SpillStore<String>,
    /// Builds and verifies the values.
    payload: Payload,
    /// `keys[i]` is the key of key index `i`.
    keys: Vec<String>,
    /// `hot[rank - 1]` is the key index with popularity rank `rank`.
    hot: Vec<u32>,
    /// Per key: the highest version whose insert has started.
    reserved: Vec<AtomicU64>,
    /// Per key: the highest version whose insert has returned.
    committed: Vec<AtomicU64>,
    /// Replacements of a key hold stripe `index % WRITE_STRIPES`, so versions
    /// of one key are written one at a time and in order.
    write_locks: Vec<Mutex<()>>,
    /// Fraction of mixed-phase operations that are gets.
    read_ratio: f64,
    /// Zipf exponent.
    zipf: f64,
    /// Fraction of gets that scan keys in sequence.
    scan_ratio: f64,
    /// Worker threads (each scan starts at its own offset).
    threads: usize,
    /// Whether gets compare every byte.
    verify_full: bool,
    /// Whether gets that reload also check if they read the disk (`--cold`).
    cold: bool,
    /// Base seed of the per-thread generators.
    seed: u64,
    /// Next key index to process in the load and check phases.
    cursor: AtomicUsize,
    /// Operations completed in the current phase (for the progress bar).
    progress: AtomicU64,
    /// Problems found so far.
    failures: Failures,
}

/// One thread's latency histograms (nanoseconds).
struct Recorder {
    /// Gets served from memory.
    get_memory: Histogram<u64>,
    /// Gets that reloaded the value from a spill file.
    get_reload: Histogram<u64>,
    /// Those of them that read from storage (with `--cold` only).
    get_reload_cold: Histogram<u64>,
    /// Inserts.
    insert: Histogram<u64>,
}

impl Recorder {
    /// Empty histograms covering 1 ns to 1 hour at 3 significant digits.
    fn new() -> Self {
        let hist =
            || Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("constant, valid bounds");
        Self {
            get_memory: hist(),
            get_reload: hist(),
            get_reload_cold: hist(),
            insert: hist(),
        }
    }

    /// Adds another thread's histograms to these.
    fn merge(&mut self, other: &Self) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.get_memory.add(&other.get_memory);
        let _ = self.get_reload.add(&other.get_reload);
        let _ = self.get_reload_cold.add(&other.get_reload_cold);
        let _ = self.insert.add(&other.insert);
    }
}

/// Advice to append to a store error that the command line can fix.
fn hint(error: &spillstore::Error) -> &'static str {
    match error {
        spillstore::Error::ObjectTooLarge { .. } => {
            " (lower --value-size, or raise --max-object-size / --max-size)"
        }
        _ => "",
    }
}

/// Nanoseconds from `start` to `end`, for a histogram.
fn nanos(start: Instant, end: Instant) -> u64 {
    u64::try_from(end.duration_since(start).as_nanos()).unwrap_or(u64::MAX)
}

impl Bench {
    /// Number of keys.
    fn n(&self) -> usize {
        self.keys.len()
    }

    /// Gets key `index` during the mixed phase, records the latency and
    /// verifies the value and its version. Returns when the get returned.
    fn get(&self, index: usize, rng: &mut StdRng, rec: &mut Recorder) -> Instant {
        let key = &self.keys[index];
        let low = self.committed[index].load(Ordering::SeqCst);
        // Outside the timed call: a system call of its own.
        let blocks_before = self.cold.then(cold::thread_blocks_read);
        let start = Instant::now();
        let result = self.store.get_with_location(key);
        let end = Instant::now();
        let read_disk = blocks_before.is_some_and(|b| cold::thread_blocks_read() > b);
        let high = self.reserved[index].load(Ordering::SeqCst);
        let (value, location) = match result {
            Ok(Some(found)) => found,
            Ok(None) => {
                self.failures.report(
                    false,
                    format!("get {key} (key index {index}): key is missing (lost)"),
                );
                return end;
            }
            Err(e) => {
                self.failures
                    .report(true, format!("get {key} (key index {index}) failed: {e}"));
                return end;
            }
        };
        let (hist, from) = match location {
            Location::Memory => (&mut rec.get_memory, "memory"),
            Location::File => (&mut rec.get_reload, "a spill file"),
        };
        hist.saturating_record(nanos(start, end).max(1));
        if read_disk && location == Location::File {
            rec.get_reload_cold
                .saturating_record(nanos(start, end).max(1));
        }
        let checked = self
            .payload
            .check(&value, index as u64, self.verify_full, rng)
            .and_then(|version| {
                if (low..=high).contains(&version) {
                    Ok(())
                } else {
                    Err(format!(
                        "got version {version}, but only versions {low}..={high} \
                         were current during the get (stale or invented value)"
                    ))
                }
            });
        if let Err(problem) = checked {
            self.failures.report(
                false,
                format!("get {key} (key index {index}) from {from}: {problem}"),
            );
        }
        end
    }

    /// Replaces key `index` with its next version and records the latency.
    /// Returns when the insert returned.
    fn replace(&self, index: usize, rec: &mut Recorder) -> Instant {
        let _guard = self.write_locks[index % WRITE_STRIPES]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let version = self.reserved[index].load(Ordering::SeqCst) + 1;
        self.reserved[index].store(version, Ordering::SeqCst);
        let value = self.payload.make(index as u64, version);
        let key = self.keys[index].clone();
        let start = Instant::now();
        let result = self.store.insert(key, value);
        let end = Instant::now();
        match result {
            Ok(()) => {
                self.committed[index].store(version, Ordering::SeqCst);
                rec.insert.saturating_record(nanos(start, end).max(1));
            }
            Err(e) => self.failures.report(
                true,
                format!(
                    "insert {} (key index {index}, version {version}) failed: {e}{}",
                    self.keys[index],
                    hint(&e)
                ),
            ),
        }
        end
    }

    /// Load-phase worker: inserts version 0 of keys taken from the shared
    /// cursor until none are left.
    fn load_worker(&self) -> Recorder {
        let mut rec = Recorder::new();
        while !self.failures.stopped() {
            let index = self.cursor.fetch_add(1, Ordering::Relaxed);
            if index >= self.n() {
                break;
            }
            let value = self.payload.make(index as u64, 0);
            let key = self.keys[index].clone();
            let start = Instant::now();
            let result = self.store.insert(key, value);
            let end = Instant::now();
            match result {
                Ok(()) => {
                    rec.insert.saturating_record(nanos(start, end).max(1));
                }
                Err(e) => self.failures.report(
                    true,
                    format!(
                        "insert {} (key index {index}) failed: {e}{}",
                        self.keys[index],
                        hint(&e)
                    ),
                ),
            }
            self.progress.fetch_add(1, Ordering::Relaxed);
        }
        rec
    }

    /// Mixed-phase worker number `thread`: Zipf-distributed gets and
    /// replacements until `deadline`.
    fn mixed_worker(&self, thread: usize, deadline: Instant) -> Recorder {
        /// Operations between two updates of the shared progress counter.
        const BATCH: u64 = 64;
        let mut rec = Recorder::new();
        let mut rng = StdRng::seed_from_u64(mix64(self.seed ^ mix64(thread as u64 + 1)));
        let zipf = match Zipf::new(self.n() as u64, self.zipf) {
            Ok(zipf) => zipf,
            Err(e) => {
                self.failures
                    .report(true, format!("cannot build the key distribution: {e}"));
                return rec;
            }
        };
        let mut pending = 0;
        let mut now = Instant::now();
        let mut scan = thread * self.n() / self.threads.max(1);
        while now < deadline && !self.failures.stopped() {
            let rank: f64 = zipf.sample(&mut rng);
            let rank = (rank as usize).clamp(1, self.n());
            let index = self.hot[rank - 1] as usize;
            now = if rng.gen::<f64>() < self.read_ratio {
                if self.scan_ratio > 0.0 && rng.gen::<f64>() < self.scan_ratio {
                    scan = (scan + 1) % self.n();
                    self.get(scan, &mut rng, &mut rec)
                } else {
                    self.get(index, &mut rng, &mut rec)
                }
            } else {
                self.replace(index, &mut rec)
            };
            pending += 1;
            if pending == BATCH {
                self.progress.fetch_add(pending, Ordering::Relaxed);
                pending = 0;
            }
        }
        self.progress.fetch_add(pending, Ordering::Relaxed);
        rec
    }

    /// Final-check worker: every key, taken from the shared cursor, must hold
    /// exactly its last committed version, all bytes intact.
    fn check_worker(&self) {
        let mut rng = StdRng::seed_from_u64(self.seed);
        while !self.failures.stopped() {
            let index = self.cursor.fetch_add(1, Ordering::Relaxed);
            if index >= self.n() {
                break;
            }
            let key = &self.keys[index];
            let expected = self.committed[index].load(Ordering::SeqCst);
            let problem = match self.store.get(key) {
                Ok(Some(value)) => match self.payload.check(&value, index as u64, true, &mut rng) {
                    Ok(version) if version == expected => None,
                    Ok(version) => Some(format!(
                        "holds version {version}, but the last version written is {expected}"
                    )),
                    Err(problem) => Some(problem),
                },
                Ok(None) => Some("key is missing (lost)".to_owned()),
                Err(e) => {
                    self.failures.report(
                        true,
                        format!("final check: get {key} (key index {index}) failed: {e}"),
                    );
                    None
                }
            };
            if let Some(problem) = problem {
                self.failures.report(
                    false,
                    format!("final check: {key} (key index {index}): {problem}"),
                );
            }
            self.progress.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Closes a timed phase: samples the final stats into `peaks`, finishes
    /// its bar, stops on any failure the workers reported, and merges their
    /// latency recorders. Returns the final stats and the merged recorder.
    fn end_phase(
        &self,
        peaks: &mut Peaks,
        bar: &ProgressBar,
        recs: &[Recorder],
    ) -> Result<(Stats, Recorder), Failure> {
        let after = self.store.stats();
        peaks.observe(&after);
        finish_bar(bar);
        self.failures.check()?;
        let mut merged = Recorder::new();
        recs.iter().for_each(|r| merged.merge(r));
        Ok((after, merged))
    }

    /// Runs `worker(thread)` on `threads` threads while this thread samples
    /// the store's stats into `peaks` and calls `tick` (to update the
    /// progress bar) every [`SAMPLE_EVERY`]. Returns the workers' results and
    /// the phase's duration (from the start until the last worker finished).
    /// A worker that panics is reported as a failure (and stops the others);
    /// its result is missing.
    fn run_threads<R: Send>(
        &self,
        threads: usize,
        peaks: &mut Peaks,
        mut tick: impl FnMut(&Self),
        worker: impl Fn(usize) -> R + Sync,
    ) -> (Vec<R>, f64) {
        self.progress.store(0, Ordering::SeqCst);
        self.cursor.store(0, Ordering::SeqCst);
        let start = Instant::now();
        let (results, ends): (Vec<Option<R>>, Vec<Instant>) = thread::scope(|scope| {
            let worker = &worker;
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        let result = panic::catch_unwind(AssertUnwindSafe(|| worker(t)));
                        if result.is_err() {
                            self.failures.report(
                                true,
                                format!("worker thread {t} panicked (see the message above)"),
                            );
                        }
                        (result.ok(), Instant::now())
                    })
                })
                .collect();
            loop {
                let done = handles.iter().all(|h| h.is_finished());
                peaks.observe(&self.store.stats());
                tick(self);
                if done {
                    break;
                }
                thread::sleep(SAMPLE_EVERY);
            }
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| panic::resume_unwind(e)))
                .unzip()
        });
        let end = ends.into_iter().max().unwrap_or(start);
        let results = results.into_iter().flatten().collect();
        (results, end.duration_since(start).as_secs_f64())
    }
}

/// A progress bar on stderr (drawn only when stderr is a terminal).
fn progress_bar(len: u64, prefix: &'static str, template: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let bar = ProgressBar::new(len).with_style(style).with_prefix(prefix);
    bar.tick();
    bar
}

/// Leaves a finished bar on screen and moves to the next line (indicatif
/// leaves the cursor at the end of the bar).
fn finish_bar(bar: &ProgressBar) {
    bar.finish();
    if !bar.is_hidden() {
        eprintln!();
    }
}

/// Template for the load and check bars (counting values).
const COUNT_TEMPLATE: &str = "{prefix:>6} [{elapsed_precise}] [{bar:40}] {pos}/{len} values {msg}";
/// Template for the mixed-phase bar (counting time).
const TIME_TEMPLATE: &str = "{prefix:>6} [{elapsed_precise}] [{bar:40}] {msg}";

/// Resolved configuration plus the derived key count.
fn params(args: &Args, dump_dir: String, temporary_dir: bool) -> Result<Params, Failure> {
    let threads = match args.threads {
        Some(t) => t,
        None => thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if args.value_size < HEADER_LEN as u64 {
        return Err(Failure::Usage(format!(
            "--value-size must be at least {HEADER_LEN} bytes (the verification header), got {}",
            args.value_size
        )));
    }
    if usize::try_from(args.value_size).is_err() || args.value_size > 1 << 40 {
        return Err(Failure::Usage(format!(
            "--value-size {} is too large",
            format_size(args.value_size)
        )));
    }
    let keys = args.working_set / args.value_size;
    if keys == 0 {
        return Err(Failure::Usage(format!(
            "--working-set ({}) must be at least one value (--value-size {})",
            format_size(args.working_set),
            format_size(args.value_size)
        )));
    }
    if keys > u64::from(u32::MAX) {
        return Err(Failure::Usage(format!(
            "{keys} keys (--working-set / --value-size) is more than this benchmark supports \
             ({}); use larger values",
            u32::MAX
        )));
    }
    Ok(Params {
        max_size: args.max_size,
        value_size: args.value_size,
        keys,
        threads,
        secs: args.secs,
        read_ratio: args.read_ratio,
        zipf: args.zipf,
        scan_ratio: args.scan_ratio,
        exact_lru: args.exact_lru,
        shards: args.shards,
        max_object_size: args.max_object_size,
        max_open_files: args.max_open_files,
        clean_ahead: if args.no_clean_ahead {
            Some(0)
        } else {
            args.clean_ahead
        },
        dump_dir,
        temporary_dir,
        verify_full: args.verify_full,
        seed: args.seed,
        cold_every: args.cold.then_some(args.cold_every),
    })
}

/// Runs all phases and returns the report (or why the run failed).
fn run(args: &Args) -> Result<Report, Failure> {
    // The temporary directory (if any) must outlive the store.
    let (temp, dump_dir) = match &args.dump_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                Failure::Store(format!("cannot create --dump-dir {}: {e}", dir.display()))
            })?;
            (None, dir.clone())
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("spillbench-")
                .tempdir()
                .map_err(|e| Failure::Store(format!("cannot create a temporary directory: {e}")))?;
            // A subdirectory, since `cleanup()` may remove the dump dir itself.
            let path = temp.path().join("dump");
            (Some(temp), path)
        }
    };
    let params = params(args, dump_dir.display().to_string(), temp.is_some())?;

    let mut builder = SpillStore::<String>::builder()
        .max_size(params.max_size)
        .dump_dir(&dump_dir)
        .exact_lru(params.exact_lru);
    if let Some(shards) = params.shards {
        builder = builder.shards(shards);
    }
    if let Some(max) = params.max_object_size {
        builder = builder.max_object_size(max);
    }
    if let Some(files) = params.max_open_files {
        builder = builder.max_open_files(files);
    }
    if let Some(bytes) = params.clean_ahead {
        builder = builder.clean_ahead(bytes);
    }
    let store = builder
        .build()
        .map_err(|e| Failure::Store(format!("cannot build the store: {e}")))?;

    let n = params.keys as usize;
    let mut hot: Vec<u32> = (0..n as u32).collect();
    hot.shuffle(&mut StdRng::seed_from_u64(params.seed));
    let bench = Bench {
        store,
        payload: Payload::new(params.value_size as usize, params.seed),
        keys: (0..n as u64).map(key_for).collect(),
        hot,
        reserved: (0..n).map(|_| AtomicU64::new(0)).collect(),
        committed: (0..n).map(|_| AtomicU64::new(0)).collect(),
        write_locks: (0..WRITE_STRIPES).map(|_| Mutex::new(())).collect(),
        read_ratio: params.read_ratio,
        zipf: params.zipf,
        scan_ratio: params.scan_ratio,
        threads: params.threads,
        verify_full: params.verify_full,
        cold: params.cold_every.is_some(),
        seed: params.seed,
        cursor: AtomicUsize::new(0),
        progress: AtomicU64::new(0),
        failures: Failures::default(),
    };
    let result = phases(&bench, params);
    // Always clean up, but report the run's own failure first.
    let cleanup = bench
        .store
        .cleanup()
        .map_err(|e| Failure::Store(format!("cleanup failed: {e}")));
    let report = result?;
    cleanup?;
    if let Some(temp) = temp {
        // Nobody else uses the temporary dump dir, so whatever is left in it
        // was left behind by `cleanup()`.
        let left = std::fs::read_dir(&dump_dir).map_or(0, |entries| entries.count());
        if left > 0 {
            return Err(Failure::Store(format!(
                "cleanup() left {left} file(s) in {}",
                dump_dir.display()
            )));
        }
        temp.close()
            .map_err(|e| Failure::Store(format!("cannot remove the temporary directory: {e}")))?;
    }
    Ok(report)
}

/// The load, mixed and check phases on an already built store.
fn phases(bench: &Bench, params: Params) -> Result<Report, Failure> {
    let n = bench.n() as u64;
    let threads = params.threads;
    let value_size = params.value_size;
    let mut peaks = Peaks::new(bench.store.dump_dir());

    // Load: every key once.
    let bar = progress_bar(n, "load", COUNT_TEMPLATE);
    let before = Counters::of(&bench.store.stats());
    let start = Instant::now();
    let (recs, load_secs) = bench.run_threads(
        threads,
        &mut peaks,
        |b| {
            let done = b.progress.load(Ordering::Relaxed);
            bar.set_position(done);
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "{:.0} MB/s",
                (done * value_size) as f64 / secs / 1e6
            ));
        },
        |_| bench.load_worker(),
    );
    let (after, load_rec) = bench.end_phase(&mut peaks, &bar, &recs)?;
    let load = Phase {
        secs: load_secs,
        gets_memory: 0,
        gets_reload: 0,
        inserts: load_rec.insert.len(),
        store: Counters::of(&after).since(before),
    };
    if after.entries as u64 != n || bench.store.len() as u64 != n {
        return Err(Failure::Verify {
            count: 1,
            first: vec![format!(
                "after loading {n} distinct keys the store holds {} entries (len() = {})",
                after.entries,
                bench.store.len()
            )],
        });
    }

    let (mixed, mixed_rec, cold) = mixed_phase(bench, &params, &mut peaks)?;

    // Final check: every key holds exactly its last version.
    peaks.in_mixed = false;
    let bar = progress_bar(n, "check", COUNT_TEMPLATE);
    let (_, check_secs) = bench.run_threads(
        threads,
        &mut peaks,
        |b| bar.set_position(b.progress.load(Ordering::Relaxed)),
        |_| bench.check_worker(),
    );
    finish_bar(&bar);
    bench.failures.check()?;
    let end = bench.store.stats();
    peaks.observe(&end);
    if end.entries as u64 != n || bench.store.len() as u64 != n {
        return Err(Failure::Verify {
            count: 1,
            first: vec![format!(
                "the store holds {} entries (len() = {}) at the end, expected {n}",
                end.entries,
                bench.store.len()
            )],
        });
    }

    Ok(Report {
        params,
        load,
        mixed,
        latencies: [
            Some(Latency::of("load insert", &load_rec.insert)),
            Some(Latency::of("get memory", &mixed_rec.get_memory)),
            Some(Latency::of("get reload", &mixed_rec.get_reload)),
            cold.is_some()
                .then(|| Latency::of("cold reload", &mixed_rec.get_reload_cold)),
            Some(Latency::of("mixed insert", &mixed_rec.insert)),
        ]
        .into_iter()
        .flatten()
        .collect(),
        peaks,
        check_secs,
        end: Gauges::of(&end),
        cold,
    })
}

/// With `--cold`, evicts the dump dir's pages if the next eviction is due
/// `elapsed` into a mixed phase of `duration` (the first one at once).
fn evict_if_due(
    cold: &mut Option<ColdRun>,
    dir: &Path,
    elapsed: Duration,
    duration: Duration,
) -> Result<(), String> {
    let Some(c) = cold else { return Ok(()) };
    let due = c.evictions as f64 * c.every;
    if elapsed.as_secs_f64() >= due && (elapsed < duration || c.evictions == 0) {
        c.method = Some(cold::evict(dir)?.name());
        c.evictions += 1;
    }
    Ok(())
}

/// The mixed phase: Zipf gets and replacements for `--secs`. With `--cold`,
/// the dump dir's pages are evicted from the page cache before it starts
/// and every `--cold-every` seconds while it runs (by the sampling thread).
fn mixed_phase(
    bench: &Bench,
    params: &Params,
    peaks: &mut Peaks,
) -> Result<(Phase, Recorder, Option<ColdRun>), Failure> {
    let dump_dir = bench
        .store
        .dump_dir()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut cold = params.cold_every.map(|every| ColdRun {
        every,
        method: None,
        evictions: 0,
    });
    let duration = Duration::from_secs_f64(params.secs);
    evict_if_due(&mut cold, &dump_dir, Duration::ZERO, duration).map_err(Failure::Store)?;
    peaks.in_mixed = true;
    let bar = progress_bar(duration.as_millis() as u64, "mixed", TIME_TEMPLATE);
    let before = Counters::of(&bench.store.stats());
    let start = Instant::now();
    let deadline = start + duration;
    let mut evict_error = None;
    let (recs, mixed_secs) = bench.run_threads(
        params.threads,
        peaks,
        |b| {
            let elapsed = start.elapsed();
            if evict_error.is_none() {
                evict_error = evict_if_due(&mut cold, &dump_dir, elapsed, duration).err();
            }
            bar.set_position(elapsed.as_millis() as u64);
            let ops = b.progress.load(Ordering::Relaxed);
            bar.set_message(format!(
                "{:.1}/{} s, {:.0} ops/s",
                elapsed.as_secs_f64().min(params.secs),
                params.secs,
                ops as f64 / elapsed.as_secs_f64().max(1e-9)
            ));
        },
        |t| bench.mixed_worker(t, deadline),
    );
    let (after, mixed_rec) = bench.end_phase(peaks, &bar, &recs)?;
    if let Some(e) = evict_error {
        return Err(Failure::Store(e));
    }
    let mixed = Phase {
        secs: mixed_secs,
        gets_memory: mixed_rec.get_memory.len(),
        gets_reload: mixed_rec.get_reload.len(),
        inserts: mixed_rec.insert.len(),
        store: Counters::of(&after).since(before),
    };
    Ok((mixed, mixed_rec, cold))
}

/// Parses the arguments, runs the benchmark and prints the report; the exit
/// status is 0 on success, 1 on store errors or verification failures and 2
/// on bad arguments.
fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report.json()) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("spillbench: cannot render JSON: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(message)) => {
            eprintln!("spillbench: invalid arguments: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Store(message)) => {
            eprintln!("spillbench: store error: {message}");
            ExitCode::FAILURE
        }
        Err(Failure::Verify { count, first }) => {
            eprintln!("spillbench: VERIFICATION FAILED ({count} problem(s)); first ones:");
            for message in &first {
                eprintln!("  {message}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_secs("2"), Ok(2.0));
        assert_eq!(parse_secs("0.5s"), Ok(0.5));
        assert_eq!(parse_ratio("0.9"), Ok(0.9));
        assert_eq!(parse_ratio("90%"), Ok(0.9));
        assert_eq!(parse_ratio("1"), Ok(1.0));
        assert_eq!(parse_zipf("0"), Ok(0.0));
        assert_eq!(parse_threads("3"), Ok(3));
        for bad in ["", "0", "-1", "inf", "NaN", "1e3", "x"] {
            assert!(parse_secs(bad).is_err(), "--secs {bad:?}");
        }
        for bad in ["1.5", "101%", "-0.1", "nan", ""] {
            assert!(parse_ratio(bad).is_err(), "--read-ratio {bad:?}");
        }
        for bad in ["0", "-2", "two", ""] {
            assert!(parse_threads(bad).is_err(), "--threads {bad:?}");
        }
    }

    #[test]
    fn arguments() {
        let args = Args::try_parse_from(["spillbench"]).expect("defaults parse");
        assert_eq!(args.max_size, 64 << 20);
        assert_eq!(args.working_set, 256 << 20);
        assert_eq!(args.value_size, 64 << 10);
        assert_eq!(args.secs, 10.0);
        assert!(Args::try_parse_from(["spillbench", "--max-size", "12 parsecs"]).is_err());
        let p = params(&args, String::new(), true)
            .ok()
            .expect("valid defaults");
        assert_eq!(p.keys, 4096);
    }
}
