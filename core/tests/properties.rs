//! Property tests: random interleavings of sends, reordering, loss,
//! duplication and restarts (state reloaded from the durable SQLite store).
//! Every delivered message decrypts exactly once to its plaintext; a
//! redelivery gives the typed duplicate error; nothing else is accepted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use proptest::prelude::*;
use sotto_core::ratchet::MAX_RECEIVING_CHAINS;
use sotto_core::{Device, DeviceAddress, Error, SqliteStore, StorageKey};

#[derive(Clone, Debug)]
enum Op {
    /// Alice (true) or Bob (false) sends a new message.
    Send(bool),
    /// Deliver the in-flight message at this index (mod len).
    Deliver(usize),
    /// Deliver an already delivered message again.
    Redeliver(usize),
    /// Lose an in-flight message.
    Lose(usize),
    /// Restart Alice (true) or Bob (false) from the SQLite file.
    Restart(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<bool>().prop_map(Op::Send),
        4 => any::<usize>().prop_map(Op::Deliver),
        1 => any::<usize>().prop_map(Op::Redeliver),
        1 => any::<usize>().prop_map(Op::Lose),
        1 => any::<bool>().prop_map(Op::Restart),
    ]
}

struct Msg {
    from_alice: bool,
    bytes: Vec<u8>,
    plaintext: Vec<u8>,
    /// The sender's sending-chain number when it was sent.
    chain: u32,
}

struct Side {
    dev: Option<Device<SqliteStore>>,
    path: std::path::PathBuf,
    /// Sending chains started (a new one after every receipt, lazily).
    chain: u32,
    received_since_send: bool,
}

fn open(path: &std::path::Path) -> Device<SqliteStore> {
    Device::open(SqliteStore::open(path, &StorageKey::new([9; 32])).unwrap()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_delivered_message_decrypts_exactly_once(ops in proptest::collection::vec(op(), 1..40), seed in any::<u64>()) {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng(seed);
        let key = StorageKey::new([9; 32]);
        let (pa, pb) = (dir.path().join("a.db"), dir.path().join("b.db"));
        let mut alice = Device::create(SqliteStore::open(&pa, &key).unwrap(), 1, NOW, &mut r).unwrap();
        let mut bob = Device::create(SqliteStore::open(&pb, &key).unwrap(), 2, NOW, &mut r).unwrap();
        let bundle = bundle_of(&mut bob, seed % 2 == 0, &mut r);
        alice.process_bundle(&bob_addr(), &bundle, NOW, &mut r).unwrap();
        let mut sides = [
            Side { dev: Some(alice), path: pa, chain: 0, received_since_send: false },
            Side { dev: Some(bob), path: pb, chain: 0, received_since_send: true },
        ];
        let addr = |alice_side: bool| -> DeviceAddress { if alice_side { bob_addr() } else { alice_addr() } };
        let mut in_flight: Vec<Msg> = Vec::new();
        let mut delivered: Vec<Msg> = Vec::new();
        let mut counter = 0u32;

        for op in ops {
            match op {
                Op::Send(from_alice) => {
                    let s = &mut sides[usize::from(!from_alice)];
                    let dev = s.dev.as_mut().unwrap();
                    if !from_alice && !dev.has_session(&alice_addr()).unwrap() {
                        continue;
                    }
                    counter += 1;
                    let plaintext = format!("m{counter}").into_bytes();
                    let out = dev.encrypt(&addr(from_alice), &plaintext, &mut r).unwrap();
                    if s.received_since_send {
                        s.chain += 1;
                        s.received_since_send = false;
                    }
                    in_flight.push(Msg { from_alice, bytes: out.bytes, plaintext, chain: s.chain });
                }
                Op::Deliver(i) if !in_flight.is_empty() => {
                    let m = in_flight.remove(i % in_flight.len());
                    let sender_chain = sides[usize::from(!m.from_alice)].chain;
                    let s = &mut sides[usize::from(m.from_alice)];
                    let from = if m.from_alice { alice_addr() } else { bob_addr() };
                    match s.dev.as_mut().unwrap().decrypt(&from, &m.bytes, NOW) {
                        Ok(pt) => {
                            prop_assert_eq!(&pt, &m.plaintext);
                            s.received_since_send = true;
                        }
                        // Only a chain older than the receiving-chain window may be gone.
                        Err(Error::DecryptFailed | Error::MessageKeyEvicted { .. })
                            if sender_chain - m.chain >= (MAX_RECEIVING_CHAINS as u32 - 1) => {}
                        Err(e) => prop_assert!(false, "delivery failed: {e:?}"),
                    }
                    delivered.push(m);
                }
                Op::Redeliver(i) if !delivered.is_empty() => {
                    let m = &delivered[i % delivered.len()];
                    let sender_chain = sides[usize::from(!m.from_alice)].chain;
                    let s = &mut sides[usize::from(m.from_alice)];
                    let from = if m.from_alice { alice_addr() } else { bob_addr() };
                    match s.dev.as_mut().unwrap().decrypt(&from, &m.bytes, NOW) {
                        Err(Error::DuplicateMessage { .. }) => {}
                        Err(Error::DecryptFailed | Error::MessageKeyEvicted { .. })
                            if sender_chain - m.chain >= (MAX_RECEIVING_CHAINS as u32 - 1) => {}
                        other => prop_assert!(false, "redelivery gave {other:?}"),
                    }
                }
                Op::Lose(i) if !in_flight.is_empty() => {
                    in_flight.remove(i % in_flight.len());
                }
                Op::Restart(alice_side) => {
                    let s = &mut sides[usize::from(!alice_side)];
                    drop(s.dev.take());
                    s.dev = Some(open(&s.path));
                }
                _ => {}
            }
        }
        // Everything still in flight is delivered at the end, in reverse order.
        while let Some(m) = in_flight.pop() {
            let sender_chain = sides[usize::from(!m.from_alice)].chain;
            let s = &mut sides[usize::from(m.from_alice)];
            let from = if m.from_alice { alice_addr() } else { bob_addr() };
            match s.dev.as_mut().unwrap().decrypt(&from, &m.bytes, NOW) {
                Ok(pt) => prop_assert_eq!(&pt, &m.plaintext),
                Err(Error::DecryptFailed | Error::MessageKeyEvicted { .. })
                    if sender_chain - m.chain >= (MAX_RECEIVING_CHAINS as u32 - 1) => {}
                Err(e) => prop_assert!(false, "final delivery failed: {e:?}"),
            }
        }
    }
}
