//! `asyncbench`: spillbench's workload driven from tokio tasks, through the
//! async facade ([`AsyncSpillStore`]) and through the synchronous API
//! called inline on the executor threads, side by side; with a ticker task
//! on the same runtime that records how late it runs.
//!
//! ```text
//! cargo run --release --features tokio --example asyncbench              # both, ~25 s
//! cargo run --release --features tokio --example asyncbench -- --inline  # one of them
//! cargo run --release --features tokio --example asyncbench -- --help
//! ```
//!
//! # What it does
//!
//! For each mode (the facade, then the synchronous API called inline; or the
//! one `--facade` / `--inline` names), a fresh store with a 64 MiB budget in
//! a fresh temporary dump dir receives a 256 MiB working set of 64 KiB values
//! (spillbench's defaults), on a multi-thread runtime of `--workers` threads
//! (default: all cores):
//!
//! 1. **load**: `--tasks` tasks insert every key once (not in the table).
//! 2. **mixed**, for `--secs` seconds: each task picks keys from a
//!    Zipf(`--zipf`) distribution over a random permutation of the keys and
//!    gets (`--read-ratio`, 90%) or replaces them, one operation per
//!    request: after each it yields to the scheduler, as a server task
//!    between two requests would, so that one task cannot hold a worker for
//!    more than one store call.
//! 3. **check**: every key is read once more and verified.
//!
//! Every value read is verified as spillbench does (length, header, 13
//! sampled bytes; `--verify-full` for all bytes), and its version must not
//! be newer than the last one whose insert began. Any error or mismatch
//! aborts the run (status 1).
//!
//! # The ticker
//!
//! A task on the same runtime that should run every millisecond, and
//! records how late it ran: an OS thread ticks every millisecond (taking
//! the time of each tick) and wakes the task, which records, for every
//! tick since its last run, the time from the tick to its own poll. A tick
//! that finds the task still waiting for the previous one is late by the
//! same wait plus what follows, so late ticks are all counted (no
//! coordinated omission). tokio's own timer is not used: it rounds
//! deadlines up to whole milliseconds and parks for whole milliseconds, so
//! even an idle runtime would show up to 2 ms of lateness.
//!
//! # Reading the table
//!
//! One column per mode. **ops/s**: gets and replacements of the mixed
//! phase per second (the benchmark's own value generation and verification
//! included). **get mem / get disk / insert**: p50, p99, p99.9 and max of
//! one call as its task sees it (an await on the blocking pool included);
//! "get mem" and "get disk" are split by where the get found the value
//! (with the facade, "get mem" includes the few hits that found their
//! shard's lock taken and went to the blocking pool rather than wait).
//! `--blocking-threads` caps tokio's blocking pool.
//! **ticker lag**: percentiles of the ticker's lateness. The last column is
//! the facade's figure over the inline one.

#[path = "spillbench/payload.rs"]
mod payload;
#[allow(dead_code)]
#[path = "spillbench/size.rs"]
mod size;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use spillstore::{AsyncSpillStore, Location, SpillStore};

use payload::{key_for, Payload, HEADER_LEN};
use size::parse_size;

/// Command-line arguments.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "asyncbench",
    about = "The spillbench workload from tokio tasks: the async facade against sync calls inline"
)]
struct Args {
    /// Memory budget of the store (Builder::max_size).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    max_size: u64,

    /// Total payload of all values.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_size)]
    working_set: u64,

    /// Size of every value (at least 16 bytes).
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_size)]
    value_size: u64,

    /// Runtime worker threads [default: available parallelism].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,

    /// The runtime's blocking pool's thread limit (tokio's
    /// `max_blocking_threads`) [default: tokio's, 512].
    #[arg(long, value_name = "N")]
    blocking_threads: Option<usize>,

    /// Tasks issuing store calls.
    #[arg(long, value_name = "N", default_value_t = 16)]
    tasks: usize,

    /// Duration of the mixed phase of each mode, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 8.0)]
    secs: f64,

    /// Fraction of mixed-phase operations that are gets.
    #[arg(long, value_name = "RATIO", default_value_t = 0.9)]
    read_ratio: f64,

    /// Zipf exponent of key popularity.
    #[arg(long, value_name = "S", default_value_t = 0.99)]
    zipf: f64,

    /// Only the synchronous API, called inline on the executor threads.
    #[arg(long, conflicts_with = "facade")]
    inline: bool,

    /// Only the async facade.
    #[arg(long)]
    facade: bool,

    /// Put spill files in this directory instead of a temporary one.
    #[arg(long, value_name = "DIR")]
    dump_dir: Option<PathBuf>,

    /// Compare every byte of every value read.
    #[arg(long)]
    verify_full: bool,

    /// Seed for key popularity and the tasks' random choices.
    #[arg(long, value_name = "N", default_value_t = 0x5eed)]
    seed: u64,
}

