//! The packet path: worker threads that move frames between the overlay TAPs and the underlay.
//! Nothing here allocates, locks a shared lock or formats a log line per packet.

mod announce;
pub mod batch_io;
mod egress;
mod ike_inbox;
mod ingress;
pub mod link_header;
pub mod packet_ring;
mod sockets;
mod tally;
mod worker;

#[cfg(any(test, fuzzing, feature = "internals"))]
pub mod testkit;
#[cfg(test)]
mod gso_tests;
#[cfg(test)]
mod rx_tests;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::tap::TapQueue;
use mesh_config::Encap;

pub use self::announce::Announcer;
pub use self::egress::TRAILER_ROOM;
#[cfg(any(test, fuzzing, feature = "internals"))]
pub use self::egress::{Destination, Egress, EspSender, BUFFER_LEN, FRAME_OFFSET};
pub use self::ike_inbox::{IkeDatagram, IkeInbox};
#[cfg(any(test, fuzzing, feature = "internals"))]
pub use self::ingress::{FrameLanding, FrameSink, Ingress, NoLanding, TapSink, TapWrite, FRAME_HEADROOM};
pub use self::sockets::{EspOut, ESP_IN_UDP_PORT};

pub use self::worker::{WorkerParts, WorkerTuning};

use self::sockets::{RawEspSocket, Underlay};
use self::worker::Worker;
use crate::error::DaemonError;
use crate::state::MeshState;

/// The workers' TAP queues and underlay sockets, not yet running (`start`): what IKE and the
/// path-MTU driver send on is known before any worker forwards.
pub struct Prepared {
    parts: Vec<WorkerParts>,
    /// A handle on a worker's ESP-in-UDP socket, for IKE to send on port 4500.
    udp_4500: Option<std::net::UdpSocket>,
    esp_out: EspOut,
}

impl Prepared {
    /// One worker per element of `queues` (each holding one queue of every overlay TAP), with
    /// underlay sockets of its own.
    pub fn bind(state: &MeshState, queues: Vec<Vec<TapQueue>>) -> Result<Self, DaemonError> {
        Prepared::new(state, queues, None)
    }

    /// The workers of the TAP queues and underlay sockets a running meshd handed over
    /// (`crate::upgrade`), in the order of `Datapath::handover_fds`.
    pub fn adopt(state: &MeshState, queues: Vec<Vec<TapQueue>>, underlay: Vec<OwnedFd>) -> Result<Self, DaemonError> {
        Prepared::new(state, queues, Some(underlay))
    }

    fn new(state: &MeshState, queues: Vec<Vec<TapQueue>>, adopted: Option<Vec<OwnedFd>>) -> Result<Self, DaemonError> {
        let (local, encap) = (state.topology().local_address, state.topology().encap);
        let underlay_error = |source| DaemonError::Underlay { address: local, encap, source };
        let wrong_count = || {
            underlay_error(std::io::Error::other(format!(
                "the running meshd handed over underlay sockets that do not fit {} workers with encap {encap:?}",
                queues.len()
            )))
        };
        let mut adopted = adopted.map(Vec::into_iter);
        let raw = match (encap, &mut adopted) {
            (Encap::Esp, Some(fds)) => Some(Arc::new(RawEspSocket::adopt(fds.next().ok_or_else(wrong_count)?, local))),
            (Encap::Esp, None) => Some(Arc::new(RawEspSocket::new(local).map_err(underlay_error)?)),
            (Encap::Udp, _) => None,
        };
        let mut underlays = Vec::with_capacity(queues.len());
        for index in 0..queues.len() {
            underlays.push(match (&raw, &mut adopted) {
                (Some(socket), _) => {
                    Underlay::Esp { socket: socket.clone(), receives: index == 0, batch: Default::default() }
                }
                (None, Some(fds)) => Underlay::udp(std::net::UdpSocket::from(fds.next().ok_or_else(wrong_count)?)),
                (None, None) => Underlay::udp(sockets::udp_socket(local).map_err(underlay_error)?),
            });
        }
        if adopted.is_some_and(|mut rest| rest.next().is_some()) {
            return Err(wrong_count());
        }
        let udp_4500 = match underlays.first() {
            Some(Underlay::Udp(socket, _)) => Some(socket.try_clone().map_err(underlay_error)?),
            _ => None,
        };
        let parts: Vec<WorkerParts> =
            queues.into_iter().zip(underlays).map(|(taps, underlay)| WorkerParts { taps, underlay }).collect();
        let esp_out = match parts.first().map(|parts| &parts.underlay) {
            Some(Underlay::Udp(socket, _)) => socket.try_clone().map(|socket| EspOut::Udp(Arc::new(socket))),
            Some(Underlay::Esp { socket, .. }) => Ok(EspOut::Raw(socket.clone())),
            None => Err(std::io::Error::other("no datapath worker to send on")),
        }
        .map_err(underlay_error)?;
        Ok(Prepared { parts, udp_4500, esp_out })
    }

