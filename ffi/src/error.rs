//! The one error type every exported function returns.
//!
//! UniFFI turns `SottoError` into a typed exception hierarchy
//! (`SottoException.InvalidInput`, ... in Kotlin; `SottoError.invalidInput`
//! in Swift), so a mobile developer can `catch` precisely what went wrong.
//! Messages name the failed check and never carry key material, plaintext or
//! ciphertext: errors end up in crash reports and logs.

/// Everything that can go wrong across the FFI boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum SottoError {
    /// An argument failed validation (wrong length, malformed encoding, ...).
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// Which check failed; never the offending bytes.
        reason: String,
    },
    /// The object was closed (`shutdown()`) before the call.
    #[error("{reason}")]
    Closed {
        /// What happened, in words for a log or a developer.
        reason: String,
    },
    /// Another consumer (a subscription or a pending `nextEvent()`) already
    /// reads the event queue; it has exactly one consumer at a time.
    #[error("busy: {reason}")]
    Busy {
        /// Which consumer holds the object.
        reason: String,
    },
    /// A foreign listener threw instead of returning.
    #[error("listener failed: {reason}")]
    Listener {
        /// The foreign exception's description.
        reason: String,
    },
    /// A bug or resource failure inside the library (e.g. the runtime could
    /// not start, or a background task panicked). Never caused by bad input.
    #[error("internal error: {reason}")]
    Internal {
        /// What failed.
        reason: String,
    },
    /// A message or record did not parse (wrong length, bad encoding).
    #[error("malformed {what}")]
    Malformed {
        /// Which structure was malformed.
        what: String,
    },
    /// The message uses a protocol version this build does not speak.
    #[error("unsupported message version {version}")]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
    },
    /// A prekey signature did not verify under the bundle's identity key.
    #[error("bad signature on {what}")]
    BadSignature {
        /// Which key's signature failed.
        what: String,
    },
    /// A public key was not a valid encoding.
    #[error("invalid public key: {what}")]
    InvalidKey {
        /// Which key was invalid.
        what: String,
    },
    /// Authentication failed: the message was tampered with or was not
    /// encrypted for this session.
    #[error("{reason}")]
    DecryptFailed {
        /// What happened, in words for a log or a developer.
        reason: String,
    },
    /// This exact message was already decrypted; drop it silently.
    #[error("duplicate message (chain counter {counter})")]
    DuplicateMessage {
        /// Its counter within its chain.
        counter: u32,
    },
    /// The key of this late message was evicted (too many skipped keys).
    #[error("message key for counter {counter} was evicted")]
    MessageKeyEvicted {
        /// The counter whose key is gone.
        counter: u32,
    },
    /// The message skips more keys than allowed.
    #[error("message jumps {gap} keys ahead, more than the allowed gap")]
    TooFarInFuture {
        /// Requested jump.
        gap: u32,
    },
    /// No session exists with this device: process its prekey bundle first.
    #[error("{reason}")]
    NoSession {
        /// What happened, in words for a log or a developer.
        reason: String,
    },
    /// The first message names a prekey this device no longer has.
    #[error("unknown {what} id {id}")]
    UnknownPrekey {
        /// Which kind of prekey.
        what: String,
        /// The id the message named.
        id: u32,
    },
    /// A session's first message was replayed.
    #[error("{reason}")]
    ReplayedPreKeyMessage {
        /// What happened, in words for a log or a developer.
        reason: String,
    },
    /// A first message names a one-time prekey another session already used
    /// (served twice by the relay, or an old bundle replayed).
    #[error("{what} {id} was already used by another session")]
    OneTimePrekeyReused {
        /// Which kind of prekey.
        what: String,
        /// Its id.
        id: u32,
    },
    /// The contact's identity key changed. Nothing was changed: ask the user,
    /// then call `acceptIdentity` with `new_identity` to trust it.
    #[error("identity key of this contact changed")]
    IdentityChanged {
        /// The newly presented public identity key.
        new_identity: Vec<u8>,
    },
    /// The message or bundle belongs to another device id.
    #[error("addressed to device {device_id}, not this one")]
    WrongDevice {
        /// The device id it names.
        device_id: u32,
    },
    /// The store holds no identity (open a store created by this library).
    #[error("{reason}")]
    NoIdentity {
        /// What happened, in words for a log or a developer.
        reason: String,
    },
    /// A stored record failed authentication: disk damage or a wrong key.
    #[error("corrupt store record in {table}")]
    CorruptRecord {
        /// Table of the record.
        table: String,
    },
    /// The database is older than the generation the app last saw (a
    /// restored backup): refused, nothing changed.
    #[error("store rolled back (generation {found}, expected at least {expected})")]
    StoreRolledBack {
        /// The generation the database holds.
        found: u64,
        /// The generation the app expected.
        expected: u64,
    },
    /// The durable store failed (I/O, disk full, locked database).
    #[error("storage: {reason}")]
    Storage {
        /// The backend's description.
        reason: String,
    },
    /// A user, relay or link-code address did not parse.
    #[error("invalid address: {reason}")]
    InvalidAddress {
        /// Which part was wrong.
        reason: String,
    },
    /// The user has no published device list on their relay (wrong address,
    /// or the user never registered there).
    #[error("{reason}")]
    UnknownUser {
        /// What happened, in words for a log or a developer.
        reason: String,
    },
    /// A wait (`flush`, `waitSynced`, linking) ended before what it waited for.
    #[error("{reason}")]
    Timeout {
        /// What happened, in words for a log or a developer.
        reason: String,
    },
    /// A relay refused a request (`code` is the protocol's error code name,
    /// such as `RATE_LIMITED`) or could not be reached (`code` is null/nil).
    #[error("relay: {reason}")]
    Relay {
        /// The relay's typed refusal, if it answered.
        code: Option<String>,
        /// Description, without content or keys.
        reason: String,
    },
    /// An attachment failed verification: corrupt or truncated blob, a blob
    /// that is not the one the sender uploaded, or an inconsistent pointer.
    #[error("attachment rejected: {reason}")]
    AttachmentRejected {
        /// Which check failed.
        reason: String,
    },
    /// The file exceeds the largest attachment size.
    #[error("{reason}")]
    AttachmentTooLarge {
        /// What happened, in words for a log or a developer.
        reason: String,
    },
    /// Reading the source file or writing the destination failed.
    #[error("attachment I/O: {reason}")]
    AttachmentIo {
        /// The OS error.
        reason: String,
    },
    /// A device list was refused against the one already seen (rolled back,
    /// equivocating, jumping too far, re-using a device id).
    #[error("device list refused: {reason}")]
    DeviceListRejected {
        /// Which rule it broke.
        reason: String,
    },
    /// Only the primary device (holding the account key) links and unlinks.
    #[error("{reason}")]
    NotPrimary {
        /// What happened, in words for a log or a developer.
        reason: String,
    },
    /// The peer's message request was not accepted yet (or a group
    /// invitation: `acceptGroup` first).
    #[error("{reason}")]
    NotAccepted {
        /// What happened, in words for a log or a developer.
        reason: String,
    },
    /// A peer's group change, state or key broke a rule (nothing applied).
    #[error("group change refused: {reason}")]
    GroupRejected {
        /// Which rule it broke.
        reason: String,
    },
    /// This device is in no group with that id (or no longer a member).
    #[error("{reason}")]
    UnknownGroup {
        /// What happened, in words for a log or a developer.
        reason: String,
    },
    /// Only the group's admins may do this.
    #[error("{reason}")]
    NotGroupAdmin {
        /// What happened, in words for a log or a developer.
        reason: String,
    },
    /// Past a group limit (1,000 members, 16 devices per member).
    #[error("group too large: {reason}")]
    GroupTooLarge {
        /// Which limit.
        reason: String,
    },
}

