//! Self-tests of the lab library that need no meshd: topology, cleanup, captures, frame
//! injection and tshark ESP decryption (with an ESP packet built here by hand).

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use meshd_lab::util::{random_bytes, wait_until};
use meshd_lab::{inject_frame, require_root, Capture, EspSaKeys, Family, Lab, MeshFile};

fn netns_list() -> String {
    String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().expect("ip netns list").stdout)
        .into_owned()
}

fn star_pings_underlay(prefix: &str, family: Family) {
    require_root();
    let lab = Lab::builder(prefix).nodes(3).family(family).build();
    let names: Vec<String> =
        lab.nodes().iter().map(|n| n.name().to_string()).chain([lab.switch().name().to_string()]).collect();
    for (i, node) in lab.nodes().iter().enumerate() {
        let link = node.run_stdout(["ip", "-o", "link", "show", "dev", "eth0"]);
        assert!(link.contains("state UP") || link.contains(",UP"), "{}: eth0 not up: {link}", node.name());
        for j in 0..lab.len() {
            if i != j {
                let addr = lab.addr(j).to_string();
                node.run_ok(["ping", "-c", "1", "-W", "2", &addr]);
            }
        }
    }
    let listed = netns_list();
    for name in &names {
        assert!(listed.contains(name.as_str()), "{name} not in ip netns list:\n{listed}");
    }
    // A process left running inside must not keep the namespace alive.
    let mut sleeper = lab.node(0).spawn(["sleep", "60"]);
    // `ip netns exec` enters the namespace just after the spawn returns: wait until it has.
    let inside = wait_until(Duration::from_secs(5), || lab.node(0).pids().contains(&sleeper.id()).then_some(()));
    assert!(inside.is_some(), "the sleeper never showed up in {}", lab.node(0).name());
    drop(lab);
    let status = sleeper.wait().expect("wait for sleep");
    assert!(!status.success(), "the process inside was killed, not left running");
    let listed = netns_list();
    for name in &names {
        assert!(!listed.contains(name.as_str()), "{name} still exists after drop:\n{listed}");
    }
}

#[test]
fn star_v4_pings_underlay_and_cleans_up() {
    star_pings_underlay("lst4", Family::V4);
}

#[test]
fn star_v6_pings_underlay_and_cleans_up() {
    star_pings_underlay("lst6", Family::V6);
}

#[test]
fn mtu_is_applied_on_both_ends() {
    require_root();
    let lab = Lab::builder("lstm").nodes(2).mtu(1400).build();
    let mtu = |ns: &meshd_lab::Netns, dev: &str| -> u64 {
        let out = ns.run_stdout(["ip", "-j", "link", "show", "dev", dev]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["mtu"].as_u64().unwrap()
    };
    assert_eq!(mtu(lab.node(0), "eth0"), 1400);
    assert_eq!(mtu(lab.switch(), "p1"), 1400);
    assert_eq!(mtu(lab.switch(), "br0"), 1400);
    // 1400 - 28 fits, 1400 - 27 does not.
    lab.node(0).run_ok(["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1372", "198.18.0.2"]);
    assert!(!lab.node(0).exec(["ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1373", "198.18.0.2"]).status.success());
}

#[test]
fn mesh_file_has_every_pair() {
    let addrs: Vec<IpAddr> = ["198.18.0.1", "198.18.0.2", "198.18.0.3"].iter().map(|a| a.parse().unwrap()).collect();
    let mesh = MeshFile::for_addresses(addrs).encap("esp").mode("tunnel").cipher("chacha20poly1305").write();
    let text = mesh.text();
    let doc: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("not TOML ({e}):\n{text}"));
    assert_eq!(doc["mesh"]["encap"].as_str(), Some("esp"));
    assert_eq!(doc["mesh"]["mode"].as_str(), Some("tunnel"));
    assert_eq!(doc["node"].as_array().unwrap().len(), 3);
    assert_eq!(doc["overlay"][0]["vni"].as_integer(), Some(4242));
    assert_eq!(doc["overlay"][0]["address"]["n2"].as_str(), Some("10.244.0.2/24"));
    let sas = doc["manual_sa"].as_array().unwrap();
    assert_eq!(sas.len(), 6);
    let mut spis: Vec<&str> = sas.iter().map(|s| s["spi"].as_str().unwrap()).collect();
    spis.sort();
    spis.dedup();
    assert_eq!(spis.len(), 6, "SPIs are distinct");
    for sa in sas {
        assert_eq!(sa["key"].as_str().unwrap().len(), 72);
        assert_eq!(sa["cipher"].as_str(), Some("chacha20poly1305"));
    }
    assert_eq!(mesh.sa(0, 1).spi_text(), "0x00001102");
    assert!(text.contains("spi = \"0x00001102\""));
    assert!(text.contains(&mesh.sa(2, 0).key_hex()));
    let psk = mesh.dir().join("psk");
    assert_eq!(std::fs::metadata(&psk).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read(&psk).unwrap().len() >= 32);

    let other_key = random_bytes(36);
    let variant = mesh.variant_with_key("n3.toml", 0, 2, &other_key);
    let vtext = std::fs::read_to_string(&variant).unwrap();
    assert!(vtext.contains(&meshd_lab::util::hex(&other_key)));
    assert!(!vtext.contains(&mesh.sa(0, 2).key_hex()));
    assert!(vtext.contains(&mesh.sa(0, 1).key_hex()));
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = if chunk.len() == 2 { u16::from_be_bytes([chunk[0], chunk[1]]) } else { u16::from(chunk[0]) << 8 };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn mac_bytes(mac: &str) -> Vec<u8> {
    mac.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

/// The native wire format (docs/mtu.md): ESP-in-UDP 4500 | ESP | UDP 4790 | VXLAN | Ethernet |
/// IPv4 | ICMP echo request, AES-256-GCM with a 16-byte ICV.
fn esp_frame(dst_mac: &str, src_mac: &str, spi: u32, seq: u32, key: &[u8]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(b"meshd-lab");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut inner = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
    inner.extend(ipv4([10, 244, 0, 1], [10, 244, 0, 2], 1, &icmp));
    let mut vxlan = vec![0x08, 0, 0, 0];
    vxlan.extend_from_slice(&(4242u32 << 8).to_be_bytes());
    vxlan.extend(inner);
    let mut plain = udp(4790, 4790, &vxlan);
    let pad = (4 - (plain.len() + 2) % 4) % 4;
    plain.extend((1..=pad as u8).collect::<Vec<_>>());
    plain.extend_from_slice(&[pad as u8, 17]);

    let mut header = Vec::new();
    header.extend_from_slice(&spi.to_be_bytes());
    header.extend_from_slice(&seq.to_be_bytes());
    let iv = u64::from(seq).to_be_bytes();
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&key[32..36]);
    nonce[4..].copy_from_slice(&iv);
    let sealing = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key[..32]).unwrap());
    sealing.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&header), &mut plain).unwrap();
    let mut esp = header;
    esp.extend_from_slice(&iv);
    esp.extend(plain);

    let mut frame = mac_bytes(dst_mac);
    frame.extend(mac_bytes(src_mac));
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend(ipv4([198, 18, 0, 1], [198, 18, 0, 2], 17, &udp(4500, 4500, &esp)));
    frame
}

