//! Model-based property tests: random operation sequences against a plain
//! `HashMap`. Because the store never drops data the oracle is exact: every
//! read must equal the model. With one shard the LRU order is modelled too,
//! so every key's location must match.

mod common;

use std::collections::HashMap;

use proptest::prelude::*;
use spillstore::{Error, Location, SpillStore};

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, usize, u8),
    Get(u8),
    Remove(u8),
    Contains(u8),
    Clear,
}

fn op(max_len: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..12u8, 0..=max_len, any::<u8>()).prop_map(|(k, l, t)| Op::Insert(k, l, t)),
        4 => (0..12u8).prop_map(Op::Get),
        1 => (0..12u8).prop_map(Op::Remove),
        1 => (0..12u8).prop_map(Op::Contains),
        1 => Just(Op::Clear),
    ]
}

/// Exact LRU model of a one-shard store with budget `budget`.
#[derive(Default)]
struct Lru {
    /// Resident keys, most recently used first.
    resident: Vec<u8>,
}

impl Lru {
    fn memory(&self, values: &HashMap<u8, Vec<u8>>) -> usize {
        self.resident.iter().map(|k| values[k].len()).sum()
    }

    /// Evicts from the tail, never `keep`, until `len` more bytes fit.
    fn make_room(
        &mut self,
        values: &HashMap<u8, Vec<u8>>,
        budget: usize,
        len: usize,
        keep: Option<u8>,
    ) {
        let credit = keep
            .filter(|k| self.resident.contains(k))
            .map_or(0, |k| values[&k].len());
        let mut memory = self.memory(values) - credit;
        let mut i = self.resident.len();
        while memory + len > budget && i > 0 {
            i -= 1;
            let k = self.resident[i];
            if Some(k) == keep {
                continue;
            }
            memory -= values[&k].len();
            self.resident.remove(i);
        }
    }

    fn make_most_recent(&mut self, k: u8) {
        self.resident.retain(|&x| x != k);
        self.resident.insert(0, k);
    }
}

fn run(ops: Vec<Op>, max_size: u64, shards: usize) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let store: SpillStore<u8> = SpillStore::builder()
        .max_size(max_size)
        .dump_dir(dir.path().join("dump"))
        .shards(shards)
        .segment_size(4096)
        .build()
        .unwrap();
    let exact_lru = shards == 1;
    let budget = max_size as usize;
    let mut model: HashMap<u8, Vec<u8>> = HashMap::new();
    let mut lru = Lru::default();
    for op in ops {
        match op {
            Op::Insert(k, len, tag) => {
                let v = common::value(u64::from(tag) << 8 | u64::from(k), len);
                let result = store.insert(k, v.clone());
                if len as u64 > max_size {
                    prop_assert!(
                        matches!(result, Err(Error::ObjectTooLarge { .. })),
                        "{:?}",
                        result
                    );
                } else {
                    prop_assert!(result.is_ok(), "{:?}", result);
                    if exact_lru {
                        lru.make_room(&model, budget, len, Some(k));
                        model.insert(k, v);
                        lru.make_most_recent(k);
                    } else {
                        model.insert(k, v);
                    }
                }
            }
            Op::Get(k) => {
                let got = store.get(&k).unwrap();
                let expected = model.get(&k).map(|v| &v[..]);
                prop_assert_eq!(got.as_deref(), expected);
                if exact_lru && model.contains_key(&k) {
                    if !lru.resident.contains(&k) {
                        let len = model[&k].len();
                        lru.make_room(&model, budget, len, None);
                    }
                    lru.make_most_recent(k);
                }
            }
            Op::Remove(k) => {
                prop_assert_eq!(store.remove(&k).unwrap(), model.remove(&k).is_some());
                lru.resident.retain(|&x| x != k);
            }
            Op::Contains(k) => {
                prop_assert_eq!(store.contains_key(&k), model.contains_key(&k));
            }
            Op::Clear => {
                store.clear().unwrap();
                model.clear();
                lru.resident.clear();
            }
        }
        if let Err(e) = store.validate() {
            return Err(TestCaseError::fail(e));
        }
        let stats = store.stats();
        prop_assert_eq!(store.len(), model.len());
        prop_assert_eq!(stats.entries, model.len());
        prop_assert!(stats.memory_bytes <= max_size);
        let total: usize = model.values().map(Vec::len).sum();
        prop_assert_eq!(stats.memory_bytes + stats.disk_bytes, total as u64);
        for k in 0..12u8 {
            let location = store.location(&k);
            prop_assert_eq!(location.is_some(), model.contains_key(&k));
            if exact_lru && location.is_some() {
                let expected = if lru.resident.contains(&k) {
                    Location::Memory
                } else {
                    Location::File
                };
                prop_assert_eq!(location, Some(expected), "key {}", k);
            }
        }
    }
    // Everything still reads back exactly, then removal empties the dump dir.
    for (k, v) in &model {
        let got = store.get(k).unwrap();
        prop_assert_eq!(got.as_deref(), Some(&v[..]));
    }
    for k in model.keys() {
        prop_assert!(store.remove(k).unwrap());
    }
    prop_assert_eq!(
        common::data_files(&dir.path().join("dump")),
        Vec::<String>::new()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn one_shard_matches_the_model_and_exact_lru(
        max_size in 1u64..200,
        ops in proptest::collection::vec(op(240), 1..80),
    ) {
        run(ops, max_size, 1)?;
    }

    #[test]
    fn several_shards_match_the_model(
        max_size in 1u64..400,
        shards in prop_oneof![Just(2usize), Just(4), Just(8)],
        ops in proptest::collection::vec(op(300), 1..80),
    ) {
        run(ops, max_size, shards)?;
    }
}

