//! The IKE driver: runs the sans-IO IKE endpoint on the control plane's runtime, gives it the
//! datagrams of UDP 500 and 4500, the time and the datapath's notices (through the SA manager),
//! sends what it says, and hands its Child SAs to the SA manager.
//!
//! The driver is generic over `IkeEngine`, the part of `ike::Endpoint` it uses, so that its tests
//! run against a fake endpoint.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mesh_config::control::{DropReason, IkeSaInfo, SaOrigin, Spi};
use mesh_config::{Cipher, MeshConfig, Proposal, PublicKey};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};
use zeroize::Zeroizing;

use crate::datapath::{Announcer, IkeDatagram};
use crate::drops::{DropContext, SendErrorKind};
use crate::error::KeyingError;
use crate::esp::{Opener, ReplayWindow, Sealer, DEFAULT_REPLAY_WINDOW};
use crate::ike::crypto::{CryptoError, NodeKey};
use crate::ike::{
    ChildSaKeys, Endpoint, Event, Failure, IkeCounters, IkeHandover, IkeSaStatus, IkeSettings, IkeState, PeerIndex,
    PeerSettings, Refusal, Transmit, IKE_PORT, NAT_T_PORT,
};
use crate::sadb::manager::{NoticeHandler, SaManager};
use crate::sadb::{InboundSa, OutboundSa, SaParams};
use crate::state::MeshState;
use crate::topology::{Peer, PeerId, Topology};
use crate::wire::esp::{classify_udp_encap, UdpEncapKind, NON_ESP_MARKER_LEN};

/// The endpoint hears of a peer's unknown SPIs, and of its SA running out, at most this often
/// (each unknown SPI would otherwise queue another liveness check).
const NOTICE_INTERVAL: Duration = Duration::from_secs(1);
/// After SAs with a peer come up, this node announces its overlay addresses to it twice, this
/// far apart (`Announcements`).
const ANNOUNCE_AGAIN: Duration = Duration::from_secs(1);
/// How long an announcement to a peer whose exchange we answered waits for the answer to get
/// there and the peer to install the SA it makes.
const ANSWER_IN_FLIGHT: Duration = Duration::from_millis(200);
/// Refused IKE messages are summed up in the log at most this often.
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the driver needs of an IKE endpoint (`ike::Endpoint`; a fake in tests).
pub trait IkeEngine {
    fn handle(&mut self, datagram: &[u8], from: SocketAddr, local_port: u16, now: Instant);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_transmit(&mut self) -> Option<Transmit>;
    fn poll_event(&mut self) -> Option<Event>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn status(&self, now: Instant) -> Vec<IkeSaStatus>;
    fn counters(&self) -> IkeCounters;
    fn unknown_spi_from(&mut self, peer: PeerIndex, now: Instant);
    fn rekey_child(&mut self, peer: PeerIndex, outbound_spi: u32, now: Instant);
    fn peer_moved(&mut self, peer: PeerIndex, remote: SocketAddr);
    fn retry_now(&mut self, peer: PeerIndex, now: Instant);
    fn flush(&mut self, peer: PeerIndex, now: Instant);
    fn add_peer(&mut self, peer: PeerSettings, now: Instant) -> PeerIndex;
    fn remove_peer(&mut self, peer: PeerIndex, now: Instant);
    fn reconfigure(&mut self, settings: IkeSettings);
    fn answers_probes(&self, peer: PeerIndex) -> bool;
    fn query_keys(&self, peer: PeerIndex) -> Vec<Zeroizing<Vec<u8>>>;
}

impl IkeEngine for Endpoint {
    fn handle(&mut self, datagram: &[u8], from: SocketAddr, local_port: u16, now: Instant) {
        Endpoint::handle(self, datagram, from, local_port, now)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Endpoint::handle_timeout(self, now)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        Endpoint::poll_transmit(self)
    }
    fn poll_event(&mut self) -> Option<Event> {
        Endpoint::poll_event(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Endpoint::poll_timeout(self)
    }
    fn status(&self, now: Instant) -> Vec<IkeSaStatus> {
        Endpoint::status(self, now)
    }
    fn counters(&self) -> IkeCounters {
        Endpoint::counters(self)
    }
    fn unknown_spi_from(&mut self, peer: PeerIndex, now: Instant) {
        Endpoint::unknown_spi_from(self, peer, now)
    }
    fn rekey_child(&mut self, peer: PeerIndex, outbound_spi: u32, now: Instant) {
        Endpoint::rekey_child(self, peer, outbound_spi, now)
    }
    fn peer_moved(&mut self, peer: PeerIndex, remote: SocketAddr) {
        Endpoint::peer_moved(self, peer, remote)
    }
    fn retry_now(&mut self, peer: PeerIndex, now: Instant) {
        Endpoint::retry_now(self, peer, now)
    }
    fn flush(&mut self, peer: PeerIndex, now: Instant) {
        Endpoint::flush(self, peer, now)
    }
    fn add_peer(&mut self, peer: PeerSettings, now: Instant) -> PeerIndex {
        Endpoint::add_peer(self, peer, now)
    }
    fn remove_peer(&mut self, peer: PeerIndex, now: Instant) {
        Endpoint::remove_peer(self, peer, now)
    }
    fn reconfigure(&mut self, settings: IkeSettings) {
        Endpoint::reconfigure(self, settings)
    }
    fn answers_probes(&self, peer: PeerIndex) -> bool {
        Endpoint::answers_probes(self, peer)
    }
    fn query_keys(&self, peer: PeerIndex) -> Vec<Zeroizing<Vec<u8>>> {
        Endpoint::query_keys(self, peer)
    }
}

/// How a peer is keyed, and how far: the keying column of `ikectl peers` and `ikectl trace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyingState {
    Manual,
    IkeEstablished,
    IkeConnecting,
    /// The last failure, until an IKE SA comes up.
    IkeFailed(String),
}

impl fmt::Display for KeyingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyingState::Manual => f.write_str("manual"),
            KeyingState::IkeEstablished => f.write_str("ike: established"),
            KeyingState::IkeConnecting => f.write_str("ike: connecting"),
            KeyingState::IkeFailed(failure) => write!(f, "ike: {failure}"),
        }
    }
}

/// The IKE state shared by the driver task and the control plane.
pub struct Keying<E = Endpoint> {
    ike: Mutex<Ike<E>>,
    wake: Notify,
    /// Where the Child SAs go.
    sas: Arc<SaManager>,
}

