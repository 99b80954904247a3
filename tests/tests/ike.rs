//! Multi-node tests of meshd keyed by IKEv2: a full mesh started at once converges to one IKE SA
//! and one Child SA pair per node pair; rekeys under a ping flood lose nothing; a node killed with
//! SIGKILL and restarted heals on its own; a wrong PSK is reported; flush renegotiates; NAT in a
//! router namespace is detected and crossed over UDP 4500.
//!
//! Run: `cargo build --workspace && sudo -E cargo test -p meshd-lab --test ike`.

use std::collections::BTreeSet;
use std::time::Duration;

use meshd_lab::util::{describe_output, send_signal, wait_until};
use meshd_lab::{require_root, start_all, tcp_transfer, Capture, Family, Lab, MeshFile, Meshd, Netns, RoutedPair};
use serde_json::Value;

/// Established IKE SAs of a node, from `ikectl --json sa list`.
fn established(d: &Meshd) -> Vec<Value> {
    let list = d.ikectl_json(&["sa", "list"]);
    list["ike_sas"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|sa| sa["state"] == "established")
        .collect()
}

/// Waits until every node has one established IKE SA with one Child SA per peer, and the Child
/// SAs match crosswise (every node's outbound SPIs are inbound SPIs of the others).
fn wait_converged(daemons: &[Meshd], timeout: Duration) {
    let peers = daemons.len() - 1;
    let converged = wait_until(timeout, || {
        let ok = daemons.iter().all(|d| {
            let sas = established(d);
            sas.len() == peers && sas.iter().all(|sa| sa["child_spis"].as_array().is_some_and(|c| c.len() == 1))
        });
        let outbound: BTreeSet<String> = daemons.iter().flat_map(|d| d.child_spis("out")).collect();
        let inbound: BTreeSet<String> = daemons.iter().flat_map(|d| d.child_spis("in")).collect();
        (ok && outbound.len() == daemons.len() * peers && outbound == inbound).then_some(())
    });
    if converged.is_none() {
        let state: Vec<String> = daemons
            .iter()
            .map(|d| format!("{}: {:#}\n--- log ---\n{}", d.node(), d.ikectl_json(&["sa", "list"]), d.log()))
            .collect();
        panic!("the mesh did not converge within {timeout:?}:\n{}", state.join("\n"));
    }
}

fn ping_ok(ns: &Netns, addr: &str, what: &str) {
    let out = ns.ping(addr, 2);
    assert!(out.status.success(), "{what}: ping {addr} from {} failed\n{}", ns.name(), describe_output(&out));
}

#[test]
fn six_nodes_started_at_once_converge_to_fifteen_ike_sas() {
    require_root();
    let lab = Lab::new("ik6", 6);
    let mesh = MeshFile::builder(&lab).ike().write();
    let daemons = start_all(&lab, mesh.path());
    wait_converged(&daemons, Duration::from_secs(30));
    // Each IKE SA is counted once, by the node that initiated it.
    let initiated: usize =
        daemons.iter().map(|d| established(d).iter().filter(|sa| sa["we_initiated"] == true).count()).sum();
    assert_eq!(initiated, 15);
    for from in 0..lab.len() {
        for to in (0..lab.len()).filter(|to| *to != from) {
            ping_ok(lab.node(from), &lab.overlay_addr(to).to_string(), "full mesh");
        }
    }
    for d in &daemons {
        let peers = d.ikectl_json(&["peers"]);
        for peer in peers.as_array().unwrap() {
            assert_eq!(peer["keying"], "ike: established", "{}: {peer:#}", d.node());
        }
    }
    // Each node announced its overlay address to each peer (twice, a second apart) only once
    // the peer could open it: ESP that came before its SA was installed shows as dropped for an
    // unknown SPI (and sets off a liveness check of the peer). When each responder announced at
    // once, every initiator counted two per pair (30 here). A responder's other first ESP (its
    // kernel's IPv6 multicast, a path-MTU probe) can still overtake its IKE_AUTH answer, which
    // under load takes tens of milliseconds: seen twice in one run of the suite. The initiator
    // now keeps such ESP until the answer installs the SA (none counted in three runs with both
    // cores busy; `esp_that_overtakes_a_lost_ike_auth_answer_is_kept_until_the_sa_is_in` checks
    // that path); ESP on the SAs of a duplicate IKE SA deleted at the same time still counts, so
    // the check is for fewer than one per pair, not for none.
    std::thread::sleep(Duration::from_secs(2));
    let drops: Vec<Value> = daemons.iter().map(|d| d.ikectl_json(&["drops"])).collect();
    let unknown_spi: u64 = drops.iter().filter_map(|report| report["by_reason"]["unknown_spi"].as_u64()).sum();
    assert!(unknown_spi < 15, "{unknown_spi} ESP packets for SPIs not installed yet: {drops:#?}");
}

