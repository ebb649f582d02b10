//! The async facade (`--features tokio`): what runs inline and what on the
//! blocking pool, exact counters, and the same eviction order as the
//! synchronous API.
//!
//! Whether a call ran inline is shown without timing: its future completes
//! on the first poll while tokio's only blocking thread is held by a
//! [`Jam`]; a call that needs the pool stays pending until the jam ends.

mod common;

use std::future::Future;
use std::pin::pin;
use std::sync::mpsc;
use std::task::{Context, Poll, Waker};

use spillstore::{Location, SpillStore, Stats};
use tokio::runtime::{Builder, Runtime};

use common::value;

/// Polls `future` once, with a waker that does nothing.
fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// A current-thread runtime whose blocking pool has a single thread.
fn one_blocking_thread() -> Runtime {
    Builder::new_current_thread()
        .max_blocking_threads(1)
        .build()
        .unwrap()
}

/// Holds the only blocking thread of a runtime until dropped.
struct Jam {
    release: Option<mpsc::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Jam {
    fn new(rt: &Runtime) -> Self {
        let (release, wait) = mpsc::channel::<()>();
        let task = rt.spawn_blocking(move || {
            let _ = wait.recv();
        });
        Jam {
            release: Some(release),
            task: Some(task),
        }
    }

    /// Frees the blocking thread and waits until it is free.
    fn end(mut self, rt: &Runtime) {
        drop(self.release.take());
        rt.block_on(self.task.take().unwrap()).unwrap();
    }
}

/// A one-shard store of `budget` bytes in a fresh dump dir, with its policy,
/// and without copies written ahead: which values have a
/// disk copy (and so which calls run inline) must not depend on when the
/// spiller runs. `cleaned_values_are_evicted_inline` shows the spiller's part.
fn one_shard(dir: &std::path::Path, budget: u64, exact_lru: bool) -> SpillStore<u32> {
    SpillStore::builder()
        .max_size(budget)
        .dump_dir(dir)
        .shards(1)
        .exact_lru(exact_lru)
        .clean_ahead(0)
        .build()
        .unwrap()
}

/// Completes on the first poll, with the blocking pool jammed.
fn inline<F: Future>(future: F) -> F::Output {
    match poll_once(pin!(future)) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("expected an inline call, it went to the blocking pool"),
    }
}

/// Stays pending while the pool is jammed; completes once `jam` ends.
fn pooled<F: Future>(rt: &Runtime, jam: Jam, future: F) -> F::Output {
    let mut future = pin!(future);
    assert!(
        poll_once(future.as_mut()).is_pending(),
        "expected a call on the blocking pool, it completed inline"
    );
    jam.end(rt);
    rt.block_on(future)
}

#[test]
fn values_round_trip_through_memory_and_disk() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let store = common::store(dir.path(), 64 << 10, 4).into_async();
    rt.block_on(async {
        for i in 0..64u64 {
            let len = 1 + (i as usize * 4099) % (8 << 10);
            store.insert(format!("k{i}"), value(i, len)).await.unwrap();
        }
        assert!(store.stats().disk_entries > 0, "some values spilled");
        for round in 0..2 {
            for i in 0..64u64 {
                let len = 1 + (i as usize * 4099) % (8 << 10);
                let got = store.get(&format!("k{i}")).await.unwrap();
                assert_eq!(
                    got.as_deref(),
                    Some(&value(i, len)[..]),
                    "k{i} round {round}"
                );
            }
        }
        assert_eq!(store.get("absent").await.unwrap(), None);
    });
    assert_eq!(store.len(), 64);
    store.store().validate().unwrap();
}

/// A memory hit, a miss and an insert that fits need no runtime at all: no
/// task hop, nothing spawned.
#[test]
fn memory_hits_misses_and_fitting_inserts_are_inline_without_a_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store(dir.path(), 1000, 1).into_async();
    inline(store.insert("a".to_string(), "alpha")).unwrap();
    inline(store.insert("a".to_string(), "again")).unwrap();
    let got = inline(store.get_with_location("a")).unwrap();
    assert_eq!(got, Some((b"again"[..].into(), Location::Memory)));
    assert_eq!(inline(store.get("b")).unwrap(), None);
    assert!(inline(store.remove("a")).unwrap());
    assert!(!inline(store.remove("a")).unwrap());
    let stats = store.stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 0));
}

