//! Every validation rule, checked by key, line and the advice in the message.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use crate::*;

const GOOD_PSK: &[u8] = b"0123456789abcdef0123456789abcdef0123456789\n";

/// 11 lines; text appended to it starts at line 12.
const BASE: &str = r#"[mesh]
name = "lab"
psk_file = "psk"

[[node]]
name = "n1"
address = "198.18.0.1"

[[node]]
name = "n2"
address = "198.18.0.2"
"#;

const KEY1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223";

fn dir_with_psk(psk: &[u8], mode: u32) -> TempDir {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("psk");
    fs::write(&p, psk).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    dir
}

fn parse_in(dir: &TempDir, text: &str) -> Result<MeshConfig, ConfigErrors> {
    let path = dir.path().join("mesh.toml");
    fs::write(&path, text).unwrap();
    MeshConfig::parse(&path, text)
}

fn parse_ok(text: &str) -> MeshConfig {
    let dir = dir_with_psk(GOOD_PSK, 0o600);
    match parse_in(&dir, text) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn errors(text: &str) -> Vec<ConfigError> {
    let dir = dir_with_psk(GOOD_PSK, 0o600);
    match parse_in(&dir, text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => {
            assert!(!e.is_empty());
            e.0
        }
    }
}

/// Exactly one error, with this key and line, whose Display contains every fragment.
#[track_caller]
fn one(text: &str, key: &str, line: Option<usize>, says: &[&str]) -> ConfigError {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected one error, got:\n{}", ConfigErrors(errs.clone()));
    check(&errs[0], key, line, says);
    errs[0].clone()
}

#[track_caller]
fn check(e: &ConfigError, key: &str, line: Option<usize>, says: &[&str]) {
    assert_eq!(e.key, key, "key of {e}");
    assert_eq!(e.line, line, "line of {e}");
    assert!(!e.fix.is_empty(), "no fix in {e}");
    let shown = e.to_string();
    for s in says {
        assert!(shown.contains(s), "{shown:?} does not say {s:?}");
    }
}

fn with(extra: &str) -> String {
    format!("{BASE}{extra}")
}

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mesh.toml")
}

// ---------------------------------------------------------------- valid files and defaults

#[test]
fn full_example_loads() {
    let dir = dir_with_psk(GOOD_PSK, 0o600);
    let path = dir.path().join("mesh.toml");
    fs::copy(example_path(), &path).unwrap();
    // It holds [[manual_sa]] keys.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let c = MeshConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.path, path);
    assert_eq!(c.mesh.name, "lab");
    assert_eq!(c.mesh.psk_file, Some(PathBuf::from("psk")));
    assert_eq!(c.psk_path(), Some(dir.path().join("psk")));
    assert_eq!(c.mesh.vxlan_port, 4790);
    assert_eq!(c.mesh.encap, Encap::Udp);
    assert_eq!(c.mesh.mode, Mode::Transport);
    assert_eq!(c.ike, IkeSection { proposals_explicit: true, ..IkeSection::default() });
    assert_eq!(c.nodes.len(), 3);
    assert_eq!(c.nodes[0].ssh, "root@198.18.0.1");
    assert_eq!(c.nodes[1].ssh, "root@198.18.0.2");
    assert_eq!(c.nodes[2].ssh, "admin@n3.lab.example");
    assert_eq!(c.nodes[2].mode, Some(Mode::Tunnel));
    assert_eq!(c.node("n2").unwrap().address, "198.18.0.2".parse::<IpAddr>().unwrap());
    assert!(c.node("n4").is_none());
    assert_eq!(c.overlays.len(), 2);
    let o = c.overlay("ovl0").unwrap();
    assert_eq!((o.vni, o.interface.as_str(), o.mtu), (4242, "ovl0", OverlayMtu::Auto));
    assert_eq!(o.addresses["n3"], "10.244.0.3/24".parse().unwrap());
    assert!(o.addresses["n1"].contains("10.244.0.200".parse().unwrap()));
    assert_eq!(c.overlays[1].interface, "ovl-storage");
    assert_eq!(c.overlays[1].mtu, OverlayMtu::Fixed(1400));
    assert!(c.overlays[1].addresses.is_empty());
    assert_eq!(c.manual_sas.len(), 4);
    let sa = c.manual_sa("n1", "n2").unwrap();
    assert_eq!((sa.spi, sa.cipher), (0x1001, Cipher::Aes256Gcm16));
    assert_eq!(sa.key.key()[0], 0xd5);
    assert_eq!(sa.key.salt(), &[0x93, 0x76, 0xa7, 0x95]);
    assert_eq!(c.manual_sa("n3", "n1").unwrap().spi, 4100);
    assert!(c.manual_sa("n2", "n3").is_none());
    assert_eq!(c.mode_between("n1", "n2"), Mode::Transport);
    assert_eq!(c.mode_between("n1", "n3"), Mode::Tunnel);
    assert_eq!(c.mode_between("n3", "n2"), Mode::Tunnel);
    let peers: Vec<&str> = c.peers_of("n2").map(|n| n.name.as_str()).collect();
    assert_eq!(peers, ["n1", "n3"]);
    assert_eq!(c.psk.as_ref().unwrap().as_bytes(), &GOOD_PSK[..GOOD_PSK.len() - 1]);
    // Secrets never show.
    let debug = format!("{c:?}");
    assert!(debug.contains("Psk(..redacted..)") && debug.contains("KeyBytes(..redacted..)"));
    assert!(!debug.contains("0123456789abcdef"));
    assert!(!debug.contains("213, 85"), "key bytes leaked: {debug}");
}

