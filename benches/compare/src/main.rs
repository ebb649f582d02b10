//! Side-by-side comparison of spillstore with peer crates on the same
//! workloads, in one run, against the machine's own memory limits.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-compare cargo run --release -p spillstore-compare -- --help
//! ```
//!
//! `--workload cold-reload` (not in the default set; needs root for
//! `drop_caches`) reads spilled values back with the page cache emptied,
//! against foyer, the naive port and a plain `pread` of a file (see
//! `cold.rs`).

mod cold;
mod foyer_peer;
mod machine;
mod moka_peer;
mod naive;
mod quick;
mod spill;
mod store;
mod workload;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;

use crate::machine::{Limits, MachineInfo};
use crate::store::{Peer, StoreConfig};
use crate::workload::{Cell, Counters, KeySequences, Workload};

const MIB: u64 = 1 << 20;

/// Run the same workloads on spillstore and its peers and print a markdown table.
#[derive(Parser, Debug)]
#[command(name = "spillstore-compare", version)]
struct Cli {
    /// Workloads to run (comma-separated); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    workload: Vec<Workload>,
    /// Thread counts to run every workload at.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Measured seconds per repetition of each cell.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Warm-up seconds per cell, after the preload and before the repetitions.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Repetitions per cell; the median is reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Stores to run (comma-separated); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    peers: Vec<Peer>,
    /// Value sizes for spill-reload (bytes; K/KiB and M/MiB suffixes allowed).
    #[arg(long, value_delimiter = ',', default_value = "1KiB,64KiB,1MiB", value_parser = parse_size)]
    spill_sizes: Vec<usize>,
    /// Value sizes for cold-reload (same syntax as --spill-sizes).
    #[arg(long, value_delimiter = ',', default_value = "64KiB,1MiB", value_parser = parse_size)]
    cold_sizes: Vec<usize>,
    /// Working set of cold-reload, in MiB: every key is read at most once
    /// in a run, so this bounds the gets of all repetitions together.
    #[arg(long, default_value_t = 1024)]
    cold_working_set_mib: u64,
    /// Most gets per repetition of a cold-reload cell (fewer if the working
    /// set has too few keys for every repetition to read fresh ones).
    #[arg(long, default_value_t = 2000)]
    cold_gets: usize,
    /// Memory budget of every store, in MiB.
    #[arg(long, default_value_t = 64)]
    budget_mib: u64,
    /// Parent directory for the dump directories (default: a new temp dir).
    #[arg(long)]
    dump_root: Option<PathBuf>,
    /// Also write all results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seed of the key sequences.
    #[arg(long, default_value_t = 0x5EED)]
    seed: u64,
    /// Have the reader sum every word of every value it gets (by default it
    /// checks the header and one word per 4 KiB page).
    #[arg(long)]
    read_all: bool,
    /// Seconds per machine-limit measurement (0 skips them).
    #[arg(long, default_value_t = 1.0)]
    limit_secs: f64,
    /// Cut each repetition of the in-memory cells (hot-get, mixed) into
    /// windows of this many milliseconds, the stores taking turns window
    /// by window (0: one window per store and repetition). On a shared
    /// machine whose speed drifts within seconds, short turns put every
    /// store under the same drift.
    #[arg(long, default_value_t = 0)]
    slice_ms: u64,
    /// Key counts of the in-memory cells (hot-get, mixed; comma-separated),
    /// each key with a 1 KiB value. With a few dozen keys every store's
    /// index, entries and values stay in the L1 and L2 caches, which
    /// separates what a hit's instructions cost from what its cache misses
    /// cost.
    #[arg(long, value_delimiter = ',', default_value = "32768", value_parser = clap::value_parser!(u32).range(1..))]
    memory_keys: Vec<u32>,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, mult) = [
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("K", 1 << 10),
        ("M", 1 << 20),
    ]
    .iter()
    .find_map(|(suf, m)| t.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((t, 1));
    let n: usize = num
        .trim()
        .parse()
        .map_err(|e| format!("bad size {s:?}: {e}"))?;
    let size = n * mult;
    if size < 32 || !size.is_multiple_of(8) {
        return Err(format!(
            "size {size} must be a multiple of 8 and at least 32"
        ));
    }
    Ok(size)
}

