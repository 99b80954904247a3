//! The fail-closed guard: an nftables table of meshd's own (`inet meshd_guard`) that drops
//! traffic to the overlays' prefixes leaving through any interface but the overlay interfaces,
//! and plaintext VXLAN leaving through any interface. While meshd runs, such traffic goes out of
//! its TAPs and is encrypted; once meshd stops or crashes the TAPs are gone and a default route
//! would carry it in the clear. meshd never removes the table itself: only `meshd guard remove`
//! (or the operator with nft) does.
//!
//! Why the `nft` command and not netlink: nf_tables over netlink means building expression
//! bytecode by hand (no such crate among this project's dependencies), while `nft -f` applies a
//! readable ruleset as one transaction (the old table and the new one swap atomically) and
//! `nft -j` lists the counters as JSON. Debian's nftables package provides it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use mesh_config::{IfaceAddress, MeshConfig};

/// The family and name of meshd's table.
pub const TABLE: &str = "inet meshd_guard";
/// Rule comments, which `meshd guard status` counts by.
const OVERLAY_RULE: &str = "overlay_plaintext";
const VXLAN_RULE: &str = "vxlan_plaintext";

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("cannot run nft: {0}; install nftables (apt-get install nftables) and run as root")]
    NftMissing(std::io::Error),
    #[error("nft {action} failed: {stderr}; run as root (CAP_NET_ADMIN) with the nf_tables kernel module available")]
    Nft { action: &'static str, stderr: String },
    #[error("nft printed a listing meshd cannot read ({0}); check `nft -j list table {TABLE}` by hand")]
    Listing(String),
}

/// What the guard protects: the overlays' prefixes, which interfaces may carry them, and the
/// VXLAN port that must never leave in plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// The overlay interfaces, and any the operator adds (a bridge holding an overlay TAP).
    pub interfaces: Vec<String>,
    /// Networks of the overlays' addresses, e.g. 10.244.0.0/24.
    pub prefixes: Vec<IfaceAddress>,
    pub vxlan_port: u16,
}

impl Guard {
    /// The guard for every overlay of `config` (the same on every node), with `extra_interfaces`
    /// also allowed to carry overlay traffic.
    pub fn of(config: &MeshConfig, extra_interfaces: &[String]) -> Guard {
        let mut interfaces: Vec<String> = config.overlays.iter().map(|overlay| overlay.interface.clone()).collect();
        interfaces.extend(extra_interfaces.iter().cloned());
        interfaces.sort();
        interfaces.dedup();
        let mut prefixes: Vec<IfaceAddress> =
            config.overlays.iter().flat_map(|overlay| overlay.addresses.values()).map(network).collect();
        prefixes.sort();
        prefixes.dedup();
        Guard { interfaces, prefixes, vxlan_port: config.mesh.vxlan_port }
    }

    /// The `nft -f` script: replaces meshd's table (if any) with this guard in one transaction.
    pub fn ruleset(&self) -> String {
        let allowed = match self.interfaces.is_empty() {
            true => String::new(),
            false => format!(
                "oifname != {{ {} }} ",
                self.interfaces.iter().map(|name| format!("\"{name}\"")).collect::<Vec<_>>().join(", ")
            ),
        };
        let mut rules = String::new();
        for (family, version) in [("ip", 4), ("ip6", 6)] {
            let prefixes: Vec<String> = self
                .prefixes
                .iter()
                .filter(|prefix| matches!((prefix.addr, version), (IpAddr::V4(_), 4) | (IpAddr::V6(_), 6)))
                .map(|prefix| format!("{}/{}", prefix.addr, prefix.prefix_len))
                .collect();
            if !prefixes.is_empty() {
                let _ = writeln!(
                    rules,
                    "\t\t{allowed}{family} daddr {{ {} }} counter drop comment \"{OVERLAY_RULE}\"",
                    prefixes.join(", ")
                );
            }
        }
        let _ = writeln!(rules, "\t\t{allowed}udp dport {} counter drop comment \"{VXLAN_RULE}\"", self.vxlan_port);
        let chain = |hook: &str| {
            format!("\tchain {hook} {{\n\t\ttype filter hook {hook} priority filter; policy accept;\n{rules}\t}}\n")
        };
        format!("table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{\n{}{}}}\n", chain("output"), chain("forward"))
    }

