//! A `meshd run` process inside a lab namespace, and `ikectl` against its control socket.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::netns::Netns;
use crate::util::{describe_output, send_signal, wait_until};

/// The cargo target directory the test executable was built into (`target/debug`): the test
/// binary is `target/debug/deps/<name>-<hash>`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a parent directory");
    if deps.file_name() == Some(OsStr::new("deps")) {
        deps.parent().expect("deps has a parent").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

fn workspace_bin(name: &str, env_override: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_override) {
        return PathBuf::from(path);
    }
    let path = target_dir().join(name);
    if !path.is_file() {
        panic!("{} not found: build them first: cargo build --workspace (or set {env_override})", path.display());
    }
    path
}

/// `target/debug/meshd` (or `$MESHD_BIN`).
pub fn meshd_bin() -> PathBuf {
    workspace_bin("meshd", "MESHD_BIN")
}

/// `target/debug/ikectl` (or `$IKECTL_BIN`).
pub fn ikectl_bin() -> PathBuf {
    workspace_bin("ikectl", "IKECTL_BIN")
}

/// A running `meshd run` in a namespace. Its stdout and stderr go to a log file, printed when
/// the test panics. Dropping it sends SIGTERM, and SIGKILL after 5 s.
#[derive(Debug)]
pub struct Meshd {
    child: Option<Child>,
    netns: String,
    node: String,
    config: PathBuf,
    extra: Vec<String>,
    socket: PathBuf,
    log: PathBuf,
    exit: Option<ExitStatus>,
    _dir: TempDir,
}

impl Meshd {
    /// Starts `meshd run --config CONFIG --node NODE --ctl-socket <tempdir>/NODE.sock` in `ns`
    /// and waits (at most 10 s) until `ikectl status` answers; panics with the log otherwise.
    pub fn start(ns: &Netns, config: &Path, node: &str) -> Meshd {
        Meshd::start_with(ns, config, node, &[])
    }

    /// Like [`Meshd::start`] with more `meshd run` arguments (e.g. `--no-offload`).
    pub fn start_with(ns: &Netns, config: &Path, node: &str, extra: &[&str]) -> Meshd {
        let mut meshd = Meshd::spawn(ns, config, node, extra);
        meshd.wait_ready(Duration::from_secs(10));
        meshd
    }

