//! The network half of presence and typing (PROTOCOL.md III.14): a task
//! that runs the engine's [`Live`] timers and sends what they make due as
//! ephemeral envelopes, the receive path for ephemeral pushes, and the
//! stream of [`LiveEvent`]s for the app. Nothing here is ever stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::OsRng;
use sotto_core::store::Store;
use sotto_relay::MailboxId;
use tokio::sync::broadcast;

use super::{now_ms, relays::As, Inner};
use crate::engine::address::{RelayAddress, UserAddress};
use crate::engine::envelope::MacKeys;
use crate::engine::live::{Live, LiveChange, Outgoing, Presence, To};
use crate::engine::live_wire;
use crate::engine::records;
use crate::error::Result;

/// One sealed signal for one mailbox, with the recipient's delivery token.
type LiveItem = (MailboxId, Vec<u8>, [u8; 32]);

/// Live events kept for a slow reader before the oldest are skipped.
const LIVE_EVENT_BUFFER: usize = 256;
/// Live signals this device opens per second, and in a burst: each costs
/// an X25519, a ratchet step and a store commit, and any accepted contact
/// can send them; past this they are dropped unopened (and counted).
const LIVE_RECEIVE_PER_SEC: f64 = 20.0;
const LIVE_RECEIVE_BURST: f64 = 60.0;
/// Most items in one `SendEphemeral` (the relay's `max_batch_items`).
const LIVE_BATCH: usize = 64;

/// A change of a contact's presence or typing, for the app. Live events
/// are not stored and need no ack: a reader that falls behind skips the
/// oldest, and [`crate::Messenger::presence`] always tells the current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveEvent {
    /// A watched contact's presence changed.
    Presence {
        /// The contact.
        user: UserAddress,
        /// Its presence now.
        presence: Presence,
    },
    /// A contact started or stopped typing to this user.
    Typing {
        /// The contact.
        user: UserAddress,
        /// Whether it is typing now.
        typing: bool,
    },
}

/// A stream of [`LiveEvent`]s from [`crate::Messenger::live_events`].
#[derive(Debug)]
pub struct LiveEvents(broadcast::Receiver<LiveEvent>);

impl LiveEvents {
    /// The next live event; `None` once the messenger is closed.
    pub async fn next(&mut self) -> Option<LiveEvent> {
        loop {
            match self.0.recv().await {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// The live half of [`Inner`].
pub(crate) struct LiveState {
    pub(crate) engine: std::sync::Mutex<Live>,
    /// Signals decided outside the task (answers, typing), for it to send.
    pending: std::sync::Mutex<Vec<Outgoing>>,
    wake: tokio::sync::Notify,
    events: broadcast::Sender<LiveEvent>,
    mac_keys: std::sync::Mutex<MacKeys>,
    /// Receive allowance: tokens and when they were counted.
    allowance: std::sync::Mutex<(f64, Instant)>,
    /// The app said its user is away (not present).
    pub(crate) away: std::sync::atomic::AtomicBool,
    /// Live signals refused or dropped unopened (see [`crate::Messenger::live_refused`]).
    pub(crate) refused: std::sync::atomic::AtomicU64,
}

impl LiveState {
    pub(crate) fn new() -> Self {
        LiveState {
            engine: std::sync::Mutex::new(Live::new(now_ms())),
            pending: Default::default(),
            wake: tokio::sync::Notify::new(),
            events: broadcast::channel(LIVE_EVENT_BUFFER).0,
            mac_keys: Default::default(),
            allowance: std::sync::Mutex::new((LIVE_RECEIVE_BURST, Instant::now())),
            away: Default::default(),
            refused: Default::default(),
        }
    }

    pub(crate) fn events(&self) -> LiveEvents {
        LiveEvents(self.events.subscribe())
    }

    /// Runs `f` on the engine, queues what it sends and wakes the task.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Live, u64) -> (Vec<Outgoing>, R)) -> R {
        let (out, r) = {
            let mut l = self
                .engine
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut l, now_ms())
        };
        self.queue(out);
        r
    }

    fn queue(&self, out: Vec<Outgoing>) {
        if out.is_empty() {
            return;
        }
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(out);
        self.wake.notify_one();
    }

    fn take_allowance(&self) -> bool {
        let mut a = self
            .allowance
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let tokens = (a.0 + now.duration_since(a.1).as_secs_f64() * LIVE_RECEIVE_PER_SEC)
            .min(LIVE_RECEIVE_BURST);
        if tokens < 1.0 {
            *a = (tokens, now);
            return false;
        }
        *a = (tokens - 1.0, now);
        true
    }
}

/// Tells the app about changes (by address: a change about a user that is
/// no longer a contact is not shown).
fn publish<S: Store + Send + 'static>(inner: &Inner<S>, changes: Vec<LiveChange>) {
    for c in changes {
        let user = match &c {
            LiveChange::Presence { user, .. } | LiveChange::Typing { user, .. } => *user,
        };
        let address = inner
            .with_device(|d| d.store_mut().transaction(|tx| records::contact(tx, &user)))
            .ok()
            .flatten()
            .and_then(|c| c.address.parse::<UserAddress>().ok());
        let Some(user) = address else { continue };
        let e = match c {
            LiveChange::Presence { presence, .. } => LiveEvent::Presence { user, presence },
            LiveChange::Typing { typing, .. } => LiveEvent::Typing { user, typing },
        };
        let _ = inner.live.events.send(e);
    }
}

/// An ephemeral push: opened, checked and applied, or refused (counted and
/// logged; a live signal is never retried or repaired).
pub(crate) fn receive<S: Store + Send + 'static>(inner: &Inner<S>, payload: &[u8]) {
    let live = &inner.live;
    if !live.take_allowance() {
        live.refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!("live signal dropped: receive allowance exhausted");
        return;
    }
    let opened = inner.with_device(|d| live_wire::open(d, &inner.me, payload, now_ms()));
    let o = match opened {
        Ok(o) => o,
        Err(e) => {
            live.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(error = %e, "live signal refused");
            return;
        }
    };
    let hidden_from_all = inner
        .with_device(|d| d.store_mut().transaction(|tx| records::presence_hidden(tx)))
        .unwrap_or(true);
    let shares = !hidden_from_all && !o.hidden;
    let changes = live.with(|l, now| l.receive(o.user, o.device, &o.signal, shares, now));
    publish(inner, changes);
}

