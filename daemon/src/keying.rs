//! The IKE driver: runs the sans-IO [`Endpoint`] on the control plane's runtime, gives it the
//! datagrams of UDP 500 and 4500 and the time, sends what it says, and applies its events to
//! the SADB.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mesh_config::control::{DropReason, IkeSaInfo, SaOrigin, Spi};
use mesh_config::{Cipher, MeshConfig, Proposal, PublicKey};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};
use zeroize::Zeroizing;

use crate::datapath::IkeDatagram;
use crate::drops::DropContext;
use crate::esp::{Opener, ReplayWindow, Sealer, DEFAULT_REPLAY_WINDOW};
use crate::ike::crypto::NodeKey;
use crate::ike::{
    ChildSaKeys, Endpoint, Event, Failure, IkeSettings, PeerIndex, PeerSettings, Refusal, IKE_PORT, NAT_T_PORT,
};
use crate::sadb::{InboundSa, OutboundSa, SaParams};
use crate::state::MeshState;
use crate::topology::{Peer, PeerId, Topology};
use crate::wire::esp::{classify_udp_encap, UdpEncapKind, NON_ESP_MARKER_LEN};

/// How often the datapath is looked at: ESP for unknown SPIs (a liveness check or a new IKE
/// SA), and outbound SAs whose sequence numbers run out (a rekey).
const DATAPATH_CHECK: Duration = Duration::from_secs(1);
/// Without ESN, rekey once this many sequence numbers are used (the 32-bit space must never wrap;
/// at 10 Gbit/s of small packets the rest lasts minutes).
const SEQUENCE_REKEY_AT: u64 = 3 << 30;
/// Refused IKE messages are summed up in the log at most this often.
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The IKE state shared by the driver task and the control socket.
pub struct Keying {
    ike: Mutex<Ike>,
    wake: Notify,
}

