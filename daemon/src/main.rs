//! `meshd`: the mesh daemon. All logic lives in the library; this is the command line.

#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mesh_config::control::DEFAULT_SOCKET;
use meshd::daemon::{self, RunOptions};
use meshd::datapath::WorkerTuning;
use meshd::error::DaemonError;
use meshd::node_identity;

#[derive(Parser)]
#[command(name = "meshd", version, about = "IPsec (ESP) overlay mesh daemon: VXLAN between hypervisor nodes")]
struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Subcommand)]
enum CliCommand {
    /// Run this node of the mesh in the foreground (logs to stderr; RUST_LOG sets the level, `ikectl log level` changes it).
    Run {
        /// The mesh file, identical on every node.
        #[arg(long)]
        config: PathBuf,
        /// Which node this is; default: the node whose address is on this host.
        #[arg(long)]
        node: Option<String>,
        /// This node's private key; default: [mesh] key_file, else /etc/meshd/node.key.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Where ikectl finds this daemon.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        ctl_socket: PathBuf,
        /// Turn the overlay interfaces' offloads off (no TSO super-frames, no coalescing of
        /// received segments): slower, for debugging and comparison.
        #[arg(long)]
        no_offload: bool,
        /// After forwarding, keep polling this many microseconds before sleeping: lower latency
        /// (about 50 us less per round trip on a VM) for CPU time; 0 (the default) never spins.
        #[arg(long, value_name = "MICROSECONDS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100_000))]
        busy_poll: u32,
        /// Do not trace the kernel's drops of mesh traffic (eBPF on skb:kfree_skb).
        #[arg(long)]
        no_kernel_drops: bool,
    },
    /// Validate the mesh file and exit 0, or explain every problem and exit 1.
    Check {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        node: Option<String>,
        /// The private key to check against this node's public keys (default as for `run`).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Write a new Ed25519 private key to FILE (mode 0600; never overwrites) and print its
    /// public key (base64), for this node's `public_key` in mesh.toml.
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the public key (base64) of a private key file.
    Pubkey {
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    meshd::logging::init();
    let result = match cli.command {
        CliCommand::Run { config, node, key, ctl_socket, no_offload, busy_poll, no_kernel_drops } => {
            daemon::run(RunOptions {
                config,
                node,
                key,
                ctl_socket,
                tuning: WorkerTuning { offload: !no_offload, busy_poll: Duration::from_micros(u64::from(busy_poll)) },
                kernel_drops: !no_kernel_drops,
            })
        }
        CliCommand::Check { config, node, key } => {
            daemon::check(&config, node.as_deref(), key.as_deref()).map(|summary| println!("{summary}"))
        }
        CliCommand::Keygen { out } => {
            node_identity::keygen(&out).map(|public| println!("{public}")).map_err(DaemonError::Topology)
        }
        CliCommand::Pubkey { key } => {
            node_identity::pubkey(&key).map(|public| println!("{public}")).map_err(DaemonError::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("meshd: {error}");
            ExitCode::FAILURE
        }
    }
}
