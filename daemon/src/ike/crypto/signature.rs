//! Digital signature authentication with Ed25519 (RFC 7427 auth method 14, RFC 8420).
//!
//! The signer signs its signed octets of RFC 7296 §2.15 as they are, without hashing them first
//! (Ed25519 is used as "pure" EdDSA, the Identity hash of RFC 8420 §2):
//!
//! ```text
//! InitiatorSignedOctets = RealMessage1 | NonceRData | prf(SK_pi, RestOfInitIDPayload)
//! ResponderSignedOctets = RealMessage2 | NonceIData | prf(SK_pr, RestOfRespIDPayload)
//! ```
//!
//! Putting the signature into the AUTH payload with its AlgorithmIdentifier is the message
//! layer's work (`ike::message::DigitalSignature`).

use aws_lc_rs::encoding::AsBigEndian;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use mesh_config::{PrivateKeySeed, PublicKey, ED25519_KEY_LEN};

use super::auth::SignedOctets;
use super::prf::prf;
use super::CryptoError;

/// Length of an Ed25519 signature.
pub const ED25519_SIGNATURE_LEN: usize = 64;

/// A node's Ed25519 key pair. `Debug` shows the public key only.
pub struct NodeKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl NodeKey {
    /// A new random key.
    pub fn generate() -> Result<NodeKey, CryptoError> {
        let pair = Ed25519KeyPair::generate().map_err(|_| CryptoError::Library("Ed25519 key generation"))?;
        Ok(NodeKey::from_pair(pair))
    }

    pub fn from_seed(seed: &PrivateKeySeed) -> Result<NodeKey, CryptoError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.as_bytes())
            .map_err(|_| CryptoError::Library("Ed25519 key from seed"))?;
        Ok(NodeKey::from_pair(pair))
    }

    fn from_pair(pair: Ed25519KeyPair) -> NodeKey {
        let mut public = [0u8; ED25519_KEY_LEN];
        public.copy_from_slice(pair.public_key().as_ref());
        NodeKey { pair, public: PublicKey::from_bytes(public) }
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The seed, for writing the private key file.
    pub fn seed(&self) -> Result<PrivateKeySeed, CryptoError> {
        let failed = |_| CryptoError::Library("Ed25519 seed export");
        let seed = self.pair.seed().map_err(failed)?;
        let bytes = seed.as_be_bytes().map_err(failed)?;
        let mut out = [0u8; ED25519_KEY_LEN];
        out.copy_from_slice(bytes.as_ref());
        let seed = PrivateKeySeed::new(out);
        zeroize::Zeroize::zeroize(&mut out);
        Ok(seed)
    }

    /// Our AUTH signature. `sk_p` is SK_pi when we are the initiator, SK_pr otherwise; `octets`
    /// are our own first message, the peer's nonce and our ID payload body.
    pub fn sign_auth(&self, sk_p: &[u8], octets: &SignedOctets<'_>) -> [u8; ED25519_SIGNATURE_LEN] {
        let mut out = [0u8; ED25519_SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(&signed_octets(sk_p, octets)).as_ref());
        out
    }
}

impl core::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "NodeKey({})", self.public)
    }
}

/// Checks the peer's Ed25519 signature over its signed octets with each of `keys` (the keys
/// mesh.toml lists for the node the peer's ID names); the key that verified it.
pub fn verify_auth_signature(
    keys: &[PublicKey],
    sk_p: &[u8],
    octets: &SignedOctets<'_>,
    signature: &[u8],
) -> Result<PublicKey, CryptoError> {
    let message = signed_octets(sk_p, octets);
    keys.iter()
        .find(|key| UnparsedPublicKey::new(&signature::ED25519, key.as_bytes()).verify(&message, signature).is_ok())
        .copied()
        .ok_or(CryptoError::SignatureMismatch)
}

