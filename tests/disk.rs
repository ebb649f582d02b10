//! The disk side: space comes back when values go (holes punched at once),
//! a disk budget, honest figures, no orphans after a crash, descriptors under
//! a fixed cap, private files. Figures are checked against `st_blocks` (what
//! `du` counts) on the test's own file system and on a tmpfs (as root).

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, ErrorKind};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{child_role, data_files, mode, open_fds, spawn_child, spill_du, value, Tmpfs};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use spillstore::{Bytes, Error, Location, SpillStore};

fn is_disk_full(e: &Error) -> bool {
    matches!(e, Error::Io(io) if io.kind() == ErrorKind::StorageFull)
}

/// The store's figure for what its files occupy is `du` of them plus at most
/// its allowance for extent maps (at most 1/340 of a file's length and two
/// blocks per file), never less than `du`. Compared with no compaction pass
/// in flight (one may run on the store's background thread).
fn check_figures<K: std::hash::Hash + Eq + Clone + Send + Sync + 'static>(
    store: &SpillStore<K>,
    dump: &Path,
    when: &str,
) {
    store.quiesce();
    let s = store.stats();
    let du = spill_du(dump);
    assert!(
        du <= s.spill_file_allocated_bytes,
        "{when}: du {du} > the store's figure {}",
        s.spill_file_allocated_bytes
    );
    let allowance = s.spill_file_bytes / 256 + s.spill_files as u64 * 8192;
    assert!(
        s.spill_file_allocated_bytes <= du + allowance,
        "{when}: the store counts {} for du {du} (allowance {allowance})",
        s.spill_file_allocated_bytes
    );
    if let Some(limit) = s.max_disk_size {
        assert!(s.spill_file_allocated_bytes <= limit, "{when}: {s:?}");
    }
}

/// The scenario: a full disk, then half the values removed: the next
/// insert succeeds, with nothing else done.
#[test]
fn after_a_full_disk_removing_values_makes_room() {
    let Some(fs_) = Tmpfs::mount("256k") else {
        return;
    };
    let dump = fs_.path.join("dump");
    let store: SpillStore<u64> = SpillStore::builder()
        .max_size(64 << 10)
        .dump_dir(&dump)
        .build()
        .unwrap();
    let mut stored = Vec::new();
    let err = loop {
        let k = stored.len() as u64;
        assert!(k < 1000, "the disk never filled up");
        match store.insert(k, value(k, 4096)) {
            Ok(()) => stored.push(k),
            Err(e) => break e,
        }
    };
    assert!(is_disk_full(&err), "{err:?}");
    let (older, newer) = stored.split_at(stored.len() / 2);
    for k in older {
        assert!(store.remove(k).unwrap());
    }
    store.insert(1000, value(1000, 4096)).unwrap();
    for &k in newer.iter().chain([&1000]) {
        assert_eq!(store.get(&k).unwrap().unwrap(), value(k, 4096), "key {k}");
    }
    assert!(store.stats().punched_bytes > 0);
    check_figures(&store, &dump, "after the insert");
    store.validate().unwrap();
}

/// A random workload of inserts, replaces and removes, checking the store's
/// figures against `st_blocks` as it goes, then reading everything back.
fn figures_match_du_in(dump: &Path) {
    let store: SpillStore<u32> = SpillStore::builder()
        .max_size(256 << 10)
        .dump_dir(dump)
        .segment_size(1 << 20)
        .shards(2)
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let mut model: HashMap<u32, Vec<u8>> = HashMap::new();
    for step in 0..3000u64 {
        let k = rng.gen_range(0..300u32);
        match rng.gen_range(0..10) {
            0..=5 => {
                let len = *[100usize, 1000, 5000, 70_000, 200_000]
                    .choose(&mut rng)
                    .unwrap();
                let v = value(step, len);
                store.insert(k, v.clone()).unwrap();
                model.insert(k, v);
            }
            6..=7 => assert_eq!(store.remove(&k).unwrap(), model.remove(&k).is_some()),
            _ => assert_eq!(
                store.get(&k).unwrap().as_deref(),
                model.get(&k).map(|v| &v[..])
            ),
        }
        if step % 50 == 0 {
            check_figures(&store, dump, &format!("step {step}"));
        }
    }
    store.compact();
    check_figures(&store, dump, "after compaction");
    assert!(store.stats().punched_bytes > 0);
    for (k, v) in &model {
        assert_eq!(store.get(k).unwrap().unwrap(), v, "key {k}");
        assert!(store.remove(k).unwrap());
    }
    store.quiesce();
    let s = store.stats();
    assert_eq!(
        (s.spill_files, s.spill_file_allocated_bytes),
        (0, 0),
        "{s:?}"
    );
    assert_eq!(spill_du(dump), 0);
}

