//! Behaviour of sessions through the public API: round trips of every message
//! kind over both stores, tampering, forward secrecy, post-compromise
//! recovery, replayed PQXDH messages, bad bundles, identity changes, limits
//! and archived sessions.
#![allow(
    clippy::type_complexity,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod common;

use common::*;
use sotto_core::prekeys::{signed_bundle_blob, KemPrekey, OneTimePrekey, SignedPrekey};
use sotto_core::ratchet::MAX_MESSAGE_GAP;
use sotto_core::session::PreKeyMessage;
use sotto_core::{
    Device, Error, IdentityKeyPair, MemoryStore, MessageKind, Padding, PrekeyBundle, SafetyNumber,
    Session, SessionState, SqliteStore, StorageKey, Store, Verification,
};

fn devices<S: Store>(mk: impl Fn() -> S, one_time: bool, seed: u64) -> (Device<S>, Device<S>) {
    let mut r = rng(seed);
    let mut alice = Device::create(mk(), 1, NOW, &mut r).unwrap();
    let mut bob = Device::create(mk(), 2, NOW, &mut r).unwrap();
    let bundle = bundle_of(&mut bob, one_time, &mut r);
    alice
        .process_bundle(&bob_addr(), &bundle, NOW, &mut r)
        .unwrap();
    (alice, bob)
}

fn conversation<S: Store>(alice: &mut Device<S>, bob: &mut Device<S>, seed: u64) {
    let mut r = rng(seed);
    // Three PreKey messages before any reply.
    for i in 0..3u8 {
        let m = alice.encrypt(&bob_addr(), &[i; 10], &mut r).unwrap();
        assert_eq!(m.kind, MessageKind::PreKey);
        assert_eq!(
            bob.decrypt(&alice_addr(), &m.bytes, NOW).unwrap(),
            vec![i; 10]
        );
    }
    let reply = bob.encrypt(&alice_addr(), b"reply", &mut r).unwrap();
    assert_eq!(reply.kind, MessageKind::Ratchet);
    assert_eq!(
        alice.decrypt(&bob_addr(), &reply.bytes, NOW).unwrap(),
        b"reply"
    );
    // After the reply Alice sends plain ratchet messages.
    for round in 0..20u32 {
        let text = format!("message {round}");
        if round % 3 == 0 {
            let m = bob.encrypt(&alice_addr(), text.as_bytes(), &mut r).unwrap();
            assert_eq!(
                alice.decrypt(&bob_addr(), &m.bytes, NOW).unwrap(),
                text.as_bytes()
            );
        } else {
            let m = alice.encrypt(&bob_addr(), text.as_bytes(), &mut r).unwrap();
            assert_eq!(m.kind, MessageKind::Ratchet);
            assert_eq!(
                bob.decrypt(&alice_addr(), &m.bytes, NOW).unwrap(),
                text.as_bytes()
            );
        }
    }
}

#[test]
fn round_trip_every_kind_in_memory() {
    for one_time in [true, false] {
        let (mut a, mut b) = devices(MemoryStore::new, one_time, 1);
        conversation(&mut a, &mut b, 2);
    }
}

#[test]
fn round_trip_every_kind_sqlite() {
    let key = StorageKey::new([7; 32]);
    let (mut a, mut b) = devices(|| SqliteStore::open_in_memory(&key).unwrap(), true, 3);
    conversation(&mut a, &mut b, 4);
}

#[test]
fn empty_and_large_messages_round_trip_with_both_paddings() {
    let (mut a, mut b) = devices(MemoryStore::new, true, 5);
    let mut r = rng(6);
    for padding in [Padding::None, Padding::Padme] {
        a.set_padding(padding);
        for len in [0usize, 1, 255, 256, 4096, 64 * 1024] {
            let pt = vec![0xA5u8; len];
            let m = a.encrypt(&bob_addr(), &pt, &mut r).unwrap();
            assert_eq!(b.decrypt(&alice_addr(), &m.bytes, NOW).unwrap(), pt);
        }
    }
}

