//! Bringing up an overlay's TAP interface, at start and on reload.

use aws_lc_rs::digest::{digest, SHA256};
use crate::tap::TapQueue;
use mesh_config::control::OverlayStatus;
use mesh_config::MeshConfig;

use crate::error::DaemonError;
use crate::topology::{Overlay, Topology};
use crate::wire::ethernet::EthernetAddress;
use crate::{netif, pmtu, tap};

/// Creates the TAP of `overlay` with one queue per worker, with its MTU and address; returns the
/// queues and what `ikectl status` shows of it.
pub fn bring_up(
    overlay: &Overlay,
    topology: &Topology,
    config: &MeshConfig,
    queues: usize,
    offload: bool,
) -> Result<(Vec<TapQueue>, OverlayStatus), DaemonError> {
    let cipher = config.ike.proposals.first().map_or(mesh_config::Cipher::Aes256Gcm16, |p| p.cipher);
    let (mtu, mtu_reason) = pmtu::auto::overlay_mtu(overlay, topology, cipher)?;
    let mac = overlay_mac(&topology.mesh_name, &topology.node_name, &overlay.name);
    let devices = tap::create(&overlay.interface, mtu, mac, overlay.address, queues, offload)
        .map_err(|source| DaemonError::OverlayInterface { interface: overlay.interface.clone(), source })?;
    announce(topology, overlay);
    tracing::info!(overlay = %overlay.name, interface = %overlay.interface, vni = overlay.vni, mtu, %mtu_reason, mac = %EthernetAddress(mac), "overlay interface up");
    let status = OverlayStatus {
        name: overlay.name.clone(),
        interface: overlay.interface.clone(),
        vni: overlay.vni,
        mtu: u32::from(mtu),
        mtu_reason,
        address: overlay.address.map(|(ip, prefix)| format!("{ip}/{prefix}")),
    };
    Ok((devices, status))
}

/// Announces this node's address and MAC on `overlay` (gratuitous ARP, unsolicited NA): when
/// its interface comes up and when SAs with a peer come up, so that the peers' neighbour caches
/// are right at once.
pub fn announce(topology: &Topology, overlay: &Overlay) {
    let mac = overlay_mac(&topology.mesh_name, &topology.node_name, &overlay.name);
    if let Err(error) = netif::announce(&overlay.interface, mac) {
        tracing::warn!(interface = %overlay.interface, %error, "announcing the overlay address failed");
    }
}

/// The MAC of this node's interface on an overlay: the same at every start, so that the other
/// nodes' neighbour caches and FDBs stay right across a restart (a random MAC per start left a
/// restarted node unreachable until their entries went stale). Locally administered unicast,
/// from a hash of the mesh, node and overlay names, so no two nodes of a mesh share it in practice.
pub fn overlay_mac(mesh: &str, node: &str, overlay: &str) -> [u8; 6] {
    // NUL separators: ("ab", "c") and ("a", "bc") differ.
    let input = [mesh, node, overlay].join("\0");
    let hash = digest(&SHA256, input.as_bytes());
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&hash.as_ref()[..6]);
    mac[0] = (mac[0] & !MULTICAST_BIT) | LOCALLY_ADMINISTERED_BIT;
    mac
}

/// Bits of the first octet of a MAC (IEEE 802): group address, and locally administered.
const MULTICAST_BIT: u8 = 0x01;
const LOCALLY_ADMINISTERED_BIT: u8 = 0x02;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_macs_are_stable_local_unicast_and_differ_per_node_and_overlay() {
        let mac = overlay_mac("prod", "n1", "ovl0");
        assert_eq!(mac, overlay_mac("prod", "n1", "ovl0"), "the same at every start");
        assert_eq!(mac[0] & (MULTICAST_BIT | LOCALLY_ADMINISTERED_BIT), LOCALLY_ADMINISTERED_BIT);
        let others =
            [overlay_mac("prod", "n2", "ovl0"), overlay_mac("prod", "n1", "ovl1"), overlay_mac("test", "n1", "ovl0")];
        assert!(others.iter().all(|other| *other != mac), "{mac:02x?} {others:02x?}");
        assert_ne!(overlay_mac("ab", "c", "o"), overlay_mac("a", "bc", "o"));
    }
}
