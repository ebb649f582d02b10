//! Model-based property tests: random operation sequences against a plain
//! `HashMap`. Because the store never drops data the oracle is exact: every
//! read must equal the model. With one shard the eviction order is modelled
//! too, for both policies (exact LRU, and the default CLOCK with its second
//! chances), so every key's location must match after every step.

mod common;

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use spillstore::{Error, Location, SpillStore};

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, usize, u8),
    Get(u8),
    Remove(u8),
    Contains(u8),
    Clear,
    /// A forced compaction pass: moves records, changes no value or location.
    Compact,
    /// `quiesce`: the spiller's work done now, its windows walked in full.
    Quiesce,
}

fn op(max_len: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..12u8, 0..=max_len, any::<u8>()).prop_map(|(k, l, t)| Op::Insert(k, l, t)),
        4 => (0..12u8).prop_map(Op::Get),
        1 => (0..12u8).prop_map(Op::Remove),
        1 => (0..12u8).prop_map(Op::Contains),
        1 => Just(Op::Clear),
        1 => Just(Op::Compact),
        1 => Just(Op::Quiesce),
    ]
}

/// Model of a one-shard store's resident set and eviction order: exact LRU,
/// or CLOCK (`Builder::exact_lru(false)`).
#[derive(Default)]
struct Lru {
    /// Resident keys, head (most recently inserted, promoted or, with exact
    /// LRU, used) first.
    resident: Vec<u8>,
    /// CLOCK's reference marks: keys hit since they last entered the head.
    marked: HashSet<u8>,
    exact: bool,
    /// Values evicted so far: each is a spill or a respill in the store.
    evictions: u64,
}

impl Lru {
    fn memory(&self, values: &HashMap<u8, Vec<u8>>) -> usize {
        self.resident.iter().map(|k| values[k].len()).sum()
    }

    /// Evicts from the tail, never `keep`, until `len` more bytes fit. With
    /// CLOCK, a marked key loses its mark and moves to the head instead, and
    /// the hand wraps around to the tail once when it passes the head.
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
        let mut cursor = self.resident.last().copied();
        let mut wrapped = false;
        while memory + len > budget {
            let Some(k) = cursor else { break };
            let pos = self.resident.iter().position(|&x| x == k).unwrap();
            cursor = pos.checked_sub(1).map(|p| self.resident[p]);
            if Some(k) == keep {
                continue;
            }
            if !self.exact && self.marked.remove(&k) {
                self.make_most_recent(k);
                if cursor.is_none() && !wrapped {
                    wrapped = true;
                    cursor = self.resident.last().copied();
                }
                continue;
            }
            memory -= values[&k].len();
            self.resident.remove(pos);
            self.evictions += 1;
        }
    }

    /// Puts `k` at the head, unmarked (an insert, a promotion, a second
    /// chance, or an exact-LRU hit).
    fn make_most_recent(&mut self, k: u8) {
        self.resident.retain(|&x| x != k);
        self.resident.insert(0, k);
        self.marked.remove(&k);
    }

    /// An insert of `k`, after `make_room`: at the head, except that with
    /// CLOCK a resident key keeps its place and is marked, like a hit.
    fn store(&mut self, k: u8) {
        if !self.exact && self.resident.contains(&k) {
            self.marked.insert(k);
        } else {
            self.make_most_recent(k);
        }
    }

    /// A memory hit on resident `k`.
    fn hit(&mut self, k: u8) {
        if self.exact {
            self.make_most_recent(k);
        } else {
            self.marked.insert(k);
        }
    }

    fn forget(&mut self, k: u8) {
        self.resident.retain(|&x| x != k);
        self.marked.remove(&k);
    }
}

