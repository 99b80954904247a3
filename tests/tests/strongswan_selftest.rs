//! Self-tests of the strongSwan harness (`meshd_lab::strongswan`), no meshd involved: two
//! `charon` instances (kernel-libipsec) in two lab namespaces negotiate with each other, carry
//! UDP 4790 and kernel VXLAN through the tunnel, and rekey. See docs/strongswan.md.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use meshd_lab::strongswan::{ChildSa, IkeSa, IPSEC_TUN, OVERLAY_PORT, ROUTING_TABLE};
use meshd_lab::util::random_bytes;
use meshd_lab::{require_root, Capture, Charon, CharonConfig, Lab, Routing, StartAction, UdpEndpoint, VxlanDevice};

/// Two nodes, one charon on each (`configure` adjusts each node's config; its argument is the
/// node index). Field order is drop order: the charons stop before the namespaces go.
struct Pair {
    charons: Vec<Charon>,
    lab: Lab,
}

impl Pair {
    fn new(prefix: &str, configure: impl Fn(usize, CharonConfig) -> CharonConfig) -> Pair {
        Pair::with_lab(Lab::new(prefix, 2), configure)
    }

    fn with_lab(lab: Lab, configure: impl Fn(usize, CharonConfig) -> CharonConfig) -> Pair {
        let psk = random_bytes(32);
        let charons = (0..2)
            .map(|i| {
                let conf = CharonConfig::new(lab.addr(i), lab.addr(1 - i), &psk);
                Charon::start(lab.node(i), configure(i, conf))
            })
            .collect();
        Pair { charons, lab }
    }

    fn charon(&self, i: usize) -> &Charon {
        &self.charons[i]
    }

    /// n1 initiates; both sides then show the SA pair. Returns (IKE, child) as n1 and n2 see
    /// them.
    fn establish(&self) -> [(IkeSa, ChildSa); 2] {
        let child = self.charon(0).config().child.clone();
        self.charon(0).initiate(&child);
        let sides = [
            self.charon(0).wait_installed(Duration::from_secs(10)),
            self.charon(1).wait_installed(Duration::from_secs(10)),
        ];
        assert_eq!(sides[0].1.spi_out, sides[1].1.spi_in, "n1's outbound SPI is n2's inbound");
        assert_eq!(sides[0].1.spi_in, sides[1].1.spi_out, "n1's inbound SPI is n2's outbound");
        sides
    }

    fn vxlan(&self) {
        for i in 0..2 {
            VxlanDevice::new(self.lab.addr(i), self.lab.addr(1 - i))
                .address(&format!("{}/24", self.lab.overlay_addr(i)))
                .create(self.lab.node(i));
        }
    }
}

fn sock(addr: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(addr, port)
}

