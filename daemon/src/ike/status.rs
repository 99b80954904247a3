//! What the endpoint reports: the state of each IKE SA for `ikectl sa list`, and counters of
//! refused messages.

use std::fmt;
use std::net::SocketAddr;

use mesh_config::Cipher;

use super::identity::PeerAuth;
use super::types::PeerIndex;

/// The state of an IKE SA, named for what it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IkeState {
    /// Initiator: IKE_SA_INIT sent.
    ExpectInitResponse,
    /// Responder: IKE_SA_INIT answered.
    ExpectAuthRequest,
    /// Initiator: IKE_AUTH sent.
    ExpectAuthResponse,
    Established,
    /// DELETE sent; gone when it is answered.
    Deleting,
}

impl IkeState {
    const ALL: [IkeState; 5] = [
        IkeState::ExpectInitResponse,
        IkeState::ExpectAuthRequest,
        IkeState::ExpectAuthResponse,
        IkeState::Established,
        IkeState::Deleting,
    ];

    /// The state whose `Display` is `text`: how a peer's answer to a diagnostic query (which
    /// carries `ikectl sa list`'s text) is read back.
    pub fn from_text(text: &str) -> Option<IkeState> {
        IkeState::ALL.into_iter().find(|state| state.to_string() == text)
    }
}

impl fmt::Display for IkeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IkeState::ExpectInitResponse => "connecting (IKE_SA_INIT sent)",
            IkeState::ExpectAuthRequest => "half-open (waiting for IKE_AUTH)",
            IkeState::ExpectAuthResponse => "authenticating (IKE_AUTH sent)",
            IkeState::Established => "established",
            IkeState::Deleting => "deleting",
        })
    }
}

/// State of one IKE SA, for `ikectl sa list`.
#[derive(Debug, Clone, PartialEq)]
pub struct IkeSaStatus {
    pub peer: Option<PeerIndex>,
    pub initiator_spi: u64,
    pub responder_spi: u64,
    pub we_initiated: bool,
    pub state: IkeState,
    pub cipher: Option<Cipher>,
    pub remote: SocketAddr,
    /// This node is behind NAT (its address or port is translated on the way to the peer).
    pub nat_detected: bool,
    /// IKE and ESP travel in UDP 4500.
    pub udp_encap: bool,
    pub established_secs: Option<u64>,
    pub rekey_in_secs: Option<u64>,
    /// (inbound SPI, outbound SPI) of each Child SA.
    pub children: Vec<(u32, u32)>,
    /// How the peer authenticated, once it has.
    pub peer_auth: Option<PeerAuth>,
}

/// Counters of messages that were refused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IkeCounters {
    /// Malformed, and (as before) unexpected for the IKE SA's state or message IDs.
    pub malformed: u64,
    pub unauthentic: u64,
    pub unknown_spi: u64,
    pub cookies_sent: u64,
}
