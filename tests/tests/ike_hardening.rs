//! meshd's IKE under a hostile underlay (issue 14): a captured authentic IKE message replayed
//! from another address changes nothing, and an IKE_SA_INIT flood from another namespace (a
//! flooder that answers cookies) stalls neither the established pairs, nor a node that starts
//! during the flood, nor the control socket, and does not make meshd grow.
//!
//! Run: `cargo build --workspace && sudo -E cargo test -p meshd-lab --test ike_hardening`.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use meshd_lab::util::{describe_output, wait_until};
use meshd_lab::{fix_udp_checksum, inject_frame, require_root, Capture, Lab, MeshFile, Meshd, Netns};
use serde_json::Value;

/// The attacker's address on the lab's underlay: in the lab's subnet, in no mesh.toml.
const ATTACKER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 66);
const ETHERNET_LEN: usize = 14;
const NON_ESP_MARKER_LEN: usize = 4;
/// In the IKE header: the exchange type and the flags (RFC 7296 §3.1).
const IKE_EXCHANGE: usize = 18;
const IKE_FLAGS: usize = 19;
const IKE_RESPONSE_FLAG: u8 = 0x20;
const INFORMATIONAL: u8 = 37;

/// Established IKE SAs of a node, from `ikectl --json sa list`.
fn established(d: &Meshd) -> Vec<Value> {
    let list = d.ikectl_json(&["sa", "list"]);
    let sas = list["ike_sas"].as_array().cloned().unwrap_or_default();
    sas.into_iter().filter(|sa| sa["state"] == "established").collect()
}

/// Waits until `d` has `peers` established IKE SAs, each with its Child SA.
fn wait_established(d: &Meshd, peers: usize, timeout: Duration) -> bool {
    wait_until(timeout, || {
        let sas = established(d);
        let ok = sas.len() == peers
            && sas.iter().all(|sa| sa["child_spis"].as_array().is_some_and(|children| children.len() == 1));
        ok.then_some(())
    })
    .is_some()
}

/// A namespace on the lab's switch with the attacker's address.
fn attacker(lab: &Lab, prefix: &str) -> Netns {
    let ns = Netns::new(prefix, "atk");
    lab.plug(&ns, "patk", None);
    ns.run_ok(["ip", "addr", "add", &format!("{ATTACKER}/24"), "dev", "eth0"]);
    ns.run_ok(["ip", "link", "set", "eth0", "up"]);
    ns
}

fn ping_all(ns: &Netns, addr: &str, count: u32) -> (u32, u32) {
    let out = ns.ping(addr, count);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_default();
    let numbers: Vec<u32> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    match numbers[..] {
        [transmitted, received, ..] => (transmitted, received),
        _ => panic!("no ping summary\n{}", describe_output(&out)),
    }
}

/// The IPv4 header checksum of `header` (its checksum field zeroed first).
fn set_ipv4_checksum(header: &mut [u8]) {
    header[10..12].copy_from_slice(&[0, 0]);
    let sum: u32 = header.chunks(2).map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]]))).sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    header[10..12].copy_from_slice(&(!(folded as u16)).to_be_bytes());
}

/// An IKE request n1 sent to n2 on UDP 4500 (an INFORMATIONAL: a liveness check), as captured.
fn captured_ike_request(frames: &[Vec<u8>], from: Ipv4Addr) -> Option<Vec<u8>> {
    frames.iter().find_map(|frame| {
        let ip = frame.get(ETHERNET_LEN..)?;
        let header_len = usize::from(ip.first()? & 0x0f) * 4;
        let (source, protocol) = (Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]), ip[9]);
        let udp = ip.get(header_len..)?;
        let ike = udp.get(8 + NON_ESP_MARKER_LEN..)?;
        let to_4500 = u16::from_be_bytes([udp[2], udp[3]]) == 4500;
        let marker = udp.get(8..12)? == [0, 0, 0, 0];
        let request =
            ike.len() > IKE_FLAGS && ike[IKE_EXCHANGE] == INFORMATIONAL && ike[IKE_FLAGS] & IKE_RESPONSE_FLAG == 0;
        (source == from && protocol == 17 && to_4500 && marker && request).then(|| frame.clone())
    })
}

