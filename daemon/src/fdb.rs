//! The overlay forwarding database: which peer node an overlay MAC lives behind, learned from the
//! source MAC of frames that arrive decrypted from that peer.
//!
//! Lookups happen per frame on every worker, learning of a new or moved MAC is rare: one
//! copy-on-write table per overlay behind an `ArcSwap`, with the last-seen time of an entry in an
//! atomic so that refreshing a known MAC never writes the table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::ids::PeerId;
use crate::wire::ethernet::EthernetAddress;

/// Learned entries not refreshed for this long are forgotten (the Linux bridge default).
pub const AGEING_MS: u64 = 300_000;
/// A peer cannot make this node hold more than this many MACs per overlay.
pub const MAX_ENTRIES_PER_OVERLAY: usize = 65_536;
/// Refresh the last-seen time at most this often, so that busy flows do not bounce the cache line.
const REFRESH_GRANULARITY_MS: u64 = 1_000;

#[derive(Debug)]
pub struct FdbEntry {
    pub peer: PeerId,
    pub last_seen_ms: AtomicU64,
}

type Table = HashMap<EthernetAddress, Arc<FdbEntry>>;

/// The FDB of one overlay.
#[derive(Debug, Default)]
pub struct Fdb {
    table: ArcSwap<Table>,
    writer: Mutex<()>,
}

impl Fdb {
    /// The peer behind `mac`, if it was learned.
    pub fn lookup(&self, mac: EthernetAddress) -> Option<PeerId> {
        self.table.load().get(&mac).map(|entry| entry.peer)
    }

    /// Records that `mac` was seen behind `peer` at `now_ms`.
    pub fn learn(&self, mac: EthernetAddress, peer: PeerId, now_ms: u64) {
        if !mac.is_unicast() {
            return;
        }
        if let Some(entry) = self.table.load().get(&mac) {
            if entry.peer == peer {
                if now_ms.saturating_sub(entry.last_seen_ms.load(Ordering::Relaxed)) >= REFRESH_GRANULARITY_MS {
                    entry.last_seen_ms.store(now_ms, Ordering::Relaxed);
                }
                return;
            }
        }
        self.update(|table| {
            if table.len() >= MAX_ENTRIES_PER_OVERLAY && !table.contains_key(&mac) {
                return;
            }
            table.insert(mac, Arc::new(FdbEntry { peer, last_seen_ms: AtomicU64::new(now_ms) }));
        });
    }

    /// Forgets every entry behind `peer` (a reload removed it or makes its SAs anew).
    pub fn forget_peer(&self, peer: PeerId) {
        if self.table.load().values().any(|entry| entry.peer == peer) {
            self.update(|table| table.retain(|_, entry| entry.peer != peer));
        }
    }

    /// Forgets entries older than `AGEING_MS`.
    pub fn expire(&self, now_ms: u64) {
        let stale = |entry: &FdbEntry| now_ms.saturating_sub(entry.last_seen_ms.load(Ordering::Relaxed)) > AGEING_MS;
        if self.table.load().values().any(|entry| stale(entry)) {
            self.update(|table| table.retain(|_, entry| !stale(entry)));
        }
    }

    /// The entries, for `ikectl fdb`: MAC, peer, last seen.
    pub fn entries(&self) -> Vec<(EthernetAddress, PeerId, u64)> {
        let mut entries: Vec<_> = self
            .table
            .load()
            .iter()
            .map(|(mac, entry)| (*mac, entry.peer, entry.last_seen_ms.load(Ordering::Relaxed)))
            .collect();
        entries.sort_by_key(|(mac, _, _)| mac.0);
        entries
    }

    fn update(&self, change: impl FnOnce(&mut Table)) {
        let _writer = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next = (**self.table.load()).clone();
        change(&mut next);
        self.table.store(Arc::new(next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x0a]);

    #[test]
    fn learns_moves_and_ages() {
        let fdb = Fdb::default();
        assert_eq!(fdb.lookup(A), None);
        fdb.learn(A, PeerId(1), 10);
        assert_eq!(fdb.lookup(A), Some(PeerId(1)));
        fdb.learn(A, PeerId(2), 20);
        assert_eq!(fdb.lookup(A), Some(PeerId(2)));
        fdb.learn(A, PeerId(2), 5_000);
        assert_eq!(fdb.entries(), vec![(A, PeerId(2), 5_000)]);
        fdb.expire(5_000 + AGEING_MS);
        assert_eq!(fdb.lookup(A), Some(PeerId(2)));
        fdb.expire(5_001 + AGEING_MS);
        assert_eq!(fdb.lookup(A), None);
    }

    #[test]
    fn forgets_a_removed_peer() {
        let fdb = Fdb::default();
        let b = EthernetAddress([0x02, 0, 0, 0, 0, 0x0b]);
        fdb.learn(A, PeerId(1), 10);
        fdb.learn(b, PeerId(2), 10);
        fdb.forget_peer(PeerId(1));
        assert_eq!(fdb.entries(), vec![(b, PeerId(2), 10)]);
    }

    #[test]
    fn never_learns_group_addresses() {
        let fdb = Fdb::default();
        fdb.learn(EthernetAddress([0xff; 6]), PeerId(0), 1);
        fdb.learn(EthernetAddress([0x01, 0, 0x5e, 0, 0, 1]), PeerId(0), 1);
        assert!(fdb.entries().is_empty());
    }
}
