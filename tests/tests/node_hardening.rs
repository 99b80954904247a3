//! The node at the edges of the underlay (issue 14): a NAT that changes its mapping mid-transfer;
//! a node's link that goes down for 10 s, after which the pair is back within 2 s; a node killed
//! and restarted over and over is back on the overlay within three liveness intervals each time.
//!
//! Run: `cargo build --workspace && sudo -E cargo test -p meshd-lab --test node_hardening`.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use meshd_lab::util::{describe_output, send_signal, wait_until};
use meshd_lab::{require_root, start_all, Capture, Family, Lab, MeshFile, Meshd, RoutedPair};

/// These tests measure recovery in seconds: they run one at a time, so that they do not slow
/// each other's daemons down. This lock does it under `cargo test` (one process for the file);
/// cargo-nextest runs each test in a process of its own, and .config/nextest.toml runs these alone.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Interval of the ping streams, and the longest outage allowed in them.
const PING_INTERVAL: f64 = 0.05;
const MAX_OUTAGE: Duration = Duration::from_secs(2);

/// The longest run of echo requests without a reply in the output of `ping -c count`, as a time.
fn longest_outage(ping_output: &str, count: u32) -> Duration {
    let answered: std::collections::BTreeSet<u32> =
        ping_output.split_whitespace().filter_map(|word| word.strip_prefix("icmp_seq=")?.parse().ok()).collect();
    let (mut longest, mut run) = (0u32, 0u32);
    for seq in 1..=count {
        run = if answered.contains(&seq) { 0 } else { run + 1 };
        longest = longest.max(run);
    }
    Duration::from_secs_f64(f64::from(longest) * PING_INTERVAL)
}

