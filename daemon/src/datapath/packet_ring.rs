//! Raw ESP out through an AF_PACKET TX ring instead of the raw IP socket: the kernel's
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
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::link_header::{IpAddresses, LinkHeader};
use crate::pmtu::route::{NextHop, RouteLookup, UnderlayRoute};
use crate::sys::PacketTxRing;
use crate::wire::ethernet::{self, EthernetAddress};

/// How often the next hops are read again: a route or neighbour change is followed within this.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Slots per worker's ring: several batches of 64 packets.
const RING_FRAMES: usize = 256;
/// The TTL or hop limit the kernel gives raw IP packets when the sysctl cannot be read.
const DEFAULT_HOP_LIMIT: u8 = 64;

/// How raw ESP towards one peer leaves through a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkPath {
    pub interface_index: u32,
    pub header: LinkHeader,
    /// The largest IP packet the kernel would send on this path (its path MTU).
    pub mtu: usize,
    /// The interface's MTU: the ring's slots are sized for it.
    pub link_mtu: usize,
}

impl LinkPath {
    /// The ring path from a kernel lookup, when the link is Ethernet and the neighbour usable.
    fn from_next_hop(next_hop: &NextHop, source: IpAddr, destination: IpAddr, hop_limit: u8) -> Option<LinkPath> {
        let interface = next_hop.local_mac?;
        let neighbour = next_hop.neighbour.filter(|neighbour| neighbour.is_usable())?;
        let addresses = match (source, destination) {
            (IpAddr::V4(source), IpAddr::V4(destination)) => IpAddresses::V4 { source, destination },
            (IpAddr::V6(source), IpAddr::V6(destination)) => IpAddresses::V6 { source, destination },
            _ => return None,
        };
        Some(LinkPath {
            interface_index: next_hop.interface_index,
            header: LinkHeader {
                next_hop: EthernetAddress(neighbour.mac),
                interface: EthernetAddress(interface),
                addresses,
                hop_limit,
            },
            mtu: next_hop.route.mtu(),
            link_mtu: next_hop.route.link_mtu as usize,
        })
    }
}

/// The next hops of the peers raw ESP went to, shared by the workers; `None` for a peer that
/// must go through the raw socket for now.
pub struct NextHops {
    local: IpAddr,
    paths: ArcSwap<HashMap<IpAddr, KnownPath>>,
    /// Addresses asked for and not looked up yet; the refresher thread starts with the first.
    wanted: Mutex<Option<Vec<IpAddr>>>,
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
    pub fn new(local: IpAddr) -> Arc<NextHops> {
        Arc::new(NextHops { local, paths: ArcSwap::default(), wanted: Mutex::new(None), asked: Condvar::new() })
    }

