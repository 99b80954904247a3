#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd::diag::http::parse_request_line;

// The metrics endpoint's request-line parser, on any bytes a client could send.
fuzz_target!(|data: &[u8]| {
    if let Ok(line) = parse_request_line(data) {
        assert!(line.path.starts_with('/'));
        assert!(!line.method.is_empty() && !line.method.contains(' '));
        assert!(!line.path.contains('?') && !line.path.contains(' '));
    }
});
