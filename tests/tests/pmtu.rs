//! Path MTU (docs/mtu.md): two nodes behind a router whose link to n2 carries less than the nodes
//! think and which drops every ICMP "too big", so only meshd's own probes can find the path.
//! Large overlay packets get meshd's ICMP answer instead of vanishing, TCP adapts, and no IP
//! fragment ever crosses the underlay.
//!
//! Run: `cargo build --workspace && sudo -E cargo test -p meshd-lab --test pmtu`.

use std::ops::RangeInclusive;
use std::process::Stdio;
use std::time::Duration;

use meshd_lab::util::{describe_output, wait_until};
use meshd_lab::{require_root, tcp_transfer, Capture, Family, MeshFile, Meshd, Netns, RoutedPair};
use serde_json::Value;

/// What the fragments of either IP version look like to tshark.
const FRAGMENTS: &str = "ip.flags.mf == 1 || ip.frag_offset > 0 || ipv6.fraghdr";

fn peer(daemon: &Meshd) -> Value {
    daemon.ikectl_json(&["peers"])[0].clone()
}

/// Waits until `daemon` has probed its peer's path to a size in `path_mtu`, and checks that the
/// overlay MTU it reports is that minus `overhead`.
///
/// The router's side checks its MTU exactly when it forwards (n1 -> n2), but a veth receiving
/// (n2 -> router) lets 4 bytes more in (room for a VLAN tag): n2's path may probe to MTU + 4.
fn wait_probed(daemon: &Meshd, path_mtu: RangeInclusive<u64>, overhead: u64) -> Value {
    let found = wait_until(Duration::from_secs(60), || {
        let peer = peer(daemon);
        let probed = peer["path_mtu"].as_u64().filter(|mtu| path_mtu.contains(mtu));
        (peer["path_mtu_source"] == "probed" && probed.is_some()).then_some(peer)
    });
    let peer = found.unwrap_or_else(|| {
        panic!(
            "{}: path MTU not probed to {path_mtu:?} within 60 s: {:#}\n{}",
            daemon.node(),
            peer(daemon),
            daemon.log()
        )
    });
    let path = peer["path_mtu"].as_u64().unwrap_or(0);
    assert_eq!(peer["overlay_mtu"].as_u64(), Some(path - overhead), "{}: {peer:#}", daemon.node());
    peer
}

/// Captures on both of the router's links.
fn capture_both(pair: &RoutedPair) -> Vec<Capture> {
    (0..2).map(|i| Capture::start(pair.router(), &pair.router_iface(i))).collect()
}

/// No IP fragment on either link, and every IPv4 ESP packet carries DF.
fn assert_no_fragments(captures: &mut [Capture]) {
    for capture in captures {
        capture.stop();
        let esp = capture.read(&["-Y", "esp"]);
        assert!(!esp.trim().is_empty(), "the capture saw the ESP traffic");
        let fragments = capture.read(&["-Y", FRAGMENTS]);
        assert!(fragments.trim().is_empty(), "IP fragments on the underlay:\n{fragments}");
        let without_df = capture.read(&["-Y", "esp && ip && ip.flags.df == 0"]);
        assert!(without_df.trim().is_empty(), "IPv4 ESP packets without DF:\n{without_df}");
    }
}

/// 20 MB from n1 to n2 across the overlay arrive intact; `during` runs while they travel.
fn transfer_intact(pair: &RoutedPair, pause: &str, during: impl FnOnce()) {
    let (sent, received) = tcp_transfer(pair.node(0), pair.node(1), pause, during);
    assert!(!sent.is_empty(), "the sender finished");
    assert_eq!(received, sent, "what arrived differs from what was sent");
}

/// ping -M do with `payload` bytes (IP packet = payload + 28).
fn ping_df(ns: &Netns, payload: usize) -> std::process::Output {
    ns.exec(["ping", "-M", "do", "-c", "3", "-i", "0.3", "-W", "2", "-s", &payload.to_string(), "10.244.0.2"])
}

