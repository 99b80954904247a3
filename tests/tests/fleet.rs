//! `ikectl fleet` against real sshd in every lab node: updates with canary, batches, check
//! failures, unreachable nodes and an interrupted run; the health matrix; a fleet-wide SA flush.
//!
//! ikectl runs in the lab's control namespace and reaches the nodes only over the lab's
//! underlay, with keys, known_hosts and ssh config made by the test.

use std::fs;
use std::process::{Output, Stdio};
use std::time::Duration;

use meshd_lab::util::{describe_output, send_signal};
use meshd_lab::{wait_until, Lab, MeshFile, Meshd, SshFleet};

/// A second overlay the updates add.
const SECOND_OVERLAY: &str = "\n[[overlay]]\nname = \"ovl1\"\nvni = 4343\n[overlay.address]\n";

fn second_overlay(nodes: usize) -> String {
    let mut text = SECOND_OVERLAY.to_string();
    for i in 0..nodes {
        text.push_str(&format!("n{} = \"10.244.1.{}/24\"\n", i + 1, i + 1));
    }
    text
}

/// The mesh file of the first `nodes` nodes of `lab`, keyed by IKE, plus `extra` TOML.
fn mesh(lab: &Lab, nodes: usize, extra: &str) -> MeshFile {
    MeshFile::for_addresses((0..nodes).map(|i| lab.addr(i)).collect()).ike().extra(extra).write()
}

/// Every node's mesh file before (`old`) and after (`new`: a second overlay) an update.
struct Rollout {
    old: MeshFile,
    new: MeshFile,
    meshds: Vec<Meshd>,
}

/// Every node of `lab` on the same old mesh file, meshd running, every pair with SAs.
fn everyone_on_the_old_file(lab: &Lab, fleet: &SshFleet) -> Rollout {
    let old = mesh(lab, lab.len(), "");
    let new = mesh(lab, lab.len(), &second_overlay(lab.len()));
    for i in 0..lab.len() {
        fleet.write_node_config(i, &old.text(), &old.psk());
    }
    let meshds: Vec<Meshd> = (0..lab.len()).map(|i| fleet.start_meshd(lab, i)).collect();
    wait_established(&meshds);
    Rollout { old, new, meshds }
}

fn text(output: &Output) -> String {
    describe_output(output)
}

/// `ikectl --json fleet update`'s result of `node`: (result, reason).
fn outcome(output: &Output, node: &str) -> (String, String) {
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("no JSON from fleet update ({e})\n{}", text(output)));
    let row = rows.as_array().and_then(|rows| rows.iter().find(|r| r["node"] == node));
    let row = row.unwrap_or_else(|| panic!("no row for {node}\n{}", text(output)));
    (row["result"].as_str().unwrap_or_default().to_string(), row["reason"].as_str().unwrap_or_default().to_string())
}

/// Waits (generously: a loaded 2-core VM) until every pair of `meshds` has SAs both ways.
fn wait_established(meshds: &[Meshd]) {
    for meshd in meshds {
        let others = meshds.len() - 1;
        let ok = wait_until(Duration::from_secs(60), || {
            let status = meshd.ikectl_json(&["status"]);
            (status["peers_with_sas"].as_u64() == Some(others as u64)).then_some(())
        });
        assert!(ok.is_some(), "{}: not every peer has SAs after 60 s: {}", meshd.node(), meshd.ikectl_json(&["peers"]));
    }
}

/// Pings every other node's address on `subnet` (10.244.S.x) from every node.
fn ping_every_pair(lab: &Lab, nodes: usize, subnet: u8) {
    for from in 0..nodes {
        for to in (0..nodes).filter(|&to| to != from) {
            let target = format!("10.244.{subnet}.{}", to + 1);
            let ok =
                wait_until(Duration::from_secs(30), || lab.node(from).ping(&target, 1).status.success().then_some(()));
            assert!(ok.is_some(), "n{} cannot ping {target} over the overlay", from + 1);
        }
    }
}

fn assert_meshd_check(fleet: &SshFleet, lab: &Lab, i: usize) {
    let config = fleet.node_config(i);
    let output = lab.node(i).exec([
        meshd_lab::meshd_bin().as_os_str(),
        "check".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--node".as_ref(),
        lab.node_name(i).as_ref(),
    ]);
    assert!(output.status.success(), "n{}'s mesh file does not pass meshd check\n{}", i + 1, text(&output));
}

