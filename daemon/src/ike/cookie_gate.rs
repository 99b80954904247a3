//! The half-open gate (RFC 7296 §2.6): responder IKE SAs that wait for IKE_AUTH are counted,
//! and past [`HALF_OPEN_LIMIT`] an IKE_SA_INIT request must bring back a COOKIE we made for it
//! before it costs us any state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::crypto::{CookieJar, CryptoError};

/// The cap on half-open responder SAs; beyond it, IKE_SA_INIT must carry a COOKIE.
pub const HALF_OPEN_LIMIT: usize = 64;
/// A half-open responder SA is forgotten after this long.
pub(super) const HALF_OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// What to do with an IKE_SA_INIT request that starts no retransmission.
pub(super) enum Admission {
    Admit,
    /// Answer with this COOKIE and keep nothing.
    DemandCookie(Vec<u8>),
}

pub(super) struct CookieGate {
    /// Our SPI of each half-open responder SA by (peer address, initiator SPI), to spot a
    /// retransmitted IKE_SA_INIT.
    half_open: HashMap<(SocketAddr, u64), u64>,
    jar: CookieJar,
}

impl CookieGate {
    pub(super) fn new() -> Result<Self, CryptoError> {
        Ok(CookieGate { half_open: HashMap::new(), jar: CookieJar::new()? })
    }

    /// Our SPI of the half-open SA this request already made, if it is a retransmission.
    pub(super) fn half_open_for(&self, from: SocketAddr, initiator_spi: u64) -> Option<u64> {
        self.half_open.get(&(from, initiator_spi)).copied()
    }

    /// Whether a new request (with Nonce `ni` and maybe a `cookie`) may make a half-open SA.
    pub(super) fn admit(&self, from: SocketAddr, initiator_spi: u64, ni: &[u8], cookie: Option<&[u8]>) -> Admission {
        if self.half_open.len() < HALF_OPEN_LIMIT {
            return Admission::Admit;
        }
        let spi = initiator_spi.to_be_bytes();
        match cookie.map(|cookie| self.jar.verify(cookie, ni, from.ip(), &spi)) {
            Some(Ok(())) => Admission::Admit,
            _ => Admission::DemandCookie(self.jar.cookie(ni, from.ip(), &spi).to_vec()),
        }
    }

    pub(super) fn opened(&mut self, from: SocketAddr, initiator_spi: u64, our_spi: u64) {
        self.half_open.insert((from, initiator_spi), our_spi);
    }

    /// The SA is authenticated or gone.
    pub(super) fn closed(&mut self, our_spi: u64) {
        self.half_open.retain(|_, spi| *spi != our_spi);
    }
}
