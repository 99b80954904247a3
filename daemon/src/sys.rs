//! The only place with `unsafe`: socket options that neither `nix` nor `socket2` expose.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

// The virtio-net header (PACKET_VNET_HDR) in front of each frame in a TX ring slot.
use crate::offload::virtio_net::{VirtioNetHeader, HEADER_LEN as VNET_HEADER_LEN};

fn set_int_option(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is a live descriptor borrowed for the call; the option value is a c_int on the
    // stack whose size is passed alongside, as setsockopt(2) requires for these options.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets DF on every IPv4 packet and never fragments locally (IP_PMTUDISC_DO): an ESP packet too
/// large for the path fails with EMSGSIZE instead of leaving as fragments.
pub fn forbid_fragmentation_v4(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_int_option(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO)
}

/// The IPv6 counterpart: the kernel never fragments what this socket sends (IPV6_PMTUDISC_DO).
pub fn forbid_fragmentation_v6(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DO)
}

/// Lets the kernel write flow label 0 on this IPv6 socket's packets instead of one of its own
/// hashes (IPV6_AUTOFLOWLABEL off), so that packets meshd writes itself can carry the same.
pub fn disable_auto_flow_label(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_AUTOFLOWLABEL, 0)
}

/// Sets the MTU of interface `name` (SIOCSIFMTU), e.g. to retune an overlay interface live.
pub fn set_interface_mtu(name: &str, mtu: u16) -> io::Result<()> {
    let mut request = interface_request(name)?;
    request.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
    interface_ioctl(libc::SIOCSIFMTU, &request)
}

/// Sets the MAC of Ethernet interface `name` (SIOCSIFHWADDR). Setting the MAC it has already
/// still tells the kernel's listeners of an address change: with `arp_notify` / `ndisc_notify`
/// on, the kernel then announces the interface's addresses (gratuitous ARP, unsolicited NA).
pub fn set_interface_mac(name: &str, mac: [u8; 6]) -> io::Result<()> {
    let mut request = interface_request(name)?;
    // SAFETY: writing plain data into the `ifru_hwaddr` member of the zeroed union; the kernel
    // reads exactly that member for SIOCSIFHWADDR.
    unsafe {
        request.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
        for (slot, byte) in request.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac) {
            *slot = byte as libc::c_char;
        }
    }
    interface_ioctl(libc::SIOCSIFHWADDR, &request)
}

/// An `ifreq` naming interface `name`, the rest zero.
fn interface_request(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data (a name array and a union of integers); all zeros is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= request.ifr_name.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("interface name {name:?} is too long")));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    Ok(request)
}

/// One interface ioctl (`SIOCSIF*`) with `request` on a throwaway socket.
fn interface_ioctl(operation: libc::Ioctl, request: &libc::ifreq) -> io::Result<()> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    // SAFETY: the socket is live for the call; `request` is an initialised ifreq with a
    // NUL-terminated name (the array was zeroed and the name is shorter), as SIOCSIF* reads.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), operation, request) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the socket's receive and send buffers to `bytes`, above net.core.rmem_max/wmem_max
/// (SO_RCVBUFFORCE/SO_SNDBUFFORCE need CAP_NET_ADMIN, which meshd has).
pub fn force_buffer_sizes(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes)?;
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, bytes)
}

// ---------------------------------------------------------------------------------------------
// Batched and segmented socket IO for `datapath::batch_io` (issue 4). `nix::sys::socket::sendmsg`
// allocates its control-message buffer on every call and its mmsg API ties the headers to the
// buffers' lifetime, so these wrap the syscalls directly. Every header, iovec, address and
// control buffer lives on the stack of the call that uses it: nothing here allocates, and no
// pointer outlives the syscall it was built for.

/// The most messages one [`send_mmsg`] or [`recv_mmsg`] call handles.
pub const MMSG_MAX: usize = 64;

/// Control-message space aligned for `cmsghdr` (CMSG_FIRSTHDR needs `size_t` alignment).
#[repr(C, align(8))]
struct CmsgSpace([u8; 128]);

/// What one received datagram (or GRO-coalesced run of datagrams) was.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes written into the buffer.
    pub len: usize,
    /// The sender; `None` only if the kernel gave no IPv4/IPv6 address.
    pub from: Option<std::net::SocketAddr>,
    /// The datagram was larger than the buffer (MSG_TRUNC); its tail is lost.
    pub truncated: bool,
    /// With UDP_GRO enabled: the kernel coalesced datagrams of this size (the last may be shorter).
    pub gro_segment_size: Option<u16>,
}

