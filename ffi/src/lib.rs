//! Sotto for Kotlin and Swift: the UniFFI interface (proc macros, library
//! mode) over Sotto's Rust crates.
//!
//! This crate adds no cryptography or protocol logic of its own; it turns
//! Rust types into foreign objects, errors into typed exceptions, futures
//! into `suspend`/`async` functions, and event streams into listener
//! callbacks. The modules:
//! - [`device`] — `Device` (identity, prekeys, sessions over sotto-core's
//!   in-memory or encrypted SQLite store), `PrekeyBundle`, `PeerAddress`.
//! - [`identity`] — `SafetyNumber`.
//! - [`conversation`] — `Conversation`, in-order decrypted delivery of one
//!   peer's messages to `next()` or a listener.
//! - [`error`] — `SottoError`, the one error type every export returns.
//! - [`runtime`] — the one tokio runtime all async exports and listener
//!   tasks share, and how foreign cancellation drops Rust futures.
//! - [`listener`] — the `EventListener` callback and the `Subscription` handle.
//! - `consumer` — the one-reader-at-a-time rule of every stream.
//! - [`queue`] — `MessageQueue`, the in-process ordered stream with one
//!   consumer that conversations are built on (also exported on its own).
//!
//! Bindings are generated from the compiled cdylib by the pinned
//! `uniffi-bindgen` of `ffi/bindgen` (`scripts/gen-bindings`).

uniffi::setup_scaffolding!("sotto");

pub(crate) mod consumer;
pub mod conversation;
pub mod device;
pub mod error;
pub mod identity;
pub mod listener;
pub mod queue;
pub(crate) mod runtime;

pub use conversation::Conversation;
pub use device::{Device, OneTimePrekeys, PeerAddress, PrekeyBundle, PrekeyUpload, Verification};
pub use error::SottoError;
pub use identity::SafetyNumber;
pub use listener::{Event, EventListener, ReceivedMessage, Subscription};
pub use queue::{MessageQueue, MAX_MESSAGE_BYTES};

/// The library's version, to log next to the app's own.
#[uniffi::export]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}
