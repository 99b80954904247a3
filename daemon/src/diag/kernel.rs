//! The kernel's drops of the mesh's traffic, from the eBPF tracer (`meshd-ebpf`): counted by the
//! kernel's reason and kept in a bounded ring beside meshd's own drops. The tracer's thread
//! records here; nothing on the datapath does.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use mesh_config::control::{KernelDropRecord, KernelDropReport};
use meshd_ebpf::{KernelDrop, Tracer, TracerConfig};
use tokio::sync::watch;

use crate::ike::{IKE_PORT, NAT_T_PORT};
use crate::state::MeshState;
use crate::topology::Topology;
use crate::wire::ipv4::{PROTOCOL_ESP, PROTOCOL_UDP};

/// How many recent kernel drops `ikectl drops --kernel` can show.
const RING_CAPACITY: usize = 256;

/// Kernel drops: the tracer (when it runs) and what it reported.
pub struct KernelDrops {
    log: Arc<KernelLog>,
    tracer: Option<Tracer>,
    unavailable: Option<String>,
}

struct KernelLog {
    entries: Mutex<Entries>,
    last_id: watch::Sender<u64>,
}

#[derive(Default)]
struct Entries {
    recent: VecDeque<KernelDropRecord>,
    by_reason: BTreeMap<String, u64>,
    total: u64,
    last_id: u64,
}

impl KernelDrops {
    /// Starts tracing, unless `enabled` is false; a tracer that cannot start is logged with why
    /// and what to do, and meshd runs on without it.
    pub fn start(state: Arc<MeshState>, enabled: bool) -> KernelDrops {
        let log = Arc::new(KernelLog { entries: Mutex::new(Entries::default()), last_id: watch::Sender::new(0) });
        if !enabled {
            let unavailable = Some("kernel drop tracing is off (meshd run --no-kernel-drops)".to_string());
            return KernelDrops { log, tracer: None, unavailable };
        }
        let started = tracer_config(&state).and_then(|config| {
            let sink = log.clone();
            Tracer::start(config, move |drop| sink.record(&state, drop)).map_err(|e| e.to_string())
        });
        match started {
            Ok(tracer) => {
                tracing::info!("tracing the kernel's drops of mesh traffic (skb:kfree_skb)");
                KernelDrops { log, tracer: Some(tracer), unavailable: None }
            }
            Err(why) => {
                tracing::warn!("no kernel drop tracing: {why}");
                KernelDrops { log, tracer: None, unavailable: Some(why) }
            }
        }
    }

    /// Follows the overlay interfaces of `topology` (after a reload).
    pub fn follow_overlays(&self, topology: &Topology) {
        if let Some(tracer) = &self.tracer {
            tracer.set_overlays(overlay_ifindexes(topology));
        }
    }

    /// Wakes up whenever a kernel drop is recorded.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.log.last_id.subscribe()
    }

    pub fn report(&self, peer: Option<&str>) -> KernelDropReport {
        let entries = self.log.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        KernelDropReport {
            unavailable: self.unavailable.clone(),
            total: entries.total,
            lost: self.tracer.as_ref().map_or(0, Tracer::lost),
            by_reason: entries.by_reason.clone(),
            recent: matching(&entries.recent, 0, peer),
            last_id: entries.last_id,
        }
    }

    /// The recent kernel drops after `after`, oldest first.
    pub fn since(&self, after: u64, peer: Option<&str>) -> Vec<KernelDropRecord> {
        let entries = self.log.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        matching(&entries.recent, after, peer)
    }
}

fn matching(recent: &VecDeque<KernelDropRecord>, after: u64, peer: Option<&str>) -> Vec<KernelDropRecord> {
    recent.iter().filter(|r| r.id > after && (peer.is_none() || r.peer.as_deref() == peer)).cloned().collect()
}

impl KernelLog {
    fn record(&self, state: &MeshState, drop: KernelDrop) {
        let topology = state.topology();
        let (source, destination) = drop.addresses.unzip();
        let peer = [source, destination]
            .into_iter()
            .flatten()
            .find_map(|address| topology.peer_by_address(address))
            .map(|id| topology.peer_name(id));
        let udp = drop.protocol == PROTOCOL_UDP;
        let mut record = KernelDropRecord {
            id: 0,
            at_unix_ms: drop.at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            reason: drop.reason,
            location: drop.location,
            peer,
            interface: interface_name(drop.ifindex),
            protocol: protocol_name(drop.protocol, drop.addresses.is_some()),
            source,
            destination,
            source_port: udp.then_some(drop.ports.0),
            destination_port: udp.then_some(drop.ports.1),
        };
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.total += 1;
        entries.last_id += 1;
        record.id = entries.last_id;
        *entries.by_reason.entry(record.reason.clone()).or_default() += 1;
        if entries.recent.len() == RING_CAPACITY {
            entries.recent.pop_front();
        }
        entries.recent.push_back(record);
        self.last_id.send_replace(entries.last_id);
    }
}

/// The namespace, ports and overlay interfaces that make traffic the mesh's.
fn tracer_config(state: &MeshState) -> Result<TracerConfig, String> {
    let namespace = std::fs::metadata("/proc/self/ns/net").map_err(|e| {
        format!("cannot read this process's network namespace (/proc/self/ns/net: {e}); is /proc mounted?")
    })?;
    Ok(TracerConfig {
        // Namespace inodes are 32-bit numbers (proc_inum).
        netns_inode: namespace.ino() as u32,
        ports: vec![IKE_PORT, NAT_T_PORT, state.topology().vxlan_port, super::query::QUERY_PORT],
        overlay_ifindexes: overlay_ifindexes(&state.topology()),
        mount_tracefs: true,
    })
}

fn overlay_ifindexes(topology: &Topology) -> Vec<u32> {
    topology
        .overlays
        .iter()
        .filter_map(|overlay| nix::net::if_::if_nametoindex(overlay.interface.as_str()).ok())
        .collect()
}

fn interface_name(ifindex: u32) -> Option<String> {
    (ifindex != 0).then(|| nix::net::if_::if_indextoname(ifindex).ok()).flatten().map(|n| n.to_string_lossy().into())
}

fn protocol_name(protocol: u8, has_ip: bool) -> String {
    match protocol {
        _ if !has_ip => "-".to_string(),
        PROTOCOL_ESP => "esp".to_string(),
        PROTOCOL_UDP => "udp".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn protocol_names() {
        assert_eq!(protocol_name(50, true), "esp");
        assert_eq!(protocol_name(17, true), "udp");
        assert_eq!(protocol_name(6, true), "6");
        assert_eq!(protocol_name(0, false), "-");
    }

    #[test]
    fn the_ring_is_bounded_and_filtered_by_peer() {
        let mut recent = VecDeque::new();
        for id in 1..=3u64 {
            recent.push_back(KernelDropRecord {
                id,
                at_unix_ms: 0,
                reason: "NETFILTER_DROP".into(),
                location: "nf_hook_slow+0x1".into(),
                peer: (id != 2).then(|| "n2".to_string()),
                interface: None,
                protocol: "esp".into(),
                source: Some(IpAddr::from([198, 18, 0, 1])),
                destination: None,
                source_port: None,
                destination_port: None,
            });
        }
        assert_eq!(matching(&recent, 0, Some("n2")).iter().map(|r| r.id).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(matching(&recent, 1, None).len(), 2);
    }
}
