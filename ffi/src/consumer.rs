//! The one-consumer rule of every event source.
//!
//! A stream of messages has exactly one reader at a time (a listener
//! subscription or a pending `nextEvent()`), like one connected device per relay
//! mailbox: two readers would both get and race to ack the same event. A [`ConsumerSlot`]
//! hands out a [`ConsumerClaim`]; releasing it is synchronous (on
//! `EventSubscription.cancel()`, or when a cancelled `nextEvent()` is dropped), so a
//! new reader can start at once while the old task is still winding down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Result, SottoError};

/// Who currently reads a stream, if anyone.
#[derive(Debug, Default)]
pub(crate) struct ConsumerSlot {
    owner: Mutex<Option<u64>>,
    next_id: AtomicU64,
}

impl ConsumerSlot {
    /// Claims the stream for one reader, or fails with `Busy`.
    pub(crate) fn claim(self: &Arc<Self>, who: &str) -> Result<ConsumerClaim> {
        let mut owner = self.owner.lock().unwrap_or_else(PoisonError::into_inner);
        if owner.is_some() {
            return Err(SottoError::Busy {
                reason: format!(
                    "cannot start {who}: the stream already has a consumer \
                     (a subscription or a pending nextEvent())"
                ),
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        *owner = Some(id);
        Ok(ConsumerClaim {
            slot: self.clone(),
            id,
        })
    }
}

/// The right to read a stream; released on drop or by [`Self::release`].
#[derive(Debug)]
pub(crate) struct ConsumerClaim {
    slot: Arc<ConsumerSlot>,
    id: u64,
}

impl ConsumerClaim {
    /// Gives the stream up. Idempotent, and never releases a later claim.
    pub(crate) fn release(&self) {
        let mut owner = self
            .slot
            .owner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *owner == Some(self.id) {
            *owner = None;
        }
    }
}

impl Drop for ConsumerClaim {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn a_second_reader_is_refused_until_the_first_releases() {
        let slot = Arc::new(ConsumerSlot::default());
        let first = slot.claim("a").unwrap();
        assert!(matches!(slot.claim("b"), Err(SottoError::Busy { .. })));
        first.release();
        let second = slot.claim("b").unwrap();
        // The stale claim's drop must not free the stream under `second`.
        drop(first);
        assert!(slot.claim("c").is_err());
        drop(second);
        assert!(slot.claim("c").is_ok());
    }
}
