//! Diagnostics in the namespace lab: `ikectl drops --follow` streams drops as they happen, with
//! their reasons (datapath and IKE) and the overlay frame's inner addresses; the eBPF tracer sees
//! the kernel's drops of mesh traffic.
//!
//! Run: `cargo build --workspace && sudo -E cargo test -p meshd-lab --test diag`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use meshd_lab::meshd::ikectl_bin;
use meshd_lab::meshfile::OVERLAY_NAME;
use meshd_lab::{require_root, start_all, wait_until, Family, Lab, MeshFile, Meshd, RoutedPair};
use serde_json::Value;

/// `ikectl --json drops --follow` against a daemon; its lines arrive on a channel. Killed when
/// dropped.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(daemon: &Meshd, extra: &[&str]) -> Follower {
        let mut child = Command::new(ikectl_bin())
            .arg("--socket")
            .arg(daemon.socket())
            .args(["--json", "drops", "--follow"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn ikectl drops --follow");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Follower { child, lines }
    }

    /// Reads lines until `wanted` returns true for one (parsed), or panics after `timeout` with
    /// everything read.
    fn wait_for(&self, timeout: Duration, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.lines.recv_timeout(left) else { break };
            let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if wanted(&value) {
                return value;
            }
            seen.push(line);
        }
        panic!("ikectl drops --follow showed no {what} within {timeout:?}; it printed:\n{}", seen.join("\n"));
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two IKE nodes whose pre-shared keys differ: `drops --follow` on n1, started before anything
/// happens, reports the IKE authentication failure with the peer, then the overlay frames n1
/// cannot send for want of an SA, with their inner IP addresses.
#[test]
fn drops_follow_streams_ike_and_datapath_drops_with_inner_addresses() {
    require_root();
    let lab = Lab::new("dgfo", 2);
    let mesh = MeshFile::builder(&lab).ike().write();
    let other_psk = mesh.variant_with_other_psk("other.toml");
    let n1 = Meshd::start_with(lab.node(0), mesh.path(), &lab.node_name(0), &["--no-kernel-drops"]);
    let off = n1.ikectl_json(&["drops", "--kernel"]);
    let why = off["kernel"]["unavailable"].as_str().unwrap_or_default();
    assert!(why.contains("--no-kernel-drops"), "the report says why kernel drops are not traced: {off:#}");
    let follower = Follower::start(&n1, &[]);
    let report = follower.wait_for(Duration::from_secs(10), "report first", |v| v["kind"] == "drops");
    assert!(report["data"]["last_id"].is_u64(), "the report says where following starts: {report}");

    let _n2 = Meshd::start(lab.node(1), &other_psk, &lab.node_name(1));
    let auth = follower.wait_for(Duration::from_secs(60), "ike_auth_failed drop", |v| v["reason"] == "ike_auth_failed");
    assert_eq!(auth["peer"], "n2", "{auth}");
    assert!(auth["outer_source"].as_str().is_some_and(|s| s.starts_with(&lab.addr(1).to_string())), "{auth}");

    // A unicast IPv4 frame to n2's overlay address: no SA, so dropped with what it carried.
    let interface = n1.overlay_interface(OVERLAY_NAME);
    let n2_overlay = lab.overlay_addr(1).to_string();
    lab.node(0).run_ok(["ip", "neigh", "replace", &n2_overlay, "lladdr", "02:00:00:00:00:02", "dev", &interface]);
    lab.node(0).ping(&n2_overlay, 2);
    let dropped = follower.wait_for(Duration::from_secs(30), "no_outbound_sa drop of the ping", |v| {
        v["reason"] == "no_outbound_sa" && v["inner"]["destination_ip"] == n2_overlay.as_str()
    });
    assert_eq!(dropped["peer"], "n2", "{dropped}");
    assert_eq!(dropped["inner"]["source_ip"], lab.overlay_addr(0).to_string(), "{dropped}");
    assert_eq!(dropped["inner"]["destination_mac"], "02:00:00:00:00:02", "{dropped}");
    assert!(dropped["vni"].is_u64(), "{dropped}");
    assert!(dropped["id"].as_u64() > auth["id"].as_u64(), "ids grow: {auth} then {dropped}");
}

/// n2 drops n1's ESP with nftables: n2's eBPF tracer reports it as the kernel's NETFILTER_DROP,
/// attributed to peer n1, with the kernel function that freed it, both in `ikectl drops --kernel`
/// and in `drops --follow --kernel`.
#[test]
fn kernel_tracer_sees_a_netfilter_drop_of_the_peers_esp() {
    require_root();
    let lab = Lab::new("dgkd", 2);
    let mesh = MeshFile::builder(&lab).encap("esp").write();
    let daemons = start_all(&lab, mesh.path());
    let (n1, n2) = (&daemons[0], &daemons[1]);
    let before = n2.ikectl_json(&["drops", "--kernel"]);
    assert!(
        before["kernel"]["unavailable"].is_null(),
        "n2 traces kernel drops (as root, with BTF; it mounts tracefs itself): {before:#}\n{}",
        n2.log()
    );
    let follower = Follower::start(n2, &["--kernel"]);
    follower.wait_for(Duration::from_secs(10), "report first", |v| v["kind"] == "drops");

    let n2_ns = lab.node(1);
    n2_ns.run_ok(["nft", "add", "table", "inet", "dgkd"]);
    n2_ns.run_ok(["nft", "add chain inet dgkd input { type filter hook input priority 0; }"]);
    n2_ns.run_ok(["nft", "add", "rule", "inet", "dgkd", "input", "ip", "protocol", "esp", "drop"]);
    let n2_overlay = lab.overlay_addr(1).to_string();
    let ping = lab.node(0).ping(&n2_overlay, 3);
    assert!(!ping.status.success(), "n2 drops all ESP, yet the overlay ping went through");

    let n1_address = lab.addr(0).to_string();
    let is_netfilter_drop =
        |d: &Value| d["reason"] == "NETFILTER_DROP" && d["protocol"] == "esp" && d["source"] == n1_address.as_str();
    let streamed = follower.wait_for(Duration::from_secs(30), "kernel NETFILTER_DROP", is_netfilter_drop);
    assert_eq!(streamed["peer"], "n1", "{streamed}");
    assert!(streamed["location"].as_str().is_some_and(|l| l.contains('+')), "symbolized: {streamed}");

    let report = n2.ikectl_json(&["drops", "--kernel"]);
    let kernel = &report["kernel"];
    assert!(kernel["by_reason"]["NETFILTER_DROP"].as_u64() >= Some(3), "{kernel:#}");
    let recent = kernel["recent"].as_array().expect("recent kernel drops");
    assert!(recent.iter().any(is_netfilter_drop), "{kernel:#}");
    let text = String::from_utf8_lossy(&n2.ikectl(&["drops", "--kernel"]).stdout).to_string();
    assert!(text.contains("NETFILTER_DROP") && text.contains(&format!("esp {n1_address} ->")), "{text}");
    // meshd itself saw nothing of it: the kernel dropped the packets first.
    assert_eq!(n1.ikectl_json(&["drops"])["by_reason"].get("authentication"), None);
}

/// A ping across the overlay is no drop: each echo reply reaches `ping`'s raw socket, and the
/// kernel then frees it with NO_SOCKET (no ICMP datagram socket wants it). Reported, it was
/// noise in `ikectl drops --kernel` and woke the tracer's thread once per reply.
#[test]
fn echo_replies_taken_by_ping_are_no_kernel_drops() {
    require_root();
    let lab = Lab::new("dgpr", 2);
    let mesh = MeshFile::builder(&lab).write();
    let daemons = start_all(&lab, mesh.path());
    let n1 = &daemons[0];
    let before = n1.ikectl_json(&["drops", "--kernel"]);
    assert!(before["kernel"]["unavailable"].is_null(), "n1 traces kernel drops: {before:#}\n{}", n1.log());
    let ping = lab.node(0).ping(&lab.overlay_addr(1).to_string(), 10);
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));
    // And ICMPv6, to n2's link-local address on the overlay.
    let addresses = lab.node(1).run_stdout(["ip", "-6", "-o", "addr", "show", "dev", OVERLAY_NAME, "scope", "link"]);
    let link_local =
        addresses.split_whitespace().find_map(|word| word.strip_suffix("/64")).expect("n2's link-local address");
    let ping = lab.node(0).ping(&format!("{link_local}%{OVERLAY_NAME}"), 10);
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));
    // A drop that was traced reaches the report within the tracer's next read.
    std::thread::sleep(Duration::from_millis(500));
    let kernel = &n1.ikectl_json(&["drops", "--kernel"])["kernel"];
    let recent = kernel["recent"].as_array().expect("recent kernel drops");
    let replies: Vec<&Value> = recent.iter().filter(|d| d["reason"] == "NO_SOCKET").collect();
    assert!(replies.is_empty(), "echo replies reported as kernel drops: {replies:#?}");
    assert_eq!(kernel["by_reason"].get("NO_SOCKET"), None, "{kernel:#}");
}

