//! The generic payload chain (RFC 7296 §3.2): every payload starts with
//!
//! ```text
//! next payload (1) | critical bit, 7 reserved bits (1) | payload length (2, header included)
//! ```
//!
//! and the type of each payload is in the Next Payload field of the one before it (the first
//! one's in the IKE header, or in the SK payload's header for the encrypted chain).

use crate::wire::{Error, Result};

use super::codec::{length_placeholder, patch_length, Reader};
use super::ids::payload;

/// Length of the generic payload header.
pub const GENERIC_HEADER_LEN: usize = 4;
/// The largest body a 2-byte Payload Length can describe.
pub const MAX_BODY_LEN: usize = u16::MAX as usize - GENERIC_HEADER_LEN;

const CRITICAL: u8 = 0x80;

/// One payload of a chain, body not parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawPayload<'a> {
    pub payload_type: u8,
    /// The type of the following payload; for SK, the type of the first encrypted payload.
    pub next_payload: u8,
    /// Reject the whole message if the type is not understood (RFC 7296 §2.5).
    pub critical: bool,
    /// The bytes after the generic header, up to the Payload Length.
    pub body: &'a [u8],
}

/// Iterates over a payload chain, checking each generic header.
///
/// Yields an error (and then nothing) on a payload shorter than its header or longer than the
/// bytes left, on bytes left after the last payload, and on bytes left after an SK payload:
/// SK is always last, so the iterator stops after it.
#[derive(Debug, Clone)]
pub struct RawPayloads<'a> {
    next_type: u8,
    rest: &'a [u8],
    done: bool,
}

impl<'a> RawPayloads<'a> {
    /// A chain whose first payload has type `first_payload` (`payload::NONE` for an empty one).
    pub fn new(first_payload: u8, bytes: &'a [u8]) -> RawPayloads<'a> {
        RawPayloads { next_type: first_payload, rest: bytes, done: false }
    }

    fn read(&mut self) -> Result<RawPayload<'a>> {
        let mut reader = Reader::new(self.rest);
        let next_payload = reader.u8()?;
        let critical = reader.u8()? & CRITICAL != 0;
        let length = usize::from(reader.u16()?);
        let body_len =
            length.checked_sub(GENERIC_HEADER_LEN).ok_or(Error::Malformed("IKE payload length is below 4"))?;
        let body = reader.take(body_len)?;
        let item = RawPayload { payload_type: self.next_type, next_payload, critical, body };
        self.rest = reader.rest();
        self.next_type = next_payload;
        if item.payload_type == payload::ENCRYPTED {
            self.done = true;
            if !self.rest.is_empty() {
                return Err(Error::Malformed("bytes after the IKE Encrypted payload"));
            }
        }
        Ok(item)
    }
}

impl<'a> Iterator for RawPayloads<'a> {
    type Item = Result<RawPayload<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.next_type == payload::NONE {
            self.done = true;
            return (!self.rest.is_empty()).then_some(Err(Error::Malformed("bytes after the last IKE payload")));
        }
        let item = self.read();
        if item.is_err() {
            self.done = true;
        }
        Some(item)
    }
}

impl core::iter::FusedIterator for RawPayloads<'_> {}

/// Appends a generic header announcing a body of `body_len` bytes, which the caller appends.
///
/// # Panics
/// If `body_len` exceeds [`MAX_BODY_LEN`].
pub(super) fn emit_generic_header(out: &mut Vec<u8>, next_payload: u8, critical: bool, body_len: usize) {
    assert!(body_len <= MAX_BODY_LEN, "IKE payload longer than 65535 bytes");
    out.push(next_payload);
    out.push(if critical { CRITICAL } else { 0 });
    out.extend_from_slice(&((body_len + GENERIC_HEADER_LEN) as u16).to_be_bytes());
}