#[test]
fn defaults() {
    let c = parse_ok(
        r#"[mesh]
name = "lab"

[[node]]
name = "a"
address = "fd00::1"

[[node]]
name = "b"
address = "fd00::2"
mode = "transport"

[[overlay]]
name = "ovl0"
vni = 0
"#,
    );
    assert_eq!(c.mesh.psk_file, None);
    assert_eq!(c.psk, None);
    assert_eq!(c.mesh.vxlan_port, DEFAULT_VXLAN_PORT);
    assert_eq!(c.mesh.encap, Encap::Udp);
    assert_eq!(c.mesh.mode, Mode::Transport);
    assert_eq!(c.ike.proposals.len(), 2);
    assert_eq!(c.ike.proposals[0].to_string(), "aes256gcm16-prfsha256-x25519");
    assert_eq!(c.ike.proposals[1].cipher, Cipher::Chacha20Poly1305);
    assert!(!c.ike.proposals_explicit);
    assert_eq!(c.ike.ike_lifetime, Duration::from_secs(4 * 3600));
    assert_eq!(c.ike.child_lifetime, Duration::from_secs(3600));
    assert_eq!(c.ike.dpd, Duration::from_secs(10));
    assert_eq!(c.nodes[0].ssh, "root@[fd00::1]");
    assert_eq!(c.nodes[0].mode, None);
    assert_eq!(c.nodes[0].line, 4);
    assert_eq!(c.nodes[1].line, 8);
    assert_eq!(c.overlays[0].interface, "ovl0");
    assert_eq!(c.overlays[0].mtu, OverlayMtu::Auto);
    assert_eq!(c.overlays[0].line, 13);
    assert!(c.manual_sas.is_empty());
    assert_eq!(c.mode_between("a", "b"), Mode::Transport);
}

#[test]
fn mesh_mode_tunnel_and_overrides() {
    let c = parse_ok(
        &BASE
            .replace("psk_file = \"psk\"", "psk_file = \"psk\"\nmode = \"tunnel\"\nencap = \"esp\"\nvxlan_port = 4789"),
    );
    assert_eq!(c.mesh.encap, Encap::Esp);
    assert_eq!(c.mesh.vxlan_port, 4789);
    assert_eq!(c.mode_between("n1", "n2"), Mode::Tunnel);
    let c = parse_ok(&with("mode = \"transport\"\n"));
    assert_eq!(c.nodes[1].mode, Some(Mode::Transport));
    assert_eq!(c.mode_between("n1", "n2"), Mode::Transport);
}

#[test]
fn custom_ike() {
    let c = parse_ok(&with(
        "\n[ike]\nproposals = [\"chacha20poly1305-prfsha256-x25519\"]\nike_lifetime = \"1d\"\nchild_lifetime = \"1h30m\"\ndpd = \"90s\"\n",
    ));
    assert!(c.ike.proposals_explicit);
    assert_eq!(
        c.ike.proposals,
        [Proposal { cipher: Cipher::Chacha20Poly1305, prf: Prf::HmacSha256, group: DhGroup::X25519 }]
    );
    assert_eq!(c.ike.ike_lifetime, Duration::from_secs(86_400));
    assert_eq!(c.ike.child_lifetime, Duration::from_secs(5400));
    assert_eq!(c.ike.dpd, Duration::from_secs(90));
}

#[test]
fn load_reads_the_file_and_reports_unreadable_ones() {
    let dir = dir_with_psk(GOOD_PSK, 0o600);
    let path = dir.path().join("mesh.toml");
    fs::write(&path, BASE).unwrap();
    let c = MeshConfig::load(&path).unwrap();
    assert_eq!(c.nodes.len(), 2);
    assert!(c.psk.is_some());

    let missing = dir.path().join("nope.toml");
    let e = MeshConfig::load(&missing).unwrap_err();
    assert_eq!(e.len(), 1);
    check(&e.0[0], "file", None, &["cannot read the mesh file", "--config"]);

    fs::write(&path, b"[mesh]\nname = \"\xff\"\n").unwrap();
    let e = MeshConfig::load(&path).unwrap_err();
    check(&e.0[0], "file", Some(2), &["UTF-8"]);
}

#[test]
fn psk_file_absolute_path() {
    let dir = dir_with_psk(GOOD_PSK, 0o600);
    let other = TempDir::new().unwrap();
    let text = BASE.replace("\"psk\"", &format!("\"{}\"", dir.path().join("psk").display()));
    let path = other.path().join("mesh.toml");
    let c = MeshConfig::parse(&path, &text).unwrap();
    assert!(c.psk.is_some());
}

// ---------------------------------------------------------------- TOML-level errors

#[test]
fn toml_syntax_error_has_its_line() {
    let e = one(
        &with("\n[[overlay]]\nname = ovl0\n"),
        "syntax",
        Some(14),
        &["mesh.toml:14", "TOML syntax error", "quotes"],
    );
    assert!(e.problem.contains("column 8"), "{e}");
}

#[test]
fn toml_duplicate_key() {
    one(&with("name = \"n3\"\n"), "syntax", Some(12), &["`name` is set a second time", "keep only one"]);
}

#[test]
fn several_syntax_errors_at_once() {
    let errs = errors("[mesh]\nname = lab\n\n[[node]]\nname = n1\n");
    assert_eq!(errs.iter().map(|e| e.line).collect::<Vec<_>>(), [Some(2), Some(5)]);
}

#[test]
fn missing_mesh_section() {
    one(
        "[[node]]\nname = \"n1\"\naddress = \"198.18.0.1\"\n",
        "mesh",
        None,
        &["[mesh] section is missing", "add a [mesh] section"],
    );
}

#[test]
fn missing_nodes() {
    one("[mesh]\nname = \"lab\"\n", "node", None, &["no [[node]] sections", "add one [[node]]"]);
}

