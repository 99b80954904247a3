//! IKE_AUTH authentication (RFC 7296 §2.15): the AUTH payload we send, the check of the peer's,
//! and which configured peer an ID names. The rules of who may authenticate how (PSK or an
//! Ed25519 signature) are in [`identity`](super::identity); this module hands them an IKE SA's
//! handshake.

use std::net::IpAddr;

use super::context::Context;
use super::crypto::{IkeSaKeys, Role};
use super::identity::{self, AuthInputs, PeerAuth, PeerClaim};
use super::message::{Authentication, Identification};
use super::sa::Handshake;
use super::types::{Failure, PeerIndex};

/// What both AUTH payloads cover (RFC 7296 §2.15): the initiator signs its IKE_SA_INIT request
/// and Nr, the responder its response and Ni.
fn inputs<'a>(keys: &'a IkeSaKeys, handshake: &'a Handshake, we_initiated: bool) -> AuthInputs<'a> {
    let h = handshake;
    let (our_message, peer_message, our_nonce, peer_nonce, role) = match we_initiated {
        true => (&h.init_request, &h.init_response, &h.ni, &h.nr, Role::Initiator),
        false => (&h.init_response, &h.init_request, &h.nr, &h.ni, Role::Responder),
    };
    AuthInputs { keys, role, our_message, peer_message, our_nonce, peer_nonce }
}

/// Our ID payload (our address) and the AUTH payload over it toward `peer`; as a responder,
/// `peer_auth` is how the initiator authenticated.
pub(super) fn our_auth(
    cx: &Context,
    keys: &IkeSaKeys,
    handshake: &Handshake,
    we_initiated: bool,
    peer: PeerIndex,
    peer_auth: Option<PeerAuth>,
) -> (Identification, Authentication) {
    let inputs = inputs(keys, handshake, we_initiated);
    identity::our_auth(&cx.settings, &cx.settings.peers[peer], peer_auth, &inputs)
}

/// Where the peer's IKE_AUTH came from, and whether we found ourselves behind NAT.
pub(super) struct Arrival {
    pub(super) source: IpAddr,
    pub(super) nat_detected: bool,
}

/// Checks the peer's ID and AUTH payloads; `named` is the configured peer the ID names.
fn verify(
    cx: &Context,
    keys: &IkeSaKeys,
    handshake: &Handshake,
    we_initiated: bool,
    named: Option<PeerIndex>,
    (id, auth): (&Identification, &Authentication),
    arrival: &Arrival,
) -> Result<PeerAuth, Failure> {
    let claim = PeerClaim {
        peer: named.map(|peer| &cx.settings.peers[peer]),
        id,
        auth,
        source: arrival.source,
        we_are_behind_nat: arrival.nat_detected,
        source_is_a_node: cx.peer_by_address(arrival.source).is_some(),
    };
    identity::verify_peer(&cx.settings, &claim, &inputs(keys, handshake, we_initiated))
}

/// Responder: the configured peer the initiator's IDi names, and how it authenticated; or who
/// the ID named, if anyone, and why it is refused.
pub(super) fn verify_initiator(
    cx: &Context,
    keys: &IkeSaKeys,
    handshake: &Handshake,
    payloads: (&Identification, &Authentication),
    arrival: &Arrival,
) -> Result<(PeerIndex, PeerAuth), (Option<PeerIndex>, Failure)> {
    let named = initiator_named(cx, payloads.0);
    match verify(cx, keys, handshake, false, named, payloads, arrival) {
        Ok(peer_auth) => {
            named.map(|peer| (peer, peer_auth)).ok_or((named, Failure::Authentication { peer_said: false }))
        }
        Err(failure) => Err((named, failure)),
    }
}

/// Initiator: how the responder authenticated; its IDr must name the peer we initiated to (an
/// ID naming any other is unknown here).
pub(super) fn verify_responder(
    cx: &Context,
    keys: &IkeSaKeys,
    handshake: &Handshake,
    peer: PeerIndex,
    payloads: (&Identification, &Authentication),
    arrival: &Arrival,
) -> Result<PeerAuth, Failure> {
    let named = responder_is(cx, payloads.0, peer).then_some(peer);
    verify(cx, keys, handshake, true, named, payloads, arrival)
}

/// The configured peer an initiator's IDi names (its address), if any.
fn initiator_named(cx: &Context, id: &Identification) -> Option<PeerIndex> {
    id.ip().and_then(|address| cx.peer_by_address(address))
}

/// Whether a responder's IDr names the peer we initiated to.
fn responder_is(cx: &Context, id: &Identification, peer: PeerIndex) -> bool {
    id.ip() == Some(cx.peer_address(peer))
}