/// Issue 14, finding 3: one authentic IKE message, captured and replayed from another
/// namespace's address, moved the live IKE SA there. Nothing changes now.
#[test]
fn a_replayed_ike_message_from_a_spoofed_address_changes_nothing() {
    require_root();
    let lab = Lab::new("ikrp", 2);
    let mesh = MeshFile::builder(&lab).ike().ike_key("dpd", "\"1s\"").write();
    let mut capture = Capture::start_with_filter(lab.node(1), "eth0", Some("udp port 4500"));
    let daemons: Vec<Meshd> = (0..2).map(|i| Meshd::start(lab.node(i), mesh.path(), &lab.node_name(i))).collect();
    assert!(wait_established(&daemons[1], 1, Duration::from_secs(15)), "no IKE SA\n{}", daemons[1].log());
    // Liveness checks every second of IKE silence: a few are captured.
    std::thread::sleep(Duration::from_secs(4));
    capture.stop();
    let n1 = Ipv4Addr::new(198, 18, 0, 1);
    let mut frame = captured_ike_request(&capture.frames(), n1).expect("an IKE request from n1 was captured");
    let before = established(&daemons[1]);

    let atk = attacker(&lab, "ikrp");
    let mac: Vec<u8> =
        atk.mac("eth0").split(':').map(|byte| u8::from_str_radix(byte, 16).expect("a MAC byte")).collect();
    frame[6..12].copy_from_slice(&mac);
    let ip = &mut frame[ETHERNET_LEN..];
    ip[12..16].copy_from_slice(&ATTACKER.octets());
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    set_ipv4_checksum(&mut ip[..header_len]);
    fix_udp_checksum(&mut frame);
    let n1_address = |sas: &[Value]| {
        let remote = sas.first().and_then(|sa| sa["remote"].as_str()).unwrap_or_default().to_string();
        assert!(remote.starts_with("198.18.0.1:"), "n2's IKE SA moved to {remote}\n{}", daemons[1].log());
    };
    // Checked at once after each replay (n1's next message would move it back), and after
    // several liveness checks.
    for _ in 0..5 {
        inject_frame(&atk, "eth0", &frame);
        n1_address(&established(&daemons[1]));
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let after = established(&daemons[1]);
    assert_eq!(after.len(), 1, "{after:#?}\n{}", daemons[1].log());
    n1_address(&after);
    assert_eq!(after[0]["initiator_spi"], before[0]["initiator_spi"], "the IKE SA was replaced");
    assert_eq!(after[0]["child_spis"], before[0]["child_spis"], "the Child SA was replaced");
    let (sent, received) = ping_all(lab.node(1), "10.244.0.1", 5);
    assert_eq!(received, sent, "n2 -> n1 over the overlay");
}

/// One `status` request on meshd's control socket (the line `ikectl status` sends, with the
/// protocol version meshd names), timed from connecting to the answer: what meshd takes,
/// without starting ikectl.
fn time_status(socket: &std::path::Path, version: u64) -> (Duration, Value) {
    use std::io::{BufRead, BufReader, Write};
    let asked = Instant::now();
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect to the control socket");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("a read timeout");
    writeln!(stream, r#"{{"version":{version},"command":"status"}}"#).expect("send status");
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).expect("meshd answers");
    let took = asked.elapsed();
    (took, serde_json::from_str(&answer).unwrap_or_else(|e| panic!("not an answer ({e}): {answer}")))
}

/// meshd's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or_default();
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).unwrap_or(0)
}

