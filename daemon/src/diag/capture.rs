//! `ikectl capture`: the decrypted overlay frames of this node, both directions, streamed over
//! the control socket (ikectl writes them as pcapng).
//!
//! The workers hand copies of matching frames to a bounded queue, at most `MAX_FRAMES_PER_SEC`
//! frames a second; what does not fit is counted as dropped from the capture, never from the
//! traffic. The control plane drains the queue every `FLUSH_INTERVAL`.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_config::control::{
    CaptureFrames, CaptureInterface, CaptureStart, CapturedFrame, Direction, Reply, Response, Spi,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::hex;
use super::observe::SeenFrame;
use crate::framing::{send, RequestLines};
use crate::state::MeshState;
use crate::topology::{OverlayId, PeerId, Topology};

/// Frames a second a capture takes at most, over all workers.
pub const MAX_FRAMES_PER_SEC: u64 = 20_000;
/// The rate is enforced per window of this many milliseconds.
const RATE_WINDOW_MS: u64 = 100;
/// Frames waiting for the control plane at most.
const QUEUE_FRAMES: usize = 4096;
/// How often captured frames are sent to ikectl.
const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// The largest snaplen: a whole 64 KiB overlay frame.
pub const MAX_SNAPLEN: u32 = 65_535 + 14;

/// What the client asked to capture.
#[derive(Debug, Clone)]
pub struct CaptureRequest {
    pub peer: Option<String>,
    pub overlay: Option<String>,
    pub count: Option<u64>,
    pub snaplen: u32,
}

/// A frame copied out of the datapath.
struct Captured {
    direction: Direction,
    overlay: OverlayId,
    peer: PeerId,
    spi: u32,
    vni: u32,
    at_unix_ns: u64,
    original_len: usize,
    data: Vec<u8>,
}

/// One running capture, shared by the workers (through `Observers`) and its control connection.
pub struct CaptureSession {
    peer: Option<PeerId>,
    overlay: Option<OverlayId>,
    snaplen: usize,
    queue: SyncSender<Captured>,
    /// The rate window frames are counted in, and how many it took so far.
    window: AtomicU64,
    taken_in_window: AtomicU64,
    dropped: AtomicU64,
}

