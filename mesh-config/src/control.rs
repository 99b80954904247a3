//! The control protocol between `ikectl` and `meshd`: one JSON request per line on the Unix
//! socket, one JSON response per line back. Every message carries `version`; a daemon refuses a
//! request of another version with a message that says which side to upgrade.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::types::{Cipher, Encap, Mode};

/// Bumped whenever a request or reply changes shape.
pub const PROTOCOL_VERSION: u32 = 3;

/// Where `meshd run` listens and `ikectl` connects unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/meshd/meshd.sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    #[serde(flatten)]
    pub command: Command,
}

impl Request {
    pub fn new(command: Command) -> Self {
        Request { version: PROTOCOL_VERSION, command }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    Status,
    SaList {
        peer: Option<String>,
    },
    SaFlush {
        peer: Option<String>,
    },
    Peers,
    Fdb,
    Drops {
        peer: Option<String>,
        /// Also the kernel's drops of the mesh's traffic (eBPF).
        #[serde(default)]
        kernel: bool,
    },
    /// Streams drops recorded after the record `after` (a `DropReport::last_id`): one
    /// `Reply::DropStream` line whenever there are new ones, until the client hangs up. With
    /// `kernel_after` (a `KernelDropReport::last_id`), the kernel's drops too.
    DropsFollow {
        peer: Option<String>,
        after: u64,
        #[serde(default)]
        kernel_after: Option<u64>,
    },
    /// Re-read the mesh file meshd was started with and apply it live.
    Reload,
    /// `ikectl trace`: each hop of the forwarding decision for an overlay MAC or IP address.
    Trace {
        target: String,
        overlay: Option<String>,
    },
    /// `ikectl ping`: probes through the SA, the peer's own view, and a verdict.
    Ping {
        peer: String,
        count: u32,
        /// Each probe's size as an IP packet on the underlay (0: the smallest).
        size: u32,
    },
    /// `ikectl capture`: one `Reply::CaptureStart`, then `Reply::CaptureFrames` lines with the
    /// decrypted overlay frames of both directions until `count` frames (if given) were sent or
    /// the client hangs up.
    Capture {
        peer: Option<String>,
        overlay: Option<String>,
        count: Option<u64>,
        /// Bytes kept of each frame.
        snaplen: u32,
    },
    /// `ikectl sa keys --wireshark`: the key material of every Child SA.
    SaKeys,
    /// `ikectl log level`: sets meshd's log level (for one module, or all), reverting after
    /// `for_secs` when given.
    LogLevel {
        level: String,
        module: Option<String>,
        for_secs: Option<u64>,
    },
    /// `ikectl bugreport`: everything a ticket needs, secrets redacted.
    BugReport,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub version: u32,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(Reply),
    Error(String),
}

impl Response {
    pub fn ok(reply: Reply) -> Self {
        Response { version: PROTOCOL_VERSION, outcome: Outcome::Ok(reply) }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Response { version: PROTOCOL_VERSION, outcome: Outcome::Error(message.into()) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Reply {
    Status(Box<Status>),
    SaList(SaList),
    SaFlush(FlushReport),
    Peers(Vec<PeerInfo>),
    Fdb(Vec<FdbEntry>),
    Drops(DropReport),
    DropStream(DropBatch),
    Reload(crate::reload::ReloadPlan),
    Trace(TraceReport),
    Ping(Box<PingReport>),
    CaptureStart(CaptureStart),
    CaptureFrames(CaptureFrames),
    SaKeys(Vec<SaKeys>),
    LogLevel(LogLevelReport),
    BugReport(Vec<ReportFile>),
}

/// The capture's interfaces: one per overlay and direction, numbered from 0 in this order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureStart {
    pub node: String,
    pub interfaces: Vec<CaptureInterface>,
    pub snaplen: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureInterface {
    pub overlay: String,
    pub vni: u32,
    pub direction: Direction,
}

/// Frames captured since the last batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureFrames {
    pub frames: Vec<CapturedFrame>,
    /// Frames left out of this capture so far (rate limit or a full queue); traffic is unaffected.
    pub dropped: u64,
}

/// One decrypted overlay frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedFrame {
    /// Index into `CaptureStart::interfaces`.
    pub interface: u32,
    pub at_unix_ns: u64,
    pub peer: String,
    pub spi: Spi,
    pub vni: u32,
    /// The frame's length before `snaplen` cut it.
    pub original_len: u32,
    /// The captured bytes, as hex.
    pub data: String,
}

/// One Child SA's keys, for a sniffer on the underlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaKeys {
    pub peer: String,
    pub direction: Direction,
    pub source: IpAddr,
    pub destination: IpAddr,
    pub spi: Spi,
    pub cipher: Cipher,
    /// The key followed by the 4-byte salt, as hex.
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLevelReport {
    /// The filter in effect now (`tracing` directive syntax).
    pub filter: String,
    /// The filter restored after `reverts_in_secs`, when the change is temporary.
    pub reverts_to: Option<String>,
    pub reverts_in_secs: Option<u64>,
}

/// One file of a bug report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportFile {
    pub name: String,
    pub contents: String,
}

/// A Security Parameter Index; shown and serialized as `0x0000abcd`, as in `mesh.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Spi(pub u32);

impl fmt::Display for Spi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:08x}", self.0)
    }
}

