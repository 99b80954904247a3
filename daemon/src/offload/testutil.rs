//! Test frames built by hand, and checks that do not go through the code under test.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::headers::IpVersion;
use super::virtio_net::{flags as vflags, Gso, VirtioNetHeader};
use crate::wire::tcp::{flags, TcpHeader};
use crate::wire::{ethernet, ipv4, ipv6, tcp, EthernetAddress, EthernetHeader, Ipv4Header, Ipv6Header};

pub const MAC_A: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x00, 0x00, 0x01]);
pub const MAC_B: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x00, 0x00, 0x02]);
pub const V4_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const V4_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const V6_A: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const V6_B: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

/// NOP, NOP, timestamps (TSval 0x01020304, TSecr 0x0a0b0c0d), as Linux sends on data segments.
pub const TIMESTAMPS: [u8; 12] = [1, 1, 8, 10, 0x01, 0x02, 0x03, 0x04, 0x0a, 0x0b, 0x0c, 0x0d];

/// What goes in the TCP checksum field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartialOrFull {
    /// A complete checksum, as on the wire.
    Full,
    /// The pseudo-header sum with the whole TCP length, as the kernel leaves it with NEEDS_CSUM.
    Partial,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSpec {
    pub ip: IpVersion,
    pub payload_len: usize,
    /// Bytes of payload counted from this offset in the stream, see [`payload_byte`].
    pub stream_offset: usize,
    pub vlan_tags: usize,
    /// Bytes of IPv4 options (NOPs), a multiple of 4.
    pub ipv4_options: usize,
    /// Number of 8-byte IPv6 hop-by-hop headers (0 or 1).
    pub ipv6_hop_by_hop: usize,
    pub tcp_options: Vec<u8>,
    pub flags: u16,
    pub sequence: u32,
    pub acknowledgment: u32,
    pub window: u16,
    pub identification: u16,
    pub dont_fragment: bool,
    pub hop_limit: u8,
    pub source_port: u16,
    pub checksum: PartialOrFull,
}

impl FrameSpec {
    pub fn v4(payload_len: usize) -> FrameSpec {
        FrameSpec {
            ip: IpVersion::V4,
            payload_len,
            stream_offset: 0,
            vlan_tags: 0,
            ipv4_options: 0,
            ipv6_hop_by_hop: 0,
            tcp_options: TIMESTAMPS.to_vec(),
            flags: flags::ACK,
            sequence: 0x1000_0000,
            acknowledgment: 0x2000_0000,
            window: 502,
            identification: 0x4242,
            dont_fragment: true,
            hop_limit: 64,
            source_port: 45678,
            checksum: PartialOrFull::Full,
        }
    }

    pub fn v6(payload_len: usize) -> FrameSpec {
        FrameSpec { ip: IpVersion::V6, ..FrameSpec::v4(payload_len) }
    }

    /// The spec of the segment that carries `len` payload bytes from `offset` of this one.
    pub fn slice(&self, offset: usize, len: usize) -> FrameSpec {
        FrameSpec {
            payload_len: len,
            stream_offset: self.stream_offset + offset,
            sequence: self.sequence.wrapping_add(offset as u32),
            ..self.clone()
        }
    }
}

/// Byte `i` of the test stream: not periodic in 256, so misplaced data shows.
pub fn payload_byte(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}