/// One (workload, value size, thread count) cell.
#[derive(Clone, Copy, Debug, Serialize)]
struct CellSpec {
    workload: Workload,
    value_size: usize,
    n_keys: usize,
    threads: usize,
}

#[derive(Debug, Serialize)]
struct Rep {
    counters: Counters,
    secs: f64,
    ops_per_sec: f64,
    bytes_per_sec: f64,
    hit_ratio: f64,
    /// Values read back from disk in this window (stores with a disk only).
    reloads: Option<u64>,
    reload_bytes_per_sec: Option<f64>,
    /// What a cold-reload repetition read from the disk.
    disk: Option<cold::DiskReads>,
}

#[derive(Debug, Serialize)]
struct StoreResult {
    cell: CellSpec,
    store: Peer,
    preload_secs: f64,
    reps: Vec<Rep>,
    /// Medians over `reps`.
    ops_per_sec: f64,
    bytes_per_sec: f64,
    hit_ratio: f64,
    reload_bytes_per_sec: Option<f64>,
    corrupt: u64,
    notes: String,
    error: Option<String>,
}

#[derive(Serialize)]
struct Report<'a> {
    machine: &'a MachineInfo,
    limits: Option<&'a Limits>,
    budget_bytes: u64,
    secs: f64,
    warmup_secs: f64,
    reps: usize,
    foyer_backpressure_bytes: u64,
    results: &'a [StoreResult],
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn cells(cli: &Cli, budget: u64) -> Vec<CellSpec> {
    let workloads = if cli.workload.is_empty() {
        Workload::ALL.to_vec()
    } else {
        cli.workload.clone()
    };
    let mut out = Vec::new();
    for w in workloads {
        let shapes: Vec<(usize, usize)> = match w {
            Workload::HotGet | Workload::Mixed => cli
                .memory_keys
                .iter()
                .map(|&keys| (1024, keys as usize))
                .collect(),
            Workload::SpillReload => cli
                .spill_sizes
                .iter()
                .map(|&s| (s, ((4 * budget) / s as u64).max(1) as usize))
                .collect(),
            Workload::ColdReload => cli
                .cold_sizes
                .iter()
                .map(|&s| {
                    (
                        s,
                        ((cli.cold_working_set_mib * MIB) / s as u64).max(1) as usize,
                    )
                })
                .collect(),
        };
        for (value_size, n_keys) in shapes {
            for &threads in &cli.threads {
                out.push(CellSpec {
                    workload: w,
                    value_size,
                    n_keys,
                    threads,
                });
            }
        }
    }
    out
}

/// A store of a cell, built and warmed up, taking its turns.
struct TurnTaker {
    peer: Peer,
    store: Box<dyn store::Store>,
    preload: Duration,
    states: Vec<workload::ThreadState>,
    reps: Vec<Rep>,
}

/// What one store did in one repetition, added up over its windows.
struct Turn {
    counters: Counters,
    elapsed: Duration,
    reloads_before: Option<u64>,
    /// The first error of its windows: it takes no more of them.
    error: Option<anyhow::Error>,
}

impl Turn {
    fn new(reloads_before: Option<u64>) -> Self {
        Turn {
            counters: Counters::default(),
            elapsed: Duration::ZERO,
            reloads_before,
            error: None,
        }
    }
}

