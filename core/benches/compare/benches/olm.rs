//! vodozemac's Olm and Sotto side by side, same machine, same run: the issue
//! quotes Olm's figures from another day; this measures both now.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use rand_core::OsRng;
use sotto_core::prekeys::{signed_bundle_blob, KemPrekey, OneTimePrekey, SignedPrekey};
use sotto_core::session::PreKeyMessage;
use sotto_core::{IdentityKeyPair, Padding, PrekeyBundle, Session};
use vodozemac::olm::{Account, OlmMessage, Session as OlmSession, SessionConfig};

fn olm_pair() -> (OlmSession, OlmSession) {
    let alice = Account::new();
    let mut bob = Account::new();
    bob.generate_one_time_keys(1);
    let otk = *bob.one_time_keys().values().next().unwrap();
    bob.mark_keys_as_published();
    let mut a =
        alice.create_outbound_session(SessionConfig::version_2(), bob.curve25519_key(), otk);
    let OlmMessage::PreKey(m) = a.encrypt("hi") else {
        panic!()
    };
    let mut b = bob
        .create_inbound_session(alice.curve25519_key(), &m)
        .unwrap()
        .session;
    let r = b.encrypt("hi");
    a.decrypt(&r).unwrap();
    (a, b)
}

fn olm(c: &mut Criterion) {
    let alice = Account::new();
    c.bench_function("olm/setup_both_sides", |bench| {
        bench.iter_batched(
            || {
                let mut bob = Account::new();
                bob.generate_one_time_keys(1);
                let otk = *bob.one_time_keys().values().next().unwrap();
                bob.mark_keys_as_published();
                (bob, otk)
            },
            |(mut bob, otk)| {
                let mut a = alice.create_outbound_session(
                    SessionConfig::version_2(),
                    bob.curve25519_key(),
                    otk,
                );
                let OlmMessage::PreKey(m) = a.encrypt("hello") else {
                    panic!()
                };
                bob.create_inbound_session(alice.curve25519_key(), &m)
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    let (mut a, mut b) = olm_pair();
    let pt = "x".repeat(256);
    c.bench_function("olm/one_way_256B", |bench| {
        bench.iter(|| {
            let m = a.encrypt(&pt);
            b.decrypt(&m).unwrap()
        })
    });
    let (mut a, mut b) = olm_pair();
    let pt = "x".repeat(64);
    c.bench_function("olm/ping_pong_two_messages", |bench| {
        bench.iter(|| {
            let m = a.encrypt(&pt);
            b.decrypt(&m).unwrap();
            let r = b.encrypt(&pt);
            a.decrypt(&r).unwrap()
        })
    });
}

fn sotto_pair() -> (Session, Session) {
    let id = IdentityKeyPair::generate(&mut OsRng);
    let spk = SignedPrekey::generate(&id, 1, 1, 0, &mut OsRng);
    let kem = KemPrekey::generate(&id, 1, 1, true, 0, &mut OsRng);
    let blob = signed_bundle_blob(&id, 1, &spk, &kem);
    let alice_id = IdentityKeyPair::generate(&mut OsRng);
    let bundle = PrekeyBundle::assemble(&blob, None, None).unwrap();
    let mut alice = Session::initiate(&alice_id, &bundle, 0, &mut OsRng).unwrap();
    let first = alice.encrypt(b"hi", Padding::None, &mut OsRng).unwrap();
    let m = PreKeyMessage::parse(&first.bytes).unwrap();
    let (mut bob, _) = Session::respond(&id, &m, &spk, None, &kem).unwrap();
    let reply = bob.encrypt(b"hi", Padding::None, &mut OsRng).unwrap();
    alice.decrypt(&reply.bytes).unwrap();
    (alice, bob)
}

fn sotto(c: &mut Criterion) {
    let id = IdentityKeyPair::generate(&mut OsRng);
    let spk = SignedPrekey::generate(&id, 1, 1, 0, &mut OsRng);
    let kem = KemPrekey::generate(&id, 1, 1, true, 0, &mut OsRng);
    let okem = KemPrekey::generate(&id, 1, 2, false, 0, &mut OsRng);
    let otk = OneTimePrekey::generate(1, &mut OsRng);
    let blob = signed_bundle_blob(&id, 1, &spk, &kem);
    let alice_id = IdentityKeyPair::generate(&mut OsRng);
    let (ec, kb) = (otk.upload_item().bytes, okem.upload_item().bytes);
    c.bench_function("sotto/setup_both_sides_pqxdh", |bench| {
        bench.iter(|| {
            let bundle = PrekeyBundle::assemble(&blob, Some(&ec), Some(&kb)).unwrap();
            let mut alice = Session::initiate(&alice_id, &bundle, 0, &mut OsRng).unwrap();
            let first = alice.encrypt(b"hello", Padding::None, &mut OsRng).unwrap();
            let m = PreKeyMessage::parse(&first.bytes).unwrap();
            Session::respond(&id, &m, &spk, Some(&otk), &okem).unwrap()
        })
    });
    let (mut a, mut b) = sotto_pair();
    let pt = [0x42u8; 256];
    c.bench_function("sotto/one_way_256B", |bench| {
        bench.iter(|| {
            let m = a.encrypt(&pt, Padding::None, &mut OsRng).unwrap();
            b.decrypt(&m.bytes).unwrap()
        })
    });
    let (mut a, mut b) = sotto_pair();
    let pt = [0x42u8; 64];
    c.bench_function("sotto/ping_pong_two_messages", |bench| {
        bench.iter(|| {
            let m = a.encrypt(&pt, Padding::None, &mut OsRng).unwrap();
            b.decrypt(&m.bytes).unwrap();
            let r = b.encrypt(&pt, Padding::None, &mut OsRng).unwrap();
            a.decrypt(&r.bytes).unwrap()
        })
    });
}

criterion_group!(benches, olm, sotto);
criterion_main!(benches);
