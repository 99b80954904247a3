//! IKE_SA_INIT and IKE_AUTH (RFC 7296 §1.2), both roles. The initiator's IKE_SA_INIT stage is
//! [`Connecting`]: no keys yet. Its response, or an IKE_SA_INIT request we answer, makes an
//! [`IkeSa`] that waits for IKE_AUTH; the steps of IKE_AUTH are here, and the endpoint applies
//! mesh policy (INITIAL_CONTACT, duplicates) between them.

use std::net::SocketAddr;
use std::time::Instant;

use mesh_config::Mode;

use super::auth::{self, Arrival};
use super::child::{ChildInstall, NewChild};
use super::context::{detect_nat, detect_peer_nat, Context};
use super::crypto::{IkeSaKeys, Role, SpiPair, X25519KeyPair};
use super::identity::{self, PeerAuth};
use super::message::ids::{diffie_hellman, exchange, notify};
use super::message::{encode_message, Delete, Header, KeyExchange, Message, Nonce, Notify, Payload};
use super::parts::{error_notify, flag, has_notify, notifies, our_group, Parts};
use super::policy::Origin;
use super::proposal;
use super::rng::{self, RngError};
use super::sa::{Handshake, IkeSa, NewIkeSa, Phase};
use super::types::{Event, Failure, LocalError, PeerIndex, Refusal};
use super::window::{Purpose, Retransmission};
use super::{IKE_PORT, NAT_T_PORT};

fn key_pair() -> Result<X25519KeyPair, Failure> {
    X25519KeyPair::generate().map_err(|_| Failure::Local(LocalError::Crypto("make a Curve25519 key pair")))
}

/// An initiator whose IKE_SA_INIT request is out.
pub(super) struct Connecting {
    pub(super) peer: PeerIndex,
    pub(super) our_spi: u64,
    dh: X25519KeyPair,
    ni: Vec<u8>,
    /// Whether the responder demanded a COOKIE already (we comply once).
    cookie_sent: bool,
    pub(super) remote: SocketAddr,
    pub(super) sending: Retransmission,
    pub(super) created: Instant,
}

/// What an IKE_SA_INIT response did to a [`Connecting`] initiator.
pub(super) enum InitResponse {
    /// Still waiting (the request went again with a COOKIE, or the response was refused).
    Waiting,
    Failed(Failure),
    /// Its answer, to make the IKE SA from.
    Answered {
        cipher: mesh_config::Cipher,
        ke: Vec<u8>,
        nr: Vec<u8>,
    },
}

impl Connecting {
    pub(super) fn start(cx: &mut Context, peer: PeerIndex, our_spi: u64, now: Instant) -> Result<Connecting, Failure> {
        let remote = SocketAddr::new(cx.peer_address(peer), IKE_PORT);
        let dh = key_pair()?;
        let ni = rng::nonce(cx.rng.as_mut())?;
        let request = init_request(cx, our_spi, &ni, dh.public_key(), None, remote)?;
        tracing::debug!(peer = %remote.ip(), spi = format_args!("{our_spi:016x}"), "IKE_SA_INIT ->");
        cx.send(remote, IKE_PORT, request.clone());
        let sending = Retransmission::new(request, cx.rtt.timeout(), now);
        Ok(Connecting { peer, our_spi, dh, ni, cookie_sent: false, remote, sending, created: now })
    }

