#![deny(unsafe_code)]

pub mod ctl;
pub mod daemon;
pub mod datapath;
pub mod diag;
pub mod drops;
pub mod error;
pub mod esp;
pub mod fdb;
pub mod ike;
pub mod keying;
pub mod manual;
pub mod netif;
pub mod node_identity;
pub mod offload;
pub mod overhead;
pub mod pmtu;
pub mod reload;
pub mod sadb;
pub mod state;
mod sys;
pub mod tap;
pub mod topology;
pub mod wire;
