//! Processing one envelope from this device's mailbox: the sans-IO half of
//! receiving. Everything an envelope causes (ratchet step, de-duplication
//! marks, events for the app, receipts and repairs to send) commits in ONE
//! store transaction; the caller acknowledges the envelope to the relay only
//! after that commit. So a crash before the commit redelivers the envelope
//! and it is processed as if new; a crash after it redelivers an envelope
//! marked processed, which is acknowledged quietly.
//!
//! Every byte here is hostile, including the plaintext of a message that
//! decrypted: a valid tag proves which session sent it, not that it is well
//! formed or that the sender may say it. So:
//! - the sender fields of the envelope are a claim; a first (PreKey) message
//!   must carry the account's certificate for exactly the identity that
//!   PQXDH authenticates, and a device the pinned list revoked is refused;
//! - nothing automatic (a repair, a reset, a connection to the sender's
//!   relay) ever follows from an unauthenticated claim: a failure is an
//!   event; a retry request goes only to an accepted contact whose device
//!   the envelope's MAC proves (see [`super::envelope`]), within a
//!   per-device budget;
//! - content that decrypted but is invalid commits the ratchet step and
//!   becomes an event, never a retry loop;
//! - a stranger's messages are held as a message request (no receipt, no
//!   relay contact) in bounded number.

use prost::Message as _;
use sotto_core::Error as CoreError;
use sotto_proto::client as pb;
use sotto_proto::relay::SignedDeviceList;

use super::account::DeviceCertificate;
use super::address::{RelayAddress, UserAddress};
use super::devices::DeviceList;
use super::envelope::verify_sender_mac;
use super::events::{message_from_pb, DeliveryState, EventBuilder, MAX_RECEIPT_IDS};
use super::fragments;
use super::group::{self, state::GroupId};
use super::records::{self, ACCEPTED, BLOCKED, STRANGER};
use crate::error::{Error, Fault, Result};
use sotto_core::device::{Device, DeviceAddress};
use sotto_core::identity::IdentityKey;
use sotto_core::session::{MessageKind, PreKeyMessage};
use sotto_core::store::{Store, Txn};

/// Messages (and invalid contents) kept from one stranger before the app
/// accepts or blocks the request; later ones are dropped.
pub const MAX_HELD_PER_REQUEST: u32 = 50;
/// Strangers (users with a pending message request) kept at once; a new
/// one past this is refused before anything of it is stored.
pub const MAX_STRANGERS: usize = 256;
/// Devices of one accepted contact (one stranger) this device keeps
/// sessions with: the 16 a list may name, and a few newer ones.
pub(crate) const MAX_DEVICES_PER_CONTACT: usize = 20;
pub(crate) const MAX_DEVICES_PER_STRANGER: usize = 4;
/// Repair items queued at once per peer device.
pub(crate) const MAX_PENDING_REPAIRS: usize = 4;
/// Re-sends of one sent envelope answering retry requests.
pub(crate) const MAX_RESENDS_PER_ENVELOPE: u32 = 2;
/// Failure events nobody authenticated (garbage, forged senders) reported in
/// a burst, and how fast the allowance returns (one per 36 s: 100 an hour).
pub(crate) const FAILURE_EVENT_BURST: u32 = 100;
pub(crate) const FAILURE_EVENT_REFILL_MS: u64 = 36_000;

/// What processing decided, for the async layer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// New events wait for the app.
    pub(crate) events: bool,
    /// New outbox items wait to be sent.
    pub(crate) outbox: bool,
    /// Devices a newer list removed: their sessions are deleted after the commit.
    pub(crate) revoked: Vec<DeviceAddress>,
    /// Groups where a fork discarded changes of this device: make them again.
    pub(crate) rebase: Vec<GroupId>,
}

/// Who sent what, as far as it is known before decrypting.
struct Sender<'a> {
    me: &'a UserAddress,
    user: [u8; 32],
    device: u32,
    state: u32,
    now_ms: u64,
}