fn silent_black_hole(prefix: &str, family: Family, ike: bool, overhead: usize, extra: &[&str]) {
    let overlay_mtu = 1280 - overhead;
    require_root();
    let pair = RoutedPair::new(prefix, family, 1500);
    pair.set_router_mtu(1, 1280);
    let mesh = MeshFile::for_addresses(vec![pair.addr(0), pair.addr(1)]);
    let mesh = if ike { mesh.ike() } else { mesh }.write();
    let daemons = [
        Meshd::start_with(pair.node(0), mesh.path(), "n1", extra),
        Meshd::start_with(pair.node(1), mesh.path(), "n2", extra),
    ];
    wait_probed(&daemons[0], 1280..=1280, overhead as u64);
    wait_probed(&daemons[1], 1280..=1284, overhead as u64);
    let mut captures = capture_both(&pair);

    let fits = ping_df(pair.node(0), overlay_mtu - 28);
    assert!(fits.status.success(), "an overlay packet of {overlay_mtu} bytes fits\n{}", describe_output(&fits));
    let too_big = ping_df(pair.node(0), overlay_mtu - 27);
    let text = describe_output(&too_big);
    assert!(!too_big.status.success(), "one byte more does not\n{text}");
    assert!(text.contains(&format!("mtu = {overlay_mtu}")) || text.contains(&format!("mtu={overlay_mtu}")), "{text}");
    let drops = daemons[0].ikectl_json(&["drops"]);
    assert!(drops["by_reason"]["mtu_exceeded"].as_u64().unwrap_or(0) > 0, "{drops:#}");

    transfer_intact(&pair, "0", || {});
    assert_no_fragments(&mut captures);

    let status = daemons[0].ikectl(&["status"]);
    let text = describe_output(&status);
    assert!(text.contains("warning: peer n2: path MTU 1280"), "ikectl status warns:\n{text}");
    let peers = describe_output(&daemons[0].ikectl(&["peers"]));
    assert!(peers.contains("1280 (probed)") && peers.contains(&overlay_mtu.to_string()), "{peers}");
    assert!(pair.dropped_icmp() > 0, "the router dropped its ICMP errors");
}

/// IPv4 underlay, IKE (the peers announce probing in IKE_AUTH).
#[test]
fn a_silent_black_hole_is_probed_and_tcp_adapts_v4() {
    silent_black_hole("pmtu4", Family::V4, true, 92, &[]);
}

/// The same without TAP offloads: no TSO super-frames, every segment is a frame of its own.
#[test]
fn a_silent_black_hole_is_probed_and_tcp_adapts_without_offloads() {
    silent_black_hole("pmtun", Family::V4, false, 92, &["--no-offload"]);
}

/// IPv6 underlay, manual SAs.
#[test]
fn a_silent_black_hole_is_probed_and_tcp_adapts_v6() {
    silent_black_hole("pmtu6", Family::V6, false, 112, &[]);
}

/// The router's link shrinks while a TCP transfer runs: meshd's confirmation probes notice, the
/// transfer completes intact, and still nothing is fragmented.
#[test]
fn the_path_shrinks_during_a_transfer() {
    require_root();
    let pair = RoutedPair::new("pmtum", Family::V4, 1500);
    let mesh = MeshFile::for_addresses(vec![pair.addr(0), pair.addr(1)]).ike().write();
    let daemons = [Meshd::start(pair.node(0), mesh.path(), "n1"), Meshd::start(pair.node(1), mesh.path(), "n2")];
    for daemon in &daemons {
        wait_probed(daemon, 1500..=1500, 92);
    }
    let mut captures = capture_both(&pair);
    // About 7 s for 20 MB at one 64 KiB write per 20 ms; the link shrinks after 2 s.
    transfer_intact(&pair, "0.02", || {
        std::thread::sleep(Duration::from_secs(2));
        pair.set_router_mtu(1, 1280);
    });
    assert_no_fragments(&mut captures);
    wait_probed(&daemons[0], 1280..=1280, 92);
    wait_probed(&daemons[1], 1280..=1284, 92);
}

/// A 9000-byte underlay gives an overlay MTU near 8900, and iperf3 runs across it.
#[test]
fn a_jumbo_underlay_gives_a_jumbo_overlay() {
    require_root();
    let pair = RoutedPair::new("pmtuj", Family::V4, 9000);
    let mesh = MeshFile::for_addresses(vec![pair.addr(0), pair.addr(1)]).write();
    let daemons = [Meshd::start(pair.node(0), mesh.path(), "n1"), Meshd::start(pair.node(1), mesh.path(), "n2")];
    let status = daemons[0].ikectl_json(&["status"]);
    let mtu = status["overlays"][0]["mtu"].as_u64().unwrap_or(0);
    assert_eq!(mtu, 9000 - 92, "{status:#}");
    for daemon in &daemons {
        wait_probed(daemon, 9000..=9000, 92);
    }
    let fits = ping_df(pair.node(0), 8908 - 28);
    assert!(fits.status.success(), "{}", describe_output(&fits));
    let mut server = pair.node(1).command(["iperf3", "-s", "-1", "-B", "10.244.0.2"]).stdout(Stdio::null()).spawn();
    let server = server.as_mut().expect("iperf3 server");
    let client = wait_until(Duration::from_secs(10), || {
        let out = pair.node(0).exec(["iperf3", "-c", "10.244.0.2", "-t", "3"]);
        out.status.success().then_some(out)
    });
    let _ = server.kill();
    let _ = server.wait();
    let client = client.expect("iperf3 across the jumbo overlay succeeds");
    let text = String::from_utf8_lossy(&client.stdout);
    assert!(text.contains("receiver"), "{text}");
}

