//! Processing one envelope from this device's mailbox: the sans-IO half of
//! receiving. Everything an envelope causes (ratchet step, de-duplication
//! marks, events for the app, receipts and retries to send) commits in ONE
//! store transaction; the caller acknowledges the envelope to the relay only
//! after that commit. So a crash before the commit redelivers the envelope
//! and it is processed as if new; a crash after it redelivers an envelope
//! marked processed, which is acknowledged quietly.
//!
//! An envelope that cannot be decrypted never blocks the mailbox: it becomes
//! a [`super::events::EventKind::DecryptFailed`] event, a session repair
//! (fresh session plus a retry request) is queued, and it is acknowledged.

use prost::Message as _;
use sotto_proto::client as pb;

use super::address::UserAddress;
use super::records;
use crate::device::{Device, DeviceAddress};
use crate::error::{Error, Result};
use crate::session::{MessageKind, PreKeyMessage};
use crate::store::Store;

/// What processing decided, for the async layer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// New events wait for the app.
    pub(crate) events: bool,
    /// New outbox items wait to be sent.
    pub(crate) outbox: bool,
}

/// Processes one envelope; `Ok` means: acknowledge it to the relay now.
/// `Err` means a local failure (storage): do not acknowledge, retry later.
pub(crate) fn process<S: Store>(
    device: &mut Device<S>,
    me: &UserAddress,
    envelope_id: &[u8; 16],
    payload: &[u8],
    now_ms: u64,
) -> Result<Outcome> {
    if device
        .store_mut()
        .transaction(|tx| records::is_processed(tx, envelope_id))?
    {
        // Redelivery of an envelope whose effects are committed.
        return Ok(Outcome::default());
    }
    let sealed = match pb::Envelope::decode(payload) {
        Ok(pb::Envelope {
            version: 1,
            body: Some(pb::envelope::Body::Sealed(s)),
        }) => s,
        Ok(pb::Envelope {
            version: 1,
            body: Some(_),
        }) => {
            // Link messages are for a device that is still linking; a linked
            // device ignores strays (acknowledged, nothing else).
            return finish_failure(
                device,
                envelope_id,
                now_ms,
                None,
                0,
                "unexpected link message",
            );
        }
        _ => return finish_failure(device, envelope_id, now_ms, None, 0, "malformed envelope"),
    };
    let Ok(sender_user) = <[u8; 32]>::try_from(sealed.sender_user.as_slice()) else {
        return finish_failure(device, envelope_id, now_ms, None, 0, "malformed sender");
    };
    let addr = DeviceAddress::new(sender_user.to_vec(), sealed.sender_device);
    let known = device
        .store_mut()
        .transaction(|tx| records::contact(tx, &sender_user))?;
    let known_address: Option<UserAddress> = known.as_ref().and_then(|c| c.address.parse().ok());

    // A PreKey message names the initiator's identity: it must be the key the
    // envelope claims to come from, or anyone could pose as a known user.
    if let Ok(MessageKind::PreKey) = MessageKind::of(&sealed.message) {
        match PreKeyMessage::parse(&sealed.message) {
            Ok(m) if m.initiator_identity.as_bytes()[..32] == sender_user => {}
            Ok(_) => {
                return finish_failure(
                    device,
                    envelope_id,
                    now_ms,
                    known_address.as_ref(),
                    sealed.sender_device,
                    "identity does not match the claimed sender",
                )
            }
            Err(_) => {
                return finish_failure(
                    device,
                    envelope_id,
                    now_ms,
                    known_address.as_ref(),
                    sealed.sender_device,
                    "malformed prekey message",
                )
            }
        }
    }

    let me = me.clone();
    let sender_device = sealed.sender_device;
    let result = device.decrypt_then(&addr, &sealed.message, now_ms / 1000, |tx, plaintext| {
        records::mark_processed(tx, envelope_id, now_ms)?;
        let content =
            pb::Content::decode(plaintext).map_err(|_| Error::Malformed { what: "content" })?;
        apply(tx, &me, &sender_user, sender_device, content, now_ms)
    });
    match result {
        Ok((_, outcome)) => Ok(outcome),
        Err(Error::DuplicateMessage { .. }) | Err(Error::ReplayedPreKeyMessage) => {
            // The same ciphertext twice (a sender retransmission): nothing new.
            device
                .store_mut()
                .transaction(|tx| records::mark_processed(tx, envelope_id, now_ms))?;
            Ok(Outcome::default())
        }
        Err(Error::IdentityChanged { .. }) => device.store_mut().transaction(|tx| {
            records::mark_processed(tx, envelope_id, now_ms)?;
            let peer = known_address
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_default();
            records::push_event(
                tx,
                pb::ClientEvent {
                    peer,
                    peer_device: sender_device,
                    kind: Some(pb::client_event::Kind::IdentityChanged(true)),
                    ..Default::default()
                },
            )?;
            Ok(Outcome {
                events: true,
                outbox: false,
            })
        }),
        Err(e @ (Error::Storage(_) | Error::CorruptRecord { .. } | Error::Hook(_))) => Err(e),
        Err(e) => {
            let reason = e.to_string();
            finish_failure(
                device,
                envelope_id,
                now_ms,
                known_address.as_ref(),
                sender_device,
                &reason,
            )
            .map(|mut o| {
                if let Some(peer) = &known_address {
                    // Repair: a fresh session to that device carrying a retry
                    // request for this envelope.
                    let item = pb::OutboxItem {
                        recipient: peer.to_string(),
                        content: pb::Content {
                            sender_relay: String::new(),
                            body: Some(pb::content::Body::Retry(pb::RetryRequest {
                                envelope_id: envelope_id.to_vec(),
                            })),
                        }
                        .encode_to_vec(),
                        only_devices: vec![sender_device],
                        reset_session: true,
                        ..Default::default()
                    };
                    if device
                        .store_mut()
                        .transaction(|tx| records::push_outbox(tx, &item))
                        .is_ok()
                    {
                        o.outbox = true;
                    }
                }
                o
            })
        }
    }
}

