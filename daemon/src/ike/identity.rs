//! Who the peer of an IKE_AUTH is, and how each end proves it (docs/ike.md, "Authentication").
//!
//! A node identifies itself by its underlay address (ID_IPV4_ADDR / ID_IPV6_ADDR) and proves it
//! with an Ed25519 signature (RFC 7427 method 14, RFC 8420) when mesh.toml lists public keys for
//! it, or with the mesh's pre-shared key otherwise:
//!
//! - We sign toward a peer when we hold our private key, mesh.toml lists the peer's public key,
//!   and the peer's IKE_SA_INIT announced Ed25519 (SIGNATURE_HASH_ALGORITHMS with Identity,
//!   RFC 7427 §4, RFC 8420 §2); we announce it whenever we hold our key. Otherwise, and as a
//!   responder to a peer that used the PSK (it does not know our key), we use the PSK.
//! - We accept a signature only from a node with public keys in mesh.toml, made with one of
//!   them. We accept the PSK only while mesh.toml names a psk_file: from nodes without keys, and,
//!   while a mesh moves from PSK to keys, from any node (a node whose peers still run the old
//!   mesh.toml cannot sign to them yet). Removing psk_file ends that: then every node must sign.
//! - The ID must name a node of the mesh, and the exchange must come from that node's address.
//!   Behind NAT the address differs and the ID decides, but never when the source is the address
//!   of another node: a node cannot pass as another from its own address.

use std::net::{IpAddr, SocketAddr};

use mesh_config::PublicKey;

use super::crypto::{nat_detection_hash, verify_auth_signature, IkeSaKeys, Role, SignedOctets};
use super::message::ids::{authentication, notify};
use super::message::{
    lists_identity_hash, signature_hash_algorithms, Authentication, DigitalSignature, Identification, Message, Notify,
    Payload,
};
use super::types::{Failure, IkeSettings, PeerSettings};

/// How one end of an IKE SA authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AuthMethod {
    /// The mesh's pre-shared key (RFC 7296 §2.15).
    SharedKey,
    /// An Ed25519 signature (RFC 8420).
    Ed25519,
}

impl AuthMethod {
    /// The name `ikectl` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::SharedKey => "psk",
            AuthMethod::Ed25519 => "ed25519",
        }
    }
}

/// How the peer of an IKE SA proved who it is: the method, and for a signature the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAuth {
    pub method: AuthMethod,
    pub key: Option<PublicKey>,
}

/// Why a peer's IKE_AUTH was refused, beyond a PSK that does not match. Each message says what
/// to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityFailure {
    /// The ID is not the address of a node of the mesh.
    UnknownIdentity { id: String },
    /// The ID names a node, but the exchange comes from elsewhere.
    NotFromItsAddress { node: IpAddr, source: IpAddr },
    /// The signature does not verify with the node's public key(s).
    SignatureMismatch { node: IpAddr },
    /// A signature with another algorithm than Ed25519, or another AUTH method.
    UnsupportedMethod { node: IpAddr, method: u8 },
    /// The node signed, but mesh.toml lists no public key for it.
    NoPublicKey { node: IpAddr },
    /// The node used the pre-shared key, but mesh.toml lists its public key and no psk_file.
    SignatureRequired { node: IpAddr },
}

impl std::fmt::Display for IdentityFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentityFailure::UnknownIdentity { id } => write!(
                f,
                "the peer's identity {id} is not a node of this mesh; add it to mesh.toml on every node, or stop it"
            ),
            IdentityFailure::NotFromItsAddress { node, source } => write!(
                f,
                "the peer claims to be {node} but the exchange comes from {source} (another node, or no NAT between); refused as impersonation: check the host at {source}"
            ),
            IdentityFailure::SignatureMismatch { node } => write!(
                f,
                "the AUTH signature of {node} does not verify with its public key(s) in mesh.toml: if {node} has a new private key, list its new public key (public_keys = [old, new]) and `ikectl reload`; otherwise another host is using {node}'s identity or another node's key"
            ),
            IdentityFailure::UnsupportedMethod { node, method } => write!(
                f,
                "{node} authenticates with AUTH method {method} or a signature algorithm other than Ed25519; configure it for Ed25519 public keys or the pre-shared key"
            ),
            IdentityFailure::NoPublicKey { node } => write!(
                f,
                "{node} signed its AUTH, but mesh.toml lists no public_key for it; add its key (`meshd pubkey` on {node}) to its [[node]] and `ikectl reload`"
            ),
            IdentityFailure::SignatureRequired { node } => write!(
                f,
                "{node} authenticated with the pre-shared key, but mesh.toml lists its public key and has no psk_file, so it must sign; give {node} the current mesh.toml and its key file (`ikectl fleet update`)"
            ),
        }
    }
}

