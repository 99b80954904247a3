//! The whole encapsulation, both ways, on byte buffers: one node's egress seals a frame, another
//! node's ingress opens it, for every encapsulation, mode, IP version and cipher.

use std::net::IpAddr;
use std::sync::Arc;

use mesh_config::control::DropReason;
use mesh_config::{Cipher, Encap, Mode};

use super::testkit::{
    address, frame, mesh_file, node, node_of, receive, receive_batch_at, receive_from, send, send_and_answer, spi, Setup,
    BROADCAST, DEFAULT, MAC_A, MAC_B,
};
use crate::sadb::manager::SaManager;
use crate::state::MeshState;
use crate::topology::{OverlayId, PeerId};
use crate::wire::ethernet::EthernetAddress;

fn drops(state: &MeshState, reason: DropReason) -> u64 {
    state.drops.report(|id| id.0.to_string(), None).by_reason.get(&reason).copied().unwrap_or(0)
}

#[test]
fn round_trip_in_every_encapsulation() {
    for ipv6 in [false, true] {
        for encap in [Encap::Udp, Encap::Esp] {
            for mode in [Mode::Transport, Mode::Tunnel] {
                for cipher in [Cipher::Aes256Gcm16, Cipher::Chacha20Poly1305] {
                    let setup = Setup { ipv6, encap, mode, cipher, ..DEFAULT };
                    let (n0, n1) = (node(&setup, 0), node(&setup, 1));
                    let sent_frame = frame(MAC_B, MAC_A, 100);
                    let sent = send(&n0, &sent_frame);
                    assert_eq!(sent.len(), 1, "unknown unicast goes to the one peer");
                    let (packet, to) = &sent[0];
                    assert_eq!(*to, address(&setup, 1));
                    assert_eq!(&packet[..4], &spi(0, 1).to_be_bytes());
                    assert_eq!(&packet[4..8], &1u32.to_be_bytes(), "first sequence number is 1");
                    let inner_ip = if mode == Mode::Tunnel {
                        if ipv6 {
                            40
                        } else {
                            20
                        }
                    } else {
                        0
                    };
                    let plaintext = inner_ip + 16 + sent_frame.len();
                    assert_eq!(packet.len(), 16 + (plaintext + 2).next_multiple_of(4) + 16);

                    let delivered = receive(&n1, packet, address(&setup, 0));
                    assert_eq!(delivered, vec![(OverlayId(0), sent_frame.clone())], "{ipv6} {encap} {mode} {cipher}");
                    assert_eq!(n1.topology().fdb(OverlayId(0)).lookup(EthernetAddress(MAC_A)), Some(PeerId(0)));
                    assert_eq!(
                        n1.topology().peers[0].counters.rx_packets.load(std::sync::atomic::Ordering::Relaxed),
                        1
                    );
                    assert_eq!(n1.drops.total(), 0);
                }
            }
        }
    }
}

#[test]
fn broadcast_goes_only_to_the_peers_on_the_overlay() {
    // n0 is on ovl0 with n1 and on ovl1 with n2; n1 and n2 share no overlay.
    let setup = Setup { nodes: 3, ..DEFAULT };
    let mut config = mesh_file(&setup);
    let mut second = config.overlays[0].clone();
    (second.name, second.interface, second.vni) = ("ovl1".into(), "ovl1".into(), 4243);
    config.overlays[0].members = Some(vec!["n0".into(), "n1".into()]);
    second.members = Some(vec!["n0".into(), "n2".into()]);
    config.overlays.push(second);
    let n0 = node_of(&config, &setup, 0);
    let members: Vec<Vec<String>> = n0
        .topology()
        .overlays
        .iter()
        .map(|o| o.members.iter().map(|id| n0.topology().peer(*id).name.clone()).collect())
        .collect();
    assert_eq!(members, [vec!["n1".to_string()], vec!["n2".to_string()]]);
    let sent = send(&n0, &frame(BROADCAST, MAC_A, 60));
    assert_eq!(sent.iter().map(|(_, to)| *to).collect::<Vec<_>>(), vec![address(&setup, 1)]);
    let n1 = node_of(&config, &setup, 1);
    assert_eq!(
        n1.topology().peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["n0"],
        "n1 does not peer with n2"
    );
}