#[test]
fn node_written_as_plain_table() {
    one(
        "[mesh]\nname = \"lab\"\n\n[node]\nname = \"n1\"\naddress = \"198.18.0.1\"\n",
        "node",
        Some(4),
        &["expected an array of tables ([[node]]), found a table", "double brackets"],
    );
}

#[test]
fn missing_required_keys() {
    one(
        &BASE.replace("name = \"lab\"\n", ""),
        "mesh.name",
        Some(1),
        &["missing required key `name` in [mesh]", "name = \"lab\""],
    );
    one(
        &BASE.replace("address = \"198.18.0.2\"\n", ""),
        "node[1].address",
        Some(9),
        &["missing required key `address`", "add a line like address ="],
    );
    one(
        &with("\n[[overlay]]\nname = \"ovl0\"\n"),
        "overlay.ovl0.vni",
        Some(13),
        &["missing required key `vni`", "vni = 4242"],
    );
    let errs = errors(&with("\n[[manual_sa]]\nfrom = \"n1\"\n"));
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["manual_sa[0].to", "manual_sa[0].spi", "manual_sa[0].cipher", "manual_sa[0].key"]);
    for e in &errs {
        check(e, &e.key, Some(13), &["missing required key"]);
    }
}

#[test]
fn wrong_types() {
    one(
        &BASE.replace("\"198.18.0.2\"", "198"),
        "node[1].address",
        Some(11),
        &["expected a string, found an integer", "address = \"198.18.0.1\""],
    );
    one(
        &with("\n[[overlay]]\nname = \"ovl0\"\nvni = \"4242\"\n"),
        "overlay.ovl0.vni",
        Some(15),
        &["expected an integer, found a string", "vni = 4242"],
    );
    one(&BASE.replace("name = \"lab\"", "name = true"), "mesh.name", Some(2), &["expected a string, found a boolean"]);
    one(
        &with("\n[ike]\nproposals = \"aes256gcm16-prfsha256-x25519\"\n"),
        "ike.proposals",
        Some(14),
        &["expected an array of strings"],
    );
    one(&with("\n[ike]\nproposals = [1]\n"), "ike.proposals[0]", Some(14), &["expected a string, found an integer"]);
    one(&format!("ike = 3\n{BASE}"), "ike", Some(1), &["expected a table ([ike]), found an integer"]);
}

#[test]
fn unknown_keys_are_named_with_the_accepted_ones() {
    let e = one(
        &with("adress = \"x\"\n"),
        "node[1].adress",
        Some(12),
        &["unknown key `adress` in [[node]]", "did you mean `address`?"],
    );
    assert!(e.fix.contains("name, address, ssh, mode"), "{e}");
    one(
        "[mesh]\nname = \"lab\"\nport = 1\n[[node]]\nname = \"n\"\naddress = \"198.18.0.1\"\n",
        "mesh.port",
        Some(3),
        &["unknown key `port` in [mesh]", "name, psk_file, vxlan_port, encap, mode"],
    );
    one(
        &with("\n[nodes]\nx = 1\n"),
        "nodes",
        Some(13),
        &["unknown key `nodes` in the top level", "did you mean `node`?", "mesh, ike, node, overlay, manual_sa"],
    );
    one(
        &with("\n[ike]\nlifetime = \"1h\"\n"),
        "ike.lifetime",
        Some(14),
        &["proposals, ike_lifetime, child_lifetime, dpd"],
    );
    one(
        &with("\n[[overlay]]\nname = \"ovl0\"\nvni = 1\nmut = 1400\n"),
        "overlay.ovl0.mut",
        Some(16),
        &["did you mean `mtu`?", "name, vni, interface, mtu, address"],
    );
    let e = one(
        &with(&format!("\n[[manual_sa]]\nfrom = \"n1\"\nto = \"n2\"\nspi = 4096\ncipher = \"aes256gcm16\"\nkey = \"{KEY1}\"\nsecret = \"{KEY1}\"\n")),
        "manual_sa[0].secret",
        Some(19),
        &["from, to, spi, cipher, key"],
    );
    assert!(!e.to_string().contains(KEY1));
}

// ---------------------------------------------------------------- [mesh]

#[test]
fn mesh_name_must_be_usable() {
    one(
        &BASE.replace("name = \"lab\"", "name = \"my lab\""),
        "mesh.name",
        Some(2),
        &["not a usable mesh name", "without spaces"],
    );
}

#[test]
fn vxlan_port_zero_and_out_of_range() {
    one(
        &BASE.replace("psk_file = \"psk\"", "psk_file = \"psk\"\nvxlan_port = 0"),
        "mesh.vxlan_port",
        Some(4),
        &["vxlan_port 0 is not a usable UDP port", "4790", "1 to 65535"],
    );
    one(
        &BASE.replace("psk_file = \"psk\"", "psk_file = \"psk\"\nvxlan_port = 65536"),
        "mesh.vxlan_port",
        Some(4),
        &["65536 is not a UDP port"],
    );
}

#[test]
fn encap_and_mode_choices() {
    one(
        &BASE.replace("psk_file = \"psk\"", "psk_file = \"psk\"\nencap = \"gre\""),
        "mesh.encap",
        Some(4),
        &["\"gre\" is not one of \"udp\", \"esp\"", "encap = \"udp\""],
    );
    one(
        &BASE.replace("psk_file = \"psk\"", "psk_file = \"psk\"\nmode = \"Tunnel\""),
        "mesh.mode",
        Some(4),
        &["\"Tunnel\" is not one of", "mode = \"tunnel\""],
    );
    one(&with("mode = \"bump\"\n"), "node[1].mode", Some(12), &["\"bump\" is not one of", "[mesh] mode"]);
}

// ---------------------------------------------------------------- psk_file

