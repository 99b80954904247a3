//! strongSwan's `charon` as an IKEv2/ESP peer inside a lab namespace: the real peer of the
//! interop tests (docs/strongswan.md).
//!
//! What this machine's strongSwan 5.9.8 (Debian 12) allows, as measured:
//! - No kernel ESP here, so charon runs the userspace `kernel-libipsec` backend: tunnel mode
//!   only, ESP in UDP 4500 only (`encap = yes` forces it), no ESN. It creates a TUN device
//!   `ipsec0` (MTU 1400, fixed) and routes each remote traffic selector's *address* (not its
//!   port) into it through routing table 220. Outbound packets that reach `ipsec0` but match no
//!   policy are dropped (`no matching outbound IPsec policy` in the log).
//! - `allow_peer_ts = yes` is required: our selectors contain the peer's own address, and
//!   without it the responder answers `TS_UNACCEPTABLE`.
//! - The plugins `random nonce openssl kdf kernel-libipsec kernel-netlink socket-default vici`
//!   are enough. `openssl` (package `libstrongswan-standard-plugins`) provides AES-GCM,
//!   ChaCha20-Poly1305 and X25519; without `kdf` IKE key derivation fails ("KDF_PRF with
//!   PRF_HMAC_SHA2_256 not supported"). No plugin of `libstrongswan-extra-plugins` is needed.
//! - kernel-libipsec never initiates on traffic: libipsec has no acquire, so with
//!   `start_action = trap` matching packets are dropped ("could not find an outbound IPsec SA")
//!   and no IKE_SA is started. Use [`StartAction::Start`] or [`Charon::initiate`].
//! - kernel-libipsec installs its route even with `charon.install_routes = no`; what decides
//!   which packets use table 220 is the routing rule, see [`Routing`].
//! - charon's pid file (`/run/charon.pid`) is compiled in, so every charon runs in its own mount
//!   namespace with a private tmpfs on `/run`; its vici socket, config and log live in a
//!   tempdir, reachable from the test process.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::meshd::terminate;
use crate::netns::Netns;
use crate::util::{describe_output, hex, wait_until};

/// The overlay's UDP port (docs/ike.md): the traffic selectors are `addr/32[udp/4790]`.
pub const OVERLAY_PORT: u16 = 4790;
/// kernel-libipsec's TUN device.
pub const IPSEC_TUN: &str = "ipsec0";
/// The MTU kernel-libipsec gives `ipsec0` (not configurable in 5.9).
pub const IPSEC_TUN_MTU: u32 = 1400;
/// The routing table charon's kernel-netlink puts its routes in (its default, 220).
pub const ROUTING_TABLE: u32 = 220;
/// The priority of the lab's own rule in [`Routing::OverlayPortOnly`] (before charon's 220).
pub const OVERLAY_RULE_PRIORITY: u32 = 210;
/// [`Routing::AllToPeer`]: the firewall mark charon puts on its own IKE and ESP-in-UDP packets
/// (`socket-default.fwmark`), which its table-220 rule skips (`kernel-netlink.fwmark = !mark`).
pub const CHARON_FWMARK: u32 = 0x4500;
/// [`Routing::OverlayPortOnly`]: charon's table-220 rule only applies to packets with this mark,
/// which nothing sets, so only the lab's port rule leads into table 220.
pub const UNUSED_FWMARK: u32 = 0x4790;
/// Metric of the blackhole fallback route to the peer in table 220 ([`Routing::OverlayPortOnly`]).
const BLACKHOLE_METRIC: u32 = 65535;

/// `/usr/lib/ipsec/charon` (Debian), or `$CHARON_BIN`.
pub fn charon_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CHARON_BIN") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from("/usr/lib/ipsec/charon");
    if !path.is_file() {
        panic!(
            "{} not found: install strongSwan (apt-get install -y strongswan-charon strongswan-swanctl \
             libcharon-extra-plugins libstrongswan-standard-plugins), or set CHARON_BIN",
            path.display()
        );
    }
    path
}

/// swanctl's `start_action` of the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAction {
    /// Nothing happens until someone initiates ([`Charon::initiate`], or the peer).
    None,
    /// charon initiates as soon as the config is loaded.
    Start,
    /// Installs the policies and the route, so matching traffic is dropped rather than sent in
    /// plaintext; kernel-libipsec does not initiate on it (no acquire).
    Trap,
}

impl StartAction {
    pub fn as_str(self) -> &'static str {
        match self {
            StartAction::None => "none",
            StartAction::Start => "start",
            StartAction::Trap => "trap",
        }
    }
}

/// Which packets go into the tunnel (table 220 -> `ipsec0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// The lab's rule `ipproto udp dport 4790 lookup 220` (priority 210): only overlay
    /// datagrams enter `ipsec0`; charon's own rule is disarmed (it matches [`UNUSED_FWMARK`]
    /// only). Underlay ping and everything else to the peer keep working, charon's IKE and
    /// ESP (port 500/4500) never loop into the tunnel, and a blackhole route to the peer in
    /// table 220 (metric 65535; charon's own route has metric 0 for IPv4, 1024 for IPv6, and
    /// wins while it exists) drops overlay datagrams while no SA or trap is installed instead
    /// of sending them in plaintext.
    OverlayPortOnly,
    /// strongSwan's stock behaviour: charon's rule `not fwmark 0x4500 lookup 220` sends
    /// *everything* to the peer's address into `ipsec0` while an SA is installed (underlay
    /// ping to the peer is dropped by libipsec), and only charon's own packets, marked
    /// 0x4500 by socket-default, bypass it. Without that mark the responder's IKE_AUTH reply
    /// is routed into the tunnel and the SA never comes up (measured). Before an SA is
    /// installed, overlay datagrams leave in plaintext.
    AllToPeer,
}

