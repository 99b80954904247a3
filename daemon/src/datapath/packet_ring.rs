//! Raw ESP (IPv4) out through an AF_PACKET TX ring instead of the raw IP socket: the kernel's
//! raw IP output costs a full route and neighbour pass per packet and a syscall per batch of
//! 64, the ring takes a whole batch per syscall straight to the interface's queue (not past it:
//! captures on the underlay interface must see the ESP, see `sys::PacketTxRing`).
//!
//! Writing the link-layer header ourselves needs the next hop's MAC: [`NextHops`] keeps, per
//! peer address, the route's interface, the interface's and next hop's MACs and the path MTU,
//! read from the kernel (`pmtu::route`) by a thread of its own about once a second. A packet
//! whose peer has no usable entry (not looked up yet, no route, not an Ethernet link, the
//! neighbour unresolved or STALE) or is larger than the path MTU goes through the raw IP socket
//! as before: the kernel then resolves the neighbour, re-confirms it, or refuses the packet with
//! EMSGSIZE, so no ESP fragment ever leaves and the kernel's neighbour state stays live.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::link_header::{self, LinkHeaderV4};
use crate::pmtu::route::{NextHop, RouteLookup};
use crate::sys::PacketTxRing;
use crate::wire::ethernet::EthernetAddress;
use crate::wire::ipv4;

/// How often the next hops are read again: a route or neighbour change is followed within this.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Slots per worker's ring: several batches of 64 packets.
const RING_FRAMES: usize = 256;
/// The TTL the kernel gives raw IP packets when the sysctl cannot be read.
const DEFAULT_TTL: u8 = 64;

/// How raw ESP towards one peer leaves through a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkPath {
    pub interface_index: u32,
    pub header: LinkHeaderV4,
    /// The largest IP packet the kernel would send on this path (its path MTU).
    pub mtu: usize,
    /// The interface's MTU: the ring's slots are sized for it.
    pub link_mtu: usize,
}

impl LinkPath {
    /// The ring path from a kernel lookup, when the link is Ethernet and the neighbour usable.
    fn from_next_hop(next_hop: &NextHop, source: Ipv4Addr, destination: Ipv4Addr, ttl: u8) -> Option<LinkPath> {
        let interface = next_hop.local_mac?;
        let neighbour = next_hop.neighbour.filter(|neighbour| neighbour.is_usable())?;
        Some(LinkPath {
            interface_index: next_hop.interface_index,
            header: LinkHeaderV4 {
                next_hop: EthernetAddress(neighbour.mac),
                interface: EthernetAddress(interface),
                source,
                destination,
                ttl,
            },
            mtu: next_hop.route.mtu(),
            link_mtu: next_hop.route.link_mtu as usize,
        })
    }
}

/// The next hops of the peers raw ESP went to, shared by the workers; `None` for a peer that
/// must go through the raw socket for now.
pub struct NextHops {
    local: Ipv4Addr,
    paths: ArcSwap<HashMap<Ipv4Addr, KnownPath>>,
    /// Addresses asked for and not looked up yet; the refresher thread starts with the first.
    wanted: Mutex<Option<Vec<Ipv4Addr>>>,
    /// Wakes the refresher for a new address.
    asked: Condvar,
}

/// A looked-up next hop, and whether a packet asked for it since the last refresh: only those
/// are looked up again, so the refresher costs nothing once raw ESP stops flowing.
struct KnownPath {
    path: Option<LinkPath>,
    used: AtomicBool,
}

impl NextHops {
    pub fn new(local: Ipv4Addr) -> Arc<NextHops> {
        Arc::new(NextHops { local, paths: ArcSwap::default(), wanted: Mutex::new(None), asked: Condvar::new() })
    }

    /// The ring path towards `destination`, if it has one. The first ask for an address queues
    /// it for the refresher (one lock per new address, not per packet).
    pub fn path(self: &Arc<Self>, destination: Ipv4Addr) -> Option<LinkPath> {
        if let Some(known) = self.paths.load().get(&destination) {
            // A load first: a store per packet would bounce the cache line between workers.
            if !known.used.load(Ordering::Relaxed) {
                known.used.store(true, Ordering::Relaxed);
            }
            return known.path;
        }
        let mut wanted = self.lock_wanted();
        match wanted.as_mut() {
            Some(list) if list.contains(&destination) => {}
            Some(list) => {
                list.push(destination);
                self.asked.notify_one();
            }
            None => {
                *wanted = Some(vec![destination]);
                let next_hops = self.clone();
                let spawned =
                    std::thread::Builder::new().name("meshd-nexthops".into()).spawn(move || refresh(next_hops));
                if let Err(error) = spawned {
                    tracing::warn!(%error, "cannot start the raw ESP next-hop thread; raw ESP stays on the raw socket");
                }
            }
        }
        None
    }

