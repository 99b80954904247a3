//! Live reload (`ikectl reload`, SIGHUP): re-reads the mesh file, refuses it when it does not
//! validate or cannot apply to this running node, and otherwise applies the difference
//! (`mesh_config::reload::plan`) without touching what did not change.
//!
//! The topology is an immutable snapshot swapped whole (`MeshState::replace_topology`), like the
//! SA tables: peer ids stay valid across reloads, so the SAs, FDB entries and counters of
//! unaffected peers carry on. Only when overlays change do the datapath workers pause: they hand
//! back their sockets and TAP queues, the queues of overlays that stay are handed to the new
//! workers, and only added or changed overlays get new interfaces.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::tap::TapQueue;
use arc_swap::ArcSwap;
use mesh_config::control::OverlayStatus;
use mesh_config::reload::ReloadPlan;
use mesh_config::MeshConfig;

use crate::datapath::{Datapath, IkeInbox, WorkerParts, WorkerTuning};
use crate::diag::kernel::KernelDrops;
use crate::error::{ReloadError, ReloadRefusal};
use crate::ike::crypto::NodeKey;
use crate::keying::{self, Keying};
use crate::manual;
use crate::node_identity;
use crate::overlay_tap::bring_up;
use crate::sadb::manager::SaManager;
use crate::state::MeshState;
use crate::topology::{PeerId, Topology};

/// Applies reloads: what it changes, and the datapath it pauses.
pub struct Reloader {
    /// The running mesh file; a reload replaces it.
    pub config: Arc<ArcSwap<MeshConfig>>,
    pub state: Arc<MeshState>,
    pub keying: Arc<Keying>,
    pub sas: Arc<SaManager>,
    /// What `ikectl status` shows of the overlay interfaces.
    pub overlays: Arc<ArcSwap<Vec<OverlayStatus>>>,
    pub kernel_drops: Arc<KernelDrops>,
    /// Held while a reload runs, so that reloads never overlap.
    pub running: Mutex<Running>,
}

/// What only a reload (or shutdown) touches.
pub struct Running {
    /// The mesh file meshd was started with.
    pub config_path: PathBuf,
    /// `meshd run --key`, if given; the key is read again at each reload (a key rotation).
    pub key_file: Option<PathBuf>,
    /// The key the running settings sign with.
    pub node_key: Option<Arc<NodeKey>>,
    /// `None` only while a reload takes the datapath over, or after shutdown.
    pub datapath: Option<Datapath>,
    pub ike_inbox: IkeInbox,
    pub tuning: WorkerTuning,
}

/// The running datapath during a handover, with reloads held off.
pub struct HandingOver<'a> {
    reloader: &'a Reloader,
    running: std::sync::MutexGuard<'a, Running>,
}

impl HandingOver<'_> {
    /// The workers' underlay sockets and TAP queues (`Datapath::handover_fds`), duplicated.
    pub fn fds(&self) -> std::io::Result<Vec<std::os::fd::OwnedFd>> {
        let fds = self.running.datapath.as_ref().map_or(&[][..], Datapath::handover_fds);
        fds.iter().map(std::os::fd::OwnedFd::try_clone).collect()
    }

    pub fn workers(&self) -> usize {
        self.running.datapath.as_ref().map_or(0, Datapath::workers)
    }

    pub fn tuning(&self) -> WorkerTuning {
        self.running.tuning
    }

    /// Stops the workers (at a batch boundary) and runs `finish`; when it fails, the workers
    /// forward again on the same queues and sockets.
    pub fn stop_and<T, E: std::fmt::Display>(mut self, finish: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let parts = self.running.datapath.take().map(Datapath::stop).unwrap_or_default();
        let result = finish();
        if let Err(error) = &result {
            tracing::warn!("handover failed ({error}); forwarding again");
            let state = self.reloader.state.clone();
            let (inbox, tuning) = (self.running.ike_inbox.clone(), self.running.tuning);
            match Datapath::resume(state, parts, Some(inbox), tuning) {
                Ok(datapath) => self.running.datapath = Some(datapath),
                Err(error) => tracing::error!("cannot restart the datapath after the failed handover: {error}"),
            }
        }
        result
    }
}

/// Which peers' SAs a reload deletes, and how the new ones are made.
#[derive(Debug, Default, PartialEq, Eq)]
struct PeerChanges {
    /// Removed, or rekeyed: by their ids in the current topology.
    leaving: Vec<PeerId>,
    /// Added or rekeyed, by their ids in the next topology: keyed by IKE.
    ike: Vec<PeerId>,
    /// Added or rekeyed: keyed with the new file's manual SAs.
    manual: Vec<PeerId>,
}

