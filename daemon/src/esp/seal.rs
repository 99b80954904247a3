//! Sealing and opening whole ESP packets in caller-owned buffers.

use core::fmt;

use mesh_config::Cipher;

use super::cipher::AeadKey;
use super::key::{CryptoError, KeyMaterial};
use super::trailer::{self, sealed_len};
use super::{ESP_HEADER_LEN, ICV_LEN, IV_LEN, MIN_PACKET_LEN, PLAINTEXT_OFFSET};

/// The AAD of RFC 4303 §2.2.1 / RFC 4106 §5 / RFC 7634 §2.1: `SPI || seq` (8 bytes), or with
/// extended sequence numbers `SPI || seq high || seq low` (12 bytes).
struct EspAad {
    bytes: [u8; 12],
    len: usize,
}

impl EspAad {
    fn new(spi: [u8; 4], seq: u64, esn: bool) -> Self {
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&spi);
        if esn {
            bytes[4..12].copy_from_slice(&seq.to_be_bytes());
            EspAad { bytes, len: 12 }
        } else {
            bytes[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
            EspAad { bytes, len: 8 }
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Encrypts the packets of one outbound SA. `Send + Sync`: share one between worker threads.
pub struct Sealer {
    aead: AeadKey,
}

/// Why a packet could not be sealed. None of these is the peer's doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The buffer cannot hold the header, the payload and the trailer.
    #[error("buffer too small to seal an ESP packet: need {needed} bytes, have {available}")]
    BufferTooShort {
        /// Bytes the sealed packet needs.
        needed: usize,
        /// Length of the buffer given.
        available: usize,
    },
    /// Sequence number 0 is never sent: the counter starts at 1 (RFC 4303 §3.3.3).
    #[error("ESP sequence number 0 is never sent (the counter starts at 1)")]
    SequenceZero,
    /// Without extended sequence numbers the counter must not pass 2^32 - 1
    /// (RFC 4303 §3.3.3); the SA has to be replaced first.
    #[error(
        "ESP sequence number {0} does not fit in 32 bits and extended sequence numbers are off; the SA must be rekeyed"
    )]
    SequenceExhausted(u64),
    /// The crypto library failed to encrypt (not expected to happen).
    #[error("the crypto library failed to encrypt the ESP packet")]
    Crypto,
}

impl Sealer {
    /// A sealer for `cipher` with the SA's key material.
    pub fn new(cipher: Cipher, key: &KeyMaterial) -> Result<Self, CryptoError> {
        Ok(Sealer { aead: AeadKey::new(cipher, key)? })
    }

    /// The SA's cipher.
    pub fn cipher(&self) -> Cipher {
        self.aead.cipher()
    }

    /// The SA's key material (for `ikectl sa keys`).
    pub fn key_material(&self) -> &KeyMaterial {
        self.aead.material()
    }

    /// Seals one packet in place.
    ///
    /// `buf[PLAINTEXT_OFFSET..PLAINTEXT_OFFSET + plaintext_len]` holds the plaintext (written there
    /// by the caller). This writes SPI, the low 32 bits of `seq` and the IV (the whole of `seq`,
    /// big-endian) before it, and padding, pad length, `next_header` and the ICV after it, and
    /// encrypts in place. `buf` must be at least [`sealed_len`](super::sealed_len)`(plaintext_len)`
    /// bytes; bytes past that are left alone. Returns the length of the ESP packet.
    ///
    /// `seq` must be unique for the SA (it is the IV) and never 0; without `esn` it must fit in
    /// 32 bits. Never panics.
    pub fn seal(
        &self,
        spi: u32,
        seq: u64,
        esn: bool,
        next_header: u8,
        buf: &mut [u8],
        plaintext_len: usize,
    ) -> Result<usize, SealError> {
        self.seal_with_iv(spi, seq, esn, next_header, seq.to_be_bytes(), buf, plaintext_len)
    }

