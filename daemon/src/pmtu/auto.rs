//! `mtu = "auto"`: the overlay interface's MTU from the underlay: the MTU of the link the kernel
//! routes towards the peers (the smallest, rtnetlink), or without peers the interface holding the
//! node's address, minus the encapsulation of the most expensive pair. Re-read by the path-MTU
//! driver, which retunes the interface when the underlay's MTU changes.

use mesh_config::{Mode, OverlayMtu};

use crate::error::DaemonError;
use crate::netif;
use crate::overhead::{Encapsulation, IpVersion};
use crate::pmtu::route;
use crate::topology::{Overlay, Topology};

/// The MTU of an overlay interface and how it was chosen.
pub fn overlay_mtu(
    overlay: &Overlay,
    topology: &Topology,
    cipher: mesh_config::Cipher,
) -> Result<(u16, String), DaemonError> {
    if let OverlayMtu::Fixed(mtu) = overlay.mtu {
        return Ok((mtu, "configured".to_string()));
    }
    let address = topology.local_address;
    let failed = |problem: String| DaemonError::UnderlayMtu { overlay: overlay.name.clone(), address, problem };
    let (interface, underlay_mtu) = match smallest_route_towards_peers(topology) {
        Some(route) => (format!("{} (route to {})", route.interface, route.peer), route.mtu),
        None => {
            let interface = netif::interface_with(address)
                .map_err(|e| failed(e.to_string()))?
                .ok_or_else(|| failed("no interface holds it".to_string()))?;
            let mtu = netif::interface_mtu(&interface).map_err(|e| failed(e.to_string()))?;
            (interface, mtu)
        }
    };
    // The overlay must fit the most expensive pair; with no peers, the mesh-wide mode decides.
    let modes: Vec<Mode> = topology.peers.iter().map(|p| p.mode).collect();
    let worst = modes
        .iter()
        .map(|mode| Encapsulation { ip_version: IpVersion::of(address), encap: topology.encap, mode: *mode, cipher })
        .max_by_key(|e| e.underlay_len(0))
        .unwrap_or(Encapsulation {
            ip_version: IpVersion::of(address),
            encap: topology.encap,
            mode: Mode::Transport,
            cipher,
        });
    let mtu = worst
        .overlay_mtu(underlay_mtu)
        .and_then(|mtu| u16::try_from(mtu).ok())
        .filter(|mtu| *mtu >= mesh_config::MIN_OVERLAY_MTU)
        .ok_or_else(|| failed(format!("{interface} has MTU {underlay_mtu}, too small for any overlay MTU")))?;
    let reason = format!(
        "auto: {interface} MTU {underlay_mtu} - {} bytes ({}, {}, {})",
        underlay_mtu - usize::from(mtu),
        worst.encap,
        worst.mode,
        worst.ip_version.name()
    );
    Ok((mtu, reason))
}

/// The route towards a peer whose link has the smallest MTU.
struct PeerRoute {
    peer: String,
    interface: String,
    mtu: usize,
}

/// Looks up (rtnetlink) the route towards every peer and keeps the one with the smallest MTU;
/// peers without a route yet are left out. `None` without peers or routes.
fn smallest_route_towards_peers(topology: &Topology) -> Option<PeerRoute> {
    topology
        .peers
        .iter()
        .filter_map(|peer| {
            let route = route::underlay_route(peer.address).ok()?;
            Some(PeerRoute { peer: peer.name.clone(), interface: route.interface, mtu: route.mtu })
        })
        .min_by_key(|route| route.mtu)
}
