//! Diagnostics: following drops as they happen over the control socket, the kernel's drops of
//! the mesh's traffic, the Prometheus endpoint, the trace of a forwarding decision, and the two-sided ping.

pub mod follow;
pub mod http;
pub mod kernel;
pub mod metrics;
pub mod ping;
pub mod query;
pub mod trace;

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
