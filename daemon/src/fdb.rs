//! The overlay forwarding database: which peer node an overlay MAC lives behind, learned from the
//! source MAC of frames that arrive decrypted from that peer.
//!
//! Lookups happen per frame on every worker and never wait: the table is a fixed array of slots
//! (open addressing, linear probing) whose MAC and owner share one atomic word, so a reader sees
//! a whole entry or none. Learners take a mutex for O(1) work: a new, moved or refused MAC
//! touches one slot and the learning peer's counters, never a copy of the table. Peers are
//! hostile tenants' neighbours: each may hold `MAX_ENTRIES_PER_PEER` MACs, learn
//! `LEARN_RATE_PER_SECOND` new ones a second, cannot take a MAC that another peer used within
//! `MOVE_HOLD_DOWN_MS`, and never a static one. The probe start is a keyed hash, so chosen MACs
//! cannot pile up in one probe run.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use mesh_config::control::DropReason;

use crate::ids::PeerId;
use crate::wire::ethernet::EthernetAddress;

/// Learned entries not refreshed for this long are forgotten (the Linux bridge default).
pub const AGEING_MS: u64 = 300_000;
/// The most MACs one overlay's table holds, learned and static.
pub const MAX_ENTRIES_PER_OVERLAY: usize = 65_536;
/// The most MACs one peer can make this node learn per overlay: a peer that floods source MACs
/// fills its own share, not the table.
pub const MAX_ENTRIES_PER_PEER: usize = 4_096;
/// New MACs (learned or moved) accepted from one peer per second, after a burst of
/// `LEARN_BURST`: a whole rack of VMs booting at once, not a source-MAC flood.
pub const LEARN_RATE_PER_SECOND: u64 = 200;
pub const LEARN_BURST: u64 = 1_000;
/// A MAC moves to another peer only once it has been silent this long behind its current one
/// (a migrated VM's old node stops sending at once; a peer claiming a live MAC never gets it).
pub const MOVE_HOLD_DOWN_MS: u64 = 2_000;
/// Refresh the last-seen time at most this often, so that busy flows do not bounce the cache line.
const REFRESH_GRANULARITY_MS: u64 = 1_000;

const MAC_MASK: u64 = (1 << 48) - 1;
const OWNER_SHIFT: u32 = 48;
/// Owner field: peer index + 1, or `OWNER_LOCAL`; `OWNER_STATIC` marks configured entries.
const OWNER_STATIC: u64 = 0x8000;
const OWNER_LOCAL: u64 = 0x7fff;
/// Peer indexes that fit the owner field.
const MAX_PEER_INDEX: usize = (OWNER_LOCAL - 2) as usize;
const EMPTY: u64 = 0;

/// Where a configured (static) MAC lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaticOwner {
    Peer(PeerId),
    /// Behind this node's own bridge: no peer may claim it.
    ThisNode,
}

/// Why a frame's source MAC was not learned; the frame is dropped with this reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LearnRefused {
    /// The MAC is configured (`static_macs`) behind another node.
    StaticMac,
    /// The MAC is in use behind another peer.
    MoveHeldDown,
    /// The peer already holds `MAX_ENTRIES_PER_PEER` MACs.
    PeerQuota,
    /// The peer's new MACs exceed `LEARN_RATE_PER_SECOND`.
    RateLimited,
    /// The overlay's table is full.
    TableFull,
}

