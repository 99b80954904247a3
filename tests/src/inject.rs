//! Re-injecting a captured frame into a namespace's interface.
//!
//! Why this way: replaying an ESP packet must reproduce it byte for byte, outer headers
//! included, from the original sender's address and port (198.18.0.1:4500 -> 198.18.0.2:4500),
//! while meshd on the sender still holds that UDP port (and for `encap = "esp"` there is no
//! port at all). An `AF_PACKET` socket sends the captured Ethernet frame as it is, below the IP
//! stack, so neither the bound port nor the encapsulation matters and no extra tool (tcpreplay,
//! python) is needed. The socket is opened on a short-lived thread that first joins the
//! target network namespace (`setns` only changes the calling thread).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::netns::Netns;

/// Sends `frame` (a complete Ethernet frame: destination MAC first) out of `iface` in `ns`.
///
/// A frame captured on the sending side of a veth usually carries a partial UDP checksum
/// (checksum offload: the kernel never filled it in); the receiver would drop it as a bad
/// checksum. Pass such frames through [`fix_udp_checksum`] first.
pub fn inject_frame(ns: &Netns, iface: &str, frame: &[u8]) {
    let sender = RawSender::open(ns, iface);
    if let Err(e) = sender.send(frame) {
        panic!("inject on {iface} in {}: {e}", ns.name());
    }
}

/// An `AF_PACKET`/`SOCK_RAW` socket on one interface of a namespace: sends whole Ethernet frames
/// below the IP stack (also frame generators, e.g. a VM flooding source MACs onto an overlay
/// interface). The socket stays in its namespace whichever thread uses it.
#[derive(Debug)]
pub struct RawSender {
    fd: OwnedFd,
    ifindex: libc::c_int,
    iface: String,
}

impl RawSender {
    /// Opens the socket in `ns` on a short-lived thread that first joins the namespace.
    pub fn open(ns: &Netns, iface: &str) -> RawSender {
        let ns_path = format!("/run/netns/{}", ns.name());
        let name = iface.to_string();
        let opened = std::thread::spawn(move || -> Result<RawSender, String> {
            let ns_file = File::open(&ns_path).map_err(|e| format!("open {ns_path}: {e}"))?;
            let c_iface = CString::new(name.clone()).map_err(|e| e.to_string())?;
            open_raw(ns_file.as_raw_fd(), &c_iface)
                .map(|(fd, ifindex)| RawSender { fd, ifindex, iface: name.clone() })
                .map_err(|e| format!("packet socket on {name} in {ns_path}: {e}"))
        })
        .join()
        .expect("packet socket thread panicked");
        opened.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sends one frame (at least an Ethernet header).
    #[allow(unsafe_code)]
    pub fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        assert!(frame.len() >= 14, "an Ethernet frame has at least 14 bytes");
        // SAFETY: `sockaddr_ll` is plain data, fully zeroed then filled; `sendto` gets the live
        // socket, a pointer/length pair into the `frame` slice and a pointer to that address on
        // our stack with its exact size.
        let sent = unsafe {
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as libc::c_ushort;
            addr.sll_ifindex = self.ifindex;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if sent as usize != frame.len() {
            return Err(std::io::Error::other(format!("sent {sent} of {} bytes on {}", frame.len(), self.iface)));
        }
        Ok(())
    }
}

/// Joins the network namespace `ns_fd` (this thread only) and opens a send-only packet socket;
/// returns it with `iface`'s index. Call only on a thread that is discarded afterwards.
#[allow(unsafe_code)]
fn open_raw(ns_fd: libc::c_int, iface: &CString) -> std::io::Result<(OwnedFd, libc::c_int)> {
    // SAFETY: `setns` gets a valid fd and affects only the calling thread, which the caller
    // throws away; `if_nametoindex` a NUL-terminated string that outlives the call; `socket`
    // plain integers, and its fd is owned (closed on drop) as soon as it is valid.
    unsafe {
        if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let ifindex = libc::if_nametoindex(iface.as_ptr());
        if ifindex == 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Protocol 0: a send-only packet socket (it receives nothing).
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fd), ifindex as libc::c_int))
    }
}

/// Recomputes the UDP checksum of an Ethernet/IPv4 or Ethernet/IPv6 frame carrying UDP (no
/// extension headers), in place; other frames are left alone. This is the value a NIC doing
/// checksum offload would have put on the wire.
pub fn fix_udp_checksum(frame: &mut [u8]) {
    if frame.len() < 14 {
        return;
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let ip = 14;
    let (udp, pseudo): (usize, Vec<u8>) = match ethertype {
        0x0800 if frame.len() >= ip + 20 && frame[ip + 9] == 17 => {
            let ihl = usize::from(frame[ip] & 0x0f) * 4;
            let udp = ip + ihl;
            if frame.len() < udp + 8 {
                return;
            }
            let mut pseudo = frame[ip + 12..ip + 20].to_vec();
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&frame[udp + 4..udp + 6]);
            (udp, pseudo)
        }
        0x86dd if frame.len() >= ip + 48 && frame[ip + 6] == 17 => {
            let udp = ip + 40;
            let mut pseudo = frame[ip + 8..ip + 40].to_vec();
            pseudo.extend_from_slice(&[0, 0]);
            pseudo.extend_from_slice(&frame[udp + 4..udp + 6]);
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
            (udp, pseudo)
        }
        _ => return,
    };
    let len = usize::from(u16::from_be_bytes([frame[udp + 4], frame[udp + 5]]));
    if len < 8 || udp + len > frame.len() {
        return;
    }
    frame[udp + 6] = 0;
    frame[udp + 7] = 0;
    let mut checksum = internet_checksum(&pseudo, &frame[udp..udp + len]);
    if checksum == 0 {
        checksum = 0xffff;
    }
    frame[udp + 6..udp + 8].copy_from_slice(&checksum.to_be_bytes());
}

/// Fills in the ICMPv6 checksum of an Ethernet/IPv6 frame carrying ICMPv6 (no extension
/// headers), in place, for frames a test writes itself.
pub fn fill_icmpv6_checksum(frame: &mut [u8]) {
    let (ip, icmp) = (14, 14 + 40);
    assert!(frame.len() >= icmp + 4 && frame[ip + 6] == 58, "an Ethernet/IPv6/ICMPv6 frame");
    let len = frame.len() - icmp;
    let mut pseudo = frame[ip + 8..ip + 40].to_vec();
    pseudo.extend_from_slice(&(len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    frame[icmp + 2..icmp + 4].fill(0);
    let checksum = internet_checksum(&pseudo, &frame[icmp..]);
    frame[icmp + 2..icmp + 4].copy_from_slice(&checksum.to_be_bytes());
}

/// The Internet checksum (RFC 1071) of a pseudo-header followed by `data`.
fn internet_checksum(pseudo: &[u8], data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in pseudo.chunks(2).chain(data.chunks(2)) {
        let word = if chunk.len() == 2 { u16::from_be_bytes([chunk[0], chunk[1]]) } else { u16::from(chunk[0]) << 8 };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