    /// Reads an IKE_SA_INIT response: a COOKIE demand is met here (RFC 7296 §2.6), once.
    pub(super) fn read_response(
        &mut self,
        cx: &mut Context,
        message: &Message<'_>,
        now: Instant,
    ) -> Result<InitResponse, RngError> {
        let payloads = &message.payloads;
        if let Some(cookie) = notifies(payloads).find(|n| n.notify_type == notify::COOKIE) {
            if self.cookie_sent {
                cx.refuse(Refusal::Unexpected, self.remote);
                return Ok(InitResponse::Waiting);
            }
            let request =
                init_request(cx, self.our_spi, &self.ni, self.dh.public_key(), Some(&cookie.data), self.remote)?;
            self.cookie_sent = true;
            cx.send(self.remote, IKE_PORT, request.clone());
            self.sending = Retransmission::new(request, cx.rtt.timeout(), now);
            return Ok(InitResponse::Waiting);
        }
        if let Some(error) = error_notify(payloads) {
            let failure = Failure::from_peer_notify(error);
            tracing::error!(peer = %self.remote, notify = error, "IKE_SA_INIT refused: {failure}");
            return Ok(InitResponse::Failed(failure));
        }
        let parts = Parts::of(payloads);
        let chosen = parts.security_association.and_then(|offer| proposal::choose_ike(offer, &cx.ciphers));
        let (Some(chosen), Some(ke), Some(nr)) = (chosen, parts.key_exchange, parts.nonce) else {
            cx.refuse(Refusal::Malformed, self.remote);
            return Ok(InitResponse::Waiting);
        };
        Ok(InitResponse::Answered { cipher: chosen.cipher, ke: ke.data.clone(), nr: nr.to_vec() })
    }

    /// The IKE SA made from the response's answer, waiting to send IKE_AUTH; `None` (refused)
    /// if the peer's KE is unusable or the keys cannot be derived from it.
    pub(super) fn into_sa(
        self,
        cx: &mut Context,
        answer: InitResponse,
        message: &Message<'_>,
        datagram: &[u8],
        (from, local_port): (SocketAddr, u16),
        now: Instant,
    ) -> Option<IkeSa> {
        let InitResponse::Answered { cipher, ke, nr } = answer else { return None };
        let their_spi = message.header.responder_spi;
        let spis = SpiPair { initiator: self.our_spi.to_be_bytes(), responder: their_spi.to_be_bytes() };
        let keys = self
            .dh
            .agree(&ke)
            .ok()
            .and_then(|shared| IkeSaKeys::derive(Role::Initiator, cipher, &shared[..], &self.ni, &nr, spis).ok());
        let Some(keys) = keys else {
            cx.refuse(Refusal::Malformed, from);
            return None;
        };
        let nat_detected = detect_nat(&message.payloads, &spis, SocketAddr::new(cx.settings.local, local_port));
        let peer_behind_nat = detect_peer_nat(&message.payloads, &spis, from);
        let (remote, local_port) = if nat_detected || cx.settings.force_udp_encap {
            (SocketAddr::new(from.ip(), NAT_T_PORT), NAT_T_PORT)
        } else {
            (self.remote, local_port)
        };
        let handshake =
            Handshake { ni: self.ni, nr, init_request: self.sending.bytes, init_response: datagram.to_vec() };
        Some(IkeSa::new(
            NewIkeSa {
                peer: Some(self.peer),
                initiator: true,
                our_spi: self.our_spi,
                their_spi,
                keys,
                phase: Phase::ExpectAuthResponse(handshake),
                remote,
                local_port,
                nat_detected,
                peer_behind_nat,
                origin: Origin::Handshake { initiator_address: cx.settings.local },
                created: self.created,
            },
            now,
        ))
    }
}

