//! IPv4 headers (RFC 791). Options are skipped over, not parsed.

use std::net::Ipv4Addr;

use super::{checksum, read_u16, write_u16, Error, Result};

pub const PROTOCOL_ICMP: u8 = 1;
pub const PROTOCOL_IPV4_IN_IP: u8 = 4;
pub const PROTOCOL_UDP: u8 = 17;
pub const PROTOCOL_IPV6_IN_IP: u8 = 41;
pub const PROTOCOL_ESP: u8 = 50;
/// ICMPv6's protocol (IPv6 next header) number.
pub const PROTOCOL_ICMPV6: u8 = 58;

/// Length of a header without options (IHL 5), the only kind [`Ipv4Header`] writes.
pub const HEADER_LEN: usize = field::DESTINATION.end;

mod field {
    use crate::wire::Field;

    pub const VERSION_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const TOTAL_LENGTH: Field = 2..4;
    pub const IDENTIFICATION: Field = 4..6;
    pub const FLAGS_FRAGMENT_OFFSET: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SOURCE: Field = 12..16;
    pub const DESTINATION: Field = 16..20;
}

const FLAG_DONT_FRAGMENT: u16 = 0x4000;
const FLAG_MORE_FRAGMENTS: u16 = 0x2000;
const FRAGMENT_OFFSET_MASK: u16 = 0x1FFF;

crate::wire::view! {
    /// A read/write view of an IPv4 packet.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// The version must be 4. The header checksum is not verified here: see
    /// [`Packet::verify_checksum`]. The buffer may extend past the total length (link-layer
    /// padding); the payload stops at the total length.
    fn check_fields(&self) -> Result<()> {
        if self.version() != 4 {
            return Err(Error::Malformed("IPv4 version is not 4"));
        }
        Ok(())
    }

    /// Checks that the header, its options and the total length fit in the buffer.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = self.header_length();
        if header_len < HEADER_LEN {
            return Err(Error::Malformed("IPv4 header length (IHL) is below 5"));
        }
        let total_len = usize::from(self.total_length());
        if total_len < header_len {
            return Err(Error::Malformed("IPv4 total length is shorter than the header"));
        }
        if total_len > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4), options included.
    pub fn header_length(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VERSION_IHL] & 0x0F) * 4
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    /// Header plus payload, in bytes.
    pub fn total_length(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::TOTAL_LENGTH)
    }

    pub fn identification(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENTIFICATION)
    }

    pub fn dont_fragment(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLAGS_FRAGMENT_OFFSET) & FLAG_DONT_FRAGMENT != 0
    }

    pub fn more_fragments(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLAGS_FRAGMENT_OFFSET) & FLAG_MORE_FRAGMENTS != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    pub fn fragment_offset(&self) -> u16 {
        (read_u16(self.buffer.as_ref(), field::FLAGS_FRAGMENT_OFFSET) & FRAGMENT_OFFSET_MASK) * 8
    }

    /// True for any fragment, first or later: such a payload is not a whole datagram.
    pub fn is_fragment(&self) -> bool {
        self.more_fragments() || self.fragment_offset() != 0
    }

    /// Time to live.
    #[cfg(any(test, feature = "internals"))]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn source_address(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SOURCE];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn destination_address(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DESTINATION];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// True if the header checksum (options included) is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(&self.buffer.as_ref()[..self.header_length()]) == 0xFFFF
    }

    /// The bytes between the header (with options) and the total length.
    pub fn payload(&self) -> &[u8] {
        let range = self.header_length()..usize::from(self.total_length());
        &self.buffer.as_ref()[range]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_version(&mut self, value: u8) {
        let b = &mut self.buffer.as_mut()[field::VERSION_IHL];
        *b = (*b & 0x0F) | (value << 4);
    }

    /// Sets the IHL from a length in bytes, which must be a multiple of 4 up to 60.
    pub fn set_header_length(&mut self, value: usize) {
        debug_assert!(value & 3 == 0 && value <= 60, "bad IPv4 header length {value}");
        let b = &mut self.buffer.as_mut()[field::VERSION_IHL];
        *b = (*b & 0xF0) | ((value / 4) as u8 & 0x0F);
    }

    pub fn set_dscp(&mut self, value: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0x03) | (value << 2);
    }

    pub fn set_ecn(&mut self, value: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0xFC) | (value & 0x03);
    }

    pub fn set_total_length(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::TOTAL_LENGTH, value);
    }

    pub fn set_identification(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::IDENTIFICATION, value);
    }

    #[cfg(test)]
    fn set_flag(&mut self, flag: u16, value: bool) {
        let raw = read_u16(self.buffer.as_ref(), field::FLAGS_FRAGMENT_OFFSET);
        let raw = if value { raw | flag } else { raw & !flag };
        write_u16(self.buffer.as_mut(), field::FLAGS_FRAGMENT_OFFSET, raw);
    }

    #[cfg(test)]
    pub fn set_dont_fragment(&mut self, value: bool) {
        self.set_flag(FLAG_DONT_FRAGMENT, value);
    }

    #[cfg(test)]
    pub fn set_more_fragments(&mut self, value: bool) {
        self.set_flag(FLAG_MORE_FRAGMENTS, value);
    }

    /// Sets the fragment offset from bytes; the field holds 8-byte units, so the low 3 bits
    /// of `value` are dropped.
    #[cfg(test)]
    pub fn set_fragment_offset(&mut self, value: u16) {
        let raw = read_u16(self.buffer.as_ref(), field::FLAGS_FRAGMENT_OFFSET);
        let raw = (raw & !FRAGMENT_OFFSET_MASK) | (value / 8);
        write_u16(self.buffer.as_mut(), field::FLAGS_FRAGMENT_OFFSET, raw);
    }

    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[field::TTL] = value;
    }

    pub fn set_protocol(&mut self, value: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = value;
    }

    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    pub fn set_source_address(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&value.octets());
    }

    pub fn set_destination_address(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&value.octets());
    }

    /// Computes the header checksum over the header length set in the IHL field.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::data(&self.buffer.as_ref()[..self.header_length()]);
        self.set_checksum(!sum);
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_length()..usize::from(self.total_length());
        &mut self.buffer.as_mut()[range]
    }
}

