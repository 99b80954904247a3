//! `ikectl ping NODE`: probes through the pair's real SA (meshd's in-band echo), this node's
//! view of the pair and the peer's own view (asked over the authenticated diagnostic query, which
//! works when the SAs do not), side by side, and a verdict in plain words with the fix.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mesh_config::control::{
    DropReason, IkeSaInfo, IkeView, PeerView, PingReport, PingRow, ProbeSummary, RecentDrop, SaOrigin, SaView, Spi,
};
use mesh_config::{Encap, MeshConfig};

use tokio::sync::oneshot;

use super::query::{QueryService, QUERY_PORT};
use super::Sources;
use crate::error::RequestError;
use crate::ike::IkeState;
use crate::keying::Keying;
use crate::pmtu::EchoOrder;
use crate::state::MeshState;
use crate::topology::PeerId;

/// How long a probe waits for its echo reply.
const ECHO_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after an answered probe.
const ECHO_INTERVAL: Duration = Duration::from_millis(100);
/// Recent drops a view carries at most (fewer when the view would not fit a query datagram).
const RECENT_DROPS: usize = 5;
/// Drop reasons that say the two ends' SAs disagree.
const SA_TROUBLE: &[DropReason] = &[DropReason::Authentication, DropReason::UnknownSpi, DropReason::BadPadding];

/// This node's view of the pair with `peer`; `observed` is where the asker's query came from.
pub fn view_of_pair(state: &MeshState, keying: &Keying, peer: PeerId, observed: Option<SocketAddr>) -> PeerView {
    let topology = state.topology();
    let clock = &state.clock;
    let ike = keying.ike_sas(Some(peer));
    let established = |sa: &&IkeSaInfo| IkeState::from_text(&sa.state) == Some(IkeState::Established);
    let ike = ike.iter().find(established).or(ike.first()).map(|sa| IkeView {
        initiator_spi: sa.initiator_spi.clone(),
        responder_spi: sa.responder_spi.clone(),
        state: sa.state.clone(),
        nat_detected: sa.nat_detected,
        established_secs: sa.established_secs,
    });
    let tables = state.sadb.load();
    let outbound = tables.outbound(peer).map(|sa| SaView {
        spi: Spi(sa.params.spi),
        age_secs: clock.secs_since(sa.params.created_ms).unwrap_or(0),
        sequence: sa.last_sequence(),
        packets: sa.counters.packets.load(Ordering::Relaxed),
    });
    let inbound = tables
        .inbound_sas()
        .filter(|sa| sa.params.peer == peer)
        .map(|sa| SaView {
            spi: Spi(sa.params.spi),
            age_secs: clock.secs_since(sa.params.created_ms).unwrap_or(0),
            sequence: sa.replay().state().highest,
            packets: sa.counters.packets.load(Ordering::Relaxed),
        })
        .collect();
    let path = topology.peer(peer).path_mtu.report();
    let report = state.drops.report(|id| topology.peer_name(id), Some(peer));
    let recent_drops = report
        .recent
        .iter()
        .rev()
        .take(RECENT_DROPS)
        .rev()
        .map(|d| RecentDrop { at_unix_ms: d.at_unix_ms, reason: d.reason, spi: d.spi })
        .collect();
    PeerView {
        node: topology.node_name.clone(),
        underlay_address: topology.local_address,
        observed_source: observed,
        ike,
        outbound,
        inbound,
        path_mtu: path.path_mtu,
        path_mtu_source: path.source.to_string(),
        path_overlay_mtu: path.overlay_mtu,
        drops: report.by_reason,
        recent_drops,
    }
}

/// The view as JSON of at most `max` bytes: the oldest recent drops go first when it is too long.
pub fn encode_view(mut view: PeerView, max: usize) -> Vec<u8> {
    loop {
        let body = serde_json::to_vec(&view).unwrap_or_default();
        if body.len() <= max || view.recent_drops.is_empty() {
            return body;
        }
        view.recent_drops.remove(0);
    }
}

