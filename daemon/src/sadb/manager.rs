//! The SA manager: the one writer of the SADB. Manual keying (`manual::install`), IKE's events,
//! `ikectl sa flush` and reload install and remove SAs through it.
//!
//! It also hears from the datapath: a worker that sees ESP for an SPI no inbound SA has, or an
//! outbound SA whose sequence numbers run out, puts a notice on a bounded queue (`SaNotices`)
//! with `try_send`, so a worker never waits; a full queue only counts the notice as lost. The
//! manager drops notices about SAs that are gone by now and hands the rest to keying.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::snapshot::{SadbSnapshot, SnapshotError};
use super::{InboundSa, OutboundSa, SadbError};
use crate::manual_nonces;
use crate::state::MeshState;
use crate::topology::PeerId;
use mesh_config::control::SaOrigin;

/// Notices the queue holds before workers' notices are counted as lost. Notices are rare (a
/// peer that lost its state, an SA near its end), and the keying driver reads them at once.
const NOTICE_QUEUE_LEN: usize = 256;

/// What the datapath tells the SA manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaNotice {
    /// ESP from `peer` for an SPI that no inbound SA has: the peer's SAs and ours differ.
    UnknownSpi { peer: PeerId },
    /// `peer`'s outbound SA `spi` has used most of its sequence numbers (`OutboundSa::running_out`).
    SequenceRunningOut { peer: PeerId, spi: u32 },
    /// ESP of inbound SA `spi` that authenticated and passed the replay window came from
    /// `remote`, not from the SA's peer address: the NAT in front of `peer` changed its mapping.
    PeerMoved { peer: PeerId, spi: u32, remote: SocketAddr },
}

/// The datapath's end of the notice queue (and, until the manager takes it, the manager's end).
pub struct SaNotices {
    sender: mpsc::Sender<SaNotice>,
    receiver: Mutex<Option<mpsc::Receiver<SaNotice>>>,
    /// Notices dropped because the queue was full.
    lost: AtomicU64,
}

impl Default for SaNotices {
    fn default() -> Self {
        SaNotices::with_capacity(NOTICE_QUEUE_LEN)
    }
}

impl SaNotices {
    pub fn with_capacity(capacity: usize) -> Self {
        let (sender, receiver) = mpsc::channel(capacity);
        SaNotices { sender, receiver: Mutex::new(Some(receiver)), lost: AtomicU64::new(0) }
    }

