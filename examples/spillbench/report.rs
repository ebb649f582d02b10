//! The results of a run and their two renderings: a human-readable table and
//! a JSON document (`--json`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use spillstore::Stats;

use crate::size::format_size;

/// The run's parameters, as resolved from the command line.
pub(crate) struct Params {
    /// Memory budget handed to `Builder::max_size`, in bytes.
    pub(crate) max_size: u64,
    /// Size of every value, in bytes.
    pub(crate) value_size: u64,
    /// Number of distinct keys (working set / value size, rounded down).
    pub(crate) keys: u64,
    /// Worker threads per phase.
    pub(crate) threads: usize,
    /// Requested duration of the mixed phase, in seconds.
    pub(crate) secs: f64,
    /// Fraction of mixed-phase operations that are gets.
    pub(crate) read_ratio: f64,
    /// Zipf exponent of the key popularity distribution.
    pub(crate) zipf: f64,
    /// Fraction of gets that read keys in sequence (a scan) instead.
    pub(crate) scan_ratio: f64,
    /// `Builder::exact_lru`: exact LRU instead of the default CLOCK.
    pub(crate) exact_lru: bool,
    /// `Builder::shards`, if overridden.
    pub(crate) shards: Option<usize>,
    /// `Builder::max_object_size`, if overridden.
    pub(crate) max_object_size: Option<u64>,
    /// `Builder::max_open_files`, if overridden.
    pub(crate) max_open_files: Option<usize>,
    /// `Builder::clean_ahead`, if overridden (0: off).
    pub(crate) clean_ahead: Option<u64>,
    /// Where the spill files went.
    pub(crate) dump_dir: String,
    /// Whether `dump_dir` is a temporary directory created for this run.
    pub(crate) temporary_dir: bool,
    /// Whether every get compared every byte (`--verify-full`).
    pub(crate) verify_full: bool,
    /// Seed of the per-thread random number generators.
    pub(crate) seed: u64,
    /// `--cold-every`, with `--cold`.
    pub(crate) cold_every: Option<f64>,
}

/// What `--cold` did.
pub(crate) struct ColdRun {
    /// Seconds between two evictions during the mixed phase.
    pub(crate) every: f64,
    /// How the pages were evicted (the last time).
    pub(crate) method: Option<&'static str>,
    /// Evictions made: one before the mixed phase, the rest during it.
    pub(crate) evictions: u64,
}

impl Params {
    /// Bytes of value payload in the working set (`keys * value_size`).
    pub(crate) fn working_set(&self) -> u64 {
        self.keys * self.value_size
    }
}

/// The store's cumulative counters (from `SpillStore::stats`), or the
/// difference of two snapshots.
#[derive(Clone, Copy, Default)]
pub(crate) struct Counters {
    /// Gets served from memory.
    pub(crate) hits: u64,
    /// Gets served from a spill file.
    pub(crate) reloads: u64,
    /// Gets of absent keys.
    pub(crate) misses: u64,
    /// Blobs written from memory to disk.
    pub(crate) spills: u64,
    /// Bytes written by spills.
    pub(crate) spilled_bytes: u64,
    /// Bytes read back by reloads.
    pub(crate) reloaded_bytes: u64,
    /// Evictions that reused a copy already on disk.
    pub(crate) respills: u64,
    /// Copies the background spiller wrote ahead of need.
    pub(crate) cleaned: u64,
    /// Bytes of those copies.
    pub(crate) cleaned_bytes: u64,
    /// Value bytes moved by compaction (written again).
    pub(crate) compacted_bytes: u64,
}

impl Counters {
    /// Takes the counters out of a stats snapshot.
    pub(crate) fn of(stats: &Stats) -> Self {
        Self {
            hits: stats.hits,
            reloads: stats.reloads,
            misses: stats.misses,
            spills: stats.spills,
            spilled_bytes: stats.spilled_bytes,
            reloaded_bytes: stats.reloaded_bytes,
            respills: stats.respills,
            cleaned: stats.cleaned,
            cleaned_bytes: stats.cleaned_bytes,
            compacted_bytes: stats.compacted_bytes,
        }
    }

