//! What the IKE endpoint is configured with, and what it hands back to its driver.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use std::sync::Arc;

use mesh_config::{Cipher, Mode, Proposal, PublicKey};
use zeroize::Zeroizing;

use super::crypto::NodeKey;
use super::identity::IdentityFailure;
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

/// Why an IKE SA attempt or an IKE SA ended, for logs and `ikectl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The peer's pre-shared key AUTH did not verify, or the peer said AUTHENTICATION_FAILED.
    Authentication { peer_said: bool },
    /// The peer's identity or signature was refused.
    Identity(IdentityFailure),
    /// No proposal in common.
    NoProposalChosen { peer_said: bool },
    /// The peer did not answer.
    Timeout,
    /// The peer refused the Child SA's traffic selectors.
    TrafficSelectors,
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
        }
    }
}

/// What the driver must do to the SADB, or report.
#[derive(Debug)]
pub enum Event {
    /// Start accepting ESP on this SA (before the peer may use it).
    InstallInbound { peer: PeerIndex, sa: ChildSaKeys },
    /// Send to the peer on this SA from now on (it replaces the previous outbound SA).
    InstallOutbound { peer: PeerIndex, sa: ChildSaKeys },
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
}
