//! `mtu = "auto"`: the overlay interface's MTU from the underlay interface's, minus the
//! encapsulation of the most expensive pair; re-read by the path-MTU driver, which retunes the
//! interface when the underlay's MTU changes.

use mesh_config::{Mode, OverlayMtu};

use crate::error::DaemonError;
use crate::netif;
use crate::overhead::{Encapsulation, IpVersion};
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
    let interface = netif::interface_with(address)
        .map_err(|e| failed(e.to_string()))?
        .ok_or_else(|| failed("no interface holds it".to_string()))?;
    let underlay_mtu = netif::interface_mtu(&interface).map_err(|e| failed(e.to_string()))?;
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
