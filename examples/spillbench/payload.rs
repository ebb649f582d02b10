//! Self-describing, verifiable values and the keys they are stored under.
//!
//! A value for key index `i` at version `v` is `len` bytes:
//!
//! | bytes   | content                                                          |
//! |---------|------------------------------------------------------------------|
//! | `0..8`  | `i` as little-endian `u64`                                       |
//! | `8..16` | `v` as little-endian `u64`                                       |
//! | `16..`  | 8-byte words `noise[w] ^ seed(i, v)` for word index `w >= 2`, little-endian, the last one truncated |
//!
//! `noise` is one block of random words shared by all values of a run, and
//! `seed(i, v)` a hash of the header. So a body that belongs to another key or
//! version, or is shifted, truncated or torn, fails the check; any single
//! position can be recomputed in O(1) for sampled verification; and building
//! or fully checking a value is a vectorizable XOR pass over `len` bytes,
//! cheap next to the store operations being measured.

use rand::Rng;

/// Length of the `(index, version)` header at the start of every value.
pub(crate) const HEADER_LEN: usize = 16;

/// How many random body positions a sampled check looks at, in addition to
/// the header, the first body word and the last byte.
const SAMPLES: usize = 4;

/// The SplitMix64 finalizer: a cheap, well-mixing bijection on `u64`.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The 32-hex-character key for key index `index`: a hash of the index
/// (so consecutive indices land in unrelated shards) followed by the index
/// itself (so keys are unique and a key's index is visible when debugging).
pub(crate) fn key_for(index: u64) -> String {
    format!("{:016x}{index:016x}", mix64(index ^ 0x6b65_795f_6b65_795f))
}

