//! Which file-system blocks of a shared segment are allocated, which are
//! still needed, and what the segment occupies on disk.
//!
//! Pure bookkeeping: no I/O, no locks (the segment keeps a [`BlockMap`]
//! behind its mutex), no `unsafe`.
//!
//! - **Holds.** Every block counts the holds on it: the file header (block 0,
//!   for the segment's whole life), each record overlapping it, and each
//!   *pin* (a reader in flight, or a value handed out as a slice of the
//!   mapping). A block without holds is dead.
//! - **Final.** Records are appended at `end`, so a block wholly below `end`
//!   never gets a new hold; once the segment is sealed every block is final.
//!   Only final dead blocks may be freed: a block the writer may still append
//!   into is kept.
//! - **Allocated.** A block is allocated from the moment a record (or the
//!   header) is placed over it until a hole is punched over it. Records are
//!   placed beyond `end` only, so placing one allocates exactly the blocks
//!   from `ceil(end / block)` to `ceil(new_end / block)`: the writer can price
//!   a batch before placing it, with plain arithmetic ([`append_cost`]).
//!
//! **What a segment occupies** ([`BlockMap::accounted`]) is its allocated
//! blocks plus an allowance for the file system's own map of the file's
//! extents, which `st_blocks` (and so `du`) counts too: ext4 keeps up to four
//! extents in the inode and needs a 4 KiB block per 340 extents beyond that
//! (XFS about 250). Punching holes splits extents, so the allowance assumes
//! the worst: as many extents as the touched blocks can form (one every other
//! block), at 170 per block (half-full blocks after splits). The allowance
//! depends only on how far the segment was written, never on holes, so
//! punching never makes it grow and pricing a write stays exact. For a full
//! 16 MiB segment it is 14 blocks (0.34%); tmpfs needs none of it.

use std::ops::Range;

/// Extents a file system keeps in the inode itself (ext4: four).
const INLINE_EXTENTS: u64 = 4;
/// Extents per 4 KiB extent-tree block, counted half full (ext4 holds 340).
const EXTENTS_PER_BLOCK: u64 = 170;
/// Blocks a file written in one sequential pass spans per extent, at the
/// least (ext4 extents reach 32768 blocks; fragmented free space gives less).
const BLOCKS_PER_SEQUENTIAL_EXTENT: u64 = 2048;

/// Extent-map blocks a file system may need for `extents` extents.
pub(super) fn extent_map_blocks(extents: u64) -> u64 {
    if extents <= INLINE_EXTENTS {
        return 0;
    }
    let leaves = extents.div_ceil(EXTENTS_PER_BLOCK);
    let index = if leaves > INLINE_EXTENTS {
        leaves.div_ceil(EXTENTS_PER_BLOCK)
    } else {
        0
    };
    leaves + index
}

/// Extent-map allowance of a shared segment with `touched` blocks written.
fn shared_extent_map_blocks(touched: u64) -> u64 {
    extent_map_blocks(touched.div_ceil(2))
}

/// Bytes a file of `len` bytes written once, sequentially, occupies:
/// its blocks plus the extent map they may need.
pub(super) fn sequential_file_cost(len: u64, block: u64) -> u64 {
    let blocks = len.div_ceil(block);
    (blocks + extent_map_blocks(blocks.div_ceil(BLOCKS_PER_SEQUENTIAL_EXTENT))) * block
}

/// Bytes that appending `len` bytes at `end` adds to a shared segment.
pub(super) fn append_cost(end: u64, len: u64, block: u64) -> u64 {
    let before = end.div_ceil(block);
    let after = (end + len).div_ceil(block);
    let map = shared_extent_map_blocks(after) - shared_extent_map_blocks(before);
    (after - before + map) * block
}

/// The block bookkeeping of one shared segment.
pub(super) struct BlockMap {
    /// Block size in bytes, a power of two.
    block: u64,
    /// Holds per block.
    holds: Vec<u32>,
    /// One bit per block: allocated (written, not punched).
    allocated: Vec<u64>,
    allocated_blocks: u64,
    /// Bytes handed out so far, the file header included.
    end: u64,
    sealed: bool,
    /// Holds other than the file header's.
    holders: u64,
    /// Blocks dead, final and still allocated: what punching would free.
    pending: u64,
}

