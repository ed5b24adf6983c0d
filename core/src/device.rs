//! The session API an app (and the messenger, and the FFI bindings) calls:
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
//! transaction. How each row is keyed and encoded is `store::records`.

use prost::Message;
use rand_core::CryptoRngCore;
use sotto_proto::store as rec;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Fault, Result};
use crate::identity::{IdentityKey, IdentityKeyPair, SafetyNumber};
use crate::keys::Secret32;
use crate::padding::Padding;
use crate::prekeys::{
    signed_bundle_blob, KemPrekey, OneTimePrekey, PrekeyBundle, SignedPrekey, UploadItem,
    RETIRED_PREKEY_GRACE_SECS,
};
use crate::session::{MessageKind, OutgoingMessage, PreKeyMessage, SessionState};
use crate::session_cache::SessionCache;
use crate::store::records::*;
use crate::store::{Store, Table, Txn};
use crate::trust::{self, Contact, TrustCheck, Verification};

/// Previous sessions kept per remote device besides the current one, so
/// messages in flight across a session replacement (simultaneous initiation,
/// a peer's reinstall) still decrypt. Each costs one small row plus its
/// skipped keys; libsignal keeps 40, which mostly preserves stale state.
pub const MAX_ARCHIVED_SESSIONS: usize = 5;

/// HKDF salt of [`Device::sender_mac_key`].
pub const SENDER_MAC_SALT: &[u8] = b"Sotto_v1_SenderMac";

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

/// Current unix time in seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a device signs with its identity key besides its prekeys
/// ([`Device::sign_statement`]); verify with [`Statement::verify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Statement {
    /// A group membership change (PROTOCOL.md III.12).
    GroupChange,
}

