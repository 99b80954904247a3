//! What `ikectl status`, `sa list`, `peers` and `fdb` show: read from the shared state, the SA
//! tables and the keying driver, never written.

use std::sync::atomic::Ordering;

use mesh_config::control::{Direction, FdbEntry, PeerInfo, ReplayInfo, SaInfo, Spi};

use crate::keying::Keying;
use crate::sadb::{SaCounters, SaParams};
use crate::state::MeshState;
use crate::topology::PeerId;

/// Peers with an SA in both directions.
pub fn peers_with_sas(state: &MeshState) -> usize {
    let tables = state.sadb.load();
    let both_ways =
        |peer: PeerId| tables.outbound(peer).is_some() && tables.inbound_sas().any(|sa| sa.params.peer == peer);
    state.topology().peers.iter().filter(|peer| both_ways(peer.id)).count()
}

fn sa_info(state: &MeshState, params: &SaParams, direction: Direction, counters: &SaCounters) -> SaInfo {
    let clock = &state.clock;
    SaInfo {
        peer: state.topology().peer_name(params.peer),
        direction,
        spi: Spi(params.spi),
        cipher: params.cipher,
        mode: params.mode,
        encap: params.encap,
        origin: params.origin,
        esn: params.esn,
        age_secs: clock.secs_since(params.created_ms).unwrap_or(0),
        packets: counters.packets.load(Ordering::Relaxed),
        bytes: counters.bytes.load(Ordering::Relaxed),
        last_used_secs: clock.secs_since(counters.last_used_ms.load(Ordering::Relaxed)),
        replay: None,
        sequence: None,
        drops: counters.drops.snapshot(),
    }
}

/// The Child SAs of `only` (or all peers), by peer, outbound first.
pub fn sa_list(state: &MeshState, only: Option<PeerId>) -> Vec<SaInfo> {
    let tables = state.sadb.load();
    let wanted = |peer: PeerId| only.is_none_or(|o| o == peer);
    let outbound = tables.outbound_sas().filter(|sa| wanted(sa.params.peer)).map(|sa| SaInfo {
        sequence: Some(sa.last_sequence()),
        ..sa_info(state, &sa.params, Direction::Out, &sa.counters)
    });
    let inbound = tables.inbound_sas().filter(|sa| wanted(sa.params.peer)).map(|sa| {
        let replay = sa.replay().state();
        SaInfo {
            replay: Some(ReplayInfo {
                highest_sequence: replay.highest,
                window_size: replay.size,
                received_in_window: replay.received,
            }),
            ..sa_info(state, &sa.params, Direction::In, &sa.counters)
        }
    });
    let mut list: Vec<SaInfo> = outbound.chain(inbound).collect();
    list.sort_by(|a, b| {
        (&a.peer, a.direction == Direction::In, a.spi).cmp(&(&b.peer, b.direction == Direction::In, b.spi))
    });
    list
}

pub fn peers(state: &MeshState, keying: &Keying) -> Vec<PeerInfo> {
    let tables = state.sadb.load();
    let clock = &state.clock;
    let topology = state.topology();
    topology
        .peers
        .iter()
        .map(|peer| {
            let mut inbound_spis: Vec<Spi> =
                tables.inbound_sas().filter(|sa| sa.params.peer == peer.id).map(|sa| Spi(sa.params.spi)).collect();
            inbound_spis.sort();
            let counters = &peer.counters;
            let path = peer.path_mtu.report();
            PeerInfo {
                name: peer.name.clone(),
                address: peer.address,
                mode: peer.mode,
                encap: topology.encap,
                outbound_spi: tables.outbound(peer.id).map(|sa| Spi(sa.params.spi)),
                inbound_spis,
                tx_packets: counters.tx_packets.load(Ordering::Relaxed),
                tx_bytes: counters.tx_bytes.load(Ordering::Relaxed),
                rx_packets: counters.rx_packets.load(Ordering::Relaxed),
                rx_bytes: counters.rx_bytes.load(Ordering::Relaxed),
                last_rx_secs: clock.secs_since(counters.last_rx_ms.load(Ordering::Relaxed)),
                early_esp_packets: counters.early_esp_packets.load(Ordering::Relaxed),
                drops: state.drops.peer_total(peer.id),
                send_errors: counters.send_errors.snapshot(),
                keying: keying.state_of(peer.id).to_string(),
                path_mtu: path.path_mtu,
                overlay_mtu: path.overlay_mtu,
                path_mtu_source: path.path_mtu.map(|_| path.source.to_string()),
                path_mtu_search: path.search.map(str::to_string),
            }
        })
        .collect()
}

pub fn fdb(state: &MeshState) -> Vec<FdbEntry> {
    let topology = &*state.topology();
    topology
        .overlays
        .iter()
        .flat_map(|overlay| {
            overlay.fdb.entries().into_iter().map(move |(mac, peer, seen_ms)| FdbEntry {
                overlay: overlay.name.clone(),
                vni: overlay.vni,
                mac: mac.to_string(),
                peer: topology.peer_name(peer),
                age_secs: state.clock.secs_since(seen_ms).unwrap_or(0),
            })
        })
        .collect()
}
