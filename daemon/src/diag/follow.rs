//! `ikectl drops --follow`: the connection stays open and gets one `DropStream` line whenever
//! drops were recorded. The task sleeps on the rings' watches of their last ids: it wakes only
//! when a drop was recorded (at most the ring's rate limit per second), never to poll.

use std::io;

use mesh_config::control::{Reply, Response};
use tokio::io::{AsyncWrite, BufReader, Lines};
use tokio::sync::watch;

use crate::ctl::{send, Control};

/// Where the stream starts: after these ids; kernel drops only when `kernel_after` is given.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    pub after: u64,
    pub kernel_after: Option<u64>,
}

/// Streams the drops after `start` (for `peer`, or all) until the client hangs up.
pub async fn stream<R, W>(
    control: &Control,
    peer: Option<&str>,
    start: Start,
    lines: &mut Lines<BufReader<R>>,
    writer: &mut W,
) -> io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if let Err(message) = control.peer_filter(peer) {
        return send(writer, &Response::error(message)).await;
    }
    let Start { mut after, mut kernel_after } = start;
    let mut recorded = control.state.drops.subscribe();
    // Without kernel drops this watch never changes (its sender lives as long as meshd).
    let mut kernel_recorded = control.kernel_drops.subscribe();
    loop {
        let seen = *recorded.borrow_and_update();
        let kernel_seen = *kernel_recorded.borrow_and_update();
        let batch = control.drops_since(peer, after, kernel_after);
        // Drops of other peers are skipped for good; a drop recorded after `seen` was read may
        // already be in the batch and must not come again.
        after = batch.drops.last().map_or(seen, |last| last.id.max(seen)).max(after);
        kernel_after =
            kernel_after.map(|k| batch.kernel.last().map_or(kernel_seen, |last| last.id.max(kernel_seen)).max(k));
        if !batch.drops.is_empty() || !batch.kernel.is_empty() {
            send(writer, &Response::ok(Reply::DropStream(batch))).await?;
        }
        tokio::select! {
            changed = recorded.changed() => if changed.is_err() { return Ok(()) },
            changed = changed_if(&mut kernel_recorded, kernel_after.is_some()) => if changed.is_err() { return Ok(()) },
            // The client sends nothing more; end of input is how it says goodbye.
            line = lines.next_line() => if line?.is_none() { return Ok(()) },
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
