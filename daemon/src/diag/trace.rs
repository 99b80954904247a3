//! `ikectl trace (MAC|IP) [--overlay NAME]`: the forwarding decision for a frame to an overlay
//! address, hop by hop, as the datapath would take it: overlay interface -> neighbour entry (for
//! an IP) -> FDB entry -> peer node -> outbound SA -> underlay route -> path MTU, with the
//! counters of each hop. The kernel's neighbour table is read with `ip -j neigh`; the underlay
//! route and its MTU come from the daemon's one route lookup ([`crate::pmtu::route`]), the
//! same that `mtu = "auto"` and the path-MTU driver read.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::Ordering;

use mesh_config::control::{TraceHop, TraceReport};

use super::Sources;
use crate::error::TraceError;
use crate::overhead::{Encapsulation, IpVersion};
use crate::pmtu::route::{self, RouteError, UnderlayRoute};
use crate::sadb::OutboundSa;
use crate::topology::{Overlay, Peer, Topology};
use crate::wire::ethernet::EthernetAddress;

/// What the operator asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Mac(EthernetAddress),
    Ip(IpAddr),
}

impl Target {
    fn parse(text: &str) -> Result<Target, TraceError> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Target::Ip(ip));
        }
        EthernetAddress::from_str(text).map(Target::Mac).map_err(|_| TraceError::NotAnAddress(text.to_string()))
    }
}

fn hop(name: &str, summary: String) -> TraceHop {
    TraceHop { hop: name.to_string(), summary, fields: BTreeMap::new(), counters: BTreeMap::new(), problem: None }
}

fn field(hop: &mut TraceHop, key: &str, value: impl ToString) {
    hop.fields.insert(key.to_string(), value.to_string());
}

/// The trace; an error names what could not be understood.
pub fn trace(sources: &Sources<'_>, target: &str, overlay: Option<&str>) -> Result<TraceReport, TraceError> {
    let target_parsed = Target::parse(target)?;
    let topology = sources.state.topology_full();
    let overlay = choose_overlay(&topology, overlay, target_parsed)?;
    let mut hops = vec![overlay_hop(sources, overlay)];
    let mac = match target_parsed {
        Target::Mac(mac) => Some(mac),
        Target::Ip(ip) => {
            let (neighbour, mac) = neighbour_hop(&overlay.interface, ip);
            hops.push(neighbour);
            mac
        }
    };
    let (fdb, peers) = fdb_hop(sources, &topology, overlay, mac);
    hops.push(fdb);
    let tables = sources.state.sadb.load();
    for peer in peers {
        hops.push(peer_hop(sources, peer));
        let Some(sa) = tables.outbound(peer.id) else {
            let mut none = hop("outbound SA", format!("none for {}", peer.name));
            none.problem = Some(format!(
                "frames to {} are dropped as no_outbound_sa: see `ikectl peers` for its keying state, or `ikectl sa flush --peer {}`",
                peer.name, peer.name
            ));
            hops.push(none);
            continue;
        };
        hops.push(sa_hop(&sa));
        let (route_hop, route) = route_hop(topology.local_address, sa.params.remote.ip());
        hops.push(route_hop);
        hops.push(mtu_hop(sources, &topology, overlay, peer, &sa, route.as_ref()));
    }
    Ok(TraceReport { target: target.to_string(), overlay: overlay.name.clone(), hops })
}

fn choose_overlay<'t>(topology: &'t Topology, name: Option<&str>, target: Target) -> Result<&'t Overlay, TraceError> {
    let names = || topology.overlays.iter().map(|o| o.name.clone()).collect();
    if let Some(name) = name {
        return topology.overlays.iter().find(|o| o.name == name).ok_or_else(|| TraceError::NoSuchOverlay {
            name: name.to_string(),
            node: topology.node_name.clone(),
            overlays: names(),
        });
    }
    if let [only] = &topology.overlays[..] {
        return Ok(only);
    }
    let in_subnet = |o: &&Overlay| match (target, o.address) {
        (Target::Ip(ip), Some((own, prefix))) => same_subnet(ip, own, prefix),
        _ => false,
    };
    topology.overlays.iter().find(in_subnet).ok_or_else(|| TraceError::AmbiguousOverlay { overlays: names() })
}