/// The ESP SPIs (as tshark prints them, `0x…`) of the ESP-in-UDP frames of a capture.
fn esp_spis(capture: &mut Capture) -> Vec<String> {
    capture
        .read(&["-Y", "udp.port == 4500 && esp", "-T", "fields", "-e", "esp.spi"])
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn spi_text(spi: Option<u32>) -> String {
    format!("0x{:08x}", spi.expect("child SA has an SPI"))
}

fn establishes_with(prefix: &str, cipher: &str, ike_proposal: &str, esp_proposal: &str) {
    require_root();
    let pair = Pair::new(prefix, |_, conf| conf.cipher(cipher));
    let sides = pair.establish();
    for (i, (ike, child)) in sides.iter().enumerate() {
        let text = pair.charon(i).list_sas();
        assert!(text.contains("ESTABLISHED") && text.contains("INSTALLED"), "n{}:\n{text}", i + 1);
        assert_eq!(ike.proposal, ike_proposal, "n{}:\n{text}", i + 1);
        assert_eq!(child.proposal, esp_proposal, "n{} (no ESN):\n{text}", i + 1);
        assert_eq!(child.mode, "TUNNEL-in-UDP", "n{}:\n{text}", i + 1);
        let (local, remote) = (pair.lab.addr(i), pair.lab.addr(1 - i));
        assert_eq!(child.local_ts, [format!("{local}/32[udp/{OVERLAY_PORT}]")], "n{}:\n{text}", i + 1);
        assert_eq!(child.remote_ts, [format!("{remote}/32[udp/{OVERLAY_PORT}]")], "n{}:\n{text}", i + 1);
        assert!(
            text.contains(&format!("local  '{local}' @ {local}[4500]")),
            "IDs are the addresses, NAT-T port:\n{text}"
        );
    }
    let routes = pair.lab.node(0).run_stdout(["ip", "route", "show", "table", &ROUTING_TABLE.to_string()]);
    assert!(routes.contains(&format!("{} dev {IPSEC_TUN}", pair.lab.addr(1))), "kernel-libipsec's route:\n{routes}");
}

#[test]
fn establishes_aes256gcm16() {
    establishes_with("swsa", "aes256gcm16", "AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519", "ESP:AES_GCM_16-256");
}

#[test]
fn establishes_chacha20poly1305() {
    establishes_with(
        "swsc",
        "chacha20poly1305",
        "CHACHA20_POLY1305/PRF_HMAC_SHA2_256/CURVE_25519",
        "ESP:CHACHA20_POLY1305",
    );
}

#[test]
fn start_action_start_initiates_and_default_prefers_aes_gcm() {
    require_root();
    // Both AEADs offered (the default); n1 initiates by itself on load.
    let pair = Pair::new("swss", |i, conf| if i == 0 { conf.start_action(StartAction::Start) } else { conf });
    let (ike, child) = pair.charon(1).wait_installed(Duration::from_secs(10));
    assert_eq!(ike.proposal, "AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519");
    assert_eq!(child.proposal, "ESP:AES_GCM_16-256");
    pair.charon(0).wait_installed(Duration::from_secs(10));
}

#[test]
fn udp_4790_travels_only_as_esp_in_udp() {
    require_root();
    let pair = Pair::new("swsu", |_, conf| conf);
    let [(_, child1), (_, child2)] = pair.establish();
    let (a1, a2) = (pair.lab.addr(0), pair.lab.addr(1));

    let mut wire = Capture::start(pair.lab.switch(), "br0");
    let mut on_n2 = UdpEndpoint::start(pair.lab.node(1), sock(a2, OVERLAY_PORT));
    let mut on_n1 = UdpEndpoint::start(pair.lab.node(0), sock(a1, OVERLAY_PORT));
    on_n1.send_to(sock(a2, OVERLAY_PORT), b"n1->n2 via esp").expect("n1 sends");
    on_n2.send_to(sock(a1, OVERLAY_PORT), b"n2->n1 via esp").expect("n2 sends");
    assert_eq!(on_n2.wait_for(b"n1->n2 via esp", Duration::from_secs(5)), Some(sock(a1, OVERLAY_PORT)));
    assert_eq!(on_n1.wait_for(b"n2->n1 via esp", Duration::from_secs(5)), Some(sock(a2, OVERLAY_PORT)));

    // A source port outside the selector: routed into ipsec0 too (the rule matches the
    // destination port), where libipsec finds no policy and drops it: never plaintext.
    let _ =
        meshd_lab::strongswan::udp_try_send(pair.lab.node(0), sock(a1, 4999), sock(a2, OVERLAY_PORT), b"wrong port");
    std::thread::sleep(Duration::from_millis(500));
    assert!(on_n2.received().iter().all(|(_, p)| p != b"wrong port"), "{:?}", on_n2.received());

    // Routing::OverlayPortOnly leaves the rest of the underlay alone.
    pair.lab.node(0).run_ok(["ping", "-c", "1", "-W", "2", &a2.to_string()]);

    let plaintext = wire.read(&["-Y", "udp.port == 4790 || vxlan"]);
    assert_eq!(plaintext.trim(), "", "no plaintext UDP 4790 on the wire");
    let spis = esp_spis(&mut wire);
    assert!(spis.contains(&spi_text(child1.spi_out)), "n1's datagram as ESP {:?}: {spis:?}", child1.spi_out);
    assert!(spis.contains(&spi_text(child2.spi_out)), "n2's datagram as ESP {:?}: {spis:?}", child2.spi_out);

    let after = pair.charon(0).wait_installed(Duration::from_secs(2)).1;
    assert!(after.packets_out >= 1 && after.packets_in >= 1, "counters: {after:?}");
}

/// VXLAN on both nodes pings through the tunnel, and a full-size frame passes with DF.
fn vxlan_ping(pair: &Pair) {
    let peer = pair.lab.overlay_addr(1).to_string();
    let out = pair.lab.node(0).ping(&peer, 3);
    assert!(out.status.success(), "overlay ping:\n{}", String::from_utf8_lossy(&out.stdout));
    let payload = (meshd_lab::strongswan::vxlan_mtu(pair.lab.addr(0)) - 28).to_string();
    pair.lab.node(0).run_ok(["ping", "-c", "1", "-W", "2", "-M", "do", "-s", &payload, &peer]);
}

#[test]
fn kernel_vxlan_pings_through_the_tunnel() {
    require_root();
    let pair = Pair::new("swsv", |_, conf| conf);
    pair.establish();
    pair.vxlan();

    let mut wire = Capture::start(pair.lab.switch(), "br0");
    let mut inner = Capture::start(pair.lab.node(0), IPSEC_TUN);
    vxlan_ping(&pair);

    assert_eq!(wire.read(&["-Y", "udp.port == 4790 || vxlan"]).trim(), "", "no plaintext VXLAN on the wire");
    assert!(esp_spis(&mut wire).len() >= 6, "the pings as ESP-in-UDP");
    let ports = inner.read(&["-T", "fields", "-e", "udp.srcport", "-e", "udp.dstport"]);
    let ports: Vec<&str> = ports.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(ports.len() >= 6, "VXLAN datagrams on {IPSEC_TUN}: {ports:?}");
    assert!(ports.iter().all(|l| *l == "4790\t4790"), "VXLAN source port pinned to 4790 both ways: {ports:?}");
}

#[test]
fn ipv6_underlay_carries_vxlan() {
    require_root();
    let pair = Pair::with_lab(Lab::builder("sws6").nodes(2).ipv6().build(), |_, conf| conf);
    let [(ike, child), _] = pair.establish();
    assert_eq!(child.local_ts, [format!("{}/128[udp/{OVERLAY_PORT}]", pair.lab.addr(0))], "{ike:?}");
    pair.vxlan();
    let mut wire = Capture::start(pair.lab.switch(), "br0");
    vxlan_ping(&pair);
    assert_eq!(wire.read(&["-Y", "udp.port == 4790 || vxlan"]).trim(), "", "no plaintext VXLAN on the wire");
    assert!(esp_spis(&mut wire).len() >= 6, "the pings as ESP-in-UDP over IPv6");
    pair.lab.node(0).run_ok(["ping", "-c", "1", "-W", "2", &pair.lab.addr(1).to_string()]);
}

#[test]
fn all_to_peer_routing_carries_vxlan_but_swallows_other_traffic() {
    require_root();
    let pair = Pair::new("swsm", |_, conf| conf.routing(Routing::AllToPeer));
    pair.establish();
    pair.vxlan();
    vxlan_ping(&pair);
    let rules = pair.lab.node(0).run_stdout(["ip", "rule", "show"]);
    assert!(rules.contains("not from all fwmark 0x4500 lookup 220"), "{rules}");
    // Stock strongSwan routing: everything to the peer's address enters ipsec0, and libipsec
    // drops what no policy matches, e.g. ICMP.
    let underlay = pair.lab.node(0).exec(["ping", "-c", "1", "-W", "1", &pair.lab.addr(1).to_string()]);
    assert!(!underlay.status.success(), "underlay ping to the peer is swallowed while the SA is installed");
    assert!(pair.charon(0).log().contains("no matching outbound IPsec policy"));
}

/// Pings through the overlay in the background while `during` runs; returns (sent, received).
fn ping_during(pair: &Pair, count: u32, during: impl FnOnce()) -> (u32, u32) {
    let peer = pair.lab.overlay_addr(1).to_string();
    let child = pair
        .lab
        .node(0)
        .command(["ping", "-n", "-c", &count.to_string(), "-i", "0.1", "-W", "1", &peer])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ping");
    during();
    let out = child.wait_with_output().expect("wait for ping");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let stats = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("{text}"));
    let num = |word: &str| -> u32 {
        let words: Vec<&str> = stats.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        words.windows(2).find(|w| w[1] == word).and_then(|w| w[0].parse().ok()).unwrap_or(0)
    };
    (num("packets"), num("received"))
}

