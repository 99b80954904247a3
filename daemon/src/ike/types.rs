//! What the IKE endpoint is configured with, and what it hands back to its driver.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use std::sync::Arc;

use mesh_config::{Cipher, Mode, Proposal, PublicKey};
use zeroize::Zeroizing;

use super::crypto::NodeKey;
use super::identity::IdentityFailure;
use super::message::ids::notify;
use super::rng::RngError;
use crate::esp::KeyMaterial;

/// Index of a peer in `IkeSettings::peers` (the daemon uses the same order as its topology).
pub type PeerIndex = usize;

/// One peer as IKE sees it.
#[derive(Debug, Clone)]
pub struct PeerSettings {
    pub address: IpAddr,
    pub mode: Mode,
    /// Its Ed25519 public keys from mesh.toml; empty: it authenticates with the pre-shared key.
    pub public_keys: Vec<PublicKey>,
}

/// Everything the endpoint needs from the mesh file.
#[derive(Clone)]
pub struct IkeSettings {
    pub local: IpAddr,
    /// Empty when mesh.toml names no psk_file.
    pub psk: Zeroizing<Vec<u8>>,
    /// Our Ed25519 key, when mesh.toml lists public keys for this node (see `ike::identity`).
    pub node_key: Option<Arc<NodeKey>>,
    /// IKE SA proposals, preferred first; their ciphers, in order, are also the ESP offer.
    pub proposals: Vec<Proposal>,
    pub ike_lifetime: Duration,
    pub child_lifetime: Duration,
    /// Liveness: an idle IKE SA is checked this often.
    pub dpd: Duration,
    /// Float to UDP 4500 and encapsulate ESP even without NAT (`encap = "udp"`).
    pub force_udp_encap: bool,
    /// Offer and accept extended sequence numbers.
    pub esn: bool,
    /// The overlay port of the traffic selectors.
    pub vxlan_port: u16,
    pub peers: Vec<PeerSettings>,
}

impl IkeSettings {
    pub fn ciphers(&self) -> Vec<Cipher> {
        let mut ciphers: Vec<Cipher> = Vec::new();
        for proposal in &self.proposals {
            if !ciphers.contains(&proposal.cipher) {
                ciphers.push(proposal.cipher);
            }
        }
        ciphers
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    /// 500, or 4500 after floating (the driver then prepends the non-ESP marker).
    pub source_port: u16,
    pub bytes: Vec<u8>,
}

/// One direction of a Child SA, ready for the SADB.
pub struct ChildSaKeys {
    pub spi: u32,
    pub cipher: Cipher,
    pub esn: bool,
    pub mode: Mode,
    /// Where the peer's ESP comes from and ours goes: its address and port 4500 as IKE saw
    /// them (behind NAT, the NAT's).
    pub remote: SocketAddr,
    pub key: KeyMaterial,
}

impl std::fmt::Debug for ChildSaKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChildSaKeys(spi {:#010x}, {}, esn {}, {})", self.spi, self.cipher, self.esn, self.mode)
    }
}

/// Why an IKE SA attempt or an IKE SA ended, for logs and `ikectl`. Grouped by who said so:
/// the peer (it answered with an error notify), this node (the peer's message did not verify,
/// or this node could not go on), or nobody (no answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    // --- authentication ---
    /// The peer's pre-shared key AUTH did not verify, or the peer said AUTHENTICATION_FAILED.
    Authentication { peer_said: bool },
    /// The peer's identity or signature was refused.
    Identity(IdentityFailure),
    // --- negotiation ---
    /// No proposal in common.
    NoProposalChosen { peer_said: bool },
    /// The peer refused the Child SA's traffic selectors.
    TrafficSelectors,
    /// The peer answered with another error notify (its number; see RFC 7296 §3.10.1).
    PeerError { notify: u16 },
    // --- the path ---
    /// The peer did not answer.
    Timeout,
    // --- this node ---
    /// This node could not make what the exchange needs.
    Local(LocalError),
}

impl Failure {
    /// The failure a peer's error notify in a response names.
    pub(crate) fn from_peer_notify(notify_type: u16) -> Failure {
        match notify_type {
            notify::AUTHENTICATION_FAILED => Failure::Authentication { peer_said: true },
            notify::NO_PROPOSAL_CHOSEN => Failure::NoProposalChosen { peer_said: true },
            notify::TS_UNACCEPTABLE => Failure::TrafficSelectors,
            notify => Failure::PeerError { notify },
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Authentication { peer_said: true } => f.write_str(
                "AUTHENTICATION_FAILED: the peer refused our AUTH; its log says why (with keys: does its mesh.toml list this node's public key, `meshd pubkey`? with a psk_file: is it the same on both nodes?)",
            ),
            Failure::Authentication { peer_said: false } => f.write_str(
                "AUTHENTICATION_FAILED: the peer's AUTH does not verify with our pre-shared key; copy the same psk_file to both nodes",
            ),
            Failure::Identity(failure) => write!(f, "AUTHENTICATION_FAILED: {failure}"),
            Failure::NoProposalChosen { .. } => {
                f.write_str("NO_PROPOSAL_CHOSEN: no proposal in common; make [ike] proposals overlap on both nodes")
            }
            Failure::Timeout => f.write_str("no answer from the peer (is meshd running there, and UDP 500/4500 open?)"),
            Failure::TrafficSelectors => {
                f.write_str("TS_UNACCEPTABLE: the peer refused the traffic selectors; check vxlan_port on both nodes")
            }
            Failure::PeerError { notify } => match notify::name(*notify) {
                Some(name) => write!(f, "{name}: the peer refused our request; its log says why"),
                None => write!(f, "error notify {notify}: the peer refused our request; its log says why"),
            },
            Failure::Local(error) => error.fmt(f),
        }
    }
}