#[test]
fn tampering_with_any_byte_of_any_message_fails_and_changes_nothing() {
    let (mut a, mut b) = devices(MemoryStore::new, true, 7);
    let mut r = rng(8);
    let first = a.encrypt(&bob_addr(), b"first", &mut r).unwrap();
    for i in 0..first.bytes.len() {
        let mut t = first.bytes.clone();
        t[i] ^= 0x01;
        assert!(
            b.decrypt(&alice_addr(), &t, NOW).is_err(),
            "prekey byte {i}"
        );
    }
    assert_eq!(
        b.decrypt(&alice_addr(), &first.bytes, NOW).unwrap(),
        b"first"
    );
    let reply = b.encrypt(&alice_addr(), b"reply", &mut r).unwrap();
    for i in 0..reply.bytes.len() {
        for flip in [0x01u8, 0x80] {
            let mut t = reply.bytes.clone();
            t[i] ^= flip;
            assert!(a.decrypt(&bob_addr(), &t, NOW).is_err(), "ratchet byte {i}");
        }
    }
    let mut truncated = reply.bytes.clone();
    truncated.pop();
    assert!(a.decrypt(&bob_addr(), &truncated, NOW).is_err());
    assert_eq!(a.decrypt(&bob_addr(), &reply.bytes, NOW).unwrap(), b"reply");
}

/// Two pure sessions with one message each way.
fn session_pair(seed: u64) -> (Session, Session) {
    let mut r = rng(seed);
    let bob_id = IdentityKeyPair::generate(&mut r);
    let spk = SignedPrekey::generate(&bob_id, 2, 1, NOW, &mut r);
    let kem = KemPrekey::generate(&bob_id, 2, 1, true, NOW, &mut r);
    let blob = signed_bundle_blob(&bob_id, 2, &spk, &kem);
    let alice_id = IdentityKeyPair::generate(&mut r);
    let bundle = PrekeyBundle::assemble(&blob, None, None).unwrap();
    let mut alice = Session::initiate(&alice_id, &bundle, NOW, &mut r).unwrap();
    let first = alice.encrypt(b"hi", Padding::None, &mut r).unwrap();
    let m = PreKeyMessage::parse(&first.bytes).unwrap();
    let (mut bob, pt) = Session::respond(&bob_id, &m, &spk, None, &kem).unwrap();
    assert_eq!(pt, b"hi");
    let reply = bob.encrypt(b"yo", Padding::None, &mut r).unwrap();
    assert_eq!(alice.decrypt(&reply.bytes).unwrap(), b"yo");
    (alice, bob)
}

fn steal(s: &Session) -> Session {
    Session::from_state(SessionState::from_bytes(&s.state().to_bytes()).unwrap())
}

#[test]
fn forward_secrecy_used_keys_cannot_decrypt_again() {
    let (mut alice, mut bob) = session_pair(9);
    let mut r = rng(10);
    let mut old = Vec::new();
    for i in 0..5u8 {
        let m = alice.encrypt(&[i], Padding::None, &mut r).unwrap();
        assert_eq!(bob.decrypt(&m.bytes).unwrap(), vec![i]);
        old.push(m.bytes);
    }
    // A DH ratchet step in each direction, then Bob's state is stolen.
    let m = bob.encrypt(b"turn", Padding::None, &mut r).unwrap();
    alice.decrypt(&m.bytes).unwrap();
    let m = alice.encrypt(b"turn", Padding::None, &mut r).unwrap();
    bob.decrypt(&m.bytes).unwrap();
    let mut thief = steal(&bob);
    for (i, c) in old.iter().enumerate() {
        assert!(
            thief.decrypt(c).is_err(),
            "old message {i} decrypted from stolen state"
        );
        assert!(matches!(
            bob.decrypt(c),
            Err(Error::DuplicateMessage { .. })
        ));
    }
}

#[test]
fn post_compromise_a_dh_step_locks_the_attacker_out() {
    let (mut alice, mut bob) = session_pair(11);
    let mut r = rng(12);
    let mut thief = steal(&bob);
    // The compromise is real: the thief reads Alice's next message in this chain.
    let m = alice.encrypt(b"exposed", Padding::None, &mut r).unwrap();
    assert_eq!(thief.decrypt(&m.bytes).unwrap(), b"exposed");
    assert_eq!(bob.decrypt(&m.bytes).unwrap(), b"exposed");
    // Bob replies (fresh ratchet key), Alice answers with her own fresh key.
    let m = bob.encrypt(b"heal", Padding::None, &mut r).unwrap();
    alice.decrypt(&m.bytes).unwrap();
    let secret = alice
        .encrypt(b"secret again", Padding::None, &mut r)
        .unwrap();
    assert!(matches!(
        thief.decrypt(&secret.bytes),
        Err(Error::DecryptFailed)
    ));
    assert_eq!(bob.decrypt(&secret.bytes).unwrap(), b"secret again");
}