#[test]
fn the_stores_disk_figures_match_du_here() {
    let dir = tempfile::tempdir().unwrap();
    figures_match_du_in(&dir.path().join("dump"));
}

#[test]
fn the_stores_disk_figures_match_du_on_tmpfs() {
    let Some(fs_) = Tmpfs::mount("512m") else {
        return;
    };
    figures_match_du_in(&fs_.path.join("dump"));
}

/// Removing 90% of the values gives their space back, holes punched over
/// whole blocks; compaction takes care of small values that share blocks
/// with live ones.
#[test]
fn removing_most_values_returns_most_space() {
    let dir = tempfile::tempdir().unwrap();
    for (len, n) in [(64 << 10, 600u32), (100, 40_000)] {
        let dump = dir.path().join(format!("dump-{len}"));
        let store: SpillStore<u32> = SpillStore::builder()
            .max_size(1 << 20)
            .dump_dir(&dump)
            .build()
            .unwrap();
        for k in 0..n {
            store.insert(k, vec![k as u8; len]).unwrap();
        }
        let mut keys: Vec<u32> = (0..n).collect();
        keys.shuffle(&mut StdRng::seed_from_u64(1));
        for k in &keys[..n as usize * 9 / 10] {
            store.remove(k).unwrap();
        }
        store.quiesce();
        let live = store.stats().spill_live_bytes;
        let du = spill_du(&dump);
        if len == 64 << 10 {
            // Holes: a dead record's own blocks all go (punched in batches of
            // 1 MiB per 16 MiB segment); it leaves at most the two blocks it
            // shares with live neighbours.
            let files = store.stats().spill_files as u64;
            assert!(
                du <= live + live / 4 + files * (1 << 20),
                "{len}: du {du}, live {live}"
            );
            // A compaction pass punches what waits (and moves the live
            // records out of the segments, now sparse). The holes that the
            // records it moved leave are the spiller's to punch: quiesce
            // waits for them, or a loaded machine measures them unpunched.
            store.compact();
            store.quiesce();
            let du = spill_du(&dump);
            assert!(du <= live + live / 4, "{len}: du {du}, live {live}");
        } else {
            store.compact();
            store.quiesce();
            let live = store.stats().spill_live_bytes;
            let du = spill_du(&dump);
            assert!(du <= 2 * live + (16 << 20), "{len}: du {du}, live {live}");
        }
        check_figures(&store, &dump, &format!("{len}-byte values"));
        for k in &keys[n as usize * 9 / 10..] {
            assert_eq!(store.get(k).unwrap().unwrap(), vec![*k as u8; len]);
        }
    }
}

/// Values handed out from disk stay intact while removes, replaces and
/// compaction punch holes and delete files around them: those read from
/// shared segments are copies of their own, those read from a file of their
/// own are slices of its mapping, which outlives the file.
#[test]
fn values_held_by_callers_survive_removes_replaces_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    // Sixteen shards of 16 KiB: 20 KiB and 100 KiB values are served from
    // their files, never brought back into memory; 100 KiB records are over
    // a quarter of a 256 KiB segment, so they get files of their own.
    let store: SpillStore<u32> = SpillStore::builder()
        .max_size(256 << 10)
        .dump_dir(&dump)
        .segment_size(256 << 10)
        .shards(16)
        .build()
        .unwrap();
    let len = |k: u32| if k.is_multiple_of(5) { 100_000 } else { 20_000 };
    let mut held: Vec<(Bytes, Vec<u8>)> = Vec::new();
    for round in 0..4u64 {
        for k in 0..100u32 {
            let v = value(round << 32 | u64::from(k), len(k));
            store.insert(k, v).unwrap();
        }
        for k in (0..100u32).step_by(3) {
            let (v, from) = store.get_with_location(&k).unwrap().unwrap();
            assert_eq!(from, Location::File);
            held.push((v, value(round << 32 | u64::from(k), len(k))));
        }
        for k in (0..100u32).filter(|k| k % 2 == 0) {
            store.remove(&k).unwrap();
        }
        store.compact();
    }
    assert!(store.stats().punched_bytes > 0);
    for (i, (got, want)) in held.iter().enumerate() {
        assert!(got == want, "held value {i} changed");
    }
    check_figures(&store, &dump, "values held");
    store.clear().unwrap();
    assert_eq!(
        data_files(&dump),
        Vec::<String>::new(),
        "held values keep no file"
    );
    for (i, (got, want)) in held.iter().enumerate() {
        assert!(got == want, "held value {i} changed after clear");
    }
}

