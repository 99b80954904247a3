#![no_main]

//! The receive path of a node with real SAs, fed four ways: arbitrary bytes as they would arrive
//! from the underlay (must be dropped with a reason, never panic); the same with their SPI
//! offered first, as an IKE_AUTH request offers it, so that ESP for an SPI without an SA is kept
//! and handed back at the install exactly as it came (`sadb::early`); arbitrary plaintext sealed
//! with the peer's real key, so the parsers behind authentication (inner IP, UDP, VXLAN,
//! Ethernet) see arbitrary input too; and a batch of such packets received through the TAP
//! sink with offloads, once decrypting segments into the coalescing slot and once opening each
//! in place and copying it there: both must write the same bytes to the TAP.

use std::net::SocketAddr;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use mesh_config::Mode;
use meshd::datapath::testkit::{address, node, receive, receive_batch_into, CopyingSink, Setup, TapRecord, DEFAULT};
use meshd::datapath::TapSink;
use meshd::esp::{trailer_len, PLAINTEXT_OFFSET};
use meshd::state::MeshState;
use meshd::wire::esp::Packet;
use meshd::topology::PeerId;

struct Pair {
    sender: Arc<MeshState>,
    receiver: Arc<MeshState>,
    /// Two more receivers for the batches, one per receive path: they see the same packets, so
    /// their replay windows and FDBs stay alike.
    landing_receiver: Arc<MeshState>,
    copying_receiver: Arc<MeshState>,
    setup: Setup,
}

/// The most packets in one batch.
const MAX_BATCH: usize = 8;

fn pairs() -> &'static [Pair] {
    static PAIRS: std::sync::OnceLock<Vec<Pair>> = std::sync::OnceLock::new();
    PAIRS.get_or_init(|| {
        [false, true]
            .into_iter()
            .flat_map(|ipv6| [Mode::Transport, Mode::Tunnel].map(move |mode| Setup { ipv6, mode, ..DEFAULT }))
            .map(|setup| Pair {
                sender: node(&setup, 0),
                receiver: node(&setup, 1),
                landing_receiver: node(&setup, 1),
                copying_receiver: node(&setup, 1),
                setup,
            })
            .collect()
    })
}

/// `plaintext` (its first byte the ESP next header) sealed with `pair`'s sender's outbound SA.
fn sealed(pair: &Pair, plaintext: &[u8]) -> Option<Vec<u8>> {
    let (&next_header, plaintext) = plaintext.split_first()?;
    let tables = pair.sender.sadb.load();
    let sa = tables.outbound(PeerId(0))?;
    let sequence = sa.next_sequence()?;
    let mut packet = vec![0u8; PLAINTEXT_OFFSET + plaintext.len() + trailer_len(plaintext.len())];
    packet[PLAINTEXT_OFFSET..PLAINTEXT_OFFSET + plaintext.len()].copy_from_slice(plaintext);
    let len = sa.sealer.seal(sa.params.spi, sequence, false, next_header, &mut packet, plaintext.len()).ok()?;
    packet.truncate(len);
    Some(packet)
}

/// What a receiver of `pair` writes to its TAP for `batch`, with offloads; `landing`: the
/// datapath's sink, else one that opens every packet in place and copies it (the old path).
fn tap_writes(pair: &Pair, batch: &[Vec<u8>], landing: bool) -> Vec<Vec<u8>> {
    let receiver = if landing { &pair.landing_receiver } else { &pair.copying_receiver };
    let taps = [TapRecord { keep: true, ..TapRecord::default() }];
    let sink = TapSink::new(&taps, true);
    let from = SocketAddr::new(address(&pair.setup, 0), 4500);
    match landing {
        true => receive_batch_into(receiver, &sink, from, batch),
        false => receive_batch_into(receiver, &CopyingSink(&sink), from, batch),
    };
    sink.flush();
    let [tap] = taps;
    tap.written.into_inner()
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let pair = &pairs()[usize::from(selector >> 2) % pairs().len()];
    let from = address(&pair.setup, 0);
    match selector & 3 {
        1 => {
            if let Some(packet) = sealed(pair, rest) {
                receive(&pair.receiver, &packet, from);
            }
        }
        3 => {
            // The first byte says how many packets share the rest.
            let Some((&count, rest)) = rest.split_first() else { return };
            let count = usize::from(count) % MAX_BATCH + 1;
            let batch: Vec<Vec<u8>> = rest
                .chunks(rest.len().div_ceil(count).max(1))
                .filter_map(|plaintext| sealed(pair, plaintext))
                .collect();
            assert_eq!(tap_writes(pair, &batch, true), tap_writes(pair, &batch, false), "the two receive paths differ");
        }
        2 => {
            // Only what the receive path would look up by its SPI can be kept.
            let Ok(header) = Packet::new_checked(rest) else { return };
            let spi = header.spi();
            let (early, drops) = (&pair.receiver.early_esp, &pair.receiver.drops);
            // The receive below happens at the testkit's clock (7 ms), so the offer is live.
            early.expect(spi, PeerId(0), 7, drops);
            receive(&pair.receiver, rest, from);
            early.installed(spi, 7, drops);
            for packet in early.take_released() {
                assert_eq!(packet.esp, rest, "kept and handed back as it came");
                assert_eq!(packet.peer, PeerId(0), "for the peer its SPI was offered to");
            }
            // The offer ends here, so that the other inputs' SPIs miss as they would.
            early.expire(u64::MAX, drops);
        }
        _ => {
            receive(&pair.receiver, rest, from);
        }
    }
});