/// A reload whose promotion must write a victim (key 1, without a disk
/// copy) runs on the pool, read and promoted there.
#[test]
fn reloads_run_on_the_blocking_pool() {
    let dir = tempfile::tempdir().unwrap();
    let rt = one_blocking_thread();
    let store = one_shard(dir.path(), 20, false).into_async();
    rt.block_on(async {
        for i in 0..3 {
            store.insert(i, value(i.into(), 10)).await.unwrap();
        }
    });
    assert_eq!(store.location(&0), Some(Location::File));
    let _runtime = rt.enter();
    let jam = Jam::new(&rt);
    // Key 1 is in memory: served while the pool is busy.
    assert_eq!(
        inline(store.get(&1)).unwrap().as_deref(),
        Some(&value(1, 10)[..])
    );
    let got = pooled(&rt, jam, store.get_with_location(&0)).unwrap();
    assert_eq!(got, Some((value(0, 10).into(), Location::File)));
    assert_eq!(store.location(&0), Some(Location::Memory), "promoted");
    let stats = store.stats();
    assert_eq!((stats.hits, stats.reloads, stats.misses), (1, 1, 0));
}

/// Whether this file system answers `preadv2(RWF_NOWAIT)` (Linux 4.14 and
/// later, on most local file systems): without it nothing counts as cached,
/// and every reload goes to the pool.
fn nowait_reads_work(dir: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd;
    let path = dir.join("probe");
    std::fs::write(&path, b"cached").unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let mut buf = [0u8; 6];
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `preadv2` writes at most 6 bytes into `buf`, which outlives
    // the call, through the one `iovec` on our stack; the descriptor is
    // `file`'s, open for the whole call.
    let read = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
    std::fs::remove_file(&path).unwrap();
    read == 6
}

/// A reload whose record is in the page cache, and whose promotion needs
/// no write (the victim keeps a disk copy), is served inline with the pool
/// jammed: read, verified, promoted and counted as `get` does it.
#[test]
fn cached_reloads_that_need_no_write_are_inline() {
    let dir = tempfile::tempdir().unwrap();
    if !nowait_reads_work(dir.path()) {
        println!("SKIPPED: preadv2(RWF_NOWAIT) is not supported here");
        return;
    }
    let rt = one_blocking_thread();
    let _runtime = rt.enter();
    let store = one_shard(&dir.path().join("dump"), 20, false).into_async();
    rt.block_on(async {
        for key in 0..3 {
            store.insert(key, value(key.into(), 10)).await.unwrap();
        }
        // Each reload promotes its key and writes the tail out: 1 and 0
        // end in memory with their copies, 2 on disk.
        store.get(&0).await.unwrap();
        store.get(&1).await.unwrap();
    });
    assert_eq!(store.location(&2), Some(Location::File));
    let before = store.stats();
    let jam = Jam::new(&rt);
    let got = inline(store.get_with_location(&2)).unwrap();
    assert_eq!(got, Some((value(2, 10).into(), Location::File)));
    assert_eq!(store.location(&2), Some(Location::Memory), "promoted");
    assert_eq!(store.location(&0), Some(Location::File), "evicted");
    let after = store.stats();
    assert_eq!(after.reloads - before.reloads, 1);
    assert_eq!(after.respills - before.respills, 1);
    assert_eq!(after.spills, before.spills, "no write");
    jam.end(&rt);
    store.store().validate().unwrap();
}

/// Inserts that fit, or whose victims keep a disk copy, complete inline;
/// one whose victim has no copy, or a value too large for its shard, goes
/// to the pool.
#[test]
fn inserts_that_must_write_run_on_the_blocking_pool() {
    let dir = tempfile::tempdir().unwrap();
    let rt = one_blocking_thread();
    let _runtime = rt.enter();
    let store = one_shard(dir.path(), 20, false).into_async();
    let jam = Jam::new(&rt);
    inline(store.insert(1, value(1, 10))).unwrap();
    inline(store.insert(2, value(2, 10))).unwrap();
    pooled(&rt, jam, store.insert(3, value(3, 10))).unwrap();
    assert_eq!(store.location(&1), Some(Location::File));
    // Reloading 1 spills 2 and keeps 1's copy: 1 then leaves for free.
    assert!(rt.block_on(store.get(&1)).unwrap().is_some());
    let jam = Jam::new(&rt);
    pooled(&rt, jam, store.insert(4, value(4, 10))).unwrap(); // 3 has no copy
    assert_eq!(store.stats().respills, 0);
    let jam = Jam::new(&rt);
    inline(store.insert(5, value(5, 10))).unwrap(); // 1 leaves by respill
    assert_eq!(store.stats().respills, 1);
    assert_eq!(store.location(&1), Some(Location::File));
    // Too large for the shard's share of memory: straight to disk.
    let big = common::store(&dir.path().join("big"), 8, 2).into_async();
    pooled(&rt, jam, big.insert("big".to_string(), value(6, 5))).unwrap_or_else(|e| {
        panic!("{e}");
    });
    assert_eq!(big.location("big"), Some(Location::File));
    // Over a size limit: refused inline.
    let err = inline(store.insert(6, value(6, 21))).unwrap_err();
    assert!(
        matches!(err, spillstore::Error::ObjectTooLarge { .. }),
        "{err}"
    );
}