impl FromStr for Spi {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"));
        let parsed = match hex {
            Some(digits) => u32::from_str_radix(digits, 16),
            None => s.parse::<u32>(),
        };
        parsed.map(Spi).map_err(|_| format!("\"{s}\" is not an SPI: write it as hex (0x00001001) or decimal"))
    }
}

impl Serialize for Spi {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Spi {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    In,
    Out,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::In => "in",
            Direction::Out => "out",
        })
    }
}

/// Where an SA's keys came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaOrigin {
    /// A `[[manual_sa]]` entry of the mesh file.
    Manual,
    /// Negotiated by IKEv2.
    Ike,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub mesh: String,
    pub daemon_version: String,
    pub config_path: String,
    pub uptime_secs: u64,
    pub underlay_address: IpAddr,
    pub workers: usize,
    pub peers_configured: usize,
    /// Peers with an SA in both directions.
    pub peers_with_sas: usize,
    pub overlays: Vec<OverlayStatus>,
    pub drops_total: u64,
    /// Things the operator should know, e.g. a path MTU that forces an overlay below its MTU.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The short fingerprint of the public key this node signs with; `None`: it uses the
    /// pre-shared key.
    #[serde(default)]
    pub public_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverlayStatus {
    pub name: String,
    pub interface: String,
    pub vni: u32,
    pub mtu: u32,
    /// How the MTU was chosen, e.g. "auto: eth0 1500 - 92".
    pub mtu_reason: String,
    pub address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayInfo {
    /// Highest sequence number accepted so far (0: none yet).
    pub highest_sequence: u64,
    pub window_size: u32,
    /// How many of the `window_size` numbers ending at `highest_sequence` were received.
    pub received_in_window: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaInfo {
    pub peer: String,
    pub direction: Direction,
    pub spi: Spi,
    pub cipher: Cipher,
    pub mode: Mode,
    pub encap: Encap,
    pub origin: SaOrigin,
    pub esn: bool,
    pub age_secs: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Seconds since the SA last carried a packet; `None` when it never did.
    pub last_used_secs: Option<u64>,
    /// Inbound only: the anti-replay window.
    pub replay: Option<ReplayInfo>,
    /// Outbound only: the last sequence number sent.
    pub sequence: Option<u64>,
    /// Packets dropped on this SA, by reason.
    pub drops: BTreeMap<DropReason, u64>,
}

/// `ikectl sa list`: the IKE SAs and the Child SAs (ESP SAs, one per direction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaList {
    pub ike_sas: Vec<IkeSaInfo>,
    pub child_sas: Vec<SaInfo>,
}

/// One IKE SA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IkeSaInfo {
    /// The peer's name, or its address while it is not authenticated yet.
    pub peer: String,
    /// As `0x` and 16 hex digits.
    pub initiator_spi: String,
    pub responder_spi: String,
    pub we_initiated: bool,
    pub state: String,
    pub cipher: Option<Cipher>,
    pub prf: String,
    pub group: String,
    /// The peer's IKE address and port as this node sees it (NAT shows here).
    pub remote: SocketAddr,
    /// This node is behind NAT: the peer sees another address or port than this node sends from.
    pub nat_detected: bool,
    /// IKE and ESP travel in UDP 4500.
    pub udp_encap: bool,
    pub established_secs: Option<u64>,
    pub rekey_in_secs: Option<u64>,
    /// (inbound SPI, outbound SPI) of each Child SA.
    pub child_spis: Vec<(Spi, Spi)>,
    /// How the peer authenticated ("ed25519" or "psk"), once it has.
    #[serde(default)]
    pub peer_auth: Option<String>,
    /// The short fingerprint of the public key the peer signed with (`PublicKey::fingerprint`).
    #[serde(default)]
    pub peer_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlushReport {
    /// SAs removed from the database.
    pub removed: Vec<Spi>,
    /// SAs installed again from `[[manual_sa]]` entries (fresh counters and replay windows).
    pub reinstalled: Vec<Spi>,
    /// What the operator should do next, if anything.
    pub advice: Option<String>,
    /// How long after the flush the peer had SAs both ways again (IKE peers), if it did within
    /// the wait.
    pub traffic_back_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub name: String,
    pub address: IpAddr,
    pub mode: Mode,
    pub encap: Encap,
    pub outbound_spi: Option<Spi>,
    pub inbound_spis: Vec<Spi>,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub last_rx_secs: Option<u64>,
    /// ESP from this peer that came before its inbound SA was installed (the peer's first
    /// packets overtaking its IKE answer), kept and handed on once the SA was; counted in
    /// `rx_packets` too when it opened.
    #[serde(default)]
    pub early_esp_packets: u64,
    pub drops: u64,
    /// Packets to this peer the kernel refused to send, by errno name (`ENOBUFS`, `EPERM`, ...).
    #[serde(default)]
    pub send_errors: BTreeMap<String, u64>,
    /// How this peer is keyed: "manual", or the IKE state ("established", "connecting",
    /// or the last failure with what to do).
    pub keying: String,
    /// The underlay path MTU towards the peer (whole outer IP packets).
    #[serde(default)]
    pub path_mtu: Option<u32>,
    /// The largest overlay IP packet that fits that path; larger ones are dropped (`mtu_exceeded`)
    /// and answered with ICMP too-big.
    #[serde(default)]
    pub overlay_mtu: Option<u32>,
    /// How the path MTU was learnt: "probed" (acknowledged probes through the SA), "probing" (the
    /// kernel's figure while probes check it) or "kernel" (the route, and ICMP if any arrives).
    #[serde(default)]
    pub path_mtu_source: Option<String>,
    /// What the probe search waits for, for probed peers (e.g. "search_complete").
    #[serde(default)]
    pub path_mtu_search: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FdbEntry {
    pub overlay: String,
    pub vni: u32,
    pub mac: String,
    pub peer: String,
    /// Seconds since a frame from this MAC (learned from decrypted traffic) was last seen.
    pub age_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DropReport {
    pub total: u64,
    pub by_reason: BTreeMap<DropReason, u64>,
    /// Per peer, by reason; drops that could not be tied to a peer are under "-".
    pub by_peer: BTreeMap<String, BTreeMap<DropReason, u64>>,
    /// The most recent drops, oldest first.
    pub recent: Vec<DropRecord>,
    /// The id of the last drop recorded so far (0: none); `DropsFollow` continues after it.
    pub last_id: u64,
    /// The kernel's drops of the mesh's traffic, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelDropReport>,
}

/// What the eBPF tracer on `skb:kfree_skb` saw, or why it is not running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelDropReport {
    /// Why kernel drops are not traced, with what to do; `None` while tracing.
    pub unavailable: Option<String>,
    pub total: u64,
    /// Events the kernel could not queue to meshd (its ring buffer was full).
    pub lost: u64,
    /// By the kernel's reason name (`NETFILTER_DROP`, ...).
    pub by_reason: BTreeMap<String, u64>,
    /// The most recent, oldest first.
    pub recent: Vec<KernelDropRecord>,
    pub last_id: u64,
}

/// One packet of the mesh that the kernel dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelDropRecord {
    pub id: u64,
    pub at_unix_ms: u64,
    /// The kernel's name for `enum skb_drop_reason`, e.g. `NETFILTER_DROP`.
    pub reason: String,
    /// The kernel function that freed the packet, as `function+0xoffset`.
    pub location: String,
    /// The peer whose address is the packet's source or destination.
    pub peer: Option<String>,
    pub interface: Option<String>,
    /// "esp", "udp", or the IP protocol number.
    pub protocol: String,
    pub source: Option<IpAddr>,
    pub destination: Option<IpAddr>,
    pub source_port: Option<u16>,
    pub destination_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DropRecord {
    /// Numbers the recorded drops from 1 on, so a follower knows where it left off.
    pub id: u64,
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    pub reason: DropReason,
    pub peer: Option<String>,
    pub spi: Option<Spi>,
    pub sequence: Option<u64>,
    pub outer_source: Option<SocketAddr>,
    pub vni: Option<u32>,
    /// The overlay frame's addresses, when it was in the clear where it was dropped.
    pub inner: Option<InnerAddresses>,
}

/// New drops for `ikectl drops --follow`, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DropBatch {
    pub drops: Vec<DropRecord>,
    #[serde(default)]
    pub kernel: Vec<KernelDropRecord>,
}

/// What a node tells a peer that asks (for `ikectl ping` there): its own view of the pair.
/// Sent over the authenticated diagnostic query, so it is kept small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub node: String,
    pub underlay_address: IpAddr,
    /// Where the asking node's query came from, as this node saw it (NAT shows here).
    pub observed_source: Option<SocketAddr>,
    pub ike: Option<IkeView>,
    pub outbound: Option<SaView>,
    pub inbound: Vec<SaView>,
    /// The underlay path MTU toward the asking node, how it was learnt ("probed", "kernel", ...),
    /// and the largest overlay packet it carries.
    pub path_mtu: Option<u32>,
    pub path_mtu_source: String,
    pub path_overlay_mtu: Option<u32>,
    /// Drops of packets from or to the asking node, by reason.
    pub drops: BTreeMap<DropReason, u64>,
    /// The most recent of them, oldest first.
    pub recent_drops: Vec<RecentDrop>,
}