    /// Installs (or replaces) the table.
    pub fn install(&self) -> Result<(), GuardError> {
        nft(&["-f", "-"], Some(&self.ruleset()), "install").map(|_| ())
    }
}

/// The network of an interface address: 10.244.0.1/24 -> 10.244.0.0/24.
fn network(address: &IfaceAddress) -> IfaceAddress {
    let addr = match address.addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(address.prefix_len)).unwrap_or(0);
            IpAddr::from((u32::from(a) & mask).to_be_bytes())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(address.prefix_len)).unwrap_or(0);
            IpAddr::from((u128::from(a) & mask).to_be_bytes())
        }
    };
    IfaceAddress { addr, prefix_len: address.prefix_len }
}

/// Removes the table; `false` when there was none.
pub fn remove() -> Result<bool, GuardError> {
    if listing()?.is_none() {
        return Ok(false);
    }
    nft(&["delete", "table", "inet", "meshd_guard"], None, "delete table").map(|_| true)
}

/// What `meshd guard status` prints: installed or not, and the drops per rule.
pub fn status() -> Result<String, GuardError> {
    let Some(listing) = listing()? else {
        return Ok(format!(
            "no guard: table {TABLE} is not installed, so traffic to overlay addresses can leave in plaintext while meshd is not running; install it with `meshd guard install --config /etc/meshd/mesh.toml`"
        ));
    };
    let counts = counters(&listing)?;
    let mut text = format!("guard installed (table {TABLE}); dropped while no overlay interface could carry it:\n");
    for rule in [OVERLAY_RULE, VXLAN_RULE] {
        let (packets, bytes) = counts.get(rule).copied().unwrap_or_default();
        let _ = writeln!(text, "  {rule}: {packets} packets, {bytes} bytes");
    }
    Ok(text)
}

/// `nft -j list table`, or `None` when the table does not exist.
fn listing() -> Result<Option<String>, GuardError> {
    match nft(&["-j", "list", "table", "inet", "meshd_guard"], None, "list table") {
        Ok(json) => Ok(Some(json)),
        // nft says "No such file or directory" for a missing table.
        Err(GuardError::Nft { stderr, .. }) if stderr.contains("No such file or directory") => Ok(None),
        Err(error) => Err(error),
    }
}

/// Packets and bytes per rule comment, summed over the chains.
fn counters(listing: &str) -> Result<BTreeMap<String, (u64, u64)>, GuardError> {
    let value: serde_json::Value = serde_json::from_str(listing).map_err(|e| GuardError::Listing(e.to_string()))?;
    let items = value["nftables"].as_array().ok_or_else(|| GuardError::Listing("no \"nftables\" array".into()))?;
    let mut counts = BTreeMap::new();
    for rule in items.iter().filter_map(|item| item.get("rule")) {
        let Some(comment) = rule["comment"].as_str() else { continue };
        let expressions = rule["expr"].as_array().map(Vec::as_slice).unwrap_or_default();
        for counter in expressions.iter().filter_map(|expression| expression.get("counter")) {
            let entry: &mut (u64, u64) = counts.entry(comment.to_string()).or_default();
            entry.0 += counter["packets"].as_u64().unwrap_or(0);
            entry.1 += counter["bytes"].as_u64().unwrap_or(0);
        }
    }
    Ok(counts)
}

