//! One IKE SA after IKE_SA_INIT: its keys, its phase, its request window and its Child SAs.
//! Every step here gets the SA once (`&mut self`) and the shared [`Context`]; what reaches
//! beyond this SA (duplicates, INITIAL_CONTACT, a successor from a rekey) goes back to the
//! endpoint as a [`Next`].
//!
//! The initiator's IKE_SA_INIT stage has no keys yet and is not an `IkeSa` at all (see
//! [`Connecting`](super::handshake::Connecting)), so an SA being authenticated cannot lack its
//! keys.

use std::net::SocketAddr;
use std::time::Instant;

use super::child::{Children, OurRekey};
use super::context::Context;
use super::cookie_gate::HALF_OPEN_TIMEOUT;
use super::crypto::{sk_body_len, IkeSaKeys, SpiPair};
use super::identity::PeerAuth;
use super::message::ids::{exchange, notify, protocol};
use super::message::{encode_encrypted_prefix, encode_payloads, Delete, Header, Notify, Payload};
use super::parts::has_notify;
use super::policy::{liveness_due, Origin};
use super::rekey::IkeCollision;
use super::status::{IkeSaStatus, IkeState};
use super::types::{Failure, LocalError, PeerIndex, Refusal};
use super::window::{Incoming, Purpose, Queued, RequestWindow, Resend};
use super::NAT_T_PORT;

/// Nonces and messages of IKE_SA_INIT, needed again for AUTH and the first Child SA.
pub(super) struct Handshake {
    pub(super) ni: Vec<u8>,
    pub(super) nr: Vec<u8>,
    /// The initiator's IKE_SA_INIT request and the responder's response, as sent.
    pub(super) init_request: Vec<u8>,
    pub(super) init_response: Vec<u8>,
}

/// Where an IKE SA is, with what that stage needs.
pub(super) enum Phase {
    /// Responder: IKE_SA_INIT answered.
    ExpectAuthRequest(Handshake),
    /// Initiator: IKE_AUTH sent.
    ExpectAuthResponse(Handshake),
    Established {
        since: Instant,
    },
    /// DELETE sent (after being established); gone when it is answered.
    Deleting {
        since: Instant,
    },
}

impl Phase {
    pub(super) fn state(&self) -> IkeState {
        match self {
            Phase::ExpectAuthRequest(_) => IkeState::ExpectAuthRequest,
            Phase::ExpectAuthResponse(_) => IkeState::ExpectAuthResponse,
            Phase::Established { .. } => IkeState::Established,
            Phase::Deleting { .. } => IkeState::Deleting,
        }
    }

    pub(super) fn established_since(&self) -> Option<Instant> {
        match self {
            Phase::Established { since } | Phase::Deleting { since } => Some(*since),
            _ => None,
        }
    }
}

/// What the endpoint does after a step of one IKE SA.
pub(super) enum Next {
    Stay,
    /// Remove this IKE SA (its Child SAs are already dealt with).
    Forget,
    /// An IKE_AUTH request to authenticate; the endpoint applies mesh policy around it.
    AuthRequest {
        request: Header,
        payloads: Vec<Payload>,
    },
    /// The IKE_AUTH response to our request that offered `inbound_spi`.
    AuthResponse {
        payloads: Vec<Payload>,
        inbound_spi: u32,
    },
    /// An IKE SA rekey made this SA's successor; this one is being deleted or replaced.
    Successor(Box<IkeSa>),
    /// A rekey collision was resolved (RFC 7296 §2.8.2): this SA's Child SAs move to IKE SA
    /// `to`, the successor that won; `redundant`, the one that lost, is being deleted; with
    /// `deleted`, the peer deleted this SA and it is forgotten.
    ChildrenTo {
        to: u64,
        redundant: Option<Box<IkeSa>>,
        deleted: bool,
    },
    /// The answer to our Child SA rekey arrived after the Child SAs moved to IKE SA `to`: it
    /// is finished there.
    FinishChildRekeyOn {
        to: u64,
        payloads: Vec<Payload>,
        rekey: OurRekey,
    },
}

