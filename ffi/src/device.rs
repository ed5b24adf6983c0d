//! This device's identity, prekeys and sessions: a thin wrapper of
//! `sotto_core::Device` for foreign code.
//!
//! All cryptography and state handling stays in sotto-core; this module only
//! converts types, picks the store (in memory, or the encrypted SQLite file),
//! supplies the OS random generator and clock, and serialises calls through
//! a mutex (a `Device` is shared across threads by the foreign side).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rand_core::OsRng;
use sotto_core::device::unix_now;
use sotto_core::{DeviceAddress, MemoryStore, Padding, SqliteStore, StorageKey};
use zeroize::Zeroizing;

use crate::error::{Result, SottoError};
use crate::identity::SafetyNumber;

/// A remote device: the app's opaque user id and that user's device id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, uniffi::Record)]
pub struct PeerAddress {
    /// Opaque user id chosen by the app (at most 65,535 bytes).
    pub user: Vec<u8>,
    /// Device id within the user's account.
    pub device_id: u32,
}

impl From<&PeerAddress> for DeviceAddress {
    fn from(p: &PeerAddress) -> Self {
        DeviceAddress::new(p.user.clone(), p.device_id)
    }
}

/// One item to upload to the relay's one-time prekey lists (public data).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PrekeyUpload {
    /// The key id, unique per device and kind.
    pub id: u32,
    /// The encoded public prekey (signed, for KEM prekeys).
    pub bytes: Vec<u8>,
}

/// Freshly generated one-time prekeys to upload.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct OneTimePrekeys {
    /// One-time X25519 prekeys.
    pub ec: Vec<PrekeyUpload>,
    /// Signed one-time ML-KEM prekeys.
    pub kem: Vec<PrekeyUpload>,
}

/// How far the user trusts a contact's identity key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Verification {
    /// Trusted on first use only.
    Unverified,
    /// The user compared safety numbers.
    Verified,
}

/// A remote device's verified prekey bundle, ready to start a session.
#[derive(uniffi::Object)]
pub struct PrekeyBundle(sotto_core::PrekeyBundle);

#[uniffi::export]
impl PrekeyBundle {
    /// Assembles and verifies a bundle from what the relay returned: the
    /// signed bundle, optionally one one-time EC prekey and optionally one
    /// one-time KEM prekey. Any bad signature or encoding is an error.
    #[uniffi::constructor]
    pub fn new(
        signed_bundle: Vec<u8>,
        one_time_ec: Option<Vec<u8>>,
        one_time_kem: Option<Vec<u8>>,
    ) -> Result<Arc<Self>> {
        Ok(Arc::new(Self(sotto_core::PrekeyBundle::assemble(
            &signed_bundle,
            one_time_ec.as_deref(),
            one_time_kem.as_deref(),
        )?)))
    }

    /// The bundle owner's public identity key.
    pub fn identity_key(&self) -> Vec<u8> {
        self.0.identity().as_bytes().to_vec()
    }

    /// The bundle owner's device id.
    pub fn device_id(&self) -> u32 {
        self.0.device_id()
    }

    /// True when no one-time KEM prekey was included (the reusable
    /// last-resort key is used instead).
    pub fn uses_last_resort_kem(&self) -> bool {
        self.0.uses_last_resort_kem()
    }
}

impl fmt::Debug for PrekeyBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The store behind a device.
enum Backend {
    Memory(sotto_core::Device<MemoryStore>),
    Sqlite(sotto_core::Device<SqliteStore>),
}

/// Runs `$body` with `$d` bound to the core device, whatever its store.
macro_rules! with_core {
    ($self:expr, $d:ident => $body:expr) => {
        match &mut *$self.lock() {
            Backend::Memory($d) => $body,
            Backend::Sqlite($d) => $body,
        }
    };
}

/// This device: identity, prekeys, and one session per remote device.
#[derive(uniffi::Object)]
pub struct Device {
    backend: Mutex<Backend>,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("device_id", &self.device_id())
            .finish_non_exhaustive()
    }
}