    /// [`seal`](Self::seal) with an explicit IV, for known-answer tests against published
    /// packets whose IV is not the sequence number.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn seal_with_iv(
        &self,
        spi: u32,
        seq: u64,
        esn: bool,
        next_header: u8,
        iv: [u8; IV_LEN],
        buf: &mut [u8],
        plaintext_len: usize,
    ) -> Result<usize, SealError> {
        if seq == 0 {
            return Err(SealError::SequenceZero);
        }
        if !esn && seq > u64::from(u32::MAX) {
            return Err(SealError::SequenceExhausted(seq));
        }
        // Saturates for absurd lengths; no slice is usize::MAX bytes long.
        let total = sealed_len(plaintext_len);
        if buf.len() < total {
            return Err(SealError::BufferTooShort { needed: total, available: buf.len() });
        }
        let ct_len = total - PLAINTEXT_OFFSET - ICV_LEN;
        let packet = &mut buf[..total];

        let spi = spi.to_be_bytes();
        packet[..4].copy_from_slice(&spi);
        packet[4..ESP_HEADER_LEN].copy_from_slice(&(seq as u32).to_be_bytes());
        packet[ESP_HEADER_LEN..PLAINTEXT_OFFSET].copy_from_slice(&iv);
        let (body, icv) = packet[PLAINTEXT_OFFSET..].split_at_mut(ct_len);
        trailer::write(&mut body[plaintext_len..], next_header);

        let aad = EspAad::new(spi, seq, esn);
        let tag = self.aead.seal(&iv, aad.as_slice(), body).map_err(|_| SealError::Crypto)?;
        icv.copy_from_slice(&tag);
        Ok(total)
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer").field("cipher", &self.cipher().as_str()).finish_non_exhaustive()
    }
}

/// Decrypts the packets of one inbound SA. `Send + Sync`: share one between worker threads.
pub struct Opener {
    aead: AeadKey,
}

/// A packet that opened: its next header and its payload, decrypted in place.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    /// The next header field: 17 (UDP) for meshd transport mode, 4 or 41 in tunnel mode,
    /// 59 for a dummy packet.
    pub next_header: u8,
    /// The decrypted payload, without padding and trailer; a sub-slice of the packet.
    pub payload: &'a mut [u8],
}

/// Why a received packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum OpenError {
    /// Shorter than header, IV, pad length, next header and ICV.
    #[error(
        "ESP packet too short: an AEAD packet has at least {MIN_PACKET_LEN} bytes (header, IV, pad length, next header, ICV)"
    )]
    Truncated,
    /// The sequence number given to `open` is not the one in the packet header (a caller bug).
    #[error("the sequence number given to open does not match the ESP header (internal error)")]
    SequenceMismatch,
    /// The ICV did not verify: wrong key or cipher, or the packet was corrupted or forged.
    #[error("ESP integrity check failed: the packet was corrupted or forged, or the peers disagree on key or cipher")]
    Authentication,
    /// The ICV verified but the trailer is not padding 1, 2, 3, ..., pad length, next header.
    #[error("ESP padding is malformed after decryption (the peer's ESP trailer is broken)")]
    BadPadding,
}

impl Opener {
    /// An opener for `cipher` with the SA's key material.
    pub fn new(cipher: Cipher, key: &KeyMaterial) -> Result<Self, CryptoError> {
        Ok(Opener { aead: AeadKey::new(cipher, key)? })
    }

    /// The SA's cipher.
    pub fn cipher(&self) -> Cipher {
        self.aead.cipher()
    }

    /// The SA's key material (for `ikectl sa keys`).
    pub fn key_material(&self) -> &KeyMaterial {
        self.aead.material()
    }

