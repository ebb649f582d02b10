//! Model check of the shard's entry state machine under shuttle.
//!
//! An entry moves between *in memory*, *being spilled*, *on disk*, *being
//! reloaded* and *removed*, with file I/O done outside the shard lock. These
//! tests run small races on one key of a one-shard store whose budget holds
//! a single value, so every insert and every promotion forces a spill, and
//! let shuttle explore thousands of thread interleavings (the store's locks
//! are shuttle's under `--cfg shuttle`). After every execution: no lost
//! update, no resurrected key, no wrong bytes, exact accounting, and no
//! leaked spill file.
//!
//! Further races pit compaction against replace, reload and remove on stores
//! of one, two and four shards (keys hash the same way in every execution
//! under shuttle, so each schedule is reproducible), and the spiller (run by
//! `quiesce`, as no background thread runs under shuttle) against replace,
//! remove, reload, eviction, `clear` and compaction.
//!
//! Run with:
//! `RUSTFLAGS="--cfg shuttle" cargo test --release --test shuttle`
//!
//! Each test prints its seed; `SHUTTLE_SEED=N` reruns the same schedules,
//! and `SHUTTLE_REPLAY='<schedule>'` replays the one failing schedule that
//! shuttle prints when a test fails.
#![cfg(shuttle)]

mod common;

use std::sync::Arc;

use shuttle::thread;
use spillstore::{Bytes, SpillStore};

const ITERATIONS: usize = 2000;

/// Explores `ITERATIONS` random schedules of `f`, or replays one (see the
/// module docs). The seed is printed first: the test harness shows it when
/// the test fails.
fn check(f: impl Fn() + Send + Sync + 'static) {
    if let Ok(schedule) = std::env::var("SHUTTLE_REPLAY") {
        shuttle::replay(f, schedule.trim());
        return;
    }
    let seed = std::env::var("SHUTTLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map_or(0, |d| d.as_nanos() as u64)
        });
    println!("shuttle seed {seed}: rerun with SHUTTLE_SEED={seed}");
    shuttle::check_random_with_seed(f, seed, ITERATIONS);
}

fn v(tag: u8) -> Vec<u8> {
    vec![tag; 60]
}

/// A store that fits one 60-byte value in memory, with `k` spilled to disk
/// (holding `v(0)`) and `other` resident.
fn spilled_setup() -> (tempfile::TempDir, Arc<SpillStore<&'static str>>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SpillStore::builder()
        .max_size(100)
        .dump_dir(dir.path().join("dump"))
        .segment_size(4096)
        .shards(1)
        .build()
        .unwrap();
    store.insert("k", v(0)).unwrap();
    store.insert("other", v(9)).unwrap();
    assert_eq!(store.location("k"), Some(spillstore::Location::File));
    (dir, Arc::new(store))
}

/// Accounting is exact, invariants hold, and removing every key leaves no
/// spill file behind.
fn check_and_empty<K>(dir: &tempfile::TempDir, store: &SpillStore<K>)
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
{
    store.validate().unwrap();
    let stats = store.stats();
    let total: u64 = store
        .keys()
        .iter()
        .map(|k| store.get(k).unwrap().unwrap().len() as u64)
        .sum();
    assert_eq!(stats.memory_bytes + stats.disk_bytes, total);
    assert!(stats.memory_bytes <= stats.max_size.unwrap());
    for k in store.keys() {
        store.remove(&k).unwrap();
    }
    assert_eq!(
        common::data_files(&dir.path().join("dump")),
        Vec::<String>::new()
    );
}

fn is(value: &Option<Bytes>, tag: u8) -> bool {
    value.as_deref() == Some(&v(tag)[..])
}

/// Replace vs reload vs eviction of the same key: the last writer wins and
/// a reader sees the old or the new value, never another.
#[test]
fn replace_races_reload_and_spill() {
    check(|| {
        let (dir, store) = spilled_setup();
        let s = Arc::clone(&store);
        let writer = thread::spawn(move || s.insert("k", v(1)).unwrap());
        let s = Arc::clone(&store);
        let reader = thread::spawn(move || s.get("k").unwrap());
        let s = Arc::clone(&store);
        let evicter = thread::spawn(move || s.insert("third", v(3)).unwrap());
        writer.join().unwrap();
        let seen = reader.join().unwrap();
        evicter.join().unwrap();
        assert!(is(&seen, 0) || is(&seen, 1), "reader saw {seen:?}");
        assert!(is(&store.get("k").unwrap(), 1), "lost update");
        assert!(is(&store.get("third").unwrap(), 3));
        assert!(is(&store.get("other").unwrap(), 9));
        check_and_empty(&dir, &store);
    });
}

/// Remove vs reload-and-promote vs a spill: a removed key never comes back.
#[test]
fn remove_races_reload_and_spill() {
    check(|| {
        let (dir, store) = spilled_setup();
        let s = Arc::clone(&store);
        let remover = thread::spawn(move || s.remove("k").unwrap());
        let s = Arc::clone(&store);
        let reader = thread::spawn(move || s.get("k").unwrap());
        let s = Arc::clone(&store);
        let evicter = thread::spawn(move || s.insert("third", v(3)).unwrap());
        assert!(remover.join().unwrap());
        let seen = reader.join().unwrap();
        evicter.join().unwrap();
        assert!(seen.is_none() || is(&seen, 0), "reader saw {seen:?}");
        assert_eq!(store.get("k").unwrap(), None, "resurrected");
        assert!(!store.contains_key("k"));
        check_and_empty(&dir, &store);
    });
}

