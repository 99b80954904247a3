//! The opt-in Prometheus endpoint (`[metrics] listen`): every scrape reads the live counters into
//! a fresh `prometheus-client` registry and encodes it as OpenMetrics text.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_config::control::OverlayStatus;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::http::{self, BadRequest, RequestLine};
use super::kernel::KernelDrops;
use crate::keying::Keying;
use crate::state::MeshState;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PLAIN: &str = "text/plain; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrafficLabels {
    peer: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: String,
    /// "-" for drops that could not be tied to a peer.
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OverlayLabels {
    overlay: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// What a scrape reads.
pub struct Scraped {
    pub state: Arc<MeshState>,
    pub keying: Arc<Keying>,
    pub kernel_drops: Arc<KernelDrops>,
    /// The overlay interfaces as brought up (their MTU).
    pub overlays: Arc<ArcSwap<Vec<OverlayStatus>>>,
}

/// Binds the endpoint; meshd refuses to start when it cannot.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// The listener a running meshd handed over (`crate::upgrade`) if it listens on `address`,
/// else a new one.
pub async fn bind_or_adopt(
    address: SocketAddr,
    inherited: Option<std::os::fd::OwnedFd>,
) -> std::io::Result<TcpListener> {
    let inherited =
        inherited.map(std::net::TcpListener::from).filter(|listener| listener.local_addr().ok() == Some(address));
    match inherited {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            TcpListener::from_std(listener)
        }
        None => bind(address).await,
    }
}

/// Answers scrapes until the runtime stops.
pub async fn serve(listener: TcpListener, scraped: Arc<Scraped>) {
    http::serve(listener, move |request| respond(&scraped, request)).await
}

fn respond(scraped: &Scraped, request: Result<RequestLine<'_>, BadRequest>) -> (u16, &'static str, String) {
    match request {
        Ok(RequestLine { method: "GET" | "HEAD", path: "/metrics" }) => match render(scraped) {
            Ok(text) => (200, CONTENT_TYPE, text),
            Err(_) => (500, PLAIN, "meshd could not encode its metrics; see its log\n".to_string()),
        },
        Ok(RequestLine { method: "GET" | "HEAD", .. }) => (404, PLAIN, "meshd serves its metrics at /metrics\n".into()),
        Ok(_) => (405, PLAIN, "only GET and HEAD are served\n".to_string()),
        Err(error) => (400, PLAIN, format!("{error}\n")),
    }
}

