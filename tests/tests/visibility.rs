//! Seeing the traffic: `ikectl capture` read back by tshark, an underlay capture decrypted with
//! the keys of `ikectl sa keys --wireshark`, `ikectl log level` at runtime, `ikectl bugreport`
//! scanned for secrets, and IPFIX flow export received by nfdump's nfcapd.
//!
//! Each test uses its own namespace prefix, so the tests of this file run in parallel.
//! Run: `cargo build --workspace && sudo -E cargo test -p meshd-lab --test visibility`.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use meshd_lab::meshfile::OVERLAY_NAME;
use meshd_lab::util::{describe_output, send_signal, wait_until};
use meshd_lab::{ikectl_bin, require_root, start_all, Capture, Lab, MeshFile, Meshd, Netns};

/// `ikectl --socket S ARGS` of `meshd` inside `ns`, as a command to spawn.
fn ikectl_command(ns: &Netns, meshd: &Meshd, args: &[&str]) -> Command {
    let mut command = ns.command([ikectl_bin().as_os_str(), "--socket".as_ref(), meshd.socket().as_os_str()]);
    command.args(args);
    command
}

fn ping_ok(ns: &Netns, addr: &str, count: u32) {
    let out = ns.ping(addr, count);
    assert!(out.status.success(), "ping {addr} from {} failed\n{}", ns.name(), describe_output(&out));
}