    /// The socket IKE sends on for port 4500 when the workers own that port.
    pub fn take_udp_4500(&mut self) -> Option<std::net::UdpSocket> {
        self.udp_4500.take()
    }

    /// Where path-MTU probes and other single ESP packets from the control plane leave.
    pub fn esp_out(&self) -> EspOut {
        self.esp_out.clone()
    }

    pub fn workers(&self) -> usize {
        self.parts.len()
    }

    /// Starts the workers.
    pub fn start(
        self,
        state: Arc<MeshState>,
        ike: Option<IkeInbox>,
        tuning: WorkerTuning,
    ) -> Result<Datapath, DaemonError> {
        Datapath::resume(state, self.parts, ike, tuning)
    }
}

/// The running workers; dropping it without `stop` leaves them running until the process exits.
pub struct Datapath {
    stop: Arc<AtomicBool>,
    /// Written to when stopping: wakes the workers (`Worker::woken`).
    waker: UnixStream,
    workers: Vec<JoinHandle<WorkerParts>>,
    /// Second descriptors of the workers' underlay sockets and TAP queues, for a handover.
    handover: Vec<OwnedFd>,
}

impl Datapath {
    /// Starts one worker per element of `parts`, as handed back by `stop` (with the TAP queues of
    /// the overlays of the current topology).
    pub fn resume(
        state: Arc<MeshState>,
        parts: Vec<WorkerParts>,
        ike: Option<IkeInbox>,
        tuning: WorkerTuning,
    ) -> Result<Self, DaemonError> {
        let (local, encap) = (state.topology().local_address, state.topology().encap);
        let handover = handover_fds(&parts)
            .into_iter()
            .map(|fd| fd.try_clone_to_owned())
            .collect::<Result<_, _>>()
            .map_err(|source| DaemonError::Underlay { address: local, encap, source })?;
        let stop = Arc::new(AtomicBool::new(false));
        let (waker, woken) = UnixStream::pair().map_err(DaemonError::Thread)?;
        let woken = Arc::new(woken);
        // ESP that came before its SA is handed to the first worker once the SA is installed.
        let (early_waker, early_woken) = UnixStream::pair().map_err(DaemonError::Thread)?;
        for socket in [&early_waker, &early_woken] {
            socket.set_nonblocking(true).map_err(DaemonError::Thread)?;
        }
        state.early_esp.wake_through(early_waker);
        let mut early_woken = Some(early_woken);
        let mut workers = Vec::with_capacity(parts.len());
        for (index, parts) in parts.into_iter().enumerate() {
            let stop = stop.clone();
            let woken = woken.clone();
            let early_esp_woken = early_woken.take();
            let worker =
                Worker { index, state: state.clone(), parts, ike: ike.clone(), tuning, stop, woken, early_esp_woken };
            let handle = std::thread::Builder::new()
                .name(format!("meshd-worker-{index}"))
                .spawn(move || worker.run())
                .map_err(DaemonError::Thread)?;
            workers.push(handle);
        }
        Ok(Datapath { stop, waker, workers, handover })
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// What a new meshd adopts (`Prepared::adopt`): the underlay sockets (one per worker for
    /// ESP in UDP, the one raw socket for raw ESP), then the TAP queues worker by worker.
    pub fn handover_fds(&self) -> &[OwnedFd] {
        &self.handover
    }

    /// Stops the workers and waits for them; returns their TAP queues and sockets (they close when
    /// dropped). A worker that panicked has lost its own.
    pub fn stop(self) -> Vec<WorkerParts> {
        self.stop.store(true, Ordering::Relaxed);
        if let Err(error) = (&self.waker).write_all(&[1]) {
            tracing::debug!(%error, "could not wake the workers; they stop within their poll timeout");
        }
        let mut parts = Vec::with_capacity(self.workers.len());
        for worker in self.workers {
            match worker.join() {
                Ok(handed_back) => parts.push(handed_back),
                Err(_) => tracing::error!("a datapath worker panicked"),
            }
        }
        parts
    }
}

/// The descriptors of `Datapath::handover_fds`, from the workers' parts.
fn handover_fds(parts: &[WorkerParts]) -> Vec<BorrowedFd<'_>> {
    let underlays = parts.iter().map(|part| &part.underlay);
    let mut fds: Vec<BorrowedFd<'_>> = match parts.first().map(|part| &part.underlay) {
        Some(Underlay::Esp { socket, .. }) => vec![socket.fd()],
        _ => underlays.map(Underlay::fd).collect(),
    };
    fds.extend(parts.iter().flat_map(|part| part.taps.iter().map(AsFd::as_fd)));
    fds
}
