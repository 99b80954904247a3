//! The anti-replay window of RFC 4303 §3.4.3, with extended sequence numbers (Appendix A).
//!
//! The window covers the `size` sequence numbers up to and including the highest one
//! authenticated so far (`top`). Sequence number `s` lives at bit `s % size` of a ring of u64
//! words, so sliding the window forward clears only the bits of the numbers it passes over
//! (one bit on the common, in-order path) instead of shifting the whole bitmap.

use core::fmt;

/// The window size used unless configured otherwise.
pub const DEFAULT_REPLAY_WINDOW: u32 = 4096;
/// The largest window size [`ReplayWindow::new`] accepts (8 KiB of bitmap per SA).
pub const MAX_REPLAY_WINDOW: u32 = 65536;

const WORD_BITS: u32 = 64;

/// Why a sequence number is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ReplayError {
    /// This sequence number was already received.
    #[error("ESP sequence number already received (replayed or duplicated packet)")]
    Replayed,
    /// This sequence number is older than the window: too late to tell whether it is new.
    #[error("ESP sequence number is older than the anti-replay window (packet too late)")]
    TooOld,
    /// Sequence number 0 is never sent (the counter starts at 1).
    #[error("ESP sequence number 0 is never sent")]
    Zero,
}

/// The window as `ikectl sa list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayState {
    /// Highest sequence number authenticated so far (0 before the first packet).
    pub highest: u64,
    /// The window size.
    pub size: u32,
    /// How many of the `size` sequence numbers up to `highest` were received.
    pub received: u32,
}

/// An anti-replay window for one inbound SA.
///
/// Not synchronized: the SA keeps it behind its own lock. [`check`](Self::check) (before
/// authentication) takes `&self`; [`accept`](Self::accept) (after) takes `&mut self` and
/// checks again, since another worker may have accepted the same number in between.
pub struct ReplayWindow {
    /// The window size in sequence numbers: a multiple of 64.
    size: u32,
    /// Highest sequence number accepted; 0 when none.
    top: u64,
    /// `size` bits; sequence number s is bit `s % size`.
    bits: Box<[u64]>,
}

impl ReplayWindow {
    /// A window of `size` sequence numbers, rounded up to a multiple of 64 and kept within
    /// 64 ..= [`MAX_REPLAY_WINDOW`]. Allocates the bitmap once, here.
    pub fn new(size: u32) -> Self {
        let size = size.clamp(WORD_BITS, MAX_REPLAY_WINDOW).div_ceil(WORD_BITS) * WORD_BITS;
        ReplayWindow { size, top: 0, bits: vec![0u64; (size / WORD_BITS) as usize].into_boxed_slice() }
    }

    /// Size, top and bitmap, for the meshd that takes this SA over (`crate::upgrade`).
    pub fn to_parts(&self) -> (u32, u64, Vec<u64>) {
        (self.size, self.top, self.bits.to_vec())
    }

    /// The window `to_parts` described; `None` when the bitmap does not fit the size.
    pub fn from_parts(size: u32, top: u64, bits: Vec<u64>) -> Option<Self> {
        let fits = size == size.clamp(WORD_BITS, MAX_REPLAY_WINDOW)
            && size.is_multiple_of(WORD_BITS)
            && bits.len() == (size / WORD_BITS) as usize;
        fits.then(|| ReplayWindow { size, top, bits: bits.into_boxed_slice() })
    }

    /// A window that refuses every number up to `floor`: a manual SA's numbers accepted
    /// before meshd restarted (manual_nonces.rs).
    pub fn starting_after(size: u32, floor: u64) -> Self {
        let mut window = ReplayWindow::new(size);
        window.top = floor;
        if floor > 0 {
            window.bits.fill(!0);
        }
        window
    }

    /// The window size in sequence numbers.
    #[cfg(test)]
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Highest sequence number accepted so far (0 before the first packet).
    pub fn highest(&self) -> u64 {
        self.top
    }

    /// The full sequence number of a received packet, from the 32 bits on the wire.
    ///
    /// Without `esn` that is `seq_low`. With `esn` the high half is inferred as RFC 4303
    /// Appendix A2.2 does: the number is taken to lie in `[top - size + 1, top - size + 2^32]`.
    /// Where that rule would go below 0 (a window still near the start of the SA), the high
    /// half stays 0. A wrong guess costs nothing: the high half is in the AAD, so the packet
    /// then fails authentication.
    pub fn infer_sequence(&self, seq_low: u32, esn: bool) -> u64 {
        if !esn {
            return u64::from(seq_low);
        }
        let th = (self.top >> 32) as u32;
        let tl = self.top as u32;
        let w1 = self.size - 1;
        let seq_high = if tl >= w1 {
            // Case A: the window lies within one 2^32 subspace.
            if seq_low >= tl - w1 {
                th
            } else {
                // Past 2^64 - 1 there is nothing; the wrapped value is refused as too old.
                th.wrapping_add(1)
            }
        } else {
            // Case B: the window spans two subspaces.
            if seq_low >= tl.wrapping_sub(w1) {
                th.saturating_sub(1)
            } else {
                th
            }
        };
        (u64::from(seq_high) << 32) | u64::from(seq_low)
    }

