//! Criterion benches of the session layer, on the pure in-memory [`Session`]
//! (so they measure cryptography and state handling, not a store) plus one
//! store-backed case. Run with
//! `cargo bench -p sotto-core --bench session -- --warm-up-time 1 --measurement-time 3`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand_core::OsRng;
use sotto_core::prekeys::{signed_bundle_blob, KemPrekey, OneTimePrekey, SignedPrekey};
use sotto_core::session::PreKeyMessage;
use sotto_core::{
    Device, DeviceAddress, IdentityKeyPair, MemoryStore, Padding, PrekeyBundle, Session,
};

struct Bob {
    id: IdentityKeyPair,
    spk: SignedPrekey,
    kem: KemPrekey,
    otk: OneTimePrekey,
    okem: KemPrekey,
    blob: Vec<u8>,
}

fn bob() -> Bob {
    let id = IdentityKeyPair::generate(&mut OsRng);
    let spk = SignedPrekey::generate(&id, 1, 1, 0, &mut OsRng);
    let kem = KemPrekey::generate(&id, 1, 1, true, 0, &mut OsRng);
    let okem = KemPrekey::generate(&id, 1, 2, false, 0, &mut OsRng);
    let otk = OneTimePrekey::generate(1, &mut OsRng);
    let blob = signed_bundle_blob(&id, 1, &spk, &kem);
    Bob {
        id,
        spk,
        kem,
        otk,
        okem,
        blob,
    }
}

/// Both sides set up; returns (alice, bob) with one message exchanged each way.
fn pair() -> (Session, Session) {
    let b = bob();
    let alice_id = IdentityKeyPair::generate(&mut OsRng);
    let bundle = PrekeyBundle::assemble(&b.blob, None, None).unwrap();
    let mut alice = Session::initiate(&alice_id, &bundle, 0, &mut OsRng).unwrap();
    let first = alice.encrypt(b"hi", Padding::None, &mut OsRng).unwrap();
    let m = PreKeyMessage::parse(&first.bytes).unwrap();
    let (mut bob, _) = Session::respond(&b.id, &m, &b.spk, None, &b.kem).unwrap();
    let reply = bob.encrypt(b"hi", Padding::None, &mut OsRng).unwrap();
    alice.decrypt(&reply.bytes).unwrap();
    (alice, bob)
}

fn setup(c: &mut Criterion) {
    let b = bob();
    let alice_id = IdentityKeyPair::generate(&mut OsRng);
    let ec = b.otk.upload_item().bytes;
    let kem = b.okem.upload_item().bytes;
    c.bench_function("setup/both_sides_pqxdh_one_time_keys", |bench| {
        bench.iter(|| {
            let bundle = PrekeyBundle::assemble(&b.blob, Some(&ec), Some(&kem)).unwrap();
            let mut alice = Session::initiate(&alice_id, &bundle, 0, &mut OsRng).unwrap();
            let first = alice.encrypt(b"hello", Padding::Padme, &mut OsRng).unwrap();
            let m = PreKeyMessage::parse(&first.bytes).unwrap();
            Session::respond(&b.id, &m, &b.spk, Some(&b.otk), &b.okem).unwrap()
        })
    });
    c.bench_function("setup/initiator_only", |bench| {
        bench.iter(|| {
            let bundle = PrekeyBundle::assemble(&b.blob, Some(&ec), Some(&kem)).unwrap();
            let mut alice = Session::initiate(&alice_id, &bundle, 0, &mut OsRng).unwrap();
            alice.encrypt(b"hello", Padding::Padme, &mut OsRng).unwrap()
        })
    });
}

fn one_way(c: &mut Criterion) {
    let mut g = c.benchmark_group("one_way");
    for size in [256usize, 64 * 1024] {
        let (mut alice, mut bob) = pair();
        let pt = vec![0x42u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size}B_encrypt_decrypt"), |bench| {
            bench.iter(|| {
                let m = alice.encrypt(&pt, Padding::None, &mut OsRng).unwrap();
                bob.decrypt(&m.bytes).unwrap()
            })
        });
    }
    g.finish();
}

fn ping_pong(c: &mut Criterion) {
    let (mut alice, mut bob) = pair();
    let pt = [0x42u8; 64];
    // Every message goes the other way, so every message is a DH ratchet step.
    c.bench_function("ping_pong/two_messages", |bench| {
        bench.iter(|| {
            let m = alice.encrypt(&pt, Padding::None, &mut OsRng).unwrap();
            bob.decrypt(&m.bytes).unwrap();
            let r = bob.encrypt(&pt, Padding::None, &mut OsRng).unwrap();
            alice.decrypt(&r.bytes).unwrap()
        })
    });
}

fn out_of_order(c: &mut Criterion) {
    c.bench_function("out_of_order/decrypt_1000_ahead", |bench| {
        bench.iter_batched(
            || {
                let (mut alice, bob) = pair();
                let mut last = Vec::new();
                for _ in 0..=1000 {
                    last = alice
                        .encrypt(b"x", Padding::None, &mut OsRng)
                        .unwrap()
                        .bytes;
                }
                (bob, last)
            },
            |(mut bob, last)| {
                bob.decrypt(&last).unwrap();
                bob
            },
            BatchSize::PerIteration,
        )
    });
}

fn device_memory_store(c: &mut Criterion) {
    let now = 1;
    let mut alice = Device::create(MemoryStore::new(), 1, now, &mut OsRng).unwrap();
    let mut bob = Device::create(MemoryStore::new(), 2, now, &mut OsRng).unwrap();
    let blob = bob.signed_bundle().unwrap();
    let bundle = PrekeyBundle::assemble(&blob, None, None).unwrap();
    let (a, b) = (DeviceAddress::new(*b"a", 1), DeviceAddress::new(*b"b", 2));
    alice.process_bundle(&b, &bundle, now, &mut OsRng).unwrap();
    let m = alice.encrypt(&b, b"hi", &mut OsRng).unwrap();
    bob.decrypt(&a, &m.bytes, now).unwrap();
    let r = bob.encrypt(&a, b"hi", &mut OsRng).unwrap();
    alice.decrypt(&b, &r.bytes, now).unwrap();
    let pt = [0x42u8; 256];
    c.bench_function("device_memory_store/one_way_256B", |bench| {
        bench.iter(|| {
            let m = alice.encrypt(&b, &pt, &mut OsRng).unwrap();
            bob.decrypt(&a, &m.bytes, now).unwrap()
        })
    });
}

criterion_group!(
    benches,
    setup,
    one_way,
    ping_pong,
    out_of_order,
    device_memory_store
);
criterion_main!(benches);
