//! IKE_AUTH authentication (RFC 7296 §2.15): the AUTH payload we send, the check of the peer's,
//! and which configured peer an ID names. Everything that decides who the peer is lives here.

use std::net::IpAddr;

use super::context::Context;
use super::crypto::{IkeSaKeys, SignedOctets};
use super::message::ids::authentication;
use super::message::{Authentication, Identification};
use super::sa::Handshake;
use super::types::PeerIndex;

/// The signer's IKE_SA_INIT message and the other side's nonce, for AUTH: the initiator signs
/// its IKE_SA_INIT request and Nr, the responder its response and Ni.
fn signed_by(handshake: &Handshake, initiator: bool) -> (&[u8], &[u8]) {
    match initiator {
        true => (&handshake.init_request, &handshake.nr),
        false => (&handshake.init_response, &handshake.ni),
    }
}

/// Our ID payload (our address) and the AUTH payload over it.
pub(super) fn our_auth(
    keys: &IkeSaKeys,
    handshake: &Handshake,
    we_initiated: bool,
    psk: &[u8],
    local: IpAddr,
) -> (Identification, Authentication) {
    let id = Identification::from_ip(local);
    let mut id_payload_body = Vec::new();
    id.emit(&mut id_payload_body);
    let (real_message, peer_nonce) = signed_by(handshake, we_initiated);
    let octets = SignedOctets { real_message, peer_nonce, id_payload_body: &id_payload_body };
    let data = keys.psk_auth(psk, &octets).to_vec();
    (id, Authentication { method: authentication::SHARED_KEY_MESSAGE_INTEGRITY_CODE, data })
}

/// Whether the peer's AUTH payload over its ID payload verifies with our PSK.
pub(super) fn peer_auth_verifies(
    keys: &IkeSaKeys,
    handshake: &Handshake,
    we_initiated: bool,
    psk: &[u8],
    id: &Identification,
    auth: &Authentication,
) -> bool {
    let mut id_payload_body = Vec::new();
    id.emit(&mut id_payload_body);
    let (real_message, peer_nonce) = signed_by(handshake, !we_initiated);
    let octets = SignedOctets { real_message, peer_nonce, id_payload_body: &id_payload_body };
    keys.verify_peer_psk_auth(psk, &octets, &auth.data).is_ok()
}

/// The configured peer an initiator's IDi names (its address), if any.
pub(super) fn initiator_named(cx: &Context, id: &Identification) -> Option<PeerIndex> {
    id.ip().and_then(|address| cx.peer_by_address(address))
}

/// Whether a responder's IDr names the peer we initiated to.
pub(super) fn responder_is(cx: &Context, id: &Identification, peer: PeerIndex) -> bool {
    id.ip() == Some(cx.peer_address(peer))
}
