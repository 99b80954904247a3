//! Sealing segments straight into the GSO batch puts on the wire exactly what sealing them in
//! the worker's buffer and copying each packet into the batch did: for a stream of frames, the
//! runs handed to the socket (destination, bytes, segment size) are compared byte for byte.

use std::net::SocketAddr;

use mesh_config::control::DropReason;
use mesh_config::Mode;

use super::testkit::{self, Delivered, GsoWire, Run, Setup, Taps, DEFAULT};
use super::{Destination, Egress, EspSender, BUFFER_LEN, FRAME_OFFSET};
use crate::offload::testutil::{build, tso_header, FrameSpec};
use crate::offload::{Segmenter, VirtioNetHeader};
use crate::pmtu::PathReport;
use crate::state::MeshState;
use crate::topology::PeerId;

/// A frame as the TAP hands it over, and where it goes.
struct TapFrame {
    destination: Destination,
    header: VirtioNetHeader,
    frame: Vec<u8>,
}

fn super_frame(destination: Destination, spec: &FrameSpec, mss: u16) -> TapFrame {
    TapFrame { destination, header: tso_header(spec, mss), frame: build(spec) }
}

/// A frame without GSO that is no TCP (ARP-sized, ethertype 0x0806).
fn not_tcp(destination: Destination, len: usize) -> TapFrame {
    let frame = testkit::frame([0x52, 0x54, 0, 0, 0, 2], [0x52, 0x54, 0, 0, 0, 1], len);
    let mut frame = frame;
    frame[12..14].copy_from_slice(&[0x08, 0x06]);
    TapFrame { destination, header: VirtioNetHeader::NONE, frame }
}

/// What one path did with `frames`: the GSO sends, the packets copied into the batch, the
/// frames written back into the overlay (ICMP answers) and the MTU drops.
#[derive(Debug, PartialEq)]
struct Outcome {
    runs: Vec<Run>,
    copied: usize,
    answered: Delivered,
    mtu_drops: u64,
}

/// Sends `frames` from a fresh node 0 of `setup` as a worker does in one batch (a flush at the
/// end only); `path_limit` is published for peer 0 first.
fn transmit(setup: &Setup, frames: &[TapFrame], path_limit: Option<u32>, in_place: bool) -> Outcome {
    let state: std::sync::Arc<MeshState> = testkit::node(setup, 0);
    let topology = state.topology();
    if let Some(limit) = path_limit {
        let report = PathReport { path_mtu: Some(limit + 100), overlay_mtu: Some(limit), source: "probed", search: None };
        topology.peer(PeerId(0)).path_mtu.publish(report);
    }
    let batch = GsoWire::new(in_place, true);
    let taps = Taps::default();
    let tables = state.sadb.load();
    let egress = Egress {
        state: &state,
        topology: &topology,
        tables: &tables,
        underlay: &batch,
        sink: &taps,
        now_ms: 5,
        observing: None,
    };
    let overlay = &topology.overlays[0];
    let (mut frame_buf, mut segment, mut scratch) = (vec![0u8; BUFFER_LEN], vec![0u8; BUFFER_LEN], vec![0u8; BUFFER_LEN]);
    for TapFrame { destination, header, frame } in frames {
        match Segmenter::new(header, frame) {
            Ok(mut segments) if header.gso_size > 0 => {
                egress.forward_segments(*destination, overlay, &mut segments, &mut segment, &mut scratch)
            }
            _ => {
                frame_buf[FRAME_OFFSET..FRAME_OFFSET + frame.len()].copy_from_slice(frame);
                egress.forward_to(*destination, overlay, &mut frame_buf, &mut scratch, frame.len());
            }
        }
    }
    batch.flush().unwrap();
    let by_reason = state.drops.report(|id| id.0.to_string(), None).by_reason;
    let mtu_drops = by_reason.get(&DropReason::MtuExceeded).copied().unwrap_or(0);
    Outcome { runs: batch.sent.into_inner(), copied: batch.copied.get(), answered: taps.0.into_inner(), mtu_drops }
}

/// Runs both paths and checks they agree; returns the new path's outcome.
fn both_paths(setup: &Setup, frames: &[TapFrame], path_limit: Option<u32>) -> Outcome {
    let before = transmit(setup, frames, path_limit, false);
    let after = transmit(setup, frames, path_limit, true);
    assert_eq!(before.runs.len(), after.runs.len(), "GSO sends");
    for (index, (old, new)) in before.runs.iter().zip(&after.runs).enumerate() {
        assert_eq!((old.0, old.1.len(), old.2), (new.0, new.1.len(), new.2), "send {index}");
        assert!(old.1 == new.1, "send {index}: the bytes differ");
    }
    assert_eq!((&before.answered, before.mtu_drops), (&after.answered, after.mtu_drops));
    after
}

