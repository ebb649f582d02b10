//! Criterion benchmarks of [`SpillStore`]'s hot paths, single- and
//! multi-threaded.
//!
//! ```text
//! cargo bench --bench store                       # everything, ~7 minutes
//! cargo bench --bench store -- --quick            # one quick pass
//! cargo bench --bench store -- 'get_reload/4KiB'  # a filter
//! ```
//!
//! # Workload
//!
//! Keys are 32-hex-character `String`s, pre-built once per case. Unless a
//! group says otherwise, each thread draws keys from a Zipf(`n`, 0.99)
//! distribution (rank 1 the hottest) mapped to keys through a random
//! permutation, from a pre-computed sequence of max(2^16, 8n) draws per
//! thread (cycled), so the random number generator is not measured. Every
//! RNG is a `StdRng::seed_from_u64` with a fixed seed. Each case fills a fresh store
//! whose dump dir is a fresh temporary directory (page cache warm: files were
//! just written). Inserted values are clones of a per-thread `Bytes` (a
//! reference count bump), so inserts measure the store, not `memcpy` or the
//! allocator; the owned `String` key `insert` needs is cloned per call.
//! Every `get` checks the returned length and passes the value to
//! `black_box`. The fill inserts the hottest keys last (scans: in key order)
//! and is followed by an untimed pass of each thread's operations (about
//! 64 MiB of values, at least 1024 operations, at most one sequence), so the
//! LRU state is near its steady state from the first measured iteration.
//!
//! Data per case (`n` keys × value size): 64 B × 65536 (4 MiB), 4 KiB × 16384
//! (64 MiB), 64 KiB × 2048 (128 MiB), 1 MiB × 128 (128 MiB). The shard count
//! is the store's default (4 per core) but lowered, to a power of two, so
//! that each shard's share of the budget holds at least 4 values: a value
//! larger than its shard's share would take the store's direct-to-disk path
//! and change what is measured.
//!
//! Multi-threaded cases use `iter_custom`: `T` scoped threads each do
//! `iters / T` operations, released together by a `Barrier`; the time is from
//! the release to the last thread's end. `T = 1` runs on the bench thread.
//! Threads: `t1`, `t2` and `tP` (`P` = `available_parallelism`, duplicates
//! dropped).
//!
//! # Groups and dimensions
//!
//! | group | what | budget / data | value sizes | threads | throughput |
//! |---|---|---|---|---|---|
//! | `get_hit` | `get`, all resident | 2 (no spill) | all four | 1, 2, P | elements |
//! | `get_reload` | `get` of mostly spilled values | `zipf-r0.5`, `zipf-r0.25`: Zipf keys, budget 0.5 / 0.25 of the data; `scan-r0.25`: each thread cycles through its own slice of the keys, so every get reloads (the pure reload path) | all four | 1, P | bytes |
//! | `insert` | replace a resident value, no spill | 2 | all four | 1, 2, P | elements |
//! | `insert_spill` | insert that spills one value | 1/8; each thread cycles through its own keys, so the replaced value is on disk and a fresh LRU victim is written for every insert | all four | 1, P | bytes |
//! | `mixed_90_10` | 90% get / 10% replace, Zipf | `r1` (budget 2: all resident), `r0.5`, `r0.25` | 64 B, 4 KiB, 64 KiB | 1, P | elements |
//!
//! A resident ratio of 1 for `get_reload` would be `get_hit`. With Zipf(0.99)
//! keys most gets hit the resident hot set even at a 0.25 ratio, which is why
//! `scan-r0.25` is there. Bytes throughput counts every value returned, from
//! memory or disk. After each case one line on stderr gives the store's
//! counters over the case (after the fill and warm pass, criterion's warm-up
//! included): gets served from memory and from disk, values spilled and
//! respilled (evicted without a write because an intact copy was on disk).
//!
//! Each group sets a 1 s warm-up and a 2-3 s measurement with 10-20 samples;
//! the whole run (66 cases on 2 cores, 74 with 3 or more) takes about
//! 7 minutes.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_distr::{Distribution, Zipf};
use spillstore::{Bytes, SpillStore, Stats};
use tempfile::TempDir;

