//! `corrupt`: spill files altered behind an idle store's back. Every read
//! afterwards is the exact value or `Corrupted`/`Io`, never wrong bytes,
//! never a panic or SIGBUS, and a key never disappears. Values resident at
//! the time of the edits, and values stored after them, read back exactly.
//! Files the store did not create (planted or put in place of its own) are
//! never deleted.
#![no_main]

mod common;

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use spillstore::{Error, Location, SpillStore};

use common::{spill_files, value};

const KEYS: u8 = 32;

#[derive(Arbitrary, Debug)]
enum Edit {
    /// XOR one byte.
    Flip { file: u8, offset: u32, mask: u8 },
    /// Write bytes at an offset (may extend the file).
    Overwrite {
        file: u8,
        offset: u32,
        bytes: Vec<u8>,
    },
    /// Cut the file shorter.
    Truncate { file: u8, len: u32 },
    /// Make the file longer (zeros).
    Extend { file: u8, extra: u16 },
    /// Copy a range of one file over a range of another (or the same) file.
    CopyRange {
        from: u8,
        to: u8,
        src: u32,
        dst: u32,
        len: u16,
    },
    /// Overwrite a file, in place, with the whole content of another.
    CopyFile { from: u8, to: u8 },
    /// Replace the file by a directory of the same name.
    ReplaceWithDir { file: u8 },
    /// Replace the file by a symlink to another spill file.
    SymlinkTo { file: u8, target: u8 },
    /// Replace the file by a copy of itself (a new inode).
    ReplaceWithCopy { file: u8 },
    /// Rename one spill file over another.
    RenameOver { from: u8, to: u8 },
    /// Unlink the file.
    Unlink { file: u8 },
    /// Plant something under a name the store may pick next.
    Plant { ahead: u8, kind: u8 },
}

#[derive(Arbitrary, Debug)]
enum Post {
    Get(u8),
    Insert {
        key: u8,
        len: u16,
    },
    Remove(u8),
    /// Forced compaction: moves readable records, must keep the others.
    Compact,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Sizes 16 times larger (`max_size`, `segment_size`): values of 16 KiB
    /// or more then spill to shared segments, page aligned and without a
    /// header, checked against the checksums their segments keep.
    large: bool,
    /// `64..=2048`, times 16 if `large`.
    max_size: u16,
    /// `4096..=16384`, times 16 if `large`.
    segment_size: u16,
    /// `4..=24` values are stored under keys `0, 1, ...`; value `i` is
    /// `len_base + i * len_step` bytes, modulo `max_size + 1`.
    fill: u8,
    len_base: u16,
    len_step: u16,
    /// Keys read before the edits (maps segments, promotes values).
    pre_reads: Vec<u8>,
    edits: Vec<Edit>,
    post: Vec<Post>,
}

fn pick(files: &[(PathBuf, u64)], i: u8) -> Option<(PathBuf, u64)> {
    if files.is_empty() {
        None
    } else {
        files.get(usize::from(i) % files.len()).cloned()
    }
}

fn open_rw(p: &Path) -> Option<fs::File> {
    OpenOptions::new().read(true).write(true).open(p).ok()
}