/// What this node failed to make during an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Rng(#[from] RngError),
    /// aws-lc refused to make a key pair or derive keys.
    #[error("the crypto library failed to {0}; meshd cannot key this peer: check the system's aws-lc/FIPS state and restart meshd")]
    Crypto(&'static str),
    /// Every message ID of the IKE SA is used (RFC 7296 §2.2); it must be rekeyed or made anew.
    #[error("the IKE SA ran out of message IDs; it is made anew")]
    MessageIdsExhausted,
}

impl From<RngError> for Failure {
    fn from(error: RngError) -> Self {
        Failure::Local(LocalError::Rng(error))
    }
}

/// What the driver must do to the SADB, or report.
#[derive(Debug)]
pub enum Event {
    /// Start accepting ESP on this SA (before the peer may use it).
    InstallInbound { peer: PeerIndex, sa: ChildSaKeys },
    /// Send to the peer on this SA from now on (it replaces the previous outbound SA).
    /// `peer_has_inbound`: we initiated the exchange, so the peer installed its inbound half
    /// before it answered; otherwise the peer installs it when our answer arrives, and what we
    /// send at once may come before.
    InstallOutbound { peer: PeerIndex, sa: ChildSaKeys, peer_has_inbound: bool },
    /// We offered the peer this inbound SPI; it may send on it before our side installs it
    /// (its answer is still on the way): keep what comes for it until then.
    ExpectInbound { peer: PeerIndex, spi: u32 },
    /// Stop accepting ESP on this inbound SPI.
    RemoveInbound { peer: PeerIndex, spi: u32 },
    /// The outbound SA with this SPI is gone (remove it if it is still the current one).
    RemoveOutbound { peer: PeerIndex, spi: u32 },
    /// An IKE SA with the peer is up.
    Established { peer: PeerIndex },
    /// An attempt failed or an IKE SA died.
    Failed { peer: Option<PeerIndex>, from: SocketAddr, failure: Failure },
    /// A received message was dropped without an answer.
    Refused { peer: Option<PeerIndex>, from: SocketAddr, refusal: Refusal },
}

/// Why a received IKE message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It does not parse, or lacks a payload its exchange needs.
    Malformed,
    /// Its integrity check failed.
    Unauthentic,
    /// No IKE SA here has its SPIs.
    UnknownSpi,
    /// It does not fit the IKE SA's state or message IDs.
    Unexpected,
    /// An IKE_SA_INIT request with no proposal we accept (answered with NO_PROPOSAL_CHOSEN).
    NoProposal,
    /// An IKE_SA_INIT request while too many half-open IKE SAs wait, in all or from its address.
    HalfOpenFull,
}

impl Refusal {
    /// The message for an operator reading `ikectl`'s drop counters or the log.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::Malformed => {
                "does not parse, is too large or lacks a payload its exchange needs (a broken or hostile sender)"
            }
            Refusal::Unauthentic => "fails its integrity check (keys differ or the message was altered)",
            Refusal::UnknownSpi => "names an IKE SA this node does not have (a restarted peer or an old SA)",
            Refusal::Unexpected => "does not fit the IKE SA's state or message IDs (a late retransmission)",
            Refusal::NoProposal => {
                "offers no proposal this node accepts (compare `ciphers` in both nodes' mesh.toml)"
            }
            Refusal::HalfOpenFull => {
                "starts IKE while too many half-open IKE SAs wait (an IKE_SA_INIT flood; from one address if only it is refused)"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_notify_names_its_failure() {
        assert_eq!(
            Failure::from_peer_notify(notify::AUTHENTICATION_FAILED),
            Failure::Authentication { peer_said: true }
        );
        assert_eq!(
            Failure::from_peer_notify(notify::NO_PROPOSAL_CHOSEN),
            Failure::NoProposalChosen { peer_said: true }
        );
        assert_eq!(Failure::from_peer_notify(notify::TS_UNACCEPTABLE), Failure::TrafficSelectors);
        assert_eq!(Failure::from_peer_notify(notify::INVALID_KE_PAYLOAD), Failure::PeerError { notify: 17 });
        assert!(Failure::PeerError { notify: 17 }.to_string().starts_with("INVALID_KE_PAYLOAD: "));
        assert!(Failure::PeerError { notify: 9999 }.to_string().starts_with("error notify 9999: "));
    }

    #[test]
    fn every_failure_tells_the_operator_what_to_do() {
        let all = [
            Failure::Authentication { peer_said: true },
            Failure::Authentication { peer_said: false },
            Failure::NoProposalChosen { peer_said: false },
            Failure::TrafficSelectors,
            Failure::PeerError { notify: notify::INVALID_SYNTAX },
            Failure::Timeout,
            Failure::Local(LocalError::Rng(RngError)),
            Failure::Local(LocalError::Crypto("make a key pair")),
            Failure::Local(LocalError::MessageIdsExhausted),
        ];
        for failure in all {
            let message = failure.to_string();
            assert!(message.len() > 30, "{message}");
        }
    }
}
