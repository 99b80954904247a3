//! Decrypting a segment straight into its coalescing slot writes to the TAP exactly what opening
//! it in place and copying it into the coalescer did: the same ESP packets, received in the same
//! batches by two fresh nodes, one through each path, give the same TAP writes (virtio-net
//! header and frame), byte for byte, and the same drops.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use mesh_config::control::DropReason;
use mesh_config::{Cipher, Encap, Mode};

use super::testkit::{self, CopyingSink, Setup, TapRecord, DEFAULT};
use super::{FrameSink, TapSink};
use crate::offload::testutil::{build, FrameSpec};
use crate::wire::tcp::flags;

/// What one receive path did: the TAP writes, the drops by reason, and how many packets were
/// left as they came (opened elsewhere: in their slot, or not at all).
#[derive(Debug, PartialEq)]
struct Outcome {
    written: Vec<Vec<u8>>,
    drops: BTreeMap<DropReason, u64>,
    untouched: usize,
}

/// Every underlay family, encapsulation, mode and cipher: the frame starts at a different place
/// in the plaintext in each mode, and the AEAD differs.
fn setups() -> Vec<Setup> {
    let mut setups = Vec::new();
    for ipv6 in [false, true] {
        for encap in [Encap::Udp, Encap::Esp] {
            for mode in [Mode::Transport, Mode::Tunnel] {
                for cipher in [Cipher::Aes256Gcm16, Cipher::Chacha20Poly1305] {
                    setups.push(Setup { ipv6, encap, mode, cipher, ..DEFAULT });
                }
            }
        }
    }
    setups
}

/// The ESP packets node 0 of `setup` sends to node 1 for `frames`, in order.
fn seal(setup: &Setup, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let sender = testkit::node(setup, 0);
    frames
        .iter()
        .map(|frame| {
            let mut sent = testkit::send(&sender, frame);
            assert_eq!(sent.len(), 1, "one packet per frame");
            sent.remove(0).0
        })
        .collect()
}

fn receive_batch<S: FrameSink>(setup: &Setup, state: &crate::state::MeshState, sink: &S, batch: &[Vec<u8>]) -> usize {
    testkit::receive_batch_into(state, sink, SocketAddr::new(testkit::address(setup, 0), 4500), batch)
}

/// Node 1 of `setup` receives `batches`, a flush after each, with offloads on; `landing`: the
/// new path, else every packet opened in place and copied into the coalescer.
fn receive(setup: &Setup, batches: &[Vec<Vec<u8>>], landing: bool) -> Outcome {
    let state = testkit::node(setup, 1);
    let taps = [TapRecord { keep: true, ..TapRecord::default() }];
    let sink = TapSink::new(&taps, true);
    let mut untouched = 0;
    for batch in batches {
        untouched += match landing {
            true => receive_batch(setup, &state, &sink, batch),
            false => receive_batch(setup, &state, &CopyingSink(&sink), batch),
        };
        assert_eq!(sink.flush(), 0, "no write failed");
    }
    let drops = state.drops.report(|id| id.0.to_string(), None).by_reason.into_iter().collect();
    let [tap] = taps;
    Outcome { written: tap.written.into_inner(), drops, untouched }
}

/// Runs both paths and checks they agree; returns the new path's outcome.
fn both_paths(setup: &Setup, batches: &[Vec<Vec<u8>>]) -> Outcome {
    let before = receive(setup, batches, false);
    let after = receive(setup, batches, true);
    assert_eq!(before.written.len(), after.written.len(), "{setup:?}: TAP writes");
    for (index, (old, new)) in before.written.iter().zip(&after.written).enumerate() {
        assert!(old == new, "{setup:?}: TAP write {index} differs");
    }
    assert_eq!(before.drops, after.drops, "{setup:?}");
    after
}

/// The segments of `spec` cut at `mss`, as a sender's TSO makes them.
fn segments(spec: &FrameSpec, mss: usize) -> Vec<Vec<u8>> {
    (0..spec.payload_len.div_ceil(mss))
        .map(|i| {
            let len = mss.min(spec.payload_len - i * mss);
            build(&FrameSpec { identification: spec.identification.wrapping_add(i as u16), ..spec.slice(i * mss, len) })
        })
        .collect()
}

fn not_tcp(len: usize) -> Vec<u8> {
    let mut frame = testkit::frame(testkit::MAC_B, testkit::MAC_A, len);
    frame[12..14].copy_from_slice(&[0x08, 0x06]);
    frame
}

