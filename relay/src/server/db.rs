//! RocksDB layout: one column family per record kind, tuned for queue use.
//!
//! Envelope keys are `mailbox(32) || seq(8, big-endian)`, written once and
//! removed with SingleDelete; deletion-triggered compaction reclaims their
//! tombstones so disk use falls back to near empty once everything is acked.
//! No compression: everything stored is ciphertext.

use std::path::Path;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Options, DB};

use crate::error::{RelayError, Result};

/// The column families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    /// `mailbox || seq` -> `created_ms(8) || payload`.
    Envelopes,
    /// `mailbox || kind(1) || id(4)` -> one-time prekey bytes.
    Prekeys,
    /// `mailbox` -> signed bundle blob.
    Bundles,
    /// `user_key` -> `version(8) || signature(64) || body`.
    DeviceLists,
    /// `blob_id || chunk_index(4)` -> chunk bytes.
    BlobChunks,
    /// `blob_id` -> `length(8) || created_ms(8)`.
    BlobMeta,
    /// `mailbox` -> push token.
    PushTokens,
    /// Relay bookkeeping (`"seq"` -> last allocated sequence).
    Meta,
}

impl Cf {
    const ALL: [Cf; 8] = [
        Cf::Envelopes,
        Cf::Prekeys,
        Cf::Bundles,
        Cf::DeviceLists,
        Cf::BlobChunks,
        Cf::BlobMeta,
        Cf::PushTokens,
        Cf::Meta,
    ];

    fn name(self) -> &'static str {
        match self {
            Cf::Envelopes => "envelopes",
            Cf::Prekeys => "prekeys",
            Cf::Bundles => "bundles",
            Cf::DeviceLists => "device_lists",
            Cf::BlobChunks => "blob_chunks",
            Cf::BlobMeta => "blob_meta",
            Cf::PushTokens => "push_tokens",
            Cf::Meta => "meta",
        }
    }
}

/// Maps a RocksDB error to the crate error.
pub fn storage(e: rocksdb::Error) -> RelayError {
    RelayError::Storage(e.into_string())
}

/// The opened database.
#[derive(Debug)]
pub struct Db {
    db: DB,
}

fn cf_options(cf: Cf) -> Options {
    let mut o = Options::default();
    o.set_compression_type(DBCompressionType::None);
    if matches!(cf, Cf::Envelopes | Cf::Prekeys | Cf::BlobChunks) {
        // Queue-like families: any 64-key window with 32 deletes, or a file of
        // >= 50 % tombstones, is compacted without waiting for size triggers.
        o.add_compact_on_deletion_collector_factory(64, 32, 0.5);
        o.set_level_compaction_dynamic_level_bytes(true);
    }
    o
}

impl Db {
    /// Opens (creating if needed) the relay database under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(DBCompressionType::None);
        opts.set_max_total_wal_size(256 << 20);
        opts.increase_parallelism(2);
        let cfs = Cf::ALL
            .iter()
            .map(|&cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(cf)));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(storage)?;
        for cf in Cf::ALL {
            if db.cf_handle(cf.name()).is_none() {
                return Err(RelayError::Storage(format!(
                    "missing column family {}",
                    cf.name()
                )));
            }
        }
        Ok(Self { db })
    }

    /// The raw handle.
    pub fn raw(&self) -> &DB {
        &self.db
    }

    /// A column family handle (all exist after [`Db::open`]).
    pub fn cf(&self, cf: Cf) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| RelayError::Storage(format!("missing column family {}", cf.name())))
    }

    /// Point read.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(cf)?, key).map_err(storage)
    }

    /// Unsynced point write (blob chunks; made durable by the next synced write).
    pub fn put_unsynced(&self, cf: Cf, key: &[u8], value: &[u8]) -> Result<()> {
        self.db.put_cf(self.cf(cf)?, key, value).map_err(storage)
    }

    /// Visits every `(key, value)` of a column family in `[from, to)`.
    pub fn scan(
        &self,
        cf: Cf,
        from: &[u8],
        to: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_lower_bound(from.to_vec());
        ro.set_iterate_upper_bound(to.to_vec());
        let it = self
            .db
            .iterator_cf_opt(self.cf(cf)?, ro, rocksdb::IteratorMode::Start);
        for item in it {
            let (k, v) = item.map_err(storage)?;
            if !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    /// Sum of live SST and memtable bytes of all families (disk-use metric).
    pub fn approximate_bytes(&self) -> u64 {
        Cf::ALL
            .iter()
            .filter_map(|&cf| {
                let h = self.cf(cf).ok()?;
                let sst = self
                    .db
                    .property_int_value_cf(h, "rocksdb.total-sst-files-size")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let mem = self
                    .db
                    .property_int_value_cf(h, "rocksdb.cur-size-all-mem-tables")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                Some(sst + mem)
            })
            .sum()
    }

    /// Flushes every memtable to SST (graceful shutdown: a put and its
    /// SingleDelete in one memtable cancel out, leaving nothing on disk).
    pub fn flush_all(&self) -> Result<()> {
        for cf in Cf::ALL {
            self.db.flush_cf(self.cf(cf)?).map_err(storage)?;
        }
        Ok(())
    }

    /// Flushes memtables and compacts every family (operator maintenance).
    pub fn compact_all(&self) -> Result<()> {
        for cf in Cf::ALL {
            let h = self.cf(cf)?;
            self.db.flush_cf(h).map_err(storage)?;
            self.db.compact_range_cf(h, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }
}

/// Smallest key strictly greater than every key starting with `prefix`
/// (for `iterate_upper_bound`); `prefix` must not be all `0xff`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}
