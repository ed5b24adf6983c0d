//! The receive state machine against a hostile network and hostile peers,
//! without sockets: envelopes reordered, redelivered and interleaved with
//! restarts; forged senders, forged identities, malformed content, replays,
//! strangers and revoked devices. Each attack test fails on the code before
//! the fix it guards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use prost::Message as _;
use rand_core::OsRng;
use sotto_proto::client as pb;

use super::*;
use crate::engine::testkit::{kinds, seal, text, TestUser};
use sotto_core::identity::IdentityKeyPair;
use sotto_core::prekeys::PrekeyBundle;
use sotto_core::session::Session;
use sotto_core::Padding;

/// Relay envelopes as `(id, payload)`.
type Envelopes = Vec<([u8; 16], Vec<u8>)>;

/// Alice's `n` messages to Bob (accepted contacts), as relay envelopes.
fn conversation(n: usize) -> (TestUser, TestUser, Envelopes) {
    let mut alice = TestUser::new(1);
    let mut bob = TestUser::new(1);
    bob.accept(&alice);
    let mut envelopes = Vec::new();
    for i in 0..n {
        let content = text(&alice, i as u8, &format!("m{i}"));
        envelopes.push(alice.envelope(0, &mut bob, 0, &content));
    }
    (alice, bob, envelopes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_message_surfaces_exactly_once(
        n in 1usize..12,
        steps in proptest::collection::vec((0usize..64, 0u8..4), 0..60),
    ) {
        let (_alice, mut bob, envelopes) = conversation(n);
        // The relay's view: envelopes not yet acknowledged.
        let mut pending: Vec<usize> = (0..n).collect();
        for (pick, action) in steps {
            if pending.is_empty() {
                break;
            }
            let i = pending[pick % pending.len()];
            match action {
                // Deliver and acknowledge.
                0 | 1 => {
                    bob.receive(0, &envelopes[i]);
                    pending.retain(|&p| p != i);
                }
                // Deliver, but the ack is lost: it will come again.
                2 => {
                    bob.receive(0, &envelopes[i]);
                }
                // The receiver restarts from its store.
                _ => {
                    let d = &mut bob.devices[0];
                    let store = std::mem::replace(&mut d.device, Device::create(
                        sotto_core::MemoryStore::new(), 9, 0, &mut OsRng).unwrap()).into_store();
                    d.device = Device::open(store).unwrap();
                }
            }
        }
        for i in pending {
            bob.receive(0, &envelopes[i]);
        }
        let events = bob.events(0);
        let mut texts = Vec::new();
        for e in events {
            match e.kind {
                Some(pb::client_event::Kind::Message(m)) => texts.push(m.text),
                other => panic!("unexpected event {other:?}"),
            }
        }
        texts.sort();
        let mut want: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        want.sort();
        prop_assert_eq!(texts, want);
        // Each message produced exactly one delivered receipt.
        prop_assert_eq!(bob.outbox(0).len(), n);
    }

    /// Arbitrary bytes as envelope payloads, and arbitrary bytes sealed as a
    /// message from an accepted contact: never a panic, never an error (the
    /// envelope is always acknowledged), never an automatic reset, and the
    /// genuine conversation still works afterwards.
    #[test]
    fn hostile_bytes_never_stall_or_reset(
        junk in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8),
    ) {
        let (alice, mut bob, envelopes) = conversation(1);
        for j in &junk {
            let id = bob.next_id();
            bob.receive(0, &(id, j.clone()));
            let id = bob.next_id();
            let to = *bob.devices[0].device.identity();
            let forged = seal(&to, &alice.account.public(), 1, None, j.clone());
            bob.receive(0, &(id, forged));
        }
        prop_assert!(bob.outbox(0).iter().all(|i| !i.reset_session));
        prop_assert!(bob.receive(0, &envelopes[0]).events);
    }
}

