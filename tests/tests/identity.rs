//! Per-node identities (docs/ike.md, "Authentication"): nodes with Ed25519 keys sign their
//! IKE_AUTH and need no psk_file; a node with another node's key is refused with a clear reason;
//! a mesh moves from the PSK to keys, and a node to a new key, under traffic without loss; a node
//! removed by a reload loses its SAs within seconds and can no longer authenticate.
//!
//! Run: `cargo build --workspace && sudo -E cargo test -p meshd-lab --test identity`.

use std::process::{Child, Stdio};
use std::time::Duration;

use meshd_lab::util::{describe_output, wait_until};
use meshd_lab::{meshd_bin, require_root, start_all_with_keys, Lab, MeshFile, Meshd};
use serde_json::Value;

/// Generous for a loaded 2-core machine.
const CONVERGE: Duration = Duration::from_secs(40);

/// The established IKE SA with `peer`, from `ikectl --json sa list`.
fn ike_sa_with(d: &Meshd, peer: &str) -> Option<Value> {
    let list = d.ikectl_json(&["sa", "list"]);
    list["ike_sas"].as_array()?.iter().find(|sa| sa["peer"] == peer && sa["state"] == "established").cloned()
}

/// Waits until each daemon has an established IKE SA and traffic both ways with each of `peers`
/// (by name) and returns nothing; panics with the logs otherwise.
fn wait_keyed(daemons: &[&Meshd]) {
    let names: Vec<&str> = daemons.iter().map(|d| d.node()).collect();
    let keyed = wait_until(CONVERGE, || {
        daemons
            .iter()
            .all(|d| {
                let peers = d.ikectl_json(&["peers"]);
                names.iter().filter(|n| **n != d.node()).all(|name| {
                    peers
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|p| p["name"] == *name && p["keying"] == "ike: established")
                })
            })
            .then_some(())
    });
    if keyed.is_none() {
        let state: Vec<String> = daemons
            .iter()
            .map(|d| format!("{}: {}\n--- log ---\n{}", d.node(), d.ikectl_json(&["peers"]), d.log()))
            .collect();
        panic!("the mesh was not keyed within {CONVERGE:?}:\n{}", state.join("\n"));
    }
}

fn ping_ok(lab: &Lab, from: usize, to: usize) {
    let address = lab.overlay_addr(to).to_string();
    let reached =
        wait_until(Duration::from_secs(10), || lab.node(from).ping(&address, 1).status.success().then_some(()));
    assert!(
        reached.is_some(),
        "n{} cannot ping {address}: {}",
        from + 1,
        describe_output(&lab.node(from).ping(&address, 1))
    );
}

fn reload(d: &Meshd) {
    let out = d.ikectl(&["reload"]);
    assert!(out.status.success(), "ikectl reload on {}: {}\n{}", d.node(), describe_output(&out), d.log());
}

/// A ping every 20 ms from lab node `from` to node `to` while the caller acts.
struct BackgroundPing(Child);

impl BackgroundPing {
    fn start(lab: &Lab, from: usize, to: usize, count: u32) -> Self {
        let address = lab.overlay_addr(to).to_string();
        let args = ["ping", "-n", "-q", "-c", &count.to_string(), "-i", "0.02", &address];
        BackgroundPing(lab.node(from).command(args).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().expect("ping"))
    }

    fn assert_lossless(self, what: &str, daemons: &[&Meshd]) {
        let out = self.0.wait_with_output().expect("wait for ping");
        let text = String::from_utf8_lossy(&out.stdout);
        let logs: Vec<String> = daemons.iter().map(|d| format!("--- {} ---\n{}", d.node(), d.log())).collect();
        assert!(
            out.status.success() && text.contains(" 0% packet loss"),
            "{what}: packets lost:\n{text}\n{}",
            logs.join("\n")
        );
    }
}

