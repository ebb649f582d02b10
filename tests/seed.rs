//! ProxyStore's `EndpointStorage` behaviour, kept, and its bugs, fixed.

mod common;

use common::{data_files, store, value};
use spillstore::{Error, LimitKind, Location, SpillStore};

fn key(i: usize) -> String {
    i.to_string()
}

/// A one-shard store of `max_size` bytes with the seed's exact LRU order.
fn exact_store(parent: &std::path::Path, max_size: u64) -> SpillStore {
    SpillStore::builder()
        .max_size(max_size)
        .dump_dir(parent.join("dump"))
        .shards(1)
        .exact_lru(true)
        .build()
        .expect("build store")
}

#[test]
fn dict_like_api_without_limits() {
    let s = SpillStore::new();
    assert!(s.is_empty());
    s.insert("a".into(), b"1".to_vec()).unwrap();
    s.insert("b".into(), "22").unwrap();
    assert_eq!(s.len(), 2);
    assert!(s.contains_key("a"));
    assert_eq!(s.get("b").unwrap().as_deref(), Some(&b"22"[..]));
    assert_eq!(s.get("c").unwrap(), None);
    assert!(s.remove("a").unwrap());
    assert!(!s.remove("a").unwrap());
    assert!(!s.contains_key("a"));
    let mut keys = s.keys();
    keys.sort();
    assert_eq!(keys, ["b"]);
    assert_eq!(s.location("b"), Some(Location::Memory));
    s.clear().unwrap();
    assert!(s.is_empty());
    assert_eq!(s.stats().memory_bytes, 0);
    s.validate().unwrap();
}

#[test]
fn max_size_and_dump_dir_go_together() {
    let dir = tempfile::tempdir().unwrap();
    let only_size = SpillStore::<String>::builder().max_size(10).build();
    assert!(matches!(only_size, Err(Error::InvalidConfig(_))));
    let only_dir = SpillStore::<String>::builder().dump_dir(dir.path()).build();
    assert!(matches!(only_dir, Err(Error::InvalidConfig(_))));
    let message = only_dir.unwrap_err().to_string();
    assert!(
        message.contains("both of max_size and dump_dir"),
        "{message}"
    );
}

#[test]
fn zero_sizes_and_shards_are_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let zero = SpillStore::<String>::builder()
        .max_size(0)
        .dump_dir(dir.path())
        .build();
    assert!(matches!(zero, Err(Error::InvalidConfig(_))));
    let no_shards = SpillStore::<String>::builder().shards(0).build();
    assert!(matches!(no_shards, Err(Error::InvalidConfig(_))));
    let too_many = SpillStore::<String>::builder().shards(usize::MAX).build();
    assert!(matches!(too_many, Err(Error::InvalidConfig(_))));
}

