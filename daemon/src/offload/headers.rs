//! Where the headers of an Ethernet frame carrying TCP over IPv4 or IPv6 are.

use crate::wire::ethernet::{self, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use crate::wire::tcp::{self, PROTOCOL_TCP};
use crate::wire::{ipv4, ipv6, Error, Result};

/// 802.1Q customer tag and 802.1ad service tag: four bytes each, before the real ethertype.
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88A8;
const VLAN_TAG_LEN: usize = 4;
/// Tags walked before giving up (QinQ).
const MAX_VLAN_TAGS: usize = 2;

/// IPv6 extension headers that change neither the addresses nor the payload's meaning, so a
/// segmenter may copy them into every segment.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_DESTINATION_OPTIONS: u8 = 60;
const MAX_IPV6_EXTENSIONS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

/// How much of IP to accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// Segmentation: IPv4 options and IPv6 hop-by-hop / destination options are copied into
    /// every segment, as the kernel does.
    AllowExtensions,
    /// Coalescing: only IPv4 without options and IPv6 with TCP right after the fixed header,
    /// like Linux GRO's fast path.
    Plain,
}

/// Offsets into a frame, all checked against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFrame {
    pub ip: IpVersion,
    /// Start of the IP header (after Ethernet and any VLAN tags).
    pub l3: usize,
    /// Start of the TCP header.
    pub l4: usize,
    /// Start of the TCP payload: the length of every header together.
    pub payload: usize,
    /// End of the IP packet; any bytes after it are link-layer padding.
    pub end: usize,
}

impl TcpFrame {
    pub fn payload_len(&self) -> usize {
        self.end - self.payload
    }

    pub fn tcp_len(&self) -> usize {
        self.end - self.l4
    }
}

/// The IP version an Ethernet frame carries and where its IP header starts, after up to two
/// VLAN tags; `None` for anything but IPv4 and IPv6.
pub fn l3(frame: &[u8]) -> Result<Option<(IpVersion, usize)>> {
    let header = ethernet::Frame::new_checked(frame)?;
    let mut ethertype = header.ethertype();
    let mut l3 = ethernet::HEADER_LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETHERTYPE_VLAN && ethertype != ETHERTYPE_QINQ {
            break;
        }
        let Some(inner) = frame.get(l3 + 2..l3 + VLAN_TAG_LEN) else {
            return Err(Error::Truncated);
        };
        ethertype = u16::from_be_bytes([inner[0], inner[1]]);
        l3 += VLAN_TAG_LEN;
    }
    Ok(match ethertype {
        ETHERTYPE_IPV4 => Some((IpVersion::V4, l3)),
        ETHERTYPE_IPV6 => Some((IpVersion::V6, l3)),
        _ => None,
    })
}

/// Finds the headers of a TCP-in-IP Ethernet frame; an error for anything else.
pub fn parse(frame: &[u8], strictness: Strictness) -> Result<TcpFrame> {
    let Some((ip, l3)) = l3(frame)? else {
        return Err(Error::Malformed("frame carries neither IPv4 nor IPv6"));
    };
    let (l4, end) = match ip {
        IpVersion::V4 => {
            let packet = ipv4::Packet::new_checked(&frame[l3..])?;
            if packet.is_fragment() {
                return Err(Error::Malformed("IPv4 fragment"));
            }
            if packet.protocol() != PROTOCOL_TCP {
                return Err(Error::Malformed("IP payload is not TCP"));
            }
            if strictness == Strictness::Plain && packet.header_length() != ipv4::HEADER_LEN {
                return Err(Error::Malformed("IPv4 options"));
            }
            (l3 + packet.header_length(), l3 + usize::from(packet.total_length()))
        }
        IpVersion::V6 => {
            let packet = ipv6::Packet::new_checked(&frame[l3..])?;
            let end = l3 + ipv6::HEADER_LEN + usize::from(packet.payload_length());
            let mut next = packet.next_header();
            let mut l4 = l3 + ipv6::HEADER_LEN;
            if strictness == Strictness::AllowExtensions {
                for _ in 0..MAX_IPV6_EXTENSIONS {
                    if next != IPV6_HOP_BY_HOP && next != IPV6_DESTINATION_OPTIONS {
                        break;
                    }
                    let Some(ext) = frame[..end].get(l4..l4 + 2) else {
                        return Err(Error::Truncated);
                    };
                    next = ext[0];
                    l4 += (usize::from(ext[1]) + 1) * 8;
                }
            }
            if next != PROTOCOL_TCP {
                return Err(Error::Malformed("IP payload is not TCP"));
            }
            if l4 > end {
                return Err(Error::Truncated);
            }
            (l4, end)
        }
    };
    let segment = tcp::Packet::new_checked(&frame[l4..end])?;
    Ok(TcpFrame { ip, l3, l4, payload: l4 + segment.header_length(), end })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{build, FrameSpec};
    use super::*;

    #[test]
    fn finds_every_header() {
        let spec = FrameSpec::v4(100);
        let frame = build(&spec);
        let tcp = parse(&frame, Strictness::Plain).unwrap();
        assert_eq!(tcp, TcpFrame { ip: IpVersion::V4, l3: 14, l4: 34, payload: 66, end: 166 });
        assert_eq!(tcp.payload_len(), 100);

        let frame = build(&FrameSpec::v6(7));
        let tcp = parse(&frame, Strictness::Plain).unwrap();
        assert_eq!(tcp, TcpFrame { ip: IpVersion::V6, l3: 14, l4: 54, payload: 86, end: 93 });
    }

    #[test]
    fn vlan_tags_and_padding() {
        let frame = build(&FrameSpec { vlan_tags: 2, ..FrameSpec::v4(1) });
        let mut padded = frame.clone();
        padded.extend_from_slice(&[0; 5]);
        let tcp = parse(&padded, Strictness::Plain).unwrap();
        assert_eq!((tcp.l3, tcp.l4, tcp.end), (22, 42, frame.len()));
    }

    #[test]
    fn extensions_only_when_allowed() {
        let frame = build(&FrameSpec { ipv4_options: 8, ..FrameSpec::v4(10) });
        assert_eq!(parse(&frame, Strictness::Plain), Err(Error::Malformed("IPv4 options")));
        assert_eq!(parse(&frame, Strictness::AllowExtensions).unwrap().l4, 42);

        let frame = build(&FrameSpec { ipv6_hop_by_hop: 1, ..FrameSpec::v6(10) });
        assert_eq!(parse(&frame, Strictness::Plain), Err(Error::Malformed("IP payload is not TCP")));
        assert_eq!(parse(&frame, Strictness::AllowExtensions).unwrap().l4, 14 + 40 + 8);
    }

    #[test]
    fn rejects_what_is_not_tcp() {
        let mut frame = build(&FrameSpec::v4(10));
        frame[23] = 17; // UDP
        assert!(parse(&frame, Strictness::AllowExtensions).is_err());
        let mut frame = build(&FrameSpec::v4(10));
        frame[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(parse(&frame, Strictness::AllowExtensions).is_err());
        assert_eq!(l3(&frame), Ok(None));
        let mut frame = build(&FrameSpec::v4(10));
        frame[20] = 0x20; // MF
        assert_eq!(parse(&frame, Strictness::AllowExtensions), Err(Error::Malformed("IPv4 fragment")));
        let frame = build(&FrameSpec { vlan_tags: 1, ..FrameSpec::v4(0) });
        assert_eq!(l3(&frame[..16]), Err(Error::Truncated));
    }
}
