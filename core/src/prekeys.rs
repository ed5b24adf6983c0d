//! Prekeys: the keys a device publishes so others can start sessions while it
//! is offline, the signed bundle the relay serves, verification of a fetched
//! bundle, and rotation helpers.
//!
//! The relay stores a device's prekeys generically (see the design in
//! PROTOCOL.md Part I): one opaque [`SignedBundle`] blob plus separate one-time
//! items `(id, bytes)`. A fetch returns the blob and at most one one-time EC
//! item and one one-time KEM item; [`PrekeyBundle::assemble`] verifies every
//! signature before anything is used.

use core::fmt;

use prost::Message;
use rand_core::CryptoRngCore;
use sotto_proto::session as wire;

use crate::error::{Error, Result};
use crate::identity::{IdentityKey, IdentityKeyPair};
use crate::keys::{Hex, KemKeyPair, X25519KeyPair, KEM_PUBLIC_LEN};

/// Version of the [`SignedBundle`] encoding.
pub const BUNDLE_VERSION: u32 = 1;
/// Signature context for signed X25519 prekeys.
pub const SIGNED_PREKEY_CONTEXT: &[u8] = b"Sotto_v1_SignedPrekey";
/// Signature context for ML-KEM prekeys (one-time and last-resort share it and their id space).
pub const KEM_PREKEY_CONTEXT: &[u8] = b"Sotto_v1_KemPrekey";
/// Rotate the signed X25519 prekey after this many seconds (7 days): bounds
/// how long a compromise of that key exposes sessions set up without a
/// one-time key.
pub const SIGNED_PREKEY_MAX_AGE_SECS: u64 = 7 * 24 * 3600;
/// Rotate the last-resort KEM prekey after this many seconds (30 days).
pub const KEM_PREKEY_MAX_AGE_SECS: u64 = 30 * 24 * 3600;
/// Keep a rotated-away signed or last-resort prekey this long so first
/// messages still in flight (relays keep mail 30 days) can be processed.
pub const RETIRED_PREKEY_GRACE_SECS: u64 = 30 * 24 * 3600;
/// Upload more one-time prekeys when fewer than this many remain on the relay.
pub const ONE_TIME_PREKEY_LOW_WATER: u32 = 20;
/// Top up to this many one-time prekeys of each kind.
pub const ONE_TIME_PREKEY_TARGET: u32 = 100;

/// The blob type as uploaded to the relay.
pub use sotto_proto::session::SignedBundle;

/// What a prekey's signature covers: `context || IK (64) || u32be(device_id)
/// || u32be(id) || u64be(created_at) || public`.
///
/// The whole 64-byte identity is signed, not just the Ed25519 half that
/// verifies: a relay that swaps the X25519 half of a bundle's identity breaks
/// every signature. The creation time is signed so a relay cannot make a
/// stale key look fresh (or hide that a device stopped rotating).
pub(crate) struct PrekeyStatement<'a> {
    pub(crate) context: &'a [u8],
    pub(crate) identity: &'a IdentityKey,
    pub(crate) device_id: u32,
    pub(crate) id: u32,
    pub(crate) created_at: u64,
    pub(crate) public: &'a [u8],
}

impl PrekeyStatement<'_> {
    pub(crate) fn bytes(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.context.len() + 64 + 16 + self.public.len());
        m.extend_from_slice(self.context);
        m.extend_from_slice(self.identity.as_bytes());
        m.extend_from_slice(&self.device_id.to_be_bytes());
        m.extend_from_slice(&self.id.to_be_bytes());
        m.extend_from_slice(&self.created_at.to_be_bytes());
        m.extend_from_slice(self.public);
        m
    }

    fn sign(&self, identity: &IdentityKeyPair) -> [u8; 64] {
        identity.sign(&self.bytes())
    }

    fn verify(&self, signature: &[u8], what: &'static str) -> Result<()> {
        self.identity.verify(&self.bytes(), signature, what)
    }
}

/// A signed X25519 prekey (private side).
#[derive(Clone)]
pub struct SignedPrekey {
    pub(crate) id: u32,
    pub(crate) key: X25519KeyPair,
    pub(crate) signature: [u8; 64],
    pub(crate) created_at: u64,
    /// When a newer signed prekey replaced it (unix seconds).
    pub(crate) retired_at: Option<u64>,
}

impl SignedPrekey {
    /// Generates and signs a new signed prekey.
    pub fn generate(
        identity: &IdentityKeyPair,
        device_id: u32,
        id: u32,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Self {
        let key = X25519KeyPair::generate(rng);
        let signature = PrekeyStatement {
            context: SIGNED_PREKEY_CONTEXT,
            identity: identity.public(),
            device_id,
            id,
            created_at: now,
            public: key.public(),
        }
        .sign(identity);
        SignedPrekey {
            id,
            key,
            signature,
            created_at: now,
            retired_at: None,
        }
    }

    /// Its id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// True when it is older than [`SIGNED_PREKEY_MAX_AGE_SECS`].
    pub fn needs_rotation(&self, now: u64) -> bool {
        now.saturating_sub(self.created_at) >= SIGNED_PREKEY_MAX_AGE_SECS
    }
}

impl fmt::Debug for SignedPrekey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedPrekey")
            .field("id", &self.id)
            .field("key", &self.key)
            .finish()
    }
}