/// Per-value word that the shared noise is XORed with.
fn seed(index: u64, version: u64) -> u64 {
    mix64(index ^ mix64(version.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// Reads the `(index, version)` header of a value of at least
/// [`HEADER_LEN`] bytes.
fn header(value: &[u8]) -> (u64, u64) {
    let word = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&value[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    (word(0), word(8))
}

/// Builds and checks the values of one run (all of the same length).
pub(crate) struct Payload {
    /// Length of every value in bytes (at least [`HEADER_LEN`]).
    len: usize,
    /// One random word per 8 bytes of value (the first two, under the
    /// header, are unused).
    noise: Vec<u64>,
}

impl Payload {
    /// Values of `len` (>= [`HEADER_LEN`]) bytes with noise derived from
    /// `seed`.
    pub(crate) fn new(len: usize, seed: u64) -> Self {
        debug_assert!(len >= HEADER_LEN);
        let noise = (0..len.div_ceil(8) as u64)
            .map(|w| mix64(seed ^ mix64(w)))
            .collect();
        Self { len, noise }
    }

    /// The expected byte at offset `pos` (>= [`HEADER_LEN`]) for `seed`.
    fn byte(&self, seed: u64, pos: usize) -> u8 {
        (self.noise[pos / 8] ^ seed).to_le_bytes()[pos % 8]
    }

    /// Builds the value for `(index, version)`.
    pub(crate) fn make(&self, index: u64, version: u64) -> Vec<u8> {
        let mut buf = vec![0u8; self.len];
        buf[0..8].copy_from_slice(&index.to_le_bytes());
        buf[8..16].copy_from_slice(&version.to_le_bytes());
        let seed = seed(index, version);
        let body = &mut buf[HEADER_LEN..];
        let noise = &self.noise[HEADER_LEN / 8..];
        let mut chunks = body.chunks_exact_mut(8);
        for (chunk, n) in (&mut chunks).zip(noise) {
            chunk.copy_from_slice(&(n ^ seed).to_le_bytes());
        }
        let tail = chunks.into_remainder();
        if let Some(last) = noise.last() {
            let bytes = (last ^ seed).to_le_bytes();
            let n = tail.len();
            tail.copy_from_slice(&bytes[..n]);
        }
        buf
    }

    /// Checks that `value` is a well-formed value for key `index` and
    /// returns the version it claims to be.
    ///
    /// With `full` every byte is compared; otherwise the length, the header,
    /// the first body word, the last byte and [`SAMPLES`] random positions
    /// are. Whether the version is one that may legitimately be observed is
    /// the caller's business. The error describes the first mismatch found.
    pub(crate) fn check(
        &self,
        value: &[u8],
        index: u64,
        full: bool,
        rng: &mut impl Rng,
    ) -> Result<u64, String> {
        let len = self.len;
        if value.len() != len {
            let claims = if value.len() >= HEADER_LEN {
                let (i, v) = header(value);
                format!(" (header claims key index {i}, version {v})")
            } else {
                String::new()
            };
            return Err(format!(
                "length is {} bytes, expected {len}{claims}",
                value.len()
            ));
        }
        let (stored_index, version) = header(value);
        if stored_index != index {
            return Err(format!(
                "header names key index {stored_index} (version {version}): \
                 the value of another key was returned"
            ));
        }
        let seed = seed(index, version);
        let bad_byte = |pos: usize| {
            format!(
                "byte at offset {pos} is {:#04x}, expected {:#04x} for version {version} \
                 (header intact, body corrupted or torn)",
                value[pos],
                self.byte(seed, pos)
            )
        };
        if full {
            let body = &value[HEADER_LEN..];
            let noise = &self.noise[HEADER_LEN / 8..];
            let words = body.chunks_exact(8).zip(noise);
            let all_equal = words.clone().fold(true, |ok, (chunk, n)| {
                ok & (chunk == (n ^ seed).to_le_bytes())
            });
            let tail_start = HEADER_LEN + body.len() / 8 * 8;
            let tail_ok = (tail_start..len).all(|pos| value[pos] == self.byte(seed, pos));
            if !(all_equal && tail_ok) {
                let pos = (HEADER_LEN..len)
                    .find(|&pos| value[pos] != self.byte(seed, pos))
                    .unwrap_or(HEADER_LEN);
                return Err(bad_byte(pos));
            }
        } else if len > HEADER_LEN {
            let first = HEADER_LEN..len.min(HEADER_LEN + 8);
            let fixed = first.chain([len - 1]);
            let sampled = (0..SAMPLES).map(|_| rng.gen_range(HEADER_LEN..len));
            for pos in fixed.chain(sampled) {
                if value[pos] != self.byte(seed, pos) {
                    return Err(bad_byte(pos));
                }
            }
        }
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn round_trip_and_detection() {
        let mut rng = StdRng::seed_from_u64(1);
        for len in [16, 17, 23, 24, 100, 4096, 65536] {
            let p = Payload::new(len, 9);
            let v = p.make(7, 3);
            assert_eq!(v.len(), len);
            assert_eq!(p.check(&v, 7, true, &mut rng), Ok(3));
            assert_eq!(p.check(&v, 7, false, &mut rng), Ok(3));
            assert!(p.check(&v, 8, false, &mut rng).is_err());
            assert!(p.check(&v[..len - 1], 7, false, &mut rng).is_err());
            if len > HEADER_LEN {
                let mut last = v.clone();
                last[len - 1] ^= 1;
                assert!(p.check(&last, 7, false, &mut rng).is_err());
                assert!(p.check(&last, 7, true, &mut rng).is_err());
                let mut mid = v.clone();
                mid[len / 2 + HEADER_LEN / 2] ^= 0x80;
                assert!(p.check(&mid, 7, true, &mut rng).is_err());
                // A body from another version under this version's header.
                let mut mixed = p.make(7, 4);
                mixed[8..16].copy_from_slice(&3u64.to_le_bytes());
                assert!(p.check(&mixed, 7, false, &mut rng).is_err());
                assert!(p.check(&mixed, 7, true, &mut rng).is_err());
            }
        }
        assert_eq!(key_for(5).len(), 32);
        assert_ne!(key_for(5), key_for(6));
    }
}
