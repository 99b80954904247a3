//! Underlay -> ESP open with anti-replay -> VXLAN -> overlay TAP, in place in the worker's buffer.

use std::cell::Cell;
use std::net::SocketAddr;
use std::ops::Range;

use mesh_config::control::{Direction, DropReason};
use mesh_config::Mode;

use crate::diag::observe::{Observing, SeenFrame};
use crate::drops::{DropContext, InnerAddresses};
use crate::esp::{OpenError, ReplayError, PLAINTEXT_OFFSET};
use crate::pmtu::InbandMessage;
use crate::sadb::manager::SaNotice;
use crate::sadb::{InboundSa, SaTables};
use crate::state::MeshState;
use crate::topology::{notice_due, OverlayId, Path, PeerId, Topology};
use crate::wire::ethernet::{self, EthernetAddress};
use crate::wire::inband::{self, InbandHeader};
use crate::wire::{ipv4, ipv6, udp, vxlan};

/// Bytes in front of a delivered frame that the sink may overwrite (the TAP's virtio-net header
/// goes there; after decryption they held the VXLAN and UDP headers).
pub const FRAME_HEADROOM: usize = crate::offload::virtio_net::HEADER_LEN;

/// Where a decrypted frame goes: the overlay's TAP queue owned by this worker.
pub trait FrameSink {
    /// `with_headroom` is `FRAME_HEADROOM` scratch bytes followed by the Ethernet frame.
    fn deliver(&self, overlay: OverlayId, with_headroom: &mut [u8]) -> std::io::Result<()>;
}

/// What one worker needs to receive packets during one batch.
pub struct Ingress<'a, S: FrameSink> {
    state: &'a MeshState,
    /// Loaded once per batch, like `tables`.
    topology: &'a Topology,
    tables: &'a SaTables,
    sink: &'a S,
    now_ms: u64,
    observing: Option<&'a Observing>,
    /// The source MAC this batch last learned, with its overlay and peer: a batch is mostly one
    /// flow's segments, and learning the same entry again at the same time changes nothing.
    last_learned: Cell<Option<(OverlayId, EthernetAddress, PeerId)>>,
}

/// Why a packet did not make it, with what was known when it was dropped.
struct Dropped {
    reason: DropReason,
    sequence: Option<u64>,
    vni: Option<u32>,
    inner: Option<InnerAddresses>,
}

impl From<DropReason> for Dropped {
    fn from(reason: DropReason) -> Self {
        Dropped { reason, sequence: None, vni: None, inner: None }
    }
}

impl<'a, S: FrameSink> Ingress<'a, S> {
    pub fn new(
        state: &'a MeshState,
        topology: &'a Topology,
        tables: &'a SaTables,
        sink: &'a S,
        now_ms: u64,
        observing: Option<&'a Observing>,
    ) -> Self {
        Ingress { state, topology, tables, sink, now_ms, observing, last_learned: Cell::new(None) }
    }

    /// Handles one ESP packet (SPI to ICV) that arrived from `source`.
    pub fn receive(&self, packet: &mut [u8], source: SocketAddr) {
        // Only drops without an SA need the peer looked up by address; not the hot path.
        let peer_by_source = || self.topology.peer_by_address(source.ip());
        let context = |peer: Option<PeerId>, spi: Option<u32>| DropContext {
            peer,
            spi,
            outer_source: Some(source),
            ..DropContext::default()
        };
        let Ok(header) = crate::wire::esp::Packet::new_checked(&packet[..]) else {
            self.state.drops.record(DropReason::Malformed, context(peer_by_source(), None));
            return;
        };
        let spi = header.spi();
        let sequence_low = header.sequence_number();
        let Some(sa) = self.tables.inbound(spi) else {
            let peer = peer_by_source();
            self.state.drops.record(DropReason::UnknownSpi, context(peer, Some(spi)));
            let gate = |peer: PeerId| &self.topology.peer(peer).counters.unknown_spi_noticed_ms;
            if let Some(peer) = peer.filter(|peer| notice_due(gate(*peer), self.now_ms)) {
                self.state.sa_notices.notify(SaNotice::UnknownSpi { peer });
            }
            return;
        };
        let peer = sa.params.peer;
        if let Err(dropped) = self.open_and_deliver(&sa, packet, source, sequence_low) {
            sa.counters.count_drop(dropped.reason);
            let mut context = context(Some(peer), Some(spi));
            context.sequence = dropped.sequence;
            context.vni = dropped.vni;
            context.inner = dropped.inner;
            self.state.drops.record(dropped.reason, context);
        }
    }

