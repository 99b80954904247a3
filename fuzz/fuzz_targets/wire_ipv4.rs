#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use meshd::wire::ipv4::Packet;

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    black_box((packet.version(), packet.dscp(), packet.ecn(), packet.identification()));
    black_box((packet.dont_fragment(), packet.more_fragments(), packet.fragment_offset()));
    black_box((packet.is_fragment(), packet.hop_limit(), packet.protocol(), packet.checksum()));
    black_box((packet.source_address(), packet.destination_address()));
    black_box(packet.verify_checksum());
    let payload_len = packet.payload().len();
    assert_eq!(payload_len, usize::from(packet.total_length()) - packet.header_length());

    // A refilled checksum must verify, whatever the options hold.
    let mut copy = data.to_vec();
    let mut packet = Packet::new_checked(&mut copy[..]).expect("checked once already");
    packet.fill_checksum();
    assert!(packet.verify_checksum());
    assert_eq!(packet.payload_mut().len(), payload_len);
});
