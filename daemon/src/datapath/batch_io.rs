//! Fewer syscalls per packet on the underlay (issue 4): UDP GSO sends, UDP GRO receives, and
//! `sendmmsg`/`recvmmsg` batches for the raw ESP socket (IP protocol 50 has no GSO).
//!
//! Everything works on caller-owned buffers and never allocates per call: the GSO/GRO functions
//! build their headers on the stack, and an [`MmsgBatch`] allocates its fixed-capacity tables once.
//! The functions take any `AsFd` (`&UdpSocket`, `BorrowedFd`, the raw ESP socket's `fd()`), so the
//! workers' existing sockets can use them as they are.
//!
//! Kernel facts these rely on (checked by the tests below on Linux 6.18):
//! - UDP GSO (`UDP_SEGMENT`, Linux 4.18): one `sendmsg` becomes up to `UDP_MAX_SEGMENTS` datagrams
//!   of `segment_size` bytes, the last possibly shorter. The kernel limit was 64 until 2024, when
//!   it became 128 (this 6.18 kernel takes 128); we stay at 64 so one binary behaves the same
//!   everywhere. The UDP payload of
//!   one call is limited like one datagram's: 65,507 bytes over IPv4, 65,527 over IPv6. Each
//!   segment plus headers must fit the route's MTU (else `EINVAL`), and a device without checksum
//!   offload (or an xfrm route) refuses GSO with `EIO`; [`SegmentSender`] then falls back for good.
//! - UDP GRO (`UDP_GRO`, Linux 5.0): a socket that enables it receives coalesced runs of equal-sized
//!   datagrams in one read, with the segment size in a control message. On loopback (and veth) a
//!   GSO send reaches a GRO socket *unsegmented*: one read returns the whole send. Datagrams sent
//!   one by one over loopback are not coalesced (loopback has no NAPI GRO); they arrive one per read
//!   with `segment_size: None`. A socket without UDP_GRO gets GSO sends split back into datagrams.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use socket2::SockAddr;

use crate::sys::{self, RecvMeta};

/// Segments per GSO `sendmsg` (the kernel's UDP_MAX_SEGMENTS on every kernel since 4.18).
pub const UDP_MAX_SEGMENTS: usize = 64;
/// Largest UDP payload of one send over IPv4 (65,535 - 20 IPv4 - 8 UDP), GSO or not.
pub const MAX_UDP_PAYLOAD_V4: usize = 65_507;
/// Largest UDP payload of one send over IPv6 (65,535 - 8 UDP; the IPv6 header is not counted).
pub const MAX_UDP_PAYLOAD_V6: usize = 65_527;
/// A receive buffer this large never truncates a GRO read (coalesced runs stay under 64 KiB).
#[cfg(test)]
pub const GRO_BUFFER_LEN: usize = 65_535;
/// Messages per [`MmsgBatch`], and per `sendmmsg`/`recvmmsg` call.
pub const MMSG_BATCH: usize = sys::MMSG_MAX;

