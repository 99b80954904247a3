//! Every dropped packet is counted by reason, globally and per peer, and the most recent ones are
//! kept in a bounded ring for `ikectl drops`.
//!
//! Counting is a relaxed atomic add; only recording into the ring takes a lock, and the ring is
//! written at most `RING_RECORDS_PER_SECOND` times a second so a flood of bad packets cannot turn
//! the drop path into a lock convoy.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use mesh_config::control::{DropReason, DropRecord, DropReport, Spi};

use crate::topology::PeerId;

/// How many recent drops `ikectl drops` can show.
pub const RING_CAPACITY: usize = 256;
/// Ring insertions per second, at most.
const RING_RECORDS_PER_SECOND: u64 = 200;

const REASONS: usize = DropReason::ALL.len();

/// One counter per drop reason.
#[derive(Debug, Default)]
pub struct ReasonCounters([AtomicU64; REASONS]);

impl ReasonCounters {
    pub fn add(&self, reason: DropReason) {
        self.0[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()].load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The non-zero counters.
    pub fn snapshot(&self) -> BTreeMap<DropReason, u64> {
        DropReason::ALL.iter().map(|reason| (*reason, self.get(*reason))).filter(|(_, count)| *count > 0).collect()
    }
}

/// What is known about a dropped packet at the point it was dropped.
#[derive(Debug, Clone, Copy, Default)]
pub struct DropContext {
    pub peer: Option<PeerId>,
    pub spi: Option<u32>,
    pub sequence: Option<u64>,
    pub outer_source: Option<SocketAddr>,
    pub vni: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
struct RingEntry {
    at_unix_ms: u64,
    reason: DropReason,
    context: DropContext,
}

#[derive(Debug)]
pub struct Drops {
    by_reason: ReasonCounters,
    /// Indexed by `PeerId`; grows when a reload adds peers.
    by_peer: ArcSwap<Vec<Arc<ReasonCounters>>>,
    unattributed: ReasonCounters,
    ring: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    entries: VecDeque<RingEntry>,
    second: u64,
    recorded_this_second: u64,
}

impl Drops {
    pub fn new(peer_count: usize) -> Self {
        Drops {
            by_reason: ReasonCounters::default(),
            by_peer: ArcSwap::from_pointee((0..peer_count).map(|_| Arc::default()).collect()),
            unattributed: ReasonCounters::default(),
            ring: Mutex::new(Ring {
                entries: VecDeque::with_capacity(RING_CAPACITY),
                second: 0,
                recorded_this_second: 0,
            }),
        }
    }

    /// Makes room for the counters of peer ids up to `peer_count` (reload; one writer at a time).
    pub fn add_peers(&self, peer_count: usize) {
        let current = self.by_peer.load_full();
        if current.len() < peer_count {
            let mut grown = (*current).clone();
            grown.resize_with(peer_count, Arc::default);
            self.by_peer.store(Arc::new(grown));
        }
    }

    pub fn record(&self, reason: DropReason, context: DropContext) {
        self.by_reason.add(reason);
        let by_peer = self.by_peer.load();
        match context.peer.and_then(|peer| by_peer.get(peer.0)) {
            Some(counters) => counters.add(reason),
            None => self.unattributed.add(reason),
        }
        let at_unix_ms = unix_ms();
        // A poisoned ring only loses history; counting above already happened.
        if let Ok(mut ring) = self.ring.lock() {
            let second = at_unix_ms / 1000;
            if ring.second != second {
                ring.second = second;
                ring.recorded_this_second = 0;
            }
            if ring.recorded_this_second >= RING_RECORDS_PER_SECOND {
                return;
            }
            ring.recorded_this_second += 1;
            if ring.entries.len() == RING_CAPACITY {
                ring.entries.pop_front();
            }
            ring.entries.push_back(RingEntry { at_unix_ms, reason, context });
        }
    }

    pub fn total(&self) -> u64 {
        self.by_reason.total()
    }

    /// Drops of one reason for one peer.
    pub fn peer_count(&self, peer: PeerId, reason: DropReason) -> u64 {
        self.by_peer.load().get(peer.0).map_or(0, |counters| counters.get(reason))
    }

