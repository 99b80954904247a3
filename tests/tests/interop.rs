//! Interop of meshd's IKEv2 and ESP with strongSwan: node 0 (`n1`, 198.18.0.1) runs meshd,
//! node 1 (`n2`, 198.18.0.2) runs `charon` with kernel-libipsec and a kernel VXLAN device
//! (VNI 4242, port 4790, 10.244.0.2/24). The mesh file lists both nodes, `n2` with
//! `mode = "tunnel"` (kernel-libipsec does tunnel mode only); meshd runs only on `n1`.
//! See docs/strongswan.md, "meshd interop".
//!
//! Each test uses its own namespace prefix, so the tests of this file run in parallel.
//! Run: `cargo build --workspace && sudo -E cargo test -p meshd-lab --test interop`.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshd_lab::strongswan::{ChildSa, IkeSa};
use meshd_lab::util::{describe_output, random_bytes, send_signal, wait_until};
use meshd_lab::{
    require_root, Capture, Charon, CharonConfig, Ed25519Keys, Lab, MeshFile, MeshFileBuilder, Meshd, Netns,
    StartAction, VxlanDevice,
};
use serde_json::Value;

/// The IKE and ESP proposal names of one AEAD in `swanctl --list-sas`.
struct Swan {
    /// meshd's name (`ikectl`, mesh.toml).
    cipher: &'static str,
    ike: &'static str,
    esp: &'static str,
}

const AES: Swan =
    Swan { cipher: "aes256gcm16", ike: "AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519", esp: "ESP:AES_GCM_16-256" };
const CHACHA: Swan = Swan {
    cipher: "chacha20poly1305",
    ike: "CHACHA20_POLY1305/PRF_HMAC_SHA2_256/CURVE_25519",
    esp: "ESP:CHACHA20_POLY1305",
};

/// A capture of IKE, ESP-in-UDP and (should it ever appear) plaintext VXLAN on the lab's
/// switch. When the test panics, the IKE exchanges are printed as tshark dissects them
/// (headers and notifies; the encrypted payloads stay unreadable).
struct Wire {
    capture: Capture,
}

impl Wire {
    fn start(lab: &Lab) -> Wire {
        Wire {
            capture: Capture::start_with_filter(
                lab.switch(),
                "br0",
                Some("udp port 500 or udp port 4500 or udp port 4790"),
            ),
        }
    }

    /// One line per IKE message: time, addresses and ports, exchange, flags, SPIs, message ID,
    /// notify types.
    fn ike_summary(&mut self) -> String {
        self.capture.stop();
        let output = Command::new("tshark")
            .args(["-n", "-r"])
            .arg(self.capture.file())
            .args(["-Y", "isakmp", "-T", "fields", "-E", "separator= ", "-E", "occurrence=a", "-E", "aggregator=,"])
            .args(IKE_FIELDS.iter().flat_map(|f| ["-e", f]))
            .stdin(Stdio::null())
            .output();
        match output {
            Ok(o) => format!(
                "{}\n{}{}",
                IKE_FIELDS.join(" "),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("(tshark: {e})"),
        }
    }

    /// The ESP SPIs seen on the wire (as `0x…`).
    fn esp_spis(&mut self) -> BTreeSet<String> {
        self.capture
            .read(&["-Y", "esp", "-T", "fields", "-e", "esp.spi"])
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    fn plaintext_vxlan(&mut self) -> String {
        self.capture.read(&["-Y", "udp.port == 4790 || vxlan"])
    }

    /// Plaintext VXLAN sent by meshd's node (n1).
    fn plaintext_vxlan_from_meshd(&mut self) -> String {
        self.capture.read(&["-Y", "(udp.port == 4790 || vxlan) && ip.src == 198.18.0.1"])
    }
}

const IKE_FIELDS: &[&str] = &[
    "frame.time_relative",
    "ip.src",
    "udp.srcport",
    "ip.dst",
    "udp.dstport",
    "isakmp.exchangetype",
    "isakmp.flags",
    "isakmp.ispi",
    "isakmp.rspi",
    "isakmp.messageid",
    "isakmp.notify.msgtype",
];

impl Drop for Wire {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== IKE on the wire (br0) =====\n{}===== end of IKE on the wire =====", self.ike_summary());
        }
    }
}

/// The lab of one interop test. Field order is drop order: the capture (printed on panic),
/// charon and meshd stop before the namespaces go.
struct Interop {
    wire: Option<Wire>,
    charon: Option<Charon>,
    meshd: Option<Meshd>,
    mesh: MeshFile,
    lab: Lab,
}

/// Who sends the first IKE_SA_INIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Initiator {
    /// meshd has the lower address and initiates at start; charon waits (start_action none).
    Meshd,
    /// charon initiates (`swanctl --initiate`) after meshd started. meshd's own IKE_SA_INIT
    /// requests (it has the lower address, so it initiates at once too) are dropped on n1's way
    /// out by an nftables rule, so that the IKE SA is the one charon initiated.
    Charon,
}