/// Runs the stores `peers` of a cell in turns: all are built, preloaded and
/// warmed up first, then each repetition runs every store once, in `peers`
/// order. A drift in a shared machine's speed then hits every store of a
/// repetition alike, and the ratio of two stores is taken per repetition
/// (see [`paired_ops_ratio`]), not between figures measured a minute apart.
/// With `--slice-ms`, the stores take turns within each repetition too,
/// in windows that short, so that a drift lasting a second hits them
/// alike as well. One store is simply run on its own. A store that fails
/// gets an error row in the table and takes no more turns. Results come
/// in `peers` order.
fn run_turns(
    cli: &Cli,
    spec: &CellSpec,
    cell: &Cell<'_>,
    peers: &[Peer],
    cfg_of: impl Fn(Peer) -> Result<StoreConfig>,
) -> Vec<StoreResult> {
    let mut results = Vec::new();
    let mut takers = Vec::new();
    for &peer in peers {
        eprintln!(
            "preloading {} {} x{} thr={} on {} ...",
            spec.workload.name(),
            size_label(spec.value_size),
            spec.n_keys,
            spec.threads,
            peer.name()
        );
        let built = cfg_of(peer).and_then(|cfg| {
            let store = store::build(peer, &cfg)?;
            let preload = workload::preload(store.as_ref(), cell.keys, spec.value_size)?;
            let mut states = workload::thread_states(spec.threads);
            let warmup = Duration::from_secs_f64(cli.warmup);
            if cli.warmup > 0.0 {
                workload::run_window(store.as_ref(), cell, &mut states, warmup)?;
            }
            Ok(TurnTaker {
                peer,
                store,
                preload,
                states,
                reps: Vec::new(),
            })
        });
        match built {
            Ok(taker) => takers.push(taker),
            Err(e) => results.push(error_result(peer, spec, &e)),
        }
    }
    // Without slices a repetition is one window per store; with them, its
    // `secs` are cut into windows of `slice_ms`, and the stores take turns
    // slice by slice (the first to go rotating), each adding up its own.
    let window = Duration::from_secs_f64(cli.secs);
    let (slices, slice) = match cli.slice_ms {
        0 => (1, window),
        _ if takers.len() < 2 => (1, window),
        ms => {
            let slice = Duration::from_millis(ms).min(window);
            (
                window.div_duration_f64(slice).round().max(1.0) as usize,
                slice,
            )
        }
    };
    for rep in 0..cli.reps.max(1) {
        eprintln!("  repetition {} of {}", rep + 1, cli.reps.max(1));
        let mut turns: Vec<Turn> = takers
            .iter()
            .map(|t| Turn::new(t.store.reloads()))
            .collect();
        for i in 0..slices {
            for k in 0..takers.len() {
                let j = (i + k) % takers.len();
                if turns[j].error.is_some() {
                    continue;
                }
                let t = &mut takers[j];
                match workload::run_window(t.store.as_ref(), cell, &mut t.states, slice) {
                    Ok((c, elapsed)) => {
                        turns[j].counters.add(&c);
                        turns[j].elapsed += elapsed;
                    }
                    Err(e) => turns[j].error = Some(e),
                }
            }
        }
        takers = std::mem::take(&mut takers)
            .into_iter()
            .zip(turns)
            .filter_map(|(mut t, turn)| {
                if let Some(e) = turn.error {
                    results.push(error_result(t.peer, spec, &e));
                    return None;
                }
                let reloads = t.store.reloads();
                let rep = rep_of(
                    turn.counters,
                    turn.elapsed,
                    turn.reloads_before,
                    reloads,
                    spec.value_size,
                );
                t.reps.push(rep);
                Some(t)
            })
            .collect();
    }
    for t in takers {
        let notes = t.store.notes();
        drop(t.store);
        results.push(summarize(t.peer, spec, t.preload, t.reps, notes));
    }
    results.sort_by_key(|r| peers.iter().position(|&p| p == r.store));
    results
}

/// A store of a cold-reload cell, preloaded, with its directory.
struct ColdPeer {
    peer: Peer,
    dir: PathBuf,
    store: Result<(Box<dyn store::Store>, Duration)>,
    reps: Vec<Rep>,
    error: Option<String>,
}

