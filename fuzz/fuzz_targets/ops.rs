//! `ops`: an arbitrary sequence of operations on a store with a tiny memory
//! budget, against a `HashMap` model. The store never drops data, so the
//! oracle is exact: every read equals the model, and after every step the
//! counts, byte sums, locations, spill files and `validate()` agree with it.
//! `compact()` is one of the operations.
#![no_main]

mod common;

use std::collections::HashMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use spillstore::{Bytes, Error, LimitKind, Location, SpillStore};

use common::{spill_files, value};

/// Operations per execution, at most: keeps executions cheap.
const MAX_OPS: usize = 64;
/// Keys are `0..KEYS`, so replacements and collisions are frequent.
const KEYS: u16 = 24;
/// With CLOCK, values this large come back into memory on their second
/// read in a while (the library's rule for large values), not their first.
const SECOND_READ_MIN: u64 = 256 << 10;

#[derive(Arbitrary, Debug)]
enum Op {
    Insert { key: u16, len: u16 },
    Get { key: u16 },
    GetWithLocation { key: u16 },
    Remove { key: u16 },
    ContainsKey { key: u16 },
    Location { key: u16 },
    Clear,
    Stats,
    Keys,
    Compact,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Sizes 16 times larger (`max_size`, `segment_size`, `max_disk_size`):
    /// values of 16 KiB or more then spill to shared segments, page aligned
    /// and without a header.
    large: bool,
    /// Sizes 256 times larger instead (whatever `large` says), value
    /// lengths too: values of 256 KiB or more then come back into memory on
    /// their second read in a while, not their first, and are served from
    /// the mapping until then (with CLOCK).
    huge: bool,
    /// `1..=2048`, times the scale (16 if `large`, 256 if `huge`).
    max_size: u16,
    /// Exact LRU or the default CLOCK (values and accounting are checked
    /// the same way; `tests/model.rs` models both orders exactly).
    exact_lru: bool,
    /// `1..=8` (the store rounds up to a power of two).
    shards: u8,
    /// `4096..=65536`, times the scale.
    segment_size: u16,
    max_object_size: Option<u16>,
    /// `max_disk_size`: `1..=65536` bytes (times the scale), or none.
    max_disk_size: Option<u16>,
    /// `clean_ahead`: `0..=max_size` bytes (0: off), or the default. The
    /// spiller thread writes copies while the ops run, and `quiesce` (after
    /// every step) runs its pending work.
    clean_ahead: Option<u16>,
    ops: Vec<Op>,
}

struct Checker {
    store: SpillStore<u16>,
    dump: std::path::PathBuf,
    model: HashMap<u16, Vec<u8>>,
    max_size: u64,
    max_object_size: Option<u64>,
    /// Values up to this length are resident after an insert or a read
    /// (fit in every shard's share); longer than `never_resident` never are.
    always_resident: u64,
    never_resident: u64,
    exact_lru: bool,
    /// What a length drawn for an insert is multiplied by: 256 with `huge`
    /// sizes (so values reach the budget's), else 1.
    len_unit: u64,
    hits: u64,
    misses: u64,
    reloads: u64,
    /// The disk budget, if any (see the "disk budget" block below).
    max_disk_size: Option<u64>,
    /// Values returned by gets, held across later operations.
    held: Vec<(usize, Bytes, Vec<u8>)>,
}

impl Checker {
    fn expected_too_large(&self, len: u64) -> Option<(u64, LimitKind)> {
        if let Some(limit) = self.max_object_size.filter(|&l| len > l) {
            return Some((limit, LimitKind::Object));
        }
        (len > self.max_size).then_some((self.max_size, LimitKind::Memory))
    }

