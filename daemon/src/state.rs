//! What the datapath workers and the control plane share.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::diag::observe::Observers;
use crate::drops::Drops;
use crate::pmtu::PathMtus;
use crate::sadb::early::EarlyEsp;
use crate::sadb::manager::SaNotices;
use crate::sadb::Sadb;
use crate::topology::{Clock, Topology};

pub struct MeshState {
    /// Swapped whole by a reload; workers load it once per batch, like the SA tables.
    topology: ArcSwap<Topology>,
    /// Read by everyone; written only by the SA manager (`sadb::manager`).
    pub sadb: Sadb,
    /// Where the workers tell the SA manager about unknown SPIs and SAs running out.
    pub sa_notices: SaNotices,
    /// ESP for SPIs this node offered and has not installed yet (`sadb::early`).
    pub early_esp: EarlyEsp,
    pub drops: Drops,
    pub clock: Clock,
    pub pmtu: PathMtus,
    /// A running capture and the flow meter; the workers check them once per batch.
    pub observers: Observers,
}

impl MeshState {
    pub fn new(topology: Topology) -> Self {
        let peers = topology.peer_ids();
        MeshState {
            sadb: Sadb::new(peers),
            sa_notices: SaNotices::default(),
            early_esp: EarlyEsp::default(),
            drops: Drops::new(peers),
            clock: Clock::new(),
            pmtu: PathMtus::default(),
            observers: Observers::default(),
            topology: ArcSwap::from_pointee(topology),
        }
    }

    /// The current topology.
    pub fn topology(&self) -> Guard<Arc<Topology>> {
        self.topology.load()
    }

    /// The current topology, to hold on to for longer than a batch.
    pub fn topology_full(&self) -> Arc<Topology> {
        self.topology.load_full()
    }

    /// Publishes a reloaded topology (`Topology::reloaded`, so peer ids stay valid).
    pub fn replace_topology(&self, topology: Topology) {
        self.drops.add_peers(topology.peer_ids());
        self.topology.store(Arc::new(topology));
    }
}
