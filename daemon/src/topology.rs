//! This node's view of the mesh: who it is, its peers and its overlays, resolved once from the
//! validated config so the datapath works with small integer ids instead of names.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mesh_config::{Encap, Mode};
use mesh_config::{MeshConfig, OverlayMtu};

use crate::fdb::{Fdb, StaticOwner};
// Re-exported for the modules that name peers through the topology.
pub use crate::ids::{OverlayId, PeerId};
use crate::pmtu::PeerPathMtu;
use crate::wire::ethernet::EthernetAddress;

/// Monotonic milliseconds since the daemon started; cheap to store in an atomic.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock { start: Instant::now() }
    }

    /// Milliseconds since start, never 0 (0 means "never" in the atomics that store it).
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }

    /// Seconds since `at_ms`, or `None` when `at_ms` is 0 (never).
    pub fn secs_since(&self, at_ms: u64) -> Option<u64> {
        (at_ms != 0).then(|| self.now_ms().saturating_sub(at_ms) / 1000)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// How a frame reached a peer: sent to it alone, or as one of the copies of a flooded frame
/// (which does not make its path one that carries traffic, see
/// [`PeerCounters::unicast_tx_packets`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Unicast,
    Flooded,
}

/// Traffic counters of one peer, across all its SAs (they survive rekeys and flushes).
#[derive(Debug, Default)]
pub struct PeerCounters {
    pub tx_packets: AtomicU64,
    /// Of `tx_packets`, copies of flooded frames (broadcast, multicast, unknown unicast).
    pub tx_flooded_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub last_rx_ms: AtomicU64,
    /// ESP that came before its inbound SA was installed, kept and handed on once it was
    /// (`sadb::early`).
    pub early_esp_packets: AtomicU64,
    /// Packets to the peer (ESP, IKE, path-MTU messages) that the kernel refused to send.
    pub send_errors: crate::drops::SendErrors,
    /// When the datapath last told the SA manager of ESP for an unknown SPI from the peer, and of
    /// the peer's NAT mapping moving (ms): a stream of such packets makes one notice, not one each.
    pub unknown_spi_noticed_ms: AtomicU64,
    pub moved_noticed_ms: AtomicU64,
}

/// The least time between two datapath notices of one kind about one peer (the keying driver
/// acts on them at most once a second).
const NOTICE_GAP_MS: u64 = 100;

/// Whether a notice last sent at `gate` may go again at `now_ms`; if so, `gate` takes `now_ms`
/// (one worker wins a race).
pub fn notice_due(gate: &AtomicU64, now_ms: u64) -> bool {
    let last = gate.load(Ordering::Relaxed);
    let due = last == 0 || now_ms.saturating_sub(last) >= NOTICE_GAP_MS;
    due && gate.compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed).is_ok()
}

