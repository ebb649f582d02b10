//! Which large values a reload brings back into memory (the default CLOCK
//! mode only; with `exact_lru` every value that fits is brought back, as in
//! the seed).
//!
//! Bringing a value back costs a copy of it (the copy is most of a large
//! value's reload: about memcpy's speed, a third of reading the bytes in
//! place) and pushes as many bytes of other values out of memory. That pays
//! only if the value is read again before it leaves memory again, that is
//! within about a shard's share of bytes coming in. A large value read once
//! in a long while (a scan, or the cold end of the popularity curve) would
//! leave unread, after pushing out values that were being read.
//!
//! So a value of [`MIN_LEN`] bytes or more comes back on its second read
//! within the shard's share of large reloads (counted in bytes), not on its
//! first: the first is served from the spill file without a copy and leaves
//! memory as it was. The shard remembers the reads it did not admit (the
//! key's hash and where the reload count stood), in a ring that holds
//! enough of them to cover its share, up to [`MAX_REMEMBERED`].

/// Values of at least this many bytes wait for a second read to come back.
pub(crate) const MIN_LEN: u64 = 256 << 10;

/// The most reads a shard remembers (16 bytes each): enough for a share of
/// 256 MiB of values of [`MIN_LEN`]; larger shares remember less far back.
const MAX_REMEMBERED: u64 = 1024;

/// One shard's memory of the large reads it did not admit.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    /// Value bytes of the large reloads so far (admitted or not).
    reloaded: u64,
    /// `(hash, reloaded after that read)` of the reads not admitted, oldest
    /// overwritten first; a `reloaded` of 0 marks a free or spent entry.
    seen: Vec<(u64, u64)>,
    /// Where the next entry goes once `seen` is full.
    next: usize,
}

impl Admission {
    /// Whether a reload of `len` bytes of the key hashed `hash` brings the
    /// value back, for a shard whose share of memory is `budget` bytes;
    /// remembers the read if not. Values under [`MIN_LEN`] always come back.
    pub(crate) fn admits(&mut self, hash: u64, len: u64, budget: u64) -> bool {
        if len < MIN_LEN {
            return true;
        }
        let now = self.reloaded;
        self.reloaded = now.saturating_add(len);
        let recent = self
            .seen
            .iter()
            .position(|&(h, at)| h == hash && at != 0 && now - at < budget);
        if let Some(i) = recent {
            self.seen[i].1 = 0; // spent: a third read starts over
            return true;
        }
        let capacity = (budget / MIN_LEN).clamp(1, MAX_REMEMBERED) as usize;
        let entry = (hash, self.reloaded);
        if self.seen.len() < capacity {
            self.seen.push(entry);
        } else {
            self.next %= self.seen.len();
            self.seen[self.next] = entry;
            self.next += 1;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: u64 = 4 * MIN_LEN;

    #[test]
    fn small_values_always_come_back() {
        let mut a = Admission::default();
        assert!(a.admits(1, MIN_LEN - 1, BUDGET));
        assert!(a.seen.is_empty());
    }

    #[test]
    fn a_large_value_comes_back_on_its_second_read_within_the_share() {
        let mut a = Admission::default();
        assert!(!a.admits(7, MIN_LEN, BUDGET), "first read");
        assert!(!a.admits(8, MIN_LEN, BUDGET));
        assert!(a.admits(7, MIN_LEN, BUDGET), "second read, 1 value between");
        assert!(!a.admits(7, MIN_LEN, BUDGET), "spent: starts over");
        // Read again only after a share's worth of other large reloads
        // (two of twice the size: its entry is still in the ring).
        assert!(!a.admits(100, 2 * MIN_LEN, BUDGET));
        assert!(!a.admits(101, 2 * MIN_LEN, BUDGET));
        assert!(a.seen.iter().any(|&(h, at)| h == 7 && at != 0));
        assert!(!a.admits(7, MIN_LEN, BUDGET), "too long ago");
        assert!(a.admits(7, MIN_LEN, BUDGET));
    }

    #[test]
    fn the_ring_is_bounded_by_the_share() {
        let mut a = Admission::default();
        for key in 0..100 {
            assert!(!a.admits(key, MIN_LEN, BUDGET));
        }
        assert_eq!(a.seen.len(), 4);
        assert!(a.admits(99, MIN_LEN, BUDGET), "the newest are kept");
        assert!(!a.admits(95, MIN_LEN, BUDGET), "the oldest went");
        let mut huge = Admission::default();
        for key in 0..MAX_REMEMBERED + 10 {
            huge.admits(key, MIN_LEN, u64::MAX);
        }
        assert_eq!(huge.seen.len(), MAX_REMEMBERED as usize);
    }
}
