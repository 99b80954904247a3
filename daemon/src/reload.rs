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
use std::sync::Arc;

use mesh_config::control::OverlayStatus;
use mesh_config::reload::ReloadPlan;
use mesh_config::MeshConfig;
use tun_rs::SyncDevice;

use crate::ctl::Control;
use crate::daemon::bring_up;
use crate::datapath::{Datapath, IkeInbox, WorkerParts, WorkerTuning};
use crate::ike::crypto::NodeKey;
use crate::keying;
use crate::manual;
use crate::node_identity;
use crate::topology::Topology;

/// What a reload needs besides the shared state.
pub struct Reloader {
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

impl Reloader {
    /// Stops the datapath for good (shutdown).
    pub fn shutdown(&mut self) {
        if let Some(datapath) = self.datapath.take() {
            datapath.stop();
        }
    }
}

impl Control {
    /// Re-reads and applies the mesh file; returns what changed, or why nothing did (the old
    /// config keeps running), or what could not be applied.
    pub fn reload(&self) -> Result<ReloadPlan, String> {
        let mut reloader = self.reloader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = self.reload_with(&mut reloader);
        match &result {
            Ok(plan) => tracing::info!("reload: {}", plan.to_string().trim_end().replace('\n', "; ")),
            Err(error) => tracing::error!("reload: {error}"),
        }
        result
    }

    fn reload_with(&self, reloader: &mut Reloader) -> Result<ReloadPlan, String> {
        let refused = |error: String| format!("new config refused, the running one stays: {error}");
        let mut new = MeshConfig::load(&reloader.config_path).map_err(|e| refused(e.to_string()))?;
        let old = self.config.load_full();
        let current = self.state.topology_full();
        let plan = mesh_config::reload::plan(&old, &new, &current.node_name).map_err(|e| refused(e.to_string()))?;
        let next = current.reloaded(&new).map_err(refused)?;
        let ike_peers = keying::ike_peers(&new, &next);
        let node = new.node(&next.node_name).ok_or_else(|| refused("this node is not in it".into()))?;
        let (node_key, mismatch) =
            node_identity::load(&new, node, reloader.key_file.as_deref()).map_err(|e| refused(e.to_string()))?;
        if let Some(mismatch) = mismatch {
            tracing::error!("{mismatch}; peers will refuse this node's AUTH");
        }
        let ike_settings = keying::settings(&new, &next, &ike_peers, node_key.clone()).map_err(refused)?;
        reloader.node_key = node_key;

        // Valid: from here on everything is applied. First the SAs that must go.
        let rekeyed: Vec<&String> = plan.peers_rekeyed.iter().map(|change| &change.name).collect();
        let leaving = plan.peers_removed.iter().chain(rekeyed.iter().copied());
        for peer in leaving.filter_map(|name| current.peer_by_name(name)) {
            self.keying.remove_peer(peer);
            self.state.sadb.remove(Some(peer));
            for overlay in &current.overlays {
                overlay.fdb.forget_peer(peer);
            }
        }
        let mut failed = Vec::new();
        // Overlay ids are positions, and each worker holds its TAP queues in that order: a file
        // that only reorders the overlays still needs the queues sorted anew.
        let reordered = current.overlays.iter().map(|o| &o.name).ne(next.overlays.iter().map(|o| &o.name));
        if plan.changes_overlays() || reordered {
            let failed_overlays = self.replace_overlays(reloader, &plan, &current, next, &new)?;
            new.overlays.retain(|overlay| !failed_overlays.iter().any(|(name, _)| *name == overlay.name));
            failed.extend(failed_overlays.into_iter().map(|(name, error)| format!("overlay {name}: {error}")));
        } else {
            self.state.replace_topology(next);
        }
        self.keying.reconfigure(ike_settings);

        let next = self.state.topology_full();
        let coming = plan.peers_added.iter().chain(rekeyed.iter().copied());
        for peer in coming.filter_map(|name| next.peer_by_name(name)) {
            if ike_peers.contains(&peer) {
                self.keying.add_peer(next.peer(peer));
            } else if let Err(error) = manual::install(&new, &self.state, Some(peer)) {
                failed.push(error.to_string());
            }
        }
        self.config.store(Arc::new(new));
        self.kernel_drops.follow_overlays(&self.state.topology());
        match failed.is_empty() {
            true => Ok(plan),
            false => Err(format!("applied, except: {}; correct the mesh file and reload again", failed.join("; "))),
        }
    }

    /// Pauses the datapath, keeps the TAPs of overlays that stay, removes those of removed or
    /// recreated overlays, makes the new ones, publishes `next` and restarts the workers.
    /// Returns the overlays whose interface could not be made, with why (they are left out).
    fn replace_overlays(
        &self,
        reloader: &mut Reloader,
        plan: &ReloadPlan,
        current: &Topology,
        next: Topology,
        config: &MeshConfig,
    ) -> Result<Vec<(String, String)>, String> {
        let datapath = reloader.datapath.take().ok_or("the datapath is not running; restart meshd")?;
        let mut parts: Vec<WorkerParts> = datapath.stop();
        let recreated = |name: &str| plan.overlays_changed.iter().any(|c| c.name == name && c.recreate);
        // Each worker's queue of each current overlay, by overlay.
        let mut by_overlay: Vec<Vec<SyncDevice>> = current.overlays.iter().map(|_| Vec::new()).collect();
        for part in &mut parts {
            for (queues, queue) in by_overlay.iter_mut().zip(part.taps.drain(..)) {
                queues.push(queue);
            }
        }
        let mut kept: HashMap<&str, Vec<SyncDevice>> = HashMap::new();
        for (overlay, queues) in current.overlays.iter().zip(by_overlay) {
            if next.overlays.iter().any(|o| o.name == overlay.name) && !recreated(&overlay.name) {
                kept.insert(overlay.name.as_str(), queues);
            }
            // Otherwise the queues close here, and the interface goes with the last one.
        }
        let statuses = self.overlays.load_full();
        let mut up: Vec<(Vec<SyncDevice>, OverlayStatus)> = Vec::new();
        let mut failed = Vec::new();
        for overlay in &next.overlays {
            match kept.remove(overlay.name.as_str()) {
                Some(queues) => {
                    let status = statuses.iter().find(|s| s.name == overlay.name).cloned();
                    let status = status.map(|status| OverlayStatus { vni: overlay.vni, ..status });
                    up.extend(status.map(|status| (queues, status)));
                }
                None => match bring_up(overlay, &next, config, parts.len(), reloader.tuning.offload) {
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
        let datapath = Datapath::resume(self.state.clone(), parts, Some(reloader.ike_inbox.clone()), reloader.tuning)
            .map_err(|error| format!("{error}; restart meshd"))?;
        reloader.datapath = Some(datapath);
        Ok(failed)
    }
}
