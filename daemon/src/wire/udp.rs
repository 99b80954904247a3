//! UDP headers (RFC 768) and their checksum over IPv4 and IPv6 pseudo-headers.

#[cfg(any(test, feature = "internals"))]
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;

use super::ipv4::PROTOCOL_UDP;
use super::{checksum, read_u16, write_u16, Error, Result};

pub const HEADER_LEN: usize = field::CHECKSUM.end;

mod field {
    use crate::wire::Field;

    pub const SOURCE_PORT: Field = 0..2;
    pub const DESTINATION_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

crate::wire::view! {
    /// A read/write view of a UDP datagram.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Nothing beyond the lengths to refuse. The checksum needs the IP addresses: see
    /// `verify_checksum_ipv4` / `verify_checksum_ipv6`.
    fn check_fields(&self) -> Result<()> {
        Ok(())
    }

    /// Checks that the length field covers at least the header and fits in the buffer.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let length = usize::from(self.length());
        if length < HEADER_LEN {
            return Err(Error::Malformed("UDP length is shorter than the header"));
        }
        if length > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn source_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SOURCE_PORT)
    }

    pub fn destination_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DESTINATION_PORT)
    }

    /// Header plus payload, in bytes.
    pub fn length(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The bytes after the header, up to the length field.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.length())]
    }

    fn datagram(&self) -> &[u8] {
        &self.buffer.as_ref()[..usize::from(self.length())]
    }

    /// True if the checksum is correct or absent (0, which RFC 768 allows over IPv4).
    #[cfg(any(test, feature = "internals"))]
    pub fn verify_checksum_ipv4(&self, source: Ipv4Addr, destination: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let pseudo = checksum::pseudo_header_v4(source, destination, PROTOCOL_UDP, self.length());
        checksum::combine(&[pseudo, checksum::data(self.datagram())]) == 0xFFFF
    }

    /// True if the checksum is correct. A zero checksum fails, as RFC 8200 §8.1 requires; a
    /// caller that accepts zero-checksum tunnels (RFC 6935) checks `checksum() == 0` first.
    #[cfg(any(test, feature = "internals"))]
    pub fn verify_checksum_ipv6(&self, source: Ipv6Addr, destination: Ipv6Addr) -> bool {
        if self.checksum() == 0 {
            return false;
        }
        let pseudo = checksum::pseudo_header_v6(source, destination, PROTOCOL_UDP, u32::from(self.length()));
        checksum::combine(&[pseudo, checksum::data(self.datagram())]) == 0xFFFF
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_source_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::SOURCE_PORT, value);
    }

    pub fn set_destination_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::DESTINATION_PORT, value);
    }

    pub fn set_length(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, value);
    }

    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.length());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    /// Stores a computed checksum: one that computes to 0 is sent as 0xFFFF, since 0 on the
    /// wire means "no checksum" (RFC 768).
    fn store_checksum(&mut self, pseudo: u16) {
        self.set_checksum(0);
        let sum = checksum::combine(&[pseudo, checksum::data(self.datagram())]);
        let value = !sum;
        self.set_checksum(if value == 0 { 0xFFFF } else { value });
    }

    /// Computes the checksum over the IPv4 pseudo-header, header and payload (as far as the
    /// length field says).
    #[cfg(any(test, feature = "internals"))]
    pub fn fill_checksum_ipv4(&mut self, source: Ipv4Addr, destination: Ipv4Addr) {
        let pseudo = checksum::pseudo_header_v4(source, destination, PROTOCOL_UDP, self.length());
        self.store_checksum(pseudo);
    }

    /// Computes the checksum over the IPv6 pseudo-header, header and payload (as far as the
    /// length field says).
    pub fn fill_checksum_ipv6(&mut self, source: Ipv6Addr, destination: Ipv6Addr) {
        let pseudo = checksum::pseudo_header_v6(source, destination, PROTOCOL_UDP, u32::from(self.length()));
        self.store_checksum(pseudo);
    }
}

/// A UDP header to write, with checksum 0: fill it afterwards with
/// [`Packet::fill_checksum_ipv4`] / [`Packet::fill_checksum_ipv6`] once the payload is in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpHeader {
    pub source_port: u16,
    pub destination_port: u16,
    /// Bytes after the header; the length field is this plus `HEADER_LEN`.
    pub payload_len: usize,
}