    /// Whether `seq` may be new: the cheap test before authentication. Changes nothing.
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        if seq == 0 {
            return Err(ReplayError::Zero);
        }
        if seq > self.top {
            return Ok(());
        }
        if self.top - seq >= u64::from(self.size) {
            return Err(ReplayError::TooOld);
        }
        let (word, mask) = self.position(seq);
        if self.bits[word] & mask != 0 {
            return Err(ReplayError::Replayed);
        }
        Ok(())
    }

    /// Records `seq` as received, after its ICV verified. Checks again first, and refuses
    /// with the same errors as [`check`](Self::check).
    pub fn accept(&mut self, seq: u64) -> Result<(), ReplayError> {
        self.check(seq)?;
        if seq > self.top {
            self.advance(seq);
        }
        let (word, mask) = self.position(seq);
        self.bits[word] |= mask;
        Ok(())
    }

    /// The window for `ikectl sa list`. Counts bits: O(size / 64).
    pub fn state(&self) -> ReplayState {
        ReplayState { highest: self.top, size: self.size, received: self.bits.iter().map(|w| w.count_ones()).sum() }
    }

    /// Word index and bit mask of `seq`.
    fn position(&self, seq: u64) -> (usize, u64) {
        let pos = seq % u64::from(self.size);
        ((pos / u64::from(WORD_BITS)) as usize, 1u64 << (pos % u64::from(WORD_BITS)))
    }

    /// Moves the top to `new_top` (> top), clearing the bits of the numbers passed over: they
    /// still hold numbers that just left the window.
    fn advance(&mut self, new_top: u64) {
        let distance = new_top - self.top;
        if distance >= u64::from(self.size) {
            self.bits.fill(0);
        } else {
            // Clear top+1 ..= new_top, a word at a time. `size` is a multiple of 64, so a run
            // within one word never wraps around the ring.
            let mut seq = self.top + 1;
            let mut remaining = distance;
            loop {
                let pos = seq % u64::from(self.size);
                let word = (pos / u64::from(WORD_BITS)) as usize;
                let bit = pos % u64::from(WORD_BITS);
                let n = remaining.min(u64::from(WORD_BITS) - bit);
                let mask = if n == u64::from(WORD_BITS) { !0 } else { ((1u64 << n) - 1) << bit };
                self.bits[word] &= !mask;
                remaining -= n;
                if remaining == 0 {
                    break;
                }
                seq += n;
            }
        }
        self.top = new_top;
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow::new(DEFAULT_REPLAY_WINDOW)
    }
}