#[test]
fn update_changes_an_overlay_and_adds_a_node() {
    let lab = Lab::new("flu", 4);
    let fleet = SshFleet::start(&lab, "flu");
    let old = mesh(&lab, 3, "");
    let new = mesh(&lab, 4, &second_overlay(4));
    for i in 0..3 {
        fleet.write_node_config(i, &old.text(), &old.psk());
    }
    // The added node is provisioned with the new mesh file; the others learn of it by the update.
    fleet.write_node_config(3, &new.text(), &old.psk());
    let mut meshds: Vec<Meshd> = (0..4).map(|i| fleet.start_meshd(&lab, i)).collect();
    wait_established(&meshds[..3]);

    let config = new.path().to_str().expect("utf-8 path");
    let dry = fleet.run("update", &["--config", config, "--dry-run"]);
    assert!(dry.status.success(), "dry run failed\n{}", text(&dry));
    let plan = String::from_utf8_lossy(&dry.stdout);
    eprintln!("{plan}");
    assert!(plan.contains("n1: update") && plan.contains("+name = \"ovl1\""), "{plan}");
    assert!(plan.contains("n4: unchanged"), "{plan}");
    assert_eq!(fs::read_to_string(fleet.node_config(0)).unwrap(), old.text(), "a dry run changed n1");

    let run = fleet.run("update", &["--config", config, "--batch", "2"]);
    assert!(run.status.success(), "fleet update failed\n{}", text(&run));
    let table = String::from_utf8_lossy(&run.stdout);
    assert_eq!(table.lines().filter(|l| l.contains("┆ updated ")).count(), 3, "n1..n3 updated\n{}", text(&run));
    assert!(table.contains("order: n1 (canary), then [n2, n3]"), "{table}");
    let again = fleet.run("update", &["--config", config, "--json"]);
    assert!(again.status.success(), "{}", text(&again));
    for node in ["n1", "n2", "n3", "n4"] {
        assert_eq!(outcome(&again, node).0, "unchanged", "a second run changes nothing");
    }
    for i in 0..4 {
        assert_eq!(fs::read_to_string(fleet.node_config(i)).unwrap(), new.text(), "n{} has not the new file", i + 1);
    }
    assert!(fs::read_to_string(fleet.node_config(0).with_extension("toml.fleet-previous")).unwrap() == old.text());
    wait_established(&meshds);
    ping_every_pair(&lab, 4, 0);
    ping_every_pair(&lab, 4, 1);
    for meshd in &mut meshds {
        assert!(meshd.is_running(), "{} stopped", meshd.node());
    }
}

#[test]
fn a_failed_meshd_check_stops_the_rollout_and_restores_the_batch() {
    let lab = Lab::new("flc", 4);
    let fleet = SshFleet::start(&lab, "flc");
    let Rollout { old, new, mut meshds } = everyone_on_the_old_file(&lab, &fleet);
    // n3 cannot read the psk_file any more: its meshd (running, key loaded) is fine, but any
    // new config fails `meshd check` there.
    fs::remove_file(fleet.node_config(2).with_file_name("psk")).expect("remove n3's psk");

    // canary n1, then [n2, n3] (n3 fails), then [n4] (never tried).
    let run = fleet.run("update", &["--config", new.path().to_str().unwrap(), "--batch", "2", "--json"]);
    assert!(!run.status.success(), "the update should fail\n{}", text(&run));
    assert_eq!(outcome(&run, "n1").0, "updated");
    let (n2, why) = outcome(&run, "n2");
    assert!(n2 == "rolled back" && why.contains("n3: meshd check failed"), "n2: {n2}: {why}");
    assert_eq!(outcome(&run, "n3").0, "rolled back");
    assert_eq!(outcome(&run, "n4").0, "skipped");
    assert_eq!(fs::read_to_string(fleet.node_config(0)).unwrap(), new.text());
    for i in 1..4 {
        assert_eq!(fs::read_to_string(fleet.node_config(i)).unwrap(), old.text(), "n{} is not on its old file", i + 1);
        assert!(!fleet.node_config(i).with_extension("toml.fleet-new").exists(), "n{} kept the upload", i + 1);
    }
    for meshd in &mut meshds {
        assert!(meshd.is_running(), "{} stopped", meshd.node());
    }
    wait_established(&meshds);
    ping_every_pair(&lab, 4, 0);
}

