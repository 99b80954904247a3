//! A star topology: one "switch" namespace holding a Linux bridge, N node namespaces each
//! joined to it by a veth pair (node side `eth0`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::netns::Netns;
use crate::util::wait_until;

/// The underlay address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// Name of the bridge inside the switch namespace.
pub const BRIDGE: &str = "br0";
/// Name of every node's underlay interface.
pub const NODE_IFACE: &str = "eth0";

#[derive(Debug, Clone)]
pub struct LabBuilder {
    prefix: String,
    nodes: usize,
    family: Family,
    mtu: Option<u32>,
}

impl LabBuilder {
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    pub fn family(mut self, family: Family) -> Self {
        self.family = family;
        self
    }

    pub fn ipv6(self) -> Self {
        self.family(Family::V6)
    }

    /// MTU of the underlay (both veth ends and the bridge); default: the kernel's (1500).
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    pub fn build(self) -> Lab {
        crate::util::require_root();
        assert!(self.nodes >= 1 && self.nodes <= 200, "a lab has 1..=200 nodes");
        let switch = Netns::new(&self.prefix, "sw");
        switch.run_ok(["ip", "link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0"]);
        if let Some(mtu) = self.mtu {
            switch.run_ok(["ip", "link", "set", BRIDGE, "mtu", &mtu.to_string()]);
        }
        switch.run_ok(["ip", "link", "set", BRIDGE, "up"]);
        // The switch only switches: no IPv6 link-local chatter of its own.
        let _ = switch.exec(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);

        let mut lab = Lab { nodes: Vec::new(), switch, family: self.family };
        for i in 0..self.nodes {
            let node = Netns::new(&self.prefix, &format!("n{}", i + 1));
            let port = format!("p{}", i + 1);
            lab.plug(&node, &port, self.mtu);
            let addr = lab.addr(i);
            match self.family {
                Family::V4 => {
                    node.run_ok(["ip", "addr", "add", &format!("{addr}/24"), "dev", NODE_IFACE]);
                }
                Family::V6 => {
                    node.run_ok(["ip", "-6", "addr", "add", &format!("{addr}/64"), "dev", NODE_IFACE, "nodad"]);
                }
            }
            node.run_ok(["ip", "link", "set", NODE_IFACE, "up"]);
            lab.nodes.push(node);
        }
        if self.family == Family::V6 {
            for node in &lab.nodes {
                let ready = wait_until(Duration::from_secs(10), || {
                    let out = node.run_stdout(["ip", "-6", "addr", "show", "dev", NODE_IFACE, "tentative"]);
                    out.trim().is_empty().then_some(())
                });
                if ready.is_none() {
                    panic!("{}: IPv6 address on {NODE_IFACE} still tentative after 10 s", node.name());
                }
            }
        }
        lab
    }
}

/// The built topology. Drop order: nodes first, then the switch.
#[derive(Debug)]
pub struct Lab {
    nodes: Vec<Netns>,
    switch: Netns,
    family: Family,
}

impl Lab {
    /// A builder for a lab whose namespaces are named `<prefix>-<role>-<pid>`: keep the prefix
    /// short and unique per test so tests can run in parallel.
    pub fn builder(prefix: &str) -> LabBuilder {
        LabBuilder { prefix: prefix.to_string(), nodes: 3, family: Family::V4, mtu: None }
    }

    /// `n` nodes, IPv4 underlay, default MTU.
    pub fn new(prefix: &str, n: usize) -> Lab {
        Lab::builder(prefix).nodes(n).build()
    }

    /// Joins `ns` to the switch: a veth pair, `port` on the bridge (up), [`NODE_IFACE`] in `ns`
    /// (down, no address).
    pub fn plug(&self, ns: &Netns, port: &str, mtu: Option<u32>) {
        self.switch.add_veth(port, ns, NODE_IFACE, mtu);
        self.switch.run_ok(["ip", "link", "set", port, "master", BRIDGE]);
        self.switch.run_ok(["ip", "link", "set", port, "up"]);
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i` (0-based; mesh node `n{i+1}`).
    pub fn node(&self, i: usize) -> &Netns {
        &self.nodes[i]
    }

    pub fn nodes(&self) -> &[Netns] {
        &self.nodes
    }

    /// The switch namespace (bridge [`BRIDGE`], ports `p1`..`pN`).
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// Node `i`'s underlay address: 198.18.0.{i+1} or 2001:db8:18::{i+1}.
    pub fn addr(&self, i: usize) -> IpAddr {
        underlay_addr(self.family, i)
    }

    /// Node `i`'s mesh name, `n{i+1}`.
    pub fn node_name(&self, i: usize) -> String {
        format!("n{}", i + 1)
    }

    /// Node `i`'s overlay address, 10.244.0.{i+1} (without prefix length).
    pub fn overlay_addr(&self, i: usize) -> IpAddr {
        overlay_addr(i)
    }
}

pub fn underlay_addr(family: Family, i: usize) -> IpAddr {
    let host = u8::try_from(i + 1).expect("node index < 255");
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(198, 18, 0, host)),
        Family::V6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, u16::from(host))),
    }
}

pub fn overlay_addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 244, 0, u8::try_from(i + 1).expect("node index < 255")))
}

/// The kernel's neighbour-table thresholds (`gc_thresh1..3` of IPv4 and IPv6), raised for a lab
/// of many nodes while this guard lives and restored when it drops. The table is shared by all
/// namespaces: N nodes that talk to each other hold N x (N-1) entries, and past `gc_thresh3`
/// (1024 by default) sends fail with ENOBUFS.
#[derive(Debug)]
pub struct NeighbourTable {
    saved: Vec<(String, String)>,
}

impl NeighbourTable {
    /// Room for `nodes` nodes that all talk to each other (thresholds only ever go up).
    pub fn raise_for(nodes: usize) -> NeighbourTable {
        let entries = nodes * nodes;
        let mut saved = Vec::new();
        for family in ["ipv4", "ipv6"] {
            for (n, wanted) in [(1, entries), (2, 2 * entries), (3, 4 * entries)] {
                let key = format!("/proc/sys/net/{family}/neigh/default/gc_thresh{n}");
                let before = std::fs::read_to_string(&key).unwrap_or_else(|e| panic!("read {key}: {e}"));
                let current: usize = before.trim().parse().unwrap_or(0);
                if current < wanted {
                    std::fs::write(&key, wanted.to_string()).unwrap_or_else(|e| panic!("write {key}: {e}"));
                    saved.push((key, before.trim().to_string()));
                }
            }
        }
        NeighbourTable { saved }
    }
}

impl Drop for NeighbourTable {
    fn drop(&mut self) {
        // Lowest threshold first: gc_thresh1 <= gc_thresh2 <= gc_thresh3 holds at every step.
        for (key, value) in &self.saved {
            let _ = std::fs::write(key, value);
        }
    }
}
