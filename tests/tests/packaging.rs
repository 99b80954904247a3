//! What ships, as a user gets it: the Debian package (`scripts/package`, unpacked with
//! `dpkg-deb`, never installed here, and checked by lintian), the systemd unit
//! (`packaging/meshd.service`: `systemd-analyze verify` accepts it with the binaries where it
//! expects them), the Vagrant lab (`vagrant validate`, and its mesh file passes `meshd check`),
//! the Prometheus rules and Grafana dashboard (`packaging/prometheus`, `packaging/grafana`:
//! promtool, and every metric they use is in meshd's output) and `meshd run --log-format json`.
//! Needs `systemd-analyze` (systemd), `vagrant`, `lintian`, `promtool` (prometheus) and
//! cargo-deb (scripts/test installs them all); no VM. The lab tests need root (namespaces).
//!
//! Run: `cargo build --workspace && cargo test -p meshd-lab --test packaging`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
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
    for (bin, folder) in [(meshd_bin(), "usr/sbin"), (ikectl_bin(), "usr/bin")] {
        let folder = root.path().join(folder);
        fs::create_dir_all(&folder).expect("create bin folder");
        let name = bin.file_name().expect("a binary's file name");
        fs::copy(&bin, folder.join(name)).expect("copy the binary (cargo build --workspace first)");
    }
    let units = root.path().join("etc/systemd/system");
    fs::create_dir_all(&units).expect("create units");
    fs::copy(repo().join("packaging/meshd.service"), units.join("meshd.service")).expect("copy the unit");

    let root_arg = format!("--root={}", root.path().display());
    // --man=no: the man pages of Documentation= come with the package, not installed here.
    let out =
        Command::new("systemd-analyze").args(["verify", "--man=no", &root_arg, "meshd.service"]).output().expect("run");
    assert!(out.status.success(), "systemd-analyze verify refused the unit:\n{}", describe_output(&out));
    // Unknown keys and the like are only warnings: there must be none.
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "systemd-analyze verify warns:\n{}", describe_output(&out));

    let unit = fs::read_to_string(units.join("meshd.service")).expect("read unit");
    for line in [
        "ExecReload=/usr/bin/ikectl reload",
        "ConditionPathExists=/etc/meshd/mesh.toml",
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

/// Every `meshd_...` name in `text` (metric names in PromQL, in YAML or JSON).
fn metric_names(text: &str) -> BTreeSet<String> {
    text.match_indices("meshd_")
        .filter(|(at, _)| !text[..*at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
        .map(|(at, _)| text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect())
        .collect()
}

/// The metric names an OpenMetrics scrape exposes: every sample's name, and each family's
/// sample name even when it has no sample yet (a counter `meshd_drops` is `meshd_drops_total`).
fn exposed_metrics(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(family) = line.strip_prefix("# TYPE ") {
            let mut words = family.split_whitespace();
            if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                names.insert(if kind == "counter" { format!("{name}_total") } else { name.to_string() });
            }
        } else if !line.starts_with('#') {
            names.extend(line.split(['{', ' ']).next().filter(|name| !name.is_empty()).map(str::to_string));
        }
    }
    names
}

#[test]
fn alert_rules_pass_promtool_and_fire_on_their_test_series() {
    require_tool("promtool", "prometheus");
    let rules = repo().join("packaging/prometheus");
    let check = Command::new("promtool").args(["check", "rules", "meshd.rules.yml"]).current_dir(&rules).output();
    let check = check.expect("run promtool check rules");
    assert!(check.status.success(), "promtool check rules:\n{}", describe_output(&check));
    assert!(String::from_utf8_lossy(&check.stdout).contains("SUCCESS: 4 rules found"), "{}", describe_output(&check));
    // The unit tests: each alert fires on the series that should raise it, and only there.
    let test = Command::new("promtool").args(["test", "rules", "meshd.rules.test.yml"]).current_dir(&rules).output();
    let test = test.expect("run promtool test rules");
    assert!(test.status.success(), "promtool test rules:\n{}", describe_output(&test));
}

/// A lab meshd with `[metrics] listen`, scraped: every metric the alert rules and the dashboard
/// use is one meshd exposes (a renamed metric would leave an alert that never fires).
#[test]
fn every_metric_of_the_rules_and_dashboard_is_in_meshds_output() {
    require_root();
    let lab = Lab::new("pkmt", 2);
    let mesh = MeshFile::builder(&lab).ike().extra("[metrics]\nlisten = \"127.0.0.1:9477\"\n").write();
    let _n2 = Meshd::start(lab.node(1), mesh.path(), "n2");
    let n1 = Meshd::start(lab.node(0), mesh.path(), "n1");
    let established = wait_until(Duration::from_secs(30), || {
        (n1.ikectl_json(&["status"])["peers_with_sas"].as_u64() == Some(1)).then_some(())
    });
    assert!(established.is_some(), "n1 and n2 did not negotiate SAs\n{}", n1.log());
    // Metric families without a sample are not in the output: make a drop of each kind. meshd
    // drops an IKE message it cannot parse; the kernel drops n2's ESP-in-UDP (nftables in n1).
    lab.node(1).run_ok(["bash", "-c", &format!("printf garbage > /dev/udp/{}/500", lab.addr(0))]);
    lab.node(0).run_ok(["nft", "add", "table", "inet", "pkmt"]);
    lab.node(0).run_ok(["nft", "add chain inet pkmt input { type filter hook input priority 0; }"]);
    lab.node(0).run_ok(["nft", "add", "rule", "inet", "pkmt", "input", "udp", "dport", "4500", "drop"]);
    let _ = lab.node(0).ping(&lab.overlay_addr(1).to_string(), 2);
    let scrape = wait_until(Duration::from_secs(30), || {
        let out = lab.node(0).exec(["curl", "-sS", "http://127.0.0.1:9477/metrics"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ["meshd_path_overlay_mtu{", "meshd_drops_total{", "meshd_kernel_drops_total{"]
            .iter()
            .all(|sample| text.contains(sample))
            .then_some(text)
    });
    let scrape = scrape.unwrap_or_else(|| panic!("n1's metrics lack a path MTU or drops after 30 s\n{}", n1.log()));
    let exposed = exposed_metrics(&scrape);
    for file in ["packaging/prometheus/meshd.rules.yml", "packaging/grafana/meshd.json"] {
        let text = fs::read_to_string(repo().join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
        let used = metric_names(&text);
        assert!(used.len() >= 4, "{file} uses hardly any meshd metric: {used:?}");
        let missing: Vec<&String> = used.difference(&exposed).collect();
        assert!(missing.is_empty(), "{file} uses metrics meshd does not expose: {missing:?}\nscrape:\n{scrape}");
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(repo().join("packaging/grafana/meshd.json")).expect("read dashboard"))
            .expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 6), "dashboard panels: {dashboard:#}");
}

/// `--log-format json`: every line meshd logs is one JSON object with a level and a message;
/// without it, plain lines (what journald gets).
#[test]
fn log_format_json_writes_one_object_per_line() {
    require_root();
    let lab = Lab::new("pklg", 2);
    let mesh = MeshFile::builder(&lab).ike().write();
    let plain = Meshd::start(lab.node(1), mesh.path(), "n2");
    let json = Meshd::start_with(lab.node(0), mesh.path(), "n1", &["--log-format", "json"]);
    let established = wait_until(Duration::from_secs(30), || {
        (json.ikectl_json(&["status"])["peers_with_sas"].as_u64() == Some(1)).then_some(())
    });
    assert!(established.is_some(), "n1 did not establish\n{}", json.log());
    let log = json.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "n1 logged hardly anything:\n{log}");
    for line in &lines {
        let record: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}\n{log}"));
        assert!(record["level"].is_string() && record["timestamp"].is_string(), "{line}");
        assert!(record["fields"]["message"].is_string(), "no message: {line}");
    }
    let plain_log = plain.log();
    let first = plain_log.lines().next().unwrap_or_else(|| panic!("n2 logged nothing"));
    assert!(serde_json::from_str::<serde_json::Value>(first).is_err() && first.contains("INFO"), "{first}");
}

fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(output.status.success(), "{command:?} failed:\n{}", describe_output(&output));
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `./scripts/package` as a user runs it, then the .deb looked at with dpkg-deb (listed, its
/// control files read, unpacked into a temp dir: never installed here) and lintian: the binaries,
/// the unit, the example conffile, man pages and completions are where they belong; the
/// maintainer scripts enable meshd, start it only through the unit's condition and, after an
/// upgrade, send it SIGUSR2 (the hitless handover) instead of restarting it; lintian finds no
/// error, and every warning it gives is explained in
/// docs/install.md.
#[test]
fn debian_package_holds_everything_in_place_and_passes_lintian() {
    require_tool("dpkg-deb", "dpkg");
    require_tool("lintian", "lintian");
    let built = run(Command::new(repo().join("scripts/package")).current_dir(repo()));
    let deb = stdout(&built)
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.ends_with(".deb"))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("scripts/package printed no .deb:\n{}", describe_output(&built)));
    assert!(deb.parent().is_some_and(|dir| dir.ends_with("target/debian")), "not in target/debian: {}", deb.display());

    let version = env!("CARGO_PKG_VERSION");
    let info = stdout(&run(Command::new("dpkg-deb").arg("-I").arg(&deb)));
    for field in ["Package: meshd", &format!("Version: {version}-1"), "Section: net", "Depends: ", "Maintainer: "] {
        assert!(info.lines().any(|l| l.trim_start().starts_with(field)), "no {field:?} in dpkg-deb -I:\n{info}");
    }

    let listing = stdout(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    let paths: BTreeSet<&str> =
        listing.lines().filter_map(|line| line.split_whitespace().nth(5)).map(|p| p.trim_start_matches('.')).collect();
    for path in [
        "/usr/sbin/meshd",
        "/usr/bin/ikectl",
        "/usr/lib/systemd/system/meshd.service",
        "/etc/meshd/mesh.toml.example",
        "/usr/share/man/man8/meshd.8.gz",
        "/usr/share/man/man8/meshd-run.8.gz",
        "/usr/share/man/man1/ikectl.1.gz",
        "/usr/share/man/man1/ikectl-fleet-update.1.gz",
        "/usr/share/bash-completion/completions/meshd",
        "/usr/share/bash-completion/completions/ikectl",
        "/usr/share/zsh/vendor-completions/_meshd",
        "/usr/share/zsh/vendor-completions/_ikectl",
        "/usr/share/fish/vendor_completions.d/meshd.fish",
        "/usr/share/fish/vendor_completions.d/ikectl.fish",
        "/usr/share/meshd/prometheus/meshd.rules.yml",
        "/usr/share/meshd/grafana/meshd.json",
        "/usr/share/doc/meshd/copyright",
    ] {
        assert!(paths.contains(path), "the package has no {path}:\n{listing}");
    }
    assert!(!paths.contains("/etc/meshd/mesh.toml"), "the package must not ship a live mesh file");
    let mode = |path: &str| listing.lines().find(|l| l.ends_with(&format!(".{path}"))).map(|l| l[..10].to_string());
    assert_eq!(mode("/usr/sbin/meshd").as_deref(), Some("-rwxr-xr-x"), "{listing}");

    // The control files: the example is a conffile; install enables and starts (the unit's
    // condition skips the start without a mesh file); an upgrade hands over; removal stops.
    let dir = tempfile::tempdir().expect("tempdir");
    let control = dir.path().join("DEBIAN");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let conffiles = fs::read_to_string(control.join("conffiles")).expect("the package has conffiles");
    assert_eq!(conffiles.trim(), "/etc/meshd/mesh.toml.example");
    let postinst = fs::read_to_string(control.join("postinst")).expect("postinst");
    assert!(postinst.contains("deb-systemd-helper enable meshd.service"), "{postinst}");
    // An upgrade never restarts meshd: it sends a running one SIGUSR2, the hitless handover.
    assert!(postinst.contains("deb-systemd-invoke start meshd.service"), "{postinst}");
    assert!(!postinst.contains("_dh_action=restart") && !postinst.contains("invoke restart"), "{postinst}");
    assert!(postinst.contains("systemctl kill --kill-whom=main --signal=SIGUSR2 meshd.service"), "{postinst}");
    let prerm = fs::read_to_string(control.join("prerm")).expect("prerm");
    assert!(prerm.contains("\"$1\" = remove") && prerm.contains("deb-systemd-invoke stop meshd.service"), "{prerm}");
    assert!(control.join("postrm").exists(), "no postrm (purge cleans the unit's state)");

    let root = dir.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let unit = fs::read_to_string(root.join("usr/lib/systemd/system/meshd.service")).expect("unit");
    assert_eq!(unit, fs::read_to_string(repo().join("packaging/meshd.service")).expect("read the unit"));
    for line in
        ["ConditionPathExists=/etc/meshd/mesh.toml", "ExecStart=/usr/sbin/meshd run --config /etc/meshd/mesh.toml"]
    {
        assert!(unit.lines().any(|l| l == line), "the packaged unit has no {line:?}");
    }
    let meshd = root.join("usr/sbin/meshd");
    assert_eq!(stdout(&run(Command::new(&meshd).arg("--version"))).trim(), format!("meshd {version}"));
    assert_eq!(
        stdout(&run(Command::new(root.join("usr/bin/ikectl")).arg("--version"))).trim(),
        format!("ikectl {version}")
    );
    for (page, says) in
        [("man8/meshd-run.8.gz", "\\-\\-log\\-format"), ("man1/ikectl-fleet-update.1.gz", "\\-\\-meshd")]
    {
        let text = stdout(&run(Command::new("gzip").arg("-dc").arg(root.join("usr/share/man").join(page))));
        assert!(text.starts_with(".ie") || text.contains(".TH "), "{page} is no man page:\n{text}");
        assert!(text.contains(says), "{page} does not document {says}:\n{text}");
    }
    let bash = fs::read_to_string(root.join("usr/share/bash-completion/completions/ikectl")).expect("bash completion");
    assert!(bash.contains("fleet") && bash.contains("--remote-restart"), "{bash}");

    // The example mesh file is a valid one (with a psk beside it).
    let example = dir.path().join("example");
    fs::create_dir_all(&example).expect("mkdir");
    fs::copy(root.join("etc/meshd/mesh.toml.example"), example.join("mesh.toml")).expect("copy the example");
    // As docs/install.md installs it: 0600, since the example holds [[manual_sa]] keys.
    fs::set_permissions(example.join("mesh.toml"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    fs::write(example.join("psk"), "0123456789abcdef0123456789abcdef\n").expect("write psk");
    fs::set_permissions(example.join("psk"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    run(Command::new(&meshd).args(["check", "--node", "n1", "--config"]).arg(example.join("mesh.toml")));

    let lintian = Command::new("lintian").args(["--fail-on", "error", "--no-tag-display-limit"]).arg(&deb).output();
    let lintian = lintian.expect("run lintian");
    let report = describe_output(&lintian);
    eprintln!("lintian:\n{report}");
    assert!(lintian.status.success(), "lintian reports errors:\n{report}");
    let explained = fs::read_to_string(repo().join("docs/install.md")).expect("read docs/install.md");
    for line in stdout(&lintian).lines().filter(|l| l.starts_with("W: ") || l.starts_with("E: ")) {
        let tag = line.split_whitespace().nth(2).unwrap_or(line);
        assert!(explained.contains(&format!("`{tag}`")), "lintian's {tag} is not explained in docs/install.md: {line}");
    }
}
