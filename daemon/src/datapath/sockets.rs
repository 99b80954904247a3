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

use super::packet_ring::{NextHops, Pushed, RingSender};
use super::batch_io::{enable_gro, MmsgBatch, SegmentSender, MAX_UDP_PAYLOAD_V4, MAX_UDP_PAYLOAD_V6, UDP_MAX_SEGMENTS};
use super::egress::{EspSender, BUFFER_LEN};

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
/// keeps the kernel from answering ESP with ICMP protocol-unreachable); IPv4 ESP leaves through
/// the workers' AF_PACKET rings where the next hop is known (`packet_ring`), else through it.
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
        let next_hops = match local {
            IpAddr::V4(local) => Some(NextHops::new(local)),
            // The IPv6 header (its flow label) is the kernel's: IPv6 stays on the raw socket.
            IpAddr::V6(_) => None,
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
    buf: Vec<u8>,
    destination: Option<SocketAddr>,
    segment_size: usize,
    segments: usize,
    /// A shorter packet ended the run.
    closed: bool,
    sender: SegmentSender,
}

impl GsoBatch {
    pub fn new(socket: &UdpSocket) -> Self {
        GsoBatch {
            buf: Vec::with_capacity(MAX_UDP_PAYLOAD_V4 + BUFFER_LEN),
            destination: None,
            segment_size: 0,
            segments: 0,
            closed: false,
            sender: SegmentSender::new(socket),
        }
    }

    /// Adds `packet` for `destination`, sending what was queued first if it does not fit the run.
    fn push(&mut self, socket: &UdpSocket, packet: &[u8], destination: SocketAddr) -> io::Result<usize> {
        let fits = self.destination == Some(destination)
            && !self.closed
            && packet.len() <= self.segment_size
            && self.buf.len() + packet.len() <= MAX_UDP_PAYLOAD_V6
            && self.segments < UDP_MAX_SEGMENTS;
        if !fits {
            self.flush(socket)?;
            self.destination = Some(destination);
            self.segment_size = packet.len();
        }
        self.buf.extend_from_slice(packet);
        self.segments += 1;
        self.closed = packet.len() < self.segment_size;
        Ok(packet.len())
    }

    fn flush(&mut self, socket: &UdpSocket) -> io::Result<()> {
        let Some(destination) = self.destination.take() else { return Ok(()) };
        let sent = self.sender.send(socket, destination, &self.buf, self.segment_size as u16);
        self.buf.clear();
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
        if let (Some(next_hops), IpAddr::V4(peer)) = (&socket.next_hops, destination.ip()) {
            if let Some(path) = next_hops.path(peer) {
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
