//! The client's durable rows, kept in the device store's [`Table::App`] so
//! they commit in the same transaction as the ratchet state they depend on
//! (a decrypt, its de-duplication mark and its event are one commit).
//!
//! Key prefixes (all values are `sotto.client.v1` protobuf unless noted):
//! `cfg` config (written once); `ctr` counters; `ob/`+seq outbox; `ev/`+seq events for the app;
//! `in/`+envelope id processed envelopes (value: u64be ms) with the time
//! index `int/`+u64be(ms)+envelope id;
//! `mid/`+user+id seen message ids (value: u64be ms) with the time index
//! `mit/`+u64be(ms)+user+id; `sl/`+envelope id sent log; `ds/`+message id
//! delivery state with the time index `dst/`+u64be(ms)+message id;
//! `rq/`+user+id messages held in a message request; `ct/`+user contacts;
//! `dto` this device's delivery token (raw 32 bytes), `dta` the one last
//! announced (raw); `dt/`+user+u32be(device)
//! a peer device's delivery token (raw 32 bytes, deleted with the device);
//! groups: `gr/`+group id the group record, `gh/`+group id its head and
//! `gs/`+group id its status (one byte; both written with it), `gk/`+group
//! id this device's
//! sending chain, `gx/`+group id+user+u32be(device) the chains a member
//! device handed us (at most 2), `gi/`+user+u32be(device)+chain id the
//! group that chain belongs to (raw 32 bytes), `gp` distributions waiting
//! for their group or member (at most 64); `fg` the fan-out generation
//! (u64be, raised by every write that changes who a group message goes to);
//! `fr/` pieces of contents being joined ([`super::fragments`]); `ph`
//! (one byte, 1) this user hides its presence from every contact.
//! Every row a peer can make us write is bounded: by time (pruned after
//! [`super::RECORD_RETENTION_MS`]) or by count (requests).

use sotto_core::Error as CoreError;
use sotto_proto::client as pb;

use super::devices::DeviceList;
use super::events::{DeliveryState, EventBuilder};
use super::packed::{Deliveries, UserSet};
use crate::error::{Error, Result};
use sotto_core::store::{Table, Txn};

pub(crate) const CONFIG: &[u8] = b"cfg";
const COUNTERS: &[u8] = b"ctr";
const OUTBOX: &[u8] = b"ob/";
const EVENTS: &[u8] = b"ev/";
const PROCESSED: &[u8] = b"in/";
const PROCESSED_INDEX: &[u8] = b"int/";
const SEEN_MESSAGE: &[u8] = b"mid/";
const SEEN_INDEX: &[u8] = b"mit/";
const SENT_LOG: &[u8] = b"sl/";
const SENT_INDEX: &[u8] = b"slt/";
const DELIVERY: &[u8] = b"ds/";
const DELIVERY_INDEX: &[u8] = b"dst/";
const HELD: &[u8] = b"rq/";
const CONTACT: &[u8] = b"ct/";
const OWN_DELIVERY_TOKEN: &[u8] = b"dto";
const ANNOUNCED_DELIVERY_TOKEN: &[u8] = b"dta";
const DELIVERY_TOKEN: &[u8] = b"dt/";
const GROUP: &[u8] = b"gr/";
const GROUP_HEAD: &[u8] = b"gh/";
const GROUP_STATUS: &[u8] = b"gs/";
const FANOUT_GENERATION: &[u8] = b"fg";
const OWN_SENDER_KEY: &[u8] = b"gk/";
const SENDER_KEYS: &[u8] = b"gx/";
const CHAIN_INDEX: &[u8] = b"gi/";
const PENDING_SENDER_KEYS: &[u8] = b"gp";
const PRESENCE_HIDDEN: &[u8] = b"ph";
/// Distributions kept while their group or member is not known yet.
pub(crate) const MAX_PENDING_SENDER_KEYS: usize = 64;

/// What the local user decided about another user ([`pb::ContactRecord::state`]).
pub(crate) const STRANGER: u32 = 0;
pub(crate) const ACCEPTED: u32 = 1;
pub(crate) const BLOCKED: u32 = 2;

