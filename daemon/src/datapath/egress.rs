//! Overlay frame -> VXLAN -> ESP -> underlay, in place in the worker's buffer.
//!
//! The frame is read from the TAP at `FRAME_OFFSET`, leaving room in front of it for the largest
//! ESP header + IV + inner IP + UDP + VXLAN; the headers for a given peer are written backwards
//! from the frame, so unicast never copies the frame.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;

use mesh_config::control::{Direction, DropReason};
use mesh_config::Mode;

use super::ingress::{FrameSink, FRAME_HEADROOM};
use crate::diag::observe::{Observing, SeenFrame};
use crate::drops::{DropContext, InnerAddresses, SendErrorKind};
use crate::esp;
use crate::offload::Segmenter;
use crate::sadb::manager::SaNotice;
use crate::sadb::{OutboundSa, SaTables};
use crate::state::MeshState;
use crate::topology::{Delivery, Overlay, Path, PeerId, Topology};
use crate::wire::ethernet::{self, EthernetAddress};
use crate::wire::ipv4::{self, Ipv4Header};
use crate::wire::ipv6::{self, Ipv6Header};
use crate::wire::{too_big, udp, vxlan};

/// Room in front of the frame: ESP header and IV, the largest inner IP header, UDP and VXLAN.
pub const FRAME_OFFSET: usize = esp::PLAINTEXT_OFFSET + ipv6::HEADER_LEN + udp::HEADER_LEN + vxlan::HEADER_LEN;
/// Room after the frame: ESP padding, trailer and ICV.
pub const TRAILER_ROOM: usize = 3 + 2 + esp::ICV_LEN;
/// The largest frame a TAP can hand us (64 KiB IP packet plus Ethernet header).
pub const MAX_FRAME_LEN: usize = 65_535 + ethernet::HEADER_LEN;
/// Size of every packet buffer a worker owns.
pub const BUFFER_LEN: usize = FRAME_OFFSET + MAX_FRAME_LEN + TRAILER_ROOM;

/// The largest frame whose inner IP, UDP and VXLAN headers still fit their 16-bit length fields.
const MAX_ENCAPSULATED_FRAME_LEN: usize = 65_535 - ipv6::HEADER_LEN - udp::HEADER_LEN - vxlan::HEADER_LEN;

/// Hop limit of the inner IP header in tunnel mode.
const TUNNEL_HOP_LIMIT: u8 = 64;

/// Where sealed ESP packets go: the worker's underlay socket.
pub trait EspSender {
    /// Sends (or queues) to `peer` (its port matters only for ESP in UDP).
    fn send_esp(&self, packet: &[u8], peer: SocketAddr) -> io::Result<usize>;

    /// Seals straight into the send queue, if the sender queues in a buffer of its own: `fill`
    /// gets a window of that buffer whose bytes from `esp_start` on become an ESP packet (of
    /// `esp_len` bytes, as far as the caller knows), writes and seals it there, and returns its
    /// length or `None` (nothing to send). `None` when the sender has no such queue: the caller
    /// then seals in its own buffer and calls `send_esp`.
    fn seal_into_queue(
        &self,
        _peer: SocketAddr,
        _esp_start: usize,
        _esp_len: usize,
        _fill: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Option<io::Result<usize>> {
        None
    }

    /// Sends what is queued.
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Where an overlay frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The peer its destination MAC was learned behind.
    Peer(PeerId),
    /// Every peer: broadcast, multicast or unknown unicast.
    Flood,
}

/// What one worker needs to send frames during one batch.
pub struct Egress<'a, U: EspSender, S: FrameSink> {
    pub state: &'a MeshState,
    /// Loaded once per batch, like `tables`.
    pub topology: &'a Topology,
    pub tables: &'a SaTables,
    pub underlay: &'a U,
    /// The overlay interfaces, for ICMP answers to frames too large for their peer's path.
    pub sink: &'a S,
    pub now_ms: u64,
    /// A capture, when one runs.
    pub observing: Option<&'a Observing>,
}