/// How `d` sees `peer` authenticated: ("ed25519", fingerprint) or ("psk", "").
fn peer_auth(d: &Meshd, peer: &str) -> (String, String) {
    let sa = ike_sa_with(d, peer).unwrap_or_else(|| panic!("{} has no IKE SA with {peer}", d.node()));
    (sa["peer_auth"].as_str().unwrap_or_default().to_string(), sa["peer_key"].as_str().unwrap_or_default().to_string())
}

fn fingerprint(public_key: &str) -> String {
    public_key[..12].to_string()
}

fn meshd_check(lab: &Lab, node: usize, mesh: &MeshFile, key: &std::path::Path) -> std::process::Output {
    let mut command = lab.node(node).command([meshd_bin().as_os_str()]);
    command.arg("check").arg("--config").arg(mesh.path()).arg("--node").arg(lab.node_name(node)).arg("--key").arg(key);
    command.output().expect("meshd check")
}

#[test]
fn nodes_with_keys_sign_every_ike_auth_without_a_psk_file() {
    require_root();
    let lab = Lab::new("idk", 3);
    let mesh = MeshFile::builder(&lab).keys().write();
    assert!(!mesh.text().contains("psk_file"), "{}", mesh.text());
    let daemons = start_all_with_keys(&lab, &mesh);
    let all: Vec<&Meshd> = daemons.iter().collect();
    wait_keyed(&all);
    for (i, d) in daemons.iter().enumerate() {
        for j in (0..3).filter(|j| *j != i) {
            ping_ok(&lab, i, j);
            let (method, key) = peer_auth(d, &lab.node_name(j));
            assert_eq!(
                (method.as_str(), key),
                ("ed25519", fingerprint(&mesh.public_keys(j)[0])),
                "{} sees n{}",
                d.node(),
                j + 1
            );
        }
        let status = d.ikectl_json(&["status"]);
        assert_eq!(status["public_key"].as_str(), Some(fingerprint(&mesh.public_keys(i)[0]).as_str()), "{status:#}");
        let text = String::from_utf8_lossy(&d.ikectl(&["status"]).stdout).to_string();
        assert!(
            text.contains(&format!("identity: Ed25519 public key {}", fingerprint(&mesh.public_keys(i)[0]))),
            "{text}"
        );
        let sa_list = String::from_utf8_lossy(&d.ikectl(&["sa", "list"]).stdout).to_string();
        assert!(sa_list.contains("peer auth") && sa_list.contains("ed25519 "), "{sa_list}");
    }
    // `ikectl ping` asks the peer over UDP 4795 with a key from the pair's IKE SA (no PSK here).
    let ping = daemons[0].ikectl(&["ping", "n2", "--count", "2"]);
    let text = String::from_utf8_lossy(&ping.stdout).to_string();
    assert!(
        ping.status.success() && text.contains("peer (n2)") && text.contains("verdict: healthy"),
        "{}",
        describe_output(&ping)
    );
    // meshd check: the node's own key passes; another node's key, or a key others may read, does not.
    let own = meshd_check(&lab, 1, &mesh, &mesh.key_file(1));
    assert!(
        own.status.success() && String::from_utf8_lossy(&own.stdout).contains("signs with the Ed25519 key"),
        "{}",
        describe_output(&own)
    );
    let stolen = meshd_check(&lab, 1, &mesh, &mesh.key_file(2));
    let text = String::from_utf8_lossy(&stolen.stderr).to_string();
    assert!(
        !stolen.status.success()
            && text.contains("belongs to node \"n3\"")
            && text.contains("not to \"n2\"")
            && text.contains("mesh.toml:"),
        "{text}"
    );
    let open = mesh.dir().join("open.key");
    std::fs::copy(mesh.key_file(1), &open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let readable = meshd_check(&lab, 1, &mesh, &open);
    let text = String::from_utf8_lossy(&readable.stderr).to_string();
    assert!(!readable.status.success() && text.contains("mode 0644") && text.contains("chmod 600"), "{text}");
}

#[test]
fn a_node_holding_another_nodes_key_is_refused() {
    require_root();
    let lab = Lab::new("idimp", 3);
    let mesh = MeshFile::builder(&lab).keys().write();
    let n1 = Meshd::start_with(lab.node(0), mesh.path(), "n1", &["--key", mesh.key_file(0).to_str().unwrap()]);
    let n3 = Meshd::start_with(lab.node(2), mesh.path(), "n3", &["--key", mesh.key_file(2).to_str().unwrap()]);
    // n2's host, with n3's private key.
    let n2 = Meshd::start_with(lab.node(1), mesh.path(), "n2", &["--key", mesh.key_file(2).to_str().unwrap()]);
    assert!(n2.log().contains("belongs to node \"n3\""), "n2 says its key is not its own:\n{}", n2.log());
    wait_keyed(&[&n1, &n3]);
    let refused = wait_until(CONVERGE, || {
        let peers = n1.ikectl_json(&["peers"]);
        let n2_state = peers.as_array()?.iter().find(|p| p["name"] == "n2")?["keying"].as_str()?.to_string();
        n2_state.contains("does not verify with its public key").then_some(n2_state)
    });
    let state =
        refused.unwrap_or_else(|| panic!("n1 does not refuse n2: {}\n{}", n1.ikectl_json(&["peers"]), n1.log()));
    assert!(state.contains("AUTHENTICATION_FAILED") && state.contains("198.18.0.2"), "{state}");
    assert!(n1.log().contains("does not verify with its public key"), "{}", n1.log());
    // n2 learns that n1 refused it (n1 initiates to n2: it tells the responder).
    let told = wait_until(CONVERGE, || {
        let peers = n2.ikectl_json(&["peers"]);
        let state = peers.as_array()?.iter().find(|p| p["name"] == "n1")?["keying"].as_str()?.to_string();
        state.contains("AUTHENTICATION_FAILED").then_some(())
    });
    assert!(told.is_some(), "n2 shows the refusal: {}\n{}", n2.ikectl_json(&["peers"]), n2.log());
    assert!(
        ike_sa_with(&n1, "n2").is_none() && !lab.node(0).ping(&lab.overlay_addr(1).to_string(), 1).status.success()
    );
    ping_ok(&lab, 0, 2);
}

#[test]
fn a_mesh_moves_from_the_psk_to_keys_under_traffic_without_loss() {
    require_root();
    let lab = Lab::new("idmig", 2);
    let mesh = MeshFile::builder(&lab).ike().write();
    let daemons = start_all_with_keys(&lab, &mesh);
    let all: Vec<&Meshd> = daemons.iter().collect();
    wait_keyed(&all);
    assert_eq!(peer_auth(&daemons[0], "n2").0, "psk");
    assert_eq!(daemons[0].ikectl_json(&["status"])["public_key"], Value::Null, "no key in the file yet");
    let ping = BackgroundPing::start(&lab, 0, 1, 600);
    std::thread::sleep(Duration::from_secs(1));
    // Step 1: every node's public key, and still the psk_file; one node after the other.
    mesh.rewrite_auth(true, true);
    for d in &daemons {
        reload(d);
        std::thread::sleep(Duration::from_secs(1));
    }
    // Step 2: no psk_file.
    mesh.rewrite_auth(false, true);
    for d in &daemons {
        reload(d);
        std::thread::sleep(Duration::from_secs(1));
    }
    ping.assert_lossless("PSK -> keys", &all);
    // The next IKE_AUTH (here: a flush) signs, and the PSK is gone.
    let flushed = daemons[0].ikectl(&["sa", "flush", "--peer", "n2"]);
    assert!(flushed.status.success(), "{}", describe_output(&flushed));
    let signed = wait_until(CONVERGE, || {
        let sa = ike_sa_with(&daemons[1], "n1")?;
        (sa["peer_auth"] == "ed25519").then_some(sa)
    });
    assert!(signed.is_some(), "n2 sees n1 sign after the move: {}", daemons[1].ikectl_json(&["sa", "list"]));
    assert_eq!(peer_auth(&daemons[0], "n2"), ("ed25519".to_string(), fingerprint(&mesh.public_keys(1)[0])));
    ping_ok(&lab, 0, 1);
}

#[test]
fn a_key_rotation_under_traffic_loses_nothing() {
    require_root();
    let lab = Lab::new("idrot", 2);
    let mesh = MeshFile::builder(&lab).keys().write();
    let daemons = start_all_with_keys(&lab, &mesh);
    let all: Vec<&Meshd> = daemons.iter().collect();
    wait_keyed(&all);
    let old = mesh.public_keys(1)[0].clone();
    let ping = BackgroundPing::start(&lab, 0, 1, 600);
    std::thread::sleep(Duration::from_secs(1));
    // docs/operate.md, "Key rotation": a new key for n2, listed with the old one everywhere...
    let new_key = mesh.add_new_key(1);
    assert_eq!(mesh.public_keys(1).len(), 2);
    for d in &daemons {
        reload(d);
    }
    // ...then n2 moves to it, and the old key goes.
    std::fs::rename(&new_key, mesh.key_file(1)).unwrap();
    reload(&daemons[1]);
    mesh.drop_old_keys(1);
    for d in &daemons {
        reload(d);
    }
    ping.assert_lossless("key rotation", &all);
    let new = mesh.public_keys(1)[0].clone();
    assert_ne!(new, old);
    assert_eq!(daemons[1].ikectl_json(&["status"])["public_key"].as_str(), Some(fingerprint(&new).as_str()));
    let flushed = daemons[1].ikectl(&["sa", "flush", "--peer", "n1"]);
    assert!(flushed.status.success(), "{}", describe_output(&flushed));
    let rotated = wait_until(CONVERGE, || {
        let sa = ike_sa_with(&daemons[0], "n2")?;
        (sa["peer_key"].as_str() == Some(fingerprint(&new).as_str())).then_some(())
    });
    assert!(rotated.is_some(), "n1 sees n2's new key: {}", daemons[0].ikectl_json(&["sa", "list"]));
    ping_ok(&lab, 0, 1);
}

#[test]
fn a_node_removed_by_reload_is_torn_down_and_refused() {
    require_root();
    let lab = Lab::new("idrm", 3);
    let mesh = MeshFile::builder(&lab).keys().write();
    let daemons = start_all_with_keys(&lab, &mesh);
    let all: Vec<&Meshd> = daemons.iter().collect();
    wait_keyed(&all);
    mesh.rewrite_with(&[0, 1], "");
    reload(&daemons[0]);
    reload(&daemons[1]);
    // Within seconds, on both remaining nodes and on n3 (told by DELETE).
    let gone = wait_until(Duration::from_secs(5), || {
        let kept = daemons[..2].iter().any(|d| ike_sa_with(d, "n3").is_some());
        let n3_kept = ["n1", "n2"].iter().any(|p| ike_sa_with(&daemons[2], p).is_some());
        (!kept && !n3_kept).then_some(())
    });
    assert!(
        gone.is_some(),
        "n3's SAs are still up: {} {}",
        daemons[0].ikectl_json(&["sa", "list"]),
        daemons[2].ikectl_json(&["sa", "list"])
    );
    // n3 still runs the old file and tries again: its key no longer authenticates.
    let refused = wait_until(CONVERGE, || daemons[0].log().contains("is not a node of this mesh").then_some(()));
    assert!(refused.is_some(), "n1 refuses n3:\n{}", daemons[0].log());
    assert!(!lab.node(2).ping(&lab.overlay_addr(0).to_string(), 1).status.success());
    ping_ok(&lab, 0, 1);
}
