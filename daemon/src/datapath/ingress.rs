//! Underlay -> ESP open with anti-replay -> VXLAN -> overlay TAP: in place in the worker's
//! buffer, or, for a TCP segment that continues the super-frame the previous one joined, straight
//! into that super-frame's coalescing slot ([`FrameSink::landing`]).

use std::cell::{Cell, RefCell, RefMut};
use std::io;
use std::net::SocketAddr;
use std::ops::Range;

use mesh_config::control::{Direction, DropReason};
use mesh_config::Mode;

use crate::diag::observe::{Observing, SeenFrame};
use crate::drops::{DropContext, InnerAddresses};
use crate::esp::{plaintext_len, OpenError, ReplayError, PLAINTEXT_OFFSET};
use crate::offload::{CoalesceConfig, Coalescer, Landing};
use crate::tap::TapQueue;
use crate::pmtu::InbandMessage;
use crate::sadb::early::Hold;
use crate::sadb::manager::SaNotice;
use crate::sadb::{InboundSa, SaTables};
use crate::state::MeshState;
use crate::topology::{notice_due, OverlayId, Path, Peer, PeerId, Topology};
use super::egress::encapsulation_len;
use super::tally::Tally;
use crate::wire::ethernet::{self, EthernetAddress};
use crate::wire::inband::{self, InbandHeader};
use crate::wire::{ipv4, ipv6, udp, vxlan};

/// Bytes in front of a delivered frame that the sink may overwrite (the TAP's virtio-net header
/// goes there; after decryption they held the VXLAN and UDP headers).
pub const FRAME_HEADROOM: usize = crate::offload::virtio_net::HEADER_LEN;

/// Where a decrypted frame goes: the overlay's TAP queue owned by this worker.
pub trait FrameSink {
    /// What [`FrameSink::landing`] hands out.
    type Landing<'s>: FrameLanding
    where
        Self: 's;

    /// `with_headroom` is `FRAME_HEADROOM` scratch bytes followed by the Ethernet frame.
    fn deliver(&self, overlay: OverlayId, with_headroom: &mut [u8]) -> io::Result<()>;

    /// Room to decrypt an ESP plaintext of `len` bytes (payload and trailer), whose frame
    /// starts after `encap_len` bytes, where it continues the super-frame the last delivered
    /// frame joined; None: open in place and [`FrameSink::deliver`].
    fn landing(&self, encap_len: usize, len: usize) -> Option<Self::Landing<'_>>;
}

/// Room for one ESP plaintext at the end of a held super-frame; see [`Landing`]. Dropped
/// without a join, it leaves nothing of the plaintext behind.
pub trait FrameLanding {
    /// Where the plaintext is to be decrypted.
    fn plaintext(&mut self) -> &mut [u8];
    /// Adds the frame at `frame` in the (authenticated) plaintext, of `overlay`, to the
    /// super-frame; false, nothing delivered and the plaintext untouched, if it does not
    /// continue it there.
    fn join(&mut self, overlay: OverlayId, frame: Range<usize>) -> bool;
}

/// The landing of a sink that never has one.
pub enum NoLanding {}

impl FrameLanding for NoLanding {
    fn plaintext(&mut self) -> &mut [u8] {
        match *self {}
    }

    fn join(&mut self, _: OverlayId, _: Range<usize>) -> bool {
        match *self {}
    }
}

/// One overlay TAP queue, as the sink writes to it.
pub trait TapWrite {
    fn write_frame(&self, bytes: &[u8]) -> io::Result<()>;
}

impl TapWrite for TapQueue {
    fn write_frame(&self, bytes: &[u8]) -> io::Result<()> {
        self.send(bytes).map(|_| ())
    }
}

/// How received segments are merged. Their TCP checksums are not verified: every segment was
/// just authenticated by the ESP AEAD, which catches any change on the way far better than a
/// 16-bit sum, so a second pass over the payload would only find a sender's own bug (Linux
/// WireGuard marks decrypted packets CHECKSUM_UNNECESSARY for the same reason).
fn datapath_coalescing() -> CoalesceConfig {
    CoalesceConfig { verify_checksums: false, ..CoalesceConfig::default() }
}

/// A worker's TAP queues, one per overlay. With offloads, a coalescer each: consecutive TCP
/// segments of a flow received in one batch are written to the TAP as one super-frame
/// (IFF_VNET_HDR), and a segment that continues the one before is decrypted into its place.
pub struct TapSink<'a, T: TapWrite> {
    taps: &'a [T],
    /// Empty without offloads.
    coalescers: RefCell<Vec<Coalescer>>,
    /// The overlay of the last frame given to a coalescer: where a landing is offered.
    last_overlay: Cell<Option<OverlayId>>,
    write_failures: Cell<u64>,
}