impl Sender<'_> {
    fn is_own_user(&self) -> bool {
        self.user == self.me.user
    }
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
    let unauthenticated = |device: &mut Device<S>, peer: Option<&UserAddress>, d, reason: &str| {
        finish_failure(
            device,
            envelope_id,
            now_ms,
            peer,
            d,
            reason,
            Authenticity::Claimed,
        )
    };
    let sealed = match pb::Envelope::decode(payload) {
        // The seal hides the sender from the relay: opened first, and what
        // it holds is still only a claim (proven by the session below).
        Ok(pb::Envelope {
            version: 1,
            body: Some(pb::envelope::Body::Sealed(bytes)),
        }) => match device
            .unseal(&bytes)
            .ok()
            .and_then(|inner| pb::Sealed::decode(inner.as_slice()).ok())
        {
            Some(s) => s,
            None => return unauthenticated(device, None, 0, "sealed envelope does not open"),
        },
        Ok(pb::Envelope {
            version: 1,
            body: Some(pb::envelope::Body::SealedGroup(bytes)),
        }) => {
            let opened = device
                .store_mut()
                .transaction(|tx| group::unseal(tx, &bytes))?;
            return match opened {
                Some((id, g)) => process_group(device, me, envelope_id, id, &g, now_ms),
                None => unauthenticated(device, None, 0, "sealed group envelope does not open"),
            };
        }
        Ok(pb::Envelope {
            version: 1,
            body: Some(pb::envelope::Body::Live(_)),
        }) => {
            // Deliver now or never: a live signal the relay kept is stale
            // (and proves nothing: it is not opened).
            return unauthenticated(device, None, 0, "a live signal kept by the relay");
        }
        Ok(pb::Envelope {
            version: 1,
            body: Some(_),
        }) => {
            // Link messages are for a device that is still linking.
            return unauthenticated(device, None, 0, "unexpected link message");
        }
        _ => return unauthenticated(device, None, 0, "malformed envelope"),
    };
    let Ok(sender_user) = <[u8; 32]>::try_from(sealed.sender_user.as_slice()) else {
        return unauthenticated(device, None, 0, "malformed sender");
    };
    let sender_device = sealed.sender_device;
    let from_self = sender_user == me.user;
    if from_self && sender_device == device.device_id() {
        return unauthenticated(device, None, 0, "message claims to come from this device");
    }
    let existing = device
        .store_mut()
        .transaction(|tx| records::contact(tx, &sender_user))?;
    let first_contact = existing.is_none();
    let contact = existing.unwrap_or_default();
    let state = if from_self { ACCEPTED } else { contact.state };
    if state == BLOCKED {
        // The user's decision, not a failure: nothing is decrypted or shown.
        device
            .store_mut()
            .transaction(|tx| records::mark_processed(tx, envelope_id, now_ms))?;
        return Ok(Outcome::default());
    }
    let peer: Option<UserAddress> = if from_self {
        Some(me.clone())
    } else {
        contact.address.parse().ok()
    };
    let pinned = records::pinned_list(&contact)?;
    let addr = DeviceAddress::new(sender_user.to_vec(), sender_device);
    if pinned.as_ref().is_some_and(|l| l.is_revoked(sender_device)) {
        device.delete_sessions(&addr)?;
        return unauthenticated(
            device,
            peer.as_ref(),
            sender_device,
            "message from a removed device",
        );
    }
    let listed: Option<IdentityKey> = pinned
        .as_ref()
        .and_then(|l| l.get(sender_device))
        .map(|e| e.identity);
    let Ok(kind) = MessageKind::of(&sealed.message) else {
        return unauthenticated(device, peer.as_ref(), sender_device, "malformed message");
    };
    // Strangers are bounded in number: past the limit a new one is not even
    // decrypted (nothing of it is stored but the processed mark).
    if first_contact && !from_self {
        let strangers = device
            .store_mut()
            .transaction(|tx| records::count_state(tx, STRANGER))?;
        if strangers >= MAX_STRANGERS {
            return unauthenticated(device, None, sender_device, "too many message requests");
        }
    }
    // Devices per user are bounded too: a user can certify device ids at
    // will, and each new one costs a session (and a PQXDH) here.
    if kind == MessageKind::PreKey && !device.has_session(&addr)? {
        let limit = if state == ACCEPTED {
            MAX_DEVICES_PER_CONTACT
        } else {
            MAX_DEVICES_PER_STRANGER
        };
        if device.session_devices(&sender_user)? >= limit {
            return unauthenticated(device, peer.as_ref(), sender_device, "too many devices");
        }
    }
    let mut certified: Option<IdentityKey> = None;
    if kind == MessageKind::PreKey {
        let Ok(m) = PreKeyMessage::parse(&sealed.message) else {
            return unauthenticated(
                device,
                peer.as_ref(),
                sender_device,
                "malformed prekey message",
            );
        };
        let cert = match sealed
            .sender_certificate
            .as_ref()
            .map(DeviceCertificate::from_pb)
        {
            Some(Ok(c)) => c,
            Some(Err(_)) => {
                return unauthenticated(
                    device,
                    peer.as_ref(),
                    sender_device,
                    "invalid device certificate",
                )
            }
            None => {
                return unauthenticated(
                    device,
                    peer.as_ref(),
                    sender_device,
                    "first message without a device certificate",
                )
            }
        };
        if !cert.binds(&sender_user, sender_device, &m.initiator_identity) {
            return unauthenticated(
                device,
                peer.as_ref(),
                sender_device,
                "device certificate does not match the sender",
            );
        }
        certified = Some(m.initiator_identity);
    }

    let sender = Sender {
        me,
        user: sender_user,
        device: sender_device,
        state,
        now_ms,
    };
    let result = device.decrypt_then(&addr, &sealed.message, now_ms / 1000, |tx, dec| {
        // A device the pinned list names must use the identity it lists.
        if let Some(listed) = &listed {
            if !listed.ct_eq(dec.remote_identity) {
                return Err(CoreError::IdentityChanged {
                    new_identity: Box::new(*dec.remote_identity),
                }
                .into());
            }
        }
        records::mark_processed(tx, envelope_id, now_ms)?;
        apply(tx, &sender, dec.plaintext)
    });
    let mut outcome = match result {
        Ok((_, outcome)) => outcome,
        Err(Error::Core(CoreError::DuplicateMessage { .. } | CoreError::ReplayedPreKeyMessage)) => {
            // A replay (the relay redelivering an acknowledged envelope is
            // caught above by its processed mark): reported, never repaired.
            return unauthenticated(device, peer.as_ref(), sender_device, "duplicate message");
        }
        Err(Error::Core(CoreError::IdentityChanged { .. })) => {
            return identity_changed(
                device,
                envelope_id,
                now_ms,
                peer.as_ref(),
                sender_device,
                state == ACCEPTED,
            )
        }
        Err(e) if e.fault() == Fault::Local => return Err(e),
        Err(e) => {
            // Could not decrypt. The sender fields are a claim; the envelope's
            // MAC (under the static identities, so it survives a lost
            // session) tells a genuine sender from a forger. Only a genuine,
            // accepted sender gets a repair: a retry request over the
            // session we have, or over a fresh one if we lost it, within its
            // budget. A forged claim is an event and nothing else.
            let claimed = listed
                .or(certified)
                .or(device.contact(&addr)?.map(|c| c.identity));
            let own = *device.identity();
            let genuine = match claimed {
                Some(theirs) => device.sender_mac_key(&theirs, &own).is_ok_and(|k| {
                    verify_sender_mac(
                        &k,
                        &sender_user,
                        sender_device,
                        &sealed.message,
                        &sealed.sender_mac,
                    )
                }),
                None => false,
            };
            // A proven sender that is not an accepted contact (a stranger
            // can prove its own devices) counts as a claim.
            let authenticity = match (&peer, genuine && state == ACCEPTED) {
                (Some(p), true) => Authenticity::Repair {
                    peer: p.clone(),
                    has_session: device.has_session(&addr)?,
                },
                _ => Authenticity::Claimed,
            };
            let reason = e.to_string();
            return finish_failure(
                device,
                envelope_id,
                now_ms,
                peer.as_ref(),
                sender_device,
                &reason,
                authenticity,
            );
        }
    };
    for revoked in std::mem::take(&mut outcome.revoked) {
        device.delete_sessions(&revoked)?;
    }
    Ok(outcome)
}

