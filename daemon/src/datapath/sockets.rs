//! The underlay sockets ESP leaves and arrives on.
//!
//! `udp`: every worker has its own UDP socket on port 4500 (SO_REUSEPORT), so the kernel spreads
//! peers over the workers and no socket is shared. `esp`: a raw IP protocol 50 socket receives a
//! copy of every ESP packet, so there is exactly one; workers share it for sending and one worker
//! reads it.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

use crate::sys;

use std::cell::RefCell;

use super::batch_io::{enable_gro, MmsgBatch, SegmentSender, MAX_UDP_PAYLOAD_V6, UDP_MAX_SEGMENTS};
use super::egress::{EspSender, BUFFER_LEN, FRAME_OFFSET};
use super::packet_ring::{NextHops, Pushed, RingSender};

/// RFC 3948: ESP in UDP, and IKE once it floated.
pub const ESP_IN_UDP_PORT: u16 = 4500;
/// IP protocol number of ESP.
pub const IP_PROTOCOL_ESP: i32 = 50;
/// Large enough for bursts at 10 Gbit/s without drops in the socket queue.
const SOCKET_BUFFER_BYTES: usize = 8 << 20;

fn configure(socket: &Socket, local: IpAddr) -> io::Result<()> {
    socket.set_nonblocking(true)?;
    if let Err(error) = sys::force_buffer_sizes(socket.as_fd(), SOCKET_BUFFER_BYTES) {
        // Without CAP_NET_ADMIN the kernel caps the size at net.core.rmem_max: only burst tolerance suffers.
        tracing::debug!(%error, "could not raise the socket buffers; using what the kernel allows");
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    }
    match local {
        IpAddr::V4(_) => sys::forbid_fragmentation_v4(socket.as_fd()),
        IpAddr::V6(_) => sys::forbid_fragmentation_v6(socket.as_fd()),
    }
}

/// A worker's ESP-in-UDP socket, bound to the node address and port 4500.
pub fn udp_socket(local: IpAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(SocketAddr::new(local, 0)), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    configure(&socket, local)?;
    socket.bind(&SocketAddr::new(local, ESP_IN_UDP_PORT).into())?;
    let socket: UdpSocket = socket.into();
    // Many datagrams per read where the kernel can; without UDP_GRO (before Linux 5.0) one each.
    if let Err(error) = enable_gro(&socket) {
        tracing::debug!(%error, "UDP GRO not available; receiving datagrams one by one");
    }
    Ok(socket)
}

/// The raw ESP socket (IP protocol 50), bound to the node address. It receives all ESP (and
/// keeps the kernel from answering ESP with ICMP protocol-unreachable); ESP leaves through the
/// workers' AF_PACKET rings where the next hop is known (`packet_ring`), else through it.
pub struct RawEspSocket {
    fd: OwnedFd,
    ipv4: bool,
    next_hops: Option<Arc<NextHops>>,
}

impl RawEspSocket {
    pub fn new(local: IpAddr) -> io::Result<Self> {
        let socket = Socket::new(
            Domain::for_address(SocketAddr::new(local, 0)),
            Type::RAW,
            Some(Protocol::from(IP_PROTOCOL_ESP)),
        )?;
        configure(&socket, local)?;
        socket.bind(&SocketAddr::new(local, 0).into())?;
        Ok(Self::adopt(socket.into(), local))
    }

    /// The raw socket a running meshd handed over (`crate::upgrade`), bound to `local`.
    pub fn adopt(fd: OwnedFd, local: IpAddr) -> Self {
        // The ring's IPv6 packets carry flow label 0 (`link_header`): so must the raw socket's,
        // or a peer's packets would change label whenever they change way.
        let next_hops = match local {
            IpAddr::V6(_) => match sys::disable_auto_flow_label(fd.as_fd()) {
                Ok(()) => Some(NextHops::new(local)),
                Err(error) => {
                    tracing::info!(%error, "cannot turn off automatic IPv6 flow labels; raw ESP stays on the raw socket");
                    None
                }
            },
            IpAddr::V4(_) => Some(NextHops::new(local)),
        };
        RawEspSocket { fd, ipv4: local.is_ipv4(), next_hops }
    }