#[test]
fn garbage_envelopes_are_failures_not_panics_and_are_acked() {
    let (_alice, mut bob, envelopes) = conversation(1);
    for junk in [
        &b""[..],
        b"\x08\x01",
        b"\xff\xff\xff",
        &envelopes[0].1[..20],
    ] {
        let id = [9; 16];
        let o = bob.receive(0, &(id, junk.to_vec()));
        assert!(o.events);
        // Redelivery of the same junk: already processed, nothing new.
        assert_eq!(bob.receive(0, &(id, junk.to_vec())), Outcome::default());
        bob.devices[0]
            .device
            .store_mut()
            .transaction(|tx| {
                tx.delete(
                    sotto_core::store::Table::App,
                    &[b"in/".as_slice(), &[9; 16]].concat(),
                )
            })
            .unwrap();
    }
    // The real message still decrypts afterwards.
    assert!(bob.receive(0, &envelopes[0]).events);
}

/// Mallory's PreKey message to Bob claiming to be Alice's device 1, with
/// Alice's genuine Ed25519 half and Mallory's X25519 half (the attack of
/// the issue), optionally carrying Alice's genuine (public) certificate.
fn impersonation(alice: &TestUser, bob: &mut TestUser, with_cert: bool) -> ([u8; 16], Vec<u8>) {
    let alice_ed: [u8; 32] = alice.devices[0].device.identity().as_bytes()[..32]
        .try_into()
        .unwrap();
    let mallory = IdentityKeyPair::forged(&alice_ed, &mut OsRng);
    let blob = bob.devices[0].device.signed_bundle().unwrap();
    let bundle = PrekeyBundle::assemble(&blob, None, None).unwrap();
    let mut session = Session::initiate(&mallory, &bundle, 0, &mut OsRng).unwrap();
    let content = text(alice, 1, "this is Alice, honest");
    let m = session
        .encrypt(&content.encode_to_vec(), Padding::None, &mut OsRng)
        .unwrap();
    let payload = seal(
        bob.devices[0].device.identity(),
        &alice.account.public(),
        1,
        with_cert.then_some(&alice.devices[0].cert),
        m.bytes,
    );
    (bob.next_id(), payload)
}

#[test]
fn a_stranger_cannot_pose_as_a_user_with_its_own_x25519_key() {
    let alice = TestUser::new(1);
    for known in [false, true] {
        for with_cert in [false, true] {
            let mut bob = TestUser::new(1);
            if known {
                bob.accept(&alice);
            }
            let envelope = impersonation(&alice, &mut bob, with_cert);
            bob.receive(0, &envelope);
            let events = bob.events(0);
            assert_eq!(
                kinds(&events),
                ["failed"],
                "known {known}, cert {with_cert}"
            );
            // Nothing was accepted: no session, no trust recorded, nothing to send.
            let addr = DeviceAddress::new(alice.account.public().to_vec(), 1);
            assert!(!bob.devices[0].device.has_session(&addr).unwrap());
            assert!(bob.devices[0].device.contact(&addr).unwrap().is_none());
            assert!(bob.outbox(0).is_empty());
        }
    }
}

#[test]
fn a_forged_identity_cannot_pose_as_the_own_user_or_raise_alarms() {
    // Mallory claims to be Bob's own other device (a forged SentSync), and
    // then Bob's known contact Alice with a different identity (a forged
    // IdentityChanged alarm): both are refused before anything is decrypted.
    let alice = TestUser::new(1);
    let mut bob = TestUser::new(2);
    bob.accept(&alice);
    let bob_ed: [u8; 32] = bob.devices[1].device.identity().as_bytes()[..32]
        .try_into()
        .unwrap();
    let mallory = IdentityKeyPair::forged(&bob_ed, &mut OsRng);
    let blob = bob.devices[0].device.signed_bundle().unwrap();
    let bundle = PrekeyBundle::assemble(&blob, None, None).unwrap();
    let mut session = Session::initiate(&mallory, &bundle, 0, &mut OsRng).unwrap();
    let sync = pb::Content {
        sender_relay: bob.relay.to_string(),
        delivery_token: Vec::new(),
        body: Some(pb::content::Body::SentSync(pb::SentSync {
            recipient: alice.address().to_string(),
            message: text(&alice, 5, "I never wrote this")
                .body
                .and_then(|b| match b {
                    pb::content::Body::Message(m) => Some(m),
                    _ => None,
                }),
        })),
    };
    let m = session
        .encrypt(&sync.encode_to_vec(), Padding::None, &mut OsRng)
        .unwrap();
    let cert = bob.devices[1].cert;
    let id = bob.next_id();
    bob.receive(
        0,
        &(
            id,
            seal(
                bob.devices[0].device.identity(),
                &bob.account.public(),
                2,
                Some(&cert),
                m.bytes,
            ),
        ),
    );
    let envelope = impersonation(&alice, &mut bob, true);
    bob.receive(0, &envelope);
    assert_eq!(kinds(&bob.events(0)), ["failed", "failed"]);
}

