//! The answer to an overlay packet too large for its peer's path: ICMP "fragmentation needed"
//! (type 3 code 4, RFC 1191) for IPv4 with DF, ICMPv6 "packet too big" (type 2, RFC 4443) for
//! IPv6, written back into the overlay so that the sender (TCP inside the overlay) lowers its
//! packet size. The reply looks as if the destination had sent it: addresses and MACs swapped,
//! which every host stack accepts (it matches the error to a socket by the quoted header only).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::ethernet::{self, EthernetHeader};
use super::ipv4::{self, Ipv4Header, PROTOCOL_ICMPV6};
use super::ipv6::{self, Ipv6Header};
use super::{checksum, write_u16, write_u32};

/// Type, code, checksum and the 4-byte field that holds the MTU, in ICMP and ICMPv6 alike.
const ICMP_HEADER_LEN: usize = 8;
const ICMP_DESTINATION_UNREACHABLE: u8 = 3;
const ICMP_FRAGMENTATION_NEEDED: u8 = 4;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// The whole IPv4 reply stays within 576 bytes (RFC 1812 §4.3.2.3).
const MAX_REPLY_IP_LEN_V4: usize = 576;
/// The whole IPv6 reply stays within the minimum MTU (RFC 4443 §2.4 (c)).
const MAX_REPLY_IP_LEN_V6: usize = 1280;
/// Hop limit of the replies; they only cross the overlay interface.
const REPLY_HOP_LIMIT: u8 = 64;

mod icmp_field {
    use crate::wire::Field;

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    /// ICMP: 2 unused bytes, then the next-hop MTU (RFC 1191 §4).
    pub const UNUSED_V4: Field = 4..6;
    pub const NEXT_HOP_MTU_V4: Field = 6..8;
    /// ICMPv6: the MTU as 32 bits.
    pub const MTU_V6: Field = 4..8;
}

/// A buffer this long holds any reply.
pub const MAX_REPLY_LEN: usize = ethernet::HEADER_LEN + MAX_REPLY_IP_LEN_V6;

/// Writes into `out` the Ethernet frame that tells the sender of `frame` that at most `mtu` bytes
/// of IP packet get through; returns its length, or `None` when no answer is due: not IP, IPv4
/// without DF (nobody listens for an answer there), a fragment that is not the first, an ICMP
/// error itself, or a multicast/broadcast destination (which cannot be the source of a reply).
///
/// `frame` must be a whole Ethernet frame; `out` at least [`MAX_REPLY_LEN`] bytes.
pub fn write_reply(frame: &[u8], mtu: u16, out: &mut [u8]) -> Option<usize> {
    let frame = ethernet::Frame::new_checked(frame).ok()?;
    if !frame.source().is_unicast() || !frame.destination().is_unicast() {
        return None;
    }
    let ip_len = match frame.ethertype() {
        ethernet::ETHERTYPE_IPV4 => write_v4(frame.payload(), mtu, &mut out[ethernet::HEADER_LEN..])?,
        ethernet::ETHERTYPE_IPV6 => write_v6(frame.payload(), mtu, &mut out[ethernet::HEADER_LEN..])?,
        _ => return None,
    };
    EthernetHeader { destination: frame.source(), source: frame.destination(), ethertype: frame.ethertype() }.emit(out);
    Some(ethernet::HEADER_LEN + ip_len)
}

fn write_v4(packet: &[u8], mtu: u16, out: &mut [u8]) -> Option<usize> {
    let packet = ipv4::Packet::new_checked(packet).ok()?;
    let destination = packet.destination_address();
    let answerable = packet.dont_fragment()
        && packet.fragment_offset() == 0
        && !destination.is_multicast()
        && !destination.is_broadcast()
        && !is_icmp_error_v4(&packet);
    if !answerable {
        return None;
    }
    let quoted = packet.into_inner();
    let quote_len = usize::from(ipv4::Packet::new_unchecked(quoted).total_length())
        .min(MAX_REPLY_IP_LEN_V4 - ipv4::HEADER_LEN - ICMP_HEADER_LEN);
    let icmp_len = ICMP_HEADER_LEN + quote_len;
    Ipv4Header {
        source: destination,
        destination: source_v4(quoted),
        protocol: ipv4::PROTOCOL_ICMP,
        payload_len: icmp_len,
        hop_limit: REPLY_HOP_LIMIT,
        dont_fragment: false,
        identification: 0,
    }
    .emit(out);
    let icmp = &mut out[ipv4::HEADER_LEN..ipv4::HEADER_LEN + icmp_len];
    icmp[icmp_field::TYPE] = ICMP_DESTINATION_UNREACHABLE;
    icmp[icmp_field::CODE] = ICMP_FRAGMENTATION_NEEDED;
    write_u16(icmp, icmp_field::CHECKSUM, 0);
    write_u16(icmp, icmp_field::UNUSED_V4, 0);
    write_u16(icmp, icmp_field::NEXT_HOP_MTU_V4, mtu);
    icmp[ICMP_HEADER_LEN..].copy_from_slice(&quoted[..quote_len]);
    let sum = !checksum::data(icmp);
    write_u16(icmp, icmp_field::CHECKSUM, sum);
    Some(ipv4::HEADER_LEN + icmp_len)
}