impl BlockMap {
    /// The map of a new segment of `size` bytes whose first `header` bytes
    /// are its file header (held, and allocated, for the segment's life).
    pub(super) fn new(size: u64, header: u64, block: u64) -> Self {
        debug_assert!(block.is_power_of_two());
        let blocks = size.div_ceil(block) as usize;
        let mut map = BlockMap {
            block,
            holds: vec![0; blocks],
            allocated: vec![0; blocks.div_ceil(64)],
            allocated_blocks: 0,
            end: 0,
            sealed: false,
            holders: 0,
            pending: 0,
        };
        map.place(0, header);
        map.holders = 0;
        map
    }

    /// Bytes the segment occupies on disk: allocated blocks plus the extent
    /// map allowance (see the module docs).
    pub(super) fn accounted(&self) -> u64 {
        let touched = self.end.div_ceil(self.block);
        (self.allocated_blocks + shared_extent_map_blocks(touched)) * self.block
    }

    /// Places a new record's bytes at `offset`: `end`, or less than a block
    /// past it (a headerless value starts on the next page boundary, see
    /// [`super::record::record_offset`]). Holds its blocks and allocates
    /// those not yet allocated up to its end: the zeros before it are
    /// shorter than a block, so every block they reach holds a byte of this
    /// record or of the one before. Returns the bytes this adds to
    /// [`accounted`](Self::accounted), which is what [`append_cost`] priced
    /// for the bytes from `end` to the record's end.
    pub(super) fn place(&mut self, offset: u64, len: u64) -> u64 {
        debug_assert!(
            offset >= self.end && offset - self.end < self.block,
            "records are appended, after less than a block of zeros"
        );
        let before = self.accounted();
        // The block the last record ended in, if this one starts past it
        // (zeros fill the rest of it): final once this one is placed.
        let last = (self.end / self.block) as usize;
        let left_behind =
            !self.end.is_multiple_of(self.block) && offset >= (last as u64 + 1) * self.block;
        let fresh = self.end.div_ceil(self.block);
        self.end = offset + len;
        for b in fresh..self.end.div_ceil(self.block) {
            self.set_allocated(b as usize);
        }
        self.hold(offset, len);
        if left_behind && self.holds[last] == 0 && self.is_allocated(last) {
            // Dead already: its record is gone.
            self.pending += 1;
        }
        self.accounted() - before
    }

    /// Takes one more hold on the blocks of `offset..offset + len`, which
    /// are held already (by the record a pin comes from).
    pub(super) fn hold(&mut self, offset: u64, len: u64) {
        for b in self.span(offset, len) {
            self.holds[b] += 1;
        }
        self.holders += 1;
    }

    /// Drops a hold on `offset..offset + len`; blocks left dead and final
    /// become pending (see [`pending_bytes`](Self::pending_bytes)). A
    /// record's inner blocks are held only by it and its readers, so they die
    /// together, with the ends if no neighbour holds them.
    pub(super) fn release(&mut self, offset: u64, len: u64) {
        for b in self.span(offset, len) {
            self.holds[b] -= 1;
            if self.holds[b] == 0 && self.is_final(b) && self.is_allocated(b) {
                self.pending += 1;
            }
        }
        self.holders -= 1;
    }

    /// Marks that nothing more will be appended: the last touched block
    /// becomes final, and pending if nobody holds it.
    pub(super) fn seal(&mut self) {
        if self.sealed {
            return;
        }
        self.sealed = true;
        if let Some(tail) = (self.end.div_ceil(self.block) as usize).checked_sub(1) {
            if self.holds[tail] == 0 && self.is_allocated(tail) {
                self.pending += 1;
            }
        }
    }

    /// Bytes that punching holes over the dead blocks would free now; zero
    /// for a sealed segment nobody holds: that file is about to be deleted
    /// whole, and punching it first would be wasted work. (The writer's
    /// segment may get new records even with no holder left, so its dead
    /// blocks count.)
    pub(super) fn pending_bytes(&self) -> u64 {
        if self.holders == 0 && self.sealed {
            0
        } else {
            self.pending * self.block
        }
    }

    /// Every final, dead, allocated block, as byte ranges: where to punch.
    pub(super) fn dead_ranges(&self) -> Vec<Range<u64>> {
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for b in 0..self.holds.len() {
            if self.holds[b] == 0 && self.is_final(b) && self.is_allocated(b) {
                let r = self.bytes(b..b + 1);
                match ranges.last_mut() {
                    Some(last) if last.end == r.start => last.end = r.end,
                    _ => ranges.push(r),
                }
            }
        }
        ranges
    }

