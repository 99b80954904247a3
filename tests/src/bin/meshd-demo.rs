//! The README's first command: a 3-node mesh in network namespaces on this machine, keyed by
//! IKEv2, each node authenticating with its own Ed25519 key (`meshd keygen`), pings across every
//! pair of overlay addresses, and what `ikectl` shows.
//!
//!   meshd-demo          # build it, show it, tear it down
//!   meshd-demo --keep   # leave it running and print how to look around and remove it

use std::process::ExitCode;

use std::time::{Duration, Instant};

use meshd_lab::util::wait_until;
use meshd_lab::{require_root, start_all_with_keys, Lab, MeshFile};

fn section(title: &str) {
    println!("\n=== {title}");
}

fn main() -> ExitCode {
    require_root();
    let keep = std::env::args().any(|arg| arg == "--keep");
    let nodes = 3;

    section("network namespaces: a switch with a bridge, and 3 nodes on 198.18.0.0/24");
    let lab = Lab::new("demo", nodes);
    for i in 0..nodes {
        println!(
            "{}  node {}  underlay {}  overlay {}",
            lab.node(i).name(),
            lab.node_name(i),
            lab.addr(i),
            lab.overlay_addr(i)
        );
    }

    section("a private key per node: meshd keygen --out nN.key (prints the public key for mesh.toml)");
    let mesh = MeshFile::builder(&lab).keys().write();
    for i in 0..nodes {
        println!("{}: {}  public key {}", lab.node_name(i), mesh.key_file(i).display(), mesh.public_keys(i)[0]);
    }
    section(&format!("mesh.toml (identical on every node, no shared secret): {}", mesh.path().display()));
    print!("{}", mesh.text());

    section("starting meshd on every node (meshd run --key nN.key)");
    let daemons = start_all_with_keys(&lab, &mesh);
    for daemon in &daemons {
        println!("meshd {} running, control socket {}", daemon.node(), daemon.socket().display());
    }

    section("IKEv2: waiting until every node has an IKE SA and a Child SA pair with every peer");
    let started = Instant::now();
    let established = wait_until(Duration::from_secs(20), || {
        daemons
            .iter()
            .all(|d| {
                let peers = d.ikectl_json(&["peers"]);
                peers.as_array().is_some_and(|list| {
                    list.iter().all(|p| p["keying"] == "ike: established" && !p["outbound_spi"].is_null())
                })
            })
            .then_some(())
    });
    match established {
        Some(()) => {
            println!("all {} pairs established in {} ms", nodes * (nodes - 1) / 2, started.elapsed().as_millis())
        }
        None => println!("not every pair is established after 20 s: see ikectl peers below"),
    }

    section("ping across the overlay, every pair");
    let mut failures = 0;
    for from in 0..nodes {
        for to in (0..nodes).filter(|to| *to != from) {
            let output = lab.node(from).ping(&lab.overlay_addr(to).to_string(), 3);
            let summary = String::from_utf8_lossy(&output.stdout)
                .lines()
                .find(|line| line.contains("packets transmitted"))
                .unwrap_or("no answer")
                .to_string();
            let verdict = if output.status.success() { "ok" } else { "FAILED" };
            if !output.status.success() {
                failures += 1;
            }
            println!("{} -> {}: {verdict}: {summary}", lab.node_name(from), lab.overlay_addr(to));
        }
    }

    let (peer_name, peer_overlay) = (lab.node_name(1), lab.overlay_addr(1).to_string());
    let commands: [(&[&str], &str); 7] = [
        (&["sa", "list"], ""),
        (&["peers"], ""),
        (&["fdb"], ""),
        (&["status"], ""),
        (
            &["drops"],
            "(a new mesh counts a few no_outbound_sa: the frames each kernel sends on a new overlay \
             interface, ARP and IPv6 MLD and DAD, before the node's SAs are up; any other reason is \
             worth a look: docs/diagnostics.md)\n",
        ),
        (&["ping", &peer_name, "--count", "3"], ""),
        (&["trace", &peer_overlay], ""),
    ];
    for (command, note) in commands {
        section(&format!("ikectl {} on {}", command.join(" "), daemons[0].node()));
        let output = daemons[0].ikectl(command);
        print!("{}{}{note}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    }

    if keep {
        section("left running");
        let names: Vec<String> = lab.nodes().iter().chain([lab.switch()]).map(|ns| ns.name().to_string()).collect();
        println!("look around:   ip netns exec {} ping 10.244.0.2", names[0]);
        println!("               ikectl --socket {} sa list", daemons[0].socket().display());
        println!(
            "remove it all: for ns in {}; do ip netns pids $ns | xargs -r kill; ip netns del $ns; done",
            names.join(" ")
        );
        std::mem::forget(daemons);
        std::mem::forget(mesh);
        std::mem::forget(lab);
    } else {
        section("tearing down (run with --keep to leave the mesh running)");
        drop(daemons);
        drop(lab);
    }
    if failures > 0 {
        eprintln!("{failures} pings failed: see the meshd logs above");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
