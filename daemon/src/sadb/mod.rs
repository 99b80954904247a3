//! The security association database.
//!
//! Inbound SAs are found by SPI, outbound SAs by peer, each in an array of atomic slots
//! (`slots`): workers load the arrays once per batch and each SA they look up from its slot,
//! without taking any lock. Only the SA manager (`manager`, the one writer: manual keying, IKE,
//! flush and reload all go through it) installs or removes SAs, one slot at a time, so an install
//! or a removal costs the same with 10 peers or 1000 (no copy of the tables); the compiler holds
//! everyone else to it. Per-SA state that changes per packet lives in atomics, except the replay
//! window, which has a lock of its own per SA (never a global one).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::Guard;
use mesh_config::control::{DropReason, SaOrigin};
use mesh_config::{Cipher, Encap, Mode};

use crate::drops::ReasonCounters;
use crate::esp::{Opener, ReplayWindow, Sealer};
use crate::topology::PeerId;

pub mod early;
pub mod manager;
mod slots;
pub mod snapshot;

use slots::{BySpi, PeerSlots, PeerTable, SpiOccupancy, SpiSlots, SpiTable};
pub use slots::Held;

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
        self.add(1, bytes as u64, now_ms);
    }

    /// Counts `packets` of `bytes` in all at once (a run of them, summed by the datapath).
    pub fn add(&self, packets: u64, bytes: u64, now_ms: u64) {
        self.packets.fetch_add(packets, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
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

/// The SA tables as a reader sees them: `Sadb::load` takes the arrays once (per batch, on the
/// datapath), each lookup then loads one slot. An SA looked up stays alive while it is held,
/// even if the writer removes it meanwhile; the next lookup sees the change.
pub struct SaTables {
    inbound: Guard<Arc<SpiSlots<InboundSa>>>,
    outbound: Guard<Arc<PeerSlots<OutboundSa>>>,
}

impl SaTables {
    pub fn inbound(&self, spi: u32) -> Option<Held<InboundSa>> {
        self.inbound.get(spi)
    }

    pub fn outbound(&self, peer: PeerId) -> Option<Held<OutboundSa>> {
        self.outbound.get(peer.0)
    }

    pub fn inbound_sas(&self) -> impl Iterator<Item = Arc<InboundSa>> + '_ {
        self.inbound.iter()
    }

    pub fn outbound_sas(&self) -> impl Iterator<Item = Arc<OutboundSa>> + '_ {
        self.outbound.iter()
    }
}

