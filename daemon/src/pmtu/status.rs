//! What `ikectl status` shows about MTUs: overlay MTUs as retuned since start, and a warning per
//! peer whose path forces an overlay below its MTU.

use mesh_config::control::OverlayStatus;

use crate::state::MeshState;

/// `started` with the MTUs that `mtu = "auto"` retuned since.
pub fn overlays(state: &MeshState, started: &[OverlayStatus]) -> Vec<OverlayStatus> {
    started
        .iter()
        .map(|overlay| match state.pmtu.overlay_mtu(&overlay.name) {
            Some((mtu, reason)) => OverlayStatus { mtu: u32::from(mtu), mtu_reason: reason, ..overlay.clone() },
            None => overlay.clone(),
        })
        .collect()
}

/// One line per (peer, overlay) whose path carries less than the overlay's MTU.
pub fn warnings(state: &MeshState, started: &[OverlayStatus]) -> Vec<String> {
    let overlays = overlays(state, started);
    let mut warnings = Vec::new();
    for peer in &state.topology().peers {
        let report = peer.path_mtu.report();
        let (Some(path_mtu), Some(limit)) = (report.path_mtu, report.overlay_mtu) else { continue };
        for overlay in overlays.iter().filter(|overlay| limit < overlay.mtu) {
            warnings.push(format!(
                "peer {}: path MTU {path_mtu} ({}) carries overlay packets of at most {limit} bytes, below {}'s MTU {}; \
                 larger packets to {} are dropped (mtu_exceeded) and answered with ICMP too-big. \
                 Raise the underlay MTU on that path, or set `mtu = {limit}` for the overlay",
                peer.name, report.source, overlay.name, overlay.mtu, peer.name
            ));
        }
    }
    warnings
}
