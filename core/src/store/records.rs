//! The record layout of [`crate::device::Device`]: how every row (identity,
//! prekeys, sessions and their index, skipped message keys, contacts,
//! consumed one-time prekeys) is keyed, encoded and read back through a
//! [`Txn`]. PROTOCOL.md I.8 describes the same layout for a second
//! implementation; `Device` decides what to write, this module how.

use prost::Message;
use sotto_proto::store as rec;
use zeroize::{Zeroize, Zeroizing};

use crate::device::MAX_ARCHIVED_SESSIONS;
use crate::error::{Error, Result};
use crate::keys::{KemKeyPair, X25519KeyPair};
use crate::prekeys::{KemPrekey, OneTimePrekey, SignedPrekey};
use crate::ratchet::MessageKey;
use crate::session::{SessionState, SkippedKeys};
use crate::session_cache::SessionCache;
use crate::store::{Table, Txn};
use crate::trust::Contact;

/// The row of this device's identity (`Table::Local`).
pub(crate) const IDENTITY_KEY: &[u8] = b"identity";
/// The row of the prekey id counters (`Table::Local`).
pub(crate) const COUNTERS_KEY: &[u8] = b"prekey_counters";

pub(crate) fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

pub(crate) fn get_proto<M: Message + Default>(
    tx: &impl Txn,
    table: Table,
    key: &[u8],
) -> Result<Option<M>> {
    match tx.get(table, key)? {
        None => Ok(None),
        Some(v) => M::decode(v.as_slice())
            .map(Some)
            .map_err(|_| Error::CorruptRecord {
                table: table.name(),
            }),
    }
}

pub(crate) fn put_proto<M: Message>(
    tx: &mut impl Txn,
    table: Table,
    key: &[u8],
    m: &M,
) -> Result<()> {
    let mut bytes = m.encode_to_vec();
    let r = tx.put(table, key, &bytes);
    bytes.zeroize();
    r
}

/// Wipes the secret fields of a decoded or encoded session record.
pub(crate) fn scrub_session(r: &mut rec::SessionRecord) {
    r.root_key.zeroize();
    r.our_ratchet_secret.zeroize();
    if let Some(s) = r.sending.as_mut() {
        s.chain_key.zeroize();
    }
    for c in &mut r.receiving {
        c.chain_key.zeroize();
    }
}

pub(crate) fn load_counters(tx: &impl Txn) -> Result<rec::PrekeyCounters> {
    get_proto(tx, Table::Local, COUNTERS_KEY)?.ok_or(Error::NoIdentity)
}

pub(crate) fn load_signed(tx: &impl Txn, id: u32) -> Result<Option<SignedPrekey>> {
    let Some(mut r) =
        get_proto::<rec::SignedPrekeyRecord>(tx, Table::SignedPrekey, &id.to_be_bytes())?
    else {
        return Ok(None);
    };
    let corrupt = Error::CorruptRecord {
        table: "signed_prekey",
    };
    let key = X25519KeyPair::from_slice(&r.secret, "signed prekey");
    r.secret.zeroize();
    Ok(Some(SignedPrekey {
        id,
        key: key?,
        signature: r.signature.as_slice().try_into().map_err(|_| corrupt)?,
        created_at: r.created_at,
        retired_at: (r.retired_at != 0).then_some(r.retired_at),
    }))
}

pub(crate) fn save_signed(tx: &mut impl Txn, k: &SignedPrekey) -> Result<()> {
    let mut r = rec::SignedPrekeyRecord {
        id: k.id,
        secret: k.key.secret_bytes().to_vec(),
        signature: k.signature.to_vec(),
        created_at: k.created_at,
        retired_at: k.retired_at.unwrap_or(0),
    };
    let out = put_proto(tx, Table::SignedPrekey, &k.id.to_be_bytes(), &r);
    r.secret.zeroize();
    out
}

pub(crate) fn load_kem(tx: &impl Txn, id: u32) -> Result<Option<KemPrekey>> {
    let Some(mut r) = get_proto::<rec::KemPrekeyRecord>(tx, Table::KemPrekey, &id.to_be_bytes())?
    else {
        return Ok(None);
    };
    let corrupt = Error::CorruptRecord {
        table: "kem_prekey",
    };
    let key = KemKeyPair::from_seed_slice(&r.seed);
    r.seed.zeroize();
    Ok(Some(KemPrekey {
        id,
        key: key?,
        signature: r.signature.as_slice().try_into().map_err(|_| corrupt)?,
        created_at: r.created_at,
        last_resort: r.last_resort,
        retired_at: (r.retired_at != 0).then_some(r.retired_at),
    }))
}

