//! The TAP offload work of the datapath on byte buffers: cutting a 64 KiB TCP super-frame into
//! MSS-sized segments (as read from a TAP with TSO), and coalescing those segments back into one
//! super-frame (as received): with the TCP checksums verified as Linux GRO does, and without, as
//! the datapath coalesces segments the ESP AEAD has just authenticated. And the egress of such
//! a super-frame to one peer as the datapath does it (segments, VXLAN, ESP, into the GSO batch):
//! each packet sealed in the worker's buffer and copied into the batch (before issue 19), and
//! sealed straight in the batch (now). And the ingress of its 44 ESP packets from one peer into
//! the coalescer and the TAP (whose writes go nowhere): each opened in place and its frame copied
//! into the coalescing slot (before issue 19), and decrypted straight into the slot (now).
//!
//!     cargo bench -p meshd --features internals --bench offload  # or `-- --quick` for a short run

use std::hint::black_box;
use std::net::Ipv4Addr;

use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use meshd::datapath::testkit::{self, CopyingSink, GsoWire, TapRecord, Taps};
use meshd::datapath::{Destination, Egress, EspSender, FrameSink, Ingress, TapSink, BUFFER_LEN};
use meshd::offload::virtio_net::{self, Gso, VirtioNetHeader};
use meshd::offload::{CoalesceConfig, Coalescer, Segmenter};
use meshd::state::MeshState;
use meshd::wire::checksum::PseudoHeader;
use meshd::wire::ethernet::{EthernetAddress, EthernetHeader, ETHERTYPE_IPV4};
use meshd::wire::ipv4::Ipv4Header;
use meshd::wire::tcp::{self, TcpHeader, PROTOCOL_TCP};

const MSS: u16 = 1448;
const HEADERS: usize = 14 + 20 + 20;
const PAYLOAD: usize = 44 * MSS as usize;

/// An Ethernet/IPv4/TCP super-frame as a TAP hands it out with TSO: NEEDS_CSUM, the TCP checksum
/// field holding the pseudo-header sum.
fn superframe() -> (VirtioNetHeader, Vec<u8>) {
    let mut frame = vec![0u8; HEADERS + PAYLOAD];
    EthernetHeader {
        destination: EthernetAddress([2, 0, 0, 0, 0, 2]),
        source: EthernetAddress([2, 0, 0, 0, 0, 1]),
        ethertype: ETHERTYPE_IPV4,
    }
    .emit(&mut frame[..14]);
    let (source, destination) = (Ipv4Addr::new(10, 244, 0, 1), Ipv4Addr::new(10, 244, 0, 2));
    Ipv4Header {
        source,
        destination,
        protocol: PROTOCOL_TCP,
        payload_len: 20 + PAYLOAD,
        hop_limit: 64,
        dont_fragment: true,
        identification: 1,
    }
    .emit(&mut frame[14..34]);
    TcpHeader {
        source_port: 40000,
        destination_port: 5201,
        sequence_number: 1,
        acknowledgment_number: 1,
        flags: tcp::flags::ACK | tcp::flags::PSH,
        window_len: 512,
        urgent_pointer: 0,
        options: &[],
    }
    .emit(&mut frame[34..54]);
    for (i, byte) in frame[HEADERS..].iter_mut().enumerate() {
        *byte = (i * 7) as u8;
    }
    let partial = PseudoHeader::v4(source, destination, PROTOCOL_TCP).with_len(20 + PAYLOAD);
    frame[34 + tcp::CHECKSUM_OFFSET..34 + tcp::CHECKSUM_OFFSET + 2].copy_from_slice(&partial.to_be_bytes());
    let header = VirtioNetHeader {
        flags: virtio_net::flags::NEEDS_CSUM,
        gso: Gso::TcpV4,
        ecn: false,
        hdr_len: HEADERS as u16,
        gso_size: MSS,
        csum_start: 34,
        csum_offset: tcp::CHECKSUM_OFFSET as u16,
    };
    (header, frame)
}

/// The segments of the super-frame, each with `virtio_net::HEADER_LEN` bytes of room in front.
fn segments(header: &VirtioNetHeader, frame: &[u8]) -> Vec<Vec<u8>> {
    let mut segmenter = Segmenter::new(header, frame).expect("a valid super-frame");
    let mut out = Vec::new();
    let mut buf = vec![0u8; virtio_net::HEADER_LEN + segmenter.max_segment_len()];
    while let Some(len) = segmenter.write_next(&mut buf[virtio_net::HEADER_LEN..]) {
        out.push(buf[..virtio_net::HEADER_LEN + len].to_vec());
    }
    out
}