    /// Looks up again every address used since the last refresh, and every wanted one, and
    /// publishes the result whole; addresses no packet asked for are forgotten (the next packet
    /// to one goes through the raw socket and asks for it again).
    fn refresh_once(&self, ttl: u8) {
        let wanted = self.lock_wanted().as_mut().map(std::mem::take);
        let mut addresses: Vec<Ipv4Addr> = self
            .paths
            .load()
            .iter()
            .filter(|(_, known)| known.used.swap(false, Ordering::Relaxed))
            .map(|(address, _)| *address)
            .collect();
        addresses.extend(wanted.unwrap_or_default());
        if addresses.is_empty() {
            if !self.paths.load().is_empty() {
                self.paths.store(Arc::default());
            }
            return;
        }
        let mut lookup = match RouteLookup::open() {
            Ok(lookup) => Some(lookup),
            Err(error) => {
                tracing::debug!(%error, "raw ESP next hops: no rtnetlink socket; sending through the raw socket");
                None
            }
        };
        let paths = addresses
            .into_iter()
            .map(|destination| {
                let path = lookup.as_mut().and_then(|lookup| {
                    match lookup.next_hop(IpAddr::V4(self.local), IpAddr::V4(destination)) {
                        Ok(next_hop) => LinkPath::from_next_hop(&next_hop, self.local, destination, ttl),
                        Err(error) => {
                            tracing::debug!(%error, %destination, "raw ESP next hop unknown; sending through the raw socket");
                            None
                        }
                    }
                });
                (destination, KnownPath { path, used: AtomicBool::new(false) })
            })
            .collect();
        self.paths.store(Arc::new(paths));
    }

    fn lock_wanted(&self) -> MutexGuard<'_, Option<Vec<Ipv4Addr>>> {
        self.wanted.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The refresher thread: every [`REFRESH_INTERVAL`] (looking up only the addresses used since
/// the last time), and at once for a new address; it ends when the raw socket that owns
/// `next_hops` is gone (it then holds the last reference).
fn refresh(next_hops: Arc<NextHops>) {
    while Arc::strong_count(&next_hops) > 1 {
        next_hops.refresh_once(default_ttl());
        let wanted = next_hops.lock_wanted();
        let waited = next_hops.asked.wait_timeout_while(wanted, REFRESH_INTERVAL, |wanted| {
            wanted.as_ref().is_none_or(|list| list.is_empty())
        });
        drop(waited.unwrap_or_else(|poisoned| poisoned.into_inner()));
    }
}

/// The TTL the kernel gives the raw socket's packets (net.ipv4.ip_default_ttl).
fn default_ttl() -> u8 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_default_ttl")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(DEFAULT_TTL)
}

/// A worker's TX ring, opened on the interface of the first peer that has a ring path.
#[derive(Default)]
pub struct RingSender {
    ring: Option<(u32, PacketTxRing)>,
    /// The ring could not be opened (no CAP_NET_RAW, an old kernel): the raw socket only.
    unavailable: bool,
}

/// What [`RingSender::push`] did with a packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Written into the ring; it leaves at the next `send`.
    Queued,
    /// Not for the ring (too large for the path or the slot, no ring): send it the old way.
    NotTaken,
}

