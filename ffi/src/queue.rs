//! `MessageQueue`: an in-process, ordered stream of messages with one
//! consumer, read either by awaiting `next()` / `next_batch()` or by a
//! listener subscription.
//!
//! It is the delivery half of a conversation without the network: the same
//! mechanics (bounded buffer with back-pressure, gap-free sequence numbers,
//! one consumer, cancel-safe reads, end-of-stream) carry decrypted messages
//! to the app. Buffered bodies are wiped from memory when dropped unread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc::{self, error::TrySendError, Permit};
use tokio::sync::Mutex as AsyncMutex;
use zeroize::Zeroizing;

use crate::consumer::ConsumerSlot;
use crate::error::{Result, SottoError};
use crate::listener::{
    DeliveryState, Event, EventListener, FinishOnDrop, ReceivedMessage, Subscription,
};
use crate::runtime::{in_runtime, runtime};

/// Largest body accepted, the relay's per-message cap (96 KiB, as Signal).
pub const MAX_MESSAGE_BYTES: u64 = 96 * 1024;

/// Largest buffer a queue may be created with, to bound memory.
pub const MAX_CAPACITY: u32 = 65_536;

/// One buffered message; the body is wiped when dropped unread.
pub(crate) struct Item {
    /// Position in the stream.
    pub(crate) sequence: u64,
    /// The payload, wiped on drop.
    pub(crate) body: Zeroizing<Vec<u8>>,
}

impl Item {
    /// Hands the body over as a message without copying it.
    pub(crate) fn into_message(mut self) -> ReceivedMessage {
        ReceivedMessage {
            sequence: self.sequence,
            // Moves the buffer out (no copy), leaving an empty one to wipe.
            body: std::mem::take(&mut *self.body),
        }
    }
}

/// The reading side: the channel, plus an item a cancelled subscription
/// took but did not deliver, which goes first to the next reader.
struct Reader {
    receiver: mpsc::Receiver<Item>,
    pending: Option<Item>,
}

impl Reader {
    /// The next item; cancel-safe.
    async fn recv(&mut self) -> Option<Item> {
        match self.pending.take() {
            Some(item) => Some(item),
            None => self.receiver.recv().await,
        }
    }

    /// Waits for one item, then takes up to `max` without waiting; cancel-safe.
    async fn recv_many(&mut self, items: &mut Vec<Item>, max: usize) {
        if let Some(item) = self.pending.take() {
            items.push(item);
            while items.len() < max {
                match self.receiver.try_recv() {
                    Ok(item) => items.push(item),
                    Err(_) => return,
                }
            }
            return;
        }
        self.receiver.recv_many(items, max).await;
    }
}

/// The sending side: sequence numbers are assigned and items enqueued under
/// one lock so that order and numbering always agree.
struct SendSide {
    sender: Option<mpsc::Sender<Item>>,
    next_sequence: u64,
}

/// An ordered in-process message stream with exactly one consumer at a time.
#[derive(uniffi::Object)]
pub struct MessageQueue {
    send: Mutex<SendSide>,
    receiver: Arc<AsyncMutex<Reader>>,
    consumer: Arc<ConsumerSlot>,
    capacity: u32,
    sent: AtomicU64,
}

impl std::fmt::Debug for MessageQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageQueue")
            .field("capacity", &self.capacity)
            .field("sent", &self.sent.load(Ordering::Relaxed))
            .finish()
    }
}

fn check_size(body: &[u8]) -> Result<()> {
    let size = body.len() as u64;
    if size > MAX_MESSAGE_BYTES {
        return Err(SottoError::TooLarge {
            size,
            limit: MAX_MESSAGE_BYTES,
        });
    }
    Ok(())
}

impl MessageQueue {
    fn send_side(&self) -> MutexGuard<'_, SendSide> {
        // The guarded data stays consistent even if a holder panicked.
        self.send.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sender(&self) -> Result<mpsc::Sender<Item>> {
        self.send_side().sender.clone().ok_or(SottoError::Closed)
    }

    /// Numbers and enqueues `body` through an already reserved slot.
    fn commit(&self, permit: Permit<'_, Item>, body: Vec<u8>) -> u64 {
        let mut side = self.send_side();
        let sequence = side.next_sequence;
        side.next_sequence += 1;
        permit.send(Item {
            sequence,
            body: Zeroizing::new(body),
        });
        self.sent.fetch_add(1, Ordering::Relaxed);
        sequence
    }

    /// `next()` with a conversion applied to the item before it is returned,
    /// still within the same poll (so cancellation loses nothing).
    pub(crate) async fn next_with<T>(
        &self,
        convert: impl FnOnce(Item) -> Result<T>,
    ) -> Result<Option<T>> {
        let _claim = self.consumer.claim("next()")?;
        in_runtime(async {
            let mut reader = self.receiver.lock().await;
            reader.recv().await.map(convert).transpose()
        })?
        .await
    }