pub(crate) fn storage_key(bytes: Vec<u8>) -> Result<StorageKey> {
    let bytes = Zeroizing::new(bytes);
    let key: Zeroizing<[u8; 32]> =
        Zeroizing::new(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| SottoError::InvalidInput {
                    reason: "storage key must be 32 bytes".to_owned(),
                })?,
        );
    Ok(StorageKey::new(*key))
}

impl Device {
    fn lock(&self) -> MutexGuard<'_, Backend> {
        // Every core operation is one store transaction: a panic mid-way
        // leaves the committed state intact, so a poisoned lock is usable.
        self.backend.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wrap(backend: Backend) -> Arc<Self> {
        Arc::new(Self {
            backend: Mutex::new(backend),
        })
    }

    /// Decrypts a message from `peer`.
    pub(crate) fn decrypt_from(&self, peer: &DeviceAddress, ciphertext: &[u8]) -> Result<Vec<u8>> {
        let now = unix_now();
        Ok(with_core!(self, d => d.decrypt(peer, ciphertext, now))?)
    }
}

#[uniffi::export]
impl Device {
    /// A new device whose state lives only in memory (tests, demos,
    /// ephemeral sessions). Generates a fresh identity and prekeys.
    #[uniffi::constructor]
    pub fn create_in_memory(device_id: u32) -> Result<Arc<Self>> {
        let d = sotto_core::Device::create(MemoryStore::new(), device_id, unix_now(), &mut OsRng)?;
        Ok(Self::wrap(Backend::Memory(d)))
    }

    /// A new device stored in the encrypted SQLite file at `path`, protected
    /// by `storage_key` (32 bytes from the platform keystore). Fails if the
    /// file already holds a device.
    #[uniffi::constructor]
    pub fn create_persistent(
        path: String,
        storage_key: Vec<u8>,
        device_id: u32,
    ) -> Result<Arc<Self>> {
        let store = SqliteStore::open(&path, &self::storage_key(storage_key)?)?;
        let d = sotto_core::Device::create(store, device_id, unix_now(), &mut OsRng)?;
        Ok(Self::wrap(Backend::Sqlite(d)))
    }

    /// Opens the device stored at `path` with its `storage_key`.
    #[uniffi::constructor]
    pub fn open_persistent(path: String, storage_key: Vec<u8>) -> Result<Arc<Self>> {
        let store = SqliteStore::open(&path, &self::storage_key(storage_key)?)?;
        Ok(Self::wrap(Backend::Sqlite(sotto_core::Device::open(
            store,
        )?)))
    }

    /// This device's public identity key (share it; compare via safety numbers).
    pub fn identity_key(&self) -> Vec<u8> {
        with_core!(self, d => d.identity().as_bytes().to_vec())
    }

    /// This device's id.
    pub fn device_id(&self) -> u32 {
        with_core!(self, d => d.device_id())
    }

    /// Whether outgoing messages are padded to Padmé size buckets so the relay
    /// cannot see their exact length (the default), or sent unpadded.
    pub fn set_padding(&self, padded: bool) {
        let padding = if padded {
            Padding::Padme
        } else {
            Padding::None
        };
        with_core!(self, d => d.set_padding(padding))
    }

    /// The signed bundle to upload to the relay.
    pub fn signed_bundle(&self) -> Result<Vec<u8>> {
        Ok(with_core!(self, d => d.signed_bundle())?)
    }

    /// Generates and stores `ec` one-time X25519 prekeys and `kem` one-time
    /// ML-KEM prekeys (at most 1,000 each per call); returns what to upload.
    pub fn generate_one_time_prekeys(&self, ec: u32, kem: u32) -> Result<OneTimePrekeys> {
        if ec > 1000 || kem > 1000 {
            return Err(SottoError::InvalidInput {
                reason: "at most 1000 one-time prekeys of each kind per call".to_owned(),
            });
        }
        let (ec, kem) =
            with_core!(self, d => d.generate_one_time_prekeys(ec, kem, unix_now(), &mut OsRng))?;
        let convert = |items: Vec<sotto_core::UploadItem>| {
            items
                .into_iter()
                .map(|i| PrekeyUpload {
                    id: i.id,
                    bytes: i.bytes,
                })
                .collect()
        };
        Ok(OneTimePrekeys {
            ec: convert(ec),
            kem: convert(kem),
        })
    }