// ---------------------------------------------------------------------------
// With a disk budget (`max_disk_size`): an insert either succeeds or is
// refused with `DiskLimit` and changes nothing; the spill files never occupy
// more than the budget (the store's count, and `du` of the files, which is
// at most the store's count); no value is lost or altered.

/// Runs `ops` on a store with `max_size` bytes of memory and `max_disk`
/// bytes of disk, against a `HashMap`.
fn run_with_disk_budget(
    ops: Vec<Op>,
    max_size: u64,
    max_disk: u64,
    shards: usize,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    let store: SpillStore<u8> = SpillStore::builder()
        .max_size(max_size)
        .max_disk_size(max_disk)
        .dump_dir(&dump)
        .shards(shards)
        .segment_size(4096)
        .build()
        .unwrap();
    let mut model: HashMap<u8, Vec<u8>> = HashMap::new();
    let mut refusals = 0;
    for op in ops {
        match op {
            Op::Insert(k, len, tag) => {
                let v = common::value(u64::from(tag) << 8 | u64::from(k), len);
                match store.insert(k, v.clone()) {
                    Ok(()) => {
                        prop_assert!(len as u64 <= max_size);
                        model.insert(k, v);
                    }
                    Err(Error::ObjectTooLarge { .. }) => prop_assert!(len as u64 > max_size),
                    Err(Error::DiskLimit {
                        needed,
                        available,
                        limit,
                    }) => {
                        prop_assert_eq!(limit, max_disk);
                        prop_assert!(needed > available, "{} <= {}", needed, available);
                        refusals += 1;
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("{e:?}"))),
                }
            }
            Op::Get(k) => {
                let got = store.get(&k).unwrap();
                prop_assert_eq!(got.as_deref(), model.get(&k).map(|v| &v[..]));
            }
            Op::Remove(k) => {
                prop_assert_eq!(store.remove(&k).unwrap(), model.remove(&k).is_some());
            }
            Op::Contains(k) => {
                prop_assert_eq!(store.contains_key(&k), model.contains_key(&k));
            }
            Op::Clear => {
                store.clear().unwrap();
                model.clear();
            }
        }
        if let Err(e) = store.validate() {
            return Err(TestCaseError::fail(e));
        }
        let stats = store.stats();
        let total: usize = model.values().map(Vec::len).sum();
        prop_assert_eq!(stats.memory_bytes + stats.disk_bytes, total as u64);
        prop_assert_eq!(stats.max_disk_size, Some(max_disk));
        prop_assert!(stats.spill_file_allocated_bytes <= max_disk, "{:?}", stats);
        let du = common::spill_du(&dump);
        prop_assert!(
            du <= stats.spill_file_allocated_bytes,
            "du {} {:?}",
            du,
            stats
        );
    }
    for (k, v) in &model {
        let got = store.get(k).unwrap();
        prop_assert_eq!(got.as_deref(), Some(&v[..]));
    }
    for k in model.keys() {
        prop_assert!(store.remove(k).unwrap());
    }
    let stats = store.stats();
    prop_assert_eq!(stats.spill_file_allocated_bytes, 0);
    prop_assert_eq!(common::data_files(&dump), Vec::<String>::new());
    let _ = refusals;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn a_disk_budget_never_loses_or_alters_values(
        max_size in 1u64..2000,
        max_disk in 1u64..40_000,
        shards in prop_oneof![Just(1usize), Just(2), Just(4)],
        ops in proptest::collection::vec(op(3000), 1..80),
    ) {
        run_with_disk_budget(ops, max_size, max_disk, shards)?;
    }
}