/// The endpoint and the daemon's names for its peers, under one lock.
struct Ike<E> {
    endpoint: E,
    /// The topology's id of each IKE peer (index = the endpoint's peer index; peers that a reload
    /// removed keep their index).
    peers: Vec<PeerId>,
    /// The endpoint index of each peer IKE keys now.
    by_peer: HashMap<PeerId, usize>,
    /// Per IKE peer (by endpoint index), cleared when an IKE SA comes up or a reload adds it.
    failures: Vec<Option<String>>,
    /// Per IKE peer (by endpoint index), for metrics.
    stats: Vec<IkePeerStats>,
    /// Per IKE peer (by endpoint index): when the endpoint last heard of the datapath's notices.
    notices: Vec<NoticesPassed>,
    /// Per IKE peer (by endpoint index): why the kernel last refused to send it an IKE message,
    /// until an IKE SA comes up or an attempt fails (then the failure names it).
    send_failed: Vec<Option<SendErrorKind>>,
    /// The peers to announce this node's overlay addresses to.
    announcements: Announcements,
    /// The public key of the key this node signs with.
    public_key: Option<PublicKey>,
}

/// When a peer's notices were last passed to the endpoint.
#[derive(Debug, Default, Clone, Copy)]
struct NoticesPassed {
    unknown_spi: Option<Instant>,
    running_out: Option<Instant>,
    underlay_changed: Option<Instant>,
}

/// Whether a notice last passed on at `last` may be passed on again at `now`.
fn due(last: &mut Option<Instant>, now: Instant) -> bool {
    let due = last.is_none_or(|at| now.saturating_duration_since(at) >= NOTICE_INTERVAL);
    if due {
        *last = Some(now);
    }
    due
}

/// What happened to one IKE peer's SAs since meshd started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IkePeerStats {
    /// Outbound Child SAs that replaced a previous one (rekeys, not first installs or flushes).
    pub rekeys: u64,
    /// IKE SA attempts that failed (authentication, proposals, no answer, selectors).
    pub handshake_failures: u64,
}

/// Where IKE leaves and arrives. Sends go through plain non-blocking sockets (a tokio socket
/// refuses `try_send` until it has seen the socket writable, which loses the first message).
pub struct IkeSockets {
    pub port_500: UdpSocket,
    pub port_500_send: StdUdpSocket,
    /// Sends on port 4500: a worker's ESP-in-UDP socket (those receive on 4500 and hand IKE
    /// over through the inbox), or, with raw ESP, a socket of our own that also receives.
    pub port_4500: Port4500,
}

pub enum Port4500 {
    SharedWithDatapath(StdUdpSocket),
    /// Received through tokio, sent through the plain clone.
    Own(UdpSocket, StdUdpSocket),
}

/// AES-GCM first where the CPU has AES-NI and PCLMULQDQ, else ChaCha20-Poly1305 first.
fn proposals_for_this_cpu(mut proposals: Vec<Proposal>) -> Vec<Proposal> {
    #[cfg(target_arch = "x86_64")]
    let aes_fast = std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    let aes_fast = std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let aes_fast = false;
    let first = if aes_fast { Cipher::Aes256Gcm16 } else { Cipher::Chacha20Poly1305 };
    proposals.sort_by_key(|p| p.cipher != first);
    proposals
}

/// The peers of `topology` that IKE keys: those without manual SAs.
pub fn ike_peers(config: &MeshConfig, topology: &Topology) -> Vec<PeerId> {
    let me = topology.node_name.as_str();
    topology
        .peers
        .iter()
        .filter(|peer| config.manual_sa(me, &peer.name).is_none() && config.manual_sa(&peer.name, me).is_none())
        .map(|peer| peer.id)
        .collect()
}

/// IKE's settings for `config` with the peers `ike_peers`, signing with `node_key`; fails when
/// some IKE peer needs the pre-shared key (it or this node has no public key) and there is none.
pub fn settings(
    config: &MeshConfig,
    topology: &Topology,
    ike_peers: &[PeerId],
    node_key: Option<Arc<NodeKey>>,
) -> Result<IkeSettings, KeyingError> {
    let needs_psk = |id: &&PeerId| node_key.is_none() || topology.peer(**id).public_keys.is_empty();
    let psk = match &config.psk {
        Some(psk) => psk.as_bytes().to_vec(),
        None if !ike_peers.iter().any(|id| needs_psk(&id)) => Vec::new(),
        None => {
            let peers = ike_peers.iter().filter(needs_psk).map(|id| topology.peer(*id).name.clone()).collect();
            return Err(KeyingError::MissingPsk { peers });
        }
    };
    let proposals = if config.ike.proposals_explicit {
        config.ike.proposals.clone()
    } else {
        proposals_for_this_cpu(config.ike.proposals.clone())
    };
    Ok(IkeSettings {
        local: topology.local_address,
        psk: Zeroizing::new(psk),
        node_key,
        proposals,
        ike_lifetime: config.ike.ike_lifetime,
        child_lifetime: config.ike.child_lifetime,
        dpd: config.ike.dpd,
        force_udp_encap: topology.encap == mesh_config::Encap::Udp,
        esn: true,
        vxlan_port: topology.vxlan_port,
        peers: ike_peers.iter().map(|id| peer_settings(topology.peer(*id))).collect(),
    })
}

fn peer_settings(peer: &Peer) -> PeerSettings {
    PeerSettings { address: peer.address, mode: peer.mode, public_keys: peer.public_keys.clone() }
}

impl Keying {
    /// The IKE state for the peers that have no manual SAs (there may be none yet: a reload can
    /// add some).
    pub fn new(
        config: &MeshConfig,
        sas: Arc<SaManager>,
        node_key: Option<Arc<NodeKey>>,
        now: Instant,
    ) -> Result<Keying, KeyingError> {
        let topology = sas.state().topology_full();
        let ike_peers = ike_peers(config, &topology);
        let public_key = node_key.as_ref().map(|key| key.public_key());
        let settings = settings(config, &topology, &ike_peers, node_key)?;
        let mut endpoint = Endpoint::new(settings, now).map_err(KeyingError::Ike)?;
        endpoint.align_liveness_checks(wall_clock_second(now));
        Ok(Keying::with_endpoint(endpoint, ike_peers, public_key, sas))
    }

    /// Hands the IKE SAs over to the meshd that takes over (`crate::upgrade`); this endpoint
    /// sends nothing for them from now on.
    pub fn hand_over(&self) -> IkeHandover {
        self.lock().endpoint.hand_over(Instant::now())
    }

