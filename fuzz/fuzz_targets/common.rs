//! Helpers shared by the fuzz targets (each target includes this file with
//! `mod common;`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A value of `len` bytes derived from `(key, generation)`, so that a value
/// served under the wrong key, or an older value of the same key, shows.
pub fn value(key: u64, generation: u64, len: usize) -> Vec<u8> {
    let mut x = key
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(generation.wrapping_mul(0xD1B5_4A32_D192_ED03))
        ^ (len as u64).rotate_left(17);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        // splitmix64
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&z.to_le_bytes()[..take]);
    }
    out
}

/// The spill files (`spill-*.seg`) in `dir`, sorted by name, with the length
/// `symlink_metadata` reports (0 for anything that is not a regular file).
pub fn spill_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut files: Vec<(PathBuf, u64)> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("spill-") && name.ends_with(".seg")
            })
            .map(|e| {
                let len = std::fs::symlink_metadata(e.path())
                    .ok()
                    .filter(|m| m.is_file())
                    .map_or(0, |m| m.len());
                (e.path(), len)
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}