    /// `subscribe()` with each item turned into an event by `convert`, which
    /// runs on the delivery task.
    pub(crate) fn subscribe_with(
        &self,
        listener: Arc<dyn EventListener>,
        convert: impl Fn(Item) -> Event + Send + 'static,
    ) -> Result<Arc<Subscription>> {
        let claim = Arc::new(self.consumer.claim("subscribe()")?);
        let state = Arc::new(DeliveryState::default());
        let (task_state, task_claim) = (state.clone(), claim.clone());
        let receiver = self.receiver.clone();
        let task = runtime()?.spawn(async move {
            let _finish = FinishOnDrop {
                state: task_state.clone(),
                claim: task_claim,
            };
            // Waits only for a cancelled reader's task to wind down.
            let mut reader = receiver.lock().await;
            while let Some(item) = reader.recv().await {
                if task_state.is_cancelled() {
                    // Taken just as we were cancelled: keep it for the next reader.
                    reader.pending = Some(item);
                    return;
                }
                task_state.deliver(listener.as_ref(), convert(item));
            }
            if !task_state.is_cancelled() {
                task_state.deliver(listener.as_ref(), Event::Closed);
            }
        });
        Ok(Arc::new(Subscription::new(
            state,
            task.abort_handle(),
            claim,
        )))
    }
}

#[uniffi::export]
impl MessageQueue {
    /// A queue buffering at most `capacity` unread messages (1 to 65,536).
    #[uniffi::constructor]
    pub fn new(capacity: u32) -> Result<Arc<Self>> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(SottoError::InvalidInput {
                reason: format!("capacity must be between 1 and {MAX_CAPACITY}"),
            });
        }
        let (sender, receiver) = mpsc::channel(capacity as usize);
        Ok(Arc::new(Self {
            send: Mutex::new(SendSide {
                sender: Some(sender),
                next_sequence: 0,
            }),
            receiver: Arc::new(AsyncMutex::new(Reader {
                receiver,
                pending: None,
            })),
            consumer: Arc::new(ConsumerSlot::default()),
            capacity,
            sent: AtomicU64::new(0),
        }))
    }

    /// Enqueues `body`, suspending while the buffer is full; returns its
    /// sequence number. Cancelling while suspended enqueues nothing.
    pub async fn send(&self, body: Vec<u8>) -> Result<u64> {
        check_size(&body)?;
        let sender = self.sender()?;
        in_runtime(async move {
            let permit = sender.reserve().await.map_err(|_| SottoError::Closed)?;
            Ok(self.commit(permit, body))
        })?
        .await
    }

    /// Enqueues `body` without waiting; fails with `Busy` when the buffer is
    /// full.
    pub fn try_send(&self, body: Vec<u8>) -> Result<u64> {
        check_size(&body)?;
        let sender = self.sender()?;
        let permit = sender.try_reserve().map_err(|e| match e {
            TrySendError::Full(()) => SottoError::Busy {
                reason: format!("the queue is full ({} unread messages)", self.capacity),
            },
            TrySendError::Closed(()) => SottoError::Closed,
        })?;
        Ok(self.commit(permit, body))
    }

    /// Waits for the next message; `null`/`nil` once `end()` was called and
    /// every message was read. Fails with `Busy` while a subscription or
    /// another read is active. Cancel-safe: a cancelled `next()` loses no
    /// message.
    pub async fn next(&self) -> Result<Option<ReceivedMessage>> {
        self.next_with(|item| Ok(item.into_message())).await
    }

    /// Waits for at least one message, then returns up to `max` (1 to 1,024)
    /// of those already buffered, in one boundary crossing. An empty list
    /// means the stream ended. Same rules as `next()`.
    pub async fn next_batch(&self, max: u32) -> Result<Vec<ReceivedMessage>> {
        if max == 0 || max > 1024 {
            return Err(SottoError::InvalidInput {
                reason: "max must be between 1 and 1024".to_owned(),
            });
        }
        let _claim = self.consumer.claim("next_batch()")?;
        in_runtime(async {
            let mut reader = self.receiver.lock().await;
            let mut items = Vec::with_capacity(max as usize);
            reader.recv_many(&mut items, max as usize).await;
            Ok(items.into_iter().map(Item::into_message).collect())
        })?
        .await
    }

    /// Delivers every message, then `Closed` after `end()`, to `listener` on
    /// the shared runtime until the returned handle is cancelled or closed.
    /// Fails with `Busy` if the queue already has a consumer.
    pub fn subscribe(&self, listener: Arc<dyn EventListener>) -> Result<Arc<Subscription>> {
        self.subscribe_with(listener, |item| Event::Message {
            message: item.into_message(),
        })
    }

    /// Ends the stream: later sends fail with `Closed`; readers get what is
    /// buffered, then the end. Idempotent.
    pub fn end(&self) {
        self.send_side().sender = None;
    }

    /// Messages accepted so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The buffer size given at creation.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }
}