impl<'a, T: TapWrite> TapSink<'a, T> {
    pub fn new(taps: &'a [T], offload: bool) -> Self {
        let coalescers = match offload {
            true => taps.iter().map(|_| Coalescer::new(datapath_coalescing())).collect(),
            false => Vec::new(),
        };
        TapSink {
            taps,
            coalescers: RefCell::new(coalescers),
            last_overlay: Cell::new(None),
            write_failures: Cell::new(0),
        }
    }

    /// Writes out what the coalescers hold; returns how many TAP writes failed since last time.
    pub fn flush(&self) -> u64 {
        for (overlay, coalescer) in self.coalescers.borrow_mut().iter_mut().enumerate() {
            coalescer.flush(&mut |out| write(&self.taps[overlay], &self.write_failures, out));
        }
        self.write_failures.replace(0)
    }
}

fn write(tap: &impl TapWrite, failures: &Cell<u64>, bytes: &[u8]) {
    if tap.write_frame(bytes).is_err() {
        failures.set(failures.get() + 1);
    }
}

impl<'a, T: TapWrite> FrameSink for TapSink<'a, T> {
    type Landing<'s>
        = SlotLanding<'s, T>
    where
        Self: 's;

    fn deliver(&self, overlay: OverlayId, with_headroom: &mut [u8]) -> io::Result<()> {
        let (tap, failures) = (&self.taps[overlay.0], &self.write_failures);
        match self.coalescers.borrow_mut().get_mut(overlay.0) {
            Some(coalescer) => {
                self.last_overlay.set(Some(overlay));
                coalescer.push(with_headroom, &mut |out| write(tap, failures, out));
            }
            None => write(tap, failures, &with_headroom[FRAME_HEADROOM..]),
        }
        Ok(())
    }

    fn landing(&self, encap_len: usize, len: usize) -> Option<SlotLanding<'_, T>> {
        let overlay = self.last_overlay.get()?;
        let coalescer = RefMut::filter_map(self.coalescers.borrow_mut(), |all| all.get_mut(overlay.0)).ok()?;
        let landing = Landing::at_tail(coalescer, encap_len, len)?;
        Some(SlotLanding { landing, overlay, tap: &self.taps[overlay.0], write_failures: &self.write_failures })
    }
}

/// A [`TapSink`]'s landing: in its coalescer's slot, written to its overlay's TAP.
pub struct SlotLanding<'s, T: TapWrite> {
    landing: Landing<RefMut<'s, Coalescer>>,
    overlay: OverlayId,
    tap: &'s T,
    write_failures: &'s Cell<u64>,
}

impl<T: TapWrite> FrameLanding for SlotLanding<'_, T> {
    fn plaintext(&mut self) -> &mut [u8] {
        self.landing.plaintext()
    }

    fn join(&mut self, overlay: OverlayId, frame: Range<usize>) -> bool {
        let (tap, failures) = (self.tap, self.write_failures);
        overlay == self.overlay && self.landing.join(frame, &mut |out| write(tap, failures, out))
    }
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
    /// What this batch received, counted once per run of packets on one SA.
    tally: Tally,
}

