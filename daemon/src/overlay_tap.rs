//! Bringing up an overlay's TAP interface, at start and on reload.

use crate::tap::TapQueue;
use mesh_config::control::OverlayStatus;
use mesh_config::MeshConfig;

use crate::error::DaemonError;
use crate::topology::{Overlay, Topology};
use crate::{pmtu, tap};

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
    let devices = tap::create(&overlay.interface, mtu, overlay.address, queues, offload)
        .map_err(|source| DaemonError::OverlayInterface { interface: overlay.interface.clone(), source })?;
    tracing::info!(overlay = %overlay.name, interface = %overlay.interface, vni = overlay.vni, mtu, %mtu_reason, "overlay interface up");
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
