#![no_main]

//! The IKE responder fed arbitrary datagrams: before any state (as IKE_SA_INIT from a
//! stranger), and after a real IKE_SA_INIT, with the datagram's header pointed at the half-open
//! IKE SA so that SPI lookup, message ID checks and SK decryption see arbitrary input. And two
//! endpoints driven by a sequence of steps the input chooses: deliver, lose, replay (also from
//! another address), corrupt or forge datagrams, let time pass, flush or rekey, so that every
//! state an exchange can reach meets every kind of message. Nothing may panic.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mesh_config::{Cipher, DhGroup, Mode, Prf, Proposal};
use meshd::ike::{Endpoint, Event, IkeSettings, PeerSettings, Rng, RngError, Transmit};
use zeroize::Zeroizing;

fn settings(local: &str, peer: &str) -> IkeSettings {
    IkeSettings {
        local: local.parse().unwrap(),
        psk: Zeroizing::new(b"fuzzing pre-shared key, 32 bytes or more".to_vec()),
        node_key: None,
        proposals: [Cipher::Aes256Gcm16, Cipher::Chacha20Poly1305]
            .map(|cipher| Proposal { cipher, prf: Prf::HmacSha256, group: DhGroup::X25519 })
            .to_vec(),
        ike_lifetime: Duration::from_secs(3600),
        child_lifetime: Duration::from_secs(600),
        dpd: Duration::from_secs(10),
        force_udp_encap: true,
        esn: true,
        vxlan_port: 4790,
        peers: vec![PeerSettings { address: peer.parse().unwrap(), mode: Mode::Transport, public_keys: Vec::new() }],
    }
}

/// Randomness the input decides (SPIs, nonces, jitter), so that a crash replays exactly.
struct InputRng(u64);

impl Rng for InputRng {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), RngError> {
        for byte in dest {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            *byte = (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
        }
        Ok(())
    }
}

/// One node of the sequence: its endpoint, its address, what it sent and the outbound SPI of
/// its Child SA.
struct Node {
    endpoint: Endpoint,
    address: &'static str,
    outbound_spi: Option<u32>,
}

impl Node {
    fn new(local: &'static str, peer: &str, seed: u64, now: Instant) -> Option<Node> {
        let rng = Box::new(InputRng(seed | 1));
        let endpoint = Endpoint::with_rng(settings(local, peer), rng, now).ok()?;
        Some(Node { endpoint, address: local, outbound_spi: None })
    }

    fn drain(&mut self, wire: &mut VecDeque<Transmit>, seen: &mut Vec<Transmit>) {
        while let Some(transmit) = self.endpoint.poll_transmit() {
            if seen.len() < 64 {
                seen.push(transmit.clone());
            }
            wire.push_back(transmit);
        }
        while let Some(event) = self.endpoint.poll_event() {
            if let Event::InstallOutbound { sa, .. } = event {
                self.outbound_spi = Some(sa.spi);
            }
        }
    }

    fn receive(&mut self, transmit: &Transmit, from: &str, now: Instant) {
        let from = SocketAddr::new(from.parse().unwrap(), transmit.source_port);
        self.endpoint.handle(&transmit.bytes, from, transmit.destination.port(), now);
    }
}

