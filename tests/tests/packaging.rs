//! The systemd unit (`packaging/meshd.service`) and the Vagrant lab (`vagrant/`) as a user gets
//! them: `systemd-analyze verify` accepts the unit with the binaries where it expects them,
//! `vagrant validate` accepts the Vagrantfile, and the mesh file the lab writes passes
//! `meshd check` for every node. Needs `systemd-analyze` (systemd) and `vagrant` (Debian's
//! package; scripts/test installs both); no VM. The capability test needs root (namespaces).
//!
//! Run: `cargo build --workspace && cargo test -p meshd-lab --test packaging`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use meshd_lab::meshd::terminate;
use meshd_lab::util::{describe_output, require_root, wait_until};
use meshd_lab::{ikectl_bin, meshd_bin, Lab, MeshFile, Meshd};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repository").to_path_buf()
}

fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().expect("run sh");
    assert!(found.status.success(), "{tool} is not installed: apt-get install {package} (scripts/test installs it)");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create dir");
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if kind.is_symlink() {
            let link = fs::read_link(entry.path()).expect("read link");
            std::os::unix::fs::symlink(link, target).expect("copy symlink");
        } else {
            fs::copy(entry.path(), target).expect("copy file");
        }
    }
}

#[test]
fn systemd_unit_verifies_with_the_binaries_in_place() {
    require_tool("systemd-analyze", "systemd");
    // A root with the system's units, the binaries where the unit runs them, and the unit.
    let root = tempfile::tempdir().expect("tempdir");
    copy_dir(Path::new("/usr/lib/systemd/system"), &root.path().join("usr/lib/systemd/system"));
    let bin = root.path().join("usr/local/bin");
    fs::create_dir_all(&bin).expect("create bin");
    fs::copy(meshd_bin(), bin.join("meshd")).expect("copy meshd (cargo build --workspace first)");
    fs::copy(ikectl_bin(), bin.join("ikectl")).expect("copy ikectl (cargo build --workspace first)");
    let units = root.path().join("etc/systemd/system");
    fs::create_dir_all(&units).expect("create units");
    fs::copy(repo().join("packaging/meshd.service"), units.join("meshd.service")).expect("copy the unit");

    let root_arg = format!("--root={}", root.path().display());
    let out = Command::new("systemd-analyze").args(["verify", &root_arg, "meshd.service"]).output().expect("run");
    assert!(out.status.success(), "systemd-analyze verify refused the unit:\n{}", describe_output(&out));
    // Unknown keys and the like are only warnings: there must be none.
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "systemd-analyze verify warns:\n{}", describe_output(&out));

    let unit = fs::read_to_string(units.join("meshd.service")).expect("read unit");
    for line in [
        "ExecReload=/usr/local/bin/ikectl reload",
        "Restart=on-failure",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE CAP_BPF CAP_PERFMON CAP_SYSLOG",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit has no line {line:?}");
    }

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", &root_arg, "meshd.service"])
        .output()
        .expect("run systemd-analyze security");
    let text = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for meshd.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in systemd-analyze security:\n{}", describe_output(&security)));
    eprintln!("systemd-analyze security: exposure {exposure}");
    assert!(exposure < 5.0, "the unit gives meshd more than it needs (exposure {exposure}):\n{text}");
}

