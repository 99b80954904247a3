//! IPv6 fixed headers (RFC 8200). Extension headers are not walked: the payload starts right
//! after the fixed header, and `next_header` names whatever comes first.

use std::net::Ipv6Addr;

use super::{read_u16, read_u32, write_u16, write_u32, Error, Result};

/// Length of the fixed header.
pub const HEADER_LEN: usize = field::DESTINATION.end;

/// Largest flow label (20 bits).
pub const FLOW_LABEL_MAX: u32 = 0x000F_FFFF;

mod field {
    use crate::wire::Field;

    /// Version (4 bits), traffic class (8), flow label (20).
    pub const VERSION_TC_FLOW: Field = 0..4;
    pub const PAYLOAD_LENGTH: Field = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SOURCE: Field = 8..24;
    pub const DESTINATION: Field = 24..40;
}

crate::wire::view! {
    /// A read/write view of an IPv6 packet.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// The version must be 6.
    fn check_fields(&self) -> Result<()> {
        if self.version() != 6 {
            return Err(Error::Malformed("IPv6 version is not 6"));
        }
        Ok(())
    }

    /// Checks that the fixed header and the payload length fit in the buffer. The buffer may
    /// extend past the payload (link-layer padding).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || HEADER_LEN + usize::from(self.payload_length()) > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    fn version_tc_flow(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VERSION_TC_FLOW)
    }

    pub fn version(&self) -> u8 {
        (self.version_tc_flow() >> 28) as u8
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn traffic_class(&self) -> u8 {
        (self.version_tc_flow() >> 20) as u8
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn flow_label(&self) -> u32 {
        self.version_tc_flow() & FLOW_LABEL_MAX
    }

    /// Bytes after the fixed header, extension headers included.
    pub fn payload_length(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PAYLOAD_LENGTH)
    }

    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn source_address(&self) -> Ipv6Addr {
        address(&self.buffer.as_ref()[field::SOURCE])
    }

    pub fn destination_address(&self) -> Ipv6Addr {
        address(&self.buffer.as_ref()[field::DESTINATION])
    }

    pub fn payload(&self) -> &[u8] {
        let end = HEADER_LEN + usize::from(self.payload_length());
        &self.buffer.as_ref()[HEADER_LEN..end]
    }
}

fn address(bytes: &[u8]) -> Ipv6Addr {
    let mut a = [0; 16];
    a.copy_from_slice(bytes);
    Ipv6Addr::from(a)
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_version_tc_flow(&mut self, version: u8, traffic_class: u8, flow_label: u32) {
        let raw = (u32::from(version) << 28) | (u32::from(traffic_class) << 20) | (flow_label & FLOW_LABEL_MAX);
        write_u32(self.buffer.as_mut(), field::VERSION_TC_FLOW, raw);
    }

    #[cfg(test)]
    pub fn set_version(&mut self, value: u8) {
        self.set_version_tc_flow(value, self.traffic_class(), self.flow_label());
    }

    #[cfg(test)]
    pub fn set_traffic_class(&mut self, value: u8) {
        self.set_version_tc_flow(self.version(), value, self.flow_label());
    }

    /// Sets the flow label; bits above the low 20 are dropped.
    #[cfg(test)]
    pub fn set_flow_label(&mut self, value: u32) {
        self.set_version_tc_flow(self.version(), self.traffic_class(), value);
    }

    pub fn set_payload_length(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::PAYLOAD_LENGTH, value);
    }

    pub fn set_next_header(&mut self, value: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = value;
    }

    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = value;
    }

    pub fn set_source_address(&mut self, value: Ipv6Addr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&value.octets());
    }

    pub fn set_destination_address(&mut self, value: Ipv6Addr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&value.octets());
    }

    #[cfg(test)]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + usize::from(self.payload_length());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// An IPv6 fixed header to write, with traffic class and flow label 0 (set a flow label
/// afterwards with [`Packet::set_flow_label`]; IPv6 has no header checksum to update).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Header {
    pub source: Ipv6Addr,
    pub destination: Ipv6Addr,
    pub next_header: u8,
    /// Bytes after the fixed header.
    pub payload_len: usize,
    pub hop_limit: u8,
}

