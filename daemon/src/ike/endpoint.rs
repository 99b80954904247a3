//! The IKEv2 endpoint of one node: it demultiplexes datagrams to IKE SAs by SPI, applies mesh
//! policy across the IKE SAs of a peer, and queues what they send and report.
//!
//! The driver calls [`Endpoint::handle`] with each received datagram and
//! [`Endpoint::handle_timeout`] when [`Endpoint::poll_timeout`] says, always passing the current
//! time; it sends what [`Endpoint::poll_transmit`] returns and applies what
//! [`Endpoint::poll_event`] returns to the SADB. Nothing here reads a clock or touches a socket.
//!
//! One IKE SA's machine is in [`sa`](super::sa) (with IKE_SA_INIT and IKE_AUTH in
//! [`handshake`](super::handshake), Child SAs in [`child`](super::child), IKE SA rekeys in
//! [`rekey`](super::rekey)); the rules between IKE SAs of a peer are in
//! [`policy`](super::policy), the half-open limit in [`cookie_gate`](super::cookie_gate).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::context::Context;
use super::cookie_gate::{Admission, CookieGate, INIT_REQUEST_MAX_LEN};
use super::crypto::CryptoError;
use super::handover::{self, IkeHandover, IkeSaRecord, RetiringRecord};
use super::handshake::{answer_init_request, reply_unprotected, AuthVerdict, Connecting, FirstChild, InitResponse};
use super::identity;
use super::message::ids::{exchange, notify};
use super::message::{parse_payloads, Header, Message, Notify, Payload};
use super::parts::{has_notify, notifies, Parts};
use super::policy::{
    beats, initiation_delay, retry_delay, Origin, PeerState, DUPLICATE_GRACE, HANDSHAKES_IN_FLIGHT, RECONNECT_INTERVAL,
};
use super::rng::{self, Rng, SystemRng};
use super::sa::{IkeSa, Next, Phase};
use super::status::{IkeCounters, IkeSaStatus, IkeState};
use super::timers::Timers;
use super::types::{Event, Failure, IkeSettings, LocalError, PeerIndex, PeerSettings, Refusal, Transmit};
use super::window::{Queued, Resend};
use super::{IKE_PORT, NAT_T_PORT};

/// How long an endpoint that handed its IKE SAs over initiates nothing (its process exits).
const HANDED_OVER_QUIET: std::time::Duration = std::time::Duration::from_secs(3600);
/// An IKE SA that heard from its peer within this long needs no liveness check to know it lives.
const RECENTLY_HEARD: std::time::Duration = std::time::Duration::from_secs(2);
/// At most this many rounds of due timers per `handle_timeout` (see there).
const TIMEOUT_ROUNDS: usize = 4;

pub struct Endpoint {
    cx: Context,
    /// IKE SAs past IKE_SA_INIT, by our SPI.
    sas: HashMap<u64, IkeSa>,
    /// Our IKE_SA_INIT requests waiting for their response, by our SPI.
    connecting: HashMap<u64, Connecting>,
    gate: CookieGate,
    /// The deadline of every IKE SA, attempt and retirement; kept up to date by [`settle`](Self::settle).
    timers: Timers<Timer>,
    /// IKE SAs (ours SPIs, also connecting ones) and peers whose deadlines may have changed
    /// since the last `settle`.
    touched: HashSet<u64>,
    touched_peers: HashSet<PeerIndex>,
    /// Peers whose attempt came due while [`HANDSHAKES_IN_FLIGHT`] of ours were under way, in
    /// the order they came due; they have no attempt timer meanwhile.
    waiting: VecDeque<PeerIndex>,
}

/// What a deadline in [`Endpoint::timers`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    /// Inbound SAs to retire.
    Retiring,
    /// The next attempt to reach a peer with no IKE SA.
    Attempt(PeerIndex),
    /// An IKE SA or a connecting initiator, by our SPI.
    Sa(u64),
}

impl Endpoint {
    /// An endpoint that draws SPIs and nonces from the system RNG.
    pub fn new(settings: IkeSettings, now: Instant) -> Result<Self, CryptoError> {
        Endpoint::with_rng(settings, Box::new(SystemRng::new()), now)
    }

    /// An endpoint that draws SPIs, nonces and jitter from `rng`.
    pub fn with_rng(settings: IkeSettings, rng: Box<dyn Rng>, now: Instant) -> Result<Self, CryptoError> {
        let settings_peers = settings.peers.len();
        let mut endpoint = Endpoint {
            cx: Context::new(settings, rng, now),
            sas: HashMap::new(),
            connecting: HashMap::new(),
            gate: CookieGate::new(now)?,
            timers: Timers::new(),
            touched: HashSet::new(),
            touched_peers: (0..settings_peers).collect(),
            waiting: VecDeque::new(),
        };
        endpoint.gate.expect_peers(settings_peers);
        for peer in 0..settings_peers {
            endpoint.cx.peers[peer].next_attempt = now + endpoint.initiation_delay(peer);
        }
        endpoint.settle();
        Ok(endpoint)
    }

    /// Aligns the liveness checks to a grid through `origin`: the driver passes a whole second
    /// of the wall clock, so that nodes that keep time check each other at the same moments.
    pub fn align_liveness_checks(&mut self, origin: Instant) {
        self.cx.liveness_grid = origin;
        self.touched.extend(self.sas.keys().copied());
        self.settle();
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.cx.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.cx.events.pop_front()
    }

