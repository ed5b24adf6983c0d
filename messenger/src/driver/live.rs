//! The network half of presence and typing (PROTOCOL.md III.14): a task
//! that runs the engine's [`Live`] timers and sends what they make due as
//! ephemeral envelopes, the receive path for ephemeral pushes, and the
//! stream of [`LiveEvent`]s for the app. Nothing here is ever stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::OsRng;
use sotto_core::store::Store;
use sotto_relay::limits::{BucketMap, TokenBucket};
use sotto_relay::MailboxId;
use tokio::sync::broadcast;

use super::{now_ms, relays::As, Inner};
use crate::engine::address::{RelayAddress, UserAddress};
use crate::engine::envelope::MacKeys;
use crate::engine::live::{Live, LiveChange, Outgoing, Presence, To};
use crate::engine::live_wire::{self, ReplayCache};
use crate::engine::records;
use crate::error::{Error, Result};

/// One sealed signal for one mailbox, with the recipient's delivery token.
type LiveItem = (MailboxId, Vec<u8>, [u8; 32]);

/// Live events kept for a slow reader before the oldest are skipped.
const LIVE_EVENT_BUFFER: usize = 256;
/// Live signals this device opens per second, and in a burst, whoever sent
/// them: each costs an X25519 before its sender is known; past this they
/// are dropped unopened (and counted).
const OPEN_PER_SEC: f64 = 200.0;
const OPEN_BURST: u32 = 400;
/// Signals taken from one contact per second, and in a burst, once its MAC
/// proved it (a contact's answers and heartbeats come a few a minute): so
/// one contact cannot make this device answer without bound.
const PER_USER_PER_SEC: f64 = 2.0;
const PER_USER_BURST: u32 = 20;
/// Contacts whose allowance is tracked (refilled ones are forgotten first).
const PER_USER_TRACKED: usize = 1024;
/// Most items in one `SendEphemeral` (well under the relay's
/// `max_batch_items`, 64 by default).
const LIVE_BATCH: usize = 16;
/// Signals waiting to be sent; past this new ones are dropped (the next
/// heartbeat or ask replaces them).
const MAX_PENDING: usize = 4096;
/// Longest one relay may take to take a batch: a relay that accepts the
/// connection and never answers must not hold up the others.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

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

/// What the receive path keeps between signals.
struct Receiving {
    mac_keys: MacKeys,
    replay: ReplayCache,
    /// Each contact's allowance (the relay's bounded bucket map: at most
    /// `PER_USER_TRACKED` contacts, refilled ones forgotten first).
    per_user: BucketMap<[u8; 32]>,
}

/// The live half of [`Inner`].
pub(crate) struct LiveState {
    engine: std::sync::Mutex<Live>,
    /// Signals decided outside the task (answers, typing), for it to send.
    pending: std::sync::Mutex<Vec<Outgoing>>,
    wake: tokio::sync::Notify,
    events: broadcast::Sender<LiveEvent>,
    /// Sending keys (the task's).
    mac_keys: std::sync::Mutex<MacKeys>,
    receiving: std::sync::Mutex<Receiving>,
    /// The opening allowance, whoever sent.
    allowance: std::sync::Mutex<TokenBucket>,
    /// The engine's clock: monotonic (a wall-clock step never stalls or
    /// rushes its timers), started at the wall clock's reading.
    started: (Instant, u64),
    /// The send time of the last signal made: each next one is later, so
    /// no two signals of this device carry the same time (a receiver keeps
    /// only the newest, and the same MAC twice is a replay).
    last_sent_at: std::sync::Mutex<u64>,
    /// Relays a send is still going to: a new batch for one of them is
    /// dropped rather than queued behind it (the next heartbeat replaces
    /// it), so a relay that never answers holds up nothing.
    in_flight: std::sync::Mutex<std::collections::HashSet<RelayAddress>>,
    /// The app said its user is away (not present).
    pub(crate) away: std::sync::atomic::AtomicBool,
    /// Live signals refused or dropped unopened (see [`crate::Messenger::live_refused`]).
    pub(crate) refused: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every value here stays consistent if a holder panicked.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LiveState {
    pub(crate) fn new() -> Self {
        let started = (Instant::now(), now_ms());
        LiveState {
            engine: std::sync::Mutex::new(Live::new(started.1)),
            pending: Default::default(),
            wake: tokio::sync::Notify::new(),
            events: broadcast::channel(LIVE_EVENT_BUFFER).0,
            mac_keys: Default::default(),
            receiving: std::sync::Mutex::new(Receiving {
                mac_keys: MacKeys::default(),
                replay: ReplayCache::default(),
                per_user: BucketMap::new(PER_USER_BURST, PER_USER_PER_SEC, PER_USER_TRACKED),
            }),
            allowance: std::sync::Mutex::new(TokenBucket::new(
                OPEN_BURST,
                OPEN_PER_SEC,
                Instant::now(),
            )),
            started,
            last_sent_at: std::sync::Mutex::new(0),
            in_flight: Default::default(),
            away: Default::default(),
            refused: Default::default(),
        }
    }

    pub(crate) fn events(&self) -> LiveEvents {
        LiveEvents(self.events.subscribe())
    }

    /// The engine's time: Unix ms, but moving only forward.
    fn now(&self) -> u64 {
        let (at, wall) = self.started;
        wall.saturating_add(u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Runs `f` on the engine, queues what it sends and wakes the task.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Live, u64) -> (Vec<Outgoing>, R)) -> R {
        let (out, r) = f(&mut lock(&self.engine), self.now());
        self.queue(out);
        r
    }

    /// Has the task run the engine's timers now.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    fn queue(&self, out: Vec<Outgoing>) {
        if out.is_empty() {
            return;
        }
        {
            let mut pending = lock(&self.pending);
            let room = MAX_PENDING.saturating_sub(pending.len());
            pending.extend(out.into_iter().take(room));
        }
        self.wake.notify_one();
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
/// logged; a live signal is never retried or repaired, and changes nothing
/// on disk).
pub(crate) fn receive<S: Store + Send + 'static>(inner: &Inner<S>, payload: &[u8]) {
    let live = &inner.live;
    let opened = if lock(&live.allowance).try_take(1, Instant::now()) {
        inner.with_device(|d| {
            let mut r = lock(&live.receiving);
            let Receiving {
                mac_keys,
                replay,
                per_user,
            } = &mut *r;
            let o = live_wire::open(d, mac_keys, replay, &inner.me, payload, now_ms(), |u| {
                per_user.try_take(*u, 1, Instant::now())
            })?;
            let hidden_from_all = d
                .store_mut()
                .transaction(|tx| records::presence_hidden(tx))?;
            Ok((o, hidden_from_all))
        })
    } else {
        Err(Error::LiveRefused("past the opening allowance"))
    };
    let (o, hidden_from_all) = match opened {
        Ok(x) => x,
        Err(e) => {
            live.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(error = %e, "live signal refused");
            return;
        }
    };
    let shares = !hidden_from_all && !o.hidden;
    let changes =
        live.with(|l, now| l.receive(o.user, o.device, &o.signal, o.sent_at_ms, shares, now));
    publish(inner, changes);
}

/// The task: runs the timers, sends what is due, sleeps until the next.
pub(crate) async fn run<S: Store + Send + 'static>(inner: Arc<Inner<S>>) {
    loop {
        let (out, changes, next) = {
            let mut l = lock(&inner.live.engine);
            let now = inner.live.now();
            let (out, changes) = l.tick(now);
            let next = l.next_deadline(now).map(|t| t.saturating_sub(now));
            (out, changes, next)
        };
        publish(&inner, changes);
        inner.live.queue(out);
        // Sent in the background: the timers never wait for a relay.
        drop(flush(&inner));
        let sleep = next.map_or(Duration::from_secs(3600), Duration::from_millis);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = inner.live.wake.notified() => {}
        }
    }
}