impl fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state();
        f.debug_struct("ReplayWindow")
            .field("highest", &s.highest)
            .field("size", &s.size)
            .field("received", &s.received)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_window_starting_after_a_floor_refuses_everything_up_to_it() {
        let window = ReplayWindow::starting_after(128, 1_000);
        assert_eq!(window.check(1_000), Err(ReplayError::Replayed));
        assert_eq!(window.check(990), Err(ReplayError::Replayed));
        assert_eq!(window.check(500), Err(ReplayError::TooOld));
        assert_eq!(window.check(1_001), Ok(()));
        let mut fresh = ReplayWindow::starting_after(128, 0);
        assert_eq!(fresh.accept(1), Ok(()));
    }

    #[test]
    fn sizes_round_up_to_words() {
        assert_eq!(ReplayWindow::new(0).size(), 64);
        assert_eq!(ReplayWindow::new(1).size(), 64);
        assert_eq!(ReplayWindow::new(64).size(), 64);
        assert_eq!(ReplayWindow::new(65).size(), 128);
        assert_eq!(ReplayWindow::new(4000).size(), 4032);
        assert_eq!(ReplayWindow::new(u32::MAX).size(), MAX_REPLAY_WINDOW);
        assert_eq!(ReplayWindow::default().size(), DEFAULT_REPLAY_WINDOW);
        assert_eq!(DEFAULT_REPLAY_WINDOW, 4096);
    }

    #[test]
    fn basic_window_behaviour() {
        let mut w = ReplayWindow::new(64);
        assert_eq!(w.check(0), Err(ReplayError::Zero));
        assert_eq!(w.accept(0), Err(ReplayError::Zero));
        assert_eq!(w.accept(1), Ok(()));
        assert_eq!(w.accept(1), Err(ReplayError::Replayed));
        assert_eq!(w.accept(100), Ok(()));
        assert_eq!(w.check(99), Ok(()));
        assert_eq!(w.accept(99), Ok(()));
        assert_eq!(w.accept(99), Err(ReplayError::Replayed));
        // The window is 37 ..= 100.
        assert_eq!(w.check(36), Err(ReplayError::TooOld));
        assert_eq!(w.accept(37), Ok(()));
        assert_eq!(w.state(), ReplayState { highest: 100, size: 64, received: 3 });
        // One step forward pushes 37 out.
        assert_eq!(w.accept(101), Ok(()));
        assert_eq!(w.check(37), Err(ReplayError::TooOld));
        assert_eq!(w.state(), ReplayState { highest: 101, size: 64, received: 3 });
        // A jump past the window forgets everything.
        assert_eq!(w.accept(1_000_000), Ok(()));
        assert_eq!(w.check(101), Err(ReplayError::TooOld));
        assert_eq!(w.check(999_999), Ok(()));
        assert_eq!(w.state().received, 1);
    }

    #[test]
    fn large_reordering_within_default_window() {
        let mut w = ReplayWindow::default();
        w.accept(10_000).unwrap();
        w.accept(10_000 - 3000).unwrap();
        assert_eq!(w.check(10_000 - 3000), Err(ReplayError::Replayed));
        assert_eq!(w.check(10_000 - 4095), Ok(()));
        assert_eq!(w.check(10_000 - 4096), Err(ReplayError::TooOld));
    }

    #[test]
    fn top_of_the_64_bit_space() {
        let mut w = ReplayWindow::new(128);
        w.accept(u64::MAX - 1).unwrap();
        w.accept(u64::MAX).unwrap();
        assert_eq!(w.accept(u64::MAX), Err(ReplayError::Replayed));
        assert_eq!(w.check(u64::MAX - 127), Ok(()));
        assert_eq!(w.check(u64::MAX - 128), Err(ReplayError::TooOld));
        // Nothing lies past 2^64 - 1: a low half that would wrap is inferred as old.
        assert_eq!(w.check(w.infer_sequence(5, true)), Err(ReplayError::TooOld));
    }

    #[test]
    fn infer_sequence_cases_of_rfc4303_a2_2() {
        let mut w = ReplayWindow::new(64);
        assert_eq!(w.infer_sequence(0xffff_fff0, false), 0xffff_fff0);
        // Fresh SA: high half 0, also for low halves the rule would put below 0.
        assert_eq!(w.infer_sequence(1, true), 1);
        assert_eq!(w.infer_sequence(0xffff_fff0, true), 0xffff_fff0);
        // Case A: top = 2^32 + 1000; window 937 ..= 1000 in subspace 1.
        w.accept((1 << 32) + 1000).unwrap();
        assert_eq!(w.infer_sequence(937, true), (1 << 32) + 937);
        assert_eq!(w.infer_sequence(936, true), (2 << 32) + 936);
        assert_eq!(w.infer_sequence(5000, true), (1 << 32) + 5000);
        // Case B: top = 2^33 + 10; window spans 2^33 - 53 ..= 2^33 + 10.
        w.accept((2 << 32) + 10).unwrap();
        assert_eq!(w.infer_sequence(0xffff_ffcb, true), (1 << 32) + 0xffff_ffcb);
        assert_eq!(w.infer_sequence(0xffff_ffca, true), (2 << 32) + 0xffff_ffca);
        assert_eq!(w.infer_sequence(3, true), (2 << 32) + 3);
    }

    #[test]
    fn debug_shows_state() {
        let mut w = ReplayWindow::new(64);
        w.accept(3).unwrap();
        assert_eq!(format!("{w:?}"), "ReplayWindow { highest: 3, size: 64, received: 1 }");
    }

    /// The reference: every number ever accepted, and the highest.
    struct Model {
        size: u64,
        seen: HashSet<u64>,
        top: u64,
    }

    impl Model {
        fn check(&self, seq: u64) -> Result<(), ReplayError> {
            if seq == 0 {
                Err(ReplayError::Zero)
            } else if seq + self.size <= self.top {
                Err(ReplayError::TooOld)
            } else if self.seen.contains(&seq) {
                Err(ReplayError::Replayed)
            } else {
                Ok(())
            }
        }

        fn accept(&mut self, seq: u64) -> Result<(), ReplayError> {
            self.check(seq)?;
            self.seen.insert(seq);
            self.top = self.top.max(seq);
            Ok(())
        }

        fn received(&self) -> u32 {
            self.seen.iter().filter(|&&s| s + self.size > self.top).count() as u32
        }
    }

    /// Sequence numbers that move mostly forward with reordering, repeats, jumps and stragglers.
    fn steps() -> impl Strategy<Value = Vec<(u8, u64)>> {
        prop::collection::vec((0u8..8, 0u64..400), 1..400)
    }

    fn next_seq(top: u64, (kind, x): (u8, u64)) -> u64 {
        match kind {
            0..=2 => top + 1 + x % 4,        // in order, small gaps
            3 => top.saturating_sub(x),      // reordered or repeated, maybe too old
            4 => top + x,                    // jump (x may exceed the window)
            5 => top.saturating_sub(x % 70), // near the bottom of a 64 window
            6 => x % 8,                      // very old, or 0
            _ => top,                        // duplicate of the top
        }
    }

    proptest! {
        #[test]
        fn agrees_with_reference_model(
            size in prop::sample::select(vec![64u32, 128, 256, 4096]),
            start in prop::sample::select(vec![0u64, 1000, (1 << 32) - 200, u64::MAX - 1_000_000]),
            steps in steps(),
        ) {
            let mut w = ReplayWindow::new(size);
            let mut m = Model { size: u64::from(size), seen: HashSet::new(), top: 0 };
            if start > 0 {
                prop_assert_eq!(w.accept(start), Ok(()));
                prop_assert_eq!(m.accept(start), Ok(()));
            }
            for step in steps {
                let seq = next_seq(m.top, step);
                prop_assert_eq!(w.check(seq), m.check(seq), "check({})", seq);
                prop_assert_eq!(w.accept(seq), m.accept(seq), "accept({})", seq);
                prop_assert_eq!(w.highest(), m.top);
                // Accepting again is always refused.
                prop_assert!(w.check(seq).is_err());
            }
            prop_assert_eq!(w.state().received, m.received());
        }

        #[test]
        fn accepts_every_number_exactly_once(
            size in prop::sample::select(vec![64u32, 256, 4096]),
            mut seqs in prop::collection::vec(1u64..3000, 1..500),
        ) {
            let mut w = ReplayWindow::new(size);
            let mut seen = HashSet::new();
            // Shuffle-ish: process in the given (random) order.
            for &seq in &seqs {
                let res = w.accept(seq);
                if seen.contains(&seq) {
                    prop_assert!(res.is_err());
                } else if seq + u64::from(w.size()) <= w.highest() {
                    prop_assert_eq!(res, Err(ReplayError::TooOld));
                } else {
                    prop_assert_eq!(res, Ok(()));
                    seen.insert(seq);
                }
            }
            // Nothing accepted twice, and never 0.
            prop_assert_eq!(w.accept(0), Err(ReplayError::Zero));
            seqs.sort_unstable();
            seqs.dedup();
            for seq in seqs {
                prop_assert!(w.accept(seq).is_err());
            }
        }

        #[test]
        fn in_order_stream_accepts_all(size in 1u32..5000, start in 1u64..u64::MAX / 2, n in 1usize..300) {
            let mut w = ReplayWindow::new(size);
            for seq in start..start + n as u64 {
                prop_assert_eq!(w.accept(seq), Ok(()));
            }
            let expect = (n as u32).min(w.size());
            prop_assert_eq!(w.state().received, expect);
        }

        #[test]
        fn infer_sequence_round_trips_near_2_32_boundaries(
            size in prop::sample::select(vec![64u32, 128, 4096]),
            subspace in prop::sample::select(vec![0u64, 1, 2, 0x7fff_ffff, 0xffff_fffe]),
            top_offset in -10_000i64..10_000,
            delta in prop_oneof![0u64..10_000, (1u64 << 32) - 10_000..1u64 << 32],
        ) {
            // A top near a multiple of 2^32, then every sequence number the window can
            // place: from the bottom of the window up to just under 2^32 beyond it.
            let top = ((subspace << 32) as i64).wrapping_add(top_offset) as u64;
            prop_assume!(top > 0 && top < u64::MAX - (1 << 32));
            let mut w = ReplayWindow::new(size);
            w.accept(top).unwrap();
            let bottom = top.saturating_sub(u64::from(w.size()) - 1).max(1);
            let seq = bottom + delta;
            // One past the last number the window can place: top - size + 1 + 2^32.
            let end = top + (1u64 << 32) + 1 - u64::from(w.size());
            prop_assume!(seq < end);
            prop_assert_eq!(w.infer_sequence(seq as u32, true), seq, "top {:#x}", top);
            // And without ESN the low half is the number.
            prop_assert_eq!(w.infer_sequence(seq as u32, false), seq & 0xffff_ffff);
        }
    }
}