/// Reads an IPv4 or IPv6 socket address the kernel wrote into `storage` (`len` bytes).
fn socket_addr_from_storage(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    let len = len as usize;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the kernel wrote a sockaddr_in, `len` says it wrote all of
            // it, and sockaddr_storage is larger than and at least as aligned as sockaddr_in.
            let address = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(
                SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr)),
                    u16::from_be(address.sin_port),
                )
                .into(),
            )
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let address = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(
                SocketAddrV6::new(
                    Ipv6Addr::from(address.sin6_addr.s6_addr),
                    u16::from_be(address.sin6_port),
                    u32::from_be(address.sin6_flowinfo),
                    address.sin6_scope_id,
                )
                .into(),
            )
        }
        _ => None,
    }
}

fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain data (pointers, lengths, flags); all zeros is the valid empty header
    // (null name, no iovecs, no control data), and the only way to build one on musl, whose
    // msghdr has private padding fields.
    unsafe { std::mem::zeroed() }
}

/// One `sendmsg(2)` of `data` to `destination`; with `segment_size`, a UDP_SEGMENT control message
/// asks the kernel to split `data` into datagrams of that size (UDP GSO). Flags: none.
pub fn send_msg(
    fd: BorrowedFd<'_>,
    destination: &socket2::SockAddr,
    data: &[u8],
    segment_size: Option<u16>,
) -> io::Result<usize> {
    let mut iov = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
    let mut control = CmsgSpace([0; 128]);
    let mut header = zeroed_msghdr();
    header.msg_name = destination.as_ptr().cast_mut().cast();
    header.msg_namelen = destination.len();
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    if let Some(size) = segment_size {
        const DATA_LEN: libc::c_uint = std::mem::size_of::<u16>() as libc::c_uint;
        header.msg_control = control.0.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
        header.msg_controllen = unsafe { libc::CMSG_SPACE(DATA_LEN) } as _;
        // SAFETY: msg_control points at `control`, 128 zeroed bytes aligned for cmsghdr, and
        // msg_controllen (CMSG_SPACE(2) = 24 on 64-bit) fits in it, so CMSG_FIRSTHDR returns a
        // non-null header inside it with room for CMSG_LEN(2) bytes; the u16 is written unaligned.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&header);
            debug_assert!(!cmsg.is_null());
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(DATA_LEN) as _;
            libc::CMSG_DATA(cmsg).cast::<u16>().write_unaligned(size);
        }
    }
    // SAFETY: `fd` is a live descriptor borrowed for the call; `header` points at `iov` (which
    // points at `data`), at `destination`'s storage with its length, and at `control`; all of them
    // outlive the call, and sendmsg only reads through these pointers.
    let rc = unsafe { libc::sendmsg(fd.as_raw_fd(), &header, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// One `recvmsg(2)` into `buf`, with the sender's address and the UDP_GRO control message (if the
/// socket has UDP_GRO enabled and the kernel coalesced datagrams).
pub fn recv_msg(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<RecvMeta> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = CmsgSpace([0; 128]);
    // SAFETY: sockaddr_storage is plain data; all zeros is a valid (AF_UNSPEC) value.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut header = zeroed_msghdr();
    header.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    header.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.0.as_mut_ptr().cast();
    header.msg_controllen = control.0.len() as _;
    // SAFETY: `fd` is a live descriptor borrowed for the call; `header` points at `iov` (which
    // points at `buf`, writable for `buf.len()` bytes), at `name` and at `control` with their true
    // sizes; all of them outlive the call and nothing else references them meanwhile.
    let rc = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut header, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut gro_segment_size = None;
    // SAFETY: after a successful recvmsg, msg_control/msg_controllen describe the control data
    // the kernel wrote into `control` (still alive and unaliased); CMSG_FIRSTHDR/CMSG_NXTHDR stay
    // within msg_controllen and return null at the end, and the int is read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP
                && (*cmsg).cmsg_type == libc::UDP_GRO
                && (*cmsg).cmsg_len as usize >= libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as _) as usize
            {
                let size = libc::CMSG_DATA(cmsg).cast::<libc::c_int>().read_unaligned();
                gro_segment_size = u16::try_from(size).ok().filter(|&size| size > 0);
            }
            cmsg = libc::CMSG_NXTHDR(&header, cmsg);
        }
    }
    Ok(RecvMeta {
        len: rc as usize,
        from: socket_addr_from_storage(&name, header.msg_namelen),
        truncated: header.msg_flags & libc::MSG_TRUNC != 0,
        gro_segment_size,
    })
}

