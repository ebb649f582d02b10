//! `stress`: a long, fully verified concurrent run of a [`SpillStore`] with a
//! tiny memory budget, so spills, reloads and segment rollovers happen all
//! the time.
//!
//! ```text
//! cargo run --release --example stress                              # 10 s, 16 threads
//! cargo run --release --example stress -- --secs 600 --threads 16
//! cargo run --release --example stress -- --max-size 1MiB --seed 42
//! ```
//!
//! # What it does
//!
//! A store with a 256 KiB budget (`--max-size`) and 64 KiB segments
//! (`--segment-size`, so small records share segments and any record over
//! 16 KiB gets a file of its own) is hammered by `--threads` threads. Each
//! thread owns `--keys-per-thread` keys (disjoint ranges) and draws its keys
//! from a Zipf(0.99) distribution. Per operation it either
//!
//! * inserts a new version of one of its keys (30%), of a random size: mostly
//!   0..=8 KiB, and 1% of the time larger than one shard's share of the
//!   budget (those go straight to disk and are served from the mapping);
//!   with a share of 256 KiB or more, another 1% between 256 KiB and the
//!   share (the default policy serves those from the mapping on a first read
//!   and brings them back into memory on a second);
//! * removes one of its keys (5%);
//! * gets one of its keys (40%): the value must be exactly what its model
//!   says (a `HashMap` key -> (version, length)), every byte compared;
//! * gets a key of another thread (25%): the value must be self-consistent
//!   and plausible (see below).
//!
//! **Values** describe themselves: a 24-byte header (global key number,
//! version, length, little-endian u64s) followed by a pseudo-random pattern
//! seeded by key and version, the whole truncated to the value's length. A
//! value of 16 bytes or more names its version, so it is regenerated and
//! compared byte for byte; a shorter one is compared on its key prefix.
//!
//! **Other threads' keys** are checked against per-key atomics the owner
//! updates around each operation: a sequence number (odd while an operation
//! is in flight, seqlock style), the last committed state (version, length,
//! present) and the highest version started. If no operation started or was
//! in flight during the get, the result must equal the committed state
//! exactly (value byte for byte, or absent). Otherwise a returned version
//! must lie between the committed one before the get (strictly above it if
//! the key was removed) and the highest version started after it.
//!
//! Every 50 ms the main thread checks `memory_bytes <= max_size` and that
//! no corruption was counted; every second it also runs
//! [`SpillStore::validate`] and prints a progress line (ops, ops/s, spills,
//! reloads, memory, disk and spill-file bytes). At the end it joins the
//! threads, verifies every key of every model, checks that `memory_bytes +
//! disk_bytes` equals the model's total and `entries` its key count, runs
//! `validate`, removes every key and checks that the store is empty and the
//! dump dir holds only `.spillstore.lock`. It prints `PASS` and exits 0, or
//! prints the first problems and exits 1.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use spillstore::{Location, SpillStore, Stats};

const KIB: u64 = 1 << 10;
const HEADER: usize = 24;
/// Values this large or larger come back into memory on their second read
/// (the library's default policy), not their first.
const LARGE: u64 = 256 * KIB;
/// A value at least this long names its version.
const VERSIONED: usize = 16;
const ZIPF_S: f64 = 0.99;
/// Failures kept for the report.
const MAX_FAILURES: usize = 20;

