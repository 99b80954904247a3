//! `meshd`: the mesh daemon. All logic lives in the library; this is the command line.

#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mesh_config::control::DEFAULT_SOCKET;
use meshd::daemon::{self, RunOptions};
use meshd::datapath::WorkerTuning;

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
        /// Take over from the meshd running with the same control socket without losing a
        /// packet (its TAP queues, sockets and SAs are handed over); where that is impossible,
        /// stop it (it tells its peers) and start afresh. Give the same other arguments.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate the mesh file and exit 0, or explain every problem and exit 1.
    Check {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        node: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    meshd::logging::init();
    let result = match cli.command {
        CliCommand::Run { config, node, ctl_socket, no_offload, busy_poll, no_kernel_drops, upgrade } => {
            daemon::run(RunOptions {
                config,
                node,
                ctl_socket,
                tuning: WorkerTuning { offload: !no_offload, busy_poll: Duration::from_micros(u64::from(busy_poll)) },
                kernel_drops: !no_kernel_drops,
                upgrade,
            })
        }
        CliCommand::Check { config, node } => {
            daemon::check(&config, node.as_deref()).map(|summary| println!("{summary}"))
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
