#![no_main]

//! The IKE responder fed arbitrary datagrams: before any state (as IKE_SA_INIT from a
//! stranger), and after a real IKE_SA_INIT, with the datagram's header pointed at the half-open
//! IKE SA so that SPI lookup, message ID checks and SK decryption see arbitrary input. Nothing
//! may panic; every refusal is counted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mesh_config::{Cipher, DhGroup, Mode, Prf, Proposal};
use meshd::ike::{Endpoint, IkeSettings, PeerSettings};
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

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
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
