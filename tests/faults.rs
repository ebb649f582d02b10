//! Faults: a full disk (a tiny tmpfs, needs root) and spill files altered
//! behind the store's back. Every value stored before stays readable, errors
//! are typed, and no wrong bytes are ever returned.

mod common;

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use common::{data_files, value, Tmpfs};
use spillstore::{Error, Location, SpillStore};

/// A store on `dump` with the given budget, segment size and shard count.
fn store_in(
    dump: impl AsRef<Path>,
    max_size: u64,
    segment_size: u64,
    shards: usize,
) -> SpillStore<u64> {
    // No copies written ahead: which insert meets the full disk, and which
    // victims it must write, must not depend on the spiller's timing (its
    // own writes meeting a full disk only leave values without copies).
    SpillStore::builder()
        .max_size(max_size)
        .dump_dir(dump.as_ref())
        .segment_size(segment_size)
        .shards(shards)
        .clean_ahead(0)
        .build()
        .unwrap()
}

fn is_disk_full(e: &Error) -> bool {
    matches!(e, Error::Io(io) if io.kind() == ErrorKind::StorageFull)
}

/// Inserts `len`-byte values under 0, 1, ... until one fails; returns the
/// keys stored and the error.
fn fill(store: &SpillStore<u64>, len: usize, limit: u64) -> (Vec<u64>, Error) {
    let mut stored = Vec::new();
    for k in 0..limit {
        match store.insert(k, value(k, len)) {
            Ok(()) => stored.push(k),
            Err(e) => return (stored, e),
        }
    }
    panic!("the disk never filled up");
}

fn check_all(store: &SpillStore<u64>, keys: &[u64], len: usize) {
    for &k in keys {
        assert_eq!(store.get(&k).unwrap().unwrap(), value(k, len), "key {k}");
    }
    let stats = store.stats();
    assert_eq!(
        stats.memory_bytes + stats.disk_bytes,
        (keys.len() * len) as u64
    );
    assert!(stats.memory_bytes <= stats.max_size.unwrap());
    store.validate().unwrap();
}

#[test]
fn disk_full_while_spilling_small_values() {
    let Some(fs_) = Tmpfs::mount("128k") else {
        return;
    };
    let store: SpillStore<u64> = store_in(fs_.path.join("dump"), 16 * 1024, 32 * 1024, 1);
    let (stored, err) = fill(&store, 1000, 10_000);
    assert!(is_disk_full(&err), "{err:?}");
    assert!(err.to_string().contains("spill"), "{err}");
    let failed_key = stored.len() as u64;
    assert!(
        !store.contains_key(&failed_key),
        "the failed insert is not stored"
    );
    assert_eq!(store.len(), stored.len());
    // The error repeats while the disk is full, and nothing is lost.
    assert!(store.insert(failed_key, value(failed_key, 1000)).is_err());
    check_all(&store, &stored, 1000);

    // Free space by removing most keys: whole segments go away.
    let (gone, kept) = stored.split_at(stored.len() * 3 / 4);
    for k in gone {
        assert!(store.remove(k).unwrap());
    }
    for k in 100_000..100_020u64 {
        store.insert(k, value(k, 1000)).unwrap();
    }
    check_all(
        &store,
        &[kept, &(100_000..100_020).collect::<Vec<_>>()].concat(),
        1000,
    );
    store.clear().unwrap();
    assert_eq!(data_files(&fs_.path.join("dump")), Vec::<String>::new());
}

#[test]
fn disk_full_for_large_values_leaves_no_half_written_file() {
    let Some(fs_) = Tmpfs::mount("256k") else {
        return;
    };
    let dump = fs_.path.join("dump");
    // 16 KiB segments: values of 20 000 bytes get files of their own.
    let store: SpillStore<u64> = store_in(&dump, 64 * 1024, 16 * 1024, 1);
    let (stored, err) = fill(&store, 20_000, 1000);
    assert!(is_disk_full(&err), "{err:?}");
    store.quiesce();
    let stats = store.stats();
    assert_eq!(
        data_files(&dump).len(),
        stats.spill_files,
        "a failed file was left"
    );
    assert_eq!(stats.spill_files, stats.disk_entries);
    check_all(&store, &stored, 20_000);
}