impl UdpHeader {
    /// Writes `HEADER_LEN` bytes at the start of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than `HEADER_LEN`, or the length exceeds 65535.
    pub fn emit(&self, buf: &mut [u8]) {
        let length =
            u16::try_from(HEADER_LEN + self.payload_len).expect("UDP payload_len exceeds the 65535-byte length");
        let mut packet = Packet::new_unchecked(&mut buf[..HEADER_LEN]);
        packet.set_source_port(self.source_port);
        packet.set_destination_port(self.destination_port);
        packet.set_length(length);
        packet.set_checksum(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // UDP 4790 -> 4790 carrying VXLAN VNI 4242 and an ARP request. Its checksum is 0x7a65
    // between 198.18.0.1 and 198.18.0.2, and 0xab18 between 2001:db8::1 and 2001:db8::2
    // (computed independently of this code).
    const DATAGRAM: [u8; 58] = [
        0x12, 0xb6, // source port 4790
        0x12, 0xb6, // destination port 4790
        0x00, 0x3a, // length 58
        0x7a, 0x65, // checksum (IPv4)
        // VXLAN: I flag, VNI 4242
        0x08, 0x00, 0x00, 0x00, 0x00, 0x10, 0x92, 0x00, // Ethernet: broadcast <- 52:54:00:12:34:56, ARP
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x06, 0x00, 0x01, 0x08, 0x00,
        0x06, 0x04, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x0a, 0xf4, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x0a, 0xf4, 0x00, 0x02,
    ];
    const V4: (Ipv4Addr, Ipv4Addr) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));