/// Every underlay family and mode: the ESP packet starts at a different place in each.
fn setups(nodes: usize) -> Vec<Setup> {
    let mut setups = Vec::new();
    for ipv6 in [false, true] {
        for mode in [Mode::Transport, Mode::Tunnel] {
            setups.push(Setup { nodes, ipv6, mode, ..DEFAULT });
        }
    }
    setups
}

const TO_PEER_0: Destination = Destination::Peer(PeerId(0));
const TO_PEER_1: Destination = Destination::Peer(PeerId(1));

#[test]
fn super_frames_of_odd_lengths_and_both_ip_versions_go_out_byte_for_byte_as_before() {
    let mut frames = Vec::new();
    for (payload, mss) in [(1, 1448), (1447, 1448), (1449, 1448), (5001, 1448), (9999, 1001), (7777, 537)] {
        frames.push(super_frame(TO_PEER_0, &FrameSpec::v4(payload), mss));
        frames.push(super_frame(TO_PEER_0, &FrameSpec::v6(payload), mss - 20));
    }
    frames.push(not_tcp(TO_PEER_0, 29));
    frames.push(super_frame(TO_PEER_0, &FrameSpec::v4(3333), 1448));
    for setup in setups(2) {
        let outcome = both_paths(&setup, &frames, None);
        assert_eq!(outcome.copied, 1, "only the frame without GSO is copied into the batch");
        assert!(outcome.runs.iter().any(|(_, bytes, size)| bytes.len() % usize::from(*size) != 0), "short last packets");
    }
}

#[test]
fn runs_end_at_64_segments_and_at_the_64_kib_gso_limit_as_before() {
    // 70 segments of 100 bytes: the run ends at 64. A 64 KiB super-frame in 1448-byte
    // segments: the run ends before 65,527 bytes.
    let frames = [
        super_frame(TO_PEER_0, &FrameSpec::v4(7000), 100),
        super_frame(TO_PEER_0, &FrameSpec::v4(65_483), 1448),
        super_frame(TO_PEER_0, &FrameSpec::v6(65_463), 1428),
    ];
    for setup in setups(2) {
        let outcome = both_paths(&setup, &frames, None);
        let segments = |(_, bytes, size): &Run| bytes.len().div_ceil(usize::from(*size));
        assert_eq!(segments(&outcome.runs[0]), 64);
        assert!(outcome.runs.iter().any(|run| run.1.len() > 60_000 && segments(run) < 64), "{:?}", outcome.runs.len());
        assert_eq!(outcome.copied, 0);
    }
}

#[test]
fn a_peer_change_and_flooded_frames_mid_batch_go_out_as_before() {
    let frames = [
        super_frame(TO_PEER_0, &FrameSpec::v4(20_000), 1448),
        super_frame(TO_PEER_1, &FrameSpec::v4(20_000), 1448),
        super_frame(TO_PEER_0, &FrameSpec::v6(3000), 1000),
        // Flooded segments are copied, one per peer, between sealed ones.
        super_frame(Destination::Flood, &FrameSpec::v4(4000), 1448),
        not_tcp(TO_PEER_1, 60),
        super_frame(TO_PEER_1, &FrameSpec::v4(2896), 1448),
    ];
    for setup in setups(3) {
        let outcome = both_paths(&setup, &frames, None);
        let destinations: Vec<SocketAddr> = outcome.runs.iter().map(|run| run.0).collect();
        assert!(destinations.windows(2).filter(|pair| pair[0] != pair[1]).count() >= 5, "{destinations:?}");
        assert_eq!(outcome.copied, 3 * 2 + 1, "the flooded segments to both peers and the frame without GSO");
    }
}

#[test]
fn segments_too_big_for_the_path_are_answered_and_dropped_as_before() {
    // The path takes 1300-byte overlay packets: the three 1448-byte segments of the second
    // super-frame are dropped and answered (once, the answers are rate-limited), its last
    // (656 bytes) and the 1000-byte ones pass.
    let frames = [
        super_frame(TO_PEER_0, &FrameSpec::v4(1000), 1000),
        super_frame(TO_PEER_0, &FrameSpec::v4(5000), 1448),
        super_frame(TO_PEER_0, &FrameSpec::v4(5000), 1000),
    ];
    for setup in setups(2) {
        let outcome = both_paths(&setup, &frames, Some(1300));
        assert_eq!(outcome.mtu_drops, 3);
        assert_eq!(outcome.answered.len(), 1);
        let segments: usize = outcome.runs.iter().map(|(_, bytes, size)| bytes.len().div_ceil(usize::from(*size))).sum();
        assert_eq!(segments, 1 + 1 + 5);
    }
}
