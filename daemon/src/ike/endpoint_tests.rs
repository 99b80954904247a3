//! Two endpoints driven pairwise in memory with a virtual clock: every datagram one sends is
//! handed to the other (or lost, or duplicated, as a test says), and the SADB each would have is
//! modelled from the events.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mesh_config::{Cipher, DhGroup, Mode, Prf, Proposal};
use zeroize::Zeroizing;

use super::*;
use crate::esp::{trailer_len, Opener, Sealer, PLAINTEXT_OFFSET};
use crate::ike::cookie_gate::HALF_OPEN_LIMIT;
use crate::ike::rng::SeededRng;
use crate::ike::types::{ChildSaKeys, LocalError, PeerSettings};
use crate::ike::NAT_T_PORT;

const A: &str = "198.18.0.1";
const B: &str = "198.18.0.2";

fn settings(local: &str, peer: &str, psk: &str, ciphers: &[Cipher]) -> IkeSettings {
    IkeSettings {
        local: local.parse().unwrap(),
        psk: Zeroizing::new(psk.as_bytes().to_vec()),
        node_key: None,
        proposals: ciphers
            .iter()
            .map(|cipher| Proposal { cipher: *cipher, prf: Prf::HmacSha256, group: DhGroup::X25519 })
            .collect(),
        ike_lifetime: Duration::from_secs(3600),
        child_lifetime: Duration::from_secs(600),
        dpd: Duration::from_secs(10),
        force_udp_encap: true,
        esn: true,
        vxlan_port: 4790,
        peers: vec![PeerSettings { address: peer.parse().unwrap(), mode: Mode::Transport, public_keys: Vec::new() }],
    }
}

const PSK: &str = "a mesh-wide pre-shared key of 32+ bytes";
const BOTH: &[Cipher] = &[Cipher::Aes256Gcm16, Cipher::Chacha20Poly1305];

/// One node: its endpoint and the SADB its events would have built.
struct Node {
    endpoint: Endpoint,
    address: IpAddr,
    inbound: HashMap<u32, ChildSaKeys>,
    outbound: Option<ChildSaKeys>,
    failures: Vec<Failure>,
    refusals: Vec<Refusal>,
    established: usize,
}

impl Node {
    /// A node whose RNG is seeded from its address, so that every run is the same.
    fn new(settings: IkeSettings, now: Instant) -> Node {
        let seed = match settings.local {
            IpAddr::V4(address) => u64::from(u32::from(address)),
            IpAddr::V6(address) => u128::from(address) as u64,
        };
        Node::with_rng(settings, Box::new(SeededRng::new(seed)), now)
    }

    fn with_rng(settings: IkeSettings, rng: Box<dyn Rng>, now: Instant) -> Node {
        let address = settings.local;
        Node {
            endpoint: Endpoint::with_rng(settings, rng, now).unwrap(),
            address,
            inbound: HashMap::new(),
            outbound: None,
            failures: Vec::new(),
            refusals: Vec::new(),
            established: 0,
        }
    }

    fn apply_events(&mut self) {
        while let Some(event) = self.endpoint.poll_event() {
            match event {
                Event::InstallInbound { sa, .. } => {
                    assert!(self.inbound.insert(sa.spi, sa).is_none(), "inbound SPI installed twice");
                }
                Event::InstallOutbound { sa, .. } => self.outbound = Some(sa),
                Event::RemoveInbound { spi, .. } => {
                    self.inbound.remove(&spi);
                }
                Event::RemoveOutbound { spi, .. } => {
                    if self.outbound.as_ref().is_some_and(|o| o.spi == spi) {
                        self.outbound = None;
                    }
                }
                Event::Established { .. } => self.established += 1,
                Event::Failed { failure, .. } => self.failures.push(failure),
                Event::Refused { refusal, .. } => self.refusals.push(refusal),
            }
        }
    }

    fn established_sas(&self, now: Instant) -> Vec<IkeSaStatus> {
        self.endpoint.status(now).into_iter().filter(|s| s.state == IkeState::Established).collect()
    }
}

/// What happens to a datagram on the way.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Deliver,
    Lose,
    Duplicate,
}

struct Pair {
    a: Node,
    b: Node,
    now: Instant,
}

impl Pair {
    fn new(a: IkeSettings, b: IkeSettings) -> Pair {
        let now = Instant::now();
        Pair { a: Node::new(a, now), b: Node::new(b, now), now }
    }

    fn standard() -> Pair {
        Pair::new(settings(A, B, PSK, BOTH), settings(B, A, PSK, BOTH))
    }

    /// Moves datagrams both ways until none is left; `fate` decides each one's fate.
    fn pump(&mut self, fate: &mut dyn FnMut(&Transmit) -> Fate) {
        for _ in 0..1000 {
            let mut moved = false;
            for from_a in [true, false] {
                let (sender, receiver) = if from_a { (&mut self.a, &mut self.b) } else { (&mut self.b, &mut self.a) };
                while let Some(transmit) = sender.endpoint.poll_transmit() {
                    moved = true;
                    assert_eq!(transmit.destination.ip(), receiver.address);
                    let from = SocketAddr::new(sender.address, transmit.source_port);
                    let copies = match fate(&transmit) {
                        Fate::Deliver => 1,
                        Fate::Lose => 0,
                        Fate::Duplicate => 2,
                    };
                    for _ in 0..copies {
                        receiver.endpoint.handle(&transmit.bytes, from, transmit.destination.port(), self.now);
                    }
                }
            }
            self.a.apply_events();
            self.b.apply_events();
            if !moved {
                return;
            }
        }
        panic!("the endpoints never stop talking");
    }