#[test]
fn capture_inject_and_decrypt() {
    require_root();
    let lab = Lab::new("lstc", 2);
    let n1_mac = lab.node(0).mac("eth0");
    let n2_mac = lab.node(1).mac("eth0");
    let key = random_bytes(36);
    let spi = 0x1102;
    let frame = esp_frame(&n2_mac, &n1_mac, spi, 7, &key);

    let mut on_n2 = Capture::start_with_filter(lab.node(1), "eth0", Some("udp port 4500"));
    let mut on_switch = Capture::start(lab.switch(), "br0");
    inject_frame(lab.node(0), "eth0", &frame);
    inject_frame(lab.node(0), "eth0", &frame);

    let frames = on_n2.frames();
    assert_eq!(frames.len(), 2, "captured on n2: {frames:?}");
    assert_eq!(frames[0], frame, "the injected frame arrives byte for byte");

    assert_eq!(on_n2.read(&["-Y", "udp.port == 4790"]).trim(), "", "no plaintext VXLAN without keys");
    assert_eq!(on_n2.read(&["-Y", "esp && !icmp"]).lines().count(), 2);
    let seen = on_switch.read(&["-Y", "esp && !icmp"]);
    assert_eq!(seen.lines().count(), 2, "the bridge capture sees forwarded frames:\n{seen}\n{}", on_switch.stderr());

    let sa = EspSaKeys {
        src: "198.18.0.1".parse().unwrap(),
        dst: "198.18.0.2".parse().unwrap(),
        spi,
        cipher: "aes256gcm16".into(),
        key: key.clone(),
    };
    let decrypted = on_n2.read_decrypted(
        std::slice::from_ref(&sa),
        &[
            "-Y",
            "vxlan.vni == 4242 && icmp.type == 8",
            "-T",
            "fields",
            "-e",
            "esp.spi",
            "-e",
            "esp.icv_good",
            "-e",
            "vxlan.vni",
            "-e",
            "icmp.type",
        ],
    );
    let first = decrypted.lines().next().unwrap_or_else(|| panic!("nothing decrypted"));
    assert_eq!(first.split('\t').collect::<Vec<_>>(), ["0x00001102", "1", "4242", "8"], "{decrypted}");

    let mut wrong = sa.clone();
    wrong.key[0] ^= 1;
    let not_decrypted = on_n2.read_decrypted(&[wrong], &["-Y", "vxlan"]);
    assert_eq!(not_decrypted.trim(), "", "a wrong key decrypts nothing");
}
