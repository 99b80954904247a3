//! The AEAD under ESP: nonce = salt || IV, tag of [`ICV_LEN`] bytes, in place.

use core::fmt;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use mesh_config::Cipher;
use zeroize::Zeroize;

use super::key::{CryptoError, KeyMaterial, SALT_LEN};
use super::{ICV_LEN, IV_LEN};

/// One direction's AEAD key and salt. `Send + Sync`; every operation takes `&self`.
///
/// The expanded key lives inside aws-lc, which frees it with `OPENSSL_free` (that wipes the
/// allocation); the salt kept here is zeroized on drop.
pub(crate) struct AeadKey {
    cipher: Cipher,
    key: LessSafeKey,
    salt: [u8; SALT_LEN],
    /// Kept for `ikectl sa keys` (zeroized on drop like every `KeyMaterial`).
    material: KeyMaterial,
}

/// The AEAD refused to seal (only on an internal library failure) or to open (the tag did not
/// verify, or the input was shorter than a tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AeadFailure;

impl AeadKey {
    pub(crate) fn new(cipher: Cipher, km: &KeyMaterial) -> Result<Self, CryptoError> {
        let algorithm = match cipher {
            Cipher::Aes256Gcm16 => &AES_256_GCM,
            Cipher::Chacha20Poly1305 => &CHACHA20_POLY1305,
        };
        debug_assert_eq!(algorithm.tag_len(), ICV_LEN);
        let unbound = UnboundKey::new(algorithm, km.key()).map_err(|_| CryptoError::KeyRejected)?;
        Ok(AeadKey { cipher, key: LessSafeKey::new(unbound), salt: km.salt(), material: km.duplicate() })
    }

    pub(crate) fn cipher(&self) -> Cipher {
        self.cipher
    }

    pub(crate) fn material(&self) -> &KeyMaterial {
        &self.material
    }

    fn nonce(&self, iv: &[u8; IV_LEN]) -> Nonce {
        let mut n = [0u8; SALT_LEN + IV_LEN];
        n[..SALT_LEN].copy_from_slice(&self.salt);
        n[SALT_LEN..].copy_from_slice(iv);
        Nonce::assume_unique_for_key(n)
    }

    /// Encrypts `data` in place and returns the tag.
    pub(crate) fn seal(&self, iv: &[u8; IV_LEN], aad: &[u8], data: &mut [u8]) -> Result<[u8; ICV_LEN], AeadFailure> {
        let tag = self.key.seal_in_place_separate_tag(self.nonce(iv), Aad::from(aad), data).map_err(|_| AeadFailure)?;
        let tag = tag.as_ref();
        if tag.len() != ICV_LEN {
            return Err(AeadFailure);
        }
        let mut out = [0u8; ICV_LEN];
        out.copy_from_slice(tag);
        Ok(out)
    }

    /// Verifies and decrypts `ciphertext_and_tag` in place; on success the first
    /// `len - ICV_LEN` bytes hold the plaintext. On failure the bytes are unspecified.
    pub(crate) fn open(&self, iv: &[u8; IV_LEN], aad: &[u8], ciphertext_and_tag: &mut [u8]) -> Result<(), AeadFailure> {
        if ciphertext_and_tag.len() < ICV_LEN {
            return Err(AeadFailure);
        }
        self.key.open_in_place(self.nonce(iv), Aad::from(aad), ciphertext_and_tag).map(|_| ()).map_err(|_| AeadFailure)
    }

    /// Verifies `ciphertext` and `tag` and decrypts the ciphertext into `out` (as long as the
    /// ciphertext). On failure the bytes of `out` are unspecified: the caller must not let them
    /// go anywhere.
    pub(crate) fn open_to(
        &self,
        iv: &[u8; IV_LEN],
        aad: &[u8],
        ciphertext: &[u8],
        tag: &[u8],
        out: &mut [u8],
    ) -> Result<(), AeadFailure> {
        self.key.open_separate_gather(self.nonce(iv), Aad::from(aad), ciphertext, tag, out).map_err(|_| AeadFailure)
    }
}