/// `tshark -r FILE` with `args`, its stdout.
fn tshark_read(file: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new("tshark").arg("-n").arg("-r").arg(file).args(args).output().expect("run tshark");
    assert!(output.status.success(), "tshark -r {} failed\n{}", file.display(), describe_output(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A ping from n1 to n2 captured on n1 with `ikectl capture -w FILE`: tshark reads the echo
/// requests on the overlay's outbound interface and the replies on its inbound one, flagged by
/// direction (tshark shows the flags as 0x00000002: outbound, 0x00000001: inbound), each with
/// the peer, VNI and SPI in its comment. Then the same live through a pipe:
/// `ikectl capture -w - --count 4 | tshark -r -`.
#[test]
fn capture_of_a_ping_reads_back_in_tshark() {
    require_root();
    let lab = Lab::builder("vcap").nodes(2).build();
    let mesh = MeshFile::builder(&lab).write();
    let daemons = start_all(&lab, mesh.path());
    let n2 = lab.overlay_addr(1).to_string();
    // ARP first, so that the capture holds only the echoes.
    ping_ok(lab.node(0), &n2, 1);

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("overlay.pcapng");
    let mut capture = ikectl_command(lab.node(0), &daemons[0], &["capture", "--peer", "n2", "-w"])
        .arg(&file)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ikectl capture");
    assert!(
        wait_until(Duration::from_secs(10), || file.metadata().ok().filter(|m| m.len() > 0)).is_some(),
        "ikectl capture wrote no pcapng header"
    );
    ping_ok(lab.node(0), &n2, 3);
    std::thread::sleep(Duration::from_millis(300));
    send_signal(capture.id(), libc::SIGINT);
    capture.wait().expect("wait for ikectl capture");

    let fields = [
        "-Y",
        "icmp",
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-e",
        "frame.interface_name",
        "-e",
        "frame.packet_flags_direction",
        "-e",
        "icmp.type",
        "-e",
        "frame.comment",
    ];
    let read = tshark_read(&file, &fields);
    let out_spi = format!("spi {}", mesh.sa(0, 1).spi_text());
    let in_spi = format!("spi {}", mesh.sa(1, 0).spi_text());
    let requests: Vec<&str> =
        read.lines().filter(|l| l.starts_with(&format!("{OVERLAY_NAME}/out|0x00000002|8|"))).collect();
    let replies: Vec<&str> =
        read.lines().filter(|l| l.starts_with(&format!("{OVERLAY_NAME}/in|0x00000001|0|"))).collect();
    assert_eq!((requests.len(), replies.len()), (3, 3), "3 echo requests out and 3 replies in:\n{read}");
    assert!(
        requests.iter().all(|l| l.contains("to peer n2") && l.contains("vni 4242") && l.contains(&out_spi)),
        "{read}"
    );
    assert!(
        replies.iter().all(|l| l.contains("from peer n2") && l.contains("vni 4242") && l.contains(&in_spi)),
        "{read}"
    );
    assert_eq!(read.lines().count(), 6, "nothing but the echoes:\n{read}");

    // Live: ikectl streams pcapng into tshark, which reads from stdin.
    let socket = daemons[0].socket().display().to_string();
    let pipeline = format!(
        "{} --socket {socket} capture --count 4 -w - | tshark -n -r - -T fields -e frame.interface_name",
        ikectl_bin().display()
    );
    let live = lab.node(0).command(["sh", "-c", &pipeline]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let live = live.expect("spawn the pipeline");
    std::thread::sleep(Duration::from_millis(500));
    ping_ok(lab.node(0), &n2, 3);
    let output = live.wait_with_output().expect("pipeline output");
    let names = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "ikectl capture -w - | tshark -r - failed\n{}", describe_output(&output));
    assert_eq!(names.lines().count(), 4, "4 frames through the pipe:\n{}", describe_output(&output));
    assert!(names.lines().all(|l| l.starts_with(&format!("{OVERLAY_NAME}/"))), "{names}");
}

/// IKE-keyed pair: tshark decrypts a capture of the underlay with the rows of
/// `ikectl sa keys --wireshark` (which warns on stderr) to VXLAN with the echoes inside.
#[test]
fn underlay_capture_decrypts_with_exported_keys() {
    require_root();
    let lab = Lab::builder("vkey").nodes(2).build();
    let mesh = MeshFile::builder(&lab).ike().ike_proposals(&["aes256gcm16-prfsha256-x25519"]).write();
    let daemons = start_all(&lab, mesh.path());
    let n2 = lab.overlay_addr(1).to_string();
    wait_for_sas(&daemons[0]);

    wait_for_sas(&daemons[1]);
    // Both nodes' keys, before and after: an SA replaced while the pings ran (both nodes
    // initiated at once, and one pair of Child SAs is deleted) still decrypts.
    let export = |meshd: &Meshd| {
        let keys = meshd.ikectl(&["sa", "keys", "--wireshark"]);
        assert!(keys.status.success(), "ikectl sa keys failed\n{}", describe_output(&keys));
        let stderr = String::from_utf8_lossy(&keys.stderr);
        assert!(stderr.contains("WARNING"), "no warning on stderr:\n{stderr}");
        let rows: Vec<String> = String::from_utf8_lossy(&keys.stdout).lines().map(str::to_string).collect();
        assert_eq!(rows.len(), 2, "one row per direction:\n{rows:?}");
        rows
    };
    let mut rows: BTreeSet<String> = daemons.iter().flat_map(export).collect();
    let mut capture = Capture::start(lab.switch(), "br0");
    ping_ok(lab.node(0), &n2, 3);
    capture.stop();
    rows.extend(daemons.iter().flat_map(export));

    let mut args = vec!["-o".to_string(), "esp.enable_encryption_decode:TRUE".to_string()];
    for row in &rows {
        args.extend(["-o".to_string(), format!("uat:esp_sa:{row}")]);
    }
    args.extend(
        ["-d", "udp.port==4790,vxlan", "-Y", "vxlan.vni == 4242 && icmp", "-T", "fields", "-e", "icmp.type"]
            .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let decrypted = capture.read(&args);
    let types: Vec<&str> = decrypted.lines().collect();
    assert_eq!(types.iter().filter(|t| **t == "8").count(), 3, "3 echo requests decrypted:\n{decrypted}");
    assert_eq!(types.iter().filter(|t| **t == "0").count(), 3, "3 echo replies decrypted:\n{decrypted}");
}

/// Waits until `meshd` has Child SAs both ways with its one peer.
fn wait_for_sas(meshd: &Meshd) {
    let both_ways = wait_until(Duration::from_secs(20), || {
        (meshd.ikectl_json(&["status"])["peers_with_sas"].as_u64() == Some(1)).then_some(())
    });
    assert!(both_ways.is_some(), "no Child SAs within 20 s:\n{}", meshd.log());
}

fn debug_lines(meshd: &Meshd) -> Vec<String> {
    meshd.log().lines().filter(|l| l.contains(" DEBUG ")).map(str::to_string).collect()
}

/// `ikectl log level debug --module ike --for 3s`: the renegotiation after `sa flush` logs IKE
/// debug lines; once the level went back by itself, the next renegotiation logs none.
#[test]
fn runtime_log_level_makes_debug_lines_appear_and_go_away() {
    require_root();
    let lab = Lab::builder("vlog").nodes(2).build();
    let mesh = MeshFile::builder(&lab).ike().write();
    let daemons = start_all(&lab, mesh.path());
    wait_for_sas(&daemons[0]);
    assert_eq!(debug_lines(&daemons[0]), Vec::<String>::new(), "debug lines at the default level");

    let set = daemons[0].ikectl_json(&["log", "level", "debug", "--module", "ike", "--for", "3s"]);
    assert_eq!(set["reverts_in_secs"].as_u64(), Some(3), "{set}");
    assert!(set["filter"].as_str().is_some_and(|f| f.ends_with("meshd::ike=debug")), "{set}");
    let flushed = daemons[0].ikectl(&["sa", "flush"]);
    assert!(flushed.status.success(), "{}", describe_output(&flushed));
    wait_for_sas(&daemons[0]);
    let during = debug_lines(&daemons[0]);
    assert!(!during.is_empty(), "no debug lines while the level was debug:\n{}", daemons[0].log());
    assert!(during.iter().all(|l| l.contains("meshd::ike")), "debug lines of other modules:\n{during:#?}");

    let reverted =
        wait_until(Duration::from_secs(10), || daemons[0].log().contains("log filter reverted").then_some(()));
    assert!(reverted.is_some(), "the level did not go back by itself:\n{}", daemons[0].log());
    let flushed = daemons[0].ikectl(&["sa", "flush"]);
    assert!(flushed.status.success(), "{}", describe_output(&flushed));
    wait_for_sas(&daemons[0]);
    assert_eq!(debug_lines(&daemons[0]), during, "debug lines after the level went back");
}

/// `ikectl bugreport -o FILE` on `meshd`, unpacked: file name -> contents.
fn bugreport(ns: &Netns, meshd: &Meshd) -> std::collections::BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("report.tar.gz");
    let output = ikectl_command(ns, meshd, &["bugreport", "-o"]).arg(&archive).output().expect("run ikectl bugreport");
    assert!(output.status.success(), "ikectl bugreport failed\n{}", describe_output(&output));
    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir(&unpacked).expect("mkdir");
    let tar = Command::new("tar").arg("-xzf").arg(&archive).arg("-C").arg(&unpacked).output().expect("run tar");
    assert!(tar.status.success(), "the report is no tar.gz\n{}", describe_output(&tar));
    let tops: Vec<_> = std::fs::read_dir(&unpacked).expect("read").flatten().collect();
    assert_eq!(tops.len(), 1, "one top directory in the archive");
    std::fs::read_dir(tops[0].path())
        .expect("read the report directory")
        .flatten()
        .map(|entry| (entry.file_name().to_string_lossy().into_owned(), std::fs::read(entry.path()).expect("read")))
        .collect()
}

/// Fails when any file of `report` holds `secret` as bytes, lowercase hex or uppercase hex.
fn assert_no_secret(report: &std::collections::BTreeMap<String, Vec<u8>>, what: &str, secret: &[u8]) {
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    for form in [secret.to_vec(), hex.clone().into_bytes(), hex.to_uppercase().into_bytes()] {
        for (name, contents) in report {
            let found = contents.windows(form.len()).any(|window| window == form.as_slice());
            assert!(!found, "{what} is in {name} of the bug report:\n{}", String::from_utf8_lossy(contents));
        }
    }
}

/// The report has every part the issue lists, and no secret: not the PSK, no manual key, no key
/// of a Child SA negotiated while meshd logged at trace level (KEYMAT, derived from SK_d).
#[test]
fn bugreport_has_everything_and_no_secret() {
    require_root();
    let manual_lab = Lab::builder("vbrm").nodes(2).build();
    let manual = MeshFile::builder(&manual_lab).write();
    let manual_daemons = start_all(&manual_lab, manual.path());
    ping_ok(manual_lab.node(0), &manual_lab.overlay_addr(1).to_string(), 2);
    let report = bugreport(manual_lab.node(0), &manual_daemons[0]);
    for name in [
        "status.json",
        "sa-list.json",
        "peers.json",
        "fdb.json",
        "drops.json",
        "ping-n2.json",
        "log.txt",
        "config.txt",
        "versions.txt",
        "network.txt",
        "sysctl.txt",
        "nftables.txt",
        "ikectl-version.txt",
    ] {
        assert!(report.contains_key(name), "no {name} in the report: {:?}", report.keys().collect::<Vec<_>>());
    }
    let text = |name: &str| String::from_utf8_lossy(&report[name]).into_owned();
    assert!(text("log.txt").contains("meshd running"), "recent log lines:\n{}", text("log.txt"));
    assert!(text("ping-n2.json").contains("\"healthy\": true"), "{}", text("ping-n2.json"));
    assert!(text("network.txt").contains("ip route get 198.18.0.2"), "{}", text("network.txt"));
    assert!(text("sysctl.txt").contains("gc_thresh3") && text("sysctl.txt").contains("rp_filter"));
    assert!(text("config.txt").contains("redacted"), "the config shows its secrets redacted:\n{}", text("config.txt"));
    assert_no_secret(&report, "the PSK", &manual.psk());
    for sa in manual.sas() {
        assert_no_secret(&report, &format!("the manual key of SPI {}", sa.spi_text()), &sa.key);
    }

    let ike_lab = Lab::builder("vbri").nodes(2).build();
    let ike = MeshFile::builder(&ike_lab).ike().write();
    let ike_daemons = start_all(&ike_lab, ike.path());
    wait_for_sas(&ike_daemons[0]);
    // The SAs of the report negotiated with everything logged: no log line may carry a key.
    ike_daemons[0].ikectl_json(&["log", "level", "trace"]);
    let flushed = ike_daemons[0].ikectl(&["sa", "flush"]);
    assert!(flushed.status.success(), "{}", describe_output(&flushed));
    wait_for_sas(&ike_daemons[0]);
    let report = bugreport(ike_lab.node(0), &ike_daemons[0]);
    assert_no_secret(&report, "the PSK", &ike.psk());
    let keys = ike_daemons[0].ikectl_json(&["sa", "keys"]);
    let keys = keys.as_array().cloned().unwrap_or_default();
    assert_eq!(keys.len(), 2, "two Child SA keys: {keys:?}");
    for key in keys {
        let hex = key["key"].as_str().expect("key as hex");
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        assert_no_secret(&report, &format!("the Child SA key of SPI {}", key["spi"]), &bytes);
    }
}

/// `[flows] ipfix` to nfdump's collector `nfcapd` on n1's loopback: after 5 pings of 100 bytes
/// (128-byte IP packets) from n1 to n2, `nfdump -r` shows the requests' flow (sent to n2) and the
/// replies' flow (received from n2), 5 packets and 640 bytes each, exported by the idle timeout.
#[test]
fn ipfix_flows_reach_nfcapd_with_the_right_counts() {
    require_root();
    let lab = Lab::builder("vflow").nodes(2).build();
    let flows = "\n[flows]\nipfix = \"127.0.0.1:4739\"\nidle_timeout = \"1s\"\n";
    let mesh = MeshFile::builder(&lab).extra(flows).write();
    let dir = tempfile::tempdir().expect("tempdir");
    // The collector listens before meshd sends its templates.
    let nfcapd = lab
        .node(0)
        .command(["nfcapd", "-b", "127.0.0.1", "-p", "4739", "-t", "3600", "-w"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nfcapd (apt-get install nfdump)");
    std::thread::sleep(Duration::from_millis(500));
    let daemons = start_all(&lab, mesh.path());
    let n2 = lab.overlay_addr(1).to_string();
    let out = lab.node(0).exec(["ping", "-n", "-c", "5", "-s", "100", "-i", "0.2", &n2]);
    assert!(out.status.success(), "ping failed\n{}", describe_output(&out));
    // Idle timeout 1 s, export every second: both flows are out after 3 s.
    std::thread::sleep(Duration::from_secs(3));
    send_signal(nfcapd.id(), libc::SIGTERM);
    let collected = nfcapd.wait_with_output().expect("wait for nfcapd");
    let files: Vec<_> = std::fs::read_dir(dir.path()).expect("read").flatten().map(|e| e.path()).collect();
    let file = files.iter().find(|f| f.file_name().is_some_and(|n| n.to_string_lossy().starts_with("nfcapd.2")));
    let file = file.unwrap_or_else(|| panic!("nfcapd wrote no file: {files:?}\n{}", describe_output(&collected)));
    let listing = Command::new("nfdump")
        .arg("-r")
        .arg(file)
        .args(["-q", "-o", "fmt:%sa|%da|%pr|%pkt|%byt", "proto icmp"])
        .output()
        .expect("run nfdump");
    assert!(listing.status.success(), "nfdump failed\n{}", describe_output(&listing));
    let text = String::from_utf8_lossy(&listing.stdout);
    let rows: BTreeSet<String> =
        text.lines().map(|line| line.split('|').map(str::trim).collect::<Vec<_>>().join("|")).collect();
    let expected: BTreeSet<String> =
        ["10.244.0.1|10.244.0.2|ICMP|5|640", "10.244.0.2|10.244.0.1|ICMP|5|640"].map(String::from).into();
    assert_eq!(rows, expected, "nfdump -r shows:\n{text}\nmeshd log:\n{}", daemons[0].log());
}
