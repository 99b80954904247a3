//! `ikectl fleet update --meshd PATH [--ikectl PATH]`: what a binary rollout does on a node,
//! over its ssh connection. The rollout itself (plan, canary, batches, health, rollback) is the
//! one of config updates (`plan.rs`, `update.rs`).
//!
//! On the node, next to each binary (found as `command -v` finds it): `<binary>.fleet-new` (the
//! upload, run with `--version`, and for meshd `check` against the live mesh file, before it is
//! installed), `<binary>.fleet-previous` (the binary it replaced, a hard link, for rollback) and
//! `meshd.fleet-pending` (a new meshd installed, its restart not yet seen to succeed: the next run
//! restarts a node an interrupted run left so). Installing is a rename, so the path always holds
//! a whole binary. After meshd is replaced the node's restart command runs (default `systemctl
//! restart meshd`).

use std::path::{Path, PathBuf};

use aws_lc_rs::digest::{digest, SHA256};

use super::plan::{Change, Failure, Step, UpdateKind};
use super::remote::Node;
use super::ssh::node_path;

/// Which binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    Meshd,
    Ikectl,
}

impl Program {
    fn name(self) -> &'static str {
        match self {
            Program::Meshd => "meshd",
            Program::Ikectl => "ikectl",
        }
    }
}

/// One binary to roll out: its bytes and their SHA-256.
pub struct Upload {
    program: Program,
    bytes: Vec<u8>,
    sha256: String,
}

impl Upload {
    /// Reads the local binary `path`.
    pub fn read(program: Program, path: &Path) -> Result<Upload, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read the {} binary {}: {e}", program.name(), path.display()))?;
        if bytes.is_empty() {
            return Err(format!("{} is empty: pass the {} binary you built", path.display(), program.name()));
        }
        Ok(Upload { program, sha256: sha256_hex(&bytes), bytes })
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    digest(&SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The short form of a SHA-256 shown in plans and tables.
fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// A binary as installed on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub path: String,
    pub sha256: String,
    /// The first line of its `--version` ("meshd 0.1.0"), empty if it printed none.
    pub version: String,
    /// An interrupted run installed it and never saw meshd restart on it.
    pub restart_pending: bool,
}

/// What fetching a node's binary printed, one per line: its path, SHA-256, `pending` or
/// `installed`, and its version.
fn parse_installed(stdout: &str) -> Option<Installed> {
    let mut lines = stdout.lines();
    let path = lines.next()?.trim();
    let sha256 = lines.next()?.trim();
    let restart_pending = match lines.next()?.trim() {
        "pending" => true,
        "installed" => false,
        _ => return None,
    };
    let version = lines.next().unwrap_or("").trim();
    (path.starts_with('/') && sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Installed {
        path: path.to_string(),
        sha256: sha256.to_string(),
        version: version.to_string(),
        restart_pending,
    })
}

/// The version number in `--version` output ("meshd 0.1.0" -> "0.1.0").
fn version_number(version_line: &str) -> &str {
    version_line.split_whitespace().nth(1).unwrap_or(version_line)
}

/// The binaries of one rollout.
pub struct Binaries {
    uploads: Vec<Upload>,
}

/// One node's binaries as the plan found them, in the order of [`Binaries::uploads`].
pub type NodeBinaries = Vec<Installed>;

impl Binaries {
    /// `meshd` and `ikectl`: the local binaries to roll out (at least one).
    pub fn read(meshd: Option<&PathBuf>, ikectl: Option<&PathBuf>) -> Result<Binaries, String> {
        let mut uploads = Vec::new();
        if let Some(path) = meshd {
            uploads.push(Upload::read(Program::Meshd, path)?);
        }
        if let Some(path) = ikectl {
            uploads.push(Upload::read(Program::Ikectl, path)?);
        }
        Ok(Binaries { uploads })
    }