#[test]
fn out_of_order_and_duplicates_within_and_across_chains() {
    let (mut alice, mut bob) = session_pair(13);
    let mut r = rng(14);
    let chain1: Vec<_> = (0..10u8)
        .map(|i| alice.encrypt(&[i], Padding::None, &mut r).unwrap().bytes)
        .collect();
    bob.decrypt(&chain1[9]).unwrap();
    let reply = bob.encrypt(b"r", Padding::None, &mut r).unwrap();
    alice.decrypt(&reply.bytes).unwrap();
    let chain2: Vec<_> = (10..15u8)
        .map(|i| alice.encrypt(&[i], Padding::None, &mut r).unwrap().bytes)
        .collect();
    bob.decrypt(&chain2[4]).unwrap();
    assert_eq!(bob.skipped_key_count(), 9 + 4);
    for (i, c) in chain1.iter().enumerate().take(9).rev() {
        assert_eq!(bob.decrypt(c).unwrap(), vec![i as u8]);
    }
    for (i, c) in chain2.iter().enumerate().take(4) {
        assert_eq!(bob.decrypt(c).unwrap(), vec![10 + i as u8]);
    }
    assert_eq!(bob.skipped_key_count(), 0);
    for c in chain1.iter().chain(chain2.iter()) {
        assert!(matches!(
            bob.decrypt(c),
            Err(Error::DuplicateMessage { .. })
        ));
    }
}

#[test]
fn gaps_beyond_the_limit_are_rejected_without_state_change() {
    let (mut alice, mut bob) = session_pair(15);
    let mut r = rng(16);
    let msgs: Vec<_> = (0..=MAX_MESSAGE_GAP + 1)
        .map(|_| alice.encrypt(b"x", Padding::None, &mut r).unwrap().bytes)
        .collect();
    let last = msgs.last().unwrap();
    assert!(matches!(
        bob.decrypt(last),
        Err(Error::TooFarInFuture { .. })
    ));
    assert_eq!(bob.skipped_key_count(), 0);
    // Exactly the maximum gap is fine.
    bob.decrypt(&msgs[MAX_MESSAGE_GAP as usize]).unwrap();
    assert_eq!(bob.skipped_key_count(), MAX_MESSAGE_GAP as usize);
    bob.decrypt(last).unwrap();
    // The window of stored keys moved: the oldest was evicted, the next kept.
    assert!(matches!(
        bob.decrypt(&msgs[0]),
        Err(Error::MessageKeyEvicted { counter: 0 })
    ));
    bob.decrypt(&msgs[1]).unwrap();
    assert_eq!(bob.skipped_key_count(), MAX_MESSAGE_GAP as usize - 2);
}

#[test]
fn replayed_prekey_message_is_rejected_after_its_session_is_gone() {
    for one_time in [true, false] {
        let (mut alice, mut bob) = devices(MemoryStore::new, one_time, 17);
        let mut r = rng(18);
        let first = alice.encrypt(&bob_addr(), b"first", &mut r).unwrap();
        bob.decrypt(&alice_addr(), &first.bytes, NOW).unwrap();
        // While the session exists a replay is a duplicate, not a new session.
        assert!(matches!(
            bob.decrypt(&alice_addr(), &first.bytes, NOW),
            Err(Error::DuplicateMessage { .. })
        ));
        // Push the session out of Bob's archive with newer sessions from Alice.
        for _ in 0..=sotto_core::device::MAX_ARCHIVED_SESSIONS {
            let bundle = bundle_of(&mut bob, one_time, &mut r);
            alice
                .process_bundle(&bob_addr(), &bundle, NOW, &mut r)
                .unwrap();
            let m = alice.encrypt(&bob_addr(), b"again", &mut r).unwrap();
            bob.decrypt(&alice_addr(), &m.bytes, NOW).unwrap();
        }
        assert!(matches!(
            bob.decrypt(&alice_addr(), &first.bytes, NOW),
            Err(Error::ReplayedPreKeyMessage)
        ));
    }
}