impl Interop {
    /// Builds the lab, writes the mesh file (`mesh` adjusts it; `n2` always has
    /// `mode = "tunnel"`), starts charon on n2 (`charon` adjusts its config; it always gets the
    /// mesh PSK unless `psk` is given) with its VXLAN device, starts meshd on n1 and lets
    /// `initiator` initiate. Does not wait for the SAs.
    fn start(
        prefix: &str,
        mesh: impl FnOnce(MeshFileBuilder) -> MeshFileBuilder,
        charon: impl FnOnce(CharonConfig) -> CharonConfig,
        psk: Option<Vec<u8>>,
        initiator: Initiator,
    ) -> Interop {
        require_root();
        let lab = Lab::new(prefix, 2);
        let mesh = mesh(MeshFile::builder(&lab).ike().node_mode(1, "tunnel")).write();
        let wire = Wire::start(&lab);
        let psk = psk.unwrap_or_else(|| mesh.psk());
        let mut conf = charon(CharonConfig::new(lab.addr(1), lab.addr(0), &psk));
        if let (Some(own), Some(peer)) = (mesh.public_keys(1).first(), mesh.public_keys(0).first()) {
            // A mesh with keys: charon is n2, with n2's key (auth = pubkey, RFC 8420).
            let public = |text: &str| *mesh_config::PublicKey::from_base64(text).expect("a public key").as_bytes();
            let seed = *mesh_config::PrivateKeySeed::read(&mesh.key_file(1)).expect("n2's key").as_bytes();
            conf = conf.ed25519(Ed25519Keys { seed, own_public: public(own), peer_public: public(peer) });
        }
        let charon = Charon::start(lab.node(1), conf);
        VxlanDevice::new(lab.addr(1), lab.addr(0)).address(&format!("{}/24", lab.overlay_addr(1))).create(lab.node(1));
        if initiator == Initiator::Charon {
            hold_back_ike_sa_init(lab.node(0));
        }
        let mut interop = Interop { wire: Some(wire), charon: Some(charon), meshd: None, mesh, lab };
        let key = interop.mesh.key_args(0);
        let key: Vec<&str> = key.iter().map(String::as_str).collect();
        interop.meshd = Some(Meshd::start_with(interop.lab.node(0), interop.mesh.path(), "n1", &key));
        if initiator == Initiator::Charon {
            // Not `Charon::initiate`: that panics when it fails, and some tests expect that.
            // The others notice in `wait_established` (which prints charon's log).
            let child = interop.charon().config().child.clone();
            let out = interop.charon().swanctl(["--initiate", "--child", &child, "--timeout", "15"]);
            eprintln!("swanctl --initiate: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        interop
    }

    fn charon(&self) -> &Charon {
        self.charon.as_ref().expect("charon runs")
    }

    fn meshd(&self) -> &Meshd {
        self.meshd.as_ref().expect("meshd runs")
    }

    fn wire(&mut self) -> &mut Wire {
        self.wire.as_mut().expect("capture")
    }

    fn sa_list(&self) -> Value {
        self.meshd().ikectl_json(&["sa", "list"])
    }

    /// Waits until both sides show the same IKE SA and Child SA pair, established and
    /// installed; returns them (charon's view, meshd's `sa list`).
    fn wait_established(&self, timeout: Duration) -> Established {
        let deadline = Instant::now() + timeout;
        let (ike, child) = self.charon().wait_installed(timeout);
        let found = wait_until(deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1)), || {
            let list = self.sa_list();
            let now = current_charon_sas(self.charon())?;
            let established = Established::match_meshd(&list, now)?;
            Some(established)
        });
        found.unwrap_or_else(|| {
            panic!(
                "meshd and charon do not show the same SAs within {timeout:?}\n--- charon ---\nIKE {ike:?}\nchild {child:?}\n{}\n--- meshd sa list ---\n{:#}",
                self.charon().list_sas(),
                self.sa_list()
            )
        })
    }

    /// `ikectl --json peers`: the entry of `n2`.
    fn peer_n2(&self) -> Value {
        let peers = self.meshd().ikectl_json(&["peers"]);
        peers
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "n2").cloned())
            .unwrap_or_else(|| panic!("no peer n2 in `ikectl --json peers`: {peers:#}"))
    }

    /// Overlay pings both ways (kernel VXLAN on n2, meshd's TAP on n1).
    fn ping_both_ways(&self, what: &str) {
        for (from, to) in [(0, 1), (1, 0)] {
            let addr = self.lab.overlay_addr(to).to_string();
            let out = self.lab.node(from).ping(&addr, 3);
            if !out.status.success() {
                panic!(
                    "{what}: overlay ping {addr} from n{} failed\n{}\n--- meshd drops ---\n{:#}\n--- meshd sa list ---\n{:#}\n--- charon ---\n{}",
                    from + 1,
                    describe_output(&out),
                    self.meshd().ikectl_json(&["drops"]),
                    self.sa_list(),
                    self.charon().list_sas()
                );
            }
        }
    }

    /// Nothing but ESP-in-UDP carried the overlay, on the SPIs given.
    fn check_wire(&mut self, spis: &[String]) {
        let plaintext = self.wire().plaintext_vxlan();
        assert_eq!(plaintext.trim(), "", "plaintext VXLAN on the underlay:\n{plaintext}");
        let seen = self.wire().esp_spis();
        for spi in spis {
            assert!(seen.contains(spi), "no ESP with SPI {spi} on the wire; seen: {seen:?}");
        }
    }
}

/// Drops n1's outgoing IKE_SA_INIT requests (UDP to port 500, exchange type 34, Response flag
/// clear, responder SPI 0) while letting its responses out. The rule lives in n1's network
/// namespace and goes with it.
fn hold_back_ike_sa_init(ns: &Netns) {
    ns.run_ok(["nft", "add", "table", "inet", "interop"]);
    ns.run_ok(["nft", "add", "chain", "inet", "interop", "out", "{ type filter hook output priority 0; }"]);
    // Offsets from the UDP header (@th): UDP 8 bytes, then IKE: SPIi 0..8, SPIr 8..16,
    // next payload 16, version 17, exchange type 18, flags 19.
    ns.run_ok([
        "nft",
        "add",
        "rule",
        "inet",
        "interop",
        "out",
        "udp",
        "dport",
        "500",
        "@th,208,8",
        "34",
        "@th,216,8",
        "&",
        "0x20",
        "==",
        "0",
        "@th,128,64",
        "0",
        "counter",
        "drop",
    ]);
}

/// Packets the rule of [`hold_back_ike_sa_init`] dropped.
fn held_back(ns: &Netns) -> u64 {
    ns.nft_counted("inet interop")
}

