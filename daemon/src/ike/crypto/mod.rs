//! IKEv2 key derivation, authentication and the encrypted (SK) payload.
//!
//! The transforms are the ones in docs/ike.md: PRF_HMAC_SHA2_256, Diffie-Hellman group 31
//! (Curve25519, RFC 8031), and for the IKE SA itself ENCR_AES_GCM_16 with a 256-bit key
//! (RFC 5282) or ENCR_CHACHA20_POLY1305 (RFC 7634). Both AEADs take 36 bytes of key material
//! (32-byte key, 4-byte salt), an 8-byte explicit IV and a 16-byte ICV, and have no separate
//! integrity key (SK_ai and SK_ar are empty).
//!
//! - [`prf`](mod@prf): PRF_HMAC_SHA2_256 and prf+ (RFC 7296 §2.13).
//! - [`dh`]: the X25519 exchange (RFC 8031, RFC 7748).
//! - [`keys`]: SKEYSEED and the IKE SA keys (§2.14), IKE SA rekeying (§2.18), Child SA KEYMAT
//!   (§2.17).
//! - [`sk`]: sealing and opening the Encrypted payload body (§3.14, RFC 5282 §3-5, RFC 7634 §2-3).
//! - [`auth`]: the pre-shared key AUTH value (§2.15).
//! - [`signature`]: Ed25519 digital signature AUTH (RFC 7427, RFC 8420) and the node's key.
//! - [`nat`]: the NAT_DETECTION_*_IP hash (§2.23).
//! - [`cookie`]: stateless COOKIE values with a rotating secret (§2.6).
//!
//! Nothing here parses or builds messages: every function takes the bytes it needs. Key bytes
//! live in [`Zeroizing`](zeroize::Zeroizing) buffers (or in aws-lc, which wipes what it frees),
//! and no `Debug` or `Display` here shows them.

pub mod auth;
pub mod cookie;
pub mod dh;
pub mod keys;
pub mod nat;
pub mod prf;
pub mod signature;
pub mod sk;

pub use self::auth::{psk_auth, verify_psk_auth, SignedOctets};
pub use self::cookie::{CookieJar, COOKIE_LEN};
pub use self::dh::{X25519KeyPair, X25519_GROUP, X25519_PUBLIC_LEN};
pub use self::keys::{ChildSaKeys, IkeSaKeys, SpiPair, MAX_NONCE_LEN, MIN_NONCE_LEN};
pub use self::nat::{nat_detection_hash, NAT_DETECTION_HASH_LEN};
pub use self::prf::{prf, prf_plus, PRF_KEY_LEN, PRF_OUTPUT_LEN};
pub use self::signature::{verify_auth_signature, NodeKey, ED25519_SIGNATURE_LEN};
pub use self::sk::{sk_body_len, SkOpener, SkSealer, SK_ICV_LEN, SK_IV_LEN, SK_OVERHEAD};

/// Which end of an IKE SA we are.
///
/// For an IKE SA made by IKE_SA_INIT this is the original initiator (the IKE header's
/// Initiator flag). For an IKE SA made by rekeying (RFC 7296 §2.18), the initiator is the peer
/// that sent the CREATE_CHILD_SA request that created it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The end that sent the first request.
    Initiator,
    /// The other end.
    Responder,
}

impl Role {
    /// The other end's role.
    pub fn peer(self) -> Role {
        match self {
            Role::Initiator => Role::Responder,
            Role::Responder => Role::Initiator,
        }
    }
}