impl PeerCounters {
    pub fn count_tx(&self, bytes: usize, delivery: Delivery) {
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        if delivery == Delivery::Flooded {
            self.tx_flooded_packets.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Packets sent to the peer alone: what says its path carries traffic (and is worth probing).
    /// The chatter every node floods (ARP, neighbour discovery, router solicitations) reaches
    /// every peer; counted, it kept every path of a large mesh probed.
    pub fn unicast_tx_packets(&self) -> u64 {
        let flooded = self.tx_flooded_packets.load(Ordering::Relaxed);
        self.tx_packets.load(Ordering::Relaxed).saturating_sub(flooded)
    }

    /// Counts `packets` of `bytes` in all received at once (a run of them, summed by the datapath).
    pub fn add_rx(&self, packets: u64, bytes: u64, now_ms: u64) {
        self.rx_packets.fetch_add(packets, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.last_rx_ms.store(now_ms, Ordering::Relaxed);
    }
}

/// The underlay addresses of this node and a peer; both ends of a pair share an IP version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    V4 { local: Ipv4Addr, peer: Ipv4Addr },
    V6 { local: Ipv6Addr, peer: Ipv6Addr },
}

impl Path {
    pub fn new(local: IpAddr, peer: IpAddr) -> Option<Path> {
        match (local, peer) {
            (IpAddr::V4(local), IpAddr::V4(peer)) => Some(Path::V4 { local, peer }),
            (IpAddr::V6(local), IpAddr::V6(peer)) => Some(Path::V6 { local, peer }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Peer {
    pub id: PeerId,
    pub name: String,
    pub address: IpAddr,
    pub path: Path,
    /// ESP mode for this pair (tunnel when either side asks for it).
    pub mode: Mode,
    /// Its Ed25519 public keys from mesh.toml (empty: it uses the pre-shared key).
    pub public_keys: Vec<mesh_config::PublicKey>,
    /// Shared by every version of the topology (reloads keep them).
    pub counters: Arc<PeerCounters>,
    /// The path MTU towards the peer, kept across reloads like the counters.
    pub path_mtu: Arc<PeerPathMtu>,
}

#[derive(Debug, Clone)]
pub struct Overlay {
    pub id: OverlayId,
    pub name: String,
    pub interface: String,
    pub vni: u32,
    pub mtu: OverlayMtu,
    /// This node's host address on the overlay interface, with prefix length.
    pub address: Option<(IpAddr, u8)>,
    /// Kept across reloads while the overlay stays.
    pub fdb: Arc<Fdb>,
    /// The peers on this overlay: where its broadcast, multicast and unknown unicast go.
    pub members: Vec<PeerId>,
}

/// Where a `PeerId` points.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Member(usize),
    /// Removed by a reload; kept so that SAs and FDB entries still in flight resolve.
    Departed(usize),
}

#[derive(Debug)]
pub struct Topology {
    pub mesh_name: String,
    pub node_name: String,
    pub local_address: IpAddr,
    pub encap: Encap,
    pub vxlan_port: u16,
    /// The peers in the mesh now (not indexed by `PeerId`: use `peer`).
    pub peers: Vec<Peer>,
    /// Indexed by `OverlayId`.
    pub overlays: Vec<Overlay>,
    departed: Vec<Peer>,
    /// Indexed by `PeerId`.
    slots: Vec<Slot>,
    peers_by_address: HashMap<IpAddr, PeerId>,
    peers_by_name: HashMap<String, PeerId>,
    overlays_by_vni: HashMap<u32, OverlayId>,
}

impl Topology {
    /// Resolves `config` from the point of view of node `node_name`, whose underlay address is
    /// `local_address`. Fails when a peer's address is of the other IP version.
    pub fn new(config: &MeshConfig, node_name: &str, local_address: IpAddr) -> Result<Self, String> {
        let empty = Topology {
            mesh_name: String::new(),
            node_name: node_name.to_string(),
            local_address,
            encap: config.mesh.encap,
            vxlan_port: config.mesh.vxlan_port,
            peers: Vec::new(),
            overlays: Vec::new(),
            departed: Vec::new(),
            slots: Vec::new(),
            peers_by_address: HashMap::new(),
            peers_by_name: HashMap::new(),
            overlays_by_vni: HashMap::new(),
        };
        empty.reloaded(config)
    }

    /// The topology of `config` as a successor of this one: a peer with the same name and address
    /// keeps its id and counters, an overlay with the same name its FDB; removed peers depart.
    pub fn reloaded(&self, config: &MeshConfig) -> Result<Self, String> {
        let (node_name, local_address) = (self.node_name.as_str(), self.local_address);
        let mut slots = self.slots.clone();
        let mut departed = self.departed.clone();
        let mut peers = Vec::new();
        for node in config.peers_of(node_name) {
            let path = Path::new(local_address, node.address).ok_or_else(|| {
                format!(
                    "node {node_name} ({local_address}) and its peer {} ({}) use different IP versions; \
                     give every node an address of the same version",
                    node.name, node.address
                )
            })?;
            let kept = self.peer_by_name(&node.name).map(|id| self.peer(id)).filter(|p| p.address == node.address);
            let id = kept.map_or_else(
                || {
                    slots.push(Slot::Departed(0));
                    PeerId(slots.len() - 1)
                },
                |p| p.id,
            );
            slots[id.0] = Slot::Member(peers.len());
            peers.push(Peer {
                id,
                name: node.name.clone(),
                address: node.address,
                path,
                mode: config.mode_between(node_name, &node.name),
                public_keys: node.public_keys.clone(),
                counters: kept.map(|p| p.counters.clone()).unwrap_or_default(),
                path_mtu: kept.map(|p| p.path_mtu.clone()).unwrap_or_default(),
            });
        }
        for gone in self.peers.iter().filter(|p| !peers.iter().any(|kept| kept.id == p.id)) {
            slots[gone.id.0] = Slot::Departed(departed.len());
            departed.push(gone.clone());
        }
        // Only the overlays this node is on; each floods to the peers on it.
        let overlays: Vec<Overlay> = config
            .overlays_of(node_name)
            .enumerate()
            .map(|(index, overlay)| Overlay {
                id: OverlayId(index),
                name: overlay.name.clone(),
                interface: overlay.interface.clone(),
                vni: overlay.vni,
                mtu: overlay.mtu,
                address: overlay.addresses.get(node_name).map(|a| (a.addr, a.prefix_len)),
                fdb: self.overlays.iter().find(|o| o.name == overlay.name).map(|o| o.fdb.clone()).unwrap_or_default(),
                members: peers.iter().filter(|p| overlay.has_member(&p.name)).map(|p| p.id).collect(),
            })
            .collect();
        for (overlay, configured) in overlays.iter().zip(&config.overlays) {
            let statics: Vec<(EthernetAddress, StaticOwner)> = configured
                .static_macs
                .iter()
                .filter_map(|pinned| {
                    let owner = match peers.iter().find(|p| p.name == pinned.node) {
                        Some(peer) => StaticOwner::Peer(peer.id),
                        None if pinned.node == node_name => StaticOwner::ThisNode,
                        None => return None,
                    };
                    Some((EthernetAddress(pinned.mac), owner))
                })
                .collect();
            overlay.fdb.set_static(&statics);
        }
        Ok(Topology {
            mesh_name: config.mesh.name.clone(),
            node_name: node_name.to_string(),
            local_address,
            encap: config.mesh.encap,
            vxlan_port: config.mesh.vxlan_port,
            peers_by_address: peers.iter().map(|p| (p.address, p.id)).collect(),
            peers_by_name: peers.iter().map(|p| (p.name.clone(), p.id)).collect(),
            overlays_by_vni: overlays.iter().map(|o| (o.vni, o.id)).collect(),
            peers,
            overlays,
            departed,
            slots,
        })
    }

    /// This topology without the overlays named in `failed` (a reload could not make their
    /// interfaces); the others are numbered anew in order.
    pub fn without_overlays(mut self, failed: &[String]) -> Self {
        self.overlays.retain(|overlay| !failed.contains(&overlay.name));
        for (index, overlay) in self.overlays.iter_mut().enumerate() {
            overlay.id = OverlayId(index);
        }
        self.overlays_by_vni = self.overlays.iter().map(|o| (o.vni, o.id)).collect();
        self
    }

    /// Ids ever handed out (the size of tables indexed by `PeerId`).
    pub fn peer_ids(&self) -> usize {
        self.slots.len()
    }

    /// The peer with `id`, also one that a reload removed.
    pub fn peer(&self, id: PeerId) -> &Peer {
        match self.slots[id.0] {
            Slot::Member(index) => &self.peers[index],
            Slot::Departed(index) => &self.departed[index],
        }
    }

    /// The peer's name, also for an id newer than this snapshot (a reader that loaded the
    /// topology just before a reload published peers it then finds in the SADB or the drops).
    pub fn peer_name(&self, id: PeerId) -> String {
        match self.slots.get(id.0) {
            Some(_) => self.peer(id).name.clone(),
            None => format!("peer #{} (added by a reload)", id.0),
        }
    }

    /// False for a peer that a reload removed.
    pub fn is_member(&self, id: PeerId) -> bool {
        matches!(self.slots.get(id.0), Some(Slot::Member(_)))
    }

    pub fn peer_by_address(&self, address: IpAddr) -> Option<PeerId> {
        self.peers_by_address.get(&address).copied()
    }

    pub fn peer_by_name(&self, name: &str) -> Option<PeerId> {
        self.peers_by_name.get(name).copied()
    }

    pub fn fdb(&self, overlay: OverlayId) -> &Fdb {
        &self.overlays[overlay.0].fdb
    }

    pub fn overlay_by_vni(&self, vni: u32) -> Option<OverlayId> {
        self.overlays_by_vni.get(&vni).copied()
    }

    /// Resolves an operator-given peer name, with an error that lists the valid ones.
    /// The overlay called `name`, or a message that lists the overlays.
    pub fn resolve_overlay(&self, name: &str) -> Result<&Overlay, String> {
        self.overlays.iter().find(|o| o.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.overlays.iter().map(|o| o.name.as_str()).collect();
            format!("no overlay \"{name}\" on node {}; overlays are: {}", self.node_name, known.join(", "))
        })
    }

    pub fn resolve_peer(&self, name: &str) -> Result<PeerId, String> {
        self.peer_by_name(name).ok_or_else(|| {
            let known: Vec<&str> = self.peers.iter().map(|p| p.name.as_str()).collect();
            format!("\"{name}\" is not a peer of node {}; peers are: {}", self.node_name, known.join(", "))
        })
    }
}