/// An Ethernet frame from A to B as `spec` describes.
pub fn build(spec: &FrameSpec) -> Vec<u8> {
    let l3 = ethernet::HEADER_LEN + 4 * spec.vlan_tags;
    let ip_header_len = match spec.ip {
        IpVersion::V4 => ipv4::HEADER_LEN + spec.ipv4_options,
        IpVersion::V6 => ipv6::HEADER_LEN + 8 * spec.ipv6_hop_by_hop,
    };
    let l4 = l3 + ip_header_len;
    let tcp_header = TcpHeader {
        source_port: spec.source_port,
        destination_port: 5201,
        sequence_number: spec.sequence,
        acknowledgment_number: spec.acknowledgment,
        flags: spec.flags,
        window_len: spec.window,
        urgent_pointer: 0,
        options: &spec.tcp_options,
    };
    let hl = l4 + tcp_header.header_len();
    let mut frame = vec![0u8; hl + spec.payload_len];
    let ethertype = match spec.ip {
        IpVersion::V4 => ethernet::ETHERTYPE_IPV4,
        IpVersion::V6 => ethernet::ETHERTYPE_IPV6,
    };
    EthernetHeader {
        destination: MAC_B,
        source: MAC_A,
        ethertype: if spec.vlan_tags > 0 { 0x8100 } else { ethertype },
    }
    .emit(&mut frame);
    for tag in 0..spec.vlan_tags {
        let at = ethernet::HEADER_LEN + 4 * tag;
        let next = if tag + 1 < spec.vlan_tags { 0x8100 } else { ethertype };
        frame[at..at + 2].copy_from_slice(&(100 + tag as u16).to_be_bytes());
        frame[at + 2..at + 4].copy_from_slice(&next.to_be_bytes());
    }
    let tcp_len = hl - l4 + spec.payload_len;
    match spec.ip {
        IpVersion::V4 => {
            Ipv4Header {
                source: V4_A,
                destination: V4_B,
                protocol: tcp::PROTOCOL_TCP,
                payload_len: tcp_len + spec.ipv4_options,
                hop_limit: spec.hop_limit,
                dont_fragment: spec.dont_fragment,
                identification: spec.identification,
            }
            .emit(&mut frame[l3..]);
            if spec.ipv4_options > 0 {
                frame[l3 + 20..l4].fill(1);
                let mut packet = ipv4::Packet::new_unchecked(&mut frame[l3..]);
                packet.set_header_length(ip_header_len);
                packet.fill_checksum();
            }
        }
        IpVersion::V6 => {
            let next_header = if spec.ipv6_hop_by_hop > 0 { 0 } else { tcp::PROTOCOL_TCP };
            Ipv6Header {
                source: V6_A,
                destination: V6_B,
                next_header,
                payload_len: tcp_len + 8 * spec.ipv6_hop_by_hop,
                hop_limit: spec.hop_limit,
            }
            .emit(&mut frame[l3..]);
            ipv6::Packet::new_unchecked(&mut frame[l3..]).set_flow_label(0x12345);
            if spec.ipv6_hop_by_hop > 0 {
                // Next header TCP, length 0 (8 bytes), PadN of 4 bytes.
                frame[l3 + 40..l4].copy_from_slice(&[tcp::PROTOCOL_TCP, 0, 1, 4, 0, 0, 0, 0]);
            }
        }
    }
    tcp_header.emit(&mut frame[l4..]);
    for (i, byte) in frame[hl..].iter_mut().enumerate() {
        *byte = payload_byte(spec.stream_offset + i);
    }
    let check = match spec.checksum {
        PartialOrFull::Full => !reference_sum(&pseudo_and_segment(&frame, l3, l4, spec.ip)),
        PartialOrFull::Partial => reference_sum(&pseudo_header(&frame, l3, l4, spec.ip)),
    };
    frame[l4 + 16..l4 + 18].copy_from_slice(&check.to_be_bytes());
    frame
}

