//! Key derivation: the IKE SA keys (RFC 7296 §2.14), a rekeyed IKE SA's keys (§2.18) and Child
//! SA KEYMAT (§2.17), for PRF_HMAC_SHA2_256 and the AEADs of [`Cipher`].
//!
//! ```text
//! SKEYSEED = prf(Ni | Nr, g^ir)                                   (IKE_SA_INIT)
//! SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)                (rekeyed IKE SA)
//! {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}
//!          = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)
//! KEYMAT   = prf+(SK_d, [g^ir (new) |] Ni | Nr)                   (Child SA)
//! ```
//!
//! With an AEAD, SK_ai and SK_ar are empty (RFC 5282 §7, RFC 7634 §3) and SK_ei, SK_er are a
//! 32-byte key followed by a 4-byte salt. SK_d, SK_pi and SK_pr are 32 bytes, the PRF's
//! preferred key size. Nonces are used whole (only their Nonce Data, without the payload
//! header); SPIs in the order they appear in the IKE header.

use core::fmt;

use mesh_config::Cipher;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::auth::{self, SignedOctets};
use super::prf::{prf_parts, prf_plus_parts, PRF_KEY_LEN};
use super::sk::SK_KEY_MATERIAL_LEN;
use super::sk::{key_material_len, SkOpener, SkSealer};
use super::{CryptoError, HexBytes, Role};
use crate::esp::{KeyMaterial, KEY_MATERIAL_LEN};

/// The shortest nonce IKEv2 allows (RFC 7296 §2.10, §3.9: 128 bits, and at least half the
/// PRF's key size).
pub const MIN_NONCE_LEN: usize = 16;
/// The prf+ seed of [`IkeSaKeys::query_key`].
const QUERY_KEY_LABEL: &[u8] = b"meshd diagnostic query v1";
/// The longest nonce IKEv2 allows (RFC 7296 §3.9).
pub const MAX_NONCE_LEN: usize = 256;

/// The two IKE SPIs, as they appear (in this order) in the IKE header.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpiPair {
    /// IKE_SA Initiator's SPI.
    pub initiator: [u8; 8],
    /// IKE_SA Responder's SPI.
    pub responder: [u8; 8],
}

impl fmt::Debug for SpiPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiPair({:?}_i, {:?}_r)", HexBytes(&self.initiator), HexBytes(&self.responder))
    }
}

fn check_nonce(nonce: &[u8]) -> Result<(), CryptoError> {
    if (MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&nonce.len()) {
        Ok(())
    } else {
        Err(CryptoError::NonceLength { got: nonce.len() })
    }
}

/// The keys of one IKE SA, as seen from one end: the derived SK_* values, and the SK payload
/// sealer (our direction) and opener (the peer's).
///
/// There is exactly one [`SkSealer`] per IKE SA and direction, so its IV counter is the only
/// user of its key. Everything is wiped on drop; `Debug` shows the role, cipher and SPIs only.
pub struct IkeSaKeys {
    role: Role,
    cipher: Cipher,
    spis: SpiPair,
    sk_d: Zeroizing<[u8; PRF_KEY_LEN]>,
    sk_ei: Zeroizing<[u8; SK_KEY_MATERIAL_LEN]>,
    sk_er: Zeroizing<[u8; SK_KEY_MATERIAL_LEN]>,
    sk_pi: Zeroizing<[u8; PRF_KEY_LEN]>,
    sk_pr: Zeroizing<[u8; PRF_KEY_LEN]>,
    sealer: SkSealer,
    opener: SkOpener,
}

/// An IKE SA's keys as they cross the handover socket to the meshd that takes over
/// (`crate::upgrade`); wiped when dropped.
#[derive(Serialize, Deserialize)]
pub struct IkeSaKeysRecord {
    initiator: bool,
    cipher: Cipher,
    spi_i: [u8; 8],
    spi_r: [u8; 8],
    sk_d: Vec<u8>,
    sk_ei: Vec<u8>,
    sk_er: Vec<u8>,
    sk_pi: Vec<u8>,
    sk_pr: Vec<u8>,
    /// The first IV the new meshd may use.
    next_iv: u64,
}

impl Drop for IkeSaKeysRecord {
    fn drop(&mut self) {
        for key in [&mut self.sk_d, &mut self.sk_ei, &mut self.sk_er, &mut self.sk_pi, &mut self.sk_pr] {
            key.zeroize();
        }
    }
}

