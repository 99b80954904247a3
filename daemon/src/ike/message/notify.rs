//! The Notify (RFC 7296 §3.10) and Delete (§3.11) payloads.
//!
//! ```text
//! N: protocol ID (1) | SPI size (1) | notify message type (2) | SPI | notification data
//! D: protocol ID (1) | SPI size (1) | number of SPIs (2) | SPIs
//! ```

use crate::wire::{Error, Result};

use super::codec::{count_u8, Reader};
use super::ids::{notify, protocol};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// [`super::ids::protocol`] of the SA named by `spi`; `NONE` when `spi` is empty.
    pub protocol_id: u8,
    /// [`super::ids::notify`].
    pub notify_type: u16,
    pub spi: Vec<u8>,
    pub data: Vec<u8>,
}

impl Notify {
    /// A notification about no particular SA (protocol 0, no SPI), which is most of them.
    pub fn new(notify_type: u16, data: Vec<u8>) -> Notify {
        Notify { protocol_id: protocol::NONE, notify_type, spi: Vec::new(), data }
    }

    /// True for error types: unknown ones still mean the request failed.
    pub fn is_error(&self) -> bool {
        notify::is_error(self.notify_type)
    }

    pub fn parse(body: &[u8]) -> Result<Notify> {
        let mut reader = Reader::new(body);
        let protocol_id = reader.u8()?;
        let spi_size = usize::from(reader.u8()?);
        let notify_type = reader.u16()?;
        let spi = reader.take(spi_size)?.to_vec();
        Ok(Notify { protocol_id, notify_type, spi, data: reader.rest().to_vec() })
    }

    /// Appends the payload body.
    ///
    /// # Panics
    /// If the SPI is longer than 255 bytes.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(self.protocol_id);
        out.push(count_u8(self.spi.len(), "SPI bytes"));
        out.extend_from_slice(&self.notify_type.to_be_bytes());
        out.extend_from_slice(&self.spi);
        out.extend_from_slice(&self.data);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// [`super::ids::protocol`]: IKE (no SPIs: the SA the message travels in), AH or ESP.
    pub protocol_id: u8,
    /// Bytes per SPI: 0 for IKE, 4 for AH and ESP. Kept apart from `spis` because it is sent
    /// even when there are no SPIs.
    pub spi_size: u8,
    pub spis: Vec<Vec<u8>>,
}

impl Delete {
    /// Deletes the IKE SA that carries the message, and with it all its Child SAs.
    pub fn ike() -> Delete {
        Delete { protocol_id: protocol::IKE, spi_size: 0, spis: Vec::new() }
    }

    /// Deletes Child SAs of `protocol_id` (ESP or AH) by the SPIs their sender receives on.
    pub fn child(protocol_id: u8, spis: &[u32]) -> Delete {
        Delete { protocol_id, spi_size: 4, spis: spis.iter().map(|spi| spi.to_be_bytes().to_vec()).collect() }
    }

    pub fn parse(body: &[u8]) -> Result<Delete> {
        let mut reader = Reader::new(body);
        let protocol_id = reader.u8()?;
        let spi_size = reader.u8()?;
        let count = usize::from(reader.u16()?);
        let rest = reader.rest();
        if spi_size == 0 {
            // Deleting an IKE SA names no SPI; a count of empty SPIs means nothing.
            if count != 0 || !rest.is_empty() {
                return Err(Error::Malformed("IKE Delete payload with SPI size 0 has SPIs"));
            }
            return Ok(Delete { protocol_id, spi_size, spis: Vec::new() });
        }
        if rest.len() != count * usize::from(spi_size) {
            return Err(Error::Malformed("IKE Delete payload's SPIs do not match its length"));
        }
        let spis = rest.chunks_exact(usize::from(spi_size)).map(<[u8]>::to_vec).collect();
        Ok(Delete { protocol_id, spi_size, spis })
    }