/// RFC 1071, sixteen bits at a time.
pub fn reference_sum(bytes: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    for pair in bytes.chunks(2) {
        acc += u64::from(pair[0]) << 8 | u64::from(pair.get(1).copied().unwrap_or(0));
    }
    while acc > 0xFFFF {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    acc as u16
}

/// The pseudo-header bytes of the TCP segment at `l4`, laid out as the RFCs draw them.
fn pseudo_header(frame: &[u8], l3: usize, l4: usize, ip: IpVersion) -> Vec<u8> {
    let mut bytes = Vec::new();
    let tcp_len = match ip {
        IpVersion::V4 => usize::from(u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]])) - (l4 - l3),
        IpVersion::V6 => usize::from(u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]])) + 40 - (l4 - l3),
    };
    match ip {
        IpVersion::V4 => {
            bytes.extend_from_slice(&frame[l3 + 12..l3 + 20]);
            bytes.extend_from_slice(&[0, tcp::PROTOCOL_TCP]);
            bytes.extend_from_slice(&(tcp_len as u16).to_be_bytes());
        }
        IpVersion::V6 => {
            bytes.extend_from_slice(&frame[l3 + 8..l3 + 40]);
            bytes.extend_from_slice(&(tcp_len as u32).to_be_bytes());
            bytes.extend_from_slice(&[0, 0, 0, tcp::PROTOCOL_TCP]);
        }
    }
    bytes
}

/// Pseudo-header then the segment (IP length says where it ends), checksum field zeroed.
fn pseudo_and_segment(frame: &[u8], l3: usize, l4: usize, ip: IpVersion) -> Vec<u8> {
    let mut bytes = pseudo_header(frame, l3, l4, ip);
    let start = bytes.len();
    let end = match ip {
        IpVersion::V4 => l3 + usize::from(u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]])),
        IpVersion::V6 => l3 + 40 + usize::from(u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]])),
    };
    bytes.extend_from_slice(&frame[l4..end]);
    bytes[start + 16..start + 18].fill(0);
    bytes
}

/// True if the TCP checksum of the frame (IP at `l3`, no IPv6 extension headers) is right,
/// computed from scratch.
pub fn reference_tcp_checksum_ok(frame: &[u8], l3: usize, ip: IpVersion) -> bool {
    let l4 = match ip {
        IpVersion::V4 => l3 + usize::from(frame[l3] & 0x0F) * 4,
        IpVersion::V6 => {
            // Skip one hop-by-hop header if there is one.
            if frame[l3 + 6] == 0 {
                l3 + 40 + (usize::from(frame[l3 + 41]) + 1) * 8
            } else {
                l3 + 40
            }
        }
    };
    let expected = !reference_sum(&pseudo_and_segment(frame, l3, l4, ip));
    u16::from_be_bytes([frame[l4 + 16], frame[l4 + 17]]) == expected
}

/// True if an IPv4 header's checksum is right.
pub fn reference_ipv4_header_ok(header: &[u8]) -> bool {
    reference_sum(header) == 0xFFFF
}

/// Reads the records of a classic little-endian pcap file (the format tshark -F pcap writes).
pub fn read_pcap(bytes: &[u8]) -> Vec<Vec<u8>> {
    assert_eq!(bytes[..4], [0xd4, 0xc3, 0xb2, 0xa1], "not a little-endian microsecond pcap");
    let mut records = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let captured = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let original = u32::from_le_bytes(bytes[at + 12..at + 16].try_into().unwrap()) as usize;
        assert_eq!(captured, original, "truncated capture");
        records.push(bytes[at + 16..at + 16 + captured].to_vec());
        at += 16 + captured;
    }
    records
}

/// The virtio-net header the kernel puts on a TSO super-frame built from `spec` (no VLAN tags,
/// no IP options), cut at `mss` payload bytes.
pub fn tso_header(spec: &FrameSpec, mss: u16) -> VirtioNetHeader {
    let (gso, l4) = match spec.ip {
        IpVersion::V4 => (Gso::TcpV4, 14 + 20),
        IpVersion::V6 => (Gso::TcpV6, 14 + 40),
    };
    VirtioNetHeader {
        flags: vflags::NEEDS_CSUM,
        gso,
        ecn: spec.flags & flags::CWR != 0,
        hdr_len: (l4 + 20 + spec.tcp_options.len()) as u16,
        gso_size: mss,
        csum_start: l4 as u16,
        csum_offset: 16,
    }
}
