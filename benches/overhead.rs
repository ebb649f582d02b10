//! Bookkeeping memory per entry: heap bytes a [`SpillStore`] spends per
//! stored key beyond the key and value bytes themselves.
//!
//! ```text
//! cargo bench --bench overhead
//! ```
//!
//! A counting global allocator wraps [`System`] and keeps the live heap bytes
//! (as requested by the program: the allocator's own per-chunk overhead is
//! not included). For each scenario a store is built first, then the live
//! bytes are sampled before and after inserting `N` entries whose keys are
//! 32-hex-character `String`s (exactly 32 bytes of heap each) and whose
//! values are 64-byte `Bytes` made from a `Vec` whose length equals its
//! capacity (such a `Bytes` needs no extra header allocation until it is
//! cloned; any header the store causes shows up as overhead).
//!
//! * **resident**: a budget far above the data; every value stays in memory,
//!   so `overhead = delta - key heap - value bytes`.
//! * **spilled**: a 4 KiB budget; all but a handful of values live in spill
//!   files, whose bytes are on disk (or in the page cache), not on the heap,
//!   so `overhead = delta - key heap - value bytes still resident`.
//!
//! Two interpretations of "key bytes" are printed: only the key's heap
//! buffer (the 24-byte `String` struct stored in the entry then counts as
//! overhead), or heap buffer plus `size_of::<String>()`. The figures include
//! the amortized slack of the store's growable tables (hash index and slab
//! grow by doubling), so they depend a little on where `N` falls between two
//! powers of two.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::Instant;

use spillstore::{Bytes, SpillStore};

/// Wraps the system allocator and counts live bytes and allocation calls.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees carry over; the counters have no effect
// on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds the contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from this allocator.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const N: usize = 100_000;
const KEY_LEN: usize = 32;
const VALUE_LEN: usize = 64;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// A 32-hex-character key with exactly 32 bytes of heap.
fn key(i: u64) -> String {
    let mut s = String::with_capacity(KEY_LEN);
    write!(s, "{:016x}{i:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).expect("write to String");
    debug_assert_eq!((s.len(), s.capacity()), (KEY_LEN, KEY_LEN));
    s
}

/// A 64-byte value whose `Vec` has no spare capacity.
fn value(i: u64) -> Bytes {
    let v = vec![i as u8; VALUE_LEN];
    debug_assert_eq!(v.capacity(), VALUE_LEN);
    Bytes::from(v)
}

struct Measured {
    name: &'static str,
    /// Heap growth per entry.
    delta: f64,
    /// Value bytes still on the heap, per entry.
    resident_value: f64,
    allocs: f64,
    disk_per_entry: f64,
    /// Heap left after dropping the store, relative to before it was built.
    after_drop: isize,
    secs: f64,
}

fn measure(name: &'static str, max_size: u64) -> Measured {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let before_build = live();
    let store: SpillStore = SpillStore::builder()
        .max_size(max_size)
        .dump_dir(dir.path())
        .build()
        .expect("build store");
    let before = live();
    let allocs_before = ALLOCS.load(Ordering::Relaxed);
    for i in 0..N as u64 {
        store.insert(key(i), value(i)).expect("insert");
    }
    let after = live();
    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs_before;
    let stats = store.stats();
    assert_eq!(stats.entries, N, "{name}: every entry is stored");
    assert_eq!(
        stats.memory_bytes + stats.disk_bytes,
        (N * VALUE_LEN) as u64,
        "{name}: value bytes add up"
    );
    // Spot-check that the values are really there.
    for i in [0, N as u64 / 2, N as u64 - 1] {
        let got = store.get(key(i).as_str()).expect("get").expect("present");
        assert_eq!(got, value(i), "{name}: value {i}");
    }
    drop(store);
    let after_drop = live() - before_build;
    let n = N as f64;
    Measured {
        name,
        delta: (after - before) as f64 / n,
        resident_value: stats.memory_bytes as f64 / n,
        allocs: allocs as f64 / n,
        disk_per_entry: stats.spill_file_bytes as f64 / n,
        after_drop,
        secs: started.elapsed().as_secs_f64(),
    }
}

fn measure_warmup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: SpillStore = SpillStore::builder()
        .max_size(64)
        .dump_dir(dir.path())
        .build()
        .expect("build store");
    for i in 0..4 {
        store.insert(key(i), value(i)).expect("insert");
        store.get(key(0).as_str()).expect("get");
    }
}

fn main() {
    // `cargo bench` passes `--bench`; this target has no options.
    let string_struct = std::mem::size_of::<String>() as f64;
    // Dropping a store clears its shards on the global rayon pool: start that
    // pool (and any other lazy global) outside the measurements.
    measure_warmup();
    let rows = [measure("resident", 1 << 40), measure("spilled", 4 << 10)];
    println!(
        "spillstore per-entry heap overhead: N = {N}, {KEY_LEN}-byte String keys, \
         {VALUE_LEN}-byte values, default shards"
    );
    println!(
        "{:<9} {:>11} {:>14} {:>18} {:>23} {:>14} {:>15} {:>11}",
        "entries",
        "heap/entry",
        "value on heap",
        "overhead (key=32)",
        format!("overhead (key=32+{string_struct})"),
        "allocs/insert",
        "spill file B/e",
        "leak@drop"
    );
    for m in &rows {
        let overhead = m.delta - KEY_LEN as f64 - m.resident_value;
        println!(
            "{:<9} {:>11.1} {:>14.1} {:>18.1} {:>23.1} {:>14.2} {:>15.1} {:>11} ({:.1} s)",
            m.name,
            m.delta,
            m.resident_value,
            overhead,
            overhead - string_struct,
            m.allocs,
            m.disk_per_entry,
            m.after_drop,
            m.secs,
        );
    }
    println!(
        "heap/entry: live heap growth per insert; overhead = heap/entry - key heap - value \
         bytes on heap;\nthe second overhead column also counts the String struct (24 B) as \
         key bytes. Allocator chunk headers are not counted;\nspill file B/e is the length of \
         the spill files per entry (record headers and unused tail included)."
    );
    let leaked: Vec<_> = rows.iter().filter(|m| m.after_drop > 0).collect();
    if !leaked.is_empty() {
        for m in leaked {
            eprintln!(
                "warning: {}: {} heap bytes still live after dropping the store",
                m.name, m.after_drop
            );
        }
    }
}
