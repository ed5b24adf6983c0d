//! Sending: the outbox worker. Every outgoing message is first written to
//! the durable outbox (so sending works offline and survives crashes), then
//! this worker delivers each item to every current device of the recipient
//! (and a copy to this user's other devices), recording per-device progress
//! so a retry never sends to a device twice. Receivers drop re-sent copies by
//! message id, so a crash between "relay accepted" and "progress recorded"
//! shows nothing twice.
//!
//! Device lists are fetched from the recipient's relay, verified against the
//! recipient's account key and checked against the pinned list before every
//! item, so a device added or removed since the last send is never missed or
//! kept, and a relay replaying an old list is refused. A bundle is used only
//! if its identity is the one the list certifies for that device.
//!
//! Two lanes: ordinary items go strictly in order (a network failure stops
//! the pass, so later messages never overtake earlier ones); repair items
//! (retry requests and re-sends) never block them and are dropped after a
//! few attempts.

use sotto_core::Error as CoreError;
use std::sync::Arc;

use prost::Message as _;
use rand_core::OsRng;
use sotto_proto::client as pb;
use sotto_relay::RelayClient;

use super::Inner;
use crate::engine::address::UserAddress;
use crate::engine::devices::{DeviceEntry, DeviceList};
use crate::engine::envelope::sender_mac;
use crate::engine::records;
use crate::error::{Error, Fault, Result};
use sotto_core::device::DeviceAddress;
use sotto_core::prekeys::PrekeyBundle;
use sotto_core::session::MessageKind;
use sotto_core::store::Store;

/// Attempts before a queued item is given up (with a `SendFailed` event)
/// when the failure is the recipient's (no devices, bad list), not the network.
pub(crate) const MAX_PERMANENT_FAILURES: u32 = 3;
/// Attempts before a repair item is dropped, whatever the failure.
pub(crate) const MAX_REPAIR_ATTEMPTS: u32 = 5;

/// Longest one outbox item may take before its relay connections are
/// considered dead and replaced (a relay killed without closing its
/// connections is otherwise only noticed at the QUIC idle timeout).
pub(crate) const ITEM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// What one pass over the outbox achieved.
#[derive(Debug, Default)]
pub(crate) struct Pass {
    /// Items still waiting (a network problem): retry after a backoff.
    pub(crate) pending: bool,
    /// Events were queued for the app.
    pub(crate) events: bool,
}

/// Sends everything in the outbox once.
pub(crate) async fn drain<S: Store + Send + 'static>(inner: &Arc<Inner<S>>) -> Result<Pass> {
    let items = inner.with_device(|d| d.store_mut().transaction(|tx| records::outbox(tx)))?;
    let mut pass = Pass::default();
    // Relays whose queue is held: an ordinary item to one of them could not
    // go, so later ones to it wait (order per relay), while items to other
    // relays go on. An unreachable relay stalls only its own recipients.
    let mut held: std::collections::HashSet<super::RelayAddress> = Default::default();
    for (seq, item) in items {
        let relay = item.recipient.parse::<UserAddress>().ok().map(|a| a.relay);
        if !item.repair && relay.as_ref().is_some_and(|r| held.contains(r)) {
            pass.pending = true;
            continue;
        }
        let attempt = tokio::time::timeout(ITEM_TIMEOUT, send_item(inner, seq, item.clone()));
        let result = match attempt.await {
            Ok(r) => r,
            Err(_) => {
                // The recipient's relay stopped answering: drop that
                // connection only (the home one serves everything else).
                if let Some(r) = &relay {
                    inner.forget_relay(r).await;
                }
                Err(Error::Timeout)
            }
        };
        match result {
            Ok(()) => {}
            Err(e) if item.repair => {
                // Repairs never hold up the conversation: count, move on.
                tracing::debug!(error = %e, "repair item deferred");
                inner.with_device(|d| {
                    d.store_mut().transaction(|tx| {
                        let mut item = item.clone();
                        item.attempts += 1;
                        let keep = item.attempts < MAX_REPAIR_ATTEMPTS;
                        records::update_outbox(tx, seq, keep.then_some(&item))
                    })
                })?;
                pass.pending = true;
            }
            Err(e) if is_mailbox_full(&e) => {
                // One recipient device's mailbox (or its strangers' share)
                // is full: retried later, but it holds back nothing else
                // (a stranger can fill that share with 256 tiny envelopes).
                tracing::debug!(error = %e, "outbox item waits for room");
                pass.pending = true;
            }
            Err(e) if is_transient(&e) => {
                // Later items to the same relay must not overtake this one
                // (each conversation keeps the outbox's order).
                tracing::debug!(error = %e, "outbox item deferred");
                pass.pending = true;
                match relay {
                    Some(r) => {
                        held.insert(r);
                    }
                    None => break,
                }
            }
            Err(e) => {
                // The recipient's problem: count it, give up after a few.
                let reason = e.to_string();
                inner.with_device(|d| {
                    d.store_mut().transaction(|tx| {
                        let mut item = item.clone();
                        item.attempts += 1;
                        if item.attempts < MAX_PERMANENT_FAILURES {
                            return records::update_outbox(tx, seq, Some(&item));
                        }
                        records::update_outbox(tx, seq, None)?;
                        if !item.message_id.is_empty() {
                            records::push_event(
                                tx,
                                pb::ClientEvent {
                                    peer: item.recipient.clone(),
                                    kind: Some(pb::client_event::Kind::SendFailed(reason.clone())),
                                    message_id: item.message_id.clone(),
                                    ..Default::default()
                                },
                            )?;
                        }
                        Ok(())
                    })
                })?;
                pass.events = true;
                pass.pending = true;
            }
        }
    }
    Ok(pass)
}

