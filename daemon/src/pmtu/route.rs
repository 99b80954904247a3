//! The daemon's one route lookup (rtnetlink): the route the kernel takes from this node's
//! address towards another (RTM_GETROUTE, as `ip route get TO from FROM`: the lookup the
//! datapath's packets get, policy routing included), then the name and MTU of that route's link
//! (RTM_GETLINK).
//! `mtu = "auto"`, the path-MTU driver and `ikectl trace` all read the underlay from here.
//!
//! Each request waits up to a second for the kernel, so it never runs on the
//! control-plane runtime: the driver runs it on tokio's blocking pool, one batch at a time;
//! bringing an overlay up and `ikectl trace` already run on threads of their own
//! (docs/architecture.md, "Threads").

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_core::{NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_route::link::{LinkAttribute, LinkLayerType, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteMetric};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};
use nix::errno::Errno;
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

/// Large enough for one route or link reply.
const REPLY_BUFFER_LEN: usize = 16 << 10;
/// The kernel counts `rta_expires` in USER_HZ ticks: 100 a second on every architecture Linux
/// runs meshd on.
const USER_HZ: u64 = 100;
/// The kernel answers these requests while they are sent; a reply that has not come by then is
/// lost, and the thread that asked must not wait for it forever.
const REPLY_TIMEOUT: TimeVal = TimeVal::new(1, 0);

/// The underlay towards one address, as the kernel routes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlayRoute {
    /// The outgoing interface.
    pub interface: String,
    /// The next hop, when the destination is not on the link.
    pub gateway: Option<IpAddr>,
    /// The source address packets leave with.
    pub source: Option<IpAddr>,
    /// The outgoing interface's MTU.
    pub link_mtu: u32,
    /// The route's own `mtu` metric; a path MTU learnt from ICMP shows here too.
    pub route_mtu: Option<u32>,
    /// How long a path MTU learnt from ICMP still holds (the kernel then forgets it, and says
    /// so to no one): the route must be read again then.
    pub mtu_expires: Option<Duration>,
    /// The route's own `hoplimit` metric: the kernel writes it as the TTL (hop limit) of the
    /// packets the route carries, instead of the sysctl's.
    pub hop_limit: Option<u8>,
}

impl UnderlayRoute {
    /// The kernel's path MTU: the link's, capped by the route's metric.
    pub fn mtu(&self) -> usize {
        let mtu = self.route_mtu.map_or(self.link_mtu, |route| route.min(self.link_mtu));
        mtu as usize
    }
}

/// Why a route lookup gave no route.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("the kernel has no route to {0}; add one on the underlay (ESP to it fails as send_failed)")]
    NoRoute(IpAddr),
    #[error("the route to {0} has no outgoing interface (a blackhole or prohibit route?); check `ip route get {0}`")]
    NoInterface(IpAddr),
    #[error("cannot open an rtnetlink socket ({0}); meshd needs to read the routing table")]
    Socket(io::Error),
    #[error("the kernel refused a route lookup ({0}); check `ip route get` and `ip link` by hand")]
    Refused(io::Error),
    #[error("the kernel did not answer an rtnetlink request within {} s; it may be overloaded: try again", REPLY_TIMEOUT.tv_sec())]
    Timeout,
    #[error("the kernel's rtnetlink answer is unreadable ({0}); report this with the kernel version")]
    Malformed(String),
}

/// What the route answer says, before the link is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RouteAnswer {
    interface_index: u32,
    gateway: Option<IpAddr>,
    source: Option<IpAddr>,
    route_mtu: Option<u32>,
    mtu_expires: Option<Duration>,
    hop_limit: Option<u8>,
}

impl RouteAnswer {
    /// The whole route, once its link is known.
    fn over(&self, link: LinkAnswer) -> UnderlayRoute {
        UnderlayRoute {
            interface: link.name,
            gateway: self.gateway,
            source: self.source,
            link_mtu: link.mtu,
            route_mtu: self.route_mtu,
            mtu_expires: self.mtu_expires,
            hop_limit: self.hop_limit,
        }
    }
}

