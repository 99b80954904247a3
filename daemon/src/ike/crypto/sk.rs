//! The body of the Encrypted (SK) payload with an AEAD (RFC 7296 §3.14, RFC 5282 §3-5 for
//! AES-GCM, RFC 7634 §2-3 for ChaCha20-Poly1305):
//!
//! ```text
//! | IV (8) | inner payloads | padding (0..255) | pad length (1) | ICV (16) |
//!          \_______________ encrypted ______________________/
//! ```
//!
//! The nonce is `salt (4) | IV (8)`, the salt being the last 4 bytes of SK_ei or SK_er. The AAD
//! is the message from the first octet of the IKE header through the last octet of the SK
//! payload's generic header (RFC 5282 §5.1), with every length field already final: build the
//! header with [`sk_body_len`], then seal. We send no padding (RFC 5282 §3 allows 0 bytes) and
//! accept any.
//!
//! The IV we send is a per-key 64-bit counter: each direction has its own key
//! (SK_ei or SK_er), so a counter per [`SkSealer`] is unique for its key, which is all RFC 5282
//! §3.1 and RFC 7634 §2 require. Retransmissions resend the same bytes, never reseal.

use core::fmt;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use mesh_config::Cipher;
use zeroize::{Zeroize, Zeroizing};

use super::CryptoError;

/// Length of the explicit IV at the start of the SK payload body.
pub const SK_IV_LEN: usize = 8;
/// Length of the ICV at its end (both AEADs use 16).
pub const SK_ICV_LEN: usize = 16;
/// The AEAD key length (AES-256, ChaCha20).
pub const SK_KEY_LEN: usize = 32;
/// The salt length: the last bytes of SK_e.
pub const SK_SALT_LEN: usize = 4;
/// Length of SK_ei and SK_er: key then salt (RFC 5282 §7.1, RFC 7634 §2).
pub const SK_KEY_MATERIAL_LEN: usize = SK_KEY_LEN + SK_SALT_LEN;
/// Bytes an SK body adds to its inner payloads when we seal (IV, pad length, ICV; no padding).
pub const SK_OVERHEAD: usize = SK_IV_LEN + 1 + SK_ICV_LEN;

/// Length of the SK payload body that [`SkSealer::seal`] produces for `inner_len` bytes of
/// inner payloads. The SK payload's length field is this plus 4, and the message grows by that.
pub const fn sk_body_len(inner_len: usize) -> usize {
    inner_len + SK_OVERHEAD
}

/// SK_e material length for `cipher` (the same 32 + 4 for both AEADs we support).
pub(crate) const fn key_material_len(cipher: Cipher) -> usize {
    match cipher {
        // RFC 5282 §7.1: a 256-bit key and a 4-octet salt.
        Cipher::Aes256Gcm16 => SK_KEY_MATERIAL_LEN,
        // RFC 7634 §2 (by way of §3): a 256-bit key and a 4-octet salt.
        Cipher::Chacha20Poly1305 => SK_KEY_MATERIAL_LEN,
    }
}

/// One direction's AEAD key and salt.
struct SkKey {
    cipher: Cipher,
    key: LessSafeKey,
    salt: [u8; SK_SALT_LEN],
}

impl SkKey {
    fn new(cipher: Cipher, material: &[u8]) -> Result<Self, CryptoError> {
        if material.len() != key_material_len(cipher) {
            return Err(CryptoError::Library("SK_e has the wrong length"));
        }
        let algorithm = match cipher {
            Cipher::Aes256Gcm16 => &AES_256_GCM,
            Cipher::Chacha20Poly1305 => &CHACHA20_POLY1305,
        };
        debug_assert_eq!(algorithm.tag_len(), SK_ICV_LEN);
        let unbound = UnboundKey::new(algorithm, &material[..SK_KEY_LEN])
            .map_err(|_| CryptoError::Library("the AEAD refused SK_e"))?;
        let mut salt = [0u8; SK_SALT_LEN];
        salt.copy_from_slice(&material[SK_KEY_LEN..]);
        Ok(SkKey { cipher, key: LessSafeKey::new(unbound), salt })
    }