/// What both AUTH payloads of an IKE SA are computed over.
pub struct AuthInputs<'a> {
    pub keys: &'a IkeSaKeys,
    /// Our role in the IKE_SA_INIT exchange.
    pub role: Role,
    /// Our IKE_SA_INIT message and the peer's, as sent and received.
    pub our_message: &'a [u8],
    pub peer_message: &'a [u8],
    pub our_nonce: &'a [u8],
    pub peer_nonce: &'a [u8],
}

/// The SIGNATURE_HASH_ALGORITHMS notify for our IKE_SA_INIT message, when we can sign.
pub fn init_notify(settings: &IkeSettings) -> Option<Payload> {
    settings.node_key.as_ref()?;
    Some(Payload::Notify(Notify::new(notify::SIGNATURE_HASH_ALGORITHMS, signature_hash_algorithms())))
}

/// Our ID payload and AUTH payload toward `peer`; as a responder, `peer_auth` is how the
/// initiator authenticated.
pub fn our_auth(
    settings: &IkeSettings,
    peer: &PeerSettings,
    peer_auth: Option<PeerAuth>,
    inputs: &AuthInputs<'_>,
) -> (Identification, Authentication) {
    let id = Identification::from_ip(settings.local);
    let mut id_payload_body = Vec::new();
    id.emit(&mut id_payload_body);
    let octets = SignedOctets {
        real_message: inputs.our_message,
        peer_nonce: inputs.peer_nonce,
        id_payload_body: &id_payload_body,
    };
    let sk_p = inputs.keys.sk_p(inputs.role);
    let auth = match &settings.node_key {
        Some(key)
            if !peer.public_keys.is_empty()
                && announces_ed25519(inputs.peer_message)
                && peer_auth.is_none_or(|auth| auth.method == AuthMethod::Ed25519) =>
        {
            let signature = key.sign_auth(sk_p, &octets);
            Authentication {
                method: authentication::DIGITAL_SIGNATURE,
                data: DigitalSignature::ed25519(&signature).to_auth_data(),
            }
        }
        _ => Authentication {
            method: authentication::SHARED_KEY_MESSAGE_INTEGRITY_CODE,
            data: inputs.keys.psk_auth(&settings.psk, &octets).to_vec(),
        },
    };
    (id, auth)
}

/// A peer's IKE_AUTH claim: the node its ID names (`None`: no node of ours), its ID and AUTH
/// payloads, and where the exchange came from.
pub struct PeerClaim<'a> {
    pub peer: Option<&'a PeerSettings>,
    pub id: &'a Identification,
    pub auth: &'a Authentication,
    pub source: IpAddr,
    /// We found ourselves behind NAT in IKE_SA_INIT.
    pub we_are_behind_nat: bool,
    /// `source` is the address of a node of the mesh.
    pub source_is_a_node: bool,
}

