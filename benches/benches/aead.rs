//! The AEAD choice for encrypted repositories (issue 14): RustCrypto's XChaCha20-Poly1305
//! and AES-256-GCM-SIV, sealing 64 KiB (the average chunk) and 1 MiB of random bytes,
//! with BLAKE3 keyed hashing (the chunk id) beside them for scale. One core.
//!
//!   cargo bench -p dedisk-benches --bench aead
//!
//! Also ring's ChaCha20-Poly1305 and AES-256-GCM (assembly), and dedisk's sealer (a
//! one-message key per object, then ring's AES-256-GCM). See repo-format's `crypto`
//! module for the choice and the figures.

use aes_gcm_siv::aead::{Aead, KeyInit};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn data(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn aead(c: &mut Criterion) {
    let mut g = c.benchmark_group("aead");
    let key = [7u8; 32];
    let xchacha = chacha20poly1305::XChaCha20Poly1305::new((&key).into());
    let siv = aes_gcm_siv::Aes256GcmSiv::new((&key).into());
    for len in [64 << 10, 1 << 20] {
        let msg = data(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("xchacha20poly1305", len), &msg, |b, m| {
            let nonce = chacha20poly1305::XNonce::from_slice(&[1; 24]);
            b.iter(|| xchacha.encrypt(nonce, m.as_slice()).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("aes256gcmsiv", len), &msg, |b, m| {
            let nonce = aes_gcm_siv::Nonce::from_slice(&[1; 12]);
            b.iter(|| siv.encrypt(nonce, m.as_slice()).unwrap())
        });
        // ring's assembly (OpenSSL's, via BoringSSL): the 96-bit-nonce AEADs. An
        // XChaCha20 built on it derives a subkey with HChaCha20 first (one block).
        for (name, alg) in [
            ("ring_chacha20poly1305", &ring::aead::CHACHA20_POLY1305),
            ("ring_aes256gcm", &ring::aead::AES_256_GCM),
        ] {
            let k = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(alg, &key).unwrap());
            g.bench_with_input(BenchmarkId::new(name, len), &msg, |b, m| {
                b.iter(|| {
                    let mut buf = m.clone();
                    let nonce = ring::aead::Nonce::assume_unique_for_key([1; 12]);
                    k.seal_in_place_append_tag(nonce, ring::aead::Aad::empty(), &mut buf)
                        .unwrap();
                    buf
                })
            });
        }
        // What dedisk uses: a per-object key (keyed BLAKE3 of a random salt), then ring's
        // AES-256-GCM.
        let sealer = repo_format::crypto::MasterKey::from_bytes(key).sealer();
        g.bench_with_input(BenchmarkId::new("dedisk_sealer", len), &msg, |b, m| {
            b.iter(|| {
                sealer
                    .seal(repo_format::crypto::SealedKind::DataBlob, &[0; 32], m)
                    .unwrap()
            })
        });
        g.bench_with_input(BenchmarkId::new("blake3_keyed", len), &msg, |b, m| {
            b.iter(|| blake3::keyed_hash(&key, m))
        });
    }
    g.finish();
}

criterion_group!(benches, aead);
criterion_main!(benches);