pub(super) struct IkeSa {
    /// The peer, once known: at once for an initiator, after IKE_AUTH for a responder.
    pub(super) peer: Option<PeerIndex>,
    /// Whether we are the original initiator (the Initiator flag in our messages).
    pub(super) initiator: bool,
    pub(super) our_spi: u64,
    pub(super) their_spi: u64,
    pub(super) keys: IkeSaKeys,
    pub(super) phase: Phase,
    pub(super) remote: SocketAddr,
    pub(super) local_port: u16,
    pub(super) window: RequestWindow,
    pub(super) children: Children,
    pub(super) created: Instant,
    pub(super) last_heard: Instant,
    pub(super) rekey_at: Option<Instant>,
    pub(super) nat_detected: bool,
    /// Whether a NAT is in front of the peer (or the peer pretends so to force encapsulation):
    /// only then does its address follow its messages (RFC 7296 §2.23).
    pub(super) peer_behind_nat: bool,
    pub(super) origin: Origin,
    /// A duplicate the peer should delete; we do it ourselves if it has not by then.
    pub(super) delete_at: Option<Instant>,
    /// The peer's IKE SA rekey that crossed ours, until ours is answered.
    pub(super) ike_collision: Option<IkeCollision>,
    /// Our SPI of the successor the Child SAs moved to; this SA waits for its DELETE.
    pub(super) children_moved_to: Option<u64>,
    /// How the peer authenticated (kept across IKE rekeys).
    pub(super) peer_auth: Option<PeerAuth>,
}

/// What makes a new IKE SA; [`IkeSa::new`] is its one constructor.
pub(super) struct NewIkeSa {
    pub(super) peer: Option<PeerIndex>,
    pub(super) initiator: bool,
    pub(super) our_spi: u64,
    pub(super) their_spi: u64,
    pub(super) keys: IkeSaKeys,
    pub(super) phase: Phase,
    pub(super) remote: SocketAddr,
    pub(super) local_port: u16,
    pub(super) nat_detected: bool,
    pub(super) peer_behind_nat: bool,
    pub(super) origin: Origin,
    /// When its making started (the IKE_SA_INIT request, or the rekey).
    pub(super) created: Instant,
}

impl IkeSa {
    pub(super) fn new(new: NewIkeSa, now: Instant) -> IkeSa {
        let window = match new.origin {
            Origin::Rekey => RequestWindow::after_rekey(),
            Origin::Handshake { .. } => RequestWindow::after_init(new.initiator),
        };
        IkeSa {
            peer: new.peer,
            initiator: new.initiator,
            our_spi: new.our_spi,
            their_spi: new.their_spi,
            keys: new.keys,
            phase: new.phase,
            remote: new.remote,
            local_port: new.local_port,
            window,
            children: Children::default(),
            created: new.created,
            last_heard: now,
            rekey_at: None,
            nat_detected: new.nat_detected,
            peer_behind_nat: new.peer_behind_nat,
            origin: new.origin,
            delete_at: None,
            ike_collision: None,
            children_moved_to: None,
            peer_auth: None,
        }
    }

    pub(super) fn spi_pair(&self) -> SpiPair {
        let (initiator, responder) =
            if self.initiator { (self.our_spi, self.their_spi) } else { (self.their_spi, self.our_spi) };
        SpiPair { initiator: initiator.to_be_bytes(), responder: responder.to_be_bytes() }
    }