/// How the tasks call the store.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `AsyncSpillStore`'s async calls.
    Facade,
    /// `SpillStore`'s calls, blocking the executor thread they run on.
    Inline,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Facade => "facade",
            Mode::Inline => "inline",
        }
    }
}

/// Empty histogram of nanoseconds, 1 ns to 1 hour, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("constant, valid bounds")
}

/// Nanoseconds since `start`, at least 1 (for a histogram).
fn nanos_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// One task's latency histograms.
struct Recorder {
    get_memory: Histogram<u64>,
    get_disk: Histogram<u64>,
    insert: Histogram<u64>,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            get_memory: histogram(),
            get_disk: histogram(),
            insert: histogram(),
        }
    }

    fn merge(&mut self, other: &Recorder) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.get_memory.add(&other.get_memory);
        let _ = self.get_disk.add(&other.get_disk);
        let _ = self.insert.add(&other.insert);
    }

    fn ops(&self) -> u64 {
        self.get_memory.len() + self.get_disk.len() + self.insert.len()
    }
}

/// What the tasks of one run share.
struct Bench {
    store: AsyncSpillStore,
    mode: Mode,
    payload: Payload,
    keys: Vec<String>,
    /// `hot[rank - 1]` is the key index of popularity rank `rank`.
    hot: Vec<u32>,
    /// Per key: the highest version whose insert has begun.
    reserved: Vec<AtomicU64>,
    cursor: AtomicUsize,
    args: Args,
}

impl Bench {
    /// Gets key `index` in this run's mode and verifies what it read.
    async fn get(&self, index: usize, rng: &mut StdRng, rec: &mut Recorder) {
        let key = &self.keys[index];
        let start = Instant::now();
        let found = match self.mode {
            Mode::Facade => self.store.get_with_location(key.as_str()).await,
            Mode::Inline => self.store.store().get_with_location(key.as_str()),
        };
        let took = nanos_since(start);
        let high = self.reserved[index].load(Ordering::SeqCst);
        let (value, location) = found
            .unwrap_or_else(|e| panic!("get {key}: {e}"))
            .unwrap_or_else(|| panic!("get {key}: the key is missing"));
        let hist = match location {
            Location::Memory => &mut rec.get_memory,
            Location::File => &mut rec.get_disk,
        };
        hist.saturating_record(took);
        let full = self.args.verify_full;
        match self.payload.check(&value, index as u64, full, rng) {
            Ok(version) if version <= high => {}
            Ok(version) => panic!("get {key}: version {version} was never written"),
            Err(problem) => panic!("get {key}: {problem}"),
        }
    }

    /// Replaces key `index` with a new version, in this run's mode.
    async fn insert(&self, index: usize, version: u64, rec: Option<&mut Recorder>) {
        let value = self.payload.make(index as u64, version);
        let key = self.keys[index].clone();
        let start = Instant::now();
        let result = match self.mode {
            Mode::Facade => self.store.insert(key, value).await,
            Mode::Inline => self.store.store().insert(key, value),
        };
        let took = nanos_since(start);
        result.unwrap_or_else(|e| panic!("insert {}: {e}", self.keys[index]));
        if let Some(rec) = rec {
            rec.insert.saturating_record(took);
        }
    }

    /// Load and check phases: one pass over the keys, shared by the tasks.
    async fn pass(self: Arc<Self>, load: bool) {
        let mut rng = StdRng::seed_from_u64(self.args.seed);
        let mut rec = Recorder::new();
        loop {
            let index = self.cursor.fetch_add(1, Ordering::Relaxed);
            if index >= self.keys.len() {
                return;
            }
            if load {
                self.insert(index, 0, None).await;
            } else {
                self.get(index, &mut rng, &mut rec).await;
            }
            tokio::task::yield_now().await;
        }
    }

    /// Mixed phase, one task: Zipf gets and replacements until `deadline`.
    async fn mixed(self: Arc<Self>, task: usize, deadline: Instant) -> Recorder {
        let zipf = Zipf::new(self.keys.len() as u64, self.args.zipf).expect("a valid exponent");
        let mut rng = StdRng::seed_from_u64(self.args.seed ^ ((task as u64 + 1) * 0x9e37_79b9));
        let mut rec = Recorder::new();
        while Instant::now() < deadline {
            let rank = zipf.sample(&mut rng) as usize;
            let index = self.hot[rank.clamp(1, self.hot.len()) - 1] as usize;
            if rng.gen::<f64>() < self.args.read_ratio {
                self.get(index, &mut rng, &mut rec).await;
            } else {
                let version = self.reserved[index].fetch_add(1, Ordering::SeqCst) + 1;
                self.insert(index, version, Some(&mut rec)).await;
            }
            // The end of a request: the worker may run other tasks.
            tokio::task::yield_now().await;
        }
        rec
    }
}