    /// Advances the clock in steps, firing timers and moving datagrams.
    fn run_for(&mut self, duration: Duration, fate: &mut dyn FnMut(&Transmit) -> Fate) {
        let end = self.now + duration;
        loop {
            self.a.endpoint.handle_timeout(self.now);
            self.b.endpoint.handle_timeout(self.now);
            self.pump(fate);
            if self.now >= end {
                return;
            }
            let next = [self.a.endpoint.poll_timeout(), self.b.endpoint.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(end)
                .clamp(self.now + Duration::from_millis(10), end);
            self.now = next;
        }
    }

    fn run(&mut self, duration: Duration) {
        self.run_for(duration, &mut |_| Fate::Deliver);
    }

    /// Exactly one IKE SA and one Child SA pair, and each side's outbound SA is the other's
    /// inbound SA with the same key.
    fn assert_one_pair(&self) {
        let (a_sas, b_sas) = (self.a.established_sas(self.now), self.b.established_sas(self.now));
        assert_eq!(a_sas.len(), 1, "A: {a_sas:#?}");
        assert_eq!(b_sas.len(), 1, "B: {b_sas:#?}");
        assert_eq!(a_sas[0].children.len(), 1, "A: {a_sas:#?}");
        assert_eq!(b_sas[0].children.len(), 1, "B: {b_sas:#?}");
        assert_eq!((a_sas[0].initiator_spi, a_sas[0].responder_spi), (b_sas[0].initiator_spi, b_sas[0].responder_spi));
        for (sender, receiver) in [(&self.a, &self.b), (&self.b, &self.a)] {
            let outbound = sender.outbound.as_ref().expect("an outbound SA");
            let inbound = receiver.inbound.get(&outbound.spi).expect("the peer has our outbound SPI as inbound");
            assert_eq!((outbound.cipher, outbound.esn, outbound.mode), (inbound.cipher, inbound.esn, inbound.mode));
            assert_keys_match(outbound, inbound);
        }
        let (a_child, b_child) = (a_sas[0].children[0], b_sas[0].children[0]);
        assert_eq!((a_child.0, a_child.1), (b_child.1, b_child.0), "Child SA SPIs cross over");
    }
}

/// A packet sealed with the sender's key opens with the receiver's.
fn assert_keys_match(outbound: &ChildSaKeys, inbound: &ChildSaKeys) {
    let sealer = Sealer::new(outbound.cipher, &outbound.key).unwrap();
    let opener = Opener::new(inbound.cipher, &inbound.key).unwrap();
    let payload = b"vxlan frame";
    let mut buf = vec![0u8; PLAINTEXT_OFFSET + payload.len() + trailer_len(payload.len())];
    buf[PLAINTEXT_OFFSET..PLAINTEXT_OFFSET + payload.len()].copy_from_slice(payload);
    let len = sealer.seal(outbound.spi, 1, outbound.esn, 17, &mut buf, payload.len()).unwrap();
    let opened = opener.open(1, inbound.esn, &mut buf[..len]).unwrap();
    assert_eq!(opened.payload, payload);
}

#[test]
fn handshake_installs_one_child_sa_pair() {
    let mut pair = Pair::standard();
    pair.run(Duration::from_secs(1));
    pair.assert_one_pair();
    let status = &pair.a.established_sas(pair.now)[0];
    assert!(status.we_initiated, "the lower address initiates");
    assert_eq!(status.cipher, Some(Cipher::Aes256Gcm16));
    assert!(!status.nat_detected, "no NAT here");
    assert!(status.udp_encap, "encap = udp floats to 4500");
    assert_eq!(status.remote.port(), NAT_T_PORT);
    let outbound = pair.a.outbound.as_ref().unwrap();
    assert_eq!(
        (outbound.mode, outbound.esn, outbound.remote),
        (Mode::Transport, true, "198.18.0.2:4500".parse().unwrap())
    );
    assert_eq!((pair.a.established, pair.b.established), (1, 1));
}

#[test]
fn without_forced_encapsulation_and_nat_ike_stays_on_500() {
    let mut a = settings(A, B, PSK, BOTH);
    let mut b = settings(B, A, PSK, BOTH);
    a.force_udp_encap = false;
    b.force_udp_encap = false;
    let mut pair = Pair::new(a, b);
    pair.run(Duration::from_secs(1));
    pair.assert_one_pair();
    let status = &pair.a.established_sas(pair.now)[0];
    assert!(!status.nat_detected && !status.udp_encap);
    assert_eq!(status.remote.port(), IKE_PORT);
}

#[test]
fn lost_messages_are_retransmitted() {
    let mut pair = Pair::standard();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    // Every distinct datagram is lost the first time it is sent.
    pair.run_for(Duration::from_secs(10), &mut |t| {
        if seen.contains(&t.bytes) {
            Fate::Deliver
        } else {
            seen.push(t.bytes.clone());
            Fate::Lose
        }
    });
    pair.assert_one_pair();
}

#[test]
fn duplicated_messages_are_answered_from_the_cache() {
    let mut pair = Pair::standard();
    pair.run_for(Duration::from_secs(2), &mut |_| Fate::Duplicate);
    pair.assert_one_pair();
    assert_eq!((pair.a.established, pair.b.established), (1, 1));
}

#[test]
fn simultaneous_initiation_ends_with_one_ike_sa() {
    let mut pair = Pair::standard();
    let now = pair.now;
    pair.a.endpoint.connect(0, now);
    pair.b.endpoint.connect(0, now);
    pair.run(Duration::from_secs(10));
    pair.assert_one_pair();
    let winner = &pair.b.established_sas(pair.now)[0];
    assert!(!winner.we_initiated, "the IKE SA initiated by the lower address wins");
}

#[test]
fn wrong_psk_fails_on_both_sides_with_authentication_failed() {
    let mut pair =
        Pair::new(settings(A, B, PSK, BOTH), settings(B, A, "another pre-shared key, also long enough", BOTH));
    pair.run(Duration::from_secs(1));
    assert!(pair.a.failures.contains(&Failure::Authentication { peer_said: true }), "{:?}", pair.a.failures);
    assert!(pair.b.failures.contains(&Failure::Authentication { peer_said: false }), "{:?}", pair.b.failures);
    assert!(pair.a.inbound.is_empty() && pair.a.outbound.is_none());
    assert!(pair.b.inbound.is_empty() && pair.b.outbound.is_none());
    assert!(pair.a.established_sas(pair.now).is_empty() && pair.b.established_sas(pair.now).is_empty());
}

#[test]
fn no_common_proposal_is_reported() {
    let mut pair =
        Pair::new(settings(A, B, PSK, &[Cipher::Aes256Gcm16]), settings(B, A, PSK, &[Cipher::Chacha20Poly1305]));
    pair.run(Duration::from_secs(1));
    assert!(pair.a.failures.contains(&Failure::NoProposalChosen { peer_said: true }), "{:?}", pair.a.failures);
    assert!(pair.b.failures.contains(&Failure::NoProposalChosen { peer_said: false }), "{:?}", pair.b.failures);
    assert!(pair.a.outbound.is_none());
}

#[test]
fn child_sas_are_rekeyed_before_expiry_without_a_gap() {
    let mut pair = Pair::standard();
    pair.run(Duration::from_secs(1));
    let first = pair.a.outbound.as_ref().unwrap().spi;
    // Past the rekey point (at most 80% of 600 s), and the inbound grace period.
    pair.run(Duration::from_secs(500));
    pair.assert_one_pair();
    assert_ne!(pair.a.outbound.as_ref().unwrap().spi, first, "rekeyed");
    assert_eq!(pair.a.inbound.len(), 1, "old inbound SAs are gone after the grace period");
    assert_eq!(pair.b.inbound.len(), 1);
    // Many lifetimes later it is still one pair.
    pair.run(Duration::from_secs(3000));
    pair.assert_one_pair();
}

#[test]
fn the_responder_can_rekey_too() {
    let mut pair = Pair::standard();
    pair.run(Duration::from_secs(1));
    let spi = pair.b.endpoint.sas.keys().copied().next().unwrap();
    let inbound = pair.b.endpoint.sas[&spi].children.spis()[0].0;
    let now = pair.now;
    pair.b.endpoint.queue(spi, Queued::RekeyChild(inbound), now);
    pair.run(Duration::from_secs(5));
    pair.assert_one_pair();
    assert!(!pair.b.inbound.contains_key(&inbound));
}

#[test]
fn simultaneous_child_rekeys_end_with_one_child_sa() {
    let mut pair = Pair::standard();
    pair.run(Duration::from_secs(1));
    let now = pair.now;
    for node in [&mut pair.a, &mut pair.b] {
        let spi = node.endpoint.sas.keys().copied().next().unwrap();
        let inbound = node.endpoint.sas[&spi].children.spis()[0].0;
        node.endpoint.queue(spi, Queued::RekeyChild(inbound), now);
    }
    pair.run(Duration::from_secs(10));
    pair.assert_one_pair();
}

#[test]
fn the_ike_sa_is_rekeyed_and_keeps_its_child_sa() {
    let mut a = settings(A, B, PSK, BOTH);
    let mut b = settings(B, A, PSK, BOTH);
    a.ike_lifetime = Duration::from_secs(100);
    b.ike_lifetime = Duration::from_secs(100);
    let mut pair = Pair::new(a, b);
    pair.run(Duration::from_secs(1));
    let before = pair.a.established_sas(pair.now)[0].initiator_spi;
    pair.run(Duration::from_secs(90));
    pair.assert_one_pair();
    assert_ne!(pair.a.established_sas(pair.now)[0].initiator_spi, before);
    // And liveness still works on the new one.
    pair.run(Duration::from_secs(60));
    pair.assert_one_pair();
}

#[test]
fn a_dead_peer_is_noticed_and_the_sas_removed() {
    let mut pair = Pair::standard();
    pair.run(Duration::from_secs(1));
    // The path dies. Within 3 liveness intervals both notice and remove their SAs.
    pair.run_for(Duration::from_secs(30), &mut |_| Fate::Lose);
    for node in [&pair.a, &pair.b] {
        assert!(node.failures.contains(&Failure::Timeout), "{:?}", node.failures);
        assert!(node.outbound.is_none() && node.inbound.is_empty());
    }
    // When it comes back, so do the SAs.
    pair.run(Duration::from_secs(10));
    pair.assert_one_pair();
}

#[test]
fn a_restarted_peer_is_back_with_initial_contact() {
    let mut pair = Pair::standard();
    pair.run(Duration::from_secs(1));
    // B restarts: all its state is gone; it initiates (after its delay) with INITIAL_CONTACT.
    let now = pair.now;
    pair.b = Node::new(settings(B, A, PSK, BOTH), now);
    pair.b.endpoint.unknown_spi_from(0, now);
    pair.run(Duration::from_secs(5));
    pair.assert_one_pair();
}

#[test]
fn flush_deletes_on_both_sides_and_renegotiates() {
    let mut pair = Pair::standard();
    pair.run(Duration::from_secs(1));
    let old = pair.a.outbound.as_ref().unwrap().spi;
    let now = pair.now;
    pair.a.endpoint.flush(0, now);
    pair.run(Duration::from_secs(5));
    pair.assert_one_pair();
    assert_ne!(pair.a.outbound.as_ref().unwrap().spi, old);
    assert!(!pair.b.inbound.contains_key(&old));
}

#[test]
fn past_the_half_open_cap_a_cookie_is_demanded_and_honoured() {
    let mut pair = Pair::standard();
    let now = pair.now;
    // Flood B with IKE_SA_INIT requests from initiators that never come back.
    for i in 0..HALF_OPEN_LIMIT {
        let mut stranger = Endpoint::new(settings("198.18.9.1", B, PSK, BOTH), now).unwrap();
        stranger.connect(0, now);
        let init = stranger.poll_transmit().unwrap();
        let from = SocketAddr::new(format!("198.18.9.{}", i % 250 + 1).parse().unwrap(), 500);
        pair.b.endpoint.handle(&init.bytes, from, 500, now);
        while pair.b.endpoint.poll_transmit().is_some() {}
    }
    pair.run(Duration::from_secs(2));
    assert!(pair.b.endpoint.counters().cookies_sent >= 1, "B demanded a cookie");
    pair.assert_one_pair();
}

#[test]
fn a_child_sa_running_out_of_sequence_numbers_is_rekeyed_on_request() {
    let mut pair = Pair::standard();
    pair.run(Duration::from_secs(1));
    let old = pair.b.outbound.as_ref().unwrap().spi;
    let now = pair.now;
    pair.b.endpoint.rekey_child(0, old, now);
    pair.run(Duration::from_secs(5));
    pair.assert_one_pair();
    assert_ne!(pair.b.outbound.as_ref().unwrap().spi, old);
}

#[test]
fn garbage_is_counted_not_fatal() {
    let mut pair = Pair::standard();
    pair.run(Duration::from_secs(1));
    let from: SocketAddr = "198.18.0.2:4500".parse().unwrap();
    let now = pair.now;
    pair.a.endpoint.handle(&[0u8; 10], from, 4500, now);
    let mut another = Endpoint::new(settings(A, B, PSK, BOTH), now).unwrap();
    another.connect(0, now);
    let mut forged = another.poll_transmit().unwrap().bytes;
    forged[20] ^= 0xff;
    pair.a.endpoint.handle(&forged, from, 4500, now);
    let counters = pair.a.endpoint.counters();
    assert!(counters.malformed + counters.unknown_spi >= 1);
    pair.a.apply_events();
    assert_eq!(pair.a.refusals.first(), Some(&Refusal::Malformed), "the driver is told why: {:?}", pair.a.refusals);
    pair.run(Duration::from_secs(1));
    pair.assert_one_pair();
}

#[test]
fn a_peer_removed_by_a_reload_is_told_and_never_negotiated_with_again() {
    let mut pair = Pair::standard();
    pair.run(Duration::from_secs(1));
    let now = pair.now;
    pair.a.endpoint.remove_peer(0, now);
    pair.run(Duration::from_secs(60));
    assert!(pair.a.outbound.is_none() && pair.a.inbound.is_empty(), "A keeps SAs with the removed peer");
    assert!(pair.b.outbound.is_none() && pair.b.inbound.is_empty(), "B was not told");
    assert!(pair.a.established_sas(pair.now).is_empty(), "A negotiated with the removed peer again");
    assert!(pair.b.established_sas(pair.now).is_empty());
}

#[test]
fn a_peer_added_by_a_reload_is_negotiated_with() {
    let mut alone = settings(A, B, PSK, BOTH);
    let b_settings = alone.peers.remove(0);
    let mut pair = Pair::new(alone, settings(B, A, PSK, BOTH));
    pair.run(Duration::from_secs(10));
    assert!(pair.a.established_sas(pair.now).is_empty(), "A knows no peer yet");
    let now = pair.now;
    assert_eq!(pair.a.endpoint.add_peer(b_settings, now), 0);
    pair.run(Duration::from_secs(10));
    pair.assert_one_pair();
}

#[test]
fn a_reconfigured_psk_is_used_from_the_next_negotiation_on() {
    const OTHER: &str = "another pre-shared key, also of 32+ bytes";
    let mut pair = Pair::new(settings(A, B, PSK, BOTH), settings(B, A, OTHER, BOTH));
    pair.run(Duration::from_secs(2));
    assert!(pair.a.established_sas(pair.now).is_empty());
    pair.a.endpoint.reconfigure(settings(A, "198.18.0.99", OTHER, BOTH));
    let now = pair.now;
    pair.a.endpoint.flush(0, now);
    pair.run(Duration::from_secs(10));
    pair.assert_one_pair();
}

/// An RNG that hands out scripted nonces (32-byte draws) while the script lasts, seeded bytes
/// otherwise, and fails every draw once `failing` is set.
struct TestRng {
    nonces: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<[u8; 32]>>>,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seeded: SeededRng,
}

impl TestRng {
    fn new(seed: u64) -> TestRng {
        TestRng { nonces: Default::default(), failing: Default::default(), seeded: SeededRng::new(seed) }
    }
}

impl Rng for TestRng {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), RngError> {
        if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(RngError);
        }
        let scripted = if dest.len() == 32 { self.nonces.lock().unwrap().pop_front() } else { None };
        match scripted {
            Some(nonce) => dest.copy_from_slice(&nonce),
            None => self.seeded.fill(dest)?,
        }
        Ok(())
    }
}