fn source_v4(packet: &[u8]) -> Ipv4Addr {
    ipv4::Packet::new_unchecked(packet).source_address()
}

/// ICMP types that are errors (RFC 1122 §3.2.2: never answer an error with an error).
fn is_icmp_error_v4(packet: &ipv4::Packet<&[u8]>) -> bool {
    const ERRORS: [u8; 5] = [3, 4, 5, 11, 12];
    packet.protocol() == ipv4::PROTOCOL_ICMP && packet.payload().first().is_some_and(|t| ERRORS.contains(t))
}

fn write_v6(packet: &[u8], mtu: u16, out: &mut [u8]) -> Option<usize> {
    let packet = ipv6::Packet::new_checked(packet).ok()?;
    let destination = packet.destination_address();
    let source = packet.source_address();
    // ICMPv6 types below 128 are errors (RFC 4443 §2.1); a multicast destination cannot answer.
    let error = packet.next_header() == PROTOCOL_ICMPV6 && packet.payload().first().is_some_and(|t| *t < 128);
    if error || destination.is_multicast() || source.is_unspecified() {
        return None;
    }
    let whole_len = ipv6::HEADER_LEN + packet.payload().len();
    let quote_len = whole_len.min(MAX_REPLY_IP_LEN_V6 - ipv6::HEADER_LEN - ICMP_HEADER_LEN);
    let icmp_len = ICMP_HEADER_LEN + quote_len;
    Ipv6Header {
        source: destination,
        destination: source,
        next_header: PROTOCOL_ICMPV6,
        payload_len: icmp_len,
        hop_limit: REPLY_HOP_LIMIT,
    }
    .emit(out);
    let quoted = &packet.into_inner()[..quote_len];
    let icmp = &mut out[ipv6::HEADER_LEN..ipv6::HEADER_LEN + icmp_len];
    icmp[icmp_field::TYPE] = ICMPV6_PACKET_TOO_BIG;
    icmp[icmp_field::CODE] = 0;
    write_u16(icmp, icmp_field::CHECKSUM, 0);
    write_u32(icmp, icmp_field::MTU_V6, u32::from(mtu));
    icmp[ICMP_HEADER_LEN..].copy_from_slice(quoted);
    let sum = !checksum_v6(destination, source, icmp);
    write_u16(icmp, icmp_field::CHECKSUM, sum);
    Some(ipv6::HEADER_LEN + icmp_len)
}