#[test]
fn a_mac_claimed_by_another_peer_within_the_hold_down_is_dropped() {
    let setup = Setup { nodes: 3, ..DEFAULT };
    let nodes: Vec<Arc<MeshState>> = (0..3).map(|i| node(&setup, i)).collect();
    // A VM with MAC_A talks behind n1; n2 claims MAC_A in the same batch, then after the
    // hold-down (a migrated VM: its old node fell silent).
    let to_n0 = |from: usize| {
        let sent = send(&nodes[from], &frame(BROADCAST, MAC_A, 60));
        sent.into_iter().find(|(_, to)| *to == address(&setup, 0)).expect("a copy for n0").0
    };
    let (first, second, third) = (to_n0(1), to_n0(2), to_n0(2));
    let (n1, n2) = (address(&setup, 1), address(&setup, 2));
    let learned = || nodes[0].topology().fdb(OverlayId(0)).lookup(EthernetAddress(MAC_A));
    let delivered = receive_batch_at(&nodes[0], &[(&first, n1), (&second, n2)], 7);
    assert_eq!(delivered.len(), 1, "the claim is not delivered to the local bridge");
    assert_eq!(learned(), Some(PeerId(0)), "stays behind n1 (peer 0)");
    assert_eq!(drops(&nodes[0], DropReason::FdbMoveHeldDown), 1);
    let later = 7 + crate::fdb::MOVE_HOLD_DOWN_MS;
    assert_eq!(receive_batch_at(&nodes[0], &[(&third, n2)], later).len(), 1);
    assert_eq!(learned(), Some(PeerId(1)), "moved to n2 (peer 1) once n1 was silent");
}

#[test]
fn a_source_mac_flood_from_one_peer_is_dropped_by_reason_and_spares_the_others() {
    let setup = Setup { nodes: 3, ..DEFAULT };
    let nodes: Vec<Arc<MeshState>> = (0..3).map(|i| node(&setup, i)).collect();
    let from = |sender: usize, source: [u8; 6]| {
        let sent = send(&nodes[sender], &frame(BROADCAST, source, 60));
        sent.into_iter().find(|(_, to)| *to == address(&setup, 0)).expect("a copy for n0").0
    };
    let flood: Vec<Vec<u8>> = (0..crate::fdb::LEARN_BURST as u32 + 50)
        .map(|n| {
            let b = n.to_be_bytes();
            from(2, [0x02, 0x99, b[0], b[1], b[2], b[3]])
        })
        .collect();
    let n2 = address(&setup, 2);
    let batch: Vec<(&[u8], IpAddr)> = flood.iter().map(|packet| (packet.as_slice(), n2)).collect();
    let delivered = receive_batch_at(&nodes[0], &batch, 7);
    assert_eq!(delivered.len(), crate::fdb::LEARN_BURST as usize);
    assert_eq!(drops(&nodes[0], DropReason::FdbRateLimited), 50);
    // n1's VM is learned all the same: the budget is per peer.
    let genuine = from(1, MAC_B);
    assert_eq!(receive_batch_at(&nodes[0], &[(&genuine, address(&setup, 1))], 7).len(), 1);
    assert_eq!(nodes[0].topology().fdb(OverlayId(0)).lookup(EthernetAddress(MAC_B)), Some(PeerId(0)));
}

