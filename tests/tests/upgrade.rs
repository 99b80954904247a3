//! Upgrading meshd in place (`meshd run --upgrade`, docs/operate.md): the new process takes the
//! running one's TAP queues, sockets and SAs over, and a ping flood and a TCP stream across the
//! overlay lose nothing; where no handover is possible, the old process is stopped (telling its
//! peers) and the new one starts afresh, and the mesh heals within seconds.
//!
//! Run: `cargo build --workspace && sudo -E cargo test -p meshd-lab --test upgrade`.

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use meshd_lab::meshfile::OVERLAY_NAME;
use meshd_lab::util::{send_signal, wait_until};
use meshd_lab::{require_root, start_all, tcp_transfer, Lab, MeshFile, Meshd, Netns};
use serde_json::Value;

/// Packets a second of the ping floods.
const PINGS_PER_SECOND: u32 = 200;

/// Starts `ping` from `ns` to `addr` at `PINGS_PER_SECOND` for `seconds`, in the background.
fn start_flood(ns: &Netns, addr: &str, seconds: u32) -> Child {
    let interval = format!("{}", 1.0 / f64::from(PINGS_PER_SECOND));
    let count = (seconds * PINGS_PER_SECOND).to_string();
    ns.command(["ping", "-n", "-q", "-i", &interval, "-c", &count, "-W", "1", addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ping")
}

/// Waits for the flood; returns (transmitted, received) and ping's output.
fn flood_result(mut ping: Child) -> (u64, u64, String) {
    let mut text = String::new();
    ping.stdout.take().expect("ping stdout").read_to_string(&mut text).expect("ping output");
    let _ = ping.wait();
    // "1000 packets transmitted, 1000 received, 0% packet loss, time 5000ms"
    let summary = text.lines().find(|line| line.contains("packets transmitted")).unwrap_or_default().to_string();
    let number = |word: &str| {
        let before = summary.split(word).next().unwrap_or_default();
        before.trim().trim_end_matches(',').rsplit(' ').next().and_then(|n| n.parse().ok())
    };
    match (number(" packets transmitted"), number(" received")) {
        (Some(sent), Some(received)) => (sent, received, text),
        _ => panic!("no ping summary in:\n{text}"),
    }
}

/// A counter of the kernel's SNMP statistics in `ns` (`nstat` names, e.g. `TcpRetransSegs`).
fn kernel_counter(ns: &Netns, name: &str) -> u64 {
    let out = ns.run_stdout(["nstat", "-asz", name]);
    out.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.split_whitespace().next()))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in nstat's output:\n{out}"))
}

/// Where a pause of the datapath would lose packets, in `ns`: frames the kernel could not queue
/// to the overlay TAP (its TX dropped count), datagrams the UDP socket buffers had no room for,
/// and TCP's repairs of a lost segment: fast retransmits and tail loss probes that recovered a
/// loss. (A probe that recovered nothing only says ACKs were late, which a millisecond's pause
/// on veths makes them; timeouts are counted for the record.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Losses {
    tap_dropped: u64,
    udp_buffer_full: u64,
    tcp_fast_retransmits: u64,
    tcp_loss_probe_recoveries: u64,
    tcp_timeouts: u64,
}

fn losses(ns: &Netns, interface: &str) -> Losses {
    let link: Value =
        serde_json::from_str(&ns.run_stdout(["ip", "-j", "-s", "link", "show", "dev", interface])).expect("ip -j -s");
    Losses {
        tap_dropped: link[0]["stats64"]["tx"]["dropped"].as_u64().expect("tx dropped"),
        udp_buffer_full: kernel_counter(ns, "UdpRcvbufErrors"),
        tcp_fast_retransmits: kernel_counter(ns, "TcpExtTCPFastRetrans"),
        tcp_loss_probe_recoveries: kernel_counter(ns, "TcpExtTCPLossProbeRecovery"),
        tcp_timeouts: kernel_counter(ns, "TcpExtTCPTimeouts"),
    }
}

