//! One datapath worker: owns one queue of every overlay TAP, its underlay socket and its packet
//! buffers, and moves packets both ways until told to stop.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mesh_config::control::DropReason;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tun_rs::SyncDevice;

use crate::drops::DropContext;
use crate::state::MeshState;
use crate::topology::OverlayId;
use crate::wire::esp::{classify_udp_encap, UdpEncapKind, NON_ESP_MARKER_LEN};
use crate::wire::ipv4;

use super::egress::{Egress, BUFFER_LEN, FRAME_OFFSET, MAX_FRAME_LEN};
use super::ike_inbox::IkeInbox;
use super::ingress::{FrameSink, Ingress};
use super::sockets::{Underlay, ESP_IN_UDP_PORT};

/// Packets handled per ready descriptor before polling again, so that one busy direction cannot
/// starve the other.
const BATCH: usize = 64;
/// How often a worker looks at the stop flag when idle.
const POLL_TIMEOUT_MS: u16 = 200;

pub struct Worker {
    pub index: usize,
    pub state: Arc<MeshState>,
    /// This worker's queue of each overlay's TAP, indexed by `OverlayId`.
    pub taps: Vec<SyncDevice>,
    pub underlay: Underlay,
    /// Where IKE messages on port 4500 go; `None` when this node runs no IKE.
    pub ike: Option<IkeInbox>,
    pub stop: Arc<AtomicBool>,
}

struct TapQueues<'a>(&'a [SyncDevice]);

impl FrameSink for TapQueues<'_> {
    fn deliver(&self, overlay: OverlayId, frame: &[u8]) -> io::Result<usize> {
        self.0[overlay.0].send(frame)
    }
}

impl Worker {
    pub fn run(self) {
        let mut frame_buf = vec![0u8; BUFFER_LEN].into_boxed_slice();
        let mut scratch_buf = vec![0u8; BUFFER_LEN].into_boxed_slice();
        let mut packet_buf = vec![0u8; BUFFER_LEN].into_boxed_slice();
        let mut fds: Vec<PollFd<'_>> =
            self.taps.iter().map(|tap| PollFd::new(tap.as_fd(), PollFlags::POLLIN)).collect();
        let receive_fd = self.underlay.receive_fd();
        if let Some(fd) = receive_fd {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        let sink = TapQueues(&self.taps);
        tracing::debug!(worker = self.index, "datapath worker started");
        while !self.stop.load(Ordering::Relaxed) {
            match poll(&mut fds, PollTimeout::from(POLL_TIMEOUT_MS)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(worker = self.index, %error, "poll failed; datapath worker stops");
                    return;
                }
            }
            let now_ms = self.state.clock.now_ms();
            let tables = self.state.sadb.load();
            let egress = Egress { state: &self.state, tables: &tables, underlay: &self.underlay, now_ms };
            for (index, tap) in self.taps.iter().enumerate() {
                if fds[index].any() != Some(true) {
                    continue;
                }
                let overlay = &self.state.topology.overlays[index];
                for _ in 0..BATCH {
                    match tap.recv(&mut frame_buf[FRAME_OFFSET..FRAME_OFFSET + MAX_FRAME_LEN]) {
                        Ok(len) => egress.forward(overlay, &mut frame_buf, &mut scratch_buf, len),
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                        Err(error) => {
                            tracing::warn!(interface = %overlay.interface, %error, "reading the overlay interface failed");
                            break;
                        }
                    }
                }
            }
            if receive_fd.is_some() && fds[self.taps.len()].any() == Some(true) {
                let ingress = Ingress { state: &self.state, tables: &tables, sink: &sink, now_ms };
                for _ in 0..BATCH {
                    if !self.receive_one(&ingress, &mut packet_buf) {
                        break;
                    }
                }
            }
        }
        tracing::debug!(worker = self.index, "datapath worker stopped");
    }

    /// Reads and handles one underlay packet; false when there was none.
    fn receive_one(&self, ingress: &Ingress<'_, TapQueues<'_>>, buf: &mut [u8]) -> bool {
        match &self.underlay {
            Underlay::Udp(socket) => {
                let (len, source) = match socket.recv_from(buf) {
                    Ok(received) => received,
                    Err(error) => return log_receive_error(&error),
                };
                match classify_udp_encap(&buf[..len]) {
                    Ok(UdpEncapKind::Esp) => ingress.receive(&mut buf[..len], source),
                    Ok(UdpEncapKind::NatKeepalive) => {}
                    Ok(UdpEncapKind::Ike) => match &self.ike {
                        Some(inbox) if !inbox.forward(&buf[NON_ESP_MARKER_LEN..len], source, ESP_IN_UDP_PORT) => {
                            self.drop_unattributed(DropReason::IkeBacklog, source)
                        }
                        Some(_) => {}
                        None => self.drop_unattributed(DropReason::NotEsp, source),
                    },
                    Err(_) => self.drop_unattributed(DropReason::Malformed, source),
                }
                true
            }
            Underlay::Esp { socket, .. } => {
                let (len, source) = match socket.recv_from(buf) {
                    Ok((len, Some(source))) => (len, source),
                    Ok((_, None)) => return true,
                    Err(error) => return log_receive_error(&error),
                };
                let source = SocketAddr::new(source, 0);
                if !socket.delivers_ip_header() {
                    ingress.receive(&mut buf[..len], source);
                    return true;
                }
                let esp_range = match ipv4::Packet::new_checked(&buf[..len]) {
                    Ok(packet) if !packet.is_fragment() => packet.header_length()..usize::from(packet.total_length()),
                    _ => {
                        self.drop_unattributed(DropReason::Malformed, source);
                        return true;
                    }
                };
                ingress.receive(&mut buf[esp_range], source);
                true
            }
        }
    }

    fn drop_unattributed(&self, reason: DropReason, source: SocketAddr) {
        let peer = self.state.topology.peer_by_address(source.ip());
        self.state.drops.record(reason, DropContext { peer, outer_source: Some(source), ..DropContext::default() });
    }
}

/// False, so a read error ends the batch; WouldBlock is the normal end of one.
fn log_receive_error(error: &io::Error) -> bool {
    if error.kind() != io::ErrorKind::WouldBlock {
        tracing::debug!(%error, "receiving from the underlay failed");
    }
    false
}
