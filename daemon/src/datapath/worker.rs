//! One datapath worker: owns one queue of every overlay TAP, its underlay socket and its packet
//! buffers, and moves packets both ways until told to stop.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::tap::TapQueue;
use mesh_config::control::DropReason;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::drops::DropContext;
use crate::offload::virtio_net::{self, Gso, VirtioNetHeader};
use crate::offload::{complete_checksum, Segmenter};
use crate::state::MeshState;
use crate::topology::Overlay;
use crate::wire::esp::{classify_udp_encap, UdpEncapKind, NON_ESP_MARKER_LEN};
use crate::wire::ipv4;

use super::batch_io::{recv_segments, MmsgBatch, MMSG_BATCH};
use super::egress::{Egress, EspSender, BUFFER_LEN, FRAME_OFFSET, MAX_FRAME_LEN};
use super::ike_inbox::IkeInbox;
use super::ingress::{FrameSink, Ingress, TapSink};
use super::sockets::{Underlay, ESP_IN_UDP_PORT};

/// Packets handled per ready descriptor before polling again, so that one busy direction cannot
/// starve the other.
const BATCH: usize = 64;
/// How often a worker looks at the stop flag when idle: only in case the wake-up through
/// `woken` failed, so an idle worker does not wake by the clock (issue 16's idle cost).
const POLL_TIMEOUT_MS: u16 = 5_000;
/// How often the first worker ends lapsed early-ESP offers while any SPI is offered (a few
/// seconds around each handshake; never on an idle node).
const EARLY_ESP_EXPIRY_MS: u16 = 1_000;
/// A poll that took this long put the worker to sleep: a poll that finds a descriptor ready
/// returns within a few microseconds.
const SLEPT: Duration = Duration::from_micros(50);
/// Rounds after a sleep in which each ready descriptor is read once (see `ReadPlan`).
const SPARSE_ROUNDS: u32 = 2;

/// How many reads a round makes on each ready descriptor. Sparse traffic (a ping, a request and
/// its answer) wakes a sleeping worker for one packet: reading until EAGAIN would put one more
/// syscall per descriptor between the TAP read and the UDP send (and between the TAP write and
/// the sleep that lets the woken application run), so for a few rounds after a sleep each ready
/// descriptor is read once and the next poll says whether more came. Once polls keep finding
/// descriptors ready at once, the traffic is a stream and each round drains up to `BATCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReadPlan {
    rounds_since_sleep: u32,
}

impl ReadPlan {
    const fn new() -> Self {
        ReadPlan { rounds_since_sleep: SPARSE_ROUNDS }
    }

    /// Counts a poll that found work after waiting `waited`; returns the reads per ready
    /// descriptor for the round it starts.
    fn after_poll(&mut self, waited: Duration) -> usize {
        self.rounds_since_sleep = match waited >= SLEPT {
            true => 0,
            false => self.rounds_since_sleep.saturating_add(1),
        };
        match self.rounds_since_sleep < SPARSE_ROUNDS {
            true => 1,
            false => BATCH,
        }
    }
}

pub struct Worker {
    pub index: usize,
    pub state: Arc<MeshState>,
    pub parts: WorkerParts,
    /// Where IKE messages on port 4500 go; `None` when this node runs no IKE.
    pub ike: Option<IkeInbox>,
    pub tuning: WorkerTuning,
    pub stop: Arc<AtomicBool>,
    /// Becomes readable when `stop` is set, so that an idle worker stops at once, not after
    /// its poll timeout (a handover pauses forwarding only as long as the slowest worker).
    pub woken: Arc<UnixStream>,
    /// Becomes readable when ESP that came before its SA can be handled now
    /// (`MeshState::early_esp`); one worker has it, and that worker also ends lapsed offers.
    pub early_esp_woken: Option<UnixStream>,
}

/// How the workers run; set at start (`meshd run` options) and kept across reloads.
#[derive(Debug, Clone, Copy)]
pub struct WorkerTuning {
    /// The TAPs have the virtio-net header and TSO on (see `crate::tap::create`).
    pub offload: bool,
    /// After handling packets, keep polling without sleeping this long (zero: never): the answer
    /// to what was just forwarded (a ping reply, a TCP ACK) usually arrives within a few hundred
    /// microseconds, and waking a sleeping thread costs tens of them on a virtual machine. The
    /// worker yields the core while it waits, but the core shows as busy.
    pub busy_poll: Duration,
}

/// What a worker owns and hands back when it stops, so that a reload can start it again with
/// the same sockets and the TAP queues of the overlays that stay.
pub struct WorkerParts {
    /// This worker's queue of each overlay's TAP, indexed by `OverlayId`.
    pub taps: Vec<TapQueue>,
    pub(super) underlay: Underlay,
}

