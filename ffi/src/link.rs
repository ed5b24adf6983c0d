//! Linking a new device to an existing user, confirmed on both screens:
//! [`Linking`] is the new device's side, [`PendingLink`] the existing
//! device's (from `SottoClient.linkDevice`). The protocol is sotto-messenger's
//! (`Linking`, `PendingLink`); this module only holds their states as foreign objects.
//!
//! New device: `Linking.start(db, key, relay)` → show `code()` → `waitOffer()`
//! returns six digits → the user confirms they match → `finish()` returns
//! the new `SottoClient`. Primary device: `linkDevice(code)` →
//! `PendingLink.waitDigits()` → show them → the user confirms →
//! `confirmLink(pending)`.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sotto_core::SqliteStore;
use sotto_messenger as link;

use crate::client::{open_store, parse_relay, SottoClient};
use crate::error::{Result, SottoError};
use crate::runtime::in_runtime;

/// A new device being linked to an existing user (this device's side).
#[derive(uniffi::Object)]
pub struct Linking {
    // Async mutex: `waitOffer` holds it across awaits; `finish` takes it.
    state: tokio::sync::Mutex<Option<link::Linking<SqliteStore>>>,
    code: String,
    generation: u64,
}

impl fmt::Debug for Linking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Linking").finish_non_exhaustive()
    }
}

#[uniffi::export]
impl Linking {
    /// Prepares this device, whose encrypted store `db_path` must be new,
    /// on the user's home relay `relay` (`host:port/fingerprint`).
    #[uniffi::constructor]
    pub async fn start(db_path: String, storage_key: Vec<u8>, relay: String) -> Result<Arc<Self>> {
        let home = parse_relay(&relay)?;
        let store = open_store(&db_path, storage_key, 0)?;
        let generation = store.generation();
        in_runtime(async move {
            let l = link::Linking::start(store, home).await?;
            Ok(Arc::new(Self {
                code: l.code(),
                state: tokio::sync::Mutex::new(Some(l)),
                generation,
            }))
        })?
        .await
    }

    /// The code to show (as text or QR code) to the existing device.
    pub fn code(&self) -> String {
        self.code.clone()
    }

    /// Waits up to `timeout` for the existing device's offer; returns the
    /// six digits to compare with the ones it shows.
    pub async fn wait_offer(&self, timeout: Duration) -> Result<String> {
        in_runtime(async move {
            let mut state = self.state.lock().await;
            let l = state.as_mut().ok_or(SottoError::closed())?;
            Ok(l.wait_offer(timeout).await?)
        })?
        .await
    }

    /// The user confirmed the digits here: waits up to `timeout` for the
    /// grant from the primary device (a certificate for this device's own
    /// identity and the signed device list) and returns this device's client.
    /// Used once; later calls fail with `Closed`.
    pub async fn finish(&self, timeout: Duration) -> Result<Arc<SottoClient>> {
        in_runtime(async move {
            let l = self.state.lock().await.take().ok_or(SottoError::closed())?;
            let client = l.finish(timeout).await?;
            Ok(SottoClient::wrap(client, self.generation))
        })?
        .await
    }
}

/// A link in progress on the existing device.
#[derive(uniffi::Object)]
pub struct PendingLink {
    // Async mutex: `waitDigits` holds it across awaits; `confirmLink` takes it.
    pending: tokio::sync::Mutex<Option<link::PendingLink>>,
    digits: Mutex<Option<String>>,
}

impl fmt::Debug for PendingLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingLink").finish_non_exhaustive()
    }
}

impl PendingLink {
    pub(crate) fn wrap(p: link::PendingLink) -> Arc<Self> {
        Arc::new(Self {
            pending: tokio::sync::Mutex::new(Some(p)),
            digits: Mutex::new(None),
        })
    }

    /// Takes the link out for `confirmLink` (once).
    pub(crate) async fn take(&self) -> Result<link::PendingLink> {
        self.pending.lock().await.take().ok_or(SottoError::closed())
    }
}

#[uniffi::export]
impl PendingLink {
    /// Waits up to `timeout` for the new device to answer the offer and
    /// returns the six digits to compare with its screen.
    pub async fn wait_digits(&self, timeout: Duration) -> Result<String> {
        in_runtime(async move {
            let mut pending = self.pending.lock().await;
            let p = pending.as_mut().ok_or(SottoError::closed())?;
            let digits = p.wait_digits(timeout).await?;
            *self.digits.lock().unwrap_or_else(PoisonError::into_inner) = Some(digits.clone());
            Ok(digits)
        })?
        .await
    }

    /// The six digits, once `waitDigits` returned them (`null`/`nil` before).
    pub fn digits(&self) -> Option<String> {
        self.digits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
