//! Node identities: each `[[node]]` lists its Ed25519 public key(s) (`public_key = "BASE64"`, or
//! `public_keys = [old, new]` during a rotation) and each node holds its private key in its own
//! `key_file` (default [`DEFAULT_KEY_FILE`]).
//!
//! Both keys are written as standard base64 (RFC 4648 §4, with padding) of 32 bytes: the public
//! key as RFC 8032 encodes it, the private key as its RFC 8032 seed, one line, like WireGuard's
//! keys. One short line is easy to generate, copy, compare and store in a secret manager, and
//! the public key in mesh.toml looks like the output of `meshd keygen` and `meshd pubkey`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use toml::de::DeValue;
use zeroize::Zeroizing;

use crate::error::ConfigError;
use crate::reader::{type_name, At, Ctx, Tab};

/// Where a node's private key is unless `[mesh] key_file` or `meshd run --key` says otherwise.
pub const DEFAULT_KEY_FILE: &str = "/etc/meshd/node.key";
/// Ed25519 public keys and seeds are 32 bytes.
pub const ED25519_KEY_LEN: usize = 32;
/// Characters of the base64 public key shown as its short fingerprint (72 bits).
const FINGERPRINT_CHARS: usize = 12;
const PUBLIC_KEY_EXAMPLE: &str =
    "public_key = \"BASE64\" (the output of `meshd pubkey --key /etc/meshd/node.key` on that node)";

/// An Ed25519 public key (RFC 8032 encoding).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; ED25519_KEY_LEN]);

impl PublicKey {
    pub fn from_bytes(bytes: [u8; ED25519_KEY_LEN]) -> PublicKey {
        PublicKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; ED25519_KEY_LEN] {
        &self.0
    }

    /// Decodes base64 of exactly 32 bytes; the error says what is wrong.
    pub fn from_base64(text: &str) -> Result<PublicKey, String> {
        decode_key(text).map(|key| PublicKey(*key))
    }

    /// The first characters of the base64 key: enough to tell keys apart in `ikectl`, and found
    /// by searching mesh.toml.
    pub fn fingerprint(&self) -> String {
        let mut text = self.to_string();
        text.truncate(FINGERPRINT_CHARS);
        text
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64_encode(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// The 32-byte seed of a node's Ed25519 private key. Zeroized on drop; `Debug` shows nothing.
pub struct PrivateKeySeed(Zeroizing<[u8; ED25519_KEY_LEN]>);

impl PrivateKeySeed {
    pub fn new(seed: [u8; ED25519_KEY_LEN]) -> PrivateKeySeed {
        PrivateKeySeed(Zeroizing::new(seed))
    }

    pub fn as_bytes(&self) -> &[u8; ED25519_KEY_LEN] {
        &self.0
    }

    /// The file's contents: base64 of the seed and a newline.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}\n", base64_encode(&self.0[..])))
    }

    /// Reads a private key file: it must be a regular file that only its owner may read, holding
    /// base64 of a 32-byte seed (a final newline is allowed). Errors name the file and the fix.
    pub fn read(path: &Path) -> Result<PrivateKeySeed, ConfigError> {
        let shown = path.display().to_string();
        let error = |problem: String, fix: String| ConfigError::new(path, None, "private key", problem, fix);
        let generate = format!("create it with `meshd keygen --out {shown}` and put the public key it prints into this node's [[node]] public_key");
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                error(format!("the private key file {shown} does not exist"), generate.clone())
            }
            _ => error(
                format!("cannot read the private key file {shown}: {e}"),
                "check the path and that meshd (root) may read it".into(),
            ),
        })?;
        if !meta.is_file() {
            return Err(error(format!("the private key file {shown} is not a regular file"), generate));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(error(
                format!("the private key file {shown} has mode {mode:04o}: group or others may read or write it"),
                format!("run `chmod 600 {shown}`, and if others may have read it, make a new key (docs/operate.md, key rotation)"),
            ));
        }
        let mut text = Zeroizing::new(String::new());
        std::fs::File::open(path).and_then(|mut file| file.read_to_string(&mut text)).map_err(|e| {
            error(
                format!("cannot read the private key file {shown}: {e}"),
                "check that meshd (root) may read it".into(),
            )
        })?;
        decode_key(text.trim_end_matches(['\n', '\r'])).map(PrivateKeySeed).map_err(|problem| {
            error(format!("the private key file {shown} does not hold a private key: {problem}"), generate)
        })
    }
}

impl fmt::Debug for PrivateKeySeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeySeed(..redacted..)")
    }
}