/// The whole report, asking the peer with `query` under the keys of `config`; an error only for a
/// peer that does not exist.
pub async fn ping(
    sources: Sources<'_>,
    query: &QueryService,
    config: &MeshConfig,
    peer_name: &str,
    count: u32,
    size: u32,
) -> Result<PingReport, RequestError> {
    let Sources { state, keying, overlays } = sources;
    let topology = state.topology_full();
    let peer_id = topology.resolve_peer(peer_name).map_err(RequestError::UnknownPeer)?;
    let peer = topology.peer(peer_id);
    let me = topology.node_name.clone();
    let ask = || query.ask(config, keying, &me, peer);
    let before = ask().await;
    let probes = probe(state, keying, peer_id, count, size).await;
    let after = ask().await;
    let local = view_of_pair(state, keying, peer_id, None);
    let mut verdicts = Vec::new();
    let remote = match (&before, after) {
        (_, Ok((view, from))) => Some((view, from)),
        (_, Err(why)) => {
            verdicts.push(why.to_string());
            None
        }
    };
    let peer_drops_before = before.as_ref().map(|(view, _)| view.drops.clone()).unwrap_or_default();
    let encap = topology.encap;
    let overlays = crate::pmtu::status::overlays(state, overlays);
    let mtu_warnings = crate::pmtu::status::peer_warnings(peer, &overlays);
    let healthy = mtu_warnings.is_empty();
    verdicts.extend(mtu_warnings);
    let healthy =
        healthy & judge(&local, remote.as_ref(), &peer_drops_before, &probes, &peer.name, encap, &mut verdicts);
    let rows = rows(&local, remote.as_ref(), &probes, topology.local_address);
    Ok(PingReport {
        node: me,
        peer: peer.name.clone(),
        rows,
        probes,
        verdicts,
        healthy,
        local,
        remote: remote.map(|(view, _)| view),
    })
}

/// Echo requests through the pair's SA, one at a time, each waited for up to `ECHO_TIMEOUT`.
async fn probe(state: &MeshState, keying: &Keying, peer: PeerId, count: u32, size: u32) -> ProbeSummary {
    let mut summary = ProbeSummary {
        size,
        sent: 0,
        received: 0,
        rtt_min_ms: None,
        rtt_avg_ms: None,
        rtt_max_ms: None,
        skipped: None,
    };
    // Only meshd peers that said so answer in-band echoes (as for path-MTU probes); a request to
    // any other would be dropped there and counted here as a loss.
    let answers = state.sadb.load().outbound(peer).is_none_or(|sa| match sa.params.origin {
        SaOrigin::Manual => true,
        SaOrigin::Ike => keying.answers_probes(peer),
    });
    if !answers {
        summary.skipped = Some(
            "the peer did not announce in-band echoes when its SA was negotiated (not meshd, or an older one): \
             no probes through the SA"
                .into(),
        );
        return summary;
    }
    let first_id = match super::query::random_nonce() {
        Ok(nonce) => nonce as u32,
        Err(why) => {
            summary.skipped = Some(why.to_string());
            return summary;
        }
    };
    let size = u16::try_from(size).unwrap_or(u16::MAX);
    let mut rtts = Vec::new();
    for index in 0..count {
        let (reply, answer) = oneshot::channel();
        let started = Instant::now();
        let order = EchoOrder { peer, id: first_id.wrapping_add(index), size, reply };
        if !state.pmtu.order_echo(order) {
            summary.skipped =
                Some("the path-MTU driver, which sends the probes, is not running; see the meshd log".into());
            return summary;
        }
        summary.sent += 1;
        if let Ok(Ok(arrived)) = tokio::time::timeout(ECHO_TIMEOUT, answer).await {
            rtts.push(arrived.saturating_duration_since(started).as_secs_f64() * 1000.0);
            tokio::time::sleep(ECHO_INTERVAL).await;
        }
    }
    summary.received = rtts.len() as u32;
    if !rtts.is_empty() {
        summary.rtt_min_ms = rtts.iter().copied().reduce(f64::min);
        summary.rtt_max_ms = rtts.iter().copied().reduce(f64::max);
        summary.rtt_avg_ms = Some(rtts.iter().sum::<f64>() / rtts.len() as f64);
    }
    summary
}