    /// `self - earlier`, field by field (saturating, should a counter ever
    /// go backwards).
    pub(crate) fn since(self, earlier: Self) -> Self {
        Self {
            hits: self.hits.saturating_sub(earlier.hits),
            reloads: self.reloads.saturating_sub(earlier.reloads),
            misses: self.misses.saturating_sub(earlier.misses),
            spills: self.spills.saturating_sub(earlier.spills),
            spilled_bytes: self.spilled_bytes.saturating_sub(earlier.spilled_bytes),
            reloaded_bytes: self.reloaded_bytes.saturating_sub(earlier.reloaded_bytes),
            respills: self.respills.saturating_sub(earlier.respills),
            cleaned: self.cleaned.saturating_sub(earlier.cleaned),
            cleaned_bytes: self.cleaned_bytes.saturating_sub(earlier.cleaned_bytes),
            compacted_bytes: self.compacted_bytes.saturating_sub(earlier.compacted_bytes),
        }
    }

    /// JSON rendering, with rates over `secs`.
    fn json(&self, secs: f64) -> Value {
        json!({
            "hits": self.hits,
            "reloads": self.reloads,
            "misses": self.misses,
            "spills": self.spills,
            "spilled_bytes": self.spilled_bytes,
            "spill_mb_per_s": mb_per_s(self.spilled_bytes, secs),
            "reloaded_bytes": self.reloaded_bytes,
            "reload_mb_per_s": mb_per_s(self.reloaded_bytes, secs),
            "respills": self.respills,
            "cleaned": self.cleaned,
            "cleaned_bytes": self.cleaned_bytes,
            "clean_mb_per_s": mb_per_s(self.cleaned_bytes, secs),
            "compacted_bytes": self.compacted_bytes,
        })
    }
}

/// What one phase did, as seen by the benchmark and by the store.
pub(crate) struct Phase {
    /// Wall-clock duration of the phase, in seconds.
    pub(crate) secs: f64,
    /// Gets that `get_with_location` reported as served from memory.
    pub(crate) gets_memory: u64,
    /// Gets that `get_with_location` reported as reloaded from a spill file.
    pub(crate) gets_reload: u64,
    /// Successful inserts.
    pub(crate) inserts: u64,
    /// Change of the store's counters over the phase.
    pub(crate) store: Counters,
}

impl Phase {
    /// Operations (gets + inserts).
    fn ops(&self) -> u64 {
        self.gets_memory + self.gets_reload + self.inserts
    }

    /// Bytes written to spill files (spills and compaction) per byte
    /// inserted; `None` without inserts.
    fn write_amplification(&self, value_size: u64) -> Option<f64> {
        let inserted = self.inserts * value_size;
        (inserted > 0).then(|| {
            let written =
                self.store.spilled_bytes + self.store.cleaned_bytes + self.store.compacted_bytes;
            written as f64 / inserted as f64
        })
    }

    /// JSON rendering; `value_size` turns operation counts into bytes.
    fn json(&self, value_size: u64) -> Value {
        let gets = self.gets_memory + self.gets_reload;
        json!({
            "secs": self.secs,
            "ops": self.ops(),
            "ops_per_s": per_s(self.ops(), self.secs),
            "mb_per_s": mb_per_s(self.ops() * value_size, self.secs),
            "gets": gets,
            "gets_memory": self.gets_memory,
            "gets_reload": self.gets_reload,
            "memory_hit_ratio": ratio(self.gets_memory, gets),
            "inserts": self.inserts,
            "write_amplification": self.write_amplification(value_size),
            "store": self.store.json(self.secs),
        })
    }
}

/// Summary of one latency histogram, in nanoseconds.
pub(crate) struct Latency {
    /// Which operation this is, e.g. `get memory`.
    pub(crate) name: &'static str,
    /// Number of recorded operations.
    count: u64,
    /// Mean latency.
    mean: f64,
    /// Median.
    p50: u64,
    /// 99th percentile.
    p99: u64,
    /// 99.9th percentile.
    p999: u64,
    /// Slowest recorded operation.
    max: u64,
}

impl Latency {
    /// Summarizes `hist` (nanoseconds) under `name`.
    pub(crate) fn of(name: &'static str, hist: &Histogram<u64>) -> Self {
        Self {
            name,
            count: hist.len(),
            mean: hist.mean(),
            p50: hist.value_at_quantile(0.5),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
        }
    }