    /// Appends the payload body.
    ///
    /// # Panics
    /// If an SPI is not `spi_size` bytes long, or there are more than 65535.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let count = u16::try_from(self.spis.len()).expect("more than 65535 SPIs to delete");
        out.push(self.protocol_id);
        out.push(self.spi_size);
        out.extend_from_slice(&count.to_be_bytes());
        for spi in &self.spis {
            assert_eq!(spi.len(), usize::from(self.spi_size), "SPI of the wrong size");
            out.extend_from_slice(spi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_detection_round_trip() {
        let mut bytes = vec![
            0x00, // protocol: none
            0x00, // SPI size 0
            0x40, 0x04, // NAT_DETECTION_SOURCE_IP (16388)
        ];
        bytes.extend_from_slice(&[0x3c; 20]); // SHA-1 of SPIs, address and port
        let n = Notify::new(notify::NAT_DETECTION_SOURCE_IP, vec![0x3c; 20]);
        assert_eq!(Notify::parse(&bytes), Ok(n.clone()));
        assert!(!n.is_error());
        let mut out = Vec::new();
        n.emit(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn notify_with_spi_round_trip() {
        let bytes = [
            0x03, // ESP
            0x04, // SPI size 4
            0x40, 0x09, // REKEY_SA (16393)
            0xc0, 0x00, 0x10, 0x01, // SPI of the Child SA being rekeyed
        ];
        let n = Notify {
            protocol_id: protocol::ESP,
            notify_type: notify::REKEY_SA,
            spi: vec![0xc0, 0x00, 0x10, 0x01],
            data: vec![],
        };
        assert_eq!(Notify::parse(&bytes), Ok(n.clone()));
        let mut out = Vec::new();
        n.emit(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn error_notify_and_truncation() {
        let bytes = [
            0x00, 0x00, // no SA, no SPI
            0x00, 0x11, // INVALID_KE_PAYLOAD (17)
            0x00, 0x1f, // the group the responder wants: 31
        ];
        let n = Notify::parse(&bytes).unwrap();
        assert!(n.is_error());
        assert_eq!(n.data, [0x00, 0x1f]);
        assert_eq!(Notify::parse(&bytes[..3]), Err(Error::Truncated));
        // SPI size 4 with only two bytes left
        assert_eq!(Notify::parse(&[0x03, 0x04, 0x00, 0x0b, 0xaa, 0xbb]), Err(Error::Truncated));
    }

    #[test]
    fn delete_ike_round_trip() {
        let bytes = [
            0x01, // IKE
            0x00, // SPI size 0
            0x00, 0x00, // no SPIs
        ];
        assert_eq!(Delete::parse(&bytes), Ok(Delete::ike()));
        let mut out = Vec::new();
        Delete::ike().emit(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn delete_child_round_trip() {
        let bytes = [
            0x03, // ESP
            0x04, // SPI size 4
            0x00, 0x02, // two SPIs
            0xc0, 0x00, 0x10, 0x01, // first
            0xc0, 0x00, 0x10, 0x02, // second
        ];
        let d = Delete::child(protocol::ESP, &[0xc000_1001, 0xc000_1002]);
        assert_eq!(Delete::parse(&bytes), Ok(d.clone()));
        let mut out = Vec::new();
        d.emit(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn delete_lengths_must_agree() {
        let mismatch = Err(Error::Malformed("IKE Delete payload's SPIs do not match its length"));
        assert_eq!(Delete::parse(&[3, 4, 0, 2, 1, 2, 3, 4]), mismatch);
        assert_eq!(Delete::parse(&[3, 4, 0, 1, 1, 2, 3, 4, 5]), mismatch);
        assert_eq!(Delete::parse(&[1, 0, 0]), Err(Error::Truncated));
        let empty_spis = Err(Error::Malformed("IKE Delete payload with SPI size 0 has SPIs"));
        assert_eq!(Delete::parse(&[1, 0, 0, 0, 9]), empty_spis);
        assert_eq!(Delete::parse(&[1, 0, 0, 2]), empty_spis);
    }

    #[test]
    #[should_panic(expected = "SPI of the wrong size")]
    fn delete_with_wrong_spi_size_panics() {
        Delete { protocol_id: protocol::ESP, spi_size: 4, spis: vec![vec![1, 2]] }.emit(&mut Vec::new());
    }
}
