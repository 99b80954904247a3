//! Secret bytes: zeroized on drop, never printed.

use std::fmt;

use zeroize::Zeroizing;

/// Length of a manual SA key: a 32-byte AEAD key followed by a 4-byte salt (RFC 4106 / RFC 7634).
pub const MANUAL_KEY_LEN: usize = 36;

/// The mesh pre-shared key (the contents of `psk_file`, without a trailing newline).
/// Zeroized on drop; `Debug` prints `Psk(..redacted..)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(Zeroizing<Vec<u8>>);

impl Psk {
    pub fn new(bytes: Vec<u8>) -> Psk {
        Psk(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(..redacted..)")
    }
}

/// Keying material of a manual SA: 32-byte key then 4-byte salt.
/// Zeroized on drop; `Debug` prints `KeyBytes(..redacted..)`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBytes(Zeroizing<[u8; MANUAL_KEY_LEN]>);

impl KeyBytes {
    pub fn new(bytes: [u8; MANUAL_KEY_LEN]) -> KeyBytes {
        KeyBytes(Zeroizing::new(bytes))
    }

    /// All 36 bytes (key then salt), the layout ESP implementations usually take.
    pub fn as_bytes(&self) -> &[u8; MANUAL_KEY_LEN] {
        &self.0
    }

    /// The 32-byte AEAD key.
    pub fn key(&self) -> &[u8; 32] {
        self.0[..32].try_into().expect("36 = 32 + 4")
    }

    /// The 4-byte salt (the implicit part of the nonce).
    pub fn salt(&self) -> &[u8; 4] {
        self.0[32..].try_into().expect("36 = 32 + 4")
    }

    /// Decodes 72 hex digits (an optional `0x` prefix is allowed). The error never contains the
    /// text: it says how many digits there were, or where the first non-hex character is.
    pub fn from_hex(text: &str) -> Result<KeyBytes, String> {
        let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
        let count = digits.chars().count();
        if count != MANUAL_KEY_LEN * 2 {
            return Err(format!(
                "the key has {count} characters where {} hex digits are needed (a 32-byte key followed by a 4-byte salt)",
                MANUAL_KEY_LEN * 2
            ));
        }
        if let Some(pos) = digits.chars().position(|c| !c.is_ascii_hexdigit()) {
            return Err(format!(
                "character {} of the key is not a hex digit (the key must be 72 hex digits: a 32-byte key followed by a 4-byte salt)",
                pos + 1
            ));
        }
        let mut out = Zeroizing::new([0u8; MANUAL_KEY_LEN]);
        let bytes = digits.as_bytes();
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = (hex_val(bytes[2 * i]) << 4) | hex_val(bytes[2 * i + 1]);
        }
        Ok(KeyBytes(out))
    }
}

fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => unreachable!("checked to be a hex digit"),
    }
}

impl fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyBytes(..redacted..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let p = Psk::new(b"super secret value that is long enough".to_vec());
        assert_eq!(format!("{p:?}"), "Psk(..redacted..)");
        let k = KeyBytes::new([0xab; 36]);
        assert_eq!(format!("{k:?}"), "KeyBytes(..redacted..)");
        assert!(!format!("{:?}", Some(k)).contains("ab"));
    }

    #[test]
    fn hex_decoding() {
        let hex: String = (0..36u8).map(|b| format!("{b:02X}")).collect();
        let k = KeyBytes::from_hex(&hex).unwrap();
        assert_eq!(k.key()[0], 0);
        assert_eq!(k.key()[31], 31);
        assert_eq!(k.salt(), &[32, 33, 34, 35]);
        assert_eq!(KeyBytes::from_hex(&format!("0x{hex}")).unwrap(), k);
        let e = KeyBytes::from_hex("abcd").unwrap_err();
        assert!(e.contains("has 4 characters") && e.contains("4-byte salt"), "{e}");
        let mut bad = hex.clone();
        bad.replace_range(10..11, "g");
        let e = KeyBytes::from_hex(&bad).unwrap_err();
        assert!(e.contains("character 11"), "{e}");
        assert!(!e.contains(&bad));
    }
}
