//! The overlay interfaces: one multi-queue TAP per overlay, one queue per datapath worker.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tun_rs::{DeviceBuilder, Layer};

/// One queue of an overlay's TAP: its descriptor, read and written as is (with offloads every
/// frame starts with a virtio-net header, which `crate::offload` handles). Owning the descriptor
/// rather than a tun-rs device lets a new meshd adopt the queues of a running one
/// (`crate::upgrade`).
pub struct TapQueue(OwnedFd);

impl TapQueue {
    /// A queue another meshd handed over.
    pub fn adopt(fd: OwnedFd) -> Self {
        TapQueue(fd)
    }

    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(nix::unistd::read(&self.0, buf)?)
    }

    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        Ok(nix::unistd::write(&self.0, buf)?)
    }
}

impl AsFd for TapQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Creates TAP `name` with `queues` queues (IFF_MULTI_QUEUE), sets its MTU, MAC and host address,
/// has it ignore IPv6 router advertisements, and brings it up. The interface disappears when the last queue is closed.
///
/// With `offload` (IFF_VNET_HDR and TUNSETOFFLOAD with checksum and TSO) every read and write
/// starts with a virtio-net header, and the kernel hands over TCP super-frames of up to 64 KiB,
/// which the datapath segments itself (`crate::offload`).
pub fn create(
    name: &str,
    mtu: u16,
    mac: [u8; 6],
    address: Option<(IpAddr, u8)>,
    queues: usize,
    offload: bool,
) -> io::Result<Vec<TapQueue>> {
    let mut builder = DeviceBuilder::new().name(name).layer(Layer::L2).mtu(mtu).mac_addr(mac).multi_queue(true).offload(offload);
    builder = match address {
        Some((IpAddr::V4(ip), prefix)) => builder.ipv4(ip, prefix, None),
        Some((IpAddr::V6(ip), prefix)) => builder.ipv6(ip, prefix),
        None => builder,
    };
    let first = builder.enable(false).build_sync()?;
    // The overlay is the tenants' network: a router advertisement from it must give this host no
    // default route and no address (and the host then sends no router solicitations into it,
    // which every peer would get flooded). Set before the interface comes up.
    crate::netif::refuse_router_advertisements(name)?;
    first.enabled(true)?;
    let mut devices = Vec::with_capacity(queues);
    for _ in 1..queues {
        devices.push(first.try_clone()?);
    }
    devices.insert(0, first);
    for device in &devices {
        device.set_nonblocking(true)?;
    }
    Ok(devices.into_iter().map(|device| TapQueue(crate::sys::tap_queue_fd(device))).collect())
}