const SEED: u64 = 0x5EED_5711_1570_4E00;
const ZIPF_S: f64 = 0.99;
/// Pre-computed Zipf operations per thread: at least this many, and at
/// least `SEQ_PER_KEY` per key, so the keys one sequence touches are many
/// more than a budget of half the data holds.
const SEQ_LEN: usize = 1 << 16;
const SEQ_PER_KEY: usize = 8;
/// Marks a write in a mixed sequence; the low bits are the key index.
const WRITE: u32 = 1 << 31;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// Value sizes and how many keys each case stores.
const SIZES: [(usize, usize); 4] = [
    (64, 65_536),
    (4 * KIB, 16_384),
    (64 * KIB, 2_048),
    (MIB, 128),
];

fn size_label(size: usize) -> String {
    match size {
        s if s >= MIB && s % MIB == 0 => format!("{}MiB", s / MIB),
        s if s >= KIB && s % KIB == 0 => format!("{}KiB", s / KIB),
        s => format!("{s}B"),
    }
}

fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `[1, 2, P]` without duplicates.
fn threads_all() -> Vec<usize> {
    let mut t = vec![1, 2, parallelism()];
    t.sort_unstable();
    t.dedup();
    t
}

/// `[1, P]` without duplicates.
fn threads_ends() -> Vec<usize> {
    let mut t = vec![1, parallelism()];
    t.dedup();
    t
}

/// A 32-hex-character key.
fn key(i: u64) -> String {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    format!("{:016x}{i:016x}", z ^ (z >> 31))
}

/// How the keys of a case are visited.
#[derive(Clone, Copy)]
enum Access {
    /// Zipf(0.99) over all keys; `write_ratio` of the operations are writes.
    Zipf { write_ratio: f64 },
    /// Thread `t` of `T` cycles through keys `t, t + T, t + 2T, ...`.
    Scan,
}

/// What one operation does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    Insert,
    /// Get, or insert when the sequence entry has the `WRITE` bit.
    Mixed,
}

struct Worker {
    seq: Vec<u32>,
    cursor: usize,
    value: Bytes,
}

impl Worker {
    fn run(&mut self, store: &SpillStore, keys: &[String], size: usize, op: Op, n: u64) {
        for _ in 0..n {
            let e = self.seq[self.cursor];
            self.cursor += 1;
            if self.cursor == self.seq.len() {
                self.cursor = 0;
            }
            let key = &keys[(e & !WRITE) as usize];
            let write = match op {
                Op::Get => false,
                Op::Insert => true,
                Op::Mixed => e & WRITE != 0,
            };
            if write {
                store
                    .insert(key.clone(), self.value.clone())
                    .expect("insert");
            } else {
                let value = store.get(key.as_str()).expect("get").expect("key present");
                assert_eq!(value.len(), size, "wrong value length");
                black_box(value);
            }
        }
    }
}

/// One benchmark case: a filled store and its threads' operation sequences.
struct Case {
    // Field order matters: the store goes before its directory.
    store: SpillStore,
    _dir: TempDir,
    keys: Vec<String>,
    workers: Vec<Worker>,
    size: usize,
    op: Op,
    /// Counters after the fill.
    before: Stats,
}