/// What the link answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LinkAnswer {
    name: String,
    mtu: u32,
}

/// One rtnetlink socket for a batch of lookups; links are looked up once per batch.
pub struct RouteLookup {
    socket: Socket,
    sequence: u32,
    links: HashMap<u32, LinkAnswer>,
}

impl RouteLookup {
    pub fn open() -> Result<RouteLookup, RouteError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(RouteError::Socket)?;
        socket.bind_auto().map_err(RouteError::Socket)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(RouteError::Socket)?;
        setsockopt(&socket, sockopt::ReceiveTimeout, &REPLY_TIMEOUT).map_err(|e| RouteError::Socket(e.into()))?;
        Ok(RouteLookup { socket, sequence: 0, links: HashMap::new() })
    }

    /// The route from `source` (an address of this host) towards `destination`, and its link.
    pub fn route(&mut self, source: IpAddr, destination: IpAddr) -> Result<UnderlayRoute, RouteError> {
        let answer = self.request(route_request(source, destination))?;
        let route = parse_route_answer(answer, destination)?;
        let link = match self.links.get(&route.interface_index) {
            Some(link) => link.clone(),
            None => {
                let answer = self.request(link_request(route.interface_index))?;
                let link = parse_link_answer(answer, route.interface_index)?;
                self.links.insert(route.interface_index, link.clone());
                link
            }
        };
        Ok(route.over(link))
    }

    /// The link-layer next hop from `source` towards `destination`: the route's interface, its
    /// MAC address and MTU, and the neighbour entry of the gateway (or of `destination` when it
    /// is on the link), for a sender that writes the Ethernet header itself.
    pub fn next_hop(&mut self, source: IpAddr, destination: IpAddr) -> Result<NextHop, RouteError> {
        let answer = self.request(route_request(source, destination))?;
        let route = parse_route_answer(answer, destination)?;
        let answer = self.request(link_request(route.interface_index))?;
        let local_mac = parse_ethernet_address(&answer);
        let link = parse_link_answer(answer, route.interface_index)?;
        let neighbour_address = route.gateway.unwrap_or(destination);
        let answer = self.request(neighbour_request(route.interface_index, neighbour_address))?;
        Ok(NextHop {
            interface_index: route.interface_index,
            local_mac,
            neighbour: parse_neighbour_answer(answer)?,
            route: route.over(link),
        })
    }

    /// Sends one request and returns the kernel's answer to it (skipping a late answer to an
    /// earlier request that timed out).
    fn request(&mut self, message: RouteNetlinkMessage) -> Result<NetlinkPayload<RouteNetlinkMessage>, RouteError> {
        self.sequence = self.sequence.wrapping_add(1);
        self.socket.send(&emit_request(message, self.sequence), 0).map_err(RouteError::Refused)?;
        let mut reply = vec![0u8; REPLY_BUFFER_LEN];
        loop {
            let len = self.socket.recv(&mut &mut reply[..], 0).map_err(|error| match error.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => RouteError::Timeout,
                _ => RouteError::Refused(error),
            })?;
            let answer = parse_answer(&reply[..len])?;
            if answer.header.sequence_number == self.sequence {
                return Ok(answer.payload);
            }
        }
    }
}

/// Where packets towards one address leave, down to the Ethernet addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    pub interface_index: u32,
    /// The interface's own MAC address; `None` when it is not an Ethernet link.
    pub local_mac: Option<[u8; 6]>,
    /// The kernel's neighbour entry for the next hop, if it has one.
    pub neighbour: Option<Neighbour>,
    pub route: UnderlayRoute,
}

/// One entry of the kernel's neighbour table (ARP or NDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub mac: [u8; 6],
    pub state: NeighbourState,
}

impl Neighbour {
    /// Whether the kernel itself would send to this MAC now without asking the network first:
    /// confirmed (or static) entries, and entries it is already re-confirming (DELAY, PROBE).
    /// A STALE entry is not: only a packet the kernel sends starts its re-confirmation.
    pub fn is_usable(&self) -> bool {
        matches!(
            self.state,
            NeighbourState::Reachable
                | NeighbourState::Permanent
                | NeighbourState::Noarp
                | NeighbourState::Delay
                | NeighbourState::Probe
        )
    }
}

