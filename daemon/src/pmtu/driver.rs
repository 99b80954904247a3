//! The thin IO side of path-MTU discovery: per peer, reads the kernel's MTU towards it, runs the
//! probe [`Search`] for peers known to be meshd, seals probes and acknowledgements with the
//! peer's outbound SA, and publishes the resulting limit for the datapath. Also follows the
//! underlay interface's MTU for overlays with `mtu = "auto"`.
//!
//! The driver is a task on the control-plane runtime; what the kernel says of the underlay
//! (the route lookup, which blocks) is read on tokio's blocking pool, one [`Underlay`] for all
//! peers at a time, and serves both the probe searches and `mtu = "auto"`.
//!
//! Idle peers cost (next to) nothing: the driver sleeps until the earliest search timer, or at
//! most [`TRAFFIC_CHECK`]; a wake-up looks at two counters per peer and works only on the peers
//! whose timer is due, that sent traffic while idle, or whose SA or route changed. The
//! underlay is read again only when it may have changed: the kernel reported a link, address
//! or route change (`route::UnderlayEvents`, followed on a thread of its own, coalesced here
//! into at most one reading in flight and one after it), a reload changed the peers, or the
//! kernel refused a packet as too large for its path (it learnt a smaller path MTU from ICMP,
//! which it reports to no one), or such a learnt path MTU expires. Only when those reports
//! cannot be followed is it read by the clock, every [`ROUTE_PERIOD`].

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_config::control::{DropReason, SaOrigin};
use mesh_config::{Cipher, OverlayMtu};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinError, JoinHandle};

use super::auto::{self, Underlay};
use super::search::{Search, State, Timing};
use super::{EchoOrder, InbandMessage, PathReport};
use crate::datapath::{EspOut, TRAILER_ROOM};
use crate::drops::SendErrorKind;
use crate::esp::PLAINTEXT_OFFSET;
use crate::ids::PeerId;
use crate::keying::Keying;
use crate::overhead::{Encapsulation, IpVersion};
use crate::sadb::OutboundSa;
use crate::state::MeshState;
use crate::topology::{Peer, Topology};
use crate::wire::inband::{self, InbandHeader, MessageType};
use crate::{netif, sys};

/// The shortest sleep: timers due within it are handled together.
const TICK: Duration = Duration::from_millis(100);
/// The longest sleep: how soon traffic towards an idle peer is noticed (its path is then
/// probed again), and a new SA or a reload's new peers.
const TRAFFIC_CHECK: Duration = Duration::from_secs(1);
/// How often the kernel's view of the underlay (the route and MTU towards every peer, and the
/// underlay link's MTU for `mtu = "auto"`) is read when its change reports are not followed.
const ROUTE_PERIOD: Duration = Duration::from_secs(2);
/// How long after a path MTU learnt from ICMP expires its route is read again (the kernel's
/// expiry is counted in ticks and checked lazily).
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);
/// Room for the largest probe: a 64 KiB IP packet.
const PROBE_BUFFER_LEN: usize = 65_536;

/// Says whether a peer answers probes: manual-SA peers run meshd (they read the same mesh file),
/// IKE peers only if they announced it when the SA was negotiated.
pub type ProbePolicy = Box<dyn Fn(&OutboundSa) -> bool + Send + Sync>;

pub struct Driver {
    pub state: Arc<MeshState>,
    pub out: EspOut,
    pub probes: ProbePolicy,
    /// The cipher the overhead of `mtu = "auto"` is computed for.
    pub cipher: Cipher,
    pub timing: Timing,
}

/// One peer's path as the driver tracks it.
#[derive(Default)]
struct PeerPath {
    /// Runs while the peer has an outbound SA that answers probes; it outlives rekeys (the path
    /// stays the same), so a known black hole does not reopen every hour.
    search: Option<Search>,
    /// The peer's unicast transmitted-packet counter when last looked at: a change is traffic.
    tx_seen: u64,
    /// The SPI of the peer's outbound SA when last looked at: a new SA (the first, a rekey, one
    /// after a flush) or none any more is looked at; the other peers are not.
    outbound_spi: Option<u32>,
    /// Packets to the peer the kernel refused as too large (EMSGSIZE) on its outbound SA, when
    /// last looked at: a new one means the kernel knows a smaller path MTU than the last reading.
    too_large_seen: u64,
}