#[test]
fn vagrant_lab_validates_and_writes_a_mesh_every_node_accepts() {
    require_tool("vagrant", "vagrant");
    // A copy, so that the lab's psk (made on first use) and vagrant's state stay out of the tree.
    let copy = tempfile::tempdir().expect("tempdir");
    copy_dir(&repo().join("vagrant"), &copy.path().join("vagrant"));
    copy_dir(&repo().join("packaging"), &copy.path().join("packaging"));
    let home = copy.path().join("home");
    fs::create_dir_all(&home).expect("create home");
    let out = Command::new("vagrant")
        .arg("validate")
        .current_dir(copy.path().join("vagrant"))
        .env("HOME", &home)
        .env("VAGRANT_HOME", home.join(".vagrant.d"))
        .output()
        .expect("run vagrant validate");
    assert!(out.status.success(), "vagrant validate failed:\n{}", describe_output(&out));
    let psk = fs::read_to_string(copy.path().join("vagrant/.psk")).expect("the Vagrantfile made the lab psk");
    assert_eq!(psk.trim().len(), 64, "a 32-byte hex psk");

    for script in ["provision.sh", "write-mesh.sh"] {
        let syntax = Command::new("bash").arg("-n").arg(repo().join("vagrant").join(script)).output().expect("bash");
        assert!(syntax.status.success(), "{script}: {}", describe_output(&syntax));
    }

    // The mesh file the provisioning writes, with the Vagrantfile's nodes, for each node.
    let etc = copy.path().join("etc-meshd");
    let nodes = ["n1=192.168.56.11", "n2=192.168.56.12", "n3=192.168.56.13"];
    let out = Command::new(repo().join("vagrant/write-mesh.sh"))
        .arg(&etc)
        .args(nodes)
        .env("MESHD_PSK", psk.trim())
        .output()
        .expect("run write-mesh.sh");
    assert!(out.status.success(), "write-mesh.sh failed:\n{}", describe_output(&out));
    let vagrantfile = fs::read_to_string(repo().join("vagrant/Vagrantfile")).expect("read Vagrantfile");
    for node in nodes {
        let (name, address) = node.split_once('=').expect("NAME=ADDRESS");
        assert!(vagrantfile.contains(&format!("\"{name}\" => \"{address}\"")), "the Vagrantfile has no node {node}");
        let check = Command::new(meshd_bin())
            .args(["check", "--node", name, "--config"])
            .arg(etc.join("mesh.toml"))
            .output()
            .expect("run meshd check");
        assert!(check.status.success(), "meshd check --node {name}:\n{}", describe_output(&check));
    }
}

/// meshd keeps working with exactly the capabilities the unit grants (as root without them, like
/// systemd runs it): IKE on UDP 500 comes up, traffic flows, and the kernel drop tracer loads.
#[test]
fn meshd_runs_with_only_the_units_capabilities() {
    require_root();
    require_tool("setpriv", "util-linux");
    let unit = fs::read_to_string(repo().join("packaging/meshd.service")).expect("read the unit");
    let capabilities: Vec<String> = unit
        .lines()
        .find_map(|line| line.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit has a CapabilityBoundingSet")
        .split_whitespace()
        .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let bounding = format!("-all,{}", capabilities.join(","));

    let lab = Lab::new("pkcap", 2);
    let mesh = MeshFile::builder(&lab).ike().write();
    let n2 = Meshd::start(lab.node(1), mesh.path(), "n2");
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("n1.sock");
    let log = fs::File::create(dir.path().join("n1.log")).expect("create log");
    let mut n1 = lab
        .node(0)
        // tracefs as systemd mounts it at boot (the unit orders itself after that mount); `ip
        // netns exec` gives each command a fresh /sys, so the mount happens in the same exec.
        .command(["sh", "-c", "mount -t tracefs nodev /sys/kernel/tracing && exec \"$@\"", "sh"])
        .args(["setpriv", "--bounding-set", &bounding, "--"])
        .arg(meshd_bin())
        .args(["run", "--config"])
        .arg(mesh.path())
        .args(["--node", "n1", "--ctl-socket"])
        .arg(&socket)
        .env("NO_COLOR", "1")
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("spawn meshd under setpriv");
    let ikectl = |args: &[&str]| {
        let out = lab.node(0).command([ikectl_bin()]).arg("--socket").arg(&socket).args(args).output().expect("ikectl");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()
    };
    let established = wait_until(Duration::from_secs(20), || {
        let peers = ikectl(&["--json", "peers"])?;
        peers.as_array()?.iter().any(|p| p["keying"] == "ike: established").then_some(())
    });
    let n1_log = || fs::read_to_string(dir.path().join("n1.log")).unwrap_or_default();
    assert!(established.is_some(), "n1 with the unit's capabilities never established IKE:\n{}", n1_log());
    let ping = lab.node(0).ping(&lab.overlay_addr(1).to_string(), 3);
    assert!(ping.status.success(), "no traffic across the overlay:\n{}", describe_output(&ping));
    let drops = ikectl(&["--json", "drops", "--kernel"]).expect("drops --kernel answers");
    assert_eq!(drops["kernel"]["unavailable"], serde_json::Value::Null, "kernel drop tracing is off: {drops:#}");
    terminate(&mut n1, Duration::from_secs(5));
    drop(n2);
}