/// The IKE_SA_INIT request; sent again with the same SPI, nonce and KE when the responder
/// demands a cookie (RFC 7296 §2.6).
fn init_request(
    cx: &mut Context,
    our_spi: u64,
    ni: &[u8],
    public: &[u8],
    cookie: Option<&[u8]>,
    remote: SocketAddr,
) -> Result<Vec<u8>, RngError> {
    let spis = SpiPair { initiator: our_spi.to_be_bytes(), responder: [0; 8] };
    let local = SocketAddr::new(cx.settings.local, IKE_PORT);
    let mut payloads = Vec::new();
    if let Some(cookie) = cookie {
        payloads.push(Payload::Notify(Notify::new(notify::COOKIE, cookie.to_vec())));
    }
    payloads.push(Payload::SecurityAssociation(proposal::ike_offer(&cx.settings.proposals, &[])));
    payloads.push(Payload::KeyExchange(KeyExchange { group: diffie_hellman::CURVE25519, data: public.to_vec() }));
    payloads.push(Payload::Nonce(Nonce { data: ni.to_vec() }));
    payloads.extend(cx.nat_notifies(&spis, local, remote)?);
    payloads.extend(identity::init_notify(&cx.settings));
    let header = Header {
        initiator_spi: our_spi,
        responder_spi: 0,
        exchange_type: exchange::IKE_SA_INIT,
        initiator: true,
        response: false,
        message_id: 0,
    };
    Ok(encode_message(&header, &payloads))
}

/// An unauthenticated reply to an IKE_SA_INIT request that carries one notify.
pub(super) fn reply_unprotected(cx: &mut Context, request: Header, notify: Notify, to: SocketAddr, local_port: u16) {
    let header = Header {
        initiator_spi: request.initiator_spi,
        responder_spi: 0,
        exchange_type: request.exchange_type,
        initiator: false,
        response: true,
        message_id: request.message_id,
    };
    cx.send(to, local_port, encode_message(&header, &[Payload::Notify(notify)]));
}

/// Answers an IKE_SA_INIT request the cookie gate admitted (with Nonce `ni`): the half-open
/// responder SA with SPI `our_spi`, or `None` when the request is refused (answered with an
/// error notify, or dropped).
pub(super) fn answer_init_request(
    cx: &mut Context,
    message: &Message<'_>,
    datagram: &[u8],
    (from, local_port): (SocketAddr, u16),
    our_spi: u64,
    now: Instant,
) -> Result<Option<IkeSa>, Failure> {
    let (header, payloads) = (message.header, &message.payloads);
    let parts = Parts::of(payloads);
    let Some(chosen) = parts.security_association.and_then(|offer| proposal::choose_ike(offer, &cx.ciphers)) else {
        // Unauthenticated, and anyone can send it from a peer's address: counted and summed up
        // like refused messages, it changes no peer's state (the initiator reports it).
        reply_unprotected(cx, header, Notify::new(notify::NO_PROPOSAL_CHOSEN, Vec::new()), from, local_port);
        cx.refuse(Refusal::NoProposal, from);
        return Ok(None);
    };
    let (Some(ke), Some(ni)) = (parts.key_exchange, parts.nonce) else {
        cx.refuse(Refusal::Malformed, from);
        return Ok(None);
    };
    if ke.group != diffie_hellman::CURVE25519 {
        reply_unprotected(cx, header, Notify::new(notify::INVALID_KE_PAYLOAD, our_group()), from, local_port);
        return Ok(None);
    }
    let dh = key_pair()?;
    let our_public = dh.public_key().to_vec();
    let Ok(shared) = dh.agree(&ke.data) else {
        cx.refuse(Refusal::Malformed, from);
        return Ok(None);
    };
    let nr = rng::nonce(cx.rng.as_mut())?;
    let spis = SpiPair { initiator: header.initiator_spi.to_be_bytes(), responder: our_spi.to_be_bytes() };
    let Ok(keys) = IkeSaKeys::derive(Role::Responder, chosen.cipher, &shared[..], ni, &nr, spis) else {
        cx.refuse(Refusal::Malformed, from);
        return Ok(None);
    };
    let request_spis = SpiPair { initiator: spis.initiator, responder: [0; 8] };
    let local = SocketAddr::new(cx.settings.local, local_port);
    let nat_detected = detect_nat(payloads, &request_spis, local);
    let peer_behind_nat = detect_peer_nat(payloads, &request_spis, from);
    let mut response_payloads = vec![
        Payload::SecurityAssociation(proposal::ike_answer(&chosen, &[])),
        Payload::KeyExchange(KeyExchange { group: diffie_hellman::CURVE25519, data: our_public }),
        Payload::Nonce(Nonce { data: nr.clone() }),
    ];
    response_payloads.extend(cx.nat_notifies(&spis, local, from)?);
    response_payloads.extend(identity::init_notify(&cx.settings));
    let response_header = Header {
        initiator_spi: header.initiator_spi,
        responder_spi: our_spi,
        exchange_type: exchange::IKE_SA_INIT,
        initiator: false,
        response: true,
        message_id: 0,
    };
    let response = encode_message(&response_header, &response_payloads);
    cx.send(from, local_port, response.clone());
    let handshake = Handshake { ni: ni.to_vec(), nr, init_request: datagram.to_vec(), init_response: response };
    Ok(Some(IkeSa::new(
        NewIkeSa {
            peer: None,
            initiator: false,
            our_spi,
            their_spi: header.initiator_spi,
            keys,
            phase: Phase::ExpectAuthRequest(handshake),
            remote: from,
            local_port,
            nat_detected,
            peer_behind_nat,
            origin: Origin::Handshake { initiator_address: from.ip() },
            created: now,
        },
        now,
    )))
}