    /// Hands the established IKE SAs with nothing under way to the meshd that takes over
    /// (`crate::upgrade`): they leave this endpoint, which initiates nothing from now on.
    pub fn hand_over(&mut self, now: Instant) -> IkeHandover {
        let ready: Vec<(u64, IkeSaRecord)> =
            self.sas.iter().filter_map(|(spi, sa)| sa.export(&self.cx, now).map(|record| (*spi, record))).collect();
        let mut sas = Vec::with_capacity(ready.len());
        for (spi, record) in ready {
            self.sas.remove(&spi);
            sas.push(record);
        }
        let retiring = std::mem::take(&mut self.cx.retiring)
            .into_iter()
            .filter_map(|(peer, spi, at)| {
                let peer = self.cx.settings.peers.get(peer)?.address;
                Some(RetiringRecord { peer, spi, in_: handover::until(at, now) })
            })
            .collect();
        for state in &mut self.cx.peers {
            state.next_attempt = now + HANDED_OVER_QUIET;
        }
        IkeHandover { sas, retiring }
    }

    /// Takes the IKE SAs a running meshd handed over (or, after a failed handover, back);
    /// returns how many. Peers without one are tried again after the reconnect interval.
    pub fn take_over(&mut self, handover: &IkeHandover, now: Instant) -> Result<usize, CryptoError> {
        let peers: Vec<std::net::IpAddr> = self.cx.settings.peers.iter().map(|peer| peer.address).collect();
        let index_of = |address| peers.iter().position(|peer| *peer == address);
        let mut taken = 0;
        for record in &handover.sas {
            let Some(peer) = index_of(record.peer) else { continue };
            let sa = IkeSa::restore(record, peer, now)?;
            if let Some(state) = self.cx.peers.get_mut(peer) {
                state.answers_probes = record.answers_probes;
            }
            self.cx.spis_in_use.insert(sa.our_spi);
            self.sas.insert(sa.our_spi, sa);
            taken += 1;
        }
        for retiring in &handover.retiring {
            if let Some(peer) = index_of(retiring.peer) {
                self.cx.retiring.push((peer, retiring.spi, now + retiring.in_));
            }
        }
        for state in &mut self.cx.peers {
            state.next_attempt = now + RECONNECT_INTERVAL;
        }
        Ok(taken)
    }

    /// Removes the inbound Child SA `spi` of `peer` at `at` (one whose IKE SA did not cross
    /// in a handover: no IKE SA here owns it).
    pub fn retire_inbound(&mut self, peer: PeerIndex, spi: u32, at: Instant) {
        self.cx.retiring.push((peer, spi, at));
    }

    /// Counters of refused messages.
    pub fn counters(&self) -> IkeCounters {
        self.cx.counters
    }

    /// The earliest time `handle_timeout` has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The IKE SAs, for `ikectl`.
    pub fn status(&self, now: Instant) -> Vec<IkeSaStatus> {
        let connecting = self.connecting.values().map(|c| IkeSaStatus {
            peer: Some(c.peer),
            initiator_spi: c.our_spi,
            responder_spi: 0,
            we_initiated: true,
            state: IkeState::ExpectInitResponse,
            cipher: None,
            remote: c.remote,
            nat_detected: false,
            udp_encap: false,
            established_secs: None,
            rekey_in_secs: None,
            children: Vec::new(),
            peer_auth: None,
        });
        let mut list: Vec<IkeSaStatus> = self.sas.values().map(|sa| sa.status(now)).chain(connecting).collect();
        list.sort_by_key(|s| (s.peer, s.initiator_spi));
        list
    }

    /// Establishes an IKE SA with `peer` now, unless one exists or is being made (tests and the
    /// fuzz target; the daemon lets the mesh policy's timers decide).
    #[cfg(any(test, feature = "internals"))]
    pub fn connect(&mut self, peer: PeerIndex, now: Instant) {
        if self.cx.is_member(peer) && !self.has_sa_with(peer) {
            self.start_initiator(peer, now);
        }
        self.settle();
    }

    /// ESP arrived for an SPI we do not know from `peer`: our state and the peer's differ.
    /// Without an IKE SA we make one; with one, we check that the peer is alive, unless it
    /// spoke on that IKE SA a moment ago: then it is, and the ESP most likely raced our
    /// installing the Child SA (the responder's first packets overtake its IKE_AUTH response
    /// to the initiator's datapath), which asked once per pair at every start.
    pub fn unknown_spi_from(&mut self, peer: PeerIndex, now: Instant) {
        if !self.has_sa_with(peer) {
            if self.cx.peers.get(peer).is_some_and(|p| !p.removed && now >= p.next_attempt) {
                self.start_initiator(peer, now);
            }
        } else {
            for spi in self.established_with(peer) {
                let heard_lately =
                    self.sas.get(&spi).is_some_and(|sa| now.saturating_duration_since(sa.last_heard) < RECENTLY_HEARD);
                if !heard_lately {
                    self.queue(spi, Queued::Liveness, now);
                }
            }
        }
        self.settle();
    }

