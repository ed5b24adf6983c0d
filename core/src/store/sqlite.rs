//! The durable [`Store`]: one SQLite table of rows, each value encrypted at
//! rest with XChaCha20-Poly1305.
//!
//! Row key: the application supplies a 32-byte storage key; the row key is
//! `HKDF-SHA256(salt = "Sotto_v1_Store", ikm = app key, info = "Sotto_v1_Store_Rows")`.
//! Each value is stored as `nonce (24 random bytes) || ciphertext || tag` with
//! associated data `"Sotto_v1_Row" || table id || row key`, so a value moved
//! to another row or table fails to authenticate. Random 192-bit nonces make
//! collisions negligible however many rows are ever written.
//!
//! Durability: WAL journal with `synchronous = FULL`, so a transaction that
//! returned is on disk. That matters for safety, not just data: a rolled-back
//! sending chain would reuse message keys. Known limit: row *keys* (device
//! addresses, key ids, public ratchet keys, counters) are stored in clear.
//!
//! Forgetting: `secure_delete` overwrites deleted rows and freed pages with
//! zeros, and every [`CHECKPOINT_EVERY`] commits (and on drop) the WAL is
//! checkpointed and truncated to zero bytes, so a deleted message key
//! survives neither in the database file nor in old WAL frames (what the
//! file system or the flash keeps of freed blocks is beyond reach).
//!
//! Rollback: the store keeps an encrypted generation counter, raised by one
//! at every open. An app that keeps the last generation beside its storage
//! key (where a restored backup cannot reach) passes it to
//! [`SqliteStore::open_checked`]: a whole database restored from before
//! that open is refused with [`Error::StoreRolledBack`] instead of re-using
//! the message keys its sending chains already used.

use std::path::Path;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand_core::{OsRng, RngCore};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{Store, Table, Txn, Value};
use crate::error::{Error, Result};

const NONCE_LEN: usize = 24;

/// The app-supplied 32-byte key protecting the database at rest.
pub struct StorageKey(Zeroizing<[u8; 32]>);

impl StorageKey {
    /// Wraps key bytes (from the platform keystore).
    pub fn new(bytes: [u8; 32]) -> Self {
        StorageKey(Zeroizing::new(bytes))
    }
}

impl core::fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("StorageKey(<redacted>)")
    }
}

/// Encrypts and authenticates rows.
struct RowCipher {
    key: Zeroizing<[u8; 32]>,
}

impl RowCipher {
    fn new(app_key: &StorageKey) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"Sotto_v1_Store"), &app_key.0[..]);
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is within HKDF's output limit.
        let _ = hk.expand(b"Sotto_v1_Store_Rows", &mut key[..]);
        RowCipher { key }
    }

    fn ad(table: Table, key: &[u8]) -> Vec<u8> {
        let mut ad = Vec::with_capacity(13 + key.len());
        ad.extend_from_slice(b"Sotto_v1_Row");
        ad.push(table as u8);
        ad.extend_from_slice(key);
        ad
    }

    fn seal(&self, table: Table, key: &[u8], value: &[u8]) -> Result<Vec<u8>> {
        let cipher = XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&self.key[..]));
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: &Self::ad(table, key),
                },
            )
            .map_err(|_| Error::Storage("row encryption failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn open(&self, table: Table, key: &[u8], stored: &[u8]) -> Result<Value> {
        if stored.len() < NONCE_LEN + 16 {
            return Err(Error::CorruptRecord {
                table: table.name(),
            });
        }
        let cipher = XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&self.key[..]));
        cipher
            .decrypt(
                XNonce::from_slice(&stored[..NONCE_LEN]),
                Payload {
                    msg: &stored[NONCE_LEN..],
                    aad: &Self::ad(table, key),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| Error::CorruptRecord {
                table: table.name(),
            })
    }
}

/// A SQLite database of encrypted rows.
pub struct SqliteStore {
    conn: Connection,
    cipher: RowCipher,
    generation: u64,
    commits: u32,
}

impl core::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SqliteStore")
    }
}

/// Commits between two WAL truncations.
pub const CHECKPOINT_EVERY: u32 = 256;

