//! `config`: arbitrary builder settings, including odd dump directories,
//! must build or fail with a typed error, never panic. A store that builds
//! takes a few inserts and reads (checked against a model) and `cleanup()`,
//! and never touches files it did not create.
//!
//! Every path is rooted in a fresh tempdir except the deliberately odd ones
//! (empty, NUL bytes), which cannot reach the file system. Relative paths are
//! resolved inside the tempdir: the target changes into a directory eight
//! levels deep in it for the call, and no `..` climbs above the tempdir.
#![no_main]

mod common;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use spillstore::{Error, LimitKind, SpillStore, MAX_SHARDS};

use common::value;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Size {
    Small(u16),
    /// `2^(n % 64)`, then -1, +0 or +1.
    NearPow2(u8, u8),
    Raw(u64),
    Max,
}

impl Size {
    fn get(self) -> u64 {
        match self {
            Size::Small(n) => u64::from(n),
            Size::NearPow2(e, d) => (1u64 << (e % 64))
                .wrapping_add(u64::from(d % 3))
                .wrapping_sub(1),
            Size::Raw(n) => n,
            Size::Max => u64::MAX,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Shards {
    Small(u8),
    NearPow2(u8, u8),
    Raw(usize),
    Max,
}

impl Shards {
    fn get(self) -> usize {
        match self {
            Shards::Small(n) => usize::from(n),
            Shards::NearPow2(e, d) => (1usize << (e % 64))
                .wrapping_add(usize::from(d % 3))
                .wrapping_sub(1),
            Shards::Raw(n) => n,
            Shards::Max => usize::MAX,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Comp {
    DotDot,
    Dot,
    Empty,
    Name(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Plant {
    /// A regular file under a spill file's name.
    SpillFile(u8),
    /// A directory under a spill file's name.
    SpillDir(u8),
    /// A dangling symlink under a spill file's name.
    SpillSymlink(u8),
    /// An existing (foreign) lock file.
    LockFile,
    /// A symlink in place of the lock file.
    LockSymlink,
    /// Some unrelated file.
    Other,
}

#[derive(Arbitrary, Debug, Clone)]
enum Dir {
    Empty,
    /// Relative, resolved inside the tempdir.
    Relative(Vec<Comp>),
    /// `tmp/` followed by components, `..` included.
    Absolute(Vec<Comp>),
    /// `tmp/file/sub`: below a regular file.
    BelowFile,
    /// `tmp/file`: an existing regular file.
    ExistingFile,
    /// `tmp/d/d/.../d`, not existing yet.
    DeepNonexistent(u8),
    /// A component of this many bytes.
    LongName(u16),
    /// Many components, this many in total.
    LongPath(u16),
    /// A name with a NUL byte at this position (never reaches the file system).
    Nul(u8),
    /// A symlink to a directory.
    SymlinkToDir,
    /// A symlink to a regular file.
    SymlinkToFile,
    /// A symlink to itself.
    SymlinkLoop,
    /// A symlink to nothing.
    DanglingSymlink,
    /// A directory already locked by another live store.
    Locked,
    /// The tempdir itself, with things already in it.
    Planted(Vec<Plant>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    max_size: Option<Size>,
    max_object_size: Option<Size>,
    shards: Option<Shards>,
    segment_size: Option<Size>,
    clean_ahead: Option<Size>,
    dump_dir: Option<Dir>,
    /// `(key, len)`: a few inserts, each followed by reads of every key.
    inserts: Vec<(u8, u16)>,
}

/// Restores the working directory when dropped.
struct Cwd(PathBuf);

impl Drop for Cwd {
    fn drop(&mut self) {
        std::env::set_current_dir(&self.0).expect("restore the working directory");
    }
}

/// Appends `comps` to `path`, which lies `depth` levels below the tempdir;
/// a `..` that would climb above the tempdir is dropped.
fn push_comps(path: &mut PathBuf, comps: &[Comp], mut depth: usize) {
    for c in comps.iter().take(16) {
        match c {
            Comp::DotDot if depth > 0 => {
                depth -= 1;
                path.push("..");
            }
            Comp::DotDot => {}
            Comp::Dot => path.push("."),
            // "a//b"; never a leading "/", which would make the path absolute.
            Comp::Empty if path.as_os_str().is_empty() => {}
            Comp::Empty => {
                let mut s = path.clone().into_os_string();
                s.push("/");
                *path = PathBuf::from(s);
            }
            Comp::Name(n) => {
                depth += 1;
                path.push(format!("n{}", n % 4));
            }
        }
    }
}

/// What `build` must say, when it can be told from the settings alone.
#[derive(Debug, PartialEq)]
enum Expect {
    Invalid,
    Locked,
    Io,
    /// Ok, or a typed error that depends on the file system.
    Any,
}

fuzz_target!(|input: Input| {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let mut _cwd_guard: Option<Cwd> = None;
    let mut _other_store: Option<SpillStore<u8>> = None;
    // Things put in the dump dir by someone else: must survive the store.
    let mut planted: Vec<PathBuf> = Vec::new();
    let mut expect = Expect::Any;

    let dir: Option<PathBuf> = input.dump_dir.as_ref().map(|d| match d {
        Dir::Empty => PathBuf::new(),
        Dir::Relative(comps) => {
            let deep = root.join("r/1/2/3/4/5/6/7");
            std::fs::create_dir_all(&deep).unwrap();
            let here = std::env::current_dir().expect("current dir");
            std::env::set_current_dir(&deep).unwrap();
            _cwd_guard = Some(Cwd(here));
            let mut p = PathBuf::new();
            push_comps(&mut p, comps, 8);
            p
        }
        Dir::Absolute(comps) => {
            let mut p = root.clone();
            push_comps(&mut p, comps, 0);
            p
        }
        Dir::BelowFile => {
            std::fs::write(root.join("file"), b"x").unwrap();
            expect = Expect::Io;
            root.join("file/sub")
        }
        Dir::ExistingFile => {
            std::fs::write(root.join("file"), b"x").unwrap();
            planted.push(root.join("file"));
            expect = Expect::Invalid;
            root.join("file")
        }
        Dir::DeepNonexistent(n) => {
            let mut p = root.clone();
            for i in 0..(*n % 64) {
                p.push(format!("d{i}"));
            }
            p
        }
        Dir::LongName(n) => {
            let n = usize::from(*n % 1024) + 1;
            if n > 255 {
                expect = Expect::Io;
            }
            root.join("x".repeat(n))
        }
        Dir::LongPath(n) => {
            let n = usize::from(*n % 1024) + 1;
            let mut p = root.clone();
            for _ in 0..n {
                p.push("abcdefg");
            }
            p
        }
        Dir::Nul(at) => {
            let mut name = b"dump".to_vec();
            name.insert(usize::from(*at) % (name.len() + 1), 0);
            expect = Expect::Io;
            root.join(OsString::from_vec(name))
        }
        Dir::SymlinkToDir => {
            std::fs::create_dir(root.join("real")).unwrap();
            std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
            root.join("link")
        }
        Dir::SymlinkToFile => {
            std::fs::write(root.join("file"), b"x").unwrap();
            std::os::unix::fs::symlink(root.join("file"), root.join("link")).unwrap();
            planted.push(root.join("file"));
            expect = Expect::Invalid;
            root.join("link")
        }
        Dir::SymlinkLoop => {
            std::os::unix::fs::symlink(root.join("loop"), root.join("loop")).unwrap();
            expect = Expect::Io;
            root.join("loop")
        }
        Dir::DanglingSymlink => {
            std::os::unix::fs::symlink(root.join("nowhere"), root.join("link")).unwrap();
            expect = Expect::Io;
            root.join("link")
        }
        Dir::Locked => {
            let p = root.join("locked");
            _other_store = Some(
                SpillStore::<u8>::builder()
                    .max_size(1024)
                    .dump_dir(&p)
                    .build()
                    .expect("the first store on a fresh dir builds"),
            );
            expect = Expect::Locked;
            p
        }
        Dir::Planted(plants) => {
            for plant in plants.iter().take(8) {
                let p = match plant {
                    Plant::SpillFile(n) | Plant::SpillDir(n) | Plant::SpillSymlink(n) => {
                        root.join(format!("spill-{:08}.seg", n % 8))
                    }
                    Plant::LockFile | Plant::LockSymlink => root.join(".spillstore.lock"),
                    Plant::Other => root.join("other.txt"),
                };
                if std::fs::symlink_metadata(&p).is_ok() {
                    continue;
                }
                match plant {
                    Plant::SpillFile(_) | Plant::LockFile | Plant::Other => {
                        std::fs::write(&p, b"foreign").unwrap()
                    }
                    Plant::SpillDir(_) => std::fs::create_dir(&p).unwrap(),
                    Plant::SpillSymlink(_) => {
                        std::os::unix::fs::symlink(root.join("target"), &p).unwrap()
                    }
                    Plant::LockSymlink => {
                        std::os::unix::fs::symlink(root.join("other-lock"), &p).unwrap();
                        expect = Expect::Io;
                    }
                }
                planted.push(p);
            }
            root.clone()
        }
    });

    let max_size = input.max_size.map(Size::get);
    let max_object_size = input.max_object_size.map(Size::get);
    let shards = input.shards.map(Shards::get);
    let segment_size = input.segment_size.map(Size::get);
    let clean_ahead = input.clean_ahead.map(Size::get);

    // Settings `build` must refuse before touching the file system.
    let invalid = max_size.is_some() != dir.is_some()
        || max_size == Some(0)
        || dir.as_ref().is_some_and(|d| d.as_os_str().is_empty())
        || shards.is_some_and(|n| n == 0 || n > MAX_SHARDS)
        // The builder accepts segment sizes from 4 KiB to 1 GiB.
        || segment_size.is_some_and(|s| !(4096..=1 << 30).contains(&s))
        // Any amount cleaned ahead needs a dump dir; zero never does.
        || (clean_ahead.is_some_and(|b| b > 0) && dir.is_none());
    if invalid {
        expect = Expect::Invalid;
    }
    // Checked by validation before opening anything: never a panic.
    let mut builder = SpillStore::<u8>::builder();
    if let Some(m) = max_size {
        builder = builder.max_size(m);
    }
    if let Some(m) = max_object_size {
        builder = builder.max_object_size(m);
    }
    if let Some(d) = &dir {
        builder = builder.dump_dir(d);
    }
    if let Some(n) = shards {
        builder = builder.shards(n);
    }
    if let Some(s) = segment_size {
        builder = builder.segment_size(s);
    }
    if let Some(b) = clean_ahead {
        builder = builder.clean_ahead(b);
    }
    let store = match builder.build() {
        Ok(store) => {
            assert!(
                expect == Expect::Any,
                "built, but expected {expect:?} for {input:?}"
            );
            store
        }
        Err(e) => {
            match (&expect, &e) {
                (Expect::Invalid, Error::InvalidConfig(_))
                | (Expect::Locked, Error::DirLocked { .. })
                | (Expect::Io, Error::Io(_))
                | (Expect::Any, Error::Io(_) | Error::InvalidConfig(_)) => {}
                _ => panic!("expected {expect:?}, got {e:?} for {input:?}"),
            }
            let _ = e.to_string();
            for p in &planted {
                assert!(std::fs::symlink_metadata(p).is_ok(), "{p:?} vanished");
            }
            return;
        }
    };

    if let Some(n) = shards {
        assert_eq!(
            store.shard_count(),
            n.next_power_of_two(),
            "shard count for {n}"
        );
    }
    assert!(store.shard_count().is_power_of_two() && store.shard_count() <= MAX_SHARDS);
    if let Err(e) = store.validate() {
        panic!("validate on a new store: {e} (settings {input:?})");
    }

    let mut model: HashMap<u8, Vec<u8>> = HashMap::new();
    for (i, &(key, len)) in input.inserts.iter().take(4).enumerate() {
        let key = key % 4;
        let len = usize::from(len % 4097);
        let v = value(u64::from(key), i as u64, len);
        let too_large = max_object_size
            .filter(|&l| len as u64 > l)
            .map(|l| (l, LimitKind::Object))
            .or(max_size
                .filter(|&l| len as u64 > l)
                .map(|l| (l, LimitKind::Memory)));
        match (store.insert(key, v.clone()), too_large) {
            (Ok(()), None) => {
                model.insert(key, v);
            }
            (Err(Error::ObjectTooLarge { limit, kind, size }), Some((l, k))) => {
                assert_eq!((limit, kind, size), (l, k, len as u64));
            }
            // A spill that cannot be written (say an absurd segment size):
            // typed, the key is not stored, every earlier value stays.
            (Err(Error::Io(_)), None) => {}
            (got, want) => panic!(
                "insert of {len} bytes: got {got:?}, expected too-large {want:?} ({input:?})"
            ),
        }
        for k in 0..4u8 {
            let got = store.get(&k).unwrap_or_else(|e| {
                panic!("get({k}) of an untouched store failed: {e:?} ({input:?})")
            });
            assert_eq!(
                got.as_deref(),
                model.get(&k).map(|v| v.as_slice()),
                "get({k})"
            );
        }
        let s = store.stats();
        let total: u64 = model.values().map(|v| v.len() as u64).sum();
        assert_eq!(s.entries, model.len());
        assert_eq!(s.memory_bytes + s.disk_bytes, total);
        if let Some(m) = max_size {
            assert!(s.memory_bytes <= m);
        }
        if let Err(e) = store.validate() {
            panic!("validate: {e} ({input:?})");
        }
    }
    let dump = store.dump_dir().map(Path::to_path_buf);
    match store.cleanup() {
        Ok(()) | Err(Error::Io(_)) => {}
        Err(e) => panic!("cleanup: unexpected {e:?}"),
    }
    for p in &planted {
        assert!(
            std::fs::symlink_metadata(p).is_ok(),
            "cleanup removed foreign {p:?}"
        );
    }
    if let Some(d) = dump {
        // No spill file of ours is left behind.
        let left: Vec<_> = common::spill_files(&d)
            .into_iter()
            .filter(|(p, _)| !planted.contains(p))
            .collect();
        assert!(left.is_empty(), "cleanup left {left:?}");
    }
});