/// Ticks that the ticker task has not seen yet, and its waker.
#[derive(Default)]
struct Ticks {
    pending: Mutex<(Vec<Instant>, Option<Waker>)>,
    stop: AtomicBool,
}

impl Ticks {
    /// The OS thread's loop: a tick every millisecond, timed when it is
    /// handed over, until stopped.
    fn run(&self) {
        let mut next = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            next += Duration::from_millis(1);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.0.push(Instant::now());
            if let Some(waker) = pending.1.take() {
                waker.wake();
            }
        }
    }
}

/// Resolves to the ticks pending when the ticker task is polled.
struct NextTicks<'a>(&'a Ticks);

impl Future for NextTicks<'_> {
    type Output = Vec<Instant>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Vec<Instant>> {
        let mut pending = self
            .0
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if pending.0.is_empty() {
            pending.1 = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(std::mem::take(&mut pending.0))
        }
    }
}

/// The ticker task: records each tick's lateness until `stop` is set.
async fn ticker(ticks: Arc<Ticks>, stop: Arc<AtomicBool>) -> Histogram<u64> {
    let mut lag = histogram();
    while !stop.load(Ordering::Relaxed) {
        let seen = NextTicks(&ticks).await;
        let now = Instant::now();
        for tick in seen {
            lag.saturating_record(
                u64::try_from((now - tick).as_nanos())
                    .unwrap_or(u64::MAX)
                    .max(1),
            );
        }
    }
    lag
}

/// The figures of one mode's run.
struct Outcome {
    mode: Mode,
    secs: f64,
    rec: Recorder,
    lag: Histogram<u64>,
    stats: spillstore::Stats,
}

/// Builds the store of one run in `dir`.
fn build_store(args: &Args, dir: &std::path::Path) -> AsyncSpillStore {
    SpillStore::builder()
        .max_size(args.max_size)
        .dump_dir(dir)
        .build()
        .unwrap_or_else(|e| panic!("cannot build the store: {e}"))
        .into_async()
}

/// Runs `tasks` copies of a future made by `make` and waits for them all.
async fn all<F, T>(tasks: usize, make: impl Fn(usize) -> F) -> Vec<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = (0..tasks).map(|t| tokio::spawn(make(t))).collect();
    let mut results = Vec::with_capacity(tasks);
    for handle in handles {
        results.push(
            handle
                .await
                .unwrap_or_else(|e| panic!("a task failed: {e}")),
        );
    }
    results
}

/// The mixed phase with the ticker running beside it.
async fn mixed_with_ticker(bench: &Arc<Bench>) -> (f64, Recorder, Histogram<u64>) {
    let ticks = Arc::new(Ticks::default());
    let clock = std::thread::spawn({
        let ticks = Arc::clone(&ticks);
        move || ticks.run()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = tokio::spawn(ticker(Arc::clone(&ticks), Arc::clone(&stop)));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(bench.args.secs);
    let recs = all(bench.args.tasks, |t| Arc::clone(bench).mixed(t, deadline)).await;
    let secs = start.elapsed().as_secs_f64();
    // The clock thread ticks on until the ticker has seen the stop.
    stop.store(true, Ordering::Relaxed);
    let lag = ticker.await.expect("the ticker task");
    ticks.stop.store(true, Ordering::Relaxed);
    clock.join().expect("the clock thread");
    let mut rec = Recorder::new();
    recs.iter().for_each(|r| rec.merge(r));
    (secs, rec, lag)
}

/// Runtime worker threads: `--workers`, or one per core.
fn workers(args: &Args) -> usize {
    args.workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

/// One mode's run on a fresh store in a fresh dump dir.
fn run(args: &Args, mode: Mode) -> Outcome {
    let temp = tempfile::Builder::new()
        .prefix("asyncbench-")
        .tempdir()
        .expect("a temporary directory");
    let dir = args
        .dump_dir
        .clone()
        .unwrap_or_else(|| temp.path().join("dump"));
    let n = (args.working_set / args.value_size) as usize;
    let mut hot: Vec<u32> = (0..n as u32).collect();
    hot.shuffle(&mut StdRng::seed_from_u64(args.seed));
    let bench = Arc::new(Bench {
        store: build_store(args, &dir),
        mode,
        payload: Payload::new(args.value_size as usize, args.seed),
        keys: (0..n as u64).map(key_for).collect(),
        hot,
        reserved: (0..n).map(|_| AtomicU64::new(0)).collect(),
        cursor: AtomicUsize::new(0),
        args: args.clone(),
    });
    let workers = workers(args);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.worker_threads(workers);
    if let Some(threads) = args.blocking_threads {
        rt.max_blocking_threads(threads);
    }
    let rt = rt.build().expect("a tokio runtime");
    let (secs, rec, lag) = rt.block_on(async {
        all(args.tasks, |_| Arc::clone(&bench).pass(true)).await;
        let mixed = mixed_with_ticker(&bench).await;
        bench.cursor.store(0, Ordering::Relaxed);
        all(args.tasks, |_| Arc::clone(&bench).pass(false)).await;
        mixed
    });
    let stats = bench.store.stats();
    drop(rt);
    drop(bench); // deletes the spill files
    Outcome {
        mode,
        secs,
        rec,
        lag,
        stats,
    }
}

/// A duration in nanoseconds, in a readable unit.
fn time(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} us", ns as f64 / 1e3),
        _ => format!("{:.2} ms", ns as f64 / 1e6),
    }
}

/// Picks a histogram of an outcome.
type HistOf = for<'a> fn(&'a Outcome) -> &'a Histogram<u64>;