impl RingSender {
    /// Writes the headers of `path` and `esp` into the next slot of the ring on the path's
    /// interface. A full ring is sent first; still full, the packet is dropped as ENOBUFS (the
    /// kernel's own answer when a queue overflows), counted by the caller.
    pub fn push(&mut self, path: &LinkPath, esp: &[u8]) -> io::Result<Pushed> {
        if ipv4::HEADER_LEN + esp.len() > path.mtu || self.unavailable {
            return Ok(Pushed::NotTaken);
        }
        let Some(ring) = self.ring_for(path) else { return Ok(Pushed::NotTaken) };
        if link_header::LEN + esp.len() > ring.max_frame_len() {
            return Ok(Pushed::NotTaken);
        }
        if ring.next_frame().is_none() {
            ring.send()?;
        }
        let Some(frame) = ring.next_frame() else { return Err(io::Error::from_raw_os_error(libc::ENOBUFS)) };
        path.header.emit(frame, esp.len());
        frame[link_header::LEN..link_header::LEN + esp.len()].copy_from_slice(esp);
        ring.commit(link_header::LEN + esp.len());
        Ok(Pushed::Queued)
    }

    /// Sends what the ring holds.
    pub fn send(&mut self) -> io::Result<()> {
        match &mut self.ring {
            Some((_, ring)) => ring.send(),
            None => Ok(()),
        }
    }

    fn ring_for(&mut self, path: &LinkPath) -> Option<&mut PacketTxRing> {
        if self.ring.as_ref().is_none_or(|(index, _)| *index != path.interface_index) {
            // Another interface (a route moved): what the old ring holds leaves first.
            if let Err(error) = self.send() {
                tracing::debug!(%error, "sending the raw ESP ring before moving it failed");
            }
            match PacketTxRing::open(path.interface_index, link_header::LEN - ipv4::HEADER_LEN + path.link_mtu, RING_FRAMES)
            {
                Ok(ring) => self.ring = Some((path.interface_index, ring)),
                Err(error) => {
                    tracing::info!(%error, "no AF_PACKET ring for raw ESP; sending through the raw socket");
                    self.unavailable = true;
                    self.ring = None;
                    return None;
                }
            }
        }
        self.ring.as_mut().map(|(_, ring)| ring)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::BorrowedFd;
    use std::time::Instant;

    use super::*;
    use crate::datapath::sockets::RawEspSocket;
    use crate::pmtu::route::{Neighbour, UnderlayRoute};
    use crate::sys;
    use crate::wire::ethernet;
    use netlink_packet_route::neighbour::NeighbourState;

    const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

    fn require_root() {
        assert!(nix::unistd::geteuid().is_root(), "this test opens raw and packet sockets: run it as root");
    }

    /// An ESP packet (SPI, sequence, payload) no other test sends.
    fn esp_packet(spi: u32) -> Vec<u8> {
        let mut packet = spi.to_be_bytes().to_vec();
        packet.extend_from_slice(&7u32.to_be_bytes());
        packet.extend((0..200u8).map(|byte| byte.wrapping_mul(31)));
        packet
    }

    /// The next packet with this SPI the raw ESP socket receives, IP header included.
    fn receive_spi(socket: BorrowedFd<'_>, spi: u32) -> Vec<u8> {
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match sys::recv_msg(socket, &mut buf) {
                Ok(meta) if buf[ipv4::HEADER_LEN..ipv4::HEADER_LEN + 4] == spi.to_be_bytes() => {
                    return buf[..meta.len].to_vec();
                }
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(error) => panic!("receiving ESP: {error}"),
            }
        }
        panic!("no ESP with SPI {spi:#x} arrived on loopback within 2 s");
    }

    fn loopback_header() -> LinkHeaderV4 {
        LinkHeaderV4 {
            next_hop: EthernetAddress([0; 6]),
            interface: EthernetAddress([0; 6]),
            source: LOOPBACK,
            destination: LOOPBACK,
            ttl: default_ttl(),
        }
    }

    #[test]
    fn the_kernel_writes_the_same_ip_header_for_the_raw_socket() {
        require_root();
        let socket = RawEspSocket::new(IpAddr::V4(LOOPBACK)).unwrap();
        let spi = 0x5eed_0001;
        let packet = esp_packet(spi);
        let to = socket2::SockAddr::from(std::net::SocketAddr::new(IpAddr::V4(LOOPBACK), 0));
        sys::send_msg(socket.fd(), &to, &packet, None).unwrap();
        let received = receive_spi(socket.fd(), spi);
        let mut ours = vec![0u8; link_header::LEN];
        loopback_header().emit(&mut ours, packet.len());
        assert_eq!(received[..ipv4::HEADER_LEN], ours[ethernet::HEADER_LEN..], "IPv4 header: kernel vs ours");
        assert_eq!(received[ipv4::HEADER_LEN..], packet[..]);
    }

