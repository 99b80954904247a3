#![no_main]

//! The receive path of a node with real SAs, fed two ways: arbitrary bytes as they would arrive
//! from the underlay (must be dropped with a reason, never panic), and arbitrary plaintext sealed
//! with the peer's real key, so the parsers behind authentication (inner IP, UDP, VXLAN,
//! Ethernet) see arbitrary input too.

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use mesh_config::Mode;
use meshd::datapath::testkit::{address, node, receive, Setup, DEFAULT};
use meshd::esp::{trailer_len, PLAINTEXT_OFFSET};
use meshd::state::MeshState;
use meshd::topology::PeerId;

struct Pair {
    sender: Arc<MeshState>,
    receiver: Arc<MeshState>,
    setup: Setup,
}

fn pairs() -> &'static [Pair] {
    static PAIRS: std::sync::OnceLock<Vec<Pair>> = std::sync::OnceLock::new();
    PAIRS.get_or_init(|| {
        [false, true]
            .into_iter()
            .flat_map(|ipv6| [Mode::Transport, Mode::Tunnel].map(move |mode| Setup { ipv6, mode, ..DEFAULT }))
            .map(|setup| Pair { sender: node(&setup, 0), receiver: node(&setup, 1), setup })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let pair = &pairs()[usize::from(selector >> 1) % pairs().len()];
    let from = address(&pair.setup, 0);
    if selector & 1 == 0 {
        receive(&pair.receiver, rest, from);
        return;
    }
    let Some((&next_header, plaintext)) = rest.split_first() else { return };
    let tables = pair.sender.sadb.load();
    let Some(sa) = tables.outbound(PeerId(0)) else { return };
    let Some(sequence) = sa.next_sequence() else { return };
    let mut packet = vec![0u8; PLAINTEXT_OFFSET + plaintext.len() + trailer_len(plaintext.len())];
    packet[PLAINTEXT_OFFSET..PLAINTEXT_OFFSET + plaintext.len()].copy_from_slice(plaintext);
    if let Ok(len) = sa.sealer.seal(sa.params.spi, sequence, false, next_header, &mut packet, plaintext.len()) {
        receive(&pair.receiver, &packet[..len], from);
    }
});