/// charon's current IKE SA (ESTABLISHED) and its INSTALLED child, with the IKE SPIs from the
/// `swanctl --list-sas` text.
#[derive(Debug, Clone)]
struct CharonSas {
    ike: IkeSa,
    child: ChildSa,
    /// (initiator SPI, responder SPI) as `0x` + 16 hex digits.
    ike_spis: (String, String),
    /// Whether charon is the IKE SA's original initiator.
    charon_initiated: bool,
}

/// The newest ESTABLISHED IKE SA with an INSTALLED child (the newest child).
fn current_charon_sas(charon: &Charon) -> Option<CharonSas> {
    let text = charon.list_sas();
    let sas = meshd_lab::strongswan::parse_list_sas(&text);
    let ike = sas.iter().filter(|s| s.state == "ESTABLISHED").max_by_key(|s| s.id)?.clone();
    let child = ike.children.iter().filter(|c| c.state == "INSTALLED").max_by_key(|c| c.id)?.clone();
    // "peer: #2, ESTABLISHED, IKEv2, 718eae8caad4258f_i 161e21906d4c0972_r*"; `*` marks ours.
    let head = text.lines().find(|l| l.starts_with(&format!("{}: #{},", ike.name, ike.id)))?;
    let mut spi_i = None;
    let mut spi_r = None;
    let mut charon_initiated = false;
    for word in head.split_whitespace() {
        let word = word.trim_end_matches(',');
        if let Some(spi) = word.strip_suffix("_i*").or(word.strip_suffix("_i")) {
            charon_initiated = word.ends_with('*');
            spi_i = Some(format!("0x{spi}"));
        } else if let Some(spi) = word.strip_suffix("_r*").or(word.strip_suffix("_r")) {
            spi_r = Some(format!("0x{spi}"));
        }
    }
    Some(CharonSas { ike, child, ike_spis: (spi_i?, spi_r?), charon_initiated })
}

fn spi_text(spi: Option<u32>) -> String {
    format!("0x{:08x}", spi.expect("child SA has an SPI"))
}

/// The SAs both sides agree on.
#[derive(Debug, Clone)]
struct Established {
    charon: CharonSas,
    /// meshd's IKE SA with n2 (from `sa list`).
    ike: Value,
    /// meshd's outbound Child SA (charon's inbound).
    out_sa: Value,
    /// meshd's inbound Child SA (charon's outbound).
    in_sa: Value,
}

impl Established {
    /// meshd's side of charon's current SAs, if meshd shows them: an established IKE SA with
    /// the same SPIs whose Child SA is (charon's out, charon's in), and both Child SAs.
    fn match_meshd(list: &Value, charon: CharonSas) -> Option<Established> {
        let (spi_i, spi_r) = &charon.ike_spis;
        let ike = list["ike_sas"].as_array()?.iter().find(|sa| {
            sa["peer"] == "n2"
                && sa["state"] == "established"
                && sa["initiator_spi"].as_str() == Some(spi_i.as_str())
                && sa["responder_spi"].as_str() == Some(spi_r.as_str())
        })?;
        let (charon_in, charon_out) = (spi_text(charon.child.spi_in), spi_text(charon.child.spi_out));
        let pair = Value::Array(vec![Value::from(charon_out.clone()), Value::from(charon_in.clone())]);
        if !ike["child_spis"].as_array()?.contains(&pair) {
            return None;
        }
        let child = |direction: &str, spi: &str| {
            list["child_sas"]
                .as_array()?
                .iter()
                .find(|sa| sa["peer"] == "n2" && sa["direction"] == direction && sa["spi"].as_str() == Some(spi))
                .cloned()
        };
        let out_sa = child("out", &charon_in)?;
        let in_sa = child("in", &charon_out)?;
        // meshd sends on exactly one outbound SA per peer.
        let outbound = list["child_sas"].as_array()?.iter().filter(|sa| sa["direction"] == "out").count();
        if outbound != 1 {
            return None;
        }
        Some(Established { charon, ike: ike.clone(), out_sa, in_sa })
    }

    /// Checks cipher, mode, ESN, encapsulation and origin on both sides.
    fn check(&self, swan: &Swan, charon_initiated: bool) {
        let c = &self.charon;
        let ctx = format!("charon {c:#?}\nmeshd IKE {:#}\nout {:#}\nin {:#}", self.ike, self.out_sa, self.in_sa);
        assert_eq!(c.ike.proposal, swan.ike, "charon's IKE proposal\n{ctx}");
        assert_eq!(c.child.proposal, swan.esp, "charon's ESP proposal (no /ESN)\n{ctx}");
        assert_eq!(c.child.mode, "TUNNEL-in-UDP", "{ctx}");
        assert_eq!(c.child.local_ts, ["198.18.0.2/32[udp/4790]"], "{ctx}");
        assert_eq!(c.child.remote_ts, ["198.18.0.1/32[udp/4790]"], "{ctx}");
        assert_eq!(c.charon_initiated, charon_initiated, "who initiated, as charon sees it\n{ctx}");
        assert_eq!(self.ike["we_initiated"], !charon_initiated, "who initiated, as meshd sees it\n{ctx}");
        assert_eq!(self.ike["cipher"], swan.cipher, "{ctx}");
        assert_eq!(self.ike["udp_encap"], true, "{ctx}");
        assert_eq!(self.ike["remote"], "198.18.0.2:4500", "{ctx}");
        for sa in [&self.out_sa, &self.in_sa] {
            assert_eq!(sa["cipher"], swan.cipher, "{ctx}");
            assert_eq!(sa["mode"], "tunnel", "{ctx}");
            assert_eq!(sa["esn"], false, "{ctx}");
            assert_eq!(sa["encap"], "udp", "{ctx}");
            assert_eq!(sa["origin"], "ike", "{ctx}");
        }
    }

    /// The Child SA SPIs on the wire: meshd's outbound and charon's outbound.
    fn esp_spis(&self) -> Vec<String> {
        vec![spi_text(self.charon.child.spi_in), spi_text(self.charon.child.spi_out)]
    }
}