    fn insert(&mut self, step: usize, key: u16, len: u16) {
        // Mostly within the budget; with the top bit, up to three times it.
        let len = if len & 0x8000 == 0 {
            u64::from(len) * self.len_unit % (self.max_size + 1)
        } else {
            u64::from(len & 0x7fff) * self.len_unit % (3 * self.max_size + 2)
        };
        let v = value(u64::from(key), step as u64, len as usize);
        let result = self.store.insert(key, v.clone());
        match (self.expected_too_large(len), result) {
            (None, Ok(())) => {
                self.model.insert(key, v);
                let loc = self.store.location(&key);
                assert!(loc.is_some(), "step {step}: inserted key {key} is absent");
                if len <= self.always_resident {
                    assert_eq!(
                        loc,
                        Some(Location::Memory),
                        "step {step}: fresh {len}-byte value not resident"
                    );
                }
                if len > self.never_resident {
                    assert_eq!(
                        loc,
                        Some(Location::File),
                        "step {step}: oversized value resident"
                    );
                }
            }
            (
                Some((limit, kind)),
                Err(Error::ObjectTooLarge {
                    size,
                    limit: l,
                    kind: k,
                }),
            ) => {
                assert_eq!(
                    (size, l, k),
                    (len, limit, kind),
                    "step {step}: wrong ObjectTooLarge"
                );
            }
            (
                None,
                Err(Error::DiskLimit {
                    needed,
                    available,
                    limit,
                }),
            ) if self.max_disk_size.is_some() => {
                self.disk_limit_refused(step, key, needed, available, limit);
            }
            (expected, got) => {
                panic!("step {step}: insert of {len} bytes: expected too-large {expected:?}, got {got:?}")
            }
        }
    }

    fn get(&mut self, step: usize, key: u16, with_location: bool) {
        let before = self.store.location(&key);
        let expected = self.model.get(&key);
        assert_eq!(
            before.is_some(),
            expected.is_some(),
            "step {step}: location({key}) = {before:?}"
        );
        let got = if with_location {
            self.store.get_with_location(&key)
        } else {
            self.store
                .get(&key)
                .map(|v| v.map(|v| (v, before.unwrap_or(Location::Memory))))
        };
        let got = got.unwrap_or_else(|e| panic!("step {step}: get({key}) failed: {e}"));
        match (expected, got) {
            (None, None) => self.misses += 1,
            (Some(want), Some((bytes, from))) => {
                assert!(
                    bytes.as_ref() == want.as_slice(),
                    "step {step}: get({key}) returned wrong bytes"
                );
                hold(&mut self.held, step, &bytes, want);
                assert_eq!(
                    Some(from),
                    before,
                    "step {step}: get_with_location({key}) says {from:?}, location said {before:?}"
                );
                match from {
                    Location::Memory => self.hits += 1,
                    Location::File => self.reloads += 1,
                }
                let len = want.len() as u64;
                let after = self.store.location(&key);
                // Under a disk budget, bringing a value back may find no room
                // to spill others: it is then served from disk and stays there.
                // A large value may wait for its second read (with CLOCK).
                let comes_back = self.exact_lru || len < SECOND_READ_MIN;
                if len <= self.always_resident && self.max_disk_size.is_none() && comes_back {
                    assert_eq!(
                        after,
                        Some(Location::Memory),
                        "step {step}: read {len}-byte value not resident"
                    );
                }
                if len > self.never_resident {
                    assert_eq!(
                        after,
                        Some(Location::File),
                        "step {step}: oversized value promoted"
                    );
                }
            }
            (want, got) => panic!(
                "step {step}: get({key}): model has {:?} bytes, store returned {:?} bytes",
                want.map(|w| w.len()),
                got.map(|g| g.0.len())
            ),
        }
    }