#[test]
fn forged_failures_claiming_a_contact_never_reset_and_stay_bounded() {
    let (alice, mut bob, envelopes) = conversation(1);
    assert!(bob.receive(0, &envelopes[0]).events);
    let before = bob.outbox(0).len();
    // A flood of garbage ratchet messages claiming Alice's device 1.
    for i in 0..300u32 {
        let mut junk = vec![0x11u8];
        junk.extend_from_slice(&[7u8; 32]);
        junk.extend_from_slice(&0u32.to_be_bytes());
        junk.extend_from_slice(&i.to_be_bytes());
        junk.extend_from_slice(&[0u8; 40]);
        let id = bob.next_id();
        let to = *bob.devices[0].device.identity();
        bob.receive(0, &(id, seal(&to, &alice.account.public(), 1, None, junk)));
    }
    let repairs: Vec<_> = bob.outbox(0).into_iter().skip(before).collect();
    // Nothing automatic follows from a claim nobody proved: no retry
    // request, no reset, no bundle fetch.
    assert!(repairs.is_empty(), "{} repair items", repairs.len());
    // Failure events are bounded too.
    let failed = kinds(&bob.events(0))
        .iter()
        .filter(|k| **k == "failed")
        .count();
    assert!(failed as u32 <= FAILURE_EVENT_BURST, "{failed} events");
}

#[test]
fn content_that_decrypts_but_is_invalid_commits_and_never_repairs() {
    let mut alice = TestUser::new(1);
    let mut bob = TestUser::new(1);
    bob.accept(&alice);
    let bad_receipt = pb::Content {
        sender_relay: alice.relay.to_string(),
        delivery_token: Vec::new(),
        body: Some(pb::content::Body::Receipt(pb::Receipt {
            kind: 0,
            message_ids: vec![vec![1, 2, 3]],
        })),
    };
    let unknown = pb::Content {
        sender_relay: alice.relay.to_string(),
        delivery_token: Vec::new(),
        body: None,
    };
    for c in [bad_receipt, unknown] {
        let e = alice.envelope(0, &mut bob, 0, &c);
        bob.receive(0, &e);
    }
    let e = alice.envelope(0, &mut bob, 0, &text(&alice, 1, "still fine"));
    bob.receive(0, &e);
    // Two content failures, then the message: the queue never stalled, the
    // ratchet moved on, and nothing was queued but the delivered receipt.
    assert_eq!(kinds(&bob.events(0)), ["failed", "failed", "message"]);
    let outbox = bob.outbox(0);
    assert_eq!(outbox.len(), 1);
    assert!(!outbox[0].repair);
}

#[test]
fn a_stranger_is_a_message_request_without_receipt_and_bounded() {
    let mut mallory = TestUser::new(1);
    let mut bob = TestUser::new(1);
    for i in 0..(MAX_HELD_PER_REQUEST + 10) {
        let e = mallory.envelope(0, &mut bob, 0, &text(&mallory, i as u8, "hi"));
        bob.receive(0, &e);
    }
    let k = kinds(&bob.events(0));
    assert!(k.iter().all(|k| *k == "request"));
    assert_eq!(k.len() as u32, MAX_HELD_PER_REQUEST);
    // No receipt, no repair, no connection to the stranger's relay.
    assert!(bob.outbox(0).is_empty());
}

