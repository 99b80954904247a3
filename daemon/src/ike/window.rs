//! The request window of one IKE SA (RFC 7296 §2.1-2.3, window size 1): message IDs both ways,
//! the one outstanding request with its retransmission timer, requests queued behind it, and
//! the cached response that answers a retransmitted request.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::crypto::X25519KeyPair;
use super::handover::WindowRecord;
use super::types::LocalError;

/// The first retransmission timeout before any round trip was measured, and its floor.
const RETRANSMIT_BASE: Duration = Duration::from_millis(500);
/// The longest first retransmission timeout, however slow the measured round trips.
const RETRANSMIT_FIRST_MAX: Duration = Duration::from_secs(4);
/// The longest gap between two retransmissions.
const RETRANSMIT_GAP_MAX: Duration = Duration::from_secs(8);
/// How long a peer may stay silent before it counts as gone: 0.5+1+2+4+8 s with the base
/// timeout, so that a dead peer is noticed within three 10 s liveness intervals. Slow round
/// trips (a loaded machine, a peer busy with a start) lengthen it: see [`Retransmission::new`].
const NO_ANSWER_LIMIT: Duration = Duration::from_millis(15_500);
/// The silence allowed is at least this many first timeouts.
const NO_ANSWER_TIMEOUTS: u32 = 31;

/// The smoothed round trip of this endpoint's requests (RFC 6298: SRTT and RTTVAR), from
/// requests answered without a retransmission (Karn). Queueing at either end counts in it, so
/// a loaded machine or a busy peer lengthens the timeouts instead of drawing retransmissions.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RttEstimate {
    smoothed: Option<(Duration, Duration)>,
    /// A request was answered only after a retransmission: the timeout was too short, and stays
    /// doubled until a request sent once is answered (RFC 6298 §5.5).
    backed_off: Option<Duration>,
}

/// How an answered request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RoundTrip {
    /// Sent once, answered after this long.
    Measured(Duration),
    /// Retransmitted: the answer may be to any copy, so it measures nothing.
    Retransmitted,
}

impl RttEstimate {
    pub(super) fn answered(&mut self, round_trip: RoundTrip) {
        let rtt = match round_trip {
            RoundTrip::Measured(rtt) => rtt,
            RoundTrip::Retransmitted => {
                self.backed_off = Some((self.timeout() * 2).min(RETRANSMIT_FIRST_MAX));
                return;
            }
        };
        self.backed_off = None;
        self.smoothed = Some(match self.smoothed {
            None => (rtt, rtt / 2),
            Some((srtt, rttvar)) => {
                let deviation = srtt.abs_diff(rtt);
                (srtt * 7 / 8 + rtt / 8, rttvar * 3 / 4 + deviation / 4)
            }
        });
    }

    /// The first retransmission timeout of a new request: SRTT + 4 RTTVAR (or the backed-off
    /// one), within [`RETRANSMIT_BASE`] and [`RETRANSMIT_FIRST_MAX`].
    pub(super) fn timeout(&self) -> Duration {
        let measured = self.smoothed.map_or(RETRANSMIT_BASE, |(srtt, rttvar)| srtt + rttvar * 4);
        measured.max(self.backed_off.unwrap_or_default()).clamp(RETRANSMIT_BASE, RETRANSMIT_FIRST_MAX)
    }
}

/// A message sent until it is answered or the peer counts as gone.
pub(super) struct Retransmission {
    pub(super) bytes: Vec<u8>,
    retransmits: u32,
    first_sent: Instant,
    gap: Duration,
    /// The peer counts as gone after this much silence.
    no_answer_limit: Duration,
    pub(super) next_send: Instant,
}

/// What a retransmission timer says.
pub(super) enum Resend<'a> {
    NotYet,
    Send(&'a [u8]),
    GiveUp,
}

impl Retransmission {
    /// A request sent at `now`, first retransmitted after `timeout` (see [`RttEstimate`]).
    pub(super) fn new(bytes: Vec<u8>, timeout: Duration, now: Instant) -> Self {
        Retransmission {
            bytes,
            retransmits: 0,
            first_sent: now,
            gap: timeout,
            no_answer_limit: NO_ANSWER_LIMIT.max(timeout * NO_ANSWER_TIMEOUTS),
            next_send: now + timeout,
        }
    }

