//! The one error type of sotto-core.
//!
//! Every failure a peer, the relay or a damaged disk can cause is a distinct,
//! typed variant so callers can react precisely (drop a duplicate silently, ask
//! the user about an identity change, request a session reset) instead of
//! parsing strings. No variant ever carries secret material.

use crate::identity::IdentityKey;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Everything that can go wrong in sotto-core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message or record did not parse (wrong length, bad protobuf, unknown version).
    #[error("malformed {what}")]
    Malformed {
        /// Which structure was malformed.
        what: &'static str,
    },
    /// The envelope carries a protocol version this build does not speak.
    #[error("unsupported message version {0}")]
    UnsupportedVersion(u8),
    /// A prekey signature did not verify under the bundle's identity key.
    #[error("bad signature on {what}")]
    BadSignature {
        /// Which key's signature failed.
        what: &'static str,
    },
    /// A public key was not a valid encoding (or gave an all-zero X25519 output).
    #[error("invalid public key: {what}")]
    InvalidKey {
        /// Which key was invalid.
        what: &'static str,
    },
    /// The AEAD tag did not verify: the message was tampered with, or it was
    /// not encrypted for this session.
    #[error("message authentication failed")]
    DecryptFailed,
    /// This exact message was already decrypted (its key was used and deleted).
    #[error("duplicate message (chain counter {counter})")]
    DuplicateMessage {
        /// The counter of the duplicated message within its chain.
        counter: u32,
    },
    /// The message key was evicted because too many skipped keys were stored.
    #[error("message key for counter {counter} was evicted")]
    MessageKeyEvicted {
        /// The counter whose key is gone.
        counter: u32,
    },
    /// The message would skip more keys than [`crate::ratchet::MAX_MESSAGE_GAP`].
    #[error("message jumps {gap} keys ahead, more than the allowed gap")]
    TooFarInFuture {
        /// Requested jump.
        gap: u32,
    },
    /// No session exists with this device.
    #[error("no session with this device")]
    NoSession,
    /// The PQXDH message names a prekey this device does not have (used,
    /// rotated away, or never existed).
    #[error("unknown {what} id {id}")]
    UnknownPrekey {
        /// Which kind of prekey.
        what: &'static str,
        /// The id the message named.
        id: u32,
    },
    /// A PQXDH first message was replayed: its one-time key was consumed by
    /// this same base key, or the (last-resort KEM key, base key) pair was
    /// already used.
    #[error("replayed PQXDH first message")]
    ReplayedPreKeyMessage,
    /// A PQXDH first message names a one-time prekey that another session
    /// (another base key) already consumed: the relay served the key twice,
    /// or someone replays an old bundle. The message is refused and reported.
    #[error("{what} {id} was already used by another session")]
    OneTimePrekeyReused {
        /// Which kind of prekey.
        what: &'static str,
        /// Its id.
        id: u32,
    },
    /// The remote identity key differs from the one recorded for this contact.
    /// Nothing was changed; the app must ask the user, then call
    /// `accept_identity` to trust the new key.
    #[error("identity key of this contact changed")]
    IdentityChanged {
        /// The newly presented identity key.
        new_identity: Box<IdentityKey>,
    },
    /// The message was addressed to a different device id.
    #[error("message for device {0}, this is another device")]
    WrongDevice(u32),
    /// The local device has no identity yet.
    #[error("no local identity")]
    NoIdentity,
    /// A stored record failed authentication or decoding (disk damage or wrong app key).
    #[error("corrupt store record in {table}")]
    CorruptRecord {
        /// Table of the record.
        table: &'static str,
    },
    /// The durable backend failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The database is older than the generation the app last saw: a
    /// restored backup or a rolled-back file, whose sending chains would
    /// re-use message keys. Nothing was changed; do not use this database.
    #[error("store rolled back (generation {found}, expected at least {expected})")]
    StoreRolledBack {
        /// The generation the database holds.
        found: u64,
        /// The generation the app expected (at least).
        expected: u64,
    },
    /// An attachment blob is not a valid encryption under the pointer's key:
    /// a chunk failed authentication, the blob was truncated or extended, its
    /// header is unknown, or the pointer's lengths are inconsistent. The
    /// string names the check that failed (never any secret).
    #[error("corrupt attachment: {0}")]
    AttachmentCorrupt(&'static str),
    /// The downloaded attachment blob is not the one the sender uploaded (its
    /// SHA-256 differs from the pointer's digest): the relay swapped or
    /// altered it.
    #[error("attachment digest mismatch")]
    AttachmentDigestMismatch,
    /// The attachment exceeds [`crate::attachment::MAX_PLAINTEXT_LEN`].
    #[error("attachment larger than the maximum size")]
    AttachmentTooLarge,
    /// Reading the source or writing the destination of an attachment failed.
    #[error("attachment I/O: {0}")]
    AttachmentIo(#[source] std::io::Error),
    /// A caller-supplied value is unacceptable.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
}

/// Whose fault a failure is: what a caller does about it depends on this,
/// not on the variant. Every crate decides it for its own errors in one
/// place ([`Error::fault`] here), as rustls groups its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// Another party sent something invalid, forged or refused: a peer
    /// device, or a relay. The same input fails the same way again; report
    /// it (it may be an attack), never retry it.
    Peer,
    /// This device failed: the disk, a damaged or rolled-back store. Nothing
    /// was changed; the same call may succeed once the cause is fixed.
    Local,
    /// Nobody's fault yet: a relay is unreachable, busy or limits us, or a
    /// wait ran out. Retry later. (Never from sotto-core itself, which does
    /// no I/O but its store's.)
    Network,
    /// The caller's mistake: an argument out of range, an operation the
    /// state does not allow. Fix the call.
    Caller,
}

impl Error {
    /// Whose fault this error is: the one place sotto-core decides it.
    pub fn fault(&self) -> Fault {
        match self {
            Error::Malformed { .. }
            | Error::UnsupportedVersion(_)
            | Error::BadSignature { .. }
            | Error::InvalidKey { .. }
            | Error::DecryptFailed
            | Error::DuplicateMessage { .. }
            | Error::MessageKeyEvicted { .. }
            | Error::TooFarInFuture { .. }
            | Error::UnknownPrekey { .. }
            | Error::ReplayedPreKeyMessage
            | Error::OneTimePrekeyReused { .. }
            | Error::IdentityChanged { .. }
            | Error::WrongDevice(_)
            | Error::AttachmentCorrupt(_)
            | Error::AttachmentDigestMismatch => Fault::Peer,
            Error::NoIdentity
            | Error::CorruptRecord { .. }
            | Error::Storage(_)
            | Error::StoreRolledBack { .. }
            | Error::AttachmentIo(_) => Fault::Local,
            Error::NoSession | Error::AttachmentTooLarge | Error::InvalidArgument(_) => {
                Fault::Caller
            }
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Storage(e.to_string())
    }
}