/// A long, fully verified concurrent stress run of spillstore.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Seconds to run the workload.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Memory budget (bytes, or with a K/KiB, M/MiB or G/GiB suffix; all binary).
    #[arg(long, default_value = "256KiB", value_parser = parse_size)]
    max_size: u64,
    /// Segment file size (same units).
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    segment_size: u64,
    /// Shard count (default: the store's default).
    #[arg(long)]
    shards: Option<usize>,
    /// Keys owned by each thread.
    #[arg(long, default_value_t = 512)]
    keys_per_thread: usize,
    /// RNG seed (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown unit {other:?} in {s:?}")),
    };
    n.checked_shl(shift)
        .filter(|v| v >> shift == n)
        .ok_or_else(|| format!("size too large: {s:?}"))
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes the value of `(gid, version)` with `len` bytes into `buf`.
fn make_value(buf: &mut Vec<u8>, gid: u64, version: u64, len: usize) {
    buf.clear();
    buf.resize(len.max(HEADER), 0);
    buf[0..8].copy_from_slice(&gid.to_le_bytes());
    buf[8..16].copy_from_slice(&version.to_le_bytes());
    buf[16..24].copy_from_slice(&(len as u64).to_le_bytes());
    let mut state = gid.rotate_left(32) ^ version.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    for chunk in buf[HEADER..].chunks_mut(8) {
        let word = splitmix(&mut state).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    buf.truncate(len);
}

fn le_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// Describes a value for error messages.
fn describe(bytes: &[u8]) -> String {
    if bytes.len() >= HEADER {
        format!(
            "{} bytes, header (key {}, version {}, len {})",
            bytes.len(),
            le_u64(&bytes[0..]),
            le_u64(&bytes[8..]),
            le_u64(&bytes[16..])
        )
    } else {
        format!("{} bytes {:02x?}", bytes.len(), bytes)
    }
}

/// Checks a value of key `gid` without knowing its version; returns the
/// version it names, if it is long enough to name one.
fn check_self_consistent(
    bytes: &[u8],
    gid: u64,
    scratch: &mut Vec<u8>,
) -> Result<Option<u64>, String> {
    let key_bytes = gid.to_le_bytes();
    let prefix = bytes.len().min(8);
    if bytes[..prefix] != key_bytes[..prefix] {
        return Err(format!(
            "value of key {gid} belongs to another key: {}",
            describe(bytes)
        ));
    }
    if bytes.len() < VERSIONED {
        return Ok(None);
    }
    let version = le_u64(&bytes[8..]);
    make_value(scratch, gid, version, bytes.len());
    if bytes != &scratch[..] {
        let at = bytes.iter().zip(scratch.iter()).position(|(a, b)| a != b);
        return Err(format!(
            "value of key {gid} is not self-consistent (first wrong byte at {at:?}): {}",
            describe(bytes)
        ));
    }
    Ok(Some(version))
}

/// Committed state of a key: version, length and whether it is present.
fn pack(version: u64, len: usize, present: bool) -> u64 {
    (version << 32) | ((len as u64) << 1) | u64::from(present)
}

fn unpack(state: u64) -> (u64, usize, bool) {
    (
        state >> 32,
        ((state & 0xFFFF_FFFF) >> 1) as usize,
        state & 1 == 1,
    )
}

/// What other threads may know about a key.
#[derive(Default)]
struct KeyState {
    /// Odd while its owner has an operation in flight.
    seq: AtomicU64,
    /// `pack(version, len, present)` after the owner's last operation.
    committed: AtomicU64,
    /// Highest version whose insert started.
    started: AtomicU64,
}

/// Per-thread counters, on their own cache line.
#[derive(Default)]
#[repr(align(128))]
struct Counters {
    ops: AtomicU64,
    inserts: AtomicU64,
    big_inserts: AtomicU64,
    removes: AtomicU64,
    own_gets: AtomicU64,
    foreign_gets: AtomicU64,
    file_gets: AtomicU64,
}

struct Shared {
    store: SpillStore,
    names: Vec<String>,
    keys: Vec<KeyState>,
    counters: Vec<Counters>,
    keys_per_thread: usize,
    max_size: u64,
    /// One shard's share of the budget.
    share: u64,
    stop: AtomicBool,
    failures: Mutex<Vec<String>>,
    failure_count: AtomicUsize,
}

impl Shared {
    fn fail(&self, msg: String) {
        self.failure_count.fetch_add(1, Ordering::SeqCst);
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() < MAX_FAILURES {
            failures.push(msg);
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    fn failed(&self) -> bool {
        self.failure_count.load(Ordering::SeqCst) > 0
    }
}

/// A thread's exact knowledge of its own keys.
struct Model {
    /// Key index -> (version, length) of the stored value.
    values: HashMap<usize, (u64, usize)>,
    /// Last version used per key index (versions never repeat).
    last_version: Vec<u64>,
}

struct Worker<'a> {
    shared: &'a Shared,
    thread: usize,
    threads: usize,
    rng: StdRng,
    zipf: Zipf<f64>,
    model: Model,
    buf: Vec<u8>,
    scratch: Vec<u8>,
}

impl Worker<'_> {
    fn gid(&self, thread: usize, idx: usize) -> usize {
        thread * self.shared.keys_per_thread + idx
    }

    fn pick(&mut self) -> usize {
        let rank = self.zipf.sample(&mut self.rng) as usize;
        rank.clamp(1, self.shared.keys_per_thread) - 1
    }

    fn random_len(&mut self) -> (usize, bool) {
        let p = self.rng.gen_range(0..1000);
        if p < 10 {
            // At most 1 GiB: lengths are packed in 31 bits in `KeyState`.
            let (share, max) = (self.shared.share, self.shared.max_size.min(1 << 30));
            let lo = (share + 1).min(max);
            let hi = (2 * share).clamp(lo, max);
            (self.rng.gen_range(lo..=hi) as usize, true)
        } else if p < 20 && self.shared.share >= LARGE {
            (
                self.rng.gen_range(LARGE..=self.shared.share) as usize,
                false,
            )
        } else if p < 300 {
            (self.rng.gen_range(0..=256), false)
        } else {
            (self.rng.gen_range(257..=8 * KIB as usize), false)
        }
    }

    fn run(mut self) -> Model {
        let shared = self.shared;
        let counters = &shared.counters[self.thread];
        while !shared.stop.load(Ordering::Relaxed) {
            let p = self.rng.gen_range(0..100);
            let result = match p {
                0..30 => self.insert(),
                30..35 => self.remove(),
                35..75 => self.get_own(),
                _ if self.threads > 1 => self.get_foreign(),
                _ => self.get_own(),
            };
            if let Err(msg) = result {
                shared.fail(format!("thread {}: {msg}", self.thread));
                break;
            }
            counters.ops.fetch_add(1, Ordering::Relaxed);
        }
        self.model
    }

    fn insert(&mut self) -> Result<(), String> {
        let idx = self.pick();
        let gid = self.gid(self.thread, idx);
        let version = self.model.last_version[idx] + 1;
        let (len, big) = self.random_len();
        make_value(&mut self.buf, gid as u64, version, len);
        let value = self.buf.clone();
        let ks = &self.shared.keys[gid];
        ks.started.store(version, Ordering::SeqCst);
        ks.seq.fetch_add(1, Ordering::SeqCst);
        let result = self
            .shared
            .store
            .insert(self.shared.names[gid].clone(), value);
        if let Err(e) = result {
            return Err(format!(
                "insert of key {gid} v{version} ({len} bytes) failed: {e}"
            ));
        }
        ks.committed
            .store(pack(version, len, true), Ordering::SeqCst);
        ks.seq.fetch_add(1, Ordering::SeqCst);
        self.model.last_version[idx] = version;
        self.model.values.insert(idx, (version, len));
        let counters = &self.shared.counters[self.thread];
        counters.inserts.fetch_add(1, Ordering::Relaxed);
        if big {
            counters.big_inserts.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn remove(&mut self) -> Result<(), String> {
        let idx = self.pick();
        let gid = self.gid(self.thread, idx);
        let ks = &self.shared.keys[gid];
        ks.seq.fetch_add(1, Ordering::SeqCst);
        let removed = self
            .shared
            .store
            .remove(self.shared.names[gid].as_str())
            .map_err(|e| format!("remove of key {gid} failed: {e}"))?;
        let version = self.model.last_version[idx];
        ks.committed
            .store(pack(version, 0, false), Ordering::SeqCst);
        ks.seq.fetch_add(1, Ordering::SeqCst);
        let expected = self.model.values.remove(&idx).is_some();
        if removed != expected {
            return Err(format!(
                "remove of key {gid} returned {removed}, the model says {expected}"
            ));
        }
        self.shared.counters[self.thread]
            .removes
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn get_own(&mut self) -> Result<(), String> {
        let idx = self.pick();
        let gid = self.gid(self.thread, idx);
        let got = self
            .shared
            .store
            .get_with_location(self.shared.names[gid].as_str())
            .map_err(|e| format!("get of own key {gid} failed: {e}"))?;
        let counters = &self.shared.counters[self.thread];
        counters.own_gets.fetch_add(1, Ordering::Relaxed);
        if matches!(got, Some((_, Location::File))) {
            counters.file_gets.fetch_add(1, Ordering::Relaxed);
        }
        let expected = self.model.values.get(&idx).copied();
        check_exact(
            gid,
            got.as_ref().map(|(b, _)| &b[..]),
            expected,
            &mut self.scratch,
        )
    }

    fn get_foreign(&mut self) -> Result<(), String> {
        let other = (self.thread + self.rng.gen_range(1..self.threads)) % self.threads;
        let idx = self.pick();
        let gid = self.gid(other, idx);
        let ks = &self.shared.keys[gid];
        let s1 = ks.seq.load(Ordering::SeqCst);
        let (c_version, c_len, c_present) = unpack(ks.committed.load(Ordering::SeqCst));
        let got = self
            .shared
            .store
            .get_with_location(self.shared.names[gid].as_str())
            .map_err(|e| format!("get of key {gid} (thread {other}) failed: {e}"))?;
        let s2 = ks.seq.load(Ordering::SeqCst);
        let started = ks.started.load(Ordering::SeqCst);
        let counters = &self.shared.counters[self.thread];
        counters.foreign_gets.fetch_add(1, Ordering::Relaxed);
        if matches!(got, Some((_, Location::File))) {
            counters.file_gets.fetch_add(1, Ordering::Relaxed);
        }
        let bytes = got.as_ref().map(|(b, _)| &b[..]);
        if s1 == s2 && s1.is_multiple_of(2) {
            // Nothing changed the key during the get: exact answer.
            let expected = c_present.then_some((c_version, c_len));
            return check_exact(gid, bytes, expected, &mut self.scratch)
                .map_err(|e| format!("quiet key of thread {other}: {e}"));
        }
        let Some(bytes) = bytes else {
            return Ok(()); // removed, or being removed, during the get
        };
        let Some(version) = check_self_consistent(bytes, gid as u64, &mut self.scratch)? else {
            return Ok(());
        };
        let lowest = if c_present { c_version } else { c_version + 1 };
        if version < lowest || version > started {
            return Err(format!(
                "key {gid} (thread {other}): got version {version}, expected {lowest}..={started} \
                 (committed v{c_version}, present {c_present})"
            ));
        }
        Ok(())
    }
}

/// Checks a get result against the exact expected `(version, len)`.
fn check_exact(
    gid: usize,
    got: Option<&[u8]>,
    expected: Option<(u64, usize)>,
    scratch: &mut Vec<u8>,
) -> Result<(), String> {
    match (got, expected) {
        (None, None) => Ok(()),
        (Some(bytes), None) => Err(format!(
            "key {gid} should be absent, got {}",
            describe(bytes)
        )),
        (None, Some((v, len))) => Err(format!("key {gid} v{v} ({len} bytes) is missing")),
        (Some(bytes), Some((v, len))) => {
            make_value(scratch, gid as u64, v, len);
            if bytes == &scratch[..] {
                return Ok(());
            }
            let at = bytes.iter().zip(scratch.iter()).position(|(a, b)| a != b);
            Err(format!(
                "key {gid}: expected v{v} ({len} bytes), got {} (first differing byte {at:?})",
                describe(bytes)
            ))
        }
    }
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 10 << 30 => format!("{} GiB", b >> 30),
        b if b >= 10 << 20 => format!("{} MiB", b >> 20),
        b if b >= 10 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn total_ops(shared: &Shared) -> u64 {
    shared
        .counters
        .iter()
        .map(|c| c.ops.load(Ordering::Relaxed))
        .sum()
}

fn check_stats(shared: &Shared, stats: &Stats) {
    if stats.memory_bytes > shared.max_size {
        shared.fail(format!(
            "memory_bytes {} over max_size {}",
            stats.memory_bytes, shared.max_size
        ));
    }
    if stats.corruptions != 0 {
        shared.fail(format!("{} corruptions counted", stats.corruptions));
    }
}

fn exit_with_failures(shared: &Shared) -> ! {
    let failures = shared.failures.lock().unwrap_or_else(|e| e.into_inner());
    let total = shared.failure_count.load(Ordering::SeqCst);
    eprintln!("FAIL: {total} problem(s); the first {}:", failures.len());
    for f in failures.iter() {
        eprintln!("  {f}");
    }
    if let Some(dir) = shared.store.dump_dir() {
        eprintln!("the dump dir is left for inspection: {}", dir.display());
    }
    std::process::exit(1);
}

fn main() {
    let args = Args::parse();
    if args.threads == 0 || args.keys_per_thread == 0 {
        eprintln!("error: --threads and --keys-per-thread must be positive");
        std::process::exit(2);
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let dir = tempfile::tempdir().expect("creating a temporary dump dir");
    let mut builder = SpillStore::builder()
        .max_size(args.max_size)
        .dump_dir(dir.path())
        .segment_size(args.segment_size);
    if let Some(n) = args.shards {
        builder = builder.shards(n);
    }
    let store: SpillStore = match builder.build() {
        Ok(store) => store,
        Err(e) => {
            eprintln!("error: cannot build the store: {e}");
            std::process::exit(2);
        }
    };
    let shards = store.shard_count() as u64;
    let n_keys = args.threads * args.keys_per_thread;
    let shared = Shared {
        store,
        names: (0..args.threads)
            .flat_map(|t| (0..args.keys_per_thread).map(move |i| format!("t{t:03}-k{i:06}")))
            .collect(),
        keys: (0..n_keys).map(|_| KeyState::default()).collect(),
        counters: (0..args.threads).map(|_| Counters::default()).collect(),
        keys_per_thread: args.keys_per_thread,
        max_size: args.max_size,
        share: args.max_size / shards,
        stop: AtomicBool::new(false),
        failures: Mutex::new(Vec::new()),
        failure_count: AtomicUsize::new(0),
    };
    println!(
        "stress: {} s, {} threads x {} keys, max_size {}, segment_size {}, {} shards \
         (share {}), seed {seed}, dump dir {}",
        args.secs,
        args.threads,
        args.keys_per_thread,
        human(args.max_size),
        human(args.segment_size),
        shards,
        human(shared.share),
        dir.path().display()
    );

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.secs);
    let models: Vec<Option<Model>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.threads)
            .map(|t| {
                let shared = &shared;
                let threads = args.threads;
                s.spawn(move || {
                    let kpt = shared.keys_per_thread;
                    Worker {
                        shared,
                        thread: t,
                        threads,
                        rng: StdRng::seed_from_u64(seed ^ (t as u64).wrapping_mul(0x9E37_79B9)),
                        zipf: Zipf::new(kpt as u64, ZIPF_S).expect("zipf"),
                        model: Model {
                            values: HashMap::new(),
                            last_version: vec![0; kpt],
                        },
                        buf: Vec::new(),
                        scratch: Vec::new(),
                    }
                    .run()
                })
            })
            .collect();
        monitor(&shared, started, deadline);
        shared.stop.store(true, Ordering::SeqCst);
        handles
            .into_iter()
            .enumerate()
            .map(|(t, h)| match h.join() {
                Ok(model) => Some(model),
                Err(_) => {
                    shared.fail(format!("thread {t} panicked"));
                    None
                }
            })
            .collect()
    });
    let elapsed = started.elapsed();
    if shared.failed() {
        exit_with_failures(&shared);
    }
    let models: Vec<Model> = models.into_iter().flatten().collect();
    final_checks(&shared, &models, dir.path());
    if shared.failed() {
        exit_with_failures(&shared);
    }
    let ops = total_ops(&shared);
    let sum = |f: fn(&Counters) -> &AtomicU64| -> u64 {
        shared
            .counters
            .iter()
            .map(|c| f(c).load(Ordering::Relaxed))
            .sum()
    };
    let stats = shared.store.stats();
    println!(
        "PASS: {ops} ops in {:.1} s ({:.0} ops/s): {} inserts ({} larger than a shard's share), \
         {} removes, {} own gets, {} foreign gets ({} served from files); store: {} spills, \
         {} copies cleaned ahead, {} respills, {} reloads ({} left on disk), 0 corruptions; \
         seed {seed}",
        elapsed.as_secs_f64(),
        ops as f64 / elapsed.as_secs_f64(),
        sum(|c| &c.inserts),
        sum(|c| &c.big_inserts),
        sum(|c| &c.removes),
        sum(|c| &c.own_gets),
        sum(|c| &c.foreign_gets),
        sum(|c| &c.file_gets),
        stats.spills,
        stats.cleaned,
        stats.respills,
        stats.reloads,
        stats.unpromoted_reloads,
    );
}

/// Until the deadline or a failure: checks the stats every 50 ms, validates
/// and prints a progress line every second.
fn monitor(shared: &Shared, started: Instant, deadline: Instant) {
    let mut last_print = started;
    let mut last_ops = 0;
    loop {
        let now = Instant::now();
        if now >= deadline || shared.stop.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
        check_stats(shared, &shared.store.stats());
        if last_print.elapsed() >= Duration::from_secs(1) {
            if let Err(e) = shared.store.validate() {
                shared.fail(format!("validate() during the run: {e}"));
            }
            let stats = shared.store.stats();
            let ops = total_ops(shared);
            let dt = last_print.elapsed().as_secs_f64();
            println!(
                "[{:>5.0} s] ops {ops:>11} ({:>8.0}/s)  spills {:>9}  reloads {:>9}  \
                 memory {:>9}  disk {:>9}  spill files {:>4} / {:>9}  entries {}",
                started.elapsed().as_secs_f64(),
                (ops - last_ops) as f64 / dt,
                stats.spills,
                stats.reloads,
                human(stats.memory_bytes),
                human(stats.disk_bytes),
                stats.spill_files,
                human(stats.spill_file_bytes),
                stats.entries,
            );
            last_print = Instant::now();
            last_ops = ops;
        }
    }
}

/// After the threads are joined: every key checked, totals, validate,
/// removal of everything, and an empty dump dir.
fn final_checks(shared: &Shared, models: &[Model], dir: &std::path::Path) {
    let store = &shared.store;
    let mut scratch = Vec::new();
    let (mut entries, mut bytes) = (0usize, 0u64);
    for (t, model) in models.iter().enumerate() {
        for idx in 0..shared.keys_per_thread {
            let gid = t * shared.keys_per_thread + idx;
            let expected = model.values.get(&idx).copied();
            if let Some((_, len)) = expected {
                entries += 1;
                bytes += len as u64;
            }
            let got = match store.get(shared.names[gid].as_str()) {
                Ok(got) => got,
                Err(e) => {
                    shared.fail(format!("final get of key {gid} failed: {e}"));
                    continue;
                }
            };
            if let Err(e) = check_exact(gid, got.as_deref(), expected, &mut scratch) {
                shared.fail(format!("final check: {e}"));
            }
        }
    }
    let stats = store.stats();
    check_stats(shared, &stats);
    if stats.memory_bytes + stats.disk_bytes != bytes || stats.entries != entries {
        shared.fail(format!(
            "stats: {} entries, memory {} + disk {} bytes = {}; the model has {entries} \
             entries, {bytes} bytes",
            stats.entries,
            stats.memory_bytes,
            stats.disk_bytes,
            stats.memory_bytes + stats.disk_bytes,
        ));
    }
    if let Err(e) = store.validate() {
        shared.fail(format!("validate() at the end: {e}"));
    }
    println!(
        "final check: {entries} keys, {} verified ({} in memory, {} on disk, {} spill files)",
        human(bytes),
        human(stats.memory_bytes),
        human(stats.disk_bytes),
        stats.spill_files
    );
    for (t, model) in models.iter().enumerate() {
        for idx in 0..shared.keys_per_thread {
            let gid = t * shared.keys_per_thread + idx;
            let expected = model.values.contains_key(&idx);
            match store.remove(shared.names[gid].as_str()) {
                Ok(removed) if removed == expected => {}
                Ok(removed) => shared.fail(format!(
                    "final remove of key {gid} returned {removed}, the model says {expected}"
                )),
                Err(e) => shared.fail(format!("final remove of key {gid} failed: {e}")),
            }
        }
    }
    store.quiesce(); // a background compaction pass may still hold files
    let stats = store.stats();
    let empty = (stats.entries, stats.memory_bytes, stats.disk_bytes);
    let files = (stats.spill_files, stats.spill_file_bytes);
    if empty != (0, 0, 0) || files != (0, 0) {
        shared.fail(format!(
            "after removing every key: (entries, memory, disk) = {empty:?}, \
             (spill files, bytes) = {files:?}"
        ));
    }
    if let Err(e) = store.validate() {
        shared.fail(format!("validate() after removing everything: {e}"));
    }
    match std::fs::read_dir(dir) {
        Ok(listing) => {
            let mut names: Vec<String> = listing
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".spillstore.lock")
                .collect();
            if !names.is_empty() {
                names.sort();
                names.truncate(10);
                shared.fail(format!(
                    "dump dir not empty after removing every key: {names:?}"
                ));
            }
        }
        Err(e) => shared.fail(format!("cannot list the dump dir: {e}")),
    }
}