fn invalid_input(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Whether the kernel knows UDP GSO on this socket (`getsockopt(UDP_SEGMENT)`, which has no side
/// effect). The device a route leaves by can still refuse a GSO send (`EIO`); [`SegmentSender`]
/// handles that.
pub fn probe_gso(socket: impl AsFd) -> bool {
    getsockopt(&socket.as_fd(), sockopt::UdpGsoSegment).is_ok()
}

/// How many segments of `segment_size` one send may carry towards `destination`.
fn segments_per_call(destination: &SocketAddr, segment_size: u16) -> io::Result<usize> {
    if segment_size == 0 {
        return Err(invalid_input("a UDP segment size must not be 0"));
    }
    let payload = if destination.is_ipv4() { MAX_UDP_PAYLOAD_V4 } else { MAX_UDP_PAYLOAD_V6 };
    match (payload / usize::from(segment_size)).min(UDP_MAX_SEGMENTS) {
        0 => Err(invalid_input("the UDP segment size exceeds the largest UDP payload")),
        segments => Ok(segments),
    }
}

/// Sends `buf` split into datagrams of `segment_size` bytes (the last may be shorter) with
/// UDP GSO: one `sendmsg` per `UDP_MAX_SEGMENTS` segments or 65,507 bytes, whichever comes first.
///
/// Returns the bytes sent. Like `write`, a partial count means the datagrams after it were not
/// sent (the error that stopped them is dropped); an error means nothing was sent. Fails with
/// `EIO` where GSO is not possible; [`SegmentSender`] falls back then.
#[cfg(test)]
pub fn send_segments(socket: impl AsFd, destination: SocketAddr, buf: &[u8], segment_size: u16) -> io::Result<usize> {
    match gso_send(socket, destination, buf, segment_size)? {
        (0, Some(error)) => Err(error),
        (sent, _) => Ok(sent),
    }
}

/// GSO sends from the start of `buf`: bytes sent, and the error that stopped it early.
fn gso_send(
    socket: impl AsFd,
    destination: SocketAddr,
    buf: &[u8],
    segment_size: u16,
) -> io::Result<(usize, Option<io::Error>)> {
    let chunk_len = segments_per_call(&destination, segment_size)? * usize::from(segment_size);
    let address = SockAddr::from(destination);
    let fd = socket.as_fd();
    let mut sent = 0;
    while sent < buf.len() {
        let chunk = &buf[sent..buf.len().min(sent + chunk_len)];
        // One segment needs no GSO (and a control message would only cost time).
        let gso = (chunk.len() > usize::from(segment_size)).then_some(segment_size);
        match sys::send_msg(fd, &address, chunk, gso) {
            Ok(_) => sent += chunk.len(),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Ok((sent, Some(error))),
        }
    }
    Ok((sent, None))
}

/// The same datagrams as [`send_segments`], without GSO: `sendmmsg` of up to 64 datagrams a call.
/// Same return convention.
pub fn send_segments_fallback(
    socket: impl AsFd,
    destination: SocketAddr,
    buf: &[u8],
    segment_size: u16,
) -> io::Result<usize> {
    if segment_size == 0 {
        return Err(invalid_input("a UDP segment size must not be 0"));
    }
    let segment_size = usize::from(segment_size);
    let address = SockAddr::from(destination);
    let fd = socket.as_fd();
    let mut sent = 0;
    while sent < buf.len() {
        let messages = buf[sent..].chunks(segment_size).map(|datagram| (datagram, &address));
        match sys::send_mmsg(fd, messages) {
            Ok(0) => break,
            Ok(datagrams) => sent = buf.len().min(sent + datagrams * segment_size),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if sent == 0 => return Err(error),
            Err(_) => break,
        }
    }
    Ok(sent)
}

/// One API for segmented sends whether or not GSO works: probes once, and if the kernel or the
/// outgoing device refuses GSO (`EIO`), switches to [`send_segments_fallback`] for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSender {
    gso: bool,
}

impl SegmentSender {
    /// Uses GSO if [`probe_gso`] says the kernel has it.
    pub fn new(socket: impl AsFd) -> Self {
        SegmentSender { gso: probe_gso(socket) }
    }

    /// Never uses GSO (offloads off, or for comparison).
    #[cfg(test)]
    pub fn without_gso() -> Self {
        SegmentSender { gso: false }
    }

    #[cfg(test)]
    pub fn uses_gso(&self) -> bool {
        self.gso
    }

    /// Sends `buf` as datagrams of `segment_size` bytes; the convention of [`send_segments`].
    pub fn send(
        &mut self,
        socket: impl AsFd,
        destination: SocketAddr,
        buf: &[u8],
        segment_size: u16,
    ) -> io::Result<usize> {
        let fd = socket.as_fd();
        let mut sent = 0;
        if self.gso {
            match gso_send(fd, destination, buf, segment_size)? {
                (sent, None) => return Ok(sent),
                (done, Some(error)) if error.raw_os_error() == Some(libc::EIO) => {
                    tracing::info!(%destination, "UDP GSO refused (EIO); sending datagrams one by one from now on");
                    self.gso = false;
                    sent = done;
                }
                (0, Some(error)) => return Err(error),
                (sent, Some(_)) => return Ok(sent),
            }
        }
        match send_segments_fallback(fd, destination, &buf[sent..], segment_size) {
            Ok(more) => Ok(sent + more),
            Err(_) if sent > 0 => Ok(sent),
            Err(error) => Err(error),
        }
    }
}

/// Turns UDP GRO on: the kernel may then hand [`recv_segments`] several equal-sized datagrams
/// from one sender in one read. Fails (ENOPROTOOPT) on kernels without it.
pub fn enable_gro(socket: impl AsFd) -> io::Result<()> {
    setsockopt(&socket.as_fd(), sockopt::UdpGroSegment, &true).map_err(io::Error::from)
}

/// What one [`recv_segments`] read brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes in the buffer.
    pub len: usize,
    pub from: SocketAddr,
    /// `Some(size)`: `buf[..len]` holds datagrams of `size` bytes (the last may be shorter), all
    /// from `from`. `None`: it holds one datagram.
    pub segment_size: Option<u16>,
    /// The buffer was too small and the tail is lost (use [`GRO_BUFFER_LEN`] bytes).
    pub truncated: bool,
}

