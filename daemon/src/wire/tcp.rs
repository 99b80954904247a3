//! TCP headers (RFC 9293) and their checksum over IPv4 and IPv6 pseudo-headers.
//!
//! Options are exposed as a byte slice, not parsed: the offload code only compares them.

#[cfg(test)]
use std::net::{Ipv4Addr, Ipv6Addr};

#[cfg(test)]
use super::checksum;
use super::{read_u16, read_u32, write_u16, write_u32, Error, Result};

/// The IP protocol number of TCP.
pub const PROTOCOL_TCP: u8 = 6;

/// Length of a header without options (data offset 5).
pub const HEADER_LEN: usize = field::URGENT.end;
/// Largest header: data offset 15, 40 bytes of options.
#[cfg(any(test, feature = "internals"))]
pub const MAX_HEADER_LEN: usize = 60;
/// Where the checksum sits in the header (the virtio-net `csum_offset` of TCP).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// The flag bits of [`Packet::flags`], in their header positions (byte 13, plus AE in byte 12).
pub mod flags {
    pub const FIN: u16 = 0x001;
    #[cfg(test)]
    pub const SYN: u16 = 0x002;
    #[cfg(test)]
    pub const RST: u16 = 0x004;
    pub const PSH: u16 = 0x008;
    pub const ACK: u16 = 0x010;
    #[cfg(test)]
    pub const URG: u16 = 0x020;
    pub const ECE: u16 = 0x040;
    pub const CWR: u16 = 0x080;
    /// Accurate ECN (RFC 3540's former NS bit, reused by AccECN).
    pub const AE: u16 = 0x100;
}

mod field {
    use crate::wire::Field;

    #[cfg(any(test, feature = "internals"))]
    pub const SOURCE_PORT: Field = 0..2;
    #[cfg(any(test, feature = "internals"))]
    pub const DESTINATION_PORT: Field = 2..4;
    pub const SEQUENCE: Field = 4..8;
    #[cfg(any(test, feature = "internals"))]
    pub const ACKNOWLEDGMENT: Field = 8..12;
    /// Data offset (4 bits), reserved (3), AE (1), then CWR..FIN (8).
    pub const OFFSET_FLAGS: Field = 12..14;
    #[cfg(any(test, feature = "internals"))]
    pub const WINDOW: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
}

const FLAGS_MASK: u16 = 0x01FF;

