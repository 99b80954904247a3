//! Live reload (`ikectl reload` and SIGHUP) of real meshd processes: a node added and removed
//! (IKE and manual SAs) while the SAs of the other pairs stay exactly as they were, an overlay
//! added and removed, a new PSK re-keying every pair, and a bad mesh file refused while the old
//! one keeps forwarding.
//!
//! Each test uses its own namespace prefix, so the tests of this file run in parallel.
//! Run: `cargo build --workspace && sudo -E cargo test -p meshd-lab --test reload`.

use std::collections::BTreeMap;
use std::fs;
use std::process::{Child, Stdio};
use std::time::Duration;

use meshd_lab::util::{describe_output, send_signal, wait_until};
use meshd_lab::{require_root, Lab, MeshFile, Meshd};

/// Generous for a loaded 2-core machine: IKE retries every few seconds.
const CONVERGE: Duration = Duration::from_secs(60);

/// Per peer name: the outbound SPI and the inbound SPIs, from `ikectl --json peers`.
type Spis = BTreeMap<String, (String, Vec<String>)>;

fn spis(daemon: &Meshd) -> Spis {
    let peers = daemon.ikectl_json(&["peers"]);
    let mut spis = Spis::new();
    for peer in peers.as_array().cloned().unwrap_or_default() {
        let name = peer["name"].as_str().unwrap_or_default().to_string();
        let outbound = peer["outbound_spi"].as_str().unwrap_or_default().to_string();
        let inbound = peer["inbound_spis"]
            .as_array()
            .map(|spis| spis.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        spis.insert(name, (outbound, inbound));
    }
    spis
}

/// Waits until every daemon has exactly the peers `names` minus itself, each with one outbound
/// and one inbound SA, and each pair's SAs match crosswise; returns every daemon's SPIs.
fn wait_keyed(daemons: &[&Meshd]) -> Vec<Spis> {
    let settled = wait_until(CONVERGE, || {
        let all: Vec<Spis> = daemons.iter().map(|d| spis(d)).collect();
        let complete = daemons.iter().zip(&all).all(|(daemon, spis)| {
            let expected: Vec<&str> = daemons.iter().map(|d| d.node()).filter(|n| *n != daemon.node()).collect();
            spis.keys().map(String::as_str).eq(expected.iter().copied())
                && spis.values().all(|(outbound, inbound)| !outbound.is_empty() && inbound.len() == 1)
        });
        let crosswise = || {
            daemons.iter().zip(&all).all(|(daemon, spis)| {
                spis.iter().all(|(peer, (outbound, _))| {
                    let other = daemons.iter().position(|d| d.node() == peer);
                    other.is_some_and(|i| {
                        all[i].get(daemon.node()).is_some_and(|(_, inbound)| inbound == std::slice::from_ref(outbound))
                    })
                })
            })
        };
        (complete && crosswise()).then_some(all)
    });
    settled.unwrap_or_else(|| {
        let state: Vec<String> =
            daemons.iter().map(|d| format!("{}: {:?}\n--- log ---\n{}", d.node(), spis(d), d.log())).collect();
        panic!("the mesh was not keyed within {CONVERGE:?}:\n{}", state.join("\n"))
    })
}

/// Pings every ordered pair of `nodes` (lab indexes) on overlay addresses `10.244.{subnet}.i+1`.
fn ping_all(lab: &Lab, nodes: &[usize], subnet: u8) {
    for &from in nodes {
        for &to in nodes.iter().filter(|to| **to != from) {
            let address = format!("10.244.{subnet}.{}", to + 1);
            let reached =
                wait_until(Duration::from_secs(20), || lab.node(from).ping(&address, 1).status.success().then_some(()));
            if reached.is_none() {
                let out = lab.node(from).ping(&address, 1);
                panic!("n{} cannot ping {address}:\n{}", from + 1, describe_output(&out));
            }
        }
    }
}

/// A ping of `count` packets every 50 ms from lab node `from` to `address`, running while the
/// caller reloads; `lossless` waits for it and checks that every reply came back.
struct BackgroundPing(Child);

impl BackgroundPing {
    fn start(lab: &Lab, from: usize, address: &str, count: u32) -> Self {
        let args = ["ping", "-n", "-q", "-c", &count.to_string(), "-i", "0.05", address];
        BackgroundPing(lab.node(from).command(args).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().expect("ping"))
    }

    fn assert_lossless(self, what: &str) {
        let out = self.0.wait_with_output().expect("wait for ping");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains(" 0% packet loss"), "{what}: packets lost:\n{text}");
    }
}