use crate::ike::rng::RngError;
use crate::ike::window::Purpose;

/// The inbound SPI our outstanding Child SA rekey offers.
fn offered_inbound_spi(node: &Node) -> u32 {
    let sa = node.endpoint.sas.values().next().unwrap();
    match sa.window.outstanding() {
        Some(Purpose::RekeyChild { new_inbound_spi, .. }) => *new_inbound_spi,
        _ => panic!("no Child SA rekey outstanding"),
    }
}

/// Both nodes rekey the Child SA at once with scripted nonces; returns the inbound SPIs A and
/// B offered, and the Child SA pair (A's inbound, A's outbound) that is left.
fn crossed_rekeys(a_nonces: [[u8; 32]; 2], b_nonces: [[u8; 32]; 2]) -> (u32, u32, (u32, u32)) {
    let (a_rng, b_rng) = (TestRng::new(1), TestRng::new(2));
    let (a_script, b_script) = (a_rng.nonces.clone(), b_rng.nonces.clone());
    let now = Instant::now();
    let mut pair = Pair {
        a: Node::with_rng(settings(A, B, PSK, BOTH), Box::new(a_rng), now),
        b: Node::with_rng(settings(B, A, PSK, BOTH), Box::new(b_rng), now),
        now,
    };
    pair.run(Duration::from_secs(1));
    pair.assert_one_pair();
    // Each node draws its request's Ni first, then the Nr of its answer to the other's request.
    a_script.lock().unwrap().extend(a_nonces);
    b_script.lock().unwrap().extend(b_nonces);
    let now = pair.now;
    for node in [&mut pair.a, &mut pair.b] {
        let spi = node.endpoint.sas.keys().copied().next().unwrap();
        let inbound = node.endpoint.sas[&spi].children.spis()[0].0;
        node.endpoint.queue(spi, Queued::RekeyChild(inbound), now);
    }
    let (a_offered, b_offered) = (offered_inbound_spi(&pair.a), offered_inbound_spi(&pair.b));
    pair.run(Duration::from_secs(10));
    pair.assert_one_pair();
    assert!(a_script.lock().unwrap().is_empty() && b_script.lock().unwrap().is_empty(), "every nonce was used");
    (a_offered, b_offered, pair.a.established_sas(pair.now)[0].children[0])
}