/// One strongSwan peer: a single connection `conn` with a single child `child` between `local`
/// and `remote`, PSK auth with the two addresses as IDs, tunnel mode, forced UDP encapsulation,
/// traffic selectors `local/32[udp/4790] <-> remote/32[udp/4790]`.
#[derive(Debug, Clone)]
pub struct CharonConfig {
    pub local: IpAddr,
    pub remote: IpAddr,
    /// The pre-shared key, as bytes (written as `0x<hex>`, so any bytes work).
    pub psk: Vec<u8>,
    /// IKE proposals, in order, e.g. `aes256gcm16-prfsha256-x25519`.
    pub ike_proposals: Vec<String>,
    /// ESP proposals, in order, e.g. `aes256gcm16` (no ESN unless `-esn` is added).
    pub esp_proposals: Vec<String>,
    pub start_action: StartAction,
    /// Child SA rekey time; `None`: strongSwan's default (1 h). When set, `life_time` is twice
    /// this and `rand_time` 0, so the rekey happens exactly then.
    pub child_rekey: Option<Duration>,
    /// IKE SA rekey time; `None`: strongSwan's default (4 h). When set, `over_time` equals it
    /// and `rand_time` is 0.
    pub ike_rekey: Option<Duration>,
    /// DPD interval; `None`: no DPD.
    pub dpd_delay: Option<Duration>,
    pub routing: Routing,
    /// The UDP port of the traffic selectors and of [`Routing::OverlayPortOnly`]'s rule.
    pub port: u16,
    /// Connection name in swanctl.conf (`--ike NAME`).
    pub conn: String,
    /// Child name in swanctl.conf (`--child NAME`).
    pub child: String,
    /// Ed25519 raw public keys (RFC 8420) instead of the PSK.
    pub ed25519: Option<Ed25519Keys>,
    /// Log the IKE SA keys (`ike = 4`), for [`Charon::first_ike_keys`] (lab only).
    pub log_ike_keys: bool,
}

/// charon's Ed25519 key and its peer's public key, for `auth = pubkey` with `pubkeys`.
#[derive(Debug, Clone)]
pub struct Ed25519Keys {
    /// charon's private key: the 32-byte seed (as `meshd keygen` writes it, base64).
    pub seed: [u8; 32],
    /// charon's public key and the peer's (32 bytes each).
    pub own_public: [u8; 32],
    pub peer_public: [u8; 32],
}

impl Ed25519Keys {
    /// The key files charon reads, in `dir` (the private key where `swanctl --load-all` looks
    /// for PKCS#8 keys): PKCS#8 and SubjectPublicKeyInfo PEM (RFC 8410).
    fn write(&self, dir: &Path) {
        fs::create_dir_all(dir.join("pkcs8")).expect("create pkcs8/");
        let pem = |label: &str, der: &[u8]| {
            let body = mesh_config::base64_encode(der);
            let lines: Vec<&str> =
                body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64")).collect();
            format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
        };
        const PKCS8_PREFIX: [u8; 16] =
            [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
        const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
        let files = [
            ("pkcs8/charon.key.pem", pem("PRIVATE KEY", &[&PKCS8_PREFIX[..], &self.seed].concat())),
            ("charon.pub.pem", pem("PUBLIC KEY", &[&SPKI_PREFIX[..], &self.own_public].concat())),
            ("peer.pub.pem", pem("PUBLIC KEY", &[&SPKI_PREFIX[..], &self.peer_public].concat())),
        ];
        for (name, text) in files {
            let path = dir.join(name);
            fs::write(&path, text).expect("write a charon key file");
            fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod key file");
        }
    }
}

impl CharonConfig {
    /// Both AEADs, AES-GCM first; start action `none`; strongSwan's default lifetimes;
    /// [`Routing::OverlayPortOnly`]; connection `peer`, child `overlay`.
    pub fn new(local: IpAddr, remote: IpAddr, psk: &[u8]) -> CharonConfig {
        CharonConfig {
            local,
            remote,
            psk: psk.to_vec(),
            ike_proposals: vec!["aes256gcm16-prfsha256-x25519".into(), "chacha20poly1305-prfsha256-x25519".into()],
            esp_proposals: vec!["aes256gcm16".into(), "chacha20poly1305".into()],
            start_action: StartAction::None,
            child_rekey: None,
            ike_rekey: None,
            dpd_delay: None,
            routing: Routing::OverlayPortOnly,
            port: OVERLAY_PORT,
            conn: "peer".into(),
            child: "overlay".into(),
            ed25519: None,
            log_ike_keys: false,
        }
    }

    /// charon logs the keys of its IKE SAs, so that tshark can decrypt IKE_AUTH.
    pub fn log_ike_keys(mut self) -> Self {
        self.log_ike_keys = true;
        self
    }

    /// Authenticate with Ed25519 public keys (`auth = pubkey`) instead of the PSK.
    pub fn ed25519(mut self, keys: Ed25519Keys) -> Self {
        self.ed25519 = Some(keys);
        self
    }

    /// Only this AEAD (`aes256gcm16` or `chacha20poly1305`), for IKE (with prfsha256-x25519)
    /// and ESP.
    pub fn cipher(mut self, cipher: &str) -> Self {
        self.ike_proposals = vec![format!("{cipher}-prfsha256-x25519")];
        self.esp_proposals = vec![cipher.to_string()];
        self
    }

