//! An index-based intrusive doubly linked list over a slab.
//!
//! Every item lives in a slot of a slab; a slot is named by its `u32`
//! index, which stays valid until the item is removed. An item may be linked
//! into the recency list (most recently used at the head, least recently used
//! at the tail) or be detached from it; both states keep the slot. Links are
//! indices, so the list needs no `unsafe`, and every operation is O(1).
//!
//! The shard keeps resident values linked and spilled values detached, as the
//! original design keeps only in-memory keys in its LRU queue.
//!
//! Each slot also carries a *reference mark*, the one bit of the CLOCK
//! policy: a reader holding only a shared reference (the shard's read lock)
//! may set it with one relaxed store, and the owner of the list reads and
//! clears it while choosing victims. It lives in the top bit of the slot's
//! `prev` link, so it costs no space; links use the low 31 bits.
//!
//! Slots live in fixed pages of `PAGE_SLOTS`, not in one growing `Vec`: a
//! shard never copies all its slots to grow (a pause under its write lock
//! that would grow with the shard), and at most one page is partly unused,
//! where a doubling `Vec` leaves up to half its capacity idle.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// Index of a slot; also the end-of-list marker when it equals [`NIL`].
pub(crate) type SlotId = u32;

/// The bit of `prev` that holds the slot's reference mark.
const MARK: u32 = 1 << 31;

/// The end of the list, or "no slot" (the largest 31-bit value).
pub(crate) const NIL: SlotId = MARK - 1;

/// `prev` value of a slot that is not linked into the list.
const DETACHED: SlotId = NIL - 1;

/// The largest number of slots: ids `DETACHED` and `NIL` are reserved.
pub(crate) const MAX_SLOTS: usize = DETACHED as usize;

/// Slots per page (a power of two).
const PAGE_SLOTS: usize = 256;

/// In declaration order, the links first: a hit reads the mark in `prev`
/// and then the item's first bytes (the shard's key and value), so these
/// lie together. With the item first, the mark sat at the end of the slot,
/// on a second cache line that nearly every hit had to load: callgrind's
/// cache simulation of the compare tool's `hot-get` counted 1.57 L1 misses
/// per hit on the slot before, 1.33 after.
#[repr(C)]
struct Slot<T> {
    /// Low 31 bits: towards the head; `DETACHED` while not linked; free
    /// slots keep `DETACHED`. Top bit: the reference mark. Atomic only so
    /// that readers can set the mark through a shared reference; std's
    /// atomic even under shuttle: the mark is a recency hint no invariant
    /// depends on.
    prev: AtomicU32,
    /// Towards the tail; for a free slot, the next free slot.
    next: SlotId,
    item: Option<T>,
}

impl<T> Slot<T> {
    fn prev(&self) -> SlotId {
        self.prev.load(Relaxed) & !MARK
    }

    /// Sets the link, keeping the mark.
    fn set_prev(&mut self, id: SlotId) {
        let prev = self.prev.get_mut();
        *prev = (*prev & MARK) | id;
    }

    /// Sets the mark through a shared reference: one relaxed load, and a
    /// relaxed store only if it was not set.
    fn mark(&self) {
        let prev = self.prev.load(Relaxed);
        if prev & MARK == 0 {
            // No one else writes `prev` while shared references exist, so
            // storing the whole word cannot undo another change.
            self.prev.store(prev | MARK, Relaxed);
        }
    }

    /// Clears the mark; says whether it was set.
    fn take_mark(&mut self) -> bool {
        let prev = self.prev.get_mut();
        let marked = *prev & MARK != 0;
        *prev &= !MARK;
        marked
    }
}

/// An occupied slot seen through a shared reference: its item, and its
/// reference mark to set (see [`LinkedSlab::get_markable`]).
pub(crate) struct Markable<'a, T> {
    slot: &'a Slot<T>,
    item: &'a T,
}