/// Builds and preloads every peer of a cold-reload cell, each in its own
/// directory under `root`.
fn preload_cold_peers(
    spec: &CellSpec,
    cell: &Cell<'_>,
    peers: &[Peer],
    dirs: impl Fn(Peer) -> PathBuf,
    budget: u64,
) -> Result<Vec<ColdPeer>> {
    let mut out = Vec::new();
    for &peer in peers {
        let dir = dirs(peer);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cfg = StoreConfig {
            budget,
            value_size: spec.value_size,
            n_keys: spec.n_keys,
            dir: dir.clone(),
        };
        eprintln!(
            "preloading {} on {} ...",
            size_label(spec.value_size),
            peer.name()
        );
        let store = store::build(peer, &cfg).and_then(|s| {
            let took = workload::preload(s.as_ref(), cell.keys, spec.value_size)?;
            Ok((s, took))
        });
        out.push(ColdPeer {
            peer,
            dir,
            store,
            reps: Vec::new(),
            error: None,
        });
    }
    Ok(out)
}

/// A cold-reload cell: all peers preloaded side by side, then repetitions
/// in which every peer takes its turn (the first one rotating), each with
/// the page cache emptied first and reading keys no repetition read before,
/// in a random order that is the same for every peer. Taking turns spreads
/// the disk's ups and downs over all peers alike.
fn run_cold_cell(
    cli: &Cli,
    spec: &CellSpec,
    cell: &Cell<'_>,
    mut peers: Vec<ColdPeer>,
) -> Result<Vec<StoreResult>> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut perm: Vec<u32> = (0..spec.n_keys as u32).collect();
    perm.shuffle(&mut rand::rngs::StdRng::seed_from_u64(cli.seed));
    let reps = cli.reps.max(1);
    let per_rep = (spec.n_keys / reps).min(cli.cold_gets).max(1);
    let n = peers.len();
    for r in 0..reps {
        let range = (r * per_rep).min(perm.len())..((r + 1) * per_rep).min(perm.len());
        for k in 0..n {
            let p = &mut peers[(k + r) % n];
            let Ok((store, _)) = &p.store else { continue };
            if p.error.is_some() {
                continue;
            }
            eprintln!(
                "running cold-reload {} thr={} rep {r} on {} ...",
                size_label(spec.value_size),
                spec.threads,
                p.peer.name()
            );
            cold::drop_caches()?;
            let before = store.reloads();
            let disk = cold::DiskReads::now(&p.dir);
            match cold::run_rep(store.as_ref(), cell, &perm, range.clone(), spec.threads) {
                Ok((c, took, (cpu_ns, faults))) => {
                    let mut rep = rep_of(c, took, before, store.reloads(), spec.value_size);
                    let mut read = cold::DiskReads::now(&p.dir).since(disk);
                    read.cpu_ns = cpu_ns;
                    read.minor_faults = faults;
                    rep.disk = Some(read);
                    p.reps.push(rep);
                }
                Err(e) => p.error = Some(format!("{e:#}")),
            }
        }
    }
    Ok(peers
        .into_iter()
        .map(|p| {
            let result = match p.store {
                Ok((store, preload)) => {
                    let mut r = summarize(p.peer, spec, preload, p.reps, store.notes());
                    r.error = p.error;
                    r
                }
                Err(e) => error_result(p.peer, spec, &e),
            };
            if let Err(e) = std::fs::remove_dir_all(&p.dir) {
                eprintln!("warning: removing {}: {e}", p.dir.display());
            }
            result
        })
        .collect())
}

/// The result of a cell a store could not run.
fn error_result(peer: Peer, spec: &CellSpec, e: &anyhow::Error) -> StoreResult {
    StoreResult {
        cell: *spec,
        store: peer,
        preload_secs: f64::NAN,
        reps: Vec::new(),
        ops_per_sec: f64::NAN,
        bytes_per_sec: f64::NAN,
        hit_ratio: f64::NAN,
        reload_bytes_per_sec: None,
        corrupt: 0,
        notes: String::new(),
        error: Some(format!("{e:#}")),
    }
}