/// What the responder makes of an IKE_AUTH request.
pub(super) enum AuthVerdict {
    /// The peer the ID names, and how it proved it.
    Authenticated(PeerIndex, PeerAuth),
    /// AUTHENTICATION_FAILED was answered; the SA must go. `peer`: who the ID named, if anyone.
    Rejected { peer: Option<PeerIndex>, failure: Failure },
    /// Malformed: dropped, the SA waits on.
    Dropped,
}

/// The first Child SA, as IKE_AUTH left it; installed once the endpoint resolved duplicates.
pub(super) enum FirstChild {
    Agreed {
        chosen: proposal::ChosenEsp,
        inbound_spi: u32,
        mode: Mode,
        ni: Vec<u8>,
        nr: Vec<u8>,
    },
    /// None could be agreed; the failure to report, if the peer named one.
    Refused(Option<Failure>),
}

impl IkeSa {
    fn handshake(&self) -> Option<&Handshake> {
        match &self.phase {
            Phase::ExpectAuthRequest(handshake) | Phase::ExpectAuthResponse(handshake) => Some(handshake),
            _ => None,
        }
    }

    /// Initiator: IKE_AUTH with our AUTH and the first Child SA's offer.
    pub(super) fn send_auth_request(
        &mut self,
        cx: &mut Context,
        initial_contact: bool,
        now: Instant,
    ) -> Result<(), Failure> {
        let (Some(peer), Some(handshake)) = (self.peer, self.handshake()) else { return Ok(()) };
        let local = cx.settings.local;
        let (id, auth) = auth::our_auth(cx, &self.keys, handshake, true, peer, None);
        let inbound_spi = rng::esp_spi(cx.rng.as_mut())?;
        let mut payloads = vec![Payload::IdentificationInitiator(id)];
        if initial_contact {
            payloads.push(flag(notify::INITIAL_CONTACT));
        }
        payloads.push(Payload::Authentication(auth));
        if cx.settings.peers[peer].mode == Mode::Transport {
            payloads.push(flag(notify::USE_TRANSPORT_MODE));
        }
        let port = cx.settings.vxlan_port;
        payloads.push(flag(notify::MESHD_PATH_MTU_PROBES));
        payloads.push(Payload::SecurityAssociation(proposal::esp_offer(&cx.ciphers, inbound_spi, cx.settings.esn)));
        payloads.push(Payload::TrafficSelectorInitiator(proposal::node_selector(local, port)));
        payloads.push(Payload::TrafficSelectorResponder(proposal::node_selector(cx.peer_address(peer), port)));
        self.send_request(cx, exchange::IKE_AUTH, &payloads, Purpose::Auth { inbound_spi }, now)?;
        cx.events.push_back(Event::ExpectInbound { peer, spi: inbound_spi });
        Ok(())
    }

