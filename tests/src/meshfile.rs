//! Writes a `mesh.toml` (and its psk file) for a lab, with `[[manual_sa]]` entries for every
//! ordered pair of nodes, and keeps the keys so tests can hand them to tshark. With
//! [`MeshFileBuilder::keys`], every node gets its own Ed25519 key from `meshd keygen`.

use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tempfile::TempDir;

use crate::capture::EspSaKeys;
use crate::lab::{overlay_addr, Lab};
use crate::meshd::meshd_bin;
use crate::util::{hex, random_bytes};

/// The overlay every lab mesh has.
pub const OVERLAY_NAME: &str = "ovl0";
pub const OVERLAY_VNI: u32 = 4242;

/// One `[[manual_sa]]` entry. Node indexes are 0-based (`from = 0` is node `n1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManualSa {
    pub from: usize,
    pub to: usize,
    pub from_name: String,
    pub to_name: String,
    /// Underlay addresses of `from` and `to`.
    pub src: IpAddr,
    pub dst: IpAddr,
    pub spi: u32,
    /// "aes256gcm16" or "chacha20poly1305".
    pub cipher: String,
    /// 32-byte key followed by the 4-byte salt (nonce prefix).
    pub key: Vec<u8>,
}

impl ManualSa {
    /// `0x0000abcd`, as in `mesh.toml` and `ikectl` output.
    pub fn spi_text(&self) -> String {
        format!("0x{:08x}", self.spi)
    }

    /// 72 hex digits.
    pub fn key_hex(&self) -> String {
        hex(&self.key)
    }