/// `mtu = "auto"` takes the MTU of the link the kernel routes towards the peer, and retunes the
/// overlay interface live when that MTU changes.
#[test]
fn auto_mtu_follows_the_underlay_link() {
    require_root();
    let pair = RoutedPair::new("pmtua", Family::V4, 1500);
    let mesh = MeshFile::for_addresses(vec![pair.addr(0), pair.addr(1)]).write();
    let n1 = Meshd::start(pair.node(0), mesh.path(), "n1");
    let _n2 = Meshd::start(pair.node(1), mesh.path(), "n2");
    let overlay = &n1.ikectl_json(&["status"])["overlays"][0];
    assert_eq!(overlay["mtu"], 1408, "{overlay:#}");
    assert_eq!(overlay["mtu_reason"], "auto: eth0 (route to n2) MTU 1500 - 92 bytes (udp, transport, IPv4)");
    let interface = n1.overlay_interface("ovl0");

    pair.node(0).run_ok(["ip", "link", "set", "eth0", "mtu", "1400"]);
    let retuned = wait_until(Duration::from_secs(20), || {
        let link = pair.node(0).run_stdout(["ip", "link", "show", &interface]);
        let status = n1.ikectl_json(&["status"]);
        (link.contains("mtu 1308 ") && status["overlays"][0]["mtu"] == 1308).then_some(status)
    });
    let status = retuned.unwrap_or_else(|| panic!("ovl0 not retuned to 1308 within 20 s\n{}", n1.log()));
    assert!(status["overlays"][0]["mtu_reason"].as_str().unwrap_or("").contains("MTU 1400"), "{status:#}");
    assert!(n1.log().contains("overlay MTU retuned"), "{}", n1.log());
}

/// Route and link changes reach meshd as the kernel reports them (rtnetlink), not by polling:
/// idle, meshd reads no route; a route's `mtu` or the link's MTU that changes is followed within
/// a second by the peer's path MTU and by the overlay MTU of `mtu = "auto"`.
#[test]
fn route_and_link_changes_are_followed_without_polling() {
    require_root();
    let pair = RoutedPair::new("pmtur", Family::V4, 1500);
    let mesh = MeshFile::for_addresses(vec![pair.addr(0), pair.addr(1)]).write();
    let n1 = Meshd::start(pair.node(0), mesh.path(), "n1");
    let n2 = Meshd::start(pair.node(1), mesh.path(), "n2");
    for daemon in [&n1, &n2] {
        wait_probed(daemon, 1500..=1504, 92);
    }
    let interface = n1.overlay_interface("ovl0");
    let level = n1.ikectl(&["log", "level", "debug", "--module", "pmtu"]);
    assert!(level.status.success(), "{}", describe_output(&level));
    let readings = |log: &str| log.matches("reading the underlay routes").count();

    // Nothing changes: no route is read (the driver used to read them every 2 s). First the
    // overlay interface's IPv6 link-local address and routes settle (reported changes).
    std::thread::sleep(Duration::from_secs(3));
    let before = readings(&n1.log());
    std::thread::sleep(Duration::from_secs(5));
    let idle = readings(&n1.log()) - before;
    assert_eq!(idle, 0, "routes read {idle} times in 5 idle seconds\n{}", n1.log());

    // Follows within a second: the overlay interface's MTU (cheap to look at) and the peer's path.
    let follows = |what: &str, change: &[&str], overlay_mtu: u32, path_mtu: Option<u64>| {
        pair.node(0).run_ok(change);
        let changed = std::time::Instant::now();
        let link = wait_until(Duration::from_secs(1), || {
            let link = pair.node(0).run_stdout(["ip", "link", "show", &interface]);
            link.contains(&format!("mtu {overlay_mtu} ")).then_some(())
        });
        assert!(link.is_some(), "{what}: ovl0 not at MTU {overlay_mtu} within 1 s\n{}", n1.log());
        if let Some(path_mtu) = path_mtu {
            let peer = peer(&n1);
            assert_eq!(peer["path_mtu"].as_u64(), Some(path_mtu), "{what}: {peer:#}\n{}", n1.log());
            assert_eq!(peer["overlay_mtu"].as_u64(), Some(path_mtu - 92), "{what}: {peer:#}");
        }
        eprintln!("{what}: followed after {:?}", changed.elapsed());
    };
    // A route's mtu metric: the kernel's figure caps the probed path at once.
    follows(
        "route mtu 1300",
        &["ip", "route", "replace", "default", "via", "198.18.1.254", "mtu", "1300"],
        1208,
        Some(1300),
    );
    // Back to the link's MTU, and the link shrinks.
    pair.node(0).run_ok(["ip", "route", "replace", "default", "via", "198.18.1.254"]);
    follows("link mtu 1280", &["ip", "link", "set", "eth0", "mtu", "1280"], 1188, Some(1280));
    let status = n1.ikectl_json(&["status"]);
    assert!(status["overlays"][0]["mtu_reason"].as_str().unwrap_or("").contains("MTU 1280"), "{status:#}");
}