    /// Rotates prekeys past their maximum age; true when the signed bundle
    /// changed and must be uploaded again.
    pub fn rotate_prekeys(&self) -> Result<bool> {
        Ok(with_core!(self, d => d.rotate_prekeys(unix_now(), &mut OsRng))?)
    }

    /// Starts a session with `peer` from its verified bundle (PQXDH). Fails
    /// with `IdentityChanged` if `peer`'s user presented another identity
    /// before.
    pub fn process_bundle(&self, peer: PeerAddress, bundle: Arc<PrekeyBundle>) -> Result<()> {
        let addr = DeviceAddress::from(&peer);
        Ok(with_core!(self, d => d.process_bundle(&addr, &bundle.0, unix_now(), &mut OsRng))?)
    }

    /// Whether a session with `peer` exists.
    pub fn has_session(&self, peer: PeerAddress) -> Result<bool> {
        let addr = DeviceAddress::from(&peer);
        Ok(with_core!(self, d => d.has_session(&addr))?)
    }

    /// Encrypts `plaintext` for `peer`; the ratchet step is stored before
    /// the ciphertext is returned. The plaintext copy inside Rust is wiped.
    pub fn encrypt(&self, peer: PeerAddress, plaintext: Vec<u8>) -> Result<Vec<u8>> {
        let addr = DeviceAddress::from(&peer);
        let plaintext = Zeroizing::new(plaintext);
        let out = with_core!(self, d => d.encrypt(&addr, &plaintext, &mut OsRng))?;
        Ok(out.bytes)
    }

    /// Decrypts a message from `peer`. Every failure is a typed error
    /// (`DecryptFailed`, `DuplicateMessage`, `Malformed`, ...); a failed
    /// message changes no state.
    pub fn decrypt(&self, peer: PeerAddress, ciphertext: Vec<u8>) -> Result<Vec<u8>> {
        self.decrypt_from(&DeviceAddress::from(&peer), &ciphertext)
    }

    /// The safety number with the identity recorded for `peer`.
    pub fn safety_number(&self, peer: PeerAddress) -> Result<Arc<SafetyNumber>> {
        let peer = DeviceAddress::from(&peer);
        let n = with_core!(self, d => d.safety_number(&peer))?;
        Ok(Arc::new(SafetyNumber::from(n)))
    }

    /// How far `peer`'s identity is trusted; `null`/`nil` if never seen.
    pub fn verification(&self, peer: PeerAddress) -> Result<Option<Verification>> {
        let peer = DeviceAddress::from(&peer);
        let contact = with_core!(self, d => d.contact(&peer))?;
        Ok(contact.map(|c| match c.verification {
            sotto_core::Verification::Verified => Verification::Verified,
            sotto_core::Verification::Unverified => Verification::Unverified,
        }))
    }

    /// Records that the user compared safety numbers for `peer`'s
    /// `identity_key`. Fails with `IdentityChanged` if it is not the recorded key.
    pub fn mark_verified(&self, peer: PeerAddress, identity_key: Vec<u8>) -> Result<()> {
        let peer = DeviceAddress::from(&peer);
        let identity = sotto_core::IdentityKey::from_bytes(&identity_key)?;
        Ok(with_core!(self, d => d.mark_verified(&peer, &identity, unix_now()))?)
    }

    /// Trusts a changed identity of `peer` after the user confirmed it (the
    /// device becomes unverified, and every session set up under the old
    /// identity is deleted).
    pub fn accept_identity(&self, peer: PeerAddress, identity_key: Vec<u8>) -> Result<()> {
        let peer = DeviceAddress::from(&peer);
        let identity = sotto_core::IdentityKey::from_bytes(&identity_key)?;
        Ok(with_core!(self, d => d.accept_identity(&peer, &identity, unix_now()))?)
    }
}