    /// JSON rendering (nanoseconds; `null` percentiles when nothing was
    /// recorded).
    fn json(&self) -> Value {
        if self.count == 0 {
            return json!({ "count": 0, "mean": null, "p50": null, "p99": null,
                           "p999": null, "max": null });
        }
        json!({
            "count": self.count,
            "mean": self.mean,
            "p50": self.p50,
            "p99": self.p99,
            "p999": self.p999,
            "max": self.max,
        })
    }
}

/// Largest values of the store's gauges seen by the monitor, and what the
/// dump dir occupied on disk (`du`) at each sample.
#[derive(Default)]
pub(crate) struct Peaks {
    /// Largest `memory_bytes`.
    pub(crate) memory_bytes: u64,
    /// Largest `disk_bytes`.
    pub(crate) disk_bytes: u64,
    /// Largest `spill_file_bytes` (apparent lengths).
    pub(crate) spill_file_bytes: u64,
    /// Largest `spill_file_allocated_bytes` (the store's count of what its
    /// files occupy).
    pub(crate) spill_file_allocated_bytes: u64,
    /// Largest `spill_files`.
    pub(crate) spill_files: usize,
    /// Number of `stats()` samples taken.
    pub(crate) samples: u64,
    /// The dump dir whose files are measured, if any.
    dir: Option<PathBuf>,
    /// Whether samples now belong to the mixed phase.
    pub(crate) in_mixed: bool,
    /// `du` samples over the whole run.
    pub(crate) du: DuSamples,
    /// `du` samples of the mixed phase only.
    pub(crate) du_mixed: DuSamples,
}

/// `du` of the dump dir against the live records it must hold.
#[derive(Default, Clone, Copy)]
pub(crate) struct DuSamples {
    /// Samples taken.
    pub(crate) count: u64,
    /// Largest `du`.
    pub(crate) peak: u64,
    /// The sample with the largest `du / live` ratio: (du, live).
    pub(crate) worst: (u64, u64),
    /// Samples with `du > 1.25 x live + 16 MiB` (the goal).
    pub(crate) over_goal: u64,
}

impl DuSamples {
    fn observe(&mut self, du: u64, live: u64) {
        self.count += 1;
        self.peak = self.peak.max(du);
        let ratio = |(d, l): (u64, u64)| d as f64 / l.max(1) as f64;
        if ratio((du, live)) > ratio(self.worst) {
            self.worst = (du, live);
        }
        if du as f64 > 1.25 * live as f64 + (16 << 20) as f64 {
            self.over_goal += 1;
        }
    }

    fn json(&self) -> Value {
        json!({
            "samples": self.count,
            "peak_du": self.peak,
            "worst_du": self.worst.0,
            "worst_live": self.worst.1,
            "samples_over_goal": self.over_goal,
        })
    }
}

/// What the files in `dir` occupy on disk (`st_blocks`, as `du` counts).
fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.blocks() * 512)
            .sum()
    })
}

impl Peaks {
    /// Peaks that also sample `du` of `dir`'s files.
    pub(crate) fn new(dir: Option<&Path>) -> Self {
        Peaks {
            dir: dir.map(Path::to_path_buf),
            ..Peaks::default()
        }
    }

    /// Folds one stats snapshot into the peaks.
    pub(crate) fn observe(&mut self, stats: &Stats) {
        self.memory_bytes = self.memory_bytes.max(stats.memory_bytes);
        self.disk_bytes = self.disk_bytes.max(stats.disk_bytes);
        self.spill_file_bytes = self.spill_file_bytes.max(stats.spill_file_bytes);
        self.spill_file_allocated_bytes = self
            .spill_file_allocated_bytes
            .max(stats.spill_file_allocated_bytes);
        self.spill_files = self.spill_files.max(stats.spill_files);
        self.samples += 1;
        if let Some(dir) = &self.dir {
            let du = du(dir);
            self.du.observe(du, stats.spill_live_bytes);
            if self.in_mixed {
                self.du_mixed.observe(du, stats.spill_live_bytes);
            }
        }
    }
}

