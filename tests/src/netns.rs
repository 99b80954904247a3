//! A network namespace that deletes itself (and kills everything in it) on drop.

use std::ffi::OsStr;
use std::process::{Child, Command, Output, Stdio};

use crate::util::{describe_output, send_signal};

/// A named network namespace (`ip netns add`). Dropping it kills every process still inside
/// (`ip netns pids`) and deletes it, also while a test panics.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<prefix>-<role>-<pid>`, e.g. `mt3-n1-12345`, with `lo` up.
    pub fn new(prefix: &str, role: &str) -> Netns {
        crate::util::require_root();
        let name = format!("{prefix}-{role}-{}", std::process::id());
        // A namespace of this exact name can only be a leftover of an earlier run that had our
        // pid; remove it so the test starts clean.
        if std::path::Path::new("/run/netns").join(&name).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
        let output = Command::new("ip").args(["netns", "add", &name]).output().expect("run ip netns add");
        if !output.status.success() {
            panic!("ip netns add {name} failed\n{}", describe_output(&output));
        }
        let ns = Netns { name };
        ns.run_ok(["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME args...` as a command, to add stdio or env before running it.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(args);
        command
    }

    /// A veth pair: `name` in this namespace, `peer_name` in `peer`, both ends at `mtu` when
    /// given; neither end is up yet.
    pub fn add_veth(&self, name: &str, peer: &Netns, peer_name: &str, mtu: Option<u32>) {
        self.run_ok(["ip", "link", "add", name, "type", "veth", "peer", "name", peer_name, "netns", peer.name()]);
        if let Some(mtu) = mtu {
            self.run_ok(["ip", "link", "set", name, "mtu", &mtu.to_string()]);
            peer.run_ok(["ip", "link", "set", peer_name, "mtu", &mtu.to_string()]);
        }
    }

    /// Runs a command in the namespace and returns its output, whatever its status.
    pub fn exec<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self.command(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("in netns {}: cannot run {:?}: {e}", self.name, args))
    }

    /// Runs a command in the namespace; panics with the command, stdout and stderr when it fails.
    pub fn run_ok<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let output = self.exec(&args);
        if !output.status.success() {
            panic!(
                "in netns {}: command failed: {}\n{}",
                self.name,
                args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
                describe_output(&output)
            );
        }
        output
    }

    /// Like [`Netns::run_ok`], returning stdout as text.
    pub fn run_stdout<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        String::from_utf8_lossy(&self.run_ok(args).stdout).into_owned()
    }

    /// Starts a command in the namespace (stdin null, stdout and stderr inherited unless the
    /// caller changes them via [`Netns::command`]).
    pub fn spawn<I, S>(&self, args: I) -> Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self.command(&args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("in netns {}: cannot start {:?}: {e}", self.name, args))
    }

    /// `ping -c COUNT -W 2 -i 0.2 ADDR` (IPv4 or IPv6 by the address); the caller checks the
    /// status.
    pub fn ping(&self, addr: &str, count: u32) -> Output {
        self.exec(["ping", "-n", "-c", &count.to_string(), "-W", "2", "-i", "0.2", addr])
    }

    /// The pids of every process in the namespace.
    pub fn pids(&self) -> Vec<u32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// The interface's MAC address (`ip -j link show dev IFACE`).
    pub fn mac(&self, iface: &str) -> String {
        let out = self.run_stdout(["ip", "-j", "link", "show", "dev", iface]);
        let value: serde_json::Value = serde_json::from_str(&out).expect("ip -j link prints JSON");
        value[0]["address"].as_str().unwrap_or_else(|| panic!("no MAC on {iface}: {out}")).to_string()
    }

    /// Packets counted by the `counter` statements of nftables table `table` ("inet meshd_test").
    pub fn nft_counted(&self, table: &str) -> u64 {
        let listing = self.run_stdout(["nft", "list", "table", table]);
        let words: Vec<&str> = listing.split_whitespace().collect();
        words
            .windows(3)
            .filter(|w| w[0] == "counter" && w[1] == "packets")
            .filter_map(|w| w[2].parse::<u64>().ok())
            .sum()
    }

    /// Whether an interface of this name exists in the namespace.
    pub fn has_link(&self, iface: &str) -> bool {
        self.exec(["ip", "link", "show", "dev", iface]).status.success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Never panic here: this runs while tests unwind.
        for _ in 0..20 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                send_signal(pid, libc::SIGKILL);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        for _ in 0..10 {
            match Command::new("ip").args(["netns", "del", &self.name]).output() {
                Ok(o) if o.status.success() => return,
                Ok(o) => {
                    if !std::path::Path::new("/run/netns").join(&self.name).exists() {
                        return;
                    }
                    eprintln!("ip netns del {} failed: {}", self.name, String::from_utf8_lossy(&o.stderr).trim());
                }
                Err(e) => eprintln!("ip netns del {}: {e}", self.name),
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
