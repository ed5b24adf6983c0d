//! Entry points for the fuzz targets (`fuzz/`), one per decoder that takes
//! bytes from the network or the disk. Each runs the real code path on
//! arbitrary input from a prepared state (in-memory stores, snapshotted once
//! and cloned per input, so every run is deterministic) and must return
//! without panicking, whatever the bytes. Built only with the `fuzzing`
//! feature; not an API.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::OnceLock;

use prost::Message as _;
use sotto_proto::client as pb;
use sotto_proto::relay::SignedDeviceList;

use crate::engine::address::{RelayAddress, UserAddress};
use crate::engine::devices::DeviceList;
use crate::engine::events::{AttachmentRef, Event};
use crate::engine::testkit::{text, TestUser};
use crate::engine::{inbound, link, live_wire, records};
use sotto_core::attachment::AttachmentPointer;
use sotto_core::device::{Device, DeviceAddress};
use sotto_core::prekeys::PrekeyBundle;
use sotto_core::session::SessionState;
use sotto_core::store::memory::MemoryStore;
use sotto_core::store::Store as _;

/// Alice and Bob, accepted contacts with a session each way (so a
/// ratchet message, not only a PreKey message, is expected next).
struct Pair {
    alice_store: MemoryStore,
    bob_store: MemoryStore,
    alice: UserAddress,
    bob: UserAddress,
    alice_list: DeviceList,
    alice_account: [u8; 32],
    seeds: Vec<Vec<u8>>,
}

fn pair() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| {
        let mut alice = TestUser::new(1);
        let mut bob = TestUser::new(1);
        bob.accept(&alice);
        alice.accept(&bob);
        let first = alice.envelope(0, &mut bob, 0, &text(&alice, 1, "hello"));
        bob.receive(0, &first);
        let reply = bob.envelope(0, &mut alice, 0, &text(&bob, 2, "hi"));
        alice.receive(0, &reply);
        let next = alice.envelope(0, &mut bob, 0, &text(&alice, 3, "next"));
        Pair {
            alice_list: alice.list(1),
            alice_account: alice.account.public(),
            alice: alice.address(),
            bob: bob.address(),
            alice_store: alice.devices[0].device.store().clone(),
            bob_store: bob.devices[0].device.store().clone(),
            seeds: vec![first.1, reply.1, next.1],
        }
    })
}

/// Valid inputs to start each target's corpus from.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let p = pair();
    match target {
        "envelope" => p
            .seeds
            .iter()
            .cloned()
            .chain(
                p.seeds
                    .iter()
                    .filter_map(|s| unsealed(s))
                    .map(|inner| [&[1u8][..], &inner.encode_to_vec()].concat()),
            )
            .collect(),
        "part1_message" => p
            .seeds
            .iter()
            .filter_map(|s| unsealed(s).map(|inner| inner.message))
            .collect(),
        "content" => vec![
            text_content(&p.alice, "hello").encode_to_vec(),
            pb::Content {
                sender_relay: p.alice.relay.to_string(),
                delivery_token: Vec::new(),
                body: Some(pb::content::Body::Receipt(pb::Receipt {
                    kind: 1,
                    message_ids: vec![vec![1; 16]],
                })),
            }
            .encode_to_vec(),
            pb::Content {
                sender_relay: p.alice.relay.to_string(),
                delivery_token: vec![5; 32],
                body: Some(pb::content::Body::DeliveryTokenUpdate(
                    pb::DeliveryTokenUpdate {},
                )),
            }
            .encode_to_vec(),
            // The first piece of a content over one envelope.
            crate::engine::fragments::split(&[7u8; crate::engine::fragments::FRAGMENT_BYTES + 1])
                .ok()
                .and_then(|p| p.into_iter().next())
                .unwrap_or_default(),
        ],
        "stored_records" => vec![
            [&[7u8][..], &[1u8; 36], &[2u8; 36]].concat(),
            [&[6u8][..], &pb::GroupRecord::default().encode_to_vec()].concat(),
        ],
        "addresses" => vec![
            p.alice.to_string().into_bytes(),
            p.alice.relay.to_string().into_bytes(),
        ],
        "device_list" => vec![p.alice_list.body().encode_to_vec()],
        "live" => {
            // Alice's genuine "online" to Bob, made at the target's clock.
            let alice = Device::open(p.alice_store.clone()).unwrap();
            let bob = Device::open(p.bob_store.clone()).unwrap();
            let key = alice
                .sender_mac_key(alice.identity(), bob.identity())
                .unwrap();
            let signal = pb::Live {
                signal: Some(pb::live::Signal::Presence(pb::PresenceState {
                    online: true,
                    last_seen_ms: 0,
                })),
                sent_at_ms: 1_000,
            }
            .encode_to_vec();
            let mac = crate::engine::envelope::live_mac(
                &key,
                (&p.alice.user, 1),
                (&p.bob.user, 1),
                &signal,
            );
            vec![pb::LiveSealed {
                sender_user: p.alice.user.to_vec(),
                sender_device: 1,
                signal,
                mac: mac.to_vec(),
            }
            .encode_to_vec()]
        }
        _ => Vec::new(),
    }
}

