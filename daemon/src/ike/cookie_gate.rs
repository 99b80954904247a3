//! The half-open gate (RFC 7296 §2.6): responder IKE SAs that wait for IKE_AUTH are counted,
//! globally and per source address. Past [`HALF_OPEN_LIMIT`] (or two per configured peer, if
//! that is more: a legitimate start of the whole mesh must not draw cookies) an IKE_SA_INIT request must bring
//! back a COOKIE we made for it before it costs us any state; past [`HALF_OPEN_HARD_LIMIT`], or
//! past [`HALF_OPEN_PER_SOURCE`] from one address, it is dropped, cookie or not. The cookie
//! secret is replaced every [`COOKIE_SECRET_LIFETIME`], so a cookie cannot be stockpiled.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::crypto::{CookieJar, CryptoError};

/// The cap on half-open responder SAs; beyond it, IKE_SA_INIT must carry a COOKIE.
pub const HALF_OPEN_LIMIT: usize = 64;
/// The hard cap on half-open responder SAs: beyond it, IKE_SA_INIT is dropped (each costs two
/// X25519 operations and its request is kept).
pub const HALF_OPEN_HARD_LIMIT: usize = 512;
/// The cap on half-open responder SAs from one address, so that one host cannot fill the
/// hard cap (an initiator has one at a time per peer).
pub const HALF_OPEN_PER_SOURCE: usize = 8;
/// A half-open responder SA is forgotten after this long.
pub(super) const HALF_OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a cookie secret is current; a cookie is honoured for at most twice this long.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(30);
/// A retransmitted IKE_SA_INIT request is answered again at most this often.
pub const INIT_RESEND_INTERVAL: Duration = Duration::from_millis(500);
/// The largest IKE_SA_INIT request a half-open SA keeps (ours are about 300 bytes).
pub const INIT_REQUEST_MAX_LEN: usize = 2048;

/// What to do with an IKE_SA_INIT request that starts no retransmission.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admission {
    Admit,
    /// Answer with this COOKIE and keep nothing.
    DemandCookie(Vec<u8>),
    /// Drop it: too many half-open SAs, in all or from its address.
    Full,
}

/// A half-open responder SA as the gate sees it.
struct HalfOpen {
    our_spi: u64,
    /// When its IKE_SA_INIT response was last sent.
    answered: Instant,
}

pub(super) struct CookieGate {
    /// Each half-open responder SA by (peer address, initiator SPI), to spot a retransmitted
    /// IKE_SA_INIT.
    half_open: HashMap<(SocketAddr, u64), HalfOpen>,
    /// The key of `half_open` by our SPI.
    by_our_spi: HashMap<u64, (SocketAddr, u64)>,
    /// How many half-open SAs each address has.
    per_source: HashMap<IpAddr, usize>,
    jar: CookieJar,
    rotate_at: Instant,
    /// Half-open SAs admitted without a cookie: [`HALF_OPEN_LIMIT`] or two per peer.
    cookie_free: usize,
}

impl CookieGate {
    pub(super) fn new(now: Instant) -> Result<Self, CryptoError> {
        Ok(CookieGate {
            half_open: HashMap::new(),
            by_our_spi: HashMap::new(),
            per_source: HashMap::new(),
            jar: CookieJar::new()?,
            rotate_at: now + COOKIE_SECRET_LIFETIME,
            cookie_free: HALF_OPEN_LIMIT,
        })
    }

    /// The mesh has `peers` peers: each may have a handshake (and a retried one) half-open here
    /// when the whole mesh starts or is flushed at once, without any cookie. Never past the
    /// hard cap.
    pub(super) fn expect_peers(&mut self, peers: usize) {
        self.cookie_free = HALF_OPEN_LIMIT.max(peers.saturating_mul(2)).min(HALF_OPEN_HARD_LIMIT);
    }

    /// Our SPI of the half-open SA this request already made, if it is a retransmission.
    pub(super) fn half_open_for(&self, from: SocketAddr, initiator_spi: u64) -> Option<u64> {
        self.half_open.get(&(from, initiator_spi)).map(|entry| entry.our_spi)
    }