/// A recipient mailbox with no room (for this sender) now.
fn is_mailbox_full(e: &Error) -> bool {
    matches!(e, Error::Relay(r) if r.remote_code() == Some(sotto_proto::relay::ErrorCode::QuotaExceeded))
}

/// Network trouble (retry later) as opposed to a refusal that will repeat.
fn is_transient(e: &Error) -> bool {
    matches!(e.fault(), Fault::Network | Fault::Local)
}

/// The verified device list of `user` from its relay (not yet pinned).
pub(crate) async fn fetch_devices(conn: &RelayClient, user: &UserAddress) -> Result<DeviceList> {
    let signed = conn
        .fetch_device_list(&user.user)
        .await?
        .ok_or(Error::UnknownUser)?;
    DeviceList::verify(&user.user, &signed)
}

/// Fetches `user`'s list, checks it against the pinned one (refusing a
/// rollback or an equivocation) and pins it; sessions of devices it removed
/// are deleted.
pub(crate) async fn fetch_and_pin<S: Store + Send + 'static>(
    inner: &Arc<Inner<S>>,
    conn: &Arc<RelayClient>,
    user: &UserAddress,
) -> Result<DeviceList> {
    let fetched = fetch_devices(conn, user).await;
    let list = inner.checked(&user.relay, conn, fetched).await?;
    inner.pin_list(user, &list)?;
    Ok(list)
}

