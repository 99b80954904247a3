//! What fleet commands do on a node, over its ssh connection: read, stage, check, install and
//! restore its mesh file, reload meshd, and ask it about its peers.
//!
//! Files next to the node's config: `<config>.fleet-new` (the upload, checked before it is
//! installed), `<config>.fleet-previous` (the config it replaced, for rollback) and
//! `<config>.fleet-pending` (installed, meshd not yet seen to reload it). Installing is a rename,
//! so the live file is always a whole, checked config, even if ikectl dies midway; the pending
//! mark makes the next run reload a node whose reload an interrupted run never finished.

use std::path::Path;

use mesh_config::control::Status;

use super::matrix::PeerView;
use super::plan::{Failure, Fetched, Step};
use super::ssh::{node_path, Host};
use super::RemoteOptions;

/// What the fetch script says when the config file does not exist.
const MISSING_STATUS_TEXT: &str = "fleet: no such file";
/// What the fetch script says when the pending mark is there.
const PENDING_TEXT: &str = "fleet: reload pending";

/// One node as the fleet commands see it: its name in mesh.toml, its connection and where its
/// files and tools are.
pub struct Node<'a> {
    pub name: &'a str,
    pub host: &'a Host,
    pub remote: &'a RemoteOptions,
}

impl Node<'_> {
    fn config(&self) -> String {
        node_path(&self.remote.config_path, self.name)
    }

    fn socket(&self) -> String {
        node_path(&self.remote.socket_path, self.name)
    }

    /// The node's current mesh file.
    pub async fn fetch_config(&self) -> Fetched {
        let script = format!(
            "if [ ! -e \"$1\" ]; then echo '{MISSING_STATUS_TEXT}' >&2; exit 1; fi; cat -- \"$1\"; \
             if [ -e \"$1.fleet-pending\" ]; then echo '{PENDING_TEXT}' >&2; fi"
        );
        match self.host.script(&script, &[&self.config()], None).await {
            Ok(ran) if ran.success => {
                Fetched::Config { reload_pending: ran.stderr.trim() == PENDING_TEXT, text: ran.stdout }
            }
            Ok(ran) if ran.stderr.trim() == MISSING_STATUS_TEXT => Fetched::Missing,
            Ok(ran) => Fetched::Failed(format!("cannot read {}: {}", self.config(), ran.complaint())),
            Err(error) => Fetched::Failed(error),
        }
    }

    /// Uploads `text` next to the config (written, fsynced; the config's mode when it exists,
    /// else 0600) and has the node's `meshd check` validate it there, so relative paths such as
    /// psk_file resolve as they will for the live file. A refused upload is removed.
    pub async fn stage(&self, text: &str) -> Result<(), Failure> {
        const UPLOAD: &str = "set -e; umask 077; new=\"$1.fleet-new\"; cat > \"$new\"; \
            if [ -e \"$1\" ]; then chmod --reference=\"$1\" \"$new\"; fi; sync \"$new\"";
        self.expect(Step::Upload, UPLOAD, &[&self.config()], Some(text.as_bytes())).await?;
        let new = format!("{}.fleet-new", self.config());
        let meshd = node_path(Path::new(&self.remote.meshd_bin), self.name);
        let check = [meshd.as_str(), "check", "--config", &new, "--node", self.name];
        let refused = match self.host.run(check[0], &check[1..], None).await {
            Ok(ran) if ran.success => return Ok(()),
            Ok(ran) => Failure { step: Step::Check, reason: ran.complaint() },
            Err(reason) => Failure { step: Step::Check, reason },
        };
        let _ = self.host.script("rm -f -- \"$1\"", &[&new], None).await;
        Err(refused)
    }

    /// Makes the staged file the live config: the current one becomes `.fleet-previous`
    /// (a hard link, so there is no moment without a config), the pending mark is set, then a
    /// rename and a directory fsync.
    pub async fn install(&self) -> Result<(), Failure> {
        // After an interrupted run (pending mark), `.fleet-previous` is still the file from before it.
        const INSTALL: &str = "set -e; if [ -e \"$1.fleet-pending\" ] && [ -e \"$1.fleet-previous\" ]; then :; \
            elif [ -e \"$1\" ]; then ln -f -- \"$1\" \"$1.fleet-previous\"; \
            else rm -f -- \"$1.fleet-previous\"; fi; : > \"$1.fleet-pending\"; mv -f -- \"$1.fleet-new\" \"$1\"; \
            sync \"$1\" \"$(dirname -- \"$1\")\"";
        self.expect(Step::Install, INSTALL, &[&self.config()], None).await
    }

    /// Whether the staged upload is still waiting beside the config. After a failed install,
    /// `false` means the rename happened (only it removes the staged file): the new config is
    /// live and must be restored with its batch.
    pub async fn still_staged(&self) -> Result<bool, String> {
        const PROBE: &str = "if [ -e \"$1.fleet-new\" ]; then echo staged; else echo renamed; fi";
        let ran = self.host.script(PROBE, &[&self.config()], None).await?;
        match ran.stdout.trim() {
            "staged" if ran.success => Ok(true),
            "renamed" if ran.success => Ok(false),
            _ => Err(format!("cannot tell whether {}.fleet-new was installed: {}", self.config(), ran.complaint())),
        }
    }

    /// `ikectl reload` on the node: meshd applies its config file; then the pending mark goes.
    pub async fn reload(&self) -> Result<(), Failure> {
        self.reload_and_unmark().await.map_err(|reason| Failure { step: Step::Reload, reason })
    }

    async fn reload_and_unmark(&self) -> Result<(), String> {
        self.ikectl(&["reload"]).await?;
        let ran = self.host.script("rm -f -- \"$1.fleet-pending\"", &[&self.config()], None).await?;
        if ran.success {
            Ok(())
        } else {
            Err(format!("meshd reloaded, but removing {}.fleet-pending failed: {}", self.config(), ran.complaint()))
        }
    }

    /// Puts `.fleet-previous` back (or removes the config of a node that had none) and
    /// reloads meshd when there was a previous config.
    pub async fn restore(&self) -> Result<(), String> {
        const RESTORE: &str = "set -e; if [ -e \"$1.fleet-previous\" ]; then mv -f -- \"$1.fleet-previous\" \"$1\"; \
            sync \"$1\" \"$(dirname -- \"$1\")\"; echo restored; else rm -f -- \"$1\" \"$1.fleet-pending\"; fi";
        let ran = self.host.script(RESTORE, &[&self.config()], None).await?;
        if !ran.success {
            return Err(format!("cannot restore {}: {}", self.config(), ran.complaint()));
        }
        if ran.stdout.trim() == "restored" {
            self.reload_and_unmark().await?;
        }
        Ok(())
    }

    /// `ikectl --json peers` on the node.
    pub async fn peers(&self) -> Result<Vec<PeerView>, String> {
        let json = self.ikectl(&["--json", "peers"]).await?;
        let unreadable = |e: serde_json::Error| {
            format!("{}: cannot read its `ikectl --json peers` ({e}); is its ikectl the same version?", self.name)
        };
        let mut value: serde_json::Value = serde_json::from_str(&json).map_err(unreadable)?;
        // JSON escapes decode to control characters: clean them like the rest of its output.
        super::sanitize::strip_controls_in_json(&mut value);
        serde_json::from_value(value).map_err(unreadable)
    }

    /// `ikectl --json status` on the node.
    pub async fn status(&self) -> Result<Status, String> {
        let json = self.ikectl(&["--json", "status"]).await?;
        serde_json::from_str(&json).map_err(|e| {
            format!("{}: cannot read its `ikectl --json status` ({e}); is its ikectl the same version?", self.name)
        })
    }

    /// `ikectl sa flush` on the node; its report as printed there.
    pub async fn sa_flush(&self) -> Result<String, String> {
        self.ikectl(&["sa", "flush"]).await
    }

    /// `ikectl --socket SOCKET args...` on the node: its stdout, or what went wrong.
    async fn ikectl(&self, args: &[&str]) -> Result<String, String> {
        let socket = self.socket();
        let mut full = vec!["--socket", socket.as_str()];
        full.extend_from_slice(args);
        let ikectl = node_path(Path::new(&self.remote.ikectl_bin), self.name);
        let ran = self.host.run(&ikectl, &full, None).await?;
        if ran.success {
            Ok(ran.stdout)
        } else {
            Err(ran.complaint())
        }
    }

    /// Runs `script` with `args`; a failure (or a lost connection) is `step`'s.
    pub(super) async fn expect(
        &self,
        step: Step,
        script: &str,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<(), Failure> {
        match self.host.script(script, args, input).await {
            Ok(ran) if ran.success => Ok(()),
            Ok(ran) => Err(Failure { step, reason: ran.complaint() }),
            Err(reason) => Err(Failure { step, reason }),
        }
    }
}