pub(crate) fn save_kem(tx: &mut impl Txn, k: &KemPrekey) -> Result<()> {
    let mut r = rec::KemPrekeyRecord {
        id: k.id,
        seed: k.key.seed().to_vec(),
        signature: k.signature.to_vec(),
        created_at: k.created_at,
        last_resort: k.last_resort,
        retired_at: k.retired_at.unwrap_or(0),
    };
    let out = put_proto(tx, Table::KemPrekey, &k.id.to_be_bytes(), &r);
    r.seed.zeroize();
    out
}

pub(crate) fn load_one_time(tx: &impl Txn, id: u32) -> Result<Option<OneTimePrekey>> {
    let Some(mut r) =
        get_proto::<rec::OneTimePrekeyRecord>(tx, Table::OneTimePrekey, &id.to_be_bytes())?
    else {
        return Ok(None);
    };
    let key = X25519KeyPair::from_slice(&r.secret, "one-time prekey");
    r.secret.zeroize();
    Ok(Some(OneTimePrekey { id, key: key? }))
}

/// The recorded identity of the remote device at encoded address `addr`.
pub(crate) fn load_contact(tx: &impl Txn, addr: &[u8]) -> Result<Option<Contact>> {
    match tx.get(Table::Contact, addr)? {
        None => Ok(None),
        Some(v) => Contact::decode(&v).map(Some),
    }
}

/// Fails with [`Error::NoSession`] unless `state` belongs to the identity
/// recorded for `addr`: a session never outlives the trust it was set up
/// under (see [`Device::accept_identity`]), it is as if it did not exist.
pub(crate) fn require_session_trusted(
    tx: &impl Txn,
    addr: &[u8],
    state: &SessionState,
) -> Result<()> {
    let recorded = load_contact(tx, addr)?.ok_or(Error::CorruptRecord { table: "contact" })?;
    if !recorded.identity.ct_eq(&state.remote_identity) {
        // A session of an identity no longer trusted does not exist.
        return Err(Error::NoSession);
    }
    Ok(())
}

/// Deletes one stored session: its row, its skipped keys, and its cache entry.
pub(crate) fn delete_session(
    tx: &mut impl Txn,
    cache: &mut SessionCache,
    addr: &[u8],
    sid: &[u8; 32],
) -> Result<()> {
    let key = cat(&[addr, sid]);
    tx.delete(Table::Session, &key)?;
    cache.forget(&key);
    tx.delete_prefix(Table::SkippedKey, &key)
}

pub(crate) fn load_index(tx: &impl Txn, addr: &[u8]) -> Result<Vec<[u8; 32]>> {
    let Some(idx) = get_proto::<rec::SessionIndex>(tx, Table::SessionIndex, addr)? else {
        return Ok(Vec::new());
    };
    idx.session_ids
        .iter()
        .map(|s| {
            s.as_slice().try_into().map_err(|_| Error::CorruptRecord {
                table: "session_index",
            })
        })
        .collect()
}

pub(crate) fn save_index(tx: &mut impl Txn, addr: &[u8], ids: &[[u8; 32]]) -> Result<()> {
    put_proto(
        tx,
        Table::SessionIndex,
        addr,
        &rec::SessionIndex {
            session_ids: ids.iter().map(|s| s.to_vec()).collect(),
        },
    )
}

pub(crate) fn load_session(
    tx: &impl Txn,
    cache: &mut SessionCache,
    addr: &[u8],
    sid: &[u8; 32],
) -> Result<SessionState> {
    let key = cat(&[addr, sid]);
    let row = tx.get(Table::Session, &key)?.ok_or(Error::CorruptRecord {
        table: "session_index",
    })?;
    if let Some(state) = cache.take(&key, &row) {
        return Ok(state);
    }
    let mut r = rec::SessionRecord::decode(row.as_slice())
        .map_err(|_| Error::CorruptRecord { table: "session" })?;
    let out = SessionState::from_record(&r).map_err(|_| Error::CorruptRecord { table: "session" });
    scrub_session(&mut r);
    out
}