#[test]
fn crossed_child_rekeys_keep_the_exchange_without_the_lowest_nonce() {
    let nonce = |byte: u8| [byte; 32];
    // A's exchange has Ni = 0x10.. (A) and Nr = 0x20.. (B); B's has Ni = 0x30.. and Nr = 0x40..:
    // the lowest nonce is in A's exchange, so B's Child SA stays.
    let (a_offered, b_offered, (a_inbound, a_outbound)) =
        crossed_rekeys([nonce(0x10), nonce(0x40)], [nonce(0x30), nonce(0x20)]);
    assert_eq!(a_outbound, b_offered, "B's new Child SA stays");
    assert_ne!(a_inbound, a_offered);
    // The same with the roles of the nonces swapped: A's Child SA stays.
    let (a_offered, b_offered, (a_inbound, a_outbound)) =
        crossed_rekeys([nonce(0x30), nonce(0x20)], [nonce(0x10), nonce(0x40)]);
    assert_eq!(a_inbound, a_offered, "A's new Child SA stays");
    assert_ne!(a_outbound, b_offered);
}

#[test]
fn a_failing_rng_fails_closed() {
    let rng = TestRng::new(1);
    let failing = rng.failing.clone();
    failing.store(true, std::sync::atomic::Ordering::Relaxed);
    let now = Instant::now();
    let mut a = Node::with_rng(settings(A, B, PSK, BOTH), Box::new(rng), now);
    a.endpoint.connect(0, now);
    a.apply_events();
    assert!(a.endpoint.poll_transmit().is_none(), "nothing is sent without fresh randomness");
    assert_eq!(a.failures, [Failure::Local(LocalError::Rng(RngError))]);
    assert!(a.failures[0].to_string().contains("random number generator failed"), "{}", a.failures[0]);
    assert!(a.endpoint.status(now).is_empty());
    assert!(a.endpoint.poll_timeout().is_some_and(|at| at > now), "a later attempt is scheduled");

    // As responder: the IKE_SA_INIT request is not answered.
    let mut stranger = Endpoint::new(settings(B, A, PSK, BOTH), now).unwrap();
    stranger.connect(0, now);
    let init = stranger.poll_transmit().unwrap();
    a.endpoint.handle(&init.bytes, SocketAddr::new(B.parse().unwrap(), 500), 500, now);
    a.apply_events();
    assert!(a.endpoint.poll_transmit().is_none());
    assert_eq!(a.failures.len(), 2, "{:?}", a.failures);
}

