//! The typed `mesh.toml` (the keys are described in docs/configure.md) and the questions daemons
//! ask of it. Reading a file into these types is `parse`'s job ([`MeshConfig::load`] is there):
//! this module depends on neither `parse` nor `validate`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::error::ConfigError;
use crate::secret::{KeyBytes, Psk};
use crate::types::{Cipher, Encap, Mode};

/// The overlay's VXLAN UDP port (inner source and destination). IANA's VXLAN port is 4789;
/// 4790 is the port of the SmartOS/illumos overlay this mesh replaces.
pub const DEFAULT_VXLAN_PORT: u16 = 4790;
/// Default IKE proposals, in preference order.
pub const DEFAULT_PROPOSALS: [&str; 2] = ["aes256gcm16-prfsha256-x25519", "chacha20poly1305-prfsha256-x25519"];
pub const DEFAULT_IKE_LIFETIME: Duration = Duration::from_secs(4 * 3600);
pub const DEFAULT_CHILD_LIFETIME: Duration = Duration::from_secs(3600);
pub const DEFAULT_DPD: Duration = Duration::from_secs(10);
/// The shortest accepted pre-shared key, in bytes.
pub const MIN_PSK_LEN: usize = 32;
/// SPIs 1-255 are reserved by IANA and 0 means "none"; manual SAs start here.
pub const MIN_MANUAL_SPI: u32 = 256;
/// The largest 24-bit VXLAN network identifier.
pub const MAX_VNI: u32 = 0xff_ffff;
/// Overlay MTU bounds for `mtu = N`.
pub const MIN_OVERLAY_MTU: u16 = 576;
pub const MAX_OVERLAY_MTU: u16 = 65535;

/// A validated `mesh.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshConfig {
    /// The file this came from (as given to `load`/`parse`).
    pub path: PathBuf,
    pub mesh: MeshSection,
    pub ike: IkeSection,
    /// In file order.
    pub nodes: Vec<Node>,
    /// In file order.
    pub overlays: Vec<Overlay>,
    /// In file order.
    pub manual_sas: Vec<ManualSa>,
    /// The contents of `mesh.psk_file`; `None` when the file names no psk_file
    /// (then only pairs with manual SAs can carry traffic).
    pub psk: Option<Psk>,
    pub metrics: crate::metrics::MetricsSection,
    pub flows: crate::flows::FlowsSection,
}

/// `[mesh]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshSection {
    pub name: String,
    /// As written in the file (relative paths are relative to the mesh file's folder;
    /// see [`MeshConfig::psk_path`]).
    pub psk_file: Option<PathBuf>,
    /// This node's private key file as written (see [`MeshConfig::key_path`]).
    pub key_file: Option<PathBuf>,
    pub vxlan_port: u16,
    pub encap: Encap,
    pub mode: Mode,
}

/// `[ike]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeSection {
    /// In preference order; never empty.
    pub proposals: Vec<Proposal>,
    /// True when the file set `proposals`; false when these are [`DEFAULT_PROPOSALS`] (a daemon
    /// may then reorder them for the CPU, e.g. ChaCha20 first without AES-NI).
    pub proposals_explicit: bool,
    pub ike_lifetime: Duration,
    pub child_lifetime: Duration,
    /// Dead peer detection interval.
    pub dpd: Duration,
}

impl Default for IkeSection {
    fn default() -> IkeSection {
        IkeSection {
            proposals: DEFAULT_PROPOSALS.iter().map(|p| p.parse().expect("valid default")).collect(),
            proposals_explicit: false,
            ike_lifetime: DEFAULT_IKE_LIFETIME,
            child_lifetime: DEFAULT_CHILD_LIFETIME,
            dpd: DEFAULT_DPD,
        }
    }
}

/// IKE pseudo-random function. Only one exists here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prf {
    /// PRF_HMAC_SHA2_256.
    HmacSha256,
}

