//! The two kinds of table the SADB is made of, each a fixed array of atomic slots that readers
//! search without a lock and the one writer changes one slot at a time: `SpiSlots` (inbound SAs
//! by SPI, open addressing) and `PeerSlots` (outbound SAs by peer index). An array is replaced
//! whole only when it grows, which doubling makes rare: an install or a removal costs O(1)
//! amortised, whatever the number of SAs.
//!
//! A reader loads an array once per batch (`arc_swap::Guard`) and each SA it looks up as a
//! `Held`: the SA stays alive while held, and in the common case neither load touches a
//! reference count shared with other threads (`arc_swap`'s per-thread debt slots).

use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption, Guard};

/// SPI 0 is reserved (RFC 4303 §2.1): it marks a slot that never held an SA, where a search ends.
const NEVER_USED: u32 = 0;
/// The smallest `SpiSlots` array.
const MIN_SPI_SLOTS: usize = 64;

/// What `SpiSlots` needs of what it holds: the SPI it is filed under.
pub(super) trait BySpi {
    fn spi(&self) -> u32;
}

/// A slot as loaded: what it held at the time, kept alive by the guard.
type Loaded<T> = Guard<Option<Arc<T>>>;

/// An SA as a reader found it, alive while held.
pub struct Held<T>(Loaded<T>);

impl<T> Held<T> {
    fn of(loaded: Loaded<T>) -> Option<Self> {
        loaded.is_some().then_some(Held(loaded))
    }
}

impl<T> Deref for Held<T> {
    type Target = Arc<T>;

    fn deref(&self) -> &Arc<T> {
        self.0.as_ref().expect("a Held is made only of a slot that held an SA")
    }
}

struct SpiSlot<T> {
    /// The SPI this slot is filed under, `NEVER_USED`, or that of an SA removed since (the
    /// slot is then a tombstone: searches go on past it, and the writer may reuse it).
    spi: AtomicU32,
    sa: ArcSwapOption<T>,
}

/// Inbound SAs by SPI: linear probing from a multiplicative hash of the SPI (our SPIs are
/// random or the operator's, never the peer's choice), at most half the slots ever used, so a
/// search meets a `NEVER_USED` slot soon.
pub(super) struct SpiSlots<T> {
    slots: Box<[SpiSlot<T>]>,
}

/// How many slots of the current array are live or tombstones; only the writer counts.
#[derive(Debug, Default)]
pub(super) struct SpiOccupancy {
    live: usize,
    used: usize,
}

impl<T: BySpi> SpiSlots<T> {
    fn with_capacity(capacity: usize) -> Self {
        let len = capacity.max(MIN_SPI_SLOTS).next_power_of_two();
        let slots = (0..len).map(|_| SpiSlot { spi: AtomicU32::new(NEVER_USED), sa: ArcSwapOption::empty() }).collect();
        SpiSlots { slots }
    }

    /// Where the search for `spi` starts: the top bits of its product with 2^32 / golden
    /// ratio (Fibonacci hashing), which spreads the operator's consecutive SPIs too.
    fn home(&self, spi: u32) -> usize {
        let bits = self.slots.len().trailing_zeros();
        (u64::from(spi.wrapping_mul(0x9e37_79b9)) << bits >> 32) as usize
    }

    /// The slots from `spi`'s home on, each once.
    fn probe(&self, spi: u32) -> impl Iterator<Item = (usize, &SpiSlot<T>)> {
        let mask = self.slots.len() - 1;
        let home = self.home(spi);
        (0..self.slots.len()).map(move |step| {
            let index = (home + step) & mask;
            (index, &self.slots[index])
        })
    }