/// The store's gauges at the end of the run (after the final check).
pub(crate) struct Gauges {
    /// `entries`.
    pub(crate) entries: usize,
    /// `memory_entries`.
    pub(crate) memory_entries: usize,
    /// `disk_entries`.
    pub(crate) disk_entries: usize,
    /// `memory_bytes`.
    pub(crate) memory_bytes: u64,
    /// `disk_bytes`.
    pub(crate) disk_bytes: u64,
    /// `spill_file_bytes`.
    pub(crate) spill_file_bytes: u64,
    /// `spill_file_allocated_bytes`.
    pub(crate) spill_file_allocated_bytes: u64,
    /// `spill_live_bytes`.
    pub(crate) spill_live_bytes: u64,
    /// `spill_files`.
    pub(crate) spill_files: usize,
    /// `punched_bytes`.
    pub(crate) punched_bytes: u64,
    /// `max_disk_size`.
    pub(crate) max_disk_size: Option<u64>,
    /// `open_spill_files` and `max_open_spill_files`.
    pub(crate) open_spill_files: (usize, usize),
}

impl Gauges {
    /// Takes the gauges out of a stats snapshot.
    pub(crate) fn of(stats: &Stats) -> Self {
        Self {
            entries: stats.entries,
            memory_entries: stats.memory_entries,
            disk_entries: stats.disk_entries,
            memory_bytes: stats.memory_bytes,
            disk_bytes: stats.disk_bytes,
            spill_file_bytes: stats.spill_file_bytes,
            spill_file_allocated_bytes: stats.spill_file_allocated_bytes,
            spill_live_bytes: stats.spill_live_bytes,
            spill_files: stats.spill_files,
            punched_bytes: stats.punched_bytes,
            max_disk_size: stats.max_disk_size,
            open_spill_files: (stats.open_spill_files, stats.max_open_spill_files),
        }
    }
}

/// Everything a successful run measured.
pub(crate) struct Report {
    /// The run's parameters.
    pub(crate) params: Params,
    /// The load phase (insert every key once).
    pub(crate) load: Phase,
    /// The timed mixed read/replace phase.
    pub(crate) mixed: Phase,
    /// Latency summaries, in table order.
    pub(crate) latencies: Vec<Latency>,
    /// Peak gauges over the load and mixed phases.
    pub(crate) peaks: Peaks,
    /// Duration of the final full check of every key, in seconds.
    pub(crate) check_secs: f64,
    /// Gauges after the final check.
    pub(crate) end: Gauges,
    /// With `--cold`: how the page cache was emptied.
    pub(crate) cold: Option<ColdRun>,
}

impl Report {
    /// The machine-readable rendering (`--json`). Sizes are in bytes,
    /// latencies in nanoseconds, rates per second; MB is 10^6 bytes.
    pub(crate) fn json(&self) -> Value {
        let p = &self.params;
        let latency: serde_json::Map<String, Value> = self
            .latencies
            .iter()
            .map(|l| (l.name.replace(' ', "_"), l.json()))
            .collect();
        json!({
            "spillstore_version": env!("CARGO_PKG_VERSION"),
            "params": {
                "max_size": p.max_size,
                "working_set": p.working_set(),
                "value_size": p.value_size,
                "keys": p.keys,
                "threads": p.threads,
                "secs": p.secs,
                "read_ratio": p.read_ratio,
                "zipf": p.zipf,
                "scan_ratio": p.scan_ratio,
                "exact_lru": p.exact_lru,
                "shards": p.shards,
                "max_object_size": p.max_object_size,
                "max_open_files": p.max_open_files,
                "clean_ahead": p.clean_ahead,
                "dump_dir": p.dump_dir,
                "temporary_dump_dir": p.temporary_dir,
                "verify_full": p.verify_full,
                "seed": p.seed,
                "cold_every": p.cold_every,
            },
            "cold": self.cold.as_ref().map(|c| json!({
                "every_secs": c.every,
                "method": c.method,
                "evictions": c.evictions,
            })),
            "load": self.load.json(p.value_size),
            "mixed": self.mixed.json(p.value_size),
            "latency_ns": latency,
            "peak": {
                "memory_bytes": self.peaks.memory_bytes,
                "disk_bytes": self.peaks.disk_bytes,
                "spill_file_bytes": self.peaks.spill_file_bytes,
                "spill_file_allocated_bytes": self.peaks.spill_file_allocated_bytes,
                "spill_files": self.peaks.spill_files,
                "samples": self.peaks.samples,
            },
            "du": {
                "run": self.peaks.du.json(),
                "mixed": self.peaks.du_mixed.json(),
            },
            "final_check": {
                "keys_verified": p.keys,
                "secs": self.check_secs,
            },
            "end": {
                "entries": self.end.entries,
                "memory_entries": self.end.memory_entries,
                "disk_entries": self.end.disk_entries,
                "memory_bytes": self.end.memory_bytes,
                "disk_bytes": self.end.disk_bytes,
                "spill_file_bytes": self.end.spill_file_bytes,
                "spill_file_allocated_bytes": self.end.spill_file_allocated_bytes,
                "spill_live_bytes": self.end.spill_live_bytes,
                "spill_files": self.end.spill_files,
                "punched_bytes": self.end.punched_bytes,
                "max_disk_size": self.end.max_disk_size,
                "open_spill_files": self.end.open_spill_files.0,
                "max_open_spill_files": self.end.open_spill_files.1,
            },
        })
    }