/// With copies written ahead by the spiller (here all of memory), an insert
/// that needs room evicts without a write, so it completes inline: the
/// point of cleaning ahead for an async caller.
#[test]
fn cleaned_values_are_evicted_inline() {
    let dir = tempfile::tempdir().unwrap();
    let rt = one_blocking_thread();
    let _runtime = rt.enter();
    let store = SpillStore::builder()
        .max_size(40)
        .clean_ahead(40)
        .dump_dir(dir.path())
        .shards(1)
        .build()
        .unwrap()
        .into_async();
    for key in 1..=4u32 {
        // Loading only: an insert that meets the lock held by the spiller's
        // walk goes to the pool, so these may.
        rt.block_on(store.insert(key, value(key.into(), 10)))
            .unwrap();
    }
    store.store().quiesce(); // the spiller's work, done now
    assert_eq!(store.stats().cleaned, 4);
    let jam = Jam::new(&rt);
    for key in 5..=8u32 {
        inline(store.insert(key, value(key.into(), 10))).unwrap();
        // Each insert asks the spiller to clean; a run it started would hold
        // the shard's read lock, and the next insert, finding the lock
        // taken, would go to the pool (by design). Its run ends here.
        store.store().quiesce();
    }
    let stats = store.stats();
    assert_eq!((stats.spills, stats.respills), (0, 4), "{stats:?}");
    for key in 1..=4 {
        assert_eq!(store.location(&key), Some(Location::File));
    }
    jam.end(&rt);
    for key in 1..=8u32 {
        let got = rt.block_on(store.get(&key)).unwrap().unwrap();
        assert_eq!(got, value(key.into(), 10));
    }
}

/// The inline attempt respills what it can, gives the insert back at the
/// first victim that needs a write, and the blocking insert goes on from
/// there: the same victims, in the same order, as the synchronous insert.
#[test]
fn a_given_back_insert_evicts_in_the_synchronous_order() {
    for exact_lru in [false, true] {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let rt = one_blocking_thread();
        let _runtime = rt.enter();
        let sync = one_shard(dirs[0].path(), 20, exact_lru);
        let store = one_shard(dirs[1].path(), 20, exact_lru).into_async();
        // Leaves 1 (with a disk copy) at the tail, then 4 (without).
        for (key, get) in [(1, false), (2, false), (3, false), (1, true), (4, false)] {
            if get {
                sync.get(&key).unwrap();
                rt.block_on(store.get(&key)).unwrap();
            } else {
                sync.insert(key, value(key.into(), 10)).unwrap();
                rt.block_on(store.insert(key, value(key.into(), 10)))
                    .unwrap();
            }
        }
        assert_eq!(store.location(&1), Some(Location::Memory));
        let jam = Jam::new(&rt);
        let mut insert = pin!(store.insert(5, value(5, 20)));
        assert!(poll_once(insert.as_mut()).is_pending(), "4 needs a write");
        // Given back after respilling 1, which the blocking insert then
        // does not see again; 4 is still in memory.
        assert_eq!(store.location(&1), Some(Location::File));
        assert_eq!(store.location(&4), Some(Location::Memory));
        assert_eq!(store.stats().respills, 1);
        jam.end(&rt);
        rt.block_on(insert).unwrap();
        sync.insert(5, value(5, 20)).unwrap();
        assert_same(&sync, store.store(), 0..6);
        assert_eq!(store.location(&4), Some(Location::File));
    }
}

/// Every key's location and the activity counters agree.
fn assert_same(sync: &SpillStore<u32>, other: &SpillStore<u32>, keys: std::ops::Range<u32>) {
    for key in keys {
        assert_eq!(sync.location(&key), other.location(&key), "key {key}");
    }
    let counters = |s: Stats| {
        [
            s.hits,
            s.misses,
            s.reloads,
            s.spills,
            s.respills,
            s.memory_bytes,
            s.disk_bytes,
        ]
    };
    assert_eq!(counters(sync.stats()), counters(other.stats()));
    other.validate().unwrap();
}

