//! IKEv2 messages on the wire (RFC 7296 §3): parsing and building, no crypto, no state.
//!
//! Receiving: [`Message::parse`] checks the header and reads the payloads before the SK
//! payload into typed [`Payload`]s; the SK payload comes back as [`Encrypted`], whose
//! associated data and body the crypto decrypts. The plaintext (padding and pad length
//! removed) is another chain: [`parse_payloads`] with [`Encrypted::first_payload`].
//!
//! Sending: [`encode_message`] for a message in the clear (IKE_SA_INIT). For a protected one,
//! [`encode_payloads`] gives the inner chain's first type and bytes to pad and encrypt, and
//! [`encode_encrypted_prefix`] the header and SK payload header to authenticate and send
//! before the IV, ciphertext and ICV.
//!
//! Errors are [`crate::wire::Error`]: any of them in a protected message is INVALID_SYNTAX.

mod builder;
mod codec;
mod digital_signature;
pub mod header;
mod identification;
pub mod ids;
mod key_exchange;
mod notify;
pub mod payload;
mod security_association;
mod traffic_selector;

use crate::wire::{Error, Result};

pub use self::builder::{encode_encrypted_prefix, encode_message, encode_payloads, ENCRYPTED_PREFIX_LEN};
pub use self::digital_signature::{
    lists_identity_hash, signature_hash_algorithms, DigitalSignature, ED25519_ALGORITHM_IDENTIFIER,
};
pub use self::header::{Header, Packet, HEADER_LEN};
pub use self::identification::{Authentication, Identification};
pub use self::key_exchange::{KeyExchange, Nonce};
pub use self::notify::{Delete, Notify};
pub use self::payload::{RawPayload, RawPayloads};
pub use self::security_association::{Attribute, AttributeValue, Proposal, SecurityAssociation, Transform};
pub use self::traffic_selector::{TrafficSelector, TrafficSelectors};

use self::ids::payload as payload_type;

/// A parsed payload of the kinds the mesh uses; anything else is [`Payload::Unknown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    SecurityAssociation(SecurityAssociation),
    KeyExchange(KeyExchange),
    IdentificationInitiator(Identification),
    IdentificationResponder(Identification),
    Authentication(Authentication),
    Nonce(Nonce),
    Notify(Notify),
    Delete(Delete),
    TrafficSelectorInitiator(TrafficSelectors),
    TrafficSelectorResponder(TrafficSelectors),
    /// A payload this subset does not parse (CERTREQ, vendor ID, CP, unassigned types…):
    /// skipped unless critical, then answered with UNSUPPORTED_CRITICAL_PAYLOAD.
    Unknown(UnknownPayload),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPayload {
    pub payload_type: u8,
    pub critical: bool,
    pub body: Vec<u8>,
}

impl Payload {
    /// The type that goes in the previous Next Payload field.
    pub fn payload_type(&self) -> u8 {
        match self {
            Payload::SecurityAssociation(_) => payload_type::SECURITY_ASSOCIATION,
            Payload::KeyExchange(_) => payload_type::KEY_EXCHANGE,
            Payload::IdentificationInitiator(_) => payload_type::IDENTIFICATION_INITIATOR,
            Payload::IdentificationResponder(_) => payload_type::IDENTIFICATION_RESPONDER,
            Payload::Authentication(_) => payload_type::AUTHENTICATION,
            Payload::Nonce(_) => payload_type::NONCE,
            Payload::Notify(_) => payload_type::NOTIFY,
            Payload::Delete(_) => payload_type::DELETE,
            Payload::TrafficSelectorInitiator(_) => payload_type::TRAFFIC_SELECTOR_INITIATOR,
            Payload::TrafficSelectorResponder(_) => payload_type::TRAFFIC_SELECTOR_RESPONDER,
            Payload::Unknown(unknown) => unknown.payload_type,
        }
    }