/// Applies one edit; records names that no longer hold a file of the store.
fn apply(dir: &Path, edit: &Edit, foreign: &mut HashSet<PathBuf>) {
    let files = spill_files(dir);
    match edit {
        Edit::Flip { file, offset, mask } => {
            let Some((p, len)) = pick(&files, *file) else {
                return;
            };
            if len == 0 || *mask == 0 {
                return;
            }
            let Some(f) = open_rw(&p) else { return };
            let off = u64::from(*offset) % len;
            let mut b = [0u8];
            if f.read_exact_at(&mut b, off).is_ok() {
                b[0] ^= mask;
                let _ = f.write_all_at(&b, off);
            }
        }
        Edit::Overwrite {
            file,
            offset,
            bytes,
        } => {
            let Some((p, len)) = pick(&files, *file) else {
                return;
            };
            let Some(f) = open_rw(&p) else { return };
            let bytes = &bytes[..bytes.len().min(64)];
            let _ = f.write_all_at(bytes, u64::from(*offset) % (len + 1));
        }
        Edit::Truncate { file, len: new } => {
            let Some((p, len)) = pick(&files, *file) else {
                return;
            };
            if len == 0 {
                return;
            }
            if let Some(f) = open_rw(&p) {
                let _ = f.set_len(u64::from(*new) % len);
            }
        }
        Edit::Extend { file, extra } => {
            let Some((p, len)) = pick(&files, *file) else {
                return;
            };
            if let Some(f) = open_rw(&p) {
                let _ = f.set_len(len + u64::from(*extra) + 1);
            }
        }
        Edit::CopyRange {
            from,
            to,
            src,
            dst,
            len: n,
        } => {
            let (Some((a, alen)), Some((b, blen))) = (pick(&files, *from), pick(&files, *to))
            else {
                return;
            };
            let Ok(data) = fs::read(&a) else { return };
            if alen == 0 {
                return;
            }
            let s = (u64::from(*src) % alen) as usize;
            let e = (s + usize::from(*n)).min(data.len());
            if let Some(f) = open_rw(&b) {
                let _ = f.write_all_at(&data[s..e], u64::from(*dst) % (blen + 1));
            }
        }
        Edit::CopyFile { from, to } => {
            let (Some((a, _)), Some((b, _))) = (pick(&files, *from), pick(&files, *to)) else {
                return;
            };
            let Ok(data) = fs::read(&a) else { return };
            if let Some(f) = open_rw(&b) {
                let _ = f.write_all_at(&data, 0);
            }
        }
        Edit::ReplaceWithDir { file } => {
            let Some((p, _)) = pick(&files, *file) else {
                return;
            };
            if fs::remove_file(&p).is_ok() && fs::create_dir(&p).is_ok() {
                foreign.insert(p);
            }
        }
        Edit::SymlinkTo { file, target } => {
            let (Some((p, _)), Some((t, _))) = (pick(&files, *file), pick(&files, *target)) else {
                return;
            };
            if fs::remove_file(&p).is_ok() && std::os::unix::fs::symlink(&t, &p).is_ok() {
                foreign.insert(p);
            }
        }
        Edit::ReplaceWithCopy { file } => {
            let Some((p, _)) = pick(&files, *file) else {
                return;
            };
            let Ok(data) = fs::read(&p) else { return };
            let tmp = dir.join("copy.tmp");
            if fs::write(&tmp, data).is_ok() && fs::rename(&tmp, &p).is_ok() {
                foreign.insert(p);
            }
        }
        Edit::RenameOver { from, to } => {
            let (Some((a, _)), Some((b, _))) = (pick(&files, *from), pick(&files, *to)) else {
                return;
            };
            if a != b && fs::rename(&a, &b).is_ok() {
                // `b` now holds `a`'s inode under a name the store gave
                // another file: it is no longer deleted by the store.
                foreign.insert(b);
                foreign.remove(&a);
            }
        }
        Edit::Unlink { file } => {
            let Some((p, _)) = pick(&files, *file) else {
                return;
            };
            if fs::remove_file(&p).is_ok() {
                foreign.remove(&p);
            }
        }
        Edit::Plant { ahead, kind } => {
            // Names are `spill-{n:08}.seg` from a counter: plant just past
            // the highest one present.
            let next = files
                .iter()
                .filter_map(|(p, _)| {
                    let name = p.file_name()?.to_str()?;
                    name.strip_prefix("spill-")?
                        .strip_suffix(".seg")?
                        .parse::<u64>()
                        .ok()
                })
                .max()
                .map_or(0, |n| n + 1);
            let p = dir.join(format!("spill-{:08}.seg", next + u64::from(*ahead % 4)));
            if fs::symlink_metadata(&p).is_ok() {
                return;
            }
            let ok = match kind % 3 {
                0 => fs::write(&p, b"not a spill file").is_ok(),
                1 => fs::create_dir(&p).is_ok(),
                _ => std::os::unix::fs::symlink(dir.join("nowhere"), &p).is_ok(),
            };
            if ok {
                foreign.insert(p);
            }
        }
    }
}

struct Run {
    store: SpillStore<u8>,
    model: HashMap<u8, Vec<u8>>,
    /// Keys whose current value was stored before the edits: they may read
    /// back as `Corrupted` or `Io`.
    tainted: HashSet<u8>,
    corruptions: u64,
}

impl Run {
    /// Reads `key`: the exact value, or (if tainted) `Corrupted` / `Io`.
    fn read(&mut self, key: u8, with_location: bool, what: &str) {
        let got = if with_location {
            self.store
                .get_with_location(&key)
                .map(|o| o.map(|(v, _)| v))
        } else {
            self.store.get(&key)
        };
        let want = self.model.get(&key);
        match (got, want) {
            (Ok(Some(v)), Some(w)) => {
                assert!(
                    v.as_ref() == w.as_slice(),
                    "{what}: get({key}) returned wrong bytes"
                )
            }
            (Ok(None), None) => {}
            (Err(e @ (Error::Corrupted { .. } | Error::Io(_))), Some(_))
                if self.tainted.contains(&key) =>
            {
                if matches!(e, Error::Corrupted { .. }) {
                    self.corruptions += 1;
                }
                let _ = e.to_string();
                assert!(
                    self.store.contains_key(&key),
                    "{what}: corrupted key {key} vanished"
                );
            }
            (got, want) => panic!(
                "{what}: get({key}) -> {:?}, expected {:?} bytes (tainted: {})",
                got.map(|o| o.map(|v| v.len())),
                want.map(|w| w.len()),
                self.tainted.contains(&key)
            ),
        }
    }

