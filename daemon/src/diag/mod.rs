//! Diagnostics: the capture of decrypted frames, following drops as they happen over the control socket, the kernel's drops of
//! the mesh's traffic, the Prometheus endpoint, the trace of a forwarding decision, and the two-sided ping.

pub mod bugreport;
pub mod capture;
pub mod follow;
pub mod http;
pub mod kernel;
pub mod keys;
pub mod metrics;
pub mod observe;
pub mod ping;
pub mod query;
pub mod trace;

/// Bytes as lowercase hex, as the control protocol carries frames and keys.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}
