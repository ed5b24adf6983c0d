//! Sealed sender (PROTOCOL.md I.14): what hiding the sender from the relay
//! costs per message of 256 B (about a ratchet message of a short text) on
//! each side: one X25519 key generation and agreement to seal, one
//! agreement to open; and a group's shared seal (no agreement).
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use rand_core::OsRng;
use sotto_core::padding::Padding;
use sotto_core::sealed::{open, open_shared, seal, seal_shared};
use sotto_core::IdentityKeyPair;

fn sealed(c: &mut Criterion) {
    let bob = IdentityKeyPair::generate(&mut OsRng);
    let inner = [0x61u8; 256];
    let to = *bob.public().dh_public();
    c.bench_function("sealed/seal_256B", |b| {
        b.iter(|| seal(&to, &inner, Padding::Buckets, &mut OsRng).unwrap())
    });
    let sealed = seal(&to, &inner, Padding::Buckets, &mut OsRng).unwrap();
    c.bench_function("sealed/open_256B", |b| {
        b.iter(|| open(&bob, &sealed).unwrap())
    });
    let key = [9u8; 32];
    c.bench_function("sealed/seal_shared_256B", |b| {
        b.iter(|| seal_shared(&key, &inner, Padding::Buckets, &mut OsRng).unwrap())
    });
    let shared = seal_shared(&key, &inner, Padding::Buckets, &mut OsRng).unwrap();
    c.bench_function("sealed/open_shared_256B", |b| {
        b.iter(|| open_shared(&key, &shared).unwrap())
    });
}

criterion_group!(benches, sealed);
criterion_main!(benches);