#[test]
fn broadcast_goes_to_every_peer_and_unicast_to_the_learned_one() {
    let setup = Setup { nodes: 3, ..DEFAULT };
    let nodes: Vec<Arc<MeshState>> = (0..3).map(|i| node(&setup, i)).collect();
    let broadcast = frame(BROADCAST, MAC_A, 60);
    let sent = send(&nodes[0], &broadcast);
    let destinations: Vec<IpAddr> = sent.iter().map(|(_, to)| *to).collect();
    assert_eq!(destinations, vec![address(&setup, 1), address(&setup, 2)]);
    for (packet, to) in &sent {
        let index = if *to == address(&setup, 1) { 1 } else { 2 };
        assert_eq!(receive(&nodes[index], packet, address(&setup, 0)), vec![(OverlayId(0), broadcast.clone())]);
    }

    // n2 answers from MAC_B; n0 learns it, then unicast to MAC_B goes to n2 only.
    let reply = send(&nodes[2], &frame(MAC_A, MAC_B, 60));
    let (packet, _) = reply.iter().find(|(_, to)| *to == address(&setup, 0)).unwrap();
    assert_eq!(receive(&nodes[0], packet, address(&setup, 2)).len(), 1);
    let unicast = send(&nodes[0], &frame(MAC_B, MAC_A, 60));
    assert_eq!(unicast.iter().map(|(_, to)| *to).collect::<Vec<_>>(), vec![address(&setup, 2)]);

    // Only the unicast frame makes n2's path one that carries traffic (path-MTU probing).
    let topology = nodes[0].topology_full();
    let packets = |peer: usize| {
        let counters = &topology.peers[peer].counters;
        (counters.tx_packets.load(std::sync::atomic::Ordering::Relaxed), counters.unicast_tx_packets())
    };
    assert_eq!(packets(0), (1, 0), "n1 got the broadcast only");
    assert_eq!(packets(1), (2, 1), "n2 the broadcast and the unicast frame");
}

#[test]
fn esp_that_overtakes_the_install_of_an_offered_spi_is_delivered_once_the_sa_is_in() {
    let (n0, n1) = (node(&DEFAULT, 0), node(&DEFAULT, 1));
    let manager = SaManager::new(n1.clone());
    // n1 offered spi(0, 1) in its IKE_AUTH request; n0 installed it and answered, and its
    // first frame comes before n1 has handled the answer.
    let installed = n1.sadb.load().inbound(spi(0, 1)).as_deref().cloned().unwrap();
    let sa = installed.with_params(installed.params);
    assert!(manager.remove_inbound(spi(0, 1)));
    manager.expect_inbound(PeerId(0), spi(0, 1));
    let early = send(&n0, &frame(MAC_B, MAC_A, 64)).remove(0).0;
    assert!(receive(&n1, &early, address(&DEFAULT, 0)).is_empty(), "nothing opened before the install");
    assert_eq!(drops(&n1, DropReason::UnknownSpi), 0, "kept, not dropped");
    assert!(n1.early_esp.take_released().is_empty());

    manager.install_inbound(sa).unwrap();
    let released = n1.early_esp.take_released();
    assert_eq!(released.len(), 1, "handed on at the install");
    assert_eq!(released[0].peer, PeerId(0), "the peer the SPI was offered to");
    let delivered = receive_from(&n1, &[(&released[0].esp[..], released[0].source)]);
    assert_eq!(delivered.len(), 1, "the frame reaches the overlay");
    assert_eq!(delivered[0].1[..12], frame(MAC_B, MAC_A, 64)[..12]);
    assert_eq!(drops(&n1, DropReason::UnknownSpi), 0);

    // An SPI that was never offered is still a drop.
    assert!(manager.remove_inbound(spi(0, 1)));
    let late = send(&n0, &frame(MAC_B, MAC_A, 64)).remove(0).0;
    let mut unoffered = late.clone();
    unoffered[..4].copy_from_slice(&0xdead_beefu32.to_be_bytes());
    assert!(receive(&n1, &unoffered, address(&DEFAULT, 0)).is_empty());
    assert_eq!(drops(&n1, DropReason::UnknownSpi), 1);
}

