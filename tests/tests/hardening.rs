//! Hostile tenants and a stopped daemon (issue 15): a VM flooding source MACs behind one node
//! costs the other nodes nothing, a VM advertising itself as an IPv6 router changes nothing on
//! the hosts (issue 16), and overlay traffic never leaves in plaintext while meshd is down.
//!
//! Run: `cargo build --workspace && sudo -E cargo test -p meshd-lab --test hardening`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use meshd_lab::inject::fill_icmpv6_checksum;
use meshd_lab::lab::NODE_IFACE;
use meshd_lab::meshfile::OVERLAY_NAME;
use meshd_lab::util::send_signal;
use meshd_lab::{
    meshd_bin, require_root, start_all, wait_until, Capture, Lab, MeshFile, Meshd, Netns, RawSender, SshFleet,
};
use serde_json::Value;

/// Frames a second the generator behind n2 aims at, and for how long.
const FLOOD_RATE: u64 = 100_000;
const FLOOD_SECS: u64 = 20;
/// The most CPU n1's meshd may use while the flood lasts, in percent of one core.
const MAX_N1_CPU_PERCENT: f64 = 50.0;
/// meshd's per-peer quota (daemon/src/fdb.rs `MAX_ENTRIES_PER_PEER`).
const PEER_QUOTA: usize = 4_096;

/// CPU time (user + system, all threads) of a process so far, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let after_name = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
    Duration::from_millis(ticks * 10)
}

/// Sends `rate` broadcast frames a second with random unicast source MACs out of `iface` in
/// `ns` (as a VM behind that interface would) for `duration`; returns how many it sent.
fn flood_source_macs(sender: &RawSender, rate: u64, duration: Duration) -> u64 {
    let mut frame = [0u8; 60];
    frame[..6].copy_from_slice(&[0xff; 6]);
    // IEEE local experimental ethertype: no host stack takes it.
    frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        for _ in 0..1_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes = state.to_be_bytes();
            frame[6..12].copy_from_slice(&bytes[..6]);
            // Unicast, locally administered.
            frame[6] = (frame[6] & 0xfc) | 0x02;
            if sender.send(&frame).is_ok() {
                sent += 1;
            }
        }
        // Paced to the rate; a slower machine just sends as fast as it can.
        let due = Duration::from_micros(sent * 1_000_000 / rate);
        if let Some(ahead) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
    sent
}

fn drops_by_reason(report: &Value, reason: &str) -> u64 {
    report["by_reason"][reason].as_u64().unwrap_or(0)
}