fn key(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// Reads and decodes one protobuf row.
pub(crate) fn get<M: prost::Message + Default>(tx: &impl Txn, k: &[u8]) -> Result<Option<M>> {
    match tx.get(Table::App, k)? {
        None => Ok(None),
        Some(v) => M::decode(v.as_slice())
            .map(Some)
            .map_err(|_| Error::corrupt("app")),
    }
}

/// Encodes and writes one protobuf row.
pub(crate) fn put<M: prost::Message>(tx: &mut impl Txn, k: &[u8], m: &M) -> Result<()> {
    Ok(tx.put(Table::App, k, &m.encode_to_vec())?)
}

/// The client's counters (absent: all zero).
pub(crate) fn counters(tx: &impl Txn) -> Result<pb::ClientCounters> {
    Ok(get(tx, COUNTERS)?.unwrap_or_default())
}

/// Writes the client's counters.
pub(crate) fn put_counters(tx: &mut impl Txn, c: &pb::ClientCounters) -> Result<()> {
    put(tx, COUNTERS, c)
}

/// Allocates the next sequence number (outbox and events share it).
pub(crate) fn next_seq(tx: &mut impl Txn) -> Result<u64> {
    let mut c = counters(tx)?;
    let seq = c.next_seq.max(1);
    c.next_seq = seq
        .checked_add(1)
        .ok_or(CoreError::CorruptRecord { table: "app" })?;
    put_counters(tx, &c)?;
    Ok(seq)
}

/// Queues an outgoing item; returns its sequence number. A control content
/// too large for one envelope goes as [`super::fragments`], an item per
/// piece (items to one relay go in order); the last one's number is
/// returned.
pub(crate) fn push_outbox(tx: &mut impl Txn, item: &pb::OutboxItem) -> Result<u64> {
    // (A repair re-sends a content exactly as it went, a piece included.)
    if item.content.len() > super::fragments::FRAGMENT_BYTES
        && item.message_id.is_empty()
        && item.group_id.is_empty()
        && !item.repair
    {
        let mut seq = 0;
        let mut base = item.clone();
        let whole = std::mem::take(&mut base.content);
        for piece in super::fragments::split(&whole)? {
            seq = next_seq(tx)?;
            let part = pb::OutboxItem {
                content: piece,
                ..base.clone()
            };
            put(tx, &key(OUTBOX, &[&seq.to_be_bytes()]), &part)?;
        }
        return Ok(seq);
    }
    let seq = next_seq(tx)?;
    put(tx, &key(OUTBOX, &[&seq.to_be_bytes()]), item)?;
    Ok(seq)
}

/// Queues a repair item: `body` (with `sender_relay`) to `peer`'s device
/// `device` only, over a fresh session if `reset`.
pub(crate) fn push_repair(
    tx: &mut impl Txn,
    peer: &super::address::UserAddress,
    device: u32,
    sender_relay: String,
    body: pb::content::Body,
    reset: bool,
) -> Result<u64> {
    use prost::Message as _;
    push_outbox(
        tx,
        &pb::OutboxItem {
            recipient: peer.to_string(),
            content: pb::Content {
                sender_relay,
                delivery_token: Vec::new(),
                body: Some(body),
            }
            .encode_to_vec(),
            only_devices: vec![device],
            reset_session: reset,
            repair: true,
            ..Default::default()
        },
    )
}

/// The queued outgoing items, oldest first.
pub(crate) fn outbox(tx: &impl Txn) -> Result<Vec<(u64, pb::OutboxItem)>> {
    let mut out = Vec::new();
    for k in tx.keys_with_prefix(Table::App, OUTBOX)? {
        let seq = seq_of(&k[OUTBOX.len()..])?;
        if let Some(item) = get(tx, &k)? {
            out.push((seq, item));
        }
    }
    Ok(out)
}

/// Queued repair items addressed to `recipient`'s device `device_id`.
pub(crate) fn pending_repairs(tx: &impl Txn, recipient: &str, device_id: u32) -> Result<usize> {
    Ok(outbox(tx)?
        .iter()
        .filter(|(_, i)| i.repair && i.recipient == recipient && i.only_devices == [device_id])
        .count())
}

/// Rewrites (progress) or removes (`None`: done) an outbox item.
pub(crate) fn update_outbox(
    tx: &mut impl Txn,
    seq: u64,
    item: Option<&pb::OutboxItem>,
) -> Result<()> {
    let k = key(OUTBOX, &[&seq.to_be_bytes()]);
    match item {
        Some(i) => put(tx, &k, i),
        None => Ok(tx.delete(Table::App, &k)?),
    }
}

/// Appends an event for the app.
pub(crate) fn push_event(tx: &mut impl Txn, mut event: pb::ClientEvent) -> Result<u64> {
    let seq = next_seq(tx)?;
    event.seq = seq;
    put(tx, &key(EVENTS, &[&seq.to_be_bytes()]), &event)?;
    Ok(seq)
}

/// One stored event: its sequence number and either the record or why it
/// cannot be read (a damaged row never stalls the queue).
pub(crate) type StoredEvent = (u64, Result<pb::ClientEvent>);

/// The oldest events not yet acknowledged by the app (at most `limit`).
pub(crate) fn events(tx: &impl Txn, limit: usize) -> Result<Vec<StoredEvent>> {
    let mut out = Vec::new();
    for k in tx.first_keys_with_prefix(Table::App, EVENTS, limit)? {
        let seq = seq_of(&k[EVENTS.len()..])?;
        match tx.get(Table::App, &k) {
            Ok(Some(v)) => out.push((
                seq,
                <pb::ClientEvent as prost::Message>::decode(v.as_slice())
                    .map_err(|_| Error::corrupt("app")),
            )),
            Ok(None) => {}
            Err(e @ CoreError::CorruptRecord { .. }) => out.push((seq, Err(e.into()))),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Removes an event the app has taken.
pub(crate) fn remove_event(tx: &mut impl Txn, seq: u64) -> Result<()> {
    Ok(tx.delete(Table::App, &key(EVENTS, &[&seq.to_be_bytes()]))?)
}

/// Marks a relay envelope as processed (its effects are committed), with a
/// time index by this device's clock (the relay chooses the id's time).
pub(crate) fn mark_processed(tx: &mut impl Txn, envelope: &[u8; 16], now_ms: u64) -> Result<()> {
    tx.put(
        Table::App,
        &key(PROCESSED, &[envelope]),
        &now_ms.to_be_bytes(),
    )?;
    Ok(tx.put(
        Table::App,
        &key(PROCESSED_INDEX, &[&now_ms.to_be_bytes(), envelope]),
        &[],
    )?)
}

/// True if the envelope's effects were already committed (a redelivery).
pub(crate) fn is_processed(tx: &impl Txn, envelope: &[u8; 16]) -> Result<bool> {
    Ok(tx.get(Table::App, &key(PROCESSED, &[envelope]))?.is_some())
}

/// Records a message id from `user`; false if it was already seen (a
/// re-sent copy of a message the app already has).
pub(crate) fn first_sight(tx: &mut impl Txn, user: &[u8], id: &[u8], now_ms: u64) -> Result<bool> {
    let k = key(SEEN_MESSAGE, &[user, id]);
    if tx.get(Table::App, &k)?.is_some() {
        return Ok(false);
    }
    tx.put(Table::App, &k, &now_ms.to_be_bytes())?;
    tx.put(
        Table::App,
        &key(SEEN_INDEX, &[&now_ms.to_be_bytes(), user, id]),
        &[],
    )?;
    Ok(true)
}

/// Keeps what an envelope carried so a retry request can re-send it. Keyed
/// by recipient user and envelope id (ids come from different relays), with
/// a time index by this device's clock.
pub(crate) fn log_sent(
    tx: &mut impl Txn,
    envelope: &[u8; 16],
    e: &pb::SentLogEntry,
    now_ms: u64,
) -> Result<()> {
    put(tx, &key(SENT_LOG, &[&e.recipient_user, envelope]), e)?;
    Ok(tx.put(
        Table::App,
        &key(
            SENT_INDEX,
            &[&now_ms.to_be_bytes(), &e.recipient_user, envelope],
        ),
        &[],
    )?)
}

/// Rewrites a sent-log entry (its retry count).
pub(crate) fn update_sent(
    tx: &mut impl Txn,
    user: &[u8],
    envelope: &[u8; 16],
    e: &pb::SentLogEntry,
) -> Result<()> {
    put(tx, &key(SENT_LOG, &[user, envelope]), e)
}

/// The content of an envelope sent to `user`, if still in the log.
pub(crate) fn sent(
    tx: &impl Txn,
    user: &[u8],
    envelope: &[u8],
) -> Result<Option<pb::SentLogEntry>> {
    get(tx, &key(SENT_LOG, &[user, envelope]))
}

/// Deletes every row kept for a limited time that is older than
/// `cutoff_ms` by this device's clock: processed marks, sent-log entries,
/// seen message ids and delivery states, each through its time index.
pub(crate) fn prune(tx: &mut impl Txn, cutoff_ms: u64) -> Result<()> {
    super::fragments::prune(tx, cutoff_ms)?;
    for (index, main) in [
        (PROCESSED_INDEX, PROCESSED),
        (SENT_INDEX, SENT_LOG),
        (SEEN_INDEX, SEEN_MESSAGE),
        (DELIVERY_INDEX, DELIVERY),
    ] {
        for k in tx.keys_with_prefix(Table::App, index)? {
            let rest = &k[index.len()..];
            let Some((at, suffix)) = rest.split_first_chunk::<8>() else {
                tx.delete(Table::App, &k)?;
                continue;
            };
            if u64::from_be_bytes(*at) >= cutoff_ms {
                break;
            }
            tx.delete(Table::App, &key(main, &[suffix]))?;
            tx.delete(Table::App, &k)?;
        }
    }
    Ok(())
}

/// Delivery state of a message this device sent.
pub(crate) fn delivery(
    tx: &impl Txn,
    message_id: &[u8],
) -> Result<(pb::DeliveryRecord, Deliveries)> {
    let mut rec: pb::DeliveryRecord = get(tx, &key(DELIVERY, &[message_id]))?.unwrap_or_default();
    let devices = Deliveries::from_bytes(std::mem::take(&mut rec.devices))?;
    Ok((rec, devices))
}

/// Raises one device's delivery state (never lowers it); true if it changed.
/// Only the sender's own steps (0 "being sent", 1 `Sent`) create an entry:
/// a receipt (2, 3) from a device the message never went to changes
/// nothing.
pub(crate) fn raise_delivery(
    tx: &mut impl Txn,
    message_id: &[u8],
    user: &[u8],
    device_id: u32,
    state: Option<DeliveryState>,
    now_ms: u64,
) -> Result<bool> {
    Ok(!raise_delivery_many(tx, message_id, &[(user, device_id)], state, now_ms)?.is_empty())
}

/// [`raise_delivery`] for many devices of one message: the record is read
/// and written once (a group message has a device per member). Returns the
/// indexes into `devices` whose state changed.
pub(crate) fn raise_delivery_many(
    tx: &mut impl Txn,
    message_id: &[u8],
    devices: &[(&[u8], u32)],
    state: Option<DeliveryState>,
    now_ms: u64,
) -> Result<Vec<usize>> {
    let state = DeliveryState::stored(state);
    let (mut rec, mut entries) = delivery(tx, message_id)?;
    let byte = u8::try_from(state).map_err(|_| Error::invalid_argument("delivery state"))?;
    let changed = entries.raise(devices, byte, state <= 1);
    if !changed.is_empty() {
        rec.devices = entries.into_bytes();
        if rec.at_ms == 0 {
            rec.at_ms = now_ms;
            tx.put(
                Table::App,
                &key(DELIVERY_INDEX, &[&now_ms.to_be_bytes(), message_id]),
                &[],
            )?;
        }
        put(tx, &key(DELIVERY, &[message_id]), &rec)?;
    }
    Ok(changed)
}

/// A contact's record.
pub(crate) fn contact(tx: &impl Txn, user: &[u8]) -> Result<Option<pb::ContactRecord>> {
    get(tx, &key(CONTACT, &[user]))
}

/// Writes a contact's record (and raises the fan-out generation if what
/// decides where a message goes changed: its address, state or devices).
pub(crate) fn put_contact(tx: &mut impl Txn, user: &[u8], c: &pb::ContactRecord) -> Result<()> {
    let same = contact(tx, user)?.is_some_and(|old| {
        old.address == c.address
            && old.state == c.state
            && old.device_list_hash == c.device_list_hash
            && old.devices == c.devices
    });
    if !same {
        bump_fanout(tx)?;
    }
    put(tx, &key(CONTACT, &[user]), c)
}

/// Deletes a contact's record.
pub(crate) fn delete_contact(tx: &mut impl Txn, user: &[u8]) -> Result<()> {
    bump_fanout(tx)?;
    Ok(tx.delete(Table::App, &key(CONTACT, &[user]))?)
}

/// The fan-out generation: raised in the same commit as every write that
/// changes who a group message goes to or with which token (a contact's
/// devices or state, a delivery token, a group, a sending chain's holders),
/// so that a sender can keep a group's recipients while it has not moved.
pub(crate) fn fanout_generation(tx: &impl Txn) -> Result<u64> {
    match tx.get(Table::App, FANOUT_GENERATION)? {
        None => Ok(0),
        Some(v) => <[u8; 8]>::try_from(v.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| Error::corrupt("app")),
    }
}

/// Raises the fan-out generation.
pub(crate) fn bump_fanout(tx: &mut impl Txn) -> Result<()> {
    let next = fanout_generation(tx)?.wrapping_add(1);
    Ok(tx.put(Table::App, FANOUT_GENERATION, &next.to_be_bytes())?)
}

/// Every contact record, with its user id.
pub(crate) fn contacts(tx: &impl Txn) -> Result<Vec<([u8; 32], pb::ContactRecord)>> {
    let mut out = Vec::new();
    for k in tx.keys_with_prefix(Table::App, CONTACT)? {
        let Ok(user) = <[u8; 32]>::try_from(&k[CONTACT.len()..]) else {
            continue;
        };
        if let Some(c) = get(tx, &k)? {
            out.push((user, c));
        }
    }
    Ok(out)
}

/// How many contact records are in `state` (e.g. pending requests).
pub(crate) fn count_state(tx: &impl Txn, state: u32) -> Result<usize> {
    Ok(contacts(tx)?
        .iter()
        .filter(|(_, c)| c.state == state)
        .count())
}

/// The device list pinned in a contact record (the highest version seen).
pub(crate) fn pinned_list(c: &pb::ContactRecord) -> Result<Option<DeviceList>> {
    if c.device_list_version == 0 {
        return Ok(None);
    }
    DeviceList::from_body(
        c.device_list_version,
        &pb::DeviceListBody {
            devices: c.devices.clone(),
            next_device_id: c.next_device_id,
        },
    )
    .map(Some)
    .map_err(|_| Error::corrupt("app"))
}

/// True if the pinned list of `c` names `device_id` with exactly this
/// identity: compared as stored bytes (in constant time), without decoding
/// the list's keys (the outbox asks it for every target).
pub(crate) fn lists_identity(c: &pb::ContactRecord, device_id: u32, identity: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    c.device_list_version != 0
        && c.devices.iter().any(|d| {
            d.device_id == device_id
                && d.identity_key.len() == identity.len()
                && bool::from(d.identity_key.ct_eq(identity))
        })
}

/// Pins `list` in a contact record.
pub(crate) fn set_pinned(c: &mut pb::ContactRecord, list: &DeviceList, now_ms: u64) {
    c.device_list_version = list.version;
    c.devices = list.entries();
    c.next_device_id = list.next_device_id;
    c.device_list_hash = list.hash().to_vec();
    c.list_checked_ms = now_ms;
}

/// What pinning a newly seen list did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// `NewDevice` / `DeviceRemoved` events were queued.
    pub(crate) events: bool,
    /// Devices the list removed (delete their sessions).
    pub(crate) revoked: Vec<sotto_core::device::DeviceAddress>,
    /// Outbox items were queued (groups for a new device of this user).
    pub(crate) outbox: bool,
}

/// Pins a verified list of `user` if it is newer than the pinned one (see
/// [`DeviceList::against`]; a refused list is an `Err` and changes nothing)
/// and turns added and removed devices into events, for contacts and for
/// this user's own list alike (a device linked to one's own account is worth
/// knowing about).
pub(crate) fn apply_list(
    tx: &mut impl Txn,
    user: &super::address::UserAddress,
    list: &DeviceList,
    now_ms: u64,
) -> Result<Applied> {
    let mut c = contact(tx, &user.user)?.unwrap_or_default();
    let pinned = pinned_list(&c)?;
    let change = list.against(pinned.as_ref())?;
    let mut out = Applied::default();
    if change.newer && !change.added.is_empty() && is_own_user(tx, &user.user)? {
        // A device joined this user: it gets the groups this one is in.
        out.outbox = super::group::sync_to_own_devices(tx, user, &change.added)?;
    }
    if change.newer {
        let event = |kind, device_id| EventBuilder::about(Some(user)).device(device_id).kind(kind);
        use pb::client_event::Kind as K;
        for id in &change.added {
            push_event(tx, event(K::NewDevice(*id), *id))?;
            out.events = true;
        }
        for id in &change.removed {
            delete_delivery_token(tx, &user.user, *id)?;
            super::fragments::forget_device(tx, &user.user, *id)?;
            push_event(tx, event(K::DeviceRemoved(*id), *id))?;
            out.events = true;
            out.revoked.push(sotto_core::device::DeviceAddress::new(
                user.user.to_vec(),
                *id,
            ));
        }
        set_pinned(&mut c, list, now_ms);
    } else {
        c.list_checked_ms = now_ms;
    }
    if c.address.is_empty() {
        c.address = user.to_string();
    }
    put_contact(tx, &user.user, &c)?;
    Ok(out)
}

/// True if `user` is this device's own user.
fn is_own_user(tx: &impl Txn, user: &[u8; 32]) -> Result<bool> {
    Ok(get::<pb::ClientConfig>(tx, CONFIG)?.is_some_and(|c| c.account_key == user.as_slice()))
}

/// This device's delivery token: handed to contacts inside the end-to-end
/// channel, its verifier registered with the home relay, so their envelopes
/// are not counted in the small share of the mailbox strangers get. Created
/// on first use; `rotate` replaces it (after blocking someone).
pub(crate) fn own_delivery_token(
    tx: &mut impl Txn,
    rotate: bool,
    rng: &mut impl rand_core::CryptoRngCore,
) -> Result<zeroize::Zeroizing<[u8; 32]>> {
    if !rotate {
        if let Some(v) = tx.get(Table::App, OWN_DELIVERY_TOKEN)? {
            let t = <[u8; 32]>::try_from(v.as_slice()).map_err(|_| Error::corrupt("app"))?;
            return Ok(zeroize::Zeroizing::new(t));
        }
    }
    let mut t = zeroize::Zeroizing::new([0u8; 32]);
    rng.fill_bytes(t.as_mut());
    tx.put(Table::App, OWN_DELIVERY_TOKEN, t.as_ref())?;
    Ok(t)
}

/// Whether this user hides its presence (and typing) from every contact.
pub(crate) fn presence_hidden(tx: &impl Txn) -> Result<bool> {
    Ok(tx.get(Table::App, PRESENCE_HIDDEN)?.is_some())
}

/// Hides (or shows again) this user's presence from every contact.
pub(crate) fn set_presence_hidden(tx: &mut impl Txn, hidden: bool) -> Result<()> {
    if hidden {
        tx.put(Table::App, PRESENCE_HIDDEN, &[1])?;
    } else {
        tx.delete(Table::App, PRESENCE_HIDDEN)?;
    }
    Ok(())
}

/// The delivery token a peer device gave us, if any.
pub(crate) fn delivery_token(
    tx: &impl Txn,
    user: &[u8],
    device: u32,
) -> Result<Option<zeroize::Zeroizing<[u8; 32]>>> {
    match tx.get(
        Table::App,
        &key(DELIVERY_TOKEN, &[user, &device.to_be_bytes()]),
    )? {
        None => Ok(None),
        Some(v) => <[u8; 32]>::try_from(v.as_slice())
            .map(|t| Some(zeroize::Zeroizing::new(t)))
            .map_err(|_| Error::corrupt("app")),
    }
}

/// Records the delivery token a peer device gave us (one row per device).
pub(crate) fn put_delivery_token(
    tx: &mut impl Txn,
    user: &[u8],
    device: u32,
    token: &[u8; 32],
) -> Result<()> {
    let k = key(DELIVERY_TOKEN, &[user, &device.to_be_bytes()]);
    if tx
        .get(Table::App, &k)?
        .is_some_and(|v| v.as_slice() == token)
    {
        return Ok(());
    }
    bump_fanout(tx)?;
    Ok(tx.put(Table::App, &k, token)?)
}

/// Forgets a peer device's delivery token if it is still `refused` (a newer
/// one may have arrived since it was read).
pub(crate) fn delete_delivery_token_if(
    tx: &mut impl Txn,
    user: &[u8],
    device: u32,
    refused: &[u8; 32],
) -> Result<()> {
    if delivery_token(tx, user, device)?.is_some_and(|t| *t == *refused) {
        delete_delivery_token(tx, user, device)?;
    }
    Ok(())
}

/// This device's delivery token as last announced to its own devices (and,
/// after a rotation, to its contacts); see [`own_delivery_token`].
pub(crate) fn announced_delivery_token(tx: &impl Txn) -> Result<Option<Vec<u8>>> {
    Ok(tx
        .get(Table::App, ANNOUNCED_DELIVERY_TOKEN)?
        .map(|v| v.to_vec()))
}

/// Records the delivery token just announced.
pub(crate) fn set_announced_delivery_token(tx: &mut impl Txn, token: &[u8; 32]) -> Result<()> {
    Ok(tx.put(Table::App, ANNOUNCED_DELIVERY_TOKEN, token)?)
}

/// Forgets a peer device's delivery token (replaced, or the device removed).
pub(crate) fn delete_delivery_token(tx: &mut impl Txn, user: &[u8], device: u32) -> Result<()> {
    bump_fanout(tx)?;
    Ok(tx.delete(
        Table::App,
        &key(DELIVERY_TOKEN, &[user, &device.to_be_bytes()]),
    )?)
}

/// Holds a message of a request (stranger) so that accepting the request
/// can send its delivered receipt.
pub(crate) fn hold(tx: &mut impl Txn, user: &[u8], id: &[u8]) -> Result<()> {
    Ok(tx.put(Table::App, &key(HELD, &[user, id]), &[])?)
}

/// Takes (and deletes) the held message ids of `user`.
pub(crate) fn take_held(tx: &mut impl Txn, user: &[u8]) -> Result<Vec<Vec<u8>>> {
    let prefix = key(HELD, &[user]);
    let mut ids = Vec::new();
    for k in tx.keys_with_prefix(Table::App, &prefix)? {
        ids.push(k[prefix.len()..].to_vec());
        tx.delete(Table::App, &k)?;
    }
    Ok(ids)
}

/// Most automatic repairs (retry requests sent, sessions reset) in a burst
/// per peer device, and how fast the allowance comes back.
pub(crate) const REPAIR_BURST: u32 = 3;
pub(crate) const REPAIR_REFILL_MS: u64 = 3600 * 1000;
/// Devices of one contact with a repair bucket.
const MAX_REPAIR_BUCKETS: usize = 20;

/// Takes one repair token for `device_id` from the contact's buckets; false
/// when the device used its allowance (then nothing automatic happens).
pub(crate) fn take_repair_token(c: &mut pb::ContactRecord, device_id: u32, now_ms: u64) -> bool {
    let pos = match c.repairs.iter().position(|r| r.device_id == device_id) {
        Some(p) => p,
        // A contact has few devices: a flood of device ids gets no bucket.
        None if c.repairs.len() >= MAX_REPAIR_BUCKETS => return false,
        None => {
            c.repairs.push(pb::RepairBudget {
                device_id,
                tokens: REPAIR_BURST,
                at_ms: now_ms,
            });
            c.repairs.len() - 1
        }
    };
    let b = &mut c.repairs[pos];
    let refill = now_ms.saturating_sub(b.at_ms) / REPAIR_REFILL_MS;
    if refill > 0 {
        b.tokens = u32::try_from(u64::from(b.tokens).saturating_add(refill))
            .unwrap_or(REPAIR_BURST)
            .min(REPAIR_BURST);
        b.at_ms = now_ms;
    }
    if b.tokens == 0 {
        return false;
    }
    b.tokens -= 1;
    true
}

fn seq_of(b: &[u8]) -> Result<u64> {
    let a: [u8; 8] = b.try_into().map_err(|_| Error::corrupt("app"))?;
    Ok(u64::from_be_bytes(a))
}

/// A group record.
pub(crate) fn group(tx: &impl Txn, id: &[u8; 32]) -> Result<Option<pb::GroupRecord>> {
    get(tx, &key(GROUP, &[id]))
}

/// Writes a group record, and its head.
pub(crate) fn put_group(tx: &mut impl Txn, id: &[u8; 32], g: &pb::GroupRecord) -> Result<()> {
    let mut ids = Vec::new();
    if let Some(state) = &g.state {
        for m in &state.members {
            let a: super::address::UserAddress =
                m.address.parse().map_err(|_| Error::corrupt("app"))?;
            ids.push(a.user);
        }
    }
    let head = pb::GroupHead {
        status: g.status,
        member_ids: UserSet::of(&ids).into_bytes(),
    };
    bump_fanout(tx)?;
    let status = u8::try_from(g.status).unwrap_or(u8::MAX);
    tx.put(Table::App, &key(GROUP_STATUS, &[id]), &[status])?;
    put(tx, &key(GROUP_HEAD, &[id]), &head)?;
    put(tx, &key(GROUP, &[id]), g)
}

/// A group's head (its status and members), without its history.
pub(crate) fn group_head(tx: &impl Txn, id: &[u8; 32]) -> Result<Option<(u32, UserSet)>> {
    match get::<pb::GroupHead>(tx, &key(GROUP_HEAD, &[id]))? {
        Some(h) => Ok(Some((h.status, UserSet::from_bytes(h.member_ids)?))),
        None => Ok(None),
    }
}

/// The ids of the groups this device holds a record of and has not left
/// (its status is one byte beside the record: no record is decoded).
pub(crate) fn live_group_ids(tx: &impl Txn, gone: u32) -> Result<Vec<[u8; 32]>> {
    let mut out = Vec::new();
    for k in tx.keys_with_prefix(Table::App, GROUP)? {
        let Ok(id) = <[u8; 32]>::try_from(&k[GROUP.len()..]) else {
            continue;
        };
        let gone = u8::try_from(gone).unwrap_or(u8::MAX);
        let left = tx
            .get(Table::App, &key(GROUP_STATUS, &[&id]))?
            .is_some_and(|v| v.as_slice() == [gone]);
        if !left {
            out.push(id);
        }
    }
    Ok(out)
}

/// Every group record.
pub(crate) fn groups(tx: &impl Txn) -> Result<Vec<pb::GroupRecord>> {
    let mut out = Vec::new();
    for k in tx.keys_with_prefix(Table::App, GROUP)? {
        if let Some(g) = get(tx, &k)? {
            out.push(g);
        }
    }
    Ok(out)
}

/// This device's sending chain in a group.
pub(crate) fn own_sender_key(tx: &impl Txn, id: &[u8; 32]) -> Result<Option<pb::OwnSenderKey>> {
    get(tx, &key(OWN_SENDER_KEY, &[id]))
}

/// Writes (`Some`) or drops (`None`: the next message starts a new chain)
/// this device's sending chain in a group.
pub(crate) fn put_own_sender_key(
    tx: &mut impl Txn,
    id: &[u8; 32],
    k: Option<&pb::OwnSenderKey>,
) -> Result<()> {
    let row = key(OWN_SENDER_KEY, &[id]);
    match k {
        Some(k) => put(tx, &row, k),
        None => Ok(tx.delete(Table::App, &row)?),
    }
}

fn sender_keys_row(group: &[u8; 32], user: &[u8; 32], device: u32) -> Vec<u8> {
    key(SENDER_KEYS, &[group, user, &device.to_be_bytes()])
}

/// The chains a member device handed this device in a group.
pub(crate) fn sender_keys(
    tx: &impl Txn,
    group: &[u8; 32],
    user: &[u8; 32],
    device: u32,
) -> Result<pb::ReceivedSenderKeys> {
    Ok(get(tx, &sender_keys_row(group, user, device))?.unwrap_or_default())
}

/// Writes them, and indexes each chain id to its group.
pub(crate) fn put_sender_keys(
    tx: &mut impl Txn,
    group: &[u8; 32],
    user: &[u8; 32],
    device: u32,
    keys: &pb::ReceivedSenderKeys,
    chain_ids: &[[u8; 16]],
) -> Result<()> {
    for c in chain_ids {
        tx.put(
            Table::App,
            &key(CHAIN_INDEX, &[user, &device.to_be_bytes(), c]),
            group,
        )?;
    }
    put(tx, &sender_keys_row(group, user, device), keys)
}

/// The group a member device's chain belongs to.
pub(crate) fn chain_group(
    tx: &impl Txn,
    user: &[u8; 32],
    device: u32,
    chain_id: &[u8; 16],
) -> Result<Option<[u8; 32]>> {
    match tx.get(
        Table::App,
        &key(CHAIN_INDEX, &[user, &device.to_be_bytes(), chain_id]),
    )? {
        None => Ok(None),
        Some(v) => v
            .as_slice()
            .try_into()
            .map(Some)
            .map_err(|_| Error::corrupt("app")),
    }
}

/// Forgets every chain of `user` in a group (it left or was removed). The
/// index rows go too, so its envelopes no longer find the group.
pub(crate) fn delete_sender_keys(
    tx: &mut impl Txn,
    group: &[u8; 32],
    user: &[u8; 32],
) -> Result<()> {
    for k in tx.keys_with_prefix(Table::App, &key(SENDER_KEYS, &[group, user]))? {
        let device = k[k.len() - 4..].to_vec();
        tx.delete(Table::App, &k)?;
        for i in tx.keys_with_prefix(Table::App, &key(CHAIN_INDEX, &[user, &device]))? {
            if tx.get(Table::App, &i)?.as_deref().map(|v| v.as_slice()) == Some(group.as_slice()) {
                tx.delete(Table::App, &i)?;
            }
        }
    }
    Ok(())
}

/// Distributions waiting for their group or member, oldest first.
pub(crate) fn pending_sender_keys(tx: &impl Txn) -> Result<Vec<pb::PendingSenderKey>> {
    Ok(get::<pb::PendingSenderKeys>(tx, PENDING_SENDER_KEYS)?
        .unwrap_or_default()
        .keys)
}

/// Rewrites them (the oldest beyond [`MAX_PENDING_SENDER_KEYS`] are dropped).
pub(crate) fn put_pending_sender_keys(
    tx: &mut impl Txn,
    mut keys: Vec<pb::PendingSenderKey>,
) -> Result<()> {
    if keys.len() > MAX_PENDING_SENDER_KEYS {
        keys.drain(..keys.len() - MAX_PENDING_SENDER_KEYS);
    }
    put(tx, PENDING_SENDER_KEYS, &pb::PendingSenderKeys { keys })
}