impl Case {
    /// Fills a store of `n` keys of `size` bytes with `budget = ratio × data`.
    fn new(spec: Spec) -> Case {
        let Spec {
            size,
            n,
            ratio,
            threads,
            access,
            op,
        } = spec;
        let data = (size * n) as u64;
        let budget = (data as f64 * ratio) as u64;
        let max_shards = (budget / (4 * size as u64)).max(1) as usize;
        let shards = (4 * parallelism()).min(max_shards);
        let shards = 1 << shards.ilog2(); // the largest power of two <= shards
        let dir = tempfile::tempdir().expect("tempdir");
        let store: SpillStore = SpillStore::builder()
            .max_size(budget)
            .dump_dir(dir.path())
            .shards(shards)
            .build()
            .expect("build store");
        let keys: Vec<String> = (0..n as u64).map(key).collect();
        let seed = SEED ^ ((size as u64) << 8) ^ threads as u64;
        let mut rng = StdRng::seed_from_u64(seed);
        let seq_len = SEQ_LEN.max(SEQ_PER_KEY * n);
        let mut permutation: Vec<u32> = (0..n as u32).collect();
        permutation.shuffle(&mut rng);
        let workers: Vec<Worker> = (0..threads)
            .map(|t| {
                let mut rng = StdRng::seed_from_u64(seed ^ ((t as u64 + 1) << 32));
                let seq = match access {
                    Access::Zipf { write_ratio } => {
                        let zipf = Zipf::new(n as u64, ZIPF_S).expect("zipf");
                        (0..seq_len)
                            .map(|_| {
                                let rank = zipf.sample(&mut rng) as usize;
                                let index = permutation[rank.clamp(1, n) - 1];
                                if rng.gen_bool(write_ratio) {
                                    index | WRITE
                                } else {
                                    index
                                }
                            })
                            .collect()
                    }
                    Access::Scan => (t..n).step_by(threads).map(|i| i as u32).collect(),
                };
                let mut bytes = vec![0u8; size];
                rng.fill_bytes(&mut bytes);
                Worker {
                    seq,
                    cursor: 0,
                    value: Bytes::from(bytes),
                }
            })
            .collect();
        // Fill so that the LRU order starts close to its steady state: for
        // Zipf access the hottest keys are inserted last (they are the ones
        // that stay resident); for scans in key order.
        let fill_order: Vec<u32> = match access {
            Access::Zipf { .. } => permutation.into_iter().rev().collect(),
            Access::Scan => (0..n as u32).collect(),
        };
        let fill = workers[0].value.clone();
        for &i in &fill_order {
            store
                .insert(keys[i as usize].clone(), fill.clone())
                .expect("fill");
        }
        let mut case = Case {
            store,
            _dir: dir,
            keys,
            workers,
            size,
            op,
            before: Stats::default(),
        };
        // An untimed pass of each thread's operations (about 64 MiB of
        // values, at least 1024 operations, at most one sequence), so even a
        // `--quick` run measures the steady state.
        let warm_ops = (64 * MIB / size).clamp(1024, seq_len) as u64;
        for worker in &mut case.workers {
            worker.run(&case.store, &case.keys, size, op, warm_ops);
        }
        case.before = case.store.stats();
        case
    }

    /// Runs `iters` operations spread over the workers; returns the time.
    fn run(&mut self, iters: u64) -> Duration {
        let (store, keys, size, op) = (&self.store, &self.keys[..], self.size, self.op);
        if let [worker] = &mut self.workers[..] {
            let start = Instant::now();
            worker.run(store, keys, size, op, iters);
            return start.elapsed();
        }
        let t = self.workers.len() as u64;
        let barrier = Barrier::new(self.workers.len() + 1);
        let start = std::thread::scope(|s| {
            for (i, worker) in self.workers.iter_mut().enumerate() {
                let n = iters / t + u64::from((i as u64) < iters % t);
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    worker.run(store, keys, size, op, n);
                });
            }
            barrier.wait();
            Instant::now()
        });
        start.elapsed()
    }

    /// One line of the store's counters over the case.
    fn report(&self, label: &str) {
        let (a, b) = (&self.before, self.store.stats());
        let hits = b.hits - a.hits;
        let reloads = b.reloads - a.reloads;
        let gets = (hits + reloads).max(1);
        eprintln!(
            "    {label}: {hits} gets from memory, {reloads} reloaded ({:.1}%), {} spilled, \
             {} respilled; memory {} MiB, disk {} MiB",
            100.0 * reloads as f64 / gets as f64,
            b.spills - a.spills,
            b.respills - a.respills,
            b.memory_bytes >> 20,
            b.disk_bytes >> 20,
        );
    }
}

