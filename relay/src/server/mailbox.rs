//! Envelope queues: one FIFO per mailbox, durable in RocksDB, indexed in memory.
//!
//! RocksDB holds the truth (`mailbox || seq` -> `created_ms || payload`); an
//! in-memory index per mailbox (sequence -> size, time, committed flag) is
//! rebuilt at start by one bounded scan of the small index records
//! (`created_ms || len`, written and deleted in the same batch as each
//! envelope), so startup reads ~12 bytes per envelope, not its payload. Reads
//! therefore never seek through the tombstones that acked heads leave behind:
//! a fetch knows exactly which keys are live. Entries are inserted "pending"
//! under the index lock in the same critical section that enqueues their
//! write, and flipped to committed by the writer in commit order; readers stop
//! at the first entry they may not return yet (fetch: any pending one; the
//! live subscription: a pending one without an early copy), so none can see
//! sequence 6 before 5.
//!
//! Once a mailbox's owner registers a delivery-token verifier, envelopes
//! sent without its token (strangers: first contact, message requests) share
//! a small slice of the quota, so they can never fill the mailbox against
//! the contacts who hold the token; the lane is stored with each envelope's
//! index record, so the slice is counted again after a restart.
//!
//! Push does not wait for the fsync: an envelope is handed to its recipient's
//! live subscription as soon as it is queued for the durable write (as a
//! broker delivers before its confirm), so send-to-push latency carries no
//! disk wait. Only the sender's "accepted" waits for durability. A crash
//! (or a failed write) can thus lose an envelope that was pushed but never
//! confirmed to its sender (who retransmits; recipients drop the duplicate),
//! but never reuse its id: early pushes are allowed only for sequence numbers
//! under a durably written lease, and a restart continues above it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use sotto_proto::relay::{ErrorCode, PrekeyCounts};
use tokio::sync::{mpsc, oneshot, watch};

