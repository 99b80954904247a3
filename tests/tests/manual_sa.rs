//! Multi-node tests of meshd with manually keyed SAs (`[[manual_sa]]`): overlay pings for each
//! encapsulation, mode, cipher and underlay family; ARP through flooding; what the wire shows
//! (and what tshark decrypts with the same keys); wrong keys; replays; the control socket.
//!
//! Each test uses its own namespace prefix, so the tests of this file run in parallel.
//! Run: `cargo build --workspace && sudo -E cargo test -p meshd-lab --test manual_sa`.

use std::collections::BTreeSet;
use std::time::Duration;

use meshd_lab::lab::Family;
use meshd_lab::meshfile::{spi_for, OVERLAY_NAME};
use meshd_lab::util::{describe_output, random_bytes, wait_until};
use meshd_lab::{
    fix_udp_checksum, inject_frame, require_root, spawn_meshd, start_all, Capture, Lab, MeshFile, Meshd, Netns,
};
use serde_json::Value;

struct Case {
    prefix: &'static str,
    family: Family,
    encap: &'static str,
    mode: &'static str,
    cipher: &'static str,
}

/// Count for `reason` in a `{reason: count}` map (absent = 0).
fn count(map: &Value, reason: &str) -> u64 {
    map.get(reason).and_then(Value::as_u64).unwrap_or(0)
}

/// The SA of `sa list` output for `peer` in `direction` ("in" / "out").
fn find_sa<'a>(sas: &'a Value, peer: &str, direction: &str) -> &'a Value {
    sas["child_sas"]
        .as_array()
        .unwrap_or_else(|| panic!("`sa list` has no child_sas array: {sas}"))
        .iter()
        .find(|sa| sa["peer"].as_str() == Some(peer) && sa["direction"].as_str() == Some(direction))
        .unwrap_or_else(|| panic!("no {direction}bound SA for peer {peer} in `sa list`: {sas:#}"))
}

/// `ip -j neigh` entry for `addr` on `dev`, if any (entries without a link-layer address,
/// e.g. INCOMPLETE or FAILED, count as none).
fn neighbour(ns: &Netns, dev: &str, addr: &str) -> Option<(String, Vec<String>)> {
    let out = ns.run_stdout(["ip", "-j", "neigh", "show", "dev", dev, "to", addr]);
    let entries: Value = serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).expect("ip -j neigh");
    entries.as_array()?.iter().find_map(|e| {
        let mac = e["lladdr"].as_str()?.to_lowercase();
        let states = e["state"].as_array().map(|s| s.iter().filter_map(|x| x.as_str().map(String::from)).collect());
        Some((mac, states.unwrap_or_default()))
    })
}

fn has_address(ns: &Netns, dev: &str, addr: &str) -> bool {
    ns.run_stdout(["ip", "-o", "addr", "show", "dev", dev]).contains(&format!(" {addr}/"))
}

fn ping_ok(ns: &Netns, addr: &str, daemons: &[Meshd], what: &str) {
    let out = ns.ping(addr, 3);
    if !out.status.success() {
        let drops: Vec<String> =
            daemons.iter().map(|d| format!("{}: {}", d.node(), d.ikectl_json(&["drops"]))).collect();
        panic!(
            "{what}: ping {addr} from {} failed\n{}\ndrops:\n{}",
            ns.name(),
            describe_output(&out),
            drops.join("\n")
        );
    }
}