    /// Starts meshd like [`Meshd::start_with`] without waiting for it to answer.
    fn spawn(ns: &Netns, config: &Path, node: &str, extra: &[&str]) -> Meshd {
        let dir = tempfile::Builder::new().prefix("meshd-run-").tempdir().expect("tempdir");
        let socket = dir.path().join(format!("{node}.sock"));
        let log = dir.path().join(format!("{node}.log"));
        let child = spawn_meshd(ns, config, node, &socket, &log, extra);
        Meshd {
            child: Some(child),
            netns: ns.name().to_string(),
            node: node.to_string(),
            config: config.to_path_buf(),
            extra: extra.iter().map(|arg| arg.to_string()).collect(),
            socket,
            log,
            exit: None,
            _dir: dir,
        }
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.exit = Some(status);
                    self.child = None;
                    panic!(
                        "meshd {} in {} exited during startup ({status})\n--- meshd log ---\n{}",
                        self.node,
                        self.netns,
                        self.log()
                    );
                }
            }
            if self.socket.exists() && self.ikectl(&["status"]).status.success() {
                return;
            }
            if Instant::now() >= deadline {
                let status = self.ikectl(&["status"]);
                panic!(
                    "meshd {} in {}: `ikectl status` did not succeed within {timeout:?}\n{}\n--- meshd log ---\n{}",
                    self.node,
                    self.netns,
                    describe_output(&status),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Upgrades in place: starts `meshd run ... --upgrade` in `ns` with this daemon's arguments
    /// (the same control socket; its log appended to this one's), waits (at most 20 s) until
    /// the running process has exited and the new one answers `ikectl status`, and returns the
    /// exit status of the process it replaced (or of the one that crashed before, see
    /// [`Meshd::crash`]).
    pub fn upgrade(&mut self, ns: &Netns) -> ExitStatus {
        let old = self.child.take();
        let mut extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        extra.push("--upgrade");
        self.child = Some(spawn_meshd(ns, &self.config, &self.node, &self.socket, &self.log, &extra));
        let status = match old {
            Some(mut old) => match wait_until(Duration::from_secs(20), || old.try_wait().ok().flatten()) {
                Some(status) => status,
                None => {
                    let _ = old.kill();
                    panic!(
                        "meshd {}: the old process still runs 20 s after `--upgrade`\n--- log ---\n{}",
                        self.node,
                        self.log()
                    );
                }
            },
            None => self.exit.take().expect("an exit status of the crashed meshd"),
        };
        self.exit = None;
        self.wait_ready(Duration::from_secs(10));
        status
    }

    /// Kills the process with SIGKILL (leaving its socket files behind, as a crash does) and
    /// waits for it.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.exit = child.wait().ok();
        }
    }

    /// The SPIs (as `ikectl sa list` prints them) of this node's Child SAs in `direction`
    /// ("in" or "out").
    pub fn child_spis(&self, direction: &str) -> std::collections::BTreeSet<String> {
        self.ikectl_json(&["sa", "list"])["child_sas"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|sa| sa["direction"] == direction)
            .filter_map(|sa| sa["spi"].as_str().map(str::to_string))
            .collect()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `ikectl --socket SOCK args...`, run inside the daemon's namespace.
    pub fn ikectl(&self, args: &[&str]) -> Output {
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", &self.netns]).arg(ikectl_bin()).arg("--socket").arg(&self.socket).args(args);
        command.stdin(Stdio::null()).output().expect("run ikectl")
    }

    /// `ikectl --socket SOCK --json args...`, parsed; panics (with the daemon log) when ikectl
    /// fails or prints something that is not JSON. A reply still in its protocol envelope
    /// (`{"version":1,"ok":{"kind":..,"data":..}}`) is unwrapped to its data.
    pub fn ikectl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let output = self.ikectl(&full);
        if !output.status.success() {
            panic!(
                "meshd {}: ikectl {} failed\n{}\n--- meshd log ---\n{}",
                self.node,
                full.join(" "),
                describe_output(&output),
                self.log()
            );
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let value: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!("meshd {}: ikectl {} printed no JSON ({e}):\n{text}", self.node, full.join(" "))
        });
        match value.get("ok").and_then(|ok| ok.get("data")) {
            Some(data) if value.get("version").is_some() => data.clone(),
            _ => value,
        }
    }

    /// The interface of overlay `overlay` (from `ikectl --json status`).
    pub fn overlay_interface(&self, overlay: &str) -> String {
        let status = self.ikectl_json(&["status"]);
        let overlays = status["overlays"].as_array().cloned().unwrap_or_default();
        overlays
            .iter()
            .find(|o| o["name"].as_str() == Some(overlay))
            .and_then(|o| o["interface"].as_str())
            .unwrap_or_else(|| {
                panic!("meshd {}: no overlay {overlay:?} in `ikectl --json status`: {status}", self.node)
            })
            .to_string()
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after 5 s); returns the exit status.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        let mut child = self.child.take().expect("meshd child");
        let status = terminate(&mut child, Duration::from_secs(5));
        self.exit = Some(status);
        status
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => match child.try_wait() {
                Ok(None) => true,
                Ok(Some(status)) => {
                    self.exit = Some(status);
                    self.child = None;
                    false
                }
                Err(_) => false,
            },
            None => false,
        }
    }
}

impl Drop for Meshd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = terminate(&mut child, Duration::from_secs(5));
            self.exit = Some(status);
        }
        if std::thread::panicking() {
            eprintln!(
                "===== meshd {} (netns {}, exit {:?}) log {} =====\n{}\n===== end of meshd {} log =====",
                self.node,
                self.netns,
                self.exit,
                self.log.display(),
                self.log(),
                self.node
            );
        }
    }
}

