//! `ikectl fleet`: update, SA flush and health of every node of a mesh over plain OpenSSH.
//!
//! `plan` (the rollout) and `matrix` (the health matrix) are pure; `ssh`, `remote` and `binary`
//! are the thin layer that talks to the nodes; `update` and `status` drive them.

mod binary;
mod matrix;
mod plan;
mod remote;
mod sanitize;
mod ssh;
mod status;
mod update;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use futures_util::stream::{self, StreamExt};
use mesh_config::control::DEFAULT_SOCKET;
use mesh_config::MeshConfig;

use crate::render::table;
use remote::Node;
use ssh::{Host, SshOptions};

#[derive(Subcommand)]
pub enum FleetCommand {
    /// Push a new mesh.toml (or, with --meshd/--ikectl, new binaries) to every node: plan,
    /// canary, batches, health checks, rollback.
    Update {
        #[command(flatten)]
        fleet: FleetOptions,
        /// Roll this meshd binary out instead of the mesh file (--config then only names the
        /// nodes): uploaded, run with --version and `check` on each node, installed in place of
        /// --remote-meshd, then meshd restarted with --remote-restart.
        #[arg(long, value_name = "PATH")]
        meshd: Option<PathBuf>,
        /// Roll this ikectl binary out (with --meshd or alone), in place of --remote-ikectl.
        #[arg(long, value_name = "PATH")]
        ikectl: Option<PathBuf>,
        /// Only show what would change on each node.
        #[arg(long)]
        dry_run: bool,
        /// Nodes per batch after the canary.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// How long a node may take to have SAs with all its peers after a reload.
        #[arg(long, default_value = "60", value_parser = seconds)]
        health_timeout: Duration,
    },
    /// Flush the SAs on every node (or the ones named) and let them renegotiate.
    SaFlush {
        #[command(flatten)]
        fleet: FleetOptions,
        /// Only these nodes (names from mesh.toml, comma-separated or repeated).
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
    },
    /// The N x N matrix of the mesh's pairs as both ends see them.
    Status {
        #[command(flatten)]
        fleet: FleetOptions,
    },
}

/// What every fleet command needs: the mesh, how to reach the nodes, where things are on them.
#[derive(Args)]
pub struct FleetOptions {
    /// The mesh file naming the nodes (for `update`: the new one to push).
    #[arg(long, default_value = "mesh.toml")]
    config: PathBuf,
    /// An ssh config file to use instead of ~/.ssh/config (ssh -F).
    #[arg(long)]
    ssh_config: Option<PathBuf>,
    /// Seconds to wait for each ssh connection.
    #[arg(long, default_value = "10", value_parser = seconds)]
    connect_timeout: Duration,
    /// Seconds one remote command (upload, meshd check, reload, ...) may take.
    #[arg(long, default_value = "120", value_parser = seconds)]
    command_timeout: Duration,
    /// How many nodes to talk to at once.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    #[command(flatten)]
    remote: RemoteOptions,
}

/// Where meshd's files and tools are on the nodes, and how to restart it. `{node}` in a path or
/// the restart command is the node's name.
#[derive(Args, Clone)]
pub struct RemoteOptions {
    /// The mesh file on each node (the file meshd was started with).
    #[arg(long = "remote-config", default_value = "/etc/meshd/mesh.toml")]
    pub config_path: PathBuf,
    /// meshd's control socket on each node.
    #[arg(long = "remote-socket", default_value = DEFAULT_SOCKET)]
    pub socket_path: PathBuf,
    /// The meshd binary on each node.
    #[arg(long = "remote-meshd", default_value = "meshd")]
    pub meshd_bin: String,
    /// The ikectl binary on each node.
    #[arg(long = "remote-ikectl", default_value = "ikectl")]
    pub ikectl_bin: String,
    /// How a binary update restarts meshd on each node (a shell command).
    #[arg(long = "remote-restart", default_value = "systemctl restart meshd")]
    pub restart: String,
}

fn seconds(text: &str) -> Result<Duration, String> {
    text.parse::<u64>().map(Duration::from_secs).map_err(|_| format!("\"{text}\" is not a number of seconds"))
}