/// `sync` for a node's ssh sessions that fails its first two-argument call while the marker
/// `fail-once` lies beside it: the install step's `sync FILE FOLDER`, which runs after the rename.
const SYNC_FAILING_ONCE: &str = "#!/bin/sh\nmarker=\"$(dirname \"$0\")/fail-once\"\n\
    if [ $# -eq 2 ] && [ -e \"$marker\" ]; then rm -f \"$marker\"; echo 'sync: injected failure' >&2; exit 1; fi\n\
    exec /bin/sync \"$@\"\n";

#[test]
fn an_install_failing_after_its_rename_is_rolled_back_with_its_batch() {
    let lab = Lab::new("fli", 3);
    let fleet = SshFleet::start(&lab, "fli");
    let Rollout { old, new, mut meshds } = everyone_on_the_old_file(&lab, &fleet);
    let bin = fleet.shadow_command(1, "sync", SYNC_FAILING_ONCE);
    fs::write(bin.join("fail-once"), "").expect("arm the sync failure");

    // canary n1, then [n2, n3]: n2's new file is live when its install step fails.
    let run = fleet.run("update", &["--config", new.path().to_str().unwrap(), "--batch", "2", "--json"]);
    assert!(!run.status.success(), "the update should fail\n{}", text(&run));
    assert!(!bin.join("fail-once").exists(), "the install never ran sync on n2\n{}", text(&run));
    assert_eq!(outcome(&run, "n1").0, "updated");
    let (n2, why) = outcome(&run, "n2");
    assert!(n2 == "rolled back" && why.contains("sync: injected failure"), "n2: {n2}: {why}");
    assert_eq!(outcome(&run, "n3").0, "rolled back");
    assert_eq!(fs::read_to_string(fleet.node_config(0)).unwrap(), new.text());
    for i in 1..3 {
        let config = fleet.node_config(i);
        assert_eq!(fs::read_to_string(&config).unwrap(), old.text(), "n{} is not on its old file", i + 1);
        assert!(!config.with_extension("toml.fleet-pending").exists(), "n{} still has a reload pending", i + 1);
    }
    for meshd in &mut meshds {
        assert!(meshd.is_running(), "{} stopped", meshd.node());
    }
    // n1 runs the new file (two overlays), n2 and n3 the old one: overlay 0 is on every node.
    wait_established(&meshds);
    ping_every_pair(&lab, 3, 0);
}

#[test]
fn an_unreachable_node_is_reported_and_fails_the_update() {
    let lab = Lab::new("flr", 3);
    let mut fleet = SshFleet::start(&lab, "flr");
    let Rollout { old, new, meshds: _running } = everyone_on_the_old_file(&lab, &fleet);
    fleet.stop_sshd(2);
    let config = new.path().to_str().unwrap();

    let dry = fleet.run("update", &["--config", config, "--dry-run"]);
    assert!(!dry.status.success(), "a dry run with an unreachable node must fail\n{}", text(&dry));
    assert!(String::from_utf8_lossy(&dry.stdout).contains("n3: UNREACHABLE: ssh root@198.18.0.3"), "{}", text(&dry));

    let run = fleet.run("update", &["--config", config, "--json"]);
    assert!(!run.status.success(), "the update must fail with n3 unreachable\n{}", text(&run));
    assert_eq!(outcome(&run, "n1").0, "updated");
    assert_eq!(outcome(&run, "n2").0, "updated");
    let (n3, why) = outcome(&run, "n3");
    assert!(n3 == "unreachable" && why.contains("ssh root@198.18.0.3"), "n3: {n3}: {why}");
    assert_eq!(fs::read_to_string(fleet.node_config(2)).unwrap(), old.text());
}