#[test]
fn psk_missing() {
    let dir = TempDir::new().unwrap();
    let e = parse_in(&dir, BASE).unwrap_err();
    assert_eq!(e.len(), 1);
    let psk = dir.path().join("psk").display().to_string();
    check(&e.0[0], "mesh.psk_file", Some(3), &["does not exist", &psk, "head -c 32 /dev/urandom", "chmod 600"]);
}

#[test]
fn psk_not_a_file() {
    let dir = TempDir::new().unwrap();
    fs::create_dir(dir.path().join("psk")).unwrap();
    let e = parse_in(&dir, BASE).unwrap_err();
    check(&e.0[0], "mesh.psk_file", Some(3), &["is a directory", "regular file"]);
}

#[test]
fn psk_readable_by_others() {
    for mode in [0o644, 0o640, 0o602, 0o660] {
        let dir = dir_with_psk(GOOD_PSK, mode);
        let e = parse_in(&dir, BASE).unwrap_err();
        assert_eq!(e.len(), 1, "{e}");
        let psk = dir.path().join("psk").display().to_string();
        check(
            &e.0[0],
            "mesh.psk_file",
            Some(3),
            &[&format!("mode {mode:04o}"), "group or others", &format!("chmod 600 {psk}")],
        );
        assert!(!e.to_string().contains("0123456789abcdef"));
    }
    let dir = dir_with_psk(GOOD_PSK, 0o400);
    assert!(parse_in(&dir, BASE).is_ok());
}

#[test]
fn psk_too_short() {
    let short = b"0123456789abcdef0123456789abcde\n"; // 31 bytes and a newline
    let dir = dir_with_psk(short, 0o600);
    let e = parse_in(&dir, BASE).unwrap_err();
    check(&e.0[0], "mesh.psk_file", Some(3), &["holds 31 bytes", "at least 32", "head -c 32 /dev/urandom"]);
    assert!(!e.to_string().contains("0123456789abcde"));

    let exact = b"0123456789abcdef0123456789abcdef\r\n";
    let dir = dir_with_psk(exact, 0o600);
    assert_eq!(parse_in(&dir, BASE).unwrap().psk.unwrap().len(), 32);
    let exact = b"0123456789abcdef0123456789abcdef";
    let dir = dir_with_psk(exact, 0o600);
    assert_eq!(parse_in(&dir, BASE).unwrap().psk.unwrap().as_bytes(), exact);
}

#[test]
fn psk_short_and_open_gives_both_problems() {
    let dir = dir_with_psk(b"short\n", 0o644);
    let e = parse_in(&dir, BASE).unwrap_err();
    assert_eq!(e.len(), 2, "{e}");
    assert!(e.to_string().contains("chmod 600") && e.to_string().contains("holds 5 bytes"));
}

// ---------------------------------------------------------------- [ike]

#[test]
fn bad_proposals() {
    let e = one(
        &with("\n[ike]\nproposals = [\"aes256gcm16-prfsha256-x25519\", \"aes128-sha1-modp2048\"]\n"),
        "ike.proposals[1]",
        Some(14),
        &["\"aes128\" is not a known cipher", "CIPHER-PRF-GROUP"],
    );
    assert!(e.fix.contains("aes256gcm16-prfsha256-x25519"));
    one(
        &with("\n[ike]\nproposals = [\"aes256gcm16-prfsha384-x25519\"]\n"),
        "ike.proposals[0]",
        Some(14),
        &["\"prfsha384\" is not a known PRF", "prfsha256"],
    );
    one(
        &with("\n[ike]\nproposals = [\"aes256gcm16-prfsha256-modp2048\"]\n"),
        "ike.proposals[0]",
        Some(14),
        &["\"modp2048\" is not a known DH group", "x25519"],
    );
    one(
        &with("\n[ike]\nproposals = [\"aes256gcm16\"]\n"),
        "ike.proposals[0]",
        Some(14),
        &["has 1 part(s) where 3", "CIPHER-PRF-GROUP"],
    );
    one(
        &with("\n[ike]\nproposals = []\n"),
        "ike.proposals",
        Some(14),
        &["empty", "remove the line to use the defaults"],
    );
    one(
        &with("\n[ike]\nproposals = [\"aes256gcm16-prfsha256-x25519\", \"aes256gcm16-prfsha256-x25519\"]\n"),
        "ike.proposals[1]",
        Some(14),
        &["listed twice"],
    );
}

#[test]
fn bad_durations() {
    one(&with("\n[ike]\ndpd = \"10\"\n"), "ike.dpd", Some(14), &["without a unit", "\"1h30m\""]);
    one(
        &with("\n[ike]\nike_lifetime = \"4 hours\"\n"),
        "ike.ike_lifetime",
        Some(14),
        &["\"4 hours\"", "largest unit first"],
    );
    one(
        &with("\n[ike]\nchild_lifetime = \"30m1h\"\n"),
        "ike.child_lifetime",
        Some(14),
        &["smaller unit before a larger"],
    );
    one(&with("\n[ike]\ndpd = 10\n"), "ike.dpd", Some(14), &["bare number (10) has no unit", "dpd = \"10s\""]);
    one(&with("\n[ike]\ndpd = \"0s\"\n"), "ike.dpd", Some(14), &["longer than 0s"]);
    one(&with("\n[ike]\ndpd = 1.5\n"), "ike.dpd", Some(14), &["expected a string, found a float", "dpd = \"10s\""]);
}

// ---------------------------------------------------------------- [[node]]

#[test]
fn duplicate_node_name() {
    one(
        &BASE.replace("name = \"n2\"", "name = \"n1\""),
        "node[1].name",
        Some(10),
        &["\"n1\" is already the name of node[0] (line 5)", "give every node its own name"],
    );
}