#[test]
fn rekeys_under_a_ping_flood_lose_nothing() {
    require_root();
    let lab = Lab::new("ikrk", 2);
    let mesh = MeshFile::builder(&lab).ike().extra("[ike]\nchild_lifetime = \"12s\"\nike_lifetime = \"20s\"\n").write();
    let daemons = start_all(&lab, mesh.path());
    wait_converged(&daemons, Duration::from_secs(15));
    let before = daemons[0].child_spis("out");
    let ike_before = established(&daemons[0])[0]["initiator_spi"].clone();
    // 25 s at 100 packets a second: at least two Child SA rekeys and one IKE SA rekey.
    let out = lab.node(0).exec(["ping", "-n", "-q", "-i", "0.01", "-c", "2500", "-W", "1", "10.244.0.2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 0% packet loss"),
        "packets were lost across rekeys:\n{text}\n--- n1 ---\n{}\n--- n2 ---\n{}",
        daemons[0].log(),
        daemons[1].log()
    );
    wait_converged(&daemons, Duration::from_secs(10));
    assert!(daemons[0].child_spis("out").is_disjoint(&before), "the Child SA was rekeyed");
    assert_ne!(established(&daemons[0])[0]["initiator_spi"], ike_before, "the IKE SA was rekeyed");
}

#[test]
fn a_node_killed_and_restarted_heals_on_its_own() {
    require_root();
    let lab = Lab::new("ikkl", 3);
    let mesh = MeshFile::builder(&lab).ike().write();
    let mut daemons = start_all(&lab, mesh.path());
    wait_converged(&daemons, Duration::from_secs(15));
    // n2 dies without a word and comes back with no state.
    send_signal(daemons[1].pid().expect("n2 runs"), libc::SIGKILL);
    daemons[1].kill();
    daemons[1] = Meshd::start(lab.node(1), mesh.path(), "n2");
    // Within three liveness intervals (dpd 10 s), without operator action.
    wait_converged(&daemons, Duration::from_secs(30));
    ping_ok(lab.node(0), "10.244.0.2", "n1 -> restarted n2");
    ping_ok(lab.node(2), "10.244.0.2", "n3 -> restarted n2");
    ping_ok(lab.node(1), "10.244.0.1", "restarted n2 -> n1");
}

#[test]
fn a_wrong_psk_is_reported_as_authentication_failed() {
    require_root();
    let lab = Lab::new("ikpsk", 2);
    let mesh = MeshFile::builder(&lab).ike().write();
    let other = mesh.variant_with_other_psk("other.toml");
    let n1 = Meshd::start(lab.node(0), mesh.path(), "n1");
    let n2 = Meshd::start(lab.node(1), &other, "n2");
    let failed = wait_until(Duration::from_secs(10), || {
        let peers = n1.ikectl_json(&["peers"]);
        let keying = peers[0]["keying"].as_str().unwrap_or_default().to_string();
        keying.contains("AUTHENTICATION_FAILED").then_some(keying)
    });
    let keying =
        failed.unwrap_or_else(|| panic!("n1 does not report AUTHENTICATION_FAILED: {}", n1.ikectl_json(&["peers"])));
    assert!(keying.contains("psk_file"), "the state says what to do: {keying}");
    assert!(n1.log().contains("AUTHENTICATION_FAILED") && n2.log().contains("AUTHENTICATION_FAILED"));
    assert!(!n1.log().contains(&std::fs::read_to_string(mesh.dir().join("psk")).unwrap()), "the PSK is never logged");
    assert!(!lab.node(0).ping("10.244.0.2", 1).status.success());
}

