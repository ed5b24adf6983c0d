//! Crash atomicity of the durable store: a decrypt whose transaction does not
//! commit (the caller's hook fails, or the process dies mid-transaction)
//! leaves the message decryptable exactly once later; a committed one is gone
//! for good, also after reopening the database file. Also checks that the
//! file holds no plaintext secrets and rejects a wrong storage key, and that
//! the device's in-memory copy of session rows never outlives a rolled-back
//! commit or a commit made through another handle on the same file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use sotto_core::{Device, Error, SqliteStore, StorageKey, Store, Table, Txn};

fn key() -> StorageKey {
    StorageKey::new([42; 32])
}

#[test]
fn failed_or_interrupted_commits_neither_lose_nor_reuse_a_message_key() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let mut r = rng(30);
    let mut alice =
        Device::create(SqliteStore::open(&pa, &key()).unwrap(), 1, NOW, &mut r).unwrap();
    let mut bob = Device::create(SqliteStore::open(&pb, &key()).unwrap(), 2, NOW, &mut r).unwrap();
    let bundle = bundle_of(&mut bob, true, &mut r);
    alice
        .process_bundle(&bob_addr(), &bundle, NOW, &mut r)
        .unwrap();
    let first = alice.encrypt(&bob_addr(), b"first", &mut r).unwrap();
    let second = alice.encrypt(&bob_addr(), b"second", &mut r).unwrap();

    // 1. The caller's own write fails: nothing commits, not even the session.
    let err = bob
        .decrypt_with(&alice_addr(), &first.bytes, NOW, |tx| {
            tx.put(Table::App, b"envelope-1", b"done")?;
            Err(Error::Storage("disk full".into()))
        })
        .unwrap_err();
    assert!(matches!(err, Error::Storage(ref m) if m == "disk full"));
    assert!(!bob.has_session(&alice_addr()).unwrap());
    assert!(bob
        .store()
        .get(Table::App, b"envelope-1")
        .unwrap()
        .is_none());

    // 2. The process dies in the middle of the transaction (a panic after the
    //    ratchet rows were written): SQLite rolls back.
    let mut bob = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _ =
            bob.decrypt_with::<_, Error>(&alice_addr(), &second.bytes, NOW, |_| panic!("crash"));
        bob
    }))
    .map(|_| ())
    .err()
    .map(|_| Device::open(SqliteStore::open(&pb, &key()).unwrap()).unwrap())
    .unwrap();
    assert!(!bob.has_session(&alice_addr()).unwrap());

    // 3. A successful decrypt commits the caller's row with the ratchet state.
    let pt = bob
        .decrypt_with(&alice_addr(), &first.bytes, NOW, |tx| {
            tx.put(Table::App, b"envelope-1", b"done")
        })
        .unwrap();
    assert_eq!(pt, b"first");
    assert_eq!(
        bob.store()
            .get(Table::App, b"envelope-1")
            .unwrap()
            .unwrap()
            .as_slice(),
        b"done"
    );

    // Reopen from the file: the committed key is gone, the other still works.
    drop(bob);
    let mut bob = Device::open(SqliteStore::open(&pb, &key()).unwrap()).unwrap();
    assert!(matches!(
        bob.decrypt(&alice_addr(), &first.bytes, NOW),
        Err(Error::DuplicateMessage { .. })
    ));
    let second = alice.encrypt(&bob_addr(), b"third", &mut r).unwrap();
    assert_eq!(
        bob.decrypt(&alice_addr(), &second.bytes, NOW).unwrap(),
        b"third"
    );
}

/// Alice and Bob with a session both ways (so later messages are plain
/// ratchet messages), each in its own database file under `dir`.
fn established(
    dir: &std::path::Path,
    r: &mut rand_chacha::ChaCha20Rng,
) -> (Device<SqliteStore>, Device<SqliteStore>) {
    let mut alice = Device::create(
        SqliteStore::open(dir.join("a.db"), &key()).unwrap(),
        1,
        NOW,
        r,
    )
    .unwrap();
    let mut bob = Device::create(
        SqliteStore::open(dir.join("b.db"), &key()).unwrap(),
        2,
        NOW,
        r,
    )
    .unwrap();
    let bundle = bundle_of(&mut bob, true, r);
    alice.process_bundle(&bob_addr(), &bundle, NOW, r).unwrap();
    let hi = alice.encrypt(&bob_addr(), b"hi", r).unwrap();
    bob.decrypt(&alice_addr(), &hi.bytes, NOW).unwrap();
    let back = bob.encrypt(&alice_addr(), b"hi", r).unwrap();
    alice.decrypt(&bob_addr(), &back.bytes, NOW).unwrap();
    (alice, bob)
}