/// rtnetlink multicast groups (linux/rtnetlink.h): links, IPv4 and IPv6 addresses, IPv4 and
/// IPv6 routes.
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;
/// Message types of the reports (linux/rtnetlink.h).
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;

/// What one read of the kernel's reports told.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnderlayChange {
    /// A link, address or route changed in any way: every route lookup may answer differently
    /// now (an MTU, a gateway, a source address, a route gone).
    pub changed: bool,
    /// A link or route appeared or changed: a peer that could not be reached may be now.
    pub appeared: bool,
}

/// The kernel's reports of links, addresses and routes as they change (rtnetlink multicast),
/// on one socket: the path-MTU driver looks up the routes again only when one came (never by
/// polling), and after an outage meshd renegotiates when the link is back instead of at its
/// next timed attempt. `wait` blocks, so it runs on a thread of its own.
pub struct UnderlayEvents {
    socket: Socket,
    buf: Vec<u8>,
}

impl UnderlayEvents {
    pub fn open() -> Result<UnderlayEvents, RouteError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(RouteError::Socket)?;
        let groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE;
        socket.bind(&SocketAddr::new(0, groups)).map_err(RouteError::Socket)?;
        Ok(UnderlayEvents { socket, buf: vec![0u8; REPLY_BUFFER_LEN] })
    }

    /// Waits for the kernel's next reports.
    pub fn wait(&mut self) -> io::Result<UnderlayChange> {
        match self.socket.recv(&mut &mut self.buf[..], 0) {
            Ok(len) => Ok(classify_reports(&self.buf[..len])),
            // The socket's buffer overflowed and reports were lost: anything may have changed.
            Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => {
                Ok(UnderlayChange { changed: true, appeared: true })
            }
            Err(error) => Err(error),
        }
    }
}

/// What the rtnetlink messages of one datagram tell.
fn classify_reports(mut bytes: &[u8]) -> UnderlayChange {
    let mut change = UnderlayChange::default();
    while let Ok(message) = NetlinkBuffer::new_checked(bytes) {
        match message.message_type() {
            RTM_NEWLINK | RTM_NEWROUTE => change = UnderlayChange { changed: true, appeared: true },
            RTM_DELLINK | RTM_NEWADDR | RTM_DELADDR | RTM_DELROUTE => change.changed = true,
            _ => {}
        }
        // Messages are 4-byte aligned (NLMSG_ALIGN).
        let next = (message.length() as usize).next_multiple_of(4);
        if next == 0 || next >= bytes.len() {
            break;
        }
        bytes = &bytes[next..];
    }
    change
}

/// Looks up the route from `source` towards `destination` and its link (one socket for one
/// lookup).
pub fn underlay_route(source: IpAddr, destination: IpAddr) -> Result<UnderlayRoute, RouteError> {
    RouteLookup::open()?.route(source, destination)
}

/// A request as the kernel reads it.
fn emit_request(message: RouteNetlinkMessage, sequence: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = sequence;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::from(message));
    request.finalize();
    let mut bytes = vec![0u8; request.buffer_len()];
    request.serialize(&mut bytes);
    bytes
}