/// Records an envelope that yields nothing but a `DecryptFailed` event.
fn finish_failure<S: Store>(
    device: &mut Device<S>,
    envelope_id: &[u8; 16],
    now_ms: u64,
    peer: Option<&UserAddress>,
    peer_device: u32,
    reason: &str,
) -> Result<Outcome> {
    device.store_mut().transaction(|tx| {
        records::mark_processed(tx, envelope_id, now_ms)?;
        records::push_event(
            tx,
            pb::ClientEvent {
                peer: peer.map(|p| p.to_string()).unwrap_or_default(),
                peer_device,
                kind: Some(pb::client_event::Kind::DecryptFailed(reason.to_string())),
                ..Default::default()
            },
        )?;
        Ok(Outcome {
            events: true,
            outbox: false,
        })
    })
}

/// Applies decrypted content inside the decrypt's transaction.
fn apply(
    tx: &mut impl crate::store::Txn,
    me: &UserAddress,
    sender_user: &[u8; 32],
    sender_device: u32,
    content: pb::Content,
    now_ms: u64,
) -> Result<Outcome> {
    let _ = now_ms;
    // Learn (or confirm) the sender's home relay for replies.
    let peer: UserAddress = if content.sender_relay.is_empty() {
        let c = records::contact(tx, sender_user)?;
        match c.and_then(|c| c.address.parse().ok()) {
            Some(a) => a,
            None => {
                return Err(Error::Malformed {
                    what: "content without sender relay from an unknown user",
                })
            }
        }
    } else {
        UserAddress {
            user: *sender_user,
            relay: content.sender_relay.parse()?,
        }
    };
    let mut contact = records::contact(tx, sender_user)?.unwrap_or_default();
    if contact.address != peer.to_string() {
        contact.address = peer.to_string();
        records::put_contact(tx, sender_user, &contact)?;
    }
    let from_self = sender_user == &me.user;
    let event = |kind| pb::ClientEvent {
        peer: peer.to_string(),
        peer_device: sender_device,
        kind: Some(kind),
        ..Default::default()
    };
    let mut out = Outcome::default();
    use pb::client_event::Kind as K;
    match content.body {
        Some(pb::content::Body::Message(m)) => {
            let _ = super::events::message_from_pb(&m)?; // validate before storing
            if records::first_sight(tx, sender_user, &m.id)? {
                // A delivered receipt to every device of the sender.
                let receipt = pb::OutboxItem {
                    recipient: peer.to_string(),
                    content: receipt_content(me, pb::receipt::Kind::Delivered, vec![m.id.clone()]),
                    ..Default::default()
                };
                records::push_outbox(tx, &receipt)?;
                out.outbox = true;
                records::push_event(tx, event(K::Message(m)))?;
                out.events = true;
            }
        }
        Some(pb::content::Body::Receipt(r)) => {
            let state = if r.kind == pb::receipt::Kind::Read as i32 {
                3
            } else {
                2
            };
            for id in &r.message_ids {
                if records::raise_delivery(tx, id, sender_user, sender_device, state)? {
                    let mut e = event(K::Delivery(pb::DeviceDelivery {
                        user: sender_user.to_vec(),
                        device_id: sender_device,
                        state,
                    }));
                    e.message_id = id.clone();
                    records::push_event(tx, e)?;
                }
            }
            records::push_event(tx, event(K::Receipt(r)))?;
            out.events = true;
        }
        Some(pb::content::Body::Retry(r)) => {
            // Only the device the envelope went to may ask for it again.
            if let Some(entry) = records::sent(tx, &r.envelope_id)? {
                if entry.recipient_user == sender_user.as_slice()
                    && entry.recipient_device == sender_device
                {
                    records::push_outbox(
                        tx,
                        &pb::OutboxItem {
                            recipient: entry.recipient.clone(),
                            content: entry.content.clone(),
                            only_devices: vec![sender_device],
                            to_own_devices: false,
                            ..Default::default()
                        },
                    )?;
                    out.outbox = true;
                }
            }
            records::push_event(tx, event(K::SessionReset(true)))?;
            out.events = true;
        }
        Some(pb::content::Body::SentSync(s)) if from_self => {
            if let Some(m) = &s.message {
                let _ = super::events::message_from_pb(m)?;
                if records::first_sight(tx, sender_user, &m.id)? {
                    records::push_event(tx, event(K::SentSync(s)))?;
                    out.events = true;
                }
            }
        }
        Some(pb::content::Body::SentSync(_)) => {
            return Err(Error::Malformed {
                what: "sent sync from another user",
            })
        }
        Some(pb::content::Body::DeviceListChanged(_)) => {
            // The next send refreshes the list; nothing to store.
        }
        None => return Err(Error::Malformed { what: "content" }),
    }
    Ok(out)
}

