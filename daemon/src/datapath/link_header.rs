//! The Ethernet and IP headers in front of a raw ESP packet that leaves through an AF_PACKET
//! ring (`packet_ring`), byte for byte what the kernel writes for the raw IP socket.
//!
//! IPv4: DF set, identification 0 (the kernel's choice for DF packets of an unconnected
//! socket), DSCP and ECN 0, the system's default TTL, protocol 50. IPv6: traffic class 0, flow
//! label 0 (the raw socket's automatic flow labels are turned off, `sys::disable_auto_flow_label`),
//! the interface's hop limit, next header 50.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::ethernet::{self, EthernetAddress, EthernetHeader, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use crate::wire::ipv4::{self, Ipv4Header, PROTOCOL_ESP};
use crate::wire::ipv6::{self, Ipv6Header};

/// The most bytes written in front of an ESP packet (Ethernet and IPv6), for buffers of tests
/// and benchmarks.
#[cfg(any(test, feature = "internals"))]
pub const MAX_LEN: usize = ethernet::HEADER_LEN + ipv6::HEADER_LEN;

/// The addresses of the IP header, of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpAddresses {
    V4 { source: Ipv4Addr, destination: Ipv4Addr },
    V6 { source: Ipv6Addr, destination: Ipv6Addr },
}

/// The constant part of the headers towards one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkHeader {
    /// The next hop's MAC: the gateway's, or the peer's on the same link.
    pub next_hop: EthernetAddress,
    /// The outgoing interface's MAC.
    pub interface: EthernetAddress,
    pub addresses: IpAddresses,
    /// IPv4's TTL or IPv6's hop limit.
    pub hop_limit: u8,
}

impl LinkHeader {
    /// Bytes of the IP header alone.
    pub fn ip_header_len(&self) -> usize {
        match self.addresses {
            IpAddresses::V4 { .. } => ipv4::HEADER_LEN,
            IpAddresses::V6 { .. } => ipv6::HEADER_LEN,
        }
    }

    /// Bytes written in front of the ESP packet.
    pub fn frame_header_len(&self) -> usize {
        ethernet::HEADER_LEN + self.ip_header_len()
    }

    /// Writes the [`LinkHeader::len`] header bytes for an ESP packet of `esp_len` bytes at the
    /// start of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than `frame_header_len()`, or `esp_len` leaves no valid IP length field.
    pub fn emit(&self, buf: &mut [u8], esp_len: usize) {
        let (ethernet_header, ip_header) = buf[..self.frame_header_len()].split_at_mut(ethernet::HEADER_LEN);
        match self.addresses {
            IpAddresses::V4 { source, destination } => {
                EthernetHeader { destination: self.next_hop, source: self.interface, ethertype: ETHERTYPE_IPV4 }
                    .emit(ethernet_header);
                Ipv4Header {
                    source,
                    destination,
                    protocol: PROTOCOL_ESP,
                    payload_len: esp_len,
                    hop_limit: self.hop_limit,
                    dont_fragment: true,
                    identification: 0,
                }
                .emit(ip_header);
            }
            IpAddresses::V6 { source, destination } => {
                EthernetHeader { destination: self.next_hop, source: self.interface, ethertype: ETHERTYPE_IPV6 }
                    .emit(ethernet_header);
                Ipv6Header { source, destination, next_header: PROTOCOL_ESP, payload_len: esp_len, hop_limit: self.hop_limit }
                    .emit(ip_header);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEXT_HOP: EthernetAddress = EthernetAddress([0x02, 0x00, 0x00, 0x00, 0x00, 0x02]);
    const INTERFACE: EthernetAddress = EthernetAddress([0x02, 0x00, 0x00, 0x00, 0x00, 0x01]);

    const HEADER_V4: LinkHeader = LinkHeader {
        next_hop: NEXT_HOP,
        interface: INTERFACE,
        addresses: IpAddresses::V4 { source: Ipv4Addr::new(198, 18, 0, 1), destination: Ipv4Addr::new(198, 18, 0, 2) },
        hop_limit: 64,
    };

    /// 198.18.0.1 -> 198.18.0.2, ESP of 1400 bytes; the checksum computed by hand.
    const BYTES_V4: [u8; ethernet::HEADER_LEN + ipv4::HEADER_LEN] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // destination MAC
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // source MAC
        0x08, 0x00, // IPv4
        0x45, 0x00, // version 4, IHL 5, DSCP 0, ECN 0
        0x05, 0x8c, // total length 1420
        0x00, 0x00, // identification 0
        0x40, 0x00, // DF, offset 0
        0x40, 0x32, // TTL 64, ESP
        0xa9, 0x18, // header checksum
        0xc6, 0x12, 0x00, 0x01, // source
        0xc6, 0x12, 0x00, 0x02, // destination
    ];

    const HEADER_V6: LinkHeader = LinkHeader {
        next_hop: NEXT_HOP,
        interface: INTERFACE,
        addresses: IpAddresses::V6 {
            source: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            destination: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2),
        },
        hop_limit: 64,
    };

    /// 2001:db8::1 -> 2001:db8::2, ESP of 1400 bytes.
    const BYTES_V6: [u8; MAX_LEN] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // destination MAC
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // source MAC
        0x86, 0xdd, // IPv6
        0x60, 0x00, 0x00, 0x00, // version 6, traffic class 0, flow label 0
        0x05, 0x78, // payload length 1400
        0x32, // next header ESP
        0x40, // hop limit 64
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, // source 2001:db8::1
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, //
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, // destination 2001:db8::2
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, //
    ];

    #[test]
    fn headers_match_known_bytes() {
        for (header, bytes) in [(HEADER_V4, &BYTES_V4[..]), (HEADER_V6, &BYTES_V6[..])] {
            assert_eq!(header.frame_header_len(), bytes.len());
            let mut buf = [0xaa; MAX_LEN + 4];
            header.emit(&mut buf, 1400);
            assert_eq!(buf[..bytes.len()], *bytes);
            assert!(buf[bytes.len()..].iter().all(|byte| *byte == 0xaa), "nothing after the headers is touched");
        }
    }

    #[test]
    fn the_ip_headers_check_and_read_back() {
        let mut buf = [0u8; MAX_LEN + 64];
        HEADER_V4.emit(&mut buf, 64);
        let packet = ipv4::Packet::new_checked(&buf[ethernet::HEADER_LEN..]).unwrap();
        assert!(packet.verify_checksum());
        assert!(packet.dont_fragment() && !packet.is_fragment());
        assert_eq!(packet.total_length(), 84);
        assert_eq!(packet.protocol(), PROTOCOL_ESP);
        assert_eq!(packet.destination_address(), Ipv4Addr::new(198, 18, 0, 2));

        HEADER_V6.emit(&mut buf, 64);
        let packet = ipv6::Packet::new_checked(&buf[ethernet::HEADER_LEN..]).unwrap();
        assert_eq!(packet.payload_length(), 64);
        assert_eq!(packet.next_header(), PROTOCOL_ESP);
        assert_eq!(packet.flow_label(), 0);
        assert_eq!(packet.destination_address(), Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
    }
}