impl IkeSaKeys {
    /// The keys for the meshd that takes over; its IVs start `iv_margin` past ours.
    pub fn export(&self, iv_margin: u64) -> IkeSaKeysRecord {
        IkeSaKeysRecord {
            initiator: self.role == Role::Initiator,
            cipher: self.cipher,
            spi_i: self.spis.initiator,
            spi_r: self.spis.responder,
            sk_d: self.sk_d.to_vec(),
            sk_ei: self.sk_ei.to_vec(),
            sk_er: self.sk_er.to_vec(),
            sk_pi: self.sk_pi.to_vec(),
            sk_pr: self.sk_pr.to_vec(),
            next_iv: self.sealer.sealed_count().saturating_add(iv_margin),
        }
    }

    /// The keys a running meshd handed over.
    pub fn restore(record: &IkeSaKeysRecord) -> Result<Self, CryptoError> {
        let fits =
            |key: &[u8], len: usize| (key.len() == len).then_some(()).ok_or(CryptoError::Library("IKE key length"));
        for key in [&record.sk_d, &record.sk_pi, &record.sk_pr] {
            fits(key, PRF_KEY_LEN)?;
        }
        for key in [&record.sk_ei, &record.sk_er] {
            fits(key, SK_KEY_MATERIAL_LEN)?;
        }
        let role = if record.initiator { Role::Initiator } else { Role::Responder };
        let (ours, theirs) = match role {
            Role::Initiator => (&record.sk_ei, &record.sk_er),
            Role::Responder => (&record.sk_er, &record.sk_ei),
        };
        let e_len = key_material_len(record.cipher);
        Ok(IkeSaKeys {
            role,
            cipher: record.cipher,
            spis: SpiPair { initiator: record.spi_i, responder: record.spi_r },
            sk_d: array(&record.sk_d),
            sk_ei: array(&record.sk_ei),
            sk_er: array(&record.sk_er),
            sk_pi: array(&record.sk_pi),
            sk_pr: array(&record.sk_pr),
            sealer: SkSealer::new(record.cipher, &ours[..e_len])?.continuing_at(record.next_iv),
            opener: SkOpener::new(record.cipher, &theirs[..e_len])?,
        })
    }

    /// The keys of an IKE SA made by IKE_SA_INIT (RFC 7296 §2.14).
    ///
    /// `shared_secret` is g^ir, `ni`/`nr` the Nonce Data of IKE_SA_INIT, `spis` the IKE SPIs.
    pub fn derive(
        role: Role,
        cipher: Cipher,
        shared_secret: &[u8],
        ni: &[u8],
        nr: &[u8],
        spis: SpiPair,
    ) -> Result<Self, CryptoError> {
        check_nonce(ni)?;
        check_nonce(nr)?;
        // SKEYSEED = prf(Ni | Nr, g^ir). HMAC takes the whole variable-length key.
        let key: Zeroizing<Vec<u8>> = Zeroizing::new([ni, nr].concat());
        let skeyseed = prf_parts(&key, &[shared_secret]);
        Self::from_skeyseed(role, cipher, &skeyseed[..], ni, nr, spis)
    }

    /// The keys of the IKE SA that replaces this one (RFC 7296 §2.18).
    ///
    /// `role` is our role in the new SA: the initiator is whoever sent the CREATE_CHILD_SA
    /// request. `shared_secret` is that exchange's g^ir, `ni`/`nr` its Nonce Data, and `spis`
    /// the new IKE SA's SPIs (the initiator's from the request, the responder's from the
    /// response).
    pub fn rekey(
        &self,
        role: Role,
        cipher: Cipher,
        shared_secret: &[u8],
        ni: &[u8],
        nr: &[u8],
        spis: SpiPair,
    ) -> Result<Self, CryptoError> {
        check_nonce(ni)?;
        check_nonce(nr)?;
        // SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr), with the old SA's PRF (the same
        // PRF_HMAC_SHA2_256 here).
        let skeyseed = prf_parts(&self.sk_d[..], &[shared_secret, ni, nr]);
        Self::from_skeyseed(role, cipher, &skeyseed[..], ni, nr, spis)
    }