/// The endpoint and the daemon's names for its peers, under one lock.
struct Ike {
    endpoint: Endpoint,
    /// The topology's id of each IKE peer (index = the endpoint's peer index; peers that a reload
    /// removed keep their index).
    peers: Vec<PeerId>,
    /// The endpoint index of each peer IKE keys now.
    by_peer: HashMap<PeerId, usize>,
    /// The last failure of each IKE peer, cleared when an IKE SA comes up.
    failures: Vec<Option<String>>,
    /// Per IKE peer (by endpoint index), for metrics.
    stats: Vec<IkePeerStats>,
    /// The public key of the key this node signs with.
    public_key: Option<PublicKey>,
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
) -> Result<IkeSettings, String> {
    let needs_psk = |id: &&PeerId| node_key.is_none() || topology.peer(**id).public_keys.is_empty();
    let psk = match &config.psk {
        Some(psk) => psk.as_bytes().to_vec(),
        None if !ike_peers.iter().any(|id| needs_psk(&id)) => Vec::new(),
        None => {
            let names: Vec<&str> =
                ike_peers.iter().filter(needs_psk).map(|id| topology.peer(*id).name.as_str()).collect();
            return Err(format!(
                "peers {} have no [[manual_sa]] entries, so they need IKE, and IKE needs public keys on both nodes or the pre-shared key: give every node its public_key, or set psk_file in [mesh]",
                names.join(", ")
            ));
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
        state: &MeshState,
        node_key: Option<Arc<NodeKey>>,
        now: Instant,
    ) -> Result<Keying, String> {
        let topology = state.topology();
        let ike_peers = ike_peers(config, &topology);
        let public_key = node_key.as_ref().map(|key| key.public_key());
        let settings = settings(config, &topology, &ike_peers, node_key)?;
        let endpoint = Endpoint::new(settings, now).map_err(|e| e.to_string())?;
        Ok(Keying {
            ike: Mutex::new(Ike {
                endpoint,
                failures: vec![None; ike_peers.len()],
                stats: vec![IkePeerStats::default(); ike_peers.len()],
                by_peer: ike_peers.iter().enumerate().map(|(index, id)| (*id, index)).collect(),
                peers: ike_peers,
                public_key,
            }),
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Ike> {
        self.ike.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
        ike.by_peer.insert(peer.id, index);
        drop(ike);
        self.wake.notify_one();
    }

    /// Reload: deletes the IKE and Child SAs with `peer` (telling it) and stops keying it.
    pub fn remove_peer(&self, peer: PeerId) {
        let mut ike = self.lock();
        if let Some(index) = ike.by_peer.remove(&peer) {
            ike.endpoint.remove_peer(index, Instant::now());
            drop(ike);
            self.wake.notify_one();
        }
    }

    /// Rekeys and handshake failures of an IKE peer; `None` for a manual peer.
    pub fn stats(&self, peer: PeerId) -> Option<IkePeerStats> {
        let ike = self.lock();
        ike.by_peer.get(&peer).map(|index| ike.stats[*index])
    }

    pub fn is_ike_peer(&self, peer: PeerId) -> bool {
        self.lock().by_peer.contains_key(&peer)
    }

    /// Deletes the SAs with `peer` (telling it) and negotiates anew; false for a manual peer.
    pub fn flush(&self, peer: PeerId) -> bool {
        let mut ike = self.lock();
        let Some(index) = ike.by_peer.get(&peer).copied() else { return false };
        ike.endpoint.flush(index, Instant::now());
        drop(ike);
        self.wake.notify_one();
        true
    }

    /// Whether the IKE peer announced that it answers path-MTU probes.
    pub fn answers_probes(&self, peer: PeerId) -> bool {
        let ike = self.lock();
        ike.by_peer.get(&peer).is_some_and(|index| ike.endpoint.answers_probes(*index))
    }

    /// "established", "connecting", or the last failure.
    pub fn state_of(&self, peer: PeerId) -> Option<String> {
        let ike = self.lock();
        let index = *ike.by_peer.get(&peer)?;
        let failure = ike.failures.get(index).cloned().flatten();
        let statuses = ike.endpoint.status(Instant::now());
        let established = statuses.iter().any(|s| s.peer == Some(index) && s.state == "established");
        Some(match (established, failure) {
            (true, _) => "ike: established".to_string(),
            (false, Some(failure)) => format!("ike: {failure}"),
            (false, None) => "ike: connecting".to_string(),
        })
    }

    pub fn ike_sas(&self, state: &MeshState, only: Option<PeerId>) -> Vec<IkeSaInfo> {
        let cipher_prf_group = ("prfsha256".to_string(), "x25519".to_string());
        let topology = state.topology();
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

    /// Applies the endpoint's events to the SADB and sends its datagrams.
    fn drain(&self, state: &MeshState, sockets: &IkeSockets) {
        let mut ike = self.lock();
        while let Some(transmit) = ike.endpoint.poll_transmit() {
            let sent = match (transmit.source_port, &sockets.port_4500) {
                (IKE_PORT, _) => sockets.port_500_send.send_to(&transmit.bytes, transmit.destination),
                (_, Port4500::SharedWithDatapath(socket) | Port4500::Own(_, socket)) => {
                    socket.send_to(&with_marker(&transmit.bytes), transmit.destination)
                }
            };
            if let Err(error) = sent {
                // IKE retransmits; a lost datagram only costs time.
                tracing::debug!(%error, destination = %transmit.destination, "sending an IKE message failed");
                let peer = state.topology().peer_by_address(transmit.destination.ip());
                let context = DropContext { peer, outer_source: Some(transmit.destination), ..DropContext::default() };
                state.drops.record(DropReason::SendFailed, context);
            }
        }
        while let Some(event) = ike.endpoint.poll_event() {
            ike.apply(state, event);
        }
    }

    fn handle(&self, bytes: &[u8], from: SocketAddr, local_port: u16) {
        self.lock().endpoint.handle(bytes, from, local_port, Instant::now());
    }

    fn deadline(&self) -> Option<Instant> {
        self.lock().endpoint.poll_timeout()
    }
}

impl Ike {
    fn apply(&mut self, state: &MeshState, event: Event) {
        match event {
            Event::InstallInbound { peer, sa } => {
                let peer = self.peers[peer];
                let (params, key) = sa_params(state, peer, sa);
                match Opener::new(params.cipher, &key) {
                    Ok(opener) => {
                        if let Err(error) = state.sadb.install_inbound(InboundSa::new(
                            params,
                            opener,
                            ReplayWindow::new(DEFAULT_REPLAY_WINDOW),
                        )) {
                            tracing::error!(%error, "IKE Child SA not installed");
                        }
                    }
                    Err(error) => tracing::error!(%error, "IKE Child SA key refused"),
                }
            }
            Event::InstallOutbound { peer: index, sa } => {
                let peer = self.peers[index];
                if state.sadb.load().outbound(peer).is_some() {
                    self.stats[index].rekeys += 1;
                }
                let (params, key) = sa_params(state, peer, sa);
                match Sealer::new(params.cipher, &key) {
                    Ok(sealer) => {
                        state.sadb.install_outbound(OutboundSa::new(params, sealer));
                    }
                    Err(error) => tracing::error!(%error, "IKE Child SA key refused"),
                }
            }
            Event::RemoveInbound { spi, .. } => {
                state.sadb.remove_inbound(spi);
            }
            Event::RemoveOutbound { peer, spi } => {
                state.sadb.remove_outbound(self.peers[peer], spi);
            }
            Event::Established { peer } => self.failures[peer] = None,
            Event::Failed { peer, from, failure } => {
                let name = peer.map_or_else(|| from.to_string(), |p| state.topology().peer_name(self.peers[p]));
                tracing::error!(peer = %name, "IKE with {name} failed: {failure}");
                self.record_drop(state, failure_reason(&failure), peer, from);
                if let Some(peer) = peer {
                    self.stats[peer].handshake_failures += 1;
                    self.failures[peer] = Some(failure.to_string());
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
fn receive_own_4500(keying: &Keying, state: &MeshState, datagram: &[u8], from: SocketAddr) {
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
        Refusal::Unexpected => DropReason::IkeUnexpected,
    }
}

fn failure_reason(failure: &Failure) -> DropReason {
    match failure {
        Failure::Authentication { .. } | Failure::Identity(_) => DropReason::IkeAuthFailed,
        Failure::NoProposalChosen { .. } => DropReason::IkeNoProposal,
        Failure::Timeout => DropReason::IkeRetransmitGaveUp,
        Failure::TrafficSelectors => DropReason::IkeTsUnacceptable,
    }
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
    };
    (params, sa.key)
}

fn with_marker(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; NON_ESP_MARKER_LEN];
    out.extend_from_slice(bytes);
    out
}

/// A UDP socket on `port` as a tokio socket to receive on and a plain clone to send with.
fn bind_pair(local: IpAddr, port: u16) -> io::Result<(UdpSocket, StdUdpSocket)> {
    let socket = StdUdpSocket::bind(SocketAddr::new(local, port))?;
    socket.set_nonblocking(true)?;
    let sender = socket.try_clone()?;
    Ok((UdpSocket::from_std(socket)?, sender))
}

/// Binds the IKE sockets: UDP 500, and 4500 unless the datapath has it. Needs the runtime.
pub fn bind(local: IpAddr, datapath_4500: Option<StdUdpSocket>) -> io::Result<IkeSockets> {
    let (port_500, port_500_send) = bind_pair(local, IKE_PORT)?;
    let port_4500 = match datapath_4500 {
        Some(socket) => Port4500::SharedWithDatapath(socket),
        None => {
            let (receiver, sender) = bind_pair(local, NAT_T_PORT)?;
            Port4500::Own(receiver, sender)
        }
    };
    Ok(IkeSockets { port_500, port_500_send, port_4500 })
}

/// Runs IKE until the runtime stops.
pub async fn run(
    keying: Arc<Keying>,
    state: Arc<MeshState>,
    sockets: IkeSockets,
    mut inbox: mpsc::Receiver<IkeDatagram>,
) {
    let mut buf_500 = vec![0u8; 65_536];
    let mut buf_4500 = vec![0u8; 65_536];
    let mut unknown_spi_seen: Vec<u64> = Vec::new();
    let mut datapath_tick = tokio::time::interval(DATAPATH_CHECK);
    let mut refused_logged = keying.lock().endpoint.counters;
    let mut refused_logged_at = Instant::now();
    loop {
        keying.lock().endpoint.handle_timeout(Instant::now());
        keying.drain(&state, &sockets);
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
                Ok((len, from)) => receive_own_4500(&keying, &state, &buf_4500[..len], from),
                Err(error) => tracing::debug!(%error, "receiving on UDP 4500 failed"),
            },
            Some(datagram) = inbox.recv() => keying.handle(&datagram.bytes, datagram.from, datagram.local_port),
            _ = sleep => {}
            _ = keying.wake.notified() => {}
            _ = datapath_tick.tick() => {
                let now = Instant::now();
                let tables = state.sadb.load();
                let mut ike = keying.lock();
                let Ike { endpoint, peers, .. } = &mut *ike;
                unknown_spi_seen.resize(peers.len(), 0);
                for (index, peer) in peers.iter().enumerate() {
                    let count = state.drops.peer_count(*peer, DropReason::UnknownSpi);
                    if count > unknown_spi_seen[index] {
                        unknown_spi_seen[index] = count;
                        endpoint.unknown_spi_from(index, now);
                    }
                    if let Some(sa) = tables.outbound(*peer).filter(|sa| !sa.params.esn && sa.last_sequence() >= SEQUENCE_REKEY_AT) {
                        endpoint.rekey_child(index, sa.params.spi, now);
                    }
                }
                let counters = endpoint.counters;
                if counters != refused_logged && now >= refused_logged_at + REFUSED_LOG_INTERVAL {
                    tracing::warn!(
                        malformed = counters.malformed - refused_logged.malformed,
                        unauthentic = counters.unauthentic - refused_logged.unauthentic,
                        unknown_ike_sa = counters.unknown_spi - refused_logged.unknown_spi,
                        cookies_sent = counters.cookies_sent - refused_logged.cookies_sent,
                        "IKE messages refused since the last report"
                    );
                    refused_logged = counters;
                    refused_logged_at = now;
                }
            }
        }
    }
}