impl<U: EspSender, S: FrameSink> Egress<'_, U, S> {
    /// Forwards the frame at `buf[FRAME_OFFSET..][..frame_len]`, read from `overlay`'s TAP:
    /// to the peer that owns the destination MAC, or to every peer on the overlay (head-end replication) for
    /// broadcast, multicast and unknown unicast. `scratch` holds the copies for replication.
    pub fn forward(&self, overlay: &Overlay, buf: &mut [u8], scratch: &mut [u8], frame_len: usize) {
        if let Some(destination) = self.destination(overlay, &buf[FRAME_OFFSET..FRAME_OFFSET + frame_len]) {
            self.forward_to(destination, overlay, buf, scratch, frame_len);
        }
    }

    /// Where `frame` goes, from its destination MAC; `None` (and the drop recorded) when it is no
    /// Ethernet frame. The segments of a TSO super-frame share its Ethernet header, so the
    /// datapath asks once per super-frame.
    pub fn destination(&self, overlay: &Overlay, frame: &[u8]) -> Option<Destination> {
        let Ok(frame) = ethernet::Frame::new_checked(frame) else {
            self.drop(DropReason::Malformed, None, Some(overlay.vni), &[]);
            return None;
        };
        let destination: EthernetAddress = frame.destination();
        // An entry behind a peer that a reload removed (re-learned by a batch still running on the
        // old topology) counts as unknown: flooded, not dropped.
        let known = destination
            .is_unicast()
            .then(|| self.topology.fdb(overlay.id).lookup(destination))
            .flatten()
            .filter(|peer| self.topology.is_member(*peer));
        Some(known.map_or(Destination::Flood, Destination::Peer))
    }

    /// Forwards the frame at `buf[FRAME_OFFSET..][..frame_len]` to `destination`.
    pub fn forward_to(
        &self,
        destination: Destination,
        overlay: &Overlay,
        buf: &mut [u8],
        scratch: &mut [u8],
        frame_len: usize,
    ) {
        if let Destination::Peer(peer) = destination {
            self.send(overlay, peer, buf, frame_len, Delivery::Unicast);
            return;
        }
        let Some((last, others)) = overlay.members.split_last() else {
            self.drop(DropReason::NoPeer, None, Some(overlay.vni), &buf[FRAME_OFFSET..FRAME_OFFSET + frame_len]);
            return;
        };
        for peer in others {
            scratch[FRAME_OFFSET..FRAME_OFFSET + frame_len]
                .copy_from_slice(&buf[FRAME_OFFSET..FRAME_OFFSET + frame_len]);
            self.send(overlay, *peer, scratch, frame_len, Delivery::Flooded);
        }
        self.send(overlay, *last, buf, frame_len, Delivery::Flooded);
    }

    /// Sends the segments of a TSO super-frame to `destination`. To one peer over a sender with a
    /// queue of its own (ESP in UDP), each segment is written, given its headers and sealed in
    /// that queue; otherwise it is written into `segment` and sent as a frame read from the TAP.
    pub fn forward_segments(
        &self,
        destination: Destination,
        overlay: &Overlay,
        segments: &mut Segmenter<'_>,
        segment: &mut [u8],
        scratch: &mut [u8],
    ) {
        while let Some(frame_len) = segments.next_len() {
            if let Destination::Peer(peer) = destination {
                if self.seal_segment_into_queue(overlay, peer, segments, frame_len) {
                    continue;
                }
            }
            if let Some(len) = segments.write_next(&mut segment[FRAME_OFFSET..]) {
                self.forward_to(destination, overlay, segment, scratch, len);
            }
        }
    }

    /// Writes the next segment (`frame_len` bytes) of `segments` into the underlay's queue, seals
    /// it there for `peer_id` and counts it; false (nothing written) when the underlay has no
    /// such queue or the peer no outbound SA.
    fn seal_segment_into_queue(
        &self,
        overlay: &Overlay,
        peer_id: PeerId,
        segments: &mut Segmenter<'_>,
        frame_len: usize,
    ) -> bool {
        let Some(sa) = self.tables.outbound(peer_id) else { return false };
        let esp_start = esp_start(sa.params.mode, self.topology.peer(peer_id).path);
        let esp_len = esp::sealed_len(FRAME_OFFSET - esp_start - esp::PLAINTEXT_OFFSET + frame_len);
        let mut sealed = None;
        let mut fill = |window: &mut [u8]| {
            let len = segments.write_next(&mut window[FRAME_OFFSET..])?;
            sealed = self.seal(overlay, peer_id, Some(&**sa), window, len);
            sealed.as_ref().map(|sealed| sealed.esp.len())
        };
        let Some(result) = self.underlay.seal_into_queue(sa.params.remote, esp_start, esp_len, &mut fill) else {
            return false;
        };
        if let Some(sealed) = sealed {
            self.count_sent(sealed, result, Delivery::Unicast);
        }
        true
    }

    fn send(&self, overlay: &Overlay, peer_id: PeerId, buf: &mut [u8], frame_len: usize, delivery: Delivery) {
        let held = self.tables.outbound(peer_id);
        if let Some(sealed) = self.seal(overlay, peer_id, held.as_deref().map(|sa| &**sa), buf, frame_len) {
            let result = self.underlay.send_esp(&buf[sealed.esp.clone()], sealed.sa.params.remote);
            self.count_sent(sealed, result, delivery);
        }
    }

    /// Whether the frame at `buf[FRAME_OFFSET..][..frame_len]` is too large for the path to
    /// `peer_id`; if so, the drop is recorded and the sender answered.
    fn too_big(&self, overlay: &Overlay, peer_id: PeerId, buf: &[u8], frame_len: usize) -> bool {
        let path = &self.topology.peer(peer_id).path_mtu;
        let frame = &buf[FRAME_OFFSET..FRAME_OFFSET + frame_len];
        // A TSO super-frame arrives here one segment at a time, so this checks the segment size.
        let Some(limit) = path.overlay_limit().filter(|limit| frame_len - ethernet::HEADER_LEN > *limit as usize) else {
            return false;
        };
        self.drop(DropReason::MtuExceeded, Some(peer_id), Some(overlay.vni), frame);
        if path.may_answer_too_big(self.now_ms) {
            self.answer_too_big(overlay, frame, limit);
        }
        true
    }

    /// Checks the frame at `buf[FRAME_OFFSET..][..frame_len]` for `peer_id`, writes its headers in
    /// front of it and seals it with `sa`, the peer's outbound SA; `None` when it was dropped
    /// (and the drop recorded).
    fn seal<'s>(
        &self,
        overlay: &Overlay,
        peer_id: PeerId,
        sa: Option<&'s OutboundSa>,
        buf: &mut [u8],
        frame_len: usize,
    ) -> Option<Sealed<'s>> {
        if frame_len > MAX_ENCAPSULATED_FRAME_LEN {
            // Only an overlay MTU near 64 KiB without offloads gets here; the underlay could not
            // carry such a packet anyway.
            self.drop(DropReason::FrameTooLarge, Some(peer_id), Some(overlay.vni), &buf[FRAME_OFFSET..]);
            return None;
        }
        if self.too_big(overlay, peer_id, buf, frame_len) {
            return None;
        }
        let peer = self.topology.peer(peer_id);
        let frame = &buf[FRAME_OFFSET..FRAME_OFFSET + frame_len];
        let Some(sa) = sa else {
            self.drop(DropReason::NoOutboundSa, Some(peer_id), Some(overlay.vni), frame);
            return None;
        };
        let Some(sequence) = sa.next_sequence() else {
            sa.counters.count_drop(DropReason::SequenceExhausted);
            self.drop(DropReason::SequenceExhausted, Some(peer_id), Some(overlay.vni), frame);
            return None;
        };
        if let Some(observing) = self.observing {
            let (overlay, spi, vni) = (overlay.id, sa.params.spi, overlay.vni);
            let seen = SeenFrame { direction: Direction::Out, overlay, peer: peer_id, spi, vni, frame };
            observing.frame(seen, self.now_ms);
        }
        if sa.running_out(sequence) {
            self.state.sa_notices.notify(SaNotice::SequenceRunningOut { peer: peer_id, spi: sa.params.spi });
        }
        let (esp_start, next_header) = self.write_inner_headers(sa, peer.path, overlay.vni, buf, frame_len);
        let plaintext_len = FRAME_OFFSET - esp_start - esp::PLAINTEXT_OFFSET + frame_len;
        let sealed =
            sa.sealer.seal(sa.params.spi, sequence, sa.params.esn, next_header, &mut buf[esp_start..], plaintext_len);
        let Ok(esp_len) = sealed else {
            // Only a buffer too small for the trailer fails, which BUFFER_LEN rules out.
            sa.counters.count_drop(DropReason::FrameTooLarge);
            self.drop(DropReason::FrameTooLarge, Some(peer_id), Some(overlay.vni), &[]);
            return None;
        };
        Some(Sealed { sa, peer_id, vni: overlay.vni, frame_len, esp: esp_start..esp_start + esp_len })
    }

    /// Counts a sealed packet as sent, or its send as failed.
    fn count_sent(&self, sealed: Sealed<'_>, result: io::Result<usize>, delivery: Delivery) {
        let Sealed { sa, peer_id, vni, frame_len, .. } = sealed;
        let peer = self.topology.peer(peer_id);
        match result {
            Ok(_) => {
                sa.counters.count(frame_len, self.now_ms);
                peer.counters.count_tx(frame_len, delivery);
            }
            Err(error) => {
                let reason = if error.raw_os_error() == Some(libc::EMSGSIZE) {
                    DropReason::FrameTooLarge
                } else {
                    DropReason::SendFailed
                };
                sa.counters.count_drop(reason);
                if reason == DropReason::SendFailed {
                    peer.counters.send_errors.count(SendErrorKind::of(&error));
                }
                // The frame is sealed by now: no inner addresses.
                self.drop(reason, Some(peer_id), Some(vni), &[]);
                log_send_error(&error);
            }
        }
    }

    /// Tells the sender of `frame` through its overlay interface that only `limit` bytes fit.
    fn answer_too_big(&self, overlay: &Overlay, frame: &[u8], limit: u32) {
        let mut reply = [0u8; FRAME_HEADROOM + too_big::MAX_REPLY_LEN];
        let mtu = u16::try_from(limit).unwrap_or(u16::MAX);
        if let Some(len) = too_big::write_reply(frame, mtu, &mut reply[FRAME_HEADROOM..]) {
            if self.sink.deliver(overlay.id, &mut reply[..FRAME_HEADROOM + len]).is_err() {
                self.drop(DropReason::TapWriteFailed, None, Some(overlay.vni), frame);
            }
        }
    }

    /// Writes [inner IP] | UDP | VXLAN in front of the frame for `sa`'s mode; returns where the ESP
    /// packet starts and its next header value.
    fn write_inner_headers(
        &self,
        sa: &OutboundSa,
        path: Path,
        vni: u32,
        buf: &mut [u8],
        frame_len: usize,
    ) -> (usize, u8) {
        let port = self.topology.vxlan_port;
        let vxlan_start = FRAME_OFFSET - vxlan::HEADER_LEN;
        let udp_start = vxlan_start - udp::HEADER_LEN;
        let udp_len = udp::HEADER_LEN + vxlan::HEADER_LEN + frame_len;
        vxlan::emit(&mut buf[vxlan_start..FRAME_OFFSET], vni);
        udp::UdpHeader { source_port: port, destination_port: port, payload_len: udp_len - udp::HEADER_LEN }
            .emit(&mut buf[udp_start..vxlan_start]);
        // IPv4 allows a zero UDP checksum and ESP's ICV already protects the datagram; IPv6 needs one.
        if let Path::V6 { local, peer } = path {
            udp::Packet::new_unchecked(&mut buf[udp_start..udp_start + udp_len]).fill_checksum_ipv6(local, peer);
        }
        let esp_start = esp_start(sa.params.mode, path);
        let ip_start = esp_start + esp::PLAINTEXT_OFFSET;
        let next_header = match (sa.params.mode, path) {
            (Mode::Transport, _) => ipv4::PROTOCOL_UDP,
            (Mode::Tunnel, Path::V4 { local, peer }) => {
                Ipv4Header {
                    source: local,
                    destination: peer,
                    protocol: ipv4::PROTOCOL_UDP,
                    payload_len: udp_len,
                    hop_limit: TUNNEL_HOP_LIMIT,
                    dont_fragment: true,
                    identification: 0,
                }
                .emit(&mut buf[ip_start..udp_start]);
                ipv4::PROTOCOL_IPV4_IN_IP
            }
            (Mode::Tunnel, Path::V6 { local, peer }) => {
                Ipv6Header {
                    source: local,
                    destination: peer,
                    next_header: ipv4::PROTOCOL_UDP,
                    payload_len: udp_len,
                    hop_limit: TUNNEL_HOP_LIMIT,
                }
                .emit(&mut buf[ip_start..udp_start]);
                ipv4::PROTOCOL_IPV6_IN_IP
            }
        };
        (esp_start, next_header)
    }

    /// Records a drop; `frame` is the frame while it is still in the clear, else empty.
    fn drop(&self, reason: DropReason, peer: Option<PeerId>, vni: Option<u32>, frame: &[u8]) {
        let context = DropContext { peer, vni, ..DropContext::default() };
        self.state.drops.record_with_inner(reason, context, || InnerAddresses::of_frame(frame));
    }
}