#[test]
fn oversized_objects_are_refused_with_the_limit_named() {
    let dir = tempfile::tempdir().unwrap();
    let s: SpillStore = SpillStore::builder()
        .max_size(100)
        .max_object_size(50)
        .dump_dir(dir.path())
        .build()
        .unwrap();
    match s.insert("k".into(), vec![0u8; 51]) {
        Err(
            e @ Error::ObjectTooLarge {
                size: 51,
                limit: 50,
                kind: LimitKind::Object,
            },
        ) => {
            assert!(e.to_string().contains("object limit"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let s: SpillStore = SpillStore::builder()
        .max_size(100)
        .dump_dir(dir.path().join("b"))
        .build()
        .unwrap();
    match s.insert("k".into(), vec![0u8; 101]) {
        Err(
            e @ Error::ObjectTooLarge {
                size: 101,
                limit: 100,
                kind: LimitKind::Memory,
            },
        ) => {
            assert!(e.to_string().contains("memory limit"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(s.is_empty());
    s.insert("k".into(), vec![0u8; 100]).unwrap();
    assert_eq!(s.get("k").unwrap().unwrap().len(), 100);
}

/// The seed's own test: max_size 100, twenty 10-byte blobs. It only inserts
/// and reads spilled values back, so both policies give the seed's order.
#[test]
fn seed_lru_sequence_with_one_shard_exact_lru() {
    let dir = tempfile::tempdir().unwrap();
    seed_lru_sequence(&exact_store(dir.path(), 100));
}

/// The same sequence with the default approximate recency (CLOCK).
#[test]
fn seed_lru_sequence_with_one_shard_default_policy() {
    let dir = tempfile::tempdir().unwrap();
    seed_lru_sequence(&store(dir.path(), 100, 1));
}

fn seed_lru_sequence(s: &SpillStore) {
    for i in 0..20 {
        s.insert(key(i), value(i as u64, 10)).unwrap();
        s.validate().unwrap();
    }
    for i in 0..10 {
        assert_eq!(s.location(&key(i)), Some(Location::File), "key {i}");
    }
    for i in 10..20 {
        assert_eq!(s.location(&key(i)), Some(Location::Memory), "key {i}");
    }
    for i in 0..10 {
        assert_eq!(s.get(&key(i)).unwrap().unwrap(), value(i as u64, 10));
        s.validate().unwrap();
    }
    for i in 0..10 {
        assert_eq!(s.location(&key(i)), Some(Location::Memory), "key {i}");
    }
    for i in 10..20 {
        assert_eq!(s.location(&key(i)), Some(Location::File), "key {i}");
    }
    for i in 5..15 {
        assert!(s.remove(&key(i)).unwrap());
    }
    for i in 15..20 {
        assert_eq!(s.location(&key(i)), Some(Location::File), "key {i}");
    }
    assert_eq!(s.len(), 10);
    let stats = s.stats();
    assert_eq!(stats.memory_bytes, 50);
    assert_eq!(stats.disk_bytes, 50);
    for i in (0..5).chain(15..20) {
        assert_eq!(s.get(&key(i)).unwrap().unwrap(), value(i as u64, 10));
    }
    s.validate().unwrap();
}

/// Memory hits reorder the LRU list, so the least recently *used* spills.
#[test]
fn a_hit_protects_a_value_from_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let s = exact_store(dir.path(), 30);
    for i in 0..3 {
        s.insert(key(i), value(i as u64, 10)).unwrap();
    }
    s.get(&key(0)).unwrap();
    s.insert(key(3), value(3, 10)).unwrap();
    assert_eq!(s.location(&key(0)), Some(Location::Memory));
    assert_eq!(s.location(&key(1)), Some(Location::File));
    // contains_key and location are peeks: they do not count as use.
    assert!(s.contains_key(&key(2)));
    s.insert(key(4), value(4, 10)).unwrap();
    assert_eq!(s.location(&key(2)), Some(Location::File));
}

/// Seed bug: replacing a key double-counted memory and leaked the old file.
#[test]
fn replacing_frees_old_memory_and_file() {
    let dir = tempfile::tempdir().unwrap();
    // Exact LRU: after the hit below, ten inserts must push "k" out. No
    // copies written ahead: the dump dir must end up empty with "k" resident.
    let s = SpillStore::builder()
        .max_size(100)
        .dump_dir(dir.path().join("dump"))
        .shards(1)
        .exact_lru(true)
        .clean_ahead(0)
        .build()
        .unwrap();
    s.insert("k".into(), value(1, 40)).unwrap();
    s.insert("k".into(), value(2, 40)).unwrap();
    assert_eq!(s.stats().memory_bytes, 40);
    assert_eq!(s.get("k").unwrap().unwrap(), value(2, 40));

    // Push "k" to disk, then replace it: its spill file must go.
    for i in 0..10 {
        s.insert(key(i), value(10 + i as u64, 10)).unwrap();
    }
    assert_eq!(s.location("k"), Some(Location::File));
    let dump = dir.path().join("dump");
    assert!(!data_files(&dump).is_empty());
    s.insert("k".into(), value(3, 5)).unwrap();
    assert_eq!(s.get("k").unwrap().unwrap(), value(3, 5));
    for i in 0..10 {
        s.remove(&key(i)).unwrap();
    }
    s.quiesce(); // a background compaction pass may still hold files
    assert_eq!(
        data_files(&dump),
        Vec::<String>::new(),
        "old spill data leaked"
    );
    let st = s.stats();
    assert_eq!((st.memory_bytes, st.disk_bytes, st.entries), (5, 0, 1));
    s.validate().unwrap();
}

/// Seed bug: clear forgot to reset the size and delete files.
#[test]
fn clear_resets_accounting_and_deletes_spilled_data() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 100, 4);
    for i in 0..50 {
        s.insert(key(i), value(i as u64, 10)).unwrap();
    }
    assert!(s.stats().disk_bytes > 0);
    s.clear().unwrap();
    let st = s.stats();
    assert_eq!((st.entries, st.memory_bytes, st.disk_bytes), (0, 0, 0));
    assert_eq!((st.spill_files, st.spill_file_bytes), (0, 0));
    assert_eq!(data_files(&dir.path().join("dump")), Vec::<String>::new());
    // The store works as new afterwards.
    for i in 0..50 {
        s.insert(key(i), value(i as u64, 10)).unwrap();
    }
    for i in 0..50 {
        assert_eq!(s.get(&key(i)).unwrap().unwrap(), value(i as u64, 10));
    }
    s.validate().unwrap();
}

/// Seed bug: the key was the file name, so `../x` escaped the dump dir.
#[test]
fn hostile_keys_stay_inside_the_dump_dir() {
    let parent = tempfile::tempdir().unwrap();
    let s = store(parent.path(), 10, 1);
    let hostile = [
        "../escape",
        "/etc/passwd",
        "a/b/c",
        "..",
        ".",
        "",
        "nul\0byte",
        ".spillstore.lock",
        "spill-00000000.seg",
    ];
    for (i, k) in hostile.iter().enumerate() {
        s.insert(k.to_string(), value(i as u64, 8)).unwrap();
    }
    for (i, k) in hostile.iter().enumerate() {
        assert_eq!(s.get(*k).unwrap().unwrap(), value(i as u64, 8), "{k:?}");
    }
    let mut outside: Vec<_> = std::fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    outside.sort();
    assert_eq!(outside, ["dump"], "nothing written beside the dump dir");
    assert!(!std::path::Path::new("/etc/passwd.seg").exists());
}

#[test]
fn remove_never_reloads_and_frees_disk() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 20, 1);
    for i in 0..4 {
        s.insert(key(i), value(i as u64, 10)).unwrap();
    }
    let before = s.stats();
    assert!(s.remove(&key(0)).unwrap());
    let after = s.stats();
    assert_eq!(after.reloads, before.reloads);
    assert_eq!(after.disk_bytes, before.disk_bytes - 10);
    assert_eq!(after.memory_bytes, before.memory_bytes);
}

#[test]
fn empty_values_are_values() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 10, 1);
    s.insert("empty".into(), Vec::new()).unwrap();
    for i in 0..5 {
        s.insert(key(i), value(i as u64, 5)).unwrap();
    }
    assert_eq!(s.get("empty").unwrap().as_deref(), Some(&[][..]));
    s.validate().unwrap();
}

/// Where the two policies differ. Both evict a value that was not used
/// since it went in before any that was; but CLOCK keeps one bit per value,
/// not the order of the hits: values hit since the hand last passed them go
/// back to the head in the order the hand meets them (tail first).
#[test]
fn exact_lru_and_clock_differ_in_the_order_of_hits() {
    let dir = tempfile::tempdir().unwrap();
    let exact = exact_store(&dir.path().join("exact"), 30);
    let clock = store(&dir.path().join("clock"), 30, 1);
    for s in [&exact, &clock] {
        for i in 0..3 {
            s.insert(key(i), value(i as u64, 10)).unwrap();
        }
        s.get(&key(1)).unwrap();
        s.get(&key(0)).unwrap();
        // 2 was never hit: both spill it.
        s.insert(key(3), value(3, 10)).unwrap();
        assert_eq!(s.location(&key(2)), Some(Location::File));
        s.insert(key(4), value(4, 10)).unwrap();
        s.validate().unwrap();
    }
    // Exact LRU: 1 was used before 0, so 1 goes.
    assert_eq!(exact.location(&key(1)), Some(Location::File));
    assert_eq!(exact.location(&key(0)), Some(Location::Memory));
    // CLOCK: the hand met 0 (nearer the tail) first and moved it to the
    // head, then 1 in front of it: now 0 is the older, and it goes.
    assert_eq!(clock.location(&key(0)), Some(Location::File));
    assert_eq!(clock.location(&key(1)), Some(Location::Memory));
}