    /// Records that a hole was punched over `range` (block aligned). Returns
    /// the bytes freed: blocks of it still counted as allocated and dead.
    pub(super) fn punched(&mut self, range: Range<u64>) -> u64 {
        let mut freed = 0;
        for b in range.start / self.block..range.end.div_ceil(self.block) {
            let b = b as usize;
            if self.holds[b] == 0 && self.is_allocated(b) {
                self.allocated[b / 64] &= !(1 << (b % 64));
                self.allocated_blocks -= 1;
                self.pending -= 1;
                freed += self.block;
            }
        }
        freed
    }

    /// Bytes that dropping one hold on each of `ranges` (given as offset and
    /// length) would free at once, without changing anything: the whole
    /// segment if no holder would be left (the file is deleted), else the
    /// blocks left dead, final and allocated (freed if holes can be punched).
    pub(super) fn freed_by_releasing(&self, ranges: &[(u64, u64)], can_punch: bool) -> u64 {
        if self.holders <= ranges.len() as u64 {
            return self.accounted();
        }
        if !can_punch {
            return 0;
        }
        let mut holds = std::collections::HashMap::new();
        for &(offset, len) in ranges {
            for b in self.span(offset, len) {
                *holds.entry(b).or_insert(self.holds[b]) -= 1;
            }
        }
        let dead = holds
            .iter()
            .filter(|&(&b, &h)| h == 0 && self.is_final(b) && self.is_allocated(b))
            .count();
        dead as u64 * self.block
    }

    /// Checks the counters against the per-block state.
    #[cfg(test)]
    fn validate(&self) -> Result<(), String> {
        let set: u64 = self
            .allocated
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum();
        if set != self.allocated_blocks {
            return Err(format!(
                "{set} blocks marked allocated, {} counted",
                self.allocated_blocks
            ));
        }
        for (b, &h) in self.holds.iter().enumerate() {
            if h > 0 && !self.is_allocated(b) {
                return Err(format!("block {b} is held but not allocated"));
            }
        }
        let dead = (0..self.holds.len())
            .filter(|&b| self.holds[b] == 0 && self.is_final(b) && self.is_allocated(b))
            .count() as u64;
        if dead != self.pending {
            return Err(format!("{dead} blocks dead, {} pending", self.pending));
        }
        Ok(())
    }

    fn span(&self, offset: u64, len: u64) -> Range<usize> {
        debug_assert!(len > 0);
        (offset / self.block) as usize..(offset + len).div_ceil(self.block) as usize
    }

    fn bytes(&self, blocks: Range<usize>) -> Range<u64> {
        blocks.start as u64 * self.block..blocks.end as u64 * self.block
    }

    fn is_final(&self, b: usize) -> bool {
        self.sealed || (b as u64 + 1) * self.block <= self.end
    }

    fn is_allocated(&self, b: usize) -> bool {
        self.allocated[b / 64] & (1 << (b % 64)) != 0
    }