impl PeerPath {
    /// Whether the search's timer is due at `now`.
    fn due(&self, now: Instant) -> bool {
        self.search.as_ref().and_then(Search::poll_timeout).is_some_and(|at| at <= now)
    }
}

/// What a pass over the peers compares with the last one: any change means every peer is
/// looked at (a reload, a new route reading). The topology is held, so that a new one can never
/// reuse an old one's address.
struct Seen {
    topology: Arc<Topology>,
    underlay: u64,
}

impl Seen {
    fn same(&self, other: &Seen) -> bool {
        self.same_topology(other) && self.underlay == other.underlay
    }

    fn same_topology(&self, other: &Seen) -> bool {
        Arc::ptr_eq(&self.topology, &other.topology)
    }
}

impl Driver {
    /// The driver for a running node: probes manual-SA peers and IKE peers that announced
    /// support; follows the underlay MTU for the overlays with `mtu = "auto"`.
    pub fn new(state: &Arc<MeshState>, out: EspOut, keying: Arc<Keying>, proposal_cipher: Option<Cipher>) -> Driver {
        let probes: ProbePolicy = Box::new(move |sa: &OutboundSa| match sa.params.origin {
            SaOrigin::Manual => true,
            SaOrigin::Ike => keying.answers_probes(sa.params.peer),
        });
        Driver {
            state: state.clone(),
            out,
            probes,
            cipher: proposal_cipher.unwrap_or(Cipher::Aes256Gcm16),
            timing: Timing::DEFAULT,
        }
    }