#[test]
fn an_update_killed_midway_leaves_every_node_valid_and_running() {
    let lab = Lab::new("flk", 4);
    let fleet = SshFleet::start(&lab, "flk");
    let Rollout { old, new, mut meshds } = everyone_on_the_old_file(&lab, &fleet);

    // n3's meshd stops answering (SIGSTOP): the rollout hangs in n3's reload, after n1 and n2
    // are done and n3's new file is installed; there it is killed.
    let n3 = meshds[2].pid().expect("n3's meshd runs");
    send_signal(n3, libc::SIGSTOP);
    let config = new.path().to_str().unwrap();
    let mut child = fleet
        .command("update", &["--config", config, "--batch", "1"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start ikectl fleet");
    let hanging = wait_until(Duration::from_secs(120), || {
        (fs::read_to_string(fleet.node_config(2)).ok()? == new.text()).then_some(())
    });
    // SIGKILL: no chance to clean up (ip netns exec execs ikectl, so this is ikectl's pid).
    let _ = child.kill();
    let _ = child.wait();
    send_signal(n3, libc::SIGCONT);
    assert!(hanging.is_some(), "the rollout never reached n3");
    let on_new: Vec<bool> = (0..4).map(|i| fs::read_to_string(fleet.node_config(i)).unwrap() == new.text()).collect();
    assert_eq!(on_new, [true, true, true, false], "n1..n3 have the new file, n4 was never reached");

    for i in 0..4 {
        let file = fs::read_to_string(fleet.node_config(i)).unwrap();
        assert!(file == old.text() || file == new.text(), "n{} has a mangled mesh file:\n{file}", i + 1);
        assert_meshd_check(&fleet, &lab, i);
    }
    for meshd in &mut meshds {
        assert!(meshd.is_running(), "{} stopped", meshd.node());
        assert!(meshd.ikectl(&["status"]).status.success(), "{} does not answer", meshd.node());
    }

    let pending = |i: usize| fleet.node_config(i).with_extension("toml.fleet-pending").exists();
    assert!(pending(2), "n3's reload was never seen to finish: it must stay marked");

    // Running the update again finishes the job: n3 is reloaded (whatever its meshd did after
    // SIGCONT), n4 updated.
    let run = fleet.run("update", &["--config", config, "--json"]);
    assert!(run.status.success(), "the second update failed\n{}", text(&run));
    let results: Vec<String> = ["n1", "n2", "n3", "n4"].iter().map(|n| outcome(&run, n).0).collect();
    assert_eq!(results, ["unchanged", "unchanged", "updated", "updated"], "{}", text(&run));
    assert!((0..4).all(|i| !pending(i)), "a pending mark is left");
    assert_eq!(fs::read_to_string(fleet.node_config(2).with_extension("toml.fleet-previous")).unwrap(), old.text());
    wait_established(&meshds);
    ping_every_pair(&lab, 4, 1);
}

#[test]
fn status_shows_a_one_sided_sa_and_sa_flush_reaches_every_node() {
    let lab = Lab::new("fls", 3);
    let fleet = SshFleet::start(&lab, "fls");
    let mesh_file = MeshFile::builder(&lab).write();
    for i in 0..3 {
        fleet.write_node_config(i, &mesh_file.text(), &mesh_file.psk());
    }
    // n2 expects n1's traffic under another SPI: n1 -> n2 is broken, n2 -> n1 works.
    let n1_to_n2 = mesh_file.sa(0, 1).spi_text();
    fleet.write_node_config(1, &mesh_file.text().replace(&n1_to_n2, "0x00001199"), &mesh_file.psk());
    let _meshds: Vec<Meshd> = (0..3).map(|i| fleet.start_meshd(&lab, i)).collect();
    let config = mesh_file.path().to_str().unwrap();

    let status = fleet.run("status", &["--config", config]);
    assert!(!status.status.success(), "a one-sided pair must fail fleet status\n{}", text(&status));
    let out = String::from_utf8_lossy(&status.stdout);
    eprintln!("{out}");
    assert!(out.contains("ONE-SIDED: n2->n1 works, n1->n2 does not"), "{out}");

    let json = fleet.run("status", &["--config", config, "--json"]);
    let value: serde_json::Value =
        serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("{e}\n{}", text(&json)));
    let state = |row: usize, column: usize| value["matrix"][row][column]["state"].as_str().unwrap_or("?").to_string();
    assert_eq!(state(0, 1), "one_sided", "{value}");
    assert_eq!(state(1, 0), "one_sided", "{value}");
    for (a, b) in [(0, 2), (2, 0), (1, 2), (2, 1)] {
        assert_eq!(state(a, b), "established", "n{} -> n{}: {value}", a + 1, b + 1);
    }

    let flush = fleet.run("sa-flush", &["--config", config, "--nodes", "n1,n3"]);
    assert!(flush.status.success(), "fleet sa-flush failed\n{}", text(&flush));
    let rows: serde_json::Value =
        serde_json::from_slice(&fleet.run("sa-flush", &["--config", config, "--json"]).stdout)
            .expect("fleet sa-flush --json prints JSON");
    let flushed: Vec<&str> = rows
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["flushed"] == true)
        .filter_map(|r| r["node"].as_str())
        .collect();
    assert_eq!(flushed, ["n1", "n2", "n3"], "{rows}");
}