/// The IKE SA of a pair, as one side has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IkeView {
    pub initiator_spi: String,
    pub responder_spi: String,
    pub state: String,
    pub nat_detected: bool,
    pub established_secs: Option<u64>,
}

/// One Child SA direction, as one side has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaView {
    pub spi: Spi,
    pub age_secs: u64,
    /// Outbound: last sequence number sent; inbound: highest accepted.
    pub sequence: u64,
    pub packets: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentDrop {
    pub at_unix_ms: u64,
    pub reason: DropReason,
    pub spi: Option<Spi>,
}

/// `ikectl ping`: a two-column table (this node | peer), the probes and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingReport {
    pub node: String,
    pub peer: String,
    pub rows: Vec<PingRow>,
    pub probes: ProbeSummary,
    /// In plain words, each with the fix.
    pub verdicts: Vec<String>,
    /// Nothing wrong: ikectl exits 0 only then.
    pub healthy: bool,
    /// This node's view and the peer's (absent when it did not answer).
    pub local: PeerView,
    pub remote: Option<PeerView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingRow {
    pub what: String,
    pub this_node: String,
    pub peer: String,
}

/// The probes: meshd's in-band echo requests, sealed with the pair's outbound SA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSummary {
    /// Each request's size on the underlay (0: the smallest).
    pub size: u32,
    pub sent: u32,
    pub received: u32,
    pub rtt_min_ms: Option<f64>,
    pub rtt_avg_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
    /// Why no probes were sent, if none were.
    pub skipped: Option<String>,
}