/// `public_key = "..."` or `public_keys = ["...", "..."]` of one `[[node]]`, each with where it was
/// written; problems are reported.
pub(crate) fn node_keys(ctx: &mut Ctx<'_>, t: &Tab<'_, '_>) -> Vec<At<PublicKey>> {
    let mut written = Vec::new();
    if let Some(one) = t.str(ctx, "public_key", PUBLIC_KEY_EXAMPLE) {
        written.push((t.key("public_key"), one.v, one.span));
    }
    if let Some(v) = t.raw("public_keys") {
        let example = "public_keys = [\"OLD_BASE64\", \"NEW_BASE64\"]";
        match v.get_ref() {
            DeValue::Array(items) if !items.is_empty() => {
                for (i, item) in items.iter().enumerate() {
                    match item.get_ref() {
                        DeValue::String(s) => written.push((format!("{}[{i}]", t.key("public_keys")), s, item.span())),
                        other => ctx.err(
                            &item.span(),
                            format!("{}[{i}]", t.key("public_keys")),
                            format!("expected a string, found {}", type_name(other)),
                            format!("write it like {example}"),
                        ),
                    }
                }
            }
            DeValue::Array(_) => ctx.err(
                &v.span(),
                t.key("public_keys"),
                "the public key list is empty",
                format!("list the node's key(s), e.g. {example}, or remove the line"),
            ),
            _ => t.wrong_type(ctx, "public_keys", v, "an array of strings", example),
        }
        if t.raw("public_key").is_some() {
            ctx.err(
                &v.span(),
                t.key("public_keys"),
                "both public_key and public_keys are set",
                "keep one: public_key = \"...\" for one key, public_keys = [old, new] during a key rotation",
            );
        }
    }
    let mut keys: Vec<At<PublicKey>> = Vec::new();
    for (key, text, span) in written {
        match PublicKey::from_base64(text) {
            Ok(k) if keys.iter().any(|seen| seen.v == k) => {
                ctx.err(&span, key, "this key is listed twice for the node", "list each key once");
            }
            Ok(k) => keys.push(At { v: k, span }),
            Err(problem) => ctx.err(
                &span,
                key,
                format!("not an Ed25519 public key: {problem}"),
                format!("write {PUBLIC_KEY_EXAMPLE}"),
            ),
        }
    }
    keys
}