/// Every node of `lab` on `mesh`, its meshd run as a service from its own binary.
fn services_on(lab: &Lab, fleet: &SshFleet, mesh: &MeshFile) {
    for i in 0..lab.len() {
        fleet.write_node_config(i, &mesh.text(), &mesh.psk());
        fleet.start_service(lab, i);
    }
    services_established(lab, fleet);
}

/// Waits until every service meshd has SAs with every peer.
fn services_established(lab: &Lab, fleet: &SshFleet) {
    for i in 0..lab.len() {
        let ok = wait_until(Duration::from_secs(60), || {
            let status = fleet.service_ikectl_json(lab, i, &["status"]);
            (status["peers_with_sas"].as_u64() == Some(lab.len() as u64 - 1)).then_some(())
        });
        assert!(ok.is_some(), "n{}: not every peer has SAs after 60 s\n{}", i + 1, fleet.service_log(i));
    }
}

/// An executable script in `dir`.
fn script(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    fs::write(&path, text).expect("write script");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod script");
    path
}

#[test]
fn a_binary_rollout_restarts_every_node_on_the_new_meshd_and_ikectl() {
    let lab = Lab::new("flb", 3);
    let fleet = SshFleet::start(&lab, "flb");
    let mesh = mesh(&lab, 3, "");
    services_on(&lab, &fleet, &mesh);
    let pids_before: Vec<Option<u32>> = (0..3).map(|i| fleet.service_pid(i)).collect();

    // "New builds": other bytes than the installed binaries, the same programs.
    let builds = tempfile::tempdir().expect("tempdir");
    let meshd = format!("#!/bin/sh\n# meshd, rebuilt\nexec {} \"$@\"\n", meshd_lab::meshd_bin().display());
    let ikectl = format!("#!/bin/sh\n# ikectl, rebuilt\nexec {} \"$@\"\n", meshd_lab::ikectl_bin().display());
    let new_meshd = script(builds.path(), "meshd", &meshd);
    let new_ikectl = script(builds.path(), "ikectl", &ikectl);
    let config = mesh.path().to_str().expect("utf-8 path");
    let binaries = ["--meshd", new_meshd.to_str().unwrap(), "--ikectl", new_ikectl.to_str().unwrap()];
    // n2 as a rollout killed after its install leaves it: the new meshd in place, the old one
    // kept as .fleet-previous, the pending mark set, meshd never restarted.
    let n2_meshd = fleet.node_binary(1, "meshd");
    let build = fs::read_link(&n2_meshd).expect("n2's meshd is a link to the build's");
    std::os::unix::fs::symlink(&build, n2_meshd.with_file_name("meshd.fleet-previous")).expect("keep the old one");
    fs::remove_file(&n2_meshd).expect("remove the link (writing through it would change the build)");
    script(n2_meshd.parent().expect("bin folder"), "meshd", &meshd);
    fs::write(n2_meshd.with_file_name("meshd.fleet-pending"), "").expect("mark the restart pending");

    let dry = fleet.run("update", &[&["--config", config, "--dry-run"], &binaries[..]].concat());
    assert!(dry.status.success(), "dry run failed\n{}", text(&dry));
    let plan = String::from_utf8_lossy(&dry.stdout);
    eprintln!("{plan}");
    assert_eq!(plan.matches(": new binary").count(), 3, "{plan}");
    assert!(plan.contains("n2/bin/meshd is the new one, but an interrupted run never saw meshd restart"), "{plan}");
    assert!(plan.contains("meshd: /") && plan.contains("ikectl: /") && plan.contains("-> sha256 "), "{plan}");
    assert_eq!(fleet.service_pid(0), pids_before[0], "a dry run restarted n1");

    let run = fleet.run("update", &[&["--config", config, "--batch", "2", "--json"], &binaries[..]].concat());
    assert!(run.status.success(), "binary rollout failed\n{}", text(&run));
    for (i, before) in pids_before.iter().enumerate() {
        let node = format!("n{}", i + 1);
        assert_eq!(outcome(&run, &node).0, "updated", "{node}\n{}", text(&run));
        assert_eq!(fs::read_to_string(fleet.node_binary(i, "meshd")).unwrap(), meshd, "{node} has not the new meshd");
        assert_eq!(fs::read_to_string(fleet.node_binary(i, "ikectl")).unwrap(), ikectl, "{node}: not the new ikectl");
        assert_ne!(fleet.service_pid(i), *before, "{node}'s meshd was not restarted");
        assert!(!fleet.node_binary(i, "meshd.fleet-pending").exists(), "{node} still has a restart pending");
    }
    // n2's rollback copy is still the binary from before the interrupted run.
    assert_eq!(fs::read_link(n2_meshd.with_file_name("meshd.fleet-previous")).ok(), Some(build));
    services_established(&lab, &fleet);
    ping_every_pair(&lab, 3, 0);

    let again = fleet.run("update", &[&["--config", config, "--json"], &binaries[..]].concat());
    assert!(again.status.success(), "{}", text(&again));
    for node in ["n1", "n2", "n3"] {
        assert_eq!(outcome(&again, node).0, "unchanged", "a second rollout changes nothing");
    }

    // fleet status: the version each node runs, and its uptime since the restart.
    let status = fleet.run("status", &["--config", config, "--json"]);
    assert!(status.status.success(), "{}", text(&status));
    let value: serde_json::Value = serde_json::from_slice(&status.stdout).expect("fleet status --json");
    for i in 0..3 {
        assert_eq!(value["versions"][i]["meshd"], env!("CARGO_PKG_VERSION"), "{value:#}");
        assert!(value["versions"][i]["uptime_secs"].as_u64().is_some(), "{value:#}");
    }
    let table = String::from_utf8_lossy(&fleet.run("status", &["--config", config]).stdout).to_string();
    assert!(table.contains("meshd") && table.contains(env!("CARGO_PKG_VERSION")), "{table}");
}