    fn from_skeyseed(
        role: Role,
        cipher: Cipher,
        skeyseed: &[u8],
        ni: &[u8],
        nr: &[u8],
        spis: SpiPair,
    ) -> Result<Self, CryptoError> {
        let e_len = key_material_len(cipher);
        // SK_d | SK_ai (0) | SK_ar (0) | SK_ei | SK_er | SK_pi | SK_pr
        let total = PRF_KEY_LEN + 2 * e_len + 2 * PRF_KEY_LEN;
        let km = prf_plus_parts(skeyseed, &[ni, nr, &spis.initiator, &spis.responder], total)?;
        let mut rest: &[u8] = &km;
        let mut take = |n: usize| {
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head
        };
        let sk_d = take(PRF_KEY_LEN);
        let sk_ei = take(e_len);
        let sk_er = take(e_len);
        let sk_pi = take(PRF_KEY_LEN);
        let sk_pr = take(PRF_KEY_LEN);

        let (ours, theirs) = match role {
            Role::Initiator => (sk_ei, sk_er),
            Role::Responder => (sk_er, sk_ei),
        };
        Ok(IkeSaKeys {
            role,
            cipher,
            spis,
            sk_d: array(sk_d),
            sk_ei: array(sk_ei),
            sk_er: array(sk_er),
            sk_pi: array(sk_pi),
            sk_pr: array(sk_pr),
            sealer: SkSealer::new(cipher, ours)?,
            opener: SkOpener::new(cipher, theirs)?,
        })
    }

    /// Child SA keys (RFC 7296 §2.17): `KEYMAT = prf+(SK_d, Ni | Nr)`, or
    /// `prf+(SK_d, g^ir (new) | Ni | Nr)` when the CREATE_CHILD_SA exchange had a KE payload.
    ///
    /// `ni`/`nr` are the Nonce Data of the exchange that creates the Child SA: IKE_SA_INIT's
    /// for the Child SA made in IKE_AUTH, the CREATE_CHILD_SA request's and response's
    /// otherwise. `esp_cipher` is the Child SA's AEAD.
    pub fn child_sa_keys(
        &self,
        esp_cipher: Cipher,
        new_shared_secret: Option<&[u8]>,
        ni: &[u8],
        nr: &[u8],
    ) -> Result<ChildSaKeys, CryptoError> {
        check_nonce(ni)?;
        check_nonce(nr)?;
        let len = esp_key_material_len(esp_cipher);
        let keymat = match new_shared_secret {
            Some(g_ir) => prf_plus_parts(&self.sk_d[..], &[g_ir, ni, nr], 2 * len)?,
            None => prf_plus_parts(&self.sk_d[..], &[ni, nr], 2 * len)?,
        };
        let (i_to_r, r_to_i) = keymat.split_at(len);
        Ok(ChildSaKeys {
            i_to_r: KeyMaterial::from_bytes(i_to_r).map_err(|_| CryptoError::Library("ESP key material length"))?,
            r_to_i: KeyMaterial::from_bytes(r_to_i).map_err(|_| CryptoError::Library("ESP key material length"))?,
        })
    }

    /// Our role in this IKE SA.
    #[cfg(test)]
    pub fn role(&self) -> Role {
        self.role
    }

    /// The IKE SA's AEAD.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// The IKE SA's SPIs.
    #[cfg(test)]
    pub fn spis(&self) -> SpiPair {
        self.spis
    }

    /// Seals the SK payloads we send.
    pub fn sealer(&mut self) -> &mut SkSealer {
        &mut self.sealer
    }

    /// Opens the SK payloads the peer sends.
    pub fn opener(&self) -> &SkOpener {
        &self.opener
    }

    /// SK_d, for Child SA keys and for rekeying.
    #[cfg(test)]
    pub fn sk_d(&self) -> &[u8] {
        &self.sk_d[..]
    }

    /// SK_ei (key | salt), e.g. for a test's decryption table. SK_ai is empty.
    #[cfg(test)]
    pub fn sk_ei(&self) -> &[u8] {
        &self.sk_ei[..]
    }

    /// SK_er (key | salt). SK_ar is empty.
    #[cfg(test)]
    pub fn sk_er(&self) -> &[u8] {
        &self.sk_er[..]
    }

    /// SK_pi, used in the initiator's AUTH.
    pub fn sk_pi(&self) -> &[u8] {
        &self.sk_pi[..]
    }

    /// SK_pr, used in the responder's AUTH.
    pub fn sk_pr(&self) -> &[u8] {
        &self.sk_pr[..]
    }

    /// The key of the diagnostic query between the two nodes of this IKE SA (`diag::query`):
    /// prf+(SK_d, "meshd diagnostic query v1"), the same at both ends, and unlike SK_d never
    /// used to key anything else.
    pub fn query_key(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        prf_plus_parts(&self.sk_d[..], &[QUERY_KEY_LABEL], PRF_KEY_LEN)
    }