    /// Retransmits with a doubling gap until the peer has been silent for the limit:
    /// `heard` is when anything authentic last came from it (the give-up counts silence, not
    /// attempts, so a peer that answers slowly but answers is not torn down).
    pub(super) fn due(&mut self, now: Instant, heard: Option<Instant>) -> Resend<'_> {
        if now < self.next_send {
            return Resend::NotYet;
        }
        let silent_since = heard.map_or(self.first_sent, |heard| heard.max(self.first_sent));
        let give_up_at = silent_since + self.no_answer_limit;
        if now >= give_up_at {
            return Resend::GiveUp;
        }
        self.retransmits += 1;
        self.gap = (self.gap * 2).min(RETRANSMIT_GAP_MAX);
        self.next_send = (now + self.gap).min(give_up_at);
        Resend::Send(&self.bytes)
    }

    /// Whether it went more than once: the peer did not answer within the first timeout.
    pub(super) fn retransmitted(&self) -> bool {
        self.retransmits > 0
    }

    /// The round trip of a request answered at `now`.
    pub(super) fn round_trip(&self, now: Instant) -> RoundTrip {
        match self.retransmits {
            0 => RoundTrip::Measured(now.saturating_duration_since(self.first_sent)),
            _ => RoundTrip::Retransmitted,
        }
    }
}

/// What an outstanding request was for.
pub(super) enum Purpose {
    Auth { inbound_spi: u32 },
    Liveness,
    DeleteIke,
    DeleteChild,
    RekeyChild { old_inbound_spi: u32, new_inbound_spi: u32, nonce: Vec<u8> },
    RekeyIke { new_spi: u64, nonce: Vec<u8>, dh: X25519KeyPair },
}

pub(super) struct Outstanding {
    message_id: u32,
    pub(super) sending: Retransmission,
    pub(super) purpose: Purpose,
}

/// A request to send as soon as the window is free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Queued {
    DeleteIke,
    DeleteChild(Vec<u32>),
    RekeyChild(u32),
    RekeyIke,
    Liveness,
}

/// Where a received request's message ID puts it.
pub(super) enum Incoming<'a> {
    /// The next request: handle it (the window has moved on).
    New,
    /// The previous request again: the cached response, if there is one, answers it.
    Retransmitted(Option<&'a [u8]>),
    /// Neither: drop it.
    Unexpected,
}

pub(super) struct RequestWindow {
    next_request_id: u32,
    expected_request_id: u32,
    outstanding: Option<Outstanding>,
    queued: VecDeque<Queued>,
    last_response: Option<(u32, Vec<u8>)>,
}

impl RequestWindow {
    /// After IKE_SA_INIT, whose message ID 0 went one way: the initiator's next request is 1,
    /// the responder expects 1.
    pub(super) fn after_init(initiator: bool) -> Self {
        if initiator {
            RequestWindow::starting_at(1, 0)
        } else {
            RequestWindow::starting_at(0, 1)
        }
    }

    /// An IKE SA made by a rekey starts at 0 both ways (RFC 7296 §2.18).
    pub(super) fn after_rekey() -> Self {
        RequestWindow::starting_at(0, 0)
    }

    fn starting_at(next_request_id: u32, expected_request_id: u32) -> Self {
        RequestWindow {
            next_request_id,
            expected_request_id,
            outstanding: None,
            queued: VecDeque::new(),
            last_response: None,
        }
    }

    /// Message IDs and the cached response, for the meshd that takes over (`crate::upgrade`);
    /// `None` while a request is outstanding or queued.
    pub(super) fn export(&self) -> Option<WindowRecord> {
        (self.outstanding.is_none() && self.queued.is_empty()).then(|| WindowRecord {
            next_request_id: self.next_request_id,
            expected_request_id: self.expected_request_id,
            last_response: self.last_response.clone(),
        })
    }

    /// The window a running meshd handed over.
    pub(super) fn restore(record: &WindowRecord) -> Self {
        RequestWindow {
            last_response: record.last_response.clone(),
            ..RequestWindow::starting_at(record.next_request_id, record.expected_request_id)
        }
    }

    /// The message ID of the next request; a window that used them all cannot send another.
    pub(super) fn next_message_id(&self) -> Result<u32, LocalError> {
        match self.next_request_id {
            u32::MAX => Err(LocalError::MessageIdsExhausted),
            id => Ok(id),
        }
    }

    /// Records a request just sent with [`next_message_id`](Self::next_message_id).
    pub(super) fn sent(&mut self, bytes: Vec<u8>, purpose: Purpose, timeout: Duration, now: Instant) {
        let message_id = self.next_request_id;
        self.next_request_id += 1;
        let sending = Retransmission::new(bytes, timeout, now);
        self.outstanding = Some(Outstanding { message_id, sending, purpose });
    }