#[test]
fn an_rng_that_fails_later_takes_the_ike_sa_down_instead_of_rekeying_with_bad_values() {
    let rng = TestRng::new(1);
    let failing = rng.failing.clone();
    let now = Instant::now();
    let mut pair = Pair {
        a: Node::with_rng(settings(A, B, PSK, BOTH), Box::new(rng), now),
        b: Node::new(settings(B, A, PSK, BOTH), now),
        now,
    };
    pair.run(Duration::from_secs(1));
    pair.assert_one_pair();
    failing.store(true, std::sync::atomic::Ordering::Relaxed);
    let outbound = pair.a.outbound.as_ref().unwrap().spi;
    let now = pair.now;
    pair.a.endpoint.rekey_child(0, outbound, now);
    pair.a.apply_events();
    assert_eq!(pair.a.failures, [Failure::Local(LocalError::Rng(RngError))]);
    assert!(pair.a.outbound.is_none() && pair.a.inbound.is_empty(), "A's SAs are removed");
    assert!(pair.a.endpoint.poll_transmit().is_none());
}

/// Runs A's handshake with B until B's answer to `exchange_type`, which is lost; returns the pair.
fn handshake_until_answer_to(exchange_type: u8) -> Pair {
    let mut pair = Pair::standard();
    let now = pair.now;
    pair.a.endpoint.connect(0, now);
    pair.pump(&mut |t| {
        if t.destination.ip() == A.parse::<IpAddr>().unwrap() && t.bytes[18] == exchange_type {
            Fate::Lose
        } else {
            Fate::Deliver
        }
    });
    pair
}