#[test]
fn receipts_count_only_for_messages_sent_to_that_device() {
    let (mut alice, mut bob, envelopes) = conversation(1);
    bob.receive(0, &envelopes[0]);
    // Bob claims to have read a message Alice never sent him.
    let receipt = pb::Content {
        sender_relay: bob.relay.to_string(),
        delivery_token: Vec::new(),
        body: Some(pb::content::Body::Receipt(pb::Receipt {
            kind: 1,
            message_ids: vec![vec![0xEE; 16]],
        })),
    };
    alice.accept(&bob);
    let e = bob.envelope(0, &mut alice, 0, &receipt);
    alice.receive(0, &e);
    assert!(kinds(&alice.events(0)).is_empty());
    assert!(alice.devices[0]
        .device
        .store_mut()
        .transaction(|tx| records::delivery(tx, &[0xEE; 16]))
        .unwrap()
        .1
        .iter()
        .next()
        .is_none());
    // A receipt for a message on its way to that device (the relay pushed
    // it before Alice recorded "sent") counts.
    let bob_user = bob.account.public();
    alice.devices[0]
        .device
        .store_mut()
        .transaction(|tx| records::raise_delivery(tx, &[0xEF; 16], &bob_user, 1, None, 1_000))
        .unwrap();
    let receipt = pb::Content {
        sender_relay: bob.relay.to_string(),
        delivery_token: Vec::new(),
        body: Some(pb::content::Body::Receipt(pb::Receipt {
            kind: 0,
            message_ids: vec![vec![0xEF; 16]],
        })),
    };
    let e = bob.envelope(0, &mut alice, 0, &receipt);
    alice.receive(0, &e);
    assert_eq!(kinds(&alice.events(0)), ["delivery", "receipt"]);
}

#[test]
fn a_revoked_device_is_refused_once_the_list_says_so() {
    let mut alice = TestUser::new(2);
    let mut bob = TestUser::new(1);
    bob.accept(&alice);
    let e = alice.envelope(1, &mut bob, 0, &text(&alice, 1, "from device 2"));
    bob.receive(0, &e);
    // Alice's primary removes device 2 and tells Bob (the signed list).
    let mut list = alice.list(2);
    list.devices.retain(|d| d.device_id != 2);
    let signed = alice.signed_list(&list);
    let changed = pb::Content {
        sender_relay: alice.relay.to_string(),
        delivery_token: Vec::new(),
        body: Some(pb::content::Body::DeviceListChanged(
            pb::DeviceListChanged {
                version: 2,
                signed_list: signed.encode_to_vec(),
            },
        )),
    };
    let e = alice.envelope(0, &mut bob, 0, &changed);
    bob.receive(0, &e);
    // The stolen device keeps writing over its old session: refused.
    let e = alice.envelope(1, &mut bob, 0, &text(&alice, 2, "still me"));
    bob.receive(0, &e);
    // And over a fresh session, with its (still valid) certificate: refused
    // too, before anything is decrypted.
    let bob_addr = DeviceAddress::new(bob.account.public().to_vec(), 1);
    alice.devices[1].device.delete_sessions(&bob_addr).unwrap();
    let e = alice.envelope(1, &mut bob, 0, &text(&alice, 3, "new session"));
    bob.receive(0, &e);
    assert_eq!(
        kinds(&bob.events(0)),
        ["message", "device_removed", "failed", "failed"]
    );
    let addr = DeviceAddress::new(alice.account.public().to_vec(), 2);
    assert!(!bob.devices[0].device.has_session(&addr).unwrap());
    // A replay of the old list (version 1) is refused: it cannot bring it back.
    let old = alice.signed_list(&alice.list(1));
    let replay = pb::Content {
        sender_relay: alice.relay.to_string(),
        delivery_token: Vec::new(),
        body: Some(pb::content::Body::DeviceListChanged(
            pb::DeviceListChanged {
                version: 1,
                signed_list: old.encode_to_vec(),
            },
        )),
    };
    let e = alice.envelope(0, &mut bob, 0, &replay);
    bob.receive(0, &e);
    assert_eq!(kinds(&bob.events(0)).last(), Some(&"failed"));
}