    fn set_allocated(&mut self, b: usize) {
        debug_assert!(!self.is_allocated(b));
        self.allocated[b / 64] |= 1 << (b % 64);
        self.allocated_blocks += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = 4096;

    fn map() -> BlockMap {
        BlockMap::new(16 * B, 64, B)
    }

    #[test]
    fn placing_allocates_what_append_cost_priced() {
        let mut m = map();
        assert_eq!(m.accounted(), B, "the header's block");
        let mut end = 64;
        for len in [100, 5000, 4096, 1, 30_000] {
            let priced = append_cost(end, len, B);
            assert_eq!(m.place(end, len), priced, "len {len}");
            end += len;
        }
        assert_eq!(m.end, end);
        m.validate().unwrap();
    }

    /// A record placed after zeros (a headerless value on the next page
    /// boundary): the zeros' blocks are priced and allocated with it, and
    /// held by it or the record before, so no block is left allocated with
    /// no holder; one placed right at the end of the last shares no block.
    #[test]
    fn zeros_before_a_record_are_priced_and_held() {
        let mut m = map();
        m.place(64, 100);
        let end = 164;
        assert_eq!(m.place(B, B), append_cost(end, 2 * B - end, B));
        m.place(2 * B, B);
        m.validate().unwrap();
        assert!((0..3).all(|b| m.holds[b] > 0));
        m.release(64, 100);
        assert_eq!(m.holds[0], 1, "the file header");
        m.seal();
        m.release(B, B);
        assert_eq!(m.holds[..3], [1, 0, 1]);
        m.release(2 * B, B);
        m.validate().unwrap();
        // The record before gone first: the block it ended in is dead, and
        // final once the next record is placed past it.
        let mut m = map();
        m.place(64, B);
        m.release(64, B);
        assert_eq!(m.pending_bytes(), 0, "block 1 may still get a record");
        m.place(2 * B, B);
        assert_eq!(m.pending_bytes(), B, "block 1 is final and dead");
        let dead = m.dead_ranges();
        assert_eq!((dead.len(), dead[0].clone()), (1, B..2 * B));
        assert_eq!(m.punched(B..2 * B), B);
        m.validate().unwrap();
    }

    #[test]
    fn a_dead_record_frees_its_own_blocks_not_its_neighbours() {
        let mut m = map();
        m.place(64, 100); // shares block 0 with the header
        m.place(164, 3 * B); // blocks 0..=3
        m.place(164 + 3 * B, 100); // block 3
        m.place(264 + 3 * B, 10); // keeps the writer beyond block 3
                                  // The middle record's inner blocks 1 and 2 are dead and final.
        m.release(164, 3 * B);
        assert_eq!(m.pending_bytes(), 2 * B);
        assert_eq!(m.dead_ranges(), vec![B..3 * B]);
        assert_eq!(m.punched(B..3 * B), 2 * B);
        assert_eq!(m.punched(B..3 * B), 0, "counted once");
        assert_eq!(m.pending_bytes(), 0);
        // The first record's block 0 is the header's too: never freed.
        m.release(64, 100);
        assert_eq!(m.pending_bytes(), 0);
        m.validate().unwrap();
    }

    #[test]
    fn the_tail_block_is_freed_only_once_sealed() {
        let mut m = map();
        m.place(64, B - 64); // block 0
        m.place(B, 100); // block 1, not final: the writer is in it
        m.place(B + 100, 10); // block 1
        m.release(B, 100);
        m.release(B + 100, 10);
        assert_eq!(m.pending_bytes(), 0);
        m.seal();
        assert_eq!(m.dead_ranges(), vec![B..2 * B]);
        assert_eq!(m.pending_bytes(), B);
        m.seal();
        assert_eq!(m.pending_bytes(), B);
        m.validate().unwrap();
    }

    #[test]
    fn a_reader_keeps_blocks_until_it_goes() {
        let mut m = map();
        m.place(64, 3 * B);
        m.place(64 + 3 * B, 1);
        m.hold(64, 3 * B); // a reader in flight
        m.release(64, 3 * B);
        assert_eq!(m.pending_bytes(), 0);
        m.release(64, 3 * B);
        assert_eq!(m.dead_ranges(), vec![B..3 * B]);
        m.validate().unwrap();
    }

    #[test]
    fn the_last_holder_frees_nothing_the_file_goes_whole() {
        let mut m = map();
        m.place(64, 3 * B);
        m.seal();
        assert_eq!(m.pending_bytes(), 0, "the last block is held");
        assert_eq!(m.freed_by_releasing(&[(64, 3 * B)], true), m.accounted());
        m.release(64, 3 * B);
        assert_eq!(m.pending_bytes(), 0, "nobody holds the file: deleted whole");
    }

    #[test]
    fn freed_by_releasing_predicts_release() {
        let mut m = map();
        let recs = [(64, 2000), (2064, 9000), (11_064, 100), (11_164, 5000)];
        for &(o, l) in &recs {
            m.place(o, l);
        }
        assert_eq!(m.freed_by_releasing(&[(2064, 9000)], true), B);
        assert_eq!(m.freed_by_releasing(&[(2064, 9000)], false), 0);
        // Block 2 stays held by the last record; block 3 is not final yet.
        let three = [(2064, 9000), (11_064, 100), (11_164, 5000)];
        assert_eq!(m.freed_by_releasing(&three[..2], true), B);
        assert_eq!(m.freed_by_releasing(&three, true), 2 * B);
        m.release(2064, 9000);
        assert_eq!(m.pending_bytes(), B);
        assert_eq!(m.punched(B..2 * B), B);
        assert_eq!(m.dead_ranges(), Vec::<Range<u64>>::new());
        m.seal();
        m.release(11_164, 5000);
        assert_eq!(m.dead_ranges(), vec![3 * B..4 * B]);
        m.validate().unwrap();
    }

    #[test]
    fn extent_map_allowance() {
        assert_eq!(extent_map_blocks(4), 0);
        assert_eq!(extent_map_blocks(5), 1);
        assert_eq!(extent_map_blocks(2048), 14);
        // A full 16 MiB segment of 4 KiB blocks.
        assert_eq!(shared_extent_map_blocks(4096), 14);
        // 256 blocks in one extent: no extent-map allowance.
        assert_eq!(sequential_file_cost(1 << 20, B), 1 << 20);
        assert_eq!(sequential_file_cost(1, B), B);
    }
}