/// The octets a signature covers: message, nonce and prf(SK_p, ID payload body).
fn signed_octets(sk_p: &[u8], octets: &SignedOctets<'_>) -> Vec<u8> {
    let maced_id = prf(sk_p, octets.id_payload_body);
    [octets.real_message, octets.peer_nonce, &maced_id[..]].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::crypto::test_util::{hex, to_hex, AuthVectors};

    // The inputs of auth.rs's PSK test (SK_pi, SK_pr as keys.rs derives them).
    const SK_PI: &str = "721d76bb7099af838ea90083fb88845179dfff839f5de7a793fca39600e596e0";
    const SK_PR: &str = "e6cfe467ae5711adb853b46d93717b9a66e4cae8f4c28cb062dc95becee57c5e";

    /// Public keys and signatures computed independently with Python's `cryptography` 48.0.0
    /// (OpenSSL's Ed25519) and `hmac`, for the seeds bytes(range(100, 132)) (initiator) and
    /// bytes(range(200, 232)) (responder):
    ///
    /// ```text
    /// import hmac, hashlib
    /// from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    /// from cryptography.hazmat.primitives import serialization
    /// p = lambda k, d: hmac.new(k, d, hashlib.sha256).digest()
    /// Ni = bytes(range(32)); Nr = bytes(range(32, 64))
    /// pi = bytes.fromhex(SK_PI); pr = bytes.fromhex(SK_PR)
    /// m1 = b'IKE_SA_INIT request ' * 10; m2 = b'IKE_SA_INIT response' * 10
    /// for seed, msg, nonce, sk, idb in [(bytes(range(100, 132)), m1, Nr, pi, '01000000c6120001'),
    ///                                   (bytes(range(200, 232)), m2, Ni, pr, '01000000c6120002')]:
    ///     key = Ed25519PrivateKey.from_private_bytes(seed)
    ///     print(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex())
    ///     print(key.sign(msg + nonce + p(sk, bytes.fromhex(idb))).hex())
    /// ```
    #[test]
    fn signatures_against_python() {
        let vectors = AuthVectors::new();
        let (i, r) = (vectors.initiator(), vectors.responder());
        let seed = |first: u8| PrivateKeySeed::new(core::array::from_fn(|n| first + n as u8));
        let initiator = NodeKey::from_seed(&seed(100)).unwrap();
        let responder = NodeKey::from_seed(&seed(200)).unwrap();
        assert_eq!(
            to_hex(initiator.public_key().as_bytes()),
            "0bbc346a57667c380120bd9c7fd7e51d2c5fdfea37cd2f5bf405b2c6bf6f2d78"
        );
        assert_eq!(
            to_hex(responder.public_key().as_bytes()),
            "32b53e882e3daac180d7a5f6224d61b6401b43f901db09f0e4d84ce4e4a2718b"
        );
        let sig_i = "41f3ef8562bdd15f6bc90ec48b114dcc24108c7b71a8066b7758e043ee70ca0b\
                     29e7d98748ea7655e4982c454acd8dd44152fc9b8fc25315b7974c11a99caa0e";
        let sig_r = "568a3274805f79b94be333d81774da6fdad39c06fa2e67a7a4281f423e953b93\
                     f9447f3bbdb2957074541aa1ee7215b4a702175416d7998eaac17adab4d31c0d";
        assert_eq!(to_hex(&initiator.sign_auth(&hex(SK_PI), &i)), sig_i.replace(' ', ""));
        assert_eq!(to_hex(&responder.sign_auth(&hex(SK_PR), &r)), sig_r.replace(' ', ""));
        let both = [responder.public_key(), initiator.public_key()];
        assert_eq!(verify_auth_signature(&both, &hex(SK_PI), &i, &hex(sig_i)), Ok(initiator.public_key()));
        assert_eq!(verify_auth_signature(&both[..1], &hex(SK_PR), &r, &hex(sig_r)), Ok(responder.public_key()));
        assert_eq!(initiator.seed().unwrap().as_bytes(), seed(100).as_bytes());
    }

    #[test]
    fn verify_rejects_any_change() {
        let key = NodeKey::generate().unwrap();
        let other = NodeKey::generate().unwrap();
        let (sk, msg, nonce, id) = ([5u8; 32], b"message one".to_vec(), [6u8; 32], hex("01000000c6120001"));
        let o = SignedOctets { real_message: &msg, peer_nonce: &nonce, id_payload_body: &id };
        let good = key.sign_auth(&sk, &o);
        let keys = [key.public_key()];
        verify_auth_signature(&keys, &sk, &o, &good).unwrap();
        for at in [0, 31, 32, 63] {
            let mut bad = good;
            bad[at] ^= 1;
            assert_eq!(verify_auth_signature(&keys, &sk, &o, &bad), Err(CryptoError::SignatureMismatch));
        }
        assert!(verify_auth_signature(&keys, &sk, &o, &good[..63]).is_err());
        assert!(verify_auth_signature(&[other.public_key()], &sk, &o, &good).is_err());
        assert!(verify_auth_signature(&[], &sk, &o, &good).is_err());
        assert!(verify_auth_signature(&keys, &[4u8; 32], &o, &good).is_err());
        let other_id = hex("01000000c6120002");
        for changed in [
            SignedOctets { real_message: b"message two", ..o },
            SignedOctets { peer_nonce: &[7u8; 32], ..o },
            SignedOctets { id_payload_body: &other_id, ..o },
        ] {
            assert!(verify_auth_signature(&keys, &sk, &changed, &good).is_err());
        }
        assert!(!format!("{key:?}").contains(&to_hex(key.seed().unwrap().as_bytes())));
    }
}
