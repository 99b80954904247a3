//! The IKEv2 endpoint of one node: every IKE SA with every peer, as a sans-IO state machine.
//!
//! The driver calls [`Endpoint::handle`] with each received datagram and [`Endpoint::handle_timeout`]
//! when [`Endpoint::poll_timeout`] says, always passing the current time; it sends what
//! [`Endpoint::poll_transmit`] returns and applies what [`Endpoint::poll_event`] returns to the
//! SADB. Nothing here reads a clock or touches a socket.
//!
//! Who initiates: at start the node with the lower address initiates at once and the other
//! after a delay, so that a full mesh started at once rarely initiates twice; when both did, the
//! IKE SA initiated by the lower address wins and its loser is deleted by its own initiator, so
//! every pair ends with one IKE SA and one Child SA pair. Rekeying is done by the original
//! initiator of each IKE SA; the responder rekeys only if that did not happen well before
//! expiry. Collisions that still happen are resolved as RFC 7296 §2.8.1 says.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mesh_config::{Cipher, Mode};

use super::crypto::sk_body_len;
use super::crypto::{nat_detection_hash, ChildSaKeys as DerivedChildKeys, IkeSaKeys, Role, SpiPair, X25519KeyPair};
use super::identity::{self, AuthInputs, PeerAuth, PeerClaim};
use super::message::ids::{diffie_hellman, exchange, notify, protocol};
use super::message::{encode_encrypted_prefix, encode_message, encode_payloads};
use super::message::{
    parse_payloads, Authentication, Delete, Header, Identification, KeyExchange, Message, Nonce, Notify, Payload,
    SecurityAssociation,
};
use super::proposal::{self, ChosenEsp};
use super::types::{ChildSaKeys, Event, Failure, IkeSettings, PeerIndex, PeerSettings, Refusal, Transmit};

pub const IKE_PORT: u16 = 500;
pub const NAT_T_PORT: u16 = 4500;
/// Nonce length we send (RFC 7296 §2.10: at least half the PRF key size, 32 here).
const NONCE_LEN: usize = 32;
/// First retransmission; doubled each time.
const RETRANSMIT_BASE: Duration = Duration::from_millis(500);
/// Retransmissions before the peer counts as gone: after 0.5+1+2+4+8 s, so that a dead peer is
/// noticed within three 10 s liveness intervals.
const MAX_RETRANSMITS: u32 = 4;
/// How long the initiator of a losing duplicate IKE SA has to delete it before we do (peers
/// that do not resolve duplicates, e.g. strongSwan, never do).
const DUPLICATE_GRACE: Duration = Duration::from_secs(5);
/// How long the node with the higher address waits before initiating itself.
const HIGHER_ADDRESS_DELAY: Duration = Duration::from_secs(3);
/// Between attempts to reach a peer we have no IKE SA with.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(5);
/// After an authentication or proposal failure, try again this much later.
const FAILURE_BACKOFF: Duration = Duration::from_secs(30);
/// A half-open responder SA is forgotten after this long.
const HALF_OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Inbound SAs are kept this long after their replacement, for packets in flight.
const INBOUND_GRACE: Duration = Duration::from_secs(3);
/// The responder of a Child SA rekey switches to the new outbound SA at the latest this long
/// after answering (normally when the old one's DELETE arrives).
const OUTBOUND_SWITCH_DELAY: Duration = Duration::from_secs(2);
/// Rekey at this fraction of the lifetime (minus up to `REKEY_JITTER` of it).
const REKEY_FRACTION: f64 = 0.8;
const REKEY_JITTER: f64 = 0.1;
/// The responder rekeys itself only this late.
const RESPONDER_REKEY_FRACTION: f64 = 0.95;

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The system RNG does not fail on Linux; a zero value is still usable for tests.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes
}

fn random_nonzero_u32() -> u32 {
    loop {
        let value = u32::from_be_bytes(random_bytes());
        // SPIs 1-255 are reserved (RFC 4303 §2.1).
        if value > 255 {
            return value;
        }
    }
}

fn random_nonzero_u64() -> u64 {
    loop {
        let value = u64::from_be_bytes(random_bytes());
        if value != 0 {
            return value;
        }
    }
}

/// A fraction of `lifetime` with random jitter below it.
fn jittered(lifetime: Duration, fraction: f64) -> Duration {
    let jitter = f64::from(u16::from_be_bytes(random_bytes())) / f64::from(u16::MAX) * REKEY_JITTER;
    lifetime.mul_f64((fraction - jitter).max(0.1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Initiator: IKE_SA_INIT sent.
    ExpectInitResponse,
    /// Responder: IKE_SA_INIT answered.
    ExpectAuthRequest,
    /// Initiator: IKE_AUTH sent.
    ExpectAuthResponse,
    Established,
    /// DELETE sent or received; gone when it is answered.
    Deleting,
}

/// One Child SA (a pair of ESP SAs).
struct Child {
    inbound_spi: u32,
    outbound_spi: u32,
    mode: Mode,
    rekey_at: Instant,
    expire_at: Instant,
    /// Outbound key held back until the peer stops using the SA this one replaces.
    pending_outbound: Option<(ChildSaKeys, Instant)>,
    /// A rekey of this Child SA is under way or done.
    rekeyed: bool,
}

/// What an outstanding request was for.
enum Purpose {
    Init { dh: X25519KeyPair },
    Auth { inbound_spi: u32 },
    Liveness,
    DeleteIke,
    DeleteChild,
    RekeyChild { old_inbound_spi: u32, new_inbound_spi: u32, nonce: Vec<u8> },
    RekeyIke { new_spi: u64, nonce: Vec<u8>, dh: X25519KeyPair },
}

struct Outstanding {
    message_id: u32,
    bytes: Vec<u8>,
    retransmits: u32,
    next_send: Instant,
    purpose: Purpose,
}

/// A request to send as soon as the window (size 1) is free.
enum Queued {
    DeleteIke,
    DeleteChild(Vec<u32>),
    RekeyChild(u32),
    RekeyIke,
    Liveness,
}

/// Nonces and messages of IKE_SA_INIT, needed again for AUTH and the first Child SA.
struct Handshake {
    ni: Vec<u8>,
    nr: Vec<u8>,
    /// The initiator's IKE_SA_INIT request and the responder's response, as sent.
    init_request: Vec<u8>,
    init_response: Vec<u8>,
    cookie: Option<Vec<u8>>,
}

struct IkeSa {
    peer: Option<PeerIndex>,
    /// Whether we are the original initiator (the Initiator flag in our messages).
    initiator: bool,
    our_spi: u64,
    their_spi: u64,
    state: State,
    remote: SocketAddr,
    local_port: u16,
    keys: Option<IkeSaKeys>,
    cipher: Option<Cipher>,
    handshake: Handshake,
    next_request_id: u32,
    expected_request_id: u32,
    outstanding: Option<Outstanding>,
    queued: VecDeque<Queued>,
    last_response: Option<(u32, Vec<u8>)>,
    children: Vec<Child>,
    created: Instant,
    established: Option<Instant>,
    last_heard: Instant,
    rekey_at: Option<Instant>,
    nat_detected: bool,
    /// Made by rekeying another IKE SA (then it never counts as a duplicate).
    from_rekey: bool,
    /// The address of the node that initiated this IKE SA (decides duplicate resolution).
    initiator_address: IpAddr,
    /// Nonces of the peer's Child SA rekeys that crossed ours: (Ni, Nr, our request's Ni).
    collision_nonces: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    /// A duplicate the peer should delete; we do it ourselves if it has not by then.
    delete_at: Option<Instant>,
    /// How the peer authenticated (kept across IKE rekeys).
    peer_auth: Option<PeerAuth>,
}

impl IkeSa {
    fn spi_pair(&self) -> SpiPair {
        let (initiator, responder) =
            if self.initiator { (self.our_spi, self.their_spi) } else { (self.their_spi, self.our_spi) };
        SpiPair { initiator: initiator.to_be_bytes(), responder: responder.to_be_bytes() }
    }

    fn header(&self, exchange_type: u8, response: bool, message_id: u32) -> Header {
        let spis = self.spi_pair();
        Header {
            initiator_spi: u64::from_be_bytes(spis.initiator),
            responder_spi: u64::from_be_bytes(spis.responder),
            exchange_type,
            initiator: self.initiator,
            response,
            message_id,
        }
    }

    /// An encrypted message with `payloads` inside the SK payload.
    fn encrypt(&mut self, exchange_type: u8, response: bool, message_id: u32, payloads: &[Payload]) -> Option<Vec<u8>> {
        let header = self.header(exchange_type, response, message_id);
        let keys = self.keys.as_mut()?;
        let (first, inner) = encode_payloads(payloads);
        let mut message = encode_encrypted_prefix(&header, first, sk_body_len(inner.len()));
        keys.sealer().seal_append(&mut message, &inner).ok()?;
        Some(message)
    }

    /// What the AUTH payloads of this IKE SA's IKE_AUTH cover.
    fn auth_inputs(&self) -> Option<AuthInputs<'_>> {
        let h = &self.handshake;
        let (our_message, peer_message, our_nonce, peer_nonce, role) = match self.initiator {
            true => (&h.init_request, &h.init_response, &h.ni, &h.nr, Role::Initiator),
            false => (&h.init_response, &h.init_request, &h.nr, &h.ni, Role::Responder),
        };
        Some(AuthInputs { keys: self.keys.as_ref()?, role, our_message, peer_message, our_nonce, peer_nonce })
    }

    fn child_by_outbound(&self, spi: u32) -> Option<usize> {
        self.children.iter().position(|c| c.outbound_spi == spi)
    }

    fn child_by_inbound(&self, spi: u32) -> Option<usize> {
        self.children.iter().position(|c| c.inbound_spi == spi)
    }
}

/// State of one IKE SA, for `ikectl sa list`.
#[derive(Debug, Clone, PartialEq)]
pub struct IkeSaStatus {
    pub peer: Option<PeerIndex>,
    pub initiator_spi: u64,
    pub responder_spi: u64,
    pub we_initiated: bool,
    pub state: &'static str,
    pub cipher: Option<Cipher>,
    pub remote: SocketAddr,
    /// This node is behind NAT (its address or port is translated on the way to the peer).
    pub nat_detected: bool,
    /// IKE and ESP travel in UDP 4500.
    pub udp_encap: bool,
    pub established_secs: Option<u64>,
    pub rekey_in_secs: Option<u64>,
    /// (inbound SPI, outbound SPI) of each Child SA.
    pub children: Vec<(u32, u32)>,
    /// How the peer authenticated, once it has.
    pub peer_auth: Option<PeerAuth>,
}

/// Counters of messages that were refused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IkeCounters {
    pub malformed: u64,
    pub unauthentic: u64,
    pub unknown_spi: u64,
    pub cookies_sent: u64,
}

struct PeerState {
    /// When to try to establish an IKE SA if there is none.
    next_attempt: Instant,
    /// The peer's last IKE_AUTH carried MESHD_PATH_MTU_PROBES: it answers path-MTU probes.
    answers_probes: bool,
    /// Removed by a reload: never negotiated with again (its index stays, indexes are stable).
    removed: bool,
}