    /// Whether the response to a retransmitted request may be sent again now: at most every
    /// [`INIT_RESEND_INTERVAL`], so that replaying a request draws little.
    pub(super) fn resend_due(&mut self, from: SocketAddr, initiator_spi: u64, now: Instant) -> bool {
        let Some(entry) = self.half_open.get_mut(&(from, initiator_spi)) else { return false };
        let due = now >= entry.answered + INIT_RESEND_INTERVAL;
        if due {
            entry.answered = now;
        }
        due
    }

    /// Whether a new request (with Nonce `ni` and maybe a `cookie`) may make a half-open SA.
    pub(super) fn admit(
        &mut self,
        from: SocketAddr,
        initiator_spi: u64,
        ni: &[u8],
        cookie: Option<&[u8]>,
        now: Instant,
    ) -> Result<Admission, CryptoError> {
        self.rotate_if_due(now)?;
        let from_source = self.per_source.get(&from.ip()).copied().unwrap_or(0);
        if self.half_open.len() >= HALF_OPEN_HARD_LIMIT || from_source >= HALF_OPEN_PER_SOURCE {
            return Ok(Admission::Full);
        }
        if self.half_open.len() < self.cookie_free {
            return Ok(Admission::Admit);
        }
        let spi = initiator_spi.to_be_bytes();
        Ok(match cookie.map(|cookie| self.jar.verify(cookie, ni, from.ip(), &spi)) {
            Some(Ok(())) => Admission::Admit,
            _ => Admission::DemandCookie(self.jar.cookie(ni, from.ip(), &spi).to_vec()),
        })
    }

    /// A new secret every [`COOKIE_SECRET_LIFETIME`]; after a long quiet spell, two, so that no
    /// secret older than two lifetimes stays valid.
    fn rotate_if_due(&mut self, now: Instant) -> Result<(), CryptoError> {
        if now < self.rotate_at {
            return Ok(());
        }
        self.jar.rotate()?;
        if now >= self.rotate_at + COOKIE_SECRET_LIFETIME {
            self.jar.rotate()?;
        }
        self.rotate_at = now + COOKIE_SECRET_LIFETIME;
        Ok(())
    }

    pub(super) fn opened(&mut self, from: SocketAddr, initiator_spi: u64, our_spi: u64, now: Instant) {
        let previous = self.half_open.insert((from, initiator_spi), HalfOpen { our_spi, answered: now });
        if let Some(previous) = previous {
            self.by_our_spi.remove(&previous.our_spi);
        } else {
            *self.per_source.entry(from.ip()).or_default() += 1;
        }
        self.by_our_spi.insert(our_spi, (from, initiator_spi));
    }

    /// The SA is authenticated or gone.
    pub(super) fn closed(&mut self, our_spi: u64) {
        let Some(key) = self.by_our_spi.remove(&our_spi) else { return };
        self.half_open.remove(&key);
        if let Some(count) = self.per_source.get_mut(&key.0.ip()) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&key.0.ip());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(i: usize) -> SocketAddr {
        SocketAddr::new(IpAddr::from([198, 18, (i / 250) as u8 + 10, (i % 250) as u8 + 1]), 500)
    }

    #[test]
    fn one_address_gets_at_most_its_share_of_half_open_sas() {
        let now = Instant::now();
        let mut gate = CookieGate::new(now).unwrap();
        let from = source(0);
        for spi in 0..HALF_OPEN_PER_SOURCE as u64 {
            assert_eq!(gate.admit(from, spi, b"ni", None, now).unwrap(), Admission::Admit);
            gate.opened(from, spi, 1000 + spi, now);
        }
        assert_eq!(gate.admit(from, 99, b"ni", None, now).unwrap(), Admission::Full);
        assert_eq!(gate.admit(source(1), 99, b"ni", None, now).unwrap(), Admission::Admit, "others still get in");
        gate.closed(1000);
        assert_eq!(gate.admit(from, 99, b"ni", None, now).unwrap(), Admission::Admit);
        gate.closed(1000);
        assert_eq!(gate.half_open.len(), HALF_OPEN_PER_SOURCE - 1, "closing twice counts once");
    }