#[test]
fn get_serves_without_promoting_when_no_room_can_be_made() {
    let Some(fs_) = Tmpfs::mount("64k") else {
        return;
    };
    let store: SpillStore<u64> = store_in(fs_.path.join("dump"), 8 * 1024, 8 * 1024, 1);
    let (stored, err) = fill(&store, 1000, 10_000);
    assert!(is_disk_full(&err), "{err:?}");
    // Memory is full of values never spilled; the disk is full too.
    let on_disk: Vec<u64> = stored
        .iter()
        .copied()
        .filter(|k| store.location(k) == Some(Location::File))
        .collect();
    assert!(!on_disk.is_empty());
    let (bytes, from) = store.get_with_location(&on_disk[0]).unwrap().unwrap();
    assert_eq!(
        (bytes.as_ref(), from),
        (&value(on_disk[0], 1000)[..], Location::File)
    );
    assert_eq!(
        store.location(&on_disk[0]),
        Some(Location::File),
        "not promoted"
    );
    check_all(&store, &stored, 1000);
}

#[test]
fn disk_full_then_space_freed_elsewhere_recovers() {
    let Some(fs_) = Tmpfs::mount("256k") else {
        return;
    };
    let filler = fs_.path.join("filler");
    fs::write(&filler, vec![1u8; 200 * 1024]).unwrap();
    let store: SpillStore<u64> = store_in(fs_.path.join("dump"), 8 * 1024, 16 * 1024, 2);
    let (mut stored, err) = fill(&store, 700, 10_000);
    assert!(is_disk_full(&err), "{err:?}");
    fs::remove_file(&filler).unwrap();
    let first = stored.len() as u64;
    for k in first..first + 100 {
        store.insert(k, value(k, 700)).unwrap();
        stored.push(k);
    }
    check_all(&store, &stored, 700);
}

/// A store with values 0..n of `len` bytes, most of them spilled.
fn spilled_store(dir: &Path, n: u64, len: usize) -> SpillStore<u64> {
    // The edits below aim at records by their place in the files: no copies
    // written ahead, whose timing would change the layout.
    let store: SpillStore<u64> = SpillStore::builder()
        .max_size(len as u64 * 2)
        .dump_dir(dir.join("dump"))
        .segment_size(4096)
        .shards(1)
        .clean_ahead(0)
        .build()
        .unwrap();
    for k in 0..n {
        store.insert(k, value(k, len)).unwrap();
    }
    // The edits below happen while the store is idle.
    store.quiesce();
    store
}

fn spill_files(dir: &Path) -> Vec<PathBuf> {
    data_files(&dir.join("dump"))
        .into_iter()
        .map(|n| dir.join("dump").join(n))
        .collect()
}