/// 3 nodes, manual SAs: every node pings every other node's overlay address; ARP resolves
/// through flooding; the wire carries only ESP; AES-GCM traffic decrypts in tshark to VXLAN
/// VNI 4242 with the inner ICMP echo; `ikectl` shows the SAs with their traffic.
fn ping_mesh(case: Case) {
    require_root();
    let lab = Lab::builder(case.prefix).nodes(3).family(case.family).build();
    let mesh = MeshFile::builder(&lab).encap(case.encap).mode(case.mode).cipher(case.cipher).write();
    let daemons = start_all(&lab, mesh.path());
    let ifaces: Vec<String> = daemons.iter().map(|d| d.overlay_interface(OVERLAY_NAME)).collect();

    for (i, d) in daemons.iter().enumerate() {
        let status = d.ikectl_json(&["status"]);
        assert_eq!(status["node"].as_str(), Some(lab.node_name(i).as_str()), "status: {status}");
        assert_eq!(status["peers_configured"].as_u64(), Some(2), "status: {status}");
        assert_eq!(status["peers_with_sas"].as_u64(), Some(2), "manual SAs are installed at start: {status}");
        let overlay_addr = lab.overlay_addr(i).to_string();
        assert!(lab.node(i).has_link(&ifaces[i]), "{}: no overlay interface {}", d.node(), ifaces[i]);
        assert!(
            has_address(lab.node(i), &ifaces[i], &overlay_addr),
            "{}: {overlay_addr} not on {}",
            d.node(),
            ifaces[i]
        );
    }

    // ARP: nothing known before the first ping.
    let n2_addr = lab.overlay_addr(1).to_string();
    assert_eq!(neighbour(lab.node(0), &ifaces[0], &n2_addr), None, "n1 knows n2's overlay MAC before any ping");

    let mut capture = Capture::start(lab.switch(), "br0");
    for i in 0..lab.len() {
        for j in 0..lab.len() {
            if i != j {
                let what = format!("{} {}+{} {}", case.cipher, case.encap, case.mode, lab.node_name(i));
                ping_ok(lab.node(i), &lab.overlay_addr(j).to_string(), &daemons, &what);
            }
        }
    }
    capture.stop();

    // ARP resolved through the flooded request: n1 has n2's overlay MAC.
    let n2_mac = lab.node(1).mac(&ifaces[1]).to_lowercase();
    let (mac, states) = neighbour(lab.node(0), &ifaces[0], &n2_addr)
        .unwrap_or_else(|| panic!("n1 has no neighbour entry for {n2_addr}"));
    assert_eq!(mac, n2_mac, "n1's ARP entry for {n2_addr} is n2's overlay MAC");
    assert!(
        states.iter().any(|s| ["REACHABLE", "STALE", "DELAY", "PROBE"].contains(&s.as_str())),
        "n1's neighbour entry for {n2_addr} is in state {states:?}"
    );

    // n1 learned n2's overlay MAC behind peer n2.
    let fdb = daemons[0].ikectl_json(&["fdb"]);
    let learned = fdb.as_array().map(|entries| {
        entries.iter().any(|e| {
            e["mac"].as_str().map(str::to_lowercase).as_deref() == Some(n2_mac.as_str())
                && e["peer"].as_str() == Some("n2")
                && e["vni"].as_u64() == Some(4242)
        })
    });
    assert_eq!(learned, Some(true), "n1's fdb has no entry {n2_mac} -> n2 (vni 4242): {fdb:#}");

    // The wire: ESP only, never plaintext VXLAN.
    let plaintext = capture.read(&["-Y", "udp.port == 4790 || vxlan"]);
    assert_eq!(plaintext.trim(), "", "plaintext VXLAN on the underlay:\n{plaintext}");
    let esp = capture.read(&["-Y", "esp && !icmp"]);
    assert!(esp.lines().count() >= 6 * 3 * 2, "expected ESP for 6 x 3 echo requests and replies, got:\n{esp}");
    if case.encap == "udp" {
        assert_eq!(capture.read(&["-Y", "esp && !udp.port == 4500 && !icmp"]).trim(), "", "ESP outside UDP 4500");
    } else {
        assert_eq!(capture.read(&["-Y", "udp.port == 4500"]).trim(), "", "encap esp, yet UDP 4500 on the wire");
        // Raw ESP over IPv4 leaves through each worker's AF_PACKET TX ring once the peer's MAC
        // is known (a packet socket of protocol 0: it only sends), with the headers the raw
        // socket would have written: DF, no fragment, identification 0, TTL 64.
        if case.family == Family::V4 {
            for (i, d) in daemons.iter().enumerate() {
                let sockets = lab.node(i).run_stdout(["cat", "/proc/net/packet"]);
                let tx_rings = sockets.lines().skip(1).filter(|l| l.split_whitespace().nth(3) == Some("0000")).count();
                assert!(tx_rings >= 1, "{}: no AF_PACKET TX ring after the pings:\n{sockets}", d.node());
            }
            let odd = capture.read(&[
                "-Y",
                "esp && !icmp && !(ip.flags.df == 1 && ip.frag_offset == 0 && ip.id == 0 && ip.ttl == 64)",
            ]);
            assert_eq!(odd.trim(), "", "ESP with other IP header fields than the raw socket writes:\n{odd}");
        }
    }

    // Decrypt with the same keys (tshark 4.0 does AES-GCM only).
    if case.cipher == "aes256gcm16" {
        let decrypted = capture.read_decrypted(
            &mesh.esp_keys(),
            &["-Y", "vxlan.vni == 4242 && icmp.type == 8", "-T", "fields", "-e", "esp.spi", "-e", "esp.icv_good"],
        );
        let spis: BTreeSet<String> = decrypted.lines().filter_map(|l| l.split('\t').next()).map(String::from).collect();
        let expected: BTreeSet<String> = mesh.sas().iter().map(|sa| sa.spi_text()).collect();
        assert_eq!(spis, expected, "tshark decrypted echo requests (VNI 4242) on these SPIs:\n{decrypted}");
        assert!(
            decrypted.lines().all(|l| l.ends_with("\t1")),
            "every decrypted packet's ICV verifies (esp.icv_good):\n{decrypted}"
        );
    }

    // ikectl: every SA with the configured cipher, mode, encap and SPI, and traffic on it.
    for (i, d) in daemons.iter().enumerate() {
        let sas = d.ikectl_json(&["sa", "list"]);
        for j in 0..lab.len() {
            if i == j {
                continue;
            }
            let peer = lab.node_name(j);
            for (direction, spi) in [("out", spi_for(i, j)), ("in", spi_for(j, i))] {
                let sa = find_sa(&sas, &peer, direction);
                let ctx = format!("{}: {direction} SA for {peer}: {sa:#}", d.node());
                assert_eq!(sa["spi"].as_str(), Some(format!("0x{spi:08x}").as_str()), "{ctx}");
                assert_eq!(sa["cipher"].as_str(), Some(case.cipher), "{ctx}");
                assert_eq!(sa["mode"].as_str(), Some(case.mode), "{ctx}");
                assert_eq!(sa["encap"].as_str(), Some(case.encap), "{ctx}");
                assert_eq!(sa["origin"].as_str(), Some("manual"), "{ctx}");
                assert!(sa["packets"].as_u64().unwrap_or(0) >= 3, "{ctx}");
                assert!(sa["bytes"].as_u64().unwrap_or(0) > 0, "{ctx}");
                if direction == "in" {
                    assert!(sa["replay"]["highest_sequence"].as_u64().unwrap_or(0) >= 3, "{ctx}");
                } else {
                    assert!(sa["sequence"].as_u64().unwrap_or(0) >= 3, "{ctx}");
                }
            }
        }
        let drops = d.ikectl_json(&["drops"]);
        for reason in ["authentication", "replay", "unknown_spi", "bad_padding", "malformed"] {
            assert_eq!(count(&drops["by_reason"], reason), 0, "{}: unexpected {reason} drops: {drops:#}", d.node());
        }
    }
}