/// The verdicts; true when nothing is wrong.
fn judge(
    local: &PeerView,
    remote: Option<&(PeerView, SocketAddr)>,
    peer_drops_before: &BTreeMap<DropReason, u64>,
    probes: &ProbeSummary,
    peer: &str,
    encap: Encap,
    verdicts: &mut Vec<String>,
) -> bool {
    let mut healthy = remote.is_some();
    let flush = format!("run ikectl sa flush --peer {peer}");
    match &local.outbound {
        None => {
            healthy = false;
            verdicts.push(format!("this node has no outbound SA for {peer}: see ikectl peers for why, or {flush}"));
        }
        Some(out) => {
            if let Some((view, _)) = remote {
                if !view.inbound.iter().any(|sa| sa.spi == out.spi) {
                    healthy = false;
                    verdicts.push(format!("{peer} has no inbound SA for SPI {}: {flush}", out.spi));
                }
            }
        }
    }
    if let Some((view, from)) = remote {
        match &view.outbound {
            None => {
                healthy = false;
                verdicts
                    .push(format!("{peer} has no outbound SA for this node: run ikectl peers on {peer}, or {flush}"));
            }
            Some(out) if !local.inbound.iter().any(|sa| sa.spi == out.spi) => {
                healthy = false;
                verdicts.push(format!("this node has no inbound SA for {peer}'s SPI {}: {flush}", out.spi));
            }
            Some(_) => {}
        }
        if let Some(seen) = view.observed_source {
            if seen.ip() != local.underlay_address || seen.port() != QUERY_PORT {
                let kind = match (seen.ip() != local.underlay_address, seen.port() != QUERY_PORT) {
                    (true, true) => "source NAT and port translation",
                    (true, false) => "source NAT",
                    _ => "port translation",
                };
                let mut verdict = format!(
                    "NAT between the nodes ({kind}): {peer} sees this node as {seen}, not {}:{QUERY_PORT}",
                    local.underlay_address
                );
                if encap == Encap::Esp {
                    healthy = false;
                    verdict += "; raw ESP does not cross NAT: set encap = \"udp\" in mesh.toml";
                }
                verdicts.push(verdict);
            }
        }
        if from.ip() != view.underlay_address {
            verdicts.push(format!(
                "NAT between the nodes: {peer}'s answers come from {from}, its address is {}",
                view.underlay_address
            ));
        }
        for reason in SA_TROUBLE {
            let count = |drops: &BTreeMap<DropReason, u64>| drops.get(reason).copied().unwrap_or(0);
            let new = count(&view.drops).saturating_sub(count(peer_drops_before));
            if new > 0 {
                healthy = false;
                let spi = local.outbound.as_ref().map_or_else(|| "-".to_string(), |sa| sa.spi.to_string());
                verdicts.push(match reason {
                    DropReason::Authentication => format!(
                        "{peer} drops this node's ESP as authentication failures ({new} during the probes): the keys of SA {spi} differ between the nodes; compare the [[manual_sa]] key of this direction in both mesh files, or {flush}"
                    ),
                    _ => format!("{peer} dropped {new} of this node's packets as {reason} during the probes (SA {spi}): {flush}"),
                });
            }
        }
    }
    match (&probes.skipped, probes.sent) {
        (Some(why), _) => verdicts.push(format!("no probes: {why}")),
        (None, sent) if probes.received < sent => {
            healthy = false;
            verdicts.push(format!("{} of {sent} probes through the SA got no answer", sent - probes.received));
        }
        _ => {}
    }
    if healthy && verdicts.is_empty() {
        verdicts.push(format!("healthy: SAs match crosswise and every probe to {peer} was answered"));
    }
    healthy
}