    fn remote_path(&self, node: &Node<'_>, program: Program) -> String {
        let template = match program {
            Program::Meshd => &node.remote.meshd_bin,
            Program::Ikectl => &node.remote.ikectl_bin,
        };
        node_path(Path::new(template), node.name)
    }

    /// Where each binary is on the node, with its SHA-256 and version.
    pub async fn fetch(&self, node: &Node<'_>) -> Result<NodeBinaries, String> {
        const FETCH: &str = "p=$(command -v -- \"$1\") || { echo \"$1 is not installed (or not on the PATH of ssh sessions)\" >&2; exit 1; }; \
            case \"$p\" in /*) ;; *) echo \"$1 is a shell builtin, alias or function here ($p), not a binary\" >&2; exit 1;; esac; \
            echo \"$p\"; sha256sum -- \"$p\" | cut -d ' ' -f 1; \
            if [ -e \"$p.fleet-pending\" ]; then echo pending; else echo installed; fi; \"$p\" --version 2>/dev/null | head -n 1";
        let mut found = Vec::new();
        for upload in &self.uploads {
            let wanted = self.remote_path(node, upload.program);
            let ran = node.host.script(FETCH, &[&wanted], None).await?;
            if !ran.success {
                return Err(format!("cannot find {}: {}", upload.program.name(), ran.complaint()));
            }
            let installed = parse_installed(&ran.stdout).ok_or_else(|| {
                format!(
                    "cannot read the {} binary's path and SHA-256 (sha256sum missing?): {}",
                    upload.program.name(),
                    ran.complaint()
                )
            })?;
            found.push(installed);
        }
        Ok(found)
    }

    /// The node's change: unchanged when every binary has the new one's SHA-256 (and no restart
    /// is pending).
    pub fn change(&self, fetched: Result<NodeBinaries, String>) -> Change {
        let installed = match fetched {
            Ok(installed) => installed,
            Err(reason) => return Change::Unreachable(reason),
        };
        let lines: Vec<String> = self
            .uploads
            .iter()
            .zip(&installed)
            .filter(|(upload, on_node)| upload.sha256 != on_node.sha256 || on_node.restart_pending)
            .map(|(upload, on_node)| {
                if upload.sha256 == on_node.sha256 {
                    return format!(
                        "{}: {} is the new one, but an interrupted run never saw meshd restart on it",
                        upload.program.name(),
                        on_node.path
                    );
                }
                let version = if on_node.version.is_empty() { "no --version" } else { &on_node.version };
                format!(
                    "{}: {} ({version}, sha256 {}) -> sha256 {}",
                    upload.program.name(),
                    on_node.path,
                    short(&on_node.sha256),
                    short(&upload.sha256)
                )
            })
            .collect();
        if lines.is_empty() {
            Change::Unchanged
        } else {
            Change::Update { diff: lines.join("\n"), kind: UpdateKind::Binary }
        }
    }

    /// Upload and check every binary, install them, restart meshd: the result, whether a binary
    /// was (or may have been) replaced, and the version the new meshd prints (to compare with the
    /// running one after the restart).
    pub async fn apply(&self, node: &Node<'_>) -> (Result<(), Failure>, bool, Option<String>) {
        let mut new_version = None;
        for upload in &self.uploads {
            match self.stage(node, upload).await {
                Ok(version) if upload.program == Program::Meshd => new_version = Some(version),
                Ok(_) => {}
                Err(failure) => {
                    self.remove_staged(node).await;
                    return (Err(failure), false, None);
                }
            }
        }
        // After an interrupted run (pending mark), `.fleet-previous` is still the binary from
        // before it. A new meshd is marked pending until its restart succeeds ($2 = restart).
        const INSTALL: &str = "set -e; if [ -e \"$1.fleet-pending\" ] && [ -e \"$1.fleet-previous\" ]; then :; \
            else ln -f -- \"$1\" \"$1.fleet-previous\"; fi; if [ \"$2\" = restart ]; then : > \"$1.fleet-pending\"; fi; \
            mv -f -- \"$1.fleet-new\" \"$1\"; sync \"$1\" \"$(dirname -- \"$1\")\"";
        for upload in &self.uploads {
            let path = self.remote_path(node, upload.program);
            let mark = if upload.program == Program::Meshd { "restart" } else { "" };
            if let Err(failure) = node.expect(Step::Install, INSTALL, &[&path, mark], None).await {
                // Some binaries may be replaced already: the batch restores them.
                return (Err(failure), true, None);
            }
        }
        if new_version.is_some() {
            if let Err(reason) = self.restart_and_unmark(node).await {
                return (Err(Failure { step: Step::Restart, reason }), true, None);
            }
        }
        (Ok(()), true, new_version)
    }