#[test]
fn a_running_datapath_counts_early_esp_whose_sa_never_came_about_a_second_after_its_time() {
    use std::time::{Duration, Instant};

    use super::sockets::Underlay;
    use super::{Datapath, WorkerParts, WorkerTuning};
    use crate::sadb::early::EXPECT_MS;

    let (n0, n1) = (node(&DEFAULT, 0), node(&DEFAULT, 1));
    let manager = SaManager::new(n1.clone());
    // n1 offered spi(0, 1); n0's ESP for it comes, and the answer that would install it never.
    assert!(manager.remove_inbound(spi(0, 1)));
    manager.expect_inbound(PeerId(0), spi(0, 1));
    let offered_at = Instant::now();
    let early = send(&n0, &frame(MAC_B, MAC_A, 64)).remove(0).0;
    assert!(receive(&n1, &early, address(&DEFAULT, 0)).is_empty());
    assert_eq!(drops(&n1, DropReason::UnknownSpi), 0, "kept while the SA may still come");

    // One worker with no TAP and a socket on loopback that nothing sends to: nothing but the
    // clock can make it count the kept packet.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let parts = vec![WorkerParts { taps: Vec::new(), underlay: Underlay::udp(socket) }];
    let tuning = WorkerTuning { offload: false, busy_poll: Duration::ZERO };
    let datapath = Datapath::resume(n1.clone(), parts, None, tuning).unwrap();
    let deadline = Duration::from_millis(EXPECT_MS + 5_000);
    while drops(&n1, DropReason::UnknownSpi) == 0 && offered_at.elapsed() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let counted_after = offered_at.elapsed();
    datapath.stop();
    assert_eq!(drops(&n1, DropReason::UnknownSpi), 1, "counted once its time was up");
    assert!(counted_after >= Duration::from_millis(EXPECT_MS), "not before its time: {counted_after:?}");
    // A second after, with room for a loaded machine (before, nothing counted it at all).
    assert!(counted_after < Duration::from_millis(EXPECT_MS + 3_000), "about a second after: {counted_after:?}");
}

#[test]
fn replayed_tampered_and_misaddressed_packets_are_dropped_with_their_reason() {
    let (n0, n1) = (node(&DEFAULT, 0), node(&DEFAULT, 1));
    let sent = send(&n0, &frame(MAC_B, MAC_A, 64));
    let packet = &sent[0].0;
    let from = address(&DEFAULT, 0);

    assert_eq!(receive(&n1, packet, from).len(), 1);
    assert!(receive(&n1, packet, from).is_empty());
    assert_eq!(drops(&n1, DropReason::Replay), 1);

    let mut tampered = send(&n0, &frame(MAC_B, MAC_A, 64)).remove(0).0;
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(receive(&n1, &tampered, from).is_empty());
    assert_eq!(drops(&n1, DropReason::Authentication), 1);
    let sa = n1.sadb.load().inbound(spi(0, 1)).as_deref().cloned().unwrap();
    assert_eq!(sa.counters.drops.get(DropReason::Authentication), 1);

    let mut unknown = packet.clone();
    unknown[..4].copy_from_slice(&0xdead_beefu32.to_be_bytes());
    assert!(receive(&n1, &unknown, from).is_empty());
    assert_eq!(drops(&n1, DropReason::UnknownSpi), 1);

    let fresh = send(&n0, &frame(MAC_B, MAC_A, 64)).remove(0).0;
    assert!(receive(&n1, &fresh, "198.18.0.99".parse().unwrap()).is_empty());
    assert_eq!(drops(&n1, DropReason::WrongPeer), 1);

    assert!(receive(&n1, &packet[..20], from).is_empty());
    assert_eq!(drops(&n1, DropReason::Malformed), 1);
}

#[test]
fn a_vni_no_overlay_uses_is_dropped() {
    let sender = node(&Setup { vni: 7, ..DEFAULT }, 0);
    let receiver = node(&DEFAULT, 1);
    let sent = send(&sender, &frame(MAC_B, MAC_A, 64));
    assert!(receive(&receiver, &sent[0].0, address(&DEFAULT, 0)).is_empty());
    assert_eq!(drops(&receiver, DropReason::UnknownVni), 1);
    let recent = receiver.drops.report(|id| id.0.to_string(), None).recent;
    assert_eq!(recent[0].vni, Some(7));
}

#[test]
fn a_peer_without_outbound_sa_is_counted() {
    let state = node(&DEFAULT, 0);
    SaManager::new(state.clone()).remove_peer(None);
    assert!(send(&state, &frame(MAC_B, MAC_A, 64)).is_empty());
    assert_eq!(drops(&state, DropReason::NoOutboundSa), 1);
}

