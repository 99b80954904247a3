//! The Key Exchange (RFC 7296 §3.4) and Nonce (§3.9) payloads.
//!
//! ```text
//! KE:    Diffie-Hellman group number (2) | reserved (2) | key exchange data
//! Nonce: nonce data (16 to 256 bytes)
//! ```

use crate::wire::{Error, Result};

use super::codec::Reader;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyExchange {
    /// [`super::ids::diffie_hellman`]; must match the group of the proposal it goes with.
    pub group: u16,
    /// The public value; its length depends on the group (32 bytes for Curve25519).
    pub data: Vec<u8>,
}

impl KeyExchange {
    pub fn parse(body: &[u8]) -> Result<KeyExchange> {
        let mut reader = Reader::new(body);
        let group = reader.u16()?;
        reader.skip(2)?;
        Ok(KeyExchange { group, data: reader.rest().to_vec() })
    }

    /// Appends the payload body.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.group.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.data);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nonce {
    pub data: Vec<u8>,
}

impl Nonce {
    /// The bounds RFC 7296 §3.9 puts on the nonce data.
    pub const MIN_LEN: usize = 16;
    pub const MAX_LEN: usize = 256;

    pub fn parse(body: &[u8]) -> Result<Nonce> {
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&body.len()) {
            return Err(Error::Malformed("IKE nonce is not 16 to 256 bytes"));
        }
        Ok(Nonce { data: body.to_vec() })
    }

    /// Appends the payload body.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::message::ids::diffie_hellman;

    #[test]
    fn key_exchange_round_trip() {
        let mut bytes = vec![
            0x00, 0x1f, // group 31, Curve25519
            0x00, 0x00, // reserved
        ];
        bytes.extend(0..32u8); // the public key
        let ke = KeyExchange { group: diffie_hellman::CURVE25519, data: (0..32).collect() };
        assert_eq!(KeyExchange::parse(&bytes), Ok(ke.clone()));
        let mut out = Vec::new();
        ke.emit(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn key_exchange_reserved_ignored_and_truncation() {
        assert_eq!(KeyExchange::parse(&[0x00, 0x1f, 0xff, 0xff]), Ok(KeyExchange { group: 31, data: vec![] }));
        assert_eq!(KeyExchange::parse(&[0x00, 0x1f, 0x00]), Err(Error::Truncated));
        assert_eq!(KeyExchange::parse(&[]), Err(Error::Truncated));
    }

    #[test]
    fn nonce_round_trip_and_bounds() {
        let bytes = [0x5a; 32]; // nonce data, nothing else
        let nonce = Nonce::parse(&bytes).unwrap();
        assert_eq!(nonce.data, bytes);
        let mut out = Vec::new();
        nonce.emit(&mut out);
        assert_eq!(out, bytes);

        assert!(Nonce::parse(&[0; 16]).is_ok());
        assert!(Nonce::parse(&[0; 256]).is_ok());
        let short = Err(Error::Malformed("IKE nonce is not 16 to 256 bytes"));
        assert_eq!(Nonce::parse(&[0; 15]), short);
        assert_eq!(Nonce::parse(&[0; 257]), short);
        assert_eq!(Nonce::parse(&[]), short);
    }
}