impl LearnRefused {
    pub fn drop_reason(self) -> DropReason {
        match self {
            LearnRefused::StaticMac => DropReason::FdbStaticMac,
            LearnRefused::MoveHeldDown => DropReason::FdbMoveHeldDown,
            LearnRefused::PeerQuota => DropReason::FdbPeerQuota,
            LearnRefused::RateLimited => DropReason::FdbRateLimited,
            LearnRefused::TableFull => DropReason::FdbTableFull,
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    /// `owner << 48 | mac`, or `EMPTY`.
    word: AtomicU64,
    last_seen_ms: AtomicU64,
}

/// What learners share: per-peer counts and learning budgets.
#[derive(Debug, Default)]
struct Learners {
    entries: usize,
    peers: HashMap<PeerId, PeerLearning>,
}

#[derive(Debug, Default)]
struct PeerLearning {
    entries: usize,
    tokens: u64,
    refilled_ms: u64,
    /// `tokens` has been filled once (a new peer starts with a full burst).
    started: bool,
}

impl PeerLearning {
    fn take_token(&mut self, now_ms: u64) -> bool {
        if !self.started {
            (self.started, self.tokens, self.refilled_ms) = (true, LEARN_BURST, now_ms);
        }
        let earned = now_ms.saturating_sub(self.refilled_ms) * LEARN_RATE_PER_SECOND / 1_000;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(LEARN_BURST);
            self.refilled_ms = now_ms;
        }
        let granted = self.tokens > 0;
        self.tokens = self.tokens.saturating_sub(1);
        granted
    }
}

/// The keyed hash that picks a MAC's first slot: random per table, so that no tenant can choose
/// MACs that collide; under the fuzzer the same algorithm with a fixed key, so that a crash
/// reproduces from its input.
#[cfg(not(fuzzing))]
type SlotHasher = std::collections::hash_map::RandomState;
#[cfg(fuzzing)]
type SlotHasher = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// How much one table holds. meshd's are `FdbLimits::OVERLAY`; the fuzz target's are small, so
/// that its inputs fill them and reach the quota and table-full refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbLimits {
    /// MACs in the table, learned and static.
    pub entries: usize,
    /// Learned MACs per peer.
    pub per_peer: usize,
}

impl FdbLimits {
    pub const OVERLAY: FdbLimits = FdbLimits { entries: MAX_ENTRIES_PER_OVERLAY, per_peer: MAX_ENTRIES_PER_PEER };
}

/// The FDB of one overlay.
#[derive(Debug)]
pub struct Fdb {
    /// Twice the entries or more, a power of two, so that probe runs stay short.
    slots: Box<[Slot]>,
    limits: FdbLimits,
    hasher: SlotHasher,
    learners: Mutex<Learners>,
}

impl Default for Fdb {
    fn default() -> Self {
        Fdb::with_limits(FdbLimits::OVERLAY)
    }
}

fn mac_bits(mac: EthernetAddress) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[2..].copy_from_slice(mac.as_bytes());
    u64::from_be_bytes(bytes)
}

fn mac_of(word: u64) -> EthernetAddress {
    let bytes = (word & MAC_MASK).to_be_bytes();
    EthernetAddress([bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]])
}

fn owner_of(word: u64) -> u64 {
    word >> OWNER_SHIFT
}

fn learned_owner(peer: PeerId) -> Option<u64> {
    (peer.0 <= MAX_PEER_INDEX).then_some(peer.0 as u64 + 1)
}

/// The peer of an owner field, `None` for this node.
fn peer_of(owner: u64) -> Option<PeerId> {
    match owner & !OWNER_STATIC {
        OWNER_LOCAL => None,
        index => Some(PeerId(index as usize - 1)),
    }
}

impl Fdb {
    pub fn with_limits(limits: FdbLimits) -> Fdb {
        let slots = (2 * limits.entries.max(1)).next_power_of_two();
        Fdb {
            slots: (0..slots).map(|_| Slot::default()).collect(),
            limits,
            hasher: SlotHasher::default(),
            learners: Mutex::default(),
        }
    }

    /// The peer behind `mac`, if it was learned or configured.
    pub fn lookup(&self, mac: EthernetAddress) -> Option<PeerId> {
        self.find(mac).and_then(|(_, word)| peer_of(owner_of(word)))
    }

