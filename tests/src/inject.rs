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
use std::os::fd::AsRawFd;

use crate::netns::Netns;

/// Sends `frame` (a complete Ethernet frame: destination MAC first) out of `iface` in `ns`.
pub fn inject_frame(ns: &Netns, iface: &str, frame: &[u8]) {
    assert!(frame.len() >= 14, "an Ethernet frame has at least 14 bytes");
    let ns_path = format!("/run/netns/{}", ns.name());
    let iface = iface.to_string();
    let frame = frame.to_vec();
    let result = std::thread::spawn(move || -> Result<(), String> {
        let ns_file = File::open(&ns_path).map_err(|e| format!("open {ns_path}: {e}"))?;
        let c_iface = CString::new(iface.clone()).map_err(|e| e.to_string())?;
        send_raw(ns_file.as_raw_fd(), &c_iface, &frame).map_err(|e| format!("inject on {iface} in {ns_path}: {e}"))
    })
    .join()
    .expect("inject thread panicked");
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Joins the network namespace `ns_fd` (this thread only), then sends `frame` on `iface`
/// through an `AF_PACKET`/`SOCK_RAW` socket. Call only on a thread that is discarded afterwards.
#[allow(unsafe_code)]
fn send_raw(ns_fd: libc::c_int, iface: &CString, frame: &[u8]) -> std::io::Result<()> {
    let last_error = std::io::Error::last_os_error;
    // SAFETY: every call below gets plain integers, a NUL-terminated string that outlives the
    // call (`iface`), a pointer/length pair into the live `frame` slice, or a pointer to a fully
    // initialised, correctly sized `sockaddr_ll` on our stack. `setns` affects only the calling
    // thread, which the caller throws away. The socket fd is closed on every path after it was
    // opened.
    unsafe {
        if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
            return Err(last_error());
        }
        let ifindex = libc::if_nametoindex(iface.as_ptr());
        if ifindex == 0 {
            return Err(last_error());
        }
        // Protocol 0: a send-only packet socket (it receives nothing).
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(last_error());
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as libc::c_ushort;
        addr.sll_ifindex = ifindex as libc::c_int;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        let sent = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        );
        let error = last_error();
        libc::close(fd);
        if sent < 0 {
            return Err(error);
        }
        if sent as usize != frame.len() {
            return Err(std::io::Error::other(format!("sent {sent} of {} bytes", frame.len())));
        }
    }
    Ok(())
}