#[test]
fn duplicate_node_address() {
    let text = r#"[mesh]
name = "lab"
psk_file = "psk"

[[node]]
name = "n1"
# the first one
# comment
address = "198.18.0.1"

[[node]]
name = "n2"
# comment
address = "198.18.0.1"
"#;
    let e = one(text, "node[1].address", Some(14), &[]);
    let dir_file = e.file.display().to_string();
    assert_eq!(
        e.to_string(),
        format!("{dir_file}:14: node[1].address: 198.18.0.1 is already the address of node \"n1\" (line 9); give every node its own address")
    );
}

#[test]
fn mixed_address_families() {
    one(
        &BASE.replace("198.18.0.2", "fd00::2"),
        "node[1].address",
        Some(11),
        &[
            "fd00::2 is an IPv6 address but node \"n1\" (line 7) has the IPv4 address 198.18.0.1",
            "all IPv4 or all IPv6",
        ],
    );
}

#[test]
fn node_name_syntax() {
    one(
        &BASE.replace("\"n2\"", "\"N2\""),
        "node[1].name",
        Some(10),
        &["contains 'N'", "1-32 characters from a-z, 0-9, '-' and '_'"],
    );
    one(&BASE.replace("\"n2\"", "\"\""), "node[1].name", Some(10), &["the name is empty", "1-32 characters"]);
    one(
        &BASE.replace("\"n2\"", &format!("\"{}\"", "n".repeat(33))),
        "node[1].name",
        Some(10),
        &["longer than 32 characters"],
    );
    one(&BASE.replace("\"n2\"", "\"n 2\""), "node[1].name", Some(10), &["contains ' '"]);
    parse_ok(&BASE.replace("\"n2\"", &format!("\"{}\"", "a-_9".repeat(8))));
}

#[test]
fn node_address_syntax() {
    one(
        &BASE.replace("198.18.0.2", "198.18.0.256"),
        "node[1].address",
        Some(11),
        &["\"198.18.0.256\" is not an IP address", "IPv4 or IPv6"],
    );
    one(
        &BASE.replace("198.18.0.2", "198.18.0.2/24"),
        "node[1].address",
        Some(11),
        &["has a prefix length", "without /prefix"],
    );
    one(&BASE.replace("198.18.0.2", "0.0.0.0"), "node[1].address", Some(11), &["not a unicast address"]);
}

#[test]
fn node_ssh_syntax() {
    one(&with("ssh = \"root@ host\"\n"), "node[1].ssh", Some(12), &["not an ssh destination", "root@ADDRESS"]);
}

// ---------------------------------------------------------------- [[overlay]]

fn overlay(body: &str) -> String {
    with(&format!("\n[[overlay]]\nname = \"ovl0\"\nvni = 4242\n{body}"))
}

#[test]
fn vni_out_of_range() {
    one(
        &with("\n[[overlay]]\nname = \"ovl0\"\nvni = 16777216\n"),
        "overlay.ovl0.vni",
        Some(15),
        &["VNI 16777216 is out of range", "0 to 16777215"],
    );
    one(&with("\n[[overlay]]\nname = \"ovl0\"\nvni = -1\n"), "overlay.ovl0.vni", Some(15), &["VNI -1 is out of range"]);
    one(
        &with("\n[[overlay]]\nname = \"ovl0\"\nvni = 99999999999999999999999999999999999999999999\n"),
        "overlay.ovl0.vni",
        Some(15),
        &["far too large"],
    );
    parse_ok(&with("\n[[overlay]]\nname = \"ovl0\"\nvni = 16777215\n"));
}

#[test]
fn duplicate_vni() {
    one(
        &overlay("\n[[overlay]]\nname = \"ovl1\"\nvni = 4242\n"),
        "overlay.ovl1.vni",
        Some(19),
        &["VNI 4242 is already used by overlay \"ovl0\" (line 13)", "its own VNI"],
    );
}

#[test]
fn duplicate_overlay_name() {
    one(
        &overlay("\n[[overlay]]\nname = \"ovl0\"\nvni = 1\n"),
        "overlay.ovl0.name",
        Some(18),
        &["already the name of the overlay at line 13", "its own name"],
    );
}

#[test]
fn overlay_name_syntax() {
    one(
        &with("\n[[overlay]]\nname = \"Ovl0\"\nvni = 1\n"),
        "overlay[0].name",
        Some(14),
        &["contains 'O'", "1-32 characters"],
    );
}

#[test]
fn interface_name_invalid() {
    one(
        &overlay("interface = \"a-very-long-ifname\"\n"),
        "overlay.ovl0.interface",
        Some(16),
        &["longer than 15 bytes", "1-15 characters"],
    );
    one(&overlay("interface = \"ovl/0\"\n"), "overlay.ovl0.interface", Some(16), &["contains '/'"]);
    one(&overlay("interface = \"ovl 0\"\n"), "overlay.ovl0.interface", Some(16), &["contains ' '"]);
    one(&overlay("interface = \"\"\n"), "overlay.ovl0.interface", Some(16), &["empty"]);
    // The default interface is the name: a long name needs an explicit interface.
    one(
        &with("\n[[overlay]]\nname = \"storage-network-1\"\nvni = 1\n"),
        "overlay.storage-network-1.name",
        Some(14),
        &["also the interface name", "at most 15 bytes", "interface ="],
    );
    let c = parse_ok(&with("\n[[overlay]]\nname = \"storage-network-1\"\nvni = 1\ninterface = \"stor1\"\n"));
    assert_eq!(c.overlays[0].interface, "stor1");
}

#[test]
fn duplicate_interface() {
    one(
        &overlay("\n[[overlay]]\nname = \"ovl1\"\nvni = 1\ninterface = \"ovl0\"\n"),
        "overlay.ovl1.interface",
        Some(20),
        &["interface \"ovl0\" is already the interface of overlay \"ovl0\" (line 13)", "interface ="],
    );
    one(
        &overlay("interface = \"x\"\n\n[[overlay]]\nname = \"x\"\nvni = 1\n"),
        "overlay.x.name",
        Some(19),
        &["interface \"x\" is already"],
    );
}