    /// Records that `mac` was seen behind `peer` at `now_ms`, or says why it may not be.
    pub fn learn(&self, mac: EthernetAddress, peer: PeerId, now_ms: u64) -> Result<(), LearnRefused> {
        if !mac.is_unicast() {
            return Ok(());
        }
        let Some(owner) = learned_owner(peer) else {
            return Err(LearnRefused::TableFull);
        };
        // The common case, without the lock: a known MAC behind the same peer.
        if let Some((index, word)) = self.find(mac) {
            if let Some(known) = self.known(index, word, owner, now_ms) {
                return known;
            }
        }
        let mut learners = self.learners.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let found = self.find(mac);
        if let Some((index, word)) = found {
            if let Some(known) = self.known(index, word, owner, now_ms) {
                return known;
            }
            let current = &self.slots[index];
            if now_ms.saturating_sub(current.last_seen_ms.load(Ordering::Relaxed)) < MOVE_HOLD_DOWN_MS {
                return Err(LearnRefused::MoveHeldDown);
            }
        } else if learners.entries >= self.limits.entries {
            return Err(LearnRefused::TableFull);
        }
        let budget = learners.peers.entry(peer).or_default();
        if budget.entries >= self.limits.per_peer {
            return Err(LearnRefused::PeerQuota);
        }
        if !budget.take_token(now_ms) {
            return Err(LearnRefused::RateLimited);
        }
        budget.entries += 1;
        let word = owner << OWNER_SHIFT | mac_bits(mac);
        match found {
            Some((index, previous)) => {
                if let Some(before) = peer_of(owner_of(previous)) {
                    learners.release(before);
                }
                self.slots[index].last_seen_ms.store(now_ms, Ordering::Relaxed);
                self.slots[index].word.store(word, Ordering::Release);
            }
            None => {
                learners.entries += 1;
                self.insert(word, now_ms);
            }
        }
        Ok(())
    }

    /// For an entry already in the table: refreshes it when `owner` has it, refuses it when it
    /// is static elsewhere, `None` when it is learned behind another peer (a move).
    fn known(&self, index: usize, word: u64, owner: u64, now_ms: u64) -> Option<Result<(), LearnRefused>> {
        let current = owner_of(word);
        if current & OWNER_STATIC != 0 {
            return Some(if current & !OWNER_STATIC == owner { Ok(()) } else { Err(LearnRefused::StaticMac) });
        }
        if current != owner {
            return None;
        }
        let seen = &self.slots[index].last_seen_ms;
        if now_ms.saturating_sub(seen.load(Ordering::Relaxed)) >= REFRESH_GRANULARITY_MS {
            seen.store(now_ms, Ordering::Relaxed);
        }
        Some(Ok(()))
    }

    /// Replaces the configured entries with `statics` (at start and on every reload); a static
    /// entry takes the place of a learned one.
    pub fn set_static(&self, statics: &[(EthernetAddress, StaticOwner)]) {
        let mut learners = self.learners.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.remove_where(&mut learners, |word| owner_of(word) & OWNER_STATIC != 0);
        for (mac, owner) in statics {
            let owner = match owner {
                StaticOwner::ThisNode => OWNER_LOCAL,
                StaticOwner::Peer(peer) => match learned_owner(*peer) {
                    Some(owner) => owner,
                    None => continue,
                },
            };
            let word = (owner | OWNER_STATIC) << OWNER_SHIFT | mac_bits(*mac);
            match self.find(*mac) {
                Some((index, previous)) => {
                    if let Some(before) = peer_of(owner_of(previous)) {
                        learners.release(before);
                    }
                    self.slots[index].word.store(word, Ordering::Release);
                }
                None => {
                    learners.entries += 1;
                    self.insert(word, 0);
                }
            }
        }
    }

    /// Forgets every entry learned behind `peer` (a reload removed it or makes its SAs anew).
    pub fn forget_peer(&self, peer: PeerId) {
        let Some(owner) = learned_owner(peer) else { return };
        let mut learners = self.learners.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.remove_where(&mut learners, |word| owner_of(word) == owner);
        learners.peers.remove(&peer);
    }