/// Picks a store counter.
type CounterOf = fn(&spillstore::Stats) -> u64;

/// Table rows: a label and one figure per outcome (plus the numbers, for
/// the ratio column).
fn rows(outcomes: &[Outcome]) -> Vec<(String, Vec<(String, f64)>)> {
    let mut rows = Vec::new();
    let ops = |o: &Outcome| o.rec.ops() as f64 / o.secs;
    rows.push((
        "ops/s".to_string(),
        outcomes
            .iter()
            .map(|o| (format!("{:.0}", ops(o)), ops(o)))
            .collect(),
    ));
    let hists: [(&str, HistOf); 4] = [
        ("get mem", |o| &o.rec.get_memory),
        ("get disk", |o| &o.rec.get_disk),
        ("insert", |o| &o.rec.insert),
        ("ticker lag", |o| &o.lag),
    ];
    for (name, hist) in hists {
        let count = |o: &Outcome| hist(o).len() as f64;
        rows.push((
            format!("{name} count"),
            outcomes
                .iter()
                .map(|o| (format!("{}", hist(o).len()), count(o)))
                .collect(),
        ));
        for (label, q) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0)] {
            let at = |o: &Outcome| hist(o).value_at_quantile(q);
            let figures = outcomes
                .iter()
                .map(|o| (time(at(o)), at(o) as f64))
                .collect();
            rows.push((format!("{name} {label}"), figures));
        }
    }
    let counters: [(&str, CounterOf); 4] = [
        ("store reloads", |s| s.reloads),
        ("store spills", |s| s.spills),
        ("store respills", |s| s.respills),
        ("store hits", |s| s.hits),
    ];
    for (name, get) in counters {
        rows.push((
            name.to_string(),
            outcomes
                .iter()
                .map(|o| (get(&o.stats).to_string(), get(&o.stats) as f64))
                .collect(),
        ));
    }
    rows
}

/// Prints one column per outcome, and facade / inline when both ran.
fn print_table(args: &Args, outcomes: &[Outcome]) {
    let workers = workers(args);
    println!(
        "asyncbench: {} values of {} B, max_size {} B, {} tasks on {workers} workers, mixed {} s, read ratio {}, zipf {}",
        args.working_set / args.value_size, args.value_size, args.max_size, args.tasks, args.secs, args.read_ratio, args.zipf
    );
    let both = outcomes.len() == 2;
    print!("{:<18}", "");
    outcomes
        .iter()
        .for_each(|o| print!("{:>12}", o.mode.name()));
    println!(
        "{}",
        if both {
            format!("{:>16}", "facade/inline")
        } else {
            String::new()
        }
    );
    for (label, figures) in rows(outcomes) {
        print!("{label:<18}");
        figures.iter().for_each(|(text, _)| print!("{text:>12}"));
        if both && figures[1].1 > 0.0 {
            print!("{:>16.2}", figures[0].1 / figures[1].1);
        }
        println!();
    }
}

fn main() {
    let args = Args::parse();
    assert!(
        args.value_size >= HEADER_LEN as u64,
        "--value-size must be at least {HEADER_LEN}"
    );
    assert!(
        args.tasks > 0 && args.working_set >= args.value_size,
        "nothing to do"
    );
    let modes: &[Mode] = match (args.facade, args.inline) {
        (true, _) => &[Mode::Facade],
        (_, true) => &[Mode::Inline],
        _ => &[Mode::Facade, Mode::Inline],
    };
    let outcomes: Vec<Outcome> = modes
        .iter()
        .map(|&mode| {
            eprintln!("asyncbench: running the {} mode...", mode.name());
            run(&args, mode)
        })
        .collect();
    print_table(&args, &outcomes);
}