fn checksum_v6(source: Ipv6Addr, destination: Ipv6Addr, icmp: &[u8]) -> u16 {
    let pseudo = checksum::pseudo_header_v6(source, destination, PROTOCOL_ICMPV6, icmp.len() as u32);
    checksum::combine(&[pseudo, checksum::data(icmp)])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC_SENDER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const MAC_PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    fn frame(ethertype: [u8; 2], ip: &[u8]) -> Vec<u8> {
        [&MAC_PEER[..], &MAC_SENDER[..], &ethertype[..], ip].concat()
    }

    /// 10.244.0.1 -> 10.244.0.2, DF, TCP, total length 40 (20 header + 20 TCP), id 0x1234.
    const TCP_V4: [u8; 40] = [
        0x45, 0x00, 0x00, 0x28, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x12, 0xb2, 10, 244, 0, 1, 10, 244, 0, 2, //
        0xc0, 0x00, 0x13, 0x89, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0x01, 0x00, 0, 0, 0, 0,
    ];

    #[test]
    fn ipv4_fragmentation_needed_byte_exact() {
        let mut out = [0u8; MAX_REPLY_LEN];
        let len = write_reply(&frame([0x08, 0x00], &TCP_V4), 1188, &mut out).unwrap();
        // Worked out by hand: IPv4 header (checksum 0x64cf over 10.244.0.2 -> 10.244.0.1, total
        // 68, protocol 1, TTL 64), ICMP 3/4 with MTU 1188 (0x04a4) and checksum 0xd3bc over the
        // ICMP header and the quoted 40 bytes.
        let expected: Vec<u8> = [
            &MAC_SENDER[..],
            &MAC_PEER[..],
            &[0x08, 0x00],
            &[0x45, 0x00, 0x00, 0x44, 0x00, 0x00, 0x00, 0x00, 0x40, 0x01, 0x64, 0xcf, 10, 244, 0, 2, 10, 244, 0, 1],
            &[0x03, 0x04, 0xd3, 0xbc, 0x00, 0x00, 0x04, 0xa4],
            &TCP_V4[..],
        ]
        .concat();
        assert_eq!(&out[..len], &expected[..]);
        let reply = ipv4::Packet::new_checked(&out[ethernet::HEADER_LEN..len]).unwrap();
        assert!(reply.verify_checksum());
        assert_eq!(checksum::data(reply.payload()), 0xffff, "the ICMP checksum verifies");
    }

    #[test]
    fn ipv4_quote_is_capped_at_576_bytes_in_all() {
        let mut big = vec![0u8; 1400];
        big[..20].copy_from_slice(&TCP_V4[..20]);
        big[2..4].copy_from_slice(&1400u16.to_be_bytes());
        let mut header = ipv4::Packet::new_unchecked(&mut big[..]);
        header.fill_checksum();
        let mut out = [0u8; MAX_REPLY_LEN];
        let len = write_reply(&frame([0x08, 0x00], &big), 1188, &mut out).unwrap();
        assert_eq!(len, ethernet::HEADER_LEN + 576);
        let reply = ipv4::Packet::new_checked(&out[ethernet::HEADER_LEN..len]).unwrap();
        assert_eq!(checksum::data(reply.payload()), 0xffff);
    }

    #[test]
    fn no_reply_without_df_for_errors_and_non_ip() {
        let mut out = [0u8; MAX_REPLY_LEN];
        let mut no_df = TCP_V4;
        no_df[6] = 0;
        ipv4::Packet::new_unchecked(&mut no_df[..]).fill_checksum();
        assert_eq!(write_reply(&frame([0x08, 0x00], &no_df), 1188, &mut out), None);
        let mut icmp_error = TCP_V4;
        icmp_error[9] = ipv4::PROTOCOL_ICMP;
        icmp_error[20] = 3;
        ipv4::Packet::new_unchecked(&mut icmp_error[..]).fill_checksum();
        assert_eq!(write_reply(&frame([0x08, 0x00], &icmp_error), 1188, &mut out), None);
        assert_eq!(write_reply(&frame([0x08, 0x06], &[0; 28]), 1188, &mut out), None);
        assert_eq!(write_reply(&[0; 10], 1188, &mut out), None);
    }

    /// 2001:db8::1 -> 2001:db8::2, UDP 8 bytes (ports 1 -> 2, length 8, checksum 0).
    fn udp_v6() -> Vec<u8> {
        let mut packet = vec![0x60, 0, 0, 0, 0x00, 0x08, 17, 64];
        packet.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        packet.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        packet.extend_from_slice(&[0, 1, 0, 2, 0, 8, 0, 0]);
        packet
    }

    #[test]
    fn ipv6_packet_too_big_byte_exact() {
        let mut out = [0u8; MAX_REPLY_LEN];
        let original = udp_v6();
        let len = write_reply(&frame([0x86, 0xdd], &original), 1280, &mut out).unwrap();
        let mut ip = vec![0x60, 0, 0, 0, 0x00, 0x38, 58, 64];
        ip.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        ip.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        // Type 2, code 0, checksum worked out by hand over the pseudo-header (length 56, next
        // header 58) and the message, MTU 1280 (0x500), then the whole 48-byte original.
        ip.extend_from_slice(&[0x02, 0x00, 0xd0, 0x4f, 0x00, 0x00, 0x05, 0x00]);
        ip.extend_from_slice(&original);
        let expected: Vec<u8> = [&MAC_SENDER[..], &MAC_PEER[..], &[0x86, 0xdd], &ip[..]].concat();
        assert_eq!(&out[..len], &expected[..]);
    }

    #[test]
    fn ipv6_no_reply_to_errors_or_multicast() {
        let mut out = [0u8; MAX_REPLY_LEN];
        let mut error = udp_v6();
        error[6] = PROTOCOL_ICMPV6;
        error[40] = 1;
        assert_eq!(write_reply(&frame([0x86, 0xdd], &error), 1280, &mut out), None);
        let mut multicast = udp_v6();
        multicast[24] = 0xff;
        assert_eq!(write_reply(&frame([0x86, 0xdd], &multicast), 1280, &mut out), None);
    }
}
