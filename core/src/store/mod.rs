//! Persistence: a small transactional key-value [`Store`] trait with one
//! in-memory and one durable (SQLite, encrypted per row) implementation, and
//! the typed record layout the [`crate::device::Device`] writes through it.
//!
//! Why key-value: every domain record (identity, prekeys, contacts, the
//! session index, each session's chain state, each skipped message key) is a
//! versioned protobuf value under a structured key, so both backends share one
//! record layout and one commit path, and a decrypt touches only a few small
//! rows. All writes of one operation go through one [`Txn`], committed
//! atomically or not at all. Callers can add their own rows to the same
//! transaction (table [`Table::App`]) through the hook of
//! [`crate::device::Device::decrypt_with`].

pub mod memory;
pub(crate) mod records;
pub mod sqlite;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The logical tables. The numeric id is part of every stored key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Table {
    /// This device's identity and id counters.
    Local = 1,
    /// Signed X25519 prekeys by id.
    SignedPrekey = 2,
    /// ML-KEM prekeys (one-time and last-resort) by id.
    KemPrekey = 3,
    /// One-time X25519 prekeys by id.
    OneTimePrekey = 4,
    /// Recorded identity (trust state) per remote device address.
    Contact = 5,
    /// Ordered session ids per remote device.
    SessionIndex = 6,
    /// Session chain state per (device, session id).
    Session = 7,
    /// Skipped message keys per (device, session, chain, counter).
    SkippedKey = 8,
    /// (last-resort KEM id, base key) pairs already used.
    SeenBaseKey = 9,
    /// Rows owned by the application, written atomically with a decrypt.
    App = 10,
    /// One-time prekeys already consumed: `kind (1 EC, 2 KEM) || u32be(id)`
    /// -> `u64be(consumed_at) || base key`, so a key served twice is told
    /// apart from a replay.
    ConsumedPrekey = 11,
}

impl Table {
    /// A stable name, used in errors and in the at-rest associated data.
    pub fn name(self) -> &'static str {
        match self {
            Table::Local => "local",
            Table::SignedPrekey => "signed_prekey",
            Table::KemPrekey => "kem_prekey",
            Table::OneTimePrekey => "one_time_prekey",
            Table::Contact => "contact",
            Table::SessionIndex => "session_index",
            Table::Session => "session",
            Table::SkippedKey => "skipped_key",
            Table::SeenBaseKey => "seen_base_key",
            Table::App => "app",
            Table::ConsumedPrekey => "consumed_prekey",
        }
    }
}

/// A stored value; zeroized when dropped because many values are secrets.
pub type Value = Zeroizing<Vec<u8>>;

/// Reads and writes inside one atomic transaction.
pub trait Txn {
    /// Reads a row (seeing this transaction's own writes).
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Value>>;
    /// Inserts or replaces a row.
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()>;
    /// Deletes a row if present.
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<()>;
    /// Deletes every row with `from <= key < to` (bytewise order).
    fn delete_range(&mut self, table: Table, from: &[u8], to: &[u8]) -> Result<()>;
    /// Keys of every row starting with `prefix`, in bytewise order.
    fn keys_with_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<Vec<u8>>>;

    /// The first `limit` keys starting with `prefix` (a backend should stop
    /// reading there: a long queue costs its head nothing).
    fn first_keys_with_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let mut keys = self.keys_with_prefix(table, prefix)?;
        keys.truncate(limit);
        Ok(keys)
    }

    /// Deletes every row whose key starts with `prefix`.
    fn delete_prefix(&mut self, table: Table, prefix: &[u8]) -> Result<()> {
        match prefix_end(prefix) {
            Some(end) => self.delete_range(table, prefix, &end),
            None => {
                for k in self.keys_with_prefix(table, prefix)? {
                    self.delete(table, &k)?;
                }
                Ok(())
            }
        }
    }
}

/// A transactional store.
pub trait Store {
    /// The transaction type handed to [`Store::transaction`] closures.
    type Txn<'t>: Txn
    where
        Self: 't;

    /// Runs `f` in one transaction: commits if it returns `Ok`, rolls back
    /// everything (including a caller's own writes) if it returns `Err` or
    /// panics.
    fn transaction<R, E: From<Error>>(
        &mut self,
        f: impl FnOnce(&mut Self::Txn<'_>) -> Result<R, E>,
    ) -> Result<R, E>;

    /// Reads one row outside a transaction.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Value>>;
}

/// The smallest byte string greater than every string starting with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
