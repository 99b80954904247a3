//! Meshes beyond a handful of nodes: overlays that meet at one node negotiate SAs only where
//! they share members (and a reload that changes membership adds the pairs it makes); 50 nodes
//! started at once converge to a full mesh.
//!
//! Run: `cargo build --workspace && sudo -E cargo test -p meshd-lab --test scale`.

use std::time::{Duration, Instant};

use meshd_lab::util::{describe_output, wait_until};
use meshd_lab::{require_root, start_all, start_all_at_once, Lab, MeshFile, Meshd, NeighbourTable, Netns};
use serde_json::Value;

/// The names of the peers a node has an established IKE SA with, sorted.
fn ike_peers(d: &Meshd) -> Vec<String> {
    let list = d.ikectl_json(&["sa", "list"]);
    let mut peers: Vec<String> = list["ike_sas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|sa| sa["state"] == "established")
        .filter_map(|sa| sa["peer"].as_str().map(str::to_string))
        .collect();
    peers.sort();
    peers
}

/// The peers a node is configured with (`ikectl peers`), sorted.
fn configured_peers(d: &Meshd) -> Vec<String> {
    let mut peers: Vec<String> = d
        .ikectl_json(&["peers"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|peer| peer["name"].as_str().map(str::to_string))
        .collect();
    peers.sort();
    peers
}

/// `ikectl status`'s peer counts: (configured, with SAs both ways).
fn peer_counts(d: &Meshd) -> (u64, u64) {
    let status: Value = d.ikectl_json(&["status"]);
    (status["peers_configured"].as_u64().unwrap_or(0), status["peers_with_sas"].as_u64().unwrap_or(u64::MAX))
}

fn names(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Waits until each node has established IKE SAs with exactly `expected[i]`.
fn wait_for_ike_peers(daemons: &[Meshd], expected: &[Vec<String>], timeout: Duration) {
    let done =
        wait_until(timeout, || daemons.iter().zip(expected).all(|(d, want)| ike_peers(d) == *want).then_some(()));
    if done.is_none() {
        let state: Vec<String> = daemons
            .iter()
            .zip(expected)
            .map(|(d, want)| {
                format!("{}: IKE SAs with {:?}, expected {want:?}\n--- log ---\n{}", d.node(), ike_peers(d), d.log())
            })
            .collect();
        panic!("the IKE SAs did not settle within {timeout:?}:\n{}", state.join("\n"));
    }
}

fn ping_ok(ns: &Netns, addr: &str) {
    let out = ns.ping(addr, 2);
    assert!(out.status.success(), "ping {addr} from {} failed\n{}", ns.name(), describe_output(&out));
}

/// `ovl1`: n2 and n3 on 10.244.1.0/24 (`with_n1`: n1 too).
fn second_overlay(with_n1: bool) -> String {
    let (nodes, n1) =
        if with_n1 { ("\"n1\", \"n2\", \"n3\"", "n1 = \"10.244.1.1/24\"\n") } else { ("\"n2\", \"n3\"", "") };
    format!("[[overlay]]\nname = \"ovl1\"\nvni = 4343\nnodes = [{nodes}]\n[overlay.address]\n{n1}n2 = \"10.244.1.2/24\"\nn3 = \"10.244.1.3/24\"\n")
}

#[test]
fn two_overlays_that_share_one_node_have_sas_only_where_they_meet() {
    require_root();
    let lab = Lab::new("scov", 3);
    // ovl0: n1 and n2 (10.244.0.0/24); ovl1: n2 and n3 (10.244.1.0/24). n1 and n3 share nothing.
    let mesh = MeshFile::builder(&lab).ike().overlay_nodes(&[0, 1]).write();
    mesh.rewrite_with(&[0, 1, 2], &second_overlay(false));
    let daemons = start_all(&lab, mesh.path());
    let expected = [names(&["n2"]), names(&["n1", "n3"]), names(&["n2"])];
    wait_for_ike_peers(&daemons, &expected, Duration::from_secs(20));
    for (d, want) in daemons.iter().zip(&expected) {
        assert_eq!(configured_peers(d), *want, "{}: ikectl peers", d.node());
        assert_eq!(peer_counts(d), (want.len() as u64, want.len() as u64), "{}: ikectl status", d.node());
    }
    // Each overlay works within; n1 has no interface on ovl1 and n3 none on ovl0.
    ping_ok(lab.node(0), "10.244.0.2");
    ping_ok(lab.node(1), "10.244.0.1");
    ping_ok(lab.node(1), "10.244.1.3");
    ping_ok(lab.node(2), "10.244.1.2");
    assert!(
        !lab.node(0).has_link("ovl1") && !lab.node(2).has_link("ovl0"),
        "interfaces only where the node is a member"
    );
    // None across, over a few seconds of the nodes' own retries.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ike_peers(&daemons[0]), names(&["n2"]), "n1 negotiated with a node it shares no overlay with");

    // n1 joins ovl1: a reload on each node makes the n1-n3 pair and nothing else.
    mesh.rewrite_with(&[0, 1, 2], &second_overlay(true));
    for d in &daemons {
        let out = d.ikectl(&["reload"]);
        assert!(out.status.success(), "reload on {}: {}", d.node(), describe_output(&out));
    }
    let expected = [names(&["n2", "n3"]), names(&["n1", "n3"]), names(&["n1", "n2"])];
    wait_for_ike_peers(&daemons, &expected, Duration::from_secs(20));
    assert!(lab.node(0).has_link("ovl1"), "n1's ovl1 interface after the reload");
    ping_ok(lab.node(0), "10.244.1.3");
    ping_ok(lab.node(2), "10.244.1.1");
}

#[test]
fn fifty_nodes_started_at_once_converge_to_a_full_mesh() {
    require_root();
    const NODES: usize = 50;
    let _neighbours = NeighbourTable::raise_for(NODES);
    let built = Instant::now();
    let lab = Lab::new("sc50", NODES);
    let mesh = MeshFile::builder(&lab).ike().write();
    let started = Instant::now();
    eprintln!("{NODES} nodes: lab built in {:?}", started - built);
    // 50 eBPF tracers would only slow the start on a small CI machine.
    let daemons = start_all_at_once(&lab, mesh.path(), &["--no-kernel-drops"]);
    eprintln!("{NODES} nodes: every meshd answers {:?} after the start", started.elapsed());
    let peers = (NODES - 1) as u64;
    let timeout = Duration::from_secs(45);
    let converged = wait_until(timeout, || daemons.iter().all(|d| peer_counts(d) == (peers, peers)).then_some(()));
    if converged.is_none() {
        let lagging: Vec<String> = daemons
            .iter()
            .filter(|d| peer_counts(d) != (peers, peers))
            .map(|d| format!("{}: {:?}", d.node(), peer_counts(d)))
            .collect();
        let first = daemons.iter().find(|d| peer_counts(d) != (peers, peers)).map(|d| d.log()).unwrap_or_default();
        panic!(
            "{} of {NODES} nodes lack SAs after {timeout:?}: {}\n--- first one's log ---\n{first}",
            lagging.len(),
            lagging.join(", ")
        );
    }
    eprintln!("{NODES} nodes: full mesh ({} pairs) {:?} after the start", NODES * (NODES - 1) / 2, started.elapsed());
    // Traffic across the mesh: the first node to the last and back.
    ping_ok(lab.node(0), &lab.overlay_addr(NODES - 1).to_string());
    ping_ok(lab.node(NODES - 1), &lab.overlay_addr(0).to_string());
}