/// Two endpoints and the datagrams between them, driven step by step by the input.
fn sequence(seed: u64, steps: &[u8]) {
    let mut now = Instant::now();
    let (Some(mut a), Some(mut b)) =
        (Node::new("198.18.0.1", "198.18.0.2", seed, now), Node::new("198.18.0.2", "198.18.0.1", !seed, now))
    else {
        return;
    };
    let (mut to_b, mut to_a) = (VecDeque::new(), VecDeque::new());
    let mut seen: Vec<Transmit> = Vec::new();
    a.endpoint.connect(0, now);
    b.endpoint.connect(0, now);
    let mut steps = steps.iter().copied();
    while let Some(step) = steps.next() {
        a.drain(&mut to_b, &mut seen);
        b.drain(&mut to_a, &mut seen);
        let toward_a = step & 0x10 != 0;
        let (node, wire, peer_address) =
            if toward_a { (&mut a, &mut to_a, "198.18.0.2") } else { (&mut b, &mut to_b, "198.18.0.1") };
        match step & 0x0f {
            0..=4 => {
                if let Some(transmit) = wire.pop_front() {
                    node.receive(&transmit, peer_address, now);
                }
            }
            5 => {
                wire.pop_front();
            }
            6 | 7 => {
                // A replay of anything seen so far, from the peer's address or a stranger's.
                let index = usize::from(steps.next().unwrap_or(0));
                if let Some(transmit) = seen.get(index % seen.len().max(1)).cloned() {
                    let from = if step & 1 == 0 { peer_address } else { "198.18.7.7" };
                    node.receive(&transmit, from, now);
                }
            }
            8 => {
                // A seen datagram with one byte changed.
                let (index, offset, value) =
                    (steps.next().unwrap_or(0), steps.next().unwrap_or(0), steps.next().unwrap_or(0));
                if let Some(mut transmit) = seen.get(usize::from(index) % seen.len().max(1)).cloned() {
                    let at = usize::from(offset) % transmit.bytes.len().max(1);
                    if let Some(byte) = transmit.bytes.get_mut(at) {
                        *byte ^= value | 1;
                    }
                    node.receive(&transmit, peer_address, now);
                }
            }
            9 => {
                // Bytes of the input as a datagram, behind the header of a seen one.
                let len = usize::from(steps.next().unwrap_or(0));
                let mut bytes: Vec<u8> = steps.by_ref().take(len).collect();
                if let Some(seen) = seen.last() {
                    let header = seen.bytes.len().min(28).min(bytes.len());
                    bytes[..header].copy_from_slice(&seen.bytes[..header]);
                }
                let destination = SocketAddr::new(node.address.parse().unwrap(), 4500);
                node.receive(&Transmit { destination, source_port: 4500, bytes }, peer_address, now);
            }
            10 | 11 => {
                now += Duration::from_millis(u64::from(steps.next().unwrap_or(0)) * 250);
                for node in [&mut a, &mut b] {
                    node.endpoint.handle_timeout(now);
                    // What was due is done: the driver would otherwise wake again at once.
                    assert!(node.endpoint.poll_timeout().is_none_or(|at| at > now), "a deadline stays past");
                }
            }
            12 => node.endpoint.flush(0, now),
            13 => {
                if let Some(spi) = node.outbound_spi {
                    node.endpoint.rekey_child(0, spi, now);
                }
            }
            14 => node.endpoint.unknown_spi_from(0, now),
            _ => {
                // Everything in flight arrives.
                while let Some(transmit) = wire.pop_front() {
                    node.receive(&transmit, peer_address, now);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    if selector & 2 != 0 {
        let Some((seed, steps)) = rest.split_first_chunk::<8>() else { return };
        return sequence(u64::from_le_bytes(*seed), steps);
    }
    let now = Instant::now();
    let from: SocketAddr = "198.18.0.1:500".parse().unwrap();
    let Ok(mut responder) = Endpoint::new(settings("198.18.0.2", "198.18.0.1"), now) else { return };
    if selector & 1 == 0 {
        responder.handle(rest, from, 500, now);
    } else {
        let Ok(mut initiator) = Endpoint::new(settings("198.18.0.1", "198.18.0.2"), now) else { return };
        initiator.connect(0, now);
        let Some(init) = initiator.poll_transmit() else { return };
        responder.handle(&init.bytes, from, 500, now);
        let Some(response) = responder.poll_transmit() else { return };
        let mut datagram = rest.to_vec();
        if datagram.len() >= 16 && response.bytes.len() >= 16 {
            datagram[..16].copy_from_slice(&response.bytes[..16]);
        }
        responder.handle(&datagram, SocketAddr::new(from.ip(), 4500), 4500, now);
    }
    responder.handle_timeout(now + Duration::from_secs(60));
    while responder.poll_transmit().is_some() {}
    while responder.poll_event().is_some() {}
});
