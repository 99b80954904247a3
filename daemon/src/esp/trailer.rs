//! The ESP trailer (RFC 4303 §2.4 - §2.6): padding, pad length, next header.
//!
//! The AEADs here need no block alignment, so padding is only what RFC 4303 §2.4 requires: the
//! pad length and next header fields end on a 4-byte boundary. Padding bytes are 1, 2, 3, ...
//! (the default scheme of §2.4), and the receiver checks them.

use super::{ICV_LEN, PLAINTEXT_OFFSET};

/// Padding bytes for a payload of `plaintext_len` bytes: the fewest that make
/// `plaintext_len + padding + 2` a multiple of 4.
pub(crate) fn padding_len(plaintext_len: usize) -> usize {
    (4 - (plaintext_len % 4 + 2) % 4) % 4
}

/// Bytes that sealing appends after a payload of `plaintext_len` bytes: padding, pad length,
/// next header and ICV.
pub fn trailer_len(plaintext_len: usize) -> usize {
    padding_len(plaintext_len) + 2 + ICV_LEN
}

/// Length of the whole ESP packet that sealing `plaintext_len` bytes produces (saturating at
/// `usize::MAX` for absurd lengths, which no buffer can hold anyway).
pub fn sealed_len(plaintext_len: usize) -> usize {
    plaintext_len.saturating_add(PLAINTEXT_OFFSET + trailer_len(plaintext_len))
}

/// Writes padding, pad length and next header into `out`, which must be exactly
/// `padding_len(..) + 2` bytes long.
pub(crate) fn write(out: &mut [u8], next_header: u8) {
    let pad = out.len() - 2;
    for (i, b) in out[..pad].iter_mut().enumerate() {
        // pad <= 3 here; the cast cannot truncate.
        *b = (i + 1) as u8;
    }
    out[pad] = pad as u8;
    out[pad + 1] = next_header;
}

/// A decrypted trailer that does not follow RFC 4303 §2.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadPadding;

/// Parses the end of a decrypted plaintext: returns (payload length, next header).
pub(crate) fn parse(plaintext: &[u8]) -> Result<(usize, u8), BadPadding> {
    let n = plaintext.len();
    if n < 2 {
        return Err(BadPadding);
    }
    let next_header = plaintext[n - 1];
    let pad = usize::from(plaintext[n - 2]);
    let payload_len = n.checked_sub(pad + 2).ok_or(BadPadding)?;
    let padding = &plaintext[payload_len..n - 2];
    if padding.iter().enumerate().any(|(i, &b)| usize::from(b) != i + 1) {
        return Err(BadPadding);
    }
    Ok((payload_len, next_header))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_aligns_to_four() {
        assert_eq!(padding_len(0), 2);
        assert_eq!(padding_len(1), 1);
        assert_eq!(padding_len(2), 0);
        assert_eq!(padding_len(3), 3);
        assert_eq!(padding_len(84), 2);
        for n in 0..100 {
            let p = padding_len(n);
            assert!(p < 4);
            assert_eq!((n + p + 2) % 4, 0);
            assert_eq!(trailer_len(n), p + 2 + ICV_LEN);
            assert_eq!(sealed_len(n), 16 + n + p + 2 + 16);
        }
        assert_eq!(padding_len(usize::MAX), 3); // usize::MAX % 4 == 3, like 3
        assert_eq!(sealed_len(usize::MAX), usize::MAX);
    }

    #[test]
    fn write_then_parse() {
        for n in 0..12 {
            let mut buf = vec![0xeeu8; n + padding_len(n) + 2];
            write(&mut buf[n..], 17);
            assert_eq!(parse(&buf), Ok((n, 17)));
            let pad = padding_len(n);
            assert_eq!(buf[n + pad], pad as u8);
            for i in 0..pad {
                assert_eq!(buf[n + i], i as u8 + 1);
            }
        }
    }

    #[test]
    fn parse_accepts_longer_default_padding() {
        // Another implementation may pad more (up to 255 bytes), e.g. for traffic flow
        // confidentiality; the bytes must still be 1, 2, 3, ...
        let mut buf = vec![0xaa; 5];
        buf.extend(1..=9u8);
        buf.extend([9, 4]);
        assert_eq!(parse(&buf), Ok((5, 4)));
    }

    #[test]
    fn parse_rejects_bad_trailers() {
        assert_eq!(parse(&[]), Err(BadPadding));
        assert_eq!(parse(&[0]), Err(BadPadding));
        assert_eq!(parse(&[1, 17]), Err(BadPadding)); // pad length beyond the start
        assert_eq!(parse(&[0xaa, 2, 17]), Err(BadPadding));
        assert_eq!(parse(&[0xaa, 1, 3, 2, 17]), Err(BadPadding)); // pad bytes 1,3
        assert_eq!(parse(&[0xaa, 0, 1, 2, 17]), Err(BadPadding)); // pad bytes 0,1
        assert_eq!(parse(&[0, 17]), Ok((0, 17)));
        assert_eq!(parse(&[1, 2, 2, 4]), Ok((0, 4)));
    }
}