/// n1 (198.18.1.1) -- router (masquerade towards n2) -- n2 (198.18.2.1), keyed by IKE. While
/// n1 pings n2 through the overlay, the router forgets its mappings and gives n1's UDP a new
/// source port: n2 follows n1 to the new port with its Child SAs and its IKE SA, and the pings
/// are answered again within 2 s.
#[test]
fn a_changed_nat_mapping_is_followed_within_two_seconds() {
    require_root();
    let _one_at_a_time = one_at_a_time();
    let nat = RoutedPair::new("nhnat", Family::V4, 1500);
    nat.masquerade_towards(1);
    let (n1, n2) = (nat.node(0), nat.node(1));
    let mesh = MeshFile::for_addresses(vec![nat.addr(0), nat.addr(1)]).ike().write();
    let daemons = [Meshd::start(n1, mesh.path(), "n1"), Meshd::start(n2, mesh.path(), "n2")];
    let up = wait_until(Duration::from_secs(20), || n1.ping("10.244.0.2", 1).status.success().then_some(()));
    assert!(up.is_some(), "n1 and n2 did not negotiate through the NAT\n{}", daemons[1].log());

    let count = 200;
    let ping = n1
        .command(["ping", "-n", "-i", &PING_INTERVAL.to_string(), "-c", &count.to_string(), "-W", "1", "10.244.0.2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start ping");
    std::thread::sleep(Duration::from_secs(3));
    nat.rebind_masquerade(1, 40_000);
    let out = ping.wait_with_output().expect("ping output");
    let text = String::from_utf8_lossy(&out.stdout);
    let outage = longest_outage(&text, count);
    assert!(
        outage <= MAX_OUTAGE,
        "pings went unanswered for {outage:?} after the NAT mapping changed\n{}\n--- n2 ---\n{}",
        describe_output(&out),
        daemons[1].log()
    );
    let ike = daemons[1].ikectl_json(&["sa", "list"]);
    let remotes: Vec<&str> =
        ike["ike_sas"].as_array().into_iter().flatten().filter_map(|sa| sa["remote"].as_str()).collect();
    assert!(remotes.iter().all(|r| *r == "198.18.2.254:40000"), "n2's IKE SA follows n1 too: {ike:#}");
}

/// Four nodes, dpd 2 s and short lifetimes (rekeys happen between the restarts). n2 is killed
/// with SIGKILL and restarted three times; each time every other node reaches n2's overlay
/// address within three liveness intervals (6 s) of the restart, although the neighbour caches
/// of the others still hold n2's MAC from before: it is the same MAC each time, and n2 announces
/// it with a gratuitous ARP once its SAs are back.
#[test]
fn a_node_killed_and_restarted_is_back_on_the_overlay_within_six_seconds_every_time() {
    require_root();
    let _one_at_a_time = one_at_a_time();
    let lab = Lab::new("nhrs", 4);
    let mesh = MeshFile::builder(&lab)
        .ike()
        .extra("[ike]\ndpd = \"2s\"\nchild_lifetime = \"15s\"\nike_lifetime = \"25s\"\n")
        .write();
    let mut daemons = start_all(&lab, mesh.path());
    let target = lab.overlay_addr(1).to_string();
    let others = [0, 2, 3];
    let all_reach = || others.iter().all(|i| lab.node(*i).ping(&target, 1).status.success()).then_some(());
    assert!(wait_until(Duration::from_secs(20), all_reach).is_some(), "the mesh did not come up\n{}", daemons[1].log());
    let mac_before = lab.node(1).mac(&daemons[1].overlay_interface("ovl0"));
    let n1_overlay = daemons[0].overlay_interface("ovl0");
    for round in 1..=3 {
        let mut capture = Capture::start_with_filter(lab.node(0), &n1_overlay, Some("arp"));
        send_signal(daemons[1].pid().expect("n2 runs"), libc::SIGKILL);
        daemons[1].kill();
        // Long enough for the others' liveness checks to notice (dpd 2 s).
        std::thread::sleep(Duration::from_secs(3));
        let restarted = Instant::now();
        daemons[1] = Meshd::start(lab.node(1), mesh.path(), "n2");
        let mut reached = [false; 3];
        let back = wait_until(Duration::from_secs(6), || {
            for (slot, i) in reached.iter_mut().zip(others) {
                *slot = *slot || lab.node(i).exec(["ping", "-c", "1", "-W", "0.3", &target]).status.success();
            }
            reached.iter().all(|r| *r).then_some(())
        });
        assert!(
            back.is_some(),
            "round {round}: n2's overlay address not reachable from n1, n3, n4 within 6 s of the restart \
             ({reached:?} after {:?})\n--- n1 ---\n{}\n--- n2 ---\n{}",
            restarted.elapsed(),
            daemons[0].log(),
            daemons[1].log()
        );
        let mac = lab.node(1).mac(&daemons[1].overlay_interface("ovl0"));
        assert_eq!(mac, mac_before, "round {round}: n2's overlay MAC is the same after the restart");
        // n2 announced itself (gratuitous ARP) once its SAs were back (the capture gets a moment
        // to write what it saw).
        std::thread::sleep(Duration::from_millis(500));
        let announced = capture.read(&["-Y", &format!("arp.isgratuitous && arp.src.proto_ipv4 == {target}")]);
        assert!(
            !announced.trim().is_empty(),
            "round {round}: n1 saw no gratuitous ARP from n2 ({target}) on {n1_overlay}; its ARP frames:\n{}\n\
             n1's drops: {:#}\n--- n1 ---\n{}\n--- n2 ---\n{}",
            capture.read(&[]),
            daemons[0].ikectl_json(&["drops"]),
            daemons[0].log(),
            daemons[1].log()
        );
    }
}

/// Whether `d`'s one peer is keyed by an established IKE SA (`ikectl peers`).
fn established_with_peer(d: &Meshd) -> bool {
    d.ikectl_json(&["peers"])[0]["keying"] == "ike: established"
}

/// n1's underlay link goes down (its switch port: n1 sees the carrier go), first for 10 s (the SAs
/// outlive it), then for 20 s: longer than the liveness checks (dpd 2 s, then 0.5+1+2+4+8 s of
/// retransmissions) give a silent peer, so the SAs are gone and retries wait. Each time the link is
/// back, both nodes have an IKE SA with the other within 2 s, without overlay traffic to prompt
/// them (ESP for an unknown SPI would), and n1 pings n2 through the overlay.
///
/// Without renegotiating on the kernel's link and route reports, this passed mostly (about 1.2 s
/// after outages of 10 to 31 s) but failed when the SAs had given up shortly before the link came
/// back: the next timed attempt was up to 5 s away (one run: 2.1 s after a 20 s outage).
#[test]
fn after_a_link_outage_the_pair_is_back_within_two_seconds_of_the_link() {
    require_root();
    let _one_at_a_time = one_at_a_time();
    let lab = Lab::new("nhln", 2);
    let mesh = MeshFile::builder(&lab).ike().extra("[ike]\ndpd = \"2s\"\n").write();
    let daemons = start_all(&lab, mesh.path());
    let target = lab.overlay_addr(1).to_string();
    let up = wait_until(Duration::from_secs(20), || lab.node(0).ping(&target, 1).status.success().then_some(()));
    assert!(up.is_some(), "the pair did not come up\n{}", daemons[0].log());
    for outage in [10, 20] {
        lab.switch().run_ok(["ip", "link", "set", "p1", "down"]);
        std::thread::sleep(Duration::from_secs(outage));
        lab.switch().run_ok(["ip", "link", "set", "p1", "up"]);
        let link_back = Instant::now();
        // No overlay traffic meanwhile: ESP for an unknown SPI would make the peer renegotiate.
        // Short probes, again and again: the first one may wait for the underlay's and the
        // overlay's neighbour entries, which went stale while the link was down.
        let reaches_n2 = || {
            let probe = lab.node(0).exec(["ping", "-n", "-c", "1", "-W", "1", &target]);
            probe.status.success()
        };
        let back = wait_until(MAX_OUTAGE, || (daemons.iter().all(established_with_peer) && reaches_n2()).then_some(()));
        assert!(
            back.is_some(),
            "after {outage} s down, n1 could not reach n2 within {MAX_OUTAGE:?} of its link coming back ({:?})\n\
             --- n1 ---\n{}\n--- n2 ---\n{}",
            link_back.elapsed(),
            daemons[0].log(),
            daemons[1].log()
        );
    }
}

/// Once the pair is up, n1's own firewall drops what it sends to UDP 500 and 4500 (sendmsg fails
/// with EPERM, as it fails with ENOBUFS when the neighbour table is full): `ikectl ping` names
/// the refused sends, n1 counts them per peer and errno in `ikectl peers` and the metrics, and
/// when the liveness checks (dpd 2 s) give up, the keying state says the messages could not be
/// sent, not that the peer does not answer.
#[test]
fn send_errors_are_counted_per_peer_and_reason_and_named() {
    require_root();
    let _one_at_a_time = one_at_a_time();
    let lab = Lab::new("nhse", 2);
    let mesh =
        MeshFile::builder(&lab).ike().extra("[ike]\ndpd = \"2s\"\n\n[metrics]\nlisten = \"127.0.0.1:9469\"\n").write();
    let daemons = start_all(&lab, mesh.path());
    let n1 = &daemons[0];
    let up = wait_until(Duration::from_secs(20), || established_with_peer(n1).then_some(()));
    assert!(up.is_some(), "the pair did not come up\n{}", n1.log());
    lab.node(0).run_ok(["nft", "add table inet block"]);
    lab.node(0).run_ok(["nft", "add chain inet block out { type filter hook output priority 0 ; }"]);
    lab.node(0).run_ok(["nft", "add rule inet block out udp dport { 500, 4500 } drop"]);

    let ping = n1.ikectl(&["--json", "ping", "n2", "--count", "2"]);
    let report: serde_json::Value = serde_json::from_slice(&ping.stdout).expect("ikectl ping --json");
    let said = report["verdicts"].to_string();
    assert!(!ping.status.success() && said.contains("refused") && said.contains("EPERM"), "{report:#}");

    let failed = wait_until(Duration::from_secs(30), || {
        let peer = n1.ikectl_json(&["peers"])[0].clone();
        let keying = peer["keying"].as_str().unwrap_or_default().to_string();
        (keying != "ike: established" && keying != "ike: connecting").then_some(peer)
    });
    let peer = failed.unwrap_or_else(|| panic!("n1's IKE with n2 did not fail\n{}", n1.log()));
    let keying = peer["keying"].as_str().unwrap_or_default();
    assert!(keying.contains("could not be sent") && keying.contains("EPERM"), "{peer:#}");
    assert!(!keying.contains("no answer"), "{peer:#}");
    assert!(peer["send_errors"]["EPERM"].as_u64().is_some_and(|n| n >= 2), "{peer:#}");
    let text = String::from_utf8_lossy(&n1.ikectl(&["peers"]).stdout).to_string();
    assert!(text.contains("EPERM="), "ikectl peers shows the send errors:\n{text}");
    let metrics = lab.node(0).run_stdout(["curl", "-s", "http://127.0.0.1:9469/metrics"]);
    assert!(metrics.contains("meshd_send_errors_total{reason=\"EPERM\",peer=\"n2\"}"), "{metrics}");
}
