//! IKEv2 (RFC 7296), the subset in docs/ike.md: a sans-IO state machine that the daemon drives
//! with datagrams and the current time, and that hands back datagrams to send, timers and
//! events (Child SAs to install or remove).
//!
//! - [`endpoint`]: demultiplexes datagrams to IKE SAs by SPI, applies mesh policy, queues output.
//! - `sa`: one IKE SA after IKE_SA_INIT, its phases named for what they wait for.
//! - `handshake`: IKE_SA_INIT and IKE_AUTH in both roles; `auth`: the AUTH payload and IDs;
//!   [`identity`]: who may authenticate how (Ed25519 signatures or the pre-shared key).
//! - `child`: the Child SA lifecycle; `rekey`: IKE SA rekeys.
//! - `window`: the request window (message IDs, retransmission, response cache).
//! - `policy`: who initiates, which duplicate wins, backoff; `cookie_gate`: the half-open limit.
//! - `status`: what `ikectl` shows; [`rng`]: where SPIs and nonces come from; `timers`: the
//!   endpoint's deadlines in order.

mod auth;
mod child;
mod context;
mod cookie_gate;
pub mod crypto;
mod endpoint;
mod handover;
mod handshake;
pub mod identity;
pub mod message;
mod parts;
mod policy;
pub mod proposal;
mod rekey;
pub mod rng;
mod sa;
mod status;
mod timers;
pub mod types;
mod window;

pub use self::endpoint::Endpoint;
pub use self::handover::IkeHandover;
// The fuzz target drives the endpoint with its own generator.
#[cfg(feature = "internals")]
pub use self::rng::{Rng, RngError};
pub use self::status::{IkeCounters, IkeSaStatus, IkeState};
pub use self::types::{ChildSaKeys, Event, Failure, IkeSettings, PeerIndex, PeerSettings, Refusal, Transmit};

pub const IKE_PORT: u16 = 500;
pub const NAT_T_PORT: u16 = 4500;
