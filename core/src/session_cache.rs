//! A small memo of decoded session rows, keyed by the exact stored bytes.
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
    /// The state decoded from `row`, if `row` is exactly what was cached for `key`.
    pub(crate) fn get(&mut self, key: &[u8], row: &[u8]) -> Option<SessionState> {
        let pos = self.entries.iter().position(|e| e.key == key)?;
        let e = &self.entries[pos];
        // The rows hold chain keys: compare them in constant time.
        if e.row.len() != row.len() || !bool::from(e.row.as_slice().ct_eq(row)) {
            // The store moved on (another handle, or a rolled-back write of
            // ours): drop the stale keys now rather than at eviction.
            self.entries.remove(pos);
            return None;
        }
        let state = SessionState::clone(&e.state);
        let entry = self.entries.remove(pos);
        self.entries.insert(0, entry);
        Some(state)
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