/// Encoded `Content` of a receipt.
pub(crate) fn receipt_content(
    me: &UserAddress,
    kind: pb::receipt::Kind,
    ids: Vec<Vec<u8>>,
) -> Vec<u8> {
    pb::Content {
        sender_relay: me.relay.to_string(),
        body: Some(pb::content::Body::Receipt(pb::Receipt {
            kind: kind as i32,
            message_ids: ids,
        })),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    //! The receive state machine under a hostile network: envelopes delivered
    //! in random order, redelivered (ack lost), and the receiver restarted
    //! from its store at random points. Every message must surface exactly
    //! once, and nothing may become a decrypt failure.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use proptest::prelude::*;
    use rand_core::OsRng;

    use super::*;
    use crate::client::address::RelayAddress;
    use crate::prekeys::PrekeyBundle;
    use crate::store::memory::MemoryStore;
    use crate::store::Txn as _;

    fn user(device: &Device<MemoryStore>) -> UserAddress {
        let mut u = [0u8; 32];
        u.copy_from_slice(&device.identity().as_bytes()[..32]);
        UserAddress {
            user: u,
            relay: RelayAddress::new("127.0.0.1:1".parse().unwrap(), [7; 32]),
        }
    }

    fn with_config(mut d: Device<MemoryStore>) -> Device<MemoryStore> {
        d.store_mut()
            .transaction(|tx| {
                records::put(
                    tx,
                    records::CONFIG,
                    &pb::ClientConfig {
                        version: 1,
                        next_seq: 1,
                        ..Default::default()
                    },
                )
            })
            .unwrap();
        d
    }

    /// Alice's `n` messages to Bob as relay envelopes `(id, payload)`.
    /// Relay envelopes as `(id, payload)`.
    type Envelopes = Vec<([u8; 16], Vec<u8>)>;

    fn conversation(n: usize) -> (Device<MemoryStore>, UserAddress, Envelopes) {
        let mut alice = Device::create(MemoryStore::new(), 1, 0, &mut OsRng).unwrap();
        let mut bob = with_config(Device::create(MemoryStore::new(), 1, 0, &mut OsRng).unwrap());
        let (a, b) = (user(&alice), user(&bob));
        let blob = bob.signed_bundle().unwrap();
        let bundle = PrekeyBundle::assemble(&blob, None, None).unwrap();
        let bob_addr = DeviceAddress::new(b.user.to_vec(), 1);
        alice
            .process_bundle(&bob_addr, &bundle, 0, &mut OsRng)
            .unwrap();
        let mut envelopes = Vec::new();
        for i in 0..n {
            let content = pb::Content {
                sender_relay: a.relay.to_string(),
                body: Some(pb::content::Body::Message(pb::Message {
                    id: vec![i as u8; 16],
                    sent_at_ms: 0,
                    text: format!("m{i}"),
                    attachments: vec![],
                })),
            }
            .encode_to_vec();
            let m = alice.encrypt(&bob_addr, &content, &mut OsRng).unwrap();
            let payload = pb::Envelope {
                version: 1,
                body: Some(pb::envelope::Body::Sealed(pb::Sealed {
                    sender_user: a.user.to_vec(),
                    sender_device: 1,
                    message: m.bytes,
                })),
            }
            .encode_to_vec();
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&1_000u64.to_be_bytes());
            id[8..].copy_from_slice(&(i as u64).to_be_bytes());
            envelopes.push((id, payload));
        }
        (bob, b, envelopes)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn every_message_surfaces_exactly_once(
            n in 1usize..12,
            steps in proptest::collection::vec((0usize..64, 0u8..4), 0..60),
        ) {
            let (mut bob, me, envelopes) = conversation(n);
            // The relay's view: envelopes not yet acknowledged, in FIFO order.
            let mut pending: Vec<usize> = (0..n).collect();
            for (pick, action) in steps {
                if pending.is_empty() {
                    break;
                }
                let i = pending[pick % pending.len()];
                let (id, payload) = &envelopes[i];
                match action {
                    // Deliver and acknowledge.
                    0 | 1 => {
                        process(&mut bob, &me, id, payload, 1_000).unwrap();
                        pending.retain(|&p| p != i);
                    }
                    // Deliver, but the ack is lost: it will come again.
                    2 => {
                        process(&mut bob, &me, id, payload, 1_000).unwrap();
                    }
                    // The receiver restarts from its store.
                    _ => {
                        let store = bob.into_store();
                        bob = Device::open(store).unwrap();
                    }
                }
            }
            for i in pending {
                let (id, payload) = &envelopes[i];
                process(&mut bob, &me, id, payload, 1_000).unwrap();
            }
            let events = bob.store_mut().transaction(|tx| records::events(tx, 10_000)).unwrap();
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
            let receipts = bob.store_mut().transaction(|tx| records::outbox(tx)).unwrap();
            prop_assert_eq!(receipts.len(), n);
        }
    }

    #[test]
    fn garbage_envelopes_are_failures_not_panics_and_are_acked() {
        let (mut bob, me, envelopes) = conversation(1);
        for junk in [
            &b""[..],
            b"\x08\x01",
            b"\xff\xff\xff",
            &envelopes[0].1[..20],
        ] {
            let o = process(&mut bob, &me, &[9; 16], junk, 1_000).unwrap();
            assert!(o.events);
            // Redelivery of the same junk: already processed, nothing new.
            assert_eq!(
                process(&mut bob, &me, &[9; 16], junk, 1_000).unwrap(),
                Outcome::default()
            );
            bob.store_mut()
                .transaction(|tx| {
                    tx.delete(
                        crate::store::Table::App,
                        &[b"in/".as_slice(), &[9; 16]].concat(),
                    )
                })
                .unwrap();
        }
        // The real message still decrypts afterwards.
        let (id, payload) = &envelopes[0];
        assert!(process(&mut bob, &me, id, payload, 1_000).unwrap().events);
    }
}