/// Puts an unchanged, loaded session back into the cache (a load takes it out).
pub(crate) fn return_session(
    tx: &impl Txn,
    cache: &mut SessionCache,
    addr: &[u8],
    sid: &[u8; 32],
    state: SessionState,
) -> Result<()> {
    let key = cat(&[addr, sid]);
    if let Some(row) = tx.get(Table::Session, &key)? {
        cache.put(key, row, state);
    }
    Ok(())
}

pub(crate) fn save_session(
    tx: &mut impl Txn,
    cache: &mut SessionCache,
    addr: &[u8],
    state: SessionState,
) -> Result<()> {
    let mut r = state.to_record();
    let row = Zeroizing::new(r.encode_to_vec());
    scrub_session(&mut r);
    let key = cat(&[addr, &state.base_key]);
    tx.put(Table::Session, &key, &row)?;
    cache.put(key, row, state);
    Ok(())
}

/// Puts `sid` first in the index; drops (and deletes) sessions beyond the archive limit.
pub(crate) fn promote(
    tx: &mut impl Txn,
    cache: &mut SessionCache,
    addr: &[u8],
    mut ids: Vec<[u8; 32]>,
    sid: [u8; 32],
) -> Result<()> {
    ids.retain(|s| s != &sid);
    ids.insert(0, sid);
    while ids.len() > 1 + MAX_ARCHIVED_SESSIONS {
        if let Some(old) = ids.pop() {
            delete_session(tx, cache, addr, &old)?;
        }
    }
    save_index(tx, addr, &ids)
}

/// Skipped keys of one session, read through a transaction.
pub(crate) struct TxSkipped<'a, T: Txn> {
    pub(crate) tx: &'a T,
    pub(crate) prefix: Vec<u8>,
}

impl<T: Txn> SkippedKeys for TxSkipped<'_, T> {
    fn get(&self, ratchet_key: &[u8; 32], counter: u32) -> Result<Option<MessageKey>> {
        let key = cat(&[&self.prefix, ratchet_key, &counter.to_be_bytes()]);
        let Some(mut r) = get_proto::<rec::SkippedKeyRecord>(self.tx, Table::SkippedKey, &key)?
        else {
            return Ok(None);
        };
        let k = MessageKey::from_slice(&r.message_key, "skipped key");
        r.message_key.zeroize();
        k.map(Some)
    }
}

/// Writes a decrypt's change set: chain state row plus skipped-key rows.
pub(crate) fn commit_decrypt(
    tx: &mut impl Txn,
    cache: &mut SessionCache,
    addr: &[u8],
    state: SessionState,
    changes: crate::ratchet::RatchetChanges,
) -> Result<()> {
    let prefix = cat(&[addr, &state.base_key]);
    save_session(tx, cache, addr, state)?;
    if let Some((chain, n)) = changes.skipped_consumed {
        tx.delete(
            Table::SkippedKey,
            &cat(&[&prefix, &chain, &n.to_be_bytes()]),
        )?;
    }
    for s in changes.skipped_added {
        let r = rec::SkippedKeyRecord {
            message_key: s.key.as_bytes().to_vec(),
        };
        let key = cat(&[&prefix, &s.ratchet_key, &s.counter.to_be_bytes()]);
        let out = put_proto(tx, Table::SkippedKey, &key, &r);
        let mut r = r;
        r.message_key.zeroize();
        out?;
    }
    for (chain, from, to) in changes.skipped_evicted {
        tx.delete_range(
            Table::SkippedKey,
            &cat(&[&prefix, &chain, &from.to_be_bytes()]),
            &cat(&[&prefix, &chain, &to.to_be_bytes()]),
        )?;
    }
    for chain in changes.chains_dropped {
        tx.delete_prefix(Table::SkippedKey, &cat(&[&prefix, &chain]))?;
    }
    Ok(())
}

pub(crate) const CONSUMED_EC: u8 = 1;
pub(crate) const CONSUMED_KEM: u8 = 2;

pub(crate) fn consumed_key(kind: u8, id: u32) -> Vec<u8> {
    cat(&[&[kind], &id.to_be_bytes()])
}

/// The base key of the session that consumed one-time prekey `(kind, id)`,
/// while its record is kept.
pub(crate) fn consumed_by(tx: &impl Txn, kind: u8, id: u32) -> Result<Option<[u8; 32]>> {
    Ok(tx
        .get(Table::ConsumedPrekey, &consumed_key(kind, id))?
        .and_then(|v| v.get(8..40).and_then(|b| <[u8; 32]>::try_from(b).ok())))
}
