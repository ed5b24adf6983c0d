//! The high-level API an app (and the `Client`, and the FFI bindings) calls:
//! a [`Device`] owns this device's identity, its prekeys and one session per
//! remote device, all kept in a [`Store`].
//!
//! Every operation is one store transaction: it loads the few rows it needs,
//! computes the new state with the sans-IO [`SessionState`], and writes what
//! changed (the session's chain-state row, skipped-key rows, consumed prekeys)
//! only after the message authenticated. A crash therefore leaves either the
//! old state (the message can be decrypted again) or the new one (its key is
//! gone), never a lost or reusable key. [`Device::decrypt_with`] lets the
//! caller add its own writes (e.g. "envelope 42 processed") to that same
//! transaction.

use prost::Message;
use rand_core::CryptoRngCore;
use sotto_proto::store as rec;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::identity::{IdentityKey, IdentityKeyPair, SafetyNumber};
use crate::keys::{KemKeyPair, Secret32, X25519KeyPair};
use crate::padding::Padding;
use crate::prekeys::{
    signed_bundle_blob, KemPrekey, OneTimePrekey, PrekeyBundle, SignedPrekey, UploadItem,
    KEM_PREKEY_MAX_AGE_SECS, RETIRED_PREKEY_GRACE_SECS, SIGNED_PREKEY_MAX_AGE_SECS,
};
use crate::session::{MessageKind, OutgoingMessage, PreKeyMessage, SessionState, SkippedKeys};
use crate::session_cache::SessionCache;
use crate::store::{Store, Table, Txn};
use crate::trust::{self, Contact, TrustCheck, Verification};

/// Previous sessions kept per remote device besides the current one, so
/// messages in flight across a session replacement (simultaneous initiation,
/// a peer's reinstall) still decrypt. Each costs one small row plus its
/// skipped keys; libsignal keeps 40, which mostly preserves stale state.
pub const MAX_ARCHIVED_SESSIONS: usize = 5;

const IDENTITY_KEY: &[u8] = b"identity";
const COUNTERS_KEY: &[u8] = b"prekey_counters";

/// A remote device: an opaque user id (shared by all the user's devices,
/// which share one identity key) and a device id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceAddress {
    /// Opaque user id chosen by the app (at most 65,535 bytes).
    pub user: Vec<u8>,
    /// Device id within the user's account.
    pub device_id: u32,
}

impl DeviceAddress {
    /// Convenience constructor.
    pub fn new(user: impl Into<Vec<u8>>, device_id: u32) -> Self {
        DeviceAddress {
            user: user.into(),
            device_id,
        }
    }

    /// `u16 BE length || user || u32 BE device id`: a prefix-free row key.
    fn encode(&self) -> Result<Vec<u8>> {
        let len = u16::try_from(self.user.len()).map_err(|_| Error::Malformed {
            what: "user id too long",
        })?;
        let mut k = Vec::with_capacity(6 + self.user.len());
        k.extend_from_slice(&len.to_be_bytes());
        k.extend_from_slice(&self.user);
        k.extend_from_slice(&self.device_id.to_be_bytes());
        Ok(k)
    }
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn get_proto<M: Message + Default>(tx: &impl Txn, table: Table, key: &[u8]) -> Result<Option<M>> {
    match tx.get(table, key)? {
        None => Ok(None),
        Some(v) => M::decode(v.as_slice())
            .map(Some)
            .map_err(|_| Error::CorruptRecord {
                table: table.name(),
            }),
    }
}

fn put_proto<M: Message>(tx: &mut impl Txn, table: Table, key: &[u8], m: &M) -> Result<()> {
    let mut bytes = m.encode_to_vec();
    let r = tx.put(table, key, &bytes);
    bytes.zeroize();
    r
}

/// Wipes the secret fields of a decoded or encoded session record.
fn scrub_session(r: &mut rec::SessionRecord) {
    r.root_key.zeroize();
    r.our_ratchet_secret.zeroize();
    if let Some(s) = r.sending.as_mut() {
        s.chain_key.zeroize();
    }
    for c in &mut r.receiving {
        c.chain_key.zeroize();
    }
}

fn load_counters(tx: &impl Txn) -> Result<rec::PrekeyCounters> {
    get_proto(tx, Table::Local, COUNTERS_KEY)?.ok_or(Error::NoIdentity)
}

fn load_signed(tx: &impl Txn, id: u32) -> Result<Option<SignedPrekey>> {
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
    }))
}