    /// Rekeys the Child SA that sends on `outbound_spi` now (its sequence numbers run out).
    pub fn rekey_child(&mut self, peer: PeerIndex, outbound_spi: u32, now: Instant) {
        let found = self.sas.iter().find_map(|(spi, sa)| {
            let inbound = sa.children.rekeyable_by_outbound(outbound_spi)?;
            (sa.peer == Some(peer) && sa.is_established()).then_some((*spi, inbound))
        });
        if let Some((our_spi, inbound_spi)) = found {
            self.queue(our_spi, Queued::RekeyChild(inbound_spi), now);
        }
        self.settle();
    }

    /// The datapath took authentic ESP from `peer` at `remote`, a new NAT mapping (the SA
    /// manager checked that the peer is behind NAT): its IKE SAs on UDP 4500 follow, as they would
    /// for an IKE message from there (RFC 7296 §2.23).
    pub fn peer_moved(&mut self, peer: PeerIndex, remote: SocketAddr) {
        for sa in self.sas.values_mut().filter(|sa| sa.peer == Some(peer) && sa.local_port == NAT_T_PORT) {
            sa.remote = remote;
        }
    }

    /// The underlay changed (a link or route came up): without a live IKE SA with `peer`,
    /// negotiate now instead of at the next timed attempt or retransmission.
    pub fn retry_now(&mut self, peer: PeerIndex, now: Instant) {
        if !self.cx.is_member(peer) || self.sas.values().any(|sa| sa.peer == Some(peer) && sa.is_live()) {
            return;
        }
        self.forget_connecting_with(peer, now);
        self.start_initiator(peer, now);
        // The new attempt's retransmissions and the forgotten one's deadline, in the timers.
        self.settle();
    }

    /// `ikectl sa flush`: deletes every SA with `peer` (telling the peer) and negotiates anew.
    /// The new attempt follows the rule of who initiates and waits its turn (see
    /// [`policy`](super::policy)): a flush on every node at once negotiates each pair once.
    pub fn flush(&mut self, peer: PeerIndex, now: Instant) {
        self.delete_sas_with(peer, now);
        if peer < self.cx.peers.len() {
            let delay = self.initiation_delay(peer);
            self.cx.peers[peer].next_attempt = now + delay;
        }
        self.touched_peers.insert(peer);
        self.start_waiting(now);
        self.settle();
    }

    /// A reload adds a peer; returns its index. Negotiation starts as for the peers of `new`.
    pub fn add_peer(&mut self, peer: PeerSettings, now: Instant) -> PeerIndex {
        self.cx.peers.push(PeerState::new(&self.cx.settings, &peer, now));
        self.cx.settings.peers.push(peer);
        let index = self.cx.peers.len() - 1;
        self.cx.peers[index].next_attempt = now + self.initiation_delay(index);
        self.gate.expect_peers(self.cx.settings.peers.len());
        self.touched_peers.insert(index);
        self.settle();
        index
    }

    /// A reload removes a peer: its SAs are deleted (telling it) and it is never negotiated with
    /// again; IKE messages from its address are then refused like those of any stranger.
    pub fn remove_peer(&mut self, peer: PeerIndex, now: Instant) {
        self.delete_sas_with(peer, now);
        if let Some(state) = self.cx.peers.get_mut(peer) {
            state.removed = true;
        }
        self.touched_peers.insert(peer);
        self.start_waiting(now);
        self.settle();
    }

    /// A reload changes the credentials or SA settings (of `settings.peers` only the public keys
    /// are taken: peers come and go with `add_peer` and `remove_peer`). SAs made from now on use
    /// them; the reload re-keys the peers whose SAs must change.
    pub fn reconfigure(&mut self, mut settings: IkeSettings) {
        let mut peers = std::mem::take(&mut self.cx.settings.peers);
        identity::update_peer_keys(&mut peers, &settings.peers);
        settings.peers = peers;
        self.cx.ciphers = settings.ciphers();
        self.cx.settings = settings;
        // The liveness interval may differ now.
        self.touched.extend(self.sas.keys());
        self.settle();
    }

    /// The diagnostic query keys of the established IKE SAs with `peer`, newest first.
    pub fn query_keys(&self, peer: PeerIndex) -> Vec<Zeroizing<Vec<u8>>> {
        let mut sas: Vec<&IkeSa> =
            self.sas.values().filter(|sa| sa.peer == Some(peer) && sa.is_established()).collect();
        sas.sort_by_key(|sa| std::cmp::Reverse(sa.phase.established_since()));
        sas.iter().filter_map(|sa| sa.keys.query_key().ok()).collect()
    }

    /// `peer` announced that it answers meshd's path-MTU probes (docs/mtu.md).
    pub fn answers_probes(&self, peer: PeerIndex) -> bool {
        self.cx.peers.get(peer).is_some_and(|state| state.answers_probes)
    }

    // ----- receiving -----

    /// Handles one received IKE message (without the non-ESP marker) that arrived from `from`
    /// on our port `local_port`.
    pub fn handle(&mut self, datagram: &[u8], from: SocketAddr, local_port: u16, now: Instant) {
        self.receive(datagram, from, local_port, now);
        self.start_waiting(now);
        self.settle();
    }