/// The task: runs the timers, sends what is due, sleeps until the next.
pub(crate) async fn run<S: Store + Send + 'static>(inner: Arc<Inner<S>>) {
    loop {
        let (out, changes, next) = {
            let mut l = inner
                .live
                .engine
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = now_ms();
            let (out, changes) = l.tick(now);
            (
                out,
                changes,
                l.next_deadline(now).map(|t| t.saturating_sub(now)),
            )
        };
        publish(&inner, changes);
        inner.live.queue(out);
        flush(&inner).await;
        let sleep = next.map_or(Duration::from_secs(3600), Duration::from_millis);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = inner.live.wake.notified() => {}
        }
    }
}

/// Sends every queued signal now (each to the devices it can reach), one
/// `SendEphemeral` per relay and 64 items. A failure loses the signals: a
/// live signal is never retried (the next heartbeat or ask replaces it).
pub(crate) async fn flush<S: Store + Send + 'static>(inner: &Arc<Inner<S>>) {
    let out = std::mem::take(
        &mut *inner
            .live
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    if out.is_empty() {
        return;
    }
    let sealed = inner.with_device(|d| {
        let mut mac_keys = inner
            .live
            .mac_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut by_relay: HashMap<RelayAddress, Vec<LiveItem>> = HashMap::new();
        for o in out {
            let (user, only) = match o.to {
                To::User(u) => (u, None),
                To::Device(u, d) => (u, Some(d)),
            };
            for t in live_wire::targets(d, &inner.me, &user, only)? {
                if let Some(env) =
                    live_wire::seal(d, &mut mac_keys, &inner.me, &t, o.signal, &mut OsRng)?
                {
                    by_relay
                        .entry(t.relay.clone())
                        .or_default()
                        .push((t.mailbox, env, *t.token));
                }
            }
        }
        Ok(by_relay)
    });
    let by_relay = match sealed {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(error = %e, "live signals not sealed");
            return;
        }
    };
    for (relay, items) in by_relay {
        if let Err(e) = send(inner, &relay, items).await {
            tracing::debug!(error = %e, "live signals lost");
        }
    }
}

async fn send<S: Store + Send + 'static>(
    inner: &Arc<Inner<S>>,
    relay: &RelayAddress,
    mut items: Vec<LiveItem>,
) -> Result<()> {
    let conn = inner.relays.get(relay, As::Live).await?;
    while !items.is_empty() {
        let rest = items.split_off(items.len().min(LIVE_BATCH));
        let batch = std::mem::replace(&mut items, rest);
        let r = conn.send_ephemeral(batch).await;
        let results = inner.checked(relay, &conn, r).await?;
        for r in results.into_iter().filter_map(|r| r.err()) {
            tracing::debug!(error = %r, "live signal refused by the relay");
        }
    }
    Ok(())
}

/// The mailbox subscription is live: this device is online unless the app
/// said its user is away. A lost connection says nothing: heartbeats that
/// no longer arrive are what tells watchers (after the grace, so a brief
/// drop does not flap).
pub(crate) fn connected<S: Store + Send + 'static>(inner: &Inner<S>) {
    let away = inner.live.away.load(std::sync::atomic::Ordering::SeqCst);
    inner.live.with(|l, now| (l.set_online(!away, now), ()));
}
