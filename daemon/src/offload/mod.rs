//! TAP offloads in userspace: the virtio-net header, TCP segmentation of the super-frames a
//! TAP hands out with TSO on, and coalescing of received segments back into super-frames.
//!
//! With `IFF_VNET_HDR` and `TUNSETOFFLOAD(CSUM | TSO4 | TSO6 | TSO_ECN)` the kernel gives the
//! overlay TAP frames of up to 64 KiB with a [`VirtioNetHeader`] in front, and takes them back
//! the same way; the per-packet costs of the datapath (reads, writes, IP/TCP work in the host
//! stack) are then paid once per 64 KiB instead of once per MTU.
//!
//! - Send: [`Segmenter`] (or [`segment_into`]) cuts a GSO frame into overlay-MTU frames, each
//!   written where the caller wants it (at the datapath's frame offset, so the ESP headers can
//!   go in front in place); [`complete_checksum`] finishes a small NEEDS_CSUM frame in place.
//! - Receive: a [`Coalescer`] merges consecutive segments of a flow into one GSO frame for the
//!   TAP, following Linux GRO's rules.
//!
//! Everything here is a pure function of caller-owned bytes: no IO, no allocation per packet.

pub mod coalesce;
mod headers;
pub mod segment;
pub mod virtio_net;

#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
pub(crate) mod testutil;

pub use self::coalesce::{Coalescer, Config as CoalesceConfig, Landing};
#[cfg(test)]
pub use self::segment::segment_into;
pub use self::segment::{complete_checksum, Segmenter};
#[cfg(test)]
pub use self::virtio_net::{Gso, VirtioNetHeader};

/// Throughput on this machine, in release mode:
/// `cargo test --release -p meshd --lib offload::throughput -- --ignored --nocapture`.
#[cfg(test)]
mod throughput {
    use std::time::Instant;

    use super::testutil::{build, FrameSpec, PartialOrFull};
    use super::*;
    use crate::wire::tcp::flags;

    const MSS: u16 = 1448;

    fn superframe(v6: bool) -> (VirtioNetHeader, Vec<u8>) {
        let base = if v6 { FrameSpec::v6(65_535 - 32) } else { FrameSpec::v4(65_535 - 20 - 32) };
        let spec = FrameSpec { flags: flags::ACK | flags::PSH, checksum: PartialOrFull::Partial, ..base };
        let l4 = if v6 { 54 } else { 34 };
        let header = VirtioNetHeader {
            flags: virtio_net::flags::NEEDS_CSUM,
            gso: if v6 { Gso::TcpV6 } else { Gso::TcpV4 },
            ecn: false,
            hdr_len: l4 + 32,
            gso_size: MSS,
            csum_start: l4,
            csum_offset: 16,
        };
        (header, build(&spec))
    }

    /// Best of five runs of `rounds` calls of `f`, each handling `bytes`: the machine is shared.
    fn measure(what: &str, bytes: usize, rounds: usize, mut f: impl FnMut()) {
        let best = (0..5)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..rounds {
                    f();
                }
                start.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        let gbps = (bytes * rounds) as f64 / best / 1e9;
        println!("{what}: {gbps:.2} GB/s ({:.1} us per frame)", best / rounds as f64 * 1e6);
    }

    #[test]
    #[ignore = "a measurement, not a test: run it in release mode"]
    fn throughput() {
        const ROUNDS: usize = 5_000;
        for v6 in [false, true] {
            let ip = if v6 { "IPv6" } else { "IPv4" };
            let (header, frame) = superframe(v6);
            // Segments written one at a time at a fixed offset, as the datapath will.
            let mut buf = vec![0u8; 200 + 2000];
            let mut sink = 0usize;
            measure(&format!("segment {ip} 64 KiB, MSS {MSS}"), frame.len(), ROUNDS, || {
                let mut segmenter = Segmenter::new(&header, std::hint::black_box(&frame)).unwrap();
                while let Some(len) = segmenter.write_next(&mut buf[200..]) {
                    sink = sink.wrapping_add(usize::from(buf[200 + len - 1]));
                }
            });

            let mut segments = Vec::new();
            segment_into(&header, &frame, &mut buf, 0, |b, len| {
                let mut packet = vec![0u8; virtio_net::HEADER_LEN];
                packet.extend_from_slice(&b[..len]);
                segments.push(packet);
            })
            .unwrap();
            for verify_checksums in [true, false] {
                let mut coalescer = Coalescer::new(CoalesceConfig { slots: 4, verify_checksums });
                let what = format!("coalesce {ip} 64 KiB from {} segments, verify {verify_checksums}", segments.len());
                measure(&what, frame.len(), ROUNDS, || {
                    let mut emit = |b: &[u8]| sink = sink.wrapping_add(b.len());
                    for segment in segments.iter_mut() {
                        coalescer.push(std::hint::black_box(segment), &mut emit);
                    }
                    coalescer.flush(&mut emit);
                });
                assert_eq!(coalescer.stats().super_frames, 5 * ROUNDS as u64);
            }
            std::hint::black_box(sink);
        }
    }
}