/// Every core error keeps its own variant, so apps can react precisely
/// (ignore a duplicate, ask about an identity change, re-fetch a bundle).
impl From<sotto_core::Error> for SottoError {
    fn from(e: sotto_core::Error) -> Self {
        use sotto_core::Error as E;
        match e {
            E::Malformed { what } => Self::Malformed { what: what.into() },
            E::UnsupportedVersion(version) => Self::UnsupportedVersion { version },
            E::BadSignature { what } => Self::BadSignature { what: what.into() },
            E::InvalidKey { what } => Self::InvalidKey { what: what.into() },
            E::DecryptFailed => Self::DecryptFailed {
                reason: "the message did not decrypt: a wrong key, or changed in transit".into(),
            },
            E::DuplicateMessage { counter } => Self::DuplicateMessage { counter },
            E::MessageKeyEvicted { counter } => Self::MessageKeyEvicted { counter },
            E::TooFarInFuture { gap } => Self::TooFarInFuture { gap },
            E::NoSession => Self::NoSession {
                reason: "no session with that device yet".into(),
            },
            E::UnknownPrekey { what, id } => Self::UnknownPrekey {
                what: what.into(),
                id,
            },
            E::ReplayedPreKeyMessage => Self::ReplayedPreKeyMessage {
                reason: "a first (PreKey) message that was already processed".into(),
            },
            E::OneTimePrekeyReused { what, id } => Self::OneTimePrekeyReused {
                what: what.into(),
                id,
            },
            E::StoreRolledBack { found, expected } => Self::StoreRolledBack { found, expected },
            E::IdentityChanged { new_identity } => Self::IdentityChanged {
                new_identity: new_identity.as_bytes().to_vec(),
            },
            E::WrongDevice(device_id) => Self::WrongDevice { device_id },
            E::NoIdentity => Self::NoIdentity {
                reason: "this store holds no identity yet: create the device or client first"
                    .into(),
            },
            E::CorruptRecord { table } => Self::CorruptRecord {
                table: table.into(),
            },
            E::Storage(reason) => Self::Storage { reason },
            E::InvalidArgument(reason) => Self::InvalidInput {
                reason: reason.into(),
            },
            E::AttachmentCorrupt(reason) => Self::AttachmentRejected {
                reason: reason.into(),
            },
            E::AttachmentDigestMismatch => Self::AttachmentRejected {
                reason: "digest mismatch (not the blob the sender uploaded)".into(),
            },
            E::AttachmentTooLarge => Self::AttachmentTooLarge {
                reason: "the attachment is over the size limit".into(),
            },
            E::AttachmentIo(e) => Self::AttachmentIo {
                reason: e.to_string(),
            },
            // The core enum is non-exhaustive; a new variant shows as internal
            // until it gets its own here.
            other => Self::Internal {
                reason: other.to_string(),
            },
        }
    }
}

