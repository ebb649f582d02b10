//! Many threads on a tiny budget: every byte verified, nothing lost.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Barrier};

use spillstore::SpillStore;

/// Each thread owns a disjoint key range (so it can keep an exact model of
/// its keys) and also reads keys of other threads, which must hold one of
/// the values their owner ever wrote.
#[test]
fn stress_threads_on_a_tiny_budget_lose_nothing() {
    const THREADS: u64 = 8;
    const KEYS_PER_THREAD: u64 = 64;
    const OPS: u64 = 4_000;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<SpillStore<u64>> = Arc::new(
        SpillStore::builder()
            .max_size(16 * 1024)
            .dump_dir(dir.path().join("dump"))
            .segment_size(64 * 1024)
            .shards(4)
            .build()
            .unwrap(),
    );
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let len_of = |key: u64, version: u64| ((key * 31 + version * 17) % 700) as usize;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&store);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut model: HashMap<u64, u64> = HashMap::new(); // key -> version
                let mut rng = 0x9E37_79B9u64 ^ (t << 32);
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                barrier.wait();
                for op in 0..OPS {
                    let r = next();
                    let own = t * KEYS_PER_THREAD + r % KEYS_PER_THREAD;
                    match (r >> 20) % 10 {
                        0..=3 => {
                            let version = op + 1;
                            let v = common::value(own << 32 | version, len_of(own, version));
                            store.insert(own, v).unwrap();
                            model.insert(own, version);
                        }
                        4..=6 => {
                            let got = store.get(&own).unwrap();
                            let expected = model
                                .get(&own)
                                .map(|&ver| common::value(own << 32 | ver, len_of(own, ver)));
                            assert_eq!(got.as_deref(), expected.as_deref(), "key {own}");
                        }
                        7 => {
                            assert_eq!(store.remove(&own).unwrap(), model.remove(&own).is_some());
                        }
                        _ => {
                            // Someone else's key: any value must be one its owner wrote.
                            let other = r % (THREADS * KEYS_PER_THREAD);
                            if let Some(v) = store.get(&other).unwrap() {
                                let found = (1..=OPS).any(|ver| {
                                    v.len() == len_of(other, ver)
                                        && v[..] == common::value(other << 32 | ver, v.len())[..]
                                });
                                assert!(found, "key {other} holds bytes nobody wrote");
                            }
                        }
                    }
                }
                model
            })
        })
        .collect();
    let mut all = HashMap::new();
    for h in handles {
        all.extend(h.join().unwrap());
    }
    store.validate().unwrap();
    let stats = store.stats();
    let written = stats.spills + stats.cleaned;
    assert!(written > 0 && stats.reloads > 0, "{stats:?}");
    assert_eq!(store.len(), all.len());
    let mut total = 0u64;
    for (&key, &ver) in &all {
        let expected = common::value(key << 32 | ver, len_of(key, ver));
        total += expected.len() as u64;
        assert_eq!(store.get(&key).unwrap().as_deref(), Some(&expected[..]));
    }
    let stats = store.stats();
    assert_eq!(stats.memory_bytes + stats.disk_bytes, total);
    assert!(stats.memory_bytes <= 16 * 1024);
    for key in all.keys() {
        store.remove(key).unwrap();
    }
    store.quiesce(); // a background compaction pass may still hold files
    assert_eq!(
        common::data_files(&dir.path().join("dump")),
        Vec::<String>::new()
    );
}

/// Readers racing on the same spilled keys: all get the right bytes, the
/// budget holds at every sample.
#[test]
fn concurrent_reloads_of_the_same_keys_agree() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<SpillStore<u64>> = Arc::new(
        SpillStore::builder()
            .max_size(4096)
            .dump_dir(dir.path().join("dump"))
            .shards(1)
            .build()
            .unwrap(),
    );
    for k in 0..64u64 {
        store.insert(k, common::value(k, 1000)).unwrap();
    }
    let barrier = Arc::new(Barrier::new(9));
    let readers: Vec<_> = (0..8)
        .map(|t| {
            let store = Arc::clone(&store);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                for round in 0..200u64 {
                    let k = (round * 7 + t) % 64;
                    assert_eq!(store.get(&k).unwrap().unwrap(), common::value(k, 1000));
                }
            })
        })
        .collect();
    barrier.wait();
    for _ in 0..500 {
        assert!(store.stats().memory_bytes <= 4096);
    }
    for r in readers {
        r.join().unwrap();
    }
    store.validate().unwrap();
}
