//! Hostile tenants and a stopped daemon (issue 15): a VM flooding source MACs behind one node
//! costs the other nodes nothing, and overlay traffic never leaves in plaintext while meshd is
//! down.
//!
//! Run: `cargo build --workspace && sudo -E cargo test -p meshd-lab --test hardening`.

use std::time::{Duration, Instant};

use meshd_lab::meshfile::OVERLAY_NAME;
use meshd_lab::{require_root, start_all, Lab, MeshFile, RawSender};
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
