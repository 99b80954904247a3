//! Stateless cookies (RFC 7296 §2.6): when under load, a responder answers IKE_SA_INIT with a
//! COOKIE notify instead of keeping state, and only goes on when the request comes back with
//! it. The value is ours alone, so its format is local:
//!
//! ```text
//! cookie = version (4, big-endian) | HMAC-SHA-256(secret, len(Ni) (2) | Ni | IPi | SPIi)
//! ```
//!
//! `version` names the secret. [`CookieJar::rotate`] makes a new secret and keeps the previous
//! one valid, so a cookie handed out just before a rotation still works. (§2.6 writes
//! `Hash(Ni | IPi | SPIi | <secret>)`; an HMAC is the keyed form of that, and the length prefix
//! keeps a variable-length Ni from running into the address.)

use core::fmt;
use std::net::IpAddr;

use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;

use super::CryptoError;

/// Length of our COOKIE notify data (within RFC 7296's 1..=64).
pub const COOKIE_LEN: usize = 4 + 32;

struct Secret {
    version: u32,
    key: hmac::Key,
}

/// The cookie secrets: the current one, and the previous one until the next rotation.
/// `Debug` shows the versions only.
pub struct CookieJar {
    current: Secret,
    previous: Option<Secret>,
}

impl CookieJar {
    /// A jar with a fresh random secret.
    pub fn new() -> Result<Self, CryptoError> {
        Ok(CookieJar { current: Secret { version: 0, key: random_key()? }, previous: None })
    }

    /// Makes a new current secret; the old current one stays valid until the next rotation.
    pub fn rotate(&mut self) -> Result<(), CryptoError> {
        let next = Secret { version: self.current.version.wrapping_add(1), key: random_key()? };
        self.previous = Some(core::mem::replace(&mut self.current, next));
        Ok(())
    }

    /// The cookie for an IKE_SA_INIT request: its Nonce Data, source address and SPIi.
    pub fn cookie(&self, ni: &[u8], ip: IpAddr, spi_i: &[u8; 8]) -> [u8; COOKIE_LEN] {
        let tag = hmac::sign(&self.current.key, &signed_data(ni, ip, spi_i));
        let mut out = [0u8; COOKIE_LEN];
        out[..4].copy_from_slice(&self.current.version.to_be_bytes());
        out[4..].copy_from_slice(tag.as_ref());
        out
    }

    /// Checks a returned cookie against the request that carries it, with the current or the
    /// previous secret; the comparison is constant-time.
    pub fn verify(&self, cookie: &[u8], ni: &[u8], ip: IpAddr, spi_i: &[u8; 8]) -> Result<(), CryptoError> {
        if cookie.len() != COOKIE_LEN {
            return Err(CryptoError::CookieInvalid);
        }
        let (version, tag) = cookie.split_at(4);
        let version = u32::from_be_bytes(version.try_into().map_err(|_| CryptoError::CookieInvalid)?);
        let secret = if version == self.current.version {
            &self.current
        } else {
            match &self.previous {
                Some(p) if p.version == version => p,
                _ => return Err(CryptoError::CookieInvalid),
            }
        };
        hmac::verify(&secret.key, &signed_data(ni, ip, spi_i), tag).map_err(|_| CryptoError::CookieInvalid)
    }

    #[cfg(test)]
    fn with_secret(version: u32, secret: &[u8]) -> Self {
        CookieJar { current: Secret { version, key: hmac::Key::new(hmac::HMAC_SHA256, secret) }, previous: None }
    }
}

fn random_key() -> Result<hmac::Key, CryptoError> {
    hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
        .map_err(|_| CryptoError::Library("random generation for the cookie secret"))
}