#[test]
fn a_canary_whose_new_meshd_does_not_come_up_is_rolled_back() {
    let lab = Lab::new("flx", 3);
    let fleet = SshFleet::start(&lab, "flx");
    let mesh = mesh(&lab, 3, "");
    services_on(&lab, &fleet, &mesh);
    let pids_before: Vec<Option<u32>> = (0..3).map(|i| fleet.service_pid(i)).collect();
    let installed = fs::read_link(fleet.node_binary(0, "meshd")).expect("n1's meshd is a link to the build's");

    // A build that passes --version and check on the node but exits as soon as it runs.
    let builds = tempfile::tempdir().expect("tempdir");
    let real = meshd_lab::meshd_bin();
    let broken = script(
        builds.path(),
        "meshd",
        &format!(
            "#!/bin/sh\ncase \"$1\" in\n  run) echo 'meshd: this build cannot start' >&2; exit 1;;\n  *) exec {} \"$@\";;\nesac\n",
            real.display()
        ),
    );
    let config = mesh.path().to_str().unwrap();
    let run = fleet.run(
        "update",
        &["--config", config, "--meshd", broken.to_str().unwrap(), "--health-timeout", "15", "--batch", "2", "--json"],
    );
    assert!(!run.status.success(), "the rollout must fail\n{}", text(&run));
    let (n1, why) = outcome(&run, "n1");
    assert!(n1 == "rolled back" && why.contains("n1: health check failed"), "n1: {n1}: {why}\n{}", text(&run));
    for node in ["n2", "n3"] {
        assert_eq!(outcome(&run, node).0, "skipped", "{node}\n{}", text(&run));
    }
    // n1 is back on its old binary, restarted on it; n2 and n3 were never touched.
    assert_eq!(fs::read_link(fleet.node_binary(0, "meshd")).ok(), Some(installed), "n1's meshd was not put back");
    assert!(!fleet.node_binary(0, "meshd.fleet-new").exists(), "n1 kept the upload");
    assert!(fleet.service_log(0).contains("this build cannot start"), "the broken build never ran on n1");
    assert_ne!(fleet.service_pid(0), pids_before[0], "n1 was not restarted on its old meshd");
    for (i, before) in pids_before.iter().enumerate().skip(1) {
        assert_eq!(fleet.service_pid(i), *before, "n{} was restarted", i + 1);
        assert!(fs::read_link(fleet.node_binary(i, "meshd")).is_ok(), "n{}'s meshd was replaced", i + 1);
    }
    services_established(&lab, &fleet);
    ping_every_pair(&lab, 3, 0);
}