    #[test]
    fn past_the_hard_limit_even_a_valid_cookie_is_refused() {
        let now = Instant::now();
        let mut gate = CookieGate::new(now).unwrap();
        for i in 0..HALF_OPEN_HARD_LIMIT {
            gate.opened(source(i), 1, i as u64, now);
        }
        let from = source(HALF_OPEN_HARD_LIMIT);
        let cookie = gate.jar.cookie(b"ni", from.ip(), &7u64.to_be_bytes()).to_vec();
        assert_eq!(gate.admit(from, 7, b"ni", Some(&cookie), now).unwrap(), Admission::Full);
        gate.closed(0);
        assert_eq!(gate.admit(from, 7, b"ni", Some(&cookie), now).unwrap(), Admission::Admit);
    }

    #[test]
    fn a_cookie_expires_with_its_secret_two_lifetimes_later() {
        let now = Instant::now();
        let mut gate = CookieGate::new(now).unwrap();
        for i in 0..HALF_OPEN_LIMIT {
            gate.opened(source(i), 1, i as u64, now);
        }
        let from = source(HALF_OPEN_LIMIT);
        let Admission::DemandCookie(cookie) = gate.admit(from, 7, b"ni", None, now).unwrap() else {
            panic!("no cookie demanded past the limit")
        };
        let later = now + COOKIE_SECRET_LIFETIME + Duration::from_secs(1);
        assert_eq!(gate.admit(from, 7, b"ni", Some(&cookie), later).unwrap(), Admission::Admit);
        let stockpiled = later + COOKIE_SECRET_LIFETIME;
        assert!(matches!(gate.admit(from, 7, b"ni", Some(&cookie), stockpiled).unwrap(), Admission::DemandCookie(_)));
        // After a long quiet spell the old secret is gone at once.
        let mut gate = CookieGate::new(now).unwrap();
        for i in 0..HALF_OPEN_LIMIT {
            gate.opened(source(i), 1, i as u64, now);
        }
        let Admission::DemandCookie(cookie) = gate.admit(from, 7, b"ni", None, now).unwrap() else { panic!() };
        let quiet = now + COOKIE_SECRET_LIFETIME * 3;
        assert!(matches!(gate.admit(from, 7, b"ni", Some(&cookie), quiet).unwrap(), Admission::DemandCookie(_)));
    }

    #[test]
    fn a_start_of_every_peer_at_once_draws_no_cookie_but_strangers_past_it_do() {
        let now = Instant::now();
        let mut gate = CookieGate::new(now).unwrap();
        gate.expect_peers(199);
        for i in 0..2 * 199 {
            assert_eq!(gate.admit(source(i), 1, b"ni", None, now).unwrap(), Admission::Admit, "half-open SA {i}");
            gate.opened(source(i), 1, i as u64, now);
        }
        assert!(matches!(gate.admit(source(400), 1, b"ni", None, now).unwrap(), Admission::DemandCookie(_)));
        gate.expect_peers(3);
        assert_eq!(gate.cookie_free, HALF_OPEN_LIMIT, "a small mesh keeps the default");
        gate.expect_peers(10_000);
        assert_eq!(gate.cookie_free, HALF_OPEN_HARD_LIMIT, "never past the hard cap");
    }

    #[test]
    fn a_retransmission_is_answered_at_most_every_interval() {
        let now = Instant::now();
        let mut gate = CookieGate::new(now).unwrap();
        gate.opened(source(0), 5, 50, now);
        assert_eq!(gate.half_open_for(source(0), 5), Some(50));
        assert!(!gate.resend_due(source(0), 5, now));
        assert!(!gate.resend_due(source(1), 5, now + INIT_RESEND_INTERVAL));
        let later = now + INIT_RESEND_INTERVAL;
        assert!(gate.resend_due(source(0), 5, later));
        assert!(!gate.resend_due(source(0), 5, later));
    }
}