/// A signed ML-KEM-768 prekey (private side), one-time or last-resort.
#[derive(Clone)]
pub struct KemPrekey {
    pub(crate) id: u32,
    pub(crate) key: KemKeyPair,
    pub(crate) signature: [u8; 64],
    pub(crate) created_at: u64,
    pub(crate) last_resort: bool,
    /// When a newer last-resort key replaced it (unix seconds).
    pub(crate) retired_at: Option<u64>,
}

impl KemPrekey {
    /// Generates and signs a new KEM prekey.
    pub fn generate(
        identity: &IdentityKeyPair,
        device_id: u32,
        id: u32,
        last_resort: bool,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Self {
        let key = KemKeyPair::generate(rng);
        let signature = PrekeyStatement {
            context: KEM_PREKEY_CONTEXT,
            identity: identity.public(),
            device_id,
            id,
            created_at: now,
            public: key.public(),
        }
        .sign(identity);
        KemPrekey {
            id,
            key,
            signature,
            created_at: now,
            last_resort,
            retired_at: None,
        }
    }

    /// Its id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// True for the reusable last-resort key.
    pub fn is_last_resort(&self) -> bool {
        self.last_resort
    }

    /// True when a last-resort key is older than [`KEM_PREKEY_MAX_AGE_SECS`].
    pub fn needs_rotation(&self, now: u64) -> bool {
        self.last_resort && now.saturating_sub(self.created_at) >= KEM_PREKEY_MAX_AGE_SECS
    }

    /// The relay item for a one-time KEM prekey.
    pub fn upload_item(&self) -> UploadItem {
        UploadItem {
            id: self.id,
            bytes: wire::SignedOneTimeKemPrekey {
                id: self.id,
                public_key: self.key.public().to_vec(),
                signature: self.signature.to_vec(),
                created_at: self.created_at,
            }
            .encode_to_vec(),
        }
    }
}

impl fmt::Debug for KemPrekey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KemPrekey")
            .field("id", &self.id)
            .field("last_resort", &self.last_resort)
            .field("key", &self.key)
            .finish()
    }
}

/// A one-time X25519 prekey (private side).
#[derive(Clone)]
pub struct OneTimePrekey {
    pub(crate) id: u32,
    pub(crate) key: X25519KeyPair,
}

impl OneTimePrekey {
    /// Generates a new one-time prekey.
    pub fn generate(id: u32, rng: &mut impl CryptoRngCore) -> Self {
        OneTimePrekey {
            id,
            key: X25519KeyPair::generate(rng),
        }
    }

    /// Its id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The relay item `(id, OneTimeEcPrekey bytes)`.
    pub fn upload_item(&self) -> UploadItem {
        UploadItem {
            id: self.id,
            bytes: wire::OneTimeEcPrekey {
                id: self.id,
                public_key: self.key.public().to_vec(),
            }
            .encode_to_vec(),
        }
    }
}

impl fmt::Debug for OneTimePrekey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneTimePrekey")
            .field("id", &self.id)
            .field("key", &self.key)
            .finish()
    }
}

/// One item for the relay's one-time prekey lists.
#[derive(Clone, PartialEq, Eq)]
pub struct UploadItem {
    /// The key id (unique per device and kind).
    pub id: u32,
    /// Encoded `OneTimeEcPrekey` or `SignedOneTimeKemPrekey`.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for UploadItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UploadItem(id {}, {} bytes)", self.id, self.bytes.len())
    }
}

/// Encodes the signed bundle blob for upload.
pub fn signed_bundle_blob(
    identity: &IdentityKeyPair,
    device_id: u32,
    signed: &SignedPrekey,
    last_resort: &KemPrekey,
) -> Vec<u8> {
    SignedBundle {
        version: BUNDLE_VERSION,
        identity_key: identity.public().as_bytes().to_vec(),
        device_id,
        signed_prekey_id: signed.id,
        signed_prekey: signed.key.public().to_vec(),
        signed_prekey_signature: signed.signature.to_vec(),
        signed_prekey_created_at: signed.created_at,
        kem_prekey_id: last_resort.id,
        kem_prekey: last_resort.key.public().to_vec(),
        kem_prekey_signature: last_resort.signature.to_vec(),
        kem_prekey_created_at: last_resort.created_at,
    }
    .encode_to_vec()
}