/// `ping -i 0.05` in the background; [`Pinger::finish`] stops it with SIGINT (ping then
/// prints its statistics) and returns (sent, received).
struct Pinger {
    child: Option<Child>,
    started: Instant,
}

impl Pinger {
    fn start(ns: &Netns, addr: &str) -> Pinger {
        let child = ns
            .command(["ping", "-n", "-i", "0.05", "-W", "1", addr])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ping");
        Pinger { child: Some(child), started: Instant::now() }
    }

    /// Stops ping (after letting the last replies arrive) and returns (sent, received, the
    /// sequence numbers that got no reply).
    fn finish(mut self) -> (u32, u32, Vec<u32>) {
        let child = self.child.take().expect("ping runs");
        std::thread::sleep(Duration::from_millis(200));
        // `ip netns exec` execs ping in place, so this pid is ping's.
        send_signal(child.id(), libc::SIGINT);
        let out = child.wait_with_output().expect("wait for ping");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let stats = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("ping printed no statistics:\n{text}\n{}", String::from_utf8_lossy(&out.stderr)));
        let words: Vec<&str> = stats.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let num = |word: &str| -> u32 {
            words.windows(2).find(|w| w[1] == word).and_then(|w| w[0].parse().ok()).unwrap_or(0)
        };
        let (sent, received) = (num("packets"), num("received"));
        let answered: BTreeSet<u32> = text
            .lines()
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("icmp_seq=")))
            .filter_map(|s| s.parse().ok())
            .collect();
        // The last request may still be in flight when SIGINT comes: not counted as lost.
        let missing: Vec<u32> = (1..sent).filter(|seq| !answered.contains(seq)).collect();
        eprintln!(
            "ping over {:.1} s: {received}/{sent} received, unanswered sequence numbers: {missing:?}",
            self.started.elapsed().as_secs_f64()
        );
        (sent, received, missing)
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Case 1: strongSwan initiates, AES-GCM: IKE SA and Child SA pair up on both sides, tunnel mode,
/// no ESN, SPIs match crosswise; overlay pings both ways; only ESP-in-UDP on the wire. meshd's
/// own (held back) IKE_SA_INIT ends without a word when charon's IKE SA is up: no retransmission
/// after that, no "no answer" failure when its ~15 s would have run out, the SA charon made kept.
#[test]
fn strongswan_initiates_aes_gcm() {
    let mut t = Interop::start("iops", |m| m, |c| c.cipher(AES.cipher), None, Initiator::Charon);
    let started = Instant::now();
    let est = t.wait_established(Duration::from_secs(15));
    est.check(&AES, true);
    // meshd initiates too (it has the lower address); its IKE_SA_INIT (a retransmission, see
    // the report on the first one) is held back by the nft rule.
    let tried = wait_until(Duration::from_secs(5), || (held_back(t.lab.node(0)) >= 1).then_some(()));
    assert!(tried.is_some(), "meshd did not try to initiate (the nft rule dropped nothing)");
    let held_when_established = held_back(t.lab.node(0));
    let peer = t.peer_n2();
    assert_eq!(peer["keying"], "ike: established", "{peer:#}");
    assert_eq!(peer["mode"], "tunnel", "{peer:#}");
    t.ping_both_ways("after charon initiated");

    // meshd's own attempt (it has the lower address, and sent it before `started`) would have
    // given up 15.5 s after its first request (0.5 + 1 + 2 + 4 + 8 s): past that, it must have
    // ended quietly, and the SA charon made must be the same.
    std::thread::sleep(Duration::from_secs(17).saturating_sub(started.elapsed()));
    let log = t.meshd().log();
    assert!(!log.contains("giving up on this IKE SA") && !log.contains("no answer"), "a false failure:\n{log}");
    assert_eq!(
        held_back(t.lab.node(0)),
        held_when_established,
        "meshd retransmitted its IKE_SA_INIT after the SA was up"
    );
    let after = t.wait_established(Duration::from_secs(5));
    assert_eq!(after.charon.ike_spis, est.charon.ike_spis, "the IKE SA changed when meshd's own attempt ended");
    assert_eq!(after.esp_spis(), est.esp_spis(), "the Child SA changed when meshd's own attempt ended");
    let peer = t.peer_n2();
    assert_eq!(peer["keying"], "ike: established", "{peer:#}");
    t.ping_both_ways("after meshd's own attempt ended");
    t.check_wire(&est.esp_spis());
    eprintln!("strongswan_initiates_aes_gcm: {:.1} s", started.elapsed().as_secs_f64());
}

/// Case 2: meshd initiates (charon waits), ChaCha20-Poly1305 only on both sides.
#[test]
fn meshd_initiates_chacha20poly1305() {
    let started = Instant::now();
    let mut t = Interop::start(
        "iopm",
        |m| m.ike_proposals(&["chacha20poly1305-prfsha256-x25519"]),
        |c| c.cipher(CHACHA.cipher),
        None,
        Initiator::Meshd,
    );
    let est = t.wait_established(Duration::from_secs(15));
    est.check(&CHACHA, false);
    let peer = t.peer_n2();
    assert_eq!(peer["keying"], "ike: established", "{peer:#}");
    t.ping_both_ways("meshd initiated, ChaCha20-Poly1305");
    t.check_wire(&est.esp_spis());
    eprintln!("meshd_initiates_chacha20poly1305: {:.1} s", started.elapsed().as_secs_f64());
}

/// Waits until charon's current SAs differ from `before` in `what` (child or IKE) and meshd
/// shows the same new SAs.
fn wait_replaced(t: &Interop, before: &Established, ike_too: bool, timeout: Duration, what: &str) -> Established {
    let found = wait_until(timeout, || {
        let now = current_charon_sas(t.charon())?;
        if now.child.spi_in == before.charon.child.spi_in || (ike_too && now.ike_spis == before.charon.ike_spis) {
            return None;
        }
        Established::match_meshd(&t.sa_list(), now)
    });
    found.unwrap_or_else(|| {
        panic!(
            "{what}: no new SAs shown by both sides within {timeout:?}\n--- charon ---\n{}\n--- meshd sa list ---\n{:#}",
            t.charon().list_sas(),
            t.sa_list()
        )
    })
}

