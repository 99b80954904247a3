//! What the datapath workers and the control plane share.

use crate::drops::Drops;
use crate::fdb::Fdb;
use crate::pmtu::PathMtus;
use crate::sadb::Sadb;
use crate::topology::{Clock, OverlayId, Topology};

pub struct MeshState {
    pub topology: Topology,
    pub sadb: Sadb,
    /// One per overlay, indexed by `OverlayId`.
    pub fdbs: Vec<Fdb>,
    pub drops: Drops,
    pub clock: Clock,
    pub pmtu: PathMtus,
}

impl MeshState {
    pub fn new(topology: Topology) -> Self {
        let peers = topology.peers.len();
        MeshState {
            sadb: Sadb::new(peers),
            fdbs: topology.overlays.iter().map(|_| Fdb::default()).collect(),
            drops: Drops::new(peers),
            clock: Clock::new(),
            pmtu: PathMtus::new(peers, topology.overlays.len()),
            topology,
        }
    }

    pub fn fdb(&self, overlay: OverlayId) -> &Fdb {
        &self.fdbs[overlay.0]
    }
}