    fn open_and_deliver(
        &self,
        sa: &InboundSa,
        packet: &mut [u8],
        source: SocketAddr,
        sequence_low: u32,
    ) -> Result<(), Dropped> {
        let peer = self.topology.peer(sa.params.peer);
        // A NAT'd peer whose mapping changed: followed once the packet proved authentic and new.
        let follow = sa.params.follows_peer() && sa.params.remote != source;
        if sa.params.remote.ip() != source.ip() && !follow {
            return Err(DropReason::WrongPeer.into());
        }
        let esn = sa.params.esn;
        let sequence = {
            let replay = sa.replay();
            let sequence = replay.infer_sequence(sequence_low, esn);
            replay.check(sequence).map_err(|error| Dropped {
                reason: replay_reason(error),
                sequence: Some(sequence),
                vni: None,
                inner: None,
            })?;
            sequence
        };
        let with_sequence = |reason: DropReason| Dropped { reason, sequence: Some(sequence), vni: None, inner: None };
        let opened = sa.opener.open(sequence, esn, packet).map_err(|error| with_sequence(open_reason(error)))?;
        // Two workers may have raced on the same number; only the first to get here wins.
        sa.replay().accept(sequence).map_err(|error| with_sequence(replay_reason(error)))?;
        if follow && notice_due(&peer.counters.moved_noticed_ms, self.now_ms) {
            self.state.sa_notices.notify(SaNotice::PeerMoved { peer: peer.id, spi: sa.params.spi, remote: source });
        }
        if opened.next_header == inband::NEXT_HEADER {
            return self.inband(peer.id, opened.payload).map_err(with_sequence);
        }

        // The payload starts at PLAINTEXT_OFFSET; from here on, positions in `packet`.
        let udp_range =
            inner_udp(sa.params.mode, peer.path, opened.next_header, opened.payload).map_err(with_sequence)?;
        let udp_start = PLAINTEXT_OFFSET + udp_range.start;
        let (vni, frame_len) = {
            let udp = udp::Packet::new_checked(&packet[udp_start..PLAINTEXT_OFFSET + udp_range.end])
                .map_err(|_| with_sequence(DropReason::Malformed))?;
            if udp.destination_port() != self.topology.vxlan_port {
                return Err(with_sequence(DropReason::UnexpectedPayload));
            }
            let vxlan = vxlan::Packet::new_checked(udp.payload()).map_err(|_| with_sequence(DropReason::Malformed))?;
            (vxlan.vni(), vxlan.payload().len())
        };
        let frame_start = udp_start + udp::HEADER_LEN + vxlan::HEADER_LEN;
        let frame_range = frame_start..frame_start + frame_len;
        // Inner addresses are read only once the packet is known to be dropped.
        let in_frame = |reason: DropReason, packet: &[u8]| Dropped {
            reason,
            sequence: Some(sequence),
            vni: Some(vni),
            inner: InnerAddresses::of_frame(&packet[frame_range.clone()]),
        };
        let overlay = self.topology.overlay_by_vni(vni).ok_or_else(|| in_frame(DropReason::UnknownVni, packet))?;
        let frame = &packet[frame_range.clone()];
        let ethernet = ethernet::Frame::new_checked(frame).map_err(|_| in_frame(DropReason::Malformed, packet))?;
        let learned = Some((overlay, ethernet.source(), peer.id));
        if self.last_learned.get() != learned {
            // A refused source MAC must not reach the local bridge either (it would learn it).
            self.topology
                .fdb(overlay)
                .learn(ethernet.source(), peer.id, self.now_ms)
                .map_err(|refused| in_frame(refused.drop_reason(), packet))?;
            self.last_learned.set(learned);
        }
        if let Some(observing) = self.observing {
            let (peer, spi) = (peer.id, sa.params.spi);
            observing.frame(SeenFrame { direction: Direction::In, overlay, peer, spi, vni, frame }, self.now_ms);
        }
        // The VXLAN and UDP headers in front of the frame are no longer needed.
        let with_headroom = &mut packet[frame_start - FRAME_HEADROOM..frame_range.end];
        if self.sink.deliver(overlay, with_headroom).is_err() {
            return Err(in_frame(DropReason::TapWriteFailed, packet));
        }
        sa.counters.count(frame_len, self.now_ms);
        peer.counters.count_rx(frame_len, self.now_ms);
        Ok(())
    }
}

