//! Diagnostics: following drops as they happen over the control socket, the kernel's drops of
//! the mesh's traffic, the Prometheus endpoint, and the trace of a forwarding decision.

pub mod follow;
pub mod http;
pub mod kernel;
pub mod metrics;
pub mod trace;
