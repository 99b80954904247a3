//! Two endpoints driven pairwise in memory with a virtual clock: every datagram one sends is
//! handed to the other (or lost, or duplicated, as a test says), and the SADB each would have is
//! modelled from the events.

use std::collections::{HashMap, HashSet};
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
    /// Each outbound SA installed: its SPI and whether the peer had its inbound half by then.
    outbound_installs: Vec<(u32, bool)>,
    /// Every inbound SPI ever installed (a collision's loser may be gone again).
    inbound_ever: HashSet<u32>,
    /// Each inbound SPI announced as offered (`Event::ExpectInbound`), in order, and whether it
    /// was installed already at the time.
    expected: Vec<(u32, bool)>,
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
            outbound_installs: Vec::new(),
            inbound_ever: HashSet::new(),
            expected: Vec::new(),
        }
    }

    fn apply_events(&mut self) {
        while let Some(event) = self.endpoint.poll_event() {
            match event {
                Event::InstallInbound { sa, .. } => {
                    self.inbound_ever.insert(sa.spi);
                    assert!(self.inbound.insert(sa.spi, sa).is_none(), "inbound SPI installed twice");
                }
                Event::InstallOutbound { sa, peer_has_inbound, .. } => {
                    self.outbound_installs.push((sa.spi, peer_has_inbound));
                    self.outbound = Some(sa);
                }
                Event::ExpectInbound { spi, .. } => self.expected.push((spi, self.inbound_ever.contains(&spi))),
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
            self.a.apply_events();
            self.b.apply_events();
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
                        // As the driver does: the SADB changes first, then the datagrams.
                        let installed_before = receiver.outbound_installs.len();
                        receiver.apply_events();
                        for (spi, peer_has_inbound) in &receiver.outbound_installs[installed_before..] {
                            assert!(
                                !peer_has_inbound || sender.inbound_ever.contains(spi),
                                "told that the peer has inbound SA {spi:#x}, which it has not installed"
                            );
                        }
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
    let (a_outbound, b_outbound) = (pair.a.outbound.as_ref().unwrap().spi, pair.b.outbound.as_ref().unwrap().spi);
    assert_eq!(pair.a.outbound_installs, [(a_outbound, true)], "B answered after installing its inbound SA");
    assert_eq!(pair.b.outbound_installs, [(b_outbound, false)], "A installs its inbound SA when B's answer arrives");
}

#[test]
fn the_spis_a_node_offers_are_expected_before_they_are_installed() {
    let mut pair = Pair::standard();
    pair.run(Duration::from_secs(1));
    let a_inbound: Vec<u32> = pair.a.inbound.keys().copied().collect();
    assert_eq!(pair.a.expected, [(a_inbound[0], false)], "the initiator's IKE_AUTH offer, before B's answer");
    assert_eq!(pair.b.expected, [], "a responder installs what it answers at once");
    // A Child SA rekey A starts offers a new SPI too (the rekey point is at most 80% of 600 s).
    pair.run(Duration::from_secs(500));
    pair.assert_one_pair();
    let rekeyer = if pair.a.expected.len() > 1 { &pair.a } else { &pair.b };
    assert_eq!(rekeyer.expected.len(), 2, "one rekey offer: A {:?}, B {:?}", pair.a.expected, pair.b.expected);
    let (spi, installed_then) = rekeyer.expected[1];
    assert!(!installed_then && rekeyer.inbound.contains_key(&spi), "the rekey's new inbound SA is the one offered");
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
    // The responder only counts it: the request is not authenticated (issue 14, finding 5).
    assert!(pair.b.refusals.contains(&Refusal::NoProposal), "{:?}", pair.b.refusals);
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
fn esp_for_an_unknown_spi_is_no_reason_to_ask_an_ike_sa_that_just_spoke() {
    let mut pair = Pair::standard();
    pair.run(Duration::from_millis(500));
    pair.assert_one_pair();
    // The responder's first ESP overtook its IKE_AUTH response on the way to A's datapath: the
    // IKE SA heard from B a moment ago.
    let now = pair.now;
    pair.a.endpoint.unknown_spi_from(0, now);
    assert!(pair.a.endpoint.poll_transmit().is_none(), "no liveness check");
    // With the IKE SA silent since, the same notice asks.
    pair.a.endpoint.unknown_spi_from(0, now + Duration::from_secs(3));
    let asked = pair.a.endpoint.poll_transmit().expect("a liveness check");
    let header = Message::parse(&asked.bytes).expect("an IKE message").header;
    assert_eq!((header.exchange_type, header.response), (exchange::INFORMATIONAL, false));
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

/// Issue 14, finding 3: one authentic message captured on the wire and replayed from another
/// address (the Child SAs made meanwhile would follow it) must not move the IKE SA.
#[test]
fn a_replayed_message_from_another_address_does_not_move_the_ike_sa() {
    let mut pair = Pair::standard();
    pair.run(Duration::from_secs(1));
    let now = pair.now;
    let spi = pair.a.endpoint.sas.keys().copied().next().unwrap();
    pair.a.endpoint.queue(spi, Queued::Liveness, now);
    let captured = pair.a.endpoint.poll_transmit().unwrap();
    pair.b.endpoint.handle(&captured.bytes, "198.18.0.1:4500".parse().unwrap(), 4500, now);
    pair.pump(&mut |_| Fate::Deliver);
    let spoofed: SocketAddr = "198.18.7.7:4500".parse().unwrap();
    pair.b.endpoint.handle(&captured.bytes, spoofed, 4500, now);
    pair.b.apply_events();
    for transmit in std::iter::from_fn(|| pair.b.endpoint.poll_transmit()) {
        assert_ne!(transmit.destination, spoofed, "B answered the spoofed address");
    }
    let remote = pair.b.established_sas(pair.now)[0].remote;
    assert_eq!(remote, "198.18.0.1:4500".parse().unwrap(), "B's IKE SA followed the replay");
    pair.run(Duration::from_secs(60));
    pair.assert_one_pair();
    assert_eq!(pair.b.outbound.as_ref().unwrap().remote, "198.18.0.1:4500".parse().unwrap());
}

/// Issue 14, finding 3: without NAT in front of the peer (RFC 7296 §2.23) even a new authentic
/// request from another address does not move the IKE SA.
#[test]
fn without_nat_the_peer_address_never_follows_a_message() {
    let mut a = settings(A, B, PSK, BOTH);
    let mut b = settings(B, A, PSK, BOTH);
    a.force_udp_encap = false;
    b.force_udp_encap = false;
    let mut pair = Pair::new(a, b);
    pair.run(Duration::from_secs(1));
    pair.assert_one_pair();
    let now = pair.now;
    let spi = pair.a.endpoint.sas.keys().copied().next().unwrap();
    pair.a.endpoint.queue(spi, Queued::Liveness, now);
    let request = pair.a.endpoint.poll_transmit().unwrap();
    pair.b.endpoint.handle(&request.bytes, "198.18.7.7:500".parse().unwrap(), 500, now);
    let answer = pair.b.endpoint.poll_transmit().unwrap();
    assert_eq!(answer.destination, "198.18.0.1:500".parse().unwrap(), "answered to the peer's address");
    assert_eq!(pair.b.established_sas(now)[0].remote, "198.18.0.1:500".parse().unwrap());
}

/// Issue 14, finding 3: with the peer behind NAT, a new authentic request from a new mapping
/// moves the IKE SA (the NAT changed its mapping).
#[test]
fn behind_nat_the_peer_address_follows_a_new_authentic_request() {
    let mut pair = Pair::standard();
    pair.run(Duration::from_secs(1));
    let now = pair.now;
    let spi = pair.a.endpoint.sas.keys().copied().next().unwrap();
    pair.a.endpoint.queue(spi, Queued::Liveness, now);
    let request = pair.a.endpoint.poll_transmit().unwrap();
    let mapping: SocketAddr = "198.18.0.1:31000".parse().unwrap();
    pair.b.endpoint.handle(&request.bytes, mapping, 4500, now);
    assert_eq!(pair.b.established_sas(now)[0].remote, mapping);
}

/// Half-open responder SAs of `node`.
fn half_open(node: &Node, now: Instant) -> usize {
    node.endpoint.status(now).iter().filter(|s| s.state == IkeState::ExpectAuthRequest).count()
}

/// One IKE_SA_INIT request from `stranger` (a fresh SPI and nonce each time) to `target`, sent
/// from `from`; a COOKIE demand is met, as a determined flooder would. Returns what `target`
/// sent back to `from`.
fn flood_once(target: &mut Endpoint, stranger: &mut Endpoint, from: SocketAddr, now: Instant) -> Vec<Transmit> {
    stranger.flush(0, now);
    stranger.connect(0, now);
    let mut answers = Vec::new();
    for _ in 0..2 {
        // Only IKE_SA_INIT: the flooder does not authenticate.
        let Some(request) = stranger.poll_transmit().filter(|t| t.bytes[18] == exchange::IKE_SA_INIT) else { break };
        target.handle(&request.bytes, from, 500, now);
        while let Some(answer) = target.poll_transmit() {
            stranger.handle(&answer.bytes, SocketAddr::new(answer.destination.ip(), 500), 500, now);
            answers.push(answer);
        }
    }
    while stranger.poll_transmit().is_some() {}
    answers
}

fn stranger(now: Instant) -> Endpoint {
    Endpoint::new(settings("198.18.9.1", B, PSK, BOTH), now).unwrap()
}

/// Issue 14, finding 1: a flooder that answers cookies from one address made a half-open SA
/// (two X25519 operations and its whole request) per request, without a bound.
#[test]
fn one_flooding_address_keeps_few_half_open_sas_and_the_peer_still_gets_in() {
    let mut pair = Pair::standard();
    let now = pair.now;
    let mut flooder = stranger(now);
    let from: SocketAddr = "198.18.9.1:500".parse().unwrap();
    for _ in 0..200 {
        flood_once(&mut pair.b.endpoint, &mut flooder, from, now);
    }
    let count = half_open(&pair.b, now);
    assert!(count <= crate::ike::cookie_gate::HALF_OPEN_PER_SOURCE, "{count} half-open SAs from one address");
    pair.run(Duration::from_secs(2));
    pair.assert_one_pair();
}

/// Issue 14, finding 1: many addresses, each answering cookies, stay under the hard cap.
#[test]
fn half_open_sas_stay_under_the_hard_cap() {
    let mut pair = Pair::standard();
    let now = pair.now;
    let mut flooder = stranger(now);
    for i in 0..800usize {
        let from = SocketAddr::new(IpAddr::from([198, 18, 10 + (i / 200) as u8, (i % 200) as u8 + 1]), 500);
        flood_once(&mut pair.b.endpoint, &mut flooder, from, now);
    }
    let count = half_open(&pair.b, now);
    assert!(count <= crate::ike::cookie_gate::HALF_OPEN_HARD_LIMIT, "{count} half-open SAs");
    pair.b.apply_events();
    assert!(pair.b.failures.is_empty(), "{:?}", pair.b.failures);
    // Once the half-open SAs time out, the peer gets in.
    pair.run(Duration::from_secs(60));
    pair.assert_one_pair();
}

/// Issue 14, finding 1: an IKE_SA_INIT request is kept whole by its half-open SA; a large one
/// is refused before it costs anything.
#[test]
fn an_oversized_init_request_is_refused() {
    let now = Instant::now();
    let mut b = Node::new(settings(B, A, PSK, BOTH), now);
    let mut flooder = stranger(now);
    flooder.connect(0, now);
    let request = flooder.poll_transmit().unwrap();
    let message = crate::ike::message::Message::parse(&request.bytes).unwrap();
    let mut payloads = message.payloads.clone();
    payloads.push(Payload::Notify(Notify::new(40_000, vec![0; 4000])));
    let oversized = crate::ike::message::encode_message(&message.header, &payloads);
    b.endpoint.handle(&oversized, "198.18.9.1:500".parse().unwrap(), 500, now);
    assert!(b.endpoint.poll_transmit().is_none(), "answered");
    assert_eq!(half_open(&b, now), 0);
    b.apply_events();
    assert_eq!(b.refusals, [Refusal::Malformed]);
}

/// Issue 14, finding 4: a bare 28-byte header with the (source, SPI) of a half-open SA drew
/// the ~200-byte IKE_SA_INIT response (a reflector); now only the same request, byte for byte,
/// is answered again, and at most every half second.
#[test]
fn only_an_identical_init_request_is_answered_again_and_not_too_often() {
    let now = Instant::now();
    let mut b = Node::new(settings(B, A, PSK, BOTH), now);
    let mut flooder = stranger(now);
    let from: SocketAddr = "198.18.9.1:500".parse().unwrap();
    assert_eq!(flood_once(&mut b.endpoint, &mut flooder, from, now).len(), 1);
    flooder.flush(0, now);
    flooder.connect(0, now);
    let request = flooder.poll_transmit().unwrap();
    b.endpoint.handle(&request.bytes, from, 500, now);
    assert!(b.endpoint.poll_transmit().is_some());
    let header = crate::ike::message::Message::parse(&request.bytes).unwrap().header;
    let bare = crate::ike::message::encode_message(&header, &[]);
    assert_eq!(bare.len(), 28);
    b.endpoint.handle(&bare, from, 500, now + Duration::from_secs(1));
    assert!(b.endpoint.poll_transmit().is_none(), "a bare header was answered");
    b.endpoint.handle(&request.bytes, from, 500, now + Duration::from_millis(100));
    assert!(b.endpoint.poll_transmit().is_none(), "answered again at once");
    b.endpoint.handle(&request.bytes, from, 500, now + Duration::from_secs(1));
    assert!(b.endpoint.poll_transmit().is_some(), "a retransmission is answered");
}

/// Issue 14, finding 5: an IKE_SA_INIT with no acceptable proposal, sent from a peer's address
/// (which anyone can), set that peer's keying state to failed; unauthenticated, it is only
/// counted now.
#[test]
fn an_unauthenticated_init_request_without_a_proposal_changes_no_peer() {
    let now = Instant::now();
    let mut b = Node::new(settings(B, A, PSK, &[Cipher::Aes256Gcm16]), now);
    let mut spoofer = Endpoint::new(settings(A, B, PSK, &[Cipher::Chacha20Poly1305]), now).unwrap();
    spoofer.connect(0, now);
    let request = spoofer.poll_transmit().unwrap();
    b.endpoint.handle(&request.bytes, "198.18.0.1:500".parse().unwrap(), 500, now);
    b.apply_events();
    assert!(b.failures.is_empty(), "a peer failed on an unauthenticated message: {:?}", b.failures);
    assert_eq!(b.refusals, [Refusal::NoProposal]);
    assert_eq!(b.endpoint.counters().no_proposal, 1);
}

/// Issue 14, finding 2: with a request outstanding past the liveness interval, `poll_timeout`
/// named a time already past after `handle_timeout` had run, so the driver woke at once, again
/// and again, walking every IKE SA each time until the request was answered or given up.
#[test]
fn after_handle_timeout_the_next_timeout_is_in_the_future() {
    let mut pair = Pair::standard();
    pair.run(Duration::from_secs(1));
    let now = pair.now;
    let spi = pair.a.endpoint.sas.keys().copied().next().unwrap();
    let inbound = pair.a.endpoint.sas[&spi].children.spis()[0].0;
    pair.a.endpoint.queue(spi, Queued::RekeyChild(inbound), now);
    let mut at = now;
    while at < now + Duration::from_secs(14) {
        at += Duration::from_millis(100);
        pair.a.endpoint.handle_timeout(at);
        while pair.a.endpoint.poll_transmit().is_some() {}
        let next = pair.a.endpoint.poll_timeout();
        assert!(next.is_none_or(|next| next > at), "at +{:?}: due at once again", at - now);
    }
}

/// The duplicate IKE SA of a simultaneous initiation that loses at IKE_AUTH left its first
/// Child SA's inbound SA installed for good.
#[test]
fn a_duplicate_losing_at_ike_auth_leaves_no_inbound_sa_behind() {
    for (a_first, b_first) in [(true, true), (true, false), (false, true)] {
        let mut pair = Pair::standard();
        let now = pair.now;
        if a_first {
            pair.a.endpoint.connect(0, now);
        }
        if b_first {
            pair.b.endpoint.connect(0, now);
        }
        pair.run(Duration::from_secs(10));
        pair.assert_one_pair();
        assert_eq!(pair.a.inbound.len(), 1, "A: {:?}", pair.a.inbound.keys());
        assert_eq!(pair.b.inbound.len(), 1, "B: {:?}", pair.b.inbound.keys());
    }
}

/// A pair with scripted nonces (see [`TestRng`]), established; returns it with both scripts.
type Script = std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<[u8; 32]>>>;

fn scripted_pair(ike_lifetime: Duration) -> (Pair, Script, Script) {
    let (a_rng, b_rng) = (TestRng::new(1), TestRng::new(2));
    let (a_script, b_script) = (a_rng.nonces.clone(), b_rng.nonces.clone());
    let mut a = settings(A, B, PSK, BOTH);
    let mut b = settings(B, A, PSK, BOTH);
    a.ike_lifetime = ike_lifetime;
    b.ike_lifetime = ike_lifetime;
    let now = Instant::now();
    let mut pair = Pair { a: Node::with_rng(a, Box::new(a_rng), now), b: Node::with_rng(b, Box::new(b_rng), now), now };
    pair.run(Duration::from_secs(1));
    pair.assert_one_pair();
    (pair, a_script, b_script)
}

/// Both nodes start an IKE SA rekey at the same moment.
fn queue_ike_rekeys(pair: &mut Pair) {
    let now = pair.now;
    for node in [&mut pair.a, &mut pair.b] {
        let spi = node.endpoint.sas.keys().copied().next().unwrap();
        node.endpoint.queue(spi, Queued::RekeyIke, now);
    }
}

/// After a rekey collision: one IKE SA each, the same one, with the one Child SA pair under it,
/// every inbound SA installed once and none left behind.
fn assert_one_rekeyed_pair(pair: &mut Pair, before: u64) {
    pair.run(Duration::from_secs(30));
    pair.assert_one_pair();
    assert_ne!(pair.a.established_sas(pair.now)[0].initiator_spi, before, "rekeyed");
    assert_eq!(pair.a.endpoint.sas.len(), 1, "A keeps {:?}", pair.a.endpoint.status(pair.now));
    assert_eq!(pair.b.endpoint.sas.len(), 1, "B keeps {:?}", pair.b.endpoint.status(pair.now));
    assert_eq!((pair.a.inbound.len(), pair.b.inbound.len()), (1, 1));
    assert!(pair.a.failures.is_empty() && pair.b.failures.is_empty(), "{:?} {:?}", pair.a.failures, pair.b.failures);
    // And the Child SA still rekeys over the IKE SA both sides kept.
    pair.run(Duration::from_secs(600));
    pair.assert_one_pair();
}

/// Issue 14, finding 7, RFC 7296 §2.8.2: simultaneous IKE SA rekeys left both sides with two
/// new IKE SAs and the Child SAs under different parents. The exchange with the lowest nonce
/// loses, whichever side made it.
#[test]
fn simultaneous_ike_sa_rekeys_end_with_one_ike_sa_holding_the_child_sa() {
    let nonce = |byte: u8| [byte; 32];
    // Each node draws its request's Ni first, then the Nr of its answer.
    for (a_nonces, b_nonces) in [
        ([nonce(0x10), nonce(0x40)], [nonce(0x30), nonce(0x20)]),
        ([nonce(0x30), nonce(0x20)], [nonce(0x10), nonce(0x40)]),
    ] {
        let (mut pair, a_script, b_script) = scripted_pair(Duration::from_secs(3600));
        let before = pair.a.established_sas(pair.now)[0].initiator_spi;
        a_script.lock().unwrap().extend(a_nonces);
        b_script.lock().unwrap().extend(b_nonces);
        queue_ike_rekeys(&mut pair);
        assert_one_rekeyed_pair(&mut pair, before);
    }
}

/// Finding 7: the peer's rekey request crosses ours, but its answer to ours arrives before its
/// request: the peer has finished and deletes the old IKE SA; our request is refused.
#[test]
fn an_ike_sa_rekey_answered_before_the_crossing_request_arrives_ends_with_one_ike_sa() {
    for a_first in [true, false] {
        let (mut pair, _, _) = scripted_pair(Duration::from_secs(3600));
        let before = pair.a.established_sas(pair.now)[0].initiator_spi;
        queue_ike_rekeys(&mut pair);
        let now = pair.now;
        let (first, second) = if a_first { (&mut pair.a, &mut pair.b) } else { (&mut pair.b, &mut pair.a) };
        let first_request = first.endpoint.poll_transmit().unwrap();
        let second_request = second.endpoint.poll_transmit().unwrap();
        // `second`'s request reaches `first`, whose answer reaches `second` at once.
        let second_from = SocketAddr::new(second.address, second_request.source_port);
        first.endpoint.handle(&second_request.bytes, second_from, 4500, now);
        let answer = first.endpoint.poll_transmit().unwrap();
        second.endpoint.handle(&answer.bytes, SocketAddr::new(first.address, 4500), 4500, now);
        // Only now does `first`'s request reach `second`.
        second.endpoint.handle(&first_request.bytes, SocketAddr::new(first.address, 4500), 4500, now);
        assert_one_rekeyed_pair(&mut pair, before);
    }
}

/// Finding 7: a Child SA rekey crossing an IKE SA rekey: the new Child SA ends under the IKE
/// SA both sides keep, once.
#[test]
fn a_child_sa_rekey_crossing_an_ike_sa_rekey_ends_with_one_child_sa() {
    for a_rekeys_the_ike_sa in [true, false] {
        let (mut pair, _, _) = scripted_pair(Duration::from_secs(3600));
        let before = pair.a.established_sas(pair.now)[0].initiator_spi;
        let now = pair.now;
        let (ike, child) = if a_rekeys_the_ike_sa { (&mut pair.a, &mut pair.b) } else { (&mut pair.b, &mut pair.a) };
        let spi = ike.endpoint.sas.keys().copied().next().unwrap();
        ike.endpoint.queue(spi, Queued::RekeyIke, now);
        let spi = child.endpoint.sas.keys().copied().next().unwrap();
        let inbound = child.endpoint.sas[&spi].children.spis()[0].0;
        child.endpoint.queue(spi, Queued::RekeyChild(inbound), now);
        assert_one_rekeyed_pair(&mut pair, before);
    }
}

/// Finding 7: a second REKEY_SA request for the same Child SA (a new message ID) made another
/// Child SA each time; it is answered with the Child SA the first one made.
#[test]
fn a_repeated_rekey_of_the_same_child_sa_is_answered_with_the_existing_result() {
    let (mut pair, _, _) = scripted_pair(Duration::from_secs(3600));
    let now = pair.now;
    let a_spi = pair.a.endpoint.sas.keys().copied().next().unwrap();
    let old_inbound = pair.a.endpoint.sas[&a_spi].children.spis()[0].0;
    pair.a.endpoint.queue(a_spi, Queued::RekeyChild(old_inbound), now);
    let request = pair.a.endpoint.poll_transmit().unwrap();
    let from = SocketAddr::new(pair.a.address, 4500);
    pair.b.endpoint.handle(&request.bytes, from, 4500, now);
    let first_answer = pair.b.endpoint.poll_transmit().unwrap();
    pair.b.apply_events();
    let installed = pair.b.inbound.len();
    assert_eq!(installed, 2, "the old and the new Child SA");
    // A asks again for the same Child SA in a new request (the next message ID).
    let mut rekey = Notify::new(notify::REKEY_SA, Vec::new());
    rekey.protocol_id = crate::ike::message::ids::protocol::ESP;
    rekey.spi = old_inbound.to_be_bytes().to_vec();
    let payloads = [
        Payload::Notify(rekey),
        Payload::SecurityAssociation(crate::ike::proposal::esp_offer(&[Cipher::Aes256Gcm16], 0x1234_5678, true)),
        Payload::Nonce(crate::ike::message::Nonce { data: vec![7; 32] }),
        Payload::TrafficSelectorInitiator(crate::ike::proposal::node_selector(A.parse().unwrap(), 4790)),
        Payload::TrafficSelectorResponder(crate::ike::proposal::node_selector(B.parse().unwrap(), 4790)),
    ];
    let message_id = crate::ike::message::Message::parse(&request.bytes).unwrap().header.message_id + 1;
    let a_sa = pair.a.endpoint.sas.get_mut(&a_spi).unwrap();
    let again = a_sa.encrypt(exchange::CREATE_CHILD_SA, false, message_id, &payloads).unwrap();
    pair.b.endpoint.handle(&again, from, 4500, now);
    pair.b.apply_events();
    assert_eq!(pair.b.inbound.len(), installed, "another Child SA was made");
    let second_answer = pair.b.endpoint.poll_transmit().expect("answered");
    let b_sa = pair.b.endpoint.sas.values_mut().next().unwrap();
    let open = |sa: &mut crate::ike::sa::IkeSa, bytes: &[u8]| {
        let message = crate::ike::message::Message::parse(bytes).unwrap();
        let encrypted = message.encrypted.unwrap();
        let inner = sa.keys.opener().open(encrypted.associated_data, encrypted.body).unwrap();
        crate::ike::message::parse_payloads(encrypted.first_payload, &inner).unwrap()
    };
    // B opens its own answers with A's keys: the payloads are the same.
    let a_sa = pair.a.endpoint.sas.get_mut(&a_spi).unwrap();
    let (first, second) = (open(a_sa, &first_answer.bytes), open(a_sa, &second_answer.bytes));
    assert_eq!(first, second, "the existing result");
    let _ = b_sa;
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
    assert!(handover.is_empty(), "a request is outstanding");
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

// ----- a whole mesh started or flushed at once (issue 16: convergence under load) -----

/// `n` nodes (198.18.1.1 up), each with all the others as peers, driven in rounds: each round
/// every datagram sent is delivered, then the clock moves on a step and timers fire. A round
/// stands for a network (and a peer) that takes a step to answer.
struct Mesh {
    nodes: Vec<Node>,
    now: Instant,
    /// IKE_SA_INIT requests that started a handshake (no COOKIE in them), sent by all nodes.
    init_requests: usize,
    /// Of them, copies of a request sent before (retransmissions).
    init_retransmissions: usize,
    init_sent: std::collections::HashSet<Vec<u8>>,
}

fn mesh_address(i: usize) -> IpAddr {
    IpAddr::from([198, 18, 1, u8::try_from(i + 1).unwrap()])
}

impl Mesh {
    /// `ikectl sa flush` on every node at once.
    fn flush_everywhere(&mut self) {
        let (now, peers) = (self.now, self.nodes.len() - 1);
        for node in &mut self.nodes {
            for peer in 0..peers {
                node.endpoint.flush(peer, now);
            }
        }
    }

    fn new(n: usize) -> Mesh {
        let now = Instant::now();
        let nodes = (0..n)
            .map(|i| {
                let mut settings = settings(A, B, PSK, BOTH);
                settings.local = mesh_address(i);
                settings.peers = (0..n)
                    .filter(|j| *j != i)
                    .map(|j| PeerSettings { address: mesh_address(j), mode: Mode::Transport, public_keys: Vec::new() })
                    .collect();
                Node::new(settings, now)
            })
            .collect();
        Mesh { nodes, now, init_requests: 0, init_retransmissions: 0, init_sent: std::collections::HashSet::new() }
    }

    fn round(&mut self, step: Duration) {
        let mut flying = Vec::new();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            while let Some(transmit) = node.endpoint.poll_transmit() {
                flying.push((i, transmit));
            }
        }
        for (i, transmit) in flying {
            let from = SocketAddr::new(self.nodes[i].address, transmit.source_port);
            let message = Message::parse(&transmit.bytes).unwrap();
            let header = message.header;
            if header.exchange_type == exchange::IKE_SA_INIT && !header.response && !has_notify(&message.payloads, notify::COOKIE) {
                self.init_requests += 1;
                if !self.init_sent.insert(transmit.bytes.clone()) {
                    self.init_retransmissions += 1;
                }
            }
            let to = self.nodes.iter().position(|node| node.address == transmit.destination.ip()).unwrap();
            self.nodes[to].endpoint.handle(&transmit.bytes, from, transmit.destination.port(), self.now);
        }
        self.now += step;
        for node in &mut self.nodes {
            node.endpoint.handle_timeout(self.now);
            node.apply_events();
        }
    }

    /// Our handshakes as initiator under way at node `i`.
    fn in_flight(&self, i: usize) -> usize {
        let under_way = [IkeState::ExpectInitResponse, IkeState::ExpectAuthResponse];
        self.nodes[i].endpoint.status(self.now).iter().filter(|s| s.we_initiated && under_way.contains(&s.state)).count()
    }

    /// Every node has exactly one established IKE SA with every other.
    fn full(&self) -> bool {
        self.nodes.iter().all(|node| {
            let sas = node.established_sas(self.now);
            let peers: std::collections::HashSet<_> = sas.iter().filter_map(|s| s.peer).collect();
            sas.len() == self.nodes.len() - 1 && peers.len() == sas.len()
        })
    }

    /// Runs rounds until the mesh is full; returns how many it took.
    fn run_until_full(&mut self, step: Duration, most: usize) -> usize {
        for round in 0..most {
            for i in 0..self.nodes.len() {
                assert!(self.in_flight(i) <= HANDSHAKES_IN_FLIGHT, "node {i} runs {} handshakes", self.in_flight(i));
            }
            if self.full() {
                return round;
            }
            self.round(step);
        }
        panic!("not full after {most} rounds");
    }
}

#[test]
fn a_mesh_started_at_once_paces_its_handshakes_and_runs_one_per_pair() {
    let n = 24;
    let pairs = n * (n - 1) / 2;
    let mut mesh = Mesh::new(n);
    // The lowest address initiates to all 23 others: at most HANDSHAKES_IN_FLIGHT at once.
    mesh.round(Duration::from_millis(1));
    assert_eq!(mesh.in_flight(0), HANDSHAKES_IN_FLIGHT);
    mesh.run_until_full(Duration::from_millis(20), 2000);
    assert_eq!(mesh.init_requests, pairs, "one handshake per pair, none retransmitted or duplicated");
    for (i, node) in mesh.nodes.iter().enumerate() {
        assert!(node.failures.is_empty(), "node {i}: {:?}", node.failures);
        assert!(node.refusals.is_empty(), "node {i}: {:?}", node.refusals);
        // The lower address of each pair initiated.
        for sa in node.established_sas(mesh.now) {
            let peer = sa.peer.unwrap();
            let peer_index = if peer < i { peer } else { peer + 1 };
            assert_eq!(sa.we_initiated, i < peer_index, "node {i} with node {peer_index}");
        }
    }
}

#[test]
fn a_flush_on_every_node_at_once_negotiates_each_pair_once() {
    let n = 12;
    let pairs = n * (n - 1) / 2;
    let mut mesh = Mesh::new(n);
    mesh.run_until_full(Duration::from_millis(20), 2000);
    mesh.init_requests = 0;
    mesh.flush_everywhere();
    mesh.run_until_full(Duration::from_millis(20), 2000);
    assert_eq!(mesh.init_requests, pairs, "the lower address of each pair initiated, the other waited");
    // The deleted IKE SAs are gone, not only outnumbered.
    mesh.round(Duration::from_secs(1));
    assert!(mesh.full());
}

#[test]
fn slow_answers_stretch_the_timeouts_instead_of_drawing_retransmissions() {
    // Every answer takes one or two 1.2 s steps (a machine under load): with fixed timeouts
    // (0.5 s, doubled) each request would go two or three times.
    let n = 8;
    let pairs = n * (n - 1) / 2;
    let mut mesh = Mesh::new(n);
    mesh.run_until_full(Duration::from_millis(1200), 500);
    let timeout = mesh.nodes[0].endpoint.cx.rtt.timeout();
    assert!(timeout >= Duration::from_millis(1200), "the measured round trips set the timeout: {timeout:?}");
    mesh.init_retransmissions = 0;
    mesh.flush_everywhere();
    mesh.run_until_full(Duration::from_millis(1200), 500);
    // The lower address of each pair initiates at once; its IKE_AUTH reaches the higher after
    // three 1.2 s steps, past the higher's own 3 s delay, so the higher initiates too here.
    let retransmitted = mesh.init_retransmissions;
    assert!(retransmitted <= pairs / 4, "{retransmitted} IKE_SA_INIT requests retransmitted for {pairs} pairs");
    for (i, node) in mesh.nodes.iter().enumerate() {
        assert!(node.failures.is_empty(), "node {i}: {:?}", node.failures);
    }
}

#[test]
fn peers_that_do_not_answer_yet_hold_no_place_in_line() {
    // Only the lowest address runs: its first HANDSHAKES_IN_FLIGHT peers are not up yet. Once
    // their requests time out, the others are tried rather than waiting 15 s behind them.
    let n = 2 * HANDSHAKES_IN_FLIGHT + 1;
    let mut mesh = Mesh::new(n);
    let lowest = &mut mesh.nodes[0];
    lowest.endpoint.handle_timeout(mesh.now);
    let mut first = Vec::new();
    while let Some(transmit) = lowest.endpoint.poll_transmit() {
        first.push(transmit.destination.ip());
    }
    assert_eq!(first.len(), HANDSHAKES_IN_FLIGHT);
    let mut now = mesh.now + Duration::from_millis(600);
    lowest.endpoint.handle_timeout(now);
    let mut next: Vec<IpAddr> = std::iter::from_fn(|| lowest.endpoint.poll_transmit()).map(|t| t.destination.ip()).collect();
    next.retain(|to| !first.contains(to));
    assert_eq!(next.len(), HANDSHAKES_IN_FLIGHT, "the next peers in line after the first timeout");
    now += Duration::from_secs(1);
    lowest.endpoint.handle_timeout(now);
    assert!(lowest.endpoint.connecting.len() == n - 1, "every peer is tried: {}", lowest.endpoint.connecting.len());
}

/// Under load an IKE_SA_INIT request or its response can arrive again after the IKE SA went on:
/// the request made a new half-open SA (drawing cookies at a large start), the response
/// counted as malformed.
#[test]
fn late_copies_of_an_answered_ike_sa_init_make_nothing_new() {
    let mut pair = Pair::standard();
    let mut init = Vec::new();
    pair.run_for(Duration::from_secs(1), &mut |t| {
        if t.bytes[18] == exchange::IKE_SA_INIT {
            init.push((t.destination, t.source_port, t.bytes.clone()));
        }
        Fate::Deliver
    });
    pair.assert_one_pair();
    let [(to_b, port_a, request), (to_a, port_b, response)] = &init[..] else { panic!("{} IKE_SA_INIT", init.len()) };
    assert_eq!(to_b.ip(), pair.b.address);
    let now = pair.now + Duration::from_secs(2);
    pair.b.endpoint.handle(request, SocketAddr::new(pair.a.address, *port_a), to_b.port(), now);
    assert!(pair.b.endpoint.poll_transmit().is_none(), "a late request was answered");
    assert_eq!(half_open(&pair.b, now), 0);
    pair.a.endpoint.handle(response, SocketAddr::new(pair.b.address, *port_b), to_a.port(), now);
    pair.a.apply_events();
    pair.b.apply_events();
    assert!(pair.a.refusals.is_empty() && pair.b.refusals.is_empty(), "{:?} {:?}", pair.a.refusals, pair.b.refusals);
    pair.run(Duration::from_secs(5));
    pair.assert_one_pair();
}

/// A node that initiated while its peer was not running yet, and whose pair was then keyed by
/// the peer's own initiation, drops its unanswered IKE_SA_INIT: it retransmitted it to a pair
/// that was up and, 15.5 s on, reported that the peer does not answer (a 200-node start logged
/// hundreds of such false failures).
#[test]
fn an_unanswered_initiation_ends_quietly_when_the_peer_keys_the_pair() {
    let mut pair = Pair::standard();
    let b = pair.b.address;
    // A (the lower address) initiates at once; its requests are lost, as they are while B's
    // meshd is not running. B initiates after its delay and gets through.
    pair.run_for(Duration::from_secs(30), &mut |t| {
        if t.destination.ip() == b && t.bytes[18] == exchange::IKE_SA_INIT && t.bytes[19] & 0x20 == 0 {
            return Fate::Lose;
        }
        Fate::Deliver
    });
    pair.assert_one_pair();
    assert!(pair.a.failures.is_empty(), "A reported {:?}", pair.a.failures);
    assert!(pair.a.endpoint.connecting.is_empty(), "A still initiates");
}

/// A peer that stops answering is tried again [`RECONNECT_INTERVAL`] after its IKE SA timed
/// out. When the duplicate of a simultaneous initiation, on its way out with a DELETE no one
/// answered, was given up in the same `handle_timeout` after the live IKE SA, forgetting it set
/// the next attempt back to `initiation_delay` (zero for the lower address): the attempt was due
/// at the very `now` of the call, so the driver had to wake again at once (found by the fuzz
/// target `ike_endpoint`), and the peer was tried again without the wait.
#[test]
fn a_timed_out_peer_waits_for_its_retry_when_a_duplicate_ike_sa_goes_at_the_same_time() {
    let mut pair = Pair::standard();
    let start = pair.now;
    pair.a.endpoint.connect(0, start);
    pair.b.endpoint.connect(0, start);
    // Both initiate; every DELETE is lost, so each side keeps its duplicate IKE SA.
    pair.pump(&mut |t| if t.bytes[18] == exchange::INFORMATIONAL { Fate::Lose } else { Fate::Deliver });
    let live = pair.a.endpoint.sas.values().filter(|sa| sa.is_live()).count();
    assert_eq!((pair.a.endpoint.sas.len(), live), (2, 2), "A's IKE SAs: {:?}", pair.a.endpoint);
    // Then B is gone. Just before A deletes the duplicate B did not delete, it asks its IKE SA
    // for a Child SA rekey; neither request is answered. A's driver runs next only 40 s later
    // (the node was paused): both requests time out in that one call, the live IKE SA's first,
    // as its retransmissions started first.
    let winner = pair.a.endpoint.sas.iter().find(|(_, sa)| sa.initiator).map(|(spi, _)| *spi).unwrap();
    let inbound = pair.a.endpoint.sas[&winner].children.spis()[0].0;
    pair.a.endpoint.queue(winner, Queued::RekeyChild(inbound), start + DUPLICATE_GRACE - Duration::from_millis(100));
    let at = start + Duration::from_secs(40);
    for step in [start + DUPLICATE_GRACE, at] {
        pair.a.endpoint.handle_timeout(step);
        while pair.a.endpoint.poll_transmit().is_some() {}
        pair.a.apply_events();
    }
    assert!(pair.a.endpoint.sas.is_empty(), "A still has IKE SAs: {:?}", pair.a.endpoint);
    assert!(pair.a.failures.contains(&Failure::Timeout), "A's failures: {:?}", pair.a.failures);
    let next = pair.a.endpoint.poll_timeout().expect("a peer without an IKE SA has a next attempt");
    assert!(next >= at + RECONNECT_INTERVAL, "A tries B again {:?} after the timeout", next - at);
}