    /// Responder: checks the initiator's ID and AUTH; a failure is answered with
    /// AUTHENTICATION_FAILED.
    pub(super) fn authenticate_request(
        &mut self,
        cx: &mut Context,
        request: Header,
        payloads: &[Payload],
    ) -> Result<AuthVerdict, Failure> {
        let parts = Parts::of(payloads);
        let (Some(id), Some(auth), Some(handshake)) =
            (parts.identification_initiator, parts.authentication, self.handshake())
        else {
            cx.refuse(Refusal::Malformed, self.remote);
            return Ok(AuthVerdict::Dropped);
        };
        let arrival = Arrival { source: self.remote.ip(), nat_detected: self.nat_detected };
        let (peer, failure) = match auth::verify_initiator(cx, &self.keys, handshake, (id, auth), &arrival) {
            Ok((peer, peer_auth)) => return Ok(AuthVerdict::Authenticated(peer, peer_auth)),
            Err(refused) => refused,
        };
        tracing::error!(from = %self.remote, identity = ?id.ip(), "IKE_AUTH from {}: {failure}", self.remote);
        self.answer_notify(cx, request, notify::AUTHENTICATION_FAILED, Vec::new())?;
        Ok(AuthVerdict::Rejected { peer, failure })
    }

    /// Responder, authenticated peer: answers with our AUTH and the Child SA (or why there is
    /// none), and is established.
    pub(super) fn answer_auth_request(
        &mut self,
        cx: &mut Context,
        (peer, peer_auth): (PeerIndex, PeerAuth),
        request: Header,
        payloads: &[Payload],
        now: Instant,
    ) -> Result<FirstChild, Failure> {
        note_probe_support(cx, peer, payloads);
        self.peer = Some(peer);
        self.peer_auth = Some(peer_auth);
        let Some(handshake) = self.handshake() else { return Ok(FirstChild::Refused(None)) };
        let (id_r, our_auth) = auth::our_auth(cx, &self.keys, handshake, false, peer, Some(peer_auth));
        let mut response = vec![
            Payload::IdentificationResponder(id_r),
            Payload::Authentication(our_auth),
            flag(notify::MESHD_PATH_MTU_PROBES),
        ];
        let agreed = match self.negotiate_child(cx, peer, payloads) {
            Ok((chosen, transport)) => {
                let inbound_spi = rng::esp_spi(cx.rng.as_mut())?;
                let mode = if transport && cx.settings.peers[peer].mode == Mode::Transport {
                    Mode::Transport
                } else {
                    Mode::Tunnel
                };
                if mode == Mode::Transport {
                    response.push(flag(notify::USE_TRANSPORT_MODE));
                }
                let port = cx.settings.vxlan_port;
                response.push(Payload::SecurityAssociation(proposal::esp_answer(&chosen, inbound_spi)));
                response.push(Payload::TrafficSelectorInitiator(proposal::node_selector(cx.peer_address(peer), port)));
                response.push(Payload::TrafficSelectorResponder(proposal::node_selector(cx.settings.local, port)));
                Some((chosen, inbound_spi, mode))
            }
            Err(failure_notify) => {
                response.push(flag(failure_notify));
                tracing::error!(peer = %cx.peer_address(peer), notify = failure_notify, "IKE SA up, but no Child SA could be agreed");
                None
            }
        };
        self.send_response(cx, request, &response)?;
        let handshake = self.enter_established(cx, now)?;
        Ok(match (agreed, handshake) {
            (Some((chosen, inbound_spi, mode)), Some(h)) => {
                FirstChild::Agreed { chosen, inbound_spi, mode, ni: h.ni, nr: h.nr }
            }
            _ => FirstChild::Refused(None),
        })
    }