/// Packets in batches of `size`: a flush after each.
fn batches(packets: Vec<Vec<u8>>, size: usize) -> Vec<Vec<Vec<u8>>> {
    packets.chunks(size).map(<[Vec<u8>]>::to_vec).collect()
}

#[test]
fn runs_of_odd_lengths_both_ip_versions_and_non_tcp_frames_reach_the_tap_as_before() {
    let v4 = FrameSpec::v4(9001);
    let v6 = FrameSpec { source_port: 2222, ..FrameSpec::v6(5003) };
    let mut frames = segments(&v4, 1448);
    frames.extend(segments(&v6, 1001));
    frames.insert(4, not_tcp(29));
    frames.push(not_tcp(1400));
    frames.extend(segments(&FrameSpec { source_port: 3333, ..FrameSpec::v4(1) }, 1448));
    for setup in setups() {
        let packets = seal(&setup, &frames);
        let whole = both_paths(&setup, &batches(packets.clone(), 64));
        // Each run's segments after its first land in their slot (7 and 5 segments), the
        // short last ones too; a frame that passes between them does not end the run.
        assert_eq!(whole.untouched, (7 - 1) + (5 - 1), "{setup:?}");
        assert_eq!(receive(&setup, &batches(packets.clone(), 64), false).untouched, 0, "in place");
        assert!(whole.written.len() >= 4, "{setup:?}");
        // Flushes at each batch's end: a run is cut there and starts again by a copy.
        let cut = both_paths(&setup, &batches(packets, 5));
        assert!(cut.untouched < whole.untouched && cut.untouched > 0, "{setup:?}");
        assert!(cut.drops.is_empty(), "{setup:?}");
    }
}

#[test]
fn out_of_order_and_non_mergeable_segments_reach_the_tap_as_before() {
    let spec = FrameSpec::v4(12_000);
    let mut frames = segments(&spec, 1000);
    frames.swap(2, 3);
    frames[6] = build(&FrameSpec { flags: flags::ACK | flags::PSH, identification: 0x4248, ..spec.slice(6000, 1000) });
    frames[9] = build(&FrameSpec { window: 7, identification: 0x424b, ..spec.slice(9000, 1000) });
    frames.insert(5, build(&FrameSpec { flags: flags::ACK, ..spec.slice(0, 0) })); // pure ACK
    frames.insert(8, build(&FrameSpec { source_port: 9, ..spec.slice(0, 1000) })); // another flow
    frames.push(build(&FrameSpec { tcp_options: Vec::new(), ..spec.slice(12_000, 500) })); // other headers
    for setup in setups() {
        let outcome = both_paths(&setup, &batches(seal(&setup, &frames), 64));
        assert!(outcome.untouched >= 4, "{setup:?}: {}", outcome.untouched);
        assert!(outcome.drops.is_empty(), "{setup:?}");
    }
}

#[test]
fn a_forged_or_replayed_packet_mid_run_is_dropped_as_before_and_leaves_nothing() {
    let spec = FrameSpec::v4(8 * 1448);
    let mut frames = segments(&spec, 1448);
    // The forged packet's plaintext, were it delivered, would show: its payload is marked.
    let marked = 4;
    let payload_start = frames[marked].len() - 1448;
    frames[marked][payload_start..].fill(0xA5);
    for setup in setups() {
        let mut packets = seal(&setup, &frames);
        // One ciphertext bit flipped: a CTR-mode AEAD would decrypt it to almost the marked
        // plaintext, but the tag does not verify.
        let at = packets[marked].len() - 100;
        packets[marked][at] ^= 0x10;
        // A replay of an accepted packet, in the middle of the run.
        packets.insert(marked + 2, packets[marked - 1].clone());
        let outcome = both_paths(&setup, &batches(packets, 64));
        let drops: Vec<(DropReason, u64)> = outcome.drops.into_iter().collect();
        assert_eq!(drops, [(DropReason::Replay, 1), (DropReason::Authentication, 1)], "{setup:?}");
        for written in &outcome.written {
            assert!(!written.windows(64).any(|window| window.iter().all(|&b| b == 0xA5)), "{setup:?}");
        }
        // Four segments before the forged one and three after it: two runs.
        assert_eq!(outcome.written.len(), 2, "{setup:?}");
    }
}
