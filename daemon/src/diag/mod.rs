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

use mesh_config::control::OverlayStatus;

use crate::keying::Keying;
use crate::state::MeshState;

/// What the per-peer diagnostics (`trace`, `ping`) read: the shared state, the keying driver and
/// the overlays' interface status.
#[derive(Clone, Copy)]
pub struct Sources<'a> {
    pub state: &'a MeshState,
    pub keying: &'a Keying,
    pub overlays: &'a [OverlayStatus],
}