/// `name{labels} value` lines of an OpenMetrics text, as (name with labels, value).
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample line: {line}"));
            (name.to_string(), value.parse().unwrap_or_else(|_| panic!("not a number in: {line}")))
        })
        .collect()
}

fn sample(samples: &[(String, f64)], name: &str) -> Option<f64> {
    samples.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// Two IKE nodes with `[metrics] listen`: a scrape over HTTP (curl inside n1's namespace) parses
/// as OpenMetrics and shows the configured and established peers, the overlay traffic of a ping
/// per peer and direction, the path MTU, rekeys and handshake failures per peer, and drops by
/// reason and peer.
#[test]
fn metrics_are_scraped_over_http() {
    require_root();
    let lab = Lab::new("dgme", 2);
    let mesh = MeshFile::builder(&lab).ike().extra("[metrics]\nlisten = \"127.0.0.1:9477\"\n").write();
    let daemons = start_all(&lab, mesh.path());
    let n1 = &daemons[0];
    let up = wait_until(Duration::from_secs(30), || {
        (n1.ikectl_json(&["status"])["peers_with_sas"].as_u64() == Some(1)).then_some(())
    });
    assert!(up.is_some(), "n1 and n2 did not negotiate SAs\n{}", n1.log());
    let ping = lab.node(0).ping(&lab.overlay_addr(1).to_string(), 3);
    assert!(ping.status.success(), "overlay ping failed: {}", String::from_utf8_lossy(&ping.stdout));

    let scrape = |path: &str| {
        let url = format!("http://127.0.0.1:9477{path}");
        let out = lab.node(0).exec(["curl", "-sS", "-o", "/dev/stdout", "-w", "\n%{http_code} %{content_type}", &url]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, status) = text.rsplit_once('\n').unwrap_or_else(|| panic!("curl {url}: {text}"));
        (status.to_string(), body.to_string())
    };
    let (status, body) = scrape("/metrics");
    assert!(status.starts_with("200 application/openmetrics-text"), "{status}\n{body}");
    assert!(body.trim_end().ends_with("# EOF"), "OpenMetrics ends with # EOF:\n{body}");
    let s = samples(&body);
    assert_eq!(sample(&s, "meshd_peers_configured"), Some(1.0), "{body}");
    assert_eq!(sample(&s, "meshd_peers_established"), Some(1.0), "{body}");
    for direction in ["tx", "rx"] {
        let packets = sample(&s, &format!("meshd_peer_packets_total{{peer=\"n2\",direction=\"{direction}\"}}"));
        assert!(packets >= Some(3.0), "3 pings each way, {direction}: {body}");
        let bytes = sample(&s, &format!("meshd_peer_bytes_total{{peer=\"n2\",direction=\"{direction}\"}}"));
        assert!(bytes >= Some(3.0 * 98.0), "3 ICMP frames of 98 bytes, {direction}: {body}");
    }
    assert_eq!(sample(&s, "meshd_rekeys_total{peer=\"n2\"}"), Some(0.0), "{body}");
    assert!(sample(&s, "meshd_path_mtu{peer=\"n2\"}").is_some_and(|mtu| (1280.0..=1500.0).contains(&mtu)), "{body}");
    assert_eq!(sample(&s, "meshd_handshake_failures_total{peer=\"n2\"}"), Some(0.0), "{body}");
    assert!(sample(&s, "meshd_early_esp_packets_total{peer=\"n2\"}").is_some(), "{body}");
    assert_eq!(sample(&s, "meshd_sa_notices_lost_total"), Some(0.0), "{body}");

    // A drop shows up by reason and peer: an IKE message n1 cannot parse, from n2's address.
    let n1_ike = format!("printf garbage > /dev/udp/{}/500", lab.addr(0));
    lab.node(1).run_ok(["bash", "-c", &n1_ike]);
    let dropped = wait_until(Duration::from_secs(10), || {
        sample(&samples(&scrape("/metrics").1), "meshd_drops_total{reason=\"ike_malformed\",peer=\"n2\"}")
    });
    assert_eq!(dropped, Some(1.0), "an unparsable IKE message from n2 is counted");

    assert!(scrape("/").0.starts_with("404"), "only /metrics is served");
}

/// The hop of a trace named `name` (the first one).
fn trace_hop<'a>(trace: &'a Value, name: &str) -> &'a Value {
    trace["hops"]
        .as_array()
        .and_then(|hops| hops.iter().find(|h| h["hop"] == name))
        .unwrap_or_else(|| panic!("no {name} hop in the trace: {trace:#}"))
}

