//! What `ikectl status` shows about MTUs: overlay MTUs as retuned since start, and a warning per
//! peer whose path forces an overlay below its MTU.

use mesh_config::control::OverlayStatus;

use crate::state::MeshState;
use crate::topology::Peer;

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
    state.topology().peers.iter().flat_map(|peer| peer_warnings(peer, &overlays)).collect()
}

/// One line per overlay (of `overlays`, as retuned) whose MTU `peer`'s path cannot carry.
pub fn peer_warnings(peer: &Peer, overlays: &[OverlayStatus]) -> Vec<String> {
    let report = peer.path_mtu.report();
    let (Some(path_mtu), Some(limit)) = (report.path_mtu, report.overlay_mtu) else { return Vec::new() };
    overlays
        .iter()
        .filter(|overlay| limit < overlay.mtu)
        .map(|overlay| {
            format!(
                "peer {}: path MTU {path_mtu} ({}) carries overlay packets of at most {limit} bytes, below {}'s MTU {}; \
                 larger packets to {} are dropped (mtu_exceeded) and answered with ICMP too-big. \
                 Raise the underlay MTU on that path, or set `mtu = {limit}` for the overlay",
                peer.name, report.source, overlay.name, overlay.mtu, peer.name
            )
        })
        .collect()
}
