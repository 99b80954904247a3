#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use meshd::wire::ipv6::{Packet, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    black_box((packet.version(), packet.traffic_class(), packet.flow_label()));
    black_box((packet.next_header(), packet.hop_limit()));
    black_box((packet.source_address(), packet.destination_address()));
    assert_eq!(packet.payload().len(), usize::from(packet.payload_length()));
    assert!(HEADER_LEN + packet.payload().len() <= data.len());
});
