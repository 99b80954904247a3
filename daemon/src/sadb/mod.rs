//! The security association database.
//!
//! Inbound SAs are found by SPI, outbound SAs by peer. The tables are an immutable snapshot behind
//! an `ArcSwap`: workers load the snapshot once per batch without taking any lock. Only the SA
//! manager (`manager`, the one writer: manual keying, IKE, flush and reload all go through it)
//! installs or removes SAs, by publishing a new snapshot; the compiler holds everyone else to it. Per-SA
//! state that changes per packet lives in atomics, except the replay window, which has a lock of
//! its own per SA (never a global one).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::{ArcSwap, Guard};
use mesh_config::control::{DropReason, SaOrigin};
use mesh_config::{Cipher, Encap, Mode};

use crate::drops::ReasonCounters;
use crate::esp::{Opener, ReplayWindow, Sealer};
use crate::topology::PeerId;

pub mod manager;
pub mod snapshot;

/// Without ESN, an outbound SA is rekeyed once this many sequence numbers are used (the 32-bit
/// space must never wrap; at 10 Gbit/s of small packets the rest lasts minutes).
pub const SEQUENCE_REKEY_AT: u64 = 3 << 30;
/// How many sequence numbers apart the datapath repeats its notice that an SA runs out.
const RUNNING_OUT_REPEAT: u64 = 1 << 16;

/// Properties common to both directions.
#[derive(Debug, Clone, Copy)]
pub struct SaParams {
    pub spi: u32,
    pub peer: PeerId,
    pub cipher: Cipher,
    pub mode: Mode,
    pub encap: Encap,
    pub esn: bool,
    pub origin: SaOrigin,
    pub created_ms: u64,
    /// Where the peer's ESP comes from and ours goes: its address and port 4500, or what its
    /// NAT shows (the port is ignored for raw ESP).
    pub remote: SocketAddr,
    /// The peer's ESP came from another address or port than the peer's own (address, 4500)
    /// when the SA was made: a NAT is in front of the peer. Kept when the SA moves.
    pub behind_nat: bool,
}

impl SaParams {
    /// Whether the SA may follow its peer to another address: its ESP crossed a NAT (in UDP)
    /// when the SA was made (RFC 7296 §2.23, RFC 3948).
    pub fn follows_peer(&self) -> bool {
        self.encap == Encap::Udp && self.behind_nat
    }
}

/// Traffic and drop counters of one SA.
#[derive(Debug, Default)]
pub struct SaCounters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub last_used_ms: AtomicU64,
    pub drops: ReasonCounters,
}

impl SaCounters {
    pub fn count(&self, bytes: usize, now_ms: u64) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.last_used_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn count_drop(&self, reason: DropReason) {
        self.drops.add(reason);
    }
}

/// The key, sequence numbers and counters are shared with the copies `with_params` makes, so that a
/// worker still sending on the old copy never reuses a sequence number of the new one.
pub struct OutboundSa {
    pub params: SaParams,
    pub sealer: Arc<Sealer>,
    /// The last sequence number handed out (0: none yet).
    sequence: Arc<AtomicU64>,
    /// The highest number it may hand out: the reservation on disk of a manual SA
    /// (manual_nonces.rs), unlimited for IKE SAs.
    reserved: Arc<AtomicU64>,
    pub counters: Arc<SaCounters>,
}

impl OutboundSa {
    pub fn new(params: SaParams, sealer: Sealer) -> Self {
        OutboundSa::resumed(params, sealer, 0, u64::MAX)
    }

    /// An SA whose numbers up to `floor` were used before (a manual SA's earlier lives) and
    /// which may use them up to `reserved` for now.
    pub fn resumed(params: SaParams, sealer: Sealer, floor: u64, reserved: u64) -> Self {
        OutboundSa {
            params,
            sealer: Arc::new(sealer),
            sequence: Arc::new(AtomicU64::new(floor)),
            reserved: Arc::new(AtomicU64::new(reserved)),
            counters: Arc::default(),
        }
    }

    /// The same SA with other parameters (a peer whose NAT mapping changed: another `remote`):
    /// key, sequence numbers, reservation and counters stay shared with this one.
    pub fn with_params(&self, params: SaParams) -> Self {
        OutboundSa {
            params,
            sealer: self.sealer.clone(),
            sequence: self.sequence.clone(),
            reserved: self.reserved.clone(),
            counters: self.counters.clone(),
        }
    }