impl Received {
    /// Bytes per datagram: `segment_size`, or all of the read if `None` (never 0, so an empty
    /// read, a zero-length datagram, yields no datagram).
    fn step(&self) -> usize {
        self.segment_size.map_or(self.len, usize::from).max(1)
    }

    /// The datagrams in `buf` (the buffer this read filled).
    #[cfg(test)]
    pub fn datagrams<'a>(&self, buf: &'a [u8]) -> std::slice::Chunks<'a, u8> {
        buf[..self.len].chunks(self.step())
    }

    /// The same, to open in place.
    pub fn datagrams_mut<'a>(&self, buf: &'a mut [u8]) -> std::slice::ChunksMut<'a, u8> {
        buf[..self.len].chunks_mut(self.step())
    }
}

/// Reads one datagram, or with UDP GRO enabled one coalesced run of them, into `buf`.
pub fn recv_segments(socket: impl AsFd, buf: &mut [u8]) -> io::Result<Received> {
    let meta = sys::recv_msg(socket.as_fd(), buf)?;
    let from = meta
        .from
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "a datagram without an IP source address"))?;
    Ok(Received { len: meta.len, from, segment_size: meta.gro_segment_size, truncated: meta.truncated })
}

/// One received message of an [`MmsgBatch`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Datagram {
    /// Bytes written into its buffer.
    pub len: usize,
    /// The sender (port 0 on raw sockets); `None` if the kernel gave no IP address.
    pub from: Option<SocketAddr>,
    /// It was longer than its buffer and the tail is lost.
    pub truncated: bool,
}

/// How an [`MmsgBatch::send`] went.
#[derive(Debug, Default)]
pub struct BatchSent {
    /// Messages the kernel took.
    pub sent: usize,
    /// Messages that were not sent.
    pub failed: usize,
    /// The last error, if any failed.
    pub error: Option<io::Error>,
}

/// Up to [`MMSG_BATCH`] datagrams for one `sendmmsg`, each a range of one caller buffer with its
/// own destination, and room for the results of one `recvmmsg`. The tables are allocated once in
/// `new`; pushing, sending and receiving never allocate. Pending sends and received results are
/// kept apart, so one batch can serve both directions.
pub struct MmsgBatch {
    /// Never grows past `MMSG_BATCH` (its initial capacity), so it never reallocates.
    pending: Vec<(Range<usize>, SockAddr)>,
    received: Box<[RecvMeta]>,
    datagrams: Box<[Datagram]>,
    received_len: usize,
}

impl Default for MmsgBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MmsgBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmsgBatch").field("pending", &self.pending.len()).field("received", &self.received_len).finish()
    }
}

impl MmsgBatch {
    pub fn new() -> Self {
        MmsgBatch {
            pending: Vec::with_capacity(MMSG_BATCH),
            received: vec![RecvMeta::default(); MMSG_BATCH].into_boxed_slice(),
            datagrams: vec![Datagram::default(); MMSG_BATCH].into_boxed_slice(),
            received_len: 0,
        }
    }