/// Issue 14, finding 1: 10,000 IKE_SA_INIT a second for 30 s from another namespace, by a
/// flooder that meets cookies (a fresh SPI and nonce each time): the established pair loses no
/// ping, a node started during the flood gets its IKE SA within 10 s, `ikectl status` answers
/// within 100 ms, and meshd's memory stays bounded.
#[test]
fn an_ike_sa_init_flood_stalls_nothing() {
    require_root();
    let lab = Lab::new("ikfl", 3);
    let mesh = MeshFile::builder(&lab).ike().write();
    let mut daemons: Vec<Meshd> = (0..2).map(|i| Meshd::start(lab.node(i), mesh.path(), &lab.node_name(i))).collect();
    // n3 is not up yet: n1 and n2 have one IKE SA each.
    assert!(wait_established(&daemons[0], 1, Duration::from_secs(15)), "no IKE SA\n{}", daemons[0].log());
    let pid = daemons[0].pid().expect("n1 runs");
    let rss_before = rss_kib(pid);

    let atk = attacker(&lab, "ikfl");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/ike_init_flood.py");
    let target = lab.addr(0).to_string();
    let flooder = atk
        // A little above 10,000 a second, so that the rate reached stays above it on a busy machine.
        .command(["python3", script, &ATTACKER.to_string(), &target, "11000", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the flooder");
    let flood_started = Instant::now();
    let pinger = {
        let n2 = lab.node(1).name().to_string();
        std::thread::spawn(move || {
            // 25 s of pings, one every 0.2 s, while the flood runs.
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &n2, "ping", "-n", "-c", "125", "-W", "2", "-i", "0.2", "10.244.0.1"])
                .output()
                .expect("ping");
            String::from_utf8_lossy(&out.stdout).to_string()
        })
    };
    std::thread::sleep(Duration::from_secs(3));

    // A node started during the flood gets its IKE SA with the flooded node within 10 s.
    let n3_started = Instant::now();
    daemons.push(Meshd::start(lab.node(2), mesh.path(), &lab.node_name(2)));
    let n3_up = wait_until(Duration::from_secs(10).saturating_sub(n3_started.elapsed()), || {
        established(&daemons[2])
            .iter()
            .any(|sa| sa["remote"].as_str().is_some_and(|r| r.starts_with(&target)))
            .then_some(())
    });
    assert!(
        n3_up.is_some(),
        "n3 has no IKE SA with the flooded n1 after {:?}\n--- n1 ---\n{}\n--- n3 ---\n{}",
        n3_started.elapsed(),
        daemons[0].log(),
        daemons[2].log()
    );

    // The control socket answers at once, and memory stays put, while the flood lasts.
    let (_, first) = time_status(daemons[0].socket(), 0);
    let version = first["version"].as_u64().unwrap_or_else(|| panic!("no protocol version in {first}"));
    let mut slowest = Duration::ZERO;
    let mut rss_peak = rss_before;
    while flood_started.elapsed() < Duration::from_secs(28) {
        let (took, answer) = time_status(daemons[0].socket(), version);
        assert!(answer.get("ok").is_some(), "status failed: {answer}");
        slowest = slowest.max(took);
        let out = daemons[0].ikectl(&["status"]);
        assert!(out.status.success(), "ikectl status failed\n{}", describe_output(&out));
        rss_peak = rss_peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(500));
    }
    let flood = flooder.wait_with_output().expect("the flooder ends");
    let report = String::from_utf8_lossy(&flood.stdout).trim().to_string();
    let field = |name: &str| -> f64 {
        report
            .split_whitespace()
            .find_map(|field| field.strip_prefix(name)?.strip_prefix('='))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the flooder's report\n{}", describe_output(&flood)))
    };
    let (sent, seconds) = (field("sent"), field("seconds"));
    assert!(seconds >= 30.0 && sent / seconds >= 10_000.0, "the flood was too small to count: {report}");

    let growth = rss_peak.saturating_sub(rss_before);
    eprintln!("flood: {report}; status answered in at most {slowest:?}; meshd grew by {growth} KiB");
    let pings = pinger.join().expect("the pinger");
    assert!(pings.contains(" 0% packet loss"), "the established pair lost pings during the flood:\n{pings}");
    assert!(slowest <= Duration::from_millis(100), "meshd took {slowest:?} to answer status during the flood");
    assert!(growth < 32 * 1024, "meshd grew by {growth} KiB during the flood ({rss_before} KiB before)");
    // The pair is still the same one, and nothing was lost on the way.
    assert!(wait_established(&daemons[0], 2, Duration::from_secs(10)), "{}", daemons[0].log());
    assert!(daemons[0].log().contains("IKE messages refused"), "the flood is summed up in the log");
}