/// Runs `ops` against the model. `clean_ahead` is the store's setting: the
/// background spiller writes copies at times the test does not control, and
/// nothing the model checks may depend on it, except that every eviction is
/// a spill or a respill.
fn run(
    ops: Vec<Op>,
    max_size: u64,
    shards: usize,
    exact: bool,
    clean_ahead: u64,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let store: SpillStore<u8> = SpillStore::builder()
        .max_size(max_size)
        .dump_dir(dir.path().join("dump"))
        .shards(shards)
        .segment_size(4096)
        .exact_lru(exact)
        .clean_ahead(clean_ahead)
        .build()
        .unwrap();
    // With one shard the order is modelled; with more, only the values.
    let ordered = shards == 1;
    let budget = max_size as usize;
    let mut model: HashMap<u8, Vec<u8>> = HashMap::new();
    let mut lru = Lru {
        exact,
        ..Lru::default()
    };
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
                    if ordered {
                        lru.make_room(&model, budget, len, Some(k));
                        model.insert(k, v);
                        lru.store(k);
                    } else {
                        model.insert(k, v);
                    }
                }
            }
            Op::Get(k) => {
                let got = store.get(&k).unwrap();
                let expected = model.get(&k).map(|v| &v[..]);
                prop_assert_eq!(got.as_deref(), expected);
                if ordered && model.contains_key(&k) {
                    if lru.resident.contains(&k) {
                        lru.hit(k);
                    } else {
                        let len = model[&k].len();
                        lru.make_room(&model, budget, len, None);
                        lru.make_most_recent(k);
                    }
                }
            }
            Op::Remove(k) => {
                prop_assert_eq!(store.remove(&k).unwrap(), model.remove(&k).is_some());
                lru.forget(k);
            }
            Op::Contains(k) => {
                prop_assert_eq!(store.contains_key(&k), model.contains_key(&k));
            }
            Op::Clear => {
                store.clear().unwrap();
                model.clear();
                lru.resident.clear();
                lru.marked.clear();
            }
            Op::Compact => store.compact(),
            Op::Quiesce => store.quiesce(),
        }
        if let Err(e) = store.validate() {
            return Err(TestCaseError::fail(e));
        }
        let stats = store.stats();
        if ordered {
            prop_assert_eq!(stats.spills + stats.respills, lru.evictions);
        }
        prop_assert_eq!(store.len(), model.len());
        prop_assert_eq!(stats.entries, model.len());
        prop_assert!(stats.memory_bytes <= max_size);
        let total: usize = model.values().map(Vec::len).sum();
        prop_assert_eq!(stats.memory_bytes + stats.disk_bytes, total as u64);
        for k in 0..12u8 {
            let location = store.location(&k);
            prop_assert_eq!(location.is_some(), model.contains_key(&k));
            if ordered && location.is_some() {
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
    store.quiesce(); // a background compaction pass may still hold files
    prop_assert_eq!(
        common::data_files(&dir.path().join("dump")),
        Vec::<String>::new()
    );
    Ok(())
}

/// Cleaning ahead off, a little of the budget, or all of it.
fn clean_ahead() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 1u64..300, Just(u64::MAX)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn one_shard_matches_the_model_and_exact_lru(
        max_size in 1u64..200,
        clean_ahead in clean_ahead(),
        ops in proptest::collection::vec(op(240), 1..80),
    ) {
        run(ops, max_size, 1, true, clean_ahead)?;
    }

    #[test]
    fn one_shard_matches_the_model_and_clock(
        max_size in 1u64..200,
        clean_ahead in clean_ahead(),
        ops in proptest::collection::vec(op(240), 1..80),
    ) {
        run(ops, max_size, 1, false, clean_ahead)?;
    }

    #[test]
    fn several_shards_match_the_model(
        max_size in 1u64..400,
        shards in prop_oneof![Just(2usize), Just(4), Just(8)],
        exact in any::<bool>(),
        clean_ahead in clean_ahead(),
        ops in proptest::collection::vec(op(300), 1..80),
    ) {
        run(ops, max_size, shards, exact, clean_ahead)?;
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
            Op::Compact => store.compact(),
            Op::Quiesce => store.quiesce(),
        }
        if let Err(e) = store.validate() {
            return Err(TestCaseError::fail(e));
        }
        // A background compaction pass may be writing: let it end, so the
        // files on disk are the ones the store counts.
        store.quiesce();
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
    store.quiesce(); // the spiller may hold a copy it is writing
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
