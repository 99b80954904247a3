//! The Authentication Data of a digital signature AUTH payload (RFC 7427 §3), and the
//! SIGNATURE_HASH_ALGORITHMS notify data (§4):
//!
//! ```text
//! AUTH (method 14): ASN.1 length (1) | AlgorithmIdentifier (DER, that many bytes) | signature
//! SIGNATURE_HASH_ALGORITHMS: hash algorithm (2) | hash algorithm (2) | ...
//! ```

use crate::wire::{Error, Result};

use super::codec::Reader;
use super::ids::hash_algorithm;

/// The AlgorithmIdentifier of Ed25519 (RFC 8420 §3, RFC 8410 §3): SEQUENCE { OID 1.3.101.112 },
/// parameters absent.
pub const ED25519_ALGORITHM_IDENTIFIER: [u8; 7] = [0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];

/// The parts of a method 14 Authentication Data field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigitalSignature<'a> {
    /// DER AlgorithmIdentifier, as received.
    pub algorithm_identifier: &'a [u8],
    pub signature: &'a [u8],
}

impl<'a> DigitalSignature<'a> {
    /// An Ed25519 signature.
    pub fn ed25519(signature: &'a [u8]) -> DigitalSignature<'a> {
        DigitalSignature { algorithm_identifier: &ED25519_ALGORITHM_IDENTIFIER, signature }
    }

    /// Splits the Authentication Data; the AlgorithmIdentifier must not be empty.
    pub fn parse(data: &'a [u8]) -> Result<DigitalSignature<'a>> {
        let mut reader = Reader::new(data);
        let length = usize::from(reader.u8()?);
        if length == 0 {
            return Err(Error::Malformed("IKE AUTH signature with an empty AlgorithmIdentifier"));
        }
        let algorithm_identifier = reader.take(length)?;
        Ok(DigitalSignature { algorithm_identifier, signature: reader.rest() })
    }

    pub fn is_ed25519(&self) -> bool {
        self.algorithm_identifier == ED25519_ALGORITHM_IDENTIFIER
    }

    /// The Authentication Data: length, AlgorithmIdentifier, signature.
    ///
    /// # Panics
    /// If the AlgorithmIdentifier is longer than 255 bytes.
    pub fn to_auth_data(&self) -> Vec<u8> {
        let length = u8::try_from(self.algorithm_identifier.len()).expect("AlgorithmIdentifier of at most 255 bytes");
        [&[length][..], self.algorithm_identifier, self.signature].concat()
    }
}

/// The notify data announcing what we verify: Ed25519 with the Identity "hash".
pub fn signature_hash_algorithms() -> Vec<u8> {
    hash_algorithm::IDENTITY.to_be_bytes().to_vec()
}

/// Whether SIGNATURE_HASH_ALGORITHMS data lists Identity (RFC 8420 §2: what Ed25519 needs). Data
/// of an odd length is malformed.
pub fn lists_identity_hash(data: &[u8]) -> Result<bool> {
    if !data.len().is_multiple_of(2) {
        return Err(Error::Malformed("SIGNATURE_HASH_ALGORITHMS data of an odd length"));
    }
    Ok(data.chunks_exact(2).any(|pair| u16::from_be_bytes([pair[0], pair[1]]) == hash_algorithm::IDENTITY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_auth_data_bytes() {
        let signature = [0xa5; 64];
        let data = DigitalSignature::ed25519(&signature).to_auth_data();
        assert_eq!(data[..8], [0x07, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70]);
        assert_eq!(data.len(), 8 + 64);
        let parsed = DigitalSignature::parse(&data).unwrap();
        assert!(parsed.is_ed25519());
        assert_eq!(parsed.signature, signature);
        assert_eq!(parsed, DigitalSignature::ed25519(&signature));
    }

    #[test]
    fn other_algorithms_and_truncation() {
        // sha256WithRSAEncryption (RFC 7427 Appendix A.1.2): parses, is not Ed25519.
        let rsa = [
            0x0f, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00, 0x01, 0x02,
        ];
        let parsed = DigitalSignature::parse(&rsa).unwrap();
        assert!(!parsed.is_ed25519());
        assert_eq!(parsed.signature, [1, 2]);
        assert_eq!(DigitalSignature::parse(&[]), Err(Error::Truncated));
        assert_eq!(DigitalSignature::parse(&[0x07, 0x30, 0x05]), Err(Error::Truncated));
        assert!(DigitalSignature::parse(&[0x00, 1, 2]).is_err());
        // No signature at all parses (and then does not verify).
        assert_eq!(DigitalSignature::parse(&[0x01, 0x30]).unwrap().signature, [0u8; 0]);
    }

    #[test]
    fn hash_algorithm_lists() {
        assert_eq!(signature_hash_algorithms(), [0x00, 0x05]);
        // strongSwan's list: SHA2-256, SHA2-384, SHA2-512, Identity.
        assert_eq!(lists_identity_hash(&[0, 2, 0, 3, 0, 4, 0, 5]), Ok(true));
        assert_eq!(lists_identity_hash(&[0, 2, 0, 3]), Ok(false));
        assert_eq!(lists_identity_hash(&[]), Ok(false));
        assert!(lists_identity_hash(&[0, 5, 0]).is_err());
    }
}