/// Runs a fleet command; `json` prints results as JSON.
pub fn run(command: FleetCommand, json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ikectl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            FleetCommand::Update { fleet, dry_run, batch, health_timeout, meshd, ikectl } => {
                let binaries = (meshd.is_some() || ikectl.is_some()).then_some(update::BinaryOptions { meshd, ikectl });
                let options = update::UpdateOptions { dry_run, batch, health_timeout, json, binaries };
                update::update(&fleet, &options).await
            }
            FleetCommand::SaFlush { fleet, nodes } => sa_flush(&fleet, &nodes, json).await,
            FleetCommand::Status { fleet } => status::status(&fleet, json).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("ikectl: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The mesh's nodes with their ssh connections (or why there is none).
struct Fleet {
    config: MeshConfig,
    hosts: Vec<Result<Host, String>>,
    remote: RemoteOptions,
    parallel: usize,
}

impl Fleet {
    /// Loads the mesh file and connects to `selected` nodes (all when empty), in parallel.
    async fn connect(options: &FleetOptions, selected: &[String]) -> Result<Fleet, String> {
        let config = MeshConfig::load(&options.config).map_err(|errors| {
            format!("{errors}\n(fleet commands validate the mesh file here first, with its psk_file next to it)")
        })?;
        if let Some(unknown) = selected.iter().find(|name| config.node(name).is_none()) {
            let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(format!(
                "there is no node \"{unknown}\" in {}: pick from {}",
                options.config.display(),
                names.join(", ")
            ));
        }
        let ssh = SshOptions {
            config_file: options.ssh_config.clone(),
            connect_timeout: options.connect_timeout,
            command_timeout: options.command_timeout,
        };
        let parallel = options.parallel.max(1);
        let hosts = stream::iter(config.nodes.iter())
            .map(|node| {
                let ssh = &ssh;
                async move {
                    if selected.is_empty() || selected.contains(&node.name) {
                        Host::connect(&node.ssh, ssh).await
                    } else {
                        Err("not selected".to_string())
                    }
                }
            })
            .buffered(parallel)
            .collect()
            .await;
        Ok(Fleet { config, hosts, remote: options.remote.clone(), parallel })
    }

    fn names(&self) -> Vec<String> {
        self.config.nodes.iter().map(|n| n.name.clone()).collect()
    }

    fn node(&self, index: usize) -> Result<Node<'_>, String> {
        let host = self.hosts[index].as_ref().map_err(Clone::clone)?;
        Ok(Node { name: &self.config.nodes[index].name, host, remote: &self.remote })
    }

    /// `work` on each of `indexes` (at most `parallel` at once), results in the same order.
    async fn on_each<'a, R, F, Fut>(&'a self, indexes: &[usize], work: F) -> Vec<(usize, R)>
    where
        F: Fn(usize, Result<Node<'a>, String>) -> Fut,
        Fut: Future<Output = R> + 'a,
    {
        stream::iter(indexes.iter().copied())
            .map(|i| {
                let fut = work(i, self.node(i));
                async move { (i, fut.await) }
            })
            .buffered(self.parallel)
            .collect()
            .await
    }

    async fn close(self) {
        for host in self.hosts.into_iter().flatten() {
            host.close().await;
        }
    }
}

async fn sa_flush(options: &FleetOptions, selected: &[String], json: bool) -> Result<bool, String> {
    let fleet = Fleet::connect(options, selected).await?;
    let names = fleet.names();
    let indexes: Vec<usize> =
        (0..names.len()).filter(|&i| selected.is_empty() || selected.contains(&names[i])).collect();
    let results = fleet
        .on_each(&indexes, |_, node| async move {
            match node {
                Ok(node) => node.sa_flush().await,
                Err(unreachable) => Err(format!("unreachable: {unreachable}")),
            }
        })
        .await;
    fleet.close().await;
    let all_ok = results.iter().all(|(_, r)| r.is_ok());
    if json {
        let rows: Vec<serde_json::Value> = results
            .iter()
            .map(|(i, r)| match r {
                Ok(report) => serde_json::json!({"node": names[*i], "flushed": true, "report": report.trim()}),
                Err(error) => serde_json::json!({"node": names[*i], "flushed": false, "error": error}),
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        let mut table = table(&["node", "result"]);
        for (i, result) in &results {
            let text = match result {
                Ok(report) => report.trim().to_string(),
                Err(error) => format!("FAILED: {error}"),
            };
            table.add_row(vec![names[*i].clone(), text]);
        }
        print!("{}", crate::render::finish(table));
    }
    Ok(all_ok)
}