/// How far the sender of a failed envelope is known.
enum Authenticity {
    /// Only claimed (no valid MAC, or not an accepted contact): the event
    /// shares the bounded allowance of unproven failures.
    Claimed,
    /// The MAC proves an accepted contact's device: ask it to re-send. The
    /// event shares the (separate) allowance of proven failures, since a
    /// relay can replay a contact's old genuine envelopes.
    Repair {
        peer: UserAddress,
        has_session: bool,
    },
}

/// Records an envelope that yields nothing but a failure event; for a
/// proven, accepted sender also queues a retry request (within its budget).
/// Failure events nobody authenticated share one bounded allowance.
fn finish_failure<S: Store>(
    device: &mut Device<S>,
    envelope_id: &[u8; 16],
    now_ms: u64,
    peer: Option<&UserAddress>,
    peer_device: u32,
    reason: &str,
    authenticity: Authenticity,
) -> Result<Outcome> {
    device.store_mut().transaction(|tx| {
        records::mark_processed(tx, envelope_id, now_ms)?;
        let mut out = Outcome::default();
        let proven = matches!(authenticity, Authenticity::Repair { .. });
        let reported = failure_allowance(tx, proven, reason, now_ms)?;
        if let Some(reason) = reported {
            records::push_event(
                tx,
                EventBuilder::about(peer)
                    .device(peer_device)
                    .kind(pb::client_event::Kind::DecryptFailed(reason)),
            )?;
            out.events = true;
        }
        if let Authenticity::Repair { peer, has_session } = authenticity {
            out.outbox =
                queue_retry_request(tx, &peer, peer_device, envelope_id, !has_session, now_ms)?;
        }
        Ok(out)
    })
}

/// Takes one token of a failure-event allowance (one for proven senders,
/// one for everything else, so forgeries cannot silence genuine failures);
/// the reason to report (with the count of failures suppressed since the
/// last report), or `None` when the allowance is used up.
fn failure_allowance(
    tx: &mut impl Txn,
    proven: bool,
    reason: &str,
    now_ms: u64,
) -> Result<Option<String>> {
    let mut counters = records::counters(tx)?;
    let bucket = if proven {
        counters
            .proven_failures
            .get_or_insert_with(Default::default)
    } else {
        counters.failures.get_or_insert_with(Default::default)
    };
    if bucket.at_ms == 0 {
        bucket.tokens = FAILURE_EVENT_BURST;
        bucket.at_ms = now_ms;
    }
    let refill = now_ms.saturating_sub(bucket.at_ms) / FAILURE_EVENT_REFILL_MS;
    if refill > 0 {
        let tokens = u64::from(bucket.tokens).saturating_add(refill);
        bucket.tokens = u32::try_from(tokens.min(u64::from(FAILURE_EVENT_BURST)))
            .unwrap_or(FAILURE_EVENT_BURST);
        bucket.at_ms = now_ms;
    }
    let out = if bucket.tokens == 0 {
        bucket.suppressed = bucket.suppressed.saturating_add(1);
        None
    } else {
        bucket.tokens -= 1;
        let suppressed = std::mem::take(&mut bucket.suppressed);
        Some(if suppressed > 0 {
            format!("{reason} ({suppressed} earlier failures not reported)")
        } else {
            reason.to_string()
        })
    };
    records::put_counters(tx, &counters)?;
    Ok(out)
}

