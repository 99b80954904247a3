//! The frames a node announces an address of its overlay interface with, as Linux writes them
//! for `arp_notify` and `ndisc_notify`: an ARP announcement (RFC 5227 §2.3, a broadcast request
//! whose sender and target protocol address are both the announced one) and an unsolicited
//! Neighbor Advertisement (RFC 4861 §7.2.6: to all nodes, Override set, Solicited clear, with
//! the target link-layer address). meshd sends them to one peer, when SAs with it come up.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::ethernet::{self, EthernetAddress, EthernetHeader, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use super::ipv4::PROTOCOL_ICMPV6;
use super::ipv6::{self, Ipv6Header};
use super::{checksum, write_u16};

mod arp_field {
    use crate::wire::Field;

    pub const HARDWARE_TYPE: Field = 0..2;
    pub const PROTOCOL_TYPE: Field = 2..4;
    pub const HARDWARE_LEN: usize = 4;
    pub const PROTOCOL_LEN: usize = 5;
    pub const OPERATION: Field = 6..8;
    pub const SENDER_HARDWARE_ADDRESS: Field = 8..14;
    pub const SENDER_PROTOCOL_ADDRESS: Field = 14..18;
    pub const TARGET_HARDWARE_ADDRESS: Field = 18..24;
    pub const TARGET_PROTOCOL_ADDRESS: Field = 24..28;
}

mod advertisement_field {
    use crate::wire::Field;

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    /// Router, Solicited and Override in the top three bits, then 29 reserved bits.
    pub const FLAGS_RESERVED: Field = 4..8;
    pub const TARGET_ADDRESS: Field = 8..24;
    pub const OPTION_TYPE: usize = 24;
    /// In units of 8 bytes.
    pub const OPTION_LEN: usize = 25;
    pub const OPTION_LINK_LAYER_ADDRESS: Field = 26..32;
}

const ARP_LEN: usize = arp_field::TARGET_PROTOCOL_ADDRESS.end;
const ADVERTISEMENT_LEN: usize = advertisement_field::OPTION_LINK_LAYER_ADDRESS.end;
/// Length of the ARP announcement frame (no padding: the overlay carries it as it is).
pub const ARP_ANNOUNCEMENT_LEN: usize = ethernet::HEADER_LEN + ARP_LEN;
/// Length of the Neighbor Advertisement frame.
pub const NEIGHBOR_ADVERTISEMENT_LEN: usize = ethernet::HEADER_LEN + ipv6::HEADER_LEN + ADVERTISEMENT_LEN;
/// A buffer this long holds either announcement.
pub const MAX_ANNOUNCEMENT_LEN: usize = NEIGHBOR_ADVERTISEMENT_LEN;

const ARP_HARDWARE_ETHERNET: u16 = 1;
const ARP_OPERATION_REQUEST: u16 = 1;
const ICMPV6_NEIGHBOR_ADVERTISEMENT: u8 = 136;
const FLAG_ROUTER: u8 = 0x80;
const FLAG_OVERRIDE: u8 = 0x20;
const OPTION_TARGET_LINK_LAYER_ADDRESS: u8 = 2;
/// Neighbor Discovery messages carry 255, which proves they were not routed (RFC 4861 §7.1.2).
const NEIGHBOR_DISCOVERY_HOP_LIMIT: u8 = 255;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// 33:33 and the low 32 bits of the group (RFC 2464 §7).
const ALL_NODES_MAC: EthernetAddress = EthernetAddress([0x33, 0x33, 0, 0, 0, 1]);

/// Writes into `out` the frame announcing that `address` is at `mac`: an ARP announcement for
/// IPv4, an unsolicited Neighbor Advertisement for IPv6 (with the Router flag when `router`, as
/// the interface forwards IPv6: a cleared flag would make the neighbours drop it as a default
/// router). Returns its length.
///
/// # Panics
/// If `out` is shorter than [`MAX_ANNOUNCEMENT_LEN`].
pub fn write_announcement(mac: EthernetAddress, address: IpAddr, router: bool, out: &mut [u8]) -> usize {
    match address {
        IpAddr::V4(address) => write_arp_announcement(mac, address, out),
        IpAddr::V6(address) => write_neighbor_advertisement(mac, address, router, out),
    }
}

fn write_arp_announcement(mac: EthernetAddress, address: Ipv4Addr, out: &mut [u8]) -> usize {
    EthernetHeader { destination: EthernetAddress::BROADCAST, source: mac, ethertype: ETHERTYPE_ARP }.emit(out);
    let arp = &mut out[ethernet::HEADER_LEN..ARP_ANNOUNCEMENT_LEN];
    write_u16(arp, arp_field::HARDWARE_TYPE, ARP_HARDWARE_ETHERNET);
    write_u16(arp, arp_field::PROTOCOL_TYPE, ETHERTYPE_IPV4);
    arp[arp_field::HARDWARE_LEN] = 6;
    arp[arp_field::PROTOCOL_LEN] = 4;
    write_u16(arp, arp_field::OPERATION, ARP_OPERATION_REQUEST);
    arp[arp_field::SENDER_HARDWARE_ADDRESS].copy_from_slice(mac.as_bytes());
    arp[arp_field::SENDER_PROTOCOL_ADDRESS].copy_from_slice(&address.octets());
    arp[arp_field::TARGET_HARDWARE_ADDRESS].fill(0);
    arp[arp_field::TARGET_PROTOCOL_ADDRESS].copy_from_slice(&address.octets());
    ARP_ANNOUNCEMENT_LEN
}

