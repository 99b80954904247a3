#![no_main]

//! The FDB learning path with frames from many peers: arbitrary sequences of learned source MACs
//! (from up to 64 peers, with time moving on), static entries, forgotten peers and ageing. After
//! every step the table must answer what it accepted, hold no peer above its quota, and keep every
//! entry it lists reachable (removals shift entries; none may get lost). The table is small
//! (`LIMITS`), so that inputs fill it: a peer's quota and a full table are reached, and probe
//! runs wrap around the table's end; meshd's own table is the same code with larger limits.

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use meshd::fdb::{Fdb, FdbLimits, StaticOwner};
use meshd::topology::PeerId;
use meshd::wire::ethernet::EthernetAddress;

/// Each step is 8 bytes: operation and peer, a time step, and a MAC (unicast, few distinct ones,
/// so that moves and collisions happen).
const STEP: usize = 8;
const LIMITS: FdbLimits = FdbLimits { entries: 48, per_peer: 8 };

fuzz_target!(|data: &[u8]| {
    let fdb = Fdb::with_limits(LIMITS);
    let mut now_ms = 0u64;
    for step in data.chunks_exact(STEP) {
        let peer = PeerId(usize::from(step[0] & 0x3f));
        now_ms += u64::from(step[1]) * 37;
        let mac = EthernetAddress([step[2] & 0xfe, step[3] & 0x07, 0, step[4], step[5], step[6]]);
        match step[0] >> 6 {
            0 | 1 => {
                // A frame: learned, or refused with a reason; either way the answer is consistent.
                match fdb.learn(mac, peer, now_ms) {
                    Ok(()) => assert_eq!(fdb.lookup(mac), Some(peer)),
                    Err(_) => assert_ne!(fdb.lookup(mac), Some(peer), "a refused MAC was not learned"),
                }
            }
            2 => match step[7] % 3 {
                0 => fdb.forget_peer(peer),
                1 => fdb.expire(now_ms),
                _ => fdb.expire(now_ms + meshd::fdb::AGEING_MS * u64::from(step[7] & 1)),
            },
            _ => {
                let owner = if step[7] & 1 == 0 { StaticOwner::Peer(peer) } else { StaticOwner::ThisNode };
                fdb.set_static(&[(mac, owner)]);
            }
        }
    }
    let entries = fdb.entries();
    let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
    for (mac, peer, _) in &entries {
        assert_eq!(fdb.lookup(*mac), Some(*peer), "{mac} is listed but not found");
        *per_peer.entry(*peer).or_default() += 1;
    }
    // One static entry at most, on top of a peer's learned share and the table's limit.
    assert!(per_peer.values().all(|count| *count <= LIMITS.per_peer + 1), "{per_peer:?}");
    assert!(entries.len() <= LIMITS.entries + 1, "{} entries", entries.len());
});