    /// Reserves the next sequence number, or `None` once the SA is used up (a 32-bit sequence
    /// number must never wrap without ESN, RFC 4303 §3.3.3) or has used its reservation.
    pub fn next_sequence(&self) -> Option<u64> {
        let limit = if self.params.esn { u64::MAX } else { u64::from(u32::MAX) };
        let limit = limit.min(self.reserved.load(Ordering::Acquire));
        let previous = self.sequence.fetch_add(1, Ordering::Relaxed);
        (previous < limit).then_some(previous + 1)
    }

    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// Raises the reservation, once the new one is on disk.
    pub fn reserve_until(&self, reserved: u64) {
        self.reserved.fetch_max(reserved, Ordering::AcqRel);
    }

    pub fn last_sequence(&self) -> u64 {
        self.sequence.load(Ordering::Relaxed)
    }

    /// Whether the worker that handed out `sequence` tells the SA manager that this SA needs a
    /// rekey: at `SEQUENCE_REKEY_AT` and again every `RUNNING_OUT_REPEAT` numbers after (in case
    /// a notice was lost to a full queue). Never with ESN.
    pub fn running_out(&self, sequence: u64) -> bool {
        !self.params.esn
            && sequence >= SEQUENCE_REKEY_AT
            && (sequence - SEQUENCE_REKEY_AT).is_multiple_of(RUNNING_OUT_REPEAT)
    }
}

/// Like `OutboundSa`, the copies `with_params` makes share the key, replay window and counters.
pub struct InboundSa {
    pub params: SaParams,
    pub opener: Arc<Opener>,
    replay: Arc<Mutex<ReplayWindow>>,
    pub counters: Arc<SaCounters>,
}

impl InboundSa {
    pub fn new(params: SaParams, opener: Opener, replay: ReplayWindow) -> Self {
        InboundSa { params, opener: Arc::new(opener), replay: Arc::new(Mutex::new(replay)), counters: Arc::default() }
    }

    /// The same SA with other parameters (a peer whose NAT mapping changed: another `remote`).
    pub fn with_params(&self, params: SaParams) -> Self {
        InboundSa { params, opener: self.opener.clone(), replay: self.replay.clone(), counters: self.counters.clone() }
    }

    /// The replay window of this SA. A worker that panicked while holding it cannot have left it
    /// in a state that accepts a replay (accept only sets bits), so poisoning is ignored.
    pub fn replay(&self) -> MutexGuard<'_, ReplayWindow> {
        self.replay.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One immutable version of the SA tables.
#[derive(Default)]
pub struct SaTables {
    inbound: HashMap<u32, Arc<InboundSa>>,
    /// Indexed by `PeerId`.
    outbound: Vec<Option<Arc<OutboundSa>>>,
}

impl SaTables {
    pub fn inbound(&self, spi: u32) -> Option<&Arc<InboundSa>> {
        self.inbound.get(&spi)
    }

    pub fn outbound(&self, peer: PeerId) -> Option<&Arc<OutboundSa>> {
        self.outbound.get(peer.0).and_then(Option::as_ref)
    }

    pub fn inbound_sas(&self) -> impl Iterator<Item = &Arc<InboundSa>> {
        self.inbound.values()
    }

