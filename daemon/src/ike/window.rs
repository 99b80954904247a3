//! The request window of one IKE SA (RFC 7296 §2.1-2.3, window size 1): message IDs both ways,
//! the one outstanding request with its retransmission timer, requests queued behind it, and
//! the cached response that answers a retransmitted request.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::crypto::X25519KeyPair;
use super::handover::WindowRecord;
use super::types::LocalError;

/// First retransmission; doubled each time.
const RETRANSMIT_BASE: Duration = Duration::from_millis(500);
/// Retransmissions before the peer counts as gone: after 0.5+1+2+4+8 s, so that a dead peer is
/// noticed within three 10 s liveness intervals.
const MAX_RETRANSMITS: u32 = 4;

/// A message sent until it is answered or the peer counts as gone.
pub(super) struct Retransmission {
    pub(super) bytes: Vec<u8>,
    retransmits: u32,
    pub(super) next_send: Instant,
}

/// What a retransmission timer says.
pub(super) enum Resend<'a> {
    NotYet,
    Send(&'a [u8]),
    GiveUp,
}

impl Retransmission {
    pub(super) fn new(bytes: Vec<u8>, now: Instant) -> Self {
        Retransmission { bytes, retransmits: 0, next_send: now + RETRANSMIT_BASE }
    }

    pub(super) fn due(&mut self, now: Instant) -> Resend<'_> {
        if now < self.next_send {
            return Resend::NotYet;
        }
        if self.retransmits >= MAX_RETRANSMITS {
            return Resend::GiveUp;
        }
        self.retransmits += 1;
        self.next_send = now + RETRANSMIT_BASE * 2u32.pow(self.retransmits);
        Resend::Send(&self.bytes)
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
    pub(super) fn sent(&mut self, bytes: Vec<u8>, purpose: Purpose, now: Instant) {
        let message_id = self.next_request_id;
        self.next_request_id += 1;
        self.outstanding = Some(Outstanding { message_id, sending: Retransmission::new(bytes, now), purpose });
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
    fn retransmissions_back_off_then_give_up() {
        let now = Instant::now();
        let mut sending = Retransmission::new(vec![7], now);
        assert!(matches!(sending.due(now), Resend::NotYet));
        let mut at = now;
        for _ in 0..MAX_RETRANSMITS {
            at = sending.next_send;
            assert!(matches!(sending.due(at), Resend::Send([7])));
        }
        assert!(matches!(sending.due(sending.next_send), Resend::GiveUp));
        assert_eq!(at - now, Duration::from_millis(500 + 1000 + 2000 + 4000));
    }
}