impl<'a, T> Markable<'a, T> {
    /// The slot's item.
    pub(crate) fn item(&self) -> &'a T {
        self.item
    }

    /// Sets the slot's reference mark, as [`LinkedSlab::mark`] does.
    pub(crate) fn mark(&self) {
        self.slot.mark();
    }
}

/// An occupied slot linked into the list, seen through a unique
/// reference: its item, and its reference mark to set (see
/// [`LinkedSlab::get_linked_mut`]).
pub(crate) struct LinkedMut<'a, T> {
    prev: &'a mut AtomicU32,
    item: &'a mut T,
}

impl<T> LinkedMut<'_, T> {
    /// The slot's item.
    pub(crate) fn item_mut(&mut self) -> &mut T {
        self.item
    }

    /// Sets the slot's reference mark.
    pub(crate) fn mark(&mut self) {
        *self.prev.get_mut() |= MARK;
    }
}

/// Bytes one slot of a `LinkedSlab<T>` takes: the item and two links.
#[cfg(test)]
pub(crate) const fn slot_size<T>() -> usize {
    std::mem::size_of::<Slot<T>>()
}

/// Slots in fixed-size pages, indexed by [`SlotId`].
struct Pages<T> {
    /// Arrays, not slices: a slot's index within its page is below
    /// `PAGE_SLOTS` by construction, so indexing a page needs no bounds
    /// check (a length load and a compare on every access).
    pages: Vec<Box<[Slot<T>; PAGE_SLOTS]>>,
}

impl<T> Pages<T> {
    fn len(&self) -> usize {
        self.pages.len() * PAGE_SLOTS
    }

    fn get(&self, id: SlotId) -> Option<&Slot<T>> {
        let id = id as usize;
        self.pages.get(id / PAGE_SLOTS).map(|p| &p[id % PAGE_SLOTS])
    }

    fn get_mut(&mut self, id: SlotId) -> Option<&mut Slot<T>> {
        let id = id as usize;
        self.pages
            .get_mut(id / PAGE_SLOTS)
            .map(|p| &mut p[id % PAGE_SLOTS])
    }

    fn iter(&self) -> impl Iterator<Item = &Slot<T>> {
        self.pages.iter().flat_map(|p| p.iter())
    }

    /// Adds a page of free slots chained through `next`, ending in `then`;
    /// returns the first new slot's id.
    fn grow(&mut self, then: SlotId) -> SlotId {
        let base = self.len();
        let page = (0..PAGE_SLOTS)
            .map(|i| Slot {
                prev: AtomicU32::new(DETACHED),
                next: if i + 1 < PAGE_SLOTS {
                    (base + i + 1) as SlotId
                } else {
                    then
                },
                item: None,
            })
            .collect::<Box<[Slot<T>]>>();
        let Ok(page) = page.try_into() else {
            unreachable!("a page is built with PAGE_SLOTS slots")
        };
        self.pages.push(page);
        base as SlotId
    }
}

impl<T> std::ops::Index<SlotId> for Pages<T> {
    type Output = Slot<T>;

    fn index(&self, id: SlotId) -> &Slot<T> {
        self.get(id).expect("slot id within the slab")
    }
}

impl<T> std::ops::IndexMut<SlotId> for Pages<T> {
    fn index_mut(&mut self, id: SlotId) -> &mut Slot<T> {
        self.get_mut(id).expect("slot id within the slab")
    }
}

/// A slab of items with an intrusive recency list through some of them.
pub(crate) struct LinkedSlab<T> {
    slots: Pages<T>,
    /// First free slot, chained through `next`.
    free: SlotId,
    /// Most recently used linked slot.
    head: SlotId,
    /// Least recently used linked slot.
    tail: SlotId,
    occupied: usize,
    linked: usize,
}

impl<T> Default for LinkedSlab<T> {
    fn default() -> Self {
        Self {
            slots: Pages { pages: Vec::new() },
            free: NIL,
            head: NIL,
            tail: NIL,
            occupied: 0,
            linked: 0,
        }
    }
}