#[test]
fn ping_udp_transport_aes_v4() {
    ping_mesh(Case { prefix: "msut4", family: Family::V4, encap: "udp", mode: "transport", cipher: "aes256gcm16" });
}

#[test]
fn ping_udp_transport_chacha_v4() {
    ping_mesh(Case {
        prefix: "msuc4",
        family: Family::V4,
        encap: "udp",
        mode: "transport",
        cipher: "chacha20poly1305",
    });
}

#[test]
fn ping_udp_tunnel_chacha_v4() {
    ping_mesh(Case { prefix: "msun4", family: Family::V4, encap: "udp", mode: "tunnel", cipher: "chacha20poly1305" });
}

#[test]
fn ping_esp_transport_aes_v4() {
    ping_mesh(Case { prefix: "mset4", family: Family::V4, encap: "esp", mode: "transport", cipher: "aes256gcm16" });
}

#[test]
fn ping_esp_tunnel_aes_v4() {
    ping_mesh(Case { prefix: "msen4", family: Family::V4, encap: "esp", mode: "tunnel", cipher: "aes256gcm16" });
}

#[test]
fn ping_udp_transport_aes_v6() {
    ping_mesh(Case { prefix: "msut6", family: Family::V6, encap: "udp", mode: "transport", cipher: "aes256gcm16" });
}

#[test]
fn ping_esp_tunnel_aes_v6() {
    ping_mesh(Case { prefix: "msen6", family: Family::V6, encap: "esp", mode: "tunnel", cipher: "aes256gcm16" });
}

