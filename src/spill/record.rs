//! The on-disk record format: a fixed header, then the value's bytes.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "SPL1"
//!      4     4  reserved, zero
//!      8     8  entry id (little endian): which stored value this is
//!     16     8  value length in bytes (little endian)
//!     24     8  checksum of the value bytes (little endian)
//!     32     n  the value
//! ```
//!
//! Spill files live only as long as the store that wrote them, so the format
//! carries no version and the checksum need not be stable across processes:
//! it is aHash with fixed seeds, which runs at memory speed with AES-NI. It
//! guards against files altered behind the store's back, not against an
//! adversary who can also compute it.

/// Bytes before the value in every record.
pub(crate) const HEADER_LEN: u64 = 32;

const MAGIC: [u8; 4] = *b"SPL1";

/// Fixed seeds: any constants work, they only need to be the same for the
/// writer and the reader within one process.
fn checksum_state() -> ahash::RandomState {
    ahash::RandomState::with_seeds(
        0x243f_6a88_85a3_08d3,
        0x1319_8a2e_0370_7344,
        0xa409_3822_299f_31d0,
        0x082e_fa98_ec4e_6c89,
    )
}

/// The checksum stored in a record's header.
pub(crate) fn checksum(value: &[u8]) -> u64 {
    checksum_state().hash_one(value)
}

/// The header of the record for value `id` with bytes `value`.
pub(crate) fn header(id: u64, value: &[u8]) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..4].copy_from_slice(&MAGIC);
    h[8..16].copy_from_slice(&id.to_le_bytes());
    h[16..24].copy_from_slice(&(value.len() as u64).to_le_bytes());
    h[24..32].copy_from_slice(&checksum(value).to_le_bytes());
    h
}

/// Checks that `record` (header and value) holds value `id` of `len` bytes.
///
/// Returns what is wrong, as the reason of an `Error::Corrupted`.
pub(crate) fn verify(record: &[u8], id: u64, len: u64) -> Result<(), String> {
    let Some(expected_len) = len.checked_add(HEADER_LEN) else {
        return Err(format!("value length {len} overflows"));
    };
    if record.len() as u64 != expected_len {
        return Err(format!(
            "record is {} bytes, expected {expected_len}",
            record.len()
        ));
    }
    let word = |at: usize| u64::from_le_bytes(record[at..at + 8].try_into().expect("8 bytes"));
    if record[0..4] != MAGIC {
        return Err("bad magic".into());
    }
    if word(8) != id {
        return Err(format!("holds entry {} instead of {id}", word(8)));
    }
    if word(16) != len {
        return Err(format!("length field {} instead of {len}", word(16)));
    }
    let value = &record[HEADER_LEN as usize..];
    if word(24) != checksum(value) {
        return Err("checksum mismatch".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, value: &[u8]) -> Vec<u8> {
        let mut r = header(id, value).to_vec();
        r.extend_from_slice(value);
        r
    }

    #[test]
    fn a_written_record_verifies() {
        let r = record(7, b"hello");
        assert_eq!(verify(&r, 7, 5), Ok(()));
        assert_eq!(verify(&record(0, b""), 0, 0), Ok(()));
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let r = record(42, b"some value bytes");
        for i in 0..r.len() {
            if (4..8).contains(&i) {
                continue; // reserved bytes carry no information
            }
            let mut bad = r.clone();
            bad[i] ^= 0x01;
            assert!(verify(&bad, 42, 16).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn wrong_id_length_or_size_is_detected() {
        let r = record(1, b"abc");
        assert!(verify(&r, 2, 3).unwrap_err().contains("entry"));
        assert!(verify(&r, 1, 4).is_err());
        assert!(verify(&r[..r.len() - 1], 1, 3).is_err());
        assert!(verify(&r, 1, u64::MAX).is_err());
    }
}