fn text_content(from: &UserAddress, body: &str) -> pb::Content {
    pb::Content {
        sender_relay: from.relay.to_string(),
        delivery_token: vec![5; 32],
        body: Some(pb::content::Body::Message(pb::Message {
            id: vec![7; 16],
            sent_at_ms: 0,
            text: body.to_string(),
            attachments: vec![],
        })),
    }
}

/// A relay envelope payload (`Envelope`, `Sealed`, certificates, the Part I
/// message inside) received by Bob from anyone.
pub fn envelope(data: &[u8]) {
    let p = pair();
    let mut bob = Device::open(p.bob_store.clone()).unwrap();
    // An odd first byte: the rest is what a sealed envelope holds (a
    // sender's claim and a Part I message), sealed to Bob as anyone can.
    let payload = match data.split_first() {
        Some((kind, inner)) if kind & 1 == 1 => seal_to(&bob, inner),
        _ => data.to_vec(),
    };
    let _ = inbound::process(&mut bob, &p.bob, &[1; 16], &payload, 1_000);
    // The same bytes as an ephemeral push (live signals, PROTOCOL.md III.14).
    live_signal(&payload);
}

/// An ephemeral push to Bob (a live signal, PROTOCOL.md III.14), checked
/// as the receive path does; nothing is written either way.
fn live_signal(payload: &[u8]) {
    let p = pair();
    let mut bob = Device::open(p.bob_store.clone()).unwrap();
    let (mut keys, mut replay) = Default::default();
    let _ = live_wire::open(
        &mut bob,
        &mut keys,
        &mut replay,
        &p.bob,
        payload,
        1_000,
        |_| true,
    );
}

/// A live envelope to Bob: `inner` (an encoded `LiveSealed`, whatever
/// it claims) sealed to him, as anyone can.
pub fn live(data: &[u8]) {
    let p = pair();
    let bob = Device::open(p.bob_store.clone()).unwrap();
    let sealed = sotto_core::sealed::seal(
        bob.identity().dh_public(),
        data,
        sotto_core::Padding::Buckets,
        &mut rand_core::OsRng,
    )
    .unwrap_or_default();
    let payload = pb::Envelope {
        version: 1,
        body: Some(pb::envelope::Body::Live(sealed)),
    }
    .encode_to_vec();
    live_signal(&payload);
    live_signal(data);
}

/// The relay payload of `inner` (an encoded `Sealed`) sealed to `to`.
fn seal_to(to: &Device<MemoryStore>, inner: &[u8]) -> Vec<u8> {
    let sealed = sotto_core::sealed::seal(
        to.identity().dh_public(),
        inner,
        sotto_core::Padding::Buckets,
        &mut rand_core::OsRng,
    )
    .unwrap_or_default();
    pb::Envelope {
        version: 1,
        body: Some(pb::envelope::Body::Sealed(sealed)),
    }
    .encode_to_vec()
}

/// What an envelope sealed to Bob holds.
fn unsealed(payload: &[u8]) -> Option<pb::Sealed> {
    let bob = Device::open(pair().bob_store.clone()).ok()?;
    match pb::Envelope::decode(payload).ok()?.body? {
        pb::envelope::Body::Sealed(b) => pb::Sealed::decode(bob.unseal(&b).ok()?.as_slice()).ok(),
        _ => None,
    }
}

/// A Part I message (PreKey or Ratchet) decrypted by Bob as from Alice.
pub fn part1_message(data: &[u8]) {
    let p = pair();
    let mut bob = Device::open(p.bob_store.clone()).unwrap();
    let from = DeviceAddress::new(p.alice.user.to_vec(), 1);
    let _ = bob.decrypt(&from, data, 1);
}

/// `Content` bytes that decrypt correctly (Alice's genuine session): the
/// plaintext a peer controls after authentication.
pub fn content(data: &[u8]) {
    let p = pair();
    let mut alice = Device::open(p.alice_store.clone()).unwrap();
    let mut bob = Device::open(p.bob_store.clone()).unwrap();
    let to = DeviceAddress::new(p.bob.user.to_vec(), 1);
    let m = alice
        .encrypt(&to, data, &mut rand_core::OsRng)
        .expect("the fixture session encrypts");
    let payload = seal_to(
        &bob,
        &pb::Sealed {
            sender_user: p.alice.user.to_vec(),
            sender_device: 1,
            message: m.bytes,
            sender_certificate: None,
            sender_mac: Vec::new(),
        }
        .encode_to_vec(),
    );
    let _ = inbound::process(&mut bob, &p.bob, &[2; 16], &payload, 1_000);
}

