//! ESP packet layout (RFC 4303) as meshd's AEADs use it, without any crypto, and the RFC 3948
//! classification of datagrams received on the UDP encapsulation port.
//!
//! ```text
//! SPI (4) | sequence number (4) | IV (8) | ciphertext (payload, padding, pad length,
//! next header) | ICV (16)
//! ```

#[cfg(test)]
use super::write_u32;
use super::{read_u32, Error, Result};

/// SPI and sequence number.
pub const HEADER_LEN: usize = 8;
/// The explicit IV of AES-GCM (RFC 4106) and ChaCha20-Poly1305 (RFC 7634).
pub const IV_LEN: usize = 8;
/// The ICV of both AEADs.
pub const ICV_LEN: usize = 16;
/// Header, IV, the smallest 4-byte-aligned trailer (pad length and next header after two
/// bytes of payload or padding), ICV: nothing shorter can decrypt.
pub const MIN_LEN: usize = HEADER_LEN + IV_LEN + 4 + ICV_LEN;

/// Length of the non-ESP marker that precedes IKE messages on UDP port 4500 (RFC 3948).
pub const NON_ESP_MARKER_LEN: usize = 4;

mod field {
    use crate::wire::Field;
    #[cfg(any(test, feature = "internals"))]
    use crate::wire::Rest;

    pub const SPI: Field = 0..4;
    pub const SEQUENCE_NUMBER: Field = 4..8;
    #[cfg(any(test, feature = "internals"))]
    pub const IV: Field = 8..16;
    #[cfg(any(test, feature = "internals"))]
    pub const PAYLOAD: Rest = super::HEADER_LEN..;
}

crate::wire::view! {
    /// A read/write view of an ESP packet.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// SPI 0 is reserved (RFC 4303 §2.1).
    fn check_fields(&self) -> Result<()> {
        if self.spi() == 0 {
            return Err(Error::Malformed("ESP SPI 0 is reserved"));
        }
        Ok(())
    }

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < MIN_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn spi(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SPI)
    }

    /// The low 32 bits of the sequence number, as sent; with ESN the high half is implicit.
    pub fn sequence_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQUENCE_NUMBER)
    }

    /// The `IV_LEN` bytes after the header.
    #[cfg(any(test, feature = "internals"))]
    pub fn iv(&self) -> &[u8] {
        &self.buffer.as_ref()[field::IV]
    }

    /// Everything after the SPI and sequence number: IV, ciphertext and ICV.
    #[cfg(any(test, feature = "internals"))]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[cfg(test)]
    pub fn set_spi(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::SPI, value);
    }

    #[cfg(test)]
    pub fn set_sequence_number(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::SEQUENCE_NUMBER, value);
    }

    #[cfg(test)]
    pub fn iv_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::IV]
    }

    #[cfg(test)]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// An ESP header to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg(test)]
pub struct EspHeader {
    pub spi: u32,
    /// The low 32 bits of the sequence number.
    pub sequence_number: u32,
}

#[cfg(test)]
impl EspHeader {
    /// Writes `HEADER_LEN` bytes at the start of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than `HEADER_LEN`, or `spi` is 0 (reserved; a receiver drops it).
    pub fn emit(&self, buf: &mut [u8]) {
        assert!(self.spi != 0, "ESP SPI 0 is reserved");
        let mut packet = Packet::new_unchecked(&mut buf[..HEADER_LEN]);
        packet.set_spi(self.spi);
        packet.set_sequence_number(self.sequence_number);
    }
}

/// What a datagram received on UDP 4500 carries (RFC 3948 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpEncapKind {
    /// An ESP packet, starting with its (non-zero) SPI.
    Esp,
    /// An IKE message after a [`NON_ESP_MARKER_LEN`]-byte non-ESP marker.
    Ike,
    /// A NAT-keepalive: nothing to process.
    NatKeepalive,
}