#[test]
fn an_error_notify_answering_ike_sa_init_is_reported_as_such() {
    let mut pair = handshake_until_answer_to(exchange::IKE_SA_INIT);
    let our_spi = *pair.a.endpoint.connecting.keys().next().unwrap();
    let header = Header {
        initiator_spi: our_spi,
        responder_spi: 0,
        exchange_type: exchange::IKE_SA_INIT,
        initiator: false,
        response: true,
        message_id: 0,
    };
    let refusal = crate::ike::message::encode_message(
        &header,
        &[Payload::Notify(Notify::new(notify::INVALID_SYNTAX, Vec::new()))],
    );
    let now = pair.now;
    pair.a.endpoint.handle(&refusal, "198.18.0.2:500".parse().unwrap(), 500, now);
    pair.a.apply_events();
    assert_eq!(pair.a.failures, [Failure::PeerError { notify: notify::INVALID_SYNTAX }]);
    assert!(pair.a.failures[0].to_string().starts_with("INVALID_SYNTAX: the peer refused"), "{}", pair.a.failures[0]);
}

#[test]
fn an_error_notify_answering_ike_auth_is_reported_as_such() {
    for (notify_type, failure) in [
        (notify::INVALID_SYNTAX, Failure::PeerError { notify: notify::INVALID_SYNTAX }),
        (notify::TS_UNACCEPTABLE, Failure::TrafficSelectors),
        (notify::AUTHENTICATION_FAILED, Failure::Authentication { peer_said: true }),
    ] {
        let mut pair = handshake_until_answer_to(exchange::IKE_AUTH);
        // B's answer is replaced by a refusal sealed with B's keys of the IKE SA.
        let b_sa = pair.b.endpoint.sas.values_mut().next().unwrap();
        let refusal = b_sa
            .encrypt(exchange::IKE_AUTH, true, 1, &[Payload::Notify(Notify::new(notify_type, Vec::new()))])
            .unwrap();
        let now = pair.now;
        pair.a.endpoint.handle(&refusal, "198.18.0.2:4500".parse().unwrap(), 4500, now);
        pair.a.apply_events();
        assert_eq!(pair.a.failures, [failure], "for notify {notify_type}");
        assert!(pair.a.endpoint.status(now).is_empty());
    }
}

/// Issue 14: a request with the highest message ID made `message_id + 1` overflow (a panic in
/// debug builds). It is refused now.
#[test]
fn a_request_with_the_highest_message_id_is_refused() {
    let mut pair = Pair::standard();
    pair.run(Duration::from_secs(1));
    let a_sa = pair.a.endpoint.sas.values_mut().next().unwrap();
    let request = a_sa.encrypt(exchange::INFORMATIONAL, false, u32::MAX, &[]).unwrap();
    let now = pair.now;
    pair.b.endpoint.handle(&request, "198.18.0.1:4500".parse().unwrap(), 4500, now);
    pair.b.apply_events();
    assert_eq!(pair.b.refusals, [Refusal::Unexpected]);
    assert!(pair.b.endpoint.poll_transmit().is_none(), "not answered");
    pair.run(Duration::from_secs(30));
    pair.assert_one_pair();
}

/// A's meshd is upgraded (`crate::upgrade`): its endpoint hands the IKE SA over (serialised, as
/// it crosses the handover socket) to a new endpoint with `settings`, together with the SADB.
fn upgrade_a(pair: &mut Pair, settings: IkeSettings) -> usize {
    let handover = pair.a.endpoint.hand_over(pair.now);
    let wire = serde_json::to_vec(&handover).unwrap();
    let mut successor = Node::with_rng(settings, Box::new(SeededRng::new(7)), pair.now);
    successor.inbound = std::mem::take(&mut pair.a.inbound);
    successor.outbound = pair.a.outbound.take();
    let handover: IkeHandover = serde_json::from_slice(&wire).unwrap();
    let taken = successor.endpoint.take_over(&handover, pair.now).unwrap();
    let old = std::mem::replace(&mut pair.a, successor);
    // The old endpoint says nothing more, whatever its timers say.
    let mut old = old.endpoint;
    old.handle_timeout(pair.now + Duration::from_secs(600));
    assert!(old.poll_transmit().is_none(), "the old endpoint sends nothing after the handover");
    taken
}

