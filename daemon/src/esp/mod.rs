//! ESP (RFC 4303) with AEAD ciphers: sealing and opening packets in caller-owned buffers, and
//! the anti-replay window.
//!
//! Ciphers: AES-256-GCM with a 16-byte ICV (RFC 4106) and ChaCha20-Poly1305 (RFC 7634). Both use
//! 36 bytes of key material (a 32-byte key followed by a 4-byte salt), the nonce
//! `salt || IV`, an 8-byte explicit IV carried in every packet, and as AAD the SPI and the
//! sequence number as RFC 4303 §2.2.1 orders them (`SPI || seq` without extended sequence
//! numbers, `SPI || seq high || seq low` with them; RFC 4106 §5, RFC 7634 §2.1).
//!
//! The IV we send is the 64-bit ESP sequence number, big-endian: it is unique per SA, which is all
//! RFC 4106 §3.1 and RFC 7634 §2 ask. Received IVs are taken as they come.
//!
//! A sealed packet, as this module lays it out in the caller's buffer:
//!
//! ```text
//! 0        4        8                16                 16+n
//! | SPI    | seq lo | IV (8)          | payload (n) ...  | pad 1,2,3.. | pad len | next hdr | ICV (16) |
//!                                     \__________________ encrypted ___________________________/
//! ```
//!
//! The caller writes the payload at [`PLAINTEXT_OFFSET`], leaves [`trailer_len`] bytes after it,
//! and calls [`Sealer::seal`]; nothing is copied or allocated. [`Opener::open`] decrypts in place
//! and hands back the payload as a sub-slice of the packet; [`Opener::open_to`] decrypts into a
//! buffer of the caller's (the receive path's coalescing slot) and leaves the packet as it was.
//!
//! [`ReplayWindow`] is the RFC 4303 §3.4.3 sliding window with extended sequence number support
//! (Appendix A). The datapath checks a packet against it before authentication and marks it
//! afterwards.
//!
//! Keys never appear in `Debug` output, and key bytes this module keeps are zeroized on drop.

mod cipher;
mod key;
mod replay;
mod seal;
mod trailer;

pub use self::key::{CryptoError, KeyMaterial, KEY_MATERIAL_LEN};
pub use self::replay::{ReplayError, ReplayWindow, DEFAULT_REPLAY_WINDOW};
pub use self::seal::{plaintext_len, OpenError, Opener, Sealer};
pub use self::trailer::sealed_len;
#[cfg(any(test, feature = "internals"))]
pub use self::trailer::trailer_len;

/// The header lengths are the wire format's (`crate::wire::esp`); named here for the crypto code.
pub use crate::wire::esp::{HEADER_LEN as ESP_HEADER_LEN, ICV_LEN, IV_LEN};
/// Bytes before the plaintext in a sealed packet (SPI, seq, IV).
pub const PLAINTEXT_OFFSET: usize = ESP_HEADER_LEN + IV_LEN;
/// The shortest packet [`Opener::open`] can accept: header, IV, pad length, next header, ICV.
pub const MIN_PACKET_LEN: usize = PLAINTEXT_OFFSET + 2 + ICV_LEN;