/// Node 3 has another inbound key for n1 -> n3 than n1 uses: n1 cannot reach n3, and n3 counts
/// authentication drops on that SA.
#[test]
fn wrong_key_is_an_authentication_drop() {
    require_root();
    let lab = Lab::new("mswk", 3);
    let mesh = MeshFile::builder(&lab).write();
    let n3_config = mesh.variant_with_key("n3.toml", 0, 2, &random_bytes(36));
    let daemons = [
        Meshd::start(lab.node(0), mesh.path(), "n1"),
        Meshd::start(lab.node(1), mesh.path(), "n2"),
        Meshd::start(lab.node(2), &n3_config, "n3"),
    ];

    ping_ok(lab.node(0), "10.244.0.2", &daemons, "n1 -> n2 with good keys");
    let out = lab.node(0).ping("10.244.0.3", 3);
    assert!(!out.status.success(), "n1 -> n3 works although n3 has a wrong key for it\n{}", describe_output(&out));

    let n3 = &daemons[2];
    let sas = n3.ikectl_json(&["sa", "list"]);
    let from_n1 = find_sa(&sas, "n1", "in");
    assert_eq!(from_n1["spi"].as_str(), Some("0x00001103"), "{from_n1:#}");
    assert!(
        count(&from_n1["drops"], "authentication") > 0,
        "n3's inbound SA from n1 has no authentication drops: {from_n1:#}"
    );
    assert_eq!(from_n1["packets"].as_u64(), Some(0), "n3 accepted packets on the SA with the wrong key: {from_n1:#}");

    let drops = n3.ikectl_json(&["drops"]);
    assert!(count(&drops["by_reason"], "authentication") > 0, "n3 drops: {drops:#}");
    assert!(count(&drops["by_peer"]["n1"], "authentication") > 0, "n3 drops not attributed to n1: {drops:#}");
    assert!(drops["total"].as_u64().unwrap_or(0) >= count(&drops["by_reason"], "authentication"), "{drops:#}");
    let recent_auth = drops["recent"]
        .as_array()
        .map(|r| {
            r.iter().any(|d| d["reason"].as_str() == Some("authentication") && d["spi"].as_str() == Some("0x00001103"))
        })
        .unwrap_or(false);
    assert!(recent_auth, "no recent authentication drop on SPI 0x00001103: {drops:#}");

    // The other direction and the other pairs are unaffected.
    ping_ok(lab.node(2), "10.244.0.2", &daemons, "n3 -> n2");
    let n1_drops = daemons[0].ikectl_json(&["drops"]);
    assert_eq!(count(&n1_drops["by_reason"], "authentication"), 0, "n1 drops: {n1_drops:#}");
}

