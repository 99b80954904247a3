//! What a reload changes: the difference between the running mesh file and a new one, seen from
//! one node. A pure function of the two configs, so that `meshd` (to apply it) and fleet tools
//! (to show it before pushing a file) agree on what changes.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::{list, ManualSa, MeshConfig, Overlay};
use crate::Mode;

/// The changes a reload applies on one node. Names are node and overlay names, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadPlan {
    /// New nodes: peered (IKE or manual SAs).
    pub peers_added: Vec<String>,
    /// Nodes gone (or whose address changed: removed, then added): SAs deleted, FDB entries gone.
    pub peers_removed: Vec<String>,
    /// Peers whose keying changed: their SAs are deleted and made anew.
    pub peers_rekeyed: Vec<Change>,
    pub overlays_added: Vec<String>,
    pub overlays_removed: Vec<String>,
    pub overlays_changed: Vec<OverlayChange>,
    /// Settings that apply from now on without touching existing SAs (IKE lifetimes, DPD, name).
    pub settings_changed: Vec<String>,
}

/// A peer and why it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayChange {
    pub name: String,
    pub reason: String,
    /// The interface is made anew (its interface, MTU or this node's address changed); false when
    /// only the VNI changed, which keeps the interface.
    pub recreate: bool,
}

impl ReloadPlan {
    pub fn is_empty(&self) -> bool {
        *self == ReloadPlan::default()
    }

    /// True when the overlay interfaces change (the datapath pauses to take them over).
    pub fn changes_overlays(&self) -> bool {
        !(self.overlays_added.is_empty() && self.overlays_removed.is_empty() && self.overlays_changed.is_empty())
    }
}

impl fmt::Display for ReloadPlan {
    /// One line per kind of change, or "no changes".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "no changes");
        }
        let names = |items: &[String]| list(items.iter());
        let reasons =
            |items: &[(String, String)]| list(items.iter().map(|(name, reason)| format!("{name} ({reason})")));
        let rekeyed: Vec<(String, String)> =
            self.peers_rekeyed.iter().map(|c| (c.name.clone(), c.reason.clone())).collect();
        let changed: Vec<(String, String)> =
            self.overlays_changed.iter().map(|c| (c.name.clone(), c.reason.clone())).collect();
        let lines = [
            ("peers added", names(&self.peers_added), self.peers_added.is_empty()),
            ("peers removed", names(&self.peers_removed), self.peers_removed.is_empty()),
            ("peers re-keyed", reasons(&rekeyed), rekeyed.is_empty()),
            ("overlays added", names(&self.overlays_added), self.overlays_added.is_empty()),
            ("overlays removed", names(&self.overlays_removed), self.overlays_removed.is_empty()),
            ("overlays changed", reasons(&changed), changed.is_empty()),
            ("settings changed", names(&self.settings_changed), self.settings_changed.is_empty()),
        ];
        for (what, text, empty) in lines {
            if !empty {
                writeln!(f, "{what}: {text}")?;
            }
        }
        Ok(())
    }
}

/// Why a new mesh file cannot be applied to a running node; the old one keeps running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadRefused {
    #[error(
        "{path}: this node ({node}) is not in the new mesh file; add it back, or stop meshd on this host instead of reloading"
    )]
    NodeMissing { path: String, node: String },
    #[error(
        "{path}: node {node} changes its address from {old} to {new}; a running meshd keeps its underlay address: restart meshd to move it"
    )]
    AddressChanged { path: String, node: String, old: String, new: String },
    #[error("{path}: [mesh] {key} changes from {old} to {new}; the underlay sockets cannot change live: restart meshd to apply it")]
    UnderlayChanged { path: String, key: &'static str, old: String, new: String },
    #[error("{path}: [metrics] listen changes from {old} to {new}; the endpoint is bound at start: restart meshd to move it")]
    MetricsChanged { path: String, old: String, new: String },
    #[error("{path}: [flows] changes; the flow export is set up at start: restart meshd to apply it")]
    FlowsChanged { path: String },
}