/// `ikectl trace`: how a frame to `target` would leave this node, hop by hop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceReport {
    pub target: String,
    pub overlay: String,
    pub hops: Vec<TraceHop>,
}

/// One step of the forwarding decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceHop {
    /// "overlay", "neighbour", "fdb", "peer", "outbound SA", "underlay route", "path MTU".
    pub hop: String,
    /// What was decided here, in words.
    pub summary: String,
    /// The same as values, for scripts.
    pub fields: BTreeMap<String, String>,
    /// Counters of this hop (packets, bytes, drops, errors).
    pub counters: BTreeMap<String, u64>,
    /// What is wrong at this hop and what to do.
    pub problem: Option<String>,
}

/// Addresses of a dropped overlay frame: its MACs and, for IPv4/IPv6 frames, its IP addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InnerAddresses {
    pub source_mac: String,
    pub destination_mac: String,
    pub source_ip: Option<IpAddr>,
    pub destination_ip: Option<IpAddr>,
}

impl fmt::Display for InnerAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.source_ip, self.destination_ip) {
            (Some(source), Some(destination)) => {
                write!(f, "{source} ({}) -> {destination} ({})", self.source_mac, self.destination_mac)
            }
            _ => write!(f, "{} -> {}", self.source_mac, self.destination_mac),
        }
    }
}