    /// SK_p of `signer`: SK_pi for the initiator's AUTH, SK_pr for the responder's.
    pub fn sk_p(&self, signer: Role) -> &[u8] {
        match signer {
            Role::Initiator => self.sk_pi(),
            Role::Responder => self.sk_pr(),
        }
    }

    /// The AUTH data we send with a pre-shared key (RFC 7296 §2.15). `octets` describe our own
    /// signed octets: our first message, the peer's nonce, our ID payload body.
    pub fn psk_auth(&self, psk: &[u8], octets: &SignedOctets<'_>) -> Zeroizing<[u8; 32]> {
        auth::psk_auth(psk, self.sk_p(self.role), octets)
    }

    /// Checks the peer's AUTH data in constant time. `octets` describe the peer's signed
    /// octets: the peer's first message, our nonce, the peer's ID payload body.
    pub fn verify_peer_psk_auth(
        &self,
        psk: &[u8],
        octets: &SignedOctets<'_>,
        received: &[u8],
    ) -> Result<(), CryptoError> {
        auth::verify_psk_auth(psk, self.sk_p(self.role.peer()), octets, received)
    }
}

fn array<const N: usize>(bytes: &[u8]) -> Zeroizing<[u8; N]> {
    let mut out = Zeroizing::new([0u8; N]);
    out.copy_from_slice(bytes);
    out
}

/// ESP key material per direction for `cipher`: 32-byte key and 4-byte salt for both AEADs
/// (RFC 4106 §8.1, RFC 7634 §2).
const fn esp_key_material_len(cipher: Cipher) -> usize {
    match cipher {
        Cipher::Aes256Gcm16 | Cipher::Chacha20Poly1305 => KEY_MATERIAL_LEN,
    }
}

impl fmt::Debug for IkeSaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IkeSaKeys")
            .field("role", &self.role)
            .field("cipher", &self.cipher.as_str())
            .field("spis", &self.spis)
            .finish_non_exhaustive()
    }
}

/// The ESP keys of one Child SA: initiator-to-responder first, as KEYMAT yields them (RFC 7296
/// §2.17). "Initiator" is the initiator of the exchange that created the Child SA (IKE_AUTH's,
/// or the CREATE_CHILD_SA request's sender), not necessarily the IKE SA's.
#[derive(Debug)]
pub struct ChildSaKeys {
    i_to_r: KeyMaterial,
    r_to_i: KeyMaterial,
}

impl ChildSaKeys {
    /// Keys for ESP from the exchange's initiator to its responder.
    #[cfg(test)]
    pub fn initiator_to_responder(&self) -> &KeyMaterial {
        &self.i_to_r
    }

    /// Keys for ESP from the exchange's responder to its initiator.
    #[cfg(test)]
    pub fn responder_to_initiator(&self) -> &KeyMaterial {
        &self.r_to_i
    }

    /// Keys for the ESP we send, given our role in the exchange that created the Child SA.
    #[cfg(test)]
    pub fn outbound(&self, role: Role) -> &KeyMaterial {
        match role {
            Role::Initiator => &self.i_to_r,
            Role::Responder => &self.r_to_i,
        }
    }

    /// Keys for the ESP we receive, given our role in the exchange that created the Child SA.
    #[cfg(test)]
    pub fn inbound(&self, role: Role) -> &KeyMaterial {
        self.outbound(role.peer())
    }

