//! `ikectl sa keys --wireshark`: the key material of every Child SA, so that a capture on the
//! underlay decrypts. Every export is logged as a warning: whoever holds the keys reads the
//! traffic of those SAs.

use mesh_config::control::{Direction, SaKeys, Spi};

use crate::esp::KeyMaterial;
use crate::state::MeshState;

/// Both directions of every Child SA, sorted by peer, direction and SPI.
pub fn sa_keys(state: &MeshState) -> Vec<SaKeys> {
    let tables = state.sadb.load();
    let topology = state.topology();
    let local = topology.local_address;
    let entry = |params: &crate::sadb::SaParams, direction: Direction, key: &KeyMaterial| {
        let (source, destination) = match direction {
            Direction::Out => (local, params.remote.ip()),
            Direction::In => (params.remote.ip(), local),
        };
        SaKeys {
            peer: topology.peer_name(params.peer),
            direction,
            source,
            destination,
            spi: Spi(params.spi),
            cipher: params.cipher,
            key: super::hex(key.reveal()),
        }
    };
    let outbound = tables.outbound_sas().map(|sa| entry(&sa.params, Direction::Out, sa.sealer.key_material()));
    let inbound = tables.inbound_sas().map(|sa| entry(&sa.params, Direction::In, sa.opener.key_material()));
    let mut keys: Vec<SaKeys> = outbound.chain(inbound).collect();
    keys.sort_by(|a, b| {
        (&a.peer, a.direction == Direction::In, a.spi).cmp(&(&b.peer, b.direction == Direction::In, b.spi))
    });
    tracing::warn!(sas = keys.len(), "the ESP keys of every Child SA were exported (ikectl sa keys)");
    keys
}
