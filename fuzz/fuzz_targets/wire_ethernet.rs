#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use meshd::wire::ethernet::{Frame, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = Frame::new_checked(data) else {
        return;
    };
    let destination = frame.destination();
    black_box((destination.is_broadcast(), destination.is_multicast(), destination.is_unicast()));
    black_box((frame.source(), frame.ethertype()));
    assert_eq!(frame.payload().len(), data.len() - HEADER_LEN);
    // Display and FromStr must round-trip any address.
    let text = destination.to_string();
    assert_eq!(text.parse(), Ok(destination));
});