/// After a rekey, meshd's old inbound SAs go after their grace period (3 s) and the old
/// outbound SA is gone at once: only the current pair is left.
fn wait_only(t: &Interop, est: &Established, timeout: Duration) {
    let want: BTreeSet<(String, String)> = [
        ("out".to_string(), spi_text(est.charon.child.spi_in)),
        ("in".to_string(), spi_text(est.charon.child.spi_out)),
    ]
    .into();
    let got = || -> BTreeSet<(String, String)> {
        t.sa_list()["child_sas"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|sa| {
                (sa["direction"].as_str().unwrap_or("").to_string(), sa["spi"].as_str().unwrap_or("").to_string())
            })
            .collect()
    };
    if wait_until(timeout, || (got() == want).then_some(())).is_none() {
        panic!("meshd still has other Child SAs than {want:?}: {:#}", t.sa_list());
    }
}

/// Case 3: strongSwan rekeys the Child SA, then the IKE SA, under `ping -i 0.05` from n1: no loss
/// (or at most 2, see the assertion), and `ikectl` shows the new SPIs.
#[test]
fn strongswan_rekeys_child_and_ike_without_loss() {
    let started = Instant::now();
    let t = Interop::start("iopr", |m| m, |c| c, None, Initiator::Meshd);
    let first = t.wait_established(Duration::from_secs(15));
    first.check(&AES, false);
    t.ping_both_ways("before the rekeys");

    let pinger = Pinger::start(t.lab.node(0), &t.lab.overlay_addr(1).to_string());
    std::thread::sleep(Duration::from_secs(2));
    t.charon().rekey_child();
    let second = wait_replaced(&t, &first, false, Duration::from_secs(10), "charon's Child SA rekey");
    assert_eq!(second.charon.ike_spis, first.charon.ike_spis, "a Child SA rekey keeps the IKE SA");
    second.check(&AES, false);
    std::thread::sleep(Duration::from_secs(4));
    wait_only(&t, &second, Duration::from_secs(5));

    t.charon().rekey_ike();
    let third = wait_replaced_ike(&t, &second, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(4));
    let (sent, received, missing) = pinger.finish();

    // After an IKE rekey charon is the initiator of the new IKE SA.
    third.check(&AES, true);
    assert_eq!(third.esp_spis(), second.esp_spis(), "an IKE SA rekey keeps the Child SA");
    wait_only(&t, &third, Duration::from_secs(5));
    let ike_sas = t.sa_list()["ike_sas"].as_array().cloned().unwrap_or_default();
    assert_eq!(ike_sas.len(), 1, "the old IKE SA is gone from meshd: {ike_sas:#?}");

    t.ping_both_ways("after the rekeys");
    let out = t.sa_list()["child_sas"].as_array().cloned().unwrap_or_default();
    assert!(
        out.iter().all(|sa| sa["packets"].as_u64().unwrap_or(0) >= 1),
        "the current Child SAs carry the pings: {out:#?}"
    );
    eprintln!(
        "strongswan rekeys: {received}/{sent} received, lost {missing:?}; child {} -> {}, IKE {:?} -> {:?}; {:.1} s",
        first.esp_spis().join("/"),
        second.esp_spis().join("/"),
        first.charon.ike_spis,
        third.charon.ike_spis,
        started.elapsed().as_secs_f64()
    );
    assert!(sent >= 150, "ping ran through both rekeys ({sent} sent)");
    assert!(missing.is_empty(), "echo requests lost across charon's Child and IKE SA rekeys: {missing:?} of {sent}");
}

/// Like [`wait_replaced`] for an IKE SA rekey: new IKE SPIs, the same Child SA.
fn wait_replaced_ike(t: &Interop, before: &Established, timeout: Duration) -> Established {
    let found = wait_until(timeout, || {
        let now = current_charon_sas(t.charon())?;
        if now.ike_spis == before.charon.ike_spis {
            return None;
        }
        Established::match_meshd(&t.sa_list(), now)
    });
    found.unwrap_or_else(|| {
        panic!(
            "IKE SA rekey: no new IKE SA shown by both sides within {timeout:?}\n--- charon ---\n{}\n--- meshd sa list ---\n{:#}",
            t.charon().list_sas(),
            t.sa_list()
        )
    })
}