impl<S: FrameSink> Ingress<'_, S> {
    /// An in-band control message from a meshd peer goes to the path-MTU driver.
    fn inband(&self, peer: PeerId, payload: &[u8]) -> Result<(), DropReason> {
        let packet = inband::Packet::new_checked(payload).map_err(|_| DropReason::Malformed)?;
        let message = InbandMessage { peer, header: InbandHeader::parse(&packet), plaintext_len: payload.len() };
        self.state.pmtu.forward(message).then_some(()).ok_or(DropReason::InbandBacklog)
    }
}

/// Where in a decrypted ESP payload the UDP datagram is: all of it in transport mode, behind an
/// IP header between the pair's own addresses in tunnel mode.
fn inner_udp(mode: Mode, path: Path, next_header: u8, payload: &[u8]) -> Result<Range<usize>, DropReason> {
    match (mode, path) {
        (Mode::Transport, _) if next_header == ipv4::PROTOCOL_UDP => Ok(0..payload.len()),
        (Mode::Tunnel, Path::V4 { local, peer }) if next_header == ipv4::PROTOCOL_IPV4_IN_IP => {
            let packet = ipv4::Packet::new_checked(payload).map_err(|_| DropReason::Malformed)?;
            let ours = packet.source_address() == peer
                && packet.destination_address() == local
                && packet.protocol() == ipv4::PROTOCOL_UDP
                && !packet.is_fragment();
            // new_checked verified both lengths against the buffer.
            let udp = packet.header_length()..usize::from(packet.total_length());
            ours.then_some(udp).ok_or(DropReason::UnexpectedPayload)
        }
        (Mode::Tunnel, Path::V6 { local, peer }) if next_header == ipv4::PROTOCOL_IPV6_IN_IP => {
            let packet = ipv6::Packet::new_checked(payload).map_err(|_| DropReason::Malformed)?;
            let ours = packet.source_address() == peer
                && packet.destination_address() == local
                && packet.next_header() == ipv4::PROTOCOL_UDP;
            let udp = ipv6::HEADER_LEN..ipv6::HEADER_LEN + usize::from(packet.payload_length());
            ours.then_some(udp).ok_or(DropReason::UnexpectedPayload)
        }
        _ => Err(DropReason::UnexpectedPayload),
    }
}

fn replay_reason(error: ReplayError) -> DropReason {
    match error {
        ReplayError::Replayed | ReplayError::Zero => DropReason::Replay,
        ReplayError::TooOld => DropReason::TooOld,
    }
}

fn open_reason(error: OpenError) -> DropReason {
    match error {
        OpenError::Authentication => DropReason::Authentication,
        OpenError::BadPadding => DropReason::BadPadding,
        OpenError::Truncated | OpenError::SequenceMismatch => DropReason::Malformed,
    }
}