impl PeerChanges {
    fn of(plan: &ReloadPlan, current: &Topology, next: &Topology, ike_peers: &[PeerId]) -> Self {
        let rekeyed = || plan.peers_rekeyed.iter().map(|change| &change.name);
        let leaving =
            plan.peers_removed.iter().chain(rekeyed()).filter_map(|name| current.peer_by_name(name)).collect();
        let coming = plan.peers_added.iter().chain(rekeyed()).filter_map(|name| next.peer_by_name(name));
        let (ike, manual) = coming.partition(|peer| ike_peers.contains(peer));
        PeerChanges { leaving, ike, manual }
    }
}

impl Reloader {
    /// Stops the datapath for good (shutdown).
    pub fn shutdown(&self) {
        if let Some(datapath) = self.lock().datapath.take() {
            datapath.stop();
        }
    }

    /// Runs `datapath` as the one reloads pause (at start, once its workers run).
    pub fn run_datapath(&self, datapath: Datapath) {
        self.lock().datapath = Some(datapath);
    }

    /// Holds the running datapath for a handover (`crate::upgrade`), so that no reload runs
    /// until it ends; `None` when the datapath is stopped.
    pub fn hand_over(&self) -> Option<HandingOver<'_>> {
        let running = self.lock();
        running.datapath.is_some().then_some(HandingOver { reloader: self, running })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Re-reads and applies the mesh file; returns what changed, or why nothing did (the old
    /// config keeps running), or what could not be applied.
    pub fn reload(&self) -> Result<ReloadPlan, ReloadError> {
        let mut running = self.lock();
        let result = self.reload_with(&mut running);
        match &result {
            Ok(plan) => tracing::info!("reload: {}", plan.to_string().trim_end().replace('\n', "; ")),
            Err(error) => tracing::error!("reload: {error}"),
        }
        result
    }

    fn reload_with(&self, running: &mut Running) -> Result<ReloadPlan, ReloadError> {
        let mut new = MeshConfig::load(&running.config_path).map_err(ReloadRefusal::from)?;
        let old = self.config.load_full();
        let current = self.state.topology_full();
        let plan = mesh_config::reload::plan(&old, &new, &current.node_name).map_err(ReloadRefusal::from)?;
        let next = current.reloaded(&new).map_err(ReloadRefusal::Topology)?;
        let ike_peers = keying::ike_peers(&new, &next);
        let node = new.node(&next.node_name).ok_or_else(|| ReloadRefusal::Topology("this node is not in it".into()))?;
        let (node_key, mismatch) = node_identity::load(&new, node, running.key_file.as_deref())
            .map_err(|error| ReloadRefusal::Invalid(error.into()))?;
        if let Some(mismatch) = mismatch {
            tracing::error!("{mismatch}; peers will refuse this node's AUTH");
        }
        let ike_settings = keying::settings(&new, &next, &ike_peers, node_key.clone()).map_err(ReloadRefusal::from)?;
        running.node_key = node_key;
        let changes = PeerChanges::of(&plan, &current, &next, &ike_peers);

        // Valid: from here on everything is applied. First the SAs that must go.
        for peer in &changes.leaving {
            self.keying.remove_peer(*peer);
            self.sas.remove_peer(Some(*peer));
            for overlay in &current.overlays {
                overlay.fdb.forget_peer(*peer);
            }
        }
        let mut failed = Vec::new();
        // Overlay ids are positions, and each worker holds its TAP queues in that order: a file
        // that only reorders the overlays still needs the queues sorted anew.
        let reordered = current.overlays.iter().map(|o| &o.name).ne(next.overlays.iter().map(|o| &o.name));
        if plan.changes_overlays() || reordered {
            let failed_overlays = self.replace_overlays(running, &plan, &current, next, &new)?;
            new.overlays.retain(|overlay| !failed_overlays.iter().any(|(name, _)| *name == overlay.name));
            failed.extend(failed_overlays.into_iter().map(|(name, error)| format!("overlay {name}: {error}")));
        } else {
            self.state.replace_topology(next);
        }
        self.keying.reconfigure(ike_settings);

        let next = self.state.topology_full();
        // A peer that stays but left an overlay: what was learned behind it there is stale.
        for overlay in &next.overlays {
            let before = current.overlays.iter().find(|o| o.name == overlay.name);
            for peer in before.iter().flat_map(|o| &o.members).filter(|p| !overlay.members.contains(p)) {
                overlay.fdb.forget_peer(*peer);
            }
        }
        for peer in &changes.ike {
            self.keying.add_peer(next.peer(*peer));
        }
        for peer in &changes.manual {
            if let Err(error) = manual::install(&new, &self.sas, Some(*peer)) {
                failed.push(error.to_string());
            }
        }
        self.config.store(Arc::new(new));
        self.kernel_drops.follow_overlays(&self.state.topology());
        match failed.is_empty() {
            true => Ok(plan),
            false => Err(ReloadError::PartlyApplied(failed)),
        }
    }

    /// Pauses the datapath, keeps the TAPs of overlays that stay, removes those of removed or
    /// recreated overlays, makes the new ones, publishes `next` and restarts the workers.
    /// Returns the overlays whose interface could not be made, with why (they are left out).
    fn replace_overlays(
        &self,
        running: &mut Running,
        plan: &ReloadPlan,
        current: &Topology,
        next: Topology,
        config: &MeshConfig,
    ) -> Result<Vec<(String, String)>, ReloadError> {
        let datapath = running.datapath.take().ok_or(ReloadError::DatapathStopped)?;
        let mut parts: Vec<WorkerParts> = datapath.stop();
        let recreated = |name: &str| plan.overlays_changed.iter().any(|c| c.name == name && c.recreate);
        // Each worker's queue of each current overlay, by overlay.
        let mut by_overlay: Vec<Vec<TapQueue>> = current.overlays.iter().map(|_| Vec::new()).collect();
        for part in &mut parts {
            for (queues, queue) in by_overlay.iter_mut().zip(part.taps.drain(..)) {
                queues.push(queue);
            }
        }
        let mut kept: HashMap<&str, Vec<TapQueue>> = HashMap::new();
        for (overlay, queues) in current.overlays.iter().zip(by_overlay) {
            if next.overlays.iter().any(|o| o.name == overlay.name) && !recreated(&overlay.name) {
                kept.insert(overlay.name.as_str(), queues);
            }
            // Otherwise the queues close here, and the interface goes with the last one.
        }
        let statuses = self.overlays.load_full();
        let mut up: Vec<(Vec<TapQueue>, OverlayStatus)> = Vec::new();
        let mut failed = Vec::new();
        for overlay in &next.overlays {
            match kept.remove(overlay.name.as_str()) {
                Some(queues) => {
                    let status = statuses.iter().find(|s| s.name == overlay.name).cloned();
                    let status = status.map(|status| OverlayStatus { vni: overlay.vni, ..status });
                    up.extend(status.map(|status| (queues, status)));
                }
                None => match bring_up(overlay, &next, config, parts.len(), running.tuning.offload) {
                    Ok(made) => {
                        // A new interface: its MTU is the one just chosen, not one retuned before.
                        self.state.pmtu.forget_overlay(&overlay.name);
                        up.push(made)
                    }
                    Err(error) => failed.push((overlay.name.clone(), error.to_string())),
                },
            }
        }
        let failed_names: Vec<String> = failed.iter().map(|(name, _)| name.clone()).collect();
        self.state.replace_topology(next.without_overlays(&failed_names));
        let mut statuses = Vec::with_capacity(up.len());
        for (queues, status) in up {
            for (part, queue) in parts.iter_mut().zip(queues) {
                part.taps.push(queue);
            }
            statuses.push(status);
        }
        self.overlays.store(Arc::new(statuses));
        let datapath = Datapath::resume(self.state.clone(), parts, Some(running.ike_inbox.clone()), running.tuning)
            .map_err(ReloadError::DatapathRestart)?;
        running.datapath = Some(datapath);
        Ok(failed)
    }
}

#[cfg(test)]
mod tests {
    use mesh_config::reload::Change;