impl CaptureSession {
    /// Copies `seen` to the queue when it matches and the rate allows; called by workers.
    pub fn offer(&self, seen: SeenFrame<'_>, now_ms: u64) {
        if self.peer.is_some_and(|p| p != seen.peer) || self.overlay.is_some_and(|o| o != seen.overlay) {
            return;
        }
        if !self.within_rate(now_ms) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let at_unix_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let captured = Captured {
            direction: seen.direction,
            overlay: seen.overlay,
            peer: seen.peer,
            spi: seen.spi,
            vni: seen.vni,
            at_unix_ns,
            original_len: seen.frame.len(),
            data: seen.frame[..seen.frame.len().min(self.snaplen)].to_vec(),
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.queue.try_send(captured) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one frame against this window's share of `MAX_FRAMES_PER_SEC`.
    fn within_rate(&self, now_ms: u64) -> bool {
        let window = now_ms / RATE_WINDOW_MS;
        let current = self.window.load(Ordering::Relaxed);
        if window != current
            && self.window.compare_exchange(current, window, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.taken_in_window.store(0, Ordering::Relaxed);
        }
        self.taken_in_window.fetch_add(1, Ordering::Relaxed) < MAX_FRAMES_PER_SEC * RATE_WINDOW_MS / 1000
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Removes the session from the datapath however the stream ends.
struct Running<'a>(&'a MeshState);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.observers.stop_capture();
    }
}

/// The capture's interfaces: each overlay's inbound, then outbound frames.
fn interfaces(topology: &Topology) -> Vec<CaptureInterface> {
    topology
        .overlays
        .iter()
        .flat_map(|overlay| {
            [Direction::In, Direction::Out].map(|direction| CaptureInterface {
                overlay: overlay.name.clone(),
                vni: overlay.vni,
                direction,
            })
        })
        .collect()
}

fn interface_index(overlay: OverlayId, direction: Direction) -> u32 {
    (overlay.0 * 2 + usize::from(direction == Direction::Out)) as u32
}

/// Runs a capture for the client until `count` frames went out or the client hangs up.
pub async fn stream<R, W>(
    state: &MeshState,
    request: CaptureRequest,
    lines: &mut RequestLines<R>,
    writer: &mut W,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let topology = state.topology_full();
    let (session, frames) = match session(&topology, &request) {
        Ok(session) => session,
        Err(message) => return send(writer, &Response::error(message)).await,
    };
    if let Err(message) = state.observers.start_capture(session.clone()) {
        return send(writer, &Response::error(message)).await;
    }
    let _running = Running(state);
    let interfaces = interfaces(&topology);
    let start = CaptureStart {
        node: topology.node_name.clone(),
        interfaces: interfaces.clone(),
        snaplen: session.snaplen as u32,
    };
    send(writer, &Response::ok(Reply::CaptureStart(start))).await?;
    tracing::info!(peer = ?request.peer, overlay = ?request.overlay, "capture started");
    let mut remaining = request.count.unwrap_or(u64::MAX);
    let mut flush = tokio::time::interval(FLUSH_INTERVAL);
    while remaining > 0 {
        tokio::select! {
            _ = flush.tick() => {}
            // The client sends nothing more; end of input is how it says goodbye.
            line = lines.next_line() => if line?.is_none() { break },
        }
        let batch: Vec<CapturedFrame> = frames
            .try_iter()
            .take(usize::try_from(remaining).unwrap_or(usize::MAX))
            .filter(|captured| captured.overlay.0 < topology.overlays.len())
            .map(|captured| CapturedFrame {
                interface: interface_index(captured.overlay, captured.direction),
                at_unix_ns: captured.at_unix_ns,
                peer: topology.peer_name(captured.peer),
                spi: Spi(captured.spi),
                vni: captured.vni,
                original_len: captured.original_len as u32,
                data: hex(&captured.data),
            })
            .collect();
        if batch.is_empty() {
            continue;
        }
        remaining -= batch.len() as u64;
        let reply = Reply::CaptureFrames(CaptureFrames { frames: batch, dropped: session.dropped() });
        send(writer, &Response::ok(reply)).await?;
    }
    tracing::info!(dropped = session.dropped(), "capture stopped");
    Ok(())
}

/// The session for `request`, with the receiving end of its queue.
fn session(topology: &Topology, request: &CaptureRequest) -> Result<(Arc<CaptureSession>, Receiver<Captured>), String> {
    let peer = request.peer.as_deref().map(|name| topology.resolve_peer(name)).transpose()?;
    let overlay = request.overlay.as_deref().map(|name| topology.resolve_overlay(name).map(|o| o.id)).transpose()?;
    if request.snaplen == 0 || request.snaplen > MAX_SNAPLEN {
        return Err(format!("the snaplen must be between 1 and {MAX_SNAPLEN} bytes"));
    }
    let (queue, frames) = sync_channel(QUEUE_FRAMES);
    let session = CaptureSession {
        peer,
        overlay,
        snaplen: request.snaplen as usize,
        queue,
        window: AtomicU64::new(0),
        taken_in_window: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
    };
    Ok((Arc::new(session), frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_session(peer: Option<PeerId>) -> (CaptureSession, Receiver<Captured>) {
        let (queue, frames) = sync_channel(QUEUE_FRAMES);
        let session = CaptureSession {
            peer,
            overlay: None,
            snaplen: 4,
            queue,
            window: AtomicU64::new(0),
            taken_in_window: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        };
        (session, frames)
    }

    fn seen(peer: usize, frame: &[u8]) -> SeenFrame<'_> {
        SeenFrame { direction: Direction::In, overlay: OverlayId(0), peer: PeerId(peer), spi: 7, vni: 42, frame }
    }

    #[test]
    fn frames_are_cut_to_the_snaplen_and_filtered_by_peer() {
        let (session, frames) = test_session(Some(PeerId(1)));
        session.offer(seen(0, &[1, 2, 3, 4, 5, 6]), 1);
        session.offer(seen(1, &[1, 2, 3, 4, 5, 6]), 1);
        let captured: Vec<Captured> = frames.try_iter().collect();
        assert_eq!(captured.len(), 1);
        assert_eq!((captured[0].data.as_slice(), captured[0].original_len), (&[1, 2, 3, 4][..], 6));
    }

    #[test]
    fn the_rate_is_bounded_and_the_excess_counted() {
        let (session, frames) = test_session(None);
        let per_window = MAX_FRAMES_PER_SEC * RATE_WINDOW_MS / 1000;
        for _ in 0..per_window + 10 {
            session.offer(seen(0, &[0; 8]), 5);
        }
        // The next window takes frames again.
        session.offer(seen(0, &[0; 8]), 5 + RATE_WINDOW_MS);
        assert_eq!(frames.try_iter().count() as u64, per_window + 1);
        assert_eq!(session.dropped(), 10);
    }
}
