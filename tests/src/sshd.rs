//! Real OpenSSH servers in the lab for `ikectl fleet`: one `sshd` per node namespace (port 22
//! of the node's underlay address, its own host key and config file), a client key, a
//! known_hosts file and an ssh config file, all made in a temp dir, and a "control" namespace on
//! the lab's switch from which `ikectl fleet` runs. Nothing touches the host's ssh setup.
//!
//! Each node gets a folder `<dir>/nodes/<name>/` for its `mesh.toml`, `psk` and (a link to)
//! meshd's control socket `meshd.sock`: the fleet commands find them with
//! `--remote-config <dir>/nodes/{node}/mesh.toml` and `--remote-socket <dir>/nodes/{node}/meshd.sock`.
//!
//! For binary rollouts a node's meshd runs as a service instead ([`SshFleet::start_service`]):
//! `<dir>/nodes/<name>/bin/meshd` and `bin/ikectl` (links to the build's, replaced by a rollout),
//! started and restarted by `<dir>/nodes/<name>/restart` as a service manager would.

use std::cell::Cell;
use std::fs::{self, File};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::lab::{Lab, NODE_IFACE};
use crate::meshd::{ikectl_bin, meshd_bin, terminate, Meshd};
use crate::netns::Netns;
use crate::util::{describe_output, wait_until};

/// The control namespace's underlay address (the nodes use .1 to .N).
pub const CONTROL_ADDR: &str = "198.18.0.250";
/// The switch port of the control namespace.
const CONTROL_PORT: &str = "pctl";
const SSHD: &str = "/usr/sbin/sshd";

/// sshd on every node of a lab, and the client side in a control namespace.
#[derive(Debug)]
pub struct SshFleet {
    sshds: Vec<Option<Child>>,
    names: Vec<String>,
    addresses: Vec<IpAddr>,
    control: Netns,
    dir: TempDir,
    /// Fleet commands use the nodes' own binaries and restart scripts (service mode).
    services: Cell<bool>,
}

