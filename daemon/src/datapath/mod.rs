//! The packet path: worker threads that move frames between the overlay TAPs and the underlay.
//! Nothing here allocates, locks a shared lock or formats a log line per packet.

pub mod batch_io;
mod egress;
mod ike_inbox;
mod ingress;
mod sockets;
mod worker;

#[cfg(any(test, fuzzing))]
pub mod testkit;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use mesh_config::Encap;
use tun_rs::SyncDevice;

pub use self::egress::TRAILER_ROOM;
#[cfg(any(test, fuzzing))]
pub use self::egress::{Egress, EspSender, BUFFER_LEN, FRAME_OFFSET};
pub use self::ike_inbox::{IkeDatagram, IkeInbox};
#[cfg(any(test, fuzzing))]
pub use self::ingress::{FrameSink, Ingress, FRAME_HEADROOM};
pub use self::sockets::{EspOut, ESP_IN_UDP_PORT};

pub use self::worker::{WorkerParts, WorkerTuning};

use self::sockets::{RawEspSocket, Underlay};
use self::worker::Worker;
use crate::error::DaemonError;
use crate::state::MeshState;

/// The running workers; dropping it without `stop` leaves them running until the process exits.
pub struct Datapath {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<WorkerParts>>,
    /// A handle on a worker's ESP-in-UDP socket, for IKE to send on port 4500.
    udp_4500: Option<std::net::UdpSocket>,
    esp_out: EspOut,
}

impl Datapath {
    /// Starts one worker per element of `queues` (each holding one queue of every overlay TAP).
    pub fn start(
        state: Arc<MeshState>,
        queues: Vec<Vec<SyncDevice>>,
        ike: Option<IkeInbox>,
        tuning: WorkerTuning,
    ) -> Result<Self, DaemonError> {
        let (local, encap) = (state.topology().local_address, state.topology().encap);
        let underlay_error = |source| DaemonError::Underlay { address: local, encap, source };
        let raw = match encap {
            Encap::Esp => Some(Arc::new(RawEspSocket::new(local).map_err(underlay_error)?)),
            Encap::Udp => None,
        };
        let mut underlays = Vec::with_capacity(queues.len());
        for index in 0..queues.len() {
            underlays.push(match &raw {
                Some(socket) => {
                    Underlay::Esp { socket: socket.clone(), receives: index == 0, batch: Default::default() }
                }
                None => {
                    let socket = sockets::udp_socket(local).map_err(underlay_error)?;
                    let batch = std::cell::RefCell::new(sockets::GsoBatch::new(&socket));
                    Underlay::Udp(socket, batch)
                }
            });
        }
        let udp_4500 = match underlays.first() {
            Some(Underlay::Udp(socket, _)) => Some(socket.try_clone().map_err(underlay_error)?),
            _ => None,
        };
        let parts = queues.into_iter().zip(underlays).map(|(taps, underlay)| WorkerParts { taps, underlay }).collect();
        let mut datapath = Datapath::resume(state, parts, ike, tuning)?;
        datapath.udp_4500 = udp_4500;
        Ok(datapath)
    }

    /// Starts one worker per element of `parts`, as handed back by `stop` (with the TAP queues of
    /// the overlays of the current topology).
    pub fn resume(
        state: Arc<MeshState>,
        parts: Vec<WorkerParts>,
        ike: Option<IkeInbox>,
        tuning: WorkerTuning,
    ) -> Result<Self, DaemonError> {
        let (local, encap) = (state.topology().local_address, state.topology().encap);
        let esp_out = match parts.first().map(|parts| &parts.underlay) {
            Some(Underlay::Udp(socket, _)) => socket.try_clone().map(|socket| EspOut::Udp(Arc::new(socket))),
            Some(Underlay::Esp { socket, .. }) => Ok(EspOut::Raw(socket.clone())),
            None => Err(std::io::Error::other("no datapath worker to send on")),
        }
        .map_err(|source| DaemonError::Underlay { address: local, encap, source })?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::with_capacity(parts.len());
        for (index, parts) in parts.into_iter().enumerate() {
            let worker = Worker { index, state: state.clone(), parts, ike: ike.clone(), tuning, stop: stop.clone() };
            let handle = std::thread::Builder::new()
                .name(format!("meshd-worker-{index}"))
                .spawn(move || worker.run())
                .map_err(DaemonError::Thread)?;
            workers.push(handle);
        }
        Ok(Datapath { stop, workers, udp_4500: None, esp_out })
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
        self.workers.len()
    }

    /// Stops the workers and waits for them; returns their TAP queues and sockets (they close when
    /// dropped). A worker that panicked has lost its own.
    pub fn stop(self) -> Vec<WorkerParts> {
        self.stop.store(true, Ordering::Relaxed);
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