impl<T> LinkedSlab<T> {
    /// Stores `item` in a free slot, detached from the list.
    ///
    /// Returns `None` when all `MAX_SLOTS` slots are taken.
    pub(crate) fn insert(&mut self, item: T) -> Option<SlotId> {
        if self.free == NIL {
            if self.slots.len() + PAGE_SLOTS > MAX_SLOTS {
                return None;
            }
            self.free = self.slots.grow(NIL);
        }
        let id = self.free;
        let slot = &mut self.slots[id];
        self.free = slot.next;
        slot.next = NIL;
        slot.item = Some(item);
        self.occupied += 1;
        Some(id)
    }

    /// Removes and returns the item in `id`, unlinking it first.
    pub(crate) fn remove(&mut self, id: SlotId) -> Option<T> {
        self.get(id)?;
        self.unlink(id);
        let slot = &mut self.slots[id];
        let item = slot.item.take();
        slot.next = self.free;
        self.free = id;
        self.occupied -= 1;
        item
    }

    /// The item in `id`, if the slot is occupied.
    pub(crate) fn get(&self, id: SlotId) -> Option<&T> {
        self.slots.get(id)?.item.as_ref()
    }

    /// The item in `id`, mutably, if the slot is occupied.
    pub(crate) fn get_mut(&mut self, id: SlotId) -> Option<&mut T> {
        self.slots.get_mut(id)?.item.as_mut()
    }