    /// The human-readable table.
    pub(crate) fn table(&self) -> String {
        let p = &self.params;
        let mut out = String::new();
        let o = &mut out;
        // Writing to a String cannot fail, hence the ignored results.
        let _ = writeln!(o, "spillbench (spillstore {})", env!("CARGO_PKG_VERSION"));
        let _ = writeln!(o, "  memory budget   {}", format_size(p.max_size));
        let _ = writeln!(
            o,
            "  working set     {} = {} values x {} ({:.1}x the budget)",
            format_size(p.working_set()),
            p.keys,
            format_size(p.value_size),
            p.working_set() as f64 / p.max_size.max(1) as f64
        );
        let _ = writeln!(
            o,
            "  workload        {} threads, {} s, {:.0}% get / {:.0}% replace, zipf {}, \
             {:.0}% of gets scan",
            p.threads,
            p.secs,
            p.read_ratio * 100.0,
            (1.0 - p.read_ratio) * 100.0,
            p.zipf,
            p.scan_ratio * 100.0
        );
        let _ = writeln!(
            o,
            "  store           shards {}, max object size {}, max open files {}, clean ahead {}, {}",
            p.shards.map_or("default".to_owned(), |s| s.to_string()),
            p.max_object_size.map_or("default".to_owned(), format_size),
            p.max_open_files
                .map_or("default".to_owned(), |n| n.to_string()),
            match p.clean_ahead {
                None => "default".to_owned(),
                Some(0) => "off".to_owned(),
                Some(bytes) => format_size(bytes),
            },
            if p.exact_lru {
                "exact LRU"
            } else {
                "approximate recency (CLOCK)"
            }
        );
        let _ = writeln!(
            o,
            "  dump dir        {}{}",
            p.dump_dir,
            if p.temporary_dir { " (temporary)" } else { "" }
        );
        let _ = writeln!(
            o,
            "  verification    {} on every get, seed {}",
            if p.verify_full {
                "all bytes"
            } else {
                "length, header, 13 sampled bytes"
            },
            p.seed
        );
        if let Some(c) = &self.cold {
            let _ = writeln!(
                o,
                "  cold            dump dir evicted from the page cache ({}) after the load \
                 and every {} s: {} times",
                c.method.unwrap_or("-"),
                c.every,
                c.evictions
            );
        }

        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<8}{:>8}{:>11}{:>12}{:>10}{:>10}{:>10}{:>11}",
            "phase", "secs", "ops", "ops/s", "MB/s", "get mem", "get disk", "inserts"
        );
        for (name, ph) in [("load", &self.load), ("mixed", &self.mixed)] {
            let gets = ph.gets_memory + ph.gets_reload;
            let (mem, disk) = if gets == 0 {
                ("-".to_owned(), "-".to_owned())
            } else {
                (
                    format!("{:.1}%", ratio(ph.gets_memory, gets) * 100.0),
                    format!("{:.1}%", ratio(ph.gets_reload, gets) * 100.0),
                )
            };
            let _ = writeln!(
                o,
                "{:<8}{:>8.2}{:>11}{:>12.0}{:>10.1}{:>10}{:>10}{:>11}",
                name,
                ph.secs,
                ph.ops(),
                per_s(ph.ops(), ph.secs),
                mb_per_s(ph.ops() * p.value_size, ph.secs),
                mem,
                disk,
                ph.inserts
            );
        }

        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<8}{:>9}{:>11}{:>9}{:>11}{:>9}{:>10}{:>12}{:>11}{:>10}",
            "store",
            "spills",
            "spill MB/s",
            "cleaned",
            "clean MB/s",
            "respill",
            "reloads",
            "reload MB/s",
            "mem hits",
            "misses"
        );
        for (name, ph) in [("load", &self.load), ("mixed", &self.mixed)] {
            let c = &ph.store;
            let _ = writeln!(
                o,
                "{:<8}{:>9}{:>11.1}{:>9}{:>11.1}{:>9}{:>10}{:>12.1}{:>11}{:>10}",
                name,
                c.spills,
                mb_per_s(c.spilled_bytes, ph.secs),
                c.cleaned,
                mb_per_s(c.cleaned_bytes, ph.secs),
                c.respills,
                c.reloads,
                mb_per_s(c.reloaded_bytes, ph.secs),
                c.hits,
                c.misses
            );
        }

        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<14}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "latency", "count", "p50", "p99", "p99.9", "max"
        );
        for l in &self.latencies {
            if l.count == 0 {
                let _ = writeln!(
                    o,
                    "{:<14}{:>10}{:>10}{:>10}{:>10}{:>10}",
                    l.name, 0, "-", "-", "-", "-"
                );
                continue;
            }
            let _ = writeln!(
                o,
                "{:<14}{:>10}{:>10}{:>10}{:>10}{:>10}",
                l.name,
                l.count,
                format_ns(l.p50),
                format_ns(l.p99),
                format_ns(l.p999),
                format_ns(l.max)
            );
        }

        let _ = writeln!(o);
        let over = if self.peaks.memory_bytes > p.max_size {
            "  (above the budget)"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "peak            memory {}{over}, on disk {}, spill files {} in {} occupying {} ({} samples)",
            format_size(self.peaks.memory_bytes),
            format_size(self.peaks.disk_bytes),
            format_size(self.peaks.spill_file_bytes),
            self.peaks.spill_files,
            format_size(self.peaks.spill_file_allocated_bytes),
            self.peaks.samples
        );
        let e = &self.end;
        let _ = writeln!(
            o,
            "end             {} entries ({} in memory, {} on disk), memory {}, on disk {}, \
             spill files {} in {} occupying {} (live records {}), {} open of {}",
            e.entries,
            e.memory_entries,
            e.disk_entries,
            format_size(e.memory_bytes),
            format_size(e.disk_bytes),
            format_size(e.spill_file_bytes),
            e.spill_files,
            format_size(e.spill_file_allocated_bytes),
            format_size(e.spill_live_bytes),
            e.open_spill_files.0,
            e.open_spill_files.1
        );
        let budget = e.max_disk_size.map_or("none".to_owned(), format_size);
        let _ = writeln!(
            o,
            "disk            budget {budget}, holes punched {}",
            format_size(e.punched_bytes)
        );
        for (name, d) in [
            ("du (run)", &self.peaks.du),
            ("du (mixed)", &self.peaks.du_mixed),
        ] {
            if d.count == 0 {
                continue;
            }
            let _ = writeln!(
                o,
                "{name:<16}peak {}; worst sample {} for {} of live records ({:.2}x); \
                 {} of {} samples above 1.25 x live + 16 MiB",
                format_size(d.peak),
                format_size(d.worst.0),
                format_size(d.worst.1),
                d.worst.0 as f64 / d.worst.1.max(1) as f64,
                d.over_goal,
                d.count
            );
        }
        for (name, ph) in [("load", &self.load), ("mixed", &self.mixed)] {
            if let Some(amp) = ph.write_amplification(p.value_size) {
                let _ = writeln!(
                    o,
                    "write amp {name:<6}{amp:.2} (spilled {} + cleaned ahead {} + compacted {} \
                     per {} inserted)",
                    format_size(ph.store.spilled_bytes),
                    format_size(ph.store.cleaned_bytes),
                    format_size(ph.store.compacted_bytes),
                    format_size(ph.inserts * p.value_size)
                );
            }
        }
        let _ = writeln!(
            o,
            "final check     all {} keys hold their latest version, every byte verified ({:.2} s)",
            p.keys, self.check_secs
        );
        out
    }
}

/// `count / secs`, 0 for an empty interval.
fn per_s(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// `bytes / secs` in MB/s (10^6 bytes).
fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    per_s(bytes, secs) / 1e6
}

/// `part / whole`, 0 when `whole` is 0.
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Formats nanoseconds as ns, µs, ms or s, whichever keeps the number below 1000.
fn format_ns(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns} ns"),
        1_000..=999_999 => format!("{:.1} µs", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}