    fn ip(args: &str) {
        let output = std::process::Command::new("ip").args(args.split(' ')).output().expect("running ip");
        assert!(output.status.success(), "ip {args}: {}", String::from_utf8_lossy(&output.stderr));
    }

    fn sysctl(path: &str, value: &str) {
        std::fs::write(format!("/proc/sys/net/{path}"), value).unwrap_or_else(|error| panic!("{path}: {error}"));
    }

    /// In a network namespace of its own: frames from the ring on one end of a veth pair reach
    /// a raw ESP socket on the other end byte for byte (IP header and ESP), and the next-hop
    /// lookup finds the path through the pair.
    #[test]
    fn ring_frames_arrive_as_sent() {
        require_root();
        std::thread::spawn(|| {
            sys::enter_new_network_namespace().unwrap();
            ip("link add rre0 type veth peer name rre1");
            ip("addr add 198.18.0.1/24 dev rre0");
            ip("addr add 198.18.0.2/24 dev rre1");
            ip("link set rre0 up");
            ip("link set rre1 up");
            // Both ends are this namespace's: take packets from a local source on rre1.
            sysctl("ipv4/conf/rre1/accept_local", "1");
            sysctl("ipv4/conf/all/rp_filter", "0");
            sysctl("ipv4/conf/rre1/rp_filter", "0");
            let (source, destination) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
            let receiver = RawEspSocket::new(IpAddr::V4(destination)).unwrap();
            let mac = |name: &str| {
                // sysfs shows the host's links, not this namespace's: ask `ip`.
                let output = std::process::Command::new("ip").args(["-o", "link", "show", name]).output().unwrap();
                let text = String::from_utf8_lossy(&output.stdout).into_owned();
                let words: Vec<&str> = text.split_whitespace().collect();
                let at = words.iter().position(|word| *word == "link/ether").expect("an Ethernet link") + 1;
                words[at].parse::<EthernetAddress>().unwrap()
            };
            let path = LinkPath {
                interface_index: nix::net::if_::if_nametoindex("rre0").unwrap(),
                header: LinkHeaderV4 {
                    next_hop: mac("rre1"),
                    interface: mac("rre0"),
                    source,
                    destination,
                    ttl: default_ttl(),
                },
                mtu: 1500,
                link_mtu: 1500,
            };
            let mut sender = RingSender::default();
            // Two small packets and one as large as the link takes (a 1500-byte IP packet).
            let full_size = |spi: u32| {
                let mut packet = esp_packet(spi);
                packet.resize(1500 - ipv4::HEADER_LEN, 0xa5);
                packet
            };
            let packets = [esp_packet(0x5eed_0002), esp_packet(0x5eed_0003), full_size(0x5eed_0004)];
            for packet in &packets {
                assert_eq!(sender.push(&path, packet).unwrap(), Pushed::Queued);
            }
            sender.send().unwrap();
            for packet in &packets {
                let spi = u32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]);
                let received = receive_spi(receiver.fd(), spi);
                let mut ours = vec![0u8; link_header::LEN];
                path.header.emit(&mut ours, received.len() - ipv4::HEADER_LEN);
                assert_eq!(received[..ipv4::HEADER_LEN], ours[ethernet::HEADER_LEN..]);
                assert_eq!(received[ipv4::HEADER_LEN..], packet[..]);
            }

            // The lookup, for an address that is not this namespace's own (those route over lo):
            // rre0's MAC and the neighbour's, while the kernel's entry is usable.
            let peer = Ipv4Addr::new(198, 18, 0, 3);
            ip(&format!("neigh replace {peer} lladdr {} dev rre0 nud reachable", mac("rre1")));
            let next_hops = NextHops::new(source);
            // Held back from the refresher thread (the test refreshes by hand): under load the
            // thread looked the address up first, and the test's refresh then forgot it as unused.
            *next_hops.lock_wanted() = Some(Vec::new());
            assert_eq!(next_hops.path(peer), None, "not looked up yet");
            next_hops.refresh_once(default_ttl());
            let expected = LinkPath { header: LinkHeaderV4 { destination: peer, ..path.header }, ..path };
            assert_eq!(next_hops.path(peer), Some(expected));
            ip(&format!("neigh replace {peer} lladdr {} dev rre0 nud stale", mac("rre1")));
            next_hops.refresh_once(default_ttl());
            assert_eq!(next_hops.path(peer), None, "a STALE neighbour goes through the kernel");
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    }

