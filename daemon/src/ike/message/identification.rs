//! The Identification (RFC 7296 §3.5) and Authentication (§3.8) payloads.
//!
//! ```text
//! IDi/IDr: ID type (1) | reserved (3) | identification data
//! AUTH:    auth method (1) | reserved (3) | authentication data
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::wire::Result;

use super::codec::Reader;
use super::ids::identification;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identification {
    /// [`super::ids::identification`].
    pub id_type: u8,
    pub data: Vec<u8>,
}

impl Identification {
    /// ID_IPV4_ADDR or ID_IPV6_ADDR for `address`: a node's identity in this mesh.
    pub fn from_ip(address: IpAddr) -> Identification {
        match address {
            IpAddr::V4(v4) => Identification { id_type: identification::IPV4_ADDRESS, data: v4.octets().to_vec() },
            IpAddr::V6(v6) => Identification { id_type: identification::IPV6_ADDRESS, data: v6.octets().to_vec() },
        }
    }

    /// The address of an ID_IPV4_ADDR or ID_IPV6_ADDR of the right length, else `None`.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.id_type {
            identification::IPV4_ADDRESS => {
                let octets: [u8; 4] = self.data.as_slice().try_into().ok()?;
                Some(Ipv4Addr::from(octets).into())
            }
            identification::IPV6_ADDRESS => {
                let octets: [u8; 16] = self.data.as_slice().try_into().ok()?;
                Some(Ipv6Addr::from(octets).into())
            }
            _ => None,
        }
    }

    pub fn parse(body: &[u8]) -> Result<Identification> {
        let (id_type, data) = parse_kind_and_data(body)?;
        Ok(Identification { id_type, data })
    }

    /// Appends the payload body; this is also the RestOfIDPayload that AUTH signs
    /// (RFC 7296 §2.15).
    pub fn emit(&self, out: &mut Vec<u8>) {
        emit_kind_and_data(out, self.id_type, &self.data);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authentication {
    /// [`super::ids::authentication`].
    pub method: u8,
    pub data: Vec<u8>,
}

impl Authentication {
    pub fn parse(body: &[u8]) -> Result<Authentication> {
        let (method, data) = parse_kind_and_data(body)?;
        Ok(Authentication { method, data })
    }

    /// Appends the payload body.
    pub fn emit(&self, out: &mut Vec<u8>) {
        emit_kind_and_data(out, self.method, &self.data);
    }
}

/// Both bodies are one type byte, 3 reserved bytes and the data.
fn parse_kind_and_data(body: &[u8]) -> Result<(u8, Vec<u8>)> {
    let mut reader = Reader::new(body);
    let kind = reader.u8()?;
    reader.skip(3)?;
    Ok((kind, reader.rest().to_vec()))
}

fn emit_kind_and_data(out: &mut Vec<u8>, kind: u8, data: &[u8]) {
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::message::ids::authentication;
    use crate::wire::Error;

    #[test]
    fn ipv4_identification_round_trip() {
        let bytes = [
            0x01, // ID_IPV4_ADDR
            0x00, 0x00, 0x00, // reserved
            0xc6, 0x12, 0x00, 0x01, // 198.18.0.1
        ];
        let address = IpAddr::from([198, 18, 0, 1]);
        let id = Identification::parse(&bytes).unwrap();
        assert_eq!(id, Identification::from_ip(address));
        assert_eq!(id.ip(), Some(address));
        let mut out = Vec::new();
        id.emit(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn ipv6_identification_round_trip() {
        let mut bytes = vec![
            0x05, // ID_IPV6_ADDR
            0x00, 0x00, 0x00, // reserved
        ];
        let address: IpAddr = "2001:db8::1".parse().unwrap();
        bytes.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let id = Identification::parse(&bytes).unwrap();
        assert_eq!(id, Identification::from_ip(address));
        assert_eq!(id.ip(), Some(address));
        let mut out = Vec::new();
        id.emit(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn other_identifications_have_no_address() {
        // ID_FQDN "n1"
        let id = Identification::parse(&[0x02, 0, 0, 0, b'n', b'1']).unwrap();
        assert_eq!((id.id_type, id.ip()), (2, None));
        // ID_IPV4_ADDR of the wrong length
        let id = Identification::parse(&[0x01, 0, 0, 0, 10, 0, 0]).unwrap();
        assert_eq!(id.ip(), None);
        assert_eq!(Identification::parse(&[0x01, 0, 0]), Err(Error::Truncated));
    }

    #[test]
    fn authentication_round_trip() {
        let mut bytes = vec![
            0x02, // shared key message integrity code
            0x00, 0x00, 0x00, // reserved
        ];
        bytes.extend_from_slice(&[0xa5; 32]); // the PRF output
        let auth = Authentication { method: authentication::SHARED_KEY_MESSAGE_INTEGRITY_CODE, data: vec![0xa5; 32] };
        assert_eq!(Authentication::parse(&bytes), Ok(auth.clone()));
        let mut out = Vec::new();
        auth.emit(&mut out);
        assert_eq!(out, bytes);
        assert_eq!(Authentication::parse(&bytes[..3]), Err(Error::Truncated));
    }
}