impl PeerState {
    fn new(settings: &IkeSettings, peer: &PeerSettings, now: Instant) -> Self {
        // The lower address initiates first, so that a full mesh starting at once mostly
        // avoids simultaneous initiations.
        let next_attempt = if settings.local < peer.address { now } else { now + HIGHER_ADDRESS_DELAY };
        PeerState { next_attempt, removed: false, answers_probes: false }
    }
}

/// The cap on half-open responder SAs; beyond it, IKE_SA_INIT must carry a COOKIE.
pub const HALF_OPEN_LIMIT: usize = 64;

pub struct Endpoint {
    settings: IkeSettings,
    ciphers: Vec<Cipher>,
    peers: Vec<PeerState>,
    sas: HashMap<u64, IkeSa>,
    /// Responder SAs by (peer address, initiator SPI), to spot retransmitted IKE_SA_INIT.
    half_open: HashMap<(SocketAddr, u64), u64>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Inbound SAs to remove later: (peer, SPI, when).
    retiring: Vec<(PeerIndex, u32, Instant)>,
    cookies: super::crypto::CookieJar,
    pub counters: IkeCounters,
}

impl Endpoint {
    pub fn new(settings: IkeSettings, now: Instant) -> Result<Self, super::crypto::CryptoError> {
        let peers = settings.peers.iter().map(|peer| PeerState::new(&settings, peer, now)).collect();
        Ok(Endpoint {
            ciphers: settings.ciphers(),
            settings,
            peers,
            sas: HashMap::new(),
            half_open: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            retiring: Vec::new(),
            cookies: super::crypto::CookieJar::new()?,
            counters: IkeCounters::default(),
        })
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest time `handle_timeout` has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        let mut consider = |at: Instant| earliest = Some(earliest.map_or(at, |e| e.min(at)));
        for (index, peer) in self.peers.iter().enumerate().filter(|(_, peer)| !peer.removed) {
            if !self.sas.values().any(|sa| sa.peer == Some(index) || sa.initiator_peer() == Some(index)) {
                consider(peer.next_attempt);
            }
        }
        for sa in self.sas.values() {
            if let Some(outstanding) = &sa.outstanding {
                consider(outstanding.next_send);
            }
            match sa.state {
                State::ExpectAuthRequest => consider(sa.created + HALF_OPEN_TIMEOUT),
                State::Established => {
                    consider(sa.last_heard + self.settings.dpd);
                    if let Some(at) = sa.delete_at {
                        consider(at);
                    }
                    if let Some(at) = sa.rekey_at {
                        consider(at);
                    }
                    for child in &sa.children {
                        consider(child.rekey_at);
                        consider(child.expire_at);
                        if let Some((_, at)) = &child.pending_outbound {
                            consider(*at);
                        }
                    }
                }
                _ => {}
            }
        }
        for (_, _, at) in &self.retiring {
            consider(*at);
        }
        earliest
    }

    /// The IKE SAs, for `ikectl`.
    pub fn status(&self, now: Instant) -> Vec<IkeSaStatus> {
        let mut list: Vec<IkeSaStatus> = self
            .sas
            .values()
            .map(|sa| {
                let spis = sa.spi_pair();
                IkeSaStatus {
                    peer: sa.peer.or(sa.initiator_peer()),
                    initiator_spi: u64::from_be_bytes(spis.initiator),
                    responder_spi: u64::from_be_bytes(spis.responder),
                    we_initiated: sa.initiator,
                    state: match sa.state {
                        State::ExpectInitResponse => "connecting (IKE_SA_INIT sent)",
                        State::ExpectAuthRequest => "half-open (waiting for IKE_AUTH)",
                        State::ExpectAuthResponse => "authenticating (IKE_AUTH sent)",
                        State::Established => "established",
                        State::Deleting => "deleting",
                    },
                    cipher: sa.cipher,
                    remote: sa.remote,
                    nat_detected: sa.nat_detected,
                    udp_encap: sa.local_port == NAT_T_PORT,
                    established_secs: sa.established.map(|at| now.saturating_duration_since(at).as_secs()),
                    rekey_in_secs: sa.rekey_at.map(|at| at.saturating_duration_since(now).as_secs()),
                    children: sa.children.iter().map(|c| (c.inbound_spi, c.outbound_spi)).collect(),
                    peer_auth: sa.peer_auth,
                }
            })
            .collect();
        list.sort_by_key(|s| (s.peer, s.initiator_spi));
        list
    }

    /// Establishes an IKE SA with `peer` now, unless one exists or is being made.
    pub fn connect(&mut self, peer: PeerIndex, now: Instant) {
        if !self.is_member(peer) || self.has_sa_with(peer) {
            return;
        }
        self.start_initiator(peer, now);
    }

    /// ESP arrived for an SPI we do not know from `peer`: our state and the peer's differ.
    /// Without an IKE SA we make one; with one, we check that the peer is alive.
    pub fn unknown_spi_from(&mut self, peer: PeerIndex, now: Instant) {
        if !self.has_sa_with(peer) {
            if self.peers.get(peer).is_some_and(|p| !p.removed && now >= p.next_attempt) {
                self.start_initiator(peer, now);
            }
            return;
        }
        let spis: Vec<u64> = self.established_with(peer);
        for spi in spis {
            self.queue(spi, Queued::Liveness, now);
        }
    }

    /// Rekeys the Child SA that sends on `outbound_spi` now (its sequence numbers run out).
    pub fn rekey_child(&mut self, peer: PeerIndex, outbound_spi: u32, now: Instant) {
        let found = self.sas.iter().find_map(|(spi, sa)| {
            let child = sa.children.iter().find(|c| c.outbound_spi == outbound_spi && !c.rekeyed)?;
            (sa.peer == Some(peer) && sa.state == State::Established).then_some((*spi, child.inbound_spi))
        });
        if let Some((our_spi, inbound_spi)) = found {
            self.queue(our_spi, Queued::RekeyChild(inbound_spi), now);
        }
    }

    /// `ikectl sa flush`: deletes every SA with `peer` (telling the peer) and negotiates anew.
    pub fn flush(&mut self, peer: PeerIndex, now: Instant) {
        self.delete_sas_with(peer, now);
        self.start_initiator(peer, now);
    }

    /// A reload adds a peer; returns its index. Negotiation starts as for the peers of `new`.
    pub fn add_peer(&mut self, peer: PeerSettings, now: Instant) -> PeerIndex {
        self.peers.push(PeerState::new(&self.settings, &peer, now));
        self.settings.peers.push(peer);
        self.peers.len() - 1
    }

    /// A reload removes a peer: its SAs are deleted (telling it) and it is never negotiated with
    /// again; IKE messages from its address are then refused like those of any stranger.
    pub fn remove_peer(&mut self, peer: PeerIndex, now: Instant) {
        self.delete_sas_with(peer, now);
        if let Some(state) = self.peers.get_mut(peer) {
            state.removed = true;
        }
    }

    /// A reload changes the credentials or SA settings (of `settings.peers` only the public keys
    /// are taken: peers come and go with `add_peer` and `remove_peer`). SAs made from now on use them; the reload
    /// re-keys the peers whose SAs must change.
    pub fn reconfigure(&mut self, mut settings: IkeSettings) {
        let mut peers = std::mem::take(&mut self.settings.peers);
        identity::update_peer_keys(&mut peers, &settings.peers);
        settings.peers = peers;
        self.ciphers = settings.ciphers();
        self.settings = settings;
    }

    fn is_member(&self, peer: PeerIndex) -> bool {
        self.peers.get(peer).is_some_and(|p| !p.removed)
    }

    /// Deletes every SA with `peer`, telling the peer where an IKE SA is up.
    fn delete_sas_with(&mut self, peer: PeerIndex, now: Instant) {
        let spis: Vec<u64> = self.sas.iter().filter(|(_, sa)| sa.belongs_to(peer)).map(|(spi, _)| *spi).collect();
        for spi in spis {
            let established = self.sas.get(&spi).is_some_and(|sa| sa.state == State::Established);
            self.remove_children(spi, now, true);
            if established {
                // The DELETE goes out on its own; the IKE SA is forgotten when it is answered
                // (or the peer is gone).
                if let Some(sa) = self.sas.get_mut(&spi) {
                    sa.queued.clear();
                    sa.outstanding = None;
                }
                self.queue(spi, Queued::DeleteIke, now);
                if let Some(sa) = self.sas.get_mut(&spi) {
                    sa.state = State::Deleting;
                }
            } else {
                self.forget(spi);
            }
        }
    }

    fn has_sa_with(&self, peer: PeerIndex) -> bool {
        self.sas.values().any(|sa| sa.belongs_to(peer) && sa.state != State::Deleting)
    }

    fn established_with(&self, peer: PeerIndex) -> Vec<u64> {
        self.sas
            .iter()
            .filter(|(_, sa)| sa.peer == Some(peer) && sa.state == State::Established)
            .map(|(spi, _)| *spi)
            .collect()
    }

    fn new_our_spi(&self) -> u64 {
        loop {
            let spi = random_nonzero_u64();
            if !self.sas.contains_key(&spi) {
                return spi;
            }
        }
    }

    /// Counts a received message that is dropped without an answer and tells the driver.
    fn drop_message(&mut self, refusal: Refusal, from: SocketAddr) {
        match refusal {
            Refusal::Malformed | Refusal::Unexpected => self.counters.malformed += 1,
            Refusal::Unauthentic => self.counters.unauthentic += 1,
            Refusal::UnknownSpi => self.counters.unknown_spi += 1,
        }
        self.events.push_back(Event::Refused { peer: self.peer_by_address(from.ip()), from, refusal });
    }

    fn peer_by_address(&self, address: IpAddr) -> Option<PeerIndex> {
        (0..self.settings.peers.len())
            .find(|index| self.settings.peers[*index].address == address && self.is_member(*index))
    }

    fn nat_notifies(&self, spis: &SpiPair, source: SocketAddr, destination: SocketAddr) -> [Payload; 2] {
        // Forcing encapsulation: a source hash that cannot match makes both ends float (RFC 7296
        // §2.23 lets an implementation pretend to be behind NAT).
        let source_hash = if self.settings.force_udp_encap {
            random_bytes::<20>().to_vec()
        } else {
            nat_detection_hash(&spis.initiator, &spis.responder, source).to_vec()
        };
        [
            Payload::Notify(Notify::new(notify::NAT_DETECTION_SOURCE_IP, source_hash)),
            Payload::Notify(Notify::new(
                notify::NAT_DETECTION_DESTINATION_IP,
                nat_detection_hash(&spis.initiator, &spis.responder, destination).to_vec(),
            )),
        ]
    }