    fn receive(&mut self, datagram: &[u8], from: SocketAddr, local_port: u16, now: Instant) {
        let Ok(message) = Message::parse(datagram) else {
            self.cx.refuse(Refusal::Malformed, from);
            return;
        };
        let header = message.header;
        if header.exchange_type == exchange::IKE_SA_INIT && !header.response && header.responder_spi == 0 {
            self.handle_init_request(&message, datagram, (from, local_port), now);
            return;
        }
        // Our SPI is the initiator's when the sender is not the original initiator.
        let our_spi = if header.initiator { header.responder_spi } else { header.initiator_spi };
        if self.sas.contains_key(&our_spi) || self.connecting.contains_key(&our_spi) {
            self.touched.insert(our_spi);
        }
        if header.exchange_type == exchange::IKE_SA_INIT {
            if header.response && self.connecting.contains_key(&our_spi) {
                self.handle_init_response(our_spi, &message, datagram, (from, local_port), now);
            } else if header.response && self.sas.get(&our_spi).is_some_and(|sa| sa.initiator) {
                // A late copy of the answer to our retransmitted request: we have moved on.
                tracing::debug!(%from, "IKE_SA_INIT response for an IKE SA past it dropped");
            } else if self.sas.contains_key(&our_spi) || self.connecting.contains_key(&our_spi) {
                self.cx.refuse(Refusal::Unexpected, from);
            } else {
                self.cx.refuse(Refusal::UnknownSpi, from);
            }
            return;
        }
        let outbound_allowed = self.outbound_allowed(our_spi);
        let their_spi = if header.initiator { header.initiator_spi } else { header.responder_spi };
        let Some(sa) = self.sas.get_mut(&our_spi).filter(|sa| sa.their_spi == their_spi) else {
            self.cx.refuse(Refusal::UnknownSpi, from);
            return;
        };
        let Some(encrypted) = message.encrypted else {
            self.cx.refuse(Refusal::Malformed, from);
            return;
        };
        let Ok(inner) = sa.keys.opener().open(encrypted.associated_data, encrypted.body) else {
            self.cx.refuse(Refusal::Unauthentic, from);
            return;
        };
        let Ok(payloads) = parse_payloads(encrypted.first_payload, &inner) else {
            self.cx.refuse(Refusal::Malformed, from);
            return;
        };
        if header.response {
            if let Some(round_trip) = sa.window.round_trip(header.message_id, now) {
                self.cx.rtt.answered(round_trip);
            }
        }
        let arrival = (from, local_port);
        let next = if header.response {
            sa.handle_response(&mut self.cx, header, payloads, outbound_allowed, arrival, now)
        } else {
            sa.handle_request(&mut self.cx, header, payloads, arrival, now)
        };
        self.apply(our_spi, next, now);
    }

    fn handle_init_request(
        &mut self,
        message: &Message<'_>,
        datagram: &[u8],
        (from, local_port): (SocketAddr, u16),
        now: Instant,
    ) {
        let header = message.header;
        if datagram.len() > INIT_REQUEST_MAX_LEN {
            self.cx.refuse(Refusal::Malformed, from);
            return;
        }
        if let Some(our_spi) = self.gate.half_open_for(from, header.initiator_spi) {
            // A retransmission: only the same request, byte for byte, gets the same response,
            // and not more often than the initiator retransmits (else a forged header, or a
            // replay, draws a larger answer to whoever it names: a reflector).
            let response = match self.sas.get(&our_spi).map(|sa| &sa.phase) {
                Some(Phase::ExpectAuthRequest(handshake)) if handshake.init_request == datagram => {
                    Some(handshake.init_response.clone())
                }
                _ => None,
            };
            match response {
                Some(bytes) if self.gate.resend_due(from, header.initiator_spi, now) => {
                    self.cx.send(from, local_port, bytes)
                }
                Some(_) => {}
                None => self.cx.refuse(Refusal::Unexpected, from),
            }
            return;
        }
        if self.sas.values().any(|sa| !sa.initiator && sa.their_spi == header.initiator_spi && sa.remote.ip() == from.ip())
        {
            // A late retransmission of a request we answered and whose IKE SA went on (it
            // authenticated): a new half-open SA for it would only wait out its timeout.
            tracing::debug!(%from, "IKE_SA_INIT request for an IKE SA past it dropped");
            return;
        }
        let payloads = &message.payloads;
        let Some(ni) = Parts::of(payloads).nonce else {
            self.cx.refuse(Refusal::Malformed, from);
            return;
        };
        let cookie = notifies(payloads).find(|n| n.notify_type == notify::COOKIE).map(|n| n.data.as_slice());
        let admission = self.gate.admit(from, header.initiator_spi, ni, cookie, now);
        let admission = admission.map_err(|_| Failure::Local(LocalError::Crypto("rotate the cookie secret")));
        let answered = match admission {
            Ok(Admission::Admit) => self.cx.fresh_ike_spi().map_err(Failure::from).and_then(|our_spi| {
                answer_init_request(&mut self.cx, message, datagram, (from, local_port), our_spi, now)
            }),
            Ok(Admission::DemandCookie(cookie)) => {
                self.cx.counters.cookies_sent += 1;
                reply_unprotected(&mut self.cx, header, Notify::new(notify::COOKIE, cookie), from, local_port);
                return;
            }
            Ok(Admission::Full) => return self.cx.refuse(Refusal::HalfOpenFull, from),
            Err(failure) => Err(failure),
        };
        match answered {
            Ok(Some(sa)) => {
                self.gate.opened(from, header.initiator_spi, sa.our_spi, now);
                self.insert(sa);
            }
            Ok(None) => {}
            Err(failure) => {
                // Our own failure (RNG, crypto library), not the sender's: no peer's state
                // changes for an unauthenticated request.
                tracing::error!(%from, "IKE_SA_INIT not answered: {failure}");
                self.cx.events.push_back(Event::Failed { peer: None, from, failure });
            }
        }
    }

