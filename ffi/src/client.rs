//! `SottoClient`: the messenger client (sotto-messenger's `Messenger` over an
//! encrypted SQLite store) for foreign code.
//!
//! A thin wrapper: it parses addresses, converts events and errors, and owns
//! the lifecycle rules a foreign object needs. The messenger lives behind
//! an `Arc` so that in-flight async calls and the listener task can use it
//! concurrently; `shutdown()` stops the listener tasks, waits briefly for
//! in-flight calls to let go, then closes the relay connections gracefully.
//! Every call after `shutdown()` fails with `SottoException.Closed`.
//! Freeing the object without `shutdown()` (Kotlin `close()` / `use {}`,
//! Swift `deinit`) stops everything too, only less politely (the relay sees
//! the connection time out instead of a close).
//!
//! Async exports run in the shared runtime (see `runtime`): cancelling the
//! Kotlin coroutine or Swift task drops the Rust future. Sends are durable
//! before `sendText` returns (the core's outbox), so a cancelled `flush()`
//! loses nothing.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sotto_core::SqliteStore;
use sotto_messenger::{Messenger, RelayAddress, UserAddress};
use tokio::task::AbortHandle;

use crate::consumer::ConsumerSlot;
use crate::device::storage_key;
use crate::error::{Result, SottoError};
use crate::events::{message_id, Attachment, DeliveryState, DeviceDelivery, Event};
use crate::identity::SafetyNumber;
use crate::link::PendingLink;
use crate::listener::{EventListener, EventSubscription};
use crate::runtime::{in_runtime, runtime};

/// The messenger over the store this library uses (encrypted SQLite).
pub(crate) type AppMessenger = Messenger<SqliteStore>;

/// How long `shutdown()` waits for in-flight calls before dropping the
/// client anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

pub(crate) fn parse_user(address: &str) -> Result<UserAddress> {
    Ok(address.trim().parse::<UserAddress>()?)
}

pub(crate) fn parse_relay(address: &str) -> Result<RelayAddress> {
    Ok(address.trim().parse::<RelayAddress>()?)
}

/// Opens (or creates) the encrypted store at `db_path`.
pub(crate) fn open_store(db_path: &str, key: Vec<u8>, min_generation: u64) -> Result<SqliteStore> {
    let key = storage_key(key)?;
    Ok(SqliteStore::open_checked(db_path, &key, min_generation)?)
}

/// This user's device of the Sotto messenger: sends, receives, links
/// devices. Thread-safe; share one per store.
#[derive(uniffi::Object)]
pub struct SottoClient {
    client: Mutex<Option<Arc<AppMessenger>>>,
    address: String,
    device_id: u32,
    generation: u64,
    consumer: Arc<ConsumerSlot>,
    subscriptions: Mutex<Vec<AbortHandle>>,
    /// Presence and typing changes since the client started (`nextLiveEvent`).
    pub(crate) live: Arc<tokio::sync::Mutex<sotto_messenger::LiveEvents>>,
    /// Set by `shutdown()`: every pending call ends with `Closed`.
    closed: tokio::sync::watch::Sender<bool>,
}

impl fmt::Debug for SottoClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SottoClient")
            .field("address", &self.address)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values (an Option, a Vec) stay consistent on a panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SottoClient {
    /// Wraps a started core client (also used by `Linking.finish`).
    pub(crate) fn wrap(client: AppMessenger, generation: u64) -> Arc<Self> {
        Arc::new(Self {
            live: Arc::new(tokio::sync::Mutex::new(client.live_events())),
            closed: tokio::sync::watch::Sender::new(false),
            address: client.address().to_string(),
            device_id: client.device_id(),
            generation,
            client: Mutex::new(Some(Arc::new(client))),
            consumer: Arc::new(ConsumerSlot::default()),
            subscriptions: Mutex::new(Vec::new()),
        })
    }

    /// The core client, or `Closed` after `shutdown()`.
    pub(crate) fn core(&self) -> Result<Arc<AppMessenger>> {
        lock(&self.client).clone().ok_or(SottoError::closed())
    }

    /// Runs `f`, ending it with `Closed` as soon as `shutdown()` starts: a
    /// pending call never outlives the client (and its reference to the
    /// client goes with it, so the shutdown closes the relay connections
    /// politely instead of waiting out its grace period).
    pub(crate) fn until_closed<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = Result<T>> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T>> + Send + 'static {
        let mut closed = self.closed.subscribe();
        async move {
            tokio::select! {
                r = f => r,
                _ = closed.wait_for(|c| *c) => Err(SottoError::closed()),
            }
        }
    }

    fn stop_subscriptions(&self) {
        for task in lock(&self.subscriptions).drain(..) {
            task.abort();
        }
    }
}

