//! IKEv2 (RFC 7296), the subset in DESIGN.md: a sans-IO state machine that the daemon drives
//! with datagrams and the current time, and that hands back datagrams to send, timers and
//! events (Child SAs to install or remove).

pub mod crypto;
pub mod endpoint;
pub mod identity;
pub mod message;
pub mod proposal;
pub mod types;

pub use self::endpoint::{Endpoint, IkeCounters, IkeSaStatus, IKE_PORT, NAT_T_PORT};
pub use self::types::{ChildSaKeys, Event, Failure, IkeSettings, PeerIndex, PeerSettings, Refusal, Transmit};
