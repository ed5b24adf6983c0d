//! What the relay will hold in memory for requests, and for whom.
//!
//! A request frame is read as its bytes arrive, never allocated from its
//! length prefix, and every chunk is first reserved from three budgets: the
//! connection's and its source address's (a connection waits when either
//! is used up, so QUIC flow control stops its peer and nothing more is
//! held), and the relay's (a reservation that would exceed it is refused at
//! once with `OVERLOADED`: a typed error, never an out-of-memory kill).
//! Reply pages are reserved from the same budgets while they are written.
//! So one source address pins at most its address budget, however many
//! connections and keys it uses, and all of them together never more than
//! the relay budget.

use std::sync::Arc;

use sotto_proto::relay::ErrorCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{RelayError, Result};

/// Budgets count kibibytes (a semaphore holds at most `u32::MAX` permits).
const UNIT: usize = 1024;

fn units(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

/// The relay-wide budget, shared by every connection.
#[derive(Debug, Clone)]
pub(crate) struct RelayBudget(Arc<Semaphore>);

impl RelayBudget {
    pub(crate) fn new(bytes: usize) -> Self {
        RelayBudget(Arc::new(Semaphore::new(units(bytes) as usize)))
    }

    /// Bytes still free (for metrics).
    pub(crate) fn available(&self) -> usize {
        self.0.available_permits() * UNIT
    }

    /// A connection's budget of `bytes`, drawing on its address's and on
    /// this one.
    pub(crate) fn connection(&self, bytes: usize, address: AddressBudget) -> ConnBudget {
        ConnBudget {
            own: Arc::new(Semaphore::new(units(bytes) as usize)),
            address: address.0,
            relay: self.0.clone(),
        }
    }
}

/// The budget shared by every connection from one source address.
#[derive(Debug, Clone)]
pub(crate) struct AddressBudget(Arc<Semaphore>);

impl AddressBudget {
    pub(crate) fn new(bytes: usize) -> Self {
        AddressBudget(Arc::new(Semaphore::new(units(bytes) as usize)))
    }
}

/// One connection's budget.
#[derive(Debug)]
pub(crate) struct ConnBudget {
    own: Arc<Semaphore>,
    address: Arc<Semaphore>,
    relay: Arc<Semaphore>,
}

/// Memory reserved for one request (or reply); given back when dropped.
#[derive(Debug, Default)]
pub(crate) struct Reservation {
    permits: Vec<OwnedSemaphorePermit>,
}

impl ConnBudget {
    /// Reserves `bytes` more for `r`: waits while the connection's or its
    /// address's budget is used up (its peer is then held back by flow
    /// control), refuses at once with `OVERLOADED` when the relay's is.
    pub(crate) async fn reserve(&self, r: &mut Reservation, bytes: usize) -> Result<()> {
        let n = units(bytes);
        let closing = || RelayError::refusal(ErrorCode::Overloaded, "closing");
        let own = self
            .own
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| closing())?;
        let address = self
            .address
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| closing())?;
        let relay = self.relay.clone().try_acquire_many_owned(n).map_err(|_| {
            RelayError::refusal(ErrorCode::Overloaded, "relay memory budget exhausted")
        })?;
        r.permits.extend([own, address, relay]);
        Ok(())
    }
}

/// A connection's budget and one request's reservation from it, as the
/// frame reader wants them.
#[derive(Debug)]
pub(crate) struct Budgeted<'a> {
    pub(crate) budget: &'a ConnBudget,
    pub(crate) held: Reservation,
}

impl crate::frame::Reserve for Budgeted<'_> {
    async fn reserve(&mut self, bytes: usize) -> Result<()> {
        self.budget.reserve(&mut self.held, bytes).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_connection_waits_at_its_budget_and_the_relay_refuses_at_its_own() {
        let relay = RelayBudget::new(100 * 1024);
        let a = relay.connection(64 * 1024, AddressBudget::new(1 << 20));
        let mut ra = Reservation::default();
        a.reserve(&mut ra, 64 * 1024).await.unwrap();
        // The connection's budget is used up: the next reservation waits.
        let mut more = Reservation::default();
        assert!(tokio::time::timeout(
            std::time::Duration::from_millis(50),
            a.reserve(&mut more, 1)
        )
        .await
        .is_err());
        // Another connection gets what the relay has left, then a refusal.
        let b = relay.connection(64 * 1024, AddressBudget::new(1 << 20));
        let mut rb = Reservation::default();
        b.reserve(&mut rb, 30 * 1024).await.unwrap();
        let err = b.reserve(&mut rb, 30 * 1024).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::Overloaded);
        // Given back on drop.
        drop(ra);
        assert!(relay.available() >= 64 * 1024);
    }

    #[tokio::test]
    async fn connections_from_one_address_share_its_budget() {
        let relay = RelayBudget::new(1 << 30);
        let address = AddressBudget::new(64 * 1024);
        let (a, b) = (
            relay.connection(64 * 1024, address.clone()),
            relay.connection(64 * 1024, address),
        );
        let mut ra = Reservation::default();
        a.reserve(&mut ra, 64 * 1024).await.unwrap();
        // A second connection (a second key) from the same address waits.
        let mut rb = Reservation::default();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), b.reserve(&mut rb, 1))
                .await
                .is_err()
        );
        drop(ra);
        b.reserve(&mut rb, 1).await.unwrap();
    }
}