/// Values that go straight to disk, each in a file of its own of exactly
/// four blocks: the budget takes exactly ten, and a refused insert or
/// replace changes nothing.
#[test]
fn disk_limit_is_returned_exactly_when_the_data_cannot_fit() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    let len = 16384 - 64 - 32; // file header, record header, value: 4 blocks
    let limit = 10 * 16384;
    let store: SpillStore<u32> = SpillStore::builder()
        .max_size(64 << 10)
        .max_disk_size(limit)
        .dump_dir(&dump)
        .segment_size(16 << 10)
        .shards(8)
        .build()
        .unwrap();
    for k in 0..10 {
        store.insert(k, value(u64::from(k), len)).unwrap();
    }
    assert_eq!(store.stats().spill_file_allocated_bytes, limit);
    let err = store.insert(10, value(10, len)).unwrap_err();
    match &err {
        Error::DiskLimit {
            needed,
            available,
            limit: l,
        } => assert_eq!((*needed, *available, *l), (16384, 0, limit)),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("disk limit"), "{err}");
    assert!(!store.contains_key(&10));
    // A replace needs room for the new value before the old one goes.
    assert!(matches!(
        store.insert(3, value(33, len)),
        Err(Error::DiskLimit { .. })
    ));
    assert_eq!(store.get(&3).unwrap().unwrap(), value(3, len));
    assert!(store.remove(&0).unwrap());
    store.insert(10, value(10, len)).unwrap();
    for k in 1..=10 {
        assert_eq!(store.get(&k).unwrap().unwrap(), value(u64::from(k), len));
    }
    check_figures(&store, &dump, "full budget");
    let s = store.stats();
    assert_eq!(
        (s.max_disk_size, s.disk_bytes),
        (Some(limit), 10 * len as u64)
    );
}

/// The spiller never takes the last `clean_ahead` bytes of the disk budget:
/// those stay for the writes that cannot wait. With room to spare, it cleans
/// its whole window, and evicting those values then writes nothing.
#[test]
fn copies_written_ahead_leave_the_last_clean_ahead_bytes_of_the_budget() {
    let run = |limit: u64| {
        let dir = tempfile::tempdir().unwrap();
        let store: SpillStore<u32> = SpillStore::builder()
            .max_size(64 << 10)
            .clean_ahead(32 << 10)
            .max_disk_size(limit)
            .dump_dir(dir.path().join("dump"))
            .shards(1)
            .build()
            .unwrap();
        for k in 0..16 {
            store.insert(k, value(u64::from(k), 4000)).unwrap();
        }
        store.quiesce();
        let stats = store.stats();
        assert!(
            stats.spill_file_allocated_bytes + (32 << 10) <= limit,
            "{stats:?}"
        );
        (store, dir)
    };
    // The window ends in the ninth value from the tail (9 x 4000 bytes
    // reach 32 KiB): nine copies and a segment header do not fit in 64 KiB
    // less the 32 KiB kept free, so nothing is written ahead.
    let (tight, _dir) = run(64 << 10);
    assert_eq!(tight.stats().cleaned, 0);
    tight.insert(16, value(16, 4000)).unwrap();
    assert_eq!((tight.stats().spills, tight.stats().respills), (1, 0));
    // With room, the 9 least recently used values get copies ...
    let (roomy, _dir) = run(1 << 20);
    assert_eq!(roomy.stats().cleaned, 9);
    assert_eq!(roomy.stats().cleaned_bytes, 9 * 4000);
    // ... so the next inserts evict them without a write.
    for k in 16..24 {
        roomy.insert(k, value(u64::from(k), 4000)).unwrap();
    }
    let stats = roomy.stats();
    assert_eq!((stats.spills, stats.respills), (0, 8), "{stats:?}");
    for k in 0..24 {
        assert_eq!(roomy.get(&k).unwrap().unwrap(), value(u64::from(k), 4000));
    }
}