fn nft(args: &[&str], stdin: Option<&str>, action: &'static str) -> Result<String, GuardError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(GuardError::NftMissing)?;
    if let (Some(script), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(script.as_bytes()).map_err(GuardError::NftMissing)?;
    }
    let output = child.wait_with_output().map_err(GuardError::NftMissing)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(GuardError::Nft { action, stderr });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard {
            interfaces: vec!["ovl0".into(), "ovl-storage".into()],
            prefixes: vec![network(&"10.244.0.7/24".parse().unwrap()), network(&"fd00:244::9/64".parse().unwrap())],
            vxlan_port: 4790,
        }
    }

    #[test]
    fn the_ruleset_drops_overlay_prefixes_and_vxlan_off_the_overlay_interfaces() {
        let ruleset = guard().ruleset();
        assert!(ruleset.starts_with("table inet meshd_guard\ndelete table inet meshd_guard\n"), "{ruleset}");
        for hook in ["output", "forward"] {
            assert!(ruleset.contains(&format!("type filter hook {hook} priority filter; policy accept;")));
        }
        let allowed = "oifname != { \"ovl0\", \"ovl-storage\" }";
        assert_eq!(
            ruleset
                .matches(&format!("{allowed} ip daddr {{ 10.244.0.0/24 }} counter drop comment \"overlay_plaintext\""))
                .count(),
            2
        );
        assert!(ruleset.contains(&format!("{allowed} ip6 daddr {{ fd00:244::/64 }} counter drop")));
        assert!(ruleset.contains(&format!("{allowed} udp dport 4790 counter drop comment \"vxlan_plaintext\"")));
    }

    #[test]
    fn the_guard_covers_every_overlay_of_the_mesh_file() {
        let dir = tempfile_dir();
        let psk = dir.join("psk");
        std::fs::write(&psk, "0123456789abcdef0123456789abcdef0123").unwrap();
        std::fs::set_permissions(&psk, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let text = "[mesh]\nname = \"lab\"\npsk_file = \"psk\"\nvxlan_port = 4800\n\
            [[node]]\nname = \"n1\"\naddress = \"198.18.0.1\"\n[[node]]\nname = \"n2\"\naddress = \"198.18.0.2\"\n\
            [[overlay]]\nname = \"ovl0\"\nvni = 1\n[overlay.address]\nn1 = \"10.244.0.1/24\"\nn2 = \"10.244.0.2/24\"\n\
            [[overlay]]\nname = \"ovl1\"\nvni = 2\ninterface = \"tenant1\"\n";
        let config = MeshConfig::parse(&dir.join("mesh.toml"), text).unwrap();
        let guard = Guard::of(&config, &["br-ovl0".to_string()]);
        assert_eq!(guard.interfaces, vec!["br-ovl0", "ovl0", "tenant1"]);
        assert_eq!(guard.prefixes, vec!["10.244.0.0/24".parse().unwrap()]);
        assert_eq!(guard.vxlan_port, 4800);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("meshd-guard-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn status_counts_drops_per_rule_over_both_chains() {
        let listing = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "meshd_guard", "handle": 3}},
            {"rule": {"family": "inet", "table": "meshd_guard", "chain": "output", "handle": 4, "comment": "overlay_plaintext",
              "expr": [{"match": {}}, {"counter": {"packets": 5, "bytes": 420}}, {"drop": null}]}},
            {"rule": {"family": "inet", "table": "meshd_guard", "chain": "forward", "handle": 7, "comment": "overlay_plaintext",
              "expr": [{"counter": {"packets": 2, "bytes": 100}}, {"drop": null}]}},
            {"rule": {"family": "inet", "table": "meshd_guard", "chain": "output", "handle": 5, "comment": "vxlan_plaintext",
              "expr": [{"counter": {"packets": 1, "bytes": 50}}, {"drop": null}]}}]}"#;
        let counts = counters(listing).unwrap();
        assert_eq!(counts["overlay_plaintext"], (7, 520));
        assert_eq!(counts["vxlan_plaintext"], (1, 50));
        assert!(matches!(counters("not json"), Err(GuardError::Listing(_))));
    }
}