fn route_request(source: IpAddr, destination: IpAddr) -> RouteNetlinkMessage {
    let mut route = RouteMessage::default();
    route.header.address_family = match destination {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let host_prefix = if destination.is_ipv4() { 32 } else { 128 };
    route.header.destination_prefix_length = host_prefix;
    route.header.source_prefix_length = host_prefix;
    route.attributes.push(RouteAttribute::Destination(RouteAddress::from(destination)));
    route.attributes.push(RouteAttribute::Source(RouteAddress::from(source)));
    RouteNetlinkMessage::GetRoute(route)
}

fn link_request(interface_index: u32) -> RouteNetlinkMessage {
    let mut link = LinkMessage::default();
    link.header.index = interface_index;
    RouteNetlinkMessage::GetLink(link)
}

fn neighbour_request(interface_index: u32, address: IpAddr) -> RouteNetlinkMessage {
    let mut neighbour = NeighbourMessage::default();
    neighbour.header.family = match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    neighbour.header.ifindex = interface_index;
    let address = match address {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    };
    neighbour.attributes.push(NeighbourAttribute::Destination(address));
    RouteNetlinkMessage::GetNeighbour(neighbour)
}

/// The MAC address of an Ethernet link from an RTM_NEWLINK answer.
fn parse_ethernet_address(answer: &NetlinkPayload<RouteNetlinkMessage>) -> Option<[u8; 6]> {
    let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) = answer else { return None };
    if link.header.link_layer_type != LinkLayerType::Ether {
        return None;
    }
    link.attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
        _ => None,
    })
}

/// The neighbour entry of an RTM_NEWNEIGH answer; `None` when the kernel has none (ENOENT).
fn parse_neighbour_answer(answer: NetlinkPayload<RouteNetlinkMessage>) -> Result<Option<Neighbour>, RouteError> {
    let neighbour = match answer {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(neighbour)) => neighbour,
        NetlinkPayload::Error(error) if Errno::from_raw(error.raw_code().abs()) == Errno::ENOENT => return Ok(None),
        NetlinkPayload::Error(error) => return Err(RouteError::Refused(error.to_io())),
        other => return Err(RouteError::Malformed(format!("a neighbour lookup was answered with {other:?}"))),
    };
    let mac = neighbour.attributes.iter().find_map(|attribute| match attribute {
        NeighbourAttribute::LinkLayerAddress(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
        _ => None,
    });
    Ok(mac.map(|mac| Neighbour { mac, state: neighbour.header.state }))
}

fn parse_answer(bytes: &[u8]) -> Result<NetlinkMessage<RouteNetlinkMessage>, RouteError> {
    NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(|error| RouteError::Malformed(error.to_string()))
}

fn parse_route_answer(
    answer: NetlinkPayload<RouteNetlinkMessage>,
    destination: IpAddr,
) -> Result<RouteAnswer, RouteError> {
    let route = match answer {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => route,
        NetlinkPayload::Error(error) => {
            let errno = Errno::from_raw(error.raw_code().abs());
            return Err(match errno {
                Errno::ENETUNREACH | Errno::EHOSTUNREACH => RouteError::NoRoute(destination),
                _ => RouteError::Refused(error.to_io()),
            });
        }
        other => return Err(RouteError::Malformed(format!("a route lookup was answered with {other:?}"))),
    };
    let address = |address: &RouteAddress| match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    };
    let mut answer = RouteAnswer {
        interface_index: 0,
        gateway: None,
        source: None,
        route_mtu: None,
        mtu_expires: None,
        hop_limit: None,
    };
    let mut interface_index = None;
    // The kernel names the source it would pick (RTA_PREFSRC) only when it differs from the one
    // the request gave (RTA_SRC, echoed back).
    let (mut requested_source, mut preferred_source) = (None, None);
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Oif(index) => interface_index = Some(*index),
            RouteAttribute::Gateway(gateway) => answer.gateway = address(gateway),
            RouteAttribute::Source(source) => requested_source = address(source),
            RouteAttribute::PrefSource(source) => preferred_source = address(source),
            RouteAttribute::Metrics(metrics) => {
                for metric in metrics {
                    match metric {
                        RouteMetric::Mtu(mtu) if *mtu != 0 => answer.route_mtu = Some(*mtu),
                        // 1-255 (`ip route ... hoplimit 0` sets none); anything else is not one.
                        RouteMetric::Hoplimit(hop_limit) => {
                            answer.hop_limit = u8::try_from(*hop_limit).ok().filter(|hop_limit| *hop_limit != 0)
                        }
                        _ => {}
                    }
                }
            }
            // Signed in the kernel: negative once expired.
            RouteAttribute::CacheInfo(info) if (info.expires as i32) > 0 => {
                answer.mtu_expires = Some(Duration::from_millis(u64::from(info.expires) * 1000 / USER_HZ))
            }
            _ => {}
        }
    }
    answer.source = preferred_source.or(requested_source);
    // Only a learnt path MTU expires here (a configured metric does not).
    answer.mtu_expires = answer.mtu_expires.filter(|_| answer.route_mtu.is_some());
    answer.interface_index = interface_index.ok_or(RouteError::NoInterface(destination))?;
    Ok(answer)
}

