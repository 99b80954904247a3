//! Diagnostics in the namespace lab: `ikectl drops --follow` streams drops as they happen, with
//! their reasons (datapath and IKE) and the overlay frame's inner addresses.
//!
//! Run: `cargo build --workspace && sudo -E cargo test -p meshd-lab --test diag`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use meshd_lab::meshd::ikectl_bin;
use meshd_lab::meshfile::OVERLAY_NAME;
use meshd_lab::{require_root, Lab, MeshFile, Meshd};
use serde_json::Value;

/// `ikectl --json drops --follow` against a daemon; its lines arrive on a channel. Killed when
/// dropped.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(daemon: &Meshd, extra: &[&str]) -> Follower {
        let mut child = Command::new(ikectl_bin())
            .arg("--socket")
            .arg(daemon.socket())
            .args(["--json", "drops", "--follow"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn ikectl drops --follow");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Follower { child, lines }
    }

    /// Reads lines until `wanted` returns true for one (parsed), or panics after `timeout` with
    /// everything read.
    fn wait_for(&self, timeout: Duration, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.lines.recv_timeout(left) else { break };
            let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if wanted(&value) {
                return value;
            }
            seen.push(line);
        }
        panic!("ikectl drops --follow showed no {what} within {timeout:?}; it printed:\n{}", seen.join("\n"));
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two IKE nodes whose pre-shared keys differ: `drops --follow` on n1, started before anything
/// happens, reports the IKE authentication failure with the peer, then the overlay frames n1
/// cannot send for want of an SA, with their inner IP addresses.
#[test]
fn drops_follow_streams_ike_and_datapath_drops_with_inner_addresses() {
    require_root();
    let lab = Lab::new("dgfo", 2);
    let mesh = MeshFile::builder(&lab).ike().write();
    let other_psk = mesh.variant_with_other_psk("other.toml");
    let n1 = Meshd::start(lab.node(0), mesh.path(), &lab.node_name(0));
    let follower = Follower::start(&n1, &[]);
    let report = follower.wait_for(Duration::from_secs(10), "report first", |v| v["kind"] == "drops");
    assert!(report["data"]["last_id"].is_u64(), "the report says where following starts: {report}");

    let _n2 = Meshd::start(lab.node(1), &other_psk, &lab.node_name(1));
    let auth = follower.wait_for(Duration::from_secs(60), "ike_auth_failed drop", |v| v["reason"] == "ike_auth_failed");
    assert_eq!(auth["peer"], "n2", "{auth}");
    assert!(auth["outer_source"].as_str().is_some_and(|s| s.starts_with(&lab.addr(1).to_string())), "{auth}");

    // A unicast IPv4 frame to n2's overlay address: no SA, so dropped with what it carried.
    let interface = n1.overlay_interface(OVERLAY_NAME);
    let n2_overlay = lab.overlay_addr(1).to_string();
    lab.node(0).run_ok(["ip", "neigh", "replace", &n2_overlay, "lladdr", "02:00:00:00:00:02", "dev", &interface]);
    lab.node(0).ping(&n2_overlay, 2);
    let dropped = follower.wait_for(Duration::from_secs(30), "no_outbound_sa drop of the ping", |v| {
        v["reason"] == "no_outbound_sa" && v["inner"]["destination_ip"] == n2_overlay.as_str()
    });
    assert_eq!(dropped["peer"], "n2", "{dropped}");
    assert_eq!(dropped["inner"]["source_ip"], lab.overlay_addr(0).to_string(), "{dropped}");
    assert_eq!(dropped["inner"]["destination_mac"], "02:00:00:00:00:02", "{dropped}");
    assert!(dropped["vni"].is_u64(), "{dropped}");
    assert!(dropped["id"].as_u64() > auth["id"].as_u64(), "ids grow: {auth} then {dropped}");
}