/// Case 4: meshd rekeys by itself (`child_lifetime = "30s"`, `ike_lifetime = "60s"`: as the
/// initiator it rekeys at 70-80 % of each) under `ping -i 0.05` from n2: charon sees new
/// SPIs, no echo request is lost.
#[test]
fn meshd_rekeys_child_and_ike_without_loss() {
    let started = Instant::now();
    let t = Interop::start("iopk", |m| m.child_lifetime("30s").ike_lifetime("60s"), |c| c, None, Initiator::Meshd);
    let first = t.wait_established(Duration::from_secs(15));
    let established_at = Instant::now();
    first.check(&AES, false);
    t.ping_both_ways("before the rekeys");

    let pinger = Pinger::start(t.lab.node(1), &t.lab.overlay_addr(0).to_string());
    // Child SA rekey at 21..24 s.
    let second = wait_replaced(&t, &first, false, Duration::from_secs(30), "meshd's Child SA rekey");
    let child_rekey_after = established_at.elapsed();
    second.check(&AES, false);
    assert_eq!(second.charon.ike_spis, first.charon.ike_spis, "a Child SA rekey keeps the IKE SA");
    // IKE SA rekey at 42..48 s (the second Child SA rekey is due about then too).
    let third = wait_replaced_ike(&t, &second, Duration::from_secs(55).saturating_sub(established_at.elapsed()));
    let ike_rekey_after = established_at.elapsed();
    std::thread::sleep(Duration::from_secs(4));
    let (sent, received, missing) = pinger.finish();
    let now = t.wait_established(Duration::from_secs(5));
    now.check(&AES, false);
    assert_eq!(now.charon.ike_spis, third.charon.ike_spis);
    wait_only(&t, &now, Duration::from_secs(5));
    let ike_sas = t.sa_list()["ike_sas"].as_array().cloned().unwrap_or_default();
    assert_eq!(ike_sas.len(), 1, "the old IKE SA is gone from meshd: {ike_sas:#?}");
    let charon_sas = t.charon().sas();
    assert_eq!(charon_sas.len(), 1, "the old IKE SA is gone from charon:\n{}", t.charon().list_sas());
    t.ping_both_ways("after meshd's rekeys");
    let log = t.charon().log();
    assert!(log.contains("CREATE_CHILD_SA request"), "charon saw meshd's CREATE_CHILD_SA:\n{log}");
    eprintln!(
        "meshd rekeys: child after {:.1} s, IKE after {:.1} s; {received}/{sent} received, lost {missing:?}; \
         child {} -> {} -> {}, IKE {:?} -> {:?}; {:.1} s",
        child_rekey_after.as_secs_f64(),
        ike_rekey_after.as_secs_f64(),
        first.esp_spis().join("/"),
        second.esp_spis().join("/"),
        now.esp_spis().join("/"),
        first.charon.ike_spis,
        third.charon.ike_spis,
        started.elapsed().as_secs_f64()
    );
    assert!(sent >= 500, "ping ran through both rekeys ({sent} sent)");
    assert!(missing.is_empty(), "echo requests lost across meshd's Child and IKE SA rekeys: {missing:?} of {sent}");
}

/// Case 4b: Ed25519 public keys (RFC 7427 method 14, RFC 8420) instead of the PSK, both ways:
/// charon initiates, then (a new pair) meshd initiates and charon rekeys the Child and the IKE SA.
/// meshd announces Ed25519 (SIGNATURE_HASH_ALGORITHMS with Identity) in IKE_SA_INIT, charon's log
/// says meshd's ED25519 signature verified, and meshd's `sa list` that charon signed with n2's key.
#[test]
fn ed25519_public_keys_both_ways_with_rekeys() {
    for (prefix, initiator) in [("ioedc", Initiator::Charon), ("ioedm", Initiator::Meshd)] {
        let mut t = Interop::start(prefix, |m| m.keys(), |c| c.log_ike_keys(), None, initiator);
        assert!(!t.mesh.text().contains("psk_file"), "{}", t.mesh.text());
        let first = t.wait_established(Duration::from_secs(15));
        first.check(&AES, initiator == Initiator::Charon);
        let n2_key = t.mesh.public_keys(1)[0][..12].to_string();
        assert_eq!(
            (first.ike["peer_auth"].as_str(), first.ike["peer_key"].as_str()),
            (Some("ed25519"), Some(n2_key.as_str()))
        );
        let log = t.charon().log();
        assert!(
            log.contains("authentication of '198.18.0.1' with ED25519 successful"),
            "charon verified meshd:\n{log}"
        );
        assert!(log.contains("authentication of '198.18.0.2' (myself) with ED25519 successful"), "{log}");
        t.ping_both_ways("Ed25519");
        if initiator == Initiator::Meshd {
            t.charon().rekey_child();
            let second = wait_replaced(&t, &first, false, Duration::from_secs(10), "charon's Child SA rekey");
            t.charon().rekey_ike();
            let third = wait_replaced_ike(&t, &second, Duration::from_secs(10));
            assert_eq!(
                third.ike["peer_auth"], "ed25519",
                "an IKE SA rekey keeps how the peer authenticated: {:#}",
                third.ike
            );
            t.ping_both_ways("Ed25519, after charon's rekeys");
        }
        let summary = t.wire().ike_summary();
        assert!(summary.contains("16431"), "SIGNATURE_HASH_ALGORITHMS in IKE_SA_INIT:\n{summary}");
        // tshark decrypts the first IKE_AUTH with charon's keys (byte fields of the UAT are bare
        // hex, the others quoted): both AUTH payloads are method
        // 14 with the Ed25519 AlgorithmIdentifier, and meshd announced Identity (5).
        let (sk_ei, sk_er) = t.charon().first_ike_keys().unwrap_or_else(|| panic!("no keys in charon's log"));
        let spi = |key: &str| first.ike[key].as_str().unwrap_or_default().trim_start_matches("0x").to_string();
        let uat = format!(
            "uat:ikev2_decryption_table:{},{},{sk_ei},{sk_er},\"AES-GCM-256 with 16 octet ICV [RFC5282]\",,,\"NONE [RFC4306]\"",
            spi("initiator_spi"),
            spi("responder_spi")
        );
        let auth = t.wire().capture.read(&[
            "-o",
            &uat,
            "-Y",
            "isakmp.exchangetype == 35",
            "-T",
            "fields",
            "-e",
            "isakmp.auth.method",
            "-e",
            "isakmp.auth.data.sig.asn1.data",
        ]);
        let methods: Vec<&str> = auth.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            methods,
            ["14\t300506032b6570", "14\t300506032b6570"],
            "the IKE_AUTH exchange as tshark decrypts it:\n{auth}"
        );
        let hashes = t.wire().capture.read(&[
            "-Y",
            "isakmp.exchangetype == 34 && ip.src == 198.18.0.1",
            "-T",
            "fields",
            "-e",
            "isakmp.notify.data.signature_hash_algorithms",
        ]);
        assert!(hashes.contains('5'), "meshd announces Identity: {hashes}");
        t.check_wire(&first.esp_spis());
    }
}