    /// Whether this node is behind NAT: the peer's NAT_DETECTION_DESTINATION_IP hash of where
    /// it sent the message differs from where it arrived (RFC 7296 §2.23). The source hash is
    /// not used: a peer that forces encapsulation makes it differ on purpose.
    fn detect_nat(&self, payloads: &[Payload], spis: &SpiPair, to: SocketAddr) -> bool {
        let ours = nat_detection_hash(&spis.initiator, &spis.responder, to);
        notifies(payloads).any(|n| n.notify_type == notify::NAT_DETECTION_DESTINATION_IP && n.data != ours)
    }

    /// The IKE_SA_INIT request; sent again with the same SPI, nonce and KE when the responder
    /// demands a cookie (RFC 7296 §2.6).
    fn init_request(
        &self,
        our_spi: u64,
        ni: &[u8],
        public: &[u8],
        cookie: Option<&[u8]>,
        remote: SocketAddr,
    ) -> Vec<u8> {
        let spis = SpiPair { initiator: our_spi.to_be_bytes(), responder: [0; 8] };
        let local = SocketAddr::new(self.settings.local, IKE_PORT);
        let mut payloads = Vec::new();
        if let Some(cookie) = cookie {
            payloads.push(Payload::Notify(Notify::new(notify::COOKIE, cookie.to_vec())));
        }
        payloads.push(Payload::SecurityAssociation(proposal::ike_offer(&self.settings.proposals, &[])));
        payloads.push(Payload::KeyExchange(KeyExchange { group: diffie_hellman::CURVE25519, data: public.to_vec() }));
        payloads.push(Payload::Nonce(Nonce { data: ni.to_vec() }));
        payloads.extend(self.nat_notifies(&spis, local, remote));
        payloads.extend(identity::init_notify(&self.settings));
        let header = Header {
            initiator_spi: our_spi,
            responder_spi: 0,
            exchange_type: exchange::IKE_SA_INIT,
            initiator: true,
            response: false,
            message_id: 0,
        };
        encode_message(&header, &payloads)
    }

    fn start_initiator(&mut self, peer: PeerIndex, now: Instant) {
        let Some(settings) = self.settings.peers.get(peer) else { return };
        let remote = SocketAddr::new(settings.address, IKE_PORT);
        let our_spi = self.new_our_spi();
        let Ok(dh) = X25519KeyPair::generate() else {
            tracing::error!("cannot generate a Curve25519 key pair");
            return;
        };
        let ni = random_bytes::<NONCE_LEN>().to_vec();
        let request = self.init_request(our_spi, &ni, dh.public_key(), None, remote);
        let sa = IkeSa {
            peer: Some(peer),
            initiator: true,
            our_spi,
            their_spi: 0,
            state: State::ExpectInitResponse,
            remote,
            local_port: IKE_PORT,
            keys: None,
            cipher: None,
            handshake: Handshake {
                ni,
                nr: Vec::new(),
                init_request: request.clone(),
                init_response: Vec::new(),
                cookie: None,
            },
            next_request_id: 1,
            expected_request_id: 0,
            outstanding: Some(Outstanding {
                message_id: 0,
                bytes: request.clone(),
                retransmits: 0,
                next_send: now + RETRANSMIT_BASE,
                purpose: Purpose::Init { dh },
            }),
            queued: VecDeque::new(),
            last_response: None,
            children: Vec::new(),
            created: now,
            established: None,
            last_heard: now,
            rekey_at: None,
            nat_detected: false,
            from_rekey: false,
            initiator_address: self.settings.local,
            collision_nonces: Vec::new(),
            delete_at: None,
            peer_auth: None,
        };
        tracing::debug!(peer = %settings.address, spi = format_args!("{our_spi:016x}"), "IKE_SA_INIT ->");
        self.transmits.push_back(Transmit { destination: remote, source_port: IKE_PORT, bytes: request });
        self.sas.insert(our_spi, sa);
        self.peers[peer].next_attempt = now + RECONNECT_INTERVAL;
    }

    /// Handles one received IKE message (without the non-ESP marker) that arrived from `from`
    /// on our port `local_port`.
    pub fn handle(&mut self, datagram: &[u8], from: SocketAddr, local_port: u16, now: Instant) {
        let Ok(message) = Message::parse(datagram) else {
            self.drop_message(Refusal::Malformed, from);
            return;
        };
        let header = message.header;
        if header.exchange_type == exchange::IKE_SA_INIT && !header.response && header.responder_spi == 0 {
            self.handle_init_request(&message, datagram, from, local_port, now);
            return;
        }
        // Our SPI is the initiator's when the sender is not the original initiator.
        let our_spi = if header.initiator { header.responder_spi } else { header.initiator_spi };
        let Some(sa) = self.sas.get(&our_spi) else {
            self.drop_message(Refusal::UnknownSpi, from);
            return;
        };
        if header.exchange_type == exchange::IKE_SA_INIT {
            if header.response && sa.state == State::ExpectInitResponse {
                self.handle_init_response(our_spi, &message, datagram, from, local_port, now);
            } else {
                self.drop_message(Refusal::Unexpected, from);
            }
            return;
        }
        let their_spi = if header.initiator { header.initiator_spi } else { header.responder_spi };
        if sa.their_spi != their_spi || sa.keys.is_none() {
            self.drop_message(Refusal::UnknownSpi, from);
            return;
        }
        let Some(encrypted) = message.encrypted else {
            self.drop_message(Refusal::Malformed, from);
            return;
        };
        let opened = self
            .sas
            .get(&our_spi)
            .and_then(|sa| sa.keys.as_ref())
            .map(|keys| keys.opener().open(encrypted.associated_data, encrypted.body));
        let Some(Ok(inner)) = opened else {
            self.drop_message(Refusal::Unauthentic, from);
            tracing::debug!(%from, "IKE message does not authenticate; dropped");
            return;
        };
        let Ok(payloads) = parse_payloads(encrypted.first_payload, &inner) else {
            self.drop_message(Refusal::Malformed, from);
            return;
        };
        if let Some(sa) = self.sas.get_mut(&our_spi) {
            sa.last_heard = now;
            // Follow the peer's address and port (NAT mappings change); RFC 7296 §2.23.
            sa.remote = from;
            sa.local_port = local_port;
        }
        if header.response {
            self.handle_response(our_spi, header, payloads, now);
        } else {
            self.handle_request(our_spi, header, payloads, now);
        }
    }

    // ----- IKE_SA_INIT -----

    fn handle_init_request(
        &mut self,
        message: &Message<'_>,
        datagram: &[u8],
        from: SocketAddr,
        local_port: u16,
        now: Instant,
    ) {
        let header = message.header;
        if let Some(our_spi) = self.half_open.get(&(from, header.initiator_spi)) {
            // A retransmission: answer with the same response.
            if let Some(sa) = self.sas.get(our_spi) {
                let bytes = sa.handshake.init_response.clone();
                self.transmits.push_back(Transmit { destination: from, source_port: local_port, bytes });
            }
            return;
        }
        let payloads = &message.payloads;
        let Some(ni) = Parts::of(payloads).nonce.map(<[u8]>::to_vec) else {
            self.drop_message(Refusal::Malformed, from);
            return;
        };
        let half_open = self.sas.values().filter(|sa| sa.state == State::ExpectAuthRequest).count();
        if half_open >= HALF_OPEN_LIMIT {
            let cookie_ok = notifies(payloads).find(|n| n.notify_type == notify::COOKIE).is_some_and(|n| {
                self.cookies.verify(&n.data, &ni, from.ip(), &header.initiator_spi.to_be_bytes()).is_ok()
            });
            if !cookie_ok {
                let cookie = self.cookies.cookie(&ni, from.ip(), &header.initiator_spi.to_be_bytes()).to_vec();
                self.counters.cookies_sent += 1;
                self.reply_unprotected(header, Notify::new(notify::COOKIE, cookie), from, local_port);
                return;
            }
        }
        let offer = Parts::of(payloads).security_association;
        let Some(chosen) = offer.and_then(|offer| proposal::choose_ike(offer, &self.ciphers)) else {
            tracing::warn!(%from, "IKE_SA_INIT: no proposal in common; answering NO_PROPOSAL_CHOSEN");
            self.reply_unprotected(header, Notify::new(notify::NO_PROPOSAL_CHOSEN, Vec::new()), from, local_port);
            self.events.push_back(Event::Failed {
                peer: self.peer_by_address(from.ip()),
                from,
                failure: Failure::NoProposalChosen { peer_said: false },
            });
            return;
        };
        let Some(ke) = Parts::of(payloads).key_exchange else {
            self.drop_message(Refusal::Malformed, from);
            return;
        };
        if ke.group != diffie_hellman::CURVE25519 {
            let data = our_group();
            self.reply_unprotected(header, Notify::new(notify::INVALID_KE_PAYLOAD, data), from, local_port);
            return;
        }
        let Ok(dh) = X25519KeyPair::generate() else { return };
        let our_public = dh.public_key().to_vec();
        let Ok(shared) = dh.agree(&ke.data) else {
            self.drop_message(Refusal::Malformed, from);
            return;
        };
        let our_spi = self.new_our_spi();
        let nr = random_bytes::<NONCE_LEN>().to_vec();
        let spis = SpiPair { initiator: header.initiator_spi.to_be_bytes(), responder: our_spi.to_be_bytes() };
        let Ok(keys) = IkeSaKeys::derive(Role::Responder, chosen.cipher, &shared[..], &ni, &nr, spis) else {
            self.drop_message(Refusal::Malformed, from);
            return;
        };
        let request_spis = SpiPair { initiator: spis.initiator, responder: [0; 8] };
        let local = SocketAddr::new(self.settings.local, local_port);
        let nat_detected = self.detect_nat(payloads, &request_spis, local);
        let mut response_payloads = vec![
            Payload::SecurityAssociation(proposal::ike_answer(&chosen, &[])),
            Payload::KeyExchange(KeyExchange { group: diffie_hellman::CURVE25519, data: our_public }),
            Payload::Nonce(Nonce { data: nr.clone() }),
        ];
        response_payloads.extend(self.nat_notifies(&spis, local, from));
        response_payloads.extend(identity::init_notify(&self.settings));
        let response_header = Header {
            initiator_spi: header.initiator_spi,
            responder_spi: our_spi,
            exchange_type: exchange::IKE_SA_INIT,
            initiator: false,
            response: true,
            message_id: 0,
        };
        let response = encode_message(&response_header, &response_payloads);
        self.transmits.push_back(Transmit { destination: from, source_port: local_port, bytes: response.clone() });
        let sa = IkeSa {
            peer: None,
            initiator: false,
            our_spi,
            their_spi: header.initiator_spi,
            state: State::ExpectAuthRequest,
            remote: from,
            local_port,
            keys: Some(keys),
            cipher: Some(chosen.cipher),
            handshake: Handshake { ni, nr, init_request: datagram.to_vec(), init_response: response, cookie: None },
            next_request_id: 0,
            expected_request_id: 1,
            outstanding: None,
            queued: VecDeque::new(),
            last_response: None,
            children: Vec::new(),
            created: now,
            established: None,
            last_heard: now,
            rekey_at: None,
            nat_detected,
            from_rekey: false,
            initiator_address: from.ip(),
            collision_nonces: Vec::new(),
            delete_at: None,
            peer_auth: None,
        };
        self.sas.insert(our_spi, sa);
        self.half_open.insert((from, header.initiator_spi), our_spi);
    }

