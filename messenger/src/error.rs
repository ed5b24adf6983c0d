//! The messenger's one error type, and the one place that decides whose
//! fault each failure is.
//!
//! It wraps the core's errors (cryptography, sessions, the store) and the
//! relay protocol's, and adds the messenger's own. What to do about an
//! error (retry the send later, report a forged envelope, stop and tell
//! the user about the disk) depends on [`Error::fault`], never on a list
//! of variants kept somewhere else. No variant carries secret material.

use sotto_proto::relay::ErrorCode;
use sotto_relay::RelayError;

pub use sotto_core::Fault;

/// Result alias of the messenger.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Everything that can go wrong in the messenger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Cryptography, sessions or the store failed (see its variant).
    #[error(transparent)]
    Core(#[from] sotto_core::Error),
    /// A relay refused a request (it answered with a typed code) or the
    /// connection failed.
    #[error("relay: {0}")]
    Relay(#[from] RelayError),
    /// A user, relay or link address did not parse.
    #[error("invalid address: {0}")]
    InvalidAddress(&'static str),
    /// The user has no published device list on the named relay.
    #[error("unknown user (no device list on their relay)")]
    UnknownUser,
    /// A wait ended before what it waited for happened.
    #[error("timed out")]
    Timeout,
    /// A device list was refused against the one already seen for that
    /// user (rolled back, equivocating, jumping too far, re-using a device
    /// id); nothing was sent with it.
    #[error("device list refused: {0}")]
    DeviceListRejected(&'static str),
    /// Only the user's primary device (the one holding the account key) can
    /// do this: link or unlink devices.
    #[error("only the primary device can do this")]
    NotPrimary,
    /// The peer is not an accepted contact yet (a message request): accept
    /// the request first.
    #[error("the peer is not an accepted contact")]
    NotAccepted,
    /// A group change, state or sender key from a peer broke a rule of
    /// PROTOCOL.md III.12 (nothing of it was applied).
    #[error("group change refused: {0}")]
    GroupRejected(&'static str),
    /// This device is in no group with that id (or no longer a member).
    #[error("unknown group")]
    UnknownGroup,
    /// Only a group's admins may change it.
    #[error("only an admin of the group can do this")]
    NotGroupAdmin,
    /// A live signal (presence, typing) broke a rule of PROTOCOL.md III.14:
    /// not from an accepted contact's listed device over an established
    /// session, or not a live signal. Nothing of it was shown.
    #[error("live signal refused: {0}")]
    LiveRefused(&'static str),
    /// Past a group limit: 1,000 members, 16 devices per member
    /// (PROTOCOL.md III.12).
    #[error("group too large: {0}")]
    GroupTooLarge(&'static str),
}

impl Error {
    /// Whose fault this error is: the one place the messenger decides it
    /// (the core decides for its own errors, in [`sotto_core::Error::fault`]).
    pub fn fault(&self) -> Fault {
        match self {
            Error::Core(e) => e.fault(),
            Error::Relay(e) => relay_fault(e),
            Error::DeviceListRejected(_) | Error::GroupRejected(_) | Error::LiveRefused(_) => {
                Fault::Peer
            }
            Error::Timeout => Fault::Network,
            Error::InvalidAddress(_)
            | Error::UnknownUser
            | Error::NotPrimary
            | Error::NotAccepted
            | Error::UnknownGroup
            | Error::NotGroupAdmin
            | Error::GroupTooLarge(_) => Fault::Caller,
        }
    }

    /// A typed refusal the relay answered with, if this is one.
    pub fn relay_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Relay(e) => e.remote_code(),
            _ => None,
        }
    }

    /// The local store failed: what every caller reports as a storage error.
    pub(crate) fn storage(what: impl Into<String>) -> Self {
        Error::Core(sotto_core::Error::Storage(what.into()))
    }

    /// A stored row of `table` did not decode or authenticate.
    pub(crate) fn corrupt(table: &'static str) -> Self {
        Error::Core(sotto_core::Error::CorruptRecord { table })
    }

    /// Bytes from a peer or a relay did not parse as `what`.
    pub(crate) fn malformed(what: &'static str) -> Self {
        Error::Core(sotto_core::Error::Malformed { what })
    }

    /// A caller-supplied value is unacceptable.
    pub(crate) fn invalid_argument(what: &'static str) -> Self {
        Error::Core(sotto_core::Error::InvalidArgument(what))
    }
}

/// A relay error's fault, as PROTOCOL.md III (the outbox) lists them: the
/// relay's `NOT_FOUND`, `BAD_SIGNATURE`, `INVALID_ARGUMENT` and
/// `ENVELOPE_TOO_LARGE` repeat (the peer's); every other refusal, an answer
/// that does not decode (a broken connection looks the same), and a lost or
/// failed connection are the network's: retried later.
fn relay_fault(e: &RelayError) -> Fault {
    use ErrorCode as C;
    if let Some(code) = e.remote_code() {
        return match code {
            C::NotFound | C::BadSignature | C::InvalidArgument | C::EnvelopeTooLarge => Fault::Peer,
            C::Unspecified
            | C::Malformed
            | C::FrameTooLarge
            | C::UnsupportedVersion
            | C::NotAuthenticated
            | C::AuthFailed
            | C::AlreadyAuthenticated
            | C::QuotaExceeded
            | C::RateLimited
            | C::StaleVersion
            | C::TooManyItems
            | C::BlobTooLarge
            | C::Storage
            | C::ShuttingDown
            | C::Overloaded
            | C::BadDeliveryToken => Fault::Network,
        };
    }
    match e {
        // The address is wrong or outdated (or someone is in between):
        // retrying the same address cannot help.
        RelayError::InvalidArgument(_)
        | RelayError::FingerprintMismatch { .. }
        | RelayError::NoRuntime => Fault::Caller,
        RelayError::Storage(_) | RelayError::Config(_) => Fault::Local,
        RelayError::Remote { .. }
        | RelayError::FrameTooLarge { .. }
        | RelayError::Truncated
        | RelayError::Malformed(_)
        | RelayError::UnsupportedVersion(_)
        | RelayError::UnexpectedReply
        | RelayError::Connect(_)
        | RelayError::Connection(_)
        | RelayError::Write(_)
        | RelayError::Tls(_)
        | RelayError::Exporter
        | RelayError::Io(_)
        | RelayError::IoAt { .. } => Fault::Network,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PROTOCOL.md III.8: only these four refusals repeat; every other
    /// refusal (`MALFORMED` is what an honest relay answers a request that
    /// timed out with) and an answer that does not decode are retried.
    #[test]
    fn only_the_specs_four_relay_refusals_end_a_message() {
        use ErrorCode as C;
        let refusal = |c| Error::Relay(RelayError::refusal(c, "test")).fault();
        for c in [
            C::NotFound,
            C::BadSignature,
            C::InvalidArgument,
            C::EnvelopeTooLarge,
        ] {
            assert_eq!(refusal(c), Fault::Peer, "{c:?}");
        }
        for c in [
            C::Malformed,
            C::UnsupportedVersion,
            C::RateLimited,
            C::QuotaExceeded,
            C::Overloaded,
            C::Storage,
            C::BadDeliveryToken,
            C::AuthFailed,
        ] {
            assert_eq!(refusal(c), Fault::Network, "{c:?}");
        }
        assert_eq!(Error::Relay(RelayError::Truncated).fault(), Fault::Network);
        assert_eq!(Error::Timeout.fault(), Fault::Network);
        assert_eq!(Error::storage("disk").fault(), Fault::Local);
        assert_eq!(Error::NotAccepted.fault(), Fault::Caller);
    }
}