/// An IPv4 header to write: no options, DSCP/ECN 0, not a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub protocol: u8,
    /// Bytes after the header; the total length is this plus `HEADER_LEN`.
    pub payload_len: usize,
    pub hop_limit: u8,
    pub dont_fragment: bool,
    /// Must differ between recent packets to a peer when `dont_fragment` is false (RFC 6864),
    /// so that routers' fragments reassemble; may be anything when it is true.
    pub identification: u16,
}

impl Ipv4Header {
    /// Writes `HEADER_LEN` bytes with a correct header checksum at the start of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than `HEADER_LEN`, or the total length exceeds 65535.
    pub fn emit(&self, buf: &mut [u8]) {
        let total_length =
            u16::try_from(HEADER_LEN + self.payload_len).expect("IPv4 payload_len exceeds the 65535-byte total length");
        let mut packet = Packet::new_unchecked(&mut buf[..HEADER_LEN]);
        packet.set_version(4);
        packet.set_header_length(HEADER_LEN);
        packet.set_dscp(0);
        packet.set_ecn(0);
        packet.set_total_length(total_length);
        packet.set_identification(self.identification);
        // Flags and offset in one write: DF as asked, MF clear, offset 0 (not a fragment).
        let flags = if self.dont_fragment { FLAG_DONT_FRAGMENT } else { 0 };
        write_u16(packet.buffer, field::FLAGS_FRAGMENT_OFFSET, flags);
        packet.set_hop_limit(self.hop_limit);
        packet.set_protocol(self.protocol);
        packet.set_source_address(self.source);
        packet.set_destination_address(self.destination);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // 198.18.0.1 -> 198.18.0.2 UDP 4790 -> 4790 carrying VXLAN VNI 4242 and an ARP request;
    // checksums computed independently of this code.
    const PACKET: [u8; 78] = [
        0x45, // version 4, IHL 5
        0x00, // DSCP 0, ECN 0
        0x00, 0x4e, // total length 78
        0x1c, 0x46, // identification
        0x40, 0x00, // DF, offset 0
        0x40, // TTL 64
        0x11, // protocol UDP
        0x92, 0x31, // header checksum
        0xc6, 0x12, 0x00, 0x01, // source 198.18.0.1
        0xc6, 0x12, 0x00, 0x02, // destination 198.18.0.2
        // UDP: 4790 -> 4790, length 58, checksum 0x7a65
        0x12, 0xb6, 0x12, 0xb6, 0x00, 0x3a, 0x7a, 0x65, // VXLAN: I flag, VNI 4242
        0x08, 0x00, 0x00, 0x00, 0x00, 0x10, 0x92, 0x00, // Ethernet: broadcast <- 52:54:00:12:34:56, ARP
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x06, 0x00, 0x01, 0x08, 0x00,
        0x06, 0x04, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x0a, 0xf4, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x0a, 0xf4, 0x00, 0x02,
    ];

    fn header() -> Ipv4Header {
        Ipv4Header {
            source: Ipv4Addr::new(198, 18, 0, 1),
            destination: Ipv4Addr::new(198, 18, 0, 2),
            protocol: PROTOCOL_UDP,
            payload_len: 58,
            hop_limit: 64,
            dont_fragment: true,
            identification: 0x1c46,
        }
    }

    #[test]
    fn parse_every_field() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_length(), 20);
        assert_eq!(p.dscp(), 0);
        assert_eq!(p.ecn(), 0);
        assert_eq!(p.total_length(), 78);
        assert_eq!(p.identification(), 0x1c46);
        assert!(p.dont_fragment());
        assert!(!p.more_fragments());
        assert_eq!(p.fragment_offset(), 0);
        assert!(!p.is_fragment());
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.protocol(), PROTOCOL_UDP);
        assert_eq!(p.checksum(), 0x9231);
        assert!(p.verify_checksum());
        assert_eq!(p.source_address(), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(p.destination_address(), Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(p.payload(), &PACKET[20..]);
    }

    #[test]
    fn payload_stops_at_total_length() {
        // Ethernet pads short frames; the padding is not payload.
        let mut padded = PACKET.to_vec();
        padded.extend_from_slice(&[0; 6]);
        let p = Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(p.payload(), &PACKET[20..]);
    }

    #[test]
    fn options_are_skipped() {
        // IHL 6: one 4-byte option (four NOPs) before the payload.
        let mut bytes = PACKET[..20].to_vec();
        bytes.extend_from_slice(&[0x01; 4]);
        bytes.extend_from_slice(&[0xaa, 0xbb]);
        let mut p = Packet::new_unchecked(&mut bytes[..]);
        p.set_header_length(24);
        p.set_total_length(26);
        p.fill_checksum();
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.header_length(), 24);
        assert!(p.verify_checksum());
        assert_eq!(p.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn emit_round_trip() {
        let mut buf = [0xEEu8; 78];
        header().emit(&mut buf);
        buf[20..].copy_from_slice(&PACKET[20..]);
        assert_eq!(buf, PACKET);
    }

    #[test]
    fn emit_without_df() {
        let mut buf = [0u8; 20];
        Ipv4Header { dont_fragment: false, identification: 7, ..header() }.emit(&mut buf);
        let p = Packet::new_unchecked(&buf[..]);
        assert!(!p.dont_fragment() && !p.is_fragment());
        assert_eq!(p.identification(), 7);
        assert!(p.verify_checksum());
    }

    #[test]
    #[should_panic(expected = "65535")]
    fn emit_rejects_oversized_payload() {
        let mut buf = [0u8; 20];
        Ipv4Header { payload_len: 65516, ..header() }.emit(&mut buf);
    }

    #[test]
    fn bad_checksum_detected() {
        let mut bytes = PACKET;
        bytes[8] = 63; // TTL changed without updating the checksum
        assert!(!Packet::new_checked(&bytes[..]).unwrap().verify_checksum());
    }

    #[test]
    fn setters_and_fragment_fields() {
        let mut bytes = PACKET;
        let mut p = Packet::new_unchecked(&mut bytes[..]);
        p.set_dscp(46);
        p.set_ecn(2);
        p.set_dont_fragment(false);
        p.set_more_fragments(true);
        p.set_fragment_offset(1480);
        p.set_hop_limit(1);
        p.set_protocol(PROTOCOL_ESP);
        p.set_source_address(Ipv4Addr::new(10, 0, 0, 1));
        p.set_destination_address(Ipv4Addr::new(10, 0, 0, 2));
        p.payload_mut()[0] = 0xff;
        p.fill_checksum();
        assert_eq!(p.dscp(), 46);
        assert_eq!(p.ecn(), 2);
        assert!(!p.dont_fragment());
        assert!(p.more_fragments());
        assert_eq!(p.fragment_offset(), 1480);
        assert!(p.is_fragment());
        assert_eq!(p.hop_limit(), 1);
        assert_eq!(p.protocol(), PROTOCOL_ESP);
        assert_eq!(p.source_address(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.destination_address(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(p.payload()[0], 0xff);
        assert!(p.verify_checksum());
        assert_eq!(bytes[6..8], [0x20, 0xb9]); // MF, 1480 / 8 = 185
    }

    #[test]
    fn rejects_truncation_and_bad_fields() {
        let check = |bytes: &[u8]| Packet::new_checked(bytes).map(|_| ());
        assert_eq!(check(&[]), Err(Error::Truncated));
        assert_eq!(check(&PACKET[..19]), Err(Error::Truncated));
        // Total length says 78, buffer holds 77.
        assert_eq!(check(&PACKET[..77]), Err(Error::Truncated));

        let mut bytes = PACKET;
        bytes[0] = 0x65;
        assert_eq!(check(&bytes), Err(Error::Malformed("IPv4 version is not 4")));

        let mut bytes = PACKET;
        bytes[0] = 0x44;
        assert_eq!(check(&bytes), Err(Error::Malformed("IPv4 header length (IHL) is below 5")));

        // IHL 15 (60 bytes) with a total length of 78 is fine; with total length 40 it is not.
        let mut bytes = PACKET;
        bytes[0] = 0x4f;
        assert!(check(&bytes).is_ok());
        bytes[3] = 40;
        assert_eq!(check(&bytes), Err(Error::Malformed("IPv4 total length is shorter than the header")));

        // IHL 15 but the buffer ends before the options do.
        let mut bytes = PACKET[..40].to_vec();
        bytes[0] = 0x4f;
        bytes[3] = 60;
        assert_eq!(check(&bytes), Err(Error::Truncated));
    }

    fn read_everything(p: &Packet<&[u8]>) {
        let _ = (p.version(), p.header_length(), p.dscp(), p.ecn(), p.total_length());
        let _ = (p.identification(), p.dont_fragment(), p.more_fragments());
        let _ = (p.fragment_offset(), p.is_fragment(), p.hop_limit(), p.protocol());
        let _ = (p.checksum(), p.source_address(), p.destination_address());
        let _ = (p.verify_checksum(), p.payload());
    }

    proptest! {
        #[test]
        fn getters_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                read_everything(&p);
            }
        }

        /// Inputs with a plausible version and lengths, so that most reach the getters.
        #[test]
        fn getters_never_panic_near_valid(
            ihl in 0u8..16,
            total in 0u16..100,
            mut bytes in proptest::collection::vec(any::<u8>(), 20..100),
        ) {
            bytes[0] = 0x40 | ihl;
            bytes[2..4].copy_from_slice(&total.to_be_bytes());
            match Packet::new_checked(&bytes[..]) {
                Ok(p) => {
                    read_everything(&p);
                    prop_assert_eq!(p.payload().len(), usize::from(total) - usize::from(ihl) * 4);
                }
                Err(_) => prop_assert!(ihl < 5 || usize::from(total) < usize::from(ihl) * 4
                    || usize::from(total) > bytes.len()),
            }
        }

        #[test]
        fn emitted_headers_parse_back(
            source in any::<[u8; 4]>(),
            destination in any::<[u8; 4]>(),
            protocol in any::<u8>(),
            payload_len in 0usize..200,
            hop_limit in any::<u8>(),
            dont_fragment in any::<bool>(),
            identification in any::<u16>(),
        ) {
            let h = Ipv4Header {
                source: source.into(),
                destination: destination.into(),
                protocol,
                payload_len,
                hop_limit,
                dont_fragment,
                identification,
            };
            let mut buf = vec![0u8; HEADER_LEN + payload_len];
            h.emit(&mut buf);
            let p = Packet::new_checked(&buf[..]).unwrap();
            prop_assert!(p.verify_checksum());
            prop_assert_eq!(p.source_address(), h.source);
            prop_assert_eq!(p.destination_address(), h.destination);
            prop_assert_eq!(p.protocol(), protocol);
            prop_assert_eq!(p.payload().len(), payload_len);
            prop_assert_eq!(p.hop_limit(), hop_limit);
            prop_assert_eq!(p.dont_fragment(), dont_fragment);
            prop_assert_eq!(p.identification(), identification);
            prop_assert!(!p.is_fragment());
        }
    }
}