#[test]
fn mtu_values() {
    one(&overlay("mtu = 575\n"), "overlay.ovl0.mtu", Some(16), &["MTU 575 is out of range", "576 to 65535"]);
    one(&overlay("mtu = 65536\n"), "overlay.ovl0.mtu", Some(16), &["MTU 65536 is out of range"]);
    one(
        &overlay("mtu = \"1400\"\n"),
        "overlay.ovl0.mtu",
        Some(16),
        &["\"1400\" is neither \"auto\" nor a number", "mtu = 1400"],
    );
    one(&overlay("mtu = 1.5\n"), "overlay.ovl0.mtu", Some(16), &["found a float"]);
    assert_eq!(parse_ok(&overlay("mtu = 576\n")).overlays[0].mtu, OverlayMtu::Fixed(576));
    assert_eq!(parse_ok(&overlay("mtu = \"auto\"\n")).overlays[0].mtu, OverlayMtu::Auto);
}

#[test]
fn overlay_address_unknown_node() {
    one(
        &overlay("[overlay.address]\nn1 = \"10.0.0.1/24\"\nn9 = \"10.0.0.9/24\"\n"),
        "overlay.ovl0.address.n9",
        Some(18),
        &["\"n9\" is not a node of this mesh", "use one of the node names: n1, n2"],
    );
}

#[test]
fn overlay_address_bad_cidr() {
    one(
        &overlay("[overlay.address]\nn1 = \"10.0.0.1\"\n"),
        "overlay.ovl0.address.n1",
        Some(17),
        &["has no prefix length", "ADDRESS/PREFIX-LENGTH", "10.244.0.1/24"],
    );
    one(
        &overlay("[overlay.address]\nn1 = \"10.0.0.1/33\"\n"),
        "overlay.ovl0.address.n1",
        Some(17),
        &["\"33\" is not a prefix length from 0 to 32"],
    );
    one(
        &overlay("[overlay.address]\nn1 = \"10.0.0/8\"\n"),
        "overlay.ovl0.address.n1",
        Some(17),
        &["\"10.0.0\" is not an IP address"],
    );
    one(&overlay("[overlay.address]\nn1 = 10\n"), "overlay.ovl0.address.n1", Some(17), &["expected a string"]);
    let c = parse_ok(&overlay("[overlay.address]\nn1 = \"fd01::1/64\"\n"));
    assert_eq!(c.overlays[0].addresses["n1"].prefix_len, 64);
}

#[test]
fn overlay_address_duplicate() {
    one(
        &overlay("[overlay.address]\nn1 = \"10.0.0.1/24\"\nn2 = \"10.0.0.1/24\"\n"),
        "overlay.ovl0.address.n2",
        Some(18),
        &["10.0.0.1 is already the address of node \"n1\" on this overlay (line 17)", "its own overlay address"],
    );
    // The same address on two overlays is not a conflict.
    parse_ok(&overlay("[overlay.address]\nn1 = \"10.0.0.1/24\"\n\n[[overlay]]\nname = \"ovl1\"\nvni = 1\n[overlay.address]\nn1 = \"10.0.0.1/24\"\n"));
}

// ---------------------------------------------------------------- [[manual_sa]]

fn sa(from: &str, to: &str, spi: &str, cipher: &str, key: &str) -> String {
    format!("\n[[manual_sa]]\nfrom = \"{from}\"\nto = \"{to}\"\nspi = {spi}\ncipher = \"{cipher}\"\nkey = \"{key}\"\n")
}

#[test]
fn manual_sa_accepts_hex_decimal_and_integer_spis() {
    let sas = parse_ok(&format!(
        "{BASE}\n[[node]]\nname = \"n3\"\naddress = \"198.18.0.3\"\n{}{}{}",
        sa("n1", "n2", "\"0x00001001\"", "aes256gcm16", KEY1),
        sa("n2", "n1", "\"4097\"", "chacha20poly1305", KEY1),
        sa("n1", "n3", "0xffffffff", "aes256gcm16", KEY1),
    ))
    .manual_sas;
    assert_eq!(sas.len(), 3);
    assert_eq!(sas[0].spi, 0x1001);
    assert_eq!(sas[0].line, 17);
    assert_eq!(sas[1].spi, 4097);
    assert_eq!(sas[1].cipher, Cipher::Chacha20Poly1305);
    assert_eq!(sas[2].spi, u32::MAX);
    assert_eq!(sas[2].key.as_bytes()[35], 0x23);
    assert_eq!(sas[2].key.as_bytes()[0], 0x00);
}

#[test]
fn manual_sa_unknown_node() {
    one(
        &with(&sa("n1", "n7", "4096", "aes256gcm16", KEY1)),
        "manual_sa[0].to",
        Some(15),
        &["\"n7\" is not a node of this mesh", "n1, n2"],
    );
    one(&with(&sa("x", "n2", "4096", "aes256gcm16", KEY1)), "manual_sa[0].from", Some(14), &["\"x\" is not a node"]);
}

#[test]
fn manual_sa_from_equals_to() {
    one(
        &with(&sa("n1", "n1", "4096", "aes256gcm16", KEY1)),
        "manual_sa[0].to",
        Some(15),
        &["from and to are both \"n1\"", "two different nodes"],
    );
}

#[test]
fn manual_sa_duplicate_direction() {
    one(
        &with(&format!(
            "{}{}",
            sa("n1", "n2", "4096", "aes256gcm16", KEY1),
            sa("n1", "n2", "4097", "aes256gcm16", KEY1)
        )),
        "manual_sa[1]",
        Some(20),
        &["already a manual SA from \"n1\" to \"n2\" (line 13)", "one [[manual_sa]] per direction", "swapped"],
    );
}

