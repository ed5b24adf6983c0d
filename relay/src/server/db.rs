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
    /// `mailbox || seq` -> `created_ms(8) || payload_len(4) [|| flags(1)
    /// [|| shared_id(8)]]`: flags bit 0 an envelope from a stranger, bit 1
    /// a reference to a shared payload (then no `Envelopes` record): written
    /// and deleted in the same batch as the envelope, so startup rebuilds
    /// the in-memory index by reading these small records, not every payload.
    EnvelopeIndex,
    /// `shared_id(8)` -> `created_ms(8) || payload`: a payload sent to many
    /// mailboxes at once, deleted in the batch that removes its last
    /// reference.
    SharedPayloads,
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
    /// `mailbox` -> delivery-token verifier (32 bytes).
    DeliveryTokens,
    /// Relay bookkeeping (`"seq"` -> highest reserved sequence number, at or
    /// above every one handed out).
    Meta,
}

impl Cf {
    const ALL: [Cf; 11] = [
        Cf::Envelopes,
        Cf::EnvelopeIndex,
        Cf::SharedPayloads,
        Cf::Prekeys,
        Cf::Bundles,
        Cf::DeviceLists,
        Cf::BlobChunks,
        Cf::BlobMeta,
        Cf::PushTokens,
        Cf::DeliveryTokens,
        Cf::Meta,
    ];

    fn name(self) -> &'static str {
        match self {
            Cf::Envelopes => "envelopes",
            Cf::EnvelopeIndex => "envelope_index",
            Cf::SharedPayloads => "shared_payloads",
            Cf::Prekeys => "prekeys",
            Cf::Bundles => "bundles",
            Cf::DeviceLists => "device_lists",
            Cf::BlobChunks => "blob_chunks",
            Cf::BlobMeta => "blob_meta",
            Cf::PushTokens => "push_tokens",
            Cf::DeliveryTokens => "delivery_tokens",
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
    if matches!(
        cf,
        Cf::Envelopes | Cf::EnvelopeIndex | Cf::SharedPayloads | Cf::Prekeys | Cf::BlobChunks
    ) {
        // Queue-like families: any 64-key window with 32 deletes, or a file of
        // >= 50 % tombstones, is compacted without waiting for size triggers.
        o.add_compact_on_deletion_collector_factory(64, 32, 0.5);
        o.set_level_compaction_dynamic_level_bytes(true);
        // Fetches are point lookups of keys known to exist (the in-memory
        // index says which): a bloom filter skips the files that lack them.
        let mut t = rocksdb::BlockBasedOptions::default();
        t.set_bloom_filter(10.0, false);
        o.set_block_based_table_factory(&t);
    }
    if cf == Cf::Envelopes {
        // Most envelopes are acked within seconds: a roomy memtable lets the
        // put and its SingleDelete meet (and vanish) before any flush, so a
        // backlog of ~100 MiB never costs flush or compaction work.
        o.set_write_buffer_size(128 << 20);
        o.set_max_write_buffer_number(3);
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
        // Bounds all memtables together (the envelope family's 3 x 128 MiB).
        opts.set_db_write_buffer_size(512 << 20);
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

    /// Writes `batch` and fsyncs the WAL before returning (start-up writes;
    /// the serving path goes through the group-committing writer).
    pub fn write_synced(&self, batch: rocksdb::WriteBatch) -> Result<()> {
        let mut sync = rocksdb::WriteOptions::default();
        sync.set_sync(true);
        self.db.write_opt(batch, &sync).map_err(storage)
    }

    /// Unsynced point write (blob chunks; made durable by the next synced write).
    pub fn put_unsynced(&self, cf: Cf, key: &[u8], value: &[u8]) -> Result<()> {
        self.db.put_cf(self.cf(cf)?, key, value).map_err(storage)
    }

    /// Visits every `(key, value)` of a column family in `[from, to)`, in key
    /// order, until `f` returns `false`. Borrowed slices straight from
    /// RocksDB's blocks (no copy per record), readahead for a sequential pass,
    /// and the block cache left alone: startup scans of a large backlog cost
    /// a read of the files, nothing more.
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
        ro.fill_cache(false);
        ro.set_readahead_size(4 << 20);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf)?, ro);
        it.seek(from);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !f(k, v)? {
                return Ok(());
            }
            it.next();
        }
        it.status().map_err(storage)
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

    fn property(&self, cf: Cf, name: &str) -> u64 {
        self.cf(cf)
            .ok()
            .and_then(|h| self.db.property_int_value_cf(h, name).ok().flatten())
            .unwrap_or(0)
    }

    /// Bytes in a family's SST files plus its memtables (whose WAL is on disk).
    pub fn family_bytes(&self, cf: Cf) -> u64 {
        self.property(cf, "rocksdb.total-sst-files-size")
            + self.property(cf, "rocksdb.cur-size-all-mem-tables")
    }

    /// Flushes a family's memtable, then compacts it over its whole key range
    /// so tombstones meet the values they delete and both disappear
    /// (blocking: run it off the async threads).
    pub fn flush_and_compact(&self, cf: Cf) -> Result<()> {
        let h = self.cf(cf)?;
        self.db.flush_cf(h).map_err(storage)?;
        self.db.compact_range_cf(h, None::<&[u8]>, None::<&[u8]>);
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
