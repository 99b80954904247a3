//! The send side: TSO super-frames read from a TAP, cut into MSS-sized Ethernet frames the way
//! the kernel's software GSO (`tcp_gso_segment`, `inet_gso_segment`, `ipv6_gso_segment`) cuts
//! them, and checksums left to us (NEEDS_CSUM) filled in.
//!
//! Each segment gets a copy of the Ethernet, IP and TCP headers, then:
//! - IPv4: total length, identification (the super-frame's, plus the segment's index) and the
//!   header checksum; IPv6: payload length;
//! - TCP: sequence number (plus the index times the MSS), FIN and PSH kept only on the last
//!   segment, CWR only on the first, and a full checksum over the pseudo-header, header and
//!   payload.
//!
//! Nothing here allocates: segments are written into caller-owned buffers, at whatever offset
//! the caller chooses, so the ESP headers can go in front of each one in place.

#[cfg(test)]
use std::net::Ipv4Addr;

use super::headers::{self, IpVersion, Strictness, TcpFrame};
use super::virtio_net::{Gso, VirtioNetHeader};
use crate::wire::checksum::PseudoHeader;
use crate::wire::tcp::PROTOCOL_TCP;
use crate::wire::tcp::{self, flags};
use crate::wire::{checksum, ipv4, ipv6, Error, Result};

/// Cuts one TCP super-frame into segments, one `write_next` at a time (the module is private,
/// so the example is not compiled as a doctest; the unit tests below drive the same calls).
///
/// ```ignore
/// # use meshd::offload::{Segmenter, VirtioNetHeader};
/// # fn send(_: &[u8]) {}
/// # fn example(header: &VirtioNetHeader, frame: &[u8], buf: &mut [u8], offset: usize) -> meshd::wire::Result<()> {
/// let mut segments = Segmenter::new(header, frame)?;
/// assert!(buf.len() >= offset + segments.max_segment_len());
/// while let Some(len) = segments.write_next(&mut buf[offset..]) {
///     send(&buf[offset..offset + len]);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Segmenter<'a> {
    frame: &'a [u8],
    tcp: TcpFrame,
    mss: usize,
    segments: usize,
    next: usize,
    sequence: u32,
    identification: u16,
    flags: u16,
    pseudo: PseudoHeader,
}