/// Sends every queued signal (each to the devices it can reach): one
/// `SendEphemeral` per relay and 16 items, each relay in its own task,
/// within [`SEND_TIMEOUT`], never two at once to one relay (a batch for a
/// relay still busy is dropped). A failure loses those signals only: a
/// live signal is never retried (the next heartbeat or ask replaces it).
/// Returns the sending tasks (`close` waits for them; the timers do not).
pub(crate) fn flush<S: Store + Send + 'static>(
    inner: &Arc<Inner<S>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let out = std::mem::take(&mut *lock(&inner.live.pending));
    if out.is_empty() {
        return Vec::new();
    }
    let sealed = inner.with_device(|d| {
        let mut mac_keys = lock(&inner.live.mac_keys);
        let mut last = lock(&inner.live.last_sent_at);
        let mut by_relay: HashMap<RelayAddress, Vec<LiveItem>> = HashMap::new();
        for o in out {
            let (user, only) = match o.to {
                To::User(u) => (u, None),
                To::Device(u, d) => (u, Some(d)),
            };
            // A broken target loses its own signal only.
            let targets = match live_wire::targets(d, &inner.me, &user, only) {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(error = %e, "live signal without targets");
                    continue;
                }
            };
            *last = now_ms().max(last.saturating_add(1));
            for t in targets {
                let env =
                    live_wire::seal(d, &mut mac_keys, &inner.me, &t, o.signal, *last, &mut OsRng);
                match env {
                    Ok(env) => by_relay
                        .entry(t.relay.clone())
                        .or_default()
                        .push((t.mailbox, env, *t.token)),
                    Err(e) => tracing::debug!(error = %e, "live signal not sealed"),
                }
            }
        }
        Ok(by_relay)
    });
    let by_relay = match sealed {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(error = %e, "live signals not sealed");
            return Vec::new();
        }
    };
    let mut tasks = Vec::new();
    for (relay, items) in by_relay {
        if !lock(&inner.live.in_flight).insert(relay.clone()) {
            tracing::debug!("live signals dropped: their relay is still busy");
            continue;
        }
        let inner = inner.clone();
        tasks.push(tokio::spawn(async move {
            match tokio::time::timeout(SEND_TIMEOUT, send(&inner, &relay, items)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "live signals lost"),
                Err(_) => {
                    tracing::debug!("live signals lost: the relay did not answer in time");
                    inner.relays.forget_kind(&relay, As::Live).await;
                }
            }
            lock(&inner.live.in_flight).remove(&relay);
        }));
    }
    tasks
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
/// said its user is away, and its heartbeats go out again. A lost
/// connection says nothing ([`disconnected`]).
pub(crate) fn connected<S: Store + Send + 'static>(inner: &Inner<S>) {
    let away = inner.live.away.load(std::sync::atomic::Ordering::SeqCst);
    inner.live.with(|l, now| {
        l.suspend(false);
        (l.set_online(!away, now), ())
    });
}

/// The mailbox subscription is down: heartbeats stop until it is back, so
/// watchers see the device offline after the grace if it stays down, and
/// nothing if it comes back first (no flapping).
pub(crate) fn disconnected<S: Store + Send + 'static>(inner: &Inner<S>) {
    inner.live.with(|l, _| {
        l.suspend(true);
        (Vec::new(), ())
    });
}
