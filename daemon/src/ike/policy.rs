//! Mesh policy: who initiates, how many handshakes run at once, which of two duplicate IKE SAs
//! wins, and how long to wait before trying a peer again.
//!
//! Whenever a pair has no IKE SA (at start, after a flush, after the peer deleted it) the node
//! with the lower address initiates at once and the other only after a delay that grows with
//! the number of peers (jittered), so that a full mesh started or flushed at once rarely
//! initiates twice. A node runs at most [`HANDSHAKES_IN_FLIGHT`] handshakes as initiator; the
//! peers due beyond that wait in the order they became due, so a start of hundreds of nodes
//! keeps each node's IKE work (and the half-open SAs it causes at each responder) bounded; when both did, the IKE SA initiated
//! by the lower address wins and its loser is deleted by its own initiator, so every pair ends
//! with one IKE SA and one Child SA pair. Rekeying is done by the original initiator of each
//! IKE SA; the responder rekeys only if that did not happen well before expiry.
//!
//! Liveness checks of idle IKE SAs are what an idle mesh spends its time on (one exchange per
//! pair every `dpd`), so they are shaped for few wake-ups: the lower address asks, the higher
//! waits one [`LIVENESS_GRID`] step longer and so hears the question instead of asking its own,
//! and every check is due on a whole step of a grid shared by all nodes that keep time (the
//! wall clock's seconds), so a node's checks of many peers, and its peers' checks of it, leave
//! and arrive together.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::types::{Failure, IkeSettings, PeerSettings};

/// How long the node with the higher address waits at least before initiating itself.
const HIGHER_ADDRESS_DELAY: Duration = Duration::from_secs(3);
/// ... plus up to this much per peer (jittered): the lower address's handshakes are paced, so
/// with many peers it may take longer to come.
const HIGHER_ADDRESS_DELAY_PER_PEER: Duration = Duration::from_millis(25);
/// Handshakes (IKE_SA_INIT and IKE_AUTH) this node runs as initiator at once; one whose
/// request went unanswered past its first timeout no longer counts.
pub(super) const HANDSHAKES_IN_FLIGHT: usize = 16;
/// Between attempts to reach a peer we have no IKE SA with.
pub(super) const RECONNECT_INTERVAL: Duration = Duration::from_secs(5);
/// After an authentication, proposal or local failure, try again this much later.
const FAILURE_BACKOFF: Duration = Duration::from_secs(30);
/// How long the initiator of a losing duplicate IKE SA has to delete it before we do (peers
/// that do not resolve duplicates, e.g. strongSwan, never do).
pub(super) const DUPLICATE_GRACE: Duration = Duration::from_secs(5);
/// Rekey at this fraction of the lifetime (minus up to `REKEY_JITTER` of it).
const REKEY_FRACTION: f64 = 0.8;
const REKEY_JITTER: f64 = 0.1;
/// The responder rekeys itself only this late.
const RESPONDER_REKEY_FRACTION: f64 = 0.95;

/// The step of the grid that liveness checks are due on; the higher address of a pair also
/// waits this much longer than the lower before it asks itself.
pub(super) const LIVENESS_GRID: Duration = Duration::from_secs(1);

/// When an idle IKE SA between `local` and `peer` that last heard from the peer at `last_heard`
/// checks the peer's liveness: `dpd` later (one grid step more on the higher address), rounded
/// up to the grid that passes through `grid_origin`.
pub(super) fn liveness_due(local: IpAddr, peer: IpAddr, last_heard: Instant, dpd: Duration, grid_origin: Instant) -> Instant {
    let wait = if local < peer { dpd } else { dpd + LIVENESS_GRID };
    let due = last_heard + wait;
    let Some(since_origin) = due.checked_duration_since(grid_origin) else { return due };
    let step = LIVENESS_GRID.as_nanos();
    let into_step = since_origin.as_nanos() % step;
    match into_step {
        0 => due,
        // The remainder is below one step (1 s), so it fits.
        _ => due + Duration::from_nanos(u64::try_from(step - into_step).unwrap_or(0)),
    }
}

/// When to try the next attempt after `failure`.
pub(super) fn retry_delay(failure: &Failure) -> Duration {
    match failure {
        Failure::Timeout => RECONNECT_INTERVAL,
        _ => FAILURE_BACKOFF,
    }
}

/// The fraction of a lifetime at which to rekey, and its jitter: the original initiator rekeys
/// first.
pub(super) fn rekey_point(we_initiated: bool) -> (f64, f64) {
    let fraction = if we_initiated { REKEY_FRACTION } else { RESPONDER_REKEY_FRACTION };
    (fraction, REKEY_JITTER)
}

/// Our state of one configured peer.
pub(super) struct PeerState {
    /// When to try to establish an IKE SA if there is none.
    pub(super) next_attempt: Instant,
    /// The peer's last IKE_AUTH carried MESHD_PATH_MTU_PROBES: it answers path-MTU probes.
    pub(super) answers_probes: bool,
    /// Removed by a reload: never negotiated with again (its index stays, indexes are stable).
    pub(super) removed: bool,
}

