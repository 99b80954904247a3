//! `ikectl drops --follow`: the connection stays open and gets one `DropStream` line whenever
//! drops were recorded. The follower sleeps on the rings' watches of their last ids: it wakes only
//! when a drop was recorded (at most the ring's rate limit per second), never to poll.

use std::io;
use std::sync::Arc;

use mesh_config::control::DropBatch;
use tokio::io::AsyncRead;
use tokio::sync::watch;

use super::kernel::KernelDrops;
use crate::framing::RequestLines;
use crate::state::MeshState;

/// Where the stream starts: after these ids; kernel drops only when `kernel_after` is given.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    pub after: u64,
    pub kernel_after: Option<u64>,
}

/// The drops (and, with `kernel_after`, kernel drops) of `peer` (or all) recorded after those ids.
pub fn since(state: &MeshState, kernel_drops: &KernelDrops, peer: Option<&str>, start: Start) -> DropBatch {
    let topology = state.topology();
    let kernel = start.kernel_after.map(|after| kernel_drops.since(after, peer)).unwrap_or_default();
    let only = match peer.map(|name| topology.resolve_peer(name)) {
        None => None,
        Some(Ok(id)) => Some(id),
        // A follower of a peer that a reload removed sees nothing more of it, not everyone's.
        Some(Err(_)) => return DropBatch { drops: Vec::new(), kernel },
    };
    let drops = state.drops.since(start.after, |id| topology.peer_name(id), only);
    DropBatch { drops, kernel }
}

/// One client's stream of drops.
pub struct Follower {
    state: Arc<MeshState>,
    kernel_drops: Arc<KernelDrops>,
    peer: Option<String>,
    start: Start,
    recorded: watch::Receiver<u64>,
    /// Without kernel drops this watch never changes (its sender lives as long as meshd).
    kernel_recorded: watch::Receiver<u64>,
    /// False until the first batch: that one is sent without waiting for a new drop.
    waits: bool,
}

impl Follower {
    pub fn new(state: Arc<MeshState>, kernel_drops: Arc<KernelDrops>, peer: Option<String>, start: Start) -> Self {
        let recorded = state.drops.subscribe();
        let kernel_recorded = kernel_drops.subscribe();
        Follower { state, kernel_drops, peer, start, recorded, kernel_recorded, waits: false }
    }

    /// The next batch of drops; `None` once the client hung up (it sends nothing more; the end of
    /// its input is how it says goodbye) or meshd stops.
    pub async fn next_batch<R: AsyncRead + Unpin>(
        &mut self,
        lines: &mut RequestLines<R>,
    ) -> io::Result<Option<DropBatch>> {
        loop {
            if self.waits {
                let wants_kernel = self.start.kernel_after.is_some();
                tokio::select! {
                    changed = self.recorded.changed() => if changed.is_err() { return Ok(None) },
                    changed = changed_if(&mut self.kernel_recorded, wants_kernel) => if changed.is_err() { return Ok(None) },
                    line = lines.next_line() => if line?.is_none() { return Ok(None) },
                }
            }
            self.waits = true;
            let seen = *self.recorded.borrow_and_update();
            let kernel_seen = *self.kernel_recorded.borrow_and_update();
            let batch = since(&self.state, &self.kernel_drops, self.peer.as_deref(), self.start);
            // Drops of other peers are skipped for good; a drop recorded after `seen` was read may
            // already be in the batch and must not come again.
            let Start { after, kernel_after } = &mut self.start;
            *after = batch.drops.last().map_or(seen, |last| last.id.max(seen)).max(*after);
            *kernel_after =
                kernel_after.map(|k| batch.kernel.last().map_or(kernel_seen, |last| last.id.max(kernel_seen)).max(k));
            if !batch.drops.is_empty() || !batch.kernel.is_empty() {
                return Ok(Some(batch));
            }
        }
    }
}

/// `changed()` of the watch, or never when the follower did not ask for it.
async fn changed_if(receiver: &mut watch::Receiver<u64>, wanted: bool) -> Result<(), watch::error::RecvError> {
    if wanted {
        receiver.changed().await
    } else {
        std::future::pending().await
    }
}