#[test]
fn manual_sa_spi_syntax_and_range() {
    let bad = |spi: &str| with(&sa("n1", "n2", spi, "aes256gcm16", KEY1));
    one(
        &bad("\"0xzz\""),
        "manual_sa[0].spi",
        Some(16),
        &["\"0xzz\" is not a hex (0x...) or decimal number", "spi = \"0x00001001\""],
    );
    one(&bad("\"10k\""), "manual_sa[0].spi", Some(16), &["is not a hex"]);
    one(&bad("\"\""), "manual_sa[0].spi", Some(16), &["is not a hex"]);
    one(&bad("1"), "manual_sa[0].spi", Some(16), &["SPI 1 is reserved", "1-255 are reserved", "from 256 (0x100)"]);
    one(&bad("\"0xff\""), "manual_sa[0].spi", Some(16), &["SPI 255 is reserved"]);
    one(&bad("\"0\""), "manual_sa[0].spi", Some(16), &["SPI 0 is reserved"]);
    one(&bad("\"0x100000000\""), "manual_sa[0].spi", Some(16), &["does not fit in 32 bits"]);
    one(&bad("-5"), "manual_sa[0].spi", Some(16), &["does not fit in 32 bits"]);
    one(&bad("1.0"), "manual_sa[0].spi", Some(16), &["expected a string or an integer, found a float"]);
}

#[test]
fn manual_sa_duplicate_spi_for_one_receiver() {
    one(
        &format!(
            "{BASE}\n[[node]]\nname = \"n3\"\naddress = \"198.18.0.3\"\n{}{}",
            sa("n1", "n2", "4096", "aes256gcm16", KEY1),
            sa("n3", "n2", "\"0x1000\"", "aes256gcm16", KEY1)
        ),
        "manual_sa[1].spi",
        Some(27),
        &[
            "SPI 0x00001000 is already used by the manual SA from \"n1\" to \"n2\" (line 17); \"n2\" receives both",
            "its own SPI",
        ],
    );
    // The same SPI towards two different receivers is fine.
    parse_ok(&with(&format!(
        "{}{}",
        sa("n1", "n2", "4096", "aes256gcm16", KEY1),
        sa("n2", "n1", "4096", "aes256gcm16", KEY1)
    )));
}

#[test]
fn manual_sa_unknown_cipher() {
    one(
        &with(&sa("n1", "n2", "4096", "aes128gcm", KEY1)),
        "manual_sa[0].cipher",
        Some(17),
        &["\"aes128gcm\" is not one of", "use one of \"aes256gcm16\", \"chacha20poly1305\""],
    );
}

#[test]
fn manual_sa_key_length_and_digits() {
    let short = &KEY1[..64];
    let e = one(
        &with(&sa("n1", "n2", "4096", "aes256gcm16", short)),
        "manual_sa[0].key",
        Some(18),
        &["the key has 64 characters where 72 hex digits are needed", "32-byte key followed by a 4-byte salt"],
    );
    assert!(!e.to_string().contains(short), "key leaked: {e}");
    let bad = format!("{}xy", &KEY1[..70]);
    let e = one(
        &with(&sa("n1", "n2", "4096", "aes256gcm16", &bad)),
        "manual_sa[0].key",
        Some(18),
        &["character 71 of the key is not a hex digit"],
    );
    assert!(!e.to_string().contains(&KEY1[..70]));
    let e = one(
        &with(&sa("n1", "n2", "4096", "aes256gcm16", KEY1).replace(&format!("\"{KEY1}\""), "12345")),
        "manual_sa[0].key",
        Some(18),
        &["expected a string, found an integer", "72 hex digits"],
    );
    assert!(!e.to_string().contains("12345"));
}

// ---------------------------------------------------------------- all at once

#[test]
fn every_problem_is_reported_in_line_order() {
    let text = r#"[mesh]
name = "lab"
psk_file = "missing-psk"
vxlan_port = 0
colour = "blue"

[[node]]
name = "n1"
address = "198.18.0.1"

[[node]]
name = "n1"
address = "198.18.0.1"

[[overlay]]
name = "ovl0"
vni = 99999999
mtu = 10
"#;
    let errs = errors(text);
    let got: Vec<(Option<usize>, &str)> = errs.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(3), "mesh.psk_file"),
            (Some(4), "mesh.vxlan_port"),
            (Some(5), "mesh.colour"),
            (Some(12), "node[1].name"),
            (Some(13), "node[1].address"),
            (Some(17), "overlay.ovl0.vni"),
            (Some(18), "overlay.ovl0.mtu"),
        ]
    );
    let shown = ConfigErrors(errs).to_string();
    assert_eq!(shown.lines().count(), 7);
    assert!(shown.lines().all(|l| l.contains("mesh.toml:")));
}

// ---------------------------------------------------------------- local_node

