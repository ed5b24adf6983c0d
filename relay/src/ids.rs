//! Identifiers that cross the wire: mailboxes, envelopes and blobs.
//!
//! A mailbox is named by its owner's Ed25519 device public key, so proving
//! possession of that key (see [`crate::auth`]) is all it takes to own it: no
//! accounts, no phone numbers. Envelope ids are time-sortable and unique.

use std::fmt;

use crate::error::RelayError;

/// A mailbox id: the owning device's 32-byte Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MailboxId(pub [u8; 32]);

/// An envelope id: big-endian milliseconds since the epoch, then a big-endian
/// relay-wide sequence number. Sorting ids sorts by arrival.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvelopeId(pub [u8; 16]);

/// An attachment blob id: 32 random bytes, unguessable.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobId(pub [u8; 32]);

impl MailboxId {
    /// Parses a 32-byte wire field.
    pub fn from_slice(b: &[u8]) -> Result<Self, RelayError> {
        b.try_into()
            .map(Self)
            .map_err(|_| RelayError::Malformed("mailbox id must be 32 bytes"))
    }
}

impl EnvelopeId {
    /// Builds an id from its two halves.
    pub fn new(ms: u64, seq: u64) -> Self {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&ms.to_be_bytes());
        b[8..].copy_from_slice(&seq.to_be_bytes());
        Self(b)
    }
    /// Parses a 16-byte wire field.
    pub fn from_slice(b: &[u8]) -> Result<Self, RelayError> {
        b.try_into()
            .map(Self)
            .map_err(|_| RelayError::Malformed("envelope id must be 16 bytes"))
    }
    /// Arrival time in milliseconds since the Unix epoch.
    pub fn millis(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(b)
    }
    /// Relay-wide sequence number (unique, increasing).
    pub fn seq(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[8..]);
        u64::from_be_bytes(b)
    }
}

impl BlobId {
    /// Parses a 32-byte wire field.
    pub fn from_slice(b: &[u8]) -> Result<Self, RelayError> {
        b.try_into()
            .map(Self)
            .map_err(|_| RelayError::Malformed("blob id must be 32 bytes"))
    }
}

macro_rules! hex_fmt {
    ($t:ty) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($t), hex::encode(self.0))
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }
    };
}
hex_fmt!(MailboxId);
hex_fmt!(EnvelopeId);

// Blob ids are capabilities (knowing one lets you download): never print them whole.
impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({}..)", hex::encode(&self.0[..4]))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn envelope_ids_sort_by_time_then_seq() {
        let a = EnvelopeId::new(5, 9);
        let b = EnvelopeId::new(6, 1);
        assert!(a < b);
        assert_eq!(a.millis(), 5);
        assert_eq!(a.seq(), 9);
        assert_eq!(EnvelopeId::from_slice(&a.0).unwrap(), a);
        assert!(EnvelopeId::from_slice(&[0; 15]).is_err());
    }

    #[test]
    fn blob_id_debug_does_not_reveal_capability() {
        let id = BlobId([0xab; 32]);
        assert!(!format!("{id:?}").contains(&hex::encode([0xab; 8])));
    }
}