/// Why a packet was dropped. Every drop path in the datapath names one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// ESP for an SPI that has no inbound SA here.
    UnknownSpi,
    /// ESP from an address that is not the SA's peer.
    WrongPeer,
    /// A sequence number already received.
    Replay,
    /// A sequence number older than the replay window.
    TooOld,
    /// The ICV did not verify: wrong key, or the packet was altered.
    Authentication,
    /// Decrypted, but the ESP padding is not the RFC 4303 sequence.
    BadPadding,
    /// A header could not be parsed (the detail is in the log).
    Malformed,
    /// Decrypted payload is not UDP/VXLAN to the overlay port, or the inner addresses are not the pair's.
    UnexpectedPayload,
    /// A VXLAN network identifier no overlay here uses.
    UnknownVni,
    /// A frame to send, but no outbound SA for the peer.
    NoOutboundSa,
    /// The outbound SA has used every sequence number; it must be replaced (rekeyed or flushed).
    SequenceExhausted,
    /// An IKE message on the ESP-in-UDP port while IKE is not running on this node.
    NotEsp,
    /// An IKE message arrived while the queue to the IKE control plane was full.
    IkeBacklog,
    /// A frame larger than the buffer or the path allows.
    FrameTooLarge,
    /// A frame from the overlay interface with no peer to go to.
    NoPeer,
    /// The kernel refused to send the ESP packet.
    SendFailed,
    /// The kernel refused the frame on the overlay interface.
    TapWriteFailed,
    /// An IKE message that could not be parsed, or lacks a payload its exchange needs.
    IkeMalformed,
    /// An encrypted IKE message whose integrity check failed: altered, or keys that differ.
    IkeIntegrity,
    /// An IKE message for an IKE SA this node does not have (restarted peer, or an SA already deleted).
    IkeUnknownSpi,
    /// An IKE message that does not fit the IKE SA's state or message IDs (a late retransmission).
    IkeUnexpected,
    /// IKE_AUTH failed: the peer's AUTH did not verify, or it refused ours (the pre-shared keys differ).
    IkeAuthFailed,
    /// IKE_SA_INIT without a proposal in common.
    IkeNoProposal,
    /// The Child SA's traffic selectors were refused.
    IkeTsUnacceptable,
    /// An IKE request was retransmitted until the give-up time without an answer.
    IkeRetransmitGaveUp,
    /// ESP in UDP 4500 while this node's encapsulation is raw ESP (`encap` differs between the nodes).
    EspInUdpUnexpected,
    /// A frame larger than the path MTU towards its peer allows; the sender got an ICMP
    /// "fragmentation needed" / ICMPv6 "packet too big" with the usable MTU.
    MtuExceeded,
    /// An in-band control message (path-MTU probe) arrived while the queue to the control plane was full.
    InbandBacklog,
    /// A frame whose source MAC is configured (`static_macs`) behind another node.
    FdbStaticMac,
    /// A frame whose source MAC was in use behind another peer within the move hold-down.
    FdbMoveHeldDown,
    /// A frame with a new source MAC from a peer that already holds its quota of MACs.
    FdbPeerQuota,
    /// A frame with a new source MAC from a peer that learns MACs faster than the rate limit.
    FdbRateLimited,
    /// A frame with a new source MAC while the overlay's forwarding table is full.
    FdbTableFull,
}