use super::db::{Cf, Db};
use super::metrics::Metrics;
use super::push::Notifier;
use super::writer::{DbOp, Writer};
use crate::error::{RelayError, Result};
use crate::ids::{EnvelopeId, MailboxId};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Meta key present once every envelope has its index record (databases
/// written before the index existed are migrated by one full scan).
const INDEX_MARKER: &[u8] = b"envelope_index_v1";

/// Index record flags (the 13th byte).
const FLAG_STRANGER: u8 = 1;
const FLAG_SHARED: u8 = 2;

fn index_value(created_ms: u64, len: u32, stranger: bool, shared: Option<u64>) -> Vec<u8> {
    let mut v = Vec::with_capacity(21);
    v.extend_from_slice(&created_ms.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    let flags =
        if stranger { FLAG_STRANGER } else { 0 } | if shared.is_some() { FLAG_SHARED } else { 0 };
    if flags != 0 {
        v.push(flags);
    }
    if let Some(id) = shared {
        v.extend_from_slice(&id.to_be_bytes());
    }
    v
}

/// Reads an index record: `(created_ms, len, stranger, shared payload id)`.
fn parse_index_value(v: &[u8]) -> Option<(u64, u32, bool, Option<u64>)> {
    let created_ms = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let len = u32::from_be_bytes(v.get(8..12)?.try_into().ok()?);
    match v.len() {
        12 => Some((created_ms, len, false, None)),
        13 if v[12] == FLAG_STRANGER => Some((created_ms, len, true, None)),
        21 if v[12] & FLAG_SHARED != 0 && v[12] & !(FLAG_SHARED | FLAG_STRANGER) == 0 => {
            let id = u64::from_be_bytes(v[13..21].try_into().ok()?);
            Some((created_ms, len, v[12] & FLAG_STRANGER != 0, Some(id)))
        }
        _ => None,
    }
}

fn shared_key(id: u64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

fn key(m: &MailboxId, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(40);
    k.extend_from_slice(&m.0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

#[derive(Debug, Clone)]
struct Entry {
    len: u32,
    created_ms: u64,
    committed: bool,
    /// Sent without the owner's delivery token (counted in the strangers'
    /// slice).
    stranger: bool,
    /// The payload of an envelope not yet durable but already pushable (its
    /// sequence number lies under the durable lease); dropped at commit.
    early: Option<Arc<[u8]>>,
    /// The shared payload this envelope refers to (one sent to many
    /// mailboxes), or `None`: its own record in `Envelopes`.
    shared: Option<u64>,
}

/// Sequence numbers reserved by one durable lease write: a restart resumes
/// above the lease, so an id pushed before its envelope was durable is never
/// handed out again. Renewed (in an ordinary batch) when half is used.
const SEQ_LEASE: u64 = 1 << 20;

#[derive(Debug)]
struct Mailbox {
    entries: BTreeMap<u64, Entry>,
    bytes: u64,
    /// Entries and payload bytes from strangers (part of the above).
    strangers: usize,
    stranger_bytes: u64,
    /// The owner's delivery-token verifier; `None`: no strangers' slice.
    verifier: Option<[u8; 32]>,
    /// Bumped when an envelope becomes pushable (queued with an early copy,
    /// or committed) or a notice arrives; subscribers wait on it.
    changed: watch::Sender<u64>,
    /// Generation of the current push subscription: a new subscription bumps
    /// it, which tells the previous one to end.
    subscriber: watch::Sender<u64>,
    push_token: Option<Vec<u8>>,
    prekeys_low: Option<PrekeyCounts>,
    /// The live subscription's queue of ephemeral payloads (deliver now or
    /// never): `None` without a subscription. Bounded; never on disk.
    ephemeral: Option<mpsc::Sender<Vec<u8>>>,
}

impl Mailbox {
    fn new() -> Self {
        Self {
            entries: BTreeMap::new(),
            bytes: 0,
            strangers: 0,
            stranger_bytes: 0,
            verifier: None,
            changed: watch::Sender::new(0),
            subscriber: watch::Sender::new(0),
            push_token: None,
            prekeys_low: None,
            ephemeral: None,
        }
    }
    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn insert(&mut self, seq: u64, e: Entry) {
        self.bytes += u64::from(e.len);
        if e.stranger {
            self.strangers += 1;
            self.stranger_bytes += u64::from(e.len);
        }
        self.entries.insert(seq, e);
    }

    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let e = self.entries.remove(&seq)?;
        self.bytes -= u64::from(e.len);
        if e.stranger {
            self.strangers -= 1;
            self.stranger_bytes -= u64::from(e.len);
        }
        Some(e)
    }

    /// Which lane an envelope takes, given its token's verifier (`None`: no
    /// token; `Some(None)`: not 32 bytes): `Ok(true)` for the strangers'
    /// slice, `Ok(false)` for a contact (or a mailbox without a verifier); a
    /// token that does not match is refused.
    fn lane(&self, presented: Option<Option<[u8; 32]>>) -> Result<bool> {
        use subtle::ConstantTimeEq;
        let Some(v) = &self.verifier else {
            return Ok(false);
        };
        let Some(presented) = presented else {
            return Ok(true);
        };
        let ok = presented.is_some_and(|p| bool::from(p.ct_eq(v)));
        if ok {
            Ok(false)
        } else {
            Err(RelayError::refusal(
                ErrorCode::BadDeliveryToken,
                "delivery token does not match the recipient's",
            ))
        }
    }
}

/// One envelope to store.
pub struct Submission {
    /// The recipient mailbox.
    pub to: MailboxId,
    /// The ciphertext.
    pub payload: Vec<u8>,
    /// The recipient's delivery token, or empty (a stranger).
    pub delivery_token: Vec<u8>,
}

impl std::fmt::Debug for Submission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submission")
            .field("to", &self.to)
            .field("payload_len", &self.payload.len())
            .field("delivery_token", &"<redacted>")
            .finish()
    }
}

impl From<(MailboxId, Vec<u8>)> for Submission {
    fn from((to, payload): (MailboxId, Vec<u8>)) -> Self {
        Submission {
            to,
            payload,
            delivery_token: Vec::new(),
        }
    }
}

/// An envelope admitted to a queue, waiting for its write.
#[derive(Debug, Clone, Copy)]
struct Accepted {
    to: MailboxId,
    seq: u64,
    len: u32,
    /// Pushed to a live subscription before its commit.
    pushed: bool,
    stranger: bool,
}

/// The verifier of a presented delivery token: `None` for no token,
/// `Some(None)` for one that is not 32 bytes.
fn presented_verifier(token: &[u8]) -> Option<Option<[u8; 32]>> {
    (!token.is_empty()).then(|| {
        <&[u8; 32]>::try_from(token)
            .ok()
            .map(crate::auth::delivery_verifier)
    })
}

fn no_live_token() -> RelayError {
    RelayError::refusal(
        ErrorCode::BadDeliveryToken,
        "an ephemeral envelope needs the recipient's delivery token",
    )
}

fn too_large() -> RelayError {
    RelayError::refusal(ErrorCode::EnvelopeTooLarge, "envelope too large")
}

#[derive(Debug, Default)]
struct Index {
    mailboxes: HashMap<MailboxId, Mailbox>,
    next_seq: u64,
    last_ms: u64,
    /// Highest sequence number durably reserved (`Meta` key `"seq"`): ids
    /// up to it may be pushed before their own commit.
    lease: u64,
    /// Highest value queued for `"seq"` (durable or not). Every allocated
    /// sequence number is at most this, and the write that reserved it is
    /// queued before the envelope's, so a committed envelope's number is
    /// always covered by a durable reservation (a restart never reuses it).
    reserved: u64,
    /// Sequence numbers per reservation (`SEQ_LEASE`; small in tests).
    lease_size: u64,
    /// Shared payloads and how many envelopes refer to each.
    shared: HashMap<u64, u32>,
}

/// Queues the deletes of one envelope taken out of the index: its index
/// record and its payload (its own, or a shared one's last reference).
fn forget(shared: &mut HashMap<u64, u32>, m: &MailboxId, seq: u64, e: &Entry, ops: &mut Vec<DbOp>) {
    let k = key(m, seq);
    ops.push(DbOp::SingleDelete(Cf::EnvelopeIndex, k.clone()));
    match e.shared {
        None => ops.push(DbOp::SingleDelete(Cf::Envelopes, k)),
        Some(id) => {
            if release(shared, id) {
                ops.push(DbOp::SingleDelete(Cf::SharedPayloads, shared_key(id)));
            }
        }
    }
}

/// Drops one reference to a shared payload; true if it was the last.
fn release(shared: &mut HashMap<u64, u32>, id: u64) -> bool {
    match shared.get_mut(&id) {
        Some(refs) if *refs > 1 => {
            *refs -= 1;
            false
        }
        Some(_) => {
            shared.remove(&id);
            true
        }
        None => false,
    }
}

/// Ephemeral payloads waiting for one live subscription: a slow reader
/// loses the newest rather than making the relay hold more (32 x 4 KiB).
pub const EPHEMERAL_QUEUE: usize = 32;
/// Largest ephemeral payload: live signals are small (a sealed presence or
/// typing message pads to 256 or 512 bytes).
pub const EPHEMERAL_MAX_BYTES: usize = 4096;

/// A push subscription's claim on its mailbox; see [`Mailboxes::subscribe`].
#[derive(Debug)]
pub struct SubscriberSlot {
    rx: watch::Receiver<u64>,
    generation: u64,
}

impl SubscriberSlot {
    /// Whether a newer subscription has replaced this one.
    pub fn is_superseded(&self) -> bool {
        *self.rx.borrow() != self.generation
    }

    /// Resolves once a newer subscription replaces this one (or the mailbox
    /// is forgotten, which cannot happen while a subscription watches it).
    pub async fn superseded(&mut self) {
        while !self.is_superseded() {
            if self.rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Quotas applied at submission.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    /// Most envelopes per mailbox.
    pub max_envelopes: usize,
    /// Most payload bytes per mailbox.
    pub max_bytes: u64,
    /// Largest payload.
    pub max_envelope_bytes: usize,
    /// Most envelopes from strangers per mailbox (with a verifier).
    pub stranger_max_envelopes: usize,
    /// Most payload bytes from strangers per mailbox (with a verifier).
    pub stranger_max_bytes: u64,
}

/// One stored envelope read back.
#[derive(Debug)]
pub struct Stored {
    /// Its id.
    pub id: EnvelopeId,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// The mailbox store.
#[derive(Debug)]
pub struct Mailboxes {
    db: Arc<Db>,
    writer: Arc<Writer>,
    metrics: Arc<Metrics>,
    notifier: Option<Arc<Notifier>>,
    index: Arc<Mutex<Index>>,
    quota: Quota,
}

fn lock(m: &Mutex<Index>) -> MutexGuard<'_, Index> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Mailboxes {
    /// Rebuilds the index from disk.
    pub fn load(
        db: Arc<Db>,
        writer: Arc<Writer>,
        metrics: Arc<Metrics>,
        notifier: Option<Arc<Notifier>>,
        quota: Quota,
    ) -> Result<Self> {
        Self::load_with_lease(db, writer, metrics, notifier, quota, SEQ_LEASE)
    }

    /// [`Self::load`] with a given lease size (tests use tiny ones to
    /// exercise renewals).
    fn load_with_lease(
        db: Arc<Db>,
        writer: Arc<Writer>,
        metrics: Arc<Metrics>,
        notifier: Option<Arc<Notifier>>,
        quota: Quota,
        lease_size: u64,
    ) -> Result<Self> {
        let started = std::time::Instant::now();
        let mut index = Index::default();
        let mut max_seq = match db.get(Cf::Meta, b"seq")? {
            Some(v) if v.len() == 8 => {
                u64::from_be_bytes(v.as_slice().try_into().unwrap_or([0; 8]))
            }
            _ => 0,
        };
        let (mut depth, mut bytes) = (0u64, 0u64);
        let mut add = |index: &mut Index,
                       k: &[u8],
                       created_ms: u64,
                       len: u32,
                       stranger: bool,
                       shared: Option<u64>|
         -> Result<()> {
            let m = MailboxId::from_slice(&k[..32])?;
            let seq = u64::from_be_bytes(k[32..].try_into().unwrap_or([0; 8]));
            let mb = index.mailboxes.entry(m).or_insert_with(Mailbox::new);
            mb.insert(
                seq,
                Entry {
                    len,
                    created_ms,
                    committed: true,
                    stranger,
                    early: None,
                    shared,
                },
            );
            if let Some(id) = shared {
                *index.shared.entry(id).or_insert(0) += 1;
                max_seq = max_seq.max(id);
            }
            max_seq = max_seq.max(seq);
            index.last_ms = index.last_ms.max(created_ms);
            depth += 1;
            bytes += u64::from(len);
            Ok(())
        };
        if db.get(Cf::Meta, INDEX_MARKER)?.is_some() {
            db.scan(Cf::EnvelopeIndex, &[], &[0xff; 41], |k, v| {
                let Some((created_ms, len, stranger, shared)) =
                    parse_index_value(v).filter(|_| k.len() == 40)
                else {
                    tracing::warn!("skipping malformed envelope index record");
                    return Ok(true);
                };
                add(&mut index, k, created_ms, len, stranger, shared)?;
                Ok(true)
            })?;
            // A shared payload no envelope refers to any more (none should
            // be: its last reference's delete removes it in the same batch)
            // is deleted.
            let mut orphans = rocksdb::WriteBatch::default();
            let scf = db.cf(Cf::SharedPayloads)?;
            let mut n = 0usize;
            let mut present = std::collections::HashSet::new();
            db.scan(Cf::SharedPayloads, &[], &[0xff; 9], |k, _| {
                let id = <[u8; 8]>::try_from(k).map(u64::from_be_bytes);
                match id {
                    Ok(id) if index.shared.contains_key(&id) => {
                        present.insert(id);
                    }
                    _ => {
                        orphans.delete_cf(scf, k);
                        n += 1;
                    }
                }
                Ok(true)
            })?;
            // And an envelope whose shared payload is gone (none should be:
            // an ack whose write failed can leave its record while a later
            // ack frees the payload) is dropped: it could never be read, and
            // would count against its mailbox until it expired.
            let icf = db.cf(Cf::EnvelopeIndex)?;
            let mut dangling = 0usize;
            for (m, mb) in index.mailboxes.iter_mut() {
                let gone: Vec<u64> = mb
                    .entries
                    .iter()
                    .filter(|(_, e)| e.shared.is_some_and(|id| !present.contains(&id)))
                    .map(|(seq, _)| *seq)
                    .collect();
                for seq in gone {
                    if let Some(e) = mb.remove(seq) {
                        orphans.delete_cf(icf, key(m, seq));
                        depth -= 1;
                        bytes -= u64::from(e.len);
                        dangling += 1;
                    }
                }
            }
            index.shared.retain(|id, _| present.contains(id));
            if n > 0 || dangling > 0 {
                tracing::warn!(
                    payloads = n,
                    envelopes = dangling,
                    "deleting shared payloads without references and envelopes without their payload"
                );
                db.write_synced(orphans)?;
            }
        } else {
            // Written before the index existed (or empty): read every
            // envelope once and persist its index record, all in one atomic
            // batch with the marker so a crash mid-way simply redoes it.
            let mut batch = rocksdb::WriteBatch::default();
            let icf = db.cf(Cf::EnvelopeIndex)?;
            db.scan(Cf::Envelopes, &[], &[0xff; 41], |k, v| {
                if k.len() != 40 || v.len() < 8 {
                    tracing::warn!("skipping malformed envelope record");
                    return Ok(true);
                }
                let created_ms = u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8]));
                let len = u32::try_from(v.len() - 8).unwrap_or(u32::MAX);
                batch.put_cf(icf, k, index_value(created_ms, len, false, None));
                add(&mut index, k, created_ms, len, false, None)?;
                Ok(true)
            })?;
            batch.put_cf(db.cf(Cf::Meta)?, INDEX_MARKER, b"1");
            db.write_synced(batch)?;
            tracing::info!(
                envelopes = depth,
                ms = started.elapsed().as_millis() as u64,
                "envelope index built by a full scan"
            );
        }
        db.scan(Cf::PushTokens, &[], &[0xff; 33], |k, v| {
            if let Ok(m) = MailboxId::from_slice(k) {
                index
                    .mailboxes
                    .entry(m)
                    .or_insert_with(Mailbox::new)
                    .push_token = Some(v.to_vec());
            }
            Ok(true)
        })?;
        db.scan(Cf::DeliveryTokens, &[], &[0xff; 33], |k, v| {
            if let (Ok(m), Ok(v)) = (MailboxId::from_slice(k), <[u8; 32]>::try_from(v)) {
                index
                    .mailboxes
                    .entry(m)
                    .or_insert_with(Mailbox::new)
                    .verifier = Some(v);
            }
            Ok(true)
        })?;
        index.next_seq = max_seq + 1;
        // Reserve a first lease before serving (see `SEQ_LEASE`).
        index.lease_size = lease_size.max(2);
        index.lease = max_seq + index.lease_size;
        index.reserved = index.lease;
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(db.cf(Cf::Meta)?, b"seq", index.lease.to_be_bytes());
        db.write_synced(batch)?;
        metrics.queue_depth.store(depth, Relaxed);
        metrics.bytes_stored.store(bytes, Relaxed);
        tracing::info!(
            envelopes = depth,
            bytes,
            mailboxes = index.mailboxes.len(),
            ms = started.elapsed().as_millis() as u64,
            "mailbox index loaded"
        );
        Ok(Self {
            db,
            writer,
            metrics,
            notifier,
            index: Arc::new(Mutex::new(index)),
            quota,
        })
    }

    /// Durably stores envelopes (one group-committed write for the whole
    /// batch); each item gets its id or its own refusal.
    pub async fn submit<I: Into<Submission>>(&self, items: Vec<I>) -> Vec<Result<EnvelopeId>> {
        let mut results: Vec<Result<EnvelopeId>> = Vec::with_capacity(items.len());
        let mut ops = Vec::with_capacity(2 * items.len() + 1);
        let mut accepted: Vec<Accepted> = Vec::new();
        // Tokens are hashed before the index lock is taken (a SHA-256 each).
        let items: Vec<(Submission, Option<Option<[u8; 32]>>)> = items
            .into_iter()
            .map(|i| {
                let i: Submission = i.into();
                let presented = presented_verifier(&i.delivery_token);
                (i, presented)
            })
            .collect();
        let rx = {
            let mut idx = lock(&self.index);
            let ms = now_ms().max(idx.last_ms);
            idx.last_ms = ms;
            for (item, presented) in items {
                let Submission { to, payload, .. } = item;
                if payload.len() > self.quota.max_envelope_bytes {
                    results.push(Err(too_large()));
                    continue;
                }
                let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
                let early = || Arc::<[u8]>::from(payload.as_slice());
                match self.admit(&mut idx, to, presented, len, ms, None, early) {
                    Ok(a) => {
                        let mut value = Vec::with_capacity(8 + payload.len());
                        value.extend_from_slice(&ms.to_be_bytes());
                        value.extend_from_slice(&payload);
                        let k = key(&to, a.seq);
                        ops.push(DbOp::Put(
                            Cf::EnvelopeIndex,
                            k.clone(),
                            index_value(ms, len, a.stranger, None),
                        ));
                        ops.push(DbOp::Put(Cf::Envelopes, k, value));
                        results.push(Ok(EnvelopeId::new(ms, a.seq)));
                        accepted.push(a);
                    }
                    Err(e) => results.push(Err(e)),
                }
            }
            if accepted.is_empty() {
                self.metrics
                    .envelopes_refused
                    .fetch_add(results.len() as u64, Relaxed);
                return results;
            }
            self.enqueue_commit(&mut idx, ops, accepted, None)
        };
        self.finish(rx, results).await
    }

    /// Durably stores one payload for many mailboxes: the payload once, a
    /// reference (an index record) per mailbox, one write. Each recipient
    /// gets its own envelope id or its own refusal, as in [`Self::submit`];
    /// the payload is deleted with its last reference.
    pub async fn submit_shared(
        &self,
        payload: Vec<u8>,
        recipients: Vec<(MailboxId, Vec<u8>)>,
    ) -> Vec<Result<EnvelopeId>> {
        if payload.len() > self.quota.max_envelope_bytes {
            return recipients.iter().map(|_| Err(too_large())).collect();
        }
        let mut results: Vec<Result<EnvelopeId>> = Vec::with_capacity(recipients.len());
        let mut ops = Vec::with_capacity(recipients.len() + 2);
        let mut accepted: Vec<Accepted> = Vec::new();
        let recipients: Vec<(MailboxId, Option<Option<[u8; 32]>>)> = recipients
            .into_iter()
            .map(|(to, token)| (to, presented_verifier(&token)))
            .collect();
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let shared: Arc<[u8]> = Arc::from(payload.as_slice());
        let rx = {
            let mut idx = lock(&self.index);
            let ms = now_ms().max(idx.last_ms);
            idx.last_ms = ms;
            // The payload's own number: from the same sequence (so a restart
            // resumes above it), never an envelope's.
            let id = idx.next_seq;
            idx.next_seq += 1;
            for (to, presented) in recipients {
                match self.admit(&mut idx, to, presented, len, ms, Some(id), || {
                    shared.clone()
                }) {
                    Ok(a) => {
                        ops.push(DbOp::Put(
                            Cf::EnvelopeIndex,
                            key(&to, a.seq),
                            index_value(ms, len, a.stranger, Some(id)),
                        ));
                        results.push(Ok(EnvelopeId::new(ms, a.seq)));
                        accepted.push(a);
                    }
                    Err(e) => results.push(Err(e)),
                }
            }
            if accepted.is_empty() {
                self.metrics
                    .envelopes_refused
                    .fetch_add(results.len() as u64, Relaxed);
                return results;
            }
            idx.shared
                .insert(id, u32::try_from(accepted.len()).unwrap_or(u32::MAX));
            let mut value = Vec::with_capacity(8 + payload.len());
            value.extend_from_slice(&ms.to_be_bytes());
            value.extend_from_slice(&payload);
            ops.push(DbOp::Put(Cf::SharedPayloads, shared_key(id), value));
            self.enqueue_commit(&mut idx, ops, accepted, Some(id))
        };
        self.finish(rx, results).await
    }

    /// Admits one envelope of `len` bytes to `to`'s queue, pending its
    /// commit: its lane by the presented token, then the quotas.
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &self,
        idx: &mut Index,
        to: MailboxId,
        presented: Option<Option<[u8; 32]>>,
        len: u32,
        ms: u64,
        shared: Option<u64>,
        early: impl FnOnce() -> Arc<[u8]>,
    ) -> Result<Accepted> {
        let seq = idx.next_seq;
        let under_lease = seq <= idx.lease;
        let mb = idx.mailboxes.entry(to).or_insert_with(Mailbox::new);
        let stranger = mb.lane(presented)?;
        if mb.entries.len() >= self.quota.max_envelopes
            || mb.bytes + u64::from(len) > self.quota.max_bytes
        {
            return Err(RelayError::refusal(
                ErrorCode::QuotaExceeded,
                "recipient mailbox full",
            ));
        }
        if stranger
            && (mb.strangers >= self.quota.stranger_max_envelopes
                || mb.stranger_bytes + u64::from(len) > self.quota.stranger_max_bytes)
        {
            return Err(RelayError::refusal(
                ErrorCode::QuotaExceeded,
                "recipient mailbox full for senders without its delivery token",
            ));
        }
        // Only a live subscription needs the early copy.
        let pushable = under_lease && mb.changed.receiver_count() > 0;
        mb.insert(
            seq,
            Entry {
                len,
                created_ms: ms,
                committed: false,
                stranger,
                early: pushable.then(early),
                shared,
            },
        );
        if pushable {
            mb.bump();
        }
        idx.next_seq += 1;
        Ok(Accepted {
            to,
            seq,
            len,
            pushed: pushable,
            stranger,
        })
    }

    /// Queues the write of admitted envelopes, under the index lock (commit
    /// order is sequence order), with the lease renewal it may need; its
    /// completion marks them committed (or, if the write failed, takes them
    /// out again, with the shared payload's references).
    fn enqueue_commit(
        &self,
        idx: &mut Index,
        mut ops: Vec<DbOp>,
        accepted: Vec<Accepted>,
        shared: Option<u64>,
    ) -> oneshot::Receiver<Result<()>> {
        // Renew once half of what is reserved is used (queued ahead of
        // this batch's envelopes: same write, so never behind them).
        let renewal = if idx.next_seq + idx.lease_size / 2 > idx.reserved {
            let lease = idx.next_seq - 1 + idx.lease_size;
            idx.reserved = lease;
            ops.push(DbOp::Put(
                Cf::Meta,
                b"seq".to_vec(),
                lease.to_be_bytes().to_vec(),
            ));
            Some(lease)
        } else {
            None
        };
        let index = self.index.clone();
        let metrics = self.metrics.clone();
        let notifier = self.notifier.clone();
        self.writer.enqueue(
            ops,
            Some(Box::new(move |ok| {
                let mut idx = lock(&index);
                if let Some(lease) = renewal {
                    if ok {
                        idx.lease = idx.lease.max(lease);
                    }
                }
                if ok {
                    metrics
                        .envelopes_accepted
                        .fetch_add(accepted.len() as u64, Relaxed);
                    if shared.is_some() {
                        metrics.shared_payloads.fetch_add(1, Relaxed);
                    }
                } else if let Some(id) = shared {
                    idx.shared.remove(&id);
                }
                // Depth and bytes count committed entries still queued (an
                // early-pushed envelope may be acked before its commit).
                let (mut n, mut b) = (0u64, 0u64);
                for a in &accepted {
                    let Some(mb) = idx.mailboxes.get_mut(&a.to) else {
                        continue;
                    };
                    if ok {
                        if let Some(e) = mb.entries.get_mut(&a.seq) {
                            e.committed = true;
                            e.early = None;
                            n += 1;
                            b += u64::from(a.len);
                        }
                        if !a.pushed {
                            mb.bump();
                        }
                        if mb.changed.receiver_count() == 0 {
                            if let (Some(t), Some(nf)) = (&mb.push_token, &notifier) {
                                nf.notify(t.clone());
                            }
                        }
                    } else {
                        mb.remove(a.seq);
                    }
                }
                metrics.queue_depth.fetch_add(n, Relaxed);
                metrics.bytes_stored.fetch_add(b, Relaxed);
            })),
        )
    }

    /// Waits for the write; if it failed, every admitted item is refused
    /// with its code.
    async fn finish(
        &self,
        rx: oneshot::Receiver<Result<()>>,
        results: Vec<Result<EnvelopeId>>,
    ) -> Vec<Result<EnvelopeId>> {
        let refused = results.iter().filter(|r| r.is_err()).count();
        self.metrics
            .envelopes_refused
            .fetch_add(refused as u64, Relaxed);
        let outcome = match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(RelayError::refusal(
                ErrorCode::ShuttingDown,
                "writer stopped",
            )),
        };
        match outcome {
            Ok(()) => results,
            Err(e) => {
                let code = e.code();
                results
                    .into_iter()
                    .map(|r| r.and_then(|_| Err(RelayError::refusal(code, "not stored"))))
                    .collect()
            }
        }
    }

    /// Up to `limit` committed envelopes with sequence > `after_seq`, at most
    /// `max_bytes` of payload (always at least one); plus whether more follow.
    pub fn fetch(
        &self,
        m: &MailboxId,
        after_seq: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Stored>, bool)> {
        self.read(m, after_seq, limit, max_bytes, false)
    }

    /// As [`Self::fetch`], but also the envelopes already pushable before
    /// their commit (for the live subscription; see the module docs).
    pub fn fetch_live(
        &self,
        m: &MailboxId,
        after_seq: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Stored>, bool)> {
        self.read(m, after_seq, limit, max_bytes, true)
    }

    fn read(
        &self,
        m: &MailboxId,
        after_seq: u64,
        limit: usize,
        max_bytes: usize,
        live: bool,
    ) -> Result<(Vec<Stored>, bool)> {
        let (picked, more) = {
            let idx = lock(&self.index);
            let Some(mb) = idx.mailboxes.get(m) else {
                return Ok((Vec::new(), false));
            };
            let mut picked = Vec::new();
            let mut bytes = 0usize;
            let mut more = false;
            for (&seq, e) in mb.entries.range(after_seq.saturating_add(1)..) {
                let early = match (e.committed, &e.early) {
                    (true, _) => None,
                    (false, Some(p)) if live => Some(p.clone()),
                    // Later entries wait until this one is durable.
                    (false, _) => break,
                };
                if picked.len() >= limit
                    || (!picked.is_empty() && bytes + e.len as usize > max_bytes)
                {
                    more = true;
                    break;
                }
                bytes += e.len as usize;
                picked.push((seq, e.created_ms, early, e.shared));
            }
            (picked, more)
        };
        let cf = self.db.cf(Cf::Envelopes)?;
        let keys: Vec<Vec<u8>> = picked
            .iter()
            .filter(|(_, _, early, shared)| early.is_none() && shared.is_none())
            .map(|(s, _, _, _)| key(m, *s))
            .collect();
        // Keys are ascending: one sorted batched lookup, values pinned in
        // RocksDB's blocks and copied once into the reply.
        let mut values = self
            .db
            .raw()
            .batched_multi_get_cf(cf, &keys, true)
            .into_iter();
        // Shared payloads, by id (ascending too; a page may name one twice
        // only if... it cannot: one reference per mailbox).
        let scf = self.db.cf(Cf::SharedPayloads)?;
        let shared_keys: Vec<Vec<u8>> = picked
            .iter()
            .filter(|(_, _, early, _)| early.is_none())
            .filter_map(|(_, _, _, shared)| shared.map(shared_key))
            .collect();
        let mut shared_values = self
            .db
            .raw()
            .batched_multi_get_cf(scf, &shared_keys, false)
            .into_iter();
        let mut out = Vec::with_capacity(picked.len());
        for (seq, ms, early, shared) in picked {
            let next = if shared.is_some() {
                &mut shared_values
            } else {
                &mut values
            };
            let payload = match early {
                Some(p) => p.to_vec(),
                // Acked concurrently: simply not returned.
                None => match next.next().transpose().map_err(super::db::storage)? {
                    Some(Some(v)) if v.len() >= 8 => v[8..].to_vec(),
                    _ => continue,
                },
            };
            out.push(Stored {
                id: EnvelopeId::new(ms, seq),
                payload,
            });
        }
        self.metrics
            .envelopes_delivered
            .fetch_add(out.len() as u64, Relaxed);
        Ok((out, more))
    }

    /// Durably deletes the caller's own envelopes; returns how many existed.
    pub async fn ack(&self, m: &MailboxId, ids: &[EnvelopeId]) -> Result<u32> {
        let (n, queued) = self.remove_acked(m, ids, false);
        if let Some(rx) = queued {
            Writer::wait(rx).await?;
            self.metrics
                .envelopes_acked
                .fetch_add(u64::from(n), Relaxed);
        } else if !ids.is_empty() {
            // Nothing left to delete, perhaps because another ack of the same
            // ids (confirmed or on the push stream) took them: their deletes
            // were queued before that ack let go of the index, so a barrier
            // behind them makes the reply still mean "durably gone".
            self.writer.write(Vec::new(), None).await?;
        }
        Ok(n)
    }

    /// Deletes the caller's own envelopes without waiting (acks on the push
    /// stream, which get no reply): gone from memory at once, durable with
    /// the next synced commit, never an fsync of their own (a machine crash
    /// before it redelivers them; the client's processed marks absorb that).
    /// Returns how many existed.
    pub fn ack_unconfirmed(&self, m: &MailboxId, ids: &[EnvelopeId]) -> u32 {
        let (n, _) = self.remove_acked(m, ids, true);
        if n > 0 {
            self.metrics
                .envelopes_acked
                .fetch_add(u64::from(n), Relaxed);
        }
        n
    }

    /// Takes acked envelopes out of the index and queues their deletes
    /// before letting go of it, so any ack that then finds them gone queues
    /// its barrier behind them. Returns how many existed and, unless `lazy`,
    /// the receiver of their durable write.
    fn remove_acked(
        &self,
        m: &MailboxId,
        ids: &[EnvelopeId],
        lazy: bool,
    ) -> (u32, Option<oneshot::Receiver<Result<()>>>) {
        let mut ops = Vec::new();
        let mut idx = lock(&self.index);
        let Index {
            mailboxes, shared, ..
        } = &mut *idx;
        let Some(mb) = mailboxes.get_mut(m) else {
            return (0, None);
        };
        let (mut committed, mut freed, mut n) = (0u64, 0u64, 0u32);
        for id in ids {
            let seq = id.seq();
            // Delivered ones only: committed, or pushed ahead of their
            // commit. Deleting the latter is safe because the deletes are
            // queued after their put, so they commit in the same or a later
            // batch.
            let matches = mb
                .entries
                .get(&seq)
                .is_some_and(|e| (e.committed || e.early.is_some()) && e.created_ms == id.millis());
            if matches {
                if let Some(e) = mb.remove(seq) {
                    if e.committed {
                        committed += 1;
                        freed += u64::from(e.len);
                    }
                    forget(shared, m, seq, &e, &mut ops);
                    n += 1;
                }
            }
        }
        self.metrics.queue_depth.fetch_sub(committed, Relaxed);
        self.metrics.bytes_stored.fetch_sub(freed, Relaxed);
        let queued = if ops.is_empty() {
            None
        } else if lazy {
            self.writer.enqueue_lazy(ops);
            None
        } else {
            Some(self.writer.enqueue(ops, None))
        };
        drop(idx);
        (n, queued)
    }

    /// Deletes every committed envelope older than `ttl_ms`; returns the count.
    pub async fn expire(&self, ttl_ms: u64) -> Result<usize> {
        let cutoff = now_ms().saturating_sub(ttl_ms);
        let mut ops = Vec::new();
        let queued = {
            let mut idx = lock(&self.index);
            let (mut freed, mut n) = (0u64, 0usize);
            let Index {
                mailboxes, shared, ..
            } = &mut *idx;
            for (m, mb) in mailboxes.iter_mut() {
                while let Some((&seq, e)) = mb.entries.first_key_value() {
                    if !e.committed || e.created_ms > cutoff {
                        break;
                    }
                    let Some(e) = mb.remove(seq) else {
                        break;
                    };
                    freed += u64::from(e.len);
                    forget(shared, m, seq, &e, &mut ops);
                    n += 1;
                }
            }
            // Forget empty, idle mailboxes so the index does not grow forever.
            idx.mailboxes.retain(|_, mb| {
                !mb.entries.is_empty()
                    || mb.push_token.is_some()
                    || mb.verifier.is_some()
                    || mb.prekeys_low.is_some()
                    || mb.changed.receiver_count() > 0
            });
            self.metrics.queue_depth.fetch_sub(n as u64, Relaxed);
            self.metrics.bytes_stored.fetch_sub(freed, Relaxed);
            // Queued before the lock is let go, like an ack's deletes: an
            // `Ack` that then finds these envelopes gone queues its barrier
            // behind them.
            (!ops.is_empty()).then(|| (n, self.writer.enqueue(ops, None)))
        };
        let Some((n, rx)) = queued else {
            return Ok(0);
        };
        Writer::wait(rx).await?;
        self.metrics.envelopes_expired.fetch_add(n as u64, Relaxed);
        Ok(n)
    }

    /// Makes the caller the mailbox's only push subscription: the receiver it
    /// gets changes whenever the mailbox gains an envelope or a prekey-low
    /// notice (holding it marks the device online: no webhook), the returned
    /// [`SubscriberSlot`] resolves once a newer subscription replaces this one
    /// (so pushes never go to a stale connection), and the queue carries its
    /// ephemeral payloads.
    pub fn subscribe(
        &self,
        m: &MailboxId,
    ) -> (
        watch::Receiver<u64>,
        SubscriberSlot,
        mpsc::Receiver<Vec<u8>>,
    ) {
        let mut idx = lock(&self.index);
        let mb = idx.mailboxes.entry(*m).or_insert_with(Mailbox::new);
        let mut generation = 0;
        mb.subscriber.send_modify(|g| {
            *g = g.wrapping_add(1);
            generation = *g;
        });
        let mut rx = mb.subscriber.subscribe();
        rx.mark_unchanged();
        // The previous subscription's queue is dropped with its sender: what
        // waited in it is gone (deliver now or never).
        let (tx, ephemeral) = mpsc::channel(EPHEMERAL_QUEUE);
        mb.ephemeral = Some(tx);
        (
            mb.changed.subscribe(),
            SubscriberSlot { rx, generation },
            ephemeral,
        )
    }

    /// Hands ephemeral payloads to their mailboxes' live subscriptions, and
    /// drops each that finds none (or a full queue): never stored, never
    /// redelivered. A mailbox without a delivery-token verifier, or an item
    /// without its token, is refused: strangers send no live signals. Each
    /// item's result says only whether it was refused, not whether it was
    /// delivered.
    pub fn submit_ephemeral(&self, items: Vec<Submission>) -> Vec<Result<()>> {
        // Tokens are hashed before the index lock is taken (as `submit`).
        let items: Vec<_> = items
            .into_iter()
            .map(|s| {
                let presented = presented_verifier(&s.delivery_token);
                (s, presented)
            })
            .collect();
        let mut idx = lock(&self.index);
        let mut out = Vec::with_capacity(items.len());
        for (s, presented) in items {
            if s.payload.len() > EPHEMERAL_MAX_BYTES {
                out.push(Err(too_large()));
                continue;
            }
            let Some(mb) = idx.mailboxes.get_mut(&s.to) else {
                // No state at all: no verifier, hence no contact can prove itself.
                out.push(Err(no_live_token()));
                continue;
            };
            match (&mb.verifier, mb.lane(presented)) {
                (Some(_), Ok(false)) => {}
                (None, _) | (Some(_), Ok(true)) => {
                    out.push(Err(no_live_token()));
                    continue;
                }
                (Some(_), Err(e)) => {
                    out.push(Err(e));
                    continue;
                }
            }
            let delivered = match &mb.ephemeral {
                Some(tx) => match tx.try_send(s.payload) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => false,
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        mb.ephemeral = None;
                        false
                    }
                },
                None => false,
            };
            let counter = if delivered {
                &self.metrics.ephemeral_delivered
            } else {
                &self.metrics.ephemeral_dropped
            };
            counter.fetch_add(1, Relaxed);
            out.push(Ok(()));
        }
        out
    }

    /// Records that `m`'s one-time prekeys are low and wakes its subscription.
    pub fn flag_prekeys_low(&self, m: &MailboxId, counts: PrekeyCounts) {
        let mut idx = lock(&self.index);
        let mb = idx.mailboxes.entry(*m).or_insert_with(Mailbox::new);
        mb.prekeys_low = Some(counts);
        mb.bump();
    }

    /// Takes a pending prekey-low notice.
    pub fn take_prekeys_low(&self, m: &MailboxId) -> Option<PrekeyCounts> {
        lock(&self.index)
            .mailboxes
            .get_mut(m)
            .and_then(|mb| mb.prekeys_low.take())
    }

    /// Registers (32 bytes) or (empty) clears the mailbox's delivery-token
    /// verifier, durably; see [`crate::auth::delivery_verifier`].
    pub async fn set_delivery_verifier(&self, m: &MailboxId, verifier: &[u8]) -> Result<()> {
        let v = match verifier.len() {
            0 => None,
            32 => <[u8; 32]>::try_from(verifier).ok(),
            _ => {
                return Err(RelayError::refusal(
                    ErrorCode::InvalidArgument,
                    "a delivery-token verifier is 32 bytes",
                ))
            }
        };
        let op = match v {
            None => DbOp::Delete(Cf::DeliveryTokens, m.0.to_vec()),
            Some(v) => DbOp::Put(Cf::DeliveryTokens, m.0.to_vec(), v.to_vec()),
        };
        // Applied in commit order (the writer's completion), so two
        // registrations racing leave memory as the disk: the last one.
        let index = self.index.clone();
        let m = *m;
        let apply = move |ok: bool| {
            if ok {
                lock(&index)
                    .mailboxes
                    .entry(m)
                    .or_insert_with(Mailbox::new)
                    .verifier = v;
            }
        };
        self.writer.write(vec![op], Some(Box::new(apply))).await
    }

    /// Registers or (empty) clears the mailbox's push token, durably.
    pub async fn set_push_token(&self, m: &MailboxId, token: Vec<u8>) -> Result<()> {
        let op = if token.is_empty() {
            DbOp::Delete(Cf::PushTokens, m.0.to_vec())
        } else {
            DbOp::Put(Cf::PushTokens, m.0.to_vec(), token.clone())
        };
        self.writer.write(vec![op], None).await?;
        let mut idx = lock(&self.index);
        idx.mailboxes
            .entry(*m)
            .or_insert_with(Mailbox::new)
            .push_token = (!token.is_empty()).then_some(token);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn open(dir: &std::path::Path) -> Mailboxes {
        open_with_lease(dir, SEQ_LEASE)
    }

    fn open_with_lease(dir: &std::path::Path, lease: u64) -> Mailboxes {
        let db = Arc::new(Db::open(dir).unwrap());
        let metrics = Arc::new(Metrics::default());
        let writer = Arc::new(Writer::start(db.clone(), metrics.clone()).unwrap());
        let quota = Quota {
            max_envelopes: 100,
            max_bytes: 1 << 20,
            max_envelope_bytes: 1024,
            stranger_max_envelopes: 5,
            stranger_max_bytes: 1 << 20,
        };
        Mailboxes::load_with_lease(db, writer, metrics, None, quota, lease).unwrap()
    }

    /// Shared payload rows on disk.
    fn shared_rows(mbx: &Mailboxes) -> usize {
        let mut n = 0;
        mbx.db
            .scan(Cf::SharedPayloads, &[], &[0xff; 9], |_, _| {
                n += 1;
                Ok(true)
            })
            .unwrap();
        n
    }

    #[tokio::test]
    async fn a_shared_payload_is_stored_once_and_goes_with_its_last_reference_across_restarts() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, c) = (MailboxId([1; 32]), MailboxId([2; 32]), MailboxId([3; 32]));
        let mbx = open(tmp.path());
        let ids: Vec<EnvelopeId> = mbx
            .submit_shared(
                vec![7; 100],
                vec![(a, Vec::new()), (b, Vec::new()), (c, Vec::new())],
            )
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(ids.len(), 3);
        assert!(ids.windows(2).all(|w| w[0] != w[1]), "one id per recipient");
        assert_eq!(shared_rows(&mbx), 1, "the payload is stored once");
        for (m, id) in [(a, ids[0]), (b, ids[1]), (c, ids[2])] {
            let (page, _) = mbx.fetch(&m, 0, 10, 1 << 20).unwrap();
            assert_eq!(page.len(), 1);
            assert_eq!(
                (page[0].id, page[0].payload.as_slice()),
                (id, &[7u8; 100][..])
            );
        }
        // An ack by one recipient (or another mailbox's id) leaves it to the others.
        assert_eq!(mbx.ack(&a, &[ids[0], ids[1]]).await.unwrap(), 1);
        assert_eq!(shared_rows(&mbx), 1);
        mbx.writer.shutdown();
        drop(mbx);
        // A restart counts the references again from the index records.
        let mbx = open(tmp.path());
        assert!(mbx.fetch(&a, 0, 10, 1 << 20).unwrap().0.is_empty());
        assert_eq!(
            mbx.fetch(&b, 0, 10, 1 << 20).unwrap().0[0].payload,
            vec![7; 100]
        );
        assert_eq!(mbx.ack(&b, &[ids[1]]).await.unwrap(), 1);
        assert_eq!(shared_rows(&mbx), 1);
        // The last one goes with the payload.
        assert_eq!(mbx.expire(0).await.unwrap(), 1);
        assert_eq!(shared_rows(&mbx), 0);
        assert!(mbx.fetch(&c, 0, 10, 1 << 20).unwrap().0.is_empty());
        mbx.writer.shutdown();
    }

    #[tokio::test]
    async fn an_envelope_whose_shared_payload_is_gone_is_dropped_at_start_not_kept_unreadable() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (MailboxId([1; 32]), MailboxId([2; 32]));
        let mbx = open(tmp.path());
        let ids: Vec<EnvelopeId> = mbx
            .submit_shared(vec![7; 100], vec![(a, Vec::new()), (b, Vec::new())])
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        // What a failed ack write and a later ack can leave: the records,
        // without the payload.
        let mut gone = rocksdb::WriteBatch::default();
        mbx.db
            .scan(Cf::SharedPayloads, &[], &[0xff; 9], |k, _| {
                gone.delete_cf(mbx.db.cf(Cf::SharedPayloads).unwrap(), k);
                Ok(true)
            })
            .unwrap();
        mbx.db.write_synced(gone).unwrap();
        assert_eq!(mbx.ack(&a, &[ids[0]]).await.unwrap(), 1);
        mbx.writer.shutdown();
        drop(mbx);
        let mbx = open(tmp.path());
        assert!(mbx.fetch(&b, 0, 10, 1 << 20).unwrap().0.is_empty());
        // Its quota is free again: 100 envelopes fit.
        let fill: Vec<(MailboxId, Vec<u8>)> = (0..100).map(|_| (b, vec![1])).collect();
        assert!(mbx.submit(fill).await.iter().all(|r| r.is_ok()));
        mbx.writer.shutdown();
    }

    #[tokio::test]
    async fn a_shared_send_refuses_only_the_recipients_that_cannot_take_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, c) = (MailboxId([1; 32]), MailboxId([2; 32]), MailboxId([3; 32]));
        let mbx = open(tmp.path());
        // B's queue is full (quota: 100 envelopes).
        let fill: Vec<(MailboxId, Vec<u8>)> = (0..100).map(|_| (b, vec![1])).collect();
        assert!(mbx.submit(fill).await.iter().all(|r| r.is_ok()));
        // C registered a delivery token; a wrong one is refused.
        mbx.set_delivery_verifier(&c, &crate::auth::delivery_verifier(&[5; 32]))
            .await
            .unwrap();
        let r = mbx
            .submit_shared(
                vec![9; 10],
                vec![(a, Vec::new()), (b, Vec::new()), (c, vec![6; 32])],
            )
            .await;
        assert!(r[0].is_ok());
        assert_eq!(r[1].as_ref().unwrap_err().code(), ErrorCode::QuotaExceeded);
        assert_eq!(
            r[2].as_ref().unwrap_err().code(),
            ErrorCode::BadDeliveryToken
        );
        // Too large: refused for everyone, nothing stored.
        let r = mbx
            .submit_shared(vec![0; 2000], vec![(a, Vec::new())])
            .await;
        assert_eq!(
            r[0].as_ref().unwrap_err().code(),
            ErrorCode::EnvelopeTooLarge
        );
        assert_eq!(shared_rows(&mbx), 1);
        mbx.writer.shutdown();
    }

    #[tokio::test]
    async fn index_records_rebuild_the_queue_and_old_databases_are_migrated() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (MailboxId([1; 32]), MailboxId([2; 32]));
        // A database written before index records existed: envelopes only.
        {
            let db = Db::open(tmp.path()).unwrap();
            for (m, seq) in [(a, 3u64), (b, 4), (a, 7)] {
                let mut v = 1000u64.to_be_bytes().to_vec();
                v.extend_from_slice(&[seq as u8; 10]);
                db.raw()
                    .put_cf(db.cf(Cf::Envelopes).unwrap(), key(&m, seq), v)
                    .unwrap();
            }
        }
        let check = |mbx: &Mailboxes| {
            let (page, more) = mbx.fetch(&a, 0, 10, 1 << 20).unwrap();
            assert!(!more);
            let ids: Vec<_> = page.iter().map(|s| s.id).collect();
            assert_eq!(
                ids,
                vec![EnvelopeId::new(1000, 3), EnvelopeId::new(1000, 7)]
            );
            assert_eq!(page[1].payload, vec![7u8; 10]);
            assert_eq!(mbx.fetch(&b, 0, 10, 1 << 20).unwrap().0.len(), 1);
        };
        let mbx = open(tmp.path());
        check(&mbx);
        // New envelopes continue the sequence and write index records.
        let id = mbx
            .submit(vec![(b, vec![9; 5])])
            .await
            .pop()
            .unwrap()
            .unwrap();
        assert!(id.seq() > 7);
        assert_eq!(mbx.ack(&a, &[EnvelopeId::new(1000, 3)]).await.unwrap(), 1);
        mbx.writer.shutdown();
        drop(mbx);

        // Restart: read from the index records only.
        let mbx = open(tmp.path());
        assert!(mbx.db.get(Cf::Meta, INDEX_MARKER).unwrap().is_some());
        let (page, _) = mbx.fetch(&a, 0, 10, 1 << 20).unwrap();
        assert_eq!(
            page.iter().map(|s| s.id).collect::<Vec<_>>(),
            vec![EnvelopeId::new(1000, 7)]
        );
        let (page, _) = mbx.fetch(&b, 0, 10, 1 << 20).unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(page[1].id, id);
        assert_eq!(page[1].payload, vec![9; 5]);
        mbx.writer.shutdown();
    }

    #[tokio::test]
    async fn stream_acks_cost_no_fsync_of_their_own_and_an_ack_waits_behind_them() {
        let tmp = tempfile::tempdir().unwrap();
        let a = MailboxId([5; 32]);
        let mbx = open(tmp.path());
        let mut ids = Vec::new();
        for i in 0..3u8 {
            let sent = mbx.submit(vec![(a, vec![i; 8])]).await;
            ids.push(sent.into_iter().next().unwrap().unwrap());
        }
        let commits = || mbx.metrics.commits.load(Relaxed);
        let before = commits();
        assert_eq!(mbx.ack_unconfirmed(&a, &ids[..2]), 2);
        // Gone from the mailbox at once.
        let (page, _) = mbx.fetch(&a, 0, 10, 1 << 20).unwrap();
        assert_eq!(page.iter().map(|s| s.id).collect::<Vec<_>>(), vec![ids[2]]);
        // Written on its own (nothing else is queued), as a lazy batch, not a
        // commit (a durable job would never count here, so this would time out).
        let t0 = std::time::Instant::now();
        while mbx.metrics.lazy_writes.load(Relaxed) == 0 {
            assert!(
                t0.elapsed().as_secs() < 10,
                "stream acks written as a commit"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(commits(), before, "a batch of stream acks was fsynced");
        let stored = |id: &EnvelopeId| {
            mbx.db
                .get(Cf::Envelopes, &key(&a, id.seq()))
                .unwrap()
                .is_some()
        };
        assert!(!stored(&ids[0]) && !stored(&ids[1]) && stored(&ids[2]));
        // A confirmed ack of the same ids finds nothing to delete and waits
        // for a barrier queued behind the deletes: one synced commit.
        assert_eq!(mbx.ack(&a, &ids[..2]).await.unwrap(), 0);
        assert_eq!(commits(), before + 1);
        mbx.writer.shutdown();
        drop(mbx);
        // The deletes are kept across a restart.
        let mbx = open(tmp.path());
        let (page, _) = mbx.fetch(&a, 0, 10, 1 << 20).unwrap();
        assert_eq!(page.iter().map(|s| s.id).collect::<Vec<_>>(), vec![ids[2]]);
        mbx.writer.shutdown();
    }

    fn lease(mbx: &Mailboxes) -> u64 {
        let v = mbx.db.get(Cf::Meta, b"seq").unwrap().unwrap();
        u64::from_be_bytes(v.as_slice().try_into().unwrap())
    }

    #[tokio::test]
    async fn early_pushes_stay_under_the_durable_lease_and_restarts_resume_above_it() {
        let tmp = tempfile::tempdir().unwrap();
        let m = MailboxId([6; 32]);
        let mbx = open(tmp.path());
        let first = lease(&mbx);
        let ids: Vec<_> = mbx
            .submit((0..10u8).map(|i| (m, vec![i; 4])).collect())
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        let (live, _) = mbx.fetch_live(&m, 0, 100, 1 << 20).unwrap();
        assert_eq!(live.iter().map(|s| s.id).collect::<Vec<_>>(), ids);
        assert!(
            ids.iter().all(|id| id.seq() <= first),
            "pushable above the lease"
        );
        mbx.writer.shutdown();
        drop(mbx);
        // After a restart (a crash may have lost envelopes already pushed),
        // sequence numbers continue above everything the old lease covered.
        let mbx = open(tmp.path());
        assert!(lease(&mbx) > first);
        let id = mbx.submit(vec![(m, vec![1])]).await.pop().unwrap().unwrap();
        assert!(id.seq() > first);
        mbx.writer.shutdown();
    }

    #[tokio::test]
    async fn renewals_under_load_keep_every_number_covered_and_restarts_above_them() {
        let tmp = tempfile::tempdir().unwrap();
        let m = MailboxId([7; 32]);
        // A lease of 4: nearly every batch renews, while other batches are
        // still allocating numbers.
        let mbx = Arc::new(open_with_lease(tmp.path(), 4));
        let (_changed, _slot, _live) = mbx.subscribe(&m); // so envelopes go out early
        let tasks: Vec<_> = (0..30u8)
            .map(|i| {
                let mbx = mbx.clone();
                tokio::spawn(async move { mbx.submit(vec![(m, vec![i; 4]); 3]).await })
            })
            .collect();
        let mut highest = 0;
        for t in tasks {
            for r in t.await.unwrap() {
                highest = highest.max(r.unwrap().seq());
            }
        }
        assert!(
            lease(&mbx) >= highest,
            "a committed number above the stored reservation"
        );
        let (live, _) = mbx.fetch_live(&m, 0, 100, 1 << 20).unwrap();
        assert_eq!(live.len(), 90);
        assert!(
            live.windows(2).all(|w| w[0].id.seq() < w[1].id.seq()),
            "FIFO"
        );
        mbx.writer.shutdown();
        drop(live);
        let Ok(mbx) = Arc::try_unwrap(mbx) else {
            panic!("still shared")
        };
        drop(mbx);
        let mbx = open_with_lease(tmp.path(), 4);
        let id = mbx.submit(vec![(m, vec![1])]).await.pop().unwrap().unwrap();
        assert!(id.seq() > highest, "a number reused after restart");
        mbx.writer.shutdown();
    }

    #[tokio::test]
    async fn a_new_subscription_supersedes_the_old_one() {
        let tmp = tempfile::tempdir().unwrap();
        let mbx = open(tmp.path());
        let m = MailboxId([5; 32]);
        let (_c1, mut s1, _l1) = mbx.subscribe(&m);
        assert!(!s1.is_superseded());
        let (_c2, s2, _l2) = mbx.subscribe(&m);
        tokio::time::timeout(std::time::Duration::from_secs(5), s1.superseded())
            .await
            .unwrap();
        assert!(s1.is_superseded());
        assert!(!s2.is_superseded());
        mbx.writer.shutdown();
    }

    #[tokio::test]
    async fn ephemeral_payloads_reach_only_the_live_subscription_and_only_with_the_token() {
        let tmp = tempfile::tempdir().unwrap();
        let mbx = open(tmp.path());
        let m = MailboxId([9; 32]);
        let token = [3u8; 32];
        mbx.set_delivery_verifier(&m, &crate::auth::delivery_verifier(&token))
            .await
            .unwrap();
        let item = |payload: &[u8], token: &[u8]| Submission {
            to: m,
            payload: payload.to_vec(),
            delivery_token: token.to_vec(),
        };
        // Nobody listening: accepted and gone.
        assert!(mbx.submit_ephemeral(vec![item(b"lost", &token)])[0].is_ok());
        let (_c1, _s1, mut old) = mbx.subscribe(&m);
        let r = mbx.submit_ephemeral(vec![
            item(b"old", &token),
            item(b"no token", b""),
            item(b"bad", &[4u8; 32]),
        ]);
        assert!(r[0].is_ok());
        for e in &r[1..] {
            assert_eq!(e.as_ref().unwrap_err().code(), ErrorCode::BadDeliveryToken);
        }
        // A newer subscription takes over; what waited for the old one is
        // not handed on, and the old queue ends.
        let (_c2, _s2, mut new) = mbx.subscribe(&m);
        assert!(mbx.submit_ephemeral(vec![item(b"new", &token)])[0].is_ok());
        assert_eq!(old.recv().await.unwrap(), b"old");
        assert!(old.recv().await.is_none());
        assert_eq!(new.recv().await.unwrap(), b"new");
        // A full queue drops the excess instead of growing.
        for _ in 0..EPHEMERAL_QUEUE + 5 {
            assert!(mbx.submit_ephemeral(vec![item(b"burst", &token)])[0].is_ok());
        }
        let mut n = 0;
        while new.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, EPHEMERAL_QUEUE);
        assert_eq!(mbx.metrics.ephemeral_dropped.load(Relaxed), 6);
        mbx.writer.shutdown();
    }
}
