//! The client's durable rows, kept in the device store's [`Table::App`] so
//! they commit in the same transaction as the ratchet state they depend on
//! (a decrypt, its de-duplication mark and its event are one commit).
//!
//! Key prefixes (all values are `sotto.client.v1` protobuf):
//! `cfg` config; `ob/`+seq outbox; `ev/`+seq events for the app;
//! `in/`+envelope id processed envelopes; `mid/`+user+id seen message ids;
//! `sl/`+envelope id sent log; `ds/`+message id delivery state;
//! `ct/`+user contacts.

use sotto_proto::client as pb;

use crate::error::{Error, Result};
use crate::store::{Table, Txn};

pub(crate) const CONFIG: &[u8] = b"cfg";
const OUTBOX: &[u8] = b"ob/";
const EVENTS: &[u8] = b"ev/";
const PROCESSED: &[u8] = b"in/";
const SEEN_MESSAGE: &[u8] = b"mid/";
const SENT_LOG: &[u8] = b"sl/";
const DELIVERY: &[u8] = b"ds/";
const CONTACT: &[u8] = b"ct/";

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
            .map_err(|_| Error::CorruptRecord { table: "app" }),
    }
}

/// Encodes and writes one protobuf row.
pub(crate) fn put<M: prost::Message>(tx: &mut impl Txn, k: &[u8], m: &M) -> Result<()> {
    tx.put(Table::App, k, &m.encode_to_vec())
}

/// Allocates the next sequence number (outbox and events share it).
pub(crate) fn next_seq(tx: &mut impl Txn) -> Result<u64> {
    let mut cfg: pb::ClientConfig = get(tx, CONFIG)?.ok_or(Error::NoIdentity)?;
    let seq = cfg.next_seq.max(1);
    cfg.next_seq = seq + 1;
    put(tx, CONFIG, &cfg)?;
    Ok(seq)
}

/// Queues an outgoing item; returns its sequence number.
pub(crate) fn push_outbox(tx: &mut impl Txn, item: &pb::OutboxItem) -> Result<u64> {
    let seq = next_seq(tx)?;
    put(tx, &key(OUTBOX, &[&seq.to_be_bytes()]), item)?;
    Ok(seq)
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

/// Rewrites (progress) or removes (`None`: done) an outbox item.
pub(crate) fn update_outbox(
    tx: &mut impl Txn,
    seq: u64,
    item: Option<&pb::OutboxItem>,
) -> Result<()> {
    let k = key(OUTBOX, &[&seq.to_be_bytes()]);
    match item {
        Some(i) => put(tx, &k, i),
        None => tx.delete(Table::App, &k),
    }
}

/// Appends an event for the app.
pub(crate) fn push_event(tx: &mut impl Txn, mut event: pb::ClientEvent) -> Result<u64> {
    let seq = next_seq(tx)?;
    event.seq = seq;
    put(tx, &key(EVENTS, &[&seq.to_be_bytes()]), &event)?;
    Ok(seq)
}

/// The oldest events not yet acknowledged by the app (at most `limit`).
pub(crate) fn events(tx: &impl Txn, limit: usize) -> Result<Vec<pb::ClientEvent>> {
    let mut out = Vec::new();
    for k in tx
        .keys_with_prefix(Table::App, EVENTS)?
        .into_iter()
        .take(limit)
    {
        if let Some(e) = get(tx, &k)? {
            out.push(e);
        }
    }
    Ok(out)
}

/// Removes an event the app has taken.
pub(crate) fn remove_event(tx: &mut impl Txn, seq: u64) -> Result<()> {
    tx.delete(Table::App, &key(EVENTS, &[&seq.to_be_bytes()]))
}

/// Marks a relay envelope as processed (its effects are committed).
pub(crate) fn mark_processed(tx: &mut impl Txn, envelope: &[u8; 16], now_ms: u64) -> Result<()> {
    tx.put(
        Table::App,
        &key(PROCESSED, &[envelope]),
        &now_ms.to_be_bytes(),
    )
}

/// True if the envelope's effects were already committed (a redelivery).
pub(crate) fn is_processed(tx: &impl Txn, envelope: &[u8; 16]) -> Result<bool> {
    Ok(tx.get(Table::App, &key(PROCESSED, &[envelope]))?.is_some())
}

/// Records a message id from `user`; false if it was already seen (a
/// re-sent copy of a message the app already has).
pub(crate) fn first_sight(tx: &mut impl Txn, user: &[u8], id: &[u8]) -> Result<bool> {
    let k = key(SEEN_MESSAGE, &[user, id]);
    if tx.get(Table::App, &k)?.is_some() {
        return Ok(false);
    }
    tx.put(Table::App, &k, &[])?;
    Ok(true)
}

/// Keeps what an envelope carried so a retry request can re-send it.
pub(crate) fn log_sent(tx: &mut impl Txn, envelope: &[u8; 16], e: &pb::SentLogEntry) -> Result<()> {
    put(tx, &key(SENT_LOG, &[envelope]), e)
}

/// The content of a sent envelope, if still in the log.
pub(crate) fn sent(tx: &impl Txn, envelope: &[u8]) -> Result<Option<pb::SentLogEntry>> {
    get(tx, &key(SENT_LOG, &[envelope]))
}

/// Deletes sent-log entries and processed marks older than `cutoff_ms`
/// (relay envelope ids start with their millisecond timestamp).
pub(crate) fn prune(tx: &mut impl Txn, cutoff_ms: u64) -> Result<()> {
    for prefix in [SENT_LOG, PROCESSED] {
        let mut to = prefix.to_vec();
        to.extend_from_slice(&cutoff_ms.to_be_bytes());
        tx.delete_range(Table::App, prefix, &to)?;
    }
    Ok(())
}

/// Delivery state of a message this device sent.
pub(crate) fn delivery(tx: &impl Txn, message_id: &[u8]) -> Result<pb::DeliveryRecord> {
    Ok(get(tx, &key(DELIVERY, &[message_id]))?.unwrap_or_default())
}

/// Raises one device's delivery state (never lowers it); true if it changed.
pub(crate) fn raise_delivery(
    tx: &mut impl Txn,
    message_id: &[u8],
    user: &[u8],
    device_id: u32,
    state: u32,
) -> Result<bool> {
    let mut rec = delivery(tx, message_id)?;
    let changed = match rec
        .devices
        .iter_mut()
        .find(|d| d.user == user && d.device_id == device_id)
    {
        Some(d) if d.state >= state => false,
        Some(d) => {
            d.state = state;
            true
        }
        None => {
            rec.devices.push(pb::DeviceDelivery {
                user: user.to_vec(),
                device_id,
                state,
            });
            true
        }
    };
    if changed {
        put(tx, &key(DELIVERY, &[message_id]), &rec)?;
    }
    Ok(changed)
}

/// A contact's record.
pub(crate) fn contact(tx: &impl Txn, user: &[u8]) -> Result<Option<pb::ContactRecord>> {
    get(tx, &key(CONTACT, &[user]))
}

/// Writes a contact's record.
pub(crate) fn put_contact(tx: &mut impl Txn, user: &[u8], c: &pb::ContactRecord) -> Result<()> {
    put(tx, &key(CONTACT, &[user]), c)
}

fn seq_of(b: &[u8]) -> Result<u64> {
    let a: [u8; 8] = b
        .try_into()
        .map_err(|_| Error::CorruptRecord { table: "app" })?;
    Ok(u64::from_be_bytes(a))
}