impl<S: FrameSink> Drop for Ingress<'_, S> {
    fn drop(&mut self) {
        self.tally.finish(self.now_ms);
    }
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
        Ingress {
            state,
            topology,
            tables,
            sink,
            now_ms,
            observing,
            last_learned: Cell::new(None),
            tally: Tally::default(),
        }
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
            if self.state.early_esp.hold(spi, packet, source, self.now_ms, &self.state.drops) == Hold::Kept {
                return;
            }
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
            replay.check(sequence).map_err(|error| at_sequence(replay_reason(error), sequence))?;
            sequence
        };
        let with_sequence = |reason| at_sequence(reason, sequence);
        // A segment that continues the previous one's super-frame is decrypted where it joins
        // it; whatever else the plaintext is, the landing wipes it when dropped unjoined. The
        // encapsulation's length is only a guess (IPv4 options); the frame's place is checked
        // once decrypted.
        let encap_len = encapsulation_len(sa.params.mode, peer.path);
        let mut landing = plaintext_len(packet.len()).and_then(|len| self.sink.landing(encap_len, len));
        let (next_header, payload_len) = match landing.as_mut() {
            Some(landing) => sa.opener.open_to(sequence, esn, packet, landing.plaintext()),
            None => sa.opener.open(sequence, esn, packet).map(|opened| (opened.next_header, opened.payload.len())),
        }
        .map_err(|error| with_sequence(open_reason(error)))?;
        // Two workers may have raced on the same number; only the first to get here wins.
        sa.replay().accept(sequence).map_err(|error| with_sequence(replay_reason(error)))?;
        if follow && notice_due(&peer.counters.moved_noticed_ms, self.now_ms) {
            self.state.sa_notices.notify(SaNotice::PeerMoved { peer: peer.id, spi: sa.params.spi, remote: source });
        }
        let plaintext = match landing.as_mut() {
            Some(landing) => &landing.plaintext()[..payload_len],
            None => &packet[PLAINTEXT_OFFSET..PLAINTEXT_OFFSET + payload_len],
        };
        let Some(Examined { overlay, frame, vni }) = self.examine(sa, peer, next_header, plaintext, sequence)? else {
            return Ok(());
        };
        let frame_len = frame.len();
        if let Some(mut landing) = landing {
            if !landing.join(overlay, frame.clone()) {
                // Not the next segment there: back to the packet, and on as if opened in place.
                let in_packet = &mut packet[PLAINTEXT_OFFSET..PLAINTEXT_OFFSET + payload_len];
                in_packet.copy_from_slice(&landing.plaintext()[..payload_len]);
                drop(landing);
                self.deliver_in_packet(overlay, packet, frame, vni, sequence)?;
            }
        } else {
            self.deliver_in_packet(overlay, packet, frame, vni, sequence)?;
        }
        self.tally.count(&sa.counters, &peer.counters, frame_len, self.now_ms);
        Ok(())
    }

    /// What the payload of an authenticated packet is: an in-band message (handled here, None)
    /// or a frame of an overlay, which is checked, learned from and shown to observers.
    fn examine(
        &self,
        sa: &InboundSa,
        peer: &Peer,
        next_header: u8,
        plaintext: &[u8],
        sequence: u64,
    ) -> Result<Option<Examined>, Dropped> {
        let with_sequence = |reason| at_sequence(reason, sequence);
        if next_header == inband::NEXT_HEADER {
            return self.inband(peer.id, plaintext).map(|()| None).map_err(with_sequence);
        }
        let udp_range = inner_udp(sa.params.mode, peer.path, next_header, plaintext).map_err(with_sequence)?;
        let (vni, frame_len) = {
            let udp = udp::Packet::new_checked(&plaintext[udp_range.clone()])
                .map_err(|_| with_sequence(DropReason::Malformed))?;
            if udp.destination_port() != self.topology.vxlan_port {
                return Err(with_sequence(DropReason::UnexpectedPayload));
            }
            let vxlan = vxlan::Packet::new_checked(udp.payload()).map_err(|_| with_sequence(DropReason::Malformed))?;
            (vxlan.vni(), vxlan.payload().len())
        };
        let frame_start = udp_range.start + udp::HEADER_LEN + vxlan::HEADER_LEN;
        let frame_range = frame_start..frame_start + frame_len;
        let frame = &plaintext[frame_range.clone()];
        let in_frame = |reason| in_frame(reason, sequence, vni, frame);
        let overlay = self.topology.overlay_by_vni(vni).ok_or_else(|| in_frame(DropReason::UnknownVni))?;
        let ethernet = ethernet::Frame::new_checked(frame).map_err(|_| in_frame(DropReason::Malformed))?;
        let learned = Some((overlay, ethernet.source(), peer.id));
        if self.last_learned.get() != learned {
            // A refused source MAC must not reach the local bridge either (it would learn it).
            self.topology
                .fdb(overlay)
                .learn(ethernet.source(), peer.id, self.now_ms)
                .map_err(|refused| in_frame(refused.drop_reason()))?;
            self.last_learned.set(learned);
        }
        if let Some(observing) = self.observing {
            let (peer, spi) = (peer.id, sa.params.spi);
            observing.frame(SeenFrame { direction: Direction::In, overlay, peer, spi, vni, frame }, self.now_ms);
        }
        Ok(Some(Examined { overlay, frame: frame_range, vni }))
    }

    /// Delivers the frame at `frame` in the plaintext, which was opened in place in `packet`.
    fn deliver_in_packet(
        &self,
        overlay: OverlayId,
        packet: &mut [u8],
        frame: Range<usize>,
        vni: u32,
        sequence: u64,
    ) -> Result<(), Dropped> {
        let frame = PLAINTEXT_OFFSET + frame.start..PLAINTEXT_OFFSET + frame.end;
        // The VXLAN and UDP headers in front of the frame are no longer needed.
        let with_headroom = &mut packet[frame.start - FRAME_HEADROOM..frame.end];
        if self.sink.deliver(overlay, with_headroom).is_err() {
            return Err(in_frame(DropReason::TapWriteFailed, sequence, vni, &packet[frame]));
        }
        Ok(())
    }
}

/// A frame found in a plaintext: its overlay, its place in the plaintext, its VNI.
struct Examined {
    overlay: OverlayId,
    frame: Range<usize>,
    vni: u32,
}

/// A drop of an authenticated packet (or one checked against the replay window).
fn at_sequence(reason: DropReason, sequence: u64) -> Dropped {
    Dropped { reason, sequence: Some(sequence), vni: None, inner: None }
}

/// A drop of a frame; its inner addresses are read only now that it is dropped.
fn in_frame(reason: DropReason, sequence: u64, vni: u32, frame: &[u8]) -> Dropped {
    Dropped { vni: Some(vni), inner: InnerAddresses::of_frame(frame), ..at_sequence(reason, sequence) }
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