/// Queues "please re-send envelope `envelope_id`" to one accepted peer
/// device (over a fresh session with `reset`, when ours is gone), if its
/// repair budget allows and not too many are already waiting. Returns true
/// if one was queued.
/// Whether one more repair may be queued to `peer`'s device: fewer than
/// [`MAX_PENDING_REPAIRS`] wait, and its repair budget has a token (taken).
pub(crate) fn take_repair_slot(
    tx: &mut impl Txn,
    peer: &UserAddress,
    device_id: u32,
    now_ms: u64,
) -> Result<bool> {
    if records::pending_repairs(tx, &peer.to_string(), device_id)? >= MAX_PENDING_REPAIRS {
        return Ok(false);
    }
    let mut contact = records::contact(tx, &peer.user)?.unwrap_or_default();
    if !records::take_repair_token(&mut contact, device_id, now_ms) {
        return Ok(false);
    }
    if contact.address.is_empty() {
        contact.address = peer.to_string();
    }
    records::put_contact(tx, &peer.user, &contact)?;
    Ok(true)
}

fn queue_retry_request(
    tx: &mut impl Txn,
    peer: &UserAddress,
    device_id: u32,
    envelope_id: &[u8; 16],
    reset: bool,
    now_ms: u64,
) -> Result<bool> {
    if !take_repair_slot(tx, peer, device_id, now_ms)? {
        return Ok(false);
    }
    records::push_repair(
        tx,
        peer,
        device_id,
        String::new(),
        pb::content::Body::Retry(pb::RetryRequest {
            envelope_id: envelope_id.to_vec(),
        }),
        reset,
    )?;
    Ok(true)
}

/// The `IdentityChanged` event: a device presented an identity other than
/// the one its account certified or this device recorded. Never repaired.
fn identity_changed<S: Store>(
    device: &mut Device<S>,
    envelope_id: &[u8; 16],
    now_ms: u64,
    peer: Option<&UserAddress>,
    peer_device: u32,
    accepted: bool,
) -> Result<Outcome> {
    device.store_mut().transaction(|tx| {
        records::mark_processed(tx, envelope_id, now_ms)?;
        // Bounded like failures: a stranger can certify identities at will.
        if failure_allowance(tx, accepted, "identity changed", now_ms)?.is_none() {
            return Ok(Outcome::default());
        }
        records::push_event(
            tx,
            EventBuilder::about(peer)
                .device(peer_device)
                .kind(pb::client_event::Kind::IdentityChanged(true)),
        )?;
        Ok(Outcome {
            events: true,
            ..Outcome::default()
        })
    })
}

/// Content that decrypted but may not be used: the ratchet step commits and
/// the app hears of it (bounded for strangers), nothing else happens.
fn invalid_content(
    tx: &mut impl Txn,
    sender: &Sender<'_>,
    peer: Option<&UserAddress>,
    why: &str,
) -> Result<Outcome> {
    if sender.state == STRANGER && !sender.is_own_user() && !count_held(tx, sender)? {
        return Ok(Outcome::default());
    }
    records::push_event(
        tx,
        EventBuilder::about(peer).device(sender.device).kind(
            pb::client_event::Kind::DecryptFailed(format!("invalid content: {why}")),
        ),
    )?;
    Ok(Outcome {
        events: true,
        ..Outcome::default()
    })
}

/// True if a stranger's request can hold one more item.
fn has_room(tx: &impl Txn, sender: &Sender<'_>) -> Result<bool> {
    Ok(records::contact(tx, &sender.user)?.is_none_or(|c| c.held < MAX_HELD_PER_REQUEST))
}

/// Counts one more item held for a stranger's request; false when the
/// request is full (the item is dropped).
fn count_held(tx: &mut impl Txn, sender: &Sender<'_>) -> Result<bool> {
    let mut c = records::contact(tx, &sender.user)?.unwrap_or_default();
    if c.held >= MAX_HELD_PER_REQUEST {
        return Ok(false);
    }
    c.held += 1;
    records::put_contact(tx, &sender.user, &c)?;
    Ok(true)
}

/// Takes one of the items a user's request may hold; false if it is full.
fn take_held_slot(tx: &mut impl Txn, user: &[u8; 32]) -> Result<bool> {
    let mut c = records::contact(tx, user)?.unwrap_or_default();
    if c.held >= MAX_HELD_PER_REQUEST {
        return Ok(false);
    }
    c.held += 1;
    records::put_contact(tx, user, &c)?;
    Ok(true)
}

