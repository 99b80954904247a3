//! Manual keying: installs the `[[manual_sa]]` entries of the mesh file that concern this node,
//! through the SA manager (at start, on `ikectl sa flush` and on reload).

use std::net::SocketAddr;

use mesh_config::control::SaOrigin;
use mesh_config::MeshConfig;

use crate::datapath::ESP_IN_UDP_PORT;
use crate::error::KeyingError;
use crate::esp::{KeyMaterial, Opener, ReplayWindow, Sealer, DEFAULT_REPLAY_WINDOW};
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
        if outbound {
            let sealer = Sealer::new(entry.cipher, &key).map_err(|e| failed(e.to_string()))?;
            sas.install_outbound(OutboundSa::new(params, sealer));
        } else {
            let opener = Opener::new(entry.cipher, &key).map_err(|e| failed(e.to_string()))?;
            let sa = InboundSa::new(params, opener, ReplayWindow::new(DEFAULT_REPLAY_WINDOW));
            sas.install_inbound(sa).map_err(|e| failed(e.to_string()))?;
        }
        installed.push(entry.spi);
    }
    installed.sort_unstable();
    Ok(installed)
}