#[uniffi::export]
impl SottoClient {
    /// Registers a new user on the relay at `relay` (`host:port/fingerprint`)
    /// with a fresh identity, storing everything in the encrypted SQLite file
    /// `db_path` under `storage_key` (32 bytes from the platform keystore).
    /// Needs the relay to be reachable.
    #[uniffi::constructor]
    pub async fn create(db_path: String, storage_key: Vec<u8>, relay: String) -> Result<Arc<Self>> {
        let home = parse_relay(&relay)?;
        let store = open_store(&db_path, storage_key, 0)?;
        let generation = store.generation();
        in_runtime(async move {
            Ok(Self::wrap(
                AppMessenger::create(store, home).await?,
                generation,
            ))
        })?
        .await
    }

    /// Opens the user stored in `db_path`. Works offline: sends queue and go
    /// out once the relay is reachable. A wrong `storage_key` fails with
    /// `CorruptRecord`. Without a rollback check: prefer `openChecked`.
    #[uniffi::constructor]
    pub async fn open(db_path: String, storage_key: Vec<u8>) -> Result<Arc<Self>> {
        Self::open_checked(db_path, storage_key, 0).await
    }

    /// Like `open`, but refuses (`StoreRolledBack`) a database older than
    /// `min_generation`: the `storeGeneration()` of the previous open, which
    /// the app keeps beside the storage key (where a restored backup of the
    /// database cannot reach). Save the new `storeGeneration()` after it.
    #[uniffi::constructor]
    pub async fn open_checked(
        db_path: String,
        storage_key: Vec<u8>,
        min_generation: u64,
    ) -> Result<Arc<Self>> {
        let store = open_store(&db_path, storage_key, min_generation)?;
        let generation = store.generation();
        in_runtime(async move { Ok(Self::wrap(AppMessenger::open(store).await?, generation)) })?
            .await
    }

    /// The database's generation as of this open (see `openChecked`).
    pub fn store_generation(&self) -> u64 {
        self.generation
    }

    /// This user's address (`user@host:port/fingerprint`): give it to contacts.
    pub fn address(&self) -> String {
        self.address.clone()
    }

    /// This device's id within the user.
    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    /// Queues `text` to the user at `to`; returns the 16-byte message id.
    /// Durable on return; progress arrives as `Delivery` events.
    pub fn send_text(&self, to: String, text: String) -> Result<Vec<u8>> {
        let to = parse_user(&to)?;
        Ok(self.core()?.send_text(&to, &text)?.0.to_vec())
    }

    /// Encrypts the file at `path`, uploads it to this user's relay and
    /// queues a message with `text` carrying it; returns the message id.
    pub async fn send_file(&self, to: String, text: String, path: String) -> Result<Vec<u8>> {
        let to = parse_user(&to)?;
        let client = self.core()?;
        in_runtime(self.until_closed(async move {
            let id = client.send_file(&to, &text, &PathBuf::from(path)).await?;
            Ok(id.0.to_vec())
        }))?
        .await
    }