    /// Everything that must hold between operations.
    fn check(&self, step: usize) {
        // Compaction runs on a background thread: let a pass in flight end,
        // so that the files on disk are the ones the stats count.
        self.store.quiesce();
        let s = self.store.stats();
        let total: u64 = self.model.values().map(|v| v.len() as u64).sum();
        assert_eq!(self.store.len(), self.model.len(), "step {step}: len");
        assert_eq!(
            self.store.is_empty(),
            self.model.is_empty(),
            "step {step}: is_empty"
        );
        assert_eq!(s.entries, self.model.len(), "step {step}: stats.entries");
        assert_eq!(
            s.memory_entries + s.disk_entries,
            s.entries,
            "step {step}: entry split"
        );
        assert_eq!(
            s.max_size,
            Some(self.max_size),
            "step {step}: stats.max_size"
        );
        assert!(
            s.memory_bytes <= self.max_size,
            "step {step}: {} bytes in memory > {}",
            s.memory_bytes,
            self.max_size
        );
        assert_eq!(
            s.memory_bytes + s.disk_bytes,
            total,
            "step {step}: memory + disk bytes"
        );
        assert_eq!(
            (s.hits, s.misses, s.reloads),
            (self.hits, self.misses, self.reloads),
            "step {step}: hits/misses/reloads"
        );
        assert_eq!(s.corruptions, 0, "step {step}: corruptions");
        if let Err(e) = self.store.validate() {
            panic!("step {step}: validate: {e}");
        }
        // location() agrees with the model and with the stats.
        let (mut mem_entries, mut mem_bytes) = (0usize, 0u64);
        for key in 0..KEYS {
            let loc = self.store.location(&key);
            assert_eq!(
                self.store.contains_key(&key),
                loc.is_some(),
                "step {step}: contains_key({key})"
            );
            match (self.model.get(&key), loc) {
                (None, None) => {}
                (Some(v), Some(Location::Memory)) => {
                    mem_entries += 1;
                    mem_bytes += v.len() as u64;
                    assert!(
                        v.len() as u64 <= self.never_resident,
                        "step {step}: oversized value {key} resident"
                    );
                }
                (Some(_), Some(Location::File)) => {}
                (want, got) => panic!(
                    "step {step}: key {key}: model {:?}, location {got:?}",
                    want.map(|v| v.len())
                ),
            }
        }
        assert_eq!(
            (mem_entries, mem_bytes),
            (s.memory_entries, s.memory_bytes),
            "step {step}: resident entries/bytes"
        );
        // The spill files on disk are exactly the ones the store counts, and
        // an empty store keeps none.
        let files = spill_files(&self.dump);
        let bytes: u64 = files.iter().map(|f| f.1).sum();
        assert_eq!(
            (files.len(), bytes),
            (s.spill_files, s.spill_file_bytes),
            "step {step}: spill files on disk vs stats"
        );
        if self.model.is_empty() {
            assert_eq!(
                files.len(),
                0,
                "step {step}: empty store keeps spill files {files:?}"
            );
        }
        self.check_disk_budget(step);
        self.check_held(step);
    }
}

// Values handed out stay intact whatever happens to their keys later
// (removes, replaces, compaction punching holes in their files).
fn hold(held: &mut Vec<(usize, Bytes, Vec<u8>)>, step: usize, bytes: &Bytes, want: &[u8]) {
    if held.len() == 16 {
        held.swap_remove(step % 16);
    }
    held.push((step, bytes.clone(), want.to_vec()));
}

impl Checker {
    fn check_held(&self, step: usize) {
        for (got_at, bytes, want) in &self.held {
            assert!(
                bytes.as_ref() == want.as_slice(),
                "step {step}: a value returned at step {got_at} changed"
            );
        }
    }
}

// The disk budget: a refused insert changes nothing, and the spill files
// never occupy more than the budget, by the store's count or by `du`.
impl Checker {
    fn disk_limit_refused(&self, step: usize, key: u16, needed: u64, available: u64, limit: u64) {
        assert_eq!(
            Some(limit),
            self.max_disk_size,
            "step {step}: DiskLimit's limit"
        );
        assert!(
            needed > available,
            "step {step}: refused {needed} with {available} free"
        );
        // The old value, if any, stays.
        assert_eq!(
            self.store.contains_key(&key),
            self.model.contains_key(&key),
            "step {step}: a refused insert of {key} changed the store"
        );
    }

    fn check_disk_budget(&self, step: usize) {
        use std::os::unix::fs::MetadataExt;
        let s = self.store.stats();
        assert_eq!(
            s.max_disk_size, self.max_disk_size,
            "step {step}: stats.max_disk_size"
        );
        let du: u64 = spill_files(&self.dump)
            .iter()
            .filter_map(|(p, _)| std::fs::symlink_metadata(p).ok())
            .filter(|m| m.is_file())
            .map(|m| m.blocks() * 512)
            .sum();
        assert!(
            du <= s.spill_file_allocated_bytes,
            "step {step}: du {du} above the store's count {}",
            s.spill_file_allocated_bytes
        );
        if let Some(limit) = self.max_disk_size {
            assert!(
                s.spill_file_allocated_bytes <= limit,
                "step {step}: {} bytes on disk over the budget of {limit}",
                s.spill_file_allocated_bytes
            );
        }
    }
}