/// Two concurrent spills of different victims and a removal of one of them
/// while it is being written.
#[test]
fn remove_races_its_own_spill() {
    check(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SpillStore::builder()
                .max_size(130)
                .dump_dir(dir.path().join("dump"))
                .segment_size(4096)
                .shards(1)
                .build()
                .unwrap(),
        );
        store.insert("a", v(1)).unwrap();
        store.insert("b", v(2)).unwrap();
        let s = Arc::clone(&store);
        let t1 = thread::spawn(move || s.insert("c", v(3)).unwrap());
        let s = Arc::clone(&store);
        let t2 = thread::spawn(move || s.insert("d", v(4)).unwrap());
        let s = Arc::clone(&store);
        let t3 = thread::spawn(move || s.remove("a").unwrap());
        t1.join().unwrap();
        t2.join().unwrap();
        assert!(t3.join().unwrap());
        assert_eq!(store.get("a").unwrap(), None, "resurrected");
        for (k, tag) in [("b", 2), ("c", 3), ("d", 4)] {
            assert!(is(&store.get(k).unwrap(), tag), "lost {k}");
        }
        check_and_empty(&dir, &store);
    });
}

/// Two readers reloading the same spilled key, while it is replaced.
#[test]
fn concurrent_reloads_and_replace() {
    check(|| {
        let (dir, store) = spilled_setup();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let s = Arc::clone(&store);
                thread::spawn(move || s.get("k").unwrap())
            })
            .collect();
        let s = Arc::clone(&store);
        let writer = thread::spawn(move || s.insert("k", v(5)).unwrap());
        for r in readers {
            let seen = r.join().unwrap();
            assert!(is(&seen, 0) || is(&seen, 5), "reader saw {seen:?}");
        }
        writer.join().unwrap();
        assert!(is(&store.get("k").unwrap(), 5), "lost update");
        check_and_empty(&dir, &store);
    });
}

/// A store of `shards` shards, each holding one 60-byte value in memory,
/// whose oldest spill segment is sparse: keys 0..60 were inserted (so
/// almost all spilled, in about two 4 KiB segments) and 10..50 removed, so
/// keys 0..10 remain on disk in a segment that is mostly dead space.
fn sparse_setup(shards: usize) -> (tempfile::TempDir, Arc<SpillStore<u64>>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SpillStore::builder()
        .max_size(100 * shards as u64)
        .dump_dir(dir.path().join("dump"))
        .segment_size(4096)
        .shards(shards)
        .build()
        .unwrap();
    for k in 0..60u64 {
        store.insert(k, v(k as u8)).unwrap();
    }
    for k in 10..50u64 {
        assert!(store.remove(&k).unwrap());
    }
    for k in 0..10u64 {
        assert_eq!(store.location(&k), Some(spillstore::Location::File));
    }
    (dir, Arc::new(store))
}

/// Compaction moving records while one of them is replaced, one reloaded
/// (and promoted) and one removed: each operation's result stands, every
/// other value reads back exactly, and the pass moved the untouched records.
fn compaction_races_replace_reload_remove(shards: usize) {
    check(move || {
        let (dir, store) = sparse_setup(shards);
        let s = Arc::clone(&store);
        let compacter = thread::spawn(move || s.compact());
        let s = Arc::clone(&store);
        let writer = thread::spawn(move || s.insert(3, v(103)).unwrap());
        let s = Arc::clone(&store);
        let reader = thread::spawn(move || s.get(&5).unwrap());
        let s = Arc::clone(&store);
        let remover = thread::spawn(move || s.remove(&7).unwrap());
        compacter.join().unwrap();
        writer.join().unwrap();
        assert!(is(&reader.join().unwrap(), 5), "reader saw wrong bytes");
        assert!(remover.join().unwrap());
        assert!(is(&store.get(&3).unwrap(), 103), "lost update");
        assert_eq!(store.get(&7).unwrap(), None, "resurrected");
        for k in (0..10u64).chain(50..60).filter(|k| ![3, 7].contains(k)) {
            assert!(is(&store.get(&k).unwrap(), k as u8), "key {k}");
        }
        let stats = store.stats();
        assert!(
            stats.compactions >= 1 && stats.compacted_bytes > 0,
            "{stats:?}"
        );
        assert_eq!(store.len(), 19);
        check_and_empty(&dir, &store);
    });
}

#[test]
fn compaction_races_replace_reload_remove_one_shard() {
    compaction_races_replace_reload_remove(1);
}

#[test]
fn compaction_races_replace_reload_remove_two_shards() {
    compaction_races_replace_reload_remove(2);
}

#[test]
fn compaction_races_replace_reload_remove_four_shards() {
    compaction_races_replace_reload_remove(4);
}

