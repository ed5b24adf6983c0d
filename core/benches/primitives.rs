//! The floor under the session benches: the cost on this machine of each
//! primitive PQXDH and the Double Ratchet are built from, measured through the
//! same crates and features. Compare `session` against these. Run with
//! `cargo bench -p sotto-core --bench primitives -- --warm-up-time 1 --measurement-time 3`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use criterion::{criterion_group, criterion_main, Criterion};
use ed25519_dalek::{Signer, SigningKey};
use ml_kem::kem::{Decapsulate, Encapsulate};
use ml_kem::{KemCore, MlKem768};
use rand_core::OsRng;
use x25519_dalek::{PublicKey, StaticSecret};

fn x25519(c: &mut Criterion) {
    let ours = StaticSecret::random_from_rng(OsRng);
    let theirs = PublicKey::from(&StaticSecret::random_from_rng(OsRng));
    c.bench_function("primitives/x25519_agreement", |b| {
        b.iter(|| ours.diffie_hellman(&theirs))
    });
    c.bench_function("primitives/x25519_key_generation", |b| {
        b.iter(|| PublicKey::from(&StaticSecret::random_from_rng(OsRng)))
    });
}

fn ed25519(c: &mut Criterion) {
    let key = SigningKey::generate(&mut OsRng);
    // About the size of a signed prekey bundle (it carries an ML-KEM key).
    let message = vec![7u8; 1300];
    let signature = key.sign(&message);
    let public = key.verifying_key();
    c.bench_function("primitives/ed25519_verify_strict_1300B", |b| {
        b.iter(|| public.verify_strict(&message, &signature).unwrap())
    });
    c.bench_function("primitives/ed25519_sign_1300B", |b| {
        b.iter(|| key.sign(&message))
    });
}

fn ml_kem_768(c: &mut Criterion) {
    let (dk, ek) = MlKem768::generate(&mut OsRng);
    let (ct, _) = ek.encapsulate(&mut OsRng).unwrap();
    c.bench_function("primitives/ml_kem_768_encapsulate", |b| {
        b.iter(|| ek.encapsulate(&mut OsRng).unwrap())
    });
    c.bench_function("primitives/ml_kem_768_decapsulate", |b| {
        b.iter(|| dk.decapsulate(&ct).unwrap())
    });
}

fn aead(c: &mut Criterion) {
    let cipher = ChaCha20Poly1305::new(&[9u8; 32].into());
    let nonce = [0u8; 12].into();
    let mut buf = vec![0u8; 256];
    c.bench_function("primitives/chacha20poly1305_seal_256B", |b| {
        b.iter(|| {
            cipher
                .encrypt_in_place_detached(&nonce, b"ad", &mut buf)
                .unwrap()
        })
    });
}

criterion_group!(benches, x25519, ed25519, ml_kem_768, aead);
criterion_main!(benches);