    /// An unauthenticated reply to an IKE_SA_INIT request that carries one notify.
    fn reply_unprotected(&mut self, request: Header, notify: Notify, to: SocketAddr, local_port: u16) {
        let header = Header {
            initiator_spi: request.initiator_spi,
            responder_spi: 0,
            exchange_type: request.exchange_type,
            initiator: false,
            response: true,
            message_id: request.message_id,
        };
        let bytes = encode_message(&header, &[Payload::Notify(notify)]);
        self.transmits.push_back(Transmit { destination: to, source_port: local_port, bytes });
    }

    fn handle_init_response(
        &mut self,
        our_spi: u64,
        message: &Message<'_>,
        datagram: &[u8],
        from: SocketAddr,
        local_port: u16,
        now: Instant,
    ) {
        let payloads = &message.payloads;
        let Some(sa) = self.sas.get(&our_spi) else { return };
        if let Some(cookie) = notifies(payloads).find(|n| n.notify_type == notify::COOKIE) {
            // The same request again with the cookie in front (RFC 7296 §2.6), once.
            let Some(Outstanding { purpose: Purpose::Init { dh }, .. }) = &sa.outstanding else { return };
            if sa.handshake.cookie.is_some() {
                return;
            }
            let request = self.init_request(our_spi, &sa.handshake.ni, dh.public_key(), Some(&cookie.data), sa.remote);
            let cookie = cookie.data.clone();
            let Some(sa) = self.sas.get_mut(&our_spi) else { return };
            sa.handshake.cookie = Some(cookie);
            sa.handshake.init_request = request.clone();
            if let Some(outstanding) = &mut sa.outstanding {
                outstanding.bytes = request.clone();
                outstanding.retransmits = 0;
                outstanding.next_send = now + RETRANSMIT_BASE;
            }
            self.transmits.push_back(Transmit { destination: sa.remote, source_port: sa.local_port, bytes: request });
            return;
        }
        if let Some(error) = notifies(payloads).find(|n| n.is_error()) {
            let failure = match error.notify_type {
                notify::NO_PROPOSAL_CHOSEN => Failure::NoProposalChosen { peer_said: true },
                _ => Failure::Timeout,
            };
            tracing::error!(peer = %sa.remote, notify = error.notify_type, "IKE_SA_INIT refused: {failure}");
            self.fail(our_spi, failure, now);
            return;
        }
        let parts = Parts::of(payloads);
        let chosen = parts.security_association.and_then(|offer| proposal::choose_ike(offer, &self.ciphers));
        let ke = parts.key_exchange.map(|ke| ke.data.clone());
        let nr = parts.nonce.map(<[u8]>::to_vec);
        let (Some(chosen), Some(ke), Some(nr)) = (chosen, ke, nr) else {
            self.drop_message(Refusal::Malformed, from);
            return;
        };
        let Some(sa) = self.sas.get_mut(&our_spi) else { return };
        let Some(Outstanding { purpose: Purpose::Init { dh }, .. }) = sa.outstanding.take() else { return };
        let Ok(shared) = dh.agree(&ke) else {
            self.drop_message(Refusal::Malformed, from);
            return;
        };
        sa.their_spi = message.header.responder_spi;
        let spis = sa.spi_pair();
        let Ok(keys) = IkeSaKeys::derive(Role::Initiator, chosen.cipher, &shared[..], &sa.handshake.ni, &nr, spis)
        else {
            self.drop_message(Refusal::Malformed, from);
            return;
        };
        sa.keys = Some(keys);
        sa.cipher = Some(chosen.cipher);
        sa.handshake.nr = nr;
        sa.handshake.init_response = datagram.to_vec();
        sa.last_heard = now;
        let local = SocketAddr::new(self.settings.local, local_port);
        let nat = self.detect_nat(payloads, &spis, local);
        let Some(sa) = self.sas.get_mut(&our_spi) else { return };
        sa.nat_detected = nat;
        if nat || self.settings.force_udp_encap {
            sa.remote = SocketAddr::new(from.ip(), NAT_T_PORT);
            sa.local_port = NAT_T_PORT;
        }
        self.send_auth_request(our_spi, now);
    }

    // ----- IKE_AUTH -----

    fn send_auth_request(&mut self, our_spi: u64, now: Instant) {
        let inbound_spi = random_nonzero_u32();
        let local = self.settings.local;
        let port = self.settings.vxlan_port;
        let esn = self.settings.esn;
        let ciphers = self.ciphers.clone();
        let initial_contact =
            self.sas.get(&our_spi).and_then(|sa| sa.peer).is_some_and(|peer| self.established_with(peer).is_empty());
        let Some(sa) = self.sas.get_mut(&our_spi) else { return };
        let Some(peer) = sa.peer else { return };
        let peer_settings = &self.settings.peers[peer];
        let Some(inputs) = sa.auth_inputs() else { return };
        let (id, auth) = identity::our_auth(&self.settings, peer_settings, None, &inputs);
        let mut payloads = vec![Payload::IdentificationInitiator(id)];
        if initial_contact {
            payloads.push(Payload::Notify(Notify::new(notify::INITIAL_CONTACT, Vec::new())));
        }
        payloads.push(Payload::Authentication(auth));
        if peer_settings.mode == Mode::Transport {
            payloads.push(Payload::Notify(Notify::new(notify::USE_TRANSPORT_MODE, Vec::new())));
        }
        payloads.push(Payload::Notify(Notify::new(notify::MESHD_PATH_MTU_PROBES, Vec::new())));
        payloads.push(Payload::SecurityAssociation(proposal::esp_offer(&ciphers, inbound_spi, esn)));
        payloads.push(Payload::TrafficSelectorInitiator(proposal::node_selector(local, port)));
        payloads.push(Payload::TrafficSelectorResponder(proposal::node_selector(peer_settings.address, port)));
        sa.state = State::ExpectAuthResponse;
        self.send_request(our_spi, exchange::IKE_AUTH, &payloads, Purpose::Auth { inbound_spi }, now);
    }

    fn handle_auth_request(&mut self, our_spi: u64, header: Header, payloads: Vec<Payload>, now: Instant) {
        let Some(sa) = self.sas.get(&our_spi) else { return };
        let from = sa.remote;
        let parts = Parts::of(&payloads);
        let (Some(id), Some(auth), Some(inputs)) =
            (parts.identification_initiator, parts.authentication, sa.auth_inputs())
        else {
            self.drop_message(Refusal::Malformed, from);
            return;
        };
        let peer = id.ip().and_then(|address| self.peer_by_address(address));
        let claim = PeerClaim {
            peer: peer.map(|peer| &self.settings.peers[peer]),
            id,
            auth,
            source: from.ip(),
            we_are_behind_nat: sa.nat_detected,
            source_is_a_node: self.peer_by_address(from.ip()).is_some(),
        };
        let verified = identity::verify_peer(&self.settings, &claim, &inputs)
            .and_then(|auth| peer.map(|peer| (peer, auth)).ok_or(Failure::Authentication { peer_said: false }));
        let identity = id.ip();
        let (peer_index, peer_auth) = match verified {
            Ok(verified) => verified,
            Err(failure) => {
                tracing::error!(%from, ?identity, "IKE_AUTH from {from}: {failure}");
                let payloads = [Payload::Notify(Notify::new(notify::AUTHENTICATION_FAILED, Vec::new()))];
                self.send_response(our_spi, header, &payloads);
                self.events.push_back(Event::Failed { peer, from, failure });
                self.forget(our_spi);
                return;
            }
        };
        let peer = peer_index;
        if notifies(&payloads).any(|n| n.notify_type == notify::INITIAL_CONTACT) {
            self.drop_stale_sas(peer, our_spi, now);
        }
        self.note_probe_support(peer, &payloads);
        let local = self.settings.local;
        let peer_settings = self.settings.peers[peer].clone();
        let port = self.settings.vxlan_port;
        let Some(sa) = self.sas.get_mut(&our_spi) else { return };
        sa.peer = Some(peer);
        sa.peer_auth = Some(peer_auth);
        let Some(inputs) = sa.auth_inputs() else { return };
        let (id_r, our_auth) = identity::our_auth(&self.settings, &peer_settings, Some(peer_auth), &inputs);
        let mut response = vec![
            Payload::IdentificationResponder(id_r),
            Payload::Authentication(our_auth),
            Payload::Notify(Notify::new(notify::MESHD_PATH_MTU_PROBES, Vec::new())),
        ];
        let child = self.negotiate_child(&payloads, &peer_settings.address, port);
        match child {
            Ok((chosen, transport)) => {
                let inbound_spi = random_nonzero_u32();
                let mode =
                    if transport && peer_settings.mode == Mode::Transport { Mode::Transport } else { Mode::Tunnel };
                if mode == Mode::Transport {
                    response.push(Payload::Notify(Notify::new(notify::USE_TRANSPORT_MODE, Vec::new())));
                }
                response.push(Payload::SecurityAssociation(proposal::esp_answer(&chosen, inbound_spi)));
                response.push(Payload::TrafficSelectorInitiator(proposal::node_selector(peer_settings.address, port)));
                response.push(Payload::TrafficSelectorResponder(proposal::node_selector(local, port)));
                self.send_response(our_spi, header, &response);
                self.establish(our_spi, now);
                let (ni, nr) = match self.sas.get(&our_spi) {
                    Some(sa) => (sa.handshake.ni.clone(), sa.handshake.nr.clone()),
                    None => return,
                };
                self.add_child(our_spi, chosen, inbound_spi, mode, None, &ni, &nr, now, ChildInstall::Both);
            }
            Err(failure_notify) => {
                response.push(Payload::Notify(Notify::new(failure_notify, Vec::new())));
                self.send_response(our_spi, header, &response);
                self.establish(our_spi, now);
                tracing::error!(peer = %peer_settings.address, notify = failure_notify, "IKE SA up, but no Child SA could be agreed");
            }
        }
    }

    /// The ESP proposal and mode for a Child SA request, or the error notify to answer.
    fn negotiate_child(
        &self,
        payloads: &[Payload],
        peer_address: &IpAddr,
        port: u16,
    ) -> Result<(ChosenEsp, bool), u16> {
        let offer = Parts::of(payloads).security_association;
        let chosen = offer
            .and_then(|offer| proposal::choose_esp(offer, &self.ciphers, self.settings.esn))
            .ok_or(notify::NO_PROPOSAL_CHOSEN)?;
        let ts_ok = payloads.iter().any(|p| matches!(p, Payload::TrafficSelectorInitiator(ts) if proposal::selectors_cover(ts, *peer_address, port)))
            && payloads.iter().any(|p| matches!(p, Payload::TrafficSelectorResponder(ts) if proposal::selectors_cover(ts, self.settings.local, port)));
        if !ts_ok {
            return Err(notify::TS_UNACCEPTABLE);
        }
        let transport = notifies(payloads).any(|n| n.notify_type == notify::USE_TRANSPORT_MODE);
        Ok((chosen, transport))
    }

