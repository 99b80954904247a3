//! `meshd`: the mesh daemon. All logic lives in the library; this is the command line.

#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use mesh_config::control::DEFAULT_SOCKET;
use meshd::daemon::{self, RunOptions, WorkerTuning};
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
        /// How log lines are written to stderr: plain text (journald), or one JSON object per
        /// line for log shippers.
        #[arg(long, value_enum, default_value_t = LogFormat::Plain)]
        log_format: LogFormat,
        /// Where manual SAs keep their sequence numbers, so that no AES-GCM/ChaCha20 nonce is
        /// used twice across restarts; default: $MESHD_STATE_DIR, else /var/lib/meshd.
        #[arg(long, value_name = "DIRECTORY")]
        state_dir: Option<PathBuf>,
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
    /// Write the man pages and shell completions of meshd into a folder (scripts/package).
    #[command(hide = true)]
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
    /// The fail-closed guard: an nftables table (inet meshd_guard) that drops traffic to the
    /// overlays' prefixes and plaintext VXLAN leaving through any but the overlay interfaces,
    /// also while meshd is stopped or crashed (docs/operate.md).
    Guard {
        #[command(subcommand)]
        action: GuardAction,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Subcommand)]
enum GuardAction {
    /// Install the guard for the mesh file's overlays, or replace it (after an overlay change).
    Install {
        #[arg(long)]
        config: PathBuf,
        /// Another interface that may carry overlay traffic (e.g. a bridge holding an overlay
        /// interface); repeatable.
        #[arg(long = "allow-interface", value_name = "INTERFACE")]
        allow_interfaces: Vec<String>,
    },
    /// Remove the guard: overlay traffic may then leave in plaintext while meshd is not running.
    Remove,
    /// Whether the guard is installed, and what it dropped.
    Status,
}

fn guard(action: GuardAction) -> Result<String, String> {
    use meshd::guard::{self, Guard};
    match action {
        GuardAction::Install { config, allow_interfaces } => {
            let config = mesh_config::MeshConfig::load(&config).map_err(|errors| errors.to_string())?;
            let guard = Guard::of(&config, &allow_interfaces);
            guard.install().map_err(|e| e.to_string())?;
            Ok(format!(
                "guard installed (table {}): overlay prefixes {} only through {}; UDP {} never in plaintext",
                guard::TABLE,
                guard.prefixes.iter().map(|p| format!("{}/{}", p.addr, p.prefix_len)).collect::<Vec<_>>().join(", "),
                guard.interfaces.join(", "),
                guard.vxlan_port
            ))
        }
        GuardAction::Remove => match guard::remove().map_err(|e| e.to_string())? {
            true => Ok(format!(
                "guard removed (table {}): overlay traffic can leave in plaintext while meshd is not running",
                guard::TABLE
            )),
            false => Ok(format!("no guard to remove (table {} is not installed)", guard::TABLE)),
        },
        GuardAction::Status => guard::status().map(|text| text.trim_end().to_string()).map_err(|e| e.to_string()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        CliCommand::Run {
            config,
            node,
            ctl_socket,
            no_offload,
            busy_poll,
            no_kernel_drops,
            log_format,
            state_dir,
            key,
            upgrade,
        } => {
            init_logs(log_format);
            let state_dir = state_dir
                .or_else(|| std::env::var_os("MESHD_STATE_DIR").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(meshd::manual_nonces::DEFAULT_STATE_DIR));
            daemon::run(RunOptions {
                config,
                node,
                key,
                ctl_socket,
                tuning: WorkerTuning { offload: !no_offload, busy_poll: Duration::from_micros(u64::from(busy_poll)) },
                kernel_drops: !no_kernel_drops,
                state_dir,
                upgrade,
            })
        }
        CliCommand::Check { config, node, key } => {
            init_logs(LogFormat::Plain);
            daemon::check(&config, node.as_deref(), key.as_deref()).map(|summary| println!("{summary}"))
        }
        CliCommand::Keygen { out } => {
            node_identity::keygen(&out).map(|public| println!("{public}")).map_err(DaemonError::Topology)
        }
        CliCommand::Pubkey { key } => {
            node_identity::pubkey(&key).map(|public| println!("{public}")).map_err(DaemonError::from)
        }
        CliCommand::Generate { out } => return clidoc::generate(Cli::command(), "8", &out),
        CliCommand::Guard { action } => match guard(action) {
            Ok(text) => {
                println!("{text}");
                return ExitCode::SUCCESS;
            }
            Err(error) => {
                eprintln!("meshd guard: {error}");
                return ExitCode::FAILURE;
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("meshd: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr at RUST_LOG's level (default info), as plain lines (colours only on a
/// terminal) or JSON; the level can change at runtime (`ikectl log level`).
fn init_logs(format: LogFormat) {
    meshd::logging::init(format == LogFormat::Json);
}