fuzz_target!(|input: Input| {
    let scale = match (input.huge, input.large) {
        (true, _) => 256,
        (false, true) => 16,
        (false, false) => 1,
    };
    let max_size = (1 + u64::from(input.max_size) % 2048) * scale;
    let shards = 1 + usize::from(input.shards % 8);
    let segment_size = (4096 + u64::from(input.segment_size) % (65536 - 4096 + 1)) * scale;
    let max_object_size = input
        .max_object_size
        .map(|m| u64::from(m) % (2 * max_size + 2));

    let tmp = tempfile::tempdir().expect("tempdir");
    let dump = tmp.path().join("dump");
    let mut builder = SpillStore::<u16>::builder()
        .max_size(max_size)
        .dump_dir(&dump)
        .shards(shards)
        .segment_size(segment_size)
        .exact_lru(input.exact_lru);
    if let Some(m) = max_object_size {
        builder = builder.max_object_size(m);
    }
    let max_disk_size = input.max_disk_size.map(|d| (1 + u64::from(d)) * scale);
    if let Some(d) = max_disk_size {
        builder = builder.max_disk_size(d);
    }
    if let Some(bytes) = input.clean_ahead {
        builder = builder.clean_ahead(u64::from(bytes) % (max_size + 1));
    }
    let store = builder.build().expect("valid settings build");
    let n = store.shard_count() as u64;
    assert_eq!(n, shards.next_power_of_two() as u64);
    let mut c = Checker {
        store,
        dump: dump.clone(),
        model: HashMap::new(),
        max_size,
        max_object_size,
        always_resident: max_size / n,
        never_resident: max_size.div_ceil(n),
        exact_lru: input.exact_lru,
        len_unit: if scale == 256 { 256 } else { 1 },
        hits: 0,
        misses: 0,
        reloads: 0,
        max_disk_size,
        held: Vec::new(),
    };
    c.check(0);
    for (step, op) in input.ops.iter().take(MAX_OPS).enumerate() {
        let step = step + 1;
        match *op {
            Op::Insert { key, len } => c.insert(step, key % KEYS, len),
            Op::Get { key } => c.get(step, key % KEYS, false),
            Op::GetWithLocation { key } => c.get(step, key % KEYS, true),
            Op::Remove { key } => {
                let key = key % KEYS;
                let removed = c.store.remove(&key).expect("remove never fails");
                assert_eq!(
                    removed,
                    c.model.remove(&key).is_some(),
                    "step {step}: remove({key})"
                );
                assert_eq!(
                    c.store.location(&key),
                    None,
                    "step {step}: removed key {key} still there"
                );
            }
            Op::ContainsKey { key } => {
                let key = key % KEYS;
                assert_eq!(
                    c.store.contains_key(&key),
                    c.model.contains_key(&key),
                    "step {step}: contains_key({key})"
                );
            }
            Op::Location { key } => {
                let key = key % KEYS;
                assert_eq!(
                    c.store.location(&key).is_some(),
                    c.model.contains_key(&key),
                    "step {step}: location({key})"
                );
            }
            Op::Clear => {
                c.store.clear().expect("clear never fails");
                c.model.clear();
            }
            Op::Stats => {
                let _ = c.store.stats();
            }
            Op::Compact => c.store.compact(),
            Op::Keys => {
                let mut keys = c.store.keys();
                keys.sort_unstable();
                let mut want: Vec<u16> = c.model.keys().copied().collect();
                want.sort_unstable();
                assert_eq!(keys, want, "step {step}: keys()");
            }
        }
        c.check(step);
    }
    // Everything reads back at the end, and cleanup leaves nothing behind.
    let keys: Vec<u16> = c.model.keys().copied().collect();
    for key in keys {
        c.get(usize::MAX, key, true);
    }
    c.check(usize::MAX);
    c.store.cleanup().expect("cleanup");
    assert!(
        !dump.exists(),
        "cleanup left the dump dir: {:?}",
        std::fs::read_dir(&dump).map(|d| d.count())
    );
});