/// Spawns `ip netns exec NS meshd run ...` with stdout and stderr appended to `log`, without
/// waiting for anything (for tests of startup failures). `ip netns exec` execs the command in
/// place, so the child's pid is meshd's.
/// Environment variable with `meshd run` arguments added to every meshd a test starts (split at
/// whitespace; one a test passes itself is not repeated): `scripts/test` runs the datapath suites
/// a second time with `MESHD_TEST_ARGS=--no-offload`.
pub const EXTRA_ARGS_VAR: &str = "MESHD_TEST_ARGS";

pub fn spawn_meshd(ns: &Netns, config: &Path, node: &str, socket: &Path, log: &Path, extra: &[&str]) -> Child {
    let from_environment = std::env::var(EXTRA_ARGS_VAR).unwrap_or_default();
    let added = from_environment.split_whitespace().filter(|arg| !extra.contains(arg));
    let out = File::options().create(true).append(true).open(log).expect("open meshd log");
    let err = out.try_clone().expect("dup log fd");
    let mut command = ns.command([meshd_bin().as_os_str()]);
    command
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--node")
        .arg(node)
        .arg("--ctl-socket")
        .arg(socket)
        .args(extra)
        .args(added)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // Plain text logs in the file (tracing-subscriber honours NO_COLOR).
    command.env("NO_COLOR", "1");
    // Manual SAs' sequence marks next to the mesh file, per node: kept across restarts of the
    // node within a test, never in the host's /var/lib/meshd.
    let config_dir = config.parent().unwrap_or(Path::new("."));
    command.env("MESHD_STATE_DIR", config_dir.join(format!("state-{node}")));
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info");
    }
    command.spawn().expect("spawn meshd")
}

/// SIGTERM, wait up to `grace`, then SIGKILL; returns the exit status.
pub fn terminate(child: &mut Child, grace: Duration) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    send_signal(child.id(), libc::SIGTERM);
    if let Some(status) = wait_until(grace, || child.try_wait().ok().flatten()) {
        return status;
    }
    eprintln!("process {} did not exit within {grace:?} of SIGTERM: SIGKILL", child.id());
    let _ = child.kill();
    child.wait().expect("wait for killed child")
}

/// Starts one `meshd` per lab node (`n1`..`nN`) with the same mesh file, one after the other,
/// and waits until each answers `ikectl status` before the next starts.
pub fn start_all(lab: &crate::Lab, config: &Path) -> Vec<Meshd> {
    (0..lab.len()).map(|i| Meshd::start(lab.node(i), config, &lab.node_name(i))).collect()
}

/// Starts one `meshd` per lab node with the same mesh file and `extra` `meshd run` arguments,
/// all at once, then waits until each answers `ikectl status` (at most 10 s, and a second more
/// per ten nodes).
pub fn start_all_at_once(lab: &crate::Lab, config: &Path, extra: &[&str]) -> Vec<Meshd> {
    let mut daemons: Vec<Meshd> =
        (0..lab.len()).map(|i| Meshd::spawn(lab.node(i), config, &lab.node_name(i), extra)).collect();
    let timeout = Duration::from_secs(10 + lab.len() as u64 / 10);
    for meshd in &mut daemons {
        meshd.wait_ready(timeout);
    }
    daemons
}

/// Like [`start_all`] for a mesh file whose nodes have keys: node `i` runs with
/// `--key <its key file>` ([`crate::MeshFile::key_args`]).
pub fn start_all_with_keys(lab: &crate::Lab, mesh: &crate::MeshFile) -> Vec<Meshd> {
    (0..lab.len())
        .map(|i| {
            let key = mesh.key_args(i);
            let args: Vec<&str> = key.iter().map(String::as_str).collect();
            Meshd::start_with(lab.node(i), mesh.path(), &lab.node_name(i), &args)
        })
        .collect()
}