    fn nonce(&self, iv: &[u8; SK_IV_LEN]) -> Nonce {
        let mut n = [0u8; SK_SALT_LEN + SK_IV_LEN];
        n[..SK_SALT_LEN].copy_from_slice(&self.salt);
        n[SK_SALT_LEN..].copy_from_slice(iv);
        Nonce::assume_unique_for_key(n)
    }
}

impl Drop for SkKey {
    fn drop(&mut self) {
        self.salt.zeroize();
    }
}

/// Seals outgoing SK payload bodies with our direction's key (SK_ei for the initiator, SK_er
/// for the responder), numbering IVs itself.
pub struct SkSealer {
    key: SkKey,
    next_iv: u64,
}

/// Opens incoming SK payload bodies with the peer's direction key.
pub struct SkOpener {
    key: SkKey,
}

impl SkSealer {
    /// A sealer for SK_e material (`key | salt`). Made by [`IkeSaKeys`](super::IkeSaKeys), which
    /// makes exactly one per key so that the IV counter is the only one for that key.
    pub(crate) fn new(cipher: Cipher, material: &[u8]) -> Result<Self, CryptoError> {
        Ok(SkSealer { key: SkKey::new(cipher, material)?, next_iv: 0 })
    }

    /// The AEAD.
    #[cfg(test)]
    pub fn cipher(&self) -> Cipher {
        self.key.cipher
    }

    /// This sealer continuing at IV `next_iv` (an IKE SA handed over, `crate::upgrade`).
    pub(crate) fn continuing_at(mut self, next_iv: u64) -> Self {
        self.next_iv = next_iv;
        self
    }

    /// How many bodies this sealer has sealed (the next IV).
    pub fn sealed_count(&self) -> u64 {
        self.next_iv
    }

    /// Encrypts `inner` (the inner payload chain) and appends the SK payload body
    /// (`IV | ciphertext | ICV`, [`sk_body_len`]`(inner.len())` bytes) to `out`. `aad` is the
    /// message from the IKE header through the SK payload's generic header, with final lengths.
    #[cfg(test)]
    pub fn seal(&mut self, aad: &[u8], inner: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let iv = self.take_iv()?;
        seal_into(&self.key, iv, Some(aad), out, inner, &[])
    }

    /// Like [`seal`](Self::seal), with the AAD being all of `message` so far: write the IKE
    /// header and the SK generic header (final lengths) into `message`, then call this to
    /// append the body.
    pub fn seal_append(&mut self, message: &mut Vec<u8>, inner: &[u8]) -> Result<(), CryptoError> {
        let iv = self.take_iv()?;
        seal_into(&self.key, iv, None, message, inner, &[])
    }

    fn take_iv(&mut self) -> Result<[u8; SK_IV_LEN], CryptoError> {
        if self.next_iv == u64::MAX {
            return Err(CryptoError::SkIvExhausted);
        }
        let iv = self.next_iv;
        self.next_iv += 1;
        Ok(iv.to_be_bytes())
    }
}

/// Appends `IV | AEAD(inner | padding | pad length) | ICV` to `buf`. With `aad` `None`, the AAD
/// is what `buf` held before.
fn seal_into(
    key: &SkKey,
    iv: [u8; SK_IV_LEN],
    aad: Option<&[u8]>,
    buf: &mut Vec<u8>,
    inner: &[u8],
    padding: &[u8],
) -> Result<(), CryptoError> {
    let pad_len = u8::try_from(padding.len()).map_err(|_| CryptoError::Library("SK padding longer than 255 bytes"))?;
    let aad_end = buf.len();
    // Reserve first: no reallocation may leave plaintext behind.
    buf.reserve(sk_body_len(inner.len()) + padding.len());
    buf.extend_from_slice(&iv);
    let pt_start = buf.len();
    buf.extend_from_slice(inner);
    buf.extend_from_slice(padding);
    buf.push(pad_len);
    let (head, plaintext) = buf.split_at_mut(pt_start);
    let aad = aad.unwrap_or(&head[..aad_end]);
    match key.key.seal_in_place_separate_tag(key.nonce(&iv), Aad::from(aad), plaintext) {
        Ok(tag) => {
            buf.extend_from_slice(tag.as_ref());
            Ok(())
        }
        Err(_) => {
            buf[aad_end..].zeroize();
            buf.truncate(aad_end);
            Err(CryptoError::Library("AEAD seal"))
        }
    }
}

