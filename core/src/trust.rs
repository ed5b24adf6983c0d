//! Trust on first use and explicit verification of contacts' identity keys.
//!
//! The first identity key seen for a user is recorded as `Unverified`. A
//! different key later is never accepted silently: the operation that saw it
//! fails with [`crate::Error::IdentityChanged`] and changes nothing, until the
//! app (after asking the user) calls `accept_identity`. Comparing safety
//! numbers and calling `mark_verified` records `Verified`; accepting a changed
//! key resets that to `Unverified`.

use prost::Message;
use sotto_proto::store as rec;

use crate::error::{Error, Result};
use crate::identity::IdentityKey;

/// How far the user trusts a contact's identity key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Trusted on first use only.
    Unverified,
    /// The user compared safety numbers.
    Verified,
}

/// A known contact's recorded identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    /// The recorded identity key.
    pub identity: IdentityKey,
    /// Its verification state.
    pub verification: Verification,
    /// When it was first seen (unix seconds).
    pub first_seen: u64,
}

/// The outcome of checking a presented identity against the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustCheck {
    /// No record yet: trust on first use (the caller records it).
    FirstUse,
    /// Matches the record.
    Known,
    /// Differs from the record.
    Changed,
}

/// Compares a presented identity with the recorded contact.
pub fn check(recorded: Option<&Contact>, presented: &IdentityKey) -> TrustCheck {
    match recorded {
        None => TrustCheck::FirstUse,
        Some(c) if c.identity.ct_eq(presented) => TrustCheck::Known,
        Some(_) => TrustCheck::Changed,
    }
}

/// Turns a `Changed` check into the typed error.
pub(crate) fn require_not_changed(check: TrustCheck, presented: &IdentityKey) -> Result<()> {
    if check == TrustCheck::Changed {
        return Err(Error::IdentityChanged {
            new_identity: Box::new(*presented),
        });
    }
    Ok(())
}

impl Contact {
    /// The stored form of this record (PROTOCOL.md I.8).
    pub fn encode(&self) -> Vec<u8> {
        rec::ContactRecord {
            identity_key: self.identity.as_bytes().to_vec(),
            verification: match self.verification {
                Verification::Unverified => 0,
                Verification::Verified => 1,
            },
            first_seen: self.first_seen,
        }
        .encode_to_vec()
    }

    /// Parses a stored record; [`Error::CorruptRecord`] if it is not one.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupt = || Error::CorruptRecord { table: "contact" };
        let r = rec::ContactRecord::decode(bytes).map_err(|_| corrupt())?;
        Ok(Contact {
            identity: IdentityKey::from_bytes(&r.identity_key).map_err(|_| corrupt())?,
            verification: match r.verification {
                0 => Verification::Unverified,
                1 => Verification::Verified,
                _ => return Err(corrupt()),
            },
            first_seen: r.first_seen,
        })
    }
}