#[test]
fn a_frame_too_large_to_encapsulate_is_dropped_not_a_panic() {
    let state = node(&DEFAULT, 0);
    assert!(send(&state, &frame(MAC_B, MAC_A, 65_535 - 14)).is_empty());
    assert_eq!(drops(&state, DropReason::FrameTooLarge), 1);
}

/// An IPv4 frame with DF of `ip_len` bytes from 10.244.0.1 to 10.244.0.2 (UDP).
fn ipv4_frame(ip_len: usize) -> Vec<u8> {
    let mut bytes = frame(MAC_B, MAC_A, ip_len);
    crate::wire::Ipv4Header {
        source: "10.244.0.1".parse().unwrap(),
        destination: "10.244.0.2".parse().unwrap(),
        protocol: crate::wire::ipv4::PROTOCOL_UDP,
        payload_len: ip_len - 20,
        hop_limit: 64,
        dont_fragment: true,
        identification: 0,
    }
    .emit(&mut bytes[14..]);
    bytes
}

#[test]
fn a_frame_too_large_for_the_path_is_dropped_and_answered_with_icmp() {
    let n0 = node(&DEFAULT, 0);
    let report =
        crate::pmtu::PathReport { path_mtu: Some(1280), overlay_mtu: Some(1188), source: "probed", search: None };
    n0.topology().peer(PeerId(0)).path_mtu.publish(report);
    let (sent, answered) = send_and_answer(&n0, &ipv4_frame(1188));
    assert_eq!((sent.len(), answered.len()), (1, 0), "1188 bytes fit");
    assert!(sent[0].0.len() <= 1280 - 28, "the ESP packet fits the path: {}", sent[0].0.len());

    let (sent, answered) = send_and_answer(&n0, &ipv4_frame(1189));
    assert!(sent.is_empty());
    assert_eq!(drops(&n0, DropReason::MtuExceeded), 1);
    assert_eq!(answered.len(), 1, "an ICMP answer goes back into the overlay");
    let reply = &answered[0].1;
    assert_eq!((&reply[..6], &reply[6..12], &reply[12..14]), (&MAC_A[..], &MAC_B[..], &[0x08, 0x00][..]));
    assert_eq!((reply[14 + 20], reply[14 + 21]), (3, 4), "fragmentation needed");
    assert_eq!(&reply[14 + 26..14 + 28], &1188u16.to_be_bytes());
}

#[test]
fn probes_travel_in_the_sa_to_the_peers_driver() {
    use crate::overhead::{Encapsulation, IpVersion};
    use crate::wire::inband::{InbandHeader, MessageType};
    for setup in [DEFAULT, Setup { ipv6: true, encap: Encap::Esp, mode: Mode::Tunnel, ..DEFAULT }] {
        let (n0, n1) = (node(&setup, 0), node(&setup, 1));
        let tables = n0.sadb.load();
        let sa = tables.outbound(PeerId(0)).unwrap();
        let encapsulation = Encapsulation {
            ip_version: IpVersion::of(address(&setup, 0)),
            encap: setup.encap,
            mode: setup.mode,
            cipher: setup.cipher,
        };
        let header = InbandHeader { message_type: MessageType::Probe, id: 9, size: 1400 };
        let mut buf = vec![0u8; super::BUFFER_LEN];
        let len = crate::pmtu::driver::seal_inband(&sa, encapsulation, header, 1400, &mut buf).unwrap();
        let on_wire = len + encapsulation.outer_headers_len();
        assert!(on_wire <= 1400 && on_wire > 1400 - 4, "the probe is padded to its size: {on_wire}");
        let mut inbox = n1.pmtu.take_receiver().unwrap();
        assert!(receive(&n1, &buf[..len], address(&setup, 0)).is_empty(), "nothing reaches the overlay");
        let message = inbox.try_recv().unwrap();
        assert_eq!((message.peer, message.header), (PeerId(0), header));
        assert_eq!(encapsulation.sealed_len(message.plaintext_len), on_wire, "the plaintext the probe carried");
        assert_eq!(n1.drops.total(), 0);
    }
}