/// The messenger's own errors; its core errors keep their variants.
impl From<sotto_messenger::Error> for SottoError {
    fn from(e: sotto_messenger::Error) -> Self {
        use sotto_messenger::Error as E;
        match e {
            E::Core(e) => e.into(),
            E::Relay(r) => Self::Relay {
                code: r.remote_code().map(|c| c.as_str_name().to_owned()),
                reason: r.to_string(),
            },
            E::InvalidAddress(reason) => Self::InvalidAddress {
                reason: reason.into(),
            },
            E::UnknownUser => Self::UnknownUser {
                reason: "unknown user: no device list on their relay".into(),
            },
            E::Timeout => Self::Timeout {
                reason: "timed out".into(),
            },
            E::DeviceListRejected(reason) => Self::DeviceListRejected {
                reason: reason.into(),
            },
            E::NotPrimary => Self::NotPrimary {
                reason: "only the primary device can do this".into(),
            },
            E::NotAccepted => Self::NotAccepted {
                reason: "the peer is not an accepted contact".into(),
            },
            E::GroupRejected(reason) => Self::GroupRejected {
                reason: reason.into(),
            },
            E::UnknownGroup => Self::UnknownGroup {
                reason: "unknown group (or no longer a member)".into(),
            },
            E::NotGroupAdmin => Self::NotGroupAdmin {
                reason: "only an admin of the group can do this".into(),
            },
            E::GroupTooLarge(reason) => Self::GroupTooLarge {
                reason: reason.into(),
            },
            // The messenger's enum is non-exhaustive; a new variant shows as
            // internal until it gets its own here.
            other => Self::Internal {
                reason: other.to_string(),
            },
        }
    }
}

impl SottoError {
    /// The object was shut down or used up.
    pub(crate) fn closed() -> Self {
        SottoError::Closed {
            reason: "the client was shut down (shutdown() was called), or the object was already used up".into(),
        }
    }
}

/// A foreign listener that throws something other than a `SottoException`
/// lands here instead of panicking inside the delivery task.
impl From<uniffi::UnexpectedUniFFICallbackError> for SottoError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        SottoError::Listener { reason: e.reason }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = SottoError> = std::result::Result<T, E>;