/// The changes that turn `old` into `new` on node `node`; refused when `new` cannot be applied
/// to a running node.
pub fn plan(old: &MeshConfig, new: &MeshConfig, node: &str) -> Result<ReloadPlan, ReloadRefused> {
    let path = new.path.display().to_string();
    let (Some(me_old), Some(me_new)) = (old.node(node), new.node(node)) else {
        return Err(ReloadRefused::NodeMissing { path, node: node.to_string() });
    };
    if me_old.address != me_new.address {
        let (old, new) = (me_old.address.to_string(), me_new.address.to_string());
        return Err(ReloadRefused::AddressChanged { path, node: node.to_string(), old, new });
    }
    if old.mesh.encap != new.mesh.encap {
        let (old, new) = (old.mesh.encap.to_string(), new.mesh.encap.to_string());
        return Err(ReloadRefused::UnderlayChanged { path, key: "encap", old, new });
    }
    if old.mesh.vxlan_port != new.mesh.vxlan_port {
        let (old, new) = (old.mesh.vxlan_port.to_string(), new.mesh.vxlan_port.to_string());
        return Err(ReloadRefused::UnderlayChanged { path, key: "vxlan_port", old, new });
    }
    if old.metrics.listen != new.metrics.listen {
        let shown = |listen: Option<std::net::SocketAddr>| listen.map_or("none".to_string(), |a| a.to_string());
        let (old, new) = (shown(old.metrics.listen), shown(new.metrics.listen));
        return Err(ReloadRefused::MetricsChanged { path, old, new });
    }
    if old.flows != new.flows {
        return Err(ReloadRefused::FlowsChanged { path });
    }

    let mut plan = ReloadPlan::default();
    for peer in new.peers_of(node) {
        match old.node(&peer.name) {
            Some(before) if before.address == peer.address => {
                if let Some(reason) = rekey_reason(old, new, node, &peer.name) {
                    plan.peers_rekeyed.push(Change { name: peer.name.clone(), reason });
                }
            }
            Some(_) => {
                plan.peers_removed.push(peer.name.clone());
                plan.peers_added.push(peer.name.clone());
            }
            None => plan.peers_added.push(peer.name.clone()),
        }
    }
    plan.peers_removed.extend(old.peers_of(node).filter(|p| new.node(&p.name).is_none()).map(|p| p.name.clone()));

    // An automatic MTU follows the most expensive pair's mode.
    let modes = |config: &MeshConfig| {
        let mut modes: Vec<Mode> = config.peers_of(node).map(|p| config.mode_between(node, &p.name)).collect();
        modes.sort_by_key(|mode| *mode == Mode::Tunnel);
        modes.dedup();
        modes
    };
    let modes_changed = modes(old) != modes(new);
    for overlay in &new.overlays {
        match old.overlay(&overlay.name) {
            Some(before) => {
                if let Some(change) = overlay_change(before, overlay, node, modes_changed) {
                    plan.overlays_changed.push(change);
                }
            }
            None => plan.overlays_added.push(overlay.name.clone()),
        }
    }
    plan.overlays_removed
        .extend(old.overlays.iter().filter(|o| new.overlay(&o.name).is_none()).map(|o| o.name.clone()));

    let ike = [
        ("ike_lifetime", old.ike.ike_lifetime, new.ike.ike_lifetime),
        ("child_lifetime", old.ike.child_lifetime, new.ike.child_lifetime),
        ("dpd", old.ike.dpd, new.ike.dpd),
    ];
    for (key, before, after) in ike {
        if before != after {
            plan.settings_changed.push(format!(
                "ike.{key} {} -> {}",
                crate::format_duration(before),
                crate::format_duration(after)
            ));
        }
    }
    if old.mesh.name != new.mesh.name {
        plan.settings_changed.push(format!("mesh.name {} -> {}", old.mesh.name, new.mesh.name));
    }
    Ok(plan)
}