#[test]
fn retry_requests_are_honoured_at_most_twice_per_envelope() {
    let mut alice = TestUser::new(1);
    let mut bob = TestUser::new(1);
    bob.accept(&alice);
    alice.accept(&bob);
    // Alice's sent log holds one envelope to Bob's device 1.
    let envelope_id = [0x42u8; 16];
    let (bob_user, bob_address) = (bob.account.public(), bob.address());
    let content = text(&alice, 1, "x").encode_to_vec();
    alice.devices[0]
        .device
        .store_mut()
        .transaction(|tx| {
            records::log_sent(
                tx,
                &envelope_id,
                &pb::SentLogEntry {
                    recipient_user: bob_user.to_vec(),
                    recipient_device: 1,
                    recipient: bob_address.to_string(),
                    content: content.clone(),
                    at_ms: 1_000,
                    retries: 0,
                },
                1_000,
            )
        })
        .unwrap();
    let retry = pb::Content {
        sender_relay: bob.relay.to_string(),
        delivery_token: Vec::new(),
        body: Some(pb::content::Body::Retry(pb::RetryRequest {
            envelope_id: envelope_id.to_vec(),
        })),
    };
    for _ in 0..5 {
        let e = bob.envelope(0, &mut alice, 0, &retry);
        alice.receive(0, &e);
    }
    let resends = alice.outbox(0);
    assert_eq!(resends.len() as u32, MAX_RESENDS_PER_ENVELOPE);
    assert!(resends.iter().all(|i| i.repair && i.only_devices == [1]));
    // A retry for an envelope Alice never sent to that device: nothing.
    let forged = pb::Content {
        sender_relay: bob.relay.to_string(),
        delivery_token: Vec::new(),
        body: Some(pb::content::Body::Retry(pb::RetryRequest {
            envelope_id: vec![0x43; 16],
        })),
    };
    let e = bob.envelope(0, &mut alice, 0, &forged);
    alice.receive(0, &e);
    assert_eq!(alice.outbox(0).len() as u32, MAX_RESENDS_PER_ENVELOPE);
}

#[test]
fn a_lost_session_is_repaired_only_for_a_sender_the_mac_proves() {
    let (mut alice, mut bob, envelopes) = conversation(1);
    bob.receive(0, &envelopes[0]);
    alice.accept(&bob);
    let reply = bob.envelope(0, &mut alice, 0, &text(&bob, 9, "reply"));
    alice.receive(0, &reply);
    let before = bob.outbox(0).len();
    // Bob loses his sessions with Alice (a damaged store).
    let addr = DeviceAddress::new(alice.account.public().to_vec(), 1);
    bob.devices[0].device.delete_sessions(&addr).unwrap();
    // Alice's next message cannot be decrypted; its MAC is genuine.
    let e = alice.envelope(0, &mut bob, 0, &text(&alice, 2, "after damage"));
    bob.receive(0, &e);
    let repairs: Vec<_> = bob.outbox(0).into_iter().skip(before).collect();
    assert_eq!(repairs.len(), 1);
    assert!(repairs[0].repair && repairs[0].reset_session);
    // The same message with its MAC stripped (what a forger can send):
    // reported, never repaired.
    let mut claim = crate::engine::testkit::unseal(&bob.devices[0].device, &e.1);
    claim.sender_mac = vec![0; 16];
    let to = *bob.devices[0].device.identity();
    let id = bob.next_id();
    bob.receive(0, &(id, crate::engine::testkit::seal_claim(&to, &claim)));
    assert_eq!(bob.outbox(0).len(), before + 1);
}

