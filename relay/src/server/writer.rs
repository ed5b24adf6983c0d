//! Group commit: one thread owns all synced writes.
//!
//! RocksDB only merges writes that happen to be concurrent, so instead every
//! durable change is sent here; the thread drains whatever is queued into one
//! `WriteBatch` and one fsynced WAL write, then runs each job's completion in
//! submission order (which is what keeps per-mailbox FIFO visibility exact)
//! and answers the waiters. N concurrent sends cost one fsync.
//!
//! Lazy jobs ([`Writer::enqueue_lazy`], the unconfirmed acks of the push
//! stream) ride in the same order but never cost an fsync of their own: a
//! batch made only of them is written without one and becomes durable with
//! the next synced commit, and at the latest a second after it (a machine
//! crash before that loses it, which such a job's caller accepts; the write
//! itself is in the kernel at once, so a crash of the relay alone does not).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::oneshot;

use super::db::{storage, Cf, Db};
use super::metrics::Metrics;
use crate::error::{RelayError, Result};

/// One change inside a job.
#[derive(Debug)]
pub enum DbOp {
    /// Insert or overwrite.
    Put(Cf, Vec<u8>, Vec<u8>),
    /// Remove a key written exactly once.
    SingleDelete(Cf, Vec<u8>),
    /// Remove a key that may have been overwritten.
    Delete(Cf, Vec<u8>),
    /// Remove `[from, to)`.
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

/// Runs in the writer thread after the batch holding the job is durable (`true`)
/// or failed (`false`), in submission order.
pub type Completion = Box<dyn FnOnce(bool) + Send>;

struct Job {
    ops: Vec<DbOp>,
    done: Option<Completion>,
    reply: oneshot::Sender<Result<()>>,
    /// Needs the fsync before its reply (false: [`Writer::enqueue_lazy`]).
    durable: bool,
}

enum Msg {
    Job(Job),
    Stop,
}

/// Handle to the writer thread.
#[derive(Debug)]
pub struct Writer {
    tx: mpsc::Sender<Msg>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// Most jobs merged into one synced write.
const MAX_JOBS_PER_BATCH: usize = 4096;
/// Most payload bytes merged into one synced write.
const MAX_BYTES_PER_BATCH: usize = 8 << 20;
/// A batch this small, right after another commit, waits [`WINDOW`] for company.
const WINDOW_JOBS: usize = 8;
/// ... and holds fewer bytes than this (a page of acks does not wait).
const WINDOW_BYTES: usize = 16 << 10;
/// How recent the previous commit must be for a small batch to wait.
const BUSY_WITHIN: std::time::Duration = std::time::Duration::from_millis(2);
/// The wait: about one fsync on the disks this was measured on.
const WINDOW: std::time::Duration = std::time::Duration::from_micros(400);
/// Lazy writes are synced at the latest this long after the first of them.
const LAZY_SYNC_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

impl Writer {
    /// Starts the writer thread.
    pub fn start(db: Arc<Db>, metrics: Arc<Metrics>) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sotto-writer".into())
            .spawn(move || run(&db, &metrics, &rx))?;
        Ok(Self {
            tx,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// Queues a job without waiting; the returned receiver resolves once durable.
    /// Enqueue order is commit order, so callers that need FIFO enqueue under
    /// their own lock.
    pub fn enqueue(
        &self,
        ops: Vec<DbOp>,
        done: Option<Completion>,
    ) -> oneshot::Receiver<Result<()>> {
        self.send(ops, done, true)
    }

    /// Queues a job that needs no fsync of its own and gets no answer: it is
    /// applied in enqueue order and made durable by the next synced commit
    /// (the next durable job, an empty [`Writer::write`] used as a barrier,
    /// or the writer's own WAL sync at most a second after it).
    pub fn enqueue_lazy(&self, ops: Vec<DbOp>) {
        drop(self.send(ops, None, false));
    }

    fn send(
        &self,
        ops: Vec<DbOp>,
        done: Option<Completion>,
        durable: bool,
    ) -> oneshot::Receiver<Result<()>> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            ops,
            done,
            reply,
            durable,
        };
        if let Err(mpsc::SendError(Msg::Job(job))) = self.tx.send(Msg::Job(job)) {
            // The writer has stopped. Callers enqueue under their own lock,
            // which the completion may take too: run it on its own thread.
            fail(job);
        }
        rx
    }

    /// Queues a job and waits until it is durable.
    pub async fn write(&self, ops: Vec<DbOp>, done: Option<Completion>) -> Result<()> {
        Self::wait(self.enqueue(ops, done)).await
    }

    /// Waits for a job queued with [`Writer::enqueue`] to be durable.
    pub async fn wait(rx: oneshot::Receiver<Result<()>>) -> Result<()> {
        rx.await.map_err(|_| {
            RelayError::refusal(
                sotto_proto::relay::ErrorCode::ShuttingDown,
                "writer stopped",
            )
        })?
    }

    /// Whether the writer thread is still accepting jobs (health check).
    pub fn is_running(&self) -> bool {
        self.thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }

    /// Writes everything queued so far, then stops the thread.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Stop);
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn run(db: &Db, metrics: &Metrics, rx: &mpsc::Receiver<Msg>) {
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    let lazy = WriteOptions::default();
    // When the oldest lazy write not yet synced was written.
    let mut unsynced_since: Option<Instant> = None;
    let mut stopping = false;
    let mut last_end: Option<Instant> = None;
    while !stopping {
        let next = match unsynced_since {
            // Lazy writes wait at most LAZY_SYNC_WITHIN for a synced commit.
            Some(since) => {
                match rx.recv_timeout(LAZY_SYNC_WITHIN.saturating_sub(since.elapsed())) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        unsynced_since = sync_lazy(db);
                        continue;
                    }
                    Ok(m) => Ok(m),
                    Err(mpsc::RecvTimeoutError::Disconnected) => Err(mpsc::RecvError),
                }
            }
            None => rx.recv(),
        };
        let mut jobs = match next {
            Ok(Msg::Job(j)) => vec![j],
            Ok(Msg::Stop) | Err(_) => break,
        };
        let mut bytes = jobs.iter().flat_map(|j| &j.ops).map(op_len).sum();
        drain(rx, &mut jobs, &mut bytes, &mut stopping);
        // Under a steady trickle a commit of a job or two has just ended and
        // the next one is due: sleeping a moment (not listening, so arriving
        // jobs wake nobody) lets several share one fsync. Pushes do not wait
        // for commits, only the senders' "accepted" does.
        if !stopping
            && jobs.iter().any(|j| j.durable)
            && jobs.len() < WINDOW_JOBS
            && bytes < WINDOW_BYTES
            && last_end.is_some_and(|t| t.elapsed() < BUSY_WITHIN)
        {
            std::thread::sleep(WINDOW);
            drain(rx, &mut jobs, &mut bytes, &mut stopping);
        }
        // A shutdown syncs whatever it writes, lazy or not.
        let durable = stopping || jobs.iter().any(|j| j.durable);
        let started = Instant::now();
        let result = commit(db, if durable { &sync } else { &lazy }, durable, &jobs);
        if durable {
            last_end = Some(Instant::now());
            let durable_jobs = jobs.iter().filter(|j| j.durable).count();
            metrics.observe_commit(durable_jobs, started.elapsed());
        }
        let ok = result.is_ok();
        if durable && ok {
            unsynced_since = None;
        } else if !durable {
            metrics.lazy_writes.fetch_add(1, Relaxed);
            let since = *unsynced_since.get_or_insert_with(Instant::now);
            // A steady trickle of lazy batches never lets the wait above
            // time out: sync here once the oldest has waited long enough.
            if since.elapsed() >= LAZY_SYNC_WITHIN {
                unsynced_since = sync_lazy(db);
            }
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, durable, "write failed");
        }
        for job in jobs {
            if let Some(done) = job.done {
                done(ok);
            }
            let _ = job.reply.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(RelayError::Storage(e.to_string())),
            });
        }
    }
    if unsynced_since.is_some() {
        sync_lazy(db);
    }
    // Jobs that arrived after the final batch are answered, not dropped.
    for m in rx.try_iter() {
        if let Msg::Job(j) = m {
            fail(j);
        }
    }
}

/// Syncs the WAL, making earlier lazy writes durable. Returns when the
/// oldest still-unsynced write dates from: `None` on success, now on failure
/// (tried again a period later).
fn sync_lazy(db: &Db) -> Option<Instant> {
    match db.raw().flush_wal(true) {
        Ok(()) => None,
        Err(e) => {
            tracing::error!(error = %storage(e), "WAL sync of stream acks failed");
            Some(Instant::now())
        }
    }
}

/// Fails a job that will never be written (the writer stopped): its
/// completion runs on a thread of its own, since the caller may hold the lock
/// that the completion takes.
fn fail(job: Job) {
    if let Some(done) = job.done {
        let _ = std::thread::Builder::new()
            .name("sotto-writer-fail".into())
            .spawn(move || done(false));
    }
    let _ = job.reply.send(Err(RelayError::refusal(
        sotto_proto::relay::ErrorCode::ShuttingDown,
        "relay shutting down",
    )));
}

/// Moves whatever is queued into `jobs`, up to the batch bounds; on `Stop`,
/// takes everything still queued and sets `stopping`.
fn drain(rx: &mpsc::Receiver<Msg>, jobs: &mut Vec<Job>, bytes: &mut usize, stopping: &mut bool) {
    while jobs.len() < MAX_JOBS_PER_BATCH && *bytes < MAX_BYTES_PER_BATCH {
        match rx.try_recv() {
            Ok(Msg::Job(j)) => {
                *bytes += j.ops.iter().map(op_len).sum::<usize>();
                jobs.push(j);
            }
            Ok(Msg::Stop) => {
                *stopping = true;
                jobs.extend(rx.try_iter().filter_map(|m| match m {
                    Msg::Job(j) => Some(j),
                    Msg::Stop => None,
                }));
                return;
            }
            Err(_) => return,
        }
    }
}

fn op_len(op: &DbOp) -> usize {
    match op {
        DbOp::Put(_, k, v) => k.len() + v.len(),
        DbOp::SingleDelete(_, k) | DbOp::Delete(_, k) => k.len(),
        DbOp::DeleteRange(_, a, b) => a.len() + b.len(),
    }
}

fn commit(db: &Db, opts: &WriteOptions, durable: bool, jobs: &[Job]) -> Result<()> {
    if jobs.iter().all(|j| j.ops.is_empty()) {
        // Only barriers: make everything written so far durable, including
        // lazy batches (a synced write syncs them too, but an empty batch
        // may not reach the WAL at all).
        return db.raw().flush_wal(durable).map_err(storage);
    }
    let mut batch = WriteBatch::default();
    for job in jobs {
        for op in &job.ops {
            match op {
                DbOp::Put(cf, k, v) => batch.put_cf(db.cf(*cf)?, k, v),
                DbOp::SingleDelete(cf, k) => batch.single_delete_cf(db.cf(*cf)?, k),
                DbOp::Delete(cf, k) => batch.delete_cf(db.cf(*cf)?, k),
                DbOp::DeleteRange(cf, a, b) => batch.delete_range_cf(db.cf(*cf)?, a, b),
            }
        }
    }
    db.raw().write_opt(batch, opts).map_err(storage)
}