fn same_subnet(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    let bits = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32u32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    };
    let ((a, a_len), (b, b_len)) = (bits(a), bits(b));
    let prefix = u32::from(prefix);
    a_len == b_len && prefix <= a_len && (prefix == 0 || (a ^ b) >> (128 - prefix) == 0)
}

fn overlay_hop(sources: &Sources<'_>, overlay: &Overlay) -> TraceHop {
    let mtu = current_mtu(sources, &overlay.name);
    let mut h = hop("overlay", format!("{} (VNI {}) on interface {}", overlay.name, overlay.vni, overlay.interface));
    field(&mut h, "interface", &overlay.interface);
    field(&mut h, "vni", overlay.vni);
    if let Some(mtu) = mtu {
        field(&mut h, "mtu", mtu);
    }
    h.counters = interface_counters(&overlay.interface, &["tx_packets", "rx_packets", "tx_dropped", "rx_dropped"]);
    h
}

/// The kernel's neighbour entry for `ip` on the overlay interface, and its MAC when it has one.
fn neighbour_hop(interface: &str, ip: IpAddr) -> (TraceHop, Option<EthernetAddress>) {
    let address = ip.to_string();
    let entries = ip_json(&["neigh", "show", "to", &address, "dev", interface]);
    let entry = entries.as_ref().ok().and_then(|list| list.as_array()).and_then(|list| list.first()).cloned();
    let mac = entry.as_ref().and_then(|e| e["lladdr"].as_str()).and_then(|m| m.parse::<EthernetAddress>().ok());
    let states: Vec<String> = entry
        .as_ref()
        .and_then(|e| e["state"].as_array())
        .map(|s| s.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let mut h = match (&entries, mac) {
        (Err(error), _) => {
            let mut h = hop("neighbour", format!("cannot read the neighbour table ({error})"));
            h.problem = Some("install iproute2 (the `ip` command) for neighbour lookups".to_string());
            h
        }
        (Ok(_), Some(mac)) => hop("neighbour", format!("{ip} is at {mac} ({})", states.join(","))),
        (Ok(_), None) => {
            let mut h = hop("neighbour", format!("no entry for {ip} on {interface}"));
            h.problem = Some(format!(
                "the kernel resolves {ip} first (ARP/ND, sent to every peer); if it never answers, {ip} is not on the overlay: ping it, then trace again"
            ));
            h
        }
    };
    field(&mut h, "ip", ip);
    if let Some(mac) = mac {
        field(&mut h, "mac", mac);
    }
    if !states.is_empty() {
        field(&mut h, "state", states.join(","));
    }
    (h, mac)
}

/// The FDB decision: the peer behind `mac`, or every peer on the overlay (flooding).
fn fdb_hop<'t>(
    sources: &Sources<'_>,
    topology: &'t Topology,
    overlay: &Overlay,
    mac: Option<EthernetAddress>,
) -> (TraceHop, Vec<&'t Peer>) {
    let everyone: Vec<&Peer> = overlay.members.iter().map(|id| topology.peer(*id)).collect();
    let Some(mac) = mac else {
        let h = hop("fdb", format!("no MAC yet: flooded to every peer on the overlay ({})", everyone.len()));
        return (h, everyone);
    };
    if !mac.is_unicast() {
        let mut h =
            hop("fdb", format!("{mac} is broadcast/multicast: sent to every peer on the overlay ({})", everyone.len()));
        field(&mut h, "mac", mac);
        return (h, everyone);
    }
    let learned = overlay.fdb.entries().into_iter().find(|(m, _, _)| *m == mac);
    match learned.map(|(_, peer, seen_ms)| (topology.peer(peer), seen_ms)) {
        Some((peer, seen_ms)) => {
            let age = sources.state.clock.secs_since(seen_ms).unwrap_or(0);
            let mut h = hop("fdb", format!("{mac} learned behind {} {age}s ago", peer.name));
            field(&mut h, "mac", mac);
            field(&mut h, "peer", &peer.name);
            field(&mut h, "kind", "learned");
            field(&mut h, "age_secs", age);
            (h, vec![peer])
        }
        None => {
            let mut h = hop(
                "fdb",
                format!(
                    "{mac} not learned: unknown unicast, flooded to every peer on the overlay ({})",
                    everyone.len()
                ),
            );
            field(&mut h, "mac", mac);
            (h, everyone)
        }
    }
}