/// Case 5: charon has another PSK: meshd initiates, charon refuses its AUTH, and `ikectl peers`
/// says AUTHENTICATION_FAILED.
#[test]
fn wrong_psk_on_strongswan_is_reported() {
    let started = Instant::now();
    let t = Interop::start("iopw", |m| m, |c| c, Some(random_bytes(32)), Initiator::Meshd);
    let keying = wait_until(Duration::from_secs(15), || {
        let keying = t.peer_n2()["keying"].as_str().unwrap_or("").to_string();
        keying.contains("AUTHENTICATION_FAILED").then_some(keying)
    });
    let keying = keying.unwrap_or_else(|| {
        panic!("meshd's peers do not say AUTHENTICATION_FAILED for n2: {:#}\n{}", t.peer_n2(), t.meshd().log())
    });
    eprintln!("keying: {keying}");
    assert!(keying.contains("psk"), "the advice names the psk file: {keying}");
    assert!(t.charon().sas().iter().all(|s| s.state != "ESTABLISHED"), "{}", t.charon().list_sas());
    let sas = t.sa_list();
    assert!(sas["child_sas"].as_array().is_some_and(|c| c.is_empty()), "{sas:#}");
    assert!(
        t.charon().log().contains("MAC mismatched") || t.charon().log().contains("authentication of"),
        "{}",
        t.charon().log()
    );
    let out = t.lab.node(0).ping(&t.lab.overlay_addr(1).to_string(), 1);
    assert!(!out.status.success(), "overlay ping works without SAs");
    eprintln!("wrong_psk_on_strongswan_is_reported: {:.1} s", started.elapsed().as_secs_f64());
}

/// 5b. charon initiates with another PSK: meshd cannot verify its AUTH, answers
/// AUTHENTICATION_FAILED (charon logs it) and says so in `ikectl peers`.
#[test]
fn wrong_psk_strongswan_initiating_is_refused() {
    let started = Instant::now();
    let t = Interop::start("iopv", |m| m, |c| c, Some(random_bytes(32)), Initiator::Charon);
    let keying = wait_until(Duration::from_secs(15), || {
        let keying = t.peer_n2()["keying"].as_str().unwrap_or("").to_string();
        keying.contains("AUTHENTICATION_FAILED").then_some(keying)
    });
    let keying = keying.unwrap_or_else(|| {
        panic!("meshd's peers do not say AUTHENTICATION_FAILED for n2: {:#}\n{}", t.peer_n2(), t.meshd().log())
    });
    eprintln!("keying: {keying}");
    let log = t.charon().log();
    assert!(log.contains("received AUTHENTICATION_FAILED notify error"), "charon was told:\n{log}");
    let sas = t.sa_list();
    assert!(sas["child_sas"].as_array().is_some_and(|c| c.is_empty()), "{sas:#}");
    eprintln!("wrong_psk_strongswan_initiating_is_refused: {:.1} s", started.elapsed().as_secs_f64());
}