    /// Uploads one binary as `.fleet-new` (mode 0755) and runs it: `--version` must name the
    /// program, and a new meshd must accept the node's live mesh file. Returns the version.
    async fn stage(&self, node: &Node<'_>, upload: &Upload) -> Result<String, Failure> {
        const UPLOAD: &str =
            "set -e; umask 022; new=\"$1.fleet-new\"; cat > \"$new\"; chmod 0755 \"$new\"; sync \"$new\"";
        let path = self.remote_path(node, upload.program);
        node.expect(Step::Upload, UPLOAD, &[&path], Some(&upload.bytes)).await?;
        let new = format!("{path}.fleet-new");
        let check_failed = |reason: String| Failure { step: Step::Check, reason };
        let ran = node.host.run(&new, &["--version"], None).await.map_err(check_failed)?;
        let version = ran.stdout.lines().next().unwrap_or("").trim().to_string();
        if !ran.success || version.split_whitespace().next() != Some(upload.program.name()) {
            return Err(check_failed(format!(
                "the new binary does not run on {} as {} (`{} --version`: {})",
                node.name,
                upload.program.name(),
                upload.program.name(),
                ran.complaint()
            )));
        }
        if upload.program == Program::Meshd {
            let config = node_path(&node.remote.config_path, node.name);
            let args = ["check", "--config", config.as_str(), "--node", node.name];
            let ran = node.host.run(&new, &args, None).await.map_err(check_failed)?;
            if !ran.success {
                return Err(check_failed(format!("the new meshd refuses the live mesh file: {}", ran.complaint())));
            }
        }
        Ok(version)
    }

    async fn remove_staged(&self, node: &Node<'_>) {
        for upload in &self.uploads {
            let path = self.remote_path(node, upload.program);
            let _ = node.host.script("rm -f -- \"$1.fleet-new\"", &[&path], None).await;
        }
    }

    /// The node's restart command (`--remote-restart`), then the pending mark goes.
    async fn restart_and_unmark(&self, node: &Node<'_>) -> Result<(), String> {
        let command = node.remote.restart.replace("{node}", node.name);
        let ran = node.host.script(&command, &[], None).await?;
        if !ran.success {
            return Err(format!("`{command}` failed: {}", ran.complaint()));
        }
        let meshd = self.remote_path(node, Program::Meshd);
        let ran = node.host.script("rm -f -- \"$1.fleet-pending\"", &[&meshd], None).await?;
        if ran.success {
            Ok(())
        } else {
            Err(format!("meshd restarted, but removing {meshd}.fleet-pending failed: {}", ran.complaint()))
        }
    }