impl std::ops::Sub for Losses {
    type Output = Losses;
    fn sub(self, before: Losses) -> Losses {
        Losses {
            tap_dropped: self.tap_dropped - before.tap_dropped,
            udp_buffer_full: self.udp_buffer_full - before.udp_buffer_full,
            tcp_fast_retransmits: self.tcp_fast_retransmits - before.tcp_fast_retransmits,
            tcp_loss_probe_recoveries: self.tcp_loss_probe_recoveries - before.tcp_loss_probe_recoveries,
            tcp_timeouts: self.tcp_timeouts - before.tcp_timeouts,
        }
    }
}

fn ifindex(ns: &Netns, interface: &str) -> u64 {
    let link: Value =
        serde_json::from_str(&ns.run_stdout(["ip", "-j", "link", "show", "dev", interface])).expect("ip -j");
    link[0]["ifindex"].as_u64().expect("ifindex")
}

/// Waits until `d` has an established IKE SA with each of its `peers` peers, with Child SAs.
fn wait_established(d: &Meshd, peers: usize, timeout: Duration) {
    let established = wait_until(timeout, || {
        let list = d.ikectl_json(&["sa", "list"]);
        let sas = list["ike_sas"].as_array().cloned().unwrap_or_default();
        let up = sas.iter().filter(|sa| sa["state"] == "established").count();
        (up == peers && d.child_spis("out").len() == peers).then_some(())
    });
    assert!(established.is_some(), "{}: no IKE SAs with its {peers} peers within {timeout:?}\n{}", d.node(), d.log());
}

/// A mesh keyed by hand, n1 upgraded while n1 sends a ping flood and a TCP stream to n2: not
/// one packet is lost, the SAs and the overlay interface stay the same, and the old process
/// says how long forwarding paused.
#[test]
fn a_handover_under_a_ping_flood_and_a_tcp_stream_loses_nothing() {
    require_root();
    let lab = Lab::new("upho", 2);
    let mesh = MeshFile::builder(&lab).write();
    let mut daemons = start_all(&lab, mesh.path());
    let interface = daemons[0].overlay_interface(OVERLAY_NAME);
    assert!(lab.node(0).ping("10.244.0.2", 2).status.success(), "the overlay works before the upgrade");
    let spis_before = (daemons[0].child_spis("in"), daemons[0].child_spis("out"));
    let ifindex_before = ifindex(lab.node(0), &interface);
    let before: Vec<Losses> = (0..2).map(|i| losses(lab.node(i), &interface)).collect();

    let flood = start_flood(lab.node(0), "10.244.0.2", 6);
    let (sent, received) = tcp_transfer(lab.node(0), lab.node(1), "0.01", || {
        std::thread::sleep(Duration::from_secs(1));
        let old = daemons[0].upgrade(lab.node(0));
        assert!(old.success(), "the old meshd exits cleanly after the handover: {old}");
    });
    let (transmitted, answered, text) = flood_result(flood);

    let log = daemons[0].log();
    let pause = log.lines().find(|line| line.contains("handed over to the new meshd")).unwrap_or_default();
    eprintln!("handover: {pause}\nping: {transmitted} sent, {answered} answered");
    assert!(log.contains("taken_over=true"), "the new meshd took over:\n{log}");
    assert_eq!(sent, received, "the TCP stream arrived intact");
    assert_eq!(transmitted, answered, "no ping was lost across the handover:\n{text}\n{log}");
    for (i, before) in before.into_iter().enumerate() {
        let lost = losses(lab.node(i), &interface) - before;
        eprintln!("n{}: {lost:?}", i + 1);
        let repairs =
            (lost.tap_dropped, lost.udp_buffer_full, lost.tcp_fast_retransmits, lost.tcp_loss_probe_recoveries);
        assert_eq!(repairs, (0, 0, 0, 0), "n{}: nothing dropped, no TCP segment lost: {lost:?}", i + 1);
    }
    eprintln!("drops of the new meshd: {}", daemons[0].ikectl_json(&["drops"]));
    assert_eq!((daemons[0].child_spis("in"), daemons[0].child_spis("out")), spis_before, "the same SAs");
    assert_eq!(ifindex(lab.node(0), &interface), ifindex_before, "the same overlay interface");
    // The new meshd can itself be upgraded again, and stops cleanly.
    assert!(daemons[0].upgrade(lab.node(0)).success());
    assert!(lab.node(0).ping("10.244.0.2", 2).status.success(), "the overlay works after two upgrades");
    daemons[0].kill();
    assert!(!lab.node(0).has_link(&interface), "the overlay interface goes with the last meshd");
}

