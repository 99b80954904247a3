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
    #[error("manual SA {spi:#010x} ({from} -> {to}): {problem}")]
    ManualSa { spi: u32, from: String, to: String, problem: String },

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