    /// Parses the body of a raw payload by its type. The critical bit of a type we understand
    /// is ignored, as RFC 7296 §2.5 says. An SK payload is an error: it only belongs at the
    /// end of a message, where [`Message::parse`] takes it apart.
    pub fn parse(raw: &RawPayload<'_>) -> Result<Payload> {
        let body = raw.body;
        Ok(match raw.payload_type {
            payload_type::SECURITY_ASSOCIATION => Payload::SecurityAssociation(SecurityAssociation::parse(body)?),
            payload_type::KEY_EXCHANGE => Payload::KeyExchange(KeyExchange::parse(body)?),
            payload_type::IDENTIFICATION_INITIATOR => Payload::IdentificationInitiator(Identification::parse(body)?),
            payload_type::IDENTIFICATION_RESPONDER => Payload::IdentificationResponder(Identification::parse(body)?),
            payload_type::AUTHENTICATION => Payload::Authentication(Authentication::parse(body)?),
            payload_type::NONCE => Payload::Nonce(Nonce::parse(body)?),
            payload_type::NOTIFY => Payload::Notify(Notify::parse(body)?),
            payload_type::DELETE => Payload::Delete(Delete::parse(body)?),
            payload_type::TRAFFIC_SELECTOR_INITIATOR => {
                Payload::TrafficSelectorInitiator(TrafficSelectors::parse(body)?)
            }
            payload_type::TRAFFIC_SELECTOR_RESPONDER => {
                Payload::TrafficSelectorResponder(TrafficSelectors::parse(body)?)
            }
            payload_type::ENCRYPTED => return Err(Error::Malformed("IKE Encrypted payload where none may be")),
            other => {
                Payload::Unknown(UnknownPayload { payload_type: other, critical: raw.critical, body: body.to_vec() })
            }
        })
    }

    /// Appends the payload: generic header (critical bit clear, except as kept by an unknown
    /// payload), then the body.
    ///
    /// # Panics
    /// If the body exceeds 65531 bytes, or the typed payload's own `emit` panics.
    pub fn emit(&self, next_payload: u8, out: &mut Vec<u8>) {
        let critical = matches!(self, Payload::Unknown(unknown) if unknown.critical);
        payload::emit_payload(out, next_payload, critical, |out| match self {
            Payload::SecurityAssociation(sa) => sa.emit(out),
            Payload::KeyExchange(ke) => ke.emit(out),
            Payload::IdentificationInitiator(id) | Payload::IdentificationResponder(id) => id.emit(out),
            Payload::Authentication(auth) => auth.emit(out),
            Payload::Nonce(nonce) => nonce.emit(out),
            Payload::Notify(notify) => notify.emit(out),
            Payload::Delete(delete) => delete.emit(out),
            Payload::TrafficSelectorInitiator(ts) | Payload::TrafficSelectorResponder(ts) => ts.emit(out),
            Payload::Unknown(unknown) => out.extend_from_slice(&unknown.body),
        });
    }
}

/// Parses a payload chain that has no SK payload: the plaintext of an SK payload, whose
/// first type is the SK header's Next Payload.
pub fn parse_payloads(first_payload: u8, bytes: &[u8]) -> Result<Vec<Payload>> {
    RawPayloads::new(first_payload, bytes).map(|raw| Payload::parse(&raw?)).collect()
}

/// A received IKE message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub header: Header,
    /// The payloads in the clear: all of them in IKE_SA_INIT, usually none otherwise.
    pub payloads: Vec<Payload>,
    /// The SK payload, which is always last.
    pub encrypted: Option<Encrypted<'a>>,
}

/// An SK payload as received, for the crypto to verify and decrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encrypted<'a> {
    /// The type of the first payload inside: the SK payload's Next Payload.
    pub first_payload: u8,
    /// The AEAD's associated data (RFC 5282 §5.1): the message from the first byte of the IKE
    /// header to the last byte of the SK payload's generic header.
    pub associated_data: &'a [u8],
    /// IV, ciphertext (inner payloads, padding, pad length) and ICV.
    pub body: &'a [u8],
}

impl<'a> Message<'a> {
    /// Parses a datagram (after any non-ESP marker): the header, every payload in the clear,
    /// and where the SK payload is. Bytes past the header's Length are ignored.
    pub fn parse(datagram: &'a [u8]) -> Result<Message<'a>> {
        let packet = Packet::new_checked(datagram)?;
        let header = Header::parse(&packet);
        let first_payload = packet.next_payload();
        let message = &datagram[..packet.length() as usize];
        let mut payloads = Vec::new();
        let mut encrypted = None;
        for raw in RawPayloads::new(first_payload, &message[HEADER_LEN..]) {
            let raw = raw?;
            if raw.payload_type == payload_type::ENCRYPTED {
                // The chain ends with SK, so its body ends the message.
                encrypted = Some(Encrypted {
                    first_payload: raw.next_payload,
                    associated_data: &message[..message.len() - raw.body.len()],
                    body: raw.body,
                });
            } else {
                payloads.push(Payload::parse(&raw)?);
            }
        }
        Ok(Message { header, payloads, encrypted })
    }
}