    pub async fn run(self, mut inbox: mpsc::Receiver<InbandMessage>) {
        // By peer id: a reload may add peers (new ids) and remove some.
        let mut peers: HashMap<PeerId, PeerPath> = HashMap::new();
        let mut buf = vec![0u8; PROBE_BUFFER_LEN];
        let mut wake = Instant::now();
        let mut echo_orders = self.state.pmtu.take_echo_receiver();
        let mut echoes = Echoes::new();
        // The newest look at the underlay (and how many there were), the one being read, whether
        // the underlay may have changed since the last reading began, when the next is due by
        // the clock (only while its change reports are not followed), when the newest reading
        // stops holding (a path MTU learnt from ICMP expires).
        let mut underlay = Underlay::default();
        let mut readings = 0u64;
        let mut reading: Option<JoinHandle<Underlay>> = None;
        let mut stale = true;
        let mut next_read = Instant::now();
        let mut expires: Option<Instant> = None;
        let mut seen: Option<Seen> = None;
        loop {
            tokio::select! {
                () = self.state.pmtu.next_underlay_change() => {
                    stale = true;
                    wake = Instant::now();
                }
                message = inbox.recv() => match message {
                    Some(message) => self.handle_message(message, &mut peers, &underlay, &mut echoes, &mut buf),
                    None => return,
                },
                Some(order) = next_order(&mut echo_orders) => self.send_echo(order, &mut echoes, &mut buf),
                read = underlay_read(&mut reading) => {
                    reading = None;
                    match read {
                        Ok(read) => {
                            expires = read.expires_after().map(|after| Instant::now() + after + EXPIRY_MARGIN);
                            underlay = read;
                            readings += 1;
                            self.follow_auto_mtu(&underlay);
                            wake = Instant::now();
                        }
                        Err(error) => tracing::warn!(%error, "the underlay route lookup failed"),
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    // Pings that gave up waiting.
                    echoes.retain(|_, reply| !reply.is_closed());
                    let topology = self.state.topology_full();
                    let tables = self.state.sadb.load();
                    let now_seen = Seen { topology: topology.clone(), underlay: readings };
                    let changed = !seen.as_ref().is_some_and(|before| before.same(&now_seen));
                    // A reload's new peers need their routes.
                    stale |= !seen.as_ref().is_some_and(|before| before.same_topology(&now_seen));
                    seen = Some(now_seen);
                    if changed {
                        peers.retain(|id, _| topology.is_member(*id));
                    }
                    for peer in &topology.peers {
                        let path = peers.entry(peer.id).or_default();
                        let tx = peer.counters.unicast_tx_packets();
                        let traffic = std::mem::replace(&mut path.tx_seen, tx) != tx;
                        if let (true, Some(search)) = (traffic, path.search.as_mut()) {
                            search.on_traffic(now);
                        }
                        let outbound = tables.outbound(peer.id);
                        let spi = outbound.as_ref().map(|sa| sa.params.spi);
                        let new_sa = std::mem::replace(&mut path.outbound_spi, spi) != spi;
                        let too_large = outbound.map_or(0, |sa| sa.counters.drops.get(DropReason::FrameTooLarge));
                        stale |= std::mem::replace(&mut path.too_large_seen, too_large) != too_large && too_large > 0;
                        let route = underlay.route(peer.id);
                        if changed || new_sa || traffic || path.due(now) {
                            let kernel = route.map(|route| route.mtu());
                            stale |= self.update_peer(&topology, peer, path, kernel, now, &mut buf);
                        }
                    }
                    if !self.state.pmtu.underlay_followed() && now >= next_read {
                        next_read = now + ROUTE_PERIOD;
                        stale = true;
                    }
                    if expires.is_some_and(|at| now >= at) {
                        expires = None;
                        stale = true;
                    }
                    // One reading in flight at a time; changes reported meanwhile make one more.
                    if reading.is_none() && stale {
                        stale = false;
                        tracing::debug!(peers = topology.peers.len(), "reading the underlay routes");
                        reading = Some(tokio::task::spawn_blocking(move || Underlay::read(&topology)));
                    }
                    let next_timer = peers.values().filter_map(|path| path.search.as_ref()?.poll_timeout()).min();
                    wake = next_timer.unwrap_or(now + TRAFFIC_CHECK).clamp(now + TICK, now + TRAFFIC_CHECK);
                }
            }
        }
    }

    fn handle_message(
        &self,
        message: InbandMessage,
        peers: &mut HashMap<PeerId, PeerPath>,
        underlay: &Underlay,
        echoes: &mut Echoes,
        buf: &mut [u8],
    ) {
        let topology = self.state.topology_full();
        let peer = topology.peer(message.peer);
        let InbandHeader { message_type, id, size } = message.header;
        match message_type {
            MessageType::Probe => {
                let ack = InbandHeader { message_type: MessageType::ProbeAck, id, size };
                // As small as it gets: the answer must come back whatever the way back carries.
                if let Err(error) = self.send(&topology, peer, ack, 0, buf) {
                    tracing::debug!(peer = %peer.name, %error, "could not acknowledge a path-MTU probe");
                }
            }
            MessageType::ProbeAck => {
                // The next probe (or the settled size) goes out now, not at the next timer.
                if let Some(path) = peers.get_mut(&message.peer) {
                    if let Some(search) = path.search.as_mut() {
                        let now = Instant::now();
                        search.on_ack(id, now);
                        let kernel = underlay.route(message.peer).map(|route| route.mtu());
                        if self.update_peer(&topology, peer, path, kernel, now, buf) {
                            // The kernel's figure is read again at the next change report or
                            // pass over the peers (at most a second away).
                            self.state.pmtu.underlay_changed();
                        }
                    }
                }
            }
            MessageType::EchoRequest => {
                let reply = InbandHeader { message_type: MessageType::EchoReply, id, size };
                let request_len = self.encapsulation(&topology, peer, None).sealed_len(message.plaintext_len);
                if let Err(error) = self.send(&topology, peer, reply, usize::from(size).min(request_len), buf) {
                    tracing::debug!(peer = %peer.name, %error, "could not answer an echo request");
                }
            }
            MessageType::EchoReply => {
                if let Some(reply) = echoes.remove(&(message.peer, id)) {
                    let _ = reply.send(Instant::now());
                }
            }
            MessageType::Unknown(kind) => {
                tracing::debug!(peer = %peer.name, kind, "ignoring an in-band message of a type this meshd does not know")
            }
        }
    }

    /// Sends `order`'s echo request and remembers whom to tell when the reply comes.
    fn send_echo(&self, order: EchoOrder, echoes: &mut Echoes, buf: &mut [u8]) {
        let topology = self.state.topology_full();
        if !topology.is_member(order.peer) {
            return;
        }
        let peer = topology.peer(order.peer);
        let request = InbandHeader { message_type: MessageType::EchoRequest, id: order.id, size: order.size };
        match self.send(&topology, peer, request, usize::from(order.size), buf) {
            Ok(()) => {
                echoes.insert((order.peer, order.id), order.reply);
            }
            // Dropping the order tells the pinger it was not sent.
            Err(error) => tracing::debug!(peer = %peer.name, %error, "echo request not sent"),
        }
    }

    /// `kernel` is the kernel's MTU towards the peer, from the latest route lookup. True when
    /// the kernel refused a probe as too large for its path: its figure changed since.
    fn update_peer(
        &self,
        topology: &Topology,
        peer: &Peer,
        path: &mut PeerPath,
        kernel: Option<usize>,
        now: Instant,
        buf: &mut [u8],
    ) -> bool {
        let mut refused_as_too_large = false;
        let tables = self.state.sadb.load();
        let outbound = tables.outbound(peer.id).filter(|sa| (self.probes)(sa));
        match (outbound, kernel) {
            (Some(_), Some(ceiling)) => {
                let ceiling = u16::try_from(ceiling).unwrap_or(u16::MAX);
                let search = path.search.get_or_insert_with(|| Search::new(self.timing, ceiling, now));
                search.set_ceiling(ceiling, now);
                search.handle_timeout(now);
                while let Some(probe) = search.poll_probe() {
                    let header = InbandHeader { message_type: MessageType::Probe, id: probe.id, size: probe.size };
                    if let Err(error) = self.send(topology, peer, header, usize::from(probe.size), buf) {
                        // EMSGSIZE: the kernel already knows the path is smaller; its figure is
                        // read again and becomes the ceiling.
                        refused_as_too_large |= error.raw_os_error() == Some(libc::EMSGSIZE);
                        tracing::debug!(peer = %peer.name, size = probe.size, %error, "path-MTU probe not sent");
                    }
                }
            }
            _ => path.search = None,
        }
        let report = match (&path.search, kernel) {
            (Some(search), _) => PathReport {
                path_mtu: Some(u32::from(search.current())),
                overlay_mtu: None,
                source: match search.state() {
                    _ if search.confirmed() => "probed",
                    // The peer answers no probe: what the kernel says is all there is.
                    State::PeerSilent { .. } => "kernel",
                    _ => "probing",
                },
                search: Some(search.state().name()),
            },
            (None, Some(kernel)) => {
                PathReport { path_mtu: u32::try_from(kernel).ok(), overlay_mtu: None, source: "kernel", search: None }
            }
            (None, None) => PathReport::default(),
        };
        let encapsulation = self.encapsulation(topology, peer, tables.outbound(peer.id).as_deref().map(|sa| &**sa));
        let overlay_mtu = report.path_mtu.and_then(|mtu| encapsulation.overlay_mtu(mtu as usize));
        peer.path_mtu
            .publish(PathReport { overlay_mtu: overlay_mtu.and_then(|mtu| u32::try_from(mtu).ok()), ..report });
        refused_as_too_large
    }

    /// The encapsulation towards `peer`: what its SA negotiated (IKE may fall back to tunnel
    /// mode), else what the mesh file says.
    fn encapsulation(&self, topology: &Topology, peer: &Peer, sa: Option<&OutboundSa>) -> Encapsulation {
        Encapsulation {
            ip_version: IpVersion::of(peer.address),
            encap: topology.encap,
            mode: sa.map_or(peer.mode, |sa| sa.params.mode),
            cipher: sa.map_or(self.cipher, |sa| sa.params.cipher),
        }
    }

    /// Seals `header`, padded so that the packet is at most `size` bytes on the underlay (at least
    /// the header), with the peer's outbound SA and sends it.
    fn send(
        &self,
        topology: &Topology,
        peer: &Peer,
        header: InbandHeader,
        size: usize,
        buf: &mut [u8],
    ) -> io::Result<()> {
        let tables = self.state.sadb.load();
        let sa = tables.outbound(peer.id).ok_or_else(|| io::Error::other("no outbound SA"))?;
        let len = seal_inband(&sa, self.encapsulation(topology, peer, Some(&sa)), header, size, buf)?;
        let sent = self.out.send(&buf[..len], sa.params.remote);
        sent.inspect_err(|error| peer.counters.send_errors.count(SendErrorKind::of(error)))?;
        Ok(())
    }

    /// Retunes overlay interfaces with `mtu = "auto"` when the underlay interface's MTU changed
    /// (compared with what the interface has now, so overlays a reload added are followed too).
    fn follow_auto_mtu(&self, underlay: &Underlay) {
        let topology = self.state.topology_full();
        for overlay in topology.overlays.iter().filter(|overlay| overlay.mtu == OverlayMtu::Auto) {
            let (mtu, reason) = match auto::choose(overlay, &topology, self.cipher, underlay) {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(%error, "keeping the overlay MTU");
                    continue;
                }
            };
            let current = netif::interface_mtu(&overlay.interface).ok();
            if current == Some(usize::from(mtu)) {
                continue;
            }
            match sys::set_interface_mtu(&overlay.interface, mtu) {
                Ok(()) => {
                    tracing::info!(overlay = %overlay.name, from = ?current, to = mtu, %reason, "underlay MTU changed; overlay MTU retuned");
                    self.state.pmtu.set_overlay_mtu(&overlay.name, mtu, reason);
                }
                Err(error) => {
                    tracing::warn!(interface = %overlay.interface, mtu, %error, "could not retune the overlay MTU")
                }
            }
        }
    }
}

