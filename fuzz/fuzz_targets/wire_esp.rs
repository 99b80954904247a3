#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use meshd::wire::esp::{classify_udp_encap, Packet, UdpEncapKind, HEADER_LEN, IV_LEN, NON_ESP_MARKER_LEN};

fuzz_target!(|data: &[u8]| {
    // As on UDP 4500: classify, then parse what the classification says.
    match classify_udp_encap(data) {
        Ok(UdpEncapKind::Esp) => {
            if let Ok(packet) = Packet::new_checked(data) {
                check(&packet, data);
            }
        }
        Ok(UdpEncapKind::Ike) => {
            black_box(&data[NON_ESP_MARKER_LEN..]);
        }
        Ok(UdpEncapKind::NatKeepalive) => assert_eq!(data, [0xFF]),
        Err(_) => assert!(data.len() < NON_ESP_MARKER_LEN),
    }
    // As with IP protocol 50: no classification.
    if let Ok(packet) = Packet::new_checked(data) {
        check(&packet, data);
    }
});

fn check(packet: &Packet<&[u8]>, data: &[u8]) {
    assert!(packet.spi() != 0);
    black_box(packet.sequence_number());
    assert_eq!(packet.iv().len(), IV_LEN);
    assert_eq!(packet.payload().len(), data.len() - HEADER_LEN);
}