fn installed_child_id(charon: &Charon, newer_than: u32) -> ChildSa {
    charon.wait_sas(Duration::from_secs(10), &format!("an INSTALLED child SA newer than #{newer_than}"), |sas| {
        sas.iter().flat_map(|ike| ike.children.iter()).find(|c| c.state == "INSTALLED" && c.id > newer_than).cloned()
    })
}

#[test]
fn rekeys_keep_traffic_flowing() {
    require_root();
    let pair = Pair::new("swsr", |_, conf| conf);
    let [(ike, first), _] = pair.establish();
    pair.vxlan();
    vxlan_ping(&pair);

    let (sent, received) = ping_during(&pair, 40, || {
        std::thread::sleep(Duration::from_millis(500));
        // The responder rekeys the child, then the initiator, then the IKE SA.
        pair.charon(1).rekey_child();
        let second = installed_child_id(pair.charon(0), first.id);
        std::thread::sleep(Duration::from_millis(700));
        pair.charon(0).rekey_child();
        installed_child_id(pair.charon(0), second.id);
        std::thread::sleep(Duration::from_millis(700));
        pair.charon(0).rekey_ike();
        let ike_id = ike.id;
        pair.charon(0).wait_sas(Duration::from_secs(10), "a new ESTABLISHED IKE SA", |sas| {
            sas.iter().find(|s| s.state == "ESTABLISHED" && s.id > ike_id).map(|_| ())
        });
    });
    assert!(sent >= 40 && received + 1 >= sent, "overlay ping during three rekeys: {received}/{sent} received");

    // Traffic uses the newest child SA.
    let (_, now) = pair.charon(0).wait_installed(Duration::from_secs(5));
    assert_ne!(now.spi_out, first.spi_out, "the child SA was replaced");
    vxlan_ping(&pair);
    let (_, now) = pair.charon(0).wait_installed(Duration::from_secs(5));
    assert!(now.packets_out >= 4 && now.packets_in >= 4, "the new child SA carries the pings: {now:?}");
}