fn signed_data(ni: &[u8], ip: IpAddr, spi_i: &[u8; 8]) -> Vec<u8> {
    // Nonces are at most 256 bytes; a longer one (which the parser refuses anyway) is cut at
    // the length field's limit rather than wrapping it.
    let ni_len = u16::try_from(ni.len()).unwrap_or(u16::MAX);
    let ni = &ni[..usize::from(ni_len)];
    let mut data = Vec::with_capacity(2 + ni.len() + 16 + 8);
    data.extend_from_slice(&ni_len.to_be_bytes());
    data.extend_from_slice(ni);
    match ip {
        IpAddr::V4(a) => data.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => data.extend_from_slice(&a.octets()),
    }
    data.extend_from_slice(spi_i);
    data
}

impl fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieJar")
            .field("current_version", &self.current.version)
            .field("previous_version", &self.previous.as_ref().map(|p| p.version))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::crypto::test_util::to_hex;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The format, checked against Python's hmac module:
    ///
    /// ```text
    /// python3 -c "import hmac,hashlib,ipaddress;c=lambda ver,sec,ni,ip,spi:ver.to_bytes(4,'big')+hmac.new(sec,len(ni).to_bytes(2,'big')+ni+ipaddress.ip_address(ip).packed+spi,hashlib.sha256).digest();print(c(0,bytes(32),bytes(range(32)),'198.18.0.1',bytes.fromhex('0102030405060708')).hex())"
    /// ```
    #[test]
    fn format_against_python() {
        let jar = CookieJar::with_secret(0, &[0u8; 32]);
        let ni: Vec<u8> = (0u8..32).collect();
        let c = jar.cookie(&ni, ip("198.18.0.1"), &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(to_hex(&c), "000000009e9642a8996bd93217745fb30d79e2f04793ddf755058b70d431a8ee5119ed89");
    }

    #[test]
    fn verifies_and_binds_to_the_request() {
        let jar = CookieJar::new().unwrap();
        let ni = [7u8; 32];
        let spi = [9u8; 8];
        let c = jar.cookie(&ni, ip("192.0.2.1"), &spi);
        jar.verify(&c, &ni, ip("192.0.2.1"), &spi).unwrap();
        for (n, a, s) in [
            (&[8u8; 32][..], ip("192.0.2.1"), spi),
            (&ni[..16], ip("192.0.2.1"), spi),
            (&ni[..], ip("192.0.2.2"), spi),
            (&ni[..], ip("::ffff:192.0.2.1"), spi),
            (&ni[..], ip("192.0.2.1"), [8u8; 8]),
        ] {
            assert_eq!(jar.verify(&c, n, a, &s).unwrap_err(), CryptoError::CookieInvalid);
        }
        for i in 0..COOKIE_LEN {
            let mut bad = c;
            bad[i] ^= 1;
            assert!(jar.verify(&bad, &ni, ip("192.0.2.1"), &spi).is_err(), "byte {i}");
        }
        assert!(jar.verify(&c[..35], &ni, ip("192.0.2.1"), &spi).is_err());
        assert!(jar.verify(&[], &ni, ip("192.0.2.1"), &spi).is_err());
        // Another jar (another node, or after a restart) does not accept it.
        let other = CookieJar::new().unwrap();
        assert!(other.verify(&c, &ni, ip("192.0.2.1"), &spi).is_err());
    }

    #[test]
    fn rotation_keeps_the_previous_secret_only() {
        let mut jar = CookieJar::new().unwrap();
        let ni = [1u8; 16];
        let a = ip("2001:db8::1");
        let spi = [2u8; 8];
        let c0 = jar.cookie(&ni, a, &spi);
        jar.rotate().unwrap();
        let c1 = jar.cookie(&ni, a, &spi);
        assert_ne!(c0, c1);
        jar.verify(&c0, &ni, a, &spi).unwrap();
        jar.verify(&c1, &ni, a, &spi).unwrap();
        jar.rotate().unwrap();
        assert_eq!(jar.verify(&c0, &ni, a, &spi).unwrap_err(), CryptoError::CookieInvalid);
        jar.verify(&c1, &ni, a, &spi).unwrap();
        assert_eq!(format!("{jar:?}"), "CookieJar { current_version: 2, previous_version: Some(1), .. }");
    }
}