crate::wire::view! {
    /// A read/write view of a TCP segment: header, options and payload up to the end of the buffer
    /// (TCP has no length field; the caller cuts the buffer at the IP payload's end).
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Nothing beyond the lengths to refuse. The checksum needs the IP addresses: see the
    /// `verify_checksum_*` methods.
    fn check_fields(&self) -> Result<()> {
        Ok(())
    }

    /// Checks that the fixed header and the options the data offset announces fit in the buffer.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = self.header_length();
        if header_len < HEADER_LEN {
            return Err(Error::Malformed("TCP data offset is below 5"));
        }
        if header_len > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    #[cfg(test)]
    pub fn source_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SOURCE_PORT)
    }

    #[cfg(test)]
    pub fn destination_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DESTINATION_PORT)
    }

    pub fn sequence_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQUENCE)
    }

    #[cfg(test)]
    pub fn acknowledgment_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACKNOWLEDGMENT)
    }

    /// Header length in bytes (data offset × 4), options included.
    pub fn header_length(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::OFFSET_FLAGS.start] >> 4) * 4
    }

    /// The nine flag bits (see [`flags`]); the three reserved bits are left out.
    pub fn flags(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::OFFSET_FLAGS) & FLAGS_MASK
    }

    #[cfg(test)]
    pub fn fin(&self) -> bool {
        self.flags() & flags::FIN != 0
    }

    #[cfg(test)]
    pub fn syn(&self) -> bool {
        self.flags() & flags::SYN != 0
    }

    #[cfg(test)]
    pub fn rst(&self) -> bool {
        self.flags() & flags::RST != 0
    }

    #[cfg(test)]
    pub fn psh(&self) -> bool {
        self.flags() & flags::PSH != 0
    }

    #[cfg(test)]
    pub fn ack(&self) -> bool {
        self.flags() & flags::ACK != 0
    }

    #[cfg(test)]
    pub fn urg(&self) -> bool {
        self.flags() & flags::URG != 0
    }

    #[cfg(test)]
    pub fn ece(&self) -> bool {
        self.flags() & flags::ECE != 0
    }

    #[cfg(test)]
    pub fn cwr(&self) -> bool {
        self.flags() & flags::CWR != 0
    }

    #[cfg(test)]
    pub fn window_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WINDOW)
    }

    #[cfg(test)]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    #[cfg(test)]
    pub fn urgent_pointer(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT)
    }

    /// The option bytes between the fixed header and the data offset, padding included.
    #[cfg(test)]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_length()]
    }

    /// Everything after the header, to the end of the buffer.
    #[cfg(test)]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_length()..]
    }

    #[cfg(test)]
    fn segment_length(&self) -> usize {
        self.buffer.as_ref().len()
    }

    /// True if the checksum over the IPv4 pseudo-header, header and payload is correct.
    /// A segment longer than 65535 bytes cannot be carried by IPv4 and fails.
    #[cfg(test)]
    pub fn verify_checksum_ipv4(&self, source: Ipv4Addr, destination: Ipv4Addr) -> bool {
        let Ok(length) = u16::try_from(self.segment_length()) else {
            return false;
        };
        let pseudo = checksum::pseudo_header_v4(source, destination, PROTOCOL_TCP, length);
        checksum::combine(&[pseudo, checksum::data(self.buffer.as_ref())]) == 0xFFFF
    }

    /// True if the checksum over the IPv6 pseudo-header, header and payload is correct.
    #[cfg(test)]
    pub fn verify_checksum_ipv6(&self, source: Ipv6Addr, destination: Ipv6Addr) -> bool {
        let Ok(length) = u32::try_from(self.segment_length()) else {
            return false;
        };
        let pseudo = checksum::pseudo_header_v6(source, destination, PROTOCOL_TCP, length);
        checksum::combine(&[pseudo, checksum::data(self.buffer.as_ref())]) == 0xFFFF
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[cfg(any(test, feature = "internals"))]
    pub fn set_source_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::SOURCE_PORT, value);
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn set_destination_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::DESTINATION_PORT, value);
    }

    pub fn set_sequence_number(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::SEQUENCE, value);
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn set_acknowledgment_number(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::ACKNOWLEDGMENT, value);
    }

    /// Sets the data offset from a length in bytes, which must be a multiple of 4 from 20 to 60.
    #[cfg(any(test, feature = "internals"))]
    pub fn set_header_length(&mut self, value: usize) {
        debug_assert!(
            value & 3 == 0 && (HEADER_LEN..=MAX_HEADER_LEN).contains(&value),
            "bad TCP header length {value}"
        );
        let b = &mut self.buffer.as_mut()[field::OFFSET_FLAGS.start];
        *b = (*b & 0x0F) | (((value / 4) as u8) << 4);
    }

    /// Sets the nine flag bits; the data offset and the reserved bits are kept.
    pub fn set_flags(&mut self, value: u16) {
        let raw = read_u16(self.buffer.as_ref(), field::OFFSET_FLAGS);
        write_u16(self.buffer.as_mut(), field::OFFSET_FLAGS, (raw & !FLAGS_MASK) | (value & FLAGS_MASK));
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn set_window_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::WINDOW, value);
    }

    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn set_urgent_pointer(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::URGENT, value);
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_length();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    #[cfg(test)]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_length();
        &mut self.buffer.as_mut()[start..]
    }

    #[cfg(test)]
    fn store_checksum(&mut self, pseudo: u16) {
        self.set_checksum(0);
        let sum = checksum::combine(&[pseudo, checksum::data(self.buffer.as_ref())]);
        self.set_checksum(!sum);
    }

    /// Computes the checksum over the IPv4 pseudo-header, header and payload (the whole buffer).
    ///
    /// # Panics
    /// If the buffer is longer than 65535 bytes.
    #[cfg(test)]
    pub fn fill_checksum_ipv4(&mut self, source: Ipv4Addr, destination: Ipv4Addr) {
        let length = u16::try_from(self.segment_length()).expect("TCP segment exceeds 65535 bytes");
        self.store_checksum(checksum::pseudo_header_v4(source, destination, PROTOCOL_TCP, length));
    }

    /// Computes the checksum over the IPv6 pseudo-header, header and payload (the whole buffer).
    #[cfg(test)]
    pub fn fill_checksum_ipv6(&mut self, source: Ipv6Addr, destination: Ipv6Addr) {
        let length = u32::try_from(self.segment_length()).expect("TCP segment exceeds 2^32 bytes");
        self.store_checksum(checksum::pseudo_header_v6(source, destination, PROTOCOL_TCP, length));
    }
}