    fn check(&self, what: &str) {
        let s = self.store.stats();
        let total: u64 = self.model.values().map(|v| v.len() as u64).sum();
        assert_eq!(self.store.len(), self.model.len(), "{what}: len");
        assert_eq!(s.entries, self.model.len(), "{what}: entries");
        assert!(s.memory_bytes <= s.max_size.unwrap(), "{what}: over budget");
        assert_eq!(
            s.memory_bytes + s.disk_bytes,
            total,
            "{what}: memory + disk bytes"
        );
        assert_eq!(s.corruptions, self.corruptions, "{what}: corruption count");
        if let Err(e) = self.store.validate() {
            panic!("{what}: validate: {e}");
        }
    }
}

fuzz_target!(|input: Input| {
    let scale = if input.large { 16 } else { 1 };
    let max_size = (64 + u64::from(input.max_size) % (2048 - 64 + 1)) * scale;
    let segment_size = (4096 + u64::from(input.segment_size) % (16384 - 4096 + 1)) * scale;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dump = tmp.path().join("dump");
    let store = SpillStore::<u8>::builder()
        .max_size(max_size)
        .dump_dir(&dump)
        .shards(1)
        .segment_size(segment_size)
        .build()
        .expect("build");
    let mut run = Run {
        store,
        model: HashMap::new(),
        tainted: HashSet::new(),
        corruptions: 0,
    };

    // Fill: most values spill.
    for i in 0..4 + u64::from(input.fill % 21) {
        let key = i as u8;
        let len = (u64::from(input.len_base) + i * u64::from(input.len_step)) % (max_size + 1);
        let v = value(u64::from(key), 0, len as usize);
        run.store
            .insert(key, v.clone())
            .expect("insert within limits");
        run.model.insert(key, v);
    }
    for &k in input.pre_reads.iter().take(16) {
        run.read(k % KEYS, k & 0x80 != 0, "pre-read");
    }
    run.check("before edits");

    // Edit the files while the store is idle (no compaction pass running).
    run.store.quiesce();
    let mut foreign: HashSet<PathBuf> = HashSet::new();
    for edit in input.edits.iter().take(8) {
        apply(&dump, edit, &mut foreign);
    }
    run.tainted = run.model.keys().copied().collect();

    // Values resident now never depend on a file: exact, and read first so
    // that no reload evicts them before.
    let resident: Vec<u8> = (0..KEYS)
        .filter(|k| run.store.location(k) == Some(Location::Memory))
        .collect();
    for &k in &resident {
        let got = run
            .store
            .get(&k)
            .unwrap_or_else(|e| panic!("resident key {k}: {e:?}"));
        assert!(
            got.as_deref() == run.model.get(&k).map(|v| v.as_slice()),
            "resident key {k}: wrong bytes"
        );
    }
    // Everything, twice.
    for round in 0..2 {
        for k in 0..KEYS {
            run.read(k, (k + round) % 2 == 0, "after edits");
        }
        run.check("after edits");
    }

    // Carry on: new values are never affected by the earlier edits.
    for (step, op) in input.post.iter().take(32).enumerate() {
        match *op {
            Post::Get(k) => run.read(k % KEYS, k & 0x80 != 0, "post"),
            Post::Insert { key, len } => {
                let key = key % KEYS;
                let v = value(
                    u64::from(key),
                    step as u64 + 1,
                    usize::from(len) % (max_size as usize + 1),
                );
                run.store
                    .insert(key, v.clone())
                    .unwrap_or_else(|e| panic!("post insert {key}: {e:?}"));
                run.model.insert(key, v);
                run.tainted.remove(&key);
            }
            Post::Compact => run.store.compact(),
            Post::Remove(k) => {
                let k = k % KEYS;
                assert_eq!(
                    run.store.remove(&k).unwrap(),
                    run.model.remove(&k).is_some(),
                    "remove({k})"
                );
                run.tainted.remove(&k);
            }
        }
        run.check("post");
    }
    for k in 0..KEYS {
        run.read(k, false, "final");
    }
    run.check("final");

    // Dropping the store deletes its own files, and only those.
    drop(run);
    for p in &foreign {
        assert!(
            fs::symlink_metadata(p).is_ok(),
            "the store deleted foreign {p:?}"
        );
    }
    let mut left: Vec<PathBuf> = fs::read_dir(&dump)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    left.retain(|p| !foreign.contains(p));
    assert!(left.is_empty(), "left behind after drop: {left:?}");
});
