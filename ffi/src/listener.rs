//! Pushing the client's events to foreign code: the listener callback and
//! the subscription handle that stops it.
//!
//! An [`EventSubscription`] owns one task on the shared runtime that waits
//! for the client's oldest unacknowledged event, calls
//! [`EventListener::on_event`] with it and, only once the callback returned
//! normally, acknowledges it. Delivery is therefore at-least-once: an event
//! whose callback threw, or that was in flight when the app died, is
//! delivered again (same `seq`, so the app can drop a replay). A callback
//! that throws gets the same event again after [`RETRY_AFTER_THROW`]; later
//! events wait behind it, in order.
//!
//! The callback runs on a Rust worker thread, one event at a time: it must
//! return quickly (hand the event to the UI thread or a channel). Blocking
//! in it delays every later event and holds one of the runtime's two workers.
//!
//! Cancelling (`cancel()`, closing / dropping the handle, or the client's
//! `shutdown()`) takes effect at the task's next await: a callback already
//! running finishes and its event is acknowledged, and no callback starts
//! afterwards.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sotto_core::SqliteStore;
use sotto_messenger::Messenger;
use tokio::task::AbortHandle;

use crate::consumer::ConsumerClaim;
use crate::error::Result;
use crate::events::Event;
use crate::runtime::runtime;

/// Pause before delivering again an event whose callback threw (or after a
/// storage error reading the queue), so a failing listener does not spin.
pub const RETRY_AFTER_THROW: Duration = Duration::from_secs(1);

/// Implemented by the application to receive the client's events.
///
/// Called on a Rust worker thread, one event at a time, in order. It must
/// not block: post the event to your own thread or queue and return. Return
/// normally only once the event is safely handled (stored, shown): that is
/// when it is acknowledged. Throwing makes it come again.
#[uniffi::export(with_foreign)]
pub trait EventListener: Send + Sync {
    /// Receives one event.
    fn on_event(&self, event: Event) -> Result<()>;
}

/// Counters shared by the handle and its task.
#[derive(Debug, Default)]
struct Stats {
    cancelled: AtomicBool,
    finished: AtomicBool,
    delivered: AtomicU64,
    listener_failures: AtomicU64,
}

/// Marks the task finished and frees the event queue however the task ends:
/// returned, aborted at an await point, or unwound by a panic.
struct FinishOnDrop {
    stats: Arc<Stats>,
    claim: Arc<ConsumerClaim>,
}

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.stats.finished.store(true, Ordering::Release);
        self.claim.release();
    }
}

/// A running delivery of a client's events to an [`EventListener`]. Stop it
/// with `cancel()`, or close / drop the handle (Kotlin `close()` / `use {}`,
/// Swift `deinit`); the client's `shutdown()` stops it too.
#[derive(uniffi::Object)]
pub struct EventSubscription {
    stats: Arc<Stats>,
    task: AbortHandle,
    claim: Arc<ConsumerClaim>,
}

impl EventSubscription {
    /// Starts delivering `client`'s events to `listener`.
    pub(crate) fn start(
        client: Arc<Messenger<SqliteStore>>,
        listener: Arc<dyn EventListener>,
        claim: ConsumerClaim,
    ) -> Result<Arc<Self>> {
        let stats = Arc::new(Stats::default());
        let claim = Arc::new(claim);
        let guard = FinishOnDrop {
            stats: stats.clone(),
            claim: claim.clone(),
        };
        let task = runtime()?.spawn(async move {
            let guard = guard;
            loop {
                let event = match client.next_event().await {
                    Ok(e) => e,
                    // Storage trouble reading the queue: retry, the events
                    // stay queued.
                    Err(_) => {
                        tokio::time::sleep(RETRY_AFTER_THROW).await;
                        continue;
                    }
                };
                let seq = event.seq;
                if listener.on_event(event.into()).is_ok() {
                    // A failed ack only means the event comes again.
                    let _ = client.ack_event(seq);
                    guard.stats.delivered.fetch_add(1, Ordering::Relaxed);
                } else {
                    guard
                        .stats
                        .listener_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(RETRY_AFTER_THROW).await;
                }
            }
        });
        Ok(Arc::new(Self {
            stats,
            task: task.abort_handle(),
            claim,
        }))
    }

    /// The task's abort handle, so the client can stop it on shutdown.
    pub(crate) fn abort_handle(&self) -> AbortHandle {
        self.task.clone()
    }

    fn stop(&self) {
        self.stats.cancelled.store(true, Ordering::Release);
        self.task.abort();
        self.claim.release();
    }
}

#[uniffi::export]
impl EventSubscription {
    /// Stops delivery. Idempotent; may be called from inside the listener.
    pub fn cancel(&self) {
        self.stop();
    }

    /// Whether events may still arrive: false once cancelled or once the
    /// client was shut down.
    pub fn is_active(&self) -> bool {
        !self.stats.cancelled.load(Ordering::Acquire)
            && !self.stats.finished.load(Ordering::Acquire)
            && !self.task.is_finished()
    }

    /// Events the listener accepted (and that were acknowledged) so far.
    pub fn delivered(&self) -> u64 {
        self.stats.delivered.load(Ordering::Relaxed)
    }

    /// Callbacks that threw (each such event is delivered again).
    pub fn listener_failures(&self) -> u64 {
        self.stats.listener_failures.load(Ordering::Relaxed)
    }
}

impl Drop for EventSubscription {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for EventSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSubscription")
            .field("active", &self.is_active())
            .field("delivered", &self.delivered())
            .finish()
    }
}
