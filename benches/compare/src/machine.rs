//! Facts about the machine, and its memory limits measured in the same run.

use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use memmap2::{Mmap, MmapOptions};
use serde::Serialize;

use crate::workload::sum_words;

#[derive(Debug, Serialize)]
pub struct MachineInfo {
    pub nproc: usize,
    pub cpu_model: String,
    pub rustc: String,
    pub git_commit: String,
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn info() -> MachineInfo {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let rustc = command_line("rustc", &["--version"]).unwrap_or_else(|| "unknown".to_owned());
    let repo = env!("CARGO_MANIFEST_DIR");
    let git_commit = command_line("git", &["-C", repo, "rev-parse", "--short", "HEAD"])
        .unwrap_or_else(|| "unknown".to_owned());
    MachineInfo {
        nproc: nproc(),
        cpu_model,
        rustc,
        git_commit,
    }
}

/// Bandwidths in bytes per second, on one thread and on all threads.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Bandwidth {
    pub one_thread: f64,
    pub all_threads: f64,
}

#[derive(Debug, Serialize)]
pub struct Limits {
    pub threads: usize,
    /// `copy_from_slice` between two 64 MiB buffers (bytes copied per second).
    pub memcpy: Bandwidth,
    /// Summing the u64 words of an mmap'd file in the page cache, mapping
    /// already faulted in.
    pub mmap_read: Bandwidth,
    /// Same, but mapping, summing and unmapping one 1 MiB window at a time
    /// (what a reload of a 1 MiB blob through a fresh mmap costs at best).
    pub mmap_read_fresh_1mib: Bandwidth,
}

const BUF: usize = 64 << 20;
const FILE: usize = 256 << 20;
const WINDOW: usize = 1 << 20;

/// Run `f` (which returns bytes processed) repeatedly for at least `dur`.
fn timed(dur: Duration, mut f: impl FnMut() -> u64) -> f64 {
    f(); // warm-up pass: page faults, caches.
    let t0 = Instant::now();
    let mut bytes = 0u64;
    while t0.elapsed() < dur {
        bytes += f();
    }
    bytes as f64 / t0.elapsed().as_secs_f64()
}

/// Sum of `f` run on `threads` threads at once.
fn on_threads(threads: usize, f: impl Fn() -> f64 + Sync) -> f64 {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(&f)).collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    })
}

fn memcpy_bw(dur: Duration) -> f64 {
    let src = vec![0x5au8; BUF];
    let mut dst = vec![0u8; BUF];
    timed(dur, || {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
        BUF as u64
    })
}

fn mmap_read_bw(map: &Mmap, dur: Duration) -> f64 {
    timed(dur, || {
        black_box(sum_words(black_box(&map[..])));
        map.len() as u64
    })
}

fn mmap_fresh_bw(file: &File, dur: Duration) -> Result<f64> {
    let mut err = None;
    let bw = timed(dur, || {
        let mut bytes = 0;
        for off in (0..FILE).step_by(WINDOW) {
            // SAFETY: the file is private to this process for the measurement
            // and is not truncated or written while mapped.
            let map = unsafe { MmapOptions::new().offset(off as u64).len(WINDOW).map(file) };
            match map {
                Ok(m) => {
                    black_box(sum_words(&m));
                    bytes += WINDOW as u64;
                }
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        bytes.max(1)
    });
    match err {
        Some(e) => Err(e).context("mapping 1 MiB window"),
        None => Ok(bw),
    }
}

/// Measure the memory limits, using a scratch file under `dir`.
pub fn limits(dir: &Path, dur: Duration) -> Result<Limits> {
    let threads = nproc();
    let memcpy = Bandwidth {
        one_thread: memcpy_bw(dur),
        all_threads: on_threads(threads, || memcpy_bw(dur)),
    };

    let path = dir.join("mmap-limit.bin");
    {
        let mut f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let chunk: Vec<u8> = (0..WINDOW).map(|i| (i * 31 % 251) as u8).collect();
        for _ in 0..FILE / WINDOW {
            f.write_all(&chunk)?;
        }
        f.flush()?;
    }
    let file = File::open(&path)?;
    // SAFETY: as above, nobody modifies the scratch file while it is mapped.
    let map = unsafe { Mmap::map(&file) }.context("mapping scratch file")?;
    let mmap_read = Bandwidth {
        one_thread: mmap_read_bw(&map, dur),
        all_threads: on_threads(threads, || mmap_read_bw(&map, dur)),
    };
    drop(map);
    let fresh_one = mmap_fresh_bw(&file, dur)?;
    let fresh_all = on_threads(threads, || mmap_fresh_bw(&file, dur).unwrap_or(0.0));
    drop(file);
    std::fs::remove_file(&path).ok();
    Ok(Limits {
        threads,
        memcpy,
        mmap_read,
        mmap_read_fresh_1mib: Bandwidth {
            one_thread: fresh_one,
            all_threads: fresh_all,
        },
    })
}