    pub fn proposals(mut self, ike: &[&str], esp: &[&str]) -> Self {
        self.ike_proposals = ike.iter().map(|s| s.to_string()).collect();
        self.esp_proposals = esp.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn start_action(mut self, action: StartAction) -> Self {
        self.start_action = action;
        self
    }

    pub fn child_rekey(mut self, after: Duration) -> Self {
        self.child_rekey = Some(after);
        self
    }

    pub fn ike_rekey(mut self, after: Duration) -> Self {
        self.ike_rekey = Some(after);
        self
    }

    pub fn dpd(mut self, delay: Duration) -> Self {
        self.dpd_delay = Some(delay);
        self
    }

    pub fn routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }

    fn host_prefix(addr: IpAddr) -> u8 {
        if addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    /// The text of `strongswan.conf` for an instance whose files live in `dir`.
    pub fn strongswan_conf(&self, dir: &Path) -> String {
        let (socket_default, rule_mark) = match self.routing {
            Routing::AllToPeer => (
                format!("\n        socket-default {{\n            fwmark = {CHARON_FWMARK:#x}\n        }}"),
                format!("!{CHARON_FWMARK:#x}"),
            ),
            Routing::OverlayPortOnly => (String::new(), format!("{UNUSED_FWMARK:#x}")),
        };
        let log = dir.join("charon.log");
        let vici = dir.join("charon.vici");
        format!(
            r#"# written by meshd_lab::strongswan
charon {{
    load_modular = no
    load = random nonce openssl pem pkcs1 pkcs8 pubkey kdf kernel-libipsec kernel-netlink socket-default vici
    routing_table = {ROUTING_TABLE}
    routing_table_prio = {ROUTING_TABLE}
    filelog {{
        lab {{
            path = {log}
            time_format = %H:%M:%S
            time_add_ms = yes
            ike_name = yes
            flush_line = yes
            default = 1
            ike = {ike_level}
            cfg = 2
            knl = 2
            esp = 2
        }}
    }}
    syslog {{
        daemon {{
            default = -1
        }}
    }}
    plugins {{
        vici {{
            socket = unix://{vici}
        }}
        kernel-libipsec {{
            allow_peer_ts = yes
        }}
        kernel-netlink {{
            fwmark = {rule_mark}
        }}{socket_default}
    }}
}}
# swanctl reads this file too; `random` keeps it from loading its long default plugin list
# (the others parse key files).
swanctl {{
    load = random openssl pem pkcs1 pkcs8 pubkey
}}
"#,
            log = log.display(),
            vici = vici.display(),
            ike_level = if self.log_ike_keys { 4 } else { 2 },
        )
    }

    /// The text of `swanctl.conf`; key files (with [`CharonConfig::ed25519`]) are in `dir`.
    pub fn swanctl_conf(&self, dir: &Path) -> String {
        let secs = |d: Duration| format!("{}s", d.as_secs().max(1));
        let mut ike_extra = String::new();
        if let Some(rekey) = self.ike_rekey {
            let _ = write!(
                ike_extra,
                "\n        rekey_time = {0}\n        over_time = {0}\n        rand_time = 0",
                secs(rekey)
            );
        }
        if let Some(dpd) = self.dpd_delay {
            let _ = write!(ike_extra, "\n        dpd_delay = {}", secs(dpd));
        }
        let mut child_extra = String::new();
        if let Some(rekey) = self.child_rekey {
            let _ = write!(
                child_extra,
                "\n                rekey_time = {}\n                life_time = {}\n                rand_time = 0",
                secs(rekey),
                secs(rekey * 2)
            );
        }
        format!(
            r#"# written by meshd_lab::strongswan
connections {{
    {conn} {{
        version = 2
        local_addrs = {local}
        remote_addrs = {remote}
        proposals = {ike_proposals}
        encap = yes
        mobike = no
        reauth_time = 0{ike_extra}
        local {{
            auth = {auth}
            id = {local}{local_pubkey}
        }}
        remote {{
            auth = {auth}
            id = {remote}{remote_pubkey}
        }}
        children {{
            {child} {{
                mode = tunnel
                esp_proposals = {esp_proposals}
                local_ts = {local}/{local_prefix}[udp/{port}]
                remote_ts = {remote}/{remote_prefix}[udp/{port}]
                start_action = {start_action}{child_extra}
            }}
        }}
    }}
}}
secrets {{{secrets}
}}
"#,
            conn = self.conn,
            child = self.child,
            local = self.local,
            remote = self.remote,
            ike_proposals = self.ike_proposals.join(", "),
            esp_proposals = self.esp_proposals.join(", "),
            local_prefix = Self::host_prefix(self.local),
            remote_prefix = Self::host_prefix(self.remote),
            port = self.port,
            start_action = self.start_action.as_str(),
            auth = if self.ed25519.is_some() { "pubkey" } else { "psk" },
            local_pubkey = match self.ed25519 {
                Some(_) => format!("\n            pubkeys = {}", dir.join("charon.pub.pem").display()),
                None => String::new(),
            },
            remote_pubkey = match self.ed25519 {
                Some(_) => format!("\n            pubkeys = {}", dir.join("peer.pub.pem").display()),
                None => String::new(),
            },
            secrets = match self.ed25519 {
                Some(_) => String::new(),
                None => format!(
                    "\n    ike-{conn} {{\n        id-local = {local}\n        id-remote = {remote}\n        secret = 0x{psk}\n    }}",
                    conn = self.conn,
                    local = self.local,
                    remote = self.remote,
                    psk = hex(&self.psk)
                ),
            },
        )
    }
}

/// A running `charon` in a lab namespace (its own mount namespace with a private `/run`).
/// Dropping it stops charon (SIGTERM, SIGKILL after 5 s), removes the lab's routing rule and
/// route and its files; when the test panics, its log is printed.
#[derive(Debug)]
pub struct Charon {
    child: Option<Child>,
    exit: Option<ExitStatus>,
    netns: String,
    conf: CharonConfig,
    strongswan_conf: PathBuf,
    swanctl_conf: PathBuf,
    vici: PathBuf,
    log: PathBuf,
    out: PathBuf,
    _dir: TempDir,
}

impl Charon {
    /// Writes the two config files, starts charon in `ns` and waits (at most 10 s) until
    /// `swanctl --load-all` succeeds; panics with charon's log otherwise.
    pub fn start(ns: &Netns, conf: CharonConfig) -> Charon {
        crate::util::require_root();
        let bin = charon_bin();
        let dir = tempfile::Builder::new().prefix("meshd-charon-").tempdir().expect("tempdir");
        let strongswan_conf = dir.path().join("strongswan.conf");
        let swanctl_conf = dir.path().join("swanctl.conf");
        fs::write(&strongswan_conf, conf.strongswan_conf(dir.path())).expect("write strongswan.conf");
        fs::write(&swanctl_conf, conf.swanctl_conf(dir.path())).expect("write swanctl.conf");
        if let Some(keys) = &conf.ed25519 {
            keys.write(dir.path());
        }
        let log = dir.path().join("charon.log");
        let out = dir.path().join("charon.out");
        let vici = dir.path().join("charon.vici");

        if conf.routing == Routing::OverlayPortOnly {
            install_overlay_routing(ns, &conf);
        }

        let out_file = File::create(&out).expect("create charon.out");
        let err_file = out_file.try_clone().expect("dup charon.out");
        // `ip netns exec` and `unshare` exec in place and sh execs charon, so the child's pid
        // is charon's. The tmpfs on /run (charon.pid) vanishes with the mount namespace.
        let mut command = ns.command([
            OsStr::new("unshare"),
            OsStr::new("--mount"),
            OsStr::new("--propagation"),
            OsStr::new("private"),
            OsStr::new("sh"),
            OsStr::new("-c"),
            OsStr::new("mount -t tmpfs -o mode=0755,size=4m meshd-lab-charon /run && exec \"$0\""),
            bin.as_os_str(),
        ]);
        command.env("STRONGSWAN_CONF", &strongswan_conf).stdin(Stdio::null()).stdout(out_file).stderr(err_file);
        let child = command.spawn().expect("spawn charon");
        let mut charon = Charon {
            child: Some(child),
            exit: None,
            netns: ns.name().to_string(),
            conf,
            strongswan_conf,
            swanctl_conf,
            vici,
            log,
            out,
            _dir: dir,
        };
        charon.wait_loaded(Duration::from_secs(10));
        charon
    }