/// Appends a payload: a generic header, then what `body` writes, then fixes the length.
///
/// # Panics
/// If the body exceeds [`MAX_BODY_LEN`].
pub(super) fn emit_payload(out: &mut Vec<u8>, next_payload: u8, critical: bool, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.push(next_payload);
    out.push(if critical { CRITICAL } else { 0 });
    let at = length_placeholder(out);
    body(out);
    patch_length(out, at, start, "IKE payload");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn collect(first: u8, bytes: &[u8]) -> Vec<Result<RawPayload<'_>>> {
        RawPayloads::new(first, bytes).collect()
    }

    #[test]
    fn walks_a_chain() {
        let bytes = [
            0x28, 0x80, 0x00, 0x06, 0xaa, 0xbb, // Notify: next Nonce, critical, 2-byte body
            0x00, 0x00, 0x00, 0x04, // Nonce: next none, empty body
        ];
        let items = collect(payload::NOTIFY, &bytes);
        assert_eq!(
            items,
            [
                Ok(RawPayload {
                    payload_type: payload::NOTIFY,
                    next_payload: payload::NONCE,
                    critical: true,
                    body: &[0xaa, 0xbb],
                }),
                Ok(RawPayload {
                    payload_type: payload::NONCE,
                    next_payload: payload::NONE,
                    critical: false,
                    body: &[],
                }),
            ]
        );
        assert!(collect(payload::NONE, &[]).is_empty());
    }

    #[test]
    fn reserved_bits_are_ignored() {
        let bytes = [0x00, 0x7f, 0x00, 0x04];
        let item = collect(payload::NONCE, &bytes).remove(0).unwrap();
        assert!(!item.critical);
    }

    #[test]
    fn encrypted_payload_ends_the_chain() {
        // SK announces an inner Notify first; its body is IV + ciphertext + ICV, opaque here.
        let bytes = [0x29, 0x00, 0x00, 0x07, 1, 2, 3];
        let items = collect(payload::ENCRYPTED, &bytes);
        assert_eq!(
            items,
            [Ok(RawPayload {
                payload_type: payload::ENCRYPTED,
                next_payload: payload::NOTIFY,
                critical: false,
                body: &[1, 2, 3],
            })]
        );
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(
            collect(payload::ENCRYPTED, &longer),
            [Err(Error::Malformed("bytes after the IKE Encrypted payload"))]
        );
    }

    #[test]
    fn errors_end_the_chain() {
        assert_eq!(collect(payload::NONCE, &[]), [Err(Error::Truncated)]);
        assert_eq!(collect(payload::NONCE, &[0, 0, 0]), [Err(Error::Truncated)]);
        assert_eq!(
            collect(payload::NONCE, &[0, 0, 0, 3, 0xff, 0xff]),
            [Err(Error::Malformed("IKE payload length is below 4"))]
        );
        assert_eq!(collect(payload::NONCE, &[0, 0, 0, 6, 0xff]), [Err(Error::Truncated)]);
        let items = collect(payload::NONCE, &[0, 0, 0, 4, 0xff]);
        assert_eq!(items.len(), 2);
        assert_eq!(items[1], Err(Error::Malformed("bytes after the last IKE payload")));
        // The last payload names a successor that is not there.
        let items = collect(payload::NONCE, &[payload::NOTIFY, 0, 0, 4]);
        assert_eq!(items[1], Err(Error::Truncated));
    }

    #[test]
    fn emitters_fill_lengths() {
        let mut out = Vec::new();
        emit_payload(&mut out, payload::NONCE, true, |out| out.extend([1, 2]));
        emit_generic_header(&mut out, payload::NONE, false, 3);
        out.extend([3, 4, 5]);
        assert_eq!(out, [payload::NONCE, 0x80, 0, 6, 1, 2, 0, 0, 0, 7, 3, 4, 5]);
        let items = collect(payload::NOTIFY, &out);
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(Result::is_ok));
    }

    #[test]
    fn largest_payload() {
        let mut out = Vec::new();
        emit_payload(&mut out, payload::NONE, false, |out| out.extend(vec![0; MAX_BODY_LEN]));
        assert_eq!(out[2..4], [0xff, 0xff]);
    }

    #[test]
    #[should_panic(expected = "longer than 65535")]
    fn oversized_payload_panics() {
        emit_payload(&mut Vec::new(), payload::NONE, false, |out| out.extend(vec![0; MAX_BODY_LEN + 1]));
    }

    proptest! {
        #[test]
        fn never_panics_and_stops(
            first in any::<u8>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let items = collect(first, &bytes);
            // Every item but the last is a success; each consumes at least 4 bytes.
            prop_assert!(items.len() <= bytes.len() / GENERIC_HEADER_LEN + 1);
            for item in items.iter().rev().skip(1) {
                prop_assert!(item.is_ok());
            }
        }
    }
}