/// Why the SAs between `me` and `peer` must be made anew, if they must.
fn rekey_reason(old: &MeshConfig, new: &MeshConfig, me: &str, peer: &str) -> Option<String> {
    // What keys an SA, not where it is written.
    let keys = |sa: &ManualSa| (sa.spi, sa.cipher, sa.key.clone());
    let manual = |config: &MeshConfig| (config.manual_sa(me, peer).map(keys), config.manual_sa(peer, me).map(keys));
    let keyed_by_ike = |config: &MeshConfig| manual(config) == (None, None);
    let (mode_before, mode_after) = (old.mode_between(me, peer), new.mode_between(me, peer));
    if mode_before != mode_after {
        return Some(format!("mode {mode_before} -> {mode_after}"));
    }
    match (keyed_by_ike(old), keyed_by_ike(new)) {
        (true, false) => Some("now keyed by manual SAs".to_string()),
        (false, true) => Some("now keyed by IKE".to_string()),
        (false, false) => (manual(old) != manual(new)).then(|| "manual SAs changed".to_string()),
        // Adding or removing the psk_file (a move to keys) leaves the running SAs alone.
        (true, true) if old.psk.is_some() && new.psk.is_some() && old.psk != new.psk => {
            Some("pre-shared key changed".to_string())
        }
        (true, true) if old.ike.proposals != new.ike.proposals => Some("IKE proposals changed".to_string()),
        (true, true) => None,
    }
}