/// Reads every key: each read is the exact value or a typed error.
fn read_all(store: &SpillStore<u64>, n: u64, len: usize) -> (usize, usize) {
    let (mut ok, mut corrupted) = (0, 0);
    for k in 0..n {
        match store.get(&k) {
            Ok(Some(v)) => {
                assert_eq!(v, value(k, len), "wrong bytes for key {k}");
                ok += 1;
            }
            Err(Error::Corrupted { .. }) | Err(Error::Io(_)) => corrupted += 1,
            Ok(None) => panic!("key {k} lost"),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    (ok, corrupted)
}

#[test]
fn a_flipped_byte_is_reported_until_the_key_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let store = spilled_store(dir.path(), 20, 100);
    let files = spill_files(dir.path());
    let mut data = fs::read(&files[0]).unwrap();
    // Inside the first record's value: after the 64-byte file header and
    // the record's 32-byte header.
    data[64 + 32 + 50] ^= 0xff;
    fs::write(&files[0], &data).unwrap();
    // Key 0 was the first value spilled: the first record of the first file.
    assert_eq!(read_all(&store, 20, 100), (19, 1));
    let bad = (0..20u64)
        .find(|k| matches!(store.get(k), Err(Error::Corrupted { .. })))
        .expect("the corrupted key stays corrupted");
    assert_eq!(bad, 0);
    match store.get(&bad) {
        Err(e @ Error::Corrupted { .. }) => assert!(e.to_string().contains("checksum"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(store.contains_key(&bad));
    // Every read of key 0 counted: once in read_all, once in the search,
    // once in the match; the other gets were not corrupted.
    assert_eq!(store.stats().corruptions, 3);
    store.insert(bad, value(bad, 100)).unwrap();
    assert_eq!(store.get(&bad).unwrap().unwrap(), value(bad, 100));
    store.validate().unwrap();
}

#[test]
fn truncation_after_mapping_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let store = spilled_store(dir.path(), 30, 100);
    // Read one spilled value so that its segment is mapped.
    assert_eq!(store.location(&0), Some(Location::File));
    assert_eq!(store.get(&0).unwrap().unwrap(), value(0, 100));
    for file in spill_files(dir.path()) {
        OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(10)
            .unwrap();
    }
    // The budget holds two values: key 0 (just promoted) and key 29 stay
    // resident and read back; the 28 others were in the truncated files.
    assert_eq!(read_all(&store, 30, 100), (2, 28));
    assert_eq!(store.stats().corruptions, 28);
    store.validate().unwrap();
}

#[test]
fn extended_replaced_or_symlinked_files_never_yield_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = spilled_store(dir.path(), 80, 150);
    let files = spill_files(dir.path());
    assert!(files.len() >= 3);
    // Extended: records stay where they were.
    let mut f = OpenOptions::new().append(true).open(&files[0]).unwrap();
    std::io::Write::write_all(&mut f, &[0xAB; 5000]).unwrap();
    // Replaced by a directory, and by a symlink to another spill file.
    fs::remove_file(&files[1]).unwrap();
    fs::create_dir(&files[1]).unwrap();
    fs::remove_file(&files[2]).unwrap();
    std::os::unix::fs::symlink(&files[0], &files[2]).unwrap();
    // Reads go through the descriptors the store keeps open, not the paths:
    // an extended file keeps its records where they were, and a file
    // replaced on disk by a directory or a symlink still reads back in full.
    assert_eq!(read_all(&store, 80, 150), (80, 0));
    store.validate().unwrap();
    drop(store);
    assert!(
        files[1].is_dir(),
        "a directory the store did not create stays"
    );
}

#[test]
fn records_swapped_between_offsets_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let store = spilled_store(dir.path(), 20, 100);
    let files = spill_files(dir.path());
    let mut data = fs::read(&files[0]).unwrap();
    let record = 32 + 100;
    let (a, b) = data.split_at_mut(record);
    a.swap_with_slice(&mut b[..record]);
    fs::write(&files[0], &data).unwrap();
    let (_, corrupted) = read_all(&store, 20, 100);
    assert_eq!(corrupted, 2, "both swapped records are refused");
}

#[test]
fn disk_full_in_the_middle_of_a_batch_of_spills() {
    let Some(fs_) = Tmpfs::mount("256k") else {
        return;
    };
    let store: SpillStore<u64> = store_in(fs_.path.join("dump"), 24 * 1024, 16 * 1024, 1);
    // 200 values of 100 bytes: the last 240 or so stay resident.
    let small: Vec<u64> = (0..200).collect();
    for &k in &small {
        store.insert(k, value(k, 100)).unwrap();
    }
    // Leave a few KiB of free space, then ask for room that needs ~200
    // victims to be written in one batch: it cannot all fit.
    let filler = fs_.path.join("filler");
    let mut size = 256 * 1024;
    while fs::write(&filler, vec![0u8; size]).is_err() {
        size -= 4096;
    }
    let err = store.insert(1_000, value(1_000, 20_000)).unwrap_err();
    assert!(is_disk_full(&err), "{err:?}");
    assert!(!store.contains_key(&1_000));
    check_all(&store, &small, 100);
    fs::remove_file(&filler).unwrap();
    store.insert(1_000, value(1_000, 20_000)).unwrap();
    assert_eq!(store.get(&1_000).unwrap().unwrap(), value(1_000, 20_000));
    assert!(store.remove(&1_000).unwrap());
    check_all(&store, &small, 100);
}

#[test]
fn the_dump_dir_removed_under_a_live_store() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    let store: SpillStore<u64> = store_in(&dump, 1000, 4096, 1);
    for k in 0..40u64 {
        store.insert(k, value(k, 100)).unwrap();
    }
    fs::remove_dir_all(&dump).unwrap();
    let mut stored: Vec<u64> = (0..40).collect();
    let mut failures = 0;
    for k in 40..200u64 {
        match store.insert(k, value(k, 100)) {
            Ok(()) => stored.push(k),
            Err(Error::Io(_)) => failures += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(failures > 0, "new spill files cannot be created");
    assert!(
        !dump.exists(),
        "the store did not recreate the dir elsewhere"
    );
    // Everything stored is still readable through the open files.
    check_all(&store, &stored, 100);
    drop(store);
    assert!(!dump.exists());
}