    /// Queues `notice` without waiting; counts it as lost when the queue is full (or nobody reads).
    pub fn notify(&self, notice: SaNotice) {
        if self.sender.try_send(notice).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Notices dropped so far because the queue was full.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// The manager's end of the queue (once).
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<SaNotice>> {
        self.receiver.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}

/// Who acts on the datapath's notices: the keying driver (which ignores manually keyed peers).
pub trait NoticeHandler {
    /// ESP from `peer` for an unknown SPI.
    fn unknown_spi(&self, peer: PeerId);
    /// `peer`'s current outbound SA `spi` needs a rekey before its sequence numbers run out.
    fn sequence_running_out(&self, peer: PeerId, spi: u32);
    /// `peer`, behind NAT, now sends from `remote`; its SAs in the SADB follow already.
    fn peer_moved(&self, peer: PeerId, remote: SocketAddr);
}

/// The one writer of `MeshState::sadb`.
pub struct SaManager {
    state: Arc<MeshState>,
}

impl SaManager {
    pub fn new(state: Arc<MeshState>) -> Self {
        SaManager { state }
    }

    /// The state whose SADB this manager writes.
    pub fn state(&self) -> &MeshState {
        &self.state
    }

    pub fn install_inbound(&self, sa: InboundSa) -> Result<(), SadbError> {
        let spi = sa.params.spi;
        self.state.sadb.install_inbound(sa)?;
        self.state.early_esp.installed(spi, self.state.clock.now_ms(), &self.state.drops);
        Ok(())
    }

    /// We offered the peer inbound SPI `spi`; ESP for it that comes before its install is kept.
    pub fn expect_inbound(&self, peer: PeerId, spi: u32) {
        self.state.early_esp.expect(spi, peer, self.state.clock.now_ms(), &self.state.drops);
    }

    /// Installs the outbound SA for its peer; returns the one it replaced.
    pub fn install_outbound(&self, sa: OutboundSa) -> Option<Arc<OutboundSa>> {
        self.state.sadb.install_outbound(sa)
    }

    /// Removes one inbound SA; true when it existed.
    pub fn remove_inbound(&self, spi: u32) -> bool {
        self.state.sadb.remove_inbound(spi)
    }

    /// Removes `peer`'s outbound SA if it is still the one with `spi` (a newer one stays).
    pub fn remove_outbound(&self, peer: PeerId, spi: u32) -> bool {
        self.state.sadb.remove_outbound(peer, spi)
    }

    /// Removes every SA of `peer` (or of all peers); returns the SPIs removed.
    pub fn remove_peer(&self, peer: Option<PeerId>) -> Vec<u32> {
        self.state.sadb.remove(peer)
    }

    /// Every SA with its keys, next sequence number and replay window, for the meshd that takes
    /// over (`crate::upgrade`); taken while the workers are stopped.
    pub fn export(&self) -> SadbSnapshot {
        SadbSnapshot::take(&self.state.sadb.load(), &self.state.topology())
    }

    /// After a handover that failed once the SAs were sent: skips every outbound SA's sequence
    /// numbers past any the other meshd may have used.
    pub fn skip_outbound_sequences(&self, by: u64) {
        for sa in self.state.sadb.load().outbound_sas() {
            sa.sequence.fetch_add(by, Ordering::Relaxed);
        }
    }

    /// Installs the SAs a running meshd handed over; returns how many. Manual SAs go on
    /// keeping their sequence-number marks (manual_nonces.rs) here.
    pub fn import(&self, snapshot: &SadbSnapshot) -> Result<usize, SnapshotError> {
        let nonces = manual_nonces::store();
        let (inbound, outbound) = snapshot.restore(&self.state.topology(), |record| match (nonces, record.origin) {
            (Some(store), SaOrigin::Manual) => {
                store.resume_outbound(record.spi, &record.key).map_err(|e| SnapshotError::SequenceMark(e.into()))
            }
            _ => Ok((0, u64::MAX)),
        })?;
        let count = inbound.len() + outbound.len();
        for (sa, record) in inbound.into_iter().zip(&snapshot.inbound) {
            self.install_inbound(sa)?;
            if let (Some(store), SaOrigin::Manual) = (nonces, record.sa.origin) {
                if let Some(sa) = self.state.sadb.load().inbound(record.sa.spi) {
                    store.track_inbound(record.sa.spi, &record.sa.key, &sa);
                }
            }
        }
        for (sa, record) in outbound.into_iter().zip(&snapshot.outbound) {
            let peer = sa.params.peer;
            self.install_outbound(sa);
            if let (Some(store), SaOrigin::Manual) = (nonces, record.sa.origin) {
                if let Some(sa) = self.state.sadb.load().outbound(peer) {
                    store.track_outbound(record.sa.spi, &record.sa.key, &sa);
                }
            }
        }
        Ok(count)
    }

    /// Hands one notice of the datapath to `handler`, unless it is about an SA that is gone.
    pub fn handle_notice(&self, notice: SaNotice, handler: &impl NoticeHandler) {
        match notice {
            SaNotice::UnknownSpi { peer } => handler.unknown_spi(peer),
            SaNotice::SequenceRunningOut { peer, spi } => {
                // A notice from before the rekey finished, or a repeat: the new SA is fine.
                let current = self.state.sadb.load().outbound(peer).is_some_and(|sa| sa.params.spi == spi);
                if current {
                    handler.sequence_running_out(peer, spi);
                }
            }
            SaNotice::PeerMoved { peer, spi, remote } => {
                if self.follow(peer, spi, remote) {
                    tracing::info!(peer = %self.state.topology().peer_name(peer), %remote, "peer's NAT mapping changed; its SAs follow");
                    handler.peer_moved(peer, remote);
                }
            }
        }
    }

    /// Points `peer`'s SAs at `remote` if inbound SA `spi` (of `peer`, which follows it through a
    /// NAT) still expects
    /// the peer elsewhere; false for a repeat or an SA that is gone.
    fn follow(&self, peer: PeerId, spi: u32, remote: SocketAddr) -> bool {
        let tables = self.state.sadb.load();
        let Some(sa) = tables.inbound(spi).filter(|sa| sa.params.peer == peer) else { return false };
        sa.params.remote != remote && sa.params.follows_peer() && self.state.sadb.move_peer(peer, remote) > 0
    }

    /// Passes on the datapath's notices until the runtime stops.
    pub async fn run(self: Arc<Self>, mut notices: mpsc::Receiver<SaNotice>, handler: Arc<impl NoticeHandler>) {
        while let Some(notice) = notices.recv().await {
            self.handle_notice(notice, &*handler);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use mesh_config::control::DropReason;
    use mesh_config::MeshConfig;

    use super::*;
    use crate::datapath::testkit::{
        address, frame, mesh_file, receive, receive_from, send, spi, DEFAULT, MAC_A, MAC_B,
    };
    use crate::esp::{KeyMaterial, Sealer};
    use crate::manual;
    use crate::sadb::snapshot::SEQUENCE_HANDOVER_MARGIN;
    use crate::sadb::{SaParams, SEQUENCE_REKEY_AT};
    use crate::topology::Topology;

    fn manager(node: usize) -> (SaManager, MeshConfig) {
        let config = mesh_file(&DEFAULT);
        let name = format!("n{node}");
        let state = MeshState::new(Topology::new(&config, &name, address(&DEFAULT, node)).unwrap());
        (SaManager::new(Arc::new(state)), config)
    }

    /// Another outbound SA to `manager`'s first peer, like the one installed but with `new_spi`.
    fn outbound_sa(manager: &SaManager, new_spi: u32) -> OutboundSa {
        let params = manager.state().sadb.load().outbound(PeerId(0)).unwrap().params;
        let params = SaParams { spi: new_spi, ..params };
        let key = KeyMaterial::from_bytes(&[9u8; 36]).unwrap();
        OutboundSa::new(params, Sealer::new(params.cipher, &key).unwrap())
    }

    #[derive(Default)]
    struct Heard(RefCell<Vec<SaNotice>>);

    impl NoticeHandler for Heard {
        fn unknown_spi(&self, peer: PeerId) {
            self.0.borrow_mut().push(SaNotice::UnknownSpi { peer });
        }
        fn sequence_running_out(&self, peer: PeerId, spi: u32) {
            self.0.borrow_mut().push(SaNotice::SequenceRunningOut { peer, spi });
        }
        /// Recorded with SPI 0: the handler hears of the peer, not of an SA.
        fn peer_moved(&self, peer: PeerId, remote: SocketAddr) {
            self.0.borrow_mut().push(SaNotice::PeerMoved { peer, spi: 0, remote });
        }
    }

    #[test]
    fn manual_sas_install_and_a_flush_installs_them_anew() {
        let (manager, config) = manager(0);
        assert_eq!(manual::install(&config, &manager, None).unwrap(), vec![spi(0, 1), spi(1, 0)]);
        assert!(manual::install(&config, &manager, None).is_err(), "an inbound SPI is never installed twice");
        let before = manager.state().sadb.load().outbound(PeerId(0)).as_deref().cloned().unwrap();
        before.next_sequence();

        assert_eq!(manager.remove_peer(Some(PeerId(0))), vec![spi(0, 1), spi(1, 0)]);
        assert_eq!(manual::install(&config, &manager, Some(PeerId(0))).unwrap(), vec![spi(0, 1), spi(1, 0)]);
        let after = manager.state().sadb.load().outbound(PeerId(0)).as_deref().cloned().unwrap();
        assert_eq!(after.last_sequence(), 0, "a flushed SA starts again");
        assert!(!Arc::ptr_eq(&before, &after));
    }

    #[test]
    fn a_handed_over_sadb_carries_on_where_the_old_one_stopped() {
        let (old, config) = manager(0);
        manual::install(&config, &old, None).unwrap();
        let tables = old.state().sadb.load();
        let outbound = tables.outbound(PeerId(0)).unwrap();
        for _ in 0..5 {
            outbound.next_sequence();
        }
        let inbound = tables.inbound(spi(1, 0)).unwrap();
        inbound.replay().accept(7).unwrap();
        inbound.replay().accept(9).unwrap();

        let wire = serde_json::to_vec(&old.export()).unwrap();
        let (new, _) = manager(0);
        assert_eq!(new.import(&serde_json::from_slice(&wire).unwrap()).unwrap(), 2);
        let tables = new.state().sadb.load();
        let taken_over = tables.outbound(PeerId(0)).unwrap();
        assert_eq!(taken_over.next_sequence(), Some(5 + SEQUENCE_HANDOVER_MARGIN + 1), "no sequence number twice");
        assert_eq!(taken_over.sealer.key_material().reveal(), outbound.sealer.key_material().reveal());
        let replay = tables.inbound(spi(1, 0)).unwrap().replay().to_parts();
        assert_eq!(replay, inbound.replay().to_parts());
        assert!(tables.inbound(spi(1, 0)).unwrap().replay().check(9).is_err(), "a replay stays a replay");
        assert!(new.import(&serde_json::from_slice(&wire).unwrap()).is_err(), "an SPI is never installed twice");
    }

    #[test]
    fn a_handed_over_sa_of_an_unknown_peer_is_refused() {
        let (old, config) = manager(0);
        manual::install(&config, &old, None).unwrap();
        let mut snapshot = old.export();
        snapshot.outbound[0].sa.peer = "elsewhere".to_string();
        let (new, _) = manager(0);
        assert!(matches!(new.import(&snapshot), Err(SnapshotError::UnknownPeer(name)) if name == "elsewhere"));
    }

    #[test]
    fn install_replace_and_remove() {
        let (manager, config) = manager(0);
        manual::install(&config, &manager, None).unwrap();
        let replaced = manager.install_outbound(outbound_sa(&manager, 0x7001)).unwrap();
        assert_eq!(replaced.params.spi, spi(0, 1));
        assert!(!manager.remove_outbound(PeerId(0), spi(0, 1)), "the replaced SA is gone already");
        assert!(manager.remove_outbound(PeerId(0), 0x7001));
        assert!(manager.state().sadb.load().outbound(PeerId(0)).is_none());
        assert!(manager.remove_inbound(spi(1, 0)));
        assert!(!manager.remove_inbound(spi(1, 0)));
        manual::install(&config, &manager, None).unwrap();
        assert_eq!(manager.remove_peer(None), vec![spi(0, 1), spi(1, 0)]);
        assert!(manager.state().sadb.load().inbound_sas().next().is_none());
    }

    #[test]
    fn notices_about_gone_sas_are_dropped() {
        let (manager, config) = manager(0);
        manual::install(&config, &manager, None).unwrap();
        let heard = Heard::default();
        manager.handle_notice(SaNotice::UnknownSpi { peer: PeerId(0) }, &heard);
        manager.handle_notice(SaNotice::SequenceRunningOut { peer: PeerId(0), spi: spi(0, 1) }, &heard);
        manager.handle_notice(SaNotice::SequenceRunningOut { peer: PeerId(0), spi: 0x7001 }, &heard);
        manager.remove_peer(None);
        manager.handle_notice(SaNotice::SequenceRunningOut { peer: PeerId(0), spi: spi(0, 1) }, &heard);
        assert_eq!(
            heard.0.into_inner(),
            vec![
                SaNotice::UnknownSpi { peer: PeerId(0) },
                SaNotice::SequenceRunningOut { peer: PeerId(0), spi: spi(0, 1) }
            ]
        );
    }

    #[test]
    fn a_full_queue_counts_notices_instead_of_blocking() {
        let notices = SaNotices::with_capacity(2);
        for _ in 0..5 {
            notices.notify(SaNotice::UnknownSpi { peer: PeerId(0) });
        }
        assert_eq!(notices.lost(), 3);
        let mut receiver = notices.take_receiver().unwrap();
        assert!(notices.take_receiver().is_none(), "one reader");
        assert_eq!(receiver.try_recv(), Ok(SaNotice::UnknownSpi { peer: PeerId(0) }));
        assert_eq!(receiver.try_recv(), Ok(SaNotice::UnknownSpi { peer: PeerId(0) }));
        assert!(receiver.try_recv().is_err());
    }

    #[test]
    fn the_datapath_reports_unknown_spis_of_a_peer() {
        let (sender, config) = manager(0);
        let (receiver, _) = manager(1);
        manual::install(&config, &sender, None).unwrap();
        manual::install(&config, &receiver, None).unwrap();
        let mut queue = receiver.state().sa_notices.take_receiver().unwrap();
        let packet = send(sender.state(), &frame(MAC_B, MAC_A, 64)).remove(0).0;
        receiver.remove_inbound(spi(0, 1));
        receive(receiver.state(), &packet, address(&DEFAULT, 0));
        assert_eq!(queue.try_recv(), Ok(SaNotice::UnknownSpi { peer: PeerId(0) }));
        // From an address that is no peer: nobody to renegotiate with.
        receive(receiver.state(), &packet, "198.18.0.99".parse().unwrap());
        assert!(queue.try_recv().is_err());
    }

    #[test]
    fn the_datapath_reports_sequence_numbers_running_out_once_per_stretch() {
        let (manager, config) = manager(0);
        manual::install(&config, &manager, None).unwrap();
        let mut queue = manager.state().sa_notices.take_receiver().unwrap();
        let sa = manager.state().sadb.load().outbound(PeerId(0)).as_deref().cloned().unwrap();
        sa.sequence.store(SEQUENCE_REKEY_AT - 2, Ordering::Relaxed);
        for _ in 0..3 {
            assert_eq!(send(manager.state(), &frame(MAC_B, MAC_A, 64)).len(), 1);
        }
        assert_eq!(queue.try_recv(), Ok(SaNotice::SequenceRunningOut { peer: PeerId(0), spi: spi(0, 1) }));
        assert!(queue.try_recv().is_err(), "not once per packet");
    }

    /// n0 and n1 with manual SAs; n1 sees n0 from `nat` (n0 is behind a NAT). Returns both
    /// managers and n1's notice queue.
    fn pair_behind_nat(nat: SocketAddr) -> (SaManager, SaManager, mpsc::Receiver<SaNotice>) {
        let (sender, config) = manager(0);
        let (receiver, _) = manager(1);
        manual::install(&config, &sender, None).unwrap();
        manual::install(&config, &receiver, None).unwrap();
        // As IKE would have made them: the peer's ESP came through the NAT.
        receiver.state().sadb.rewrite(PeerId(0), |params| Some(SaParams { remote: nat, behind_nat: true, ..params }));
        let queue = receiver.state().sa_notices.take_receiver().unwrap();
        (sender, receiver, queue)
    }

    fn sealed(sender: &SaManager) -> Vec<u8> {
        send(sender.state(), &frame(MAC_B, MAC_A, 64)).remove(0).0
    }

    #[test]
    fn authentic_esp_from_a_new_nat_mapping_moves_the_peers_sas() {
        let nat: SocketAddr = "198.18.0.254:4500".parse().unwrap();
        let rebound: SocketAddr = "198.18.0.254:40000".parse().unwrap();
        let (sender, receiver, mut queue) = pair_behind_nat(nat);
        let (first, second) = (sealed(&sender), sealed(&sender));
        assert_eq!(receive_from(receiver.state(), &[(&first, nat)]).len(), 1);
        assert!(queue.try_recv().is_err(), "from the mapping it knows: no notice");

        let mut forged = second.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(receive_from(receiver.state(), &[(&forged, rebound), (&first, rebound)]).is_empty());
        assert!(queue.try_recv().is_err(), "neither a forgery nor a replay moves the peer");

        assert_eq!(receive_from(receiver.state(), &[(&second, rebound)]).len(), 1, "delivered at once");
        let notice = queue.try_recv().unwrap();
        assert_eq!(notice, SaNotice::PeerMoved { peer: PeerId(0), spi: spi(0, 1), remote: rebound });
        let outbound_before = receiver.state().sadb.load().outbound(PeerId(0)).as_deref().cloned().unwrap();
        let heard = Heard::default();
        receiver.handle_notice(notice, &heard);
        receiver.handle_notice(notice, &heard);
        assert_eq!(
            heard.0.into_inner(),
            vec![SaNotice::PeerMoved { peer: PeerId(0), spi: 0, remote: rebound }],
            "keying hears of the move once"
        );
        let tables = receiver.state().sadb.load();
        let outbound = tables.outbound(PeerId(0)).unwrap();
        assert_eq!((outbound.params.remote, tables.inbound(spi(0, 1)).unwrap().params.remote), (rebound, rebound));
        outbound_before.next_sequence();
        assert_eq!(outbound.last_sequence(), 1, "the moved SA continues the sequence numbers of the old copy");
        let replies = send(receiver.state(), &frame(MAC_A, MAC_B, 64));
        assert_eq!(replies.len(), 1);
        assert_eq!(receive(sender.state(), &replies[0].0, address(&DEFAULT, 1)).len(), 1);
    }

    #[test]
    fn a_peer_not_behind_nat_is_not_followed() {
        let (sender, config) = manager(0);
        let (receiver, _) = manager(1);
        manual::install(&config, &sender, None).unwrap();
        manual::install(&config, &receiver, None).unwrap();
        let mut queue = receiver.state().sa_notices.take_receiver().unwrap();
        let elsewhere: SocketAddr = "198.18.0.99:4500".parse().unwrap();
        assert!(receive_from(receiver.state(), &[(&sealed(&sender), elsewhere)]).is_empty());
        assert!(queue.try_recv().is_err());
        let drops = receiver.state().drops.report(|id| id.0.to_string(), Some(PeerId(0)));
        assert_eq!(drops.by_reason.get(&DropReason::WrongPeer), Some(&1));
        // A notice about a peer that is not behind NAT moves nothing.
        let heard = Heard::default();
        receiver.handle_notice(SaNotice::PeerMoved { peer: PeerId(0), spi: spi(0, 1), remote: elsewhere }, &heard);
        assert!(heard.0.into_inner().is_empty());
        assert_eq!(receiver.state().sadb.load().outbound(PeerId(0)).unwrap().params.remote.ip(), address(&DEFAULT, 0));
    }
}
