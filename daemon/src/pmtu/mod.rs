//! Path MTU per peer (docs/mtu.md): learnt from the kernel (the route towards the peer, lowered by
//! ICMP when any arrives) and by probing through the SA itself ([`search`]); enforced by the
//! datapath, which drops frames too large for their peer's path and answers them with ICMP
//! ([`crate::wire::too_big`]). The datapath reads one atomic per packet; the [`driver`] writes it.

pub mod auto;
pub mod driver;
pub mod route;
pub mod search;
pub mod status;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot, Notify};

use crate::ids::PeerId;
use crate::wire::inband::InbandHeader;

/// How many in-band messages may wait for the driver.
const INBAND_QUEUE_LEN: usize = 256;
/// At most one ICMP too-big answer per peer in this many milliseconds.
const TOO_BIG_INTERVAL_MS: u64 = 10;

/// An in-band message as the datapath received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InbandMessage {
    pub peer: PeerId,
    pub header: InbandHeader,
    /// How many bytes of plaintext carried it: an echo reply is never larger than its request,
    /// whatever size the request claims (no amplification).
    pub plaintext_len: usize,
}

/// What `ikectl peers` shows about a peer's path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathReport {
    /// The underlay path MTU in use; `None` before the driver first looked.
    pub path_mtu: Option<u32>,
    /// The largest overlay IP packet that fits it.
    pub overlay_mtu: Option<u32>,
    /// How the path MTU was learnt: "probed", "probing" (the kernel's figure, being checked),
    /// or "kernel" (this peer is not probed).
    pub source: &'static str,
    /// The probe search's state, for probed peers.
    pub search: Option<&'static str>,
}

/// One peer's limit, read per packet, and its report, read by the control socket. Each
/// [`crate::topology::Peer`] holds its own, kept across reloads.
#[derive(Debug, Default)]
pub struct PeerPathMtu {
    /// The largest overlay IP packet the path carries; 0 while unknown (no limit).
    overlay_limit: AtomicU32,
    last_too_big_ms: AtomicU64,
    report: Mutex<PathReport>,
}

impl PeerPathMtu {
    /// The largest overlay IP packet (without Ethernet header) that fits the path, if known.
    pub fn overlay_limit(&self) -> Option<u32> {
        Some(self.overlay_limit.load(Ordering::Relaxed)).filter(|limit| *limit != 0)
    }

    /// True at most once per `TOO_BIG_INTERVAL_MS`: whether an ICMP answer may go out now.
    pub fn may_answer_too_big(&self, now_ms: u64) -> bool {
        let last = self.last_too_big_ms.load(Ordering::Relaxed);
        (last == 0 || now_ms.saturating_sub(last) >= TOO_BIG_INTERVAL_MS)
            && self.last_too_big_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    pub fn report(&self) -> PathReport {
        self.report.lock().map(|report| report.clone()).unwrap_or_default()
    }

    pub(crate) fn publish(&self, report: PathReport) {
        self.overlay_limit.store(report.overlay_mtu.unwrap_or(0), Ordering::Relaxed);
        if let Ok(mut current) = self.report.lock() {
            *current = report;
        }
    }
}

/// Overlay MTUs retuned since they were brought up, the queue of in-band messages from the
/// datapath to the driver, and the echo requests `ikectl ping` asks the driver to send. (Per-peer
/// path MTUs live on the peers.)
pub struct PathMtus {
    /// By overlay name: the MTU and how it was chosen, when `mtu = "auto"` retuned it.
    overlays: Mutex<HashMap<String, (u16, String)>>,
    inbox: mpsc::Sender<InbandMessage>,
    /// Taken once by the driver.
    receiver: Mutex<Option<mpsc::Receiver<InbandMessage>>>,
    echoes: mpsc::Sender<EchoOrder>,
    /// Taken once by the driver.
    echo_receiver: Mutex<Option<mpsc::Receiver<EchoOrder>>>,
    /// Told of every change the kernel reports on the underlay (links, addresses, routes).
    underlay_changed: Notify,
    /// Whether anything follows those reports; without, the driver reads the routes by the clock.
    underlay_followed: AtomicBool,
}

/// An echo request to send through the peer's SA; `reply` gets when the reply arrived.
#[derive(Debug)]
pub struct EchoOrder {
    pub peer: PeerId,
    pub id: u32,
    /// The request's size on the underlay (the smallest that holds it when smaller).
    pub size: u16,
    pub reply: oneshot::Sender<std::time::Instant>,
}

/// Echo orders that may wait for the driver.
const ECHO_QUEUE_LEN: usize = 64;

impl Default for PathMtus {
    fn default() -> Self {
        let (inbox, receiver) = mpsc::channel(INBAND_QUEUE_LEN);
        let (echoes, echo_receiver) = mpsc::channel(ECHO_QUEUE_LEN);
        PathMtus {
            overlays: Mutex::new(HashMap::new()),
            inbox,
            receiver: Mutex::new(Some(receiver)),
            echoes,
            echo_receiver: Mutex::new(Some(echo_receiver)),
            underlay_changed: Notify::new(),
            underlay_followed: AtomicBool::new(false),
        }
    }
}

impl PathMtus {
    /// Overlay `name`'s interface now has `mtu`, chosen as `reason` says.
    pub fn set_overlay_mtu(&self, name: &str, mtu: u16, reason: String) {
        if let Ok(mut overlays) = self.overlays.lock() {
            overlays.insert(name.to_string(), (mtu, reason));
        }
    }