/// Issue 15, finding 2: a generator behind n2 sends 100,000 frames a second with random source
/// MACs for 20 s. Pings between n1 and n3 lose nothing, n1 keeps n3's MAC learned, n2 gets no
/// more than its quota of n1's table, and n1's meshd stays within half a core.
#[test]
fn a_source_mac_flood_behind_one_node_costs_the_others_nothing() {
    require_root();
    let lab = Lab::new("hdfl", 3);
    let mesh = MeshFile::builder(&lab).write();
    let daemons = start_all(&lab, mesh.path());
    let (n1, n2, n3) = (&daemons[0], &daemons[1], &daemons[2]);
    let n3_overlay = lab.overlay_addr(2).to_string();
    let warm_up = lab.node(0).ping(&n3_overlay, 3);
    assert!(warm_up.status.success(), "n1 reaches n3 before the flood: {warm_up:?}");
    let n3_mac = lab.node(2).mac(&n3.overlay_interface(OVERLAY_NAME));

    let sender = RawSender::open(lab.node(1), &n2.overlay_interface(OVERLAY_NAME));
    let n1_pid = n1.pid().expect("n1's meshd runs");
    let (cpu_before, started) = (cpu_time(n1_pid), Instant::now());
    let flood = std::thread::spawn(move || flood_source_macs(&sender, FLOOD_RATE, Duration::from_secs(FLOOD_SECS)));
    // 95 pings 0.2 s apart: the flood's 20 s.
    let pings = lab.node(0).ping(&n3_overlay, 95);
    let sent = flood.join().expect("the flood thread");
    let (cpu, elapsed) = (cpu_time(n1_pid) - cpu_before, started.elapsed());
    let cpu_percent = 100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64();
    let report = n1.ikectl_json(&["drops"]);
    let fdb = n1.ikectl_json(&["fdb"]);
    let entries = fdb.as_array().cloned().unwrap_or_default();
    let behind_n2 = entries.iter().filter(|e| e["peer"] == "n2").count();
    let summary = format!(
        "flood: {sent} frames in {elapsed:?} ({:.0}/s); n1 meshd CPU {cpu_percent:.1}% of a core; \
         n1 learned {behind_n2} MACs behind n2; drops fdb_rate_limited {} fdb_peer_quota {}",
        sent as f64 / elapsed.as_secs_f64(),
        drops_by_reason(&report, "fdb_rate_limited"),
        drops_by_reason(&report, "fdb_peer_quota"),
    );
    println!("{summary}");

    let ping_text = String::from_utf8_lossy(&pings.stdout);
    assert!(pings.status.success() && ping_text.contains(" 0% packet loss"), "{summary}\n{ping_text}");
    assert!(
        entries.iter().any(|e| e["mac"] == n3_mac.as_str() && e["peer"] == "n3"),
        "n3's MAC {n3_mac} stays learned behind n3: {fdb:#}\n{summary}"
    );
    assert!(sent >= 10 * PEER_QUOTA as u64, "the generator got frames out: {summary}");
    assert!(behind_n2 <= PEER_QUOTA, "{summary}");
    assert!(drops_by_reason(&report, "fdb_rate_limited") > 0, "{summary}\n{report:#}");
    assert!(cpu_percent <= MAX_N1_CPU_PERCENT, "{summary}");
}

/// A router advertisement as a tenant VM would send it onto the overlay: from `mac` /
/// fe80::99 to all nodes, router lifetime 1800 s, and an autoconfiguration prefix fd00:10:244::/64.
fn router_advertisement(mac: [u8; 6]) -> Vec<u8> {
    let mut frame = vec![0x33, 0x33, 0, 0, 0, 1];
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0x86, 0xdd]);
    let mut icmp = vec![134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    // Source link-layer address; prefix information (on-link, autonomous, valid 1 day,
    // preferred 4 h).
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&mac);
    icmp.extend_from_slice(&[3, 4, 64, 0xc0, 0, 1, 0x51, 0x80, 0, 0, 0x38, 0x40, 0, 0, 0, 0]);
    icmp.extend_from_slice(&"fd00:10:244::".parse::<std::net::Ipv6Addr>().unwrap().octets());
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[58, 255]);
    frame.extend_from_slice(&"fe80::99".parse::<std::net::Ipv6Addr>().unwrap().octets());
    frame.extend_from_slice(&"ff02::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    frame.extend_from_slice(&icmp);
    fill_icmpv6_checksum(&mut frame);
    frame
}