fn peer_hop(sources: &Sources<'_>, peer: &Peer) -> TraceHop {
    let keying = sources.keying.state_of(peer.id).to_string();
    let mut h = hop("peer", format!("{} at {} ({keying})", peer.name, peer.address));
    field(&mut h, "peer", &peer.name);
    field(&mut h, "address", peer.address);
    field(&mut h, "keying", keying);
    let c = &peer.counters;
    for (name, counter) in [
        ("tx_packets", &c.tx_packets),
        ("tx_bytes", &c.tx_bytes),
        ("rx_packets", &c.rx_packets),
        ("rx_bytes", &c.rx_bytes),
    ] {
        h.counters.insert(name.to_string(), counter.load(Ordering::Relaxed));
    }
    h.counters.insert("drops".to_string(), sources.state.drops.peer_total(peer.id));
    h
}

fn sa_hop(sa: &OutboundSa) -> TraceHop {
    let p = &sa.params;
    let mut h =
        hop("outbound SA", format!("SPI 0x{:08x}, {}, {}, {} to {}", p.spi, p.cipher, p.mode, p.encap, p.remote));
    field(&mut h, "spi", format!("0x{:08x}", p.spi));
    field(&mut h, "cipher", p.cipher);
    field(&mut h, "mode", p.mode);
    field(&mut h, "encap", p.encap);
    field(&mut h, "remote", p.remote);
    h.counters.insert("packets".to_string(), sa.counters.packets.load(Ordering::Relaxed));
    h.counters.insert("bytes".to_string(), sa.counters.bytes.load(Ordering::Relaxed));
    h.counters.insert("sequence".to_string(), sa.last_sequence());
    h.counters.insert("drops".to_string(), sa.counters.drops.total());
    h
}

/// The kernel's route from `source` to `destination` (the hop and the route, when there is one).
fn route_hop(source: IpAddr, destination: IpAddr) -> (TraceHop, Option<UnderlayRoute>) {
    let route = match route::underlay_route(source, destination) {
        Ok(route) => route,
        Err(error) => {
            let summary = match error {
                RouteError::NoRoute(_) => format!("no route to {destination}"),
                _ => "cannot ask the kernel".to_string(),
            };
            let mut h = hop("underlay route", summary);
            h.problem = Some(error.to_string());
            return (h, None);
        }
    };
    let mut summary = format!("to {destination} via {}", route.interface);
    if let Some(gateway) = route.gateway {
        summary += &format!(" gateway {gateway}");
    }
    if let Some(source) = route.source {
        summary += &format!(" from {source}");
    }
    let mut h = hop("underlay route", summary);
    field(&mut h, "destination", destination);
    field(&mut h, "interface", &route.interface);
    for (key, value) in [("gateway", route.gateway), ("source", route.source)] {
        if let Some(value) = value {
            field(&mut h, key, value);
        }
    }
    if let Some(mtu) = route.route_mtu {
        field(&mut h, "route_mtu", mtu);
    }
    h.counters = interface_counters(&route.interface, &["tx_packets", "tx_errors", "tx_dropped"]);
    (h, Some(route))
}