/// Starts meshd on the first `count` lab nodes with `mesh`.
fn start(lab: &Lab, mesh: &MeshFile, count: usize) -> Vec<Meshd> {
    (0..count).map(|i| Meshd::start(lab.node(i), mesh.path(), &lab.node_name(i))).collect()
}

fn reload(daemon: &Meshd) -> String {
    let out = daemon.ikectl(&["reload"]);
    assert!(
        out.status.success(),
        "ikectl reload on {} failed:\n{}\n{}",
        daemon.node(),
        describe_output(&out),
        daemon.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// SIGHUP, then waits until the log says the reload is done (`reload: ...`) `count` times.
fn hangup(daemon: &Meshd, count: usize) {
    send_signal(daemon.pid().expect("meshd runs"), libc::SIGHUP);
    let logged =
        wait_until(Duration::from_secs(20), || (daemon.log().matches(" reload: ").count() >= count).then_some(()));
    assert!(logged.is_some(), "{} did not log a reload after SIGHUP:\n{}", daemon.node(), daemon.log());
}

/// The pairs among n1..n3 keep their SPIs: `after` has what `before` had for those peers.
fn assert_untouched(before: &[Spis], after: &[Spis], peers: &[&str]) {
    for (node, (before, after)) in before.iter().zip(after).enumerate() {
        for peer in peers.iter().filter(|p| **p != format!("n{}", node + 1)) {
            assert_eq!(
                before.get(*peer),
                after.get(*peer),
                "n{}'s SAs with {peer} changed across the reload",
                node + 1
            );
        }
    }
}

/// 3 nodes -> `ikectl reload` with a 4th -> every pair keyed and pinging, the old pairs' SPIs
/// unchanged -> SIGHUP with the 4th removed -> its SAs and FDB entries gone on the others, the
/// old pairs still unchanged and pinging.
fn add_and_remove_a_node(prefix: &str, ike: bool) {
    require_root();
    let lab = Lab::new(prefix, 4);
    let builder = MeshFile::builder(&lab);
    let mesh = if ike { builder.ike() } else { builder }.write();
    mesh.rewrite_with(&[0, 1, 2], "");
    let first: Vec<Meshd> = start(&lab, &mesh, 3);
    let three: Vec<&Meshd> = first.iter().collect();
    let before = wait_keyed(&three);
    ping_all(&lab, &[0, 1, 2], 0);

    mesh.rewrite_with(&[0, 1, 2, 3], "");
    let flowing = BackgroundPing::start(&lab, 0, "10.244.0.2", 40);
    for daemon in &first {
        assert_eq!(reload(daemon), "peers added: n4\n");
    }
    flowing.assert_lossless("n1 -> n2 while a node is added");
    let fourth = Meshd::start(lab.node(3), mesh.path(), "n4");
    let four: Vec<&Meshd> = first.iter().chain([&fourth]).collect();
    let after = wait_keyed(&four);
    assert_untouched(&before, &after, &["n1", "n2", "n3"]);
    ping_all(&lab, &[0, 1, 2, 3], 0);
    let n4_mac = lab.node(3).mac(&fourth.overlay_interface("ovl0"));
    assert!(fdb_peers(&first[0]).contains(&("n4".to_string(), n4_mac.clone())), "n1 learned n4's MAC");

    mesh.rewrite_with(&[0, 1, 2], "");
    for daemon in &first {
        hangup(daemon, 2);
    }
    let removed = wait_keyed(&three);
    assert_untouched(&before, &removed, &["n1", "n2", "n3"]);
    for daemon in &first {
        assert!(!fdb_peers(daemon).iter().any(|(peer, _)| peer == "n4"), "{}: FDB entries of n4 stay", daemon.node());
        // An IKE SA with n4 lasts until n4 answers its DELETE.
        let gone = wait_until(CONVERGE, || {
            (!daemon.ikectl_json(&["sa", "list"]).to_string().contains("\"n4\"")).then_some(())
        });
        assert!(gone.is_some(), "{}: SAs with n4 stay: {:#}", daemon.node(), daemon.ikectl_json(&["sa", "list"]));
        assert!(daemon.log().contains("reload: peers removed: n4"), "{}", daemon.log());
    }
    if ike {
        let told =
            wait_until(CONVERGE, || (fourth.log().matches("the peer deleted the IKE SA").count() >= 3).then_some(()));
        assert!(told.is_some(), "n4 was not told by IKE DELETE:\n{}", fourth.log());
    }
    ping_all(&lab, &[0, 1, 2], 0);
    assert!(!lab.node(0).ping("10.244.0.4", 1).status.success(), "n1 still reaches the removed n4");
}

/// (peer, MAC) of every FDB entry.
fn fdb_peers(daemon: &Meshd) -> Vec<(String, String)> {
    let fdb = daemon.ikectl_json(&["fdb"]);
    fdb.as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (e["peer"].as_str().unwrap_or_default().to_string(), e["mac"].as_str().unwrap_or_default().to_lowercase())
        })
        .collect()
}