    /// Puts back each binary this run replaced (its upload is gone: only the rename removes it),
    /// and restarts meshd when meshd was put back.
    pub async fn restore(&self, node: &Node<'_>) -> Result<(), String> {
        const RESTORE: &str = "set -e; if [ -e \"$1.fleet-new\" ]; then rm -f -- \"$1.fleet-new\"; \
            elif [ -e \"$1.fleet-previous\" ]; then mv -f -- \"$1.fleet-previous\" \"$1\"; \
            sync \"$1\" \"$(dirname -- \"$1\")\"; echo restored; fi";
        let mut restart = false;
        for upload in &self.uploads {
            let path = self.remote_path(node, upload.program);
            let ran = node.host.script(RESTORE, &[&path], None).await?;
            if !ran.success {
                return Err(format!("cannot put the previous {path} back: {}", ran.complaint()));
            }
            restart |= upload.program == Program::Meshd && ran.stdout.trim() == "restored";
        }
        if restart {
            self.restart_and_unmark(node).await?;
        }
        Ok(())
    }
}

/// The meshd a node runs, as `ikectl --json status` reports it.
pub struct Running {
    pub version: String,
    pub uptime_secs: u64,
}

/// The version the node's running meshd reports, and its uptime.
pub async fn running_version(node: &Node<'_>) -> Result<Running, String> {
    let status = node.status().await?;
    Ok(Running { version: status.daemon_version, uptime_secs: status.uptime_secs })
}

/// After a restart: the running meshd must be the new one (`expected`: its `--version` line).
pub async fn runs_version(node: &Node<'_>, expected: &str) -> Result<(), Failure> {
    let health_failed = |reason: String| Failure { step: Step::Health, reason };
    let running = running_version(node).await.map_err(health_failed)?.version;
    let wanted = version_number(expected);
    if running == wanted {
        Ok(())
    } else {
        Err(health_failed(format!("meshd {running} runs, not the new {wanted} (did the restart command restart it?)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn upload(program: Program, bytes: &[u8]) -> Upload {
        Upload { program, bytes: bytes.to_vec(), sha256: sha256_hex(bytes) }
    }

    #[test]
    fn sha256_of_bytes() {
        assert_eq!(sha256_hex(b"test"), SHA);
    }

    #[test]
    fn installed_binaries_parse() {
        let parsed = parse_installed(&format!("/usr/sbin/meshd\n{SHA}\ninstalled\nmeshd 0.1.0\n"));
        assert_eq!(
            parsed,
            Some(Installed {
                path: "/usr/sbin/meshd".into(),
                sha256: SHA.into(),
                version: "meshd 0.1.0".into(),
                restart_pending: false
            })
        );
        let pending = parse_installed(&format!("/usr/bin/ikectl\n{SHA}\npending\n")).expect("parses");
        assert!(pending.restart_pending && pending.version.is_empty(), "{pending:?}");
        assert_eq!(parse_installed(&format!("/usr/sbin/meshd\n{SHA}\nmeshd 0.1.0\n")), None);
        assert_eq!(parse_installed("meshd\nnot-a-hash\n"), None);
        assert_eq!(parse_installed(""), None);
        assert_eq!(version_number("meshd 0.2.0"), "0.2.0");
    }

    #[test]
    fn a_node_with_the_new_binaries_is_unchanged() {
        let binaries = Binaries { uploads: vec![upload(Program::Meshd, b"test")] };
        let on_node = |sha256: &str, restart_pending| {
            Ok(vec![Installed {
                path: "/usr/sbin/meshd".into(),
                sha256: sha256.into(),
                version: "meshd 0.1.0".into(),
                restart_pending,
            }])
        };
        assert_eq!(binaries.change(on_node(SHA, false)), Change::Unchanged);
        let Change::Update { diff, kind: UpdateKind::Binary } = binaries.change(on_node(&"0".repeat(64), false)) else {
            panic!("an update")
        };
        assert_eq!(diff, "meshd: /usr/sbin/meshd (meshd 0.1.0, sha256 000000000000) -> sha256 9f86d081884c");
        let Change::Update { diff, .. } = binaries.change(on_node(SHA, true)) else { panic!("a pending restart") };
        assert!(diff.contains("never saw meshd restart"), "{diff}");
        assert_eq!(binaries.change(Err("no route".into())), Change::Unreachable("no route".into()));
    }
}
