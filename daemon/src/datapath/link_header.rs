//! The Ethernet and IPv4 headers in front of a raw ESP packet that leaves through an AF_PACKET
//! ring (`packet_ring`), byte for byte what the kernel writes for the raw IP socket: DF set,
//! identification 0 (the kernel's choice for DF packets of an unconnected socket), DSCP and ECN
//! 0, the system's default TTL, protocol 50.

use std::net::Ipv4Addr;

use crate::wire::ethernet::{self, EthernetAddress, EthernetHeader, ETHERTYPE_IPV4};
use crate::wire::ipv4::{self, Ipv4Header};

/// Bytes written in front of the ESP packet.
pub const LEN: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN;

/// The constant part of the headers towards one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkHeaderV4 {
    /// The next hop's MAC: the gateway's, or the peer's on the same link.
    pub next_hop: EthernetAddress,
    /// The outgoing interface's MAC.
    pub interface: EthernetAddress,
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub ttl: u8,
}

impl LinkHeaderV4 {
    /// Writes the [`LEN`] header bytes for an ESP packet of `esp_len` bytes at the start of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than `LEN`, or `esp_len` leaves no valid IPv4 total length.
    pub fn emit(&self, buf: &mut [u8], esp_len: usize) {
        EthernetHeader { destination: self.next_hop, source: self.interface, ethertype: ETHERTYPE_IPV4 }
            .emit(&mut buf[..ethernet::HEADER_LEN]);
        Ipv4Header {
            source: self.source,
            destination: self.destination,
            protocol: ipv4::PROTOCOL_ESP,
            payload_len: esp_len,
            hop_limit: self.ttl,
            dont_fragment: true,
            identification: 0,
        }
        .emit(&mut buf[ethernet::HEADER_LEN..LEN]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: LinkHeaderV4 = LinkHeaderV4 {
        next_hop: EthernetAddress([0x02, 0x00, 0x00, 0x00, 0x00, 0x02]),
        interface: EthernetAddress([0x02, 0x00, 0x00, 0x00, 0x00, 0x01]),
        source: Ipv4Addr::new(198, 18, 0, 1),
        destination: Ipv4Addr::new(198, 18, 0, 2),
        ttl: 64,
    };

    /// 198.18.0.1 -> 198.18.0.2, ESP of 1400 bytes; the checksum computed by hand.
    const BYTES: [u8; LEN] = [
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

    #[test]
    fn headers_match_known_bytes() {
        let mut buf = [0xaa; LEN + 4];
        HEADER.emit(&mut buf, 1400);
        assert_eq!(buf[..LEN], BYTES);
        assert_eq!(buf[LEN..], [0xaa; 4], "nothing after the headers is touched");
    }

    #[test]
    fn the_ip_header_checks_and_reads_back() {
        let mut buf = [0u8; LEN + 64];
        HEADER.emit(&mut buf, 64);
        let packet = ipv4::Packet::new_checked(&buf[ethernet::HEADER_LEN..]).unwrap();
        assert!(packet.verify_checksum());
        assert!(packet.dont_fragment() && !packet.is_fragment());
        assert_eq!(packet.total_length(), 84);
        assert_eq!(packet.protocol(), ipv4::PROTOCOL_ESP);
        assert_eq!(packet.destination_address(), HEADER.destination);
    }
}