    fn handle_auth_response(&mut self, our_spi: u64, payloads: Vec<Payload>, inbound_spi: u32, now: Instant) {
        let Some(sa) = self.sas.get(&our_spi) else { return };
        let remote = sa.remote;
        if let Some(error) = notifies(&payloads).find(|n| n.notify_type == notify::AUTHENTICATION_FAILED) {
            let _ = error;
            let failure = Failure::Authentication { peer_said: true };
            tracing::error!(peer = %remote, "IKE_AUTH: {failure}");
            self.fail(our_spi, failure, now);
            return;
        }
        let Some(peer) = sa.peer else { return };
        let peer_address = self.settings.peers[peer].address;
        let parts = Parts::of(&payloads);
        let verified = match (parts.identification_responder, parts.authentication, sa.auth_inputs()) {
            (Some(id), Some(auth), Some(inputs)) => {
                // The responder must be the node we contacted: an ID naming any other is unknown here.
                let peer_settings = &self.settings.peers[peer];
                let claim = PeerClaim {
                    peer: (id.ip() == Some(peer_address)).then_some(peer_settings),
                    id,
                    auth,
                    source: remote.ip(),
                    we_are_behind_nat: sa.nat_detected,
                    source_is_a_node: self.peer_by_address(remote.ip()).is_some(),
                };
                identity::verify_peer(&self.settings, &claim, &inputs)
            }
            _ => Err(Failure::Authentication { peer_said: false }),
        };
        let peer_auth = match verified {
            Ok(peer_auth) => peer_auth,
            Err(failure) => {
                tracing::error!(peer = %remote, "IKE_AUTH response: {failure}");
                // The responder thinks the IKE SA is up: tell it, once (RFC 7296 §2.21.2).
                let refusal = [
                    Payload::Notify(Notify::new(notify::AUTHENTICATION_FAILED, Vec::new())),
                    Payload::Delete(Delete::ike()),
                ];
                self.send_request(our_spi, exchange::INFORMATIONAL, &refusal, Purpose::DeleteIke, now);
                self.fail(our_spi, failure, now);
                return;
            }
        };
        if let Some(sa) = self.sas.get_mut(&our_spi) {
            sa.peer_auth = Some(peer_auth);
        }
        self.note_probe_support(peer, &payloads);
        self.establish(our_spi, now);
        let chosen = Parts::of(&payloads)
            .security_association
            .and_then(|answer| proposal::choose_esp(answer, &self.ciphers, self.settings.esn));
        let Some(chosen) = chosen else {
            let error = notifies(&payloads).find(|n| n.is_error()).map(|n| n.notify_type);
            tracing::error!(peer = %remote, ?error, "IKE SA up, but the peer accepted no Child SA");
            if error == Some(notify::TS_UNACCEPTABLE) {
                self.events.push_back(Event::Failed {
                    peer: Some(peer),
                    from: remote,
                    failure: Failure::TrafficSelectors,
                });
            }
            return;
        };
        let transport = notifies(&payloads).any(|n| n.notify_type == notify::USE_TRANSPORT_MODE);
        let mode = if transport { Mode::Transport } else { Mode::Tunnel };
        let (ni, nr) = match self.sas.get(&our_spi) {
            Some(sa) => (sa.handshake.ni.clone(), sa.handshake.nr.clone()),
            None => return,
        };
        self.add_child(our_spi, chosen, inbound_spi, mode, None, &ni, &nr, now, ChildInstall::Both);
    }

    /// Whether `peer` announced in an authenticated IKE_AUTH that it answers path-MTU probes.
    fn note_probe_support(&mut self, peer: PeerIndex, payloads: &[Payload]) {
        let announced = notifies(payloads).any(|n| n.notify_type == notify::MESHD_PATH_MTU_PROBES);
        if let Some(state) = self.peers.get_mut(peer) {
            state.answers_probes = announced;
        }
    }

    /// The diagnostic query keys of the established IKE SAs with `peer`, newest first.
    pub fn query_keys(&self, peer: PeerIndex) -> Vec<zeroize::Zeroizing<Vec<u8>>> {
        let mut sas: Vec<&IkeSa> =
            self.sas.values().filter(|sa| sa.peer == Some(peer) && sa.state == State::Established).collect();
        sas.sort_by_key(|sa| std::cmp::Reverse(sa.established));
        sas.iter().filter_map(|sa| sa.keys.as_ref()?.query_key().ok()).collect()
    }

    /// `peer` announced that it answers meshd's path-MTU probes (docs/mtu.md).
    pub fn answers_probes(&self, peer: PeerIndex) -> bool {
        self.peers.get(peer).is_some_and(|state| state.answers_probes)
    }

    /// The IKE SA is authenticated: timers, events, and duplicate resolution.
    fn establish(&mut self, our_spi: u64, now: Instant) {
        let ike_lifetime = self.settings.ike_lifetime;
        let Some(sa) = self.sas.get_mut(&our_spi) else { return };
        sa.state = State::Established;
        sa.established = Some(now);
        sa.last_heard = now;
        let fraction = if sa.initiator { REKEY_FRACTION } else { RESPONDER_REKEY_FRACTION };
        sa.rekey_at = Some(now + jittered(ike_lifetime, fraction));
        let remote = sa.remote;
        self.half_open.retain(|_, spi| *spi != our_spi);
        let Some(peer) = sa.peer else { return };
        tracing::info!(peer = %self.settings.peers[peer].address, %remote, nat = sa.nat_detected, "IKE SA established");
        self.events.push_back(Event::Established { peer });
        self.resolve_duplicates(peer, now);
    }

