//! `ikectl`: the operator's view into `meshd`: status, SAs, peers, FDB and drops.

#![deny(unsafe_code)]

mod bugreport;
mod capture;
mod client;
mod drops;
mod fleet;
mod pcapng;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use mesh_config::control::{Command, Reply, DEFAULT_SOCKET};

#[derive(Parser)]
#[command(name = "ikectl", version, about = "Inspect and control meshd")]
struct Cli {
    /// meshd's control socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Subcommand)]
enum CliCommand {
    /// The node, its overlays and a health summary.
    Status,
    /// Security associations.
    Sa {
        #[command(subcommand)]
        command: SaCommand,
    },
    /// Peers with their SAs and traffic.
    Peers,
    /// Overlay MAC addresses learned behind each peer.
    Fdb,
    /// Dropped packets: counters by reason and peer, and the most recent drops.
    Drops {
        #[arg(long)]
        peer: Option<String>,
        /// Then print every new drop as it happens, until Ctrl-C.
        #[arg(long)]
        follow: bool,
        /// Also the kernel's drops of mesh traffic (eBPF on skb:kfree_skb).
        #[arg(long)]
        kernel: bool,
    },
    /// Re-read the mesh file meshd was started with and apply it live; prints what changed.
    /// A file that does not validate is refused (exit status 1) and the running config stays.
    Reload,
    /// Probes through the SA to a peer, this node's and the peer's view of the pair side by side,
    /// and a verdict with the fix; exit status 0 only when the pair is healthy.
    Ping {
        /// The peer node.
        node: String,
        /// How many probes.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
        count: u32,
        /// Each probe's size as an IP packet on the underlay; 0 (the default) sends the smallest.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=65_535))]
        size: u32,
    },
    /// Each hop of the forwarding decision for an overlay MAC or IP address: overlay interface,
    /// neighbour, FDB entry, peer, outbound SA, underlay route, path MTU, with their counters.
    Trace {
        /// An overlay MAC (02:00:5e:10:00:01) or IP address (10.244.0.2).
        target: String,
        /// The overlay to trace in (needed only when several could carry the address).
        #[arg(long)]
        overlay: Option<String>,
    },
    /// The decrypted overlay frames of this node, both directions, as pcapng (one interface per
    /// overlay and direction; peer, VNI and SPI in each packet's comment). Root only.
    /// `ikectl capture -w - | tshark -r -` reads it live.
    Capture {
        /// Only frames to and from this peer node.
        #[arg(long)]
        peer: Option<String>,
        /// Only frames of this overlay.
        #[arg(long)]
        overlay: Option<String>,
        /// Stop after this many frames (default: until Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
        /// Bytes kept of each frame.
        #[arg(long, default_value_t = 65_549, value_parser = clap::value_parser!(u32).range(1..=65_549))]
        snaplen: u32,
        /// Where the pcapng goes: a file, or - for stdout.
        #[arg(short = 'w', long = "write", value_name = "FILE")]
        write: String,
    },
    /// One tar.gz to attach to a ticket: status, SAs, peers, FDB, drops (with the kernel's), a
    /// ping of every peer, recent log lines, the effective config with every secret redacted,
    /// versions and the kernel's network facts.
    Bugreport {
        /// Where the archive goes (default: meshd-bugreport-NODE-TIME.tar.gz here).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// meshd's log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Every node of the mesh over ssh: update the config, flush SAs, mesh health.
    Fleet {
        // Boxed: the fleet options are most of the size of the whole command line.
        #[command(subcommand)]
        command: Box<fleet::FleetCommand>,
    },
    /// Write the man pages and shell completions of ikectl into a folder (scripts/package).
    #[command(hide = true)]
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Change meshd's log level now (error, warn, info, debug, trace, off), for everything or
    /// one module; with --for it goes back by itself.
    Level {
        level: String,
        /// Only this module of meshd (e.g. ike, keying, datapath, pmtu).
        #[arg(long)]
        module: Option<String>,
        /// Go back to the previous level after this long (e.g. 10m, 30s).
        #[arg(long = "for", value_name = "DURATION", value_parser = mesh_config::parse_duration)]
        revert_after: Option<std::time::Duration>,
    },
}

#[derive(Subcommand)]
enum SaCommand {
    /// SPIs, cipher, mode, encapsulation, counters and replay state of every SA.
    List {
        #[arg(long)]
        peer: Option<String>,
    },
    /// The keys of every Child SA (root only): whoever has them reads the traffic. With
    /// --wireshark, as rows of Wireshark's ESP SA table (esp_sa), so a capture on the underlay
    /// decrypts: `tshark -o esp.enable_encryption_decode:TRUE -o "uat:esp_sa:ROW" ...`.
    Keys {
        #[arg(long)]
        wireshark: bool,
    },
    /// Delete the SAs (of one peer, or all) and install them again.
    Flush {
        #[arg(long)]
        peer: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let CliCommand::Drops { peer, follow: true, kernel } = cli.command {
        return exit_on(drops::follow(&cli.socket, peer, kernel, cli.json));
    }
    let command = match cli.command {
        CliCommand::Status => Command::Status,
        CliCommand::Sa { command: SaCommand::List { peer } } => Command::SaList { peer },
        CliCommand::Sa { command: SaCommand::Flush { peer } } => Command::SaFlush { peer },
        CliCommand::Peers => Command::Peers,
        CliCommand::Fdb => Command::Fdb,
        CliCommand::Drops { peer, kernel, .. } => Command::Drops { peer, kernel },
        CliCommand::Reload => Command::Reload,
        CliCommand::Trace { target, overlay } => Command::Trace { target, overlay },
        CliCommand::Ping { node, count, size } => Command::Ping { peer: node, count, size },
        CliCommand::Log { command: LogCommand::Level { level, module, revert_after } } => {
            Command::LogLevel { level, module, for_secs: revert_after.map(|d| d.as_secs().max(1)) }
        }
        CliCommand::Bugreport { output } => return exit_on(bugreport::run(&cli.socket, output)),
        CliCommand::Fleet { command } => return fleet::run(*command, cli.json),
        CliCommand::Capture { peer, overlay, count, snaplen, write } => {
            let options = capture::CaptureOptions { peer, overlay, count, snaplen, write };
            return exit_on(capture::run(&cli.socket, options));
        }
        CliCommand::Sa { command: SaCommand::Keys { wireshark } } => {
            return exit_on(keys(&cli.socket, wireshark, cli.json))
        }
        CliCommand::Generate { out } => return clidoc::generate(Cli::command(), "1", &out),
    };
    match client::request(&cli.socket, command) {
        Ok(reply) => {
            print!("{}", if cli.json { render::json(&reply) } else { render::text(&reply) });
            match reply {
                Reply::Ping(report) if !report.healthy => ExitCode::FAILURE,
                _ => ExitCode::SUCCESS,
            }
        }
        Err(error) => exit_on(Err(error)),
    }
}

/// `ikectl sa keys`: a warning on stderr, the keys on stdout.
fn keys(socket: &std::path::Path, wireshark: bool, json: bool) -> Result<(), client::ClientError> {
    eprintln!(
        "ikectl: WARNING: these are the ESP keys of every Child SA of this node: anyone who has them \
         can decrypt that traffic. Keep them off tickets and shared disks; `ikectl sa flush` replaces them."
    );
    let reply = client::request(socket, Command::SaKeys)?;
    let Reply::SaKeys(keys) = &reply else {
        return Err(client::ClientError("meshd answered something else than SA keys".to_string()));
    };
    let text = match (json, wireshark) {
        (true, _) => render::json(&reply),
        (false, true) => keys.iter().map(|sa| render::wireshark_esp_sa(sa) + "\n").collect(),
        (false, false) => render::text(&reply),
    };
    print!("{text}");
    Ok(())
}

fn exit_on(result: Result<(), client::ClientError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ikectl: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn json_flag_goes_anywhere() {
        let cli = Cli::try_parse_from(["ikectl", "sa", "list", "--json", "--peer", "n2"]).unwrap();
        assert!(cli.json);
        assert!(matches!(cli.command, CliCommand::Sa { command: SaCommand::List { peer: Some(_) } }));
    }
}