impl Statement {
    /// The bytes prefixed to the statement before signing.
    pub fn domain(self) -> &'static [u8] {
        match self {
            Statement::GroupChange => b"Sotto_v1_GroupChange",
        }
    }

    /// Verifies `signature` by `identity` over this purpose's domain and
    /// `statement`.
    pub fn verify(self, identity: &IdentityKey, statement: &[u8], signature: &[u8]) -> Result<()> {
        let mut m = Vec::with_capacity(self.domain().len() + statement.len());
        m.extend_from_slice(self.domain());
        m.extend_from_slice(statement);
        identity.verify(&m, signature, "signed statement")
    }
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

    /// Opens a message sealed to this device (PROTOCOL.md I.14); the inner
    /// bytes, whose sender claim the caller still has to prove.
    pub fn unseal(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        crate::sealed::open(&self.identity, sealed)
    }

    /// Signs a statement with this device's identity key. The signed bytes
    /// are `purpose.domain() || statement`: one fixed domain per purpose,
    /// none a prefix of another or of the prekey domains (§I.1), so no
    /// statement can be replayed as another kind.
    pub fn sign_statement(&self, purpose: Statement, statement: &[u8]) -> [u8; 64] {
        let mut m = Vec::with_capacity(purpose.domain().len() + statement.len());
        m.extend_from_slice(purpose.domain());
        m.extend_from_slice(statement);
        self.identity.sign(&m)
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
                c.next_one_time_prekey_id = next_id(c.next_one_time_prekey_id)?;
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
                c.next_kem_prekey_id = next_id(c.next_kem_prekey_id)?;
                save_kem(tx, &k)?;
                kem_items.push(k.upload_item());
            }
            put_proto(tx, Table::Local, COUNTERS_KEY, &c)?;
            Ok((ec_items, kem_items))
        })
    }

    /// Rotates the signed prekey and the last-resort KEM prekey when they are
    /// older than their maximum age, and deletes what expired: retired keys
    /// [`RETIRED_PREKEY_GRACE_SECS`] after their *retirement* (a device that
    /// was offline for months still accepts first messages made with the key
    /// it published last for a full grace period), and consumed one-time
    /// prekey records as old. Returns true when the signed bundle changed
    /// (re-upload it). A client should process its mailbox backlog first.
    pub fn rotate_prekeys(&mut self, now: u64, rng: &mut impl CryptoRngCore) -> Result<bool> {
        let (identity, device_id) = (&self.identity, self.device_id);
        self.store.transaction(|tx| {
            let mut c = load_counters(tx)?;
            let mut changed = false;
            let mut signed =
                load_signed(tx, c.current_signed_prekey_id)?.ok_or(Error::NoIdentity)?;
            if signed.needs_rotation(now) {
                let k =
                    SignedPrekey::generate(identity, device_id, c.next_signed_prekey_id, now, rng);
                signed.retired_at = Some(now);
                save_signed(tx, &signed)?;
                c.current_signed_prekey_id = k.id;
                c.next_signed_prekey_id = next_id(c.next_signed_prekey_id)?;
                save_signed(tx, &k)?;
                changed = true;
            }
            let mut kem = load_kem(tx, c.current_kem_prekey_id)?.ok_or(Error::NoIdentity)?;
            if kem.needs_rotation(now) {
                let k =
                    KemPrekey::generate(identity, device_id, c.next_kem_prekey_id, true, now, rng);
                kem.retired_at = Some(now);
                save_kem(tx, &kem)?;
                c.current_kem_prekey_id = k.id;
                c.next_kem_prekey_id = next_id(c.next_kem_prekey_id)?;
                save_kem(tx, &k)?;
                changed = true;
            }
            let expired = |retired_at: Option<u64>| {
                retired_at.is_some_and(|t| now.saturating_sub(t) > RETIRED_PREKEY_GRACE_SECS)
            };
            for key in tx.keys_with_prefix(Table::SignedPrekey, &[])? {
                let Ok(id_bytes) = <[u8; 4]>::try_from(key.as_slice()) else {
                    continue;
                };
                let id = u32::from_be_bytes(id_bytes);
                if id == c.current_signed_prekey_id {
                    continue;
                }
                if load_signed(tx, id)?.is_some_and(|k| expired(k.retired_at)) {
                    tx.delete(Table::SignedPrekey, &key)?;
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
                if load_kem(tx, id)?.is_some_and(|k| k.last_resort && expired(k.retired_at)) {
                    tx.delete(Table::KemPrekey, &key)?;
                    tx.delete_prefix(Table::SeenBaseKey, &key)?;
                }
            }
            for key in tx.keys_with_prefix(Table::ConsumedPrekey, &[])? {
                let at = tx
                    .get(Table::ConsumedPrekey, &key)?
                    .and_then(|v| v.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()))
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                if now.saturating_sub(at) > RETIRED_PREKEY_GRACE_SECS {
                    tx.delete(Table::ConsumedPrekey, &key)?;
                }
            }
            put_proto(tx, Table::Local, COUNTERS_KEY, &c)?;
            Ok(changed)
        })
    }

    /// Starts a session with a remote device from its verified bundle. A
    /// bundle whose identity differs from the one recorded for `addr` fails
    /// with [`Error::IdentityChanged`] and changes nothing. An existing
    /// session is archived (its in-flight messages still decrypt).
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
            check_and_record_trust(tx, &a, &bundle.identity, now)?;
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

    /// The identity of the current session with `addr`, if there is one.
    pub fn session_identity(&mut self, addr: &DeviceAddress) -> Result<Option<IdentityKey>> {
        let a = addr.encode()?;
        let cache = &mut self.sessions;
        self.store.transaction(|tx| {
            let ids = load_index(tx, &a)?;
            let Some(sid) = ids.first() else {
                return Ok(None);
            };
            let state = load_session(tx, cache, &a, sid)?;
            let id = state.remote_identity;
            return_session(tx, cache, &a, sid, state)?;
            Ok(Some(id))
        })
    }

    /// Encrypts for `addr` with its current session; the advanced chain is
    /// committed before the message is returned. A session whose identity is
    /// no longer the recorded one is refused ([`Error::NoSession`]).
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
            require_session_trusted(tx, &a, &state)?;
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
    pub fn decrypt_with<F, E>(
        &mut self,
        addr: &DeviceAddress,
        message: &[u8],
        now: u64,
        hook: F,
    ) -> Result<Vec<u8>, E>
    where
        F: FnOnce(&mut S::Txn<'_>) -> Result<(), E>,
        E: From<Error>,
    {
        self.decrypt_then(addr, message, now, |tx, _| hook(tx))
            .map(|(pt, ())| pt)
    }

    /// Like [`Device::decrypt_with`], but the hook also sees the plaintext
    /// (to store what it says in the same transaction) and the identity of
    /// the session that authenticated it, and returns a value.
    pub fn decrypt_then<F, R, E>(
        &mut self,
        addr: &DeviceAddress,
        message: &[u8],
        now: u64,
        hook: F,
    ) -> Result<(Vec<u8>, R), E>
    where
        F: FnOnce(&mut S::Txn<'_>, &Decrypted<'_>) -> Result<R, E>,
        E: From<Error>,
    {
        let a = addr.encode()?;
        let kind = MessageKind::of(message)?;
        let (identity, device_id) = (&self.identity, self.device_id);
        let cache = &mut self.sessions;
        self.store.transaction(|tx| {
            let mut decrypted = |tx: &mut S::Txn<'_>| -> Result<_> {
                Ok(match kind {
                    MessageKind::Ratchet => {
                        let (pt, remote) = decrypt_ratchet(tx, cache, &a, message)?;
                        (pt, remote, false)
                    }
                    MessageKind::PreKey => {
                        let m = PreKeyMessage::parse(message)?;
                        if m.responder_device_id != device_id {
                            return Err(Error::WrongDevice(m.responder_device_id));
                        }
                        let ids = load_index(tx, &a)?;
                        if ids.contains(&m.base_key) {
                            // A later message of a session we already accepted:
                            // its identity is the session's, whatever the
                            // (unauthenticated) header field says.
                            let mut state = load_session(tx, cache, &a, &m.base_key)?;
                            if !state.remote_identity.ct_eq(&m.initiator_identity) {
                                return Err(Error::Malformed {
                                    what: "prekey message identity differs from its session",
                                });
                            }
                            require_session_trusted(tx, &a, &state)?;
                            let (pt, changes) = {
                                let skipped = TxSkipped {
                                    tx: &*tx,
                                    prefix: cat(&[&a, &m.base_key]),
                                };
                                state.decrypt(&m.inner, &skipped)?
                            };
                            let remote = state.remote_identity;
                            commit_decrypt(tx, cache, &a, state, changes)?;
                            promote(tx, cache, &a, ids, m.base_key)?;
                            (pt, remote, false)
                        } else {
                            let pt = accept_prekey_message(tx, cache, identity, &a, ids, &m, now)?;
                            (pt, m.initiator_identity, true)
                        }
                    }
                })
            };
            let (plaintext, remote, new_session) = decrypted(tx)?;
            let r = hook(
                tx,
                &Decrypted {
                    plaintext: &plaintext,
                    remote_identity: &remote,
                    new_session,
                },
            )?;
            Ok((plaintext, r))
        })
    }

    /// The identity recorded for the remote device `addr`, if known.
    pub fn contact(&mut self, addr: &DeviceAddress) -> Result<Option<Contact>> {
        let a = addr.encode()?;
        self.store.transaction(|tx| load_contact(tx, &a))
    }

    /// Records that the user verified `identity` for `addr` (e.g. by safety
    /// number). Fails with [`Error::IdentityChanged`] if it is not the recorded key.
    pub fn mark_verified(
        &mut self,
        addr: &DeviceAddress,
        identity: &IdentityKey,
        now: u64,
    ) -> Result<()> {
        let a = addr.encode()?;
        self.store.transaction(|tx| {
            let existing = load_contact(tx, &a)?;
            trust::require_not_changed(trust::check(existing.as_ref(), identity), identity)?;
            let c = Contact {
                identity: *identity,
                verification: Verification::Verified,
                first_seen: existing.map(|c| c.first_seen).unwrap_or(now),
            };
            tx.put(Table::Contact, &a, &c.encode())
        })
    }

    /// Accepts `identity` for `addr` after the user confirmed a change; the
    /// device becomes unverified, and every session (current or archived)
    /// bound to another identity is deleted with its keys in the same
    /// transaction, so nothing set up under the old key decrypts or encrypts
    /// again.
    pub fn accept_identity(
        &mut self,
        addr: &DeviceAddress,
        identity: &IdentityKey,
        now: u64,
    ) -> Result<()> {
        let a = addr.encode()?;
        let cache = &mut self.sessions;
        self.store.transaction(|tx| {
            let unchanged = load_contact(tx, &a)?.is_some_and(|c| c.identity.ct_eq(identity));
            if unchanged {
                return Ok(());
            }
            let c = Contact {
                identity: *identity,
                verification: Verification::Unverified,
                first_seen: now,
            };
            tx.put(Table::Contact, &a, &c.encode())?;
            let ids = load_index(tx, &a)?;
            let mut keep = Vec::with_capacity(ids.len());
            for sid in ids {
                let state = load_session(tx, cache, &a, &sid)?;
                if state.remote_identity.ct_eq(identity) {
                    return_session(tx, cache, &a, &sid, state)?;
                    keep.push(sid);
                } else {
                    delete_session(tx, cache, &a, &sid)?;
                }
            }
            save_index(tx, &a, &keep)
        })
    }

    /// Deletes every session with `addr` (e.g. a revoked device) and its keys;
    /// the recorded identity stays, so the device id cannot come back under
    /// another key unnoticed.
    pub fn delete_sessions(&mut self, addr: &DeviceAddress) -> Result<()> {
        let a = addr.encode()?;
        let cache = &mut self.sessions;
        self.store.transaction(|tx| {
            for sid in load_index(tx, &a)? {
                delete_session(tx, cache, &a, &sid)?;
            }
            tx.delete(Table::SessionIndex, &a)
        })
    }

    /// The key that authenticates envelopes from device identity `sender`
    /// to device identity `recipient`, one of which must be this device's:
    /// `HKDF-SHA256(salt = "Sotto_v1_SenderMac", ikm = X25519 of the two
    /// identities' X25519 halves, info = sender IK (64) || recipient IK (64))`.
    /// Both ends compute it from identity keys alone, so it still works when
    /// a session is lost; the info order makes each direction's key distinct.
    pub fn sender_mac_key(
        &self,
        sender: &IdentityKey,
        recipient: &IdentityKey,
    ) -> Result<Secret32> {
        let ours = self.identity.public();
        let other = if ours.ct_eq(sender) {
            recipient
        } else if ours.ct_eq(recipient) {
            sender
        } else {
            return Err(Error::InvalidArgument("neither identity is this device's"));
        };
        let shared = self
            .identity
            .dh()
            .agree(other.dh_public(), "peer identity key")?;
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(SENDER_MAC_SALT), shared.as_bytes());
        let mut okm = Zeroizing::new([0u8; 32]);
        let info = cat(&[sender.as_bytes(), recipient.as_bytes()]);
        // 32 bytes is within HKDF's output limit.
        let _ = hk.expand(&info, &mut okm[..]);
        Ok(Secret32::copy_from(&okm[..]))
    }

    /// How many devices of `user` this device has a session with.
    pub fn session_devices(&mut self, user: &[u8]) -> Result<usize> {
        let prefix = user_prefix(user)?;
        self.store.transaction(|tx| {
            Ok(tx
                .keys_with_prefix(Table::SessionIndex, &prefix)?
                .iter()
                .filter(|a| a.len() == prefix.len() + 4)
                .count())
        })
    }

    /// Deletes the sessions with every device of `user`.
    pub fn delete_user_sessions(&mut self, user: &[u8]) -> Result<()> {
        let prefix = user_prefix(user)?;
        let cache = &mut self.sessions;
        self.store.transaction(|tx| {
            for a in tx.keys_with_prefix(Table::SessionIndex, &prefix)? {
                if a.len() != prefix.len() + 4 {
                    continue;
                }
                for sid in load_index(tx, &a)? {
                    delete_session(tx, cache, &a, &sid)?;
                }
                tx.delete(Table::SessionIndex, &a)?;
            }
            Ok(())
        })
    }

    /// The safety number between this device's identity and the one recorded
    /// for `addr`.
    pub fn safety_number(&mut self, addr: &DeviceAddress) -> Result<SafetyNumber> {
        let ours = *self.identity.public();
        let c = self.contact(addr)?.ok_or(Error::NoSession)?;
        Ok(SafetyNumber::compute(&ours, &c.identity))
    }
}

