//! Keys, self-checking values, Zipf key sequences and the timed worker loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use bytes::Bytes;
use clap::ValueEnum;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::Zipf;
use serde::Serialize;

use crate::store::Store;

/// Zipf exponent of key popularity.
pub const ZIPF_S: f64 = 0.99;

/// Length of each thread's precomputed key sequence (a power of two).
const SAMPLES: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Everything resident, gets only.
    HotGet,
    /// Everything resident, 90% get / 10% replace.
    Mixed,
    /// Working set 4x the memory budget, all preloaded, then gets.
    SpillReload,
    /// Working set of --cold-working-set-mib, all preloaded; then, with the
    /// page cache emptied before each repetition, a fixed number of gets of
    /// distinct keys in random order: every reload reads the disk. Needs
    /// root (drop_caches); not in the default set.
    ColdReload,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::HotGet, Workload::Mixed, Workload::SpillReload];

    pub fn name(self) -> &'static str {
        match self {
            Workload::HotGet => "hot-get",
            Workload::Mixed => "mixed",
            Workload::SpillReload => "spill-reload",
            Workload::ColdReload => "cold-reload",
        }
    }

    /// Percentage of operations that replace a value.
    pub fn replace_percent(self) -> u64 {
        match self {
            Workload::Mixed => 10,
            Workload::HotGet | Workload::SpillReload | Workload::ColdReload => 0,
        }
    }
}

/// splitmix64 finalizer: a bijection on u64.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The 32-hex-char key of index `i` (unique: `mix` is a bijection).
pub fn key_of(i: u64) -> String {
    format!("{:016x}{:016x}", mix(i), mix(i ^ 0x5151_5151_5151_5151))
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn value_seed(idx: u64, version: u64) -> u64 {
    mix(idx ^ mix(version))
}

fn expected_word(seed: u64, j: usize) -> u64 {
    seed.wrapping_add((j as u64).wrapping_mul(GOLDEN))
}

/// A value of `size` bytes (a multiple of 8, at least 32) for key index `idx`:
/// word 0 is `idx`, word 1 the version, word j>1 a sequence seeded by both.
pub fn make_value(idx: u64, version: u64, size: usize) -> Bytes {
    let seed = value_seed(idx, version);
    let mut buf = vec![0u8; size];
    for (j, chunk) in buf.chunks_exact_mut(8).enumerate() {
        let word = match j {
            0 => idx,
            1 => version,
            _ => expected_word(seed, j),
        };
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    Bytes::from(buf)
}

fn word_at(value: &[u8], j: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&value[j * 8..j * 8 + 8]);
    u64::from_le_bytes(w)
}

/// Cheap check that `value` is a value of key `idx` (any version): length,
/// header, and one word in every 4 KiB page plus the last word. Reading a
/// word per page also makes a store that hands out lazily mapped memory pay
/// for faulting every page in, like a reader of the value would.
pub fn check_value(idx: u64, size: usize, value: &[u8]) -> bool {
    if value.len() != size || word_at(value, 0) != idx {
        return false;
    }
    let seed = value_seed(idx, word_at(value, 1));
    let words = size / 8;
    (2..words)
        .step_by(PAGE_WORDS)
        .chain(std::iter::once(words - 1))
        .all(|j| word_at(value, j) == expected_word(seed, j))
}

const PAGE_WORDS: usize = 4096 / 8;

/// Wrapping sum of all u64 words of `bytes` (a full read of the value).
pub fn sum_words(bytes: &[u8]) -> u64 {
    let mut acc = [0u64; 4];
    for c in bytes.chunks_exact(32) {
        for (k, a) in acc.iter_mut().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&c[k * 8..k * 8 + 8]);
            *a = a.wrapping_add(u64::from_ne_bytes(w));
        }
    }
    acc.iter().fold(0, |x, y| x.wrapping_add(*y))
}

/// Precomputed per-thread Zipf key sequences of one cell, shared by all stores.
pub struct KeySequences {
    pub per_thread: Vec<Vec<u32>>,
}

impl KeySequences {
    /// `threads` sequences over `n_keys` keys. Popularity rank r maps to key
    /// `perm[r]`, a seeded permutation, so hot keys are spread over the load order.
    pub fn new(n_keys: usize, threads: usize, seed: u64) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut perm: Vec<u32> = (0..n_keys as u32).collect();
        perm.shuffle(&mut rng);
        let zipf = Zipf::new(n_keys as u64, ZIPF_S).map_err(|e| anyhow!("zipf: {e:?}"))?;
        let per_thread = (0..threads)
            .map(|t| {
                let mut rng = StdRng::seed_from_u64(mix(seed ^ (t as u64 + 1)));
                (0..SAMPLES)
                    .map(|_| {
                        let rank = (rng.sample(zipf) as usize).clamp(1, n_keys) - 1;
                        perm[rank]
                    })
                    .collect()
            })
            .collect();
        Ok(Self { per_thread })
    }
}