/// Raw ESP (`encap = "esp"`): the one raw socket and IKE's own UDP 4500 socket cross too.
#[test]
fn a_handover_with_raw_esp_loses_nothing() {
    require_root();
    let lab = Lab::new("upesp", 2);
    let mesh = MeshFile::builder(&lab).encap("esp").write();
    let mut daemons = start_all(&lab, mesh.path());
    assert!(lab.node(0).ping("10.244.0.2", 2).status.success(), "the overlay works before the upgrade");
    let flood = start_flood(lab.node(0), "10.244.0.2", 3);
    std::thread::sleep(Duration::from_secs(1));
    assert!(daemons[0].upgrade(lab.node(0)).success());
    let (transmitted, answered, text) = flood_result(flood);
    assert_eq!(transmitted, answered, "no ping was lost:\n{text}\n{}", daemons[0].log());
    assert!(daemons[0].log().contains("taken_over=true"), "{}", daemons[0].log());
}

/// The IKE SA of one node with its one peer, by its SPIs (initiator's, responder's).
fn ike_sa(d: &Meshd) -> (Value, Value) {
    let list = d.ikectl_json(&["sa", "list"]);
    let sa = &list["ike_sas"][0];
    (sa["initiator_spi"].clone(), sa["responder_spi"].clone())
}

/// An IKE mesh: the IKE SA crosses with the Child SAs, so the peer notices nothing (the same
/// IKE SA on both ends, no INITIAL_CONTACT) and a flood across the handover loses nothing; the
/// new meshd then rekeys the Child SA in due time (message IDs and timers carried on).
#[test]
fn a_handover_in_an_ike_mesh_loses_nothing_and_keys_on() {
    require_root();
    let lab = Lab::new("upik", 2);
    let mesh = MeshFile::builder(&lab).ike().extra("[ike]\nchild_lifetime = \"12s\"\n").write();
    let mut daemons = start_all(&lab, mesh.path());
    wait_established(&daemons[0], 1, Duration::from_secs(15));
    wait_established(&daemons[1], 1, Duration::from_secs(15));
    assert!(lab.node(0).ping("10.244.0.2", 2).status.success(), "the overlay works before the upgrade");
    let ike_before = ike_sa(&daemons[0]);
    let children_before = daemons[0].child_spis("out");

    let flood = start_flood(lab.node(0), "10.244.0.2", 4);
    std::thread::sleep(Duration::from_secs(1));
    assert!(daemons[0].upgrade(lab.node(0)).success());
    assert!(daemons[0].log().contains("ike_sas=1"), "the IKE SA was handed over:\n{}", daemons[0].log());
    assert_eq!(ike_sa(&daemons[0]), ike_before, "the same IKE SA on the upgraded node");
    assert_eq!(ike_sa(&daemons[1]), ike_before, "the same IKE SA on its peer");
    let (transmitted, answered, text) = flood_result(flood);
    eprintln!("ping: {transmitted} sent, {answered} answered");
    let drops = daemons[0].ikectl_json(&["drops"]);
    assert_eq!(
        transmitted,
        answered,
        "no ping was lost:\n{text}\ndrops: {drops}\n{}\n{}",
        daemons[0].log(),
        daemons[1].log()
    );
    assert!(!daemons[1].log().contains("INITIAL_CONTACT"), "the peer saw no restart:\n{}", daemons[1].log());
    let rekeyed = wait_until(Duration::from_secs(15), || {
        daemons[0].child_spis("out").is_disjoint(&children_before).then_some(())
    });
    assert!(rekeyed.is_some(), "the new meshd rekeyed the Child SA:\n{}", daemons[0].log());
    assert!(lab.node(0).ping("10.244.0.2", 2).status.success(), "the overlay works after the rekey");
    assert_eq!(ike_sa(&daemons[1]), ike_before, "still the same IKE SA");
}