    pub(super) fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Established { .. })
    }

    /// Established or half-way there: not on its way out.
    pub(super) fn is_live(&self) -> bool {
        !matches!(self.phase, Phase::Deleting { .. })
    }

    pub(super) fn status(&self, now: Instant) -> IkeSaStatus {
        let spis = self.spi_pair();
        IkeSaStatus {
            peer: self.peer,
            initiator_spi: u64::from_be_bytes(spis.initiator),
            responder_spi: u64::from_be_bytes(spis.responder),
            we_initiated: self.initiator,
            state: self.phase.state(),
            cipher: Some(self.keys.cipher()),
            remote: self.remote,
            nat_detected: self.nat_detected,
            udp_encap: self.local_port == NAT_T_PORT,
            established_secs: self.phase.established_since().map(|at| now.saturating_duration_since(at).as_secs()),
            rekey_in_secs: self.rekey_at.map(|at| at.saturating_duration_since(now).as_secs()),
            children: self.children.spis(),
            peer_auth: self.peer_auth,
        }
    }

    /// The earliest time [`tick`](Self::tick) has something to do.
    pub(super) fn timeout(&self, cx: &Context) -> Option<Instant> {
        let mut times: Vec<Instant> = self.window.next_send().into_iter().collect();
        match self.phase {
            Phase::ExpectAuthRequest(_) => times.push(self.created + HALF_OPEN_TIMEOUT),
            Phase::Established { .. } => {
                // With a request outstanding, its retransmission timer stands for liveness.
                if self.window.idle() {
                    times.extend(self.liveness_due(cx));
                }
                times.extend(self.delete_at);
                times.extend(self.rekey_at);
                times.extend(self.children.timeout());
            }
            _ => {}
        }
        times.into_iter().min()
    }

    /// When this IKE SA, once idle, checks that its peer is alive (`policy::liveness_due`).
    fn liveness_due(&self, cx: &Context) -> Option<Instant> {
        let peer = self.peer?;
        Some(liveness_due(cx.settings.local, cx.peer_address(peer), self.last_heard, cx.settings.dpd, cx.liveness_grid))
    }

    /// The Established phase from `now`: timers start and the IKE SA rekeys in due time.
    /// Returns the IKE_SA_INIT handshake it leaves behind, if it was still waiting for IKE_AUTH.
    pub(super) fn enter_established(&mut self, cx: &mut Context, now: Instant) -> Result<Option<Handshake>, Failure> {
        let rekey_after = cx.rekey_after(cx.settings.ike_lifetime, self.initiator)?;
        let previous = std::mem::replace(&mut self.phase, Phase::Established { since: now });
        self.last_heard = now;
        self.rekey_at = Some(now + rekey_after);
        Ok(match previous {
            Phase::ExpectAuthRequest(handshake) | Phase::ExpectAuthResponse(handshake) => Some(handshake),
            Phase::Established { .. } | Phase::Deleting { .. } => None,
        })
    }

    /// Deletes this IKE SA: the DELETE goes out when the window allows; the SA is forgotten
    /// when it is answered (or the peer is gone).
    pub(super) fn start_deleting(&mut self, cx: &mut Context, now: Instant) -> Result<(), Failure> {
        let since = self.phase.established_since().unwrap_or(now);
        self.phase = Phase::Deleting { since };
        self.delete_at = None;
        self.queue(cx, Queued::DeleteIke, now)
    }

    // ----- sending -----

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
    pub(super) fn encrypt(
        &mut self,
        exchange_type: u8,
        response: bool,
        message_id: u32,
        payloads: &[Payload],
    ) -> Result<Vec<u8>, Failure> {
        let header = self.header(exchange_type, response, message_id);
        let (first, inner) = encode_payloads(payloads);
        let mut message = encode_encrypted_prefix(&header, first, sk_body_len(inner.len()));
        self.keys
            .sealer()
            .seal_append(&mut message, &inner)
            .map_err(|_| Failure::Local(LocalError::Crypto("encrypt an IKE message (its IVs are used up)")))?;
        Ok(message)
    }

    pub(super) fn send_request(
        &mut self,
        cx: &mut Context,
        exchange_type: u8,
        payloads: &[Payload],
        purpose: Purpose,
        now: Instant,
    ) -> Result<(), Failure> {
        let message_id = self.window.next_message_id().map_err(Failure::Local)?;
        let bytes = self.encrypt(exchange_type, false, message_id, payloads)?;
        cx.send(self.remote, self.local_port, bytes.clone());
        self.window.sent(bytes, purpose, cx.rtt.timeout(), now);
        Ok(())
    }

    pub(super) fn send_response(
        &mut self,
        cx: &mut Context,
        request: Header,
        payloads: &[Payload],
    ) -> Result<(), Failure> {
        let bytes = self.encrypt(request.exchange_type, true, request.message_id, payloads)?;
        cx.send(self.remote, self.local_port, bytes.clone());
        self.window.cache_response(request.message_id, bytes);
        Ok(())
    }

    /// Answers a request with one notify (an error, or INVALID_KE_PAYLOAD naming our group).
    pub(super) fn answer_notify(
        &mut self,
        cx: &mut Context,
        request: Header,
        notify_type: u16,
        data: Vec<u8>,
    ) -> Result<(), Failure> {
        self.send_response(cx, request, &[Payload::Notify(Notify::new(notify_type, data))])
    }

    /// Queues a request; sent now if nothing is outstanding.
    pub(super) fn queue(&mut self, cx: &mut Context, request: Queued, now: Instant) -> Result<(), Failure> {
        self.window.push(request);
        self.send_queued(cx, now)
    }

    pub(super) fn send_queued(&mut self, cx: &mut Context, now: Instant) -> Result<(), Failure> {
        let Some(next) = self.window.pop_sendable() else { return Ok(()) };
        match next {
            Queued::DeleteIke => {
                let payloads = [Payload::Delete(Delete::ike())];
                self.send_request(cx, exchange::INFORMATIONAL, &payloads, Purpose::DeleteIke, now)
            }
            Queued::DeleteChild(spis) => {
                let payloads = [Payload::Delete(Delete::child(protocol::ESP, &spis))];
                self.send_request(cx, exchange::INFORMATIONAL, &payloads, Purpose::DeleteChild, now)
            }
            Queued::Liveness => self.send_request(cx, exchange::INFORMATIONAL, &[], Purpose::Liveness, now),
            Queued::RekeyChild(spi) => self.start_child_rekey(cx, spi, now),
            Queued::RekeyIke => self.start_ike_rekey(cx, now),
        }
    }

    // ----- receiving -----

    /// A message that passed the integrity and message-ID checks arrived from `from` on our
    /// port `local_port`: the peer is alive. Its address follows the message only when a NAT is
    /// in front of the peer (RFC 7296 §2.23); otherwise only the switch from port 500 to 4500
    /// is followed. A replay never gets here, so a capture sent from elsewhere moves nothing.
    fn heard(&mut self, (from, local_port): (SocketAddr, u16), now: Instant) {
        self.last_heard = now;
        let floated = from.ip() == self.remote.ip() && from.port() == NAT_T_PORT && local_port == NAT_T_PORT;
        if self.peer_behind_nat || floated {
            self.remote = from;
            self.local_port = local_port;
        }
    }

    /// A decrypted request from the peer.
    pub(super) fn handle_request(
        &mut self,
        cx: &mut Context,
        request: Header,
        payloads: Vec<Payload>,
        arrival: (SocketAddr, u16),
        now: Instant,
    ) -> Result<Next, Failure> {
        match self.window.incoming(request.message_id) {
            Incoming::New => self.heard(arrival, now),
            Incoming::Retransmitted(cached) => {
                // The cached response again (RFC 7296 §2.1).
                if let Some(bytes) = cached.map(<[u8]>::to_vec) {
                    cx.send(self.remote, self.local_port, bytes);
                }
                return Ok(Next::Stay);
            }
            Incoming::Unexpected => {
                cx.refuse(Refusal::Unexpected, self.remote);
                return Ok(Next::Stay);
            }
        }
        match (request.exchange_type, &self.phase) {
            (exchange::IKE_AUTH, Phase::ExpectAuthRequest(_)) => Ok(Next::AuthRequest { request, payloads }),
            (exchange::INFORMATIONAL, Phase::Established { .. } | Phase::Deleting { .. }) => {
                self.handle_informational(cx, request, &payloads, now)
            }
            (exchange::CREATE_CHILD_SA, Phase::Established { .. }) if self.children_moved_to.is_none() => {
                self.handle_create_child(cx, request, &payloads, now)
            }
            (exchange::CREATE_CHILD_SA, Phase::Established { .. } | Phase::Deleting { .. }) => {
                // Replaced by a rekey, or being deleted: what the peer asks for belongs on the
                // successor (RFC 7296 §2.8.2: a crossing rekey that arrives late is refused).
                self.answer_notify(cx, request, notify::TEMPORARY_FAILURE, Vec::new())?;
                Ok(Next::Stay)
            }
            _ => {
                cx.refuse(Refusal::Unexpected, self.remote);
                Ok(Next::Stay)
            }
        }
    }

    /// A decrypted response from the peer.
    pub(super) fn handle_response(
        &mut self,
        cx: &mut Context,
        response: Header,
        payloads: Vec<Payload>,
        outbound_allowed: bool,
        arrival: (SocketAddr, u16),
        now: Instant,
    ) -> Result<Next, Failure> {
        let Some(purpose) = self.window.answered(response.message_id) else {
            // A response to a request already answered (or never sent).
            cx.refuse(Refusal::Unexpected, self.remote);
            return Ok(Next::Stay);
        };
        self.heard(arrival, now);
        let next = match purpose {
            Purpose::Auth { inbound_spi } => return Ok(Next::AuthResponse { payloads, inbound_spi }),
            Purpose::Liveness | Purpose::DeleteChild => Next::Stay,
            Purpose::DeleteIke => return Ok(Next::Forget),
            Purpose::RekeyChild { old_inbound_spi, new_inbound_spi, nonce } => {
                let rekey = OurRekey { old_inbound_spi, new_inbound_spi, ni: nonce };
                match self.children_moved_to {
                    Some(to) => Next::FinishChildRekeyOn { to, payloads, rekey },
                    None => {
                        self.finish_child_rekey(cx, &payloads, rekey, outbound_allowed, None, now)?;
                        Next::Stay
                    }
                }
            }
            Purpose::RekeyIke { new_spi, nonce, dh } => {
                self.finish_ike_rekey(cx, &payloads, new_spi, &nonce, dh, now)?
            }
        };
        self.send_queued(cx, now)?;
        Ok(next)
    }

    fn handle_informational(
        &mut self,
        cx: &mut Context,
        request: Header,
        payloads: &[Payload],
        now: Instant,
    ) -> Result<Next, Failure> {
        let mut answer_spis = Vec::new();
        let mut delete_ike = false;
        for payload in payloads {
            let Payload::Delete(delete) = payload else { continue };
            match delete.protocol_id {
                protocol::IKE => delete_ike = true,
                protocol::ESP => {
                    for spi in delete.spis.iter().filter_map(|s| <[u8; 4]>::try_from(s.as_slice()).ok()) {
                        if let Some(ours) = self.delete_child_by_outbound(cx, u32::from_be_bytes(spi), now) {
                            answer_spis.push(ours);
                        }
                    }
                }
                _ => {}
            }
        }
        if delete_ike && has_notify(payloads, notify::AUTHENTICATION_FAILED) {
            // The initiator refused our IKE_AUTH response (RFC 7296 §2.21.2).
            self.send_response(cx, request, &[])?;
            let failure = Failure::Authentication { peer_said: true };
            tracing::error!(peer = %self.remote, "IKE_AUTH: {failure}");
            return Err(failure);
        }
        if delete_ike {
            self.send_response(cx, request, &[])?;
            if let Some(collision) = self.ike_collision.take() {
                // The peer's crossing rekey won and it finished first: its IKE SA is the one.
                return Ok(Next::ChildrenTo { to: collision.successor, redundant: None, deleted: true });
            }
            self.remove_children(cx, now, false);
            if let Some(peer) = self.peer {
                // When to negotiate again follows the rule of who initiates (`Endpoint::forget`).
                tracing::info!(peer = %cx.peer_address(peer), "the peer deleted the IKE SA");
            }
            return Ok(Next::Forget);
        }
        let response: Vec<Payload> = if answer_spis.is_empty() {
            Vec::new()
        } else {
            vec![Payload::Delete(Delete::child(protocol::ESP, &answer_spis))]
        };
        self.send_response(cx, request, &response)?;
        Ok(Next::Stay)
    }

    // ----- time -----

    pub(super) fn tick(&mut self, cx: &mut Context, now: Instant) -> Result<Next, Failure> {
        if let Some(outstanding) = self.window.outstanding_mut() {
            match outstanding.sending.due(now, Some(self.last_heard)) {
                Resend::NotYet => {}
                Resend::Send(bytes) => {
                    let bytes = bytes.to_vec();
                    cx.send(self.remote, self.local_port, bytes);
                }
                Resend::GiveUp => {
                    tracing::warn!(remote = %self.remote, "IKE peer does not answer; giving up on this IKE SA");
                    return match self.phase {
                        Phase::Deleting { .. } => Ok(Next::Forget),
                        _ => Err(Failure::Timeout),
                    };
                }
            }
        }
        match self.phase {
            Phase::ExpectAuthRequest(_) if now >= self.created + HALF_OPEN_TIMEOUT => return Ok(Next::Forget),
            Phase::Established { .. } => {}
            _ => return Ok(Next::Stay),
        }
        let Some(peer) = self.peer else { return Ok(Next::Stay) };
        if self.delete_at.is_some_and(|at| now >= at) {
            tracing::debug!(peer, "the peer did not delete its duplicate IKE SA; deleting it");
            self.remove_children(cx, now, false);
            self.start_deleting(cx, now)?;
            return Ok(Next::Stay);
        }
        let due_children = self.children.tick(cx, peer, now);
        let ike_due = self.rekey_at.is_some_and(|at| now >= at);
        let idle = self.liveness_due(cx).is_some_and(|due| now >= due) && self.window.idle();
        for spi in due_children {
            self.queue(cx, Queued::RekeyChild(spi), now)?;
        }
        if ike_due {
            self.rekey_at = None;
            self.queue(cx, Queued::RekeyIke, now)?;
        }
        if idle {
            self.last_heard = now;
            self.queue(cx, Queued::Liveness, now)?;
        }
        Ok(Next::Stay)
    }
}

/// A CHILD_SA_NOT_FOUND notify for the ESP SA `spi` (RFC 7296 §2.25).
pub(super) fn child_not_found(spi: u32) -> Payload {
    let mut not_found = Notify::new(notify::CHILD_SA_NOT_FOUND, Vec::new());
    not_found.protocol_id = protocol::ESP;
    not_found.spi = spi.to_be_bytes().to_vec();
    Payload::Notify(not_found)
}