    fn handle_init_response(
        &mut self,
        our_spi: u64,
        message: &Message<'_>,
        datagram: &[u8],
        arrival: (SocketAddr, u16),
        now: Instant,
    ) {
        let Some(connecting) = self.connecting.get_mut(&our_spi) else { return };
        let round_trip = connecting.sending.round_trip(now);
        let answer = match connecting.read_response(&mut self.cx, message, now) {
            Ok(InitResponse::Waiting) => return,
            Ok(InitResponse::Failed(failure)) => return self.fail(our_spi, failure, now),
            Err(error) => return self.fail(our_spi, error.into(), now),
            Ok(answer) => answer,
        };
        self.cx.rtt.answered(round_trip);
        let Some(connecting) = self.connecting.remove(&our_spi) else { return };
        let peer = connecting.peer;
        let Some(sa) = connecting.into_sa(&mut self.cx, answer, message, datagram, arrival, now) else {
            // Refused: the attempt is over; the next one is already scheduled.
            self.cx.spis_in_use.remove(&our_spi);
            return;
        };
        let initial_contact = self.established_with(peer).is_empty();
        self.insert(sa);
        self.run(our_spi, now, |sa, cx| sa.send_auth_request(cx, initial_contact, now).map(|()| Next::Stay));
    }

    /// Responder: IKE_AUTH. A peer that authenticates with INITIAL_CONTACT restarted: its
    /// older IKE SAs go before the new one is established.
    fn complete_auth_request(&mut self, spi: u64, request: Header, payloads: Vec<Payload>, now: Instant) {
        let Some(sa) = self.sas.get_mut(&spi) else { return };
        let (peer, peer_auth) = match sa.authenticate_request(&mut self.cx, request, &payloads) {
            Ok(AuthVerdict::Authenticated(peer, peer_auth)) => (peer, peer_auth),
            Ok(AuthVerdict::Dropped) => return,
            Ok(AuthVerdict::Rejected { peer, failure }) => {
                let from = sa.remote;
                self.cx.events.push_back(Event::Failed { peer, from, failure });
                return self.forget(spi, now);
            }
            Err(failure) => return self.fail(spi, failure, now),
        };
        if has_notify(&payloads, notify::INITIAL_CONTACT) {
            self.drop_stale_sas(peer, spi, now);
        }
        let Some(sa) = self.sas.get_mut(&spi) else { return };
        match sa.answer_auth_request(&mut self.cx, (peer, peer_auth), request, &payloads, now) {
            Ok(first) => self.established(spi, peer, first, now),
            Err(failure) => self.fail(spi, failure, now),
        }
    }

    /// Initiator: the IKE_AUTH response.
    fn complete_auth_response(&mut self, spi: u64, payloads: Vec<Payload>, inbound_spi: u32, now: Instant) {
        let Some(sa) = self.sas.get_mut(&spi) else { return };
        let Some(peer) = sa.peer else { return };
        match sa.accept_auth_response(&mut self.cx, &payloads, inbound_spi, now) {
            Ok(first) => self.established(spi, peer, first, now),
            Err(failure) => self.fail(spi, failure, now),
        }
        self.run(spi, now, |sa, cx| sa.send_queued(cx, now).map(|()| Next::Stay));
    }

    /// The IKE SA is authenticated: the driver is told, duplicates are resolved, and the first
    /// Child SA is installed (sending only if this IKE SA won).
    fn established(&mut self, spi: u64, peer: PeerIndex, first: FirstChild, now: Instant) {
        self.gate.closed(spi);
        if let Some(sa) = self.sas.get(&spi) {
            let address = self.cx.peer_address(peer);
            tracing::info!(peer = %address, remote = %sa.remote, nat = sa.nat_detected, "IKE SA established");
        }
        self.cx.events.push_back(Event::Established { peer });
        // Our own IKE_SA_INIT to this peer, still unanswered (its meshd was not running when it
        // left), is redundant now: retransmitted on, it ends in a false "no answer" 15 s later.
        self.forget_connecting_with(peer, now);
        self.resolve_duplicates(peer, now);
        if !self.sas.get(&spi).is_some_and(IkeSa::is_established) {
            // It lost to a duplicate and is being deleted already: a Child SA installed now
            // would outlive it (the peer drops its half with the IKE SA).
            return;
        }
        let outbound_allowed = self.outbound_allowed(spi);
        self.run(spi, now, |sa, cx| sa.install_first_child(cx, first, outbound_allowed, now).map(|()| Next::Stay));
    }

    // ----- mesh policy across the IKE SAs of a peer -----