/// Sends one frame read from a TAP with offloads: a TSO super-frame is cut into overlay-MTU
/// segments (each sent on its own), a frame with a partial checksum gets it completed.
fn transmit_from_tap<U: EspSender, S: FrameSink>(
    egress: &Egress<'_, U, S>,
    overlay: &Overlay,
    buffers: &mut Buffers,
    read_len: usize,
) -> Result<(), DropReason> {
    let header_start = FRAME_OFFSET - virtio_net::HEADER_LEN;
    let frame_len = read_len.checked_sub(virtio_net::HEADER_LEN).ok_or(DropReason::Malformed)?;
    let packet = virtio_net::Packet::new_checked(&buffers.frame[header_start..header_start + read_len])
        .map_err(|_| DropReason::Malformed)?;
    let header = VirtioNetHeader::parse(&packet).map_err(|_| DropReason::Malformed)?;
    if header.gso == Gso::None {
        let frame = &mut buffers.frame[FRAME_OFFSET..FRAME_OFFSET + frame_len];
        if header.flags & virtio_net::flags::NEEDS_CSUM != 0 {
            complete_checksum(&header, frame).map_err(|_| DropReason::Malformed)?;
        }
        egress.forward(overlay, &mut buffers.frame, &mut buffers.scratch, frame_len);
        return Ok(());
    }
    let super_frame = &buffers.frame[FRAME_OFFSET..FRAME_OFFSET + frame_len];
    let mut segments = Segmenter::new(&header, super_frame).map_err(|_| DropReason::Malformed)?;
    // Every segment carries the super-frame's Ethernet header.
    let Some(destination) = egress.destination(overlay, super_frame) else { return Ok(()) };
    egress.forward_segments(destination, overlay, &mut segments, &mut buffers.segment, &mut buffers.scratch);
    Ok(())
}

/// A worker's packet buffers, allocated once.
struct Buffers {
    /// Frames read from the TAP (virtio-net header just before `FRAME_OFFSET`).
    frame: Box<[u8]>,
    /// One segment of a super-frame at a time.
    segment: Box<[u8]>,
    /// Copies for head-end replication.
    scratch: Box<[u8]>,
    /// Datagrams from the UDP underlay (up to 64 KiB of them with GRO).
    packet: Box<[u8]>,
    /// Packets from the raw ESP socket, one per buffer (only for the worker that reads it).
    raw: Vec<Box<[u8]>>,
    raw_batch: MmsgBatch,
}

/// Size of each raw ESP receive buffer: a jumbo-frame underlay's packets fit.
const RAW_BUFFER_LEN: usize = 16 << 10;

impl Buffers {
    fn new(raw_receiver: bool) -> Self {
        let buffer = || vec![0u8; BUFFER_LEN].into_boxed_slice();
        let raw = match raw_receiver {
            true => (0..MMSG_BATCH).map(|_| vec![0u8; RAW_BUFFER_LEN].into_boxed_slice()).collect(),
            false => Vec::new(),
        };
        Buffers {
            frame: buffer(),
            segment: buffer(),
            scratch: buffer(),
            packet: buffer(),
            raw,
            raw_batch: MmsgBatch::new(),
        }
    }
}

impl Worker {
    /// Moves packets until told to stop; then hands back the queues and sockets.
    pub fn run(self) -> WorkerParts {
        self.forward_until_stopped();
        self.parts
    }