/// What a decrypt hook sees: the authenticated plaintext and who it came from.
#[derive(Clone, Copy)]
pub struct Decrypted<'a> {
    /// The plaintext (padding removed).
    pub plaintext: &'a [u8],
    /// The identity of the session that authenticated the message.
    pub remote_identity: &'a IdentityKey,
    /// True when this message set up a new session (a PQXDH first message).
    pub new_session: bool,
}

impl core::fmt::Debug for Decrypted<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Decrypted")
            .field(
                "plaintext",
                &format_args!("<{} bytes>", self.plaintext.len()),
            )
            .field("remote_identity", self.remote_identity)
            .field("new_session", &self.new_session)
            .finish()
    }
}

/// The prefix of every encoded address of `user`'s devices.
fn user_prefix(user: &[u8]) -> Result<Vec<u8>> {
    let len = u16::try_from(user.len()).map_err(|_| Error::Malformed {
        what: "user id too long",
    })?;
    Ok(cat(&[&len.to_be_bytes(), user]))
}

/// The id after `id`; an exhausted id space is an error, never a wrap-around.
fn next_id(id: u32) -> Result<u32> {
    id.checked_add(1)
        .ok_or(Error::InvalidArgument("prekey ids exhausted"))
}

fn check_and_record_trust(
    tx: &mut impl Txn,
    addr: &[u8],
    presented: &IdentityKey,
    now: u64,
) -> Result<()> {
    let existing = load_contact(tx, addr)?;
    let check = trust::check(existing.as_ref(), presented);
    trust::require_not_changed(check, presented)?;
    if check == TrustCheck::FirstUse {
        let c = Contact {
            identity: *presented,
            verification: Verification::Unverified,
            first_seen: now,
        };
        tx.put(Table::Contact, addr, &c.encode())?;
    }
    Ok(())
}