#[test]
fn timed_child_rekey_keeps_traffic_flowing() {
    require_root();
    let pair = Pair::new("swsk", |i, conf| if i == 0 { conf.child_rekey(Duration::from_secs(2)) } else { conf });
    let [(_, first), _] = pair.establish();
    pair.vxlan();
    let (sent, received) = ping_during(&pair, 35, || {
        installed_child_id(pair.charon(0), first.id);
    });
    assert!(received + 1 >= sent, "overlay ping across a timed rekey: {received}/{sent} received");
    let log = pair.charon(0).log();
    assert!(log.contains("creating rekey job for CHILD_SA"), "charon rekeyed by itself (rekey_time = 2s):\n{log}");
}

#[test]
fn without_an_sa_overlay_datagrams_never_leave_in_plaintext() {
    require_root();
    let pair = Pair::new("swsn", |_, conf| conf);
    let (a1, a2) = (pair.lab.addr(0), pair.lab.addr(1));
    let mut wire = Capture::start(pair.lab.switch(), "br0");
    let on_n2 = UdpEndpoint::start(pair.lab.node(1), sock(a2, OVERLAY_PORT));
    let mut on_n1 = UdpEndpoint::start(pair.lab.node(0), sock(a1, OVERLAY_PORT));
    // Before any SA: the blackhole route in table 220 refuses the datagram.
    let refused = on_n1.send_to(sock(a2, OVERLAY_PORT), b"before");
    assert!(refused.is_err(), "sent without an SA: {refused:?}");
    pair.establish();
    on_n1.send_to(sock(a2, OVERLAY_PORT), b"during").expect("sent through the SA");
    assert!(on_n2.wait_for(b"during", Duration::from_secs(5)).is_some());
    pair.charon(0).terminate_ike();
    pair.charon(1).wait_sas(Duration::from_secs(5), "the SAs are gone", |sas| sas.is_empty().then_some(()));
    let refused = on_n1.send_to(sock(a2, OVERLAY_PORT), b"after");
    assert!(refused.is_err(), "sent after the SA was deleted: {refused:?}");
    std::thread::sleep(Duration::from_millis(300));
    let got: Vec<Vec<u8>> = on_n2.received().into_iter().map(|(_, p)| p).collect();
    assert_eq!(got, [b"during".to_vec()]);
    assert_eq!(wire.read(&["-Y", "udp.port == 4790"]).trim(), "", "no plaintext UDP 4790 on the wire");
}

