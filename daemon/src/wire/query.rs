//! The diagnostic query between two meshd nodes (`ikectl ping` asks the peer for its own view):
//! a small UDP request/response on the underlay, outside the SAs so it works when they are
//! broken, authenticated with HMAC-SHA-256 under a key of the pair (see `diag::query`).
//!
//! ```text
//! 0         1       2           4            12               20                52          54          56
//! | version | type  | reserved  | nonce (64) | unix ms (64)   | sender (32)     | body len  | reserved  | body ... | HMAC (32)
//! ```
//! Reserved bytes are zero. `sender` is the sending node's name, zero-padded: it picks the key (addresses may be NATed).
//! The HMAC covers everything before it. A response repeats the request's nonce.

use super::{read_u16, write_u16, Error, Result};

pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 56;
pub const MAC_LEN: usize = 32;
/// Node names are at most 32 characters (mesh.toml's naming rule).
pub const SENDER_LEN: usize = 32;
/// Bodies are kept so that a whole query fits a 1280-byte IPv6 packet.
pub const MAX_BODY_LEN: usize = 1280 - 48 - HEADER_LEN - MAC_LEN;
pub const MAX_LEN: usize = HEADER_LEN + MAX_BODY_LEN + MAC_LEN;

mod field {
    use crate::wire::Field;

    pub const VERSION: usize = 0;
    pub const TYPE: usize = 1;
    pub const RESERVED_1: Field = 2..4;
    pub const NONCE: Field = 4..12;
    pub const TIMESTAMP: Field = 12..20;
    pub const SENDER: Field = 20..52;
    pub const BODY_LEN: Field = 52..54;
    pub const RESERVED_2: Field = 54..56;
}

/// Request or response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryType {
    Request,
    Response,
}

impl QueryType {
    const REQUEST: u8 = 1;
    const RESPONSE: u8 = 2;

    fn to_byte(self) -> u8 {
        match self {
            QueryType::Request => Self::REQUEST,
            QueryType::Response => Self::RESPONSE,
        }
    }
}

crate::wire::view! {
    /// A checked view of one query datagram.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN + MAC_LEN {
            return Err(Error::Truncated);
        }
        let body_len = usize::from(read_u16(data, field::BODY_LEN));
        if body_len > MAX_BODY_LEN {
            return Err(Error::Malformed("query body longer than allowed"));
        }
        if data.len() != HEADER_LEN + body_len + MAC_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    fn check_fields(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data[field::VERSION] != VERSION {
            return Err(Error::Malformed("query version is not 1"));
        }
        if data[field::RESERVED_1].iter().chain(&data[field::RESERVED_2]).any(|b| *b != 0) {
            return Err(Error::Malformed("query reserved bytes are not zero"));
        }
        if !matches!(data[field::TYPE], QueryType::REQUEST | QueryType::RESPONSE) {
            return Err(Error::Malformed("query type is neither request nor response"));
        }
        let sender = &data[field::SENDER];
        let name_len = sender.iter().position(|b| *b == 0).unwrap_or(SENDER_LEN);
        if name_len == 0
            || std::str::from_utf8(&sender[..name_len]).is_err()
            || sender[name_len..].iter().any(|b| *b != 0)
        {
            return Err(Error::Malformed("query sender is not a zero-padded node name"));
        }
        Ok(())
    }

    pub fn query_type(&self) -> QueryType {
        match self.buffer.as_ref()[field::TYPE] {
            QueryType::REQUEST => QueryType::Request,
            _ => QueryType::Response,
        }
    }

    pub fn nonce(&self) -> u64 {
        u64::from_be_bytes(array(&self.buffer.as_ref()[field::NONCE]))
    }

    pub fn timestamp_ms(&self) -> u64 {
        u64::from_be_bytes(array(&self.buffer.as_ref()[field::TIMESTAMP]))
    }

    /// The sending node's name (checked to be UTF-8 by `new_checked`).
    pub fn sender(&self) -> &str {
        let sender = &self.buffer.as_ref()[field::SENDER];
        let len = sender.iter().position(|b| *b == 0).unwrap_or(SENDER_LEN);
        std::str::from_utf8(&sender[..len]).unwrap_or_default()
    }

    pub fn body(&self) -> &[u8] {
        let len = usize::from(read_u16(self.buffer.as_ref(), field::BODY_LEN));
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + len]
    }

    /// The bytes the MAC covers.
    pub fn authenticated(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[..data.len() - MAC_LEN]
    }

    pub fn mac(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[data.len() - MAC_LEN..]
    }
}