/// [`one_shard`] with a 20-byte budget, holding keys 1 to 4 (10 bytes
/// each): 1 and 2 spilled, 3 and 4 in memory without copies.
fn keys_1_to_4(dir: &std::path::Path, rt: &Runtime) -> spillstore::AsyncSpillStore<u32> {
    let store = one_shard(dir, 20, false).into_async();
    for key in 1..=4 {
        rt.block_on(store.insert(key, value(key.into(), 10)))
            .unwrap();
    }
    store
}

/// Removes run inline, whatever the value holds: a disk record (the value
/// on disk, or a resident value's copy) goes to the store's background
/// thread, which drops it and so deletes the emptied file.
#[test]
fn removals_are_inline_and_records_go_to_the_background_thread() {
    let dir = tempfile::tempdir().unwrap();
    let rt = one_blocking_thread();
    let _runtime = rt.enter();
    let store = keys_1_to_4(dir.path(), &rt);
    rt.block_on(store.get(&1)).unwrap(); // resident again, with a copy; 3 spills
    let jam = Jam::new(&rt);
    assert!(inline(store.remove(&4)).unwrap(), "in memory, no copy");
    assert!(!inline(store.remove(&9)).unwrap(), "absent");
    assert!(inline(store.remove(&2)).unwrap(), "on disk");
    assert!(inline(store.remove(&1)).unwrap(), "resident with a copy");
    assert_eq!(store.location(&3), Some(Location::File));
    assert!(inline(store.remove(&3)).unwrap());
    jam.end(&rt);
    assert!(store.store().is_empty());
    store.store().quiesce();
    let stats = store.stats();
    assert_eq!((stats.spill_files, stats.spill_live_bytes), (0, 0));
    assert_eq!(common::data_files(dir.path()), Vec::<String>::new());
}

/// Replacing a value that has a disk record needs no write: inline, with
/// the record handed to the background thread; `clear` afterwards leaves
/// no file behind, whether or not that thread has dropped it yet.
#[test]
fn replacing_a_spilled_value_is_inline() {
    let dir = tempfile::tempdir().unwrap();
    let rt = one_blocking_thread();
    let _runtime = rt.enter();
    let store = keys_1_to_4(dir.path(), &rt);
    assert_eq!(store.location(&1), Some(Location::File));
    let jam = Jam::new(&rt);
    // Memory holds 3 and 4, without copies: removing 4 leaves room for 1's
    // new value, so only 1's old record is let go of.
    assert!(inline(store.remove(&4)).unwrap());
    inline(store.insert(1, value(11, 10))).unwrap();
    assert_eq!(store.location(&1), Some(Location::Memory));
    jam.end(&rt);
    assert_eq!(rt.block_on(store.get(&1)).unwrap().unwrap(), value(11, 10));
    store.store().clear().unwrap();
    assert_eq!(common::data_files(dir.path()), Vec::<String>::new());
}

/// Counters count each call once, whichever thread served it.
#[test]
fn stats_count_every_call_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let store = one_shard(dir.path(), 100, false).into_async();
    rt.block_on(async {
        for key in 0..20 {
            store.insert(key, value(key.into(), 10)).await.unwrap();
        }
        // 10..20 in memory, 0..10 on disk.
        for key in 10..20 {
            store.get(&key).await.unwrap().unwrap();
        }
        for key in 100..103 {
            assert!(store.get(&key).await.unwrap().is_none());
        }
        store.get(&0).await.unwrap().unwrap();
    });
    let stats = store.stats();
    assert_eq!((stats.hits, stats.misses, stats.reloads), (10, 3, 1));
    assert_eq!((stats.spills, stats.respills), (11, 0));
    assert_eq!((stats.memory_bytes, stats.disk_bytes), (100, 100));
    assert_eq!(stats.reloaded_bytes, 10);
}

/// A value for `key` at `version`: its first 8 bytes say which, the rest
/// is derived from both, so any mix-up or torn read shows.
fn versioned(key: u32, version: u32, len: usize) -> Vec<u8> {
    let tag = (u64::from(key) << 32) | u64::from(version);
    let mut bytes = tag.to_le_bytes().to_vec();
    bytes.extend(value(tag, len - 8));
    bytes
}

/// Checks every byte of a value read for `key`; returns its version.
fn check(key: u32, bytes: &[u8]) -> u32 {
    let tag = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!((tag >> 32) as u32, key, "a value of another key");
    let version = tag as u32;
    assert_eq!(
        bytes,
        versioned(key, version, bytes.len()),
        "key {key} torn"
    );
    version
}

const KEYS: u32 = 128;
const TASKS: u32 = 16;

/// The length of `key` at `version`; some keys' values exceed a shard's
/// share of memory and live on disk only.
fn len_of(key: u32, version: u32) -> usize {
    let spread = if key.is_multiple_of(32) { 10_000 } else { 2048 };
    8 + (key as usize * 131 + version as usize * 17) % spread
}