    /// Overlay `name`'s MTU and its reason, if retuned since it was brought up.
    pub fn overlay_mtu(&self, name: &str) -> Option<(u16, String)> {
        self.overlays.lock().ok()?.get(name).cloned()
    }

    /// Forgets what was retuned for `name` (a reload brought its interface up anew).
    pub fn forget_overlay(&self, name: &str) {
        if let Ok(mut overlays) = self.overlays.lock() {
            overlays.remove(name);
        }
    }

    /// Queues a received message for the driver; false when the queue is full.
    pub fn forward(&self, message: InbandMessage) -> bool {
        self.inbox.try_send(message).is_ok()
    }

    /// The driver's end of the queue (once).
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<InbandMessage>> {
        self.receiver.lock().ok().and_then(|mut receiver| receiver.take())
    }

    /// Asks the driver to send an echo request; false when its queue is full or it is not running.
    pub fn order_echo(&self, order: EchoOrder) -> bool {
        self.echoes.try_send(order).is_ok()
    }

    /// Whether the kernel's reports of underlay changes are followed (`true` once the thread
    /// that reads them runs, `false` again if it stops).
    pub fn follow_underlay(&self, followed: bool) {
        self.underlay_followed.store(followed, Ordering::Relaxed);
        // A driver waiting on the clock or on reports looks again.
        self.underlay_changed.notify_one();
    }

    pub fn underlay_followed(&self) -> bool {
        self.underlay_followed.load(Ordering::Relaxed)
    }

    /// The kernel reported a change of a link, an address or a route. Changes that come while
    /// the driver is busy are coalesced into one.
    pub fn underlay_changed(&self) {
        self.underlay_changed.notify_one();
    }

    /// Waits for the next [`PathMtus::underlay_changed`] (or one that came since the last wait).
    pub async fn next_underlay_change(&self) {
        self.underlay_changed.notified().await;
    }

    /// The driver's end of the echo orders (once).
    pub fn take_echo_receiver(&self) -> Option<mpsc::Receiver<EchoOrder>> {
        self.echo_receiver.lock().ok().and_then(|mut receiver| receiver.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_big_answers_are_rate_limited() {
        let peer = PeerPathMtu::default();
        assert!(peer.may_answer_too_big(5), "the first answer goes at once");
        assert!(peer.may_answer_too_big(100));
        assert!(!peer.may_answer_too_big(105));
        assert!(peer.may_answer_too_big(110));
    }

    #[test]
    fn no_limit_until_published() {
        let peer = PeerPathMtu::default();
        assert_eq!(peer.overlay_limit(), None);
        peer.publish(PathReport { path_mtu: Some(1280), overlay_mtu: Some(1188), source: "probed", search: None });
        assert_eq!(peer.overlay_limit(), Some(1188));
        assert_eq!(peer.report().source, "probed");
    }
}