async fn send_item<S: Store + Send + 'static>(
    inner: &Arc<Inner<S>>,
    seq: u64,
    mut item: pb::OutboxItem,
) -> Result<()> {
    let to: UserAddress = item.recipient.parse()?;
    // Nothing goes to a user this user blocked (items queued before the
    // block); our delivery token goes only to accepted contacts and to this
    // user's own devices (a repair to a stranger does not hand it out).
    let (blocked, token) = inner.with_device(|d| {
        d.store_mut().transaction(|tx| {
            let state = records::contact(tx, &to.user)?.map(|c| c.state);
            let own = to.user == inner.me.user;
            let token = if own || state == Some(records::ACCEPTED) {
                Some(records::own_delivery_token(tx, false, &mut OsRng)?)
            } else {
                None
            };
            Ok((!own && state == Some(records::BLOCKED), token))
        })
    })?;
    if blocked {
        return inner.with_device(|d| {
            d.store_mut()
                .transaction(|tx| records::update_outbox(tx, seq, None))
        });
    }
    // Every content carries our home relay, so the peer can answer.
    let mut content =
        pb::Content::decode(item.content.as_slice()).map_err(|_| Error::corrupt("app"))?;
    if content.sender_relay.is_empty() {
        content.sender_relay = inner.me.relay.to_string();
    }
    content.delivery_token = token.as_ref().map(|t| t.to_vec()).unwrap_or_default();
    let content_bytes = content.encode_to_vec();

    // The recipient's devices, checked against the pinned list.
    let conn = inner.relay(&to.relay).await?;
    let list = fetch_and_pin(inner, &conn, &to).await?;
    let mut targets: Vec<Target> = Vec::new();
    let me_user = inner.me.user;
    for d in &list.devices {
        if to.user == me_user && d.device_id == inner.device_id {
            continue; // never to ourselves
        }
        if !item.only_devices.is_empty() && !item.only_devices.contains(&d.device_id) {
            continue;
        }
        if item.done_devices.contains(&d.device_id) {
            continue;
        }
        targets.push(Target {
            user: to.clone(),
            device: d.clone(),
            bytes: content_bytes.clone(),
            own: false,
        });
    }

    // Copies for this user's other devices (what I sent, from where).
    if item.to_own_devices && to.user != me_user {
        if let Some(pb::content::Body::Message(m)) = &content.body {
            let own_token = inner.with_device(|d| {
                d.store_mut()
                    .transaction(|tx| records::own_delivery_token(tx, false, &mut OsRng))
            })?;
            let sync = pb::Content {
                sender_relay: inner.me.relay.to_string(),
                body: Some(pb::content::Body::SentSync(pb::SentSync {
                    recipient: to.to_string(),
                    message: Some(m.clone()),
                })),
                delivery_token: own_token.to_vec(),
            }
            .encode_to_vec();
            let own_conn = inner.relay(&inner.me.relay).await?;
            let own = fetch_and_pin(inner, &own_conn, &inner.me).await?;
            for d in &own.devices {
                if d.device_id != inner.device_id && !item.done_own_devices.contains(&d.device_id) {
                    targets.push(Target {
                        user: inner.me.clone(),
                        device: d.clone(),
                        bytes: sync.clone(),
                        own: true,
                    });
                }
            }
        }
    }
    if targets.is_empty() && item.done_devices.is_empty() && to.user != me_user {
        if !item.only_devices.is_empty() {
            // The device asked for is gone: nothing left to do.
            return inner.with_device(|d| {
                d.store_mut()
                    .transaction(|tx| records::update_outbox(tx, seq, None))
            });
        }
        return Err(Error::UnknownUser);
    }

    // The devices a message goes to are recorded before it leaves, so a
    // receipt that overtakes the relay's "accepted" still counts (receipts
    // only count for devices the message was sent to).
    if !item.message_id.is_empty() {
        let now = super::now_ms();
        inner.with_device(|d| {
            d.store_mut().transaction(|tx| {
                for t in targets.iter().filter(|t| !t.own) {
                    let (user, id) = (&t.user.user, t.device.device_id);
                    records::raise_delivery(tx, &item.message_id, user, id, 0, now)?;
                }
                Ok(())
            })
        })?;
    }
    // A device whose mailbox is full is skipped for now (the others go on)
    // and the item stays queued for it.
    let mut full: Option<Error> = None;
    for t in targets {
        let (user, device_id) = (&t.user, t.device.device_id);
        let conn = inner.relay(&user.relay).await?;
        let addr = DeviceAddress::new(user.user.to_vec(), device_id);
        let has_session = inner.with_device(|d| Ok(d.has_session(&addr)?))?;
        // A repair never sets up a session on its own: it answers a claim
        // nobody authenticated, unless it is a re-send the retry asked for.
        if item.repair && !has_session && !item.reset_session {
            continue;
        }
        if item.reset_session || !has_session {
            let fetched = conn.fetch_bundle(&t.device.mailbox).await;
            let fetched = inner.checked(&user.relay, &conn, fetched).await?;
            let bundle = PrekeyBundle::assemble(
                &fetched.signed_bundle,
                fetched.one_time_ec.as_ref().map(|(_, b)| b.as_slice()),
                fetched.one_time_kem.as_ref().map(|(_, b)| b.as_slice()),
            )?;
            // The bundle must be the device the account certified.
            if bundle.device_id() != device_id || !bundle.identity().ct_eq(&t.device.identity) {
                return Err(CoreError::BadSignature {
                    what: "bundle does not match the device list",
                }
                .into());
            }
            let reset = item.reset_session && has_session;
            // One reset per repair: the flag is cleared in the commit that
            // follows the new session, so a retry of this item does not
            // reset (and spend the peer's prekeys) again.
            item.reset_session = false;
            let progress = item.clone();
            inner.with_device(|d| {
                d.process_bundle(&addr, &bundle, sotto_core::device::unix_now(), &mut OsRng)?;
                d.store_mut().transaction(|tx| {
                    records::update_outbox(tx, seq, Some(&progress))?;
                    if reset {
                        records::push_event(
                            tx,
                            pb::ClientEvent {
                                peer: user.to_string(),
                                peer_device: device_id,
                                kind: Some(pb::client_event::Kind::SessionReset(true)),
                                ..Default::default()
                            },
                        )?;
                    }
                    Ok(())
                })
            })?;
        }
        let message = inner.with_device(|d| {
            // The session must belong to the identity the list certifies.
            if !d
                .session_identity(&addr)?
                .is_some_and(|id| id.ct_eq(&t.device.identity))
            {
                return Err(CoreError::IdentityChanged {
                    new_identity: Box::new(t.device.identity),
                }
                .into());
            }
            Ok(d.encrypt(&addr, &t.bytes, &mut OsRng)?)
        })?;
        let mac_key = inner.sender_mac_key(&t.device.identity)?;
        let mac = sender_mac(&mac_key, &me_user, inner.device_id, &message.bytes);
        let envelope = pb::Envelope {
            version: 1,
            body: Some(pb::envelope::Body::Sealed(pb::Sealed {
                sender_user: me_user.to_vec(),
                sender_device: inner.device_id,
                sender_certificate: (message.kind == MessageKind::PreKey)
                    .then(|| inner.certificate.to_pb()),
                message: message.bytes,
                sender_mac: mac.to_vec(),
            })),
        }
        .encode_to_vec();
        let token = inner.with_device(|d| {
            d.store_mut()
                .transaction(|tx| records::delivery_token(tx, &user.user, device_id))
        })?;
        let (sent, stale) = send_with_token(&conn, &t.device, envelope, token.as_deref()).await;
        if stale {
            if let Some(refused) = &token {
                inner.with_device(|d| {
                    d.store_mut().transaction(|tx| {
                        records::delete_delivery_token_if(tx, &user.user, device_id, refused)
                    })
                })?;
            }
        }
        let envelope_id = match inner.checked(&user.relay, &conn, sent).await {
            Err(e) if is_mailbox_full(&e) => {
                full = Some(e);
                continue;
            }
            other => other?,
        };
        // Progress, sent log and delivery state in one commit.
        if t.own {
            item.done_own_devices.push(device_id);
        } else {
            item.done_devices.push(device_id);
        }
        item.reset_session = false;
        let message_id = item.message_id.clone();
        let progress = item.clone();
        let now = super::now_ms();
        inner.with_device(|d| {
            d.store_mut().transaction(|tx| {
                records::update_outbox(tx, seq, Some(&progress))?;
                records::log_sent(
                    tx,
                    &envelope_id.0,
                    &pb::SentLogEntry {
                        recipient_user: user.user.to_vec(),
                        recipient_device: device_id,
                        recipient: user.to_string(),
                        content: t.bytes.clone(),
                        at_ms: now,
                        retries: 0,
                    },
                    now,
                )?;
                if !message_id.is_empty()
                    && !t.own
                    && records::raise_delivery(tx, &message_id, &user.user, device_id, 1, now)?
                {
                    records::push_event(
                        tx,
                        pb::ClientEvent {
                            peer: user.to_string(),
                            peer_device: device_id,
                            kind: Some(pb::client_event::Kind::Delivery(pb::DeviceDelivery {
                                user: user.user.to_vec(),
                                device_id,
                                state: 1,
                            })),
                            message_id: message_id.clone(),
                            ..Default::default()
                        },
                    )?;
                }
                Ok(())
            })
        })?;
        inner.events_ready();
    }
    if let Some(e) = full {
        return Err(e);
    }
    inner.with_device(|d| {
        d.store_mut()
            .transaction(|tx| records::update_outbox(tx, seq, None))
    })
}

/// Submits an envelope with the delivery token the device gave us, if any.
/// A token the device has since replaced is refused: the envelope goes again
/// without one (in the share strangers get) and the second value says to
/// forget the token until the device's next message brings the new one.
async fn send_with_token(
    conn: &RelayClient,
    device: &DeviceEntry,
    envelope: Vec<u8>,
    token: Option<&[u8; 32]>,
) -> (
    std::result::Result<sotto_relay::EnvelopeId, sotto_relay::RelayError>,
    bool,
) {
    use sotto_relay::wire::ErrorCode;
    let Some(token) = token else {
        return (conn.send(&device.mailbox, envelope).await, false);
    };
    match conn
        .send_with_token(&device.mailbox, envelope.clone(), Some(token))
        .await
    {
        Err(e) if e.remote_code() == Some(ErrorCode::BadDeliveryToken) => {
            (conn.send(&device.mailbox, envelope).await, true)
        }
        other => (other, false),
    }
}

/// One device an item goes to.
struct Target {
    user: UserAddress,
    device: DeviceEntry,
    bytes: Vec<u8>,
    own: bool,
}