/// Sizes from 100 B to 1 MiB, replaces, removes and reads, values held
/// across them: the files never occupy more than the budget, no value is
/// lost or altered, and a refused insert changes nothing.
#[test]
fn the_disk_budget_holds_under_a_random_workload() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    let limit = 6 << 20;
    let store: SpillStore<u32> = SpillStore::builder()
        .max_size(1 << 20)
        .max_disk_size(limit)
        .dump_dir(&dump)
        .segment_size(1 << 20)
        .shards(4)
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let mut model: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut held: Vec<(Bytes, Vec<u8>)> = Vec::new();
    let (mut refused, mut stored) = (0, 0);
    for step in 0..1500u64 {
        let k = rng.gen_range(0..60u32);
        match rng.gen_range(0..10) {
            0..=5 => {
                // Log-uniform sizes from 100 B to 1 MiB.
                let len = (100.0 * (10_486.0f64).powf(rng.gen::<f64>())) as usize;
                let v = value(step, len);
                match store.insert(k, v.clone()) {
                    Ok(()) => {
                        model.insert(k, v);
                        stored += 1;
                    }
                    Err(Error::DiskLimit {
                        needed,
                        available,
                        limit: l,
                    }) => {
                        assert!(needed > available && l == limit);
                        refused += 1;
                    }
                    Err(e) => panic!("step {step}: {e:?}"),
                }
            }
            6..=7 => assert_eq!(store.remove(&k).unwrap(), model.remove(&k).is_some()),
            _ => {
                let got = store.get(&k).unwrap();
                assert_eq!(got.as_deref(), model.get(&k).map(|v| &v[..]), "step {step}");
                if let Some(got) = got.filter(|_| held.len() < 30) {
                    held.push((got, model[&k].clone()));
                }
            }
        }
        if rng.gen_range(0..10) == 0 {
            held.pop();
        }
        assert!(spill_du(&dump) <= limit, "step {step}");
        if step % 25 == 0 {
            check_figures(&store, &dump, &format!("step {step}"));
            store.validate().unwrap();
        }
        let s = store.stats();
        let total: u64 = model.values().map(|v| v.len() as u64).sum();
        assert_eq!(s.memory_bytes + s.disk_bytes, total, "step {step}");
    }
    assert!(
        refused > 0 && stored > 10 * refused,
        "{stored} stored, {refused} refused"
    );
    for (k, v) in &model {
        assert_eq!(store.get(k).unwrap().unwrap(), v, "key {k}");
    }
    for (got, want) in &held {
        assert!(got == want);
    }
}