/// Records read back from a store: session state, contacts, queued events,
/// client configuration, attachment references. The first byte picks one.
pub fn stored_records(data: &[u8]) {
    let Some((kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 8 {
        0 => {
            let _ = SessionState::from_bytes(rest);
        }
        1 => {
            let _ = sotto_core::trust::Contact::decode(rest);
        }
        2 => {
            let e = pb::ClientEvent::decode(rest).map_err(|_| crate::Error::malformed("event"));
            let _ = Event::from_stored(1, e);
        }
        3 => {
            if let Ok(c) = pb::ContactRecord::decode(rest) {
                if let Ok(Some(list)) = records::pinned_list(&c) {
                    let _ = list.against(Some(&pair().alice_list));
                }
            }
        }
        4 => {
            let _ = AttachmentRef::from_bytes(rest);
        }
        6 => {
            // A group record: its state, root and history as a send or a
            // receive reads them.
            if let Ok(r) = pb::GroupRecord::decode(rest) {
                let _ = crate::engine::group::read_stored(&r);
            }
        }
        7 => {
            // The packed sets (members, holders, done devices, deliveries).
            use crate::engine::packed::{Deliveries, DeviceSet, UserSet};
            let _ = UserSet::from_bytes(rest.to_vec()).map(|u| u.contains(&[1; 32]));
            let _ = DeviceSet::from_bytes(rest.to_vec()).map(|mut d| d.insert(&[1; 32], 1));
            let _ = Deliveries::from_bytes(rest.to_vec())
                .map(|mut d| d.raise(&[(&[1u8; 32][..], 1)], 2, true));
        }
        _ => {
            // A client store whose config row is hostile.
            let mut store = pair().bob_store.clone();
            let _ = store.transaction(|tx| tx_put_config(tx, rest));
            let _ = Device::open(store).map(|mut d| {
                d.store_mut()
                    .transaction(|tx| records::events(tx, 10).map(|_| ()))
            });
        }
    }
}

fn tx_put_config(tx: &mut impl sotto_core::store::Txn, bytes: &[u8]) -> sotto_core::Result<()> {
    tx.put(sotto_core::store::Table::App, records::CONFIG, bytes)
}

/// An attachment pointer (first 81 bytes) and a blob (the rest).
pub fn attachment(data: &[u8]) {
    let n = data.len().min(sotto_core::attachment::POINTER_LEN);
    let (pointer, blob) = data.split_at(n);
    if let Ok(p) = AttachmentPointer::from_bytes(pointer) {
        let _ = sotto_core::attachment::decrypt(blob, std::io::sink(), &p);
    }
}

/// Addresses and link codes, as text.
pub fn addresses(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = s.parse::<UserAddress>();
    let _ = s.parse::<RelayAddress>();
    let _ = link::parse_code(s);
}

/// A prekey bundle as a relay serves it: blob, EC item and KEM item, split
/// at the lengths in the first two bytes.
pub fn bundle(data: &[u8]) {
    let [a, b, rest @ ..] = data else {
        return;
    };
    let a = usize::from(*a).min(rest.len());
    let (blob, rest) = rest.split_at(a);
    let b = usize::from(*b).min(rest.len());
    let (ec, kem) = rest.split_at(b);
    let _ = PrekeyBundle::assemble(
        blob,
        (!ec.is_empty()).then_some(ec),
        (!kem.is_empty()).then_some(kem),
    );
}

/// A signed device list (as fetched from a relay) for Alice's account, then
/// compared with the list pinned for her.
pub fn device_list(data: &[u8]) {
    let p = pair();
    if let Ok(signed) = SignedDeviceList::decode(data) {
        if let Ok(l) = DeviceList::verify(&p.alice_account, &signed) {
            let _ = l.against(Some(&p.alice_list));
        }
    }
    if let Ok(body) = pb::DeviceListBody::decode(data) {
        if let Ok(l) = DeviceList::from_body(2, &body) {
            let _ = l.against(Some(&p.alice_list));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `live` target's seed is a genuine signal: fuzzing starts past
    /// every check, not at the first one.
    #[test]
    fn the_live_seed_passes_every_check() {
        let p = pair();
        let mut bob = Device::open(p.bob_store.clone()).unwrap();
        let inner = seeds("live").pop().unwrap();
        let sealed = sotto_core::sealed::seal(
            bob.identity().dh_public(),
            &inner,
            sotto_core::Padding::Buckets,
            &mut rand_core::OsRng,
        )
        .unwrap();
        let payload = pb::Envelope {
            version: 1,
            body: Some(pb::envelope::Body::Live(sealed)),
        }
        .encode_to_vec();
        let (mut keys, mut replay) = Default::default();
        let opened = live_wire::open(
            &mut bob,
            &mut keys,
            &mut replay,
            &p.bob,
            &payload,
            1_000,
            |_| true,
        );
        assert!(opened.is_ok(), "{opened:?}");
    }
}
