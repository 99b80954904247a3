//! Diffie-Hellman group 31, Curve25519 (RFC 8031): X25519 (RFC 7748) with aws-lc.
//!
//! The KE payload's Key Exchange Data is the 32-byte public value, as is (RFC 8031 §2); the
//! shared secret g^ir is the 32-byte X25519 output. An all-zero result (the peer sent a
//! low-order point) is refused, as RFC 8031 §2 and RFC 7748 §6.1 ask.

use core::fmt;

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use zeroize::Zeroizing;

use super::CryptoError;

/// Length of a public value (the KE payload's data) and of the shared secret.
pub const X25519_PUBLIC_LEN: usize = 32;

/// An X25519 key pair for one exchange. The private key stays inside aws-lc (which wipes it
/// when freed) and is used once: [`agree`](Self::agree) consumes the pair.
pub struct X25519KeyPair {
    private: PrivateKey,
    public: [u8; X25519_PUBLIC_LEN],
}

impl X25519KeyPair {
    /// A fresh random key pair.
    pub fn generate() -> Result<Self, CryptoError> {
        let private = PrivateKey::generate(&X25519).map_err(|_| CryptoError::Library("X25519 key generation"))?;
        Self::from_private(private)
    }

    fn from_private(private: PrivateKey) -> Result<Self, CryptoError> {
        let public = private.compute_public_key().map_err(|_| CryptoError::Library("X25519 public key"))?;
        let public: [u8; X25519_PUBLIC_LEN] =
            public.as_ref().try_into().map_err(|_| CryptoError::Library("X25519 public key length"))?;
        Ok(X25519KeyPair { private, public })
    }

    /// A key pair from a fixed 32-byte scalar (test vectors).
    #[cfg(test)]
    pub(crate) fn from_scalar(scalar: &[u8]) -> Self {
        Self::from_private(PrivateKey::from_private_key(&X25519, scalar).unwrap()).unwrap()
    }

    /// The public value to send as Key Exchange Data.
    pub fn public_key(&self) -> &[u8; X25519_PUBLIC_LEN] {
        &self.public
    }

    /// The shared secret g^ir with the peer's Key Exchange Data.
    ///
    /// Fails when `peer_public` is not 32 bytes, or when the result would be all zeros.
    pub fn agree(self, peer_public: &[u8]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        if peer_public.len() != X25519_PUBLIC_LEN {
            return Err(CryptoError::DhPublicLength { got: peer_public.len() });
        }
        let peer = UnparsedPublicKey::new(&X25519, peer_public);
        // aws-lc itself refuses an all-zero result; the check in the closure keeps that
        // guarantee here whatever the library does.
        agreement::agree(&self.private, peer, CryptoError::DhInvalidPublic, |secret| {
            if secret.len() != X25519_PUBLIC_LEN {
                return Err(CryptoError::Library("X25519 shared secret length"));
            }
            let mut out = Zeroizing::new([0u8; 32]);
            out.copy_from_slice(secret);
            if aws_lc_rs::constant_time::verify_slices_are_equal(&out[..], &[0u8; 32]).is_ok() {
                return Err(CryptoError::DhInvalidPublic);
            }
            Ok(out)
        })
    }
}

impl fmt::Debug for X25519KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The public value is public; the private key is never shown.
        f.debug_struct("X25519KeyPair").field("public", &super::HexBytes(&self.public)).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::crypto::test_util::hex;

    /// X25519 through the same aws-lc call `agree` makes, with a fixed scalar.
    fn x25519(scalar: &[u8], u: &[u8]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        X25519KeyPair::from_scalar(scalar).agree(u)
    }

    /// RFC 7748 §5.2, the two single X25519 test vectors. The second input u-coordinate has its
    /// top bit set, which X25519 must ignore (§5). Values from RFC 7748 as quoted by, e.g.,
    /// Catacomb's t/x25519 test file (chiark.greenend.org.uk) and several other test suites
    /// found with the search tool.
    #[test]
    fn rfc7748_section_5_2_vectors() {
        let cases = [
            (
                "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
                "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
                "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
            ),
            (
                "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
                "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
                "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
            ),
        ];
        for (k, u, out) in cases {
            assert_eq!(x25519(&hex(k), &hex(u)).unwrap().to_vec(), hex(out));
        }
    }

    /// RFC 7748 §5.2, the iterated test: k = u = 9, then k, u = X25519(k, u), k. After 1 and
    /// 1000 iterations (the 1,000,000 one is too slow for a unit test).
    #[test]
    fn rfc7748_section_5_2_iterated() {
        let mut k = [0u8; 32];
        k[0] = 9;
        let mut u = k;
        for i in 1..=1000 {
            let next = x25519(&k, &u).unwrap();
            u = k;
            k = *next;
            if i == 1 {
                assert_eq!(k.to_vec(), hex("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"));
            }
        }
        assert_eq!(k.to_vec(), hex("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"));
    }

    /// RFC 7748 §6.1: Alice's and Bob's key pairs and their shared secret.
    #[test]
    fn rfc7748_section_6_1_diffie_hellman() {
        let alice =
            X25519KeyPair::from_scalar(&hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"));
        let bob = X25519KeyPair::from_scalar(&hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"));
        assert_eq!(
            alice.public_key().to_vec(),
            hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(bob.public_key().to_vec(), hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"));
        let alice_pub = *alice.public_key();
        let bob_pub = *bob.public_key();
        let k = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
        assert_eq!(alice.agree(&bob_pub).unwrap().to_vec(), hex(k));
        assert_eq!(bob.agree(&alice_pub).unwrap().to_vec(), hex(k));
    }

    #[test]
    fn random_pairs_agree() {
        let a = X25519KeyPair::generate().unwrap();
        let b = X25519KeyPair::generate().unwrap();
        assert_ne!(a.public_key(), b.public_key());
        let (pa, pb) = (*a.public_key(), *b.public_key());
        let ka = a.agree(&pb).unwrap();
        let kb = b.agree(&pa).unwrap();
        assert_eq!(*ka, *kb);
        assert_ne!(*ka, [0u8; 32]);
    }

    #[test]
    fn wrong_length_is_refused() {
        for len in [0, 1, 31, 33, 65] {
            let pair = X25519KeyPair::generate().unwrap();
            assert_eq!(pair.agree(&vec![9u8; len]).unwrap_err(), CryptoError::DhPublicLength { got: len });
        }
    }

    /// u = 0 and u = 1 are points of small order (1 and 4): with any clamped scalar (a multiple
    /// of 8) the result is all zeros, which RFC 7748 §6.1 says to detect.
    #[test]
    fn low_order_points_are_refused() {
        let mut one = [0u8; 32];
        one[0] = 1;
        for u in [[0u8; 32], one] {
            let pair = X25519KeyPair::generate().unwrap();
            assert_eq!(pair.agree(&u).unwrap_err(), CryptoError::DhInvalidPublic);
        }
    }

    #[test]
    fn debug_shows_only_the_public_value() {
        let pair = X25519KeyPair::from_scalar(&hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"));
        let shown = format!("{pair:?}");
        assert!(shown.contains("8520f009"), "{shown}");
        assert!(!shown.contains("77076d0a"), "{shown}");
    }
}