    /// Downloads `attachment` (of a message from `from`), verifies and
    /// decrypts it into `dest` (written only when complete and verified);
    /// returns its size.
    pub async fn download_attachment(
        &self,
        from: String,
        attachment: Arc<Attachment>,
        dest: String,
    ) -> Result<u64> {
        let from = parse_user(&from)?;
        let client = self.core()?;
        in_runtime(self.until_closed(async move {
            Ok(client
                .download_attachment(&from, &attachment.0, &PathBuf::from(dest))
                .await?)
        }))?
        .await
    }

    /// Sends read receipts to `peer` for the given 16-byte message ids.
    pub fn mark_read(&self, peer: String, message_ids: Vec<Vec<u8>>) -> Result<()> {
        let peer = parse_user(&peer)?;
        let ids = message_ids
            .iter()
            .map(|i| message_id(i))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.core()?.mark_read(&peer, &ids)?)
    }

    /// Waits for the oldest unacknowledged event. The same event comes again
    /// until `ackEvent(seq)` (also after a restart). Fails with `Busy` while
    /// a subscription is active.
    pub async fn next_event(&self) -> Result<Event> {
        let client = self.core()?;
        let claim = self.consumer.claim("nextEvent()")?;
        in_runtime(self.until_closed(async move {
            let e = client.next_event().await?;
            drop(claim);
            Ok(e.into())
        }))?
        .await
    }

    /// The oldest unacknowledged event, or null/nil if there is none.
    pub fn try_next_event(&self) -> Result<Option<Event>> {
        Ok(self.core()?.try_next_event()?.map(Event::from))
    }

    /// Removes a handled event from the queue.
    pub fn ack_event(&self, seq: u64) -> Result<()> {
        Ok(self.core()?.ack_event(seq)?)
    }

    /// Delivers every event to `listener` on a Rust thread, acknowledging
    /// each once the callback returns normally (at-least-once). One consumer
    /// at a time: fails with `Busy` if another subscription or a
    /// `nextEvent()` is active.
    pub fn subscribe(&self, listener: Arc<dyn EventListener>) -> Result<Arc<EventSubscription>> {
        let client = self.core()?;
        let claim = self.consumer.claim("subscribe()")?;
        let sub = EventSubscription::start(client, listener, claim)?;
        let mut subs = lock(&self.subscriptions);
        subs.retain(|t| !t.is_finished());
        subs.push(sub.abort_handle());
        Ok(sub)
    }

    /// Per-device delivery state of a message this device sent (empty until
    /// the first recipient relay accepted it).
    pub fn delivery(&self, message_id: Vec<u8>) -> Result<Vec<DeviceDelivery>> {
        let id = self::message_id(&message_id)?;
        Ok(self
            .core()?
            .delivery(&id)?
            .into_iter()
            .map(|(device_id, state)| DeviceDelivery {
                device_id,
                state: DeliveryState::from(state),
            })
            .collect())
    }

    /// Messages and receipts still waiting to go out.
    pub fn pending_outgoing(&self) -> Result<u64> {
        Ok(self.core()?.pending_outgoing()? as u64)
    }

    /// Waits until everything queued went out, or fails with `Timeout`.
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let client = self.core()?;
        in_runtime(self.until_closed(async move { Ok(client.flush(timeout).await?) }))?.await
    }

    /// Waits until the backlog waiting at the relay when this device
    /// (re)connected was processed, or fails with `Timeout`.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<()> {
        let client = self.core()?;
        in_runtime(self.until_closed(async move { Ok(client.wait_synced(timeout).await?) }))?.await
    }

    /// The safety number to compare with `peer`: computed from both users'
    /// account keys, the same on every device of both.
    pub fn safety_number(&self, peer: String) -> Result<Arc<SafetyNumber>> {
        let peer = parse_user(&peer)?;
        Ok(Arc::new(self.core()?.safety_number(&peer).into()))
    }

    /// Records that the user compared the safety number with `peer`.
    pub fn mark_verified(&self, peer: String) -> Result<()> {
        let peer = parse_user(&peer)?;
        Ok(self.core()?.mark_verified(&peer)?)
    }

    /// Whether the user verified `peer`'s safety number (false if unknown).
    pub fn is_verified(&self, peer: String) -> Result<bool> {
        let peer = parse_user(&peer)?;
        Ok(self.core()?.is_verified(&peer)?)
    }

    /// True if this is the primary device (only it links and unlinks devices).
    pub fn is_primary(&self) -> Result<bool> {
        Ok(self.core()?.is_primary())
    }

    /// Accepts `peer`'s message request: its messages become ordinary ones
    /// and the held ones get their delivered receipts.
    pub fn accept_request(&self, peer: String) -> Result<()> {
        let peer = parse_user(&peer)?;
        Ok(self.core()?.accept_request(&peer)?)
    }

    /// Declines `peer`'s message request without blocking: what it sent is
    /// deleted; a later message is a new request.
    pub fn decline_request(&self, peer: String) -> Result<()> {
        let peer = parse_user(&peer)?;
        Ok(self.core()?.decline_request(&peer)?)
    }

    /// Blocks `peer`: its envelopes are dropped unread, its sessions deleted.
    pub fn block(&self, peer: String) -> Result<()> {
        let peer = parse_user(&peer)?;
        Ok(self.core()?.block(&peer)?)
    }

    /// This user's device ids, from the signed list on the home relay.
    pub async fn devices(&self) -> Result<Vec<u32>> {
        let client = self.core()?;
        in_runtime(async move {
            let list = client.devices().await?;
            Ok(list.devices.iter().map(|d| d.device_id).collect())
        })?
        .await
    }

    /// Removes another device of this user.
    pub async fn unlink_device(&self, device_id: u32) -> Result<()> {
        let client = self.core()?;
        in_runtime(async move { Ok(client.unlink_device(device_id).await?) })?.await
    }

    /// Linking, on this primary device: reads the new device's `code` and
    /// sends it an offer. Then `PendingLink.waitDigits()`, compare them with
    /// the digits the new device shows, and call `confirmLink`.
    pub async fn link_device(&self, code: String) -> Result<Arc<PendingLink>> {
        let client = self.core()?;
        in_runtime(async move { Ok(PendingLink::wrap(client.link_device(&code).await?)) })?.await
    }

    /// The user confirmed the digits: certifies the new device and sends it
    /// the signed device list. Returns the new device's id. A pending link is
    /// used once.
    pub async fn confirm_link(&self, pending: Arc<PendingLink>) -> Result<u32> {
        let client = self.core()?;
        in_runtime(async move {
            let pending = pending.take().await?;
            Ok(client.confirm_link(pending).await?)
        })?
        .await
    }

    /// Stops the listener tasks and background work, ends every pending
    /// call (`nextEvent()`, `flush()`, transfers...) with `Closed`, and closes
    /// the relay connections. Idempotent; later calls fail with `Closed`. Then free the
    /// object (`close()` / `use {}` in Kotlin).
    pub async fn shutdown(&self) -> Result<()> {
        self.closed.send_replace(true);
        self.stop_subscriptions();
        let Some(mut client) = lock(&self.client).take() else {
            return Ok(());
        };
        in_runtime(async move {
            let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
            loop {
                match Arc::try_unwrap(client) {
                    Ok(c) => {
                        c.close().await;
                        return Ok(());
                    }
                    // An in-flight call or a stopping listener task still
                    // holds it; past the grace period, its drop stops the
                    // background tasks.
                    Err(c) if tokio::time::Instant::now() >= deadline => {
                        drop(c);
                        return Ok(());
                    }
                    Err(c) => client = c,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })?
        .await
    }
}

impl Drop for SottoClient {
    fn drop(&mut self) {
        self.stop_subscriptions();
        if let Some(client) = lock(&self.client).take() {
            // Quinn and tokio handles are dropped inside the runtime.
            match runtime() {
                Ok(rt) => {
                    let _enter = rt.enter();
                    drop(client);
                }
                Err(_) => drop(client),
            }
        }
    }
}
