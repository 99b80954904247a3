//! `ikectl bugreport`: what a ticket needs, as named files (ikectl packs them into a tar.gz):
//! the control plane's views, a ping of every peer, the recent log lines, the effective config,
//! versions and the kernel facts that matter to the mesh. No secret goes in: the config is its
//! `Debug` form (secrets print as `..redacted..`), and every file is scrubbed once more of the
//! pre-shared key and the manual keys, in case one was logged or echoed.

use std::net::IpAddr;
use std::process::Command as Process;
use std::sync::Arc;

use mesh_config::control::{Reply, ReportFile, Response};
use mesh_config::MeshConfig;

use super::hex;
use crate::ctl::response;
use crate::dispatch::Services;

/// Probes per peer in the report's pings.
const PING_COUNT: u32 = 3;
/// What replaces a secret found in a file.
const REDACTED: &str = "..redacted..";

/// Every file of the report, scrubbed of secrets.
pub async fn collect(services: &Arc<Services>) -> Vec<ReportFile> {
    let mut files = Vec::new();
    let state = &services.state;
    let views = [
        ("status.json", Ok(Reply::Status(services.status()))),
        ("sa-list.json", services.sa_list(None).map(Reply::SaList)),
        ("peers.json", Ok(Reply::Peers(crate::report::peers(state, &services.keying)))),
        ("fdb.json", Ok(Reply::Fdb(crate::report::fdb(state)))),
        ("drops.json", services.drops(None, true).map(Reply::Drops)),
    ];
    for (name, view) in views {
        files.push(file(name, json(&response(view))));
    }
    let peers: Vec<String> = services.state.topology().peers.iter().map(|p| p.name.clone()).collect();
    let mut pings = tokio::task::JoinSet::new();
    for peer in peers {
        let services = services.clone();
        pings.spawn(async move {
            let pinged = services.ping(&peer, PING_COUNT, 0).await.map(Reply::Ping);
            file(&format!("ping-{peer}.json"), json(&response(pinged)))
        });
    }
    while let Some(done) = pings.join_next().await {
        match done {
            Ok(report) => files.push(report),
            Err(error) => files.push(file("ping-failed.txt", format!("a ping task failed: {error}"))),
        }
    }
    if let Some((tracked, overflow)) = services.state.observers.flow_stats() {
        let stats = format!("flows tracked: {tracked}\npackets not metered (flow cache full): {overflow}\n");
        files.push(file("flows.txt", stats));
    }
    files.push(file("log.txt", crate::logging::recent_lines().join("\n") + "\n"));
    let config = services.config.load_full();
    files.push(file("config.txt", format!("# {} as meshd runs it\n{config:#?}\n", config.path.display())));
    let peer_addresses: Vec<IpAddr> = services.state.topology().peers.iter().map(|p| p.address).collect();
    match tokio::task::spawn_blocking(move || kernel_facts(&peer_addresses)).await {
        Ok(facts) => files.extend(facts),
        Err(error) => files.push(file("kernel.txt", format!("collecting the kernel facts failed: {error}"))),
    }
    scrub(&mut files, &secrets(&config));
    files
}

fn file(name: &str, contents: String) -> ReportFile {
    ReportFile { name: name.to_string(), contents }
}

fn json(response: &Response) -> String {
    serde_json::to_string_pretty(response).unwrap_or_else(|error| format!("cannot serialize: {error}"))
}

/// Versions, interfaces and MTUs, routes (and the one to each peer), neighbour-table
/// thresholds, rp_filter, and the nftables ruleset.
fn kernel_facts(peers: &[IpAddr]) -> Vec<ReportFile> {
    let mut versions = format!("meshd {}\n", env!("CARGO_PKG_VERSION"));
    versions += &run(&["uname", "-a"]);
    versions += &read("/etc/os-release");
    let mut network = String::new();
    for command in [
        &["ip", "-d", "link", "show"][..],
        &["ip", "address", "show"],
        &["ip", "route", "show"],
        &["ip", "-6", "route", "show"],
    ] {
        network += &run(command);
    }
    for peer in peers {
        network += &run(&["ip", "route", "get", &peer.to_string()]);
    }
    let mut sysctls = String::new();
    for family in ["ipv4", "ipv6"] {
        for threshold in ["gc_thresh1", "gc_thresh2", "gc_thresh3"] {
            sysctls += &sysctl(&format!("/proc/sys/net/{family}/neigh/default/{threshold}"));
        }
    }
    let interfaces = std::fs::read_dir("/proc/sys/net/ipv4/conf").into_iter().flatten().flatten();
    let mut rp_filters: Vec<String> =
        interfaces.map(|entry| entry.path().join("rp_filter").display().to_string()).collect();
    rp_filters.sort();
    for path in rp_filters {
        sysctls += &sysctl(&path);
    }
    vec![
        file("versions.txt", versions),
        file("network.txt", network),
        file("sysctl.txt", sysctls),
        file("nftables.txt", run(&["nft", "list", "ruleset"])),
    ]
}

/// `$ command` and what it printed, or why it could not run.
fn run(command: &[&str]) -> String {
    let heading = format!("$ {}\n", command.join(" "));
    let Some((program, args)) = command.split_first() else { return heading };
    match Process::new(program).args(args).output() {
        Ok(output) => {
            heading + &String::from_utf8_lossy(&output.stdout) + &String::from_utf8_lossy(&output.stderr) + "\n"
        }
        Err(error) => heading + &format!("(could not run: {error})\n\n"),
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| format!("{path}: {error}\n"))
}

fn sysctl(path: &str) -> String {
    format!("{path} = {}\n", read(path).trim())
}

/// The secrets of `config` as they could appear in text: the PSK as text and hex, the manual
/// keys as hex.
fn secrets(config: &MeshConfig) -> Vec<String> {
    let mut secrets: Vec<String> = Vec::new();
    if let Some(psk) = &config.psk {
        secrets.push(String::from_utf8_lossy(psk.as_bytes()).into_owned());
        secrets.push(hex(psk.as_bytes()));
    }
    secrets.extend(config.manual_sas.iter().map(|sa| hex(sa.key.as_bytes())));
    // A secret of a few characters would blank out ordinary words; validation refuses such keys.
    secrets.retain(|secret| secret.trim().len() >= 8);
    secrets
}

/// Replaces every secret in every file, in lower and upper case.
fn scrub(files: &mut [ReportFile], secrets: &[String]) {
    for file in files.iter_mut() {
        for secret in secrets {
            for form in [secret.clone(), secret.to_uppercase()] {
                if file.contents.contains(form.as_str()) {
                    file.contents = file.contents.replace(form.as_str(), REDACTED);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_replaces_secrets_as_text_and_hex_in_any_case() {
        let psk = b"s3cr3t-psk-value";
        let secrets = [String::from_utf8_lossy(psk).into_owned(), hex(psk)];
        let text = "said s3cr3t-psk-value, 7333637233742d70736b2d76616c7565 and 7333637233742D70736B2D76616C7565";
        let mut files = vec![file("log.txt", text.into())];
        scrub(&mut files, &secrets);
        assert_eq!(files[0].contents, "said ..redacted.., ..redacted.. and ..redacted..");
    }
}
