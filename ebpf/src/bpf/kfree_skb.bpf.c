// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
// meshd's kernel drop tracer: on skb:kfree_skb, report drops of the mesh's own traffic (ESP,
// its UDP ports, its overlay interfaces) in the node's own network namespace, with the kernel's
// drop reason and the location that freed the packet.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_UDP_ 17
#define IPPROTO_ESP_ 50
#define IPPROTO_ICMP_ 1
#define IPPROTO_ICMPV6_ 58
#define ICMP_ECHO_REPLY 0
#define ICMPV6_ECHO_REPLY 129
#define MAX_PORTS 4
#define NO_HEADER ((__u16)~0U)

// Set by meshd before it attaches: which namespace and ports are the mesh's.
struct tracer_config {
    __u32 netns_inode;
    __u16 ports[MAX_PORTS]; // 0: unused
};

// What meshd reads from the ring buffer; the Rust side names these offsets (event.rs).
struct drop_event {
    __u64 location;
    __u32 reason;
    __u32 ifindex;
    __u16 source_port;
    __u16 destination_port;
    __u8 family; // 4, 6, or 0 when no IP header was found
    __u8 protocol;
    __u8 icmp_type; // ICMP and ICMPv6 only; not sent to meshd (it sits in the padding)
    __u8 pad[1];
    __u8 source[16];
    __u8 destination[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct tracer_config);
} tracer_settings SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u8);
} overlay_ifindexes SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 256 * 1024);
} events SEC(".maps");

// Events that did not fit in the ring buffer.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} lost SEC(".maps");

static __always_inline int is_mesh_port(const struct tracer_config *cfg, __u16 port)
{
    for (int i = 0; i < MAX_PORTS; i++)
        if (cfg->ports[i] != 0 && cfg->ports[i] == port)
            return 1;
    return 0;
}

static __always_inline void read_udp_ports(struct drop_event *event, unsigned char *transport)
{
    struct udphdr udp;
    if (bpf_probe_read_kernel(&udp, sizeof(udp), transport) == 0) {
        event->source_port = bpf_ntohs(udp.source);
        event->destination_port = bpf_ntohs(udp.dest);
    }
}

// Fills the addresses, protocol and UDP ports from the IP header at `network`, if there is one.
static __always_inline void read_ip(struct drop_event *event, unsigned char *network)
{
    __u8 first;
    if (bpf_probe_read_kernel(&first, 1, network) != 0)
        return;
    if ((first >> 4) == 4) {
        struct iphdr ip;
        if (bpf_probe_read_kernel(&ip, sizeof(ip), network) != 0)
            return;
        event->family = 4;
        event->protocol = ip.protocol;
        __builtin_memcpy(event->source, &ip.saddr, 4);
        __builtin_memcpy(event->destination, &ip.daddr, 4);
        if (ip.protocol == IPPROTO_UDP_)
            read_udp_ports(event, network + ip.ihl * 4);
        if (ip.protocol == IPPROTO_ICMP_)
            bpf_probe_read_kernel(&event->icmp_type, 1, network + ip.ihl * 4);
    } else if ((first >> 4) == 6) {
        struct ipv6hdr ip;
        if (bpf_probe_read_kernel(&ip, sizeof(ip), network) != 0)
            return;
        event->family = 6;
        event->protocol = ip.nexthdr;
        __builtin_memcpy(event->source, &ip.saddr, 16);
        __builtin_memcpy(event->destination, &ip.daddr, 16);
        if (ip.nexthdr == IPPROTO_UDP_)
            read_udp_ports(event, network + sizeof(ip));
        if (ip.nexthdr == IPPROTO_ICMPV6_)
            bpf_probe_read_kernel(&event->icmp_type, 1, network + sizeof(ip));
    }
}

SEC("tracepoint/skb/kfree_skb")
int on_kfree_skb(struct trace_event_raw_kfree_skb *ctx)
{
    __u32 zero = 0;
    struct tracer_config *cfg = bpf_map_lookup_elem(&tracer_settings, &zero);
    if (!cfg || cfg->netns_inode == 0)
        return 0;

    struct sk_buff *skb = ctx->skbaddr;
    struct net_device *dev = BPF_CORE_READ(skb, dev);
    struct sock *sk = BPF_CORE_READ(skb, sk);
    __u32 netns = 0, ifindex = 0;
    if (dev) {
        netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
        ifindex = BPF_CORE_READ(dev, ifindex);
    } else if (sk) {
        netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
    }
    if (netns != cfg->netns_inode)
        return 0;

    struct drop_event event = {};
    event.location = (__u64)ctx->location;
    event.reason = ctx->reason;
    event.ifindex = ifindex;
    __u16 network_header = BPF_CORE_READ(skb, network_header);
    unsigned char *head = BPF_CORE_READ(skb, head);
    if (network_header != NO_HEADER && head)
        read_ip(&event, head + network_header);

    int ours = bpf_map_lookup_elem(&overlay_ifindexes, &ifindex) != NULL || event.protocol == IPPROTO_ESP_ ||
               (event.protocol == IPPROTO_UDP_ &&
                (is_mesh_port(cfg, event.source_port) || is_mesh_port(cfg, event.destination_port)));
    if (!ours)
        return 0;
    // An echo reply freed for want of an ICMP datagram socket was delivered to `ping`'s raw
    // socket first: no drop, and reporting it woke meshd once per reply of every ping.
    // (The reason's number differs between kernels: CO-RE relocates it to the running one's.)
    if (ctx->reason == bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NO_SOCKET) &&
        ((event.protocol == IPPROTO_ICMP_ && event.family == 4 && event.icmp_type == ICMP_ECHO_REPLY) ||
         (event.protocol == IPPROTO_ICMPV6_ && event.family == 6 && event.icmp_type == ICMPV6_ECHO_REPLY)))
        return 0;

    if (bpf_ringbuf_output(&events, &event, sizeof(event), 0) != 0) {
        __u64 *count = bpf_map_lookup_elem(&lost, &zero);
        if (count)
            *count += 1;
    }
    return 0;
}
