//! `meshd-lab`: a network-namespace lab for meshd's integration tests.
//!
//! Everything here needs root: each test builds its own topology from network namespaces
//! ([`Netns`]), a switch namespace with a Linux bridge and one veth pair per node ([`Lab`]),
//! writes a mesh file ([`MeshFile`]), starts real `meshd` processes ([`Meshd`]) and looks at the
//! wire with tshark ([`Capture`]). Every namespace is removed again when its guard drops, also
//! when the test panics.
//!
//! Addresses (the only ones the lab ever uses): underlay 198.18.0.0/24 or 2001:db8:18::/64,
//! overlay 10.244.0.0/24 (and 10.244.1.0/24 for a second overlay); the control namespace of
//! [`SshFleet`] is 198.18.0.250. Node index `i` (0-based) is mesh node `n{i+1}` with underlay address
//! `198.18.0.{i+1}` and overlay address `10.244.0.{i+1}`.

pub mod capture;
pub mod inject;
pub mod lab;
pub mod meshd;
pub mod meshfile;
pub mod netns;
pub mod routed;
pub mod sshd;
pub mod strongswan;
pub mod transfer;
pub mod util;

pub use capture::{Capture, EspSaKeys};
pub use inject::{fix_udp_checksum, inject_frame, RawSender};
pub use lab::{Family, Lab, LabBuilder};
pub use meshd::{ikectl_bin, meshd_bin, spawn_meshd, start_all, start_all_with_keys, Meshd};
pub use meshfile::{ManualSa, MeshFile, MeshFileBuilder};
pub use netns::Netns;
pub use routed::RoutedPair;
pub use sshd::SshFleet;
pub use strongswan::{Charon, CharonConfig, Ed25519Keys, Routing, StartAction, UdpEndpoint, VxlanDevice};
pub use transfer::tcp_transfer;
pub use util::{require_root, wait_until};