    /// The keys in the form [`crate::Capture::read_decrypted`] takes.
    pub fn esp_keys(&self) -> EspSaKeys {
        EspSaKeys { src: self.src, dst: self.dst, spi: self.spi, cipher: self.cipher.clone(), key: self.key.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct MeshFileBuilder {
    name: String,
    addresses: Vec<IpAddr>,
    encap: String,
    mode: String,
    cipher: String,
    extra: String,
    manual: bool,
    /// Per-node `mode` overrides: (node index, mode).
    node_modes: Vec<(usize, String)>,
    /// `[ike]` keys in order: (key, TOML value).
    ike: Vec<(String, String)>,
    /// Ed25519 keys for every node, and no psk_file.
    keys: bool,
}

impl MeshFileBuilder {
    /// No `[[manual_sa]]` entries: every pair is keyed by IKEv2 with the mesh PSK.
    pub fn ike(mut self) -> Self {
        self.manual = false;
        self
    }

    /// Every node has its own Ed25519 key (`meshd keygen`) and `public_key` in the file; no
    /// psk_file (implies IKE, like [`MeshFileBuilder::ike`]). Start each node with
    /// [`MeshFile::key_args`].
    pub fn keys(mut self) -> Self {
        self.manual = false;
        self.keys = true;
        self
    }

    /// "udp" (default) or "esp".
    pub fn encap(mut self, encap: &str) -> Self {
        self.encap = encap.to_string();
        self
    }

    /// "transport" (default) or "tunnel".
    pub fn mode(mut self, mode: &str) -> Self {
        self.mode = mode.to_string();
        self
    }

    /// `mode = "MODE"` in node `index`'s `[[node]]` entry (0-based: `0` is `n1`), the per-node
    /// override (e.g. `"tunnel"` for a strongSwan peer with kernel-libipsec).
    pub fn node_mode(mut self, index: usize, mode: &str) -> Self {
        self.node_modes.retain(|(i, _)| *i != index);
        self.node_modes.push((index, mode.to_string()));
        self
    }

    /// `[ike] proposals = [...]`, e.g. `["chacha20poly1305-prfsha256-x25519"]`.
    pub fn ike_proposals(self, proposals: &[&str]) -> Self {
        let list: Vec<String> = proposals.iter().map(|p| format!("\"{p}\"")).collect();
        self.ike_key("proposals", &format!("[{}]", list.join(", ")))
    }

    /// `[ike] ike_lifetime = "…"`, e.g. `"60s"`.
    pub fn ike_lifetime(self, lifetime: &str) -> Self {
        self.ike_key("ike_lifetime", &format!("\"{lifetime}\""))
    }

    /// `[ike] child_lifetime = "…"`, e.g. `"30s"`.
    pub fn child_lifetime(self, lifetime: &str) -> Self {
        self.ike_key("child_lifetime", &format!("\"{lifetime}\""))
    }

    /// One key of the `[ike]` table (the value as TOML); the table is written only when a key
    /// is set. Do not combine with an `[ike]` table in [`MeshFileBuilder::extra`].
    pub fn ike_key(mut self, key: &str, toml_value: &str) -> Self {
        self.ike.retain(|(k, _)| k != key);
        self.ike.push((key.to_string(), toml_value.to_string()));
        self
    }

    /// "aes256gcm16" (default) or "chacha20poly1305", for every manual SA.
    pub fn cipher(mut self, cipher: &str) -> Self {
        self.cipher = cipher.to_string();
        self
    }

    /// Verbatim TOML appended at the end of the file (after the last `[[manual_sa]]`, so start
    /// it with a table header), for tests of other keys.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self
    }

    pub fn write(self) -> MeshFile {
        let dir = tempfile::Builder::new().prefix("meshd-lab-").tempdir().expect("create tempdir");
        let psk = dir.path().join("psk");
        fs::write(&psk, hex(&random_bytes(32))).expect("write psk");
        fs::set_permissions(&psk, fs::Permissions::from_mode(0o600)).expect("chmod psk");

        let n = if self.manual { self.addresses.len() } else { 0 };
        let mut sas = Vec::new();
        for from in 0..n {
            for to in 0..n {
                if from == to {
                    continue;
                }
                sas.push(ManualSa {
                    from,
                    to,
                    from_name: node_name(from),
                    to_name: node_name(to),
                    src: self.addresses[from],
                    dst: self.addresses[to],
                    spi: spi_for(from, to),
                    cipher: self.cipher.clone(),
                    key: random_bytes(36),
                });
            }
        }
        let nodes = self.addresses.len();
        let keys = self.keys;
        let auth = Mutex::new(Auth { psk: !keys, public_keys: vec![Vec::new(); nodes], key_files: Vec::new() });
        let file = MeshFile { path: dir.path().join("mesh.toml"), dir, options: self, sas, auth };
        for node in 0..nodes {
            let path = file.dir().join(format!("{}.key", node_name(node)));
            let public = keygen(&path);
            let mut auth = file.lock_auth();
            auth.key_files.push(path);
            if keys {
                auth.public_keys[node].push(public);
            }
        }
        write_private(&file.path, &file.render(&file.sas, "psk"));
        file
    }
}

/// `0x1000 + 0x100 * from + to` with 1-based node numbers: n1 -> n2 is 0x1102.
pub fn spi_for(from: usize, to: usize) -> u32 {
    0x1000 + 0x100 * (from as u32 + 1) + (to as u32 + 1)
}

fn node_name(i: usize) -> String {
    format!("n{}", i + 1)
}

/// `meshd keygen --out PATH`, as an operator runs it; the public key it prints.
pub fn keygen(path: &Path) -> String {
    let out =
        std::process::Command::new(meshd_bin()).arg("keygen").arg("--out").arg(path).output().expect("meshd keygen");
    assert!(out.status.success(), "meshd keygen --out {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("base64").trim().to_string()
}

/// How the nodes authenticate: the psk_file, and each node's public keys (written when not
/// empty) and current private key file.
#[derive(Debug)]
struct Auth {
    psk: bool,
    public_keys: Vec<Vec<String>>,
    key_files: Vec<PathBuf>,
}

/// A mesh file in its own tempdir (removed on drop).
#[derive(Debug)]
pub struct MeshFile {
    dir: TempDir,
    path: PathBuf,
    options: MeshFileBuilder,
    sas: Vec<ManualSa>,
    auth: Mutex<Auth>,
}

impl MeshFile {
    /// A mesh file for every node of `lab`: nodes `n1..nN` at the lab's underlay addresses,
    /// overlay `ovl0` (VNI 4242) with 10.244.0.{i+1}/24, manual SAs for every ordered pair.
    pub fn builder(lab: &Lab) -> MeshFileBuilder {
        MeshFile::for_addresses((0..lab.len()).map(|i| lab.addr(i)).collect())
    }

    /// Like [`MeshFile::builder`] for nodes at `addresses` (node `i` is `n{i+1}`), no lab needed.
    pub fn for_addresses(addresses: Vec<IpAddr>) -> MeshFileBuilder {
        MeshFileBuilder {
            name: "lab".to_string(),
            addresses,
            encap: "udp".into(),
            mode: "transport".into(),
            cipher: "aes256gcm16".into(),
            extra: String::new(),
            manual: true,
            node_modes: Vec::new(),
            ike: Vec::new(),
            keys: false,
        }
    }

    fn lock_auth(&self) -> std::sync::MutexGuard<'_, Auth> {
        self.auth.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `--key FILE` for node `i`'s current private key (every node has one, written by
    /// `meshd keygen` with the file; it signs only when the file lists its public key).
    pub fn key_args(&self, i: usize) -> Vec<String> {
        vec!["--key".to_string(), self.key_file(i).display().to_string()]
    }

    /// Node `i`'s current private key file.
    pub fn key_file(&self, i: usize) -> PathBuf {
        self.lock_auth().key_files[i].clone()
    }

    /// Node `i`'s public keys as the file lists them.
    pub fn public_keys(&self, i: usize) -> Vec<String> {
        self.lock_auth().public_keys[i].clone()
    }

    /// Rewrites the file in place (for a reload) with or without the psk_file and with or
    /// without every node's public key: the steps of a move from the PSK to keys.
    pub fn rewrite_auth(&self, psk: bool, keys: bool) {
        {
            let mut auth = self.lock_auth();
            auth.psk = psk;
            for node in 0..auth.key_files.len() {
                auth.public_keys[node] = match keys {
                    true => vec![pubkey(&auth.key_files[node])],
                    false => Vec::new(),
                };
            }
        }
        write_private(&self.path, &self.render(&self.sas, "psk"));
    }

    /// A key rotation's first step for node `i`: a new private key `<key file>.new` next to
    /// the current one, and `public_keys = [old, new]` in the file, rewritten in place. The
    /// caller moves the new key over the old file once every node has the new file.
    pub fn add_new_key(&self, i: usize) -> PathBuf {
        let path = self.key_file(i).with_extension("key.new");
        let public = keygen(&path);
        self.lock_auth().public_keys[i].push(public);
        write_private(&self.path, &self.render(&self.sas, "psk"));
        path
    }

    /// A key rotation's last step: node `i` lists only its newest key.
    pub fn drop_old_keys(&self, i: usize) {
        {
            let mut auth = self.lock_auth();
            let keys = &mut auth.public_keys[i];
            keys.drain(..keys.len().saturating_sub(1));
        }
        write_private(&self.path, &self.render(&self.sas, "psk"));
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn sas(&self) -> &[ManualSa] {
        &self.sas
    }

    /// The SA `from -> to` (0-based node indexes).
    pub fn sa(&self, from: usize, to: usize) -> &ManualSa {
        self.sas
            .iter()
            .find(|sa| sa.from == from && sa.to == to)
            .unwrap_or_else(|| panic!("no manual SA n{} -> n{}", from + 1, to + 1))
    }

    /// Every SA's keys, for [`crate::Capture::read_decrypted`].
    pub fn esp_keys(&self) -> Vec<EspSaKeys> {
        self.sas.iter().map(ManualSa::esp_keys).collect()
    }

    /// The pre-shared key as meshd uses it: the psk file's bytes without one trailing newline
    /// (`\n` or `\r\n`), as mesh-config reads it. Hand these bytes to another IKE
    /// implementation (e.g. [`crate::CharonConfig::new`]).
    pub fn psk(&self) -> Vec<u8> {
        let mut bytes = fs::read(self.dir.path().join("psk")).expect("read psk");
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        bytes
    }

    pub fn text(&self) -> String {
        fs::read_to_string(&self.path).expect("read mesh.toml")
    }

    /// Writes a second mesh file `file_name` next to this one (same psk) that differs only in
    /// the key of the SA `from -> to`. Give it to one node to make that node's view of the SA
    /// disagree with the others' (e.g. a wrong inbound key).
    pub fn variant_with_key(&self, file_name: &str, from: usize, to: usize, key: &[u8]) -> PathBuf {
        assert_eq!(key.len(), 36, "a manual SA key is 32 bytes of key + 4 bytes of salt");
        let mut sas = self.sas.clone();
        let sa = sas
            .iter_mut()
            .find(|sa| sa.from == from && sa.to == to)
            .unwrap_or_else(|| panic!("no manual SA n{} -> n{}", from + 1, to + 1));
        sa.key = key.to_vec();
        let path = self.dir.path().join(file_name);
        write_private(&path, &self.render(&sas, "psk"));
        path
    }

    /// Writes a second mesh file `file_name` next to this one that names another, different
    /// pre-shared key: a node given it cannot authenticate with the others.
    pub fn variant_with_other_psk(&self, file_name: &str) -> PathBuf {
        let psk = self.dir.path().join("other-psk");
        fs::write(&psk, hex(&random_bytes(32))).expect("write psk");
        fs::set_permissions(&psk, fs::Permissions::from_mode(0o600)).expect("chmod psk");
        let path = self.dir.path().join(file_name);
        write_private(&path, &self.render(&self.sas, "other-psk"));
        path
    }

    /// Rewrites this mesh file in place (for a reload) with only the nodes `nodes` (0-based
    /// indexes; they keep their names, addresses and manual SA keys, so the pairs among them do
    /// not change) and `extra` TOML appended.
    pub fn rewrite_with(&self, nodes: &[usize], extra: &str) {
        let sas: Vec<ManualSa> =
            self.sas.iter().filter(|sa| nodes.contains(&sa.from) && nodes.contains(&sa.to)).cloned().collect();
        let mut text = self.render_nodes(nodes, &sas, "psk");
        text.push_str(extra);
        write_private(&self.path, &text);
    }

    fn render(&self, sas: &[ManualSa], psk_file: &str) -> String {
        let all: Vec<usize> = (0..self.options.addresses.len()).collect();
        self.render_nodes(&all, sas, psk_file)
    }

    fn render_nodes(&self, nodes: &[usize], sas: &[ManualSa], psk_file: &str) -> String {
        let o = &self.options;
        let mut t = String::new();
        let _ = writeln!(t, "# written by meshd-lab");
        let _ = writeln!(t, "[mesh]");
        let _ = writeln!(t, "name = \"{}\"", o.name);
        let auth = self.lock_auth();
        if auth.psk {
            let _ = writeln!(t, "psk_file = \"{psk_file}\"");
        }
        let _ = writeln!(t, "encap = \"{}\"", o.encap);
        let _ = writeln!(t, "mode = \"{}\"", o.mode);
        if !o.ike.is_empty() {
            let _ = writeln!(t, "\n[ike]");
            for (key, value) in &o.ike {
                let _ = writeln!(t, "{key} = {value}");
            }
        }
        for (i, addr) in o.addresses.iter().enumerate().filter(|(i, _)| nodes.contains(i)) {
            let _ = writeln!(t, "\n[[node]]\nname = \"{}\"\naddress = \"{}\"", node_name(i), addr);
            if let Some((_, mode)) = o.node_modes.iter().find(|(index, _)| *index == i) {
                let _ = writeln!(t, "mode = \"{mode}\"");
            }
            let keys: Vec<String> = auth.public_keys[i].iter().map(|k| format!("\"{k}\"")).collect();
            if !keys.is_empty() {
                let _ = writeln!(t, "public_keys = [{}]", keys.join(", "));
            }
        }
        let _ = writeln!(t, "\n[[overlay]]\nname = \"{OVERLAY_NAME}\"\nvni = {OVERLAY_VNI}\n[overlay.address]");
        for i in nodes {
            let _ = writeln!(t, "{} = \"{}/24\"", node_name(*i), overlay_addr(*i));
        }
        for sa in sas {
            let _ = writeln!(
                t,
                "\n[[manual_sa]]\nfrom = \"{}\"\nto = \"{}\"\nspi = \"{}\"\ncipher = \"{}\"\nkey = \"{}\"",
                sa.from_name,
                sa.to_name,
                sa.spi_text(),
                sa.cipher,
                sa.key_hex()
            );
        }
        if !o.extra.is_empty() {
            let _ = writeln!(t, "\n{}", o.extra);
        }
        t
    }
}

/// `meshd pubkey --key PATH`.
pub fn pubkey(path: &Path) -> String {
    let out =
        std::process::Command::new(meshd_bin()).arg("pubkey").arg("--key").arg(path).output().expect("meshd pubkey");
    assert!(out.status.success(), "meshd pubkey --key {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("base64").trim().to_string()
}

/// Writes a mesh file with mode 0600: with `[[manual_sa]]` keys meshd refuses any other.
pub fn write_private(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod 600 the mesh file");
}
