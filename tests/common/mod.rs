//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;

use spillstore::SpillStore;

/// A store with `max_size` bytes of memory and `shards` shards in a fresh
/// dump dir inside `parent`.
pub fn store(parent: &Path, max_size: u64, shards: usize) -> SpillStore {
    SpillStore::builder()
        .max_size(max_size)
        .dump_dir(parent.join("dump"))
        .shards(shards)
        .build()
        .expect("build store")
}

/// The names in `dir`, sorted, without the store's lock file.
pub fn data_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".spillstore.lock")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A value of `len` bytes that encodes `tag`, so mix-ups are visible.
pub fn value(tag: u64, len: usize) -> Vec<u8> {
    let mut x = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Whether this process runs as root (needed to mount tmpfs).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