/// The error a decrypt reports when no session opened a message: a session
/// that recognised the message's chain and counter (a duplicate or an
/// evicted key) says more than one that never knew the chain, so a replay of
/// an archived session's message is reported as a duplicate, not a failure.
fn rank(e: &Error) -> u8 {
    match e {
        Error::DuplicateMessage { .. } | Error::MessageKeyEvicted { .. } => 2,
        Error::TooFarInFuture { .. } => 1,
        _ => 0,
    }
}

/// Tries the current session, then archived ones; commits the first that
/// authenticates (promoting it to current). Sessions bound to an identity
/// other than the recorded one are never tried.
fn decrypt_ratchet(
    tx: &mut impl Txn,
    cache: &mut SessionCache,
    a: &[u8],
    message: &[u8],
) -> Result<(Vec<u8>, IdentityKey)> {
    let ids = load_index(tx, a)?;
    if ids.is_empty() {
        return Err(Error::NoSession);
    }
    let recorded = load_contact(tx, a)?.ok_or(Error::CorruptRecord { table: "contact" })?;
    let mut best: Option<Error> = None;
    for (pos, sid) in ids.iter().enumerate() {
        let mut state = load_session(tx, cache, a, sid)?;
        if !state.remote_identity.ct_eq(&recorded.identity) {
            continue;
        }
        let attempt = {
            let skipped = TxSkipped {
                tx: &*tx,
                prefix: cat(&[a, sid]),
            };
            state.decrypt(message, &skipped)
        };
        match attempt {
            Ok((pt, changes)) => {
                let remote = state.remote_identity;
                commit_decrypt(tx, cache, a, state, changes)?;
                if pos != 0 {
                    promote(tx, cache, a, ids.clone(), *sid)?;
                }
                return Ok((pt, remote));
            }
            Err(e) if e.fault() == Fault::Local => return Err(e),
            Err(e) => {
                return_session(tx, cache, a, sid, state)?;
                if best.as_ref().is_none_or(|b| rank(&e) > rank(b)) {
                    best = Some(e);
                }
            }
        }
    }
    Err(best.unwrap_or(Error::NoSession))
}