/// `ikectl sa flush --peer n2` deletes the SAs (charon is told) and renegotiates with charon;
/// the overlay works again on new SPIs.
#[test]
fn flush_renegotiates_with_strongswan() {
    let started = Instant::now();
    let mut t = Interop::start("iopf", |m| m, |c| c, None, Initiator::Meshd);
    let first = t.wait_established(Duration::from_secs(15));
    t.ping_both_ways("before the flush");
    let report = t.meshd().ikectl_json(&["sa", "flush", "--peer", "n2"]);
    eprintln!("flush: {report}");
    let removed: BTreeSet<String> = report["removed"]
        .as_array()
        .map(|r| r.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let expected: BTreeSet<String> = first.esp_spis().into_iter().collect();
    assert_eq!(removed, expected, "the flush removed the Child SA pair: {report:#}");
    let second = wait_until(Duration::from_secs(15), || {
        let now = current_charon_sas(t.charon())?;
        if now.ike_spis == first.charon.ike_spis {
            return None;
        }
        Established::match_meshd(&t.sa_list(), now)
    })
    .unwrap_or_else(|| panic!("no new SAs after the flush:\n{}\n{:#}", t.charon().list_sas(), t.sa_list()));
    second.check(&AES, false);
    assert!(second.esp_spis().iter().all(|spi| !expected.contains(spi)), "new SPIs after the flush");
    let log = t.charon().log();
    assert!(log.contains("received DELETE for IKE_SA"), "charon got the DELETE:\n{log}");
    wait_only(&t, &second, Duration::from_secs(5));
    assert_eq!(t.charon().sas().len(), 1, "one IKE SA on charon:\n{}", t.charon().list_sas());
    t.ping_both_ways("after the flush");
    t.check_wire(&second.esp_spis());
    eprintln!(
        "flush_renegotiates_with_strongswan: traffic back after {:?} ms; {:.1} s",
        report["traffic_back_ms"],
        started.elapsed().as_secs_f64()
    );
}

/// charon dies without a word (SIGKILL) and a new charon initiates (INITIAL_CONTACT): meshd
/// drops the stale SAs and the overlay works on the new ones.
#[test]
fn strongswan_restart_with_initial_contact() {
    let started = Instant::now();
    let mut t = Interop::start("iopi", |m| m, |c| c, None, Initiator::Meshd);
    let first = t.wait_established(Duration::from_secs(15));
    t.ping_both_ways("before the restart");
    let pid = t.charon().pid().expect("charon runs");
    send_signal(pid, libc::SIGKILL);
    let old = t.charon.take().expect("charon");
    let conf = old.config().clone().start_action(StartAction::Start);
    // Dropping the old Charon removes its routing rule; the new one adds it again.
    drop(old);
    t.charon = Some(Charon::start(t.lab.node(1), conf));
    let second = wait_until(Duration::from_secs(15), || {
        let now = current_charon_sas(t.charon())?;
        Established::match_meshd(&t.sa_list(), now)
    })
    .unwrap_or_else(|| panic!("no SAs after charon's restart:\n{}\n{:#}", t.charon().list_sas(), t.sa_list()));
    second.check(&AES, true);
    assert!(t.meshd().log().contains("INITIAL_CONTACT"), "meshd saw INITIAL_CONTACT:\n{}", t.meshd().log());
    wait_only(&t, &second, Duration::from_secs(5));
    let ike_sas = t.sa_list()["ike_sas"].as_array().cloned().unwrap_or_default();
    assert_eq!(ike_sas.len(), 1, "meshd dropped the stale IKE SA: {ike_sas:#?}");
    assert_ne!(ike_sas[0]["initiator_spi"].as_str(), Some(first.charon.ike_spis.0.as_str()));
    t.ping_both_ways("after charon's restart");
    // While the harness re-creates charon's routing, n2's kernel VXLAN may send a packet or two
    // in the clear (that is the harness, not meshd): only meshd's side must never do so.
    let plaintext = t.wire().plaintext_vxlan_from_meshd();
    assert_eq!(plaintext.trim(), "", "meshd sent plaintext VXLAN:\n{plaintext}");
    let seen = t.wire().esp_spis();
    for spi in second.esp_spis() {
        assert!(seen.contains(&spi), "no ESP with SPI {spi} on the wire; seen: {seen:?}");
    }
    eprintln!("strongswan_restart_with_initial_contact: {:.1} s", started.elapsed().as_secs_f64());
}

/// charon (`start_action = start`) and meshd start at about the same time and both initiate
/// (charon's first IKE_SA_INIT finds no meshd yet; its retransmission 4 s later makes a second
/// IKE SA next to the one meshd initiated). Returns the lab once charon's second attempt is
/// over (8 s after meshd's IKE SA came up), with the overlay checked both ways.
fn simultaneous_start(prefix: &str) -> Interop {
    require_root();
    let lab = Lab::new(prefix, 2);
    let mesh = MeshFile::builder(&lab).ike().node_mode(1, "tunnel").write();
    let wire = Wire::start(&lab);
    let conf = CharonConfig::new(lab.addr(1), lab.addr(0), &mesh.psk()).start_action(StartAction::Start);
    let charon = Charon::start(lab.node(1), conf);
    // After charon: its routing (blackhole until an SA exists) keeps vx0's first frames (IPv6
    // router solicitations) off the wire.
    VxlanDevice::new(lab.addr(1), lab.addr(0)).address(&format!("{}/24", lab.overlay_addr(1))).create(lab.node(1));
    let mut t = Interop { wire: Some(wire), charon: Some(charon), meshd: None, mesh, lab };
    t.meshd = Some(Meshd::start(t.lab.node(0), t.mesh.path(), "n1"));
    t.wait_established(Duration::from_secs(15));
    t.ping_both_ways("right after the simultaneous start");
    // charon retransmits its first IKE_SA_INIT after 4 s; give that time to finish.
    std::thread::sleep(Duration::from_secs(8));
    t.ping_both_ways("8 s after the simultaneous start");
    t
}

/// Both initiate: the overlay keeps working both ways (whatever happens to the duplicate).
#[test]
fn simultaneous_start_with_strongswan_carries_traffic() {
    let started = Instant::now();
    let mut t = simultaneous_start("iopb");
    let charon_ike = t.charon().sas().len();
    let meshd_ike = t.sa_list()["ike_sas"].as_array().map_or(0, Vec::len);
    eprintln!("IKE SAs after a simultaneous start: charon {charon_ike}, meshd {meshd_ike}");
    let est = t.wait_established(Duration::from_secs(5));
    est.check(&AES, est.charon.charon_initiated);
    t.check_wire(&est.esp_spis());
    eprintln!("simultaneous_start_with_strongswan_carries_traffic: {:.1} s", started.elapsed().as_secs_f64());
}

/// Both initiate: in the end each side has one IKE SA and one Child SA pair (docs/ike.md,
/// "Who initiates, and one SA per pair").
#[test]
fn simultaneous_start_with_strongswan_ends_with_one_ike_sa() {
    let t = simultaneous_start("iopd");
    let ok = wait_until(Duration::from_secs(10), || {
        let charon_ike = t.charon().sas().len();
        let meshd_ike = t.sa_list()["ike_sas"].as_array().map_or(0, Vec::len);
        (charon_ike == 1 && meshd_ike == 1).then_some(())
    });
    assert!(
        ok.is_some(),
        "IKE SAs after a simultaneous start\n--- charon ---\n{}\n--- meshd sa list ---\n{:#}",
        t.charon().list_sas(),
        t.sa_list()
    );
    let est = t.wait_established(Duration::from_secs(5));
    wait_only(&t, &est, Duration::from_secs(5));
    t.ping_both_ways("after the duplicate is gone");
}

/// meshd's very first IKE_SA_INIT after start leaves at once: charon answers it, so it is sent
/// exactly once (a lost first message shows up as a retransmission 0.5 s later).
#[test]
fn first_ike_sa_init_leaves_at_start() {
    require_root();
    let lab = Lab::new("iop0", 2);
    let mesh = MeshFile::builder(&lab).ike().node_mode(1, "tunnel").write();
    let conf = CharonConfig::new(lab.addr(1), lab.addr(0), &mesh.psk());
    let charon = Charon::start(lab.node(1), conf);
    let mut wire = Wire::start(&lab);
    let meshd = Meshd::start(lab.node(0), mesh.path(), "n1");
    let _ = charon.wait_installed(Duration::from_secs(10));
    let times = wire.capture.read(&[
        "-Y",
        "ip.src == 198.18.0.1 && isakmp.exchangetype == 34 && isakmp.flag_r == 0",
        "-T",
        "fields",
        "-e",
        "frame.time_epoch",
    ]);
    let sent = times.lines().filter(|l| !l.trim().is_empty()).count();
    drop(meshd);
    drop(charon);
    assert_eq!(sent, 1, "meshd's IKE_SA_INIT requests on the wire (a lost first one is retransmitted):\n{times}");
}
