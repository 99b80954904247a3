//! This node's Ed25519 key: `meshd keygen` and `meshd pubkey`, and loading it for IKE
//! (`ike::identity` says how keys are used). The file format is `mesh_config`'s (base64 of the
//! 32-byte seed).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use mesh_config::{ConfigError, MeshConfig, Node, PrivateKeySeed, PublicKey};

use crate::ike::crypto::NodeKey;

/// `meshd keygen --out FILE`: a new private key in `out` (mode 0600, never over an existing
/// file); its public key.
pub fn keygen(out: &Path) -> Result<PublicKey, String> {
    let shown = out.display();
    let key = NodeKey::generate().map_err(|e| e.to_string())?;
    let seed = key.seed().map_err(|e| e.to_string())?;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(out).map_err(|e| {
        match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "{shown} already exists; keygen never overwrites a key: print its public key with `meshd pubkey --key {shown}`, or choose another --out"
            ),
            _ => format!("cannot create {shown}: {e}; check that its folder exists and that you may write there"),
        }
    })?;
    file.write_all(seed.to_file_text().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {shown}: {e}"))?;
    Ok(key.public_key())
}

/// `meshd pubkey --key FILE`: the public key of an existing private key file.
pub fn pubkey(key: &Path) -> Result<PublicKey, ConfigError> {
    let seed = PrivateKeySeed::read(key)?;
    NodeKey::from_seed(&seed)
        .map(|key| key.public_key())
        .map_err(|e| ConfigError::new(key, None, "private key", e.to_string(), "make a new key with `meshd keygen`"))
}

/// The key `node` signs with, when mesh.toml lists public keys for it (`None`: it uses the
/// pre-shared key); read from `explicit` (`meshd run --key`) or the mesh file's `key_file`.
/// The second value explains a key that is not one of the node's public keys: peers will refuse
/// it, but the daemon still starts (a peer's view of the node's keys is what counts; the
/// refusal then shows in `ikectl peers`).
pub fn load(
    config: &MeshConfig,
    node: &Node,
    explicit: Option<&Path>,
) -> Result<(Option<Arc<NodeKey>>, Option<ConfigError>), ConfigError> {
    if node.public_keys.is_empty() {
        return Ok((None, None));
    }
    let path = config.key_path(explicit);
    let seed = PrivateKeySeed::read(&path)?;
    let key = NodeKey::from_seed(&seed).map_err(|e| {
        ConfigError::new(&path, None, "private key", e.to_string(), "make a new key with `meshd keygen`")
    })?;
    let mismatch = mismatch(config, node, &path, key.public_key());
    Ok((Some(Arc::new(key)), mismatch))
}

/// Why the key in `path` is not one of `node`'s public keys, if it is not.
fn mismatch(config: &MeshConfig, node: &Node, path: &Path, public: PublicKey) -> Option<ConfigError> {
    if node.public_keys.contains(&public) {
        return None;
    }
    let owner = config.nodes.iter().find(|other| other.public_keys.contains(&public));
    let problem = match owner {
        Some(other) => format!(
            "the private key {} belongs to node \"{}\" (public key {public}), not to \"{}\"",
            path.display(),
            other.name,
            node.name
        ),
        None => format!(
            "the private key {} (public key {public}) matches no node's public key; node \"{}\" lists {}",
            path.display(),
            node.name,
            node.public_keys.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
        ),
    };
    Some(ConfigError::new(
        &config.path,
        Some(node.line),
        format!("node[{}].public_key", config.nodes.iter().position(|n| n.name == node.name).unwrap_or(0)),
        problem,
        "give this node its own key file (--key or [mesh] key_file), or list its public key (`meshd pubkey --key FILE`) in its [[node]] on every node",
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn keygen_writes_a_private_file_once_and_pubkey_reads_it() {
        let dir = tempfile_dir();
        let path = dir.join("node.key");
        let public = keygen(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(pubkey(&path).unwrap(), public);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 45, "one line of base64: {}", text.len());
        let again = keygen(&path).unwrap_err();
        assert!(again.contains("already exists") && again.contains("meshd pubkey"), "{again}");
        assert_eq!(pubkey(&path).unwrap(), public, "the first key is untouched");
        assert_ne!(keygen(&dir.join("other.key")).unwrap(), public);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("meshd-keygen-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