#[test]
fn one_time_prekeys_are_consumed_with_the_session() {
    let mut r = rng(19);
    let mut alice = Device::create(MemoryStore::new(), 1, NOW, &mut r).unwrap();
    let mut bob = Device::create(MemoryStore::new(), 2, NOW, &mut r).unwrap();
    let bundle = bundle_of(&mut bob, true, &mut r);
    assert_eq!(bob.store().count(sotto_core::Table::OneTimePrekey), 1);
    assert_eq!(bob.store().count(sotto_core::Table::KemPrekey), 2);
    alice
        .process_bundle(&bob_addr(), &bundle, NOW, &mut r)
        .unwrap();
    let m = alice.encrypt(&bob_addr(), b"x", &mut r).unwrap();
    // A failed attempt (tampered) consumes nothing.
    let mut t = m.bytes.clone();
    let n = t.len();
    t[n - 1] ^= 1;
    assert!(bob.decrypt(&alice_addr(), &t, NOW).is_err());
    assert_eq!(bob.store().count(sotto_core::Table::OneTimePrekey), 1);
    bob.decrypt(&alice_addr(), &m.bytes, NOW).unwrap();
    assert_eq!(bob.store().count(sotto_core::Table::OneTimePrekey), 0);
    assert_eq!(bob.store().count(sotto_core::Table::KemPrekey), 1);
}

#[test]
fn bad_bundle_signatures_are_rejected() {
    let mut r = rng(20);
    let id = IdentityKeyPair::generate(&mut r);
    let other = IdentityKeyPair::generate(&mut r);
    let spk = SignedPrekey::generate(&id, 3, 1, NOW, &mut r);
    let kem = KemPrekey::generate(&id, 3, 1, true, NOW, &mut r);
    let okem = KemPrekey::generate(&id, 3, 2, false, NOW, &mut r);
    let forged_kem = KemPrekey::generate(&other, 3, 2, false, NOW, &mut r);
    let blob = signed_bundle_blob(&id, 3, &spk, &kem);
    assert!(PrekeyBundle::assemble(&blob, None, Some(&okem.upload_item().bytes)).is_ok());

    use prost::Message;
    let good = sotto_proto::session::SignedBundle::decode(blob.as_slice()).unwrap();
    let mutations: Vec<Box<dyn Fn(&mut sotto_proto::session::SignedBundle)>> = vec![
        Box::new(|b| b.signed_prekey_signature[5] ^= 1),
        Box::new(|b| b.signed_prekey[0] ^= 1),
        Box::new(|b| b.signed_prekey_id += 1),
        Box::new(|b| b.device_id += 1),
        Box::new(|b| b.kem_prekey_signature[0] ^= 1),
        Box::new(|b| b.kem_prekey[100] ^= 1),
        Box::new(|b| b.kem_prekey_id += 1),
    ];
    for (i, mutate) in mutations.iter().enumerate() {
        let mut b = good.clone();
        mutate(&mut b);
        assert!(
            matches!(
                PrekeyBundle::assemble(&b.encode_to_vec(), None, None),
                Err(Error::BadSignature { .. })
            ),
            "mutation {i}"
        );
    }
    // A KEM item signed by someone else.
    assert!(matches!(
        PrekeyBundle::assemble(&blob, None, Some(&forged_kem.upload_item().bytes)),
        Err(Error::BadSignature { .. })
    ));
    // A blob whose identity was swapped.
    let mut swapped = good.clone();
    swapped.identity_key = other.public().as_bytes().to_vec();
    assert!(PrekeyBundle::assemble(&swapped.encode_to_vec(), None, None).is_err());
    assert!(PrekeyBundle::assemble(b"garbage", None, None).is_err());
    let ot = OneTimePrekey::generate(9, &mut r);
    assert!(PrekeyBundle::assemble(&blob, Some(&ot.upload_item().bytes), None).is_ok());
}