    /// The ring path towards `destination`, if it has one. The first ask for an address queues
    /// it for the refresher (one lock per new address, not per packet).
    pub fn path(self: &Arc<Self>, destination: IpAddr) -> Option<LinkPath> {
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
    fn refresh_once(&self) {
        let wanted = self.lock_wanted().as_mut().map(std::mem::take);
        let mut addresses: Vec<IpAddr> = self
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
        // Read once per interface and round, not per peer: hundreds of peers share one underlay.
        let mut hop_limits: HashMap<String, Option<u8>> = HashMap::new();
        let paths = addresses
            .into_iter()
            .map(|destination| {
                let path = lookup.as_mut().and_then(|lookup| {
                    match lookup.next_hop(self.local, destination) {
                        Ok(next_hop) => {
                            let interface = &next_hop.route.interface;
                            let interface_hop_limit = *hop_limits
                                .entry(interface.clone())
                                .or_insert_with(|| kernel_hop_limit(destination, interface));
                            let hop_limit = route_hop_limit(&next_hop.route, interface_hop_limit)?;
                            LinkPath::from_next_hop(&next_hop, self.local, destination, hop_limit)
                        }
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

    fn lock_wanted(&self) -> MutexGuard<'_, Option<Vec<IpAddr>>> {
        self.wanted.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The refresher thread: every [`REFRESH_INTERVAL`] (looking up only the addresses used since
/// the last time), and at once for a new address; it ends when the raw socket that owns
/// `next_hops` is gone (it then holds the last reference).
fn refresh(next_hops: Arc<NextHops>) {
    while Arc::strong_count(&next_hops) > 1 {
        next_hops.refresh_once();
        let wanted = next_hops.lock_wanted();
        let waited = next_hops.asked.wait_timeout_while(wanted, REFRESH_INTERVAL, |wanted| {
            wanted.as_ref().is_none_or(|list| list.is_empty())
        });
        drop(waited.unwrap_or_else(|poisoned| poisoned.into_inner()));
    }
}

/// The TTL (IPv4) or hop limit (IPv6) the kernel gives the raw socket's packets to
/// `destination` through `interface`, from this network namespace's settings; `None` when the
/// kernel's header cannot be matched, so the peer stays on the raw socket.
fn kernel_hop_limit(destination: IpAddr, interface: &str) -> Option<u8> {
    match destination {
        IpAddr::V4(_) => Some(read_sysctl("ipv4/ip_default_ttl").unwrap_or(DEFAULT_HOP_LIMIT)),
        IpAddr::V6(_) => {
            // auto_flowlabels 2 forces the kernel's own flow label even on sockets that turned
            // them off: the raw socket's packets would carry a label the ring's do not.
            if read_sysctl::<u8>("ipv6/auto_flowlabels") == Some(2) {
                return None;
            }
            Some(read_sysctl(&format!("ipv6/conf/{interface}/hop_limit")).unwrap_or(DEFAULT_HOP_LIMIT))
        }
    }
}

/// The TTL or hop limit the kernel gives packets on `route`: the route's `hoplimit` metric,
/// else the interface's (`kernel_hop_limit`, which is `None` when no header of ours can match
/// the kernel's).
fn route_hop_limit(route: &UnderlayRoute, interface_hop_limit: Option<u8>) -> Option<u8> {
    interface_hop_limit.map(|hop_limit| route.hop_limit.unwrap_or(hop_limit))
}

/// A value under /proc/sys/net (this network namespace's).
fn read_sysctl<T: std::str::FromStr>(path: &str) -> Option<T> {
    std::fs::read_to_string(format!("/proc/sys/net/{path}")).ok().and_then(|text| text.trim().parse().ok())
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
        if path.header.ip_header_len() + esp.len() > path.mtu || self.unavailable {
            return Ok(Pushed::NotTaken);
        }
        let Some(ring) = self.ring_for(path) else { return Ok(Pushed::NotTaken) };
        let header_len = path.header.frame_header_len();
        if header_len + esp.len() > ring.max_frame_len() {
            return Ok(Pushed::NotTaken);
        }
        if ring.next_frame().is_none() {
            ring.send()?;
        }
        let Some(frame) = ring.next_frame() else { return Err(io::Error::from_raw_os_error(libc::ENOBUFS)) };
        path.header.emit(frame, esp.len());
        frame[header_len..header_len + esp.len()].copy_from_slice(esp);
        ring.commit(header_len + esp.len());
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
            match PacketTxRing::open(path.interface_index, ethernet::HEADER_LEN + path.link_mtu, RING_FRAMES) {
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
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::os::fd::{AsFd, BorrowedFd};
    use std::time::Instant;

    use socket2::{Domain, Protocol, Socket, Type};

    use super::*;
    use crate::datapath::link_header::MAX_LEN;
    use crate::datapath::sockets::RawEspSocket;
    use crate::pmtu::route::Neighbour;
    use crate::sys;
    use crate::wire::{ipv4, ipv6};
    use netlink_packet_route::neighbour::NeighbourState;

    fn require_root() {
        assert!(nix::unistd::geteuid().is_root(), "this test opens raw and packet sockets: run it as root");
    }

    /// Runs `test` on a thread of its own in a new network namespace (gone with the thread).
    fn in_new_namespace(test: impl FnOnce() + Send + 'static) {
        require_root();
        std::thread::spawn(move || {
            sys::enter_new_network_namespace().unwrap();
            test();
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    }

    /// An ESP packet (SPI, sequence, payload) no other test sends.
    fn esp_packet(spi: u32) -> Vec<u8> {
        let mut packet = spi.to_be_bytes().to_vec();
        packet.extend_from_slice(&7u32.to_be_bytes());
        packet.extend((0..200u8).map(|byte| byte.wrapping_mul(31)));
        packet
    }

    fn ip_header_len(packet: &[u8]) -> usize {
        match packet[0] >> 4 {
            4 => ipv4::HEADER_LEN,
            _ => ipv6::HEADER_LEN,
        }
    }

    /// The next packet whose ESP has this SPI, read from `socket` until 2 s have passed.
    /// `ip_header` says whether the socket delivers the IP header in front of the ESP.
    fn receive_spi(socket: BorrowedFd<'_>, spi: u32, ip_header: bool) -> Vec<u8> {
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match sys::recv_msg(socket, &mut buf) {
                Ok(meta) => {
                    let esp = if ip_header { ip_header_len(&buf) } else { 0 };
                    if meta.len >= esp + 4 && buf[esp..esp + 4] == spi.to_be_bytes() {
                        return buf[..meta.len].to_vec();
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(error) => panic!("receiving ESP: {error}"),
            }
        }
        panic!("no ESP with SPI {spi:#x} arrived within 2 s");
    }

    /// A packet socket that sees every IP packet of this namespace, IP header first.
    fn capture() -> Socket {
        let every_protocol = i32::from((libc::ETH_P_ALL as u16).to_be());
        let socket = Socket::new(Domain::from(libc::AF_PACKET), Type::DGRAM, Some(Protocol::from(every_protocol))).unwrap();
        socket.set_nonblocking(true).unwrap();
        socket
    }

    fn ip(args: &str) {
        let output = std::process::Command::new("ip").args(args.split(' ')).output().expect("running ip");
        assert!(output.status.success(), "ip {args}: {}", String::from_utf8_lossy(&output.stderr));
    }

    fn sysctl(path: &str, value: &str) {
        std::fs::write(format!("/proc/sys/net/{path}"), value).unwrap_or_else(|error| panic!("{path}: {error}"));
    }

    /// Our header for `esp_len` bytes of ESP, IP part only.
    fn our_ip_header(header: &LinkHeader, esp_len: usize) -> Vec<u8> {
        let mut ours = vec![0u8; MAX_LEN];
        header.emit(&mut ours, esp_len);
        ours[ethernet::HEADER_LEN..header.frame_header_len()].to_vec()
    }

    fn the_kernel_writes_the_same_ip_header_for_the_raw_socket(loopback: IpAddr, spi: u32) {
        in_new_namespace(move || {
            ip("link set lo up");
            let captured = capture();
            let socket = RawEspSocket::new(loopback).unwrap();
            let packet = esp_packet(spi);
            sys::send_msg(socket.fd(), &SocketAddr::new(loopback, 0).into(), &packet, None).unwrap();
            let received = receive_spi(captured.as_fd(), spi, true);
            let addresses = match loopback {
                IpAddr::V4(address) => IpAddresses::V4 { source: address, destination: address },
                IpAddr::V6(address) => IpAddresses::V6 { source: address, destination: address },
            };
            let header = LinkHeader {
                next_hop: EthernetAddress([0; 6]),
                interface: EthernetAddress([0; 6]),
                addresses,
                hop_limit: kernel_hop_limit(loopback, "lo").unwrap(),
            };
            let ip_header_len = header.ip_header_len();
            assert_eq!(received[..ip_header_len], our_ip_header(&header, packet.len()), "IP header: kernel vs ours");
            assert_eq!(received[ip_header_len..], packet[..]);
        });
    }

    #[test]
    fn the_kernel_writes_the_same_ipv4_header_for_the_raw_socket() {
        the_kernel_writes_the_same_ip_header_for_the_raw_socket(IpAddr::V4(Ipv4Addr::LOCALHOST), 0x5eed_0001);
    }

    #[test]
    fn the_kernel_writes_the_same_ipv6_header_for_the_raw_socket() {
        // With automatic flow labels off on the raw socket (`RawEspSocket`): label 0 as ours.
        the_kernel_writes_the_same_ip_header_for_the_raw_socket(IpAddr::V6(Ipv6Addr::LOCALHOST), 0x5eed_0011);
    }

    /// A route's `hoplimit` metric (set on `loopback`'s local route by `route`, which first
    /// deletes the route the kernel made) is the TTL or hop limit the kernel writes into the raw
    /// socket's packets, over the sysctl: the lookup reports it, and the ring's header takes it.
    fn a_routes_hop_limit_is_the_one_the_kernel_writes(loopback: IpAddr, route: [&'static str; 2], spi: u32) {
        in_new_namespace(move || {
            ip("link set lo up");
            route.into_iter().for_each(ip);
            let captured = capture();
            let socket = RawEspSocket::new(loopback).unwrap();
            sys::send_msg(socket.fd(), &SocketAddr::new(loopback, 0).into(), &esp_packet(spi), None).unwrap();
            let received = receive_spi(captured.as_fd(), spi, true);
            let kernels = if loopback.is_ipv4() { received[8] } else { received[7] };
            let next_hop = RouteLookup::open().unwrap().next_hop(loopback, loopback).unwrap();
            assert_eq!(next_hop.route.hop_limit, Some(9), "{next_hop:?}");
            let interface_hop_limit = kernel_hop_limit(loopback, "lo");
            assert_eq!(interface_hop_limit, Some(64));
            assert_eq!((route_hop_limit(&next_hop.route, interface_hop_limit), kernels), (Some(9), 9));
        });
    }

    #[test]
    fn a_routes_hop_limit_is_the_one_the_kernel_writes_ipv4() {
        let route = [
            "route del local 127.0.0.1 dev lo table local",
            "route add local 127.0.0.1 dev lo table local src 127.0.0.1 hoplimit 9",
        ];
        a_routes_hop_limit_is_the_one_the_kernel_writes(IpAddr::V4(Ipv4Addr::LOCALHOST), route, 0x5eed_0021);
    }

    #[test]
    fn a_routes_hop_limit_is_the_one_the_kernel_writes_ipv6() {
        let route = ["-6 route del local ::1 dev lo table local", "-6 route add local ::1 dev lo table local hoplimit 9"];
        a_routes_hop_limit_is_the_one_the_kernel_writes(IpAddr::V6(Ipv6Addr::LOCALHOST), route, 0x5eed_0031);
    }

    /// In a network namespace of its own: frames from the ring on one end of a veth pair reach
    /// a raw ESP socket on the other end byte for byte (IP header and ESP), and the next-hop
    /// lookup finds the path through the pair. `addresses` are the two ends' and a third on
    /// their link; `spi` the first of four SPIs no other test sends.
    fn ring_frames_arrive_as_sent(addresses: [IpAddr; 3], spi: u32) {
        in_new_namespace(move || {
            let [source, destination, peer] = addresses;
            let prefix_len = if source.is_ipv4() { 24 } else { 64 };
            ip("link add rre0 type veth peer name rre1");
            // No duplicate address detection: the addresses are usable at once.
            ip(&format!("addr add {source}/{prefix_len} dev rre0 nodad"));
            ip(&format!("addr add {destination}/{prefix_len} dev rre1 nodad"));
            ip("link set rre0 up");
            ip("link set rre1 up");
            // Both ends are this namespace's: take packets from a local source on rre1.
            sysctl("ipv4/conf/rre1/accept_local", "1");
            sysctl("ipv4/conf/all/rp_filter", "0");
            sysctl("ipv4/conf/rre1/rp_filter", "0");
            let receiver = RawEspSocket::new(destination).unwrap();
            let captured = capture();
            let mac = |name: &str| {
                // sysfs shows the host's links, not this namespace's: ask `ip`.
                let output = std::process::Command::new("ip").args(["-o", "link", "show", name]).output().unwrap();
                let text = String::from_utf8_lossy(&output.stdout).into_owned();
                let words: Vec<&str> = text.split_whitespace().collect();
                let at = words.iter().position(|word| *word == "link/ether").expect("an Ethernet link") + 1;
                words[at].parse::<EthernetAddress>().unwrap()
            };
            let interface_index = nix::net::if_::if_nametoindex("rre0").unwrap();
            let hop_limit = kernel_hop_limit(destination, "rre0").unwrap();
            let next_hop = |peer_mac: &str, state| NextHop {
                interface_index,
                local_mac: Some(mac("rre0").0),
                neighbour: Some(Neighbour { mac: mac(peer_mac).0, state }),
                route: UnderlayRoute {
                    interface: "rre0".into(),
                    gateway: None,
                    source: None,
                    link_mtu: 1500,
                    route_mtu: None,
                    mtu_expires: None,
                    hop_limit: None,
                },
            };
            let path = LinkPath::from_next_hop(&next_hop("rre1", NeighbourState::Reachable), source, destination, hop_limit)
                .unwrap();
            let mut sender = RingSender::default();
            // Two small packets and one as large as the link takes (a 1500-byte IP packet).
            let full_size = |spi: u32| {
                let mut packet = esp_packet(spi);
                packet.resize(1500 - path.header.ip_header_len(), 0xa5);
                packet
            };
            let packets = [esp_packet(spi), esp_packet(spi + 1), full_size(spi + 2)];
            for packet in &packets {
                assert_eq!(sender.push(&path, packet).unwrap(), Pushed::Queued);
            }
            // One byte more than the path takes goes the kernel's way.
            let mut too_large = full_size(spi + 3);
            too_large.push(0);
            assert_eq!(sender.push(&path, &too_large).unwrap(), Pushed::NotTaken);
            sender.send().unwrap();
            for packet in &packets {
                let spi = u32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]);
                let on_the_wire = receive_spi(captured.as_fd(), spi, true);
                let ip_header_len = path.header.ip_header_len();
                assert_eq!(on_the_wire[..ip_header_len], our_ip_header(&path.header, packet.len()));
                assert_eq!(on_the_wire[ip_header_len..], packet[..]);
                // The receiving end took it: its raw ESP socket has it (IPv4 with the header).
                let delivered = receive_spi(receiver.fd(), spi, receiver.delivers_ip_header());
                assert!(delivered.ends_with(packet));
            }

            // The lookup, for an address that is not this namespace's own (those route over lo):
            // rre0's MAC and the neighbour's, while the kernel's entry is usable.
            ip(&format!("neigh replace {peer} lladdr {} dev rre0 nud reachable", mac("rre1")));
            let next_hops = NextHops::new(source);
            // Held back from the refresher thread (the test refreshes by hand): under load the
            // thread looked the address up first, and the test's refresh then forgot it as unused.
            *next_hops.lock_wanted() = Some(Vec::new());
            assert_eq!(next_hops.path(peer), None, "not looked up yet");
            next_hops.refresh_once();
            let expected = LinkPath::from_next_hop(&next_hop("rre1", NeighbourState::Reachable), source, peer, hop_limit);
            assert_eq!(next_hops.path(peer), expected);
            assert!(expected.is_some());
            ip(&format!("neigh replace {peer} lladdr {} dev rre0 nud stale", mac("rre1")));
            next_hops.refresh_once();
            assert_eq!(next_hops.path(peer), None, "a STALE neighbour goes through the kernel");
        });
    }

    #[test]
    fn ipv4_ring_frames_arrive_as_sent() {
        let address = |last| IpAddr::V4(Ipv4Addr::new(198, 18, 0, last));
        ring_frames_arrive_as_sent([address(1), address(2), address(3)], 0x5eed_0002);
    }

    #[test]
    fn ipv6_ring_frames_arrive_as_sent() {
        let address = |last| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last));
        ring_frames_arrive_as_sent([address(1), address(2), address(3)], 0x5eed_0012);
    }

    #[test]
    fn hop_limits_are_the_kernels_and_forced_flow_labels_give_no_ring_path() {
        in_new_namespace(|| {
            ip("link set lo up");
            assert_eq!(kernel_hop_limit(IpAddr::V6(Ipv6Addr::LOCALHOST), "lo"), Some(64));
            sysctl("ipv6/conf/lo/hop_limit", "17");
            assert_eq!(kernel_hop_limit(IpAddr::V6(Ipv6Addr::LOCALHOST), "lo"), Some(17), "the interface's own");
            sysctl("ipv4/ip_default_ttl", "33");
            assert_eq!(kernel_hop_limit(IpAddr::V4(Ipv4Addr::LOCALHOST), "lo"), Some(33));
            sysctl("ipv6/auto_flowlabels", "2");
            assert_eq!(kernel_hop_limit(IpAddr::V6(Ipv6Addr::LOCALHOST), "lo"), None, "the kernel's labels are forced");
        });
    }

    #[test]
    fn packets_too_large_for_the_path_are_not_taken() {
        let header = |addresses| LinkHeader {
            next_hop: EthernetAddress([0; 6]),
            interface: EthernetAddress([0; 6]),
            addresses,
            hop_limit: 64,
        };
        let v4 = IpAddresses::V4 { source: Ipv4Addr::LOCALHOST, destination: Ipv4Addr::LOCALHOST };
        let v6 = IpAddresses::V6 { source: Ipv6Addr::LOCALHOST, destination: Ipv6Addr::LOCALHOST };
        let mut sender = RingSender::default();
        // 1381 bytes of ESP make a 1401-byte IPv4 packet, 1361 a 1401-byte IPv6 one: the raw
        // socket refuses them with EMSGSIZE.
        for (addresses, esp_len) in [(v4, 1381), (v6, 1361)] {
            let path = LinkPath { interface_index: 1, header: header(addresses), mtu: 1400, link_mtu: 1500 };
            assert_eq!(sender.push(&path, &vec![0u8; esp_len]).unwrap(), Pushed::NotTaken);
        }
        assert!(sender.ring.is_none(), "no ring is opened for a packet that does not take it");
    }

    #[test]
    fn a_ring_is_full_until_sent() {
        require_root();
        let loopback_index = nix::net::if_::if_nametoindex("lo").unwrap();
        let mut ring = PacketTxRing::open(loopback_index, 1514, 1).unwrap();
        let frame = {
            let header = LinkHeader {
                next_hop: EthernetAddress([0; 6]),
                interface: EthernetAddress([0; 6]),
                addresses: IpAddresses::V4 { source: Ipv4Addr::LOCALHOST, destination: Ipv4Addr::LOCALHOST },
                hop_limit: 64,
            };
            let mut frame = vec![0u8; header.frame_header_len()];
            header.emit(&mut frame, 0);
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
        let next_hops = NextHops::new(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let (used, idle) = (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        // Held back from the refresher thread: the test refreshes by hand.
        *next_hops.lock_wanted() = Some(vec![used, idle]);
        next_hops.refresh_once();
        let known = |next_hops: &NextHops| {
            let mut addresses: Vec<IpAddr> = next_hops.paths.load().keys().copied().collect();
            addresses.sort();
            addresses
        };
        assert_eq!(known(&next_hops), [used, idle], "both looked up once");
        // Loopback is no Ethernet link: known, without a ring path.
        assert_eq!(next_hops.path(used), None);
        next_hops.refresh_once();
        assert_eq!(known(&next_hops), [used], "the address no packet asked for is forgotten");
        next_hops.refresh_once();
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
            hop_limit: None,
        };
        let next_hop = |local_mac, state| NextHop {
            interface_index: 3,
            local_mac,
            neighbour: Some(Neighbour { mac: [2, 0, 0, 0, 0, 2], state }),
            route: route.clone(),
        };
        let peer = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
        let local = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
        let reachable = next_hop(Some([2, 0, 0, 0, 0, 1]), NeighbourState::Reachable);
        let path = LinkPath::from_next_hop(&reachable, local, peer, 64).unwrap();
        assert_eq!(path.mtu, 1400);
        assert_eq!(path.link_mtu, 1500);
        assert_eq!(path.header.next_hop, EthernetAddress([2, 0, 0, 0, 0, 2]));
        assert_eq!(path.header.interface, EthernetAddress([2, 0, 0, 0, 0, 1]));
        for state in [NeighbourState::Stale, NeighbourState::Incomplete, NeighbourState::Failed] {
            assert_eq!(LinkPath::from_next_hop(&next_hop(Some([2, 0, 0, 0, 0, 1]), state), local, peer, 64), None);
        }
        assert_eq!(LinkPath::from_next_hop(&next_hop(None, NeighbourState::Reachable), local, peer, 64), None);
        let v6_peer = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        assert_eq!(LinkPath::from_next_hop(&reachable, local, v6_peer, 64), None, "one family per header");
    }
}