    /// Removes `peer`'s inbound Child SA `spi` after `grace`: handed over without its IKE SA,
    /// it carries traffic until the renegotiated one replaces it.
    pub fn retire_inbound(&self, peer: PeerId, spi: u32, grace: std::time::Duration) {
        self.with_peer(peer, |ike, index| ike.endpoint.retire_inbound(index, spi, Instant::now() + grace));
    }

    /// Takes the IKE SAs a running meshd handed over (or, after a failed handover, back).
    pub fn take_over(&self, handover: &IkeHandover) -> Result<usize, CryptoError> {
        let taken = self.lock().endpoint.take_over(handover, Instant::now());
        self.wake.notify_one();
        taken
    }
}

impl<E: IkeEngine> Keying<E> {
    /// Drives `endpoint`, whose peer indexes are the positions of `ike_peers`; this node signs
    /// with the key of `public_key` (`None`: the pre-shared key).
    pub fn with_endpoint(
        endpoint: E,
        ike_peers: Vec<PeerId>,
        public_key: Option<PublicKey>,
        sas: Arc<SaManager>,
    ) -> Keying<E> {
        Keying {
            ike: Mutex::new(Ike {
                endpoint,
                failures: vec![None; ike_peers.len()],
                stats: vec![IkePeerStats::default(); ike_peers.len()],
                notices: vec![NoticesPassed::default(); ike_peers.len()],
                send_failed: vec![None; ike_peers.len()],
                announcements: Announcements::default(),
                by_peer: ike_peers.iter().enumerate().map(|(index, id)| (*id, index)).collect(),
                peers: ike_peers,
                public_key,
            }),
            wake: Notify::new(),
            sas,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ike<E>> {
        self.ike.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `step` on the endpoint with `peer`'s index (nothing for a manual peer), then wakes
    /// the driver to send what it queued; false for a manual peer.
    fn with_peer(&self, peer: PeerId, step: impl FnOnce(&mut Ike<E>, PeerIndex)) -> bool {
        let mut ike = self.lock();
        let Some(index) = ike.by_peer.get(&peer).copied() else { return false };
        step(&mut ike, index);
        drop(ike);
        self.wake.notify_one();
        true
    }

    /// Reload: new credentials and SA settings (see `Endpoint::reconfigure`).
    pub fn reconfigure(&self, settings: IkeSettings) {
        let mut ike = self.lock();
        ike.public_key = settings.node_key.as_ref().map(|key| key.public_key());
        ike.endpoint.reconfigure(settings);
    }

    /// The diagnostic query keys of `peer`'s IKE SAs, newest first (none for a manual peer).
    pub fn query_keys(&self, peer: PeerId) -> Vec<Zeroizing<Vec<u8>>> {
        let ike = self.lock();
        ike.by_peer.get(&peer).map(|index| ike.endpoint.query_keys(*index)).unwrap_or_default()
    }

    /// The public key this node signs with; `None`: it uses the pre-shared key.
    pub fn public_key(&self) -> Option<PublicKey> {
        self.lock().public_key
    }

    /// Reload: starts keying `peer` with IKE.
    pub fn add_peer(&self, peer: &Peer) {
        let mut ike = self.lock();
        let index = ike.endpoint.add_peer(peer_settings(peer), Instant::now());
        ike.peers.push(peer.id);
        ike.failures.push(None);
        ike.stats.push(IkePeerStats::default());
        ike.notices.push(NoticesPassed::default());
        ike.send_failed.push(None);
        ike.by_peer.insert(peer.id, index);
        drop(ike);
        self.wake.notify_one();
    }

    /// Reload: deletes the IKE and Child SAs with `peer` (telling it) and stops keying it.
    pub fn remove_peer(&self, peer: PeerId) {
        self.with_peer(peer, |ike, index| {
            ike.endpoint.remove_peer(index, Instant::now());
            ike.by_peer.remove(&peer);
        });
    }

    /// Stopping: deletes every IKE SA (with its Child SAs), telling each peer, so that peers
    /// stop sending to this node at once instead of after dead peer detection.
    pub fn leave_all_peers(&self) {
        let mut ike = self.lock();
        let now = Instant::now();
        let indexes: Vec<usize> = ike.by_peer.drain().map(|(_, index)| index).collect();
        for index in indexes {
            ike.endpoint.remove_peer(index, now);
        }
        drop(ike);
        self.wake.notify_one();
    }

    /// Rekeys and handshake failures of an IKE peer; `None` for a manual peer.
    pub fn stats(&self, peer: PeerId) -> Option<IkePeerStats> {
        let ike = self.lock();
        ike.by_peer.get(&peer).map(|index| ike.stats[*index])
    }

    pub fn is_ike_peer(&self, peer: PeerId) -> bool {
        self.lock().by_peer.contains_key(&peer)
    }

    /// The kernel reported a link or route up (`pmtu::route::UnderlayEvents`): peers whose last
    /// IKE attempt failed are tried at once, each at most once per `NOTICE_INTERVAL` (a flapping
    /// link must not restart attempts before they can finish). Peers still being negotiated
    /// with for the first time are left alone: links change as overlays come up and announce.
    pub fn underlay_changed(&self) {
        let now = Instant::now();
        let mut ike = self.lock();
        let failed: Vec<usize> = ike.by_peer.values().copied().filter(|index| ike.failures[*index].is_some()).collect();
        for index in failed {
            if due(&mut ike.notices[index].underlay_changed, now) {
                ike.endpoint.retry_now(index, now);
            }
        }
        drop(ike);
        self.wake.notify_one();
    }

    /// Deletes the SAs with `peer` (telling it) and negotiates anew; false for a manual peer.
    pub fn flush(&self, peer: PeerId) -> bool {
        self.with_peer(peer, |ike, index| ike.endpoint.flush(index, Instant::now()))
    }

    /// Whether the IKE peer announced that it answers path-MTU probes.
    pub fn answers_probes(&self, peer: PeerId) -> bool {
        let ike = self.lock();
        ike.by_peer.get(&peer).is_some_and(|index| ike.endpoint.answers_probes(*index))
    }

    /// How `peer` is keyed, and how far IKE got.
    pub fn state_of(&self, peer: PeerId) -> KeyingState {
        let ike = self.lock();
        let Some(index) = ike.by_peer.get(&peer).copied() else { return KeyingState::Manual };
        let failure = ike.failures.get(index).cloned().flatten();
        let statuses = ike.endpoint.status(Instant::now());
        let established = statuses.iter().any(|s| s.peer == Some(index) && s.state == IkeState::Established);
        match (established, failure) {
            (true, _) => KeyingState::IkeEstablished,
            (false, Some(failure)) => KeyingState::IkeFailed(failure),
            (false, None) => KeyingState::IkeConnecting,
        }
    }

    /// The IKE SAs with `only` (or every peer), for `ikectl sa list` and `ikectl ping`.
    pub fn ike_sas(&self, only: Option<PeerId>) -> Vec<IkeSaInfo> {
        let cipher_prf_group = ("prfsha256".to_string(), "x25519".to_string());
        let topology = self.sas.state().topology();
        let ike = self.lock();
        ike.endpoint
            .status(Instant::now())
            .into_iter()
            .filter(|s| only.is_none() || s.peer.map(|i| ike.peers[i]) == only)
            .map(|s| IkeSaInfo {
                peer: s.peer.map_or_else(|| s.remote.ip().to_string(), |i| topology.peer_name(ike.peers[i])),
                initiator_spi: format!("0x{:016x}", s.initiator_spi),
                responder_spi: format!("0x{:016x}", s.responder_spi),
                we_initiated: s.we_initiated,
                state: s.state.to_string(),
                cipher: s.cipher,
                prf: cipher_prf_group.0.clone(),
                group: cipher_prf_group.1.clone(),
                remote: s.remote,
                nat_detected: s.nat_detected,
                udp_encap: s.udp_encap,
                established_secs: s.established_secs,
                rekey_in_secs: s.rekey_in_secs,
                child_spis: s.children.iter().map(|(i, o)| (Spi(*i), Spi(*o))).collect(),
                peer_auth: s.peer_auth.map(|auth| auth.method.as_str().to_string()),
                peer_key: s.peer_auth.and_then(|auth| auth.key).map(|key| key.fingerprint()),
            })
            .collect()
    }

    /// Applies the endpoint's events, then sends its datagrams: in that order, so that a
    /// responder's new inbound SA is in the SADB before the answer that lets the initiator use
    /// it leaves (the other way round, the initiator's first ESP could come back first and be
    /// dropped for its unknown SPI).
    fn drain(&self, sockets: &IkeSockets, announcer: &Announcer) {
        let state = self.sas.state();
        let mut ike = self.lock();
        ike.apply_events(&self.sas);
        while let Some(transmit) = ike.endpoint.poll_transmit() {
            let sent = match (transmit.source_port, &sockets.port_4500) {
                (IKE_PORT, _) => sockets.port_500_send.send_to(&transmit.bytes, transmit.destination),
                (_, Port4500::SharedWithDatapath(socket) | Port4500::Own(_, socket)) => {
                    socket.send_to(&with_marker(&transmit.bytes), transmit.destination)
                }
            };
            if let Err(error) = sent {
                // IKE retransmits; a lost datagram only costs time, but if the attempt fails it
                // was not for want of an answer.
                tracing::debug!(%error, destination = %transmit.destination, "sending an IKE message failed");
                let topology = state.topology();
                let peer = topology.peer_by_address(transmit.destination.ip());
                if let Some(id) = peer {
                    let kind = SendErrorKind::of(&error);
                    topology.peer(id).counters.send_errors.count(kind);
                    if let Some(index) = ike.by_peer.get(&id).copied() {
                        ike.send_failed[index] = Some(kind);
                    }
                }
                let context = DropContext { peer, outer_source: Some(transmit.destination), ..DropContext::default() };
                state.drops.record(DropReason::SendFailed, context);
            }
        }
        let due = ike.announcements.take_due(Instant::now());
        drop(ike);
        if !due.is_empty() {
            announcer.announce_to(state, &due);
        }
    }

    fn handle(&self, bytes: &[u8], from: SocketAddr, local_port: u16) {
        self.lock().endpoint.handle(bytes, from, local_port, Instant::now());
    }

    fn deadline(&self) -> Option<Instant> {
        let ike = self.lock();
        [ike.endpoint.poll_timeout(), ike.announcements.next_at()].into_iter().flatten().min()
    }
}

/// The datapath's notices, as the SA manager passes them on: only IKE peers are told about, and
/// each kind at most once per `NOTICE_INTERVAL`.
impl<E: IkeEngine> NoticeHandler for Keying<E> {
    fn unknown_spi(&self, peer: PeerId) {
        let now = Instant::now();
        self.with_peer(peer, |ike, index| {
            if due(&mut ike.notices[index].unknown_spi, now) {
                ike.endpoint.unknown_spi_from(index, now);
            }
        });
    }

    fn sequence_running_out(&self, peer: PeerId, spi: u32) {
        let now = Instant::now();
        self.with_peer(peer, |ike, index| {
            if due(&mut ike.notices[index].running_out, now) {
                ike.endpoint.rekey_child(index, spi, now);
            }
        });
    }

    fn peer_moved(&self, peer: PeerId, remote: SocketAddr) {
        self.with_peer(peer, |ike, index| ike.endpoint.peer_moved(index, remote));
    }
}

impl<E: IkeEngine> Ike<E> {
    fn apply_events(&mut self, sas: &SaManager) {
        while let Some(event) = self.endpoint.poll_event() {
            self.apply(sas, event);
        }
    }

    fn apply(&mut self, sas: &SaManager, event: Event) {
        let state = sas.state();
        match event {
            Event::InstallInbound { peer, sa } => {
                let peer = self.peers[peer];
                let (params, key) = sa_params(state, peer, sa);
                match Opener::new(params.cipher, &key) {
                    Ok(opener) => {
                        let sa = InboundSa::new(params, opener, ReplayWindow::new(DEFAULT_REPLAY_WINDOW));
                        if let Err(error) = sas.install_inbound(sa) {
                            tracing::error!(%error, "IKE Child SA not installed");
                        }
                    }
                    Err(error) => tracing::error!(%error, "IKE Child SA key refused"),
                }
            }
            Event::InstallOutbound { peer: index, sa, peer_has_inbound } => {
                let peer = self.peers[index];
                let (params, key) = sa_params(state, peer, sa);
                match Sealer::new(params.cipher, &key) {
                    Ok(sealer) => {
                        if sas.install_outbound(OutboundSa::new(params, sealer)).is_some() {
                            self.stats[index].rekeys += 1;
                        } else {
                            // SAs with the peer again (a restart on either side): it learns our
                            // overlay MACs now rather than when its neighbour entries go stale.
                            self.announcements.sas_up(peer, peer_has_inbound, Instant::now());
                        }
                    }
                    Err(error) => tracing::error!(%error, "IKE Child SA key refused"),
                }
            }
            Event::ExpectInbound { peer, spi } => sas.expect_inbound(self.peers[peer], spi),
            Event::RemoveInbound { peer, spi } => {
                tracing::debug!(peer = %sas.state().topology().peer_name(self.peers[peer]), spi = format_args!("{spi:#010x}"), "inbound Child SA retired");
                sas.remove_inbound(spi);
            }
            Event::RemoveOutbound { peer, spi } => {
                sas.remove_outbound(self.peers[peer], spi);
            }
            Event::Established { peer } => {
                self.failures[peer] = None;
                self.send_failed[peer] = None;
            }
            Event::Failed { peer, from, failure } => {
                let name = peer.map_or_else(|| from.to_string(), |p| state.topology().peer_name(self.peers[p]));
                let send_failed = peer.and_then(|p| self.send_failed[p].take());
                let text = match (&failure, send_failed) {
                    (Failure::Timeout, Some(kind)) => {
                        format!("our IKE messages could not be sent ({}): {}", kind.name(), kind.advice())
                    }
                    _ => failure.to_string(),
                };
                tracing::error!(peer = %name, "IKE with {name} failed: {text}");
                if let Some(reason) = failure_reason(&failure) {
                    self.record_drop(state, reason, peer, from);
                }
                if let Some(peer) = peer {
                    self.stats[peer].handshake_failures += 1;
                    self.failures[peer] = Some(text);
                }
            }
            Event::Refused { peer, from, refusal } => self.record_drop(state, refusal_reason(refusal), peer, from),
        }
    }

    fn record_drop(&self, state: &MeshState, reason: DropReason, peer: Option<PeerIndex>, from: SocketAddr) {
        let context =
            DropContext { peer: peer.map(|p| self.peers[p]), outer_source: Some(from), ..DropContext::default() };
        state.drops.record(reason, context);
    }
}

/// A datagram on our own UDP 4500 socket (raw ESP mode): only IKE, after the non-ESP marker, is
/// expected there.
fn receive_own_4500<E: IkeEngine>(keying: &Keying<E>, datagram: &[u8], from: SocketAddr) {
    let state = keying.sas.state();
    let reason = match classify_udp_encap(datagram) {
        Ok(UdpEncapKind::Ike) => return keying.handle(&datagram[NON_ESP_MARKER_LEN..], from, NAT_T_PORT),
        Ok(UdpEncapKind::NatKeepalive) => return,
        Ok(UdpEncapKind::Esp) => DropReason::EspInUdpUnexpected,
        Err(_) => DropReason::Malformed,
    };
    let context = DropContext {
        peer: state.topology().peer_by_address(from.ip()),
        outer_source: Some(from),
        ..DropContext::default()
    };
    state.drops.record(reason, context);
}

fn refusal_reason(refusal: Refusal) -> DropReason {
    match refusal {
        Refusal::Malformed => DropReason::IkeMalformed,
        Refusal::Unauthentic => DropReason::IkeIntegrity,
        Refusal::UnknownSpi => DropReason::IkeUnknownSpi,
        Refusal::Unexpected | Refusal::HalfOpenFull => DropReason::IkeUnexpected,
        Refusal::NoProposal => DropReason::IkeNoProposal,
    }
}

/// The peers to announce this node's overlay addresses to (`datapath::Announcer`): one whose
/// SAs came up, twice, `ANNOUNCE_AGAIN` apart (one may be lost). The first goes out at once when
/// the peer has its inbound SA already (it answered our exchange); when we answered, the peer
/// installs it only once our answer arrives, and an announcement sent at once would come
/// before it and be dropped there for its unknown SPI, so the first waits `ANSWER_IN_FLIGHT`.
#[derive(Debug, Default)]
struct Announcements {
    now: Vec<PeerId>,
    /// By the time they are due.
    later: BinaryHeap<Reverse<(Instant, PeerId)>>,
}

impl Announcements {
    fn sas_up(&mut self, peer: PeerId, peer_has_inbound: bool, now: Instant) {
        let first = if peer_has_inbound {
            self.now.push(peer);
            now
        } else {
            let first = now + ANSWER_IN_FLIGHT;
            self.later.push(Reverse((first, peer)));
            first
        };
        self.later.push(Reverse((first + ANNOUNCE_AGAIN, peer)));
    }

    /// When the next delayed announcement is due (the ones for at once go out when the events
    /// that caused them are applied).
    fn next_at(&self) -> Option<Instant> {
        self.later.peek().map(|Reverse((at, _))| *at)
    }

    /// The peers to announce to at `now`.
    fn take_due(&mut self, now: Instant) -> Vec<PeerId> {
        let mut due = std::mem::take(&mut self.now);
        while let Some(Reverse((_, peer))) = self.later.peek().filter(|Reverse((at, _))| *at <= now) {
            due.push(*peer);
            self.later.pop();
        }
        due
    }
}

/// The drop counter of a failure; none for this node's own (RNG, crypto library), which only
/// the log and `ikectl` show.
fn failure_reason(failure: &Failure) -> Option<DropReason> {
    Some(match failure {
        Failure::Authentication { .. } | Failure::Identity(_) => DropReason::IkeAuthFailed,
        Failure::NoProposalChosen { .. } => DropReason::IkeNoProposal,
        Failure::Timeout => DropReason::IkeRetransmitGaveUp,
        Failure::TrafficSelectors => DropReason::IkeTsUnacceptable,
        // The peer refused our request with another error notify.
        Failure::PeerError { .. } => DropReason::IkeUnexpected,
        Failure::Local(_) => return None,
    })
}

fn sa_params(state: &MeshState, peer: PeerId, sa: ChildSaKeys) -> (SaParams, crate::esp::KeyMaterial) {
    let params = SaParams {
        spi: sa.spi,
        peer,
        cipher: sa.cipher,
        mode: sa.mode,
        encap: state.topology().encap,
        esn: sa.esn,
        origin: SaOrigin::Ike,
        created_ms: state.clock.now_ms(),
        remote: sa.remote,
        behind_nat: sa.remote != SocketAddr::new(state.topology().peer(peer).address, NAT_T_PORT),
    };
    (params, sa.key)
}

fn with_marker(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; NON_ESP_MARKER_LEN];
    out.extend_from_slice(bytes);
    out
}

/// A bound UDP socket as a tokio socket to receive on and a plain clone to send with.
fn pair(socket: StdUdpSocket) -> io::Result<(UdpSocket, StdUdpSocket)> {
    socket.set_nonblocking(true)?;
    let sender = socket.try_clone()?;
    Ok((UdpSocket::from_std(socket)?, sender))
}

/// Binds the IKE sockets: UDP 500, and 4500 unless the datapath has it. Needs the runtime.
pub fn bind(local: IpAddr, datapath_4500: Option<StdUdpSocket>) -> io::Result<IkeSockets> {
    let port_500 = StdUdpSocket::bind(SocketAddr::new(local, IKE_PORT))?;
    let own_4500 = match datapath_4500 {
        Some(_) => None,
        None => Some(StdUdpSocket::bind(SocketAddr::new(local, NAT_T_PORT))?),
    };
    adopt(port_500, own_4500, datapath_4500)
}

/// The IKE sockets from bound ones: UDP 500, and 4500 of IKE's own or the datapath's (a
/// running meshd hands its bound ones over, `crate::upgrade`). Needs the runtime.
pub fn adopt(
    port_500: StdUdpSocket,
    own_4500: Option<StdUdpSocket>,
    datapath_4500: Option<StdUdpSocket>,
) -> io::Result<IkeSockets> {
    let (port_500, port_500_send) = pair(port_500)?;
    let port_4500 = match (own_4500, datapath_4500) {
        (Some(own), _) => {
            let (receiver, sender) = pair(own)?;
            Port4500::Own(receiver, sender)
        }
        (None, Some(shared)) => Port4500::SharedWithDatapath(shared),
        (None, None) => return Err(io::Error::other("no socket for UDP 4500")),
    };
    Ok(IkeSockets { port_500, port_500_send, port_4500 })
}

impl IkeSockets {
    /// Second descriptors of the sockets IKE bound itself (UDP 500, and 4500 when it has its
    /// own), to hand to the meshd that takes over.
    pub fn handover_fds(&self) -> io::Result<Vec<std::os::fd::OwnedFd>> {
        let mut fds = vec![self.port_500_send.try_clone()?.into()];
        if let Port4500::Own(_, sender) = &self.port_4500 {
            fds.push(sender.try_clone()?.into());
        }
        Ok(fds)
    }
}

/// Runs IKE until the runtime stops.
pub async fn run<E: IkeEngine>(
    keying: Arc<Keying<E>>,
    sockets: IkeSockets,
    announcer: Announcer,
    mut inbox: mpsc::Receiver<IkeDatagram>,
) {
    let mut buf_500 = vec![0u8; 65_536];
    let mut buf_4500 = vec![0u8; 65_536];
    let mut refused_tick = tokio::time::interval(REFUSED_LOG_INTERVAL);
    let mut refused_logged = keying.lock().endpoint.counters();
    loop {
        // Timers only when one is due: a received datagram does not make the endpoint look at
        // its other IKE SAs.
        let now = Instant::now();
        if keying.deadline().is_some_and(|at| at <= now) {
            keying.lock().endpoint.handle_timeout(now);
        }
        keying.drain(&sockets, &announcer);
        let deadline = keying.deadline().map(tokio::time::Instant::from_std);
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let own_4500 = async {
            match &sockets.port_4500 {
                Port4500::Own(socket, _) => socket.recv_from(&mut buf_4500).await,
                Port4500::SharedWithDatapath(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            received = sockets.port_500.recv_from(&mut buf_500) => match received {
                Ok((len, from)) => keying.handle(&buf_500[..len], from, IKE_PORT),
                Err(error) => tracing::debug!(%error, "receiving on UDP 500 failed"),
            },
            received = own_4500 => match received {
                Ok((len, from)) => receive_own_4500(&keying, &buf_4500[..len], from),
                Err(error) => tracing::debug!(%error, "receiving on UDP 4500 failed"),
            },
            Some(datagram) = inbox.recv() => keying.handle(&datagram.bytes, datagram.from, datagram.local_port),
            _ = sleep => {}
            _ = keying.wake.notified() => {}
            _ = refused_tick.tick() => {
                let counters = keying.lock().endpoint.counters();
                if counters != refused_logged {
                    tracing::warn!(
                        malformed = counters.malformed - refused_logged.malformed,
                        unauthentic = counters.unauthentic - refused_logged.unauthentic,
                        unknown_ike_sa = counters.unknown_spi - refused_logged.unknown_spi,
                        cookies_sent = counters.cookies_sent - refused_logged.cookies_sent,
                        no_proposal = counters.no_proposal - refused_logged.no_proposal,
                        half_open_full = counters.half_open_full - refused_logged.half_open_full,
                        "IKE messages refused since the last report"
                    );
                    refused_logged = counters;
                }
            }
        }
    }
}


/// The start of the wall clock's current second, as an `Instant` near `now`: nodes whose clocks
/// agree then share the grid their liveness checks fall on (`Endpoint::align_liveness_checks`).
fn wall_clock_second(now: Instant) -> Instant {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.checked_sub(Duration::from_nanos(since_epoch.subsec_nanos().into())).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use mesh_config::{Encap, Mode};

    use super::*;
    use crate::datapath::testkit::{address, mesh_file, Setup, DEFAULT};
    use crate::datapath::EspOut;
    use crate::esp::KeyMaterial;
    use crate::sadb::manager::SaNotice;

    /// What the driver asked of the endpoint.
    #[derive(Debug, PartialEq, Eq)]
    enum Asked {
        UnknownSpi(PeerIndex),
        Rekey(PeerIndex, u32),
        Flush(PeerIndex),
        Moved(PeerIndex, SocketAddr),
        Retry(PeerIndex),
        Remove(PeerIndex),
        Add(IpAddr),
    }

    /// An endpoint that says what the test tells it to and records what it was asked.
    #[derive(Default)]
    struct FakeEndpoint {
        events: VecDeque<Event>,
        transmits: VecDeque<Transmit>,
        status: Vec<IkeSaStatus>,
        asked: Vec<Asked>,
        peers: usize,
        /// For each datagram handed out: whether inbound SA `.1` was in the SADB of `.0` then.
        watched_inbound: Option<(Arc<MeshState>, u32)>,
        inbound_when_sent: Vec<bool>,
    }

    impl IkeEngine for FakeEndpoint {
        fn handle(&mut self, _: &[u8], _: SocketAddr, _: u16, _: Instant) {}
        fn handle_timeout(&mut self, _: Instant) {}
        fn poll_transmit(&mut self) -> Option<Transmit> {
            let transmit = self.transmits.pop_front()?;
            if let Some((state, spi)) = &self.watched_inbound {
                self.inbound_when_sent.push(state.sadb.load().inbound(*spi).is_some());
            }
            Some(transmit)
        }
        fn poll_event(&mut self) -> Option<Event> {
            self.events.pop_front()
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
        fn status(&self, _: Instant) -> Vec<IkeSaStatus> {
            self.status.clone()
        }
        fn counters(&self) -> IkeCounters {
            IkeCounters::default()
        }
        fn unknown_spi_from(&mut self, peer: PeerIndex, _: Instant) {
            self.asked.push(Asked::UnknownSpi(peer));
        }
        fn rekey_child(&mut self, peer: PeerIndex, outbound_spi: u32, _: Instant) {
            self.asked.push(Asked::Rekey(peer, outbound_spi));
        }
        fn peer_moved(&mut self, peer: PeerIndex, remote: SocketAddr) {
            self.asked.push(Asked::Moved(peer, remote));
        }
        fn retry_now(&mut self, peer: PeerIndex, _: Instant) {
            self.asked.push(Asked::Retry(peer));
        }
        fn flush(&mut self, peer: PeerIndex, _: Instant) {
            self.asked.push(Asked::Flush(peer));
        }
        fn add_peer(&mut self, peer: PeerSettings, _: Instant) -> PeerIndex {
            self.asked.push(Asked::Add(peer.address));
            self.peers += 1;
            self.peers - 1
        }
        fn remove_peer(&mut self, peer: PeerIndex, _: Instant) {
            self.asked.push(Asked::Remove(peer));
        }
        fn reconfigure(&mut self, _: IkeSettings) {}
        fn answers_probes(&self, _: PeerIndex) -> bool {
            false
        }
        fn query_keys(&self, _: PeerIndex) -> Vec<Zeroizing<Vec<u8>>> {
            Vec::new()
        }
    }

    /// Node n0 of three: IKE keys n1 (endpoint index 0), n2 is manual.
    fn driver() -> Keying<FakeEndpoint> {
        let config = mesh_file(&Setup { nodes: 3, ..DEFAULT });
        let topology = Topology::new(&config, "n0", address(&DEFAULT, 0)).unwrap();
        let sas = Arc::new(SaManager::new(Arc::new(MeshState::new(topology))));
        Keying::with_endpoint(FakeEndpoint { peers: 1, ..FakeEndpoint::default() }, vec![PeerId(0)], None, sas)
    }

    fn keys(spi: u32) -> ChildSaKeys {
        ChildSaKeys {
            spi,
            cipher: Cipher::Aes256Gcm16,
            esn: true,
            mode: Mode::Transport,
            remote: "198.18.0.2:4500".parse().unwrap(),
            key: KeyMaterial::from_bytes(&[5u8; 36]).unwrap(),
        }
    }

    fn established(peer: PeerIndex) -> IkeSaStatus {
        IkeSaStatus {
            peer: Some(peer),
            initiator_spi: 1,
            responder_spi: 2,
            we_initiated: true,
            state: IkeState::Established,
            cipher: Some(Cipher::Aes256Gcm16),
            remote: "198.18.0.2:500".parse().unwrap(),
            nat_detected: false,
            udp_encap: false,
            established_secs: Some(1),
            rekey_in_secs: Some(100),
            children: vec![(0x5001, 0x6001)],
            peer_auth: None,
        }
    }

    fn happen(keying: &Keying<FakeEndpoint>, events: impl IntoIterator<Item = Event>) {
        let mut ike = keying.lock();
        ike.endpoint.events.extend(events);
        ike.apply_events(&keying.sas);
    }

    fn asked(keying: &Keying<FakeEndpoint>) -> Vec<Asked> {
        std::mem::take(&mut keying.lock().endpoint.asked)
    }

    #[test]
    fn child_sas_go_to_the_sadb_and_a_replaced_outbound_sa_is_a_rekey() {
        let keying = driver();
        let state = keying.sas.state();
        happen(
            &keying,
            [
                Event::InstallInbound { peer: 0, sa: keys(0x5001) },
                Event::InstallOutbound { peer: 0, sa: keys(0x6001), peer_has_inbound: true },
            ],
        );
        let tables = state.sadb.load();
        let inbound = tables.inbound(0x5001).unwrap();
        assert_eq!((inbound.params.peer, inbound.params.origin, inbound.params.esn), (PeerId(0), SaOrigin::Ike, true));
        assert_eq!(inbound.params.encap, Encap::Udp);
        assert_eq!(tables.outbound(PeerId(0)).unwrap().params.spi, 0x6001);
        assert_eq!(keying.stats(PeerId(0)).unwrap().rekeys, 0, "a first SA is no rekey");
        let due_now = keying.lock().announcements.take_due(Instant::now());
        assert_eq!(due_now, [PeerId(0)], "a first SA we initiated is announced to its peer at once");
        let again = keying.lock().announcements.next_at().expect("and again later");
        assert!(keying.deadline().is_some_and(|at| at <= again), "the driver wakes for it");
        assert_eq!(keying.lock().announcements.take_due(again), [PeerId(0)]);

        happen(
            &keying,
            [
                Event::InstallOutbound { peer: 0, sa: keys(0x6002), peer_has_inbound: true },
                Event::RemoveOutbound { peer: 0, spi: 0x6001 },
                Event::RemoveInbound { peer: 0, spi: 0x5001 },
            ],
        );
        let tables = state.sadb.load();
        assert_eq!(tables.outbound(PeerId(0)).unwrap().params.spi, 0x6002, "the newer SA stays");
        assert!(tables.inbound(0x5001).is_none());
        assert_eq!(keying.stats(PeerId(0)).unwrap().rekeys, 1);
        assert_eq!(keying.lock().announcements.take_due(Instant::now() + ANNOUNCE_AGAIN), [], "a rekey is not announced");
        assert_eq!(keying.stats(PeerId(1)), None, "n2 is manual");
    }

    /// A responder's answer to IKE_AUTH (or CREATE_CHILD_SA) tells the initiator that it may
    /// send on the new Child SA. Sent before the inbound SA was in the SADB, the initiator's
    /// first packets (its overlay announcement, in the lab) could arrive first and be dropped
    /// as ESP for an unknown SPI.
    #[tokio::test]
    async fn a_responders_inbound_sa_is_installed_before_its_answer_leaves() {
        let config = mesh_file(&Setup { nodes: 3, ..DEFAULT });
        let topology = Topology::new(&config, "n0", address(&DEFAULT, 0)).unwrap();
        let state = Arc::new(MeshState::new(topology));
        let sas = Arc::new(SaManager::new(Arc::clone(&state)));
        let peer = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let answer = Transmit { destination: peer.local_addr().unwrap(), source_port: IKE_PORT, bytes: vec![7; 40] };
        let endpoint = FakeEndpoint {
            peers: 1,
            events: [Event::InstallInbound { peer: 0, sa: keys(0x5001) }].into(),
            transmits: [answer].into(),
            watched_inbound: Some((Arc::clone(&state), 0x5001)),
            ..FakeEndpoint::default()
        };
        let keying = Keying::with_endpoint(endpoint, vec![PeerId(0)], None, sas);
        let socket = || StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let sockets = adopt(socket(), None, Some(socket())).unwrap();

        keying.drain(&sockets, &Announcer::new(EspOut::Udp(Arc::new(socket()))));

        assert_eq!(keying.lock().endpoint.inbound_when_sent, [true], "the SA was in the SADB when the answer left");
        let mut received = [0u8; 64];
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(peer.recv_from(&mut received).unwrap().0, 40, "and the answer left");
    }

    /// Two announcements per peer whose SAs came up, a second apart: the first at once where
    /// the peer answered our exchange, else once our answer had time to get there. The times of
    /// peers coming up in turn interleave.
    #[test]
    fn announcements_wait_for_the_answer_where_we_answered() {
        let mut announcements = Announcements::default();
        let t0 = Instant::now();
        announcements.sas_up(PeerId(1), false, t0);
        announcements.sas_up(PeerId(2), true, t0 + Duration::from_millis(100));
        assert_eq!(announcements.take_due(t0 + Duration::from_millis(100)), [PeerId(2)]);
        assert_eq!(announcements.next_at(), Some(t0 + ANSWER_IN_FLIGHT));
        assert_eq!(announcements.take_due(t0 + ANSWER_IN_FLIGHT), [PeerId(1)]);
        assert_eq!(announcements.next_at(), Some(t0 + Duration::from_millis(100) + ANNOUNCE_AGAIN));
        assert_eq!(announcements.take_due(t0 + ANSWER_IN_FLIGHT + ANNOUNCE_AGAIN), [PeerId(2), PeerId(1)]);
        assert_eq!((announcements.next_at(), announcements.take_due(t0 + Duration::from_secs(60))), (None, vec![]));
    }

    #[test]
    fn the_keying_state_follows_the_endpoint() {
        let keying = driver();
        assert_eq!(keying.state_of(PeerId(0)), KeyingState::IkeConnecting);
        assert_eq!(keying.state_of(PeerId(1)).to_string(), "manual");
        let from = "198.18.0.2:500".parse().unwrap();
        happen(&keying, [Event::Failed { peer: Some(0), from, failure: Failure::Timeout }]);
        assert_eq!(keying.state_of(PeerId(0)), KeyingState::IkeFailed(Failure::Timeout.to_string()));
        assert_eq!(keying.stats(PeerId(0)).unwrap().handshake_failures, 1);
        let drops = keying.sas.state().drops.report(|id| id.0.to_string(), Some(PeerId(0)));
        assert_eq!(drops.by_reason.get(&DropReason::IkeRetransmitGaveUp), Some(&1));

        // A timeout after the kernel refused to send: the state names the errno, not the peer.
        keying.lock().send_failed[0] = Some(SendErrorKind::NoBufferSpace);
        happen(&keying, [Event::Failed { peer: Some(0), from, failure: Failure::Timeout }]);
        let state = keying.state_of(PeerId(0)).to_string();
        assert!(state.contains("could not be sent (ENOBUFS)") && state.contains("gc_thresh"), "{state}");

        keying.lock().endpoint.status = vec![established(0)];
        assert_eq!(keying.state_of(PeerId(0)).to_string(), "ike: established");
        let listed = keying.ike_sas(Some(PeerId(0)));
        assert_eq!(IkeState::from_text(&listed[0].state), Some(IkeState::Established));
        keying.lock().endpoint.status.clear();
        happen(&keying, [Event::Established { peer: 0 }]);
        assert_eq!(keying.state_of(PeerId(0)), KeyingState::IkeConnecting, "the failure is forgotten");
    }

    #[test]
    fn datapath_notices_reach_the_endpoint_for_ike_peers_at_most_once_a_second() {
        let keying = driver();
        keying.unknown_spi(PeerId(0));
        keying.unknown_spi(PeerId(0));
        keying.unknown_spi(PeerId(1));
        assert_eq!(asked(&keying), vec![Asked::UnknownSpi(0)]);

        // Through the SA manager, which passes on notices about the current SA only.
        happen(&keying, [Event::InstallOutbound { peer: 0, sa: keys(0x6001), peer_has_inbound: true }]);
        let manager = keying.sas.clone();
        manager.handle_notice(SaNotice::SequenceRunningOut { peer: PeerId(0), spi: 0x6000 }, &keying);
        manager.handle_notice(SaNotice::SequenceRunningOut { peer: PeerId(0), spi: 0x6001 }, &keying);
        manager.handle_notice(SaNotice::SequenceRunningOut { peer: PeerId(0), spi: 0x6001 }, &keying);
        assert_eq!(asked(&keying), vec![Asked::Rekey(0, 0x6001)]);

        keying.lock().notices[0] = NoticesPassed::default();
        manager.handle_notice(SaNotice::UnknownSpi { peer: PeerId(0) }, &keying);
        assert_eq!(asked(&keying), vec![Asked::UnknownSpi(0)], "again after the interval");

        // A NAT mapping the SA manager followed: the IKE SAs follow too (manual peers have none).
        let rebound: SocketAddr = "198.18.0.254:40000".parse().unwrap();
        keying.peer_moved(PeerId(0), rebound);
        keying.peer_moved(PeerId(1), rebound);
        assert_eq!(asked(&keying), vec![Asked::Moved(0, rebound)]);

        // A link or route came up: IKE peers whose attempt failed are retried, at most once a
        // second; others are left to the attempt under way.
        keying.underlay_changed();
        assert_eq!(asked(&keying), vec![]);
        let from = "198.18.0.2:500".parse().unwrap();
        happen(&keying, [Event::Failed { peer: Some(0), from, failure: Failure::Timeout }]);
        keying.underlay_changed();
        keying.underlay_changed();
        assert_eq!(asked(&keying), vec![Asked::Retry(0)]);
    }

    #[test]
    fn peers_map_to_endpoint_indexes_across_reloads() {
        let keying = driver();
        assert!(keying.flush(PeerId(0)));
        assert!(!keying.flush(PeerId(1)), "manual peers are flushed by the SA manager only");
        keying.remove_peer(PeerId(0));
        assert!(!keying.is_ike_peer(PeerId(0)));
        let n2 = keying.sas.state().topology().peer(PeerId(1)).clone();
        keying.add_peer(&n2);
        keying.unknown_spi(PeerId(1));
        keying.unknown_spi(PeerId(0));
        assert_eq!(
            asked(&keying),
            vec![Asked::Flush(0), Asked::Remove(0), Asked::Add(n2.address), Asked::UnknownSpi(1)]
        );
    }
}