#[test]
fn ike_node_added_by_reload_and_removed_by_sighup() {
    add_and_remove_a_node("rli", true);
}

#[test]
fn manual_node_added_by_reload_and_removed_by_sighup() {
    add_and_remove_a_node("rlm", false);
}

const SECOND_OVERLAY: &str = "\n[[overlay]]\nname = \"ovl1\"\nvni = 4343\n[overlay.address]\n\
                              n1 = \"10.244.1.1/24\"\nn2 = \"10.244.1.2/24\"\nn3 = \"10.244.1.3/24\"\n";

#[test]
fn overlay_added_and_removed_live() {
    require_root();
    let lab = Lab::new("rlo", 3);
    let mesh = MeshFile::builder(&lab).ike().write();
    let daemons: Vec<Meshd> = start(&lab, &mesh, 3);
    let all: Vec<&Meshd> = daemons.iter().collect();
    let before = wait_keyed(&all);

    mesh.rewrite_with(&[0, 1, 2], SECOND_OVERLAY);
    ping_all(&lab, &[0, 1, 2], 0);
    // The workers pause to take the new interface over; packets wait meanwhile.
    let flowing = BackgroundPing::start(&lab, 0, "10.244.0.2", 40);
    for daemon in &daemons {
        assert_eq!(reload(daemon), "overlays added: ovl1\n");
        assert_eq!(daemon.overlay_interface("ovl1"), "ovl1");
    }
    flowing.assert_lossless("n1 -> n2 on ovl0 while ovl1 is added");
    ping_all(&lab, &[0, 1, 2], 1);
    ping_all(&lab, &[0, 1, 2], 0);
    assert_untouched(&before, &wait_keyed(&all), &["n1", "n2", "n3"]);

    // n1 alone reloads the same overlays in the other order: its frames must still leave with
    // their own VNI, and arrive on the right interface, for peers that kept the old order.
    let text = fs::read_to_string(mesh.path()).expect("read mesh.toml");
    let first = text.find("\n[[overlay]]").expect("ovl0 in the file");
    let second = first + 1 + text[first + 1..].find("\n[[overlay]]").expect("ovl1 in the file");
    fs::write(mesh.path(), format!("{}{}{}", &text[..first], &text[second..], &text[first..second]))
        .expect("write mesh.toml");
    assert_eq!(reload(&daemons[0]), "no changes\n");
    ping_all(&lab, &[0, 1, 2], 0);
    ping_all(&lab, &[0, 1, 2], 1);
    mesh.rewrite_with(&[0, 1, 2], SECOND_OVERLAY);
    assert_eq!(reload(&daemons[0]), "no changes\n");

    mesh.rewrite_with(&[0, 1, 2], &SECOND_OVERLAY.replace("4343", "4344"));
    for daemon in &daemons {
        assert_eq!(reload(daemon), "overlays changed: ovl1 (vni 4343 -> 4344)\n");
    }
    ping_all(&lab, &[0, 1, 2], 1);

    mesh.rewrite_with(&[0, 1, 2], "");
    for (i, daemon) in daemons.iter().enumerate() {
        assert_eq!(reload(daemon), "overlays removed: ovl1\n");
        assert!(!lab.node(i).has_link("ovl1"), "{}: ovl1 is still there", daemon.node());
        assert_eq!(reload(daemon), "no changes\n");
    }
    ping_all(&lab, &[0, 1, 2], 0);
    assert_untouched(&before, &wait_keyed(&all), &["n1", "n2", "n3"]);
}