    /// Two IKE SAs made by simultaneous initiation: the loser (see [`beats`]) is deleted by
    /// its initiator; if that is the peer, we give it [`DUPLICATE_GRACE`] to do so.
    fn resolve_duplicates(&mut self, peer: PeerIndex, now: Instant) {
        let mut established: Vec<(u64, (Origin, Instant), bool)> = self
            .sas
            .iter()
            .filter(|(_, sa)| sa.peer == Some(peer) && sa.is_established() && sa.origin != Origin::Rekey)
            .map(|(spi, sa)| (*spi, (sa.origin, sa.created), sa.initiator))
            .collect();
        if established.len() < 2 {
            return;
        }
        established.sort_by(|a, b| match (beats(a.1, b.1), beats(b.1, a.1)) {
            (true, _) => std::cmp::Ordering::Less,
            (_, true) => std::cmp::Ordering::Greater,
            _ => std::cmp::Ordering::Equal,
        });
        for (spi, _, we_initiated) in established.into_iter().skip(1) {
            if we_initiated {
                tracing::debug!(peer, "deleting a duplicate IKE SA from simultaneous initiation");
                self.run(spi, now, |sa, cx| {
                    sa.remove_children(cx, now, false);
                    sa.start_deleting(cx, now).map(|()| Next::Stay)
                });
            } else if let Some(sa) = self.sas.get_mut(&spi) {
                self.touched.insert(spi);
                sa.delete_at.get_or_insert(now + DUPLICATE_GRACE);
            }
        }
    }

    /// Whether the Child SAs of IKE SA `spi` may carry our outbound traffic: not when it lost
    /// duplicate resolution to another IKE SA with the same peer.
    fn outbound_allowed(&self, spi: u64) -> bool {
        let Some(sa) = self.sas.get(&spi) else { return false };
        !self.sas.iter().any(|(other_spi, other)| {
            *other_spi != spi
                && other.peer == sa.peer
                && other.is_established()
                && beats((other.origin, other.created), (sa.origin, sa.created))
        })
    }

    /// INITIAL_CONTACT: the peer restarted; IKE SAs made before `current` are stale.
    fn drop_stale_sas(&mut self, peer: PeerIndex, current: u64, now: Instant) {
        let Some(created) = self.sas.get(&current).map(|sa| sa.created) else { return };
        let stale: Vec<u64> = self
            .sas
            .iter()
            .filter(|(spi, sa)| {
                **spi != current
                    && sa.peer == Some(peer)
                    && sa.created < created
                    && !matches!(sa.phase, Phase::ExpectAuthRequest(_) | Phase::ExpectAuthResponse(_))
            })
            .map(|(spi, _)| *spi)
            .collect();
        for spi in stale {
            tracing::info!(peer = %self.cx.peer_address(peer), "INITIAL_CONTACT: dropping the peer's old IKE SA");
            if let Some(sa) = self.sas.get_mut(&spi) {
                sa.remove_children(&mut self.cx, now, false);
            }
            self.forget(spi, now);
        }
    }

    fn has_sa_with(&self, peer: PeerIndex) -> bool {
        self.sas.values().any(|sa| sa.peer == Some(peer) && sa.is_live())
            || self.connecting.values().any(|c| c.peer == peer)
    }

    fn established_with(&self, peer: PeerIndex) -> Vec<u64> {
        self.sas.iter().filter(|(_, sa)| sa.peer == Some(peer) && sa.is_established()).map(|(spi, _)| *spi).collect()
    }

    /// Deletes every SA with `peer`, telling the peer where an IKE SA is up.
    fn delete_sas_with(&mut self, peer: PeerIndex, now: Instant) {
        self.forget_connecting_with(peer, now);
        let spis: Vec<u64> = self.sas.iter().filter(|(_, sa)| sa.peer == Some(peer)).map(|(spi, _)| *spi).collect();
        for spi in spis {
            self.run(spi, now, |sa, cx| {
                sa.remove_children(cx, now, true);
                if !sa.is_established() {
                    return Ok(Next::Forget);
                }
                // The DELETE goes out on its own; the IKE SA is forgotten when it is answered
                // (or the peer is gone).
                sa.window.clear();
                sa.start_deleting(cx, now).map(|()| Next::Stay)
            });
        }
    }

    /// Ends our handshakes with `peer` whose IKE_SA_INIT is not answered yet, without a word.
    fn forget_connecting_with(&mut self, peer: PeerIndex, now: Instant) {
        let connecting: Vec<u64> = self.connecting.values().filter(|c| c.peer == peer).map(|c| c.our_spi).collect();
        for spi in connecting {
            self.forget(spi, now);
        }
    }

    /// Our handshakes under way as initiator whose IKE_SA_INIT or IKE_AUTH request is out and
    /// not yet retransmitted. One the peer did not answer within the timeout (it is not running
    /// yet, or it is gone) no longer holds a place: it costs nothing while it waits, and peers
    /// that do answer must not wait behind it.
    fn handshakes_in_flight(&self) -> usize {
        let authenticating = self
            .sas
            .values()
            .filter(|sa| {
                sa.initiator && matches!(sa.phase, Phase::ExpectAuthResponse(_)) && sa.window.awaiting_first_answer()
            })
            .count();
        let connecting = self.connecting.values().filter(|c| !c.sending.retransmitted()).count();
        connecting + authenticating
    }

    /// Initiates with `peer` now if fewer than [`HANDSHAKES_IN_FLIGHT`] are under way, else
    /// puts it in line.
    fn attempt(&mut self, peer: PeerIndex, now: Instant) {
        if self.handshakes_in_flight() < HANDSHAKES_IN_FLIGHT {
            self.start_initiator(peer, now);
        } else if !self.waiting.contains(&peer) {
            self.waiting.push_back(peer);
        }
    }

