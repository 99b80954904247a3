//! Counting a run of received packets at once. A batch is mostly one flow's segments, all on one
//! SA from one peer; counted one by one, each packet took four locked adds on the shared
//! counters, right after the cipher wrote the whole packet (a locked add on x86 waits for those
//! stores to drain). `cargo bench -p meshd --features internals --bench offload --
//! ingress_64k_open_into_slot`: 7-13 % less time per 64 KiB super-frame. (The send side's
//! counters, tried the same way, showed no change in `egress_64k_seal_in_batch`.)

use std::cell::RefCell;
use std::sync::Arc;

use crate::sadb::SaCounters;
use crate::topology::PeerCounters;

/// Packets received in a row on one SA from one peer, added to the shared counters when the SA
/// or peer changes and at [`Tally::finish`]; readers see them at most one batch late.
#[derive(Default)]
pub struct Tally {
    run: RefCell<Option<Run>>,
}

struct Run {
    sa: Arc<SaCounters>,
    peer: Arc<PeerCounters>,
    packets: u64,
    bytes: u64,
}

impl Run {
    fn add(&self, now_ms: u64) {
        self.sa.add(self.packets, self.bytes, now_ms);
        self.peer.add_rx(self.packets, self.bytes, now_ms);
    }
}

impl Tally {
    /// One packet of `bytes` on `sa` from `peer`.
    pub fn count(&self, sa: &Arc<SaCounters>, peer: &Arc<PeerCounters>, bytes: usize, now_ms: u64) {
        let mut run = self.run.borrow_mut();
        match run.as_mut() {
            Some(run) if Arc::ptr_eq(&run.sa, sa) && Arc::ptr_eq(&run.peer, peer) => {
                run.packets += 1;
                run.bytes += bytes as u64;
            }
            _ => {
                let next = Run { sa: sa.clone(), peer: peer.clone(), packets: 1, bytes: bytes as u64 };
                if let Some(done) = run.replace(next) {
                    done.add(now_ms);
                }
            }
        }
    }

    /// Adds what is counted and not added yet.
    pub fn finish(&self, now_ms: u64) {
        if let Some(done) = self.run.borrow_mut().take() {
            done.add(now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_run_is_added_when_the_sa_changes_and_when_finished() {
        let (first, second) = (Arc::new(SaCounters::default()), Arc::new(SaCounters::default()));
        let peer = Arc::new(PeerCounters::default());
        let tally = Tally::default();
        tally.count(&first, &peer, 100, 5);
        tally.count(&first, &peer, 50, 5);
        assert_eq!(first.packets.load(Ordering::Relaxed), 0, "a run is added when it ends, not per packet");
        tally.count(&second, &peer, 10, 6);
        assert_eq!((first.packets.load(Ordering::Relaxed), first.bytes.load(Ordering::Relaxed)), (2, 150));
        assert_eq!(first.last_used_ms.load(Ordering::Relaxed), 6);
        tally.finish(7);
        assert_eq!((second.packets.load(Ordering::Relaxed), second.bytes.load(Ordering::Relaxed)), (1, 10));
        assert_eq!((peer.rx_packets.load(Ordering::Relaxed), peer.rx_bytes.load(Ordering::Relaxed)), (3, 160));
        assert_eq!(peer.last_rx_ms.load(Ordering::Relaxed), 7);
        tally.finish(8);
        assert_eq!(peer.rx_packets.load(Ordering::Relaxed), 3, "nothing is added twice");
    }
}
