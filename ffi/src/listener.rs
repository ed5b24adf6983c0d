//! Pushing incoming events to foreign code: the listener callback and the
//! subscription handle that stops it.
//!
//! A [`Subscription`] owns one task on the shared runtime that pulls events
//! from a source and calls [`EventListener::on_event`] for each, in order and
//! never concurrently. The callback runs on a Rust worker thread, so it must
//! return quickly (hand the event to the UI thread or a channel); blocking
//! in it delays every later event of that subscription and occupies one of
//! the runtime's two workers.
//!
//! Cancelling (`cancel()`, or closing / dropping the handle) is immediate:
//! after it returns, no further item is taken from the stream (items left
//! there wait for the next reader). An item already taken (and, for a
//! conversation, already decrypted, so its key is gone) is still delivered:
//! at most one callback may follow `cancel()`, never a lost message.
//! The task holds the listener but the handle does not, so a listener that
//! keeps a reference to its own subscription makes no cycle through Rust.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::task::AbortHandle;

use crate::consumer::ConsumerClaim;
use crate::error::Result;

/// A message handed to the application: already decrypted and authenticated.
#[derive(Clone, PartialEq, Eq, uniffi::Record)]
pub struct ReceivedMessage {
    /// Position in its stream, starting at 0, without gaps.
    pub sequence: u64,
    /// The plaintext. Once it crosses the boundary it is the app's memory:
    /// Sotto cannot wipe the foreign copy.
    pub body: Vec<u8>,
}

/// Plaintext must not leak into logs through `{:?}`.
impl fmt::Debug for ReceivedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivedMessage")
            .field("sequence", &self.sequence)
            .field(
                "body",
                &format_args!("<{} bytes redacted>", self.body.len()),
            )
            .finish()
    }
}

/// What a listener is told, in order.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Event {
    /// A message arrived.
    Message {
        /// The message.
        message: ReceivedMessage,
    },
    /// An item of the stream could not be processed (for example it failed to
    /// decrypt). The subscription goes on with the next item.
    Failed {
        /// Position of the failed item in the stream.
        sequence: u64,
        /// Why it failed, without secret material.
        reason: String,
    },
    /// The source ended; this is the last event of the subscription.
    Closed,
}

/// Implemented by the application to receive [`Event`]s.
///
/// Called on a Rust worker thread, one event at a time, in order. It must
/// not block: post the event to your own thread or queue and return. A
/// thrown exception is counted (see [`Subscription::listener_failures`]) and
/// delivery continues with the next event.
#[uniffi::export(with_foreign)]
pub trait EventListener: Send + Sync {
    /// Receives one event.
    fn on_event(&self, event: Event) -> Result<()>;
}

/// State shared between a [`Subscription`] handle and its delivery task.
#[derive(Debug, Default)]
pub(crate) struct DeliveryState {
    cancelled: AtomicBool,
    finished: AtomicBool,
    delivered: AtomicU64,
    listener_failures: AtomicU64,
}

impl DeliveryState {
    /// Whether `cancel()` was called.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Delivers one event. Not re-checked for cancellation: an event built
    /// from a decrypted message must reach the app, since its key is gone.
    pub(crate) fn deliver(&self, listener: &dyn EventListener, event: Event) {
        match listener.on_event(event) {
            Ok(()) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.listener_failures.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Marks the task as done (source ended or cancelled).
    pub(crate) fn finish(&self) {
        self.finished.store(true, Ordering::Release);
    }
}

/// Marks the delivery task finished and frees its stream however the task
/// ends: returned, aborted at an await point, or unwound by a panic.
pub(crate) struct FinishOnDrop {
    /// The subscription's shared state.
    pub(crate) state: Arc<DeliveryState>,
    /// The stream the task reads.
    pub(crate) claim: Arc<ConsumerClaim>,
}

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.state.finish();
        self.claim.release();
    }
}

/// A running delivery of events to an [`EventListener`]. Cancel it with
/// `cancel()`, or close / drop the handle (Kotlin `close()` / `use {}`,
/// Swift `deinit`).
#[derive(uniffi::Object)]
pub struct Subscription {
    state: Arc<DeliveryState>,
    task: AbortHandle,
    claim: Arc<ConsumerClaim>,
}

impl Subscription {
    /// Wraps a delivery task started by an event source; the task holds a
    /// clone of `claim` so the stream is freed when it ends on its own too.
    pub(crate) fn new(
        state: Arc<DeliveryState>,
        task: AbortHandle,
        claim: Arc<ConsumerClaim>,
    ) -> Self {
        Self { state, task, claim }
    }

    fn stop(&self) {
        self.state.cancelled.store(true, Ordering::Release);
        self.task.abort();
        self.claim.release();
    }
}

#[uniffi::export]
impl Subscription {
    /// Stops delivery. Idempotent; may be called from inside the listener.
    /// No further message is taken from the stream after it returns.
    pub fn cancel(&self) {
        self.stop();
    }

    /// Whether events may still arrive: false once cancelled or once the
    /// source ended and `Closed` was delivered.
    pub fn is_active(&self) -> bool {
        !self.state.cancelled.load(Ordering::Acquire)
            && !self.state.finished.load(Ordering::Acquire)
    }

    /// Events the listener accepted so far.
    pub fn delivered(&self) -> u64 {
        self.state.delivered.load(Ordering::Relaxed)
    }

    /// Events for which the listener threw.
    pub fn listener_failures(&self) -> u64 {
        self.state.listener_failures.load(Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("active", &self.is_active())
            .field("delivered", &self.delivered())
            .finish()
    }
}
