//! IKE messages that arrive on the ESP-in-UDP port (after the non-ESP marker) are read by the
//! datapath workers, which own that port; they hand them to the control plane through a bounded
//! queue, so a flood of IKE packets costs the datapath one failed `try_send` each.

use std::net::SocketAddr;

use tokio::sync::mpsc;

/// How many IKE datagrams may wait for the control plane.
pub const IKE_QUEUE_LEN: usize = 1024;

/// One IKE message as received.
#[derive(Debug)]
pub struct IkeDatagram {
    pub from: SocketAddr,
    /// The local port it arrived on (500, or 4500 after floating).
    pub local_port: u16,
    pub bytes: Vec<u8>,
}

/// The workers' end of the queue.
#[derive(Clone)]
pub struct IkeInbox(mpsc::Sender<IkeDatagram>);

impl IkeInbox {
    /// The queue: workers send into the inbox, the IKE driver reads the receiver.
    pub fn channel() -> (IkeInbox, mpsc::Receiver<IkeDatagram>) {
        let (sender, receiver) = mpsc::channel(IKE_QUEUE_LEN);
        (IkeInbox(sender), receiver)
    }

    /// Queues `bytes` (the IKE message, marker removed); false when the queue is full.
    pub fn forward(&self, bytes: &[u8], from: SocketAddr, local_port: u16) -> bool {
        self.0.try_send(IkeDatagram { from, local_port, bytes: bytes.to_vec() }).is_ok()
    }
}