fn save_signed(tx: &mut impl Txn, k: &SignedPrekey) -> Result<()> {
    let mut r = rec::SignedPrekeyRecord {
        id: k.id,
        secret: k.key.secret_bytes().to_vec(),
        signature: k.signature.to_vec(),
        created_at: k.created_at,
    };
    let out = put_proto(tx, Table::SignedPrekey, &k.id.to_be_bytes(), &r);
    r.secret.zeroize();
    out
}

fn load_kem(tx: &impl Txn, id: u32) -> Result<Option<KemPrekey>> {
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
    }))
}

fn save_kem(tx: &mut impl Txn, k: &KemPrekey) -> Result<()> {
    let mut r = rec::KemPrekeyRecord {
        id: k.id,
        seed: k.key.seed().to_vec(),
        signature: k.signature.to_vec(),
        created_at: k.created_at,
        last_resort: k.last_resort,
    };
    let out = put_proto(tx, Table::KemPrekey, &k.id.to_be_bytes(), &r);
    r.seed.zeroize();
    out
}

fn load_one_time(tx: &impl Txn, id: u32) -> Result<Option<OneTimePrekey>> {
    let Some(mut r) =
        get_proto::<rec::OneTimePrekeyRecord>(tx, Table::OneTimePrekey, &id.to_be_bytes())?
    else {
        return Ok(None);
    };
    let key = X25519KeyPair::from_slice(&r.secret, "one-time prekey");
    r.secret.zeroize();
    Ok(Some(OneTimePrekey { id, key: key? }))
}

fn load_contact(tx: &impl Txn, user: &[u8]) -> Result<Option<Contact>> {
    match tx.get(Table::Contact, user)? {
        None => Ok(None),
        Some(v) => Contact::decode(&v).map(Some),
    }
}

fn load_index(tx: &impl Txn, addr: &[u8]) -> Result<Vec<[u8; 32]>> {
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

fn save_index(tx: &mut impl Txn, addr: &[u8], ids: &[[u8; 32]]) -> Result<()> {
    put_proto(
        tx,
        Table::SessionIndex,
        addr,
        &rec::SessionIndex {
            session_ids: ids.iter().map(|s| s.to_vec()).collect(),
        },
    )
}

fn load_session(
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

fn save_session(
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
fn promote(
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
            let key = cat(&[addr, &old]);
            tx.delete(Table::Session, &key)?;
            cache.forget(&key);
            tx.delete_prefix(Table::SkippedKey, &cat(&[addr, &old]))?;
        }
    }
    save_index(tx, addr, &ids)
}

/// Skipped keys of one session, read through a transaction.
struct TxSkipped<'a, T: Txn> {
    tx: &'a T,
    prefix: Vec<u8>,
}

impl<T: Txn> SkippedKeys for TxSkipped<'_, T> {
    fn get(&self, ratchet_key: &[u8; 32], counter: u32) -> Result<Option<Secret32>> {
        let key = cat(&[&self.prefix, ratchet_key, &counter.to_be_bytes()]);
        let Some(mut r) = get_proto::<rec::SkippedKeyRecord>(self.tx, Table::SkippedKey, &key)?
        else {
            return Ok(None);
        };
        let k = Secret32::from_slice(&r.message_key, "skipped key");
        r.message_key.zeroize();
        k.map(Some)
    }
}

