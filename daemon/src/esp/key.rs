//! ESP key material: 32-byte key followed by the 4-byte salt (RFC 4106 §8.1, RFC 7634 §2).

use core::fmt;

use zeroize::Zeroize;

/// Length of the cipher key.
pub const KEY_LEN: usize = 32;
/// Length of the salt that prefixes the IV in the nonce.
pub const SALT_LEN: usize = 4;
/// Length of the key material of one SA: key then salt.
pub const KEY_MATERIAL_LEN: usize = KEY_LEN + SALT_LEN;

/// The key material of one SA direction: a 32-byte key followed by a 4-byte salt, as IKEv2
/// KEYMAT yields it (RFC 7296 §2.17) and as `[[manual_sa]] key` spells it in hex.
///
/// The bytes are zeroized when the value is dropped, and `Debug` never shows them. There is no
/// `Clone`: hand out references, and let each copy be one that is dropped on purpose.
pub struct KeyMaterial([u8; KEY_MATERIAL_LEN]);

impl KeyMaterial {
    /// Takes exactly [`KEY_MATERIAL_LEN`] bytes. The caller still owns (and should wipe) `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != KEY_MATERIAL_LEN {
            return Err(CryptoError::KeyLength { got: bytes.len() });
        }
        let mut km = KeyMaterial([0; KEY_MATERIAL_LEN]);
        km.0.copy_from_slice(bytes);
        Ok(km)
    }

    /// Key then salt, for `ikectl sa keys --wireshark` only: a sniffer on the underlay that
    /// decrypts is the operator's first debugging step.
    pub fn reveal(&self) -> &[u8] {
        &self.0
    }

    /// A second copy, for the holder that must be able to reveal it later.
    pub(crate) fn duplicate(&self) -> KeyMaterial {
        KeyMaterial(self.0)
    }

    /// The 32-byte cipher key.
    pub(crate) fn key(&self) -> &[u8] {
        &self.0[..KEY_LEN]
    }

    /// The 4-byte salt.
    pub(crate) fn salt(&self) -> [u8; SALT_LEN] {
        let mut salt = [0; SALT_LEN];
        salt.copy_from_slice(&self.0[KEY_LEN..]);
        salt
    }
}

impl Drop for KeyMaterial {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial(..redacted..)")
    }
}

/// Why a key could not be turned into a sealer or opener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The key material has the wrong length.
    #[error(
        "ESP key material must be {KEY_MATERIAL_LEN} bytes ({KEY_LEN}-byte key and {SALT_LEN}-byte salt), got {got}"
    )]
    KeyLength {
        /// The length that was given.
        got: usize,
    },
    /// The crypto library refused the key.
    #[error("the crypto library rejected the ESP key")]
    KeyRejected,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_bytes_checks_length() {
        assert_eq!(KeyMaterial::from_bytes(&[0; 35]).unwrap_err(), CryptoError::KeyLength { got: 35 });
        assert!(KeyMaterial::from_bytes(&[0; 37]).is_err());
        assert!(KeyMaterial::from_bytes(&[]).is_err());
        let bytes: Vec<u8> = (0..36).collect();
        let km = KeyMaterial::from_bytes(&bytes).unwrap();
        assert_eq!(km.key(), &bytes[..32]);
        assert_eq!(km.salt(), [32, 33, 34, 35]);
    }

    #[test]
    fn debug_is_redacted() {
        let km = KeyMaterial::from_bytes(&[0xab; 36]).unwrap();
        let shown = format!("{km:?} {km:#?}");
        assert!(!shown.to_lowercase().contains("ab"), "{shown}");
        assert_eq!(format!("{km:?}"), "KeyMaterial(..redacted..)");
    }

    #[test]
    fn error_messages_name_the_lengths() {
        let msg = CryptoError::KeyLength { got: 20 }.to_string();
        assert!(msg.contains("36") && msg.contains("20"), "{msg}");
    }
}
