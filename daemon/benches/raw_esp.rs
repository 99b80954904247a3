//! The raw ESP send path through an AF_PACKET TX ring: writing the Ethernet and IP headers of
//! one packet (IPv4, and IPv6 as `link_header_emit_v6`), and filling a ring with 64 ESP packets of 1400 bytes and handing them to the
//! kernel with one `send` (on loopback, so it needs root; the kernel answers the ESP to
//! 127.0.0.1 with ICMP it rate-limits).
//!
//!     cargo bench -p meshd --features internals --bench raw_esp  # or `-- --quick` for a short run

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meshd::datapath::link_header::{IpAddresses, LinkHeader, MAX_LEN};
use meshd::datapath::packet_ring::{LinkPath, Pushed, RingSender};
use meshd::wire::ethernet::EthernetAddress;

const ESP_LEN: usize = 1400;
const BATCH: usize = 64;

fn header(addresses: IpAddresses) -> LinkHeader {
    LinkHeader { next_hop: EthernetAddress([0; 6]), interface: EthernetAddress([0; 6]), addresses, hop_limit: 64 }
}

fn headers(c: &mut Criterion) {
    let v4 = header(IpAddresses::V4 { source: Ipv4Addr::LOCALHOST, destination: Ipv4Addr::new(198, 18, 0, 2) });
    let v6 = header(IpAddresses::V6 {
        source: Ipv6Addr::LOCALHOST,
        destination: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2),
    });
    let mut buf = [0u8; MAX_LEN];
    c.bench_function("link_header_emit", |b| b.iter(|| black_box(&v4).emit(black_box(&mut buf), ESP_LEN)));
    c.bench_function("link_header_emit_v6", |b| b.iter(|| black_box(&v6).emit(black_box(&mut buf), ESP_LEN)));
}

fn ring_fill(c: &mut Criterion) {
    let Ok(loopback) = nix::net::if_::if_nametoindex("lo") else { return };
    let path = LinkPath {
        interface_index: loopback,
        header: header(IpAddresses::V4 { source: Ipv4Addr::LOCALHOST, destination: Ipv4Addr::LOCALHOST }),
        mtu: 1500,
        link_mtu: 1500,
    };
    let esp = vec![0x5a; ESP_LEN];
    let mut sender = RingSender::default();
    let mut group = c.benchmark_group("ring");
    group.throughput(Throughput::Bytes((BATCH * ESP_LEN) as u64));
    group.bench_function("fill_and_send_64x1400", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                assert_eq!(sender.push(&path, black_box(&esp)).expect("run as root"), Pushed::Queued);
            }
            sender.send().expect("sending the ring");
        })
    });
    group.finish();
}

criterion_group!(benches, headers, ring_fill);
criterion_main!(benches);