    fn wait_loaded(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                panic!("charon in {} exited during startup ({:?})\n{}", self.netns, self.exit, self.describe_logs());
            }
            let file = self.swanctl_conf.clone();
            let output = self.swanctl([OsStr::new("--load-all"), OsStr::new("--file"), file.as_os_str()]);
            if output.status.success() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "charon in {}: `swanctl --load-all` did not succeed within {timeout:?}\n{}\n{}",
                    self.netns,
                    describe_output(&output),
                    self.describe_logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn config(&self) -> &CharonConfig {
        &self.conf
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `unix:///…/charon.vici`, for `swanctl --uri`.
    pub fn vici_uri(&self) -> String {
        format!("unix://{}", self.vici.display())
    }

    pub fn strongswan_conf_path(&self) -> &Path {
        &self.strongswan_conf
    }

    pub fn swanctl_conf_path(&self) -> &Path {
        &self.swanctl_conf
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// charon's log so far (its filelog: default level 1, ike/cfg/knl 2).
    /// SK_ei and SK_er (hex) of the first IKE SA, from a log made with
    /// [`CharonConfig::log_ike_keys`] (`Sk_ei secret => 36 bytes @ ...` and a hex dump).
    pub fn first_ike_keys(&self) -> Option<(String, String)> {
        let log = self.log();
        let key = |name: &str| {
            let mut lines = log.lines().skip_while(|line| !line.contains(&format!("{name} secret =>")));
            let header: Vec<&str> = lines.next()?.split_whitespace().collect();
            let len: usize = header.iter().position(|t| *t == "=>").and_then(|at| header.get(at + 1)?.parse().ok())?;
            let mut hex = String::new();
            for line in lines {
                let tokens: Vec<&str> = line.split_whitespace().collect();
                let at = tokens.iter().position(|t| t.strip_suffix(':').is_some_and(|n| n.parse::<usize>().is_ok()))?;
                let wanted = (len - hex.len() / 2).min(16);
                tokens.get(at + 1..at + 1 + wanted)?.iter().for_each(|byte| hex.push_str(&byte.to_lowercase()));
                if hex.len() / 2 == len {
                    return Some(hex);
                }
            }
            None
        };
        Some((key("Sk_ei")?, key("Sk_er")?))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    /// What charon printed to stdout/stderr (normally nothing; mount or startup errors).
    pub fn output(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn describe_logs(&self) -> String {
        format!(
            "--- charon stdout/stderr ({}) ---\n{}\n--- charon log ({}) ---\n{}",
            self.out.display(),
            self.output().trim_end(),
            self.log.display(),
            self.log().trim_end()
        )
    }

    /// `swanctl COMMAND… --uri <this charon>` (from the test's own namespace: vici is a Unix
    /// socket in the tempdir), with `STRONGSWAN_CONF` set and a 30 s limit. The command (e.g.
    /// `--list-sas`) must come first: swanctl only takes options after it.
    pub fn swanctl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Command::new("timeout")
            .arg("30")
            .arg("swanctl")
            .args(args)
            .arg("--uri")
            .arg(self.vici_uri())
            .env("STRONGSWAN_CONF", &self.strongswan_conf)
            .stdin(Stdio::null())
            .output()
            .expect("run swanctl (is strongswan-swanctl installed?)")
    }

    /// Like [`Charon::swanctl`]; panics with the output and charon's log unless it succeeds.
    /// Returns stdout.
    pub fn swanctl_ok(&self, args: &[&str]) -> String {
        let output = self.swanctl(args);
        if !output.status.success() {
            panic!(
                "charon in {}: swanctl {} failed\n{}\n{}",
                self.netns,
                args.join(" "),
                describe_output(&output),
                self.describe_logs()
            );
        }
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `swanctl --initiate --child CHILD --timeout 15`; panics unless it completes.
    pub fn initiate(&self, child: &str) -> String {
        let out = self.swanctl_ok(&["--initiate", "--child", child, "--timeout", "15"]);
        if !out.contains("initiate completed successfully") {
            panic!("charon in {}: initiate {child} did not complete:\n{out}\n{}", self.netns, self.describe_logs());
        }
        out
    }

    /// `swanctl --list-sas --noblock`.
    pub fn list_sas(&self) -> String {
        self.swanctl_ok(&["--list-sas", "--noblock"])
    }

    /// [`Charon::list_sas`], parsed.
    pub fn sas(&self) -> Vec<IkeSa> {
        parse_list_sas(&self.list_sas())
    }

    /// `swanctl --rekey --child CHILD` (the configured child). swanctl returns once charon has
    /// queued the rekey; wait for its result with [`Charon::wait_sas`].
    pub fn rekey_child(&self) -> String {
        let child = self.conf.child.clone();
        self.swanctl_ok(&["--rekey", "--child", &child])
    }

    /// `swanctl --rekey --ike CONN` (the configured connection); asynchronous like
    /// [`Charon::rekey_child`].
    pub fn rekey_ike(&self) -> String {
        let conn = self.conf.conn.clone();
        self.swanctl_ok(&["--rekey", "--ike", &conn])
    }

    /// `swanctl --terminate --ike CONN`.
    pub fn terminate_ike(&self) -> String {
        let conn = self.conf.conn.clone();
        self.swanctl_ok(&["--terminate", "--ike", &conn, "--timeout", "10"])
    }

    /// Polls [`Charon::sas`] until `check` returns `Some`; panics with the SA list and charon's
    /// log after `timeout`.
    pub fn wait_sas<T>(&self, timeout: Duration, what: &str, mut check: impl FnMut(&[IkeSa]) -> Option<T>) -> T {
        if let Some(value) = wait_until(timeout, || check(&self.sas())) {
            return value;
        }
        panic!(
            "charon in {}: {what}: not within {timeout:?}\n--- swanctl --list-sas ---\n{}\n{}",
            self.netns,
            self.list_sas(),
            self.describe_logs()
        );
    }

    /// Waits until an ESTABLISHED IKE SA of the configured connection has an INSTALLED child of
    /// the configured name; returns both.
    pub fn wait_installed(&self, timeout: Duration) -> (IkeSa, ChildSa) {
        let conn = self.conf.conn.clone();
        let child = self.conf.child.clone();
        self.wait_sas(timeout, "ESTABLISHED IKE SA with an INSTALLED child SA", |sas| {
            sas.iter().filter(|ike| ike.name == conn && ike.state == "ESTABLISHED").find_map(|ike| {
                ike.children
                    .iter()
                    .find(|c| c.name == child && c.state == "INSTALLED")
                    .map(|c| (ike.clone(), c.clone()))
            })
        })
    }

    /// Stops charon now (SIGTERM, SIGKILL after 5 s); returns its exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(mut child) = self.child.take() {
            self.exit = Some(terminate(&mut child, Duration::from_secs(5)));
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(Ok(Some(status))) => {
                self.exit = Some(status);
                self.child = None;
                false
            }
            _ => false,
        }
    }
}

impl Drop for Charon {
    fn drop(&mut self) {
        // Never panic here: this runs while tests unwind.
        self.stop();
        if self.conf.routing == Routing::OverlayPortOnly {
            remove_overlay_routing(&self.netns, &self.conf);
        }
        if std::thread::panicking() {
            eprintln!(
                "===== charon {} -> {} (netns {}, exit {:?}) =====\n{}\n===== end of charon log =====",
                self.conf.local,
                self.conf.remote,
                self.netns,
                self.exit,
                self.describe_logs()
            );
        }
    }
}

fn ip_family_flag(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "-4"
    } else {
        "-6"
    }
}

fn overlay_rule_args(conf: &CharonConfig) -> Vec<String> {
    [
        "ip",
        ip_family_flag(conf.remote),
        "rule",
        "add",
        "priority",
        &OVERLAY_RULE_PRIORITY.to_string(),
        "ipproto",
        "udp",
        "dport",
        &conf.port.to_string(),
        "lookup",
        &ROUTING_TABLE.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn blackhole_args(conf: &CharonConfig, verb: &str) -> Vec<String> {
    [
        "ip",
        ip_family_flag(conf.remote),
        "route",
        verb,
        "blackhole",
        &format!("{}/{}", conf.remote, CharonConfig::host_prefix(conf.remote)),
        "table",
        &ROUTING_TABLE.to_string(),
        "metric",
        &BLACKHOLE_METRIC.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// [`Routing::OverlayPortOnly`]: `ip rule add priority 210 ipproto udp dport 4790 lookup 220`
/// and `ip route add blackhole REMOTE table 220 metric 65535` (charon's own route to `ipsec0`
/// has a lower metric and wins while it exists).
fn install_overlay_routing(ns: &Netns, conf: &CharonConfig) {
    // A charon started earlier in this namespace may have left them.
    remove_overlay_routing(ns.name(), conf);
    ns.run_ok(overlay_rule_args(conf));
    ns.run_ok(blackhole_args(conf, "add"));
}

fn remove_overlay_routing(netns: &str, conf: &CharonConfig) {
    let mut rule = overlay_rule_args(conf);
    rule[3] = "del".into();
    for args in [rule, blackhole_args(conf, "del")] {
        let _ = Command::new("ip")
            .args(["netns", "exec", netns])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One IKE SA of `swanctl --list-sas`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeSa {
    /// Connection name.
    pub name: String,
    /// charon's unique id (`#N`).
    pub id: u32,
    /// `ESTABLISHED`, `CONNECTING`, `REKEYING`, `DELETING`, …
    pub state: String,
    /// e.g. `AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519` (empty before it is negotiated).
    pub proposal: String,
    pub children: Vec<ChildSa>,
}

/// One child SA of `swanctl --list-sas`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSa {
    pub name: String,
    pub id: u32,
    /// `INSTALLED`, `REKEYED`, `DELETED`, …
    pub state: String,
    /// e.g. `TUNNEL-in-UDP`.
    pub mode: String,
    /// e.g. `ESP:AES_GCM_16-256` or `ESP:CHACHA20_POLY1305` (`/ESN` appended with ESN).
    pub proposal: String,
    pub spi_in: Option<u32>,
    pub spi_out: Option<u32>,
    pub bytes_in: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub packets_out: u64,
    /// e.g. `198.18.0.1/32[udp/4790]`.
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
}

fn parse_counter(line: &str, unit: &str) -> u64 {
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    words.windows(2).find(|w| w[1] == unit).and_then(|w| w[0].parse().ok()).unwrap_or(0)
}

/// `name: #N, …` -> (name, N, the remaining comma-separated fields).
fn parse_sa_head(line: &str) -> Option<(String, u32, Vec<String>)> {
    let (name, rest) = line.split_once(": #")?;
    if name.contains(' ') {
        return None;
    }
    let mut fields = rest.split(", ").map(|s| s.trim().to_string());
    let id = fields.next()?.parse().ok()?;
    Some((name.to_string(), id, fields.collect()))
}

/// Parses the text of `swanctl --list-sas` (strongSwan 5.9).
pub fn parse_list_sas(text: &str) -> Vec<IkeSa> {
    let mut sas: Vec<IkeSa> = Vec::new();
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let body = line.trim();
        if body.is_empty() {
            continue;
        }
        match indent {
            0 => {
                if let Some((name, id, fields)) = parse_sa_head(body) {
                    let state = fields.first().cloned().unwrap_or_default();
                    sas.push(IkeSa { name, id, state, proposal: String::new(), children: Vec::new() });
                }
            }
            2 => {
                let Some(ike) = sas.last_mut() else { continue };
                if let Some((name, id, fields)) = parse_sa_head(body) {
                    // fields: "reqid N", state, mode, proposal
                    let field = |i: usize| fields.get(i).cloned().unwrap_or_default();
                    ike.children.push(ChildSa {
                        name,
                        id,
                        state: field(1),
                        mode: field(2),
                        proposal: field(3),
                        spi_in: None,
                        spi_out: None,
                        bytes_in: 0,
                        packets_in: 0,
                        bytes_out: 0,
                        packets_out: 0,
                        local_ts: Vec::new(),
                        remote_ts: Vec::new(),
                    });
                } else if !body.contains(' ') && body.contains('/') {
                    ike.proposal = body.to_string();
                }
            }
            _ => {
                let Some(child) = sas.last_mut().and_then(|ike| ike.children.last_mut()) else { continue };
                let mut words = body.split_whitespace();
                let first = words.next().unwrap_or_default();
                let second = words.next().unwrap_or_default();
                let spi = || u32::from_str_radix(second.trim_end_matches(','), 16).ok();
                match first {
                    "in" => {
                        child.spi_in = spi();
                        child.bytes_in = parse_counter(body, "bytes");
                        child.packets_in = parse_counter(body, "packets");
                    }
                    "out" => {
                        child.spi_out = spi();
                        child.bytes_out = parse_counter(body, "bytes");
                        child.packets_out = parse_counter(body, "packets");
                    }
                    "local" => child.local_ts.extend(body.split_whitespace().skip(1).map(str::to_string)),
                    "remote" => child.remote_ts.extend(body.split_whitespace().skip(1).map(str::to_string)),
                    _ => {}
                }
            }
        }
    }
    sas
}

/// A kernel VXLAN device whose datagrams match the traffic selectors `[udp/4790]` both ways:
/// `ip link add NAME type vxlan id VNI local LOCAL remote REMOTE dstport 4790 srcport 4790 4791`.
///
/// The source port: the kernel picks it from `[min, max)` by flow hash (`udp_flow_src_port`),
/// so `srcport 4790 4791` pins it to 4790. `srcport 4790 4790` does *not*: min >= max means
/// "use the ephemeral port range" (measured: source ports 44170, 51604, …).
#[derive(Debug, Clone)]
pub struct VxlanDevice {
    pub name: String,
    pub vni: u32,
    pub local: IpAddr,
    pub remote: IpAddr,
    pub port: u16,
    /// e.g. `10.244.0.1/24`.
    pub address: Option<String>,
    pub mtu: u32,
}

impl VxlanDevice {
    /// `vx0`, VNI 4242, port 4790, MTU [`vxlan_mtu`] for this family, no address.
    pub fn new(local: IpAddr, remote: IpAddr) -> VxlanDevice {
        VxlanDevice {
            name: "vx0".into(),
            vni: crate::meshfile::OVERLAY_VNI,
            local,
            remote,
            port: OVERLAY_PORT,
            address: None,
            mtu: vxlan_mtu(local),
        }
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    pub fn vni(mut self, vni: u32) -> Self {
        self.vni = vni;
        self
    }

    pub fn address(mut self, address: &str) -> Self {
        self.address = Some(address.to_string());
        self
    }

    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = mtu;
        self
    }

    /// Creates the device in `ns`, sets MTU and address, brings it up. It goes away with the
    /// namespace.
    pub fn create(&self, ns: &Netns) {
        let port = self.port.to_string();
        let next_port = (self.port + 1).to_string();
        ns.run_ok([
            "ip",
            "link",
            "add",
            &self.name,
            "type",
            "vxlan",
            "id",
            &self.vni.to_string(),
            "local",
            &self.local.to_string(),
            "remote",
            &self.remote.to_string(),
            "dstport",
            &port,
            "srcport",
            &port,
            &next_port,
        ]);
        ns.run_ok(["ip", "link", "set", &self.name, "mtu", &self.mtu.to_string()]);
        if let Some(address) = &self.address {
            ns.run_ok(["ip", "addr", "add", address, "dev", &self.name]);
        }
        ns.run_ok(["ip", "link", "set", &self.name, "up"]);
    }
}

/// The largest VXLAN MTU that fits `ipsec0` (MTU 1400) without fragmentation: 1400 minus
/// outer IP (20 or 40), UDP (8), VXLAN (8) and the inner Ethernet header (14): 1350 for an IPv4
/// underlay, 1330 for IPv6.
pub fn vxlan_mtu(underlay: IpAddr) -> u32 {
    let ip = if underlay.is_ipv4() { 20 } else { 40 };
    IPSEC_TUN_MTU - ip - 8 - 8 - 14
}

const UDP_ENDPOINT: &str = r#"
import socket, sys, threading
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((host, port))
lock = threading.Lock()
def say(*words):
    with lock:
        print(*words, flush=True)
def receive():
    while True:
        data, peer = s.recvfrom(65535)
        say("RX", peer[0], peer[1], data.hex())
threading.Thread(target=receive, daemon=True).start()
say("READY")
for line in sys.stdin:
    ip, dport, data = line.split()
    try:
        s.sendto(bytes.fromhex(data), (ip, int(dport)))
        say("SENT")
    except OSError as e:
        say("ERR", e.errno, e.strerror.replace(" ", "_"))
"#;

const UDP_SENDER: &str = r#"
import socket, sys
src, sport, dst, dport, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
s = socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, sport))
s.sendto(bytes.fromhex(payload), (dst, dport))
"#;

/// Sends one UDP datagram from `from` to `to` inside `ns` (python3); panics when sending fails.
/// The source port must be free: to send from a port a [`UdpEndpoint`] holds, use
/// [`UdpEndpoint::send_to`].
pub fn udp_send(ns: &Netns, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
    let output = udp_try_send(ns, from, to, payload);
    if !output.status.success() {
        panic!("in {}: sending UDP {from} -> {to} failed\n{}", ns.name(), describe_output(&output));
    }
}

/// Like [`udp_send`], returning the sender's output whatever happened.
pub fn udp_try_send(ns: &Netns, from: SocketAddr, to: SocketAddr, payload: &[u8]) -> Output {
    ns.exec([
        "python3".to_string(),
        "-c".to_string(),
        UDP_SENDER.to_string(),
        from.ip().to_string(),
        from.port().to_string(),
        to.ip().to_string(),
        to.port().to_string(),
        hex(payload),
    ])
}

/// A received datagram: (source, payload).
pub type Datagram = (SocketAddr, Vec<u8>);

/// A UDP socket bound inside a namespace (a small python3 process) that records every
/// datagram it receives and sends on request, from its own address and port. Dropping it
/// kills the process.
#[derive(Debug)]
pub struct UdpEndpoint {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    received: Arc<Mutex<Vec<Datagram>>>,
    replies: mpsc::Receiver<String>,
    bind: SocketAddr,
    netns: String,
}

impl UdpEndpoint {
    /// Binds `bind` in `ns`; returns once the socket is bound (panics after 10 s).
    pub fn start(ns: &Netns, bind: SocketAddr) -> UdpEndpoint {
        let mut child = ns
            .command([
                "python3".to_string(),
                "-c".to_string(),
                UDP_ENDPOINT.to_string(),
                bind.ip().to_string(),
                bind.port().to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3 UDP endpoint");
        let stdout = child.stdout.take().expect("endpoint stdout");
        let stdin = child.stdin.take();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (reply_tx, replies) = mpsc::channel();
        {
            let received = Arc::clone(&received);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let parts: Vec<&str> = line.split_whitespace().collect();
                    match parts[..] {
                        ["RX", ip, port, data] => {
                            let (Ok(ip), Ok(port)) = (ip.parse::<IpAddr>(), port.parse::<u16>()) else { continue };
                            let data = crate::util::unhex(data);
                            received.lock().unwrap().push((SocketAddr::new(ip, port), data));
                        }
                        _ => {
                            let _ = reply_tx.send(line);
                        }
                    }
                }
            });
        }
        let mut endpoint = UdpEndpoint { child, stdin, received, replies, bind, netns: ns.name().to_string() };
        match endpoint.replies.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line == "READY" => endpoint,
            other => {
                let _ = endpoint.child.kill();
                panic!("UDP endpoint on {bind} in {} did not start: {other:?}", ns.name());
            }
        }
    }

    /// Sends one datagram from this socket; `Err` carries the errno text (e.g. the blackhole
    /// route of [`Routing::OverlayPortOnly`] refuses with EINVAL).
    pub fn send_to(&mut self, to: SocketAddr, payload: &[u8]) -> Result<(), String> {
        use std::io::Write as _;
        let stdin = self.stdin.as_mut().expect("endpoint stdin");
        writeln!(stdin, "{} {} {}", to.ip(), to.port(), hex(payload))
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("UDP endpoint {} in {}: {e}", self.bind, self.netns));
        match self.replies.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line == "SENT" => Ok(()),
            Ok(line) => Err(line),
            Err(e) => panic!("UDP endpoint {} in {}: no answer to a send: {e}", self.bind, self.netns),
        }
    }