impl Prf {
    pub const ALL: &'static [Prf] = &[Prf::HmacSha256];
    pub fn as_str(self) -> &'static str {
        match self {
            Prf::HmacSha256 => "prfsha256",
        }
    }
    /// IKEv2 transform ID (type 2).
    pub fn iana_id(self) -> u16 {
        match self {
            Prf::HmacSha256 => 5,
        }
    }
}

/// IKE Diffie-Hellman group. Only one exists here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DhGroup {
    /// Curve25519, group 31 (RFC 8031).
    X25519,
}

impl DhGroup {
    pub const ALL: &'static [DhGroup] = &[DhGroup::X25519];
    pub fn as_str(self) -> &'static str {
        match self {
            DhGroup::X25519 => "x25519",
        }
    }
    /// IKEv2 transform ID (type 4).
    pub fn iana_id(self) -> u16 {
        match self {
            DhGroup::X25519 => 31,
        }
    }
}

/// One IKE proposal, written `CIPHER-PRF-GROUP`, e.g. `aes256gcm16-prfsha256-x25519`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Proposal {
    pub cipher: Cipher,
    pub prf: Prf,
    pub group: DhGroup,
}

/// The accepted form of a proposal, for error messages.
pub const PROPOSAL_FORM: &str = "write proposals as CIPHER-PRF-GROUP, e.g. \"aes256gcm16-prfsha256-x25519\", where CIPHER is aes256gcm16 or chacha20poly1305, PRF is prfsha256 and GROUP is x25519";

impl FromStr for Proposal {
    type Err = String;
    /// The error says what is wrong (see [`PROPOSAL_FORM`] for the fix).
    fn from_str(s: &str) -> Result<Proposal, String> {
        let parts: Vec<&str> = s.split('-').collect();
        let [cipher, prf, group] = parts[..] else {
            return Err(format!(
                "\"{s}\" is not a proposal: it has {} part(s) where 3 (CIPHER-PRF-GROUP) are needed",
                parts.len()
            ));
        };
        let cipher = cipher
            .parse::<Cipher>()
            .map_err(|_| format!("\"{s}\": \"{cipher}\" is not a known cipher (choices: {})", Cipher::choices()))?;
        let prf = Prf::ALL
            .iter()
            .copied()
            .find(|p| p.as_str() == prf)
            .ok_or_else(|| format!("\"{s}\": \"{prf}\" is not a known PRF (the only one is \"prfsha256\")"))?;
        let group = DhGroup::ALL
            .iter()
            .copied()
            .find(|g| g.as_str() == group)
            .ok_or_else(|| format!("\"{s}\": \"{group}\" is not a known DH group (the only one is \"x25519\")"))?;
        Ok(Proposal { cipher, prf, group })
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.cipher, self.prf.as_str(), self.group.as_str())
    }
}

/// `[[node]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// The underlay address; also the IKE identity.
    pub address: IpAddr,
    /// ssh destination for fleet commands; default `root@ADDRESS` (`root@[ADDRESS]` for IPv6).
    pub ssh: String,
    /// Per-node mode override.
    pub mode: Option<Mode>,
    /// Ed25519 public keys: empty for a node that authenticates with the psk_file; two while it
    /// moves to a new private key.
    pub public_keys: Vec<crate::PublicKey>,
    /// Line of this node's `[[node]]` header.
    pub line: usize,
}

/// `[[overlay]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    pub name: String,
    pub vni: u32,
    /// TAP interface name; default = `name`.
    pub interface: String,
    pub mtu: OverlayMtu,
    /// Host address of each node's overlay interface, by node name (nodes may be absent).
    pub addresses: BTreeMap<String, IfaceAddress>,
    /// MACs pinned to a node (`static_macs`): no other node's frames may claim them.
    pub static_macs: Vec<StaticMac>,
    /// Line of this overlay's `[[overlay]]` header.
    pub line: usize,
}

