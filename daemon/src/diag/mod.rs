//! Diagnostics: following drops as they happen over the control socket, the kernel's drops of
//! the mesh's traffic, and the Prometheus endpoint.

pub mod follow;
pub mod http;
pub mod kernel;
pub mod metrics;