#[test]
fn bad_config_is_refused_and_the_old_one_keeps_running() {
    require_root();
    let lab = Lab::new("rlb", 2);
    let mesh = MeshFile::builder(&lab).write();
    let daemons: Vec<Meshd> = start(&lab, &mesh, 2);
    let all: Vec<&Meshd> = daemons.iter().collect();
    let before = wait_keyed(&all);
    ping_all(&lab, &[0, 1], 0);
    let good = fs::read_to_string(mesh.path()).expect("read mesh.toml");

    // Not valid: a second node with n1's address.
    let duplicate = format!("{good}\n[[node]]\nname = \"n9\"\naddress = \"{}\"\n", lab.addr(0));
    fs::write(mesh.path(), duplicate).expect("write mesh.toml");
    let out = daemons[0].ikectl(&["reload"]);
    assert!(!out.status.success(), "a bad config was accepted:\n{}", describe_output(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("new config refused, the running one stays"), "{stderr}");
    assert!(stderr.contains("is already the address of node \"n1\""), "{stderr}");
    assert!(daemons[0].log().contains("is already the address of node"), "{}", daemons[0].log());

    // Valid, but without this node.
    mesh.rewrite_with(&[1], "");
    let out = daemons[0].ikectl(&["reload"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("this node (n1) is not in the new mesh file"),
        "{}",
        describe_output(&out)
    );

    // SIGHUP with a bad file: refused the same way, meshd keeps running.
    fs::write(mesh.path(), "[mesh\nname = ").expect("write mesh.toml");
    hangup(&daemons[1], 1);
    assert!(daemons[1].log().contains("new config refused"), "{}", daemons[1].log());

    ping_all(&lab, &[0, 1], 0);
    assert_eq!(before, vec![spis(&daemons[0]), spis(&daemons[1])]);
    fs::write(mesh.path(), good).expect("write mesh.toml");
    assert_eq!(reload(&daemons[0]), "no changes\n");
}

#[test]
fn a_new_psk_rekeys_every_ike_pair() {
    require_root();
    let lab = Lab::new("rlp", 3);
    let mesh = MeshFile::builder(&lab).ike().write();
    let daemons: Vec<Meshd> = start(&lab, &mesh, 3);
    let all: Vec<&Meshd> = daemons.iter().collect();
    let before = wait_keyed(&all);

    let psk = mesh.dir().join("psk");
    fs::write(&psk, meshd_lab::util::hex(&meshd_lab::util::random_bytes(32))).expect("write the new psk");
    for (i, daemon) in daemons.iter().enumerate() {
        let others: Vec<String> =
            (0..3).filter(|j| *j != i).map(|j| format!("n{} (pre-shared key changed)", j + 1)).collect();
        assert_eq!(reload(daemon), format!("peers re-keyed: {}\n", others.join(", ")));
    }
    let after = wait_keyed(&all);
    for (node, (before, after)) in before.iter().zip(&after).enumerate() {
        for (peer, spis) in before {
            assert_ne!(Some(spis), after.get(peer), "n{}'s SAs with {peer} were not made anew", node + 1);
        }
    }
    ping_all(&lab, &[0, 1, 2], 0);
}