#[test]
fn strangers_are_bounded_in_number() {
    let mut bob = TestUser::new(1);
    let mut strangers: Vec<TestUser> = (0..MAX_STRANGERS + 3).map(|_| TestUser::new(1)).collect();
    for s in &mut strangers {
        let e = s.envelope(0, &mut bob, 0, &text(s, 1, "hi"));
        bob.receive(0, &e);
    }
    let k = kinds(&bob.events(0));
    assert_eq!(k.iter().filter(|k| **k == "request").count(), MAX_STRANGERS);
    assert_eq!(k.iter().filter(|k| **k == "failed").count(), 3);
    // Nothing was stored of the ones past the limit: no session, no trust.
    let last = &strangers[MAX_STRANGERS + 2];
    let addr = DeviceAddress::new(last.account.public().to_vec(), 1);
    assert!(!bob.devices[0].device.has_session(&addr).unwrap());
}

/// Replaces device `index` of `user` with a fresh device of the same id,
/// certified by the same account (what a stranger can do at will).
fn new_identity_for(user: &mut TestUser, index: usize, id: u32) {
    let mut device = Device::create(sotto_core::MemoryStore::new(), id, 0, &mut OsRng).unwrap();
    let cert = user.account.certify(id, device.identity());
    let old = std::mem::replace(
        &mut user.devices[index].device,
        Device::create(sotto_core::MemoryStore::new(), id, 0, &mut OsRng).unwrap(),
    );
    let cfg = old
        .store()
        .get(sotto_core::store::Table::App, records::CONFIG)
        .unwrap()
        .unwrap();
    device
        .store_mut()
        .transaction(|tx| tx.put(sotto_core::store::Table::App, records::CONFIG, &cfg))
        .unwrap();
    user.devices[index].device = device;
    user.devices[index].cert = cert;
}

#[test]
fn a_stranger_cannot_raise_unbounded_identity_alarms_or_sessions() {
    let mut mallory = TestUser::new(1);
    let mut bob = TestUser::new(1);
    // The same device id under ever new identities: identity alarms.
    for i in 0..150u32 {
        new_identity_for(&mut mallory, 0, 1);
        let e = mallory.envelope(0, &mut bob, 0, &text(&mallory, i as u8, "hi"));
        bob.receive(0, &e);
    }
    let alarms = kinds(&bob.events(0))
        .iter()
        .filter(|k| **k == "identity_changed")
        .count();
    assert!(alarms as u32 <= FAILURE_EVENT_BURST, "{alarms} alarms");
    // Ever new device ids: sessions stop at the limit for a stranger.
    let mut eve = TestUser::new(1);
    for id in 2..12u32 {
        new_identity_for(&mut eve, 0, id);
        let e = eve.envelope(0, &mut bob, 0, &text(&eve, id as u8, "hi"));
        bob.receive(0, &e);
    }
    let sessions = bob.devices[0]
        .device
        .session_devices(&eve.account.public())
        .unwrap();
    assert_eq!(sessions, MAX_DEVICES_PER_STRANGER);
}