/// `clear` racing a compaction pass and a reload: nothing survives the
/// clear but what was inserted after it, and no file is left behind.
#[test]
fn clear_races_compaction_and_reload() {
    check(|| {
        let (dir, store) = sparse_setup(2);
        let s = Arc::clone(&store);
        let compacter = thread::spawn(move || s.compact());
        let s = Arc::clone(&store);
        let reader = thread::spawn(move || s.get(&5).unwrap());
        let s = Arc::clone(&store);
        let clearer = thread::spawn(move || s.clear().unwrap());
        compacter.join().unwrap();
        let seen = reader.join().unwrap();
        clearer.join().unwrap();
        assert!(seen.is_none() || is(&seen, 5), "reader saw {seen:?}");
        assert!(store.is_empty());
        check_and_empty(&dir, &store);
    });
}

/// A store that fits three 60-byte values in memory and cleans all of them
/// ahead: "a", "b" and "c" resident without copies (under shuttle no
/// spiller thread runs: `quiesce` runs its work), "k" on disk. "k" is
/// cleaned before the others come, so that its eviction writes nothing: an
/// insert that has to write cleans a batch of the window itself (helping a
/// spiller that fell behind), which would give "a", "b" and "c" copies
/// before the race. An insert racing in the tests below ("d") does write,
/// and helps.
fn cleaning_setup() -> (tempfile::TempDir, Arc<SpillStore<&'static str>>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SpillStore::builder()
        .max_size(200)
        .clean_ahead(200)
        .dump_dir(dir.path().join("dump"))
        .segment_size(4096)
        .shards(1)
        .build()
        .unwrap();
    store.insert("k", v(0)).unwrap();
    store.quiesce();
    for (key, tag) in [("a", 1), ("b", 2), ("c", 3)] {
        store.insert(key, v(tag)).unwrap();
    }
    assert_eq!(store.location("k"), Some(spillstore::Location::File));
    let stats = store.stats();
    assert_eq!((stats.cleaned, stats.spills, stats.respills), (1, 0, 1));
    (dir, Arc::new(store))
}

/// The spiller writing copies of "a", "b" and "c" while "a" is replaced,
/// "b" removed, "k" reloaded (its promotion evicts) and "d" inserted (its
/// insert evicts): a copy goes only to the value it was written from, so
/// every later eviction and reload gives back exactly the bytes stored
/// last; a removed key stays removed; nothing leaks.
#[test]
fn spiller_races_replace_remove_reload_and_evictions() {
    check(|| {
        let (dir, store) = cleaning_setup();
        let s = Arc::clone(&store);
        let spiller = thread::spawn(move || s.quiesce());
        let s = Arc::clone(&store);
        let writer = thread::spawn(move || s.insert("a", v(11)).unwrap());
        let s = Arc::clone(&store);
        let remover = thread::spawn(move || s.remove("b").unwrap());
        let s = Arc::clone(&store);
        let reader = thread::spawn(move || s.get("k").unwrap());
        let s = Arc::clone(&store);
        let evicter = thread::spawn(move || s.insert("d", v(4)).unwrap());
        spiller.join().unwrap();
        writer.join().unwrap();
        assert!(remover.join().unwrap());
        assert!(is(&reader.join().unwrap(), 0), "reader saw wrong bytes");
        evicter.join().unwrap();
        // Push everything through disk and back: copies are what is read.
        store.quiesce();
        for key in ["e", "f", "g"] {
            store.insert(key, v(5)).unwrap();
        }
        assert!(is(&store.get("a").unwrap(), 11), "lost update");
        assert_eq!(store.get("b").unwrap(), None, "resurrected");
        for (key, tag) in [("k", 0), ("c", 3), ("d", 4)] {
            assert!(is(&store.get(key).unwrap(), tag), "key {key}");
        }
        let stats = store.stats();
        assert!(stats.cleaned > 0, "{stats:?}");
        check_and_empty(&dir, &store);
    });
}

/// The spiller (with a compaction pass, both run by `quiesce`) racing
/// `clear` and an insert after it: no file outlives the clear (found by the
/// Python package's parity test: a copy being written survived it), nothing
/// survives it but what was inserted after it, no copy lands on a cleared
/// entry, nothing leaks.
#[test]
fn spiller_races_clear_and_compaction() {
    check(|| {
        let (dir, store) = cleaning_setup();
        let s = Arc::clone(&store);
        let spiller = thread::spawn(move || s.quiesce());
        let s = Arc::clone(&store);
        let compacter = thread::spawn(move || s.compact());
        let s = Arc::clone(&store);
        let clearer = thread::spawn(move || {
            s.clear().unwrap();
            // Every file is gone when clear returns, copies in flight too.
            assert_eq!(s.stats().spill_files, 0, "a file outlived clear");
            s.insert("after", v(7)).unwrap();
        });
        spiller.join().unwrap();
        compacter.join().unwrap();
        clearer.join().unwrap();
        assert_eq!(store.keys(), vec!["after"]);
        assert!(is(&store.get("after").unwrap(), 7));
        check_and_empty(&dir, &store);
    });
}