impl SkOpener {
    /// An opener for SK_e material (`key | salt`).
    pub(crate) fn new(cipher: Cipher, material: &[u8]) -> Result<Self, CryptoError> {
        Ok(SkOpener { key: SkKey::new(cipher, material)? })
    }

    /// The AEAD.
    #[cfg(test)]
    pub fn cipher(&self) -> Cipher {
        self.key.cipher
    }

    /// Verifies and decrypts an SK payload body (`IV | ciphertext | ICV`) and returns the inner
    /// payload chain without padding and pad length. `aad` is the received message from the
    /// IKE header through the SK payload's generic header.
    pub fn open(&self, aad: &[u8], body: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if body.len() < SK_OVERHEAD {
            return Err(CryptoError::SkTooShort { got: body.len() });
        }
        let (iv, sealed) = body.split_at(SK_IV_LEN);
        let iv: [u8; SK_IV_LEN] = iv.try_into().map_err(|_| CryptoError::SkIntegrity)?;
        let mut buf = Zeroizing::new(sealed.to_vec());
        let plain_len = self
            .key
            .key
            .open_in_place(self.key.nonce(&iv), Aad::from(aad), &mut buf[..])
            .map_err(|_| CryptoError::SkIntegrity)?
            .len();
        // plain_len >= 1: the body held at least IV, one byte and the ICV.
        let pad_len = buf[plain_len - 1];
        let available = plain_len - 1;
        if usize::from(pad_len) > available {
            return Err(CryptoError::SkPadLength { pad_len, available });
        }
        buf.truncate(available - usize::from(pad_len));
        Ok(buf)
    }
}