    /// IPv4 raw sockets deliver the IP header with each packet, IPv6 ones the ESP packet alone.
    pub fn delivers_ip_header(&self) -> bool {
        self.ipv4
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Sends single ESP packets from outside the workers (path-MTU probes and their
/// acknowledgements) on the same sockets, so they leave with the same addresses and DF.
#[derive(Clone)]
pub enum EspOut {
    Udp(std::sync::Arc<UdpSocket>),
    Raw(std::sync::Arc<RawEspSocket>),
}

impl EspOut {
    pub fn send(&self, packet: &[u8], remote: SocketAddr) -> io::Result<usize> {
        match self {
            EspOut::Udp(socket) => socket.send_to(packet, remote),
            EspOut::Raw(socket) => sys::send_msg(socket.fd(), &SocketAddr::new(remote.ip(), 0).into(), packet, None),
        }
    }
}

/// The control plane's sends through the datapath (`Announcer`): one packet at a time.
impl EspSender for EspOut {
    fn send_esp(&self, packet: &[u8], peer: SocketAddr) -> io::Result<usize> {
        self.send(packet, peer)
    }
}

/// How a worker reaches the underlay.
pub enum Underlay {
    /// ESP in UDP: this worker's own socket, and the run of ESP packets waiting to go out in one
    /// GSO send.
    Udp(UdpSocket, RefCell<GsoBatch>),
    /// Raw ESP: the node's one socket, shared; `receives` is true for the worker that reads it.
    /// Raw IP has no GSO: packets are queued and leave with one `sendmmsg` per batch.
    Esp { socket: std::sync::Arc<RawEspSocket>, receives: bool, batch: RefCell<MmsgQueue> },
}

impl EspSender for Underlay {
    fn send_esp(&self, packet: &[u8], peer: SocketAddr) -> io::Result<usize> {
        match self {
            Underlay::Udp(socket, batch) => batch.borrow_mut().push(socket, packet, peer),
            Underlay::Esp { socket, batch, .. } => batch.borrow_mut().push(socket, packet, peer),
        }
    }

    fn seal_into_queue(
        &self,
        peer: SocketAddr,
        esp_start: usize,
        esp_len: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Option<io::Result<usize>> {
        match self {
            Underlay::Udp(socket, batch) => Some(batch.borrow_mut().seal_into(socket, peer, esp_start, esp_len, fill)),
            // Raw ESP queues copies (`MmsgQueue`).
            Underlay::Esp { .. } => None,
        }
    }

    fn flush(&self) -> io::Result<()> {
        match self {
            Underlay::Udp(socket, batch) => batch.borrow_mut().flush(socket),
            Underlay::Esp { socket, batch, .. } => batch.borrow_mut().flush(socket),
        }
    }
}

/// Consecutive ESP packets to one peer, all of one size but the last, sent with one `sendmsg`
/// and UDP_SEGMENT: the segments of a TSO super-frame leave in one or two syscalls.
pub struct GsoBatch {
    run: GsoRun,
    sender: SegmentSender,
}

impl GsoBatch {
    pub fn new(socket: &UdpSocket) -> Self {
        GsoBatch { run: GsoRun::default(), sender: SegmentSender::new(socket) }
    }

    fn push(&mut self, socket: &UdpSocket, packet: &[u8], destination: SocketAddr) -> io::Result<usize> {
        let GsoBatch { run, sender } = self;
        run.push(packet, destination, &mut |to, bytes, size| sender.send(socket, to, bytes, size))
    }

    fn seal_into(
        &mut self,
        socket: &UdpSocket,
        destination: SocketAddr,
        esp_start: usize,
        esp_len: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> io::Result<usize> {
        let GsoBatch { run, sender } = self;
        run.seal_into(destination, esp_start, esp_len, fill, &mut |to, bytes, size| sender.send(socket, to, bytes, size))
    }

    fn flush(&mut self, socket: &UdpSocket) -> io::Result<()> {
        let GsoBatch { run, sender } = self;
        run.flush(&mut |to, bytes, size| sender.send(socket, to, bytes, size))
    }
}

/// Sends one run: its destination, its packets back to back, and their size (the last may be
/// shorter).
pub(crate) type SendRun<'a> = dyn FnMut(SocketAddr, &[u8], u16) -> io::Result<usize> + 'a;

/// The packets of a [`GsoBatch`] and the rules of a run, apart from the socket.
///
/// The run's packets sit at `bufs[current][RUN_START..end]`. `RUN_START` leaves room in front of
/// the first packet for the headers [`GsoRun::seal_into`] lets the caller write (its window
/// starts `esp_start` bytes before the packet), so a segment is written, given its headers and
/// sealed where it is sent from. A packet that will not fit the run is written at the start of
/// the other buffer, which becomes the run once the packet is there and the old run sent: a
/// packet that turns out to be dropped sends nothing early.
pub(crate) struct GsoRun {
    bufs: [Box<[u8]>; 2],
    current: usize,
    end: usize,
    destination: Option<SocketAddr>,
    segment_size: usize,
    segments: usize,
    /// A shorter packet ended the run.
    closed: bool,
}

/// Where a run's first packet starts: after the most room a window can need in front of it.
const RUN_START: usize = FRAME_OFFSET;

impl Default for GsoRun {
    fn default() -> Self {
        // A whole run, then room for the window of the packet that may follow it.
        let buffer = || vec![0; RUN_START + MAX_UDP_PAYLOAD_V6 + BUFFER_LEN].into_boxed_slice();
        GsoRun {
            bufs: [buffer(), buffer()],
            current: 0,
            end: RUN_START,
            destination: None,
            segment_size: 0,
            segments: 0,
            closed: false,
        }
    }
}

impl GsoRun {
    /// Whether a packet of `len` bytes for `destination` may join the run.
    fn fits(&self, len: usize, destination: SocketAddr) -> bool {
        self.destination == Some(destination)
            && !self.closed
            && len <= self.segment_size
            && self.end - RUN_START + len <= MAX_UDP_PAYLOAD_V6
            && self.segments < UDP_MAX_SEGMENTS
    }

    /// Adds the packet at `bufs[current][end..end + len]` to the run.
    fn admit(&mut self, len: usize, destination: SocketAddr) {
        if self.destination.is_none() {
            self.destination = Some(destination);
            self.segment_size = len;
        }
        self.end += len;
        self.segments += 1;
        self.closed = len < self.segment_size;
    }

    /// Adds a copy of `packet` for `destination`, sending what was queued first if it does not
    /// fit the run.
    pub(crate) fn push(&mut self, packet: &[u8], destination: SocketAddr, send: &mut SendRun<'_>) -> io::Result<usize> {
        if !self.fits(packet.len(), destination) {
            self.flush(send)?;
        }
        self.bufs[self.current][self.end..self.end + packet.len()].copy_from_slice(packet);
        self.admit(packet.len(), destination);
        Ok(packet.len())
    }

    /// Lets `fill` write an ESP packet of `esp_len` bytes for `destination` straight into the
    /// run, sending what was queued first if it does not fit. `fill` gets a window whose bytes
    /// from `esp_start` on become the packet (the bytes before may hold earlier packets and must
    /// stay as they are) and returns the packet's length, or `None` for nothing to send.
    /// Returns the bytes queued (0 for nothing).
    pub(crate) fn seal_into(
        &mut self,
        destination: SocketAddr,
        esp_start: usize,
        esp_len: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
        send: &mut SendRun<'_>,
    ) -> io::Result<usize> {
        debug_assert!(esp_start <= RUN_START, "the window must start inside the buffer");
        let fits = self.fits(esp_len, destination);
        let (buf, at) = match fits {
            true => (self.current, self.end),
            false => (1 - self.current, RUN_START),
        };
        let Some(len) = fill(&mut self.bufs[buf][at - esp_start..]) else { return Ok(0) };
        if !fits {
            // As with `push`, a failed send of the run before it costs this packet too.
            let sent = self.flush(send);
            self.current = buf;
            sent?;
        } else if len != esp_len && !self.fits(len, destination) {
            // Not the length announced: send the run before it, then move the packet to the start.
            let packet = self.end..self.end + len;
            let sent = self.flush(send);
            self.bufs[self.current].copy_within(packet, RUN_START);
            sent?;
        }
        self.admit(len, destination);
        Ok(len)
    }

    /// Sends the run and empties it.
    pub(crate) fn flush(&mut self, send: &mut SendRun<'_>) -> io::Result<()> {
        let Some(destination) = self.destination.take() else { return Ok(()) };
        let sent = send(destination, &self.bufs[self.current][RUN_START..self.end], self.segment_size as u16);
        self.end = RUN_START;
        self.segments = 0;
        self.closed = false;
        sent.map(|_| ())
    }
}

/// Raw ESP packets waiting to leave: in the worker's AF_PACKET ring where the peer's next hop is
/// known, else their bytes back to back for one `sendmmsg` on the raw socket, and where each goes.
pub struct MmsgQueue {
    buf: Vec<u8>,
    batch: MmsgBatch,
    ring: RingSender,
}

impl Default for MmsgQueue {
    fn default() -> Self {
        MmsgQueue {
            buf: Vec::with_capacity(MMSG_QUEUE_BYTES + BUFFER_LEN),
            batch: MmsgBatch::new(),
            ring: RingSender::default(),
        }
    }
}

/// Bytes queued before a batch of raw ESP packets is sent anyway.
const MMSG_QUEUE_BYTES: usize = 256 << 10;

impl MmsgQueue {
    fn push(&mut self, socket: &RawEspSocket, packet: &[u8], destination: SocketAddr) -> io::Result<usize> {
        if let Some(next_hops) = &socket.next_hops {
            if let Some(path) = next_hops.path(destination.ip()) {
                if self.ring.push(&path, packet)? == Pushed::Queued {
                    return Ok(packet.len());
                }
            }
        }
        if self.batch.is_full() || self.buf.len() + packet.len() > MMSG_QUEUE_BYTES {
            self.flush(socket)?;
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(packet);
        if !self.batch.push(start..self.buf.len(), SocketAddr::new(destination.ip(), 0)) {
            // Only if the flush above could not empty it.
            self.buf.truncate(start);
            return Err(io::Error::other("the raw ESP send queue is full"));
        }
        Ok(packet.len())
    }

    fn flush(&mut self, socket: &RawEspSocket) -> io::Result<()> {
        let ring_sent = self.ring.send();
        if self.batch.is_empty() {
            return ring_sent;
        }
        let sent = self.batch.send(socket.fd(), &self.buf);
        self.buf.clear();
        match sent.error {
            Some(error) => Err(error),
            None => ring_sent,
        }
    }
}

impl Underlay {
    /// A worker's ESP-in-UDP socket: `socket`, bound or handed over.
    pub fn udp(socket: UdpSocket) -> Self {
        let batch = RefCell::new(GsoBatch::new(&socket));
        Underlay::Udp(socket, batch)
    }

    /// The socket this worker sends on (for raw ESP, the node's one socket).
    pub fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Underlay::Udp(socket, _) => socket.as_fd(),
            Underlay::Esp { socket, .. } => socket.fd(),
        }
    }

    /// The descriptor to poll for received packets, if this worker receives.
    pub fn receive_fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Underlay::Udp(socket, _) => Some(socket.as_fd()),
            Underlay::Esp { socket, receives: true, .. } => Some(socket.fd()),
            Underlay::Esp { receives: false, .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `fill` writing `len` bytes of `byte` as the packet.
    fn packet(byte: u8, esp_start: usize, len: usize) -> impl FnMut(&mut [u8]) -> Option<usize> {
        move |window| {
            window[esp_start..esp_start + len].fill(byte);
            Some(len)
        }
    }

    #[test]
    fn a_packet_longer_than_announced_goes_in_a_run_of_its_own() {
        let to: SocketAddr = "198.18.0.2:4500".parse().unwrap();
        let mut sent = Vec::new();
        {
            let mut send = |to: SocketAddr, bytes: &[u8], size: u16| {
                sent.push((to, bytes.to_vec(), size));
                Ok(bytes.len())
            };
            let mut run = GsoRun::default();
            assert_eq!(run.seal_into(to, 10, 100, &mut packet(1, 10, 100), &mut send).unwrap(), 100);
            // Announced as 100 bytes (it would fit), written as 120: not a segment of that run.
            assert_eq!(run.seal_into(to, 10, 100, &mut packet(2, 10, 120), &mut send).unwrap(), 120);
            assert_eq!(run.seal_into(to, 10, 120, &mut packet(3, 10, 120), &mut send).unwrap(), 120);
            // Nothing to send: the run stays as it is.
            assert_eq!(run.seal_into(to, 10, 100, &mut |_| None, &mut send).unwrap(), 0);
            run.flush(&mut send).unwrap();
        }
        let mut second = vec![2; 120];
        second.extend([3; 120]);
        assert_eq!(sent, vec![(to, vec![1; 100], 100), (to, second, 120)]);
    }
}
