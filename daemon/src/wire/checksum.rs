//! RFC 1071 internet checksum.
//!
//! Partial sums are folded 16-bit ones' complement sums, not yet inverted: combine them with
//! [`combine`] and store `!sum` in the checksum field. A buffer that already holds a correct
//! checksum sums to `0xFFFF`.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Folds a wide ones' complement accumulator to 16 bits (end-around carry).
fn fold(mut acc: u64) -> u16 {
    while acc > 0xFFFF {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    acc as u16
}

/// Bytes per step of the vectorisable loop of [`data`].
const STEP: usize = 32;

/// The ones' complement sum of `data` as big-endian 16-bit words; an odd last byte is padded
/// with a zero byte, as RFC 1071 says.
///
/// It runs per packet, so it adds native-endian 32-bit words into eight 64-bit lanes with no
/// carry chain, which the compiler turns into SIMD adds: the ones' complement sum does not care
/// about byte order as long as the result is swapped back at the end (RFC 1071 §2(B)), and a
/// 32-bit word equals the sum of its two 16-bit halves modulo 0xFFFF (2^16 = 1).
pub fn data(data: &[u8]) -> u16 {
    let mut lanes = [0u64; STEP / 4];
    let mut chunks = data.chunks_exact(STEP);
    // Each lane gains less than 2^32 per step, so it cannot overflow below 2^32 steps.
    for chunk in &mut chunks {
        for (lane, word) in lanes.iter_mut().zip(chunk.chunks_exact(4)) {
            *lane += u64::from(u32::from_ne_bytes([word[0], word[1], word[2], word[3]]));
        }
    }
    let native = fold(lanes.iter().sum());
    let big_endian = if cfg!(target_endian = "little") { native.swap_bytes() } else { native };
    // The rest starts at a multiple of STEP, so its words line up with the big-endian ones.
    combine(&[big_endian, tail(chunks.remainder())])
}

/// The sum of fewer than `STEP` bytes, 16 bits at a time.
fn tail(bytes: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    let mut pairs = bytes.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    fold(acc)
}

/// Combines partial sums (from [`data`] and the pseudo-header functions) into one.
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// The partial sum of an IPv4 pseudo-header (RFC 768): addresses, protocol, upper-layer length.
pub fn pseudo_header_v4(source: Ipv4Addr, destination: Ipv4Addr, protocol: u8, length: u16) -> u16 {
    combine(&[data(&source.octets()), data(&destination.octets()), u16::from(protocol), length])
}

/// The partial sum of an IPv6 pseudo-header (RFC 8200 §8.1): addresses, 32-bit upper-layer
/// length, next header.
pub fn pseudo_header_v6(source: Ipv6Addr, destination: Ipv6Addr, next_header: u8, length: u32) -> u16 {
    combine(&[
        data(&source.octets()),
        data(&destination.octets()),
        (length >> 16) as u16,
        length as u16,
        u16::from(next_header),
    ])
}

/// A pseudo-header sum without its length, for computing the checksums of many segments of
/// one flow: [`PseudoHeader::with_len`] adds each segment's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PseudoHeader {
    /// Addresses and protocol.
    base: u16,
}

impl PseudoHeader {
    pub fn v4(source: Ipv4Addr, destination: Ipv4Addr, protocol: u8) -> PseudoHeader {
        PseudoHeader { base: pseudo_header_v4(source, destination, protocol, 0) }
    }

    pub fn v6(source: Ipv6Addr, destination: Ipv6Addr, next_header: u8) -> PseudoHeader {
        PseudoHeader { base: pseudo_header_v6(source, destination, next_header, 0) }
    }

    /// The partial sum with the upper-layer length added (as 32 bits, which for IPv4's 16-bit
    /// length gives the same sum).
    pub fn with_len(self, length: usize) -> u16 {
        let length = length as u32;
        combine(&[self.base, (length >> 16) as u16, length as u16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The obvious 16-bit-at-a-time sum, to check the fast path against.
    fn reference(bytes: &[u8]) -> u16 {
        let mut acc: u64 = 0;
        for pair in bytes.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |&b| u64::from(b));
            acc += hi | lo;
        }
        fold(acc)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to 2ddf0, folded ddf2.
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(data(&bytes), 0xddf2);
        assert_eq!(!data(&bytes), 0x220d);
    }

    #[test]
    fn real_ipv4_header() {
        // 192.168.0.1 -> 192.168.0.199, UDP, TTL 64, DF, total length 115, checksum b861.
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(data(&header), 0xFFFF, "a correct header sums to all ones");
        header[10] = 0;
        header[11] = 0;
        assert_eq!(!data(&header), 0xb861);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(data(&[0x12]), 0x1200);
        assert_eq!(data(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
        assert_eq!(data(&[]), 0);
    }

    #[test]
    fn end_around_carry() {
        // 0xffff + 0x0001 = 0x10000 -> 0x0001.
        assert_eq!(data(&[0xff, 0xff, 0x00, 0x01]), 0x0001);
        assert_eq!(data(&[0xff; 64]), 0xFFFF);
        assert_eq!(combine(&[0xFFFF, 0xFFFF]), 0xFFFF);
        assert_eq!(combine(&[0x8000, 0x8000]), 0x0001);
    }

    #[test]
    fn pseudo_header_with_length_matches_the_full_sum() {
        let (s, d) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(PseudoHeader::v4(s, d, 6).with_len(1480), pseudo_header_v4(s, d, 6, 1480));
        let (s, d): (Ipv6Addr, Ipv6Addr) = ("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap());
        assert_eq!(PseudoHeader::v6(s, d, 6).with_len(70_000), pseudo_header_v6(s, d, 6, 70_000));
    }

    #[test]
    fn long_inputs_match_the_reference() {
        assert_eq!(data(&[0xff; 4096]), 0xFFFF);
        assert_eq!(data(&[0; 4096]), 0);
        let long: Vec<u8> = (0..65_535u32).map(|i| (i * 7 + 3) as u8).collect();
        assert_eq!(data(&long), reference(&long));
    }

    #[test]
    fn pseudo_headers_match_their_byte_layout() {
        let (s4, d4) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
        let mut v4 = Vec::new();
        v4.extend_from_slice(&s4.octets());
        v4.extend_from_slice(&d4.octets());
        v4.extend_from_slice(&[0, 17, 0x01, 0x2c]);
        assert_eq!(pseudo_header_v4(s4, d4, 17, 300), data(&v4));

        let s6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let d6: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let mut v6 = Vec::new();
        v6.extend_from_slice(&s6.octets());
        v6.extend_from_slice(&d6.octets());
        v6.extend_from_slice(&0x0001_0203u32.to_be_bytes());
        v6.extend_from_slice(&[0, 0, 0, 17]);
        assert_eq!(pseudo_header_v6(s6, d6, 17, 0x0001_0203), data(&v6));
    }

    proptest! {
        #[test]
        fn fast_sum_matches_reference(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(data(&bytes), reference(&bytes));
        }

        #[test]
        fn split_sums_combine(bytes in proptest::collection::vec(any::<u8>(), 0..300), at in 0usize..150) {
            // Splitting at an even offset keeps word alignment, so partial sums combine.
            let at = (at * 2).min(bytes.len() & !1);
            let (a, b) = bytes.split_at(at);
            prop_assert_eq!(combine(&[data(a), data(b)]), data(&bytes));
        }
    }
}
