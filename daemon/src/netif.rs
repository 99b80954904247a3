//! What the daemon needs to know about this host's interfaces.

use std::io;
use std::net::IpAddr;

use nix::ifaddrs::getifaddrs;

/// Every address configured on this host (in this network namespace).
pub fn local_addresses() -> io::Result<Vec<IpAddr>> {
    Ok(addresses()?.into_iter().map(|(_, address)| address).collect())
}

/// The interface that holds `address`, if any.
pub fn interface_with(address: IpAddr) -> io::Result<Option<String>> {
    Ok(addresses()?.into_iter().find(|(_, a)| *a == address).map(|(name, _)| name))
}

/// The addresses configured on interface `name`.
pub fn interface_addresses(name: &str) -> io::Result<Vec<IpAddr>> {
    Ok(addresses()?.into_iter().filter(|(interface, _)| interface == name).map(|(_, address)| address).collect())
}

/// Whether interface `name` forwards IPv6 (then it is a router on its link, and says so when it
/// advertises its addresses); false when it has no IPv6.
pub fn forwards_ipv6(name: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{name}/forwarding")).is_ok_and(|value| value.trim() == "1")
}

/// Has interface `name` ignore IPv6 router advertisements (`accept_ra = 0`, which also stops its
/// router solicitations); nothing to do where it has no IPv6.
pub fn refuse_router_advertisements(name: &str) -> io::Result<()> {
    match std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/accept_ra"), "0") {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        written => written,
    }
}

/// The MTU of interface `name`.
pub fn interface_mtu(name: &str) -> io::Result<usize> {
    let path = format!("/sys/class/net/{name}/mtu");
    let text = std::fs::read_to_string(&path)?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{path} does not hold a number: {text:?}")))
}

/// Has the kernel announce interface `name`'s addresses (gratuitous ARP, unsolicited neighbour
/// advertisement) whenever its MAC is set, and announces them now: the other nodes' neighbour
/// caches learn this node's overlay MAC without waiting for their entries to go stale.
pub fn announce(name: &str, mac: [u8; 6]) -> io::Result<()> {
    for (family, setting) in [("ipv4", "arp_notify"), ("ipv6", "ndisc_notify")] {
        let path = format!("/proc/sys/net/{family}/conf/{name}/{setting}");
        // No IPv6 on this host or interface: nothing to announce there.
        if family == "ipv4" || std::path::Path::new(&path).exists() {
            std::fs::write(&path, "1")?;
        }
    }
    crate::sys::set_interface_mac(name, mac)
}

fn addresses() -> io::Result<Vec<(String, IpAddr)>> {
    let list = getifaddrs().map_err(io::Error::from)?;
    Ok(list
        .filter_map(|entry| {
            let address = entry.address?;
            let ip = address
                .as_sockaddr_in()
                .map(|a| IpAddr::V4(a.ip()))
                .or_else(|| address.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())))?;
            Some((entry.interface_name, ip))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_local() {
        let addresses = local_addresses().unwrap();
        assert!(addresses.contains(&IpAddr::from([127, 0, 0, 1])), "{addresses:?}");
        assert_eq!(interface_with(IpAddr::from([127, 0, 0, 1])).unwrap().as_deref(), Some("lo"));
        assert!(interface_mtu("lo").unwrap() >= 1500);
    }
}