#[test]
fn an_ike_sa_handed_over_carries_on_and_the_peer_notices_nothing() {
    let mut pair = Pair::standard();
    pair.run(Duration::from_secs(1));
    let before = pair.a.established_sas(pair.now);
    assert_eq!(upgrade_a(&mut pair, settings(A, B, PSK, BOTH)), 1);
    let after = pair.a.established_sas(pair.now);
    assert_eq!(
        (after[0].initiator_spi, after[0].responder_spi, &after[0].children),
        (before[0].initiator_spi, before[0].responder_spi, &before[0].children),
        "the same IKE SA and Child SA"
    );
    // Liveness checks, Child SA rekeys and IKE SA rekeys go on with the new endpoint.
    pair.run(Duration::from_secs(5000));
    pair.assert_one_pair();
    assert!(pair.a.failures.is_empty() && pair.b.failures.is_empty(), "{:?} {:?}", pair.a.failures, pair.b.failures);
    assert!(pair.b.refusals.is_empty(), "B refused nothing: {:?}", pair.b.refusals);
    let now = pair.now;
    assert_ne!(pair.a.established_sas(now)[0].initiator_spi, before[0].initiator_spi, "the IKE SA was rekeyed");
}

#[test]
fn an_ike_sa_with_an_exchange_under_way_stays_behind() {
    let mut pair = Pair::standard();
    pair.run(Duration::from_secs(1));
    let spi = pair.a.endpoint.sas.keys().copied().next().unwrap();
    let now = pair.now;
    pair.a.endpoint.queue(spi, Queued::Liveness, now);
    let handover = pair.a.endpoint.hand_over(now);
    assert_eq!(handover.len(), 0, "a request is outstanding");
    // The new meshd has the Child SA without its IKE SA: its inbound half goes after a while.
    let inbound = *pair.a.inbound.keys().next().unwrap();
    assert!(!handover.owns_inbound(inbound));
    let mut successor = Node::with_rng(settings(A, B, PSK, BOTH), Box::new(SeededRng::new(7)), now);
    successor.inbound = std::mem::take(&mut pair.a.inbound);
    successor.endpoint.take_over(&handover, now).unwrap();
    successor.endpoint.retire_inbound(0, inbound, now + Duration::from_secs(30));
    successor.endpoint.handle_timeout(now + Duration::from_secs(29));
    successor.apply_events();
    assert!(successor.inbound.contains_key(&inbound), "it carries traffic meanwhile");
    successor.endpoint.handle_timeout(now + Duration::from_secs(31));
    successor.apply_events();
    assert!(!successor.inbound.contains_key(&inbound), "then it goes");
}

// ----- identities (ike::identity) -----

/// Settings of a node that signs with `own` and knows the peer by `peer_keys`; no psk_file.
fn keyed(
    local: &str,
    peer: &str,
    own: &std::sync::Arc<crate::ike::crypto::NodeKey>,
    peer_keys: &[mesh_config::PublicKey],
) -> IkeSettings {
    let mut settings = settings(local, peer, "", BOTH);
    settings.node_key = Some(own.clone());
    settings.peers[0].public_keys = peer_keys.to_vec();
    settings
}

fn new_key() -> std::sync::Arc<crate::ike::crypto::NodeKey> {
    std::sync::Arc::new(crate::ike::crypto::NodeKey::generate().unwrap())
}

fn peer_auth_of(node: &Node, now: Instant) -> Option<crate::ike::identity::PeerAuth> {
    node.established_sas(now).first().and_then(|sa| sa.peer_auth)
}

#[test]
fn nodes_with_keys_authenticate_with_ed25519_signatures() {
    use crate::ike::identity::{AuthMethod, PeerAuth};
    let (key_a, key_b) = (new_key(), new_key());
    let mut pair = Pair::new(keyed(A, B, &key_a, &[key_b.public_key()]), keyed(B, A, &key_b, &[key_a.public_key()]));
    pair.run(Duration::from_secs(1));
    pair.assert_one_pair();
    let signed =
        |key: &crate::ike::crypto::NodeKey| Some(PeerAuth { method: AuthMethod::Ed25519, key: Some(key.public_key()) });
    assert_eq!(peer_auth_of(&pair.a, pair.now), signed(&key_b));
    assert_eq!(peer_auth_of(&pair.b, pair.now), signed(&key_a));
    // A rotation: B lists A's old and new key; A signs with the new one.
    let new_a = new_key();
    let mut pair = Pair::new(
        keyed(A, B, &new_a, &[key_b.public_key()]),
        keyed(B, A, &key_b, &[key_a.public_key(), new_a.public_key()]),
    );
    pair.run(Duration::from_secs(1));
    pair.assert_one_pair();
    assert_eq!(peer_auth_of(&pair.b, pair.now), signed(&new_a));
}