/// A fetched, fully verified prekey bundle of one remote device.
#[derive(Clone)]
pub struct PrekeyBundle {
    pub(crate) identity: IdentityKey,
    pub(crate) device_id: u32,
    pub(crate) signed_prekey_id: u32,
    pub(crate) signed_prekey: [u8; 32],
    pub(crate) signed_prekey_created_at: u64,
    pub(crate) one_time_prekey: Option<(u32, [u8; 32])>,
    pub(crate) kem_prekey_id: u32,
    pub(crate) kem_prekey: Vec<u8>,
    pub(crate) kem_is_last_resort: bool,
}

fn key32(bytes: &[u8], what: &'static str) -> Result<[u8; 32]> {
    bytes.try_into().map_err(|_| Error::Malformed { what })
}

impl PrekeyBundle {
    /// Assembles and verifies a bundle from what the relay returned: the
    /// signed bundle blob, optionally one `OneTimeEcPrekey` item and optionally
    /// one `SignedOneTimeKemPrekey` item (without it the last-resort KEM key is
    /// used). Every signature is checked; any failure rejects the bundle.
    pub fn assemble(
        signed_bundle: &[u8],
        one_time_ec: Option<&[u8]>,
        one_time_kem: Option<&[u8]>,
    ) -> Result<Self> {
        let blob = SignedBundle::decode(signed_bundle).map_err(|_| Error::Malformed {
            what: "signed bundle",
        })?;
        if blob.version != BUNDLE_VERSION {
            return Err(Error::Malformed {
                what: "signed bundle version",
            });
        }
        let identity = IdentityKey::from_bytes(&blob.identity_key)?;
        let signed_prekey = key32(&blob.signed_prekey, "signed prekey")?;
        PrekeyStatement {
            context: SIGNED_PREKEY_CONTEXT,
            identity: &identity,
            device_id: blob.device_id,
            id: blob.signed_prekey_id,
            created_at: blob.signed_prekey_created_at,
            public: &signed_prekey,
        }
        .verify(&blob.signed_prekey_signature, "signed prekey")?;
        let one_time_prekey = match one_time_ec {
            None => None,
            Some(bytes) => {
                let item = wire::OneTimeEcPrekey::decode(bytes).map_err(|_| Error::Malformed {
                    what: "one-time prekey",
                })?;
                Some((item.id, key32(&item.public_key, "one-time prekey")?))
            }
        };
        let (kem_prekey_id, kem_prekey, signature, created_at, kem_is_last_resort) =
            match one_time_kem {
                Some(bytes) => {
                    let item = wire::SignedOneTimeKemPrekey::decode(bytes).map_err(|_| {
                        Error::Malformed {
                            what: "one-time KEM prekey",
                        }
                    })?;
                    (
                        item.id,
                        item.public_key,
                        item.signature,
                        item.created_at,
                        false,
                    )
                }
                None => (
                    blob.kem_prekey_id,
                    blob.kem_prekey,
                    blob.kem_prekey_signature,
                    blob.kem_prekey_created_at,
                    true,
                ),
            };
        if kem_prekey.len() != KEM_PUBLIC_LEN {
            return Err(Error::Malformed { what: "KEM prekey" });
        }
        crate::keys::kem_public_key(&kem_prekey)?;
        PrekeyStatement {
            context: KEM_PREKEY_CONTEXT,
            identity: &identity,
            device_id: blob.device_id,
            id: kem_prekey_id,
            created_at,
            public: &kem_prekey,
        }
        .verify(&signature, "KEM prekey")?;
        Ok(PrekeyBundle {
            identity,
            device_id: blob.device_id,
            signed_prekey_id: blob.signed_prekey_id,
            signed_prekey,
            signed_prekey_created_at: blob.signed_prekey_created_at,
            one_time_prekey,
            kem_prekey_id,
            kem_prekey,
            kem_is_last_resort,
        })
    }

    /// The bundle owner's identity key.
    pub fn identity(&self) -> &IdentityKey {
        &self.identity
    }

    /// The device id the bundle was signed for.
    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    /// Whether the bundle fell back to the last-resort KEM key.
    pub fn uses_last_resort_kem(&self) -> bool {
        self.kem_is_last_resort
    }

    /// When the signed prekey was created (unix seconds), to spot a device
    /// that stopped rotating.
    pub fn signed_prekey_created_at(&self) -> u64 {
        self.signed_prekey_created_at
    }
}

impl fmt::Debug for PrekeyBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrekeyBundle")
            .field("identity", &self.identity)
            .field("device_id", &self.device_id)
            .field("signed_prekey", &Hex(&self.signed_prekey[..8]))
            .field(
                "one_time_prekey_id",
                &self.one_time_prekey.map(|(id, _)| id),
            )
            .field("kem_prekey_id", &self.kem_prekey_id)
            .finish()
    }
}

/// How many one-time prekeys to generate given how many the relay still holds.
pub fn replenish_count(remaining_on_relay: u32) -> u32 {
    if remaining_on_relay < ONE_TIME_PREKEY_LOW_WATER {
        ONE_TIME_PREKEY_TARGET - remaining_on_relay
    } else {
        0
    }
}