    /// Two IKE SAs made by simultaneous initiation: keep the one initiated by the lower
    /// address; the loser's initiator deletes it.
    fn resolve_duplicates(&mut self, peer: PeerIndex, now: Instant) {
        let mut established: Vec<(u64, IpAddr, Instant, bool)> = self
            .sas
            .iter()
            .filter(|(_, sa)| sa.peer == Some(peer) && sa.state == State::Established && !sa.from_rekey)
            .map(|(spi, sa)| (*spi, sa.initiator_address, sa.created, sa.initiator))
            .collect();
        if established.len() < 2 {
            return;
        }
        // The winner: lowest initiator address, then the newest.
        established.sort_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)));
        for (spi, _, _, we_initiated) in established.into_iter().skip(1) {
            if !we_initiated {
                if let Some(sa) = self.sas.get_mut(&spi) {
                    sa.delete_at.get_or_insert(now + DUPLICATE_GRACE);
                }
            } else {
                tracing::debug!(peer, "deleting a duplicate IKE SA from simultaneous initiation");
                self.remove_children(spi, now, false);
                self.queue(spi, Queued::DeleteIke, now);
                if let Some(sa) = self.sas.get_mut(&spi) {
                    sa.state = State::Deleting;
                }
            }
        }
    }

    /// INITIAL_CONTACT: the peer restarted; IKE SAs made before this one are stale.
    fn drop_stale_sas(&mut self, peer: PeerIndex, current: u64, now: Instant) {
        let created = self.sas.get(&current).map(|sa| sa.created);
        let stale: Vec<u64> = self
            .sas
            .iter()
            .filter(|(spi, sa)| {
                **spi != current && sa.peer == Some(peer) && Some(sa.created) < created && sa.established.is_some()
            })
            .map(|(spi, _)| *spi)
            .collect();
        for spi in stale {
            tracing::info!(peer = %self.settings.peers[peer].address, "INITIAL_CONTACT: dropping the peer's old IKE SA");
            self.remove_children(spi, now, false);
            self.forget(spi);
        }
    }

    // ----- Child SAs -----

    #[allow(clippy::too_many_arguments)]
    fn add_child(
        &mut self,
        our_spi: u64,
        chosen: ChosenEsp,
        inbound_spi: u32,
        mode: Mode,
        new_shared_secret: Option<&[u8]>,
        ni: &[u8],
        nr: &[u8],
        now: Instant,
        install: ChildInstall,
    ) {
        let child_lifetime = self.settings.child_lifetime;
        let outbound_allowed = self.outbound_allowed(our_spi);
        let Some(sa) = self.sas.get_mut(&our_spi) else { return };
        let Some(peer) = sa.peer else { return };
        let Some(keys) = sa.keys.as_ref() else { return };
        let Ok(derived) = keys.child_sa_keys(chosen.cipher, new_shared_secret, ni, nr) else { return };
        let role = if sa.initiator_of_exchange(install) { Role::Initiator } else { Role::Responder };
        let (inbound_key, outbound_key) = split_keys(derived, role);
        let remote = if sa.local_port == NAT_T_PORT { sa.remote } else { SocketAddr::new(sa.remote.ip(), NAT_T_PORT) };
        let keys_for = |spi: u32, key| ChildSaKeys { spi, cipher: chosen.cipher, esn: chosen.esn, mode, remote, key };
        let fraction = if sa.initiator { REKEY_FRACTION } else { RESPONDER_REKEY_FRACTION };
        let mut child = Child {
            inbound_spi,
            outbound_spi: chosen.spi,
            mode,
            rekey_at: now + jittered(child_lifetime, fraction),
            expire_at: now + child_lifetime,
            pending_outbound: None,
            rekeyed: false,
        };
        self.events.push_back(Event::InstallInbound { peer, sa: keys_for(inbound_spi, inbound_key) });
        let outbound = keys_for(chosen.spi, outbound_key);
        let sends_now = matches!(install, ChildInstall::Both | ChildInstall::RekeyInitiator) && outbound_allowed;
        match install {
            ChildInstall::Both | ChildInstall::RekeyInitiator if outbound_allowed => {
                self.events.push_back(Event::InstallOutbound { peer, sa: outbound })
            }
            ChildInstall::RekeyResponder => child.pending_outbound = Some((outbound, now + OUTBOUND_SWITCH_DELAY)),
            _ => {}
        }
        tracing::info!(
            peer = %self.settings.peers[peer].address,
            inbound = format_args!("{inbound_spi:#010x}"),
            outbound = format_args!("{:#010x}", chosen.spi),
            cipher = %chosen.cipher,
            %mode,
            esn = chosen.esn,
            outbound_in_use = sends_now,
            "Child SA installed"
        );
        if let Some(sa) = self.sas.get_mut(&our_spi) {
            sa.children.push(child);
        }
    }

    /// Whether this IKE SA's Child SAs may carry our outbound traffic: not when it lost
    /// duplicate resolution to another IKE SA with the same peer.
    fn outbound_allowed(&self, our_spi: u64) -> bool {
        let Some(sa) = self.sas.get(&our_spi) else { return false };
        if sa.from_rekey {
            return true;
        }
        !self.sas.iter().any(|(spi, other)| {
            *spi != our_spi
                && other.peer == sa.peer
                && other.state == State::Established
                && !other.from_rekey
                && (other.initiator_address < sa.initiator_address
                    || (other.initiator_address == sa.initiator_address && other.created > sa.created))
        })
    }

    /// Removes the Child SAs of an IKE SA from the SADB (inbound after the grace period unless
    /// `now_too`).
    fn remove_children(&mut self, our_spi: u64, now: Instant, now_too: bool) {
        let Some(sa) = self.sas.get_mut(&our_spi) else { return };
        let Some(peer) = sa.peer else { return };
        for child in sa.children.drain(..) {
            self.events.push_back(Event::RemoveOutbound { peer, spi: child.outbound_spi });
            if now_too {
                self.events.push_back(Event::RemoveInbound { peer, spi: child.inbound_spi });
            } else {
                self.retiring.push((peer, child.inbound_spi, now + INBOUND_GRACE));
            }
        }
    }

    fn start_child_rekey(&mut self, our_spi: u64, old_inbound_spi: u32, now: Instant) {
        let ciphers = self.ciphers.clone();
        let esn = self.settings.esn;
        let local = self.settings.local;
        let port = self.settings.vxlan_port;
        let Some(sa) = self.sas.get_mut(&our_spi) else { return };
        let Some(peer) = sa.peer else { return };
        let Some(index) = sa.child_by_inbound(old_inbound_spi) else { return };
        let child = &mut sa.children[index];
        if child.rekeyed {
            return;
        }
        child.rekeyed = true;
        let mode = child.mode;
        let new_inbound_spi = random_nonzero_u32();
        let nonce = random_bytes::<NONCE_LEN>().to_vec();
        let mut rekey = Notify::new(notify::REKEY_SA, Vec::new());
        rekey.protocol_id = protocol::ESP;
        rekey.spi = old_inbound_spi.to_be_bytes().to_vec();
        let mut payloads = vec![Payload::Notify(rekey)];
        if mode == Mode::Transport {
            payloads.push(Payload::Notify(Notify::new(notify::USE_TRANSPORT_MODE, Vec::new())));
        }
        payloads.push(Payload::SecurityAssociation(proposal::esp_offer(&ciphers, new_inbound_spi, esn)));
        payloads.push(Payload::Nonce(Nonce { data: nonce.clone() }));
        payloads.push(Payload::TrafficSelectorInitiator(proposal::node_selector(local, port)));
        payloads
            .push(Payload::TrafficSelectorResponder(proposal::node_selector(self.settings.peers[peer].address, port)));
        self.send_request(
            our_spi,
            exchange::CREATE_CHILD_SA,
            &payloads,
            Purpose::RekeyChild { old_inbound_spi, new_inbound_spi, nonce },
            now,
        );
    }

    fn start_ike_rekey(&mut self, our_spi: u64, now: Instant) {
        let new_spi = self.new_our_spi();
        let Ok(dh) = X25519KeyPair::generate() else { return };
        let nonce = random_bytes::<NONCE_LEN>().to_vec();
        let payloads = vec![
            Payload::SecurityAssociation(proposal::ike_offer(&self.settings.proposals, &new_spi.to_be_bytes())),
            Payload::Nonce(Nonce { data: nonce.clone() }),
            Payload::KeyExchange(KeyExchange { group: diffie_hellman::CURVE25519, data: dh.public_key().to_vec() }),
        ];
        if let Some(sa) = self.sas.get_mut(&our_spi) {
            sa.rekey_at = None;
        }
        self.send_request(our_spi, exchange::CREATE_CHILD_SA, &payloads, Purpose::RekeyIke { new_spi, nonce, dh }, now);
    }

    // ----- requests and responses -----

    fn send_request(&mut self, our_spi: u64, exchange_type: u8, payloads: &[Payload], purpose: Purpose, now: Instant) {
        let Some(sa) = self.sas.get_mut(&our_spi) else { return };
        let message_id = sa.next_request_id;
        let Some(bytes) = sa.encrypt(exchange_type, false, message_id, payloads) else { return };
        sa.next_request_id += 1;
        self.transmits.push_back(Transmit { destination: sa.remote, source_port: sa.local_port, bytes: bytes.clone() });
        sa.outstanding =
            Some(Outstanding { message_id, bytes, retransmits: 0, next_send: now + RETRANSMIT_BASE, purpose });
    }

    /// Answers a request with one notify (an error, or INVALID_KE_PAYLOAD naming our group).
    fn refuse(&mut self, our_spi: u64, request: Header, notify_type: u16, data: Vec<u8>) {
        self.send_response(our_spi, request, &[Payload::Notify(Notify::new(notify_type, data))]);
    }

    fn send_response(&mut self, our_spi: u64, request: Header, payloads: &[Payload]) {
        let Some(sa) = self.sas.get_mut(&our_spi) else { return };
        let Some(bytes) = sa.encrypt(request.exchange_type, true, request.message_id, payloads) else { return };
        self.transmits.push_back(Transmit { destination: sa.remote, source_port: sa.local_port, bytes: bytes.clone() });
        sa.last_response = Some((request.message_id, bytes));
    }

    /// Queues a request on an IKE SA; sent now if nothing is outstanding.
    fn queue(&mut self, our_spi: u64, request: Queued, now: Instant) {
        if let Some(sa) = self.sas.get_mut(&our_spi) {
            sa.queued.push_back(request);
        }
        self.send_queued(our_spi, now);
    }

    fn send_queued(&mut self, our_spi: u64, now: Instant) {
        let Some(sa) = self.sas.get_mut(&our_spi) else { return };
        if sa.outstanding.is_some() {
            return;
        }
        let Some(next) = sa.queued.pop_front() else { return };
        match next {
            Queued::DeleteIke => {
                let payloads = [Payload::Delete(Delete::ike())];
                self.send_request(our_spi, exchange::INFORMATIONAL, &payloads, Purpose::DeleteIke, now);
            }
            Queued::DeleteChild(spis) => {
                let payloads = [Payload::Delete(Delete::child(protocol::ESP, &spis))];
                self.send_request(our_spi, exchange::INFORMATIONAL, &payloads, Purpose::DeleteChild, now);
            }
            Queued::Liveness => self.send_request(our_spi, exchange::INFORMATIONAL, &[], Purpose::Liveness, now),
            Queued::RekeyChild(spi) => self.start_child_rekey(our_spi, spi, now),
            Queued::RekeyIke => self.start_ike_rekey(our_spi, now),
        }
    }

    fn handle_request(&mut self, our_spi: u64, header: Header, payloads: Vec<Payload>, now: Instant) {
        let Some(sa) = self.sas.get_mut(&our_spi) else { return };
        let from = sa.remote;
        if header.message_id + 1 == sa.expected_request_id {
            // A retransmitted request: the cached response again (RFC 7296 §2.1).
            if let Some((id, bytes)) = &sa.last_response {
                if *id == header.message_id {
                    self.transmits.push_back(Transmit {
                        destination: sa.remote,
                        source_port: sa.local_port,
                        bytes: bytes.clone(),
                    });
                }
            }
            return;
        }
        if header.message_id != sa.expected_request_id {
            self.drop_message(Refusal::Unexpected, from);
            return;
        }
        sa.expected_request_id += 1;
        let state = sa.state;
        match (header.exchange_type, state) {
            (exchange::IKE_AUTH, State::ExpectAuthRequest) => self.handle_auth_request(our_spi, header, payloads, now),
            (exchange::INFORMATIONAL, State::Established | State::Deleting) => {
                self.handle_informational(our_spi, header, payloads, now)
            }
            (exchange::CREATE_CHILD_SA, State::Established) => self.handle_create_child(our_spi, header, payloads, now),
            _ => self.counters.malformed += 1,
        }
    }

    fn handle_informational(&mut self, our_spi: u64, header: Header, payloads: Vec<Payload>, now: Instant) {
        let mut answer_spis = Vec::new();
        let mut delete_ike = false;
        for payload in &payloads {
            let Payload::Delete(delete) = payload else { continue };
            match delete.protocol_id {
                protocol::IKE => delete_ike = true,
                protocol::ESP => {
                    for spi in delete.spis.iter().filter_map(|s| <[u8; 4]>::try_from(s.as_slice()).ok()) {
                        if let Some(ours) = self.delete_child_by_outbound(our_spi, u32::from_be_bytes(spi), now) {
                            answer_spis.push(ours);
                        }
                    }
                }
                _ => {}
            }
        }
        if delete_ike && notifies(&payloads).any(|n| n.notify_type == notify::AUTHENTICATION_FAILED) {
            // The initiator refused our IKE_AUTH response.
            self.send_response(our_spi, header, &[]);
            let failure = Failure::Authentication { peer_said: true };
            tracing::error!(peer = ?self.sas.get(&our_spi).map(|sa| sa.remote), "IKE_AUTH: {failure}");
            self.fail(our_spi, failure, now);
            return;
        }
        if delete_ike {
            self.send_response(our_spi, header, &[]);
            let peer = self.sas.get(&our_spi).and_then(|sa| sa.peer);
            self.remove_children(our_spi, now, false);
            self.forget(our_spi);
            if let Some(peer) = peer {
                tracing::info!(peer = %self.settings.peers[peer].address, "the peer deleted the IKE SA");
                // The peer renegotiates if it wants to; we try again later if it does not.
                self.peers[peer].next_attempt = now + RECONNECT_INTERVAL;
            }
            return;
        }
        let response: Vec<Payload> = if answer_spis.is_empty() {
            Vec::new()
        } else {
            vec![Payload::Delete(Delete::child(protocol::ESP, &answer_spis))]
        };
        self.send_response(our_spi, header, &response);
    }

    /// The peer deleted the Child SA it receives on with `outbound_spi`. Returns our inbound
    /// SPI of it (for the answering DELETE).
    fn delete_child_by_outbound(&mut self, our_spi: u64, outbound_spi: u32, now: Instant) -> Option<u32> {
        let sa = self.sas.get_mut(&our_spi)?;
        let peer = sa.peer?;
        let index = sa.child_by_outbound(outbound_spi)?;
        let child = sa.children.remove(index);
        // A replacement waiting for this deletion may send now.
        for other in sa.children.iter_mut() {
            if let Some((keys, _)) = other.pending_outbound.take() {
                self.events.push_back(Event::InstallOutbound { peer, sa: keys });
            }
        }
        self.events.push_back(Event::RemoveOutbound { peer, spi: child.outbound_spi });
        self.retiring.push((peer, child.inbound_spi, now + INBOUND_GRACE));
        Some(child.inbound_spi)
    }

    fn handle_create_child(&mut self, our_spi: u64, header: Header, payloads: Vec<Payload>, now: Instant) {
        let rekey_child = notifies(&payloads)
            .find(|n| n.notify_type == notify::REKEY_SA && n.protocol_id == protocol::ESP)
            .map(|n| n.spi.clone());
        let ike_offer = payloads.iter().find_map(|p| match p {
            Payload::SecurityAssociation(offer) if offer.proposals.iter().any(|p| p.protocol_id == protocol::IKE) => {
                Some(offer.clone())
            }
            _ => None,
        });
        let parts = Parts::of(&payloads);
        let ni = parts.nonce.map(<[u8]>::to_vec);
        let ke = parts.key_exchange.cloned();
        let Some(ni) = ni else {
            self.refuse(our_spi, header, notify::INVALID_SYNTAX, Vec::new());
            return;
        };
        if let Some(offer) = ike_offer {
            self.answer_ike_rekey(our_spi, header, &offer, &ni, ke.as_ref(), now);
            return;
        }
        let Some(old_spi) =
            rekey_child.and_then(|spi| <[u8; 4]>::try_from(spi.as_slice()).ok()).map(u32::from_be_bytes)
        else {
            // New Child SAs beyond the one per pair are not part of this mesh.
            self.refuse(our_spi, header, notify::NO_ADDITIONAL_SAS, Vec::new());
            return;
        };
        let Some(sa) = self.sas.get(&our_spi) else { return };
        let Some(peer) = sa.peer else { return };
        let Some(index) = sa.child_by_outbound(old_spi) else {
            let mut not_found = Notify::new(notify::CHILD_SA_NOT_FOUND, Vec::new());
            not_found.protocol_id = protocol::ESP;
            not_found.spi = old_spi.to_be_bytes().to_vec();
            self.send_response(our_spi, header, &[Payload::Notify(not_found)]);
            return;
        };
        let old_mode = sa.children[index].mode;
        let peer_address = self.settings.peers[peer].address;
        let port = self.settings.vxlan_port;
        let (chosen, _) = match self.negotiate_child(&payloads, &peer_address, port) {
            Ok(chosen) => chosen,
            Err(error) => {
                self.send_response(our_spi, header, &[Payload::Notify(Notify::new(error, Vec::new()))]);
                return;
            }
        };
        let nr = random_bytes::<NONCE_LEN>().to_vec();
        let mut response = Vec::new();
        let mut shared = None;
        if chosen.dh {
            let (Some(ke), Ok(dh)) = (ke, X25519KeyPair::generate()) else {
                self.refuse(our_spi, header, notify::INVALID_KE_PAYLOAD, our_group());
                return;
            };
            response.push(Payload::KeyExchange(KeyExchange {
                group: diffie_hellman::CURVE25519,
                data: dh.public_key().to_vec(),
            }));
            match dh.agree(&ke.data) {
                Ok(secret) => shared = Some(secret),
                Err(_) => {
                    self.refuse(our_spi, header, notify::INVALID_SYNTAX, Vec::new());
                    return;
                }
            }
        }
        let inbound_spi = random_nonzero_u32();
        let local = self.settings.local;
        let mut payloads_out = Vec::new();
        if old_mode == Mode::Transport {
            payloads_out.push(Payload::Notify(Notify::new(notify::USE_TRANSPORT_MODE, Vec::new())));
        }
        payloads_out.push(Payload::SecurityAssociation(proposal::esp_answer(&chosen, inbound_spi)));
        payloads_out.push(Payload::Nonce(Nonce { data: nr.clone() }));
        payloads_out.extend(response);
        payloads_out.push(Payload::TrafficSelectorInitiator(proposal::node_selector(peer_address, port)));
        payloads_out.push(Payload::TrafficSelectorResponder(proposal::node_selector(local, port)));
        self.send_response(our_spi, header, &payloads_out);
        // A collision: our own rekey of the same Child SA is under way (RFC 7296 §2.8.1).
        if let Some(sa) = self.sas.get_mut(&our_spi) {
            if let Some(Outstanding { purpose: Purpose::RekeyChild { old_inbound_spi, nonce, .. }, .. }) =
                &sa.outstanding
            {
                if sa.children.get(index).is_some_and(|c| c.inbound_spi == *old_inbound_spi) {
                    sa.collision_nonces.push((ni.clone(), nr.clone(), nonce.clone()));
                }
            }
            if let Some(child) = sa.children.get_mut(index) {
                child.rekeyed = true;
            }
        }
        let secret = shared.as_ref().map(|s| &s[..]);
        self.add_child(our_spi, chosen, inbound_spi, old_mode, secret, &ni, &nr, now, ChildInstall::RekeyResponder);
    }

    fn answer_ike_rekey(
        &mut self,
        our_spi: u64,
        header: Header,
        offer: &SecurityAssociation,
        ni: &[u8],
        ke: Option<&KeyExchange>,
        now: Instant,
    ) {
        let Some(chosen) = proposal::choose_ike(offer, &self.ciphers) else {
            self.refuse(our_spi, header, notify::NO_PROPOSAL_CHOSEN, Vec::new());
            return;
        };
        let (Some(ke), Ok(dh)) = (ke, X25519KeyPair::generate()) else {
            self.refuse(our_spi, header, notify::INVALID_KE_PAYLOAD, our_group());
            return;
        };
        let Ok(their_new_spi) = <[u8; 8]>::try_from(chosen.spi.as_slice()) else {
            self.refuse(our_spi, header, notify::INVALID_SYNTAX, Vec::new());
            return;
        };
        let our_public = dh.public_key().to_vec();
        let Ok(secret) = dh.agree(&ke.data) else { return };
        let new_spi = self.new_our_spi();
        let nr = random_bytes::<NONCE_LEN>().to_vec();
        let spis = SpiPair { initiator: their_new_spi, responder: new_spi.to_be_bytes() };
        let Some(old) = self.sas.get(&our_spi) else { return };
        let Some(old_keys) = old.keys.as_ref() else { return };
        let Ok(keys) = old_keys.rekey(Role::Responder, chosen.cipher, &secret[..], ni, &nr, spis) else { return };
        let payloads = vec![
            Payload::SecurityAssociation(proposal::ike_answer(&chosen, &new_spi.to_be_bytes())),
            Payload::Nonce(Nonce { data: nr }),
            Payload::KeyExchange(KeyExchange { group: diffie_hellman::CURVE25519, data: our_public }),
        ];
        self.send_response(our_spi, header, &payloads);
        self.move_to_new_ike_sa(our_spi, new_spi, u64::from_be_bytes(their_new_spi), false, keys, chosen.cipher, now);
    }

    /// Makes the IKE SA that replaces `old_spi` after an IKE rekey; the Child SAs move to it.
    #[allow(clippy::too_many_arguments)]
    fn move_to_new_ike_sa(
        &mut self,
        old_spi: u64,
        new_spi: u64,
        their_spi: u64,
        we_initiated: bool,
        keys: IkeSaKeys,
        cipher: Cipher,
        now: Instant,
    ) {
        let ike_lifetime = self.settings.ike_lifetime;
        let local = self.settings.local;
        let Some(old) = self.sas.get_mut(&old_spi) else { return };
        let children = std::mem::take(&mut old.children);
        let fraction = if we_initiated { REKEY_FRACTION } else { RESPONDER_REKEY_FRACTION };
        let new = IkeSa {
            peer: old.peer,
            initiator: we_initiated,
            our_spi: new_spi,
            their_spi,
            state: State::Established,
            remote: old.remote,
            local_port: old.local_port,
            keys: Some(keys),
            cipher: Some(cipher),
            handshake: Handshake {
                ni: Vec::new(),
                nr: Vec::new(),
                init_request: Vec::new(),
                init_response: Vec::new(),
                cookie: None,
            },
            next_request_id: 0,
            expected_request_id: 0,
            outstanding: None,
            queued: VecDeque::new(),
            last_response: None,
            children,
            created: now,
            established: Some(now),
            last_heard: now,
            rekey_at: Some(now + jittered(ike_lifetime, fraction)),
            nat_detected: old.nat_detected,
            from_rekey: true,
            initiator_address: if we_initiated { local } else { old.remote.ip() },
            collision_nonces: Vec::new(),
            delete_at: None,
            peer_auth: old.peer_auth,
        };
        old.rekey_at = None;
        tracing::info!(remote = %new.remote, "IKE SA rekeyed");
        self.sas.insert(new_spi, new);
    }

    fn handle_response(&mut self, our_spi: u64, header: Header, payloads: Vec<Payload>, now: Instant) {
        let Some(sa) = self.sas.get_mut(&our_spi) else { return };
        let Some(outstanding) = sa.outstanding.take_if(|o| o.message_id == header.message_id) else {
            // A response to a request already answered (or never sent).
            let from = sa.remote;
            self.drop_message(Refusal::Unexpected, from);
            return;
        };
        match outstanding.purpose {
            Purpose::Init { .. } => {}
            Purpose::Auth { inbound_spi } => self.handle_auth_response(our_spi, payloads, inbound_spi, now),
            Purpose::Liveness | Purpose::DeleteChild => {}
            Purpose::DeleteIke => {
                self.forget(our_spi);
                return;
            }
            Purpose::RekeyChild { old_inbound_spi, new_inbound_spi, nonce } => {
                self.finish_child_rekey(our_spi, payloads, old_inbound_spi, new_inbound_spi, &nonce, now)
            }
            Purpose::RekeyIke { new_spi, nonce, dh } => {
                self.finish_ike_rekey(our_spi, payloads, new_spi, &nonce, dh, now)
            }
        }
        self.send_queued(our_spi, now);
    }

    fn finish_child_rekey(
        &mut self,
        our_spi: u64,
        payloads: Vec<Payload>,
        old_inbound_spi: u32,
        new_inbound_spi: u32,
        ni: &[u8],
        now: Instant,
    ) {
        let parts = Parts::of(&payloads);
        let chosen = parts
            .security_association
            .and_then(|answer| proposal::choose_esp(answer, &self.ciphers, self.settings.esn));
        let nr = parts.nonce.map(<[u8]>::to_vec);
        let (Some(chosen), Some(nr)) = (chosen, nr) else {
            // The peer refused (it may be rekeying itself); the child stays as it is.
            if let Some(child) = self
                .sas
                .get_mut(&our_spi)
                .and_then(|sa| sa.child_by_inbound(old_inbound_spi).map(|i| &mut sa.children[i]))
            {
                child.rekeyed = false;
            }
            return;
        };
        let Some(sa) = self.sas.get(&our_spi) else { return };
        let mode = sa.child_by_inbound(old_inbound_spi).map_or(Mode::Tunnel, |i| sa.children[i].mode);
        // RFC 7296 §2.8.1: with crossed rekeys, the exchange with the lowest nonce loses and its
        // initiator deletes what it created.
        let lost = sa.collision_nonces.iter().any(|(their_ni, their_nr, _)| {
            let lowest_theirs = their_ni.min(their_nr);
            let lowest_ours = ni.min(nr.as_slice());
            lowest_ours.to_vec() < lowest_theirs.clone()
        });
        self.add_child(our_spi, chosen, new_inbound_spi, mode, None, ni, &nr, now, ChildInstall::RekeyInitiator);
        if let Some(sa) = self.sas.get_mut(&our_spi) {
            sa.collision_nonces.clear();
        }
        if lost {
            // Our new Child SA is the redundant one: delete it, keep the peer's.
            tracing::debug!("Child SA rekey collision: deleting our redundant Child SA");
            if let Some(sa) = self.sas.get_mut(&our_spi) {
                if let Some(index) = sa.child_by_inbound(new_inbound_spi) {
                    let child = sa.children.remove(index);
                    if let Some(peer) = sa.peer {
                        self.retiring.push((peer, child.inbound_spi, now + INBOUND_GRACE));
                    }
                }
            }
            self.queue(our_spi, Queued::DeleteChild(vec![new_inbound_spi]), now);
        }
        // The old Child SA goes: tell the peer, keep accepting on it briefly.
        let Some(sa) = self.sas.get_mut(&our_spi) else { return };
        let Some(peer) = sa.peer else { return };
        if let Some(index) = sa.child_by_inbound(old_inbound_spi) {
            let child = sa.children.remove(index);
            if lost {
                for other in sa.children.iter_mut() {
                    if let Some((keys, _)) = other.pending_outbound.take() {
                        self.events.push_back(Event::InstallOutbound { peer, sa: keys });
                    }
                }
            }
            self.events.push_back(Event::RemoveOutbound { peer, spi: child.outbound_spi });
            self.retiring.push((peer, child.inbound_spi, now + INBOUND_GRACE));
            self.queue(our_spi, Queued::DeleteChild(vec![old_inbound_spi]), now);
        }
    }

    fn finish_ike_rekey(
        &mut self,
        our_spi: u64,
        payloads: Vec<Payload>,
        new_spi: u64,
        ni: &[u8],
        dh: X25519KeyPair,
        now: Instant,
    ) {
        let parts = Parts::of(&payloads);
        let chosen = parts.security_association.and_then(|offer| proposal::choose_ike(offer, &self.ciphers));
        let nr = parts.nonce.map(<[u8]>::to_vec);
        let ke = parts.key_exchange.map(|ke| ke.data.clone());
        let (Some(chosen), Some(nr), Some(ke)) = (chosen, nr, ke) else {
            // Refused (a collision, or the peer is busy): try again later.
            if let Some(sa) = self.sas.get_mut(&our_spi) {
                sa.rekey_at = Some(now + RECONNECT_INTERVAL);
            }
            return;
        };
        let Ok(their_new_spi) = <[u8; 8]>::try_from(chosen.spi.as_slice()) else { return };
        let Ok(secret) = dh.agree(&ke) else { return };
        let spis = SpiPair { initiator: new_spi.to_be_bytes(), responder: their_new_spi };
        let Some(old_keys) = self.sas.get(&our_spi).and_then(|sa| sa.keys.as_ref()) else { return };
        let Ok(keys) = old_keys.rekey(Role::Initiator, chosen.cipher, &secret[..], ni, &nr, spis) else { return };
        self.move_to_new_ike_sa(our_spi, new_spi, u64::from_be_bytes(their_new_spi), true, keys, chosen.cipher, now);
        self.queue(our_spi, Queued::DeleteIke, now);
        if let Some(sa) = self.sas.get_mut(&our_spi) {
            sa.state = State::Deleting;
        }
    }

    // ----- time -----

    pub fn handle_timeout(&mut self, now: Instant) {
        let spis: Vec<u64> = self.sas.keys().copied().collect();
        for spi in spis {
            self.tick(spi, now);
        }
        for index in 0..self.peers.len() {
            if self.is_member(index) && !self.has_sa_with(index) && now >= self.peers[index].next_attempt {
                self.start_initiator(index, now);
            }
        }
        let due: Vec<(PeerIndex, u32)> =
            self.retiring.iter().filter(|(_, _, at)| *at <= now).map(|(p, s, _)| (*p, *s)).collect();
        self.retiring.retain(|(_, _, at)| *at > now);
        for (peer, spi) in due {
            self.events.push_back(Event::RemoveInbound { peer, spi });
        }
    }

    fn tick(&mut self, our_spi: u64, now: Instant) {
        let dpd = self.settings.dpd;
        let Some(sa) = self.sas.get_mut(&our_spi) else { return };
        if let Some(outstanding) = &mut sa.outstanding {
            if now >= outstanding.next_send {
                if outstanding.retransmits >= MAX_RETRANSMITS {
                    let state = sa.state;
                    tracing::warn!(remote = %sa.remote, "IKE peer does not answer; giving up on this IKE SA");
                    if state == State::Deleting {
                        self.forget(our_spi);
                    } else {
                        self.fail(our_spi, Failure::Timeout, now);
                    }
                    return;
                }
                outstanding.retransmits += 1;
                outstanding.next_send = now + RETRANSMIT_BASE * 2u32.pow(outstanding.retransmits);
                self.transmits.push_back(Transmit {
                    destination: sa.remote,
                    source_port: sa.local_port,
                    bytes: outstanding.bytes.clone(),
                });
            }
        }
        let Some(sa) = self.sas.get_mut(&our_spi) else { return };
        match sa.state {
            State::ExpectAuthRequest if now >= sa.created + HALF_OPEN_TIMEOUT => {
                self.forget(our_spi);
                return;
            }
            State::Established => {}
            _ => return,
        }
        let Some(peer) = sa.peer else { return };
        if sa.delete_at.is_some_and(|at| now >= at) {
            tracing::debug!(peer, "the peer did not delete its duplicate IKE SA; deleting it");
            self.remove_children(our_spi, now, false);
            if let Some(sa) = self.sas.get_mut(&our_spi) {
                sa.state = State::Deleting;
                sa.delete_at = None;
            }
            self.queue(our_spi, Queued::DeleteIke, now);
            return;
        }
        // Held-back outbound SAs whose DELETE did not come.
        for child in sa.children.iter_mut() {
            if child.pending_outbound.as_ref().is_some_and(|(_, at)| now >= *at) {
                if let Some((keys, _)) = child.pending_outbound.take() {
                    self.events.push_back(Event::InstallOutbound { peer, sa: keys });
                }
            }
        }
        let expired: Vec<usize> =
            sa.children.iter().enumerate().filter(|(_, c)| now >= c.expire_at).map(|(i, _)| i).collect();
        for index in expired.into_iter().rev() {
            let child = sa.children.remove(index);
            tracing::warn!(spi = format_args!("{:#010x}", child.inbound_spi), "Child SA expired before it was rekeyed");
            self.events.push_back(Event::RemoveOutbound { peer, spi: child.outbound_spi });
            self.events.push_back(Event::RemoveInbound { peer, spi: child.inbound_spi });
        }
        let due_children: Vec<u32> =
            sa.children.iter().filter(|c| !c.rekeyed && now >= c.rekey_at).map(|c| c.inbound_spi).collect();
        let ike_due = sa.rekey_at.is_some_and(|at| now >= at);
        let idle = now >= sa.last_heard + dpd && sa.outstanding.is_none() && sa.queued.is_empty();
        for spi in due_children {
            self.queue(our_spi, Queued::RekeyChild(spi), now);
        }
        if ike_due {
            if let Some(sa) = self.sas.get_mut(&our_spi) {
                sa.rekey_at = None;
            }
            self.queue(our_spi, Queued::RekeyIke, now);
        }
        if idle {
            if let Some(sa) = self.sas.get_mut(&our_spi) {
                sa.last_heard = now;
            }
            self.queue(our_spi, Queued::Liveness, now);
        }
    }

    /// An attempt or an IKE SA failed: report, remove, and schedule the next attempt.
    fn fail(&mut self, our_spi: u64, failure: Failure, now: Instant) {
        let Some(sa) = self.sas.get(&our_spi) else { return };
        let peer = sa.peer.or(sa.initiator_peer());
        let from = sa.remote;
        self.remove_children(our_spi, now, true);
        self.forget(our_spi);
        if let Some(peer) = peer {
            let delay = match failure {
                Failure::Timeout => RECONNECT_INTERVAL,
                _ => FAILURE_BACKOFF,
            };
            self.peers[peer].next_attempt = now + delay;
        }
        self.events.push_back(Event::Failed { peer, from, failure });
    }

    fn forget(&mut self, our_spi: u64) {
        self.sas.remove(&our_spi);
        self.half_open.retain(|_, spi| *spi != our_spi);
    }
}