/// Two manually keyed nodes after a ping: `ikectl trace` of n2's overlay IP on n1 walks the
/// overlay interface, the kernel's neighbour entry (n2's overlay MAC), the learned FDB entry,
/// peer n2 with its traffic, the outbound SA with the mesh file's SPI, the underlay route and
/// the path MTU; a MAC that was never seen is flooded to every peer.
#[test]
fn trace_walks_every_hop_to_a_peer() {
    require_root();
    let lab = Lab::new("dgtr", 2);
    let mesh = MeshFile::builder(&lab).write();
    let daemons = start_all(&lab, mesh.path());
    let (n1, n2) = (&daemons[0], &daemons[1]);
    let n2_overlay = lab.overlay_addr(1).to_string();
    let ping = lab.node(0).ping(&n2_overlay, 3);
    assert!(ping.status.success(), "overlay ping failed: {}", String::from_utf8_lossy(&ping.stdout));
    let n2_mac = lab.node(1).mac(&n2.overlay_interface(OVERLAY_NAME)).to_lowercase();

    let trace = n1.ikectl_json(&["trace", &n2_overlay]);
    let hops: Vec<&str> = trace["hops"].as_array().unwrap().iter().filter_map(|h| h["hop"].as_str()).collect();
    assert_eq!(hops, ["overlay", "neighbour", "fdb", "peer", "outbound SA", "underlay route", "path MTU"], "{trace:#}");
    assert!(trace["hops"].as_array().unwrap().iter().all(|h| h["problem"].is_null()), "a healthy path: {trace:#}");
    assert_eq!(trace_hop(&trace, "overlay")["fields"]["vni"], "4242", "{trace:#}");
    assert_eq!(trace_hop(&trace, "neighbour")["fields"]["mac"], n2_mac.as_str(), "{trace:#}");
    let fdb = trace_hop(&trace, "fdb");
    assert_eq!((fdb["fields"]["peer"].as_str(), fdb["fields"]["kind"].as_str()), (Some("n2"), Some("learned")));
    assert!(trace_hop(&trace, "peer")["counters"]["tx_packets"].as_u64() >= Some(3), "{trace:#}");
    let sa = trace_hop(&trace, "outbound SA");
    assert_eq!(sa["fields"]["spi"], mesh.sa(0, 1).spi_text().as_str(), "{trace:#}");
    assert!(sa["counters"]["packets"].as_u64() >= Some(3), "{trace:#}");
    let route = trace_hop(&trace, "underlay route");
    assert_eq!(route["fields"]["source"], lab.addr(0).to_string().as_str(), "{trace:#}");
    assert!(route["fields"]["interface"].is_string(), "{trace:#}");
    let mtu = trace_hop(&trace, "path MTU");
    assert_eq!(mtu["fields"]["path_mtu"], "1500", "{trace:#}");

    // The same decision from the MAC, and in words.
    let by_mac = n1.ikectl_json(&["trace", &n2_mac]);
    assert_eq!(trace_hop(&by_mac, "fdb")["fields"]["peer"], "n2", "{by_mac:#}");
    let text = String::from_utf8_lossy(&n1.ikectl(&["trace", &n2_overlay]).stdout).to_string();
    assert!(text.contains("learned behind n2") && text.contains("outbound SA"), "{text}");

    let unknown = n1.ikectl_json(&["trace", "02:00:00:00:00:99"]);
    assert!(trace_hop(&unknown, "fdb")["summary"].as_str().is_some_and(|s| s.contains("flooded")), "{unknown:#}");
    let bad = n1.ikectl(&["trace", "n2"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("neither a MAC"));
}

/// `ikectl --json ping PEER` on `daemon`: the report and whether ikectl exited 0.
fn ping_report(daemon: &Meshd, peer: &str) -> (Value, bool) {
    let output = daemon.ikectl(&["--json", "ping", peer, "--count", "3"]);
    let text = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!("ikectl ping printed no JSON ({e}): {text}\n{}", String::from_utf8_lossy(&output.stderr))
    });
    (report, output.status.success())
}