    /// Initiator: the IKE_AUTH response. The peer's AUTH must verify and name the peer we
    /// initiated to; then the SA is established.
    pub(super) fn accept_auth_response(
        &mut self,
        cx: &mut Context,
        payloads: &[Payload],
        inbound_spi: u32,
        now: Instant,
    ) -> Result<FirstChild, Failure> {
        let Some(peer) = self.peer else { return Ok(FirstChild::Refused(None)) };
        if has_notify(payloads, notify::AUTHENTICATION_FAILED) {
            let failure = Failure::Authentication { peer_said: true };
            tracing::error!(peer = %self.remote, "IKE_AUTH: {failure}");
            return Err(failure);
        }
        let parts = Parts::of(payloads);
        let error = error_notify(payloads);
        let (Some(id), Some(auth), Some(handshake)) =
            (parts.identification_responder, parts.authentication, self.handshake())
        else {
            // No AUTH: the peer refused, and its notify says why.
            let failure = error.map_or(Failure::Authentication { peer_said: false }, Failure::from_peer_notify);
            tracing::error!(peer = %self.remote, ?error, "IKE_AUTH refused: {failure}");
            return Err(failure);
        };
        let arrival = Arrival { source: self.remote.ip(), nat_detected: self.nat_detected };
        match auth::verify_responder(cx, &self.keys, handshake, peer, (id, auth), &arrival) {
            Ok(peer_auth) => self.peer_auth = Some(peer_auth),
            Err(failure) => {
                tracing::error!(peer = %self.remote, "IKE_AUTH response: {failure}");
                // The responder thinks the IKE SA is up: tell it, once (RFC 7296 §2.21.2).
                let refusal = [flag(notify::AUTHENTICATION_FAILED), Payload::Delete(Delete::ike())];
                self.send_request(cx, exchange::INFORMATIONAL, &refusal, Purpose::DeleteIke, now)?;
                return Err(failure);
            }
        }
        note_probe_support(cx, peer, payloads);
        let handshake = self.enter_established(cx, now)?;
        let chosen =
            parts.security_association.and_then(|answer| proposal::choose_esp(answer, &cx.ciphers, cx.settings.esn));
        Ok(match (chosen, handshake) {
            (Some(chosen), Some(h)) => {
                let mode =
                    if has_notify(payloads, notify::USE_TRANSPORT_MODE) { Mode::Transport } else { Mode::Tunnel };
                FirstChild::Agreed { chosen, inbound_spi, mode, ni: h.ni, nr: h.nr }
            }
            _ => {
                tracing::error!(peer = %self.remote, ?error, "IKE SA up, but the peer accepted no Child SA");
                FirstChild::Refused(error.map(Failure::from_peer_notify))
            }
        })
    }

    /// Installs the Child SA agreed in IKE_AUTH, or reports why there is none.
    pub(super) fn install_first_child(
        &mut self,
        cx: &mut Context,
        first: FirstChild,
        outbound_allowed: bool,
        now: Instant,
    ) -> Result<(), Failure> {
        let Some(peer) = self.peer else { return Ok(()) };
        match first {
            FirstChild::Agreed { chosen, inbound_spi, mode, ni, nr } => {
                let install = ChildInstall::Both { outbound_allowed };
                let new = NewChild {
                    chosen,
                    inbound_spi,
                    mode,
                    shared_secret: None,
                    ni: &ni,
                    nr: &nr,
                    install,
                    exchange_keys: None,
                };
                self.add_child(cx, peer, new, now)
            }
            FirstChild::Refused(failure) => {
                if let Some(failure) = failure {
                    cx.events.push_back(Event::Failed { peer: Some(peer), from: self.remote, failure });
                }
                Ok(())
            }
        }
    }
}

/// Whether `peer` announced in an authenticated IKE_AUTH that it answers path-MTU probes.
fn note_probe_support(cx: &mut Context, peer: PeerIndex, payloads: &[Payload]) {
    let announced = has_notify(payloads, notify::MESHD_PATH_MTU_PROBES);
    if let Some(state) = cx.peers.get_mut(peer) {
        state.answers_probes = announced;
    }
}