/// Writes a decrypt's change set: chain state row plus skipped-key rows.
fn commit_decrypt(
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

/// Current unix time in seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// This device: identity, prekeys and sessions over a [`Store`].
pub struct Device<S: Store> {
    store: S,
    identity: IdentityKeyPair,
    device_id: u32,
    padding: Padding,
    /// Decoded session rows, checked against the store on every use.
    sessions: SessionCache,
}

impl<S: Store> core::fmt::Debug for Device<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Device")
            .field("identity", &self.identity)
            .field("device_id", &self.device_id)
            .finish()
    }
}

impl<S: Store> Device<S> {
    /// Creates a new device in an empty store: a fresh identity, a signed
    /// prekey and a last-resort KEM prekey. Fails if the store already holds one.
    pub fn create(
        store: S,
        device_id: u32,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self> {
        let identity = IdentityKeyPair::generate(rng);
        Self::create_with_identity(store, identity, device_id, now, rng)
    }

    /// Creates a device of an existing user (device linking): the user's
    /// identity key pair comes from another device of the same user.
    pub fn create_with_identity(
        mut store: S,
        identity: IdentityKeyPair,
        device_id: u32,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self> {
        let signed = SignedPrekey::generate(&identity, device_id, 1, now, rng);
        let kem = KemPrekey::generate(&identity, device_id, 1, true, now, rng);
        store.transaction(|tx| {
            if tx.get(Table::Local, IDENTITY_KEY)?.is_some() {
                return Err(Error::Storage("store already holds an identity".into()));
            }
            let mut r = rec::IdentityRecord {
                version: 1,
                signing_secret: identity.signing_secret().to_vec(),
                dh_secret: identity.dh().secret_bytes().to_vec(),
                device_id,
            };
            let out = put_proto(tx, Table::Local, IDENTITY_KEY, &r);
            r.signing_secret.zeroize();
            r.dh_secret.zeroize();
            out?;
            save_signed(tx, &signed)?;
            save_kem(tx, &kem)?;
            put_proto(
                tx,
                Table::Local,
                COUNTERS_KEY,
                &rec::PrekeyCounters {
                    next_signed_prekey_id: 2,
                    next_one_time_prekey_id: 1,
                    next_kem_prekey_id: 2,
                    current_signed_prekey_id: 1,
                    current_kem_prekey_id: 1,
                },
            )
        })?;
        Ok(Device {
            store,
            identity,
            device_id,
            padding: Padding::default(),
            sessions: SessionCache::default(),
        })
    }

    /// Opens an existing device from its store.
    pub fn open(store: S) -> Result<Self> {
        let v = store
            .get(Table::Local, IDENTITY_KEY)?
            .ok_or(Error::NoIdentity)?;
        let mut r = rec::IdentityRecord::decode(v.as_slice())
            .map_err(|_| Error::CorruptRecord { table: "local" })?;
        let identity = IdentityKeyPair::from_secret_bytes(&r.signing_secret, &r.dh_secret);
        r.signing_secret.zeroize();
        r.dh_secret.zeroize();
        Ok(Device {
            store,
            identity: identity?,
            device_id: r.device_id,
            padding: Padding::default(),
            sessions: SessionCache::default(),
        })
    }

    /// This device's public identity.
    pub fn identity(&self) -> &IdentityKey {
        self.identity.public()
    }

    /// This device's id.
    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    /// Sets the padding policy for outgoing messages.
    pub fn set_padding(&mut self, padding: Padding) {
        self.padding = padding;
    }

    /// The store (e.g. to read [`Table::App`] rows).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, mutably (e.g. to commit [`Table::App`] rows).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// The identity key pair (for signing device lists and for linking a new
    /// device of this user).
    pub fn identity_pair(&self) -> &IdentityKeyPair {
        &self.identity
    }

    /// Gives the store back (e.g. to simulate a restart in tests).
    pub fn into_store(self) -> S {
        self.store
    }

    /// The signed bundle blob to upload to the relay.
    pub fn signed_bundle(&mut self) -> Result<Vec<u8>> {
        let (identity, device_id) = (&self.identity, self.device_id);
        self.store.transaction(|tx| {
            let c = load_counters(tx)?;
            let signed = load_signed(tx, c.current_signed_prekey_id)?.ok_or(Error::NoIdentity)?;
            let kem = load_kem(tx, c.current_kem_prekey_id)?.ok_or(Error::NoIdentity)?;
            Ok(signed_bundle_blob(identity, device_id, &signed, &kem))
        })
    }

    /// Generates and stores `ec` one-time X25519 prekeys and `kem` signed
    /// one-time ML-KEM prekeys; returns the relay items to upload.
    pub fn generate_one_time_prekeys(
        &mut self,
        ec: u32,
        kem: u32,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Vec<UploadItem>, Vec<UploadItem>)> {
        let (identity, device_id) = (&self.identity, self.device_id);
        self.store.transaction(|tx| {
            let mut c = load_counters(tx)?;
            let mut ec_items = Vec::with_capacity(ec as usize);
            for _ in 0..ec {
                let k = OneTimePrekey::generate(c.next_one_time_prekey_id, rng);
                c.next_one_time_prekey_id += 1;
                let mut r = rec::OneTimePrekeyRecord {
                    id: k.id,
                    secret: k.key.secret_bytes().to_vec(),
                };
                let out = put_proto(tx, Table::OneTimePrekey, &k.id.to_be_bytes(), &r);
                r.secret.zeroize();
                out?;
                ec_items.push(k.upload_item());
            }
            let mut kem_items = Vec::with_capacity(kem as usize);
            for _ in 0..kem {
                let k =
                    KemPrekey::generate(identity, device_id, c.next_kem_prekey_id, false, now, rng);
                c.next_kem_prekey_id += 1;
                save_kem(tx, &k)?;
                kem_items.push(k.upload_item());
            }
            put_proto(tx, Table::Local, COUNTERS_KEY, &c)?;
            Ok((ec_items, kem_items))
        })
    }

    /// Rotates the signed prekey and the last-resort KEM prekey when they are
    /// older than their maximum age, and deletes retired ones past the grace
    /// period. Returns true when the signed bundle changed (re-upload it).
    pub fn rotate_prekeys(&mut self, now: u64, rng: &mut impl CryptoRngCore) -> Result<bool> {
        let (identity, device_id) = (&self.identity, self.device_id);
        self.store.transaction(|tx| {
            let mut c = load_counters(tx)?;
            let mut changed = false;
            let signed = load_signed(tx, c.current_signed_prekey_id)?.ok_or(Error::NoIdentity)?;
            if signed.needs_rotation(now) {
                let k =
                    SignedPrekey::generate(identity, device_id, c.next_signed_prekey_id, now, rng);
                c.current_signed_prekey_id = k.id;
                c.next_signed_prekey_id += 1;
                save_signed(tx, &k)?;
                changed = true;
            }
            let kem = load_kem(tx, c.current_kem_prekey_id)?.ok_or(Error::NoIdentity)?;
            if kem.needs_rotation(now) {
                let k =
                    KemPrekey::generate(identity, device_id, c.next_kem_prekey_id, true, now, rng);
                c.current_kem_prekey_id = k.id;
                c.next_kem_prekey_id += 1;
                save_kem(tx, &k)?;
                changed = true;
            }
            for key in tx.keys_with_prefix(Table::SignedPrekey, &[])? {
                let Ok(id_bytes) = <[u8; 4]>::try_from(key.as_slice()) else {
                    continue;
                };
                let id = u32::from_be_bytes(id_bytes);
                if id == c.current_signed_prekey_id {
                    continue;
                }
                if let Some(k) = load_signed(tx, id)? {
                    if now.saturating_sub(k.created_at)
                        > SIGNED_PREKEY_MAX_AGE_SECS + RETIRED_PREKEY_GRACE_SECS
                    {
                        tx.delete(Table::SignedPrekey, &key)?;
                    }
                }
            }
            for key in tx.keys_with_prefix(Table::KemPrekey, &[])? {
                let Ok(id_bytes) = <[u8; 4]>::try_from(key.as_slice()) else {
                    continue;
                };
                let id = u32::from_be_bytes(id_bytes);
                if id == c.current_kem_prekey_id {
                    continue;
                }
                if let Some(k) = load_kem(tx, id)? {
                    if k.last_resort
                        && now.saturating_sub(k.created_at)
                            > KEM_PREKEY_MAX_AGE_SECS + RETIRED_PREKEY_GRACE_SECS
                    {
                        tx.delete(Table::KemPrekey, &key)?;
                        tx.delete_prefix(Table::SeenBaseKey, &key)?;
                    }
                }
            }
            put_proto(tx, Table::Local, COUNTERS_KEY, &c)?;
            Ok(changed)
        })
    }

    /// Starts a session with a remote device from its verified bundle. A
    /// changed identity for a known user fails with
    /// [`Error::IdentityChanged`] and changes nothing. An existing session is
    /// archived (its in-flight messages still decrypt).
    pub fn process_bundle(
        &mut self,
        addr: &DeviceAddress,
        bundle: &PrekeyBundle,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<()> {
        if bundle.device_id != addr.device_id {
            return Err(Error::WrongDevice(bundle.device_id));
        }
        let a = addr.encode()?;
        let state = SessionState::initiate(&self.identity, bundle, now, rng)?;
        let cache = &mut self.sessions;
        self.store.transaction(|tx| {
            check_and_record_trust(tx, &addr.user, &bundle.identity, now)?;
            let sid = state.base_key;
            save_session(tx, cache, &a, state)?;
            let ids = load_index(tx, &a)?;
            promote(tx, cache, &a, ids, sid)
        })
    }

    /// True if a session with `addr` exists.
    pub fn has_session(&mut self, addr: &DeviceAddress) -> Result<bool> {
        let a = addr.encode()?;
        self.store
            .transaction(|tx| Ok(!load_index(tx, &a)?.is_empty()))
    }

    /// Encrypts for `addr` with its current session; the advanced chain is
    /// committed before the message is returned.
    pub fn encrypt(
        &mut self,
        addr: &DeviceAddress,
        plaintext: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<OutgoingMessage> {
        let a = addr.encode()?;
        let padding = self.padding;
        let cache = &mut self.sessions;
        self.store.transaction(|tx| {
            let ids = load_index(tx, &a)?;
            let sid = ids.first().ok_or(Error::NoSession)?;
            let mut state = load_session(tx, cache, &a, sid)?;
            let out = state.encrypt(plaintext, padding, rng)?;
            save_session(tx, cache, &a, state)?;
            Ok(out)
        })
    }

    /// Decrypts a message from `addr`.
    pub fn decrypt(&mut self, addr: &DeviceAddress, message: &[u8], now: u64) -> Result<Vec<u8>> {
        self.decrypt_with(addr, message, now, |_| Ok(()))
    }

    /// Decrypts a message from `addr` and runs `hook` inside the same
    /// transaction, after the message authenticated: the caller's writes
    /// (e.g. `txn.put(Table::App, envelope_id, b"")`) commit atomically with
    /// the ratchet state, and if `hook` fails nothing is committed and the
    /// message can be decrypted again.
    pub fn decrypt_with<F>(
        &mut self,
        addr: &DeviceAddress,
        message: &[u8],
        now: u64,
        hook: F,
    ) -> Result<Vec<u8>>
    where
        F: FnOnce(&mut S::Txn<'_>) -> Result<()>,
    {
        self.decrypt_then(addr, message, now, |tx, _| hook(tx))
            .map(|(pt, ())| pt)
    }

    /// Like [`Device::decrypt_with`], but the hook also sees the plaintext
    /// (to store what it says in the same transaction) and returns a value.
    pub fn decrypt_then<F, R>(
        &mut self,
        addr: &DeviceAddress,
        message: &[u8],
        now: u64,
        hook: F,
    ) -> Result<(Vec<u8>, R)>
    where
        F: FnOnce(&mut S::Txn<'_>, &[u8]) -> Result<R>,
    {
        let a = addr.encode()?;
        let kind = MessageKind::of(message)?;
        let (identity, device_id) = (&self.identity, self.device_id);
        let cache = &mut self.sessions;
        self.store.transaction(|tx| {
            let plaintext = match kind {
                MessageKind::Ratchet => decrypt_ratchet(tx, cache, &a, message)?,
                MessageKind::PreKey => {
                    let m = PreKeyMessage::parse(message)?;
                    if m.responder_device_id != device_id {
                        return Err(Error::WrongDevice(m.responder_device_id));
                    }
                    check_and_record_trust(tx, &addr.user, &m.initiator_identity, now)?;
                    let ids = load_index(tx, &a)?;
                    if ids.contains(&m.base_key) {
                        // A later message of a session we already accepted.
                        let mut state = load_session(tx, cache, &a, &m.base_key)?;
                        let (pt, changes) = {
                            let skipped = TxSkipped {
                                tx: &*tx,
                                prefix: cat(&[&a, &m.base_key]),
                            };
                            state.decrypt(&m.inner, &skipped)?
                        };
                        commit_decrypt(tx, cache, &a, state, changes)?;
                        promote(tx, cache, &a, ids, m.base_key)?;
                        pt
                    } else {
                        accept_prekey_message(tx, cache, identity, &a, ids, &m)?
                    }
                }
            };
            let r = hook(tx, &plaintext)?;
            Ok((plaintext, r))
        })
    }

    /// The recorded trust state of `user`, if known.
    pub fn contact(&mut self, user: &[u8]) -> Result<Option<Contact>> {
        self.store.transaction(|tx| load_contact(tx, user))
    }

    /// Records that the user verified `identity` for `user` (e.g. by safety
    /// number). Fails with [`Error::IdentityChanged`] if it is not the recorded key.
    pub fn mark_verified(&mut self, user: &[u8], identity: &IdentityKey, now: u64) -> Result<()> {
        self.store.transaction(|tx| {
            let existing = load_contact(tx, user)?;
            trust::require_not_changed(trust::check(existing.as_ref(), identity), identity)?;
            let c = Contact {
                identity: *identity,
                verification: Verification::Verified,
                first_seen: existing.map(|c| c.first_seen).unwrap_or(now),
            };
            tx.put(Table::Contact, user, &c.encode())
        })
    }

    /// Accepts a changed identity for `user` after the user confirmed it;
    /// the contact becomes unverified.
    pub fn accept_identity(&mut self, user: &[u8], identity: &IdentityKey, now: u64) -> Result<()> {
        self.store.transaction(|tx| {
            let c = Contact {
                identity: *identity,
                verification: Verification::Unverified,
                first_seen: now,
            };
            tx.put(Table::Contact, user, &c.encode())
        })
    }

    /// The safety number between this device's identity and `user`'s recorded one.
    pub fn safety_number(&mut self, user: &[u8]) -> Result<SafetyNumber> {
        let ours = *self.identity.public();
        let c = self.contact(user)?.ok_or(Error::NoSession)?;
        Ok(SafetyNumber::compute(&ours, &c.identity))
    }
}

fn check_and_record_trust(
    tx: &mut impl Txn,
    user: &[u8],
    presented: &IdentityKey,
    now: u64,
) -> Result<()> {
    let existing = load_contact(tx, user)?;
    let check = trust::check(existing.as_ref(), presented);
    trust::require_not_changed(check, presented)?;
    if check == TrustCheck::FirstUse {
        let c = Contact {
            identity: *presented,
            verification: Verification::Unverified,
            first_seen: now,
        };
        tx.put(Table::Contact, user, &c.encode())?;
    }
    Ok(())
}

/// Tries the current session, then archived ones; commits the first that
/// authenticates (promoting it to current).
fn decrypt_ratchet(
    tx: &mut impl Txn,
    cache: &mut SessionCache,
    a: &[u8],
    message: &[u8],
) -> Result<Vec<u8>> {
    let ids = load_index(tx, a)?;
    if ids.is_empty() {
        return Err(Error::NoSession);
    }
    let mut first_err = None;
    for (pos, sid) in ids.iter().enumerate() {
        let mut state = load_session(tx, cache, a, sid)?;
        let attempt = {
            let skipped = TxSkipped {
                tx: &*tx,
                prefix: cat(&[a, sid]),
            };
            state.decrypt(message, &skipped)
        };
        match attempt {
            Ok((pt, changes)) => {
                commit_decrypt(tx, cache, a, state, changes)?;
                if pos != 0 {
                    promote(tx, cache, a, ids.clone(), *sid)?;
                }
                return Ok(pt);
            }
            Err(e @ (Error::Storage(_) | Error::CorruptRecord { .. })) => return Err(e),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or(Error::NoSession))
}

/// Accepts a PQXDH first message for a new session: consumes the one-time
/// prekeys (or records the last-resort base key) in the same transaction
/// that stores the session.
fn accept_prekey_message(
    tx: &mut impl Txn,
    cache: &mut SessionCache,
    identity: &IdentityKeyPair,
    a: &[u8],
    ids: Vec<[u8; 32]>,
    m: &PreKeyMessage,
) -> Result<Vec<u8>> {
    let counters = load_counters(tx)?;
    let signed = load_signed(tx, m.signed_prekey_id)?.ok_or(Error::UnknownPrekey {
        what: "signed prekey",
        id: m.signed_prekey_id,
    })?;
    let gone = |issued: bool, what: &'static str, id: u32| {
        if issued {
            Error::ReplayedPreKeyMessage
        } else {
            Error::UnknownPrekey { what, id }
        }
    };
    let one_time =
        match m.one_time_prekey_id {
            None => None,
            Some(id) => Some(load_one_time(tx, id)?.ok_or_else(|| {
                gone(id < counters.next_one_time_prekey_id, "one-time prekey", id)
            })?),
        };
    let kem = load_kem(tx, m.kem_prekey_id)?.ok_or_else(|| {
        gone(
            m.kem_prekey_id < counters.next_kem_prekey_id,
            "KEM prekey",
            m.kem_prekey_id,
        )
    })?;
    let seen_key = cat(&[&m.kem_prekey_id.to_be_bytes(), &m.base_key]);
    if kem.last_resort && tx.get(Table::SeenBaseKey, &seen_key)?.is_some() {
        return Err(Error::ReplayedPreKeyMessage);
    }
    let mut state = SessionState::respond(identity, m, &signed, one_time.as_ref(), &kem)?;
    let (pt, changes) = {
        let skipped = TxSkipped {
            tx: &*tx,
            prefix: cat(&[a, &m.base_key]),
        };
        state.decrypt(&m.inner, &skipped)?
    };
    // Authenticated: consume the prekeys together with storing the session.
    if let Some(k) = &one_time {
        tx.delete(Table::OneTimePrekey, &k.id.to_be_bytes())?;
    }
    if kem.last_resort {
        tx.put(Table::SeenBaseKey, &seen_key, &[])?;
    } else {
        tx.delete(Table::KemPrekey, &kem.id.to_be_bytes())?;
    }
    commit_decrypt(tx, cache, a, state, changes)?;
    promote(tx, cache, a, ids, m.base_key)?;
    Ok(pt)
}
