//! Small enums named in `mesh.toml` and shown by `ikectl`; shared by both binaries.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An ESP AEAD. The names are the ones used in `mesh.toml` and in `ikectl` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Cipher {
    /// AES-256-GCM with a 16-byte ICV (RFC 4106).
    #[serde(rename = "aes256gcm16")]
    Aes256Gcm16,
    /// ChaCha20-Poly1305 (RFC 7634).
    #[serde(rename = "chacha20poly1305")]
    Chacha20Poly1305,
}

/// How ESP leaves the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encap {
    /// ESP in UDP on port 4500 (RFC 3948).
    Udp,
    /// Raw ESP, IP protocol 50.
    Esp,
}

/// ESP mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Transport,
    Tunnel,
}

macro_rules! named_enum {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The name used in `mesh.toml` and in `ikectl` output.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }

            /// The accepted names, for error messages.
            pub fn choices() -> String {
                Self::ALL.iter().map(|v| format!("\"{}\"", v.as_str())).collect::<Vec<_>>().join(", ")
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!("\"{s}\" is not one of {}", Self::choices()))
            }
        }
    };
}

named_enum!(Cipher { Aes256Gcm16 => "aes256gcm16", Chacha20Poly1305 => "chacha20poly1305" });
named_enum!(Encap { Udp => "udp", Esp => "esp" });
named_enum!(Mode { Transport => "transport", Tunnel => "tunnel" });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Cipher::ALL {
            assert_eq!(c.as_str().parse::<Cipher>(), Ok(*c));
            assert_eq!(serde_json::to_string(c).unwrap(), format!("\"{}\"", c.as_str()));
        }
        for e in Encap::ALL {
            assert_eq!(e.as_str().parse::<Encap>(), Ok(*e));
        }
        for m in Mode::ALL {
            assert_eq!(m.as_str().parse::<Mode>(), Ok(*m));
        }
        assert!("aes128".parse::<Cipher>().unwrap_err().contains("\"aes256gcm16\""));
    }
}