    pub fn outbound_sas(&self) -> impl Iterator<Item = &Arc<OutboundSa>> {
        self.outbound.iter().flatten()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SadbError {
    #[error("SPI 0x{0:08x} is already used by another inbound SA on this node; pick another SPI")]
    DuplicateSpi(u32),
}

pub struct Sadb {
    tables: ArcSwap<SaTables>,
    /// Serialises writers so that no update is lost between load and store.
    writer: Mutex<()>,
}

impl Sadb {
    pub fn new(peer_count: usize) -> Self {
        let tables = SaTables { inbound: HashMap::new(), outbound: vec![None; peer_count] };
        Sadb { tables: ArcSwap::from_pointee(tables), writer: Mutex::new(()) }
    }

    /// The current tables; the hot path calls this once per batch.
    pub fn load(&self) -> Guard<Arc<SaTables>> {
        self.tables.load()
    }

    /// The tables now, to keep (not for the packet path: `load` is cheaper).
    pub fn load_full(&self) -> Arc<SaTables> {
        self.tables.load_full()
    }

    fn update<R>(&self, change: impl FnOnce(&mut SaTables) -> R) -> R {
        let _writer = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.tables.load_full();
        let mut next = SaTables { inbound: current.inbound.clone(), outbound: current.outbound.clone() };
        let result = change(&mut next);
        self.tables.store(Arc::new(next));
        result
    }

    pub(in crate::sadb) fn install_inbound(&self, sa: InboundSa) -> Result<(), SadbError> {
        let spi = sa.params.spi;
        self.update(|tables| {
            if tables.inbound.contains_key(&spi) {
                return Err(SadbError::DuplicateSpi(spi));
            }
            tables.inbound.insert(spi, Arc::new(sa));
            Ok(())
        })
    }

    /// Installs the outbound SA for its peer, replacing (and returning) the previous one.
    pub(in crate::sadb) fn install_outbound(&self, sa: OutboundSa) -> Option<Arc<OutboundSa>> {
        let peer = sa.params.peer;
        self.update(|tables| {
            if tables.outbound.len() <= peer.0 {
                tables.outbound.resize(peer.0 + 1, None);
            }
            tables.outbound[peer.0].replace(Arc::new(sa))
        })
    }

    /// Removes one inbound SA; true when it existed.
    pub(in crate::sadb) fn remove_inbound(&self, spi: u32) -> bool {
        self.update(|tables| tables.inbound.remove(&spi).is_some())
    }

    /// Removes `peer`'s outbound SA if it is still the one with `spi` (a newer one stays).
    pub(in crate::sadb) fn remove_outbound(&self, peer: PeerId, spi: u32) -> bool {
        self.update(|tables| match tables.outbound.get_mut(peer.0) {
            Some(slot) if slot.as_ref().is_some_and(|sa| sa.params.spi == spi) => slot.take().is_some(),
            _ => false,
        })
    }

    /// Points every SA of `peer` at `remote`; returns how many SAs moved.
    pub(in crate::sadb) fn move_peer(&self, peer: PeerId, remote: SocketAddr) -> usize {
        self.update(|tables| {
            let mut moved = 0;
            if let Some(Some(sa)) = tables.outbound.get_mut(peer.0) {
                if sa.params.remote != remote {
                    *sa = Arc::new(sa.with_params(SaParams { remote, ..sa.params }));
                    moved += 1;
                }
            }
            for sa in tables.inbound.values_mut() {
                if sa.params.peer == peer && sa.params.remote != remote {
                    *sa = Arc::new(sa.with_params(SaParams { remote, ..sa.params }));
                    moved += 1;
                }
            }
            moved
        })
    }

    /// Removes every SA of `peer` (or of all peers) and returns the SPIs removed.
    pub(in crate::sadb) fn remove(&self, peer: Option<PeerId>) -> Vec<u32> {
        let matches = |p: PeerId| peer.is_none_or(|wanted| wanted == p);
        self.update(|tables| {
            let mut removed: Vec<u32> = Vec::new();
            for slot in tables.outbound.iter_mut() {
                if slot.as_ref().is_some_and(|sa| matches(sa.params.peer)) {
                    removed.extend(slot.take().map(|sa| sa.params.spi));
                }
            }
            tables.inbound.retain(|spi, sa| {
                let remove = matches(sa.params.peer);
                if remove {
                    removed.push(*spi);
                }
                !remove
            });
            removed.sort_unstable();
            removed
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::esp::{KeyMaterial, DEFAULT_REPLAY_WINDOW};

    pub(crate) fn params(spi: u32, peer: usize, esn: bool) -> SaParams {
        SaParams {
            spi,
            peer: PeerId(peer),
            cipher: Cipher::Aes256Gcm16,
            mode: Mode::Transport,
            encap: Encap::Udp,
            esn,
            origin: SaOrigin::Manual,
            created_ms: 1,
            remote: "198.18.0.2:4500".parse().unwrap(),
            behind_nat: false,
        }
    }

    pub(crate) fn key() -> KeyMaterial {
        KeyMaterial::from_bytes(&[7u8; 36]).unwrap()
    }

    pub(crate) fn inbound(spi: u32, peer: usize) -> InboundSa {
        let opener = Opener::new(Cipher::Aes256Gcm16, &key()).unwrap();
        InboundSa::new(params(spi, peer, false), opener, ReplayWindow::new(DEFAULT_REPLAY_WINDOW))
    }

    fn outbound(spi: u32, peer: usize, esn: bool) -> OutboundSa {
        OutboundSa::new(params(spi, peer, esn), Sealer::new(Cipher::Aes256Gcm16, &key()).unwrap())
    }

    #[test]
    fn install_lookup_remove() {
        let sadb = Sadb::new(2);
        sadb.install_inbound(inbound(0x1001, 0)).unwrap();
        sadb.install_inbound(inbound(0x1002, 1)).unwrap();
        assert_eq!(sadb.install_inbound(inbound(0x1001, 1)), Err(SadbError::DuplicateSpi(0x1001)));
        assert!(sadb.install_outbound(outbound(0x2001, 0, false)).is_none());
        let old = sadb.install_outbound(outbound(0x2002, 0, false)).unwrap();
        assert_eq!(old.params.spi, 0x2001);

        let before = sadb.load();
        assert_eq!(before.inbound(0x1001).unwrap().params.peer, PeerId(0));
        assert_eq!(before.outbound(PeerId(0)).unwrap().params.spi, 0x2002);
        assert!(before.outbound(PeerId(1)).is_none());

        assert_eq!(sadb.remove(Some(PeerId(0))), vec![0x1001, 0x2002]);
        // A reader holding the old snapshot keeps a consistent view.
        assert!(before.inbound(0x1001).is_some());
        let after = sadb.load();
        assert!(after.inbound(0x1001).is_none());
        assert!(after.inbound(0x1002).is_some());
        assert_eq!(sadb.remove(None), vec![0x1002]);
    }

    #[test]
    fn single_removals_leave_newer_sas_alone() {
        let sadb = Sadb::new(1);
        sadb.install_inbound(inbound(0x1001, 0)).unwrap();
        sadb.install_outbound(outbound(0x2001, 0, false));
        sadb.install_outbound(outbound(0x2002, 0, false));
        assert!(!sadb.remove_outbound(PeerId(0), 0x2001), "replaced already");
        assert_eq!(sadb.load().outbound(PeerId(0)).unwrap().params.spi, 0x2002);
        assert!(sadb.remove_outbound(PeerId(0), 0x2002));
        assert!(sadb.load().outbound(PeerId(0)).is_none());
        assert!(sadb.remove_inbound(0x1001));
        assert!(!sadb.remove_inbound(0x1001));
    }

    #[test]
    fn sequence_numbers_never_wrap() {
        let sa = outbound(0x3001, 0, false);
        assert_eq!(sa.next_sequence(), Some(1));
        assert_eq!(sa.next_sequence(), Some(2));
        sa.sequence.store(u64::from(u32::MAX) - 1, Ordering::Relaxed);
        assert_eq!(sa.next_sequence(), Some(u64::from(u32::MAX)));
        assert_eq!(sa.next_sequence(), None);
        assert_eq!(sa.next_sequence(), None);

        let esn = outbound(0x3002, 0, true);
        esn.sequence.store(u64::from(u32::MAX), Ordering::Relaxed);
        assert_eq!(esn.next_sequence(), Some(u64::from(u32::MAX) + 1));
    }

    #[test]
    fn a_resumed_sa_starts_above_its_floor_and_stops_at_its_reservation() {
        let fresh = outbound(0x3003, 0, false);
        let sa = fresh.with_params(fresh.params);
        sa.sequence.store(1_000, Ordering::Relaxed);
        sa.reserved.store(1_002, Ordering::Relaxed);
        assert_eq!(sa.next_sequence(), Some(1_001));
        assert_eq!(sa.next_sequence(), Some(1_002));
        assert_eq!(sa.next_sequence(), None, "not past the reservation on disk");
        sa.reserve_until(2_000);
        sa.reserve_until(1_500);
        assert_eq!(sa.reserved(), 2_000, "reservations only grow");
        let next = sa.next_sequence().unwrap();
        assert!(next > 1_002 && next <= 2_000, "skips refused numbers, never repeats one: {next}");
    }
}