/// Classifies the payload of a UDP datagram received on UDP port 4500 (RFC 3948). Only looks at
/// the first bytes: the chosen parser checks the rest.
pub fn classify_udp_encap(payload: &[u8]) -> Result<UdpEncapKind> {
    match payload {
        [0xFF] => Ok(UdpEncapKind::NatKeepalive),
        [_] => Err(Error::Malformed("NAT-keepalive byte is not 0xFF")),
        // The marker sits where an SPI would, and SPI 0 is reserved, so the two cannot clash.
        [0, 0, 0, 0, ..] => Ok(UdpEncapKind::Ike),
        [_, _, _, _, ..] => Ok(UdpEncapKind::Esp),
        _ => Err(Error::Truncated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ESP with SPI 0x00001001, sequence number 1, ciphertext of a 2-byte payload with its
    // trailer (the smallest that decrypts), and an ICV. Crypto bytes are made up.
    const PACKET: [u8; 36] = [
        0x00, 0x00, 0x10, 0x01, // SPI
        0x00, 0x00, 0x00, 0x01, // sequence number 1
        0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, // IV
        0xc0, 0xc1, 0xc2, 0xc3, // ciphertext: payload, pad length, next header
        0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, // ICV
        0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, //
    ];

    #[test]
    fn parse_every_field() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.spi(), 0x1001);
        assert_eq!(p.sequence_number(), 1);
        assert_eq!(p.iv(), &[0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7]);
        assert_eq!(p.payload(), &PACKET[8..]);
        assert_eq!(p.into_inner(), &PACKET[..]);
    }

    #[test]
    fn emit_round_trip() {
        let mut buf = PACKET;
        buf[..8].fill(0xEE);
        EspHeader { spi: 0x1001, sequence_number: 1 }.emit(&mut buf);
        assert_eq!(buf, PACKET);
    }

    #[test]
    #[should_panic(expected = "reserved")]
    fn emit_rejects_spi_zero() {
        EspHeader { spi: 0, sequence_number: 1 }.emit(&mut [0u8; 8]);
    }

    #[test]
    fn setters_write_fields() {
        let mut buf = [0u8; MIN_LEN];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_spi(0xc0ffee01);
        p.set_sequence_number(0xFFFF_FFFF);
        p.iv_mut().copy_from_slice(&[1; IV_LEN]);
        p.payload_mut()[IV_LEN] = 0x42;
        assert_eq!(buf[..17], [0xc0, 0xff, 0xee, 0x01, 0xff, 0xff, 0xff, 0xff, 1, 1, 1, 1, 1, 1, 1, 1, 0x42]);
    }

    #[test]
    fn rejects_truncation_and_spi_zero() {
        let check = |bytes: &[u8]| Packet::new_checked(bytes).map(|_| ());
        assert_eq!(check(&[]), Err(Error::Truncated));
        assert_eq!(check(&PACKET[..MIN_LEN - 1]), Err(Error::Truncated));
        let mut bytes = PACKET;
        bytes[2..4].fill(0);
        assert_eq!(check(&bytes), Err(Error::Malformed("ESP SPI 0 is reserved")));
    }

    #[test]
    fn classify() {
        assert_eq!(classify_udp_encap(&[0xFF]), Ok(UdpEncapKind::NatKeepalive));
        assert!(matches!(classify_udp_encap(&[0x00]), Err(Error::Malformed(_))));
        assert_eq!(classify_udp_encap(&[]), Err(Error::Truncated));
        assert_eq!(classify_udp_encap(&[0xFF, 0xFF]), Err(Error::Truncated));
        assert_eq!(classify_udp_encap(&[0, 0, 0]), Err(Error::Truncated));
        // Non-ESP marker, then the start of an IKE header (initiator SPI).
        assert_eq!(classify_udp_encap(&[0, 0, 0, 0, 0x8a, 0x3e]), Ok(UdpEncapKind::Ike));
        assert_eq!(classify_udp_encap(&[0, 0, 0, 0]), Ok(UdpEncapKind::Ike));
        assert_eq!(classify_udp_encap(&PACKET), Ok(UdpEncapKind::Esp));
        // Classification does not check ESP lengths; Packet::new_checked does.
        assert_eq!(classify_udp_encap(&[0, 0, 0, 1]), Ok(UdpEncapKind::Esp));
    }

    proptest! {
        #[test]
        fn getters_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                prop_assert!(p.spi() != 0);
                let _ = (p.sequence_number(), p.iv(), p.payload());
            }
        }

        #[test]
        fn classify_never_panics_and_agrees_with_spi(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
            match classify_udp_encap(&bytes) {
                Ok(UdpEncapKind::Esp) => prop_assert!(bytes.len() >= 4 && bytes[..4] != [0; 4]),
                Ok(UdpEncapKind::Ike) => prop_assert!(bytes[..4] == [0; 4]),
                Ok(UdpEncapKind::NatKeepalive) => prop_assert_eq!(&bytes[..], &[0xFF][..]),
                Err(_) => prop_assert!(bytes.len() < 4),
            }
        }
    }
}
