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