/// A captured ESP packet from n1, sent again byte for byte, is dropped by n2 as a replay.
fn replay_is_dropped(prefix: &str, encap: &str) {
    require_root();
    let lab = Lab::new(prefix, 2);
    let mesh = MeshFile::builder(&lab).encap(encap).write();
    let daemons = start_all(&lab, mesh.path());

    let mut capture = Capture::start(lab.node(0), "eth0");
    ping_ok(lab.node(0), "10.244.0.2", &daemons, "n1 -> n2");
    capture.stop();

    let listing = capture.read(&[
        "-Y",
        "ip.src == 198.18.0.1 && ip.dst == 198.18.0.2 && esp && !icmp",
        "-T",
        "fields",
        "-e",
        "frame.number",
        "-e",
        "esp.spi",
        "-e",
        "esp.sequence",
    ]);
    let first = listing.lines().next().unwrap_or_else(|| panic!("no ESP n1 -> n2 captured on n1's eth0"));
    let fields: Vec<&str> = first.split('\t').collect();
    let (number, spi, sequence): (usize, &str, u64) =
        (fields[0].parse().unwrap(), fields[1], fields[2].parse().unwrap());
    assert_eq!(spi, "0x00001102", "{listing}");
    let mut frame = capture.frames()[number - 1].clone();
    // Captured before checksum offload filled it in: give it the checksum the wire would carry.
    fix_udp_checksum(&mut frame);

    let (n1, n2) = (&daemons[0], &daemons[1]);
    let before = n2.ikectl_json(&["drops"]);
    assert_eq!(count(&before["by_reason"], "replay"), 0, "replay drops before the replay: {before:#}");
    // n1 keeps sending now and then on its own (the overlay's IPv6 router solicitations and MLD
    // reports, flooded to n2), so n2's received count alone may grow during the test: what must
    // not change is how many of n1's sent packets n2 has not counted as received.
    let in_flight = || {
        wait_until(Duration::from_secs(5), || {
            let read = || {
                let sent = find_sa(&n1.ikectl_json(&["sa", "list"]), "n2", "out")["packets"].as_u64();
                let received = find_sa(&n2.ikectl_json(&["sa", "list"]), "n1", "in")["packets"].as_u64();
                sent.zip(received).map(|(sent, received)| sent as i64 - received as i64)
            };
            // Settled: the same difference twice in a row, 100 ms apart.
            let first = read()?;
            std::thread::sleep(Duration::from_millis(100));
            (read()? == first).then_some(first)
        })
        .expect("n1's sent and n2's received counts of their SA settle")
    };
    let uncounted_before = in_flight();

    // Inject the frame on n1's eth0, exactly as captured (see meshd_lab::inject).
    inject_frame(lab.node(0), "eth0", &frame);

    let after = wait_until(Duration::from_secs(5), || {
        let drops = n2.ikectl_json(&["drops"]);
        (count(&drops["by_reason"], "replay") > 0).then_some(drops)
    })
    .unwrap_or_else(|| {
        panic!(
            "n2 counted no replay drop for the re-sent ESP packet (SPI {spi}, seq {sequence}): {:#}",
            n2.ikectl_json(&["drops"])
        )
    });
    assert_eq!(count(&after["by_reason"], "replay"), 1, "one replayed packet, one drop: {after:#}");
    assert_eq!(count(&after["by_peer"]["n1"], "replay"), 1, "replay drop attributed to n1: {after:#}");
    let record =
        after["recent"].as_array().and_then(|r| r.iter().rev().find(|d| d["reason"].as_str() == Some("replay")));
    let record = record.unwrap_or_else(|| panic!("no replay in recent drops: {after:#}"));
    assert_eq!(record["spi"].as_str(), Some("0x00001102"), "{record:#}");
    assert_eq!(record["sequence"].as_u64(), Some(sequence), "{record:#}");

    let sa = n2.ikectl_json(&["sa", "list"]);
    let from_n1 = find_sa(&sa, "n1", "in");
    assert_eq!(count(&from_n1["drops"], "replay"), 1, "{from_n1:#}");
    assert_eq!(in_flight(), uncounted_before, "the replayed packet was not counted as received: {from_n1:#}");
}

#[test]
fn replay_is_dropped_udp() {
    replay_is_dropped("msrpu", "udp");
}

#[test]
fn replay_is_dropped_esp() {
    replay_is_dropped("msrpe", "esp");
}