/// The delivery token in a content is kept only from an accepted contact
/// (a stranger's is not kept until the user accepts), only per sending
/// device, only beside a valid body, and a malformed one is a content
/// failure, not a silent drop.
#[test]
fn delivery_tokens_are_kept_from_contacts_only_and_checked() {
    let mut alice = TestUser::new(1);
    let mut mallory = TestUser::new(1);
    let mut bob = TestUser::new(1);
    bob.accept(&alice);
    let token = |bob: &mut TestUser, user: &TestUser| {
        bob.devices[0]
            .device
            .store_mut()
            .transaction(|tx| records::delivery_token(tx, &user.address().user, 1))
            .unwrap()
            .map(|t| *t)
    };
    let mut c = text(&alice, 1, "with a token");
    c.delivery_token = vec![3; 32];
    let e = alice.envelope(0, &mut bob, 0, &c);
    bob.receive(0, &e);
    assert_eq!(token(&mut bob, &alice), Some([3; 32]));

    let mut c = text(&mallory, 1, "a stranger's token");
    c.delivery_token = vec![4; 32];
    let e = mallory.envelope(0, &mut bob, 0, &c);
    bob.receive(0, &e);
    assert_eq!(token(&mut bob, &mallory), None);

    let mut c = text(&alice, 2, "a short token");
    c.delivery_token = vec![5; 31];
    let e = alice.envelope(0, &mut bob, 0, &c);
    bob.receive(0, &e);
    assert_eq!(kinds(&bob.events(0)), ["message", "request", "failed"]);
    assert_eq!(token(&mut bob, &alice), Some([3; 32]));

    // A token beside an invalid body is not kept; an update alone is.
    let mut c = text(&alice, 3, "");
    c.body = None;
    c.delivery_token = vec![6; 32];
    let e = alice.envelope(0, &mut bob, 0, &c);
    bob.receive(0, &e);
    assert_eq!(token(&mut bob, &alice), Some([3; 32]));
    c.body = Some(pb::content::Body::DeliveryTokenUpdate(
        pb::DeliveryTokenUpdate {},
    ));
    let e = alice.envelope(0, &mut bob, 0, &c);
    bob.receive(0, &e);
    assert_eq!(token(&mut bob, &alice), Some([6; 32]));
    assert_eq!(
        kinds(&bob.events(0)),
        ["message", "request", "failed", "failed"]
    );
}

/// The pieces of `content`, each wrapped as the outbox sends it (with the
/// sender's relay).
fn pieces_of(from: &TestUser, content: &pb::Content) -> Vec<pb::Content> {
    crate::engine::fragments::split(&content.encode_to_vec())
        .unwrap()
        .into_iter()
        .map(|p| {
            let mut c = pb::Content::decode(p.as_slice()).unwrap();
            c.sender_relay = from.relay.to_string();
            c
        })
        .collect()
}

/// Pieces carry only what is too large for one envelope (a group change or
/// sync): a 150 KB text joined from them is refused, not shown; and the
/// transfers a stranger opens are its request's held items, so a stranger
/// sending nothing but pieces is a request like any (counted, declinable),
/// never an invisible store of pieces.
#[test]
fn pieces_never_carry_a_message_and_a_strangers_pieces_fill_its_request() {
    let mut alice = TestUser::new(1);
    let mut bob = TestUser::new(1);
    let big = text(&bob, 9, &"x".repeat(150_000));
    for piece in pieces_of(&bob, &big) {
        let e = bob.envelope(0, &mut alice, 0, &piece);
        alice.receive(0, &e);
    }
    let events = alice.events(0);
    assert_eq!(kinds(&events), ["failed"]);
    // Bob is a stranger with a request record: the transfer one held item,
    // the refused whole another (a stranger's failures count too).
    let bob_user = bob.account.public();
    let held = |alice: &mut TestUser| {
        alice.devices[0]
            .device
            .store_mut()
            .transaction(|tx| records::contact(tx, &bob_user))
            .unwrap()
            .map(|c| (c.state, c.held))
    };
    assert_eq!(held(&mut alice), Some((records::STRANGER, 2)));
    // 60 more transfers (a last piece each): past 50 held items, nothing
    // more is kept or counted.
    for n in 0..60u32 {
        let mut first = pieces_of(&bob, &text(&bob, 1, &format!("{n}{}", "y".repeat(70_000))));
        let last = first.pop().unwrap();
        let e = bob.envelope(0, &mut alice, 0, &last);
        alice.receive(0, &e);
    }
    assert_eq!(held(&mut alice), Some((records::STRANGER, 50)));
    let rows = alice.devices[0]
        .device
        .store_mut()
        .transaction(|tx| {
            Ok::<_, Error>(
                tx.keys_with_prefix(sotto_core::store::Table::App, b"fr/")?
                    .len(),
            )
        })
        .unwrap();
    assert!(
        rows <= 2 * crate::engine::fragments::MAX_TRANSFERS_PER_DEVICE,
        "{rows} rows"
    );
}
