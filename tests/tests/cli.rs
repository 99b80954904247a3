//! The command lines as an operator meets them: `meshd check` on good and bad files, and
//! `ikectl` when meshd is not there or the caller is not root. Each error is one line that says
//! what to do.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use meshd_lab::{ikectl_bin, meshd_bin, require_root, MeshFile};

fn text(output: &Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn check_accepts_a_good_file_and_names_the_node() {
    let mesh = MeshFile::for_addresses(vec!["198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap()]).write();
    let output =
        Command::new(meshd_bin()).args(["check", "--config"]).arg(mesh.path()).args(["--node", "n2"]).output().unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("OK") && stdout.contains("node n2 (198.18.0.2)"), "{stdout}");
}

#[test]
fn check_explains_every_problem_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let psk = dir.path().join("psk");
    fs::write(&psk, "0123456789abcdef0123456789abcdef\n").unwrap();
    fs::set_permissions(&psk, fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.path().join("mesh.toml");
    fs::write(
        &config,
        r#"[mesh]
name = "lab"
psk_file = "psk"

[[node]]
name = "n1"
address = "198.18.0.1"

[[node]]
name = "n2"
address = "198.18.0.1"

[[overlay]]
name = "ovl0"
vni = 16777216
"#,
    )
    .unwrap();
    let output =
        Command::new(meshd_bin()).args(["check", "--config"]).arg(&config).args(["--node", "n1"]).output().unwrap();
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    let file = config.display().to_string();
    assert!(stderr.contains(&format!("{file}:11: node[1].address")), "{stderr}");
    assert!(stderr.contains(&format!("{file}:15: overlay.ovl0.vni")), "{stderr}");
    assert!(stderr.contains("chmod 600"), "the PSK mode problem says what to run: {stderr}");
}

#[test]
fn ikectl_without_meshd_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("meshd.sock");
    let output = Command::new(ikectl_bin()).arg("--socket").arg(&socket).arg("status").output().unwrap();
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is meshd running?") && stderr.contains("--socket"), "{stderr}");
}

#[test]
fn ikectl_as_non_root_says_to_use_root() {
    require_root();
    // A root-only socket like meshd's, with something listening on it.
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("meshd.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600)).unwrap();
    let ikectl = dir.path().join("ikectl");
    fs::copy(ikectl_bin(), &ikectl).unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&ikectl)
        .arg("--socket")
        .arg(&socket)
        .arg("sa")
        .arg("list")
        .output()
        .unwrap();
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("permission denied") && stderr.contains("as root"), "{stderr}");
}
