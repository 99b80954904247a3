//! `mtu = "auto"`: the overlay interface's MTU from the underlay: the MTU of the link the kernel
//! routes towards the peers (the smallest), or without peers the interface holding the node's
//! address, minus the encapsulation of the most expensive pair. Re-read by the path-MTU
//! driver, which retunes the interface when the underlay's MTU changes.
//!
//! [`Underlay::read`] asks the kernel (it blocks: never on the control-plane runtime);
//! [`choose`] decides from what it read.

use std::collections::HashMap;
use std::time::Duration;

use mesh_config::{Mode, OverlayMtu};

use crate::error::DaemonError;
use crate::ids::PeerId;
use crate::netif;
use crate::overhead::{Encapsulation, IpVersion};
use crate::pmtu::route::{RouteLookup, UnderlayRoute};
use crate::topology::{Overlay, Topology};

/// The underlay as the kernel sees it, towards every peer at one moment.
#[derive(Debug, Default)]
pub struct Underlay {
    /// The route towards each peer that has one, in topology order.
    routes: Vec<(PeerId, UnderlayRoute)>,
    /// Where each peer's route is in `routes`.
    by_peer: HashMap<PeerId, usize>,
    /// Read only when no peer has a route: the interface holding the node's address and its
    /// MTU, or why they are unknown.
    local_interface: Option<Result<(String, usize), String>>,
}

