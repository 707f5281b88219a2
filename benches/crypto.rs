//! Criterion benchmarks of the crypto hot path (`crypto/...`) with naive baselines in the same
//! run (`baseline/...`), so ratios can be read on a noisy shared machine.
//!
//! Run: `cargo bench --bench crypto` (CI runs a short mode; see `.ci/run`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pgseal_crypto::envelope::{envelope_len, EnvelopeKey};
use pgseal_crypto::{BlindIndexKey, ColumnId, IndexGroup, SecretKey};

fn material() -> SecretKey {
    SecretKey::from_bytes([0x5a; 32])
}

fn column() -> ColumnId {
    ColumnId::new("public", "patients", "email").unwrap()
}

fn crypto(c: &mut Criterion) {
    let key = EnvelopeKey::derive(&material(), 1, &column()).unwrap();
    let index = BlindIndexKey::derive(&material(), 1, &IndexGroup::new("emails").unwrap()).unwrap();

    let mut group = c.benchmark_group("crypto/encrypt");
    for size in [16usize, 32, 256, 4096] {
        let plain = vec![0x61u8; size];
        let mut out = Vec::with_capacity(envelope_len(size));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                out.clear();
                key.encrypt_into(black_box(&plain), &mut out).unwrap();
                black_box(&out);
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("crypto/decrypt");
    for size in [16usize, 32, 256, 4096] {
        let mut envelope = Vec::new();
        key.encrypt_into(&vec![0x61u8; size], &mut envelope)
            .unwrap();
        let mut out = Vec::with_capacity(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                out.clear();
                key.decrypt_into(black_box(&envelope), &mut out).unwrap();
                black_box(&out);
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("crypto/blind_index");
    for size in [16usize, 32, 256] {
        let input = vec![0x61u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| black_box(index.tag(black_box(&input))))
        });
    }
    group.finish();
}

fn baselines(c: &mut Criterion) {
    let raw_key = [0x5au8; 32];
    let nonce = aes_gcm_siv::Nonce::from([7u8; 12]);
    let mut group = c.benchmark_group("baseline");
    group.bench_function("rustcrypto_new_cipher_per_call/32", |b| {
        let mut buf = [0x61u8; 32];
        b.iter(|| {
            let cipher = aes_gcm_siv::Aes256GcmSiv::new(black_box(&raw_key.into()));
            let tag = cipher
                .encrypt_inout_detached(&nonce, b"aad", (&mut buf[..]).into())
                .unwrap();
            black_box(tag);
        })
    });
    group.bench_function("rustcrypto_reused_cipher/32", |b| {
        let cipher = aes_gcm_siv::Aes256GcmSiv::new(&raw_key.into());
        let mut buf = [0x61u8; 32];
        b.iter(|| {
            let tag = cipher
                .encrypt_inout_detached(&nonce, b"aad", (&mut buf[..]).into())
                .unwrap();
            black_box(tag);
        })
    });
    group.bench_function("hmac_crate_clone_per_value/32", |b| {
        use hmac::Mac;
        let mac = <hmac::Hmac<sha2::Sha256> as hmac::KeyInit>::new_from_slice(&raw_key).unwrap();
        let input = [0x61u8; 32];
        b.iter(|| {
            let mut m = mac.clone();
            m.update(black_box(&input));
            black_box(m.finalize().into_bytes());
        })
    });
    group.finish();
}

criterion_group!(benches, crypto, baselines);
criterion_main!(benches);