    /// Queues `buf[range]` (of the buffer later given to `send`) for `destination` (port 0 for the
    /// raw ESP socket). False when the batch is full: send it, then push again.
    #[must_use]
    pub fn push(&mut self, range: Range<usize>, destination: SocketAddr) -> bool {
        if self.pending.len() >= MMSG_BATCH {
            return false;
        }
        self.pending.push((range, SockAddr::from(destination)));
        true
    }

    /// Messages queued and not yet sent.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.pending.len() >= MMSG_BATCH
    }

    /// Sends every queued message (each tried once) with as few `sendmmsg` calls as errors allow,
    /// then empties the batch. `failed(index, error)` is called for each message not sent, by its
    /// push order: an error skips just that message, except `WouldBlock` (socket buffer full),
    /// which fails it and all after it. Returns how many were sent.
    ///
    /// Panics if a pushed range is outside `buf`.
    pub fn send_with(&mut self, socket: impl AsFd, buf: &[u8], mut failed: impl FnMut(usize, &io::Error)) -> usize {
        let fd = socket.as_fd();
        let total = self.pending.len();
        let mut next = 0;
        let mut sent = 0;
        while next < total {
            let messages = self.pending[next..].iter().map(|(range, address)| (&buf[range.clone()], address));
            match sys::send_mmsg(fd, messages) {
                Ok(0) => {
                    let error = io::Error::from(io::ErrorKind::WriteZero);
                    (next..total).for_each(|index| failed(index, &error));
                    break;
                }
                Ok(count) => {
                    next += count;
                    sent += count;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    (next..total).for_each(|index| failed(index, &error));
                    break;
                }
                Err(error) => {
                    failed(next, &error);
                    next += 1;
                }
            }
        }
        self.pending.clear();
        sent
    }

    /// [`send_with`](Self::send_with), summed up.
    pub fn send(&mut self, socket: impl AsFd, buf: &[u8]) -> BatchSent {
        let mut report = BatchSent::default();
        let (mut failed, mut last_error) = (0, None);
        report.sent = self.send_with(socket, buf, |_, error| {
            failed += 1;
            // io::Error is not Clone; the OS code (or else the kind) is what callers use.
            last_error =
                Some(error.raw_os_error().map_or_else(|| io::Error::from(error.kind()), io::Error::from_raw_os_error));
        });
        report.failed = failed;
        report.error = last_error;
        report
    }

    /// Receives up to `min(bufs.len(), MMSG_BATCH)` datagrams, one per buffer, with one
    /// `recvmmsg` (MSG_WAITFORONE: a blocking socket waits for the first only). Returns how many;
    /// [`received`](Self::received) describes them, in the order of `bufs`. On raw IPv4 sockets
    /// each buffer starts with the IP header, as with `recv_from`.
    pub fn recv<B: AsMut<[u8]>>(&mut self, socket: impl AsFd, bufs: &mut [B]) -> io::Result<usize> {
        self.received_len = 0;
        let count = loop {
            match sys::recv_mmsg(socket.as_fd(), bufs, &mut self.received) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                result => break result?,
            }
        };
        for (datagram, meta) in self.datagrams.iter_mut().zip(&self.received[..count]) {
            *datagram = Datagram { len: meta.len, from: meta.from, truncated: meta.truncated };
        }
        self.received_len = count;
        Ok(count)
    }

    /// The datagrams of the last `recv`.
    pub fn received(&self) -> &[Datagram] {
        &self.datagrams[..self.received_len]
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv6Addr, UdpSocket};
    use std::time::{Duration, Instant};

    use super::*;

    const WAIT: Duration = Duration::from_secs(2);

    fn socket() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind on loopback");
        socket.set_read_timeout(Some(WAIT)).unwrap();
        socket
    }

    fn address(socket: &UdpSocket) -> SocketAddr {
        socket.local_addr().unwrap()
    }

    /// `count` segments of `size` bytes and a `tail`-byte last one; every byte tells its segment.
    fn payload(count: usize, size: usize, tail: usize) -> Vec<u8> {
        let mut buf = Vec::new();
        for segment in 0..=count {
            let len = if segment == count { tail } else { size };
            buf.extend((0..len).map(|index| (segment * 31 + index * 7) as u8));
        }
        buf
    }

    /// Plain reads until `expected` datagrams came (or the read timeout).
    fn receive_plain(socket: &UdpSocket, expected: usize) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; 65_536];
        (0..expected)
            .map(|_| {
                let (len, from) = socket.recv_from(&mut buf).expect("a datagram before the timeout");
                (buf[..len].to_vec(), from)
            })
            .collect()
    }

    fn expected_datagrams(buf: &[u8], segment_size: usize) -> Vec<Vec<u8>> {
        buf.chunks(segment_size).map(<[u8]>::to_vec).collect()
    }

    #[test]
    fn this_kernel_has_gso_and_gro() {
        let socket = socket();
        assert!(probe_gso(&socket), "UDP_SEGMENT getsockopt failed: no UDP GSO on this kernel");
        enable_gro(&socket).expect("UDP_GRO setsockopt");
        assert_eq!(getsockopt(&socket, sockopt::UdpGroSegment), Ok(true));
    }

    #[test]
    fn gso_send_arrives_at_a_plain_receiver_as_separate_datagrams() {
        let (sender, receiver) = (socket(), socket());
        let buf = payload(10, 1400, 100);
        assert_eq!(buf.len(), 14_100);
        assert_eq!(send_segments(&sender, address(&receiver), &buf, 1400).unwrap(), buf.len());
        let got = receive_plain(&receiver, 11);
        assert!(got.iter().all(|(_, from)| *from == address(&sender)));
        let got: Vec<Vec<u8>> = got.into_iter().map(|(datagram, _)| datagram).collect();
        assert_eq!(got, expected_datagrams(&buf, 1400));
        assert_eq!(got[10].len(), 100);
    }

    #[test]
    fn gro_receiver_gets_a_gso_send_back_in_one_read() {
        let (sender, receiver) = (socket(), socket());
        enable_gro(&receiver).unwrap();
        let buf = payload(10, 1400, 100);
        send_segments(&sender, address(&receiver), &buf, 1400).unwrap();
        let mut space = vec![0u8; GRO_BUFFER_LEN];
        let mut got = Vec::new();
        let mut reads = Vec::new();
        while got.len() < 11 {
            let received = recv_segments(&receiver, &mut space).expect("a read before the timeout");
            assert_eq!(received.from, address(&sender));
            assert!(!received.truncated);
            got.extend(received.datagrams(&space).map(<[u8]>::to_vec));
            reads.push(received);
        }
        assert_eq!(got, expected_datagrams(&buf, 1400));
        // Linux >= 5.0 delivers a loopback GSO send to a GRO socket whole.
        assert_eq!(reads.len(), 1, "not coalesced: {reads:?}");
        assert_eq!(reads[0].segment_size, Some(1400));
        assert_eq!(reads[0].len, 14_100);
    }

    #[test]
    fn gro_receiver_gets_plain_datagrams_one_by_one() {
        let (sender, receiver) = (socket(), socket());
        enable_gro(&receiver).unwrap();
        let mut space = vec![0u8; GRO_BUFFER_LEN];
        for len in [1400, 1400, 20] {
            sender.send_to(&vec![7u8; len], address(&receiver)).unwrap();
        }
        for len in [1400, 1400, 20] {
            let received = recv_segments(&receiver, &mut space).unwrap();
            assert_eq!((received.len, received.segment_size), (len, None));
            assert_eq!(received.datagrams(&space).count(), 1);
        }
    }

    #[test]
    fn small_receive_buffers_report_truncation() {
        let (sender, receiver) = (socket(), socket());
        sender.send_to(&[1u8; 300], address(&receiver)).unwrap();
        let mut space = [0u8; 100];
        let received = recv_segments(&receiver, &mut space).unwrap();
        assert!(received.truncated);
        assert_eq!(received.len, 100);
    }

    #[test]
    fn fallback_sends_the_same_datagrams() {
        let (sender, receiver) = (socket(), socket());
        let buf = payload(10, 1400, 100);
        assert_eq!(send_segments_fallback(&sender, address(&receiver), &buf, 1400).unwrap(), buf.len());
        let got: Vec<Vec<u8>> = receive_plain(&receiver, 11).into_iter().map(|(datagram, _)| datagram).collect();
        assert_eq!(got, expected_datagrams(&buf, 1400));

        let mut without = SegmentSender::without_gso();
        assert_eq!(without.send(&sender, address(&receiver), &buf, 1400).unwrap(), buf.len());
        let got: Vec<Vec<u8>> = receive_plain(&receiver, 11).into_iter().map(|(datagram, _)| datagram).collect();
        assert_eq!(got, expected_datagrams(&buf, 1400));
        assert!(!without.uses_gso());
    }

    #[test]
    fn segment_sender_with_gso_sends_the_same_datagrams() {
        let (sender, receiver) = (socket(), socket());
        let mut with = SegmentSender::new(&sender);
        assert!(with.uses_gso());
        let buf = payload(3, 1000, 1);
        assert_eq!(with.send(&sender, address(&receiver), &buf, 1000).unwrap(), buf.len());
        let got: Vec<Vec<u8>> = receive_plain(&receiver, 4).into_iter().map(|(datagram, _)| datagram).collect();
        assert_eq!(got, expected_datagrams(&buf, 1000));
        assert!(with.uses_gso());
    }

    #[test]
    fn sends_beyond_the_per_call_limits_are_split() {
        let (sender, receiver) = (socket(), socket());
        enable_gro(&receiver).unwrap();
        let address = address(&receiver);
        // 100 segments: more than UDP_MAX_SEGMENTS. 50 x 1450 bytes: more than 65,507 bytes.
        for (count, size) in [(100usize, 300usize), (50, 1450)] {
            let buf = payload(count - 1, size, size);
            assert_eq!(send_segments(&sender, address, &buf, size as u16).unwrap(), buf.len());
            let mut space = vec![0u8; GRO_BUFFER_LEN];
            let mut got = Vec::new();
            while got.len() < count {
                let received = recv_segments(&receiver, &mut space).unwrap();
                assert!(received.len <= UDP_MAX_SEGMENTS * size && received.len <= MAX_UDP_PAYLOAD_V4);
                got.extend(received.datagrams(&space).map(<[u8]>::to_vec));
            }
            assert_eq!(got, expected_datagrams(&buf, size));
        }
    }

    #[test]
    fn the_kernel_limits_are_what_the_constants_say() {
        let (sender, receiver) = (socket(), socket());
        enable_gro(&receiver).unwrap();
        let fd = sender.as_fd();
        let to = SockAddr::from(address(&receiver));
        // 64 segments and 65,507 bytes in one call are fine everywhere ...
        assert_eq!(sys::send_msg(fd, &to, &[0u8; 64 * 10], Some(10)).unwrap(), 640);
        assert_eq!(sys::send_msg(fd, &to, &vec![0u8; MAX_UDP_PAYLOAD_V4], Some(1400)).unwrap(), MAX_UDP_PAYLOAD_V4);
        // ... one more byte is too large a UDP payload.
        let too_long = sys::send_msg(fd, &to, &vec![0u8; MAX_UDP_PAYLOAD_V4 + 1], Some(1400)).unwrap_err();
        assert_eq!(too_long.raw_os_error(), Some(libc::EMSGSIZE));
        // UDP_MAX_SEGMENTS: 64 on kernels before 2024, 128 since (6.18 here); never 129.
        let segments_129 = sys::send_msg(fd, &to, &[0u8; 129 * 10], Some(10));
        assert_eq!(segments_129.unwrap_err().raw_os_error(), Some(libc::EINVAL));
        let segments_128 = sys::send_msg(fd, &to, &[0u8; 128 * 10], Some(10));
        eprintln!("128 segments in one GSO send: {segments_128:?}");
        assert!(segments_per_call(&address(&receiver), 0).is_err());
        assert!(segments_per_call(&address(&receiver), u16::MAX).is_err());
        assert_eq!(segments_per_call(&address(&receiver), 1400).unwrap(), 46);
        assert_eq!(segments_per_call(&address(&receiver), 100).unwrap(), 64);
    }

    #[test]
    fn mmsg_batches_round_trip_datagrams_of_many_sizes_and_sources() {
        let senders = [socket(), socket()];
        let receivers = [socket(), socket()];
        // Each sender queues 16 datagrams alternating between the two receivers: 32 in all.
        let mut expected: Vec<Vec<(Vec<u8>, SocketAddr)>> = vec![Vec::new(), Vec::new()];
        for (sender_index, sender) in senders.iter().enumerate() {
            let mut buf = Vec::new();
            let mut batch = MmsgBatch::new();
            for message in 0..16usize {
                let len = 1 + (sender_index * 16 + message) * 97 % 1500;
                let start = buf.len();
                buf.extend((0..len).map(|index| (sender_index * 100 + message + index) as u8));
                let to = message % 2;
                assert!(batch.push(start..buf.len(), address(&receivers[to])));
                expected[to].push((buf[start..].to_vec(), address(sender)));
            }
            assert_eq!(batch.len(), 16);
            let report = batch.send(sender, &buf);
            assert_eq!((report.sent, report.failed), (16, 0), "{report:?}");
            assert!(batch.is_empty());
        }
        let mut batch = MmsgBatch::new();
        let mut bufs = vec![vec![0u8; 2048]; MMSG_BATCH];
        for (receiver, expected) in receivers.iter().zip(&expected) {
            let mut got = Vec::new();
            while got.len() < expected.len() {
                let count = batch.recv(receiver, &mut bufs).expect("datagrams before the timeout");
                assert_eq!(count, batch.received().len());
                for (datagram, buf) in batch.received().iter().zip(&bufs) {
                    assert!(!datagram.truncated);
                    got.push((buf[..datagram.len].to_vec(), datagram.from.unwrap()));
                }
            }
            // Per sender, order is kept; across senders it is by arrival (here: sender 0 first).
            assert_eq!(&got, expected);
        }
    }

    #[test]
    fn an_mmsg_batch_skips_a_failing_message_and_sends_the_rest() {
        let (sender, receiver) = (socket(), socket());
        let buf: Vec<u8> = (0..=255).collect();
        let mut batch = MmsgBatch::new();
        assert!(batch.push(0..10, address(&receiver)));
        // An IPv6 destination on an IPv4 socket fails (EAFNOSUPPORT/EINVAL) on its own.
        assert!(batch.push(10..20, SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 9)));
        assert!(batch.push(20..30, address(&receiver)));
        let mut failures = Vec::new();
        let sent = batch.send_with(&sender, &buf, |index, error| failures.push((index, error.kind())));
        assert_eq!(sent, 2);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0, 1);
        let got: Vec<Vec<u8>> = receive_plain(&receiver, 2).into_iter().map(|(datagram, _)| datagram).collect();
        assert_eq!(got, vec![buf[0..10].to_vec(), buf[20..30].to_vec()]);
    }

    #[test]
    fn an_mmsg_batch_holds_64_and_refuses_more() {
        let (sender, receiver) = (socket(), socket());
        let buf = vec![5u8; 64];
        let mut batch = MmsgBatch::new();
        for index in 0..MMSG_BATCH {
            assert!(batch.push(index..index + 1, address(&receiver)));
        }
        assert!(batch.is_full());
        assert!(!batch.push(0..1, address(&receiver)));
        assert_eq!(batch.send(&sender, &buf).sent, MMSG_BATCH);
        let mut bufs = vec![[0u8; 4]; 80];
        let mut received = 0;
        while received < MMSG_BATCH {
            received += batch.recv(&receiver, &mut bufs).unwrap();
        }
        assert_eq!(received, MMSG_BATCH);
    }

    #[test]
    fn mmsg_batches_work_on_a_raw_esp_socket_when_allowed() {
        use socket2::{Domain, Protocol, Socket, Type};
        // Needs CAP_NET_RAW; without it there is nothing to check here.
        let Ok(raw) = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(50))) else {
            eprintln!("no CAP_NET_RAW: raw ESP batch test skipped");
            return;
        };
        raw.set_read_timeout(Some(WAIT)).unwrap();
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        raw.bind(&loopback.into()).unwrap();
        // Fake ESP packets: an SPI no SA has, a marker, and a per-packet length.
        let marker = *b"meshd-batch-io-raw";
        let mut buf = Vec::new();
        let mut batch = MmsgBatch::new();
        for packet in 0..5usize {
            let start = buf.len();
            buf.extend_from_slice(&[0xfe, 0xed, 0xfa, packet as u8, 0, 0, 0, 1]);
            buf.extend_from_slice(&marker);
            buf.extend((0..packet * 100).map(|index| index as u8));
            assert!(batch.push(start..buf.len(), loopback));
        }
        let report = batch.send(&raw, &buf);
        assert_eq!((report.sent, report.failed), (5, 0), "{report:?}");
        let mut bufs = vec![vec![0u8; 2048]; 8];
        let mut got = Vec::new();
        while got.len() < 5 {
            batch.recv(&raw, &mut bufs).expect("our packets back before the timeout");
            for (datagram, buf) in batch.received().iter().zip(&bufs) {
                // IPv4 raw sockets deliver the IP header too.
                let esp = &buf[usize::from(buf[0] & 0x0f) * 4..datagram.len];
                if esp.len() >= 8 + marker.len() && esp[8..8 + marker.len()] == marker {
                    assert_eq!(datagram.from, Some(loopback));
                    got.push(esp.to_vec());
                }
            }
        }
        let sent: Vec<Vec<u8>> = {
            let mut offset = 0;
            (0..5usize)
                .map(|packet| {
                    let len = 8 + marker.len() + packet * 100;
                    offset += len;
                    buf[offset - len..offset].to_vec()
                })
                .collect()
        };
        assert_eq!(got, sent);
    }

    /// Sends 1400-byte datagrams to a loopback receiver thread for `duration`, in `mode`;
    /// returns (datagrams sent per second, datagrams received per second).
    fn throughput(mode: &str, duration: Duration) -> (f64, f64) {
        const SIZE: usize = 1400;
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let _ = socket2::SockRef::from(&receiver).set_recv_buffer_size(4 << 20);
        let gro = mode.ends_with("+gro");
        if gro {
            enable_gro(&receiver).unwrap();
        }
        let to = address(&receiver);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let counter = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut received = 0u64;
                let mut batch = MmsgBatch::new();
                let mut bufs = vec![vec![0u8; SIZE]; MMSG_BATCH];
                let mut space = vec![0u8; GRO_BUFFER_LEN];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if gro {
                        if let Ok(read) = recv_segments(&receiver, &mut space) {
                            received += read.datagrams(&space).count() as u64;
                        }
                    } else if let Ok(count) = batch.recv(&receiver, &mut bufs) {
                        received += count as u64;
                    }
                }
                received
            })
        };
        let segments = MAX_UDP_PAYLOAD_V4 / SIZE; // 46
        let buf = vec![0x5au8; segments * SIZE];
        let mut batch = MmsgBatch::new();
        let mut sent = 0u64;
        let start = Instant::now();
        while start.elapsed() < duration {
            match mode {
                "one-by-one" => {
                    for datagram in buf.chunks(SIZE) {
                        if sender.send_to(datagram, to).is_ok() {
                            sent += 1;
                        }
                    }
                }
                "sendmmsg" => {
                    for index in 0..segments {
                        let _ = batch.push(index * SIZE..(index + 1) * SIZE, to);
                    }
                    sent += batch.send(&sender, &buf).sent as u64;
                }
                _ => sent += (send_segments(&sender, to, &buf, SIZE as u16).unwrap_or(0) / SIZE) as u64,
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let received = counter.join().unwrap();
        (sent as f64 / elapsed, received as f64 / elapsed)
    }

    /// `cargo test -p meshd --release batch_io::tests::throughput -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check; run it by hand"]
    fn throughput_one_by_one_vs_sendmmsg_vs_gso() {
        let duration = Duration::from_secs(1);
        let modes = ["one-by-one", "sendmmsg", "gso", "gso+gro"];
        let results: Vec<(f64, f64)> = modes.iter().map(|mode| throughput(mode, duration)).collect();
        let (_, base) = results[0];
        println!("1400-byte UDP datagrams over loopback, receiver thread draining (recvmmsg, or recvmsg with GRO)");
        println!("{:<12} {:>14} {:>14} {:>8}", "mode", "sent/s", "received/s", "ratio");
        for (mode, (sent, received)) in modes.iter().zip(&results) {
            println!("{mode:<12} {sent:>14.0} {received:>14.0} {:>7.2}x", received / base);
        }
    }
}
