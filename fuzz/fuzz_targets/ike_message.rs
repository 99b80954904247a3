#![no_main]

//! IKEv2 message parsing from arbitrary bytes, two ways: as a datagram (header, the payloads in
//! the clear, the SK payload), and as the decrypted plaintext of an SK payload (first byte: the
//! SK header's Next Payload). Whatever parses must re-encode into something that parses the
//! same. The data of every AUTH and notify payload is also read as an RFC 7427 signature
//! (ASN.1 length, AlgorithmIdentifier, signature) and as SIGNATURE_HASH_ALGORITHMS.

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use meshd::ike::message::{
    encode_message, encode_payloads, lists_identity_hash, parse_payloads, DigitalSignature, Message, Packet, Payload,
    RawPayloads,
};

/// Signature AUTH data that parses re-encodes to the same bytes.
fn check_signature_data(payload: &Payload) {
    let data = match payload {
        Payload::Authentication(auth) => &auth.data,
        Payload::Notify(notify) => {
            let _ = black_box(lists_identity_hash(&notify.data));
            &notify.data
        }
        _ => return,
    };
    if let Ok(signature) = DigitalSignature::parse(data) {
        assert_eq!(&signature.to_auth_data(), data);
        let _ = black_box(signature.is_ed25519());
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::parse(data) {
        let packet = Packet::new_checked(data).expect("Message::parse checked the header");
        match message.encrypted {
            Some(encrypted) => {
                let whole = [encrypted.associated_data, encrypted.body].concat();
                assert_eq!(whole, packet.message());
            }
            None => {
                let bytes = encode_message(&message.header, &message.payloads);
                let again = Message::parse(&bytes).expect("re-encoded message parses");
                assert_eq!(again, message);
            }
        }
    }

    // Every payload of the chain, including those after one whose body does not parse.
    if let Ok(packet) = Packet::new_checked(data) {
        for raw in RawPayloads::new(packet.next_payload(), packet.payload()) {
            let Ok(raw) = raw else { break };
            if let Ok(payload) = Payload::parse(&raw) {
                check_signature_data(&payload);
            }
        }
    }

    if let Some((&first, plaintext)) = data.split_first() {
        if let Ok(payloads) = parse_payloads(first, plaintext) {
            payloads.iter().for_each(check_signature_data);
            let (first, bytes) = encode_payloads(&payloads);
            assert_eq!(parse_payloads(first, &bytes), Ok(payloads));
        }
    }
});