fn array(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(bytes);
    out
}

/// A query to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryHeader<'a> {
    pub query_type: QueryType,
    pub nonce: u64,
    pub timestamp_ms: u64,
    pub sender: &'a str,
}

impl QueryHeader<'_> {
    /// Writes header and body into `buf` and returns the length written; the caller appends the
    /// MAC of `buf[..len]`. `None` when the sender name or the body is too long, or `buf` too short.
    pub fn emit(&self, body: &[u8], buf: &mut [u8]) -> Option<usize> {
        let len = HEADER_LEN + body.len();
        if self.sender.is_empty() || self.sender.len() > SENDER_LEN || body.len() > MAX_BODY_LEN || buf.len() < len {
            return None;
        }
        buf[..HEADER_LEN].fill(0);
        buf[field::VERSION] = VERSION;
        buf[field::TYPE] = self.query_type.to_byte();
        buf[field::NONCE].copy_from_slice(&self.nonce.to_be_bytes());
        buf[field::TIMESTAMP].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        buf[field::SENDER.start..field::SENDER.start + self.sender.len()].copy_from_slice(self.sender.as_bytes());
        write_u16(buf, field::BODY_LEN, body.len() as u16);
        buf[HEADER_LEN..len].copy_from_slice(body);
        Some(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request from n1 with nonce 0x0102030405060708 at unix ms 1000, body "{}", MAC of 0xaa.
    #[rustfmt::skip]
    fn request_bytes() -> Vec<u8> {
        let mut bytes = vec![
            1, 1, 0, 0,                                     // version, type request, reserved
            1, 2, 3, 4, 5, 6, 7, 8,                         // nonce
            0, 0, 0, 0, 0, 0, 0x03, 0xe8,                   // unix ms 1000
        ];
        let mut sender = [0u8; 32];
        sender[..2].copy_from_slice(b"n1");
        bytes.extend_from_slice(&sender);
        bytes.extend_from_slice(&[0, 2, 0, 0]);             // body length 2, reserved
        bytes.extend_from_slice(b"{}");
        bytes.extend_from_slice(&[0xaa; MAC_LEN]);
        bytes
    }

    #[test]
    fn parses_a_request() {
        let bytes = request_bytes();
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.query_type(), QueryType::Request);
        assert_eq!(packet.nonce(), 0x0102030405060708);
        assert_eq!(packet.timestamp_ms(), 1000);
        assert_eq!(packet.sender(), "n1");
        assert_eq!(packet.body(), b"{}");
        assert_eq!(packet.mac(), &[0xaa; MAC_LEN]);
        assert_eq!(packet.authenticated().len(), HEADER_LEN + 2);
    }

    #[test]
    fn emits_the_same_bytes() {
        let expected = request_bytes();
        let mut buf = vec![0u8; MAX_LEN];
        let header =
            QueryHeader { query_type: QueryType::Request, nonce: 0x0102030405060708, timestamp_ms: 1000, sender: "n1" };
        let len = header.emit(b"{}", &mut buf).unwrap();
        buf[len..len + MAC_LEN].fill(0xaa);
        assert_eq!(&buf[..len + MAC_LEN], &expected[..]);
    }

    #[test]
    fn refuses_bad_datagrams() {
        let good = request_bytes();
        assert_eq!(Packet::new_checked(&good[..good.len() - 1]).unwrap_err(), Error::Truncated);
        assert_eq!(Packet::new_checked(&good[..10]).unwrap_err(), Error::Truncated);
        // Version 2, type 9, an empty sender, a reserved byte set, a body length over the limit.
        const { assert!(0xff02 > MAX_BODY_LEN) };
        for (at, value) in [(0, 2), (1, 9), (20, 0), (55, 1), (52, 0xff)] {
            let mut bad = good.clone();
            bad[at] = value;
            assert!(matches!(Packet::new_checked(&bad[..]), Err(Error::Malformed(_))), "byte {at} = {value}");
        }
        let header = QueryHeader { query_type: QueryType::Response, nonce: 1, timestamp_ms: 1, sender: "" };
        assert_eq!(header.emit(b"", &mut [0u8; MAX_LEN]), None);
    }
}