/// One `sendmmsg(2)` of up to [`MMSG_MAX`] messages (more are ignored), each one datagram to its
/// own address. Returns how many the kernel took from the front; an error means the first failed.
pub fn send_mmsg<'a>(
    fd: BorrowedFd<'_>,
    messages: impl IntoIterator<Item = (&'a [u8], &'a socket2::SockAddr)>,
) -> io::Result<usize> {
    let mut iovecs = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MMSG_MAX];
    // SAFETY: mmsghdr is plain data; all zeros is a valid empty header.
    let mut headers: [libc::mmsghdr; MMSG_MAX] = unsafe { std::mem::zeroed() };
    let mut count = 0;
    for (data, destination) in messages.into_iter().take(MMSG_MAX) {
        iovecs[count] = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
        headers[count].msg_hdr.msg_name = destination.as_ptr().cast_mut().cast();
        headers[count].msg_hdr.msg_namelen = destination.len();
        count += 1;
    }
    if count == 0 {
        return Ok(0);
    }
    let iovec_base = iovecs.as_mut_ptr();
    for (index, header) in headers[..count].iter_mut().enumerate() {
        header.msg_hdr.msg_iov = iovec_base.wrapping_add(index);
        header.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `fd` is a live descriptor borrowed for the call; the first `count` headers each point
    // at their own element of `iovecs` (alive on this stack frame), which points at a message
    // borrowed for 'a, and at a destination borrowed for 'a with its length. sendmmsg reads those
    // and writes only the headers' msg_len.
    let rc = unsafe { libc::sendmmsg(fd.as_raw_fd(), headers.as_mut_ptr(), count as libc::c_uint, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// One `recvmmsg(2)` into up to [`MMSG_MAX`] of `bufs` (one datagram each), with MSG_WAITFORONE:
/// on a blocking socket it waits for the first datagram only. Fills `out[..n]` and returns `n`.
pub fn recv_mmsg<B: AsMut<[u8]>>(fd: BorrowedFd<'_>, bufs: &mut [B], out: &mut [RecvMeta]) -> io::Result<usize> {
    let count = bufs.len().min(out.len()).min(MMSG_MAX);
    if count == 0 {
        return Ok(0);
    }
    let mut iovecs = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MMSG_MAX];
    // SAFETY: sockaddr_storage and mmsghdr are plain data; all zeros is valid for both.
    let mut names: [libc::sockaddr_storage; MMSG_MAX] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut headers: [libc::mmsghdr; MMSG_MAX] = unsafe { std::mem::zeroed() };
    for (iovec, buf) in iovecs.iter_mut().zip(bufs.iter_mut()).take(count) {
        let buf = buf.as_mut();
        *iovec = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    }
    let iovec_base = iovecs.as_mut_ptr();
    let name_base = names.as_mut_ptr();
    for (index, header) in headers[..count].iter_mut().enumerate() {
        header.msg_hdr.msg_iov = iovec_base.wrapping_add(index);
        header.msg_hdr.msg_iovlen = 1;
        header.msg_hdr.msg_name = name_base.wrapping_add(index).cast();
        header.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    }
    // SAFETY: `fd` is a live descriptor borrowed for the call; the first `count` headers each point
    // at their own iovec (pointing at one of `bufs`, mutably borrowed and writable for its length)
    // and their own `names` element with its true size; all live on this frame or are borrowed
    // for the call, and nothing else touches them until it returns. The null timeout is allowed.
    let rc = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            headers.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let received = rc as usize;
    for ((meta, header), name) in out.iter_mut().zip(&headers).zip(&names).take(received) {
        *meta = RecvMeta {
            len: header.msg_len as usize,
            from: socket_addr_from_storage(name, header.msg_hdr.msg_namelen),
            truncated: header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            gro_segment_size: None,
        };
    }
    Ok(received)
}

/// Takes over the descriptor of a TAP queue tun-rs made: meshd reads and writes its queues
/// itself (`crate::tap::TapQueue`), virtio-net header included, so it never needs tun-rs's
/// view of the device again.
pub fn tap_queue_fd(device: tun_rs::SyncDevice) -> std::os::fd::OwnedFd {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: `into_raw_fd` gives up the device's ownership of its open descriptor without
    // closing it, so the `OwnedFd` made from it is that descriptor's one owner.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(device.into_raw_fd()) }
}

/// Receives into `buf` on a Unix stream, with the descriptors (SCM_RIGHTS, at most `MAX` of
/// them) that came along; they are close-on-exec and owned by the caller.
pub fn recv_with_fds<const MAX: usize>(
    stream: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<std::os::fd::OwnedFd>)> {
    use std::os::fd::{FromRawFd, RawFd};

    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

    let mut space = nix::cmsg_space!([RawFd; MAX]);
    let mut iov = [io::IoSliceMut::new(buf)];
    let message = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    // A truncated control message (more descriptors than MAX) is an error: the kernel closed
    // the ones that did not fit, so the set is incomplete.
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel installed each of these descriptors in our table for this
            // message alone (SCM_RIGHTS); nothing else in the process knows or owns them.
            fds.extend(received.into_iter().map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok((message.bytes, fds))
}

/// TPACKET_V2 (`enum tpacket_versions` in linux/if_packet.h).
const TPACKET_V2: libc::c_int = 1;
/// Where a TPACKET_V2 frame's data starts: after its header, TPACKET_ALIGN(sizeof(tpacket2_hdr)).
/// The kernel takes outgoing data from there (TPACKET2_HDRLEN - sizeof(sockaddr_ll)).
const TX_FRAME_DATA_OFFSET: usize = 32;
/// Offsets in `struct tpacket2_hdr`.
const TX_FRAME_STATUS: usize = 0;
const TX_FRAME_LEN: usize = 4;
const PAGE_LEN: usize = 4096;

/// An AF_PACKET socket bound to one interface with a PACKET_TX_RING (TPACKET_V2): the caller
/// writes whole link-layer frames into the ring's slots and one `send` hands every filled slot
/// to the interface's queue. Not PACKET_QDISC_BYPASS: that path skips the taps too, and an
/// operator's tcpdump on the underlay must see every ESP packet meshd sends. Protocol 0, so the
/// socket never receives.
///
/// Each frame goes behind a virtio-net header whose `hdr_len` is the whole frame (no offloads
/// asked): the kernel then copies the frame into the packet's own buffer at once instead of
/// pointing the packet at the ring's pages, which it had to copy again (fresh pages each time)
/// wherever the packet crossed into another network namespace (a veth) or was held, and which
/// kept the slot busy until then.
pub struct PacketTxRing {
    fd: std::os::fd::OwnedFd,
    map: std::ptr::NonNull<u8>,
    map_len: usize,
    frame_size: usize,
    frame_count: usize,
    /// The next slot to fill.
    head: usize,
    /// Slots filled since the last `send`.
    pending: usize,
}

// SAFETY: the ring is a private mapping of this socket: the struct owns it (unmapped on drop) and
// every access goes through `&mut self`, so moving it to another thread moves sole access with it.
unsafe impl Send for PacketTxRing {}

impl PacketTxRing {
    /// A ring of at least `frames` slots, each holding a frame of up to `max_frame_len` bytes,
    /// on interface `interface_index`.
    pub fn open(interface_index: u32, max_frame_len: usize, frames: usize) -> io::Result<PacketTxRing> {
        use std::os::fd::{AsFd, FromRawFd};
        if max_frame_len > usize::from(u16::MAX) {
            // The virtio-net header's hdr_len could not cover such a frame.
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a TX ring frame is at most 65535 bytes"));
        }
        // SAFETY: socket(2) with constant arguments; the descriptor it returns is owned below.
        let raw =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        set_int_option(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_VERSION, TPACKET_V2)?;
        // A frame the driver refuses is skipped (its slot freed) instead of stopping the ring.
        set_int_option(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_LOSS, 1)?;
        // Before the ring: it sizes the slots' headers.
        set_int_option(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1)?;
        let frame_size = (TX_FRAME_DATA_OFFSET + VNET_HEADER_LEN + max_frame_len).next_power_of_two();
        let block_size = frame_size.max(PAGE_LEN);
        let frames_per_block = block_size / frame_size;
        let block_count = frames.div_ceil(frames_per_block);
        let frame_count = block_count * frames_per_block;
        let request = libc::tpacket_req {
            tp_block_size: block_size as libc::c_uint,
            tp_block_nr: block_count as libc::c_uint,
            tp_frame_size: frame_size as libc::c_uint,
            tp_frame_nr: frame_count as libc::c_uint,
        };
        // SAFETY: `fd` is live; the option value is a tpacket_req on the stack with its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_TX_RING,
                (&request as *const libc::tpacket_req).cast(),
                std::mem::size_of::<libc::tpacket_req>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let map_len = block_size * block_count;
        // SAFETY: maps the ring the kernel just allocated for `fd`, shared with the kernel, at an
        // address the kernel picks; the result is checked before use.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = std::ptr::NonNull::new(map.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        let ring = PacketTxRing { fd, map, map_len, frame_size, frame_count, head: 0, pending: 0 };
        // SAFETY: sockaddr_ll is plain data; all zeros is valid.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as libc::c_ushort;
        address.sll_ifindex = interface_index as libc::c_int;
        // SAFETY: `ring.fd` is live; the address is a sockaddr_ll on the stack with its size.
        let rc = unsafe {
            libc::bind(
                ring.fd.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ring)
    }

    /// The largest frame a slot holds.
    pub fn max_frame_len(&self) -> usize {
        self.frame_size - TX_FRAME_DATA_OFFSET - VNET_HEADER_LEN
    }

    fn status(&self, slot: usize) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: the slot's header lies inside the mapping (slot < frame_count, frames back to
        // back since the block size is a multiple of the frame size) and is 16-byte aligned; the
        // kernel updates tp_status concurrently, so it is only ever accessed atomically.
        unsafe {
            std::sync::atomic::AtomicU32::from_ptr(
                self.map.as_ptr().add(slot * self.frame_size + TX_FRAME_STATUS).cast(),
            )
        }
    }

    /// The next free slot's data area, or `None` while the kernel still holds it (the ring is
    /// full until a `send` and the driver free slots).
    pub fn next_frame(&mut self) -> Option<&mut [u8]> {
        if self.status(self.head).load(std::sync::atomic::Ordering::Acquire) != libc::TP_STATUS_AVAILABLE {
            return None;
        }
        // SAFETY: the slot is AVAILABLE, so the kernel neither reads nor writes it until `commit`
        // marks it SEND_REQUEST; the data area lies inside the mapping and the returned borrow of
        // `self` keeps the mapping alive and the slot exclusive.
        Some(unsafe {
            std::slice::from_raw_parts_mut(
                self.map.as_ptr().add(self.head * self.frame_size + TX_FRAME_DATA_OFFSET + VNET_HEADER_LEN),
                self.max_frame_len(),
            )
        })
    }

    /// Hands the slot `next_frame` gave, holding a frame of `len` bytes, to the kernel.
    pub fn commit(&mut self, len: usize) {
        let slot = self.head * self.frame_size;
        let mut vnet_header = [0u8; VNET_HEADER_LEN];
        // `hdr_len`: how much of the frame the kernel copies into the packet's own buffer (all of
        // it; `open` keeps frames within 16 bits).
        VirtioNetHeader { hdr_len: len as u16, ..VirtioNetHeader::NONE }.emit(&mut vnet_header);
        // SAFETY: the slot is still AVAILABLE (only `next_frame` gave it out, and the kernel takes
        // it only after the status store below); tp_len lies inside its header, 4-byte aligned,
        // and the virtio-net header right before the frame `next_frame` gave, inside the slot.
        unsafe {
            self.map.as_ptr().add(slot + TX_FRAME_LEN).cast::<u32>().write((VNET_HEADER_LEN + len) as u32);
            std::ptr::copy_nonoverlapping(
                vnet_header.as_ptr(),
                self.map.as_ptr().add(slot + TX_FRAME_DATA_OFFSET),
                VNET_HEADER_LEN,
            );
        }
        self.status(self.head).store(libc::TP_STATUS_SEND_REQUEST, std::sync::atomic::Ordering::Release);
        self.head = (self.head + 1) % self.frame_count;
        self.pending += 1;
    }

    /// Sends every committed frame with one syscall, without waiting for the driver.
    pub fn send(&mut self) -> io::Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        self.pending = 0;
        // SAFETY: `fd` is live; a send of no data from a null buffer is how a TX ring is kicked.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl Drop for PacketTxRing {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping `open` made, once; nothing borrows it past `&mut self`.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

/// Moves the calling thread (and the processes it starts) into a new, empty network namespace:
/// tests that need links of their own, gone with the thread.
#[cfg(test)]
pub fn enter_new_network_namespace() -> io::Result<()> {
    // SAFETY: unshare(2) with CLONE_NEWNET touches no memory; it changes only this thread's
    // network namespace, so sockets opened elsewhere keep theirs.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