fn overlay_change(before: &Overlay, after: &Overlay, me: &str, modes_changed: bool) -> Option<OverlayChange> {
    let mut reasons = Vec::new();
    if before.interface != after.interface {
        reasons.push(format!("interface {} -> {}", before.interface, after.interface));
    }
    if before.mtu != after.mtu {
        reasons.push(format!("mtu {} -> {}", before.mtu, after.mtu));
    } else if modes_changed && after.mtu == crate::OverlayMtu::Auto {
        reasons.push("peer modes changed, so the automatic MTU may".to_string());
    }
    let address = |overlay: &Overlay| overlay.addresses.get(me).map_or_else(|| "none".to_string(), |a| a.to_string());
    if address(before) != address(after) {
        reasons.push(format!("address {} -> {}", address(before), address(after)));
    }
    let recreate = !reasons.is_empty();
    if before.static_macs != after.static_macs {
        reasons.push("static MACs changed".to_string());
    }
    if before.vni != after.vni {
        reasons.push(format!("vni {} -> {}", before.vni, after.vni));
    }
    (!reasons.is_empty()).then(|| OverlayChange { name: after.name.clone(), reason: reasons.join(", "), recreate })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const PSK: &str = "psk";

    fn config(text: &str) -> MeshConfig {
        let dir = tempfile::tempdir().unwrap();
        for (name, key) in [("psk", "0123456789abcdef0123456789abcdef"), ("psk2", "fedcba9876543210fedcba9876543210")] {
            let path = dir.path().join(name);
            std::fs::write(&path, key).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        }
        let path = dir.path().join("mesh.toml");
        MeshConfig::parse(&path, text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn mesh(nodes: &[(&str, &str)], rest: &str) -> MeshConfig {
        mesh_with_psk(PSK, nodes, rest)
    }

    fn mesh_with_psk(psk: &str, nodes: &[(&str, &str)], rest: &str) -> MeshConfig {
        let mut text = format!("[mesh]\nname = \"lab\"\npsk_file = \"{psk}\"\n");
        for (name, address) in nodes {
            text.push_str(&format!("[[node]]\nname = \"{name}\"\naddress = \"{address}\"\n"));
        }
        text.push_str(rest);
        config(&text)
    }

    const THREE: [(&str, &str); 3] = [("n1", "198.18.0.1"), ("n2", "198.18.0.2"), ("n3", "198.18.0.3")];
    const OVERLAY: &str = "[[overlay]]\nname = \"ovl0\"\nvni = 4242\n[overlay.address]\nn1 = \"10.244.0.1/24\"\n";

    fn names(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn same_file_changes_nothing() {
        let a = mesh(&THREE, OVERLAY);
        let plan = plan(&a, &a.clone(), "n1").unwrap();
        assert!(plan.is_empty());
        assert_eq!(plan.to_string(), "no changes\n");
    }

    #[test]
    fn nodes_added_and_removed() {
        let old = mesh(&THREE, OVERLAY);
        let new = mesh(&[THREE[0], THREE[2], ("n4", "198.18.0.4")], OVERLAY);
        let plan = plan(&old, &new, "n1").unwrap();
        assert_eq!(plan.peers_added, names(&["n4"]));
        assert_eq!(plan.peers_removed, names(&["n2"]));
        assert!(plan.peers_rekeyed.is_empty() && !plan.changes_overlays());
        assert_eq!(plan.to_string(), "peers added: n4\npeers removed: n2\n");
    }

    #[test]
    fn a_moved_peer_is_removed_and_added() {
        let old = mesh(&THREE, "");
        let new = mesh(&[THREE[0], ("n2", "198.18.0.22"), THREE[2]], "");
        let plan = plan(&old, &new, "n1").unwrap();
        assert_eq!((plan.peers_added, plan.peers_removed), (names(&["n2"]), names(&["n2"])));
    }

    #[test]
    fn moving_from_psk_to_keys_rekeys_nothing() {
        let keys = ["AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="];
        let keyed: Vec<String> = (0..2).map(|i| format!("{}\"\npublic_key = \"{}", THREE[i].1, keys[i])).collect();
        let nodes = [("n1", keyed[0].as_str()), ("n2", keyed[1].as_str())];
        let old = mesh(&THREE[..2], "");
        let both = mesh(&nodes, "");
        let without_psk = config(&format!(
            "[mesh]\nname = \"lab\"\n[[node]]\nname = \"n1\"\naddress = \"{}\"\n[[node]]\nname = \"n2\"\naddress = \"{}\"\n",
            keyed[0], keyed[1]
        ));
        assert!(plan(&old, &both, "n1").unwrap().is_empty());
        assert!(plan(&both, &without_psk, "n1").unwrap().is_empty());
    }

    #[test]
    fn keying_changes_rekey() {
        let old = mesh(&THREE, "");
        let other_psk = mesh_with_psk("psk2", &THREE, "");
        let changed = plan(&old, &other_psk, "n1").unwrap();
        let rekeyed: Vec<&str> = changed.peers_rekeyed.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(rekeyed, ["n2", "n3"]);
        assert_eq!(changed.peers_rekeyed[0].reason, "pre-shared key changed");

        let proposals = mesh(&THREE, "[ike]\nproposals = [\"chacha20poly1305-prfsha256-x25519\"]\n");
        assert_eq!(plan(&old, &proposals, "n1").unwrap().peers_rekeyed[1].reason, "IKE proposals changed");

        let tunnel = mesh(&[THREE[0], THREE[1], ("n3", "198.18.0.3\"\nmode = \"tunnel")], "");
        let plan_tunnel = plan(&old, &tunnel, "n1").unwrap();
        assert_eq!(
            plan_tunnel.peers_rekeyed,
            vec![Change { name: "n3".into(), reason: "mode transport -> tunnel".into() }]
        );
    }

    #[test]
    fn manual_sas_rekey_only_their_pair() {
        let sa = |from: &str, to: &str, spi: &str, key: char| {
            format!(
                "[[manual_sa]]\nfrom = \"{from}\"\nto = \"{to}\"\nspi = \"{spi}\"\ncipher = \"aes256gcm16\"\nkey = \"{}\"\n",
                key.to_string().repeat(72)
            )
        };
        let old = mesh(&THREE, &(sa("n1", "n2", "0x1102", 'a') + &sa("n2", "n1", "0x1201", 'b')));
        let new = mesh(&THREE, &(sa("n1", "n2", "0x1102", 'a') + &sa("n2", "n1", "0x1201", 'c')));
        let changed = plan(&old, &new, "n1").unwrap();
        assert_eq!(changed.peers_rekeyed, vec![Change { name: "n2".into(), reason: "manual SAs changed".into() }]);
        // n3 sees neither SA: nothing changes there.
        assert!(plan(&old, &new, "n3").unwrap().is_empty());
        // The same SAs further down the file are the same SAs.
        let moved =
            mesh(&THREE, &format!("{OVERLAY}{}{}", sa("n1", "n2", "0x1102", 'a'), sa("n2", "n1", "0x1201", 'b')));
        assert!(plan(&old, &moved, "n1").unwrap().peers_rekeyed.is_empty());
        let to_ike = plan(&old, &mesh(&THREE, ""), "n2").unwrap();
        assert_eq!(to_ike.peers_rekeyed, vec![Change { name: "n1".into(), reason: "now keyed by IKE".into() }]);
    }

    #[test]
    fn overlay_changes() {
        let old = mesh(&THREE, OVERLAY);
        let second = "[[overlay]]\nname = \"ovl1\"\nvni = 4343\n";
        let added = plan(&old, &mesh(&THREE, &format!("{OVERLAY}{second}")), "n1").unwrap();
        assert_eq!(added.overlays_added, names(&["ovl1"]));
        assert!(added.changes_overlays());

        let removed = plan(&old, &mesh(&THREE, ""), "n1").unwrap();
        assert_eq!(removed.overlays_removed, names(&["ovl0"]));

        let vni = plan(&old, &mesh(&THREE, &OVERLAY.replace("4242", "4243")), "n1").unwrap();
        assert_eq!(
            vni.overlays_changed,
            vec![OverlayChange { name: "ovl0".into(), reason: "vni 4242 -> 4243".into(), recreate: false }]
        );
        let mtu_and_address = OVERLAY.replace("vni = 4242", "vni = 4242\nmtu = 1300").replace(".0.1/24", ".0.9/24");
        let changed = plan(&old, &mesh(&THREE, &mtu_and_address), "n1").unwrap();
        assert_eq!(changed.overlays_changed[0].reason, "mtu auto -> 1300, address 10.244.0.1/24 -> 10.244.0.9/24");
        assert!(changed.overlays_changed[0].recreate);
        // n2 has no address on ovl0 either way; the MTU still changes.
        assert_eq!(
            plan(&old, &mesh(&THREE, &mtu_and_address), "n2").unwrap().overlays_changed[0].reason,
            "mtu auto -> 1300"
        );
    }

    #[test]
    fn settings_apply_without_rekey() {
        let old = mesh(&THREE, "");
        let new = mesh(&THREE, "[ike]\nchild_lifetime = \"30m\"\n");
        let plan = plan(&old, &new, "n1").unwrap();
        assert_eq!(plan.settings_changed, names(&["ike.child_lifetime 1h -> 30m"]));
        assert!(plan.peers_rekeyed.is_empty());
    }

    #[test]
    fn refusals_name_the_file_and_what_to_do() {
        let old = mesh(&THREE, "");
        let without_me = mesh(&THREE[1..], "");
        let refused = plan(&old, &without_me, "n1").unwrap_err();
        assert!(matches!(refused, ReloadRefused::NodeMissing { .. }));
        assert!(refused.to_string().contains("this node (n1) is not in the new mesh file"), "{refused}");
        assert!(Path::new(&without_me.path).ends_with("mesh.toml"));

        let moved = mesh(&[("n1", "198.18.0.11"), THREE[1], THREE[2]], "");
        assert!(plan(&old, &moved, "n1").unwrap_err().to_string().contains("restart meshd"));

        let esp = config(&format!(
            "[mesh]\nname = \"lab\"\npsk_file = \"psk\"\nencap = \"esp\"\n{}",
            THREE.iter().map(|(n, a)| format!("[[node]]\nname = \"{n}\"\naddress = \"{a}\"\n")).collect::<String>()
        ));
        let refused = plan(&old, &esp, "n1").unwrap_err();
        assert_eq!(
            refused,
            ReloadRefused::UnderlayChanged {
                path: esp.path.display().to_string(),
                key: "encap",
                old: "udp".into(),
                new: "esp".into()
            }
        );

        let metrics = config(&format!(
            "[mesh]\nname = \"lab\"\npsk_file = \"psk\"\n[metrics]\nlisten = \"127.0.0.1:9477\"\n{}",
            THREE.iter().map(|(n, a)| format!("[[node]]\nname = \"{n}\"\naddress = \"{a}\"\n")).collect::<String>()
        ));
        let refused = plan(&old, &metrics, "n1").unwrap_err();
        assert_eq!(
            refused,
            ReloadRefused::MetricsChanged {
                path: metrics.path.display().to_string(),
                old: "none".into(),
                new: "127.0.0.1:9477".into()
            }
        );
        assert!(refused.to_string().contains("restart meshd"), "{refused}");

        let flows = config(&format!(
            "[mesh]\nname = \"lab\"\npsk_file = \"psk\"\n[flows]\nipfix = \"127.0.0.1:4739\"\n{}",
            THREE.iter().map(|(n, a)| format!("[[node]]\nname = \"{n}\"\naddress = \"{a}\"\n")).collect::<String>()
        ));
        let refused = plan(&old, &flows, "n1").unwrap_err();
        assert_eq!(refused, ReloadRefused::FlowsChanged { path: flows.path.display().to_string() });
    }
}