fn write_neighbor_advertisement(mac: EthernetAddress, address: Ipv6Addr, router: bool, out: &mut [u8]) -> usize {
    EthernetHeader { destination: ALL_NODES_MAC, source: mac, ethertype: ETHERTYPE_IPV6 }.emit(out);
    Ipv6Header {
        source: address,
        destination: ALL_NODES,
        next_header: PROTOCOL_ICMPV6,
        payload_len: ADVERTISEMENT_LEN,
        hop_limit: NEIGHBOR_DISCOVERY_HOP_LIMIT,
    }
    .emit(&mut out[ethernet::HEADER_LEN..]);
    let message = &mut out[ethernet::HEADER_LEN + ipv6::HEADER_LEN..NEIGHBOR_ADVERTISEMENT_LEN];
    message[advertisement_field::TYPE] = ICMPV6_NEIGHBOR_ADVERTISEMENT;
    message[advertisement_field::CODE] = 0;
    write_u16(message, advertisement_field::CHECKSUM, 0);
    let flags = FLAG_OVERRIDE | if router { FLAG_ROUTER } else { 0 };
    message[advertisement_field::FLAGS_RESERVED].copy_from_slice(&[flags, 0, 0, 0]);
    message[advertisement_field::TARGET_ADDRESS].copy_from_slice(&address.octets());
    message[advertisement_field::OPTION_TYPE] = OPTION_TARGET_LINK_LAYER_ADDRESS;
    message[advertisement_field::OPTION_LEN] = 1;
    message[advertisement_field::OPTION_LINK_LAYER_ADDRESS].copy_from_slice(mac.as_bytes());
    let pseudo = checksum::pseudo_header_v6(address, ALL_NODES, PROTOCOL_ICMPV6, ADVERTISEMENT_LEN as u32);
    let sum = !checksum::combine(&[pseudo, checksum::data(message)]);
    write_u16(message, advertisement_field::CHECKSUM, sum);
    NEIGHBOR_ADVERTISEMENT_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames Linux 6.x wrote on a TAP for `arp_notify` and `ndisc_notify` (captured with
    /// dumpcap in the scale lab): meshd's must be the same bytes.
    #[test]
    fn the_arp_announcement_is_the_one_linux_sends() {
        let mac = EthernetAddress([0x62, 0x90, 0xe7, 0x82, 0x6d, 0x70]);
        let mut out = [0xaa; MAX_ANNOUNCEMENT_LEN];
        let len = write_announcement(mac, IpAddr::from([10, 244, 0, 1]), false, &mut out);
        let linux: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x62, 0x90, 0xe7, 0x82, 0x6d, 0x70, 0x08, 0x06, // Ethernet
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // Ethernet/IPv4, request
            0x62, 0x90, 0xe7, 0x82, 0x6d, 0x70, 0x0a, 0xf4, 0x00, 0x01, // sender
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0xf4, 0x00, 0x01, // target
        ];
        assert_eq!(&out[..len], &linux[..]);
    }

    #[test]
    fn the_neighbor_advertisement_is_the_one_linux_sends() {
        let mac = EthernetAddress([0xc6, 0x65, 0xef, 0xfb, 0x75, 0xf0]);
        let address: Ipv6Addr = "fe80::c465:efff:fefb:75f0".parse().unwrap();
        let mut out = [0xaa; MAX_ANNOUNCEMENT_LEN];
        let len = write_announcement(mac, IpAddr::V6(address), false, &mut out);
        let linux: [u8; 86] = [
            0x33, 0x33, 0x00, 0x00, 0x00, 0x01, 0xc6, 0x65, 0xef, 0xfb, 0x75, 0xf0, 0x86, 0xdd, // Ethernet
            0x60, 0x00, 0x00, 0x00, 0x00, 0x20, 0x3a, 0xff, // IPv6: 32 bytes of ICMPv6, hop limit 255
            0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc4, 0x65, 0xef, 0xff, 0xfe, 0xfb, 0x75, 0xf0,
            0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
            0x88, 0x00, 0xda, 0xa7, 0x20, 0x00, 0x00, 0x00, // type 136, checksum, Override
            0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc4, 0x65, 0xef, 0xff, 0xfe, 0xfb, 0x75, 0xf0,
            0x02, 0x01, 0xc6, 0x65, 0xef, 0xfb, 0x75, 0xf0, // target link-layer address
        ];
        assert_eq!(&out[..len], &linux[..]);
    }

    #[test]
    fn a_router_says_so_and_the_checksum_still_holds() {
        let mac = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
        let address: Ipv6Addr = "fd00:10:244::1".parse().unwrap();
        let mut out = [0; MAX_ANNOUNCEMENT_LEN];
        let len = write_announcement(mac, IpAddr::V6(address), true, &mut out);
        let message = &out[ethernet::HEADER_LEN + ipv6::HEADER_LEN..len];
        assert_eq!(message[advertisement_field::FLAGS_RESERVED.start], FLAG_ROUTER | FLAG_OVERRIDE);
        let pseudo = checksum::pseudo_header_v6(address, ALL_NODES, PROTOCOL_ICMPV6, ADVERTISEMENT_LEN as u32);
        assert_eq!(checksum::combine(&[pseudo, checksum::data(message)]), 0xffff, "a valid checksum sums to all ones");
    }
}
