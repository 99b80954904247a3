//! The node at the edges of the underlay (issue 14): a NAT that changes its mapping mid-transfer.
//!
//! Run: `cargo build --workspace && sudo -E cargo test -p meshd-lab --test node_hardening`.

use std::time::Duration;

use meshd_lab::util::{describe_output, wait_until};
use meshd_lab::{require_root, Family, MeshFile, Meshd, RoutedPair};

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