impl<'a> Segmenter<'a> {
    /// Checks a super-frame whose virtio-net header asks for TCPV4 or TCPV6 segmentation.
    /// The headers are parsed from the frame (the header's `hdr_len` and `csum_*` are only
    /// hints and are not used); IPv4 options and IPv6 hop-by-hop and destination options are
    /// copied into every segment. A frame whose payload fits in one MSS gives one segment.
    pub fn new(header: &VirtioNetHeader, frame: &'a [u8]) -> Result<Segmenter<'a>> {
        let expected = match header.gso {
            Gso::TcpV4 => IpVersion::V4,
            Gso::TcpV6 => IpVersion::V6,
            _ => return Err(Error::Malformed("not a TCP GSO frame")),
        };
        let tcp = headers::parse(frame, Strictness::AllowExtensions)?;
        if tcp.ip != expected {
            return Err(Error::Malformed("GSO type does not match the IP version"));
        }
        let mss = usize::from(header.gso_size);
        if mss == 0 {
            return Err(Error::Malformed("virtio-net GSO with a zero gso_size"));
        }
        let segment = tcp::Packet::new_unchecked(&frame[tcp.l4..tcp.end]);
        let (sequence, flags) = (segment.sequence_number(), segment.flags());
        let (identification, pseudo) = match tcp.ip {
            IpVersion::V4 => {
                let ip = ipv4::Packet::new_unchecked(&frame[tcp.l3..]);
                (ip.identification(), PseudoHeader::v4(ip.source_address(), ip.destination_address(), PROTOCOL_TCP))
            }
            IpVersion::V6 => {
                let ip = ipv6::Packet::new_unchecked(&frame[tcp.l3..]);
                (0, PseudoHeader::v6(ip.source_address(), ip.destination_address(), PROTOCOL_TCP))
            }
        };
        let segments = tcp.payload_len().div_ceil(mss).max(1);
        Ok(Segmenter { frame, tcp, mss, segments, next: 0, sequence, identification, flags, pseudo })
    }

    /// How many segments the super-frame makes.
    #[cfg(test)]
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// How many `write_next` calls are left to make.
    #[cfg(test)]
    pub fn remaining(&self) -> usize {
        self.segments - self.next
    }

    /// Ethernet + IP + TCP header length, the same in every segment.
    #[cfg(test)]
    pub fn headers_len(&self) -> usize {
        self.tcp.payload
    }

    /// Length of segment `index` (0-based), headers included; `None` past the last one.
    pub fn segment_len(&self, index: usize) -> Option<usize> {
        if index >= self.segments {
            return None;
        }
        let start = index * self.mss;
        Some(self.tcp.payload + self.mss.min(self.tcp.payload_len() - start))
    }

    /// Length of the segment the next `write_next` writes; `None` when all are written.
    pub fn next_len(&self) -> Option<usize> {
        self.segment_len(self.next)
    }

    /// The length of the first, longest segment: the room each `write_next` needs.
    #[cfg(any(test, feature = "internals"))]
    pub fn max_segment_len(&self) -> usize {
        self.tcp.payload + self.mss.min(self.tcp.payload_len())
    }

    /// Writes the next segment at the start of `out` and returns its length, or `None` when
    /// every segment has been written.
    ///
    /// # Panics
    /// If `out` is shorter than the segment ([`Segmenter::max_segment_len`] always suffices).
    pub fn write_next(&mut self, out: &mut [u8]) -> Option<usize> {
        let index = self.next;
        let len = self.segment_len(index)?;
        self.next += 1;
        let TcpFrame { ip, l3, l4, payload: headers_len, .. } = self.tcp;
        let start = headers_len + index * self.mss;
        let out = &mut out[..len];
        out[..headers_len].copy_from_slice(&self.frame[..headers_len]);
        out[headers_len..].copy_from_slice(&self.frame[start..start + len - headers_len]);

        // `len - l3` fits: every segment is at most as long as the super-frame, whose IP length
        // field held it.
        match ip {
            IpVersion::V4 => {
                let mut packet = ipv4::Packet::new_unchecked(&mut out[l3..]);
                packet.set_total_length((len - l3) as u16);
                packet.set_identification(self.identification.wrapping_add(index as u16));
                packet.fill_checksum();
            }
            IpVersion::V6 => {
                ipv6::Packet::new_unchecked(&mut out[l3..]).set_payload_length((len - l3 - ipv6::HEADER_LEN) as u16);
            }
        }

        let mut flags = self.flags;
        if index + 1 < self.segments {
            flags &= !(flags::FIN | flags::PSH);
        }
        if index > 0 {
            flags &= !flags::CWR;
        }
        let mut segment = tcp::Packet::new_unchecked(&mut out[l4..]);
        segment.set_sequence_number(self.sequence.wrapping_add((index * self.mss) as u32));
        segment.set_flags(flags);
        segment.set_checksum(0);
        let sum = checksum::combine(&[
            self.pseudo.with_len(len - l4),
            checksum::data(&out[l4..headers_len]),
            checksum::data(&out[headers_len..]),
        ]);
        tcp::Packet::new_unchecked(&mut out[l4..]).set_checksum(!sum);
        Some(len)
    }
}

/// Completes the checksum of a frame whose header has NEEDS_CSUM and no GSO, in place: sums
/// from `csum_start` to the end of the frame (the checksum field holds the pseudo-header sum
/// the kernel left there) and stores the result at `csum_start + csum_offset`, a result of 0 as
/// 0xFFFF, as the kernel's `skb_checksum_help` does. Does nothing without NEEDS_CSUM.
pub fn complete_checksum(header: &VirtioNetHeader, frame: &mut [u8]) -> Result<()> {
    if !header.needs_csum() {
        return Ok(());
    }
    let start = usize::from(header.csum_start);
    let at = start + usize::from(header.csum_offset);
    if at + 2 > frame.len() {
        return Err(Error::Malformed("virtio-net checksum position is beyond the frame"));
    }
    let value = !checksum::data(&frame[start..]);
    let value = if value == 0 { 0xFFFF } else { value };
    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
    Ok(())
}

/// Everything the send side does with one frame read from a TAP: each segment of a TCP GSO
/// frame, or the frame itself with its checksum completed, is written at `buf[offset..]` in
/// turn, and `f(buf, len)` is called after each with the whole buffer and the frame's length,
/// so that headers can be written in front of it in place. Returns how many frames it wrote.
///
/// A frame without GSO is copied; to avoid that, read it straight into the packet buffer and
/// call [`complete_checksum`] there.
///
/// # Panics
/// If `buf` has less than the frame's (or the largest segment's) length after `offset`.
#[cfg(test)]
pub fn segment_into(
    header: &VirtioNetHeader,
    frame: &[u8],
    buf: &mut [u8],
    offset: usize,
    mut f: impl FnMut(&mut [u8], usize),
) -> Result<usize> {
    if header.gso == Gso::None {
        let out = &mut buf[offset..offset + frame.len()];
        out.copy_from_slice(frame);
        complete_checksum(header, out)?;
        f(buf, frame.len());
        return Ok(1);
    }
    let mut segmenter = Segmenter::new(header, frame)?;
    let segments = segmenter.segments();
    while let Some(len) = segmenter.write_next(&mut buf[offset..]) {
        f(buf, len);
    }
    Ok(segments)
}

/// The pseudo-header sum that goes in the TCP checksum field of a NEEDS_CSUM frame, as the
/// kernel leaves it (`~tcp_v4_check(len, saddr, daddr, 0)`): folded, not inverted, with the
/// TCP length of the whole (super-)frame.
#[cfg(test)]
pub fn partial_checksum_v4(source: Ipv4Addr, destination: Ipv4Addr, tcp_len: usize) -> u16 {
    PseudoHeader::v4(source, destination, PROTOCOL_TCP).with_len(tcp_len)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{self, build, tso_header, FrameSpec, PartialOrFull};
    use super::super::virtio_net::flags as vflags;
    use super::*;
    use proptest::prelude::*;

    fn collect(header: &VirtioNetHeader, frame: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 80_000];
        segment_into(header, frame, &mut buf, 123, |buf, len| out.push(buf[123..123 + len].to_vec())).unwrap();
        out
    }

