//! Encrypted attachment blobs, streamed in fixed chunks through RocksDB.
//!
//! Upload: the request frame announces the length, raw bytes follow on the
//! same stream. Each 64 KiB chunk is written as it arrives (never the whole
//! blob in memory); the metadata record is written last with a synced write,
//! which also makes the earlier unsynced chunk writes durable (one WAL). A
//! failed upload deletes its chunks and the client simply retries. Download
//! by the unguessable 32-byte id from any offset (resume). Blobs expire.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use rand_core::{OsRng, RngCore};
use sotto_proto::relay::ErrorCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::db::{Cf, Db};
use super::mailbox::now_ms;
use super::metrics::Metrics;
use super::writer::{DbOp, Writer};
use crate::error::{RelayError, Result};
use crate::ids::BlobId;

/// Chunk size on disk.
pub const CHUNK: usize = 64 * 1024;

fn chunk_key(id: &BlobId, i: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(36);
    k.extend_from_slice(&id.0);
    k.extend_from_slice(&i.to_be_bytes());
    k
}

fn all_chunks(id: &BlobId) -> DbOp {
    let mut end = id.0.to_vec();
    end.extend_from_slice(&[0xff; 5]);
    DbOp::DeleteRange(Cf::BlobChunks, id.0.to_vec(), end)
}

/// The blob store.
#[derive(Debug)]
pub struct Blobs {
    db: Arc<Db>,
    writer: Arc<Writer>,
    metrics: Arc<Metrics>,
    max_len: u64,
}

impl Blobs {
    /// A blob store over the shared database.
    pub fn new(db: Arc<Db>, writer: Arc<Writer>, metrics: Arc<Metrics>, max_len: u64) -> Self {
        Self {
            db,
            writer,
            metrics,
            max_len,
        }
    }

    /// Receives exactly `len` bytes from `r` and stores them under a fresh id.
    pub async fn upload<R: AsyncRead + Unpin>(&self, len: u64, r: &mut R) -> Result<BlobId> {
        if len > self.max_len {
            return Err(RelayError::refusal(
                ErrorCode::BlobTooLarge,
                "blob too large",
            ));
        }
        let mut id = BlobId([0; 32]);
        OsRng.fill_bytes(&mut id.0);
        match self.receive(&id, len, r).await {
            Ok(()) => {
                let mut meta = Vec::with_capacity(16);
                meta.extend_from_slice(&len.to_be_bytes());
                meta.extend_from_slice(&now_ms().to_be_bytes());
                self.writer
                    .write(vec![DbOp::Put(Cf::BlobMeta, id.0.to_vec(), meta)], None)
                    .await?;
                self.metrics.blobs_uploaded.fetch_add(1, Relaxed);
                Ok(id)
            }
            Err(e) => {
                let _ = self.writer.write(vec![all_chunks(&id)], None).await;
                Err(e)
            }
        }
    }

    async fn receive<R: AsyncRead + Unpin>(&self, id: &BlobId, len: u64, r: &mut R) -> Result<()> {
        let mut buf = vec![0u8; CHUNK];
        let mut left = len;
        let mut i = 0u32;
        while left > 0 {
            let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
            r.read_exact(&mut buf[..want])
                .await
                .map_err(|_| RelayError::Truncated)?;
            self.db
                .put_unsynced(Cf::BlobChunks, &chunk_key(id, i), &buf[..want])?;
            left -= want as u64;
            i += 1;
        }
        // Exactly `len` bytes: anything more is a protocol error.
        let mut extra = [0u8; 1];
        if r.read(&mut extra).await.unwrap_or(0) != 0 {
            return Err(RelayError::refusal(
                ErrorCode::Malformed,
                "blob longer than announced",
            ));
        }
        Ok(())
    }

    /// Length of a live blob.
    pub fn length(&self, id: &BlobId) -> Result<u64> {
        let meta = self
            .db
            .get(Cf::BlobMeta, &id.0)?
            .filter(|m| m.len() == 16)
            .ok_or_else(|| RelayError::refusal(ErrorCode::NotFound, "no such blob"))?;
        Ok(meta[..8].try_into().map(u64::from_be_bytes).unwrap_or(0))
    }

    /// Streams the blob from `offset` to `w`.
    pub async fn download<W: AsyncWrite + Unpin>(
        &self,
        id: &BlobId,
        offset: u64,
        len: u64,
        w: &mut W,
    ) -> Result<()> {
        let mut pos = offset;
        while pos < len {
            let i =
                u32::try_from(pos / CHUNK as u64).map_err(|_| RelayError::Malformed("offset"))?;
            let chunk = self
                .db
                .get(Cf::BlobChunks, &chunk_key(id, i))?
                .ok_or_else(|| RelayError::Storage("blob chunk missing".into()))?;
            let skip = usize::try_from(pos % CHUNK as u64).unwrap_or(0);
            let part = chunk.get(skip..).unwrap_or(&[]);
            if part.is_empty() {
                return Err(RelayError::Storage("blob chunk short".into()));
            }
            w.write_all(part).await?;
            pos += part.len() as u64;
        }
        Ok(())
    }

    /// Deletes blobs older than `ttl_ms`; returns how many.
    pub async fn expire(&self, ttl_ms: u64) -> Result<usize> {
        let cutoff = now_ms().saturating_sub(ttl_ms);
        let mut ops = Vec::new();
        self.db.scan(Cf::BlobMeta, &[], &[0xff; 33], |k, v| {
            let created = v
                .get(8..16)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if created <= cutoff {
                if let Ok(id) = BlobId::from_slice(k) {
                    ops.push(DbOp::Delete(Cf::BlobMeta, k.to_vec()));
                    ops.push(all_chunks(&id));
                }
            }
            Ok(true)
        })?;
        let n = ops.len() / 2;
        if n > 0 {
            self.writer.write(ops, None).await?;
        }
        Ok(n)
    }
}