/// Applies decrypted content inside the decrypt's transaction. Anything
/// invalid becomes an event; only a local failure is an `Err` (which rolls
/// the whole envelope back for a later retry).
fn apply(tx: &mut impl Txn, sender: &Sender<'_>, plaintext: &[u8]) -> Result<Outcome> {
    apply_content(tx, sender, plaintext, false)
}

/// [`apply`]; `joined`: the plaintext is a whole joined from fragments (it
/// cannot be a fragment itself).
fn apply_content(
    tx: &mut impl Txn,
    sender: &Sender<'_>,
    plaintext: &[u8],
    joined: bool,
) -> Result<Outcome> {
    let mut contact = records::contact(tx, &sender.user)?.unwrap_or_default();
    let known_peer: Option<UserAddress> = if sender.is_own_user() {
        Some(sender.me.clone())
    } else {
        contact.address.parse().ok()
    };
    let Ok(content) = pb::Content::decode(plaintext) else {
        return invalid_content(tx, sender, known_peer.as_ref(), "undecodable");
    };
    // Only what is sent in pieces may be a whole joined from them.
    if joined
        && !matches!(
            content.body,
            Some(pb::content::Body::GroupUpdate(_) | pb::content::Body::GroupSync(_))
        )
    {
        return invalid_content(
            tx,
            sender,
            known_peer.as_ref(),
            "pieces joined into neither a group change nor a group sync",
        );
    }
    // Learn (or confirm) the sender's home relay for replies. A stranger's
    // relay is only recorded: nothing connects to it until the user accepts.
    let peer = if content.sender_relay.is_empty() || sender.is_own_user() {
        match known_peer {
            Some(p) => p,
            None => {
                return invalid_content(tx, sender, None, "no sender relay from an unknown user")
            }
        }
    } else {
        match content.sender_relay.parse::<RelayAddress>() {
            Ok(relay) => UserAddress {
                user: sender.user,
                relay,
            },
            Err(_) => return invalid_content(tx, sender, known_peer.as_ref(), "bad sender relay"),
        }
    };
    if !sender.is_own_user() && contact.address != peer.to_string() {
        contact.address = peer.to_string();
        records::put_contact(tx, &sender.user, &contact)?;
    }
    // The sender's delivery token: checked here, kept (below) only once the
    // body proved valid, for what we send that device.
    let token = match content.delivery_token.len() {
        0 => None,
        _ => match <[u8; 32]>::try_from(content.delivery_token.as_slice()) {
            Ok(t) => Some(t),
            Err(_) => return invalid_content(tx, sender, Some(&peer), "bad delivery token"),
        },
    };
    let event = |kind| {
        EventBuilder::about(Some(&peer))
            .device(sender.device)
            .kind(kind)
    };
    let mut out = Outcome::default();
    use pb::client_event::Kind as K;
    'body: {
        match content.body {
            Some(pb::content::Body::Message(m)) => {
                if sender.is_own_user() {
                    return invalid_content(
                        tx,
                        sender,
                        Some(&peer),
                        "message from this user's device",
                    );
                }
                if message_from_pb(&m).is_err() {
                    return invalid_content(tx, sender, Some(&peer), "invalid message");
                }
                // A full request stores nothing more, not even the message id.
                if sender.state != ACCEPTED && !has_room(tx, sender)? {
                    break 'body;
                }
                if !records::first_sight(tx, &sender.user, &m.id, sender.now_ms)? {
                    break 'body;
                }
                if sender.state == ACCEPTED {
                    // A delivered receipt to every device of the sender.
                    records::push_outbox(
                        tx,
                        &pb::OutboxItem {
                            recipient: peer.to_string(),
                            content: receipt_content(
                                sender.me,
                                pb::receipt::Kind::Delivered,
                                vec![m.id.clone()],
                            ),
                            ..Default::default()
                        },
                    )?;
                    out.outbox = true;
                    records::push_event(tx, event(K::Message(m)))?;
                    out.events = true;
                } else if count_held(tx, sender)? {
                    records::hold(tx, &sender.user, &m.id)?;
                    records::push_event(tx, event(K::MessageRequest(m)))?;
                    out.events = true;
                }
            }
            Some(pb::content::Body::Receipt(r)) => {
                let state = match pb::receipt::Kind::try_from(r.kind) {
                    Ok(pb::receipt::Kind::Delivered) => DeliveryState::Delivered,
                    Ok(pb::receipt::Kind::Read) => DeliveryState::Read,
                    Err(_) => {
                        return invalid_content(tx, sender, Some(&peer), "unknown receipt kind")
                    }
                };
                if r.message_ids.len() > MAX_RECEIPT_IDS
                    || r.message_ids.iter().any(|i| i.len() != 16)
                {
                    return invalid_content(tx, sender, Some(&peer), "invalid receipt");
                }
                // Only for messages that went to this very device.
                let mut matched = Vec::new();
                for id in &r.message_ids {
                    let (_, devices) = records::delivery(tx, id)?;
                    if devices.state(&sender.user, sender.device).is_none() {
                        continue;
                    }
                    if records::raise_delivery(
                        tx,
                        id,
                        &sender.user,
                        sender.device,
                        Some(state),
                        sender.now_ms,
                    )? {
                        records::push_event(
                            tx,
                            EventBuilder::about(Some(&peer))
                                .device(sender.device)
                                .message_id(id)
                                .delivery(&sender.user, sender.device, state),
                        )?;
                    }
                    matched.push(id.clone());
                }
                if !matched.is_empty() {
                    records::push_event(
                        tx,
                        event(K::Receipt(pb::Receipt {
                            kind: r.kind,
                            message_ids: matched,
                        })),
                    )?;
                    out.events = true;
                }
            }
            Some(pb::content::Body::Retry(r)) => {
                if sender.state != ACCEPTED {
                    break 'body;
                }
                // Only the device the envelope went to may ask for it again,
                // and only a few times.
                if let Some(mut entry) = records::sent(tx, &sender.user, &r.envelope_id)? {
                    if entry.recipient_user == sender.user.as_slice()
                        && entry.recipient_device == sender.device
                        && entry.retries < MAX_RESENDS_PER_ENVELOPE
                    {
                        entry.retries += 1;
                        if let Ok(id) = <[u8; 16]>::try_from(r.envelope_id.as_slice()) {
                            records::update_sent(tx, &sender.user, &id, &entry)?;
                        }
                        let mut c = records::contact(tx, &sender.user)?.unwrap_or_default();
                        let reset =
                            records::take_repair_token(&mut c, sender.device, sender.now_ms);
                        records::put_contact(tx, &sender.user, &c)?;
                        records::push_outbox(
                            tx,
                            &pb::OutboxItem {
                                recipient: entry.recipient.clone(),
                                content: entry.content.clone(),
                                only_devices: vec![sender.device],
                                reset_session: reset,
                                repair: true,
                                ..Default::default()
                            },
                        )?;
                        out.outbox = true;
                    }
                }
            }
            Some(pb::content::Body::SentSync(s)) => {
                if !sender.is_own_user() {
                    return invalid_content(tx, sender, Some(&peer), "sent sync from another user");
                }
                let Ok(recipient) = s.recipient.parse::<UserAddress>() else {
                    return invalid_content(tx, sender, Some(&peer), "sent sync recipient");
                };
                let Some(m) = &s.message else {
                    return invalid_content(tx, sender, Some(&peer), "sent sync without message");
                };
                if message_from_pb(m).is_err() {
                    return invalid_content(tx, sender, Some(&peer), "invalid message");
                }
                if records::first_sight(tx, &sender.user, &m.id, sender.now_ms)? {
                    // This user wrote to them from another device: a contact.
                    if recipient.user != sender.me.user
                        && records::contact(tx, &recipient.user)?.is_none_or(|c| c.state != BLOCKED)
                    {
                        accept(tx, sender.me, &recipient)?;
                        out.outbox = true;
                    }
                    records::push_event(tx, event(K::SentSync(s)))?;
                    out.events = true;
                }
            }
            Some(pb::content::Body::DeviceListChanged(c)) => {
                // Only the lists of users this device talks to matter; a
                // stranger's is fetched if the user ever accepts it.
                if sender.state != ACCEPTED {
                    break 'body;
                }
                let Ok(signed) = SignedDeviceList::decode(c.signed_list.as_slice()) else {
                    return invalid_content(tx, sender, Some(&peer), "undecodable device list");
                };
                if signed.version != c.version {
                    return invalid_content(
                        tx,
                        sender,
                        Some(&peer),
                        "device list version mismatch",
                    );
                }
                let list = match DeviceList::verify(&sender.user, &signed) {
                    Ok(l) => l,
                    Err(_) => {
                        return invalid_content(tx, sender, Some(&peer), "invalid device list")
                    }
                };
                match records::apply_list(tx, &peer, &list, sender.now_ms) {
                    Ok(applied) => {
                        out.events |= applied.events;
                        out.outbox |= applied.outbox;
                        out.revoked = applied.revoked;
                    }
                    Err(Error::DeviceListRejected(why)) => {
                        return invalid_content(tx, sender, Some(&peer), why)
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(pb::content::Body::DeliveryTokenUpdate(_)) => {}
            Some(pb::content::Body::GroupUpdate(u)) => {
                // A stranger's invitations count against its request (its
                // changes of a group this device is in do not).
                if sender.state != ACCEPTED
                    && !sender.is_own_user()
                    && group::is_invitation(tx, &u)?
                    && !count_held(tx, sender)?
                {
                    break 'body;
                }
                match group::on_update(tx, sender.me, &peer, sender.device, sender.state, &u) {
                    Ok(r) => {
                        out.events |= r.events;
                        out.outbox |= r.outbox;
                        out.rebase.extend(r.rebase);
                    }
                    Err(Error::GroupRejected(why)) => {
                        return invalid_content(tx, sender, Some(&peer), why)
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(pb::content::Body::SenderKeyRequest(r)) => {
                if group::on_key_request(tx, sender.me, &peer, sender.device, &r)? {
                    out.outbox = true;
                }
            }
            Some(pb::content::Body::GroupSync(g)) => {
                if !sender.is_own_user() {
                    return invalid_content(
                        tx,
                        sender,
                        Some(&peer),
                        "group sync from another user",
                    );
                }
                match group::on_sync(tx, sender.me, &g) {
                    Ok(r) => out.events |= r.events,
                    Err(Error::GroupRejected(why)) => {
                        return invalid_content(tx, sender, Some(&peer), why)
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(pb::content::Body::SenderKey(k)) => {
                // A stranger's key for a group this device is not a member
                // of counts against its request.
                if sender.state != ACCEPTED
                    && !sender.is_own_user()
                    && !group::is_member_group(tx, &k.group_id)?
                    && !count_held(tx, sender)?
                {
                    break 'body;
                }
                match group::on_sender_key(tx, &peer, sender.device, &k) {
                    Ok(()) => {}
                    Err(Error::GroupRejected(why)) => {
                        return invalid_content(tx, sender, Some(&peer), why)
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(pb::content::Body::Fragment(f)) => {
                // A piece of a larger content: kept until the whole is in,
                // which is then applied as one content from this device. A
                // transfer a stranger opens takes one of its held items.
                if joined {
                    return invalid_content(tx, sender, Some(&peer), "fragment in a fragment");
                }
                let stranger = !sender.is_own_user() && sender.state != ACCEPTED;
                if stranger
                    && fragments::opens(tx, &sender.user, sender.device, &f)?
                    && !count_held(tx, sender)?
                {
                    break 'body;
                }
                match fragments::join(tx, stranger, &sender.user, sender.device, &f, sender.now_ms)?
                {
                    fragments::Joined::Waiting => {}
                    fragments::Joined::Whole(whole) => {
                        let inner = apply_content(tx, sender, &whole, true)?;
                        out.events |= inner.events;
                        out.outbox |= inner.outbox;
                        out.revoked.extend(inner.revoked);
                        out.rebase.extend(inner.rebase);
                    }
                    fragments::Joined::Refused(why) => {
                        return invalid_content(tx, sender, Some(&peer), why)
                    }
                }
            }
            None => return invalid_content(tx, sender, Some(&peer), "no body"),
        }
    }
    // A stranger's token is not kept: nothing goes to it until the user
    // accepts, and its next content after that carries it again.
    if let Some(t) = token {
        if sender.is_own_user() || sender.state == ACCEPTED {
            records::put_delivery_token(tx, &sender.user, sender.device, &t)?;
        }
    }
    Ok(out)
}

/// One group envelope: verified and decrypted with the sender device's
/// chain, its effects and its processed mark in one commit. A failure is an
/// event (bounded like any other); no repair follows an unproven claim.
fn process_group<S: Store>(
    device: &mut Device<S>,
    me: &UserAddress,
    envelope_id: &[u8; 16],
    sealed_in: GroupId,
    g: &pb::GroupEnvelope,
    now_ms: u64,
) -> Result<Outcome> {
    let fail = |device: &mut Device<S>, peer: Option<&UserAddress>, d: u32, reason: &str| {
        finish_failure(
            device,
            envelope_id,
            now_ms,
            peer,
            d,
            reason,
            Authenticity::Claimed,
        )
    };
    let Ok(sender_user) = <[u8; 32]>::try_from(g.sender_user.as_slice()) else {
        return fail(device, None, 0, "malformed sender");
    };
    if sender_user == me.user && g.sender_device == device.device_id() {
        // This device's own message coming back (group messages go to every
        // member device, the sender's too): acknowledged with no event once
        // this device's chain confirms it sent it; anything else claiming
        // this device is a failure.
        let echo = device.store_mut().transaction(|tx| -> Result<bool> {
            let Some(own) = records::own_sender_key(tx, &sealed_in.0)? else {
                return Ok(false);
            };
            let chain = sotto_core::sender_key::SendingChain::from_record(&own.chain)?;
            if !chain.sent(&sealed_in.0, &g.message) {
                return Ok(false);
            }
            records::mark_processed(tx, envelope_id, now_ms)?;
            Ok(true)
        })?;
        if echo {
            return Ok(Outcome::default());
        }
        return fail(device, None, 0, "message claims to come from this device");
    }
    let own = sender_user == me.user;
    let mut requested = false;
    let result = device.store_mut().transaction(
        |tx| -> Result<Result<Outcome, (Option<UserAddress>, String)>> {
            let contact = records::contact(tx, &sender_user)?;
            if !own && contact.as_ref().is_some_and(|c| c.state == BLOCKED) {
                records::mark_processed(tx, envelope_id, now_ms)?;
                return Ok(Ok(Outcome::default()));
            }
            let (id, status, plaintext) =
                match group::decrypt(tx, &sealed_in, &sender_user, g.sender_device, &g.message) {
                    Ok(x) => x,
                    Err(e) if e.fault() == Fault::Local => return Err(e),
                    Err(e) => {
                        let peer = contact.and_then(|c| c.address.parse().ok());
                        // No key for that chain (the envelope that carried
                        // it was lost): a fellow member's device is asked
                        // for it again, as a repair (budgeted). A claim
                        // nobody proved costs that device at most a
                        // request (its budget bounds it).
                        if matches!(e, Error::GroupRejected("no sender key for this chain")) {
                            if let (Ok(header), Some(addr)) = (
                                sotto_core::sender_key::SenderKeyHeader::parse(&g.message),
                                group::member_address(tx, &sender_user)?,
                            ) {
                                if group::request_key(
                                    tx,
                                    me,
                                    &addr,
                                    g.sender_device,
                                    &header.chain_id,
                                    now_ms,
                                )? {
                                    requested = true;
                                }
                            }
                        }
                        return Ok(Err((peer, e.to_string())));
                    }
                };
            records::mark_processed(tx, envelope_id, now_ms)?;
            // The sender's address: this user's, or its contact record's
            // (its pairwise key made one), else as the group lists it (a
            // big group's state is decoded only then).
            let known = contact
                .as_ref()
                .and_then(|c| c.address.parse::<UserAddress>().ok())
                .filter(|a| a.user == sender_user);
            let peer = match (own, known) {
                (true, _) => me.clone(),
                (false, Some(a)) => a,
                (false, None) => match group::address_in(tx, &id, &sender_user)? {
                    Some(a) => a,
                    // The head named it, the state does not (a store put
                    // back from another time): a failure, not a jam.
                    None => return Ok(Err((None, "sender not in the group state".to_string()))),
                },
            };
            let mut out = Outcome::default();
            let content = pb::Content::decode(plaintext.as_slice()).ok();
            let Some(pb::content::Body::Message(m)) = content.and_then(|c| c.body) else {
                return Ok(Err((Some(peer), "invalid group content".to_string())));
            };
            if message_from_pb(&m).is_err() {
                return Ok(Err((Some(peer), "invalid group message".to_string())));
            }
            // In an invitation, a sender this user has not accepted fills
            // its request like any stranger (then nothing more is kept).
            let accepted = own || contact.as_ref().is_some_and(|c| c.state == ACCEPTED);
            if status != group::MEMBER && !accepted && !take_held_slot(tx, &sender_user)? {
                return Ok(Ok(out));
            }
            if !records::first_sight(tx, &sender_user, &m.id, now_ms)? {
                return Ok(Ok(out));
            }
            use pb::client_event::Kind as K;
            let kind = if own {
                K::Message(m.clone())
            } else if status == group::MEMBER {
                // Delivered, to every device of the sender.
                records::push_outbox(
                    tx,
                    &pb::OutboxItem {
                        recipient: peer.to_string(),
                        content: receipt_content(
                            me,
                            pb::receipt::Kind::Delivered,
                            vec![m.id.clone()],
                        ),
                        ..Default::default()
                    },
                )?;
                out.outbox = true;
                K::Message(m.clone())
            } else {
                K::MessageRequest(m.clone())
            };
            let e = EventBuilder::about(Some(&peer))
                .device(g.sender_device)
                .group(&id)
                .kind(kind);
            records::push_event(tx, e)?;
            out.events = true;
            Ok(Ok(out))
        },
    )?;
    match result {
        Ok(out) => Ok(out),
        Err((peer, reason)) => {
            let mut out = fail(device, peer.as_ref(), g.sender_device, &reason)?;
            out.outbox |= requested;
            Ok(out)
        }
    }
}

/// Makes `peer` an accepted contact; the messages held in its request get
/// their delivered receipts now.
pub(crate) fn accept(tx: &mut impl Txn, me: &UserAddress, peer: &UserAddress) -> Result<()> {
    let mut c = records::contact(tx, &peer.user)?.unwrap_or_default();
    if c.state == records::ACCEPTED && !c.address.is_empty() {
        return Ok(());
    }
    c.state = records::ACCEPTED;
    c.held = 0;
    if c.address.is_empty() {
        c.address = peer.to_string();
    }
    records::put_contact(tx, &peer.user, &c)?;
    let held = records::take_held(tx, &peer.user)?;
    if !held.is_empty() {
        records::push_outbox(
            tx,
            &pb::OutboxItem {
                recipient: c.address.clone(),
                content: receipt_content(me, pb::receipt::Kind::Delivered, held),
                ..Default::default()
            },
        )?;
    }
    Ok(())
}

/// Encoded `Content` of a receipt.
pub(crate) fn receipt_content(
    me: &UserAddress,
    kind: pb::receipt::Kind,
    ids: Vec<Vec<u8>>,
) -> Vec<u8> {
    pb::Content {
        sender_relay: me.relay.to_string(),
        delivery_token: Vec::new(),
        body: Some(pb::content::Body::Receipt(pb::Receipt {
            kind: kind as i32,
            message_ids: ids,
        })),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests;