/// How a new Child SA's outbound half is put to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildInstall {
    /// Made in IKE_AUTH: both directions at once.
    Both,
    /// We asked for the rekey: we send on it at once.
    RekeyInitiator,
    /// The peer asked: we send on it once the peer deleted the old one.
    RekeyResponder,
}

impl IkeSa {
    /// Whether we initiated the exchange that makes this Child SA.
    fn initiator_of_exchange(&self, install: ChildInstall) -> bool {
        match install {
            ChildInstall::Both => self.initiator,
            ChildInstall::RekeyInitiator => true,
            ChildInstall::RekeyResponder => false,
        }
    }

    /// The peer of an initiator SA before authentication (it is always known for those).
    fn initiator_peer(&self) -> Option<PeerIndex> {
        if self.initiator {
            self.peer
        } else {
            None
        }
    }

    fn belongs_to(&self, peer: PeerIndex) -> bool {
        self.peer == Some(peer)
    }
}

fn split_keys(keys: DerivedChildKeys, role: Role) -> (crate::esp::KeyMaterial, crate::esp::KeyMaterial) {
    let (outbound, inbound) = keys.into_directions(role);
    (inbound, outbound)
}

/// The payloads a message has at most one of, found in one pass.
#[derive(Default)]
struct Parts<'a> {
    security_association: Option<&'a SecurityAssociation>,
    key_exchange: Option<&'a KeyExchange>,
    nonce: Option<&'a [u8]>,
    identification_initiator: Option<&'a Identification>,
    identification_responder: Option<&'a Identification>,
    authentication: Option<&'a Authentication>,
}