#[test]
fn a_node_signing_with_a_key_that_is_not_its_own_is_refused() {
    use crate::ike::identity::IdentityFailure;
    let (key_a, key_b, key_c) = (new_key(), new_key(), new_key());
    // B signs with C's key: A verifies with B's key and refuses, whoever initiates.
    let mut pair = Pair::new(keyed(A, B, &key_a, &[key_b.public_key()]), keyed(B, A, &key_c, &[key_a.public_key()]));
    pair.run(Duration::from_secs(5));
    let refused = Failure::Identity(IdentityFailure::SignatureMismatch { node: B.parse().unwrap() });
    assert!(pair.a.failures.contains(&refused), "{:?}", pair.a.failures);
    assert!(pair.a.established_sas(pair.now).is_empty() && pair.a.outbound.is_none());
    assert!(refused.to_string().contains("does not verify with its public key"), "{refused}");
    // A initiated: B, the responder, learns it was refused and keeps nothing either.
    assert!(pair.b.failures.contains(&Failure::Authentication { peer_said: true }), "{:?}", pair.b.failures);
    assert!(pair.b.established_sas(pair.now).is_empty() && pair.b.outbound.is_none() && pair.b.inbound.is_empty());
}

#[test]
fn a_node_cannot_pass_as_another_from_its_own_address() {
    use crate::ike::identity::IdentityFailure;
    // N knows B and C. B holds C's stolen key and claims C's identity from B's own address.
    const N: &str = "198.18.0.9";
    const C: &str = "198.18.0.3";
    let (key_n, key_b, key_c) = (new_key(), new_key(), new_key());
    let mut n = keyed(N, B, &key_n, &[key_b.public_key()]);
    n.peers.push(PeerSettings {
        address: C.parse().unwrap(),
        mode: Mode::Transport,
        public_keys: vec![key_c.public_key()],
    });
    let mut pair = Pair::new(n, keyed(C, N, &key_c, &[key_n.public_key()]));
    pair.b.address = B.parse().unwrap();
    // N, the higher address, waits 3 s before it initiates (to B and C, which are not here).
    pair.run(Duration::from_secs(2));
    let refused =
        Failure::Identity(IdentityFailure::NotFromItsAddress { node: C.parse().unwrap(), source: B.parse().unwrap() });
    assert!(pair.a.failures.contains(&refused), "{:?}", pair.a.failures);
    assert!(pair.a.established_sas(pair.now).is_empty());
    assert!(refused.to_string().contains("impersonation"), "{refused}");
}

#[test]
fn the_pre_shared_key_is_accepted_from_a_keyed_node_only_while_there_is_a_psk_file() {
    use crate::ike::identity::{AuthMethod, IdentityFailure, PeerAuth};
    let (key_a, key_b) = (new_key(), new_key());
    // B still runs the old mesh file: no keys, the PSK. A has the new one without psk_file.
    let mut pair = Pair::new(keyed(A, B, &key_a, &[key_b.public_key()]), settings(B, A, PSK, BOTH));
    pair.run(Duration::from_secs(5));
    let refused = Failure::Identity(IdentityFailure::SignatureRequired { node: B.parse().unwrap() });
    assert!(pair.a.failures.contains(&refused), "{:?}", pair.a.failures);
    assert!(pair.a.established_sas(pair.now).is_empty());
    // During the migration A's file keeps psk_file: B's PSK is accepted, and A uses it too
    // (B did not announce signatures).
    let mut a = keyed(A, B, &key_a, &[key_b.public_key()]);
    a.psk = Zeroizing::new(PSK.as_bytes().to_vec());
    let mut pair = Pair::new(a, settings(B, A, PSK, BOTH));
    pair.run(Duration::from_secs(1));
    pair.assert_one_pair();
    assert_eq!(peer_auth_of(&pair.a, pair.now), Some(PeerAuth { method: AuthMethod::SharedKey, key: None }));
    // A responder answers a PSK AUTH with the PSK: the initiator does not know its key.
    let mut b = keyed(B, A, &key_b, &[key_a.public_key()]);
    b.psk = Zeroizing::new(PSK.as_bytes().to_vec());
    let mut a = keyed(A, B, &key_a, &[]);
    a.psk = Zeroizing::new(PSK.as_bytes().to_vec());
    let mut pair = Pair::new(a, b);
    pair.run(Duration::from_secs(1));
    pair.assert_one_pair();
    assert_eq!(peer_auth_of(&pair.a, pair.now).map(|auth| auth.method), Some(AuthMethod::SharedKey));
}

#[test]
fn an_ike_sa_handed_over_keeps_how_the_peer_authenticated() {
    let (key_a, key_b) = (new_key(), new_key());
    let mut pair = Pair::new(keyed(A, B, &key_a, &[key_b.public_key()]), keyed(B, A, &key_b, &[key_a.public_key()]));
    pair.run(Duration::from_secs(1));
    let before = peer_auth_of(&pair.a, pair.now);
    assert!(before.is_some_and(|auth| auth.key == Some(key_b.public_key())), "{before:?}");
    assert_eq!(upgrade_a(&mut pair, keyed(A, B, &key_a, &[key_b.public_key()])), 1);
    assert_eq!(peer_auth_of(&pair.a, pair.now), before, "ikectl sa list shows the same");
    pair.run(Duration::from_secs(60));
    pair.assert_one_pair();
    assert!(pair.a.failures.is_empty() && pair.b.failures.is_empty(), "{:?} {:?}", pair.a.failures, pair.b.failures);
}