/// A child process spills values and is killed; the next store on its dir
/// deletes its spill files, recognised by their header, and keeps a foreign
/// file that only looks like one by name.
#[test]
fn spill_files_of_a_killed_process_are_removed_by_the_next_store() {
    const NAME: &str = "spill_files_of_a_killed_process_are_removed_by_the_next_store";
    if let Some((role, dir)) = child_role() {
        if role == "crash" {
            let store: SpillStore<u32> = SpillStore::builder()
                .max_size(256 << 10)
                .dump_dir(&dir)
                .segment_size(64 << 10)
                .shards(1)
                .build()
                .unwrap();
            for k in 0..300u32 {
                let len = if k % 50 == 0 { 100_000 } else { 2000 };
                store.insert(k, value(u64::from(k), len)).unwrap();
            }
            store.quiesce(); // no background write after the count
            println!("ready {}", store.stats().spill_files);
            std::thread::sleep(std::time::Duration::from_secs(120));
            panic!("was not killed");
        }
        return;
    }
    let parent = tempfile::tempdir().unwrap();
    let dump = parent.path().join("dump");
    fs::create_dir(&dump).unwrap();
    fs::write(dump.join("spill-00000001.seg"), b"not a spill file").unwrap();
    let mut child = spawn_child(NAME, "crash", &dump, "true");
    let stdout = child.stdout.take().unwrap();
    let files: usize = BufReader::new(stdout)
        .lines()
        .map(|l| l.unwrap())
        .find_map(|l| Some(l.split_once("ready ")?.1.trim().parse().unwrap()))
        .expect("the child reports its spill files");
    child.kill().unwrap();
    child.wait().unwrap();
    let left = data_files(&dump);
    assert_eq!(left.len(), files + 1, "{left:?}");
    let foreign_bytes = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(dump.join("spill-00000001.seg"))
            .unwrap()
            .blocks()
            * 512
    };
    let orphan_bytes = spill_du(&dump) - foreign_bytes;

    let store: SpillStore<u32> = SpillStore::builder()
        .max_size(256 << 10)
        .dump_dir(&dump)
        .build()
        .unwrap();
    let s = store.stats();
    assert_eq!(s.orphans_removed, files as u64);
    assert_eq!(s.orphan_bytes_removed, orphan_bytes);
    assert_eq!(data_files(&dump), ["spill-00000001.seg"]);
    assert_eq!(
        fs::read(dump.join("spill-00000001.seg")).unwrap(),
        b"not a spill file"
    );
    store.insert(1, vec![1; 100 << 10]).unwrap();
    assert_eq!(store.get(&1).unwrap().unwrap(), vec![1; 100 << 10]);
}

/// A foreign file named like a spill file is never deleted: not by `build`,
/// `clear`, dropping the store, nor `cleanup`.
#[test]
fn a_foreign_file_named_like_a_spill_file_survives() {
    let parent = tempfile::tempdir().unwrap();
    let dump = parent.path().join("dump");
    fs::create_dir(&dump).unwrap();
    let foreign = dump.join("spill-00000001.seg");
    // Starts like a spill file, but its header's checksum does not match.
    let mut content = b"SPILLSEG".to_vec();
    content.resize(8192, 0);
    fs::write(&foreign, &content).unwrap();
    let build = || {
        SpillStore::<u32>::builder()
            .max_size(1000)
            .dump_dir(&dump)
            .segment_size(4096)
            .build()
            .unwrap()
    };
    let store = build();
    assert_eq!(store.stats().orphans_removed, 0);
    for k in 0..100 {
        store.insert(k, vec![k as u8; 300]).unwrap();
    }
    assert!(store.stats().spill_files > 2);
    store.clear().unwrap();
    assert_eq!(fs::read(&foreign).unwrap(), content);
    for k in 0..100 {
        store.insert(k, vec![k as u8; 300]).unwrap();
    }
    drop(store);
    assert_eq!(fs::read(&foreign).unwrap(), content);
    let store = build();
    for k in 0..100 {
        store.insert(k, vec![k as u8; 300]).unwrap();
    }
    store.cleanup().unwrap();
    assert_eq!(data_files(&dump), ["spill-00000001.seg"]);
    assert_eq!(fs::read(&foreign).unwrap(), content);
}

/// Spill files and the lock file are 0600, a dump dir the store creates
/// 0700; a dir the caller made keeps its mode.
#[test]
fn spilled_data_stays_private() {
    let parent = tempfile::tempdir().unwrap();
    let created = parent.path().join("a").join("dump");
    let mine = parent.path().join("mine");
    fs::create_dir(&mine).unwrap();
    fs::set_permissions(&mine, fs::Permissions::from_mode(0o755)).unwrap();
    for (dump, dir_mode) in [(&created, 0o700), (&mine, 0o755)] {
        let store: SpillStore<u32> = SpillStore::builder()
            .max_size(8000)
            .dump_dir(dump)
            .segment_size(4096)
            .shards(1)
            .build()
            .unwrap();
        for k in 0..50 {
            store.insert(k, vec![k as u8; 300]).unwrap();
        }
        store.insert(99, vec![9; 5000]).unwrap(); // spills a file of its own later
        store.insert(100, vec![9; 5000]).unwrap();
        assert_eq!(mode(dump), dir_mode, "{dump:?}");
        let files = data_files(dump);
        assert!(files.len() > 2, "{files:?}");
        for f in files.iter().map(|f| dump.join(f)) {
            assert_eq!(mode(&f), 0o600, "{f:?}");
        }
        assert_eq!(mode(&dump.join(".spillstore.lock")), 0o600);
    }
    assert_eq!(mode(&parent.path().join("a")), 0o700);
}