impl<'a> Parts<'a> {
    fn of(payloads: &'a [Payload]) -> Parts<'a> {
        let mut parts = Parts::default();
        for payload in payloads {
            match payload {
                Payload::SecurityAssociation(sa) => {
                    parts.security_association = parts.security_association.or(Some(sa))
                }
                Payload::KeyExchange(ke) => parts.key_exchange = parts.key_exchange.or(Some(ke)),
                Payload::Nonce(nonce) => parts.nonce = parts.nonce.or(Some(&nonce.data)),
                Payload::IdentificationInitiator(id) => {
                    parts.identification_initiator = parts.identification_initiator.or(Some(id))
                }
                Payload::IdentificationResponder(id) => {
                    parts.identification_responder = parts.identification_responder.or(Some(id))
                }
                Payload::Authentication(auth) => parts.authentication = parts.authentication.or(Some(auth)),
                _ => {}
            }
        }
        parts
    }
}

/// INVALID_KE_PAYLOAD's data: the one group we do.
fn our_group() -> Vec<u8> {
    diffie_hellman::CURVE25519.to_be_bytes().to_vec()
}

fn notifies(payloads: &[Payload]) -> impl Iterator<Item = &Notify> {
    payloads.iter().filter_map(|p| match p {
        Payload::Notify(n) => Some(n),
        _ => None,
    })
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({} IKE SAs)", self.sas.len())
    }
}

#[cfg(test)]
#[path = "endpoint_tests.rs"]
mod tests;