/// One repetition's figures from its counters.
fn rep_of(
    c: Counters,
    elapsed: Duration,
    reloads_before: Option<u64>,
    reloads_after: Option<u64>,
    value_size: usize,
) -> Rep {
    let secs = elapsed.as_secs_f64();
    let reloads = match (reloads_before, reloads_after) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    Rep {
        counters: c,
        secs,
        ops_per_sec: (c.gets + c.inserts) as f64 / secs,
        bytes_per_sec: (c.bytes_read + c.bytes_written) as f64 / secs,
        hit_ratio: if c.gets == 0 {
            f64::NAN
        } else {
            c.hits as f64 / c.gets as f64
        },
        reloads,
        reload_bytes_per_sec: reloads.map(|n| (n * value_size as u64) as f64 / secs),
        disk: None,
    }
}

/// A cell's result: medians over its repetitions.
fn summarize(
    peer: Peer,
    spec: &CellSpec,
    preload: Duration,
    reps: Vec<Rep>,
    notes: String,
) -> StoreResult {
    StoreResult {
        cell: *spec,
        store: peer,
        preload_secs: preload.as_secs_f64(),
        ops_per_sec: median(reps.iter().map(|r| r.ops_per_sec).collect()),
        bytes_per_sec: median(reps.iter().map(|r| r.bytes_per_sec).collect()),
        hit_ratio: median(reps.iter().map(|r| r.hit_ratio).collect()),
        reload_bytes_per_sec: reps
            .iter()
            .map(|r| r.reload_bytes_per_sec)
            .collect::<Option<Vec<f64>>>()
            .map(median),
        corrupt: reps.iter().map(|r| r.counters.corrupt).sum(),
        reps,
        notes,
        error: None,
    }
}

