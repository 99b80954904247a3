//! Two nodes behind a router: `n1 eth0 <-> r1 [router] r2 <-> eth0 n2`, each link its own
//! subnet (198.18.{1,2}.0/24 or 2001:db8:18:{1,2}::/64, the router at .254 / ::fe). The router
//! forwards, can lower the MTU of its side of a link, and drops every ICMP "too big" / IPv4
//! "destination unreachable" it would forward or send (nftables), so the nodes never learn a
//! smaller path MTU from ICMP: a path that silently drops large packets.

use std::net::IpAddr;
use std::time::Duration;

use crate::lab::Family;
use crate::netns::Netns;
use crate::util::wait_until;

/// The node side of each link.
pub const NODE_IFACE: &str = "eth0";

#[derive(Debug)]
pub struct RoutedPair {
    nodes: Vec<Netns>,
    router: Netns,
    family: Family,
}

impl RoutedPair {
    /// Builds the topology with every link at `mtu` (both veth ends); namespaces are named
    /// `<prefix>-{n1,n2,r}-<pid>`.
    pub fn new(prefix: &str, family: Family, mtu: u32) -> RoutedPair {
        let router = Netns::new(prefix, "r");
        let mut nodes = Vec::new();
        for i in 0..2 {
            let node = Netns::new(prefix, &format!("n{}", i + 1));
            let side = router_iface(i);
            router.add_veth(&side, &node, NODE_IFACE, Some(mtu));
            let (node_addr, router_addr, prefix_len) = match family {
                Family::V4 => (format!("198.18.{}.1", i + 1), format!("198.18.{}.254", i + 1), 24),
                Family::V6 => (format!("2001:db8:18:{}::1", i + 1), format!("2001:db8:18:{}::fe", i + 1), 64),
            };
            let no_dad: &[&str] = if family == Family::V6 { &["nodad"] } else { &[] };
            let node_cidr = format!("{node_addr}/{prefix_len}");
            let router_cidr = format!("{router_addr}/{prefix_len}");
            node.run_ok([&["ip", "addr", "add", &node_cidr, "dev", NODE_IFACE][..], no_dad].concat());
            router.run_ok([&["ip", "addr", "add", &router_cidr, "dev", &side][..], no_dad].concat());
            node.run_ok(["ip", "link", "set", NODE_IFACE, "up"]);
            router.run_ok(["ip", "link", "set", &side, "up"]);
            node.run_ok(["ip", "route", "add", "default", "via", &router_addr]);
            nodes.push(node);
        }
        router.run_ok(["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        router.run_ok(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        // No ICMP error about sizes ever leaves the router; neighbour discovery still works.
        router.run_ok(["nft", "add table inet pmtu"]);
        for hook in ["forward", "output"] {
            router.run_ok(["nft", &format!("add chain inet pmtu {hook} {{ type filter hook {hook} priority 0 ; }}")]);
            router
                .run_ok(["nft", &format!("add rule inet pmtu {hook} icmp type destination-unreachable counter drop")]);
            router.run_ok(["nft", &format!("add rule inet pmtu {hook} icmpv6 type packet-too-big counter drop")]);
        }
        let pair = RoutedPair { nodes, router, family };
        pair.wait_reachable();
        pair
    }

    /// Node `i` (0 or 1; mesh node `n{i+1}`).
    pub fn node(&self, i: usize) -> &Netns {
        &self.nodes[i]
    }

    pub fn router(&self) -> &Netns {
        &self.router
    }

    /// Node `i`'s underlay address.
    pub fn addr(&self, i: usize) -> IpAddr {
        match self.family {
            Family::V4 => format!("198.18.{}.1", i + 1).parse().expect("address"),
            Family::V6 => format!("2001:db8:18:{}::1", i + 1).parse().expect("address"),
        }
    }

    /// The router's interface towards node `i`.
    pub fn router_iface(&self, i: usize) -> String {
        router_iface(i)
    }

    /// Sets the MTU of the router's side of the link to node `i` only: the node does not know,
    /// and packets larger than `mtu` vanish on that link in both directions.
    pub fn set_router_mtu(&self, i: usize, mtu: u32) {
        self.router.run_ok(["ip", "link", "set", &router_iface(i), "mtu", &mtu.to_string()]);
    }

    /// Source-NATs (masquerades) what the router forwards to node `i`: node `i` sees the other
    /// node as the router's address on its link.
    pub fn masquerade_towards(&self, i: usize) {
        self.router.run_ok(["nft", "add table ip nat"]);
        self.router.run_ok(["nft", "add chain ip nat post { type nat hook postrouting priority 100 ; }"]);
        self.router.run_ok(["nft", &format!("add rule ip nat post oifname {} masquerade", router_iface(i))]);
    }

    /// The masquerading router gets a new mapping for what it forwards to node `i` (after
    /// `masquerade_towards(i)`): its connection tracking is flushed and UDP leaves from `port`,
    /// as when a home router restarts or a carrier NAT times a mapping out.
    pub fn rebind_masquerade(&self, i: usize, port: u16) {
        let iface = router_iface(i);
        // One nft invocation is one transaction: nothing leaves untranslated in between.
        self.router.run_ok([
            "nft",
            &format!(
                "flush chain ip nat post; \
                 add rule ip nat post oifname {iface} meta l4proto udp masquerade to :{port}; \
                 add rule ip nat post oifname {iface} masquerade"
            ),
        ]);
        self.router.run_ok(["conntrack", "-F"]);
    }

    /// How many ICMP errors the router's nftables rules dropped so far.
    pub fn dropped_icmp(&self) -> u64 {
        self.router.nft_counted("inet pmtu")
    }

    fn wait_reachable(&self) {
        let target = self.addr(1).to_string();
        let reached = wait_until(Duration::from_secs(15), || {
            self.nodes[0].exec(["ping", "-c", "1", "-W", "1", &target]).status.success().then_some(())
        });
        if reached.is_none() {
            panic!("{}: n2 ({target}) not reachable through the router within 15 s", self.nodes[0].name());
        }
    }
}

fn router_iface(i: usize) -> String {
    format!("r{}", i + 1)
}