/// One task's share of the workload: it owns the keys `k % TASKS == task`
/// and knows their values exactly; the other keys' values it reads must be
/// intact values of theirs.
async fn worker(store: spillstore::AsyncSpillStore<u32>, task: u32) -> Vec<(u32, Option<u32>)> {
    let mut owned: Vec<(u32, Option<u32>)> = (task..KEYS)
        .step_by(TASKS as usize)
        .map(|k| (k, Some(0)))
        .collect();
    let mut rng = u64::from(task) * 0x9E37_79B9 + 1;
    for _ in 0..400 {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let (pick, roll) = ((rng >> 33) as u32, (rng >> 20) as u32 % 100);
        let key = pick % KEYS;
        if key % TASKS != task || roll >= 35 {
            let got = store.get(&key).await.unwrap();
            let version = got.as_deref().map(|bytes| check(key, bytes));
            if key % TASKS == task {
                assert_eq!(version, owned[(key / TASKS) as usize].1, "own key {key}");
            }
            continue;
        }
        let slot = &mut owned[(key / TASKS) as usize];
        if roll < 5 {
            assert_eq!(store.remove(&key).await.unwrap(), slot.1.is_some());
            slot.1 = None;
        } else {
            let version = slot.1.map_or(0, |v| v + 1);
            store
                .insert(key, versioned(key, version, len_of(key, version)))
                .await
                .unwrap();
            slot.1 = Some(version);
        }
    }
    owned
}

#[test]
fn many_tasks_on_a_multi_thread_runtime_read_back_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    let store = SpillStore::<u32>::builder()
        .max_size(32 << 10)
        .dump_dir(dir.path())
        .shards(4)
        .build()
        .unwrap()
        .into_async();
    let finals = rt.block_on(async {
        for key in 0..KEYS {
            store
                .insert(key, versioned(key, 0, len_of(key, 0)))
                .await
                .unwrap();
        }
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| tokio::spawn(worker(store.clone(), t)))
            .collect();
        let mut finals = Vec::new();
        for task in tasks {
            finals.extend(task.await.unwrap());
        }
        finals
    });
    for (key, version) in finals {
        let got = rt.block_on(store.get(&key)).unwrap();
        assert_eq!(got.as_deref().map(|b| check(key, b)), version, "key {key}");
    }
    let stats = store.stats();
    assert!(
        stats.reloads > 0 && stats.spills + stats.cleaned > 0 && stats.hits > 0,
        "{stats:?}"
    );
    store.store().validate().unwrap();
}

/// Random operations on a one-shard store, through the facade and through
/// the synchronous API: every key's location and every counter agree after
/// every step, for both recency policies.
#[test]
fn the_facade_evicts_exactly_like_the_synchronous_api() {
    for exact_lru in [false, true] {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let rt = one_blocking_thread();
        let sync = one_shard(dirs[0].path(), 100, exact_lru);
        let store = one_shard(dirs[1].path(), 100, exact_lru).into_async();
        let mut rng = 0x5eed_u64 + u64::from(exact_lru);
        for step in 0..3000 {
            rng = rng
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let (key, roll, len) = (
                (rng >> 60) as u32,
                (rng >> 40) as u32 % 10,
                (rng >> 20) as usize % 40,
            );
            match roll {
                0..=3 => {
                    let tag = u64::from(key) << 32 | step;
                    let (a, b) = (
                        sync.insert(key, value(tag, len)),
                        rt.block_on(store.insert(key, value(tag, len))),
                    );
                    assert_eq!(a.is_ok(), b.is_ok(), "step {step}");
                }
                4..=8 => assert_eq!(
                    sync.get(&key).unwrap(),
                    rt.block_on(store.get(&key)).unwrap()
                ),
                _ => assert_eq!(
                    sync.remove(&key).unwrap(),
                    rt.block_on(store.remove(&key)).unwrap()
                ),
            }
            assert_same(&sync, store.store(), 0..16);
        }
        assert!(store.stats().respills > 0, "the walk met disk copies");
    }
}

/// The handle and its futures cross threads: spawnable on any runtime.
#[test]
fn handles_and_futures_are_send() {
    fn send<T: Send + 'static>(_: &T) {}
    fn shared<T: Send + Sync + Clone>(_: &T) {}
    let store = SpillStore::new().into_async();
    shared(&store);
    let handle = store.clone();
    let future = async move {
        handle.insert("k".to_string(), "v").await.unwrap();
        handle.get("k").await.unwrap();
        handle.remove("k").await.unwrap()
    };
    send(&future);
    assert!(inline(future));
}
