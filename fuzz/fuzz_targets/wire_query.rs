#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use meshd::wire::query::{Packet, QueryHeader, HEADER_LEN, MAC_LEN, MAX_LEN};

// The diagnostic query view on any datagram; what parses re-emits to the same bytes.
fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    let header = QueryHeader {
        query_type: packet.query_type(),
        nonce: packet.nonce(),
        timestamp_ms: packet.timestamp_ms(),
        sender: packet.sender(),
    };
    black_box((packet.mac(), packet.authenticated()));
    assert_eq!(packet.body().len() + HEADER_LEN + MAC_LEN, data.len());
    let mut buf = vec![0u8; MAX_LEN];
    let len = header.emit(packet.body(), &mut buf).expect("a parsed query re-emits");
    assert_eq!(&buf[..len], packet.authenticated());
});