const GENERATION_KEY: &[u8] = b"store_generation";

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = FULL;
    PRAGMA secure_delete = ON;
    PRAGMA journal_size_limit = 0;
    CREATE TABLE IF NOT EXISTS rows (
        t INTEGER NOT NULL,
        k BLOB NOT NULL,
        v BLOB NOT NULL,
        PRIMARY KEY (t, k)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', 1);
";

impl SqliteStore {
    /// Opens (or creates) the database at `path`, without a rollback check
    /// (the generation is still raised; see [`SqliteStore::open_checked`]).
    pub fn open(path: impl AsRef<Path>, key: &StorageKey) -> Result<Self> {
        Self::open_checked(path, key, 0)
    }

    /// Opens (or creates) the database at `path` and refuses it with
    /// [`Error::StoreRolledBack`] if its generation is below
    /// `min_generation`: the value [`SqliteStore::generation`] returned after
    /// the previous open, kept by the app beside the storage key. Keep the
    /// new [`SqliteStore::generation`] afterwards (a crash before that only
    /// leaves the stored value one behind, which still passes).
    pub fn open_checked(
        path: impl AsRef<Path>,
        key: &StorageKey,
        min_generation: u64,
    ) -> Result<Self> {
        Self::with_connection(Connection::open(path)?, key, min_generation)
    }

    /// An in-memory SQLite database (tests).
    pub fn open_in_memory(key: &StorageKey) -> Result<Self> {
        Self::with_connection(Connection::open_in_memory()?, key, 0)
    }

    fn with_connection(conn: Connection, key: &StorageKey, min_generation: u64) -> Result<Self> {
        conn.execute_batch(SCHEMA)?;
        let mut store = SqliteStore {
            conn,
            cipher: RowCipher::new(key),
            generation: 0,
            commits: 0,
        };
        let generation = store.transaction(|tx| {
            let found = match tx.get(Table::Local, GENERATION_KEY)? {
                None => 0,
                Some(v) => u64::from_be_bytes(
                    v.as_slice()
                        .try_into()
                        .map_err(|_| Error::CorruptRecord { table: "local" })?,
                ),
            };
            if found < min_generation {
                return Err(Error::StoreRolledBack {
                    found,
                    expected: min_generation,
                });
            }
            let next = found.saturating_add(1);
            tx.put(Table::Local, GENERATION_KEY, &next.to_be_bytes())?;
            Ok(next)
        })?;
        store.generation = generation;
        Ok(store)
    }

    /// This open's generation: keep it beside the storage key and pass it
    /// to [`SqliteStore::open_checked`] next time.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Checkpoints the WAL into the database and truncates it to zero
    /// bytes, so deleted rows survive in no old WAL frame.
    pub fn truncate_wal(&mut self) -> Result<()> {
        self.commits = 0;
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        let _ = self.truncate_wal();
    }
}

/// A transaction over a [`SqliteStore`].
pub struct SqliteTxn<'t> {
    tx: rusqlite::Transaction<'t>,
    cipher: &'t RowCipher,
}

impl<'t> SqliteTxn<'t> {
    /// The underlying SQLite transaction, for callers that keep their own
    /// tables in the same database and must write them atomically with a
    /// decrypt. (Rows written this way are not encrypted by Sotto.)
    pub fn sql(&self) -> &rusqlite::Transaction<'t> {
        &self.tx
    }
}

fn get_row(
    conn: &Connection,
    cipher: &RowCipher,
    table: Table,
    key: &[u8],
) -> Result<Option<Value>> {
    let mut stmt = conn.prepare_cached("SELECT v FROM rows WHERE t = ?1 AND k = ?2")?;
    let stored: Option<Vec<u8>> = stmt
        .query_row(params![table as u8, key], |r| r.get(0))
        .optional()?;
    match stored {
        None => Ok(None),
        Some(s) => cipher.open(table, key, &s).map(Some),
    }
}

impl Txn for SqliteTxn<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Value>> {
        get_row(&self.tx, self.cipher, table, key)
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        let sealed = self.cipher.seal(table, key, value)?;
        let mut stmt = self
            .tx
            .prepare_cached("INSERT OR REPLACE INTO rows (t, k, v) VALUES (?1, ?2, ?3)")?;
        stmt.execute(params![table as u8, key, sealed])?;
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<()> {
        let mut stmt = self
            .tx
            .prepare_cached("DELETE FROM rows WHERE t = ?1 AND k = ?2")?;
        stmt.execute(params![table as u8, key])?;
        Ok(())
    }

    fn delete_range(&mut self, table: Table, from: &[u8], to: &[u8]) -> Result<()> {
        let mut stmt = self
            .tx
            .prepare_cached("DELETE FROM rows WHERE t = ?1 AND k >= ?2 AND k < ?3")?;
        stmt.execute(params![table as u8, from, to])?;
        Ok(())
    }

    fn first_keys_with_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let mut keys = Vec::new();
        let end = super::prefix_end(prefix);
        let mut stmt = self
            .tx
            .prepare_cached("SELECT k FROM rows WHERE t = ?1 AND k >= ?2 ORDER BY k LIMIT ?3")?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = stmt.query(params![table as u8, prefix, limit])?;
        while let Some(row) = rows.next()? {
            let k: Vec<u8> = row.get(0)?;
            if !k.starts_with(prefix) || end.as_deref().is_some_and(|e| k.as_slice() >= e) {
                break;
            }
            keys.push(k);
        }
        Ok(keys)
    }

    fn keys_with_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<Vec<u8>>> {
        let end = super::prefix_end(prefix);
        let mut out = Vec::new();
        let mut stmt = self
            .tx
            .prepare_cached("SELECT k FROM rows WHERE t = ?1 AND k >= ?2 ORDER BY k")?;
        let mut rows = stmt.query(params![table as u8, prefix])?;
        while let Some(row) = rows.next()? {
            let k: Vec<u8> = row.get(0)?;
            if !k.starts_with(prefix) || end.as_deref().is_some_and(|e| k.as_slice() >= e) {
                break;
            }
            out.push(k);
        }
        Ok(out)
    }
}

impl Store for SqliteStore {
    type Txn<'t> = SqliteTxn<'t>;

    fn transaction<R, E: From<Error>>(
        &mut self,
        f: impl FnOnce(&mut Self::Txn<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let out = {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(Error::from)?;
            let mut txn = SqliteTxn {
                tx,
                cipher: &self.cipher,
            };
            // On error or panic the transaction is dropped, which rolls it back.
            let out = f(&mut txn)?;
            txn.tx.commit().map_err(Error::from)?;
            out
        };
        self.commits += 1;
        if self.commits >= CHECKPOINT_EVERY {
            // Best effort: a reader holding the WAL only delays truncation.
            let _ = self.truncate_wal();
        }
        Ok(out)
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Value>> {
        get_row(&self.conn, &self.cipher, table, key)
    }
}