    /// Starts the peers in line, in order, while there is room; those that got an IKE SA
    /// meanwhile (the peer initiated) leave the line.
    fn start_waiting(&mut self, now: Instant) {
        while !self.waiting.is_empty() && self.handshakes_in_flight() < HANDSHAKES_IN_FLIGHT {
            let Some(peer) = self.waiting.pop_front() else { break };
            self.touched_peers.insert(peer);
            if self.cx.is_member(peer) && !self.has_sa_with(peer) {
                self.start_initiator(peer, now);
            }
        }
    }

    /// When to initiate with `peer` after the pair lost its IKE SA (see [`initiation_delay`]).
    fn initiation_delay(&mut self, peer: PeerIndex) -> Duration {
        let (local, address) = (self.cx.settings.local, self.cx.peer_address(peer));
        // Jitter only, drawn only where it counts: a failing RNG leaves none.
        let jitter = match local > address {
            true => rng::bytes::<2>(self.cx.rng.as_mut()).map_or(0.0, |b| f64::from(u16::from_be_bytes(b)) / 65536.0),
            false => 0.0,
        };
        initiation_delay(local, address, self.cx.settings.peers.len(), jitter)
    }

    fn start_initiator(&mut self, peer: PeerIndex, now: Instant) {
        let Some(address) = self.cx.settings.peers.get(peer).map(|p| p.address) else { return };
        let started = self
            .cx
            .fresh_ike_spi()
            .map_err(Failure::from)
            .and_then(|our_spi| Connecting::start(&mut self.cx, peer, our_spi, now));
        match started {
            Ok(connecting) => {
                self.cx.peers[peer].next_attempt = now + RECONNECT_INTERVAL;
                self.touched.insert(connecting.our_spi);
                self.cx.spis_in_use.insert(connecting.our_spi);
                self.connecting.insert(connecting.our_spi, connecting);
            }
            Err(failure) => {
                tracing::error!(%address, "cannot start IKE with the peer: {failure}");
                self.cx.peers[peer].next_attempt = now + retry_delay(&failure);
                self.touched_peers.insert(peer);
                let from = SocketAddr::new(address, IKE_PORT);
                self.cx.events.push_back(Event::Failed { peer: Some(peer), from, failure });
            }
        }
    }

    // ----- time -----

    /// Does what is due at `now`: only the IKE SAs, attempts and retirements whose deadlines
    /// passed are visited.
    pub fn handle_timeout(&mut self, now: Instant) {
        // What a due timer does can make another one due at once: when the last live IKE SA
        // with a peer goes, the next attempt may be `now` or already past (`initiation_delay`
        // is zero for the lower address). Each round handles those too, so that the driver is
        // never asked to wake again at once; a round only starts handshakes (their deadlines lie
        // ahead) or forgets SAs, so few are ever needed.
        for _ in 0..TIMEOUT_ROUNDS {
            self.handle_due_timers(now);
            if self.timers.next().is_none_or(|at| at > now) {
                break;
            }
        }
    }

