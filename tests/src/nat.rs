//! Two nodes with a masquerading router between them: n1 (198.18.1.1) -- router -- n2
//! (198.18.2.1); what n1 sends towards n2 leaves the router from 198.18.2.254.

use crate::netns::Netns;

/// The namespaces of the NAT topology (removed when dropped, like every `Netns`).
pub struct NatLab {
    pub n1: Netns,
    pub router: Netns,
    pub n2: Netns,
}

impl NatLab {
    /// Builds it; `prefix` names the namespaces.
    pub fn new(prefix: &str) -> NatLab {
        let n1 = Netns::new(prefix, "n1");
        let router = Netns::new(prefix, "r");
        let n2 = Netns::new(prefix, "n2");
        for (node, side, subnet) in [(&n1, "rn1", 1), (&n2, "rn2", 2)] {
            let outside = format!("{side}x");
            router.run_ok(["ip", "link", "add", side, "type", "veth", "peer", "name", &outside]);
            router.run_ok(["ip", "link", "set", &outside, "netns", node.name()]);
            node.run_ok(["ip", "link", "set", &outside, "name", "eth0"]);
            node.run_ok(["ip", "addr", "add", &format!("198.18.{subnet}.1/24"), "dev", "eth0"]);
            node.run_ok(["ip", "link", "set", "eth0", "up"]);
            node.run_ok(["ip", "link", "set", "lo", "up"]);
            node.run_ok(["ip", "route", "add", "default", "via", &format!("198.18.{subnet}.254")]);
            router.run_ok(["ip", "addr", "add", &format!("198.18.{subnet}.254/24"), "dev", side]);
            router.run_ok(["ip", "link", "set", side, "up"]);
        }
        router.run_ok(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        router.run_ok(["nft", "add table ip nat"]);
        router.run_ok(["nft", "add chain ip nat post { type nat hook postrouting priority 100 ; }"]);
        router.run_ok(["nft", "add rule ip nat post oifname rn2 masquerade"]);
        NatLab { n1, router, n2 }
    }

    /// The nodes' underlay addresses, n1 first.
    pub fn addresses(&self) -> Vec<std::net::IpAddr> {
        vec![[198, 18, 1, 1].into(), [198, 18, 2, 1].into()]
    }
}
