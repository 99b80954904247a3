//! rtnetlink: the route the kernel takes towards an address (RTM_GETROUTE, as `ip route get`),
//! then the MTU of that route's link (RTM_GETLINK). A route with its own `mtu` metric caps it.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteMetric};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

/// Large enough for one route or link reply.
const REPLY_BUFFER_LEN: usize = 16 << 10;
/// The kernel answers these requests while they are sent; a reply that has not come by then is
/// lost, and the control-plane thread that asked must not wait for it forever.
const REPLY_TIMEOUT: TimeVal = TimeVal::new(1, 0);

/// The underlay towards one address, as the kernel routes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlayRoute {
    /// The outgoing interface.
    pub interface: String,
    /// Its MTU, or the route's `mtu` metric when that is smaller.
    pub mtu: usize,
}

/// Looks up the route towards `destination` and its link's MTU.
pub fn underlay_route(destination: IpAddr) -> io::Result<UnderlayRoute> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    setsockopt(&socket, sockopt::ReceiveTimeout, &REPLY_TIMEOUT)?;

    let mut route = RouteMessage::default();
    route.header.address_family = match destination {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    route.header.destination_prefix_length = if destination.is_ipv4() { 32 } else { 128 };
    route.attributes.push(RouteAttribute::Destination(RouteAddress::from(destination)));
    let reply = request(&socket, RouteNetlinkMessage::GetRoute(route))?;
    let RouteNetlinkMessage::NewRoute(route) = reply else {
        return Err(io::Error::other(format!("the kernel answered the route lookup for {destination} oddly")));
    };
    let interface_index = route.attributes.iter().find_map(|attribute| match attribute {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    });
    let interface_index =
        interface_index.ok_or_else(|| io::Error::other(format!("the route to {destination} has no interface")))?;
    let route_mtu = route.attributes.iter().find_map(|attribute| match attribute {
        RouteAttribute::Metrics(metrics) => metrics.iter().find_map(|metric| match metric {
            RouteMetric::Mtu(mtu) => Some(*mtu),
            _ => None,
        }),
        _ => None,
    });

    let mut link = LinkMessage::default();
    link.header.index = interface_index;
    let RouteNetlinkMessage::NewLink(link) = request(&socket, RouteNetlinkMessage::GetLink(link))? else {
        return Err(io::Error::other(format!("the kernel answered the link lookup for index {interface_index} oddly")));
    };
    let mut interface = format!("interface {interface_index}");
    let mut link_mtu = None;
    for attribute in link.attributes {
        match attribute {
            LinkAttribute::IfName(name) => interface = name,
            LinkAttribute::Mtu(mtu) => link_mtu = Some(mtu),
            _ => {}
        }
    }
    let link_mtu = link_mtu.ok_or_else(|| io::Error::other(format!("{interface} reported no MTU")))?;
    let mtu = route_mtu.filter(|mtu| *mtu != 0).map_or(link_mtu, |route| route.min(link_mtu));
    Ok(UnderlayRoute { interface, mtu: mtu as usize })
}

/// Sends one request and returns the kernel's one answer.
fn request(socket: &Socket, message: RouteNetlinkMessage) -> io::Result<RouteNetlinkMessage> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::from(message));
    request.finalize();
    let mut bytes = vec![0u8; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    let mut reply = vec![0u8; REPLY_BUFFER_LEN];
    let len = socket.recv(&mut &mut reply[..], 0).map_err(|error| match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            let seconds = REPLY_TIMEOUT.tv_sec();
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the kernel did not answer an rtnetlink request within {seconds} s"),
            )
        }
        _ => error,
    })?;
    let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..len])
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, format!("unreadable rtnetlink answer: {error}")))?;
    match answer.payload {
        NetlinkPayload::InnerMessage(message) => Ok(message),
        NetlinkPayload::Error(error) => Err(error.into()),
        _ => Err(io::Error::other("the kernel sent no answer to an rtnetlink request")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_routes_over_lo() {
        let route = underlay_route(IpAddr::from([127, 0, 0, 1])).unwrap();
        assert_eq!(route.interface, "lo");
        assert!(route.mtu >= 1500, "{route:?}");
    }
}