/// Checks across nodes: no key on two nodes, and either every node has keys or the mesh has a
/// psk_file for the nodes without (a mesh moving from PSK to keys). `nodes` gives each node's
/// label, `[[node]]` line and keys.
pub(crate) fn check_nodes(ctx: &mut Ctx<'_>, nodes: &[(String, usize, &[At<PublicKey>])], has_psk_file: bool) {
    let mut owner: BTreeMap<PublicKey, (usize, &str)> = BTreeMap::new();
    for (index, (label, _, keys)) in nodes.iter().enumerate() {
        for key in keys.iter() {
            match owner.get(&key.v) {
                Some((other, other_label)) if *other != index => ctx.err(
                    &key.span,
                    format!("node[{index}].public_key"),
                    format!("{label} has the public key of {other_label} (line {})", nodes[*other].1),
                    "every node needs its own key: run `meshd keygen --out /etc/meshd/node.key` on one of them and put the new public key here",
                ),
                _ => {
                    owner.insert(key.v, (index, label));
                }
            }
        }
    }
    let without: Vec<&str> =
        nodes.iter().filter(|(_, _, keys)| keys.is_empty()).map(|(label, _, _)| label.as_str()).collect();
    if !has_psk_file && !without.is_empty() && without.len() < nodes.len() {
        ctx.err_line(
            nodes.iter().find(|(_, _, keys)| keys.is_empty()).map(|(_, line, _)| *line),
            "node.public_key",
            format!("no public_key for {} while other nodes have one, and [mesh] has no psk_file", without.join(", ")),
            "give every node its public_key (`meshd pubkey --key /etc/meshd/node.key` on each), or keep psk_file in [mesh] while the mesh moves to keys",
        );
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes base64 of exactly 32 bytes (44 characters with one `=`).
fn decode_key(text: &str) -> Result<Zeroizing<[u8; ED25519_KEY_LEN]>, String> {
    let text = text.trim();
    let value = |c: u8| BASE64.iter().position(|b| *b == c).map(|v| v as u32);
    let digits = text.trim_end_matches('=').as_bytes();
    if let Some(bad) = digits.iter().find(|c| value(**c).is_none()) {
        return Err(format!("'{}' is not a base64 character", (*bad as char).escape_default()));
    }
    let bytes = digits.len() * 6 / 8;
    if bytes != ED25519_KEY_LEN || text.len() != 44 {
        return Err(format!(
            "it is {bytes} bytes of base64, an Ed25519 key is {ED25519_KEY_LEN} (44 characters ending in '=')"
        ));
    }
    let mut key = Zeroizing::new([0u8; ED25519_KEY_LEN]);
    let mut acc = 0u32;
    let mut bits = 0;
    let mut at = 0;
    for c in digits {
        acc = (acc << 6 | value(*c).unwrap_or(0)) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            key[at] = (acc >> bits) as u8;
            at += 1;
        }
    }
    if acc & ((1 << bits) - 1) != 0 {
        return Err("its last character has bits set past the 32 bytes (not canonical base64)".into());
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn public_keys_round_trip_and_explain_mistakes() {
        // `python3 -c "import base64;print(base64.b64encode(bytes(range(32))).decode())"`
        let text = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let key = PublicKey::from_base64(text).unwrap();
        assert_eq!(key.as_bytes(), &core::array::from_fn::<u8, 32, _>(|i| i as u8));
        assert_eq!(key.to_string(), text);
        assert_eq!(key.fingerprint(), "AAECAwQFBgcI");
        assert!(PublicKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==")
            .unwrap_err()
            .contains("31 bytes"));
        assert!(PublicKey::from_base64(&format!("{}AAAA", &text[..43])).unwrap_err().contains("35 bytes"));
        assert!(PublicKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh!=").unwrap_err().contains("'!'"));
        assert!(PublicKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=")
            .unwrap_err()
            .contains("canonical"));
        assert!(PublicKey::from_base64("").is_err());
    }

    #[test]
    fn private_key_file_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let missing = PrivateKeySeed::read(&path).unwrap_err().to_string();
        assert!(missing.contains("does not exist") && missing.contains("meshd keygen --out"), "{missing}");
        let seed = PrivateKeySeed::new([7; 32]);
        std::fs::write(&path, seed.to_file_text().as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = PrivateKeySeed::read(&path).unwrap_err().to_string();
        assert!(open.contains("mode 0644") && open.contains("chmod 600"), "{open}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(PrivateKeySeed::read(&path).unwrap().as_bytes(), &[7; 32]);
        assert_eq!(format!("{seed:?}"), "PrivateKeySeed(..redacted..)");
        std::fs::write(&path, "c2hvcnQ=\n").unwrap();
        let short = PrivateKeySeed::read(&path).unwrap_err().to_string();
        assert!(short.contains("5 bytes") && !short.contains("c2hvcnQ"), "{short}");
    }
}

#[cfg(test)]
mod mesh_file_tests {
    use crate::{ConfigError, MeshConfig};

    const K1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    fn mesh(n1: &str, n2: &str, mesh_extra: &str) -> Result<MeshConfig, Vec<ConfigError>> {
        let text = format!(
            "[mesh]\nname = \"lab\"\n{mesh_extra}\n[[node]]\nname = \"n1\"\naddress = \"198.18.0.1\"\n{n1}\n[[node]]\nname = \"n2\"\naddress = \"198.18.0.2\"\n{n2}\n"
        );
        MeshConfig::parse(std::path::Path::new("/nonexistent/mesh.toml"), &text).map_err(|e| e.0)
    }

    fn only_error(result: Result<MeshConfig, Vec<ConfigError>>) -> String {
        let errors = result.unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors[0].to_string()
    }

    #[test]
    fn keys_on_every_node_need_no_psk_file() {
        let config = mesh(&format!("public_key = \"{K1}\""), &format!("public_keys = [\"{K1}\", \"{K2}\"]"), "");
        let error = only_error(config);
        assert!(
            error.contains(":11: node[1].public_key") && error.contains("has the public key of node \"n1\" (line 4)"),
            "{error}"
        );
        let config =
            mesh(&format!("public_key = \"{K1}\""), &format!("public_keys = [\"{K2}\"]"), "key_file = \"n.key\"")
                .unwrap();
        assert_eq!(config.nodes[0].public_keys[0].to_string(), K1);
        assert_eq!(config.nodes[1].public_keys.len(), 1);
        assert_eq!(config.key_path(None), std::path::Path::new("/nonexistent/n.key"));
        assert_eq!(config.key_path(Some("/k".as_ref())), std::path::Path::new("/k"));
    }

    #[test]
    fn mistakes_are_explained() {
        let error = only_error(mesh(&format!("public_key = \"{K1}\""), "", ""));
        assert!(
            error.contains(":8: node.public_key: no public_key for node \"n2\"") && error.contains("psk_file"),
            "{error}"
        );
        let error = only_error(mesh("public_key = \"c2hvcnQ=\"", "", ""));
        assert!(error.contains(":7: node[0].public_key: not an Ed25519 public key: it is 5 bytes"), "{error}");
        let error = only_error(mesh("public_keys = []", "", ""));
        assert!(error.contains("node[0].public_keys: the public key list is empty"), "{error}");
        let error =
            only_error(mesh(&format!("public_keys = [\"{K1}\", \"{K1}\"]"), &format!("public_key = \"{K2}\""), ""));
        assert!(error.contains("node[0].public_keys[1]: this key is listed twice"), "{error}");
        let both = format!("public_key = \"{K1}\"\npublic_keys = [\"{K1}\"]");
        let errors = mesh(&both, &format!("public_key = \"{K2}\""), "").unwrap_err();
        assert!(errors.iter().any(|e| e.problem.contains("both public_key and public_keys")), "{errors:?}");
    }
}