#[test]
fn trap_drops_but_never_initiates() {
    require_root();
    // kernel-libipsec has no acquire: trapped traffic is dropped and no IKE_SA starts. The
    // interop tests must initiate explicitly (StartAction::Start or Charon::initiate).
    let pair = Pair::new("swst", |_, conf| conf.start_action(StartAction::Trap));
    let (a1, a2) = (pair.lab.addr(0), pair.lab.addr(1));
    let routes = pair.lab.node(0).run_stdout(["ip", "route", "show", "table", &ROUTING_TABLE.to_string()]);
    assert!(routes.contains(&format!("{a2} dev {IPSEC_TUN}")), "the trap installs the route:\n{routes}");
    let mut wire = Capture::start(pair.lab.switch(), "br0");
    let on_n2 = UdpEndpoint::start(pair.lab.node(1), sock(a2, OVERLAY_PORT));
    meshd_lab::strongswan::udp_send(pair.lab.node(0), sock(a1, OVERLAY_PORT), sock(a2, OVERLAY_PORT), b"trapped");
    std::thread::sleep(Duration::from_secs(2));
    assert!(on_n2.received().is_empty(), "{:?}", on_n2.received());
    assert!(pair.charon(0).sas().is_empty(), "no IKE SA:\n{}", pair.charon(0).list_sas());
    assert_eq!(wire.read(&["-Y", "udp.port == 4790 || udp.port == 500 || udp.port == 4500"]).trim(), "");
    assert!(pair.charon(0).log().contains("could not find an outbound IPsec SA"));
}

#[test]
fn drop_stops_charon_and_cleans_up() {
    require_root();
    let lab = Lab::new("swsd", 1);
    let conf = CharonConfig::new(lab.addr(0), "198.18.0.2".parse().unwrap(), &random_bytes(32));
    let charon = Charon::start(lab.node(0), conf);
    let pid = charon.pid().expect("charon runs");
    let dir: PathBuf = charon.log_path().parent().unwrap().to_path_buf();
    assert!(lab.node(0).has_link(IPSEC_TUN));
    assert!(lab.node(0).run_stdout(["ip", "rule", "show"]).contains("ipproto udp dport 4790 lookup 220"));
    // charon's pid file is in its private /run, not the host's.
    assert!(!std::path::Path::new("/run/charon.pid").exists());
    assert!(lab.node(0).pids().contains(&pid));
    drop(charon);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "charon {pid} still runs");
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(!lab.node(0).has_link(IPSEC_TUN), "charon removed its TUN device");
    let rules = lab.node(0).run_stdout(["ip", "rule", "show"]);
    assert!(!rules.contains("dport 4790"), "the lab's rule is gone:\n{rules}");
    assert!(lab.node(0).pids().is_empty());
}
