//! Packetization-layer path-MTU discovery for one peer, in the spirit of RFC 8899 (DPLPMTUD):
//! probes padded to a size travel through the SA, the peer acknowledges those that arrive, and
//! a size counts as usable only once a probe of it came back. No ICMP is needed.
//!
//! Sans-IO: the driver passes `now` in, sends what [`Search::poll_probe`] returns, feeds
//! acknowledgements to [`Search::on_ack`] and calls [`Search::handle_timeout`] at
//! [`Search::poll_timeout`]. Sizes are whole outer IP packets (the underlay path MTU).
//!
//! The search is optimistic: until a probe fails, the kernel's idea of the path (the ceiling, the
//! MTU of the route towards the peer) is used, so a healthy path never limits traffic. A lost
//! probe at the current size (a black hole) drops the limit to the base at once and searches up.
//!
//! Probing costs nothing on an idle path: once the path is known, it is confirmed again only
//! while traffic flows ([`Search::on_traffic`]); a path that saw none when its confirmation was
//! due waits [`State::Idle`], without a timer, and the first traffic confirms it at once.

use std::time::{Duration, Instant};

/// The size every IPv6 path and practically every IPv4 path carries (RFC 8899 §5.1.2 BASE_PLPMTU).
pub const BASE_PLPMTU: u16 = 1280;
/// Probe sizes are multiples of this (ESP's alignment: every encapsulation's packets come in steps
/// of 4 bytes); the search stops when the largest size that passed and the smallest that failed
/// are this close.
pub const SEARCH_GRANULARITY: u16 = 4;

/// Timers and counts; [`Timing::DEFAULT`] in the daemon, shorter ones in tests.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long to wait for an acknowledgement before sending the probe again.
    pub probe_timeout: Duration,
    /// Probes of one size before a confirmation (of the base or the current size) counts as lost.
    pub confirm_attempts: u8,
    /// Probes of one size before a size above the current one counts as too large.
    pub search_attempts: u8,
    /// How often the current size is confirmed while traffic flows, so that a path that shrinks
    /// is noticed.
    pub confirm_interval: Duration,
    /// How long after a search that ended below the ceiling a larger size is tried again.
    pub raise_interval: Duration,
    /// How long to wait before asking again a peer that answered no probe at all.
    pub silent_peer_retry: Duration,
}

impl Timing {
    pub const DEFAULT: Timing = Timing {
        probe_timeout: Duration::from_secs(1),
        confirm_attempts: 3,
        search_attempts: 2,
        confirm_interval: Duration::from_secs(2),
        raise_interval: Duration::from_secs(60),
        silent_peer_retry: Duration::from_secs(5),
    };
}

/// One probe to send: pad it to `size` bytes on the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub id: u32,
    pub size: u16,
}

/// What the search waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// An acknowledgement of a probe at the base size: does the peer answer at all?
    ConfirmingBase { attempts: u8, deadline: Instant },
    /// An acknowledgement of a probe above the largest size known to pass.
    SearchingUp { size: u16, attempts: u8, deadline: Instant },
    /// The time to confirm the current size again, or to try a larger one (when below the ceiling).
    SearchComplete { confirm_at: Instant, raise_at: Option<Instant> },
    /// An acknowledgement of a probe at the current size.
    ConfirmingCurrent { attempts: u8, deadline: Instant },
    /// The time to ask again a peer that acknowledged nothing; the current size stays.
    PeerSilent { retry_at: Instant },
    /// Traffic: none flowed when a confirmation (or a retry) was due, so the path may be stale;
    /// the first traffic probes it again.
    Idle,
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::ConfirmingBase { .. } => "confirming_base",
            State::SearchingUp { .. } => "searching_up",
            State::SearchComplete { .. } => "search_complete",
            State::ConfirmingCurrent { .. } => "confirming_current",
            State::PeerSilent { .. } => "peer_silent",
            State::Idle => "idle",
        }
    }
}

#[derive(Debug)]
pub struct Search {
    timing: Timing,
    state: State,
    /// The kernel's MTU towards the peer: nothing larger is ever tried.
    ceiling: u16,
    /// The size traffic may use now.
    current: u16,
    /// The largest size known to pass.
    low: u16,
    /// The smallest size known not to pass; above the ceiling while none is known.
    high: u16,
    /// When a search that ended below the ceiling tries larger sizes again; confirmations keep it.
    raise_at: Option<Instant>,
    /// Id of the probe whose acknowledgement is awaited (retries reuse it).
    awaited: u32,
    /// Its size: what an acknowledgement proves (never the size the acknowledgement claims).
    awaited_size: u16,
    next_id: u32,
    pending: Option<Probe>,
    /// Whether traffic flowed since the last confirmation or retry was due.
    traffic: bool,
}

