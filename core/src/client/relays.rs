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

use super::address::RelayAddress;
use crate::error::{Error, Result};

/// First and largest pause between reconnect attempts.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The largest pause between reconnect attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Exponential backoff with a cap (no jitter needed: clients reconnect at
/// independent times).
#[derive(Debug)]
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff(BACKOFF_MIN)
    }

    /// The pause to take now; doubles the next one.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        d
    }

    pub(crate) fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

/// The pool of relay connections of one device.
pub(crate) struct Relays {
    key: SigningKey,
    conns: Mutex<HashMap<RelayAddress, Arc<RelayClient>>>,
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
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// A live connection to `relay`, connecting (and authenticating as this
    /// device's mailbox key) if there is none.
    pub(crate) async fn get(&self, relay: &RelayAddress) -> Result<Arc<RelayClient>> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(relay) {
            if c.connection().close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let addr = tokio::net::lookup_host(relay.host_port())
            .await
            .map_err(|e| Error::Relay(sotto_relay::RelayError::Io(e)))?
            .next()
            .ok_or(Error::InvalidAddress("relay host does not resolve"))?;
        let client = Arc::new(RelayClient::connect(addr, relay.fingerprint, &self.key).await?);
        conns.insert(relay.clone(), client.clone());
        Ok(client)
    }

    /// Forgets a connection that failed, so the next `get` reconnects.
    pub(crate) async fn forget(&self, relay: &RelayAddress, failed: &Arc<RelayClient>) {
        let mut conns = self.conns.lock().await;
        if conns.get(relay).is_some_and(|c| Arc::ptr_eq(c, failed)) {
            conns.remove(relay);
        }
    }

    /// Forgets (and closes) the connection to `relay`, if any.
    pub(crate) async fn forget_any(&self, relay: &RelayAddress) {
        if let Some(c) = self.conns.lock().await.remove(relay) {
            c.connection().close(0u32.into(), b"unresponsive");
        }
    }

    /// Closes every connection.
    pub(crate) async fn close_all(&self) {
        let conns: Vec<_> = self.conns.lock().await.drain().collect();
        for (_, c) in conns {
            c.connection().close(0u32.into(), b"bye");
        }
    }
}
