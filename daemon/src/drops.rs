//! Every dropped packet is counted by reason, globally and per peer, and the most recent ones are
//! kept in a bounded ring for `ikectl drops`.
//!
//! Counting is a relaxed atomic add; only recording into the ring takes a lock, and the ring is
//! written at most `RING_RECORDS_PER_SECOND` times a second so a flood of bad packets cannot turn
//! the drop path into a lock convoy. Followers (`ikectl drops --follow`) wait on a watch of the
//! last recorded id instead of polling the ring.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use mesh_config::control::{self, DropReason, DropRecord, DropReport, Spi};
use tokio::sync::watch;

use crate::topology::PeerId;
use crate::wire::ethernet::{self, EthernetAddress, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use crate::wire::{ipv4, ipv6};

/// How many recent drops `ikectl drops` can show.
pub const RING_CAPACITY: usize = 256;
/// Ring insertions per second, at most.
const RING_RECORDS_PER_SECOND: u64 = 200;

const REASONS: usize = DropReason::ALL.len();

/// One counter per drop reason.
#[derive(Debug)]
pub struct ReasonCounters([AtomicU64; REASONS]);

// Arrays implement `Default` only up to 32 elements.
impl Default for ReasonCounters {
    fn default() -> Self {
        ReasonCounters(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

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
    pub inner: Option<InnerAddresses>,
}

/// The addresses of an overlay frame, read only when it is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerAddresses {
    pub source_mac: EthernetAddress,
    pub destination_mac: EthernetAddress,
    /// Source and destination, for IPv4 and IPv6 frames.
    pub ip: Option<(IpAddr, IpAddr)>,
}

impl InnerAddresses {
    /// `None` when `frame` is not even an Ethernet header.
    pub fn of_frame(frame: &[u8]) -> Option<Self> {
        let frame = ethernet::Frame::new_checked(frame).ok()?;
        let ip = match frame.ethertype() {
            ETHERTYPE_IPV4 => ipv4::Packet::new_checked(frame.payload())
                .ok()
                .map(|p| (IpAddr::from(p.source_address()), IpAddr::from(p.destination_address()))),
            ETHERTYPE_IPV6 => ipv6::Packet::new_checked(frame.payload())
                .ok()
                .map(|p| (IpAddr::from(p.source_address()), IpAddr::from(p.destination_address()))),
            _ => None,
        };
        Some(InnerAddresses { source_mac: frame.source(), destination_mac: frame.destination(), ip })
    }

    fn to_control(self) -> control::InnerAddresses {
        control::InnerAddresses {
            source_mac: self.source_mac.to_string(),
            destination_mac: self.destination_mac.to_string(),
            source_ip: self.ip.map(|(source, _)| source),
            destination_ip: self.ip.map(|(_, destination)| destination),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct RingEntry {
    id: u64,
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
    /// The second `ring_admitted` counts entries for (Unix time).
    ring_second: AtomicU64,
    ring_admitted: AtomicU64,
    /// The id of the last entry in the ring.
    last_id: watch::Sender<u64>,
}

#[derive(Debug)]
struct Ring {
    entries: VecDeque<RingEntry>,
    last_id: u64,
}

impl Drops {
    pub fn new(peer_count: usize) -> Self {
        Drops {
            by_reason: ReasonCounters::default(),
            by_peer: ArcSwap::from_pointee((0..peer_count).map(|_| Arc::default()).collect()),
            unattributed: ReasonCounters::default(),
            ring: Mutex::new(Ring { entries: VecDeque::with_capacity(RING_CAPACITY), last_id: 0 }),
            ring_second: AtomicU64::new(0),
            ring_admitted: AtomicU64::new(0),
            last_id: watch::Sender::new(0),
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
        self.record_with_inner(reason, context, || context.inner);
    }

    /// Counts the drop; `inner` (parsing the frame) runs only when the ring takes the entry.
    pub fn record_with_inner(
        &self,
        reason: DropReason,
        mut context: DropContext,
        inner: impl FnOnce() -> Option<InnerAddresses>,
    ) {
        self.by_reason.add(reason);
        let by_peer = self.by_peer.load();
        match context.peer.and_then(|peer| by_peer.get(peer.0)) {
            Some(counters) => counters.add(reason),
            None => self.unattributed.add(reason),
        }
        let at_unix_ms = unix_ms();
        // Checked before the lock, so that a flood of drops costs an atomic add, not a convoy.
        if !self.ring_admits(at_unix_ms / 1000) {
            return;
        }
        context.inner = inner();
        // A poisoned ring only loses history; counting above already happened.
        if let Ok(mut ring) = self.ring.lock() {
            if ring.entries.len() == RING_CAPACITY {
                ring.entries.pop_front();
            }
            ring.last_id += 1;
            let id = ring.last_id;
            ring.entries.push_back(RingEntry { id, at_unix_ms, reason, context });
            // Replaces a u64 in place: no allocation, and followers wake up.
            self.last_id.send_replace(id);
        }
    }

    /// At most `RING_RECORDS_PER_SECOND` ring entries a second (a soft limit: two threads that
    /// see a new second at once may each let a few more through).
    fn ring_admits(&self, second: u64) -> bool {
        if self.ring_second.load(Ordering::Relaxed) != second {
            self.ring_second.store(second, Ordering::Relaxed);
            self.ring_admitted.store(0, Ordering::Relaxed);
        }
        self.ring_admitted.fetch_add(1, Ordering::Relaxed) < RING_RECORDS_PER_SECOND
    }

    /// Wakes up whenever a drop is recorded into the ring.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last_id.subscribe()
    }

    /// The ring's drops after `after`, oldest first.
    pub fn since(&self, after: u64, peer_name: impl Fn(PeerId) -> String, only: Option<PeerId>) -> Vec<DropRecord> {
        self.ring
            .lock()
            .map(|ring| {
                ring.entries
                    .iter()
                    .filter(|entry| entry.id > after && (only.is_none() || entry.context.peer == only))
                    .map(|entry| entry.to_record(&peer_name))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn total(&self) -> u64 {
        self.by_reason.total()
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
        let last_id = *self.last_id.borrow();
        let recent = self.since(0, peer_name, only);
        DropReport { total: by_reason.values().sum(), by_reason, by_peer, recent, last_id, kernel: None }
    }
}

impl RingEntry {
    fn to_record(self, peer_name: impl Fn(PeerId) -> String) -> DropRecord {
        DropRecord {
            id: self.id,
            at_unix_ms: self.at_unix_ms,
            reason: self.reason,
            peer: self.context.peer.map(peer_name),
            spi: self.context.spi.map(Spi),
            sequence: self.context.sequence,
            outer_source: self.context.outer_source,
            vni: self.context.vni,
            inner: self.context.inner.map(InnerAddresses::to_control),
        }
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
        assert_eq!(Some(report.last_id), report.recent.last().map(|d| d.id));
    }

    #[test]
    fn followers_see_only_newer_drops() {
        let drops = Drops::new(1);
        let mut follower = drops.subscribe();
        drops.record(DropReason::Replay, DropContext::default());
        assert!(follower.has_changed().unwrap());
        assert_eq!(*follower.borrow_and_update(), 1);
        drops.record(DropReason::TooOld, DropContext { peer: Some(PeerId(0)), ..Default::default() });
        let newer = drops.since(1, |_| "n1".to_string(), None);
        assert_eq!(newer.len(), 1);
        assert_eq!((newer[0].id, newer[0].reason), (2, DropReason::TooOld));
        assert!(drops.since(2, |_| String::new(), None).is_empty());
        assert!(drops.since(0, |_| String::new(), Some(PeerId(0))).iter().all(|d| d.id == 2));
    }

    #[test]
    fn inner_addresses_of_an_ipv4_frame() {
        let mut frame = [0u8; ethernet::HEADER_LEN + ipv4::HEADER_LEN];
        ethernet::EthernetHeader {
            destination: EthernetAddress([2, 0, 0, 0, 0, 2]),
            source: EthernetAddress([2, 0, 0, 0, 0, 1]),
            ethertype: ETHERTYPE_IPV4,
        }
        .emit(&mut frame);
        crate::wire::ipv4::Ipv4Header {
            source: "10.244.0.1".parse().unwrap(),
            destination: "10.244.0.2".parse().unwrap(),
            protocol: ipv4::PROTOCOL_ICMP,
            payload_len: 0,
            hop_limit: 64,
            dont_fragment: true,
            identification: 0,
        }
        .emit(&mut frame[ethernet::HEADER_LEN..]);
        let inner = InnerAddresses::of_frame(&frame).unwrap().to_control();
        assert_eq!(inner.to_string(), "10.244.0.1 (02:00:00:00:00:01) -> 10.244.0.2 (02:00:00:00:00:02)");
        assert_eq!(InnerAddresses::of_frame(&frame[..10]), None);
    }
}