    use super::*;
    use crate::datapath::testkit::{address, mesh_file, Setup, DEFAULT};

    fn topology(nodes: usize) -> (MeshConfig, Topology) {
        let config = mesh_file(&Setup { nodes, ..DEFAULT });
        let topology = Topology::new(&config, "n0", address(&DEFAULT, 0)).unwrap();
        (config, topology)
    }

    #[test]
    fn an_added_node_is_keyed_and_nothing_else_is_touched() {
        let (old, current) = topology(3);
        let (new, _) = topology(4);
        let next = current.reloaded(&new).unwrap();
        let plan = mesh_config::reload::plan(&old, &new, "n0").unwrap();
        let changes = PeerChanges::of(&plan, &current, &next, &keying::ike_peers(&new, &next));
        let n3 = next.peer_by_name("n3").unwrap();
        assert_eq!(changes, PeerChanges { leaving: vec![], ike: vec![], manual: vec![n3] });
        assert_eq!(next.peer_by_name("n1"), current.peer_by_name("n1"), "peers keep their ids");
    }

    #[test]
    fn removed_and_rekeyed_peers_leave_and_rekeyed_ones_come_back_by_their_keying() {
        let (_, current) = topology(4);
        let (new, _) = topology(3);
        let next = current.reloaded(&new).unwrap();
        let plan = ReloadPlan {
            peers_removed: vec!["n3".to_string()],
            peers_rekeyed: vec![
                Change { name: "n1".to_string(), reason: "psk".to_string() },
                Change { name: "n2".to_string(), reason: "manual SA".to_string() },
            ],
            ..ReloadPlan::default()
        };
        let id = |topology: &Topology, name: &str| topology.peer_by_name(name).unwrap();
        let ike_peers = [id(&next, "n1")];
        let changes = PeerChanges::of(&plan, &current, &next, &ike_peers);
        assert_eq!(
            changes,
            PeerChanges {
                leaving: vec![id(&current, "n3"), id(&current, "n1"), id(&current, "n2")],
                ike: vec![id(&next, "n1")],
                manual: vec![id(&next, "n2")],
            }
        );
    }
}