    fn v6() -> (Ipv6Addr, Ipv6Addr) {
        ("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap())
    }

    #[test]
    fn parse_every_field() {
        let p = Packet::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!(p.source_port(), 4790);
        assert_eq!(p.destination_port(), 4790);
        assert_eq!(p.length(), 58);
        assert_eq!(p.checksum(), 0x7a65);
        assert_eq!(p.payload(), &DATAGRAM[8..]);
        assert!(p.verify_checksum_ipv4(V4.0, V4.1));
        assert!(!p.verify_checksum_ipv4(V4.1, Ipv4Addr::new(198, 18, 0, 3)));
    }

    #[test]
    fn payload_stops_at_length() {
        let mut longer = DATAGRAM.to_vec();
        longer.extend_from_slice(&[0xAA; 3]);
        let p = Packet::new_checked(&longer[..]).unwrap();
        assert_eq!(p.payload(), &DATAGRAM[8..]);
        assert!(p.verify_checksum_ipv4(V4.0, V4.1));
    }

    #[test]
    fn emit_and_fill_round_trip_ipv4() {
        let mut buf = [0xEEu8; 58];
        UdpHeader { source_port: 4790, destination_port: 4790, payload_len: 50 }.emit(&mut buf);
        assert_eq!(buf[..8], [0x12, 0xb6, 0x12, 0xb6, 0x00, 0x3a, 0x00, 0x00]);
        buf[8..].copy_from_slice(&DATAGRAM[8..]);
        Packet::new_unchecked(&mut buf[..]).fill_checksum_ipv4(V4.0, V4.1);
        assert_eq!(buf, DATAGRAM);
    }

    #[test]
    fn fill_and_verify_ipv6() {
        let (s, d) = v6();
        let mut buf = DATAGRAM;
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.fill_checksum_ipv6(s, d);
        assert_eq!(p.checksum(), 0xab18);
        assert!(p.verify_checksum_ipv6(s, d));
        assert!(!p.verify_checksum_ipv6(s, "2001:db8::3".parse().unwrap()));
        p.payload_mut()[0] ^= 1;
        assert!(!p.verify_checksum_ipv6(s, d));
    }

    #[test]
    fn zero_checksum() {
        let (s, d) = v6();
        let mut buf = DATAGRAM;
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_checksum(0);
        assert!(p.verify_checksum_ipv4(V4.0, V4.1), "0 means no checksum over IPv4");
        assert!(!p.verify_checksum_ipv6(s, d), "0 is invalid over IPv6");
    }

    #[test]
    fn computed_zero_is_sent_as_all_ones() {
        // Choose payload bytes so that the datagram and pseudo-header sum to 0xFFFF, whose
        // checksum would be 0.
        let mut buf = [0u8; 10];
        UdpHeader { source_port: 1, destination_port: 2, payload_len: 2 }.emit(&mut buf);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.fill_checksum_ipv4(V4.0, V4.1);
        let missing = p.checksum();
        p.payload_mut().copy_from_slice(&missing.to_be_bytes());
        p.fill_checksum_ipv4(V4.0, V4.1);
        assert_eq!(p.checksum(), 0xFFFF);
        assert!(p.verify_checksum_ipv4(V4.0, V4.1));
    }

    #[test]
    fn setters_write_fields() {
        let mut buf = [0u8; 10];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_source_port(4500);
        p.set_destination_port(500);
        p.set_length(10);
        p.set_checksum(0xbeef);
        p.payload_mut().copy_from_slice(&[0xff, 0xfe]);
        assert_eq!(buf, [0x11, 0x94, 0x01, 0xf4, 0x00, 0x0a, 0xbe, 0xef, 0xff, 0xfe]);
    }

    #[test]
    fn rejects_truncation_and_bad_length() {
        let check = |bytes: &[u8]| Packet::new_checked(bytes).map(|_| ());
        assert_eq!(check(&[]), Err(Error::Truncated));
        assert_eq!(check(&DATAGRAM[..7]), Err(Error::Truncated));
        assert_eq!(check(&DATAGRAM[..57]), Err(Error::Truncated));
        let mut bytes = DATAGRAM;
        bytes[5] = 7;
        assert_eq!(check(&bytes), Err(Error::Malformed("UDP length is shorter than the header")));
        bytes[5] = 8;
        assert!(Packet::new_checked(&bytes[..]).unwrap().payload().is_empty());
    }

    #[test]
    #[should_panic(expected = "65535")]
    fn emit_rejects_oversized_payload() {
        UdpHeader { source_port: 1, destination_port: 2, payload_len: 65528 }.emit(&mut [0u8; 8]);
    }

    fn read_everything(p: &Packet<&[u8]>) {
        let (s6, d6) = v6();
        let _ = (p.source_port(), p.destination_port(), p.length(), p.checksum(), p.payload());
        let _ = p.verify_checksum_ipv4(V4.0, V4.1);
        let _ = p.verify_checksum_ipv6(s6, d6);
    }

    proptest! {
        #[test]
        fn getters_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                read_everything(&p);
            }
        }

        /// Inputs with a small length field, so that most reach the getters.
        #[test]
        fn getters_never_panic_near_valid(
            length in 0u16..80,
            mut bytes in proptest::collection::vec(any::<u8>(), 8..80),
        ) {
            bytes[4..6].copy_from_slice(&length.to_be_bytes());
            match Packet::new_checked(&bytes[..]) {
                Ok(p) => {
                    read_everything(&p);
                    prop_assert_eq!(p.payload().len() + HEADER_LEN, usize::from(length));
                }
                Err(_) => prop_assert!(length < 8 || usize::from(length) > bytes.len()),
            }
        }

        #[test]
        fn filled_checksums_verify(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            s4 in any::<[u8; 4]>(),
            d4 in any::<[u8; 4]>(),
            s6 in any::<[u8; 16]>(),
            d6 in any::<[u8; 16]>(),
        ) {
            let mut buf = vec![0u8; HEADER_LEN + payload.len()];
            UdpHeader { source_port: 4790, destination_port: 4790, payload_len: payload.len() }
                .emit(&mut buf);
            buf[HEADER_LEN..].copy_from_slice(&payload);
            let mut p = Packet::new_checked(&mut buf[..]).unwrap();
            p.fill_checksum_ipv4(s4.into(), d4.into());
            prop_assert!(p.checksum() != 0);
            prop_assert!(p.verify_checksum_ipv4(s4.into(), d4.into()));
            p.fill_checksum_ipv6(s6.into(), d6.into());
            prop_assert!(p.checksum() != 0);
            prop_assert!(p.verify_checksum_ipv6(s6.into(), d6.into()));
        }
    }
}