/// No handover possible: n1's running meshd does not answer on the handover socket (as one
/// from before handovers), so `--upgrade` stops it (it deletes its IKE SAs, telling n2) and
/// starts afresh; then n1 crashes, and `--upgrade` starts afresh at once. The test prints the
/// gap each fallback left in a ping flood.
#[test]
fn without_a_handover_the_old_meshd_tells_its_peers_and_the_new_one_starts_afresh() {
    require_root();
    let lab = Lab::new("upfb", 2);
    let mesh = MeshFile::builder(&lab).ike().write();
    let mut daemons = start_all(&lab, mesh.path());
    wait_established(&daemons[0], 1, Duration::from_secs(15));
    wait_established(&daemons[1], 1, Duration::from_secs(15));

    let mut handover_socket = daemons[0].socket().as_os_str().to_owned();
    handover_socket.push(".handover/socket");
    std::fs::remove_file(&handover_socket).expect("remove the handover socket");
    let flood = start_flood(lab.node(0), "10.244.0.2", 10);
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    assert!(daemons[0].upgrade(lab.node(0)).success(), "the old meshd stops cleanly");
    wait_established(&daemons[0], 1, Duration::from_secs(15));
    let renegotiated = started.elapsed();
    let (transmitted, answered, _) = flood_result(flood);
    let lost = transmitted - answered;
    eprintln!(
        "fallback restart: {lost} of {transmitted} pings lost (a gap of about {} ms); SAs back after {renegotiated:?}",
        u64::from(1000 / PINGS_PER_SECOND) * lost
    );
    assert!(daemons[0].log().contains("no handover"), "{}", daemons[0].log());
    assert!(daemons[1].log().contains("the peer deleted the IKE SA"), "n2 was told:\n{}", daemons[1].log());
    assert!(lost < u64::from(PINGS_PER_SECOND) * 5, "the gap stays within seconds: {lost} lost");

    // A crash: nothing answers at all (and the overlay interface went with the process).
    daemons[0].crash();
    let started = Instant::now();
    assert!(!daemons[0].upgrade(lab.node(0)).success(), "the crashed meshd's status");
    let back = wait_until(Duration::from_secs(30), || {
        lab.node(0).exec(["ping", "-n", "-c", "1", "-W", "1", "10.244.0.2"]).status.success().then(|| started.elapsed())
    });
    eprintln!("restart after a crash: the overlay is back after {back:?}");
    assert!(back.is_some(), "the overlay works again after the crash:\n{}", daemons[0].log());
}

/// Whether process `pid` is gone (or a zombie, waiting for whoever adopted it).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
}

/// A package upgrade under systemd (packaging/meshd.service): SIGUSR2 makes the running meshd
/// start the meshd binary at its own path with its own arguments and `--upgrade`; that one
/// takes over without a lost ping, and the old one exits.
#[test]
fn sigusr2_starts_the_installed_meshd_which_takes_over() {
    require_root();
    let lab = Lab::new("upsig", 2);
    let mesh = MeshFile::builder(&lab).write();
    let mut daemons = start_all(&lab, mesh.path());
    let old = daemons[0].pid().expect("n1 runs");
    let flood = start_flood(lab.node(0), "10.244.0.2", 3);
    std::thread::sleep(Duration::from_secs(1));
    send_signal(old, libc::SIGUSR2);
    let exited = wait_until(Duration::from_secs(20), || (!daemons[0].is_running()).then_some(()));
    assert!(exited.is_some(), "the old meshd still runs 20 s after SIGUSR2:\n{}", daemons[0].log());
    assert!(daemons[0].kill().success(), "the old meshd exits cleanly:\n{}", daemons[0].log());
    let (transmitted, answered, text) = flood_result(flood);
    assert_eq!(transmitted, answered, "no ping was lost:\n{text}\n{}", daemons[0].log());
    let successor = lab.node(0).pids().into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| cmdline.split(|byte| *byte == 0).any(|arg| arg == b"--upgrade"))
    });
    let successor = successor.unwrap_or_else(|| panic!("no successor meshd in n1:\n{}", daemons[0].log()));
    assert!(daemons[0].ikectl(&["status"]).status.success(), "the successor answers on the control socket");
    send_signal(successor, libc::SIGTERM);
    assert!(wait_until(Duration::from_secs(10), || gone(successor).then_some(())).is_some(), "the successor stops");
}
