//! The Security Association payload (RFC 7296 §3.3): proposals, their transforms, and the
//! transforms' attributes, each with its own length that must agree with its container's.
//!
//! ```text
//! proposal:  last substruc (1) | reserved (1) | proposal length (2) | proposal number (1)
//!            | protocol ID (1) | SPI size (1) | number of transforms (1) | SPI | transforms
//! transform: last substruc (1) | reserved (1) | transform length (2) | transform type (1)
//!            | reserved (1) | transform ID (2) | attributes
//! attribute: AF bit + attribute type (2) | value (2, AF = 1, "TV")
//!            or length (2) | value (AF = 0, "TLV")
//! ```

use crate::wire::{Error, Result};

use super::codec::{count_u8, length_placeholder, patch_length, Reader};
use super::ids::attribute;

/// Last Substruc values (RFC 7296 §3.3.1, §3.3.2): 0 on the last structure, else the ISAKMP
/// payload number of what follows.
const LAST: u8 = 0;
const MORE_PROPOSALS: u8 = 2;
const MORE_TRANSFORMS: u8 = 3;

/// Last Substruc, reserved, length: the start of proposals and transforms alike.
const SUBSTRUCTURE_PREFIX_LEN: usize = 4;
const PROPOSAL_HEADER_LEN: usize = 8;
const TRANSFORM_HEADER_LEN: usize = 8;
/// The AF bit: set for the short Type/Value format.
const FORMAT_TV: u16 = 0x8000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityAssociation {
    /// Most preferred first; a response carries exactly one.
    pub proposals: Vec<Proposal>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// 1 for the first proposal, one more for each next one; a response repeats the number
    /// of the proposal it accepted.
    pub number: u8,
    /// [`super::ids::protocol`]: IKE, AH or ESP.
    pub protocol_id: u8,
    /// Empty in IKE_SA_INIT, 8 bytes when rekeying an IKE SA, 4 for ESP and AH.
    pub spi: Vec<u8>,
    pub transforms: Vec<Transform>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transform {
    /// [`super::ids::transform`].
    pub transform_type: u8,
    pub transform_id: u16,
    /// The Key Length attribute, in bits.
    pub key_length: Option<u16>,
    /// Any other attribute. RFC 7296 defines no other, so a proposal with one of these cannot
    /// be understood and must not be chosen.
    pub other_attributes: Vec<Attribute>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// The type without the AF bit.
    pub attribute_type: u16,
    pub value: AttributeValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    /// Type/Value format (AF = 1): a 2-byte value in place of the length.
    Short(u16),
    /// Type/Length/Value format (AF = 0).
    Variable(Vec<u8>),
}

impl SecurityAssociation {
    pub fn parse(body: &[u8]) -> Result<SecurityAssociation> {
        let mut reader = Reader::new(body);
        let mut proposals = Vec::new();
        loop {
            let last_substructure = reader.u8()?;
            reader.skip(1)?;
            let length = usize::from(reader.u16()?);
            if length < PROPOSAL_HEADER_LEN {
                return Err(Error::Malformed("IKE proposal length is below 8"));
            }
            let rest = reader.take(length - SUBSTRUCTURE_PREFIX_LEN)?;
            proposals.push(Proposal::parse(rest)?);
            match last_substructure {
                LAST if reader.is_empty() => break,
                LAST => return Err(Error::Malformed("bytes after the last IKE proposal")),
                MORE_PROPOSALS => {}
                _ => return Err(Error::Malformed("bad Last Substruc in an IKE proposal")),
            }
        }
        Ok(SecurityAssociation { proposals })
    }

    /// Appends the payload body.
    ///
    /// # Panics
    /// If there is no proposal, a proposal has more than 255 transforms or an SPI over 255
    /// bytes, or a structure exceeds 65535 bytes.
    pub fn emit(&self, out: &mut Vec<u8>) {
        assert!(!self.proposals.is_empty(), "an SA payload needs a proposal");
        for (index, proposal) in self.proposals.iter().enumerate() {
            let last = index + 1 == self.proposals.len();
            proposal.emit(out, if last { LAST } else { MORE_PROPOSALS });
        }
    }
}

impl Proposal {
    /// Parses what follows the first four bytes (Last Substruc, reserved, length).
    fn parse(bytes: &[u8]) -> Result<Proposal> {
        let mut reader = Reader::new(bytes);
        let number = reader.u8()?;
        let protocol_id = reader.u8()?;
        let spi_size = usize::from(reader.u8()?);
        let transform_count = usize::from(reader.u8()?);
        let spi = reader.take(spi_size)?.to_vec();
        let mut transforms = Vec::with_capacity(transform_count);
        while !reader.is_empty() {
            let last_substructure = reader.u8()?;
            reader.skip(1)?;
            let length = usize::from(reader.u16()?);
            if length < TRANSFORM_HEADER_LEN {
                return Err(Error::Malformed("IKE transform length is below 8"));
            }
            let rest = reader.take(length - SUBSTRUCTURE_PREFIX_LEN)?;
            transforms.push(Transform::parse(rest)?);
            let expected = if reader.is_empty() { LAST } else { MORE_TRANSFORMS };
            if last_substructure != expected {
                return Err(Error::Malformed("bad Last Substruc in an IKE transform"));
            }
        }
        if transforms.len() != transform_count {
            return Err(Error::Malformed("IKE proposal's number of transforms does not match its length"));
        }
        Ok(Proposal { number, protocol_id, spi, transforms })
    }

    fn emit(&self, out: &mut Vec<u8>, last_substructure: u8) {
        let start = out.len();
        out.extend_from_slice(&[last_substructure, 0]);
        let at = length_placeholder(out);
        out.push(self.number);
        out.push(self.protocol_id);
        out.push(count_u8(self.spi.len(), "SPI bytes"));
        out.push(count_u8(self.transforms.len(), "transforms in a proposal"));
        out.extend_from_slice(&self.spi);
        for (index, transform) in self.transforms.iter().enumerate() {
            let last = index + 1 == self.transforms.len();
            transform.emit(out, if last { LAST } else { MORE_TRANSFORMS });
        }
        patch_length(out, at, start, "IKE proposal");
    }

    /// The transforms of one type, in the order proposed.
    #[cfg(test)]
    pub fn transforms_of_type(&self, transform_type: u8) -> impl Iterator<Item = &Transform> {
        self.transforms.iter().filter(move |t| t.transform_type == transform_type)
    }
}

impl Transform {
    /// A transform without attributes.
    pub fn new(transform_type: u8, transform_id: u16) -> Transform {
        Transform { transform_type, transform_id, key_length: None, other_attributes: Vec::new() }
    }

    /// Parses what follows the first four bytes (Last Substruc, reserved, length).
    fn parse(bytes: &[u8]) -> Result<Transform> {
        let mut reader = Reader::new(bytes);
        let transform_type = reader.u8()?;
        reader.skip(1)?;
        let mut transform = Transform::new(transform_type, reader.u16()?);
        while !reader.is_empty() {
            let raw_type = reader.u16()?;
            let attribute_type = raw_type & !FORMAT_TV;
            let value = if raw_type & FORMAT_TV != 0 {
                AttributeValue::Short(reader.u16()?)
            } else {
                let len = usize::from(reader.u16()?);
                AttributeValue::Variable(reader.take(len)?.to_vec())
            };
            match value {
                AttributeValue::Short(bits)
                    if attribute_type == attribute::KEY_LENGTH && transform.key_length.is_none() =>
                {
                    transform.key_length = Some(bits);
                }
                value => transform.other_attributes.push(Attribute { attribute_type, value }),
            }
        }
        Ok(transform)
    }

    fn emit(&self, out: &mut Vec<u8>, last_substructure: u8) {
        let start = out.len();
        out.extend_from_slice(&[last_substructure, 0]);
        let at = length_placeholder(out);
        out.push(self.transform_type);
        out.push(0);
        out.extend_from_slice(&self.transform_id.to_be_bytes());
        if let Some(bits) = self.key_length {
            out.extend_from_slice(&(FORMAT_TV | attribute::KEY_LENGTH).to_be_bytes());
            out.extend_from_slice(&bits.to_be_bytes());
        }
        for attribute in &self.other_attributes {
            let raw_type = attribute.attribute_type & !FORMAT_TV;
            match &attribute.value {
                AttributeValue::Short(value) => {
                    out.extend_from_slice(&(FORMAT_TV | raw_type).to_be_bytes());
                    out.extend_from_slice(&value.to_be_bytes());
                }
                AttributeValue::Variable(value) => {
                    out.extend_from_slice(&raw_type.to_be_bytes());
                    let value_at = length_placeholder(out);
                    out.extend_from_slice(value);
                    patch_length(out, value_at, value_at + 2, "IKE transform attribute");
                }
            }
        }
        patch_length(out, at, start, "IKE transform");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::message::ids::{
        diffie_hellman, encryption, extended_sequence_numbers, protocol, pseudorandom_function, transform,
    };
    use proptest::prelude::*;

    /// An ESP proposal: SPI 0x11223344, AES-GCM-16 with a 256-bit key, no ESN.
    const ESP_SA: [u8; 32] = [
        0x00, 0x00, 0x00, 0x20, // last proposal, reserved, proposal length 32
        0x01, 0x03, 0x04, 0x02, // proposal 1, ESP, SPI size 4, 2 transforms
        0x11, 0x22, 0x33, 0x44, // SPI
        0x03, 0x00, 0x00, 0x0c, // more transforms, reserved, transform length 12
        0x01, 0x00, 0x00, 0x14, // ENCR, reserved, ENCR_AES_GCM_16
        0x80, 0x0e, 0x01, 0x00, // TV Key Length 256
        0x00, 0x00, 0x00, 0x08, // last transform, reserved, transform length 8
        0x05, 0x00, 0x00, 0x00, // ESN, reserved, no ESN
    ];

    fn esp_sa() -> SecurityAssociation {
        SecurityAssociation {
            proposals: vec![Proposal {
                number: 1,
                protocol_id: protocol::ESP,
                spi: vec![0x11, 0x22, 0x33, 0x44],
                transforms: vec![
                    Transform {
                        key_length: Some(256),
                        ..Transform::new(transform::ENCRYPTION, encryption::AES_GCM_16)
                    },
                    Transform::new(transform::EXTENDED_SEQUENCE_NUMBERS, extended_sequence_numbers::NO),
                ],
            }],
        }
    }

    #[test]
    fn esp_proposal_round_trip() {
        assert_eq!(SecurityAssociation::parse(&ESP_SA), Ok(esp_sa()));
        let mut out = Vec::new();
        esp_sa().emit(&mut out);
        assert_eq!(out, ESP_SA);
        let ike = &esp_sa().proposals[0];
        let esn: Vec<_> = ike.transforms_of_type(transform::EXTENDED_SEQUENCE_NUMBERS).collect();
        assert_eq!(esn, [&ike.transforms[1]]);
    }

    #[test]
    fn two_ike_proposals_round_trip() {
        let bytes = [
            0x02, 0x00, 0x00, 0x2c, // more proposals, reserved, length 44
            0x01, 0x01, 0x00, 0x04, // proposal 1, IKE, no SPI, 4 transforms
            0x03, 0x00, 0x00, 0x0c, 0x01, 0x00, 0x00, 0x14, 0x80, 0x0e, 0x01, 0x00, // AES-GCM-16/256
            0x03, 0x00, 0x00, 0x08, 0x02, 0x00, 0x00, 0x05, // PRF_HMAC_SHA2_256
            0x03, 0x00, 0x00, 0x08, 0x04, 0x00, 0x00, 0x1f, // DH 31
            0x00, 0x00, 0x00, 0x08, 0x03, 0x00, 0x00, 0x00, // INTEG NONE, last
            0x00, 0x00, 0x00, 0x20, // last proposal, reserved, length 32
            0x02, 0x01, 0x00, 0x03, // proposal 2, IKE, no SPI, 3 transforms
            0x03, 0x00, 0x00, 0x08, 0x01, 0x00, 0x00, 0x1c, // ChaCha20-Poly1305
            0x03, 0x00, 0x00, 0x08, 0x02, 0x00, 0x00, 0x05, // PRF_HMAC_SHA2_256
            0x00, 0x00, 0x00, 0x08, 0x04, 0x00, 0x00, 0x1f, // DH 31, last
        ];
        let sa = SecurityAssociation::parse(&bytes).unwrap();
        assert_eq!(sa.proposals.len(), 2);
        let p1 = &sa.proposals[0];
        assert_eq!((p1.number, p1.protocol_id), (1, protocol::IKE));
        assert!(p1.spi.is_empty());
        assert_eq!(p1.transforms[0].key_length, Some(256));
        assert_eq!(
            p1.transforms[1],
            Transform::new(transform::PSEUDORANDOM_FUNCTION, pseudorandom_function::HMAC_SHA2_256)
        );
        assert_eq!(p1.transforms[3], Transform::new(transform::INTEGRITY, 0));
        let p2 = &sa.proposals[1];
        assert_eq!(p2.number, 2);
        assert_eq!(p2.transforms[0], Transform::new(transform::ENCRYPTION, encryption::CHACHA20_POLY1305));
        assert_eq!(p2.transforms[2], Transform::new(transform::DIFFIE_HELLMAN, diffie_hellman::CURVE25519));
        let mut out = Vec::new();
        sa.emit(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn other_attributes_are_kept() {
        let bytes = [
            0x00, 0x00, 0x00, 0x1d, // last proposal, length 29
            0x01, 0x03, 0x00, 0x01, // proposal 1, ESP, no SPI, 1 transform
            0x00, 0x00, 0x00, 0x15, // last transform, length 21
            0x01, 0x00, 0x00, 0x14, // ENCR_AES_GCM_16
            0x80, 0x0e, 0x00, 0x80, // Key Length 128
            0x80, 0x0e, 0x01, 0x00, // a second Key Length: not understood
            0x00, 0x07, 0x00, 0x01, 0xee, // TLV attribute 7, one byte
        ];
        let sa = SecurityAssociation::parse(&bytes).unwrap();
        let t = &sa.proposals[0].transforms[0];
        assert_eq!(t.key_length, Some(128));
        assert_eq!(
            t.other_attributes,
            [
                Attribute { attribute_type: attribute::KEY_LENGTH, value: AttributeValue::Short(256) },
                Attribute { attribute_type: 7, value: AttributeValue::Variable(vec![0xee]) },
            ]
        );
        let mut out = Vec::new();
        sa.emit(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn rejects_inconsistent_lengths_and_counts() {
        let parse = |bytes: &[u8]| SecurityAssociation::parse(bytes);
        assert_eq!(parse(&[]), Err(Error::Truncated));
        for len in 1..ESP_SA.len() {
            assert!(parse(&ESP_SA[..len]).is_err(), "{len}");
        }

        let mut bytes = ESP_SA;
        bytes[7] = 3; // three transforms announced, two present
        assert_eq!(
            parse(&bytes),
            Err(Error::Malformed("IKE proposal's number of transforms does not match its length"))
        );

        let mut bytes = ESP_SA;
        bytes[3] = 7;
        assert_eq!(parse(&bytes), Err(Error::Malformed("IKE proposal length is below 8")));

        let mut bytes = ESP_SA;
        bytes[27] = 7;
        assert_eq!(parse(&bytes), Err(Error::Malformed("IKE transform length is below 8")));

        let mut bytes = ESP_SA;
        bytes[0] = 2; // says more proposals follow; none does
        assert_eq!(parse(&bytes), Err(Error::Truncated));

        let mut bytes = ESP_SA.to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 8, 2, 1, 0, 0]);
        assert_eq!(parse(&bytes), Err(Error::Malformed("bytes after the last IKE proposal")));

        let mut bytes = ESP_SA;
        bytes[0] = 3;
        assert_eq!(parse(&bytes), Err(Error::Malformed("bad Last Substruc in an IKE proposal")));

        let mut bytes = ESP_SA;
        bytes[12] = 0; // first transform claims to be the last
        assert_eq!(parse(&bytes), Err(Error::Malformed("bad Last Substruc in an IKE transform")));

        let mut bytes = ESP_SA;
        bytes[20] = 0x00; // Key Length as TLV: its "length" 256 overruns the transform
        assert_eq!(parse(&bytes), Err(Error::Truncated));
    }

    #[test]
    #[should_panic(expected = "needs a proposal")]
    fn empty_sa_panics() {
        SecurityAssociation { proposals: vec![] }.emit(&mut Vec::new());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(sa) = SecurityAssociation::parse(&bytes) {
                // Whatever parses re-encodes to something that parses the same.
                let mut out = Vec::new();
                sa.emit(&mut out);
                prop_assert_eq!(SecurityAssociation::parse(&out), Ok(sa));
            }
        }

        #[test]
        fn mutated_proposal_never_panics(at in 0..ESP_SA.len(), value in any::<u8>()) {
            let mut bytes = ESP_SA;
            bytes[at] = value;
            let _ = SecurityAssociation::parse(&bytes);
        }
    }
}
