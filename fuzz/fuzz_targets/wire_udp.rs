#![no_main]

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use meshd::wire::udp::{Packet, HEADER_LEN};

const V4: (Ipv4Addr, Ipv4Addr) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
const V6: (Ipv6Addr, Ipv6Addr) =
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    black_box((packet.source_port(), packet.destination_port(), packet.checksum()));
    black_box(packet.verify_checksum_ipv4(V4.0, V4.1));
    black_box(packet.verify_checksum_ipv6(V6.0, V6.1));
    assert_eq!(packet.payload().len() + HEADER_LEN, usize::from(packet.length()));

    // A filled checksum must verify and never be 0 (which means "none" on the wire).
    let mut copy = data.to_vec();
    let mut packet = Packet::new_checked(&mut copy[..]).expect("checked once already");
    packet.fill_checksum_ipv4(V4.0, V4.1);
    assert!(packet.checksum() != 0 && packet.verify_checksum_ipv4(V4.0, V4.1));
    packet.fill_checksum_ipv6(V6.0, V6.1);
    assert!(packet.checksum() != 0 && packet.verify_checksum_ipv6(V6.0, V6.1));
    black_box(packet.payload_mut());
});