/// The metrics as OpenMetrics text.
pub fn render(scraped: &Scraped) -> Result<String, std::fmt::Error> {
    let state = &scraped.state;
    let topology = state.topology();
    let mut registry = Registry::with_prefix("meshd");

    let configured = Gauge::<i64>::default();
    configured.set(topology.peers.len() as i64);
    registry.register("peers_configured", "Peers of this node in the mesh file", configured);
    let established = Gauge::<i64>::default();
    established.set(crate::report::peers_with_sas(state) as i64);
    registry.register("peers_established", "Peers with an SA in both directions", established);

    let bytes = Family::<TrafficLabels, Counter>::default();
    let packets = Family::<TrafficLabels, Counter>::default();
    let path_mtu = Family::<PeerLabels, Gauge>::default();
    let path_overlay_mtu = Family::<PeerLabels, Gauge>::default();
    let rekeys = Family::<PeerLabels, Counter>::default();
    let failures = Family::<PeerLabels, Counter>::default();
    let send_errors = Family::<DropLabels, Counter>::default();
    let early_esp = Family::<PeerLabels, Counter>::default();
    for peer in &topology.peers {
        for (errno, count) in peer.counters.send_errors.snapshot() {
            send_errors.get_or_create(&DropLabels { reason: errno, peer: peer.name.clone() }).inc_by(count);
        }
        let counters = &peer.counters;
        let early = counters.early_esp_packets.load(Ordering::Relaxed);
        early_esp.get_or_create(&PeerLabels { peer: peer.name.clone() }).inc_by(early);
        for (direction, byte_count, packet_count) in
            [("tx", &counters.tx_bytes, &counters.tx_packets), ("rx", &counters.rx_bytes, &counters.rx_packets)]
        {
            let labels = TrafficLabels { peer: peer.name.clone(), direction: direction.to_string() };
            bytes.get_or_create(&labels).inc_by(byte_count.load(Ordering::Relaxed));
            packets.get_or_create(&labels).inc_by(packet_count.load(Ordering::Relaxed));
        }
        let report = peer.path_mtu.report();
        if let Some(mtu) = report.path_mtu {
            path_mtu.get_or_create(&PeerLabels { peer: peer.name.clone() }).set(i64::from(mtu));
        }
        if let Some(mtu) = report.overlay_mtu {
            path_overlay_mtu.get_or_create(&PeerLabels { peer: peer.name.clone() }).set(i64::from(mtu));
        }
        if let Some(stats) = scraped.keying.stats(peer.id) {
            let labels = PeerLabels { peer: peer.name.clone() };
            rekeys.get_or_create(&labels).inc_by(stats.rekeys);
            failures.get_or_create(&labels).inc_by(stats.handshake_failures);
        }
    }
    registry.register("peer_bytes", "Overlay frame bytes per peer and direction (tx: sent, rx: received)", bytes);
    registry.register("peer_packets", "Overlay frames per peer and direction (tx: sent, rx: received)", packets);
    registry.register("path_mtu", "Underlay path MTU toward each peer, in bytes (docs/mtu.md)", path_mtu);
    registry.register(
        "path_overlay_mtu",
        "The largest overlay packet the path toward each peer carries, in bytes; below an overlay's MTU, larger packets are dropped",
        path_overlay_mtu,
    );
    let overlay_mtu = Family::<OverlayLabels, Gauge>::default();
    for overlay in crate::pmtu::status::overlays(state, &scraped.overlays.load()) {
        overlay_mtu.get_or_create(&OverlayLabels { overlay: overlay.name }).set(i64::from(overlay.mtu));
    }
    registry.register(
        "overlay_mtu",
        "Each overlay interface's MTU, in bytes (as `mtu = \"auto\"` set it)",
        overlay_mtu,
    );
    registry.register("rekeys", "Child SAs replaced by a rekey, per IKE peer", rekeys);
    registry.register("handshake_failures", "Failed IKE SA attempts, per IKE peer", failures);
    registry.register(
        "early_esp_packets",
        "ESP from a peer that came before its inbound SA was installed, kept and handed on once it was",
        early_esp,
    );
    registry.register(
        "send_errors",
        "Packets to a peer the kernel refused to send, by errno (ENOBUFS: neighbour table full, docs/install.md)",
        send_errors,
    );

    let drops = Family::<DropLabels, Counter>::default();
    let report = state.drops.report(|id| topology.peer_name(id), None);
    for (peer, reasons) in &report.by_peer {
        for (reason, count) in reasons {
            drops.get_or_create(&DropLabels { reason: reason.to_string(), peer: peer.clone() }).inc_by(*count);
        }
    }
    registry.register("drops", "Packets meshd dropped, by reason and peer (docs/diagnostics.md)", drops);

    let notices_lost = Counter::<u64>::default();
    notices_lost.inc_by(state.sa_notices.lost());
    registry.register(
        "sa_notices_lost",
        "Notices of the datapath to the SA manager (unknown SPIs, SAs running out) lost to a full queue",
        notices_lost,
    );

    let kernel = scraped.kernel_drops.report(None);
    let kernel_drops = Family::<ReasonLabels, Counter>::default();
    for (reason, count) in &kernel.by_reason {
        kernel_drops.get_or_create(&ReasonLabels { reason: reason.clone() }).inc_by(*count);
    }
    registry.register("kernel_drops", "Mesh packets the kernel dropped, by the kernel's reason (eBPF)", kernel_drops);

    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}
