//! Randomness for IKE: SPIs, nonces, the forced NAT source hash and timer jitter all come from
//! an [`Rng`] the endpoint is given. Production uses the system RNG through aws-lc; tests pass a
//! seeded one so that nonce-based decisions (RFC 7296 §2.8.1 collisions) replay exactly.
//!
//! A failing RNG fails closed: every draw returns [`RngError`], and a generator that keeps
//! returning unusable values (zero SPIs) is treated as failed after a few draws instead of
//! being asked forever.

use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// The random number generator failed; nothing that needs a secret or unique value can be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the random number generator failed, so no SPI, nonce or key can be made: check the kernel's entropy source (getrandom) and restart meshd"
)]
pub struct RngError;

/// Where the endpoint's random bytes come from.
pub trait Rng: Send {
    /// Fills `dest` entirely, or fails.
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), RngError>;
}

/// The system RNG (aws-lc's `SystemRandom`, i.e. getrandom).
#[derive(Debug, Default)]
pub struct SystemRng(SystemRandom);

impl SystemRng {
    pub fn new() -> Self {
        SystemRng(SystemRandom::new())
    }
}

impl Rng for SystemRng {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), RngError> {
        self.0.fill(dest).map_err(|_| RngError)
    }
}

/// Length of the nonces we send (RFC 7296 §2.10: at least half the PRF key size; we use the
/// PRF's full key size).
pub const NONCE_LEN: usize = 32;

/// Draws before a generator that only yields reserved values (zero SPIs) counts as failed; a
/// working one needs a second draw with probability 2^-24 at most.
const MAX_DRAWS: usize = 8;

/// A fresh nonce for a Nonce payload.
pub(crate) fn nonce(rng: &mut dyn Rng) -> Result<Vec<u8>, RngError> {
    let mut nonce = vec![0u8; NONCE_LEN];
    rng.fill(&mut nonce)?;
    Ok(nonce)
}

/// Random bytes of a fixed length.
pub(crate) fn bytes<const N: usize>(rng: &mut dyn Rng) -> Result<[u8; N], RngError> {
    let mut bytes = [0u8; N];
    rng.fill(&mut bytes)?;
    Ok(bytes)
}

/// A fresh ESP SPI: 1-255 are reserved (RFC 4303 §2.1), 0 means none.
pub(crate) fn esp_spi(rng: &mut dyn Rng) -> Result<u32, RngError> {
    draw(rng, |bytes: [u8; 4]| Some(u32::from_be_bytes(bytes)).filter(|spi| *spi > 255))
}

/// A fresh IKE SPI not yet in use here: zero means "not yet known" in the IKE header.
pub(crate) fn ike_spi(rng: &mut dyn Rng, in_use: impl Fn(u64) -> bool) -> Result<u64, RngError> {
    draw(rng, |bytes: [u8; 8]| Some(u64::from_be_bytes(bytes)).filter(|spi| *spi != 0 && !in_use(*spi)))
}

fn draw<const N: usize, T>(rng: &mut dyn Rng, usable: impl Fn([u8; N]) -> Option<T>) -> Result<T, RngError> {
    for _ in 0..MAX_DRAWS {
        if let Some(value) = usable(bytes(rng)?) {
            return Ok(value);
        }
    }
    Err(RngError)
}

/// `fraction` of `lifetime`, less a random part of up to `jitter` of it (never below a tenth).
pub(crate) fn jittered(
    rng: &mut dyn Rng,
    lifetime: Duration,
    fraction: f64,
    jitter: f64,
) -> Result<Duration, RngError> {
    let random = f64::from(u16::from_be_bytes(bytes(rng)?)) / f64::from(u16::MAX);
    Ok(lifetime.mul_f64((fraction - random * jitter).max(0.1)))
}

/// A deterministic generator for tests (SplitMix64): the same seed gives the same SPIs and
/// nonces, so outcomes that depend on them are fixed.
#[cfg(test)]
pub(crate) struct SeededRng(u64);

#[cfg(test)]
impl SeededRng {
    pub(crate) fn new(seed: u64) -> Self {
        SeededRng(seed)
    }
}

#[cfg(test)]
impl Rng for SeededRng {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), RngError> {
        for chunk in dest.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_be_bytes()[..chunk.len()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A generator that yields only zeros: every SPI it could give is reserved.
    struct Zeros;

    impl Rng for Zeros {
        fn fill(&mut self, dest: &mut [u8]) -> Result<(), RngError> {
            dest.fill(0);
            Ok(())
        }
    }

    #[test]
    fn system_values_are_fresh() {
        let mut rng = SystemRng::new();
        let (a, b) = (nonce(&mut rng).unwrap(), nonce(&mut rng).unwrap());
        assert_eq!(a.len(), NONCE_LEN);
        assert_ne!(a, b);
        assert!(esp_spi(&mut rng).unwrap() > 255);
        assert_ne!(ike_spi(&mut rng, |_| false).unwrap(), 0);
    }

    #[test]
    fn a_generator_stuck_on_reserved_values_fails_instead_of_spinning() {
        assert_eq!(esp_spi(&mut Zeros), Err(RngError));
        assert_eq!(ike_spi(&mut Zeros, |_| false), Err(RngError));
        assert_eq!(ike_spi(&mut SeededRng::new(1), |_| true), Err(RngError), "every SPI in use");
    }

    #[test]
    fn the_seeded_generator_is_a_fixed_sequence() {
        let mut rng = SeededRng::new(0);
        // SplitMix64's reference output for seed 0.
        assert_eq!(bytes::<8>(&mut rng).unwrap(), 0xe220_a839_7b1d_cdafu64.to_be_bytes());
        assert_eq!(bytes::<8>(&mut rng).unwrap(), 0x6e78_9e6a_a1b9_65f4u64.to_be_bytes());
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let mut rng = SeededRng::new(7);
        let lifetime = Duration::from_secs(1000);
        for _ in 0..100 {
            let at = jittered(&mut rng, lifetime, 0.8, 0.1).unwrap();
            assert!(at >= Duration::from_secs(700) && at <= Duration::from_secs(800), "{at:?}");
        }
    }
}