    /// Checks every field of every segment against the super-frame, by byte offsets and an
    /// independent checksum, not through the code under test.
    fn check_segments(spec: &FrameSpec, superframe: &[u8], mss: usize, segments: &[Vec<u8>]) {
        let l3 = 14;
        let ip_len = match spec.ip {
            IpVersion::V4 => 20,
            IpVersion::V6 => 40,
        };
        let l4 = l3 + ip_len;
        let hl = l4 + 20 + spec.tcp_options.len();
        let payload = &superframe[hl..];
        assert_eq!(segments.len(), payload.len().div_ceil(mss).max(1));
        let mut offset = 0;
        for (i, seg) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let len = mss.min(payload.len() - offset);
            assert_eq!(seg.len(), hl + len, "segment {i} length");
            // Ethernet unchanged.
            assert_eq!(seg[..l3], superframe[..l3]);
            match spec.ip {
                IpVersion::V4 => {
                    assert_eq!(seg[l3..l3 + 2], superframe[l3..l3 + 2], "version, IHL, TOS");
                    assert_eq!(
                        u16::from_be_bytes([seg[l3 + 2], seg[l3 + 3]]) as usize,
                        20 + 20 + spec.tcp_options.len() + len
                    );
                    assert_eq!(
                        u16::from_be_bytes([seg[l3 + 4], seg[l3 + 5]]),
                        spec.identification.wrapping_add(i as u16)
                    );
                    assert_eq!(seg[l3 + 6..l3 + 10], superframe[l3 + 6..l3 + 10], "flags, TTL, protocol");
                    assert_eq!(seg[l3 + 12..l4], superframe[l3 + 12..l4], "addresses");
                    assert!(testutil::reference_ipv4_header_ok(&seg[l3..l4]), "segment {i} IPv4 checksum");
                }
                IpVersion::V6 => {
                    assert_eq!(seg[l3..l3 + 4], superframe[l3..l3 + 4]);
                    assert_eq!(
                        u16::from_be_bytes([seg[l3 + 4], seg[l3 + 5]]) as usize,
                        20 + spec.tcp_options.len() + len
                    );
                    assert_eq!(seg[l3 + 6..l4], superframe[l3 + 6..l4]);
                }
            }
            assert_eq!(seg[l4..l4 + 4], superframe[l4..l4 + 4], "ports");
            let seq = u32::from_be_bytes(seg[l4 + 4..l4 + 8].try_into().unwrap());
            assert_eq!(seq, spec.sequence.wrapping_add(offset as u32), "segment {i} sequence");
            assert_eq!(seg[l4 + 8..l4 + 12], superframe[l4 + 8..l4 + 12], "ack");
            assert_eq!(seg[l4 + 12] & 0xF0, superframe[l4 + 12] & 0xF0, "data offset");
            let mut expected = spec.flags;
            if !last {
                expected &= !(flags::FIN | flags::PSH);
            }
            if i > 0 {
                expected &= !flags::CWR;
            }
            let got = u16::from_be_bytes([seg[l4 + 12], seg[l4 + 13]]) & 0x1FF;
            assert_eq!(got, expected, "segment {i} flags");
            assert_eq!(seg[l4 + 14..l4 + 16], superframe[l4 + 14..l4 + 16], "window");
            assert_eq!(seg[l4 + 18..hl], superframe[l4 + 18..hl], "urgent pointer and options");
            assert_eq!(seg[hl..], payload[offset..offset + len], "segment {i} payload");
            assert!(testutil::reference_tcp_checksum_ok(seg, l3, spec.ip), "segment {i} TCP checksum");
            offset += len;
        }
        assert_eq!(offset, payload.len());
    }

    #[test]
    fn ipv4_tso_with_timestamps_byte_by_byte() {
        let spec = FrameSpec {
            flags: flags::ACK | flags::PSH | flags::CWR,
            checksum: PartialOrFull::Partial,
            ..FrameSpec::v4(65_535 - 20 - 32)
        };
        let frame = build(&spec);
        assert_eq!(frame.len(), 14 + 65_535);
        let header = tso_header(&spec, 1448);
        let segments = collect(&header, &frame);
        assert_eq!(segments.len(), 46);
        check_segments(&spec, &frame, 1448, &segments);
        // The last one: 65483 - 45 * 1448 = 323 bytes of payload.
        assert_eq!(segments[45].len(), 66 + 323);
    }

    #[test]
    fn ipv6_tso_byte_by_byte() {
        let spec = FrameSpec {
            flags: flags::ACK | flags::PSH | flags::FIN,
            checksum: PartialOrFull::Partial,
            ..FrameSpec::v6(65_535 - 32)
        };
        let frame = build(&spec);
        let header = tso_header(&spec, 1428);
        let segments = collect(&header, &frame);
        check_segments(&spec, &frame, 1428, &segments);
    }

    #[test]
    fn sequence_and_identification_wrap() {
        let spec = FrameSpec { sequence: u32::MAX - 1000, identification: u16::MAX - 1, ..FrameSpec::v4(5000) };
        let frame = build(&spec);
        let segments = collect(&tso_header(&spec, 1000), &frame);
        check_segments(&spec, &frame, 1000, &segments);
    }

    #[test]
    fn one_segment_when_payload_fits() {
        for payload in [0, 1, 1448] {
            let spec = FrameSpec { flags: flags::ACK | flags::PSH | flags::CWR, ..FrameSpec::v4(payload) };
            let frame = build(&spec);
            let segments = collect(&tso_header(&spec, 1448), &frame);
            assert_eq!(segments.len(), 1);
            check_segments(&spec, &frame, 1448, &segments);
            assert_eq!(segments[0], build(&FrameSpec { checksum: PartialOrFull::Full, ..spec }));
        }
    }

    #[test]
    fn extensions_vlan_and_padding_are_handled() {
        let spec = FrameSpec { vlan_tags: 1, ipv4_options: 4, ..FrameSpec::v4(3000) };
        let mut frame = build(&spec);
        frame.extend_from_slice(&[0xAB; 7]); // padding past the IP packet is not payload
        let header = tso_header(&spec, 1000);
        let segments = collect(&header, &frame);
        assert_eq!(segments.len(), 3);
        for (i, seg) in segments.iter().enumerate() {
            assert_eq!(seg.len(), 18 + 24 + 32 + 1000);
            assert_eq!(seg[..18], frame[..18]);
            assert!(testutil::reference_ipv4_header_ok(&seg[18..42]));
            assert_eq!(seg[18 + 20..42], frame[38..42], "options copied");
            assert!(testutil::reference_tcp_checksum_ok(seg, 18, IpVersion::V4), "segment {i}");
        }

        let spec = FrameSpec { ipv6_hop_by_hop: 1, ..FrameSpec::v6(2500) };
        let frame = build(&spec);
        let mut header = tso_header(&spec, 1200);
        header.hdr_len = 0; // only a hint
        let segments = collect(&header, &frame);
        assert_eq!(segments.len(), 3);
        for seg in &segments {
            let payload_len = u16::from_be_bytes([seg[18], seg[19]]) as usize;
            assert_eq!(payload_len, seg.len() - 14 - 40);
            assert!(testutil::reference_tcp_checksum_ok(seg, 14, IpVersion::V6));
        }
    }

    #[test]
    fn rejects_what_it_cannot_segment() {
        let frame = build(&FrameSpec::v4(3000));
        let v4 = tso_header(&FrameSpec::v4(3000), 1000);
        assert_eq!(
            Segmenter::new(&VirtioNetHeader { gso: Gso::TcpV6, ..v4 }, &frame).unwrap_err(),
            Error::Malformed("GSO type does not match the IP version")
        );
        assert_eq!(
            Segmenter::new(&VirtioNetHeader { gso: Gso::UdpL4, ..v4 }, &frame).unwrap_err(),
            Error::Malformed("not a TCP GSO frame")
        );
        assert!(Segmenter::new(&VirtioNetHeader { gso_size: 0, ..v4 }, &frame).is_err());
        assert!(Segmenter::new(&v4, &frame[..frame.len() - 1]).is_err());
        let mut udp = frame.clone();
        udp[14 + 9] = 17;
        assert!(Segmenter::new(&v4, &udp).is_err());
    }

    #[test]
    fn sizes_for_the_caller() {
        let spec = FrameSpec::v4(2500);
        let frame = build(&spec);
        let mut s = Segmenter::new(&tso_header(&spec, 1000), &frame).unwrap();
        assert_eq!((s.segments(), s.remaining(), s.headers_len(), s.max_segment_len()), (3, 3, 66, 1066));
        assert_eq!((s.segment_len(0), s.segment_len(2), s.segment_len(3)), (Some(1066), Some(566), None));
        let mut buf = [0u8; 1066];
        assert_eq!(s.write_next(&mut buf), Some(1066));
        assert_eq!(s.remaining(), 2);
        assert_eq!(s.write_next(&mut buf), Some(1066));
        assert_eq!(s.write_next(&mut buf), Some(566));
        assert_eq!(s.write_next(&mut buf), None);
        assert_eq!(s.remaining(), 0);
    }

    #[test]
    fn needs_csum_without_gso() {
        for spec in [FrameSpec::v4(1000), FrameSpec::v6(999), FrameSpec { vlan_tags: 1, ..FrameSpec::v4(3) }] {
            let full = build(&FrameSpec { checksum: PartialOrFull::Full, ..spec.clone() });
            let partial = build(&FrameSpec { checksum: PartialOrFull::Partial, ..spec.clone() });
            assert_ne!(full, partial);
            let tcp = headers::parse(&partial, Strictness::Plain).unwrap();
            let header = VirtioNetHeader {
                flags: vflags::NEEDS_CSUM,
                csum_start: tcp.l4 as u16,
                csum_offset: 16,
                ..VirtioNetHeader::NONE
            };
            let mut frame = partial.clone();
            complete_checksum(&header, &mut frame).unwrap();
            assert_eq!(frame, full);
            assert_eq!(collect(&header, &partial), vec![full.clone()]);
            // Without NEEDS_CSUM nothing changes.
            let mut frame = partial.clone();
            complete_checksum(&VirtioNetHeader::NONE, &mut frame).unwrap();
            assert_eq!(frame, partial);
            let beyond = VirtioNetHeader { csum_offset: 60_000, ..header };
            assert!(complete_checksum(&beyond, &mut frame).is_err());
        }
    }

    #[test]
    fn needs_csum_for_udp_too() {
        // A UDP datagram over IPv4 with the pseudo-header sum in its checksum field.
        let (s, d) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
        let mut frame = vec![0u8; 14 + 20 + 8 + 11];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        crate::wire::Ipv4Header {
            source: s,
            destination: d,
            protocol: 17,
            payload_len: 19,
            hop_limit: 64,
            dont_fragment: true,
            identification: 1,
        }
        .emit(&mut frame[14..]);
        crate::wire::UdpHeader { source_port: 53, destination_port: 4242, payload_len: 11 }.emit(&mut frame[34..]);
        frame[42..].copy_from_slice(b"hello world");
        let pseudo = checksum::pseudo_header_v4(s, d, 17, 19);
        frame[40..42].copy_from_slice(&pseudo.to_be_bytes());
        let header =
            VirtioNetHeader { flags: vflags::NEEDS_CSUM, csum_start: 34, csum_offset: 6, ..VirtioNetHeader::NONE };
        complete_checksum(&header, &mut frame).unwrap();
        assert!(crate::wire::UdpPacket::new_checked(&frame[34..]).unwrap().verify_checksum_ipv4(s, d));
    }

    proptest! {
        #[test]
        fn segments_are_always_valid(
            payload in 0usize..20_000,
            mss in 1u16..3000,
            v6 in any::<bool>(),
            fl in prop::sample::select(vec![flags::ACK, flags::ACK | flags::PSH, flags::ACK | flags::CWR | flags::PSH | flags::FIN]),
        ) {
            let payload = payload.min(usize::from(mss) * 50);
            let base = if v6 { FrameSpec::v6(payload) } else { FrameSpec::v4(payload) };
            let spec = FrameSpec { flags: fl, ..base };
            let frame = build(&spec);
            let segments = collect(&tso_header(&spec, mss), &frame);
            check_segments(&spec, &frame, usize::from(mss), &segments);
        }

        #[test]
        fn never_panics_on_garbage(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            gso_size in 0u16..100,
            v6 in any::<bool>(),
            csum_start in 0u16..250,
            csum_offset in 0u16..250,
        ) {
            let header = VirtioNetHeader {
                flags: vflags::NEEDS_CSUM,
                gso: if v6 { Gso::TcpV6 } else { Gso::TcpV4 },
                ecn: false,
                hdr_len: 0,
                gso_size,
                csum_start,
                csum_offset,
            };
            if let Ok(mut s) = Segmenter::new(&header, &bytes) {
                let mut out = vec![0u8; s.max_segment_len()];
                while s.write_next(&mut out).is_some() {}
            }
            let mut frame = bytes.clone();
            let _ = complete_checksum(&VirtioNetHeader { gso: Gso::None, ..header }, &mut frame);
        }

        /// Garbage that starts like a TCP/IPv4 frame, so that more of it reaches the segmenter.
        #[test]
        fn never_panics_near_valid(
            mutations in proptest::collection::vec((0usize..100, any::<u8>()), 1..6),
            payload in 0usize..400,
            mss in 1u16..300,
        ) {
            let spec = FrameSpec::v4(payload);
            let mut frame = build(&spec);
            for (at, byte) in mutations {
                let at = at % frame.len();
                frame[at] = byte;
            }
            if let Ok(mut s) = Segmenter::new(&tso_header(&spec, mss), &frame) {
                let mut out = vec![0u8; s.max_segment_len()];
                let mut n = 0;
                while let Some(len) = s.write_next(&mut out) {
                    prop_assert!(len <= out.len());
                    n += 1;
                }
                prop_assert_eq!(n, s.segments());
            }
        }
    }
}