/// Checks the peer's identity and AUTH; how it authenticated, or why it is refused.
pub fn verify_peer(
    settings: &IkeSettings,
    claim: &PeerClaim<'_>,
    inputs: &AuthInputs<'_>,
) -> Result<PeerAuth, Failure> {
    let refuse = |failure| Err(Failure::Identity(failure));
    let Some(peer) = claim.peer else {
        let id = claim.id.ip().map_or_else(|| format!("(ID type {})", claim.id.id_type), |ip| ip.to_string());
        return refuse(IdentityFailure::UnknownIdentity { id });
    };
    let node = peer.address;
    let behind_nat = claim.we_are_behind_nat || peer_behind_nat(inputs.peer_message, claim.source);
    if claim.source != node && (claim.source_is_a_node || !behind_nat) {
        return refuse(IdentityFailure::NotFromItsAddress { node, source: claim.source });
    }
    let mut id_payload_body = Vec::new();
    claim.id.emit(&mut id_payload_body);
    let octets = SignedOctets {
        real_message: inputs.peer_message,
        peer_nonce: inputs.our_nonce,
        id_payload_body: &id_payload_body,
    };
    let sk_p = inputs.keys.sk_p(inputs.role.peer());
    match claim.auth.method {
        authentication::DIGITAL_SIGNATURE if peer.public_keys.is_empty() => {
            refuse(IdentityFailure::NoPublicKey { node })
        }
        authentication::DIGITAL_SIGNATURE => match DigitalSignature::parse(&claim.auth.data) {
            Ok(signature) if signature.is_ed25519() => {
                match verify_auth_signature(&peer.public_keys, sk_p, &octets, signature.signature) {
                    Ok(key) => Ok(PeerAuth { method: AuthMethod::Ed25519, key: Some(key) }),
                    Err(_) => refuse(IdentityFailure::SignatureMismatch { node }),
                }
            }
            _ => refuse(IdentityFailure::UnsupportedMethod { node, method: claim.auth.method }),
        },
        authentication::SHARED_KEY_MESSAGE_INTEGRITY_CODE if settings.psk.is_empty() => {
            refuse(IdentityFailure::SignatureRequired { node })
        }
        authentication::SHARED_KEY_MESSAGE_INTEGRITY_CODE => {
            match inputs.keys.verify_peer_psk_auth(&settings.psk, &octets, &claim.auth.data) {
                Ok(()) => Ok(PeerAuth { method: AuthMethod::SharedKey, key: None }),
                Err(_) => Err(Failure::Authentication { peer_said: false }),
            }
        }
        method => refuse(IdentityFailure::UnsupportedMethod { node, method }),
    }
}

/// The notifies of a received IKE_SA_INIT message (it parsed when it arrived).
fn init_notifies(message: &[u8]) -> Vec<Notify> {
    let payloads = Message::parse(message).map(|m| m.payloads).unwrap_or_default();
    payloads
        .into_iter()
        .filter_map(|payload| match payload {
            Payload::Notify(n) => Some(n),
            _ => None,
        })
        .collect()
}

/// The peer's IKE_SA_INIT announced that it verifies Ed25519 signatures.
fn announces_ed25519(peer_message: &[u8]) -> bool {
    init_notifies(peer_message)
        .iter()
        .any(|n| n.notify_type == notify::SIGNATURE_HASH_ALGORITHMS && lists_identity_hash(&n.data) == Ok(true))
}

/// The peer says it is behind NAT: its NAT_DETECTION_SOURCE_IP is not the hash of `source` and
/// port 500, where IKE_SA_INIT starts (RFC 7296 §2.23). A peer that forces UDP encapsulation
/// (meshd with encap = "udp") says so on purpose.
fn peer_behind_nat(peer_message: &[u8], source: IpAddr) -> bool {
    let Ok(message) = Message::parse(peer_message) else { return true };
    let spi_i = message.header.initiator_spi.to_be_bytes();
    // The hash covers the SPIs of the request: the responder's is still zero there.
    let spi_r = if message.header.response { message.header.responder_spi.to_be_bytes() } else { [0; 8] };
    let expected = nat_detection_hash(&spi_i, &spi_r, SocketAddr::new(source, super::IKE_PORT));
    init_notifies(peer_message).iter().any(|n| n.notify_type == notify::NAT_DETECTION_SOURCE_IP && n.data != expected)
}

/// A reload: each peer in `peers` takes the public keys `new` lists for its address (peers keep
/// their places; those `new` does not list keep theirs until they are removed).
pub fn update_peer_keys(peers: &mut [PeerSettings], new: &[PeerSettings]) {
    for peer in peers.iter_mut() {
        if let Some(updated) = new.iter().find(|n| n.address == peer.address) {
            peer.public_keys.clone_from(&updated.public_keys);
        }
    }
}
