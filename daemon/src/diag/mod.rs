//! Diagnostics served over the control socket: following drops as they happen.

pub mod follow;