/// A TCP header to write, with checksum 0: fill it afterwards with
/// [`Packet::fill_checksum_ipv4`] / [`Packet::fill_checksum_ipv6`] once the payload is in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg(any(test, feature = "internals"))]
pub struct TcpHeader<'a> {
    pub source_port: u16,
    pub destination_port: u16,
    pub sequence_number: u32,
    pub acknowledgment_number: u32,
    /// See [`flags`].
    pub flags: u16,
    pub window_len: u16,
    pub urgent_pointer: u16,
    /// Option bytes, already padded to a multiple of 4, at most 40.
    pub options: &'a [u8],
}

#[cfg(any(test, feature = "internals"))]
impl TcpHeader<'_> {
    /// Length of the header this writes.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options.len()
    }

    /// Writes `header_len()` bytes at the start of `buf`.
    ///
    /// # Panics
    /// If `buf` is too short, or the options are not a multiple of 4 bytes up to 40.
    pub fn emit(&self, buf: &mut [u8]) {
        assert!(
            self.options.len() & 3 == 0 && self.options.len() <= MAX_HEADER_LEN - HEADER_LEN,
            "TCP options must be padded to a multiple of 4 bytes, at most 40"
        );
        let header_len = self.header_len();
        let mut packet = Packet::new_unchecked(&mut buf[..header_len]);
        packet.buffer[field::OFFSET_FLAGS].fill(0);
        packet.set_source_port(self.source_port);
        packet.set_destination_port(self.destination_port);
        packet.set_sequence_number(self.sequence_number);
        packet.set_acknowledgment_number(self.acknowledgment_number);
        packet.set_header_length(header_len);
        packet.set_flags(self.flags);
        packet.set_window_len(self.window_len);
        packet.set_checksum(0);
        packet.set_urgent_pointer(self.urgent_pointer);
        packet.options_mut().copy_from_slice(self.options);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // 198.18.0.1:45678 -> 198.18.0.2:5201, ACK|PSH, with NOP NOP timestamps and 10 bytes of data;
    // its checksum 0x4e82 was computed independently and checked with tshark.
    const SEGMENT: [u8; 42] = [
        0xb2, 0x6e, // source port 45678
        0x14, 0x51, // destination port 5201
        0x9c, 0x1f, 0x5a, 0x01, // sequence
        0x6d, 0x2e, 0x11, 0x7f, // acknowledgment
        0x80, 0x18, // data offset 8, ACK|PSH
        0x01, 0xf6, // window 502
        0x4e, 0x82, // checksum
        0x00, 0x00, // urgent pointer
        0x01, 0x01, 0x08, 0x0a, 0x4b, 0x3c, 0x2d, 0x1e, 0x0f, 0xa0, 0xb1, 0xc2, // NOP NOP TS
        b'h', b'e', b'l', b'l', b'o', b' ', b'm', b'e', b's', b'h',
    ];
    const V4: (Ipv4Addr, Ipv4Addr) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));

    fn v6() -> (Ipv6Addr, Ipv6Addr) {
        ("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap())
    }

    /// The checksum computed the slow way: a pseudo-header laid out in bytes, then RFC 1071.
    fn reference_checksum_v4(segment: &[u8], source: Ipv4Addr, destination: Ipv4Addr) -> u16 {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&source.octets());
        bytes.extend_from_slice(&destination.octets());
        bytes.extend_from_slice(&[0, PROTOCOL_TCP]);
        bytes.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        bytes.extend_from_slice(segment);
        bytes[12 + 16..12 + 18].fill(0);
        let mut acc: u32 = 0;
        for pair in bytes.chunks(2) {
            acc += u32::from(pair[0]) << 8 | u32::from(pair.get(1).copied().unwrap_or(0));
        }
        while acc > 0xFFFF {
            acc = (acc & 0xFFFF) + (acc >> 16);
        }
        !(acc as u16)
    }

    #[test]
    fn parse_every_field() {
        let p = Packet::new_checked(&SEGMENT[..]).unwrap();
        assert_eq!(p.source_port(), 45678);
        assert_eq!(p.destination_port(), 5201);
        assert_eq!(p.sequence_number(), 0x9c1f_5a01);
        assert_eq!(p.acknowledgment_number(), 0x6d2e_117f);
        assert_eq!(p.header_length(), 32);
        assert_eq!(p.flags(), flags::ACK | flags::PSH);
        assert!(p.ack() && p.psh());
        assert!(!p.fin() && !p.syn() && !p.rst() && !p.urg() && !p.ece() && !p.cwr());
        assert_eq!(p.window_len(), 502);
        assert_eq!(p.checksum(), 0x4e82);
        assert_eq!(p.urgent_pointer(), 0);
        assert_eq!(p.options(), &SEGMENT[20..32]);
        assert_eq!(p.payload(), b"hello mesh");
    }

    #[test]
    fn checksum_matches_an_independent_computation() {
        assert_eq!(reference_checksum_v4(&SEGMENT, V4.0, V4.1), 0x4e82);
        let p = Packet::new_checked(&SEGMENT[..]).unwrap();
        assert!(p.verify_checksum_ipv4(V4.0, V4.1));
        assert!(!p.verify_checksum_ipv4(V4.0, Ipv4Addr::new(198, 18, 0, 3)));

        let mut bytes = SEGMENT;
        let mut p = Packet::new_unchecked(&mut bytes[..]);
        p.set_checksum(0x1234);
        p.fill_checksum_ipv4(V4.0, V4.1);
        assert_eq!(bytes, SEGMENT);
    }

    #[test]
    fn ipv6_fill_and_verify() {
        let (s, d) = v6();
        let mut bytes = SEGMENT;
        let mut p = Packet::new_unchecked(&mut bytes[..]);
        p.fill_checksum_ipv6(s, d);
        assert!(p.verify_checksum_ipv6(s, d));
        assert!(!p.verify_checksum_ipv6(d, "2001:db8::3".parse().unwrap()));
        p.payload_mut()[0] ^= 0x20;
        assert!(!p.verify_checksum_ipv6(s, d));
    }

    #[test]
    fn odd_length_segment() {
        let mut bytes = SEGMENT[..41].to_vec();
        let mut p = Packet::new_unchecked(&mut bytes[..]);
        p.fill_checksum_ipv4(V4.0, V4.1);
        assert_eq!(p.checksum(), reference_checksum_v4(&bytes, V4.0, V4.1));
        assert!(Packet::new_checked(&bytes[..]).unwrap().verify_checksum_ipv4(V4.0, V4.1));
    }

    #[test]
    fn emit_round_trip() {
        let header = TcpHeader {
            source_port: 45678,
            destination_port: 5201,
            sequence_number: 0x9c1f_5a01,
            acknowledgment_number: 0x6d2e_117f,
            flags: flags::ACK | flags::PSH,
            window_len: 502,
            urgent_pointer: 0,
            options: &SEGMENT[20..32],
        };
        assert_eq!(header.header_len(), 32);
        let mut buf = [0xEEu8; 42];
        header.emit(&mut buf);
        buf[32..].copy_from_slice(b"hello mesh");
        Packet::new_unchecked(&mut buf[..]).fill_checksum_ipv4(V4.0, V4.1);
        assert_eq!(buf, SEGMENT);
    }

    #[test]
    #[should_panic(expected = "multiple of 4")]
    fn emit_rejects_unpadded_options() {
        let header = TcpHeader {
            source_port: 1,
            destination_port: 2,
            sequence_number: 0,
            acknowledgment_number: 0,
            flags: flags::SYN,
            window_len: 0,
            urgent_pointer: 0,
            options: &[2, 4, 5],
        };
        header.emit(&mut [0u8; 60]);
    }

    #[test]
    fn setters_keep_neighbouring_bits() {
        let mut bytes = SEGMENT;
        bytes[12] |= 0x0E; // reserved bits set by someone else
        let mut p = Packet::new_unchecked(&mut bytes[..]);
        p.set_flags(flags::SYN | flags::ECE | flags::CWR | flags::AE | flags::URG | flags::FIN | flags::RST);
        assert_eq!(p.header_length(), 32);
        assert!(p.syn() && p.ece() && p.cwr() && p.urg() && p.fin() && p.rst() && !p.ack() && !p.psh());
        assert_eq!(p.flags() & flags::AE, flags::AE);
        p.set_header_length(20);
        assert_eq!(p.header_length(), 20);
        assert_eq!(p.flags(), flags::SYN | flags::ECE | flags::CWR | flags::AE | flags::URG | flags::FIN | flags::RST);
        assert_eq!(bytes[12] & 0x0E, 0x0E, "reserved bits kept");
        let mut p = Packet::new_unchecked(&mut bytes[..]);
        p.set_source_port(1);
        p.set_destination_port(2);
        p.set_sequence_number(3);
        p.set_acknowledgment_number(4);
        p.set_window_len(5);
        p.set_urgent_pointer(6);
        assert_eq!(bytes[..12], [0, 1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4]);
        assert_eq!(bytes[14..16], [0, 5]);
        assert_eq!(bytes[18..20], [0, 6]);
    }

    #[test]
    fn rejects_truncation_and_bad_offset() {
        let check = |bytes: &[u8]| Packet::new_checked(bytes).map(|_| ());
        assert_eq!(check(&[]), Err(Error::Truncated));
        assert_eq!(check(&SEGMENT[..19]), Err(Error::Truncated));
        // Data offset 8 (32 bytes) but only 31 bytes.
        assert_eq!(check(&SEGMENT[..31]), Err(Error::Truncated));
        assert!(check(&SEGMENT[..32]).is_ok());
        let mut bytes = SEGMENT;
        bytes[12] = 0x40;
        assert_eq!(check(&bytes), Err(Error::Malformed("TCP data offset is below 5")));
    }

    fn read_everything(p: &Packet<&[u8]>) {
        let _ = (p.source_port(), p.destination_port(), p.sequence_number(), p.acknowledgment_number());
        let _ = (p.header_length(), p.flags(), p.window_len(), p.checksum(), p.urgent_pointer());
        let _ = (p.options(), p.payload());
        let _ = p.verify_checksum_ipv4(V4.0, V4.1);
        let (s, d) = v6();
        let _ = p.verify_checksum_ipv6(s, d);
    }

    proptest! {
        #[test]
        fn getters_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                read_everything(&p);
                prop_assert_eq!(p.options().len() + p.payload().len() + HEADER_LEN, bytes.len());
            }
        }

        #[test]
        fn fill_matches_reference(
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            source in any::<[u8; 4]>(),
            destination in any::<[u8; 4]>(),
        ) {
            let mut bytes = SEGMENT[..32].to_vec();
            bytes.extend_from_slice(&payload);
            let (s, d) = (Ipv4Addr::from(source), Ipv4Addr::from(destination));
            let mut p = Packet::new_unchecked(&mut bytes[..]);
            p.fill_checksum_ipv4(s, d);
            prop_assert_eq!(p.checksum(), reference_checksum_v4(&bytes, s, d));
            prop_assert!(Packet::new_checked(&bytes[..]).unwrap().verify_checksum_ipv4(s, d));
        }
    }
}
