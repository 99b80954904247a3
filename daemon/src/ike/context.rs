//! What every IKE SA's steps share: the settings, the peers' policy state, the RNG, and the
//! queues of output (datagrams, events, inbound SAs to retire) and refusal counters. The
//! endpoint owns it beside its table of IKE SAs, so a step gets `&mut IkeSa` and `&mut Context`
//! at once.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mesh_config::Cipher;

use super::crypto::{nat_detection_hash, SpiPair};
use super::message::ids::notify;
use super::message::{Notify, Payload};
use super::parts::notifies;
use super::policy::{rekey_point, PeerState};
use super::rng::{self, Rng, RngError};
use super::status::IkeCounters;
use super::types::{Event, IkeSettings, PeerIndex, Refusal, Transmit};
use super::window::RttEstimate;

pub(super) struct Context {
    pub(super) settings: IkeSettings,
    pub(super) ciphers: Vec<Cipher>,
    pub(super) peers: Vec<PeerState>,
    pub(super) rng: Box<dyn Rng>,
    pub(super) transmits: VecDeque<Transmit>,
    pub(super) events: VecDeque<Event>,
    /// Inbound SAs to remove later: (peer, SPI, when).
    pub(super) retiring: Vec<(PeerIndex, u32, Instant)>,
    pub(super) counters: IkeCounters,
    /// Our SPIs of every IKE SA (also those still connecting), so that new ones are unique.
    pub(super) spis_in_use: HashSet<u64>,
    /// The round trips of our requests, for the retransmission timeouts.
    pub(super) rtt: RttEstimate,
    /// A point of the grid liveness checks are due on (`policy::liveness_due`).
    pub(super) liveness_grid: Instant,
}

impl Context {
    pub(super) fn new(settings: IkeSettings, rng: Box<dyn Rng>, now: Instant) -> Self {
        let peers = settings.peers.iter().map(|peer| PeerState::new(&settings, peer, now)).collect();
        Context {
            ciphers: settings.ciphers(),
            settings,
            peers,
            rng,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            retiring: Vec::new(),
            counters: IkeCounters::default(),
            spis_in_use: HashSet::new(),
            rtt: RttEstimate::default(),
            liveness_grid: now,
        }
    }

    pub(super) fn send(&mut self, destination: SocketAddr, source_port: u16, bytes: Vec<u8>) {
        self.transmits.push_back(Transmit { destination, source_port, bytes });
    }

    /// Counts a received message that is dropped without an answer and tells the driver.
    pub(super) fn refuse(&mut self, refusal: Refusal, from: SocketAddr) {
        match refusal {
            Refusal::Malformed | Refusal::Unexpected => self.counters.malformed += 1,
            Refusal::Unauthentic => self.counters.unauthentic += 1,
            Refusal::UnknownSpi => self.counters.unknown_spi += 1,
            Refusal::NoProposal => self.counters.no_proposal += 1,
            Refusal::HalfOpenFull => self.counters.half_open_full += 1,
        }
        tracing::debug!(%from, "IKE message dropped: it {}", refusal.describe());
        self.events.push_back(Event::Refused { peer: self.peer_by_address(from.ip()), from, refusal });
    }

    pub(super) fn is_member(&self, peer: PeerIndex) -> bool {
        self.peers.get(peer).is_some_and(|p| !p.removed)
    }

    pub(super) fn peer_by_address(&self, address: IpAddr) -> Option<PeerIndex> {
        (0..self.settings.peers.len())
            .find(|index| self.settings.peers[*index].address == address && self.is_member(*index))
    }

    pub(super) fn peer_address(&self, peer: PeerIndex) -> IpAddr {
        self.settings.peers[peer].address
    }

    /// A fresh IKE SPI of ours.
    pub(super) fn fresh_ike_spi(&mut self) -> Result<u64, RngError> {
        let in_use = &self.spis_in_use;
        rng::ike_spi(self.rng.as_mut(), |spi| in_use.contains(&spi))
    }

    /// When to rekey something of `lifetime` that we did (or did not) initiate.
    pub(super) fn rekey_after(&mut self, lifetime: Duration, we_initiated: bool) -> Result<Duration, RngError> {
        let (fraction, jitter) = rekey_point(we_initiated);
        rng::jittered(self.rng.as_mut(), lifetime, fraction, jitter)
    }

    /// NAT_DETECTION_SOURCE_IP and _DESTINATION_IP for a message from `source` to `destination`.
    pub(super) fn nat_notifies(
        &mut self,
        spis: &SpiPair,
        source: SocketAddr,
        destination: SocketAddr,
    ) -> Result<[Payload; 2], RngError> {
        // Forcing encapsulation: a source hash that cannot match makes both ends float (RFC 7296
        // §2.23 lets an implementation pretend to be behind NAT).
        let source_hash = if self.settings.force_udp_encap {
            rng::bytes::<20>(self.rng.as_mut())?.to_vec()
        } else {
            nat_detection_hash(&spis.initiator, &spis.responder, source).to_vec()
        };
        Ok([
            Payload::Notify(Notify::new(notify::NAT_DETECTION_SOURCE_IP, source_hash)),
            Payload::Notify(Notify::new(
                notify::NAT_DETECTION_DESTINATION_IP,
                nat_detection_hash(&spis.initiator, &spis.responder, destination).to_vec(),
            )),
        ])
    }
}

/// Whether this node is behind NAT: the peer's NAT_DETECTION_DESTINATION_IP hash of where it
/// sent the message differs from where it arrived (RFC 7296 §2.23). The source hash is not
/// used: a peer that forces encapsulation makes it differ on purpose.
pub(super) fn detect_nat(payloads: &[Payload], spis: &SpiPair, to: SocketAddr) -> bool {
    let ours = nat_detection_hash(&spis.initiator, &spis.responder, to);
    notifies(payloads).any(|n| n.notify_type == notify::NAT_DETECTION_DESTINATION_IP && n.data != ours)
}

/// Whether a NAT is in front of the peer: none of its NAT_DETECTION_SOURCE_IP hashes names the
/// address the message came from (RFC 7296 §2.23). A peer that forces encapsulation sends a hash
/// that cannot match, and counts as behind NAT, as it asks to.
pub(super) fn detect_peer_nat(payloads: &[Payload], spis: &SpiPair, from: SocketAddr) -> bool {
    let theirs = nat_detection_hash(&spis.initiator, &spis.responder, from);
    !notifies(payloads).any(|n| n.notify_type == notify::NAT_DETECTION_SOURCE_IP && n.data == theirs)
}
