//! The on-disk formats: the header every spill file starts with, and the
//! records after it (a fixed header, then the value's bytes).
//!
//! File header, at offset 0 of every spill file:
//!
//! ```text
//! offset  size  field
//!      0     8  magic "SPILLSEG"
//!      8     4  format version (little endian), 1
//!     12     4  flags (little endian): bit 0 set if the file holds one record
//!     16     8  the file's number, as in its name (little endian)
//!     24     8  the file's length when created (little endian)
//!     32    28  reserved, zero
//!     60     4  CRC-32 of bytes 0..60 (little endian)
//! ```
//!
//! It lets a later store recognise a spill file left behind by a crashed
//! one by its content, not by its name, and lets a reopened file be checked
//! to be the one this store created.
//!
//! Record, at any offset from 64 on:
//!
//! ```text
//! offset  size  field
//!      0     4  magic "SPL2"
//!      4     4  reserved, zero
//!      8     8  place (little endian): spill file number << 32 | offset
//!     16     8  value length in bytes (little endian)
//!     24     8  CRC-32 of the value bytes, zero-extended (little endian)
//!     32     n  the value
//! ```
//!
//! A record of a value of [`ALIGNED_VALUE_MIN`] bytes or more in a shared
//! segment has no header on disk: its segment keeps the value's checksum in
//! memory instead, and the value starts on a page boundary (see
//! [`record_offset`]). Its offset is still 32 bytes before its value, so
//! the layout above holds for it, except that those 32 bytes are not its
//! own: they belong to the record or the zeros before it. A cold read of
//! such a value reads its pages and nothing else (16 pages for 64 KiB, not
//! the 17 that header and value span), and values of whole pages written
//! one after another leave no gap between them.
//!
//! Spill files are never read by another store (one that finds them only
//! deletes them), so records carry no version. The checksum is CRC-32 (IEEE)
//! from crc32fast, which picks a carry-less-multiply kernel at run time:
//! about 19 GB/s here, twice aHash's portable fallback in a default build. It
//! guards against files altered behind the store's back, not against an
//! adversary who can also compute it; the header's place and length catch
//! records moved or swapped whole (for a headerless record, the checksum
//! kept for its offset does).

/// Bytes of the header at the start of every spill file; the first record
/// starts here.
pub(crate) const FILE_HEADER_LEN: u64 = 64;

const FILE_MAGIC: [u8; 8] = *b"SPILLSEG";
const FILE_VERSION: u32 = 1;
const FILE_DEDICATED: u32 = 1;

/// The header of spill file number `number`, created `size` bytes long.
pub(crate) fn file_header(
    number: u64,
    size: u64,
    dedicated: bool,
) -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&FILE_MAGIC);
    h[8..12].copy_from_slice(&FILE_VERSION.to_le_bytes());
    let flags = if dedicated { FILE_DEDICATED } else { 0 };
    h[12..16].copy_from_slice(&flags.to_le_bytes());
    h[16..24].copy_from_slice(&number.to_le_bytes());
    h[24..32].copy_from_slice(&size.to_le_bytes());
    let crc = crc32fast::hash(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks that `header` is a spill file header naming file `number`.
///
/// Returns what is wrong, as a reason.
pub(crate) fn check_file_header(header: &[u8], number: u64) -> Result<(), String> {
    if header.len() as u64 != FILE_HEADER_LEN {
        return Err(format!("file header is {} bytes", header.len()));
    }
    if header[0..8] != FILE_MAGIC {
        return Err("not a spill file (bad magic)".into());
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&header[60..64]);
    if crc32fast::hash(&header[..60]) != u32::from_le_bytes(crc) {
        return Err("file header checksum mismatch".into());
    }
    let stored = word(header, 16);
    if stored != number {
        return Err(format!("file header names file {stored}, not {number}"));
    }
    Ok(())
}

/// Bytes before the value in every record.
pub(crate) const HEADER_LEN: u64 = 32;

/// The page size large values are aligned to: the unit the page cache
/// reads a file in.
pub(crate) const PAGE: u64 = 4096;

/// Values this long or longer, in shared segments, are stored without a
/// header, page aligned, with their checksum kept in memory by their
/// segment. Below it, the zeros that align a value could cost more disk
/// than the page they spare a cold read.
pub(crate) const ALIGNED_VALUE_MIN: u64 = 16 << 10;

/// Whether a record of a `value_len`-byte value in a shared segment has no
/// header on disk (see the module docs).
pub(crate) fn headerless(value_len: u64) -> bool {
    value_len >= ALIGNED_VALUE_MIN
}

/// The offset of the record of a `value_len`-byte value appended to a
/// shared segment written up to `end`: `end` itself, or for a
/// [`headerless`] record, 32 bytes before its value, which starts at the
/// first page boundary at or after `end` (at `end` if not `align`, for file
/// systems whose blocks are smaller than a page: zeros there could fill a
/// block no record holds). Never more than a page past `end`.
pub(crate) fn record_offset(end: u64, value_len: u64, align: bool) -> u64 {
    if !headerless(value_len) {
        return end;
    }
    let value_at = if align {
        end.next_multiple_of(PAGE)
    } else {
        end
    };
    value_at - HEADER_LEN
}

const MAGIC: [u8; 4] = *b"SPL2";

/// The checksum stored in a record's header (a CRC-32 in the low bits).
pub(crate) fn checksum(value: &[u8]) -> u64 {
    u64::from(crc32fast::hash(value))
}

/// Where a record belongs: its file's number and its offset in the file.
/// A record copied or moved anywhere else fails its header check.
pub(crate) fn place(file_number: u64, offset: u64) -> u64 {
    file_number << 32 | (offset & u64::from(u32::MAX))
}

/// The header of the record at `place` holding `value`.
#[cfg(test)]
pub(crate) fn header(place: u64, value: &[u8]) -> [u8; HEADER_LEN as usize] {
    header_with_checksum(place, value.len() as u64, checksum(value))
}

/// The header of the record at `place` holding a value of `len` bytes whose
/// [`checksum`] is `checksum`.
pub(crate) fn header_with_checksum(
    place: u64,
    len: u64,
    checksum: u64,
) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..4].copy_from_slice(&MAGIC);
    h[8..16].copy_from_slice(&place.to_le_bytes());
    h[16..24].copy_from_slice(&len.to_le_bytes());
    h[24..32].copy_from_slice(&checksum.to_le_bytes());
    h
}