impl Underlay {
    /// Looks up the route towards every peer (rtnetlink, one socket); when none has one, the
    /// interface holding the node's address. Blocks for up to a second per lookup.
    pub fn read(topology: &Topology) -> Underlay {
        let mut routes = Vec::new();
        match RouteLookup::open() {
            Ok(mut lookup) => {
                for peer in &topology.peers {
                    match lookup.route(topology.local_address, peer.address) {
                        Ok(route) => routes.push((peer.id, route)),
                        // A peer without a route yet is left out.
                        Err(error) => tracing::debug!(peer = %peer.name, %error, "no underlay route"),
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot look up underlay routes"),
        }
        let local_interface = routes.is_empty().then(|| local_interface(topology));
        Underlay::new(routes, local_interface)
    }

    fn new(routes: Vec<(PeerId, UnderlayRoute)>, local_interface: Option<Result<(String, usize), String>>) -> Self {
        let by_peer = routes.iter().enumerate().map(|(index, (peer, _))| (*peer, index)).collect();
        Underlay { routes, by_peer, local_interface }
    }

    /// The route towards `peer`, if it has one.
    pub fn route(&self, peer: PeerId) -> Option<&UnderlayRoute> {
        self.by_peer.get(&peer).map(|index| &self.routes[*index].1)
    }

    /// How long this reading holds at most: until the first path MTU the kernel learnt from
    /// ICMP expires (no rtnetlink report tells of that).
    pub fn expires_after(&self) -> Option<Duration> {
        self.routes.iter().filter_map(|(_, route)| route.mtu_expires).min()
    }
}

/// The interface holding the node's address, and its MTU.
fn local_interface(topology: &Topology) -> Result<(String, usize), String> {
    let interface = netif::interface_with(topology.local_address)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "no interface holds it".to_string())?;
    let mtu = netif::interface_mtu(&interface).map_err(|e| e.to_string())?;
    Ok((interface, mtu))
}

/// The MTU of an overlay interface and how it was chosen, looked up now (blocking: for callers
/// off the control-plane runtime, such as bringing an interface up).
pub fn overlay_mtu(
    overlay: &Overlay,
    topology: &Topology,
    cipher: mesh_config::Cipher,
) -> Result<(u16, String), DaemonError> {
    let underlay = match overlay.mtu {
        OverlayMtu::Auto => Underlay::read(topology),
        OverlayMtu::Fixed(_) => Underlay::default(),
    };
    choose(overlay, topology, cipher, &underlay)
}

/// The MTU of an overlay interface and how it was chosen, from what `underlay` read.
pub fn choose(
    overlay: &Overlay,
    topology: &Topology,
    cipher: mesh_config::Cipher,
    underlay: &Underlay,
) -> Result<(u16, String), DaemonError> {
    if let OverlayMtu::Fixed(mtu) = overlay.mtu {
        return Ok((mtu, "configured".to_string()));
    }
    let address = topology.local_address;
    let failed = |problem: String| DaemonError::UnderlayMtu { overlay: overlay.name.clone(), address, problem };
    let smallest = underlay.routes.iter().min_by_key(|(_, route)| route.mtu());
    let (interface, underlay_mtu) = match (smallest, &underlay.local_interface) {
        (Some((peer, route)), _) => {
            (format!("{} (route to {})", route.interface, topology.peer(*peer).name), route.mtu())
        }
        (None, Some(Ok((interface, mtu)))) => (interface.clone(), *mtu),
        (None, Some(Err(problem))) => return Err(failed(problem.clone())),
        (None, None) => return Err(failed("the underlay was not looked up".to_string())),
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use mesh_config::{Cipher, MeshConfig};

    use super::*;

    fn topology(overlay_mtu: &str) -> Topology {
        let nodes: String =
            (1..=3).map(|i| format!("[[node]]\nname = \"n{i}\"\naddress = \"198.18.0.{i}\"\n")).collect();
        let text =
            format!("[mesh]\nname = \"lab\"\n{nodes}[[overlay]]\nname = \"ovl0\"\nvni = 1\nmtu = {overlay_mtu}\n");
        let config = MeshConfig::parse(Path::new("mesh.toml"), &text).unwrap();
        Topology::new(&config, "n1", "198.18.0.1".parse().unwrap()).unwrap()
    }

    fn route(interface: &str, link_mtu: u32, route_mtu: Option<u32>) -> UnderlayRoute {
        UnderlayRoute {
            interface: interface.to_string(),
            gateway: None,
            source: None,
            link_mtu,
            route_mtu,
            mtu_expires: None,
            hop_limit: None,
        }
    }

    fn peer(topology: &Topology, name: &str) -> PeerId {
        topology.peer_by_name(name).unwrap()
    }

    #[test]
    fn the_smallest_route_towards_a_peer_sets_the_mtu() {
        let topology = topology("\"auto\"");
        let underlay = Underlay::new(
            vec![
                (peer(&topology, "n2"), route("eth0", 1500, None)),
                (peer(&topology, "n3"), route("eth1", 1500, Some(1400))),
            ],
            None,
        );
        let (mtu, reason) = choose(&topology.overlays[0], &topology, Cipher::Aes256Gcm16, &underlay).unwrap();
        assert_eq!(mtu, 1400 - 92);
        assert_eq!(reason, "auto: eth1 (route to n3) MTU 1400 - 92 bytes (udp, transport, IPv4)");
    }

    #[test]
    fn without_routes_the_interface_holding_the_address_sets_the_mtu() {
        let topology = topology("\"auto\"");
        let underlay = Underlay::new(Vec::new(), Some(Ok(("eth0".to_string(), 9000))));
        let (mtu, reason) = choose(&topology.overlays[0], &topology, Cipher::Aes256Gcm16, &underlay).unwrap();
        assert_eq!((mtu, reason.as_str()), (9000 - 92, "auto: eth0 MTU 9000 - 92 bytes (udp, transport, IPv4)"));

        let unknown = Underlay::new(Vec::new(), Some(Err("no interface holds it".to_string())));
        let error = choose(&topology.overlays[0], &topology, Cipher::Aes256Gcm16, &unknown).unwrap_err();
        assert!(error.to_string().contains("no interface holds it; set `mtu`"), "{error}");
    }

    #[test]
    fn an_underlay_too_small_for_any_overlay_is_an_error() {
        let topology = topology("\"auto\"");
        let underlay = Underlay::new(vec![(peer(&topology, "n2"), route("eth0", 600, None))], None);
        let error = choose(&topology.overlays[0], &topology, Cipher::Aes256Gcm16, &underlay).unwrap_err();
        assert!(error.to_string().contains("MTU 600, too small"), "{error}");
    }

    #[test]
    fn a_configured_mtu_needs_no_lookup() {
        let topology = topology("1300");
        let found = overlay_mtu(&topology.overlays[0], &topology, Cipher::Aes256Gcm16).unwrap();
        assert_eq!(found, (1300, "configured".to_string()));
    }
}
