//! The payloads of a received message that an exchange reads, found in one pass.

use super::message::{Authentication, Identification, KeyExchange, Notify, Payload, SecurityAssociation};

/// The payloads a message has at most one of (the first counts).
#[derive(Default)]
pub(super) struct Parts<'a> {
    pub(super) security_association: Option<&'a SecurityAssociation>,
    pub(super) key_exchange: Option<&'a KeyExchange>,
    pub(super) nonce: Option<&'a [u8]>,
    pub(super) identification_initiator: Option<&'a Identification>,
    pub(super) identification_responder: Option<&'a Identification>,
    pub(super) authentication: Option<&'a Authentication>,
}

impl<'a> Parts<'a> {
    pub(super) fn of(payloads: &'a [Payload]) -> Parts<'a> {
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

pub(super) fn notifies(payloads: &[Payload]) -> impl Iterator<Item = &Notify> {
    payloads.iter().filter_map(|p| match p {
        Payload::Notify(n) => Some(n),
        _ => None,
    })
}

/// Whether the message carries a notify of this type.
pub(super) fn has_notify(payloads: &[Payload], notify_type: u16) -> bool {
    notifies(payloads).any(|n| n.notify_type == notify_type)
}

/// The first error notify of a response (RFC 7296 §3.10.1: types below 16384).
pub(super) fn error_notify(payloads: &[Payload]) -> Option<u16> {
    notifies(payloads).find(|n| n.is_error()).map(|n| n.notify_type)
}

/// A notify without data.
pub(super) fn flag(notify_type: u16) -> Payload {
    Payload::Notify(Notify::new(notify_type, Vec::new()))
}

/// INVALID_KE_PAYLOAD's data: the one group we do.
pub(super) fn our_group() -> Vec<u8> {
    super::message::ids::diffie_hellman::CURVE25519.to_be_bytes().to_vec()
}
