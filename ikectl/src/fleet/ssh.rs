//! The thin ssh layer: one multiplexed OpenSSH connection per node (the system `ssh`, the
//! user's ssh config, agent and known_hosts; host keys always checked), and commands on it.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use tokio::io::AsyncWriteExt;

/// How the connections are made.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// `ssh -F FILE` instead of `~/.ssh/config`.
    pub config_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// How long one remote command may run before it counts as failed.
    pub command_timeout: Duration,
}

/// A connection to one node.
pub struct Host {
    session: Session,
    destination: String,
    command_timeout: Duration,
}

/// A remote command that ran: its exit status and output.
pub struct Ran {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// stderr (or stdout when stderr is empty), trimmed, for a one-line report.
    pub fn complaint(&self) -> String {
        let text = if self.stderr.trim().is_empty() { &self.stdout } else { &self.stderr };
        let text = text.trim();
        if text.is_empty() {
            "it exited with an error and printed nothing".into()
        } else {
            text.lines().collect::<Vec<_>>().join(" / ")
        }
    }
}

/// How long an idle master connection outlives ikectl when ikectl is killed (it closes them
/// itself otherwise).
const MASTER_IDLE_SECS: usize = 60;

impl Host {
    /// Opens the master connection to `destination` (`[user@]host` from mesh.toml). The error
    /// is ssh's own message with what to check.
    pub async fn connect(destination: &str, options: &SshOptions) -> Result<Host, String> {
        let mut builder = SessionBuilder::default();
        builder
            .known_hosts_check(KnownHosts::Strict)
            .connect_timeout(options.connect_timeout)
            .server_alive_interval(Duration::from_secs(5))
            .control_persist(ControlPersist::IdleFor(NonZeroUsize::new(MASTER_IDLE_SECS).unwrap_or(NonZeroUsize::MIN)));
        if let Some(file) = &options.config_file {
            builder.config_file(file);
        }
        match builder.connect_mux(unbracketed(destination)).await {
            Ok(session) => Ok(Host {
                session,
                destination: destination.to_string(),
                command_timeout: options.command_timeout,
            }),
            Err(error) => Err(format!(
                "ssh {destination}: {} (check that `ssh {destination}` works: address, user, key or agent, known_hosts)",
                describe(&error)
            )),
        }
    }

    /// Runs `program args...` (each argument quoted for the remote shell), optionally feeding
    /// `input` on its stdin.
    /// A command still running after the command timeout counts as failed.
    pub async fn run(&self, program: &str, args: &[&str], input: Option<&[u8]>) -> Result<Ran, String> {
        tokio::time::timeout(self.command_timeout, self.run_to_end(program, args, input)).await.unwrap_or_else(|_| {
            Err(format!(
                "ssh {}: {program} did not finish within {} s (is it hanging on the node? raise --command-timeout if it is just slow)",
                self.destination,
                self.command_timeout.as_secs()
            ))
        })
    }

    async fn run_to_end(&self, program: &str, args: &[&str], input: Option<&[u8]>) -> Result<Ran, String> {
        let mut command = self.session.command(program);
        command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
        let lost = |e: openssh::Error| format!("ssh {}: running {program} failed: {}", self.destination, describe(&e));
        let mut child = command.spawn().await.map_err(lost)?;
        if let (Some(bytes), Some(mut stdin)) = (input, child.stdin().take()) {
            stdin
                .write_all(bytes)
                .await
                .map_err(|e| format!("ssh {}: sending input to {program} failed: {e}", self.destination))?;
            drop(stdin);
        }
        let Output { status, stdout, stderr } = child.wait_with_output().await.map_err(lost)?;
        // The node's output reaches the operator's terminal: no control sequences.
        Ok(Ran {
            success: status.success(),
            stdout: super::sanitize::strip_controls(&String::from_utf8_lossy(&stdout)),
            stderr: super::sanitize::strip_controls(&String::from_utf8_lossy(&stderr)),
        })
    }

    /// Runs `sh -c SCRIPT sh ARGS...`: the script sees its arguments as "$1".."$n", quoted.
    pub async fn script(&self, script: &str, args: &[&str], input: Option<&[u8]>) -> Result<Ran, String> {
        let mut full = vec!["-c", script, "sh"];
        full.extend_from_slice(args);
        self.run("sh", &full, input).await
    }

    /// Closes the master connection.
    pub async fn close(self) {
        let _ = self.session.close().await;
    }
}

fn describe(error: &openssh::Error) -> String {
    match error {
        openssh::Error::Connect(e) => e.to_string(),
        openssh::Error::Master(e) => format!("cannot start the ssh master connection: {e}"),
        openssh::Error::Disconnected | openssh::Error::RemoteProcessTerminated => {
            "the connection was lost (or the remote command was killed)".into()
        }
        other => other.to_string(),
    }
}

/// `user@[2001:db8::1]` (mesh.toml's form for IPv6) as ssh takes it, `user@2001:db8::1`: ssh
/// would look up the brackets as part of the host name.
fn unbracketed(destination: &str) -> String {
    let (user, host) = match destination.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, destination),
    };
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner) if inner.parse::<std::net::Ipv6Addr>().is_ok() => inner,
        _ => host,
    };
    user.map_or_else(|| host.to_string(), |user| format!("{user}@{host}"))
}

/// A remote path template with `{node}` replaced by the node's name.
pub fn node_path(template: &Path, node: &str) -> String {
    template.to_string_lossy().replace("{node}", node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_destinations_lose_their_brackets() {
        assert_eq!(unbracketed("root@[2001:db8::1]"), "root@2001:db8::1");
        assert_eq!(unbracketed("[fd00::1]"), "fd00::1");
        assert_eq!(unbracketed("admin@hv17.example"), "admin@hv17.example");
        assert_eq!(unbracketed("root@198.18.0.1"), "root@198.18.0.1");
        assert_eq!(unbracketed("root@[not-an-address]"), "root@[not-an-address]");
    }

    #[test]
    fn node_paths() {
        assert_eq!(node_path(Path::new("/srv/{node}/mesh.toml"), "n2"), "/srv/n2/mesh.toml");
        assert_eq!(node_path(Path::new("/etc/meshd/mesh.toml"), "n2"), "/etc/meshd/mesh.toml");
    }
}