    /// `(outbound, inbound)` by value, given our role in the creating exchange.
    pub fn into_directions(self, role: Role) -> (KeyMaterial, KeyMaterial) {
        match role {
            Role::Initiator => (self.i_to_r, self.r_to_i),
            Role::Responder => (self.r_to_i, self.i_to_r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::crypto::dh::X25519KeyPair;
    use crate::ike::crypto::test_util::{hex, to_hex};

    // Fixed inputs. g^ir is RFC 7748 §6.1's shared secret, so the whole chain from the DH
    // test vector to the keys is pinned.
    const G_IR: &str = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
    const SPIS: SpiPair = SpiPair {
        initiator: [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08],
        responder: [0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18],
    };
    fn ni() -> Vec<u8> {
        (0u8..32).collect()
    }
    fn nr() -> Vec<u8> {
        (32u8..64).collect()
    }

    /// Expected keys computed independently with Python's hmac module:
    ///
    /// ```text
    /// python3 -c "import hmac,hashlib;p=lambda k,d:hmac.new(k,d,hashlib.sha256).digest();pp=lambda k,s,n:(lambda T:[T.append(p(k,T[-1]+s+bytes([i]))) for i in range(1,n//32+2)] and b''.join(T[1:])[:n])([b'']);g=bytes.fromhex('4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742');Ni=bytes(range(32));Nr=bytes(range(32,64));S=bytes.fromhex('01020304050607081112131415161718');ss=p(Ni+Nr,g);km=pp(ss,Ni+Nr+S,168);print('SKEYSEED',ss.hex());[print(n,km[a:b].hex()) for n,a,b in [('SK_d',0,32),('SK_ei',32,68),('SK_er',68,104),('SK_pi',104,136),('SK_pr',136,168)]]"
    /// ```
    ///
    /// Both AEADs take 36 bytes for SK_ei/SK_er (RFC 5282 §7.1, RFC 7634 §2), so the split, and
    /// the expected values, are the same for both.
    const SKEYSEED: &str = "f9248cca691bd74ddd9479bc6fadb2aeddd0e609fe92fc2d839ca617d1302cb6";
    const SK_D: &str = "873cd5bd21d5d40481daa8b14d9ba50ba66f0fe9604764695d3714d94667b926";
    const SK_EI: &str = "9302c66b947c55e0cf4e394c8fb0604c85818e0af336ec66259c2c3ead11d042b0b6adb1";
    const SK_ER: &str = "cde3859f71fd5713b11c80630bc6653e6849aac8e0ce3a609f017841a7f0d605c02db96f";
    const SK_PI: &str = "721d76bb7099af838ea90083fb88845179dfff839f5de7a793fca39600e596e0";
    const SK_PR: &str = "e6cfe467ae5711adb853b46d93717b9a66e4cae8f4c28cb062dc95becee57c5e";

    #[test]
    fn ike_sa_keys_against_python() {
        let g = hex(G_IR);
        // SKEYSEED itself, through the same PRF call as `derive`.
        let seed_key = [ni(), nr()].concat();
        assert_eq!(to_hex(&prf_parts(&seed_key, &[&g])[..]), SKEYSEED);
        for cipher in [Cipher::Aes256Gcm16, Cipher::Chacha20Poly1305] {
            for role in [Role::Initiator, Role::Responder] {
                let k = IkeSaKeys::derive(role, cipher, &g, &ni(), &nr(), SPIS).unwrap();
                assert_eq!(to_hex(k.sk_d()), SK_D, "{cipher:?}");
                assert_eq!(to_hex(k.sk_ei()), SK_EI, "{cipher:?}");
                assert_eq!(to_hex(k.sk_er()), SK_ER, "{cipher:?}");
                assert_eq!(to_hex(k.sk_pi()), SK_PI, "{cipher:?}");
                assert_eq!(to_hex(k.sk_pr()), SK_PR, "{cipher:?}");
                assert_eq!(to_hex(k.sk_p(Role::Initiator)), SK_PI);
                assert_eq!(to_hex(k.sk_p(Role::Responder)), SK_PR);
                assert_eq!((k.role(), k.cipher(), k.spis()), (role, cipher, SPIS));
                assert_eq!(k.sealer.cipher(), cipher);
                assert_eq!(k.opener.cipher(), cipher);
            }
        }
    }

    /// Initiator seals with SK_ei and the responder opens with it; the other way with SK_er.
    #[test]
    fn sk_directions_follow_the_role() {
        let g = hex(G_IR);
        for cipher in [Cipher::Aes256Gcm16, Cipher::Chacha20Poly1305] {
            let mut i = IkeSaKeys::derive(Role::Initiator, cipher, &g, &ni(), &nr(), SPIS).unwrap();
            let mut r = IkeSaKeys::derive(Role::Responder, cipher, &g, &ni(), &nr(), SPIS).unwrap();
            let mut body = Vec::new();
            i.sealer().seal(b"hdr", b"from i", &mut body).unwrap();
            assert_eq!(&r.opener().open(b"hdr", &body).unwrap()[..], b"from i");
            // The initiator cannot open its own direction's traffic with its opener.
            assert!(i.opener().open(b"hdr", &body).is_err());
            // The body is SK_ei's: check against a sealer made from SK_ei directly.
            let mut direct = SkSealer::new(cipher, &hex(SK_EI)).unwrap();
            let mut body2 = Vec::new();
            direct.seal(b"hdr", b"from i", &mut body2).unwrap();
            assert_eq!(body, body2);

            let mut body = Vec::new();
            r.sealer().seal(b"hdr", b"from r", &mut body).unwrap();
            assert_eq!(&i.opener().open(b"hdr", &body).unwrap()[..], b"from r");
            assert!(r.opener().open(b"hdr", &body).is_err());
            let mut direct = SkSealer::new(cipher, &hex(SK_ER)).unwrap();
            let mut body2 = Vec::new();
            direct.seal(b"hdr", b"from r", &mut body2).unwrap();
            assert_eq!(body, body2);
        }
    }

    /// Child SA KEYMAT and a rekeyed IKE SA, computed independently with Python's hmac module
    /// (SK_d as derived above; the "new" g^ir is an arbitrary 32-byte value, RFC 7748 §5.2's
    /// first output; the CREATE_CHILD_SA nonces are bytes 64..96 and 96..128; the new SPIs
    /// 2122..28 and 3132..38):
    ///
    /// ```text
    /// python3 -c "import hmac,hashlib;p=lambda k,d:hmac.new(k,d,hashlib.sha256).digest();pp=lambda k,s,n:(lambda T:[T.append(p(k,T[-1]+s+bytes([i]))) for i in range(1,n//32+2)] and b''.join(T[1:])[:n])([b'']);g=bytes.fromhex('4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742');Ni=bytes(range(32));Nr=bytes(range(32,64));S=bytes.fromhex('01020304050607081112131415161718');d=pp(p(Ni+Nr,g),Ni+Nr+S,32);g2=bytes.fromhex('c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552');N2i=bytes(range(64,96));N2r=bytes(range(96,128));S2=bytes.fromhex('21222324252627283132333435363738');print('child', pp(d,Ni+Nr,72).hex());print('child_pfs',pp(d,g2+N2i+N2r,72).hex());km=pp(p(d,g2+N2i+N2r),N2i+N2r+S2,168);print('rekey_skeyseed',p(d,g2+N2i+N2r).hex());[print(n,km[a:b].hex()) for n,a,b in [('SK_d',0,32),('SK_ei',32,68),('SK_er',68,104),('SK_pi',104,136),('SK_pr',136,168)]]"
    /// ```
    const G_NEW: &str = "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552";
    const NEW_SPIS: SpiPair = SpiPair {
        initiator: [0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28],
        responder: [0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38],
    };
    fn ni2() -> Vec<u8> {
        (64u8..96).collect()
    }
    fn nr2() -> Vec<u8> {
        (96u8..128).collect()
    }
    const CHILD_KEYMAT: &str = "809cd037f5cd591ba412eddf8c9c0138079ebee6bd157dc4f4d7775119a0b493a9cbc919\
                                29d5b87ac70bb38f513ba4d2294f001411a254796ed750e33d166de2a574bbbb6a8530d8";
    const CHILD_KEYMAT_PFS: &str = "29fc55960549ade8fb523b14b002b6f6e8f31f4e4e76e4d2007c466e98e9430ba5477fbc\
                                    aad3825192ca3416a049b6241462cad382ab7b98df7eed3b8df9d5ab94c5ec5f66116065";
    const REKEY_SK_D: &str = "a10beeba8a7fe9f8579e1d6b516b60984c15490966d61c9ac7c2d4783a6f2ffd";
    const REKEY_SK_EI: &str = "628c881c5a8bd6e56285e8e95f844acba8ed9b91c2e83e5338939c2340423673c0c54016";
    const REKEY_SK_ER: &str = "bdc4fa15ba3f6f3ae61225f98628efbf9c5a9a82da5f1b467e1753ec18d4862bcbf0e76d";
    const REKEY_SK_PI: &str = "1a0196032888560c2da9362346e7e68e0a54b5da45d73cb11efb972f16ea9fef";
    const REKEY_SK_PR: &str = "505929d9d48da1bcb1166ac94905b15102e6cb13eacf4c8bce6f9bfffa901439";

    fn km_hex(km: &KeyMaterial) -> String {
        to_hex(&[km.key(), &km.salt()[..]].concat())
    }

    #[test]
    fn child_sa_keymat_against_python() {
        let k = IkeSaKeys::derive(Role::Initiator, Cipher::Aes256Gcm16, &hex(G_IR), &ni(), &nr(), SPIS).unwrap();
        for esp in [Cipher::Aes256Gcm16, Cipher::Chacha20Poly1305] {
            // The first Child SA (IKE_AUTH): IKE_SA_INIT's nonces, no new DH.
            let c = k.child_sa_keys(esp, None, &ni(), &nr()).unwrap();
            assert_eq!(km_hex(c.initiator_to_responder()), CHILD_KEYMAT[..72]);
            assert_eq!(km_hex(c.responder_to_initiator()), CHILD_KEYMAT[72..]);

            // CREATE_CHILD_SA with a KE payload (PFS).
            let c = k.child_sa_keys(esp, Some(&hex(G_NEW)), &ni2(), &nr2()).unwrap();
            assert_eq!(km_hex(c.initiator_to_responder()), CHILD_KEYMAT_PFS[..72]);
            assert_eq!(km_hex(c.responder_to_initiator()), CHILD_KEYMAT_PFS[72..]);

            // Directions by role in the creating exchange.
            assert_eq!(km_hex(c.outbound(Role::Initiator)), CHILD_KEYMAT_PFS[..72]);
            assert_eq!(km_hex(c.inbound(Role::Initiator)), CHILD_KEYMAT_PFS[72..]);
            assert_eq!(km_hex(c.outbound(Role::Responder)), CHILD_KEYMAT_PFS[72..]);
            assert_eq!(km_hex(c.inbound(Role::Responder)), CHILD_KEYMAT_PFS[..72]);
            let (out, inb) = c.into_directions(Role::Responder);
            assert_eq!(km_hex(&out), CHILD_KEYMAT_PFS[72..]);
            assert_eq!(km_hex(&inb), CHILD_KEYMAT_PFS[..72]);
        }
    }

    #[test]
    fn rekeyed_ike_sa_against_python() {
        let old = IkeSaKeys::derive(Role::Responder, Cipher::Chacha20Poly1305, &hex(G_IR), &ni(), &nr(), SPIS).unwrap();
        for cipher in [Cipher::Aes256Gcm16, Cipher::Chacha20Poly1305] {
            // The old SA's responder initiates the rekey: it is the new SA's initiator.
            let new = old.rekey(Role::Initiator, cipher, &hex(G_NEW), &ni2(), &nr2(), NEW_SPIS).unwrap();
            assert_eq!(to_hex(new.sk_d()), REKEY_SK_D);
            assert_eq!(to_hex(new.sk_ei()), REKEY_SK_EI);
            assert_eq!(to_hex(new.sk_er()), REKEY_SK_ER);
            assert_eq!(to_hex(new.sk_pi()), REKEY_SK_PI);
            assert_eq!(to_hex(new.sk_pr()), REKEY_SK_PR);
            assert_eq!((new.role(), new.cipher(), new.spis()), (Role::Initiator, cipher, NEW_SPIS));
        }
    }

    /// Two ends with their own DH key pairs and the same public inputs end with the same keys,
    /// can talk over SK, authenticate each other with the PSK, and agree on Child SA keys.
    #[test]
    fn pairwise_derivation_agrees() {
        for cipher in [Cipher::Aes256Gcm16, Cipher::Chacha20Poly1305] {
            let i_dh = X25519KeyPair::generate().unwrap();
            let r_dh = X25519KeyPair::generate().unwrap();
            let (i_pub, r_pub) = (*i_dh.public_key(), *r_dh.public_key());
            let i_gir = i_dh.agree(&r_pub).unwrap();
            let r_gir = r_dh.agree(&i_pub).unwrap();
            let ni = crate::ike::rng::nonce(&mut crate::ike::rng::SystemRng::new()).unwrap();
            let nr = crate::ike::rng::nonce(&mut crate::ike::rng::SystemRng::new()).unwrap();
            let spis = SpiPair { initiator: [0xaa; 8], responder: [0xbb; 8] };
            let mut i = IkeSaKeys::derive(Role::Initiator, cipher, &i_gir[..], &ni, &nr, spis).unwrap();
            let mut r = IkeSaKeys::derive(Role::Responder, cipher, &r_gir[..], &ni, &nr, spis).unwrap();
            for (a, b) in [
                (i.sk_d(), r.sk_d()),
                (i.sk_ei(), r.sk_ei()),
                (i.sk_er(), r.sk_er()),
                (i.sk_pi(), r.sk_pi()),
                (i.sk_pr(), r.sk_pr()),
            ] {
                assert_eq!(a, b);
            }
            // All seven keys differ from one another.
            let all = [i.sk_d(), &i.sk_ei()[..32], &i.sk_er()[..32], i.sk_pi(), i.sk_pr()];
            for x in 0..all.len() {
                for y in x + 1..all.len() {
                    assert_ne!(all[x], all[y]);
                }
            }

            let mut body = Vec::new();
            i.sealer().seal(b"h", b"IDi AUTH SA TSi TSr", &mut body).unwrap();
            assert_eq!(&r.opener().open(b"h", &body).unwrap()[..], b"IDi AUTH SA TSi TSr");
            let mut body = Vec::new();
            r.sealer().seal(b"h", b"IDr AUTH SA TSi TSr", &mut body).unwrap();
            assert_eq!(&i.opener().open(b"h", &body).unwrap()[..], b"IDr AUTH SA TSi TSr");

            let psk = b"a pre-shared key of at least 32 bytes!";
            let msg1 = b"IKE_SA_INIT request bytes";
            let msg2 = b"IKE_SA_INIT response bytes";
            let idi = hex("01000000c6120001");
            let idr = hex("01000000c6120002");
            let i_octets = SignedOctets { real_message: msg1, peer_nonce: &nr, id_payload_body: &idi };
            let r_octets = SignedOctets { real_message: msg2, peer_nonce: &ni, id_payload_body: &idr };
            let auth_i = i.psk_auth(psk, &i_octets);
            let auth_r = r.psk_auth(psk, &r_octets);
            assert_ne!(*auth_i, *auth_r);
            r.verify_peer_psk_auth(psk, &i_octets, &auth_i[..]).unwrap();
            // Both ends derive the same diagnostic query key, and it is not SK_d itself.
            assert_eq!(i.query_key().unwrap(), r.query_key().unwrap());
            assert_ne!(&i.query_key().unwrap()[..], i.sk_d());
            i.verify_peer_psk_auth(psk, &r_octets, &auth_r[..]).unwrap();
            // An AUTH is not valid for the other direction, nor with another PSK.
            assert_eq!(i.verify_peer_psk_auth(psk, &i_octets, &auth_i[..]).unwrap_err(), CryptoError::AuthMismatch);
            assert_eq!(
                r.verify_peer_psk_auth(b"another pre-shared key, also 32 bytes", &i_octets, &auth_i[..]).unwrap_err(),
                CryptoError::AuthMismatch
            );

            let ci = i.child_sa_keys(cipher, None, &ni, &nr).unwrap();
            let cr = r.child_sa_keys(cipher, None, &ni, &nr).unwrap();
            assert_eq!(km_hex(ci.outbound(Role::Initiator)), km_hex(cr.inbound(Role::Responder)));
            assert_eq!(km_hex(ci.inbound(Role::Initiator)), km_hex(cr.outbound(Role::Responder)));
            assert_ne!(km_hex(ci.outbound(Role::Initiator)), km_hex(ci.inbound(Role::Initiator)));
        }
    }

    #[test]
    fn nonce_lengths_are_checked() {
        let g = hex(G_IR);
        let c = Cipher::Aes256Gcm16;
        for bad in [0usize, 8, 15, 257] {
            let n = vec![1u8; bad];
            assert_eq!(
                IkeSaKeys::derive(Role::Initiator, c, &g, &n, &nr(), SPIS).unwrap_err(),
                CryptoError::NonceLength { got: bad }
            );
            assert_eq!(
                IkeSaKeys::derive(Role::Initiator, c, &g, &ni(), &n, SPIS).unwrap_err(),
                CryptoError::NonceLength { got: bad }
            );
        }
        for good in [16usize, 256] {
            let n = vec![1u8; good];
            let k = IkeSaKeys::derive(Role::Initiator, c, &g, &n, &n, SPIS).unwrap();
            assert!(k.child_sa_keys(c, None, &n, &n).is_ok());
            assert!(k.rekey(Role::Responder, c, &g, &n, &n, SPIS).is_ok());
            assert!(k.child_sa_keys(c, None, &n, &[0; 15]).is_err());
            assert!(k.rekey(Role::Responder, c, &g, &[0; 15], &n, SPIS).is_err());
        }
    }

    #[test]
    fn debug_shows_no_keys() {
        let k = IkeSaKeys::derive(Role::Initiator, Cipher::Aes256Gcm16, &hex(G_IR), &ni(), &nr(), SPIS).unwrap();
        let shown = format!("{k:?} {k:#?}");
        assert_eq!(
            format!("{k:?}"),
            "IkeSaKeys { role: Initiator, cipher: \"aes256gcm16\", \
             spis: SpiPair(0102030405060708_i, 1112131415161718_r), .. }"
        );
        for key in [SK_D, SK_EI, SK_ER, SK_PI, SK_PR] {
            assert!(!shown.contains(&key[..8]), "{shown}");
        }
        let c = k.child_sa_keys(Cipher::Aes256Gcm16, None, &ni(), &nr()).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains(&CHILD_KEYMAT[..8]), "{shown}");
    }
}