/// Raw ESP leaves through the AF_PACKET TX ring once the peer's next hop is known, over IPv4
/// and IPv6 underlays: the ring's packets pass no netfilter output hook (an nftables `output`
/// counter on n1 sees fewer ESP packets than n1's SA sends; docs/performance.md, "Raw ESP"), yet
/// they still show in a capture on the sending node's own underlay interface (operators run
/// tcpdump there): every ESP packet n1's outbound SA counts is seen on n1's eth0. (With
/// PACKET_QDISC_BYPASS the ring's packets skip the interface's taps and only the first packets,
/// sent through the raw socket before the next hop is known, would show.)
fn raw_esp_leaves_through_the_ring(prefix: &str, family: Family) {
    require_root();
    let lab = Lab::builder(prefix).nodes(2).family(family).build();
    let mesh = MeshFile::builder(&lab).encap("esp").write();
    let daemons = start_all(&lab, mesh.path());
    let n2_overlay = lab.overlay_addr(1).to_string();
    ping_ok(lab.node(0), &n2_overlay, &daemons, "n1 -> n2, so that n1 looks up its next hop");
    let n1 = &daemons[0];
    let ring_ready = wait_until(Duration::from_secs(5), || {
        let sockets = lab.node(0).run_stdout(["cat", "/proc/net/packet"]);
        sockets.lines().skip(1).any(|l| l.split_whitespace().nth(3) == Some("0000")).then_some(())
    });
    assert!(ring_ready.is_some(), "n1 opened no AF_PACKET TX ring:\n{}", n1.log());
    // The next hop is looked up within a second of the first packet.
    std::thread::sleep(Duration::from_millis(1500));

    let n1_ns = lab.node(0);
    n1_ns.run_ok(["nft", "add", "table", "inet", prefix]);
    n1_ns.run_ok(["nft", &format!("add chain inet {prefix} output {{ type filter hook output priority 0; }}")]);
    n1_ns.run_ok(["nft", "add", "rule", "inet", prefix, "output", "meta", "l4proto", "esp", "counter"]);
    let sent = || find_sa(&n1.ikectl_json(&["sa", "list"]), "n2", "out")["packets"].as_u64().unwrap_or(0);
    let mut capture = Capture::start(n1_ns, "eth0");
    let before = sent();
    let ping = n1_ns.ping(&n2_overlay, 20);
    assert!(ping.status.success(), "n1 -> n2 during the capture: {}", describe_output(&ping));
    let after = sent();
    capture.stop();
    let ip = match family {
        Family::V4 => "ip",
        Family::V6 => "ipv6",
    };
    let (n1_address, n2_address) = (lab.addr(0), lab.addr(1));
    let captured = capture
        .read(&["-Y", &format!("{ip}.src == {n1_address} && {ip}.dst == {n2_address} && esp && !icmp && !icmpv6")]);
    let ruleset = n1_ns.run_stdout(["nft", "list", "table", "inet", prefix]);
    let through_output: u64 = ruleset
        .split_whitespace()
        .skip_while(|word| *word != "packets")
        .nth(1)
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no packet counter in:\n{ruleset}"));
    assert!(after >= before + 20, "n1 sent {} ESP packets for 20 pings", after - before);
    assert!(
        through_output * 2 < after - before,
        "most of n1's {} ESP packets leave through the ring, past the output hook, yet it counted {through_output}",
        after - before
    );
    // At least: the capture also sees what n1 sent between its start and the first count.
    assert!(
        captured.lines().count() as u64 >= after - before,
        "every one of the {} ESP packets n1 sent shows on its eth0; captured:\n{captured}",
        after - before
    );
}

#[test]
fn raw_esp_leaves_through_the_ring_v4() {
    raw_esp_leaves_through_the_ring("msrc4", Family::V4);
}

#[test]
fn raw_esp_leaves_through_the_ring_v6() {
    raw_esp_leaves_through_the_ring("msrc6", Family::V6);
}

/// A second meshd on the same control socket refuses to start and leaves the first alone;
/// SIGTERM removes the TAP interface and the socket file.
#[test]
fn second_instance_refused_and_sigterm_cleans_up() {
    require_root();
    let lab = Lab::new("mssi", 2);
    let mesh = MeshFile::builder(&lab).write();
    let mut first = Meshd::start(lab.node(0), mesh.path(), "n1");
    let iface = first.overlay_interface(OVERLAY_NAME);
    assert!(lab.node(0).has_link(&iface));

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("second.log");
    let mut second = spawn_meshd(lab.node(0), mesh.path(), "n1", first.socket(), &log, &[]);
    let status = wait_until(Duration::from_secs(10), || second.try_wait().ok().flatten());
    let second_log = std::fs::read_to_string(&log).unwrap_or_default();
    let status = match status {
        Some(status) => status,
        None => {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second meshd on the same control socket is still running after 10 s; its log:\n{second_log}");
        }
    };
    assert!(!status.success(), "second meshd exited with {status}; log:\n{second_log}");
    let lower = second_log.to_lowercase();
    let says_in_use = lower.contains("in use") || (lower.contains("another meshd") && lower.contains("running"));
    assert!(
        says_in_use && lower.contains(&first.socket().display().to_string().to_lowercase()),
        "second meshd does not say that the socket is in use by a running meshd:\n{second_log}"
    );
    assert!(first.is_running(), "the first meshd died when a second one started");
    assert!(first.ikectl(&["status"]).status.success(), "the first meshd's socket no longer answers");
    assert!(lab.node(0).has_link(&iface), "the second meshd removed the first one's {iface}");

    let socket = first.socket().to_path_buf();
    let exit = first.kill();
    assert!(exit.success(), "meshd exited with {exit} on SIGTERM; log:\n{}", first.log());
    assert!(!socket.exists(), "control socket {} still exists after SIGTERM", socket.display());
    let gone = wait_until(Duration::from_secs(2), || (!lab.node(0).has_link(&iface)).then_some(()));
    assert!(gone.is_some(), "{iface} still exists after SIGTERM");
}
