//! The control socket's request parser (`mesh_config::control::Request`, one JSON line from
//! ikectl): any bytes are refused or parsed without panicking, and a parsed request reads back
//! the same after being written again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_config::control::Request;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<Request>(data) {
        let written = serde_json::to_vec(&request).expect("a parsed request serializes");
        let again: Request = serde_json::from_slice(&written).expect("a written request parses");
        assert_eq!(again, request);
    }
});