fn verdicts(report: &Value) -> String {
    report["verdicts"]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// A healthy manually keyed pair: probes answered through the SA, the peer answers the query with
/// its own view, the SPIs match crosswise, exit status 0; the text report has both columns.
#[test]
fn ping_reports_a_healthy_pair_from_both_sides() {
    require_root();
    let lab = Lab::new("dgph", 2);
    let mesh = MeshFile::builder(&lab).write();
    let daemons = start_all(&lab, mesh.path());
    let n1 = &daemons[0];
    let (report, ok) = ping_report(n1, "n2");
    assert!(ok, "a healthy pair exits 0: {report:#}");
    assert_eq!(report["healthy"], true, "{report:#}");
    assert_eq!(report["probes"]["received"], 3, "{report:#}");
    assert_eq!(report["remote"]["node"], "n2", "the peer answered with its view: {report:#}");
    assert_eq!(report["remote"]["observed_source"], format!("{}:4795", lab.addr(0)), "no NAT: {report:#}");
    let spi = mesh.sa(0, 1).spi_text();
    assert_eq!(report["local"]["outbound"]["spi"], spi.as_str(), "{report:#}");
    assert!(report["remote"]["inbound"].as_array().unwrap().iter().any(|sa| sa["spi"] == spi.as_str()), "{report:#}");
    let text = String::from_utf8_lossy(&n1.ikectl(&["ping", "n2", "--count", "2"]).stdout).to_string();
    assert!(
        text.contains("this node (n1)") && text.contains("peer (n2)") && text.contains("verdict: healthy"),
        "{text}"
    );
}

/// n2's mesh file has another key for the SA n1 -> n2: n2 drops n1's probes as authentication
/// failures, and n1's ping says so, with the SA, and exits 1.
#[test]
fn ping_reports_authentication_failures_of_a_wrong_manual_key() {
    require_root();
    let lab = Lab::new("dgpk", 2);
    let mesh = MeshFile::builder(&lab).write();
    let wrong = mesh.variant_with_key("wrong-key.toml", 0, 1, &[0x5a; 36]);
    let n1 = Meshd::start(lab.node(0), mesh.path(), &lab.node_name(0));
    let _n2 = Meshd::start(lab.node(1), &wrong, &lab.node_name(1));
    let (report, ok) = ping_report(&n1, "n2");
    assert!(!ok, "an unhealthy pair exits 1: {report:#}");
    let said = verdicts(&report);
    let spi = mesh.sa(0, 1).spi_text();
    assert!(said.contains("n2 drops this node's ESP as authentication failures") && said.contains(&spi), "{said}");
    assert!(report["remote"]["drops"]["authentication"].as_u64() >= Some(3), "in the peer's drops: {report:#}");
}

/// n2's SA from n1 is deleted there without telling n1 (n2 reloads a mesh file that names another
/// SPI for n1 -> n2): n1's ping names the SPI n2 no longer has and the fix, and exits 1.
#[test]
fn ping_reports_an_sa_deleted_on_one_side_with_the_spi() {
    require_root();
    let lab = Lab::new("dgps", 2);
    let mesh = MeshFile::builder(&lab).write();
    let n2_file = mesh.dir().join("n2.toml");
    meshd_lab::meshfile::write_private(&n2_file, &mesh.text());
    let n1 = Meshd::start(lab.node(0), mesh.path(), &lab.node_name(0));
    let n2 = Meshd::start(lab.node(1), &n2_file, &lab.node_name(1));
    let (before, ok) = ping_report(&n1, "n2");
    assert!(ok, "healthy before: {before:#}");

    let spi = mesh.sa(0, 1).spi_text();
    let other = mesh.text().replace(&format!("spi = \"{spi}\""), "spi = \"0x00007777\"");
    assert_ne!(other, mesh.text(), "the mesh file names the SPI as {spi}");
    meshd_lab::meshfile::write_private(&n2_file, &other);
    let reload = n2.ikectl(&["reload"]);
    assert!(reload.status.success(), "n2 reloads: {}", String::from_utf8_lossy(&reload.stderr));
    let inbound = n2.ikectl_json(&["sa", "list"]);
    assert!(!inbound.to_string().contains(&spi), "n2 no longer has SA {spi}: {inbound:#}");

    let (report, ok) = ping_report(&n1, "n2");
    assert!(!ok, "{report:#}");
    let said = verdicts(&report);
    assert!(said.contains(&format!("n2 has no inbound SA for SPI {spi}: run ikectl sa flush --peer n2")), "{said}");
}

/// n1 -- router (masquerade towards n2) -- n2, keyed by IKE: n1's ping reports NAT between the
/// nodes, as n2 sees n1's query from the router's address; UDP encapsulation crosses it, so the
/// pair is still healthy.
#[test]
fn ping_reports_nat_between_the_nodes() {
    require_root();
    let nat = RoutedPair::new("dgpn", Family::V4, 1500);
    nat.masquerade_towards(1);
    let mesh = MeshFile::for_addresses(vec![nat.addr(0), nat.addr(1)]).ike().write();
    let n1 = Meshd::start(nat.node(0), mesh.path(), "n1");
    let _n2 = Meshd::start(nat.node(1), mesh.path(), "n2");
    let up = wait_until(Duration::from_secs(30), || {
        (n1.ikectl_json(&["status"])["peers_with_sas"].as_u64() == Some(1)).then_some(())
    });
    assert!(up.is_some(), "n1 and n2 did not negotiate SAs through the NAT\n{}", n1.log());
    let (report, ok) = ping_report(&n1, "n2");
    let said = verdicts(&report);
    assert!(said.contains("NAT between the nodes (source NAT"), "{said}\n{report:#}");
    assert!(said.contains("n2 sees this node as 198.18.2.254:"), "{said}");
    assert!(ok, "UDP encapsulation crosses the NAT: healthy: {report:#}");
}

/// The router's link to n2 carries only 1280 bytes and drops every ICMP error: meshd's probes
/// find the path, and n1's ping reports the path MTU in both columns and the MTU verdict.
#[test]
fn ping_reports_a_path_mtu_below_the_overlay_mtu() {
    require_root();
    let pair = RoutedPair::new("dgpm", Family::V4, 1500);
    pair.set_router_mtu(1, 1280);
    let mesh = MeshFile::for_addresses(vec![pair.addr(0), pair.addr(1)]).write();
    let n1 = Meshd::start(pair.node(0), mesh.path(), "n1");
    let _n2 = Meshd::start(pair.node(1), mesh.path(), "n2");
    let probed = wait_until(Duration::from_secs(60), || {
        let peer = n1.ikectl_json(&["peers"])[0].clone();
        (peer["path_mtu_source"] == "probed" && peer["path_mtu"] == 1280).then_some(())
    });
    assert!(probed.is_some(), "n1 did not probe the 1280-byte path\n{}", n1.log());
    let (report, ok) = ping_report(&n1, "n2");
    assert!(!ok, "{report:#}");
    let said = verdicts(&report);
    assert!(said.contains("path MTU 1280") && said.contains("answered with ICMP too-big"), "{said}");
    assert_eq!(report["local"]["path_mtu"], 1280, "{report:#}");
    assert!(report["remote"]["path_mtu"].as_u64().is_some_and(|mtu| (1280..=1284).contains(&mtu)), "{report:#}");
    // Probes of 1400 bytes on the underlay vanish on the 1280-byte link.
    let big = n1.ikectl(&["--json", "ping", "n2", "--count", "2", "--size", "1400"]);
    let big: Value = serde_json::from_slice(&big.stdout).expect("ping --json");
    assert_eq!((big["probes"]["sent"].as_u64(), big["probes"]["received"].as_u64()), (Some(2), Some(0)), "{big:#}");
    assert!(verdicts(&big).contains("2 of 2 probes through the SA got no answer"), "{big:#}");
    let trace = n1.ikectl_json(&["trace", &pair_overlay_addr(1)]);
    let mtu = trace_hop(&trace, "path MTU");
    assert_eq!(
        (mtu["fields"]["path_mtu"].as_str(), mtu["fields"]["path_mtu_source"].as_str()),
        (Some("1280"), Some("probed"))
    );
}

/// The overlay address of node `i` in a `MeshFile::for_addresses` mesh.
fn pair_overlay_addr(i: usize) -> String {
    meshd_lab::lab::overlay_addr(i).to_string()
}