/// What the threads of one timed window did.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Counters {
    pub gets: u64,
    pub hits: u64,
    pub inserts: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub corrupt: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.gets += o.gets;
        self.hits += o.hits;
        self.inserts += o.inserts;
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
        self.corrupt += o.corrupt;
    }
}

/// The fixed inputs of a cell.
pub struct Cell<'a> {
    pub workload: Workload,
    pub keys: &'a [String],
    pub value_size: usize,
    pub seqs: &'a KeySequences,
    /// Sum every word of every value got, not only the checked words.
    pub read_all: bool,
}

/// Per-thread state kept across the windows of one store's cell.
#[derive(Clone, Default)]
pub struct ThreadState {
    pos: usize,
    rng: u64,
    version: u64,
}

pub fn thread_states(threads: usize) -> Vec<ThreadState> {
    (0..threads)
        .map(|t| ThreadState {
            pos: t * 7919,
            rng: mix(0xC0FFEE + t as u64) | 1,
            // Versions of replacements are unique per thread and never 0 (preload).
            version: ((t as u64 + 1) << 40) + 1,
        })
        .collect()
}

fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

fn worker(
    store: &dyn Store,
    cell: &Cell<'_>,
    seq: &[u32],
    st: &mut ThreadState,
    stop: &AtomicBool,
) -> Result<Counters> {
    let mut c = Counters::default();
    let mask = seq.len() - 1;
    let replace = cell.workload.replace_percent();
    while !stop.load(Ordering::Relaxed) {
        let idx = seq[st.pos & mask] as usize;
        st.pos = st.pos.wrapping_add(1);
        let key = &cell.keys[idx];
        if replace > 0 && xorshift(&mut st.rng) % 100 < replace {
            let value = make_value(idx as u64, st.version, cell.value_size);
            st.version += 1;
            store.insert(key, value)?;
            c.inserts += 1;
            c.bytes_written += cell.value_size as u64;
        } else {
            c.gets += 1;
            if let Some(value) = store.get(key)? {
                c.hits += 1;
                c.bytes_read += value.len() as u64;
                if !check_value(idx as u64, cell.value_size, &value) {
                    c.corrupt += 1;
                }
                if cell.read_all {
                    std::hint::black_box(sum_words(&value));
                }
            }
        }
    }
    Ok(c)
}

/// Run all threads against `store` for `duration`; returns counters and the
/// elapsed wall time of the window.
pub fn run_window(
    store: &dyn Store,
    cell: &Cell<'_>,
    states: &mut [ThreadState],
    duration: Duration,
) -> Result<(Counters, Duration)> {
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(states.len() + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = states
            .iter_mut()
            .zip(&cell.seqs.per_thread)
            .map(|(st, seq)| {
                let (stop, barrier) = (&stop, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let r = worker(store, cell, seq, st, stop);
                    if r.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let deadline = t0 + duration;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
        }
        stop.store(true, Ordering::Relaxed);
        let mut total = Counters::default();
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(c)) => total.add(&c),
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => first_err = first_err.or(Some(anyhow!("worker thread panicked"))),
            }
        }
        let elapsed = t0.elapsed();
        match first_err {
            Some(e) => Err(e),
            None => Ok((total, elapsed)),
        }
    })
}

/// Insert every key once (version 0), single-threaded, in index order.
pub fn preload(store: &dyn Store, keys: &[String], value_size: usize) -> Result<Duration> {
    let t0 = Instant::now();
    for (i, key) in keys.iter().enumerate() {
        store.insert(key, make_value(i as u64, 0, value_size))?;
    }
    store.settle()?;
    Ok(t0.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_check() {
        for size in [32usize, 1024, 65536] {
            let v = make_value(7, 3, size);
            assert!(check_value(7, size, &v));
            assert!(!check_value(8, size, &v));
            assert!(!check_value(7, size + 8, &v));
            let mut bad = v.to_vec();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(!check_value(7, size, &bad));
        }
    }

    #[test]
    fn keys_are_32_hex() {
        let k = key_of(42);
        assert_eq!(k.len(), 32);
        assert!(k.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(key_of(1), key_of(2));
    }
}
