//! ESP seal and open of 1400-byte payloads (an MTU-sized overlay frame) with both AEADs, through
//! the public `meshd::esp` API, in place in caller-owned buffers as the datapath does it; open
//! also out of place, into another buffer, as the receive path does into a coalescing slot; and,
//! as the floor to compare with, the bare aws-lc-rs AEAD seal of the same 1400 bytes.
//!
//!     cargo bench -p meshd --features internals --bench esp  # or `-- --quick` for a short run

use std::hint::black_box;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mesh_config::Cipher;
use meshd::esp::{plaintext_len, sealed_len, KeyMaterial, Opener, Sealer, KEY_MATERIAL_LEN, PLAINTEXT_OFFSET};

const PAYLOAD_LEN: usize = 1400;
const SPI: u32 = 0x0000_1102;
/// Next header of a meshd transport-mode packet: the inner UDP header.
const NEXT_HEADER: u8 = 17;
const CIPHERS: [(Cipher, &str); 2] =
    [(Cipher::Aes256Gcm16, "aes256gcm16"), (Cipher::Chacha20Poly1305, "chacha20poly1305")];

fn key() -> KeyMaterial {
    let bytes: Vec<u8> = (0..KEY_MATERIAL_LEN as u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    KeyMaterial::from_bytes(&bytes).expect("36 bytes of key material")
}

/// A buffer with the payload at `PLAINTEXT_OFFSET` and room for the trailer.
fn plaintext_buffer() -> Vec<u8> {
    let mut buf = vec![0u8; sealed_len(PAYLOAD_LEN)];
    for (i, b) in buf[PLAINTEXT_OFFSET..PLAINTEXT_OFFSET + PAYLOAD_LEN].iter_mut().enumerate() {
        *b = i as u8;
    }
    buf
}

fn seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("esp_seal_1400");
    group.throughput(Throughput::Bytes(PAYLOAD_LEN as u64));
    for (cipher, name) in CIPHERS {
        let sealer = Sealer::new(cipher, &key()).expect("sealer");
        let mut buf = plaintext_buffer();
        let mut seq = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                // Sealing encrypts the payload in place; sealing the ciphertext again costs the
                // same, so the buffer is not reset between iterations.
                seq += 1;
                let len = sealer.seal(SPI, seq, true, NEXT_HEADER, black_box(&mut buf), PAYLOAD_LEN).expect("seal");
                black_box(len)
            })
        });
    }
    group.finish();
}

/// The sequence number of the packet the open benchmarks open.
const OPEN_SEQ: u64 = 42;

/// An opener for `cipher` and a packet it opens (sequence number [`OPEN_SEQ`], ESN on).
fn opener_and_packet(cipher: Cipher) -> (Opener, Vec<u8>) {
    let sealer = Sealer::new(cipher, &key()).expect("sealer");
    let mut sealed = plaintext_buffer();
    let len = sealer.seal(SPI, OPEN_SEQ, true, NEXT_HEADER, &mut sealed, PAYLOAD_LEN).expect("seal");
    sealed.truncate(len);
    (Opener::new(cipher, &key()).expect("opener"), sealed)
}

fn open(c: &mut Criterion) {
    let mut group = c.benchmark_group("esp_open_1400");
    group.throughput(Throughput::Bytes(PAYLOAD_LEN as u64));
    for (cipher, name) in CIPHERS {
        let (opener, sealed) = opener_and_packet(cipher);
        // Opening decrypts in place, so every iteration gets a fresh copy of the sealed packet;
        // the copy is set-up, not measured.
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || sealed.clone(),
                |packet| {
                    let opened = opener.open(OPEN_SEQ, true, black_box(packet)).expect("open");
                    assert_eq!(opened.payload.len(), PAYLOAD_LEN);
                    black_box(opened.next_header)
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
    let mut group = c.benchmark_group("esp_open_to_1400");
    group.throughput(Throughput::Bytes(PAYLOAD_LEN as u64));
    for (cipher, name) in CIPHERS {
        let (opener, sealed) = opener_and_packet(cipher);
        // The packet is not changed: no set-up per iteration.
        let mut out = vec![0u8; plaintext_len(sealed.len()).expect("a whole packet")];
        group.bench_function(name, |b| {
            b.iter(|| {
                let (next_header, payload_len) =
                    opener.open_to(OPEN_SEQ, true, black_box(&sealed), black_box(&mut out)).expect("open");
                assert_eq!(payload_len, PAYLOAD_LEN);
                black_box(next_header)
            })
        });
    }
    group.finish();
}

/// The AEAD alone (aws-lc-rs, the library under `meshd::esp`): what ESP framing adds is the
/// difference to `esp_seal_1400`.
fn aead_seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("aead_seal_1400");
    group.throughput(Throughput::Bytes(PAYLOAD_LEN as u64));
    for (algorithm, name) in [(&AES_256_GCM, "aes256gcm16"), (&CHACHA20_POLY1305, "chacha20poly1305")] {
        let key = LessSafeKey::new(UnboundKey::new(algorithm, &[7u8; 32]).expect("key"));
        let mut data = vec![0x5au8; PAYLOAD_LEN + 2];
        let mut counter = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                counter += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&counter.to_be_bytes());
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&[1u8; 12]),
                        black_box(&mut data[..]),
                    )
                    .expect("seal");
                black_box(tag)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, seal, open, aead_seal);
criterion_main!(benches);