/// A node's restart command in service mode: stops the running meshd (pid file), waits until it
/// is gone, and starts the installed binary detached. Arguments: the node's folder and name.
const RESTART_SCRIPT: &str = r#"#!/bin/sh
dir="$1"; node="$2"
if [ -s "$dir/meshd.pid" ]; then
    pid=$(cat "$dir/meshd.pid")
    kill "$pid" 2>/dev/null
    while [ -e "/proc/$pid" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; do sleep 0.1; done
fi
echo "== restart $(date +%T.%N)" >> "$dir/meshd.log"
setsid "$dir/bin/meshd" run --config "$dir/mesh.toml" --node "$node" --ctl-socket "$dir/meshd.sock" \
    < /dev/null >> "$dir/meshd.log" 2>&1 &
echo $! > "$dir/meshd.pid"
"#;

impl SshFleet {
    /// Starts sshd on every node of `lab` (IPv4 underlay) and makes the control namespace
    /// `<prefix>-ctl-<pid>`.
    pub fn start(lab: &Lab, prefix: &str) -> SshFleet {
        let dir = tempfile::Builder::new().prefix("meshd-fleet-").tempdir().expect("tempdir");
        // sshd refuses to start without its privilege separation folder (Debian makes it at boot).
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        keygen(&dir.path().join("id_ed25519"));
        fs::copy(dir.path().join("id_ed25519.pub"), dir.path().join("authorized_keys")).expect("authorized_keys");

        let control = Netns::new(prefix, "ctl");
        lab.plug(&control, CONTROL_PORT, None);
        control.run_ok(["ip", "addr", "add", &format!("{CONTROL_ADDR}/24"), "dev", NODE_IFACE]);
        control.run_ok(["ip", "link", "set", NODE_IFACE, "up"]);

        let mut fleet = SshFleet {
            sshds: Vec::new(),
            names: Vec::new(),
            addresses: Vec::new(),
            control,
            dir,
            services: Cell::new(false),
        };
        let mut known_hosts = String::new();
        for i in 0..lab.len() {
            let (name, address) = (lab.node_name(i), lab.addr(i));
            let node_dir = fleet.node_dir(&name);
            fs::create_dir_all(&node_dir).expect("create node folder");
            let host_key = node_dir.join("ssh_host_ed25519_key");
            keygen(&host_key);
            let public = fs::read_to_string(host_key.with_extension("pub")).expect("read host key");
            known_hosts.push_str(&format!("{address} {}\n", public.trim()));
            fleet.names.push(name);
            fleet.addresses.push(address);
        }
        fs::write(fleet.dir.path().join("known_hosts"), known_hosts).expect("write known_hosts");
        let client = fleet.dir.path();
        let ssh_config = format!(
            "Host *\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  \
             GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  BatchMode yes\n",
            key = client.join("id_ed25519").display(),
            known = client.join("known_hosts").display(),
        );
        fs::write(fleet.ssh_config(), ssh_config).expect("write ssh config");
        for i in 0..lab.len() {
            let child = fleet.spawn_sshd(lab.node(i), i);
            fleet.sshds.push(Some(child));
        }
        for i in 0..lab.len() {
            fleet.wait_sshd(lab.node(i), i);
        }
        fleet
    }

    fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("nodes").join(name)
    }

    /// Puts an executable `name` with `script` first on the PATH of node `i`'s ssh sessions
    /// (`<dir>/nodes/<name>/bin`), to make one command misbehave on one node.
    pub fn shadow_command(&self, i: usize, name: &str, script: &str) -> PathBuf {
        let bin = self.node_dir(&self.names[i]).join("bin");
        fs::create_dir_all(&bin).expect("create node bin folder");
        let path = bin.join(name);
        fs::write(&path, script).expect("write shadow command");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod shadow command");
        bin
    }

    /// `<dir>/nodes/<node i>/mesh.toml`: the node's mesh file as `meshd run` and the fleet
    /// commands see it.
    pub fn node_config(&self, i: usize) -> PathBuf {
        self.node_dir(&self.names[i]).join("mesh.toml")
    }

    /// Writes node `i`'s mesh file and copies `psk` next to it (both mode 0600).
    pub fn write_node_config(&self, i: usize, text: &str, psk: &[u8]) {
        crate::meshfile::write_private(&self.node_config(i), text);
        let psk_path = self.node_dir(&self.names[i]).join("psk");
        fs::write(&psk_path, psk).expect("write node psk");
        fs::set_permissions(&psk_path, fs::Permissions::from_mode(0o600)).expect("chmod psk");
    }

    /// Starts meshd on node `i` of `lab` with its mesh file, and links its control socket to
    /// `<dir>/nodes/<name>/meshd.sock`.
    pub fn start_meshd(&self, lab: &Lab, i: usize) -> Meshd {
        let meshd = Meshd::start(lab.node(i), &self.node_config(i), &self.names[i]);
        let link = self.node_dir(&self.names[i]).join("meshd.sock");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(meshd.socket(), &link).expect("link the control socket");
        meshd
    }

    /// Starts node `i`'s meshd as a service (see the module docs) with its mesh file, and from
    /// now on has fleet commands use the nodes' own binaries (`--remote-meshd
    /// <dir>/nodes/{node}/bin/meshd`, the same for ikectl) and restart scripts
    /// (`--remote-restart`).
    pub fn start_service(&self, lab: &Lab, i: usize) {
        self.services.set(true);
        let node_dir = self.node_dir(&self.names[i]);
        let bin = node_dir.join("bin");
        fs::create_dir_all(&bin).expect("create node bin folder");
        for (name, build) in [("meshd", meshd_bin()), ("ikectl", ikectl_bin())] {
            let _ = fs::remove_file(bin.join(name));
            std::os::unix::fs::symlink(build, bin.join(name)).expect("link the build's binary");
        }
        let restart = node_dir.join("restart");
        fs::write(&restart, RESTART_SCRIPT).expect("write restart script");
        fs::set_permissions(&restart, fs::Permissions::from_mode(0o755)).expect("chmod restart script");
        let started = lab.node(i).exec([restart.as_os_str(), node_dir.as_os_str(), self.names[i].as_ref()]);
        assert!(started.status.success(), "starting {}'s meshd failed\n{}", self.names[i], describe_output(&started));
    }

    /// The pid of node `i`'s service meshd.
    pub fn service_pid(&self, i: usize) -> Option<u32> {
        fs::read_to_string(self.node_dir(&self.names[i]).join("meshd.pid")).ok()?.trim().parse().ok()
    }

    /// `<dir>/nodes/<node i>/bin/NAME`: the binary a rollout replaces.
    pub fn node_binary(&self, i: usize, name: &str) -> PathBuf {
        self.node_dir(&self.names[i]).join("bin").join(name)
    }

    /// Node `i`'s service meshd's log.
    pub fn service_log(&self, i: usize) -> String {
        fs::read_to_string(self.node_dir(&self.names[i]).join("meshd.log")).unwrap_or_default()
    }

    /// `ikectl --json ARGS` against node `i`'s service meshd, in the node: `Null` when it does
    /// not answer.
    pub fn service_ikectl_json(&self, lab: &Lab, i: usize, args: &[&str]) -> serde_json::Value {
        let socket = self.node_dir(&self.names[i]).join("meshd.sock");
        let out = lab.node(i).command([ikectl_bin()]).arg("--socket").arg(socket).arg("--json").args(args).output();
        out.ok().and_then(|out| serde_json::from_slice(&out.stdout).ok()).unwrap_or(serde_json::Value::Null)
    }

    pub fn ssh_config(&self) -> PathBuf {
        self.dir.path().join("ssh_config")
    }

    pub fn control(&self) -> &Netns {
        &self.control
    }

    /// `ikectl fleet SUBCOMMAND args...` in the control namespace, with the ssh config and the
    /// per-node remote paths of this lab.
    pub fn command(&self, subcommand: &str, args: &[&str]) -> Command {
        let nodes = self.dir.path().join("nodes");
        let mut command = self.control.command([ikectl_bin().as_os_str()]);
        command
            .args(["fleet", subcommand])
            .args(args)
            .arg("--ssh-config")
            .arg(self.ssh_config())
            .arg("--remote-config")
            .arg(nodes.join("{node}/mesh.toml"))
            .arg("--remote-socket")
            .arg(nodes.join("{node}/meshd.sock"))
            .stdin(Stdio::null());
        if self.services.get() {
            command
                .arg("--remote-meshd")
                .arg(nodes.join("{node}/bin/meshd"))
                .arg("--remote-ikectl")
                .arg(nodes.join("{node}/bin/ikectl"))
                .arg("--remote-restart")
                .arg(format!("{} {} {{node}}", nodes.join("{node}/restart").display(), nodes.join("{node}").display()));
        } else {
            command.arg("--remote-meshd").arg(meshd_bin()).arg("--remote-ikectl").arg(ikectl_bin());
        }
        command
    }

    /// Runs `ikectl fleet SUBCOMMAND args...` to the end (see [`SshFleet::command`]).
    pub fn run(&self, subcommand: &str, args: &[&str]) -> Output {
        self.command(subcommand, args).output().expect("run ikectl fleet")
    }

    /// Stops node `i`'s sshd (the node becomes unreachable for fleet commands).
    pub fn stop_sshd(&mut self, i: usize) {
        if let Some(mut child) = self.sshds[i].take() {
            terminate(&mut child, Duration::from_secs(5));
        }
    }

    /// sshd's log of node `i`.
    pub fn sshd_log(&self, i: usize) -> String {
        fs::read_to_string(self.node_dir(&self.names[i]).join("sshd.log")).unwrap_or_default()
    }

    fn spawn_sshd(&self, ns: &Netns, i: usize) -> Child {
        let node_dir = self.node_dir(&self.names[i]);
        let config = node_dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "ListenAddress {address}:22\nHostKey {key}\nAuthorizedKeysFile {authorized}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nPidFile none\nLogLevel VERBOSE\n\
                 SetEnv PATH={bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
                address = self.addresses[i],
                bin = node_dir.join("bin").display(),
                key = node_dir.join("ssh_host_ed25519_key").display(),
                authorized = self.dir.path().join("authorized_keys").display(),
            ),
        )
        .expect("write sshd_config");
        let log = File::create(node_dir.join("sshd.log")).expect("create sshd log");
        ns.command([SSHD, "-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start sshd")
    }

    fn wait_sshd(&self, ns: &Netns, i: usize) {
        let listening = wait_until(Duration::from_secs(10), || {
            let out = ns.run_stdout(["ss", "-Htln", "sport", "= :22"]);
            (!out.trim().is_empty()).then_some(())
        });
        if listening.is_none() {
            panic!("sshd on {} did not listen on port 22 within 10 s\n{}", self.names[i], self.sshd_log(i));
        }
    }
}