    /// Everything received so far: (source, payload).
    pub fn received(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until a datagram with this payload arrived; returns its source address.
    pub fn wait_for(&self, payload: &[u8], timeout: Duration) -> Option<SocketAddr> {
        wait_until(timeout, || self.received().into_iter().find(|(_, p)| p == payload).map(|(from, _)| from))
    }

    pub fn bind(&self) -> SocketAddr {
        self.bind
    }
}

impl Drop for UdpEndpoint {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST_SAS: &str = "\
peer: #2, ESTABLISHED, IKEv2, 718eae8caad4258f_i 161e21906d4c0972_r*
  local  '198.18.0.2' @ 198.18.0.2[4500]
  remote '198.18.0.1' @ 198.18.0.1[4500]
  AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519
  established 1s ago, rekeying in 14229s
  overlay: #1, reqid 1, DELETED, TUNNEL-in-UDP, ESP:AES_GCM_16-256
    installed 42s ago, rekeying in 3279s, expires in 3918s
    in  b1fc749c,   2345 bytes,    20 packets,    12s ago
    out 62bb05cb,      0 bytes,     0 packets
    local  198.18.0.2/32[udp/4790]
    remote 198.18.0.1/32[udp/4790]
  overlay: #2, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:CHACHA20_POLY1305
    installed 2s ago, rekeying in 3246s, expires in 3958s
    in  e0b74558,    268 bytes,     2 packets,     1s ago
    out b5f3c2e0,    134 bytes,     1 packets,     1s ago
    local  198.18.0.2/32[udp/4790]
    remote 198.18.0.1/32[udp/4790]
";