/// The most `static_macs` entries one overlay may have (a share of the forwarding table).
pub const MAX_STATIC_MACS: usize = 4_096;

/// One `static_macs = [{ mac = "02:00:00:00:00:01", node = "n2" }]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticMac {
    pub mac: [u8; 6],
    pub node: String,
}

/// A unicast MAC written as six colon-separated hex pairs; the error says what is wrong.
pub fn parse_unicast_mac(s: &str) -> Result<[u8; 6], String> {
    let pairs: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    let well_formed = pairs.len() == 6
        && pairs
            .iter()
            .zip(mac.iter_mut())
            .all(|(pair, byte)| pair.len() == 2 && u8::from_str_radix(pair, 16).map(|value| *byte = value).is_ok());
    if !well_formed {
        return Err(format!("\"{}\" is not a MAC address", s.escape_default()));
    }
    if mac[0] & 0x01 != 0 {
        return Err(format!("{s} is a group (multicast or broadcast) address, which is never learned"));
    }
    Ok(mac)
}

/// `mtu = "auto"` or `mtu = 1400`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OverlayMtu {
    /// Underlay MTU minus the full encapsulation overhead.
    #[default]
    Auto,
    Fixed(u16),
}

impl fmt::Display for OverlayMtu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OverlayMtu::Auto => f.write_str("auto"),
            OverlayMtu::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// A mesh file holding `[[manual_sa]]` keys is a key file: like the psk_file, group and others
/// must not read it.
pub(crate) fn check_mode_for_manual_keys(config: &MeshConfig) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let Some(first) = config.manual_sas.first() else { return Ok(()) };
    let shown = config.path.display();
    let mode = std::fs::metadata(&config.path)
        .map_err(|e| {
            ConfigError::new(
                &config.path,
                None,
                "file",
                format!("cannot stat the mesh file: {e}"),
                "check the --config path",
            )
        })?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    Err(ConfigError::new(
        &config.path,
        Some(first.line),
        "manual_sa[0].key",
        format!("the mesh file {shown} holds [[manual_sa]] keys and has mode {mode:04o}: group or others may read or write it"),
        format!("run `chmod 600 {shown}`"),
    ))
}

/// An interface address with its prefix length, `10.244.0.1/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfaceAddress {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl IfaceAddress {
    /// Whether `ip` is inside this address's subnet.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len)).unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IfaceAddress {
    type Err = String;
    /// The error says what is wrong with the text.
    fn from_str(s: &str) -> Result<IfaceAddress, String> {
        let Some((addr, len)) = s.split_once('/') else {
            return Err(format!("\"{s}\" has no prefix length"));
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("\"{addr}\" is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len: u8 = match len.parse::<u8>() {
            Ok(n) if n <= max && !len.starts_with('+') => n,
            _ => return Err(format!("\"{len}\" is not a prefix length from 0 to {max}")),
        };
        Ok(IfaceAddress { addr, prefix_len })
    }
}

impl fmt::Display for IfaceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// `[[manual_sa]]`: one direction of a manually keyed ESP SA, read by both ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManualSa {
    /// Sending node.
    pub from: String,
    /// Receiving node.
    pub to: String,
    pub spi: u32,
    pub cipher: Cipher,
    pub key: KeyBytes,
    /// Line of this entry's `[[manual_sa]]` header.
    pub line: usize,
}

impl MeshConfig {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The node whose underlay address is `addr`.
    pub fn node_by_address(&self, addr: IpAddr) -> Option<&Node> {
        self.nodes.iter().find(|n| n.address == addr)
    }

    pub fn overlay(&self, name: &str) -> Option<&Overlay> {
        self.overlays.iter().find(|o| o.name == name)
    }

    /// Where the psk_file is: relative paths are taken from the mesh file's folder.
    pub fn psk_path(&self) -> Option<PathBuf> {
        self.mesh.psk_file.as_deref().map(|p| resolve_relative(&self.path, p))
    }