    /// Verifies and decrypts one ESP packet (SPI through ICV) in place.
    ///
    /// `seq` is the full 64-bit sequence number: with `esn` the high half is the one
    /// [`ReplayWindow::infer_sequence`](super::ReplayWindow::infer_sequence) found, and the low
    /// half must equal the packet's sequence number field. The SPI and IV are read from the
    /// packet. Checks the ICV, then the padding. After an error the packet bytes past the IV are
    /// unspecified. Never panics.
    pub fn open<'a>(&self, seq: u64, esn: bool, packet: &'a mut [u8]) -> Result<Opened<'a>, OpenError> {
        let (iv, aad) = nonce_parts(seq, esn, packet)?;
        let body = &mut packet[PLAINTEXT_OFFSET..];
        self.aead.open(&iv, aad.as_slice(), body).map_err(|_| OpenError::Authentication)?;
        let plaintext_len = body.len() - ICV_LEN;
        let (payload_len, next_header) = trailer::parse(&body[..plaintext_len]).map_err(|_| OpenError::BadPadding)?;
        Ok(Opened { next_header, payload: &mut body[..payload_len] })
    }

    /// Like [`Opener::open`], but decrypts into `out` instead of in place, which must be exactly
    /// [`plaintext_len`] of the packet long; the packet is not changed. Returns the next header
    /// and the payload's length (the payload is `out[..len]`, the trailer follows it). After an
    /// error the bytes of `out` are unspecified: they may hold unauthenticated plaintext.
    pub fn open_to(&self, seq: u64, esn: bool, packet: &[u8], out: &mut [u8]) -> Result<(u8, usize), OpenError> {
        let (iv, aad) = nonce_parts(seq, esn, packet)?;
        let (ciphertext, tag) = packet[PLAINTEXT_OFFSET..].split_at(packet.len() - PLAINTEXT_OFFSET - ICV_LEN);
        if out.len() != ciphertext.len() {
            return Err(OpenError::Truncated);
        }
        self.aead.open_to(&iv, aad.as_slice(), ciphertext, tag, out).map_err(|_| OpenError::Authentication)?;
        let (payload_len, next_header) = trailer::parse(out).map_err(|_| OpenError::BadPadding)?;
        Ok((next_header, payload_len))
    }
}

/// The ciphertext and trailer bytes of an ESP packet of `packet_len` bytes (None if it is
/// shorter than [`MIN_PACKET_LEN`]): what [`Opener::open_to`] decrypts into.
pub fn plaintext_len(packet_len: usize) -> Option<usize> {
    (packet_len >= MIN_PACKET_LEN).then(|| packet_len - PLAINTEXT_OFFSET - ICV_LEN)
}