/// Why an IKEv2 crypto operation failed. The messages name what went wrong for an operator and
/// never include key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    // --- Diffie-Hellman (group 31) ---
    /// The peer's KE data is not a 32-byte Curve25519 public value.
    #[error("the peer's Curve25519 public value (KE data) is {got} bytes, expected 32")]
    DhPublicLength {
        /// The length that was received.
        got: usize,
    },
    /// The peer's public value gives the all-zero shared secret (a low-order point; RFC 8031
    /// §2, RFC 7748 §6.1), or the library refused it.
    #[error("the peer's Curve25519 public value is invalid: it yields the all-zero shared secret")]
    DhInvalidPublic,

    // --- key derivation ---
    /// A nonce is outside the 16..=256 bytes RFC 7296 §2.10 and §3.9 allow.
    #[error("an IKE nonce is {got} bytes; IKEv2 nonces must be 16 to 256 bytes")]
    NonceLength {
        /// The length that was given.
        got: usize,
    },
    /// prf+ was asked for more than 255 blocks (RFC 7296 §2.13).
    #[error("prf+ cannot produce {requested} bytes: at most 255 blocks of 32 bytes (8160)")]
    PrfPlusTooLong {
        /// The number of bytes requested.
        requested: usize,
    },

    // --- Encrypted (SK) payload ---
    /// The SK payload body cannot hold an IV, the pad length byte and an ICV.
    #[error("the Encrypted payload body is {got} bytes, too short for IV, pad length and ICV (25)")]
    SkTooShort {
        /// The body length that was received.
        got: usize,
    },
    /// The ICV did not verify: wrong keys, or the message was changed in transit.
    #[error("the Encrypted payload failed its integrity check (wrong keys or a modified message)")]
    SkIntegrity,
    /// The decrypted Pad Length is larger than the plaintext before it.
    #[error("the Encrypted payload's pad length ({pad_len}) exceeds its {available} bytes of payload and padding")]
    SkPadLength {
        /// The Pad Length byte.
        pad_len: u8,
        /// Bytes of plaintext before the Pad Length byte.
        available: usize,
    },
    /// Every IV of this direction's key has been used; the IKE SA must be rekeyed.
    #[error("the IV counter of this IKE SA's key is exhausted; the IKE SA must be rekeyed")]
    SkIvExhausted,

    // --- authentication and cookies ---
    /// The AUTH payload does not match what the pre-shared key gives.
    #[error("the AUTH payload does not match the pre-shared key (different PSK, or the exchange was tampered with)")]
    AuthMismatch,
    /// The AUTH signature does not verify with any public key mesh.toml lists for the peer.
    #[error("the AUTH signature does not verify with the public key(s) mesh.toml lists for this node (another node's key, an old key, or a tampered exchange)")]
    SignatureMismatch,
    /// A COOKIE was not made by us with the current or the previous secret for this request.
    #[error("the COOKIE is not valid for this request (forged, expired or from another address)")]
    CookieInvalid,

    // --- the library ---
    /// aws-lc failed where it should not (random generation, key setup).
    #[error("the crypto library failed: {0}")]
    Library(&'static str),
}

/// Shows public bytes (SPIs, public values) as hex in `Debug` output.
pub(crate) struct HexBytes<'a>(pub(crate) &'a [u8]);

impl core::fmt::Debug for HexBytes<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    /// Decodes hex, ignoring whitespace. Test vectors only.
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert!(digits.chunks_exact(2).remainder().is_empty(), "odd number of hex digits");
        digits.chunks(2).map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap()).collect()
    }

    /// Encodes bytes as lowercase hex.
    pub(crate) fn to_hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The signed octets of the AUTH test vectors (auth.rs, signature.rs): nonces 0..32 and
    /// 32..64, IKE_SA_INIT messages of 200 bytes, IDs ID_IPV4_ADDR 198.18.0.1 and 198.18.0.2.
    pub(crate) struct AuthVectors {
        ni: Vec<u8>,
        nr: Vec<u8>,
        m1: Vec<u8>,
        m2: Vec<u8>,
        idi: Vec<u8>,
        idr: Vec<u8>,
    }

    impl AuthVectors {
        pub(crate) fn new() -> AuthVectors {
            AuthVectors {
                ni: (0u8..32).collect(),
                nr: (32u8..64).collect(),
                m1: b"IKE_SA_INIT request ".repeat(10),
                m2: b"IKE_SA_INIT response".repeat(10),
                idi: hex("01000000c6120001"),
                idr: hex("01000000c6120002"),
            }
        }

        pub(crate) fn initiator(&self) -> super::SignedOctets<'_> {
            super::SignedOctets { real_message: &self.m1, peer_nonce: &self.nr, id_payload_body: &self.idi }
        }

        pub(crate) fn responder(&self) -> super::SignedOctets<'_> {
            super::SignedOctets { real_message: &self.m2, peer_nonce: &self.ni, id_payload_body: &self.idr }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_peer() {
        assert_eq!(Role::Initiator.peer(), Role::Responder);
        assert_eq!(Role::Responder.peer(), Role::Initiator);
    }

    #[test]
    fn error_messages_are_readable() {
        let all = [
            CryptoError::DhPublicLength { got: 31 },
            CryptoError::DhInvalidPublic,
            CryptoError::NonceLength { got: 8 },
            CryptoError::PrfPlusTooLong { requested: 9000 },
            CryptoError::SkTooShort { got: 3 },
            CryptoError::SkIntegrity,
            CryptoError::SkPadLength { pad_len: 200, available: 10 },
            CryptoError::SkIvExhausted,
            CryptoError::AuthMismatch,
            CryptoError::SignatureMismatch,
            CryptoError::CookieInvalid,
            CryptoError::Library("random generation"),
        ];
        for e in all {
            let msg = e.to_string();
            assert!(msg.len() > 20, "{msg}");
        }
        assert!(CryptoError::DhPublicLength { got: 31 }.to_string().contains("31"));
        assert!(CryptoError::NonceLength { got: 8 }.to_string().contains('8'));
    }
}