    pub fn peer_total(&self, peer: PeerId) -> u64 {
        self.by_peer.load().get(peer.0).map_or(0, |counters| counters.total())
    }

    /// The report for `ikectl drops`; `peer_name` turns ids into names, `only` filters to one peer.
    pub fn report(&self, peer_name: impl Fn(PeerId) -> String, only: Option<PeerId>) -> DropReport {
        let mut by_peer = BTreeMap::new();
        let by_peer_counters = self.by_peer.load();
        for (index, counters) in by_peer_counters.iter().enumerate() {
            let id = PeerId(index);
            if only.is_some_and(|o| o != id) {
                continue;
            }
            let counts = counters.snapshot();
            if !counts.is_empty() {
                by_peer.insert(peer_name(id), counts);
            }
        }
        let unattributed = self.unattributed.snapshot();
        if only.is_none() && !unattributed.is_empty() {
            by_peer.insert("-".to_string(), unattributed);
        }
        let by_reason = match only {
            None => self.by_reason.snapshot(),
            Some(peer) => by_peer_counters.get(peer.0).map(|counters| counters.snapshot()).unwrap_or_default(),
        };
        let recent = self
            .ring
            .lock()
            .map(|ring| {
                ring.entries
                    .iter()
                    .filter(|entry| only.is_none() || entry.context.peer == only)
                    .map(|entry| DropRecord {
                        at_unix_ms: entry.at_unix_ms,
                        reason: entry.reason,
                        peer: entry.context.peer.map(&peer_name),
                        spi: entry.context.spi.map(Spi),
                        sequence: entry.context.sequence,
                        outer_source: entry.context.outer_source,
                        vni: entry.context.vni,
                    })
                    .collect()
            })
            .unwrap_or_default();
        DropReport { total: by_reason.values().sum(), by_reason, by_peer, recent }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason_and_peer() {
        let drops = Drops::new(2);
        drops
            .record(DropReason::Replay, DropContext { peer: Some(PeerId(1)), spi: Some(0x1001), ..Default::default() });
        drops.record(DropReason::Replay, DropContext { peer: Some(PeerId(1)), ..Default::default() });
        drops.record(DropReason::UnknownSpi, DropContext::default());
        assert_eq!(drops.total(), 3);
        assert_eq!(drops.peer_total(PeerId(1)), 2);
        assert_eq!(drops.peer_total(PeerId(0)), 0);
        let report = drops.report(|id| format!("n{}", id.0), None);
        assert_eq!(report.total, 3);
        assert_eq!(report.by_reason[&DropReason::Replay], 2);
        assert_eq!(report.by_peer["n1"][&DropReason::Replay], 2);
        assert_eq!(report.by_peer["-"][&DropReason::UnknownSpi], 1);
        assert_eq!(report.recent.len(), 3);
        assert_eq!(report.recent[0].spi, Some(Spi(0x1001)));
        let only = drops.report(|id| format!("n{}", id.0), Some(PeerId(1)));
        assert_eq!(only.total, 2);
        assert_eq!(only.recent.len(), 2);
        assert!(!only.by_peer.contains_key("-"));
    }

    #[test]
    fn peers_added_by_a_reload_are_counted() {
        let drops = Drops::new(1);
        drops.record(DropReason::Replay, DropContext { peer: Some(PeerId(2)), ..Default::default() });
        assert_eq!(drops.peer_total(PeerId(2)), 0, "unknown ids count as unattributed");
        drops.add_peers(3);
        drops.record(DropReason::Replay, DropContext { peer: Some(PeerId(2)), ..Default::default() });
        assert_eq!(drops.peer_total(PeerId(2)), 1);
        assert_eq!(drops.total(), 2);
    }

    #[test]
    fn ring_is_bounded() {
        let drops = Drops::new(0);
        for _ in 0..(RING_CAPACITY + RING_RECORDS_PER_SECOND as usize) {
            drops.record(DropReason::Malformed, DropContext::default());
        }
        let report = drops.report(|_| String::new(), None);
        assert_eq!(report.total, (RING_CAPACITY + RING_RECORDS_PER_SECOND as usize) as u64);
        assert!(report.recent.len() <= RING_CAPACITY);
    }
}