impl Search {
    /// Starts by checking that the peer answers probes of the base size; until then (and if it
    /// never does) traffic uses the ceiling.
    pub fn new(timing: Timing, ceiling: u16, now: Instant) -> Self {
        let mut search = Search {
            timing,
            state: State::PeerSilent { retry_at: now },
            ceiling,
            current: ceiling,
            low: 0,
            high: ceiling.saturating_add(1),
            raise_at: None,
            awaited: 0,
            awaited_size: 0,
            next_id: 1,
            pending: None,
            traffic: false,
        };
        search.confirm_base(now);
        search
    }

    /// The path MTU traffic may use now.
    pub fn current(&self) -> u16 {
        self.current
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether some probe of the current size came back since it was last in doubt.
    pub fn confirmed(&self) -> bool {
        self.low >= self.current
    }

    /// The probe to send now, if any.
    pub fn poll_probe(&mut self) -> Option<Probe> {
        self.pending.take()
    }

    /// When [`Search::handle_timeout`] wants to run next; `None` while idle (it waits for
    /// [`Search::on_traffic`]).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::ConfirmingBase { deadline, .. }
            | State::SearchingUp { deadline, .. }
            | State::ConfirmingCurrent { deadline, .. } => Some(deadline),
            State::SearchComplete { confirm_at, raise_at } => {
                Some(raise_at.map_or(confirm_at, |at| at.min(confirm_at)))
            }
            State::PeerSilent { retry_at } => Some(retry_at),
            State::Idle => None,
        }
    }

    /// Traffic towards the peer flowed (since the last call). An idle path is probed again now.
    pub fn on_traffic(&mut self, now: Instant) {
        self.traffic = true;
        if self.state == State::Idle {
            self.resume(now);
        }
    }

    /// The peer acknowledged probe `id` of `size` bytes.
    pub fn on_ack(&mut self, id: u32, now: Instant) {
        if id != self.awaited {
            return; // a late answer to a probe already given up on
        }
        self.awaited = 0;
        let size = self.awaited_size;
        self.low = self.low.max(size);
        match self.state {
            State::ConfirmingBase { .. } | State::ConfirmingCurrent { .. } => self.search_up(now),
            State::SearchingUp { .. } => {
                self.current = self.current.max(size);
                self.search_up(now);
            }
            State::SearchComplete { .. } | State::PeerSilent { .. } | State::Idle => {}
        }
    }

    /// The kernel's MTU towards the peer is now `ceiling` (the route or its PMTU changed).
    pub fn set_ceiling(&mut self, ceiling: u16, now: Instant) {
        if ceiling == self.ceiling {
            return;
        }
        let lower = ceiling < self.ceiling;
        self.ceiling = ceiling;
        if lower {
            // The kernel knows for certain; no probe needed to believe it.
            self.current = self.current.min(ceiling);
            self.low = self.low.min(ceiling);
            self.high = self.high.min(ceiling.saturating_add(1));
            if let State::SearchingUp { size, .. } = self.state {
                if size > ceiling {
                    self.search_up(now);
                }
            }
        } else {
            self.high = ceiling.saturating_add(1);
            if let State::SearchComplete { .. } = self.state {
                self.search_up(now);
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_none_or(|at| now < at) {
            return;
        }
        let timing = self.timing;
        // What is due next would probe a path nobody uses: wait for traffic instead.
        if matches!(self.state, State::SearchComplete { .. } | State::PeerSilent { .. }) && !self.traffic {
            self.state = State::Idle;
            return;
        }
        match self.state {
            State::ConfirmingBase { attempts, .. } if attempts < timing.confirm_attempts => {
                self.resend(self.base(), attempts, now)
            }
            State::ConfirmingBase { .. } => {
                self.awaited = 0;
                self.state = State::PeerSilent { retry_at: now + timing.silent_peer_retry };
            }
            State::SearchingUp { size, attempts, .. } if attempts < timing.search_attempts => {
                self.resend(size, attempts, now)
            }
            State::SearchingUp { size, .. } => {
                self.high = size;
                // Traffic used an unconfirmed size that just failed: fall back to what passed.
                if self.current >= size {
                    self.current = self.low.max(self.base().min(self.current));
                }
                self.search_up(now);
            }
            State::ConfirmingCurrent { attempts, .. } if attempts < timing.confirm_attempts => {
                self.resend(self.current, attempts, now)
            }
            State::ConfirmingCurrent { .. } => {
                // A black hole: what passed before does not any more.
                self.high = self.current;
                self.current = self.base();
                self.low = 0;
                self.raise_at = None;
                self.confirm_base(now);
            }
            State::SearchComplete { .. } | State::PeerSilent { .. } => self.resume(now),
            State::Idle => {}
        }
    }

    /// What a settled path does when its timer is due and traffic flows: try a larger size when
    /// that is due, else confirm what it uses; a peer that never answered is asked again.
    fn resume(&mut self, now: Instant) {
        self.traffic = false;
        if self.low == 0 {
            self.confirm_base(now);
        } else if self.raise_at.is_some_and(|at| now >= at) && self.current < self.ceiling {
            self.high = self.ceiling.saturating_add(1);
            self.raise_at = None;
            self.search_up(now);
        } else {
            self.send(self.current, now, |deadline| State::ConfirmingCurrent { attempts: 1, deadline });
        }
    }

    fn base(&self) -> u16 {
        BASE_PLPMTU.min(self.ceiling)
    }

    fn confirm_base(&mut self, now: Instant) {
        self.send(self.base(), now, |deadline| State::ConfirmingBase { attempts: 1, deadline });
    }

    /// Probes the next size between `low` and `high`, or settles when they meet.
    fn search_up(&mut self, now: Instant) {
        let low = self.low.max(self.base());
        let high = self.high.min(self.ceiling.saturating_add(1));
        if high <= low.saturating_add(SEARCH_GRANULARITY) {
            self.settle(now);
            return;
        }
        // The ceiling first (most paths carry it), then halves. ESP packets of every encapsulation
        // come in steps of 4 bytes, so other sizes would probe (and report) what they are not.
        let size = if high > self.ceiling { self.ceiling } else { low + (high - low) / 2 };
        let size = size / SEARCH_GRANULARITY * SEARCH_GRANULARITY;
        if size <= low {
            self.settle(now);
            return;
        }
        self.send(size, now, |deadline| State::SearchingUp { size, attempts: 1, deadline });
    }

    fn settle(&mut self, now: Instant) {
        self.current = self.low.max(self.base().min(self.current));
        self.raise_at = match self.raise_at {
            _ if self.current >= self.ceiling => None,
            Some(at) if at > now => Some(at),
            _ => Some(now + self.timing.raise_interval),
        };
        self.state = State::SearchComplete { confirm_at: now + self.timing.confirm_interval, raise_at: self.raise_at };
    }

    fn send(&mut self, size: u16, now: Instant, state: impl FnOnce(Instant) -> State) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.awaited = id;
        self.awaited_size = size;
        self.pending = Some(Probe { id, size });
        self.state = state(now + self.timing.probe_timeout);
    }

    /// The same probe again (same id: a late acknowledgement of the first still counts).
    fn resend(&mut self, size: u16, attempts: u8, now: Instant) {
        self.awaited_size = size;
        self.pending = Some(Probe { id: self.awaited, size });
        let deadline = now + self.timing.probe_timeout;
        self.state = match self.state {
            State::ConfirmingBase { .. } => State::ConfirmingBase { attempts: attempts + 1, deadline },
            State::SearchingUp { .. } => State::SearchingUp { size, attempts: attempts + 1, deadline },
            _ => State::ConfirmingCurrent { attempts: attempts + 1, deadline },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated path that carries packets up to `mtu` bytes and a peer that answers at once.
    struct Path {
        mtu: u16,
        now: Instant,
        search: Search,
        probes: Vec<u16>,
        /// Whether traffic flows towards the peer.
        busy: bool,
    }

    impl Path {
        fn new(ceiling: u16, mtu: u16) -> Path {
            let now = Instant::now();
            Path { mtu, now, search: Search::new(Timing::DEFAULT, ceiling, now), probes: Vec::new(), busy: true }
        }

        /// Runs the search for `duration` in 100 ms steps.
        fn run(&mut self, duration: Duration) {
            let end = self.now + duration;
            while self.now < end {
                while let Some(probe) = self.search.poll_probe() {
                    self.probes.push(probe.size);
                    if probe.size <= self.mtu {
                        self.search.on_ack(probe.id, self.now);
                    }
                }
                self.now += Duration::from_millis(100);
                if self.busy {
                    self.search.on_traffic(self.now);
                }
                self.search.handle_timeout(self.now);
            }
        }
    }

    #[test]
    fn a_healthy_path_is_confirmed_at_the_ceiling_in_two_probes() {
        let mut path = Path::new(1500, 1500);
        assert_eq!(path.search.current(), 1500, "optimistic from the start");
        path.run(Duration::from_millis(500));
        assert_eq!(path.probes, [1280, 1500]);
        assert_eq!(path.search.current(), 1500);
        assert!(path.search.confirmed());
        assert_eq!(path.search.state().name(), "search_complete");
    }

    #[test]
    fn a_silent_black_hole_is_found_within_seconds() {
        let mut path = Path::new(1500, 1280);
        // Base acked at once; the ceiling is lost twice (2 s), then traffic uses what passed.
        path.run(Duration::from_millis(2500));
        assert_eq!(path.search.current(), 1280);
        path.run(Duration::from_secs(30));
        assert_eq!(path.search.current(), 1280);
        assert!(path.search.confirmed());
        assert!(path.probes.iter().all(|size| *size <= 1500));
    }

    #[test]
    fn the_search_finds_a_path_between_base_and_ceiling() {
        let mut path = Path::new(9000, 1400);
        path.run(Duration::from_secs(60));
        assert_eq!(path.search.current(), 1400);
        assert!(path.search.confirmed());
        assert!(path.probes.iter().all(|size| size % SEARCH_GRANULARITY == 0), "{:?}", path.probes);
    }

    #[test]
    fn a_path_that_shrinks_is_noticed_by_confirmation() {
        let mut path = Path::new(1500, 1500);
        path.run(Duration::from_secs(5));
        assert_eq!(path.search.current(), 1500);
        path.mtu = 1300;
        // Confirmation every 2 s, 3 lost probes of 1 s: at most 5 s until the base is used.
        path.run(Duration::from_millis(5500));
        assert!(path.search.current() <= 1300, "{}", path.search.current());
        path.run(Duration::from_secs(60));
        assert_eq!(path.search.current(), 1300);
    }

    #[test]
    fn a_path_that_grows_is_found_by_raising_later() {
        let mut path = Path::new(1500, 1400);
        path.run(Duration::from_secs(30));
        assert!(path.search.current() <= 1400);
        path.mtu = 1500;
        path.run(Timing::DEFAULT.raise_interval + Duration::from_secs(30));
        assert_eq!(path.search.current(), 1500);
    }

    #[test]
    fn a_peer_that_never_answers_leaves_the_ceiling_alone() {
        let mut path = Path::new(1500, 0);
        path.run(Duration::from_secs(20));
        assert_eq!(path.search.current(), 1500);
        assert_eq!(path.search.state().name(), "peer_silent");
        assert!(path.probes.iter().all(|size| *size == 1280), "{:?}", path.probes);
    }

    #[test]
    fn a_lower_ceiling_applies_at_once() {
        let mut path = Path::new(1500, 1500);
        path.run(Duration::from_secs(1));
        path.search.set_ceiling(1400, path.now);
        assert_eq!(path.search.current(), 1400);
        path.mtu = 9000;
        path.run(Duration::from_secs(200));
        assert_eq!(path.search.current(), 1400, "never above the ceiling");
        path.search.set_ceiling(9000, path.now);
        path.run(Duration::from_secs(10));
        assert_eq!(path.search.current(), 9000);
    }

    #[test]
    fn an_idle_path_is_not_probed_until_traffic_flows() {
        let mut path = Path::new(1500, 1500);
        path.busy = false;
        path.run(Duration::from_secs(3));
        assert_eq!(path.probes, [1280, 1500], "the unknown path is searched without traffic");
        assert_eq!((path.search.state(), path.search.poll_timeout()), (State::Idle, None));
        path.run(Duration::from_secs(600));
        assert_eq!(path.probes.len(), 2, "no probe in ten idle minutes");
        // It shrank meanwhile: the first traffic confirms at once and finds out.
        path.mtu = 1300;
        path.busy = true;
        path.run(Duration::from_millis(200));
        assert_eq!(path.probes[2], 1500, "traffic confirms the idle path at once");
        path.run(Duration::from_secs(30));
        assert_eq!(path.search.current(), 1300);
    }

    #[test]
    fn a_silent_peer_is_asked_again_only_with_traffic() {
        let mut path = Path::new(1500, 0);
        path.busy = false;
        path.run(Duration::from_secs(60));
        assert_eq!(path.probes, [1280, 1280, 1280], "three tries, then idle");
        assert_eq!(path.search.state(), State::Idle);
        path.mtu = 1500;
        path.busy = true;
        path.run(Duration::from_secs(5));
        assert_eq!((path.search.current(), path.search.confirmed()), (1500, true));
    }

    #[test]
    fn late_acks_are_ignored() {
        let now = Instant::now();
        let mut search = Search::new(Timing::DEFAULT, 1500, now);
        let base = search.poll_probe().unwrap();
        search.on_ack(base.id + 7, now);
        assert_eq!(search.state().name(), "confirming_base");
        search.on_ack(base.id, now);
        assert_eq!(search.state().name(), "searching_up");
    }
}