    #[test]
    fn packets_too_large_for_the_path_are_not_taken() {
        let path = LinkPath { interface_index: 1, header: loopback_header(), mtu: 1400, link_mtu: 1500 };
        let mut sender = RingSender::default();
        // 1381 bytes of ESP make a 1401-byte IP packet: the raw socket refuses it with EMSGSIZE.
        assert_eq!(sender.push(&path, &[0u8; 1381]).unwrap(), Pushed::NotTaken);
        assert!(sender.ring.is_none(), "no ring is opened for a packet that does not take it");
    }

    #[test]
    fn a_ring_is_full_until_sent() {
        require_root();
        let loopback_index = nix::net::if_::if_nametoindex("lo").unwrap();
        let mut ring = PacketTxRing::open(loopback_index, 1514, 1).unwrap();
        let frame = {
            let mut frame = vec![0u8; link_header::LEN];
            loopback_header().emit(&mut frame, 0);
            frame
        };
        // One 4 KiB block holds two 2 KiB slots; fill both without sending.
        for _ in 0..2 {
            ring.next_frame().unwrap()[..frame.len()].copy_from_slice(&frame);
            ring.commit(frame.len());
        }
        assert!(ring.next_frame().is_none(), "both slots wait for the kernel");
        ring.send().unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while ring.next_frame().is_none() {
            assert!(Instant::now() < deadline, "the kernel never gave a slot back");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn only_addresses_used_since_the_last_refresh_are_looked_up_again() {
        let next_hops = NextHops::new(LOOPBACK);
        let (used, idle) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
        // Held back from the refresher thread: the test refreshes by hand.
        *next_hops.lock_wanted() = Some(vec![used, idle]);
        next_hops.refresh_once(DEFAULT_TTL);
        let known = |next_hops: &NextHops| {
            let mut addresses: Vec<Ipv4Addr> = next_hops.paths.load().keys().copied().collect();
            addresses.sort();
            addresses
        };
        assert_eq!(known(&next_hops), [used, idle], "both looked up once");
        // Loopback is no Ethernet link: known, without a ring path.
        assert_eq!(next_hops.path(used), None);
        next_hops.refresh_once(DEFAULT_TTL);
        assert_eq!(known(&next_hops), [used], "the address no packet asked for is forgotten");
        next_hops.refresh_once(DEFAULT_TTL);
        assert!(known(&next_hops).is_empty(), "nothing sent since: nothing to look up");
    }

    #[test]
    fn only_ethernet_links_with_a_usable_neighbour_get_a_ring_path() {
        let route = UnderlayRoute {
            interface: "d0".into(),
            gateway: None,
            source: None,
            link_mtu: 1500,
            route_mtu: Some(1400),
            mtu_expires: None,
        };
        let next_hop = |local_mac, state| NextHop {
            interface_index: 3,
            local_mac,
            neighbour: Some(Neighbour { mac: [2, 0, 0, 0, 0, 2], state }),
            route: route.clone(),
        };
        let peer = Ipv4Addr::new(198, 18, 0, 2);
        let local = Ipv4Addr::new(198, 18, 0, 1);
        let path =
            LinkPath::from_next_hop(&next_hop(Some([2, 0, 0, 0, 0, 1]), NeighbourState::Reachable), local, peer, 64).unwrap();
        assert_eq!(path.mtu, 1400);
        assert_eq!(path.link_mtu, 1500);
        assert_eq!(path.header.next_hop, EthernetAddress([2, 0, 0, 0, 0, 2]));
        assert_eq!(path.header.interface, EthernetAddress([2, 0, 0, 0, 0, 1]));
        for state in [NeighbourState::Stale, NeighbourState::Incomplete, NeighbourState::Failed] {
            assert_eq!(LinkPath::from_next_hop(&next_hop(Some([2, 0, 0, 0, 0, 1]), state), local, peer, 64), None);
        }
        assert_eq!(LinkPath::from_next_hop(&next_hop(None, NeighbourState::Reachable), local, peer, 64), None);
    }
}