/// A packet sealed for `sa` at `esp` in the buffer, not yet counted.
struct Sealed<'s> {
    sa: &'s OutboundSa,
    peer_id: PeerId,
    vni: u32,
    frame_len: usize,
    esp: Range<usize>,
}

/// Where, in a buffer with the frame at `FRAME_OFFSET`, the ESP packet for an SA in `mode` on
/// `path` starts: before [inner IP] | UDP | VXLAN.
fn esp_start(mode: Mode, path: Path) -> usize {
    FRAME_OFFSET - encapsulation_len(mode, path) - esp::PLAINTEXT_OFFSET
}

/// Bytes in front of the overlay frame in an ESP plaintext of a pair: UDP and VXLAN, behind the
/// pair's IP header (without options) in tunnel mode.
pub(super) fn encapsulation_len(mode: Mode, path: Path) -> usize {
    let inner_ip = match (mode, path) {
        (Mode::Transport, _) => 0,
        (Mode::Tunnel, Path::V4 { .. }) => ipv4::HEADER_LEN,
        (Mode::Tunnel, Path::V6 { .. }) => ipv6::HEADER_LEN,
    };
    inner_ip + udp::HEADER_LEN + vxlan::HEADER_LEN
}

fn log_send_error(error: &io::Error) {
    tracing::debug!(%error, "sending ESP failed");
}
