//! Big-endian helpers shared by the payload parsers and emitters.

use core::ops::Range;

use crate::wire::{Error, Result};

/// A fixed-size field: a byte range within a header.
pub(super) type Field = Range<usize>;

// Fixed-offset access for views whose `check_len` has run: `field` always has the width of
// the integer, so indexing panics only on a buffer that the check would have rejected.

pub(super) fn read_u32(data: &[u8], field: Field) -> u32 {
    let b = &data[field];
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

pub(super) fn read_u64(data: &[u8], field: Field) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&data[field]);
    u64::from_be_bytes(b)
}

pub(super) fn write_u32(data: &mut [u8], field: Field, value: u32) {
    data[field].copy_from_slice(&value.to_be_bytes());
}

pub(super) fn write_u64(data: &mut [u8], field: Field, value: u64) {
    data[field].copy_from_slice(&value.to_be_bytes());
}

/// A cursor over a variable-length structure: every read checks the length first, so parsers
/// built on it return [`Error::Truncated`] instead of panicking.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    pub(super) fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        let (head, rest) = self.bytes.split_at_checked(len).ok_or(Error::Truncated)?;
        self.bytes = rest;
        Ok(head)
    }

    pub(super) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Skips a RESERVED field: sent as zero, ignored on receipt (RFC 7296 §3.2).
    pub(super) fn skip(&mut self, len: usize) -> Result<()> {
        self.take(len).map(|_| ())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Everything not read yet.
    pub(super) fn rest(self) -> &'a [u8] {
        self.bytes
    }
}

/// Appends a 2-byte placeholder for a length and returns where it is, for [`patch_length`].
pub(super) fn length_placeholder(out: &mut Vec<u8>) -> usize {
    out.extend_from_slice(&[0, 0]);
    out.len() - 2
}

/// Fills the placeholder at `at` with the number of bytes from `start` to the end of `out`.
///
/// # Panics
/// If that exceeds the 65535 a 2-byte length field can hold; `what` names the structure.
pub(super) fn patch_length(out: &mut [u8], at: usize, start: usize, what: &str) {
    let len = u16::try_from(out.len() - start).unwrap_or_else(|_| panic!("{what} longer than 65535 bytes"));
    out[at..at + 2].copy_from_slice(&len.to_be_bytes());
}

/// A count for a 1-byte field.
///
/// # Panics
/// If it exceeds 255; `what` names the items.
pub(super) fn count_u8(count: usize, what: &str) -> u8 {
    u8::try_from(count).unwrap_or_else(|_| panic!("more than 255 {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_checks_every_read() {
        let mut r = Reader::new(&[1, 2, 3, 4, 5]);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(0x0203));
        assert_eq!(r.array::<3>(), Err(Error::Truncated));
        // A failed read consumes nothing.
        assert_eq!(r.array::<2>(), Ok([4, 5]));
        assert!(r.is_empty());
        assert_eq!(r.u8(), Err(Error::Truncated));
        assert_eq!(r.skip(1), Err(Error::Truncated));
        assert_eq!(r.rest(), &[] as &[u8]);
    }

    #[test]
    fn length_patching() {
        let mut out = vec![9];
        let at = length_placeholder(&mut out);
        out.extend_from_slice(&[7; 5]);
        patch_length(&mut out, at, 0, "test");
        assert_eq!(out[..3], [9, 0, 8]);
    }

    #[test]
    #[should_panic(expected = "more than 255 things")]
    fn count_overflow_panics() {
        count_u8(256, "things");
    }
}
