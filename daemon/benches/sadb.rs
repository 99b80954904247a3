//! The SA tables as a node with P peers uses them: installing an SA (a rekey: a new inbound SA,
//! the old one removed; a new outbound SA replacing the peer's) and the datapath's lookups
//! (inbound by SPI, outbound by peer), with P = 10, 100 and 1000 peers that each have an SA pair.
//! An install must cost the same at every P (docs/scale.md).
//!
//!     cargo bench -p meshd --features internals --bench sadb  # or `-- --quick` for a short run

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use mesh_config::control::SaOrigin;
use mesh_config::{Cipher, Encap, MeshConfig, Mode};
use meshd::esp::{KeyMaterial, Opener, ReplayWindow, Sealer, DEFAULT_REPLAY_WINDOW, KEY_MATERIAL_LEN};
use meshd::sadb::manager::SaManager;
use meshd::sadb::{InboundSa, OutboundSa, SaParams};
use meshd::state::MeshState;
use meshd::topology::{PeerId, Topology};

const PEER_COUNTS: [usize; 3] = [10, 100, 1000];

/// 198.18.0.1, 198.18.0.2, ...: node 0 is this node, nodes 1..=P its peers.
fn address(node: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, (node / 250) as u8, (node % 250 + 1) as u8))
}

/// Node n0 of a mesh of `peers` + 1 nodes, with no SA yet.
fn node(peers: usize) -> SaManager {
    let mut text = String::from("[mesh]\nname = \"bench\"\n");
    for node in 0..=peers {
        text += &format!("[[node]]\nname = \"n{node}\"\naddress = \"{}\"\n", address(node));
    }
    text += "[[overlay]]\nname = \"ovl0\"\nvni = 4242\n";
    let config = MeshConfig::parse(Path::new("/nonexistent/mesh.toml"), &text).expect("the bench's mesh file");
    let topology = Topology::new(&config, "n0", address(0)).expect("the bench's topology");
    SaManager::new(Arc::new(MeshState::new(topology)))
}

fn params(spi: u32, peer: usize) -> SaParams {
    SaParams {
        spi,
        peer: PeerId(peer),
        cipher: Cipher::Aes256Gcm16,
        mode: Mode::Transport,
        encap: Encap::Udp,
        esn: false,
        origin: SaOrigin::Ike,
        created_ms: 1,
        remote: SocketAddr::new(address(peer + 1), 4500),
        behind_nat: false,
    }
}

fn key() -> KeyMaterial {
    KeyMaterial::from_bytes(&[7u8; KEY_MATERIAL_LEN]).expect("36 bytes of key material")
}

fn inbound(spi: u32, peer: usize) -> InboundSa {
    let opener = Opener::new(Cipher::Aes256Gcm16, &key()).expect("opener");
    InboundSa::new(params(spi, peer), opener, ReplayWindow::new(DEFAULT_REPLAY_WINDOW))
}

fn outbound(spi: u32, peer: usize) -> OutboundSa {
    OutboundSa::new(params(spi, peer), Sealer::new(Cipher::Aes256Gcm16, &key()).expect("sealer"))
}

/// Spread-out SPIs, as IKE draws them.
fn spi(n: usize) -> u32 {
    (n as u32).wrapping_mul(0x9e37_79b9) | 0x100
}

/// n0 with an inbound and an outbound SA for each of its `peers` peers.
fn keyed_node(peers: usize) -> SaManager {
    let manager = node(peers);
    for peer in 0..peers {
        manager.install_inbound(inbound(spi(peer), peer)).expect("distinct SPIs");
        manager.install_outbound(outbound(spi(peers + peer), peer));
    }
    manager
}

fn install(c: &mut Criterion) {
    let mut group = c.benchmark_group("sadb_install");
    for peers in PEER_COUNTS {
        let manager = keyed_node(peers);
        let mut round = 0;
        group.bench_with_input(BenchmarkId::new("inbound_rekey", peers), &peers, |b, &peers| {
            b.iter_batched(
                || {
                    round += 1;
                    inbound(spi(4 * peers + round), round % peers)
                },
                |sa| {
                    let spi = sa.params.spi;
                    manager.install_inbound(sa).expect("a fresh SPI");
                    manager.remove_inbound(spi)
                },
                BatchSize::SmallInput,
            )
        });
        let mut round = 0;
        group.bench_with_input(BenchmarkId::new("outbound_replace", peers), &peers, |b, &peers| {
            b.iter_batched(
                || {
                    round += 1;
                    outbound(spi(4 * peers + round), round % peers)
                },
                |sa| manager.install_outbound(sa),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("sadb_lookup");
    for peers in PEER_COUNTS {
        let manager = keyed_node(peers);
        let sadb = &manager.state().sadb;
        let mut peer = 0;
        group.bench_with_input(BenchmarkId::new("inbound_and_outbound", peers), &peers, |b, &peers| {
            b.iter(|| {
                peer = (peer + 7) % peers;
                let tables = sadb.load();
                let inbound = tables.inbound(black_box(spi(peer))).map(|sa| sa.params.peer);
                let outbound = tables.outbound(black_box(PeerId(peer))).map(|sa| sa.params.spi);
                (inbound, outbound)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, install, lookup);
criterion_main!(benches);
