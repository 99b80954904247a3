//! Why `meshd` could not start or do what it was asked, each with what to do about it.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use mesh_config::{ConfigError, ConfigErrors, Encap};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    // Configuration
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    LocalNode(#[from] ConfigError),
    #[error("{0}")]
    Topology(String),
    #[error(transparent)]
    Keying(#[from] KeyingError),

    // Host resources
    #[error("cannot list this host's addresses: {0}")]
    HostAddresses(io::Error),
    #[error("overlay {overlay}: cannot find the MTU of the underlay interface holding {address}: {problem}; set `mtu` of the overlay to a number")]
    UnderlayMtu { overlay: String, address: IpAddr, problem: String },
    #[error("cannot create overlay interface {interface}: {source}; {}", fix_for(source))]
    OverlayInterface { interface: String, source: io::Error },
    #[error("cannot open the {encap} underlay socket on {address}: {source}; {}", fix_for(source))]
    Underlay { address: IpAddr, encap: Encap, source: io::Error },
    #[error("cannot start a datapath worker thread: {0}")]
    Thread(io::Error),
    #[error(
        "cannot open the diagnostic query port (UDP {port} on {address}, for ikectl ping): {source}; {}",
        fix_for(source)
    )]
    Query { address: IpAddr, port: u16, source: io::Error },
    #[error("cannot serve metrics on {address} ([metrics] listen in the mesh file): {source}; use an address of this host and a port no other program listens on")]
    Metrics { address: std::net::SocketAddr, source: io::Error },
    #[error("cannot send IPFIX to {collector} ([flows] ipfix in the mesh file): {source}; use the collector's IP address and UDP port")]
    FlowExport { collector: std::net::SocketAddr, source: io::Error },

    // Control socket
    #[error("control socket {} is in use by another running meshd; stop that one first, or give this one its own --ctl-socket", path.display())]
    ControlSocketInUse { path: PathBuf },
    #[error("control socket {}: {source}; {}", path.display(), fix_for(source))]
    ControlSocket { path: PathBuf, source: io::Error },

    // Upgrade (`meshd run --upgrade`)
    #[error(transparent)]
    Handover(#[from] crate::upgrade::HandoverError),
}

/// Why a request on the control socket failed, by category. The control socket sends the message
/// as the error reply (`mesh_config::control::Response::error`), so each one says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Keying(#[from] KeyingError),
    #[error(transparent)]
    Reload(#[from] ReloadError),
    #[error(transparent)]
    Trace(#[from] TraceError),
}

/// The request itself cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("ikectl speaks control protocol version {theirs}, this meshd speaks {ours}: use the ikectl that came with this meshd")]
    ProtocolVersion { theirs: u32, ours: u32 },
    #[error("meshd could not read the request ({0}); use the ikectl that came with this meshd")]
    Unreadable(serde_json::Error),
    /// The message of `Topology::resolve_peer`: the name and the peers there are.
    #[error("{0}")]
    UnknownPeer(String),
    #[error("meshd serves {limit} control connections at once and all are busy; close other ikectl sessions (drops --follow, capture) and try again")]
    Busy { limit: usize },
    /// A request the service refused; the text says why and what to ask instead.
    #[error("{0}")]
    Refused(String),
    #[error("the {what} failed ({source}); see the meshd log")]
    Aborted { what: &'static str, source: tokio::task::JoinError },
}

/// SAs could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KeyingError {
    #[error("peers {} have no [[manual_sa]] entries, so they need IKE, and IKE needs public keys on both nodes or the pre-shared key: give every node its public_key, or set psk_file in [mesh]", peers.join(", "))]
    MissingPsk { peers: Vec<String> },
    #[error("IKE cannot start: {0}; see the meshd log")]
    Ike(crate::ike::crypto::CryptoError),
    #[error("manual SA {spi:#010x} ({from} -> {to}): {problem}")]
    ManualSa { spi: u32, from: String, to: String, problem: String },
}

/// A reload refused the new mesh file, or applied only part of it.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// Nothing was applied.
    #[error("new config refused, the running one stays: {0}")]
    Refused(#[from] ReloadRefusal),
    #[error("applied, except: {}; correct the mesh file and reload again", .0.join("; "))]
    PartlyApplied(Vec<String>),
    #[error("the datapath is not running; restart meshd")]
    DatapathStopped,
    #[error("{0}; restart meshd")]
    DatapathRestart(DaemonError),
}

/// Why a reload applied nothing of the new mesh file.
#[derive(Debug, thiserror::Error)]
pub enum ReloadRefusal {
    #[error("{0}")]
    Invalid(#[from] ConfigErrors),
    #[error("{0}")]
    NotApplicable(#[from] mesh_config::reload::ReloadRefused),
    #[error("{0}")]
    Topology(String),
    #[error("{0}")]
    Keying(#[from] KeyingError),
}

/// `ikectl trace` did not understand what to trace.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TraceError {
    #[error("\"{0}\" is neither a MAC address (02:00:5e:10:00:01) nor an IP address (10.244.0.2)")]
    NotAnAddress(String),
    #[error("no overlay \"{name}\" on node {node}; overlays are: {}", overlays.join(", "))]
    NoSuchOverlay { name: String, node: String, overlays: Vec<String> },
    #[error("several overlays could carry it; pick one with --overlay NAME ({})", overlays.join(", "))]
    AmbiguousOverlay { overlays: Vec<String> },
}

/// `ikectl ping` could not ask the peer's meshd; the report shows the message as a verdict.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no key to ask {peer} with: there is no IKE SA with {peer} (see `ikectl peers`) and no [[manual_sa]] pair for {me} and {peer}")]
    NoPairKey { me: String, peer: String },
    #[error("the query for {peer} does not fit a datagram; shorten the node names")]
    TooLong { peer: String },
    #[error("cannot send the query to {destination}: {source}; check the route to {peer}")]
    Send { destination: std::net::SocketAddr, peer: String, source: io::Error },
    #[error("no answer from {peer}'s meshd on UDP {port} at {address}: is meshd running there, is UDP {port} open between the nodes, and do both use the same mesh.toml?")]
    NoAnswer { peer: String, address: IpAddr, port: u16 },
    #[error("the system's random source failed; check that the kernel's getrandom works (see the meshd log)")]
    Random,
}

/// The usual cause of an OS error when meshd sets up its interfaces and sockets.
fn fix_for(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::PermissionDenied => {
            "run meshd as root, or with CAP_NET_ADMIN, CAP_NET_RAW and CAP_NET_BIND_SERVICE (packaging/meshd.service)"
        }
        io::ErrorKind::AddrInUse => {
            "another program uses this address and port; stop it or run meshd in its own network namespace"
        }
        io::ErrorKind::AddrNotAvailable => {
            "the node's address is not configured on this host; check `address` of this node in the mesh file"
        }
        io::ErrorKind::NotFound => "check that /dev/net/tun exists (modprobe tun) and the path is right",
        io::ErrorKind::ResourceBusy => {
            "an interface of that name already exists; remove it or rename the overlay's `interface`"
        }
        _ => "see the error above",
    }
}