    /// The slot of the SA filed under `spi`, and the SA as loaded. The SA's own SPI is checked
    /// too: a slot the writer is reusing may show the old SPI with the new SA for a moment.
    fn find(&self, spi: u32) -> Option<(&SpiSlot<T>, Loaded<T>)> {
        for (_, slot) in self.probe(spi) {
            match slot.spi.load(Ordering::Acquire) {
                NEVER_USED => return None,
                filed if filed == spi => {
                    let loaded = slot.sa.load();
                    if loaded.as_ref().is_some_and(|sa| sa.spi() == spi) {
                        return Some((slot, loaded));
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// The SA filed under `spi`.
    pub(super) fn get(&self, spi: u32) -> Option<Held<T>> {
        self.find(spi).and_then(|(_, loaded)| Held::of(loaded))
    }

    /// Every SA, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = Arc<T>> + '_ {
        self.slots.iter().filter_map(|slot| slot.sa.load_full())
    }

    /// Files `sa` under its SPI, in the first tombstone on its way or else the `NEVER_USED` slot
    /// that ends it; false (and nothing changed) when an SA has that SPI already. The caller
    /// has made sure a `NEVER_USED` slot remains after this one is used.
    fn file(&self, occupancy: &mut SpiOccupancy, sa: Arc<T>) -> bool {
        let spi = sa.spi();
        if spi == NEVER_USED {
            // Never drawn nor configured (both start at 256); filed, it would end searches.
            return false;
        }
        let mut tombstone = None;
        for (index, slot) in self.probe(spi) {
            let filed = slot.spi.load(Ordering::Relaxed);
            if filed == NEVER_USED {
                let (index, fresh) = match tombstone {
                    Some(index) => (index, false),
                    None => (index, true),
                };
                // The SA first, then the SPI (release): a reader that sees the SPI sees the SA.
                self.slots[index].sa.store(Some(sa));
                self.slots[index].spi.store(spi, Ordering::Release);
                occupancy.live += 1;
                occupancy.used += usize::from(fresh);
                return true;
            }
            match slot.sa.load().as_ref() {
                Some(live) if live.spi() == spi => return false,
                Some(_) => {}
                None => {
                    tombstone.get_or_insert(index);
                }
            }
        }
        false
    }

    /// Takes the SA filed under `spi` out; its slot stays a tombstone.
    fn take(&self, occupancy: &mut SpiOccupancy, spi: u32) -> Option<Arc<T>> {
        let (slot, _) = self.find(spi)?;
        occupancy.live -= 1;
        slot.sa.swap(None)
    }

    /// Replaces the SA filed under its SPI with `sa` (the same SA with other parameters).
    fn replace(&self, sa: Arc<T>) -> Option<Arc<T>> {
        let (slot, _) = self.find(sa.spi())?;
        slot.sa.swap(Some(sa))
    }
}

/// `SpiSlots` behind an `ArcSwap`, grown (or rebuilt without tombstones) by the writer.
pub(super) struct SpiTable<T> {
    current: ArcSwap<SpiSlots<T>>,
}

impl<T: BySpi> SpiTable<T> {
    pub(super) fn with_capacity(capacity: usize) -> Self {
        SpiTable { current: ArcSwap::from_pointee(SpiSlots::with_capacity(capacity)) }
    }

    pub(super) fn load(&self) -> Guard<Arc<SpiSlots<T>>> {
        self.current.load()
    }

    /// Files `sa`; false when its SPI is taken. When live SAs and tombstones would fill more
    /// than half the slots, the live SAs move to a new array of four times their number first
    /// (readers holding the old one see it as it was): at least a quarter of the slots' worth of
    /// installs and removals passes between two moves, which pays for them.
    pub(super) fn insert(&self, occupancy: &mut SpiOccupancy, sa: Arc<T>) -> bool {
        let current = self.current.load_full();
        if (occupancy.used + 1) * 2 > current.slots.len() {
            let next = SpiSlots::with_capacity((occupancy.live + 1) * 4);
            let mut moved = SpiOccupancy::default();
            for sa in current.iter() {
                next.file(&mut moved, sa);
            }
            if !next.file(&mut moved, sa) {
                return false;
            }
            *occupancy = moved;
            self.current.store(Arc::new(next));
            return true;
        }
        current.file(occupancy, sa)
    }

    pub(super) fn remove(&self, occupancy: &mut SpiOccupancy, spi: u32) -> Option<Arc<T>> {
        self.current.load().take(occupancy, spi)
    }

    /// Puts `sa` in the place of the SA with its SPI; `None` (and nothing changed) if none.
    pub(super) fn replace(&self, sa: Arc<T>) -> Option<Arc<T>> {
        self.current.load().replace(sa)
    }
}

/// Outbound SAs, one slot per peer index.
pub(super) struct PeerSlots<T> {
    slots: Box<[ArcSwapOption<T>]>,
}

impl<T> PeerSlots<T> {
    fn with_len(len: usize) -> Self {
        PeerSlots { slots: (0..len).map(|_| ArcSwapOption::empty()).collect() }
    }

    pub(super) fn get(&self, index: usize) -> Option<Held<T>> {
        self.slots.get(index).and_then(|slot| Held::of(slot.load()))
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = Arc<T>> + '_ {
        self.slots.iter().filter_map(ArcSwapOption::load_full)
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }
}

/// `PeerSlots` behind an `ArcSwap`, grown by the writer when a reload adds peers.
pub(super) struct PeerTable<T> {
    current: ArcSwap<PeerSlots<T>>,
}

impl<T> PeerTable<T> {
    pub(super) fn with_len(len: usize) -> Self {
        PeerTable { current: ArcSwap::from_pointee(PeerSlots::with_len(len)) }
    }

    pub(super) fn load(&self) -> Guard<Arc<PeerSlots<T>>> {
        self.current.load()
    }

    /// Puts `sa` in slot `index` and returns what was there. A slot past the end doubles the
    /// array first (the writer alone changes slots, so the copy misses nothing).
    pub(super) fn swap(&self, index: usize, sa: Option<Arc<T>>) -> Option<Arc<T>> {
        let current = self.current.load_full();
        if let Some(slot) = current.slots.get(index) {
            return slot.swap(sa);
        }
        let next = PeerSlots::with_len((index + 1).max(current.slots.len() * 2));
        for (new, old) in next.slots.iter().zip(current.slots.iter()) {
            new.store(old.load_full());
        }
        next.slots[index].store(sa);
        self.current.store(Arc::new(next));
        None
    }

    /// Empties slot `index` if `doomed` says so of its SA; returns the SA taken.
    pub(super) fn take_if(&self, index: usize, doomed: impl Fn(&T) -> bool) -> Option<Arc<T>> {
        let current = self.current.load();
        let slot = current.slots.get(index)?;
        if slot.load().as_deref().is_some_and(doomed) {
            slot.swap(None)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::AtomicBool;
    use std::thread;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug)]
    struct Entry {
        spi: u32,
        value: u64,
    }

    impl BySpi for Entry {
        fn spi(&self) -> u32 {
            self.spi
        }
    }

    fn entry(spi: u32, value: u64) -> Arc<Entry> {
        Arc::new(Entry { spi, value })
    }

    #[derive(Debug, Clone)]
    enum SpiOp {
        Insert(u32, u64),
        Remove(u32),
        Replace(u32, u64),
        Get(u32),
    }

    /// SPIs from a small space, so that inserts meet live SPIs and tombstones; enough of them
    /// that the array grows and is rebuilt.
    fn spi_op() -> impl Strategy<Value = SpiOp> {
        prop_oneof![
            3 => (1u32..300, any::<u64>()).prop_map(|(spi, value)| SpiOp::Insert(spi, value)),
            2 => (1u32..300).prop_map(SpiOp::Remove),
            1 => (1u32..300, any::<u64>()).prop_map(|(spi, value)| SpiOp::Replace(spi, value)),
            2 => (0u32..300).prop_map(SpiOp::Get),
        ]
    }

    #[derive(Debug, Clone)]
    enum PeerOp {
        Swap(usize, Option<u64>),
        TakeIf(usize, u64),
        Get(usize),
    }

    fn peer_op() -> impl Strategy<Value = PeerOp> {
        prop_oneof![
            (0usize..40, proptest::option::of(0u64..4)).prop_map(|(index, value)| PeerOp::Swap(index, value)),
            (0usize..40, 0u64..4).prop_map(|(index, value)| PeerOp::TakeIf(index, value)),
            (0usize..50).prop_map(PeerOp::Get),
        ]
    }

    proptest! {
        #[test]
        fn spi_table_matches_a_hash_map(ops in proptest::collection::vec(spi_op(), 1..600)) {
            let table = SpiTable::with_capacity(0);
            let mut occupancy = SpiOccupancy::default();
            let mut model: HashMap<u32, u64> = HashMap::new();
            for op in ops {
                match op {
                    SpiOp::Insert(spi, value) => {
                        let filed = table.insert(&mut occupancy, entry(spi, value));
                        prop_assert_eq!(filed, !model.contains_key(&spi));
                        model.entry(spi).or_insert(value);
                    }
                    SpiOp::Remove(spi) => {
                        prop_assert_eq!(table.remove(&mut occupancy, spi).map(|e| e.value), model.remove(&spi));
                    }
                    SpiOp::Replace(spi, value) => {
                        let old = table.replace(entry(spi, value)).map(|e| e.value);
                        prop_assert_eq!(old, model.get(&spi).copied());
                        if let Some(known) = model.get_mut(&spi) {
                            *known = value;
                        }
                    }
                    SpiOp::Get(spi) => {
                        prop_assert_eq!(table.load().get(spi).map(|e| e.value), model.get(&spi).copied());
                    }
                }
                prop_assert_eq!(occupancy.live, model.len());
                prop_assert!(occupancy.used * 2 <= table.load().slots.len(), "a search always ends");
            }
            let mut all: Vec<(u32, u64)> = table.load().iter().map(|e| (e.spi, e.value)).collect();
            all.sort_unstable();
            let mut expected: Vec<(u32, u64)> = model.into_iter().collect();
            expected.sort_unstable();
            prop_assert_eq!(all, expected);
        }

        #[test]
        fn peer_table_matches_a_hash_map(len in 0usize..8, ops in proptest::collection::vec(peer_op(), 1..200)) {
            let table = PeerTable::with_len(len);
            let mut model: HashMap<usize, u64> = HashMap::new();
            for op in ops {
                match op {
                    PeerOp::Swap(index, value) => {
                        let old = table.swap(index, value.map(|value| entry(1, value))).map(|e| e.value);
                        let expected = match value {
                            Some(value) => model.insert(index, value),
                            None => model.remove(&index),
                        };
                        prop_assert_eq!(old, expected);
                    }
                    PeerOp::TakeIf(index, value) => {
                        let taken = table.take_if(index, |e| e.value == value).map(|e| e.value);
                        let expected = model.get(&index).is_some_and(|v| *v == value).then(|| model.remove(&index)).flatten();
                        prop_assert_eq!(taken, expected);
                    }
                    PeerOp::Get(index) => {
                        prop_assert_eq!(table.load().get(index).map(|e| e.value), model.get(&index).copied());
                    }
                }
            }
            prop_assert_eq!(table.load().iter().count(), model.len());
        }
    }

    #[test]
    fn spi_zero_is_never_filed() {
        let table = SpiTable::with_capacity(0);
        let mut occupancy = SpiOccupancy::default();
        assert!(!table.insert(&mut occupancy, entry(0, 1)));
        assert!(table.load().get(0).is_none());
    }

    /// Readers on other threads keep finding the SAs that stay, with the right contents, while
    /// the writer files and removes others (growing and rebuilding the arrays many times).
    #[test]
    fn readers_never_miss_a_staying_sa_while_the_writer_churns() {
        const STAYING: u32 = 64;
        let spis = SpiTable::with_capacity(0);
        let peers = PeerTable::with_len(1);
        let mut occupancy = SpiOccupancy::default();
        for spi in 256..256 + STAYING {
            assert!(spis.insert(&mut occupancy, entry(spi, u64::from(spi) * 3)));
        }
        peers.swap(0, Some(entry(7, 21)));
        let done = AtomicBool::new(false);
        thread::scope(|scope| {
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        let mut lookups = 0u64;
                        loop {
                            let finished = done.load(Ordering::Relaxed);
                            let (by_spi, by_peer) = (spis.load(), peers.load());
                            for spi in 256..256 + STAYING {
                                let found = by_spi.get(spi).expect("a staying SA is always found");
                                assert_eq!((found.spi, found.value), (spi, u64::from(spi) * 3), "never torn");
                            }
                            let found = by_peer.get(0).expect("a staying outbound SA is always found");
                            assert_eq!((found.spi, found.value), (7, 21));
                            lookups += 1;
                            if finished {
                                break lookups;
                            }
                        }
                    })
                })
                .collect();
            for round in 0..20_000u32 {
                let spi = 0x1_0000 + round;
                assert!(spis.insert(&mut occupancy, entry(spi, u64::from(spi) * 3)));
                if round >= 8 {
                    assert!(spis.remove(&mut occupancy, spi - 8).is_some());
                }
                peers.swap(1 + (round as usize % 300), Some(entry(spi, 0)));
            }
            done.store(true, Ordering::Relaxed);
            for reader in readers {
                assert!(reader.join().expect("reader") > 0);
            }
        });
        assert_eq!(occupancy.live, STAYING as usize + 8);
    }
}