/// A tenant behind n2 advertises itself as an IPv6 router on the overlay. The advertisement
/// reaches n1's overlay interface (flooded, as any multicast), and n1's host takes neither a
/// default route nor an address from it: the overlay is the tenants' network, not the host's.
#[test]
fn a_router_advertisement_from_a_tenant_changes_nothing_on_the_hosts() {
    require_root();
    let lab = Lab::new("hdra", 2);
    let mesh = MeshFile::builder(&lab).write();
    let daemons = start_all(&lab, mesh.path());
    let n2_overlay = lab.overlay_addr(1).to_string();
    assert!(lab.node(0).ping(&n2_overlay, 2).status.success(), "n1 reaches n2 first");
    let n1_interface = daemons[0].overlay_interface(OVERLAY_NAME);
    let mut capture = Capture::start_with_filter(lab.node(0), &n1_interface, Some("icmp6"));
    let sender = RawSender::open(lab.node(1), &daemons[1].overlay_interface(OVERLAY_NAME));
    let advertisement = router_advertisement([0x02, 0, 0, 0, 0, 0x99]);
    for _ in 0..3 {
        sender.send(&advertisement).expect("send the router advertisement");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Autoconfiguration would have added the route and the address by now.
    std::thread::sleep(Duration::from_secs(1));
    let seen = capture.read(&["-Y", "icmpv6.type == 134 && ipv6.src == fe80::99"]);
    assert!(!seen.trim().is_empty(), "the advertisement did not reach n1's {n1_interface}");
    let routes = lab.node(0).run_stdout(["ip", "-6", "route", "show", "default"]);
    assert!(routes.trim().is_empty(), "n1 took a default route from the overlay: {routes}");
    let addresses = lab.node(0).run_stdout(["ip", "-6", "addr", "show", "dev", &n1_interface]);
    assert!(!addresses.contains("fd00:10:244:"), "n1 autoconfigured an address from the overlay: {addresses}");
}

/// The frames in a capture that tshark's display `filter` selects.
fn count_frames(capture: &mut Capture, filter: &str) -> usize {
    capture.read(&["-Y", filter, "-T", "fields", "-e", "frame.number"]).lines().filter(|l| !l.trim().is_empty()).count()
}

/// `meshd ARGS...` in `ns`; its stdout, or a panic with everything it printed.
fn meshd_in(ns: &Netns, args: &[&str]) -> String {
    let mut full = vec![meshd_bin().to_string_lossy().into_owned()];
    full.extend(args.iter().map(|a| a.to_string()));
    String::from_utf8_lossy(&ns.run_ok(&full).stdout).into_owned()
}

/// Five pings to n2's overlay address and one plaintext VXLAN datagram from n1, captured on n1's
/// underlay: how many of each left.
fn leaks(lab: &Lab) -> (usize, usize) {
    let n1 = lab.node(0);
    let mut capture = Capture::start_with_filter(n1, NODE_IFACE, Some("icmp or udp port 4790"));
    let _ = n1.ping(&lab.overlay_addr(1).to_string(), 5);
    let vxlan = format!("echo plaintext > /dev/udp/{}/4790", lab.addr(1));
    // ICMP errors quote the UDP header: count only the datagrams themselves.
    let _ = n1.exec(["bash", "-c", &vxlan]);
    let pings = count_frames(&mut capture, &format!("icmp && ip.dst == {}", lab.overlay_addr(1)));
    let datagrams = count_frames(&mut capture, "udp.dstport == 4790 && !icmp");
    (pings, datagrams)
}

/// Issue 15, finding 3: with a default route on the underlay and meshd killed (-9), nothing to
/// an overlay address and no plaintext VXLAN leaves while the guard is installed; the guard
/// counts what it dropped and survives the crash; after `meshd guard remove` the same traffic
/// leaves in plaintext again (the problem the guard closes, and proof the capture sees it).
#[test]
fn the_guard_keeps_overlay_traffic_off_the_underlay_while_meshd_is_dead() {
    require_root();
    let lab = Lab::new("hdgd", 2);
    let mesh = MeshFile::builder(&lab).write();
    let mut daemons = start_all(&lab, mesh.path());
    let n1 = lab.node(0);
    let overlay = daemons[0].overlay_interface(OVERLAY_NAME);
    assert!(n1.ping(&lab.overlay_addr(1).to_string(), 2).status.success(), "the overlay works");
    n1.run_ok(["ip", "route", "add", "default", "via", &lab.addr(1).to_string(), "dev", NODE_IFACE]);
    let config = mesh.path().to_string_lossy().into_owned();
    let installed = meshd_in(n1, &["guard", "install", "--config", &config]);
    assert!(installed.contains("10.244.0.0/24") && installed.contains(&overlay), "{installed}");

    let pid = daemons[0].pid().expect("n1's meshd runs");
    send_signal(pid, libc::SIGKILL);
    wait_until(Duration::from_secs(10), || (!daemons[0].is_running()).then_some(())).expect("meshd died");
    wait_until(Duration::from_secs(10), || (!n1.has_link(&overlay)).then_some(())).expect("the TAP went with it");

    assert_eq!(leaks(&lab), (0, 0), "nothing left in plaintext while the guard was installed");
    let status = meshd_in(n1, &["guard", "status"]);
    let dropped = |rule: &str| -> u64 {
        let line = status.lines().find(|l| l.trim_start().starts_with(rule)).unwrap_or_default();
        line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    assert!(dropped("overlay_plaintext:") >= 5, "{status}");
    assert!(dropped("vxlan_plaintext:") >= 1, "{status}");

    let removed = meshd_in(n1, &["guard", "remove"]);
    assert!(removed.contains("guard removed"), "{removed}");
    assert!(meshd_in(n1, &["guard", "status"]).starts_with("no guard"));
    assert_eq!(leaks(&lab), (5, 1), "without the guard the same traffic leaves in plaintext");
}

/// (SPI, IV) of every ESP packet from `source` in the captured frames (Ethernet, IPv4, ESP in
/// UDP 4500 or raw ESP). The IV is the 8 bytes after the sequence number.
fn esp_ivs(frames: &[Vec<u8>], source: IpAddr) -> Vec<(u32, [u8; 8])> {
    let IpAddr::V4(source) = source else { panic!("an IPv4 lab") };
    frames
        .iter()
        .filter_map(|frame| {
            let ip = frame.get(14..)?;
            if frame.get(12..14)? != [0x08, 0x00] || ip.get(12..16)? != source.octets() {
                return None;
            }
            let payload = ip.get(usize::from(ip[0] & 0x0f) * 4..)?;
            let esp = match ip[9] {
                50 => payload,
                // ESP in UDP 4500; four zero bytes mark IKE instead.
                17 if payload.get(2..4)? == 4500u16.to_be_bytes() && payload.get(8..12)? != [0; 4] => {
                    payload.get(8..)?
                }
                _ => return None,
            };
            let spi = u32::from_be_bytes(esp.get(..4)?.try_into().ok()?);
            Some((spi, esp.get(8..16)?.try_into().ok()?))
        })
        .collect()
}

/// The ones that repeat an earlier (SPI, IV).
fn repeats(ivs: &[(u32, [u8; 8])]) -> usize {
    let mut seen = std::collections::HashSet::new();
    ivs.iter().filter(|pair| !seen.insert(**pair)).count()
}

/// Issue 15, finding 1: n1 sends ESP under its manual keys, is killed with -9, restarts with the
/// same keys, sends again, has its SAs flushed, sends again: no (SPI, IV) pair appears twice on
/// the wire. n2 is killed and restarted too and refuses an ESP packet it accepted before.
#[test]
fn manual_keys_never_repeat_a_nonce_across_crashes_restarts_and_flushes() {
    require_root();
    let lab = Lab::new("hdnc", 2);
    let mesh = MeshFile::builder(&lab).write();
    let mut daemons = start_all(&lab, mesh.path());
    let (n1, n2_overlay) = (lab.node(0), lab.overlay_addr(1).to_string());
    let mut capture = Capture::start_with_filter(n1, NODE_IFACE, Some("esp or udp port 4500"));
    // Whether they get through is checked at the end: the nonces are what matters here.
    let pings = |_life: &str| {
        let _ = n1.ping(&n2_overlay, 5);
    };
    pings("first life");
    send_signal(daemons[0].pid().expect("n1 runs"), libc::SIGKILL);
    wait_until(Duration::from_secs(10), || (!daemons[0].is_running()).then_some(())).expect("n1's meshd died");
    daemons[0] = Meshd::start(n1, mesh.path(), &lab.node_name(0));
    pings("after kill -9 and restart");
    let flushed = daemons[0].ikectl(&["sa", "flush"]);
    assert!(flushed.status.success(), "{flushed:?}");
    pings("after sa flush");
    let frames = capture.frames();
    let ivs = esp_ivs(&frames, lab.addr(0));
    assert!(ivs.len() >= 15, "captured n1's ESP: {} packets", ivs.len());
    assert_eq!(repeats(&ivs), 0, "(SPI, IV) pairs repeated among {} ESP packets from n1", ivs.len());

    // The receiver: an ESP packet n2 accepted, replayed after n2 crashed and came back.
    let old = frames
        .iter()
        .rev()
        .find(|frame| !esp_ivs(std::slice::from_ref(*frame), lab.addr(0)).is_empty())
        .expect("an ESP packet from n1")
        .clone();
    // Longer than PERSIST_INTERVAL: n2 has written its mark.
    std::thread::sleep(Duration::from_millis(500));
    send_signal(daemons[1].pid().expect("n2 runs"), libc::SIGKILL);
    wait_until(Duration::from_secs(10), || (!daemons[1].is_running()).then_some(())).expect("n2's meshd died");
    daemons[1] = Meshd::start(lab.node(1), mesh.path(), &lab.node_name(1));
    let mut replay = old;
    meshd_lab::fix_udp_checksum(&mut replay);
    meshd_lab::inject_frame(n1, NODE_IFACE, &replay);
    let refused = wait_until(Duration::from_secs(5), || {
        let drops = daemons[1].ikectl_json(&["drops"]);
        let refused = drops_by_reason(&drops, "replay") + drops_by_reason(&drops, "too_old");
        (refused > 0).then_some(refused)
    });
    assert_eq!(refused, Some(1), "n2 refused the old packet after its restart: {}", daemons[1].ikectl_json(&["drops"]));
    // n2's new overlay interface has a new MAC: forget the old one.
    n1.run_ok(["ip", "neigh", "flush", "dev", &daemons[0].overlay_interface(OVERLAY_NAME)]);
    let after = n1.ping(&n2_overlay, 3);
    assert!(
        after.status.success(),
        "the pair still talks after both restarts: {after:?}\nn1 drops {}\nn2 drops {}\nn1 SAs {}\nn2 SAs {}",
        daemons[0].ikectl_json(&["drops"]),
        daemons[1].ikectl_json(&["drops"]),
        daemons[0].ikectl_json(&["sa", "list"]),
        daemons[1].ikectl_json(&["sa", "list"]),
    );
}

/// Issue 15, findings 4 and 7: `ikectl fleet update` to a mesh with other manual keys shows that
/// the key lines change, never a key, in the plan and in JSON; and a node whose commands print
/// terminal escape sequences cannot drive the operator's terminal.
#[test]
fn fleet_output_shows_no_manual_key_and_no_terminal_escape_from_a_node() {
    require_root();
    let lab = Lab::new("hdfo", 2);
    let fleet = SshFleet::start(&lab, "hdfo");
    let addresses = vec![lab.addr(0), lab.addr(1)];
    let old = MeshFile::for_addresses(addresses.clone()).write();
    let new = MeshFile::for_addresses(addresses).write();
    for i in 0..2 {
        fleet.write_node_config(i, &old.text(), &old.psk());
    }
    let config = new.path().to_str().expect("utf-8 path");
    let everything = |output: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    };
    for args in [&["--config", config, "--dry-run"][..], &["--config", config, "--dry-run", "--json"]] {
        let dry = fleet.run("update", args);
        let shown = everything(&dry);
        assert!(dry.status.success(), "{shown}");
        for sa in old.sas().iter().chain(new.sas()) {
            assert!(!shown.contains(&sa.key_hex()), "a manual key is shown by fleet update {args:?}:\n{shown}");
        }
        assert!(shown.contains("<redacted>"), "the key lines still show as changed:\n{shown}");
    }

    // n1 (the canary) is compromised: what its commands print is meant for the operator's terminal.
    let hostile = "#!/bin/sh\nprintf 'pwned\\033]0;owned\\007\\033[2J\\r\\n' >&2\nexit 1\n";
    fleet.shadow_command(0, "sync", hostile);
    let run = fleet.run("update", &["--config", config]);
    let shown = everything(&run);
    assert!(!run.status.success(), "n1 fails its install:\n{shown}");
    assert!(shown.contains("pwned\\x1b]0;owned\\x07\\x1b[2J"), "n1's output is shown, made visible:\n{shown}");
    assert!(!shown.contains(['\x1b', '\x07', '\r']), "control characters from n1 reached the terminal:\n{shown}");
}
