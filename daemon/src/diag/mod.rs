//! Diagnostics served over the control socket: following drops as they happen, and the kernel's
//! drops of the mesh's traffic.

pub mod follow;
pub mod kernel;