#[test]
fn identity_change_is_detected_and_needs_explicit_acceptance() {
    let mut r = rng(21);
    let (mut alice, mut bob) = devices(MemoryStore::new, false, 22);
    let m = alice.encrypt(&bob_addr(), b"x", &mut r).unwrap();
    bob.decrypt(&alice_addr(), &m.bytes, NOW).unwrap();
    let sn_a = alice.safety_number(&bob_addr()).unwrap();
    let sn_b = bob.safety_number(&alice_addr()).unwrap();
    assert_eq!(sn_a.digits(), sn_b.digits());
    assert_eq!(sn_a.digits().len(), 60);
    assert!(sn_a.matches_scanned(sn_b.scannable()));
    alice
        .mark_verified(&bob_addr(), bob.identity(), NOW)
        .unwrap();
    assert_eq!(
        alice.contact(&bob_addr()).unwrap().unwrap().verification,
        Verification::Verified
    );

    // Bob reinstalls: new identity, same user id.
    let mut bob2 = Device::create(MemoryStore::new(), 2, NOW, &mut r).unwrap();
    let bundle = bundle_of(&mut bob2, false, &mut r);
    match alice.process_bundle(&bob_addr(), &bundle, NOW, &mut r) {
        Err(Error::IdentityChanged { new_identity }) => assert_eq!(&*new_identity, bob2.identity()),
        other => panic!("expected IdentityChanged, got {other:?}"),
    }
    // Nothing changed: the old session still works.
    let m = alice.encrypt(&bob_addr(), b"still old", &mut r).unwrap();
    assert_eq!(
        bob.decrypt(&alice_addr(), &m.bytes, NOW).unwrap(),
        b"still old"
    );
    assert_ne!(
        SafetyNumber::compute(alice.identity(), bob2.identity()),
        sn_a
    );

    // Old Bob's message in flight, sent before Alice accepts the change.
    let stale = bob
        .encrypt(&alice_addr(), b"from the old key", &mut r)
        .unwrap();
    alice
        .accept_identity(&bob_addr(), bob2.identity(), NOW)
        .unwrap();
    assert_eq!(
        alice.contact(&bob_addr()).unwrap().unwrap().verification,
        Verification::Unverified
    );
    // Accepting the new key retired every session of the old one: they are
    // gone with their keys, and nothing encrypts or decrypts with them.
    assert!(!alice.has_session(&bob_addr()).unwrap());
    assert!(matches!(
        alice.encrypt(&bob_addr(), b"x", &mut r),
        Err(Error::NoSession)
    ));
    assert!(alice.decrypt(&bob_addr(), &stale.bytes, NOW).is_err());
    alice
        .process_bundle(&bob_addr(), &bundle, NOW, &mut r)
        .unwrap();
    let m = alice.encrypt(&bob_addr(), b"new", &mut r).unwrap();
    assert_eq!(bob2.decrypt(&alice_addr(), &m.bytes, NOW).unwrap(), b"new");

    // The reverse direction: Bob's old device receives a PreKey message from a
    // new identity claiming to be alice.
    let mut mallory = Device::create(MemoryStore::new(), 1, NOW, &mut r).unwrap();
    let bundle = bundle_of(&mut bob, false, &mut r);
    mallory
        .process_bundle(&bob_addr(), &bundle, NOW, &mut r)
        .unwrap();
    let m = mallory.encrypt(&bob_addr(), b"it's me", &mut r).unwrap();
    assert!(matches!(
        bob.decrypt(&alice_addr(), &m.bytes, NOW),
        Err(Error::IdentityChanged { .. })
    ));
}