    /// This node's private key file: `explicit` (`meshd run --key`), else `key_file` (relative to
    /// the mesh file's folder), else [`crate::DEFAULT_KEY_FILE`].
    pub fn key_path(&self, explicit: Option<&Path>) -> PathBuf {
        match (explicit, &self.mesh.key_file) {
            (Some(path), _) => path.to_path_buf(),
            (None, Some(path)) => resolve_relative(&self.path, path),
            (None, None) => PathBuf::from(crate::DEFAULT_KEY_FILE),
        }
    }

    /// Which node am I: by `--node NAME` if given, else the one node whose address is in
    /// `local_addresses`.
    pub fn local_node(&self, explicit: Option<&str>, local_addresses: &[IpAddr]) -> Result<&Node, ConfigError> {
        if let Some(name) = explicit {
            return self.node(name).ok_or_else(|| {
                ConfigError::new(
                    &self.path,
                    None,
                    "--node",
                    format!("there is no node named \"{name}\" in this mesh"),
                    format!("pass one of the node names: {}", list(self.nodes.iter().map(|n| n.name.as_str()))),
                )
            });
        }
        let found: Vec<&Node> = self.nodes.iter().filter(|n| local_addresses.contains(&n.address)).collect();
        match found[..] {
            [one] => Ok(one),
            [] => Err(ConfigError::new(
                &self.path,
                None,
                "--node",
                format!(
                    "none of the node addresses is an address of this host (nodes: {})",
                    list(self.nodes.iter().map(|n| format!("{} {}", n.name, n.address)))
                ),
                "pass --node NAME to say which node this is, or add this host's underlay address to the mesh",
            )),
            _ => Err(ConfigError::new(
                &self.path,
                None,
                "--node",
                format!(
                    "several node addresses are addresses of this host: {}",
                    list(found.iter().map(|n| format!("{} {}", n.name, n.address)))
                ),
                "pass --node NAME to say which of them this is",
            )),
        }
    }

    /// Every node but `node` (the mesh is full: every node peers with every other).
    pub fn peers_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.nodes.iter().filter(move |n| n.name != node)
    }

    /// The ESP mode between two nodes: each node's mode is its override or `[mesh] mode`;
    /// if either side's mode is tunnel, the pair uses tunnel.
    pub fn mode_between(&self, a: &str, b: &str) -> Mode {
        let mode_of = |name: &str| self.node(name).and_then(|n| n.mode).unwrap_or(self.mesh.mode);
        if mode_of(a) == Mode::Tunnel || mode_of(b) == Mode::Tunnel {
            Mode::Tunnel
        } else {
            Mode::Transport
        }
    }

    /// The manual SA carrying traffic from `from` to `to`.
    pub fn manual_sa(&self, from: &str, to: &str) -> Option<&ManualSa> {
        self.manual_sas.iter().find(|sa| sa.from == from && sa.to == to)
    }
}

/// `rel` taken from `config_path`'s folder unless absolute.
pub(crate) fn resolve_relative(config_path: &Path, rel: &Path) -> PathBuf {
    match config_path.parent() {
        Some(dir) if rel.is_relative() => dir.join(rel),
        _ => rel.to_path_buf(),
    }
}

/// `a, b, c` — at most 12 items, then "and N more".
pub(crate) fn list<I, S>(items: I) -> String
where
    I: IntoIterator<Item = S>,
    S: fmt::Display,
{
    const MAX: usize = 12;
    let all: Vec<String> = items.into_iter().map(|s| s.to_string()).collect();
    if all.is_empty() {
        return "(none)".into();
    }
    let mut out = all.iter().take(MAX).cloned().collect::<Vec<_>>().join(", ");
    if all.len() > MAX {
        out.push_str(&format!(" and {} more", all.len() - MAX));
    }
    out
}
