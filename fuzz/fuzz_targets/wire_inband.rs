#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use meshd::wire::inband::{InbandHeader, Packet, VERSION};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    assert_eq!(packet.version(), VERSION);
    let header = InbandHeader::parse(&packet);
    // What the receiver writes back must read the same.
    let mut echoed = [0u8; meshd::wire::inband::HEADER_LEN];
    header.emit(&mut echoed);
    let again = Packet::new_checked(&echoed[..]).map(|p| InbandHeader::parse(&p));
    assert_eq!(again, Ok(header));
    black_box(packet.padding());
});