/// The parameters of one case.
#[derive(Clone, Copy)]
struct Spec {
    size: usize,
    /// Number of keys.
    n: usize,
    /// Memory budget as a fraction of the data.
    ratio: f64,
    threads: usize,
    access: Access,
    op: Op,
}

/// Benchmarks one case, building it only if the filter selects it.
fn bench_case(group: &mut BenchmarkGroup<'_, WallTime>, group_name: &str, id: &str, spec: Spec) {
    let mut case: Option<Case> = None;
    group.bench_function(BenchmarkId::from_parameter(id), |b| {
        let case = case.get_or_insert_with(|| Case::new(spec));
        b.iter_custom(|iters| case.run(iters));
    });
    if let Some(case) = case {
        case.report(&format!("{group_name}/{id}"));
    }
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>, measure_secs: u64, samples: usize) {
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(measure_secs))
        .sample_size(samples);
}

const READ_ONLY: Access = Access::Zipf { write_ratio: 0.0 };

/// A group over every value size and thread count with all values resident
/// (budget twice the data): `get_hit` and `insert` differ only in `op`.
fn resident_group(c: &mut Criterion, name: &str, op: Op) {
    let mut group = c.benchmark_group(name);
    configure(&mut group, 2, 20);
    group.throughput(Throughput::Elements(1));
    for (size, n) in SIZES {
        for threads in threads_all() {
            let id = format!("{}/t{threads}", size_label(size));
            let spec = Spec {
                size,
                n,
                ratio: 2.0,
                threads,
                access: READ_ONLY,
                op,
            };
            bench_case(&mut group, name, &id, spec);
        }
    }
    group.finish();
}

fn get_hit(c: &mut Criterion) {
    resident_group(c, "get_hit", Op::Get);
}

fn get_reload(c: &mut Criterion) {
    let mut group = c.benchmark_group("get_reload");
    configure(&mut group, 2, 10);
    let accesses = [
        ("zipf-r0.5", 0.5, READ_ONLY),
        ("zipf-r0.25", 0.25, READ_ONLY),
        ("scan-r0.25", 0.25, Access::Scan),
    ];
    for (size, n) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        for (name, ratio, access) in accesses {
            for threads in threads_ends() {
                let id = format!("{}/{name}/t{threads}", size_label(size));
                let spec = Spec {
                    size,
                    n,
                    ratio,
                    threads,
                    access,
                    op: Op::Get,
                };
                bench_case(&mut group, "get_reload", &id, spec);
            }
        }
    }
    group.finish();
}

fn insert(c: &mut Criterion) {
    resident_group(c, "insert", Op::Insert);
}

fn insert_spill(c: &mut Criterion) {
    let mut group = c.benchmark_group("insert_spill");
    configure(&mut group, 3, 10);
    for (size, n) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        for threads in threads_ends() {
            let id = format!("{}/t{threads}", size_label(size));
            let (ratio, access, op) = (0.125, Access::Scan, Op::Insert);
            let spec = Spec {
                size,
                n,
                ratio,
                threads,
                access,
                op,
            };
            bench_case(&mut group, "insert_spill", &id, spec);
        }
    }
    group.finish();
}

fn mixed_90_10(c: &mut Criterion) {
    let mut group = c.benchmark_group("mixed_90_10");
    configure(&mut group, 2, 20);
    group.throughput(Throughput::Elements(1));
    let access = Access::Zipf { write_ratio: 0.1 };
    for (size, n) in SIZES.into_iter().take(3) {
        for (name, ratio) in [("r1", 2.0), ("r0.5", 0.5), ("r0.25", 0.25)] {
            for threads in threads_ends() {
                let id = format!("{}/{name}/t{threads}", size_label(size));
                let spec = Spec {
                    size,
                    n,
                    ratio,
                    threads,
                    access,
                    op: Op::Mixed,
                };
                bench_case(&mut group, "mixed_90_10", &id, spec);
            }
        }
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    get_hit(&mut c);
    get_reload(&mut c);
    insert(&mut c);
    insert_spill(&mut c);
    mixed_90_10(&mut c);
    c.final_summary();
}