/// Drops the first IKE_AUTH answer (exchange type 35, Response flag set) that reaches `ns` on
/// UDP 500 or 4500 (after the 4-byte non-ESP marker), from any one address; later ones pass.
fn lose_the_first_ike_auth_answer(ns: &Netns) {
    ns.run_ok(["nft", "add", "table", "inet", "lose_answer"]);
    ns.run_ok(["nft", "add", "set", "inet", "lose_answer", "answered", "{ type ipv4_addr; flags dynamic; }"]);
    ns.run_ok(["nft", "add", "chain", "inet", "lose_answer", "in", "{ type filter hook input priority 0; }"]);
    ns.run_ok(["nft", "add", "rule", "inet", "lose_answer", "in", "ip", "saddr", "@answered", "accept"]);
    // Offsets from the UDP header (@th): UDP 8 bytes, then on 4500 the marker (4 zero bytes),
    // then IKE: exchange type at 18, flags at 19.
    for (port, ike_bits) in [("500", 64), ("4500", 96)] {
        let (exchange, flags) = (format!("@th,{},8", ike_bits + 144), format!("@th,{},8", ike_bits + 152));
        let mut rule = vec!["nft", "add", "rule", "inet", "lose_answer", "in", "udp", "sport", port];
        if port == "4500" {
            rule.extend(["@th,64,32", "0"]);
        }
        rule.extend([&exchange[..], "35", &flags[..], "&", "0x20", "==", "0x20"]);
        rule.extend(["add", "@answered", "{ ip saddr }", "counter", "drop"]);
        ns.run_ok(rule);
    }
}

/// A responder sends on its new SAs the moment it answers IKE_AUTH (its first announcement
/// 200 ms later); here n1's first IKE_AUTH answer is lost, so until n1's retransmission half a
/// second later n2 sends on an SA n1 has not installed. n1 keeps those packets and hands them on
/// once the answer installs the SA: it counts no `unknown_spi` but `early_esp_packets` for n2, and
/// both of n2's announcements (gratuitous ARPs, 1 s apart) reach n1's overlay, where the first
/// used to be dropped.
#[test]
fn esp_that_overtakes_a_lost_ike_auth_answer_is_kept_until_the_sa_is_in() {
    require_root();
    let lab = Lab::new("ikea", 2);
    let mesh = MeshFile::builder(&lab).ike().write();
    lose_the_first_ike_auth_answer(lab.node(0));
    // "any": the overlay interface does not exist before meshd starts.
    let mut capture = Capture::start_with_filter(lab.node(0), "any", Some("arp"));
    let daemons = start_all(&lab, mesh.path());
    wait_converged(&daemons, Duration::from_secs(15));
    assert_eq!(lab.node(0).nft_counted("inet lose_answer"), 1, "n1 (the initiator) lost one IKE_AUTH answer");
    // n2's second announcement comes a second after its first.
    std::thread::sleep(Duration::from_secs(2));
    let n2 = lab.overlay_addr(1).to_string();
    let announced = capture.read(&["-Y", &format!("arp.isgratuitous && arp.src.proto_ipv4 == {n2}")]);
    let drops = daemons[0].ikectl_json(&["drops"]);
    assert!(
        announced.lines().filter(|line| !line.trim().is_empty()).count() >= 2,
        "n1 did not see both of n2's announcements:\n{}\nn1's drops: {drops:#}\n--- n1 ---\n{}",
        capture.read(&[]),
        daemons[0].log()
    );
    assert_eq!(drops["by_reason"]["unknown_spi"].as_u64().unwrap_or(0), 0, "{drops:#}");
    // What was kept shows per peer.
    let peer = daemons[0].ikectl_json(&["peers"])[0].clone();
    assert!(peer["early_esp_packets"].as_u64() >= Some(1), "n1's peer n2: {peer:#}");
    ping_ok(lab.node(0), &n2, "after the lost answer");
}