    fn forward_until_stopped(&self) {
        let mut buffers = Buffers::new(matches!(self.parts.underlay, Underlay::Esp { receives: true, .. }));
        let mut fds: Vec<PollFd<'_>> =
            self.parts.taps.iter().map(|tap| PollFd::new(tap.as_fd(), PollFlags::POLLIN)).collect();
        let receive_fd = self.parts.underlay.receive_fd();
        if let Some(fd) = receive_fd {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        fds.push(PollFd::new(self.woken.as_fd(), PollFlags::POLLIN));
        let early_index = self.early_esp_woken.as_ref().map(|early| {
            fds.push(PollFd::new(early.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let sink = TapSink::new(&self.parts.taps, self.tuning.offload);
        // With offloads the TAP's virtio-net header is read just in front of the frame.
        let read_start = if self.tuning.offload { FRAME_OFFSET - virtio_net::HEADER_LEN } else { FRAME_OFFSET };
        tracing::debug!(worker = self.index, "datapath worker started");
        let mut last_busy = Instant::now();
        let mut plan = ReadPlan::new();
        let mut early_expiry_ms = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let busy_polling = last_busy.elapsed() < self.tuning.busy_poll;
            let early_offered = early_index.is_some() && self.state.early_esp.is_offering();
            let timeout = match (busy_polling, early_offered) {
                (true, _) => PollTimeout::ZERO,
                (false, true) => PollTimeout::from(EARLY_ESP_EXPIRY_MS),
                (false, false) => PollTimeout::from(POLL_TIMEOUT_MS),
            };
            let polled_at = Instant::now();
            let polled = poll(&mut fds, timeout);
            if early_offered {
                let now_ms = self.state.clock.now_ms();
                if now_ms >= early_expiry_ms {
                    self.state.early_esp.expire(now_ms, &self.state.drops);
                    early_expiry_ms = now_ms + u64::from(EARLY_ESP_EXPIRY_MS);
                }
            }
            match polled {
                Ok(0) if busy_polling => {
                    std::thread::yield_now();
                    continue;
                }
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => last_busy = Instant::now(),
                Err(error) => {
                    tracing::error!(worker = self.index, %error, "poll failed; datapath worker stops");
                    return;
                }
            }
            let reads = plan.after_poll(last_busy.duration_since(polled_at));
            let now_ms = self.state.clock.now_ms();
            let tables = self.state.sadb.load();
            let topology = self.state.topology();
            let observing = self.state.observers.load();
            let egress = Egress {
                state: &self.state,
                topology: &topology,
                tables: &tables,
                underlay: &self.parts.underlay,
                sink: &sink,
                now_ms,
                observing: observing.as_ref(),
            };
            for (index, tap) in self.parts.taps.iter().enumerate() {
                if fds[index].any() != Some(true) {
                    continue;
                }
                let overlay = &topology.overlays[index];
                for _ in 0..reads {
                    match tap.recv(&mut buffers.frame[read_start..FRAME_OFFSET + MAX_FRAME_LEN]) {
                        Ok(len) if !self.tuning.offload => {
                            egress.forward(overlay, &mut buffers.frame, &mut buffers.scratch, len)
                        }
                        Ok(len) => {
                            if let Err(reason) = transmit_from_tap(&egress, overlay, &mut buffers, len) {
                                let context = DropContext { vni: Some(overlay.vni), ..DropContext::default() };
                                self.state.drops.record(reason, context);
                            }
                        }
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                        Err(error) => {
                            tracing::warn!(interface = %overlay.interface, %error, "reading the overlay interface failed");
                            break;
                        }
                    }
                }
            }
            // Whatever the reads queued for GSO leaves now, and any ICMP answers go to the TAPs.
            if let Err(error) = self.parts.underlay.flush() {
                self.state.drops.record(DropReason::SendFailed, DropContext::default());
                tracing::debug!(%error, "sending a batch of ESP packets failed");
            }
            self.flush_to_taps(&sink);
            if receive_fd.is_some() && fds[self.parts.taps.len()].any() == Some(true) {
                let ingress = Ingress::new(&self.state, &topology, &tables, &sink, now_ms, observing.as_ref());
                for _ in 0..reads {
                    if !self.receive_one(&ingress, &mut buffers) {
                        break;
                    }
                }
                self.flush_to_taps(&sink);
            }
            let early_ready = early_index.is_some_and(|index| fds[index].any() == Some(true));
            if let Some(early) = self.early_esp_woken.as_ref().filter(|_| early_ready) {
                drain(early);
                let ingress = Ingress::new(&self.state, &topology, &tables, &sink, now_ms, observing.as_ref());
                for mut packet in self.state.early_esp.take_released() {
                    topology.peer(packet.peer).counters.early_esp_packets.fetch_add(1, Ordering::Relaxed);
                    ingress.receive(&mut packet.esp, packet.source);
                }
                self.flush_to_taps(&sink);
            }
        }
        tracing::debug!(worker = self.index, "datapath worker stopped");
    }

    /// Writes the frames the sink holds to the TAPs; each failed write is a drop.
    fn flush_to_taps(&self, sink: &TapSink<'_, TapQueue>) {
        for _ in 0..sink.flush() {
            self.state.drops.record(DropReason::TapWriteFailed, DropContext::default());
        }
    }

    /// Reads and handles one underlay packet; false when there was none.
    fn receive_one(&self, ingress: &Ingress<'_, TapSink<'_, TapQueue>>, buffers: &mut Buffers) -> bool {
        match &self.parts.underlay {
            Underlay::Udp(socket, _) => {
                // With UDP GRO one read may hold many datagrams of one size from one sender.
                let buf = &mut buffers.packet;
                let received = match recv_segments(socket, &mut buf[..]) {
                    Ok(received) => received,
                    Err(error) => return log_receive_error(&error),
                };
                for datagram in received.datagrams_mut(buf) {
                    self.receive_datagram(ingress, datagram, received.from);
                }
                true
            }
            Underlay::Esp { socket, .. } => {
                // Raw IP has no GRO: up to MMSG_BATCH packets per recvmmsg instead.
                let count = match buffers.raw_batch.recv(socket.fd(), &mut buffers.raw) {
                    Ok(count) => count,
                    Err(error) => return log_receive_error(&error),
                };
                for (datagram, buf) in buffers.raw_batch.received().iter().zip(buffers.raw.iter_mut()) {
                    let Some(source) = datagram.from else {
                        self.state.drops.record(DropReason::Malformed, DropContext::default());
                        continue;
                    };
                    self.receive_raw(ingress, &mut buf[..datagram.len], source, socket.delivers_ip_header());
                }
                count > 0
            }
        }
    }

    /// One packet from the raw ESP socket; IPv4 raw sockets deliver the IP header too.
    fn receive_raw(&self, ingress: &Ingress<'_, TapSink<'_, TapQueue>>, packet: &mut [u8], source: SocketAddr, ip_header: bool) {
        if !ip_header {
            ingress.receive(packet, source);
            return;
        }
        let esp_range = match ipv4::Packet::new_checked(&packet[..]) {
            Ok(ip) if !ip.is_fragment() => ip.header_length()..usize::from(ip.total_length()),
            _ => return self.drop_unattributed(DropReason::Malformed, source),
        };
        ingress.receive(&mut packet[esp_range], source);
    }

    /// One datagram from UDP 4500: ESP, IKE (to the control plane) or a NAT keepalive.
    fn receive_datagram(&self, ingress: &Ingress<'_, TapSink<'_, TapQueue>>, datagram: &mut [u8], source: SocketAddr) {
        match classify_udp_encap(datagram) {
            Ok(UdpEncapKind::Esp) => ingress.receive(datagram, source),
            Ok(UdpEncapKind::NatKeepalive) => {}
            Ok(UdpEncapKind::Ike) => match &self.ike {
                Some(inbox) if !inbox.forward(&datagram[NON_ESP_MARKER_LEN..], source, ESP_IN_UDP_PORT) => {
                    self.drop_unattributed(DropReason::IkeBacklog, source)
                }
                Some(_) => {}
                None => self.drop_unattributed(DropReason::NotEsp, source),
            },
            Err(_) => self.drop_unattributed(DropReason::Malformed, source),
        }
    }

    fn drop_unattributed(&self, reason: DropReason, source: SocketAddr) {
        let peer = self.state.topology().peer_by_address(source.ip());
        self.state.drops.record(reason, DropContext { peer, outer_source: Some(source), ..DropContext::default() });
    }
}

/// Reads the wake-ups queued on a non-blocking socket.
fn drain(mut socket: &UnixStream) {
    let mut bytes = [0u8; 64];
    while matches!(socket.read(&mut bytes), Ok(n) if n > 0) {}
}

/// False, so a read error ends the batch; WouldBlock is the normal end of one.
fn log_receive_error(error: &io::Error) -> bool {
    if error.kind() != io::ErrorKind::WouldBlock {
        tracing::debug!(%error, "receiving from the underlay failed");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT_ONCE: Duration = Duration::from_micros(3);
    const ASLEEP: Duration = Duration::from_millis(2);

    #[test]
    fn a_wake_from_sleep_reads_each_descriptor_once_for_the_sparse_rounds() {
        let mut plan = ReadPlan::new();
        // The request that woke the worker, then its answer found at once by the next poll.
        assert_eq!(plan.after_poll(ASLEEP), 1);
        assert_eq!(plan.after_poll(AT_ONCE), 1);
        // The worker sleeps again: the next ping is read once too.
        assert_eq!(plan.after_poll(SLEPT), 1);
    }

    #[test]
    fn polls_that_keep_finding_work_drain_a_whole_batch() {
        let mut plan = ReadPlan::new();
        assert_eq!(plan.after_poll(AT_ONCE), BATCH, "a worker that has not slept drains");
        assert_eq!(plan.after_poll(ASLEEP), 1);
        let reads: Vec<usize> = (0..4).map(|_| plan.after_poll(AT_ONCE)).collect();
        assert_eq!(reads, [1, BATCH, BATCH, BATCH], "a stream drains again from the second round at once");
        assert_eq!(plan.after_poll(SLEPT - Duration::from_nanos(1)), BATCH, "a short wait is no sleep");
    }
}