impl Ipv6Header {
    /// Writes `HEADER_LEN` bytes at the start of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than `HEADER_LEN`, or `payload_len` exceeds 65535 (no jumbograms).
    pub fn emit(&self, buf: &mut [u8]) {
        let payload_length = u16::try_from(self.payload_len).expect("IPv6 payload_len exceeds 65535");
        let mut packet = Packet::new_unchecked(&mut buf[..HEADER_LEN]);
        packet.set_version_tc_flow(6, 0, 0);
        packet.set_payload_length(payload_length);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_source_address(self.source);
        packet.set_destination_address(self.destination);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::PROTOCOL_UDP;
    use proptest::prelude::*;

    // 2001:db8::1 -> 2001:db8::2 UDP 4790 -> 4790 carrying VXLAN VNI 4242 and an ARP request,
    // with a kernel-style automatic flow label; the UDP checksum was computed independently.
    const PACKET: [u8; 98] = [
        0x60, 0x06, 0xb2, 0xf1, // version 6, traffic class 0, flow label 0x6b2f1
        0x00, 0x3a, // payload length 58
        0x11, // next header UDP
        0x40, // hop limit 64
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, // source 2001:db8::1
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, //
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, // destination 2001:db8::2
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, //
        // UDP: 4790 -> 4790, length 58, checksum 0xab18
        0x12, 0xb6, 0x12, 0xb6, 0x00, 0x3a, 0xab, 0x18, // VXLAN: I flag, VNI 4242
        0x08, 0x00, 0x00, 0x00, 0x00, 0x10, 0x92, 0x00, // Ethernet: broadcast <- 52:54:00:12:34:56, ARP
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x06, 0x00, 0x01, 0x08, 0x00,
        0x06, 0x04, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x0a, 0xf4, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x0a, 0xf4, 0x00, 0x02,
    ];

    fn source() -> Ipv6Addr {
        "2001:db8::1".parse().unwrap()
    }

    fn destination() -> Ipv6Addr {
        "2001:db8::2".parse().unwrap()
    }

    #[test]
    fn parse_every_field() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0);
        assert_eq!(p.flow_label(), 0x6b2f1);
        assert_eq!(p.payload_length(), 58);
        assert_eq!(p.next_header(), PROTOCOL_UDP);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.source_address(), source());
        assert_eq!(p.destination_address(), destination());
        assert_eq!(p.payload(), &PACKET[40..]);
    }

    #[test]
    fn payload_stops_at_payload_length() {
        let mut padded = PACKET.to_vec();
        padded.extend_from_slice(&[0; 4]);
        let p = Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(p.payload(), &PACKET[40..]);
    }

    #[test]
    fn emit_round_trip() {
        let header = Ipv6Header {
            source: source(),
            destination: destination(),
            next_header: PROTOCOL_UDP,
            payload_len: 58,
            hop_limit: 64,
        };
        let mut buf = [0xEEu8; 98];
        header.emit(&mut buf);
        Packet::new_unchecked(&mut buf[..]).set_flow_label(0x6b2f1);
        buf[40..].copy_from_slice(&PACKET[40..]);
        assert_eq!(buf, PACKET);
    }

    #[test]
    fn setters_keep_neighbouring_bits() {
        let mut bytes = PACKET;
        let mut p = Packet::new_unchecked(&mut bytes[..]);
        p.set_traffic_class(0xb8); // DSCP EF
        assert_eq!((p.version(), p.traffic_class(), p.flow_label()), (6, 0xb8, 0x6b2f1));
        p.set_flow_label(0xFFF_FFFF);
        assert_eq!((p.version(), p.traffic_class(), p.flow_label()), (6, 0xb8, FLOW_LABEL_MAX));
        p.set_version(4);
        assert_eq!((p.version(), p.traffic_class(), p.flow_label()), (4, 0xb8, FLOW_LABEL_MAX));
        p.set_version(6);
        p.set_next_header(50);
        p.set_hop_limit(1);
        p.set_source_address(destination());
        p.set_destination_address(source());
        p.set_payload_length(2);
        p.payload_mut().copy_from_slice(&[1, 2]);
        assert_eq!(bytes[..8], [0x6b, 0x8f, 0xff, 0xff, 0x00, 0x02, 50, 1]);
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.source_address(), destination());
        assert_eq!(p.destination_address(), source());
        assert_eq!(p.payload(), &[1, 2]);
    }

    #[test]
    fn rejects_truncation_and_bad_version() {
        let check = |bytes: &[u8]| Packet::new_checked(bytes).map(|_| ());
        assert_eq!(check(&[]), Err(Error::Truncated));
        assert_eq!(check(&PACKET[..39]), Err(Error::Truncated));
        assert_eq!(check(&PACKET[..97]), Err(Error::Truncated));
        let mut bytes = PACKET;
        bytes[0] = 0x40;
        assert_eq!(check(&bytes), Err(Error::Malformed("IPv6 version is not 6")));
    }

    #[test]
    #[should_panic(expected = "65535")]
    fn emit_rejects_jumbogram() {
        let header = Ipv6Header {
            source: source(),
            destination: destination(),
            next_header: PROTOCOL_UDP,
            payload_len: 65536,
            hop_limit: 64,
        };
        header.emit(&mut [0u8; 40]);
    }

    fn read_everything(p: &Packet<&[u8]>) {
        let _ = (p.version(), p.traffic_class(), p.flow_label(), p.payload_length());
        let _ = (p.next_header(), p.hop_limit(), p.source_address(), p.destination_address());
        let _ = p.payload();
    }

    proptest! {
        #[test]
        fn getters_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                read_everything(&p);
            }
        }

        /// Inputs with version 6 and a small payload length, so that most reach the getters.
        #[test]
        fn getters_never_panic_near_valid(
            payload_length in 0u16..100,
            mut bytes in proptest::collection::vec(any::<u8>(), 40..120),
        ) {
            bytes[0] = 0x60 | (bytes[0] & 0x0F);
            bytes[4..6].copy_from_slice(&payload_length.to_be_bytes());
            match Packet::new_checked(&bytes[..]) {
                Ok(p) => {
                    read_everything(&p);
                    prop_assert_eq!(p.payload().len(), usize::from(payload_length));
                }
                Err(e) => {
                    prop_assert_eq!(e, Error::Truncated);
                    prop_assert!(40 + usize::from(payload_length) > bytes.len());
                }
            }
        }
    }
}
