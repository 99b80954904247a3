#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use meshd::wire::ethernet;
use meshd::wire::vxlan::{Packet, FLAG_I, VNI_MAX};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    assert!(packet.flags() & FLAG_I != 0);
    assert!(packet.vni() <= VNI_MAX);
    // The datapath parses the inner frame next.
    if let Ok(frame) = ethernet::Frame::new_checked(packet.payload()) {
        black_box((frame.destination(), frame.source(), frame.ethertype(), frame.payload()));
    }
});
