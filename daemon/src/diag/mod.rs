//! Diagnostics: the capture of decrypted frames, following drops as they happen over the control socket, the kernel's drops of
//! the mesh's traffic, the Prometheus endpoint, the trace of a forwarding decision, and the two-sided ping.

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