    #[test]
    fn parses_list_sas() {
        let sas = parse_list_sas(LIST_SAS);
        assert_eq!(sas.len(), 1);
        let ike = &sas[0];
        assert_eq!((ike.name.as_str(), ike.id, ike.state.as_str()), ("peer", 2, "ESTABLISHED"));
        assert_eq!(ike.proposal, "AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519");
        assert_eq!(ike.children.len(), 2);
        let old = &ike.children[0];
        assert_eq!((old.id, old.state.as_str(), old.spi_in, old.packets_in), (1, "DELETED", Some(0xb1fc749c), 20));
        let new = &ike.children[1];
        assert_eq!(new.name, "overlay");
        assert_eq!((new.state.as_str(), new.mode.as_str()), ("INSTALLED", "TUNNEL-in-UDP"));
        assert_eq!(new.proposal, "ESP:CHACHA20_POLY1305");
        assert_eq!((new.spi_in, new.spi_out), (Some(0xe0b74558), Some(0xb5f3c2e0)));
        assert_eq!((new.bytes_in, new.packets_in, new.bytes_out, new.packets_out), (268, 2, 134, 1));
        assert_eq!(new.local_ts, ["198.18.0.2/32[udp/4790]"]);
        assert_eq!(new.remote_ts, ["198.18.0.1/32[udp/4790]"]);
        assert!(parse_list_sas("").is_empty());
    }