#[test]
fn flush_deletes_on_both_sides_and_traffic_is_back() {
    require_root();
    let lab = Lab::new("ikfl", 2);
    let mesh = MeshFile::builder(&lab).ike().write();
    let daemons = start_all(&lab, mesh.path());
    wait_converged(&daemons, Duration::from_secs(15));
    let before: BTreeSet<String> = daemons.iter().flat_map(|d| d.child_spis("in")).collect();
    let report = daemons[0].ikectl_json(&["sa", "flush", "--peer", "n2"]);
    assert!(report["traffic_back_ms"].as_u64().is_some(), "{report:#}");
    wait_converged(&daemons, Duration::from_secs(10));
    let after: BTreeSet<String> = daemons.iter().flat_map(|d| d.child_spis("in")).collect();
    assert!(before.is_disjoint(&after), "both sides flushed: {before:?} -> {after:?}");
    ping_ok(lab.node(0), "10.244.0.2", "after flush");
    // The text form says when traffic was back.
    let text = daemons[1].ikectl(&["sa", "flush"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("renegotiated: SAs both ways again after"));
}

/// n1 (198.18.1.1) -- router (masquerade towards n2) -- n2 (198.18.2.1).
#[test]
fn nat_between_the_nodes_is_detected_and_crossed_over_udp_4500() {
    require_root();
    let nat = RoutedPair::new("iknat", Family::V4, 1500);
    nat.masquerade_towards(1);
    let (n1, router, n2) = (nat.node(0), nat.router(), nat.node(1));
    let mesh = MeshFile::for_addresses(vec![nat.addr(0), nat.addr(1)]).ike().write();
    let mut capture = Capture::start(router, &nat.router_iface(1));
    let daemons = vec![Meshd::start(n1, mesh.path(), "n1"), Meshd::start(n2, mesh.path(), "n2")];
    wait_converged(&daemons, Duration::from_secs(15));
    ping_ok(n1, "10.244.0.2", "through NAT");
    ping_ok(n2, "10.244.0.1", "back through NAT");
    capture.stop();

    let behind = &established(&daemons[0])[0];
    assert_eq!(behind["nat_detected"], true, "n1 knows it is behind NAT: {behind:#}");
    assert_eq!(behind["udp_encap"], true, "{behind:#}");
    let outside = &established(&daemons[1])[0];
    assert_eq!(outside["nat_detected"], false, "n2 is not behind NAT: {outside:#}");
    let remote = outside["remote"].as_str().unwrap_or_default();
    assert!(remote.starts_with("198.18.2.254:"), "n2 sees n1 as the NAT's address: {outside:#}");
    let esp_in_udp = capture.read(&["-Y", "udp.port == 4500 && esp"]);
    assert!(!esp_in_udp.trim().is_empty(), "ESP crosses the NAT in UDP 4500");
    assert!(
        capture.read(&["-Y", "udp.port == 4790 || ip.proto == 50"]).trim().is_empty(),
        "no plaintext VXLAN and no raw ESP"
    );
}

/// 20 MB over TCP through the overlay arrive intact, with the TAP offloads (TSO super-frames
/// segmented by meshd, UDP GSO/GRO, coalescing on receive), without them, and with the workers
/// busy polling.
#[test]
fn a_tcp_transfer_arrives_intact_with_and_without_offloads() {
    require_root();
    let variants = [("iktcp", &[][..]), ("iktcpn", &["--no-offload"][..]), ("iktcpb", &["--busy-poll", "500"][..])];
    for (prefix, extra) in variants {
        let lab = Lab::new(prefix, 2);
        let mesh = MeshFile::builder(&lab).ike().write();
        let daemons: Vec<Meshd> =
            (0..2).map(|i| Meshd::start_with(lab.node(i), mesh.path(), &lab.node_name(i), extra)).collect();
        wait_converged(&daemons, Duration::from_secs(15));
        let (sent, received) = tcp_transfer(lab.node(0), lab.node(1), "0", || {});
        assert_eq!(received.trim(), sent.trim(), "{extra:?}: what arrived differs from what was sent");
        let drops = daemons[1].ikectl_json(&["drops"]);
        assert_eq!(drops["by_reason"].get("malformed"), None, "{extra:?}: {drops:#}");
    }
}