/// The IV and AAD of `packet`, after checking its length and that `seq` is its sequence number.
fn nonce_parts(seq: u64, esn: bool, packet: &[u8]) -> Result<([u8; IV_LEN], EspAad), OpenError> {
    if packet.len() < MIN_PACKET_LEN {
        return Err(OpenError::Truncated);
    }
    let mut spi = [0u8; 4];
    spi.copy_from_slice(&packet[..4]);
    let mut seq_low = [0u8; 4];
    seq_low.copy_from_slice(&packet[4..ESP_HEADER_LEN]);
    if u32::from_be_bytes(seq_low) != seq as u32 || (!esn && seq >> 32 != 0) {
        return Err(OpenError::SequenceMismatch);
    }
    let mut iv = [0u8; IV_LEN];
    iv.copy_from_slice(&packet[ESP_HEADER_LEN..PLAINTEXT_OFFSET]);
    Ok((iv, EspAad::new(spi, seq, esn)))
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener").field("cipher", &self.cipher().as_str()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::super::cipher::tests::hex;
    use super::super::{trailer_len, ReplayWindow};
    use super::*;

    fn km(bytes: &[u8]) -> KeyMaterial {
        KeyMaterial::from_bytes(bytes).unwrap()
    }

    fn pair(cipher: Cipher, key: &[u8]) -> (Sealer, Opener) {
        (Sealer::new(cipher, &km(key)).unwrap(), Opener::new(cipher, &km(key)).unwrap())
    }

    const CIPHERS: [Cipher; 2] = [Cipher::Aes256Gcm16, Cipher::Chacha20Poly1305];

    /// A published ESP packet: key material, header fields, IV, the plaintext payload, the next
    /// header in its trailer, and the whole packet on the wire.
    struct EspVector {
        source: &'static str,
        cipher: Cipher,
        key_material: &'static str,
        spi: u32,
        seq: u64,
        esn: bool,
        iv: &'static str,
        payload: &'static str,
        next_header: u8,
        packet: &'static str,
    }

    const VECTORS: &[EspVector] = &[
        // RFC 7634 Appendix A, "ESP Example": a tunnel-mode ICMP echo (next header 4), key
        // 80..9f, salt a0a1a2a3, IV 1011121314151617, SPI 0x01020304, seq 5. The packet is the
        // ESP header, IV, and the "ESP Packet"'s ciphertext and tag.
        EspVector {
            source: "RFC 7634 Appendix A",
            cipher: Cipher::Chacha20Poly1305,
            key_material: "808182838485868788898a8b8c8d8e8f 909192939495969798999a9b9c9d9e9f
                           a0a1a2a3",
            spi: 0x0102_0304,
            seq: 5,
            esn: false,
            iv: "1011121314151617",
            payload: "45000054a6f200004001e778c6336405 c000020508005b7a3a080000553bec10
                      0007362708090a0b0c0d0e0f10111213 1415161718191a1b1c1d1e1f20212223
                      2425262728292a2b2c2d2e2f30313233 34353637",
            next_header: 4,
            packet: "01020304000000051011121314151617
                     24039428b97f417e3c13753a4f05087b 67c352e6a7fab1b982d466ef407ae5c6
                     14ee8099d52844eb61aa95dfab4c02f7 2aa71e7c4c4f64c9befe2facc638e8f3
                     cbec163fac469b502773f6fb94e664da 9165b82829f641e0
                     76aaa8266b7fb0f7b11b369907e1ad43",
        },
        // draft-mcgrew-gcm-test-01 (AES-GCM test cases for ESP), the first packet with a 256-bit
        // key: SPI 0x4a2cbfe3, 32-bit seq 2, salt 11223344, IV 0102030405060708. Its trailer
        // is 01 02 | 02 | 01 (next header 1).
        EspVector {
            source: "draft-mcgrew-gcm-test-01, SPI 4a2cbfe3",
            cipher: Cipher::Aes256Gcm16,
            key_material: "abbccddef00112233445566778899aab abbccddef00112233445566778899aab
                           11223344",
            spi: 0x4a2c_bfe3,
            seq: 2,
            esn: false,
            iv: "0102030405060708",
            payload: "4500003069a6400080062690c0a80102 9389155e0a9e008b2dc57ee000000000
                      7002400020bf0000020405b401010402",
            next_header: 1,
            packet: "4a2cbfe3000000020102030405060708
                     ff425c9b724599df7a3bcd510194e00d 6a78107f1b0b1cbf06efae9d65a5d763
                     748a637985771d347f0545659f14e99d ef842d8eb335f4eecfdbf831824b4c49
                     15956c96",
        },
        // draft-mcgrew-gcm-test-01, 256-bit key with a 64-bit (extended) sequence number
        // 0x156f3126dd0db99b, so the AAD is SPI || seq high || seq low.
        EspVector {
            source: "draft-mcgrew-gcm-test-01, SPI 17405e67 (ESN)",
            cipher: Cipher::Aes256Gcm16,
            key_material: "abbccddef00112233445566778899aab abbccddef00112233445566778899aab
                           73616c74",
            spi: 0x1740_5e67,
            seq: 0x156f_3126_dd0d_b99b,
            esn: true,
            iv: "616e640169766563",
            payload: "636973636f0172756c65730174686501 6e6574776501646566696e6501746865
                      746563686e6f6c6f6769657301746861 7477696c6c01646566696e65746f6d6f
                      72726f77",
            next_header: 1,
            packet: "17405e67dd0db99b616e640169766563
                     d4b7ed86a1777f2ea13d6973d324c69e 7b43f826fb56831226508bebd2dceb18
                     d0a6df10e5487df074113e14c641024e 3e6773d91a62ee429b043a10e3efe6b0
                     12a49363412364f8c0cac587f249e56b 11e24f30e44ccc76",
        },
        // draft-mcgrew-gcm-test-01, 256-bit key, extended sequence number 2^64 - 1.
        EspVector {
            source: "draft-mcgrew-gcm-test-01, SPI 796b6963 (ESN)",
            cipher: Cipher::Aes256Gcm16,
            key_material: "6c6567616c697a656d6172696a75616e 61616e64646f69746265666f72656961
                           7475726e",
            spi: 0x796b_6963,
            seq: u64::MAX,
            esn: true,
            iv: "333021696765746d",
            payload: "45000030da3a00008001df3bc0a80005 c0a800010800c6cd0200070061626364
                      65666768696a6b6c6d6e6f7071727374",
            next_header: 1,
            packet: "796b6963ffffffff333021696765746d
                     f97ab2aa356d8edce17644ac8c78e25d d24dedbb29ebf1b64a274b39b49c3a86
                     4cd3d78ca4ae68a32b42458fb57dbe82 1dcc63b9d0937ba2945f669368661a32
                     9fb4c053",
        },
    ];

    #[test]
    fn published_esp_packets_seal_byte_for_byte() {
        for v in VECTORS {
            let (sealer, _) = pair(v.cipher, &hex(v.key_material));
            let payload = hex(v.payload);
            let want = hex(v.packet);
            let mut buf = vec![0u8; want.len() + 7];
            buf[PLAINTEXT_OFFSET..PLAINTEXT_OFFSET + payload.len()].copy_from_slice(&payload);
            let iv: [u8; IV_LEN] = hex(v.iv).try_into().unwrap();
            let n = sealer.seal_with_iv(v.spi, v.seq, v.esn, v.next_header, iv, &mut buf, payload.len()).unwrap();
            assert_eq!(n, want.len(), "{}", v.source);
            assert_eq!(n, sealed_len(payload.len()), "{}", v.source);
            assert_eq!(hex_string(&buf[..n]), hex_string(&want), "{}", v.source);
            assert!(buf[n..].iter().all(|&b| b == 0), "{}: wrote past the packet", v.source);
        }
    }

    #[test]
    fn published_esp_packets_open() {
        for v in VECTORS {
            let (_, opener) = pair(v.cipher, &hex(v.key_material));
            let mut packet = hex(v.packet);
            // The receiver infers the full sequence number from the low half, as the
            // datapath does: a window whose top is just below the vector's number.
            let mut window = ReplayWindow::new(64);
            if v.seq > 1 {
                window.accept(v.seq - 1).unwrap();
            }
            let seq_low = u32::from_be_bytes(packet[4..8].try_into().unwrap());
            let seq = window.infer_sequence(seq_low, v.esn);
            assert_eq!(seq, v.seq, "{}", v.source);
            window.check(seq).unwrap();
            let opened = opener.open(seq, v.esn, &mut packet).unwrap();
            assert_eq!(opened.next_header, v.next_header, "{}", v.source);
            assert_eq!(opened.payload.to_vec(), hex(v.payload), "{}", v.source);
            window.accept(seq).unwrap();
        }
    }

    #[test]
    fn published_esp_packets_fail_with_the_other_aad_form() {
        // ESN and non-ESN AADs differ, so a packet sealed with one does not open with the other.
        for v in VECTORS {
            let (_, opener) = pair(v.cipher, &hex(v.key_material));
            let mut packet = hex(v.packet);
            let seq = if v.esn { v.seq & 0xffff_ffff } else { v.seq };
            assert_eq!(opener.open(seq, !v.esn, &mut packet), Err(OpenError::Authentication));
        }
    }

    fn hex_string(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn key_bytes(seed: u8) -> Vec<u8> {
        (0..36u8).map(|i| i.wrapping_mul(7).wrapping_add(seed)).collect()
    }

    fn sealed(sealer: &Sealer, spi: u32, seq: u64, esn: bool, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; sealed_len(payload.len())];
        buf[PLAINTEXT_OFFSET..PLAINTEXT_OFFSET + payload.len()].copy_from_slice(payload);
        let n = sealer.seal(spi, seq, esn, 17, &mut buf, payload.len()).unwrap();
        assert_eq!(n, buf.len());
        buf
    }

    #[test]
    fn round_trip_both_ciphers_all_small_lengths() {
        for cipher in CIPHERS {
            let (sealer, opener) = pair(cipher, &key_bytes(1));
            for len in 0..70usize {
                let payload: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
                for (seq, esn) in [(1u64, false), (u32::MAX as u64, false), (0x1_0000_0003, true)] {
                    let mut packet = sealed(&sealer, 0xdead_beef, seq, esn, &payload);
                    assert_eq!(packet.len() % 4, 0);
                    assert_eq!(&packet[..4], &0xdead_beefu32.to_be_bytes());
                    assert_eq!(&packet[4..8], &(seq as u32).to_be_bytes());
                    assert_eq!(&packet[8..16], &seq.to_be_bytes(), "IV is the sequence number");
                    if len >= 16 {
                        assert_ne!(&packet[16..32], &payload[..16], "payload is encrypted");
                    }
                    let opened = opener.open(seq, esn, &mut packet).unwrap();
                    assert_eq!(opened.next_header, 17);
                    assert_eq!(opened.payload, &payload[..]);
                }
            }
        }
    }

    #[test]
    fn payload_is_a_sub_slice_of_the_packet() {
        let (sealer, opener) = pair(Cipher::Aes256Gcm16, &key_bytes(2));
        let mut packet = sealed(&sealer, 7, 9, false, b"hello overlay");
        let start = packet.as_ptr() as usize;
        let opened = opener.open(9, false, &mut packet).unwrap();
        assert_eq!(opened.payload.as_ptr() as usize, start + PLAINTEXT_OFFSET);
        opened.payload[0] = b'H'; // writable, for in-place rewriting by the datapath
    }

    #[test]
    fn open_to_gives_what_open_gives_and_leaves_the_packet() {
        for cipher in CIPHERS {
            for esn in [false, true] {
                let (sealer, opener) = pair(cipher, &key_bytes(4));
                let seq = if esn { 0x3_0000_0021 } else { 0x21 };
                for len in [0usize, 1, 2, 3, 1447, 1448] {
                    let payload: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
                    let packet = sealed(&sealer, 0x0a0b_0c0d, seq, esn, &payload);
                    let mut out = vec![0xEE; plaintext_len(packet.len()).unwrap()];
                    let (next_header, payload_len) = opener.open_to(seq, esn, &packet, &mut out).unwrap();
                    let mut in_place = packet.clone();
                    let opened = opener.open(seq, esn, &mut in_place).unwrap();
                    assert_eq!((next_header, &out[..payload_len]), (opened.next_header, &opened.payload[..]));
                    assert_eq!(packet, sealed(&sealer, 0x0a0b_0c0d, seq, esn, &payload), "the packet is unchanged");
                    let mut short = vec![0u8; out.len() - 1];
                    assert_eq!(opener.open_to(seq, esn, &packet, &mut short), Err(OpenError::Truncated));
                }
                let mut bad = sealed(&sealer, 0x0a0b_0c0d, seq, esn, b"forged");
                let last = bad.len() - 1;
                bad[last] ^= 1;
                let mut out = vec![0u8; plaintext_len(bad.len()).unwrap()];
                assert_eq!(opener.open_to(seq, esn, &bad, &mut out), Err(OpenError::Authentication));
                assert_eq!(opener.open_to(seq + 1, esn, &bad, &mut out), Err(OpenError::SequenceMismatch));
            }
        }
        assert_eq!(plaintext_len(MIN_PACKET_LEN - 1), None);
        assert_eq!(plaintext_len(MIN_PACKET_LEN), Some(2));
    }

    #[test]
    fn tampering_any_byte_fails_authentication() {
        for cipher in CIPHERS {
            for esn in [false, true] {
                let (sealer, opener) = pair(cipher, &key_bytes(3));
                let seq = if esn { 0x7_0000_0010 } else { 0x10 };
                let good = sealed(&sealer, 0x0102_0304, seq, esn, b"an overlay frame, 31 bytes long");
                for i in 0..good.len() {
                    for flip in [0x01u8, 0x80] {
                        let mut bad = good.clone();
                        bad[i] ^= flip;
                        // The caller reads the sequence number from the (tampered) packet.
                        let low = u32::from_be_bytes(bad[4..8].try_into().unwrap());
                        let seq = (seq & !0xffff_ffff) | u64::from(low);
                        assert_eq!(
                            opener.open(seq, esn, &mut bad),
                            Err(OpenError::Authentication),
                            "{cipher} esn={esn} byte {i}"
                        );
                    }
                }
                // A different high half (ESN) is also part of the AAD.
                if esn {
                    let mut bad = good.clone();
                    assert_eq!(opener.open(seq + (1 << 32), esn, &mut bad), Err(OpenError::Authentication));
                }
                let mut ok = good.clone();
                assert!(opener.open(seq, esn, &mut ok).is_ok());
            }
        }
    }

    #[test]
    fn wrong_key_or_cipher_fails() {
        let (sealer, _) = pair(Cipher::Chacha20Poly1305, &key_bytes(4));
        let good = sealed(&sealer, 1, 1, false, b"payload");
        let mut other_key = key_bytes(4);
        other_key[0] ^= 1;
        let (_, wrong_key) = pair(Cipher::Chacha20Poly1305, &other_key);
        assert_eq!(wrong_key.open(1, false, &mut good.clone()), Err(OpenError::Authentication));
        let mut other_salt = key_bytes(4);
        other_salt[35] ^= 1;
        let (_, wrong_salt) = pair(Cipher::Chacha20Poly1305, &other_salt);
        assert_eq!(wrong_salt.open(1, false, &mut good.clone()), Err(OpenError::Authentication));
        let (_, wrong_cipher) = pair(Cipher::Aes256Gcm16, &key_bytes(4));
        assert_eq!(wrong_cipher.open(1, false, &mut good.clone()), Err(OpenError::Authentication));
    }

    #[test]
    fn esn_and_non_esn_aad_differ() {
        for cipher in CIPHERS {
            let (sealer, opener) = pair(cipher, &key_bytes(5));
            // Same on the wire (high half 0), different AAD.
            let non_esn = sealed(&sealer, 42, 77, false, b"same bytes");
            let esn = sealed(&sealer, 42, 77, true, b"same bytes");
            assert_eq!(non_esn[..PLAINTEXT_OFFSET], esn[..PLAINTEXT_OFFSET]);
            assert_ne!(non_esn, esn);
            assert_eq!(opener.open(77, true, &mut non_esn.clone()), Err(OpenError::Authentication));
            assert_eq!(opener.open(77, false, &mut esn.clone()), Err(OpenError::Authentication));
            assert!(opener.open(77, false, &mut non_esn.clone()).is_ok());
            assert!(opener.open(77, true, &mut esn.clone()).is_ok());
        }
    }

    /// Seals a plaintext whose trailer the test wrote itself (bypassing `trailer::write`).
    fn seal_raw_plaintext(sealer: &Sealer, spi: u32, seq: u32, plaintext: &[u8]) -> Vec<u8> {
        let mut packet = vec![0u8; PLAINTEXT_OFFSET + plaintext.len() + ICV_LEN];
        packet[..4].copy_from_slice(&spi.to_be_bytes());
        packet[4..8].copy_from_slice(&seq.to_be_bytes());
        let iv = u64::from(seq).to_be_bytes();
        packet[8..16].copy_from_slice(&iv);
        let aad = EspAad::new(spi.to_be_bytes(), u64::from(seq), false);
        let (body, icv) = packet[PLAINTEXT_OFFSET..].split_at_mut(plaintext.len());
        body.copy_from_slice(plaintext);
        let tag = sealer.aead.seal(&iv, aad.as_slice(), body).unwrap();
        icv.copy_from_slice(&tag);
        packet
    }

    #[test]
    fn bad_padding_is_detected_after_authentication() {
        for cipher in CIPHERS {
            let (sealer, opener) = pair(cipher, &key_bytes(6));
            let cases: &[&[u8]] = &[
                b"ab\x01\x03\x02\x11",    // pad bytes 1,3
                b"ab\x00\x00\x02\x11",    // pad bytes 0,0
                b"a\x01\x02\x03\x04\x11", // pad length 4 > available 3
                b"\x05\x11",              // pad length 5, nothing before it
            ];
            for (i, pt) in cases.iter().enumerate() {
                let mut packet = seal_raw_plaintext(&sealer, 9, 3, pt);
                assert_eq!(opener.open(3, false, &mut packet), Err(OpenError::BadPadding), "{i}");
            }
            // The same construction with a valid trailer opens, and longer padding is fine.
            let mut packet = seal_raw_plaintext(&sealer, 9, 3, b"ab\x01\x02\x03\x04\x05\x06\x06\x11");
            let opened = opener.open(3, false, &mut packet).unwrap();
            assert_eq!(opened.payload, b"ab");
            assert_eq!(opened.next_header, 17);
        }
    }

    #[test]
    fn short_packets_are_truncated_not_panics() {
        let (sealer, opener) = pair(Cipher::Aes256Gcm16, &key_bytes(7));
        let good = sealed(&sealer, 1, 1, false, b"");
        assert_eq!(good.len(), MIN_PACKET_LEN + 2);
        for len in 0..MIN_PACKET_LEN {
            let mut short = good[..len].to_vec();
            assert_eq!(opener.open(1, false, &mut short), Err(OpenError::Truncated), "{len}");
        }
        // Cut at or past the minimum: the ICV no longer verifies.
        for len in MIN_PACKET_LEN..good.len() {
            let mut short = good[..len].to_vec();
            assert_eq!(opener.open(1, false, &mut short), Err(OpenError::Authentication));
        }
    }

    #[test]
    fn sequence_mismatch_is_reported() {
        let (sealer, opener) = pair(Cipher::Aes256Gcm16, &key_bytes(8));
        let packet = sealed(&sealer, 1, 5, false, b"x");
        assert_eq!(opener.open(6, false, &mut packet.clone()), Err(OpenError::SequenceMismatch));
        assert_eq!(opener.open(5 + (1 << 32), false, &mut packet.clone()), Err(OpenError::SequenceMismatch));
    }

    #[test]
    fn short_buffers_give_errors_not_panics() {
        let (sealer, _) = pair(Cipher::Chacha20Poly1305, &key_bytes(9));
        for pt_len in [0usize, 1, 2, 3, 100] {
            let need = sealed_len(pt_len);
            for len in 0..need {
                let mut buf = vec![0u8; len];
                assert_eq!(
                    sealer.seal(1, 1, false, 17, &mut buf, pt_len),
                    Err(SealError::BufferTooShort { needed: need, available: len })
                );
            }
            let mut buf = vec![0u8; need];
            assert_eq!(sealer.seal(1, 1, false, 17, &mut buf, pt_len), Ok(need));
        }
        let mut buf = [0u8; 64];
        for huge in [usize::MAX, usize::MAX - 1, usize::MAX - 40, usize::MAX / 2] {
            assert!(matches!(sealer.seal(1, 1, false, 17, &mut buf, huge), Err(SealError::BufferTooShort { .. })));
        }
    }

    #[test]
    fn invalid_sequence_numbers_are_refused() {
        let (sealer, _) = pair(Cipher::Aes256Gcm16, &key_bytes(10));
        let mut buf = [0u8; 64];
        assert_eq!(sealer.seal(1, 0, false, 17, &mut buf, 4), Err(SealError::SequenceZero));
        assert_eq!(sealer.seal(1, 0, true, 17, &mut buf, 4), Err(SealError::SequenceZero));
        assert_eq!(sealer.seal(1, 1 << 32, false, 17, &mut buf, 4), Err(SealError::SequenceExhausted(1 << 32)));
        assert!(sealer.seal(1, 1 << 32, true, 17, &mut buf, 4).is_ok());
        assert!(sealer.seal(1, u32::MAX.into(), false, 17, &mut buf, 4).is_ok());
    }

    #[test]
    fn sealers_and_openers_are_shareable_and_say_nothing_of_keys() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Sealer>();
        send_sync::<Opener>();
        let (sealer, opener) = pair(Cipher::Chacha20Poly1305, &[0xab; 36]);
        assert_eq!(format!("{sealer:?}"), "Sealer { cipher: \"chacha20poly1305\", .. }");
        assert_eq!(format!("{opener:?}"), "Opener { cipher: \"chacha20poly1305\", .. }");
        assert_eq!(sealer.cipher(), Cipher::Chacha20Poly1305);
    }

    #[test]
    fn concurrent_use_from_threads() {
        let (sealer, opener) = pair(Cipher::Aes256Gcm16, &key_bytes(11));
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (sealer, opener) = (&sealer, &opener);
                s.spawn(move || {
                    for i in 1..200u64 {
                        let seq = t * 1000 + i;
                        let payload = seq.to_be_bytes();
                        let mut p = sealed(sealer, 5, seq, false, &payload);
                        let o = opener.open(seq, false, &mut p).unwrap();
                        assert_eq!(o.payload, &payload[..]);
                    }
                });
            }
        });
    }

    #[test]
    fn error_messages() {
        assert!(OpenError::Truncated.to_string().contains("34"));
        assert!(OpenError::Authentication.to_string().contains("integrity check failed"));
        let e = SealError::BufferTooShort { needed: 100, available: 50 }.to_string();
        assert!(e.contains("100") && e.contains("50"), "{e}");
        assert!(SealError::SequenceExhausted(1 << 32).to_string().contains("rekeyed"));
        assert_eq!(trailer_len(0), 2 + 2 + ICV_LEN);
    }
}
