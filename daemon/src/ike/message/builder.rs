//! Writing messages: payload chains with every Next Payload and length filled in.

use super::header::{Header, HEADER_LEN};
use super::ids::payload as payload_type;
use super::payload::{emit_generic_header, GENERIC_HEADER_LEN};
use super::Payload;

/// The IKE header and the SK payload's generic header: what [`encode_encrypted_prefix`]
/// returns, and the AEAD's associated data.
pub const ENCRYPTED_PREFIX_LEN: usize = HEADER_LEN + GENERIC_HEADER_LEN;

/// Encodes `payloads` as a chain, in order. Returns the type of the first one (for the IKE
/// header or the SK payload header; `ids::payload::NONE` if there is none) and the bytes.
///
/// # Panics
/// If a payload cannot be encoded; see [`Payload::emit`].
pub fn encode_payloads(payloads: &[Payload]) -> (u8, Vec<u8>) {
    let mut out = Vec::new();
    for (index, payload) in payloads.iter().enumerate() {
        let next = payloads.get(index + 1).map_or(payload_type::NONE, Payload::payload_type);
        payload.emit(next, &mut out);
    }
    let first = payloads.first().map_or(payload_type::NONE, Payload::payload_type);
    (first, out)
}

/// Encodes a message whose payloads all travel in the clear (IKE_SA_INIT, or an
/// unauthenticated error reply).
///
/// # Panics
/// If a payload cannot be encoded; see [`Payload::emit`].
pub fn encode_message(header: &Header, payloads: &[Payload]) -> Vec<u8> {
    let (first, chain) = encode_payloads(payloads);
    let mut out = vec![0; HEADER_LEN];
    header.emit(&mut out, first, message_length(HEADER_LEN + chain.len()));
    out.extend_from_slice(&chain);
    out
}

/// The start of a message that carries one SK payload: the IKE header and the SK generic
/// header, `ENCRYPTED_PREFIX_LEN` bytes, with the lengths counting a body of `body_len` bytes
/// (IV, ciphertext, ICV) that the caller appends. These bytes are also the associated data.
/// `first_inner_payload` is the first type of the encrypted chain, from [`encode_payloads`].
///
/// # Panics
/// If `body_len` exceeds 65531 bytes.
pub fn encode_encrypted_prefix(header: &Header, first_inner_payload: u8, body_len: usize) -> Vec<u8> {
    let mut out = vec![0; HEADER_LEN];
    header.emit(&mut out, payload_type::ENCRYPTED, message_length(ENCRYPTED_PREFIX_LEN + body_len));
    emit_generic_header(&mut out, first_inner_payload, false, body_len);
    out
}