fn mtu_hop(
    sources: &Sources<'_>,
    topology: &Topology,
    overlay: &Overlay,
    peer: &Peer,
    sa: &OutboundSa,
    route: Option<&UnderlayRoute>,
) -> TraceHop {
    // The link's MTU capped by the route's own `mtu` metric, as `mtu = "auto"` reads it.
    let kernel_mtu = route.map(UnderlayRoute::mtu);
    // meshd's own figure (probed through the SA) when it has one, else the kernel's.
    let report = peer.path_mtu.report();
    let (path_mtu, source) = match report.path_mtu {
        Some(mtu) => (Some(mtu as usize), report.source),
        None => (kernel_mtu, "kernel"),
    };
    let overlay_mtu = current_mtu(sources, &overlay.name).map(|mtu| mtu as usize);
    let encapsulation = Encapsulation {
        ip_version: IpVersion::of(peer.address),
        encap: topology.encap,
        mode: sa.params.mode,
        cipher: sa.params.cipher,
    };
    let mut h = match (path_mtu, overlay_mtu) {
        (Some(path), Some(overlay_mtu)) => {
            let largest = encapsulation.underlay_len(overlay_mtu);
            let mut h = hop(
                "path MTU",
                format!(
                    "{path} toward {}; a full {overlay_mtu}-byte overlay packet is {largest} bytes on the underlay",
                    peer.name
                ),
            );
            if largest > path {
                h.problem = Some(format!(
                    "overlay packets of {overlay_mtu} bytes do not fit the path ({largest} > {path}): larger ones are dropped as mtu_exceeded and answered with ICMP too-big; lower the overlay's mtu to {} or raise the underlay MTU",
                    encapsulation.overlay_mtu(path).unwrap_or(0)
                ));
            }
            field(&mut h, "path_mtu", path);
            field(&mut h, "path_mtu_source", source);
            field(&mut h, "overlay_mtu", overlay_mtu);
            field(&mut h, "largest_underlay_packet", largest);
            h
        }
        _ => hop("path MTU", "unknown (no underlay interface MTU)".to_string()),
    };
    if let Some(route) = route {
        field(&mut h, "interface_mtu", route.link_mtu);
    }
    h
}

/// The overlay's MTU now (`mtu = "auto"` follows the paths).
fn current_mtu(sources: &Sources<'_>, overlay: &str) -> Option<u32> {
    crate::pmtu::status::overlays(sources.state, sources.overlays)
        .into_iter()
        .find(|o| o.name == overlay)
        .map(|o| o.mtu)
}

/// Counters from /sys/class/net/IFACE/statistics (this network namespace's).
fn interface_counters(interface: &str, names: &[&str]) -> BTreeMap<String, u64> {
    names
        .iter()
        .filter_map(|name| {
            let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/statistics/{name}")).ok()?;
            Some((name.to_string(), text.trim().parse().ok()?))
        })
        .collect()
}

/// `ip -j ARGS`, parsed.
fn ip_json(args: &[&str]) -> Result<serde_json::Value, String> {
    let output = Command::new("ip").arg("-j").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if !output.status.success() {
        // `ip neigh show` fails for an interface that is gone: that is "no entry", not an error.
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_str(&text).map_err(|e| format!("ip printed something else than JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(Target::parse("10.244.0.2"), Ok(Target::Ip("10.244.0.2".parse().unwrap())));
        assert_eq!(Target::parse("02:00:00:00:00:02"), Ok(Target::Mac(EthernetAddress([2, 0, 0, 0, 0, 2]))));
        assert!(Target::parse("n2").unwrap_err().to_string().contains("neither a MAC address"));
    }

    #[test]
    fn subnets() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(same_subnet(ip("10.244.0.9"), ip("10.244.0.1"), 24));
        assert!(!same_subnet(ip("10.245.0.9"), ip("10.244.0.1"), 24));
        assert!(same_subnet(ip("fd00::9"), ip("fd00::1"), 64));
        assert!(!same_subnet(ip("fd00::9"), ip("10.244.0.1"), 0));
        assert!(same_subnet(ip("1.2.3.4"), ip("10.244.0.1"), 0));
    }
}
