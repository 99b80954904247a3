//! Manual keying: installs the `[[manual_sa]]` entries of the mesh file that concern this node,
//! through the SA manager (at start, on `ikectl sa flush` and on reload).

use std::net::SocketAddr;

use mesh_config::control::SaOrigin;
use mesh_config::MeshConfig;

use crate::datapath::ESP_IN_UDP_PORT;
use crate::error::KeyingError;
use crate::esp::{KeyMaterial, Opener, ReplayWindow, Sealer, DEFAULT_REPLAY_WINDOW};
use crate::manual_nonces;
use crate::sadb::manager::SaManager;
use crate::sadb::{InboundSa, OutboundSa, SaParams};
use crate::topology::PeerId;

/// Installs the manual SAs between this node and `only` (or every peer); returns their SPIs.
pub fn install(config: &MeshConfig, sas: &SaManager, only: Option<PeerId>) -> Result<Vec<u32>, KeyingError> {
    let state = sas.state();
    let topology = state.topology();
    let me = topology.node_name.as_str();
    let mut installed = Vec::new();
    for entry in &config.manual_sas {
        let (peer_name, outbound) = match (entry.from == me, entry.to == me) {
            (true, false) => (&entry.to, true),
            (false, true) => (&entry.from, false),
            _ => continue,
        };
        let Some(peer) = topology.peer_by_name(peer_name) else { continue };
        if only.is_some_and(|wanted| wanted != peer) {
            continue;
        }
        let failed = |problem: String| KeyingError::ManualSa {
            spi: entry.spi,
            from: entry.from.clone(),
            to: entry.to.clone(),
            problem,
        };
        let key = KeyMaterial::from_bytes(entry.key.as_bytes()).map_err(|e| failed(e.to_string()))?;
        let params = SaParams {
            spi: entry.spi,
            peer,
            cipher: entry.cipher,
            mode: topology.peer(peer).mode,
            encap: topology.encap,
            esn: false,
            origin: SaOrigin::Manual,
            created_ms: state.clock.now_ms(),
            remote: SocketAddr::new(topology.peer(peer).address, ESP_IN_UDP_PORT),
            // Manual SAs go to the configured address and never follow a peer elsewhere.
            behind_nat: false,
        };
        // Sequence numbers (the AEAD nonces) resume where the key's earlier lives left off.
        let nonces = manual_nonces::store();
        let key_bytes = entry.key.as_bytes();
        if outbound {
            let sealer = Sealer::new(entry.cipher, &key).map_err(|e| failed(e.to_string()))?;
            let (floor, reserved) = match nonces {
                Some(store) => store.resume_outbound(entry.spi, key_bytes).map_err(|e| failed(e.to_string()))?,
                None => (0, u64::MAX),
            };
            sas.install_outbound(OutboundSa::resumed(params, sealer, floor, reserved));
            if let (Some(store), Some(sa)) = (nonces, state.sadb.load().outbound(peer)) {
                store.track_outbound(entry.spi, key_bytes, &sa);
            }
        } else {
            let opener = Opener::new(entry.cipher, &key).map_err(|e| failed(e.to_string()))?;
            let floor = match nonces {
                Some(store) => store.resume_inbound(entry.spi, key_bytes).map_err(|e| failed(e.to_string()))?,
                None => 0,
            };
            let sa = InboundSa::new(params, opener, ReplayWindow::starting_after(DEFAULT_REPLAY_WINDOW, floor));
            sas.install_inbound(sa).map_err(|e| failed(e.to_string()))?;
            if let (Some(store), Some(sa)) = (nonces, state.sadb.load().inbound(entry.spi)) {
                store.track_inbound(entry.spi, key_bytes, &sa);
            }
        }
        installed.push(entry.spi);
    }
    installed.sort_unstable();
    Ok(installed)
}
