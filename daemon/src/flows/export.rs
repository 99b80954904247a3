//! The exporter: every `EXPORT_INTERVAL` it takes the expired flows out of the meter and sends
//! them to the collector as IPFIX over UDP, with the templates first and again every
//! `TEMPLATE_REFRESH` (RFC 7011 §8.4: a UDP collector learns them only that way).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mesh_config::FlowsSection;
use tokio::net::UdpSocket;

use super::ipfix::{MessageWriter, Record};
use super::{Expired, FlowMeter};
use crate::error::DaemonError;
use crate::state::MeshState;

/// How often expired flows are looked for.
const EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the templates are sent again.
pub const TEMPLATE_REFRESH: Duration = Duration::from_secs(30);

/// With `[flows] ipfix`: starts metering in the datapath and exporting (a task on the runtime).
pub async fn start(state: &Arc<MeshState>, config: &FlowsSection) -> Result<(), DaemonError> {
    let Some(collector) = config.ipfix else { return Ok(()) };
    let local: SocketAddr = match collector {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let failed = |source| DaemonError::FlowExport { collector, source };
    let socket = UdpSocket::bind(local).await.map_err(failed)?;
    socket.connect(collector).await.map_err(failed)?;
    let meter = Arc::new(FlowMeter::new(config.max_flows));
    state.observers.start_flows(meter.clone());
    tracing::info!(%collector, "exporting the overlays' flows as IPFIX");
    tokio::spawn(run(state.clone(), meter, socket, *config));
    Ok(())
}

/// Exports until the runtime stops.
async fn run(state: Arc<MeshState>, meter: Arc<FlowMeter>, socket: UdpSocket, config: FlowsSection) {
    let domain = observation_domain(&state);
    let mut writer = MessageWriter::new(domain);
    let mut templates_sent: Option<Instant> = None;
    let mut overflow_reported = 0;
    let mut interval = tokio::time::interval(EXPORT_INTERVAL);
    let (active_ms, idle_ms) = (config.active_timeout.as_millis() as u64, config.idle_timeout.as_millis() as u64);
    loop {
        interval.tick().await;
        let now_ms = state.clock.now_ms();
        let expired = meter.expire(now_ms, active_ms, idle_ms, false);
        let unix_now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let export_secs = unix_now.as_secs() as u32;
        let mut messages = Vec::new();
        if templates_sent.is_none_or(|at| at.elapsed() >= TEMPLATE_REFRESH) {
            let mut message = Vec::new();
            writer.templates(export_secs, &mut message);
            messages.push(message);
            templates_sent = Some(Instant::now());
        }
        // The mesh clock's milliseconds as Unix time.
        let offset_ms = (unix_now.as_millis() as u64).saturating_sub(now_ms);
        let topology = state.topology();
        let names: Vec<(String, String)> = expired
            .iter()
            .map(|flow| {
                let overlay = topology.overlays.get(flow.key.overlay.0).map_or_else(String::new, |o| o.name.clone());
                (overlay, topology.peer_name(flow.key.peer))
            })
            .collect();
        let records: Vec<Record<'_>> =
            expired.iter().zip(&names).map(|(flow, (overlay, peer))| record(flow, overlay, peer, offset_ms)).collect();
        let mut left = &records[..];
        while !left.is_empty() {
            let mut message = Vec::new();
            let taken = writer.records(export_secs, left, &mut message);
            messages.push(message);
            left = &left[taken..];
        }
        for message in messages {
            if let Err(error) = socket.send(&message).await {
                tracing::debug!(%error, "sending IPFIX to the collector failed");
            }
        }
        let overflow = meter.overflow();
        if overflow > overflow_reported {
            tracing::warn!(
                packets = overflow - overflow_reported,
                max_flows = config.max_flows,
                "the flow cache is full: packets of new flows were not metered; raise [flows] max_flows"
            );
            overflow_reported = overflow;
        }
    }
}

fn record<'a>(flow: &Expired, overlay: &'a str, peer: &'a str, offset_ms: u64) -> Record<'a> {
    Record {
        addresses: flow.key.addresses,
        source_port: flow.key.source_port,
        destination_port: flow.key.destination_port,
        protocol: flow.key.protocol,
        tcp_flags: flow.counters.tcp_flags,
        direction: flow.key.direction,
        vni: flow.key.vni,
        octets: flow.counters.octets,
        packets: flow.counters.packets,
        start_unix_ms: flow.counters.first_ms + offset_ms,
        end_unix_ms: flow.counters.last_ms + offset_ms,
        end_reason: flow.reason,
        overlay,
        peer,
    }
}

/// The node's underlay address folded into 32 bits: distinct for the nodes of a mesh.
fn observation_domain(state: &MeshState) -> u32 {
    match state.topology().local_address {
        std::net::IpAddr::V4(address) => u32::from(address),
        std::net::IpAddr::V6(address) => (u128::from(address) & u128::from(u32::MAX)) as u32,
    }
}