    #[test]
    fn config_texts() {
        let conf = CharonConfig::new("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap(), b"\x01\xff")
            .cipher("chacha20poly1305")
            .child_rekey(Duration::from_secs(5));
        let swanctl = conf.swanctl_conf(Path::new("/tmp/x"));
        for line in [
            "proposals = chacha20poly1305-prfsha256-x25519",
            "esp_proposals = chacha20poly1305",
            "local_ts = 198.18.0.1/32[udp/4790]",
            "remote_ts = 198.18.0.2/32[udp/4790]",
            "encap = yes",
            "mode = tunnel",
            "start_action = none",
            "rekey_time = 5s",
            "life_time = 10s",
            "secret = 0x01ff",
            "id = 198.18.0.1",
        ] {
            assert!(swanctl.contains(line), "{line:?} missing:\n{swanctl}");
        }
        let main = conf.strongswan_conf(Path::new("/tmp/x"));
        assert!(main.contains("socket = unix:///tmp/x/charon.vici"), "{main}");
        assert!(main.contains("fwmark = 0x4790") && !main.contains("socket-default {"), "{main}");
        let stock = conf.routing(Routing::AllToPeer).strongswan_conf(Path::new("/tmp/x"));
        assert!(stock.contains("fwmark = !0x4500") && stock.contains("socket-default {"), "{stock}");
        let v6 = CharonConfig::new("2001:db8:18::1".parse().unwrap(), "2001:db8:18::2".parse().unwrap(), b"k");
        assert!(v6.swanctl_conf(Path::new("/tmp/x")).contains("remote_ts = 2001:db8:18::2/128[udp/4790]"));
        let keys = Ed25519Keys { seed: [1; 32], own_public: [2; 32], peer_public: [3; 32] };
        let signed = v6.clone().ed25519(keys).swanctl_conf(Path::new("/tmp/x"));
        for line in ["auth = pubkey", "pubkeys = /tmp/x/charon.pub.pem", "pubkeys = /tmp/x/peer.pub.pem"] {
            assert!(signed.contains(line), "{line:?} missing:\n{signed}");
        }
        assert!(!signed.contains("secret = "), "{signed}");
        assert_eq!(vxlan_mtu("198.18.0.1".parse().unwrap()), 1350);
    }
}