    /// The round trip of the outstanding request if `message_id` answers it at `now` (see
    /// [`Retransmission::round_trip`]).
    pub(super) fn round_trip(&self, message_id: u32, now: Instant) -> Option<RoundTrip> {
        Some(self.outstanding.as_ref().filter(|o| o.message_id == message_id)?.sending.round_trip(now))
    }

    /// The purpose of the outstanding request that `message_id` answers; `None` for a
    /// response to a request already answered or never sent.
    pub(super) fn answered(&mut self, message_id: u32) -> Option<Purpose> {
        self.outstanding.take_if(|o| o.message_id == message_id).map(|o| o.purpose)
    }

    pub(super) fn outstanding(&self) -> Option<&Purpose> {
        self.outstanding.as_ref().map(|o| &o.purpose)
    }

    pub(super) fn outstanding_mut(&mut self) -> Option<&mut Outstanding> {
        self.outstanding.as_mut()
    }

    /// A request is outstanding and not yet retransmitted (the peer may be working on it).
    pub(super) fn awaiting_first_answer(&self) -> bool {
        self.outstanding.as_ref().is_some_and(|o| !o.sending.retransmitted())
    }

    pub(super) fn next_send(&self) -> Option<Instant> {
        self.outstanding.as_ref().map(|o| o.sending.next_send)
    }

    /// Nothing outstanding and nothing queued.
    pub(super) fn idle(&self) -> bool {
        self.outstanding.is_none() && self.queued.is_empty()
    }

    pub(super) fn push(&mut self, request: Queued) {
        self.queued.push_back(request);
    }

    /// The next queued request, if the window is free for it.
    pub(super) fn pop_sendable(&mut self) -> Option<Queued> {
        match self.outstanding {
            Some(_) => None,
            None => self.queued.pop_front(),
        }
    }

    /// Forgets what is outstanding and queued (the IKE SA is being deleted).
    pub(super) fn clear(&mut self) {
        self.queued.clear();
        self.outstanding = None;
    }