impl fmt::Debug for SkSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SkSealer")
            .field("cipher", &self.key.cipher.as_str())
            .field("sealed", &self.next_iv)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SkOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SkOpener").field("cipher", &self.key.cipher.as_str()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::crypto::test_util::hex;

    fn pair(cipher: Cipher, material: &[u8]) -> (SkSealer, SkOpener) {
        (SkSealer::new(cipher, material).unwrap(), SkOpener::new(cipher, material).unwrap())
    }

    /// Seals `plaintext` read as `inner | padding | pad length` through the same code path as
    /// `seal` (nonce = salt | IV, body = IV | ciphertext | ICV), with a chosen IV.
    fn seal_vector(cipher: Cipher, material: &[u8], iv: &[u8], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let key = SkKey::new(cipher, material).unwrap();
        let pad_len = usize::from(*plaintext.last().unwrap());
        let inner_len = plaintext.len() - 1 - pad_len;
        let (inner, rest) = plaintext.split_at(inner_len);
        let padding = &rest[..pad_len];
        let mut out = Vec::new();
        seal_into(&key, iv.try_into().unwrap(), Some(aad), &mut out, inner, padding).unwrap();
        out
    }

    /// "The Galois/Counter Mode of Operation (GCM)", McGrew & Viega (revised 2005), Appendix B,
    /// Test Case 16 (AES-256, 60-byte plaintext, 20-byte AAD); the same values are NIST's GCM
    /// examples, quoted by many test suites found with the search tool. The 96-bit IV
    /// `cafebabe facedbaddecaf888` is split into our salt (first 4 bytes, the end of SK_e) and
    /// the explicit IV (last 8, the start of the body). The plaintext's last byte (0x39 = 57)
    /// reads as the pad length, so the vector is `2 bytes of payload | 57 bytes of padding |
    /// 57`, and `open` must return those 2 bytes.
    #[test]
    fn aes256gcm_known_answer_test_case_16() {
        let material = hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308 cafebabe");
        let iv = hex("facedbaddecaf888");
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let plaintext = hex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
                             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39");
        let ciphertext = hex("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa
                              8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662");
        let tag = hex("76fc6ece0f4e1768cddf8853bb2d551b");

        let body = seal_vector(Cipher::Aes256Gcm16, &material, &iv, &aad, &plaintext);
        let want: Vec<u8> = [iv.clone(), ciphertext, tag].concat();
        assert_eq!(body, want);

        let (_, opener) = pair(Cipher::Aes256Gcm16, &material);
        assert_eq!(&opener.open(&aad, &body).unwrap()[..], &plaintext[..2]);
    }

    /// McGrew & Viega Test Case 15 (AES-256, 64-byte plaintext, no AAD). Its last plaintext
    /// byte, 0x55 = 85, is larger than the 63 bytes before it, so the body authenticates but
    /// `open` must refuse its padding.
    #[test]
    fn aes256gcm_known_answer_test_case_15() {
        let material = hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308 cafebabe");
        let iv = hex("facedbaddecaf888");
        let ciphertext = hex("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa
                              8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad");
        let tag = hex("b094dac5d93471bdec1a502270e3cc6c");
        let body: Vec<u8> = [iv, ciphertext, tag].concat();
        let (_, opener) = pair(Cipher::Aes256Gcm16, &material);
        assert_eq!(opener.open(&[], &body).unwrap_err(), CryptoError::SkPadLength { pad_len: 0x55, available: 63 });
        // One flipped tag bit and it is an integrity failure instead.
        let mut bad = body.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(opener.open(&[], &bad).unwrap_err(), CryptoError::SkIntegrity);
    }

    /// RFC 8439 §2.8.2, the AEAD_CHACHA20_POLY1305 example (values as in the RFC, also in
    /// Wycheproof's chacha20_poly1305_test.json tcId 1 "RFC 7539", found with the search tool).
    /// Its nonce `07000000 4041424344454647` is the RFC's 32-bit constant and 64-bit IV, which
    /// RFC 7634 §2 makes salt and explicit IV. The last plaintext byte, '.' = 46, reads as the
    /// pad length: `67 bytes of payload | 46 bytes of padding | 46`.
    #[test]
    fn chacha20poly1305_known_answer_rfc8439() {
        let material = hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f 07000000");
        let iv = hex("4041424344454647");
        let aad = hex("50515253c0c1c2c3c4c5c6c7");
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one \
                          tip for the future, sunscreen would be it."
            .to_vec();
        assert_eq!(plaintext.len(), 114);
        let ciphertext = hex("d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
                              3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
                              92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
                              3ff4def08e4b7a9de576d26586cec64b6116");
        let tag = hex("1ae10b594f09e26a7e902ecbd0600691");

        let body = seal_vector(Cipher::Chacha20Poly1305, &material, &iv, &aad, &plaintext);
        let want: Vec<u8> = [iv.clone(), ciphertext, tag].concat();
        assert_eq!(body, want);

        let (_, opener) = pair(Cipher::Chacha20Poly1305, &material);
        assert_eq!(&opener.open(&aad, &body).unwrap()[..], &plaintext[..67]);
    }

    /// An IKE-shaped message: 28-byte header and 4-byte SK generic header whose lengths are
    /// filled in from `sk_body_len`, then the body.
    fn message(sealer: &mut SkSealer, inner: &[u8]) -> Vec<u8> {
        let body_len = sk_body_len(inner.len());
        let total = 28 + 4 + body_len;
        let mut msg = Vec::new();
        msg.extend_from_slice(&[0x11; 8]); // SPIi
        msg.extend_from_slice(&[0x22; 8]); // SPIr
        msg.extend_from_slice(&[46, 0x20, 35, 0x08]); // next payload SK, version, IKE_AUTH, I
        msg.extend_from_slice(&1u32.to_be_bytes()); // message ID
        msg.extend_from_slice(&u32::try_from(total).unwrap().to_be_bytes());
        msg.extend_from_slice(&[35, 0]); // first inner payload IDi, flags
        msg.extend_from_slice(&u16::try_from(4 + body_len).unwrap().to_be_bytes());
        sealer.seal_append(&mut msg, inner).unwrap();
        assert_eq!(msg.len(), total);
        msg
    }

    #[test]
    fn round_trip_and_tamper_detection() {
        for cipher in [Cipher::Aes256Gcm16, Cipher::Chacha20Poly1305] {
            let material: Vec<u8> = (0u8..36).collect();
            let (mut sealer, opener) = pair(cipher, &material);
            let inner = b"inner payload chain: IDi, AUTH, SA, TSi, TSr".to_vec();
            let msg = message(&mut sealer, &inner);
            let (aad, body) = msg.split_at(32);
            assert_eq!(&opener.open(aad, body).unwrap()[..], &inner[..]);

            // `seal` with the AAD given separately gives the same bytes for the same IV.
            let (mut sealer2, _) = pair(cipher, &material);
            let mut body2 = Vec::new();
            sealer2.seal(aad, &inner, &mut body2).unwrap();
            assert_eq!(body2, body);

            // Every byte matters: AAD, IV, ciphertext and ICV.
            for i in 0..msg.len() {
                let mut bad = msg.clone();
                bad[i] ^= 0x80;
                let (aad, body) = bad.split_at(32);
                assert_eq!(opener.open(aad, body).unwrap_err(), CryptoError::SkIntegrity, "{cipher:?} byte {i}");
            }
            // A longer or shorter AAD, a truncated body.
            assert!(opener.open(&msg[..31], &msg[32..]).is_err());
            assert!(opener.open(&msg[..32], &msg[32..msg.len() - 1]).is_err());

            // The wrong key (the other direction's, say).
            let mut other = material.clone();
            other[0] ^= 1;
            let (_, wrong) = pair(cipher, &other);
            assert_eq!(wrong.open(aad, body).unwrap_err(), CryptoError::SkIntegrity);
            // The right key but a different salt.
            let mut other = material.clone();
            other[35] ^= 1;
            let (_, wrong) = pair(cipher, &other);
            assert_eq!(wrong.open(aad, body).unwrap_err(), CryptoError::SkIntegrity);
        }
        // The two AEADs differ with the same key material.
        let material: Vec<u8> = (0u8..36).collect();
        let (mut gcm, _) = pair(Cipher::Aes256Gcm16, &material);
        let (_, chacha) = pair(Cipher::Chacha20Poly1305, &material);
        let msg = message(&mut gcm, b"x");
        assert!(chacha.open(&msg[..32], &msg[32..]).is_err());
    }

    #[test]
    fn empty_inner_chain_and_short_bodies() {
        let material = [7u8; 36];
        let (mut sealer, opener) = pair(Cipher::Chacha20Poly1305, &material);
        let mut body = Vec::new();
        sealer.seal(b"aad", &[], &mut body).unwrap();
        assert_eq!(body.len(), SK_OVERHEAD);
        assert!(opener.open(b"aad", &body).unwrap().is_empty());
        for len in 0..SK_OVERHEAD {
            assert_eq!(opener.open(b"aad", &body[..len]).unwrap_err(), CryptoError::SkTooShort { got: len });
        }
    }

    #[test]
    fn ivs_count_up_and_never_repeat() {
        let (mut sealer, opener) = pair(Cipher::Aes256Gcm16, &[1u8; 36]);
        let mut seen = std::collections::HashSet::new();
        for n in 0..5u64 {
            assert_eq!(sealer.sealed_count(), n);
            let mut body = Vec::new();
            sealer.seal(b"h", b"same plaintext", &mut body).unwrap();
            assert_eq!(body[..8], n.to_be_bytes());
            assert!(seen.insert(body.clone()));
            assert_eq!(&opener.open(b"h", &body).unwrap()[..], b"same plaintext");
        }
        sealer.next_iv = u64::MAX - 1;
        let mut body = Vec::new();
        sealer.seal(b"h", b"last", &mut body).unwrap();
        assert_eq!(body[..8], (u64::MAX - 1).to_be_bytes());
        let mut out = b"untouched".to_vec();
        assert_eq!(sealer.seal(b"h", b"one too many", &mut out).unwrap_err(), CryptoError::SkIvExhausted);
        assert_eq!(out, b"untouched");
    }

    #[test]
    fn key_material_length_is_checked() {
        assert!(SkSealer::new(Cipher::Aes256Gcm16, &[0; 35]).is_err());
        assert!(SkOpener::new(Cipher::Chacha20Poly1305, &[0; 37]).is_err());
    }

    #[test]
    fn debug_shows_no_key() {
        let (sealer, opener) = pair(Cipher::Aes256Gcm16, &[0xab; 36]);
        assert_eq!(format!("{sealer:?}"), "SkSealer { cipher: \"aes256gcm16\", sealed: 0, .. }");
        assert_eq!(format!("{opener:?}"), "SkOpener { cipher: \"aes256gcm16\", .. }");
    }
}