fn segment(c: &mut Criterion) {
    let (header, frame) = superframe();
    let mut out = vec![0u8; 4096];
    let mut group = c.benchmark_group("offload");
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    group.bench_function("segment_64k_ipv4", |b| {
        b.iter(|| {
            let mut segmenter = Segmenter::new(&header, black_box(&frame)).expect("a valid super-frame");
            while let Some(len) = segmenter.write_next(&mut out) {
                black_box(&out[..len]);
            }
        })
    });
    let pieces = segments(&header, &frame);
    for (name, verify_checksums) in [("coalesce_64k_ipv4", true), ("coalesce_64k_ipv4_unverified", false)] {
        let mut coalescer = Coalescer::new(CoalesceConfig { verify_checksums, ..CoalesceConfig::default() });
        let mut work = pieces.clone();
        // The segments must really merge, or this measures pass-through.
        for piece in &mut work {
            coalescer.push(piece, &mut |_| {});
        }
        coalescer.flush(&mut |_| {});
        assert_eq!(coalescer.stats().merged_segments, pieces.len() as u64, "{:?}", coalescer.stats());
        group.bench_function(name, |b| {
            b.iter(|| {
                for (piece, original) in work.iter_mut().zip(&pieces) {
                    piece.copy_from_slice(original);
                    coalescer.push(piece, &mut |out| {
                        black_box(out);
                    });
                }
                coalescer.flush(&mut |out| {
                    black_box(out);
                });
            })
        });
    }
    group.finish();
}

fn egress(c: &mut Criterion) {
    let (header, frame) = superframe();
    let state = testkit::node(&testkit::DEFAULT, 0);
    let (topology, tables) = (state.topology(), state.sadb.load());
    let taps = Taps::default();
    let (mut segment, mut scratch) = (vec![0u8; BUFFER_LEN], vec![0u8; BUFFER_LEN]);
    let mut group = c.benchmark_group("datapath");
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    for (name, in_place) in [("egress_64k_copy_into_batch", false), ("egress_64k_seal_in_batch", true)] {
        let wire = GsoWire::new(in_place, false);
        let egress = Egress {
            state: &state,
            topology: &topology,
            tables: &tables,
            underlay: &wire,
            sink: &taps,
            now_ms: 1,
            observing: None,
        };
        let to_peer = Destination::Peer(topology.overlays[0].members[0]);
        let mut send_super_frame = || {
            let mut segments = Segmenter::new(&header, black_box(&frame)).expect("a valid super-frame");
            egress.forward_segments(to_peer, &topology.overlays[0], &mut segments, &mut segment, &mut scratch);
            wire.flush().expect("a recorded send");
        };
        send_super_frame();
        assert_eq!(wire.copied.get() == 0, in_place, "{name}: the path measured");
        group.bench_function(name, |b| b.iter(&mut send_super_frame));
    }
    group.finish();
}

/// Node 1 receives `packets` from node 0 as one batch through `sink`.
fn receive_batch<S: FrameSink>(receiver: &MeshState, sink: &S, packets: &mut [Vec<u8>]) {
    let (topology, tables) = (receiver.topology(), receiver.sadb.load());
    let ingress = Ingress::new(receiver, &topology, &tables, sink, 1, None);
    let from = SocketAddr::new(testkit::address(&testkit::DEFAULT, 0), 4500);
    for packet in packets {
        ingress.receive(packet, from);
    }
}

/// Node 1 receives `packets` through `sink` (through a copying one unless `landing`) and
/// flushes it, as a worker does with one receive batch.
fn receive_and_flush(receiver: &MeshState, sink: &TapSink<'_, TapRecord>, landing: bool, packets: &mut [Vec<u8>]) {
    match landing {
        true => receive_batch(receiver, sink, packets),
        false => receive_batch(receiver, &CopyingSink(sink), packets),
    }
    sink.flush();
}

fn ingress(c: &mut Criterion) {
    let (header, frame) = superframe();
    let frames: Vec<Vec<u8>> =
        segments(&header, &frame).into_iter().map(|segment| segment[virtio_net::HEADER_LEN..].to_vec()).collect();
    let (sender, receiver) = (testkit::node(&testkit::DEFAULT, 0), testkit::node(&testkit::DEFAULT, 1));
    // A fresh sequence number for every packet, or the replay window drops them.
    let seal = || -> Vec<Vec<u8>> { frames.iter().map(|frame| testkit::send(&sender, frame).remove(0).0).collect() };
    let mut group = c.benchmark_group("datapath");
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    for (name, landing) in [("ingress_64k_copy_into_slot", false), ("ingress_64k_open_into_slot", true)] {
        // The segments must really merge, and the path measured must be the one named: a packet
        // decrypted into its slot is left as it came.
        let recorded = [TapRecord { keep: true, ..TapRecord::default() }];
        let sealed = seal();
        let mut packets = sealed.clone();
        receive_and_flush(&receiver, &TapSink::new(&recorded, true), landing, &mut packets);
        let untouched = packets.iter().zip(&sealed).filter(|(after, before)| after == before).count();
        assert_eq!(untouched, if landing { frames.len() - 1 } else { 0 }, "{name}: the path measured");
        assert_eq!(recorded[0].written.borrow().len(), 1, "{name}: one super-frame");
        let taps = [TapRecord::default()];
        let sink = TapSink::new(&taps, true);
        group.bench_function(name, |b| {
            b.iter_batched(
                seal,
                |mut packets| receive_and_flush(&receiver, &sink, landing, &mut packets),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, segment, egress, ingress);
criterion_main!(benches);