    fn handle_due_timers(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Sa(spi) => self.sa_due(spi, now),
                Timer::Attempt(peer) => {
                    self.touched_peers.insert(peer);
                    if self.cx.is_member(peer) && !self.has_sa_with(peer) && now >= self.cx.peers[peer].next_attempt {
                        self.attempt(peer, now);
                    }
                }
                Timer::Retiring => {
                    let (due, later) =
                        std::mem::take(&mut self.cx.retiring).into_iter().partition(|(_, _, at)| *at <= now);
                    self.cx.retiring = later;
                    for (peer, spi, _) in due {
                        self.cx.events.push_back(Event::RemoveInbound { peer, spi });
                    }
                }
            }
        }
        self.start_waiting(now);
        self.settle();
    }

    fn sa_due(&mut self, spi: u64, now: Instant) {
        self.touched.insert(spi);
        if let Some(c) = self.connecting.get_mut(&spi) {
            match c.sending.due(now, None) {
                Resend::NotYet => {}
                Resend::Send(bytes) => {
                    let (remote, bytes) = (c.remote, bytes.to_vec());
                    self.cx.send(remote, IKE_PORT, bytes);
                }
                Resend::GiveUp => {
                    tracing::warn!(remote = %c.remote, "IKE peer does not answer; giving up on this IKE SA");
                    self.fail(spi, Failure::Timeout, now);
                }
            }
            return;
        }
        self.run(spi, now, |sa, cx| sa.tick(cx, now));
    }

    /// Brings the deadlines of what was touched up to date: after every entry point, so that
    /// `poll_timeout` and `handle_timeout` never walk every IKE SA.
    fn settle(&mut self) {
        for spi in std::mem::take(&mut self.touched) {
            let (deadline, peer) = if let Some(sa) = self.sas.get(&spi) {
                (sa.timeout(&self.cx), sa.peer)
            } else if let Some(c) = self.connecting.get(&spi) {
                (Some(c.sending.next_send), Some(c.peer))
            } else {
                (None, None)
            };
            self.timers.set(Timer::Sa(spi), deadline);
            self.touched_peers.extend(peer);
        }
        for peer in std::mem::take(&mut self.touched_peers) {
            let timed = self.cx.is_member(peer) && !self.has_sa_with(peer) && !self.waiting.contains(&peer);
            let deadline = timed.then(|| self.cx.peers[peer].next_attempt);
            self.timers.set(Timer::Attempt(peer), deadline);
        }
        let retiring = self.cx.retiring.iter().map(|(_, _, at)| *at).min();
        self.timers.set(Timer::Retiring, retiring);
    }

    // ----- the table of IKE SAs -----

    /// Runs one step of IKE SA `spi` and does what it says next.
    fn run(&mut self, spi: u64, now: Instant, step: impl FnOnce(&mut IkeSa, &mut Context) -> Result<Next, Failure>) {
        if let Some(sa) = self.sas.get_mut(&spi) {
            self.touched.insert(spi);
            let next = step(sa, &mut self.cx);
            self.apply(spi, next, now);
        }
    }

    fn queue(&mut self, spi: u64, request: Queued, now: Instant) {
        self.run(spi, now, |sa, cx| sa.queue(cx, request, now).map(|()| Next::Stay));
    }

    fn apply(&mut self, spi: u64, next: Result<Next, Failure>, now: Instant) {
        match next {
            Ok(Next::Stay) => {}
            Ok(Next::Forget) => self.forget(spi, now),
            Ok(Next::AuthRequest { request, payloads }) => self.complete_auth_request(spi, request, payloads, now),
            Ok(Next::AuthResponse { payloads, inbound_spi }) => {
                self.complete_auth_response(spi, payloads, inbound_spi, now)
            }
            Ok(Next::Successor(successor)) => self.insert(*successor),
            Ok(Next::ChildrenTo { to, redundant, deleted }) => {
                if let Some(redundant) = redundant {
                    self.insert(*redundant);
                }
                let moved = self.move_children(spi, to);
                if deleted {
                    if !moved {
                        self.run(spi, now, |sa, cx| {
                            sa.remove_children(cx, now, false);
                            Ok(Next::Stay)
                        });
                    }
                    self.forget(spi, now);
                }
            }
            Ok(Next::FinishChildRekeyOn { to, payloads, rekey }) => {
                // Out of the table for the step, so that the successor can use its keys.
                let Some(replaced) = self.sas.remove(&spi) else { return };
                let outbound_allowed = self.outbound_allowed(to);
                let keys = Some(&replaced.keys);
                self.run(to, now, |sa, cx| {
                    sa.finish_child_rekey(cx, &payloads, rekey, outbound_allowed, keys, now).map(|()| Next::Stay)
                });
                self.sas.insert(spi, replaced);
            }
            Err(failure) => self.fail(spi, failure, now),
        }
    }

    /// The Child SAs of IKE SA `from` move to `to` (a rekey collision resolved), exactly once.
    /// Returns whether they moved; with `to` gone already, they stay where they were.
    fn move_children(&mut self, from: u64, to: u64) -> bool {
        let Some(children) = self.sas.get_mut(&from).map(|sa| std::mem::take(&mut sa.children)) else { return false };
        self.touched.extend([from, to]);
        if let Some(successor) = self.sas.get_mut(&to) {
            successor.children.adopt(children);
            return true;
        }
        if let Some(sa) = self.sas.get_mut(&from) {
            sa.children = children;
            sa.children_moved_to = None;
        }
        false
    }

    fn insert(&mut self, sa: IkeSa) {
        self.touched.insert(sa.our_spi);
        self.cx.spis_in_use.insert(sa.our_spi);
        self.sas.insert(sa.our_spi, sa);
    }

    /// An attempt or an IKE SA failed: report, remove, and schedule the next attempt.
    fn fail(&mut self, spi: u64, failure: Failure, now: Instant) {
        let (peer, from) = if let Some(sa) = self.sas.get_mut(&spi) {
            sa.remove_children(&mut self.cx, now, true);
            (sa.peer, sa.remote)
        } else if let Some(c) = self.connecting.get(&spi) {
            (Some(c.peer), c.remote)
        } else {
            return;
        };
        self.forget(spi, now);
        if let Some(state) = peer.and_then(|peer| self.cx.peers.get_mut(peer)) {
            state.next_attempt = now + retry_delay(&failure);
        }
        self.cx.events.push_back(Event::Failed { peer, from, failure });
    }

    /// Removes IKE SA `spi`. If that leaves its peer without one, the next attempt follows the
    /// rule of who initiates (the peer may have deleted it and be initiating already). An IKE SA
    /// that was being deleted moves no attempt: what started its deletion (a flush, a rekey, the
    /// duplicate's twin) or a failure since has set the next one.
    fn forget(&mut self, spi: u64, now: Instant) {
        let (sa_peer, was_live) = self.sas.remove(&spi).map_or((None, false), |sa| (sa.peer, sa.is_live()));
        let connecting_peer = self.connecting.remove(&spi).map(|c| c.peer);
        self.touched.insert(spi);
        self.gate.closed(spi);
        self.cx.spis_in_use.remove(&spi);
        let Some(peer) = sa_peer.or(connecting_peer) else { return };
        self.touched_peers.insert(peer);
        if (was_live || connecting_peer.is_some()) && self.cx.is_member(peer) && !self.has_sa_with(peer) {
            let delay = self.initiation_delay(peer);
            self.cx.peers[peer].next_attempt = now + delay;
        }
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({} IKE SAs, {} connecting)", self.sas.len(), self.connecting.len())
    }
}

#[cfg(test)]
#[path = "endpoint_tests.rs"]
mod tests;