fn size_label(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

fn human_ops(x: f64) -> String {
    if !x.is_finite() {
        "-".to_owned()
    } else if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn gbps(x: f64) -> String {
    format!("{:.2} GB/s", x / 1e9)
}

fn print_header(info: &MachineInfo, cli: &Cli, budget: u64, dump_root: &Path) {
    println!("# spillstore-compare");
    println!();
    println!("- nproc: {}", info.nproc);
    println!("- CPU: {}", info.cpu_model);
    println!("- rustc: {}", info.rustc);
    println!("- git commit: {}", info.git_commit);
    println!(
        "- budget {} MiB per store; Zipf({}) key popularity, seed {:#x}; {} s warm-up, median of {} x {} s",
        budget / MIB,
        workload::ZIPF_S,
        cli.seed,
        cli.warmup,
        cli.reps.max(1),
        cli.secs
    );
    println!("- dump root: {}", dump_root.display());
    println!(
        "- foyer: HybridCache (WriteOnEviction, fs device, psync) with back-pressure: the inserting thread \
         waits on `storage().wait()` after every {} MiB handed to foyer, so its flush buffer never overflows \
         and nothing is dropped",
        foyer_peer::BACKPRESSURE_BYTES / MIB
    );
    println!(
        "- every get is checked: length, key index in the header, one word per 4 KiB page and the last word{}",
        if cli.read_all {
            "; --read-all: every word is also summed"
        } else {
            ""
        }
    );
    println!(
        "- MB/s = value bytes delivered by gets plus bytes inserted, per second (a zero-copy hit counts in \
         full); reload MB/s = values read back from the store's disk (spillstore stats().reloads, foyer \
         entries with Source::Disk, naive file reads) x value size, per second"
    );
    println!(
        "- quick_cache and moka are caches: beyond the budget they drop data; their hit ratio says how much"
    );
    let turns = match cli.slice_ms {
        0 => "each repetition running every store once".to_owned(),
        ms => format!("within each repetition, in windows of {ms} ms"),
    };
    println!(
        "- hot-get and mixed: the stores of a cell take turns, {turns}; their 'vs spillstore' is the median of the per-repetition ratios"
    );
    println!();
}

fn print_limits(l: &Limits) {
    println!("## Machine limits (same run)");
    println!();
    println!("| measure | 1 thread | {} threads |", l.threads);
    println!("|---|---:|---:|");
    for (name, bw) in [
        ("memcpy (64 MiB buffers)", &l.memcpy),
        ("mmap page-cache read, sum u64 (warm mapping)", &l.mmap_read),
        (
            "mmap page-cache read, fresh map per 1 MiB",
            &l.mmap_read_fresh_1mib,
        ),
    ] {
        println!(
            "| {name} | {} | {} |",
            gbps(bw.one_thread),
            gbps(bw.all_threads)
        );
    }
    println!();
}

fn print_table(results: &[StoreResult]) {
    println!("## Results");
    println!();
    println!(
        "| workload | value | keys | thr | store | ops/s | MB/s | hit % | vs spillstore | reload MB/s | preload s | notes |"
    );
    println!("|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|");
    for r in results {
        let base = results.iter().find(|b| {
            b.store == Peer::Spillstore
                && b.error.is_none()
                && b.cell.workload == r.cell.workload
                && b.cell.value_size == r.cell.value_size
                && b.cell.n_keys == r.cell.n_keys
                && b.cell.threads == r.cell.threads
        });
        let ratio = match base {
            Some(b) if r.error.is_none() && b.ops_per_sec > 0.0 => {
                let lossy = if r.hit_ratio < 1.0 { "*" } else { "" };
                let ratio = match r.cell.workload {
                    Workload::HotGet | Workload::Mixed => paired_ops_ratio(r, b),
                    _ => r.ops_per_sec / b.ops_per_sec,
                };
                format!("{ratio:.2}x{lossy}")
            }
            _ => "-".to_owned(),
        };
        let mut notes = r.notes.clone();
        if r.corrupt > 0 {
            notes = format!("**{} CORRUPT values returned**; {notes}", r.corrupt);
        }
        if let Some(e) = &r.error {
            notes = format!("**ERROR: {e}**");
        }
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {:.2} | {} |",
            r.cell.workload.name(),
            size_label(r.cell.value_size),
            r.cell.n_keys,
            r.cell.threads,
            r.store.name(),
            human_ops(r.ops_per_sec),
            r.bytes_per_sec / 1e6,
            r.hit_ratio * 100.0,
            ratio,
            r.reload_bytes_per_sec
                .map_or("-".to_owned(), |b| format!("{:.1}", b / 1e6)),
            r.preload_secs,
            notes.replace('|', "/")
        );
    }
    println!();
    if results.iter().any(|r| r.hit_ratio < 1.0) {
        println!(
            "\\* lossy: this store no longer held (100 - hit %) of the values it was given; a miss is only \
             a hash lookup, so its ops/s is not comparable to a store that returned every value."
        );
        println!();
    }
}

fn print_reload_vs_limit(results: &[StoreResult], limits: Option<&Limits>) {
    let big: Vec<&StoreResult> = results
        .iter()
        .filter(|r| {
            r.cell.workload == Workload::SpillReload
                && r.cell.value_size >= MIB as usize
                && r.reload_bytes_per_sec.is_some()
        })
        .collect();
    if big.is_empty() {
        return;
    }
    println!("## spill-reload at >= 1 MiB: reload bandwidth vs mmap page-cache read (stores with a disk)");
    println!();
    println!("| value | thr | store | reload bandwidth | delivered | hit % | mmap read (warm) | mmap read (fresh map / 1 MiB) |");
    println!("|---|---:|---|---:|---:|---:|---:|---:|");
    for r in big {
        let (warm, fresh) = match limits {
            Some(l) if r.cell.threads <= 1 => (
                gbps(l.mmap_read.one_thread),
                gbps(l.mmap_read_fresh_1mib.one_thread),
            ),
            Some(l) if r.cell.threads == l.threads => (
                gbps(l.mmap_read.all_threads),
                gbps(l.mmap_read_fresh_1mib.all_threads),
            ),
            _ => ("-".to_owned(), "-".to_owned()),
        };
        println!(
            "| {} | {} | {} | {} | {} | {:.1} | {warm} | {fresh} |",
            size_label(r.cell.value_size),
            r.cell.threads,
            r.store.name(),
            r.reload_bytes_per_sec.map_or("-".to_owned(), gbps),
            gbps(r.bytes_per_sec),
            r.hit_ratio * 100.0,
        );
    }
    println!();
}

/// Reloads per second of one repetition.
fn reload_rate(r: &Rep, value_size: usize) -> f64 {
    r.reload_bytes_per_sec.unwrap_or(f64::NAN) / value_size as f64
}

/// The median over the repetitions of `r`'s reload rate divided by that of
/// `base` in the same repetition (they took turns, so drifts of the disk
/// cancel out in each pair).
fn paired_ratio(r: &StoreResult, base: &StoreResult) -> f64 {
    let size = r.cell.value_size;
    median(
        r.reps
            .iter()
            .zip(&base.reps)
            .map(|(a, b)| reload_rate(a, size) / reload_rate(b, size))
            .collect(),
    )
}

/// The median over the repetitions of `r`'s ops/s divided by `base`'s in
/// the same repetition (in-memory cells take turns: see [`run_turns`]).
fn paired_ops_ratio(r: &StoreResult, base: &StoreResult) -> f64 {
    median(
        r.reps
            .iter()
            .zip(&base.reps)
            .map(|(a, b)| a.ops_per_sec / b.ops_per_sec)
            .collect(),
    )
}

/// The cold-reload cells: each store's reloads per second against the
/// `pread` reference and foyer of the same cell, and what it read per
/// reload from the disk.
fn print_cold(results: &[StoreResult]) {
    let cold: Vec<&StoreResult> = results
        .iter()
        .filter(|r| r.cell.workload == Workload::ColdReload && r.error.is_none())
        .collect();
    if cold.is_empty() {
        return;
    }
    println!("## cold-reload: reloads against pread and foyer (same run, taking turns, page cache dropped before each turn)");
    println!();
    println!("Ratios are medians of the per-repetition ratios. Disk KiB / reload: this process's read_bytes; requests / reload: the device's completed reads (whole machine); CPU and faults: the worker threads' time on a CPU and minor page faults.");
    println!();
    println!("| value | thr | store | reloads/s | per repetition | vs pread | vs foyer | disk KiB / reload | requests / reload | CPU µs / reload | faults / reload |");
    println!("|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|");
    for r in &cold {
        let size = r.cell.value_size;
        let ratio = |peer| {
            cold.iter()
                .find(|b| {
                    b.store == peer && b.cell.value_size == size && b.cell.threads == r.cell.threads
                })
                .map_or("-".to_owned(), |b| format!("{:.2}x", paired_ratio(r, b)))
        };
        let per_rep: Vec<String> = r
            .reps
            .iter()
            .map(|p| human_ops(reload_rate(p, size)))
            .collect();
        let per_reload = |f: fn(&cold::DiskReads) -> u64| {
            median(
                r.reps
                    .iter()
                    .filter_map(|p| Some(f(p.disk.as_ref()?) as f64 / p.reloads? as f64))
                    .collect(),
            )
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.2} | {:.1} | {:.1} |",
            size_label(size),
            r.cell.threads,
            r.store.name(),
            human_ops(r.reload_bytes_per_sec.unwrap_or(f64::NAN) / size as f64),
            per_rep.join(", "),
            ratio(Peer::Pread),
            ratio(Peer::Foyer),
            per_reload(|d| d.bytes) / 1024.0,
            per_reload(|d| d.requests),
            per_reload(|d| d.cpu_ns) / 1000.0,
            per_reload(|d| d.minor_faults),
        );
    }
    println!();
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.threads.is_empty() || cli.threads.contains(&0) {
        bail!("--threads needs positive thread counts");
    }
    if cli.secs.is_nan() || cli.secs <= 0.0 || cli.warmup < 0.0 || cli.limit_secs < 0.0 {
        bail!("--secs must be positive, --warmup and --limit-secs non-negative");
    }
    let budget = cli.budget_mib * MIB;
    let peers_of = |w: Workload| -> Vec<Peer> {
        if cli.peers.is_empty() {
            match w {
                Workload::ColdReload => Peer::COLD.to_vec(),
                _ => Peer::ALL.to_vec(),
            }
        } else {
            let mut p = cli.peers.clone();
            p.sort();
            p.dedup();
            p
        }
    };

    // Fresh space for this run's dump directories.
    let temp_root;
    let root = match &cli.dump_root {
        Some(parent) => {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
            temp_root = tempfile::Builder::new()
                .prefix("spillstore-compare-")
                .tempdir_in(parent)?;
            temp_root.path().to_owned()
        }
        None => {
            temp_root = tempfile::Builder::new()
                .prefix("spillstore-compare-")
                .tempdir()?;
            temp_root.path().to_owned()
        }
    };

    let info = machine::info();
    print_header(&info, &cli, budget, &root);

    let limits = if cli.limit_secs > 0.0 {
        let l = machine::limits(&root, Duration::from_secs_f64(cli.limit_secs))?;
        print_limits(&l);
        Some(l)
    } else {
        None
    };

    let mut results = Vec::new();
    for (ci, spec) in cells(&cli, budget).iter().enumerate() {
        let keys: Vec<String> = (0..spec.n_keys as u64).map(workload::key_of).collect();
        let seqs = KeySequences::new(spec.n_keys, spec.threads, cli.seed)?;
        let cell = Cell {
            workload: spec.workload,
            keys: &keys,
            value_size: spec.value_size,
            seqs: &seqs,
            read_all: cli.read_all,
        };
        if spec.workload == Workload::ColdReload {
            let dirs = |peer: Peer| {
                root.join(format!(
                    "{ci:02}-cold-{}-t{}-{}",
                    spec.value_size,
                    spec.threads,
                    peer.name()
                ))
            };
            let peers = preload_cold_peers(spec, &cell, &peers_of(spec.workload), dirs, budget)?;
            results.extend(run_cold_cell(&cli, spec, &cell, peers)?);
            continue;
        }
        let dir_of = |peer: Peer| {
            root.join(format!(
                "{ci:02}-{}-{}-t{}-{}",
                spec.workload.name(),
                spec.value_size,
                spec.threads,
                peer.name()
            ))
        };
        let cfg_of = |peer: Peer| -> Result<StoreConfig> {
            let dir = dir_of(peer);
            std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            Ok(StoreConfig {
                budget,
                value_size: spec.value_size,
                n_keys: spec.n_keys,
                dir,
            })
        };
        // In-memory cells take turns; a cell with a disk runs one store at
        // a time, so that no other store's I/O shares the disk with it.
        let peers = peers_of(spec.workload);
        let groups: Vec<&[Peer]> = if matches!(spec.workload, Workload::HotGet | Workload::Mixed) {
            vec![&peers]
        } else {
            peers.chunks(1).collect()
        };
        for group in groups {
            for result in run_turns(&cli, spec, &cell, group, cfg_of) {
                if result.corrupt > 0 {
                    eprintln!(
                        "ERROR: {} returned {} corrupt values",
                        result.store.name(),
                        result.corrupt
                    );
                }
                results.push(result);
            }
            // Measured: now the directories can go.
            for &peer in group {
                let dir = dir_of(peer);
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    eprintln!("warning: removing {}: {e}", dir.display());
                }
            }
        }
    }

    print_table(&results);
    print_reload_vs_limit(&results, limits.as_ref());
    print_cold(&results);

    if let Some(path) = &cli.json {
        let report = Report {
            machine: &info,
            limits: limits.as_ref(),
            budget_bytes: budget,
            secs: cli.secs,
            warmup_secs: cli.warmup,
            reps: cli.reps.max(1),
            foyer_backpressure_bytes: foyer_peer::BACKPRESSURE_BYTES,
            results: &results,
        };
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let corrupt: u64 = results.iter().map(|r| r.corrupt).sum();
    if corrupt > 0 {
        bail!("{corrupt} corrupt values were returned; see the table");
    }
    Ok(())
}