fn three() -> MeshConfig {
    parse_ok(&format!("{BASE}\n[[node]]\nname = \"n3\"\naddress = \"198.18.0.3\"\n"))
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn local_node_by_name() {
    let c = three();
    assert_eq!(c.local_node(Some("n2"), &[]).unwrap().name, "n2");
    // --node wins over local addresses.
    assert_eq!(c.local_node(Some("n3"), &ips(&["198.18.0.1"])).unwrap().name, "n3");
    let e = c.local_node(Some("n9"), &[]).unwrap_err();
    check(&e, "--node", None, &["no node named \"n9\"", "pass one of the node names: n1, n2, n3"]);
}

#[test]
fn local_node_by_address() {
    let c = three();
    let local = ips(&["127.0.0.1", "10.0.0.5", "198.18.0.2", "fe80::1"]);
    assert_eq!(c.local_node(None, &local).unwrap().name, "n2");
}

#[test]
fn local_node_none_found() {
    let c = three();
    let e = c.local_node(None, &ips(&["127.0.0.1", "10.1.2.3"])).unwrap_err();
    check(
        &e,
        "--node",
        None,
        &["none of the node addresses", "n1 198.18.0.1, n2 198.18.0.2, n3 198.18.0.3", "pass --node NAME"],
    );
}

#[test]
fn local_node_two_found() {
    let c = three();
    let e = c.local_node(None, &ips(&["198.18.0.1", "198.18.0.3"])).unwrap_err();
    check(&e, "--node", None, &["several node addresses", "n1 198.18.0.1, n3 198.18.0.3", "pass --node NAME"]);
}

#[test]
fn peers_and_lookups() {
    let c = three();
    let peers: Vec<&str> = c.peers_of("n1").map(|n| n.name.as_str()).collect();
    assert_eq!(peers, ["n2", "n3"]);
    assert_eq!(c.peers_of("zz").count(), 3);
    assert_eq!(c.node_by_address("198.18.0.3".parse().unwrap()).unwrap().name, "n3");
    assert_eq!(c.mode_between("n1", "unknown"), Mode::Transport);
}

// ---------------------------------------------------------------- static MACs (overlay FDB)

const STATIC_OVERLAY: &str = "\n[[overlay]]\nname = \"ovl0\"\nvni = 4242\n";

#[test]
fn static_macs_are_read() {
    let c = parse_ok(&with(&format!(
        "{STATIC_OVERLAY}static_macs = [{{ mac = \"02:00:00:00:00:0A\", node = \"n2\" }}, {{ mac = \"52:54:00:12:34:56\", node = \"n1\" }}]\n"
    )));
    let pinned = &c.overlay("ovl0").unwrap().static_macs;
    assert_eq!(
        pinned,
        &vec![
            StaticMac { mac: [2, 0, 0, 0, 0, 0x0a], node: "n2".into() },
            StaticMac { mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56], node: "n1".into() },
        ]
    );
    assert!(parse_ok(&with(STATIC_OVERLAY)).overlays[0].static_macs.is_empty());
}

#[test]
fn static_macs_errors_name_file_line_and_key() {
    // BASE is 11 lines; the overlay starts at 13, static_macs is line 16.
    let entry = |mac: &str, node: &str| {
        with(&format!("{STATIC_OVERLAY}static_macs = [{{ mac = \"{mac}\", node = \"{node}\" }}]\n"))
    };
    one(&entry("02:00:00:00:00", "n2"), "overlay.ovl0.static_macs[0].mac", Some(16), &["is not a MAC address"]);
    one(&entry("01:00:5e:00:00:01", "n2"), "overlay.ovl0.static_macs[0].mac", Some(16), &["group"]);
    one(&entry("02:00:00:00:00:01", "n9"), "overlay.ovl0.static_macs[0].node", Some(16), &["\"n9\" is not a node"]);
    one(
        &with(&format!(
            "{STATIC_OVERLAY}static_macs = [\n  {{ mac = \"02:00:00:00:00:01\", node = \"n1\" }},\n  {{ mac = \"02:00:00:00:00:01\", node = \"n2\" }},\n]\n"
        )),
        "overlay.ovl0.static_macs[1].mac",
        Some(18),
        &["already pinned", "line 17"],
    );
    one(
        &with(&format!("{STATIC_OVERLAY}static_macs = [{{ mac = \"02:00:00:00:00:01\" }}]\n")),
        "overlay.ovl0.static_macs[0].node",
        Some(16),
        &["missing required key `node`"],
    );
    one(
        &with(&format!("{STATIC_OVERLAY}static_macs = [{{ mac = \"02:00:00:00:00:01\", node = \"n1\", vlan = 3 }}]\n")),
        "overlay.ovl0.static_macs[0].vlan",
        Some(16),
        &["unknown key `vlan`"],
    );
    one(
        &with(&format!("{STATIC_OVERLAY}static_macs = \"02:00:00:00:00:01\"\n")),
        "overlay.ovl0.static_macs",
        Some(16),
        &["expected an array of tables"],
    );
}

#[test]
fn a_reload_that_changes_static_macs_keeps_the_interface() {
    let before = parse_ok(&with(STATIC_OVERLAY));
    let after =
        parse_ok(&with(&format!("{STATIC_OVERLAY}static_macs = [{{ mac = \"02:00:00:00:00:0a\", node = \"n2\" }}]\n")));
    let plan = crate::reload::plan(&before, &after, "n1").unwrap();
    assert_eq!(plan.overlays_changed.len(), 1);
    assert_eq!(plan.overlays_changed[0].reason, "static MACs changed");
    assert!(!plan.overlays_changed[0].recreate);
}

// ---------------------------------------------------------------- manual keys make mesh.toml a key file

#[test]
fn a_mesh_file_with_manual_keys_must_be_0600() {
    let dir = dir_with_psk(GOOD_PSK, 0o600);
    let path = dir.path().join("mesh.toml");
    let text = with(&format!(
        "\n[[manual_sa]]\nfrom = \"n1\"\nto = \"n2\"\nspi = \"0x1102\"\ncipher = \"aes256gcm16\"\nkey = \"{KEY1}\"\n"
    ));
    fs::write(&path, &text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let errors = MeshConfig::load(&path).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors}");
    check(&errors.0[0], "manual_sa[0].key", Some(13), &["has mode 0644", "chmod 600"]);
    assert!(!errors.to_string().contains(KEY1), "the key is never shown: {errors}");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(MeshConfig::load(&path).unwrap().manual_sas.len(), 1);
    // Without manual keys, the mesh file holds no secret.
    fs::write(&path, BASE).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(MeshConfig::load(&path).is_ok());
}