    /// Places a received request. The highest message ID is never accepted, so the expected
    /// ID cannot overflow (an IKE SA must be rekeyed long before, RFC 7296 §2.2).
    pub(super) fn incoming(&mut self, message_id: u32) -> Incoming<'_> {
        let Some(following) = message_id.checked_add(1) else { return Incoming::Unexpected };
        if following == self.expected_request_id {
            let cached = self.last_response.as_ref().filter(|(id, _)| *id == message_id);
            return Incoming::Retransmitted(cached.map(|(_, bytes)| bytes.as_slice()));
        }
        if message_id != self.expected_request_id {
            return Incoming::Unexpected;
        }
        self.expected_request_id = following;
        Incoming::New
    }

    /// Keeps the response to the latest request for its retransmissions.
    pub(super) fn cache_response(&mut self, message_id: u32, bytes: Vec<u8>) {
        self.last_response = Some((message_id, bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_placed_by_message_id() {
        let mut window = RequestWindow::after_rekey();
        assert!(matches!(window.incoming(1), Incoming::Unexpected));
        assert!(matches!(window.incoming(0), Incoming::New));
        assert!(matches!(window.incoming(0), Incoming::Retransmitted(None)));
        window.cache_response(0, vec![1, 2]);
        assert!(matches!(window.incoming(0), Incoming::Retransmitted(Some([1, 2]))));
        assert!(matches!(window.incoming(1), Incoming::New));
    }

    #[test]
    fn the_last_message_id_is_refused_without_overflow() {
        let mut window = RequestWindow::after_rekey();
        assert!(matches!(window.incoming(u32::MAX), Incoming::Unexpected));
        let mut window = RequestWindow::starting_at(u32::MAX, u32::MAX);
        assert!(matches!(window.incoming(u32::MAX), Incoming::Unexpected));
        assert_eq!(window.next_message_id(), Err(LocalError::MessageIdsExhausted));
    }

    #[test]
    fn retransmissions_back_off_then_give_up_after_the_silence_limit() {
        let now = Instant::now();
        let mut sending = Retransmission::new(vec![7], RETRANSMIT_BASE, now);
        assert!(matches!(sending.due(now, None), Resend::NotYet));
        let mut sent_at = Vec::new();
        while let Resend::Send([7]) = sending.due(sending.next_send, None) {
            sent_at.push(sending.next_send);
        }
        let gaps: Vec<u64> = sent_at.iter().map(|at| (*at - now).as_millis() as u64).collect();
        assert_eq!(gaps, [1500, 3500, 7500, 15_500], "each retransmission is due after twice the last gap");
        assert!(matches!(sending.due(now + NO_ANSWER_LIMIT, None), Resend::GiveUp));
    }

    #[test]
    fn a_peer_heard_from_is_not_given_up_on() {
        let now = Instant::now();
        let mut sending = Retransmission::new(vec![7], RETRANSMIT_BASE, now);
        let late = now + NO_ANSWER_LIMIT;
        let heard = now + Duration::from_secs(10);
        assert!(matches!(sending.due(late, Some(heard)), Resend::Send(_)), "silent for 5.5 s only");
        assert!(sending.next_send <= heard + NO_ANSWER_LIMIT);
        assert!(matches!(sending.due(heard + NO_ANSWER_LIMIT, Some(heard)), Resend::GiveUp));
        // An answer from before the request does not extend it.
        let mut sending = Retransmission::new(vec![7], RETRANSMIT_BASE, now);
        let before = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
        assert!(matches!(sending.due(late, Some(before)), Resend::GiveUp));
    }

    #[test]
    fn gaps_stop_growing_at_the_cap() {
        let now = Instant::now();
        let mut sending = Retransmission::new(vec![7], RETRANSMIT_FIRST_MAX, now);
        assert_eq!(sending.no_answer_limit, RETRANSMIT_FIRST_MAX * NO_ANSWER_TIMEOUTS, "slow round trips wait longer");
        let mut last = now;
        while let Resend::Send(_) = sending.due(sending.next_send, None) {
            assert!(sending.next_send - last <= RETRANSMIT_GAP_MAX + RETRANSMIT_FIRST_MAX);
            last = sending.next_send;
        }
    }

    #[test]
    fn the_timeout_follows_the_measured_round_trips_within_bounds() {
        let mut rtt = RttEstimate::default();
        assert_eq!(rtt.timeout(), RETRANSMIT_BASE, "nothing measured yet");
        let measured = |ms| RoundTrip::Measured(Duration::from_millis(ms));
        for _ in 0..20 {
            rtt.answered(measured(10));
        }
        assert_eq!(rtt.timeout(), RETRANSMIT_BASE, "a fast network keeps the floor");
        for _ in 0..5 {
            rtt.answered(measured(900));
        }
        let loaded = rtt.timeout();
        assert!(loaded > Duration::from_secs(1) && loaded < RETRANSMIT_FIRST_MAX, "{loaded:?}");
        for _ in 0..50 {
            rtt.answered(measured(30_000));
        }
        assert_eq!(rtt.timeout(), RETRANSMIT_FIRST_MAX);
    }

    #[test]
    fn answers_only_after_retransmissions_back_the_timeout_off_until_a_clean_sample() {
        let mut rtt = RttEstimate::default();
        rtt.answered(RoundTrip::Retransmitted);
        assert_eq!(rtt.timeout(), RETRANSMIT_BASE * 2);
        rtt.answered(RoundTrip::Retransmitted);
        assert_eq!(rtt.timeout(), RETRANSMIT_BASE * 4);
        for _ in 0..10 {
            rtt.answered(RoundTrip::Retransmitted);
        }
        assert_eq!(rtt.timeout(), RETRANSMIT_FIRST_MAX);
        rtt.answered(RoundTrip::Measured(Duration::from_millis(10)));
        assert_eq!(rtt.timeout(), RETRANSMIT_BASE, "a request sent once and answered fast ends the backoff");
    }

    #[test]
    fn only_a_request_sent_once_measures_a_round_trip() {
        let now = Instant::now();
        let mut window = RequestWindow::after_rekey();
        window.sent(vec![1], Purpose::Liveness, RETRANSMIT_BASE, now);
        let later = now + Duration::from_millis(300);
        assert_eq!(window.round_trip(1, later), None, "not its message ID");
        assert_eq!(window.round_trip(0, later), Some(RoundTrip::Measured(Duration::from_millis(300))));
        let sending = &mut window.outstanding_mut().unwrap().sending;
        assert!(matches!(sending.due(now + RETRANSMIT_BASE, None), Resend::Send(_)));
        assert_eq!(window.round_trip(0, now + Duration::from_secs(1)), Some(RoundTrip::Retransmitted));
    }
}