impl DropReason {
    pub const ALL: &'static [DropReason] = &[
        DropReason::UnknownSpi,
        DropReason::WrongPeer,
        DropReason::Replay,
        DropReason::TooOld,
        DropReason::Authentication,
        DropReason::BadPadding,
        DropReason::Malformed,
        DropReason::UnexpectedPayload,
        DropReason::UnknownVni,
        DropReason::NoOutboundSa,
        DropReason::SequenceExhausted,
        DropReason::NotEsp,
        DropReason::IkeBacklog,
        DropReason::FrameTooLarge,
        DropReason::NoPeer,
        DropReason::SendFailed,
        DropReason::TapWriteFailed,
        DropReason::IkeMalformed,
        DropReason::IkeIntegrity,
        DropReason::IkeUnknownSpi,
        DropReason::IkeUnexpected,
        DropReason::IkeAuthFailed,
        DropReason::IkeNoProposal,
        DropReason::IkeTsUnacceptable,
        DropReason::IkeRetransmitGaveUp,
        DropReason::EspInUdpUnexpected,
        DropReason::MtuExceeded,
        DropReason::InbandBacklog,
        DropReason::FdbStaticMac,
        DropReason::FdbMoveHeldDown,
        DropReason::FdbPeerQuota,
        DropReason::FdbRateLimited,
        DropReason::FdbTableFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownSpi => "unknown_spi",
            DropReason::WrongPeer => "wrong_peer",
            DropReason::Replay => "replay",
            DropReason::TooOld => "too_old",
            DropReason::Authentication => "authentication",
            DropReason::BadPadding => "bad_padding",
            DropReason::Malformed => "malformed",
            DropReason::UnexpectedPayload => "unexpected_payload",
            DropReason::UnknownVni => "unknown_vni",
            DropReason::NoOutboundSa => "no_outbound_sa",
            DropReason::SequenceExhausted => "sequence_exhausted",
            DropReason::NotEsp => "not_esp",
            DropReason::IkeBacklog => "ike_backlog",
            DropReason::FrameTooLarge => "frame_too_large",
            DropReason::NoPeer => "no_peer",
            DropReason::SendFailed => "send_failed",
            DropReason::TapWriteFailed => "tap_write_failed",
            DropReason::IkeMalformed => "ike_malformed",
            DropReason::IkeIntegrity => "ike_integrity",
            DropReason::IkeUnknownSpi => "ike_unknown_spi",
            DropReason::IkeUnexpected => "ike_unexpected",
            DropReason::IkeAuthFailed => "ike_auth_failed",
            DropReason::IkeNoProposal => "ike_no_proposal",
            DropReason::IkeTsUnacceptable => "ike_ts_unacceptable",
            DropReason::IkeRetransmitGaveUp => "ike_retransmit_gave_up",
            DropReason::EspInUdpUnexpected => "esp_in_udp_unexpected",
            DropReason::MtuExceeded => "mtu_exceeded",
            DropReason::InbandBacklog => "inband_backlog",
            DropReason::FdbStaticMac => "fdb_static_mac",
            DropReason::FdbMoveHeldDown => "fdb_move_held_down",
            DropReason::FdbPeerQuota => "fdb_peer_quota",
            DropReason::FdbRateLimited => "fdb_rate_limited",
            DropReason::FdbTableFull => "fdb_table_full",
        }
    }

    /// Dense index for per-reason counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_form() {
        let request = Request::new(Command::SaList { peer: Some("n2".into()) });
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(text, r#"{"version":3,"command":"sa_list","peer":"n2"}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        let status: Request = serde_json::from_str(r#"{"version":3,"command":"status"}"#).unwrap();
        assert_eq!(status.command, Command::Status);
    }

    #[test]
    fn response_wire_form() {
        let error = serde_json::to_string(&Response::error("no such peer")).unwrap();
        assert_eq!(error, r#"{"version":3,"error":"no such peer"}"#);
        let ok = Response::ok(Reply::Fdb(vec![]));
        let text = serde_json::to_string(&ok).unwrap();
        assert_eq!(text, r#"{"version":3,"ok":{"kind":"fdb","data":[]}}"#);
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), ok);
    }

    #[test]
    fn visibility_commands_wire_form() {
        let capture = Request::new(Command::Capture { peer: None, overlay: None, count: Some(4), snaplen: 128 });
        let text = serde_json::to_string(&capture).unwrap();
        assert_eq!(text, r#"{"version":3,"command":"capture","peer":null,"overlay":null,"count":4,"snaplen":128}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), capture);
        let level: Request = serde_json::from_str(
            r#"{"version":3,"command":"log_level","level":"debug","module":"ike","for_secs":600}"#,
        )
        .unwrap();
        assert_eq!(
            level.command,
            Command::LogLevel { level: "debug".into(), module: Some("ike".into()), for_secs: Some(600) }
        );
        let frames = Response::ok(Reply::CaptureFrames(CaptureFrames { frames: vec![], dropped: 3 }));
        let text = serde_json::to_string(&frames).unwrap();
        assert_eq!(text, r#"{"version":3,"ok":{"kind":"capture_frames","data":{"frames":[],"dropped":3}}}"#);
    }

    #[test]
    fn spi_text() {
        assert_eq!(Spi(0x1001).to_string(), "0x00001001");
        assert_eq!("0x00001001".parse::<Spi>(), Ok(Spi(0x1001)));
        assert_eq!("4097".parse::<Spi>(), Ok(Spi(4097)));
        assert!("0xZZ".parse::<Spi>().is_err());
        assert_eq!(serde_json::to_string(&Spi(0xabcd)).unwrap(), "\"0x0000abcd\"");
    }

    #[test]
    fn replies_without_the_path_mtu_fields_still_parse() {
        let peer = r#"{"name":"n2","address":"198.18.0.2","mode":"transport","encap":"udp","outbound_spi":null,
            "inbound_spis":[],"tx_packets":0,"tx_bytes":0,"rx_packets":0,"rx_bytes":0,"last_rx_secs":null,
            "drops":0,"keying":"manual"}"#;
        let peer: PeerInfo = serde_json::from_str(peer).unwrap();
        assert_eq!((peer.path_mtu, peer.overlay_mtu, peer.path_mtu_source), (None, None, None));
        let status = r#"{"node":"n1","mesh":"lab","daemon_version":"0.1.0","config_path":"m","uptime_secs":1,
            "underlay_address":"198.18.0.1","workers":1,"peers_configured":1,"peers_with_sas":1,"overlays":[],
            "drops_total":0}"#;
        let status: Status = serde_json::from_str(status).unwrap();
        assert!(status.warnings.is_empty());
    }

    #[test]
    fn drop_reasons_are_dense_and_named() {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
            assert_eq!(serde_json::to_string(reason).unwrap(), format!("\"{}\"", reason.as_str()));
        }
    }
}