fn rows(
    local: &PeerView,
    remote: Option<&(PeerView, SocketAddr)>,
    probes: &ProbeSummary,
    address: IpAddr,
) -> Vec<PingRow> {
    let dash = || "-".to_string();
    let view = remote.map(|(view, _)| view);
    let on_peer = |f: &dyn Fn(&PeerView) -> String| view.map_or_else(|| "(no answer)".to_string(), f);
    let ike = |v: &PeerView| {
        v.ike.as_ref().map_or_else(dash, |ike| {
            let nat = if ike.nat_detected { ", NAT detected" } else { "" };
            format!("{} {}/{}{nat}", ike.state, ike.initiator_spi, ike.responder_spi)
        })
    };
    let outbound = |v: &PeerView| {
        v.outbound.as_ref().map_or_else(|| "none".to_string(), |sa| format!("{} seq {}", sa.spi, sa.sequence))
    };
    let inbound = |v: &PeerView| {
        let list: Vec<String> = v.inbound.iter().map(|sa| format!("{} highest {}", sa.spi, sa.sequence)).collect();
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    };
    let rekey = |v: &PeerView| v.outbound.as_ref().map_or_else(dash, |sa| format!("{}s ago", sa.age_secs));
    let drops = |v: &PeerView| {
        if v.drops.is_empty() {
            return "0".to_string();
        }
        v.drops.iter().map(|(r, n)| format!("{r}={n}")).collect::<Vec<_>>().join(" ")
    };
    let recent = |v: &PeerView| {
        let list: Vec<String> = v.recent_drops.iter().map(|d| d.reason.to_string()).collect();
        if list.is_empty() {
            "-".to_string()
        } else {
            list.join(", ")
        }
    };
    let path = |v: &PeerView| match (v.path_mtu, v.path_overlay_mtu) {
        (Some(path), Some(overlay)) => format!("{path} ({}), overlay packets up to {overlay}", v.path_mtu_source),
        (Some(path), None) => format!("{path} ({})", v.path_mtu_source),
        _ => "not known yet".to_string(),
    };
    let row = |what: &str, this_node: String, peer: String| PingRow { what: what.to_string(), this_node, peer };
    let crosswise = |mine: &PeerView, theirs: &PeerView| match &mine.outbound {
        Some(out) if theirs.inbound.iter().any(|sa| sa.spi == out.spi) => format!("{} matches", out.spi),
        Some(out) => format!("{} NOT among the other side's inbound SAs", out.spi),
        None => "no outbound SA".to_string(),
    };
    let rtt = match (probes.rtt_min_ms, probes.rtt_avg_ms, probes.rtt_max_ms) {
        (Some(min), Some(avg), Some(max)) => {
            format!("{}/{} answered, rtt {min:.3}/{avg:.3}/{max:.3} ms", probes.received, probes.sent)
        }
        _ => format!("{}/{} answered", probes.received, probes.sent),
    };
    vec![
        row(
            "this node's underlay address",
            format!("{address}:{QUERY_PORT}"),
            on_peer(&|v| v.observed_source.map_or_else(dash, |s| s.to_string())),
        ),
        row(
            "peer's underlay address",
            remote.map_or_else(dash, |(_, from)| from.to_string()),
            on_peer(&|v| format!("{}:{QUERY_PORT}", v.underlay_address)),
        ),
        row("IKE SA", ike(local), on_peer(&ike)),
        row("outbound Child SA", outbound(local), on_peer(&outbound)),
        row("inbound Child SAs", inbound(local), on_peer(&inbound)),
        row(
            "outbound SPI crosswise",
            view.map_or_else(dash, |v| crosswise(local, v)),
            on_peer(&|v| crosswise(v, local)),
        ),
        row("last rekey (outbound SA age)", rekey(local), on_peer(&rekey)),
        row("path MTU toward the other", path(local), on_peer(&path)),
        row("probes through the SA", rtt, "-".to_string()),
        row("drops for this pair", drops(local), on_peer(&drops)),
        row("recent drops", recent(local), on_peer(&recent)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_trimmed_to_fit() {
        let view = PeerView {
            node: "n2".into(),
            underlay_address: IpAddr::from([198, 18, 0, 2]),
            observed_source: None,
            ike: None,
            outbound: None,
            inbound: Vec::new(),
            path_mtu: Some(1500),
            path_mtu_source: "probed".into(),
            path_overlay_mtu: Some(1408),
            drops: BTreeMap::new(),
            recent_drops: (0..50)
                .map(|i| RecentDrop { at_unix_ms: i, reason: DropReason::Replay, spi: None })
                .collect(),
        };
        let body = encode_view(view, 400);
        assert!(body.len() <= 400);
        let back: PeerView = serde_json::from_slice(&body).unwrap();
        assert!(!back.recent_drops.is_empty() && back.recent_drops.last().unwrap().at_unix_ms == 49);
    }
}