    /// The item in `id`, mutably, with the means to mark the slot, if the
    /// slot is occupied and linked into the list: one lookup where a
    /// writer would otherwise make three (the test, the item, the mark).
    #[inline]
    pub(crate) fn get_linked_mut(&mut self, id: SlotId) -> Option<LinkedMut<'_, T>> {
        let Slot { prev, item, .. } = self.slots.get_mut(id)?;
        if *prev.get_mut() & !MARK == DETACHED {
            return None;
        }
        Some(LinkedMut {
            prev,
            item: item.as_mut()?,
        })
    }

    /// Whether `id` is occupied and linked into the list.
    pub(crate) fn is_linked(&self, id: SlotId) -> bool {
        self.slots
            .get(id)
            .is_some_and(|s| s.item.is_some() && s.prev() != DETACHED)
    }

    /// Links a detached, occupied slot at the head (most recently used),
    /// unmarked.
    pub(crate) fn push_front(&mut self, id: SlotId) {
        debug_assert!(self.get(id).is_some() && !self.is_linked(id));
        let old_head = self.head;
        {
            let slot = &mut self.slots[id];
            slot.take_mark();
            slot.set_prev(NIL);
            slot.next = old_head;
        }
        if old_head == NIL {
            self.tail = id;
        } else {
            self.slots[old_head].set_prev(id);
        }
        self.head = id;
        self.linked += 1;
    }

    /// Links a detached, occupied slot at the tail (least recently used),
    /// unmarked.
    pub(crate) fn push_back(&mut self, id: SlotId) {
        debug_assert!(self.get(id).is_some() && !self.is_linked(id));
        let old_tail = self.tail;
        {
            let slot = &mut self.slots[id];
            slot.take_mark();
            slot.set_prev(old_tail);
            slot.next = NIL;
        }
        if old_tail == NIL {
            self.head = id;
        } else {
            self.slots[old_tail].next = id;
        }
        self.tail = id;
        self.linked += 1;
    }

    /// Detaches `id` from the list; does nothing if it is not linked.
    pub(crate) fn unlink(&mut self, id: SlotId) {
        if !self.is_linked(id) {
            return;
        }
        let (prev, next) = {
            let slot = &self.slots[id];
            (slot.prev(), slot.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next].set_prev(prev);
        }
        let slot = &mut self.slots[id];
        slot.set_prev(DETACHED);
        slot.next = NIL;
        self.linked -= 1;
    }

    /// Moves a linked slot to the head; does nothing for a detached or free slot.
    pub(crate) fn touch(&mut self, id: SlotId) {
        if self.is_linked(id) {
            self.move_to_front(id);
        }
    }

    /// Links an occupied slot at the head, unmarked, whether it was linked
    /// (anywhere in the list) or detached: what a replace does to its key.
    /// One pass over the links instead of [`unlink`](Self::unlink) then
    /// [`push_front`](Self::push_front), which checked and rewrote the
    /// same slots twice (most of a replace's list work, by callgrind).
    pub(crate) fn move_to_front(&mut self, id: SlotId) {
        debug_assert!(self.get(id).is_some());
        let slot = &mut self.slots[id];
        let (prev, next) = (slot.prev(), slot.next);
        if prev == DETACHED {
            return self.push_front(id);
        }
        slot.take_mark();
        if prev == NIL {
            return; // already the head
        }
        // Linked behind the head: cut it out, then link it before the head.
        self.slots[prev].next = next;
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next].set_prev(prev);
        }
        let old_head = self.head;
        let slot = &mut self.slots[id];
        slot.set_prev(NIL);
        slot.next = old_head;
        self.slots[old_head].set_prev(id);
        self.head = id;
    }

    /// Sets the reference mark of slot `id` (through a shared reference:
    /// one relaxed load, and a relaxed store only if it was not set).
    /// Does nothing for an id beyond the slab.
    pub(crate) fn mark(&self, id: SlotId) {
        if let Some(slot) = self.slots.get(id) {
            slot.mark();
        }
    }

    /// The item in `id`, if the slot is occupied, with the means to mark the
    /// slot: a reader that finds an item and then marks it looks the slot up
    /// once.
    pub(crate) fn get_markable(&self, id: SlotId) -> Option<Markable<'_, T>> {
        let slot = self.slots.get(id)?;
        slot.item.as_ref().map(|item| Markable { slot, item })
    }

    /// Whether slot `id` carries a reference mark (through a shared
    /// reference: what a reader sees may be a hit behind).
    pub(crate) fn is_marked(&self, id: SlotId) -> bool {
        self.slots
            .get(id)
            .is_some_and(|slot| slot.prev.load(Relaxed) & MARK != 0)
    }

    /// Clears the reference mark of slot `id`; says whether it was set.
    pub(crate) fn take_mark(&mut self, id: SlotId) -> bool {
        self.slots.get_mut(id).is_some_and(Slot::take_mark)
    }

    /// The least recently used linked slot.
    pub(crate) fn back(&self) -> Option<SlotId> {
        (self.tail != NIL).then_some(self.tail)
    }

    /// The linked slot just more recent than `id` (towards the head).
    pub(crate) fn prev_of(&self, id: SlotId) -> Option<SlotId> {
        let prev = self.slots[id].prev();
        (prev != NIL && prev != DETACHED).then_some(prev)
    }

    /// Number of occupied slots.
    pub(crate) fn len(&self) -> usize {
        self.occupied
    }

    /// Number of linked slots.
    #[cfg(test)]
    pub(crate) fn linked_len(&self) -> usize {
        self.linked
    }

    /// Occupied slots and their items, in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (SlotId, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.item.as_ref().map(|item| (i as SlotId, item)))
    }

    /// Linked slots from most to least recently used.
    pub(crate) fn iter_recency(&self) -> impl Iterator<Item = SlotId> + '_ {
        let mut cursor = self.head;
        std::iter::from_fn(move || {
            if cursor == NIL {
                return None;
            }
            let id = cursor;
            cursor = self.slots[id].next;
            Some(id)
        })
    }

    /// Removes every item, returning them, and releases the slots' memory.
    pub(crate) fn drain(&mut self) -> Vec<T> {
        let items = std::mem::take(&mut self.slots.pages)
            .into_iter()
            .flat_map(|page| (page as Box<[Slot<T>]>).into_vec())
            .filter_map(|s| s.item)
            .collect();
        *self = Self::default();
        items
    }

    /// Checks the list's links against the slots; returns what is wrong.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let mut seen = 0usize;
        let mut prev = NIL;
        for id in self.iter_recency() {
            let slot = self
                .slots
                .get(id)
                .ok_or_else(|| format!("list names slot {id} beyond the slab"))?;
            if slot.item.is_none() {
                return Err(format!("free slot {id} is linked"));
            }
            if slot.prev() != prev {
                return Err(format!(
                    "slot {id}: prev {} but reached from {prev}",
                    slot.prev()
                ));
            }
            prev = id;
            seen += 1;
            if seen > self.linked {
                return Err("list is longer than its count (cycle?)".into());
            }
        }
        if prev != self.tail {
            return Err(format!("tail is {} but the list ends at {prev}", self.tail));
        }
        if seen != self.linked {
            return Err(format!("{seen} linked slots, count says {}", self.linked));
        }
        let occupied = self.slots.iter().filter(|s| s.item.is_some()).count();
        if occupied != self.occupied {
            return Err(format!(
                "{occupied} occupied slots, count says {}",
                self.occupied
            ));
        }
        let mut free = 0usize;
        let mut cursor = self.free;
        while cursor != NIL {
            let slot = &self.slots[cursor];
            if slot.item.is_some() {
                return Err(format!("occupied slot {cursor} is on the free list"));
            }
            free += 1;
            if free > self.slots.len() {
                return Err("free list has a cycle".into());
            }
            cursor = slot.next;
        }
        if free + self.occupied != self.slots.len() {
            return Err(format!(
                "{free} free + {} occupied != {} slots",
                self.occupied,
                self.slots.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(slab: &LinkedSlab<u32>) -> Vec<u32> {
        slab.iter_recency()
            .map(|id| *slab.get(id).unwrap())
            .collect()
    }

    #[test]
    fn push_touch_unlink_keep_recency_order() {
        let mut slab = LinkedSlab::default();
        let ids: Vec<_> = (0..4).map(|v| slab.insert(v).unwrap()).collect();
        for &id in &ids {
            slab.push_front(id);
        }
        assert_eq!(order(&slab), [3, 2, 1, 0]);
        slab.touch(ids[0]);
        assert_eq!(order(&slab), [0, 3, 2, 1]);
        slab.unlink(ids[2]);
        assert_eq!(order(&slab), [0, 3, 1]);
        assert_eq!(slab.back(), Some(ids[1]));
        assert_eq!(slab.prev_of(ids[1]), Some(ids[3]));
        slab.push_back(ids[2]);
        assert_eq!(order(&slab), [0, 3, 1, 2]);
        slab.validate().unwrap();
    }

    #[test]
    fn marks_ride_on_the_links_without_disturbing_them() {
        let mut slab = LinkedSlab::default();
        let ids: Vec<_> = (0..4).map(|v| slab.insert(v).unwrap()).collect();
        for &id in &ids {
            slab.push_front(id);
        }
        // Mark every slot twice, through a shared reference (as readers do).
        let shared = &slab;
        for &id in &ids {
            shared.mark(id);
            shared.mark(id);
        }
        slab.mark(NIL - 5); // beyond the slab: ignored
                            // The links read back unchanged under the marks.
        assert_eq!(order(&slab), [3, 2, 1, 0]);
        assert_eq!(slab.prev_of(ids[0]), Some(ids[1]));
        slab.validate().unwrap();
        // Unlinking a neighbour rewrites a marked slot's link, keeping its mark.
        slab.unlink(ids[2]);
        assert_eq!(order(&slab), [3, 1, 0]);
        assert!(slab.take_mark(ids[1]));
        assert!(!slab.take_mark(ids[1]), "taking clears");
        // Linking again (at either end) starts unmarked.
        assert!(slab.take_mark(ids[2]), "a detached slot keeps its mark");
        slab.mark(ids[2]);
        slab.push_back(ids[2]);
        assert!(!slab.take_mark(ids[2]));
        slab.touch(ids[0]);
        assert!(!slab.take_mark(ids[0]));
        assert!(slab.take_mark(ids[3]));
        assert_eq!(order(&slab), [0, 3, 1, 2]);
        slab.validate().unwrap();
    }

    /// A writer's one lookup: only an occupied, linked slot is handed out;
    /// its item changes in place and its mark is set, links untouched.
    #[test]
    fn a_linked_slot_is_changed_and_marked_through_one_lookup() {
        let mut slab = LinkedSlab::default();
        let ids: Vec<_> = (0..3).map(|v| slab.insert(v).unwrap()).collect();
        slab.push_front(ids[0]);
        slab.push_front(ids[1]);
        // ids[2] stays detached; a removed slot and one beyond are empty.
        assert!(slab.get_linked_mut(ids[2]).is_none());
        let removed = slab.insert(9).unwrap();
        slab.remove(removed);
        assert!(slab.get_linked_mut(removed).is_none());
        assert!(slab.get_linked_mut(NIL - 5).is_none());
        let mut linked = slab.get_linked_mut(ids[0]).unwrap();
        *linked.item_mut() = 10;
        linked.mark();
        linked.mark();
        assert_eq!(slab.get(ids[0]), Some(&10));
        assert!(slab.is_marked(ids[0]));
        assert!(!slab.is_marked(ids[1]));
        assert_eq!(order(&slab), [1, 10]);
        slab.validate().unwrap();
    }

    #[test]
    fn removed_slots_are_reused_and_detached_items_stay() {
        let mut slab = LinkedSlab::default();
        let a = slab.insert(10).unwrap();
        let b = slab.insert(11).unwrap();
        slab.push_front(a);
        assert_eq!(slab.remove(a), Some(10));
        assert_eq!(slab.remove(a), None);
        assert_eq!(slab.linked_len(), 0);
        let c = slab.insert(12).unwrap();
        assert_eq!(c, a, "freed slot is reused");
        assert!(!slab.is_linked(c));
        assert_eq!(slab.get(b), Some(&11));
        slab.touch(b); // detached: no effect
        assert!(!slab.is_linked(b));
        assert_eq!(slab.len(), 2);
        slab.validate().unwrap();
        assert_eq!(slab.drain().len(), 2);
        assert_eq!(slab.len(), 0);
        slab.validate().unwrap();
    }

    #[test]
    fn random_operations_match_a_vec_model() {
        // A small deterministic LCG drives a sequence checked against a Vec.
        let mut state = 0x2545_f491_u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let mut slab = LinkedSlab::default();
        let mut model: Vec<u32> = Vec::new(); // recency order, head first
        let mut ids = std::collections::HashMap::new();
        for step in 0..2000u32 {
            match next() % 4 {
                0 => {
                    let id = slab.insert(step).unwrap();
                    slab.push_front(id);
                    model.insert(0, step);
                    ids.insert(step, id);
                }
                1 if !model.is_empty() => {
                    let v = model[next() as usize % model.len()];
                    slab.touch(ids[&v]);
                    model.retain(|&x| x != v);
                    model.insert(0, v);
                }
                2 if !model.is_empty() => {
                    let v = model[next() as usize % model.len()];
                    assert_eq!(slab.remove(ids.remove(&v).unwrap()), Some(v));
                    model.retain(|&x| x != v);
                }
                3 if !model.is_empty() && next() % 2 == 0 => {
                    // A replace: the key moves to the head from anywhere,
                    // or from detached (a value that was on disk).
                    let v = model[next() as usize % model.len()];
                    let id = ids[&v];
                    if next() % 2 == 0 {
                        slab.unlink(id);
                    }
                    slab.mark(id);
                    slab.move_to_front(id);
                    assert!(!slab.is_marked(id), "moved to the head unmarked");
                    model.retain(|&x| x != v);
                    model.insert(0, v);
                }
                _ => {
                    if let Some(tail) = slab.back() {
                        let v = *slab.get(tail).unwrap();
                        assert_eq!(model.last(), Some(&v));
                        slab.unlink(tail);
                        slab.push_front(tail);
                        model.pop();
                        model.insert(0, v);
                    }
                }
            }
            assert_eq!(order(&slab), model);
        }
        slab.validate().unwrap();
    }
}
