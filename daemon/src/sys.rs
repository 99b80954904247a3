//! The only place with `unsafe`: socket options that neither `nix` nor `socket2` expose.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

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

/// Sets the socket's receive and send buffers to `bytes`, above net.core.rmem_max/wmem_max
/// (SO_RCVBUFFORCE/SO_SNDBUFFORCE need CAP_NET_ADMIN, which meshd has).
pub fn force_buffer_sizes(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes)?;
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, bytes)
}