/// Under `ulimit -n 64`: 2,000 values of 1 MiB in files of their own and
/// 200,000 values of 1 KiB, all read back twice in random order, some held
/// across, with the process's open descriptors under 64 throughout.
#[test]
fn descriptors_stay_under_a_low_limit() {
    const NAME: &str = "descriptors_stay_under_a_low_limit";
    if let Some((role, dir)) = child_role() {
        if role == "nofile" {
            low_descriptor_child(&dir);
        }
        return;
    }
    // 2 GiB of spill files: on a tmpfs when root, so the test does not wait
    // for a disk to write them.
    let tmpfs = common::is_root().then(|| Tmpfs::mount("3g")).flatten();
    let parent = tempfile::tempdir().unwrap();
    let dir = tmpfs.as_ref().map_or(parent.path(), |t| &t.path);
    let child = spawn_child(NAME, "nofile", dir, "ulimit -n 64");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("most open descriptors"))
        .unwrap_or_else(|| panic!("the child ran nothing: {stdout}"));
    eprintln!("{line}");
}

fn low_descriptor_child(dir: &Path) {
    let limits = fs::read_to_string("/proc/self/limits").unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(nofile.split_whitespace().nth(3), Some("64"), "{nofile}");
    // Shards of 512 KiB: 1 MiB values go straight to disk and are served
    // from their files. 4 MiB segments: a 1 MiB record gets a file of its
    // own, 1 KiB records share.
    let store: SpillStore<u32> = SpillStore::builder()
        .max_size(2 << 20)
        .dump_dir(dir.join("dump"))
        .segment_size(4 << 20)
        .shards(4)
        .build()
        .unwrap();
    let big = |k: u32| {
        let mut v = vec![k as u8; 1 << 20];
        v[..4].copy_from_slice(&k.to_le_bytes());
        v
    };
    let small = |k: u32| {
        let mut v = vec![(k >> 8) as u8; 1024];
        v[..4].copy_from_slice(&k.to_le_bytes());
        v
    };
    let value_of = |k: u32| if k < 2000 { big(k) } else { small(k) };
    let mut most = open_fds();
    let check = |most: &mut usize| {
        let n = open_fds();
        *most = (*most).max(n);
        assert!(n < 64, "{n} descriptors open");
    };
    for k in 0..2000u32 {
        store.insert(k, big(k)).unwrap();
        check(&mut most);
    }
    for k in 2000..202_000u32 {
        store.insert(k, small(k)).unwrap();
        if k % 500 == 0 {
            check(&mut most);
        }
    }
    let s = store.stats();
    assert!(s.spill_files > 2000, "{s:?}");
    assert!(s.open_spill_files <= s.max_open_spill_files, "{s:?}");
    let mut keys: Vec<u32> = (0..202_000).collect();
    let mut rng = StdRng::seed_from_u64(3);
    let mut held = Vec::new();
    for round in 0..2 {
        keys.shuffle(&mut rng);
        for (i, &k) in keys.iter().enumerate() {
            let got = store.get(&k).unwrap().unwrap();
            assert!(got == value_of(k), "round {round}: key {k}");
            if k < 2000 && held.len() < 20 {
                held.push((k, got));
            }
            if k < 2000 || i % 500 == 0 {
                check(&mut most);
            }
        }
    }
    for (k, v) in &held {
        assert!(*v == big(*k));
    }
    println!(
        "most open descriptors {most} (limit 64), {} spill files, at most {} open",
        s.spill_files, s.max_open_spill_files
    );
}