/// Echo requests sent, by (peer, id): where to report the reply.
type Echoes = HashMap<(PeerId, u32), oneshot::Sender<Instant>>;

/// The underlay being read, when it is; never when none is.
async fn underlay_read(reading: &mut Option<JoinHandle<Underlay>>) -> Result<Underlay, JoinError> {
    match reading {
        Some(reading) => reading.await,
        None => std::future::pending().await,
    }
}

/// The next echo order, or never when another task took the queue.
async fn next_order(orders: &mut Option<mpsc::Receiver<EchoOrder>>) -> Option<EchoOrder> {
    match orders {
        Some(orders) => orders.recv().await,
        None => std::future::pending().await,
    }
}

/// Seals an in-band message with `sa` into `buf`, padded so that the packet is at most `size`
/// bytes on the underlay (never less than the message header); returns the ESP packet's length.
pub fn seal_inband(
    sa: &OutboundSa,
    encapsulation: Encapsulation,
    header: InbandHeader,
    size: usize,
    buf: &mut [u8],
) -> io::Result<usize> {
    let room = buf.len().saturating_sub(PLAINTEXT_OFFSET + TRAILER_ROOM);
    let payload_len = encapsulation.largest_plaintext(size).unwrap_or(0).max(inband::HEADER_LEN).min(room);
    let payload = &mut buf[PLAINTEXT_OFFSET..PLAINTEXT_OFFSET + payload_len];
    payload.fill(0);
    header.emit(payload);
    let sequence =
        sa.next_sequence().ok_or_else(|| io::Error::other("the outbound SA has no sequence numbers left"))?;
    sa.sealer
        .seal(sa.params.spi, sequence, sa.params.esn, inband::NEXT_HEADER, buf, payload_len)
        .map_err(io::Error::other)
}
