//! Connections to relays: one authenticated, certificate-pinned QUIC
//! connection per relay this device talks to (its home relay for its own
//! mailbox, and the home relays of the people it writes to), opened on
//! demand, replaced when it breaks, with bounded exponential backoff.
//!
//! Relays share nothing; a client reaching several of them is how users on
//! different relays talk, and how Sotto grows past one machine.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use sotto_relay::client::RelayClient;
use tokio::sync::Mutex;

use crate::engine::address::RelayAddress;
use crate::error::{Error, Result};

/// The first pause between reconnect attempts (before jitter).
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The largest pause between reconnect attempts (before jitter).
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Exponential backoff with a cap and jitter: each pause is a random point
/// in the upper half of its step, so the clients a relay restart cut off
/// all at once do not all come back in the same instant ("equal jitter").
#[derive(Debug)]
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff(BACKOFF_MIN)
    }

    /// The pause to take now (between half the step and the step); doubles
    /// the next step.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        let half = d / 2;
        let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_micros(
            rand_core::RngCore::next_u64(&mut rand_core::OsRng) % (spread + 1),
        )
    }

    pub(crate) fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

/// Longest a connection attempt to one relay may take (resolving, QUIC and
/// TLS handshakes, authentication) before it counts as a network failure,
/// unless the app sets another ([`crate::Messenger::set_connect_timeout`]).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One relay's connection, behind its own lock: connecting to one relay
/// (which may hang until [`CONNECT_TIMEOUT`]) never holds up another.
type Slot = Arc<Mutex<Option<Arc<RelayClient>>>>;

/// Whose key a connection authenticates with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum As {
    /// This device's mailbox key: its own mailbox's business (subscribe,
    /// fetch and ack, publish lists and prekeys, upload blobs).
    Mailbox,
    /// A fresh key per connection, never used again, for one outbox pass:
    /// sending, fetching others' lists and bundles. The relay cannot tell
    /// which device (or that the same one) sent a sealed envelope, beyond
    /// the connection and its address (PROTOCOL.md III.8).
    Anonymous,
    /// A fresh key per connection, for attachment uploads and downloads
    /// (long transfers that must not end with an outbox pass).
    Transfer,
    /// A fresh key per connection, for live signals (presence, typing):
    /// kept while they flow, never the mailbox's, never the outbox's.
    Live,
}

const ALL: [As; 4] = [As::Mailbox, As::Anonymous, As::Transfer, As::Live];

/// The pool of relay connections of one device: at most one per relay and
/// key kind.
pub(crate) struct Relays {
    key: SigningKey,
    /// The connect timeout in milliseconds.
    connect_timeout_ms: std::sync::atomic::AtomicU64,
    slots: std::sync::Mutex<HashMap<(RelayAddress, As), Slot>>,
}

impl std::fmt::Debug for Relays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relays").finish_non_exhaustive()
    }
}

impl Relays {
    pub(crate) fn new(key: SigningKey) -> Self {
        Relays {
            key,
            connect_timeout_ms: std::sync::atomic::AtomicU64::new(
                u64::try_from(CONNECT_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
            ),
            slots: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Sets the connect timeout of later attempts.
    pub(crate) fn set_connect_timeout(&self, t: Duration) {
        let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1);
        self.connect_timeout_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn connect_timeout(&self) -> Duration {
        Duration::from_millis(
            self.connect_timeout_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    fn slot(&self, relay: &RelayAddress, who: As) -> Slot {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.entry((relay.clone(), who)).or_default().clone()
    }

    fn slots(&self) -> Vec<Slot> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// A live connection to `relay` authenticated as `who`, connecting if
    /// there is none.
    pub(crate) async fn get(&self, relay: &RelayAddress, who: As) -> Result<Arc<RelayClient>> {
        let slot = self.slot(relay, who);
        let mut conn = slot.lock().await;
        if let Some(c) = conn.as_ref() {
            if c.connection().close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let connect = async {
            let addr = tokio::net::lookup_host(relay.host_port())
                .await
                .map_err(|e| Error::Relay(sotto_relay::RelayError::Io(e)))?
                .next()
                .ok_or(Error::InvalidAddress("relay host does not resolve"))?;
            let fresh;
            let key = match who {
                As::Mailbox => &self.key,
                As::Anonymous | As::Transfer | As::Live => {
                    fresh = SigningKey::generate(&mut rand_core::OsRng);
                    &fresh
                }
            };
            Ok::<_, Error>(RelayClient::connect(addr, relay.fingerprint, key).await?)
        };
        let client = Arc::new(
            tokio::time::timeout(self.connect_timeout(), connect)
                .await
                .map_err(|_| Error::Timeout)??,
        );
        *conn = Some(client.clone());
        Ok(client)
    }

    /// Forgets a connection that failed, so the next `get` reconnects.
    pub(crate) async fn forget(&self, relay: &RelayAddress, failed: &Arc<RelayClient>) {
        for who in ALL {
            let slot = self.slot(relay, who);
            let mut conn = slot.lock().await;
            if conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, failed)) {
                *conn = None;
            }
        }
    }

    /// Forgets (and closes) `relay`'s connection of kind `who`, if any.
    pub(crate) async fn forget_kind(&self, relay: &RelayAddress, who: As) {
        let taken = self.slot(relay, who).lock().await.take();
        if let Some(c) = taken {
            c.connection().close(0u32.into(), b"unresponsive");
        }
    }

    /// Forgets (and closes) the connections to `relay`, if any.
    pub(crate) async fn forget_any(&self, relay: &RelayAddress) {
        for who in ALL {
            let slot = self.slot(relay, who);
            let taken = slot.lock().await.take();
            if let Some(c) = taken {
                c.connection().close(0u32.into(), b"unresponsive");
            }
        }
    }

    /// Closes the anonymous connections (the next sends open new ones).
    pub(crate) async fn close_anonymous(&self) {
        let slots: Vec<Slot> = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|((_, who), _)| *who == As::Anonymous)
            .map(|(_, s)| s.clone())
            .collect();
        for slot in slots {
            let taken = slot.lock().await.take();
            if let Some(c) = taken {
                c.connection().close(0u32.into(), b"done");
            }
        }
    }

    /// Closes every connection.
    pub(crate) async fn close_all(&self) {
        for slot in self.slots() {
            let taken = slot.lock().await.take();
            if let Some(c) = taken {
                c.connection().close(0u32.into(), b"bye");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() {
        let mut b = Backoff::new();
        let mut step = BACKOFF_MIN;
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
            step = (step * 2).min(BACKOFF_MAX);
        }
        // Two clients cut off together do not come back together.
        let firsts: std::collections::HashSet<Duration> =
            (0..20).map(|_| Backoff::new().next_delay()).collect();
        assert!(firsts.len() > 10, "no jitter: {firsts:?}");
    }
}