#[test]
fn simultaneous_initiation_keeps_messages_in_flight_decryptable() {
    let mut r = rng(23);
    let mut alice = Device::create(MemoryStore::new(), 1, NOW, &mut r).unwrap();
    let mut bob = Device::create(MemoryStore::new(), 2, NOW, &mut r).unwrap();
    let ab = bundle_of(&mut bob, true, &mut r);
    let ba = bundle_of(&mut alice, true, &mut r);
    alice.process_bundle(&bob_addr(), &ab, NOW, &mut r).unwrap();
    bob.process_bundle(&alice_addr(), &ba, NOW, &mut r).unwrap();
    let from_a = alice.encrypt(&bob_addr(), b"from a", &mut r).unwrap();
    let from_b = bob.encrypt(&alice_addr(), b"from b", &mut r).unwrap();
    assert_eq!(
        bob.decrypt(&alice_addr(), &from_a.bytes, NOW).unwrap(),
        b"from a"
    );
    assert_eq!(
        alice.decrypt(&bob_addr(), &from_b.bytes, NOW).unwrap(),
        b"from b"
    );
    // Both now use the session they received last; they converge after replies.
    for i in 0..4u8 {
        let m = alice.encrypt(&bob_addr(), &[i], &mut r).unwrap();
        assert_eq!(bob.decrypt(&alice_addr(), &m.bytes, NOW).unwrap(), vec![i]);
        let m = bob.encrypt(&alice_addr(), &[i], &mut r).unwrap();
        assert_eq!(alice.decrypt(&bob_addr(), &m.bytes, NOW).unwrap(), vec![i]);
    }
}

#[test]
fn malformed_input_gives_typed_errors() {
    let (mut alice, mut bob) = devices(MemoryStore::new, true, 24);
    let mut r = rng(25);
    for junk in [
        &b""[..],
        &[0x11][..],
        &[0x12, 0xFF, 0xFF][..],
        &[0x21; 80][..],
        &[0x13; 80][..],
    ] {
        assert!(bob.decrypt(&alice_addr(), junk, NOW).is_err());
    }
    assert!(matches!(
        bob.decrypt(&alice_addr(), &[0x21; 80], NOW),
        Err(Error::UnsupportedVersion(2))
    ));
    // A ratchet message with no session.
    let m = alice.encrypt(&bob_addr(), b"x", &mut r).unwrap();
    let inner = PreKeyMessage::parse(&m.bytes).unwrap();
    assert_eq!(inner.signed_prekey_id, 1);
    let stranger = sotto_core::DeviceAddress::new(b"carol".to_vec(), 9);
    assert!(matches!(
        bob.encrypt(&stranger, b"x", &mut r),
        Err(Error::NoSession)
    ));
}

#[test]
fn a_one_time_key_served_twice_is_reported_not_dropped_as_a_replay() {
    let mut r = rng(71);
    let mut bob = Device::create(MemoryStore::new(), 2, NOW, &mut r).unwrap();
    let mut alice = Device::create(MemoryStore::new(), 1, NOW, &mut r).unwrap();
    let mut carol = Device::create(MemoryStore::new(), 3, NOW, &mut r).unwrap();
    // A relay hands the same one-time keys to Alice and to Carol.
    let blob = bob.signed_bundle().unwrap();
    let (ec, kem) = bob.generate_one_time_prekeys(1, 1, NOW, &mut r).unwrap();
    let bundle = PrekeyBundle::assemble(&blob, Some(&ec[0].bytes), Some(&kem[0].bytes)).unwrap();
    alice
        .process_bundle(&bob_addr(), &bundle, NOW, &mut r)
        .unwrap();
    carol
        .process_bundle(&bob_addr(), &bundle, NOW, &mut r)
        .unwrap();
    let from_alice = alice.encrypt(&bob_addr(), b"first", &mut r).unwrap();
    let from_carol = carol.encrypt(&bob_addr(), b"second", &mut r).unwrap();
    assert_eq!(
        bob.decrypt(&alice_addr(), &from_alice.bytes, NOW).unwrap(),
        b"first"
    );
    let carol_addr = sotto_core::DeviceAddress::new(b"carol".to_vec(), 3);
    assert!(matches!(
        bob.decrypt(&carol_addr, &from_carol.bytes, NOW),
        Err(Error::OneTimePrekeyReused { .. })
    ));
    // Alice's own message again is what a replay is: her session's.
    assert!(matches!(
        bob.decrypt(&alice_addr(), &from_alice.bytes, NOW),
        Err(Error::DuplicateMessage { .. })
    ));
    // With Alice's session gone, the same replay is told apart too.
    bob.delete_sessions(&alice_addr()).unwrap();
    assert!(matches!(
        bob.decrypt(&alice_addr(), &from_alice.bytes, NOW),
        Err(Error::ReplayedPreKeyMessage)
    ));
}