/// Accepts a PQXDH first message for a new session: consumes the one-time
/// prekeys (or records the last-resort base key) in the same transaction
/// that stores the session. The checks run in the order PROTOCOL.md I.3
/// gives; trust is decided only after the inner message authenticated, so a
/// forged header cannot raise an identity-change alarm.
fn accept_prekey_message(
    tx: &mut impl Txn,
    cache: &mut SessionCache,
    identity: &IdentityKeyPair,
    a: &[u8],
    ids: Vec<[u8; 32]>,
    m: &PreKeyMessage,
    now: u64,
) -> Result<Vec<u8>> {
    let signed = load_signed(tx, m.signed_prekey_id)?.ok_or(Error::UnknownPrekey {
        what: "signed prekey",
        id: m.signed_prekey_id,
    })?;
    // A one-time key that was issued (id below the counter) but is gone was
    // consumed: by this very message (a replay), or by another initiator (the
    // relay served it twice). The consumed-key record tells them apart.
    let gone = |tx: &mut _, kind: u8, what: &'static str, id: u32| -> Error {
        match consumed_by(tx, kind, id) {
            Ok(Some(base)) if base == m.base_key => Error::ReplayedPreKeyMessage,
            Ok(Some(_)) => Error::OneTimePrekeyReused { what, id },
            // Never issued, expired (a retired last-resort key past its
            // grace), or consumed so long ago that the record is gone.
            Ok(None) => Error::UnknownPrekey { what, id },
            Err(e) => e,
        }
    };
    let one_time = match m.one_time_prekey_id {
        None => None,
        Some(id) => match load_one_time(tx, id)? {
            Some(k) => Some(k),
            None => return Err(gone(tx, CONSUMED_EC, "one-time prekey", id)),
        },
    };
    let kem = match load_kem(tx, m.kem_prekey_id)? {
        Some(k) => k,
        None => return Err(gone(tx, CONSUMED_KEM, "KEM prekey", m.kem_prekey_id)),
    };
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
    // Authenticated: the initiator holds the X25519 half it presented.
    check_and_record_trust(tx, a, &m.initiator_identity, now)?;
    // Consume the prekeys together with storing the session.
    let consumed = cat(&[&now.to_be_bytes(), &m.base_key]);
    if let Some(k) = &one_time {
        tx.delete(Table::OneTimePrekey, &k.id.to_be_bytes())?;
        tx.put(
            Table::ConsumedPrekey,
            &consumed_key(CONSUMED_EC, k.id),
            &consumed,
        )?;
    }
    if kem.last_resort {
        tx.put(Table::SeenBaseKey, &seen_key, &[])?;
    } else {
        tx.delete(Table::KemPrekey, &kem.id.to_be_bytes())?;
        tx.put(
            Table::ConsumedPrekey,
            &consumed_key(CONSUMED_KEM, kem.id),
            &consumed,
        )?;
    }
    commit_decrypt(tx, cache, a, state, changes)?;
    promote(tx, cache, a, ids, m.base_key)?;
    Ok(pt)
}