    /// Forgets learned entries older than `AGEING_MS`.
    pub fn expire(&self, now_ms: u64) {
        let mut learners = self.learners.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let slots = &self.slots;
        self.remove_at_where(&mut learners, |index, word| {
            owner_of(word) & OWNER_STATIC == 0
                && now_ms.saturating_sub(slots[index].last_seen_ms.load(Ordering::Relaxed)) > AGEING_MS
        });
    }

    /// The learned and configured entries, for `ikectl fdb`: MAC, peer, last seen; configured
    /// entries behind this node are not listed (no peer).
    pub fn entries(&self) -> Vec<(EthernetAddress, PeerId, u64)> {
        let mut entries: Vec<_> = self
            .slots
            .iter()
            .filter_map(|slot| {
                let word = slot.word.load(Ordering::Acquire);
                let peer = (word != EMPTY).then(|| peer_of(owner_of(word))).flatten()?;
                Some((mac_of(word), peer, slot.last_seen_ms.load(Ordering::Relaxed)))
            })
            .collect();
        entries.sort_by_key(|(mac, _, _)| mac.0);
        entries
    }

    /// An index modulo the table (its length is a power of two).
    fn wrap(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, mac: EthernetAddress) -> usize {
        self.hasher.hash_one(mac.0) as usize & self.wrap()
    }

    /// The slot holding `mac` and its word. A reader racing a removal may miss an entry that
    /// is being shifted (the frame is then flooded, as for an unknown MAC), never see a wrong one.
    fn find(&self, mac: EthernetAddress) -> Option<(usize, u64)> {
        let wanted = mac_bits(mac);
        let mut index = self.home(mac);
        for _ in 0..self.slots.len() {
            let word = self.slots[index].word.load(Ordering::Acquire);
            if word == EMPTY {
                return None;
            }
            if word & MAC_MASK == wanted {
                return Some((index, word));
            }
            index = (index + 1) & self.wrap();
        }
        None
    }

    /// Under the learners' lock, with room left (the table holds at most half its slots).
    fn insert(&self, word: u64, now_ms: u64) {
        let mut index = self.home(mac_of(word));
        while self.slots[index].word.load(Ordering::Relaxed) != EMPTY {
            index = (index + 1) & self.wrap();
        }
        self.slots[index].last_seen_ms.store(now_ms, Ordering::Relaxed);
        self.slots[index].word.store(word, Ordering::Release);
    }

    fn remove_where(&self, learners: &mut Learners, doomed: impl Fn(u64) -> bool) {
        self.remove_at_where(learners, |_, word| doomed(word));
    }

    /// Removes every entry `doomed` picks, under the learners' lock.
    fn remove_at_where(&self, learners: &mut Learners, doomed: impl Fn(usize, u64) -> bool) {
        let mut index = 0;
        while index < self.slots.len() {
            let word = self.slots[index].word.load(Ordering::Relaxed);
            if word != EMPTY && doomed(index, word) {
                if let Some(peer) = peer_of(owner_of(word)).filter(|_| owner_of(word) & OWNER_STATIC == 0) {
                    learners.release(peer);
                }
                learners.entries -= 1;
                // The slot now holds a shifted entry (or nothing): look at it again.
                self.remove(index);
            } else {
                index += 1;
            }
        }
    }

    /// Backward-shift deletion: entries behind the hole that may live there move up, so that no
    /// tombstones lengthen probe runs.
    fn remove(&self, mut hole: usize) {
        let mut next = hole;
        loop {
            next = (next + 1) & self.wrap();
            let word = self.slots[next].word.load(Ordering::Relaxed);
            if word == EMPTY {
                break;
            }
            let home = self.home(mac_of(word));
            // The entry may move to the hole when its home is not cyclically in (hole, next].
            let distance_to_hole = hole.wrapping_sub(home) & self.wrap();
            let distance_to_next = next.wrapping_sub(home) & self.wrap();
            if distance_to_hole < distance_to_next {
                let seen = self.slots[next].last_seen_ms.load(Ordering::Relaxed);
                self.slots[hole].last_seen_ms.store(seen, Ordering::Relaxed);
                self.slots[hole].word.store(word, Ordering::Release);
                hole = next;
            }
        }
        self.slots[hole].word.store(EMPTY, Ordering::Release);
    }
}