fn parse_link_answer(answer: NetlinkPayload<RouteNetlinkMessage>, index: u32) -> Result<LinkAnswer, RouteError> {
    let link = match answer {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => link,
        NetlinkPayload::Error(error) => return Err(RouteError::Refused(error.to_io())),
        other => return Err(RouteError::Malformed(format!("a link lookup was answered with {other:?}"))),
    };
    let mut name = None;
    let mut mtu = None;
    for attribute in link.attributes {
        match attribute {
            LinkAttribute::IfName(found) => name = Some(found),
            LinkAttribute::Mtu(found) => mtu = Some(found),
            _ => {}
        }
    }
    let name = name.unwrap_or_else(|| format!("interface {index}"));
    let mtu = mtu.ok_or_else(|| RouteError::Malformed(format!("the kernel reported no MTU for {name}")))?;
    Ok(LinkAnswer { name, mtu })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's answer to RTM_GETROUTE for 198.19.0.7 from 198.18.0.1, routed `via
    /// 198.18.0.254 dev d0 mtu 1300` (d0 is interface 3 and holds 198.18.0.1/24).
    const ROUTE_V4: &[u8] = &[
        0x7c, 0x00, 0x00, 0x00, 0x18, 0x00, 0x00, 0x00, // nlmsghdr: length 124, RTM_NEWROUTE
        0x07, 0x00, 0x00, 0x00, 0x9a, 0x41, 0x00, 0x00, // sequence 7, port
        0x02, 0x20, 0x20, 0x00, 0xfe, 0x00, 0x00, 0x01, // rtmsg: AF_INET, /32 from /32, main table, unicast
        0x00, 0x02, 0x00, 0x00, // rtm_flags
        0x08, 0x00, 0x0f, 0x00, 0xfe, 0x00, 0x00, 0x00, // RTA_TABLE 254
        0x08, 0x00, 0x01, 0x00, 0xc6, 0x13, 0x00, 0x07, // RTA_DST 198.19.0.7
        0x08, 0x00, 0x02, 0x00, 0xc6, 0x12, 0x00, 0x01, // RTA_SRC 198.18.0.1 (as asked)
        0x08, 0x00, 0x04, 0x00, 0x03, 0x00, 0x00, 0x00, // RTA_OIF 3
        0x08, 0x00, 0x05, 0x00, 0xc6, 0x12, 0x00, 0xfe, // RTA_GATEWAY 198.18.0.254
        0x0c, 0x00, 0x08, 0x00, 0x08, 0x00, 0x02, 0x00, 0x14, 0x05, 0x00, 0x00, // RTA_METRICS: RTAX_MTU 1300
        0x08, 0x00, 0x19, 0x00, 0x00, 0x00, 0x00, 0x00, // RTA_UID 0
        0x24, 0x00, 0x0c, 0x00, // RTA_CACHEINFO, 32 bytes of zeros
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
    ];

    /// The kernel's answer to RTM_GETROUTE for 2001:db8:1::7 (without a source: the kernel names
    /// the one it picks), routed `via 2001:db8::fe dev d0` (no mtu metric; d0 holds
    /// 2001:db8::1/64).
    const ROUTE_V6: &str = "b000000018000000090000000e0700000a808000fe0300010000000008000f00fe0000001400010020010db8\
        00010000000000000000000714000200000000000000000000000000000000001400070020010db800000000\
        000000000000000108000600000400001400050020010db80000000000000000000000fe0800040003000000\
        24000c0002000000000000000000000000000000000000000000000000000000000000000500140000000000";

    /// The kernel's answer to RTM_GETROUTE for 203.0.113.9 without a route to it: NLMSG_ERROR
    /// -ENETUNREACH, then the request's header and body.
    const UNREACHABLE: &[u8] = &[
        0x38, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, // nlmsghdr: length 56, NLMSG_ERROR
        0x08, 0x00, 0x00, 0x00, 0x0e, 0x07, 0x00, 0x00, // sequence 8, port
        0x9b, 0xff, 0xff, 0xff, // error -101 (ENETUNREACH)
        0x24, 0x00, 0x00, 0x00, 0x1a, 0x00, 0x01, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // request
        0x02, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // its rtmsg
        0x08, 0x00, 0x01, 0x00, 0xcb, 0x00, 0x71, 0x09, // RTA_DST 203.0.113.9
    ];

    /// An RTM_NEWLINK answer for interface 3, d0, MTU 1400 (only the attributes read here).
    const LINK: &[u8] = &[
        0x30, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, // nlmsghdr: length 48, RTM_NEWLINK
        0x02, 0x00, 0x00, 0x00, 0x0e, 0x07, 0x00, 0x00, // sequence 2, port
        0x00, 0x00, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00, // ifinfomsg: AF_UNSPEC, ARPHRD_ETHER, index 3
        0x43, 0x10, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, // flags (up, running), change
        0x07, 0x00, 0x03, 0x00, b'd', b'0', 0x00, 0x00, // IFLA_IFNAME "d0"
        0x08, 0x00, 0x04, 0x00, 0x78, 0x05, 0x00, 0x00, // IFLA_MTU 1400
    ];

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits.chunks(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap()).collect()
    }

    fn payload(bytes: &[u8]) -> NetlinkPayload<RouteNetlinkMessage> {
        parse_answer(bytes).unwrap().payload
    }

    #[test]
    fn a_route_request_names_both_ends() {
        let request = route_request(IpAddr::from([198, 18, 0, 1]), IpAddr::from([198, 19, 0, 7]));
        let expected: &[u8] = &[
            0x2c, 0x00, 0x00, 0x00, 0x1a, 0x00, 0x01, 0x00, // nlmsghdr: length 44, RTM_GETROUTE, NLM_F_REQUEST
            0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // sequence 5, port 0 (the kernel's)
            0x02, 0x20, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, // rtmsg: AF_INET, /32 from /32
            0x00, 0x00, 0x00, 0x00, // rtm_flags
            0x08, 0x00, 0x01, 0x00, 0xc6, 0x13, 0x00, 0x07, // RTA_DST 198.19.0.7
            0x08, 0x00, 0x02, 0x00, 0xc6, 0x12, 0x00, 0x01, // RTA_SRC 198.18.0.1
        ];
        assert_eq!(emit_request(request, 5), expected);
    }

    #[test]
    fn a_route_via_a_gateway_with_an_mtu_metric() {
        let destination = IpAddr::from([198, 19, 0, 7]);
        assert_eq!(parse_answer(ROUTE_V4).unwrap().header.sequence_number, 7);
        let answer = parse_route_answer(payload(ROUTE_V4), destination).unwrap();
        assert_eq!(
            answer,
            RouteAnswer {
                interface_index: 3,
                gateway: Some(IpAddr::from([198, 18, 0, 254])),
                source: Some(IpAddr::from([198, 18, 0, 1])),
                route_mtu: Some(1300),
                mtu_expires: None,
                hop_limit: None,
            }
        );
    }

    #[test]
    fn a_routes_hoplimit_metric_is_read() {
        // The same answer with `hoplimit 9` where the mtu metric was (RTAX_HOPLIMIT is 10).
        let mut with_hop_limit = ROUTE_V4.to_vec();
        let metric_at = ROUTE_V4.iter().position(|byte| *byte == 0x14).unwrap() - 4;
        assert_eq!(&with_hop_limit[metric_at..metric_at + 8], [0x08, 0x00, 0x02, 0x00, 0x14, 0x05, 0x00, 0x00]);
        with_hop_limit[metric_at + 2] = 10;
        with_hop_limit[metric_at + 4..metric_at + 8].copy_from_slice(&9u32.to_ne_bytes());
        let answer = parse_route_answer(payload(&with_hop_limit), IpAddr::from([198, 19, 0, 7])).unwrap();
        assert_eq!((answer.hop_limit, answer.route_mtu), (Some(9), None));
        for not_a_hop_limit in [0u32, 256] {
            with_hop_limit[metric_at + 4..metric_at + 8].copy_from_slice(&not_a_hop_limit.to_ne_bytes());
            let answer = parse_route_answer(payload(&with_hop_limit), IpAddr::from([198, 19, 0, 7])).unwrap();
            assert_eq!(answer.hop_limit, None, "{not_a_hop_limit}: the sysctl's");
        }
        let answer = parse_route_answer(payload(ROUTE_V4), IpAddr::from([198, 19, 0, 7])).unwrap();
        assert_eq!(answer.hop_limit, None, "no metric: the sysctl's");
    }

    #[test]
    fn a_path_mtu_learnt_from_icmp_expires() {
        // The same answer with RTA_CACHEINFO's rta_expires at 58,700 ticks: `expires 587sec`.
        let mut learnt = ROUTE_V4.to_vec();
        let expires_at = ROUTE_V4.len() - 32 + 8;
        learnt[expires_at..expires_at + 4].copy_from_slice(&58_700u32.to_ne_bytes());
        let answer = parse_route_answer(payload(&learnt), IpAddr::from([198, 19, 0, 7])).unwrap();
        assert_eq!(answer.mtu_expires, Some(Duration::from_secs(587)));
        // Expired already (negative): nothing to wait for.
        learnt[expires_at..expires_at + 4].copy_from_slice(&(-5i32).to_ne_bytes());
        let answer = parse_route_answer(payload(&learnt), IpAddr::from([198, 19, 0, 7])).unwrap();
        assert_eq!(answer.mtu_expires, None);
    }

    #[test]
    fn an_ipv6_route_without_an_mtu_metric() {
        let destination: IpAddr = "2001:db8:1::7".parse().unwrap();
        let answer = parse_route_answer(payload(&hex(ROUTE_V6)), destination).unwrap();
        assert_eq!(answer.interface_index, 3);
        assert_eq!(answer.gateway, Some("2001:db8::fe".parse().unwrap()));
        assert_eq!(answer.source, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(answer.route_mtu, None);
    }

    #[test]
    fn an_unreachable_destination_is_no_route() {
        let destination = IpAddr::from([203, 0, 113, 9]);
        let error = parse_route_answer(payload(UNREACHABLE), destination).unwrap_err();
        assert!(matches!(error, RouteError::NoRoute(to) if to == destination), "{error:?}");
        assert!(error.to_string().contains("add one on the underlay"), "{error}");
    }

    #[test]
    fn a_link_answer_names_the_interface_and_its_mtu() {
        assert_eq!(parse_link_answer(payload(LINK), 3).unwrap(), LinkAnswer { name: "d0".to_string(), mtu: 1400 });
        // A route answer where a link answer belongs is no link.
        assert!(matches!(parse_link_answer(payload(ROUTE_V4), 3), Err(RouteError::Malformed(_))));
    }

    /// Bare 16-byte rtnetlink headers of the given message types, one after the other.
    fn reports(message_types: &[u16]) -> Vec<u8> {
        let mut reports = Vec::new();
        for message_type in message_types {
            reports.extend_from_slice(&16u32.to_ne_bytes());
            reports.extend_from_slice(&message_type.to_ne_bytes());
            reports.extend_from_slice(&[0u8; 10]);
        }
        reports
    }

    #[test]
    fn reports_are_told_apart() {
        let both = UnderlayChange { changed: true, appeared: true };
        let changed = UnderlayChange { changed: true, appeared: false };
        assert_eq!(classify_reports(&reports(&[RTM_DELROUTE, RTM_NEWLINK])), both);
        assert_eq!(classify_reports(&reports(&[RTM_NEWROUTE])), both);
        for gone_or_moved in [RTM_DELROUTE, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR] {
            assert_eq!(classify_reports(&reports(&[gone_or_moved])), changed, "type {gone_or_moved}");
        }
        // RTM_NEWNEIGH (28): neighbours change no route.
        assert_eq!(classify_reports(&reports(&[28])), UnderlayChange::default());
        assert_eq!(classify_reports(&reports(&[RTM_NEWLINK])[..10]), UnderlayChange::default(), "truncated");
    }

    #[test]
    fn truncated_answers_are_malformed() {
        for len in [0, 10, 20, 60] {
            assert!(matches!(parse_answer(&ROUTE_V4[..len]), Err(RouteError::Malformed(_))), "{len} bytes");
        }
    }

    #[test]
    fn the_path_mtu_is_the_link_capped_by_the_route() {
        let route = |route_mtu| UnderlayRoute {
            interface: "d0".to_string(),
            gateway: None,
            source: None,
            link_mtu: 1400,
            route_mtu,
            mtu_expires: None,
            hop_limit: None,
        };
        assert_eq!(route(None).mtu(), 1400);
        assert_eq!(route(Some(1300)).mtu(), 1300);
        assert_eq!(route(Some(9000)).mtu(), 1400);
    }

    /// RTM_NEWNEIGH for 198.18.0.254 on interface 3, REACHABLE at 02:00:00:00:00:fe (laid out
    /// as linux/neighbour.h defines it: ndmsg, NDA_DST, NDA_LLADDR padded to 4 bytes).
    const NEIGHBOUR: &[u8] = &[
        0x30, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x00, // nlmsghdr: length 48, RTM_NEWNEIGH
        0x09, 0x00, 0x00, 0x00, 0x9a, 0x41, 0x00, 0x00, // sequence 9, port
        0x02, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, // ndmsg: AF_INET, ifindex 3
        0x02, 0x00, 0x00, 0x01, // NUD_REACHABLE, no flags, unicast
        0x08, 0x00, 0x01, 0x00, 0xc6, 0x12, 0x00, 0xfe, // NDA_DST 198.18.0.254
        0x0a, 0x00, 0x02, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0xfe, 0x00, 0x00, // NDA_LLADDR
    ];

    #[test]
    fn a_neighbour_answer_gives_its_mac_and_state() {
        let neighbour = parse_neighbour_answer(payload(NEIGHBOUR)).unwrap().unwrap();
        assert_eq!(neighbour, Neighbour { mac: [0x02, 0, 0, 0, 0, 0xfe], state: NeighbourState::Reachable });
        assert!(neighbour.is_usable());
        assert!(!Neighbour { state: NeighbourState::Stale, ..neighbour }.is_usable());
    }

    #[test]
    fn no_neighbour_entry_is_none() {
        // NLMSG_ERROR with -ENOENT, echoing the request's header.
        let mut error = vec![0x24, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x9a, 0x41, 0x00, 0x00];
        error.extend_from_slice(&(-libc::ENOENT).to_le_bytes());
        error.extend_from_slice(&[0x1c, 0x00, 0x00, 0x00, 0x1e, 0x00, 0x01, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]);
        assert_eq!(parse_neighbour_answer(payload(&error)).unwrap(), None);
    }

    #[test]
    fn a_neighbour_request_names_the_interface_and_address() {
        let RouteNetlinkMessage::GetNeighbour(request) = neighbour_request(3, IpAddr::from([198, 18, 0, 254])) else {
            panic!("not RTM_GETNEIGH")
        };
        assert_eq!(request.header.ifindex, 3);
        assert_eq!(request.header.family, AddressFamily::Inet);
        assert_eq!(request.attributes, vec![NeighbourAttribute::Destination(NeighbourAddress::Inet([198, 18, 0, 254].into()))]);
    }

    #[test]
    fn loopback_routes_over_lo() {
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let route = underlay_route(loopback, loopback).unwrap();
        assert_eq!(route.interface, "lo");
        assert!(route.mtu() >= 1500, "{route:?}");
    }
}