impl Drop for SshFleet {
    fn drop(&mut self) {
        for child in self.sshds.iter_mut().flatten() {
            terminate(child, Duration::from_secs(5));
        }
        // Service meshds are no children of this process: stop them by their pid files.
        for i in 0..self.names.len() {
            if let Some(pid) = self.service_pid(i) {
                stop_service(pid);
            }
        }
        if std::thread::panicking() {
            for i in 0..self.names.len() {
                eprintln!("===== sshd {} log =====\n{}", self.names[i], self.sshd_log(i));
                if self.services.get() {
                    eprintln!("===== meshd service {} log =====\n{}", self.names[i], self.service_log(i));
                }
            }
        }
    }
}

/// SIGTERM to a service meshd, SIGKILL if it is still there after 5 s.
fn stop_service(pid: u32) {
    let gone = || {
        fs::read_to_string(format!("/proc/{pid}/status"))
            .map_or(true, |status| status.lines().any(|l| l.starts_with("State:") && l.contains('Z')))
    };
    if gone() {
        return;
    }
    crate::util::send_signal(pid, libc::SIGTERM);
    if wait_until(Duration::from_secs(5), || gone().then_some(())).is_none() {
        crate::util::send_signal(pid, libc::SIGKILL);
    }
}

fn keygen(path: &Path) {
    let output = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "meshd-lab", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen");
    if !output.status.success() {
        panic!("ssh-keygen -f {} failed\n{}", path.display(), describe_output(&output));
    }
}