#[test]
fn a_rolled_back_decrypt_is_not_reused_from_memory() {
    // The device keeps decoded session rows in memory; after a failed commit
    // the store (old row) must win over the state the failed attempt made.
    let dir = tempfile::tempdir().unwrap();
    let mut r = rng(31);
    let (mut alice, mut bob) = established(dir.path(), &mut r);
    let m = alice.encrypt(&bob_addr(), b"once", &mut r).unwrap();
    let err = bob
        .decrypt_with(&alice_addr(), &m.bytes, NOW, |_| {
            Err(Error::Storage("disk full".into()))
        })
        .unwrap_err();
    assert!(matches!(err, Error::Storage(ref m) if m == "disk full"));
    assert_eq!(bob.decrypt(&alice_addr(), &m.bytes, NOW).unwrap(), b"once");
    assert!(matches!(
        bob.decrypt(&alice_addr(), &m.bytes, NOW),
        Err(Error::DuplicateMessage { .. })
    ));
}

#[test]
fn a_second_handle_on_the_same_database_sees_every_committed_step() {
    // Two `Device`s over one file (e.g. an app process and its notification
    // extension): each must read the other's commits, never its own stale
    // in-memory state, or a message key could be used twice.
    let dir = tempfile::tempdir().unwrap();
    let mut r = rng(32);
    let (mut alice, mut bob) = established(dir.path(), &mut r);
    let mut bob2 =
        Device::open(SqliteStore::open(dir.path().join("b.db"), &key()).unwrap()).unwrap();
    let m1 = alice.encrypt(&bob_addr(), b"one", &mut r).unwrap();
    let m2 = alice.encrypt(&bob_addr(), b"two", &mut r).unwrap();
    let m3 = alice.encrypt(&bob_addr(), b"three", &mut r).unwrap();
    assert_eq!(bob.decrypt(&alice_addr(), &m1.bytes, NOW).unwrap(), b"one");
    assert_eq!(bob2.decrypt(&alice_addr(), &m2.bytes, NOW).unwrap(), b"two");
    assert!(matches!(
        bob.decrypt(&alice_addr(), &m2.bytes, NOW),
        Err(Error::DuplicateMessage { .. })
    ));
    assert_eq!(
        bob.decrypt(&alice_addr(), &m3.bytes, NOW).unwrap(),
        b"three"
    );
    assert!(matches!(
        bob2.decrypt(&alice_addr(), &m3.bytes, NOW),
        Err(Error::DuplicateMessage { .. })
    ));
    // Replies from either handle continue one chain.
    let reply = bob2
        .encrypt(&alice_addr(), b"from the other handle", &mut r)
        .unwrap();
    assert_eq!(
        alice.decrypt(&bob_addr(), &reply.bytes, NOW).unwrap(),
        b"from the other handle"
    );
    let reply = bob.encrypt(&alice_addr(), b"and this one", &mut r).unwrap();
    assert_eq!(
        alice.decrypt(&bob_addr(), &reply.bytes, NOW).unwrap(),
        b"and this one"
    );
}

#[test]
fn database_file_is_encrypted_and_bound_to_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let mut r = rng(31);
    let mut dev =
        Device::create(SqliteStore::open(&path, &key()).unwrap(), 5, NOW, &mut r).unwrap();
    let blob = dev.signed_bundle().unwrap();
    dev.generate_one_time_prekeys(3, 1, NOW, &mut r).unwrap();
    drop(dev);
    // Public keys written by us would appear in a plaintext file; they must not.
    let mut file = std::fs::read(&path).unwrap();
    for ext in ["-wal"] {
        if let Ok(more) = std::fs::read(dir.path().join(format!("d.db{ext}"))) {
            file.extend(more);
        }
    }
    let identity_prefix = &blob[4..36];
    assert!(!file.windows(32).any(|w| w == identity_prefix));
    // A wrong key is refused as the store opens (its generation row does
    // not authenticate), before anything reads a record.
    assert!(matches!(
        SqliteStore::open(&path, &StorageKey::new([1; 32])),
        Err(Error::CorruptRecord { .. })
    ));
    assert!(Device::open(SqliteStore::open(&path, &key()).unwrap()).is_ok());
}
