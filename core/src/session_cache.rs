//! A small memo of decoded session rows, keyed by the exact stored bytes:
//! a save puts its state in, the next load of the same row takes it out.
//!
//! Decoding a session row costs two Ed25519 point decompressions (the
//! identities) and an X25519 base-point multiplication (our ratchet public
//! key), about 15 times the ratchet step itself. The store stays the only
//! source of truth: a hit needs the row read in the current transaction to
//! equal, byte for byte, the row the cached state was decoded from or encoded
//! to, so a rolled-back transaction or a row changed by another handle to the
//! same store only costs a miss.

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::session::SessionState;

/// Rows kept: the conversations a device is actively in.
const CAPACITY: usize = 32;

struct Entry {
    key: Vec<u8>,
    row: Zeroizing<Vec<u8>>,
    /// Boxed so that reordering the cache moves a pointer, never key material.
    state: Box<SessionState>,
}

/// Most recently used first. Every secret an entry holds (the row bytes, the
/// decoded state) lives in its own heap allocation, zeroized when the entry is
/// dropped; reordering and growth move only pointers.
pub(crate) struct SessionCache {
    entries: Vec<Entry>,
}

impl Default for SessionCache {
    fn default() -> Self {
        Self {
            entries: Vec::with_capacity(CAPACITY + 1),
        }
    }
}

impl core::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SessionCache({} rows)", self.entries.len())
    }
}

impl SessionCache {
    /// Takes out the state decoded from `row`, if `row` is exactly what was
    /// cached for `key`. The entry leaves the cache either way: the caller
    /// puts the state back once it has saved it, so nothing is cloned, and a
    /// state whose transaction fails is simply gone (the next read decodes).
    pub(crate) fn take(&mut self, key: &[u8], row: &[u8]) -> Option<SessionState> {
        let pos = self.entries.iter().position(|e| e.key == key)?;
        let e = self.entries.remove(pos);
        // The rows hold chain keys: compare them in constant time. A mismatch
        // means the store moved on (another handle, or a rolled-back write).
        let same = e.row.len() == row.len() && bool::from(e.row.as_slice().ct_eq(row));
        same.then_some(*e.state)
    }

    /// Remembers that `row` (stored under `key`) decodes to `state`.
    pub(crate) fn put(&mut self, key: Vec<u8>, row: Zeroizing<Vec<u8>>, state: SessionState) {
        self.forget(&key);
        self.entries.insert(
            0,
            Entry {
                key,
                row,
                state: Box::new(state),
            },
        );
        self.entries.truncate(CAPACITY);
    }

    /// Drops a deleted session's keys from memory at once (forward secrecy).
    /// Deletions made through another handle on the same store are noticed
    /// at this handle's next read of that session, or at eviction.
    pub(crate) fn forget(&mut self, key: &[u8]) {
        self.entries.retain(|e| e.key != key);
    }
}