fn message_length(len: usize) -> u32 {
    u32::try_from(len).expect("IKE message longer than 4 GiB")
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use proptest::prelude::*;

    use super::*;
    use crate::ike::message::ids::{
        authentication, diffie_hellman, encryption, exchange, notify, protocol, pseudorandom_function, transform,
    };
    use crate::ike::message::payload::RawPayloads;
    use crate::ike::message::{
        parse_payloads, Authentication, Delete, Encrypted, Identification, KeyExchange, Message, Nonce, Notify, Packet,
        Proposal, SecurityAssociation, TrafficSelector, TrafficSelectors, Transform, UnknownPayload,
    };
    use crate::wire::ipv4::PROTOCOL_UDP;
    use crate::wire::Error;

    fn init_header() -> Header {
        Header {
            initiator_spi: 0x1122_3344_5566_7788,
            responder_spi: 0,
            exchange_type: exchange::IKE_SA_INIT,
            initiator: true,
            response: false,
            message_id: 0,
        }
    }

    /// The two IKE proposals meshd offers.
    fn ike_sa() -> SecurityAssociation {
        let prf = Transform::new(transform::PSEUDORANDOM_FUNCTION, pseudorandom_function::HMAC_SHA2_256);
        let dh = Transform::new(transform::DIFFIE_HELLMAN, diffie_hellman::CURVE25519);
        SecurityAssociation {
            proposals: vec![
                Proposal {
                    number: 1,
                    protocol_id: protocol::IKE,
                    spi: vec![],
                    transforms: vec![
                        Transform {
                            key_length: Some(256),
                            ..Transform::new(transform::ENCRYPTION, encryption::AES_GCM_16)
                        },
                        prf.clone(),
                        dh.clone(),
                    ],
                },
                Proposal {
                    number: 2,
                    protocol_id: protocol::IKE,
                    spi: vec![],
                    transforms: vec![Transform::new(transform::ENCRYPTION, encryption::CHACHA20_POLY1305), prf, dh],
                },
            ],
        }
    }

    fn init_payloads() -> Vec<Payload> {
        vec![
            Payload::SecurityAssociation(ike_sa()),
            Payload::KeyExchange(KeyExchange { group: diffie_hellman::CURVE25519, data: vec![0x4b; 32] }),
            Payload::Nonce(Nonce { data: vec![0x4e; 32] }),
            Payload::Notify(Notify::new(notify::NAT_DETECTION_SOURCE_IP, vec![0x53; 20])),
            Payload::Notify(Notify::new(notify::NAT_DETECTION_DESTINATION_IP, vec![0x44; 20])),
        ]
    }

    #[test]
    fn ike_sa_init_request() {
        let bytes = encode_message(&init_header(), &init_payloads());

        // Lengths: SA 4 + (8 + 12 + 8 + 8) + (8 + 8 + 8 + 8) = 72, KE 4 + 4 + 32 = 40,
        // Nonce 4 + 32 = 36, each notify 4 + 4 + 20 = 28.
        let lengths = [72usize, 40, 36, 28, 28];
        assert_eq!(bytes.len(), HEADER_LEN + lengths.iter().sum::<usize>());

        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.length() as usize, bytes.len());
        assert_eq!(packet.next_payload(), payload_type::SECURITY_ASSOCIATION);
        assert_eq!((packet.major_version(), packet.minor_version()), (2, 0));
        assert_eq!(packet.flags(), 0x08);
        assert_eq!(Header::parse(&packet), init_header());

        // Every generic header: type chain and length.
        let raw: Vec<_> = RawPayloads::new(packet.next_payload(), packet.payload()).map(Result::unwrap).collect();
        let types: Vec<_> = raw.iter().map(|r| r.payload_type).collect();
        assert_eq!(
            types,
            [
                payload_type::SECURITY_ASSOCIATION,
                payload_type::KEY_EXCHANGE,
                payload_type::NONCE,
                payload_type::NOTIFY,
                payload_type::NOTIFY,
            ]
        );
        let nexts: Vec<_> = raw.iter().map(|r| r.next_payload).collect();
        assert_eq!(nexts[..4], types[1..]);
        assert_eq!(nexts[4], payload_type::NONE);
        for (r, length) in raw.iter().zip(lengths) {
            assert_eq!(r.body.len() + GENERIC_HEADER_LEN, length);
            assert!(!r.critical);
        }

        // The SA payload byte by byte: proposal and transform lengths, Last Substruc values.
        assert_eq!(
            raw[0].body,
            [
                0x02, 0x00, 0x00, 0x24, 0x01, 0x01, 0x00, 0x03, // proposal 1: more, length 36
                0x03, 0x00, 0x00, 0x0c, 0x01, 0x00, 0x00, 0x14, // ENCR_AES_GCM_16
                0x80, 0x0e, 0x01, 0x00, // key length 256
                0x03, 0x00, 0x00, 0x08, 0x02, 0x00, 0x00, 0x05, // PRF_HMAC_SHA2_256
                0x00, 0x00, 0x00, 0x08, 0x04, 0x00, 0x00, 0x1f, // DH 31, last transform
                0x00, 0x00, 0x00, 0x20, 0x02, 0x01, 0x00, 0x03, // proposal 2: last, length 32
                0x03, 0x00, 0x00, 0x08, 0x01, 0x00, 0x00, 0x1c, // ENCR_CHACHA20_POLY1305
                0x03, 0x00, 0x00, 0x08, 0x02, 0x00, 0x00, 0x05, // PRF_HMAC_SHA2_256
                0x00, 0x00, 0x00, 0x08, 0x04, 0x00, 0x00, 0x1f, // DH 31, last transform
            ]
        );
        assert_eq!(raw[1].body[..4], [0x00, 0x1f, 0x00, 0x00]);
        assert_eq!(raw[3].body[..4], [0x00, 0x00, 0x40, 0x04]);
        assert_eq!(raw[4].body[..4], [0x00, 0x00, 0x40, 0x05]);

        let message = Message::parse(&bytes).unwrap();
        assert_eq!(message.header, init_header());
        assert_eq!(message.payloads, init_payloads());
        assert_eq!(message.encrypted, None);
        let Payload::SecurityAssociation(sa) = &message.payloads[0] else {
            panic!("first payload is not SA");
        };
        let aes = &sa.proposals[0].transforms[0];
        assert_eq!((aes.transform_id, aes.key_length), (encryption::AES_GCM_16, Some(256)));
        assert_eq!(sa.proposals[1].transforms[0].key_length, None);
        assert_eq!(sa.proposals[1].transforms[0].transform_id, encryption::CHACHA20_POLY1305);
        assert!(sa.proposals[0].transforms[0].other_attributes.is_empty());
    }

    fn auth_payloads() -> Vec<Payload> {
        let node = IpAddr::from([198, 18, 0, 1]);
        let peer = IpAddr::from([198, 18, 0, 2]);
        let child_sa = SecurityAssociation {
            proposals: vec![Proposal {
                number: 1,
                protocol_id: protocol::ESP,
                spi: vec![0xc0, 0, 0x10, 0x01],
                transforms: vec![
                    Transform::new(transform::ENCRYPTION, encryption::CHACHA20_POLY1305),
                    Transform::new(transform::EXTENDED_SEQUENCE_NUMBERS, 1),
                ],
            }],
        };
        vec![
            Payload::IdentificationInitiator(Identification::from_ip(node)),
            Payload::Notify(Notify::new(notify::INITIAL_CONTACT, vec![])),
            Payload::Authentication(Authentication {
                method: authentication::SHARED_KEY_MESSAGE_INTEGRITY_CODE,
                data: vec![0xa0; 32],
            }),
            Payload::Notify(Notify::new(notify::USE_TRANSPORT_MODE, vec![])),
            Payload::SecurityAssociation(child_sa),
            Payload::TrafficSelectorInitiator(TrafficSelectors {
                selectors: vec![TrafficSelector::host(node, PROTOCOL_UDP, 4790)],
            }),
            Payload::TrafficSelectorResponder(TrafficSelectors {
                selectors: vec![TrafficSelector::host(peer, PROTOCOL_UDP, 4790)],
            }),
        ]
    }

    #[test]
    fn encrypted_message_round_trip() {
        let header = Header {
            exchange_type: exchange::IKE_AUTH,
            responder_spi: 0x99aa_bbcc_ddee_ff00,
            message_id: 1,
            ..init_header()
        };
        let (first, inner) = encode_payloads(&auth_payloads());
        assert_eq!(first, payload_type::IDENTIFICATION_INITIATOR);
        assert_eq!(parse_payloads(first, &inner), Ok(auth_payloads()));

        // Stand-in for the crypto: IV (8) | "ciphertext" | ICV (16).
        let mut body = vec![0x17; 8];
        body.extend_from_slice(&inner);
        body.extend_from_slice(&[0xcc; 16]);
        let prefix = encode_encrypted_prefix(&header, first, body.len());
        assert_eq!(prefix.len(), ENCRYPTED_PREFIX_LEN);
        let mut bytes = prefix.clone();
        bytes.extend_from_slice(&body);

        let message = Message::parse(&bytes).unwrap();
        assert_eq!(message.header, header);
        assert!(message.payloads.is_empty());
        assert_eq!(
            message.encrypted,
            Some(Encrypted {
                first_payload: payload_type::IDENTIFICATION_INITIATOR,
                associated_data: &prefix,
                body: &body,
            })
        );
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.length() as usize, bytes.len());
        assert_eq!(packet.next_payload(), payload_type::ENCRYPTED);
        // SK generic header: inner first type, not critical, length 4 + body.
        assert_eq!(prefix[28..30], [payload_type::IDENTIFICATION_INITIATOR, 0]);
        assert_eq!(usize::from(u16::from_be_bytes([prefix[30], prefix[31]])), GENERIC_HEADER_LEN + body.len());
    }

    #[test]
    fn clear_payloads_before_sk_are_associated_data() {
        let unknown = Payload::Unknown(UnknownPayload {
            payload_type: payload_type::VENDOR_ID,
            critical: false,
            body: vec![1, 2, 3],
        });
        let (_, chain) = encode_payloads(std::slice::from_ref(&unknown));
        // Rewrite the vendor ID's Next Payload to SK and append an SK payload by hand.
        let mut chain = chain;
        chain[0] = payload_type::ENCRYPTED;
        chain.extend_from_slice(&[payload_type::DELETE, 0, 0, 6, 0xee, 0xee]);
        let mut bytes = vec![0; HEADER_LEN];
        init_header().emit(&mut bytes, payload_type::VENDOR_ID, (HEADER_LEN + chain.len()) as u32);
        bytes.extend_from_slice(&chain);
        let message = Message::parse(&bytes).unwrap();
        assert_eq!(message.payloads, [unknown]);
        let encrypted = message.encrypted.unwrap();
        assert_eq!(encrypted.first_payload, payload_type::DELETE);
        assert_eq!(encrypted.associated_data, &bytes[..bytes.len() - 2]);
        assert_eq!(encrypted.body, [0xee, 0xee]);
    }

    #[test]
    fn unknown_payloads_keep_the_critical_bit() {
        let payloads = vec![
            Payload::Unknown(UnknownPayload { payload_type: 200, critical: true, body: vec![9] }),
            Payload::Delete(Delete::ike()),
        ];
        let (first, bytes) = encode_payloads(&payloads);
        assert_eq!(first, 200);
        let unknown = [payload_type::DELETE, 0x80, 0x00, 0x05, 0x09]; // next D, critical, length 5
        let delete = [payload_type::NONE, 0x00, 0x00, 0x08, 0x01, 0x00, 0x00, 0x00]; // D(IKE)
        assert_eq!(bytes, [&unknown[..], &delete[..]].concat());
        assert_eq!(parse_payloads(first, &bytes), Ok(payloads));
        // A known type's critical bit is ignored.
        let mut critical = bytes.clone();
        critical[6] = 0x80;
        assert_eq!(parse_payloads(first, &critical).unwrap()[1], Payload::Delete(Delete::ike()));
    }

    #[test]
    fn empty_chains() {
        assert_eq!(encode_payloads(&[]), (payload_type::NONE, vec![]));
        let bytes = encode_message(&init_header(), &[]);
        assert_eq!(bytes.len(), HEADER_LEN);
        let message = Message::parse(&bytes).unwrap();
        assert!(message.payloads.is_empty() && message.encrypted.is_none());
        assert_eq!(parse_payloads(payload_type::NONE, &[]), Ok(vec![]));
    }

    #[test]
    fn errors_not_panics() {
        let bytes = encode_message(&init_header(), &init_payloads());
        for len in 0..bytes.len() {
            // The header's Length now exceeds the buffer.
            assert_eq!(Message::parse(&bytes[..len]), Err(Error::Truncated), "{len}");
        }
        // Shrink the Length instead: the chain then ends inside a payload.
        for cut in 1..bytes.len() - HEADER_LEN {
            let mut short = bytes.clone();
            let length = (bytes.len() - cut) as u32;
            short[24..28].copy_from_slice(&length.to_be_bytes());
            assert!(Message::parse(&short).is_err(), "{cut}");
        }
        // Every payload length one too short or too long.
        let raw_offsets = [28usize, 100, 140, 176, 204];
        for offset in raw_offsets {
            for delta in [-1i32, 1] {
                let mut bad = bytes.clone();
                let length = u16::from_be_bytes([bad[offset + 2], bad[offset + 3]]);
                let length = (i32::from(length) + delta) as u16;
                bad[offset + 2..offset + 4].copy_from_slice(&length.to_be_bytes());
                assert!(Message::parse(&bad).is_err(), "{offset} {delta}");
            }
        }
        // SK inside SK.
        assert_eq!(
            parse_payloads(payload_type::ENCRYPTED, &[0, 0, 0, 4]),
            Err(Error::Malformed("IKE Encrypted payload where none may be"))
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Message::parse(&bytes);
        }

        #[test]
        fn inner_parse_never_panics(
            first in any::<u8>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            if let Ok(payloads) = parse_payloads(first, &bytes) {
                // What parses re-encodes into something that parses the same.
                let (first, bytes) = encode_payloads(&payloads);
                prop_assert_eq!(parse_payloads(first, &bytes), Ok(payloads));
            }
        }

        /// Valid header and chain with one byte changed, so that most inputs get deep.
        #[test]
        fn mutated_messages_never_panic(at in any::<prop::sample::Index>(), value in any::<u8>()) {
            let mut bytes = encode_message(&init_header(), &init_payloads());
            let at = at.index(bytes.len());
            bytes[at] = value;
            let _ = Message::parse(&bytes);
        }
    }
}