impl PeerState {
    pub(super) fn new(settings: &IkeSettings, peer: &PeerSettings, now: Instant) -> Self {
        let next_attempt = now + initiation_delay(settings.local, peer.address, settings.peers.len(), 0.0);
        PeerState { next_attempt, removed: false, answers_probes: false }
    }
}

/// How long after a pair lost (or never had) its IKE SA this node initiates: the lower address
/// at once, the higher after [`HIGHER_ADDRESS_DELAY`] and `jitter` (0 to 1) of
/// [`HIGHER_ADDRESS_DELAY_PER_PEER`] for each of its `peers`.
pub(super) fn initiation_delay(local: IpAddr, peer: IpAddr, peers: usize, jitter: f64) -> Duration {
    if local < peer {
        return Duration::ZERO;
    }
    let spread = HIGHER_ADDRESS_DELAY_PER_PEER * u32::try_from(peers).unwrap_or(u32::MAX);
    HIGHER_ADDRESS_DELAY + spread.mul_f64(jitter.clamp(0.0, 1.0))
}

/// How an IKE SA came to be, for duplicate resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) enum Origin {
    /// IKE_SA_INIT initiated by the node at this address.
    Handshake { initiator_address: IpAddr },
    /// Made by rekeying another IKE SA: it replaces that one and is never a duplicate.
    Rekey,
}

/// The one rule for duplicates: whether an IKE SA of origin `ours` made at `our_time` beats one
/// of `theirs` made at `their_time` when both are established with the same peer. The one
/// initiated by the lower address wins, then the newer one; rekeyed IKE SAs neither beat nor
/// lose.
pub(super) fn beats((ours, our_time): (Origin, Instant), (theirs, their_time): (Origin, Instant)) -> bool {
    match (ours, theirs) {
        (Origin::Handshake { initiator_address: ours }, Origin::Handshake { initiator_address: theirs }) => {
            ours < theirs || (ours == theirs && our_time > their_time)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lower_initiator_then_the_newer_wins_and_rekeys_never_count() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let low = Origin::Handshake { initiator_address: "198.18.0.1".parse().unwrap() };
        let high = Origin::Handshake { initiator_address: "198.18.0.2".parse().unwrap() };
        assert!(beats((low, now), (high, later)));
        assert!(!beats((high, later), (low, now)));
        assert!(beats((low, later), (low, now)));
        assert!(!beats((low, now), (low, now)), "nothing beats itself");
        assert!(!beats((Origin::Rekey, later), (high, now)) && !beats((low, now), (Origin::Rekey, later)));
    }

    #[test]
    fn liveness_checks_fall_on_the_grid_and_the_lower_address_asks_first() {
        let (low, high): (IpAddr, IpAddr) = ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap());
        let origin = Instant::now();
        let dpd = Duration::from_secs(10);
        let heard = origin + Duration::from_millis(3_250);
        assert_eq!(liveness_due(low, high, heard, dpd, origin), origin + Duration::from_secs(14));
        // The peer heard the same exchange a little later; it is due a step after the asker.
        let heard_by_peer = heard + Duration::from_millis(2);
        assert_eq!(liveness_due(high, low, heard_by_peer, dpd, origin), origin + Duration::from_secs(15));
        // On the grid already: not moved.
        assert_eq!(liveness_due(low, high, origin + Duration::from_secs(2), dpd, origin), origin + Duration::from_secs(12));
        // Never earlier than dpd after the last word, never more than a step (two for the
        // higher address) later.
        for millis in (0..5_000).step_by(137) {
            let heard = origin + Duration::from_millis(millis);
            for (local, peer, extra) in [(low, high, 0), (high, low, 1)] {
                let due = liveness_due(local, peer, heard, dpd, origin);
                let earliest = heard + dpd + LIVENESS_GRID * extra;
                assert!(due >= earliest && due < earliest + LIVENESS_GRID, "{millis} ms: {due:?}");
                assert_eq!(due.duration_since(origin).subsec_nanos(), 0, "on the grid");
            }
        }
        // Before the grid's origin (a clock set back): dpd after the last word, unrounded.
        let early = origin.checked_sub(Duration::from_millis(20_500)).expect("a clock past 20 s");
        assert_eq!(liveness_due(low, high, early, dpd, origin), early + dpd);
    }

    #[test]
    fn the_lower_address_initiates_at_once_the_higher_later_the_more_peers_it_has() {
        let (low, high): (IpAddr, IpAddr) = ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap());
        assert_eq!(initiation_delay(low, high, 199, 0.7), Duration::ZERO);
        assert_eq!(initiation_delay(high, low, 1, 0.0), HIGHER_ADDRESS_DELAY);
        assert_eq!(initiation_delay(high, low, 199, 1.0), HIGHER_ADDRESS_DELAY + Duration::from_millis(25 * 199));
        let halfway = initiation_delay(high, low, 100, 0.5);
        assert_eq!(halfway, HIGHER_ADDRESS_DELAY + Duration::from_millis(1250));
        assert_eq!(initiation_delay(high, low, 100, 7.0), initiation_delay(high, low, 100, 1.0), "jitter is a fraction");
    }
}
