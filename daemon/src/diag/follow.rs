//! `ikectl drops --follow`: the connection stays open and gets one `DropStream` line whenever
//! drops were recorded. The task sleeps on the ring's watch of the last id: it wakes only when a
//! drop was recorded (at most the ring's rate limit per second), never to poll.

use std::io;

use mesh_config::control::{DropBatch, Reply, Response};
use tokio::io::{AsyncWrite, BufReader, Lines};

use crate::ctl::{send, Control};

/// Streams the drops after `after` (for `peer`, or all) until the client hangs up.
pub async fn stream<R, W>(
    control: &Control,
    peer: Option<&str>,
    mut after: u64,
    lines: &mut Lines<BufReader<R>>,
    writer: &mut W,
) -> io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let only = match control.peer_filter(peer) {
        Ok(only) => only,
        Err(message) => return send(writer, &Response::error(message)).await,
    };
    let drops = &control.state.drops;
    let mut recorded = drops.subscribe();
    loop {
        let seen = *recorded.borrow_and_update();
        // Loaded each time: a reload may have added peers since.
        let topology = control.state.topology();
        let batch = drops.since(after, |id| topology.peer(id).name.clone(), only);
        // Drops of other peers are skipped for good; a drop recorded after `seen` was read may
        // already be in the batch and must not come again.
        after = batch.last().map_or(seen, |last| last.id.max(seen)).max(after);
        if !batch.is_empty() {
            send(writer, &Response::ok(Reply::DropStream(DropBatch { drops: batch }))).await?;
        }
        tokio::select! {
            changed = recorded.changed() => if changed.is_err() { return Ok(()) },
            // The client sends nothing more; end of input is how it says goodbye.
            line = lines.next_line() => if line?.is_none() { return Ok(()) },
        }
    }
}
