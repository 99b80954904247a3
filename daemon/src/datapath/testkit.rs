//! Two or more nodes' datapaths wired together in memory, for unit tests and fuzz targets:
//! egress seals into a `Wire`, ingress delivers into `Taps`, no sockets or interfaces.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use mesh_config::{Cipher, Encap, MeshConfig, Mode};

use super::sockets::GsoRun;
use super::{Egress, EspSender, FrameSink, Ingress, NoLanding, TapWrite, BUFFER_LEN, FRAME_HEADROOM, FRAME_OFFSET};
use crate::manual;
use crate::sadb::manager::SaManager;
use crate::state::MeshState;
use crate::topology::{OverlayId, Topology};

#[derive(Default)]
pub struct Wire(pub RefCell<Vec<(Vec<u8>, IpAddr)>>);

impl EspSender for Wire {
    fn send_esp(&self, packet: &[u8], peer: SocketAddr) -> io::Result<usize> {
        self.0.borrow_mut().push((packet.to_vec(), peer.ip()));
        Ok(packet.len())
    }
}

/// One GSO send as the socket gets it: destination, packets back to back, segment size.
pub type Run = (SocketAddr, Vec<u8>, u16);

/// A GSO batch whose runs are recorded (if `keep`) instead of sent. `in_place`: egress seals
/// into its queue, as the datapath does; else every packet is sealed in the caller's buffer and
/// copied in (`copied` counts those).
pub struct GsoWire {
    run: RefCell<GsoRun>,
    in_place: bool,
    keep: bool,
    pub sent: RefCell<Vec<Run>>,
    pub copied: Cell<usize>,
}

impl GsoWire {
    pub fn new(in_place: bool, keep: bool) -> Self {
        let (run, sent) = (RefCell::default(), RefCell::default());
        GsoWire { run, in_place, keep, sent, copied: Cell::new(0) }
    }

    fn record(&self) -> impl FnMut(SocketAddr, &[u8], u16) -> io::Result<usize> + '_ {
        |to, bytes, segment_size| {
            if self.keep {
                self.sent.borrow_mut().push((to, bytes.to_vec(), segment_size));
            }
            Ok(bytes.len())
        }
    }
}

impl EspSender for GsoWire {
    fn send_esp(&self, packet: &[u8], peer: SocketAddr) -> io::Result<usize> {
        self.copied.set(self.copied.get() + 1);
        self.run.borrow_mut().push(packet, peer, &mut self.record())
    }

    fn seal_into_queue(
        &self,
        peer: SocketAddr,
        esp_start: usize,
        esp_len: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Option<io::Result<usize>> {
        self.in_place.then(|| self.run.borrow_mut().seal_into(peer, esp_start, esp_len, fill, &mut self.record()))
    }

    fn flush(&self) -> io::Result<()> {
        self.run.borrow_mut().flush(&mut self.record())
    }
}

#[derive(Default)]
pub struct Taps(pub RefCell<Vec<(OverlayId, Vec<u8>)>>);

impl FrameSink for Taps {
    type Landing<'s> = NoLanding;

    fn deliver(&self, overlay: OverlayId, with_headroom: &mut [u8]) -> io::Result<()> {
        self.0.borrow_mut().push((overlay, with_headroom[FRAME_HEADROOM..].to_vec()));
        Ok(())
    }

    fn landing(&self, _: usize, _: usize) -> Option<NoLanding> {
        None
    }
}

/// A TAP queue that records what is written to it (if `keep`), virtio-net header and all.
#[derive(Default)]
pub struct TapRecord {
    pub keep: bool,
    pub written: RefCell<Vec<Vec<u8>>>,
}

impl TapWrite for TapRecord {
    fn write_frame(&self, bytes: &[u8]) -> io::Result<()> {
        if self.keep {
            self.written.borrow_mut().push(bytes.to_vec());
        }
        Ok(())
    }
}

/// A sink that offers no landing: every packet is opened in place and its frame copied into
/// the coalescer, as before issue 19.
pub struct CopyingSink<'a, S: FrameSink>(pub &'a S);