impl Drop for AeadKey {
    fn drop(&mut self) {
        self.salt.zeroize();
    }
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AeadKey").field("cipher", &self.cipher.as_str()).finish_non_exhaustive()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Decodes hex, ignoring whitespace. Test vectors only.
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert!(digits.chunks_exact(2).remainder().is_empty(), "odd number of hex digits");
        digits.chunks(2).map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap()).collect()
    }

    fn key(cipher: Cipher, key: &str, salt: &str) -> AeadKey {
        let mut km = hex(key);
        km.extend(hex(salt));
        AeadKey::new(cipher, &KeyMaterial::from_bytes(&km).unwrap()).unwrap()
    }

    fn iv(s: &str) -> [u8; IV_LEN] {
        hex(s).try_into().unwrap()
    }

    /// One AES-256-GCM known answer from "The Galois/Counter Mode of Operation (GCM)",
    /// McGrew & Viega (revised 2005), Appendix B. Their 96-bit IV is split here into our
    /// salt (first 4 bytes) and explicit IV (last 8), so the test also pins the nonce layout.
    struct GcmCase {
        name: &'static str,
        key: &'static str,
        nonce: &'static str,
        aad: &'static str,
        plaintext: &'static str,
        ciphertext: &'static str,
        tag: &'static str,
    }

    const GCM_256_CASES: &[GcmCase] = &[
        GcmCase {
            name: "Test Case 13",
            key: "0000000000000000000000000000000000000000000000000000000000000000",
            nonce: "000000000000000000000000",
            aad: "",
            plaintext: "",
            ciphertext: "",
            tag: "530f8afbc74536b9a963b4f1c4cb738b",
        },
        GcmCase {
            name: "Test Case 14",
            key: "0000000000000000000000000000000000000000000000000000000000000000",
            nonce: "000000000000000000000000",
            aad: "",
            plaintext: "00000000000000000000000000000000",
            ciphertext: "cea7403d4d606b6e074ec5d3baf39d18",
            tag: "d0d1c8a799996bf0265b98b5d48ab919",
        },
        GcmCase {
            name: "Test Case 15",
            key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            nonce: "cafebabefacedbaddecaf888",
            aad: "",
            plaintext: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
                        1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
            ciphertext: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa
                         8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
            tag: "b094dac5d93471bdec1a502270e3cc6c",
        },
        GcmCase {
            name: "Test Case 16",
            key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            nonce: "cafebabefacedbaddecaf888",
            aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            plaintext: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
                        1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
            ciphertext: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa
                         8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            tag: "76fc6ece0f4e1768cddf8853bb2d551b",
        },
    ];

    #[test]
    fn aes256gcm_known_answers_mcgrew_viega() {
        for case in GCM_256_CASES {
            let k = key(Cipher::Aes256Gcm16, case.key, &case.nonce[..8]);
            let iv = iv(&case.nonce[8..]);
            let aad = hex(case.aad);
            let mut data = hex(case.plaintext);
            let tag = k.seal(&iv, &aad, &mut data).unwrap();
            assert_eq!(data, hex(case.ciphertext), "{} ciphertext", case.name);
            assert_eq!(tag.to_vec(), hex(case.tag), "{} tag", case.name);

            data.extend_from_slice(&tag);
            k.open(&iv, &aad, &mut data).unwrap();
            assert_eq!(&data[..data.len() - ICV_LEN], &hex(case.plaintext)[..], "{}", case.name);

            // Any flipped bit in ciphertext or tag, or a different AAD, fails.
            let mut sealed = hex(case.ciphertext);
            sealed.extend(hex(case.tag));
            for i in 0..sealed.len() {
                let mut bad = sealed.clone();
                bad[i] ^= 0x01;
                assert_eq!(k.open(&iv, &aad, &mut bad), Err(AeadFailure), "{} byte {i}", case.name);
            }
            let mut other_aad = aad.clone();
            other_aad.push(0);
            let mut bad = sealed.clone();
            assert_eq!(k.open(&iv, &other_aad, &mut bad), Err(AeadFailure), "{}", case.name);
        }
    }

    #[test]
    fn open_rejects_input_shorter_than_a_tag() {
        let k = key(Cipher::Chacha20Poly1305, &"00".repeat(32), "00000000");
        for len in 0..ICV_LEN {
            let mut buf = vec![0u8; len];
            assert_eq!(k.open(&[0; IV_LEN], &[], &mut buf), Err(AeadFailure));
        }
    }

    #[test]
    fn debug_shows_no_key() {
        let k = key(Cipher::Aes256Gcm16, &"ab".repeat(32), "cdcdcdcd");
        let shown = format!("{k:?}");
        assert_eq!(shown, "AeadKey { cipher: \"aes256gcm16\", .. }");
    }
}
