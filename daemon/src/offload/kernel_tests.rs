//! Segmentation and coalescing against what the Linux kernel (6.18, x86_64) itself made of the
//! same input. `testdata/capture.py` made the fixtures in two network namespaces:
//! - `superframe_*.pcap`: the TSO super-frame with its virtio-net header, as injected through
//!   an AF_PACKET socket with PACKET_VNET_HDR (the same call path as a TAP write:
//!   `virtio_net_hdr_to_skb`);
//! - `kernel_tso_*.pcap`: the segments the kernel's software GSO cut from it on a veth with TSO
//!   and TX checksumming off, as tshark captured them;
//! - `kernel_gro_*.pcap`: what the kernel's GRO, on the peer veth, made of those segments,
//!   read with a PACKET_VNET_HDR socket (virtio-net header first, as a TAP read gives it).

use super::coalesce::{Coalescer, Config};
use super::headers::IpVersion;
use super::segment::Segmenter;
use super::testutil::{build, read_pcap, FrameSpec, PartialOrFull};
use super::virtio_net::{self, flags as vflags, Packet, VirtioNetHeader};
use crate::wire::tcp::flags;

struct Case {
    spec: FrameSpec,
    superframe: &'static [u8],
    tso: &'static [u8],
    gro: &'static [u8],
}

fn v4() -> Case {
    Case {
        spec: FrameSpec {
            flags: flags::ACK | flags::PSH | flags::CWR,
            checksum: PartialOrFull::Partial,
            ..FrameSpec::v4(3700)
        },
        superframe: include_bytes!("testdata/superframe_v4.pcap"),
        tso: include_bytes!("testdata/kernel_tso_v4.pcap"),
        gro: include_bytes!("testdata/kernel_gro_v4.pcap"),
    }
}

fn v6() -> Case {
    Case {
        spec: FrameSpec {
            flags: flags::ACK | flags::PSH | flags::FIN,
            checksum: PartialOrFull::Partial,
            ..FrameSpec::v6(2500)
        },
        superframe: include_bytes!("testdata/superframe_v6.pcap"),
        tso: include_bytes!("testdata/kernel_tso_v6.pcap"),
        gro: include_bytes!("testdata/kernel_gro_v6.pcap"),
    }
}

fn split(record: &[u8]) -> (VirtioNetHeader, &[u8]) {
    let packet = Packet::new_checked(record).unwrap();
    (VirtioNetHeader::parse(&packet).unwrap(), &record[virtio_net::HEADER_LEN..])
}

/// The injected super-frame is the one `testutil::build` makes from the spec, so the fixtures
/// belong to these tests.
fn check_superframe(case: &Case) -> (VirtioNetHeader, Vec<u8>) {
    let records = read_pcap(case.superframe);
    assert_eq!(records.len(), 1);
    let (header, frame) = split(&records[0]);
    assert_eq!(frame, build(&case.spec));
    assert_eq!(header.flags, vflags::NEEDS_CSUM);
    assert_eq!(header.gso_size, 1000);
    assert_eq!(header.ecn, case.spec.flags & flags::CWR != 0);
    (header, frame.to_vec())
}

fn segmentation_matches(case: Case) {
    let (header, frame) = check_superframe(&case);
    let kernel = read_pcap(case.tso);
    let mut segmenter = Segmenter::new(&header, &frame).unwrap();
    assert_eq!(segmenter.segments(), kernel.len());
    let mut buf = vec![0u8; segmenter.max_segment_len()];
    for (i, expected) in kernel.iter().enumerate() {
        let len = segmenter.write_next(&mut buf).unwrap();
        // Byte for byte, IPv4 identification included: the kernel too counts up from the
        // super-frame's (inet_gso_segment without SKB_GSO_TCP_FIXEDID).
        assert_eq!(&buf[..len], &expected[..], "segment {i}");
    }
}

/// Our coalescer fed the kernel's segments gives the kernel's GRO output, except for two
/// header fields that differ by design: `hdr_len`, where the kernel writes `skb_headlen()`
/// (a hint of how much was linear; we write the headers' length, what virtio specifies), and
/// DATA_VALID, which the kernel sets on frames it verified and a TAP ignores on write.
fn coalescing_matches(case: Case) {
    check_superframe(&case);
    let mut coalescer = Coalescer::new(Config::default());
    let mut ours = Vec::new();
    let mut emit = |bytes: &[u8]| ours.push(bytes.to_vec());
    for segment in read_pcap(case.tso) {
        let mut packet = vec![0u8; virtio_net::HEADER_LEN];
        packet.extend_from_slice(&segment);
        coalescer.push(&mut packet, &mut emit);
    }
    coalescer.flush(&mut emit);
    let kernel = read_pcap(case.gro);
    assert_eq!(ours.len(), kernel.len());
    for (i, (ours, kernel)) in ours.iter().zip(&kernel).enumerate() {
        let (mut our_header, our_frame) = split(ours);
        let (mut kernel_header, kernel_frame) = split(kernel);
        assert_eq!(our_frame, kernel_frame, "frame {i}");
        kernel_header.flags &= !vflags::DATA_VALID;
        if our_header.gso != virtio_net::Gso::None {
            let l4 = if case.spec.ip == IpVersion::V4 { 34 } else { 54 };
            assert_eq!(our_header.hdr_len, l4 + 32);
            our_header.hdr_len = kernel_header.hdr_len;
        }
        assert_eq!(our_header, kernel_header, "header {i}");
    }
}

#[test]
fn segmentation_matches_kernel_gso_ipv4() {
    segmentation_matches(v4());
}

#[test]
fn segmentation_matches_kernel_gso_ipv6() {
    segmentation_matches(v6());
}

#[test]
fn coalescing_matches_kernel_gro_ipv4() {
    coalescing_matches(v4());
}

#[test]
fn coalescing_matches_kernel_gro_ipv6() {
    coalescing_matches(v6());
}

/// The kernel's GRO output for IPv6 is the injected super-frame itself, byte for byte: the
/// pseudo-header sum over the whole TCP length in the checksum field is the kernel's own
/// convention for NEEDS_CSUM super-frames, in both directions.
#[test]
fn kernel_gro_gives_back_the_superframe() {
    let case = v6();
    let (header, frame) = check_superframe(&case);
    let kernel = read_pcap(case.gro);
    assert_eq!(kernel.len(), 1);
    let (kernel_header, kernel_frame) = split(&kernel[0]);
    assert_eq!(kernel_frame, &frame[..]);
    assert_eq!(VirtioNetHeader { hdr_len: header.hdr_len, ..kernel_header }, header);
}