impl BySpi for InboundSa {
    fn spi(&self) -> u32 {
        self.params.spi
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SadbError {
    #[error("SPI 0x{0:08x} is already used by another inbound SA on this node; pick another SPI")]
    DuplicateSpi(u32),
}

/// What only the writer reads: how full the inbound array is, and each peer's inbound SPIs, so
/// that removing or moving a peer's SAs visits only those.
#[derive(Default)]
struct Writer {
    inbound: SpiOccupancy,
    by_peer: HashMap<PeerId, Vec<u32>>,
}

impl Writer {
    fn forget(&mut self, peer: PeerId, spi: u32) {
        if let Some(spis) = self.by_peer.get_mut(&peer) {
            spis.retain(|filed| *filed != spi);
            if spis.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
    }
}

pub struct Sadb {
    inbound: SpiTable<InboundSa>,
    /// Indexed by `PeerId`.
    outbound: PeerTable<OutboundSa>,
    /// Serialises writers: each slot has one writer at a time, and the counts stay true.
    writer: Mutex<Writer>,
}

impl Sadb {
    /// Room for a few inbound SAs per peer (two while a rekey overlaps) before the first growth.
    pub fn new(peer_count: usize) -> Self {
        Sadb {
            inbound: SpiTable::with_capacity(peer_count * 8),
            outbound: PeerTable::with_len(peer_count),
            writer: Mutex::default(),
        }
    }

    /// The tables now; the hot path calls this once per batch.
    pub fn load(&self) -> SaTables {
        SaTables { inbound: self.inbound.load(), outbound: self.outbound.load() }
    }

    fn write<R>(&self, change: impl FnOnce(&mut Writer) -> R) -> R {
        let mut writer = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut writer)
    }

    pub(in crate::sadb) fn install_inbound(&self, sa: InboundSa) -> Result<(), SadbError> {
        let (spi, peer) = (sa.params.spi, sa.params.peer);
        self.write(|writer| {
            if !self.inbound.insert(&mut writer.inbound, Arc::new(sa)) {
                return Err(SadbError::DuplicateSpi(spi));
            }
            writer.by_peer.entry(peer).or_default().push(spi);
            Ok(())
        })
    }

    /// Installs the outbound SA for its peer, replacing (and returning) the previous one.
    pub(in crate::sadb) fn install_outbound(&self, sa: OutboundSa) -> Option<Arc<OutboundSa>> {
        let peer = sa.params.peer;
        self.write(|_| self.outbound.swap(peer.0, Some(Arc::new(sa))))
    }

    /// Removes one inbound SA; true when it existed.
    pub(in crate::sadb) fn remove_inbound(&self, spi: u32) -> bool {
        self.write(|writer| {
            let Some(sa) = self.inbound.remove(&mut writer.inbound, spi) else { return false };
            writer.forget(sa.params.peer, spi);
            true
        })
    }

    /// Removes `peer`'s outbound SA if it is still the one with `spi` (a newer one stays).
    pub(in crate::sadb) fn remove_outbound(&self, peer: PeerId, spi: u32) -> bool {
        self.write(|_| self.outbound.take_if(peer.0, |sa| sa.params.spi == spi).is_some())
    }

    /// Points every SA of `peer` at `remote`; returns how many SAs moved.
    pub(in crate::sadb) fn move_peer(&self, peer: PeerId, remote: SocketAddr) -> usize {
        self.rewrite(peer, |params| (params.remote != remote).then_some(SaParams { remote, ..params }))
    }

    /// Gives each SA of `peer` the parameters `change` returns for it (`None`: it stays as it
    /// is); returns how many changed. Key, sequence numbers and counters stay shared.
    pub(in crate::sadb) fn rewrite(&self, peer: PeerId, change: impl Fn(SaParams) -> Option<SaParams>) -> usize {
        self.write(|writer| {
            let mut changed = 0;
            let outbound = self.outbound.load().get(peer.0);
            if let Some(params) = outbound.as_ref().and_then(|sa| change(sa.params)) {
                self.outbound.swap(peer.0, outbound.map(|sa| Arc::new(sa.with_params(params))));
                changed += 1;
            }
            let tables = self.inbound.load();
            for spi in writer.by_peer.get(&peer).into_iter().flatten() {
                let Some(sa) = tables.get(*spi) else { continue };
                if let Some(params) = change(sa.params) {
                    self.inbound.replace(Arc::new(sa.with_params(params)));
                    changed += 1;
                }
            }
            changed
        })
    }

    /// Removes every SA of `peer` (or of all peers) and returns the SPIs removed.
    pub(in crate::sadb) fn remove(&self, peer: Option<PeerId>) -> Vec<u32> {
        self.write(|writer| {
            let outbound_slots = match peer {
                Some(peer) => peer.0..peer.0 + 1,
                None => 0..self.outbound.load().len(),
            };
            let mut removed: Vec<u32> =
                outbound_slots.filter_map(|index| self.outbound.take_if(index, |_| true)).map(|sa| sa.params.spi).collect();
            let peers: Vec<PeerId> = match peer {
                Some(peer) => vec![peer],
                None => writer.by_peer.keys().copied().collect(),
            };
            for peer in peers {
                for spi in writer.by_peer.remove(&peer).unwrap_or_default() {
                    removed.extend(self.inbound.remove(&mut writer.inbound, spi).map(|sa| sa.params.spi));
                }
            }
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

        let tables = sadb.load();
        let held = tables.inbound(0x1001).unwrap();
        assert_eq!(held.params.peer, PeerId(0));
        assert_eq!(tables.outbound(PeerId(0)).unwrap().params.spi, 0x2002);
        assert!(tables.outbound(PeerId(1)).is_none());

        assert_eq!(sadb.remove(Some(PeerId(0))), vec![0x1001, 0x2002]);
        // A reader holding an SA keeps it whole; its next lookup sees the removal.
        assert_eq!(held.params.spi, 0x1001);
        assert!(tables.inbound(0x1001).is_none());
        assert!(tables.outbound(PeerId(0)).is_none());
        assert!(sadb.load().inbound(0x1002).is_some());
        assert_eq!(sadb.remove(None), vec![0x1002]);
        assert!(sadb.load().inbound_sas().next().is_none());
    }

    #[test]
    fn moving_a_peer_moves_only_its_sas_and_keeps_their_state() {
        let sadb = Sadb::new(2);
        sadb.install_inbound(inbound(0x1001, 0)).unwrap();
        sadb.install_inbound(inbound(0x1002, 1)).unwrap();
        sadb.install_outbound(outbound(0x2001, 0, false));
        let before = sadb.load().outbound(PeerId(0)).as_deref().cloned().unwrap();
        before.next_sequence();
        let remote: SocketAddr = "198.18.0.254:40000".parse().unwrap();
        assert_eq!(sadb.move_peer(PeerId(0), remote), 2);
        assert_eq!(sadb.move_peer(PeerId(0), remote), 0, "already there");
        let tables = sadb.load();
        let moved = tables.outbound(PeerId(0)).unwrap();
        assert_eq!((moved.params.remote, moved.last_sequence()), (remote, 1));
        assert_eq!(tables.inbound(0x1001).unwrap().params.remote, remote);
        assert_ne!(tables.inbound(0x1002).unwrap().params.remote, remote, "another peer's SA stays");
    }

    #[derive(Debug, Clone)]
    enum Op {
        InstallInbound(u32, usize),
        InstallOutbound(u32, usize),
        RemoveInbound(u32),
        RemoveOutbound(usize, u32),
        RemovePeer(Option<usize>),
        Lookup(u32, usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let spi = 0x100u32..0x160;
        prop_oneof![
            4 => (spi.clone(), 0usize..6).prop_map(|(spi, peer)| Op::InstallInbound(spi, peer)),
            3 => (spi.clone(), 0usize..6).prop_map(|(spi, peer)| Op::InstallOutbound(spi, peer)),
            2 => spi.clone().prop_map(Op::RemoveInbound),
            1 => (0usize..6, spi.clone()).prop_map(|(peer, spi)| Op::RemoveOutbound(peer, spi)),
            1 => proptest::option::weighted(0.8, 0usize..6).prop_map(Op::RemovePeer),
            3 => (spi, 0usize..8).prop_map(|(spi, peer)| Op::Lookup(spi, peer)),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// The SADB answers as two plain maps would (inbound SPI -> peer, peer -> outbound SPI).
        #[test]
        fn matches_a_hash_map(ops in proptest::collection::vec(op(), 1..250)) {
            // Fewer peers than the ops use: outbound slots grow.
            let sadb = Sadb::new(2);
            let mut inbound_model: HashMap<u32, usize> = HashMap::new();
            let mut outbound_model: HashMap<usize, u32> = HashMap::new();
            for op in ops {
                match op {
                    Op::InstallInbound(spi, peer) => {
                        let expected = match inbound_model.contains_key(&spi) {
                            true => Err(SadbError::DuplicateSpi(spi)),
                            false => Ok(()),
                        };
                        proptest::prop_assert_eq!(sadb.install_inbound(inbound(spi, peer)), expected);
                        inbound_model.entry(spi).or_insert(peer);
                    }
                    Op::InstallOutbound(spi, peer) => {
                        let replaced = sadb.install_outbound(outbound(spi, peer, false)).map(|sa| sa.params.spi);
                        proptest::prop_assert_eq!(replaced, outbound_model.insert(peer, spi));
                    }
                    Op::RemoveInbound(spi) => {
                        proptest::prop_assert_eq!(sadb.remove_inbound(spi), inbound_model.remove(&spi).is_some());
                    }
                    Op::RemoveOutbound(peer, spi) => {
                        let current = outbound_model.get(&peer) == Some(&spi);
                        if current {
                            outbound_model.remove(&peer);
                        }
                        proptest::prop_assert_eq!(sadb.remove_outbound(PeerId(peer), spi), current);
                    }
                    Op::RemovePeer(peer) => {
                        let matches = |p: usize| peer.is_none_or(|wanted| wanted == p);
                        let mut expected: Vec<u32> = inbound_model.iter().filter(|(_, p)| matches(**p)).map(|(spi, _)| *spi).collect();
                        expected.extend(outbound_model.iter().filter(|(p, _)| matches(**p)).map(|(_, spi)| *spi));
                        expected.sort_unstable();
                        inbound_model.retain(|_, p| !matches(*p));
                        outbound_model.retain(|p, _| !matches(*p));
                        proptest::prop_assert_eq!(sadb.remove(peer.map(PeerId)), expected);
                    }
                    Op::Lookup(spi, peer) => {
                        let tables = sadb.load();
                        proptest::prop_assert_eq!(tables.inbound(spi).map(|sa| sa.params.peer.0), inbound_model.get(&spi).copied());
                        proptest::prop_assert_eq!(tables.outbound(PeerId(peer)).map(|sa| sa.params.spi), outbound_model.get(&peer).copied());
                    }
                }
            }
            let tables = sadb.load();
            proptest::prop_assert_eq!(tables.inbound_sas().count(), inbound_model.len());
            proptest::prop_assert_eq!(tables.outbound_sas().count(), outbound_model.len());
        }
    }

    /// Workers looking SAs up on other threads while the manager rekeys other peers: the SAs
    /// that stay are always found, whole, with their keys usable.
    #[test]
    fn workers_keep_finding_their_sas_while_the_manager_rekeys_others() {
        use std::sync::atomic::AtomicBool;

        let sadb = Sadb::new(4);
        sadb.install_inbound(inbound(0x1001, 0)).unwrap();
        sadb.install_outbound(outbound(0x2001, 0, false));
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| loop {
                        let finished = done.load(Ordering::Relaxed);
                        let tables = sadb.load();
                        let inbound = tables.inbound(0x1001).expect("the staying inbound SA");
                        assert_eq!((inbound.params.spi, inbound.params.peer), (0x1001, PeerId(0)));
                        let outbound = tables.outbound(PeerId(0)).expect("the staying outbound SA");
                        assert_eq!(outbound.params.spi, 0x2001);
                        assert!(outbound.next_sequence().is_some());
                        if finished {
                            break;
                        }
                    })
                })
                .collect();
            for round in 0..2_000u32 {
                let peer = 1 + round as usize % 40;
                sadb.install_inbound(inbound(0x10_000 + round, peer)).unwrap();
                if round >= 4 {
                    assert!(sadb.remove_inbound(0x10_000 + round - 4));
                }
                sadb.install_outbound(outbound(0x20_000 + round, peer, false));
            }
            done.store(true, Ordering::Relaxed);
            for worker in workers {
                worker.join().expect("worker");
            }
        });
        assert_eq!(sadb.load().inbound_sas().count(), 5);
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
