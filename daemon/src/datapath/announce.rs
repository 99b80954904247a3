//! Announcing this node's overlay addresses to one peer, when SAs with it come up: the frames
//! Linux sends for a changed address (ARP announcement, unsolicited Neighbor Advertisement),
//! sealed for that peer alone. Written into the TAP instead, the kernel's announcements were
//! broadcasts that went to every peer each time one more peer came up: N nodes starting at once
//! sent each other about N^3 of them, which kept a 100-node start busy for seconds.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::egress::{Destination, Egress, EspSender, FRAME_OFFSET, TRAILER_ROOM};
use super::ingress::{FrameSink, NoLanding};
use super::sockets::EspOut;
use crate::ids::{OverlayId, PeerId};
use crate::netif;
use crate::overlay_tap::overlay_mac;
use crate::state::MeshState;
use crate::topology::{Overlay, Topology};
use crate::wire::ethernet::EthernetAddress;
use crate::wire::neighbour::{write_announcement, MAX_ANNOUNCEMENT_LEN};

/// How long the addresses read from an overlay interface are announced without reading them
/// again: during a start SAs come up with many peers a second, and each reading (an rtnetlink
/// dump and a file under /proc/sys) costs more than the announcements themselves.
const ADDRESSES_FRESH: Duration = Duration::from_secs(1);

/// Sends announcements through `underlay` (the datapath's ESP socket, shared).
pub struct Announcer<U: EspSender = EspOut> {
    underlay: U,
    /// By interface name.
    addresses: RefCell<HashMap<String, InterfaceAddresses>>,
}

/// What was read of an overlay interface, and when.
struct InterfaceAddresses {
    read_at: Instant,
    addresses: Vec<IpAddr>,
    /// Whether it forwards IPv6.
    router: bool,
}

/// Announcements are far below any path's limit, so no "too big" answer to write into the
/// overlay can arise; the control plane owns no TAP queue to write one to.
struct NoTapQueue;

impl FrameSink for NoTapQueue {
    type Landing<'s> = NoLanding;

    fn deliver(&self, _overlay: OverlayId, _with_headroom: &mut [u8]) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "the control plane writes into no overlay interface"))
    }

    fn landing(&self, _: usize, _: usize) -> Option<NoLanding> {
        None
    }
}

impl<U: EspSender> Announcer<U> {
    pub fn new(underlay: U) -> Self {
        Announcer { underlay, addresses: RefCell::default() }
    }

    /// Announces every address of this node's interface on each overlay to those of `peers`
    /// that share it.
    pub fn announce_to(&self, state: &MeshState, peers: &[PeerId]) {
        let topology = state.topology_full();
        for overlay in &topology.overlays {
            let members: Vec<PeerId> = peers.iter().copied().filter(|peer| overlay.members.contains(peer)).collect();
            if members.is_empty() {
                continue;
            }
            match self.addresses_of(&overlay.interface, Instant::now()) {
                Ok((addresses, router)) => {
                    for peer in members {
                        self.send(state, &topology, overlay, peer, &addresses, router);
                    }
                }
                Err(error) => {
                    tracing::warn!(interface = %overlay.interface, %error, "reading the overlay addresses to announce failed")
                }
            }
        }
    }

    /// The addresses of `interface` and whether it forwards IPv6, read at most once per
    /// [`ADDRESSES_FRESH`].
    fn addresses_of(&self, interface: &str, now: Instant) -> io::Result<(Vec<IpAddr>, bool)> {
        let mut cache = self.addresses.borrow_mut();
        if let Some(read) = cache.get(interface) {
            if now.saturating_duration_since(read.read_at) < ADDRESSES_FRESH {
                return Ok((read.addresses.clone(), read.router));
            }
        }
        let (addresses, router) = (netif::interface_addresses(interface)?, netif::forwards_ipv6(interface));
        cache.insert(interface.to_string(), InterfaceAddresses { read_at: now, addresses: addresses.clone(), router });
        Ok((addresses, router))
    }

    /// Seals and sends one announcement per address of `addresses` to `peer` on `overlay`, as
    /// the datapath sends a frame read from the TAP (counted, dropped without an SA).
    fn send(
        &self,
        state: &MeshState,
        topology: &Topology,
        overlay: &Overlay,
        peer: PeerId,
        addresses: &[IpAddr],
        router: bool,
    ) {
        let tables = state.sadb.load();
        let observing = state.observers.load();
        let egress = Egress {
            state,
            topology,
            tables: &tables,
            underlay: &self.underlay,
            sink: &NoTapQueue,
            now_ms: state.clock.now_ms(),
            observing: observing.as_ref(),
        };
        let mac = EthernetAddress(overlay_mac(&topology.mesh_name, &topology.node_name, &overlay.name));
        let mut buf = [0u8; FRAME_OFFSET + MAX_ANNOUNCEMENT_LEN + TRAILER_ROOM];
        for address in addresses {
            let len = write_announcement(mac, *address, router, &mut buf[FRAME_OFFSET..]);
            egress.forward_to(Destination::Peer(peer), overlay, &mut buf, &mut [], len);
        }
        if let Err(error) = self.underlay.flush() {
            tracing::debug!(%error, "sending an overlay announcement failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::testkit::{self, receive, Setup, Wire, DEFAULT};
    use crate::wire::neighbour::write_announcement;

    #[test]
    fn announcements_go_to_the_one_peer_and_arrive_as_linux_writes_them() {
        let setup = Setup { nodes: 3, ..DEFAULT };
        let (n0, n2) = (testkit::node(&setup, 0), testkit::node(&setup, 2));
        let announcer = Announcer::new(Wire::default());
        let topology = n0.topology_full();
        let addresses: [IpAddr; 2] = ["10.244.0.1".parse().unwrap(), "fe80::1".parse().unwrap()];
        let to = topology.peer_by_address(testkit::address(&setup, 2)).unwrap();
        announcer.send(&n0, &topology, &topology.overlays[0], to, &addresses, false);

        let sent = announcer.underlay.0.into_inner();
        assert_eq!(sent.len(), 2, "one packet per address");
        assert!(sent.iter().all(|(_, peer)| *peer == testkit::address(&setup, 2)), "only to n2: {sent:?}");
        let mac = EthernetAddress(overlay_mac(&topology.mesh_name, &topology.node_name, "ovl0"));
        for ((packet, _), address) in sent.iter().zip(addresses) {
            let mut expected = [0u8; MAX_ANNOUNCEMENT_LEN];
            let len = write_announcement(mac, address, false, &mut expected);
            let delivered = receive(&n2, packet, testkit::address(&setup, 0));
            assert_eq!(delivered, vec![(OverlayId(0), expected[..len].to_vec())]);
        }
        assert_eq!(topology.peer(to).counters.tx_packets.load(std::sync::atomic::Ordering::Relaxed), 2, "counted");
    }
}