impl<S: FrameSink> FrameSink for CopyingSink<'_, S> {
    type Landing<'s>
        = NoLanding
    where
        Self: 's;

    fn deliver(&self, overlay: OverlayId, with_headroom: &mut [u8]) -> io::Result<()> {
        self.0.deliver(overlay, with_headroom)
    }

    fn landing(&self, _: usize, _: usize) -> Option<NoLanding> {
        None
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Setup {
    pub nodes: usize,
    pub ipv6: bool,
    pub encap: Encap,
    pub mode: Mode,
    pub cipher: Cipher,
    pub vni: u32,
}

pub const DEFAULT: Setup =
    Setup { nodes: 2, ipv6: false, encap: Encap::Udp, mode: Mode::Transport, cipher: Cipher::Aes256Gcm16, vni: 4242 };

pub fn address(setup: &Setup, node: usize) -> IpAddr {
    if setup.ipv6 {
        format!("2001:db8:18::{}", node + 1).parse().unwrap()
    } else {
        format!("198.18.0.{}", node + 1).parse().unwrap()
    }
}

pub fn spi(from: usize, to: usize) -> u32 {
    0x1000 + 0x100 * from as u32 + to as u32
}

/// A mesh file with manual SAs between every pair; node `i` is `n{i}`.
pub fn mesh_file(setup: &Setup) -> MeshConfig {
    let mut text = format!("[mesh]\nname = \"t\"\nencap = \"{}\"\nmode = \"{}\"\n", setup.encap, setup.mode);
    for node in 0..setup.nodes {
        text += &format!("[[node]]\nname = \"n{node}\"\naddress = \"{}\"\n", address(setup, node));
    }
    text += &format!("[[overlay]]\nname = \"ovl0\"\nvni = {}\n", setup.vni);
    for from in 0..setup.nodes {
        for to in (0..setup.nodes).filter(|to| *to != from) {
            let key = format!("{:02x}", from * 16 + to).repeat(36);
            text += &format!(
                "[[manual_sa]]\nfrom = \"n{from}\"\nto = \"n{to}\"\nspi = \"{:#x}\"\ncipher = \"{}\"\nkey = \"{key}\"\n",
                spi(from, to),
                setup.cipher
            );
        }
    }
    MeshConfig::parse(Path::new("/nonexistent/mesh.toml"), &text).unwrap()
}

/// Node `index` of the mesh, with its manual SAs installed.
pub fn node(setup: &Setup, index: usize) -> Arc<MeshState> {
    node_of(&mesh_file(setup), setup, index)
}

/// Node `index` of `config` (a [`mesh_file`] of `setup`, perhaps changed), with its manual SAs
/// installed.
pub fn node_of(config: &MeshConfig, setup: &Setup, index: usize) -> Arc<MeshState> {
    let name = format!("n{index}");
    let state = Arc::new(MeshState::new(Topology::new(config, &name, address(setup, index)).unwrap()));
    manual::install(config, &SaManager::new(state.clone()), None).unwrap();
    state
}

pub fn frame(destination: [u8; 6], source: [u8; 6], payload_len: usize) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&destination);
    frame.extend_from_slice(&source);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend((0..payload_len).map(|i| i as u8));
    frame
}

pub const BROADCAST: [u8; 6] = [0xff; 6];
pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

/// What `state` sends for `frame` read from its first overlay.
pub fn send(state: &MeshState, frame: &[u8]) -> Sent {
    send_and_answer(state, frame).0
}

/// ESP packets sent and the peer each went to.
pub type Sent = Vec<(Vec<u8>, IpAddr)>;
/// Frames written to the overlays.
pub type Delivered = Vec<(OverlayId, Vec<u8>)>;

/// What `state` sends for `frame` read from its first overlay, and what it writes back into its
/// overlays (ICMP answers).
pub fn send_and_answer(state: &MeshState, frame: &[u8]) -> (Sent, Delivered) {
    let wire = Wire::default();
    let taps = Taps::default();
    let tables = state.sadb.load();
    let topology = state.topology();
    let egress = Egress {
        state,
        topology: &topology,
        tables: &tables,
        underlay: &wire,
        sink: &taps,
        now_ms: 5,
        observing: None,
    };
    let mut buf = vec![0u8; BUFFER_LEN];
    let mut scratch = vec![0u8; BUFFER_LEN];
    buf[FRAME_OFFSET..FRAME_OFFSET + frame.len()].copy_from_slice(frame);
    egress.forward(&topology.overlays[0], &mut buf, &mut scratch, frame.len());
    (wire.0.into_inner(), taps.0.into_inner())
}

/// Has `state` receive `batch` from `from` as one batch of a worker into `sink` (not flushed);
/// returns how many packets were left as they came (not opened in place).
pub fn receive_batch_into<S: FrameSink>(state: &MeshState, sink: &S, from: SocketAddr, batch: &[Vec<u8>]) -> usize {
    let (topology, tables) = (state.topology(), state.sadb.load());
    let ingress = Ingress::new(state, &topology, &tables, sink, 7, None);
    let mut untouched = 0;
    for packet in batch {
        let mut buffer = packet.clone();
        ingress.receive(&mut buffer, from);
        untouched += usize::from(buffer == *packet);
    }
    untouched
}

/// What `state` delivers to its overlays for `packet` from `from`.
pub fn receive(state: &MeshState, packet: &[u8], from: IpAddr) -> Vec<(OverlayId, Vec<u8>)> {
    receive_batch_at(state, &[(packet, from)], 7)
}

/// What `state` delivers for `packets`, handled as one receive batch of a worker at `now_ms`.
pub fn receive_batch_at(state: &MeshState, packets: &[(&[u8], IpAddr)], now_ms: u64) -> Vec<(OverlayId, Vec<u8>)> {
    let packets: Vec<(&[u8], SocketAddr)> =
        packets.iter().map(|(packet, from)| (*packet, SocketAddr::new(*from, 4500))).collect();
    receive_from_at(state, &packets, now_ms)
}

/// What `state` delivers for `packets` from the given addresses and ports, as one batch.
pub fn receive_from(state: &MeshState, packets: &[(&[u8], SocketAddr)]) -> Vec<(OverlayId, Vec<u8>)> {
    receive_from_at(state, packets, 7)
}

fn receive_from_at(state: &MeshState, packets: &[(&[u8], SocketAddr)], now_ms: u64) -> Vec<(OverlayId, Vec<u8>)> {
    let taps = Taps::default();
    let tables = state.sadb.load();
    let topology = state.topology();
    let ingress = Ingress::new(state, &topology, &tables, &taps, now_ms, None);
    for (packet, from) in packets {
        ingress.receive(&mut packet.to_vec(), *from);
    }
    // The batch ends: its counts reach the shared counters.
    drop(ingress);
    taps.0.into_inner()
}