/// Checks that `header` is the header of a `len`-byte value at `place`.
///
/// Returns what is wrong, as the reason of an `Error::Corrupted`.
pub(crate) fn check_header(header: &[u8], place: u64, len: u64) -> Result<(), String> {
    if header.len() as u64 != HEADER_LEN {
        return Err(format!("header is {} bytes", header.len()));
    }
    if header[0..4] != MAGIC {
        return Err("bad magic".into());
    }
    let stored = word(header, 8);
    if stored != place {
        return Err(format!("record of place {stored:#x} found at {place:#x}"));
    }
    let stored_len = word(header, 16);
    if stored_len != len {
        return Err(format!("length field {stored_len} instead of {len}"));
    }
    Ok(())
}

/// Checks `value` against the checksum in its record's `header`.
pub(crate) fn check_value(header: &[u8], value: &[u8]) -> Result<(), String> {
    check_checksum(header, checksum(value))
}

/// Checks a value's computed checksum `sum` against `kept`, the checksum
/// kept apart from a header (a headerless record's).
pub(crate) fn check_kept_checksum(sum: u64, kept: u64) -> Result<(), String> {
    if sum != kept {
        return Err("checksum mismatch".into());
    }
    Ok(())
}

/// Checks a value's already computed `checksum` against its `header`.
pub(crate) fn check_checksum(header: &[u8], checksum: u64) -> Result<(), String> {
    if word(header, 24) != checksum {
        return Err("checksum mismatch".into());
    }
    Ok(())
}

fn word(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks a whole record the way a reload does.
    fn verify(record: &[u8], id: u64, len: u64) -> Result<(), String> {
        if (record.len() as u64) < HEADER_LEN {
            return Err("short".into());
        }
        let (header, value) = record.split_at(HEADER_LEN as usize);
        check_header(header, id, len)?;
        if value.len() as u64 != len {
            return Err("value length".into());
        }
        check_value(header, value)
    }

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
    fn file_headers_name_their_file() {
        let h = file_header(7, 1 << 20, false);
        assert_eq!(check_file_header(&h, 7), Ok(()));
        assert!(check_file_header(&h, 8)
            .unwrap_err()
            .contains("names file 7"));
        for i in 0..h.len() {
            let mut bad = h;
            bad[i] ^= 0x10;
            assert!(
                check_file_header(&bad, 7).is_err(),
                "flip at {i} went unnoticed"
            );
        }
        assert!(check_file_header(b"old", 7).is_err());
    }

    #[test]
    fn large_values_start_on_a_page_and_small_records_where_the_last_ended() {
        for end in [64, 100, 4000, 4064, 4096, 8191, 70_000] {
            assert_eq!(record_offset(end, 100, true), end);
            assert_eq!(record_offset(end, ALIGNED_VALUE_MIN - 1, true), end);
            for len in [ALIGNED_VALUE_MIN, 64 << 10, 100_000] {
                let value_at = record_offset(end, len, true) + HEADER_LEN;
                assert_eq!(value_at % PAGE, 0);
                assert!((end..end + PAGE).contains(&value_at), "{end} {len}");
                assert_eq!(record_offset(end, len, false) + HEADER_LEN, end);
            }
        }
        // Whole-page values one after another: no gap.
        let first = record_offset(64, 64 << 10, true) + HEADER_LEN;
        let next = record_offset(first + (64 << 10), 64 << 10, true) + HEADER_LEN;
        assert_eq!(next, first + (64 << 10));
    }

    #[test]
    fn wrong_id_length_or_size_is_detected() {
        let r = record(1, b"abc");
        assert!(verify(&r, 2, 3).unwrap_err().contains("place"));
        assert!(verify(&r, 1, 4).is_err());
        assert!(verify(&r[..r.len() - 1], 1, 3).is_err());
        assert!(verify(&r, 1, u64::MAX).is_err());
    }
}