/// A measurement for BENCHMARKS.md, not a test: a store with 256 MiB of
/// values on disk (64 MiB more in memory), then 90% of the keys removed in
/// random order; prints `du` of the files against the live records at each
/// stage. Run with (the dump dir's parent from `SPILLSTORE_MEASURE_DIR`, or
/// a temporary directory):
///
/// `cargo test --release --test disk -- --ignored --nocapture measure_space_after_removing_90_percent`
#[test]
#[ignore = "a measurement for BENCHMARKS.md: writes 0.7 GiB"]
fn measure_space_after_removing_90_percent() {
    let parent = tempfile::tempdir_in(
        std::env::var_os("SPILLSTORE_MEASURE_DIR").map_or_else(std::env::temp_dir, Into::into),
    )
    .unwrap();
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    println!("| values | stage | du of the files | live records | du / live | goal |");
    println!("|---|---|---:|---:|---:|---|");
    for (len, label, factor) in [(64usize << 10, "64 KiB", 1.25), (100, "100 B", 2.0)] {
        let dump = parent.path().join(format!("dump-{len}"));
        let store: SpillStore<u32> = SpillStore::builder()
            .max_size(64 << 20)
            .dump_dir(&dump)
            .build()
            .unwrap();
        let n = ((320u64 << 20) / len as u64) as u32;
        for k in 0..n {
            store.insert(k, vec![k as u8; len]).unwrap();
        }
        let row = |stage: &str| {
            let s = store.stats();
            let du = spill_du(&dump);
            let goal = factor * s.spill_live_bytes as f64 + f64::from(16 << 20);
            println!(
                "| {label} | {stage} | {:.1} MiB | {:.1} MiB | {:.2} | du <= {factor} x live + 16 MiB: {} |",
                mib(du),
                mib(s.spill_live_bytes),
                du as f64 / s.spill_live_bytes.max(1) as f64,
                if du as f64 <= goal { "met" } else { "missed" }
            );
        };
        row(&format!("{} MiB on disk", store.stats().disk_bytes >> 20));
        let mut keys: Vec<u32> = (0..n).collect();
        keys.shuffle(&mut StdRng::seed_from_u64(1));
        for k in &keys[..n as usize * 9 / 10] {
            store.remove(k).unwrap();
        }
        row("90% removed");
        // The removes woke the background compaction thread: its pass done.
        store.quiesce();
        row("background pass done");
        store.insert(n, vec![0; len]).unwrap();
        row("then one insert");
        store.compact();
        row("then compact()");
    }
}

/// The disk budget counts the copies that resident values keep so that
/// evicting them again needs no write; when a spill would go past it, those
/// copies are given up first, and the insert succeeds. Each value is a file
/// of exactly four blocks; memory holds two values, the disk three.
#[test]
fn copies_kept_for_re_eviction_are_given_up_before_refusing() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    let len = 16384 - 64 - 32;
    let store: SpillStore<u32> = SpillStore::builder()
        .max_size(2 * len as u64)
        .max_disk_size(3 * 16384)
        .dump_dir(&dump)
        .segment_size(16 << 10)
        .shards(1)
        .exact_lru(true)
        // Only the copies reloads keep: none written ahead at odd times.
        .clean_ahead(0)
        .build()
        .unwrap();
    for k in 0..4 {
        store.insert(k, value(u64::from(k), len)).unwrap();
    }
    // 0 and 1 on disk, 2 and 3 in memory. Reading 0 brings it back and
    // keeps its file as a copy, writing 2 out: the budget is now full.
    assert_eq!(store.get(&0).unwrap().unwrap(), value(0, len));
    assert_eq!(store.location(&0), Some(Location::Memory));
    assert_eq!(store.stats().spill_file_allocated_bytes, 3 * 16384);
    // Inserting 4 must write 3 out: only giving up 0's copy makes room.
    let spills = store.stats().spills;
    store.insert(4, value(4, len)).unwrap();
    let s = store.stats();
    assert_eq!(s.spills, spills + 1);
    assert_eq!(s.spill_file_allocated_bytes, 3 * 16384);
    for k in 0..=4 {
        assert_eq!(
            store.get(&k).unwrap().unwrap(),
            value(u64::from(k), len),
            "key {k}"
        );
    }
    check_figures(&store, &dump, "copies given up");
    store.validate().unwrap();
}
