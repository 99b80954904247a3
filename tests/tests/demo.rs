//! The README's first command as a new user runs it: `scripts/demo` installs packages, builds and
//! runs the meshd-demo binary, which is what this drives. It must build a healthy 3-node mesh,
//! answer every ping, show ikectl's view, and leave no namespace behind.

use std::collections::BTreeSet;
use std::process::Command;

use meshd_lab::require_root;
use meshd_lab::util::describe_output;

/// The network namespaces the demo names (`demo-n1-PID`, ..., `demo-sw-PID`).
fn demo_namespaces() -> BTreeSet<String> {
    let output = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with("demo-"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_demo_shows_a_healthy_mesh_and_leaves_nothing_behind() {
    require_root();
    let before = demo_namespaces();
    let output = Command::new(env!("CARGO_BIN_EXE_meshd-demo")).output().expect("meshd-demo starts");
    let described = describe_output(&output);
    assert!(output.status.success(), "{described}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("all 3 pairs established in"), "{described}");
    let answered = stdout.lines().filter(|line| line.contains(": ok: 3 packets transmitted, 3 received")).count();
    assert_eq!(answered, 6, "every ordered pair of the 3 nodes pings: {described}");
    for section in ["sa list", "peers", "fdb", "status", "drops", "ping n2 --count 3", "trace 10.244.0.2"] {
        assert!(stdout.contains(&format!("=== ikectl {section} on n1")), "no `ikectl {section}` section: {described}");
    }
    assert!(stdout.contains("verdict: healthy"), "{described}");
    assert!(stdout.contains("=== tearing down"), "{described}");
    assert_eq!(demo_namespaces(), before, "the demo removed every namespace it made");
}