impl Learners {
    fn release(&mut self, peer: PeerId) {
        if let Some(budget) = self.peers.get_mut(&peer) {
            budget.entries = budget.entries.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    const A: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x0a]);

    fn mac(n: u32) -> EthernetAddress {
        let b = n.to_be_bytes();
        EthernetAddress([0x02, 0x42, b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn learns_moves_after_the_hold_down_and_ages() {
        let fdb = Fdb::default();
        assert_eq!(fdb.lookup(A), None);
        assert_eq!(fdb.learn(A, PeerId(1), 10), Ok(()));
        assert_eq!(fdb.lookup(A), Some(PeerId(1)));
        assert_eq!(fdb.learn(A, PeerId(2), 10 + MOVE_HOLD_DOWN_MS), Ok(()));
        assert_eq!(fdb.lookup(A), Some(PeerId(2)));
        fdb.learn(A, PeerId(2), 10 + MOVE_HOLD_DOWN_MS + 5_000).unwrap();
        let seen = 10 + MOVE_HOLD_DOWN_MS + 5_000;
        assert_eq!(fdb.entries(), vec![(A, PeerId(2), seen)]);
        fdb.expire(seen + AGEING_MS);
        assert_eq!(fdb.lookup(A), Some(PeerId(2)));
        fdb.expire(seen + 1 + AGEING_MS);
        assert_eq!(fdb.lookup(A), None);
    }

    #[test]
    fn a_live_mac_does_not_move_within_the_hold_down() {
        let fdb = Fdb::default();
        fdb.learn(A, PeerId(1), 1_000).unwrap();
        // The rightful owner keeps talking; another peer claims the MAC meanwhile.
        for t in (1_000..10_000).step_by(500) {
            fdb.learn(A, PeerId(1), t).unwrap();
            assert_eq!(fdb.learn(A, PeerId(2), t + 1), Err(LearnRefused::MoveHeldDown));
        }
        assert_eq!(fdb.lookup(A), Some(PeerId(1)));
    }

    #[test]
    fn a_peer_cannot_learn_more_than_its_quota() {
        let fdb = Fdb::default();
        let mut now = 0;
        for n in 0..MAX_ENTRIES_PER_PEER as u32 {
            // Slow enough for the rate limit.
            now += 1_000 / LEARN_RATE_PER_SECOND;
            fdb.learn(mac(n), PeerId(0), now).unwrap();
        }
        assert_eq!(fdb.learn(mac(u32::MAX), PeerId(0), now + 1_000), Err(LearnRefused::PeerQuota));
        // Another peer still has its share.
        assert_eq!(fdb.learn(A, PeerId(1), now + 1_000), Ok(()));
        // Ageing gives the quota back.
        fdb.expire(now + AGEING_MS + 1);
        assert_eq!(fdb.entries(), vec![(A, PeerId(1), now + 1_000)]);
        assert_eq!(fdb.learn(mac(u32::MAX), PeerId(0), now + AGEING_MS + 2), Ok(()));
    }

    #[test]
    fn a_small_table_refuses_past_its_limits_and_takes_again_after_a_forget() {
        let fdb = Fdb::with_limits(FdbLimits { entries: 4, per_peer: 3 });
        for n in 0..3 {
            fdb.learn(mac(n), PeerId(0), 0).unwrap();
        }
        assert_eq!(fdb.learn(mac(3), PeerId(0), 0), Err(LearnRefused::PeerQuota));
        assert_eq!(fdb.learn(mac(3), PeerId(1), 0), Ok(()));
        assert_eq!(fdb.learn(mac(4), PeerId(1), 0), Err(LearnRefused::TableFull));
        fdb.forget_peer(PeerId(0));
        assert_eq!(fdb.learn(mac(4), PeerId(1), 0), Ok(()));
        let peers: Vec<PeerId> = fdb.entries().into_iter().map(|(_, peer, _)| peer).collect();
        assert_eq!(peers, [PeerId(1), PeerId(1)]);
    }

    #[test]
    fn learning_is_rate_limited_per_peer() {
        let fdb = Fdb::default();
        let learned = |peer: usize, range: std::ops::Range<u32>, now_ms: u64| {
            range.filter(|n| fdb.learn(mac(*n), PeerId(peer), now_ms).is_ok()).count() as u64
        };
        assert_eq!(learned(0, 0..2 * LEARN_BURST as u32, 0), LEARN_BURST, "a burst, then nothing");
        assert_eq!(fdb.learn(mac(1_000_000), PeerId(0), 0), Err(LearnRefused::RateLimited));
        assert_eq!(learned(0, 10_000..12_000, 1_000), LEARN_RATE_PER_SECOND, "one second's worth later");
        assert_eq!(learned(1, 20_000..20_010, 1_000), 10, "other peers are not limited by peer 0");
        // Known MACs are refreshed without a token.
        assert_eq!(fdb.learn(mac(0), PeerId(0), 1_000), Ok(()));
    }

    #[test]
    fn static_entries_are_never_taken_or_aged() {
        let fdb = Fdb::default();
        let local = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
        fdb.learn(A, PeerId(3), 0).unwrap();
        fdb.set_static(&[(A, StaticOwner::Peer(PeerId(1))), (local, StaticOwner::ThisNode)]);
        assert_eq!(fdb.lookup(A), Some(PeerId(1)), "static replaces learned");
        assert_eq!(fdb.learn(A, PeerId(2), AGEING_MS), Err(LearnRefused::StaticMac));
        assert_eq!(fdb.learn(A, PeerId(1), AGEING_MS), Ok(()));
        assert_eq!(fdb.learn(local, PeerId(1), AGEING_MS), Err(LearnRefused::StaticMac));
        assert_eq!(fdb.lookup(local), None, "behind this node: no peer to send to");
        fdb.expire(10 * AGEING_MS);
        assert_eq!(fdb.lookup(A), Some(PeerId(1)));
        fdb.forget_peer(PeerId(1));
        assert_eq!(fdb.lookup(A), Some(PeerId(1)), "configured, not learned");
        fdb.set_static(&[]);
        assert_eq!(fdb.lookup(A), None);
        assert_eq!(fdb.learn(local, PeerId(1), 10 * AGEING_MS), Ok(()));
    }

    #[test]
    fn forgets_a_removed_peer() {
        let fdb = Fdb::default();
        let b = EthernetAddress([0x02, 0, 0, 0, 0, 0x0b]);
        fdb.learn(A, PeerId(1), 10).unwrap();
        fdb.learn(b, PeerId(2), 10).unwrap();
        fdb.forget_peer(PeerId(1));
        assert_eq!(fdb.entries(), vec![(b, PeerId(2), 10)]);
    }

    #[test]
    fn never_learns_group_addresses() {
        let fdb = Fdb::default();
        fdb.learn(EthernetAddress([0xff; 6]), PeerId(0), 1).unwrap();
        fdb.learn(EthernetAddress([0x01, 0, 0x5e, 0, 0, 1]), PeerId(0), 1).unwrap();
        assert!(fdb.entries().is_empty());
    }

    #[test]
    fn removal_keeps_every_other_entry_reachable() {
        // Many peers, many MACs, removals in between: every entry left is still found.
        let fdb = Fdb::default();
        for n in 0..20_000u32 {
            fdb.learn(mac(n), PeerId(n as usize % 16), u64::from(n / 16) * 10).unwrap();
        }
        fdb.forget_peer(PeerId(3));
        fdb.expire(AGEING_MS + 3_000);
        let left = fdb.entries();
        assert!(!left.is_empty() && left.len() < 20_000);
        for (mac, peer, _) in &left {
            assert_eq!(fdb.lookup(*mac), Some(*peer));
            assert_ne!(*peer, PeerId(3));
        }
        let total: usize = fdb.learners.lock().unwrap().entries;
        assert_eq!(total, left.len());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Learn(u32, usize),
        Forget(usize),
        Expire,
        Lookup(u32),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = (u64, Op)> {
        use proptest::prelude::*;
        let op = prop_oneof![
            6 => (0u32..48, 0usize..4).prop_map(|(mac, peer)| Op::Learn(mac, peer)),
            1 => (0usize..4).prop_map(Op::Forget),
            1 => Just(Op::Expire),
            4 => (0u32..48).prop_map(Op::Lookup),
        ];
        // Steps of time that cross the refresh granularity, the hold-down and the ageing.
        (prop_oneof![0u64..1_500, 1_500u64..4_000, Just(AGEING_MS / 2)], op)
    }

    proptest::proptest! {
        /// Learning, moves, forgetting and ageing as a plain map of MAC -> (peer, last seen)
        /// would do them (within the quotas and the rate, which the tests above cover).
        #[test]
        fn matches_a_hash_map(ops in proptest::collection::vec(op(), 1..300)) {
            let fdb = Fdb::default();
            let mut model: HashMap<u32, (usize, u64)> = HashMap::new();
            let mut now_ms = 1;
            for (step, op) in ops {
                now_ms += step;
                match op {
                    Op::Learn(n, peer) => {
                        let expected = match model.get_mut(&n) {
                            Some((owner, seen)) if *owner == peer => {
                                if now_ms - *seen >= REFRESH_GRANULARITY_MS {
                                    *seen = now_ms;
                                }
                                Ok(())
                            }
                            Some((_, seen)) if now_ms - *seen < MOVE_HOLD_DOWN_MS => Err(LearnRefused::MoveHeldDown),
                            _ => {
                                model.insert(n, (peer, now_ms));
                                Ok(())
                            }
                        };
                        proptest::prop_assert_eq!(fdb.learn(mac(n), PeerId(peer), now_ms), expected);
                    }
                    Op::Forget(peer) => {
                        fdb.forget_peer(PeerId(peer));
                        model.retain(|_, (owner, _)| *owner != peer);
                    }
                    Op::Expire => {
                        fdb.expire(now_ms);
                        model.retain(|_, (_, seen)| now_ms - *seen <= AGEING_MS);
                    }
                    Op::Lookup(n) => {
                        proptest::prop_assert_eq!(fdb.lookup(mac(n)), model.get(&n).map(|(peer, _)| PeerId(*peer)));
                    }
                }
            }
            let mut expected: Vec<_> = model.iter().map(|(n, (peer, seen))| (mac(*n), PeerId(*peer), *seen)).collect();
            expected.sort_by_key(|(mac, _, _)| mac.0);
            proptest::prop_assert_eq!(fdb.entries(), expected);
        }
    }

    /// Readers on other threads look MACs up while a learner churns (learns, forgets, ages):
    /// a MAC is only ever learned behind one peer here, so any other answer would be a torn read.
    #[test]
    fn readers_see_whole_entries_while_a_learner_churns() {
        let fdb = Fdb::default();
        let owner = |n: u32| PeerId(n as usize % 8);
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        let mut found = 0u64;
                        loop {
                            let finished = done.load(Ordering::Relaxed);
                            for n in 0..2_000 {
                                if let Some(peer) = fdb.lookup(mac(n)) {
                                    assert_eq!(peer, owner(n), "never another entry's owner");
                                    found += 1;
                                }
                            }
                            if finished {
                                break found;
                            }
                        }
                    })
                })
                .collect();
            let mut now_ms = 0;
            for round in 0..20u64 {
                for n in 0..2_000 {
                    now_ms += 5;
                    fdb.learn(mac(n), owner(n), now_ms).unwrap();
                }
                fdb.forget_peer(PeerId(round as usize % 8));
                fdb.expire(now_ms + AGEING_MS - 5_000);
            }
            done.store(true, Ordering::Relaxed);
            for reader in readers {
                reader.join().expect("reader");
            }
        });
    }
}
